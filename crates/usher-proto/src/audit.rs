//! The audit log's entries and their hash chain.
//!
//! Every entry carries the hash of the one before it, and its own hash covers its fields and that
//! link, so changing, inserting or removing an entry anywhere breaks the chain from there on. When
//! old entries are pruned, the hash of the last pruned one is kept as the anchor the chain starts
//! from. The server computes hashes as it appends; anyone holding an export can check them with
//! [`verify`].

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The `prev` of the first entry ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry, as stored and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When, in DPS's timestamp format (UTC).
    pub at: String,
    /// Who: `policy:{name}` for a management request, `device:{registrationId}` for a device.
    pub actor: String,
    /// The client's address, or empty.
    pub address: String,
    /// What: `enrollment.put`, `registration.register`, ….
    pub action: String,
    /// What it was done to: an enrollment ID, a registration ID, a policy name, ….
    pub target: String,
    /// How it ended: `ok`, an assignment status (`assigned`, `disabled`, `failed`), or `refused`
    /// with the DPS error code (`refused 401002`).
    pub result: String,
    /// The hash of the entry before (or the anchor).
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

/// What an entry is, before it has a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at: String,
    pub actor: String,
    pub address: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

impl Record {
    /// The entry this record becomes at `seq`, after the entry whose hash is `prev`.
    pub fn chain(self, seq: u64, prev: &str) -> Entry {
        let hash = entry_hash(seq, &self, prev);
        Entry {
            seq,
            at: self.at,
            actor: self.actor,
            address: self.address,
            action: self.action,
            target: self.target,
            result: self.result,
            prev: prev.to_owned(),
            hash,
        }
    }
}

/// SHA-256 (hex) over the entry's fields and the previous hash, each length-prefixed so no two
/// different entries hash the same bytes.
pub fn entry_hash(seq: u64, r: &Record, prev: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"usher audit v1");
    h.update(seq.to_be_bytes());
    for field in [&r.at, &r.actor, &r.address, &r.action, &r.target, &r.result] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(prev.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("entry {seq}: its fields do not hash to its stored hash (the entry was changed)")]
    Altered { seq: u64 },
    #[error(
        "entry {seq}: it does not follow the entry before it (an entry was removed or inserted)"
    )]
    Unlinked { seq: u64 },
    #[error("entry {seq}: expected entry {expected} (entries are missing)")]
    Gap { seq: u64, expected: u64 },
}

/// Checks a run of entries, in order, that starts after the entry at `anchor_seq` whose hash is
/// `anchor_hash` (0 and [`GENESIS`] for a log never pruned).
pub fn verify<'a>(
    anchor_seq: u64,
    anchor_hash: &str,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> Result<u64, Broken> {
    let mut prev_hash = anchor_hash.to_owned();
    let mut count = 0;
    for (expected, e) in (anchor_seq + 1..).zip(entries) {
        if e.seq != expected {
            return Err(Broken::Gap {
                seq: e.seq,
                expected,
            });
        }
        let record = Record {
            at: e.at.clone(),
            actor: e.actor.clone(),
            address: e.address.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            result: e.result.clone(),
        };
        if entry_hash(e.seq, &record, &e.prev) != e.hash {
            return Err(Broken::Altered { seq: e.seq });
        }
        if e.prev != prev_hash {
            return Err(Broken::Unlinked { seq: e.seq });
        }
        prev_hash.clone_from(&e.hash);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> Record {
        Record {
            at: format!("2026-11-30T12:00:{n:02}.0000000Z"),
            actor: "policy:owner".into(),
            address: "127.0.0.1".into(),
            action: "enrollment.put".into(),
            target: format!("dev-{n}"),
            result: "ok".into(),
        }
    }

    fn chain(n: u64) -> Vec<Entry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let e = record(seq).chain(seq, &prev);
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let log = chain(5);
        assert_eq!(verify(0, GENESIS, &log), Ok(5));
        // A pruned log verifies from its anchor.
        assert_eq!(verify(2, &log[1].hash, &log[2..]), Ok(3));
    }

    #[test]
    fn tampering_is_found_where_it_happened() {
        let mut log = chain(5);
        log[2].result = "refused 401002".into();
        assert_eq!(verify(0, GENESIS, &log), Err(Broken::Altered { seq: 3 }));

        let mut log = chain(5);
        log.remove(2);
        assert_eq!(
            verify(0, GENESIS, &log),
            Err(Broken::Gap {
                seq: 4,
                expected: 3
            })
        );

        // Rewriting an entry and its hash still breaks the link to the next one.
        let mut log = chain(5);
        let forged = Record {
            result: "ok (forged)".into(),
            ..record(3)
        }
        .chain(3, &log[1].hash);
        log[2] = forged;
        assert_eq!(verify(0, GENESIS, &log), Err(Broken::Unlinked { seq: 4 }));

        // A chain that does not start at its anchor.
        let log = chain(3);
        assert_eq!(
            verify(0, &"1".repeat(64), &log),
            Err(Broken::Unlinked { seq: 1 })
        );
    }
}
