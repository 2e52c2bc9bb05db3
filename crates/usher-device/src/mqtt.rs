//! The MQTT exchange (`device-protocol.md` §5), over TLS or over WebSockets, on the shared sans-IO
//! codec.

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_util::codec::{BytesCodec, FramedRead, FramedWrite};
use usher_proto::mqtt::dps::{self, RESPONSE_FILTER};
use usher_proto::mqtt::{Connect, ConnectReturnCode, Packet, Publish, QoS, decode, encode};

use crate::client::{API_VERSION, Answer, Client, Transport, error_chain};
use crate::{Credential, ProvisionError};

/// Largest packet the client accepts.
const MAX_PACKET: usize = 256 * 1024;
/// Keep-alive sent in CONNECT.
const KEEP_ALIVE: u16 = 60;

type Input = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;
type Output = Pin<Box<dyn Sink<Bytes, Error = std::io::Error> + Send>>;

pub(crate) struct MqttLink {
    input: Input,
    output: Output,
    buffer: BytesMut,
    next_packet_id: u16,
    next_rid: u64,
    timeout: Duration,
    /// Whether the response topic is subscribed (before the first request).
    subscribed: bool,
}

impl MqttLink {
    /// Opens the connection (TLS, and the WebSocket upgrade for `MqttWs`), sends CONNECT and waits
    /// for CONNACK. The response topic is subscribed before the first request.
    pub(crate) async fn connect(
        client: &Client,
        credential: &Credential,
        token: Option<&str>,
    ) -> Result<Self, ProvisionError> {
        let endpoint = &client.endpoint;
        let port = endpoint.port(client.transport);
        let transport = |e: &dyn std::error::Error| ProvisionError::Transport(error_chain(e));
        let tcp = match endpoint.connect_to {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((endpoint.hostname(), port)).await,
        }
        .map_err(|e| transport(&e))?;
        let _ = tcp.set_nodelay(true);
        let tls_config = client.tls_config(Some(credential))?;
        let name = rustls_pki_types::ServerName::try_from(endpoint.hostname().to_owned())
            .map_err(|e| ProvisionError::Transport(format!("invalid host name: {e}")))?;
        let tls = TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(|e| transport(&e))?;

        let (input, output): (Input, Output) = if client.transport == Transport::MqttWs {
            let mut request = format!("wss://{}:{port}/$iothub/websocket", endpoint.hostname())
                .into_client_request()
                .map_err(|e| transport(&e))?;
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "mqtt"
                    .parse()
                    .map_err(|_| ProvisionError::Transport("bad header".into()))?,
            );
            let (ws, _) = tokio_tungstenite::client_async(request, tls)
                .await
                .map_err(|e| transport(&e))?;
            let (sink, stream) = ws.split();
            let output = sink
                .sink_map_err(std::io::Error::other)
                .with(|b: Bytes| async move { Ok::<_, std::io::Error>(Message::Binary(b)) });
            let input = stream.filter_map(|m| {
                std::future::ready(match m {
                    Ok(Message::Binary(b)) => Some(Ok(b)),
                    Ok(Message::Close(_)) => Some(Err(std::io::Error::from(
                        std::io::ErrorKind::ConnectionAborted,
                    ))),
                    Ok(_) => None,
                    Err(e) => Some(Err(std::io::Error::other(e))),
                })
            });
            (Box::pin(input), Box::pin(output))
        } else {
            let (read, write) = tokio::io::split(tls);
            let input = FramedRead::new(read, BytesCodec::new()).map(|r| r.map(BytesMut::freeze));
            (
                Box::pin(input),
                Box::pin(FramedWrite::new(write, BytesCodec::new())),
            )
        };
        let mut link = Self {
            input,
            output,
            buffer: BytesMut::new(),
            next_packet_id: 0,
            next_rid: 0,
            timeout: client.timeout,
            subscribed: false,
        };

        let id = credential.registration_id().as_str();
        let user_agent = concat!("usher-device/", env!("CARGO_PKG_VERSION"));
        link.send(&Packet::Connect(Box::new(Connect {
            protocol_name: "MQTT".into(),
            protocol_level: usher_proto::mqtt::PROTOCOL_LEVEL,
            clean_session: true,
            keep_alive: KEEP_ALIVE,
            client_id: id.to_owned(),
            will: None,
            username: Some(format!(
                "{}/registrations/{id}/api-version={API_VERSION}&ClientVersion={}",
                client.id_scope,
                utf8_percent_encode(user_agent, NON_ALPHANUMERIC)
            )),
            password: token.map(|t| t.as_bytes().to_vec()),
        })))
        .await?;
        match link.recv().await? {
            Packet::ConnAck {
                code: ConnectReturnCode::Accepted,
                ..
            } => {}
            Packet::ConnAck { code, .. } => return Err(ProvisionError::ConnectRefused(code as u8)),
            other => {
                return Err(ProvisionError::Protocol(format!(
                    "expected CONNACK, got {}",
                    other.name()
                )));
            }
        }
        Ok(link)
    }

    pub(crate) async fn register(&mut self, body: Vec<u8>) -> Result<Answer, ProvisionError> {
        let rid = self.rid();
        self.request(
            format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
            rid,
            body,
        )
        .await
    }

    pub(crate) async fn poll(&mut self, operation_id: &str) -> Result<Answer, ProvisionError> {
        let rid = self.rid();
        let op = utf8_percent_encode(operation_id, NON_ALPHANUMERIC);
        self.request(
            format!(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
            ),
            rid,
            Vec::new(),
        )
        .await
    }

    /// PINGREQ, answered by PINGRESP.
    pub(crate) async fn ping(&mut self) -> Result<(), ProvisionError> {
        self.send(&Packet::PingReq).await?;
        match self.recv().await? {
            Packet::PingResp => Ok(()),
            other => Err(ProvisionError::Protocol(format!(
                "expected PINGRESP, got {}",
                other.name()
            ))),
        }
    }

    async fn subscribe(&mut self) -> Result<(), ProvisionError> {
        let packet_id = self.packet_id();
        self.send(&Packet::Subscribe {
            packet_id,
            filters: vec![(RESPONSE_FILTER.into(), QoS::AtLeastOnce)],
        })
        .await?;
        match self.recv().await? {
            Packet::SubAck {
                packet_id: p,
                return_codes,
            } if p == packet_id && return_codes.first().is_some_and(|c| *c <= 2) => {}
            other => {
                return Err(ProvisionError::Protocol(format!(
                    "SUBSCRIBE not granted: {other:?}"
                )));
            }
        }
        self.subscribed = true;
        Ok(())
    }

    pub(crate) async fn disconnect(&mut self) {
        let _ = self.send(&Packet::Disconnect).await;
        let _ = self.output.close().await;
    }

    /// Publishes a request at QoS 1 and waits for the response that echoes its `$rid`.
    async fn request(
        &mut self,
        topic: String,
        rid: String,
        payload: Vec<u8>,
    ) -> Result<Answer, ProvisionError> {
        if !self.subscribed {
            self.subscribe().await?;
        }
        let packet_id = self.packet_id();
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(packet_id),
            payload,
        }))
        .await?;
        loop {
            match self.recv().await? {
                Packet::PubAck { .. } => {}
                Packet::Publish(p) => {
                    if let Some(id) = p.packet_id {
                        self.send(&Packet::PubAck { packet_id: id }).await?;
                    }
                    let response = dps::parse_response(&p.topic).ok_or_else(|| {
                        ProvisionError::Protocol(format!("unexpected topic {:?}", p.topic))
                    })?;
                    if response.rid != rid {
                        return Err(ProvisionError::Protocol(format!(
                            "answer for $rid {} while waiting for {rid}",
                            response.rid
                        )));
                    }
                    return Ok(Answer {
                        status: response.status,
                        body: p.payload,
                        retry_after: response
                            .retry_after
                            .map(|s| Duration::from_secs(u64::from(s))),
                    });
                }
                other => {
                    return Err(ProvisionError::Protocol(format!(
                        "unexpected {}",
                        other.name()
                    )));
                }
            }
        }
    }

    fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        self.next_packet_id
    }

    fn rid(&mut self) -> String {
        self.next_rid += 1;
        self.next_rid.to_string()
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ProvisionError> {
        let mut out = Vec::new();
        encode(packet, &mut out);
        self.output
            .send(Bytes::from(out))
            .await
            .map_err(|e| ProvisionError::Transport(error_chain(&e)))
    }

    async fn recv(&mut self) -> Result<Packet, ProvisionError> {
        loop {
            match decode(&self.buffer, MAX_PACKET) {
                Ok(Some((packet, used))) => {
                    let _ = self.buffer.split_to(used);
                    return Ok(packet);
                }
                Ok(None) => {}
                Err(e) => return Err(ProvisionError::Protocol(e.to_string())),
            }
            let chunk = tokio::time::timeout(self.timeout, self.input.next())
                .await
                .map_err(|_| ProvisionError::Timeout(self.timeout))?
                .ok_or_else(|| {
                    ProvisionError::Transport("the service closed the connection".into())
                })?
                .map_err(|e| ProvisionError::Transport(error_chain(&e)))?;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}
