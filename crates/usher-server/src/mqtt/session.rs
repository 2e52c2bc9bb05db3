//! One MQTT session: CONNECT, SUBSCRIBE, register and operation-status PUBLISHes, answered in
//! request order on this connection only.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use usher_proto::mqtt::dps::{self, Request, Username};
use usher_proto::mqtt::{
    Connect, ConnectReturnCode, DecodeError, Packet, Publish, QoS, decode, encode,
};

use crate::app::App;
use crate::error::ApiError;
use crate::registration::{self, DeviceRequest};

/// Limits every session enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest packet accepted; a larger one closes the connection. DPS messages are at most 96 KB.
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
            max_packet: 128 * 1024,
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
    #[error("a PUBLISH to {0:?} without a $rid to answer")]
    UnanswerablePublish(String),
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
    let limits = app.settings.mqtt;
    let mut session = Session {
        app,
        connected: None,
        next_packet_id: 0,
        buffer: BytesMut::new(),
    };
    let result = tokio::select! {
        r = session.drive(&mut input, &mut output, limits) => r,
        () = shutdown.cancelled() => Ok(()),
    };
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
    connected: Option<Connected>,
    next_packet_id: u16,
    buffer: BytesMut,
}

impl Session {
    async fn drive<I, O>(
        &mut self,
        input: &mut I,
        output: &mut O,
        limits: Limits,
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
            let chunk = match tokio::time::timeout(wait, input.next()).await {
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
                            (*qos).min(QoS::AtLeastOnce) as u8
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
                // A request we cannot parse is answered if it names a $rid, else the session ends.
                let rid = publish
                    .topic
                    .split_once("$rid=")
                    .map(|(_, r)| r.split('&').next().unwrap_or(r).to_owned());
                let Some(rid) = rid.filter(|r| !r.is_empty()) else {
                    return Err(SessionError::UnanswerablePublish(publish.topic));
                };
                let error = ApiError::NoRoute(e.to_string());
                (error.code().http_status(), json(&error.body()), None, rid)
            }
        };
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        let response = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: dps::response_topic(status, &rid, retry_after),
            packet_id: Some(self.next_packet_id),
            payload: body,
        };
        send(output, &Packet::Publish(response)).await?;
        Ok(())
    }

    /// Runs a request through the registration core: (status, JSON body, retry-after).
    async fn answer(&self, request: &Request, payload: &[u8]) -> (u16, Vec<u8>, Option<u32>) {
        let Some(connected) = &self.connected else {
            return error_answer(&ApiError::Unauthorized(
                crate::error::AuthError::MissingAuthorization,
            ));
        };
        let device = DeviceRequest {
            id_scope: &connected.username.id_scope,
            registration_id: &connected.username.registration_id,
            authorization: connected.password.as_deref(),
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
            Err(e) => error_answer(&e),
        }
    }
}

fn error_answer(error: &ApiError) -> (u16, Vec<u8>, Option<u32>) {
    tracing::debug!(error = %error, "MQTT request refused");
    (error.code().http_status(), json(&error.body()), None)
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
