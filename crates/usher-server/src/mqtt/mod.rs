//! The MQTT device endpoint: MQTT 3.1.1 over TLS (port 8883) and over WebSockets
//! (`/$iothub/websocket` on the HTTPS port).
//!
//! No broker: every device subscribes to the same filter and picks its own `$rid`, so a broker's
//! fan-out would hand one device's answer to another. Each connection has one session task that
//! answers on that connection only. The session reads from a stream of byte chunks and writes to a
//! sink of byte chunks, so TLS and WebSockets are only different byte sources for the same code.

mod session;
mod ws;

use std::net::SocketAddr;

use futures_util::StreamExt as _;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::{BytesCodec, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

pub use session::{Limits, MAX_KEEP_ALIVE, MAX_PACKET, Peer, run_session};
pub(crate) use ws::session as websocket_session;

/// What every MQTT session shares, over TLS and WebSockets alike: the limits, and the count of
/// open sessions (over `Limits::max_sessions` a client gets CONNACK 3).
#[derive(Clone)]
pub struct Endpoint {
    pub limits: Limits,
    sessions: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Endpoint {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            sessions: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_sessions)),
        }
    }
}

use crate::app::{App, Protocol};

/// Runs an MQTT session on a TLS connection.
pub async fn serve_tls_connection(
    app: App,
    endpoint: Endpoint,
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let chain = crate::x509::ClientChain::new(tls.get_ref().1.peer_certificates());
    let (read, write) = tokio::io::split(tls);
    let input = FramedRead::new(read, BytesCodec::new()).map(|r| r.map(bytes::BytesMut::freeze));
    let output = FramedWrite::new(write, BytesCodec::new());
    run_session(
        app,
        &endpoint,
        input,
        output,
        Peer { addr: peer, chain },
        Protocol::Mqtt,
        shutdown,
    )
    .await;
}
