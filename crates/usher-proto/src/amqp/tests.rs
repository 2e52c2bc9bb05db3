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
    assert!(
        !format!("{with_authzid:?}").contains("pw"),
        "no password in Debug"
    );
}

#[test]
fn bad_sasl_plain() {
    for bad in [&b""[..], b"user", b"\0user", b"\0\0pw", b"a\0b\0c\0d"] {
        assert_eq!(
            parse_sasl_plain(bad),
            Err(AmqpDpsError::BadPlainResponse),
            "{bad:?}"
        );
    }
    assert_eq!(
        parse_sasl_plain(b"\0\xff\0pw"),
        Err(AmqpDpsError::PlainNotText)
    );
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
        assert!(
            matches!(parse_identity(bad), Err(AmqpDpsError::BadIdentity(_))),
            "{bad:?}"
        );
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
        assert!(
            matches!(parse_link_address(bad), Err(AmqpDpsError::BadAddress(_))),
            "{bad:?}"
        );
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
    assert_eq!(
        parse_request(None, Some("x"), None),
        Err(AmqpDpsError::MissingOperationType)
    );
    assert_eq!(
        parse_request(Some("iotdps-get-registration"), None, None),
        Err(AmqpDpsError::UnknownOperationType(
            "iotdps-get-registration".into()
        ))
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

/// A frame of `size` bytes (size field included), all zero after the header.
fn frame(size: u32) -> Vec<u8> {
    let mut f = size.to_be_bytes().to_vec();
    f.extend_from_slice(&[2, 0, 0, 0]);
    f.resize(size as usize, 0);
    f
}

#[test]
fn frame_guard_follows_a_whole_connection_in_any_pieces() {
    let mut stream = b"AMQP\x03\x01\x00\x00".to_vec();
    stream.extend(frame(40)); // sasl-init
    stream.extend(b"AMQP\x00\x01\x00\x00");
    stream.extend(frame(8)); // an empty (heartbeat) frame
    stream.extend(frame(300));
    stream.extend(frame(65_536));
    for piece in [1, 3, 7, 64, 100_000] {
        let mut guard = FrameGuard::new();
        for chunk in stream.chunks(piece) {
            assert_eq!(guard.check(chunk), Ok(()), "pieces of {piece}");
        }
        assert_eq!(guard, {
            let mut g = FrameGuard::new();
            g.check(&stream).unwrap();
            g
        });
    }
}

#[test]
fn frame_guard_refuses_frames_shorter_than_their_header() {
    for size in 0..8u32 {
        let mut stream = b"AMQP\x03\x01\x00\x00".to_vec();
        stream.extend(frame(16));
        stream.extend(size.to_be_bytes());
        stream.extend([2, 0, 0, 0]);
        let mut guard = FrameGuard::new();
        assert_eq!(
            guard.check(&stream),
            Err(FrameError::ShorterThanHeader(size))
        );
        assert_eq!(
            guard.check(&frame(8)),
            Err(FrameError::ShorterThanHeader(size)),
            "stays refused"
        );
    }
}

proptest! {
    #[test]
    fn frame_guard_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut guard = FrameGuard::new();
        let mut refused = false;
        for chunk in &chunks {
            let result = guard.check(chunk);
            // Once refused, refused for good (an empty chunk checks nothing).
            prop_assert!(!refused || result.is_err() || chunk.is_empty());
            refused |= result.is_err();
        }
    }
}
