//! The overview: the instance's essentials, counts and recent registrations.

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{Console, Form, Layout, Signed, failure, page, when};
use crate::auth::Right;
use crate::management;

/// One registration record as a table row.
pub(crate) struct RegRow {
    pub(crate) id: String,
    pub(crate) device_id: String,
    pub(crate) status: String,
    pub(crate) hub: String,
    pub(crate) group: String,
    pub(crate) updated: String,
}

impl RegRow {
    /// A row from a record as the management API shows it.
    pub(crate) fn of(v: &Value) -> Self {
        let s = |path: &str| {
            v.pointer(path)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            id: s("/registrationId"),
            device_id: s("/deviceId"),
            status: s("/status"),
            hub: s("/assignedHub"),
            group: s("/symmetricKey/enrollmentGroupId"),
            updated: when(v.pointer("/lastUpdatedDateTimeUtc").and_then(Value::as_str)),
        }
    }
}

pub(crate) struct EnrollmentCounts {
    enrollments: u64,
    groups: u64,
}

pub(crate) struct HubCount {
    name: String,
    devices: u64,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    l: Layout,
    id_scope: String,
    host: String,
    https_port: u16,
    mqtt_port: Option<u16>,
    amqp_port: Option<u16>,
    connection_string: Option<String>,
    has_ca: bool,
    enrollment_counts: Option<EnrollmentCounts>,
    registration_count: Option<u64>,
    hub_counts: Vec<HubCount>,
    records: Vec<RegRow>,
}

/// How many recent registrations the overview lists.
const RECENT: u64 = 10;

/// `GET /console/[?show=connection-string]`.
pub(super) async fn page_handler(
    State(console): State<Console>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    let app = &console.app;
    let p = &signed.principal;
    let show = Form::query(query.as_deref()).get("show") == Some("connection-string");
    let result = async {
        // The signed-in policy's own connection string: the user holds its key already.
        let connection_string = if show {
            management::own_connection_string(app, p).await?
        } else {
            None
        };
        let counts = management::counts(app).await?;
        let recent = if p.has(Right::RegistrationStatusRead) {
            management::recent_registrations(app, RECENT).await?
        } else {
            Vec::new()
        };
        Ok::<_, crate::error::ApiError>((connection_string, counts, recent))
    }
    .await;
    let l = signed.layout(&console, "overview");
    let (connection_string, counts, recent) = match result {
        Ok(r) => r,
        Err(e) => return failure(Some(l), &e),
    };
    page(
        StatusCode::OK,
        &OverviewPage {
            id_scope: app.instance.id_scope.clone(),
            host: app.instance.service_host.clone(),
            https_port: console.endpoints.https_port,
            mqtt_port: console.endpoints.mqtt_port,
            amqp_port: console.endpoints.amqp_port,
            connection_string,
            has_ca: console.ca_certificate.as_ref().is_some_and(|p| p.exists()),
            enrollment_counts: p.has(Right::EnrollmentRead).then_some(EnrollmentCounts {
                enrollments: counts.enrollments,
                groups: counts.enrollment_groups,
            }),
            registration_count: p
                .has(Right::RegistrationStatusRead)
                .then_some(counts.registrations),
            hub_counts: if p.has(Right::ServiceConfig) {
                counts
                    .hub_devices
                    .into_iter()
                    .map(|(name, devices)| HubCount { name, devices })
                    .collect()
            } else {
                Vec::new()
            },
            records: recent.iter().map(RegRow::of).collect(),
            l,
        },
    )
}

/// `GET /console/ca.pem`: the development CA certificate devices must trust.
pub(super) async fn ca_certificate(State(console): State<Console>, _signed: Signed) -> Response {
    let Some(path) = &console.ca_certificate else {
        return (
            StatusCode::NOT_FOUND,
            "This instance has no development CA.",
        )
            .into_response();
    };
    match tokio::fs::read(path).await {
        Ok(pem) => {
            let mut response = pem.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            headers.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"usher-ca.pem\""),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot read the CA certificate");
            (StatusCode::NOT_FOUND, "The CA certificate cannot be read.").into_response()
        }
    }
}
