//! Several `usher serve` nodes on one PostgreSQL database serving one instance, run as an operator
//! would: the real binary, two nodes on different loopback addresses, a fresh database per test on
//! the test server (`USHER_TEST_POSTGRES`, else 127.0.0.1:5432; `./scripts/test` starts one).
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use usher_server::test_postgres::TestDatabase;

struct Node {
    child: Child,
    data: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Starts `usher serve` on `ip` (ports chosen by the system) with its own data directory under
    /// `dir`, the shared KEK and the database.
    fn start(dir: &Path, name: &str, ip: &str, db: &TestDatabase) -> Self {
        Self::start_at(dir, name, ip, db.url())
    }

    /// Starts a node on the database at `url`.
    fn start_at(dir: &Path, name: &str, ip: &str, url: &str) -> Self {
        let data = dir.join(name);
        let any = format!("{ip}:0");
        let child = Command::new(env!("CARGO_BIN_EXE_usher"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--store", url, "--kek-file"])
            .arg(dir.join("kek"))
            .args([
                "--https-addr",
                &any,
                "--mqtt-addr",
                &any,
                "--amqp-addr",
                &any,
            ])
            .args([
                "--metrics-addr",
                &any,
                "--hostname",
                "localhost",
                "--hostname",
                ip,
            ])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, data }
    }

    /// Waits until the node listens.
    fn wait(&self) {
        // Up to 30 s for the node to create its PKI and start listening.
        for _ in 0..600 {
            if self.data.join("runtime.json").exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the node at {} did not start", self.data.display());
    }

    fn addr(&self, field: &str) -> SocketAddr {
        let runtime: Value =
            serde_json::from_str(&std::fs::read_to_string(self.data.join("runtime.json")).unwrap())
                .unwrap();
        runtime[field].as_str().unwrap().parse().unwrap()
    }

    /// Runs the CLI beside this node's data directory.
    fn usher(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_usher"))
            .args(args)
            .env("USHER_DATA_DIR", &self.data)
            .env("USHER_KEK_FILE", self.data.parent().unwrap().join("kek"))
            .output()
            .unwrap()
    }
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

/// A database, a KEK file and two nodes (127.0.0.1 and 127.0.0.2) started at the same moment.
fn cluster(dir: &Path) -> (TestDatabase, Node, Node) {
    let db = runtime().block_on(TestDatabase::create());
    std::fs::write(
        dir.join("kek"),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .unwrap();
    let a = Node::start(dir, "a", "127.0.0.1", &db);
    let b = Node::start(dir, "b", "127.0.0.2", &db);
    a.wait();
    b.wait();
    (db, a, b)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTPS client trusting the instance's CA that reaches `localhost` at `addr`.
fn https(ca: &Path, addr: SocketAddr) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A device's register request or operation-status request through one node.
struct Device {
    scope: String,
    id: String,
    token: String,
}

impl Device {
    fn new(scope: &str, id: &str, group_key: &str) -> Self {
        let credential = usher_device::Credential::from_group_key(id, group_key).unwrap();
        Self {
            scope: scope.into(),
            id: id.into(),
            token: credential.token(scope, 4_000_000_000).unwrap(),
        }
    }

    async fn register(&self, http: &reqwest::Client, port: u16) -> (u16, Value) {
        let url = format!(
            "https://localhost:{port}/{}/registrations/{}/register?api-version=2021-06-01",
            self.scope, self.id
        );
        let response = http
            .put(url)
            .header("Authorization", &self.token)
            .json(&serde_json::json!({"registrationId": self.id}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A register request through one node: its status and operation ID, or `None` if the node
    /// could not be reached or did not answer.
    async fn try_register(&self, http: &reqwest::Client, port: u16) -> Option<(u16, String)> {
        let url = format!(
            "https://localhost:{port}/{}/registrations/{}/register?api-version=2021-06-01",
            self.scope, self.id
        );
        let response = http
            .put(url)
            .header("Authorization", &self.token)
            .json(&serde_json::json!({"registrationId": self.id}))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.ok()?;
        Some((status, answer["operationId"].as_str()?.to_owned()))
    }

    async fn operation(&self, http: &reqwest::Client, port: u16, op: &str) -> (u16, Value) {
        let url = format!(
            "https://localhost:{port}/{}/registrations/{}/operations/{op}?api-version=2021-06-01",
            self.scope, self.id
        );
        let response = http
            .get(url)
            .header("Authorization", &self.token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

#[test]
fn two_nodes_on_one_database_serve_one_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, a, b) = cluster(tmp.path());

    // Both started at once; one instance came of it, with one CA.
    let (show_a, show_b) = (
        json(&a.usher(&["instance", "show", "--json", "--show-keys"])),
        json(&b.usher(&["instance", "show", "--json", "--show-keys"])),
    );
    assert_eq!(show_a["idScope"], show_b["idScope"]);
    assert_eq!(
        show_a["serviceConnectionString"],
        show_b["serviceConnectionString"]
    );
    assert_eq!(show_a["hubs"], show_b["hubs"]);
    let ca = |n: &Node| std::fs::read_to_string(n.data.join("pki/ca.pem")).unwrap();
    assert_eq!(ca(&a), ca(&b), "one CA for every node");
    let issuing = |n: &Node| {
        (
            std::fs::read_to_string(n.data.join("pki/issuing-ca.pem")).unwrap(),
            std::fs::read_to_string(n.data.join("pki/issuing-ca.key")).unwrap(),
        )
    };
    assert_eq!(issuing(&a), issuing(&b), "one issuing CA for every node");
    let scope = show_a["idScope"].as_str().unwrap().to_owned();
    let ca_path = a.data.join("pki/ca.pem");

    // A group made through node A; devices provision through node B (whose group cache learns of
    // the new group from the database) and through node A, with `usher provision`.
    let group = json(&a.usher(&[
        "enrollment-group",
        "create",
        "--group-id",
        "floor-1",
        "--attestation-type",
        "symmetrickey",
    ]));
    let group_key = group["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    for (node, ip, device) in [(&b, "127.0.0.2", "sensor-b"), (&a, "127.0.0.1", "sensor-a")] {
        let host = format!("{ip}:{}", node.addr("httpsAddr").port());
        let out = ok(&node.usher(&[
            "provision",
            "--id-scope",
            &scope,
            "--registration-id",
            device,
            "--group-key",
            &group_key,
            "--host",
            &host,
            "--ca",
            ca_path.to_str().unwrap(),
        ]));
        assert!(out.contains(&format!("deviceId {device}")), "{out}");
    }

    // Registered through node A, polled through node B.
    let rt = runtime();
    let (port_a, port_b) = (a.addr("httpsAddr"), b.addr("httpsAddr"));
    let (http_a, http_b) = (https(&ca_path, port_a), https(&ca_path, port_b));
    rt.block_on(async {
        let device = Device::new(&scope, "sensor-x", &group_key);
        let (status, answer) = device.register(&http_a, port_a.port()).await;
        assert_eq!(status, 202, "{answer}");
        let op = answer["operationId"].as_str().unwrap();
        let (status, answer) = device.operation(&http_b, port_b.port(), op).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "assigned", "{answer}");
        assert_eq!(answer["registrationState"]["deviceId"], "sensor-x");
    });

    // Readiness of both, for a load balancer.
    for node in [&a, &b] {
        let metrics = node.addr("metricsAddr");
        let ready = rt.block_on(async {
            reqwest::get(format!("http://{metrics}/readyz"))
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!(ready, 200);
    }

    // The hub's identities, read through either node.
    for node in [&a, &b] {
        let devices = json(&node.usher(&["hub", "devices", "usher-hub", "--json"]));
        let mut ids: Vec<&str> = devices
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["deviceId"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["sensor-a", "sensor-b", "sensor-x"]);
    }
}

#[test]
fn the_same_device_registering_through_two_nodes_at_once_ends_with_one_record_and_one_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, a, b) = cluster(tmp.path());
    let show = json(&a.usher(&["instance", "show", "--json"]));
    let scope = show["idScope"].as_str().unwrap().to_owned();
    let ca_path = a.data.join("pki/ca.pem");
    let group = json(&a.usher(&[
        "enrollment-group",
        "create",
        "--group-id",
        "race",
        "--attestation-type",
        "symmetrickey",
    ]));
    let group_key = group["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let (port_a, port_b) = (a.addr("httpsAddr"), b.addr("httpsAddr"));
    let (http_a, http_b) = (https(&ca_path, port_a), https(&ca_path, port_b));
    const DEVICES: usize = 20;
    let rt = runtime();
    let outcomes = rt.block_on(async {
        let mut outcomes = Vec::new();
        for i in 0..DEVICES {
            let device = Device::new(&scope, &format!("racer-{i:02}"), &group_key);
            // Both requests in flight at once, one through each node.
            let (through_a, through_b) = tokio::join!(
                device.register(&http_a, port_a.port()),
                device.register(&http_b, port_b.port())
            );
            assert_eq!(through_a.0, 202, "{}", through_a.1);
            assert_eq!(through_b.0, 202, "{}", through_b.1);
            let ops = [
                through_a.1["operationId"].as_str().unwrap().to_owned(),
                through_b.1["operationId"].as_str().unwrap().to_owned(),
            ];
            // Each asked through the other node than the one that took it.
            let polls = [
                device.operation(&http_b, port_b.port(), &ops[0]).await,
                device.operation(&http_a, port_a.port(), &ops[1]).await,
            ];
            outcomes.push((device.id.clone(), polls));
        }
        outcomes
    });
    let devices = json(&b.usher(&["hub", "devices", "usher-hub", "--json"]));
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), DEVICES, "one identity per device");
    for (id, polls) in &outcomes {
        let record = json(&a.usher(&["registration", "show", id, "--json"]));
        assert_eq!(record["registrationId"], id.as_str());
        assert_eq!(record["status"], "assigned", "{record}");
        assert_eq!(record["deviceId"], id.as_str());
        // The two registrations were decided one after the other: the record names the operation
        // written last, which answers assigned (through either node); the other is superseded.
        let statuses: Vec<u16> = polls.iter().map(|(status, _)| *status).collect();
        assert!(
            statuses == [200, 404] || statuses == [404, 200],
            "{id}: {polls:?}"
        );
        let (_, latest) = polls.iter().find(|(status, _)| *status == 200).unwrap();
        assert_eq!(latest["status"], "assigned", "{latest}");
        assert_eq!(
            latest["registrationState"]["etag"], record["etag"],
            "{latest} {record}"
        );
        let identity: Vec<&Value> = devices
            .iter()
            .filter(|d| d["deviceId"] == id.as_str())
            .collect();
        assert_eq!(identity.len(), 1, "{id}");
        assert_eq!(identity[0]["status"], "enabled");
    }
}

/// The `Verified: …` line of `usher migrate`.
fn verified(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("Verified: both export the same "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned()
}

#[test]
fn migrate_moves_an_embedded_instance_to_postgres_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let embedded = dir.join("embedded");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_usher"))
            .args(args)
            .env("USHER_DATA_DIR", &embedded)
            .output()
            .unwrap()
    };
    // An embedded instance with a group and a provisioned device.
    let (scope, group_key) = {
        let server = Node {
            child: Command::new(env!("CARGO_BIN_EXE_usher"))
                .args(["serve", "--data-dir"])
                .arg(&embedded)
                .args(["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
                .args(["--amqp-addr", "127.0.0.1:0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            data: embedded.clone(),
        };
        server.wait();
        let scope = json(&run(&["instance", "show", "--json"]))["idScope"]
            .as_str()
            .unwrap()
            .to_owned();
        let group = json(&run(&[
            "enrollment-group",
            "create",
            "--group-id",
            "floor-1",
            "--attestation-type",
            "symmetrickey",
        ]));
        let group_key = group["attestation"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned();
        let host = format!("localhost:{}", server.addr("httpsAddr").port());
        ok(&run(&[
            "provision",
            "--id-scope",
            &scope,
            "--registration-id",
            "before-1",
            "--group-key",
            &group_key,
            "--host",
            &host,
            "--ca",
            embedded.join("pki/ca.pem").to_str().unwrap(),
        ]));
        (scope, group_key)
    };
    let kek = embedded.join("kek");
    let db = runtime().block_on(TestDatabase::create());
    let there = ok(&run(&[
        "migrate",
        "--from",
        embedded.to_str().unwrap(),
        "--to",
        db.url(),
    ]));
    assert!(
        there.contains(
            "Copied 0 enrollments, 1 enrollment groups, 1 registration records, 1 hub devices"
        ),
        "{there}"
    );
    assert!(there.contains("with the development CA"), "{there}");
    // Into a store that holds an instance: refused.
    let again = run(&[
        "migrate",
        "--from",
        embedded.to_str().unwrap(),
        "--to",
        db.url(),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("holds an instance already"),
        "{again:?}"
    );
    // And back, with the KEK the nodes are given.
    let back_dir = dir.join("back");
    let back = ok(&run(&[
        "migrate",
        "--from",
        db.url(),
        "--to",
        back_dir.to_str().unwrap(),
        "--kek-file",
        kek.to_str().unwrap(),
    ]));
    assert_eq!(
        verified(&there),
        verified(&back),
        "the same instance both ways"
    );
    assert_eq!(
        std::fs::read(back_dir.join("pki/ca.pem")).unwrap(),
        std::fs::read(embedded.join("pki/ca.pem")).unwrap()
    );

    // A node on the database serves the instance: same scope, same CA, the old device's record.
    std::fs::copy(&kek, dir.join("kek")).unwrap();
    let node = Node::start(dir, "node", "127.0.0.1", &db);
    node.wait();
    let show = json(&node.usher(&["instance", "show", "--json"]));
    assert_eq!(show["idScope"], scope.as_str());
    assert_eq!(
        std::fs::read(node.data.join("pki/ca.pem")).unwrap(),
        std::fs::read(embedded.join("pki/ca.pem")).unwrap(),
        "devices keep trusting the CA they trust"
    );
    let record = json(&node.usher(&["registration", "show", "before-1", "--json"]));
    assert_eq!(record["status"], "assigned");
    let host = format!("localhost:{}", node.addr("httpsAddr").port());
    let out = ok(&node.usher(&[
        "provision",
        "--id-scope",
        &scope,
        "--registration-id",
        "after-1",
        "--group-key",
        &group_key,
        "--host",
        &host,
        "--ca",
        embedded.join("pki/ca.pem").to_str().unwrap(),
    ]));
    assert!(out.contains("deviceId after-1"), "{out}");
}

/// A TCP proxy in front of the database that can be cut (every connection dropped, new ones closed
/// at once) and restored: the database going away and coming back, without touching the server
/// other tests use.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
}

impl Proxy {
    fn start(rt: &tokio::runtime::Runtime, target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let (up_task, cut_task) = (up.clone(), cut.clone());
        rt.spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up_task.load(Ordering::Acquire) {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                let cut = cut_task.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Self { port, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::Release);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// `/readyz` of a node's metrics listener.
async fn ready(node: &Node) -> u16 {
    let url = format!("http://{}/readyz", node.addr("metricsAddr"));
    match reqwest::get(url).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Waits (up to 60 s) until `check` holds.
async fn eventually<F: Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}");
}

#[test]
fn when_the_database_goes_away_nodes_are_not_ready_refuse_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let mut url = reqwest::Url::parse(db.url()).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(&rt, target);
    url.set_port(Some(proxy.port)).unwrap();
    std::fs::write(
        dir.join("kek"),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .unwrap();
    let proxied = ProxiedDb(url.to_string());
    let a = Node::start_at(dir, "a", "127.0.0.1", &proxied.0);
    let b = Node::start_at(dir, "b", "127.0.0.2", &proxied.0);
    a.wait();
    b.wait();
    let scope = json(&a.usher(&["instance", "show", "--json"]))["idScope"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = json(&a.usher(&[
        "enrollment-group",
        "create",
        "--group-id",
        "g",
        "--attestation-type",
        "symmetrickey",
    ]));
    let group_key = group["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_path = a.data.join("pki/ca.pem");
    let (port_a, port_b) = (a.addr("httpsAddr"), b.addr("httpsAddr"));
    let (http_a, http_b) = (https(&ca_path, port_a), https(&ca_path, port_b));
    rt.block_on(async {
        let first = Device::new(&scope, "before", &group_key);
        let (status, answer) = first.register(&http_a, port_a.port()).await;
        assert_eq!(status, 202, "{answer}");
        let first_op = answer["operationId"].as_str().unwrap().to_owned();

        proxy.cut();
        eventually("both nodes report not ready", || async {
            ready(&a).await == 503 && ready(&b).await == 503
        })
        .await;
        // A registration is refused, not acknowledged and lost.
        let during = Device::new(&scope, "during", &group_key);
        let (status, answer) = during.register(&http_b, port_b.port()).await;
        assert_eq!(
            (status, &answer["errorCode"]),
            (500, &500_001.into()),
            "{answer}"
        );

        proxy.restore();
        eventually("both nodes are ready again", || async {
            ready(&a).await == 200 && ready(&b).await == 200
        })
        .await;
        let (status, answer) = first.operation(&http_b, port_b.port(), &first_op).await;
        assert_eq!(
            (status, &answer["status"]),
            (200, &"assigned".into()),
            "{answer}"
        );
        let (status, answer) = during.register(&http_b, port_b.port()).await;
        assert_eq!(status, 202, "{answer}");
        let op = answer["operationId"].as_str().unwrap();
        let (status, answer) = during.operation(&http_a, port_a.port(), op).await;
        assert_eq!(
            (status, &answer["status"]),
            (200, &"assigned".into()),
            "{answer}"
        );
    });
    drop((a, b));
    drop(db);
}

/// A database URL that is not a [`TestDatabase`] of its own (a proxy in front of one).
struct ProxiedDb(String);

#[test]
fn a_node_killed_mid_load_loses_no_acknowledged_registration() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, mut a, b) = cluster(tmp.path());
    let scope = json(&a.usher(&["instance", "show", "--json"]))["idScope"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = json(&a.usher(&[
        "enrollment-group",
        "create",
        "--group-id",
        "load",
        "--attestation-type",
        "symmetrickey",
    ]));
    let group_key = group["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_path = a.data.join("pki/ca.pem");
    let (port_a, port_b) = (a.addr("httpsAddr"), b.addr("httpsAddr"));
    let (http_a, http_b) = (https(&ca_path, port_a), https(&ca_path, port_b));
    const BATCHES: usize = 8;
    const PER_BATCH: usize = 16;
    let rt = runtime();
    // Batches of registrations, half through each node; node A is killed (SIGKILL) while the
    // fifth batch is in flight. Whatever a node acknowledged (202 with an operation ID) must be
    // there afterwards; what failed with node A is sent again through node B, as a load balancer
    // would.
    let (ha, hb) = (&http_a, &http_b);
    let acknowledged = rt.block_on(async {
        let mut acknowledged = Vec::new();
        let mut killed = false;
        let mut resent = 0;
        for batch in 0..BATCHES {
            let devices: Vec<Device> = (0..PER_BATCH)
                .map(|i| Device::new(&scope, &format!("load-{batch}-{i:02}"), &group_key))
                .collect();
            let requests = futures_util::future::join_all(devices.iter().enumerate().map(
                |(i, d)| async move {
                    let through_a = i % 2 == 0 && !killed;
                    let (http, port) = if through_a {
                        (ha, port_a.port())
                    } else {
                        (hb, port_b.port())
                    };
                    let answer = d.try_register(http, port).await;
                    (d, answer)
                },
            ));
            let results = if batch == 4 {
                let (results, ()) = tokio::join!(requests, async {
                    tokio::task::yield_now().await;
                    a.child.kill().unwrap();
                });
                killed = true;
                results
            } else {
                requests.await
            };
            for (d, answer) in results {
                match answer {
                    Some((202, op)) => acknowledged.push((d.id.clone(), op)),
                    _ => {
                        assert!(killed, "{}: refused with both nodes up", d.id);
                        resent += 1;
                        let (status, answer) = d.register(&http_b, port_b.port()).await;
                        assert_eq!(status, 202, "{answer}");
                        let op = answer["operationId"].as_str().unwrap().to_owned();
                        acknowledged.push((d.id.clone(), op));
                    }
                }
            }
        }
        eprintln!(
            "{} registrations acknowledged; {resent} sent again through node B after node A was killed",
            acknowledged.len()
        );
        acknowledged
    });
    let _ = a.child.wait();
    assert_eq!(acknowledged.len(), BATCHES * PER_BATCH);
    rt.block_on(async {
        for (id, op) in &acknowledged {
            let device = Device::new(&scope, id, &group_key);
            let (status, answer) = device.operation(&http_b, port_b.port(), op).await;
            assert_eq!(status, 200, "{id}: {answer}");
            assert_eq!(answer["status"], "assigned", "{id}: {answer}");
        }
    });
    let devices = json(&b.usher(&["hub", "devices", "usher-hub", "--json"]));
    assert_eq!(devices.as_array().unwrap().len(), BATCHES * PER_BATCH);
}

#[test]
fn etag_guarded_management_writes_through_two_nodes_at_once_let_exactly_one_win() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, a, b) = cluster(tmp.path());
    let created = json(&a.usher(&["enrollment", "create", "--enrollment-id", "contested"]));
    let mut etag = created["etag"].as_str().unwrap().to_owned();
    let spawn = |node: &Node, status: &str, etag: &str| {
        Command::new(env!("CARGO_BIN_EXE_usher"))
            .args([
                "enrollment",
                "update",
                "contested",
                "--provisioning-status",
                status,
            ])
            .args(["--etag", etag])
            .env("USHER_DATA_DIR", &node.data)
            .env("USHER_KEK_FILE", node.data.parent().unwrap().join("kek"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for round in 0..5 {
        // Both updates name the etag just read; both are in flight at once, one per node.
        let (to_a, to_b) = (spawn(&a, "disabled", &etag), spawn(&b, "enabled", &etag));
        let (out_a, out_b) = (
            to_a.wait_with_output().unwrap(),
            to_b.wait_with_output().unwrap(),
        );
        let won: Vec<&Output> = [&out_a, &out_b]
            .into_iter()
            .filter(|o| o.status.success())
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {out_a:?} {out_b:?}");
        let lost = if out_a.status.success() {
            &out_b
        } else {
            &out_a
        };
        let refusal = String::from_utf8_lossy(&lost.stderr);
        assert!(refusal.contains("412"), "round {round}: {refusal}");
        let now = json(&b.usher(&["enrollment", "show", "contested", "--json"]));
        let winner = if out_a.status.success() {
            "disabled"
        } else {
            "enabled"
        };
        assert_eq!(now["provisioningStatus"], winner, "round {round}");
        assert_ne!(now["etag"].as_str().unwrap(), etag);
        etag = now["etag"].as_str().unwrap().to_owned();
    }
}
