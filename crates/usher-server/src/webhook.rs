//! Custom allocation: the webhook contract of `service-api.md` §6.
//!
//! A device of a `custom` enrollment is recorded `assigning` and answered 202; this module then
//! POSTs the AllocationRequest to the enrollment's `customAllocationDefinition.webhookUrl`, retries
//! what DPS retries (status 429 and above, timeouts, unreachable: 10 more tries, 1 s apart at
//! first, 9 s longer each time), and hands the answer to the registration decision, which writes
//! the outcome under the same operation ID. The device's polls see `assigning` until then.
//!
//! HTTPS with the system's roots (and a CA the operator configures); plain HTTP only to a loopback
//! address, for local development.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Map, Value, json};
use usher_proto::decision::{self, Webhook};

use crate::app::App;
use crate::registration::{self, Decided, RegisterJob};
use crate::store::Registration;

/// How webhooks are called.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// How long one call may take (a timeout counts as a failure to retry).
    pub timeout: Duration,
    /// Retries after the first call, for statuses of 429 and above, timeouts and transport errors.
    pub retries: u32,
    /// The wait before the first retry; each later wait is `retry_increment` longer.
    pub retry_first: Duration,
    pub retry_increment: Duration,
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retries: 10,
            retry_first: Duration::from_secs(1),
            retry_increment: Duration::from_secs(9),
            ca_pem: None,
        }
    }
}

/// A webhook call a registration waits for.
#[derive(Debug, Clone)]
pub struct Call {
    pub(crate) job: RegisterJob,
    /// The enrollment as the webhook receives it.
    pub enrollment: Value,
    pub group: bool,
    /// Where the device is now, if it was assigned before.
    pub previous: Option<decision::Assignment>,
    pub payload: Option<Value>,
    pub linked_hubs: Vec<String>,
    /// The `assigning` record written for the operation.
    pub record: Registration,
}

/// Why a webhook URL cannot be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the webhook URL {0:?} is not a URL")]
    Invalid(String),
    #[error(
        "the webhook URL {0:?} must use https (plain http is allowed only to a loopback address)"
    )]
    PlainHttp(String),
}

/// Checks a `webhookUrl`: https anywhere, http only to loopback.
pub fn check_url(url: &str) -> Result<reqwest::Url, UrlError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| UrlError::Invalid(url.to_owned()))?;
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(parsed),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if loopback {
                Ok(parsed)
            } else {
                Err(UrlError::PlainHttp(url.to_owned()))
            }
        }
        _ => Err(UrlError::Invalid(url.to_owned())),
    }
}

/// Calls the webhook in the background and completes the registration with its answer.
pub fn spawn(app: App, call: Call) {
    tokio::spawn(async move {
        let answer = ask(&app, &call).await;
        tracing::info!(
            registration_id = %call.record.registration_id,
            answer = ?answer_kind(&answer),
            "custom allocation webhook answered"
        );
        let mut job = call.job;
        job.webhook = Some(answer);
        match registration::run(&app, job).await {
            Ok(Decided::Superseded) => tracing::debug!("the device registered again meanwhile"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot record the custom allocation"),
        }
    });
}

fn answer_kind(w: &Webhook) -> &'static str {
    match w {
        Webhook::Answered { hub: Some(_), .. } => "hub",
        Webhook::Answered { hub: None, .. } => "no hub",
        Webhook::Unauthorized => "401",
        Webhook::Failed(_) => "failed",
    }
}

/// The AllocationRequest body.
pub fn request_body(call: &Call) -> Value {
    let mut context = Map::new();
    context.insert("registrationId".into(), json!(call.record.registration_id));
    context.insert("symmetricKey".into(), json!({}));
    if let Some(prev) = &call.previous {
        context.insert("currentIotHubHostName".into(), json!(prev.hub));
        context.insert("currentDeviceId".into(), json!(prev.device_id));
    }
    if let Some(p) = &call.payload {
        context.insert("payload".into(), p.clone());
    }
    let key = if call.group {
        "enrollmentGroup"
    } else {
        "individualEnrollment"
    };
    json!({
        key: call.enrollment,
        "deviceRuntimeContext": context,
        "linkedHubs": call.linked_hubs,
    })
}

/// Calls the webhook, with DPS's retries, and reads its answer.
async fn ask(app: &App, call: &Call) -> Webhook {
    let settings = &app.settings.webhook;
    let Some(url) = call
        .enrollment
        .pointer("/customAllocationDefinition/webhookUrl")
        .and_then(Value::as_str)
    else {
        return Webhook::Failed(
            "the enrollment has no customAllocationDefinition.webhookUrl".into(),
        );
    };
    let url = match check_url(url) {
        Ok(u) => u,
        Err(e) => return Webhook::Failed(e.to_string()),
    };
    let client = match client(settings) {
        Ok(c) => c,
        Err(e) => return Webhook::Failed(format!("cannot build the HTTP client: {e}")),
    };
    let body = request_body(call);
    let mut wait = settings.retry_first;
    let mut last = String::new();
    for attempt in 0..=settings.retries {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait += settings.retry_increment;
        }
        let sent = client
            .post(url.clone())
            .json(&body)
            .timeout(settings.timeout)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                last = format!("the webhook could not be reached: {e}");
                continue;
            }
        };
        let status = response.status().as_u16();
        match status {
            200..=299 => {
                return match response.json::<Value>().await {
                    Ok(v) => answered(&v),
                    Err(e) => Webhook::Failed(format!("the webhook's answer is not JSON: {e}")),
                };
            }
            401 => return Webhook::Unauthorized,
            s if s >= 429 => last = format!("status code: {s}"),
            s => return Webhook::Failed(format!("status code: {s}")),
        }
    }
    Webhook::Failed(last)
}

/// An AllocationResponse; its keys are matched case-insensitively (the documentation spells
/// `iotHubHostName` two ways).
fn answered(v: &Value) -> Webhook {
    let field = |name: &str| {
        v.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        })
    };
    Webhook::Answered {
        hub: field("iotHubHostName").and_then(|h| h.as_str().map(str::to_owned)),
        initial_twin: field("initialTwin").filter(|t| !t.is_null()),
        payload: field("payload").filter(|p| !p.is_null()),
    }
}

fn client(settings: &WebhookSettings) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &settings.ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_https_anywhere_http_only_to_loopback() {
        assert!(check_url("https://alloc.example.com/api/alloc?code=abc").is_ok());
        assert!(check_url("http://127.0.0.1:8080/alloc").is_ok());
        assert!(check_url("http://localhost/alloc").is_ok());
        assert!(check_url("http://[::1]:9/alloc").is_ok());
        assert_eq!(
            check_url("http://alloc.example.com/"),
            Err(UrlError::PlainHttp("http://alloc.example.com/".into()))
        );
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn answers_are_read_case_insensitively() {
        assert_eq!(
            answered(&json!({"iotHubHostname": "h", "initialTwin": null, "payload": {"a": 1}})),
            Webhook::Answered {
                hub: Some("h".into()),
                initial_twin: None,
                payload: Some(json!({"a": 1}))
            }
        );
    }
}
