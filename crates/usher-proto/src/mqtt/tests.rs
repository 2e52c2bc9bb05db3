use super::*;
use proptest::prelude::*;

const MAX: usize = 128 * 1024;

fn round_trip(packet: Packet) {
    let mut bytes = Vec::new();
    encode(&packet, &mut bytes);
    assert_eq!(
        decode(&bytes, MAX),
        Ok(Some((packet.clone(), bytes.len()))),
        "{packet:?}"
    );
    // Every strict prefix is incomplete, never an error.
    for cut in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..cut], MAX),
            Ok(None),
            "{packet:?} cut at {cut}"
        );
    }
}

fn connect() -> Connect {
    Connect {
        protocol_name: "MQTT".into(),
        protocol_level: 4,
        clean_session: false,
        keep_alive: 60,
        client_id: "dev-1".into(),
        will: None,
        username: Some("0ne00000001/registrations/dev-1/api-version=2019-03-31".into()),
        password: Some(b"SharedAccessSignature sr=x&sig=y&se=1".to_vec()),
    }
}

#[test]
fn every_packet_type_round_trips() {
    round_trip(Packet::Connect(Box::new(connect())));
    round_trip(Packet::Connect(Box::new(Connect {
        will: Some(Will {
            topic: "w".into(),
            message: vec![1, 2],
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: None,
        password: None,
        keep_alive: 0,
        clean_session: true,
        ..connect()
    })));
    for code in [
        ConnectReturnCode::Accepted,
        ConnectReturnCode::NotAuthorized,
    ] {
        round_trip(Packet::ConnAck {
            session_present: false,
            code,
        });
    }
    round_trip(Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "$dps/registrations/PUT/iotdps-register/?$rid=1".into(),
        packet_id: None,
        payload: br#"{"registrationId":"dev-1"}"#.to_vec(),
    }));
    round_trip(Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "$dps/registrations/res/200/?$rid=1".into(),
        packet_id: Some(65535),
        payload: vec![],
    }));
    round_trip(Packet::PubAck { packet_id: 1 });
    round_trip(Packet::Subscribe {
        packet_id: 2,
        filters: vec![("$dps/registrations/res/#".into(), QoS::AtLeastOnce)],
    });
    round_trip(Packet::SubAck {
        packet_id: 2,
        return_codes: vec![1, 0x80],
    });
    round_trip(Packet::Unsubscribe {
        packet_id: 3,
        filters: vec!["a".into(), "b".into()],
    });
    round_trip(Packet::UnsubAck { packet_id: 3 });
    round_trip(Packet::PingReq);
    round_trip(Packet::PingResp);
    round_trip(Packet::Disconnect);
}

#[test]
fn remaining_length_edges() {
    // Bodies whose lengths cross each varint boundary.
    for len in [0usize, 127, 128, 16_383, 16_384, 100_000] {
        let topic = "t".to_owned();
        let payload = vec![b'x'; len.saturating_sub(topic.len() + 2)];
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            payload,
        });
        let mut bytes = Vec::new();
        encode(&packet, &mut bytes);
        assert_eq!(decode(&bytes, 200_000).unwrap().unwrap().1, bytes.len());
    }
    // Five length bytes.
    assert_eq!(
        decode(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
    // The largest expressible length is refused from the header alone.
    assert_eq!(
        decode(&[0x30, 0xff, 0xff, 0xff, 0x7f], MAX),
        Err(DecodeError::PacketTooLarge {
            size: 5 + 268_435_455,
            max: MAX
        })
    );
    // Just over the limit, before the body has arrived.
    assert!(matches!(
        decode(&[0x30, 0x80, 0x80, 0x08], MAX),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn malformed_packets_name_the_problem() {
    let cases: &[(&[u8], DecodeError)] = &[
        (&[0x00, 0x00], DecodeError::UnsupportedPacketType(0)),
        (&[0xf0, 0x00], DecodeError::UnsupportedPacketType(15)),
        (
            &[0x80, 0x02, 0x00, 0x01],
            DecodeError::InvalidFlags {
                packet: "SUBSCRIBE",
                flags: 0,
            },
        ),
        (
            &[0x82, 0x02, 0x00, 0x01],
            DecodeError::NoTopicFilters("SUBSCRIBE"),
        ),
        (
            &[0x82, 0x02, 0x00, 0x00],
            DecodeError::ZeroPacketId("SUBSCRIBE"),
        ),
        (
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
            DecodeError::InvalidQos("SUBSCRIBE"),
        ),
        (
            &[0x34, 0x03, 0x00, 0x01, b't'],
            DecodeError::QoS2NotSupported,
        ),
        (
            &[0x36, 0x03, 0x00, 0x01, b't'],
            DecodeError::InvalidQos("PUBLISH"),
        ),
        (&[0x50, 0x02, 0x00, 0x01], DecodeError::QoS2NotSupported),
        (
            &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
            DecodeError::ZeroPacketId("PUBLISH"),
        ),
        (&[0x30, 0x03, 0x00, 0x01, b'#'], DecodeError::InvalidTopic),
        (&[0x30, 0x02, 0x00, 0x00], DecodeError::InvalidTopic),
        (
            &[0x30, 0x03, 0x00, 0x01, 0xff],
            DecodeError::InvalidString("PUBLISH topic"),
        ),
        (
            &[0x30, 0x03, 0x00, 0x01, 0x00],
            DecodeError::InvalidString("PUBLISH topic"),
        ),
        (
            &[0x30, 0x03, 0x00, 0x05, b't'],
            DecodeError::Truncated("PUBLISH topic"),
        ),
        (
            &[0x40, 0x03, 0x00, 0x01, 0x00],
            DecodeError::TrailingBytes("PUBACK"),
        ),
        (&[0x40, 0x01, 0x00], DecodeError::Truncated("PUBACK")),
        (&[0xc0, 0x01, 0x00], DecodeError::TrailingBytes("PINGREQ")),
        (
            &[0xe2, 0x00],
            DecodeError::InvalidFlags {
                packet: "DISCONNECT",
                flags: 2,
            },
        ),
        (&[0x20, 0x02, 0x00, 0x09], DecodeError::UnknownReturnCode(9)),
    ];
    for (bytes, want) in cases {
        assert_eq!(decode(bytes, MAX).as_ref(), Err(want), "{bytes:02x?}");
    }
}

#[test]
fn connect_flag_rules() {
    let mut bytes = Vec::new();
    encode(&Packet::Connect(Box::new(connect())), &mut bytes);
    let flags_at = 2 + 6 + 1; // fixed header, "MQTT" string, level
    let mut reserved = bytes.clone();
    reserved[flags_at] |= 1;
    assert_eq!(
        decode(&reserved, MAX),
        Err(DecodeError::InvalidConnectFlags)
    );
    let mut will_qos_without_will = bytes.clone();
    will_qos_without_will[flags_at] |= 0b1000;
    assert_eq!(
        decode(&will_qos_without_will, MAX),
        Err(DecodeError::InvalidConnectFlags)
    );
    let password_only = Connect {
        username: None,
        ..connect()
    };
    let mut bytes = Vec::new();
    encode(&Packet::Connect(Box::new(password_only)), &mut bytes);
    assert_eq!(
        decode(&bytes, MAX),
        Err(DecodeError::PasswordWithoutUsername)
    );
}

#[test]
fn two_packets_in_one_buffer_decode_one_at_a_time() {
    let mut bytes = Vec::new();
    encode(&Packet::PingReq, &mut bytes);
    encode(&Packet::PubAck { packet_id: 9 }, &mut bytes);
    let (first, used) = decode(&bytes, MAX).unwrap().unwrap();
    assert_eq!((first, used), (Packet::PingReq, 2));
    assert_eq!(
        decode(&bytes[used..], MAX).unwrap().unwrap().0,
        Packet::PubAck { packet_id: 9 }
    );
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, 1024);
    }

    #[test]
    fn publishes_round_trip(topic in "[a-z$/?=&0-9-]{1,80}", payload in prop::collection::vec(any::<u8>(), 0..2000), id in 1u16.., qos1 in any::<bool>()) {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: if qos1 { QoS::AtLeastOnce } else { QoS::AtMostOnce },
            retain: false,
            topic,
            packet_id: qos1.then_some(id),
            payload,
        });
        let mut bytes = Vec::new();
        encode(&packet, &mut bytes);
        prop_assert_eq!(decode(&bytes, MAX), Ok(Some((packet, bytes.len()))));
    }
}
