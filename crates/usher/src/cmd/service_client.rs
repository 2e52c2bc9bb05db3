//! A small client for the management API, signing a fresh service token for every request.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use usher_proto::model::ErrorBody;
use usher_proto::{SymmetricKey, sas};

use crate::cli::Login;

/// A connection to the management API.
pub(crate) struct ServiceClient {
    http: reqwest::Client,
    base: String,
    host: String,
    policy: String,
    key: SymmetricKey,
    ca: Option<std::path::PathBuf>,
    local: Option<LocalInstance>,
}

/// What the data directory of a running local instance says about its device side.
#[derive(Debug, Clone)]
pub(crate) struct LocalInstance {
    pub(crate) id_scope: String,
    pub(crate) https: SocketAddr,
    pub(crate) mqtt: Option<SocketAddr>,
    pub(crate) amqp: Option<SocketAddr>,
}

/// A successful answer: status, headers, JSON body (Null when empty).
pub(crate) struct Answer {
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl ServiceClient {
    /// Connects with `--login`/`USHER_CONNECTION_STRING`, or else with what the data directory says.
    pub(crate) async fn connect(login: &Login) -> anyhow::Result<Self> {
        let (connection_string, mut ca, local) = match &login.login {
            Some(cs) => (cs.clone(), None, None),
            None => {
                let (cs, ca, local) = from_data_dir(&login.data_dir, &login.kek.source()).await?;
                (cs, ca, Some(local))
            }
        };
        if let Some(path) = &login.ca {
            ca = Some(path.clone());
        }
        let fields = parse_connection_string(&connection_string)?;
        let host_port = fields.host.clone();
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port.as_str(), |(h, _)| h)
            .to_owned();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .https_only(true);
        if let Some(path) = &ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).context("invalid CA certificate")?;
            builder = builder.tls_certs_only([cert]);
        }
        let base = match local.as_ref().map(|l| l.https) {
            Some(addr) => {
                builder = builder.resolve(&host, addr);
                format!("https://{host}:{}", addr.port())
            }
            None => format!("https://{host_port}"),
        };
        Ok(Self {
            http: builder.build()?,
            base,
            host,
            policy: fields.policy,
            key: fields.key,
            ca,
            local,
        })
    }

    /// The service's host name (the connection string's, without a port).
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The CA certificate this client trusts, if one was given or found.
    pub(crate) fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The local instance this client found through its data directory (no `--login`).
    pub(crate) fn local(&self) -> Option<&LocalInstance> {
        self.local.as_ref()
    }

    /// Sends a request and returns the answer, or an error naming the DPS code and message.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Answer> {
        let mut request = self.request(method.clone(), path)?;
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request, &method, path).await
    }

    /// Sends a body of raw bytes (e.g. JSON Lines) and returns the answer as [`Self::call`] does.
    pub(crate) async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        let request = self
            .request(method.clone(), path)?
            .header("Content-Type", content_type)
            .body(body);
        self.send(request, &method, path).await
    }

    /// A request to `path` with the api-version and a fresh service token.
    fn request(&self, method: Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let token = sas::service_token(&self.host, &self.policy, &self.key, now + 3600);
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version=2021-10-01", self.base);
        Ok(self
            .http
            .request(method, &url)
            .header("Authorization", token))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: &Method,
        path: &str,
    ) -> anyhow::Result<Answer> {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if is_untrusted_certificate(&e) => bail!(
                "cannot reach {}: the server's TLS certificate is not signed by a CA this command \
                 trusts ({}). An Usher server with its development CA: pass that CA with --ca FILE \
                 or USHER_CA_CERT=FILE; it is pki/ca.pem in the server's data directory (`usher \
                 instance show` on the server prints its path).",
                self.base,
                error_chain(&e)
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot reach {}", self.base)));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await?;
        if !status.is_success() {
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => bail!(
                    "{} ({} {}): {}",
                    status.as_u16(),
                    e.error_code,
                    status.canonical_reason().unwrap_or(""),
                    e.message
                ),
                Err(_) => bail!("{method} {path} failed with HTTP {status}: {text}"),
            }
        }
        let body = if text.is_empty() || status == StatusCode::NO_CONTENT {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        Ok(Answer { headers, body })
    }
}

/// Whether a request failed because the server's certificate chains to no trusted CA.
fn is_untrusted_certificate(e: &reqwest::Error) -> bool {
    let text = error_chain(e);
    text.contains("UnknownIssuer") || text.contains("unknown issuer")
}

/// An error and its sources, one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct ConnectionString {
    host: String,
    policy: String,
    key: SymmetricKey,
}

fn parse_connection_string(text: &str) -> anyhow::Result<ConnectionString> {
    let (mut host, mut policy, mut key) = (None, None, None);
    for part in text.split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("invalid connection string part {part:?}"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "hostname" => host = Some(v.trim().to_owned()),
            "sharedaccesskeyname" => policy = Some(v.trim().to_owned()),
            "sharedaccesskey" => key = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    let missing = |f| anyhow::anyhow!("the connection string has no {f}");
    Ok(ConnectionString {
        host: host.ok_or_else(|| missing("HostName"))?,
        policy: policy.ok_or_else(|| missing("SharedAccessKeyName"))?,
        key: SymmetricKey::from_base64(&key.ok_or_else(|| missing("SharedAccessKey"))?)
            .context("invalid SharedAccessKey in the connection string")?,
    })
}

/// Reads a local instance's connection string, CA, ID scope and listening addresses.
async fn from_data_dir(
    dir: &Path,
    kek: &usher_server::secrets::KekSource,
) -> anyhow::Result<(String, Option<std::path::PathBuf>, LocalInstance)> {
    let (store, instance) = usher_server::app::open_existing(dir, kek)
        .await
        .with_context(|| {
            format!(
                "no --login or USHER_CONNECTION_STRING given, and no Usher data directory at {}",
                dir.display()
            )
        })?;
    let overview = usher_server::app::overview(&store, &instance, dir).await?;
    let runtime = dir.join(usher_server::app::RUNTIME_FILE);
    let text = std::fs::read_to_string(&runtime).with_context(|| {
        format!(
            "the server for {} is not running (no {})",
            dir.display(),
            runtime.display()
        )
    })?;
    let runtime: Value =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", runtime.display()))?;
    let addr = |field: &str| -> anyhow::Result<Option<SocketAddr>> {
        let Some(text) = runtime[field].as_str() else {
            return Ok(None);
        };
        let mut addr: SocketAddr = text
            .parse()
            .with_context(|| format!("invalid {field} in the runtime file"))?;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        Ok(Some(addr))
    };
    let local = LocalInstance {
        id_scope: overview.id_scope,
        https: addr("httpsAddr")?.context("runtime file without httpsAddr")?,
        mqtt: addr("mqttAddr")?,
        amqp: addr("amqpAddr")?,
    };
    Ok((
        overview.service_connection_string,
        overview.ca_certificate.map(Into::into),
        local,
    ))
}
