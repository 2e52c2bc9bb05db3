//! What a device holds: its registration ID and its symmetric key, given directly or derived from a
//! group key.

use usher_proto::sas;
use usher_proto::{IdError, KeyError, RegistrationId, SymmetricKey};

/// Why a credential could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("invalid registration ID: {0}")]
    RegistrationId(#[from] IdError),
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
}

/// A device's symmetric-key credential.
#[derive(Debug, Clone)]
pub struct Credential {
    registration_id: RegistrationId,
    key: SymmetricKey,
}

impl Credential {
    /// A device of an individual enrollment, with its own key (base64).
    pub fn individual(registration_id: &str, key_base64: &str) -> Result<Self, CredentialError> {
        Ok(Self {
            registration_id: RegistrationId::parse(registration_id)?,
            key: SymmetricKey::from_base64(key_base64)?,
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
            key,
        })
    }

    pub fn registration_id(&self) -> &RegistrationId {
        &self.registration_id
    }

    pub fn key(&self) -> &SymmetricKey {
        &self.key
    }

    /// A SAS token for `id_scope` that expires at `expiry` (Unix seconds).
    pub fn token(&self, id_scope: &str, expiry: u64) -> String {
        sas::device_token(id_scope, self.registration_id.as_str(), &self.key, expiry)
    }
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
            cred.key().to_base64(),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
        let token = cred.token("0ne00000001", 100);
        let now = Now {
            unix_secs: 50,
            skew_secs: 0,
        };
        assert_eq!(
            verify_device_token(
                &token,
                "0ne00000001",
                "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
                &[cred.key()],
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
