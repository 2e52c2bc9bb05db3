//! The built-in hubs' registry: device and twin documents as the IoT Hub service API (api-version
//! 2021-04-12) shows them, and the rules for creating and changing them. Transport-free; the HTTP
//! routes are in `http/hub.rs`.

use serde_json::{Map, Value, json};
use usher_proto::SymmetricKey;

use crate::app::new_symmetric_key;
use crate::clock::{new_etag, now};
use crate::error::ApiError;
use crate::management::{GENERATED_KEY_BYTES, Precondition};
use crate::store::{HubDevice, Policy, Right};
use usher_proto::model::format_timestamp;

/// Rights a hub policy can hold.
pub const HUB_RIGHTS: &[&str] = &[
    "RegistryRead",
    "RegistryWrite",
    "ServiceConnect",
    "DeviceConnect",
];
/// The owner policy of every built-in hub.
pub const HUB_OWNER_POLICY: &str = "iothubowner";
/// What IoT Hub shows for times that never happened.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// The policies a built-in hub starts with, with fresh keys.
pub fn default_policies() -> Result<Vec<Policy>, ApiError> {
    let mut out = Vec::new();
    for (name, rights) in [
        (HUB_OWNER_POLICY, HUB_RIGHTS),
        ("service", &["ServiceConnect"][..]),
        ("device", &["DeviceConnect"][..]),
        ("registryRead", &["RegistryRead"][..]),
        ("registryReadWrite", &["RegistryRead", "RegistryWrite"][..]),
    ] {
        out.push(Policy {
            name: name.to_owned(),
            primary_key: new_symmetric_key(GENERATED_KEY_BYTES)?,
            secondary_key: new_symmetric_key(GENERATED_KEY_BYTES)?,
            rights: rights.iter().filter_map(|r| Right::parse(r)).collect(),
        });
    }
    Ok(out)
}

/// A new generation ID (IoT Hub's are 18 decimal digits).
pub fn new_generation_id() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 1_000_000_000_000_000_000;
    format!("{n:018}")
}

/// How a device created by a DPS assignment authenticates to its hub, as IoT Hub names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// `sas`: the device's own symmetric keys (for a group member, the derived ones).
    Sas,
    /// `selfSigned`: certificate thumbprints. DPS creates every identity a certificate
    /// provisioned this way, also a group member's (with its own certificate's thumbprint, not the
    /// CA's: Microsoft's provisioning e2e suite asserts `selfSigned` for a device of an
    /// intermediate-signed group), and IoT Hub shows SHA-256 thumbprints.
    SelfSigned {
        primary: String,
        secondary: Option<String>,
    },
}

impl DeviceAuth {
    /// The identity of a device that authenticates with this one certificate (a group member's,
    /// or one issued for its CSR): its SHA-256 thumbprint as primary and, as IoT Hub shows an
    /// identity given one certificate, as secondary too.
    pub fn of_certificate(der: &rustls_pki_types::CertificateDer<'_>) -> Self {
        let thumbprint = crate::x509::sha256_thumbprint(der);
        Self::SelfSigned {
            secondary: Some(thumbprint.clone()),
            primary: thumbprint,
        }
    }

    fn doc(&self) -> (&'static str, Value) {
        match self {
            Self::Sas => ("sas", Value::Null),
            Self::SelfSigned { primary, secondary } => (
                "selfSigned",
                json!({"primaryThumbprint": primary, "secondaryThumbprint": secondary}),
            ),
        }
    }
}

/// A hub device created by a DPS assignment: its authentication (SAS keys, or the certificates'
/// thumbprints; a certificate-authenticated device's `keys` are random and never shown), the
/// enrollment's capabilities and initial twin.
pub fn assigned_device(
    hub: &str,
    device_id: &str,
    keys: [SymmetricKey; 2],
    auth: &DeviceAuth,
    capabilities: Option<&Value>,
    initial_twin: Option<&Value>,
) -> HubDevice {
    let now = now();
    let [primary_key, secondary_key] = keys;
    let iot_edge = capabilities
        .and_then(|c| c.get("iotEdge"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tags = initial_twin
        .and_then(|t| t.get("tags"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let desired = initial_twin
        .and_then(|t| t.pointer("/properties/desired"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    HubDevice {
        hub: hub.to_owned(),
        device_id: device_id.to_owned(),
        status: "enabled".into(),
        primary_key,
        secondary_key,
        created: now,
        updated: now,
        etag: new_etag(),
        generation_id: new_generation_id(),
        doc: {
            let (kind, thumbprints) = auth.doc();
            let mut doc =
                json!({"authenticationType": kind, "capabilities": {"iotEdge": iot_edge}});
            if !thumbprints.is_null() {
                doc["x509Thumbprint"] = thumbprints;
            }
            doc
        },
        twin: json!({"tags": clean(&tags), "desired": clean(&desired), "reported": {}, "desiredVersion": 1}),
        twin_version: 1,
    }
}

/// The `Device` document.
pub fn device_json(d: &HubDevice) -> Value {
    let auth_type = d
        .doc
        .get("authenticationType")
        .and_then(Value::as_str)
        .unwrap_or("sas");
    let thumbprints = d
        .doc
        .get("x509Thumbprint")
        .cloned()
        .unwrap_or_else(|| json!({"primaryThumbprint": null, "secondaryThumbprint": null}));
    let symmetric_key = if auth_type == "sas" {
        json!({"primaryKey": d.primary_key.to_base64(), "secondaryKey": d.secondary_key.to_base64()})
    } else {
        json!({"primaryKey": null, "secondaryKey": null})
    };
    let mut device = json!({
        "deviceId": d.device_id,
        "generationId": d.generation_id,
        "etag": d.etag,
        "connectionState": "Disconnected",
        "status": d.status,
        "statusReason": d.doc.get("statusReason").cloned().unwrap_or(Value::Null),
        "connectionStateUpdatedTime": NEVER,
        "statusUpdatedTime": d.doc.get("statusUpdatedTime").cloned().unwrap_or_else(|| json!(NEVER)),
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": 0,
        "authentication": {"symmetricKey": symmetric_key, "x509Thumbprint": thumbprints, "type": auth_type},
        "capabilities": d.doc.get("capabilities").cloned().unwrap_or_else(|| json!({"iotEdge": false})),
        "parentScopes": d.doc.get("parentScopes").cloned().unwrap_or_else(|| json!([])),
    });
    if let Some(scope) = d.doc.get("deviceScope") {
        device["deviceScope"] = scope.clone();
    }
    device
}

/// The `Twin` document.
pub fn twin_json(d: &HubDevice) -> Value {
    let section = |name: &str, version: i64| {
        let mut props = d
            .twin
            .get(name)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        props.insert(
            "$metadata".into(),
            json!({"$lastUpdated": format_timestamp(d.updated)}),
        );
        props.insert("$version".into(), json!(version));
        Value::Object(props)
    };
    let desired_version = d
        .twin
        .get("desiredVersion")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let device = device_json(d);
    json!({
        "deviceId": d.device_id,
        "etag": twin_etag(d.twin_version),
        "deviceEtag": d.etag,
        "status": d.status,
        "statusUpdateTime": device["statusUpdatedTime"],
        "connectionState": "Disconnected",
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": 0,
        "authenticationType": device["authentication"]["type"],
        "x509Thumbprint": device["authentication"]["x509Thumbprint"],
        "modelId": "",
        "version": d.twin_version,
        "tags": d.twin.get("tags").cloned().unwrap_or_else(|| json!({})),
        "properties": {"desired": section("desired", desired_version), "reported": section("reported", 1)},
        "capabilities": device["capabilities"],
    })
}

/// A twin etag: base64 of the twin version, as IoT Hub's look (`AAAAAAAAAAE=`).
pub fn twin_etag(version: i64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(version.to_be_bytes())
}

/// Applies a `PUT /devices/{id}` body to the stored device (or creates one), under `If-Match`.
pub fn put_device(
    hub: &str,
    id: &str,
    body: &Value,
    pre: &Precondition,
    current: Option<HubDevice>,
) -> Result<HubDevice, HubError> {
    match (&current, pre) {
        (Some(_), Precondition::None) => return Err(HubError::DeviceAlreadyExists(id.to_owned())),
        (None, Precondition::Any | Precondition::Etag(_)) => {
            return Err(HubError::DeviceNotFound(id.to_owned()));
        }
        (Some(d), Precondition::Etag(e)) if *e != d.etag => {
            return Err(HubError::PreconditionFailed);
        }
        _ => {}
    }
    if let Some(body_id) = body.get("deviceId").and_then(Value::as_str)
        && body_id != id
    {
        return Err(HubError::Argument(format!(
            "the body's deviceId {body_id:?} differs from the path's {id:?}"
        )));
    }
    let status = match body
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("enabled")
    {
        s if s.eq_ignore_ascii_case("enabled") => "enabled",
        s if s.eq_ignore_ascii_case("disabled") => "disabled",
        other => {
            return Err(HubError::Argument(format!(
                "invalid status {other:?}; use enabled or disabled"
            )));
        }
    };
    let auth = body.get("authentication").cloned().unwrap_or(Value::Null);
    let auth_type = auth
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("sas")
        .to_owned();
    if !["sas", "selfSigned", "certificateAuthority", "none"].contains(&auth_type.as_str()) {
        return Err(HubError::Argument(format!(
            "invalid authentication type {auth_type:?}"
        )));
    }
    let key = |name: &str, stored: Option<&SymmetricKey>| -> Result<SymmetricKey, HubError> {
        match auth
            .pointer(&format!("/symmetricKey/{name}"))
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
        {
            Some(k) => {
                SymmetricKey::from_base64(k).map_err(|e| HubError::Argument(format!("{name}: {e}")))
            }
            // Missing, null or empty keys are generated (Node sends empty strings to ask for that).
            None => stored.cloned().map_or_else(
                || new_symmetric_key(GENERATED_KEY_BYTES).map_err(HubError::from),
                Ok,
            ),
        }
    };
    let keep = |f: fn(&HubDevice) -> &SymmetricKey| {
        current
            .as_ref()
            .filter(|d| d.doc.get("authenticationType").and_then(Value::as_str) == Some("sas"))
            .map(f)
    };
    let (primary_key, secondary_key) = if auth_type == "sas" {
        // An update that repeats the keys it read back keeps them; omitted keys are kept too.
        (
            key("primaryKey", keep(|d| &d.primary_key))?,
            key("secondaryKey", keep(|d| &d.secondary_key))?,
        )
    } else {
        // Keys a certificate-authenticated device never shows or uses.
        (
            new_symmetric_key(GENERATED_KEY_BYTES)?,
            new_symmetric_key(GENERATED_KEY_BYTES)?,
        )
    };
    let mut doc = Map::new();
    doc.insert("authenticationType".into(), json!(auth_type));
    if let Some(t) = auth.get("x509Thumbprint").filter(|t| !t.is_null()) {
        doc.insert("x509Thumbprint".into(), t.clone());
    }
    for field in [
        "statusReason",
        "capabilities",
        "deviceScope",
        "parentScopes",
    ] {
        if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
            doc.insert(field.into(), v.clone());
        }
    }
    let now = now();
    let status_changed = current.as_ref().is_none_or(|d| d.status != status);
    let status_time = if status_changed {
        json!(format_timestamp(now))
    } else {
        current
            .as_ref()
            .and_then(|d| d.doc.get("statusUpdatedTime").cloned())
            .unwrap_or_else(|| json!(NEVER))
    };
    doc.insert("statusUpdatedTime".into(), status_time);
    Ok(match current {
        Some(d) => HubDevice {
            status: status.into(),
            primary_key,
            secondary_key,
            updated: now,
            etag: new_etag(),
            doc: Value::Object(doc),
            ..d
        },
        None => HubDevice {
            hub: hub.to_owned(),
            device_id: id.to_owned(),
            status: status.into(),
            primary_key,
            secondary_key,
            created: now,
            updated: now,
            etag: new_etag(),
            generation_id: new_generation_id(),
            doc: Value::Object(doc),
            twin: json!({"tags": {}, "desired": {}, "reported": {}, "desiredVersion": 1}),
            twin_version: 1,
        },
    })
}

/// Applies a twin change: `PATCH` merges `tags` and `properties.desired` (a `null` deletes a
/// key), `PUT` replaces them. Checks the twin etag under `If-Match`.
pub fn change_twin(
    mut d: HubDevice,
    body: &Value,
    pre: &Precondition,
    replace: bool,
) -> Result<HubDevice, HubError> {
    if let Precondition::Etag(e) = pre
        && *e != twin_etag(d.twin_version)
    {
        return Err(HubError::PreconditionFailed);
    }
    let mut twin = d.twin.as_object().cloned().unwrap_or_default();
    let mut desired_changed = false;
    if let Some(tags) = body.get("tags") {
        let merged = if replace {
            clean(tags)
        } else {
            merge(twin.get("tags").unwrap_or(&Value::Null), tags)
        };
        twin.insert("tags".into(), merged);
    }
    if let Some(desired) = body.pointer("/properties/desired") {
        let merged = if replace {
            clean(desired)
        } else {
            merge(twin.get("desired").unwrap_or(&Value::Null), desired)
        };
        twin.insert("desired".into(), merged);
        desired_changed = true;
    }
    if desired_changed {
        let v = twin
            .get("desiredVersion")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        twin.insert("desiredVersion".into(), json!(v + 1));
    }
    d.twin = Value::Object(twin);
    d.twin_version += 1;
    d.updated = now();
    Ok(d)
}

/// Merges `patch` into `base`: objects merge key by key, `null` deletes, anything else replaces.
/// `$`-prefixed keys (metadata) are ignored.
fn merge(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut out = b.clone();
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (_, p) => clean(p),
    }
}

/// A property collection without metadata keys and null values.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// IoT Hub device IDs: up to 128 ASCII letters, digits and `- . + % _ # * ? ! ( ) , : ; = @ $ '`.
/// Enrollments' `deviceId` follows the same rule, since it becomes a hub device ID.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.+%_#*?!(),:;=@$'".contains(c))
}

/// [`is_valid_device_id`], as a registry error.
pub fn validate_device_id(id: &str) -> Result<(), HubError> {
    if is_valid_device_id(id) {
        Ok(())
    } else {
        Err(HubError::Argument(format!("invalid deviceId {id:?}")))
    }
}

/// What a registry request can fail with. Answered in the hub's own error format.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("Device {0} not registered.")]
    DeviceNotFound(String),
    #[error("A device with ID '{0}' is already registered.")]
    DeviceAlreadyExists(String),
    #[error("Precondition failed: the etag does not match.")]
    PreconditionFailed,
    #[error("{0}")]
    Argument(String),
    #[error("Unauthorized: {0}")]
    Unauthorized(String),
    #[error("{0} is not supported by this hub.")]
    NotSupported(String),
    #[error("{0}")]
    ProtocolVersion(String),
    #[error("Internal error: {0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for HubError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<ApiError> for HubError {
    fn from(e: ApiError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl HubError {
    /// HTTP status and the IoT Hub error-code name and number.
    pub fn status_and_code(&self) -> (u16, &'static str, u32) {
        match self {
            Self::DeviceNotFound(_) => (404, "DeviceNotFound", 404_001),
            Self::DeviceAlreadyExists(_) => (409, "DeviceAlreadyExists", 409_001),
            Self::PreconditionFailed => (412, "PreconditionFailed", 412_001),
            Self::Argument(_) => (400, "ArgumentInvalid", 400_004),
            Self::Unauthorized(_) => (401, "IotHubUnauthorizedAccess", 401_002),
            Self::NotSupported(_) => (405, "MethodNotAllowed", 405_000),
            Self::ProtocolVersion(_) => (400, "InvalidProtocolVersion", 400_001),
            Self::Internal(_) => (500, "ServerError", 500_001),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SymmetricKey {
        SymmetricKey::from_bytes(vec![n; 32]).unwrap()
    }

    #[test]
    fn twin_patch_merges_and_null_deletes() {
        let d = assigned_device(
            "h",
            "d",
            [key(1), key(2)],
            &DeviceAuth::Sas,
            None,
            Some(&json!({"tags": {"t": 1, "u": 2}, "properties": {"desired": {"x": {"y": 1}}}})),
        );
        assert_eq!(d.twin["tags"], json!({"t": 1, "u": 2}));
        let patched = change_twin(d, &json!({"tags": {"u": null, "v": 3}, "properties": {"desired": {"x": {"z": 2}, "$version": 9}}}), &Precondition::Any, false).unwrap();
        assert_eq!(patched.twin["tags"], json!({"t": 1, "v": 3}));
        assert_eq!(patched.twin["desired"], json!({"x": {"y": 1, "z": 2}}));
        assert_eq!(patched.twin["desiredVersion"], 2);
        assert_eq!(patched.twin_version, 2);
        let stale = change_twin(
            patched.clone(),
            &json!({}),
            &Precondition::Etag(twin_etag(1)),
            false,
        );
        assert!(matches!(stale, Err(HubError::PreconditionFailed)));
        let replaced = change_twin(
            patched,
            &json!({"tags": {"only": true}}),
            &Precondition::Etag(twin_etag(2)),
            true,
        )
        .unwrap();
        assert_eq!(replaced.twin["tags"], json!({"only": true}));
        assert_eq!(twin_json(&replaced)["etag"], twin_etag(3));
    }

    #[test]
    fn put_device_rules() {
        let body = json!({"deviceId": "d1", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}});
        let created = put_device("h", "d1", &body, &Precondition::None, None).unwrap();
        assert_eq!(created.primary_key.as_bytes().len(), 32);
        assert!(matches!(
            put_device("h", "d1", &body, &Precondition::None, Some(created.clone())),
            Err(HubError::DeviceAlreadyExists(_))
        ));
        assert!(matches!(
            put_device("h", "d1", &body, &Precondition::Any, None),
            Err(HubError::DeviceNotFound(_))
        ));
        assert!(matches!(
            put_device(
                "h",
                "d1",
                &body,
                &Precondition::Etag("x".into()),
                Some(created.clone())
            ),
            Err(HubError::PreconditionFailed)
        ));
        let disabled = json!({"deviceId": "d1", "status": "disabled"});
        let updated = put_device(
            "h",
            "d1",
            &disabled,
            &Precondition::Etag(created.etag.clone()),
            Some(created.clone()),
        )
        .unwrap();
        assert_eq!(updated.status, "disabled");
        assert_eq!(
            updated.primary_key, created.primary_key,
            "omitted keys are kept"
        );
        assert_eq!(updated.generation_id, created.generation_id);
        assert_ne!(updated.etag, created.etag);
        assert!(matches!(
            put_device(
                "h",
                "d1",
                &json!({"deviceId": "other"}),
                &Precondition::None,
                None
            ),
            Err(HubError::Argument(_))
        ));
        assert!(validate_device_id("dev-1:a@b").is_ok());
        assert!(validate_device_id("dev/1").is_err());
    }
}
