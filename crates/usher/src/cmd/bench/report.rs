//! The final report: a table, or JSON.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::load::Outcome;

/// Everything a run reports.
pub(super) struct Report {
    pub(super) run_id: String,
    pub(super) group_id: String,
    pub(super) group_removed: bool,
    /// How many registration records --remove-registrations deleted.
    pub(super) records_removed: Option<u64>,
    pub(super) transport: &'static str,
    pub(super) mode: &'static str,
    pub(super) concurrency: u64,
    pub(super) registrations: Outcome,
    /// None with --no-ceiling, or when the transport has no ceiling in this mode (AMQP keepalive).
    pub(super) ceiling: Option<Outcome>,
    pub(super) server: Option<ServerFigures>,
}

/// What /proc said about the server.
pub(super) struct ServerFigures {
    pub(super) cpu_us_per_registration: Option<f64>,
    pub(super) cpu_us_per_ceiling_op: Option<f64>,
    pub(super) peak_rss_mb: f64,
}

fn percentiles(outcome: &Outcome) -> Value {
    let h = &outcome.latency;
    let ms = |q: f64| {
        if h.is_empty() {
            Value::Null
        } else {
            json!(round(h.value_at_quantile(q) as f64 / 1000.0, 3))
        }
    };
    json!({
        "p50": ms(0.50),
        "p90": ms(0.90),
        "p99": ms(0.99),
        "p999": ms(0.999),
        "max": if h.is_empty() { Value::Null } else { json!(round(h.max() as f64 / 1000.0, 3)) },
    })
}

fn errors(outcome: &Outcome) -> Value {
    let map: BTreeMap<&str, u64> = outcome
        .errors
        .iter()
        .map(|(code, (n, _))| (code.as_str(), *n))
        .collect();
    json!(map)
}

/// `x` to `n` significant digits (a ratio of 0.0005 must not print as 0).
fn significant(x: f64, n: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    // Small and finite: the cast cannot overflow.
    #[allow(clippy::cast_possible_truncation)]
    let magnitude = x.abs().log10().ceil() as i32;
    round(x, n - magnitude)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl Report {
    fn ratio(&self) -> Option<f64> {
        let ceiling = self.ceiling.as_ref()?.per_second();
        (ceiling > 0.0).then(|| self.registrations.per_second() / ceiling)
    }

    pub(super) fn json(&self) -> Value {
        let r = &self.registrations;
        let server = self.server.as_ref();
        json!({
            "runId": self.run_id,
            "group": self.group_id,
            "groupRemoved": self.group_removed,
            "registrationsRemoved": self.records_removed,
            "transport": self.transport,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "registrations": r.ok,
            "failed": r.errors.values().map(|(n, _)| n).sum::<u64>(),
            "elapsedSeconds": round(r.elapsed.as_secs_f64(), 3),
            "registrationsPerSecond": round(r.per_second(), 1),
            "ceilingPerSecond": self.ceiling.as_ref().map(|c| round(c.per_second(), 1)),
            "ratio": self.ratio().map(|x| significant(x, 4)),
            "latencyMs": percentiles(r),
            "errors": errors(r),
            "ceilingOperations": self.ceiling.as_ref().map(|c| c.ok),
            "ceilingLatencyMs": self.ceiling.as_ref().map(percentiles),
            "ceilingErrors": self.ceiling.as_ref().map(errors),
            "serverCpuUsPerRegistration": server.and_then(|s| s.cpu_us_per_registration).map(|x| round(x, 1)),
            "serverCpuUsPerCeilingOp": server.and_then(|s| s.cpu_us_per_ceiling_op).map(|x| round(x, 1)),
            "serverPeakRssMb": server.map(|s| round(s.peak_rss_mb, 1)),
        })
    }

    pub(super) fn table(&self) -> String {
        let j = self.json();
        let text = |v: &Value| match v {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut rows: Vec<(String, String)> = vec![
            (
                "transport / mode".into(),
                format!("{} {}", self.transport, self.mode),
            ),
            ("concurrency".into(), self.concurrency.to_string()),
            (
                "registrations".into(),
                format!(
                    "{} in {} s",
                    self.registrations.ok,
                    text(&j["elapsedSeconds"])
                ),
            ),
            ("registrations/s".into(), text(&j["registrationsPerSecond"])),
            ("ceiling ops/s".into(), text(&j["ceilingPerSecond"])),
            ("ratio".into(), text(&j["ratio"])),
        ];
        for (name, q) in [
            ("p50", "p50"),
            ("p90", "p90"),
            ("p99", "p99"),
            ("p99.9", "p999"),
        ] {
            rows.push((
                format!("latency {name} (ms)"),
                format!(
                    "{}   (ceiling {})",
                    text(&j["latencyMs"][q]),
                    text(&j["ceilingLatencyMs"][q])
                ),
            ));
        }
        rows.push((
            "server CPU µs/registration".into(),
            text(&j["serverCpuUsPerRegistration"]),
        ));
        rows.push((
            "server CPU µs/ceiling op".into(),
            text(&j["serverCpuUsPerCeilingOp"]),
        ));
        rows.push(("server peak RSS (MiB)".into(), text(&j["serverPeakRssMb"])));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        let all_errors = self
            .registrations
            .errors
            .iter()
            .map(|e| ("registration", e))
            .chain(
                self.ceiling
                    .iter()
                    .flat_map(|c| c.errors.iter().map(|e| ("ceiling", e))),
            );
        let mut any = false;
        for (phase, (code, (n, message))) in all_errors {
            if !any {
                out.push_str("errors:\n");
                any = true;
            }
            out.push_str(&format!("  {phase} {code}: {n} (e.g. {message})\n"));
        }
        if !any {
            out.push_str("errors: none\n");
        }
        let group = if self.group_removed {
            "removed"
        } else {
            "NOT removed (delete it with `usher enrollment-group delete`)"
        };
        out.push_str(&format!("group {}: {group}\n", self.group_id));
        let devices = format!("bench-{}-*", self.run_id);
        out.push_str(&match self.records_removed {
            Some(n) => format!(
                "{n} registration records of {devices} removed; their hub device identities stay\n"
            ),
            None => {
                format!("the registration records and hub device identities of {devices} stay\n")
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::significant;

    #[test]
    fn ratios_keep_four_significant_digits() {
        assert_eq!(significant(4.0 / 8140.5, 4), 0.0004914);
        assert_eq!(significant(0.81234567, 4), 0.8123);
        assert_eq!(significant(12.3456, 4), 12.35);
        assert_eq!(significant(0.0, 4), 0.0);
    }
}
