//! `usher serve` configured by a file, stopped by SIGTERM and by Ctrl-C (SIGINT) as an operator or
//! systemd would: readiness fails at once, a request in flight completes, and the process exits
//! within its shutdown timeout even when a request never completes.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rustls_pki_types::pem::PemObject as _;

const BOUND: Duration = Duration::from_secs(2);

struct Server {
    child: Child,
    log: PathBuf,
    https: String,
    metrics: String,
    data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `usher serve` with every setting from a configuration file, loopback ports and a 2 s
/// shutdown timeout.
fn start(dir: &Path) -> Server {
    let data = dir.join("data");
    let config = dir.join("usher.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\nhttps-addr = \"127.0.0.1:0\"\nmqtt-addr = \"127.0.0.1:0\"\n\
             amqp-addr = \"127.0.0.1:0\"\nmetrics-addr = \"127.0.0.1:0\"\nshutdown-timeout = \"{}s\"\n",
            data.display(),
            BOUND.as_secs()
        ),
    )
    .unwrap();
    let log = dir.join("serve.log");
    let runtime = data.join("runtime.json");
    let _ = std::fs::remove_file(&runtime);
    let child = Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_clear()
        .env("NO_COLOR", "1")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        log,
        https: String::new(),
        metrics: String::new(),
        data,
    };
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(&runtime)
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
        {
            server.https = value["httpsAddr"].as_str().unwrap().to_owned();
            server.metrics = value["metricsAddr"].as_str().unwrap().to_owned();
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not start");
}

impl Server {
    /// A plain-HTTP GET on the metrics listener: the whole response.
    fn metrics_get(&self, path: &str) -> String {
        let mut tcp = TcpStream::connect(&self.metrics).unwrap();
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).unwrap();
        response
    }

    /// Opens a TLS connection and sends a register request all but the last byte of its body,
    /// so it stays in flight; returns the connection.
    fn request_in_flight(&self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter(self.data.join("pki/ca.pem")).unwrap()
        {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(&self.https).unwrap());
        write!(
            tls,
            "PUT /0ne00000000/registrations/dev-1/register?api-version=2021-06-01 HTTP/1.1\r\n\
             Host: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{"
        )
        .unwrap();
        tls.flush().unwrap();
        // Let the server read the head and start waiting for the body.
        std::thread::sleep(Duration::from_millis(300));
        tls
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit.
    fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

#[test]
fn sigterm_fails_readiness_and_lets_the_request_in_flight_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start(tmp.path());
    let ready = server.metrics_get("/readyz");
    assert!(ready.starts_with("HTTP/1.1 200 "), "{ready}");
    let mut tls = server.request_in_flight();

    let signalled = Instant::now();
    server.signal("TERM");
    let mut not_ready = None;
    for _ in 0..50 {
        let response = server.metrics_get("/readyz");
        if response.starts_with("HTTP/1.1 503 ") {
            not_ready = Some(response);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let not_ready = not_ready.expect("/readyz answers 503 after SIGTERM");
    assert!(not_ready.contains("\"shutting down\""), "{not_ready}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the request in flight holds the drain open"
    );

    // The request completes: the device API answers it (401: no token).
    tls.write_all(b"}").unwrap();
    tls.flush().unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{response}"
    );
    let status = server
        .exited_within(BOUND)
        .expect("exits once the request is answered");
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(signalled.elapsed() < BOUND + Duration::from_secs(1));
    let log = server.log();
    assert!(
        log.contains("shutting down") && log.contains("SIGTERM"),
        "{log}"
    );
}

#[test]
fn ctrl_c_closes_a_request_that_never_completes_when_the_timeout_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start(tmp.path());
    let mut tls = server.request_in_flight();

    let signalled = Instant::now();
    server.signal("INT");
    let status = server
        .exited_within(BOUND + Duration::from_secs(3))
        .expect("exits within its shutdown timeout");
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(took >= BOUND - Duration::from_millis(200), "{took:?}");
    assert!(took < BOUND + Duration::from_millis(1500), "{took:?}");
    // The connection was closed, not answered.
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let log = server.log();
    assert!(log.contains("SIGINT"), "{log}");
    assert!(
        log.contains("still open after the shutdown timeout"),
        "{log}"
    );
}
