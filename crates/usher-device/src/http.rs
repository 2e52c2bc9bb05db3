//! The DPS registration flow over HTTPS (`device-protocol.md` §4): register, then poll the
//! operation while the service says `assigning`, honouring `Retry-After`.

use std::net::SocketAddr;
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use usher_proto::model::{
    DeviceRegistration, ErrorBody, RegistrationOperationStatus, RegistrationStatus,
};

use crate::Credential;

/// The api-version this client sends (the C SDK's).
pub const API_VERSION: &str = "2021-06-01";
/// Poll interval when the service sends no `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Where and how to reach the service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name, optionally with `:port` (default 443). Also the TLS server name.
    pub host: String,
    /// A CA certificate (PEM) to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Connect here instead of resolving the host name.
    pub connect_to: Option<SocketAddr>,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("invalid CA certificate: {0}")]
    BadCa(String),
    #[error("cannot reach the service: {0}")]
    Transport(String),
    #[error("the service refused the request with HTTP {status}: {}", describe(.body.as_deref(), .text))]
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

/// A provisioning client for one endpoint and ID scope.
pub struct Client {
    http: reqwest::Client,
    base: String,
    id_scope: String,
    /// Token lifetime for each request.
    pub token_ttl: Duration,
    /// Polls before giving up.
    pub max_polls: u32,
}

impl Client {
    pub fn new(endpoint: &Endpoint, id_scope: &str) -> Result<Self, ProvisionError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .https_only(true);
        if let Some(pem) = &endpoint.ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ProvisionError::BadCa(e.to_string()))?;
            builder = builder.tls_certs_only([cert]);
        }
        if let Some(addr) = endpoint.connect_to {
            let name = endpoint
                .host
                .rsplit_once(':')
                .map_or(endpoint.host.as_str(), |(h, _)| h);
            builder = builder.resolve(name, addr);
        }
        let http = builder
            .build()
            .map_err(|e| ProvisionError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            base: format!("https://{}", endpoint.host),
            id_scope: id_scope.to_owned(),
            token_ttl: Duration::from_secs(3600),
            max_polls: 60,
        })
    }

    /// Registers the device and polls until the service gives a final answer. Succeeds only on
    /// `assigned`; every other final status is [`ProvisionError::NotAssigned`].
    pub async fn provision(
        &self,
        credential: &Credential,
        payload: Option<serde_json::Value>,
        mut progress: impl FnMut(Progress),
    ) -> Result<RegistrationOperationStatus, ProvisionError> {
        let id = credential.registration_id().as_str();
        let path = format!(
            "{}/{}/registrations/{}",
            self.base,
            enc(&self.id_scope),
            enc(id)
        );
        let body = DeviceRegistration {
            registration_id: Some(id.to_owned()),
            tpm: None,
            payload,
        };
        progress(Progress::Registering);
        let request = self
            .http
            .put(format!("{path}/register?api-version={API_VERSION}"))
            .header("Authorization", self.token(credential))
            .json(&body);
        let (mut status, mut retry_after) = self.send(request).await?;
        let mut polls = 0;
        while status.status == RegistrationStatus::Assigning {
            if polls == self.max_polls {
                return Err(ProvisionError::TooManyPolls(polls));
            }
            polls += 1;
            progress(Progress::Assigning { retry_after });
            tokio::time::sleep(retry_after).await;
            let request = self
                .http
                .get(format!(
                    "{path}/operations/{}?api-version={API_VERSION}",
                    enc(&status.operation_id)
                ))
                .header("Authorization", self.token(credential));
            (status, retry_after) = self.send(request).await?;
        }
        if status.status == RegistrationStatus::Assigned {
            Ok(status)
        } else {
            Err(ProvisionError::NotAssigned(Box::new(status)))
        }
    }

    fn token(&self, credential: &Credential) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        credential.token(&self.id_scope, now + self.token_ttl.as_secs())
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(RegistrationOperationStatus, Duration), ProvisionError> {
        let response = request
            .send()
            .await
            .map_err(|e| ProvisionError::Transport(error_chain(&e)))?;
        let code = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_RETRY_AFTER, |s| {
                Duration::from_secs(s.clamp(1, 300))
            });
        let text = response
            .text()
            .await
            .map_err(|e| ProvisionError::Transport(e.to_string()))?;
        if code != StatusCode::OK && code != StatusCode::ACCEPTED {
            let body = serde_json::from_str(&text).ok();
            return Err(ProvisionError::Refused {
                status: code.as_u16(),
                body,
                text,
            });
        }
        let status = serde_json::from_str(&text)
            .map_err(|e| ProvisionError::BadResponse(format!("{e}: {text}")))?;
        Ok((status, retry_after))
    }
}

fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
