use super::*;
use time::macros::datetime;

fn assigned() -> RegistrationOperationStatus {
    RegistrationOperationStatus {
        operation_id: "5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550".into(),
        status: RegistrationStatus::Assigned,
        registration_state: Some(DeviceRegistrationResult {
            created_date_time_utc: Some(format_timestamp(
                datetime!(2022-08-31 22:02:50.5163352 UTC),
            )),
            assigned_hub: Some("MyExampleHub.azure-devices.net".into()),
            device_id: Some("my-symkey-device".into()),
            substatus: Some(Substatus::InitialAssignment),
            last_updated_date_time_utc: Some(format_timestamp(
                datetime!(2022-08-31 22:02:50.7370676 UTC),
            )),
            etag: Some("IjY5MDAzNTUyLTAwMDAtMDMwMC0wMDAwLTYzMGZkYThhMDAwMCI=".into()),
            ..DeviceRegistrationResult::bare("my-symkey-device", RegistrationStatus::Assigned)
        }),
    }
}

#[test]
fn assigned_status_matches_the_docs_shape() {
    insta::assert_json_snapshot!(assigned(), @r#"
    {
      "operationId": "5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550",
      "status": "assigned",
      "registrationState": {
        "registrationId": "my-symkey-device",
        "createdDateTimeUtc": "2022-08-31T22:02:50.5163352Z",
        "assignedHub": "MyExampleHub.azure-devices.net",
        "deviceId": "my-symkey-device",
        "status": "assigned",
        "substatus": "initialAssignment",
        "lastUpdatedDateTimeUtc": "2022-08-31T22:02:50.7370676Z",
        "etag": "IjY5MDAzNTUyLTAwMDAtMDMwMC0wMDAwLTYzMGZkYThhMDAwMCI="
      }
    }
    "#);
}

#[test]
fn assigning_status_has_no_registration_state() {
    let status = RegistrationOperationStatus {
        operation_id: "4.d0a6".into(),
        status: RegistrationStatus::Assigning,
        registration_state: None,
    };
    assert_eq!(
        serde_json::to_string(&status).unwrap(),
        r#"{"operationId":"4.d0a6","status":"assigning"}"#
    );
}

#[test]
fn failed_state_carries_error_code_and_message() {
    let state = DeviceRegistrationResult {
        error_code: Some(ErrorCode::CustomAllocationIotHubNotSpecified.code()),
        error_message: Some("no hub".into()),
        symmetric_key: Some(SymmetricKeyRegistrationResult {
            enrollment_group_id: Some("g1".into()),
        }),
        ..DeviceRegistrationResult::bare("dev", RegistrationStatus::Failed)
    };
    insta::assert_json_snapshot!(state, @r#"
    {
      "registrationId": "dev",
      "status": "failed",
      "errorCode": 400208,
      "errorMessage": "no hub",
      "symmetricKey": {
        "enrollmentGroupId": "g1"
      }
    }
    "#);
}

#[test]
fn error_body_shape() {
    let body = ErrorBody::new(
        ErrorCode::IotHubUnauthorizedAccess,
        None,
        "f40da7ba-8c91-4796-8fc3-89e1dfbdbe05".into(),
        datetime!(2019-03-15 19:43:02.7904455 UTC),
    );
    insta::assert_json_snapshot!(body, @r#"
    {
      "errorCode": 401002,
      "trackingId": "f40da7ba-8c91-4796-8fc3-89e1dfbdbe05",
      "message": "Unauthorized",
      "timestampUtc": "2019-03-15T19:43:02.7904455Z"
    }
    "#);
}

#[test]
fn every_sdk_register_body_parses() {
    let python = r#"{"payload": null, "registrationId": "dev1"}"#;
    let node = r#"{"registrationId":"dev1"}"#;
    let node_payload = r#"{"registrationId":"dev1","payload":{"model":"x"}}"#;
    let c_old = r#"{ "registrationId":"dev1" }"#;
    let c_escaped = r#"{"registrationId":"dev1","payload":{"url":"a\/b"}}"#;
    let scalar_payload = r#"{"registrationId":"dev1","payload":42}"#;
    for body in [python, node, c_old] {
        let reg: DeviceRegistration = serde_json::from_str(body).unwrap();
        assert_eq!(
            reg,
            DeviceRegistration {
                registration_id: Some("dev1".into()),
                ..Default::default()
            },
            "{body}"
        );
    }
    let reg: DeviceRegistration = serde_json::from_str(node_payload).unwrap();
    assert_eq!(reg.payload, Some(serde_json::json!({"model": "x"})));
    let reg: DeviceRegistration = serde_json::from_str(c_escaped).unwrap();
    assert_eq!(reg.payload, Some(serde_json::json!({"url": "a/b"})));
    let reg: DeviceRegistration = serde_json::from_str(scalar_payload).unwrap();
    assert_eq!(reg.payload, Some(serde_json::json!(42)));
    // An empty object (Node's GET body) is a valid, empty registration.
    let reg: DeviceRegistration = serde_json::from_str("{}").unwrap();
    assert_eq!(reg, DeviceRegistration::default());
}

#[test]
fn statuses_round_trip() {
    for s in ["unassigned", "assigning", "assigned", "failed", "disabled"] {
        let status = RegistrationStatus::parse(s).unwrap();
        assert_eq!(serde_json::to_value(status).unwrap(), serde_json::json!(s));
        assert_eq!(status.as_str(), s);
    }
    assert_eq!(RegistrationStatus::parse("Assigned"), None);
    assert!(RegistrationStatus::Assigned.is_terminal());
    assert!(!RegistrationStatus::Assigning.is_terminal());
}

#[test]
fn timestamps_have_seven_fractional_digits() {
    assert_eq!(
        format_timestamp(datetime!(2023-05-09 20:31:23 UTC)),
        "2023-05-09T20:31:23.0000000Z"
    );
    assert_eq!(
        format_timestamp(datetime!(2023-05-09 22:31:23.123456789 +02:00)),
        "2023-05-09T20:31:23.1234567Z"
    );
}

#[test]
fn timestamps_round_trip_through_dps_format() {
    let text = "2022-08-31T22:02:50.5163352Z";
    let at = parse_timestamp(text).unwrap();
    assert_eq!(format_timestamp(at), text);
    assert_eq!(
        format_timestamp(parse_timestamp("2023-05-09T20:31:22Z").unwrap()),
        "2023-05-09T20:31:22.0000000Z"
    );
    assert_eq!(parse_timestamp("yesterday"), None);
}
