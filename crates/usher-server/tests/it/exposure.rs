//! Safe to expose: what an unauthenticated client can do to the listeners (floods of idle and slow
//! connections, huge headers, dribbled MQTT, HTTP/2 without ALPN), each bounded in time and count,
//! each ending with a legitimate device registering.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use usher_device::Credential;
use usher_proto::model::RegistrationStatus;
use usher_proto::mqtt::{Connect, Packet, encode};
use usher_server::Limits;
use usher_server::server::{ConnectionLimits, HttpLimits};

use crate::support::{TestServer, tls_connect};

/// Tight limits so the tests run in seconds.
fn tight() -> Limits {
    Limits {
        connections: ConnectionLimits {
            handshake_timeout: Duration::from_secs(1),
            max_connections: 200,
            max_connections_per_address: 20,
        },
        http: HttpLimits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
        },
        mqtt: usher_server::mqtt::Limits {
            connect_timeout: Duration::from_secs(1),
            packet_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        amqp: usher_server::amqp::Limits {
            open_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    }
}

/// A TCP connection from `source` (any 127.0.0.0/8 address is this host's loopback).
async fn tcp_from(source: Ipv4Addr, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await
        .unwrap()
}

/// Reads until the peer closes; how long that took (fails after `within`).
async fn closed_within<R: tokio::io::AsyncRead + Unpin>(io: &mut R, within: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + within, io.read(&mut chunk)).await {
            Err(_) => panic!("still open after {within:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// A legitimate device, from an address of its own (127.0.0.2), registers over HTTPS, and one
/// registers over MQTT through the device library.
async fn a_device_still_registers(s: &TestServer, id: &str) {
    a_device_registers_from_another_address(s, id).await;
    let (key, _) = s.enroll(&format!("{id}-mqtt"), json!({})).await;
    let cred = Credential::individual(&format!("{id}-mqtt"), &key).unwrap();
    let result = s
        .client_over(usher_device::Transport::Mqtt)
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
    assert_eq!(result.status, RegistrationStatus::Assigned);
}

/// A legitimate device, from an address of its own (127.0.0.2), registers over HTTPS.
async fn a_device_registers_from_another_address(s: &TestServer, id: &str) {
    let (key, _) = s.enroll(id, json!({})).await;
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&s.ca_pem).unwrap()])
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .resolve(
            "localhost",
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), s.addr.port()),
        )
        .build()
        .unwrap();
    let response = http
        .put(s.url(&format!("/{}/registrations/{id}/register", s.scope)))
        .header("Authorization", s.token(id, &key))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{id}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "assigned");
}

#[tokio::test]
async fn an_idle_flood_from_one_address_cannot_take_every_slot() {
    let mut limits = tight();
    // Long enough that the held connections are still held while the test counts the others.
    limits.connections.handshake_timeout = Duration::from_secs(3);
    let s = TestServer::start_with_limits(limits).await;
    // 60 connections from 127.0.0.1 to each listener: 20 are held (the per-address cap), the other
    // 40 closed at once.
    for port in [s.addr.port(), s.mqtt_addr.port()] {
        let mut flood = Vec::new();
        for _ in 0..60 {
            flood.push(tcp_from(Ipv4Addr::LOCALHOST, port).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut closed_at_once = 0;
        for conn in &mut flood {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(50), conn.read(&mut byte)).await
            {
                closed_at_once += 1;
            }
        }
        assert_eq!(closed_at_once, 40, "port {port}");
        // The held ones never finish a handshake: closed after the handshake timeout.
        closed_within(&mut flood[0], Duration::from_secs(5)).await;
    }
    // Idle TLS connections that finished the handshake but send no request: closed after the
    // header timeout, which also bounds a kept-alive connection's idle time.
    let mut idle = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
    let waited = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(waited < Duration::from_secs(3), "idle TLS: {waited:?}");
    a_device_still_registers(&s, "after-idle-flood").await;
}

#[tokio::test]
async fn a_kept_alive_https_connection_is_closed_after_the_idle_timeout() {
    let s = TestServer::start_with_limits(tight()).await;
    let mut tls = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
    tls.write_all(b"GET /healthz-not-here HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tls.read(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 "));
    let waited = closed_within(&mut tls, Duration::from_secs(5)).await;
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test]
async fn slow_and_huge_headers_are_cut_off() {
    let s = TestServer::start_with_limits(tight()).await;
    // Slow: a header line, then one byte every 200 ms, forever.
    let mut slow = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
    slow.write_all(b"PUT /x/registrations/y/register HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let dribble = async {
        loop {
            if slow.write_all(b"X").await.is_err() {
                return tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let started = tokio::time::Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(5), dribble)
        .await
        .expect("a dribbling client is cut off");
    assert!(
        cut - started < Duration::from_secs(3),
        "{:?}",
        cut - started
    );

    // Huge: headers that never end, sent as fast as possible; refused once over the buffer limit,
    // long before the ~390 KB hyper would buffer by default.
    let mut huge = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
    huge.write_all(b"PUT /x HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let mut sent = 0;
    while sent < 400 * 1024 {
        if huge.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        sent += line.len();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), huge.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 431"),
        "refused or closed: {text}"
    );

    // A body that stalls after its headers: 408 once the body timeout passes.
    let mut stalled = tls_connect(&s, s.addr.port(), &[b"http/1.1"]).await;
    let path = format!(
        "/{}/registrations/stall/register?api-version=2021-06-01",
        s.scope
    );
    stalled
        .write_all(
            format!("PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{{")
                .as_bytes(),
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("408000"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    a_device_still_registers(&s, "after-slow-headers").await;
}

#[tokio::test]
async fn dribbled_mqtt_connect_and_packets_meet_wall_clock_deadlines() {
    let s = TestServer::start_with_limits(tight()).await;
    let (key, _) = s.enroll("dribbler", json!({})).await;
    let mut connect = Vec::new();
    encode(
        &Packet::Connect(Box::new(Connect {
            protocol_name: "MQTT".into(),
            protocol_level: 4,
            clean_session: true,
            keep_alive: 60,
            client_id: "dribbler".into(),
            will: None,
            username: Some(format!(
                "{}/registrations/dribbler/api-version=2019-03-31",
                s.scope
            )),
            password: Some(s.token("dribbler", &key).into_bytes()),
        })),
        &mut connect,
    );
    // A CONNECT sent one byte every 150 ms never completes within the 1 s connect deadline, though
    // bytes keep coming.
    let mut tls = tls_connect(&s, s.mqtt_addr.port(), &[]).await;
    let started = tokio::time::Instant::now();
    for byte in &connect {
        if tls.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let waited = started.elapsed();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "no CONNACK for a dribbled CONNECT");
    assert!(
        waited < Duration::from_secs(3),
        "closed at the deadline: {waited:?}"
    );

    // After a good CONNECT, a PUBLISH dribbled a byte at a time is cut off by the packet deadline,
    // not kept alive by its bytes for the 90 s that keep-alive 60 would allow.
    let mut tls = tls_connect(&s, s.mqtt_addr.port(), &[]).await;
    tls.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let publish = [0x30u8, 0x40, 0x00, 0x04, b'$', b'd', b'p', b's'];
    let started = tokio::time::Instant::now();
    for byte in publish.iter().cycle().take(40) {
        if tls.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let waited = closed_within(&mut tls, Duration::from_secs(5)).await + started.elapsed();
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    a_device_still_registers(&s, "after-dribble").await;
}

#[tokio::test]
async fn http2_is_refused_without_alpn() {
    let s = TestServer::start_with_limits(tight()).await;
    // The client offers no ALPN and sends the HTTP/2 preface and an empty SETTINGS frame anyway.
    let mut tls = tls_connect(&s, s.addr.port(), &[]).await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    // An HTTP/2 server answers with its own SETTINGS frame (type 4); Usher does not speak HTTP/2.
    let h2_settings = answer.len() >= 9 && answer[3] == 0x04;
    assert!(!h2_settings, "served HTTP/2: {answer:?}");
    // With ALPN, only http/1.1 is offered.
    let tls = tls_connect(&s, s.addr.port(), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    a_device_still_registers(&s, "after-h2").await;
}

#[tokio::test]
async fn failed_attestations_are_throttled_per_address_and_per_registration_id() {
    let s = TestServer::start_with(usher_server::Settings {
        throttle: usher_server::throttle::ThrottleSettings {
            failures_per_address: 60,
            failures_per_registration: 30,
        },
        ..crate::support::fast()
    })
    .await;
    let (key, _) = s.enroll("victim", json!({})).await;
    let wrong = "V3Jvbmcga2V5IGZvciB0aGUgdGhyb3R0bGUgdGVzdCE=";
    let register = |id: &str| format!("/{}/registrations/{id}/register", s.scope);
    // Thirty bad tokens for one registration ID are refused as usual...
    for _ in 0..30 {
        let (status, _, body) = s
            .device_request(
                reqwest::Method::PUT,
                &register("victim"),
                Some(&s.token("victim", wrong)),
                Some(b"{}".to_vec()),
            )
            .await;
        assert_eq!(status, 401, "{body}");
    }
    // ...then that ID is answered 429 with Retry-After, before any key is checked.
    let (status, headers, body) = s
        .device_request(
            reqwest::Method::PUT,
            &register("victim"),
            Some(&s.token("victim", &key)),
            Some(b"{}".to_vec()),
        )
        .await;
    crate::support::assert_error(status, &headers, &body, 429, 429_001);
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("registration ID")
    );
    // Over MQTT too, with retry-after on the response topic.
    let cred = Credential::individual("victim", &key).unwrap();
    let err = s
        .client_over(usher_device::Transport::Mqtt)
        .provision(&cred, None, |_| {})
        .await;
    assert!(format!("{err:?}").contains("429"), "{err:?}");
    // The budget refills: after Retry-After the right key works again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let result = s
        .device_client()
        .provision(&cred, None, |_| {})
        .await
        .unwrap();
    assert_eq!(result.status, RegistrationStatus::Assigned);

    // Bad tokens for many registration IDs from one address: the address's budget (60, of which
    // 30 are spent above) runs out; another address is not affected.
    let mut last = 0;
    for n in 0..40 {
        let id = format!("nobody-{n}");
        let (status, _, _) = s
            .device_request(
                reqwest::Method::PUT,
                &register(&id),
                Some(&s.token(&id, wrong)),
                Some(b"{}".to_vec()),
            )
            .await;
        last = status.as_u16();
    }
    assert_eq!(last, 429, "the address's budget is spent");
    a_device_registers_from_another_address(&s, "other-address").await;
}
