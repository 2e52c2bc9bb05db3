//! The device API over HTTPS, through the device library and as raw requests.

use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::json;
use usher_device::Credential;
use usher_device::{Progress, ProvisionError};
use usher_proto::SymmetricKey;
use usher_proto::model::RegistrationStatus;
use usher_server::{RegisterResponse, Settings};

use crate::support::{TestServer, assert_error, unix_now};

#[tokio::test]
async fn individual_enrollment_with_primary_then_secondary_key() {
    let s = TestServer::start().await;
    let (primary, secondary) = s.enroll("dev-ind-1", json!({})).await;
    for key in [&primary, &secondary] {
        let cred = Credential::individual("dev-ind-1", key).unwrap();
        let result = s
            .device_client()
            .provision(&cred, None, |_| {})
            .await
            .unwrap();
        assert_eq!(result.status, RegistrationStatus::Assigned);
        let state = result.registration_state.unwrap();
        assert_eq!(state.assigned_hub.as_deref(), Some("localhost"));
        assert_eq!(state.device_id.as_deref(), Some("dev-ind-1"));
        assert_eq!(state.substatus.unwrap().as_str(), "initialAssignment");
    }
    let devices = s.hub_devices("usher-hub").await;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["deviceId"], "dev-ind-1");
    assert_eq!(devices[0]["status"], "enabled");
    let (status, reg) = s.registration("dev-ind-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reg["status"], "assigned");
    assert_eq!(reg["assignedHub"], "localhost");
}

#[tokio::test]
async fn group_member_with_keys_derived_from_primary_and_secondary() {
    let s = TestServer::start().await;
    let (primary, secondary) = s.enroll_group("floor-1", json!({})).await;
    for (id, group_key) in [("sensor-a", &primary), ("sensor-b", &secondary)] {
        let cred = Credential::from_group_key(id, group_key).unwrap();
        let result = s
            .device_client()
            .provision(&cred, None, |_| {})
            .await
            .unwrap();
        let state = result.registration_state.unwrap();
        assert_eq!(state.device_id.as_deref(), Some(id));
        assert_eq!(
            state.symmetric_key.unwrap().enrollment_group_id.as_deref(),
            Some("floor-1")
        );
    }
    let (_, reg) = s.registration("sensor-a").await;
    assert_eq!(reg["symmetricKey"]["enrollmentGroupId"], "floor-1");
    let (status, _, records) = s
        .call(Method::POST, "/registrations/floor-1/query", None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(records.as_array().unwrap().len(), 2);
    assert_eq!(s.hub_devices("usher-hub").await.len(), 2);
}

#[tokio::test]
async fn group_derivation_uses_the_device_spelling_and_ids_are_case_insensitive() {
    let s = TestServer::start().await;
    let (group_key, _) = s.enroll_group("g", json!({})).await;
    // Derived from "Sensor-X" exactly as the device spells it.
    let cred = Credential::from_group_key("Sensor-X", &group_key).unwrap();
    s.device_client()
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
    // A key derived from another spelling does not verify for this one.
    let wrong = SymmetricKey::from_base64(&group_key)
        .unwrap()
        .derive_device_key("sensor-x");
    let cred = Credential::individual("Sensor-X", &wrong.to_base64()).unwrap();
    assert!(matches!(
        s.device_client().provision(&cred, None, |_| {}).await,
        Err(ProvisionError::Refused { status: 401, .. })
    ));

    let (key, _) = s.enroll("Dev-Mixed-1", json!({})).await;
    let cred = Credential::individual("dev-mixed-1", &key).unwrap();
    let result = s
        .device_client()
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
    assert_eq!(
        result.registration_state.unwrap().device_id.as_deref(),
        Some("Dev-Mixed-1")
    );
    let (status, _) = s.registration("DEV-MIXED-1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn assigning_mode_answers_202_and_the_device_polls_after_retry_after() {
    let settings = Settings {
        register_response: RegisterResponse::Assigning {
            retry_after_secs: 1,
        },
        ..Settings::default()
    };
    let s = TestServer::start_with(settings).await;
    let (key, _) = s.enroll("poller", json!({})).await;
    let token = s.token("poller", &key);
    let (status, headers, body) = s
        .device_request(
            Method::PUT,
            &format!(
                "/{}/registrations/poller/register?api-version=2019-03-31",
                s.scope
            ),
            Some(&token),
            Some(br#"{"registrationId":"poller"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["status"], "assigning");
    let op = body["operationId"].as_str().unwrap();
    assert!(
        op.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{op}"
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let cred = Credential::individual("poller", &key).unwrap();
    let result = s
        .device_client()
        .provision(&cred, None, move |p| log.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(result.status, RegistrationStatus::Assigned);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            Progress::Registering,
            Progress::Assigning {
                retry_after: std::time::Duration::from_secs(1)
            }
        ]
    );
}

#[tokio::test]
async fn operation_status_and_status_lookup() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("dev-op", json!({})).await;
    let token = s.token("dev-op", &key);
    let base = format!("/{}/registrations/dev-op", s.scope);
    let (status, _, body) = s
        .device_request(
            Method::PUT,
            &format!("{base}/register"),
            Some(&token),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let op = body["operationId"].as_str().unwrap();
    // Node sends `{}` on GET; it must be tolerated.
    let (status, _, polled) = s
        .device_request(
            Method::GET,
            &format!("{base}/operations/{op}"),
            Some(&token),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(polled["status"], "assigned");
    assert_eq!(polled["registrationState"]["assignedHub"], "localhost");
    let (status, headers, err) = s
        .device_request(
            Method::GET,
            &format!("{base}/operations/5.nope"),
            Some(&token),
            None,
        )
        .await;
    assert_error(status, &headers, &err, 404, 404_203);
    let (status, _, flat) = s
        .device_request(Method::POST, &base, Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flat["registrationId"], "dev-op");
    assert_eq!(flat["status"], "assigned");
    // Status lookup needs the token too.
    let (status, headers, err) = s.device_request(Method::POST, &base, None, None).await;
    assert_error(status, &headers, &err, 401, 401_002);
}

#[tokio::test]
async fn disabled_enrollment_answers_disabled_and_records_nothing() {
    let s = TestServer::start().await;
    let (key, _) = s
        .enroll("dev-off", json!({"provisioningStatus": "disabled"}))
        .await;
    let cred = Credential::individual("dev-off", &key).unwrap();
    match s.device_client().provision(&cred, None, |_| {}).await {
        Err(ProvisionError::NotAssigned(status)) => {
            assert_eq!(status.status, RegistrationStatus::Disabled)
        }
        other => panic!("expected disabled, got {other:?}"),
    }
    assert_eq!(s.registration("dev-off").await.0, StatusCode::NOT_FOUND);
    assert!(s.hub_devices("usher-hub").await.is_empty());
}

#[tokio::test]
async fn credential_failures_are_401_and_leave_nothing_behind() {
    let settings = Settings {
        clock_skew_secs: 0,
        ..Settings::default()
    };
    let s = TestServer::start_with(settings).await;
    let (key, _) = s.enroll("dev-auth", json!({})).await;
    let other_key = SymmetricKey::generate(&[7; 32]).unwrap().to_base64();
    let (group_key, _) = s.enroll_group("grp", json!({})).await;
    let path = format!("/{}/registrations/dev-auth/register", s.scope);
    let key_obj = SymmetricKey::from_base64(&key).unwrap();
    let expired = usher_proto::sas::device_token(&s.scope, "dev-auth", &key_obj, unix_now() - 10);
    let other_device = s.token("other-dev", &key);
    let other_scope =
        usher_proto::sas::device_token("0ne00000000", "dev-auth", &key_obj, unix_now() + 600);
    let not_enrolled = Credential::from_group_key("stranger", &other_key)
        .unwrap()
        .token(&s.scope, unix_now() + 600)
        .unwrap();
    let group_key_itself = s.token("dev-auth", &group_key);
    let cases = [
        ("wrong key", Some(s.token("dev-auth", &other_key))),
        ("expired", Some(expired)),
        ("token for another device", Some(other_device)),
        ("token for another scope", Some(other_scope)),
        ("missing", None),
        ("garbled", Some("SharedAccessSignature sr=%zz".to_owned())),
        ("bearer", Some("Bearer abc".to_owned())),
        ("group key used directly", Some(group_key_itself)),
    ];
    for (what, token) in cases {
        let (status, headers, body) = s
            .device_request(Method::PUT, &path, token.as_deref(), Some(b"{}".to_vec()))
            .await;
        assert_error(status, &headers, &body, 401, 401_002);
        assert_eq!(
            body["message"], "Unauthorized",
            "{what}: the reason is not revealed"
        );
    }
    // A device that is not enrolled at all gets the same answer as a wrong key.
    let (status, headers, body) = s
        .device_request(
            Method::PUT,
            &format!("/{}/registrations/stranger/register", s.scope),
            Some(&not_enrolled),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_error(status, &headers, &body, 401, 401_002);
    // Unknown ID scope.
    let (status, headers, body) = s
        .device_request(
            Method::PUT,
            "/0ne00000000/registrations/dev-auth/register",
            Some(&s.token("dev-auth", &key)),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_error(status, &headers, &body, 401, 401_002);
    assert_eq!(s.registration("dev-auth").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.registration("stranger").await.0, StatusCode::NOT_FOUND);
    assert!(s.hub_devices("usher-hub").await.is_empty());
}

#[tokio::test]
async fn bad_input_gets_its_documented_error_and_leaves_nothing_behind() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("dev-bad", json!({})).await;
    let token = s.token("dev-bad", &key);
    let path = format!("/{}/registrations/dev-bad/register", s.scope);

    let (status, headers, body) = s
        .device_request(
            Method::PUT,
            &path,
            Some(&token),
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_error(status, &headers, &body, 400, 400_006);
    let (status, headers, body) = s
        .device_request(Method::PUT, &path, Some(&token), Some(b"[1,2]".to_vec()))
        .await;
    assert_error(status, &headers, &body, 400, 400_006);
    let big = format!(
        r#"{{"registrationId":"dev-bad","payload":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    let (status, headers, body) = s
        .device_request(Method::PUT, &path, Some(&token), Some(big.into_bytes()))
        .await;
    assert_error(status, &headers, &body, 413, 413_001);
    let (status, headers, body) = s
        .device_request(
            Method::PUT,
            &path,
            Some(&token),
            Some(br#"{"registrationId":"someone-else"}"#.to_vec()),
        )
        .await;
    assert_error(status, &headers, &body, 400, 400_004);
    for bad_id in ["bad!id", "ends-with.", &"x".repeat(129)] {
        let (status, headers, body) = s
            .device_request(
                Method::PUT,
                &format!("/{}/registrations/{bad_id}/register", s.scope),
                Some(&token),
                Some(b"{}".to_vec()),
            )
            .await;
        assert_error(status, &headers, &body, 400, 400_202);
    }
    let (status, headers, body) = s
        .device_request(Method::DELETE, &path, Some(&token), None)
        .await;
    assert_error(status, &headers, &body, 405, 405_000);
    assert_eq!(s.registration("dev-bad").await.0, StatusCode::NOT_FOUND);
    assert!(s.hub_devices("usher-hub").await.is_empty());

    // The same token then works: nothing was poisoned.
    let (status, _, body) = s
        .device_request(
            Method::PUT,
            &path,
            Some(&token),
            Some(br#"{"payload": null, "registrationId": "DEV-BAD"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn path_segments_are_percent_decoded_and_every_sdk_token_style_works() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("dev:colon-1", json!({})).await;
    let k = SymmetricKey::from_base64(&key).unwrap();
    let se = unix_now() + 600;
    // Node signs the raw resource; the C SDK signs lower-case hex.
    let node_sr = format!("{}/registrations/dev:colon-1", s.scope);
    let c_sr = format!("{}%2fregistrations%2fdev%3acolon-1", s.scope);
    for sr in [node_sr, c_sr] {
        let sig = sign(&k, &format!("{sr}\n{se}"));
        let token = format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn=registration");
        let path = format!(
            "/{}/registrations/dev%3Acolon-1/register?api-version=2021-06-01",
            s.scope
        );
        let (status, _, body) = s
            .device_request(
                Method::PUT,
                &path,
                Some(&token),
                Some(b"{\"registrationId\":\"dev:colon-1\"}".to_vec()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{sr}: {body}");
    }
}

fn sign(key: &SymmetricKey, message: &str) -> String {
    // Build through the public API: a token for a resource whose literal we control is not
    // offered, so compute the signature the way every SDK does.
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    percent_encoding::utf8_percent_encode(&sig, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn allocation_static_and_hashed_across_hubs() {
    let s = TestServer::start().await;
    for (name, host, weight) in [("hub-b", "b.hubs.test", 1), ("hub-c", "c.hubs.test", 2)] {
        let (status, _, body) = s
            .call(
                Method::PUT,
                &format!("/usher/hubs/{name}"),
                Some(json!({"hostname": host, "weight": weight})),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _, body) = s
        .call(
            Method::PUT,
            "/usher/hubs/hub-b",
            Some(json!({"hostname": "x.test"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (key, _) = s
        .enroll(
            "static-dev",
            json!({"allocationPolicy": "static", "iotHubs": ["c.hubs.test"]}),
        )
        .await;
    let cred = Credential::individual("static-dev", &key).unwrap();
    let result = s
        .device_client()
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
    assert_eq!(
        result.registration_state.unwrap().assigned_hub.as_deref(),
        Some("c.hubs.test")
    );
    assert_eq!(s.hub_devices("hub-c").await.len(), 1);

    let (group_key, _) = s
        .enroll_group("spread", json!({"allocationPolicy": "hashed"}))
        .await;
    let mut counts = std::collections::HashMap::new();
    for i in 0..40 {
        let id = format!("spread-{i}");
        let cred = Credential::from_group_key(&id, &group_key).unwrap();
        let first = s
            .device_client()
            .provision(&cred, None, |_| {})
            .await
            .unwrap()
            .registration_state
            .unwrap();
        let again = s
            .device_client()
            .provision(&cred, None, |_| {})
            .await
            .unwrap()
            .registration_state
            .unwrap();
        assert_eq!(first.assigned_hub, again.assigned_hub, "deterministic");
        *counts.entry(first.assigned_hub.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts["c.hubs.test"] > counts["b.hubs.test"],
        "weight 2 gets more: {counts:?}"
    );
}

#[tokio::test]
async fn registrations_are_durable_across_restarts() {
    let s = TestServer::start().await;
    let scope = s.scope.clone();
    let (key, _) = s.enroll("durable-1", json!({})).await;
    let cred = Credential::individual("durable-1", &key).unwrap();
    s.device_client()
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, Settings::default()).await;
    assert_eq!(s.scope, scope, "the instance keeps its ID scope");
    let (status, reg) = s.registration("durable-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reg["status"], "assigned");
    assert_eq!(s.hub_devices("usher-hub").await.len(), 1);
    s.device_client()
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_registrations_all_commit() {
    let s = Arc::new(TestServer::start().await);
    let (group_key, _) = s.enroll_group("crowd", json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = Arc::clone(&s);
        let group_key = group_key.clone();
        tasks.push(tokio::spawn(async move {
            let cred = Credential::from_group_key(&format!("crowd-{i}"), &group_key).unwrap();
            s.device_client()
                .provision(&cred, None, |_| {})
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.hub_devices("usher-hub").await.len(), 40);
}

#[tokio::test]
async fn serves_a_certificate_of_your_own() {
    // Another CA and server certificate, made elsewhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_owned()];
    let files =
        usher_server::pki::ensure(elsewhere.path(), &names, time::OffsetDateTime::now_utc())
            .unwrap();
    let ca_pem = std::fs::read(&files.ca_cert).unwrap();
    let s = TestServer::start_with_own_tls(files.server_cert, files.server_key, ca_pem).await;
    let (key, _) = s.enroll("own-tls", json!({})).await;
    for transport in [
        usher_device::Transport::Https,
        usher_device::Transport::Mqtt,
        usher_device::Transport::MqttWs,
    ] {
        let result = s
            .client_over(transport)
            .provision(
                &Credential::individual("own-tls", &key).unwrap(),
                None,
                |_| {},
            )
            .await;
        assert!(result.is_ok(), "{transport:?}: {result:?}");
    }
    // A client that trusts only the development CA of another instance is refused by TLS.
    let other = TestServer::start().await;
    let endpoint = usher_device::Endpoint {
        host: format!("localhost:{}", s.addr.port()),
        ca_pem: Some(other.ca_pem.clone()),
        connect_to: None,
    };
    let client = usher_device::Client::new(&endpoint, &s.scope, usher_device::Transport::Https);
    assert!(matches!(
        client
            .provision(
                &Credential::individual("own-tls", &key).unwrap(),
                None,
                |_| {}
            )
            .await,
        Err(ProvisionError::Transport(_))
    ));
}

#[tokio::test]
async fn groups_declare_the_registration_ids_of_their_devices() {
    let s = TestServer::start().await;
    let (a_key, _) = s
        .enroll_group(
            "pattern-a",
            json!({"usherRegistrationIdPattern": "a-[0-9]+"}),
        )
        .await;
    let (b_key, _) = s
        .enroll_group(
            "pattern-b",
            json!({"usherRegistrationIdPattern": "b-[0-9]+"}),
        )
        .await;
    let (any_key, _) = s.enroll_group("pattern-none", json!({})).await;
    for (id, key) in [("a-1", &a_key), ("B-2", &b_key), ("c-3", &any_key)] {
        let cred = Credential::from_group_key(id, key).unwrap();
        s.device_client()
            .provision(&cred, None, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
    }
    // A key of group b for an ID only group a admits: group b is not even tried.
    let cred = Credential::from_group_key("a-9", &b_key).unwrap();
    assert!(matches!(
        s.device_client().provision(&cred, None, |_| {}).await,
        Err(ProvisionError::Refused { status: 401, .. })
    ));
    // The field round-trips, and a pattern that does not compile is refused.
    let (_, _, doc) = s
        .call(Method::GET, "/enrollmentGroups/pattern-a", None, &[])
        .await;
    assert_eq!(doc["usherRegistrationIdPattern"], "a-[0-9]+");
    let (status, headers, body) = s
        .call(
            Method::PUT,
            "/enrollmentGroups/pattern-bad",
            Some(
                json!({"enrollmentGroupId": "pattern-bad", "attestation": {"type": "symmetricKey"},
                        "usherRegistrationIdPattern": "("}),
            ),
            &[],
        )
        .await;
    assert_error(status, &headers, &body, 400, 400_004);
}
