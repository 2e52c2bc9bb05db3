//! Management-API parity: bulk operations, filtered queries, access policies and rights, and the
//! built-in hub's registry API.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usher_device::Credential;
use usher_proto::{SymmetricKey, sas};

use crate::support::{TestServer, assert_error, unix_now};

#[tokio::test]
async fn bulk_operations_in_every_mode() {
    let s = TestServer::start().await;
    let item = |id: &str| json!({"registrationId": id, "attestation": {"type": "symmetricKey"}});
    // create: two new, one bad item reported while the others are made.
    let bad = json!({"registrationId": "bulk-bad", "attestation": {"type": "tpm"}});
    let body = json!({"mode": "create", "enrollments": [item("bulk-1"), item("bulk-2"), bad]});
    let (status, _, result) = s.call(Method::POST, "/enrollments/", Some(body), &[]).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["isSuccessful"], false);
    assert_eq!(result["errors"].as_array().unwrap().len(), 1);
    assert_eq!(result["errors"][0]["registrationId"], "bulk-bad");
    assert_eq!(result["errors"][0]["errorCode"], 400_004);
    assert_eq!(
        s.call(Method::GET, "/enrollments/bulk-2", None, &[])
            .await
            .0,
        StatusCode::OK
    );
    // create again: conflicts per item.
    let (_, _, result) = s
        .call(
            Method::POST,
            "/enrollments",
            Some(json!({"mode": "create", "enrollments": [item("bulk-1")]})),
            &[],
        )
        .await;
    assert_eq!(result["errors"][0]["errorCode"], 409_201);
    // update without an etag over an existing record conflicts; with one it replaces; a new one is created.
    let (_, _, current) = s.call(Method::GET, "/enrollments/bulk-1", None, &[]).await;
    let mut with_etag = item("bulk-1");
    with_etag["etag"] = current["etag"].clone();
    with_etag["provisioningStatus"] = json!("disabled");
    let body =
        json!({"mode": "update", "enrollments": [with_etag, item("bulk-2"), item("bulk-3")]});
    let (_, _, result) = s.call(Method::POST, "/enrollments", Some(body), &[]).await;
    assert_eq!(result["errors"].as_array().unwrap().len(), 1, "{result}");
    assert_eq!(result["errors"][0]["registrationId"], "bulk-2");
    assert_eq!(
        s.call(Method::GET, "/enrollments/bulk-1", None, &[])
            .await
            .2["provisioningStatus"],
        "disabled"
    );
    // updateIfMatchEtag (Node's spelling) with a stale etag: 412 for that item.
    let mut stale = item("bulk-3");
    stale["etag"] = json!("stale");
    let (_, _, result) = s
        .call(
            Method::POST,
            "/enrollments",
            Some(json!({"mode": "updateIfMatchEtag", "enrollments": [stale]})),
            &[],
        )
        .await;
    assert_eq!(result["errors"][0]["errorCode"], 412_001);
    // delete: one missing.
    let body = json!({"mode": "delete", "enrollments": [item("bulk-1"), item("bulk-404")]});
    let (_, _, result) = s.call(Method::POST, "/enrollments", Some(body), &[]).await;
    assert_eq!(result["errors"].as_array().unwrap().len(), 1);
    assert_eq!(result["errors"][0]["errorCode"], 404_201);
    // Request-level failures.
    let eleven: Vec<Value> = (0..11).map(|i| item(&format!("many-{i}"))).collect();
    let (status, headers, err) = s
        .call(
            Method::POST,
            "/enrollments",
            Some(json!({"mode": "create", "enrollments": eleven})),
            &[],
        )
        .await;
    assert_error(status, &headers, &err, 400, 400_205);
    let (status, headers, err) = s
        .call(
            Method::POST,
            "/enrollments",
            Some(json!({"mode": "create", "enrollments": [item("Dup"), item("dup")]})),
            &[],
        )
        .await;
    assert_error(status, &headers, &err, 400, 400_206);
    let (status, headers, err) = s
        .call(
            Method::POST,
            "/enrollments",
            Some(json!({"mode": "upsert", "enrollments": []})),
            &[],
        )
        .await;
    assert_error(status, &headers, &err, 400, 400_004);
    assert_eq!(
        s.call(Method::GET, "/enrollments/many-0", None, &[])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // Groups too.
    let group = json!({"enrollmentGroupId": "bulk-g", "attestation": {"type": "symmetricKey"}});
    let (_, _, result) = s
        .call(
            Method::POST,
            "/enrollmentGroups",
            Some(json!({"mode": "create", "enrollmentGroups": [group]})),
            &[],
        )
        .await;
    assert_eq!(result, json!({"isSuccessful": true, "errors": []}));
}

#[tokio::test]
async fn queries_filter_beyond_dps_and_page_stably() {
    let s = TestServer::start().await;
    for i in 0..12 {
        let status = if i % 3 == 0 { "disabled" } else { "enabled" };
        s.enroll(&format!("q-{i:02}"), json!({"provisioningStatus": status}))
            .await;
    }
    let query = json!({"query": "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'"});
    let ids = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|e| e["registrationId"].as_str().unwrap().to_owned())
            .collect()
    };
    let pages = s.query_pages("/enrollments/query", &query, 2).await;
    assert_eq!(ids(&pages.concat()), ["q-00", "q-03", "q-06", "q-09"]);
    // Deleting a record already returned, between pages, does not make the next page skip one.
    let (_, _, first, next) = s.query_page("/enrollments/query", &query, 2, None).await;
    assert_eq!(ids(&first), ["q-00", "q-03"]);
    assert_eq!(
        s.call(Method::DELETE, "/enrollments/q-00", None, &[])
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, _, second, _) = s
        .query_page("/enrollments/query", &query, 2, next.as_deref())
        .await;
    assert_eq!(ids(&second), ["q-06", "q-09"]);
    let (status, headers, err) = s
        .call(
            Method::POST,
            "/enrollments/query",
            Some(json!({"query": "SELECT * WHERE"})),
            &[],
        )
        .await;
    assert_error(status, &headers, &err, 400, 400_004);
    assert!(
        err["message"].as_str().unwrap().contains("invalid query"),
        "{err}"
    );
}

#[tokio::test]
async fn policies_grant_rights_and_rotation_revokes_old_tokens() {
    let s = TestServer::start().await;
    let (status, _, reader) = s
        .call(
            Method::PUT,
            "/usher/policies/reader",
            Some(json!({"rights": ["EnrollmentRead", "registrationstatusread"]})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reader}");
    assert_eq!(reader["rights"], "EnrollmentRead, RegistrationStatusRead");
    let key = SymmetricKey::from_base64(reader["primaryKey"].as_str().unwrap()).unwrap();
    let token = |k: &SymmetricKey| sas::service_token("localhost", "reader", k, unix_now() + 600);
    let as_reader = |method: Method, path: &str, token: String, body: Option<Value>| {
        let mut req = s
            .http
            .request(method, s.url(path))
            .header("Authorization", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    // Read works; write needs EnrollmentWrite.
    s.enroll("pol-1", json!({})).await;
    assert_eq!(
        as_reader(Method::GET, "/enrollments/pol-1", token(&key), None)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let response = as_reader(
        Method::PUT,
        "/enrollments/pol-2",
        token(&key),
        Some(json!({"registrationId": "pol-2", "attestation": {"type": "symmetricKey"}})),
    )
    .await
    .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    assert_error(
        status,
        &headers,
        &response.json().await.unwrap(),
        401,
        401_003,
    );
    assert_eq!(
        s.call(Method::GET, "/enrollments/pol-2", None, &[]).await.0,
        StatusCode::NOT_FOUND
    );
    // Managing policies needs ServiceConfig.
    assert_eq!(
        as_reader(Method::GET, "/usher/policies", token(&key), None)
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // Rotate the primary key: the old key's tokens fail, the new key's work.
    let (status, _, rotated) = s
        .call(
            Method::POST,
            "/usher/policies/reader/rotate/primary",
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rotated["secondaryKey"], reader["secondaryKey"]);
    assert_eq!(
        as_reader(Method::GET, "/enrollments/pol-1", token(&key), None)
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let new_key = SymmetricKey::from_base64(rotated["primaryKey"].as_str().unwrap()).unwrap();
    assert_eq!(
        as_reader(Method::GET, "/enrollments/pol-1", token(&new_key), None)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Errors, listing and deletion.
    let (status, headers, err) = s
        .call(
            Method::PUT,
            "/usher/policies/reader",
            Some(json!({"rights": ["EnrollmentRead"]})),
            &[],
        )
        .await;
    assert_error(status, &headers, &err, 409, 409_213);
    let (status, headers, err) = s
        .call(
            Method::PUT,
            "/usher/policies/p2",
            Some(json!({"rights": ["Everything"]})),
            &[],
        )
        .await;
    assert_error(status, &headers, &err, 400, 400_004);
    let (_, _, list) = s.call(Method::GET, "/usher/policies", None, &[]).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (status, headers, err) = s
        .call(
            Method::DELETE,
            "/usher/policies/provisioningserviceowner",
            None,
            &[],
        )
        .await;
    assert_error(status, &headers, &err, 400, 400_004);
    assert_eq!(
        s.call(Method::DELETE, "/usher/policies/reader", None, &[])
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        as_reader(Method::GET, "/enrollments/pol-1", token(&new_key), None)
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, headers, err) = s
        .call(Method::DELETE, "/usher/policies/reader", None, &[])
        .await;
    assert_error(status, &headers, &err, 404, 404_213);
}

/// A registry call with the built-in hub's owner token.
pub(crate) async fn hub_call(
    s: &TestServer,
    key: &SymmetricKey,
    method: Method,
    path: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let token = sas::service_token("localhost", "iothubowner", key, unix_now() + 600);
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut req = s
        .http
        .request(method, s.url(&format!("{path}{sep}api-version=2021-04-12")))
        .header("Authorization", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(m) = if_match {
        req = req.header("If-Match", m);
    }
    let response = req.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    (
        status,
        headers,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        },
    )
}

fn hub_key(s: &TestServer) -> SymmetricKey {
    s.hub_key.clone()
}

fn assert_hub_error(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    want_status: u16,
    name: &str,
) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(headers["iothub-errorcode"], name);
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("ErrorCode:{name};")),
        "{body}"
    );
    assert!(
        body["ExceptionMessage"]
            .as_str()
            .unwrap()
            .starts_with("Tracking ID:")
    );
}

#[tokio::test]
async fn hub_registry_devices_and_twins() {
    let s = TestServer::start().await;
    let key = hub_key(&s);
    // A device DPS assigned is in the registry with the device's key and the enrollment's initial twin.
    let (device_key, _) = s.enroll("hub-dps", json!({"initialTwin": {"tags": {"site": "berlin"}, "properties": {"desired": {"interval": 30}}}, "capabilities": {"iotEdge": true}})).await;
    s.device_client()
        .provision(
            &Credential::individual("hub-dps", &device_key).unwrap(),
            None,
            |_| {},
        )
        .await
        .unwrap();
    let (status, _, device) = hub_call(&s, &key, Method::GET, "/devices/hub-dps", None, None).await;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(
        device["authentication"]["symmetricKey"]["primaryKey"],
        device_key.as_str()
    );
    assert_eq!(device["authentication"]["type"], "sas");
    assert_eq!(device["status"], "enabled");
    assert_eq!(device["capabilities"]["iotEdge"], true);
    let (_, _, twin) = hub_call(&s, &key, Method::GET, "/twins/hub-dps", None, None).await;
    assert_eq!(twin["tags"]["site"], "berlin");
    assert_eq!(twin["properties"]["desired"]["interval"], 30);

    // Create as Node does: empty keys ask for generated ones.
    let body = json!({"deviceId": "hub-1", "status": "enabled", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}, "capabilities": {"iotEdge": false}});
    let (status, _, created) = hub_call(
        &s,
        &key,
        Method::PUT,
        "/devices/hub-1",
        Some(body.clone()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let generated = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        SymmetricKey::from_base64(&generated)
            .unwrap()
            .as_bytes()
            .len(),
        32
    );
    let (status, headers, err) = hub_call(
        &s,
        &key,
        Method::PUT,
        "/devices/hub-1",
        Some(body.clone()),
        None,
    )
    .await;
    assert_hub_error(status, &headers, &err, 409, "DeviceAlreadyExists");
    // Update with a quoted etag, as Python sends it; a stale one fails.
    let etag = format!("\"{}\"", created["etag"].as_str().unwrap());
    let mut update = created.clone();
    update["status"] = json!("disabled");
    let (status, _, updated) = hub_call(
        &s,
        &key,
        Method::PUT,
        "/devices/hub-1",
        Some(update.clone()),
        Some(&etag),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["status"], "disabled");
    assert_eq!(updated["generationId"], created["generationId"]);
    assert_eq!(
        updated["authentication"]["symmetricKey"]["primaryKey"],
        generated.as_str()
    );
    let (status, headers, err) = hub_call(
        &s,
        &key,
        Method::PUT,
        "/devices/hub-1",
        Some(update),
        Some(&etag),
    )
    .await;
    assert_hub_error(status, &headers, &err, 412, "PreconditionFailed");
    // List.
    let (_, _, list) = hub_call(&s, &key, Method::GET, "/devices?top=1", None, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, _, list) = hub_call(&s, &key, Method::GET, "/devices", None, None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Twins: patch merges, a stale etag fails, put replaces.
    let (_, _, twin) = hub_call(&s, &key, Method::GET, "/twins/hub-1", None, None).await;
    let twin_etag = format!("\"{}\"", twin["etag"].as_str().unwrap());
    let patch = json!({"tags": {"floor": 3}, "properties": {"desired": {"led": "on"}}});
    let (status, _, patched) = hub_call(
        &s,
        &key,
        Method::PATCH,
        "/twins/hub-1",
        Some(patch.clone()),
        Some(&twin_etag),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["tags"]["floor"], 3);
    assert_eq!(patched["properties"]["desired"]["led"], "on");
    assert_eq!(patched["properties"]["desired"]["$version"], 2);
    let (status, headers, err) = hub_call(
        &s,
        &key,
        Method::PATCH,
        "/twins/hub-1",
        Some(patch),
        Some(&twin_etag),
    )
    .await;
    assert_hub_error(status, &headers, &err, 412, "PreconditionFailed");
    let (_, _, replaced) = hub_call(
        &s,
        &key,
        Method::PUT,
        "/twins/hub-1",
        Some(json!({"tags": {"only": true}})),
        Some("*"),
    )
    .await;
    assert_eq!(replaced["tags"], json!({"only": true}));
    // Delete.
    assert_eq!(
        hub_call(
            &s,
            &key,
            Method::DELETE,
            "/devices/hub-1",
            None,
            Some("\"*\"")
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    let (status, headers, err) =
        hub_call(&s, &key, Method::GET, "/devices/hub-1", None, None).await;
    assert_hub_error(status, &headers, &err, 404, "DeviceNotFound");
    let (status, headers, err) =
        hub_call(&s, &key, Method::DELETE, "/devices/hub-1", None, None).await;
    assert_hub_error(status, &headers, &err, 404, "DeviceNotFound");
    let (status, headers, err) = hub_call(
        &s,
        &key,
        Method::PATCH,
        "/twins/hub-1",
        Some(json!({})),
        None,
    )
    .await;
    assert_hub_error(status, &headers, &err, 404, "DeviceNotFound");
    // Wrong key and DPS tokens are refused.
    let (status, headers, err) = hub_call(
        &s,
        &SymmetricKey::generate(&[1; 32]).unwrap(),
        Method::GET,
        "/devices",
        None,
        None,
    )
    .await;
    assert_hub_error(status, &headers, &err, 401, "IotHubUnauthorizedAccess");
    let (status, _, _) = s.call(Method::GET, "/devices", None, &[]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the DPS owner policy is not a hub policy"
    );
    let query = json!({"query": "SELECT * FROM devices WHERE tags.site = 'berlin'"});
    let (status, h, twins) =
        hub_call(&s, &key, Method::POST, "/devices/query", Some(query), None).await;
    assert_eq!(status, StatusCode::OK, "{twins}");
    assert_eq!(h["x-ms-item-type"], "Twin");
    assert_eq!(twins.as_array().unwrap().len(), 1);
    assert_eq!(twins[0]["deviceId"], "hub-dps");
    let (status, _, stats) =
        hub_call(&s, &key, Method::GET, "/statistics/devices", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["totalDeviceCount"], 1);
    let (status, headers, err) = hub_call(
        &s,
        &key,
        Method::PUT,
        "/devices/bad%2Fid",
        Some(json!({})),
        None,
    )
    .await;
    assert_hub_error(status, &headers, &err, 400, "ArgumentInvalid");
}

/// Every page of a hub registry query, following `x-ms-continuation`, `page` items at a time.
async fn hub_query_pages(
    s: &TestServer,
    key: &SymmetricKey,
    query: &str,
    page: usize,
) -> Vec<Vec<String>> {
    let token = sas::service_token("localhost", "iothubowner", key, unix_now() + 600);
    let mut pages = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut req = s
            .http
            .post(s.url("/devices/query?api-version=2021-04-12"))
            .header("Authorization", token.clone())
            .header("x-ms-max-item-count", page.to_string())
            .json(&json!({ "query": query }));
        if let Some(c) = &continuation {
            req = req.header("x-ms-continuation", c);
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        continuation = response
            .headers()
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_owned());
        let twins: Value = response.json().await.unwrap();
        let ids: Vec<String> = twins
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["deviceId"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= page);
        pages.push(ids);
        if continuation.is_none() {
            return pages;
        }
        assert!(pages.len() < 50, "the continuation never ends");
    }
}

#[tokio::test]
async fn hub_registry_lists_queries_and_counts_page_by_page() {
    let s = TestServer::start().await;
    let key = hub_key(&s);
    for i in 0..9 {
        let status = if i % 3 == 0 { "disabled" } else { "enabled" };
        let (code, _, body) = hub_call(
            &s,
            &key,
            Method::PUT,
            &format!("/devices/page-{i}"),
            Some(json!({"deviceId": format!("page-{i}"), "status": status})),
            None,
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let (code, _, body) = hub_call(
            &s,
            &key,
            Method::PATCH,
            &format!("/twins/page-{i}"),
            Some(json!({"tags": {"even": i % 2 == 0}})),
            Some("*"),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let all: Vec<String> = (0..9).map(|i| format!("page-{i}")).collect();
    // Unfiltered, 4 at a time: 4 + 4 + 1, each device once, in creation order.
    let pages = hub_query_pages(&s, &key, "SELECT * FROM devices", 4).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 1]);
    assert_eq!(pages.concat(), all);
    // Filtered: the matches only, each once, whatever the page size.
    for page in [1, 2, 5, 100] {
        let pages = hub_query_pages(
            &s,
            &key,
            "SELECT * FROM devices WHERE tags.even = true",
            page,
        )
        .await;
        assert_eq!(
            pages.concat(),
            ["page-0", "page-2", "page-4", "page-6", "page-8"],
            "page size {page}"
        );
    }
    // A continuation this hub did not issue is refused.
    let token = sas::service_token("localhost", "iothubowner", &key, unix_now() + 600);
    let response = s
        .http
        .post(s.url("/devices/query?api-version=2021-04-12"))
        .header("Authorization", token)
        .header("x-ms-continuation", "next-please")
        .json(&json!({"query": "SELECT * FROM devices"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // `top` bounds the list.
    let (code, _, listed) = hub_call(&s, &key, Method::GET, "/devices?top=3", None, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 3);
    // Statistics are counted, not listed.
    let (_, _, stats) = hub_call(&s, &key, Method::GET, "/statistics/devices", None, None).await;
    assert_eq!(
        stats,
        json!({"totalDeviceCount": 9, "enabledDeviceCount": 6, "disabledDeviceCount": 3})
    );
    // Usher's own listing pages the same way.
    let mut seen = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "2".to_owned())];
        if let Some(c) = &continuation {
            headers.push(("x-ms-continuation", c.clone()));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, h, body) = s
            .call(Method::GET, "/usher/hubs/usher-hub/devices", None, &headers)
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let page = body.as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|d| d["deviceId"].as_str().unwrap().to_owned()),
        );
        continuation = h
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_owned());
        if continuation.is_none() {
            break;
        }
    }
    assert_eq!(seen, all);
}
