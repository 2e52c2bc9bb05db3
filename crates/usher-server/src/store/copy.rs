//! Copying a whole instance from one store into another (`usher migrate`: SQLite to PostgreSQL and
//! back), and an export of a store's contents to check a copy by.
//!
//! The copy goes through the [`Store`] API, so each backend seals keys with its own data key and
//! numbers rows its own way; the export leaves positions out (a copy closes the gaps deletes left)
//! and keeps everything else, keys included, so two stores export the same lines exactly when they
//! hold the same instance. An export holds keys in plaintext: it is digested, never written out.

use futures_util::future::try_join_all;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::{
    Assignment, Bootstrap, Collection, Doc, HubDevice, Policy, Registration, Store, StoreError,
    to_ticks,
};

/// Rows read per page, and writes in flight at once (one group commit each).
const PAGE: u64 = 1000;
const IN_FLIGHT: usize = 256;

/// What a copy is doing, for a progress bar: (what, done so far, how many in all if known).
pub type Progress<'a> = &'a mut (dyn FnMut(&str, u64, Option<u64>) + Send);

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the source holds no instance")]
    NoSource,
    #[error("the target holds an instance already (ID scope {0}); copy only into an empty store")]
    TargetNotEmpty(String),
}

/// How many of each were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub enrollments: u64,
    pub enrollment_groups: u64,
    pub registrations: u64,
    pub hub_devices: u64,
    pub ca_certificates: u64,
    pub audit_entries: u64,
}

/// Copies the instance in `from` into the empty store `to`.
pub async fn copy(from: &Store, to: &Store, progress: Progress<'_>) -> Result<Copied, CopyError> {
    let instance = from.instance().await?.ok_or(CopyError::NoSource)?;
    if let Some(existing) = to.instance().await? {
        return Err(CopyError::TargetNotEmpty(existing.id_scope));
    }
    let counts = from.counts().await?;
    let hubs = from.hubs().await?;
    to.bootstrap(Bootstrap {
        instance,
        policies: from.policies().await?,
        hubs: hubs.clone(),
    })
    .await?;
    to.set_allocation_settings(from.allocation_settings().await?)
        .await?;
    for hub in hubs.iter().filter(|h| h.builtin) {
        to.ensure_hub_policies(&hub.name, from.hub_policies(&hub.name).await?)
            .await?;
    }
    let mut copied = Copied::default();
    for ca in from.ca_certificates().await? {
        let name = ca.name.clone();
        to.put_ca_certificate::<StoreError>(&name, move |_| Ok(ca))
            .await?;
        copied.ca_certificates += 1;
    }
    for (coll, label, total) in [
        (Collection::Enrollments, "enrollments", counts.enrollments),
        (
            Collection::EnrollmentGroups,
            "enrollment groups",
            counts.enrollment_groups,
        ),
    ] {
        let mut after = 0;
        let mut done = 0;
        loop {
            let page = from.docs(coll, after, PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            let items: Vec<(String, super::Decide<StoreError>)> = page
                .into_iter()
                .map(|(_, doc)| {
                    let id = doc.id.clone();
                    let decide: super::Decide<StoreError> = Box::new(move |_| Ok(doc));
                    (id, decide)
                })
                .collect();
            done += store_docs(to, coll, items).await?;
            progress(label, done, Some(total));
        }
        match coll {
            Collection::Enrollments => copied.enrollments = done,
            Collection::EnrollmentGroups => copied.enrollment_groups = done,
        }
    }
    let mut after = 0;
    loop {
        let page = from.registrations(after, PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for chunk in page.chunks(IN_FLIGHT) {
            try_join_all(chunk.iter().map(|(_, r)| {
                let record = r.clone();
                to.register(&r.registration_id, None, move |_| {
                    Ok::<_, StoreError>((
                        Assignment {
                            registration: Some(record),
                            ..Assignment::default()
                        },
                        (),
                    ))
                })
            }))
            .await?;
            copied.registrations += chunk.len() as u64;
            progress(
                "registration records",
                copied.registrations,
                Some(counts.registrations),
            );
        }
    }
    let total_devices = counts.hub_devices.iter().map(|(_, n)| n).sum();
    for hub in hubs.iter().filter(|h| h.builtin) {
        let mut after = 0;
        loop {
            let page = from.hub_devices(&hub.name, after, PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            for chunk in page.chunks(IN_FLIGHT) {
                try_join_all(chunk.iter().map(|(_, d)| {
                    let device = d.clone();
                    to.upsert_hub_device(&d.hub, &d.device_id, move |_| Ok::<_, StoreError>(device))
                }))
                .await?;
                copied.hub_devices += chunk.len() as u64;
                progress("hub devices", copied.hub_devices, Some(total_devices));
            }
        }
    }
    let mut anchor = Some(from.audit_anchor().await?);
    let mut after = anchor.as_ref().map_or(0, |(seq, _)| *seq);
    loop {
        let page = from.audit_entries(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        copied.audit_entries += page.len() as u64;
        let start = anchor
            .take()
            .unwrap_or_else(|| (0, usher_proto::audit::GENESIS.to_owned()));
        to.restore_audit(start, page).await?;
        progress("audit entries", copied.audit_entries, None);
    }
    if let Some(start) = anchor {
        to.restore_audit(start, Vec::new()).await?;
    }
    Ok(copied)
}

/// Stores documents as they are, in one transaction; how many.
async fn store_docs(
    to: &Store,
    coll: Collection,
    items: Vec<(String, super::Decide<StoreError>)>,
) -> Result<u64, StoreError> {
    let n = items.len() as u64;
    for outcome in to.upsert_docs(coll, items).await? {
        outcome?;
    }
    Ok(n)
}

/// The store's contents as lines of JSON, without positions, sorted.
pub async fn export(store: &Store) -> Result<Vec<String>, StoreError> {
    let mut lines = Vec::new();
    let mut push = |kind: &str, value: Value| lines.push(json!({ kind: value }).to_string());
    if let Some(i) = store.instance().await? {
        push(
            "instance",
            json!({"idScope": i.id_scope, "serviceHost": i.service_host, "created": to_ticks(i.created)}),
        );
    }
    push(
        "allocation",
        serde_json::to_value(store.allocation_settings().await?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
    );
    for p in store.policies().await? {
        push("policy", policy(&p));
    }
    for h in store.hubs().await? {
        push(
            "hub",
            json!({"name": h.name, "hostname": h.hostname, "weight": h.weight,
                   "applyAllocationPolicy": h.apply_allocation_policy, "builtin": h.builtin,
                   "created": to_ticks(h.created), "location": h.location}),
        );
        for p in store.hub_policies(&h.name).await? {
            push("hubPolicy", json!({"hub": h.name, "policy": policy(&p)}));
        }
        let mut after = 0;
        loop {
            let page = store.hub_devices(&h.name, after, PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            for (_, d) in page {
                push("hubDevice", hub_device(&d));
            }
        }
    }
    for c in store.ca_certificates().await? {
        push(
            "caCertificate",
            json!({"name": c.name, "certificate": c.certificate, "verified": c.verified,
                   "verificationCode": c.verification_code, "created": to_ticks(c.created),
                   "updated": to_ticks(c.updated), "etag": c.etag}),
        );
    }
    for (coll, kind) in [
        (Collection::Enrollments, "enrollment"),
        (Collection::EnrollmentGroups, "enrollmentGroup"),
    ] {
        let mut after = 0;
        loop {
            let page = store.docs(coll, after, PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            for (_, d) in page {
                push(kind, doc(&d));
            }
        }
    }
    let mut after = 0;
    loop {
        let page = store.registrations(after, PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, r) in page {
            push("registration", registration(&r));
        }
    }
    let (anchor_seq, anchor_hash) = store.audit_anchor().await?;
    push(
        "auditAnchor",
        json!({"seq": anchor_seq, "hash": anchor_hash}),
    );
    let mut after = anchor_seq;
    loop {
        let page = store.audit_entries(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page {
            push(
                "audit",
                json!({"seq": e.seq, "at": e.at, "actor": e.actor, "address": e.address,
                       "action": e.action, "target": e.target, "result": e.result,
                       "prev": e.prev, "hash": e.hash}),
            );
        }
    }
    // Canonical whatever order a copy stored rows in.
    lines.sort_unstable();
    Ok(lines)
}

/// An export's digest (SHA-256 of its lines, hex) and how many lines it has.
pub fn digest(lines: &[String]) -> (String, usize) {
    let mut hash = Sha256::new();
    for line in lines {
        hash.update(line.as_bytes());
        hash.update(b"\n");
    }
    let hex = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (hex, lines.len())
}

fn policy(p: &Policy) -> Value {
    json!({"name": p.name, "primaryKey": p.primary_key.to_base64(),
           "secondaryKey": p.secondary_key.to_base64(), "rights": p.rights_text()})
}

fn doc(d: &Doc) -> Value {
    json!({"id": d.id, "etag": d.etag, "doc": d.json})
}

fn hub_device(d: &HubDevice) -> Value {
    json!({"hub": d.hub, "deviceId": d.device_id, "status": d.status,
           "primaryKey": d.primary_key.to_base64(), "secondaryKey": d.secondary_key.to_base64(),
           "created": to_ticks(d.created), "updated": to_ticks(d.updated), "etag": d.etag,
           "generationId": d.generation_id, "doc": d.doc, "twin": d.twin,
           "twinVersion": d.twin_version})
}

fn registration(r: &Registration) -> Value {
    json!({"registrationId": r.registration_id, "enrollmentGroupId": r.enrollment_group_id,
           "status": r.status.as_str(), "substatus": r.substatus.map(|s| s.as_str()),
           "assignedHub": r.assigned_hub, "deviceId": r.device_id, "errorCode": r.error_code,
           "errorMessage": r.error_message, "created": to_ticks(r.created),
           "updated": to_ticks(r.updated), "etag": r.etag, "operationId": r.operation_id,
           "payload": r.payload, "initialHub": r.initial_hub})
}
