use super::*;
use serde_json::json;

#[test]
fn python_nulls_read_as_absent() {
    let body = json!({
        "registrationId": "dev-1", "deviceId": null, "registrationState": null,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": null, "secondaryKey": null}, "tpm": null, "x509": null},
        "capabilities": null, "iotHubHostName": null, "initialTwin": null, "etag": null,
        "provisioningStatus": null, "reprovisionPolicy": null, "allocationPolicy": null, "iotHubs": null,
        "customAllocationDefinition": null, "optionalDeviceInformation": null
    });
    let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
    assert_eq!(e.registration_id, "dev-1");
    assert_eq!(e.attestation.kind, AttestationType::SymmetricKey);
    assert_eq!(
        e.attestation.symmetric_key,
        Some(SymmetricKeyAttestation::default())
    );
    assert!(e.settings.other.is_empty(), "{:?}", e.settings.other);
    assert!(e.settings.is_enabled());
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({
            "registrationId": "dev-1",
            "attestation": {"type": "symmetricKey", "symmetricKey": {}}
        })
    );
}

#[test]
fn unknown_and_unused_fields_round_trip() {
    let body = json!({
        "enrollmentGroupId": "g1",
        "attestation": {"type": "symmetrickey"},
        "initialTwin": {"tags": {"a": 1}, "properties": {"desired": {"b": 2}}},
        "capabilities": {"iotEdge": true},
        "customAllocationDefinition": {"webhookUrl": "https://x", "apiVersion": "2021-10-01"},
        "credentialPolicyName": "p",
        "allocationPolicy": "GEOLATENCY",
        "reprovisionPolicy": {"updateHubAssignment": false, "migrateDeviceData": true},
        "provisioningStatus": "Disabled"
    });
    let g: EnrollmentGroup = serde_json::from_value(body).unwrap();
    assert!(!g.settings.is_enabled());
    assert_eq!(
        g.settings.allocation_policy,
        Some(AllocationPolicy::GeoLatency)
    );
    let out = serde_json::to_value(&g).unwrap();
    assert_eq!(out["attestation"]["type"], "symmetricKey");
    assert_eq!(out["allocationPolicy"], "geoLatency");
    assert_eq!(out["provisioningStatus"], "disabled");
    assert_eq!(out["credentialPolicyName"], "p");
    assert_eq!(out["initialTwin"]["properties"]["desired"]["b"], 2);
    assert_eq!(out["capabilities"]["iotEdge"], true);
    assert_eq!(out["reprovisionPolicy"]["updateHubAssignment"], false);
}

#[test]
fn unknown_enum_values_are_refused_with_the_choices() {
    let body = json!({"registrationId": "d", "attestation": {"type": "password"}});
    let err = serde_json::from_value::<IndividualEnrollment>(body)
        .unwrap_err()
        .to_string();
    assert!(err.contains("none, tpm, x509, symmetricKey"), "{err}");
}

#[test]
fn redaction_removes_keys_only() {
    let att = AttestationMechanism {
        kind: AttestationType::SymmetricKey,
        symmetric_key: Some(SymmetricKeyAttestation {
            primary_key: Some("k".into()),
            secondary_key: Some("k2".into()),
        }),
        tpm: None,
        x509: None,
    };
    assert_eq!(
        serde_json::to_value(att.redacted()).unwrap(),
        json!({"type": "symmetricKey"})
    );
}

#[test]
fn named_hubs_prefers_iot_hubs_then_legacy_field() {
    let mut s = EnrollmentSettings {
        iot_hub_host_name: Some("legacy".into()),
        ..Default::default()
    };
    assert_eq!(s.named_hubs(), vec!["legacy"]);
    s.iot_hubs = Some(vec!["a".into(), "b".into()]);
    assert_eq!(s.named_hubs(), vec!["a", "b"]);
    s.iot_hubs = Some(vec![]);
    assert_eq!(s.named_hubs(), vec!["legacy"]);
}
