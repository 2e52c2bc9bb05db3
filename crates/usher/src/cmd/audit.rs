//! `usher audit list|export|verify`: the audit log through the management API
//! (`GET /usher/audit`), verified here, not by the server that wrote it.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};
use usher_proto::audit::{Entry, verify};

use super::service_client::ServiceClient;
use crate::cli::{AuditCommand, Login};

/// Entries fetched per request.
const PAGE: u64 = 1000;

pub(super) async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List {
            after,
            limit,
            json,
            login,
        } => {
            let client = ServiceClient::connect(&login).await?;
            let (_, entries) = page(&client, after, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            println!(
                "{:<6} {:<29} {:<28} {:<16} {:<24} {:<24} RESULT",
                "SEQ", "AT", "ACTOR", "ADDRESS", "ACTION", "TARGET"
            );
            for e in entries {
                println!(
                    "{:<6} {:<29} {:<28} {:<16} {:<24} {:<24} {}",
                    e.seq, e.at, e.actor, e.address, e.action, e.target, e.result
                );
            }
            Ok(())
        }
        AuditCommand::Export { file, login } => {
            let (anchor, entries) = everything(&login).await?;
            let mut out: Box<dyn std::io::Write> = match &file {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            writeln!(
                out,
                "{}",
                json!({"anchor": {"seq": anchor.0, "hash": anchor.1}})
            )?;
            for e in &entries {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            }
            out.flush()?;
            if let Some(path) = file {
                eprintln!(
                    "{} audit entries written to {}",
                    entries.len(),
                    path.display()
                );
            }
            Ok(())
        }
        AuditCommand::Verify { file, login } => {
            let (anchor, entries) = match file {
                Some(path) => read_export(&path)?,
                None => everything(&login).await?,
            };
            match verify(anchor.0, &anchor.1, &entries) {
                Ok(n) => {
                    println!(
                        "The audit log is intact: {n} entries, {} to {}, chained from the anchor at {}.",
                        anchor.0 + 1,
                        anchor.0 + n,
                        anchor.0
                    );
                    Ok(())
                }
                Err(broken) => bail!("the audit log has been tampered with: {broken}"),
            }
        }
    }
}

type Anchor = (u64, String);

async fn page(
    client: &ServiceClient,
    after: u64,
    limit: u64,
) -> anyhow::Result<(Anchor, Vec<Entry>)> {
    let answer = client
        .call(
            Method::GET,
            &format!("/usher/audit?after={after}&limit={limit}"),
            None,
            &[],
        )
        .await?;
    let anchor = anchor_of(&answer.body)?;
    let entries = serde_json::from_value(answer.body["entries"].clone())
        .context("the server's audit entries are not in the expected form")?;
    Ok((anchor, entries))
}

fn anchor_of(v: &Value) -> anyhow::Result<Anchor> {
    let seq = v["anchor"]["seq"].as_u64().context("no anchor.seq")?;
    let hash = v["anchor"]["hash"].as_str().context("no anchor.hash")?;
    Ok((seq, hash.to_owned()))
}

/// The whole log, page by page.
async fn everything(login: &Login) -> anyhow::Result<(Anchor, Vec<Entry>)> {
    let client = ServiceClient::connect(login).await?;
    let (anchor, mut entries) = page(&client, 0, PAGE).await?;
    while let Some(last) = entries.last().map(|e| e.seq) {
        let (_, more) = page(&client, last, PAGE).await?;
        if more.is_empty() {
            break;
        }
        entries.extend(more);
    }
    Ok((anchor, entries))
}

fn read_export(path: &std::path::Path) -> anyhow::Result<(Anchor, Vec<Entry>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().context("the export is empty")?;
    let anchor = anchor_of(&serde_json::from_str(first).context("line 1 is not the anchor")?)?;
    let entries = lines
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("line {} is not an audit entry", i + 2))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((anchor, entries))
}
