//! `usher bench`: the load generator. It creates an enrollment group for the run, registers
//! simulated members of it (keys derived from the group key) through `usher-device`, measures the
//! same connection pattern against a trivial endpoint (the ceiling), removes the group and
//! reports throughput, latency percentiles and errors by code.

mod load;
mod report;
mod server;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::json;
use usher_device::{Client, Endpoint, Transport};
use usher_proto::SymmetricKey;

use self::load::{Devices, Op, Outcome, Phase, Slot};
use self::report::{Report, ServerFigures};
use super::service_client::ServiceClient;
use crate::cli::{BenchArgs, BenchMode, TransportArg};

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let service = Arc::new(ServiceClient::connect(&args.login).await?);
    let transport = match args.transport {
        TransportArg::Https => Transport::Https,
        TransportArg::Mqtt => Transport::Mqtt,
        TransportArg::MqttWs => Transport::MqttWs,
        TransportArg::Amqp => Transport::Amqp,
        TransportArg::AmqpWs => Transport::AmqpWs,
    };
    let (endpoint, id_scope) = endpoint(&args, &service, transport)?;
    let client = Client::new(&endpoint, &id_scope, transport);

    let run_id: String = super::random_bytes(4)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let group_id = format!("bench-{run_id}");
    let group_key = SymmetricKey::generate(&super::random_bytes(64)?)?.to_base64();
    let secondary = SymmetricKey::generate(&super::random_bytes(64)?)?.to_base64();
    let mut group = json!({
        "enrollmentGroupId": group_id,
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": group_key, "secondaryKey": secondary},
        },
        "provisioningStatus": "enabled",
    });
    if args.group_pattern {
        group["usherRegistrationIdPattern"] = json!(format!("bench-{run_id}-[a-z0-9]+"));
    }
    service
        .call(
            Method::PUT,
            &format!("/enrollmentGroups/{group_id}"),
            Some(&group),
            &[],
        )
        .await
        .context("cannot create the run's enrollment group")?;

    let devices = Devices { run_id, group_key };
    let measured = tokio::select! {
        result = measure(&args, &client, &devices) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let records_removed = if args.remove_registrations {
        match remove_registrations(&service, &group_id, args.concurrency).await {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("usher bench: cannot remove the registration records: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let removed = service
        .call(
            Method::DELETE,
            &format!("/enrollmentGroups/{group_id}"),
            None,
            &[],
        )
        .await;
    if let Err(e) = &removed {
        eprintln!("usher bench: cannot remove the enrollment group {group_id}: {e:#}");
    }
    let (registrations, ceiling, server) = measured?;
    let report = Report {
        run_id: devices.run_id.clone(),
        group_id,
        group_removed: removed.is_ok(),
        records_removed,
        transport: transport_name(args.transport),
        mode: match args.mode {
            BenchMode::Fresh => "fresh",
            BenchMode::Keepalive => "keepalive",
        },
        concurrency: args.concurrency,
        registrations,
        ceiling,
        server,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.table());
    }
    if report.registrations.ok == 0 {
        bail!("no registration succeeded");
    }
    Ok(())
}

/// Deletes the registration records of the group's devices, `concurrency` at a time; returns
/// how many.
async fn remove_registrations(
    service: &Arc<ServiceClient>,
    group_id: &str,
    concurrency: u64,
) -> anyhow::Result<u64> {
    let mut ids = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "1000".to_owned())];
        if let Some(c) = &continuation {
            headers.push(("x-ms-continuation", c.clone()));
        }
        let path = format!("/registrations/{group_id}/query");
        let answer = service.call(Method::POST, &path, None, &headers).await?;
        for record in answer.body.as_array().into_iter().flatten() {
            if let Some(id) = record["registrationId"].as_str() {
                ids.push(id.to_owned());
            }
        }
        continuation = answer
            .headers
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if continuation.is_none() {
            break;
        }
    }
    let bar = progress(ids.len() as u64, "removing registration records");
    let ids = Arc::new(std::sync::Mutex::new(ids));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let service = Arc::clone(service);
        let ids = Arc::clone(&ids);
        let bar = bar.clone();
        workers.spawn(async move {
            let mut removed = 0u64;
            loop {
                let next = ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some(id) = next else {
                    return Ok::<_, anyhow::Error>(removed);
                };
                service
                    .call(Method::DELETE, &format!("/registrations/{id}"), None, &[])
                    .await
                    .with_context(|| format!("cannot delete the registration record of {id}"))?;
                removed += 1;
                bar.inc(1);
            }
        });
    }
    let mut removed = 0;
    while let Some(joined) = workers.join_next().await {
        removed += joined??;
    }
    bar.finish_and_clear();
    Ok(removed)
}

/// Where the devices connect and the ID scope they name.
fn endpoint(
    args: &BenchArgs,
    service: &ServiceClient,
    transport: Transport,
) -> anyhow::Result<(Endpoint, String)> {
    let ca_pem = match service.ca() {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?,
        ),
        None => None,
    };
    let local = service.local();
    let id_scope = match (&args.id_scope, local) {
        (Some(scope), _) => scope.clone(),
        (None, Some(local)) => local.id_scope.clone(),
        (None, None) => bail!("give the ID scope with --id-scope (or USHER_ID_SCOPE)"),
    };
    let (host, connect_to) = match (&args.device_host, local) {
        (Some(host), _) => (host.clone(), None),
        (None, Some(local)) => {
            let addr = match transport {
                Transport::Https | Transport::MqttWs | Transport::AmqpWs => Some(local.https),
                Transport::Mqtt => local.mqtt,
                Transport::Amqp => local.amqp,
            }
            .with_context(|| {
                format!(
                    "the local server does not listen for {}",
                    transport_name(args.transport)
                )
            })?;
            (format!("{}:{}", service.host(), addr.port()), Some(addr))
        }
        (None, None) => (service.host().to_owned(), None),
    };
    Ok((
        Endpoint {
            host,
            ca_pem,
            connect_to,
        },
        id_scope,
    ))
}

fn transport_name(transport: TransportArg) -> &'static str {
    match transport {
        TransportArg::Https => "https",
        TransportArg::Mqtt => "mqtt",
        TransportArg::MqttWs => "mqtt-ws",
        TransportArg::Amqp => "amqp",
        TransportArg::AmqpWs => "amqp-ws",
    }
}

/// The registration phase, then the ceiling phase, each after its warm-up.
async fn measure(
    args: &BenchArgs,
    client: &Client,
    devices: &Devices,
) -> anyhow::Result<(Outcome, Option<Outcome>, Option<ServerFigures>)> {
    let pid = args.server_pid;
    let cpu = || pid.map(server::cpu_micros).transpose();

    let (registrations, register_cpu) =
        phase(args, client, devices, Op::Register, "registering", &cpu).await?;
    // AMQP connections have no ping this client can send: a kept AMQP connection has no ceiling.
    let no_ceiling_here = args.mode == BenchMode::Keepalive
        && matches!(client.transport(), Transport::Amqp | Transport::AmqpWs);
    let (ceiling, ceiling_cpu) = if args.no_ceiling || no_ceiling_here {
        (None, None)
    } else {
        let (outcome, cpu) = phase(args, client, devices, Op::Ceiling, "ceiling", &cpu).await?;
        (Some(outcome), cpu)
    };
    let server = match pid {
        Some(pid) => {
            let per =
                |cpu: Option<u64>, ops: u64| cpu.filter(|_| ops > 0).map(|c| c as f64 / ops as f64);
            Some(ServerFigures {
                cpu_us_per_registration: per(register_cpu, registrations.ok),
                cpu_us_per_ceiling_op: per(ceiling_cpu, ceiling.as_ref().map_or(0, |c| c.ok)),
                peak_rss_mb: server::peak_rss_mb(pid)?,
            })
        }
        None => None,
    };
    Ok((registrations, ceiling, server))
}

/// One measured phase after its warm-up, on connections opened for it and closed after it;
/// with the server's CPU time over the measured part.
async fn phase(
    args: &BenchArgs,
    client: &Client,
    devices: &Devices,
    op: Op,
    what: &str,
    cpu: &impl Fn() -> anyhow::Result<Option<u64>>,
) -> anyhow::Result<(Outcome, Option<u64>)> {
    let mut slots: Vec<Slot> =
        load::open_slots(client, devices, op, args.mode, args.concurrency).await?;
    if args.warmup > 0 {
        let warmup = Phase {
            op,
            mode: args.mode,
            count: args.warmup,
            duration: args.duration,
            prefix: "w",
        };
        let bar = progress(args.warmup, &format!("{what} (warm-up)"));
        (_, slots) = load::run_phase(client, devices, &warmup, slots, &bar).await?;
        bar.finish_and_clear();
    }
    let measured = Phase {
        op,
        mode: args.mode,
        count: args.devices,
        duration: args.duration,
        prefix: "",
    };
    let bar = progress(args.devices, what);
    let before = cpu()?;
    let (outcome, slots) = load::run_phase(client, devices, &measured, slots, &bar).await?;
    let after = cpu()?;
    bar.finish_and_clear();
    for slot in slots {
        if let Some(connection) = slot.connection {
            connection.close().await;
        }
    }
    let used = before.zip(after).map(|(b, a)| a.saturating_sub(b));
    Ok((outcome, used))
}

/// A progress bar on standard error (hidden when it is not a terminal).
fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
