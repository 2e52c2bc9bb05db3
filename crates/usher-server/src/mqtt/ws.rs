//! MQTT over WebSockets: `GET /$iothub/websocket` with subprotocol `mqtt` (Python, Node) or `MQTT`
//! (C), routed here by `crate::websocket`. After the upgrade, binary frames carry the same byte
//! stream the TLS listener reads.

use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};

use super::session::run_session;
use crate::app::{App, Protocol};

/// Runs an MQTT session on an upgraded WebSocket (`crate::websocket` picks the protocol).
pub(crate) async fn session(
    app: App,
    endpoint: super::Endpoint,
    socket: WebSocket,
    peer: SocketAddr,
    chain: crate::x509::ClientChain,
) {
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
        super::Peer { addr: peer, chain },
        Protocol::MqttWs,
        shutdown,
    )
    .await;
}
