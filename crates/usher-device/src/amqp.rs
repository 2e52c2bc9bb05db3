//! The AMQP exchange (`device-protocol.md` §6), over TLS or over WebSockets, on fe2o3-amqp's
//! client: SASL PLAIN with the SAS token, one session, a receiver and a sender link at
//! `{idScope}/registrations/{registrationId}`, requests told apart by their application properties
//! and answers matched by `correlation_id`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, Fields};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};
use usher_proto::amqp as dps;
use usher_proto::model::ErrorBody;

use crate::client::{API_VERSION, Answer, Client, Transport, error_chain};
use crate::{Credential, ProvisionError};

pub(crate) struct AmqpLink {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    sender: Sender,
    receiver: Receiver,
    next_correlation_id: u64,
    timeout: Duration,
}

impl AmqpLink {
    /// Opens the connection (TLS, and the WebSocket upgrade for `AmqpWs`), authenticates with
    /// SASL PLAIN, begins a session and attaches both links.
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
        let over_ws = client.transport == Transport::AmqpWs;
        let tls_config = client.tls_config(Some(credential))?;
        let name = rustls_pki_types::ServerName::try_from(endpoint.hostname().to_owned())
            .map_err(|e| ProvisionError::Transport(format!("invalid host name: {e}")))?;
        let tls = TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(|e| transport(&e))?;

        let id = credential.registration_id().as_str();
        let address = format!("{}/registrations/{id}", client.id_scope);
        let builder = Connection::builder()
            .container_id(format!("usher-device-{id}"))
            .hostname(endpoint.hostname())
            .scheme("amqp");
        let builder = match token {
            Some(token) => builder.sasl_profile(SaslProfile::Plain {
                username: address.clone(),
                password: token.to_owned(),
            }),
            // A device with a certificate has authenticated in the TLS handshake already: over
            // TLS it speaks AMQP at once, as the C SDK's X.509 transport does; over WebSockets it
            // goes through SASL ANONYMOUS, so both ways are exercised.
            None if over_ws => builder.sasl_profile(SaslProfile::Anonymous),
            None => builder,
        };
        let opening = async {
            if over_ws {
                let mut request = format!("wss://{}:{port}/$iothub/websocket", endpoint.hostname())
                    .into_client_request()
                    .map_err(|e| transport(&e))?;
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    dps::WS_SUBPROTOCOL
                        .parse()
                        .map_err(|_| ProvisionError::Transport("bad header".into()))?,
                );
                let (ws, _) = tokio_tungstenite::client_async(request, tls)
                    .await
                    .map_err(|e| transport(&e))?;
                builder
                    .open_with_stream(WsStream::new(ws))
                    .await
                    .map_err(open_error)
            } else {
                builder.open_with_stream(tls).await.map_err(open_error)
            }
        };
        let timeout = client.timeout;
        let mut connection = tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| ProvisionError::Timeout(timeout))??;
        let attaching = async {
            let mut session = Session::begin(&mut connection)
                .await
                .map_err(|e| transport(&e))?;
            let mut properties = Fields::default();
            properties.insert(
                Symbol::from(dps::API_VERSION_PROPERTY),
                Value::String(API_VERSION.into()),
            );
            let receiver = Receiver::builder()
                .name(format!("{id}-receiver"))
                .source(address.clone())
                .target(format!("{id}-local"))
                .properties(properties.clone())
                .attach(&mut session)
                .await
                .map_err(|e| ProvisionError::Protocol(format!("receiver link: {e}")))?;
            let sender = Sender::builder()
                .name(format!("{id}-sender"))
                .source(format!("{id}-local"))
                .target(address.clone())
                .properties(properties)
                .attach(&mut session)
                .await
                .map_err(|e| ProvisionError::Protocol(format!("sender link: {e}")))?;
            Ok::<_, ProvisionError>((session, receiver, sender))
        };
        let (session, receiver, sender) = match tokio::time::timeout(timeout, attaching).await {
            Ok(Ok(attached)) => attached,
            failed => {
                // DPS refuses a device by opening the connection and closing it at once with the
                // error; the close, not the failed session or link, says why.
                let closed = tokio::time::timeout(Duration::from_secs(2), connection.on_close());
                if let Ok(Err(fe2o3_amqp::connection::Error::RemoteClosedWithError(e))) =
                    closed.await
                {
                    return Err(refusal(e));
                }
                return Err(match failed {
                    Ok(Err(e)) => e,
                    _ => ProvisionError::Timeout(timeout),
                });
            }
        };
        Ok(Self {
            connection,
            session,
            sender,
            receiver,
            next_correlation_id: 0,
            timeout,
        })
    }

    pub(crate) async fn register(&mut self, body: Vec<u8>) -> Result<Answer, ProvisionError> {
        let properties = ApplicationProperties::builder()
            .insert(dps::OPERATION_TYPE, dps::REGISTER)
            .insert(dps::FORCE_REGISTRATION, SimpleValue::Bool(false))
            .build();
        self.request(properties, body).await
    }

    pub(crate) async fn poll(&mut self, operation_id: &str) -> Result<Answer, ProvisionError> {
        let properties = ApplicationProperties::builder()
            .insert(dps::OPERATION_TYPE, dps::GET_OPERATION_STATUS)
            .insert(dps::OPERATION_ID, operation_id)
            .build();
        self.request(properties, Vec::new()).await
    }

    pub(crate) async fn disconnect(mut self) {
        let closing = async {
            let _ = self.sender.close().await;
            let _ = self.receiver.close().await;
            let _ = self.session.end().await;
            let _ = self.connection.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    }

    /// Sends a request and waits for the answer that echoes its correlation ID. A rejected
    /// request is an answer too: its status is the error body's `errorCode` class.
    async fn request(
        &mut self,
        application_properties: ApplicationProperties,
        body: Vec<u8>,
    ) -> Result<Answer, ProvisionError> {
        self.next_correlation_id += 1;
        let correlation_id = MessageId::String(self.next_correlation_id.to_string());
        let message = Message::builder()
            .properties(Properties {
                correlation_id: Some(correlation_id.clone()),
                ..Properties::default()
            })
            .application_properties(application_properties)
            .data(Data(Binary::from(body)))
            .build();
        let timeout = self.timeout;
        let exchange = async {
            let outcome = self
                .sender
                .send(message)
                .await
                .map_err(|e| ProvisionError::Transport(error_chain(&e)))?;
            match outcome {
                Outcome::Accepted(_) => {}
                Outcome::Rejected(rejected) => return Ok(refused(rejected.error)),
                other => {
                    return Err(ProvisionError::Protocol(format!(
                        "the request was not accepted: {other:?}"
                    )));
                }
            }
            loop {
                let delivery = self
                    .receiver
                    .recv::<Body<Value>>()
                    .await
                    .map_err(|e| ProvisionError::Transport(error_chain(&e)))?;
                let _ = self.receiver.accept(&delivery).await;
                let message = delivery.message();
                let echoed = message
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_id.as_ref());
                if echoed != Some(&correlation_id) {
                    continue;
                }
                let retry_after = message
                    .application_properties
                    .as_ref()
                    .and_then(|p| p.get(dps::RETRY_AFTER))
                    .and_then(seconds);
                let body = match &message.body {
                    Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
                    other => {
                        return Err(ProvisionError::BadResponse(format!(
                            "the answer's body is not a data section: {other:?}"
                        )));
                    }
                };
                // AMQP answers carry no status code; the body's status says how it went.
                return Ok(Answer {
                    status: 200,
                    body,
                    retry_after,
                });
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ProvisionError::Timeout(timeout))?
    }
}

/// A `retry-after` property: an integer, or the text of one.
fn seconds(value: &SimpleValue) -> Option<Duration> {
    let secs = match value {
        SimpleValue::Int(n) => u64::try_from(*n).ok(),
        SimpleValue::Uint(n) => Some(u64::from(*n)),
        SimpleValue::Long(n) => u64::try_from(*n).ok(),
        SimpleValue::Ulong(n) => Some(*n),
        SimpleValue::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    Some(Duration::from_secs(secs))
}

/// A refusal (a rejected request, or a connection closed while opening) as an answer: the DPS
/// error JSON travels in the description.
fn refused(error: Option<definitions::Error>) -> Answer {
    let text = error
        .as_ref()
        .and_then(|e| e.description.clone())
        .unwrap_or_default();
    let status = serde_json::from_str::<ErrorBody>(&text)
        .ok()
        .and_then(|b| u16::try_from(b.error_code / 1000).ok())
        .unwrap_or(500);
    Answer {
        status,
        body: text.into_bytes(),
        retry_after: None,
    }
}

/// A connection the service closed with an error.
fn refusal(error: definitions::Error) -> ProvisionError {
    let answer = refused(Some(error));
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    ProvisionError::Refused {
        status: answer.status,
        body: serde_json::from_str(&text).ok().map(Box::new),
        text,
    }
}

fn open_error(error: OpenError) -> ProvisionError {
    match error {
        OpenError::RemoteClosedWithError(e) => refusal(e),
        OpenError::SaslError { code, .. } => ProvisionError::Refused {
            status: 401,
            body: None,
            text: format!("SASL authentication failed ({code:?})"),
        },
        other => ProvisionError::Transport(error_chain(&other)),
    }
}

type WsInput = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
type WsOutput = Pin<Box<dyn Sink<Bytes, Error = io::Error> + Send>>;

/// A WebSocket seen as a byte stream, for fe2o3-amqp: tokio-util provides both halves; only
/// joining them into one `AsyncRead + AsyncWrite` is written here.
struct WsStream {
    reader: StreamReader<WsInput, Bytes>,
    writer: SinkWriter<CopyToBytes<WsOutput>>,
}

impl WsStream {
    fn new<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let output: WsOutput = Box::pin(
            sink.sink_map_err(io::Error::other)
                .with(|b: Bytes| async move { Ok::<_, io::Error>(WsMessage::Binary(b)) }),
        );
        let input: WsInput = Box::pin(stream.filter_map(|m| {
            std::future::ready(match m {
                Ok(WsMessage::Binary(b)) => Some(Ok(b)),
                Ok(WsMessage::Close(_)) => {
                    Some(Err(io::Error::from(io::ErrorKind::ConnectionAborted)))
                }
                Ok(_) => None,
                Err(e) => Some(Err(io::Error::other(e))),
            })
        }));
        Self {
            reader: StreamReader::new(input),
            writer: SinkWriter::new(CopyToBytes::new(output)),
        }
    }
}

impl std::fmt::Debug for WsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsStream")
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}
