use anyhow::Context as _;
use usher_device::{
    API_VERSION, Client, Credential, Endpoint, Progress, ProvisionError, Transport,
};

use crate::cli::{ProvisionArgs, TransportArg};

pub(super) async fn run(args: ProvisionArgs) -> anyhow::Result<()> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
    };
    let id = args.registration_id.as_deref();
    let credential = match (&args.key, &args.group_key, &args.cert, &args.cert_key, id) {
        (_, _, Some(cert), Some(key), id) => {
            Credential::x509(&read("--cert", cert)?, &read("--cert-key", key)?, id)
        }
        (Some(key), _, _, _, Some(id)) => Credential::individual(id, key),
        (None, Some(group), _, _, Some(id)) => Credential::from_group_key(id, group),
        _ => anyhow::bail!(
            "give --registration-id with --key or --group-key, or --cert and --cert-key"
        ),
    }
    .context("invalid device credential")?;
    let ca_pem = match &args.ca {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("cannot read --ca {}", path.display()))?,
        ),
        None => None,
    };
    let payload = match &args.payload {
        Some(p) => Some(serde_json::from_str(p).context("invalid --payload: not JSON")?),
        None => None,
    };
    let endpoint = Endpoint {
        host: args.host.clone(),
        ca_pem,
        connect_to: None,
    };
    let transport = match args.transport {
        TransportArg::Https => Transport::Https,
        TransportArg::Mqtt => Transport::Mqtt,
        TransportArg::MqttWs => Transport::MqttWs,
        TransportArg::Amqp => Transport::Amqp,
        TransportArg::AmqpWs => Transport::AmqpWs,
    };
    let mut client = Client::new(&endpoint, &args.id_scope, transport);
    if let Some(path) = &args.csr {
        client.certificate_request = Some(read_csr(path)?);
    }
    println!("Provisioning API version: {API_VERSION}");
    println!(
        "Registering device {} with ID scope {} at {} over {transport:?}{}",
        credential.registration_id(),
        args.id_scope,
        args.host,
        if credential.certificate().is_some() {
            " with an X.509 certificate"
        } else {
            ""
        }
    );
    let result = client
        .provision(&credential, payload, |p| match p {
            Progress::Registering => println!("Provisioning status: registering"),
            Progress::Assigning { retry_after } => {
                println!(
                    "Provisioning status: assigning (polling again in {} s)",
                    retry_after.as_secs()
                );
            }
        })
        .await;
    match result {
        Ok(status) => {
            let state = status.registration_state.unwrap_or_else(|| {
                usher_proto::model::DeviceRegistrationResult::bare(
                    credential.registration_id().to_string(),
                    status.status,
                )
            });
            if args.json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            }
            if let Some(out) = &args.issued_cert_out {
                let chain = state.issued_certificate_chain.as_deref().context(
                    "the service answered assigned but issued no certificate (issuedCertificateChain)",
                )?;
                write_chain(out, chain)?;
                println!(
                    "Issued certificate chain ({} certificates) written to {}",
                    chain.len(),
                    out.display()
                );
            }
            println!(
                "Registration information received from service: hub {}, deviceId {}, status {}",
                state.assigned_hub.as_deref().unwrap_or("-"),
                state.device_id.as_deref().unwrap_or("-"),
                state.status.as_str()
            );
            Ok(())
        }
        Err(ProvisionError::NotAssigned(status)) => {
            let detail = status
                .registration_state
                .as_ref()
                .and_then(|s| {
                    Some(format!(
                        " (errorCode {}: {})",
                        s.error_code?,
                        s.error_message.clone().unwrap_or_default()
                    ))
                })
                .unwrap_or_default();
            anyhow::bail!(
                "registration ended with status {}{detail}",
                status.status.as_str()
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// A CSR file (PEM `CERTIFICATE REQUEST`, or DER) as the register body's `csr`: base64 of the DER.
fn read_csr(path: &std::path::Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject as _;
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read --csr {}", path.display()))?;
    let der = match CertificateSigningRequestDer::from_pem_slice(&bytes) {
        Ok(der) => der.as_ref().to_vec(),
        Err(_) if bytes.first() == Some(&0x30) => bytes,
        Err(e) => anyhow::bail!(
            "invalid --csr {}: neither PEM nor DER ({e})",
            path.display()
        ),
    };
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

/// Writes base64 DER certificates as one PEM file.
fn write_chain(path: &std::path::Path, chain: &[String]) -> anyhow::Result<()> {
    let mut pem = String::new();
    for cert in chain {
        if !cert.is_ascii() {
            anyhow::bail!("the issued certificate is not base64");
        }
        pem.push_str(&usher_server::x509::pem_of_base64(cert));
    }
    std::fs::write(path, pem)
        .with_context(|| format!("cannot write --issued-cert-out {}", path.display()))
}
