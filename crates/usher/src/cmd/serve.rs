use std::io::ErrorKind;

use anyhow::Context as _;
use tokio::net::TcpListener;
use usher_proto::ttl::parse_duration;
use usher_server::console::ConsoleSettings;
use usher_server::{RegisterResponse, ServeConfig, Settings};

use crate::cli::{RegisterResponseArg, ServeArgs};

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let clock_skew_secs = parse_duration(&args.clock_skew).context("invalid --clock-skew")?;
    let register_response = match args.register_response {
        RegisterResponseArg::Assigned => RegisterResponse::Assigned,
        RegisterResponseArg::Assigning => RegisterResponse::Assigning {
            retry_after_secs: args.retry_after.clamp(1, 300),
        },
    };
    let console_ttl =
        parse_duration(&args.console_session_ttl).context("invalid --console-session-ttl")?;
    if console_ttl == 0 {
        anyhow::bail!("invalid --console-session-ttl: a session must last at least a second");
    }
    let mut hostnames = args.hostnames.clone();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !hostnames.iter().any(|h| h.eq_ignore_ascii_case(default)) {
            hostnames.push(default.to_owned());
        }
    }
    let config = ServeConfig {
        data_dir: args.data_dir.clone(),
        hostnames,
        tls_cert: args.tls_cert.clone().zip(args.tls_key.clone()),
        settings: Settings {
            clock_skew_secs,
            register_response,
            console: ConsoleSettings {
                enabled: !args.no_console,
                session_ttl: std::time::Duration::from_secs(console_ttl),
            },
            ..Settings::default()
        },
    };
    let prepared = usher_server::prepare(config).await?;
    let listener = bind(args.https_addr).await?;
    let mqtt = bind(args.mqtt_addr).await?;
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
    for hub in &o.hubs {
        println!(
            "  Hub:                        {} ({}, weight {})",
            hub.name, hub.hostname, hub.weight
        );
        if let Some(cs) = &hub.connection_string {
            println!("    Hub connection string:    {cs}");
        }
    }
    if !args.no_console {
        println!(
            "  Console:                    https://{}:{}/console/ (sign in with a service connection string)",
            o.device_endpoint,
            listener.local_addr()?.port()
        );
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signal::wait_for_signal().await;
        signal.cancel();
    });
    prepared.run(listener, Some(mqtt), shutdown).await?;
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
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
                "cannot listen on {addr}: the address is in use by another program; choose another with --https-addr"
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

mod signal {
    /// Resolves on Ctrl-C or SIGTERM.
    pub(super) async fn wait_for_signal() {
        #[cfg(unix)]
        {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
