//! `SharedAccessSignature` tokens, as devices and service clients present them.
//!
//! A token looks like `SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>[&skn=<key name>]`
//! with the fields in any order. The signature is `base64(HMAC-SHA256(key, sr + "\n" + se))` where
//! `sr` is the resource **exactly as it appears in the token**: the official SDKs sign three different
//! spellings of the same resource (raw, `%2F`, `%2f`) and each puts the string it signed into `sr=`,
//! so a verifier that re-encodes the resource would refuse two SDKs out of three.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::keys::{SymmetricKey, hmac_sha256, hmac_sha256_verify};

/// The token prefix, followed by a space.
pub const PREFIX: &str = "SharedAccessSignature";
/// The only key name (`skn`) a device token may carry.
pub const DEVICE_KEY_NAME: &str = "registration";
/// Longest token text accepted. Real tokens are well under 1 KB; anything longer is refused before
/// any parsing work.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Characters left unescaped when encoding a token field: the RFC 3986 unreserved set.
const FIELD_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a token was refused. Each variant names what was wrong with the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the token is {len} bytes long; at most {MAX_TOKEN_LEN} are accepted")]
    TooLong { len: usize },
    #[error("the token does not start with `SharedAccessSignature `")]
    MissingPrefix,
    #[error("the token field {field:?} is not of the form key=value")]
    MalformedField { field: String },
    #[error("the token field `{field}` appears more than once")]
    DuplicateField { field: &'static str },
    #[error("the token has no `{field}` field")]
    MissingField { field: &'static str },
    #[error("the token field `{field}` is empty")]
    EmptyField { field: &'static str },
    #[error("the token field `{field}` has invalid percent-encoding")]
    BadPercentEncoding { field: &'static str },
    #[error("the token signature is not valid base64")]
    BadSignatureBase64,
    #[error("the token expiry {value:?} is not a decimal number of seconds")]
    MalformedExpiry { value: String },
    #[error("the token expired at {expiry} (now {now})")]
    Expired { expiry: u64, now: u64 },
    #[error("the token key name is {found:?}; device tokens use `registration`")]
    WrongKeyName { found: String },
    #[error(
        "the token resource {resource:?} is not of the form {{idScope}}/registrations/{{registrationId}}"
    )]
    NotARegistrationResource { resource: String },
    #[error("the token is for ID scope {found:?}, not {expected:?}")]
    IdScopeMismatch { expected: String, found: String },
    #[error("the token is for registration {found:?}, not {expected:?}")]
    RegistrationIdMismatch { expected: String, found: String },
    #[error("the token is for host {found:?}, not {expected:?}")]
    HostMismatch { expected: String, found: String },
    #[error("the token signature does not match any key")]
    SignatureMismatch,
}

/// The current time and the allowed clock skew, both passed in (this crate reads no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Seconds since the Unix epoch.
    pub unix_secs: u64,
    /// How far past its expiry a token is still accepted, to tolerate device clocks that run slow.
    pub skew_secs: u64,
}

/// A parsed token. Holds the literal `sr` and `se` text the signature covers, and the decoded values
/// the claims are checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as it appears in the token: the signed bytes.
    resource_literal: String,
    /// `sr` percent-decoded: what the token claims access to.
    resource: String,
    /// `sig` percent-decoded and base64-decoded.
    signature: Vec<u8>,
    /// `se` exactly as it appears in the token: the signed bytes.
    expiry_literal: String,
    expiry: u64,
    /// `skn` percent-decoded, if present (the Python device SDK omits it).
    key_name: Option<String>,
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasToken {
    /// Parses token text: the prefix, then `&`-separated `key=value` fields in any order.
    /// `sr`, `sig` and `se` are required, `skn` is optional, unknown fields are ignored, and a
    /// field given twice is refused.
    pub fn parse(text: &str) -> Result<Self, SasError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(SasError::TooLong { len: text.len() });
        }
        let rest = text
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(SasError::MissingPrefix)?
            .trim_start_matches(' ');

        let mut sr = None;
        let mut sig = None;
        let mut se = None;
        let mut skn = None;
        for part in rest.split('&') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| SasError::MalformedField {
                    field: part.chars().take(32).collect(),
                })?;
            let (slot, name) = match key {
                "sr" => (&mut sr, "sr"),
                "sig" => (&mut sig, "sig"),
                "se" => (&mut se, "se"),
                "skn" => (&mut skn, "skn"),
                "" => {
                    return Err(SasError::MalformedField {
                        field: part.chars().take(32).collect(),
                    });
                }
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(SasError::DuplicateField { field: name });
            }
        }

        let resource_literal = required(sr, "sr")?;
        let resource = percent_decode(resource_literal, "sr")?;
        let signature = STANDARD
            .decode(percent_decode(required(sig, "sig")?, "sig")?)
            .map_err(|_| SasError::BadSignatureBase64)?;
        let expiry_literal = required(se, "se")?;
        let expiry = parse_expiry(expiry_literal)?;
        let key_name = skn.map(|v| percent_decode(v, "skn")).transpose()?;

        Ok(Self {
            resource_literal: resource_literal.to_owned(),
            resource,
            signature,
            expiry_literal: expiry_literal.to_owned(),
            expiry,
            key_name,
        })
    }

    /// The decoded resource (`sr`).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The expiry (`se`), in seconds since the Unix epoch.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// The decoded key name (`skn`), if the token has one.
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// Checks that the token has not expired, allowing `now.skew_secs` of clock skew.
    pub fn check_expiry(&self, now: Now) -> Result<(), SasError> {
        if self.expiry.saturating_add(now.skew_secs) <= now.unix_secs {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now: now.unix_secs,
            });
        }
        Ok(())
    }

    /// Checks the signature against each key in turn, in constant time per key, and returns the
    /// index of the key that signed the token.
    pub fn check_signature(&self, keys: &[&SymmetricKey]) -> Result<usize, SasError> {
        let message = signed_string(&self.resource_literal, &self.expiry_literal);
        keys.iter()
            .position(|key| hmac_sha256_verify(key.as_bytes(), message.as_bytes(), &self.signature))
            .ok_or(SasError::SignatureMismatch)
    }

    /// Checks everything a device token claims except the signature: the key name, the resource
    /// `{idScope}/registrations/{registrationId}` (case-insensitive) and the expiry.
    pub fn check_device_claims(
        &self,
        id_scope: &str,
        registration_id: &str,
        now: Now,
    ) -> Result<(), SasError> {
        if let Some(found) = &self.key_name
            && found != DEVICE_KEY_NAME
        {
            return Err(SasError::WrongKeyName {
                found: found.clone(),
            });
        }
        let not_a_registration = || SasError::NotARegistrationResource {
            resource: self.resource.clone(),
        };
        let mut parts = self.resource.splitn(3, '/');
        let (Some(scope), Some(literal), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(not_a_registration());
        };
        if !literal.eq_ignore_ascii_case("registrations") || scope.is_empty() || id.is_empty() {
            return Err(not_a_registration());
        }
        if !scope.eq_ignore_ascii_case(id_scope) {
            return Err(SasError::IdScopeMismatch {
                expected: id_scope.to_owned(),
                found: scope.to_owned(),
            });
        }
        if !id.eq_ignore_ascii_case(registration_id) {
            return Err(SasError::RegistrationIdMismatch {
                expected: registration_id.to_owned(),
                found: id.to_owned(),
            });
        }
        self.check_expiry(now)
    }

    /// Checks everything a service token claims except the signature: a key name (the policy) is
    /// present, the resource names `host` (case-insensitive; an `https://` scheme, a `:port` and a
    /// path after the host are allowed) and the token has not expired. Returns the policy name.
    pub fn check_service_claims(&self, host: &str, now: Now) -> Result<&str, SasError> {
        let policy = match self.key_name.as_deref() {
            None => return Err(SasError::MissingField { field: "skn" }),
            Some("") => return Err(SasError::EmptyField { field: "skn" }),
            Some(policy) => policy,
        };
        let found = resource_host(&self.resource);
        if !found.eq_ignore_ascii_case(strip_port(host)) {
            return Err(SasError::HostMismatch {
                expected: host.to_owned(),
                found: found.to_owned(),
            });
        }
        self.check_expiry(now)?;
        Ok(policy)
    }
}

/// Parses and fully verifies a device token for `{id_scope}/registrations/{registration_id}` against
/// candidate keys (an individual enrollment's primary then secondary key, or the keys derived from a
/// group's). Returns the index of the key that signed it.
pub fn verify_device_token(
    text: &str,
    id_scope: &str,
    registration_id: &str,
    keys: &[&SymmetricKey],
    now: Now,
) -> Result<usize, SasError> {
    let token = SasToken::parse(text)?;
    token.check_device_claims(id_scope, registration_id, now)?;
    token.check_signature(keys)
}

/// Builds a device token for `{id_scope}/registrations/{registration_id}` that expires at `expiry`
/// (Unix seconds). The resource is percent-encoded with upper-case hex, as the DPS docs and the
/// Python SDK do, and `skn=registration` is included.
pub fn device_token(
    id_scope: &str,
    registration_id: &str,
    key: &SymmetricKey,
    expiry: u64,
) -> String {
    let resource = format!("{id_scope}/registrations/{registration_id}");
    build(&encode_field(&resource), key, expiry, DEVICE_KEY_NAME)
}

/// Builds a service token for `host` signed with the key of `policy`, expiring at `expiry`.
pub fn service_token(host: &str, policy: &str, key: &SymmetricKey, expiry: u64) -> String {
    build(&encode_field(host), key, expiry, policy)
}

fn build(resource_literal: &str, key: &SymmetricKey, expiry: u64, key_name: &str) -> String {
    let expiry = expiry.to_string();
    let signature = hmac_sha256(
        key.as_bytes(),
        signed_string(resource_literal, &expiry).as_bytes(),
    );
    format!(
        "{PREFIX} sr={resource_literal}&sig={}&se={expiry}&skn={}",
        encode_field(&STANDARD.encode(signature)),
        encode_field(key_name),
    )
}

/// The byte string a token's signature covers.
fn signed_string(resource_literal: &str, expiry_literal: &str) -> String {
    format!("{resource_literal}\n{expiry_literal}")
}

fn encode_field(value: &str) -> String {
    utf8_percent_encode(value, FIELD_ESCAPES).to_string()
}

fn required<'a>(value: Option<&'a str>, field: &'static str) -> Result<&'a str, SasError> {
    match value {
        None => Err(SasError::MissingField { field }),
        Some("") => Err(SasError::EmptyField { field }),
        Some(v) => Ok(v),
    }
}

fn parse_expiry(text: &str) -> Result<u64, SasError> {
    let malformed = || SasError::MalformedExpiry {
        value: text.chars().take(32).collect(),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    text.parse().map_err(|_| malformed())
}

/// Strict percent-decoding: `%` must be followed by two hex digits (either case), `+` stays `+`,
/// and the result must be UTF-8.
fn percent_decode(text: &str, field: &'static str) -> Result<String, SasError> {
    let bad = || SasError::BadPercentEncoding { field };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hi = hex_value(hex[0]).ok_or_else(bad)?;
            let lo = hex_value(hex[1]).ok_or_else(bad)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The host a service-token resource names: scheme, path and port removed.
fn resource_host(resource: &str) -> &str {
    let strip_scheme = |scheme: &str| {
        resource
            .get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| &resource[scheme.len()..])
    };
    let rest = strip_scheme("https://")
        .or_else(|| strip_scheme("http://"))
        .unwrap_or(resource);
    strip_port(rest.split('/').next().unwrap_or(rest))
}

fn strip_port(host: &str) -> &str {
    // An IPv6 literal keeps its colons inside brackets.
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests;
