#![allow(clippy::unwrap_used)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::*;
use crate::x509::{ClientChain, check_group};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap()
}

fn ca(cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_before = now() - Duration::days(1);
    params.not_after = now() + Duration::days(365);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn csr(cn: &str) -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let der = params.serialize_request(&key).unwrap();
    (
        base64::engine::general_purpose::STANDARD.encode(der.der()),
        key,
    )
}

#[test]
fn an_issued_certificate_chains_to_the_ca_and_names_the_device() {
    let (cert, key) = ca("Usher Issuing CA");
    let issuing = IssuingCa::from_pem(&cert, &key, unix(now())).unwrap();
    let (request, _) = csr("dev-9");
    let chain = issuing
        .issue("DEV-9", &request, &CredentialPolicy::default(), now())
        .unwrap();
    assert_eq!(chain.len(), 2);
    let ders: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(base64::engine::general_purpose::STANDARD.decode(c).unwrap()))
        .collect();
    assert_eq!(&ders[1], issuing.certificate());
    assert_eq!(crate::x509::common_name(&ders[0]).unwrap(), "DEV-9");
    check_group(
        &ClientChain::new(Some(&ders[..1])),
        "dev-9",
        issuing.certificate(),
        unix(now()),
    )
    .unwrap();
    let info = crate::x509::info(&ders[0]).unwrap();
    assert_eq!(info["issuerName"], "CN=Usher Issuing CA");
}

#[test]
fn bad_requests_are_refused() {
    let (cert, key) = ca("Usher Issuing CA");
    let issuing = IssuingCa::from_pem(&cert, &key, unix(now())).unwrap();
    let (request, _) = csr("someone-else");
    assert!(matches!(
        issuing.issue("dev-9", &request, &CredentialPolicy::default(), now()),
        Err(IssuanceError::CommonName { .. })
    ));
    assert!(matches!(
        issuing.issue("dev-9", "%%%", &CredentialPolicy::default(), now()),
        Err(IssuanceError::NotBase64(_))
    ));
    // A request whose signature does not match its key.
    let (request, _) = csr("dev-9");
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(&request)
        .unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    let tampered = base64::engine::general_purpose::STANDARD.encode(der);
    assert!(matches!(
        issuing.issue("dev-9", &tampered, &CredentialPolicy::default(), now()),
        Err(IssuanceError::BadRequest(_))
    ));
}

#[test]
fn the_issuing_ca_must_be_a_ca_with_its_key() {
    let (cert, key) = ca("Usher Issuing CA");
    assert!(matches!(
        IssuingCa::from_pem(&cert, "not a key", unix(now())),
        Err(IssuanceError::Key(_))
    ));
    assert!(matches!(
        IssuingCa::from_pem("nothing", &key, unix(now())),
        Err(IssuanceError::Certificate(_))
    ));
    let leaf_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "leaf");
    let leaf = params.self_signed(&leaf_key).unwrap().pem();
    assert!(matches!(
        IssuingCa::from_pem(&leaf, &leaf_key.serialize_pem(), unix(now())),
        Err(IssuanceError::Certificate(_))
    ));
}

#[test]
fn a_credential_policy_sets_validity_and_allowed_key_types() {
    use serde_json::json;
    let fields = |v: serde_json::Value| -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert(POLICY_FIELD.to_owned(), v);
        m
    };
    assert_eq!(
        CredentialPolicy::from_fields(&serde_json::Map::new()).unwrap(),
        CredentialPolicy::default()
    );
    for bad in [
        json!({"validityDays": 0}),
        json!({"validityDays": 3651}),
        json!({"keyTypes": []}),
        json!({"keyTypes": ["dsa-1024"]}),
        json!({"validity": 3}),
        json!("30"),
    ] {
        let e = CredentialPolicy::from_fields(&fields(bad.clone())).unwrap_err();
        assert!(e.contains(POLICY_FIELD), "{bad}: {e}");
    }
    let policy = CredentialPolicy::from_fields(&fields(
        json!({"validityDays": 7, "keyTypes": ["ecdsa-p384", "rsa-2048"]}),
    ))
    .unwrap();
    assert_eq!(policy.validity_days, 7);

    let (cert, key) = ca("Usher Issuing CA");
    let issuing = IssuingCa::from_pem(&cert, &key, unix(now())).unwrap();
    // A P-256 key is not among the allowed types.
    let (p256, _) = csr("dev-9");
    let e = issuing.issue("dev-9", &p256, &policy, now()).unwrap_err();
    assert!(matches!(e, IssuanceError::KeyType { .. }), "{e}");
    assert!(e.to_string().contains("ecdsa-p256"), "{e}");
    // A P-384 key is, and the certificate is valid for 7 days (after the backdating).
    let p384_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "dev-9");
    let request = base64::engine::general_purpose::STANDARD
        .encode(params.serialize_request(&p384_key).unwrap().der());
    let chain = issuing.issue("dev-9", &request, &policy, now()).unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&chain[0])
        .unwrap();
    let (_, leaf) = {
        use x509_parser::prelude::FromDer as _;
        x509_parser::certificate::X509Certificate::from_der(&der).unwrap()
    };
    let validity = leaf.validity();
    let span = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert_eq!(span, (Duration::days(7) + BACKDATE).whole_seconds());
}
