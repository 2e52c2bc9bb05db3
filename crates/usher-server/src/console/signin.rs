//! Sign-in with a shared access policy, and sign-out.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::session::{self, SESSION_COOKIE, SIGNIN_COOKIE, SIGNIN_TTL};
use super::{Console, Form, Signed, page, see_other};
use crate::auth;
use crate::error::ApiError;

#[derive(Template)]
#[template(path = "console/signin.html")]
struct SigninPage {
    notice: Option<&'static str>,
    error: Option<String>,
    token: String,
    policy_name: String,
}

/// `GET /console/signin`: the sign-in form, with a fresh sign-in token in a cookie and in the form.
pub(super) async fn form(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if console
        .sessions
        .get(session::cookie(&headers, SESSION_COOKIE))
        .is_ok()
    {
        return see_other("/console/");
    }
    let notice = match Form::query(query.as_deref()).get("why") {
        Some("expired") => Some("Your session has expired. Sign in again."),
        Some("ended") => Some(
            "Your session has ended: the access policy's key was changed or the policy was deleted.",
        ),
        Some("out") => Some("You have signed out."),
        _ => None,
    };
    render(StatusCode::OK, notice, None, String::new())
}

fn render(
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
    policy_name: String,
) -> Response {
    let Some(token) = session::random_token() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness").into_response();
    };
    let cookie = session::set_cookie(SIGNIN_COOKIE, &token, SIGNIN_TTL);
    let mut response = page(
        status,
        &SigninPage {
            notice,
            error,
            token,
            policy_name,
        },
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// What the sign-in form was given.
#[derive(Debug, PartialEq, Eq)]
struct Credentials {
    policy: String,
    key: String,
    /// The connection string's `HostName`, when one was pasted.
    host: Option<String>,
}

/// Reads a service connection string (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`,
/// names case-insensitive, in any order).
fn parse_connection_string(text: &str) -> Result<Credentials, String> {
    let (mut host, mut policy, mut key) = (None, None, None);
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(format!(
                "the connection string part {part:?} is not name=value"
            ));
        };
        let value = value.trim().to_owned();
        match name.trim().to_ascii_lowercase().as_str() {
            "hostname" => host = Some(value),
            "sharedaccesskeyname" => policy = Some(value),
            "sharedaccesskey" => key = Some(value),
            _ => {}
        }
    }
    match (policy, key) {
        (Some(policy), Some(key)) => Ok(Credentials { policy, key, host }),
        _ => Err("the connection string needs SharedAccessKeyName and SharedAccessKey".to_owned()),
    }
}

/// Appends a sign-in or sign-out to the audit log.
async fn audit(
    console: &Console,
    extensions: &Extensions,
    actor: String,
    action: &str,
    target: &str,
    result: String,
) {
    let peer = extensions
        .get::<crate::websocket::PeerAddr>()
        .map(|p| p.0.ip());
    let record = crate::audit::record(actor, peer, action, target, result);
    crate::audit::append(&console.app, vec![record]).await;
}

/// `POST /console/signin`.
pub(super) async fn submit(
    State(console): State<Console>,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let connection_string = form.text("connection_string");
    let given = if connection_string.is_empty() {
        let (policy, key) = (form.text("policy"), form.text("key"));
        if policy.is_empty() || key.is_empty() {
            return render(
                StatusCode::BAD_REQUEST,
                None,
                Some("Give a connection string, or a policy name and a key.".into()),
                policy,
            );
        }
        Ok(Credentials {
            policy,
            key,
            host: None,
        })
    } else {
        parse_connection_string(&connection_string)
    };
    let creds = match given {
        Ok(c) => c,
        Err(e) => return render(StatusCode::BAD_REQUEST, None, Some(e), String::new()),
    };
    if let Some(host) = &creds.host
        && !console
            .app
            .hostnames
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    {
        return render(
            StatusCode::UNAUTHORIZED,
            None,
            Some(format!(
                "This connection string is for {host}, not for this instance ({}).",
                console.app.instance.service_host
            )),
            creds.policy,
        );
    }
    let result = auth::authenticate_key(&console.app, &creds.policy, &creds.key).await;
    let (actor, outcome) = match &result {
        Ok((p, _)) => (format!("policy:{}", p.policy()), "ok".to_owned()),
        Err(e) => ("unauthenticated".to_owned(), crate::audit::refused(e)),
    };
    audit(
        &console,
        &extensions,
        actor,
        "console.signin",
        &creds.policy,
        outcome,
    )
    .await;
    let principal = match result {
        Ok((principal, _slot)) => principal,
        Err(ApiError::Unauthorized(why)) => {
            tracing::info!(error = %why, "console sign-in refused");
            return render(
                StatusCode::UNAUTHORIZED,
                None,
                Some("The policy name or key is wrong.".into()),
                creds.policy,
            );
        }
        Err(e) => return super::failure(None, &e),
    };
    let Ok(key) = usher_proto::SymmetricKey::from_base64(creds.key.trim()) else {
        return render(
            StatusCode::UNAUTHORIZED,
            None,
            Some("The policy name or key is wrong.".into()),
            creds.policy,
        );
    };
    let Some(id) = console
        .sessions
        .create(principal.policy(), session::key_digest(&key))
    else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness").into_response();
    };
    tracing::info!(policy = principal.policy(), "console sign-in");
    let mut response = see_other("/console/");
    let headers = response.headers_mut();
    for cookie in [
        session::set_cookie(SESSION_COOKIE, &id, console.sessions.ttl()),
        session::clear_cookie(SIGNIN_COOKIE),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    response
}

/// `POST /console/signout`: ends the session on the server and clears the cookie.
pub(super) async fn sign_out(
    State(console): State<Console>,
    extensions: Extensions,
    signed: Signed,
) -> Response {
    console.sessions.remove(&signed.cookie);
    let actor = format!("policy:{}", signed.principal.policy());
    let policy = signed.principal.policy();
    audit(
        &console,
        &extensions,
        actor,
        "console.signout",
        policy,
        "ok".into(),
    )
    .await;
    tracing::info!(policy = signed.principal.policy(), "console sign-out");
    let mut response = see_other("/console/signin?why=out");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(SESSION_COOKIE)) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[cfg(test)]
mod tests;
