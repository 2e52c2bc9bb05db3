//! A failure budget: the generic cell rate algorithm (GCRA), with time passed in.
//!
//! Each key (a client address, a registration ID) may fail `burst` times at once and then once per
//! `interval`; past that it is refused until its budget refills. The server checks the budget
//! before doing any work for a request (`check`, which consumes nothing) and spends from it only
//! when the work ends in a failure (`spend`), so successful requests never cost budget. Written
//! here rather than taken from `governor` because the server needs exactly this peek-then-spend
//! split over keys it evicts itself; the arithmetic is a few lines.

/// How many failures a key may have: `burst` at once, then one per `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub burst: u32,
    pub interval_ms: u64,
}

impl Budget {
    /// `per_minute` failures a minute, all of which may come at once.
    pub fn per_minute(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        Self {
            burst: per_minute,
            interval_ms: 60_000 / u64::from(per_minute),
        }
    }

    /// How far ahead of `now` a key's theoretical arrival time may run.
    fn tolerance_ms(self) -> u64 {
        self.interval_ms * u64::from(self.burst.saturating_sub(1))
    }

    /// Whether a key in `state` may be served at `now_ms`; if not, how many milliseconds until it
    /// may.
    pub fn check(self, state: Option<&Spent>, now_ms: u64) -> Result<(), u64> {
        let Some(state) = state else {
            return Ok(());
        };
        let allowed_at = state.tat_ms.saturating_sub(self.tolerance_ms());
        if now_ms >= allowed_at {
            Ok(())
        } else {
            Err(allowed_at - now_ms)
        }
    }

    /// The key's state after one more failure at `now_ms`.
    pub fn spend(self, state: Option<&Spent>, now_ms: u64) -> Spent {
        let tat = state.map_or(now_ms, |s| s.tat_ms.max(now_ms));
        Spent {
            tat_ms: tat + self.interval_ms,
        }
    }
}

/// What a key has spent: its theoretical arrival time. Once `now` passes it, the key is back to a
/// full budget and its entry can be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub tat_ms: u64,
}

impl Spent {
    /// Whether the key has its whole budget again at `now_ms` (its entry carries no information).
    pub fn is_refilled(&self, now_ms: u64) -> bool {
        now_ms >= self.tat_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let budget = Budget::per_minute(6); // burst 6, then one per 10 s
        let mut state: Option<Spent> = None;
        let now = 1_000_000;
        for _ in 0..6 {
            assert_eq!(budget.check(state.as_ref(), now), Ok(()));
            state = Some(budget.spend(state.as_ref(), now));
        }
        let wait = budget.check(state.as_ref(), now).unwrap_err();
        assert_eq!(wait, 10_000);
        assert_eq!(budget.check(state.as_ref(), now + 9_999), Err(1));
        assert_eq!(budget.check(state.as_ref(), now + 10_000), Ok(()));
        state = Some(budget.spend(state.as_ref(), now + 10_000));
        assert!(budget.check(state.as_ref(), now + 10_000).is_err());
        // A minute of quiet refills the whole budget.
        let later = now + 70_000;
        assert!(state.unwrap().is_refilled(later));
        for _ in 0..6 {
            assert_eq!(budget.check(state.as_ref(), later), Ok(()));
            state = Some(budget.spend(state.as_ref(), later));
        }
        assert!(budget.check(state.as_ref(), later).is_err());
    }

    #[test]
    fn checking_spends_nothing() {
        let budget = Budget::per_minute(1);
        let state = budget.spend(None, 0);
        for _ in 0..100 {
            assert_eq!(budget.check(Some(&state), 30_000), Err(30_000));
        }
        assert_eq!(budget.check(Some(&state), 60_000), Ok(()));
    }
}
