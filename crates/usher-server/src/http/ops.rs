//! The operator's HTTP endpoints: `/healthz` and `/readyz` (on the HTTPS port and the metrics
//! listener) and `/metrics` (the metrics listener only: plain HTTP, off unless `--metrics-addr`
//! is given, meant for a private address).

use std::future::IntoFuture as _;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::health;

/// Answers `/healthz` and `/readyz` (GET or HEAD); `None` for any other path.
pub(crate) async fn health_route(app: &App, method: &Method, path: &str) -> Option<Response> {
    let probe = match path {
        "/healthz" => Probe::Alive,
        "/readyz" => Probe::Ready,
        _ => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(response);
    }
    Some(match probe {
        Probe::Alive => text(StatusCode::OK, "ok", "text/plain; charset=utf-8"),
        Probe::Ready => {
            let readiness = health::readiness(app).await;
            let status = if readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            super::json_response(status, &readiness)
        }
    })
}

enum Probe {
    Alive,
    Ready,
}

fn text(status: StatusCode, body: impl Into<Body>, content_type: &'static str) -> Response {
    let mut response = (status, body.into()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The metrics listener's routes: `/metrics`, `/healthz`, `/readyz`; anything else is 404.
pub fn router(app: App) -> Router {
    Router::new().fallback(handle).with_state(app)
}

async fn handle(State(app): State<App>, method: Method, uri: axum::http::Uri) -> Response {
    if let Some(response) = health_route(&app, &method, uri.path()).await {
        return response;
    }
    match (uri.path(), &method) {
        ("/metrics", &Method::GET | &Method::HEAD) => text(
            StatusCode::OK,
            app.metrics.encode(),
            crate::metrics::CONTENT_TYPE,
        ),
        ("/metrics", _) => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves /metrics, /healthz and /readyz\n",
            "text/plain; charset=utf-8",
        ),
    }
}

/// Serves the metrics listener (plain HTTP/1.1) until the device listeners have drained
/// (`drained`), so readiness can be watched failing during shutdown, but never past
/// `drain_timeout` after `shutdown`.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: CancellationToken,
    drained: CancellationToken,
    drain_timeout: Duration,
) {
    let stop = CancellationToken::new();
    let server =
        axum::serve(listener, router(app)).with_graceful_shutdown(stop.clone().cancelled_owned());
    let bound = async {
        shutdown.cancelled().await;
        let deadline = tokio::time::Instant::now() + drain_timeout;
        tokio::select! {
            () = drained.cancelled() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
        stop.cancel();
        tokio::time::sleep_until(deadline).await;
    };
    tokio::select! {
        result = server.into_future() => {
            if let Err(e) = result {
                tracing::warn!(error = %e, "the metrics listener failed");
            }
        }
        () = bound => {}
    }
}
