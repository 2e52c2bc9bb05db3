use std::io::ErrorKind;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use usher_server::console::ConsoleSettings;
use usher_server::server::{ConnectionLimits, HttpLimits};
use usher_server::testing::{Fault, TestingModes};
use usher_server::throttle::ThrottleSettings;
use usher_server::webhook::WebhookSettings;
use usher_server::{Limits, RegisterResponse, ServeConfig, Settings};

use crate::cli::{LimitArgs, RegisterResponseArg, ServeArgs};

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
    let issuing_ca = match (&args.issuing_ca_cert, &args.issuing_ca_key) {
        (Some(cert), Some(key)) => {
            let read = |flag: &str, p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("invalid {flag}: cannot read {}", p.display()))
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Some(std::sync::Arc::new(
                usher_server::issuance::IssuingCa::from_pem(
                    &read("--issuing-ca-cert", cert)?,
                    &read("--issuing-ca-key", key)?,
                    now,
                )
                .context("invalid --issuing-ca-cert/--issuing-ca-key")?,
            ))
        }
        (None, None) => None,
        (Some(_), None) => anyhow::bail!(
            "--issuing-ca-cert (issuing-ca-cert) needs --issuing-ca-key (issuing-ca-key) too"
        ),
        (None, Some(_)) => anyhow::bail!(
            "--issuing-ca-key (issuing-ca-key) needs --issuing-ca-cert (issuing-ca-cert) too"
        ),
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
        store: args.store.clone(),
        hostnames,
        tls_cert,
        settings: Settings {
            clock_skew_secs: args.clock_skew,
            register_response,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
            throttle: ThrottleSettings {
                failures_per_address: args.auth_failures_per_address,
                failures_per_registration: args.auth_failures_per_registration,
            },
            audit_retention: args.audit_retention,
            webhook: WebhookSettings {
                timeout: args.webhook_timeout,
                ca_pem: args
                    .webhook_ca
                    .as_ref()
                    .map(|p| {
                        std::fs::read(p).with_context(|| {
                            format!("invalid --webhook-ca: cannot read {}", p.display())
                        })
                    })
                    .transpose()?,
                ..WebhookSettings::default()
            },
            testing: testing_modes(&args.testing)?,
            testing_registrations_per_minute: args.testing.testing_registrations_per_minute,
            issuing_ca,
        },
        limits: Limits {
            console: ConsoleSettings {
                enabled: !args.no_console,
                session_ttl: args.console_session_ttl,
            },
            ..limits(&args.limits)
        },
        kek: args.kek.source(),
    };
    raise_open_file_limit();
    let mut prepared = usher_server::prepare(config).await?;
    let listener = bind(args.https_addr, "--https-addr").await?;
    let mqtt = bind(args.mqtt_addr, "--mqtt-addr").await?;
    let amqp = bind(args.amqp_addr, "--amqp-addr").await?;
    let metrics = match args.metrics_addr {
        Some(addr) => Some(bind(addr, "--metrics-addr").await?),
        None => None,
    };
    let o = &prepared.overview;
    match &args.store {
        None => println!("Usher is serving {}", args.data_dir.display()),
        Some(url) => println!(
            "Usher is serving {} (data directory {})",
            usher_server::store::redact_url(url),
            args.data_dir.display()
        ),
    }
    println!("  ID scope:                   {}", o.id_scope);
    println!(
        "  Device endpoint:            {} (HTTPS, MQTT and AMQP over WebSockets on {}, MQTT on {}, AMQP on {})",
        o.device_endpoint,
        listener.local_addr()?,
        mqtt.local_addr()?,
        amqp.local_addr()?
    );
    // Keys stay out of the banner, which ends up in journald and container logs.
    println!(
        "  Service connection string:  usher instance show --show-keys --data-dir {}",
        args.data_dir.display()
    );
    if let Some(ca) = &o.ca_certificate {
        println!("  CA certificate:             {ca}");
    }
    if let Some(issuing) = &o.issuing_ca_certificate {
        println!("  Issuing CA certificate:     {issuing} (signs certificates requested with csr)");
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
        if hub.connection_string.is_some() {
            println!(
                "    Hub connection string:    usher instance show --show-keys --data-dir {}",
                args.data_dir.display()
            );
        }
    }
    if !args.no_console {
        println!(
            "  Console:                    https://{}:{}/console/ (sign in with a service connection string)",
            o.device_endpoint,
            listener.local_addr()?.port()
        );
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
    prepared
        .run(listener, Some(mqtt), Some(amqp), shutdown)
        .await?;
    Ok(())
}

fn limits(a: &LimitArgs) -> Limits {
    Limits {
        connections: ConnectionLimits {
            handshake_timeout: a.handshake_timeout,
            max_connections: a.max_connections as usize,
            max_connections_per_address: a.max_connections_per_address as usize,
        },
        http: HttpLimits {
            header_timeout: a.header_timeout,
            body_timeout: a.body_timeout,
            max_header_bytes: a.max_header_bytes as usize,
        },
        mqtt: usher_server::mqtt::Limits {
            connect_timeout: a.mqtt_connect_timeout,
            max_keep_alive: a.mqtt_max_keep_alive,
            max_sessions: a.mqtt_max_sessions as usize,
            ..usher_server::mqtt::Limits::default()
        },
        amqp: usher_server::amqp::Limits {
            open_timeout: a.amqp_open_timeout,
            idle_timeout: a.amqp_idle_timeout,
            max_connections: a.amqp_max_connections as usize,
            ..usher_server::amqp::Limits::default()
        },
        console: ConsoleSettings::default(),
    }
}

fn testing_modes(a: &crate::cli::TestingArgs) -> anyhow::Result<TestingModes> {
    // Checked here rather than with clap's `requires`, which does not see configuration-file values.
    if a.testing_fault.is_none() && (a.testing_fault_first != 0 || a.testing_fault_fraction != 0.0)
    {
        anyhow::bail!("--testing-fault-first and --testing-fault-fraction need --testing-fault");
    }
    let modes = TestingModes {
        polls_assigning: a.testing_polls_assigning,
        retry_after: a.testing_retry_after,
        fault: a
            .testing_fault
            .as_deref()
            .map(|status| -> anyhow::Result<Fault> {
                Ok(Fault {
                    status: status.parse().context("invalid --testing-fault")?,
                    first_attempts: a.testing_fault_first,
                    fraction: a.testing_fault_fraction,
                    retry_after: a.testing_fault_retry_after,
                })
            })
            .transpose()?,
        quotas: a.testing_quotas,
    };
    modes
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid --testing-* flags: {e}"))?;
    Ok(modes)
}

/// Every connection holds a file descriptor: raise the soft limit to the hard one, so the
/// connection caps, not the descriptor limit, decide how many are served.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}

async fn bind(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot listen on {addr}: permission denied. Ports below 1024 need privilege: run as root, or grant \
             the binary the capability with `sudo setcap cap_net_bind_service=+ep $(command -v usher)`, or choose \
             other ports with --https-addr 127.0.0.1:8443 --mqtt-addr 127.0.0.1:18883 --amqp-addr 127.0.0.1:15671 \
             (the official SDKs need 443, 8883 and 5671, see README)"
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
