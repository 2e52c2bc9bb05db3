//! The Usher server: sockets, TLS, HTTP and storage around the pure `usher-proto` core.
//!
//! # Layout
//! - [`app`]: shared state, settings, first-run set-up of a data directory, the overview.
//! - [`registration`]: the registration core every device transport calls (attest, allocate, record).
//! - [`management`]: enrollment, group, registration-record and hub operations.
//! - [`http`]: the HTTPS dispatcher for the device and management APIs.
//! - [`server`]: the TLS accept loop.
//! - [`store`]: durable state behind one interface, with group commit.
//! - [`pki`], [`tls`]: the development CA and the rustls configuration.
//! - [`error`]: `ApiError` and the one mapping to DPS error codes.
#![forbid(unsafe_code)]

pub mod app;
pub mod error;
pub mod http;
pub mod management;
pub mod pki;
pub mod registration;
pub mod server;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use app::{App, Overview, RegisterResponse, Settings};

/// Everything `usher serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// Host names (DNS names or IP literals) the server certificate covers; the first is the
    /// service host name on first run.
    pub hostnames: Vec<String>,
    /// A certificate chain and key to use instead of the development PKI.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub settings: Settings,
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
    data_dir: PathBuf,
}

/// Opens or creates the data directory, the development PKI and the TLS configuration.
pub async fn prepare(config: ServeConfig) -> Result<Prepared, ServeError> {
    let service_host = config
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let (store, instance) = app::open_data_dir(&config.data_dir, &service_host).await?;
    let (cert, key) = match &config.tls_cert {
        Some((cert, key)) => (cert.clone(), key.clone()),
        None => {
            let files = app::ensure_pki(&config.data_dir, &config.hostnames)?;
            (files.server_cert, files.server_key)
        }
    };
    let tls = tls::server_config(&cert, &key, &[b"http/1.1"])?;
    let overview = app::overview(&store, &instance, &config.data_dir).await?;
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
        data_dir: config.data_dir,
    })
}

impl Prepared {
    /// Serves HTTPS on `listener` until `shutdown` is cancelled. Records the bound address in the
    /// data directory's runtime file so the CLI can find the server.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|source| ServeError::Runtime {
                path: self.data_dir.clone(),
                source,
            })?;
        let runtime = self.data_dir.join(app::RUNTIME_FILE);
        let text = serde_json::json!({ "httpsAddr": addr.to_string() }).to_string();
        std::fs::write(&runtime, text).map_err(|source| ServeError::Runtime {
            path: runtime.clone(),
            source,
        })?;
        tracing::info!(%addr, "serving HTTPS");
        server::serve_https(listener, self.tls, http::router(self.app), shutdown).await;
        let _ = std::fs::remove_file(&runtime);
        Ok(())
    }
}
