//! Keys at rest: envelope encryption.
//!
//! Every secret the store holds (enrollment and group keys, derived device keys, every policy key)
//! is sealed with AES-256-GCM under the instance's data-encryption key (DEK), with a random nonce
//! per value. The DEK is kept in the database only wrapped (AES-256-GCM again) by the
//! key-encryption key (KEK), which never enters the database: it comes from a file, an environment
//! variable or a systemd credential, or is generated on first run into the data directory (0600).
//! Rotating the KEK re-wraps the DEK; the sealed values do not change. The AEAD is aws-lc-rs's
//! (already under rustls); nothing here is written by hand but the framing.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};

/// What a sealed value starts with; anything else in a secret column is plaintext from before
/// encryption (sealed on the next start) or corruption.
pub const SEALED_PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;
/// Binds a ciphertext to its purpose, so a wrapped DEK cannot pass for a sealed value.
const AAD_VALUE: &[u8] = b"usher secret v1";
const AAD_DEK: &[u8] = b"usher data key v1";

/// The environment variable holding the KEK itself (base64 of 32 bytes).
pub const KEK_ENV: &str = "USHER_KEK";
/// The environment variable naming a file that holds the KEK.
pub const KEK_FILE_ENV: &str = "USHER_KEK_FILE";
/// The systemd credential name (`LoadCredential=usher-kek:/etc/usher/kek`).
pub const KEK_CREDENTIAL: &str = "usher-kek";
/// The file a generated KEK is written to, inside the data directory.
pub const KEK_FILE: &str = "kek";

/// Why a secret could not be kept or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("the key-encryption key from {source_name} is not 32 bytes of base64")]
    BadKek { source_name: String },
    #[error("cannot read the key-encryption key from {path}: {reason}")]
    KekUnreadable { path: String, reason: String },
    #[error("cannot write the key-encryption key to {path}: {reason}")]
    KekUnwritable { path: String, reason: String },
    #[error(
        "the key-encryption key from {source_name} (id {given}) is not the one this instance's keys \
         are wrapped with (id {expected}); give that one (--kek-file, {KEK_FILE_ENV}, {KEK_ENV} or the \
         systemd credential {KEK_CREDENTIAL}) or restore the data directory's {KEK_FILE} file"
    )]
    WrongKek {
        source_name: String,
        given: String,
        expected: String,
    },
    #[error("a sealed value does not open with this instance's data key (tampered or corrupt)")]
    Unopenable,
    #[error("cannot draw random bytes for a key")]
    Random,
}

/// A key-encryption key. Its `Debug` shows only its ID.
#[derive(Clone)]
pub struct Kek {
    bytes: [u8; KEY_LEN],
    /// Where it came from, for messages.
    source_name: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id())
            .field("source", &self.source_name)
            .finish()
    }
}

impl Kek {
    /// A new random KEK.
    pub fn generate(source_name: impl Into<String>) -> Result<Self, SecretError> {
        Ok(Self {
            bytes: random_key()?,
            source_name: source_name.into(),
        })
    }

    /// Reads a KEK from its base64 text.
    pub fn from_base64(text: &str, source_name: impl Into<String>) -> Result<Self, SecretError> {
        let source_name = source_name.into();
        let bytes = B64
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
            .ok_or_else(|| SecretError::BadKek {
                source_name: source_name.clone(),
            })?;
        Ok(Self { bytes, source_name })
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.bytes)
    }

    /// A short, public identifier: the first 8 bytes of the SHA-256 of the key, in hex.
    pub fn id(&self) -> String {
        Sha256::digest(self.bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Wraps a data key for storage.
    pub fn wrap(&self, dek: &DataKey) -> Result<String, SecretError> {
        seal_bytes(&self.bytes, AAD_DEK, &dek.0)
    }

    /// Unwraps a stored data key; `expected_id` is the ID of the KEK it was wrapped with.
    pub fn unwrap(&self, wrapped: &str, expected_id: &str) -> Result<DataKey, SecretError> {
        let wrong = || SecretError::WrongKek {
            source_name: self.source_name.clone(),
            given: self.id(),
            expected: expected_id.to_owned(),
        };
        if self.id() != expected_id {
            return Err(wrong());
        }
        let bytes = open_bytes(&self.bytes, AAD_DEK, wrapped).map_err(|_| wrong())?;
        <[u8; KEY_LEN]>::try_from(bytes)
            .map(DataKey)
            .map_err(|_| SecretError::Unopenable)
    }
}

/// A data-encryption key. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct DataKey([u8; KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(…)")
    }
}

impl DataKey {
    pub fn generate() -> Result<Self, SecretError> {
        random_key().map(Self)
    }
}

/// Seals and opens secret values with the instance's data key.
#[derive(Clone)]
pub struct Sealer {
    dek: DataKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(…)")
    }
}

impl Sealer {
    pub fn new(dek: DataKey) -> Self {
        Self { dek }
    }

    /// `sealed:v1:` + base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, plain: &str) -> Result<String, SecretError> {
        seal_bytes(&self.dek.0, AAD_VALUE, plain.as_bytes())
    }

    /// Opens a sealed value.
    pub fn open(&self, text: &str) -> Result<String, SecretError> {
        let bytes = open_bytes(&self.dek.0, AAD_VALUE, text)?;
        String::from_utf8(bytes).map_err(|_| SecretError::Unopenable)
    }

    /// Whether a stored value is sealed (as opposed to plaintext from before encryption).
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(SEALED_PREFIX)
    }
}

fn random_key() -> Result<[u8; KEY_LEN], SecretError> {
    let mut key = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| SecretError::Random)?;
    Ok(key)
}

fn seal_bytes(key: &[u8; KEY_LEN], aad: &[u8], plain: &[u8]) -> Result<String, SecretError> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| SecretError::Random)?;
    let mut in_out = plain.to_vec();
    let nonce = key
        .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
        .map_err(|_| SecretError::Random)?;
    let mut framed = nonce.as_ref().to_vec();
    framed.extend_from_slice(&in_out);
    Ok(format!("{SEALED_PREFIX}{}", B64.encode(framed)))
}

fn open_bytes(key: &[u8; KEY_LEN], aad: &[u8], text: &str) -> Result<Vec<u8>, SecretError> {
    let framed = text
        .strip_prefix(SEALED_PREFIX)
        .and_then(|b| B64.decode(b).ok())
        .filter(|f| f.len() > NONCE_LEN)
        .ok_or(SecretError::Unopenable)?;
    let (nonce, sealed) = framed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Unopenable)?;
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| SecretError::Unopenable)?;
    let mut in_out = sealed.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut in_out)
        .map_err(|_| SecretError::Unopenable)?;
    Ok(plain.to_vec())
}

/// Where the KEK is to come from, in order: `--kek-file`, `USHER_KEK_FILE`, `USHER_KEK`, the
/// systemd credential `usher-kek`, else the data directory's `kek` file (created on first run).
#[derive(Debug, Clone, Default)]
pub struct KekSource {
    /// `--kek-file`.
    pub file: Option<PathBuf>,
}

impl KekSource {
    /// Loads the KEK; with none configured and none in the data directory, generates one there
    /// (0600) if `create` is set.
    pub fn load(&self, data_dir: &Path, create: bool) -> Result<Kek, SecretError> {
        if let Some(path) = self
            .file
            .clone()
            .or_else(|| std::env::var_os(KEK_FILE_ENV).map(PathBuf::from))
        {
            return read_kek_file(&path);
        }
        if let Ok(text) = std::env::var(KEK_ENV) {
            return Kek::from_base64(&text, format!("${KEK_ENV}"));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join(KEK_CREDENTIAL);
            if path.exists() {
                return read_kek_file(&path);
            }
        }
        let path = data_dir.join(KEK_FILE);
        if path.exists() || !create {
            return read_kek_file(&path);
        }
        let kek = Kek::generate(path.display().to_string())?;
        write_kek_file(&path, &kek)?;
        Ok(kek)
    }

    /// Whether the KEK lives in the data directory (so `usher kek rotate` may replace it there).
    pub fn is_data_dir(&self) -> bool {
        self.file.is_none()
            && std::env::var_os(KEK_FILE_ENV).is_none()
            && std::env::var_os(KEK_ENV).is_none()
            && std::env::var_os("CREDENTIALS_DIRECTORY")
                .is_none_or(|d| !Path::new(&d).join(KEK_CREDENTIAL).exists())
    }
}

fn read_kek_file(path: &Path) -> Result<Kek, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecretError::KekUnreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Kek::from_base64(&text, path.display().to_string())
}

/// Writes a KEK file readable by its owner only, replacing any file there atomically.
pub fn write_kek_file(path: &Path, kek: &Kek) -> Result<(), SecretError> {
    let unwritable = |e: std::io::Error| SecretError::KekUnwritable {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("new");
    crate::files::write_private(&tmp, format!("{}\n", kek.to_base64()).as_bytes())
        .map_err(unwritable)?;
    std::fs::rename(&tmp, path).map_err(unwritable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_and_every_seal_differs() {
        let sealer = Sealer::new(DataKey::generate().unwrap());
        let a = sealer.seal("the key").unwrap();
        let b = sealer.seal("the key").unwrap();
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(a.starts_with(SEALED_PREFIX) && !a.contains("the key"));
        assert_eq!(sealer.open(&a).unwrap(), "the key");
        let other = Sealer::new(DataKey::generate().unwrap());
        assert!(matches!(other.open(&a), Err(SecretError::Unopenable)));
        let mut tampered = a.into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(sealer.open(&String::from_utf8(tampered).unwrap()).is_err());
        assert!(sealer.open("plain").is_err());
    }

    #[test]
    fn a_data_key_unwraps_only_with_its_kek() {
        let kek = Kek::generate("test").unwrap();
        let dek = DataKey::generate().unwrap();
        let wrapped = kek.wrap(&dek).unwrap();
        let back = kek.unwrap(&wrapped, &kek.id()).unwrap();
        assert_eq!(back.0, dek.0);
        let other = Kek::generate("other").unwrap();
        let err = other.unwrap(&wrapped, &kek.id()).unwrap_err();
        assert!(err.to_string().contains(&kek.id()), "{err}");
        // A wrapped data key is not a sealed value, and the other way round.
        let sealer = Sealer::new(dek);
        assert!(sealer.open(&wrapped).is_err());
        assert!(!format!("{kek:?}").contains(&kek.to_base64()));
    }
}
