//! Device certificates issued at registration (api-version 2025-07-01-preview): a register body's
//! `csr` (base64 DER PKCS#10, its common name the registration ID) becomes a client certificate
//! signed by the configured issuing CA, returned as `issuedCertificateChain` (the device's
//! certificate, then the CA's chain as configured). Parsing and the CSR's signature check are
//! x509-parser's (through rcgen), signing is rcgen's with aws-lc-rs.

use base64::Engine as _;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::{Duration, OffsetDateTime};

/// How long an issued certificate is valid.
pub const VALIDITY: Duration = Duration::days(30);
/// How far back an issued certificate's validity starts, for devices whose clocks lag.
const BACKDATE: Duration = Duration::minutes(5);

/// Why a CA could not be loaded, or a CSR not be signed.
#[derive(Debug, thiserror::Error)]
pub enum IssuanceError {
    #[error("the issuing CA certificate: {0}")]
    Certificate(String),
    #[error("the issuing CA key: {0}")]
    Key(String),
    #[error("csr is not base64 DER: {0}")]
    NotBase64(String),
    #[error("csr is not a PKCS#10 request with a valid signature: {0}")]
    BadRequest(String),
    #[error("the csr's common name {cn:?} is not the registration ID {registration_id:?}")]
    CommonName { cn: String, registration_id: String },
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

/// The CA that signs devices' certificates, and the chain above it.
pub struct IssuingCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate first, then any certificates above it, as configured.
    chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for IssuingCa {
    /// The key never reaches `Debug` output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let subjects: Vec<String> = self
            .chain
            .iter()
            .map(crate::x509::sha1_thumbprint)
            .collect();
        f.debug_struct("IssuingCa")
            .field("chain", &subjects)
            .finish_non_exhaustive()
    }
}

impl IssuingCa {
    /// The CA from its certificate (PEM: the CA's own certificate first, then optionally the
    /// certificates above it up to the root) and its private key (PEM). The certificate must be a
    /// CA certificate that is valid now.
    pub fn from_pem(cert_pem: &str, key_pem: &str, now: u64) -> Result<Self, IssuanceError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IssuanceError::Certificate(e.to_string()))?;
        let ca = chain
            .first()
            .ok_or_else(|| IssuanceError::Certificate("no certificate in the PEM".into()))?;
        crate::x509::check_can_sign(ca).map_err(|e| IssuanceError::Certificate(e.to_string()))?;
        crate::x509::check_validity(ca, now)
            .map_err(|e| IssuanceError::Certificate(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| IssuanceError::Key(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(ca, key)
            .map_err(|e| IssuanceError::Certificate(e.to_string()))?;
        Ok(Self { issuer, chain })
    }

    /// The issuing CA's own certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Signs a device's certificate for `csr_base64` (base64 DER PKCS#10; its signature is
    /// checked, its common name must be the registration ID) and returns the chain as DPS returns
    /// it: base64 DER, the device's certificate first. The certificate carries only what Usher
    /// chooses: the registration ID as common name, the CSR's public key, digital signature and
    /// client authentication, [`VALIDITY`]; the CSR's other requested attributes are ignored.
    pub fn issue(
        &self,
        registration_id: &str,
        csr_base64: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, IssuanceError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let compact: String = csr_base64.chars().filter(|c| !c.is_whitespace()).collect();
        let der = b64
            .decode(compact)
            .map_err(|e| IssuanceError::NotBase64(e.to_string()))?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
                .map_err(|e| IssuanceError::BadRequest(e.to_string()))?;
        let cn = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(dn_text)
            .unwrap_or_default();
        if !cn.eq_ignore_ascii_case(registration_id) {
            return Err(IssuanceError::CommonName {
                cn,
                registration_id: registration_id.to_owned(),
            });
        }
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, registration_id);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + VALIDITY;
        let serial = crate::app::random_vec(16).map_err(|e| IssuanceError::Sign(e.to_string()))?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| IssuanceError::Sign(e.to_string()))?;
        let mut chain = vec![b64.encode(cert.der())];
        chain.extend(self.chain.iter().map(|c| b64.encode(c)));
        Ok(chain)
    }
}

/// A distinguished-name value as text (the string types a CSR's common name is written in).
fn dn_text(value: &DnValue) -> String {
    match value {
        DnValue::Utf8String(s) => s.clone(),
        DnValue::PrintableString(s) => s.as_str().to_owned(),
        DnValue::Ia5String(s) => s.as_str().to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
