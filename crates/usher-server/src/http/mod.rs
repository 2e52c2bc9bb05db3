//! HTTP: one dispatcher for the device API and the management API on the same port.
//!
//! DPS routes need things a path router does not give: literal segments match case-insensitively
//! (`/enrollmentgroups` and `/enrollmentGroups`), a trailing slash is allowed, every segment is
//! percent-decoded, and device paths start with a variable segment (the ID scope). So one
//! handler splits the path and matches on the segments.

mod device;
mod hub;
pub mod ops;
mod service;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use usher_proto::api_version::{self, Api};

use crate::app::{App, Protocol};
pub(crate) use crate::clock::{now, unix_now};
use crate::error::ApiError;
use crate::metrics::Operation;
use crate::server::HttpLimits;

/// Largest request body accepted (the DPS message limit, the same on every transport).
pub const MAX_BODY: usize = usher_proto::model::MAX_MESSAGE_BYTES;

/// The router for the HTTPS port.
pub fn router(
    app: App,
    limits: HttpLimits,
    mqtt: crate::mqtt::Endpoint,
    amqp: crate::amqp::Endpoint,
) -> Router {
    Router::new()
        .route(
            "/$iothub/websocket",
            axum::routing::get(crate::websocket::websocket_route),
        )
        .fallback(dispatch)
        .layer(axum::Extension(limits))
        .layer(axum::Extension(mqtt))
        .layer(axum::Extension(amqp))
        .with_state(app)
}

async fn dispatch(
    State(app): State<App>,
    axum::Extension(limits): axum::Extension<HttpLimits>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<crate::websocket::PeerAddr>()
        .map(|p| p.0);
    let mut response = match route(&app, &parts, body, limits, peer).await {
        Ok(response) => response,
        Err(e) => {
            e.log(Protocol::Https, peer);
            error_response(&e)
        }
    };
    if !response.headers().contains_key("x-ms-request-id")
        && let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        response.headers_mut().insert("x-ms-request-id", v);
    }
    response
}

/// Which API a path belongs to, checks its `api-version`, reads the body and calls the API's router.
async fn route(
    app: &App,
    parts: &axum::http::request::Parts,
    body: Body,
    limits: HttpLimits,
    peer: Option<std::net::SocketAddr>,
) -> Result<Response, ApiError> {
    // Probes carry no credentials and no api-version.
    if let Some(response) = ops::health_route(app, &parts.method, parts.uri.path()).await {
        return Ok(response);
    }
    let segments = split_path(parts.uri.path())?;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let api = match seg.as_slice() {
        [scope, r, _, ..] if is(r, "registrations") && !is(scope, "registrations") => Api::Device,
        _ if hub::is_hub_route(&seg) => Api::HubRegistry,
        _ => Api::Service,
    };
    let version = api_version::from_query(parts.uri.query());
    if let Err(e) = api.check(version.as_deref()) {
        return Ok(match api {
            Api::HubRegistry => hub::version_refused(&e),
            Api::Device | Api::Service => return Err(e.into()),
        });
    }
    if matches!(api, Api::Service)
        && let Some(kind) = service::import_kind(&parts.method, &seg)
    {
        // An import streams its body (a million lines is hundreds of megabytes), so it is not
        // read whole here.
        let started = tokio::time::Instant::now();
        let result = service::import(app, parts, body, limits, peer, kind).await;
        app.metrics
            .request(Protocol::Https, Operation::Management, started.elapsed());
        return result;
    }
    let body = tokio::time::timeout(limits.body_timeout, read_body(body))
        .await
        .map_err(|_| ApiError::BodyTimeout(limits.body_timeout))??;
    let no_chain = crate::x509::ClientChain::default();
    let ctx = Ctx {
        query: parts.uri.query(),
        peer,
        client_chain: parts
            .extensions
            .get::<crate::x509::ClientChain>()
            .unwrap_or(&no_chain),
        app,
        method: &parts.method,
        headers: &parts.headers,
        body: &body,
    };
    // Device requests are timed by the registration core, which knows the operation.
    let started = tokio::time::Instant::now();
    let (operation, result) = match (api, seg.as_slice()) {
        (Api::Device, [scope, _, id, rest @ ..]) => {
            return device::route(&ctx, scope, id, rest).await;
        }
        (Api::HubRegistry, _) => (Operation::HubRegistry, Ok(hub::route(&ctx, &seg).await)),
        _ => (Operation::Management, service::route(&ctx, &seg).await),
    };
    app.metrics
        .request(Protocol::Https, operation, started.elapsed());
    result
}

/// What a route handler sees of the request.
pub(crate) struct Ctx<'a> {
    pub(crate) app: &'a App,
    pub(crate) peer: Option<std::net::SocketAddr>,
    /// The client certificate chain of the connection (X.509 devices), possibly empty.
    pub(crate) client_chain: &'a crate::x509::ClientChain,
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: Option<&'a str>,
    pub(crate) body: &'a Bytes,
}

impl Ctx<'_> {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn not_allowed(&self) -> ApiError {
        ApiError::MethodNotAllowed(self.method.to_string())
    }
}

/// A query parameter's raw value (`name` matched case-insensitively).
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Splits a path into percent-decoded segments, dropping the empty ones a leading or trailing
/// slash leaves.
fn split_path(path: &str) -> Result<Vec<String>, ApiError> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| {
                    ApiError::InvalidArgument(format!("the path segment {s:?} is not valid UTF-8"))
                })
        })
        .collect()
}

/// Reads the body up to [`MAX_BODY`]. A body over the limit is 413; one that cannot be read (a
/// malformed chunked encoding, a connection cut mid-body) is 400 and says what went wrong.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge),
        Err(e) => Err(ApiError::BodyUnreadable(e.to_string())),
    }
}

/// A JSON response with the content type every SDK checks for.
pub(crate) fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// An error as an HTTP response: the DPS error body, its code in `x-ms-error-code`, the tracking ID
/// in `x-ms-request-id`, and `Retry-After` when the error carries one.
pub(crate) fn error_response(e: &ApiError) -> Response {
    let code = e.code();
    let body = e.body();
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let tracking_id = body.tracking_id.clone();
    let mut response = json_response(status, &body);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tracking_id) {
        headers.insert("x-ms-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&code.name()) {
        headers.insert("x-ms-error-code", v);
    }
    if let Some(secs) = e.retry_after() {
        headers.insert("retry-after", HeaderValue::from(secs));
    }
    response
}
