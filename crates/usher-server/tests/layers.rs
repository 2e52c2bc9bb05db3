//! ARCHITECTURE.md's layering rules, executable: domain modules never import transport modules
//! (a transport only parses, calls the core and renders; if a domain module needs something a
//! transport has, that thing belongs in the domain), and the store imports no module that uses
//! the store.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The transport modules (`crate::…`): sockets, TLS framing, HTTP, MQTT, AMQP, WebSockets, the
/// console.
const TRANSPORTS: &[&str] = &[
    "http",
    "mqtt",
    "amqp",
    "websocket",
    "server",
    "console",
    "tls",
];

/// The domain modules, and the files each is made of.
const DOMAIN: &[&str] = &[
    "app",
    "audit",
    "auth",
    "clock",
    "error",
    "files",
    "groups",
    "hub",
    "management",
    "registration",
    "secrets",
    "store",
    "throttle",
    "webhook",
    "testing",
    "metrics",
    "pki",
    "x509",
    "issuance",
    "certificates",
];

fn files_of(module: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.exists() {
        out.push(file);
    }
    let dir = src.join(module);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[test]
fn domain_modules_never_import_transport_modules() {
    let mut offences = Vec::new();
    let mut checked = 0;
    for module in DOMAIN {
        for file in files_of(module) {
            checked += 1;
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for t in TRANSPORTS {
                    if code.contains(&format!("crate::{t}::"))
                        || code.contains(&format!("crate::{t};"))
                        || code.contains(&format!("crate::{{{t}"))
                        || code.contains(&format!("super::{t}::"))
                    {
                        offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        checked >= 12,
        "found only {checked} domain files: has the layout changed?"
    );
    assert!(
        offences.is_empty(),
        "domain modules import transports:\n{}",
        offences.join("\n")
    );
}

/// What the store may use: infrastructure that does not use the store itself.
const STORE_MAY_USE: &[&str] = &["files", "metrics", "secrets", "test_postgres"];

#[test]
fn the_store_uses_no_module_that_uses_the_store() {
    let mut offences = Vec::new();
    let files = files_of("store");
    assert!(files.len() >= 4, "found only {} store files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let module: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !module.is_empty() && !STORE_MAY_USE.contains(&module.as_str()) {
                    offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the store imports modules beyond {STORE_MAY_USE:?}:\n{}",
        offences.join("\n")
    );
}
