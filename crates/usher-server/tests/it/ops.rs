//! The operator's view: metrics after known traffic, the health probes, and shutdown that drains
//! within its bound.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use usher_device::{Credential, ProvisionError, Transport};
use usher_proto::model::RegistrationStatus;
use usher_server::Settings;

use crate::support::{TestServer, fast, tls_connect};

/// Every sample of a scrape, keyed by series (`name{labels}`).
async fn scrape(s: &TestServer) -> HashMap<String, f64> {
    let (status, headers, text) = plain_get(s, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{headers:?}"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// A GET on the metrics listener (plain HTTP): status, headers, body.
async fn plain_get(s: &TestServer, path: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let url = format!("http://{}{path}", s.metrics_addr.unwrap());
    let response = reqwest::get(url).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.text().await.unwrap())
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in the scrape: {samples:#?}"))
}

#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let s = TestServer::start_with_metrics(fast()).await;
    // A custom allocation webhook that refuses: its devices' registrations fail.
    let hook = crate::support::WebhookServer::start(vec![crate::support::Answer(
        401,
        json!({}),
        Duration::ZERO,
    )])
    .await;
    // Three management writes.
    let (group_key, _) = s.enroll_group("m-grp", json!({})).await;
    let (custom_key, _) = s
        .enroll(
            "m-custom",
            json!({"allocationPolicy": "custom",
                   "customAllocationDefinition": {"webhookUrl": hook.url, "apiVersion": "2021-10-01"}}),
        )
        .await;
    let (off_key, _) = s
        .enroll("m-off", json!({"provisioningStatus": "disabled"}))
        .await;
    let member = |id: &str| Credential::from_group_key(id, &group_key).unwrap();
    let impostor = |id: &str| Credential::individual(id, &off_key).unwrap();

    // HTTPS: 3 assigned, 2 refused (wrong key), 1 failed (the webhook refuses: the register is
    // answered `assigning` and the device polls once), 1 operation status.
    let https = s.device_client();
    let mut operation = None;
    for i in 0..3 {
        let status = https
            .provision(&member(&format!("m-https-{i}")), None, |_| {})
            .await
            .unwrap();
        operation = Some(status.operation_id);
    }
    for i in 0..2 {
        let refused = https
            .provision(&impostor(&format!("m-https-{i}")), None, |_| {})
            .await;
        assert!(
            matches!(refused, Err(ProvisionError::Refused { status: 401, .. })),
            "{refused:?}"
        );
    }
    match https
        .provision(
            &Credential::individual("m-custom", &custom_key).unwrap(),
            None,
            |_| {},
        )
        .await
    {
        Err(ProvisionError::NotAssigned(status)) => {
            assert_eq!(status.status, RegistrationStatus::Failed)
        }
        other => panic!("{other:?}"),
    }
    let key = member("m-https-2");
    let token = s.token("m-https-2", &key.key().unwrap().to_base64());
    let (status, _, body) = s
        .device_request(
            Method::GET,
            &format!(
                "/{}/registrations/m-https-2/operations/{}",
                s.scope,
                operation.unwrap()
            ),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // MQTT: 2 assigned, 1 refused, 1 disabled. MQTT over WebSockets: 1 assigned.
    let mqtt = s.client_over(Transport::Mqtt);
    for i in 0..2 {
        mqtt.provision(&member(&format!("m-mqtt-{i}")), None, |_| {})
            .await
            .unwrap();
    }
    assert!(
        mqtt.provision(&impostor("m-mqtt-x"), None, |_| {})
            .await
            .is_err()
    );
    match mqtt
        .provision(
            &Credential::individual("m-off", &off_key).unwrap(),
            None,
            |_| {},
        )
        .await
    {
        Err(ProvisionError::NotAssigned(status)) => {
            assert_eq!(status.status, RegistrationStatus::Disabled)
        }
        other => panic!("{other:?}"),
    }
    s.client_over(Transport::MqttWs)
        .provision(&member("m-ws-0"), None, |_| {})
        .await
        .unwrap();
    // AMQP and AMQP over WebSockets: 1 assigned each (attested at open and at register).
    for (transport, id) in [
        (Transport::Amqp, "m-amqp-0"),
        (Transport::AmqpWs, "m-amqp-ws-0"),
    ] {
        s.client_over(transport)
            .provision(&member(id), None, |_| {})
            .await
            .unwrap();
    }

    let m = scrape(&s).await;
    let attestations = |status: &str, protocol: &str| {
        value(
            &m,
            &format!(
                "usher_attestation_attempts_total{{status=\"{status}\",protocol=\"{protocol}\"}}"
            ),
        )
    };
    assert_eq!(attestations("success", "https"), 6.0);
    assert_eq!(attestations("failure", "https"), 2.0);
    assert_eq!(attestations("success", "mqtt"), 3.0);
    assert_eq!(attestations("failure", "mqtt"), 1.0);
    assert_eq!(attestations("success", "mqtt-ws"), 1.0);
    assert_eq!(attestations("failure", "mqtt-ws"), 0.0);
    assert_eq!(attestations("success", "amqp"), 2.0);
    assert_eq!(attestations("success", "amqp-ws"), 2.0);
    assert_eq!(attestations("failure", "amqp"), 0.0);

    let registrations = |hub: &str, status: &str| {
        value(
            &m,
            &format!("usher_registration_attempts_total{{hub=\"{hub}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(registrations("localhost", "assigned"), 8.0);
    assert_eq!(registrations("", "failed"), 1.0);
    assert_eq!(registrations("", "disabled"), 1.0);
    assert_eq!(
        value(&m, "usher_device_assignments_total{hub=\"localhost\"}"),
        8.0
    );

    let requests = |protocol: &str, operation: &str| {
        value(
            &m,
            &format!(
                "usher_request_duration_seconds_count{{protocol=\"{protocol}\",operation=\"{operation}\"}}"
            ),
        )
    };
    assert_eq!(requests("https", "register"), 6.0);
    assert_eq!(requests("https", "operation_status"), 2.0);
    assert_eq!(requests("mqtt", "register"), 4.0);
    assert_eq!(requests("mqtt-ws", "register"), 1.0);
    assert_eq!(requests("amqp", "register"), 1.0);
    assert_eq!(requests("amqp-ws", "register"), 1.0);
    assert_eq!(requests("https", "management"), 3.0);
    // Every request took some time, and fell into some bucket.
    assert!(
        value(
            &m,
            "usher_request_duration_seconds_sum{protocol=\"https\",operation=\"register\"}"
        ) > 0.0
    );
    assert_eq!(
        value(
            &m,
            "usher_request_duration_seconds_bucket{protocol=\"https\",operation=\"register\",le=\"+Inf\"}"
        ),
        6.0
    );

    // The store's writer ran at least the 3 enrollment writes and the 10 registration writes (the
    // custom allocation's twice: assigning, then failed), besides audit entries, in however many
    // transactions group commit made of them.
    let writes = value(&m, "usher_store_commit_batch_size_sum");
    assert!(writes >= 13.0, "{writes}");
    let commits = value(&m, "usher_store_commit_batch_size_count");
    assert!((1.0..=writes).contains(&commits), "{commits}");
    assert_eq!(
        value(&m, "usher_store_commit_duration_seconds_count"),
        commits
    );
    assert!(value(&m, "usher_store_commit_duration_seconds_sum") > 0.0);
    for reason in ["address", "registration_id"] {
        let series = format!("usher_throttled_requests_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&m, &series), 0.0, "{series}");
    }

    // Open connections and sessions: one MQTT session held open, one bare HTTPS connection.
    let _https_conn = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
    let mut session = tls_connect(&s, s.mqtt_addr.port(), &[]).await;
    let mut connect = Vec::new();
    usher_proto::mqtt::encode(
        &usher_proto::mqtt::Packet::Connect(Box::new(usher_proto::mqtt::Connect {
            protocol_name: "MQTT".into(),
            protocol_level: usher_proto::mqtt::PROTOCOL_LEVEL,
            clean_session: true,
            keep_alive: 60,
            client_id: "m-held".into(),
            will: None,
            username: Some(format!(
                "{}/registrations/m-held/api-version=2019-03-31",
                s.scope
            )),
            password: Some(b"SharedAccessSignature x".to_vec()),
        })),
        &mut connect,
    );
    session.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    session.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // The provisioning clients' sessions end asynchronously: wait for the count to settle.
    let mut settled = None;
    for _ in 0..100 {
        let m = scrape(&s).await;
        if value(&m, "usher_mqtt_sessions{protocol=\"mqtt\"}") == 1.0
            && value(&m, "usher_mqtt_sessions{protocol=\"mqtt-ws\"}") == 0.0
            && value(&m, "usher_open_connections{listener=\"mqtt\"}") == 1.0
            && value(&m, "usher_open_connections{listener=\"amqp\"}") == 0.0
            && value(&m, "usher_amqp_connections{protocol=\"amqp\"}") == 0.0
            && value(&m, "usher_amqp_connections{protocol=\"amqp-ws\"}") == 0.0
        {
            settled = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = settled.expect("one MQTT session and connection open, none over WebSockets");
    assert!(value(&m, "usher_open_connections{listener=\"https\"}") >= 1.0);
    drop(session);
}

#[tokio::test]
async fn health_probes_on_both_listeners() {
    let s = TestServer::start_with_metrics(Settings::default()).await;
    // On the HTTPS port: no credentials, no api-version.
    let (status, headers, body) = s.raw_request(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Value::String("ok".into()));
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let (status, _, body) = s.raw_request(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ready"}));
    let (status, headers, _) = s
        .raw_request(Method::POST, "/readyz", None, Some("{}"))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");
    // Only the exact paths are probes: anything else is still the DPS API.
    let (status, _, body) = s.raw_request(Method::GET, "/healthz/x", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // On the metrics listener.
    let (status, _, body) = plain_get(&s, "/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, headers, body) = plain_get(&s, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ready"})
    );
    let (status, _, _) = plain_get(&s, "/enrollments").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Writes a register request whose body is one byte short, so the request is in flight until
/// the rest is sent.
async fn start_register(
    s: &TestServer,
    id: &str,
    token: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let body = format!("{{\"registrationId\":\"{id}\"}}").into_bytes();
    let head = format!(
        "PUT /{}/registrations/{id}/register?api-version=2021-06-01 HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        s.scope,
        body.len()
    );
    let mut conn = tls_connect(s, s.addr.port(), &[b"http/1.1"]).await;
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..body.len() - 1]).await.unwrap();
    conn.flush().await.unwrap();
    (conn, body[body.len() - 1..].to_vec())
}

#[tokio::test]
async fn shutdown_fails_readiness_at_once_and_lets_a_request_in_flight_finish() {
    let settings = Settings {
        shutdown_timeout: Duration::from_secs(5),
        ..fast()
    };
    let mut s = TestServer::start_with_metrics(settings).await;
    let (key, _) = s.enroll("drain-dev", json!({})).await;
    let token = s.token("drain-dev", &key);
    let (mut conn, rest) = start_register(&s, "drain-dev", &token).await;
    // Let the server read the head and start waiting for the body.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = tokio::time::Instant::now();
    s.begin_shutdown();
    let mut answer = None;
    for _ in 0..50 {
        let (status, _, body) = plain_get(&s, "/readyz").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            answer = Some(serde_json::from_str::<Value>(&body).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = answer.expect("/readyz answers 503 once shutdown begins");
    assert_eq!(answer["status"], "not ready");
    assert!(
        answer["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("shutting down")),
        "{answer}"
    );
    // Alive all the same.
    assert_eq!(plain_get(&s, "/healthz").await.0, StatusCode::OK);
    // The server is still draining: the request in flight holds it.
    assert!(!s.stopped_within(Duration::from_millis(300)).await);

    conn.write_all(&rest).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("\"status\":\"assigned\""), "{response}");
    // Nothing else is open, so the server stops long before its bound.
    assert!(s.stopped_within(Duration::from_secs(3)).await);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The metrics listener is gone with it.
    let url = format!("http://{}/healthz", s.metrics_addr.unwrap());
    assert!(reqwest::get(url).await.is_err());
}

#[tokio::test]
async fn shutdown_closes_what_is_still_open_when_its_bound_is_up() {
    let bound = Duration::from_secs(1);
    let settings = Settings {
        shutdown_timeout: bound,
        ..fast()
    };
    let mut s = TestServer::start_with_metrics(settings).await;
    let (key, _) = s.enroll("stuck-dev", json!({})).await;
    let token = s.token("stuck-dev", &key);
    // The last body byte never comes.
    let (mut conn, _) = start_register(&s, "stuck-dev", &token).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = tokio::time::Instant::now();
    s.begin_shutdown();
    assert!(s.stopped_within(bound + Duration::from_secs(2)).await);
    let took = started.elapsed();
    assert!(took >= bound - Duration::from_millis(100), "{took:?}");
    assert!(took < bound + Duration::from_millis(1500), "{took:?}");
    // The stuck connection was closed, not left behind.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection is still open");
}

#[tokio::test]
async fn throttled_requests_are_counted_by_the_budget_spent() {
    let settings = Settings {
        throttle: usher_server::throttle::ThrottleSettings {
            failures_per_address: 1_000,
            failures_per_registration: 1,
        },
        ..fast()
    };
    let s = TestServer::start_with_metrics(settings).await;
    s.enroll("t-dev", json!({})).await;
    let wrong = s.token(
        "t-dev",
        &usher_proto::SymmetricKey::generate(&[7; 32])
            .unwrap()
            .to_base64(),
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, _, _) = s
            .device_request(
                Method::PUT,
                &format!("/{}/registrations/t-dev/register", s.scope),
                Some(&wrong),
                Some(b"{}".to_vec()),
            )
            .await;
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [401, 429, 429]);
    let m = scrape(&s).await;
    assert_eq!(
        value(
            &m,
            "usher_throttled_requests_total{reason=\"registration_id\"}"
        ),
        2.0
    );
    assert_eq!(
        value(&m, "usher_throttled_requests_total{reason=\"address\"}"),
        0.0
    );
    // A throttled request is refused before attestation, so it is no attestation attempt.
    assert_eq!(
        value(
            &m,
            "usher_attestation_attempts_total{status=\"failure\",protocol=\"https\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "usher_request_duration_seconds_count{protocol=\"https\",operation=\"register\"}"
        ),
        3.0
    );
}
