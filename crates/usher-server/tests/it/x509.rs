//! X.509 attestation end to end: certificates made with rcgen (a root, an intermediate, device
//! certificates), enrolled through the management API, presented by the device library over
//! every transport.

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use usher_device::{Credential, ProvisionError, Transport};
use usher_proto::model::RegistrationStatus;

use crate::support::TestServer;

const ALL: [Transport; 5] = [
    Transport::Https,
    Transport::Mqtt,
    Transport::MqttWs,
    Transport::Amqp,
    Transport::AmqpWs,
];

/// A certificate and its key.
struct Cert {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

impl Cert {
    fn new(cn: &str, ca: bool, days: (i64, i64), by: Option<&Self>) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(days.0);
        params.not_after = now + Duration::days(days.1);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = match by {
            None => params.self_signed(&key).unwrap(),
            Some(issuer) => params
                .signed_by(
                    &key,
                    &rcgen::Issuer::from_params(&issuer.params, &issuer.key),
                )
                .unwrap(),
        };
        Self {
            pem: cert.pem(),
            params,
            key,
        }
    }

    fn device(cn: &str) -> Self {
        Self::new(cn, false, (-1, 30), None)
    }

    /// The device credential presenting this certificate and, after it, `chain`.
    fn credential(&self, chain: &[&Self]) -> Credential {
        let mut pem = self.pem.clone();
        for c in chain {
            pem.push_str(&c.pem);
        }
        Credential::x509(pem.as_bytes(), self.key.serialize_pem().as_bytes(), None).unwrap()
    }
}

async fn enroll_x509(s: &TestServer, id: &str, primary: &Cert, extra: Value) -> Value {
    let mut body = json!({"registrationId": id, "attestation": {"type": "x509",
        "x509": {"clientCertificates": {"primary": {"certificate": primary.pem}}}}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, _, doc) = s
        .call(Method::PUT, &format!("/enrollments/{id}"), Some(body), &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

async fn enroll_x509_group(s: &TestServer, id: &str, signing: &Cert) -> Value {
    let body = json!({"enrollmentGroupId": id, "attestation": {"type": "x509",
        "x509": {"signingCertificates": {"primary": {"certificate": signing.pem}}}}});
    let (status, _, doc) = s
        .call(
            Method::PUT,
            &format!("/enrollmentGroups/{id}"),
            Some(body),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

fn assert_unauthorized(result: Result<impl std::fmt::Debug, ProvisionError>, what: &str) {
    match result {
        Err(ProvisionError::Refused {
            status: 401, body, ..
        }) => {
            assert_eq!(body.unwrap().error_code, 401_002, "{what}");
        }
        // AMQP refuses at open: the error JSON is the close description.
        Err(ProvisionError::Refused { status, text, .. }) => {
            panic!("{what}: refused with {status}: {text}")
        }
        other => panic!("{what}: expected 401002, got {other:?}"),
    }
}

#[tokio::test]
async fn individual_enrollments_with_and_without_a_device_id_on_every_transport() {
    let s = TestServer::start().await;
    let plain = Cert::device("x509-ind");
    let named = Cert::device("x509-named");
    let doc = enroll_x509(&s, "x509-ind", &plain, json!({})).await;
    // DPS answers with the parsed info, never the certificate itself.
    let primary = &doc["attestation"]["x509"]["clientCertificates"]["primary"];
    assert!(primary.get("certificate").is_none(), "{doc}");
    assert_eq!(primary["info"]["subjectName"], "CN=x509-ind");
    assert_eq!(primary["info"]["version"], 3);
    enroll_x509(
        &s,
        "x509-named",
        &named,
        json!({"deviceId": "the-named-one"}),
    )
    .await;
    for transport in ALL {
        let client = s.client_over(transport);
        let result = client
            .provision(&plain.credential(&[]), None, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        let state = result.registration_state.unwrap();
        assert_eq!(
            state.device_id.as_deref(),
            Some("x509-ind"),
            "{transport:?}"
        );
        let result = client
            .provision(&named.credential(&[]), None, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        let state = result.registration_state.unwrap();
        assert_eq!(
            state.device_id.as_deref(),
            Some("the-named-one"),
            "{transport:?}"
        );
    }
    // The hub identity authenticates with the certificate's thumbprint, as IoT Hub shows it
    // (SHA-256; the one certificate stands as secondary too).
    let (status, _, device) =
        crate::parity::hub_call(&s, &s.hub_key, Method::GET, "/devices/x509-ind", None, None).await;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(device["authentication"]["type"], "selfSigned");
    for which in ["primaryThumbprint", "secondaryThumbprint"] {
        assert_eq!(
            device["authentication"]["x509Thumbprint"][which], primary["info"]["sha256Thumbprint"],
            "{which}: {device}"
        );
    }
    assert!(device["authentication"]["symmetricKey"]["primaryKey"].is_null());
}

#[tokio::test]
async fn refused_certificates_get_401002_on_every_transport() {
    let s = TestServer::start().await;
    let enrolled = Cert::device("x509-ref");
    enroll_x509(&s, "x509-ref", &enrolled, json!({})).await;
    // Another key pair with the same name; an expired certificate that is the enrolled one's twin
    // in name; a certificate nobody enrolled.
    let impostor = Cert::device("x509-ref");
    let expired = Cert::new("x509-old", false, (-30, -1), None);
    enroll_x509(&s, "x509-old", &expired, json!({})).await;
    let stranger = Cert::device("x509-stranger");
    for transport in ALL {
        let client = s.client_over(transport);
        for (what, cert) in [
            ("another key", &impostor),
            ("expired", &expired),
            ("not enrolled", &stranger),
        ] {
            assert_unauthorized(
                client.provision(&cert.credential(&[]), None, |_| {}).await,
                &format!("{transport:?}: {what}"),
            );
        }
    }
    // A certificate whose CN is not the registration ID it claims.
    let client = s.client_over(Transport::Https);
    let renamed = Credential::x509(
        enrolled.pem.as_bytes(),
        enrolled.key.serialize_pem().as_bytes(),
        Some("x509-other"),
    )
    .unwrap();
    assert_unauthorized(
        client.provision(&renamed, None, |_| {}).await,
        "CN differs from the registration ID",
    );
}

#[tokio::test]
async fn groups_via_root_or_intermediate_and_a_disabled_individual_enrollment_blocks() {
    let s = TestServer::start().await;
    let root = Cert::new("x509-root", true, (-1, 365), None);
    let intermediate = Cert::new("x509-intermediate", true, (-1, 300), Some(&root));
    let other_root = Cert::new("x509-root", true, (-1, 365), None);
    enroll_x509_group(&s, "grp-intermediate", &intermediate).await;
    for transport in ALL {
        let id = format!("grp-dev-{}", format!("{transport:?}").to_lowercase());
        let leaf = Cert::new(&id, false, (-1, 30), Some(&intermediate));
        let result = s
            .client_over(transport)
            .provision(&leaf.credential(&[&intermediate]), None, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        let state = result.registration_state.unwrap();
        assert_eq!(state.device_id.as_deref(), Some(id.as_str()));
    }
    let (status, record) = s.registration("grp-dev-https").await;
    assert_eq!(status, StatusCode::OK);
    // The record shows the certificates as DPS does: the device's, the group and its signing
    // certificate.
    assert_eq!(
        record["x509"]["enrollmentGroupId"], "grp-intermediate",
        "{record}"
    );
    assert_eq!(
        record["x509"]["certificateInfo"]["subjectName"],
        "CN=grp-dev-https"
    );
    assert_eq!(
        record["x509"]["signingCertificateInfo"]["subjectName"],
        "CN=x509-intermediate"
    );
    assert!(record.get("symmetricKey").is_none(), "{record}");
    let (_, _, device) = crate::parity::hub_call(
        &s,
        &s.hub_key,
        Method::GET,
        "/devices/grp-dev-mqtt",
        None,
        None,
    )
    .await;
    // As DPS does (Microsoft's provisioning e2e suite asserts it), a group member's identity is
    // `selfSigned` with its own certificate's thumbprint.
    assert_eq!(device["authentication"]["type"], "selfSigned", "{device}");
    assert_eq!(
        device["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        record_of(&s, "grp-dev-mqtt").await["x509"]["certificateInfo"]["sha256Thumbprint"]
    );

    // A renewed certificate (a new key, the same name) re-provisions the device, and the hub
    // identity now carries the new certificate's thumbprint.
    let renewed = Cert::new("grp-dev-mqtt", false, (-1, 60), Some(&intermediate));
    s.client_over(Transport::Mqtt)
        .provision(&renewed.credential(&[&intermediate]), None, |_| {})
        .await
        .unwrap();
    let renewed_thumbprint =
        record_of(&s, "grp-dev-mqtt").await["x509"]["certificateInfo"]["sha256Thumbprint"].clone();
    assert_ne!(
        renewed_thumbprint,
        device["authentication"]["x509Thumbprint"]["primaryThumbprint"]
    );
    let (_, _, device) = crate::parity::hub_call(
        &s,
        &s.hub_key,
        Method::GET,
        "/devices/grp-dev-mqtt",
        None,
        None,
    )
    .await;
    assert_eq!(
        device["authentication"]["x509Thumbprint"]["primaryThumbprint"], renewed_thumbprint,
        "{device}"
    );

    // A group on the root: the device sends its intermediate along.
    enroll_x509_group(&s, "grp-root", &root).await;
    let via_root = Cert::new("grp-root-dev", false, (-1, 30), Some(&intermediate));
    let client = s.client_over(Transport::Mqtt);
    client
        .provision(&via_root.credential(&[&intermediate]), None, |_| {})
        .await
        .unwrap();

    // Another CA's device, and an expired device certificate of the right CA.
    let foreign = Cert::new("grp-foreign", false, (-1, 30), Some(&other_root));
    assert_unauthorized(
        client
            .provision(&foreign.credential(&[&other_root]), None, |_| {})
            .await,
        "another CA",
    );
    let expired = Cert::new("grp-expired", false, (-30, -1), Some(&intermediate));
    assert_unauthorized(
        client
            .provision(&expired.credential(&[&intermediate]), None, |_| {})
            .await,
        "expired",
    );

    // A disabled individual enrollment blocks a device of the group: it is told `disabled`.
    let blocked = Cert::new("grp-blocked", false, (-1, 30), Some(&intermediate));
    let unrelated = Cert::device("grp-blocked");
    enroll_x509(
        &s,
        "grp-blocked",
        &unrelated,
        json!({"provisioningStatus": "disabled"}),
    )
    .await;
    for transport in [Transport::Https, Transport::Mqtt, Transport::Amqp] {
        match s
            .client_over(transport)
            .provision(&blocked.credential(&[&intermediate]), None, |_| {})
            .await
        {
            Err(ProvisionError::NotAssigned(status)) => {
                assert_eq!(status.status, RegistrationStatus::Disabled, "{transport:?}");
            }
            other => panic!("{transport:?}: expected disabled, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_certificates_are_refused_with_400_and_info_round_trips() {
    let s = TestServer::start().await;
    for (what, attestation) in [
        (
            "not PEM",
            json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "hello"}}}}),
        ),
        (
            "bad DER",
            json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "aGVsbG8="}}}}),
        ),
        (
            "no certificate",
            json!({"type": "x509", "x509": {"clientCertificates": {}}}),
        ),
    ] {
        let (status, _, body) = s
            .call(
                Method::PUT,
                "/enrollments/bad-cert",
                Some(json!({"registrationId": "bad-cert", "attestation": attestation})),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("certificate"),
            "{what}: {body}"
        );
    }
    // A group's signing certificate must be a CA.
    let leaf = Cert::device("not-a-ca");
    let (status, _, body) = s
        .call(
            Method::PUT,
            "/enrollmentGroups/leafy",
            Some(
                json!({"enrollmentGroupId": "leafy", "attestation": {"type": "x509",
                "x509": {"signingCertificates": {"primary": {"certificate": leaf.pem}}}}}),
            ),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // What GET shows (info, no certificate) can be put back: the stored certificate is kept.
    let cert = Cert::device("round-trip");
    enroll_x509(&s, "round-trip", &cert, json!({})).await;
    let (_, _, got) = s
        .call(Method::GET, "/enrollments/round-trip", None, &[])
        .await;
    let info = got["attestation"]["x509"]["clientCertificates"]["primary"]["info"].clone();
    assert_eq!(info["subjectName"], "CN=round-trip", "{got}");
    let mut back = got.clone();
    back.as_object_mut().unwrap().remove("registrationState");
    let etag = got["etag"].as_str().unwrap().to_owned();
    let (status, _, put) = s
        .call(
            Method::PUT,
            "/enrollments/round-trip",
            Some(back),
            &[("If-Match", etag.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(
        put["attestation"]["x509"]["clientCertificates"]["primary"]["info"],
        info
    );
    s.client_over(Transport::Https)
        .provision(&cert.credential(&[]), None, |_| {})
        .await
        .unwrap();
}

/// A CSR (base64 DER, as api-version 2025-07-01-preview sends it) for `cn`, and its key.
fn csr(cn: &str) -> (String, rcgen::KeyPair) {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let request = params.serialize_request(&key).unwrap();
    (
        base64::engine::general_purpose::STANDARD.encode(request.der()),
        key,
    )
}

fn pem_of(b64: &str) -> String {
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[tokio::test]
async fn a_csr_gets_a_certificate_the_device_then_registers_with() {
    let ca = Cert::new("Usher Issuing CA", true, (-1, 365), None);
    let issuing = usher_server::issuance::IssuingCa::from_pem(
        &ca.pem,
        &ca.key.serialize_pem(),
        crate::support::unix_now(),
    )
    .unwrap();
    let s = TestServer::start_with(usher_server::Settings {
        issuing_ca: Some(std::sync::Arc::new(issuing)),
        ..usher_server::Settings::default()
    })
    .await;
    let (key, _) = s.enroll("csr-dev", json!({})).await;
    let token = s.token("csr-dev", &key);
    let register = format!(
        "/{}/registrations/csr-dev/register?api-version=2025-07-01-preview",
        s.scope
    );

    // A CSR for another name, or not a CSR at all, is refused and nothing is recorded.
    for bad in [
        csr("someone-else").0,
        "bm90IGEgY3Ny".to_owned(),
        "%%%".to_owned(),
    ] {
        let body = json!({"registrationId": "csr-dev", "csr": bad});
        let (status, _, answer) = s
            .device_request(
                Method::PUT,
                &register,
                Some(&token),
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["errorCode"], 400_004, "{answer}");
    }
    assert_eq!(s.registration("csr-dev").await.0, StatusCode::NOT_FOUND);

    // A symmetric-key device asks for a certificate: 202 assigning, then the operation's status
    // carries the chain (the device's certificate, then the issuing CA).
    let (request, device_key) = csr("csr-dev");
    let body = json!({"registrationId": "csr-dev", "csr": request});
    let (status, _, answer) = s
        .device_request(
            Method::PUT,
            &register,
            Some(&token),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let operation = answer["operationId"].as_str().unwrap().to_owned();
    let (status, _, polled) = s
        .device_request(
            Method::GET,
            &format!(
                "/{}/registrations/csr-dev/operations/{operation}?api-version=2025-07-01-preview",
                s.scope
            ),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{polled}");
    assert_eq!(polled["status"], "assigned");
    let chain: Vec<String> =
        serde_json::from_value(polled["registrationState"]["issuedCertificateChain"].clone())
            .unwrap();
    assert_eq!(chain.len(), 2, "{polled}");
    assert_eq!(pem_of(&chain[1]), ca.pem.replace("\r\n", "\n"));
    // A status lookup does not repeat it.
    let (_, _, lookup) = s
        .device_request(
            Method::POST,
            &format!(
                "/{}/registrations/csr-dev?api-version=2025-07-01-preview",
                s.scope
            ),
            Some(&token),
            Some(b"{}".to_vec()),
        )
        .await;
    assert!(lookup.get("issuedCertificateChain").is_none(), "{lookup}");
    // The device now connects to its hub with the issued certificate: its identity there is
    // provisioned with it (`selfSigned`, the issued certificate's SHA-256 thumbprint), no keys.
    let (_, _, identity) =
        crate::parity::hub_call(&s, &s.hub_key, Method::GET, "/devices/csr-dev", None, None).await;
    assert_eq!(
        identity["authentication"]["type"], "selfSigned",
        "{identity}"
    );
    let issued_der = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&chain[0])
            .unwrap()
    };
    assert_eq!(
        identity["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        usher_server::x509::sha256_thumbprint(&issued_der.into()),
        "{identity}"
    );
    assert!(identity["authentication"]["symmetricKey"]["primaryKey"].is_null());

    // The issued certificate attests the device in a group whose signing certificate is the
    // issuing CA, over MQTT.
    enroll_x509_group(&s, "issued-devices", &ca).await;
    s.call(Method::DELETE, "/enrollments/csr-dev", None, &[])
        .await;
    let credential = Credential::x509(
        pem_of(&chain[0]).as_bytes(),
        device_key.serialize_pem().as_bytes(),
        None,
    )
    .unwrap();
    let result = s
        .client_over(Transport::Mqtt)
        .provision(&credential, None, |_| {})
        .await
        .unwrap();
    let state = result.registration_state.unwrap();
    assert_eq!(state.device_id.as_deref(), Some("csr-dev"));
    assert_eq!(state.x509.unwrap()["enrollmentGroupId"], "issued-devices");
}

/// `usherCredentialPolicy` on an enrollment or group: checked on write, applied at issuance (the
/// certificate's validity, the CSR key types allowed).
#[tokio::test]
async fn a_credential_policy_limits_issued_certificates() {
    let ca = Cert::new("Usher Issuing CA", true, (-1, 365), None);
    let issuing = usher_server::issuance::IssuingCa::from_pem(
        &ca.pem,
        &ca.key.serialize_pem(),
        crate::support::unix_now(),
    )
    .unwrap();
    let s = TestServer::start_with(usher_server::Settings {
        issuing_ca: Some(std::sync::Arc::new(issuing)),
        ..usher_server::Settings::default()
    })
    .await;

    // A policy out of range, or naming an unknown key type, is refused on write.
    for (path, id_field, bad) in [
        (
            "/enrollments/pol-dev",
            "registrationId",
            json!({"validityDays": 0}),
        ),
        (
            "/enrollmentGroups/pol-grp",
            "enrollmentGroupId",
            json!({"keyTypes": ["dsa-1024"]}),
        ),
    ] {
        let id = path.rsplit('/').next().unwrap();
        let body = json!({
            id_field: id,
            "attestation": {"type": "symmetricKey"},
            "usherCredentialPolicy": bad,
        });
        let (status, _, answer) = s.call(Method::PUT, path, Some(body), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("usherCredentialPolicy"),
            "{answer}"
        );
    }

    let policy = json!({"validityDays": 7, "keyTypes": ["rsa-2048"]});
    let (key, _) = s
        .enroll("pol-dev", json!({"usherCredentialPolicy": policy.clone()}))
        .await;
    let (_, _, stored) = s.call(Method::GET, "/enrollments/pol-dev", None, &[]).await;
    assert_eq!(stored["usherCredentialPolicy"], policy, "{stored}");
    let token = s.token("pol-dev", &key);
    let register = format!(
        "/{}/registrations/pol-dev/register?api-version=2025-07-01-preview",
        s.scope
    );
    // The CSR's P-256 key is not allowed: 400, and nothing is recorded.
    let body = json!({"registrationId": "pol-dev", "csr": csr("pol-dev").0});
    let (status, _, answer) = s
        .device_request(
            Method::PUT,
            &register,
            Some(&token),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["errorCode"], 400_004, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("ecdsa-p256") && message.contains("rsa-2048"),
        "{answer}"
    );
    assert_eq!(s.registration("pol-dev").await.0, StatusCode::NOT_FOUND);

    // Allowing P-256 too: the certificate is issued, valid for 7 days (after 5 minutes'
    // backdating for devices whose clocks lag).
    let policy = json!({"validityDays": 7, "keyTypes": ["rsa-2048", "ecdsa-p256"]});
    let mut updated = stored.clone();
    updated["usherCredentialPolicy"] = policy;
    let (status, _, answer) = s
        .call(
            Method::PUT,
            "/enrollments/pol-dev",
            Some(updated),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, _, answer) = s
        .device_request(
            Method::PUT,
            &register,
            Some(&token),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let operation = answer["operationId"].as_str().unwrap().to_owned();
    let (_, _, polled) = s
        .device_request(
            Method::GET,
            &format!(
                "/{}/registrations/pol-dev/operations/{operation}?api-version=2025-07-01-preview",
                s.scope
            ),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(polled["status"], "assigned", "{polled}");
    let leaf = polled["registrationState"]["issuedCertificateChain"][0]
        .as_str()
        .unwrap();
    let der = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(leaf)
            .unwrap()
    };
    let (_, cert) = {
        use x509_parser::prelude::FromDer as _;
        x509_parser::certificate::X509Certificate::from_der(&der).unwrap()
    };
    let validity = cert.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        7 * 86_400 + 300
    );
}

/// A proof-of-possession certificate: its CN is `code`, signed by `ca`'s key.
fn proof(code: &str, ca: &Cert) -> Value {
    json!({"certificate": Cert::new(code, false, (-1, 1), Some(ca)).pem})
}

/// The error code of a refused management call.
fn error_code(answer: &(StatusCode, reqwest::header::HeaderMap, Value)) -> (StatusCode, u64) {
    (answer.0, answer.2["errorCode"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn verified_ca_certificates_by_proof_of_possession_and_ca_references() {
    let s = TestServer::start().await;
    let root = Cert::new("ca-root", true, (-1, 365), None);
    let other = Cert::new("ca-root", true, (-1, 365), None);
    let path = "/usher/certificates/Root-1";

    // Upload: shown unverified, with what the certificate says; the certificate must be a CA.
    let (status, _, ca) = s
        .call(
            Method::PUT,
            path,
            Some(json!({"certificate": root.pem})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ca}");
    assert_eq!(ca["name"], "Root-1");
    assert_eq!(ca["properties"]["isVerified"], false);
    assert_eq!(ca["properties"]["subject"], "CN=ca-root");
    assert_eq!(
        ca["properties"]["thumbprint"],
        ca["properties"]["info"]["sha1Thumbprint"]
    );
    assert!(ca["properties"].get("verificationCode").is_none(), "{ca}");
    let again = s
        .call(
            Method::PUT,
            path,
            Some(json!({"certificate": root.pem})),
            &[],
        )
        .await;
    assert_eq!(error_code(&again), (StatusCode::CONFLICT, 409_230));
    let leaf = Cert::device("not-a-ca");
    let refused = s
        .call(
            Method::PUT,
            "/usher/certificates/leaf",
            Some(json!({"certificate": leaf.pem})),
            &[],
        )
        .await;
    assert_eq!(error_code(&refused), (StatusCode::BAD_REQUEST, 400_004));
    assert!(
        refused.2["message"]
            .as_str()
            .unwrap()
            .contains("cannot sign"),
        "{}",
        refused.2
    );
    let (_, _, list) = s.call(Method::GET, "/usher/certificates", None, &[]).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // Enrollments name CAs that exist; an unknown name is refused and nothing is stored.
    let group = |ca_name: &str| {
        json!({"enrollmentGroupId": "grp-ca", "attestation": {"type": "x509",
            "x509": {"caReferences": {"primary": ca_name}}}})
    };
    let unknown = s
        .call(
            Method::PUT,
            "/enrollmentGroups/grp-ca",
            Some(group("no-such-ca")),
            &[],
        )
        .await;
    assert_eq!(error_code(&unknown), (StatusCode::BAD_REQUEST, 400_004));
    assert!(
        unknown.2["message"]
            .as_str()
            .unwrap()
            .contains("names no CA certificate"),
        "{}",
        unknown.2
    );
    let (status, _, _) = s
        .call(Method::GET, "/enrollmentGroups/grp-ca", None, &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, doc) = s
        .call(
            Method::PUT,
            "/enrollmentGroups/grp-ca",
            Some(group("root-1")),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(
        doc["attestation"]["x509"]["caReferences"]["primary"],
        "root-1"
    );

    // Until the CA is verified its devices are refused.
    let device = Cert::new("ca-dev-https", false, (-1, 30), Some(&root));
    let https = s.client_over(Transport::Https);
    assert_unauthorized(
        https.provision(&device.credential(&[]), None, |_| {}).await,
        "unverified CA",
    );

    // Proof of possession: each code is judged once.
    let generate = format!("{path}/generateVerificationCode");
    let verify = format!("{path}/verify");
    let no_code = s
        .call(Method::POST, &verify, Some(proof("x", &root)), &[])
        .await;
    assert_eq!(error_code(&no_code), (StatusCode::BAD_REQUEST, 400_004));
    let (status, _, coded) = s.call(Method::POST, &generate, None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{coded}");
    let code = coded["properties"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(code.len(), 32, "{code}");
    let wrong_cn = s
        .call(
            Method::POST,
            &verify,
            Some(proof("not-the-code", &root)),
            &[],
        )
        .await;
    assert_eq!(error_code(&wrong_cn), (StatusCode::BAD_REQUEST, 400_004));
    assert!(
        wrong_cn.2["message"]
            .as_str()
            .unwrap()
            .contains("not the verification code"),
        "{}",
        wrong_cn.2
    );
    // The code was used up by the refused proof.
    let reused = s
        .call(Method::POST, &verify, Some(proof(&code, &root)), &[])
        .await;
    assert_eq!(error_code(&reused), (StatusCode::BAD_REQUEST, 400_004));
    let code = s.call(Method::POST, &generate, None, &[]).await.2["properties"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong_key = s
        .call(Method::POST, &verify, Some(proof(&code, &other)), &[])
        .await;
    assert_eq!(error_code(&wrong_key), (StatusCode::BAD_REQUEST, 400_004));
    assert!(
        wrong_key.2["message"]
            .as_str()
            .unwrap()
            .contains("not signed by the CA"),
        "{}",
        wrong_key.2
    );
    let (_, _, coded) = s.call(Method::POST, &generate, None, &[]).await;
    let code = coded["properties"]["verificationCode"].as_str().unwrap();
    let stale = s
        .call(
            Method::POST,
            &verify,
            Some(proof(code, &root)),
            &[("If-Match", "\"not-the-etag\"")],
        )
        .await;
    assert_eq!(
        error_code(&stale),
        (StatusCode::PRECONDITION_FAILED, 412_001)
    );
    let etag = coded["etag"].as_str().unwrap();
    let (status, _, verified) = s
        .call(
            Method::POST,
            &verify,
            Some(proof(code, &root)),
            &[("If-Match", etag)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["properties"]["isVerified"], true);

    // Now the group's devices provision on every transport, as certificate-authority identities.
    for transport in ALL {
        let id = format!("ca-dev-{}", format!("{transport:?}").to_lowercase());
        let leaf = Cert::new(&id, false, (-1, 30), Some(&root));
        let result = s
            .client_over(transport)
            .provision(&leaf.credential(&[]), None, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        assert_eq!(
            result.registration_state.unwrap().device_id.as_deref(),
            Some(id.as_str())
        );
    }
    let (_, record) = s.registration("ca-dev-mqtt").await;
    assert_eq!(record["x509"]["enrollmentGroupId"], "grp-ca", "{record}");
    assert_eq!(
        record["x509"]["signingCertificateInfo"]["subjectName"],
        "CN=ca-root"
    );
    let (_, _, identity) = crate::parity::hub_call(
        &s,
        &s.hub_key,
        Method::GET,
        "/devices/ca-dev-amqp",
        None,
        None,
    )
    .await;
    assert_eq!(
        identity["authentication"]["type"], "selfSigned",
        "{identity}"
    );
    // Another CA's device with the same CA name is still refused.
    let foreign = Cert::new("ca-foreign", false, (-1, 30), Some(&other));
    assert_unauthorized(
        https
            .provision(&foreign.credential(&[]), None, |_| {})
            .await,
        "another CA",
    );

    // An individual enrollment may name a CA too.
    let (status, _, doc) = s
        .call(
            Method::PUT,
            "/enrollments/ca-single",
            Some(
                json!({"registrationId": "ca-single", "attestation": {"type": "x509",
                "x509": {"caReferences": {"primary": "Root-1"}}}}),
            ),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let single = Cert::new("ca-single", false, (-1, 30), Some(&root));
    https
        .provision(&single.credential(&[]), None, |_| {})
        .await
        .unwrap();
    let (_, record) = s.registration("ca-single").await;
    assert!(
        record["x509"].get("enrollmentGroupId").is_none(),
        "{record}"
    );

    // Declared verified on upload, as DPS allows (ARM's body shape); replacing the certificate
    // under If-Match makes it unverified again unless declared.
    let (status, _, declared) = s
        .call(
            Method::PUT,
            "/usher/certificates/other",
            Some(json!({"properties": {"certificate": other.pem, "isVerified": true}})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{declared}");
    assert_eq!(declared["properties"]["isVerified"], true);
    let (status, _, replaced) = s
        .call(
            Method::PUT,
            "/usher/certificates/other",
            Some(json!({"certificate": root.pem})),
            &[("If-Match", declared["etag"].as_str().unwrap())],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["properties"]["isVerified"], false);

    // Deleting the CA (under its etag) refuses its devices again.
    let stale = s
        .call(Method::DELETE, path, None, &[("If-Match", "\"old\"")])
        .await;
    assert_eq!(
        error_code(&stale),
        (StatusCode::PRECONDITION_FAILED, 412_001)
    );
    let (status, _, _) = s.call(Method::DELETE, path, None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let gone = s.call(Method::GET, path, None, &[]).await;
    assert_eq!(error_code(&gone), (StatusCode::NOT_FOUND, 404_230));
    let late = Cert::new("ca-dev-late", false, (-1, 30), Some(&root));
    assert_unauthorized(
        https.provision(&late.credential(&[]), None, |_| {}).await,
        "deleted CA",
    );

    // Every write went into the audit log.
    let (_, _, audit) = s
        .call(Method::GET, "/usher/audit?limit=500", None, &[])
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("certificate."))
        .collect();
    for action in [
        "certificate.put",
        "certificate.generateVerificationCode",
        "certificate.verify",
        "certificate.delete",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

/// A device's registration record, as the management API shows it.
async fn record_of(s: &TestServer, id: &str) -> Value {
    let (status, record) = s.registration(id).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    record
}
