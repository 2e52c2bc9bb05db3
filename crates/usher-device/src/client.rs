//! The registration flow, written once for every transport.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::ClientConfig;
use usher_proto::RegistrationId;
use usher_proto::model::{
    DeviceRegistration, ErrorBody, RegistrationOperationStatus, RegistrationStatus,
};

use crate::Credential;
use crate::amqp::AmqpLink;
use crate::http::HttpLink;
use crate::mqtt::MqttLink;

/// The device API version this client sends.
pub const API_VERSION: &str = "2019-03-31";
/// Poll interval when the service sends no retry-after.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// How the device talks to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS REST on port 443.
    Https,
    /// MQTT 3.1.1 over TLS on port 8883.
    Mqtt,
    /// MQTT over WebSockets, `/$iothub/websocket` on port 443.
    MqttWs,
    /// AMQP 1.0 over TLS on port 5671.
    Amqp,
    /// AMQP over WebSockets, `/$iothub/websocket` on port 443.
    AmqpWs,
}

impl Transport {
    fn default_port(self) -> u16 {
        match self {
            Self::Https | Self::MqttWs | Self::AmqpWs => 443,
            Self::Mqtt => 8883,
            Self::Amqp => 5671,
        }
    }
}

/// Where and how to reach the service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name, optionally with `:port` (default: the transport's standard port). Also the TLS
    /// server name.
    pub host: String,
    /// A CA certificate (PEM) to trust instead of the platform's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Connect here instead of resolving the host name.
    pub connect_to: Option<SocketAddr>,
}

impl Endpoint {
    /// The host name without a port.
    pub(crate) fn hostname(&self) -> &str {
        match self.host.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => &self.host,
        }
    }

    /// The port: the one in `host`, or the transport's standard one.
    pub(crate) fn port(&self, transport: Transport) -> u16 {
        self.host
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| transport.default_port())
    }
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("invalid CA certificate: {0}")]
    BadCa(String),
    #[error("the device certificate or key cannot be used: {0}")]
    BadCertificate(String),
    #[error("cannot reach the service: {0}")]
    Transport(String),
    #[error("the MQTT connection was refused with CONNACK code {0}")]
    ConnectRefused(u8),
    #[error("the service broke the MQTT protocol: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the service refused the request with status {status}: {}", describe(.body.as_deref(), .text))]
    Refused {
        status: u16,
        body: Option<Box<ErrorBody>>,
        text: String,
    },
    #[error("the service answered with a body this client cannot read: {0}")]
    BadResponse(String),
    #[error("registration ended with status {}", .0.status.as_str())]
    NotAssigned(Box<RegistrationOperationStatus>),
    #[error("still assigning after {0} polls")]
    TooManyPolls(u32),
    #[error(
        "this connection is authenticated as {bound}, not {asked} (MQTT and AMQP connections serve one device)"
    )]
    OtherDevice { bound: String, asked: String },
    #[error("not supported over {0:?}: {1}")]
    Unsupported(Transport, &'static str),
}

fn describe(body: Option<&ErrorBody>, text: &str) -> String {
    match body {
        Some(b) => format!("errorCode {} ({})", b.error_code, b.message),
        None => text.chars().take(200).collect(),
    }
}

/// What the device sees along the way, for progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Registering,
    Assigning { retry_after: Duration },
}

/// One answer from the service, whatever the transport: status code, body, retry-after.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) retry_after: Option<Duration>,
}

/// A provisioning client for one endpoint, ID scope and transport.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) endpoint: Endpoint,
    pub(crate) id_scope: String,
    pub(crate) transport: Transport,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Polls before giving up.
    pub max_polls: u32,
    /// How long to wait for any one answer.
    pub timeout: Duration,
    /// A certificate signing request (base64 DER PKCS#10, its common name the registration ID)
    /// sent in the register body as `csr`: the service answers with `issuedCertificateChain`
    /// (api-version 2025-07-01-preview).
    pub certificate_request: Option<String>,
    /// The TLS configuration, built on first use and shared by every connection of this client.
    tls: Arc<OnceLock<Arc<ClientConfig>>>,
}

enum Link {
    Http(Box<HttpLink>),
    Mqtt(Box<MqttLink>),
    Amqp(Box<AmqpLink>),
}

impl Client {
    pub fn new(endpoint: &Endpoint, id_scope: &str, transport: Transport) -> Self {
        Self {
            endpoint: endpoint.clone(),
            id_scope: id_scope.to_owned(),
            transport,
            token_ttl: Duration::from_secs(3600),
            max_polls: 60,
            timeout: Duration::from_secs(30),
            certificate_request: None,
            tls: Arc::default(),
        }
    }

    /// The transport this client speaks.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The TLS client configuration for this client's transport (ALPN `http/1.1` for HTTPS and
    /// WebSockets, none for MQTT and AMQP over TLS), built once; for a device with an X.509
    /// certificate, built for its connection with the certificate to present.
    pub(crate) fn tls_config(
        &self,
        credential: Option<&Credential>,
    ) -> Result<Arc<ClientConfig>, ProvisionError> {
        let alpn: &[&[u8]] = match self.transport {
            Transport::Https | Transport::MqttWs | Transport::AmqpWs => &[b"http/1.1"],
            Transport::Mqtt | Transport::Amqp => &[],
        };
        if let Some(certificate) = credential.and_then(Credential::certificate) {
            return crate::tls::client_config(
                self.endpoint.ca_pem.as_deref(),
                alpn,
                Some(certificate),
            );
        }
        if let Some(config) = self.tls.get() {
            return Ok(Arc::clone(config));
        }
        let config = crate::tls::client_config(self.endpoint.ca_pem.as_deref(), alpn, None)?;
        Ok(Arc::clone(self.tls.get_or_init(|| config)))
    }

    /// Registers the device and polls until the service gives a final answer, on a connection of
    /// its own. Succeeds only on `assigned`; every other final status is
    /// [`ProvisionError::NotAssigned`].
    pub async fn provision(
        &self,
        credential: &Credential,
        payload: Option<serde_json::Value>,
        progress: impl FnMut(Progress),
    ) -> Result<RegistrationOperationStatus, ProvisionError> {
        let mut connection = self.connect(credential).await?;
        let result = connection.provision(credential, payload, progress).await;
        connection.close().await;
        result
    }

    /// Opens a connection to the service that can register devices one after another.
    ///
    /// Over HTTPS every request carries its own token, so one connection serves any device: the
    /// connection is opened by the first request and kept alive between them (a device with an
    /// X.509 certificate presents it on this connection, which then serves that device). MQTT and AMQP
    /// authenticate one registration ID per connection: the connection is opened now, as
    /// `credential`'s device, and serves only that device (which may register again on it).
    pub async fn connect(&self, credential: &Credential) -> Result<Connection, ProvisionError> {
        let (link, bound) = match self.transport {
            Transport::Https => (
                Link::Http(Box::new(HttpLink::new(self, credential)?)),
                credential
                    .certificate()
                    .map(|_| credential.registration_id().clone()),
            ),
            Transport::Mqtt | Transport::MqttWs => {
                let token = self.token(credential);
                let link = MqttLink::connect(self, credential, token.as_deref()).await?;
                (
                    Link::Mqtt(Box::new(link)),
                    Some(credential.registration_id().clone()),
                )
            }
            Transport::Amqp | Transport::AmqpWs => {
                let token = self.token(credential);
                let link = AmqpLink::connect(self, credential, token.as_deref()).await?;
                (
                    Link::Amqp(Box::new(link)),
                    Some(credential.registration_id().clone()),
                )
            }
        };
        Ok(Connection {
            client: self.clone(),
            link,
            bound,
        })
    }

    /// A SAS token for a symmetric-key device; none for a device with a certificate.
    fn token(&self, credential: &Credential) -> Option<String> {
        credential.token(&self.id_scope, unix_now() + self.token_ttl.as_secs())
    }
}

/// A connection to the service (see [`Client::connect`]).
pub struct Connection {
    client: Client,
    link: Link,
    /// The device an MQTT or AMQP connection authenticated as.
    bound: Option<RegistrationId>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("transport", &self.client.transport)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Registers the device and polls until the service gives a final answer, on this
    /// connection. Succeeds only on `assigned`. Over MQTT and AMQP, `credential` must be the
    /// device the connection authenticated as ([`ProvisionError::OtherDevice`] otherwise).
    pub async fn provision(
        &mut self,
        credential: &Credential,
        payload: Option<serde_json::Value>,
        mut progress: impl FnMut(Progress),
    ) -> Result<RegistrationOperationStatus, ProvisionError> {
        let id = credential.registration_id().as_str();
        if let Some(bound) = &self.bound
            && bound.as_str() != id
        {
            return Err(ProvisionError::OtherDevice {
                bound: bound.as_str().to_owned(),
                asked: id.to_owned(),
            });
        }
        let token = match self.link {
            Link::Http(_) => self.client.token(credential),
            Link::Mqtt(_) | Link::Amqp(_) => None,
        };
        let body = serde_json::to_vec(&DeviceRegistration {
            registration_id: Some(id.to_owned()),
            payload,
            csr: self.client.certificate_request.clone(),
            ..DeviceRegistration::default()
        })
        .map_err(|e| ProvisionError::BadResponse(e.to_string()))?;
        progress(Progress::Registering);
        let answer = match &mut self.link {
            Link::Http(l) => l.register(&self.client, id, token.as_deref(), body).await?,
            Link::Mqtt(l) => l.register(body).await?,
            Link::Amqp(l) => l.register(body).await?,
        };
        let (mut status, mut retry_after) = interpret(answer)?;
        let mut polls = 0;
        while status.status == RegistrationStatus::Assigning {
            if polls == self.client.max_polls {
                return Err(ProvisionError::TooManyPolls(polls));
            }
            polls += 1;
            progress(Progress::Assigning { retry_after });
            tokio::time::sleep(retry_after).await;
            let operation_id = &status.operation_id;
            let answer = match &mut self.link {
                Link::Http(l) => {
                    l.poll(&self.client, id, token.as_deref(), operation_id)
                        .await?
                }
                Link::Mqtt(l) => l.poll(operation_id).await?,
                Link::Amqp(l) => l.poll(operation_id).await?,
            };
            (status, retry_after) = interpret(answer)?;
        }
        if status.status == RegistrationStatus::Assigned {
            Ok(status)
        } else {
            Err(ProvisionError::NotAssigned(Box::new(status)))
        }
    }

    /// The cheapest round trip the transport has, on this connection, for measuring what the
    /// connection pattern alone costs: HTTPS `GET /healthz` (opening the connection if it is not
    /// yet), MQTT PINGREQ. AMQP has none this client can send
    /// ([`ProvisionError::Unsupported`]); opening and closing the connection is its probe.
    pub async fn ping(&mut self) -> Result<(), ProvisionError> {
        match &mut self.link {
            Link::Http(l) => l.healthz().await,
            Link::Mqtt(l) => l.ping().await,
            Link::Amqp(_) => Err(ProvisionError::Unsupported(
                self.client.transport,
                "no ping on an AMQP connection",
            )),
        }
    }

    /// Closes the connection politely (MQTT DISCONNECT, AMQP close); an HTTPS connection closes
    /// when dropped.
    pub async fn close(self) {
        match self.link {
            Link::Mqtt(mut l) => l.disconnect().await,
            Link::Amqp(l) => l.disconnect().await,
            Link::Http(_) => {}
        }
    }
}

fn interpret(answer: Answer) -> Result<(RegistrationOperationStatus, Duration), ProvisionError> {
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    if answer.status != 200 && answer.status != 202 {
        let body = serde_json::from_str(&text).ok().map(Box::new);
        return Err(ProvisionError::Refused {
            status: answer.status,
            body,
            text,
        });
    }
    let status = serde_json::from_str(&text)
        .map_err(|e| ProvisionError::BadResponse(format!("{e}: {text}")))?;
    let retry_after = answer.retry_after.map_or(DEFAULT_RETRY_AFTER, |d| {
        d.clamp(Duration::from_secs(1), Duration::from_secs(300))
    });
    Ok((status, retry_after))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error and its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
