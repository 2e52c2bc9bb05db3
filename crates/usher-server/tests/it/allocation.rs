//! Allocation across several hubs, custom allocation webhooks, reprovisioning and the identity a
//! device starts with, through the device API and seen through the management and hub APIs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usher_device::Credential;
use usher_proto::model::RegistrationStatus;
use usher_proto::sas;
use usher_server::Settings;
use usher_server::webhook::WebhookSettings;

use crate::support::{Answer, TestServer, WebhookServer, fast, unix_now};

/// Links a built-in hub.
async fn link(s: &TestServer, name: &str, weight: u32, location: &str) -> String {
    let hostname = format!("{name}.example.test");
    let (status, _, body) = s
        .call(
            Method::PUT,
            &format!("/usher/hubs/{name}"),
            Some(json!({"hostname": hostname, "weight": weight, "location": location})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    hostname
}

async fn provision(
    s: &TestServer,
    id: &str,
    key: &str,
) -> usher_proto::model::DeviceRegistrationResult {
    let cred = Credential::individual(id, key).unwrap();
    let result = s
        .device_client()
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
    result.registration_state.unwrap()
}

/// A hub registry call on a built-in hub, with that hub's owner key.
async fn hub_get(s: &TestServer, hub: &str, path: &str) -> (StatusCode, Value) {
    let hubs = s.call(Method::GET, "/usher/hubs", None, &[]).await.2;
    let hostname = hubs
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == hub)
        .unwrap()["hostname"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = s.hub_owner_key(hub).await;
    let token = sas::service_token(&hostname, "iothubowner", &key, unix_now() + 600);
    let (status, _, body) = s
        .raw_request(
            Method::GET,
            &format!("{path}?api-version=2021-04-12"),
            Some(&token),
            None,
        )
        .await;
    (status, body)
}

#[tokio::test]
async fn hashed_static_and_geo_latency_across_linked_hubs() {
    let s = TestServer::start().await;
    let west = link(&s, "west", 3, "westeurope").await;
    let east = link(&s, "east", 1, "eastus").await;
    // The built-in hub (localhost) takes no part in allocation unless named.
    let (status, _, _) = s
        .call(
            Method::PATCH,
            "/usher/hubs/usher-hub",
            Some(json!({"applyAllocationPolicy": false})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (group_key, _) = s
        .enroll_group("fleet", json!({"allocationPolicy": "hashed"}))
        .await;
    let mut counts = std::collections::HashMap::new();
    for n in 0..60 {
        let id = format!("fleet-{n}");
        let cred = Credential::from_group_key(&id, &group_key).unwrap();
        let state = s
            .device_client()
            .provision(&cred, None, |_| {})
            .await
            .unwrap()
            .registration_state
            .unwrap();
        *counts.entry(state.assigned_hub.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts[&west] > counts[&east], "weights 3:1 {counts:?}");
    assert_eq!(
        s.hub_devices("west").await.len() + s.hub_devices("east").await.len(),
        60,
        "every device has its identity on the hub it was assigned to"
    );

    // Static without a hub named: the linked hubs (the default policy), never refused.
    let (key, _) = s
        .enroll("static-free", json!({"allocationPolicy": "static"}))
        .await;
    let state = provision(&s, "static-free", &key).await;
    assert!([west.as_str(), east.as_str()].contains(&state.assigned_hub.as_deref().unwrap()));
    // Static with a hub named: that hub, even one outside allocation.
    let (key, _) = s
        .enroll(
            "static-named",
            json!({"allocationPolicy": "static", "iotHubs": ["localhost"]}),
        )
        .await;
    assert_eq!(
        provision(&s, "static-named", &key)
            .await
            .assigned_hub
            .as_deref(),
        Some("localhost")
    );

    // geoLatency: loopback clients are mapped to eastus.
    let (status, _, body) = s
        .call(
            Method::PUT,
            "/usher/allocation",
            Some(json!({"defaultPolicy": "geoLatency", "geoMap": [{"network": "127.0.0.0/8", "location": "eastus"}]})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for n in 0..10 {
        let id = format!("geo-{n}");
        let (key, _) = s.enroll(&id, json!({})).await;
        assert_eq!(
            provision(&s, &id, &key).await.assigned_hub,
            Some(east.clone()),
            "{id}"
        );
    }
    // custom cannot be the instance default.
    let (status, _, _) = s
        .call(
            Method::PUT,
            "/usher/allocation",
            Some(json!({"defaultPolicy": "custom", "geoMap": []})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn webhook_settings() -> Settings {
    Settings {
        webhook: WebhookSettings {
            timeout: Duration::from_millis(500),
            retries: 3,
            retry_first: Duration::from_millis(100),
            retry_increment: Duration::from_millis(100),
            ca_pem: None,
        },
        ..fast()
    }
}

async fn custom_enrollment(s: &TestServer, id: &str, hook: &WebhookServer) -> String {
    s.enroll(
        id,
        json!({"allocationPolicy": "custom",
               "customAllocationDefinition": {"webhookUrl": hook.url, "apiVersion": "2021-10-01"},
               "initialTwin": {"tags": {"from": "enrollment"}}}),
    )
    .await
    .0
}

/// Provisions with a payload; the outcome (status, and the state if any).
async fn provision_with(
    s: &TestServer,
    id: &str,
    key: &str,
    payload: Option<Value>,
) -> Result<usher_proto::model::RegistrationOperationStatus, usher_device::ProvisionError> {
    let cred = Credential::individual(id, key).unwrap();
    match s.device_client().provision(&cred, payload, |_| {}).await {
        Err(usher_device::ProvisionError::NotAssigned(status)) => Ok(*status),
        other => other,
    }
}

#[tokio::test]
async fn custom_allocation_webhook_contract() {
    let s = TestServer::start_with(webhook_settings()).await;
    let second = link(&s, "second", 1, "westeurope").await;

    // Success: the webhook picks a hub, gives a twin and a payload for the device.
    let hook = WebhookServer::start(vec![Answer(
        200,
        json!({"iotHubHostName": second, "initialTwin": {"tags": {"from": "webhook"}, "properties": {"desired": {"mode": "eco"}}}, "payload": {"welcome": "aboard"}}),
        Duration::ZERO,
    )])
    .await;
    let key = custom_enrollment(&s, "cust-1", &hook).await;
    let result = provision_with(&s, "cust-1", &key, Some(json!({"model": "toaster"})))
        .await
        .unwrap();
    assert_eq!(result.status, RegistrationStatus::Assigned);
    let state = result.registration_state.unwrap();
    assert_eq!(state.assigned_hub.as_deref(), Some(second.as_str()));
    assert_eq!(state.payload, Some(json!({"welcome": "aboard"})));
    let request = &hook.received()[0];
    assert_eq!(request["individualEnrollment"]["registrationId"], "cust-1");
    assert_eq!(
        request["individualEnrollment"]["attestation"],
        json!({"type": "symmetricKey"}),
        "no keys go to the webhook"
    );
    assert_eq!(request["deviceRuntimeContext"]["registrationId"], "cust-1");
    assert_eq!(request["deviceRuntimeContext"]["symmetricKey"], json!({}));
    assert_eq!(
        request["deviceRuntimeContext"]["payload"],
        json!({"model": "toaster"})
    );
    assert!(request["linkedHubs"].as_array().unwrap().len() >= 2);
    assert!(
        !request.to_string().contains(&key),
        "no keys go to the webhook"
    );
    // The webhook's twin, not the enrollment's, is on the hub identity.
    let (status, twin) = hub_get(&s, "second", "/twins/cust-1").await;
    assert_eq!(status, StatusCode::OK, "{twin}");
    assert_eq!(twin["tags"], json!({"from": "webhook"}));
    assert_eq!(twin["properties"]["desired"]["mode"], "eco");
    // On re-registration the webhook learns where the device is.
    provision_with(&s, "cust-1", &key, None).await.unwrap();
    let again = &hook.received()[1];
    assert_eq!(
        again["deviceRuntimeContext"]["currentIotHubHostName"],
        second
    );
    assert_eq!(again["deviceRuntimeContext"]["currentDeviceId"], "cust-1");

    // An answer without a hub: failed, 400208.
    let empty = WebhookServer::start(vec![Answer(
        200,
        json!({"iotHubHostName": ""}),
        Duration::ZERO,
    )])
    .await;
    let key = custom_enrollment(&s, "cust-empty", &empty).await;
    let failed = provision_with(&s, "cust-empty", &key, None).await.unwrap();
    assert_eq!(failed.status, RegistrationStatus::Failed);
    assert_eq!(failed.registration_state.unwrap().error_code, Some(400_208));

    // 429, then success: retried, and the device keeps polling meanwhile.
    let busy = WebhookServer::start(vec![
        Answer(429, json!({}), Duration::ZERO),
        Answer(200, json!({"iotHubHostName": second}), Duration::ZERO),
    ])
    .await;
    let key = custom_enrollment(&s, "cust-busy", &busy).await;
    let ok = provision_with(&s, "cust-busy", &key, None).await.unwrap();
    assert_eq!(ok.status, RegistrationStatus::Assigned);
    assert_eq!(busy.received().len(), 2);

    // Too slow every time: retried, then failed with 400207.
    let slow = WebhookServer::start(vec![Answer(
        200,
        json!({"iotHubHostName": second}),
        Duration::from_secs(2),
    )])
    .await;
    let key = custom_enrollment(&s, "cust-slow", &slow).await;
    let failed = provision_with(&s, "cust-slow", &key, None).await.unwrap();
    assert_eq!(failed.status, RegistrationStatus::Failed);
    let state = failed.registration_state.unwrap();
    assert_eq!(state.error_code, Some(400_207), "{:?}", state.error_message);
    assert_eq!(slow.received().len(), 4, "the first call and three retries");

    // 401: failed, 400209, with DPS's message.
    let denied = WebhookServer::start(vec![Answer(401, json!({}), Duration::ZERO)]).await;
    let key = custom_enrollment(&s, "cust-401", &denied).await;
    let failed = provision_with(&s, "cust-401", &key, None).await.unwrap();
    let state = failed.registration_state.unwrap();
    assert_eq!(state.error_code, Some(400_209));
    assert_eq!(
        state.error_message.as_deref(),
        Some("Custom allocation failed with status code: 401")
    );
}

#[tokio::test]
async fn while_the_webhook_is_called_register_answers_202_and_polls_see_assigning() {
    // Even with the fast register answer, a custom allocation is assigning until the webhook's
    // answer is durable.
    let s = TestServer::start_with(webhook_settings()).await;
    let hook = WebhookServer::start(vec![Answer(
        200,
        json!({"iotHubHostName": "localhost"}),
        Duration::from_millis(400),
    )])
    .await;
    let key = custom_enrollment(&s, "cust-wait", &hook).await;
    let token = s.token("cust-wait", &key);
    let (status, headers, body) = s
        .device_request(
            Method::PUT,
            &format!("/{}/registrations/cust-wait/register", s.scope),
            Some(&token),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(headers.contains_key("retry-after"));
    let op = body["operationId"].as_str().unwrap();
    let poll = format!("/{}/registrations/cust-wait/operations/{op}", s.scope);
    let (status, _, body) = s
        .device_request(Method::GET, &poll, Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "assigning");
    assert_eq!(body["registrationState"]["registrationId"], "cust-wait");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, _, body) = s
        .device_request(Method::GET, &poll, Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "assigned");
}

/// Changes an enrollment's settings (keeping its keys), as `usher enrollment update` does.
async fn update_enrollment(s: &TestServer, id: &str, change: Value) {
    let (_, _, mut doc) = s
        .call(Method::GET, &format!("/enrollments/{id}"), None, &[])
        .await;
    let obj = doc.as_object_mut().unwrap();
    obj.remove("registrationState");
    for (k, v) in change.as_object().unwrap() {
        obj.insert(k.clone(), v.clone());
    }
    let (status, _, body) = s
        .call(
            Method::PUT,
            &format!("/enrollments/{id}"),
            Some(doc),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Sets a twin's tags through the hub registry API, as a back end would.
async fn tag(s: &TestServer, hub: &str, device: &str, tags: Value) {
    let hostname = if hub == "usher-hub" {
        "localhost".to_owned()
    } else {
        format!("{hub}.example.test")
    };
    let key = s.hub_owner_key(hub).await;
    let token = sas::service_token(&hostname, "iothubowner", &key, unix_now() + 600);
    let (status, _, body) = s
        .raw_request(
            Method::PATCH,
            &format!("/twins/{device}?api-version=2021-04-12"),
            Some(&token),
            Some(&json!({"tags": tags}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn twin_tags(s: &TestServer, hub: &str, device: &str) -> Option<Value> {
    let (status, twin) = hub_get(s, hub, &format!("/twins/{device}")).await;
    (status == StatusCode::OK).then(|| twin["tags"].clone())
}

#[tokio::test]
async fn reprovisioning_every_policy_with_the_twin_seen_through_the_hub_registry() {
    let s = TestServer::start().await;
    let two = link(&s, "two", 1, "eastus").await;
    let initial = json!({"tags": {"v": "initial"}, "properties": {"desired": {"d": 1}}});

    // Migrate (the default): the twin moves with the device; back home is
    // reprovisionedToInitialAssignment.
    let (key, _) = s
        .enroll(
            "rp-migrate",
            json!({"allocationPolicy": "static", "iotHubs": ["localhost"], "initialTwin": initial,
                   "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true}}),
        )
        .await;
    let state = provision(&s, "rp-migrate", &key).await;
    assert_eq!(
        state.substatus,
        Some(usher_proto::model::Substatus::InitialAssignment)
    );
    assert_eq!(
        twin_tags(&s, "usher-hub", "rp-migrate").await,
        Some(json!({"v": "initial"}))
    );
    tag(&s, "usher-hub", "rp-migrate", json!({"v": "changed"})).await;
    // Nothing changed: stays, keeps its data and substatus.
    let state = provision(&s, "rp-migrate", &key).await;
    assert_eq!(
        state.substatus,
        Some(usher_proto::model::Substatus::InitialAssignment)
    );
    assert_eq!(
        twin_tags(&s, "usher-hub", "rp-migrate").await,
        Some(json!({"v": "changed"}))
    );
    update_enrollment(&s, "rp-migrate", json!({"iotHubs": [two]})).await;
    let state = provision(&s, "rp-migrate", &key).await;
    assert_eq!(state.assigned_hub.as_deref(), Some(two.as_str()));
    assert_eq!(
        state.substatus,
        Some(usher_proto::model::Substatus::DeviceDataMigrated)
    );
    assert_eq!(
        twin_tags(&s, "two", "rp-migrate").await,
        Some(json!({"v": "changed"}))
    );
    assert_eq!(
        twin_tags(&s, "usher-hub", "rp-migrate").await,
        None,
        "the old identity is removed"
    );
    update_enrollment(&s, "rp-migrate", json!({"iotHubs": ["localhost"]})).await;
    let state = provision(&s, "rp-migrate", &key).await;
    assert_eq!(state.assigned_hub.as_deref(), Some("localhost"));
    assert_eq!(
        state.substatus,
        Some(usher_proto::model::Substatus::ReprovisionedToInitialAssignment)
    );
    assert_eq!(
        twin_tags(&s, "usher-hub", "rp-migrate").await,
        Some(json!({"v": "changed"}))
    );
    assert_eq!(twin_tags(&s, "two", "rp-migrate").await, None);

    // Reset: the initial twin on the new hub, and on the same hub when registering again.
    let (key, _) = s
        .enroll(
            "rp-reset",
            json!({"allocationPolicy": "static", "iotHubs": ["localhost"], "initialTwin": initial,
                   "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": false}}),
        )
        .await;
    provision(&s, "rp-reset", &key).await;
    tag(&s, "usher-hub", "rp-reset", json!({"v": "changed"})).await;
    update_enrollment(&s, "rp-reset", json!({"iotHubs": [two]})).await;
    let state = provision(&s, "rp-reset", &key).await;
    assert_eq!(
        state.substatus,
        Some(usher_proto::model::Substatus::DeviceDataReset)
    );
    assert_eq!(
        twin_tags(&s, "two", "rp-reset").await,
        Some(json!({"v": "initial"}))
    );
    assert_eq!(twin_tags(&s, "usher-hub", "rp-reset").await, None);
    tag(&s, "two", "rp-reset", json!({"v": "changed again"})).await;
    let state = provision(&s, "rp-reset", &key).await;
    assert_eq!(
        state.substatus,
        Some(usher_proto::model::Substatus::DeviceDataReset)
    );
    assert_eq!(
        twin_tags(&s, "two", "rp-reset").await,
        Some(json!({"v": "initial"}))
    );

    // Never: stays where it is.
    let (key, _) = s
        .enroll(
            "rp-never",
            json!({"allocationPolicy": "static", "iotHubs": ["localhost"],
                   "reprovisionPolicy": {"updateHubAssignment": false, "migrateDeviceData": false}}),
        )
        .await;
    provision(&s, "rp-never", &key).await;
    update_enrollment(&s, "rp-never", json!({"iotHubs": [two]})).await;
    let state = provision(&s, "rp-never", &key).await;
    assert_eq!(state.assigned_hub.as_deref(), Some("localhost"));

    // Deleting the registration record lets the device register afresh.
    let (status, _, _) = s
        .call(Method::DELETE, "/registrations/rp-never", None, &[])
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let state = provision(&s, "rp-never", &key).await;
    assert_eq!(state.assigned_hub.as_deref(), Some(two.as_str()));
    assert_eq!(
        state.substatus,
        Some(usher_proto::model::Substatus::InitialAssignment)
    );
}

#[tokio::test]
async fn concurrent_registrations_of_one_device_end_with_one_record_and_one_identity() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let two = link(&s, "two", 1, "eastus").await;
    let (key, _) = s
        .enroll(
            "racer",
            json!({"allocationPolicy": "static", "iotHubs": ["localhost"]}),
        )
        .await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, key) = (std::sync::Arc::clone(&s), key.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let cred = Credential::individual("racer", &key).unwrap();
                let _ = s.device_client().provision(&cred, None, |_| {}).await;
            }
        }));
    }
    // Meanwhile the enrollment flips between the two hubs.
    for n in 0..8 {
        let hub = if n % 2 == 0 {
            two.clone()
        } else {
            "localhost".to_owned()
        };
        update_enrollment(&s, "racer", json!({"iotHubs": [hub]})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (status, record) = s.registration("racer").await;
    assert_eq!(status, StatusCode::OK);
    let assigned = record["assignedHub"].as_str().unwrap();
    let on_builtin = twin_tags(&s, "usher-hub", "racer").await.is_some();
    let on_two = twin_tags(&s, "two", "racer").await.is_some();
    assert!(
        on_builtin ^ on_two,
        "exactly one identity (builtin {on_builtin}, two {on_two})"
    );
    assert_eq!(
        on_builtin,
        assigned == "localhost",
        "the identity is where the record says"
    );
}

#[tokio::test]
async fn disabled_groups_and_a_disabled_individual_enrollment_block_devices_without_identities() {
    let s = TestServer::start().await;
    let (group_key, _) = s.enroll_group("lc-group", json!({})).await;
    let cred = |id: &str| Credential::from_group_key(id, &group_key).unwrap();
    // A disabled individual enrollment for one device of the group blocks that device only, even
    // though the device proves membership of the group with its derived key.
    s.enroll("lc-blocked", json!({"provisioningStatus": "disabled"}))
        .await;
    let blocked = s
        .device_client()
        .provision(&cred("lc-blocked"), None, |_| {})
        .await;
    match blocked {
        Err(usher_device::ProvisionError::NotAssigned(status)) => {
            assert_eq!(status.status, RegistrationStatus::Disabled);
        }
        other => panic!("{other:?}"),
    }
    let ok = s
        .device_client()
        .provision(&cred("lc-free"), None, |_| {})
        .await
        .unwrap();
    assert_eq!(ok.status, RegistrationStatus::Assigned);
    // Disabling the group: its devices get `disabled` and nothing new is created.
    let (status, _, mut doc) = s
        .call(Method::GET, "/enrollmentGroups/lc-group", None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    doc["provisioningStatus"] = json!("disabled");
    let (status, _, body) = s
        .call(
            Method::PUT,
            "/enrollmentGroups/lc-group",
            Some(doc),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let disabled = s
        .device_client()
        .provision(&cred("lc-new"), None, |_| {})
        .await;
    assert!(matches!(
        disabled,
        Err(usher_device::ProvisionError::NotAssigned(ref st)) if st.status == RegistrationStatus::Disabled
    ));
    let devices: Vec<String> = s
        .hub_devices("usher-hub")
        .await
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap().to_owned())
        .collect();
    assert!(devices.contains(&"lc-free".to_owned()));
    assert!(!devices.contains(&"lc-blocked".to_owned()));
    assert!(!devices.contains(&"lc-new".to_owned()));
    assert_eq!(s.registration("lc-new").await.0, StatusCode::NOT_FOUND);
}
