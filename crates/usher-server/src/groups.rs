//! The enrollment groups as attestation needs them: parsed once, keys decoded (symmetric-key
//! groups) or signing certificates parsed (X.509 groups) once, kept in memory until a group is
//! written (the store's `groups_generation` changes).
//!
//! A device without an individual enrollment is checked against the group its registration record
//! names first (a device that registered before costs one group), then against the groups whose
//! `usherRegistrationIdPattern` (an Usher extension field the official clients round-trip) matches
//! its registration ID, or that declare none. Nothing is read from the store or parsed per request.

use std::sync::{Arc, Mutex};

use rustls_pki_types::CertificateDer;
use usher_proto::SymmetricKey;
use usher_proto::service::{AttestationType, EnrollmentGroup};

use crate::error::ApiError;
use crate::store::{Collection, Store, StoreError};

/// The extension field naming the registration IDs a group's devices have (a regular expression,
/// matched against the whole ID, case-insensitively).
pub const PATTERN_FIELD: &str = "usherRegistrationIdPattern";

/// One group, ready for attestation.
#[derive(Debug)]
pub struct Group {
    pub group: EnrollmentGroup,
    pub credential: GroupCredential,
    pub pattern: Option<regex::bytes::Regex>,
}

/// What a group's devices prove membership with.
#[derive(Debug)]
pub enum GroupCredential {
    /// Primary and secondary group keys, decoded (devices sign with keys derived from them).
    Keys([SymmetricKey; 2]),
    /// The primary and secondary signing certificates (root or intermediate) the devices'
    /// certificate chains lead to.
    Signing(Vec<CertificateDer<'static>>),
}

impl Group {
    /// Whether a device with this registration ID may belong to the group.
    pub fn may_hold(&self, registration_id: &str) -> bool {
        self.pattern
            .as_ref()
            .is_none_or(|p| p.is_match(registration_id.as_bytes()))
    }
}

/// Compiles a group's pattern: anchored, case-insensitive, bounded in size.
///
/// Registration IDs are ASCII, so the pattern is compiled without Unicode classes (the crate is
/// built without them); it is a bytes regex because without Unicode `.` matches any byte, which
/// a `&str` regex refuses to compile (`sensor-.*` failed).
pub fn compile_pattern(pattern: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .case_insensitive(true)
        .unicode(false)
        .size_limit(64 * 1024)
        .build()
        .map_err(|e| format!("invalid {PATTERN_FIELD} {pattern:?}: {e}"))
}

/// The cached groups.
#[derive(Debug, Default)]
pub struct GroupIndex {
    cached: Mutex<Option<(u64, Arc<Vec<Group>>)>>,
}

impl GroupIndex {
    /// The symmetric-key and X.509 groups as they are now: from memory, or reloaded if any changed.
    pub async fn groups(&self, store: &Store) -> Result<Arc<Vec<Group>>, ApiError> {
        let generation = store.groups_generation();
        if let Some((g, groups)) = self.lock().as_ref()
            && *g == generation
        {
            return Ok(Arc::clone(groups));
        }
        let mut loaded = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .docs(Collection::EnrollmentGroups, after, 1000)
                .await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = *last;
            for (_, doc) in page {
                let group: EnrollmentGroup = serde_json::from_value(doc.json).map_err(|e| {
                    ApiError::Store(StoreError::Corrupt(format!("group {}: {e}", doc.id)))
                })?;
                let credential = match group.attestation.kind {
                    AttestationType::SymmetricKey => {
                        GroupCredential::Keys(crate::registration::stored_keys(&group.attestation)?)
                    }
                    AttestationType::X509 => GroupCredential::Signing(
                        crate::registration::stored_certificates(&group.attestation)?
                            .into_iter()
                            .flatten()
                            .collect(),
                    ),
                    AttestationType::Tpm | AttestationType::None => continue,
                };
                let pattern = group
                    .settings
                    .other
                    .get(PATTERN_FIELD)
                    .and_then(serde_json::Value::as_str)
                    .and_then(|p| compile_pattern(p).ok());
                loaded.push(Group {
                    group,
                    credential,
                    pattern,
                });
            }
        }
        let groups = Arc::new(loaded);
        *self.lock() = Some((generation, Arc::clone(&groups)));
        Ok(groups)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, Arc<Vec<Group>>)>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_the_whole_id_case_insensitively() {
        let p = compile_pattern("sensor-[0-9]+").unwrap();
        assert!(p.is_match(b"sensor-42"));
        assert!(p.is_match(b"SENSOR-42"));
        assert!(!p.is_match(b"my-sensor-42"));
        assert!(!p.is_match(b"sensor-42x"));
        let any = compile_pattern("line-7-.*").unwrap();
        assert!(any.is_match(b"line-7-00:1b:63"));
        assert!(!any.is_match(b"line-8-1"));
        assert!(compile_pattern("(").is_err());
        assert!(compile_pattern("a{100000}").is_err(), "too large");
    }
}
