//! The server process's CPU time and memory, read from /proc (Linux; the server on this
//! machine).

use anyhow::Context as _;

/// A process's CPU time so far (user + system), in microseconds.
pub(super) fn cpu_micros(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: fields are counted after
    // its closing one, from field 3 (state). utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected {path}: no field {n}"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(ticks * 1_000_000 / clock_ticks())
}

/// The process's peak resident memory (VmHWM), in MiB.
pub(super) fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in {path}"))?;
    Ok(kb as f64 / 1024.0)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's value everywhere, if that fails).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        // Spend CPU time until the tick counter moves from zero.
        let mut x = 0u64;
        let mut micros = 0;
        for _ in 0..1000 {
            micros = cpu_micros(pid).unwrap();
            if micros > 0 {
                break;
            }
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(micros > 0);
        assert!(peak_rss_mb(pid).unwrap() > 0.0);
    }

    #[test]
    fn a_missing_process_is_an_error() {
        let err = cpu_micros(u32::MAX).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read /proc/"), "{err:#}");
    }
}
