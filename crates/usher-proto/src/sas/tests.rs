use super::*;

const KEY: &str =
    "18RQk/hOPJR9EbsJlk2j8WA6vWaj/yi+oaYg7zmxfQNdOyMSu+SJ8O7TSlZhDJCYmn4rzEiVKIzNiVAWjLxrGA==";
const SCOPE: &str = "0ne00111111";
const ID: &str = "my-symkey-device";
const EXPIRY: u64 = 1_663_952_627;

fn key() -> SymmetricKey {
    SymmetricKey::from_base64(KEY).unwrap()
}

fn before_expiry() -> Now {
    Now {
        unix_secs: EXPIRY - 10,
        skew_secs: 0,
    }
}

fn good_token() -> String {
    device_token(SCOPE, ID, &key(), EXPIRY)
}

fn verify(text: &str) -> Result<usize, SasError> {
    verify_device_token(text, SCOPE, ID, &[&key()], before_expiry())
}

#[test]
fn built_token_has_the_documented_shape() {
    assert_eq!(
        good_token(),
        "SharedAccessSignature sr=0ne00111111%2Fregistrations%2Fmy-symkey-device\
         &sig=8VPprb8BiTkuVE0hBqHm%2FSVrzVpdD8VZcXugntdbhuU%3D&se=1663952627&skn=registration"
    );
    assert_eq!(verify(&good_token()), Ok(0));
}

#[test]
fn fields_parse_in_any_order_with_either_hex_case() {
    let text = "SharedAccessSignature skn=registration&se=1663952627\
                &sig=8VPprb8BiTkuVE0hBqHm%2fSVrzVpdD8VZcXugntdbhuU%3d\
                &sr=0ne00111111%2Fregistrations%2Fmy-symkey-device";
    assert_eq!(verify(text), Ok(0));
}

#[test]
fn secondary_key_is_reported_by_index() {
    let other = SymmetricKey::generate(&[9; 32]).unwrap();
    let res = verify_device_token(&good_token(), SCOPE, ID, &[&other, &key()], before_expiry());
    assert_eq!(res, Ok(1));
}

#[test]
fn expired_token() {
    let now = Now {
        unix_secs: EXPIRY,
        skew_secs: 0,
    };
    assert_eq!(
        verify_device_token(&good_token(), SCOPE, ID, &[&key()], now),
        Err(SasError::Expired {
            expiry: EXPIRY,
            now: EXPIRY
        })
    );
    // Within the skew allowance it still passes.
    let lenient = Now {
        unix_secs: EXPIRY + 299,
        skew_secs: 300,
    };
    assert_eq!(
        verify_device_token(&good_token(), SCOPE, ID, &[&key()], lenient),
        Ok(0)
    );
    let past = Now {
        unix_secs: EXPIRY + 300,
        skew_secs: 300,
    };
    assert!(matches!(
        verify_device_token(&good_token(), SCOPE, ID, &[&key()], past),
        Err(SasError::Expired { .. })
    ));
}

#[test]
fn wrong_key() {
    let other = SymmetricKey::generate(&[1; 32]).unwrap();
    assert_eq!(
        verify_device_token(&good_token(), SCOPE, ID, &[&other], before_expiry()),
        Err(SasError::SignatureMismatch)
    );
    assert_eq!(
        verify_device_token(&good_token(), SCOPE, ID, &[], before_expiry()),
        Err(SasError::SignatureMismatch)
    );
}

#[test]
fn wrong_scope() {
    assert_eq!(
        verify_device_token(&good_token(), "0ne00222222", ID, &[&key()], before_expiry()),
        Err(SasError::IdScopeMismatch {
            expected: "0ne00222222".into(),
            found: SCOPE.into()
        })
    );
}

#[test]
fn other_registration_id() {
    assert_eq!(
        verify_device_token(
            &good_token(),
            SCOPE,
            "other-device",
            &[&key()],
            before_expiry()
        ),
        Err(SasError::RegistrationIdMismatch {
            expected: "other-device".into(),
            found: ID.into()
        })
    );
}

#[test]
fn scope_and_id_compare_case_insensitively() {
    assert_eq!(
        verify_device_token(
            &good_token(),
            "0NE00111111",
            "MY-SYMKEY-DEVICE",
            &[&key()],
            before_expiry()
        ),
        Ok(0)
    );
}

#[test]
fn key_name_other_than_registration() {
    let text = good_token().replace("skn=registration", "skn=provisioningserviceowner");
    assert_eq!(
        verify(&text),
        Err(SasError::WrongKeyName {
            found: "provisioningserviceowner".into()
        })
    );
}

#[test]
fn missing_fields() {
    for (field, text) in [
        ("sr", "SharedAccessSignature sig=abcd&se=1"),
        ("sig", "SharedAccessSignature sr=a%2Fregistrations%2Fb&se=1"),
        (
            "se",
            "SharedAccessSignature sr=a%2Fregistrations%2Fb&sig=abcd",
        ),
    ] {
        assert_eq!(
            SasToken::parse(text).unwrap_err(),
            SasError::MissingField { field },
            "{text}"
        );
    }
    assert_eq!(
        SasToken::parse("SharedAccessSignature sr=&sig=abcd&se=1").unwrap_err(),
        SasError::EmptyField { field: "sr" }
    );
    assert_eq!(
        SasToken::parse("Bearer abc").unwrap_err(),
        SasError::MissingPrefix
    );
    assert_eq!(SasToken::parse("").unwrap_err(), SasError::MissingPrefix);
}

#[test]
fn duplicate_fields() {
    let text = format!("{}&se=1663952627", good_token());
    assert_eq!(verify(&text), Err(SasError::DuplicateField { field: "se" }));
    let text = format!("{}&skn=registration", good_token());
    assert_eq!(
        verify(&text),
        Err(SasError::DuplicateField { field: "skn" })
    );
}

#[test]
fn malformed_fields() {
    assert_eq!(
        SasToken::parse("SharedAccessSignature sr=a&sig&se=1").unwrap_err(),
        SasError::MalformedField {
            field: "sig".into()
        }
    );
    assert_eq!(
        SasToken::parse("SharedAccessSignature sr=a&sig=YQ==&se=12x").unwrap_err(),
        SasError::MalformedExpiry {
            value: "12x".into()
        }
    );
    assert_eq!(
        SasToken::parse("SharedAccessSignature sr=a&sig=YQ==&se=-5").unwrap_err(),
        SasError::MalformedExpiry { value: "-5".into() }
    );
    // Larger than u64.
    assert!(matches!(
        SasToken::parse("SharedAccessSignature sr=a&sig=YQ==&se=99999999999999999999999")
            .unwrap_err(),
        SasError::MalformedExpiry { .. }
    ));
}

#[test]
fn bad_base64() {
    let text = good_token().replace("sig=8VPp", "sig=!VPp");
    assert_eq!(verify(&text), Err(SasError::BadSignatureBase64));
}

#[test]
fn bad_percent_encoding() {
    for (field, text) in [
        ("sr", "SharedAccessSignature sr=a%2Gb&sig=YQ%3D%3D&se=1"),
        ("sr", "SharedAccessSignature sr=a%2&sig=YQ%3D%3D&se=1"),
        ("sr", "SharedAccessSignature sr=a%FF&sig=YQ%3D%3D&se=1"),
        ("sig", "SharedAccessSignature sr=a&sig=YQ%3&se=1"),
        (
            "skn",
            "SharedAccessSignature sr=a&sig=YQ%3D%3D&se=1&skn=%zz",
        ),
    ] {
        assert_eq!(
            SasToken::parse(text).unwrap_err(),
            SasError::BadPercentEncoding { field },
            "{text}"
        );
    }
}

#[test]
fn over_long_input() {
    let text = format!("{}&x={}", good_token(), "a".repeat(MAX_TOKEN_LEN));
    assert_eq!(verify(&text), Err(SasError::TooLong { len: text.len() }));
}

#[test]
fn resource_that_is_not_a_registration() {
    let token = service_token("example.net", "registration", &key(), EXPIRY);
    assert!(matches!(
        verify(&token),
        Err(SasError::NotARegistrationResource { .. })
    ));
}

#[test]
fn plus_in_signature_is_not_a_space() {
    // Base64 signatures contain '+', which must not be turned into a space when decoding.
    let mut expiry = EXPIRY;
    let token = loop {
        let token = device_token(SCOPE, ID, &key(), expiry);
        if token.contains("%2B") {
            break token.replace("%2B", "+");
        }
        expiry += 1;
    };
    let now = Now {
        unix_secs: 0,
        skew_secs: 0,
    };
    assert_eq!(
        verify_device_token(&token, SCOPE, ID, &[&key()], now),
        Ok(0)
    );
}

#[test]
fn service_token_round_trip() {
    let host = "usher.example.net";
    let token = SasToken::parse(&service_token(
        host,
        "provisioningserviceowner",
        &key(),
        EXPIRY,
    ))
    .unwrap();
    assert_eq!(
        token.check_service_claims(host, before_expiry()),
        Ok("provisioningserviceowner")
    );
    assert_eq!(
        token.check_service_claims("USHER.example.net:443", before_expiry()),
        Ok("provisioningserviceowner")
    );
    assert_eq!(token.check_signature(&[&key()]), Ok(0));
    assert_eq!(
        token.check_service_claims("other.example.net", before_expiry()),
        Err(SasError::HostMismatch {
            expected: "other.example.net".into(),
            found: host.into()
        })
    );
}

#[test]
fn service_token_forms_of_the_official_clients() {
    let k = key();
    let sign = |sr: &str, se: &str| {
        let sig = hmac_sha256(k.as_bytes(), format!("{sr}\n{se}").as_bytes());
        encode_field(&STANDARD.encode(sig))
    };
    let now = before_expiry();
    // Node: raw host, order sr, sig, skn, se.
    let node = format!(
        "SharedAccessSignature sr=h.example&sig={}&skn=owner&se={EXPIRY}",
        sign("h.example", &EXPIRY.to_string())
    );
    // Python with a full URL as endpoint: quote_plus("https://h.example:8443").
    let sr = "https%3A%2F%2Fh.example%3A8443";
    let py = format!(
        "SharedAccessSignature sr={sr}&sig={}&se={EXPIRY}&skn=owner",
        sign(sr, &EXPIRY.to_string())
    );
    for text in [node, py] {
        let token = SasToken::parse(&text).unwrap();
        assert_eq!(
            token.check_service_claims("h.example", now),
            Ok("owner"),
            "{text}"
        );
        assert_eq!(token.check_signature(&[&k]), Ok(0), "{text}");
    }
}

#[test]
fn service_token_without_policy_name() {
    let text = device_token(SCOPE, ID, &key(), EXPIRY).replace("&skn=registration", "");
    let token = SasToken::parse(&text).unwrap();
    assert_eq!(
        token.check_service_claims("h", before_expiry()),
        Err(SasError::MissingField { field: "skn" })
    );
}

#[test]
fn debug_hides_the_signature() {
    let token = SasToken::parse(&good_token()).unwrap();
    let shown = format!("{token:?}");
    assert!(
        !shown.contains("8VPp") && shown.contains("my-symkey-device"),
        "{shown}"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn id_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9._:-]{0,40}[A-Za-z0-9-]"
    }

    fn key_strategy() -> impl Strategy<Value = SymmetricKey> {
        prop::collection::vec(any::<u8>(), 16..=64)
            .prop_map(|b| SymmetricKey::from_bytes(b).unwrap())
    }

    /// The span of a field's value inside the token text.
    fn value_span(token: &str, field: &str) -> std::ops::Range<usize> {
        let start = token.find(&format!("{field}=")).unwrap() + field.len() + 1;
        let end = token[start..].find('&').map_or(token.len(), |e| start + e);
        start..end
    }

    /// Whether replacing byte `pos` of `text` by `new` only changes the case of a hex digit inside a
    /// `%XX` escape, which leaves the decoded value the same.
    fn only_hex_case_changed(text: &str, pos: usize, new: u8) -> bool {
        let b = text.as_bytes();
        let in_escape = (pos >= 1 && b[pos - 1] == b'%') || (pos >= 2 && b[pos - 2] == b'%');
        in_escape && b[pos].is_ascii_hexdigit() && b[pos].eq_ignore_ascii_case(&new)
    }

    proptest! {
        #[test]
        fn built_token_verifies(id in id_strategy(), key in key_strategy(), expiry in 1u64..4_000_000_000) {
            let token = device_token(SCOPE, &id, &key, expiry);
            let now = Now { unix_secs: expiry - 1, skew_secs: 0 };
            prop_assert_eq!(verify_device_token(&token, SCOPE, &id, &[&key], now), Ok(0));
        }

        #[test]
        fn any_changed_byte_fails(
            id in id_strategy(),
            key in key_strategy(),
            field in prop::sample::select(vec!["sr", "sig", "se"]),
            pick in any::<prop::sample::Index>(),
            new in 0x21u8..0x7f,
        ) {
            let expiry = 2_000_000_000;
            let token = device_token(SCOPE, &id, &key, expiry);
            let span = value_span(&token, field);
            let pos = span.start + pick.index(span.len());
            prop_assume!(token.as_bytes()[pos] != new);
            // In `sig` a hex-case change inside an escape decodes to the same signature bytes.
            prop_assume!(!(field == "sig" && only_hex_case_changed(&token, pos, new)));
            let mut bytes = token.into_bytes();
            bytes[pos] = new;
            let changed = String::from_utf8(bytes).unwrap();
            let now = Now { unix_secs: 1_000_000_000, skew_secs: 0 };
            prop_assert!(verify_device_token(&changed, SCOPE, &id, &[&key], now).is_err(), "{}", changed);
        }

        #[test]
        fn another_key_fails(id in id_strategy(), key in key_strategy(), other in key_strategy()) {
            prop_assume!(key != other);
            let token = device_token(SCOPE, &id, &key, 2_000_000_000);
            let now = Now { unix_secs: 1_000_000_000, skew_secs: 0 };
            prop_assert_eq!(verify_device_token(&token, SCOPE, &id, &[&other], now), Err(SasError::SignatureMismatch));
        }

        #[test]
        fn never_verifies_for_another_registration(
            id in id_strategy(), other_id in id_strategy(),
            scope in "0ne[0-9A-F]{8}", other_scope in "0ne[0-9A-F]{8}",
            key in key_strategy(),
        ) {
            let token = device_token(&scope, &id, &key, 2_000_000_000);
            let now = Now { unix_secs: 1_000_000_000, skew_secs: 0 };
            if !other_id.eq_ignore_ascii_case(&id) {
                prop_assert!(verify_device_token(&token, &scope, &other_id, &[&key], now).is_err());
            }
            if !other_scope.eq_ignore_ascii_case(&scope) {
                prop_assert!(verify_device_token(&token, &other_scope, &id, &[&key], now).is_err());
            }
        }

        #[test]
        fn parse_never_panics(text in ".{0,300}") {
            let _ = SasToken::parse(&format!("SharedAccessSignature {text}"));
            let _ = SasToken::parse(&text);
        }
    }
}
