//! One function per command; each validates its input and calls the library crates.

mod audit;
mod bench;
mod certificate;
mod instance;
mod key;
mod manage;
mod migrate;
mod provision;
mod sas_token;
mod seed;
mod serve;
mod service_client;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::cli::{BenchCommand, Cli, Command, InstanceCommand, KekArgs, KekCommand};

impl KekArgs {
    /// The server library's description of where the KEK comes from.
    pub(crate) fn source(&self) -> usher_server::secrets::KekSource {
        usher_server::secrets::KekSource {
            file: self.kek_file.clone(),
        }
    }
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Key(cmd) => key::run(cmd),
        Command::SasToken(cmd) => sas_token::run(cmd),
        Command::Serve(args) => {
            init_logging();
            let runtime = runtime()?;
            let result = runtime.block_on(serve::run(*args));
            // The server has drained within its bound; do not wait on stragglers.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            result
        }
        Command::Instance(InstanceCommand::Show {
            data_dir,
            json,
            show_keys,
            kek,
        }) => runtime()?.block_on(instance::show(&data_dir, json, show_keys, &kek)),
        Command::Instance(InstanceCommand::Set {
            allocation_policy,
            geo,
            login,
        }) => runtime()?.block_on(manage::instance_set(allocation_policy, geo, &login)),
        Command::Kek(KekCommand::Rotate {
            data_dir,
            kek,
            new_kek_file,
        }) => instance::rotate_kek(&data_dir, &kek, new_kek_file.as_deref()),
        Command::Audit(cmd) => runtime()?.block_on(audit::run(cmd)),
        Command::Enrollment(cmd) => runtime()?.block_on(manage::enrollment(false, cmd)),
        Command::EnrollmentGroup(cmd) => runtime()?.block_on(manage::enrollment(true, cmd)),
        Command::Registration(cmd) => runtime()?.block_on(manage::registration(cmd)),
        Command::Hub(cmd) => runtime()?.block_on(manage::hub(cmd)),
        Command::Policy(cmd) => runtime()?.block_on(manage::policy(cmd)),
        Command::Certificate(cmd) => runtime()?.block_on(certificate::run(cmd)),
        Command::Provision(args) => runtime()?.block_on(provision::run(args)),
        Command::Migrate(args) => runtime()?.block_on(migrate::run(args)),
        Command::Bench(args) => match args.command {
            Some(BenchCommand::Seed(seed)) => runtime()?.block_on(seed::run(seed)),
            None => runtime()?.block_on(bench::run(*args)),
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Logs to stderr, in colour only when stderr is a terminal; `RUST_LOG` overrides the default
/// level (info).
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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
