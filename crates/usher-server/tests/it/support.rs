use std::net::SocketAddr;
use std::sync::Arc;

use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use usher_device::Credential;
use usher_device::{Client, Endpoint, Transport};
use usher_proto::{SymmetricKey, sas};
use usher_server::{Limits, ServeConfig, Settings};

/// The default settings with register answering `200 assigned` at once.
pub(crate) fn fast() -> Settings {
    Settings {
        register_response: usher_server::RegisterResponse::Assigned,
        ..Settings::default()
    }
}

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) mqtt_addr: SocketAddr,
    /// The metrics listener (plain HTTP), when started with one.
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) amqp_addr: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) scope: String,
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) owner_key: SymmetricKey,
    /// The built-in hub's `iothubowner` key, from the overview's hub connection string.
    pub(crate) hub_key: SymmetricKey,
    pub(crate) http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The server's PostgreSQL database when the suite runs on PostgreSQL (`USHER_IT_POSTGRES`),
    /// dropped with the server.
    postgres: Option<usher_server::test_postgres::TestDatabase>,
}

/// Databases of stopped servers, by data directory, until a server is started on it again.
static PARKED: std::sync::Mutex<
    Vec<(
        std::path::PathBuf,
        usher_server::test_postgres::TestDatabase,
    )>,
> = std::sync::Mutex::new(Vec::new());

/// Whether the suite runs on PostgreSQL (`USHER_IT_POSTGRES=1`; a database per server on the
/// test server, see `usher_server::test_postgres`) instead of SQLite.
fn on_postgres() -> bool {
    std::env::var_os("USHER_IT_POSTGRES").is_some()
}

impl TestServer {
    /// A server with the fast register answer (`200 assigned` at once), so tests that provision
    /// many devices do not wait out Retry-After; tests of the default start with
    /// `start_with(Settings::default())`.
    pub(crate) async fn start() -> Self {
        Self::start_with(fast()).await
    }

    pub(crate) async fn start_with(settings: Settings) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), settings).await
    }

    /// Starts a server on an existing data directory (to test restarts).
    pub(crate) async fn start_in(dir: tempfile::TempDir, settings: Settings) -> Self {
        Self::start_full(dir, settings, Limits::default(), None, false).await
    }

    /// Starts a server with the fast register answer and the given transport limits.
    pub(crate) async fn start_with_limits(limits: Limits) -> Self {
        Self::start_full(tempfile::tempdir().unwrap(), fast(), limits, None, false).await
    }

    /// Starts a server that also serves `/metrics`, `/healthz` and `/readyz` over plain HTTP on a
    /// loopback port (`metrics_addr`).
    pub(crate) async fn start_with_metrics(settings: Settings) -> Self {
        Self::start_full(
            tempfile::tempdir().unwrap(),
            settings,
            Limits::default(),
            None,
            true,
        )
        .await
    }

    /// Starts a server with its own certificate chain and key (PEM files) instead of the
    /// development PKI; `ca_pem` is the CA the clients are to trust.
    pub(crate) async fn start_with_own_tls(
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        ca_pem: Vec<u8>,
    ) -> Self {
        Self::start_full(
            tempfile::tempdir().unwrap(),
            Settings::default(),
            Limits::default(),
            Some((cert, key, ca_pem)),
            false,
        )
        .await
    }

    async fn start_full(
        dir: tempfile::TempDir,
        settings: Settings,
        limits: Limits,
        own_tls: Option<(std::path::PathBuf, std::path::PathBuf, Vec<u8>)>,
        metrics: bool,
    ) -> Self {
        let postgres = if on_postgres() {
            // The KEK must be given with PostgreSQL: a file in the data directory.
            let kek = dir.path().join("kek");
            if !kek.exists() {
                std::fs::write(&kek, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
            }
            let parked = {
                let mut parked = PARKED.lock().unwrap();
                let at = parked.iter().position(|(d, _)| d == dir.path());
                at.map(|i| parked.remove(i).1)
            };
            Some(match parked {
                Some(db) => db,
                None => usher_server::test_postgres::TestDatabase::create().await,
            })
        } else {
            None
        };
        let config = ServeConfig {
            data_dir: dir.path().to_owned(),
            store: postgres.as_ref().map(|db| db.url().to_owned()),
            hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            tls_cert: own_tls.as_ref().map(|(c, k, _)| (c.clone(), k.clone())),
            settings,
            limits,
            kek: usher_server::secrets::KekSource::default(),
        };
        let mut prepared = usher_server::prepare(config).await.unwrap();
        let mut metrics_addr = None;
        if metrics {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            metrics_addr = Some(listener.local_addr().unwrap());
            prepared = prepared.with_metrics_listener(listener);
        }
        let overview = prepared.overview.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mqtt = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mqtt_addr = mqtt.local_addr().unwrap();
        let amqp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let amqp_addr = amqp.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            prepared
                .run(listener, Some(mqtt), Some(amqp), stop)
                .await
                .unwrap()
        });
        let ca_pem = match own_tls {
            Some((_, _, ca)) => {
                assert!(
                    overview.ca_certificate.is_none(),
                    "no development CA is made"
                );
                ca
            }
            None => std::fs::read(overview.ca_certificate.unwrap()).unwrap(),
        };
        let key = overview
            .service_connection_string
            .split("SharedAccessKey=")
            .nth(1)
            .unwrap();
        let hub_key = overview.hubs[0]
            .connection_string
            .as_deref()
            .unwrap()
            .split("SharedAccessKey=")
            .nth(1)
            .unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
            .build()
            .unwrap();
        Self {
            addr,
            mqtt_addr,
            metrics_addr,
            amqp_addr,
            scope: overview.id_scope,
            owner_key: SymmetricKey::from_base64(key).unwrap(),
            hub_key: SymmetricKey::from_base64(hub_key).unwrap(),
            ca_pem,
            http,
            dir,
            shutdown,
            task: Some(task),
            postgres,
        }
    }

    /// Asks the server to shut down without waiting for it (`stop` waits).
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped (after `begin_shutdown`), up to `bound`; `false` if it
    /// is still running then.
    pub(crate) async fn stopped_within(&mut self, bound: std::time::Duration) -> bool {
        let task = self.task.as_mut().unwrap();
        match tokio::time::timeout(bound, task).await {
            Ok(result) => {
                result.unwrap();
                self.task = None;
                true
            }
            Err(_) => false,
        }
    }

    /// Stops the server and hands back its data directory.
    pub(crate) async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        if let Some(db) = self.postgres.take() {
            PARKED
                .lock()
                .unwrap()
                .push((self.dir.path().to_owned(), db));
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// The URL of `path` on this server, with the `api-version` the API of that path takes unless
    /// the path names one (DPS refuses a request without one).
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{}",
            self.addr.port(),
            with_api_version(path)
        )
    }

    /// The URL of `path` exactly as given.
    pub(crate) fn raw_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// The `iothubowner` key of any built-in hub, as `usher instance show --show-keys` reads it.
    pub(crate) async fn hub_owner_key(&self, hub: &str) -> SymmetricKey {
        let (store, instance) = usher_server::app::open_existing(
            self.dir.path(),
            &usher_server::secrets::KekSource::default(),
        )
        .await
        .unwrap();
        let overview = usher_server::app::overview(&store, &instance, self.dir.path())
            .await
            .unwrap();
        let cs = overview
            .hubs
            .iter()
            .find(|h| h.name == hub)
            .and_then(|h| h.connection_string.clone())
            .unwrap();
        SymmetricKey::from_base64(cs.split("SharedAccessKey=").nth(1).unwrap()).unwrap()
    }

    /// A device client over HTTPS.
    pub(crate) fn device_client(&self) -> Client {
        self.client_over(Transport::Https)
    }

    /// A device client over any transport.
    pub(crate) fn client_over(&self, transport: Transport) -> Client {
        let port = match transport {
            Transport::Mqtt => self.mqtt_addr.port(),
            Transport::Amqp => self.amqp_addr.port(),
            Transport::Https | Transport::MqttWs | Transport::AmqpWs => self.addr.port(),
        };
        let endpoint = Endpoint {
            host: format!("localhost:{port}"),
            ca_pem: Some(self.ca_pem.clone()),
            connect_to: None,
        };
        Client::new(&endpoint, &self.scope, transport)
    }

    pub(crate) fn service_token(&self) -> String {
        sas::service_token(
            "localhost",
            "provisioningserviceowner",
            &self.owner_key,
            unix_now() + 600,
        )
    }

    /// A management API call with the owner policy's token.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("Authorization", self.service_token());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, body)
    }

    /// One page of a management query: status, headers, items, and the continuation if any.
    pub(crate) async fn query_page(
        &self,
        path: &str,
        body: &Value,
        page_size: u32,
        continuation: Option<&str>,
    ) -> (
        StatusCode,
        reqwest::header::HeaderMap,
        Vec<Value>,
        Option<String>,
    ) {
        let size = page_size.to_string();
        let mut headers = vec![("x-ms-max-item-count", size.as_str())];
        if let Some(c) = continuation {
            headers.push(("x-ms-continuation", c));
        }
        let (status, h, items) = self
            .call(Method::POST, path, Some(body.clone()), &headers)
            .await;
        let next = h
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            status,
            h,
            items.as_array().cloned().unwrap_or_default(),
            next,
        )
    }

    /// Every page of a management query, following continuations until there is none.
    pub(crate) async fn query_pages(
        &self,
        path: &str,
        body: &Value,
        page_size: u32,
    ) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut continuation = None;
        loop {
            let (status, _, items, next) = self
                .query_page(path, body, page_size, continuation.as_deref())
                .await;
            assert_eq!(status, StatusCode::OK);
            pages.push(items);
            match next {
                Some(next) => continuation = Some(next),
                None => return pages,
            }
        }
    }

    /// Creates an individual enrollment and returns (primary, secondary) keys.
    pub(crate) async fn enroll(&self, id: &str, extra: Value) -> (String, String) {
        let mut body = json!({"registrationId": id, "attestation": {"type": "symmetricKey"}});
        merge(&mut body, extra);
        let (status, _, doc) = self
            .call(Method::PUT, &format!("/enrollments/{id}"), Some(body), &[])
            .await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        keys(&doc)
    }

    /// Creates an enrollment group and returns its (primary, secondary) keys.
    pub(crate) async fn enroll_group(&self, id: &str, extra: Value) -> (String, String) {
        let mut body = json!({"enrollmentGroupId": id, "attestation": {"type": "symmetricKey"}});
        merge(&mut body, extra);
        let (status, _, doc) = self
            .call(
                Method::PUT,
                &format!("/enrollmentGroups/{id}"),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        keys(&doc)
    }

    pub(crate) async fn hub_devices(&self, hub: &str) -> Vec<Value> {
        let (status, _, body) = self
            .call(
                Method::GET,
                &format!("/usher/hubs/{hub}/devices"),
                None,
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        body.as_array().unwrap().clone()
    }

    pub(crate) async fn registration(&self, id: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .call(Method::GET, &format!("/registrations/{id}"), None, &[])
            .await;
        (status, body)
    }

    /// A raw device request: method, path under the scope, token, body.
    pub(crate) async fn device_request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("Content-Type", "application/json; charset=utf-8");
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let response = req.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A request to `path` exactly as given (no `api-version` added), with an optional
    /// Authorization header and body; the answer's body as JSON (or a JSON string if it is not).
    pub(crate) async fn raw_request(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, self.raw_url(path));
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_owned());
        }
        let response = req.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(crate) fn token(&self, id: &str, key: &str) -> String {
        Credential::individual(id, key)
            .unwrap()
            .token(&self.scope, unix_now() + 600)
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn keys(doc: &Value) -> (String, String) {
    let k = &doc["attestation"]["symmetricKey"];
    (
        k["primaryKey"].as_str().unwrap().to_owned(),
        k["secondaryKey"].as_str().unwrap().to_owned(),
    )
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// Asserts a DPS error response: status, code, JSON body, and the tracking headers.
pub(crate) fn assert_error(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    want_status: u16,
    want_code: u32,
) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["errorCode"], want_code, "{body}");
    let tracking = body["trackingId"].as_str().unwrap();
    assert_eq!(headers["x-ms-request-id"].to_str().unwrap(), tracking);
    assert!(headers.contains_key("x-ms-error-code"));
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(body["timestampUtc"].as_str().unwrap().ends_with('Z'));
}

/// Adds the `api-version` each API's official clients send to a path that has none: the device
/// API's (paths with `/registrations/` after an ID scope), the hub registry's, or the service API's.
pub(crate) fn with_api_version(path: &str) -> String {
    if path.contains("api-version=") || path.starts_with("/$iothub/") {
        return path.to_owned();
    }
    let route = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let version = match segments.as_slice() {
        [scope, r, _, ..]
            if r.eq_ignore_ascii_case("registrations")
                && !scope.eq_ignore_ascii_case("registrations") =>
        {
            "2021-06-01"
        }
        [first, ..]
            if ["devices", "twins", "statistics"]
                .iter()
                .any(|h| first.eq_ignore_ascii_case(h)) =>
        {
            "2021-04-12"
        }
        _ => "2021-10-01",
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}api-version={version}")
}

/// A TLS 1.2 connection to the server's `port` as `localhost`, offering `alpn`.
pub(crate) async fn tls_connect(s: &TestServer, port: u16, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&s.ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// A custom allocation webhook for tests: plain HTTP on a loopback port; each call gets the next
/// scripted answer (the last one repeats), and every request body is kept.
pub(crate) struct WebhookServer {
    pub(crate) url: String,
    pub(crate) requests: Arc<std::sync::Mutex<Vec<Value>>>,
    _task: tokio::task::JoinHandle<()>,
}

/// One scripted webhook answer: a status, a JSON body, and how long to wait before answering.
#[derive(Clone)]
pub(crate) struct Answer(
    pub(crate) u16,
    pub(crate) Value,
    pub(crate) std::time::Duration,
);

impl WebhookServer {
    pub(crate) async fn start(script: Vec<Answer>) -> Self {
        use axum::extract::State;
        type Shared = (
            Arc<std::sync::Mutex<Vec<Value>>>,
            Arc<std::sync::Mutex<std::collections::VecDeque<Answer>>>,
        );
        async fn handle(
            State((requests, script)): State<Shared>,
            axum::Json(body): axum::Json<Value>,
        ) -> (StatusCode, axum::Json<Value>) {
            requests.lock().unwrap().push(body);
            let answer = {
                let mut script = script.lock().unwrap();
                if script.len() > 1 {
                    script.pop_front().unwrap()
                } else {
                    script.front().cloned().unwrap()
                }
            };
            tokio::time::sleep(answer.2).await;
            (
                StatusCode::from_u16(answer.0).unwrap(),
                axum::Json(answer.1),
            )
        }
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared: Shared = (
            Arc::clone(&requests),
            Arc::new(std::sync::Mutex::new(script.into())),
        );
        let app = axum::Router::new()
            .route("/alloc", axum::routing::post(handle))
            .with_state(shared);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/alloc?code=secret",
            listener.local_addr().unwrap().port()
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            requests,
            _task: task,
        }
    }

    /// The request bodies received so far.
    pub(crate) fn received(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}
