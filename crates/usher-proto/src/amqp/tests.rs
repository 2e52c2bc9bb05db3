use proptest::prelude::*;

use super::*;

fn identity(scope: &str, id: &str) -> DeviceIdentity {
    DeviceIdentity {
        id_scope: scope.into(),
        registration_id: id.into(),
    }
}

#[test]
fn sasl_plain_of_every_sdk() {
    // Node (rhea) and C (uAMQP) send no authzid.
    let response = b"\x000ne00000001/registrations/dev-1\x00SharedAccessSignature sr=x&sig=y&se=1";
    let plain = parse_sasl_plain(response).unwrap();
    assert_eq!(plain.authzid, "");
    assert_eq!(plain.authcid, "0ne00000001/registrations/dev-1");
    assert_eq!(plain.password, "SharedAccessSignature sr=x&sig=y&se=1");
    let with_authzid = parse_sasl_plain(b"admin\0user\0pw").unwrap();
    assert_eq!(with_authzid.authzid, "admin");
    assert!(!format!("{with_authzid:?}").contains("pw"), "no password in Debug");
}

#[test]
fn bad_sasl_plain() {
    for bad in [&b""[..], b"user", b"\0user", b"\0\0pw", b"a\0b\0c\0d"] {
        assert_eq!(parse_sasl_plain(bad), Err(AmqpDpsError::BadPlainResponse), "{bad:?}");
    }
    assert_eq!(parse_sasl_plain(b"\0\xff\0pw"), Err(AmqpDpsError::PlainNotText));
}

#[test]
fn identities() {
    assert_eq!(
        parse_identity("0ne00000001/registrations/Dev-1").unwrap(),
        identity("0ne00000001", "Dev-1")
    );
    assert_eq!(
        parse_identity("0ne00000001/Registrations/dev%3A1").unwrap(),
        identity("0ne00000001", "dev:1")
    );
    for bad in [
        "",
        "0ne00000001",
        "0ne00000001/registrations",
        "0ne00000001/registrations/",
        "/registrations/dev",
        "0ne00000001/devices/dev",
        "0ne00000001/registrations/dev/extra",
    ] {
        assert!(matches!(parse_identity(bad), Err(AmqpDpsError::BadIdentity(_))), "{bad:?}");
    }
    assert!(identity("0NE00000001", "DEV").same_device(&identity("0ne00000001", "dev")));
    assert!(!identity("0ne00000001", "dev").same_device(&identity("0ne00000002", "dev")));
}

#[test]
fn link_addresses_of_node_and_c() {
    // Node: relative.
    assert_eq!(
        parse_link_address("0ne00000001/registrations/dev-1").unwrap(),
        LinkAddress {
            host: None,
            identity: identity("0ne00000001", "dev-1")
        }
    );
    // C: amqps://{host}/{idScope}/registrations/{registrationId}.
    assert_eq!(
        parse_link_address("amqps://localhost/0ne00000001/registrations/dev-1").unwrap(),
        LinkAddress {
            host: Some("localhost".into()),
            identity: identity("0ne00000001", "dev-1")
        }
    );
    assert_eq!(
        parse_link_address("/0ne00000001/registrations/dev-1")
            .unwrap()
            .identity,
        identity("0ne00000001", "dev-1")
    );
    for bad in [
        "",
        "remote_endpoint",
        "local_endpoint",
        "amqps://localhost",
        "amqps:///0ne00000001/registrations/dev",
        "http://localhost/0ne00000001/registrations/dev",
        "amqps://localhost/0ne00000001/registrations/dev/x",
        "$cbs",
    ] {
        assert!(matches!(parse_link_address(bad), Err(AmqpDpsError::BadAddress(_))), "{bad:?}");
    }
}

#[test]
fn requests() {
    assert_eq!(
        parse_request(Some(REGISTER), None, Some("true")),
        Ok(Request::Register {
            force_registration: true
        })
    );
    assert_eq!(
        parse_request(Some(REGISTER), None, None),
        Ok(Request::Register {
            force_registration: false
        })
    );
    assert_eq!(
        parse_request(Some(GET_OPERATION_STATUS), Some("4.abc.def"), None),
        Ok(Request::OperationStatus {
            operation_id: "4.abc.def".into()
        })
    );
    assert_eq!(
        parse_request(Some(GET_OPERATION_STATUS), None, None),
        Err(AmqpDpsError::MissingOperationId)
    );
    assert_eq!(
        parse_request(Some(GET_OPERATION_STATUS), Some(""), None),
        Err(AmqpDpsError::MissingOperationId)
    );
    assert_eq!(parse_request(None, Some("x"), None), Err(AmqpDpsError::MissingOperationType));
    assert_eq!(
        parse_request(Some("iotdps-get-registration"), None, None),
        Err(AmqpDpsError::UnknownOperationType("iotdps-get-registration".into()))
    );
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), text in ".{0,300}") {
        let _ = parse_sasl_plain(&bytes);
        let _ = parse_identity(&text);
        let _ = parse_link_address(&text);
        let _ = parse_request(Some(&text), Some(&text), Some(&text));
    }

    #[test]
    fn well_formed_addresses_round_trip(scope in "[0-9A-Za-z]{1,12}", id in "[a-z0-9][a-z0-9.:_-]{0,40}", host in "[a-z][a-z0-9.-]{0,20}") {
        let relative = format!("{scope}/registrations/{id}");
        prop_assert_eq!(parse_link_address(&relative).unwrap().identity, identity(&scope, &id));
        let absolute = format!("amqps://{host}/{relative}");
        let parsed = parse_link_address(&absolute).unwrap();
        prop_assert_eq!(parsed.host.as_deref(), Some(host.as_str()));
        prop_assert_eq!(parsed.identity, identity(&scope, &id));
        prop_assert_eq!(parse_identity(&relative).unwrap(), identity(&scope, &id));
    }
}
