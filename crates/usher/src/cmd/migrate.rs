//! `usher migrate`: an instance from a data directory (SQLite) to PostgreSQL, or back.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use usher_server::store::{Store, copy};

use crate::cli::MigrateArgs;

/// One side of a migration.
enum Location {
    Dir(PathBuf),
    Postgres(String),
}

impl Location {
    fn parse(text: &str) -> Self {
        if usher_server::store::is_postgres_url(text) {
            Self::Postgres(text.to_owned())
        } else {
            Self::Dir(PathBuf::from(text))
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => dir.display().to_string(),
            Self::Postgres(url) => usher_server::store::redact_url(url),
        }
    }
}

/// The development CA's files, by name.
const CA_FILES: [&str; 2] = ["ca.pem", "ca.key"];

pub(super) async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let (from, to) = (Location::parse(&args.from), Location::parse(&args.to));
    let source = args.kek.source();
    let kek = match &from {
        Location::Dir(dir) => {
            if !dir.join(usher_server::app::DB_FILE).exists() {
                bail!("{} holds no Usher instance", dir.display());
            }
            source
                .load(dir, false)
                .context("cannot load the key-encryption key")?
        }
        Location::Postgres(_) if source.is_data_dir() => bail!(
            "give the key-encryption key the PostgreSQL nodes are given (--kek-file, \
             USHER_KEK_FILE, USHER_KEK or the systemd credential usher-kek)"
        ),
        Location::Postgres(_) => source
            .load(Path::new("."), false)
            .context("cannot load the key-encryption key")?,
    };
    let open = |at: &Location, create: bool| {
        let kek = kek.clone();
        let at = match at {
            Location::Dir(dir) => Location::Dir(dir.clone()),
            Location::Postgres(url) => Location::Postgres(url.clone()),
        };
        async move {
            let store = match &at {
                Location::Dir(dir) => {
                    if create {
                        usher_server::files::create_private_dir(dir)
                            .with_context(|| format!("cannot create {}", dir.display()))?;
                    }
                    Store::open_sqlite(&dir.join(usher_server::app::DB_FILE), &kek)?
                }
                Location::Postgres(url) => Store::open_postgres(url, &kek).await?,
            };
            anyhow::Ok(store)
        }
    };
    let source_store = open(&from, false)
        .await
        .with_context(|| format!("cannot open {}", from.describe()))?;
    let target_store = open(&to, true)
        .await
        .with_context(|| format!("cannot open {}", to.describe()))?;

    let mut bar: Option<(String, indicatif::ProgressBar)> = None;
    let mut progress = |what: &str, done: u64, total: Option<u64>| {
        if bar.as_ref().is_none_or(|(current, _)| current != what) {
            if let Some((_, old)) = bar.take() {
                old.finish();
            }
            bar = Some((
                what.to_owned(),
                super::manage::progress(total.unwrap_or(0), what),
            ));
        }
        if let Some((_, b)) = &bar {
            b.set_position(done);
        }
    };
    let copied = copy::copy(&source_store, &target_store, &mut progress).await?;
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    let ca = copy_ca(&from, &source_store, &to, &target_store).await?;

    let (source_export, target_export) = (
        copy::export(&source_store).await?,
        copy::export(&target_store).await?,
    );
    let ((source_digest, lines), (target_digest, _)) =
        (copy::digest(&source_export), copy::digest(&target_export));
    if source_digest != target_digest || source_export != target_export {
        bail!(
            "the copy in {} differs from {} (exports {source_digest} and {target_digest}); \
             leave the source in service",
            to.describe(),
            from.describe()
        );
    }
    println!(
        "Copied {} enrollments, {} enrollment groups, {} registration records, {} hub devices, \
         {} CA certificates and {} audit entries from {} to {}{}.",
        copied.enrollments,
        copied.enrollment_groups,
        copied.registrations,
        copied.hub_devices,
        copied.ca_certificates,
        copied.audit_entries,
        from.describe(),
        to.describe(),
        if ca { ", with the development CA" } else { "" }
    );
    println!("Verified: both export the same {lines} lines (sha256 {source_digest}).");
    if let Location::Postgres(_) = to {
        println!(
            "Serve it with `usher serve --store URL` and the same key-encryption key on every node."
        );
    }
    Ok(())
}

/// Copies the development CA (a data directory's `pki/`, or PostgreSQL's shared files) so
/// devices that trust it keep connecting; whether there was one.
async fn copy_ca(
    from: &Location,
    source: &Store,
    to: &Location,
    target: &Store,
) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    for name in CA_FILES {
        let content = match (from, source) {
            (Location::Dir(dir), _) => std::fs::read_to_string(dir.join("pki").join(name)).ok(),
            (_, Store::Postgres(pg)) => pg.shared_file(name).await?,
            _ => None,
        };
        match content {
            Some(content) => files.push((name.to_owned(), content)),
            None => return Ok(false),
        }
    }
    match (to, target) {
        (Location::Dir(dir), _) => {
            let pki = usher_server::app::pki_dir(dir);
            usher_server::files::create_private_dir(&pki)
                .with_context(|| format!("cannot create {}", pki.display()))?;
            for (name, content) in &files {
                let path = pki.join(name);
                usher_server::files::write_private(&path, content.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        (_, Store::Postgres(pg)) => {
            pg.share_files(files).await?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}
