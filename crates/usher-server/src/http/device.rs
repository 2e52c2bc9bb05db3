//! The device API over HTTPS (`device-protocol.md` §4): register, operation status, status lookup.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use usher_proto::model::{DeviceRegistration, RegistrationStatus};

use super::{Ctx, json_response};
use crate::app::RegisterResponse;
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
    };
    match rest {
        [r] if is(r, "register") => {
            if ctx.method != Method::PUT {
                return Err(ctx.not_allowed());
            }
            let body = parse_registration(ctx.body)?;
            let status = registration::register(ctx.app, req, &body).await?;
            Ok(match ctx.app.settings.register_response {
                RegisterResponse::Assigning { retry_after_secs }
                    if status.status == RegistrationStatus::Assigning =>
                {
                    let mut response = json_response(StatusCode::ACCEPTED, &status);
                    response
                        .headers_mut()
                        .insert("retry-after", HeaderValue::from(retry_after_secs));
                    response
                }
                _ => json_response(StatusCode::OK, &status),
            })
        }
        [o, operation_id] if is(o, "operations") => {
            if ctx.method != Method::GET {
                return Err(ctx.not_allowed());
            }
            let status = registration::operation_status(ctx.app, req, operation_id).await?;
            Ok(json_response(StatusCode::OK, &status))
        }
        [] => {
            if ctx.method != Method::POST {
                return Err(ctx.not_allowed());
            }
            // The body (a DeviceRegistration) is optional here; if present it must be valid.
            if !ctx.body.is_empty() {
                parse_registration(ctx.body)?;
            }
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

/// Parses a register body. An empty body reads as `{}`.
fn parse_registration(body: &[u8]) -> Result<DeviceRegistration, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeviceRegistration::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}
