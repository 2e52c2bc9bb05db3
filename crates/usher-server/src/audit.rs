//! The audit log: who did what, to what, with what result, when. Every management write (and every
//! refused write attempt) and every attestation decision is appended, hash-chained
//! (`usher_proto::audit`), through the store's writer. Entries older than the retention are pruned
//! by a background task, the chain keeping its anchor.

use std::net::IpAddr;
use std::time::Duration;

use usher_proto::audit::Record;

use crate::app::App;
use crate::clock::now_text;
use crate::error::ApiError;

/// How long entries are kept unless `--audit-retention` says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// How often old entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A record of `action` on `target` by `actor` from `address`, ending in `result`, now.
pub fn record(
    actor: String,
    address: Option<IpAddr>,
    action: &str,
    target: &str,
    result: String,
) -> Record {
    Record {
        at: now_text(),
        actor,
        address: address.map(|a| a.to_string()).unwrap_or_default(),
        action: action.to_owned(),
        target: target.to_owned(),
        result,
    }
}

/// How a request ended, as the audit log says it.
pub fn outcome<T>(result: &Result<T, ApiError>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => refused(e),
    }
}

/// `refused {code}` for an error.
pub fn refused(e: &ApiError) -> String {
    format!("refused {}", e.code().code())
}

/// Appends a record. The audit log is not a reason to fail the request it records: a failure to
/// append is logged loudly instead.
pub async fn append(app: &App, records: Vec<Record>) {
    if let Err(e) = app.store.append_audit(records).await {
        tracing::error!(error = %e, "cannot append to the audit log");
    }
}

/// Prunes entries older than `retention` now and every hour, until shutdown.
pub async fn prune_periodically(app: App, retention: Duration) {
    loop {
        let cutoff = time::OffsetDateTime::now_utc()
            - time::Duration::try_from(retention).unwrap_or(time::Duration::MAX);
        match app
            .store
            .prune_audit(usher_proto::model::format_timestamp(cutoff))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "audit entries past their retention pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
        }
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
