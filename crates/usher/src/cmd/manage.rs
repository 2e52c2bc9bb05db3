//! Enrollment, group, registration and hub commands, over the management API.

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};
use usher_proto::SymmetricKey;
use usher_proto::ids::validate_id;

use super::service_client::ServiceClient;
use crate::cli::{
    AllocationArg, EnrollmentCommand, EnrollmentOptions, GroupCommand, HubCommand,
    RegistrationCommand, StatusArg,
};

/// The two enrollment kinds differ only in their route and ID field.
#[derive(Clone, Copy)]
enum Kind {
    Enrollment,
    Group,
}

impl Kind {
    fn route(self) -> &'static str {
        match self {
            Self::Enrollment => "enrollments",
            Self::Group => "enrollmentGroups",
        }
    }

    fn id_field(self) -> &'static str {
        match self {
            Self::Enrollment => "registrationId",
            Self::Group => "enrollmentGroupId",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Self::Enrollment => "--enrollment-id",
            Self::Group => "--group-id",
        }
    }
}

pub(super) async fn enrollment(cmd: EnrollmentCommand) -> anyhow::Result<()> {
    let kind = Kind::Enrollment;
    match cmd {
        EnrollmentCommand::Create {
            enrollment_id,
            device_id,
            options,
            login,
        } => {
            let mut body = build(kind, &enrollment_id, &options)?;
            if let Some(device_id) = device_id {
                body["deviceId"] = json!(device_id);
            }
            create(
                &ServiceClient::connect(&login).await?,
                kind,
                &enrollment_id,
                &body,
            )
            .await
        }
        EnrollmentCommand::Show {
            enrollment_id,
            show_keys,
            json,
            login,
        } => {
            show(
                &ServiceClient::connect(&login).await?,
                kind,
                &enrollment_id,
                show_keys,
                json,
            )
            .await
        }
        EnrollmentCommand::List { json, login } => {
            list(&ServiceClient::connect(&login).await?, kind, json).await
        }
        EnrollmentCommand::Delete {
            enrollment_id,
            etag,
            login,
        } => {
            delete(
                &ServiceClient::connect(&login).await?,
                kind.route(),
                &enrollment_id,
                etag,
            )
            .await
        }
    }
}

pub(super) async fn group(cmd: GroupCommand) -> anyhow::Result<()> {
    let kind = Kind::Group;
    match cmd {
        GroupCommand::Create {
            group_id,
            options,
            login,
        } => {
            let body = build(kind, &group_id, &options)?;
            create(
                &ServiceClient::connect(&login).await?,
                kind,
                &group_id,
                &body,
            )
            .await
        }
        GroupCommand::Show {
            group_id,
            show_keys,
            json,
            login,
        } => {
            show(
                &ServiceClient::connect(&login).await?,
                kind,
                &group_id,
                show_keys,
                json,
            )
            .await
        }
        GroupCommand::List { json, login } => {
            list(&ServiceClient::connect(&login).await?, kind, json).await
        }
        GroupCommand::Delete {
            group_id,
            etag,
            login,
        } => {
            delete(
                &ServiceClient::connect(&login).await?,
                kind.route(),
                &group_id,
                etag,
            )
            .await
        }
    }
}

pub(super) async fn registration(cmd: RegistrationCommand) -> anyhow::Result<()> {
    match cmd {
        RegistrationCommand::Show {
            registration_id,
            json,
            login,
        } => {
            let client = ServiceClient::connect(&login).await?;
            let r = client
                .call(
                    Method::GET,
                    &format!("/registrations/{}", enc(&registration_id)),
                    None,
                    &[],
                )
                .await?
                .body;
            if json {
                print_json(&r)
            } else {
                for field in [
                    "registrationId",
                    "status",
                    "substatus",
                    "assignedHub",
                    "deviceId",
                    "errorCode",
                    "errorMessage",
                    "createdDateTimeUtc",
                    "lastUpdatedDateTimeUtc",
                    "etag",
                ] {
                    if let Some(v) = r.get(field).filter(|v| !v.is_null()) {
                        println!("{field:<24}{}", text(v));
                    }
                }
                Ok(())
            }
        }
        RegistrationCommand::Delete {
            registration_id,
            etag,
            login,
        } => {
            delete(
                &ServiceClient::connect(&login).await?,
                "registrations",
                &registration_id,
                etag,
            )
            .await
        }
    }
}

pub(super) async fn hub(cmd: HubCommand) -> anyhow::Result<()> {
    match cmd {
        HubCommand::List { json, login } => {
            let hubs = ServiceClient::connect(&login)
                .await?
                .call(Method::GET, "/usher/hubs", None, &[])
                .await?
                .body;
            if json {
                return print_json(&hubs);
            }
            println!("{:<24}{:<40}{:>7}  BUILT-IN", "NAME", "HOSTNAME", "WEIGHT");
            for h in hubs.as_array().into_iter().flatten() {
                println!(
                    "{:<24}{:<40}{:>7}  {}",
                    text(&h["name"]),
                    text(&h["hostname"]),
                    text(&h["weight"]),
                    text(&h["builtin"])
                );
            }
            Ok(())
        }
        HubCommand::Add {
            name,
            hostname,
            weight,
            login,
        } => {
            let body = json!({"hostname": hostname, "weight": weight});
            let client = ServiceClient::connect(&login).await?;
            let hub = client
                .call(
                    Method::PUT,
                    &format!("/usher/hubs/{}", enc(&name)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            print_json(&hub)
        }
        HubCommand::Devices {
            hub,
            json: as_json,
            login,
        } => {
            let client = ServiceClient::connect(&login).await?;
            let devices = client
                .call(
                    Method::GET,
                    &format!("/usher/hubs/{}/devices", enc(&hub)),
                    None,
                    &[],
                )
                .await?
                .body;
            if as_json {
                return print_json(&devices);
            }
            println!("{:<40}{:<10}CREATED", "DEVICE ID", "STATUS");
            for d in devices.as_array().into_iter().flatten() {
                println!(
                    "{:<40}{:<10}{}",
                    text(&d["deviceId"]),
                    text(&d["status"]),
                    text(&d["createdDateTimeUtc"])
                );
            }
            Ok(())
        }
    }
}

/// Builds an enrollment or group body from the command-line options, checking them first.
fn build(kind: Kind, id: &str, o: &EnrollmentOptions) -> anyhow::Result<Value> {
    validate_id(id).with_context(|| format!("invalid {}", kind.flag()))?;
    let mut keys = serde_json::Map::new();
    for (name, flag, key) in [
        ("primaryKey", "--primary-key", &o.primary_key),
        ("secondaryKey", "--secondary-key", &o.secondary_key),
    ] {
        if let Some(key) = key {
            SymmetricKey::from_base64(key).with_context(|| format!("invalid {flag}"))?;
            keys.insert(name.into(), json!(key));
        }
    }
    let mut body = json!({ kind.id_field(): id, "attestation": {"type": "symmetricKey", "symmetricKey": keys} });
    if let Some(policy) = o.allocation_policy {
        if policy == AllocationArg::Static && o.iot_hubs.len() != 1 {
            anyhow::bail!("--allocation-policy static needs exactly one hub in --iot-hubs");
        }
        body["allocationPolicy"] = json!(match policy {
            AllocationArg::Static => "static",
            AllocationArg::Hashed => "hashed",
        });
    }
    if !o.iot_hubs.is_empty() {
        body["iotHubs"] = json!(o.iot_hubs);
    }
    if let Some(status) = o.provisioning_status {
        body["provisioningStatus"] = json!(match status {
            StatusArg::Enabled => "enabled",
            StatusArg::Disabled => "disabled",
        });
    }
    Ok(body)
}

async fn create(client: &ServiceClient, kind: Kind, id: &str, body: &Value) -> anyhow::Result<()> {
    let created = client
        .call(
            Method::PUT,
            &format!("/{}/{}", kind.route(), enc(id)),
            Some(body),
            &[],
        )
        .await?
        .body;
    print_json(&created)
}

async fn show(
    client: &ServiceClient,
    kind: Kind,
    id: &str,
    show_keys: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let path = format!("/{}/{}", kind.route(), enc(id));
    let mut doc = client.call(Method::GET, &path, None, &[]).await?.body;
    if show_keys {
        let attestation = client
            .call(
                Method::POST,
                &format!("{path}/attestationmechanism"),
                None,
                &[],
            )
            .await?
            .body;
        doc["attestation"] = attestation;
    }
    if as_json {
        return print_json(&doc);
    }
    println!("{:<24}{}", kind.id_field(), text(&doc[kind.id_field()]));
    println!("{:<24}{}", "attestation", text(&doc["attestation"]["type"]));
    if let Some(keys) = doc["attestation"].get("symmetricKey") {
        println!("{:<24}{}", "primaryKey", text(&keys["primaryKey"]));
        println!("{:<24}{}", "secondaryKey", text(&keys["secondaryKey"]));
    }
    println!(
        "{:<24}{}",
        "provisioningStatus",
        doc.get("provisioningStatus")
            .map_or_else(|| "enabled".into(), text)
    );
    println!(
        "{:<24}{}",
        "allocationPolicy",
        doc.get("allocationPolicy")
            .map_or_else(|| "hashed".into(), text)
    );
    if let Some(hubs) = doc.get("iotHubs") {
        println!("{:<24}{}", "iotHubs", text(hubs));
    }
    if let Some(state) = doc.get("registrationState") {
        println!("{:<24}{}", "registration", text(&state["status"]));
    }
    println!("{:<24}{}", "etag", text(&doc["etag"]));
    Ok(())
}

async fn list(client: &ServiceClient, kind: Kind, as_json: bool) -> anyhow::Result<()> {
    let mut items = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "1000".to_owned())];
        if let Some(c) = &continuation {
            headers.push(("x-ms-continuation", c.clone()));
        }
        let answer = client
            .call(
                Method::POST,
                &format!("/{}/query", kind.route()),
                Some(&json!({"query": "SELECT *"})),
                &headers,
            )
            .await?;
        items.extend(answer.body.as_array().cloned().unwrap_or_default());
        continuation = answer
            .headers
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if continuation.is_none() {
            break;
        }
    }
    if as_json {
        return print_json(&Value::Array(items));
    }
    println!(
        "{:<40}{:<14}{:<12}LAST UPDATED",
        "ID", "ATTESTATION", "STATUS"
    );
    for e in &items {
        println!(
            "{:<40}{:<14}{:<12}{}",
            text(&e[kind.id_field()]),
            text(&e["attestation"]["type"]),
            e.get("provisioningStatus")
                .map_or_else(|| "enabled".into(), text),
            text(&e["lastUpdatedDateTimeUtc"])
        );
    }
    Ok(())
}

async fn delete(
    client: &ServiceClient,
    route: &str,
    id: &str,
    etag: Option<String>,
) -> anyhow::Result<()> {
    let headers: Vec<(&str, String)> = etag.into_iter().map(|e| ("If-Match", e)).collect();
    client
        .call(
            Method::DELETE,
            &format!("/{route}/{}", enc(id)),
            None,
            &headers,
        )
        .await?;
    println!("Deleted {id}");
    Ok(())
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}
