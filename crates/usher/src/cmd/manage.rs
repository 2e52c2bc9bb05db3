//! Enrollment, group, registration, hub and policy commands, over the management API.

use std::io::{BufRead as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};
use usher_proto::SymmetricKey;
use usher_proto::ids::validate_id;

use super::service_client::ServiceClient;
use crate::cli::{
    AllocationArg, AttestationArg, EnrollmentCommand, EnrollmentOptions, HubCommand, ImportMode,
    PolicyCommand, RegistrationCommand, ReprovisionArg, RotateArg, SettingOptions, StatusArg,
    UpdateOptions,
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
}

/// `usher enrollment …` (individual enrollments) and `usher enrollment-group …` (groups).
pub(super) async fn enrollment(group: bool, cmd: EnrollmentCommand) -> anyhow::Result<()> {
    let kind = if group { Kind::Group } else { Kind::Enrollment };
    let device_id = |device_id: Option<String>| -> anyhow::Result<Option<(&'static str, Value)>> {
        match (device_id, kind) {
            (None, _) => Ok(None),
            (Some(_), Kind::Group) => {
                anyhow::bail!("--device-id applies to individual enrollments only")
            }
            (Some(d), Kind::Enrollment) => Ok(Some(("deviceId", json!(d)))),
        }
    };
    match cmd {
        EnrollmentCommand::Create {
            enrollment_id,
            device_id: d,
            options,
            login,
        } => {
            let mut body = build(kind, &enrollment_id, &options)?;
            if let Some((field, value)) = device_id(d)? {
                body[field] = value;
            }
            create(
                &ServiceClient::connect(&login).await?,
                kind,
                &enrollment_id,
                &body,
            )
            .await
        }
        EnrollmentCommand::Update {
            id,
            device_id: d,
            options,
            login,
        } => {
            let extra = device_id(d)?;
            update(
                &ServiceClient::connect(&login).await?,
                kind,
                &id,
                &options,
                extra,
            )
            .await
        }
        EnrollmentCommand::Show {
            id,
            show_keys,
            json,
            login,
        } => {
            show(
                &ServiceClient::connect(&login).await?,
                kind,
                &id,
                show_keys,
                json,
            )
            .await
        }
        EnrollmentCommand::List { query, json, login } => {
            list(
                &ServiceClient::connect(&login).await?,
                kind,
                query.as_deref(),
                json,
            )
            .await
        }
        EnrollmentCommand::RotateKey {
            id,
            which,
            etag,
            login,
        } => {
            let which = match which {
                RotateArg::Primary => "primary",
                RotateArg::Secondary => "secondary",
                RotateArg::Swap => "swap",
            };
            let headers: Vec<(&str, String)> = etag.into_iter().map(|e| ("If-Match", e)).collect();
            let answer = ServiceClient::connect(&login)
                .await?
                .call(
                    Method::POST,
                    &format!("/usher/{}/{}/rotate/{which}", kind.route(), enc(&id)),
                    None,
                    &headers,
                )
                .await?;
            print_json(&answer.body["attestation"])
        }
        EnrollmentCommand::Delete { id, etag, login } => {
            delete(
                &ServiceClient::connect(&login).await?,
                kind.route(),
                &id,
                etag,
            )
            .await
        }
        EnrollmentCommand::Export { file, query, login } => {
            export(
                &ServiceClient::connect(&login).await?,
                kind,
                query.as_deref(),
                file.as_deref(),
            )
            .await
        }
        EnrollmentCommand::Import { file, mode, login } => {
            import(&ServiceClient::connect(&login).await?, kind, &file, mode).await
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
                return print_json(&r);
            }
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
        RegistrationCommand::List {
            group,
            json: as_json,
            login,
        } => {
            let client = ServiceClient::connect(&login).await?;
            let items = query_all(
                &client,
                &format!("/registrations/{}/query", enc(&group)),
                None,
            )
            .await?;
            if as_json {
                return print_json(&Value::Array(items));
            }
            println!(
                "{:<40}{:<12}{:<32}DEVICE ID",
                "REGISTRATION ID", "STATUS", "HUB"
            );
            for r in &items {
                println!(
                    "{:<40}{:<12}{:<32}{}",
                    text(&r["registrationId"]),
                    text(&r["status"]),
                    text(&r["assignedHub"]),
                    text(&r["deviceId"])
                );
            }
            Ok(())
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
            location,
            apply_allocation_policy,
            login,
        } => {
            let body = json!({"hostname": hostname, "weight": weight, "location": location,
                              "applyAllocationPolicy": apply_allocation_policy});
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
        HubCommand::Update {
            name,
            weight,
            location,
            apply_allocation_policy,
            login,
        } => {
            let mut body = json!({});
            if let Some(w) = weight {
                body["weight"] = json!(w);
            }
            if let Some(l) = location {
                body["location"] = json!(l);
            }
            if let Some(a) = apply_allocation_policy {
                body["applyAllocationPolicy"] = json!(a);
            }
            let hub = ServiceClient::connect(&login)
                .await?
                .call(
                    Method::PATCH,
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
            let devices = Value::Array(
                all_pages(
                    &client,
                    Method::GET,
                    &format!("/usher/hubs/{}/devices", enc(&hub)),
                    None,
                )
                .await?,
            );
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

pub(super) async fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Create {
            name,
            rights,
            primary_key,
            secondary_key,
            login,
        } => {
            for (flag, key) in [
                ("--primary-key", &primary_key),
                ("--secondary-key", &secondary_key),
            ] {
                if let Some(k) = key {
                    SymmetricKey::from_base64(k).with_context(|| format!("invalid {flag}"))?;
                }
            }
            let mut body = json!({"rights": rights});
            if let Some(k) = primary_key {
                body["primaryKey"] = json!(k);
            }
            if let Some(k) = secondary_key {
                body["secondaryKey"] = json!(k);
            }
            let client = ServiceClient::connect(&login).await?;
            print_json(
                &client
                    .call(
                        Method::PUT,
                        &format!("/usher/policies/{}", enc(&name)),
                        Some(&body),
                        &[],
                    )
                    .await?
                    .body,
            )
        }
        PolicyCommand::List {
            json: as_json,
            login,
        } => {
            let list = ServiceClient::connect(&login)
                .await?
                .call(Method::GET, "/usher/policies", None, &[])
                .await?
                .body;
            if as_json {
                return print_json(&list);
            }
            println!("{:<32}RIGHTS", "NAME");
            for p in list.as_array().into_iter().flatten() {
                println!("{:<32}{}", text(&p["keyName"]), text(&p["rights"]));
            }
            Ok(())
        }
        PolicyCommand::Delete { name, login } => {
            delete(
                &ServiceClient::connect(&login).await?,
                "usher/policies",
                &name,
                None,
            )
            .await
        }
        PolicyCommand::RotateKey { name, key, login } => {
            let client = ServiceClient::connect(&login).await?;
            let path = format!("/usher/policies/{}/rotate/{}", enc(&name), enc(&key));
            print_json(&client.call(Method::POST, &path, None, &[]).await?.body)
        }
    }
}

/// Builds an enrollment or group body from the command-line options, checking them first.
fn build(kind: Kind, id: &str, o: &EnrollmentOptions) -> anyhow::Result<Value> {
    validate_id(id).with_context(|| "invalid --enrollment-id")?;
    let mut body =
        json!({ kind.id_field(): id, "attestation": {"type": "symmetricKey", "symmetricKey": {}} });
    let has_certificates = o.certificate_path.is_some() || o.ca_name.is_some();
    match (o.attestation_type, has_certificates) {
        (AttestationArg::X509, true) => {
            if o.settings.primary_key.is_some() || o.settings.secondary_key.is_some() {
                anyhow::bail!("X.509 attestation takes no --primary-key or --secondary-key");
            }
            let read = |flag: &str, path: &Path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {flag} {}", path.display()))
            };
            let x509 = if let Some(primary) = &o.certificate_path {
                let mut set =
                    json!({"primary": {"certificate": read("--certificate-path", primary)?}});
                if let Some(secondary) = &o.secondary_certificate_path {
                    set["secondary"] =
                        json!({"certificate": read("--secondary-certificate-path", secondary)?});
                }
                let set_name = match kind {
                    Kind::Enrollment => "clientCertificates",
                    Kind::Group => "signingCertificates",
                };
                json!({set_name: set})
            } else {
                let mut refs = json!({"primary": o.ca_name});
                if let Some(secondary) = &o.secondary_ca_name {
                    refs["secondary"] = json!(secondary);
                }
                json!({"caReferences": refs})
            };
            body["attestation"] = json!({"type": "x509", "x509": x509});
        }
        (AttestationArg::X509, false) => {
            anyhow::bail!("--attestation-type x509 needs --certificate-path or --ca-name")
        }
        (AttestationArg::SymmetricKey, true) => {
            anyhow::bail!("--certificate-path and --ca-name need --attestation-type x509")
        }
        (AttestationArg::SymmetricKey, false) => {}
    }
    apply(&mut body, &o.settings)?;
    Ok(body)
}

/// Applies the options given to an enrollment or group document.
fn apply(body: &mut Value, o: &SettingOptions) -> anyhow::Result<()> {
    for (name, flag, key) in [
        ("primaryKey", "--primary-key", &o.primary_key),
        ("secondaryKey", "--secondary-key", &o.secondary_key),
    ] {
        if let Some(key) = key {
            SymmetricKey::from_base64(key).with_context(|| format!("invalid {flag}"))?;
            body["attestation"]["type"] = json!("symmetricKey");
            body["attestation"]["symmetricKey"][name] = json!(key);
        }
    }
    if let Some(hubs) = &o.iot_hubs {
        body["iotHubs"] = json!(hubs);
    }
    if let Some(policy) = o.allocation_policy {
        let hubs = body
            .get("iotHubs")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if policy == AllocationArg::Static && hubs > 1 {
            anyhow::bail!("--allocation-policy static takes at most one hub in --iot-hubs");
        }
        if policy == AllocationArg::Custom {
            let url = o
                .webhook_url
                .as_deref()
                .context("--allocation-policy custom needs --webhook-url")?;
            body["customAllocationDefinition"] =
                json!({"webhookUrl": url, "apiVersion": o.webhook_api_version});
        }
        body["allocationPolicy"] = json!(allocation_name(policy));
    }
    if let Some(r) = o.reprovision_policy {
        let (update, migrate) = match r {
            ReprovisionArg::Migrate => (true, true),
            ReprovisionArg::Reset => (true, false),
            ReprovisionArg::Never => (false, false),
        };
        body["reprovisionPolicy"] =
            json!({"updateHubAssignment": update, "migrateDeviceData": migrate});
    }
    for (flag, text, path) in [
        ("--initial-tags", &o.initial_tags, "tags"),
        ("--initial-desired", &o.initial_desired, "desired"),
    ] {
        if let Some(text) = text {
            let value: Value = serde_json::from_str(text)
                .ok()
                .filter(Value::is_object)
                .with_context(|| format!("invalid {flag}: not a JSON object"))?;
            if path == "tags" {
                body["initialTwin"]["tags"] = value;
            } else {
                body["initialTwin"]["properties"]["desired"] = value;
            }
        }
    }
    if let Some(edge) = o.edge_enabled {
        body["capabilities"] = json!({"iotEdge": edge});
    }
    if let Some(status) = o.provisioning_status {
        body["provisioningStatus"] = json!(match status {
            StatusArg::Enabled => "enabled",
            StatusArg::Disabled => "disabled",
        });
    }
    Ok(())
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

/// Reads the record, applies the options, and writes it back under `If-Match` (the etag given, or
/// the one just read), so a concurrent change is not overwritten.
async fn update(
    client: &ServiceClient,
    kind: Kind,
    id: &str,
    options: &UpdateOptions,
    extra: Option<(&str, Value)>,
) -> anyhow::Result<()> {
    validate_id(id).with_context(|| "invalid --enrollment-id")?;
    let path = format!("/{}/{}", kind.route(), enc(id));
    let mut doc = client.call(Method::GET, &path, None, &[]).await?.body;
    if let Some(obj) = doc.as_object_mut() {
        obj.remove("registrationState");
    }
    apply(&mut doc, &options.settings)?;
    if let Some((field, value)) = extra {
        doc[field] = value;
    }
    let etag = options
        .etag
        .clone()
        .or_else(|| doc["etag"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "*".into());
    let updated = client
        .call(Method::PUT, &path, Some(&doc), &[("If-Match", etag)])
        .await?
        .body;
    print_json(&updated)
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
    for set in ["clientCertificates", "signingCertificates"] {
        for which in ["primary", "secondary"] {
            let Some(info) = doc["attestation"]["x509"][set][which].get("info") else {
                continue;
            };
            println!(
                "{:<24}{}",
                format!("{which}Certificate"),
                text(&info["subjectName"])
            );
            println!("{:<24}{}", "  issuer", text(&info["issuerName"]));
            println!(
                "{:<24}{}",
                "  sha1Thumbprint",
                text(&info["sha1Thumbprint"])
            );
            println!(
                "{:<24}{}",
                "  sha256Thumbprint",
                text(&info["sha256Thumbprint"])
            );
            println!(
                "{:<24}{} to {}",
                "  valid",
                text(&info["notBeforeUtc"]),
                text(&info["notAfterUtc"])
            );
        }
    }
    for which in ["primary", "secondary"] {
        if let Some(name) = doc["attestation"]["x509"]["caReferences"].get(which) {
            println!("{:<24}{}", format!("{which}CaCertificate"), text(name));
        }
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

/// Every page of a query.
async fn query_all(
    client: &ServiceClient,
    path: &str,
    query: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    let body = json!({"query": query.unwrap_or("SELECT *")});
    all_pages(client, Method::POST, path, Some(&body)).await
}

/// Every page of a paged answer, following `x-ms-continuation`.
async fn all_pages(
    client: &ServiceClient,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "1000".to_owned())];
        if let Some(c) = &continuation {
            headers.push(("x-ms-continuation", c.clone()));
        }
        let answer = client.call(method.clone(), path, body, &headers).await?;
        items.extend(answer.body.as_array().cloned().unwrap_or_default());
        continuation = answer
            .headers
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if continuation.is_none() {
            return Ok(items);
        }
    }
}

async fn list(
    client: &ServiceClient,
    kind: Kind,
    query: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let items = query_all(client, &format!("/{}/query", kind.route()), query).await?;
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

/// Writes every matching record, keys included, one JSON document per line.
async fn export(
    client: &ServiceClient,
    kind: Kind,
    query: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let items = query_all(client, &format!("/{}/query", kind.route()), query).await?;
    let mut out: Box<dyn std::io::Write> = match file {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let bar = progress(items.len() as u64, "exporting");
    for mut item in items {
        let id = text(&item[kind.id_field()]);
        let path = format!("/{}/{}/attestationmechanism", kind.route(), enc(&id));
        item["attestation"] = client.call(Method::POST, &path, None, &[]).await?.body;
        writeln!(out, "{}", serde_json::to_string(&item)?)?;
        bar.inc(1);
    }
    out.flush()?;
    bar.finish_and_clear();
    eprintln!("Exported {} record(s)", bar.position());
    Ok(())
}

/// Lines sent per import request. The server streams each request and stores it in batches;
/// several requests keep the progress bar moving and a retry small.
const IMPORT_LINES_PER_REQUEST: usize = 20_000;

/// Imports JSON Lines through the streaming import route, [`IMPORT_LINES_PER_REQUEST`] lines per
/// request. Every line is checked (a JSON document with a valid ID) before anything is sent, so a
/// typo does not leave half a file imported; the file is read twice rather than held in memory.
/// Item failures (an existing record in create mode, an unknown hub) are listed at the end with
/// their line numbers and make the command fail.
async fn import(
    client: &ServiceClient,
    kind: Kind,
    file: &Path,
    mode: ImportMode,
) -> anyhow::Result<()> {
    let open = || -> anyhow::Result<std::io::BufReader<std::fs::File>> {
        Ok(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let mut total: u64 = 0;
    for (n, line) in open()?.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a JSON document", file.display(), n + 1))?;
        let id = item
            .get(kind.id_field())
            .and_then(Value::as_str)
            .unwrap_or_default();
        validate_id(id).with_context(|| {
            format!("{}:{}: invalid {}", file.display(), n + 1, kind.id_field())
        })?;
        total += 1;
    }
    let mode = match mode {
        ImportMode::Create => "create",
        ImportMode::Update => "update",
    };
    let path = format!("/usher/{}/import?mode={mode}", kind.route());
    let bar = progress(total, "importing");
    let mut failures = Vec::new();
    let mut imported: u64 = 0;
    // File line number of the first line of the request being built.
    let mut first_line: u64 = 1;
    let mut body = Vec::new();
    let mut lines_in_body = 0;
    let mut items_in_body = 0;
    let mut reader = open()?.lines().peekable();
    while reader.peek().is_some() || !body.is_empty() {
        if let Some(line) = reader.next() {
            let line = line.with_context(|| format!("cannot read {}", file.display()))?;
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
            lines_in_body += 1;
            if !line.trim().is_empty() {
                items_in_body += 1;
            }
            if lines_in_body < IMPORT_LINES_PER_REQUEST && reader.peek().is_some() {
                continue;
            }
        }
        let answer = client
            .call_bytes(
                Method::POST,
                &path,
                "application/x-ndjson",
                std::mem::take(&mut body),
            )
            .await?
            .body;
        imported += answer["imported"].as_u64().unwrap_or(0);
        for e in answer["errors"].as_array().into_iter().flatten() {
            let line = first_line + e["line"].as_u64().unwrap_or(1) - 1;
            failures.push(format!(
                "{}:{line}: {} {} {}",
                file.display(),
                text(&e["id"]),
                text(&e["errorCode"]),
                text(&e["errorStatus"])
            ));
        }
        let unlisted = answer["failed"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(answer["errors"].as_array().map_or(0, |a| a.len() as u64));
        if unlisted > 0 {
            failures.push(format!("… and {unlisted} more in this part of the file"));
        }
        first_line += lines_in_body as u64;
        bar.inc(items_in_body);
        lines_in_body = 0;
        items_in_body = 0;
    }
    bar.finish_and_clear();
    eprintln!("Imported {imported} of {total} record(s)");
    if imported < total {
        for f in &failures {
            eprintln!("  {f}");
        }
        anyhow::bail!("{} record(s) were not imported", total - imported);
    }
    Ok(())
}

/// A progress bar on standard error (hidden when it is not a terminal).
pub(crate) fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
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

pub(crate) fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn allocation_name(policy: AllocationArg) -> &'static str {
    match policy {
        AllocationArg::Static => "static",
        AllocationArg::Hashed => "hashed",
        AllocationArg::GeoLatency => "geoLatency",
        AllocationArg::Custom => "custom",
    }
}

/// `usher instance set`: the default allocation policy and the network map, read, changed, written.
pub(super) async fn instance_set(
    policy: Option<AllocationArg>,
    geo: Option<Vec<String>>,
    login: &crate::cli::Login,
) -> anyhow::Result<()> {
    let client = ServiceClient::connect(login).await?;
    let mut settings = client
        .call(Method::GET, "/usher/allocation", None, &[])
        .await?
        .body;
    if let Some(p) = policy {
        settings["defaultPolicy"] = json!(allocation_name(p));
    }
    if let Some(rules) = geo {
        let mut map = Vec::new();
        for rule in rules {
            let (network, location) = rule
                .split_once('=')
                .with_context(|| format!("invalid --geo {rule:?}: use CIDR=LOCATION"))?;
            network.parse::<ipnet::IpNet>().with_context(|| {
                format!("invalid --geo {rule:?}: {network:?} is not a CIDR network")
            })?;
            map.push(json!({"network": network, "location": location}));
        }
        settings["geoMap"] = json!(map);
    }
    let answer = client
        .call(Method::PUT, "/usher/allocation", Some(&settings), &[])
        .await?;
    print_json(&answer.body)
}

pub(crate) fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}
