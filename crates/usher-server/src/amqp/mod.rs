//! The AMQP 1.0 device endpoint (`device-protocol.md` §6): AMQP over TLS (port 5671) and over
//! WebSockets (`/$iothub/websocket` on the HTTPS port, subprotocol `AMQPWSB10`).
//!
//! fe2o3-amqp speaks the protocol: protocol headers, SASL, frames, sessions, links, flow control.
//! This module decides only what DPS decides, in three places:
//! - [`connection`]: who the device is (the SASL PLAIN user name and SAS token, checked by the
//!   registration core once the connection is open; a refusal closes the connection with the DPS
//!   error JSON as the description, as DPS does), and how many sessions it may begin;
//! - [`session`]: which links it may attach (its own address only) and how each request message
//!   is answered: parse the application properties, call the registration core, render the
//!   answer in a data section with the correlation ID echoed;
//! - [`ws`]: the byte stream of an AMQP-over-WebSockets connection;
//! - [`guard`]: every byte a client sends passes `usher_proto::amqp::FrameGuard` first, which
//!   refuses the frames fe2o3-amqp's decoders would panic on.

mod connection;
mod guard;
mod session;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

pub use connection::serve;
pub(crate) use ws::session as websocket_session;

use crate::app::{App, Protocol};

/// Limits every AMQP connection enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a new connection has to exchange protocol headers, authenticate (SASL) and open.
    pub open_timeout: Duration,
    /// The idle time-out announced in Open: a connection that sends no frame for this long is
    /// closed. Both SDKs send empty frames at half the announced value.
    pub idle_timeout: Duration,
    /// Largest frame accepted (announced in Open); a larger one closes the connection.
    pub max_frame_size: u32,
    /// Sessions one connection may begin; a device needs one.
    pub max_sessions: u16,
    /// Links one session may attach; a device needs two (a sender and a receiver).
    pub max_links: u32,
    /// Largest request message (announced as the link's max-message-size): the DPS message limit
    /// (96 KB), the same on every transport. A larger one detaches the link with
    /// `amqp:link:message-size-exceeded`.
    pub max_message: u64,
    /// How long an answer may wait for the device's link credit and settlement.
    pub answer_timeout: Duration,
    /// AMQP connections open at once (over TLS and WebSockets); further ones are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            open_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(240),
            max_frame_size: 64 * 1024,
            max_sessions: 4,
            max_links: 8,
            max_message: usher_proto::model::MAX_MESSAGE_BYTES as u64,
            answer_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// What every AMQP connection shares, over TLS and WebSockets alike: the limits, and the count of
/// open connections (over `Limits::max_connections` a connection is closed at once).
#[derive(Clone)]
pub struct Endpoint {
    pub limits: Limits,
    connections: Arc<Semaphore>,
}

impl Endpoint {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }
}

/// Serves AMQP on a TLS connection (port 5671).
pub async fn serve_tls_connection(
    app: App,
    endpoint: Endpoint,
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let chain = crate::x509::ClientChain::new(tls.get_ref().1.peer_certificates());
    serve(app, &endpoint, tls, peer, chain, Protocol::Amqp, shutdown).await;
}
