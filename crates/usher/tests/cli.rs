//! The `usher` binary's key and token commands, run as a user would.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use usher_proto::SymmetricKey;
use usher_proto::sas::{Now, SasToken, verify_device_token};

const DOCS_GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

fn usher(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim_end()
        .to_owned()
}

fn fails_with(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn key_derive_prints_the_docs_example() {
    let out = usher(&[
        "key",
        "derive",
        "--group-key",
        DOCS_GROUP_KEY,
        "--registration-id",
        "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
    ]);
    assert_eq!(stdout(&out), "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
}

#[test]
fn key_derive_refuses_bad_input() {
    fails_with(
        &usher(&[
            "key",
            "derive",
            "--group-key",
            "***",
            "--registration-id",
            "dev",
        ]),
        "invalid --group-key",
    );
    fails_with(
        &usher(&[
            "key",
            "derive",
            "--group-key",
            DOCS_GROUP_KEY,
            "--registration-id",
            "dev/1",
        ]),
        "invalid --registration-id",
    );
    fails_with(
        &usher(&[
            "key",
            "derive",
            "--group-key",
            DOCS_GROUP_KEY,
            "--registration-id",
            "dev.",
        ]),
        "must end with",
    );
}

#[test]
fn key_generate_prints_random_keys_of_the_asked_length() {
    let a = stdout(&usher(&["key", "generate"]));
    let b = stdout(&usher(&["key", "generate"]));
    assert_ne!(a, b);
    assert_eq!(SymmetricKey::from_base64(&a).unwrap().as_bytes().len(), 32);
    let long = stdout(&usher(&["key", "generate", "--bytes", "64"]));
    assert_eq!(
        SymmetricKey::from_base64(&long).unwrap().as_bytes().len(),
        64
    );
    fails_with(
        &usher(&["key", "generate", "--bytes", "8"]),
        "16 to 64 bytes",
    );
}

#[test]
fn sas_token_device_verifies_until_its_ttl() {
    let key = stdout(&usher(&["key", "generate"]));
    let before = now();
    let token = stdout(&usher(&[
        "sas-token",
        "device",
        "--id-scope",
        "0ne00ABCDEF",
        "--registration-id",
        "Dev-1",
        "--key",
        &key,
        "--ttl",
        "15m",
    ]));
    let parsed = SasToken::parse(&token).unwrap();
    assert!(parsed.expiry() >= before + 900 && parsed.expiry() <= now() + 900);
    let key = SymmetricKey::from_base64(&key).unwrap();
    let at = |t| Now {
        unix_secs: t,
        skew_secs: 0,
    };
    assert_eq!(
        verify_device_token(&token, "0ne00ABCDEF", "dev-1", &[&key], at(now())),
        Ok(0)
    );
    assert!(
        verify_device_token(&token, "0ne00ABCDEF", "dev-1", &[&key], at(parsed.expiry())).is_err()
    );
}

#[test]
fn sas_token_device_refuses_bad_input() {
    let key = SymmetricKey::generate(&[3; 32]).unwrap().to_base64();
    let base = [
        "sas-token",
        "device",
        "--id-scope",
        "0ne00ABCDEF",
        "--registration-id",
    ];
    let run = |id: &str, key: &str, ttl: &str| {
        let mut args = base.to_vec();
        args.extend([id, "--key", key, "--ttl", ttl]);
        usher(&args)
    };
    fails_with(&run("dev", &key, "1 hour"), "invalid --ttl");
    fails_with(&run("dev", &key, "0s"), "invalid --ttl");
    fails_with(&run("dev", "abc", "1h"), "invalid --key");
    fails_with(&run("bad id", &key, "1h"), "invalid --registration-id");
}

#[test]
fn sas_token_service_verifies() {
    let key = stdout(&usher(&["key", "generate"]));
    let token = stdout(&usher(&[
        "sas-token",
        "service",
        "--host",
        "usher.local",
        "--policy",
        "provisioningserviceowner",
        "--key",
        &key,
    ]));
    let parsed = SasToken::parse(&token).unwrap();
    let now = Now {
        unix_secs: now(),
        skew_secs: 0,
    };
    assert_eq!(
        parsed.check_service_claims("usher.local", now),
        Ok("provisioningserviceowner")
    );
    assert_eq!(
        parsed.check_signature(&[&SymmetricKey::from_base64(&key).unwrap()]),
        Ok(0)
    );
    fails_with(
        &usher(&[
            "sas-token",
            "service",
            "--host",
            "h",
            "--policy",
            "p",
            "--key",
            &key,
            "--ttl",
            "2y",
        ]),
        "invalid --ttl",
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["key", "--help"],
        vec!["key", "derive", "--help"],
        vec!["key", "generate", "--help"],
        vec!["sas-token", "device", "--help"],
        vec!["sas-token", "service", "--help"],
    ] {
        let out = stdout(&usher(&args));
        assert!(out.contains("Usage:"), "{args:?}");
    }
}
