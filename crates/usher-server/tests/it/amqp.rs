//! AMQP and AMQP over WebSockets: the device library end to end; the C SDK's and Node's link and
//! message shapes (`device-protocol.md` §6) through fe2o3-amqp's client; refusals; and the limits
//! and garbage input, as raw bytes and raw frames, each bounded in time, each followed by a
//! device that still registers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::frames::amqp::{Frame, FrameBody};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::transport::Transport;
use fe2o3_amqp::types::definitions::{
    AmqpError, ErrorCondition, Fields, LinkError, ReceiverSettleMode, Role, SenderSettleMode,
};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties, Source, Target,
    TargetArchetype,
};
use fe2o3_amqp::types::performatives::{Attach, Begin, Open, Transfer};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use usher_device::{Credential, ProvisionError, Transport as DeviceTransport};
use usher_proto::model::RegistrationStatus;
use usher_server::amqp::Limits as AmqpLimits;
use usher_server::{Limits, RegisterResponse, Settings};

use crate::support::{TestServer, fast, tls_connect};

const SASL_HEADER: &[u8; 8] = b"AMQP\x03\x01\x00\x00";
const AMQP_HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(5);

fn assigned() -> Settings {
    fast()
}

fn assigning() -> Settings {
    Settings {
        register_response: RegisterResponse::Assigning {
            retry_after_secs: 1,
        },
        ..Settings::default()
    }
}

#[tokio::test]
async fn device_library_over_amqp_and_websockets() {
    let s = TestServer::start_with(assigned()).await;
    let (key, _) = s.enroll("aq-ind", json!({})).await;
    let (group_key, _) = s.enroll_group("aq-grp", json!({})).await;
    let (off_key, _) = s
        .enroll("aq-off", json!({"provisioningStatus": "disabled"}))
        .await;
    for transport in [DeviceTransport::Amqp, DeviceTransport::AmqpWs] {
        let client = s.client_over(transport);
        let result = client
            .provision(
                &Credential::individual("aq-ind", &key).unwrap(),
                None,
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!(
            result.registration_state.unwrap().assigned_hub.as_deref(),
            Some("localhost")
        );
        let id = format!("aq-member-{transport:?}");
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
        let wrong = Credential::individual("aq-ind", &off_key).unwrap();
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
                &Credential::individual("aq-off", &off_key).unwrap(),
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
async fn device_library_polls_when_register_answers_assigning() {
    let s = TestServer::start_with(assigning()).await;
    let (key, _) = s.enroll("aq-poll", json!({})).await;
    for transport in [DeviceTransport::Amqp, DeviceTransport::AmqpWs] {
        let mut progress = Vec::new();
        let result = s
            .client_over(transport)
            .provision(
                &Credential::individual("aq-poll", &key).unwrap(),
                None,
                |p| progress.push(p),
            )
            .await
            .unwrap();
        assert_eq!(result.status, RegistrationStatus::Assigned);
        assert_eq!(
            progress,
            [
                usher_device::Progress::Registering,
                usher_device::Progress::Assigning {
                    retry_after: Duration::from_secs(1)
                }
            ],
            "{transport:?}"
        );
    }
}

/// The C SDK (`prov_transport_amqp_common.c`): absolute `amqps://{host}/…` addresses, links named
/// `recv_link` (attached first, receiver max-message-size 65536) and `sender_link`, the attach
/// property `com.microsoft:api-version` = `2021-06-01`, string application properties, no
/// message properties at all (no correlation ID), the registration JSON in a data section on
/// register and on poll. Answers must be data sections; `retry-after` comes as an application
/// property.
#[tokio::test]
async fn c_sdk_shape_absolute_addresses_no_correlation_id() {
    let s = TestServer::start_with(assigning()).await;
    let (key, _) = s.enroll("c-dev", json!({})).await;
    let address = format!("amqps://localhost/{}/registrations/c-dev", s.scope);
    let (mut connection, mut session) = open(&s, "c-dev", &key).await;
    let mut properties = Fields::default();
    properties.insert(
        Symbol::from("com.microsoft:api-version"),
        Value::String("2021-06-01".into()),
    );
    let mut receiver = Receiver::builder()
        .name("recv_link")
        .source(address.clone())
        .target("local_endpoint")
        .receiver_settle_mode(ReceiverSettleMode::First)
        .max_message_size(65_536u64)
        .properties(properties.clone())
        .attach(&mut session)
        .await
        .unwrap();
    let mut sender = Sender::builder()
        .name("sender_link")
        .source("remote_endpoint")
        .target(address.clone())
        .max_message_size(u64::MAX)
        .properties(properties)
        .attach(&mut session)
        .await
        .unwrap();
    let json_body = br#"{"registrationId":"c-dev"}"#.to_vec();
    let c_message = |operation: &str, operation_id: Option<&str>| {
        let mut properties = ApplicationProperties::default();
        properties.insert(
            "iotdps-operation-type".into(),
            SimpleValue::String(operation.into()),
        );
        if let Some(id) = operation_id {
            properties.insert("iotdps-operation-id".into(), SimpleValue::String(id.into()));
        }
        Message::builder()
            .application_properties(properties)
            .data(Data(Binary::from(json_body.clone())))
            .build()
    };

    let outcome = sender
        .send(c_message("iotdps-register", None))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let (answer, properties, application_properties) = next_answer(&mut receiver).await;
    assert_eq!(answer["status"], "assigning", "{answer}");
    assert!(
        properties.and_then(|p| p.correlation_id).is_none(),
        "no correlation ID to echo"
    );
    let application_properties = application_properties.unwrap();
    assert_eq!(
        application_properties.get("retry-after"),
        Some(&SimpleValue::Int(1))
    );
    let operation_id = answer["operationId"].as_str().unwrap().to_owned();

    let outcome = sender
        .send(c_message("iotdps-get-operationstatus", Some(&operation_id)))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let (answer, _, _) = next_answer(&mut receiver).await;
    assert_eq!(answer["operationId"], operation_id.as_str());
    assert_eq!(answer["status"], "assigned", "{answer}");
    assert_eq!(answer["registrationState"]["assignedHub"], "localhost");
    assert_eq!(answer["registrationState"]["deviceId"], "c-dev");
    sender.close().await.unwrap();
    receiver.close().await.unwrap();
    session.end().await.unwrap();
    connection.close().await.unwrap();
}

/// Node (`provisioning/transport/amqp/src/amqp.ts`): relative addresses, a UUID string
/// `correlation_id` that answers echo, `iotdps-forceRegistration` as a boolean, and a poll whose
/// body is an empty string value. Two requests sent at once are answered in order.
#[tokio::test]
async fn node_shape_relative_address_correlation_id() {
    let s = TestServer::start_with(assigned()).await;
    let (key, _) = s.enroll("node-dev", json!({})).await;
    let address = format!("{}/registrations/node-dev", s.scope);
    let (mut connection, mut session) = open(&s, "node-dev", &key).await;
    let mut receiver = Receiver::builder()
        .name("rheaReceiver_1")
        .source(address.clone())
        .attach(&mut session)
        .await
        .unwrap();
    let mut sender = Sender::builder()
        .name("rheaSender_1")
        .target(address.clone())
        .attach(&mut session)
        .await
        .unwrap();
    let correlation = |id: &str| Properties {
        correlation_id: Some(MessageId::String(id.into())),
        ..Properties::default()
    };
    let register = Message::builder()
        .properties(correlation("0b7c7f3e-8f7a-4b55-9d0a-3c2b1a000001"))
        .application_properties(
            ApplicationProperties::builder()
                .insert("iotdps-operation-type", "iotdps-register")
                .insert("iotdps-forceRegistration", SimpleValue::Bool(false))
                .build(),
        )
        .data(Data(Binary::from(
            br#"{"registrationId":"node-dev"}"#.to_vec(),
        )))
        .build();
    sender.send(register).await.unwrap();
    let (answer, properties, _) = next_answer(&mut receiver).await;
    assert_eq!(
        properties.and_then(|p| p.correlation_id),
        Some(MessageId::String(
            "0b7c7f3e-8f7a-4b55-9d0a-3c2b1a000001".into()
        ))
    );
    assert_eq!(answer["status"], "assigned", "{answer}");
    let operation_id = answer["operationId"].as_str().unwrap().to_owned();

    let poll = |id: &str| {
        Message::builder()
            .properties(correlation(id))
            .application_properties(
                ApplicationProperties::builder()
                    .insert("iotdps-operation-type", "iotdps-get-operationstatus")
                    .insert("iotdps-operation-id", operation_id.as_str())
                    .build(),
            )
            .value(String::new())
            .build()
    };
    let first = sender.send_batchable(poll("poll-1")).await.unwrap();
    let second = sender.send_batchable(poll("poll-2")).await.unwrap();
    let mut echoed = Vec::new();
    for _ in 0..2 {
        let (answer, properties, _) = next_answer(&mut receiver).await;
        assert_eq!(answer["status"], "assigned", "{answer}");
        echoed.push(properties.and_then(|p| p.correlation_id));
    }
    assert_eq!(
        echoed,
        [
            Some(MessageId::String("poll-1".into())),
            Some(MessageId::String("poll-2".into()))
        ]
    );
    assert!(matches!(first.await.unwrap(), Outcome::Accepted(_)));
    assert!(matches!(second.await.unwrap(), Outcome::Accepted(_)));
    connection.close().await.unwrap();
}

/// Requests the core refuses are rejected with the DPS error JSON as the description, under the
/// condition Node maps to the same class of error; credentials the core refuses close the
/// connection at open; a request over a link at another device's address is that device's (and
/// refused); a link at no DPS address is detached.
#[tokio::test]
async fn refusals_carry_the_dps_error_json() {
    let s = TestServer::start_with(assigned()).await;
    let (key, _) = s.enroll("ref-dev", json!({})).await;
    s.enroll("other-dev", json!({})).await;
    let address = format!("{}/registrations/ref-dev", s.scope);
    let (mut connection, mut session) = open(&s, "ref-dev", &key).await;
    let mut receiver = Receiver::builder()
        .name("answers")
        .source(address.clone())
        .attach(&mut session)
        .await
        .unwrap();
    let mut sender = Sender::builder()
        .name("requests")
        .target(address.clone())
        .attach(&mut session)
        .await
        .unwrap();
    let request = |operation: &str, body: &[u8]| {
        Message::builder()
            .application_properties(
                ApplicationProperties::builder()
                    .insert("iotdps-operation-type", operation)
                    .insert("iotdps-operation-id", "5.00.none")
                    .build(),
            )
            .data(Data(Binary::from(body.to_vec())))
            .build()
    };
    for (operation, body, condition, code) in [
        (
            "iotdps-register",
            &b"{oops"[..],
            ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error")),
            400_006,
        ),
        (
            "iotdps-get-operationstatus",
            b"",
            ErrorCondition::AmqpError(AmqpError::NotFound),
            404_203,
        ),
        (
            "iotdps-get-registration",
            b"",
            ErrorCondition::AmqpError(AmqpError::NotFound),
            404_201,
        ),
    ] {
        let outcome = sender.send(request(operation, body)).await.unwrap();
        let Outcome::Rejected(rejected) = outcome else {
            panic!("{operation}: {outcome:?}")
        };
        let error = rejected.error.unwrap();
        assert_eq!(error.condition, condition, "{operation}");
        let body: Json = serde_json::from_str(error.description.as_deref().unwrap()).unwrap();
        if operation == "iotdps-get-registration" {
            assert_eq!(body["errorCode"].as_u64().unwrap() / 1000, 404, "{body}");
        } else {
            assert_eq!(body["errorCode"], code, "{body}");
        }
        assert!(body["trackingId"].is_string(), "{body}");
    }
    // Nothing was recorded, and the session is still good.
    assert_eq!(
        s.registration("ref-dev").await.0,
        reqwest::StatusCode::NOT_FOUND
    );
    let outcome = sender
        .send(request("iotdps-register", b"{}"))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let (answer, _, _) = next_answer(&mut receiver).await;
    assert_eq!(answer["status"], "assigned");
    connection.close().await.unwrap();

    // A wrong key, an expired token and an unknown scope: the connection opens and is closed at
    // once with amqp:unauthorized-access and the 401 JSON.
    let other_key = usher_proto::SymmetricKey::generate(&[7; 32])
        .unwrap()
        .to_base64();
    let expired = Credential::individual("ref-dev", &key)
        .unwrap()
        .token(&s.scope, 1)
        .unwrap();
    let good = s.token("ref-dev", &key);
    for (user, token) in [
        (
            format!("{}/registrations/ref-dev", s.scope),
            s.token("ref-dev", &other_key),
        ),
        (format!("{}/registrations/ref-dev", s.scope), expired),
        ("0ne00000000/registrations/ref-dev".to_owned(), good.clone()),
    ] {
        let (close, _) = raw_open(&s, &user, &token).await.unwrap();
        let error = close.expect("closed with an error");
        assert_eq!(
            error.condition,
            ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
        );
        let body: Json = serde_json::from_str(error.description.as_deref().unwrap()).unwrap();
        assert_eq!(body["errorCode"], 401_002, "{body}");
        assert_eq!(body["message"], "Unauthorized", "{body}");
    }
    // A SASL user name that is not {idScope}/registrations/{registrationId}: SASL fails.
    assert_eq!(
        raw_open(&s, "someone", &good).await.unwrap_err(),
        SaslCode::Auth
    );

    // Links at another device's address attach, and what is sent over them is that device's
    // request, judged as HTTPS and MQTT judge a path naming another device: ref-dev's token is not
    // other-dev's, so the register is rejected with 401002 and nothing is recorded.
    let (mut connection, mut session) = open(&s, "ref-dev", &key).await;
    let other = format!("{}/registrations/other-dev", s.scope);
    let _receiver = Receiver::builder()
        .name("answers")
        .source(other.clone())
        .attach(&mut session)
        .await
        .unwrap();
    let mut sender = Sender::builder()
        .name("requests")
        .target(other)
        .attach(&mut session)
        .await
        .unwrap();
    let outcome = sender
        .send(request("iotdps-register", b"{}"))
        .await
        .unwrap();
    let Outcome::Rejected(rejected) = outcome else {
        panic!("another device's register: {outcome:?}")
    };
    let error = rejected.error.unwrap();
    assert_eq!(
        error.condition,
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
    );
    let body: Json = serde_json::from_str(error.description.as_deref().unwrap()).unwrap();
    assert_eq!(body["errorCode"], 401_002, "{body}");
    assert_eq!(
        s.registration("other-dev").await.0,
        reqwest::StatusCode::NOT_FOUND
    );
    connection.close().await.unwrap();

    // A link at no DPS address is attached and detached at once.
    for (address, condition) in [("$cbs".to_owned(), AmqpError::NotFound)] {
        let (None, mut transport) =
            raw_open(&s, &format!("{}/registrations/ref-dev", s.scope), &good)
                .await
                .unwrap()
        else {
            panic!("opened")
        };
        send(&mut transport, 0, FrameBody::Begin(begin())).await;
        send(
            &mut transport,
            0,
            FrameBody::Attach(attach(0, Role::Sender, &address)),
        )
        .await;
        let detach = loop {
            match next_frame(&mut transport).await {
                Some(FrameBody::Detach(d)) => break d,
                Some(_) => {}
                None => panic!("closed without a detach"),
            }
        };
        assert!(detach.closed);
        assert_eq!(
            detach.error.unwrap().condition,
            ErrorCondition::AmqpError(condition),
            "{address}"
        );
    }
    assert_still_serves(&s, "ref-dev", &key).await;
}

/// A spent failure budget closes the connection at open with the condition Node retries on
/// (`com.microsoft:device-container-throttled`), the 429 JSON, and the retry-after in `info`.
#[tokio::test]
async fn throttled_devices_are_told_when_to_retry() {
    let s = TestServer::start_with(Settings {
        throttle: usher_server::throttle::ThrottleSettings {
            failures_per_address: 100,
            failures_per_registration: 2,
        },
        ..assigned()
    })
    .await;
    let (key, _) = s.enroll("thr-dev", json!({})).await;
    let user = format!("{}/registrations/thr-dev", s.scope);
    let wrong = s.token("thr-dev", "V3Jvbmcga2V5IGZvciB0aGUgdGhyb3R0bGUgdGVzdCE=");
    for _ in 0..2 {
        let (close, _) = raw_open(&s, &user, &wrong).await.unwrap();
        assert_eq!(
            close.unwrap().condition,
            ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
        );
    }
    let (close, _) = raw_open(&s, &user, &s.token("thr-dev", &key))
        .await
        .unwrap();
    let error = close.expect("closed with an error");
    assert_eq!(
        error.condition,
        ErrorCondition::Custom(Symbol::from("com.microsoft:device-container-throttled"))
    );
    let body: Json = serde_json::from_str(error.description.as_deref().unwrap()).unwrap();
    assert_eq!(body["errorCode"], 429_001, "{body}");
    let info = error.info.unwrap();
    let Some(Value::Int(secs)) = info.get(&Symbol::from("retry-after")) else {
        panic!("{info:?}")
    };
    assert!((1..=60).contains(secs), "{secs}");
    assert_eq!(
        info.get(&Symbol::from("Retry-After")),
        Some(&Value::Int(*secs))
    );
    let err = s
        .client_over(DeviceTransport::Amqp)
        .provision(
            &Credential::individual("thr-dev", &key).unwrap(),
            None,
            |_| {},
        )
        .await;
    assert!(
        matches!(err, Err(ProvisionError::Refused { status: 429, .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn websocket_echoes_amqpwsb10_in_the_client_spelling() {
    let s = TestServer::start_with(assigned()).await;
    for spelling in ["AMQPWSB10", "amqpwsb10"] {
        let tls = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("wss://localhost:{}/$iothub/websocket", s.addr.port()),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", spelling.parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], spelling);
        // The byte stream is AMQP: the SASL header is answered with the SASL header and the
        // mechanisms, in whatever pieces.
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            SASL_HEADER.to_vec().into(),
        ))
        .await
        .unwrap();
        let mut received = Vec::new();
        while received.len() < 8 {
            match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
                    received.extend_from_slice(&b)
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(&received[..8], SASL_HEADER);
    }
}

/// Limits and garbage, each bounded in time; after each the server still registers a device, and
/// no input makes anything panic.
#[tokio::test]
async fn limits_and_garbage_input() {
    let panics = count_panics();
    let s = TestServer::start_with_limits(Limits {
        amqp: AmqpLimits {
            open_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(1),
            max_sessions: 2,
            max_links: 3,
            ..AmqpLimits::default()
        },
        ..Limits::default()
    })
    .await;
    let (key, _) = s.enroll("lim-dev", json!({})).await;
    let user = format!("{}/registrations/lim-dev", s.scope);
    let token = s.token("lim-dev", &key);
    let address = user.clone();

    // Nothing sent: closed at the open deadline.
    let started = tokio::time::Instant::now();
    let mut tls = tls_connect(&s, s.amqp_addr.port(), &[]).await;
    expect_eof(&mut tls).await;
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    // The SASL header, then silence: closed at the open deadline too.
    let mut tls = tls_connect(&s, s.amqp_addr.port(), &[]).await;
    tls.write_all(SASL_HEADER).await.unwrap();
    expect_eof(&mut tls).await;
    assert_still_serves(&s, "lim-dev", &key).await;

    // Random bytes; an HTTP request; AMQP without SASL (answered with the SASL header, then
    // closed); the TLS-upgrade header.
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for garbage in [
        &random[..],
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        AMQP_HEADER,
        b"AMQP\x02\x01\x00\x00",
    ] {
        let mut tls = tls_connect(&s, s.amqp_addr.port(), &[]).await;
        tls.write_all(garbage).await.unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(WAIT, tls.read_to_end(&mut received))
            .await
            .expect("closed in time")
            .ok();
        if garbage == AMQP_HEADER {
            assert_eq!(&received[..], SASL_HEADER, "the header the server speaks");
        }
    }
    assert_still_serves(&s, "lim-dev", &key).await;

    // Frames shorter than their own header, in SASL and after open (fe2o3-amqp's decoders would
    // panic on these; the frame guard closes the connection).
    for size in [0u32, 4, 5, 7] {
        let mut tls = tls_connect(&s, s.amqp_addr.port(), &[]).await;
        tls.write_all(SASL_HEADER).await.unwrap();
        tls.write_all(&size.to_be_bytes()).await.unwrap();
        tls.write_all(&[2, 1, 0, 0]).await.unwrap();
        expect_eof(&mut tls).await;
    }
    let (None, transport) = raw_open(&s, &user, &token).await.unwrap() else {
        panic!("opened")
    };
    let mut tls = into_stream(transport);
    tls.write_all(&[0, 0, 0, 6, 2, 0]).await.unwrap();
    tls.flush().await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut sink))
        .await
        .expect("closed in time");
    // A truncated frame after open: the idle time-out (1 s since the last whole frame, the
    // Open) closes the connection.
    let opened = tokio::time::Instant::now();
    let (None, transport) = raw_open(&s, &user, &token).await.unwrap() else {
        panic!("opened")
    };
    let mut tls = into_stream(transport);
    tls.write_all(&[0, 0, 1, 0, 2, 0, 0, 0, 0x00, 0x53])
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut sink))
        .await
        .expect("closed in time");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "{:?}",
        opened.elapsed()
    );
    assert_still_serves(&s, "lim-dev", &key).await;

    // Too many sessions: the connection is closed with an error.
    let (None, mut transport) = raw_open(&s, &user, &token).await.unwrap() else {
        panic!("opened")
    };
    for channel in 0..3u16 {
        send(&mut transport, channel, FrameBody::Begin(begin())).await;
    }
    let close = loop {
        match next_frame(&mut transport).await {
            Some(FrameBody::Close(c)) => break c,
            Some(_) => {}
            None => panic!("dropped without a close"),
        }
    };
    assert!(close.error.is_some(), "{close:?}");

    // Too many links in a session: the session is ended with amqp:resource-limit-exceeded.
    let (None, mut transport) = raw_open(&s, &user, &token).await.unwrap() else {
        panic!("opened")
    };
    send(&mut transport, 0, FrameBody::Begin(begin())).await;
    for handle in 0..4u32 {
        send(
            &mut transport,
            0,
            FrameBody::Attach(attach(handle, Role::Sender, &address)),
        )
        .await;
    }
    let end = loop {
        match next_frame(&mut transport).await {
            Some(FrameBody::End(e)) => break e,
            Some(_) => {}
            None => panic!("dropped without an end"),
        }
    };
    assert_eq!(
        end.error.unwrap().condition,
        ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded)
    );

    // A message over 96 KB, in frames within the frame size: the link is detached with
    // amqp:link:message-size-exceeded.
    let (None, mut transport) = raw_open(&s, &user, &token).await.unwrap() else {
        panic!("opened")
    };
    transport.set_encoder_max_frame_size(64 * 1024);
    send(&mut transport, 0, FrameBody::Begin(begin())).await;
    send(
        &mut transport,
        0,
        FrameBody::Attach(attach(0, Role::Sender, &address)),
    )
    .await;
    let mut payload = serde_amqp::to_vec(
        &ApplicationProperties::builder()
            .insert("iotdps-operation-type", "iotdps-register")
            .build(),
    )
    .unwrap();
    payload.extend(serde_amqp::to_vec(&Data(Binary::from(vec![b' '; 100 * 1024]))).unwrap());
    // Wait for the server's credit before sending, as a well-behaved sender would.
    loop {
        match next_frame(&mut transport).await {
            Some(FrameBody::Flow(f)) if f.link_credit.unwrap_or(0) > 0 => break,
            Some(_) => {}
            None => panic!("closed before credit"),
        }
    }
    send(
        &mut transport,
        0,
        FrameBody::Transfer {
            performative: transfer(0),
            payload: payload.into(),
        },
    )
    .await;
    let detach = loop {
        match next_frame(&mut transport).await {
            Some(FrameBody::Detach(d)) => break d,
            Some(_) => {}
            None => panic!("closed without a detach"),
        }
    };
    assert_eq!(
        detach.error.unwrap().condition,
        ErrorCondition::LinkError(LinkError::MessageSizeExceeded)
    );
    // A single frame over the frame size: the connection is closed.
    let (None, mut transport) = raw_open(&s, &user, &token).await.unwrap() else {
        panic!("opened")
    };
    transport.set_encoder_max_frame_size(1 << 20);
    send(&mut transport, 0, FrameBody::Begin(begin())).await;
    send(
        &mut transport,
        0,
        FrameBody::Attach(attach(0, Role::Sender, &address)),
    )
    .await;
    send(
        &mut transport,
        0,
        FrameBody::Transfer {
            performative: transfer(0),
            payload: vec![0u8; 200 * 1024].into(),
        },
    )
    .await;
    while next_frame(&mut transport).await.is_some() {}
    assert_still_serves(&s, "lim-dev", &key).await;
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a panic happened while the garbage was served"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let s = TestServer::start_with_limits(Limits {
        amqp: AmqpLimits {
            max_connections: 1,
            ..AmqpLimits::default()
        },
        ..Limits::default()
    })
    .await;
    let (key, _) = s.enroll("one-dev", json!({})).await;
    let (mut first, _session) = open(&s, "one-dev", &key).await;
    let mut second = tls_connect(&s, s.amqp_addr.port(), &[]).await;
    second.write_all(SASL_HEADER).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, second.read_to_end(&mut received))
        .await
        .expect("closed at once")
        .ok();
    assert!(received.is_empty(), "{received:?}");
    first.close().await.unwrap();
    // The slot is free again.
    let mut third = None;
    for _ in 0..50 {
        if let Ok(opened) = try_open(&s, "one-dev", &key).await {
            third = Some(opened);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut third, mut session) = third.expect("a connection after the first closed");
    session.end().await.unwrap();
    third.close().await.unwrap();
}

// ---- helpers --------------------------------------------------------------------------------

/// Counts panics from now on, in any thread of this test binary.
fn count_panics() -> Arc<AtomicUsize> {
    static COUNT: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();
    let count = COUNT.get_or_init(|| {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            seen.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        count
    });
    count.store(0, Ordering::SeqCst);
    Arc::clone(count)
}

/// An fe2o3-amqp client connection and session, authenticated as a device.
async fn open(s: &TestServer, id: &str, key: &str) -> (ConnectionHandle<()>, SessionHandle<()>) {
    try_open(s, id, key).await.unwrap()
}

async fn try_open(
    s: &TestServer,
    id: &str,
    key: &str,
) -> Result<(ConnectionHandle<()>, SessionHandle<()>), String> {
    let tls = tls_connect(s, s.amqp_addr.port(), &[]).await;
    let mut connection = Connection::builder()
        .container_id(format!("test-{id}"))
        .hostname("localhost")
        .scheme("amqp")
        .sasl_profile(SaslProfile::Plain {
            username: format!("{}/registrations/{id}", s.scope),
            password: s.token(id, key),
        })
        .open_with_stream(tls)
        .await
        .map_err(|e| e.to_string())?;
    let session = Session::begin(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, session))
}

/// The next answer: its JSON body (which must be a data section), properties and application
/// properties.
async fn next_answer(
    receiver: &mut Receiver,
) -> (Json, Option<Properties>, Option<ApplicationProperties>) {
    let delivery = tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>())
        .await
        .expect("an answer in time")
        .unwrap();
    receiver.accept(&delivery).await.unwrap();
    let message = delivery.into_message();
    let Body::Data(batch) = message.body else {
        panic!("the answer is not a data section: {:?}", message.body)
    };
    let bytes: Vec<u8> = batch.iter().flat_map(|d| d.0.iter().copied()).collect();
    (
        serde_json::from_slice(&bytes).unwrap(),
        message.properties,
        message.application_properties,
    )
}

/// A device still provisions over AMQP.
async fn assert_still_serves(s: &TestServer, id: &str, key: &str) {
    let result = tokio::time::timeout(
        WAIT,
        s.client_over(DeviceTransport::Amqp).provision(
            &Credential::individual(id, key).unwrap(),
            None,
            |_| {},
        ),
    )
    .await
    .expect("provisioned in time")
    .unwrap();
    assert_eq!(result.status, RegistrationStatus::Assigned);
}

async fn expect_eof(tls: &mut TlsStream<TcpStream>) {
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut received))
        .await
        .expect("closed in time")
        .ok();
}

/// One SASL frame, by hand: size, data offset 2, type 1 (SASL), channel 0, the performative.
fn sasl_frame<T: serde::Serialize>(performative: &T) -> Vec<u8> {
    let body = serde_amqp::to_vec(performative).unwrap();
    let mut frame = u32::try_from(body.len() + 8)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    frame.extend([2, 1, 0, 0]);
    frame.extend(body);
    frame
}

/// Opens a connection frame by frame: the SASL header, PLAIN, the AMQP header, Open. Returns the
/// server's Close error if it closed the connection right after Open (with the transport), or
/// the SASL outcome code if SASL failed.
async fn raw_open(
    s: &TestServer,
    user: &str,
    token: &str,
) -> Result<
    (
        Option<fe2o3_amqp::types::definitions::Error>,
        Transport<TlsStream<TcpStream>, Frame>,
    ),
    SaslCode,
> {
    let mut tls = tls_connect(s, s.amqp_addr.port(), &[]).await;
    tls.write_all(SASL_HEADER).await.unwrap();
    let mut header = [0u8; 8];
    tls.read_exact(&mut header).await.unwrap();
    assert_eq!(&header, SASL_HEADER);
    let _mechanisms = read_raw_frame(&mut tls).await;
    let mut response = vec![0u8];
    response.extend(user.as_bytes());
    response.push(0);
    response.extend(token.as_bytes());
    tls.write_all(&sasl_frame(&SaslInit {
        mechanism: Symbol::from("PLAIN"),
        initial_response: Some(Binary::from(response)),
        hostname: Some("localhost".into()),
    }))
    .await
    .unwrap();
    let outcome: SaslOutcome = serde_amqp::from_slice(&read_raw_frame(&mut tls).await).unwrap();
    if outcome.code != SaslCode::Ok {
        return Err(outcome.code);
    }
    tls.write_all(AMQP_HEADER).await.unwrap();
    tls.read_exact(&mut header).await.unwrap();
    assert_eq!(&header, AMQP_HEADER);
    let mut transport = Transport::<_, Frame>::bind(tls, 1 << 20, None);
    send(
        &mut transport,
        0,
        FrameBody::Open(Open {
            container_id: "raw".into(),
            hostname: Some("localhost".into()),
            max_frame_size: (1u32 << 20).into(),
            channel_max: 100u16.into(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }),
    )
    .await;
    let Some(FrameBody::Open(_)) = next_frame(&mut transport).await else {
        panic!("no Open")
    };
    // A refused device gets its Close at once; an accepted one nothing until it begins.
    match tokio::time::timeout(Duration::from_millis(300), transport.next()).await {
        Ok(Some(Ok(Frame {
            body: FrameBody::Close(close),
            ..
        }))) => Ok((Some(close.error.expect("an error")), transport)),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => Ok((None, transport)),
    }
}

/// Reads one frame by hand and returns its body (after the 8-byte header).
async fn read_raw_frame(tls: &mut TlsStream<TcpStream>) -> Vec<u8> {
    let mut size = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut size))
        .await
        .unwrap()
        .unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(size) as usize - 4];
    tls.read_exact(&mut rest).await.unwrap();
    rest.split_off(4)
}

/// The TLS stream under a raw transport, to write bytes that are not frames.
fn into_stream(transport: Transport<TlsStream<TcpStream>, Frame>) -> TlsStream<TcpStream> {
    let (write, read) = transport.into_framed_codec();
    read.into_inner().unsplit(write.into_inner())
}

async fn send(
    transport: &mut Transport<TlsStream<TcpStream>, Frame>,
    channel: u16,
    body: FrameBody,
) {
    transport.send(Frame::new(channel, body)).await.unwrap();
}

/// The next frame's body (empty frames skipped), or `None` once the server closes the stream.
async fn next_frame(transport: &mut Transport<TlsStream<TcpStream>, Frame>) -> Option<FrameBody> {
    loop {
        match tokio::time::timeout(WAIT, transport.next())
            .await
            .expect("a frame or the end in time")
        {
            Some(Ok(Frame {
                body: FrameBody::Empty,
                ..
            })) => {}
            Some(Ok(frame)) => return Some(frame.body),
            Some(Err(_)) | None => return None,
        }
    }
}

fn begin() -> Begin {
    Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 100,
        outgoing_window: 100,
        handle_max: 10u32.into(),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn attach(handle: u32, role: Role, address: &str) -> Attach {
    let sender = role == Role::Sender;
    let (source, target) = match role {
        Role::Sender => ("local_endpoint".to_owned(), address.to_owned()),
        Role::Receiver => (address.to_owned(), "local_endpoint".to_owned()),
    };
    Attach {
        name: format!("raw-link-{handle}"),
        handle: handle.into(),
        role,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source::builder().address(source).build())),
        target: Some(Box::new(TargetArchetype::Target(
            Target::builder().address(target).build(),
        ))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: sender.then_some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn transfer(handle: u32) -> Transfer {
    Transfer {
        handle: handle.into(),
        delivery_id: Some(0),
        delivery_tag: Some(Binary::from(vec![1u8])),
        message_format: Some(0),
        settled: Some(false),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    }
}
