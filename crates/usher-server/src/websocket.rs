//! `GET /$iothub/websocket` on the HTTPS port: one path for MQTT over WebSockets (subprotocol
//! `mqtt` from Python and Node, `MQTT` from C) and AMQP over WebSockets (`AMQPWSB10`), picked by
//! the subprotocol the client offers. The client's own spelling is echoed (Node's `ws` checks it).

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;

use crate::app::App;
use crate::error::ApiError;
use crate::x509::ClientChain;

/// The peer address of an HTTP connection, added by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A device protocol spoken over the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Mqtt,
    Amqp,
}

impl Protocol {
    fn of(subprotocol: &str) -> Option<Self> {
        if subprotocol.eq_ignore_ascii_case("mqtt") {
            Some(Self::Mqtt)
        } else if subprotocol.eq_ignore_ascii_case(usher_proto::amqp::WS_SUBPROTOCOL) {
            Some(Self::Amqp)
        } else {
            None
        }
    }
}

/// The upgrade handler: the first subprotocol the client offers that Usher speaks wins.
pub async fn websocket_route(
    State(app): State<App>,
    Extension(mqtt): Extension<crate::mqtt::Endpoint>,
    Extension(amqp): Extension<crate::amqp::Endpoint>,
    peer: Option<Extension<PeerAddr>>,
    chain: Option<Extension<ClientChain>>,
    ws: WebSocketUpgrade,
) -> Response {
    let offered = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .find_map(|p| Protocol::of(p).map(|protocol| (protocol, p.to_owned())));
    let Some((protocol, spelling)) = offered else {
        return crate::http::error_response(&ApiError::InvalidArgument(
            "the WebSocket endpoint speaks the subprotocols mqtt (MQTT 3.1.1) and AMQPWSB10 (AMQP 1.0)"
                .into(),
        ));
    };
    let peer = peer.map_or_else(
        || SocketAddr::from(([0, 0, 0, 0], 0)),
        |Extension(PeerAddr(p))| p,
    );
    let chain = chain.map(|Extension(c)| c).unwrap_or_default();
    let max = match protocol {
        Protocol::Mqtt => mqtt.limits.max_packet,
        // AMQP frames may be split across messages or share one; a message holds at most two.
        Protocol::Amqp => usize::try_from(amqp.limits.max_frame_size)
            .unwrap_or(usize::MAX)
            .saturating_mul(2),
    };
    let ws = ws
        .protocols([spelling])
        .max_message_size(max)
        .max_frame_size(max);
    match protocol {
        Protocol::Mqtt => ws.on_upgrade(move |socket| {
            crate::mqtt::websocket_session(app, mqtt, socket, peer, chain)
        }),
        Protocol::Amqp => ws.on_upgrade(move |socket| {
            crate::amqp::websocket_session(app, amqp, socket, peer, chain)
        }),
    }
}
