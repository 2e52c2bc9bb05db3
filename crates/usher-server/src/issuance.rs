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

/// How long an issued certificate is valid when the enrollment sets no credential policy.
pub const VALIDITY: Duration = Duration::days(30);
/// The enrollment and group field (an Usher extension) holding the [`CredentialPolicy`].
pub const POLICY_FIELD: &str = "usherCredentialPolicy";
/// The longest validity a credential policy may set, in days.
pub const MAX_VALIDITY_DAYS: u32 = 3650;
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
    #[error(
        "the csr's key is {found}, which the enrollment's {POLICY_FIELD} does not allow \
         (keyTypes: {allowed})"
    )]
    KeyType { found: String, allowed: String },
}

/// A public key's type, as a credential policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum KeyType {
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl KeyType {
    /// The name a credential policy uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
            Self::Ed25519 => "ed25519",
        }
    }
}

/// What an enrollment or group allows the certificates issued to its devices
/// (`usherCredentialPolicy`, an Usher extension): their validity in days (1 to
/// [`MAX_VALIDITY_DAYS`], default 30) and the key types a CSR may carry (default any).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialPolicy {
    #[serde(default = "default_validity_days")]
    pub validity_days: u32,
    #[serde(default)]
    pub key_types: Option<Vec<KeyType>>,
}

fn default_validity_days() -> u32 {
    30
}

impl Default for CredentialPolicy {
    fn default() -> Self {
        Self {
            validity_days: default_validity_days(),
            key_types: None,
        }
    }
}

impl CredentialPolicy {
    /// The policy in an enrollment's extension fields (the default when it sets none), checked:
    /// the error names what is wrong.
    pub fn from_fields(
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, String> {
        let Some(value) = fields.get(POLICY_FIELD) else {
            return Ok(Self::default());
        };
        if value.is_null() {
            return Ok(Self::default());
        }
        let policy: Self = serde_json::from_value(value.clone()).map_err(|e| {
            format!(
                "invalid {POLICY_FIELD}: {e} (validityDays: 1 to {MAX_VALIDITY_DAYS}; keyTypes: \
                 ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519)"
            )
        })?;
        if !(1..=MAX_VALIDITY_DAYS).contains(&policy.validity_days) {
            return Err(format!(
                "invalid {POLICY_FIELD}: validityDays is {}, it must be 1 to {MAX_VALIDITY_DAYS}",
                policy.validity_days
            ));
        }
        if policy.key_types.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!(
                "invalid {POLICY_FIELD}: keyTypes is empty; leave it out to allow any key type"
            ));
        }
        Ok(policy)
    }

    fn validity(&self) -> Duration {
        Duration::days(i64::from(self.validity_days))
    }

    fn check_key(&self, found: Option<KeyType>, described: &str) -> Result<(), IssuanceError> {
        let Some(allowed) = &self.key_types else {
            return Ok(());
        };
        if found.is_some_and(|k| allowed.contains(&k)) {
            return Ok(());
        }
        Err(IssuanceError::KeyType {
            found: found.map_or_else(|| described.to_owned(), |k| k.name().to_owned()),
            allowed: allowed
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// The type of the public key in a CSR (DER), or a description of a key no policy can name.
fn csr_key_type(der: &[u8]) -> Result<Option<KeyType>, String> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer as _;
    use x509_parser::public_key::PublicKey;
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|e| e.to_string())?;
    let spki = &csr.certification_request_info.subject_pki;
    if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 {
        return Ok(Some(KeyType::Ed25519));
    }
    let key = spki.parsed().map_err(|e| e.to_string())?;
    Ok(match (&key, key.key_size()) {
        (PublicKey::EC(_), 256) => Some(KeyType::EcdsaP256),
        (PublicKey::EC(_), 384) => Some(KeyType::EcdsaP384),
        (PublicKey::RSA(_), 2048) => Some(KeyType::Rsa2048),
        (PublicKey::RSA(_), 3072) => Some(KeyType::Rsa3072),
        (PublicKey::RSA(_), 4096) => Some(KeyType::Rsa4096),
        (PublicKey::RSA(_), bits) => return Err(format!("an RSA key of {bits} bits")),
        _ => None,
    })
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
    /// client authentication, the policy's validity; the CSR's other requested attributes are
    /// ignored. A CSR whose key type the policy does not allow is refused.
    pub fn issue(
        &self,
        registration_id: &str,
        csr_base64: &str,
        policy: &CredentialPolicy,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, IssuanceError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let compact: String = csr_base64.chars().filter(|c| !c.is_whitespace()).collect();
        let der = b64
            .decode(compact)
            .map_err(|e| IssuanceError::NotBase64(e.to_string()))?;
        let key_type = csr_key_type(&der);
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
        match key_type {
            Ok(found) => policy.check_key(found, "a key type no policy names")?,
            Err(described) => policy.check_key(None, &described)?,
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
        params.not_after = now + policy.validity();
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
