//! Liveness and readiness, for load balancers and orchestrators (`/healthz`, `/readyz`).
//!
//! Alive means the process answers HTTP at all. Ready means it should be sent traffic: every
//! listener accepts connections, the store answers a read and its writer runs, and shutdown has
//! not begun (from the moment it begins, readiness fails while open requests drain).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::app::App;

/// How long the store gets to answer the readiness read.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer to `/readyz`, serialised as its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: &'static str,
    /// Why not, one entry per failed check.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Runs the readiness checks.
pub async fn readiness(app: &App) -> Readiness {
    let mut reasons = Vec::new();
    if app.shutdown.is_cancelled() {
        reasons.push("shutting down".to_owned());
    }
    if !app.listening.load(Ordering::Acquire) {
        reasons.push("the listeners are not up".to_owned());
    }
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => reasons.push(format!("store: {e}")),
        Err(_) => reasons.push(format!(
            "store: no answer within {} s",
            STORE_CHECK_TIMEOUT.as_secs()
        )),
    }
    Readiness {
        status: if reasons.is_empty() {
            "ready"
        } else {
            "not ready"
        },
        reasons,
    }
}
