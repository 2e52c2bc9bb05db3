//! `usher bench` against a real `usher serve`: small runs over each transport and mode, the report
//! and what the run leaves behind.
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
        .env_remove("USHER_CONNECTION_STRING")
        .current_dir(dir)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `usher serve` on loopback ports; devices poll once, after 1 s, before they are assigned.
fn start(dir: &Path) -> Server {
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
                "--retry-after",
                "1",
            ])
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let runtime = dir.join("usher-data/runtime.json");
    for _ in 0..600 {
        if runtime.exists() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not start");
}

#[test]
fn bench_registers_over_each_transport_and_removes_its_group() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = start(dir);
    let pid = server.child.id().to_string();

    for (transport, mode) in [
        ("https", "fresh"),
        ("https", "keepalive"),
        ("mqtt", "fresh"),
        ("amqp", "fresh"),
    ] {
        let report = json(&usher(
            dir,
            &[
                "bench",
                "--transport",
                transport,
                "--mode",
                mode,
                "--devices",
                "20",
                "--concurrency",
                "4",
                "--server-pid",
                &pid,
                "--group-pattern",
                "--json",
            ],
        ));
        let what = format!("{transport} {mode}: {report:#}");
        assert_eq!(report["transport"], transport, "{what}");
        assert_eq!(report["mode"], mode, "{what}");
        assert_eq!(report["registrations"], 20, "{what}");
        assert!(
            report["registrationsPerSecond"].as_f64().unwrap() > 0.0,
            "{what}"
        );
        assert_eq!(report["errors"], serde_json::json!({}), "{what}");
        assert!(report["ceilingPerSecond"].as_f64().unwrap() > 0.0, "{what}");
        assert_eq!(report["ceilingOperations"], 20, "{what}");
        assert_eq!(report["ceilingErrors"], serde_json::json!({}), "{what}");
        assert!(report["ratio"].as_f64().unwrap() > 0.0, "{what}");
        for q in ["p50", "p90", "p99", "p999"] {
            // Every registration polled once, after the 1 s the server asked for.
            assert!(report["latencyMs"][q].as_f64().unwrap() >= 1000.0, "{what}");
        }
        assert!(report["serverPeakRssMb"].as_f64().unwrap() > 0.0, "{what}");
        assert!(report["serverCpuUsPerRegistration"].is_number(), "{what}");
        assert_eq!(report["groupRemoved"], true, "{what}");
        assert_eq!(report["registrationsRemoved"], Value::Null, "{what}");

        // The devices' registration records stay; the group is gone.
        let run = report["runId"].as_str().unwrap();
        let group = report["group"].as_str().unwrap();
        assert_eq!(group, format!("bench-{run}"));
        let record = json(&usher(
            dir,
            &["registration", "show", &format!("bench-{run}-19"), "--json"],
        ));
        assert_eq!(record["status"], "assigned", "{what}: {record:#}");
        let list = json(&usher(dir, &["enrollment-group", "list", "--json"]));
        assert_eq!(list, serde_json::json!([]), "{what}");
    }

    // MQTT keepalive: one device per connection, registering again and again.
    let report = json(&usher(
        dir,
        &[
            "bench",
            "--transport",
            "mqtt",
            "--mode",
            "keepalive",
            "--devices",
            "8",
            "--concurrency",
            "2",
            "--no-ceiling",
            "--remove-registrations",
            "--json",
        ],
    ));
    assert_eq!(report["registrations"], 8, "{report:#}");
    // Two devices, one per connection, each registered four times: two records, removed.
    assert_eq!(report["registrationsRemoved"], 2, "{report:#}");
    assert_eq!(report["ceilingPerSecond"], Value::Null, "{report:#}");
    assert_eq!(report["serverPeakRssMb"], Value::Null, "{report:#}");
    let run = report["runId"].as_str().unwrap();
    let out = usher(
        dir,
        &["registration", "show", &format!("bench-{run}-k1"), "--json"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_with_a_wrong_key_fails_before_registering_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _server = start(dir);
    let runtime: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("usher-data/runtime.json")).unwrap(),
    )
    .unwrap();
    let port = runtime["httpsAddr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let login = format!(
        "HostName=localhost:{port};SharedAccessKeyName=provisioningserviceowner;\
         SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    );
    let ca = dir.join("usher-data/pki/ca.pem");
    let out = usher(
        dir,
        &[
            "bench",
            "--login",
            &login,
            "--ca",
            ca.to_str().unwrap(),
            "--id-scope",
            "0ne00000000",
            "--device-host",
            &format!("localhost:{port}"),
            "--devices",
            "5",
        ],
    );
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create the run's enrollment group") && err.contains("401"),
        "{err}"
    );
}
