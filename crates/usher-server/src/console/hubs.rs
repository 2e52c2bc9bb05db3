//! Linked IoT hubs (add, weights, allocation) and the built-in hubs' device identities.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Console, Form, Layout, Signed, failure, page, pretty, see_other, when};
use crate::auth::Right;
use crate::error::ApiError;
use crate::management;

struct HubRow {
    name: String,
    hostname: String,
    location: String,
    weight: u64,
    apply: bool,
    builtin: bool,
}

impl HubRow {
    fn of(v: &Value) -> Self {
        Self {
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            hostname: v["hostname"].as_str().unwrap_or_default().to_owned(),
            location: v["location"].as_str().unwrap_or_default().to_owned(),
            weight: v["weight"].as_u64().unwrap_or(1),
            apply: v["applyAllocationPolicy"].as_bool().unwrap_or(true),
            builtin: v["builtin"].as_bool().unwrap_or(false),
        }
    }
}

#[derive(Template)]
#[template(path = "console/hubs.html")]
struct HubsPage {
    l: Layout,
    hubs: Vec<HubRow>,
    error: Option<String>,
    /// The add form's values after a refusal.
    add_name: String,
    add_hostname: String,
}

async fn hubs_page(
    console: &Console,
    l: Layout,
    status: StatusCode,
    error: Option<String>,
    add: (String, String),
) -> Response {
    match management::hubs(&console.app).await {
        Ok(hubs) => page(
            status,
            &HubsPage {
                l,
                hubs: hubs.iter().map(HubRow::of).collect(),
                error,
                add_name: add.0,
                add_hostname: add.1,
            },
        ),
        Err(e) => failure(Some(l), &e),
    }
}

/// `GET /console/hubs`.
pub(super) async fn list(State(console): State<Console>, signed: Signed) -> Response {
    if let Some(r) = signed.refuse(&console, Right::ServiceConfig) {
        return r;
    }
    let l = signed.layout(&console, "hubs");
    hubs_page(&console, l, StatusCode::OK, None, Default::default()).await
}

fn weight(form: &Form) -> Result<Option<u32>, String> {
    let text = form.text("weight");
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("The weight {text:?} is not a whole number from 1 to 1000."))
}

/// `POST /console/hubs`: links a new built-in hub (`PUT /usher/hubs/{name}`).
pub(super) async fn add(State(console): State<Console>, signed: Signed, body: Bytes) -> Response {
    const ACTION: &str = "hub.add";
    let form = Form::parse(&body);
    let (name, hostname) = (form.text("name"), form.text("hostname"));
    if let Some(r) = signed
        .refuse_write(&console, Right::ServiceConfig, ACTION, &name)
        .await
    {
        return r;
    }
    let l = signed.layout(&console, "hubs");
    let weight = match weight(&form) {
        Ok(w) => w,
        Err(e) => {
            let refused = Err::<(), _>(ApiError::InvalidArgument(e.clone()));
            signed.audit(&console, ACTION, &name, &refused).await;
            return hubs_page(
                &console,
                l,
                StatusCode::BAD_REQUEST,
                Some(e),
                (name, hostname),
            )
            .await;
        }
    };
    let mut body = json!({
        "hostname": hostname,
        "weight": weight,
        "applyAllocationPolicy": form.checked("apply"),
    });
    let location = form.text("location");
    if !location.is_empty() {
        body["location"] = json!(location);
    }
    let body = body.to_string();
    let result = management::add_hub(&console.app, &name, body.as_bytes()).await;
    signed.audit(&console, ACTION, &name, &result).await;
    match result {
        Ok(_) => {
            signed.flash(&console, format!("Linked the hub {name} ({hostname})."));
            see_other("/console/hubs")
        }
        Err(e) => {
            hubs_page(
                &console,
                l,
                super::status_of(&e),
                Some(e.public_message()),
                (name, hostname),
            )
            .await
        }
    }
}

/// `POST /console/hubs/{name}`: changes a hub's weight and allocation (`PATCH /usher/hubs/{name}`).
pub(super) async fn update(
    State(console): State<Console>,
    signed: Signed,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    const ACTION: &str = "hub.update";
    if let Some(r) = signed
        .refuse_write(&console, Right::ServiceConfig, ACTION, &name)
        .await
    {
        return r;
    }
    let form = Form::parse(&body);
    let l = signed.layout(&console, "hubs");
    let weight = match weight(&form) {
        Ok(w) => w,
        Err(e) => {
            let refused = Err::<(), _>(ApiError::InvalidArgument(e.clone()));
            signed.audit(&console, ACTION, &name, &refused).await;
            return hubs_page(
                &console,
                l,
                StatusCode::BAD_REQUEST,
                Some(e),
                Default::default(),
            )
            .await;
        }
    };
    let body = json!({
        "weight": weight,
        "applyAllocationPolicy": form.checked("apply"),
        "location": form.text("location"),
    })
    .to_string();
    let result = management::update_hub(&console.app, &name, body.as_bytes()).await;
    signed.audit(&console, ACTION, &name, &result).await;
    match result {
        Ok(_) => {
            signed.flash(&console, format!("Saved the hub {name}."));
            see_other("/console/hubs")
        }
        Err(e) => {
            hubs_page(
                &console,
                l,
                super::status_of(&e),
                Some(e.public_message()),
                Default::default(),
            )
            .await
        }
    }
}

struct DeviceRow {
    id: String,
    status: String,
    created: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "console/devices.html")]
struct DevicesPage {
    l: Layout,
    hub: String,
    devices: Vec<DeviceRow>,
    refreshed: String,
    /// The first page's address, when this is not the first page.
    first: Option<String>,
    /// The next page's address, when there is one.
    next: Option<String>,
}

/// Device identities shown on one page of a hub's device list.
const DEVICES_PAGE: u64 = 100;

/// `GET /console/hubs/{name}/devices?after=CURSOR`: the hub's "IoT devices", a page at a time;
/// Refresh reloads the page.
pub(super) async fn devices(
    State(console): State<Console>,
    signed: Signed,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::ServiceConfig) {
        return r;
    }
    let l = signed.layout(&console, "hubs");
    let after = Form::query(query.as_deref())
        .get("after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0u64);
    let (list, next) = match management::hub_devices(&console.app, &name, after, DEVICES_PAGE).await
    {
        Ok(d) => d,
        Err(e) => return failure(Some(l), &e),
    };
    let here = |after: Option<u64>| {
        let mut url = format!(
            "/console/hubs/{}/devices",
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
        );
        if let Some(a) = after {
            url.push_str(&format!("?after={a}"));
        }
        url
    };
    let (first, next) = ((after > 0).then(|| here(None)), next.map(|n| here(Some(n))));
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    page(
        StatusCode::OK,
        &DevicesPage {
            l,
            devices: list
                .iter()
                .map(|d| DeviceRow {
                    id: s(d, "deviceId"),
                    status: s(d, "status"),
                    created: when(d["createdDateTimeUtc"].as_str()),
                    updated: when(d["lastUpdatedDateTimeUtc"].as_str()),
                })
                .collect(),
            hub: name,
            refreshed: when(Some(&crate::clock::now_text())),
            first,
            next,
        },
    )
}

#[derive(Template)]
#[template(path = "console/device.html")]
struct DevicePage {
    l: Layout,
    hub: String,
    id: String,
    status: String,
    auth_type: String,
    iot_edge: bool,
    generation_id: String,
    etag: String,
    keys: Option<(String, String)>,
    tags: String,
    desired: String,
    reported: String,
    twin_version: String,
}

/// `GET /console/hubs/{name}/devices/{id}[?show=keys]`: the device's details and twin.
pub(super) async fn device(
    State(console): State<Console>,
    signed: Signed,
    Path((hub, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::ServiceConfig) {
        return r;
    }
    let l = signed.layout(&console, "hubs");
    let (device, twin) = match management::hub_device(&console.app, &hub, &id).await {
        Ok(d) => d,
        Err(e) => return failure(Some(l), &e),
    };
    let show = Form::query(query.as_deref()).get("show") == Some("keys");
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let keys = (show && s(&device, "/authentication/type") == "sas").then(|| {
        (
            s(&device, "/authentication/symmetricKey/primaryKey"),
            s(&device, "/authentication/symmetricKey/secondaryKey"),
        )
    });
    // The twin's sections without their bookkeeping.
    let section = |p: &str| {
        let mut v = twin.pointer(p).cloned().unwrap_or_else(|| json!({}));
        if let Some(o) = v.as_object_mut() {
            o.remove("$metadata");
            o.remove("$version");
        }
        pretty(&v)
    };
    page(
        StatusCode::OK,
        &DevicePage {
            l,
            status: s(&device, "/status"),
            auth_type: s(&device, "/authentication/type"),
            iot_edge: device
                .pointer("/capabilities/iotEdge")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            generation_id: s(&device, "/generationId"),
            etag: s(&device, "/etag"),
            keys,
            tags: section("/tags"),
            desired: section("/properties/desired"),
            reported: section("/properties/reported"),
            twin_version: twin["version"].to_string(),
            hub,
            id,
        },
    )
}
