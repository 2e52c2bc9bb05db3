//! `usher bench`: the load generator.

use crate::cli::BenchArgs;

pub(crate) async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("usher bench is not built yet")
}
