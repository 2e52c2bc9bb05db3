//! `usher serve`'s configuration file, run as an operator would: precedence (defaults < file <
//! environment < flags), refusals that name the key and the file, and the README's table of
//! settings checked against what the binary accepts.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

/// A value for every setting, none of them the default. A new `serve` flag needs a line here (and
/// a README row): the test below fails until both exist.
const SAMPLES: &[(&str, &str)] = &[
    ("data-dir", r#""/var/lib/usher""#),
    ("store", r#""postgres://usher@db.example:5432/usher""#),
    ("https-addr", r#""127.0.0.1:8443""#),
    ("mqtt-addr", r#""127.0.0.1:18883""#),
    ("amqp-addr", r#""127.0.0.1:15671""#),
    ("metrics-addr", r#""127.0.0.1:9090""#),
    ("hostname", r#"["dps.example.com", "10.0.0.5"]"#),
    ("tls-cert", r#""/etc/usher/cert.pem""#),
    ("tls-key", r#""/etc/usher/key.pem""#),
    ("clock-skew", r#""90s""#),
    ("shutdown-timeout", r#""30s""#),
    ("register-response", r#""assigned""#),
    ("retry-after", "5"),
    ("no-console", "true"),
    ("console-session-ttl", "\"30m\""),
    ("max-connections", "5000"),
    ("max-connections-per-address", "100"),
    ("handshake-timeout", r#""5s""#),
    ("header-timeout", r#""15s""#),
    ("body-timeout", r#""1m""#),
    ("max-header-bytes", "32768"),
    ("mqtt-connect-timeout", r#""20s""#),
    ("mqtt-max-keep-alive", r#""10m""#),
    ("mqtt-max-sessions", "2000"),
    ("amqp-open-timeout", r#""20s""#),
    ("amqp-idle-timeout", r#""2m""#),
    ("amqp-max-connections", "3000"),
    ("auth-failures-per-address", "60"),
    ("auth-failures-per-registration", "10"),
    ("audit-retention", r#""30d""#),
    ("testing-polls-assigning", "3"),
    ("testing-retry-after", "4"),
    ("testing-fault", "503"),
    ("testing-fault-first", "2"),
    ("testing-fault-fraction", "0.25"),
    ("testing-fault-retry-after", "5"),
    ("testing-quotas", "true"),
    ("testing-registrations-per-minute", "500"),
    ("webhook-timeout", r#""10s""#),
    ("webhook-ca", r#""/etc/usher/webhook-ca.pem""#),
    ("issuing-ca-cert", r#""/etc/usher/issuing-ca.pem""#),
    ("issuing-ca-key", r#""/etc/usher/issuing-ca.key""#),
    ("kek-file", r#""/etc/usher/kek""#),
];

/// Runs `usher serve … --print-config` with exactly the environment given.
fn print_config(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_usher"))
        .arg("serve")
        .args(args)
        .arg("--print-config")
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The printed settings: key → (value as text, or a list of texts; where it came from). Unset
/// settings are absent.
fn settings(out: &Output) -> BTreeMap<String, (Vec<String>, String)> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    // The output is itself a valid configuration file.
    let table: toml::Table = text.parse().unwrap();
    let mut result = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, _) = line.split_once(" = ").unwrap();
        let (_, source) = line.rsplit_once("  # ").unwrap();
        result.insert(key.to_owned(), (texts(&table[key]), source.to_owned()));
    }
    result
}

fn texts(value: &toml::Value) -> Vec<String> {
    match value {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(n) => vec![n.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Array(items) => items.iter().flat_map(texts).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn sample(key: &str) -> Vec<String> {
    let (_, text) = SAMPLES.iter().find(|(k, _)| *k == key).unwrap();
    texts(&format!("v = {text}").parse::<toml::Table>().unwrap()["v"])
}

fn fails_with(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}

#[test]
fn file_then_environment_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("usher.toml"),
        "# comments are fine\nhttps-addr = \"127.0.0.1:1001\"\nmqtt-addr = \"127.0.0.1:1002\"\n\
         retry-after = 5\nclock-skew = \"90s\"\nhostname = [\"a.example\", \"b.example\"]\n",
    )
    .unwrap();
    let out = print_config(
        dir,
        &["--config", "usher.toml", "--retry-after", "7"],
        &[
            ("USHER_HTTPS_ADDR", "127.0.0.1:2001"),
            ("USHER_RETRY_AFTER", "6"),
        ],
    );
    let s = settings(&out);
    let file = "configuration file usher.toml";
    assert_eq!(s["data-dir"], (vec!["usher-data".into()], "default".into()));
    assert_eq!(
        s["https-addr"],
        (
            vec!["127.0.0.1:2001".into()],
            "environment (USHER_HTTPS_ADDR)".into()
        )
    );
    assert_eq!(s["mqtt-addr"], (vec!["127.0.0.1:1002".into()], file.into()));
    assert_eq!(s["retry-after"], (vec!["7".into()], "command line".into()));
    assert_eq!(s["clock-skew"], (vec!["90s".into()], file.into()));
    assert_eq!(
        s["hostname"],
        (vec!["a.example".into(), "b.example".into()], file.into())
    );

    // USHER_CONFIG names the file as --config does; a list from the environment is comma-separated.
    let out = print_config(
        dir,
        &[],
        &[
            ("USHER_CONFIG", "usher.toml"),
            ("USHER_HOSTNAME", "c.example,d.example"),
        ],
    );
    let s = settings(&out);
    assert_eq!(s["https-addr"].0, vec!["127.0.0.1:1001".to_owned()]);
    assert_eq!(
        s["hostname"].0,
        vec!["c.example".to_owned(), "d.example".to_owned()]
    );

    // The printed settings read back as a file give the same settings.
    std::fs::write(dir.join("printed.toml"), &out.stdout).unwrap();
    let again = settings(&print_config(dir, &["--config", "printed.toml"], &[]));
    let values = |s: &BTreeMap<String, (Vec<String>, String)>| {
        s.iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(values(&again), values(&s));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let case = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap();
        print_config(dir, &["--config", name], &[])
    };
    fails_with(
        &case(
            "unknown.toml",
            "https-addr = \"127.0.0.1:1\"\nlisten-port = 443\n",
        ),
        &[
            "unknown.toml",
            "unknown key `listen-port`",
            "https-addr, mqtt-addr",
        ],
    );
    fails_with(
        &case("snake.toml", "retry_after = 3\n"),
        &[
            "snake.toml",
            "unknown key `retry_after`",
            "did you mean `retry-after`?",
        ],
    );
    fails_with(
        &case("section.toml", "[serve]\nhttps-addr = \"127.0.0.1:1\"\n"),
        &["section.toml", "unknown key `serve`"],
    );
    fails_with(
        &case("range.toml", "retry-after = 400\n"),
        &["range.toml", "key `retry-after`", "400 is not in 1..=300"],
    );
    fails_with(
        &case("enum.toml", "register-response = \"sometimes\"\n"),
        &[
            "enum.toml",
            "key `register-response`",
            "assigned, assigning",
        ],
    );
    fails_with(
        &case("addr.toml", "metrics-addr = \"localhost\"\n"),
        &["addr.toml", "key `metrics-addr`", "invalid socket address"],
    );
    fails_with(
        &case("duration.toml", "shutdown-timeout = \"soon\"\n"),
        &["duration.toml", "key `shutdown-timeout`", "not a duration"],
    );
    fails_with(
        &case("list.toml", "https-addr = [\"127.0.0.1:1\"]\n"),
        &["list.toml", "key `https-addr`", "not an array"],
    );
    fails_with(
        &case("syntax.toml", "https-addr = \n"),
        &["syntax.toml", "not valid TOML", "line 1"],
    );
    fails_with(
        &print_config(dir, &["--config", "missing.toml"], &[]),
        &["cannot read the configuration file missing.toml"],
    );
    // A key is a setting, not the file's own flag.
    fails_with(
        &case("nested.toml", "config = \"other.toml\"\n"),
        &["unknown key `config`"],
    );
}

/// The README's table of settings is the truth: every key it lists is accepted with the flag and
/// the environment variable it names, its default is the one printed, and no setting is missing
/// from it.
#[test]
fn every_documented_key_is_parsed() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let header = "| key | flag | environment | default | what it does |";
    let table: Vec<Vec<String>> = readme
        .lines()
        .skip_while(|l| *l != header)
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect();
    assert!(!table.is_empty(), "no settings table in the README");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let defaults = settings(&print_config(dir, &[], &[]));
    let mut file = String::new();
    for row in &table {
        let [key, flag, env, default, ..] = row.as_slice() else {
            panic!("{row:?}")
        };
        assert_eq!(flag, &format!("--{key}"), "{row:?}");
        assert_eq!(
            env,
            &format!("USHER_{}", key.to_uppercase().replace('-', "_")),
            "{row:?}"
        );
        match defaults.get(key.as_str()) {
            Some((value, source)) if !value.is_empty() => {
                assert_eq!(source, "default");
                assert_eq!(&value.join(","), default, "the README's default of {key}");
            }
            _ => assert_eq!(default, "none", "{key} has no default"),
        }
        let (_, text) = SAMPLES
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no sample value for {key}"));
        file.push_str(&format!("{key} = {text}\n"));
    }
    std::fs::write(dir.join("all.toml"), file).unwrap();
    let printed = settings(&print_config(dir, &["--config", "all.toml"], &[]));
    let mut documented: Vec<&str> = table.iter().map(|r| r[0].as_str()).collect();
    documented.sort_unstable();
    assert_eq!(
        printed.keys().map(String::as_str).collect::<Vec<_>>(),
        documented,
        "the README lists every setting, each once"
    );
    assert_eq!(SAMPLES.len(), documented.len());
    for key in documented {
        assert_eq!(printed[key].0, sample(key), "{key}");
        assert_eq!(printed[key].1, "configuration file all.toml", "{key}");
        // …and the same value through the environment.
        let env = format!("USHER_{}", key.to_uppercase().replace('-', "_"));
        let value = sample(key).join(",");
        let through_env = settings(&print_config(dir, &[], &[(env.as_str(), value.as_str())]));
        assert_eq!(through_env[key].0, sample(key), "{env}");
    }
}

#[test]
fn a_database_password_is_not_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = print_config(
        tmp.path(),
        &[],
        &[(
            "USHER_STORE",
            "postgres://usher:s3cret-pw@db.example:5432/usher",
        )],
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert_eq!(
        settings(&out)["store"].0,
        ["postgres://usher:****@db.example:5432/usher"]
    );
    // Only a postgres:// URL is a store (refused as clap refuses a bad value: exit code 2).
    let out = print_config(tmp.path(), &["--store", "/var/lib/usher/usher.db"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected a postgres:// URL"),
        "{out:?}"
    );
}
