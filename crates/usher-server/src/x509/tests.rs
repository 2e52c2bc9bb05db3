#![allow(clippy::unwrap_used)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::*;

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
}

fn params(cn: &str, ca: bool, days: (i64, i64)) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let now = OffsetDateTime::now_utc();
    p.not_before = now + Duration::days(days.0);
    p.not_after = now + Duration::days(days.1);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    p
}

fn root(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = params(cn, true, (-1, 365));
    let der = params.self_signed(&key).unwrap().der().clone();
    Ca { params, key, der }
}

fn signed(cn: &str, ca: bool, days: (i64, i64), by: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = params(cn, ca, days);
    let issuer = Issuer::from_params(&by.params, &by.key);
    let der = params.signed_by(&key, &issuer).unwrap().der().clone();
    Ca { params, key, der }
}

fn chain(certs: &[&Ca]) -> ClientChain {
    let ders: Vec<CertificateDer<'static>> = certs.iter().map(|c| c.der.clone()).collect();
    ClientChain::new(Some(&ders))
}

fn now() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap()
}

#[test]
fn stored_certificates_parse_as_pem_base64_der_or_base64_pem() {
    let ca = root("root-1");
    let pem_text = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(&ca.der)
    );
    assert_eq!(parse_stored(&pem_text).unwrap(), ca.der);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&ca.der);
    assert_eq!(parse_stored(&b64).unwrap(), ca.der);
    // Base64 of the PEM text, as the Node SDK's group e2e test sends it.
    let b64_pem = base64::engine::general_purpose::STANDARD.encode(&pem_text);
    assert_eq!(parse_stored(&b64_pem).unwrap(), ca.der);
    assert!(matches!(
        parse_stored(
            &base64::engine::general_purpose::STANDARD
                .encode("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        ),
        Err(X509Error::Malformed(_))
    ));
    assert!(matches!(
        parse_stored("not a certificate"),
        Err(X509Error::Malformed(_))
    ));
    assert!(matches!(
        parse_stored(&base64::engine::general_purpose::STANDARD.encode(b"garbage")),
        Err(X509Error::Malformed(_))
    ));
}

#[test]
fn info_reads_as_dps_shows_it() {
    let ca = root("root-info");
    let info = info(&ca.der).unwrap();
    assert_eq!(info["subjectName"], "CN=root-info");
    assert_eq!(info["issuerName"], "CN=root-info");
    assert_eq!(info["version"], 3);
    let sha1 = info["sha1Thumbprint"].as_str().unwrap();
    assert_eq!(sha1.len(), 40);
    assert!(
        sha1.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    );
    assert_eq!(info["sha256Thumbprint"].as_str().unwrap().len(), 64);
    let not_after = info["notAfterUtc"].as_str().unwrap();
    assert!(
        not_after.ends_with('Z') && !not_after.contains('.'),
        "{not_after}"
    );
    let serial = info["serialNumber"].as_str().unwrap();
    assert!(!serial.is_empty() && !serial.starts_with("00"), "{serial}");
}

#[test]
fn individual_matches_the_enrolled_certificate_by_thumbprint() {
    let device = root("dev-1");
    let other = root("dev-1");
    let c = chain(&[&device]);
    assert_eq!(
        check_individual(&c, "dev-1", [Some(&device.der), None], now()),
        Ok(0)
    );
    assert_eq!(
        check_individual(&c, "DEV-1", [Some(&other.der), Some(&device.der)], now()),
        Ok(1)
    );
    assert_eq!(
        check_individual(&c, "dev-1", [Some(&other.der), None], now()),
        Err(X509Error::NotEnrolled)
    );
    assert!(matches!(
        check_individual(&c, "dev-2", [Some(&device.der), None], now()),
        Err(X509Error::CommonNameMismatch { .. })
    ));
    assert_eq!(
        check_individual(
            &ClientChain::default(),
            "dev-1",
            [Some(&device.der), None],
            now()
        ),
        Err(X509Error::NoCertificate)
    );
}

#[test]
fn group_chains_lead_to_the_signing_certificate() {
    let stranger = root("root");
    let root = root("root");
    let intermediate = signed("intermediate", true, (-1, 300), &root);
    let leaf = signed("dev-7", false, (-1, 30), &intermediate);
    let presented = chain(&[&leaf, &intermediate]);
    // Signed by the root, or by the intermediate: either is a group's signing certificate.
    check_group(&presented, "dev-7", &root.der, now()).unwrap();
    check_group(&presented, "dev-7", &intermediate.der, now()).unwrap();
    check_group(&chain(&[&leaf]), "dev-7", &intermediate.der, now()).unwrap();
    // Without the intermediate the chain does not reach the root.
    assert!(matches!(
        check_group(&chain(&[&leaf]), "dev-7", &root.der, now()),
        Err(X509Error::Chain(_))
    ));
    // Another CA.
    assert!(matches!(
        check_group(&presented, "dev-7", &stranger.der, now()),
        Err(X509Error::Chain(_))
    ));
    // Another device's name.
    assert!(matches!(
        check_group(&presented, "dev-8", &root.der, now()),
        Err(X509Error::CommonNameMismatch { .. })
    ));
}

#[test]
fn expired_or_not_yet_valid_certificates_are_refused() {
    let root = root("root");
    let expired = signed("old", false, (-30, -1), &root);
    assert!(matches!(
        check_group(&chain(&[&expired]), "old", &root.der, now()),
        Err(X509Error::NotValidNow { .. })
    ));
    assert!(matches!(
        check_individual(
            &chain(&[&expired]),
            "old",
            [Some(&expired.der), None],
            now()
        ),
        Err(X509Error::NotValidNow { .. })
    ));
    let future = signed("new", false, (2, 30), &root);
    assert!(matches!(
        check_group(&chain(&[&future]), "new", &root.der, now()),
        Err(X509Error::NotValidNow { .. })
    ));
}

#[test]
fn a_signing_certificate_must_be_a_ca() {
    let root = root("root");
    let leaf = signed("not-a-ca", false, (-1, 30), &root);
    let below = signed("dev", false, (-1, 30), &leaf);
    assert!(matches!(
        check_group(&chain(&[&below]), "dev", &leaf.der, now()),
        Err(X509Error::NotACa(_))
    ));
    // An intermediate without CA:TRUE cannot carry the chain either (webpki's check).
    assert!(matches!(
        check_group(&chain(&[&below, &leaf]), "dev", &root.der, now()),
        Err(X509Error::Chain(_))
    ));
}
