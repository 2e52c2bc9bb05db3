use super::*;

fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .map(|l| l[series.len() + 1..].trim())
}

#[test]
fn series_known_at_start_exist_at_zero() {
    let text = Metrics::new().encode();
    for protocol in ["https", "mqtt", "mqtt-ws", "amqp", "amqp-ws"] {
        for status in ["success", "failure"] {
            let series = format!(
                "usher_attestation_attempts_total{{status=\"{status}\",protocol=\"{protocol}\"}}"
            );
            assert_eq!(line(&text, &series), Some("0"), "{series} in\n{text}");
        }
    }
    assert_eq!(
        line(&text, "usher_open_connections{listener=\"https\"}"),
        Some("0")
    );
    assert_eq!(
        line(&text, "usher_mqtt_sessions{protocol=\"mqtt-ws\"}"),
        Some("0")
    );
    assert_eq!(
        line(&text, "usher_store_commit_batch_size_count"),
        Some("0")
    );
    assert!(text.contains("# TYPE usher_store_commit_duration_seconds histogram"));
    assert!(text.contains("usher_build_info{version=\""));
}

#[test]
fn recording_shows_in_the_scrape() {
    let metrics = Metrics::new();
    metrics.attestation(Protocol::Mqtt, true);
    metrics.attestation(Protocol::Mqtt, true);
    metrics.attestation(Protocol::Https, false);
    metrics.registration(Some("hub-a.example"), RegistrationOutcome::Assigned);
    metrics.registration(None, RegistrationOutcome::Failed);
    metrics.request(
        Protocol::MqttWs,
        Operation::Register,
        Duration::from_millis(3),
    );
    metrics.throttled(ThrottledBy::Address);
    metrics.store_commit(Duration::from_micros(300), 5);
    let guard = metrics.connection(Listener::Mqtt);
    let session = metrics.mqtt_session(Protocol::Mqtt);

    let text = metrics.encode();
    let value = |series: &str| line(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(
        value("usher_attestation_attempts_total{status=\"success\",protocol=\"mqtt\"}"),
        "2"
    );
    assert_eq!(
        value("usher_attestation_attempts_total{status=\"failure\",protocol=\"https\"}"),
        "1"
    );
    assert_eq!(
        value("usher_registration_attempts_total{hub=\"hub-a.example\",status=\"assigned\"}"),
        "1"
    );
    assert_eq!(
        value("usher_registration_attempts_total{hub=\"\",status=\"failed\"}"),
        "1"
    );
    assert_eq!(
        value("usher_device_assignments_total{hub=\"hub-a.example\"}"),
        "1"
    );
    assert_eq!(
        value("usher_request_duration_seconds_count{protocol=\"mqtt-ws\",operation=\"register\"}"),
        "1"
    );
    // 3 ms falls in the 4 ms bucket, not the 2 ms one.
    assert_eq!(
        value(
            "usher_request_duration_seconds_bucket{protocol=\"mqtt-ws\",operation=\"register\",le=\"0.002\"}"
        ),
        "0"
    );
    assert_eq!(
        value(
            "usher_request_duration_seconds_bucket{protocol=\"mqtt-ws\",operation=\"register\",le=\"0.004\"}"
        ),
        "1"
    );
    assert_eq!(
        value("usher_throttled_requests_total{reason=\"address\"}"),
        "1"
    );
    assert_eq!(
        value("usher_throttled_requests_total{reason=\"registration_id\"}"),
        "0"
    );
    assert_eq!(value("usher_store_commit_batch_size_sum"), "5.0");
    assert_eq!(value("usher_store_commit_duration_seconds_count"), "1");
    assert_eq!(value("usher_open_connections{listener=\"mqtt\"}"), "1");
    assert_eq!(value("usher_mqtt_sessions{protocol=\"mqtt\"}"), "1");

    drop((guard, session));
    let text = metrics.encode();
    assert_eq!(
        line(&text, "usher_open_connections{listener=\"mqtt\"}"),
        Some("0")
    );
    assert_eq!(
        line(&text, "usher_mqtt_sessions{protocol=\"mqtt\"}"),
        Some("0")
    );
}

#[test]
fn two_handles_count_apart() {
    let a = Metrics::new();
    let b = Metrics::new();
    a.attestation(Protocol::Https, true);
    let series = "usher_attestation_attempts_total{status=\"success\",protocol=\"https\"}";
    assert_eq!(line(&a.encode(), series), Some("1"));
    assert_eq!(line(&b.encode(), series), Some("0"));
}
