//! `usher serve` and the management and device commands, run as a user would: the real binary,
//! a real server on a loopback port, the CLI finding it through the data directory.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn usher(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(args)
        .env("USHER_DATA_DIR", dir.join("usher-data"))
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    start_logging(dir, extra, Stdio::null())
}

/// Starts `usher serve` on loopback ports with its log (stderr) going to `log`.
fn start_logging(dir: &Path, extra: &[&str], log: impl Into<Stdio>) -> Server {
    start_capturing(dir, extra, Stdio::null(), log)
}

/// Starts `usher serve` on loopback ports with its banner (stdout) and log (stderr) going where
/// given.
fn start_capturing(
    dir: &Path,
    extra: &[&str],
    banner: impl Into<Stdio>,
    log: impl Into<Stdio>,
) -> Server {
    // A server killed earlier leaves its runtime file behind; the new one writes its own.
    let _ = std::fs::remove_file(dir.join("usher-data/runtime.json"));
    // Wrapped at once so the child is killed and reaped on every path.
    let server = Server {
        child: Command::new(env!("CARGO_BIN_EXE_usher"))
            .args([
                "serve",
                "--https-addr",
                "127.0.0.1:0",
                "--mqtt-addr",
                "127.0.0.1:0",
                "--amqp-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .stdout(banner)
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    let runtime = dir.join("usher-data/runtime.json");
    // Up to 30 s for the server to create its PKI and start listening.
    for _ in 0..600 {
        if runtime.exists() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not start");
}

#[test]
fn serve_enroll_derive_provision_and_list_hub_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir, &[]);
    let instance = json(&usher(dir, &["instance", "show", "--json"]));
    let scope = instance["idScope"].as_str().unwrap();
    assert!(scope.starts_with("0ne") && scope.len() == 11, "{scope}");
    assert!(
        instance["serviceConnectionString"]
            .as_str()
            .unwrap()
            .starts_with(
                "HostName=localhost;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="
            )
    );
    assert_eq!(instance["deviceEndpoint"], "localhost");
    assert_eq!(instance["hubs"][0]["name"], "usher-hub");
    let ca = instance["caCertificate"].as_str().unwrap().to_owned();
    assert!(ok(&usher(dir, &["instance", "show"])).contains(scope));

    let runtime: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("usher-data/runtime.json")).unwrap(),
    )
    .unwrap();
    let port_of = |field: &str| {
        runtime[field]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };
    let host = format!("localhost:{}", port_of("httpsAddr"));
    let mqtt_host = format!("localhost:{}", port_of("mqttAddr"));

    // Group: create, derive, provision.
    let group = json(&usher(
        dir,
        &[
            "enrollment-group",
            "create",
            "--group-id",
            "floor-1",
            "--attestation-type",
            "symmetrickey",
        ],
    ));
    let group_key = group["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    let device_key = ok(&usher(
        dir,
        &[
            "key",
            "derive",
            "--group-key",
            group_key,
            "--registration-id",
            "sensor-001",
        ],
    ));
    let out = ok(&usher(
        dir,
        &[
            "provision",
            "--id-scope",
            scope,
            "--registration-id",
            "sensor-001",
            "--key",
            device_key.trim(),
            "--host",
            &host,
            "--ca",
            &ca,
        ],
    ));
    assert!(
        out.contains("hub localhost, deviceId sensor-001, status assigned"),
        "{out}"
    );
    // Over MQTT, AMQP and both over WebSockets too.
    let amqp_host = format!("localhost:{}", port_of("amqpAddr"));
    for (transport, at) in [
        ("mqtt", &mqtt_host),
        ("mqtt-ws", &host),
        ("amqp", &amqp_host),
        ("amqp-ws", &host),
    ] {
        let out = ok(&usher(
            dir,
            &[
                "provision",
                "--id-scope",
                scope,
                "--registration-id",
                "sensor-001",
                "--key",
                device_key.trim(),
                "--host",
                at,
                "--ca",
                &ca,
                "--transport",
                transport,
            ],
        ));
        assert!(
            out.contains("deviceId sensor-001, status assigned"),
            "{transport}: {out}"
        );
    }
    // Or straight from the group key.

    let out = ok(&usher(
        dir,
        &[
            "provision",
            "--id-scope",
            scope,
            "--registration-id",
            "sensor-002",
            "--group-key",
            group_key,
            "--host",
            &host,
            "--ca",
            &ca,
        ],
    ));
    assert!(out.contains("deviceId sensor-002"), "{out}");

    let devices = json(&usher(dir, &["hub", "devices", "usher-hub", "--json"]));
    let ids: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sensor-001", "sensor-002"]);
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "enabled")
    );
    assert!(ok(&usher(dir, &["hub", "devices", "usher-hub"])).contains("sensor-001"));

    // Individual enrollment with a supplied key; show hides keys unless asked.
    let key = ok(&usher(dir, &["key", "generate"]));
    let key = key.trim();
    ok(&usher(
        dir,
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "dev-1",
            "--attestation-type",
            "symmetrickey",
            "--primary-key",
            key,
        ],
    ));
    let shown = json(&usher(dir, &["enrollment", "show", "dev-1", "--json"]));
    assert!(shown["attestation"].get("symmetricKey").is_none());
    let shown = json(&usher(
        dir,
        &["enrollment", "show", "dev-1", "--show-keys", "--json"],
    ));
    assert_eq!(shown["attestation"]["symmetricKey"]["primaryKey"], key);
    ok(&usher(
        dir,
        &[
            "provision",
            "--id-scope",
            scope,
            "--registration-id",
            "dev-1",
            "--key",
            key,
            "--host",
            &host,
            "--ca",
            &ca,
        ],
    ));
    let reg = json(&usher(dir, &["registration", "show", "dev-1", "--json"]));
    assert_eq!(reg["status"], "assigned");
    let listed = json(&usher(dir, &["enrollment", "list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        json(&usher(dir, &["enrollment-group", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A disabled enrollment: provisioning fails with a clear status.
    ok(&usher(
        dir,
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "dev-off",
            "--provisioning-status",
            "disabled",
            "--primary-key",
            key,
        ],
    ));
    let out = usher(
        dir,
        &[
            "provision",
            "--id-scope",
            scope,
            "--registration-id",
            "dev-off",
            "--key",
            key,
            "--host",
            &host,
            "--ca",
            &ca,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("status disabled"));
    // A wrong key: the service's 401 is shown.
    let out = usher(
        dir,
        &[
            "provision",
            "--id-scope",
            scope,
            "--registration-id",
            "dev-1",
            "--key",
            device_key.trim(),
            "--host",
            &host,
            "--ca",
            &ca,
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("status 401: errorCode 401002"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Hubs: add one, static allocation to it.
    ok(&usher(
        dir,
        &[
            "hub",
            "add",
            "--name",
            "hub-2",
            "--hostname",
            "hub2.example.test",
            "--weight",
            "3",
        ],
    ));
    assert!(ok(&usher(dir, &["hub", "list"])).contains("hub2.example.test"));
    ok(&usher(
        dir,
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "dev-2",
            "--allocation-policy",
            "static",
            "--iot-hubs",
            "hub2.example.test",
            "--primary-key",
            key,
        ],
    ));
    let out = ok(&usher(
        dir,
        &[
            "provision",
            "--id-scope",
            scope,
            "--registration-id",
            "dev-2",
            "--key",
            key,
            "--host",
            &host,
            "--ca",
            &ca,
        ],
    ));
    assert!(out.contains("hub hub2.example.test"), "{out}");

    // Deletes.
    ok(&usher(dir, &["registration", "delete", "dev-1"]));
    assert!(
        !usher(dir, &["registration", "show", "dev-1"])
            .status
            .success()
    );
    ok(&usher(dir, &["enrollment", "delete", "dev-1"]));
    let out = usher(dir, &["enrollment", "delete", "dev-1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404201"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&usher(dir, &["enrollment-group", "delete", "floor-1"]));
}

#[test]
fn management_commands_explain_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = usher(tmp.path(), &["enrollment", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no Usher data directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = usher(tmp.path(), &["instance", "show"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no Usher instance"));
    let out = usher(
        tmp.path(),
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "bad!",
            "--login",
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --enrollment-id"));
}

#[test]
fn serve_reports_a_port_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = usher(
        tmp.path(),
        &[
            "serve",
            "--https-addr",
            &addr,
            "--mqtt-addr",
            "127.0.0.1:0",
            "--amqp-addr",
            "127.0.0.1:0",
        ],
    );

    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn update_query_registration_list_policies_and_jsonl_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir, &[]);
    let instance = json(&usher(dir, &["instance", "show", "--json"]));
    let scope = instance["idScope"].as_str().unwrap().to_owned();
    let ca = instance["caCertificate"].as_str().unwrap().to_owned();
    let hub_cs = instance["hubs"][0]["connectionString"].as_str().unwrap();
    assert!(
        hub_cs.starts_with("HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey="),
        "{hub_cs}"
    );
    let runtime: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("usher-data/runtime.json")).unwrap(),
    )
    .unwrap();
    let https = runtime["httpsAddr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();

    for i in 0..5 {
        ok(&usher(
            dir,
            &[
                "enrollment",
                "create",
                "--enrollment-id",
                &format!("cli-{i}"),
            ],
        ));
    }
    // Update: only the options given change; the etag guards the write.
    let before = json(&usher(
        dir,
        &["enrollment", "show", "cli-1", "--show-keys", "--json"],
    ));
    let updated = json(&usher(
        dir,
        &[
            "enrollment",
            "update",
            "cli-1",
            "--provisioning-status",
            "disabled",
        ],
    ));
    assert_eq!(updated["provisioningStatus"], "disabled");
    assert_eq!(
        updated["attestation"]["symmetricKey"], before["attestation"]["symmetricKey"],
        "keys kept"
    );
    let out = usher(
        dir,
        &[
            "enrollment",
            "update",
            "cli-1",
            "--provisioning-status",
            "enabled",
            "--etag",
            "stale",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("412001"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Query.
    let disabled = json(&usher(
        dir,
        &[
            "enrollment",
            "list",
            "--json",
            "--query",
            "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'",
        ],
    ));
    let ids: Vec<&str> = disabled
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["registrationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cli-1"]);
    let out = usher(dir, &["enrollment", "list", "--query", "SELECT * WHERE"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid query"));

    // Registrations of a group.
    let group = json(&usher(
        dir,
        &["enrollment-group", "create", "--group-id", "cli-g"],
    ));
    let group_key = group["attestation"]["symmetricKey"]["secondaryKey"]
        .as_str()
        .unwrap();
    for id in ["cli-member-1", "cli-member-2"] {
        let host = format!("localhost:{https}");
        ok(&usher(
            dir,
            &[
                "provision",
                "--id-scope",
                &scope,
                "--registration-id",
                id,
                "--group-key",
                group_key,
                "--host",
                &host,
                "--ca",
                &ca,
            ],
        ));
    }
    let regs = json(&usher(
        dir,
        &["registration", "list", "--group", "cli-g", "--json"],
    ));
    assert_eq!(regs.as_array().unwrap().len(), 2);
    assert!(
        ok(&usher(dir, &["registration", "list", "--group", "cli-g"])).contains("cli-member-2")
    );
    let updated = json(&usher(
        dir,
        &[
            "enrollment-group",
            "update",
            "cli-g",
            "--provisioning-status",
            "disabled",
        ],
    ));
    assert_eq!(updated["provisioningStatus"], "disabled");

    // Policies.
    let reader = json(&usher(
        dir,
        &[
            "policy",
            "create",
            "--name",
            "reader",
            "--rights",
            "EnrollmentRead,RegistrationStatusRead",
        ],
    ));
    let login = format!(
        "HostName=localhost:{https};SharedAccessKeyName=reader;SharedAccessKey={}",
        reader["primaryKey"].as_str().unwrap()
    );
    let listed = json(&usher(
        dir,
        &[
            "enrollment",
            "list",
            "--json",
            "--login",
            &login,
            "--ca",
            &ca,
        ],
    ));
    assert_eq!(listed.as_array().unwrap().len(), 5);
    let out = usher(
        dir,
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "cli-x",
            "--login",
            &login,
            "--ca",
            &ca,
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401003"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ok(&usher(dir, &["policy", "list"])).contains("reader"));
    ok(&usher(
        dir,
        &["policy", "rotate-key", "reader", "--key", "primary"],
    ));
    let out = usher(dir, &["enrollment", "list", "--login", &login, "--ca", &ca]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401002"),
        "old key refused"
    );
    ok(&usher(dir, &["policy", "delete", "reader"]));
    assert!(!ok(&usher(dir, &["policy", "list"])).contains("reader"));
    let out = usher(
        dir,
        &[
            "policy",
            "create",
            "--name",
            "bad",
            "--rights",
            "Everything",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown right"));

    // Export with keys, delete, import back: the same records and keys.
    let file = dir.join("enrollments.jsonl");
    ok(&usher(
        dir,
        &["enrollment", "export", "--file", file.to_str().unwrap()],
    ));
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 5);
    for i in 0..5 {
        ok(&usher(dir, &["enrollment", "delete", &format!("cli-{i}")]));
    }
    assert_eq!(
        json(&usher(dir, &["enrollment", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let out = usher(
        dir,
        &["enrollment", "import", "--file", file.to_str().unwrap()],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Imported 5 of 5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = json(&usher(
        dir,
        &["enrollment", "show", "cli-1", "--show-keys", "--json"],
    ));
    assert_eq!(
        again["attestation"]["symmetricKey"],
        before["attestation"]["symmetricKey"]
    );
    assert_eq!(again["provisioningStatus"], "disabled");
    // Importing again in create mode reports every conflict and fails.
    let out = usher(
        dir,
        &["enrollment", "import", "--file", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 record(s) were not imported"));
    // A bad line is refused before anything is sent.
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"registrationId\": \"ok-1\"}\nnot json\n",
    )
    .unwrap();
    let out = usher(
        dir,
        &[
            "enrollment",
            "import",
            "--file",
            dir.join("bad.jsonl").to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:2: not a JSON document"));
    assert!(!usher(dir, &["enrollment", "show", "ok-1"]).status.success());
}

/// Without the privilege to bind port 443, `serve` says how to get it. Run as root, the test drops
/// to the `nobody` user with `setpriv` first, so it checks the message either way. On a machine
/// that lets anyone bind low ports (`ip_unprivileged_port_start` at or below 443) there is no
/// refusal to see; there the unprivileged server must start instead.
#[test]
fn serve_explains_how_to_bind_a_privileged_port() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A copy of the binary that any user can run, whatever the permissions of the build tree.
    let bin = tmp.path().join("usher");
    std::fs::copy(env!("CARGO_BIN_EXE_usher"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    let args = [
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--https-addr",
        "127.0.0.1:443",
        "--mqtt-addr",
        "127.0.0.1:0",
        "--amqp-addr",
        "127.0.0.1:0",
    ];
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        .starts_with(b"0");
    let mut command = if is_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let child = command
        .args(args)
        .current_dir(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server { child };
    let unprivileged_start: u32 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1024);
    // Up to 30 s for the refusal (or, where low ports are open to all, for the server to listen).
    for _ in 0..600 {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(
                unprivileged_start > 443,
                "the server exited although port 443 is open to all"
            );
            assert!(!status.success());
            let mut err = String::new();
            std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(
                err.contains("cannot listen on 127.0.0.1:443: permission denied"),
                "{err}"
            );
            assert!(err.contains("setcap cap_net_bind_service=+ep"), "{err}");
            assert!(err.contains("--https-addr 127.0.0.1:8443"), "{err}");
            return;
        }
        if unprivileged_start <= 443 && data.join("runtime.json").exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("serve neither refused port 443 nor started within 30 s");
}

/// The host:port of one of the server's listeners, from its runtime file.
fn listener(dir: &Path, field: &str) -> String {
    let runtime: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("usher-data/runtime.json")).unwrap(),
    )
    .unwrap();
    let port = runtime[field].as_str().unwrap().rsplit(':').next().unwrap();
    format!("localhost:{port}")
}

#[test]
fn every_transport_logs_a_refused_device_once_at_info_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log_path = dir.join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _server = start_logging(dir, &["--register-response", "assigned"], log);
    let instance = json(&usher(dir, &["instance", "show", "--json"]));
    let scope = instance["idScope"].as_str().unwrap().to_owned();
    let ca = instance["caCertificate"].as_str().unwrap().to_owned();
    json(&usher(
        dir,
        &["enrollment", "create", "--enrollment-id", "log-dev"],
    ));
    let wrong_key = "T25lIGtleSBub2JvZHkgZW5yb2xsZWQgZXZlciEhISE=";
    for (transport, field) in [
        ("https", "httpsAddr"),
        ("mqtt", "mqttAddr"),
        ("mqtt-ws", "httpsAddr"),
        ("amqp", "amqpAddr"),
        ("amqp-ws", "httpsAddr"),
    ] {
        let out = usher(
            dir,
            &[
                "provision",
                "--id-scope",
                &scope,
                "--registration-id",
                "log-dev",
                "--key",
                wrong_key,
                "--host",
                &listener(dir, field),
                "--ca",
                &ca,
                "--transport",
                transport,
            ],
        );
        assert!(!out.status.success(), "{transport}: a wrong key is refused");
    }
    // The log is written as the requests are answered; give the last line a moment.
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&log_path).unwrap();
    for protocol in ["https", "mqtt", "mqtt-ws", "amqp", "amqp-ws"] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("request refused") && l.contains(&format!("protocol=\"{protocol}\""))
            })
            .collect();
        assert_eq!(lines.len(), 1, "one line for {protocol}:\n{text}");
        assert!(lines[0].contains(" INFO "), "{}", lines[0]);
        assert!(
            lines[0].contains("signature does not match"),
            "the reason is logged: {}",
            lines[0]
        );
    }
    assert!(!text.contains(wrong_key), "no key in the log");
    assert!(!text.contains("sig="), "no signature in the log");
}

#[test]
fn the_cli_says_how_to_trust_the_servers_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir, &[]);
    let instance = json(&usher(dir, &["instance", "show", "--json", "--show-keys"]));
    let login = instance["serviceConnectionString"]
        .as_str()
        .unwrap()
        .replace(
            "HostName=localhost",
            &format!("HostName={}", listener(dir, "httpsAddr")),
        );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = usher(elsewhere.path(), &["enrollment", "list", "--login", &login]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for hint in ["--ca", "USHER_CA_CERT", "pki/ca.pem", "UnknownIssuer"] {
        assert!(stderr.contains(hint), "{hint}: {stderr}");
    }
    // With the CA it works.
    let ca = instance["caCertificate"].as_str().unwrap();
    ok(&usher(
        elsewhere.path(),
        &["enrollment", "list", "--login", &login, "--ca", ca],
    ));
}

/// Every file under `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = vec![(
        dir.to_owned(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((
                path.clone(),
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            ));
        }
    }
    out
}

/// All the bytes of the database and its write-ahead log.
fn database_bytes(data: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(data.join("usher.db")).unwrap();
    if let Ok(wal) = std::fs::read(data.join("usher.db-wal")) {
        bytes.extend(wal);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn keys_are_sealed_at_rest_files_are_private_and_nothing_prints_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("usher-data");
    let banner = std::fs::File::create(dir.join("banner.txt")).unwrap();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let server = start_capturing(dir, &["--register-response", "assigned"], banner, log);

    let instance = json(&usher(dir, &["instance", "show", "--json", "--show-keys"]));
    let owner_key = instance["serviceConnectionString"]
        .as_str()
        .unwrap()
        .split("SharedAccessKey=")
        .nth(1)
        .unwrap()
        .to_owned();
    let hub_key = instance["hubs"][0]["connectionString"]
        .as_str()
        .unwrap()
        .split("SharedAccessKey=")
        .nth(1)
        .unwrap()
        .to_owned();
    let hidden = json(&usher(dir, &["instance", "show", "--json"]));
    assert!(
        !hidden.to_string().contains(&owner_key),
        "hidden without --show-keys"
    );
    assert!(!ok(&usher(dir, &["instance", "show"])).contains(&owner_key));

    // An enrollment with keys we know, and a device provisioned with it (a derived device key and
    // a hub identity now exist too).
    let primary = "UHJpbWFyeSBrZXkgb2YgdGhlIGVuY3J5cHRpb24gdGVzdA==";
    let secondary = "U2Vjb25kYXJ5IGtleSBvZiB0aGUgZW5jcnlwdGlvbiB0ZXN0";
    ok(&usher(
        dir,
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "sealed-1",
            "--primary-key",
            primary,
            "--secondary-key",
            secondary,
        ],
    ));
    let group = json(&usher(
        dir,
        &["enrollment-group", "create", "--group-id", "sealed-g"],
    ));
    let group_key = group["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let device_key = ok(&usher(
        dir,
        &[
            "key",
            "derive",
            "--group-key",
            &group_key,
            "--registration-id",
            "sealed-dev",
        ],
    ))
    .trim()
    .to_owned();
    let ca = instance["caCertificate"].as_str().unwrap().to_owned();
    let host = listener(dir, "httpsAddr");
    let scope = instance["idScope"].as_str().unwrap().to_owned();
    for (id, key) in [("sealed-1", primary), ("sealed-dev", device_key.as_str())] {
        ok(&usher(
            dir,
            &[
                "provision",
                "--id-scope",
                &scope,
                "--registration-id",
                id,
                "--key",
                key,
                "--host",
                &host,
                "--ca",
                &ca,
            ],
        ));
    }

    // Ciphertext, not keys, in the database and its log.
    let db = database_bytes(&data);
    for (what, key) in [
        ("owner policy key", owner_key.as_str()),
        ("hub owner key", hub_key.as_str()),
        ("enrollment primary key", primary),
        ("enrollment secondary key", secondary),
        ("group key", group_key.as_str()),
        ("derived device key", device_key.as_str()),
    ] {
        assert!(
            !contains(&db, key),
            "the {what} is in the database in plaintext"
        );
    }
    assert!(contains(&db, "sealed:v1:"));

    // The data directory is 0700, every file in it 0600.
    for (path, mode) in modes(&data) {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }

    // No key in the banner or the log.
    drop(server);
    let printed = std::fs::read_to_string(dir.join("banner.txt")).unwrap()
        + &std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(
        printed.contains("usher instance show --show-keys"),
        "{printed}"
    );
    for key in [
        &owner_key,
        &hub_key,
        primary,
        secondary,
        &group_key,
        &device_key,
    ] {
        assert!(!printed.contains(key), "a key was printed:\n{printed}");
    }

    // KEK rotation: the old KEK opens nothing any more, the new one opens everything.
    let old_kek = std::fs::read_to_string(data.join("kek")).unwrap();
    std::fs::write(dir.join("old-kek"), &old_kek).unwrap();
    let out = ok(&usher(dir, &["kek", "rotate"]));
    assert!(
        out.contains("is now wrapped by key-encryption key"),
        "{out}"
    );
    let new_kek = std::fs::read_to_string(data.join("kek")).unwrap();
    assert_ne!(old_kek, new_kek);
    let refused = usher(
        dir,
        &[
            "instance",
            "show",
            "--kek-file",
            dir.join("old-kek").to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("is not the one this instance's keys are wrapped with"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let _server = start(dir, &["--register-response", "assigned"]);
    let shown = json(&usher(
        dir,
        &["enrollment", "show", "sealed-1", "--show-keys", "--json"],
    ));
    assert_eq!(shown["attestation"]["symmetricKey"]["primaryKey"], primary);
    ok(&usher(
        dir,
        &[
            "provision",
            "--id-scope",
            &scope,
            "--registration-id",
            "sealed-dev",
            "--key",
            &device_key,
            "--host",
            &listener(dir, "httpsAddr"),
            "--ca",
            &ca,
        ],
    ));
    assert!(!contains(&database_bytes(&data), primary));
    // A KEK given from outside the data directory needs a place for the new one.
    let elsewhere = usher(
        dir,
        &[
            "kek",
            "rotate",
            "--kek-file",
            data.join("kek").to_str().unwrap(),
        ],
    );
    assert!(!elsewhere.status.success());
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("--new-kek-file"));
}

#[test]
fn the_audit_log_verifies_and_a_tampered_entry_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir, &[]);
    for id in ["audit-a", "audit-b", "audit-c"] {
        ok(&usher(
            dir,
            &["enrollment", "create", "--enrollment-id", id],
        ));
    }
    ok(&usher(dir, &["enrollment", "delete", "audit-b"]));
    let listed = ok(&usher(dir, &["audit", "list"]));
    assert!(
        listed.contains("enrollment.delete") && listed.contains("audit-b"),
        "{listed}"
    );
    let out = ok(&usher(dir, &["audit", "verify"]));
    assert!(out.contains("The audit log is intact: 4 entries"), "{out}");
    let export = dir.join("audit.jsonl");
    ok(&usher(
        dir,
        &["audit", "export", "--file", export.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read_to_string(&export).unwrap().lines().count(), 5);
    assert!(
        ok(&usher(
            dir,
            &["audit", "verify", "--file", export.to_str().unwrap()]
        ))
        .contains("intact")
    );

    // Someone with write access to the database rewrites entry 2.
    let db = rusqlite::Connection::open(dir.join("usher-data/usher.db")).unwrap();
    db.execute(
        "UPDATE audit_log SET target = 'someone-else' WHERE seq = 2",
        [],
    )
    .unwrap();
    let out = usher(dir, &["audit", "verify"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tampered") && stderr.contains("entry 2"),
        "{stderr}"
    );
    // The export taken before still verifies; edited, it does not.
    let text = std::fs::read_to_string(&export).unwrap();
    std::fs::write(&export, text.replacen("audit-c", "audit-x", 1)).unwrap();
    let out = usher(
        dir,
        &["audit", "verify", "--file", export.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("entry 3"));
}

#[test]
fn key_rollover_hub_update_and_instance_allocation_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir, &["--register-response", "assigned"]);
    let instance = json(&usher(dir, &["instance", "show", "--json"]));
    let scope = instance["idScope"].as_str().unwrap().to_owned();
    let ca = instance["caCertificate"].as_str().unwrap().to_owned();
    let host = listener(dir, "httpsAddr");
    let provision = |id: &str, group_key: &str| {
        usher(
            dir,
            &[
                "provision",
                "--id-scope",
                &scope,
                "--registration-id",
                id,
                "--group-key",
                group_key,
                "--host",
                &host,
                "--ca",
                &ca,
            ],
        )
    };
    let group = json(&usher(
        dir,
        &["enrollment-group", "create", "--group-id", "roll"],
    ));
    let old_primary = group["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_secondary = group["attestation"]["symmetricKey"]["secondaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&provision("roll-a", &old_primary));
    ok(&provision("roll-b", &old_secondary));

    // A new primary goes out: devices on the secondary keep working, the old primary stops.
    let keys = json(&usher(
        dir,
        &["enrollment-group", "rotate-key", "roll", "--key", "primary"],
    ));
    let new_primary = keys["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_primary, old_primary);
    assert_eq!(keys["symmetricKey"]["secondaryKey"], old_secondary.as_str());
    ok(&provision("roll-b", &old_secondary));
    ok(&provision("roll-c", &new_primary));
    assert!(!provision("roll-a", &old_primary).status.success());
    // Swap: the keys change places; both still work.
    let keys = json(&usher(
        dir,
        &["enrollment-group", "rotate-key", "roll", "--key", "swap"],
    ));
    assert_eq!(keys["symmetricKey"]["primaryKey"], old_secondary.as_str());
    assert_eq!(keys["symmetricKey"]["secondaryKey"], new_primary.as_str());
    ok(&provision("roll-b", &old_secondary));
    ok(&provision("roll-c", &new_primary));
    // Individual enrollments rotate the same way; an unknown one is a clear error.
    ok(&usher(
        dir,
        &["enrollment", "create", "--enrollment-id", "solo"],
    ));
    let keys = json(&usher(
        dir,
        &["enrollment", "rotate-key", "solo", "--key", "secondary"],
    ));
    assert!(keys["symmetricKey"]["secondaryKey"].is_string());
    let missing = usher(
        dir,
        &["enrollment", "rotate-key", "nobody", "--key", "swap"],
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));

    // Hubs and the instance's allocation.
    json(&usher(
        dir,
        &[
            "hub",
            "add",
            "--name",
            "west",
            "--hostname",
            "west.example.test",
            "--location",
            "westeurope",
        ],
    ));
    let hub = json(&usher(
        dir,
        &[
            "hub",
            "update",
            "west",
            "--weight",
            "5",
            "--apply-allocation-policy",
            "false",
        ],
    ));
    assert_eq!(hub["weight"], 5);
    assert_eq!(hub["applyAllocationPolicy"], false);
    assert_eq!(hub["location"], "westeurope");
    let settings = json(&usher(
        dir,
        &[
            "instance",
            "set",
            "--allocation-policy",
            "geolatency",
            "--geo",
            "10.0.0.0/8=westeurope",
            "--geo",
            "192.168.0.0/16=eastus",
        ],
    ));
    assert_eq!(settings["defaultPolicy"], "geoLatency");
    assert_eq!(settings["geoMap"][1]["location"], "eastus");
    let bad = usher(dir, &["instance", "set", "--geo", "10.0.0.0=west"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a CIDR network"));
}

#[test]
fn bench_seed_creates_enrollments_and_groups_in_bulk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir, &["--register-response", "assigned"]);
    // More than one import request's worth of enrollments, so the seeding spans requests.
    let out = json(&usher(
        dir,
        &[
            "bench",
            "seed",
            "--individual",
            "20500",
            "--groups",
            "3",
            "--prefix",
            "s",
            "--json",
        ],
    ));
    assert_eq!(out["individualEnrollments"], 20500, "{out}");
    assert_eq!(out["enrollmentGroups"], 3, "{out}");
    assert!(out["recordsPerSecond"].as_f64().unwrap() > 0.0, "{out}");
    // The records exist, with generated keys, and the groups declare their devices' IDs.
    let last = json(&usher(
        dir,
        &["enrollment", "show", "s-20500", "--show-keys", "--json"],
    ));
    let key = last["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    assert_eq!(key.len(), 44, "32 random bytes in base64");
    assert!(
        !usher(dir, &["enrollment", "show", "s-20501"])
            .status
            .success()
    );
    let group = json(&usher(
        dir,
        &["enrollment-group", "show", "s-group-2", "--json"],
    ));
    assert_eq!(group["usherRegistrationIdPattern"], "s-g2-.*", "{group}");
    // A second seed with the same prefix refuses the existing records and says so.
    let again = usher(dir, &["bench", "seed", "--groups", "1", "--prefix", "s"]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("s-group-1") && stderr.contains("409202"),
        "{stderr}"
    );
    // Bad input is refused before anything is sent.
    let bad = usher(
        dir,
        &[
            "bench",
            "seed",
            "--individual",
            "1",
            "--prefix",
            "no spaces",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --prefix"));
}

/// A certificate (PEM) and its key (PEM), written to `dir` as `{name}.pem` and `{name}.key`.
struct TestCert {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

impl TestCert {
    fn new(dir: &Path, name: &str, ca: bool, by: Option<&Self>) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = match by {
            None => params.self_signed(&key).unwrap(),
            Some(i) => params
                .signed_by(&key, &rcgen::Issuer::from_params(&i.params, &i.key))
                .unwrap(),
        };
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        Self {
            pem: cert.pem(),
            params,
            key,
        }
    }
}

#[test]
fn x509_enrollments_and_groups_from_the_cli_and_provision_with_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir, &[]);
    let instance = json(&usher(dir, &["instance", "show", "--json"]));
    let scope = instance["idScope"].as_str().unwrap().to_owned();
    let ca = instance["caCertificate"].as_str().unwrap().to_owned();
    let https = listener(dir, "httpsAddr");
    let mqtt = listener(dir, "mqttAddr");
    let amqp = listener(dir, "amqpAddr");

    // An individual enrollment with a self-signed device certificate.
    TestCert::new(dir, "cli-x509-dev", false, None);
    let created = json(&usher(
        dir,
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "cli-x509-dev",
            "--attestation-type",
            "x509",
            "--certificate-path",
            "cli-x509-dev.pem",
        ],
    ));
    let info = &created["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    assert_eq!(info["subjectName"], "CN=cli-x509-dev", "{created}");
    let shown = ok(&usher(dir, &["enrollment", "show", "cli-x509-dev"]));
    assert!(shown.contains("CN=cli-x509-dev"), "{shown}");
    assert!(
        shown.contains(info["sha1Thumbprint"].as_str().unwrap()),
        "{shown}"
    );
    for (transport, host) in [("https", &https), ("mqtt", &mqtt), ("amqp", &amqp)] {
        let out = ok(&provision_with_cert(
            dir,
            &scope,
            "cli-x509-dev.pem",
            "cli-x509-dev.key",
            host,
            &ca,
            Some(transport),
        ));
        assert!(
            out.contains("with an X.509 certificate")
                && out.contains("deviceId cli-x509-dev, status assigned"),
            "{transport}: {out}"
        );
    }

    // A group signed by an intermediate; the device presents its certificate and the intermediate.
    let root = TestCert::new(dir, "cli-root", true, None);
    let intermediate = TestCert::new(dir, "cli-intermediate", true, Some(&root));
    let device = TestCert::new(dir, "cli-grp-dev", false, Some(&intermediate));
    std::fs::write(
        dir.join("chain.pem"),
        format!("{}{}", device.pem, intermediate.pem),
    )
    .unwrap();
    ok(&usher(
        dir,
        &[
            "enrollment-group",
            "create",
            "--group-id",
            "cli-x509-group",
            "--attestation-type",
            "x509",
            "--certificate-path",
            "cli-root.pem",
        ],
    ));
    let out = ok(&provision_with_cert(
        dir,
        &scope,
        "chain.pem",
        "cli-grp-dev.key",
        &https,
        &ca,
        None,
    ));
    assert!(
        out.contains("deviceId cli-grp-dev, status assigned"),
        "{out}"
    );
    // Without the intermediate the chain does not reach the group's root.
    let out = provision_with_cert(
        dir,
        &scope,
        "cli-grp-dev.pem",
        "cli-grp-dev.key",
        &https,
        &ca,
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401002"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad input is explained before anything is sent.
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    let out = usher(
        dir,
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "junk",
            "--attestation-type",
            "x509",
            "--certificate-path",
            "junk.pem",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn provision_with_a_csr_writes_the_issued_certificate_which_then_provisions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCert::new(dir, "issuing-ca", true, None);
    let _server = start(
        dir,
        &[
            "--issuing-ca-cert",
            "issuing-ca.pem",
            "--issuing-ca-key",
            "issuing-ca.key",
        ],
    );
    let instance = json(&usher(dir, &["instance", "show", "--json"]));
    // The configured CA issues; none is made.
    assert!(instance["issuingCaCertificate"].is_null(), "{instance}");
    let scope = instance["idScope"].as_str().unwrap().to_owned();
    let server_ca = instance["caCertificate"].as_str().unwrap().to_owned();
    let https = listener(dir, "httpsAddr");
    let created = json(&usher(
        dir,
        &["enrollment", "create", "--enrollment-id", "csr-cli-dev"],
    ));
    let key = created["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    // The device's key pair and its request, as `openssl req -new` would make them.
    let device_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "csr-cli-dev");
    let request = params.serialize_request(&device_key).unwrap();
    std::fs::write(dir.join("device.csr"), request.pem().unwrap()).unwrap();
    std::fs::write(dir.join("device.key"), device_key.serialize_pem()).unwrap();
    let out = ok(&usher(
        dir,
        &[
            "provision",
            "--id-scope",
            &scope,
            "--registration-id",
            "csr-cli-dev",
            "--key",
            &key,
            "--host",
            &https,
            "--ca",
            &server_ca,
            "--csr",
            "device.csr",
            "--issued-cert-out",
            "issued.pem",
        ],
    ));
    assert!(
        out.contains("Issued certificate chain (2 certificates) written to issued.pem"),
        "{out}"
    );
    let issued = std::fs::read_to_string(dir.join("issued.pem")).unwrap();
    assert!(issued.ends_with(&ca.pem.replace("\r\n", "\n")), "{issued}");

    // The issued certificate attests the device in a group trusting the issuing CA.
    ok(&usher(
        dir,
        &[
            "enrollment-group",
            "create",
            "--group-id",
            "issued",
            "--attestation-type",
            "x509",
            "--certificate-path",
            "issuing-ca.pem",
        ],
    ));
    ok(&usher(dir, &["enrollment", "delete", "csr-cli-dev"]));
    let out = ok(&provision_with_cert(
        dir,
        &scope,
        "issued.pem",
        "device.key",
        &https,
        &server_ca,
        None,
    ));
    assert!(
        out.contains("deviceId csr-cli-dev, status assigned"),
        "{out}"
    );
}

/// Without `--issuing-ca-cert`, the issuing CA made on first run (owner-only files in the PKI
/// directory, its path in the banner and `usher instance show`) signs a device's CSR.
#[test]
fn an_issuing_ca_made_on_first_run_signs_a_csr_on_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let banner = std::fs::File::create(dir.join("banner.txt")).unwrap();
    let _server = start_capturing(dir, &[], banner, Stdio::null());
    let instance = json(&usher(dir, &["instance", "show", "--json"]));
    let issuing = instance["issuingCaCertificate"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        issuing.ends_with("usher-data/pki/issuing-ca.pem"),
        "{instance}"
    );
    let printed = std::fs::read_to_string(dir.join("banner.txt")).unwrap();
    assert!(
        printed.contains(&format!("Issuing CA certificate:     {issuing}")),
        "{printed}"
    );
    let shown = ok(&usher(dir, &["instance", "show"]));
    assert!(
        shown.contains(&format!("Issuing CA certificate:     {issuing}")),
        "{shown}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key = dir.join("usher-data/pki/issuing-ca.key");
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let scope = instance["idScope"].as_str().unwrap().to_owned();
    let server_ca = instance["caCertificate"].as_str().unwrap().to_owned();
    let https = listener(dir, "httpsAddr");
    let created = json(&usher(
        dir,
        &["enrollment", "create", "--enrollment-id", "first-run-dev"],
    ));
    let key = created["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let device_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "first-run-dev");
    let request = params.serialize_request(&device_key).unwrap();
    std::fs::write(dir.join("device.csr"), request.pem().unwrap()).unwrap();
    let out = ok(&usher(
        dir,
        &[
            "provision",
            "--id-scope",
            &scope,
            "--registration-id",
            "first-run-dev",
            "--key",
            &key,
            "--host",
            &https,
            "--ca",
            &server_ca,
            "--csr",
            "device.csr",
            "--issued-cert-out",
            "issued.pem",
        ],
    ));
    assert!(
        out.contains("Issued certificate chain (2 certificates) written to issued.pem"),
        "{out}"
    );
    let issued = std::fs::read_to_string(dir.join("issued.pem")).unwrap();
    let ca = std::fs::read_to_string(&issuing).unwrap();
    assert!(issued.ends_with(&ca.replace("\r\n", "\n")), "{issued}");
}

/// Runs openssl in `dir`, as the README's X.509 walk-through does.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for this test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_verified_ca_certificate_from_the_cli_with_an_openssl_proof_admits_its_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir, &[]);
    let instance = json(&usher(dir, &["instance", "show", "--json"]));
    let scope = instance["idScope"].as_str().unwrap().to_owned();
    let ca = instance["caCertificate"].as_str().unwrap().to_owned();
    let https = listener(dir, "httpsAddr");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    // Device certificates must be X.509 v3: openssl 3.0's `x509 -req` makes a v1 certificate
    // unless given extensions (rustls-webpki, like most TLS stacks, refuses v1 end entities).
    std::fs::write(
        dir.join("device.ext"),
        "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n",
    )
    .unwrap();
    let mut root = vec!["req", "-x509", "-new"];
    root.extend(ec);
    root.extend([
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "30",
        "-subj",
        "/CN=Line Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &root);

    // Upload: unverified, with a code and the openssl lines that answer it.
    let added = ok(&usher(
        dir,
        &[
            "certificate",
            "add",
            "--name",
            "line-root",
            "--path",
            "root.pem",
        ],
    ));
    assert!(added.contains("Verified:    false"), "{added}");
    let code = added
        .lines()
        .find_map(|l| l.strip_prefix("Verification code: "))
        .unwrap()
        .to_owned();
    assert!(added.contains(&format!("-subj /CN={code}")), "{added}");
    let listed = ok(&usher(dir, &["certificate", "list"]));
    assert!(
        listed.contains("line-root") && listed.contains("CN=Line Root"),
        "{listed}"
    );

    // A group may name it at once; its devices wait for the proof.
    ok(&usher(
        dir,
        &[
            "enrollment-group",
            "create",
            "--group-id",
            "line-ca",
            "--attestation-type",
            "x509",
            "--ca-name",
            "line-root",
        ],
    ));
    let shown = ok(&usher(dir, &["enrollment-group", "show", "line-ca"]));
    assert!(
        shown.contains("primaryCaCertificate") && shown.contains("line-root"),
        "{shown}"
    );
    let mut device = vec!["req", "-new"];
    device.extend(ec);
    device.extend([
        "-keyout",
        "line-dev-1.key",
        "-out",
        "line-dev-1.csr",
        "-subj",
        "/CN=line-dev-1",
    ]);
    openssl(dir, &device);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "line-dev-1.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "device.ext",
            "-out",
            "line-dev-1.pem",
        ],
    );
    let provision = |dir: &Path| {
        provision_with_cert(
            dir,
            &scope,
            "line-dev-1.pem",
            "line-dev-1.key",
            &https,
            &ca,
            None,
        )
    };
    let refused = provision(dir);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401002"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The proof, made exactly as the printed lines say (openssl 3's `x509 -req`).
    let mut proof = vec!["req", "-new"];
    proof.extend(ec);
    let subject = format!("/CN={code}");
    proof.extend([
        "-keyout",
        "proof.key",
        "-subj",
        &subject,
        "-out",
        "proof.csr",
    ]);
    openssl(dir, &proof);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "proof.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-days",
            "1",
            "-out",
            "proof.pem",
        ],
    );
    let verified = ok(&usher(
        dir,
        &[
            "certificate",
            "verify",
            "--name",
            "line-root",
            "--path",
            "proof.pem",
        ],
    ));
    assert!(verified.contains("Verified:    true"), "{verified}");
    let out = ok(&provision(dir));
    assert!(
        out.contains("deviceId line-dev-1, status assigned"),
        "{out}"
    );

    // A used code does not verify again; an unknown CA name is refused before anything is stored.
    let again = usher(
        dir,
        &[
            "certificate",
            "verify",
            "--name",
            "line-root",
            "--path",
            "proof.pem",
        ],
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no verification code"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let unknown = usher(
        dir,
        &[
            "enrollment-group",
            "create",
            "--group-id",
            "nowhere",
            "--attestation-type",
            "x509",
            "--ca-name",
            "no-such-ca",
        ],
    );
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("names no CA certificate"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // A v1 self-signed device certificate (what `openssl x509 -req -signkey` makes without
    // extensions, and what the Node SDK's own e2e test enrolls) provisions an individual
    // enrollment on every transport.
    let mut v1 = vec!["req", "-new"];
    v1.extend(ec);
    v1.extend([
        "-keyout",
        "old-dev.key",
        "-out",
        "old-dev.csr",
        "-subj",
        "/CN=old-dev",
    ]);
    openssl(dir, &v1);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "old-dev.csr",
            "-signkey",
            "old-dev.key",
            "-days",
            "30",
            "-out",
            "old-dev.pem",
        ],
    );
    let text = Command::new("openssl")
        .args(["x509", "-in", "old-dev.pem", "-noout", "-text"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
        "not a v1 certificate"
    );
    ok(&usher(
        dir,
        &[
            "enrollment",
            "create",
            "--enrollment-id",
            "old-dev",
            "--attestation-type",
            "x509",
            "--certificate-path",
            "old-dev.pem",
        ],
    ));
    let mqtt = listener(dir, "mqttAddr");
    let amqp = listener(dir, "amqpAddr");
    for (transport, host) in [("https", &https), ("mqtt", &mqtt), ("amqp", &amqp)] {
        let out = ok(&provision_with_cert(
            dir,
            &scope,
            "old-dev.pem",
            "old-dev.key",
            host,
            &ca,
            Some(transport),
        ));
        assert!(
            out.contains("deviceId old-dev, status assigned"),
            "{transport}: {out}"
        );
    }

    ok(&usher(dir, &["certificate", "delete", "line-root"]));
    let shown = usher(dir, &["certificate", "show", "line-root"]);
    assert!(!shown.status.success());
    assert!(
        String::from_utf8_lossy(&shown.stderr).contains("404230"),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
}

/// `usher provision` with a certificate: the device's chain and key, at `host` trusting `ca`,
/// over `transport` (HTTPS when none is given).
fn provision_with_cert(
    dir: &Path,
    scope: &str,
    cert: &str,
    key: &str,
    host: &str,
    ca: &str,
    transport: Option<&str>,
) -> Output {
    let mut args = vec![
        "provision",
        "--id-scope",
        scope,
        "--cert",
        cert,
        "--cert-key",
        key,
        "--host",
        host,
        "--ca",
        ca,
    ];
    if let Some(transport) = transport {
        args.extend(["--transport", transport]);
    }
    usher(dir, &args)
}
