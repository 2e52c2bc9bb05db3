//! Firmware-testing modes, per enrollment (`usherTesting`) and per instance, seen on the wire.

use reqwest::{Method, StatusCode};
use serde_json::json;
use usher_server::Settings;

use crate::support::{TestServer, assert_error, fast};

#[tokio::test]
async fn dps_like_asynchrony_faults_and_quotas_per_enrollment() {
    let s = TestServer::start().await;
    // The field round-trips through the management API.
    let (key, _) = s
        .enroll(
            "slow-dev",
            json!({"usherTesting": {"pollsAssigning": 2, "retryAfter": 1}}),
        )
        .await;
    let (_, _, doc) = s
        .call(Method::GET, "/enrollments/slow-dev", None, &[])
        .await;
    assert_eq!(
        doc["usherTesting"],
        json!({"pollsAssigning": 2, "retryAfter": 1})
    );
    let token = s.token("slow-dev", &key);
    let register = format!("/{}/registrations/slow-dev/register", s.scope);
    // The server answers 200 at once by default here (fast settings); the mode makes it 202.
    let (status, headers, body) = s
        .device_request(Method::PUT, &register, Some(&token), Some(b"{}".to_vec()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(headers["retry-after"], "1");
    let op = body["operationId"].as_str().unwrap().to_owned();
    let poll = format!("/{}/registrations/slow-dev/operations/{op}", s.scope);
    for _ in 0..2 {
        let (status, headers, body) = s
            .device_request(Method::GET, &poll, Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(
            body,
            json!({"operationId": op, "status": "assigning",
                   "registrationState": {"registrationId": "slow-dev", "status": "assigning"}})
        );
    }
    let (status, _, body) = s
        .device_request(Method::GET, &poll, Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "assigned");

    // Faults: the first two requests of each device get 503 with Retry-After.
    let (key, _) = s
        .enroll(
            "flaky-dev",
            json!({"usherTesting": {"fault": {"status": 503, "firstAttempts": 2, "retryAfter": 4}}}),
        )
        .await;
    let token = s.token("flaky-dev", &key);
    let register = format!("/{}/registrations/flaky-dev/register", s.scope);
    for _ in 0..2 {
        let (status, headers, body) = s
            .device_request(Method::PUT, &register, Some(&token), Some(b"{}".to_vec()))
            .await;
        assert_error(status, &headers, &body, 503, 503_001);
        assert_eq!(headers["retry-after"], "4");
    }
    let (status, _, _) = s
        .device_request(Method::PUT, &register, Some(&token), Some(b"{}".to_vec()))
        .await;
    assert_eq!(status, StatusCode::OK);
    // A wrong key is still a 401: credentials are checked first.
    let (status, _, _) = s
        .device_request(
            Method::PUT,
            &register,
            Some(&s.token("flaky-dev", "V3Jvbmcga2V5IGZvciB0aGUgZmF1bHQgdGVzdCEhIQ==")),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Quotas: the sixth poll within 10 s is answered 429 with Retry-After.
    let (key, _) = s
        .enroll("busy-dev", json!({"usherTesting": {"quotas": true}}))
        .await;
    let token = s.token("busy-dev", &key);
    let (_, _, body) = s
        .device_request(
            Method::PUT,
            &format!("/{}/registrations/busy-dev/register", s.scope),
            Some(&token),
            Some(b"{}".to_vec()),
        )
        .await;
    let poll = format!(
        "/{}/registrations/busy-dev/operations/{}",
        s.scope,
        body["operationId"].as_str().unwrap()
    );
    for _ in 0..5 {
        let (status, _, _) = s
            .device_request(Method::GET, &poll, Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, body) = s
        .device_request(Method::GET, &poll, Some(&token), None)
        .await;
    assert_error(status, &headers, &body, 429, 429_001);
    assert!(headers.contains_key("retry-after"));

    // Something the modes do not know is refused when the enrollment is written.
    let (status, headers, body) = s
        .call(
            Method::PUT,
            "/enrollments/odd-dev",
            Some(
                json!({"registrationId": "odd-dev", "attestation": {"type": "symmetricKey"},
                        "usherTesting": {"fault": {"status": 404}}}),
            ),
            &[],
        )
        .await;
    assert_error(status, &headers, &body, 400, 400_004);
}

#[tokio::test]
async fn instance_wide_modes_apply_to_every_device_unless_an_enrollment_has_its_own() {
    let s = TestServer::start_with(Settings {
        testing: usher_server::testing::TestingModes {
            fault: Some(usher_server::testing::Fault {
                status: 429,
                first_attempts: 1,
                fraction: 0.0,
                retry_after: 2,
            }),
            ..Default::default()
        },
        ..fast()
    })
    .await;
    let (key, _) = s.enroll("everyone", json!({})).await;
    let register = |id: &str| format!("/{}/registrations/{id}/register", s.scope);
    let (status, headers, _) = s
        .device_request(
            Method::PUT,
            &register("everyone"),
            Some(&s.token("everyone", &key)),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "2");
    // An enrollment with modes of its own (here: none at all) is not affected.
    let (key, _) = s.enroll("exempt", json!({"usherTesting": {}})).await;
    let (status, _, _) = s
        .device_request(
            Method::PUT,
            &register("exempt"),
            Some(&s.token("exempt", &key)),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}
