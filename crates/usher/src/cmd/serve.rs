use std::io::ErrorKind;

use anyhow::Context as _;
use std::time::Duration;
use tokio::net::TcpListener;

use usher_server::{RegisterResponse, ServeConfig, Settings};

use crate::cli::{RegisterResponseArg, ServeArgs};

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(text) = &args.effective_config {
        print!("{text}");
        return Ok(());
    }
    let tls_cert = match (args.tls_cert.clone(), args.tls_key.clone()) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => anyhow::bail!("--tls-cert (tls-cert) needs --tls-key (tls-key) too"),
        (None, Some(_)) => anyhow::bail!("--tls-key (tls-key) needs --tls-cert (tls-cert) too"),
    };
    let register_response = match args.register_response {
        RegisterResponseArg::Assigned => RegisterResponse::Assigned,
        RegisterResponseArg::Assigning => RegisterResponse::Assigning {
            retry_after_secs: args.retry_after,
        },
    };
    let mut hostnames = args.hostnames.clone();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !hostnames.iter().any(|h| h.eq_ignore_ascii_case(default)) {
            hostnames.push(default.to_owned());
        }
    }
    let config = ServeConfig {
        data_dir: args.data_dir.clone(),
        hostnames,
        tls_cert,
        settings: Settings {
            clock_skew_secs: args.clock_skew,
            register_response,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
            ..Settings::default()
        },
    };
    let mut prepared = usher_server::prepare(config).await?;
    let listener = bind(args.https_addr, "--https-addr").await?;
    let mqtt = bind(args.mqtt_addr, "--mqtt-addr").await?;
    let metrics = match args.metrics_addr {
        Some(addr) => Some(bind(addr, "--metrics-addr").await?),
        None => None,
    };
    let o = &prepared.overview;
    println!("Usher is serving {}", args.data_dir.display());
    println!("  ID scope:                   {}", o.id_scope);
    println!(
        "  Device endpoint:            {} (HTTPS and MQTT over WebSockets on {}, MQTT on {})",
        o.device_endpoint,
        listener.local_addr()?,
        mqtt.local_addr()?
    );
    println!(
        "  Service connection string:  {}",
        o.service_connection_string
    );
    if let Some(ca) = &o.ca_certificate {
        println!("  CA certificate:             {ca}");
    }
    if let Some(metrics) = &metrics {
        println!(
            "  Metrics and probes:         http://{}/metrics, /healthz, /readyz",
            metrics.local_addr()?
        );
    }
    for hub in &o.hubs {
        println!(
            "  Hub:                        {} ({}, weight {})",
            hub.name, hub.hostname, hub.weight
        );
        if let Some(cs) = &hub.connection_string {
            println!("    Hub connection string:    {cs}");
        }
    }
    if let Some(metrics) = metrics {
        prepared = prepared.with_metrics_listener(metrics);
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    let drain = args.shutdown_timeout;
    tokio::spawn(async move {
        let name = signal::wait_for_signal().await;
        tracing::info!(
            signal = name,
            "shutting down: open connections get up to {drain} s to finish"
        );
        signal.cancel();
    });
    prepared.run(listener, Some(mqtt), shutdown).await?;
    Ok(())
}

async fn bind(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot listen on {addr}: permission denied. Ports below 1024 need privilege: run as root, or grant \
             the binary the capability with `sudo setcap cap_net_bind_service=+ep $(command -v usher)`, or choose \
             other ports with --https-addr 127.0.0.1:8443 --mqtt-addr 127.0.0.1:18883 (the official SDKs need \
             443 and 8883, see README)"
        ),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            anyhow::bail!(
                "cannot listen on {addr}: the address is in use by another program; choose another with {flag}"
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

mod signal {
    /// Resolves on Ctrl-C (SIGINT) or SIGTERM, with the signal's name.
    pub(super) async fn wait_for_signal() -> &'static str {
        #[cfg(unix)]
        {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
