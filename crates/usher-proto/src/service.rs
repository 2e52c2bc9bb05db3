//! The management-API wire model (`service-api.md` §2): enrollments, enrollment groups and
//! attestation mechanisms, as the official service SDKs send and expect them.
//!
//! Fields Usher does not act on yet are kept in `other` so that every field a client sends
//! round-trips. `null` on input reads as absent, because the Python client sends explicit nulls for
//! every unset field.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::model::DeviceRegistrationResult;

/// The registration state the management API shows has the same shape as the device's view.
pub type DeviceRegistrationState = DeviceRegistrationResult;

/// An individual enrollment: one device, its registration ID and its attestation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    pub registration_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Shown on GET only; ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
    pub attestation: AttestationMechanism,
    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// An enrollment group: any number of devices sharing one attestation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    pub enrollment_group_id: String,
    pub attestation: AttestationMechanism,
    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// What individual enrollments and groups have in common.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Every other field (`initialTwin`, `capabilities`, `customAllocationDefinition`, …), kept as sent.
    #[serde(flatten, deserialize_with = "drop_nulls")]
    pub other: Map<String, Value>,
}

impl EnrollmentSettings {
    /// Whether devices may register through this enrollment (absent means enabled).
    pub fn is_enabled(&self) -> bool {
        self.provisioning_status != Some(ProvisioningStatus::Disabled)
    }

    /// The hubs the enrollment names: `iotHubs`, or the legacy single `iotHubHostName`.
    pub fn named_hubs(&self) -> Vec<String> {
        match (&self.iot_hubs, &self.iot_hub_host_name) {
            (Some(hubs), _) if !hubs.is_empty() => hubs.clone(),
            (_, Some(host)) if !host.is_empty() => vec![host.clone()],
            _ => Vec::new(),
        }
    }
}

fn drop_nulls<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    let mut map = Map::deserialize(d)?;
    map.retain(|_, v| !v.is_null());
    Ok(map)
}

/// How a device proves its identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationMechanism {
    #[serde(rename = "type")]
    pub kind: AttestationType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<Value>,
}

impl AttestationMechanism {
    /// The same mechanism with secret keys removed, as GET and query show it.
    pub fn redacted(&self) -> Self {
        Self {
            symmetric_key: None,
            ..self.clone()
        }
    }
}

/// A symmetric-key attestation. Keys are base64; either may be absent on input, and Usher
/// generates the missing ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
}

/// Generates the string-enum types of the service API: exact spelling on output, case-insensitive
/// on input (the SDKs and the CLI disagree on case).
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Parses case-insensitively.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(text))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).ok_or_else(|| {
                    let expected: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    D::Error::custom(format!("unknown {} {text:?}; expected one of {}", stringify!($name), expected.join(", ")))
                })
            }
        }
    };
}

wire_enum!(
    /// The kind of attestation.
    AttestationType { None = "none", Tpm = "tpm", X509 = "x509", SymmetricKey = "symmetricKey" }
);
wire_enum!(
    /// Whether an enrollment accepts registrations.
    ProvisioningStatus { Enabled = "enabled", Disabled = "disabled" }
);
wire_enum!(
    /// How a hub is chosen for a device.
    AllocationPolicy { Hashed = "hashed", GeoLatency = "geoLatency", Static = "static", Custom = "custom" }
);

/// What happens when an assigned device registers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// The body of a query request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuerySpecification {
    #[serde(default)]
    pub query: String,
}

#[cfg(test)]
mod tests;
