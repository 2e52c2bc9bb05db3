//! Every vector in `tests/data/sas.json` through the public API. The file is a copy of the team's
//! shared SAS vectors, kept inside the project so a clone anywhere runs it.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use serde_json::Value;
use usher_proto::SymmetricKey;
use usher_proto::sas::{Now, SasToken, verify_device_token};

fn vectors() -> Value {
    serde_json::from_str(include_str!("data/sas.json")).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

#[test]
fn derived_device_keys() {
    let v = vectors();
    let cases = v["derived_device_keys"].as_array().unwrap();
    assert!(cases.len() >= 2);
    for case in cases {
        let group = SymmetricKey::from_base64(s(&case["group_key"])).unwrap();
        let derived = group.derive_device_key(s(&case["registration_id"]));
        assert_eq!(
            derived.to_base64(),
            s(&case["device_key"]),
            "{}",
            case["source"]
        );
    }
}

#[test]
fn device_tokens_of_every_sdk_style() {
    let v = vectors();
    let t = &v["device_sas_tokens"];
    let key = SymmetricKey::from_base64(s(&t["device_key"])).unwrap();
    let expiry = t["expiry"].as_u64().unwrap();
    let (scope, id) = (s(&t["id_scope"]), s(&t["registration_id"]));
    let now = Now {
        unix_secs: expiry - 60,
        skew_secs: 0,
    };
    let tokens = t["valid_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3);
    for case in tokens {
        let text = s(&case["token"]);
        assert_eq!(
            verify_device_token(text, scope, id, &[&key], now),
            Ok(0),
            "{}",
            case["style"]
        );
        let token = SasToken::parse(text).unwrap();
        assert_eq!(token.resource(), s(&t["resource_uri"]));
        assert_eq!(token.expiry(), expiry);
        // The vector records the signed string with a literal backslash-n.
        let signed = s(&case["signed_string"]).replace("\\n", "\n");
        let (sr, se) = signed.split_once('\n').unwrap();
        assert!(text.contains(&format!("sr={sr}&")), "{}", case["style"]);
        assert_eq!(se, expiry.to_string());
        // The same token is refused once expired.
        let later = Now {
            unix_secs: expiry,
            skew_secs: 0,
        };
        assert!(verify_device_token(text, scope, id, &[&key], later).is_err());
    }
}
