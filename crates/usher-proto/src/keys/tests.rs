use super::*;

const DOCS_GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

#[test]
fn derives_the_docs_example() {
    let group = SymmetricKey::from_base64(DOCS_GROUP_KEY).unwrap();
    let device = group.derive_device_key("sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6");
    assert_eq!(
        device.to_base64(),
        "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
    );
}

#[test]
fn derivation_is_case_sensitive() {
    let group = SymmetricKey::from_base64(DOCS_GROUP_KEY).unwrap();
    assert_ne!(
        group.derive_device_key("dev-1"),
        group.derive_device_key("DEV-1")
    );
}

#[test]
fn rejects_keys_of_the_wrong_length() {
    assert_eq!(
        SymmetricKey::from_base64("AAAA").unwrap_err(),
        KeyError::WrongLength { len: 3 }
    );
    assert_eq!(
        SymmetricKey::generate(&[0; 65]).unwrap_err(),
        KeyError::WrongLength { len: 65 }
    );
    assert!(matches!(
        SymmetricKey::from_base64(&"A".repeat(400)).unwrap_err(),
        KeyError::WrongLength { .. }
    ));
    assert!(SymmetricKey::generate(&[7; 16]).is_ok());
    assert!(SymmetricKey::generate(&[7; 64]).is_ok());
}

#[test]
fn rejects_bad_base64_and_empty() {
    assert!(matches!(
        SymmetricKey::from_base64("not base64!!").unwrap_err(),
        KeyError::BadBase64(_)
    ));
    assert_eq!(
        SymmetricKey::from_base64("  ").unwrap_err(),
        KeyError::Empty
    );
}

#[test]
fn debug_hides_key_material() {
    let key = SymmetricKey::generate(&[0xAB; 32]).unwrap();
    assert_eq!(format!("{key:?}"), "SymmetricKey(32 bytes)");
}

#[test]
fn generated_key_round_trips_through_base64() {
    let random: Vec<u8> = (0u8..32).collect();
    let key = SymmetricKey::generate(&random).unwrap();
    let text = key.to_base64();
    assert_eq!(text.len(), 44);
    assert_eq!(
        SymmetricKey::from_base64(&text).unwrap().as_bytes(),
        &random[..]
    );
}
