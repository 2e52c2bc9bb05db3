//! What a device holds: its registration ID and its symmetric key, given directly or derived from a
//! group key; or an X.509 certificate chain and its private key.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use usher_proto::sas;
use usher_proto::{IdError, KeyError, RegistrationId, SymmetricKey};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// Why a credential could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("invalid registration ID: {0}")]
    RegistrationId(#[from] IdError),
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("invalid private key: {0}")]
    PrivateKey(String),
}

/// A device's credential: a symmetric key (it signs SAS tokens), or an X.509 certificate (it is
/// presented in the TLS handshake; no token is sent).
#[derive(Debug, Clone)]
pub struct Credential {
    registration_id: RegistrationId,
    secret: Secret,
}

#[derive(Debug, Clone)]
enum Secret {
    Key(SymmetricKey),
    Certificate(ClientCertificate),
}

/// A certificate chain (the device's own certificate first, then any intermediates) and the
/// device's private key.
#[derive(Clone)]
pub struct ClientCertificate {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientCertificate {
    /// The private key never reaches `Debug` output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A device of an individual enrollment, with its own key (base64).
    pub fn individual(registration_id: &str, key_base64: &str) -> Result<Self, CredentialError> {
        Ok(Self {
            registration_id: RegistrationId::parse(registration_id)?,
            secret: Secret::Key(SymmetricKey::from_base64(key_base64)?),
        })
    }

    /// A device with an X.509 certificate: the chain (PEM, the device's certificate first, then
    /// intermediates) and its private key (PEM). The registration ID is the certificate's common
    /// name, as DPS requires, unless one is given.
    pub fn x509(
        chain_pem: &[u8],
        key_pem: &[u8],
        registration_id: Option<&str>,
    ) -> Result<Self, CredentialError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CredentialError::Certificate(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| CredentialError::Certificate("no certificate in the PEM".into()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| CredentialError::PrivateKey(e.to_string()))?;
        let registration_id = match registration_id {
            Some(id) => id.to_owned(),
            None => common_name(leaf)?,
        };
        Ok(Self {
            registration_id: RegistrationId::parse(&registration_id)?,
            secret: Secret::Certificate(ClientCertificate {
                chain,
                key: Arc::new(key),
            }),
        })
    }

    /// A device of an enrollment group: its key is derived from the group key (base64) and the
    /// registration ID as spelled here.
    pub fn from_group_key(
        registration_id: &str,
        group_key_base64: &str,
    ) -> Result<Self, CredentialError> {
        let registration_id = RegistrationId::parse(registration_id)?;
        let key = SymmetricKey::from_base64(group_key_base64)?
            .derive_device_key(registration_id.as_str());
        Ok(Self {
            registration_id,
            secret: Secret::Key(key),
        })
    }

    pub fn registration_id(&self) -> &RegistrationId {
        &self.registration_id
    }

    /// The symmetric key, if this is a symmetric-key credential.
    pub fn key(&self) -> Option<&SymmetricKey> {
        match &self.secret {
            Secret::Key(key) => Some(key),
            Secret::Certificate(_) => None,
        }
    }

    /// The certificate and key, if this is an X.509 credential.
    pub fn certificate(&self) -> Option<&ClientCertificate> {
        match &self.secret {
            Secret::Key(_) => None,
            Secret::Certificate(c) => Some(c),
        }
    }

    /// A SAS token for `id_scope` that expires at `expiry` (Unix seconds); `None` for an X.509
    /// credential, which sends no token.
    pub fn token(&self, id_scope: &str, expiry: u64) -> Option<String> {
        self.key()
            .map(|key| sas::device_token(id_scope, self.registration_id.as_str(), key, expiry))
    }
}

/// The certificate's first common name.
fn common_name(der: &CertificateDer<'_>) -> Result<String, CredentialError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| CredentialError::Certificate(e.to_string()))?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            CredentialError::Certificate(
                "the certificate has no common name to use as the registration ID".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use usher_proto::sas::{Now, verify_device_token};

    const GROUP: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

    #[test]
    fn group_credential_signs_with_the_derived_key() {
        let cred =
            Credential::from_group_key("sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", GROUP).unwrap();
        assert_eq!(
            cred.key().unwrap().to_base64(),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
        let token = cred.token("0ne00000001", 100).unwrap();
        let now = Now {
            unix_secs: 50,
            skew_secs: 0,
        };
        assert_eq!(
            verify_device_token(
                &token,
                "0ne00000001",
                "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
                &[cred.key().unwrap()],
                now
            ),
            Ok(0)
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(matches!(
            Credential::individual("bad/id", GROUP),
            Err(CredentialError::RegistrationId(_))
        ));
        assert!(matches!(
            Credential::individual("dev", "%%%"),
            Err(CredentialError::Key(_))
        ));
    }
}
