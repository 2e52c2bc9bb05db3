//! The enrollment groups as attestation needs them: parsed once, keys decoded (symmetric-key
//! groups) or signing certificates parsed (X.509 groups) once, kept in memory until a group is
//! written (the store's `groups_generation` changes).
//!
//! A device without an individual enrollment is checked against the group its registration record
//! names first (a device that registered before costs one group), then against the groups whose
//! `usherRegistrationIdPattern` (an Usher extension field the official clients round-trip) matches
//! its registration ID, or that declare none. Nothing is read from the store or parsed per request.

use std::collections::{BTreeMap, HashMap};
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
    /// The stored document's etag: an unchanged group is reused when the cache reloads.
    etag: String,
}

/// What a group's devices prove membership with.
#[derive(Debug)]
pub enum GroupCredential {
    /// Primary and secondary group keys, decoded (devices sign with keys derived from them).
    Keys([SymmetricKey; 2]),
    /// The primary and secondary signing certificates (root or intermediate) the devices'
    /// certificate chains lead to: held by the group, or named in its `caReferences` (looked up
    /// when a device attests, since whether a CA is verified changes apart from the group).
    Signing {
        certificates: Vec<CertificateDer<'static>>,
        ca_references: Vec<String>,
    },
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

/// The lower-cased literal text every ID a pattern matches starts with (`line-7-` for
/// `line-7-.*`), if it has one: the index files the group under it, so a device is tried only
/// against the groups whose prefix its ID starts with. Case-insensitive matching of ASCII IDs
/// makes the lower-cased prefix exact.
fn literal_prefix(pattern: &str) -> Option<String> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let prefix = seq.longest_common_prefix()?;
    if prefix.is_empty() || !prefix.is_ascii() {
        return None;
    }
    String::from_utf8(prefix.to_ascii_lowercase()).ok()
}

/// The symmetric-key groups at one generation of the store, indexed for attestation.
#[derive(Debug, Default)]
pub struct Groups {
    list: Vec<Arc<Group>>,
    /// Lower-cased group ID to its place in `list`.
    by_id: HashMap<String, usize>,
    /// Literal prefix of a group's pattern to the groups with it.
    by_prefix: BTreeMap<String, Vec<usize>>,
    /// Groups without a pattern, or with one that has no literal prefix: tried for every device.
    open: Vec<usize>,
}

impl Groups {
    fn new(list: Vec<Arc<Group>>) -> Self {
        let mut groups = Self {
            by_id: HashMap::with_capacity(list.len()),
            ..Self::default()
        };
        for (i, g) in list.iter().enumerate() {
            groups
                .by_id
                .insert(g.group.enrollment_group_id.to_ascii_lowercase(), i);
            let prefix = g
                .group
                .settings
                .other
                .get(PATTERN_FIELD)
                .and_then(serde_json::Value::as_str)
                .filter(|_| g.pattern.is_some())
                .and_then(literal_prefix);
            match prefix {
                Some(p) => groups.by_prefix.entry(p).or_default().push(i),
                None => groups.open.push(i),
            }
        }
        groups.list = list;
        groups
    }

    /// The group with this ID (case-insensitive).
    pub fn get(&self, group_id: &str) -> Option<&Group> {
        self.by_id
            .get(&group_id.to_ascii_lowercase())
            .map(|&i| &*self.list[i])
    }

    /// The groups a device with this registration ID may belong to, in storage order: those
    /// without a literal prefix and those whose prefix the ID starts with, each checked against
    /// its whole pattern. With patterns that start with literal text, the cost does not grow with
    /// the number of groups.
    pub fn candidates(&self, registration_id: &str) -> Vec<&Group> {
        let lower = registration_id.to_ascii_lowercase();
        let mut places = self.open.clone();
        for end in 1..=lower.len() {
            if let Some(prefixed) = lower.get(..end).and_then(|p| self.by_prefix.get(p)) {
                places.extend_from_slice(prefixed);
            }
        }
        places.sort_unstable();
        places
            .into_iter()
            .map(|i| &*self.list[i])
            .filter(|g| g.may_hold(registration_id))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// The cached groups.
#[derive(Debug, Default)]
pub struct GroupIndex {
    cached: Mutex<Option<(u64, Arc<Groups>)>>,
    /// Held while reloading, so requests that find the cache stale wait for one reload instead of
    /// each reloading (with 10,000 groups, sixteen concurrent reloads took 14 s and 1.8 GB).
    reloading: tokio::sync::Mutex<()>,
}

impl GroupIndex {
    /// The symmetric-key and X.509 groups as they are now: from memory, or reloaded if any changed. A reload
    /// reuses every group whose etag is unchanged (its keys decoded and its pattern compiled).
    pub async fn groups(&self, store: &Store) -> Result<Arc<Groups>, ApiError> {
        if let Some(groups) = self.current(store.groups_generation()) {
            return Ok(groups);
        }
        let _reloading = self.reloading.lock().await;
        // Read before loading: a write during the load leaves the cache stale, not wrong.
        let generation = store.groups_generation();
        if let Some(groups) = self.current(generation) {
            return Ok(groups);
        }
        let previous = self.lock().as_ref().map(|(_, g)| Arc::clone(g));
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
                if let Some(same) = previous
                    .as_ref()
                    .and_then(|p| {
                        p.by_id
                            .get(&doc.id.to_ascii_lowercase())
                            .map(|&i| &p.list[i])
                    })
                    .filter(|g| g.etag == doc.etag)
                {
                    loaded.push(Arc::clone(same));
                    continue;
                }
                let group: EnrollmentGroup = serde_json::from_value(doc.json).map_err(|e| {
                    ApiError::Store(StoreError::Corrupt(format!("group {}: {e}", doc.id)))
                })?;
                let credential = match group.attestation.kind {
                    AttestationType::SymmetricKey => {
                        GroupCredential::Keys(crate::registration::stored_keys(&group.attestation)?)
                    }
                    AttestationType::X509 => GroupCredential::Signing {
                        certificates: crate::registration::stored_certificates(&group.attestation)?
                            .into_iter()
                            .flatten()
                            .collect(),
                        ca_references: crate::certificates::references(
                            group.attestation.x509.as_ref(),
                        ),
                    },
                    AttestationType::Tpm | AttestationType::None => continue,
                };
                let pattern = group
                    .settings
                    .other
                    .get(PATTERN_FIELD)
                    .and_then(serde_json::Value::as_str)
                    .and_then(|p| compile_pattern(p).ok());
                loaded.push(Arc::new(Group {
                    group,
                    credential,
                    pattern,
                    etag: doc.etag,
                }));
            }
        }
        let groups = Arc::new(Groups::new(loaded));
        *self.lock() = Some((generation, Arc::clone(&groups)));
        Ok(groups)
    }

    fn current(&self, generation: u64) -> Option<Arc<Groups>> {
        self.lock()
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, groups)| Arc::clone(groups))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, Arc<Groups>)>> {
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

    #[test]
    fn literal_prefixes_are_what_every_match_starts_with() {
        assert_eq!(literal_prefix("Line-7-.*").as_deref(), Some("line-7-"));
        assert_eq!(literal_prefix("sensor-[0-9]+").as_deref(), Some("sensor-"));
        assert_eq!(literal_prefix("abc").as_deref(), Some("abc"));
        assert_eq!(literal_prefix("(ab|ac)d").as_deref(), Some("a"));
        assert_eq!(literal_prefix(".*-7"), None);
        assert_eq!(literal_prefix("[sS]ensor"), None);
        assert_eq!(literal_prefix("a|b"), None);
        assert_eq!(literal_prefix("("), None);
    }

    fn group(id: &str, pattern: Option<&str>) -> Arc<Group> {
        let mut json = serde_json::json!({
            "enrollmentGroupId": id,
            "attestation": {"type": "symmetricKey"},
        });
        if let Some(p) = pattern {
            json[PATTERN_FIELD] = p.into();
        }
        Arc::new(Group {
            group: serde_json::from_value(json).unwrap(),
            credential: GroupCredential::Keys(
                [0, 1].map(|_| SymmetricKey::from_base64("AAAAAAAAAAAAAAAAAAAAAA==").unwrap()),
            ),
            pattern: pattern.map(|p| compile_pattern(p).unwrap()),
            etag: String::new(),
        })
    }

    #[test]
    fn candidates_are_the_open_groups_and_those_whose_prefix_matches_in_storage_order() {
        let groups = Groups::new(vec![
            group("line-7", Some("line-7-.*")),
            group("any", None),
            group("line-70", Some("LINE-70-[0-9]+")),
            group("odd", Some(".*-odd")),
            group("line-8", Some("line-8-.*")),
        ]);
        let ids = |rid: &str| -> Vec<String> {
            groups
                .candidates(rid)
                .iter()
                .map(|g| g.group.enrollment_group_id.clone())
                .collect()
        };
        assert_eq!(ids("line-7-a"), ["line-7", "any"]);
        assert_eq!(
            ids("Line-70-12"),
            ["any", "line-70"],
            "whole pattern checked"
        );
        assert_eq!(ids("line-70-x"), ["any"]);
        assert_eq!(ids("x-odd"), ["any", "odd"]);
        assert_eq!(ids("line-8-1"), ["any", "line-8"]);
        assert_eq!(
            groups
                .get("LINE-7")
                .map(|g| g.group.enrollment_group_id.as_str()),
            Some("line-7")
        );
        assert_eq!(groups.len(), 5);
    }
}
