//! The TLS accept loop: our own, rather than `axum::serve`, so that TLS uses our `ServerConfig`,
//! handshakes time out, connections are limited, and HTTPS and MQTT share one shape.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{Listener, Metrics};

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per listener; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 10_000;

/// What a listener is called and how it ends.
#[derive(Clone)]
pub struct ListenerOptions {
    /// The `listener` label of `usher_open_connections`.
    pub name: Listener,
    pub metrics: Metrics,
    /// How long open connections get to finish after shutdown is asked for
    /// (`Settings::shutdown_timeout`).
    pub drain_timeout: Duration,
}

/// Accepts TLS connections on `listener` and hands each to `handle` in its own task, until
/// `shutdown` is cancelled; then waits up to `options.drain_timeout` for the handlers to finish.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
    options: ListenerOptions,
    handle: H,
) where
    H: Fn(TlsStream<TcpStream>, SocketAddr, CancellationToken) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    // Cancelled when the drain time is up: every connection still open is dropped.
    let force = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        let open = options.metrics.connection(options.name);
        let force = force.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _open = open;
            let serve = async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => handle(tls, peer, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            };
            tokio::select! {
                () = serve => {}
                () = force.cancelled() => tracing::debug!(%peer, "connection closed at the end of the shutdown timeout"),
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(options.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = options.name.as_str(),
            open = tracker.len(),
            "connections still open after the shutdown timeout; closing them"
        );
        force.cancel();
        tracker.wait().await;
    }
}

/// Serves HTTP/1.1 (with upgrades, for MQTT over WebSockets) on one TLS connection.
pub async fn serve_http_connection(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let service =
        TowerToHyperService::new(router.layer(axum::Extension(crate::mqtt::PeerAddr(peer))));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(drain_timeout, conn).await;
        }
    }
}
