//! Registration IDs and ID scopes.

use std::fmt;

/// Longest registration ID DPS accepts, in characters.
pub const MAX_REGISTRATION_ID_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the registration ID is empty")]
    Empty,
    #[error(
        "the registration ID is {len} characters long; at most {MAX_REGISTRATION_ID_LEN} are allowed"
    )]
    TooLong { len: usize },
    #[error(
        "the registration ID contains {ch:?} at position {position}; only letters, digits and - . _ : are allowed"
    )]
    InvalidCharacter { ch: char, position: usize },
    #[error("the registration ID ends with {ch:?}; it must end with a letter, a digit or -")]
    InvalidLastCharacter { ch: char },
}

/// A validated registration ID, kept as the device spelled it.
///
/// Registration IDs are case-insensitive for identity ([`RegistrationId::canonical`] is the
/// lower-case form storage keys on), but key derivation uses the device's own spelling
/// ([`RegistrationId::as_str`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistrationId(String);

impl RegistrationId {
    /// Validates `text`: 1–128 characters, ASCII letters and digits and `- . _ :`, ending with a
    /// letter, a digit or `-`.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        validate_id(text)?;
        Ok(Self(text.to_owned()))
    }

    /// The ID as the device spelled it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lower-case form that identity and storage use.
    pub fn canonical(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// Whether two IDs name the same registration (case-insensitive).
    pub fn same_as(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl fmt::Display for RegistrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the registration-ID grammar, which enrollment group IDs share.
pub fn validate_id(text: &str) -> Result<(), IdError> {
    let len = text.chars().count();
    if len == 0 {
        return Err(IdError::Empty);
    }
    if len > MAX_REGISTRATION_ID_LEN {
        return Err(IdError::TooLong { len });
    }
    for (position, ch) in text.chars().enumerate() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_' | ':')) {
            return Err(IdError::InvalidCharacter { ch, position });
        }
    }
    match text.chars().last() {
        Some(ch) if ch.is_ascii_alphanumeric() || ch == '-' => Ok(()),
        Some(ch) => Err(IdError::InvalidLastCharacter { ch }),
        None => Err(IdError::Empty),
    }
}

/// The ID scope of a provisioning instance: `0ne` followed by 8 upper-case hex digits.
///
/// Devices treat the scope as opaque and DPS compares it case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdScope(String);

impl IdScope {
    /// Builds a scope from four random bytes the caller drew.
    pub fn generate(random: [u8; 4]) -> Self {
        Self(format!("0ne{:08X}", u32::from_be_bytes(random)))
    }

    /// Wraps an existing scope (for example one read back from storage).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Case-insensitive comparison, as DPS does.
    pub fn matches(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl fmt::Display for IdScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests;
