//! Wire fidelity with the clients people actually run beyond the SDK suite: IoT Edge's identity
//! service, the Azure CLI, hand-written requests; and refusals of what Usher does not do.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use usher_server::Settings;

use crate::support::{TestServer, assert_error, tls_connect};

/// What IoT Edge's identity service learns from a registration.
#[derive(Debug, PartialEq)]
enum EdgeOutcome {
    Assigned { hub: String, device_id: String },
    Failed { code: i64, message: String },
}

/// One registration round as IoT Edge's identity service makes it (Azure/iot-identity-service,
/// `aziot-cloud-client-async` `dps::Client::register_once`, releases 1.4 to 1.6): `PUT register`
/// must answer `202` with a JSON `operationId` (anything else is an error; a 4xx/5xx body is read
/// as `{errorCode, message}`); then `GET operations/{id}` must answer `200`, its body tagged by
/// `status` with `registrationState` as content: `assigned` (`assignedHub`, `deviceId`),
/// `assigning` (`registrationId`; poll again) or `failed` (`errorCode`, `errorMessage`). aziot
/// waits 5 s before each poll; this waits the server's Retry-After, which it requires.
async fn edge_register_once(
    s: &TestServer,
    id: &str,
    token: &str,
    body: Value,
) -> Result<EdgeOutcome, (u16, Value)> {
    let (status, headers, answer) = s
        .device_request(
            Method::PUT,
            &format!(
                "/{}/registrations/{id}/register?api-version=2021-11-01-preview",
                s.scope
            ),
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .contains("application/json"),
        "aziot refuses a non-JSON answer"
    );
    if status != StatusCode::ACCEPTED {
        assert!(
            status.is_client_error() || status.is_server_error(),
            "aziot accepts only 202 from register; got {status} {answer}"
        );
        assert!(answer["errorCode"].is_i64() && answer["message"].is_string());
        return Err((status.as_u16(), answer));
    }
    let operation_id = answer["operationId"]
        .as_str()
        .expect("operationId")
        .to_owned();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    loop {
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let (status, _, poll) = s
            .device_request(
                Method::GET,
                &format!(
                    "/{}/registrations/{id}/operations/{operation_id}?api-version=2021-11-01-preview",
                    s.scope
                ),
                Some(token),
                None,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "aziot accepts only 200 from a poll: {poll}"
        );
        let state = &poll["registrationState"];
        match poll["status"].as_str().unwrap() {
            "assigned" => {
                return Ok(EdgeOutcome::Assigned {
                    hub: state["assignedHub"].as_str().unwrap().to_owned(),
                    device_id: state["deviceId"].as_str().unwrap().to_owned(),
                });
            }
            "assigning" => assert!(state["registrationId"].is_string(), "{poll}"),
            "failed" => {
                return Ok(EdgeOutcome::Failed {
                    code: state["errorCode"].as_i64().unwrap(),
                    message: state["errorMessage"].as_str().unwrap().to_owned(),
                });
            }
            other => panic!("aziot cannot read status {other}: {poll}"),
        }
    }
}

#[tokio::test]
async fn iot_edge_provisions_on_the_default_settings() {
    let s = TestServer::start_with(Settings::default()).await;
    let (key, _) = s
        .enroll("edge-1", json!({"capabilities": {"iotEdge": true}}))
        .await;
    let token = s.token("edge-1", &key);

    // IoT Edge releases with certificate issuance first send a CSR; DPS without issuance refuses it
    // with the message aziot matches, and aziot registers again without it.
    let refused = edge_register_once(
        &s,
        "edge-1",
        &token,
        json!({"registrationId": "edge-1", "clientCertificateCsr": "MIIBCSR"}),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.0, 400);
    assert_eq!(
        refused.1["message"],
        "Device sent CSR but it is not configured in the service."
    );
    assert_eq!(s.registration("edge-1").await.0, StatusCode::NOT_FOUND);

    let outcome = edge_register_once(&s, "edge-1", &token, json!({"registrationId": "edge-1"}))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        EdgeOutcome::Assigned {
            hub: "localhost".into(),
            device_id: "edge-1".into()
        }
    );
    // The hub identity exists, as an IoT Edge device.
    let hub = usher_proto::sas::service_token(
        "localhost",
        "iothubowner",
        &s.hub_key,
        crate::support::unix_now() + 600,
    );
    let (status, _, device) = s
        .raw_request(
            Method::GET,
            "/devices/edge-1?api-version=2021-04-12",
            Some(&hub),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(device["status"], "enabled");
    assert_eq!(device["capabilities"]["iotEdge"], true);
}

#[tokio::test]
async fn the_default_register_answer_is_202_assigning_with_retry_after_2() {
    let s = TestServer::start_with(Settings::default()).await;
    let (key, _) = s.enroll("dflt-1", json!({})).await;
    let (status, headers, body) = s
        .device_request(
            Method::PUT,
            &format!("/{}/registrations/dflt-1/register", s.scope),
            Some(&s.token("dflt-1", &key)),
            Some(br#"{"registrationId":"dflt-1"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["operationId", "status"]
    );
    assert_eq!(body["status"], "assigning");
    // The record is durable before the answer, so the first poll sees the final state.
    let op = body["operationId"].as_str().unwrap();
    let (status, headers, poll) = s
        .device_request(
            Method::GET,
            &format!("/{}/registrations/dflt-1/operations/{op}", s.scope),
            Some(&s.token("dflt-1", &key)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("retry-after"));
    assert_eq!(poll["status"], "assigned");
    assert_eq!(poll["registrationState"]["deviceId"], "dflt-1");
}

#[tokio::test]
async fn a_failed_registration_reads_as_aziot_expects() {
    // A custom allocation webhook that answers 401: status failed with errorCode and errorMessage
    // in registrationState, which aziot requires to report the failure.
    let s = TestServer::start_with(Settings::default()).await;
    let hook = crate::support::WebhookServer::start(vec![crate::support::Answer(
        401,
        json!({}),
        Duration::ZERO,
    )])
    .await;
    let (key, _) = s
        .enroll(
            "edge-fail",
            json!({"allocationPolicy": "custom",
                   "customAllocationDefinition": {"webhookUrl": hook.url, "apiVersion": "2021-10-01"}}),
        )
        .await;
    let outcome = edge_register_once(&s, "edge-fail", &s.token("edge-fail", &key), json!({})).await;
    match outcome {
        Ok(EdgeOutcome::Failed { code, message }) => {
            assert_eq!(code, 400_209);
            assert_eq!(message, "Custom allocation failed with status code: 401");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn azure_cli_list_bodies_are_answered_with_paging() {
    let s = TestServer::start().await;
    for id in ["cli-a", "cli-b", "cli-c"] {
        s.enroll(id, json!({})).await;
        s.enroll_group(&format!("{id}-group"), json!({})).await;
    }
    // `az iot dps enrollment list --top 2` (azure-iot 0.25.0) sends msrest's repr of the model.
    let cli_body = json!({"query": "{'additional_properties': {}, 'query': 'SELECT *'}"});
    for (path, field) in [
        ("/enrollments/query", "registrationId"),
        ("/enrollmentGroups/query", "enrollmentGroupId"),
    ] {
        let (status, headers, first, next) = s.query_page(path, &cli_body, 2, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(first.len(), 2, "{path}");
        assert!(headers.contains_key("x-ms-item-type"));
        let (status, _, second, last) = s
            .query_page(path, &cli_body, 2, Some(next.as_deref().unwrap()))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(second.len(), 1, "{path}");
        assert_eq!(last, None, "no continuation on the last page");
        let mut ids: Vec<&str> = first
            .iter()
            .chain(&second)
            .map(|e| e[field].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|i| i.starts_with("cli-")), "{ids:?}");
    }
    // A typo in a query is still an error, in or out of the CLI's wrapper.
    for query in [
        "SELEC *",
        "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled",
        "{'additional_properties': {}, 'query': 'SELECT * WHERE'}",
        "{'additional_properties': {}, 'qeury': 'SELECT *'}",
    ] {
        let (status, headers, body) = s
            .call(
                Method::POST,
                "/enrollments/query",
                Some(json!({ "query": query })),
                &[],
            )
            .await;
        assert_error(status, &headers, &body, 400, 400_004);
    }
}

/// A `clientCertificateCsr` (2021-11-01-preview) is refused with DPS's own text; a `csr` goes to
/// the issuing CA made on first run, which refuses one that is not a PKCS#10 request. Neither is
/// recorded.
#[tokio::test]
async fn certificate_requests_that_cannot_be_answered_are_refused() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("csr-dev", json!({})).await;
    let token = s.token("csr-dev", &key);
    for (field, message_has) in [
        ("csr", "csr is not a PKCS#10 request"),
        (
            "clientCertificateCsr",
            "Device sent CSR but it is not configured in the service.",
        ),
    ] {
        let body = json!({"registrationId": "csr-dev", field: "MIICdzCCAV8CAQAwEjEQMA4GA1UEAwwHY3NyLWRldg=="});
        let (status, headers, answer) = s
            .device_request(
                Method::PUT,
                &format!(
                    "/{}/registrations/csr-dev/register?api-version=2025-07-01-preview",
                    s.scope
                ),
                Some(&token),
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_error(status, &headers, &answer, 400, 400_004);
        assert!(
            answer["message"].as_str().unwrap().contains(message_has),
            "{answer}"
        );
        if field == "clientCertificateCsr" {
            assert_eq!(answer["info"]["field"], field);
        }
        assert_eq!(s.registration("csr-dev").await.0, StatusCode::NOT_FOUND);
    }
    // null reads as absent (Python sends explicit nulls).
    let (status, _, answer) = s
        .device_request(
            Method::PUT,
            &format!("/{}/registrations/csr-dev/register", s.scope),
            Some(&token),
            Some(br#"{"registrationId":"csr-dev","csr":null,"payload":null}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "assigned");
}

#[tokio::test]
async fn api_version_is_required_and_checked_per_api() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("ver-dev", json!({})).await;
    let token = s.token("ver-dev", &key);
    let register = format!("/{}/registrations/ver-dev/register", s.scope);
    let put = |query: &str| {
        let path = format!("{register}{query}");
        let (s, token) = (&s, token.clone());
        async move {
            s.raw_request(Method::PUT, &path, Some(&token), Some("{}"))
                .await
        }
    };
    let (status, headers, body) = put("").await;
    assert_error(status, &headers, &body, 400, 400_004);
    assert_eq!(
        body["message"],
        "The api-version query parameter is required."
    );
    let (status, headers, body) = put("?api-version=2019-03-30").await;
    assert_error(status, &headers, &body, 400, 400_004);
    assert_eq!(body["message"], "Unsupported API version 2019-03-30.");
    // The hub registry's version is not the device API's.
    let (status, _, _) = put("?api-version=2021-04-12").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for query in [
        "?api-version=2019-03-31",
        "?api-version=2021-06-01",
        "?forceRegistration=true&api-version=2021-10-01",
        "?api-version=2025-07-01-preview",
    ] {
        let (status, _, body) = put(query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
    }

    // The service API: required, and older clients' previews accepted.
    let service = s.service_token();
    let get = |path: String| {
        let (s, service) = (&s, service.clone());
        async move {
            s.raw_request(Method::GET, &path, Some(&service), None)
                .await
        }
    };
    let (status, headers, body) = get("/enrollments/ver-dev".into()).await;
    assert_error(status, &headers, &body, 400, 400_004);
    let (status, headers, body) = get("/enrollments/ver-dev?api-version=2021-10-1".into()).await;
    assert_error(status, &headers, &body, 400, 400_004);
    assert_eq!(body["message"], "Unsupported API version 2021-10-1.");
    for version in [
        "2021-10-01",
        "2018-09-01-preview",
        "2019-03-31",
        "2025-07-01-preview",
    ] {
        let (status, _, body) = get(format!("/enrollments/ver-dev?api-version={version}")).await;
        assert_eq!(status, StatusCode::OK, "{version}: {body}");
        assert_eq!(body["registrationId"], "ver-dev");
    }

    // The hub registry answers in its own error format.
    let hub = usher_proto::sas::service_token(
        "localhost",
        "iothubowner",
        &s.hub_key,
        crate::support::unix_now() + 600,
    );
    let hub_get = |query: &str| {
        let path = format!("/devices{query}");
        let (s, hub) = (&s, hub.clone());
        async move { s.raw_request(Method::GET, &path, Some(&hub), None).await }
    };
    let (status, _, body) = hub_get("").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:InvalidProtocolVersion;"),
        "{body}"
    );
    for query in ["?api-version=2021-04-12", "?api-version=2018-06-30"] {
        let (status, _, body) = hub_get(query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
    }
    let (status, _, _) = hub_get("?api-version=2021-10-01").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bodies_that_are_not_registrations_are_refused_for_what_they_are() {
    let s = TestServer::start().await;
    let (key, _) = s.enroll("body-dev", json!({})).await;
    let token = s.token("body-dev", &key);
    let register = format!("/{}/registrations/body-dev/register", s.scope);
    for body in [
        "[]",
        "\"text\"",
        "42",
        "null",
        "[{\"registrationId\":\"body-dev\"}]",
    ] {
        let (status, headers, answer) = s
            .device_request(Method::PUT, &register, Some(&token), Some(body.into()))
            .await;
        assert_error(status, &headers, &answer, 400, 400_006);
        assert!(
            answer["message"].as_str().unwrap().contains("JSON object"),
            "{answer}"
        );
    }
    assert_eq!(s.registration("body-dev").await.0, StatusCode::NOT_FOUND);

    // 96 KB is the limit; one byte more is 413.
    let big = format!(
        "{{\"registrationId\":\"body-dev\",\"payload\":\"{}\"}}",
        "x".repeat(usher_proto::model::MAX_MESSAGE_BYTES)
    );
    let (status, headers, answer) = s
        .device_request(Method::PUT, &register, Some(&token), Some(big.into()))
        .await;
    assert_error(status, &headers, &answer, 413, 413_001);

    // A malformed chunked body is a bad request, not a large one.
    let mut tls = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
    let request = format!(
        "PUT {register}?api-version=2021-06-01 HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: {token}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 400"),
        "a malformed chunk is 400: {text}"
    );
    assert!(
        text.contains("400000") && text.contains("could not be read"),
        "{text}"
    );
    assert!(!text.contains("96 KB"), "{text}");
}
