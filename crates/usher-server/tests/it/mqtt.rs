//! MQTT and MQTT over WebSockets: the device library end to end, and raw packets reproducing each
//! SDK's quirks (`device-protocol.md` §5) and the session's limits.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use usher_device::{Credential, ProvisionError, Transport};
use usher_proto::model::RegistrationStatus;
use usher_proto::mqtt::{Connect, ConnectReturnCode, Packet, Publish, QoS, decode, encode};
use usher_server::mqtt::Limits;
use usher_server::{RegisterResponse, Settings};

use crate::support::{TestServer, tls_connect};

#[tokio::test]
async fn device_library_over_mqtt_and_websockets() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("mq-ind", json!({})).await;
    let (group_key, _) = s.enroll_group("mq-grp", json!({})).await;
    let (off_key, _) = s
        .enroll("mq-off", json!({"provisioningStatus": "disabled"}))
        .await;
    for transport in [Transport::Mqtt, Transport::MqttWs] {
        let client = s.client_over(transport);
        let result = client
            .provision(
                &Credential::individual("mq-ind", &key).unwrap(),
                None,
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!(
            result.registration_state.unwrap().assigned_hub.as_deref(),
            Some("localhost")
        );
        let id = format!("mq-member-{transport:?}");
        let result = client
            .provision(
                &Credential::from_group_key(&id, &group_key).unwrap(),
                None,
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!(
            result.registration_state.unwrap().device_id.as_deref(),
            Some(id.as_str())
        );
        let wrong = Credential::individual("mq-ind", &off_key).unwrap();
        match client.provision(&wrong, None, |_| {}).await {
            Err(ProvisionError::Refused {
                status: 401,
                body: Some(body),
                ..
            }) => assert_eq!(body.error_code, 401_002),
            other => panic!("{transport:?}: expected 401, got {other:?}"),
        }
        match client
            .provision(
                &Credential::individual("mq-off", &off_key).unwrap(),
                None,
                |_| {},
            )
            .await
        {
            Err(ProvisionError::NotAssigned(status)) => {
                assert_eq!(status.status, RegistrationStatus::Disabled)
            }
            other => panic!("{transport:?}: expected disabled, got {other:?}"),
        }
    }
    assert_eq!(s.hub_devices("usher-hub").await.len(), 3);
}

#[tokio::test]
async fn mqtt_polls_in_assigning_mode() {
    let settings = Settings {
        register_response: RegisterResponse::Assigning {
            retry_after_secs: 1,
        },
        ..Settings::default()
    };
    let s = TestServer::start_with(settings).await;
    let (key, _) = s.enroll("mq-poll", json!({})).await;
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "mq-poll", &key, true, 0).await;
    raw.subscribe().await;
    raw.publish(
        QoS::AtLeastOnce,
        Some(5),
        "$dps/registrations/PUT/iotdps-register/?$rid=r1",
        b"{}",
    )
    .await;
    assert_eq!(raw.next().await, Packet::PubAck { packet_id: 5 });
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=r1&retry-after=1");
    assert_eq!(body["status"], "assigning");
    let op = body["operationId"].as_str().unwrap();
    let topic =
        format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r2&operationId={op}");
    raw.publish(QoS::AtMostOnce, None, &topic, b" ").await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=r2");
    assert_eq!(body["status"], "assigned");
    assert_eq!(body["registrationState"]["assignedHub"], "localhost");
}

#[tokio::test]
async fn c_sdk_quirks_qos0_integer_rid_keep_alive_0_full_json_poll() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("c-dev", json!({})).await;
    let mut raw = Raw::connect(&s).await;
    // C: clean session 1, keep-alive 0, username with api-version 2021-06-01 and a raw ClientVersion.
    raw.send(&Packet::Connect(Box::new(Connect {
        username: Some(format!(
            "{}/registrations/c-dev/api-version=2021-06-01&ClientVersion=1.15.0",
            s.scope
        )),
        keep_alive: 0,
        clean_session: true,
        ..connect_packet(&s, "c-dev", &key)
    })))
    .await;
    assert_eq!(
        raw.next().await,
        Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted
        }
    );
    raw.subscribe().await;
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        br#"{"registrationId":"c-dev"}"#,
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=1");
    let op = body["operationId"].as_str().unwrap().to_owned();
    // The C SDK sends the whole registration JSON again on polls.
    let topic =
        format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}");
    raw.publish(
        QoS::AtMostOnce,
        None,
        &topic,
        br#"{"registrationId":"c-dev"}"#,
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=2");
    assert_eq!(body["registrationState"]["deviceId"], "c-dev");
}

#[tokio::test]
async fn python_quirks_clean_session_0_uuid_rid_space_poll_and_in_order_answers() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("py-dev", json!({})).await;
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "py-dev", &key, false, 60).await;
    raw.subscribe().await;
    let rid = "8e7f1a52-3b1d-4c3e-9a43-2f0a1b2c3d4e";
    raw.publish(
        QoS::AtLeastOnce,
        Some(1),
        &format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
        br#"{"payload": null, "registrationId": "py-dev"}"#,
    )
    .await;
    assert_eq!(
        raw.next().await,
        Packet::PubAck { packet_id: 1 },
        "PUBACK comes before the answer"
    );
    let (topic, body) = raw.response().await;
    assert_eq!(
        topic,
        format!("$dps/registrations/res/200/?$rid={rid}"),
        "$rid echoed byte for byte"
    );
    let op = body["operationId"].as_str().unwrap().to_owned();
    // Two requests in one write: answers come back in request order.
    let mut bytes = Vec::new();
    for (id, r) in [(2u16, "first"), (3, "second")] {
        let topic =
            format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={r}&operationId={op}");
        encode(
            &Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic,
                packet_id: Some(id),
                payload: b" ".to_vec(),
            }),
            &mut bytes,
        );
    }
    raw.write(&bytes).await;
    let mut answered = Vec::new();
    while answered.len() < 2 {
        if let Packet::Publish(p) = raw.next().await {
            raw.send(&Packet::PubAck {
                packet_id: p.packet_id.unwrap(),
            })
            .await;
            answered.push(p.topic);
        }
    }
    assert_eq!(
        answered,
        [
            "$dps/registrations/res/200/?$rid=first",
            "$dps/registrations/res/200/?$rid=second"
        ]
    );
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.next().await, Packet::PingResp);
    raw.send(&Packet::Unsubscribe {
        packet_id: 9,
        filters: vec!["$dps/registrations/res/#".into()],
    })
    .await;
    assert_eq!(raw.next().await, Packet::UnsubAck { packet_id: 9 });
    raw.send(&Packet::Disconnect).await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn errors_are_answered_on_the_response_topic_with_a_json_body() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("err-dev", json!({})).await;
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "err-dev", &key, true, 60).await;
    raw.subscribe().await;
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        b"{oops",
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/400/?$rid=1");
    assert_eq!(body["errorCode"], 400_006);
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=5.none",
        b"",
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/404/?$rid=2");
    assert_eq!(body["errorCode"], 404_203);
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/POST/unknown/?$rid=3",
        b"",
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/404/?$rid=3");
    assert!(body["errorCode"].is_u64());
    // A subscription to anything else is refused, the session goes on.
    raw.send(&Packet::Subscribe {
        packet_id: 4,
        filters: vec![("devices/#".into(), QoS::AtLeastOnce)],
    })
    .await;
    assert_eq!(
        raw.next().await,
        Packet::SubAck {
            packet_id: 4,
            return_codes: vec![0x80]
        }
    );
    // A publish nobody can answer ends the session.
    raw.publish(QoS::AtMostOnce, None, "devices/x/messages", b"")
        .await;
    raw.expect_closed().await;
    assert_eq!(
        s.registration("err-dev").await.0,
        reqwest::StatusCode::NOT_FOUND,
        "nothing recorded"
    );
}

#[tokio::test]
async fn bad_token_at_connect_is_answered_at_register_and_records_nothing() {
    let s = TestServer::start().await;
    s.enroll("tok-dev", json!({})).await;
    let other = usher_proto::SymmetricKey::generate(&[5; 32])
        .unwrap()
        .to_base64();
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "tok-dev", &other, true, 60).await;
    raw.subscribe().await;
    raw.publish(
        QoS::AtLeastOnce,
        Some(1),
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        b"{}",
    )
    .await;
    assert_eq!(raw.next().await, Packet::PubAck { packet_id: 1 });
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/401/?$rid=1");
    assert_eq!(body["errorCode"], 401_002);
    assert_eq!(body["message"], "Unauthorized");
    assert_eq!(
        s.registration("tok-dev").await.0,
        reqwest::StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn misbehaving_connections_are_closed() {
    let limits = Limits {
        connect_timeout: Duration::from_millis(300),
        max_packet: 4096,
        ..Limits::default()
    };
    let s = TestServer::start_with_limits(usher_server::Limits {
        mqtt: limits,
        ..Default::default()
    })
    .await;
    let (key, _) = s.enroll("bad-conn", json!({})).await;

    // No CONNECT in time.
    let mut raw = Raw::connect(&s).await;
    raw.expect_closed().await;
    // Something other than CONNECT first.
    let mut raw = Raw::connect(&s).await;
    raw.send(&Packet::PingReq).await;
    raw.expect_closed().await;
    // MQTT 3.1 (level 3): CONNACK 1.
    let mut raw = Raw::connect(&s).await;
    raw.send(&Packet::Connect(Box::new(Connect {
        protocol_name: "MQIsdp".into(),
        protocol_level: 3,
        ..connect_packet(&s, "bad-conn", &key)
    })))
    .await;
    assert_eq!(
        raw.next().await,
        Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::UnacceptableProtocolVersion
        }
    );
    raw.expect_closed().await;
    // A user name that is not a DPS one: CONNACK 4.
    let mut raw = Raw::connect(&s).await;
    raw.send(&Packet::Connect(Box::new(Connect {
        username: Some("someone".into()),
        ..connect_packet(&s, "bad-conn", &key)
    })))
    .await;
    assert_eq!(
        raw.next().await,
        Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::BadUserNameOrPassword
        }
    );
    raw.expect_closed().await;
    // Garbage and truncated packets.
    for bytes in [
        &[0xf0u8, 0x00][..],
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
        &[0x30, 0x02, 0x00],
    ] {
        let mut raw = Raw::connect(&s).await;
        raw.write(bytes).await;
        raw.expect_closed().await;
    }
    // A packet over the size limit, after a good CONNECT.
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "bad-conn", &key, true, 60).await;
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        &vec![b' '; 8000],
    )
    .await;
    raw.expect_closed().await;
    // A second CONNECT.
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "bad-conn", &key, true, 60).await;
    raw.send(&Packet::Connect(Box::new(connect_packet(
        &s, "bad-conn", &key,
    ))))
    .await;
    raw.expect_closed().await;
    // Keep-alive 1 s, then silence: closed after 1.5 s.
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "bad-conn", &key, true, 1).await;
    let started = tokio::time::Instant::now();
    raw.expect_closed().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn connections_over_the_limit_get_connack_3() {
    let limits = Limits {
        max_sessions: 1,
        ..Limits::default()
    };
    let s = Arc::new(
        TestServer::start_with_limits(usher_server::Limits {
            mqtt: limits,
            ..Default::default()
        })
        .await,
    );
    let (key, _) = s.enroll("limited", json!({})).await;
    let mut first = Raw::connect(&s).await;
    first.connect_as(&s, "limited", &key, true, 60).await;
    let mut second = Raw::connect(&s).await;
    assert_eq!(
        second.next().await,
        Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::ServerUnavailable
        }
    );
    second.expect_closed().await;
    first.send(&Packet::Disconnect).await;
    first.expect_closed().await;
    // The slot is free again.
    let mut third = Raw::connect(&s).await;
    third.connect_as(&s, "limited", &key, true, 60).await;
}

#[tokio::test]
async fn websocket_echoes_the_client_spelling_of_the_subprotocol() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("ws-dev", json!({})).await;
    for spelling in ["mqtt", "MQTT"] {
        let tls = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
        let mut request = format!("wss://localhost:{}/$iothub/websocket", s.addr.port())
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", spelling.parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], spelling);
        let mut bytes = Vec::new();
        encode(
            &Packet::Connect(Box::new(connect_packet(&s, "ws-dev", &key))),
            &mut bytes,
        );
        encode(
            &Packet::Subscribe {
                packet_id: 1,
                filters: vec![("$dps/registrations/res/#".into(), QoS::AtLeastOnce)],
            },
            &mut bytes,
        );
        encode(
            &Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "$dps/registrations/PUT/iotdps-register/?$rid=1".into(),
                packet_id: None,
                payload: b"{}".to_vec(),
            }),
            &mut bytes,
        );
        // Split across frames at an awkward place: the stream is what counts, not the frames.
        ws.send(Message::Binary(bytes[..7].to_vec().into()))
            .await
            .unwrap();
        ws.send(Message::Binary(bytes[7..].to_vec().into()))
            .await
            .unwrap();
        let mut buffer = Vec::new();
        let mut packets = Vec::new();
        while packets.len() < 3 {
            let Some(Ok(Message::Binary(b))) = ws.next().await else {
                panic!("closed")
            };
            buffer.extend_from_slice(&b);
            while let Some((p, used)) = decode(&buffer, 1 << 20).unwrap() {
                buffer.drain(..used);
                packets.push(p);
            }
        }
        assert_eq!(
            packets[0],
            Packet::ConnAck {
                session_present: false,
                code: ConnectReturnCode::Accepted
            }
        );
        assert_eq!(
            packets[1],
            Packet::SubAck {
                packet_id: 1,
                return_codes: vec![1]
            }
        );
        let Packet::Publish(p) = &packets[2] else {
            panic!("{:?}", packets[2])
        };
        assert_eq!(p.topic, "$dps/registrations/res/200/?$rid=1");
    }
    // Another subprotocol is refused.
    let tls = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
    let mut request = format!("wss://localhost:{}/$iothub/websocket", s.addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "v12.stomp".parse().unwrap());
    assert!(tokio_tungstenite::client_async(request, tls).await.is_err());
}

#[tokio::test]
async fn requests_without_a_rid_are_answered_on_an_empty_rid_as_dps_does() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("at-modem", json!({})).await;
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "at-modem", &key, true, 60).await;
    raw.subscribe().await;
    // As Microchip's AT-command modules send them: `rid` without `$`, no query, no slash.
    for topic in [
        "$dps/registrations/PUT/iotdps-register/?rid=1",
        "$dps/registrations/PUT/iotdps-register/",
        "$dps/registrations/PUT/iotdps-register",
    ] {
        raw.publish(
            QoS::AtLeastOnce,
            Some(5),
            topic,
            br#"{"registrationId":"at-modem"}"#,
        )
        .await;
        assert_eq!(raw.next().await, Packet::PubAck { packet_id: 5 });
        let (answer_topic, body) = raw.response().await;
        assert_eq!(answer_topic, "$dps/registrations/res/200/?$rid=", "{topic}");
        assert_eq!(body["status"], "assigned", "{topic}");
        assert_eq!(body["registrationState"]["deviceId"], "at-modem");
    }
    // An operation DPS does not have, inside its namespace: answered on the $rid given.
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/PUT/iotdps-nothing/?$rid=9",
        b"{}",
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/404/?$rid=9");
    assert_eq!(body["errorCode"], 404_000);
    // A poll without operationId: 400 on the empty $rid.
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/GET/iotdps-get-operationstatus/",
        b" ",
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/400/?$rid=");
    assert_eq!(body["errorCode"], 400_004);
    // Outside $dps/registrations/ nothing is DPS's to answer: the session ends.
    raw.publish(
        QoS::AtMostOnce,
        None,
        "devices/at-modem/messages/events/",
        b"{}",
    )
    .await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn an_unknown_api_version_in_the_user_name_is_refused_per_request() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("ver-mqtt", json!({})).await;
    let mut raw = Raw::connect(&s).await;
    raw.send(&Packet::Connect(Box::new(Connect {
        username: Some(format!(
            "{}/registrations/ver-mqtt/api-version=2019-03-30&ClientVersion=x",
            s.scope
        )),
        ..connect_packet(&s, "ver-mqtt", &key)
    })))
    .await;
    assert!(matches!(
        raw.next().await,
        Packet::ConnAck {
            code: ConnectReturnCode::Accepted,
            ..
        }
    ));
    raw.subscribe().await;
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        b"{}",
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/400/?$rid=1");
    assert_eq!(body["errorCode"], 400_004);
    assert_eq!(body["message"], "Unsupported API version 2019-03-30.");
    assert_eq!(
        s.registration("ver-mqtt").await.0,
        reqwest::StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn answers_go_out_at_the_qos_the_subscription_was_granted() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("qos0-dev", json!({})).await;
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "qos0-dev", &key, true, 60).await;
    raw.send(&Packet::Subscribe {
        packet_id: 3,
        filters: vec![("$dps/registrations/res/#".into(), QoS::AtMostOnce)],
    })
    .await;
    assert_eq!(
        raw.next().await,
        Packet::SubAck {
            packet_id: 3,
            return_codes: vec![0]
        }
    );
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        b"{}",
    )
    .await;
    let (topic, body) = raw.response_at(QoS::AtMostOnce).await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=1");
    let op = body["operationId"].as_str().unwrap().to_owned();
    raw.publish(
        QoS::AtMostOnce,
        None,
        &format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}"),
        b"",
    )
    .await;
    let (topic, body) = raw.response_at(QoS::AtMostOnce).await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=2");
    assert_eq!(body["status"], "assigned");
}

#[tokio::test]
async fn the_default_over_mqtt_is_202_assigning_and_payloads_share_the_96_kb_limit() {
    let s = TestServer::start_with(Settings::default()).await;
    let (key, _) = s.enroll("mq-default", json!({})).await;
    let mut raw = Raw::connect(&s).await;
    raw.connect_as(&s, "mq-default", &key, true, 60).await;
    raw.subscribe().await;
    raw.publish(
        QoS::AtLeastOnce,
        Some(1),
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        br#"{"registrationId":"mq-default"}"#,
    )
    .await;
    assert_eq!(raw.next().await, Packet::PubAck { packet_id: 1 });
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=1&retry-after=2");
    assert_eq!(body["status"], "assigning");
    // A payload one byte over 96 KB: 413, as HTTPS answers, and the session goes on.
    let mut big = br#"{"registrationId":"mq-default","payload":""#.to_vec();
    big.resize(usher_proto::model::MAX_MESSAGE_BYTES + 1 - 2, b'x');
    big.extend_from_slice(b"\"}");
    raw.publish(
        QoS::AtMostOnce,
        None,
        "$dps/registrations/PUT/iotdps-register/?$rid=2",
        &big,
    )
    .await;
    let (topic, body) = raw.response().await;
    assert_eq!(topic, "$dps/registrations/res/413/?$rid=2");
    assert_eq!(body["errorCode"], 413_001);
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.next().await, Packet::PingResp);
}

fn connect_packet(s: &TestServer, id: &str, key: &str) -> Connect {
    Connect {
        protocol_name: "MQTT".into(),
        protocol_level: 4,
        clean_session: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: Some(format!(
            "{}/registrations/{id}/api-version=2019-03-31&ClientVersion=test",
            s.scope
        )),
        password: Some(s.token(id, key).into_bytes()),
    }
}

/// A raw MQTT connection over TLS 1.2 (as the Python SDK uses) to the MQTT port.
struct Raw {
    tls: TlsStream<TcpStream>,
    buffer: Vec<u8>,
}

impl Raw {
    async fn connect(s: &TestServer) -> Self {
        Self {
            tls: tls_connect(s, s.mqtt_addr.port(), &[]).await,
            buffer: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    async fn send(&mut self, packet: &Packet) {
        let mut bytes = Vec::new();
        encode(packet, &mut bytes);
        self.write(&bytes).await;
    }

    async fn connect_as(
        &mut self,
        s: &TestServer,
        id: &str,
        key: &str,
        clean_session: bool,
        keep_alive: u16,
    ) {
        self.send(&Packet::Connect(Box::new(Connect {
            clean_session,
            keep_alive,
            ..connect_packet(s, id, key)
        })))
        .await;
        assert_eq!(
            self.next().await,
            Packet::ConnAck {
                session_present: false,
                code: ConnectReturnCode::Accepted
            }
        );
    }

    async fn subscribe(&mut self) {
        self.send(&Packet::Subscribe {
            packet_id: 100,
            filters: vec![("$dps/registrations/res/#".into(), QoS::ExactlyOnce)],
        })
        .await;
        assert_eq!(
            self.next().await,
            Packet::SubAck {
                packet_id: 100,
                return_codes: vec![1]
            },
            "QoS 2 is granted as 1"
        );
    }

    async fn publish(&mut self, qos: QoS, packet_id: Option<u16>, topic: &str, payload: &[u8]) {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            payload: payload.to_vec(),
        }))
        .await;
    }

    /// The next packet; fails the test if none comes within 10 s.
    async fn next(&mut self) -> Packet {
        loop {
            if let Some((packet, used)) = decode(&self.buffer, 1 << 20).unwrap() {
                self.buffer.drain(..used);
                return packet;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.tls.read(&mut chunk))
                .await
                .expect("no packet within 10 s")
                .unwrap();
            assert!(n > 0, "connection closed while waiting for a packet");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next response PUBLISH (QoS 1, acknowledged here): its topic and JSON body.
    async fn response(&mut self) -> (String, Value) {
        self.response_at(QoS::AtLeastOnce).await
    }

    /// The next response PUBLISH, which must come at `qos` (acknowledged here if QoS 1).
    async fn response_at(&mut self, qos: QoS) -> (String, Value) {
        match self.next().await {
            Packet::Publish(p) => {
                assert_eq!(p.qos, qos, "{}", p.topic);
                if qos == QoS::AtMostOnce {
                    assert_eq!(p.packet_id, None);
                } else {
                    self.send(&Packet::PubAck {
                        packet_id: p.packet_id.unwrap(),
                    })
                    .await;
                }
                (
                    p.topic,
                    serde_json::from_slice(&p.payload).expect("every response has a JSON body"),
                )
            }
            other => panic!("expected a response PUBLISH, got {other:?}"),
        }
    }

    /// Waits (up to 10 s) for the server to close the connection.
    async fn expect_closed(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.tls.read(&mut chunk))
                .await
                .expect("still open after 10 s")
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}
