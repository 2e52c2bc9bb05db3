//! The device API over HTTPS (`device-protocol.md` §4): register, operation status, status lookup.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use usher_proto::model::RegistrationOperationStatus;

use super::{Ctx, json_response};
use crate::error::{ApiError, AuthError};
use crate::registration::{self, DeviceRequest};

pub(super) async fn route(
    ctx: &Ctx<'_>,
    scope: &str,
    id: &str,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let authorization = match ctx.headers.get("authorization") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::Unauthorized(AuthError::AuthorizationNotText))?,
        ),
    };
    let req = DeviceRequest {
        id_scope: scope,
        registration_id: id,
        authorization,
        client_chain: ctx.client_chain,
        protocol: crate::app::Protocol::Https,
        peer: ctx.peer.map(|p| p.ip()),
    };
    match rest {
        [r] if is(r, "register") => {
            if ctx.method != Method::PUT {
                return Err(ctx.not_allowed());
            }
            let body = registration::parse_registration_body(ctx.body)?;
            let status = registration::register(ctx.app, req, &body).await?;
            Ok(status_response(ctx, &status))
        }
        [o, operation_id] if is(o, "operations") => {
            if ctx.method != Method::GET {
                return Err(ctx.not_allowed());
            }
            let status = registration::operation_status(ctx.app, req, operation_id).await?;
            Ok(status_response(ctx, &status))
        }
        [] => {
            if ctx.method != Method::POST {
                return Err(ctx.not_allowed());
            }
            // The body (a DeviceRegistration) is optional here; if present it must be valid.
            registration::parse_registration_body(ctx.body)?;
            let result = registration::registration_status(ctx.app, req).await?;
            Ok(json_response(StatusCode::OK, &result))
        }
        _ => Err(ApiError::NoRoute(format!(
            "{} /{scope}/registrations/{id}/{}",
            ctx.method,
            rest.join("/")
        ))),
    }
}

/// A register or operation-status answer with the status code (and `Retry-After`) the core chose.
fn status_response(ctx: &Ctx<'_>, status: &RegistrationOperationStatus) -> Response {
    let (code, retry_after) = registration::response_status(ctx.app, status);
    let mut response = json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::OK), status);
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    response
}
