use super::*;

#[test]
fn accepts_the_documented_alphabet() {
    for id in [
        "a",
        "dev-1",
        "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
        "A.b_c:D-",
        "x".repeat(128).as_str(),
    ] {
        assert!(RegistrationId::parse(id).is_ok(), "{id}");
    }
}

#[test]
fn refuses_bad_ids_with_a_reason() {
    assert_eq!(RegistrationId::parse("").unwrap_err(), IdError::Empty);
    assert_eq!(
        RegistrationId::parse(&"x".repeat(129)).unwrap_err(),
        IdError::TooLong { len: 129 }
    );
    assert_eq!(
        RegistrationId::parse("dev/1").unwrap_err(),
        IdError::InvalidCharacter {
            ch: '/',
            position: 3
        }
    );
    assert_eq!(
        RegistrationId::parse("dév").unwrap_err(),
        IdError::InvalidCharacter {
            ch: 'é',
            position: 1
        }
    );
    assert_eq!(
        RegistrationId::parse("dev.").unwrap_err(),
        IdError::InvalidLastCharacter { ch: '.' }
    );
    assert_eq!(
        RegistrationId::parse("dev_").unwrap_err(),
        IdError::InvalidLastCharacter { ch: '_' }
    );
}

#[test]
fn identity_is_case_insensitive_but_spelling_is_kept() {
    let id = RegistrationId::parse("Dev-ABC").unwrap();
    assert_eq!(id.as_str(), "Dev-ABC");
    assert_eq!(id.canonical(), "dev-abc");
    assert!(id.same_as("DEV-abc"));
}

#[test]
fn scope_is_0ne_and_eight_upper_hex_digits() {
    let scope = IdScope::generate([0x00, 0x45, 0xb3, 0xc6]);
    assert_eq!(scope.as_str(), "0ne0045B3C6");
    assert!(scope.matches("0NE0045b3c6"));
    assert_eq!(IdScope::generate([0xff; 4]).as_str(), "0neFFFFFFFF");
}
