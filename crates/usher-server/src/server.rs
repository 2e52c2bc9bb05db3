//! The TLS accept loop: our own, rather than `axum::serve`, so that TLS uses our `ServerConfig`,
//! handshakes time out, connections are limited per listener and per client address, and HTTPS,
//! MQTT and AMQP share one shape.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{Listener, Metrics};

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

/// Limits every listener enforces before a connection reaches its protocol.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Connections served at once by one listener; further clients wait in the listen backlog
    /// until a slot frees.
    pub max_connections: usize,
    /// Connections one client address may hold at once on one listener; more are closed at once,
    /// so one address cannot take every slot.
    pub max_connections_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
        }
    }
}

/// Limits of the HTTPS listener (the device and management APIs, the WebSocket upgrade).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// How long a client has to send a request's headers, counted from the connection's start and,
    /// on a kept-alive connection, from the end of the previous response: it is also the idle
    /// timeout between requests.
    pub header_timeout: Duration,
    /// How long a client has to send a request's body once its headers are in (408 after).
    pub body_timeout: Duration,
    /// The most bytes of request line and headers buffered per connection (larger: 431).
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The smallest header buffer hyper accepts.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Counts connections per client address on one listener.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's claim on its address's count; released when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// Takes a slot for `ip`, or `None` if it holds `max` already.
    fn claim(table: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = table.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: Arc::clone(table),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts TLS connections on `listener` and hands each to `handle` in its own task, until
/// `shutdown` is cancelled; then waits up to `options.drain_timeout` for the handlers to finish
/// and drops those still running.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
    options: ListenerOptions,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(TlsStream<TcpStream>, SocketAddr, CancellationToken) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let tracker = TaskTracker::new();
    // Cancelled when the drain time is up: every connection still open is dropped.
    let force = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
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
        let Some(address_slot) =
            PerAddress::claim(&per_address, peer.ip(), limits.max_connections_per_address)
        else {
            tracing::debug!(%peer, limit = limits.max_connections_per_address, "connection refused: too many from this address");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        let open = options.metrics.connection(options.name);
        let force = force.clone();
        tracker.spawn(async move {
            let _slots = (permit, address_slot, open);
            let serve = async move {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
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

/// Serves HTTP/1.1 (with upgrades, for MQTT and AMQP over WebSockets) on one TLS connection. HTTP/2 is not
/// served: only `http/1.1` is offered in ALPN, and a client that skips ALPN and sends the HTTP/2
/// preface anyway is refused by the HTTP/1.1 parser and disconnected.
pub async fn serve_http_connection(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let chain = crate::x509::ClientChain::new(tls.get_ref().1.peer_certificates());
    let service = TowerToHyperService::new(
        router
            .layer(axum::Extension(crate::websocket::PeerAddr(peer)))
            .layer(axum::Extension(chain)),
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            // Idle connections close now, requests in flight finish; the listener closes whatever
            // is still open when its shutdown timeout is up (one timer, so the log says which).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
