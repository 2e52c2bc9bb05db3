//! One MQTT session: CONNECT, SUBSCRIBE, register and operation-status PUBLISHes, answered in
//! request order on this connection only.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use usher_proto::api_version::Api;
use usher_proto::mqtt::dps::{self, Request, Username};
use usher_proto::mqtt::{
    Connect, ConnectReturnCode, DecodeError, Packet, Publish, QoS, decode, encode,
};

use crate::app::{App, Protocol};
use crate::error::ApiError;
use crate::registration::{self, DeviceRequest};

/// The largest packet a session reads: the DPS message limit (96 KB, the same on every transport)
/// for the payload, plus room for the topic and the fixed and variable headers. A larger packet
/// closes the connection before its body is buffered; a payload over 96 KB inside a packet that
/// fits is answered 413, as HTTPS answers a body over the limit.
pub const MAX_PACKET: usize = usher_proto::model::MAX_MESSAGE_BYTES + 4 * 1024;

/// The longest keep-alive enforced: a client asking for more (or for 0, "no keep-alive", as the C
/// SDK does) is held to this, so no session can stay silent for longer.
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(20 * 60);

/// Limits every session enforces. Every timeout is a wall-clock deadline, not a per-byte one: a
/// client that dribbles a byte now and then does not keep a session alive.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest packet accepted; a larger one closes the connection. See [`MAX_PACKET`].
    pub max_packet: usize,
    /// How long a new connection has from its start to a complete CONNECT.
    pub connect_timeout: Duration,
    /// The most silence a session may keep: the keep-alive a client asks for is enforced at 1.5×
    /// (MQTT 3.1.1 §3.1.2.10) but never longer than this; keep-alive 0 gets this.
    pub max_keep_alive: Duration,
    /// How long a packet may take to arrive once its first byte is in.
    pub packet_timeout: Duration,
    /// MQTT sessions open at once; a connection over the limit gets CONNACK 3 (server unavailable).
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet: MAX_PACKET,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: MAX_KEEP_ALIVE,
            packet_timeout: Duration::from_secs(10),
            max_sessions: 10_000,
        }
    }
}

impl Limits {
    /// How long a connected session may go without a complete packet.
    fn silence_allowed(&self, keep_alive_secs: u16) -> Duration {
        if keep_alive_secs == 0 {
            return self.max_keep_alive;
        }
        Duration::from_millis(u64::from(keep_alive_secs) * 1500).min(self.max_keep_alive)
    }
}

/// Why a session ended early. Logged, never sent (MQTT has no error packet before 5.0).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("no complete CONNECT within {0:?} of connecting")]
    ConnectTimeout(Duration),
    #[error("no complete packet for {0:?} (keep-alive)")]
    KeepAliveExpired(Duration),
    #[error("a packet took longer than {0:?} to arrive")]
    PacketTimeout(Duration),
    #[error("{0} before CONNECT")]
    NotConnected(&'static str),
    #[error("a second CONNECT")]
    SecondConnect,
    #[error("the client sent {0}, which only a server sends")]
    ServerPacket(&'static str),
    #[error("CONNECT refused: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("a PUBLISH to {0:?}, which is not a DPS topic")]
    NotDpsTopic(String),
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

/// What the session knows once CONNECT is accepted.
struct Connected {
    username: Username,
    password: Option<String>,
    keep_alive: u16,
}

/// Who is at the other end of a session: the client's address, and the certificate chain it
/// presented in its TLS handshake (X.509 devices; empty otherwise).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub chain: crate::x509::ClientChain,
}

/// Runs a session until the client disconnects, misbehaves or `shutdown` is cancelled. Over the
/// session limit (`Limits::max_sessions`, shared by every transport) the client gets CONNACK 3
/// (server unavailable) and the connection is closed.
pub async fn run_session<I, O>(
    app: App,
    endpoint: &super::Endpoint,
    mut input: I,
    mut output: O,
    Peer {
        addr: peer,
        chain: client_chain,
    }: Peer,
    protocol: Protocol,
    shutdown: CancellationToken,
) where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
    O: Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let Ok(_permit) = std::sync::Arc::clone(&endpoint.sessions).try_acquire_owned() else {
        tracing::warn!(%peer, "MQTT connection limit reached");
        refuse_busy(output).await;
        return;
    };
    let _open = app.metrics.mqtt_session(protocol);
    let limits = endpoint.limits;
    let mut session = Session {
        app,
        peer,
        client_chain,
        protocol,
        connected: None,
        granted: None,
        next_packet_id: 0,
        buffer: BytesMut::new(),
    };
    // On shutdown the session stops reading; a request already being answered is finished first.
    let result = session
        .drive(&mut input, &mut output, limits, &shutdown)
        .await;
    match result {
        Ok(()) => tracing::debug!(%peer, "MQTT session ended"),
        Err(e) => tracing::info!(%peer, error = %e, "MQTT session closed"),
    }
    let _ = output.close().await;
}

/// Answers a connection over the limit with CONNACK 3 (server unavailable) and closes it.
async fn refuse_busy<O: Sink<Bytes, Error = std::io::Error> + Unpin>(mut output: O) {
    let mut out = Vec::new();
    encode(
        &Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::ServerUnavailable,
        },
        &mut out,
    );
    let _ = output.send(Bytes::from(out)).await;
    let _ = output.close().await;
}

struct Session {
    app: App,
    peer: SocketAddr,
    /// The certificate chain the device presented at the TLS handshake (X.509 devices).
    client_chain: crate::x509::ClientChain,
    protocol: Protocol,
    connected: Option<Connected>,
    /// The QoS granted to the response subscription; answers go out at it (never above 1).
    granted: Option<QoS>,
    next_packet_id: u16,
    buffer: BytesMut,
}

impl Session {
    async fn drive<I, O>(
        &mut self,
        input: &mut I,
        output: &mut O,
        limits: Limits,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError>
    where
        I: Stream<Item = std::io::Result<Bytes>> + Unpin,
        O: Sink<Bytes, Error = std::io::Error> + Unpin,
    {
        let started = tokio::time::Instant::now();
        // When the last complete packet arrived (the keep-alive clock), and when the first byte of
        // the packet now arriving did (the packet clock).
        let mut last_packet = started;
        let mut partial_since = None;
        loop {
            // Handle every whole packet already buffered, in order.
            while let Some((packet, used)) = decode(&self.buffer, limits.max_packet)? {
                let _ = self.buffer.split_to(used);
                last_packet = tokio::time::Instant::now();
                partial_since = None;
                if !self.handle(packet, output).await? {
                    return Ok(());
                }
            }
            if !self.buffer.is_empty() {
                partial_since.get_or_insert_with(tokio::time::Instant::now);
            }
            let (deadline, expired) = match &self.connected {
                None => (
                    started + limits.connect_timeout,
                    SessionError::ConnectTimeout(limits.connect_timeout),
                ),
                Some(c) => {
                    let allowed = limits.silence_allowed(c.keep_alive);
                    (
                        last_packet + allowed,
                        SessionError::KeepAliveExpired(allowed),
                    )
                }
            };
            let (deadline, expired) = match partial_since {
                Some(since) if since + limits.packet_timeout < deadline => (
                    since + limits.packet_timeout,
                    SessionError::PacketTimeout(limits.packet_timeout),
                ),
                _ => (deadline, expired),
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = tokio::time::timeout_at(deadline, input.next()) => next,
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk?,
                Ok(None) => return Ok(()),
                Err(_) => return Err(expired),
            };
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Handles one packet; `Ok(false)` ends the session cleanly.
    async fn handle<O>(&mut self, packet: Packet, output: &mut O) -> Result<bool, SessionError>
    where
        O: Sink<Bytes, Error = std::io::Error> + Unpin,
    {
        if self.connected.is_none() {
            let Packet::Connect(connect) = packet else {
                return Err(SessionError::NotConnected(packet.name()));
            };
            let code = self.accept_connect(*connect);
            send(
                output,
                &Packet::ConnAck {
                    session_present: false,
                    code,
                },
            )
            .await?;
            return if code == ConnectReturnCode::Accepted {
                Ok(true)
            } else {
                Err(SessionError::Refused(code))
            };
        }
        match packet {
            Packet::Connect(_) => return Err(SessionError::SecondConnect),
            Packet::Subscribe { packet_id, filters } => {
                let return_codes = filters
                    .iter()
                    .map(|(filter, qos)| {
                        if filter == dps::RESPONSE_FILTER {
                            let granted = (*qos).min(QoS::AtLeastOnce);
                            self.granted = Some(granted);
                            granted as u8
                        } else {
                            0x80
                        }
                    })
                    .collect();
                send(
                    output,
                    &Packet::SubAck {
                        packet_id,
                        return_codes,
                    },
                )
                .await?;
            }
            Packet::Unsubscribe { packet_id, .. } => {
                send(output, &Packet::UnsubAck { packet_id }).await?
            }
            Packet::PingReq => send(output, &Packet::PingResp).await?,
            Packet::PubAck { .. } => {}
            Packet::Disconnect => return Ok(false),
            Packet::Publish(publish) => self.publish(publish, output).await?,
            other @ (Packet::ConnAck { .. }
            | Packet::SubAck { .. }
            | Packet::UnsubAck { .. }
            | Packet::PingResp) => {
                return Err(SessionError::ServerPacket(other.name()));
            }
        }
        Ok(true)
    }

    /// Decides the CONNACK. Credentials are checked on each request, as DPS does, so that a bad
    /// token is answered on the response topic with a 401 and an error body every SDK reads.
    fn accept_connect(&mut self, connect: Connect) -> ConnectReturnCode {
        if connect.protocol_name != "MQTT"
            || connect.protocol_level != usher_proto::mqtt::PROTOCOL_LEVEL
        {
            return ConnectReturnCode::UnacceptableProtocolVersion;
        }
        let Some(username) = connect
            .username
            .as_deref()
            .and_then(|u| dps::parse_username(u).ok())
        else {
            return ConnectReturnCode::BadUserNameOrPassword;
        };
        let password = connect.password.and_then(|p| String::from_utf8(p).ok());
        self.connected = Some(Connected {
            username,
            password,
            keep_alive: connect.keep_alive,
        });
        ConnectReturnCode::Accepted
    }

    async fn publish<O>(&mut self, publish: Publish, output: &mut O) -> Result<(), SessionError>
    where
        O: Sink<Bytes, Error = std::io::Error> + Unpin,
    {
        // Acknowledge first, as the SDKs expect, then answer.
        if let Some(packet_id) = publish.packet_id {
            send(output, &Packet::PubAck { packet_id }).await?;
        }
        let (status, body, retry_after, rid) = match dps::parse_request(&publish.topic) {
            Ok(request) => {
                let (status, body, retry_after) = self.answer(&request, &publish.payload).await;
                (status, body, retry_after, request.rid().to_owned())
            }
            Err(e) => {
                // Inside $dps/registrations/ a request DPS cannot serve is answered on its $rid
                // (empty when it had none, as DPS does); any other topic ends the session.
                let Some(rid) = e.rid().map(str::to_owned) else {
                    return Err(SessionError::NotDpsTopic(publish.topic));
                };
                let error = match e {
                    dps::TopicError::UnknownOperation { .. } => ApiError::NoRoute(e.to_string()),
                    other => ApiError::InvalidArgument(other.to_string()),
                };
                let (status, body, retry_after) = self.refuse(&error);
                (status, body, retry_after, rid)
            }
        };
        // Answers go out at the QoS the subscription was granted (at most 1, as DPS delivers);
        // before any SUBSCRIBE, at QoS 1 as DPS publishes.
        let qos = self.granted.unwrap_or(QoS::AtLeastOnce);
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => {
                self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
                Some(self.next_packet_id)
            }
        };
        let response = Publish {
            dup: false,
            qos,
            retain: false,
            topic: dps::response_topic(status, &rid, retry_after),
            packet_id,
            payload: body,
        };
        send(output, &Packet::Publish(response)).await?;
        Ok(())
    }

    /// Runs a request through the registration core: (status, JSON body, retry-after).
    async fn answer(&self, request: &Request, payload: &[u8]) -> (u16, Vec<u8>, Option<u32>) {
        let Some(connected) = &self.connected else {
            return self.refuse(&ApiError::Unauthorized(
                crate::error::AuthError::MissingAuthorization,
            ));
        };
        // The user name's api-version is checked as the HTTPS query's is; one that is absent is
        // accepted (embedded firmware may leave the query part out).
        if let Some(version) = &connected.username.api_version
            && let Err(e) = Api::Device.check(Some(version))
        {
            return self.refuse(&e.into());
        }
        let device = DeviceRequest {
            id_scope: &connected.username.id_scope,
            registration_id: &connected.username.registration_id,
            authorization: connected.password.as_deref(),
            client_chain: &self.client_chain,
            protocol: self.protocol,
            peer: Some(self.peer.ip()),
        };
        let result = match request {
            Request::Register { .. } => match registration::parse_registration_body(payload) {
                Ok(body) => registration::register(&self.app, device, &body).await,
                Err(e) => Err(e),
            },
            // Poll payloads differ per SDK (" ", "", the full registration JSON): ignored.
            Request::OperationStatus { operation_id, .. } => {
                registration::operation_status(&self.app, device, operation_id).await
            }
        };
        match result {
            Ok(status) => {
                let (code, retry_after) = registration::response_status(&self.app, &status);
                (code, json(&status), retry_after)
            }
            Err(e) => self.refuse(&e),
        }
    }

    /// Logs a refused request (the same line every transport writes) and renders its answer.
    fn refuse(&self, error: &ApiError) -> (u16, Vec<u8>, Option<u32>) {
        error.log(self.protocol, Some(self.peer));
        (
            error.code().http_status(),
            json(&error.body()),
            error.retry_after(),
        )
    }
}

/// Serialises a response body. Our wire types always serialise; should one ever fail, `{}` keeps
/// the Node SDK (which parses every response body) from throwing.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

async fn send<O>(output: &mut O, packet: &Packet) -> Result<(), SessionError>
where
    O: Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let mut out = Vec::new();
    encode(packet, &mut out);
    output.send(Bytes::from(out)).await?;
    Ok(())
}
