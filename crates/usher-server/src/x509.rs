//! X.509 as attestation needs it: the certificate chain a device presented in its TLS handshake,
//! enrollment certificates as stored (PEM or base64 DER), their `info` as DPS shows it, and the
//! checks of a device's chain against an individual enrollment's certificate or a group's signing
//! certificate. Parsing is x509-parser's, path validation and signatures are rustls-webpki's
//! (aws-lc-rs); nothing here is cryptography of its own.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// Why a certificate or a chain was refused. The text is for logs and management answers; a
/// device is only ever told 401002.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("not a certificate: {0}")]
    Malformed(String),
    #[error("the device presented no client certificate")]
    NoCertificate,
    #[error("the certificate has no common name")]
    NoCommonName,
    #[error("the certificate's common name {cn:?} is not the registration ID {registration_id:?}")]
    CommonNameMismatch { cn: String, registration_id: String },
    #[error("the certificate is not valid now (valid from {not_before} to {not_after})")]
    NotValidNow {
        not_before: String,
        not_after: String,
    },
    #[error("the certificate is not the enrollment's primary or secondary certificate")]
    NotEnrolled,
    #[error("the certificate chain does not lead to the signing certificate: {0}")]
    Chain(String),
    #[error("the signing certificate cannot sign certificates: {0}")]
    NotACa(String),
    #[error("no CA certificate is named {0:?}")]
    CaNotFound(String),
    #[error("the CA certificate {0:?} is not verified (no proof of possession yet)")]
    CaNotVerified(String),
    #[error("the proof certificate's common name {cn:?} is not the verification code")]
    WrongVerificationCode { cn: String },
    #[error("the proof certificate is not signed by the CA certificate's key: {0}")]
    NotSignedByCa(String),
}

/// The chain a device presented in its TLS handshake, leaf first, as the transport received it
/// (the TLS layer only checked that the device holds the leaf's key). Empty when it presented none.
#[derive(Clone, Default)]
pub struct ClientChain(Option<Arc<[CertificateDer<'static>]>>);

impl ClientChain {
    /// The chain from a TLS connection's peer certificates (`None`: no client certificate).
    pub fn new(certificates: Option<&[CertificateDer<'_>]>) -> Self {
        Self(
            certificates
                .filter(|c| !c.is_empty())
                .map(|c| c.iter().map(|d| d.clone().into_owned()).collect()),
        )
    }

    pub fn is_present(&self) -> bool {
        self.0.is_some()
    }

    /// The certificates, leaf first.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        self.0.as_deref().unwrap_or_default()
    }

    /// The device's own certificate.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.certificates().first()
    }
}

impl std::fmt::Debug for ClientChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let thumbprints: Vec<String> = self
            .certificates()
            .iter()
            .map(|c| sha1_thumbprint(c))
            .collect();
        f.debug_tuple("ClientChain").field(&thumbprints).finish()
    }
}

/// A certificate as an enrollment holds it: PEM (with or without the armour lines' line breaks),
/// base64 of the DER, or base64 of the PEM text (what the Node SDK's own group e2e test sends),
/// as DPS accepts all three.
pub fn parse_stored(text: &str) -> Result<CertificateDer<'static>, X509Error> {
    let pem = |bytes: &[u8]| {
        CertificateDer::from_pem_slice(bytes).map_err(|e| X509Error::Malformed(format!("PEM: {e}")))
    };
    let trimmed = text.trim();
    let der = if trimmed.starts_with("-----BEGIN") {
        pem(trimmed.as_bytes())?
    } else {
        let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| X509Error::Malformed(format!("neither PEM nor base64 DER ({e})")))?;
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            pem(&bytes)?
        } else {
            CertificateDer::from(bytes)
        }
    };
    parse(&der)?;
    Ok(der)
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, X509Error> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(X509Error::Malformed(
            "trailing bytes after the certificate".into(),
        )),
        Err(e) => Err(X509Error::Malformed(e.to_string())),
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The SHA-1 thumbprint, upper-case hex, as IoT Hub and DPS show it.
pub fn sha1_thumbprint(der: &CertificateDer<'_>) -> String {
    hex_upper(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
}

/// The SHA-256 thumbprint, upper-case hex.
pub fn sha256_thumbprint(der: &CertificateDer<'_>) -> String {
    hex_upper(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// `2023-05-09T20:31:22Z`: whole seconds, as DPS shows certificate times.
fn utc(t: &x509_parser::time::ASN1Time) -> String {
    let at = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// `X509CertificateInfo` as DPS returns it: subject and issuer names, SHA-1 and SHA-256
/// thumbprints (upper-case hex), validity (`…Z`, no fraction), serial number (upper-case hex, as
/// `openssl x509 -serial` prints it) and version (3 for a v3 certificate).
pub fn info(der: &CertificateDer<'_>) -> Result<Value, X509Error> {
    let cert = parse(der)?;
    let serial = cert.raw_serial();
    // DER integers carry a leading zero byte when the high bit is set; openssl does not print it.
    let serial = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    };
    Ok(json!({
        "subjectName": cert.subject().to_string(),
        "sha1Thumbprint": sha1_thumbprint(der),
        "sha256Thumbprint": sha256_thumbprint(der),
        "issuerName": cert.issuer().to_string(),
        "notBeforeUtc": utc(&cert.validity().not_before),
        "notAfterUtc": utc(&cert.validity().not_after),
        "serialNumber": hex_upper(serial),
        "version": cert.version().0 + 1,
    }))
}

/// A certificate as PEM, the way `openssl x509` writes it.
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    pem_of_base64(&base64::engine::general_purpose::STANDARD.encode(der))
}

/// A certificate given as base64 of its DER (as `issuedCertificateChain` holds them), as PEM:
/// the armour lines around the base64 in lines of 64 characters.
pub fn pem_of_base64(b64: &str) -> String {
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Proof of possession of a CA's private key, as DPS asks for it: `proof`'s common name is the
/// verification code Usher handed out, and `proof` is signed by `ca`'s key. The proof's own
/// version, extensions and validity do not matter (`openssl x509 -req` may make a v1
/// certificate), so its signature is checked directly against the CA's public key by
/// rustls-webpki rather than as a chain.
pub fn check_proof_of_possession(
    ca: &CertificateDer<'_>,
    proof: &CertificateDer<'_>,
    code: &str,
) -> Result<(), X509Error> {
    let cn = common_name(proof)?;
    if !cn.eq_ignore_ascii_case(code) {
        return Err(X509Error::WrongVerificationCode { cn });
    }
    let signed = parse(proof)?;
    let signer = webpki::EndEntityCert::try_from(ca)
        .map_err(|e| X509Error::NotSignedByCa(format!("the CA certificate: {e}")))?;
    let tbs = signed.tbs_certificate.as_ref();
    let signature: &[u8] = &signed.signature_value.data;
    // Each algorithm first checks the key and signature types it is for; any one that verifies
    // the signature with the CA's key proves possession of it.
    let verified = webpki::ALL_VERIFICATION_ALGS
        .iter()
        .any(|alg| signer.verify_signature(*alg, tbs, signature).is_ok());
    if verified {
        Ok(())
    } else {
        Err(X509Error::NotSignedByCa(
            "its signature does not verify with the CA's public key".into(),
        ))
    }
}

/// The certificate's (first) common name.
pub fn common_name(der: &CertificateDer<'_>) -> Result<String, X509Error> {
    let cert = parse(der)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or(X509Error::NoCommonName)?;
    cn.as_str()
        .map(str::to_owned)
        .map_err(|_| X509Error::NoCommonName)
}

/// Checks that `der` is valid at `now` (Unix seconds).
pub fn check_validity(der: &CertificateDer<'_>, now: u64) -> Result<(), X509Error> {
    let cert = parse(der)?;
    let v = cert.validity();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
        return Err(X509Error::NotValidNow {
            not_before: utc(&v.not_before),
            not_after: utc(&v.not_after),
        });
    }
    Ok(())
}

/// Checks that a certificate may sign others: basic constraints CA, and `keyCertSign` if it
/// states a key usage at all.
pub fn check_can_sign(der: &CertificateDer<'_>) -> Result<(), X509Error> {
    let cert = parse(der)?;
    let ca = cert
        .basic_constraints()
        .map_err(|e| X509Error::Malformed(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if !ca {
        return Err(X509Error::NotACa(
            "no basic constraints extension with CA:TRUE".into(),
        ));
    }
    let usage = cert
        .key_usage()
        .map_err(|e| X509Error::Malformed(e.to_string()))?;
    if usage.is_some_and(|u| !u.value.key_cert_sign()) {
        return Err(X509Error::NotACa("its key usage lacks keyCertSign".into()));
    }
    Ok(())
}

/// The device's certificate, checked for an individual enrollment: its common name is the
/// registration ID, it is valid now, and it is the enrollment's primary or secondary certificate
/// (compared by SHA-256 thumbprint). Returns which one matched (0 or 1).
pub fn check_individual(
    chain: &ClientChain,
    registration_id: &str,
    enrolled: [Option<&CertificateDer<'_>>; 2],
    now: u64,
) -> Result<usize, X509Error> {
    let leaf = check_leaf(chain, registration_id, now)?;
    let presented = sha256_thumbprint(leaf);
    enrolled
        .iter()
        .position(|c| c.is_some_and(|c| sha256_thumbprint(c) == presented))
        .ok_or(X509Error::NotEnrolled)
}

/// The device's chain, checked for an enrollment group: the leaf's common name is the
/// registration ID, and the chain leads from the leaf through the certificates the device sent to
/// `signing` (the group's root or intermediate), with every certificate valid now, signatures,
/// basic constraints, name constraints and the client-auth extended key usage (when stated)
/// checked by rustls-webpki; the signing certificate itself must be valid now and able to sign.
pub fn check_group(
    chain: &ClientChain,
    registration_id: &str,
    signing: &CertificateDer<'_>,
    now: u64,
) -> Result<(), X509Error> {
    let leaf = check_leaf(chain, registration_id, now)?;
    check_validity(signing, now)?;
    check_can_sign(signing)?;
    let anchor = webpki::anchor_from_trusted_cert(signing)
        .map_err(|e| X509Error::Chain(format!("signing certificate: {e}")))?;
    let end_entity = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| X509Error::Chain(format!("device certificate: {e}")))?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(now));
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &chain.certificates()[1..],
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| X509Error::Chain(e.to_string()))?;
    Ok(())
}

fn check_leaf<'c>(
    chain: &'c ClientChain,
    registration_id: &str,
    now: u64,
) -> Result<&'c CertificateDer<'static>, X509Error> {
    let leaf = chain.leaf().ok_or(X509Error::NoCertificate)?;
    let cn = common_name(leaf)?;
    if !cn.eq_ignore_ascii_case(registration_id) {
        return Err(X509Error::CommonNameMismatch {
            cn,
            registration_id: registration_id.to_owned(),
        });
    }
    check_validity(leaf, now)?;
    Ok(leaf)
}

#[cfg(test)]
mod tests;
