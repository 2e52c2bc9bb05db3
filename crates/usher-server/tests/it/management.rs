//! The management API: enrollment and group lifecycles, etags, paging, auth.

use reqwest::{Method, StatusCode};
use serde_json::json;
use usher_device::Credential;
use usher_proto::SymmetricKey;
use usher_proto::sas;

use crate::support::{TestServer, assert_error, keys, unix_now};

#[tokio::test]
async fn enrollment_lifecycle_with_generated_keys_and_etags() {
    let s = TestServer::start().await;
    let body = json!({"registrationId": "life-1", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": null, "secondaryKey": null}}, "capabilities": null, "initialTwin": {"tags": {"t": 1}}});
    let (status, _, created) = s
        .call(Method::PUT, "/enrollments/life-1", Some(body.clone()), &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (p, sk) = keys(&created);
    assert_eq!(SymmetricKey::from_base64(&p).unwrap().as_bytes().len(), 32);
    assert_ne!(p, sk);
    assert_eq!(
        created["initialTwin"]["tags"]["t"], 1,
        "unused fields round-trip"
    );
    assert!(created.get("capabilities").is_none());
    let etag = created["etag"].as_str().unwrap().to_owned();

    // GET hides the keys and shows the registration state.
    let (status, _, got) = s.call(Method::GET, "/enrollments/LIFE-1", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["attestation"], json!({"type": "symmetricKey"}));
    assert_eq!(
        got["registrationState"],
        json!({"registrationId": "life-1", "status": "unassigned"})
    );
    // The attestation mechanism shows them.
    let (status, _, att) = s
        .call(
            Method::POST,
            "/enrollments/life-1/attestationmechanism",
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(att["symmetricKey"]["primaryKey"], p.as_str());

    // Create over an existing record without If-Match: 409.
    let (status, headers, err) = s
        .call(Method::PUT, "/enrollments/life-1", Some(body.clone()), &[])
        .await;
    assert_error(status, &headers, &err, 409, 409_201);
    // A stale etag: 412.
    let (status, headers, err) = s
        .call(
            Method::PUT,
            "/enrollments/life-1",
            Some(body.clone()),
            &[("If-Match", "\"stale\"")],
        )
        .await;
    assert_error(status, &headers, &err, 412, 412_001);
    // The current etag (quoted, as C# sends it): update; omitted keys are kept.
    let update = json!({"registrationId": "life-1", "attestation": {"type": "symmetricKey"}, "provisioningStatus": "disabled"});
    let (status, _, updated) = s
        .call(
            Method::PUT,
            "/enrollments/life-1",
            Some(update.clone()),
            &[("If-Match", &format!("\"{etag}\""))],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(keys(&updated), (p.clone(), sk.clone()));
    assert_eq!(updated["createdDateTimeUtc"], created["createdDateTimeUtc"]);
    assert_ne!(updated["etag"], created["etag"]);
    assert_eq!(updated["provisioningStatus"], "disabled");
    // `*` updates whatever is there.
    let (status, _, _) = s
        .call(
            Method::PUT,
            "/enrollments/life-1",
            Some(update),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Delete with a stale etag: 412; without: 204; again: 404.
    let (status, headers, err) = s
        .call(
            Method::DELETE,
            "/enrollments/life-1",
            None,
            &[("If-Match", "nope")],
        )
        .await;
    assert_error(status, &headers, &err, 412, 412_001);
    let (status, _, _) = s
        .call(Method::DELETE, "/enrollments/life-1", None, &[])
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, headers, err) = s
        .call(Method::DELETE, "/enrollments/life-1", None, &[])
        .await;
    assert_error(status, &headers, &err, 404, 404_201);
    let (status, headers, err) = s.call(Method::GET, "/enrollments/life-1", None, &[]).await;
    assert_error(status, &headers, &err, 404, 404_201);
}

#[tokio::test]
async fn group_lifecycle_with_supplied_keys() {
    let s = TestServer::start().await;
    let primary = SymmetricKey::generate(&[1; 16]).unwrap().to_base64();
    let secondary = SymmetricKey::generate(&[2; 64]).unwrap().to_base64();
    let body = json!({"enrollmentGroupId": "grp-1", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}}});
    // Node's casing and trailing slash.
    let (status, _, created) = s
        .call(
            Method::PUT,
            "/enrollmentgroups/grp-1/",
            Some(body.clone()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(keys(&created), (primary.clone(), secondary));
    let (status, headers, err) = s
        .call(Method::PUT, "/enrollmentGroups/grp-1", Some(body), &[])
        .await;
    assert_error(status, &headers, &err, 409, 409_202);
    let (status, _, got) = s
        .call(Method::GET, "/enrollmentGroups/grp-1", None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(got["attestation"].get("symmetricKey").is_none());
    assert!(got.get("registrationState").is_none());

    // A member registers; deleting the group keeps its registration record.
    let cred = Credential::from_group_key("member-1", &primary).unwrap();
    s.device_client()
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
    let (status, _, _) = s
        .call(Method::DELETE, "/enrollmentGroups/grp-1", None, &[])
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, headers, err) = s
        .call(Method::DELETE, "/enrollmentGroups/grp-1", None, &[])
        .await;
    assert_error(status, &headers, &err, 404, 404_204);
    assert_eq!(s.registration("member-1").await.0, StatusCode::OK);
    // The device can no longer register.
    assert!(
        s.device_client()
            .provision(&cred, None, |_| {})
            .await
            .is_err()
    );
}

#[tokio::test]
async fn registration_records_get_and_delete() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("rec-1", json!({})).await;
    s.device_client()
        .provision(
            &Credential::individual("rec-1", &key).unwrap(),
            None,
            |_| {},
        )
        .await
        .unwrap();
    let (status, reg) = s.registration("rec-1").await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, enrollment) = s.call(Method::GET, "/enrollments/rec-1", None, &[]).await;
    assert_eq!(enrollment["registrationState"]["status"], "assigned");
    let (status, headers, err) = s
        .call(
            Method::DELETE,
            "/registrations/rec-1",
            None,
            &[("If-Match", "old")],
        )
        .await;
    assert_error(status, &headers, &err, 412, 412_001);
    let etag = reg["etag"].as_str().unwrap();
    let (status, _, _) = s
        .call(
            Method::DELETE,
            "/registrations/rec-1",
            None,
            &[("If-Match", etag)],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, headers, err) = s.call(Method::GET, "/registrations/rec-1", None, &[]).await;
    assert_error(status, &headers, &err, 404, 404_202);
    assert_eq!(
        s.hub_devices("usher-hub").await.len(),
        1,
        "the hub identity stays"
    );
}

#[tokio::test]
async fn query_pages_end_without_a_continuation() {
    let s = TestServer::start().await;
    for i in 0..7 {
        s.enroll(&format!("page-{i}"), json!({})).await;
    }
    let query = json!({"query": "SELECT *"});
    let (_, h, _, _) = s.query_page("/enrollments/query", &query, 3, None).await;
    assert_eq!(h["x-ms-item-type"], "Enrollment");
    let pages = s.query_pages("/enrollments/query", &query, 3).await;
    let seen: Vec<String> = pages
        .iter()
        .flatten()
        .map(|item| {
            assert!(
                item["attestation"].get("symmetricKey").is_none(),
                "keys are redacted"
            );
            item["registrationId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(pages.len(), 3);
    assert_eq!(
        seen,
        (0..7).map(|i| format!("page-{i}")).collect::<Vec<_>>()
    );
    let (status, h, body) = s
        .call(
            Method::POST,
            "/enrollmentGroups/query",
            Some(json!({"query": "*"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([]));
    assert_eq!(h["x-ms-item-type"], "EnrollmentGroup");
    assert!(h.get("x-ms-continuation").is_none());
}

#[tokio::test]
async fn invalid_enrollments_are_refused_and_not_stored() {
    let s = TestServer::start().await;
    let cases = [
        (
            "/enrollments/bad-key",
            json!({"registrationId": "bad-key", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "AAAA"}}}),
            400,
            400_004,
        ),
        (
            "/enrollments/static-two",
            json!({"registrationId": "static-two", "attestation": {"type": "symmetricKey"}, "allocationPolicy": "static", "iotHubs": ["localhost", "localhost"]}),
            400,
            400_004,
        ),
        (
            "/enrollments/custom-none",
            json!({"registrationId": "custom-none", "attestation": {"type": "symmetricKey"}, "allocationPolicy": "custom"}),
            400,
            400_004,
        ),
        (
            "/enrollments/custom-http",
            json!({"registrationId": "custom-http", "attestation": {"type": "symmetricKey"}, "allocationPolicy": "custom",
                   "customAllocationDefinition": {"webhookUrl": "http://alloc.example.com/x", "apiVersion": "2021-10-01"}}),
            400,
            400_004,
        ),
        (
            "/enrollments/unknown-hub",
            json!({"registrationId": "unknown-hub", "attestation": {"type": "symmetricKey"}, "iotHubs": ["nowhere.test"]}),
            400,
            400_004,
        ),
        (
            "/enrollments/mismatch",
            json!({"registrationId": "other", "attestation": {"type": "symmetricKey"}}),
            400,
            400_004,
        ),
        (
            "/enrollments/no-attestation",
            json!({"registrationId": "no-attestation"}),
            400,
            400_006,
        ),
        (
            "/enrollments/bad-type",
            json!({"registrationId": "bad-type", "attestation": {"type": "password"}}),
            400,
            400_006,
        ),
        (
            "/enrollments/bad!id",
            json!({"registrationId": "bad!id", "attestation": {"type": "symmetricKey"}}),
            400,
            400_202,
        ),
        (
            "/enrollmentGroups/bad!group",
            json!({"enrollmentGroupId": "bad!group", "attestation": {"type": "symmetricKey"}}),
            400,
            400_204,
        ),
        (
            "/enrollmentGroups/tpm-group",
            json!({"enrollmentGroupId": "tpm-group", "attestation": {"type": "tpm", "tpm": {"endorsementKey": "AAAA"}}}),
            400,
            400_004,
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, headers, err) = s.call(Method::PUT, path, Some(body), &[]).await;
        assert_error(status, &headers, &err, want_status, want_code);
        let (status, _, _) = s.call(Method::GET, path, None, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} left a record");
    }
    let (status, headers, err) = s.call(Method::PUT, "/enrollments/raw", None, &[]).await;
    assert_error(status, &headers, &err, 400, 400_006);
}

#[tokio::test]
async fn service_tokens_are_checked() {
    let s = TestServer::start().await;
    let wrong_key = SymmetricKey::generate(&[9; 32]).unwrap();
    let tokens = [
        sas::service_token(
            "localhost",
            "provisioningserviceowner",
            &wrong_key,
            unix_now() + 60,
        ),
        sas::service_token(
            "elsewhere.test",
            "provisioningserviceowner",
            &s.owner_key,
            unix_now() + 60,
        ),
        sas::service_token("localhost", "nosuchpolicy", &s.owner_key, unix_now() + 60),
        sas::service_token(
            "localhost",
            "provisioningserviceowner",
            &s.owner_key,
            unix_now() - 3600,
        ),
        "SharedAccessSignature garbage".to_owned(),
    ];
    for token in tokens {
        let response = s
            .http
            .get(s.url("/enrollments/x"))
            .header("Authorization", &token)
            .send()
            .await
            .unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.json().await.unwrap();
        assert_error(status, &headers, &body, 401, 401_002);
    }
    let response = s.http.get(s.url("/enrollments/x")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The IP host name is one of the instance's names too.
    let token = sas::service_token(
        "127.0.0.1",
        "provisioningserviceowner",
        &s.owner_key,
        unix_now() + 60,
    );
    let response = s
        .http
        .get(s.url("/enrollments/x"))
        .header("Authorization", token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, headers, err) = s.call(Method::GET, "/no/such/route/here", None, &[]).await;
    assert_error(status, &headers, &err, 404, 404_000);
}

#[tokio::test]
async fn management_writes_and_attestation_decisions_are_audited_in_a_chain() {
    use usher_proto::audit::{Entry, verify};
    let s = TestServer::start().await;
    let (key, _) = s.enroll("aud-1", json!({})).await;
    let (key2, _) = s
        .enroll("aud-2", json!({"provisioningStatus": "disabled"}))
        .await;
    // A read-only policy tries to write.
    let (status, _, _) = s
        .call(
            Method::PUT,
            "/usher/policies/reader",
            Some(json!({"rights": ["EnrollmentRead"]})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let reader_key = {
        let (_, _, body) = s.call(Method::GET, "/usher/policies", None, &[]).await;
        body.as_array()
            .unwrap()
            .iter()
            .find(|p| p["keyName"] == "reader")
            .unwrap()["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let reader = sas::service_token(
        "localhost",
        "reader",
        &SymmetricKey::from_base64(&reader_key).unwrap(),
        unix_now() + 600,
    );
    let (status, _, _) = s
        .raw_request(
            Method::DELETE,
            "/enrollments/aud-1?api-version=2021-10-01",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Devices: one assigned, one disabled, one with a wrong key.
    let client = s.device_client();
    client
        .provision(
            &Credential::individual("aud-1", &key).unwrap(),
            None,
            |_| {},
        )
        .await
        .unwrap();
    let _ = client
        .provision(
            &Credential::individual("aud-2", &key2).unwrap(),
            None,
            |_| {},
        )
        .await;
    let _ = client
        .provision(
            &Credential::individual("aud-1", "V3Jvbmcga2V5IGZvciB0aGUgYXVkaXQgdGVzdCEh").unwrap(),
            None,
            |_| {},
        )
        .await;
    s.call(Method::DELETE, "/registrations/aud-1", None, &[])
        .await;

    let (status, _, body) = s.call(Method::GET, "/usher/audit", None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entries: Vec<Entry> = serde_json::from_value(body["entries"].clone()).unwrap();
    let seen: Vec<(&str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.action.as_str(),
                e.target.as_str(),
                e.result.as_str(),
            )
        })
        .collect();
    for expected in [
        (
            "policy:provisioningserviceowner",
            "enrollment.put",
            "aud-1",
            "ok",
        ),
        (
            "policy:provisioningserviceowner",
            "enrollment.put",
            "aud-2",
            "ok",
        ),
        (
            "policy:provisioningserviceowner",
            "policy.create",
            "reader",
            "ok",
        ),
        (
            "policy:reader",
            "enrollment.delete",
            "aud-1",
            "refused 401003",
        ),
        ("device:aud-1", "registration.register", "aud-1", "assigned"),
        ("device:aud-2", "registration.register", "aud-2", "disabled"),
        ("device:aud-1", "device.attest", "aud-1", "refused 401002"),
        (
            "policy:provisioningserviceowner",
            "registration.delete",
            "aud-1",
            "ok",
        ),
    ] {
        assert!(seen.contains(&expected), "{expected:?} not in {seen:#?}");
    }
    assert!(
        entries.iter().all(|e| e.address == "127.0.0.1"),
        "{entries:#?}"
    );
    // Reads are not audited.
    assert!(!seen.iter().any(|(_, action, _, _)| action.contains("get")));
    let (seq, hash) = (
        body["anchor"]["seq"].as_u64().unwrap(),
        body["anchor"]["hash"].as_str().unwrap(),
    );
    assert_eq!(verify(seq, hash, &entries), Ok(entries.len() as u64));
}

/// Posts a JSON Lines body to the streaming import route.
async fn import(
    s: &TestServer,
    coll: &str,
    mode: &str,
    body: String,
    token: Option<String>,
) -> (StatusCode, serde_json::Value) {
    let mut req = s
        .http
        .post(s.url(&format!("/usher/{coll}/import?mode={mode}")))
        .body(body);
    if let Some(token) = token {
        req = req.header("Authorization", token);
    }
    let response = req.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn streaming_import_stores_good_lines_and_lists_the_others_by_line() {
    let s = TestServer::start().await;
    s.enroll("imp-existing", json!({})).await;
    let mut body = String::new();
    for i in 0..2500 {
        body.push_str(&format!(
            "{{\"registrationId\":\"imp-{i}\",\"attestation\":{{\"type\":\"symmetricKey\"}}}}\n"
        ));
    }
    // Line 2501 blank, 2502 not JSON, 2503 an existing record, 2504 an unknown hub, 2505 an export
    // line with server-owned fields and its own keys, 2506 a bad ID; the last line has no newline.
    body.push('\n');
    body.push_str("not json\n");
    body.push_str(
        "{\"registrationId\":\"imp-existing\",\"attestation\":{\"type\":\"symmetricKey\"}}\n",
    );
    body.push_str("{\"registrationId\":\"imp-hub\",\"attestation\":{\"type\":\"symmetricKey\"},\"iotHubs\":[\"nowhere.example\"]}\n");
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    body.push_str(&format!("{{\"registrationId\":\"imp-export\",\"etag\":\"x\",\"createdDateTimeUtc\":\"2020-01-01T00:00:00Z\",\"registrationState\":{{\"status\":\"assigned\"}},\"attestation\":{{\"type\":\"symmetricKey\",\"symmetricKey\":{{\"primaryKey\":\"{key}\",\"secondaryKey\":\"{key}\"}}}}}}\n"));
    body.push_str("{\"registrationId\":\"bad id!\",\"attestation\":{\"type\":\"symmetricKey\"}}");

    // No token, and a policy without the write right: refused, nothing stored.
    let (status, _) = import(&s, "enrollments", "create", body.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = s.call(Method::GET, "/enrollments/imp-0", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = import(
        &s,
        "enrollments",
        "sideways",
        body.clone(),
        Some(s.service_token()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    let (status, answer) = import(
        &s,
        "enrollments",
        "create",
        body.clone(),
        Some(s.service_token()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["imported"], 2501, "{answer}");
    assert_eq!(answer["failed"], 4, "{answer}");
    let errors: Vec<(u64, String, u64)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["id"].as_str().unwrap().to_owned(),
                e["errorCode"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (2502, String::new(), 400_006),
            (2503, "imp-existing".into(), 409_201),
            (2504, "imp-hub".into(), 400_004),
            (2506, "bad id!".into(), 400_202),
        ],
        "{answer}"
    );
    // Stored with generated keys, readable and usable like any other enrollment.
    let (status, _, att) = s
        .call(
            Method::POST,
            "/enrollments/imp-2499/attestationmechanism",
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let primary = att["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        SymmetricKey::from_base64(&primary)
            .unwrap()
            .as_bytes()
            .len(),
        32
    );
    let outcome = s
        .device_client()
        .provision(
            &Credential::individual("imp-2499", &primary).unwrap(),
            None,
            |_| {},
        )
        .await
        .unwrap();
    let state = outcome.registration_state.unwrap();
    assert_eq!(state.device_id.as_deref(), Some("imp-2499"));
    // The export line kept its keys; the server-owned fields were the server's.
    let (_, _, exported) = s
        .call(
            Method::POST,
            "/enrollments/imp-export/attestationmechanism",
            None,
            &[],
        )
        .await;
    assert_eq!(exported["symmetricKey"]["primaryKey"], key);
    let (_, _, doc) = s
        .call(Method::GET, "/enrollments/imp-export", None, &[])
        .await;
    assert_ne!(doc["etag"], "x");
    assert_ne!(doc["createdDateTimeUtc"], "2020-01-01T00:00:00Z");

    // Update mode replaces and keeps the stored keys a line does not give.
    let (status, answer) = import(
        &s,
        "enrollments",
        "update",
        "{\"registrationId\":\"imp-2499\",\"attestation\":{\"type\":\"symmetricKey\"},\"provisioningStatus\":\"disabled\"}\n".into(),
        Some(s.service_token()),
    )
    .await;
    assert_eq!(
        (status, answer["imported"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{answer}"
    );
    let (_, _, att) = s
        .call(
            Method::POST,
            "/enrollments/imp-2499/attestationmechanism",
            None,
            &[],
        )
        .await;
    assert_eq!(att["symmetricKey"]["primaryKey"], primary.as_str());
    let (_, _, doc) = s
        .call(Method::GET, "/enrollments/imp-2499", None, &[])
        .await;
    assert_eq!(doc["provisioningStatus"], "disabled");

    // Groups import the same way, pattern validated.
    let (status, answer) = import(
        &s,
        "enrollmentGroups",
        "create",
        "{\"enrollmentGroupId\":\"imp-g1\",\"attestation\":{\"type\":\"symmetricKey\"},\"usherRegistrationIdPattern\":\"g1-.*\"}\n{\"enrollmentGroupId\":\"imp-g2\",\"attestation\":{\"type\":\"symmetricKey\"},\"usherRegistrationIdPattern\":\"(\"}\n".into(),
        Some(s.service_token()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (answer["imported"].as_u64(), answer["failed"].as_u64()),
        (Some(1), Some(1)),
        "{answer}"
    );

    // Each import is one audit entry with its counts.
    let (_, _, audit) = s.call(Method::GET, "/usher/audit", None, &[]).await;
    let results: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .unwrap_or_default()
                .ends_with(".import")
        })
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        results.contains(&(
            "enrollment.import".into(),
            "ok imported 2501 failed 4".into()
        )),
        "{results:?}"
    );
    assert!(
        results.contains(&(
            "enrollmentGroup.import".into(),
            "ok imported 1 failed 1".into()
        )),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|(a, r)| a == "enrollment.import" && r.starts_with("refused 401")),
        "{results:?}"
    );
}
