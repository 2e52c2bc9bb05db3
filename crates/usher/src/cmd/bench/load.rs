//! The load itself: workers that register devices (or make ceiling operations) until a count or a
//! deadline, each operation timed into a latency histogram.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cmd::service_client::error_chain;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;
use usher_device::{Client, Connection, Credential, ProvisionError, Transport};

use crate::cli::BenchMode;

/// What one operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Register a device and poll until it is assigned.
    Register,
    /// The same connection pattern against a trivial endpoint: HTTPS `GET /healthz`, MQTT
    /// CONNECT + PINGREQ, AMQP connect (SASL, open, session, links) + close (fresh mode only).
    Ceiling,
}

/// The devices of a run: `bench-{run}-{suffix}`, keys derived from the run's group key.
#[derive(Clone)]
pub(super) struct Devices {
    pub(super) run_id: String,
    pub(super) group_key: String,
}

impl Devices {
    pub(super) fn id(&self, suffix: &str) -> String {
        format!("bench-{}-{suffix}", self.run_id)
    }

    pub(super) fn credential(&self, suffix: &str) -> Result<Credential, ProvisionError> {
        Credential::from_group_key(&self.id(suffix), &self.group_key)
            .map_err(|e| ProvisionError::BadResponse(e.to_string()))
    }
}

/// One phase's bounds.
pub(super) struct Phase {
    pub(super) op: Op,
    pub(super) mode: BenchMode,
    /// Operations to make at most.
    pub(super) count: u64,
    pub(super) duration: Option<Duration>,
    /// The prefix of fresh devices' suffixes (`w` for warm-up devices, empty for measured ones).
    pub(super) prefix: &'static str,
}

/// What a phase measured.
pub(super) struct Outcome {
    pub(super) ok: u64,
    pub(super) elapsed: Duration,
    /// Latency of successful operations, in microseconds.
    pub(super) latency: Histogram<u64>,
    /// Failed operations by error code, with the first message seen for each.
    pub(super) errors: BTreeMap<String, (u64, String)>,
}

impl Outcome {
    pub(super) fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }
}

/// One worker's kept connection (keepalive mode) and, over MQTT and AMQP, the device it
/// authenticated as.
pub(super) struct Slot {
    pub(super) connection: Option<Connection>,
    pub(super) suffix: String,
}

/// Whether the connections of a phase are kept (keepalive) and bound to one device each (MQTT,
/// AMQP).
fn bound(transport: Transport) -> bool {
    transport != Transport::Https
}

/// The workers' slots for a phase: keepalive mode opens one connection per worker now (over
/// HTTPS with a `GET /healthz`, so that the connection is open before the clock starts).
pub(super) async fn open_slots(
    client: &Client,
    devices: &Devices,
    op: Op,
    mode: BenchMode,
    concurrency: u64,
) -> anyhow::Result<Vec<Slot>> {
    let tag = match op {
        Op::Register => "k",
        Op::Ceiling => "c",
    };
    let mut opening = JoinSet::new();
    for w in 0..concurrency {
        let client = client.clone();
        let devices = devices.clone();
        let suffix = format!("{tag}{w}");
        opening.spawn(async move {
            let connection = if mode == BenchMode::Keepalive {
                let credential = devices.credential(&suffix)?;
                let mut connection = client.connect(&credential).await?;
                if client.transport() == Transport::Https {
                    connection.ping().await?;
                }
                Some(connection)
            } else {
                None
            };
            Ok::<_, ProvisionError>((w, Slot { connection, suffix }))
        });
    }
    let mut slots = Vec::new();
    while let Some(joined) = opening.join_next().await {
        let (w, slot) = joined?.map_err(|e| {
            anyhow::anyhow!("cannot open the keepalive connections: {}", error_chain(&e))
        })?;
        slots.push((w, slot));
    }
    slots.sort_by_key(|(w, _)| *w);
    Ok(slots.into_iter().map(|(_, s)| s).collect())
}

/// Runs a phase on the given slots (one worker each) and gives the slots back for the next.
pub(super) async fn run_phase(
    client: &Client,
    devices: &Devices,
    phase: &Phase,
    slots: Vec<Slot>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Outcome, Vec<Slot>)> {
    let empty = histogram()?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = phase.duration.map(|d| start + d);
    let mut workers = JoinSet::new();
    for slot in slots {
        let client = client.clone();
        let devices = devices.clone();
        let next = Arc::clone(&next);
        let bar = bar.clone();
        let latency = empty.clone();
        let (op, mode, count, prefix) = (phase.op, phase.mode, phase.count, phase.prefix);
        workers.spawn(async move {
            let mut slot = slot;
            let mut outcome = Outcome {
                ok: 0,
                elapsed: Duration::ZERO,
                latency,
                errors: BTreeMap::new(),
            };
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let began = Instant::now();
                let result = once(&client, &devices, op, mode, prefix, n, &mut slot).await;
                match result {
                    Ok(()) => {
                        outcome.ok += 1;
                        let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = outcome.latency.record(micros.max(1));
                    }
                    Err(e) => {
                        let entry = outcome
                            .errors
                            .entry(error_code(&e))
                            .or_insert_with(|| (0, error_chain(&e)));
                        entry.0 += 1;
                        // A kept connection that failed is opened again for the next operation.
                        if let Some(connection) = slot.connection.take() {
                            connection.close().await;
                        }
                    }
                }
                bar.inc(1);
            }
            (slot, outcome)
        });
    }
    let mut total = Outcome {
        ok: 0,
        elapsed: Duration::ZERO,
        latency: empty,
        errors: BTreeMap::new(),
    };
    let mut slots = Vec::new();
    let mut outcomes = Vec::new();
    while let Some(joined) = workers.join_next().await {
        outcomes.push(joined?);
    }
    total.elapsed = start.elapsed();
    for (slot, outcome) in outcomes {
        total.ok += outcome.ok;
        total.latency.add(&outcome.latency)?;
        for (code, (n, message)) in outcome.errors {
            total.errors.entry(code).or_insert((0, message)).0 += n;
        }
        slots.push(slot);
    }
    Ok((total, slots))
}

/// One operation: operation `n` of the phase, on the worker's slot.
async fn once(
    client: &Client,
    devices: &Devices,
    op: Op,
    mode: BenchMode,
    prefix: &str,
    n: u64,
    slot: &mut Slot,
) -> Result<(), ProvisionError> {
    let transport = client.transport();
    // Fresh connections and HTTPS (which authenticates per request) serve a new device each time;
    // kept MQTT and AMQP connections their worker's one device.
    let credential = if mode == BenchMode::Keepalive && bound(transport) || op == Op::Ceiling {
        devices.credential(&slot.suffix)?
    } else {
        devices.credential(&format!("{prefix}{n}"))?
    };
    match mode {
        BenchMode::Fresh => {
            let mut connection = client.connect(&credential).await?;
            let result = match op {
                Op::Register => connection
                    .provision(&credential, None, |_| {})
                    .await
                    .map(drop),
                Op::Ceiling if matches!(transport, Transport::Amqp | Transport::AmqpWs) => Ok(()),
                Op::Ceiling => connection.ping().await,
            };
            connection.close().await;
            result
        }
        BenchMode::Keepalive => {
            let connection = match &mut slot.connection {
                Some(c) => c,
                None => slot.connection.insert(client.connect(&credential).await?),
            };
            match op {
                Op::Register => connection
                    .provision(&credential, None, |_| {})
                    .await
                    .map(drop),
                Op::Ceiling => connection.ping().await,
            }
        }
    }
}

/// A histogram of microseconds, from 1 µs to an hour, 3 significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| anyhow::anyhow!("cannot make a latency histogram: {e}"))
}

/// A short code for an error, to count errors by: the DPS `errorCode` when the service gave
/// one, otherwise the kind of failure.
pub(super) fn error_code(e: &ProvisionError) -> String {
    match e {
        ProvisionError::Refused {
            body: Some(body), ..
        } => body.error_code.to_string(),
        ProvisionError::Refused { status, .. } => format!("http-{status}"),
        ProvisionError::NotAssigned(status) => status
            .registration_state
            .as_ref()
            .and_then(|s| s.error_code)
            .map_or_else(
                || format!("status-{}", status.status.as_str()),
                |c| c.to_string(),
            ),
        ProvisionError::BadCa(_) => "bad-ca".into(),
        ProvisionError::BadCertificate(_) => "bad-certificate".into(),
        ProvisionError::Transport(_) => "transport".into(),
        ProvisionError::ConnectRefused(code) => format!("connack-{code}"),
        ProvisionError::Protocol(_) => "protocol".into(),
        ProvisionError::Timeout(_) => "timeout".into(),
        ProvisionError::BadResponse(_) => "bad-response".into(),
        ProvisionError::TooManyPolls(_) => "too-many-polls".into(),
        ProvisionError::OtherDevice { .. } => "other-device".into(),
        ProvisionError::Unsupported(..) => "unsupported".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

    use usher_proto::model::{
        DeviceRegistrationResult, ErrorBody, RegistrationOperationStatus, RegistrationStatus,
    };

    use super::*;

    #[test]
    fn errors_are_counted_by_dps_code_or_kind() {
        let body = ErrorBody {
            error_code: 401002,
            tracking_id: String::new(),
            message: "unauthorized".into(),
            timestamp_utc: String::new(),
            info: None,
        };
        let refused = ProvisionError::Refused {
            status: 401,
            body: Some(Box::new(body)),
            text: String::new(),
        };
        assert_eq!(error_code(&refused), "401002");
        let bare = ProvisionError::Refused {
            status: 503,
            body: None,
            text: String::new(),
        };
        assert_eq!(error_code(&bare), "http-503");
        let mut state = DeviceRegistrationResult::bare("d", RegistrationStatus::Failed);
        state.error_code = Some(400209);
        let failed = ProvisionError::NotAssigned(Box::new(RegistrationOperationStatus {
            operation_id: "op".into(),
            status: RegistrationStatus::Failed,
            registration_state: Some(state),
        }));
        assert_eq!(error_code(&failed), "400209");
        let disabled = ProvisionError::NotAssigned(Box::new(RegistrationOperationStatus {
            operation_id: "op".into(),
            status: RegistrationStatus::Disabled,
            registration_state: None,
        }));
        assert_eq!(error_code(&disabled), "status-disabled");
        assert_eq!(
            error_code(&ProvisionError::Timeout(Duration::from_secs(1))),
            "timeout"
        );
        assert_eq!(error_code(&ProvisionError::ConnectRefused(5)), "connack-5");
    }
}
