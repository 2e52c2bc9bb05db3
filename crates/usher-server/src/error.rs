//! `ApiError`: everything a request can fail with, and the one place that maps failures to DPS
//! error codes. Transports render it (`http::error_response`, the MQTT and AMQP answers).

use usher_proto::api_version::ApiVersionError;
use usher_proto::model::ErrorBody;
use usher_proto::{ErrorCode, IdError, SasError};

use crate::app::Protocol;

use crate::clock::now;
use crate::store::StoreError;

/// Why a credential was refused. Every variant is answered with 401 and the bare message
/// "Unauthorized", so a device cannot learn whether an enrollment exists; the detail goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the request has no Authorization header")]
    MissingAuthorization,
    #[error("the Authorization header is not text")]
    AuthorizationNotText,
    #[error(transparent)]
    Token(#[from] SasError),
    #[error("the ID scope {0:?} is not this instance's")]
    UnknownIdScope(String),
    #[error("no enrollment accepts this device's key")]
    NoMatchingEnrollment,
    #[error("the enrollment uses {0} attestation, which this transport does not support")]
    UnsupportedAttestation(&'static str),
    #[error("no access policy is named {0:?}")]
    UnknownPolicy(String),
    #[error("the key is neither of the access policy's keys")]
    WrongPolicyKey,
    #[error("certificate refused: {0}")]
    Certificate(#[from] crate::x509::X509Error),
}

/// Everything a request can fail with. Variants name what happened; [`ApiError::code`] maps them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] AuthError),
    #[error("the access policy {policy:?} lacks the {right} right")]
    MissingRight { policy: String, right: &'static str },
    #[error("the request body is not valid JSON for this operation: {0}")]
    InvalidJson(String),
    #[error("the request body is larger than 96 KB")]
    BodyTooLarge,
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("{0}")]
    ApiVersion(#[from] ApiVersionError),
    /// A register body asks for a device certificate, which this Usher does not issue yet.
    #[error("{}", csr_message(field))]
    CertificateIssuanceNotConfigured { field: &'static str },
    #[error("invalid registration ID: {0}")]
    InvalidRegistrationId(IdError),
    #[error("invalid enrollment group ID: {0}")]
    InvalidEnrollmentGroupId(IdError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("a bulk operation may hold at most 10 items; {0} given")]
    TooManyEnrollments(usize),
    #[error("the ID {0:?} appears more than once in the request")]
    DefinedMultipleTimes(String),
    #[error("enrollment {0:?} not found")]
    EnrollmentNotFound(String),
    #[error("enrollment group {0:?} not found")]
    EnrollmentGroupNotFound(String),
    #[error("device registration {0:?} not found")]
    RegistrationNotFound(String),
    #[error("operation {0:?} not found")]
    OperationNotFound(String),
    #[error("hub {0:?} not found")]
    HubNotFound(String),
    #[error("device {0:?} not found")]
    DeviceNotFound(String),
    #[error("access policy {0:?} not found")]
    PolicyNotFound(String),
    #[error("an access policy named {0:?} already exists")]
    PolicyExists(String),
    #[error("enrollment {0:?} already exists; send If-Match to update it")]
    EnrollmentExists(String),
    #[error("enrollment group {0:?} already exists; send If-Match to update it")]
    EnrollmentGroupExists(String),
    #[error("a hub named {0:?} or with that host name already exists")]
    HubExists(String),
    #[error("CA certificate {0:?} not found")]
    CaCertificateNotFound(String),
    #[error("a CA certificate named {0:?} already exists; send If-Match to replace it")]
    CaCertificateExists(String),
    #[error("the If-Match etag does not match the stored etag")]
    EtagMismatch,
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("{0} is not allowed on this path")]
    MethodNotAllowed(String),
    #[error("too many failed attestations for this {}; retry after {retry_after_secs} s", by.as_str())]
    Throttled {
        by: crate::throttle::ThrottledBy,
        retry_after_secs: u32,
    },
    /// A firmware-testing mode's injected failure (`testing`).
    #[error("injected by the firmware-testing mode (usherTesting.fault): status {status}")]
    InjectedFault { status: u16, retry_after_secs: u32 },
    /// A DPS quota, enforced by the firmware-testing mode `quotas`.
    #[error("the DPS quota of {what} is exceeded; retry after {retry_after_secs} s")]
    QuotaExceeded {
        what: &'static str,
        retry_after_secs: u32,
    },
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    /// The one mapping from failures to DPS error codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthorized(_) => ErrorCode::IotHubUnauthorizedAccess,
            Self::MissingRight { .. } => ErrorCode::InsufficientRights,
            Self::InvalidJson(_) => ErrorCode::InvalidJson,
            Self::BodyTooLarge => ErrorCode::RequestEntityTooLarge,
            Self::BodyUnreadable(_) => ErrorCode::BadRequest,
            Self::BodyTimeout(_) => ErrorCode::RequestTimeout,
            Self::ApiVersion(_) | Self::CertificateIssuanceNotConfigured { .. } => {
                ErrorCode::ArgumentInvalid
            }
            Self::InvalidRegistrationId(_) => ErrorCode::InvalidRegistrationId,
            Self::InvalidEnrollmentGroupId(_) => ErrorCode::InvalidEnrollmentGroupId,
            Self::InvalidArgument(_) => ErrorCode::ArgumentInvalid,
            Self::TooManyEnrollments(_) => ErrorCode::TooManyEnrollments,
            Self::DefinedMultipleTimes(_) => ErrorCode::RegistrationIdDefinedMultipleTimes,
            Self::EnrollmentNotFound(_) => ErrorCode::EnrollmentNotFound,
            Self::EnrollmentGroupNotFound(_) => ErrorCode::EnrollmentGroupNotFound,
            Self::RegistrationNotFound(_) => ErrorCode::DeviceRegistrationNotFound,
            Self::OperationNotFound(_) => ErrorCode::AsyncOperationNotFound,
            Self::HubNotFound(_) => ErrorCode::LinkedHubNotFound,
            Self::DeviceNotFound(_) => ErrorCode::DeviceNotFound,
            Self::PolicyNotFound(_) => ErrorCode::AccessPolicyNotFound,
            Self::PolicyExists(_) => ErrorCode::AccessPolicyConflict,
            Self::EnrollmentExists(_) => ErrorCode::EnrollmentConflict,
            Self::EnrollmentGroupExists(_) => ErrorCode::EnrollmentGroupConflict,
            Self::HubExists(_) => ErrorCode::LinkedHubConflict,
            Self::CaCertificateNotFound(_) => ErrorCode::CaCertificateNotFound,
            Self::CaCertificateExists(_) => ErrorCode::CaCertificateConflict,
            Self::EtagMismatch => ErrorCode::PreconditionFailed,
            Self::NoRoute(_) => ErrorCode::RouteNotFound,
            Self::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            Self::Throttled { .. } | Self::QuotaExceeded { .. } => ErrorCode::Throttled,
            Self::InjectedFault { status, .. } => match status {
                429 => ErrorCode::Throttled,
                503 => ErrorCode::ServiceUnavailable,
                _ => ErrorCode::InternalServerError,
            },
            Self::Store(_) => ErrorCode::InternalServerError,
        }
    }

    /// What the client is told. Credential failures and server faults say no more than their code.
    pub fn public_message(&self) -> String {
        match self {
            Self::Unauthorized(_) | Self::Store(_) => self.code().message().to_owned(),
            other => other.to_string(),
        }
    }

    /// The Retry-After that goes with this error, in seconds.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Self::Throttled {
                retry_after_secs, ..
            }
            | Self::InjectedFault {
                retry_after_secs, ..
            }
            | Self::QuotaExceeded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The error body, with a fresh tracking ID.
    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(
            self.code(),
            Some(&self.public_message()),
            uuid::Uuid::new_v4().to_string(),
            now(),
        );
        if let Self::CertificateIssuanceNotConfigured { field } = self {
            body.info = Some([("field".to_owned(), (*field).to_owned())].into());
        }
        body
    }

    /// The one log line for a refused request, on every transport: credential refusals at INFO
    /// with the reason (never a key or a signature: no error here carries one), server faults at
    /// ERROR, everything else at DEBUG.
    pub fn log(&self, protocol: Protocol, peer: Option<std::net::SocketAddr>) {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        let protocol = protocol.as_str();
        match self {
            Self::Store(_) => tracing::error!(protocol, peer, error = %self, "request failed"),
            Self::Unauthorized(_) | Self::MissingRight { .. } | Self::Throttled { .. } => {
                tracing::info!(protocol, peer, error = %self, "request refused");
            }
            _ => tracing::debug!(protocol, peer, error = %self, "request refused"),
        }
    }
}

/// What a register body carrying a certificate request is told. For `clientCertificateCsr` it is
/// DPS's own text: IoT Edge's identity service matches it and registers again without the CSR.
fn csr_message(field: &str) -> String {
    if field == "clientCertificateCsr" {
        "Device sent CSR but it is not configured in the service.".to_owned()
    } else {
        format!(
            "The register body carries {field} (a certificate signing request), but certificate \
             issuance is not configured in this Usher (no issuing CA); register without {field}."
        )
    }
}
