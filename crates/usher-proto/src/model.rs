//! The device-API wire model: what devices send and what they get back, on every transport.
//!
//! Field names and enum spellings are the protocol (`device-protocol.md` §3). Optional fields that
//! are absent are omitted from the JSON, never sent as `null`, because the C SDK and the embedded
//! SDK parse bodies strictly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::ErrorCode;

/// The body of a register request.
///
/// Every SDK sends a different byte form (Python always includes `"payload": null`, Node omits it,
/// C may escape `/`); serde accepts them all. Unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmAttestation>,
    /// Custom data for allocation. Any JSON value; `null` reads as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// A PKCS#10 request for a device certificate, base64 DER (api-version 2025-07-01-preview and
    /// later). `null` reads as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// A PEM PKCS#10 request (api-version 2021-11-01-preview; IoT Edge's identity service sends
    /// it). `null` reads as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_csr: Option<String>,
}

/// The largest message DPS accepts on any transport (`includes/iot-dps-limits.md`): an HTTPS body,
/// an MQTT PUBLISH payload, an AMQP message.
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmAttestation {
    pub endorsement_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_root_key: Option<String>,
}

/// The state of a registration, lower-case on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationStatus {
    Unassigned,
    Assigning,
    Assigned,
    Failed,
    Disabled,
}

impl RegistrationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unassigned => "unassigned",
            Self::Assigning => "assigning",
            Self::Assigned => "assigned",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }

    /// Whether a device stops polling on this status.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Assigning | Self::Unassigned)
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Unassigned,
            Self::Assigning,
            Self::Assigned,
            Self::Failed,
            Self::Disabled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Why an assigned device is where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Substatus {
    InitialAssignment,
    DeviceDataMigrated,
    DeviceDataReset,
    ReprovisionedToInitialAssignment,
}

impl Substatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InitialAssignment => "initialAssignment",
            Self::DeviceDataMigrated => "deviceDataMigrated",
            Self::DeviceDataReset => "deviceDataReset",
            Self::ReprovisionedToInitialAssignment => "reprovisionedToInitialAssignment",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::InitialAssignment,
            Self::DeviceDataMigrated,
            Self::DeviceDataReset,
            Self::ReprovisionedToInitialAssignment,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// The answer to a register or operation-status request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    pub operation_id: String,
    pub status: RegistrationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationResult>,
}

/// The registration record as a device sees it (`registrationState`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationResult {
    pub registration_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub status: RegistrationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<Substatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyRegistrationResult>,
    /// Present on X.509 registrations: `{certificateInfo, enrollmentGroupId,
    /// signingCertificateInfo}` (`X509RegistrationResult`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<Value>,
    /// The certificate Usher issued for the register request's `csr` (base64 DER, the device's
    /// first, then the issuing CA's chain); only in the answers about that operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_certificate_chain: Option<Vec<String>>,
}

impl DeviceRegistrationResult {
    /// A result with only the ID and status set.
    pub fn bare(registration_id: impl Into<String>, status: RegistrationStatus) -> Self {
        Self {
            registration_id: registration_id.into(),
            created_date_time_utc: None,
            assigned_hub: None,
            device_id: None,
            status,
            substatus: None,
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: None,
            etag: None,
            payload: None,
            symmetric_key: None,
            x509: None,
            issued_certificate_chain: None,
        }
    }
}

/// Present on symmetric-key registrations; names the group for group members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyRegistrationResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
}

/// The error body every failed request gets (`ProvisioningServiceErrorDetails`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_code: u32,
    pub tracking_id: String,
    pub message: String,
    pub timestamp_utc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<BTreeMap<String, String>>,
}

impl ErrorBody {
    /// An error body for `code`, with the tracking ID and time the caller supplies.
    pub fn new(
        code: ErrorCode,
        message: Option<&str>,
        tracking_id: String,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            error_code: code.code(),
            tracking_id,
            message: message.unwrap_or_else(|| code.message()).to_owned(),
            timestamp_utc: format_timestamp(at),
            info: None,
        }
    }
}

/// Formats a UTC timestamp the way DPS does: seven fractional digits and a `Z`,
/// e.g. `2022-08-31T22:02:50.5163352Z`.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond() / 100
    )
}

/// Reads a timestamp as DPS and the SDKs write them (RFC 3339, any number of fractional digits).
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests;
