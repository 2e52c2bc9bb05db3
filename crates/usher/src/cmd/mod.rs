//! One function per command; each validates its input and calls the library crates.

mod key;
mod sas_token;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::cli::{Cli, Command};

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Key(cmd) => key::run(cmd),
        Command::SasToken(cmd) => sas_token::run(cmd),
    }
}

/// Seconds since the Unix epoch, read from the system clock.
pub(crate) fn unix_now() -> anyhow::Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs())
}

/// `n` random bytes from the operating system.
pub(crate) fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("cannot draw random bytes: {e}"))?;
    Ok(buf)
}
