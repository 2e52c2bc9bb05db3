//! `usher bench seed`: enrollments in bulk.

use crate::cli::SeedArgs;

pub(crate) async fn run(_args: SeedArgs) -> anyhow::Result<()> {
    anyhow::bail!("usher bench seed is not built yet")
}
