//! The Usher server: sockets, TLS, HTTP and storage around the pure `usher-proto` core.
//!
//! # Layout
//! - [`app`]: shared state, settings, first-run set-up of a data directory, the overview.
//! - [`metrics`]: the Prometheus metrics every part records; [`health`]: readiness checks.
//! - [`registration`]: the registration core every device transport calls (attest, allocate, record).
//! - [`auth`]: principals and rights, the one authorization check of the API and the console.
//! - [`management`]: enrollment, group, registration-record and hub operations.
//! - [`http`]: the HTTPS dispatcher for the device and management APIs.
//! - [`console`]: the web console under `/console/` on the HTTPS port.
//! - [`mqtt`]: the MQTT device endpoint (TLS and WebSockets), one session task per connection.
//! - [`amqp`]: the AMQP 1.0 device endpoint (TLS and WebSockets) on fe2o3-amqp.
//! - [`websocket`]: `/$iothub/websocket`, MQTT or AMQP by subprotocol.
//! - [`server`]: the TLS accept loop.
//! - [`store`]: durable state behind one interface, with group commit.
//! - [`pki`], [`tls`]: the development CA and the rustls configuration.
//! - [`error`]: `ApiError` and the one mapping to DPS error codes.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod app;
pub mod audit;
pub mod auth;
pub mod certificates;
pub mod clock;
pub mod console;
pub mod error;
pub mod files;
pub mod groups;
pub mod health;
pub mod http;
pub mod hub;
pub mod issuance;
pub mod management;
pub mod metrics;
pub mod mqtt;
pub mod pki;
pub mod registration;
pub mod secrets;
pub mod server;
pub mod store;
pub mod test_postgres;
pub mod testing;
pub mod throttle;
pub mod tls;
pub mod webhook;
pub mod websocket;
pub mod x509;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use app::{App, Overview, RegisterResponse, Settings};

/// Everything `usher serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the KEK file (unless given elsewhere), the development PKI, the runtime file and the
    /// SQLite database (unless `store` names another) live.
    pub data_dir: PathBuf,
    /// A PostgreSQL database (`postgres://…`) to keep the instance in instead of SQLite in the data
    /// directory; several nodes may serve one instance from it.
    pub store: Option<String>,
    /// Host names (DNS names or IP literals) the server certificate covers; the first is the
    /// service host name on first run.
    pub hostnames: Vec<String>,
    /// A certificate chain and key to use instead of the development PKI.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub settings: Settings,
    pub limits: Limits,
    /// Where the key-encryption key comes from.
    pub kek: secrets::KekSource,
}

/// What the transports enforce on connections, requests and sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Per listener (HTTPS, MQTT and AMQP each).
    pub connections: server::ConnectionLimits,
    pub http: server::HttpLimits,
    pub mqtt: mqtt::Limits,
    pub amqp: amqp::Limits,
    /// Whether the web console is served, and how long its sessions last.
    pub console: console::ConsoleSettings,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Setup(#[from] app::SetupError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot write {path}: {source}")]
    Runtime {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A server ready to run: state loaded, TLS configured.
pub struct Prepared {
    pub app: App,
    pub overview: Overview,
    tls: std::sync::Arc<rustls::ServerConfig>,
    /// The same certificate without ALPN, for MQTT and AMQP.
    mqtt_tls: std::sync::Arc<rustls::ServerConfig>,
    limits: Limits,
    data_dir: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served over plain HTTP, if anywhere.
    metrics_listener: Option<TcpListener>,
}

/// Opens or creates the data directory, the development PKI and the TLS configuration.
pub async fn prepare(mut config: ServeConfig) -> Result<Prepared, ServeError> {
    let service_host = config
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let (store, instance) = app::open_data_dir(
        &config.data_dir,
        &service_host,
        &config.kek,
        config.store.as_deref(),
    )
    .await?;
    app::ensure_hub_policies(&store).await?;
    let (cert, key) = match &config.tls_cert {
        Some((cert, key)) => (cert.clone(), key.clone()),
        None => {
            let files = app::ensure_shared_pki(&store, &config.data_dir, &config.hostnames).await?;
            (files.server_cert, files.server_key)
        }
    };
    let tickets = app::shared_ticket_secret(&store).await?;
    let tls = tls::server_config(&cert, &key, &[b"http/1.1"], tickets)?;
    let mqtt_tls = tls::server_config(&cert, &key, &[], tickets)?;
    let mut overview = app::overview(&store, &instance, &config.data_dir).await?;
    // Without a configured issuing CA, the one made on first run issues certificates.
    overview.issuing_ca_certificate = match config.settings.issuing_ca {
        Some(_) => None,
        None => {
            let (path, ca) = app::ensure_issuing_ca(&store, &config.data_dir).await?;
            config.settings.issuing_ca = Some(std::sync::Arc::new(ca));
            Some(path.display().to_string())
        }
    };
    let mut hostnames = config.hostnames.clone();
    if !hostnames
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&instance.service_host))
    {
        hostnames.insert(0, instance.service_host.clone());
    }
    let app = App::new(store, instance, hostnames, config.settings);
    Ok(Prepared {
        app,
        overview,
        tls,
        mqtt_tls,
        limits: config.limits,
        data_dir: config.data_dir,
        metrics_listener: None,
    })
}

impl Prepared {
    /// Serves `/metrics`, `/healthz` and `/readyz` over plain HTTP on `listener` too.
    #[must_use]
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Serves HTTPS (device API, management API, MQTT and AMQP over WebSockets) on `https`, MQTT
    /// over TLS on `mqtt` and AMQP over TLS on `amqp`, until `shutdown` is cancelled; then lets
    /// open connections finish for up to `Settings::shutdown_timeout` and closes the rest.
    /// Records the bound addresses in the data directory's runtime file so the CLI can find the
    /// server.
    pub async fn run(
        self,
        https: TcpListener,
        mqtt: Option<TcpListener>,
        amqp: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let runtime = self.data_dir.join(app::RUNTIME_FILE);
        let io = |source| ServeError::Runtime {
            path: runtime.clone(),
            source,
        };
        let https_addr: SocketAddr = https.local_addr().map_err(io)?;
        let mqtt_addr = mqtt
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(io)?;
        let amqp_addr = amqp
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(io)?;
        let metrics_addr = self
            .metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(io)?;
        let text = serde_json::json!({
            "httpsAddr": https_addr.to_string(),
            "mqttAddr": mqtt_addr.map(|a| a.to_string()),
            "amqpAddr": amqp_addr.map(|a| a.to_string()),
            "metricsAddr": metrics_addr.map(|a| a.to_string()),
        })
        .to_string();
        files::write_private(&runtime, text.as_bytes()).map_err(io)?;
        tracing::info!(%https_addr, ?mqtt_addr, ?amqp_addr, ?metrics_addr, "serving");

        let app = self.app.clone();
        let app_shutdown = app.shutdown.clone();
        let watch = shutdown.clone();
        tokio::spawn(async move {
            watch.cancelled().await;
            app_shutdown.cancel();
        });
        tokio::spawn(audit::prune_periodically(
            self.app.clone(),
            self.app.settings.audit_retention,
        ));
        let limits = self.limits;
        let drain = app.settings.shutdown_timeout;
        let options = |name| server::ListenerOptions {
            name,
            metrics: app.metrics.clone(),
            drain_timeout: drain,
        };
        // Serves until the device listeners have drained.
        let drained = CancellationToken::new();
        let ops_task = self.metrics_listener.map(|listener| {
            tokio::spawn(http::ops::serve(
                listener,
                app.clone(),
                shutdown.clone(),
                drained.clone(),
                drain,
            ))
        });
        let mqtt_endpoint = mqtt::Endpoint::new(limits.mqtt);
        let amqp_endpoint = amqp::Endpoint::new(limits.amqp);
        let mut router = http::router(
            self.app.clone(),
            limits.http,
            mqtt_endpoint.clone(),
            amqp_endpoint.clone(),
        );
        if limits.console.enabled {
            let endpoints = console::Endpoints {
                https_port: https_addr.port(),
                mqtt_port: mqtt_addr.map(|a| a.port()),
                amqp_port: amqp_addr.map(|a| a.port()),
            };
            let ca = self.overview.ca_certificate.as_ref().map(PathBuf::from);
            router = router.merge(console::router(
                self.app.clone(),
                endpoints,
                ca,
                &limits.console,
                limits.http.body_timeout,
            ));
        }
        let https_task = server::serve_tls(
            https,
            self.tls,
            limits.connections,
            options(metrics::Listener::Https),
            shutdown.clone(),
            move |tls, peer, stop| {
                server::serve_http_connection(tls, peer, router.clone(), limits.http, stop)
            },
        );
        let mqtt_task = mqtt.map(|listener| {
            let app = app.clone();
            server::serve_tls(
                listener,
                std::sync::Arc::clone(&self.mqtt_tls),
                limits.connections,
                options(metrics::Listener::Mqtt),
                shutdown.clone(),
                move |tls, peer, stop| {
                    mqtt::serve_tls_connection(app.clone(), mqtt_endpoint.clone(), tls, peer, stop)
                },
            )
        });
        let amqp_task = amqp.map(|listener| {
            let app = app.clone();
            server::serve_tls(
                listener,
                std::sync::Arc::clone(&self.mqtt_tls),
                limits.connections,
                options(metrics::Listener::Amqp),
                shutdown.clone(),
                move |tls, peer, stop| {
                    amqp::serve_tls_connection(app.clone(), amqp_endpoint.clone(), tls, peer, stop)
                },
            )
        });
        app.listening
            .store(true, std::sync::atomic::Ordering::Release);
        tokio::join!(https_task, optional(mqtt_task), optional(amqp_task));
        app.listening
            .store(false, std::sync::atomic::Ordering::Release);
        drained.cancel();
        if let Some(task) = ops_task {
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&runtime);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs a listener's task if there is one.
async fn optional(task: Option<impl Future<Output = ()>>) {
    if let Some(task) = task {
        task.await;
    }
}
