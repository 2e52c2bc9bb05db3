//! Firmware-testing modes: DPS's slow and failing paths on purpose, which DPS itself cannot give a
//! device developer. Off by default; set per instance (`usher serve --testing-*`) or per enrollment
//! (the Usher extension field `usherTesting`, which the official service clients round-trip), an
//! enrollment's setting replacing the instance's for its devices.
//!
//! - `pollsAssigning: N` (+ `retryAfter`): register answers `202 assigning`, and the first N polls
//!   of each operation answer `202` with `{"operationId","status":"assigning","registrationState":
//!   {"registrationId","status":"assigning"}}`, as DPS does while it works.
//! - `fault: {status, firstAttempts, fraction, retryAfter}`: `429`, `500` or `503` with Retry-After
//!   to the first K requests (register or poll) of each device, and/or to a fraction of requests.
//! - `quotas: true`: DPS's quotas, 5 polls per 10 s per device and `--testing-registrations-per-
//!   minute` (1,000 by default, as DPS) registrations per minute for the instance, answered `429`
//!   with Retry-After when exceeded.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use usher_proto::throttle::{Budget, Spent};

use crate::error::ApiError;

/// The extension field on enrollments and groups.
pub const FIELD: &str = "usherTesting";
/// Counters kept per device or operation before the table is cleared.
const MAX_TRACKED: usize = 100_000;

/// Which modes are on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestingModes {
    /// The first N polls of each operation answer `assigning`.
    #[serde(default)]
    pub polls_assigning: u32,
    /// Retry-After for those answers (else the instance's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// DPS's quotas.
    #[serde(default)]
    pub quotas: bool,
}

/// Injected failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// 429, 500 or 503.
    pub status: u16,
    /// The first K requests of each device get it.
    #[serde(default)]
    pub first_attempts: u32,
    /// And this fraction (0 to 1) of all requests.
    #[serde(default)]
    pub fraction: f64,
    #[serde(default = "one")]
    pub retry_after: u32,
}

fn one() -> u32 {
    1
}

impl TestingModes {
    pub fn is_off(&self) -> bool {
        *self == Self::default()
    }

    /// Checks what a client sent (the management API refuses anything else with 400).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(f) = &self.fault {
            if ![429, 500, 503].contains(&f.status) {
                return Err(format!(
                    "usherTesting.fault.status {} is not 429, 500 or 503",
                    f.status
                ));
            }
            if !(0.0..=1.0).contains(&f.fraction) {
                return Err(format!(
                    "usherTesting.fault.fraction {} is not between 0 and 1",
                    f.fraction
                ));
            }
            if !(1..=300).contains(&f.retry_after) {
                return Err("usherTesting.fault.retryAfter must be 1 to 300 seconds".into());
            }
        }
        if self.retry_after.is_some_and(|r| !(1..=300).contains(&r)) {
            return Err("usherTesting.retryAfter must be 1 to 300 seconds".into());
        }
        Ok(())
    }

    /// An enrollment's modes, if it sets any.
    pub fn of_enrollment(other: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        other
            .get(FIELD)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Register,
    Poll,
}

/// The counters the modes need, shared by every transport.
#[derive(Debug)]
pub struct Testing {
    attempts: Mutex<HashMap<String, u32>>,
    polls: Mutex<HashMap<String, u32>>,
    /// Operation → the Retry-After its answers carry.
    retry_after: Mutex<HashMap<String, u32>>,
    poll_quota: Mutex<HashMap<String, Spent>>,
    registration_quota: Mutex<Option<Spent>>,
    registrations_per_minute: u32,
    started: tokio::time::Instant,
}

impl Testing {
    pub fn new(registrations_per_minute: u32) -> Self {
        Self {
            attempts: Mutex::default(),
            polls: Mutex::default(),
            retry_after: Mutex::default(),
            poll_quota: Mutex::default(),
            registration_quota: Mutex::default(),
            registrations_per_minute,
            started: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Applies the quotas and injected faults to a device's request; `Err` is the answer to send.
    pub fn admit(
        &self,
        modes: &TestingModes,
        registration_id: &str,
        request: Request,
    ) -> Result<(), ApiError> {
        if modes.is_off() {
            return Ok(());
        }
        let device = registration_id.to_ascii_lowercase();
        if modes.quotas {
            let now = self.now_ms();
            let (budget, spent) = match request {
                // DPS: 5 polls per 10 s per device.
                Request::Poll => (
                    Budget {
                        burst: 5,
                        interval_ms: 2_000,
                    },
                    lock(&self.poll_quota).get(&device).copied(),
                ),
                Request::Register => (
                    Budget::per_minute(self.registrations_per_minute),
                    *lock(&self.registration_quota),
                ),
            };
            if let Err(ms) = budget.check(spent.as_ref(), now) {
                return Err(ApiError::QuotaExceeded {
                    what: match request {
                        Request::Poll => "polls per device (5 per 10 s)",
                        Request::Register => "registrations per minute for the instance",
                    },
                    retry_after_secs: u32::try_from(ms.div_ceil(1000)).unwrap_or(300).max(1),
                });
            }
            let next = budget.spend(spent.as_ref(), now);
            match request {
                Request::Poll => {
                    let mut table = lock(&self.poll_quota);
                    bounded(&mut table);
                    table.insert(device.clone(), next);
                }
                Request::Register => *lock(&self.registration_quota) = Some(next),
            }
        }
        if let Some(fault) = &modes.fault {
            let attempt = {
                let mut attempts = lock(&self.attempts);
                bounded(&mut attempts);
                let n = attempts.entry(device).or_insert(0);
                *n += 1;
                *n
            };
            let by_fraction = fault.fraction > 0.0 && random_unit() < fault.fraction;
            if attempt <= fault.first_attempts || by_fraction {
                return Err(ApiError::InjectedFault {
                    status: fault.status,
                    retry_after_secs: fault.retry_after,
                });
            }
        }
        Ok(())
    }

    /// Registers a new operation under the modes: whether its register answer must be `assigning`.
    pub fn started(&self, modes: &TestingModes, operation_id: &str) -> bool {
        if modes.polls_assigning == 0 {
            return false;
        }
        let mut polls = lock(&self.polls);
        bounded(&mut polls);
        polls.insert(operation_id.to_owned(), 0);
        if let Some(r) = modes.retry_after {
            let mut table = lock(&self.retry_after);
            bounded(&mut table);
            table.insert(operation_id.to_owned(), r);
        }
        true
    }

    /// Whether this poll of `operation_id` is still to answer `assigning`.
    pub fn still_assigning(&self, modes: &TestingModes, operation_id: &str) -> bool {
        let mut polls = lock(&self.polls);
        let Some(n) = polls.get_mut(operation_id) else {
            return false;
        };
        *n += 1;
        *n <= modes.polls_assigning
    }

    /// The Retry-After the testing modes set for an operation's answers, if any.
    pub fn retry_after(&self, operation_id: &str) -> Option<u32> {
        lock(&self.retry_after).get(operation_id).copied()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bounded<K, V>(table: &mut HashMap<K, V>) {
    if table.len() >= MAX_TRACKED {
        table.clear();
    }
}

/// A uniform value in [0, 1) from the operating system.
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_hit_the_first_attempts_of_each_device() {
        let t = Testing::new(1000);
        let modes = TestingModes {
            fault: Some(Fault {
                status: 503,
                first_attempts: 2,
                fraction: 0.0,
                retry_after: 3,
            }),
            ..TestingModes::default()
        };
        for _ in 0..2 {
            let e = t.admit(&modes, "Dev", Request::Register).unwrap_err();
            assert_eq!(e.code().http_status(), 503);
            assert_eq!(e.retry_after(), Some(3));
        }
        assert!(t.admit(&modes, "dev", Request::Poll).is_ok());
        assert!(t.admit(&modes, "other", Request::Register).is_err());
        assert!(
            t.admit(&TestingModes::default(), "x", Request::Register)
                .is_ok()
        );
    }

    #[test]
    fn dps_quotas_five_polls_per_ten_seconds() {
        let t = Testing::new(2);
        let modes = TestingModes {
            quotas: true,
            ..TestingModes::default()
        };
        for _ in 0..5 {
            t.admit(&modes, "dev", Request::Poll).unwrap();
        }
        let e = t.admit(&modes, "dev", Request::Poll).unwrap_err();
        assert_eq!(e.code().http_status(), 429);
        assert!(e.retry_after().is_some());
        // The instance's registrations per minute.
        t.admit(&modes, "a", Request::Register).unwrap();
        t.admit(&modes, "b", Request::Register).unwrap();
        assert!(t.admit(&modes, "c", Request::Register).is_err());
    }

    #[test]
    fn the_first_polls_answer_assigning() {
        let t = Testing::new(1000);
        let modes = TestingModes {
            polls_assigning: 2,
            retry_after: Some(1),
            ..TestingModes::default()
        };
        assert!(t.started(&modes, "op"));
        assert!(t.still_assigning(&modes, "op"));
        assert!(t.still_assigning(&modes, "op"));
        assert!(!t.still_assigning(&modes, "op"));
        assert_eq!(t.retry_after("op"), Some(1));
        assert!(!t.still_assigning(&modes, "unknown"));
    }

    #[test]
    fn what_clients_send_is_checked() {
        let bad: TestingModes =
            serde_json::from_value(serde_json::json!({"fault": {"status": 404}})).unwrap();
        assert!(bad.validate().is_err());
        assert!(
            serde_json::from_value::<TestingModes>(serde_json::json!({"pollAssigning": 1}))
                .is_err()
        );
    }
}
