//! Symmetric keys: decoding and validating user-supplied keys, generating keys from injected random
//! bytes, and deriving a group member's device key.
//!
//! A device of an enrollment group holds `base64(HMAC-SHA256(base64decode(groupKey), registrationId))`,
//! computed offline, so the group key itself never sits on a device.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Shortest user-supplied key DPS accepts, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// Longest user-supplied key DPS accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// Length of keys Usher generates when the user supplies none.
pub const DEFAULT_KEY_BYTES: usize = 32;
/// A base64 text longer than this cannot decode to a valid key; refuse before decoding.
const MAX_KEY_TEXT: usize = 4 * MAX_KEY_BYTES.div_ceil(3);

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the key is not valid base64: {0}")]
    BadBase64(String),
    #[error("the key is {len} bytes long; keys must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")]
    WrongLength { len: usize },
}

/// A symmetric key of 16 to 64 bytes.
///
/// `Debug` does not print the key material, so keys never reach logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SymmetricKey(Vec<u8>);

impl std::fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SymmetricKey({} bytes)", self.0.len())
    }
}

impl SymmetricKey {
    /// Decodes and validates a base64 key as users and enrollments supply it.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if text.len() > MAX_KEY_TEXT {
            // Report the length the text would decode to, without decoding it.
            return Err(KeyError::WrongLength {
                len: text.len() / 4 * 3,
            });
        }
        let bytes = STANDARD
            .decode(text)
            .map_err(|e| KeyError::BadBase64(e.to_string()))?;
        Self::from_bytes(bytes)
    }

    /// Wraps raw key bytes, checking the length.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, KeyError> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
            return Err(KeyError::WrongLength { len: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// Builds a new key from random bytes the caller drew (this crate draws none).
    /// The key is as long as `random`, which must be 16 to 64 bytes.
    pub fn generate(random: &[u8]) -> Result<Self, KeyError> {
        Self::from_bytes(random.to_vec())
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as standard base64 with padding, as DPS shows it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.0)
    }

    /// Derives the device key of `registration_id` from this group key.
    ///
    /// The registration ID is used exactly as the device spells it: HMAC is case-sensitive, so
    /// `Dev-1` and `dev-1` derive different keys.
    pub fn derive_device_key(&self, registration_id: &str) -> Self {
        Self(hmac_sha256(&self.0, registration_id.as_bytes()).to_vec())
    }
}

/// HMAC-SHA256 of `message` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = new_mac(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Checks an HMAC-SHA256 tag in constant time.
pub(crate) fn hmac_sha256_verify(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let mut mac = new_mac(key);
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of any length, so this cannot fail; `new_from_slice` only returns
    // an error for MACs with fixed key sizes.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

#[cfg(test)]
mod tests;
