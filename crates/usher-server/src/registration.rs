//! The registration core: attestation, allocation and the durable record of an assignment. Every
//! device transport (HTTPS now, MQTT later) calls these functions; none has logic of its own.

use usher_proto::decision;
use usher_proto::model::{
    DeviceRegistration, DeviceRegistrationResult, RegistrationOperationStatus, RegistrationStatus,
    Substatus, SymmetricKeyRegistrationResult,
};
use usher_proto::sas::{Now, SasToken};
use usher_proto::service::{
    AttestationType, EnrollmentGroup, EnrollmentSettings, IndividualEnrollment,
};
use usher_proto::{RegistrationId, SymmetricKey};

use crate::app::{App, Protocol};
use crate::audit;
use crate::clock::{new_etag, unix_now};
use crate::error::{ApiError, AuthError};
use crate::metrics::{Operation, RegistrationOutcome};
use crate::store::{
    Assignment, Collection, DeviceWrite, Doc, RegisterView, Registration, StoreError, TwinWrite,
};
use crate::x509::ClientChain;

/// Who a device request claims to be, as the transport received it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRequest<'a> {
    pub id_scope: &'a str,
    /// The registration ID as the device spelled it (already percent-decoded).
    pub registration_id: &'a str,
    /// The SAS token (HTTP `Authorization`, MQTT password).
    pub authorization: Option<&'a str>,
    /// The certificate chain the device presented in its TLS handshake (X.509 attestation);
    /// empty if none. A request with a token is attested by the token.
    pub client_chain: &'a ClientChain,
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
#[derive(Debug, Clone)]
struct Attested {
    registration_id: RegistrationId,
    enrollment: Enrollment,
    /// The device's primary and secondary keys (derived, for group members); they become the hub
    /// identity's keys so the device connects to its hub with the key it already has. Random (and
    /// never shown) for a device that attested with a certificate.
    keys: [SymmetricKey; 2],
    /// How the hub identity authenticates: `sas`, or `selfSigned` with the thumbprints of the
    /// certificate it attested with (or of the individual enrollment's certificates).
    hub_auth: crate::hub::DeviceAuth,
    /// For a certificate: the registration result's `x509` (the device's and the signing
    /// certificate's info).
    x509: Option<serde_json::Value>,
    /// The CA certificates the enrollment names in `caReferences`, as they were when the device
    /// attested: the decision checks the chain again against them if the enrollment changed.
    cas: Vec<crate::certificates::NamedCa>,
}

/// What the device attested with, kept to check it again if the enrollment changes before the
/// registration commits.
#[derive(Clone)]
enum Presented {
    Token(String),
    Chain(ClientChain),
}

impl std::fmt::Debug for Presented {
    /// The token never reaches `Debug` output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(..)"),
            Self::Chain(c) => c.fmt(f),
        }
    }
}

impl Presented {
    fn of(req: &DeviceRequest<'_>) -> Self {
        match req.authorization {
            None if req.client_chain.is_present() => Self::Chain(req.client_chain.clone()),
            token => Self::Token(token.unwrap_or_default().to_owned()),
        }
    }
}

/// `PUT …/register`: attest, then decide and record in one write transaction over the rows as
/// they are at commit (`store::register`), and answer. A custom-allocation enrollment records the
/// operation as `assigning` and calls its webhook in the background; the device polls.
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
    let mut attested = attest(app, req).await?;
    let issued = match issue_certificate(app, &attested, body) {
        // The device now authenticates to its hub with the issued certificate: DPS provisions
        // the identity with it, so the identity's thumbprints become the issued certificate's.
        Ok(Some(chain)) => {
            if let Some(leaf) = chain.first().and_then(|b64| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(b64).ok()
            }) {
                attested.hub_auth = crate::hub::DeviceAuth::of_certificate(&leaf.into());
            }
            Some(chain)
        }
        Ok(None) => None,
        Err(e) => {
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
    };
    let modes = testing_modes(app, &attested);
    app.testing.admit(
        &modes,
        req.registration_id,
        crate::testing::Request::Register,
    )?;
    let operation_id = new_operation_id();
    let job = RegisterJob {
        attested,
        presented: Presented::of(&req),
        issued,
        operation_id: operation_id.clone(),
        payload: body.payload.clone(),
        device_address: req.peer,
        audit: device_record(req, "registration.register", String::new()),
        webhook: None,
        skew_secs: app.settings.clock_skew_secs,
    };
    let decided = run(app, job).await?;
    if let Decided::Pending { request } = &decided {
        crate::webhook::spawn(app.clone(), request.clone());
    }
    let record = decided.record();
    let state = match record {
        Some(r) => operation_result(r),
        None => DeviceRegistrationResult::bare(req.registration_id, RegistrationStatus::Disabled),
    };
    let held = app.testing.started(&modes, &operation_id);
    let immediate = !held
        && matches!(
            app.settings.register_response,
            crate::app::RegisterResponse::Assigned
        )
        || state.status == RegistrationStatus::Disabled;
    Ok(
        if immediate && state.status != RegistrationStatus::Assigning {
            RegistrationOperationStatus {
                operation_id,
                status: state.status,
                registration_state: Some(state),
            }
        } else {
            RegistrationOperationStatus {
                operation_id,
                status: RegistrationStatus::Assigning,
                registration_state: None,
            }
        },
    )
}

/// A registration to decide and write.
#[derive(Debug, Clone)]
pub(crate) struct RegisterJob {
    attested: Attested,
    /// The device's token or certificate chain, to re-check against the enrollment if it changed
    /// since attestation.
    presented: Presented,
    /// The certificate chain issued for the request's CSR.
    issued: Option<Vec<String>>,
    pub(crate) operation_id: String,
    /// The device's custom payload (for a webhook).
    payload: Option<serde_json::Value>,
    device_address: Option<std::net::IpAddr>,
    /// The audit record, its result filled in once decided.
    audit: usher_proto::audit::Record,
    /// The webhook's answer, on the second pass of a custom allocation.
    pub(crate) webhook: Option<decision::Webhook>,
    skew_secs: u64,
}

/// What a registration came to.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Made once per registration and consumed at once.
pub(crate) enum Decided {
    /// Written: assigned, failed, or (custom allocation) assigning.
    Recorded(Registration),
    /// The enrollment is disabled: nothing written.
    Disabled,
    /// Recorded as assigning; the webhook is to be called with this request.
    Pending { request: crate::webhook::Call },
    /// The device registered again meanwhile: this (webhook) pass no longer applies.
    Superseded,
}

impl Decided {
    fn record(&self) -> Option<&Registration> {
        match self {
            Self::Recorded(r) => Some(r),
            Self::Pending { request } => Some(&request.record),
            Self::Disabled | Self::Superseded => None,
        }
    }
}

/// Decides and writes a registration in one store transaction, and counts its final outcome
/// (`usher_registration_attempts_total`; a custom allocation counts when its webhook's answer is
/// recorded, on its second pass here).
pub(crate) async fn run(app: &App, job: RegisterJob) -> Result<Decided, ApiError> {
    let registration_id = job.attested.registration_id.as_str().to_owned();
    let group_id = job.attested.enrollment.group_id().map(str::to_owned);
    let scope = app.instance.id_scope.clone();
    let decided = app
        .store
        .register(&registration_id, group_id.as_deref(), move |view| {
            decide_in_transaction(&scope, job, view)
        })
        .await?;
    match &decided {
        Decided::Recorded(r) if r.status == RegistrationStatus::Assigned => app
            .metrics
            .registration(r.assigned_hub.as_deref(), RegistrationOutcome::Assigned),
        Decided::Recorded(r) if r.status == RegistrationStatus::Failed => app
            .metrics
            .registration(r.assigned_hub.as_deref(), RegistrationOutcome::Failed),
        Decided::Disabled => app
            .metrics
            .registration(None, RegistrationOutcome::Disabled),
        Decided::Recorded(_) | Decided::Pending { .. } | Decided::Superseded => {}
    }
    Ok(decided)
}

/// The registration decision over the rows as they are at commit: re-reads the enrollment (it
/// may have been disabled, changed or deleted since the device was attested), runs the pure
/// decision and turns its outcome into the rows to write.
fn decide_in_transaction(
    scope: &str,
    job: RegisterJob,
    view: RegisterView,
) -> Result<(Assignment, Decided), ApiError> {
    let RegisterJob {
        attested,
        presented,
        issued,
        operation_id,
        payload,
        device_address,
        mut audit,
        webhook,
        skew_secs,
    } = job;
    // A webhook's answer applies only to the operation that called it.
    if webhook.is_some()
        && view
            .previous
            .as_ref()
            .is_none_or(|p| p.operation_id != operation_id)
    {
        return Ok((Assignment::default(), Decided::Superseded));
    }
    let enrollment = current_enrollment(scope, &attested, &presented, skew_secs, &view)?;
    let Some(enrollment) = enrollment else {
        audit.result = "disabled".into();
        return Ok((
            Assignment {
                audit: vec![audit],
                ..Assignment::default()
            },
            Decided::Disabled,
        ));
    };
    let settings = enrollment.settings();
    let previous = view.previous.as_ref().map(|p| decision::Previous {
        assigned: match (&p.assigned_hub, &p.device_id) {
            (Some(hub), Some(device_id))
                if p.status == RegistrationStatus::Assigned
                    || p.status == RegistrationStatus::Assigning =>
            {
                Some(decision::Assignment {
                    hub: hub.clone(),
                    device_id: device_id.clone(),
                    substatus: p.substatus.unwrap_or(Substatus::InitialAssignment),
                })
            }
            _ => None,
        },
        initial_hub: p.initial_hub.clone(),
    });
    let hubs: Vec<decision::LinkedHub> = view
        .hubs
        .iter()
        .map(|h| decision::LinkedHub {
            hostname: h.hostname.clone(),
            location: h.location.clone(),
            weight: h.weight,
            apply_allocation_policy: h.apply_allocation_policy,
        })
        .collect();
    let enrollment_view = decision::EnrollmentView {
        enabled: settings.is_enabled(),
        // An individual enrollment's device is named by its deviceId, else by the enrollment's own
        // spelling of the registration ID; a group's devices by their registration IDs.
        device_id: match &enrollment {
            Enrollment::Individual(e) => Some(
                e.device_id
                    .clone()
                    .unwrap_or_else(|| e.registration_id.clone()),
            ),
            Enrollment::Group(_) => None,
        },
        allocation_policy: settings.allocation_policy,
        iot_hubs: settings.named_hubs(),
        reprovision_policy: settings.reprovision_policy,
        initial_twin: settings.other.get("initialTwin").cloned(),
    };
    let registration_id = attested.registration_id.as_str();
    let outcome = decision::decide(&decision::Inputs {
        registration_id,
        enrollment: &enrollment_view,
        previous: previous.as_ref(),
        hubs: &hubs,
        default_policy: view.allocation.default_policy,
        device_location: device_address.and_then(|a| view.allocation.location_of(a)),
        webhook: webhook.as_ref(),
    });

    let now = crate::clock::now();
    let mut record = Registration {
        registration_id: registration_id.to_owned(),
        enrollment_group_id: enrollment.group_id().map(str::to_owned),
        status: RegistrationStatus::Assigned,
        substatus: None,
        assigned_hub: None,
        device_id: None,
        error_code: None,
        error_message: None,
        created: view.previous.as_ref().map_or(now, |p| p.created),
        updated: now,
        etag: new_etag(),
        operation_id,
        payload: None,
        initial_hub: view.previous.as_ref().and_then(|p| p.initial_hub.clone()),
        x509: attested.x509.clone(),
        issued_chain: issued.clone(),
    };
    let mut assignment = Assignment::default();
    let decided = match outcome {
        decision::Outcome::Disabled => {
            audit.result = "disabled".into();
            return Ok((
                Assignment {
                    audit: vec![audit],
                    ..Assignment::default()
                },
                Decided::Disabled,
            ));
        }
        decision::Outcome::CallWebhook { linked_hubs } => {
            // The operation is assigning while the webhook is called; the previous assignment
            // stays on the record, for the decision the webhook's answer completes.
            let prev = view.previous.as_ref();
            record.status = RegistrationStatus::Assigning;
            record.assigned_hub = prev.and_then(|p| p.assigned_hub.clone());
            record.device_id = prev.and_then(|p| p.device_id.clone());
            record.substatus = prev.and_then(|p| p.substatus);
            audit.result = "assigning".into();
            let call = crate::webhook::Call {
                job: RegisterJob {
                    attested: attested.clone(),
                    presented,
                    issued,
                    operation_id: record.operation_id.clone(),
                    payload: payload.clone(),
                    device_address,
                    audit: audit.clone(),
                    webhook: None,
                    skew_secs,
                },
                enrollment: enrollment_json(&enrollment),
                group: enrollment.group_id().is_some(),
                previous: previous.and_then(|p| p.assigned),
                payload,
                linked_hubs,
                record: record.clone(),
            };
            Decided::Pending { request: call }
        }
        decision::Outcome::Failed { code, message } => {
            record.status = RegistrationStatus::Failed;
            record.error_code = Some(code.code());
            record.error_message = Some(message);
            audit.result = format!("failed {}", code.code());
            Decided::Recorded(record.clone())
        }
        decision::Outcome::Assigned {
            assignment: to,
            twin,
            remove,
            payload,
            initial_hub,
        } => {
            record.assigned_hub = Some(to.hub.clone());
            record.device_id = Some(to.device_id.clone());
            record.substatus = Some(to.substatus);
            record.payload = payload;
            record.initial_hub = Some(initial_hub);
            audit.result = "assigned".into();
            let builtin_name = |host: &str| {
                view.hubs
                    .iter()
                    .find(|h| h.builtin && h.hostname.eq_ignore_ascii_case(host))
                    .map(|h| h.name.clone())
            };
            assignment.remove_device =
                remove.and_then(|(hub, id)| builtin_name(&hub).map(|name| (name, id)));
            if let Some(hub_name) = builtin_name(&to.hub) {
                let initial = match &twin {
                    decision::Twin::Initial(t) => t.clone(),
                    _ => settings.other.get("initialTwin").cloned(),
                };
                let device = crate::hub::assigned_device(
                    &hub_name,
                    &to.device_id,
                    attested.keys.clone(),
                    &attested.hub_auth,
                    settings.other.get("capabilities"),
                    initial.as_ref(),
                );
                let twin = match twin {
                    decision::Twin::Initial(_) => TwinWrite::Replace,
                    decision::Twin::Keep => TwinWrite::Keep,
                    decision::Twin::MigrateFrom { hub, device_id } => match builtin_name(&hub) {
                        Some(from) => TwinWrite::CopyFrom(from, device_id),
                        None => TwinWrite::Replace,
                    },
                };
                assignment.device = Some(DeviceWrite { device, twin });
            }
            Decided::Recorded(record.clone())
        }
    };
    assignment.registration = Some(record);
    assignment.audit = vec![audit];
    Ok((assignment, decided))
}

/// The enrollment the device belongs to as it is now, or `None` if it is disabled (a disabled
/// individual enrollment overrides its group). If the enrollment changed since attestation, the
/// token is checked again against it.
fn current_enrollment(
    scope: &str,
    attested: &Attested,
    presented: &Presented,
    skew_secs: u64,
    view: &RegisterView,
) -> Result<Option<Enrollment>, ApiError> {
    let gone = || ApiError::Unauthorized(AuthError::NoMatchingEnrollment);
    let recheck = |attestation: &usher_proto::service::AttestationMechanism, group: bool| {
        let token = match presented {
            Presented::Token(token) => token,
            Presented::Chain(chain) => {
                return check_chain(
                    chain,
                    attested.registration_id.as_str(),
                    attestation,
                    group,
                    &attested.cas,
                )
                .map(|_| ());
            }
        };
        let token = SasToken::parse(token).map_err(AuthError::from)?;
        token
            .check_device_claims(
                scope,
                attested.registration_id.as_str(),
                Now {
                    unix_secs: unix_now(),
                    skew_secs,
                },
            )
            .map_err(AuthError::from)?;
        let [p, s] = stored_keys(attestation)?;
        let keys = if group {
            [
                p.derive_device_key(attested.registration_id.as_str()),
                s.derive_device_key(attested.registration_id.as_str()),
            ]
        } else {
            [p, s]
        };
        token
            .check_signature(&[&keys[0], &keys[1]])
            .map_err(AuthError::from)?;
        Ok::<_, ApiError>(())
    };
    match (&attested.enrollment, &view.individual, &view.group) {
        (Enrollment::Individual(_), None, _) => Err(gone()),
        (Enrollment::Individual(e), Some(doc), _) => {
            let now: IndividualEnrollment = parse_doc(doc)?;
            if now.settings.etag != e.settings.etag {
                recheck(&now.attestation, false)?;
            }
            Ok(now
                .settings
                .is_enabled()
                .then(|| Enrollment::Individual(Box::new(now))))
        }
        // A device of a group with an individual enrollment of its own: that one decides. A
        // disabled one blocks the device; an enabled one means the device must use its keys.
        (Enrollment::Group(_), Some(doc), _) => {
            let individual: IndividualEnrollment = parse_doc(doc)?;
            if individual.settings.is_enabled() {
                Err(gone())
            } else {
                Ok(None)
            }
        }
        (Enrollment::Group(_), None, None) => Err(gone()),
        (Enrollment::Group(g), None, Some(doc)) => {
            let now: EnrollmentGroup = parse_doc(doc)?;
            if now.settings.etag != g.settings.etag {
                recheck(&now.attestation, true)?;
            }
            Ok(now
                .settings
                .is_enabled()
                .then(|| Enrollment::Group(Box::new(now))))
        }
    }
}

/// The enrollment as a custom allocation webhook receives it: its attestation reduced to its type.
fn enrollment_json(e: &Enrollment) -> serde_json::Value {
    let mut json = match e {
        Enrollment::Individual(e) => serde_json::to_value(e.as_ref()),
        Enrollment::Group(g) => serde_json::to_value(g.as_ref()),
    }
    .unwrap_or_default();
    if let Some(obj) = json.as_object_mut() {
        let kind = obj
            .get("attestation")
            .and_then(|a| a.get("type"))
            .cloned()
            .unwrap_or_default();
        obj.insert("attestation".into(), serde_json::json!({ "type": kind }));
        obj.remove("registrationState");
    }
    json
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
    let modes = testing_modes(app, &attested);
    app.testing
        .admit(&modes, req.registration_id, crate::testing::Request::Poll)?;
    let record = app
        .store
        .registration(attested.registration_id.as_str())
        .await?
        .filter(|r| r.operation_id == operation_id)
        .ok_or_else(|| ApiError::OperationNotFound(operation_id.to_owned()))?;
    if app.testing.still_assigning(&modes, operation_id) {
        // As DPS answers while it works: the registration ID and the status, nothing else.
        return Ok(RegistrationOperationStatus {
            operation_id: record.operation_id,
            status: RegistrationStatus::Assigning,
            registration_state: Some(DeviceRegistrationResult::bare(
                record.registration_id,
                RegistrationStatus::Assigning,
            )),
        });
    }
    let state = operation_result(&record);
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

/// The firmware-testing modes for a device: its enrollment's, else the instance's.
fn testing_modes(app: &App, attested: &Attested) -> crate::testing::TestingModes {
    crate::testing::TestingModes::of_enrollment(&attested.enrollment.settings().other)
        .unwrap_or_else(|| app.settings.testing.clone())
}

/// Checks a device's credentials without acting on them. AMQP devices present their token once,
/// at SASL, and DPS refuses a connection whose token does not attest (`device-protocol.md` §6);
/// every request is still checked again by [`register`] and [`operation_status`].
pub async fn authenticate(app: &App, req: DeviceRequest<'_>) -> Result<(), ApiError> {
    attest(app, req).await.map(|_| ())
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

/// A device certificate for the register body's `csr` (api-version 2025-07-01-preview), signed by
/// the configured issuing CA. Refuses what Usher does not do rather than pretending to: a `csr`
/// with no issuing CA configured, or a `clientCertificateCsr` (2021-11-01-preview), would
/// otherwise be `assigned` with no certificate.
fn issue_certificate(
    app: &App,
    attested: &Attested,
    body: &DeviceRegistration,
) -> Result<Option<Vec<String>>, ApiError> {
    if body.client_certificate_csr.is_some() {
        return Err(ApiError::CertificateIssuanceNotConfigured {
            field: "clientCertificateCsr",
        });
    }
    let Some(csr) = &body.csr else {
        return Ok(None);
    };
    let Some(ca) = &app.settings.issuing_ca else {
        return Err(ApiError::CertificateIssuanceNotConfigured { field: "csr" });
    };
    let policy =
        crate::issuance::CredentialPolicy::from_fields(&attested.enrollment.settings().other)
            .map_err(ApiError::InvalidArgument)?;
    ca.issue(
        attested.registration_id.as_str(),
        csr,
        &policy,
        time::OffsetDateTime::now_utc(),
    )
    .map(Some)
    .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// The status code and retry-after every transport answers a successful request with: `202` and
/// the configured retry-after while `assigning`, `200` once the status is final.
pub fn response_status(app: &App, status: &RegistrationOperationStatus) -> (u16, Option<u32>) {
    if status.status == RegistrationStatus::Assigning
        && let Some(secs) = app.testing.retry_after(&status.operation_id)
    {
        return (202, Some(secs));
    }
    match (status.status, app.settings.register_response) {
        (
            RegistrationStatus::Assigning,
            crate::app::RegisterResponse::Assigning { retry_after_secs },
        ) => (202, Some(retry_after_secs)),
        (RegistrationStatus::Assigning, crate::app::RegisterResponse::Assigned) => (202, Some(2)),
        _ => (200, None),
    }
}

/// The answer about a register operation: the record, and the certificate issued for its CSR
/// (which a status lookup does not show).
fn operation_result(r: &Registration) -> DeviceRegistrationResult {
    let mut result = registration_result(r);
    if r.status == RegistrationStatus::Assigned {
        result.issued_certificate_chain = r.issued_chain.clone();
    }
    result
}

/// The device's view of a registration record.
pub fn registration_result(r: &Registration) -> DeviceRegistrationResult {
    let status = r.status;
    DeviceRegistrationResult {
        created_date_time_utc: Some(usher_proto::model::format_timestamp(r.created)),
        assigned_hub: r.assigned_hub.clone(),
        device_id: r.device_id.clone(),
        substatus: r.substatus,
        error_code: r.error_code,
        error_message: r.error_message.clone(),
        last_updated_date_time_utc: Some(usher_proto::model::format_timestamp(r.updated)),
        etag: Some(r.etag.clone()),
        payload: r.payload.clone(),
        symmetric_key: r.x509.is_none().then(|| SymmetricKeyRegistrationResult {
            enrollment_group_id: r.enrollment_group_id.clone(),
        }),
        x509: r.x509.clone(),
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
        client_chain,
        protocol: _,
        peer: _,
    } = req;
    let registration_id =
        RegistrationId::parse(registration_id).map_err(ApiError::InvalidRegistrationId)?;
    if !app.instance.id_scope.eq_ignore_ascii_case(id_scope) {
        return Err(AuthError::UnknownIdScope(id_scope.to_owned()).into());
    }
    if authorization.is_none() && client_chain.is_present() {
        return check_certificate(app, registration_id, client_chain).await;
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
        match token.check_signature(&[&keys[0], &keys[1]]) {
            Ok(index) => {
                tracing::debug!(registration_id = %registration_id, key = index, "individual enrollment attested");
                return Ok(Attested {
                    registration_id,
                    enrollment: Enrollment::Individual(Box::new(enrollment)),
                    keys,
                    hub_auth: crate::hub::DeviceAuth::Sas,
                    x509: None,
                    cas: Vec::new(),
                });
            }
            // A disabled individual enrollment is how one device of a group is blocked: a device
            // proving membership of a group with its derived key is told it is disabled.
            Err(_) if !enrollment.settings.is_enabled() => {}
            Err(e) => return Err(AuthError::from(e).into()),
        }
    }

    let groups = app.groups.groups(&app.store).await?;
    for g in candidate_groups(app, &groups, &registration_id).await? {
        let crate::groups::GroupCredential::Keys(group_keys) = &g.credential else {
            continue;
        };
        let keys = [
            group_keys[0].derive_device_key(registration_id.as_str()),
            group_keys[1].derive_device_key(registration_id.as_str()),
        ];
        if let Ok(index) = token.check_signature(&[&keys[0], &keys[1]]) {
            tracing::debug!(registration_id = %registration_id, group = %g.group.enrollment_group_id, key = index, "group member attested");
            return Ok(Attested {
                registration_id,
                enrollment: Enrollment::Group(Box::new(g.group.clone())),
                keys,
                hub_auth: crate::hub::DeviceAuth::Sas,
                x509: None,
                cas: Vec::new(),
            });
        }
    }
    Err(AuthError::NoMatchingEnrollment.into())
}

/// The groups a device may belong to, in the order to try them: the one its registration record
/// names first (a device that registered before costs one group), then those whose
/// registration-ID pattern admits it.
async fn candidate_groups<'g>(
    app: &App,
    groups: &'g crate::groups::Groups,
    registration_id: &RegistrationId,
) -> Result<Vec<&'g crate::groups::Group>, ApiError> {
    let known = app
        .store
        .registration(registration_id.as_str())
        .await?
        .and_then(|r| r.enrollment_group_id);
    let first = known.as_deref().and_then(|id| groups.get(id));
    let candidates = groups.candidates(registration_id.as_str());
    let rest = candidates.into_iter().filter(|g| {
        known
            .as_deref()
            .is_none_or(|id| !g.group.enrollment_group_id.eq_ignore_ascii_case(id))
    });
    Ok(first.into_iter().chain(rest).collect())
}

/// X.509 attestation, as DPS does it: the device's registration ID is its certificate's common
/// name. An individual enrollment of that ID decides if its certificate is the device's (a
/// disabled one that does not match still blocks the device of a group, as it does for SAS);
/// otherwise the first X.509 group whose signing certificate the device's chain leads to.
async fn check_certificate(
    app: &App,
    registration_id: RegistrationId,
    chain: &ClientChain,
) -> Result<Attested, ApiError> {
    let random_keys = || -> Result<[SymmetricKey; 2], ApiError> {
        Ok([
            crate::app::new_symmetric_key(32)?,
            crate::app::new_symmetric_key(32)?,
        ])
    };
    if let Some(doc) = app
        .store
        .doc(Collection::Enrollments, registration_id.as_str())
        .await?
    {
        let enrollment: IndividualEnrollment = parse_doc(&doc)?;
        let cas = crate::certificates::resolve(
            app,
            &crate::certificates::references(enrollment.attestation.x509.as_ref()),
        )
        .await?;
        match check_chain(
            chain,
            registration_id.as_str(),
            &enrollment.attestation,
            false,
            &cas,
        ) {
            Ok((hub_auth, signing)) => {
                tracing::debug!(registration_id = %registration_id, "individual X.509 enrollment attested");
                return Ok(Attested {
                    registration_id,
                    enrollment: Enrollment::Individual(Box::new(enrollment)),
                    keys: random_keys()?,
                    hub_auth,
                    x509: Some(x509_result(chain, None, signing.as_ref())),
                    cas,
                });
            }
            Err(_) if !enrollment.settings.is_enabled() => {}
            Err(e) => return Err(e),
        }
    }
    let groups = app.groups.groups(&app.store).await?;
    let mut refusal = None;
    for g in candidate_groups(app, &groups, &registration_id).await? {
        let crate::groups::GroupCredential::Signing {
            certificates,
            ca_references,
        } = &g.credential
        else {
            continue;
        };
        let cas = crate::certificates::resolve(app, ca_references).await?;
        let now = unix_now();
        let anchors = certificates
            .iter()
            .map(|c| Ok(c.clone()))
            .chain(cas.iter().map(|c| c.certificate.clone()));
        match chain_to_anchor(chain, registration_id.as_str(), anchors, now) {
            Ok((hub_auth, cert)) => {
                tracing::debug!(registration_id = %registration_id, group = %g.group.enrollment_group_id, "X.509 group member attested");
                return Ok(Attested {
                    x509: Some(x509_result(
                        chain,
                        Some(&g.group.enrollment_group_id),
                        Some(&cert),
                    )),
                    registration_id,
                    enrollment: Enrollment::Group(Box::new(g.group.clone())),
                    keys: random_keys()?,
                    hub_auth,
                    cas,
                });
            }
            Err(Some(e)) => refusal = Some(e),
            Err(None) => {}
        }
    }
    Err(refusal
        .map_or(AuthError::NoMatchingEnrollment, AuthError::Certificate)
        .into())
}

/// The first anchor (a signing certificate, or a CA certificate as resolved) the device's chain
/// leads to, and the hub identity its certificate gets; or the last refusal (`None`: there was no
/// anchor to try). The one check of a chain for groups and for enrollments naming CAs.
fn chain_to_anchor(
    chain: &ClientChain,
    registration_id: &str,
    anchors: impl IntoIterator<
        Item = Result<rustls_pki_types::CertificateDer<'static>, crate::x509::X509Error>,
    >,
    now: u64,
) -> Result<
    (
        crate::hub::DeviceAuth,
        rustls_pki_types::CertificateDer<'static>,
    ),
    Option<crate::x509::X509Error>,
> {
    let mut last = None;
    for anchor in anchors {
        let reached = anchor.and_then(|cert| {
            crate::x509::check_group(chain, registration_id, &cert, now)?;
            // check_group has checked the leaf.
            let leaf = chain.leaf().ok_or(crate::x509::X509Error::NoCertificate)?;
            Ok((crate::hub::DeviceAuth::of_certificate(leaf), cert))
        });
        match reached {
            Ok(found) => return Ok(found),
            Err(e) => last = Some(e),
        }
    }
    Err(last)
}

/// The registration result's `x509`: the device certificate's info, and for a group member the
/// group and its signing certificate's info.
fn x509_result(
    chain: &ClientChain,
    group: Option<&str>,
    signing: Option<&rustls_pki_types::CertificateDer<'_>>,
) -> serde_json::Value {
    let info = |c: &rustls_pki_types::CertificateDer<'_>| crate::x509::info(c).ok();
    let mut result = serde_json::json!({
        "certificateInfo": chain.leaf().and_then(info),
    });
    if let Some(group) = group {
        result["enrollmentGroupId"] = group.into();
    }
    if let Some(signing) = signing.and_then(info) {
        result["signingCertificateInfo"] = signing;
    }
    result
}

/// Checks a device's chain against one enrollment's X.509 attestation: an individual
/// enrollment's client certificates, or the signing certificates a group holds or any enrollment
/// names in `caReferences` (`cas`, resolved when the device attested). Returns the hub identity's
/// authentication and, for a chain, the certificate it led to.
fn check_chain(
    chain: &ClientChain,
    registration_id: &str,
    attestation: &usher_proto::service::AttestationMechanism,
    group: bool,
    cas: &[crate::certificates::NamedCa],
) -> Result<
    (
        crate::hub::DeviceAuth,
        Option<rustls_pki_types::CertificateDer<'static>>,
    ),
    ApiError,
> {
    if attestation.kind != AttestationType::X509 {
        return Err(AuthError::UnsupportedAttestation(attestation.kind.as_str()).into());
    }
    let certs = stored_certificates(attestation)?;
    let now = unix_now();
    let references = crate::certificates::references(attestation.x509.as_ref());
    if group || (certs.iter().all(Option::is_none) && !references.is_empty()) {
        let anchors = certs
            .iter()
            .flatten()
            .map(|c| Ok(c.clone()))
            .chain(references.iter().map(|name| {
                cas.iter()
                    .find(|c| c.name.eq_ignore_ascii_case(name))
                    .map_or_else(
                        || Err(crate::x509::X509Error::CaNotFound(name.clone())),
                        |c| c.certificate.clone(),
                    )
            }));
        return match chain_to_anchor(chain, registration_id, anchors, now) {
            Ok((auth, cert)) => Ok((auth, Some(cert))),
            Err(last) => Err(AuthError::Certificate(
                last.unwrap_or(crate::x509::X509Error::NotEnrolled),
            )
            .into()),
        };
    }
    crate::x509::check_individual(
        chain,
        registration_id,
        [certs[0].as_ref(), certs[1].as_ref()],
        now,
    )
    .map_err(AuthError::Certificate)?;
    Ok((
        // IoT Hub shows SHA-256 thumbprints; one certificate stands for both.
        {
            let primary = certs[0]
                .as_ref()
                .map(crate::x509::sha256_thumbprint)
                .unwrap_or_default();
            crate::hub::DeviceAuth::SelfSigned {
                secondary: Some(
                    certs[1]
                        .as_ref()
                        .map_or_else(|| primary.clone(), crate::x509::sha256_thumbprint),
                ),
                primary,
            }
        },
        None,
    ))
}

/// The primary and secondary certificates of an X.509 attestation: an individual enrollment's
/// `clientCertificates`, or a group's `signingCertificates` (a group that references a CA by
/// name has none here). Stored certificates were validated when written.
pub(crate) fn stored_certificates(
    attestation: &usher_proto::service::AttestationMechanism,
) -> Result<[Option<rustls_pki_types::CertificateDer<'static>>; 2], ApiError> {
    let x509 = attestation.x509.as_ref();
    let set = x509
        .and_then(|x| x.get("clientCertificates"))
        .filter(|v| !v.is_null())
        .or_else(|| x509.and_then(|x| x.get("signingCertificates")));
    let cert = |which: &str| {
        set.and_then(|s| s.get(which))
            .and_then(|c| c.get("certificate"))
            .and_then(serde_json::Value::as_str)
            .map(|text| {
                crate::x509::parse_stored(text).map_err(|e| {
                    ApiError::Store(StoreError::Corrupt(format!(
                        "stored {which} certificate: {e}"
                    )))
                })
            })
            .transpose()
    };
    Ok([cert("primary")?, cert("secondary")?])
}

fn parse_doc<T: serde::de::DeserializeOwned>(doc: &Doc) -> Result<T, ApiError> {
    serde_json::from_value(doc.json.clone())
        .map_err(|e| ApiError::Store(StoreError::Corrupt(format!("enrollment {}: {e}", doc.id))))
}

pub(crate) fn stored_keys(
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

/// A new operation ID in the shape DPS uses (`{digit}.{16 hex}.{uuid}`), from unreserved characters
/// only, since some SDKs put it into a URL or topic unencoded.
fn new_operation_id() -> String {
    let uuid = uuid::Uuid::new_v4();
    let bytes = uuid.as_bytes();
    let hex: String = bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("5.{hex}.{}", uuid::Uuid::new_v4())
}
