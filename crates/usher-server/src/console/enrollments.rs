//! "Manage enrollments": individual enrollments and enrollment groups (list, add, open, edit
//! under the etag, enable or disable, delete), and deriving a device key from a group key.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use usher_proto::SymmetricKey;

use super::overview::RegRow;
use super::{Console, Form, Layout, PAGE, Signed, enc, failure, page, pretty, see_other, when};
use crate::auth::Right;
use crate::error::ApiError;
use crate::management::{self, Kind, Precondition};

/// The URL word for a kind.
fn slug(kind: Kind) -> &'static str {
    match kind {
        Kind::Enrollment => "individual",
        Kind::Group => "group",
    }
}

fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Enrollment => "individual enrollment",
        Kind::Group => "enrollment group",
    }
}

fn kind_of(slug: &str) -> Option<Kind> {
    match slug {
        "individual" => Some(Kind::Enrollment),
        "group" => Some(Kind::Group),
        _ => None,
    }
}

fn id_field(kind: Kind) -> &'static str {
    match kind {
        Kind::Enrollment => "registrationId",
        Kind::Group => "enrollmentGroupId",
    }
}

/// The audit log's name for a write to a kind (the management API's names).
fn action(kind: Kind, verb: &str) -> String {
    match kind {
        Kind::Enrollment => format!("enrollment.{verb}"),
        Kind::Group => format!("enrollmentGroup.{verb}"),
    }
}

fn unknown_kind(console: &Console, signed: &Signed) -> Response {
    failure(
        Some(signed.layout(console, "enrollments")),
        &ApiError::NoRoute("enrollment kind".into()),
    )
}

/// How the portal names each allocation policy.
const ALLOCATIONS: [(&str, &str); 3] = [
    ("hashed", "Evenly weighted distribution"),
    ("geoLatency", "Lowest latency"),
    ("static", "Static configuration"),
];

fn allocation_label(policy: &str) -> String {
    ALLOCATIONS
        .iter()
        .find(|(p, _)| p.eq_ignore_ascii_case(policy))
        .map_or_else(|| policy.to_owned(), |(_, l)| (*l).to_owned())
}

/// An enrollment or group as its page shows it.
pub(crate) struct EnrollmentView {
    kind: &'static str,
    kind_label: &'static str,
    id: String,
    device_id: String,
    attestation: String,
    symmetric: bool,
    enabled: bool,
    allocation: String,
    allocation_label: String,
    hubs: Vec<String>,
    update_hub_assignment: bool,
    migrate_device_data: bool,
    tags: String,
    desired: String,
    iot_edge: bool,
    etag: String,
    created: String,
    updated: String,
    /// An individual enrollment's registration state.
    state: Option<RegRow>,
}

impl EnrollmentView {
    fn of(kind: Kind, v: &Value) -> Self {
        let s = |path: &str| {
            v.pointer(path)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let flag =
            |path: &str, default: bool| v.pointer(path).and_then(Value::as_bool).unwrap_or(default);
        let hubs = match v.get("iotHubs").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => v
                .get("iotHubHostName")
                .and_then(Value::as_str)
                .filter(|h| !h.is_empty())
                .map(|h| vec![h.to_owned()])
                .unwrap_or_default(),
        };
        let allocation = v
            .get("allocationPolicy")
            .and_then(Value::as_str)
            .unwrap_or("hashed")
            .to_owned();
        let json_or_empty = |path: &str| {
            v.pointer(path)
                .filter(|j| j.as_object().is_some_and(|o| !o.is_empty()))
                .map_or_else(|| "{}".to_owned(), pretty)
        };
        let attestation = s("/attestation/type");
        Self {
            kind: slug(kind),
            kind_label: label(kind),
            id: s(&format!("/{}", id_field(kind))),
            device_id: s("/deviceId"),
            symmetric: attestation == "symmetricKey",
            attestation: match attestation.as_str() {
                "symmetricKey" => "Symmetric key".into(),
                "tpm" => "TPM".into(),
                "x509" => "X.509 certificates".into(),
                other => other.to_owned(),
            },
            enabled: s("/provisioningStatus") != "disabled",
            allocation_label: allocation_label(&allocation),
            allocation,
            hubs,
            update_hub_assignment: flag("/reprovisionPolicy/updateHubAssignment", true),
            migrate_device_data: flag("/reprovisionPolicy/migrateDeviceData", true),
            tags: json_or_empty("/initialTwin/tags"),
            desired: json_or_empty("/initialTwin/properties/desired"),
            iot_edge: flag("/capabilities/iotEdge", false),
            etag: s("/etag"),
            created: when(v.get("createdDateTimeUtc").and_then(Value::as_str)),
            updated: when(v.get("lastUpdatedDateTimeUtc").and_then(Value::as_str)),
            state: v.get("registrationState").map(RegRow::of),
        }
    }
}

// ---- list ---------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/enrollments.html")]
struct ListPage {
    l: Layout,
    kind: &'static str,
    q: String,
    rows: Vec<EnrollmentView>,
    next: Option<String>,
    first: Option<String>,
    error: Option<String>,
}

/// `GET /console/enrollments?kind=individual|group&q=QUERY&after=CURSOR`.
pub(super) async fn list(
    State(console): State<Console>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::EnrollmentRead) {
        return r;
    }
    let form = Form::query(query.as_deref());
    let kind = form.get("kind").and_then(kind_of).unwrap_or(Kind::Group);
    let q = form.text("q");
    let after = form
        .get("after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0u64);
    let l = signed.layout(&console, "enrollments");
    let body = json!({ "query": q }).to_string();
    let result = match management::parse_query(body.as_bytes()) {
        Ok(parsed) => management::query(&console.app, kind, &parsed, after, PAGE).await,
        Err(e) => Err(e),
    };
    let here = |after: Option<u64>| {
        let mut url = format!("/console/enrollments?kind={}", slug(kind));
        if !q.is_empty() {
            url.push_str(&format!("&q={}", enc(&q)));
        }
        if let Some(a) = after {
            url.push_str(&format!("&after={a}"));
        }
        url
    };
    let (status, rows, next, error) = match result {
        Ok((items, next)) => (
            StatusCode::OK,
            items.iter().map(|v| EnrollmentView::of(kind, v)).collect(),
            next.map(|n| here(Some(n))),
            None,
        ),
        Err(e) if !matches!(e, ApiError::Store(_)) => (
            super::status_of(&e),
            Vec::new(),
            None,
            Some(e.public_message()),
        ),
        Err(e) => return failure(Some(l), &e),
    };
    page(
        status,
        &ListPage {
            l,
            kind: slug(kind),
            first: (after > 0).then(|| here(None)),
            q,
            rows,
            next,
            error,
        },
    )
}

// ---- add and edit -------------------------------------------------------------------------------

/// What the add and edit forms hold.
struct FormValues {
    id: String,
    device_id: String,
    auto_keys: bool,
    primary_key: String,
    secondary_key: String,
    enabled: bool,
    allocation: String,
    hubs: Vec<String>,
    update_hub_assignment: bool,
    migrate_device_data: bool,
    tags: String,
    desired: String,
    iot_edge: bool,
    /// On edit: the etag of the version the form was opened on.
    etag: String,
}

impl Default for FormValues {
    fn default() -> Self {
        Self {
            id: String::new(),
            device_id: String::new(),
            auto_keys: true,
            primary_key: String::new(),
            secondary_key: String::new(),
            enabled: true,
            allocation: "hashed".into(),
            hubs: Vec::new(),
            update_hub_assignment: true,
            migrate_device_data: true,
            tags: "{}".into(),
            desired: "{}".into(),
            iot_edge: false,
            etag: String::new(),
        }
    }
}

impl FormValues {
    fn of_view(v: &EnrollmentView) -> Self {
        Self {
            id: v.id.clone(),
            device_id: v.device_id.clone(),
            auto_keys: false,
            primary_key: String::new(),
            secondary_key: String::new(),
            enabled: v.enabled,
            allocation: v.allocation.clone(),
            hubs: v.hubs.clone(),
            update_hub_assignment: v.update_hub_assignment,
            migrate_device_data: v.migrate_device_data,
            tags: v.tags.clone(),
            desired: v.desired.clone(),
            iot_edge: v.iot_edge,
            etag: v.etag.clone(),
        }
    }

    fn of_form(f: &Form) -> Self {
        Self {
            id: f.text("id"),
            device_id: f.text("device_id"),
            auto_keys: f.checked("auto_keys"),
            primary_key: f.text("primary_key"),
            secondary_key: f.text("secondary_key"),
            enabled: f.get("provisioning_status") != Some("disabled"),
            allocation: f.text("allocation"),
            hubs: f.all("hubs"),
            update_hub_assignment: f.checked("update_hub_assignment"),
            migrate_device_data: f.checked("migrate_device_data"),
            tags: f.get("tags").unwrap_or("{}").to_owned(),
            desired: f.get("desired").unwrap_or("{}").to_owned(),
            iot_edge: f.checked("iot_edge"),
            etag: f.text("etag"),
        }
    }

    /// The management-API document the form describes. On edit, `base` is the stored document:
    /// fields the form does not show (and a TPM or X.509 attestation) are kept.
    fn document(&self, kind: Kind, base: Option<Value>, editing: bool) -> Result<Value, String> {
        let object = |text: &str, what: &str| -> Result<Value, String> {
            let text = if text.trim().is_empty() { "{}" } else { text };
            match serde_json::from_str::<Value>(text) {
                Ok(v @ Value::Object(_)) => Ok(v),
                Ok(_) => Err(format!(
                    "{what} must be a JSON object, like {{\"site\": \"berlin\"}}"
                )),
                Err(e) => Err(format!("{what} is not valid JSON: {e}")),
            }
        };
        let tags = object(&self.tags, "Initial twin tags")?;
        let desired = object(&self.desired, "Initial desired properties")?;
        let mut doc = base.unwrap_or_else(|| json!({}));
        if let Some(o) = doc.as_object_mut() {
            o.remove("registrationState");
            o.remove("iotHubHostName");
        }
        doc[id_field(kind)] = json!(self.id);
        if kind == Kind::Enrollment {
            if self.device_id.is_empty() {
                if let Some(o) = doc.as_object_mut() {
                    o.remove("deviceId");
                }
            } else {
                doc["deviceId"] = json!(self.device_id);
            }
        }
        let keeps_other_attestation = doc
            .pointer("/attestation/type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "symmetricKey");
        if !keeps_other_attestation {
            let mut sk = json!({});
            let (p, s) = (&self.primary_key, &self.secondary_key);
            if !self.auto_keys || editing {
                if !editing && (p.is_empty() || s.is_empty()) {
                    return Err(
                        "Give both keys, or tick \"Auto-generate keys\" to have them generated."
                            .into(),
                    );
                }
                if !p.is_empty() {
                    sk["primaryKey"] = json!(p);
                }
                if !s.is_empty() {
                    sk["secondaryKey"] = json!(s);
                }
            }
            doc["attestation"] = json!({"type": "symmetricKey", "symmetricKey": sk});
        }
        doc["provisioningStatus"] = json!(if self.enabled { "enabled" } else { "disabled" });
        let allocation = if self.allocation.is_empty() {
            "hashed"
        } else {
            &self.allocation
        };
        doc["allocationPolicy"] = json!(allocation);
        doc["iotHubs"] = json!(self.hubs);
        doc["reprovisionPolicy"] = json!({
            "updateHubAssignment": self.update_hub_assignment,
            "migrateDeviceData": self.migrate_device_data,
        });
        let empty = |v: &Value| v.as_object().is_none_or(serde_json::Map::is_empty);
        if doc.get("initialTwin").is_some() || !empty(&tags) || !empty(&desired) {
            doc["initialTwin"] = json!({"tags": tags, "properties": {"desired": desired}});
        }
        doc["capabilities"] = json!({"iotEdge": self.iot_edge});
        Ok(doc)
    }
}

/// A linked hub offered in the form.
struct HubChoice {
    name: String,
    hostname: String,
    checked: bool,
}

#[derive(Template)]
#[template(path = "console/enrollment_form.html")]
struct FormPage {
    l: Layout,
    kind: &'static str,
    kind_label: &'static str,
    editing: bool,
    v: FormValues,
    hub_choices: Vec<HubChoice>,
    allocations: [(&'static str, &'static str); 3],
    error: Option<String>,
    /// On a refused stale edit: the version stored now.
    current: Option<EnrollmentView>,
}

/// How a form page is answered: its status, the message, and (after a refused stale edit) the
/// version stored now.
struct Outcome {
    status: StatusCode,
    error: Option<String>,
    current: Option<EnrollmentView>,
}

impl Outcome {
    fn fresh() -> Self {
        Self {
            status: StatusCode::OK,
            error: None,
            current: None,
        }
    }

    fn refused(status: StatusCode, error: String) -> Self {
        Self {
            status,
            error: Some(error),
            current: None,
        }
    }
}

async fn form_page(
    console: &Console,
    l: Layout,
    kind: Kind,
    editing: bool,
    v: FormValues,
    outcome: Outcome,
) -> Response {
    let Outcome {
        status,
        error,
        current,
    } = outcome;
    let hubs = match management::hubs(&console.app).await {
        Ok(h) => h,
        Err(e) => return failure(Some(l), &e),
    };
    let hub_choices = hubs
        .iter()
        .map(|h| {
            let hostname = h["hostname"].as_str().unwrap_or_default().to_owned();
            HubChoice {
                name: h["name"].as_str().unwrap_or_default().to_owned(),
                checked: v.hubs.iter().any(|c| c.eq_ignore_ascii_case(&hostname)),
                hostname,
            }
        })
        .collect();
    page(
        status,
        &FormPage {
            l,
            kind: slug(kind),
            kind_label: label(kind),
            editing,
            v,
            hub_choices,
            allocations: ALLOCATIONS,
            error,
            current,
        },
    )
}

/// `GET /console/enrollments/new?kind=individual|group`.
pub(super) async fn new_form(
    State(console): State<Console>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::EnrollmentWrite) {
        return r;
    }
    let kind = Form::query(query.as_deref())
        .get("kind")
        .and_then(kind_of)
        .unwrap_or(Kind::Group);
    let l = signed.layout(&console, "enrollments");
    form_page(
        &console,
        l,
        kind,
        false,
        FormValues::default(),
        Outcome::fresh(),
    )
    .await
}

/// `POST /console/enrollments`: creates an enrollment or group (`management::put` without
/// `If-Match`, as `PUT /enrollments/{id}` does).
pub(super) async fn create(
    State(console): State<Console>,
    signed: Signed,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let Some(kind) = form.get("kind").and_then(kind_of) else {
        return unknown_kind(&console, &signed);
    };
    let v = FormValues::of_form(&form);
    let put = action(kind, "put");
    if let Some(r) = signed
        .refuse_write(&console, Right::EnrollmentWrite, &put, &v.id)
        .await
    {
        return r;
    }
    let l = signed.layout(&console, "enrollments");
    let doc = match v.document(kind, None, false) {
        Ok(d) => d,
        Err(e) => {
            let refused = Err::<(), _>(ApiError::InvalidArgument(e.clone()));
            signed.audit(&console, &put, &v.id, &refused).await;
            let outcome = Outcome::refused(StatusCode::BAD_REQUEST, e);
            return form_page(&console, l, kind, false, v, outcome).await;
        }
    };
    let body = doc.to_string();
    let result = management::put(
        &console.app,
        kind,
        &v.id,
        body.as_bytes(),
        Precondition::None,
    )
    .await;
    signed.audit(&console, &put, &v.id, &result).await;
    match result {
        Ok(_) => {
            signed.flash(&console, format!("Created the {} {}.", label(kind), v.id));
            see_other(&format!(
                "/console/enrollments/{}/{}",
                slug(kind),
                enc(&v.id)
            ))
        }
        Err(ApiError::Store(e)) => failure(Some(l), &ApiError::Store(e)),
        Err(e) => {
            let outcome = Outcome::refused(super::status_of(&e), e.public_message());
            form_page(&console, l, kind, false, v, outcome).await
        }
    }
}

/// `GET /console/enrollments/{kind}/{id}/edit`.
pub(super) async fn edit_form(
    State(console): State<Console>,
    signed: Signed,
    Path((kind, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::EnrollmentWrite) {
        return r;
    }
    let Some(kind) = kind_of(&kind) else {
        return unknown_kind(&console, &signed);
    };
    let l = signed.layout(&console, "enrollments");
    match management::get(&console.app, kind, &id).await {
        Ok(doc) => {
            let v = FormValues::of_view(&EnrollmentView::of(kind, &doc));
            form_page(&console, l, kind, true, v, Outcome::fresh()).await
        }
        Err(e) => failure(Some(l), &e),
    }
}

/// `POST /console/enrollments/{kind}/{id}/edit`: replaces the record under `If-Match` with the
/// etag the form was opened on. If someone changed it since, nothing is written and the form
/// comes back with the stored version beside it.
pub(super) async fn edit(
    State(console): State<Console>,
    signed: Signed,
    Path((kind, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&kind) else {
        return unknown_kind(&console, &signed);
    };
    let audited = action(kind, "put");
    if let Some(r) = signed
        .refuse_write(&console, Right::EnrollmentWrite, &audited, &id)
        .await
    {
        return r;
    }
    let form = Form::parse(&body);
    let mut v = FormValues::of_form(&form);
    v.id = id.clone();
    let l = signed.layout(&console, "enrollments");
    let stored = match management::get(&console.app, kind, &id).await {
        Ok(doc) => doc,
        Err(e) => return failure(Some(l), &e),
    };
    let doc = match v.document(kind, Some(stored), true) {
        Ok(d) => d,
        Err(e) => {
            let refused = Err::<(), _>(ApiError::InvalidArgument(e.clone()));
            signed.audit(&console, &audited, &id, &refused).await;
            let outcome = Outcome::refused(StatusCode::BAD_REQUEST, e);
            return form_page(&console, l, kind, true, v, outcome).await;
        }
    };
    let pre = Precondition::Etag(v.etag.clone());
    let body = doc.to_string();
    let result = management::put(&console.app, kind, &id, body.as_bytes(), pre).await;
    signed.audit(&console, &audited, &id, &result).await;
    match result {
        Ok(_) => {
            signed.flash(&console, format!("Saved the {} {id}.", label(kind)));
            see_other(&format!("/console/enrollments/{}/{}", slug(kind), enc(&id)))
        }
        Err(ApiError::EtagMismatch) => {
            let current = management::get(&console.app, kind, &id)
                .await
                .ok()
                .map(|d| EnrollmentView::of(kind, &d));
            let outcome = Outcome {
                status: StatusCode::PRECONDITION_FAILED,
                error: Some(format!(
                    "Not saved: someone changed this {} after you opened it. Your changes are \
                     below, and the version stored now is shown beside them; open the current \
                     version to edit it again.",
                    label(kind)
                )),
                current,
            };
            form_page(&console, l, kind, true, v, outcome).await
        }
        Err(ApiError::Store(e)) => failure(Some(l), &ApiError::Store(e)),
        Err(e) => {
            let outcome = Outcome::refused(super::status_of(&e), e.public_message());
            form_page(&console, l, kind, true, v, outcome).await
        }
    }
}

// ---- open ---------------------------------------------------------------------------------------

/// A device key derived in the page.
struct Derived {
    registration_id: String,
    key: String,
}

#[derive(Template)]
#[template(path = "console/enrollment.html")]
struct ShowPage {
    l: Layout,
    e: EnrollmentView,
    /// Present only when asked for (`?show=keys`).
    keys: Option<(String, String)>,
    /// A group's registration records (first page).
    records: Vec<RegRow>,
    more_records: Option<String>,
    derive_id: String,
    derived: Option<Derived>,
    derive_error: Option<String>,
}

/// `GET /console/enrollments/{kind}/{id}[?show=keys][&derive=REGISTRATION_ID]`.
pub(super) async fn show(
    State(console): State<Console>,
    signed: Signed,
    Path((kind, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::EnrollmentRead) {
        return r;
    }
    let Some(kind) = kind_of(&kind) else {
        return unknown_kind(&console, &signed);
    };
    let q = Form::query(query.as_deref());
    let show_keys = q.get("show") == Some("keys");
    let derive_id = q.text("derive");
    let l = signed.layout(&console, "enrollments");
    let app = &console.app;
    let doc = match management::get(app, kind, &id).await {
        Ok(d) => d,
        Err(e) => return failure(Some(l), &e),
    };
    let e = EnrollmentView::of(kind, &doc);
    // Keys leave the server only when asked for; reading them is the API's attestation route.
    let need_keys = e.symmetric && (show_keys || !derive_id.is_empty());
    let keys = if need_keys {
        match management::attestation_mechanism(app, kind, &id).await {
            Ok(att) => Some((
                att.pointer("/symmetricKey/primaryKey")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                att.pointer("/symmetricKey/secondaryKey")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            )),
            Err(e) => return failure(Some(l), &e),
        }
    } else {
        None
    };
    let (mut derived, mut derive_error) = (None, None);
    if kind == Kind::Group && !derive_id.is_empty() {
        match derive_key(keys.as_ref().map(|k| k.0.as_str()), &derive_id) {
            Ok(key) => {
                derived = Some(Derived {
                    registration_id: derive_id.clone(),
                    key,
                });
            }
            Err(e) => derive_error = Some(e),
        }
    }
    let (records, more_records) =
        if kind == Kind::Group && signed.principal.has(Right::RegistrationStatusRead) {
            match management::group_registrations(app, &id, 0, PAGE).await {
                Ok((items, next)) => (
                    items.iter().map(RegRow::of).collect(),
                    next.map(|_| {
                        format!(
                            "/console/registrations?q={}",
                            enc(&format!(
                                "SELECT * WHERE symmetricKey.enrollmentGroupId = '{}'",
                                id.replace('\'', "''")
                            ))
                        )
                    }),
                ),
                Err(e) => return failure(Some(l), &e),
            }
        } else {
            (Vec::new(), None)
        };
    page(
        StatusCode::OK,
        &ShowPage {
            l,
            e,
            keys: keys.filter(|_| show_keys),
            records,
            more_records,
            derive_id,
            derived,
            derive_error,
        },
    )
}

/// base64(HMAC-SHA256(base64-decoded group key, registration ID)), after checking the ID.
fn derive_key(group_key: Option<&str>, registration_id: &str) -> Result<String, String> {
    management::check_registration_id(registration_id).map_err(|e| e.public_message())?;
    let key = group_key
        .ok_or_else(|| "This group has no symmetric key to derive from.".to_owned())
        .and_then(|k| SymmetricKey::from_base64(k).map_err(|e| format!("The group key: {e}")))?;
    Ok(key.derive_device_key(registration_id).to_base64())
}

// ---- enable, disable, delete --------------------------------------------------------------------

/// `POST /console/enrollments/{kind}/{id}/status`: enables or disables, under the etag the page
/// showed.
pub(super) async fn set_status(
    State(console): State<Console>,
    signed: Signed,
    Path((kind, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&kind) else {
        return unknown_kind(&console, &signed);
    };
    let audited = action(kind, "put");
    if let Some(r) = signed
        .refuse_write(&console, Right::EnrollmentWrite, &audited, &id)
        .await
    {
        return r;
    }
    let form = Form::parse(&body);
    let status = if form.get("status") == Some("disabled") {
        "disabled"
    } else {
        "enabled"
    };
    let l = signed.layout(&console, "enrollments");
    let mut doc = match management::get(&console.app, kind, &id).await {
        Ok(d) => d,
        Err(e) => return failure(Some(l), &e),
    };
    doc["provisioningStatus"] = json!(status);
    let body = doc.to_string();
    let pre = Precondition::Etag(form.text("etag"));
    let result = management::put(&console.app, kind, &id, body.as_bytes(), pre).await;
    signed.audit(&console, &audited, &id, &result).await;
    match result {
        Ok(_) => {
            let done = if status == "disabled" {
                "Disabled"
            } else {
                "Enabled"
            };
            signed.flash(&console, format!("{done} the {} {id}.", label(kind)));
            see_other(&format!("/console/enrollments/{}/{}", slug(kind), enc(&id)))
        }
        Err(e) => failure(Some(l), &e),
    }
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
pub(crate) struct ConfirmPage {
    pub(crate) l: Layout,
    pub(crate) title: String,
    pub(crate) question: String,
    pub(crate) action: String,
    pub(crate) etag: String,
    pub(crate) button: &'static str,
    pub(crate) cancel: String,
}

/// `GET /console/enrollments/{kind}/{id}/delete`: asks before deleting.
pub(super) async fn delete_form(
    State(console): State<Console>,
    signed: Signed,
    Path((kind, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::EnrollmentWrite) {
        return r;
    }
    let Some(kind) = kind_of(&kind) else {
        return unknown_kind(&console, &signed);
    };
    let l = signed.layout(&console, "enrollments");
    let doc = match management::get(&console.app, kind, &id).await {
        Ok(d) => d,
        Err(e) => return failure(Some(l), &e),
    };
    let here = format!("/console/enrollments/{}/{}", slug(kind), enc(&id));
    let warning = match kind {
        Kind::Group => " Devices of the group can no longer register; their hub identities stay.",
        Kind::Enrollment => " The device can no longer register; its hub identity stays.",
    };
    page(
        StatusCode::OK,
        &ConfirmPage {
            l,
            title: format!("Delete the {} {id}?", label(kind)),
            question: format!("This cannot be undone.{warning}"),
            action: format!("{here}/delete"),
            etag: doc["etag"].as_str().unwrap_or_default().to_owned(),
            button: "Delete",
            cancel: here,
        },
    )
}

/// `POST /console/enrollments/{kind}/{id}/delete`, under the etag the confirmation showed.
pub(super) async fn delete(
    State(console): State<Console>,
    signed: Signed,
    Path((kind, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&kind) else {
        return unknown_kind(&console, &signed);
    };
    let audited = action(kind, "delete");
    if let Some(r) = signed
        .refuse_write(&console, Right::EnrollmentWrite, &audited, &id)
        .await
    {
        return r;
    }
    let form = Form::parse(&body);
    let pre = Precondition::Etag(form.text("etag"));
    let result = management::delete(&console.app, kind, &id, pre).await;
    signed.audit(&console, &audited, &id, &result).await;
    match result {
        Ok(()) => {
            signed.flash(&console, format!("Deleted the {} {id}.", label(kind)));
            see_other(&format!("/console/enrollments?kind={}", slug(kind)))
        }
        Err(e) => failure(Some(signed.layout(&console, "enrollments")), &e),
    }
}

// ---- derive -------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/derive.html")]
struct DerivePage {
    l: Layout,
    registration_id: String,
    derived: Option<String>,
    error: Option<String>,
}

/// `GET /console/derive`: the key-derivation form.
pub(super) async fn derive_form(State(console): State<Console>, signed: Signed) -> Response {
    page(
        StatusCode::OK,
        &DerivePage {
            l: signed.layout(&console, "derive"),
            registration_id: String::new(),
            derived: None,
            error: None,
        },
    )
}

/// `POST /console/derive`: a device's key from a pasted group key (a POST, so the group key does
/// not end up in a URL).
pub(super) async fn derive(
    State(console): State<Console>,
    signed: Signed,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let registration_id = form.text("registration_id");
    let group_key = form.text("group_key");
    let (status, derived, error) = match derive_key(Some(&group_key), &registration_id) {
        Ok(k) => (StatusCode::OK, Some(k), None),
        Err(e) => (StatusCode::BAD_REQUEST, None, Some(e)),
    };
    page(
        status,
        &DerivePage {
            l: signed.layout(&console, "derive"),
            registration_id,
            derived,
            error,
        },
    )
}
