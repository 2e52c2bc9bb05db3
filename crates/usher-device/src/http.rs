//! The HTTPS exchange (`device-protocol.md` §4).

use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::client::{API_VERSION, Answer, Client, Transport, error_chain};
use crate::{Credential, ProvisionError};

/// One HTTP/1.1 connection, opened by the first request and kept alive between requests (every
/// request carries its own device's token).
pub(crate) struct HttpLink {
    http: reqwest::Client,
    /// `https://host:port`.
    origin: String,
}

impl HttpLink {
    /// A link for any symmetric-key device, or for `credential`'s if it has a certificate (which
    /// is presented on this link's connection).
    pub(crate) fn new(client: &Client, credential: &Credential) -> Result<Self, ProvisionError> {
        let endpoint = &client.endpoint;
        let tls = client.tls_config(Some(credential))?;
        let mut builder = reqwest::Client::builder()
            .timeout(client.timeout)
            .https_only(true)
            .http1_only()
            // Requests on one link go one after another: one connection.
            .pool_max_idle_per_host(1)
            .tls_backend_preconfigured((*tls).clone());
        if let Some(addr) = endpoint.connect_to {
            builder = builder.resolve(endpoint.hostname(), addr);
        }
        let http = builder
            .build()
            .map_err(|e| ProvisionError::Transport(error_chain(&e)))?;
        let origin = format!(
            "https://{}:{}",
            endpoint.hostname(),
            endpoint.port(Transport::Https)
        );
        Ok(Self { http, origin })
    }

    /// `https://host:port/{scope}/registrations/{id}`.
    fn base(&self, client: &Client, registration_id: &str) -> String {
        format!(
            "{}/{}/registrations/{}",
            self.origin,
            enc(&client.id_scope),
            enc(registration_id)
        )
    }

    pub(crate) async fn register(
        &mut self,
        client: &Client,
        registration_id: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Answer, ProvisionError> {
        let request = self
            .http
            .put(format!(
                "{}/register?api-version={API_VERSION}",
                self.base(client, registration_id)
            ))
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body);
        self.send(authorized(request, token)).await
    }

    pub(crate) async fn poll(
        &mut self,
        client: &Client,
        registration_id: &str,
        token: Option<&str>,
        operation_id: &str,
    ) -> Result<Answer, ProvisionError> {
        let url = format!(
            "{}/operations/{}?api-version={API_VERSION}",
            self.base(client, registration_id),
            enc(operation_id)
        );
        self.send(authorized(self.http.get(url), token)).await
    }

    /// `GET /healthz`, which must answer 200.
    pub(crate) async fn healthz(&mut self) -> Result<(), ProvisionError> {
        let answer = self
            .send(self.http.get(format!("{}/healthz", self.origin)))
            .await?;
        if answer.status == 200 {
            Ok(())
        } else {
            Err(ProvisionError::Refused {
                status: answer.status,
                body: None,
                text: String::from_utf8_lossy(&answer.body).into_owned(),
            })
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, ProvisionError> {
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

/// The request with its device's SAS token; a device with a certificate sends none.
fn authorized(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.header("Authorization", token),
        None => request,
    }
}
