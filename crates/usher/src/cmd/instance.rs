use std::path::Path;

use anyhow::{Context as _, bail};
use usher_server::secrets::{Kek, write_kek_file};

use crate::cli::KekArgs;

/// What stands in for a key the overview does not show.
const HIDDEN: &str = "(hidden: usher instance show --show-keys)";

pub(super) async fn show(
    data_dir: &Path,
    json: bool,
    show_keys: bool,
    kek: &KekArgs,
) -> anyhow::Result<()> {
    let (store, instance) = usher_server::app::open_existing(data_dir, &kek.source()).await?;
    let mut o = usher_server::app::overview(&store, &instance, data_dir).await?;
    if !show_keys {
        o.service_connection_string = hide_key(&o.service_connection_string);
        for hub in &mut o.hubs {
            hub.connection_string = hub.connection_string.as_deref().map(hide_key);
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&o).context("cannot print the overview")?
        );
        return Ok(());
    }
    println!("ID scope:                   {}", o.id_scope);
    println!("Device endpoint:            {}", o.device_endpoint);
    println!(
        "Service connection string:  {}",
        o.service_connection_string
    );
    println!(
        "CA certificate:             {}",
        o.ca_certificate
            .as_deref()
            .unwrap_or("(none: own certificate)")
    );
    if let Some(issuing) = &o.issuing_ca_certificate {
        println!("Issuing CA certificate:     {issuing}");
    }
    for hub in &o.hubs {
        println!(
            "Hub:                        {} ({}, weight {})",
            hub.name, hub.hostname, hub.weight
        );
        if let Some(cs) = &hub.connection_string {
            println!("  Hub connection string:    {cs}");
        }
    }
    Ok(())
}

/// A connection string with its `SharedAccessKey` replaced by a hint.
pub(super) fn hide_key(connection_string: &str) -> String {
    connection_string
        .split(';')
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("SharedAccessKey") => format!("{k}={HIDDEN}"),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// `usher kek rotate`: a new KEK wraps the data key; the old one no longer opens anything.
pub(super) fn rotate_kek(
    data_dir: &Path,
    kek: &KekArgs,
    new_file: Option<&Path>,
) -> anyhow::Result<()> {
    let db = data_dir.join(usher_server::app::DB_FILE);
    let postgres = std::fs::read_to_string(data_dir.join(usher_server::app::STORE_FILE)).ok();
    if !db.exists() && postgres.is_none() {
        bail!("{} holds no Usher instance", data_dir.display());
    }
    let source = kek.source();
    let current = source
        .load(data_dir, false)
        .context("cannot load the current key-encryption key")?;
    let target = match new_file {
        Some(path) => path.to_owned(),
        None if source.is_data_dir() => data_dir.join(usher_server::secrets::KEK_FILE),
        None => bail!(
            "the current key-encryption key comes from {}, not the data directory: say where the \
             new one is to go with --new-kek-file FILE, then give it to the server in its place",
            current.source_name()
        ),
    };
    let new = if new_file.is_some() && target.exists() {
        let text = std::fs::read_to_string(&target)
            .with_context(|| format!("cannot read {}", target.display()))?;
        Kek::from_base64(&text, target.display().to_string())?
    } else {
        Kek::generate(target.display().to_string())?
    };
    if new.id() == current.id() {
        bail!("the new key-encryption key is the current one");
    }
    // Keep the new key where it is to live before the database depends on it.
    let staged = target.with_extension("rotating");
    write_kek_file(&staged, &new)?;
    match &postgres {
        None => usher_server::store::SqliteStore::rewrap(&db, &current, &new)?,
        Some(url) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(usher_server::store::PgStore::rewrap(
                url.trim(),
                &current,
                &new,
            ))?,
    }
    std::fs::rename(&staged, &target).with_context(|| {
        format!(
            "cannot move the new key-encryption key to {}",
            target.display()
        )
    })?;
    println!(
        "The data key of {} is now wrapped by key-encryption key {} ({}); key {} opens nothing any more.",
        data_dir.display(),
        new.id(),
        target.display(),
        current.id()
    );
    Ok(())
}
