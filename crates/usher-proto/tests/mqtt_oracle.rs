//! Round trips between Usher's MQTT codec and an independent implementation (rumqttc's
//! `mqttbytes::v4`): what rumqttc encodes, Usher decodes to the same packet, and the other way round.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4 as oracle;
use rumqttc::mqttbytes::{Protocol, QoS as OQoS};
use usher_proto::mqtt::{ConnectReturnCode, Packet, Publish, QoS, decode, encode};

const MAX: usize = 128 * 1024;

fn ours(bytes: &[u8]) -> Packet {
    let (packet, used) = decode(bytes, MAX).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    packet
}

fn theirs(bytes: &[u8]) -> oracle::Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = oracle::Packet::read(&mut buf, MAX).unwrap();
    assert!(buf.is_empty());
    packet
}

#[test]
fn connect_from_the_oracle() {
    let mut connect = oracle::Connect::new("dev-1");
    connect.protocol = Protocol::V4;
    connect.keep_alive = 0;
    connect.clean_session = false;
    connect.login = Some(oracle::Login::new(
        "0ne00000001/registrations/dev-1/api-version=2019-03-31",
        "SharedAccessSignature sr=a&sig=b&se=1",
    ));
    let mut buf = BytesMut::new();
    connect.write(&mut buf).unwrap();
    let Packet::Connect(c) = ours(&buf) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.protocol_name, "MQTT");
    assert_eq!(c.protocol_level, 4);
    assert_eq!(c.client_id, "dev-1");
    assert_eq!(c.keep_alive, 0);
    assert!(!c.clean_session);
    assert_eq!(
        c.username.as_deref(),
        Some("0ne00000001/registrations/dev-1/api-version=2019-03-31")
    );
    assert_eq!(
        c.password.as_deref(),
        Some(&b"SharedAccessSignature sr=a&sig=b&se=1"[..])
    );
}

#[test]
fn subscribe_publish_and_pings_from_the_oracle() {
    let mut buf = BytesMut::new();
    let mut sub = oracle::Subscribe::new("$dps/registrations/res/#", OQoS::AtLeastOnce);
    sub.pkid = 1;
    sub.write(&mut buf).unwrap();
    assert_eq!(
        ours(&buf),
        Packet::Subscribe {
            packet_id: 1,
            filters: vec![("$dps/registrations/res/#".into(), QoS::AtLeastOnce)]
        }
    );

    for (qos, pkid) in [(OQoS::AtMostOnce, 0), (OQoS::AtLeastOnce, 7)] {
        let mut buf = BytesMut::new();
        let mut publish = oracle::Publish::new(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            qos,
            &br#"{"registrationId":"dev-1"}"#[..],
        );
        publish.pkid = pkid;
        publish.write(&mut buf).unwrap();
        let Packet::Publish(p) = ours(&buf) else {
            panic!("not a PUBLISH")
        };
        assert_eq!(p.topic, "$dps/registrations/PUT/iotdps-register/?$rid=1");
        assert_eq!(p.packet_id, (pkid != 0).then_some(pkid));
        assert_eq!(p.payload, br#"{"registrationId":"dev-1"}"#);
    }

    let mut buf = BytesMut::new();
    oracle::PingReq.write(&mut buf).unwrap();
    assert_eq!(ours(&buf), Packet::PingReq);
    let mut buf = BytesMut::new();
    oracle::Disconnect.write(&mut buf).unwrap();
    assert_eq!(ours(&buf), Packet::Disconnect);
    let mut buf = BytesMut::new();
    oracle::PubAck::new(9).write(&mut buf).unwrap();
    assert_eq!(ours(&buf), Packet::PubAck { packet_id: 9 });
    let mut buf = BytesMut::new();
    let mut unsub = oracle::Unsubscribe::new("$dps/registrations/res/#");
    unsub.pkid = 3;
    unsub.write(&mut buf).unwrap();
    assert_eq!(
        ours(&buf),
        Packet::Unsubscribe {
            packet_id: 3,
            filters: vec!["$dps/registrations/res/#".into()]
        }
    );
}

#[test]
fn server_packets_read_by_the_oracle() {
    let mut out = Vec::new();
    encode(
        &Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        },
        &mut out,
    );
    assert!(
        matches!(theirs(&out), oracle::Packet::ConnAck(a) if !a.session_present && a.code == oracle::ConnectReturnCode::Success)
    );
    let mut out = Vec::new();
    encode(
        &Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        },
        &mut out,
    );
    assert!(
        matches!(theirs(&out), oracle::Packet::ConnAck(a) if a.code == oracle::ConnectReturnCode::NotAuthorized)
    );

    let mut out = Vec::new();
    encode(
        &Packet::SubAck {
            packet_id: 1,
            return_codes: vec![1],
        },
        &mut out,
    );
    let oracle::Packet::SubAck(ack) = theirs(&out) else {
        panic!("not a SUBACK")
    };
    assert_eq!(ack.pkid, 1);
    assert_eq!(
        ack.return_codes,
        vec![oracle::SubscribeReasonCode::Success(OQoS::AtLeastOnce)]
    );

    let body = br#"{"operationId":"5.a.b","status":"assigned"}"#.to_vec();
    let mut out = Vec::new();
    encode(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "$dps/registrations/res/200/?$rid=1".into(),
            packet_id: Some(1),
            payload: body.clone(),
        }),
        &mut out,
    );
    let oracle::Packet::Publish(p) = theirs(&out) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.topic, "$dps/registrations/res/200/?$rid=1");
    assert_eq!(p.qos, OQoS::AtLeastOnce);
    assert_eq!(p.pkid, 1);
    assert_eq!(&p.payload[..], &body[..]);

    for (packet, check) in [
        (Packet::PubAck { packet_id: 4 }, "puback"),
        (Packet::UnsubAck { packet_id: 5 }, "unsuback"),
        (Packet::PingResp, "pingresp"),
    ] {
        let mut out = Vec::new();
        encode(&packet, &mut out);
        let got = theirs(&out);
        let ok = match check {
            "puback" => matches!(got, oracle::Packet::PubAck(a) if a.pkid == 4),
            "unsuback" => matches!(got, oracle::Packet::UnsubAck(a) if a.pkid == 5),
            _ => matches!(got, oracle::Packet::PingResp),
        };
        assert!(ok, "{packet:?}");
    }
}
