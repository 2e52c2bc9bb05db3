//! Choosing a hub for a device.
//!
//! `hashed` ("evenly weighted distribution") uses weighted rendezvous hashing over the candidate
//! hubs: each hub scores `-ln(u) / weight`, where `u` is a uniform value from SHA-256 of the hub's
//! host name and the device's canonical registration ID, and the lowest score wins. A device lands
//! on the same hub every time until the set of hubs or their weights change, and adding a hub moves
//! only the devices that now belong to it.

use sha2::{Digest, Sha256};

/// A hub that may receive devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub hostname: &'a str,
    /// Relative share of devices, 1 to 1000. A weight of 0 is treated as 1.
    pub weight: u32,
}

/// Picks a hub for `registration_id` (compared case-insensitively), or `None` if there are no
/// candidates.
pub fn hashed<'a>(registration_id: &str, candidates: &[Candidate<'a>]) -> Option<&'a str> {
    let id = registration_id.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (score(c, &id), c.hostname))
        .min_by(|(a, _), (b, _)| a.total_cmp(b))
        .map(|(_, host)| host)
}

fn score(candidate: &Candidate<'_>, registration_id: &str) -> f64 {
    let mut hash = Sha256::new();
    hash.update(candidate.hostname.to_ascii_lowercase().as_bytes());
    hash.update(b"\n");
    hash.update(registration_id.as_bytes());
    let digest = hash.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // A uniform value in (0, 1): never 0, so the logarithm is finite.
    let u = (u64::from_be_bytes(head) >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON;
    -u.ln() / f64::from(candidate.weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hubs(weights: &[(&'static str, u32)]) -> Vec<Candidate<'static>> {
        weights
            .iter()
            .map(|&(hostname, weight)| Candidate { hostname, weight })
            .collect()
    }

    #[test]
    fn no_candidates_no_hub() {
        assert_eq!(hashed("dev", &[]), None);
    }

    #[test]
    fn deterministic_and_case_insensitive() {
        let h = hubs(&[("a", 1), ("b", 1), ("c", 1)]);
        for i in 0..100 {
            let id = format!("Dev-{i}");
            assert_eq!(hashed(&id, &h), hashed(&id.to_uppercase(), &h));
        }
    }

    #[test]
    fn spreads_by_weight() {
        let h = hubs(&[("a", 1), ("b", 1), ("c", 2)]);
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for i in 0..8000 {
            *counts
                .entry(hashed(&format!("device-{i}"), &h).unwrap())
                .or_default() += 1;
        }
        // Expected 2000 / 2000 / 4000; allow 10%.
        assert!((1800..=2200).contains(&counts["a"]), "{counts:?}");
        assert!((1800..=2200).contains(&counts["b"]), "{counts:?}");
        assert!((3600..=4400).contains(&counts["c"]), "{counts:?}");
    }

    #[test]
    fn adding_a_hub_moves_only_devices_to_it() {
        let before = hubs(&[("a", 1), ("b", 1)]);
        let after = hubs(&[("a", 1), ("b", 1), ("c", 1)]);
        for i in 0..1000 {
            let id = format!("device-{i}");
            let (old, new) = (hashed(&id, &before).unwrap(), hashed(&id, &after).unwrap());
            assert!(old == new || new == "c", "{id} moved from {old} to {new}");
        }
    }
}
