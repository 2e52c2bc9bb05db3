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

/// Limits every session enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest packet accepted; a larger one closes the connection. See [`MAX_PACKET`].
    pub max_packet: usize,
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// How long a session with keep-alive 0 may stay silent.
    pub idle_timeout: Duration,
    /// MQTT sessions open at once; a connection over the limit gets CONNACK 3 (server unavailable).
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet: MAX_PACKET,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30 * 60),
            max_sessions: 10_000,
        }
    }
}

/// Why a session ended early. Logged, never sent (MQTT has no error packet before 5.0).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("nothing received for {0:?} (keep-alive)")]
    KeepAliveExpired(Duration),
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

/// Runs a session until the client disconnects, misbehaves or `shutdown` is cancelled. Over the
/// session limit (`Limits::max_sessions`, shared by every transport) the client gets CONNACK 3
/// (server unavailable) and the connection is closed.
pub async fn run_session<I, O>(
    app: App,
    mut input: I,
    mut output: O,
    peer: SocketAddr,
    protocol: Protocol,
    shutdown: CancellationToken,
) where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
    O: Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let Ok(_permit) = std::sync::Arc::clone(&app.mqtt_sessions).try_acquire_owned() else {
        tracing::warn!(%peer, "MQTT connection limit reached");
        refuse_busy(output).await;
        return;
    };
    let _open = app.metrics.mqtt_session(protocol);
    let limits = app.settings.mqtt;
    let mut session = Session {
        app,
        peer,
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
        loop {
            // Handle every whole packet already buffered, in order.
            while let Some((packet, used)) = decode(&self.buffer, limits.max_packet)? {
                let _ = self.buffer.split_to(used);
                if !self.handle(packet, output).await? {
                    return Ok(());
                }
            }
            let wait = match &self.connected {
                None => limits.connect_timeout,
                // MQTT 3.1.1: one and a half keep-alive periods without a packet ends the session.
                Some(c) if c.keep_alive > 0 => {
                    Duration::from_millis(u64::from(c.keep_alive) * 1500)
                }
                Some(_) => limits.idle_timeout,
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = tokio::time::timeout(wait, input.next()) => next,
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk?,
                Ok(None) => return Ok(()),
                Err(_) if self.connected.is_none() => {
                    return Err(SessionError::ConnectTimeout(wait));
                }
                Err(_) => return Err(SessionError::KeepAliveExpired(wait)),
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
            protocol: self.protocol,
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
        (error.code().http_status(), json(&error.body()), None)
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
