//! The registration core: attestation, allocation and the durable record of an assignment. Every
//! device transport (HTTPS now, MQTT later) calls these functions; none has logic of its own.

use usher_proto::allocation::{self, Candidate};
use usher_proto::model::{
    DeviceRegistration, DeviceRegistrationResult, RegistrationOperationStatus, RegistrationStatus,
    Substatus, SymmetricKeyRegistrationResult,
};
use usher_proto::sas::{Now, SasToken};
use usher_proto::service::{
    AllocationPolicy, AttestationType, EnrollmentGroup, EnrollmentSettings, IndividualEnrollment,
};
use usher_proto::{ErrorCode, RegistrationId, SymmetricKey};

use crate::app::{App, Protocol};
use crate::audit;
use crate::error::{ApiError, AuthError};
use crate::http::{new_etag, now_text, unix_now};
use crate::metrics::{Operation, RegistrationOutcome};
use crate::store::{Assignment, Collection, Doc, Hub, Registration, StoreError};

/// Who a device request claims to be, as the transport received it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRequest<'a> {
    pub id_scope: &'a str,
    /// The registration ID as the device spelled it (already percent-decoded).
    pub registration_id: &'a str,
    /// The SAS token (HTTP `Authorization`, MQTT password).
    pub authorization: Option<&'a str>,
    /// The transport the request arrived on (for metrics).
    pub protocol: Protocol,
    /// The client's address, for the failure budget (`throttle`).
    pub peer: Option<std::net::IpAddr>,
}

/// The enrollment a device proved it belongs to.
#[derive(Debug, Clone)]
enum Enrollment {
    Individual(Box<IndividualEnrollment>),
    Group(Box<EnrollmentGroup>),
}

impl Enrollment {
    fn settings(&self) -> &EnrollmentSettings {
        match self {
            Self::Individual(e) => &e.settings,
            Self::Group(g) => &g.settings,
        }
    }

    fn group_id(&self) -> Option<&str> {
        match self {
            Self::Individual(_) => None,
            Self::Group(g) => Some(&g.enrollment_group_id),
        }
    }
}

/// A device that proved its identity.
struct Attested {
    registration_id: RegistrationId,
    enrollment: Enrollment,
    /// The device's primary and secondary keys (derived, for group members); they become the hub
    /// identity's keys so the device connects to its hub with the key it already has.
    keys: [SymmetricKey; 2],
}

/// `PUT …/register`: attest, allocate, record durably, answer.
pub async fn register(
    app: &App,
    req: DeviceRequest<'_>,
    body: &DeviceRegistration,
) -> Result<RegistrationOperationStatus, ApiError> {
    let started = tokio::time::Instant::now();
    let result = assign(app, req, body).await;
    app.metrics
        .request(req.protocol, Operation::Register, started.elapsed());
    result
}

async fn assign(
    app: &App,
    req: DeviceRequest<'_>,
    body: &DeviceRegistration,
) -> Result<RegistrationOperationStatus, ApiError> {
    if let Some(in_body) = &body.registration_id
        && !in_body.eq_ignore_ascii_case(req.registration_id)
    {
        return Err(ApiError::InvalidArgument(format!(
            "the body's registrationId {in_body:?} differs from the path's {:?}",
            req.registration_id
        )));
    }
    let attested = attest(app, req).await?;
    if let Err(e) = refuse_unsupported(body) {
        audit::append(
            app,
            vec![device_record(
                req,
                "registration.register",
                audit::refused(&e),
            )],
        )
        .await;
        return Err(e);
    }
    let operation_id = new_operation_id();

    if !attested.enrollment.settings().is_enabled() {
        audit::append(
            app,
            vec![device_record(
                req,
                "registration.register",
                "disabled".into(),
            )],
        )
        .await;
        // Nothing is recorded: the device learns its enrollment is disabled and stops.
        app.metrics
            .registration(None, RegistrationOutcome::Disabled);
        let state = DeviceRegistrationResult::bare(
            attested.registration_id.as_str(),
            RegistrationStatus::Disabled,
        );
        return Ok(RegistrationOperationStatus {
            operation_id,
            status: RegistrationStatus::Disabled,
            registration_state: Some(state),
        });
    }

    let previous = app
        .store
        .registration(attested.registration_id.as_str())
        .await?;
    let hubs = app.store.hubs().await?;
    let now = now_text();
    let mut record = Registration {
        registration_id: attested.registration_id.as_str().to_owned(),
        enrollment_group_id: attested.enrollment.group_id().map(str::to_owned),
        status: RegistrationStatus::Assigned.as_str().to_owned(),
        substatus: None,
        assigned_hub: None,
        device_id: None,
        error_code: None,
        error_message: None,
        created: previous
            .as_ref()
            .map_or_else(|| now.clone(), |p| p.created.clone()),
        updated: now.clone(),
        etag: new_etag(),
        operation_id: operation_id.clone(),
        payload: None,
    };
    let mut assignment = Assignment {
        registration: record.clone(),
        device: None,
        remove_device: None,
        audit: Vec::new(),
    };

    match choose_hub(&attested, previous.as_ref(), &hubs) {
        Ok(hub) => {
            let device_id = match &attested.enrollment {
                Enrollment::Individual(e) => e
                    .device_id
                    .clone()
                    .unwrap_or_else(|| e.registration_id.clone()),
                Enrollment::Group(_) => attested.registration_id.as_str().to_owned(),
            };
            let moved_from = previous
                .as_ref()
                .filter(|p| p.status == RegistrationStatus::Assigned.as_str())
                .and_then(|p| Some((p.assigned_hub.clone()?, p.device_id.clone()?)))
                .filter(|(old_hub, old_id)| {
                    !old_hub.eq_ignore_ascii_case(&hub.hostname) || *old_id != device_id
                });
            let policy = attested
                .enrollment
                .settings()
                .reprovision_policy
                .unwrap_or_default();
            record.substatus = Some(
                match (&moved_from, &previous) {
                    (Some(_), _) if policy.migrate_device_data => Substatus::DeviceDataMigrated,
                    (Some(_), _) => Substatus::DeviceDataReset,
                    (None, Some(p)) => p
                        .substatus
                        .as_deref()
                        .and_then(Substatus::parse)
                        .unwrap_or(Substatus::InitialAssignment),
                    (None, None) => Substatus::InitialAssignment,
                }
                .as_str()
                .to_owned(),
            );
            record.assigned_hub = Some(hub.hostname.clone());
            record.device_id = Some(device_id.clone());
            assignment.remove_device = moved_from.and_then(|(old_host, old_id)| {
                hubs.iter()
                    .find(|h| h.builtin && h.hostname.eq_ignore_ascii_case(&old_host))
                    .map(|h| (h.name.clone(), old_id))
            });
            if hub.builtin {
                let settings = attested.enrollment.settings();
                assignment.device = Some(crate::hub::assigned_device(
                    &hub.name,
                    &device_id,
                    [attested.keys[0].to_base64(), attested.keys[1].to_base64()],
                    settings.other.get("capabilities"),
                    settings.other.get("initialTwin"),
                ));
            }
        }
        Err((code, message)) => {
            record.status = RegistrationStatus::Failed.as_str().to_owned();
            record.error_code = Some(code.code());
            record.error_message = Some(message);
        }
    }
    assignment.registration = record.clone();
    assignment.audit = vec![device_record(
        req,
        "registration.register",
        record.status.clone(),
    )];
    // Acknowledged only once durable.
    app.store.record_assignment(assignment).await?;
    let outcome = if record.status == RegistrationStatus::Assigned.as_str() {
        RegistrationOutcome::Assigned
    } else {
        RegistrationOutcome::Failed
    };
    app.metrics
        .registration(record.assigned_hub.as_deref(), outcome);

    let state = registration_result(&record);
    match app.settings.register_response {
        crate::app::RegisterResponse::Assigning { .. } => Ok(RegistrationOperationStatus {
            operation_id,
            status: RegistrationStatus::Assigning,
            registration_state: None,
        }),
        crate::app::RegisterResponse::Assigned => Ok(RegistrationOperationStatus {
            operation_id,
            status: state.status,
            registration_state: Some(state),
        }),
    }
}

/// `GET …/operations/{operationId}`: the outcome of the device's latest registration.
pub async fn operation_status(
    app: &App,
    req: DeviceRequest<'_>,
    operation_id: &str,
) -> Result<RegistrationOperationStatus, ApiError> {
    let started = tokio::time::Instant::now();
    let result = find_operation(app, req, operation_id).await;
    app.metrics
        .request(req.protocol, Operation::OperationStatus, started.elapsed());
    result
}

async fn find_operation(
    app: &App,
    req: DeviceRequest<'_>,
    operation_id: &str,
) -> Result<RegistrationOperationStatus, ApiError> {
    let attested = attest(app, req).await?;
    let record = app
        .store
        .registration(attested.registration_id.as_str())
        .await?
        .filter(|r| r.operation_id == operation_id)
        .ok_or_else(|| ApiError::OperationNotFound(operation_id.to_owned()))?;
    let state = registration_result(&record);
    Ok(RegistrationOperationStatus {
        operation_id: record.operation_id,
        status: state.status,
        registration_state: Some(state),
    })
}

/// `POST /{idScope}/registrations/{id}`: the device's registration record, flat.
pub async fn registration_status(
    app: &App,
    req: DeviceRequest<'_>,
) -> Result<DeviceRegistrationResult, ApiError> {
    let started = tokio::time::Instant::now();
    let result = find_registration(app, req).await;
    app.metrics
        .request(req.protocol, Operation::StatusLookup, started.elapsed());
    result
}

async fn find_registration(
    app: &App,
    req: DeviceRequest<'_>,
) -> Result<DeviceRegistrationResult, ApiError> {
    let attested = attest(app, req).await?;
    let record = app
        .store
        .registration(attested.registration_id.as_str())
        .await?
        .ok_or_else(|| ApiError::RegistrationNotFound(attested.registration_id.to_string()))?;
    Ok(registration_result(&record))
}

/// Parses a register body (DeviceRegistration JSON); an empty or blank body reads as `{}`. Any
/// other JSON than an object is refused, as is a body over the DPS message limit (MQTT and AMQP
/// payloads reach here unbounded by HTTP's body limit).
pub fn parse_registration_body(body: &[u8]) -> Result<DeviceRegistration, ApiError> {
    if body.len() > usher_proto::model::MAX_MESSAGE_BYTES {
        return Err(ApiError::BodyTooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeviceRegistration::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::InvalidJson(format!(
            "a DeviceRegistration must be a JSON object, not {}",
            json_kind(&value)
        )));
    }
    serde_json::from_value(value).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Refuses what Usher does not do rather than pretending to: a register body asking for a device
/// certificate (`csr`, api-version 2025-07-01-preview; `clientCertificateCsr`,
/// 2021-11-01-preview) would otherwise be `assigned` with no certificate.
fn refuse_unsupported(body: &DeviceRegistration) -> Result<(), ApiError> {
    let field = if body.client_certificate_csr.is_some() {
        "clientCertificateCsr"
    } else if body.csr.is_some() {
        "csr"
    } else {
        return Ok(());
    };
    Err(ApiError::CertificateIssuanceNotConfigured { field })
}

/// The status code and retry-after every transport answers a successful request with: `202` and
/// the configured retry-after while `assigning`, `200` once the status is final.
pub fn response_status(app: &App, status: &RegistrationOperationStatus) -> (u16, Option<u32>) {
    match (status.status, app.settings.register_response) {
        (
            RegistrationStatus::Assigning,
            crate::app::RegisterResponse::Assigning { retry_after_secs },
        ) => (202, Some(retry_after_secs)),
        (RegistrationStatus::Assigning, crate::app::RegisterResponse::Assigned) => (202, Some(2)),
        _ => (200, None),
    }
}

/// The device's view of a registration record.
pub fn registration_result(r: &Registration) -> DeviceRegistrationResult {
    let status = RegistrationStatus::parse(&r.status).unwrap_or(RegistrationStatus::Failed);
    DeviceRegistrationResult {
        created_date_time_utc: Some(r.created.clone()),
        assigned_hub: r.assigned_hub.clone(),
        device_id: r.device_id.clone(),
        substatus: r.substatus.as_deref().and_then(Substatus::parse),
        error_code: r.error_code,
        error_message: r.error_message.clone(),
        last_updated_date_time_utc: Some(r.updated.clone()),
        etag: Some(r.etag.clone()),
        payload: r.payload.clone(),
        symmetric_key: Some(SymmetricKeyRegistrationResult {
            enrollment_group_id: r.enrollment_group_id.clone(),
        }),
        ..DeviceRegistrationResult::bare(r.registration_id.clone(), status)
    }
}

/// Attests a device, within the failure budgets of its address and registration ID: a request
/// whose budget is spent is refused (429) before any key is looked at, and a refused credential
/// spends from both budgets. Every attestation decided counts in
/// `usher_attestation_attempts_total`, whatever made it fail; a throttled request is counted in
/// `usher_throttled_requests_total` instead.
async fn attest(app: &App, req: DeviceRequest<'_>) -> Result<Attested, ApiError> {
    if let Err((by, retry_after_secs)) = app.throttle.check(req.peer, req.registration_id) {
        app.metrics.throttled(by);
        return Err(ApiError::Throttled {
            by,
            retry_after_secs,
        });
    }
    let result = check_credential(app, req).await;
    app.metrics.attestation(req.protocol, result.is_ok());
    if let Err(e @ ApiError::Unauthorized(_)) = &result {
        app.throttle.failed(req.peer, req.registration_id);
        audit::append(
            app,
            vec![device_record(req, "device.attest", audit::refused(e))],
        )
        .await;
    }
    result
}

/// The audit record of a device request's decision.
fn device_record(
    req: DeviceRequest<'_>,
    action: &str,
    result: String,
) -> usher_proto::audit::Record {
    audit::record(
        format!("device:{}", req.registration_id),
        req.peer,
        action,
        req.registration_id,
        result,
    )
}

/// Checks the device's token against its individual enrollment (primary, then secondary key) or,
/// if it has none, against every symmetric-key group (keys derived from the group's primary, then
/// secondary key, with the registration ID as the device spelled it).
async fn check_credential(app: &App, req: DeviceRequest<'_>) -> Result<Attested, ApiError> {
    let DeviceRequest {
        id_scope,
        registration_id,
        authorization,
        protocol: _,
        peer: _,
    } = req;
    let registration_id =
        RegistrationId::parse(registration_id).map_err(ApiError::InvalidRegistrationId)?;
    if !app.instance.id_scope.eq_ignore_ascii_case(id_scope) {
        return Err(AuthError::UnknownIdScope(id_scope.to_owned()).into());
    }
    let token = SasToken::parse(authorization.ok_or(AuthError::MissingAuthorization)?)
        .map_err(AuthError::from)?;
    let now = Now {
        unix_secs: unix_now(),
        skew_secs: app.settings.clock_skew_secs,
    };
    token
        .check_device_claims(id_scope, registration_id.as_str(), now)
        .map_err(AuthError::from)?;

    if let Some(doc) = app
        .store
        .doc(Collection::Enrollments, registration_id.as_str())
        .await?
    {
        let enrollment: IndividualEnrollment = parse_doc(&doc)?;
        let keys = stored_keys(&enrollment.attestation)?;
        let index = token
            .check_signature(&[&keys[0], &keys[1]])
            .map_err(AuthError::from)?;
        tracing::debug!(registration_id = %registration_id, key = index, "individual enrollment attested");
        return Ok(Attested {
            registration_id,
            enrollment: Enrollment::Individual(Box::new(enrollment)),
            keys,
        });
    }

    for (_, doc) in app
        .store
        .docs(Collection::EnrollmentGroups, 0, u64::MAX)
        .await?
    {
        let group: EnrollmentGroup = parse_doc(&doc)?;
        if group.attestation.kind != AttestationType::SymmetricKey {
            continue;
        }
        let [primary, secondary] = stored_keys(&group.attestation)?;
        let keys = [
            primary.derive_device_key(registration_id.as_str()),
            secondary.derive_device_key(registration_id.as_str()),
        ];
        if let Ok(index) = token.check_signature(&[&keys[0], &keys[1]]) {
            tracing::debug!(registration_id = %registration_id, group = %group.enrollment_group_id, key = index, "group member attested");
            return Ok(Attested {
                registration_id,
                enrollment: Enrollment::Group(Box::new(group)),
                keys,
            });
        }
    }
    Err(AuthError::NoMatchingEnrollment.into())
}

fn parse_doc<T: serde::de::DeserializeOwned>(doc: &Doc) -> Result<T, ApiError> {
    serde_json::from_value(doc.json.clone())
        .map_err(|e| ApiError::Store(StoreError::Corrupt(format!("enrollment {}: {e}", doc.id))))
}

fn stored_keys(
    attestation: &usher_proto::service::AttestationMechanism,
) -> Result<[SymmetricKey; 2], ApiError> {
    if attestation.kind != AttestationType::SymmetricKey {
        return Err(AuthError::UnsupportedAttestation(attestation.kind.as_str()).into());
    }
    let corrupt =
        |what: &str| ApiError::Store(StoreError::Corrupt(format!("stored {what} key is invalid")));
    let sk = attestation
        .symmetric_key
        .as_ref()
        .ok_or_else(|| corrupt("symmetric"))?;
    let key = |k: &Option<String>, what| {
        k.as_deref()
            .and_then(|k| SymmetricKey::from_base64(k).ok())
            .ok_or_else(|| corrupt(what))
    };
    Ok([
        key(&sk.primary_key, "primary")?,
        key(&sk.secondary_key, "secondary")?,
    ])
}

/// Picks the hub per the enrollment's allocation policy, or says why none can be picked.
fn choose_hub<'h>(
    attested: &Attested,
    previous: Option<&Registration>,
    hubs: &'h [Hub],
) -> Result<&'h Hub, (ErrorCode, String)> {
    let settings = attested.enrollment.settings();
    let by_host = |host: &str| hubs.iter().find(|h| h.hostname.eq_ignore_ascii_case(host));

    // "Never re-provision": an assigned device stays where it is while that hub exists.
    if settings
        .reprovision_policy
        .is_some_and(|p| !p.update_hub_assignment)
        && let Some(current) = previous
            .filter(|p| p.status == RegistrationStatus::Assigned.as_str())
            .and_then(|p| p.assigned_hub.as_deref())
            .and_then(by_host)
    {
        return Ok(current);
    }

    let named = settings.named_hubs();
    let policy = settings
        .allocation_policy
        .unwrap_or(AllocationPolicy::Hashed);
    match policy {
        AllocationPolicy::Static => {
            let [host] = named.as_slice() else {
                return Err((
                    ErrorCode::LinkedHubNotFound,
                    "static allocation needs exactly one hub in iotHubs".into(),
                ));
            };
            by_host(host).ok_or_else(|| {
                (
                    ErrorCode::LinkedHubNotFound,
                    format!("the hub {host:?} is not linked"),
                )
            })
        }
        AllocationPolicy::Hashed | AllocationPolicy::GeoLatency => {
            // A self-hosted instance has no latency data: geoLatency falls back to hashed.
            let pool: Vec<&Hub> = if named.is_empty() {
                hubs.iter().filter(|h| h.apply_allocation_policy).collect()
            } else {
                named.iter().filter_map(|n| by_host(n)).collect()
            };
            let candidates: Vec<Candidate<'_>> = pool
                .iter()
                .map(|h| Candidate {
                    hostname: &h.hostname,
                    weight: h.weight,
                })
                .collect();
            allocation::hashed(attested.registration_id.as_str(), &candidates)
                .and_then(by_host)
                .ok_or_else(|| {
                    (
                        ErrorCode::LinkedHubNotFound,
                        "no linked hub is available for allocation".into(),
                    )
                })
        }
        AllocationPolicy::Custom => Err((
            ErrorCode::CustomAllocationFailed,
            "custom allocation (webhooks) is not supported by this Usher version".into(),
        )),
    }
}

/// A new operation ID in the shape DPS uses (`{digit}.{16 hex}.{uuid}`), from unreserved characters
/// only, since some SDKs put it into a URL or topic unencoded.
fn new_operation_id() -> String {
    let uuid = uuid::Uuid::new_v4();
    let bytes = uuid.as_bytes();
    let hex: String = bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("5.{hex}.{}", uuid::Uuid::new_v4())
}
