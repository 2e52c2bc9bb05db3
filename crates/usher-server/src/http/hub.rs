//! The built-in hubs' registry API (the IoT Hub service REST subset, api-version 2021-04-12):
//! devices and twins, authenticated with hub SAS tokens, errors in the hub's own format.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use usher_proto::sas::{Now, SasToken};

use super::{Ctx, json_response, query_param, unix_now};
use crate::hub::{self, HubError};
use crate::management::Precondition;
use crate::store::Hub;

/// Most devices one list returns.
const MAX_LIST: usize = 1000;
/// Devices read per store round trip while a filtered registry query looks for matches.
const QUERY_SCAN: u64 = 500;

/// Whether a path belongs to the registry API.
pub(super) fn is_hub_route(seg: &[&str]) -> bool {
    seg.first().is_some_and(|s| {
        ["devices", "twins", "statistics"]
            .iter()
            .any(|r| s.eq_ignore_ascii_case(r))
    })
}

pub(super) async fn route(ctx: &Ctx<'_>, seg: &[&str]) -> Response {
    let result = handle(ctx, seg).await;
    if let Some(action) = write_action(ctx.method, seg) {
        // A write that succeeded was made with a verified token, so its key name is the policy.
        let actor = match &result {
            Ok(_) => ctx
                .header("authorization")
                .and_then(|t| SasToken::parse(t).ok())
                .and_then(|t| t.key_name().map(|k| format!("hub-policy:{k}")))
                .unwrap_or_else(|| "hub-policy".into()),
            Err(_) => "unauthenticated".into(),
        };
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("refused {}", e.status_and_code().2),
        };
        let target = seg.get(1).copied().unwrap_or_default();
        let record = crate::audit::record(actor, ctx.peer.map(|p| p.ip()), action, target, outcome);
        crate::audit::append(ctx.app, vec![record]).await;
    }
    match result {
        Ok(response) => response,
        Err(e) => error_response(&e),
    }
}

/// The audit action of a registry write.
fn write_action(method: &Method, seg: &[&str]) -> Option<&'static str> {
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    match (method.as_str(), seg) {
        ("PUT", [d, _]) if is(d, "devices") => Some("hub.device.put"),
        ("DELETE", [d, _]) if is(d, "devices") => Some("hub.device.delete"),
        ("PUT" | "PATCH", [t, _]) if is(t, "twins") => Some("hub.twin.update"),
        _ => None,
    }
}

async fn handle(ctx: &Ctx<'_>, seg: &[&str]) -> Result<Response, HubError> {
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let method = ctx.method.clone();
    let pre = Precondition::from_header(ctx.header("if-match"));
    let app = ctx.app;
    match seg {
        [d] if is(d, "devices") && method == Method::GET => {
            let hub = authorize(ctx, "RegistryRead").await?;
            let top = query_param(ctx.query, "top")
                .and_then(|t| t.parse::<i64>().ok())
                .filter(|t| (1..=MAX_LIST as i64).contains(t));
            let top = top.map_or(MAX_LIST as u64, |t| t as u64);
            let devices = app.store.hub_devices(&hub.name, 0, top).await?;
            let list: Vec<Value> = devices.iter().map(|(_, d)| hub::device_json(d)).collect();
            Ok(json_response(StatusCode::OK, &list))
        }
        [d, q] if is(d, "devices") && is(q, "query") && method == Method::POST => {
            // The registry query: `SELECT * FROM devices [WHERE …]` over the twins, paged like DPS.
            let hub = authorize(ctx, "ServiceConnect").await?;
            let text = if ctx.body.iter().all(u8::is_ascii_whitespace) {
                "*".to_owned()
            } else {
                let v: Value = serde_json::from_slice(ctx.body)
                    .map_err(|e| HubError::Argument(format!("invalid JSON: {e}")))?;
                v.get("query")
                    .and_then(Value::as_str)
                    .unwrap_or("*")
                    .to_owned()
            };
            let query = usher_proto::query::Query::parse(&text)
                .map_err(|e| HubError::Argument(format!("invalid query: {e}")))?;
            let page = ctx
                .header("x-ms-max-item-count")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(100)
                .clamp(1, MAX_LIST);
            // A keyset cursor: the storage position of the last device looked at, matching or not.
            let mut cursor = match ctx.header("x-ms-continuation").filter(|v| !v.is_empty()) {
                None => 0,
                Some(v) => v.trim().parse::<u64>().map_err(|_| {
                    HubError::Argument(format!(
                        "x-ms-continuation {v:?} is not a token this hub issued"
                    ))
                })?,
            };
            let page = page as u64;
            let mut items = Vec::new();
            let mut next = None;
            'scan: loop {
                let want = if query.is_unfiltered() {
                    page + 1
                } else {
                    QUERY_SCAN
                };
                let devices = app.store.hub_devices(&hub.name, cursor, want).await?;
                let exhausted = (devices.len() as u64) < want;
                for (seq, device) in devices {
                    if items.len() as u64 == page {
                        next = Some(cursor);
                        break 'scan;
                    }
                    cursor = seq;
                    let twin = hub::twin_json(&device);
                    if query.matches(&twin) {
                        items.push(twin);
                    }
                }
                if exhausted {
                    break;
                }
            }
            let mut response = json_response(StatusCode::OK, &items);
            let headers = response.headers_mut();
            headers.insert("x-ms-item-type", HeaderValue::from_static("Twin"));
            if let Some(next) = next {
                headers.insert("x-ms-continuation", HeaderValue::from(next));
            }
            Ok(response)
        }
        [d, id] if is(d, "devices") => {
            hub::validate_device_id(id)?;
            match method {
                Method::GET => {
                    let hub = authorize(ctx, "RegistryRead").await?;
                    let device = app
                        .store
                        .hub_device(&hub.name, id)
                        .await?
                        .ok_or_else(|| HubError::DeviceNotFound((*id).to_owned()))?;
                    Ok(json_response(StatusCode::OK, &hub::device_json(&device)))
                }
                Method::PUT => {
                    let hub = authorize(ctx, "RegistryWrite").await?;
                    let body: Value = serde_json::from_slice(ctx.body)
                        .map_err(|e| HubError::Argument(format!("invalid JSON: {e}")))?;
                    let (name, id_owned) = (hub.name.clone(), (*id).to_owned());
                    let device = app
                        .store
                        .upsert_hub_device(&hub.name, id, move |current| {
                            hub::put_device(&name, &id_owned, &body, &pre, current)
                        })
                        .await?;
                    Ok(json_response(StatusCode::OK, &hub::device_json(&device)))
                }
                Method::DELETE => {
                    let hub = authorize(ctx, "RegistryWrite").await?;
                    let deleted = app
                        .store
                        .delete_hub_device(&hub.name, id, move |d| match &pre {
                            Precondition::Etag(e) if *e != d.etag => {
                                Err(HubError::PreconditionFailed)
                            }
                            _ => Ok(()),
                        })
                        .await?;
                    match deleted {
                        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
                        None => Err(HubError::DeviceNotFound((*id).to_owned())),
                    }
                }
                other => Err(HubError::NotSupported(format!("{other} /devices/{{id}}"))),
            }
        }
        [t, id] if is(t, "twins") => {
            hub::validate_device_id(id)?;
            match method {
                Method::GET => {
                    let hub = authorize(ctx, "ServiceConnect").await?;
                    let device = app
                        .store
                        .hub_device(&hub.name, id)
                        .await?
                        .ok_or_else(|| HubError::DeviceNotFound((*id).to_owned()))?;
                    Ok(json_response(StatusCode::OK, &hub::twin_json(&device)))
                }
                Method::PATCH | Method::PUT => {
                    let hub = authorize(ctx, "ServiceConnect").await?;
                    let body: Value = serde_json::from_slice(ctx.body)
                        .map_err(|e| HubError::Argument(format!("invalid JSON: {e}")))?;
                    let replace = method == Method::PUT;
                    let missing = (*id).to_owned();
                    let device = app
                        .store
                        .upsert_hub_device(&hub.name, id, move |current| match current {
                            Some(d) => hub::change_twin(d, &body, &pre, replace),
                            None => Err(HubError::DeviceNotFound(missing)),
                        })
                        .await?;
                    Ok(json_response(StatusCode::OK, &hub::twin_json(&device)))
                }
                other => Err(HubError::NotSupported(format!("{other} /twins/{{id}}"))),
            }
        }
        [s, d] if is(s, "statistics") && is(d, "devices") && method == Method::GET => {
            let hub = authorize(ctx, "RegistryRead").await?;
            let (total, enabled) = app.store.hub_device_counts(&hub.name).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"totalDeviceCount": total, "enabledDeviceCount": enabled, "disabledDeviceCount": total - enabled}),
            ))
        }
        _ => Err(HubError::NotSupported(format!(
            "{method} /{}",
            seg.join("/")
        ))),
    }
}

/// Checks a hub SAS token: its resource names a built-in hub, its key name is one of that hub's
/// policies, it is signed with one of the policy's keys, unexpired, and the policy holds `right`.
/// Returns the hub.
async fn authorize(ctx: &Ctx<'_>, right: &'static str) -> Result<Hub, HubError> {
    let unauthorized = |why: String| HubError::Unauthorized(why);
    let text = ctx
        .header("authorization")
        .ok_or_else(|| unauthorized("no Authorization header".into()))?;
    let token = SasToken::parse(text).map_err(|e| unauthorized(e.to_string()))?;
    let now = Now {
        unix_secs: unix_now(),
        skew_secs: ctx.app.settings.clock_skew_secs,
    };
    let hubs = ctx.app.store.hubs().await?;
    let mut last = None;
    for hub in hubs.into_iter().filter(|h| h.builtin) {
        let policy_name = match token.check_service_claims(&hub.hostname, now) {
            Ok(p) => p.to_owned(),
            Err(e) => {
                last = Some(e.to_string());
                continue;
            }
        };
        let policy = ctx
            .app
            .store
            .hub_policy(&hub.name, &policy_name)
            .await?
            .ok_or_else(|| {
                unauthorized(format!("hub {} has no policy {policy_name:?}", hub.name))
            })?;
        policy
            .check_signature(&token)
            .map_err(|e| unauthorized(e.to_string()))?;
        if !policy.grants(right) {
            return Err(unauthorized(format!(
                "the policy {policy_name:?} lacks the {right} right"
            )));
        }
        return Ok(hub);
    }
    Err(unauthorized(last.unwrap_or_else(|| {
        "the token names no built-in hub".into()
    })))
}

/// An unknown or missing `api-version`, answered as IoT Hub does (`InvalidProtocolVersion`).
pub(super) fn version_refused(e: &usher_proto::api_version::ApiVersionError) -> Response {
    error_response(&HubError::ProtocolVersion(e.to_string()))
}

/// The hub's legacy error body, which the Node client parses (`Message` = `ErrorCode:<name>;<text>`),
/// and the `iothub-errorcode` header.
fn error_response(e: &HubError) -> Response {
    let (status, name, code) = e.status_and_code();
    let tracking = uuid::Uuid::new_v4().simple().to_string();
    let at = super::now();
    let stamp = format!(
        "{:02}/{:02}/{:04} {:02}:{:02}:{:02}",
        u8::from(at.month()),
        at.day(),
        at.year(),
        at.hour(),
        at.minute(),
        at.second()
    );
    match e {
        HubError::Internal(_) => tracing::error!(error = %e, "registry request failed"),
        HubError::Unauthorized(_) => tracing::info!(error = %e, "registry request refused"),
        _ => tracing::debug!(error = %e, "registry request refused"),
    }
    let message = match e {
        // Credential problems say no more than their code.
        HubError::Unauthorized(_) => "Unauthorized".to_owned(),
        other => other.to_string(),
    };
    let body = json!({
        "Message": format!("ErrorCode:{name};{message}"),
        "ExceptionMessage": format!("Tracking ID:{tracking}-G:0-TimeStamp:{stamp}"),
        "errorCode": code,
    });
    let mut response = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    );
    let headers = response.headers_mut();
    headers.insert("iothub-errorcode", HeaderValue::from_static(name));
    if let Ok(v) = HeaderValue::from_str(&tracking) {
        headers.insert("x-ms-request-id", v);
    }
    response
}
