//! The systemd unit in `packaging/`: systemd's own checker accepts it without a warning, its
//! hardening scores "OK" or better, and its `ExecStart` runs with the example configuration file.
//! Needs `systemd-analyze` (Debian: `apt-get install systemd`); it does not need systemd running.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALLED_BINARY: &str = "/usr/local/bin/usher";
const INSTALLED_CONFIG: &str = "/etc/usher/usher.toml";

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

/// The unit's `[Service]` settings, in order (a key may repeat).
fn service_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    &settings.iter().find(|(k, _)| k == key).unwrap().1
}

/// The unit with the binary this test run built in place of the installed one (`verify` checks
/// that the command exists).
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(packaging().join("usher.service")).unwrap();
    assert!(unit.contains(&format!("ExecStart={INSTALLED_BINARY} ")));
    let path = dir.join("usher.service");
    std::fs::write(
        &path,
        unit.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_usher")),
    )
    .unwrap();
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}); install it with `apt-get install systemd`")
        })
}

#[test]
fn systemd_accepts_the_unit_without_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_for_test(tmp.path());
    let out = systemd_analyze(&["verify"], &unit);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys and bad values are only warnings to `verify`: refuse them here.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_units_hardening_rates_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_for_test(tmp.path());
    // Exposure runs from 0 (locked down) to 10 (unprotected), below 2 is "OK"; the threshold is
    // in tenths. The unit rates 1.4 with systemd 252.
    let out = systemd_analyze(&["security", "--offline=true", "--threshold=20"], &unit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Overall exposure level"), "{stdout}");

    let text = std::fs::read_to_string(&unit).unwrap();
    let settings = service_settings(&text);
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "usher"),
        ("StateDirectoryMode", "0700"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(setting(&settings, key), value, "{key}");
    }
}

/// `ExecStart` names real flags, the example file is valid, its data directory is the one
/// systemd makes, and systemd waits longer than the server drains.
#[test]
fn exec_start_runs_with_the_example_configuration() {
    let unit = std::fs::read_to_string(packaging().join("usher.service")).unwrap();
    let settings = service_settings(&unit);
    let exec: Vec<&str> = setting(&settings, "ExecStart").split_whitespace().collect();
    assert_eq!(exec[0], INSTALLED_BINARY);
    let example = packaging().join("usher.toml");
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| {
            if *a == INSTALLED_CONFIG {
                example.display().to_string()
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    assert!(args.contains(&example.display().to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(&args)
        .arg("--print-config")
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = stdout.parse().unwrap();
    assert_eq!(
        printed["data-dir"].as_str().unwrap(),
        format!("/var/lib/{}", setting(&settings, "StateDirectory"))
    );
    assert_eq!(printed["https-addr"].as_str().unwrap(), "0.0.0.0:443");
    assert_eq!(printed["mqtt-addr"].as_str().unwrap(), "0.0.0.0:8883");
    assert_eq!(printed["amqp-addr"].as_str().unwrap(), "0.0.0.0:5671");
    let seconds = |text: &str| usher_proto::ttl::parse_duration(text).unwrap();
    let drain = seconds(printed["shutdown-timeout"].as_str().unwrap());
    let stop = seconds(setting(&settings, "TimeoutStopSec"));
    assert!(
        stop > drain + 5,
        "TimeoutStopSec {stop} s, shutdown-timeout {drain} s"
    );
}
