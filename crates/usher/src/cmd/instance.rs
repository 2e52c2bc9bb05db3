use std::path::Path;

use anyhow::Context as _;

pub(super) async fn show(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let (store, instance) = usher_server::app::open_existing(data_dir).await?;
    let o = usher_server::app::overview(&store, &instance, data_dir).await?;
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
