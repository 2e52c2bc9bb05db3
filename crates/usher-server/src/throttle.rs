//! Protective throttling: failed attestations are budgeted per client address and per registration
//! ID, so a flood of bad tokens is answered `429` with Retry-After before any key is looked at.
//! Successful requests cost nothing. Memory is bounded: keys whose budget has refilled are
//! forgotten, and past `MAX_KEYS` new keys are not tracked.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

use usher_proto::throttle::{Budget, Spent};

/// Most keys tracked per table.
pub const MAX_KEYS: usize = 100_000;

/// The failure budgets, per minute; all of a minute's failures may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    pub failures_per_address: u32,
    pub failures_per_registration: u32,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            failures_per_address: 120,
            failures_per_registration: 20,
        }
    }
}

/// Why a request was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    Address,
    RegistrationId,
}

impl ThrottledBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Address => "client address",
            Self::RegistrationId => "registration ID",
        }
    }
}

/// The budgets of every key, shared by every transport.
#[derive(Debug)]
pub struct Throttle {
    by_address: Keyed<IpAddr>,
    by_registration: Keyed<String>,
    started: tokio::time::Instant,
}

impl Throttle {
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            by_address: Keyed::new(Budget::per_minute(settings.failures_per_address)),
            by_registration: Keyed::new(Budget::per_minute(settings.failures_per_registration)),
            started: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a request from `address` for `registration_id` may be attested now; if not, which
    /// budget is spent and how many seconds until it refills enough.
    pub fn check(
        &self,
        address: Option<IpAddr>,
        registration_id: &str,
    ) -> Result<(), (ThrottledBy, u32)> {
        let now = self.now_ms();
        let secs = |ms: u64| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1);
        if let Some(ip) = address {
            self.by_address
                .check(&ip, now)
                .map_err(|ms| (ThrottledBy::Address, secs(ms)))?;
        }
        self.by_registration
            .check(&registration_id.to_ascii_lowercase(), now)
            .map_err(|ms| (ThrottledBy::RegistrationId, secs(ms)))
    }

    /// Records a failed attestation.
    pub fn failed(&self, address: Option<IpAddr>, registration_id: &str) {
        let now = self.now_ms();
        if let Some(ip) = address {
            self.by_address.spend(ip, now);
        }
        self.by_registration
            .spend(registration_id.to_ascii_lowercase(), now);
    }
}

#[derive(Debug)]
struct Keyed<K> {
    budget: Budget,
    spent: Mutex<HashMap<K, Spent>>,
}

impl<K: Hash + Eq> Keyed<K> {
    fn new(budget: Budget) -> Self {
        Self {
            budget,
            spent: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, key: &K, now: u64) -> Result<(), u64> {
        let spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        self.budget.check(spent.get(key), now)
    }

    fn spend(&self, key: K, now: u64) {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        if spent.len() >= MAX_KEYS && !spent.contains_key(&key) {
            spent.retain(|_, s| !s.is_refilled(now));
            if spent.len() >= MAX_KEYS {
                return;
            }
        }
        let next = self.budget.spend(spent.get(&key), now);
        spent.insert(key, next);
    }
}
