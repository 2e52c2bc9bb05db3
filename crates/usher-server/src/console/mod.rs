//! The web console: the Azure portal's DPS pages, served under `/console/` on the HTTPS port.
//!
//! A transport like `http`: each handler parses a form or a query, checks the caller's right with
//! [`auth::authorize`] (the check the management API makes), calls the same `management`
//! functions as the REST API, and renders an askama template (checked at compile time). It
//! writes no SQL and decides nothing about enrollments itself.
//!
//! Sign-in takes a shared access policy (its connection string, or its name and key) and starts
//! a server-side session ([`session`]); the cookie holds only a random ID. Every POST must carry
//! the session's CSRF token, which one middleware ([`guard`]) checks before any handler runs.
//! Keys are never in a page until the user asks for them (`?show=keys`).

mod enrollments;
mod hubs;
mod overview;
mod policies;
mod registrations;
pub(crate) mod session;
mod signin;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::app::App;
use crate::auth::{Principal, Right};
use crate::error::ApiError;
use session::{Lookup, SESSION_COOKIE, SIGNIN_COOKIE, Session, Sessions};

/// Console settings, fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleSettings {
    /// Whether `/console/` is served at all.
    pub enabled: bool,
    /// How long a sign-in lasts.
    pub session_ttl: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: Duration::from_secs(3600),
        }
    }
}

/// Where devices connect, as the overview shows it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub https_port: u16,
    pub mqtt_port: Option<u16>,
    pub amqp_port: Option<u16>,
}

/// The console's shared state.
#[derive(Clone)]
pub(crate) struct Console(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) app: App,
    pub(crate) sessions: Sessions,
    pub(crate) endpoints: Endpoints,
    /// The development CA certificate, offered for download (none with `--tls-cert`).
    pub(crate) ca_certificate: Option<PathBuf>,
    /// How long a client has to send a form once its headers are in.
    pub(crate) body_timeout: Duration,
}

impl std::ops::Deref for Console {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Largest form body accepted.
const MAX_FORM: usize = 96 * 1024;
/// Rows per page of a list.
pub(crate) const PAGE: u64 = 25;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The console's routes, all under `/console/`.
pub fn router(
    app: App,
    endpoints: Endpoints,
    ca_certificate: Option<PathBuf>,
    settings: &ConsoleSettings,
    body_timeout: Duration,
) -> Router {
    let console = Console(Arc::new(Inner {
        app,
        sessions: Sessions::new(settings.session_ttl),
        endpoints,
        ca_certificate,
        body_timeout,
    }));
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview::page_handler))
        .route("/console/ca.pem", get(overview::ca_certificate))
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .route("/console/signin", get(signin::form).post(signin::submit))
        .route("/console/signout", post(signin::sign_out))
        .route(
            "/console/derive",
            get(enrollments::derive_form).post(enrollments::derive),
        )
        .route(
            "/console/enrollments",
            get(enrollments::list).post(enrollments::create),
        )
        .route("/console/enrollments/new", get(enrollments::new_form))
        .route("/console/enrollments/{kind}/{id}", get(enrollments::show))
        .route(
            "/console/enrollments/{kind}/{id}/edit",
            get(enrollments::edit_form).post(enrollments::edit),
        )
        .route(
            "/console/enrollments/{kind}/{id}/status",
            post(enrollments::set_status),
        )
        .route(
            "/console/enrollments/{kind}/{id}/delete",
            get(enrollments::delete_form).post(enrollments::delete),
        )
        .route("/console/registrations", get(registrations::list))
        .route("/console/registrations/{id}", get(registrations::show))
        .route(
            "/console/registrations/{id}/delete",
            get(registrations::delete_form).post(registrations::delete),
        )
        .route("/console/hubs", get(hubs::list).post(hubs::add))
        .route("/console/hubs/{name}", post(hubs::update))
        .route("/console/hubs/{name}/devices", get(hubs::devices))
        .route("/console/hubs/{name}/devices/{id}", get(hubs::device))
        .route(
            "/console/policies",
            get(policies::list).post(policies::create),
        )
        .route("/console/policies/{name}/rotate", post(policies::rotate))
        .route(
            "/console/policies/{name}/delete",
            get(policies::delete_form).post(policies::delete),
        )
        .route("/console/{*rest}", axum::routing::any(not_found))
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

/// Runs before every console handler: refuses a POST whose CSRF token is missing or wrong (the
/// session's token; on the sign-in form, the sign-in cookie's), and gives every response the
/// console's security headers.
async fn guard(State(console): State<Console>, req: Request, next: Next) -> Response {
    let mut response = if req.method() == Method::GET || req.method() == Method::HEAD {
        next.run(req).await
    } else {
        match check_csrf(&console, req).await {
            Ok(req) => next.run(req).await,
            Err(refused) => refused,
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn check_csrf(console: &Console, req: Request) -> Result<Request, Response> {
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(
        console.body_timeout,
        axum::body::to_bytes(body, MAX_FORM),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is larger than 96 KB.",
            ));
        }
        Err(_) => {
            return Err(plain(
                StatusCode::REQUEST_TIMEOUT,
                "The form did not arrive in time.",
            ));
        }
    };
    let form = Form::parse(&bytes);
    let expected = if parts.uri.path() == "/console/signin" {
        session::cookie(&parts.headers, SIGNIN_COOKIE).map(str::to_owned)
    } else {
        match console
            .sessions
            .get(session::cookie(&parts.headers, SESSION_COOKIE))
        {
            Ok(s) => Some(s.csrf),
            Err(why) => return Err(signed_out(why)),
        }
    };
    let given = form.get("csrf");
    match (expected, given) {
        (Some(expected), Some(given)) if session::same_token(&expected, given) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => {
            tracing::info!(path = %parts.uri.path(), "console form refused: CSRF token missing or wrong");
            Err(plain(
                StatusCode::FORBIDDEN,
                "This form was refused: its security token is missing or does not belong to your \
                 session (CSRF check). Reload the page and try again.",
            ))
        }
    }
}

/// A signed-in user: the session and the principal its policy makes now.
pub(crate) struct Signed {
    pub(crate) principal: Principal,
    pub(crate) session: Session,
    /// The session cookie's value.
    pub(crate) cookie: String,
    /// The client's address, for the audit log.
    pub(crate) peer: Option<std::net::IpAddr>,
}

impl FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let cookie = session::cookie(&parts.headers, SESSION_COOKIE);
        let session = console.sessions.get(cookie).map_err(signed_out)?;
        let cookie = cookie.unwrap_or_default().to_owned();
        let peer = parts
            .extensions
            .get::<crate::websocket::PeerAddr>()
            .map(|p| p.0.ip());
        // The policy is read on every request: rights changes, key rotation and deletion take
        // effect at once.
        let digest = session.key_digest;
        let principal = crate::auth::principal_still_holding(&console.app, &session.policy, |k| {
            session::key_digest(k) == digest
        })
        .await
        .map_err(|e| failure(None, &e))?;
        match principal {
            Some(principal) => Ok(Self {
                principal,
                session,
                cookie,
                peer,
            }),
            None => {
                console.sessions.remove(&cookie);
                Err(Redirect::to("/console/signin?why=ended").into_response())
            }
        }
    }
}

/// Where a request without a live session goes.
fn signed_out(why: Lookup) -> Response {
    let to = match why {
        Lookup::Expired => "/console/signin?why=expired",
        Lookup::Unknown => "/console/signin",
    };
    Redirect::to(to).into_response()
}

impl Signed {
    /// The page frame: who is signed in, what the navigation offers, the CSRF token, and the
    /// message the last form left.
    pub(crate) fn layout(&self, console: &Console, section: &'static str) -> Layout {
        let p = &self.principal;
        Layout {
            policy: p.policy().to_owned(),
            csrf: self.session.csrf.clone(),
            section,
            flash: console.sessions.take_flash(&self.cookie),
            can: Can {
                enrollment_read: p.has(Right::EnrollmentRead),
                enrollment_write: p.has(Right::EnrollmentWrite),
                registration_read: p.has(Right::RegistrationStatusRead),
                registration_write: p.has(Right::RegistrationStatusWrite),
                service_config: p.has(Right::ServiceConfig),
            },
        }
    }

    /// Checks a right with [`crate::auth::authorize`] (the check the management API makes):
    /// `None` if the policy holds it, else the 403 page to answer with.
    pub(crate) fn refuse(&self, console: &Console, right: Right) -> Option<Response> {
        crate::auth::authorize(&self.principal, right)
            .err()
            .map(|e| failure(Some(self.layout(console, "")), &e))
    }

    /// Like [`Signed::refuse`], for a write: a refusal is also appended to the audit log, as the
    /// management API appends it.
    pub(crate) async fn refuse_write(
        &self,
        console: &Console,
        right: Right,
        action: &str,
        target: &str,
    ) -> Option<Response> {
        let e = crate::auth::authorize(&self.principal, right).err()?;
        self.audit_result(console, action, target, crate::audit::refused(&e))
            .await;
        Some(failure(Some(self.layout(console, "")), &e))
    }

    /// Appends a write's outcome to the audit log with the same actor and action names as the
    /// management API (`policy:NAME`, `enrollmentGroup.put`, …).
    pub(crate) async fn audit<T>(
        &self,
        console: &Console,
        action: &str,
        target: &str,
        result: &Result<T, ApiError>,
    ) {
        self.audit_result(console, action, target, crate::audit::outcome(result))
            .await;
    }

    async fn audit_result(&self, console: &Console, action: &str, target: &str, result: String) {
        let record = crate::audit::record(
            format!("policy:{}", self.principal.policy()),
            self.peer,
            action,
            target,
            result,
        );
        crate::audit::append(&console.app, vec![record]).await;
    }

    /// Leaves a message for the next page.
    pub(crate) fn flash(&self, console: &Console, message: String) {
        console.sessions.set_flash(&self.cookie, message);
    }
}

/// What every signed-in page's frame needs.
pub(crate) struct Layout {
    pub(crate) policy: String,
    pub(crate) csrf: String,
    /// The navigation entry to mark as current.
    pub(crate) section: &'static str,
    pub(crate) flash: Option<String>,
    pub(crate) can: Can,
}

/// What the signed-in policy's rights allow, for deciding which controls to show. The handlers
/// check the same rights again with [`crate::auth::authorize`].
pub(crate) struct Can {
    pub(crate) enrollment_read: bool,
    pub(crate) enrollment_write: bool,
    pub(crate) registration_read: bool,
    pub(crate) registration_write: bool,
    pub(crate) service_config: bool,
}

/// A parsed `application/x-www-form-urlencoded` body or query string (names may repeat, as
/// checkbox groups do).
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn parse(bytes: &[u8]) -> Self {
        Self(form_urlencoded::parse(bytes).into_owned().collect())
    }

    pub(crate) fn query(query: Option<&str>) -> Self {
        Self::parse(query.unwrap_or_default().as_bytes())
    }

    /// The first value of a field.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a field, trimmed, or "".
    pub(crate) fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_owned()
    }

    /// Every value of a field.
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether a checkbox was ticked.
    pub(crate) fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Renders a template as an HTML page.
pub(crate) fn page<T: Template>(status: StatusCode, template: &T) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (status, html).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot render a console page");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be rendered.",
            )
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// The status a management failure is shown with: a missing right is 403, otherwise the DPS
/// code's HTTP status.
pub(crate) fn status_of(e: &ApiError) -> StatusCode {
    match e {
        ApiError::MissingRight { .. } => StatusCode::FORBIDDEN,
        other => StatusCode::from_u16(other.code().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    l: Option<Layout>,
    status: u16,
    title: &'static str,
    message: String,
}

/// An error page for a management failure.
pub(crate) fn failure(l: Option<Layout>, e: &ApiError) -> Response {
    let status = status_of(e);
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => "Changed meanwhile",
        s if s.is_server_error() => "Something went wrong",
        _ => "Request refused",
    };
    page(
        status,
        &ErrorPage {
            l,
            status: status.as_u16(),
            title,
            message: e.public_message(),
        },
    )
}

async fn not_found(signed: Result<Signed, Response>, State(console): State<Console>) -> Response {
    let l = signed.ok().map(|s| s.layout(&console, ""));
    page(
        StatusCode::NOT_FOUND,
        &ErrorPage {
            l,
            status: 404,
            title: "Not found",
            message: "There is no console page at this address.".into(),
        },
    )
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = Bytes::from_static(body.as_bytes()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    response
}

/// A 303 to another console page after a form did its work.
pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved
/// characters).
pub(crate) fn enc(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

/// Pretty JSON for a page.
pub(crate) fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A short, readable form of a DPS timestamp (`2026-11-22 10:07:18 UTC`).
pub(crate) fn when(stamp: Option<&str>) -> String {
    let Some(s) = stamp else {
        return String::new();
    };
    match (s.get(..10), s.get(11..19)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => s.to_owned(),
    }
}
