//! The HTTPS exchange (`device-protocol.md` §4).

use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::client::{API_VERSION, Answer, Client, Transport, error_chain};
use crate::{Credential, ProvisionError};

pub(crate) struct HttpLink {
    http: reqwest::Client,
    /// `https://host:port/{scope}/registrations/{id}`.
    base: String,
    token: Option<String>,
}

impl HttpLink {
    pub(crate) fn new(
        client: &Client,
        credential: &Credential,
        token: Option<String>,
    ) -> Result<Self, ProvisionError> {
        let endpoint = &client.endpoint;
        let tls = crate::tls::client_config(
            endpoint.ca_pem.as_deref(),
            &[b"http/1.1"],
            credential.certificate(),
        )?;
        let mut builder = reqwest::Client::builder()
            .timeout(client.timeout)
            .https_only(true)
            .tls_backend_preconfigured((*tls).clone());
        if let Some(addr) = endpoint.connect_to {
            builder = builder.resolve(endpoint.hostname(), addr);
        }
        let http = builder
            .build()
            .map_err(|e| ProvisionError::Transport(error_chain(&e)))?;
        let base = format!(
            "https://{}:{}/{}/registrations/{}",
            endpoint.hostname(),
            endpoint.port(Transport::Https),
            enc(&client.id_scope),
            enc(credential.registration_id().as_str())
        );
        Ok(Self { http, base, token })
    }

    pub(crate) async fn register(&mut self, body: Vec<u8>) -> Result<Answer, ProvisionError> {
        let request = self
            .http
            .put(format!("{}/register?api-version={API_VERSION}", self.base))
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body);
        self.send(request).await
    }

    pub(crate) async fn poll(&mut self, operation_id: &str) -> Result<Answer, ProvisionError> {
        let url = format!(
            "{}/operations/{}?api-version={API_VERSION}",
            self.base,
            enc(operation_id)
        );
        self.send(self.http.get(url)).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, ProvisionError> {
        let request = match &self.token {
            Some(token) => request.header("Authorization", token),
            None => request,
        };
        let response = request
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| ProvisionError::Transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .bytes()
            .await
            .map_err(|e| ProvisionError::Transport(error_chain(&e)))?
            .to_vec();
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }
}

fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string()
}
