//! The management operations behind the service API: enrollments, enrollment groups,
//! registration records and hubs. Transport-free: handlers pass parsed input in and get JSON out.

use serde_json::Value;
use usher_proto::ids::validate_id;
use usher_proto::query::Query;
use usher_proto::service::{
    AllocationPolicy, AttestationMechanism, AttestationType, EnrollmentGroup, EnrollmentSettings,
    IndividualEnrollment, QuerySpecification, SymmetricKeyAttestation,
};
use usher_proto::{RegistrationId, SymmetricKey};

use crate::app::{App, new_key, new_symmetric_key};
use crate::auth::Right;
use crate::clock::{new_etag, now_text};
use crate::error::ApiError;
use crate::registration::registration_result;
use crate::store::{Collection, Counts, Doc, Hub, HubDevice};

/// Length of keys generated for enrollments that do not supply their own.
pub const GENERATED_KEY_BYTES: usize = 32;
/// Default and largest query page.
pub const DEFAULT_PAGE: u64 = 100;
pub const MAX_PAGE: u64 = 1000;

/// What an `If-Match` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No header: create only (PUT), unconditional (DELETE).
    None,
    /// `*`: any existing record.
    Any,
    /// A specific etag.
    Etag(String),
}

impl Precondition {
    /// Normalises a header value: trims, drops `W/` and one pair of quotes; `*` means any.
    pub fn from_header(value: Option<&str>) -> Self {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Self::None;
        };
        let v = v.strip_prefix("W/").unwrap_or(v);
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        if v == "*" {
            Self::Any
        } else {
            Self::Etag(v.to_owned())
        }
    }

    pub(crate) fn allows(&self, stored_etag: &str) -> bool {
        match self {
            Self::None | Self::Any => true,
            Self::Etag(e) => e == stored_etag,
        }
    }

    /// The rule of a create-or-replace over a record whose etag is `stored` (`None`: there is no
    /// record): replacing one needs `If-Match`, a named etag must be the stored one, and a named
    /// etag needs a record. Each caller says the refusal in its own resource's words.
    pub(crate) fn check_put(&self, stored: Option<&str>) -> Result<(), PutRefused> {
        match (stored, self) {
            (Some(_), Self::None) => Err(PutRefused::Exists),
            (Some(etag), pre) if !pre.allows(etag) => Err(PutRefused::EtagMismatch),
            (None, Self::Etag(_)) => Err(PutRefused::Missing),
            _ => Ok(()),
        }
    }
}

/// Why [`Precondition::check_put`] refused a create-or-replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutRefused {
    /// A record exists and the request gave no `If-Match`.
    Exists,
    /// The `If-Match` etag is not the stored one.
    EtagMismatch,
    /// The `If-Match` named an etag, but there is no record.
    Missing,
}

/// The two enrollment collections differ only in names and codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Enrollment,
    Group,
}

impl Kind {
    pub fn collection(self) -> Collection {
        match self {
            Self::Enrollment => Collection::Enrollments,
            Self::Group => Collection::EnrollmentGroups,
        }
    }

    fn id_field(self) -> &'static str {
        match self {
            Self::Enrollment => "registrationId",
            Self::Group => "enrollmentGroupId",
        }
    }

    fn not_found(self, id: &str) -> ApiError {
        match self {
            Self::Enrollment => ApiError::EnrollmentNotFound(id.to_owned()),
            Self::Group => ApiError::EnrollmentGroupNotFound(id.to_owned()),
        }
    }

    fn exists(self, id: &str) -> ApiError {
        match self {
            Self::Enrollment => ApiError::EnrollmentExists(id.to_owned()),
            Self::Group => ApiError::EnrollmentGroupExists(id.to_owned()),
        }
    }

    fn validate_id(self, id: &str) -> Result<(), ApiError> {
        validate_id(id).map_err(|e| match self {
            Self::Enrollment => ApiError::InvalidRegistrationId(e),
            Self::Group => ApiError::InvalidEnrollmentGroupId(e),
        })
    }

    /// Parses a request body into (id, attestation, settings), and the full typed value re-serialised.
    fn parse(
        self,
        body: Source<'_>,
    ) -> Result<(String, AttestationMechanism, EnrollmentSettings, Value), ApiError> {
        let invalid = |e: serde_json::Error| ApiError::InvalidJson(e.to_string());
        match self {
            Self::Enrollment => {
                let mut e: IndividualEnrollment = body.decode().map_err(invalid)?;
                e.registration_state = None;
                if let Some(device_id) = &e.device_id
                    && !crate::hub::is_valid_device_id(device_id)
                {
                    return Err(ApiError::InvalidArgument(format!(
                        "invalid deviceId {device_id:?}"
                    )));
                }
                let json = serde_json::to_value(&e).map_err(invalid)?;
                Ok((e.registration_id, e.attestation, e.settings, json))
            }
            Self::Group => {
                let g: EnrollmentGroup = body.decode().map_err(invalid)?;
                if g.attestation.kind == AttestationType::Tpm {
                    return Err(ApiError::InvalidArgument(
                        "enrollment groups cannot use TPM attestation".into(),
                    ));
                }
                let json = serde_json::to_value(&g).map_err(invalid)?;
                Ok((g.enrollment_group_id, g.attestation, g.settings, json))
            }
        }
    }
}

/// An enrollment or group to parse: a request body, or a line an import has already parsed.
enum Source<'a> {
    Bytes(&'a [u8]),
    Value(Value),
}

impl Source<'_> {
    fn decode<T: serde::de::DeserializeOwned>(self) -> serde_json::Result<T> {
        match self {
            Self::Bytes(bytes) => serde_json::from_slice(bytes),
            Self::Value(value) => serde_json::from_value(value),
        }
    }
}

/// `PUT /enrollments/{id}` and `PUT /enrollmentGroups/{id}`: create, or replace under `If-Match`.
/// Returns the stored document with its keys.
pub async fn put(
    app: &App,
    kind: Kind,
    path_id: &str,
    body: &[u8],
    pre: Precondition,
) -> Result<Value, ApiError> {
    let known = Known::read(app).await?;
    let put = prepare_put(kind, path_id, Source::Bytes(body), pre, &known)?;
    let key = put.key.clone();
    app.store
        .upsert_doc(kind.collection(), &key, move |current| put.decide(current))
        .await
        .map(|doc| without_certificates(doc.json))
}

/// A validated create-or-replace of one enrollment or group, ready to run against the stored
/// record inside the writer's transaction.
pub struct PreparedPut {
    kind: Kind,
    /// The ID as given (stored case), and the storage key.
    id: String,
    key: String,
    attestation: AttestationMechanism,
    json: Value,
    pre: Precondition,
    /// Drawn before entering the writer; used only for keys the request and the stored record lack.
    fresh: [String; 2],
}

/// What an enrollment write is checked against: the linked hubs it may name and the CA
/// certificates its `caReferences` may name.
pub struct Known {
    pub hubs: Vec<Hub>,
    pub ca_names: Vec<String>,
}

impl Known {
    pub async fn read(app: &App) -> Result<Self, ApiError> {
        Ok(Self {
            hubs: app.store.hubs().await?,
            ca_names: app
                .store
                .ca_certificates()
                .await?
                .into_iter()
                .map(|c| c.name)
                .collect(),
        })
    }
}

/// Parses and validates a PUT body against the linked hubs and CA certificates; nothing is read
/// or written.
fn prepare_put(
    kind: Kind,
    path_id: &str,
    body: Source<'_>,
    pre: Precondition,
    known: &Known,
) -> Result<PreparedPut, ApiError> {
    kind.validate_id(path_id)?;
    let (body_id, attestation, settings, json) = kind.parse(body)?;
    if !body_id.eq_ignore_ascii_case(path_id) {
        return Err(ApiError::InvalidArgument(format!(
            "the body's {} {body_id:?} differs from the path's {path_id:?}",
            kind.id_field()
        )));
    }
    validate_attestation(kind, &attestation)?;
    for (which, name) in ["primary", "secondary"].iter().filter_map(|w| {
        attestation
            .x509
            .as_ref()
            .and_then(|x| x.pointer(&format!("/caReferences/{w}")))
            .filter(|v| !v.is_null())
            .map(|v| (w, v))
    }) {
        let name = name.as_str().unwrap_or_default();
        crate::certificates::check_name(name).map_err(|_| {
            ApiError::InvalidArgument(format!(
                "attestation.x509.caReferences.{which} must be a CA certificate name"
            ))
        })?;
        if !known.ca_names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(ApiError::InvalidArgument(format!(
                "attestation.x509.caReferences.{which} names no CA certificate: {name:?} (add it with usher certificate add)"
            )));
        }
    }
    validate_hubs(&settings, &known.hubs)?;
    if let Some(v) = settings.other.get(crate::groups::PATTERN_FIELD) {
        let pattern = v.as_str().ok_or_else(|| {
            ApiError::InvalidArgument(format!("{} must be a string", crate::groups::PATTERN_FIELD))
        })?;
        crate::groups::compile_pattern(pattern).map_err(ApiError::InvalidArgument)?;
    }
    crate::issuance::CredentialPolicy::from_fields(&settings.other)
        .map_err(ApiError::InvalidArgument)?;
    if let Some(v) = settings.other.get(crate::testing::FIELD) {
        let modes: crate::testing::TestingModes = serde_json::from_value(v.clone())
            .map_err(|e| ApiError::InvalidArgument(format!("invalid usherTesting: {e}")))?;
        modes.validate().map_err(ApiError::InvalidArgument)?;
    }
    Ok(PreparedPut {
        kind,
        key: path_id.to_ascii_lowercase(),
        id: body_id,
        attestation,
        json,
        pre,
        fresh: new_keys()?,
    })
}

impl PreparedPut {
    /// The document to store over `current`, or why not (exists, etag mismatch).
    fn decide(self, current: Option<Doc>) -> Result<Doc, ApiError> {
        let Self {
            kind,
            id,
            key: _,
            attestation,
            mut json,
            pre,
            fresh,
        } = self;
        pre.check_put(current.as_ref().map(|d| d.etag.as_str()))
            .map_err(|refused| match refused {
                PutRefused::Exists => kind.exists(&id),
                PutRefused::EtagMismatch | PutRefused::Missing => ApiError::EtagMismatch,
            })?;
        let stored_keys = current
            .as_ref()
            .and_then(|d| d.json.get("attestation").cloned())
            .and_then(|a| serde_json::from_value::<AttestationMechanism>(a).ok())
            .and_then(|a| a.symmetric_key);
        if attestation.kind == AttestationType::SymmetricKey {
            let given = attestation.symmetric_key.unwrap_or_default();
            let stored = stored_keys.unwrap_or_default();
            let [p, s] = fresh;
            let keys = SymmetricKeyAttestation {
                primary_key: given.primary_key.or(stored.primary_key).or(Some(p)),
                secondary_key: given.secondary_key.or(stored.secondary_key).or(Some(s)),
            };
            json["attestation"]["symmetricKey"] =
                serde_json::to_value(keys).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        }
        if attestation.kind == AttestationType::X509 {
            let stored = current
                .as_ref()
                .and_then(|d| d.json.pointer("/attestation/x509"));
            complete_certificates(kind, &mut json["attestation"]["x509"], stored)?;
        }
        let now = now_text();
        let etag = new_etag();
        let created = current
            .as_ref()
            .and_then(|d| d.json.get("createdDateTimeUtc").cloned())
            .unwrap_or_else(|| Value::String(now.clone()));
        json[kind.id_field()] = Value::String(id.clone());
        json["createdDateTimeUtc"] = created;
        json["lastUpdatedDateTimeUtc"] = Value::String(now);
        json["etag"] = Value::String(etag.clone());
        Ok(Doc { id, json, etag })
    }
}

/// Two fresh keys of [`GENERATED_KEY_BYTES`] from one draw of the system's randomness (a bulk
/// import makes a million of them).
fn new_keys() -> Result<[String; 2], ApiError> {
    let bytes = crate::app::random_vec(2 * GENERATED_KEY_BYTES)?;
    let (p, s) = bytes.split_at(GENERATED_KEY_BYTES);
    let key = |b: &[u8]| {
        SymmetricKey::generate(b)
            .map(|k| k.to_base64())
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))
    };
    Ok([key(p)?, key(s)?])
}

/// How an import treats a record that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// New records only; an existing one is an item error (409).
    Create,
    /// Create, or replace (keeping stored keys the line does not give).
    Update,
}

impl ImportMode {
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("create") {
            Some(Self::Create)
        } else if text.eq_ignore_ascii_case("update") {
            Some(Self::Update)
        } else {
            None
        }
    }
}

/// One line of an import that was not stored, and why.
#[derive(Debug)]
pub struct ImportFailure {
    /// 1-based line number in the request body.
    pub line: u64,
    pub id: String,
    pub error: ApiError,
}

/// Fields of an export that the server owns; an import ignores them rather than refusing the line.
const SERVER_OWNED: [&str; 4] = [
    "registrationState",
    "etag",
    "createdDateTimeUtc",
    "lastUpdatedDateTimeUtc",
];

/// One batch of an import, validated and ready to store.
pub struct ImportBatch {
    kind: Kind,
    /// Line number and ID of each record in `work`, in order.
    lines: Vec<(u64, String)>,
    work: BatchWork,
    /// Lines refused before reaching the store.
    failures: Vec<ImportFailure>,
}

enum BatchWork {
    /// Create mode: documents decided as if nothing were stored; the writer inserts each unless its
    /// key exists, reading no stored record.
    Insert(Vec<Doc>),
    /// Update mode: each decision runs against the stored record inside the writer.
    Upsert(Vec<(String, crate::store::Decide<ApiError>)>),
}

/// Validates one batch of JSON Lines (numbered lines, blank ones already skipped) against the
/// linked hubs: pure CPU work, no store access, so an import prepares the next batch while the
/// previous one commits. Each line stands alone; a bad one becomes a failure of its own.
pub fn prepare_import(
    kind: Kind,
    mode: ImportMode,
    lines: Vec<(u64, Vec<u8>)>,
    known: &Known,
) -> ImportBatch {
    let pre = match mode {
        ImportMode::Create => Precondition::None,
        ImportMode::Update => Precondition::Any,
    };
    let mut batch = ImportBatch {
        kind,
        lines: Vec::with_capacity(lines.len()),
        work: match mode {
            ImportMode::Create => BatchWork::Insert(Vec::with_capacity(lines.len())),
            ImportMode::Update => BatchWork::Upsert(Vec::with_capacity(lines.len())),
        },
        failures: Vec::new(),
    };
    for (line, bytes) in lines {
        let put = match prepare_import_line(kind, &bytes, pre.clone(), known) {
            Ok(put) => put,
            Err((id, error)) => {
                batch.failures.push(ImportFailure { line, id, error });
                continue;
            }
        };
        let id = put.id.clone();
        match &mut batch.work {
            BatchWork::Insert(docs) => match put.decide(None) {
                Ok(doc) => docs.push(doc),
                Err(error) => {
                    batch.failures.push(ImportFailure { line, id, error });
                    continue;
                }
            },
            BatchWork::Upsert(items) => {
                let key = put.key.clone();
                items.push((key, Box::new(move |cur| put.decide(cur))));
            }
        }
        batch.lines.push((line, id));
    }
    batch
}

/// Stores a prepared batch in one transaction: returns how many records were stored and every
/// failure (the batch's own and the store's refusals: an existing record in create mode). A
/// store failure fails the whole batch, which then wrote nothing.
pub async fn commit_import(
    app: &App,
    batch: ImportBatch,
) -> Result<(u64, Vec<ImportFailure>), ApiError> {
    let ImportBatch {
        kind,
        lines,
        work,
        mut failures,
    } = batch;
    let outcomes: Vec<Result<(), ApiError>> = match work {
        BatchWork::Insert(docs) => app
            .store
            .insert_docs(kind.collection(), docs)
            .await?
            .into_iter()
            .zip(&lines)
            .map(|(new, (_, id))| if new { Ok(()) } else { Err(kind.exists(id)) })
            .collect(),
        BatchWork::Upsert(items) => app.store.upsert_docs(kind.collection(), items).await?,
    };
    let mut imported = 0;
    for ((line, id), outcome) in lines.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => imported += 1,
            Err(error) => failures.push(ImportFailure { line, id, error }),
        }
    }
    failures.sort_by_key(|f| f.line);
    Ok((imported, failures))
}

/// One import line: a JSON document whose ID field names the record.
fn prepare_import_line(
    kind: Kind,
    bytes: &[u8],
    pre: Precondition,
    known: &Known,
) -> Result<PreparedPut, (String, ApiError)> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| (String::new(), ApiError::InvalidJson(e.to_string())))?;
    let id = value
        .get(kind.id_field())
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(obj) = value.as_object_mut() {
        for field in SERVER_OWNED {
            obj.remove(field);
        }
    }
    prepare_put(kind, &id, Source::Value(value), pre, known).map_err(|e| (id, e))
}

/// Rotates an enrollment's or group's symmetric keys in one etag-guarded write: `primary` (a new
/// primary; devices on the secondary keep working while it goes out), `secondary`, or `swap`
/// (the secondary becomes primary and the old primary becomes secondary). Returns the document
/// with its keys, as the attestation mechanism route does.
pub async fn rotate_enrollment_key(
    app: &App,
    kind: Kind,
    id: &str,
    which: &str,
    pre: Precondition,
) -> Result<Value, ApiError> {
    kind.validate_id(id)?;
    let which = which.to_ascii_lowercase();
    if !["primary", "secondary", "swap"].contains(&which.as_str()) {
        return Err(ApiError::InvalidArgument(format!(
            "unknown key {which:?}; use primary, secondary or swap"
        )));
    }
    let fresh = new_key(GENERATED_KEY_BYTES)?;
    let not_found = kind.not_found(id);
    app.store
        .upsert_doc(kind.collection(), id, move |current: Option<Doc>| {
            let Some(mut doc) = current else {
                return Err(not_found);
            };
            if !pre.allows(&doc.etag) {
                return Err(ApiError::EtagMismatch);
            }
            let keys = doc
                .json
                .pointer_mut("/attestation/symmetricKey")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| {
                    ApiError::InvalidArgument(
                        "only symmetric-key attestation has keys to rotate".into(),
                    )
                })?;
            let primary = keys.get("primaryKey").cloned().unwrap_or_default();
            let secondary = keys.get("secondaryKey").cloned().unwrap_or_default();
            let (p, s) = match which.as_str() {
                "primary" => (Value::String(fresh), secondary),
                "secondary" => (primary, Value::String(fresh)),
                _ => (secondary, primary),
            };
            keys.insert("primaryKey".into(), p);
            keys.insert("secondaryKey".into(), s);
            let etag = new_etag();
            doc.json["lastUpdatedDateTimeUtc"] = Value::String(now_text());
            doc.json["etag"] = Value::String(etag.clone());
            doc.etag = etag;
            Ok(doc)
        })
        .await
        .map(|doc| doc.json)
}

/// `GET`: the document with keys removed; individual enrollments also show their registration state.
pub async fn get(app: &App, kind: Kind, id: &str) -> Result<Value, ApiError> {
    let doc = app
        .store
        .doc(kind.collection(), id)
        .await?
        .ok_or_else(|| kind.not_found(id))?;
    let mut json = redacted(doc.json);
    if kind == Kind::Enrollment {
        let state = match app.store.registration(id).await? {
            Some(r) => serde_json::to_value(registration_result(&r)),
            None => Ok(serde_json::json!({"registrationId": doc.id, "status": "unassigned"})),
        };
        json["registrationState"] = state.map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    }
    Ok(json)
}

/// `POST …/attestationmechanism`: the attestation with its keys.
pub async fn attestation_mechanism(app: &App, kind: Kind, id: &str) -> Result<Value, ApiError> {
    let doc = app
        .store
        .doc(kind.collection(), id)
        .await?
        .ok_or_else(|| kind.not_found(id))?;
    Ok(doc.json.get("attestation").cloned().unwrap_or(Value::Null))
}

/// `DELETE`, honouring `If-Match`.
pub async fn delete(app: &App, kind: Kind, id: &str, pre: Precondition) -> Result<(), ApiError> {
    let deleted = app
        .store
        .delete_doc(kind.collection(), id, move |doc| {
            if pre.allows(&doc.etag) {
                Ok(())
            } else {
                Err(ApiError::EtagMismatch)
            }
        })
        .await?;
    deleted.map(|_| ()).ok_or_else(|| kind.not_found(id))
}

/// A page of a query: the redacted documents that match, and the cursor of the next page if more
/// records may follow.
///
/// The cursor is the storage position of the last record looked at, matching or not, so it stays
/// valid while the filter skips records and while other records are updated or deleted.
pub async fn query(
    app: &App,
    kind: Kind,
    query: &Query,
    after: u64,
    page: u64,
) -> Result<(Vec<Value>, Option<u64>), ApiError> {
    /// Records read per store round trip while filtering.
    const SCAN: u64 = 500;
    let mut items = Vec::new();
    let mut cursor = after;
    loop {
        // One extra row tells whether another page exists.
        let want = if query.is_unfiltered() {
            page + 1
        } else {
            SCAN
        };
        let docs = app.store.docs(kind.collection(), cursor, want).await?;
        let exhausted = (docs.len() as u64) < want;
        for (seq, doc) in docs {
            if items.len() as u64 == page {
                return Ok((items, Some(cursor)));
            }
            cursor = seq;
            if query.matches(&doc.json) {
                items.push(redacted(doc.json));
            }
        }
        if exhausted {
            return Ok((items, None));
        }
    }
}

/// Parses a query body (`{"query": "…"}`); an absent body or query means `*`.
pub fn parse_query(body: &[u8]) -> Result<Query, ApiError> {
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        "*".to_owned()
    } else {
        let spec: QuerySpecification =
            serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        if spec.query.trim().is_empty() {
            "*".to_owned()
        } else {
            // The Azure CLI's list commands send a Python repr of the query model (see
            // `usher_proto::query::unwrap_query_specification`); Azure answers it, so do we.
            usher_proto::query::unwrap_query_specification(&spec.query).unwrap_or(spec.query)
        }
    };
    Query::parse(&text).map_err(|e| ApiError::InvalidArgument(format!("invalid query: {e}")))
}

/// Most items in one bulk operation (the DPS limit).
pub const MAX_BULK: usize = 10;

/// `POST /enrollments` and `POST /enrollmentGroups`: a bulk operation. Request-level problems (too
/// many items, the same ID twice, an unknown mode) fail the whole request; item-level problems are
/// reported in `errors` while the other items are processed, each in its own transaction.
pub async fn bulk(app: &App, kind: Kind, body: &[u8]) -> Result<Value, ApiError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let items_field = match kind {
        Kind::Enrollment => "enrollments",
        Kind::Group => "enrollmentGroups",
    };
    let items = request
        .get(items_field)
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::InvalidJson(format!("the body has no {items_field} array")))?;
    let mode_text = request
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mode = BulkMode::parse(mode_text).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "unknown bulk mode {mode_text:?}; expected create, update, updateIfMatchETag or delete"
        ))
    })?;
    if items.len() > MAX_BULK {
        return Err(ApiError::TooManyEnrollments(items.len()));
    }
    let mut ids: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let id = item
            .get(kind.id_field())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !id.is_empty() && ids.contains(&id) {
            return Err(ApiError::DefinedMultipleTimes(id));
        }
        ids.push(id);
    }
    let mut errors = Vec::new();
    for item in items {
        let id = item
            .get(kind.id_field())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Err(e) = bulk_item(app, kind, mode, &id, item).await {
            errors.push(serde_json::json!({
                kind.id_field(): id,
                "errorCode": e.code().code(),
                "errorStatus": e.public_message(),
            }));
        }
    }
    Ok(serde_json::json!({ "isSuccessful": errors.is_empty(), "errors": errors }))
}

/// A bulk operation's mode (parsed case-insensitively: Node sends `updateIfMatchEtag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkMode {
    Create,
    Update,
    UpdateIfMatchEtag,
    Delete,
}

impl BulkMode {
    fn parse(text: &str) -> Option<Self> {
        [
            ("create", Self::Create),
            ("update", Self::Update),
            ("updateIfMatchETag", Self::UpdateIfMatchEtag),
            ("delete", Self::Delete),
        ]
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, mode)| mode)
    }
}

async fn bulk_item(
    app: &App,
    kind: Kind,
    mode: BulkMode,
    id: &str,
    item: &Value,
) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::InvalidJson(format!(
            "an item has no {}",
            kind.id_field()
        )));
    }
    let etag = item
        .get("etag")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(str::to_owned);
    let pre = match (mode, etag) {
        (BulkMode::Create, _) | (BulkMode::Update | BulkMode::UpdateIfMatchEtag, None) => {
            // Create, or update a record that does not exist yet; an existing one conflicts.
            Precondition::None
        }
        (BulkMode::Update, Some(_)) => Precondition::Any,
        (BulkMode::UpdateIfMatchEtag | BulkMode::Delete, Some(etag)) => Precondition::Etag(etag),
        (BulkMode::Delete, None) => Precondition::None,
    };
    if mode == BulkMode::Delete {
        return delete(app, kind, id, pre).await;
    }
    let body = serde_json::to_vec(item).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    put(app, kind, id, &body, pre).await.map(|_| ())
}

/// `GET /registrations/{id}`.
pub async fn get_registration(app: &App, id: &str) -> Result<Value, ApiError> {
    let r = app
        .store
        .registration(id)
        .await?
        .ok_or_else(|| ApiError::RegistrationNotFound(id.to_owned()))?;
    serde_json::to_value(registration_result(&r)).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// `DELETE /registrations/{id}`. The hub identity is left as it is, as in DPS.
pub async fn delete_registration(app: &App, id: &str, pre: Precondition) -> Result<(), ApiError> {
    let deleted = app
        .store
        .delete_registration(id, move |r| {
            if pre.allows(&r.etag) {
                Ok(())
            } else {
                Err(ApiError::EtagMismatch)
            }
        })
        .await?;
    deleted
        .map(|_| ())
        .ok_or_else(|| ApiError::RegistrationNotFound(id.to_owned()))
}

/// `POST /registrations/{groupId}/query`: a page of the records of devices registered through a
/// group, after the cursor `after`, and the next page's cursor if there is one.
pub async fn group_registrations(
    app: &App,
    group_id: &str,
    after: u64,
    page: u64,
) -> Result<(Vec<Value>, Option<u64>), ApiError> {
    let records = app
        .store
        .registrations_of_group(group_id, after, page + 1)
        .await?;
    let more = records.len() as u64 > page;
    let mut items = Vec::new();
    let mut cursor = after;
    for (seq, r) in records
        .iter()
        .take(usize::try_from(page).unwrap_or(usize::MAX))
    {
        cursor = *seq;
        items.push(
            serde_json::to_value(registration_result(r))
                .map_err(|e| ApiError::InvalidJson(e.to_string()))?,
        );
    }
    Ok((items, more.then_some(cursor)))
}

/// A page of all registration records that match `query` (over each record as `GET
/// /registrations/{id}` shows it), after the cursor `after`, and the next page's cursor if more
/// records may follow. Cursors are storage positions, as for [`query`].
pub async fn registrations(
    app: &App,
    query: &Query,
    after: u64,
    page: u64,
) -> Result<(Vec<Value>, Option<u64>), ApiError> {
    const SCAN: u64 = 500;
    let mut items = Vec::new();
    let mut cursor = after;
    loop {
        let want = if query.is_unfiltered() {
            page + 1
        } else {
            SCAN
        };
        let records = app.store.registrations(cursor, want).await?;
        let exhausted = (records.len() as u64) < want;
        for (seq, r) in records {
            if items.len() as u64 == page {
                return Ok((items, Some(cursor)));
            }
            cursor = seq;
            let json = serde_json::to_value(registration_result(&r))
                .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
            if query.matches(&json) {
                items.push(json);
            }
        }
        if exhausted {
            return Ok((items, None));
        }
    }
}

/// The `limit` most recently updated registration records, newest first.
pub async fn recent_registrations(app: &App, limit: u64) -> Result<Vec<Value>, ApiError> {
    app.store
        .recent_registrations(limit)
        .await?
        .iter()
        .map(|r| {
            serde_json::to_value(registration_result(r))
                .map_err(|e| ApiError::InvalidJson(e.to_string()))
        })
        .collect()
}

/// How many enrollments, groups, registration records and hub devices the instance holds.
pub async fn counts(app: &App) -> Result<Counts, ApiError> {
    Ok(app.store.counts().await?)
}

/// The principal's own policy's primary connection string (its holder has the key already, so
/// this needs no right); `None` if the policy is gone.
pub async fn own_connection_string(
    app: &App,
    principal: &crate::auth::Principal,
) -> Result<Option<String>, ApiError> {
    Ok(app.store.policy(principal.policy()).await?.map(|policy| {
        format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            app.instance.service_host,
            policy.name,
            policy.primary_key.to_base64()
        )
    }))
}

/// The access policies, keys included (listing them needs ServiceConfig, which the owner holds).
pub async fn policies(app: &App) -> Result<Vec<Value>, ApiError> {
    Ok(app
        .store
        .policies()
        .await?
        .iter()
        .map(policy_json)
        .collect())
}

/// Creates an access policy with the given rights and generated (or supplied) keys.
pub async fn add_policy(app: &App, name: &str, body: &[u8]) -> Result<Value, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct NewPolicy {
        rights: Vec<String>,
        #[serde(default)]
        primary_key: Option<String>,
        #[serde(default)]
        secondary_key: Option<String>,
    }
    let req: NewPolicy =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ApiError::InvalidArgument(format!(
            "invalid policy name {name:?}: use 1-64 letters, digits and - _ ."
        )));
    }
    let mut rights = Vec::new();
    for right in &req.rights {
        let known = Right::parse(right)
            .filter(|r| Right::ALL.contains(r))
            .ok_or_else(|| {
                let all: Vec<&str> = Right::ALL.iter().map(|r| r.name()).collect();
                ApiError::InvalidArgument(format!(
                    "unknown right {right:?}; rights are {}",
                    all.join(", ")
                ))
            })?;
        if !rights.contains(&known) {
            rights.push(known);
        }
    }
    if rights.is_empty() {
        return Err(ApiError::InvalidArgument(
            "a policy needs at least one right".into(),
        ));
    }
    let key = |given: Option<String>, what: &str| -> Result<SymmetricKey, ApiError> {
        match given {
            Some(k) => SymmetricKey::from_base64(&k)
                .map_err(|e| ApiError::InvalidArgument(format!("{what}: {e}"))),
            None => new_symmetric_key(GENERATED_KEY_BYTES),
        }
    };
    let policy = crate::store::Policy {
        name: name.to_owned(),
        primary_key: key(req.primary_key, "primaryKey")?,
        secondary_key: key(req.secondary_key, "secondaryKey")?,
        rights,
    };
    if !app.store.add_policy(policy.clone()).await? {
        return Err(ApiError::PolicyExists(name.to_owned()));
    }
    Ok(policy_json(&policy))
}

/// Deletes an access policy. The owner policy stays: without it nobody could manage the instance.
pub async fn delete_policy(app: &App, name: &str) -> Result<(), ApiError> {
    if name == crate::app::OWNER_POLICY {
        return Err(ApiError::InvalidArgument(format!(
            "the {name} policy cannot be deleted; rotate its keys instead"
        )));
    }
    if app.store.delete_policy(name).await? {
        Ok(())
    } else {
        Err(ApiError::PolicyNotFound(name.to_owned()))
    }
}

/// Replaces one or both of a policy's keys with new random ones. Tokens signed with a replaced
/// key stop working at once.
pub async fn rotate_policy_key(app: &App, name: &str, which: &str) -> Result<Value, ApiError> {
    let policy = app
        .store
        .policy(name)
        .await?
        .ok_or_else(|| ApiError::PolicyNotFound(name.to_owned()))?;
    let (primary, secondary) = match which.to_ascii_lowercase().as_str() {
        "primary" => (
            new_symmetric_key(GENERATED_KEY_BYTES)?,
            policy.secondary_key,
        ),
        "secondary" => (policy.primary_key, new_symmetric_key(GENERATED_KEY_BYTES)?),
        "both" => (
            new_symmetric_key(GENERATED_KEY_BYTES)?,
            new_symmetric_key(GENERATED_KEY_BYTES)?,
        ),
        // Swap: the secondary becomes primary and the old primary is replaced, so clients can move
        // to the secondary first and nothing breaks.
        "swap" => (
            policy.secondary_key,
            new_symmetric_key(GENERATED_KEY_BYTES)?,
        ),
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "unknown key {other:?}; use primary, secondary, both or swap"
            )));
        }
    };
    let updated = app
        .store
        .set_policy_keys(name, primary, secondary)
        .await?
        .ok_or_else(|| ApiError::PolicyNotFound(name.to_owned()))?;
    Ok(policy_json(&updated))
}

fn policy_json(p: &crate::store::Policy) -> Value {
    serde_json::json!({
        "keyName": p.name, "primaryKey": p.primary_key.to_base64(),
        "secondaryKey": p.secondary_key.to_base64(), "rights": p.rights_text(),
    })
}

/// The hubs, as `usher hub list` shows them.
pub async fn hubs(app: &App) -> Result<Vec<Value>, ApiError> {
    Ok(app.store.hubs().await?.iter().map(hub_json).collect())
}

/// Adds a built-in hub.
pub async fn add_hub(app: &App, name: &str, body: &[u8]) -> Result<Value, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct NewHub {
        hostname: String,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        apply_allocation_policy: Option<bool>,
        #[serde(default)]
        location: Option<String>,
    }
    let req: NewHub =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::InvalidArgument(format!(
            "invalid hub name {name:?}: use 1-64 letters, digits and -"
        )));
    }
    validate_hostname(&req.hostname)?;
    let weight = check_weight(req.weight.unwrap_or(1))?;
    let hub = Hub {
        name: name.to_owned(),
        hostname: req.hostname,
        weight,
        apply_allocation_policy: req.apply_allocation_policy.unwrap_or(true),
        builtin: true,
        created: crate::clock::now(),
        location: req.location.map(|l| check_location(&l)).transpose()?,
    };
    if !app.store.add_hub(hub.clone()).await? {
        return Err(ApiError::HubExists(name.to_owned()));
    }
    app.store
        .ensure_hub_policies(&hub.name, crate::hub::default_policies()?)
        .await?;
    Ok(hub_json(&hub))
}

/// Changes a linked hub's weight, location or `applyAllocationPolicy`; fields not given stay.
pub async fn update_hub(app: &App, name: &str, body: &[u8]) -> Result<Value, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Change {
        #[serde(default, alias = "allocationWeight")]
        weight: Option<u32>,
        #[serde(default)]
        apply_allocation_policy: Option<bool>,
        #[serde(default)]
        location: Option<String>,
    }
    let change: Change =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let weight = change.weight.map(check_weight).transpose()?;
    let location = change
        .location
        .map(|l| {
            if l.is_empty() {
                Ok(None)
            } else {
                check_location(&l).map(Some)
            }
        })
        .transpose()?;
    let hub = app
        .store
        .update_hub(name, move |h| {
            if let Some(w) = weight {
                h.weight = w;
            }
            if let Some(a) = change.apply_allocation_policy {
                h.apply_allocation_policy = a;
            }
            if let Some(l) = location {
                h.location = l;
            }
        })
        .await?
        .ok_or_else(|| ApiError::HubNotFound(name.to_owned()))?;
    Ok(hub_json(&hub))
}

fn check_weight(weight: u32) -> Result<u32, ApiError> {
    if (1..=1000).contains(&weight) {
        Ok(weight)
    } else {
        Err(ApiError::InvalidArgument(format!(
            "invalid allocation weight {weight}: use 1 to 1000"
        )))
    }
}

/// A location name: letters, digits, `-` and `_`, as Azure region names are.
fn check_location(location: &str) -> Result<String, ApiError> {
    if !location.is_empty()
        && location.len() <= 64
        && location
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(location.to_owned())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "invalid location {location:?}: use a region name such as westeurope"
        )))
    }
}

/// The instance's allocation settings: default policy and network map.
pub async fn allocation(app: &App) -> Result<Value, ApiError> {
    serde_json::to_value(app.store.allocation_settings().await?)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// Replaces the instance's allocation settings (`custom` cannot be the default, as in DPS).
pub async fn set_allocation(app: &App, body: &[u8]) -> Result<Value, ApiError> {
    let settings: crate::store::AllocationSettings =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if settings.default_policy == AllocationPolicy::Custom {
        return Err(ApiError::InvalidArgument(
            "custom allocation cannot be the instance default; set it on enrollments".into(),
        ));
    }
    for rule in &settings.geo_map {
        check_location(&rule.location)?;
    }
    app.store.set_allocation_settings(settings.clone()).await?;
    serde_json::to_value(settings).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// One device identity of a built-in hub: its `Device` document (keys included) and its twin,
/// as the hub's registry API shows them.
pub async fn hub_device(app: &App, hub: &str, device_id: &str) -> Result<(Value, Value), ApiError> {
    if !app.store.hubs().await?.iter().any(|h| h.name == hub) {
        return Err(ApiError::HubNotFound(hub.to_owned()));
    }
    let device = app
        .store
        .hub_device(hub, device_id)
        .await?
        .ok_or_else(|| ApiError::DeviceNotFound(device_id.to_owned()))?;
    Ok((
        crate::hub::device_json(&device),
        crate::hub::twin_json(&device),
    ))
}

/// A page of the device identities of a hub, after the cursor `after`, and the next page's cursor
/// if more follow.
pub async fn hub_devices(
    app: &App,
    name: &str,
    after: u64,
    page: u64,
) -> Result<(Vec<Value>, Option<u64>), ApiError> {
    if !app.store.hubs().await?.iter().any(|h| h.name == name) {
        return Err(ApiError::HubNotFound(name.to_owned()));
    }
    let devices = app.store.hub_devices(name, after, page + 1).await?;
    let more = devices.len() as u64 > page;
    let devices = &devices[..devices
        .len()
        .min(usize::try_from(page).unwrap_or(usize::MAX))];
    let next = devices.last().map(|(seq, _)| *seq).filter(|_| more);
    Ok((devices.iter().map(|(_, d)| device_json(d)).collect(), next))
}

fn hub_json(h: &Hub) -> Value {
    serde_json::json!({
        "name": h.name, "hostname": h.hostname, "weight": h.weight, "location": h.location,
        "applyAllocationPolicy": h.apply_allocation_policy, "builtin": h.builtin,
        "createdDateTimeUtc": usher_proto::model::format_timestamp(h.created),
    })
}

fn device_json(d: &HubDevice) -> Value {
    serde_json::json!({
        "deviceId": d.device_id, "status": d.status,
        "createdDateTimeUtc": usher_proto::model::format_timestamp(d.created),
        "lastUpdatedDateTimeUtc": usher_proto::model::format_timestamp(d.updated),
    })
}

fn redacted(mut json: Value) -> Value {
    if let Some(att) = json.get_mut("attestation").and_then(Value::as_object_mut) {
        att.remove("symmetricKey");
    }
    without_certificates(json)
}

/// The certificate set an X.509 enrollment (`clientCertificates`) or group
/// (`signingCertificates`) holds.
fn certificate_set(kind: Kind) -> &'static str {
    match kind {
        Kind::Enrollment => "clientCertificates",
        Kind::Group => "signingCertificates",
    }
}

const CERTIFICATE_SETS: [&str; 2] = ["clientCertificates", "signingCertificates"];

/// A document as DPS shows it: X.509 certificates appear as their `info` only, never echoed.
fn without_certificates(mut json: Value) -> Value {
    if let Some(x509) = json.pointer_mut("/attestation/x509") {
        for set in CERTIFICATE_SETS {
            for which in ["primary", "secondary"] {
                if let Some(entry) = x509
                    .get_mut(set)
                    .and_then(|s| s.get_mut(which))
                    .and_then(Value::as_object_mut)
                {
                    entry.remove("certificate");
                }
            }
        }
    }
    json
}

/// Fills in an X.509 attestation before it is stored: an entry given with `info` but no
/// `certificate` (a client putting back what it read) keeps the stored certificate, and every
/// certificate gets its `info` as DPS shows it. The primary certificate is required unless the
/// attestation names CAs (`caReferences`).
fn complete_certificates(
    kind: Kind,
    x509: &mut Value,
    stored: Option<&Value>,
) -> Result<(), ApiError> {
    let set_name = certificate_set(kind);
    let has_ca_references = x509.get("caReferences").is_some_and(|r| !r.is_null());
    for which in ["primary", "secondary"] {
        let Some(entry) = x509
            .get_mut(set_name)
            .and_then(|s| s.get_mut(which))
            .filter(|e| !e.is_null())
        else {
            continue;
        };
        if entry.get("certificate").is_none_or(Value::is_null) {
            let kept = stored
                .and_then(|s| s.get(set_name))
                .and_then(|s| s.get(which))
                .and_then(|e| e.get("certificate"))
                .cloned();
            match kept {
                Some(cert) => entry["certificate"] = cert,
                None => {
                    return Err(ApiError::InvalidArgument(format!(
                        "attestation.x509.{set_name}.{which} has no certificate"
                    )));
                }
            }
        }
        let text = entry["certificate"].as_str().unwrap_or_default();
        let der = crate::x509::parse_stored(text).map_err(|e| {
            ApiError::InvalidArgument(format!(
                "attestation.x509.{set_name}.{which}.certificate: {e}"
            ))
        })?;
        entry["info"] = crate::x509::info(&der).map_err(|e| {
            ApiError::InvalidArgument(format!(
                "attestation.x509.{set_name}.{which}.certificate: {e}"
            ))
        })?;
    }
    let has_primary = x509
        .get(set_name)
        .and_then(|s| s.get("primary"))
        .is_some_and(|e| !e.is_null());
    if !has_primary && !has_ca_references {
        return Err(ApiError::InvalidArgument(format!(
            "X.509 attestation needs x509.{set_name}.primary.certificate (or caReferences)"
        )));
    }
    Ok(())
}

fn validate_attestation(kind: Kind, att: &AttestationMechanism) -> Result<(), ApiError> {
    match att.kind {
        AttestationType::SymmetricKey => {
            if let Some(sk) = &att.symmetric_key {
                for (name, key) in [
                    ("primaryKey", &sk.primary_key),
                    ("secondaryKey", &sk.secondary_key),
                ] {
                    if let Some(key) = key {
                        SymmetricKey::from_base64(key).map_err(|e| {
                            ApiError::InvalidArgument(format!(
                                "attestation.symmetricKey.{name}: {e}"
                            ))
                        })?;
                    }
                }
            }
            Ok(())
        }
        AttestationType::Tpm => match att.tpm.as_ref().and_then(|t| t.get("endorsementKey")) {
            Some(Value::String(k)) if !k.is_empty() => Ok(()),
            _ => Err(ApiError::InvalidArgument(
                "TPM attestation needs tpm.endorsementKey".into(),
            )),
        },
        AttestationType::X509 => {
            let Some(x509 @ Value::Object(_)) = &att.x509 else {
                return Err(ApiError::InvalidArgument(
                    "X.509 attestation needs an x509 object".into(),
                ));
            };
            let set_name = certificate_set(kind);
            let other = match kind {
                Kind::Enrollment => "signingCertificates",
                Kind::Group => "clientCertificates",
            };
            if x509.get(other).is_some_and(|s| !s.is_null()) {
                return Err(ApiError::InvalidArgument(format!(
                    "{} use x509.{set_name}, not x509.{other}",
                    match kind {
                        Kind::Enrollment => "individual enrollments",
                        Kind::Group => "enrollment groups",
                    }
                )));
            }
            for which in ["primary", "secondary"] {
                let Some(text) = x509
                    .get(set_name)
                    .and_then(|s| s.get(which))
                    .and_then(|e| e.get("certificate"))
                    .filter(|c| !c.is_null())
                else {
                    continue;
                };
                let field = format!("attestation.x509.{set_name}.{which}.certificate");
                let text = text.as_str().ok_or_else(|| {
                    ApiError::InvalidArgument(format!("{field} must be a PEM or base64 string"))
                })?;
                let der = crate::x509::parse_stored(text)
                    .map_err(|e| ApiError::InvalidArgument(format!("{field}: {e}")))?;
                if kind == Kind::Group {
                    crate::x509::check_can_sign(&der).map_err(|e| {
                        ApiError::InvalidArgument(format!(
                            "{field}: a group's signing certificate must be a CA certificate: {e}"
                        ))
                    })?;
                }
            }
            Ok(())
        }
        AttestationType::None => Ok(()),
    }
}

fn validate_hubs(settings: &EnrollmentSettings, hubs: &[Hub]) -> Result<(), ApiError> {
    let named = settings.named_hubs();
    // DPS accepts a static enrollment with no hub (its devices go to the linked hubs); more than
    // one is not static.
    if settings.allocation_policy == Some(AllocationPolicy::Static) && named.len() > 1 {
        return Err(ApiError::InvalidArgument(format!(
            "static allocation names at most one hub in iotHubs; {} given",
            named.len()
        )));
    }
    if settings.allocation_policy == Some(AllocationPolicy::Custom) {
        let definition = settings.other.get("customAllocationDefinition");
        let url = definition
            .and_then(|d| d.get("webhookUrl"))
            .and_then(Value::as_str);
        let version = definition
            .and_then(|d| d.get("apiVersion"))
            .and_then(Value::as_str);
        let (Some(url), Some(_)) = (url, version) else {
            return Err(ApiError::InvalidArgument(
                "custom allocation needs customAllocationDefinition with webhookUrl and apiVersion"
                    .into(),
            ));
        };
        crate::webhook::check_url(url).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    }
    if named.is_empty() {
        return Ok(());
    }
    for host in &named {
        if !hubs.iter().any(|h| h.hostname.eq_ignore_ascii_case(host)) {
            return Err(ApiError::InvalidArgument(format!(
                "the hub {host:?} is not linked to this instance"
            )));
        }
    }
    Ok(())
}

fn validate_hostname(host: &str) -> Result<(), ApiError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "invalid host name {host:?}"
        )))
    }
}

/// Whether a registration ID is valid (used by routes that take one).
pub fn check_registration_id(id: &str) -> Result<(), ApiError> {
    RegistrationId::parse(id)
        .map(|_| ())
        .map_err(ApiError::InvalidRegistrationId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_normalisation() {
        assert_eq!(Precondition::from_header(None), Precondition::None);
        assert_eq!(Precondition::from_header(Some("  ")), Precondition::None);
        assert_eq!(Precondition::from_header(Some("*")), Precondition::Any);
        assert_eq!(Precondition::from_header(Some("\"*\"")), Precondition::Any);
        assert_eq!(
            Precondition::from_header(Some("W/\"abc\"")),
            Precondition::Etag("abc".into())
        );
        assert_eq!(
            Precondition::from_header(Some("abc=")),
            Precondition::Etag("abc=".into())
        );
    }
}
