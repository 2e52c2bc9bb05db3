//! The DPS grammar on top of AMQP 1.0 (`device-protocol.md` §6): the SASL PLAIN identity, the link
//! addresses and the request's application properties; and [`FrameGuard`], a check of the frame
//! boundaries in the bytes a client sends.
//!
//! The AMQP framing, sessions, links and flow control are fe2o3-amqp's (in the server and the device
//! library); this module only reads the strings DPS puts inside them, so that every transport and
//! the fuzz target share one parser.

use std::borrow::Cow;

/// `iotdps-operation-type`: what the request asks for.
pub const OPERATION_TYPE: &str = "iotdps-operation-type";
/// `iotdps-operation-id`: the operation an operation-status request asks about.
pub const OPERATION_ID: &str = "iotdps-operation-id";
/// `iotdps-forceRegistration` (Node sends it on register, as a boolean).
pub const FORCE_REGISTRATION: &str = "iotdps-forceRegistration";
/// The operation type of a register request.
pub const REGISTER: &str = "iotdps-register";
/// The operation type of an operation-status request.
pub const GET_OPERATION_STATUS: &str = "iotdps-get-operationstatus";
/// The application property of an answer (and the `info` key of a rejection) that says how many
/// seconds to wait before polling or retrying. Node and C read this spelling.
pub const RETRY_AFTER: &str = "retry-after";
/// The spelling the .NET SDK reads (`ProvisioningErrorDetailsAmqp.RetryAfterKey`).
pub const RETRY_AFTER_DOTNET: &str = "Retry-After";
/// The attach property both SDKs send with the API version.
pub const API_VERSION_PROPERTY: &str = "com.microsoft:api-version";
/// The WebSocket subprotocol of AMQP over WebSockets.
pub const WS_SUBPROTOCOL: &str = "AMQPWSB10";

/// Why a DPS string inside AMQP could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmqpDpsError {
    #[error("the SASL PLAIN response is not [authzid] NUL authcid NUL password")]
    BadPlainResponse,
    #[error("the SASL PLAIN response is not UTF-8")]
    PlainNotText,
    #[error("{0:?} is not of the form {{idScope}}/registrations/{{registrationId}}")]
    BadIdentity(String),
    #[error(
        "the link address {0:?} is neither {{idScope}}/registrations/{{registrationId}} nor amqps://{{host}}/{{idScope}}/registrations/{{registrationId}}"
    )]
    BadAddress(String),
    #[error("the request has no iotdps-operation-type application property")]
    MissingOperationType,
    #[error("the operation type {0:?} is not one DPS serves")]
    UnknownOperationType(String),
    #[error("the operation-status request has no iotdps-operation-id application property")]
    MissingOperationId,
}

/// The three fields of a SASL PLAIN initial response (RFC 4616).
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials<'a> {
    pub authzid: &'a str,
    pub authcid: &'a str,
    pub password: &'a str,
}

impl std::fmt::Debug for PlainCredentials<'_> {
    /// The password (a SAS token) never reaches `Debug` output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Splits a SASL PLAIN response: `[authzid] NUL authcid NUL password`, each part UTF-8, with a
/// non-empty authcid.
pub fn parse_sasl_plain(response: &[u8]) -> Result<PlainCredentials<'_>, AmqpDpsError> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AmqpDpsError::BadPlainResponse);
    };
    let text = |b| std::str::from_utf8(b).map_err(|_| AmqpDpsError::PlainNotText);
    let credentials = PlainCredentials {
        authzid: text(authzid)?,
        authcid: text(authcid)?,
        password: text(password)?,
    };
    if credentials.authcid.is_empty() {
        return Err(AmqpDpsError::BadPlainResponse);
    }
    Ok(credentials)
}

/// Who a device says it is: the SASL user name and every link address name one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub id_scope: String,
    /// As the device spelled it (percent-decoded when it was encoded).
    pub registration_id: String,
}

impl DeviceIdentity {
    /// Whether two identities name the same device: scope and registration ID compare
    /// case-insensitively, as DPS compares them.
    pub fn same_device(&self, other: &Self) -> bool {
        self.id_scope.eq_ignore_ascii_case(&other.id_scope)
            && self
                .registration_id
                .eq_ignore_ascii_case(&other.registration_id)
    }
}

/// Parses the SASL PLAIN user name `{idScope}/registrations/{registrationId}`.
pub fn parse_identity(text: &str) -> Result<DeviceIdentity, AmqpDpsError> {
    parse_path(text).ok_or_else(|| AmqpDpsError::BadIdentity(clip(text)))
}

/// A link's source or target address as a device names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress {
    /// The host of an absolute address (`amqps://{host}/…`, the C SDK's form); `None` for the
    /// relative form Node uses.
    pub host: Option<String>,
    pub identity: DeviceIdentity,
}

/// Parses a link address: `{idScope}/registrations/{registrationId}` (Node), optionally with a
/// leading `/`, or `amqps://{host}/{idScope}/registrations/{registrationId}` (C; `amqp://` and
/// `wss://` are read the same way).
pub fn parse_link_address(address: &str) -> Result<LinkAddress, AmqpDpsError> {
    let bad = || AmqpDpsError::BadAddress(clip(address));
    let (host, path) = match address.split_once("://") {
        Some((scheme, rest)) => {
            if !["amqps", "amqp", "wss", "ws"]
                .iter()
                .any(|s| scheme.eq_ignore_ascii_case(s))
            {
                return Err(bad());
            }
            let (host, path) = rest.split_once('/').ok_or_else(bad)?;
            if host.is_empty() {
                return Err(bad());
            }
            (Some(host.to_owned()), path)
        }
        None => (None, address.strip_prefix('/').unwrap_or(address)),
    };
    let identity = parse_path(path).ok_or_else(bad)?;
    Ok(LinkAddress { host, identity })
}

/// A device request, read from its application properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `iotdps-operation-type: iotdps-register`.
    Register { force_registration: bool },
    /// `iotdps-operation-type: iotdps-get-operationstatus` with `iotdps-operation-id`.
    OperationStatus { operation_id: String },
}

/// Reads a request from the text of its application properties (`None` when absent). Property
/// values arrive typed (Node's `iotdps-forceRegistration` is a boolean, everything else a
/// string); the caller passes their text.
pub fn parse_request(
    operation_type: Option<&str>,
    operation_id: Option<&str>,
    force_registration: Option<&str>,
) -> Result<Request, AmqpDpsError> {
    match operation_type {
        None => Err(AmqpDpsError::MissingOperationType),
        Some(REGISTER) => Ok(Request::Register {
            force_registration: force_registration.is_some_and(|f| f.eq_ignore_ascii_case("true")),
        }),
        Some(GET_OPERATION_STATUS) => match operation_id {
            Some(id) if !id.is_empty() => Ok(Request::OperationStatus {
                operation_id: id.to_owned(),
            }),
            _ => Err(AmqpDpsError::MissingOperationId),
        },
        Some(other) => Err(AmqpDpsError::UnknownOperationType(clip(other))),
    }
}

/// Why a client's byte stream was refused by [`FrameGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {0} bytes is shorter than the 8-byte frame header")]
    ShorterThanHeader(u32),
}

/// Follows the frame boundaries of the bytes a client sends (protocol headers, then frames, a
/// protocol header again after SASL) and refuses a frame whose size field is smaller than the
/// 8-byte frame header.
///
/// Written by hand because fe2o3-amqp 0.18's SASL and AMQP frame decoders read the header of
/// whatever the length prefix delimits without checking its length, and panic on a 4- to 7-byte
/// frame. The server runs every byte through this guard before fe2o3-amqp sees it, so such a
/// frame closes the connection instead. Everything else (sizes over the limit, bad headers, bad
/// performatives) fe2o3-amqp refuses on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameGuard {
    at: FramePosition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FramePosition {
    /// Inside an 8-byte protocol header, this many bytes read.
    Header(u8),
    /// Inside a frame's 4-byte size field.
    Size { read: u8, bytes: [u8; 4] },
    /// Inside a frame, this many bytes still to come.
    Body(u32),
    /// A frame was refused; nothing more is read.
    Refused(u32),
}

impl Default for FrameGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameGuard {
    /// A guard at the start of a connection, where a protocol header comes first.
    pub fn new() -> Self {
        Self {
            at: FramePosition::Header(0),
        }
    }

    /// Checks the next bytes of the stream. After an error the guard stays refused.
    pub fn check(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        while let Some(&first) = data.first() {
            match &mut self.at {
                FramePosition::Refused(size) => return Err(FrameError::ShorterThanHeader(*size)),
                FramePosition::Header(read) => {
                    let take = data.len().min(usize::from(8 - *read));
                    // take <= 8, so it fits in a u8.
                    *read += take as u8;
                    data = &data[take..];
                    if *read == 8 {
                        self.at = FramePosition::Size {
                            read: 0,
                            bytes: [0; 4],
                        };
                    }
                }
                FramePosition::Size { read, bytes } => {
                    bytes[usize::from(*read)] = first;
                    *read += 1;
                    data = &data[1..];
                    if *read == 4 {
                        // A protocol header (the one after SASL) where a frame could start: its
                        // "AMQP" would be a size of about 1 GB, which no peer may send.
                        if bytes == b"AMQP" {
                            self.at = FramePosition::Header(4);
                        } else {
                            let size = u32::from_be_bytes(*bytes);
                            if size < 8 {
                                self.at = FramePosition::Refused(size);
                                return Err(FrameError::ShorterThanHeader(size));
                            }
                            self.at = FramePosition::Body(size - 4);
                        }
                    }
                }
                FramePosition::Body(remaining) => {
                    let take = data
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    // take <= remaining, so it fits in a u32.
                    *remaining -= take as u32;
                    data = &data[take..];
                    if *remaining == 0 {
                        self.at = FramePosition::Size {
                            read: 0,
                            bytes: [0; 4],
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

/// `{idScope}/registrations/{registrationId}`: exactly three segments, the middle one the literal.
fn parse_path(path: &str) -> Option<DeviceIdentity> {
    let mut parts = path.split('/');
    let (Some(scope), Some(literal), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if scope.is_empty() || id.is_empty() || !literal.eq_ignore_ascii_case("registrations") {
        return None;
    }
    Some(DeviceIdentity {
        id_scope: scope.to_owned(),
        registration_id: decode(id).into_owned(),
    })
}

/// Percent-decodes when the text is valid percent-encoded UTF-8; otherwise keeps it as it is.
fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .unwrap_or(Cow::Borrowed(text))
}

/// At most 200 characters of peer-supplied text, for error messages.
fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests;
