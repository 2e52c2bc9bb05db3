//! MQTT over WebSockets: `GET /$iothub/websocket` with subprotocol `mqtt` (Python, Node) or `MQTT`
//! (C). After the upgrade, binary frames carry the same byte stream the TLS listener reads.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};

use super::session::run_session;
use crate::app::{App, Protocol};
use crate::error::ApiError;

/// The peer address of an HTTP connection, added by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The upgrade handler. Echoes the client's own spelling of `mqtt` (Node's `ws` checks it).
pub async fn websocket_route(
    State(app): State<App>,
    Extension(endpoint): Extension<super::Endpoint>,
    peer: Option<Extension<PeerAddr>>,
    ws: WebSocketUpgrade,
) -> Response {
    let offered = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .find(|p| p.trim().eq_ignore_ascii_case("mqtt"))
        .map(|p| p.trim().to_owned());
    let Some(protocol) = offered else {
        return crate::http::error_response(&ApiError::InvalidArgument(
            "the WebSocket endpoint speaks the subprotocol mqtt only".into(),
        ));
    };
    let peer = peer.map_or_else(
        || SocketAddr::from(([0, 0, 0, 0], 0)),
        |Extension(PeerAddr(p))| p,
    );
    let max = endpoint.limits.max_packet;
    ws.protocols([protocol])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(app, endpoint, socket, peer))
}

async fn session(app: App, endpoint: super::Endpoint, socket: WebSocket, peer: SocketAddr) {
    let (sink, stream) = socket.split();
    let output = sink
        .sink_map_err(std::io::Error::other)
        .with(|b: Bytes| async move { Ok::<_, std::io::Error>(Message::Binary(b)) });
    let input = stream
        .take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_)))))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Binary(b)) => Some(Ok(b)),
                Ok(Message::Text(t)) => Some(Ok(Bytes::copy_from_slice(t.as_str().as_bytes()))),
                Ok(_) => None,
                Err(e) => Some(Err(std::io::Error::other(e))),
            })
        });
    let shutdown = app.shutdown.clone();
    run_session(
        app,
        &endpoint,
        Box::pin(input),
        Box::pin(output),
        peer,
        Protocol::MqttWs,
        shutdown,
    )
    .await;
}
