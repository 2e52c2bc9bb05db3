//! The embedded SQLite backend.
//!
//! One writer thread owns the only write connection. Writes arrive as jobs on a channel; the writer
//! takes the first, drains whatever else is queued (up to [`MAX_BATCH`]), runs each inside its own
//! `SAVEPOINT` in one transaction so a refused job writes nothing while the others commit, commits
//! once (one fsync), and only then answers every job. Reads use a small pool of read connections,
//! which WAL mode lets run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{Connection, OptionalExtension as _, Row, params};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

use super::{
    AllocationSettings, Assignment, Bootstrap, CaCertificate, Collection, Counts, Doc, Hub,
    HubDevice, Instance, Policy, RegisterView, Registration, Right, StoreError, TwinWrite,
    from_ticks, to_ticks,
};
use usher_proto::SymmetricKey;
use usher_proto::model::{RegistrationStatus, Substatus};

use super::Time;
use crate::secrets::{DataKey, Kek, Sealer};
use usher_proto::audit::{Entry as AuditEntry, Record as AuditRecord};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 256;
/// Queued jobs beyond which writers wait (back-pressure).
const QUEUE_DEPTH: usize = 4096;
/// Read connections kept open for reuse.
const READ_POOL: usize = 8;

/// Schema migrations, applied in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_initial.sql"),
    include_str!("migrations/sqlite/0002_hub_registry.sql"),
    include_str!("migrations/sqlite/0003_keyring.sql"),
    include_str!("migrations/sqlite/0004_audit_log.sql"),
    include_str!("migrations/sqlite/0005_allocation.sql"),
    include_str!("migrations/sqlite/0006_typed_rows.sql"),
    include_str!("migrations/sqlite/0007_x509_registrations.sql"),
    include_str!("migrations/sqlite/0008_ca_certificates.sql"),
];

/// A job for the writer. `run` executes inside a savepoint and says whether to keep its changes;
/// the completion it returns is called with the outcome of the commit. `abandon` is called instead
/// of `run` when the transaction could not even start.
trait Job: Send {
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Completion);
    fn abandon(self: Box<Self>, error: StoreError);
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct WriteJob<F, T, E> {
    work: F,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Job for WriteJob<F, T, E>
where
    F: FnOnce(&Connection) -> Result<T, E> + Send,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Completion) {
        let Self { work, reply } = *self;
        let result = work(conn);
        let keep = result.is_ok();
        let completion: Completion = Box::new(move |commit| {
            // A refused job reports its own error; a kept one reports the commit's.
            let outcome = match commit {
                Ok(()) => result,
                Err(e) => result.and_then(|_| Err(E::from(e))),
            };
            let _ = reply.send(outcome);
        });
        (keep, completion)
    }

    fn abandon(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(E::from(error)));
    }
}

/// The SQLite store. Cloning shares the writer and the read pool.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Box<dyn Job>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: Arc<PathBuf>,
    /// Shared with the writer thread, which records each commit once a handle is set.
    metrics: Arc<OnceLock<Metrics>>,
    /// Seals secret columns on the way in and opens them on the way out.
    sealer: Arc<Sealer>,
    /// Bumped after every committed write to enrollment groups, so caches of them know to reload.
    groups_generation: Arc<std::sync::atomic::AtomicU64>,
}

impl SqliteStore {
    /// Opens the database (created 0600, so SQLite's journal files are too), applies migrations,
    /// unwraps the data key with `kek` (making and wrapping one on first open), seals any secret
    /// still in plaintext from before encryption, and starts the writer thread.
    pub fn open(path: &Path, kek: &Kek) -> Result<Self, StoreError> {
        crate::files::touch_private(path)
            .map_err(|e| StoreError::Database(format!("cannot create {}: {e}", path.display())))?;
        let conn = open_connection(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL;")?;
        migrate(&conn)?;
        let sealer = Arc::new(Sealer::new(data_key(&conn, kek)?));
        seal_plaintext(&conn, &sealer)?;
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let metrics = Arc::new(OnceLock::new());
        let writer_metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("usher-store-writer".into())
            .spawn(move || writer_loop(conn, rx, &writer_metrics))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            jobs,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: Arc::new(path.to_owned()),
            metrics,
            sealer,
            groups_generation: Arc::default(),
        })
    }

    pub(super) fn set_metrics(&self, metrics: Metrics) {
        let _ = self.metrics.set(metrics);
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        if self.jobs.is_closed() {
            return Err(StoreError::WriterGone);
        }
        self.read(|c| {
            c.row("SELECT MAX(version) FROM schema_version", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?;
            Ok(())
        })
        .await
    }

    /// Re-wraps the data key with `new` (after checking `current` unwraps it), in one transaction.
    pub fn rewrap(path: &Path, current: &Kek, new: &Kek) -> Result<(), StoreError> {
        let conn = open_connection(path)?;
        migrate(&conn)?;
        let dek = data_key(&conn, current)?;
        conn.execute(
            "UPDATE keyring SET kek_id = ?1, wrapped_dek = ?2 WHERE id = 1",
            params![new.id(), new.wrap(&dek)?],
        )?;
        Ok(())
    }

    /// Runs `work` in the writer's next transaction and waits until it is durable.
    async fn write<T, E>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(WriteJob { work, reply });
        self.jobs
            .send(job)
            .await
            .map_err(|_| E::from(StoreError::WriterGone))?;
        rx.await.map_err(|_| E::from(StoreError::WriterGone))?
    }

    /// Runs a point read (rows found by key through an index: a few microseconds on cached pages)
    /// on the calling thread. Handing it to the blocking pool and back cost more than the read
    /// itself (two context switches per read; kernel task switching was 37 % of a registration's
    /// samples); scans and pages go through [`Self::read`].
    fn read_now<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .readers
            .lock()
            .map_err(|_| StoreError::Database("read pool poisoned".into()))?
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = work(&conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < READ_POOL
        {
            pool.push(conn);
        }
        result
    }

    /// Runs `work` on a read connection off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || {
            let pooled = readers
                .lock()
                .map_err(|_| StoreError::Database("read pool poisoned".into()))?
                .pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_connection(&path)?,
            };
            let result = work(&conn);
            if let Ok(mut pool) = readers.lock()
                && pool.len() < READ_POOL
            {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }

    pub(super) async fn instance(&self) -> Result<Option<Instance>, StoreError> {
        self.read_now(|c| Ok(load_instance(c)?))
    }

    pub(super) async fn bootstrap(&self, first: Bootstrap) -> Result<Instance, StoreError> {
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            if let Some(existing) = load_instance(c)? {
                return Ok(existing);
            }
            let i = &first.instance;
            c.exec(
                "INSERT INTO instance (id, id_scope, service_host, created) VALUES (1, ?1, ?2, ?3)",
                params![i.id_scope, i.service_host, to_ticks(i.created)],
            )?;
            for p in &first.policies {
                insert_policy(c, &sealer, "policies", None, p)?;
            }
            for h in &first.hubs {
                insert_hub(c, h)?;
            }
            Ok(first.instance)
        })
        .await
    }

    pub(super) async fn policy(&self, name: &str) -> Result<Option<Policy>, StoreError> {
        let sealer = &self.sealer;
        self.read_now(|c| {
            c.prepare_cached(
                "SELECT name, primary_key, secondary_key, rights FROM policies WHERE name = ?1",
            )?
            .query_row([name], raw_policy)
            .optional()?
            .map(|p| open_policy(sealer, p))
            .transpose()
        })
    }

    pub(super) async fn policies(&self) -> Result<Vec<Policy>, StoreError> {
        let sealer = Arc::clone(&self.sealer);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, primary_key, secondary_key, rights FROM policies ORDER BY name",
            )?;
            let rows: Vec<RawPolicy> = stmt.query_map([], raw_policy)?.collect::<Result<_, _>>()?;
            rows.into_iter().map(|p| open_policy(&sealer, p)).collect()
        })
        .await
    }

    pub(super) async fn add_policy(&self, p: Policy) -> Result<bool, StoreError> {
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| insert_policy(c, &sealer, "policies", None, &p))
            .await
    }

    pub(super) async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |c| Ok(c.exec("DELETE FROM policies WHERE name = ?1", [name])? == 1))
            .await
    }

    pub(super) async fn set_policy_keys(
        &self,
        name: &str,
        primary_key: SymmetricKey,
        secondary_key: SymmetricKey,
    ) -> Result<Option<Policy>, StoreError> {
        let name = name.to_owned();
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            c.exec(
                "UPDATE policies SET primary_key = ?2, secondary_key = ?3 WHERE name = ?1",
                params![
                    name,
                    sealer.seal(&primary_key.to_base64())?,
                    sealer.seal(&secondary_key.to_base64())?
                ],
            )?;
            c.row(
                "SELECT name, primary_key, secondary_key, rights FROM policies WHERE name = ?1",
                [&name],
                raw_policy,
            )
            .optional()?
            .map(|p| open_policy(&sealer, p))
            .transpose()
        })
        .await
    }

    pub(super) async fn hubs(&self) -> Result<Vec<Hub>, StoreError> {
        self.read_now(|c| Ok(load_hubs(c)?))
    }

    pub(super) async fn add_hub(&self, hub: Hub) -> Result<bool, StoreError> {
        self.write(move |c| {
            let taken: bool = c.row(
                "SELECT EXISTS (SELECT 1 FROM hubs WHERE name = ?1 OR hostname = ?2)",
                params![hub.name, hub.hostname],
                |r| r.get(0),
            )?;
            if taken {
                return Ok(false);
            }
            insert_hub(c, &hub)?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn counts(&self) -> Result<Counts, StoreError> {
        self.read(|c| {
            let count = |table: &str| -> Result<u64, StoreError> {
                let n: i64 = c.row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            let mut stmt = c.prepare_cached(
                "SELECT hubs.name, COUNT(hub_devices.device_id) FROM hubs
                 LEFT JOIN hub_devices ON hub_devices.hub = hubs.name
                 WHERE hubs.builtin GROUP BY hubs.name ORDER BY hubs.seq",
            )?;
            let hub_devices = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .map(|row| row.map(|(hub, n)| (hub, u64::try_from(n).unwrap_or(0))))
                .collect::<Result<_, _>>()?;
            Ok(Counts {
                enrollments: count("enrollments")?,
                enrollment_groups: count("enrollment_groups")?,
                registrations: count("registrations")?,
                hub_devices,
            })
        })
        .await
    }

    pub(super) async fn hub_devices(
        &self,
        hub: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, HubDevice)>, StoreError> {
        let hub = hub.to_owned();
        let sealer = Arc::clone(&self.sealer);
        self.read(move |c| {
            let sql = format!(
                "SELECT {HUB_DEVICE_COLUMNS}, seq FROM hub_devices WHERE hub = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![hub, clamp(after), clamp(limit)], |r| {
                    Ok((r.get::<_, i64>(12)?, raw_hub_device(r)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(seq, raw)| Ok((u64::try_from(seq).unwrap_or(0), parse_hub_device(&sealer, raw)?)))
                .collect()
        })
        .await
    }

    pub(super) async fn hub_device_counts(&self, hub: &str) -> Result<(u64, u64), StoreError> {
        let hub = hub.to_owned();
        self.read(move |c| {
            let (total, enabled): (i64, i64) = c.prepare_cached(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'enabled') FROM hub_devices WHERE hub = ?1",
            )?
            .query_row([hub], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok((u64::try_from(total).unwrap_or(0), u64::try_from(enabled).unwrap_or(0)))
        })
        .await
    }

    pub(super) async fn hub_device(
        &self,
        hub: &str,
        device_id: &str,
    ) -> Result<Option<HubDevice>, StoreError> {
        self.read_now(|c| load_hub_device(c, &self.sealer, hub, device_id))
    }

    pub(super) async fn upsert_hub_device<E>(
        &self,
        hub: &str,
        device_id: &str,
        decide: impl FnOnce(Option<HubDevice>) -> Result<HubDevice, E> + Send + 'static,
    ) -> Result<HubDevice, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let (hub, device_id) = (hub.to_owned(), device_id.to_owned());
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            let current = load_hub_device(c, &sealer, &hub, &device_id)?;
            let device = decide(current)?;
            write_hub_device(c, &sealer, &device)?;
            Ok(device)
        })
        .await
    }

    pub(super) async fn delete_hub_device<E>(
        &self,
        hub: &str,
        device_id: &str,
        allow: impl FnOnce(&HubDevice) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<HubDevice>, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let (hub, device_id) = (hub.to_owned(), device_id.to_owned());
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            let Some(device) = load_hub_device(c, &sealer, &hub, &device_id)? else {
                return Ok(None);
            };
            allow(&device)?;
            c.exec(
                "DELETE FROM hub_devices WHERE hub = ?1 AND device_id = ?2",
                params![hub, device_id],
            )
            .map_err(StoreError::from)?;
            Ok(Some(device))
        })
        .await
    }

    pub(super) async fn hub_policy(
        &self,
        hub: &str,
        name: &str,
    ) -> Result<Option<Policy>, StoreError> {
        self.read_now(|c| {
            c.prepare_cached(
                "SELECT name, primary_key, secondary_key, rights FROM hub_policies WHERE hub = ?1 AND name = ?2",
            )?
            .query_row(params![hub, name], raw_policy)
            .optional()?
            .map(|p| open_policy(&self.sealer, p))
            .transpose()
        })
    }

    pub(super) async fn ensure_hub_policies(
        &self,
        hub: &str,
        policies: Vec<Policy>,
    ) -> Result<(), StoreError> {
        let hub = hub.to_owned();
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            for p in &policies {
                insert_policy(c, &sealer, "hub_policies", Some(&hub), p)?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn doc(&self, coll: Collection, id: &str) -> Result<Option<Doc>, StoreError> {
        let key = id.to_ascii_lowercase();
        self.read_now(|c| load_doc(c, &self.sealer, coll, &key))
    }

    pub(super) async fn docs(
        &self,
        coll: Collection,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Doc)>, StoreError> {
        let sealer = Arc::clone(&self.sealer);
        self.read(move |c| {
            let sql = format!(
                "SELECT seq, {DOC_COLUMNS} FROM {} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                table(coll)
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![clamp(after), clamp(limit)], |r| {
                    Ok((r.get::<_, i64>(0)?, raw_doc_at(r, 1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(seq, raw)| Ok((u64::try_from(seq).unwrap_or(0), parse_doc(&sealer, raw)?)))
                .collect()
        })
        .await
    }

    pub(super) async fn upsert_doc<E>(
        &self,
        coll: Collection,
        id: &str,
        decide: impl FnOnce(Option<Doc>) -> Result<Doc, E> + Send + 'static,
    ) -> Result<Doc, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let key = id.to_ascii_lowercase();
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            let current = load_doc(c, &sealer, coll, &key)?;
            let doc = decide(current)?;
            write_doc(c, &sealer, coll, &key, &doc)?;
            Ok(doc)
        })
        .await
        .inspect(|_| self.touched(coll))
    }

    pub(super) async fn upsert_docs<E>(
        &self,
        coll: Collection,
        items: Vec<(String, super::Decide<E>)>,
    ) -> Result<Vec<Result<(), E>>, StoreError>
    where
        E: Send + 'static,
    {
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            let mut outcomes = Vec::with_capacity(items.len());
            for (id, decide) in items {
                let key = id.to_ascii_lowercase();
                let current = load_doc(c, &sealer, coll, &key)?;
                match decide(current) {
                    Ok(doc) => {
                        write_doc(c, &sealer, coll, &key, &doc)?;
                        outcomes.push(Ok(()));
                    }
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            Ok::<_, StoreError>(outcomes)
        })
        .await
        .inspect(|_| self.touched(coll))
    }

    pub(super) async fn insert_docs(
        &self,
        coll: Collection,
        docs: Vec<Doc>,
    ) -> Result<Vec<bool>, StoreError> {
        let rows = docs
            .iter()
            .map(|d| encode_doc(&self.sealer, &d.id.to_ascii_lowercase(), d))
            .collect::<Result<Vec<_>, _>>()?;
        self.write(move |c| {
            rows.iter()
                .map(|row| put_row(c, coll, row, OnConflict::Keep))
                .collect::<Result<Vec<bool>, StoreError>>()
        })
        .await
        .inspect(|_| self.touched(coll))
    }

    pub(super) async fn delete_doc<E>(
        &self,
        coll: Collection,
        id: &str,
        allow: impl FnOnce(&Doc) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<Doc>, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let key = id.to_ascii_lowercase();
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            let Some(doc) = load_doc(c, &sealer, coll, &key)? else {
                return Ok(None);
            };
            allow(&doc)?;
            c.exec(
                &format!("DELETE FROM {} WHERE key = ?1", table(coll)),
                [&key],
            )
            .map_err(StoreError::from)?;
            Ok(Some(doc))
        })
        .await
        .inspect(|_| self.touched(coll))
    }

    /// Notes a committed write to a collection.
    fn touched(&self, coll: Collection) {
        if coll == Collection::EnrollmentGroups {
            self.groups_generation
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    pub(super) fn groups_generation(&self) -> u64 {
        self.groups_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) async fn registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<Registration>, StoreError> {
        let key = registration_id.to_ascii_lowercase();
        self.read_now(|c| load_registration(c, &key))
    }

    pub(super) async fn registrations_of_group(
        &self,
        group_id: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Registration)>, StoreError> {
        let key = group_id.to_ascii_lowercase();
        self.read(move |c| {
            let sql = format!(
                "SELECT {REGISTRATION_COLUMNS}, seq FROM registrations
                 WHERE enrollment_group_key = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![key, clamp(after), clamp(limit)], |r| {
                    Ok((r.get::<_, i64>(16)?, raw_registration(r)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(seq, raw)| Ok((u64::try_from(seq).unwrap_or(0), parse_registration(raw)?)))
                .collect()
        })
        .await
    }

    pub(super) async fn append_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        self.write(move |c| append_audit(c, records)).await
    }

    pub(super) async fn audit_entries(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, at, actor, address, action, target, result, prev, hash FROM audit_log
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![clamp(after), clamp(limit)], |r| {
                    Ok(AuditEntry {
                        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        address: r.get(3)?,
                        action: r.get(4)?,
                        target: r.get(5)?,
                        result: r.get(6)?,
                        prev: r.get(7)?,
                        hash: r.get(8)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn audit_anchor(&self) -> Result<(u64, String), StoreError> {
        self.read(|c| {
            let anchor: Option<(i64, String)> = c
                .row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            Ok(anchor.map_or_else(
                || (0, usher_proto::audit::GENESIS.to_owned()),
                |(seq, hash)| (u64::try_from(seq).unwrap_or(0), hash),
            ))
        })
        .await
    }

    pub(super) async fn prune_audit(&self, before: String) -> Result<u64, StoreError> {
        self.write(move |c| {
            let last: Option<(i64, String)> = c
                .row(
                    "SELECT seq, hash FROM audit_log WHERE at < ?1 ORDER BY seq DESC LIMIT 1",
                    [&before],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((seq, hash)) = last else {
                return Ok(0);
            };
            // Everything up to that entry goes, so the chain stays whole from the anchor on.
            let n = c.exec("DELETE FROM audit_log WHERE seq <= ?1", [seq])?;
            c.exec(
                "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                params![seq, hash],
            )?;
            Ok(n as u64)
        })
        .await
    }

    pub(super) async fn registrations(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Registration)>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {REGISTRATION_COLUMNS}, seq FROM registrations WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![clamp(after), clamp(limit)], |r| Ok((r.get::<_, i64>(16)?, raw_registration(r)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(|(seq, raw)| Ok((u64::try_from(seq).unwrap_or(0), parse_registration(raw)?))).collect()
        })
        .await
    }

    pub(super) async fn recent_registrations(
        &self,
        limit: u64,
    ) -> Result<Vec<Registration>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {REGISTRATION_COLUMNS} FROM registrations ORDER BY updated DESC, seq DESC LIMIT ?1"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map([clamp(limit)], raw_registration)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(parse_registration).collect()
        })
        .await
    }

    pub(super) async fn register<R, E>(
        &self,
        registration_id: &str,
        group_id: Option<&str>,
        decide: impl FnOnce(RegisterView) -> Result<(Assignment, R), E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let key = registration_id.to_ascii_lowercase();
        let group_key = group_id.map(str::to_ascii_lowercase);
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            let view = RegisterView {
                previous: load_registration(c, &key)?,
                hubs: load_hubs(c).map_err(StoreError::from)?,
                allocation: load_allocation(c)?,
                individual: load_doc(c, &sealer, Collection::Enrollments, &key)?,
                group: match &group_key {
                    Some(g) => load_doc(c, &sealer, Collection::EnrollmentGroups, g)?,
                    None => None,
                },
            };
            let (assignment, answer) = decide(view)?;
            write_assignment(c, &sealer, assignment)?;
            Ok(answer)
        })
        .await
    }

    pub(super) async fn allocation_settings(&self) -> Result<AllocationSettings, StoreError> {
        self.read_now(load_allocation)
    }

    pub(super) async fn set_allocation_settings(
        &self,
        settings: AllocationSettings,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let geo = serde_json::to_string(&settings.geo_map)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            c.exec(
                "UPDATE instance SET allocation_policy = ?1, geo_map = ?2 WHERE id = 1",
                params![settings.default_policy.as_str(), geo],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn update_hub(
        &self,
        name: &str,
        change: impl FnOnce(&mut Hub) + Send + 'static,
    ) -> Result<Option<Hub>, StoreError> {
        let name = name.to_owned();
        self.write(move |c| {
            let Some(mut hub) = load_hubs(c)?.into_iter().find(|h| h.name == name) else {
                return Ok(None);
            };
            change(&mut hub);
            c.exec(
                "UPDATE hubs SET weight = ?2, apply_allocation_policy = ?3, location = ?4 WHERE name = ?1",
                params![hub.name, hub.weight, hub.apply_allocation_policy, hub.location],
            )?;
            Ok(Some(hub))
        })
        .await
    }

    pub(super) async fn ca_certificates(&self) -> Result<Vec<CaCertificate>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CA_COLUMNS} FROM ca_certificates ORDER BY key"
            ))?;
            Ok(stmt.query_map([], ca_row)?.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub(super) async fn ca_certificate(
        &self,
        name: &str,
    ) -> Result<Option<CaCertificate>, StoreError> {
        let key = name.to_ascii_lowercase();
        self.read_now(|c| load_ca(c, &key))
    }

    pub(super) async fn put_ca_certificate<E>(
        &self,
        name: &str,
        decide: impl FnOnce(Option<CaCertificate>) -> Result<CaCertificate, E> + Send + 'static,
    ) -> Result<CaCertificate, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let key = name.to_ascii_lowercase();
        self.write(move |c| {
            let ca = decide(load_ca(c, &key)?)?;
            c.exec(
                "INSERT INTO ca_certificates (key, name, certificate, verified, verification_code, created, updated, etag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (key) DO UPDATE SET name = excluded.name, certificate = excluded.certificate,
                   verified = excluded.verified, verification_code = excluded.verification_code,
                   created = excluded.created, updated = excluded.updated, etag = excluded.etag",
                params![
                    key,
                    ca.name,
                    ca.certificate,
                    ca.verified,
                    ca.verification_code,
                    to_ticks(ca.created),
                    to_ticks(ca.updated),
                    ca.etag
                ],
            )
            .map_err(StoreError::from)?;
            Ok(ca)
        })
        .await
    }

    pub(super) async fn delete_ca_certificate<E>(
        &self,
        name: &str,
        allow: impl FnOnce(&CaCertificate) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<CaCertificate>, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let key = name.to_ascii_lowercase();
        self.write(move |c| {
            let Some(ca) = load_ca(c, &key)? else {
                return Ok(None);
            };
            allow(&ca)?;
            c.exec("DELETE FROM ca_certificates WHERE key = ?1", [&key])
                .map_err(StoreError::from)?;
            Ok(Some(ca))
        })
        .await
    }

    pub(super) async fn hub_policies(&self, hub: &str) -> Result<Vec<Policy>, StoreError> {
        let hub = hub.to_owned();
        let sealer = Arc::clone(&self.sealer);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, primary_key, secondary_key, rights FROM hub_policies WHERE hub = ?1 ORDER BY name",
            )?;
            let rows: Vec<RawPolicy> = stmt.query_map([hub], raw_policy)?.collect::<Result<_, _>>()?;
            rows.into_iter().map(|p| open_policy(&sealer, p)).collect()
        })
        .await
    }

    pub(super) async fn restore_audit(
        &self,
        (anchor_seq, anchor_hash): (u64, String),
        entries: Vec<AuditEntry>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            if anchor_seq > 0 {
                c.exec(
                    "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    params![clamp(anchor_seq), anchor_hash],
                )?;
            }
            for e in &entries {
                insert_audit_entry(c, e)?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn delete_registration<E>(
        &self,
        registration_id: &str,
        allow: impl FnOnce(&Registration) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<Registration>, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let key = registration_id.to_ascii_lowercase();
        self.write(move |c| {
            let Some(reg) = load_registration(c, &key)? else {
                return Ok(None);
            };
            allow(&reg)?;
            c.exec("DELETE FROM registrations WHERE key = ?1", [&key])
                .map_err(StoreError::from)?;
            Ok(Some(reg))
        })
        .await
    }
}

use serde_json::Value;

/// Writes a registration's effects: the record, the hub identity (with its twin as the decision
/// says), the identity it left, and the audit entries.
fn write_assignment(c: &Connection, sealer: &Sealer, a: Assignment) -> Result<(), StoreError> {
    if let Some(r) = &a.registration {
        let payload = r.payload.as_ref().map(Value::to_string);
        c.prepare_cached(&format!(
            "INSERT INTO registrations ({REGISTRATION_COLUMNS}, key, enrollment_group_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
             ON CONFLICT (key) DO UPDATE SET
               registration_id = excluded.registration_id, enrollment_group_id = excluded.enrollment_group_id,
               enrollment_group_key = excluded.enrollment_group_key, status = excluded.status,
               substatus = excluded.substatus, assigned_hub = excluded.assigned_hub,
               device_id = excluded.device_id, error_code = excluded.error_code,
               error_message = excluded.error_message, updated = excluded.updated, etag = excluded.etag,
               operation_id = excluded.operation_id, payload = excluded.payload,
               initial_hub = excluded.initial_hub, x509 = excluded.x509,
               issued_chain = excluded.issued_chain"
        ))?
        .execute(params![
            r.registration_id,
            r.enrollment_group_id,
            r.status.as_str(),
            r.substatus.map(Substatus::as_str),
            r.assigned_hub,
            r.device_id,
            r.error_code,
            r.error_message,
            to_ticks(r.created),
            to_ticks(r.updated),
            r.etag,
            r.operation_id,
            payload,
            r.initial_hub,
            r.x509.as_ref().map(Value::to_string),
            r.issued_chain
                .as_ref()
                .map(|c| serde_json::to_string(c).unwrap_or_default()),
            r.registration_id.to_ascii_lowercase(),
            r.enrollment_group_id.as_deref().map(str::to_ascii_lowercase),
        ])?;
    }
    if let Some(write) = &a.device {
        let d = &write.device;
        // The twin to carry over is read before the identity it comes from is removed.
        let carried = match &write.twin {
            TwinWrite::CopyFrom(hub, device_id) => {
                load_hub_device(c, sealer, hub, device_id)?.map(|from| from.twin)
            }
            _ => None,
        };
        let existing = load_hub_device(c, sealer, &d.hub, &d.device_id)?;
        let device = write.onto(existing, carried);
        write_hub_device(c, sealer, &device)?;
    }
    if let Some((hub, device_id)) = &a.remove_device {
        c.exec(
            "DELETE FROM hub_devices WHERE hub = ?1 AND device_id = ?2",
            params![hub, device_id],
        )?;
    }
    append_audit(c, a.audit)?;
    Ok(())
}

const REGISTRATION_COLUMNS: &str = "registration_id, enrollment_group_id, status, substatus, assigned_hub, device_id, \
     error_code, error_message, created, updated, etag, operation_id, payload, initial_hub, x509, issued_chain";

const HUB_DEVICE_COLUMNS: &str = "hub, device_id, status, primary_key, secondary_key, created, updated, etag, \
     generation_id, doc, twin, twin_version";

/// A hub device row before its keys are opened and its JSON parsed.
struct RawHubDevice {
    hub: String,
    device_id: String,
    status: String,
    keys: [String; 2],
    created: i64,
    updated: i64,
    etag: String,
    generation_id: String,
    doc: String,
    twin: String,
    twin_version: i64,
}

fn raw_hub_device(r: &Row<'_>) -> rusqlite::Result<RawHubDevice> {
    Ok(RawHubDevice {
        hub: r.get(0)?,
        device_id: r.get(1)?,
        status: r.get(2)?,
        keys: [r.get(3)?, r.get(4)?],
        created: r.get(5)?,
        updated: r.get(6)?,
        etag: r.get(7)?,
        generation_id: r.get(8)?,
        doc: r.get(9)?,
        twin: r.get(10)?,
        twin_version: r.get(11)?,
    })
}

fn parse_hub_device(sealer: &Sealer, d: RawHubDevice) -> Result<HubDevice, StoreError> {
    let corrupt =
        |e: serde_json::Error| StoreError::Corrupt(format!("hub device {}: {e}", d.device_id));
    let [primary, secondary] = &d.keys;
    Ok(HubDevice {
        doc: serde_json::from_str(&d.doc).map_err(corrupt)?,
        twin: serde_json::from_str(&d.twin).map_err(corrupt)?,
        primary_key: open_key(sealer, primary)?,
        secondary_key: open_key(sealer, secondary)?,
        created: from_ticks(d.created),
        updated: from_ticks(d.updated),
        hub: d.hub,
        device_id: d.device_id,
        status: d.status,
        etag: d.etag,
        generation_id: d.generation_id,
        twin_version: d.twin_version,
    })
}

/// Opens a sealed key column.
pub(super) fn open_key(sealer: &Sealer, sealed: &str) -> Result<SymmetricKey, StoreError> {
    SymmetricKey::from_base64(&sealer.open(sealed)?)
        .map_err(|e| StoreError::Corrupt(format!("a stored key: {e}")))
}

fn load_hub_device(
    c: &Connection,
    sealer: &Sealer,
    hub: &str,
    device_id: &str,
) -> Result<Option<HubDevice>, StoreError> {
    let sql =
        format!("SELECT {HUB_DEVICE_COLUMNS} FROM hub_devices WHERE hub = ?1 AND device_id = ?2");
    c.row(&sql, params![hub, device_id], raw_hub_device)
        .optional()?
        .map(|raw| parse_hub_device(sealer, raw))
        .transpose()
}

fn write_hub_device(c: &Connection, sealer: &Sealer, d: &HubDevice) -> Result<(), StoreError> {
    c.exec(
        &format!(
            "INSERT INTO hub_devices ({HUB_DEVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (hub, device_id) DO UPDATE SET status = excluded.status,
               primary_key = excluded.primary_key, secondary_key = excluded.secondary_key,
               updated = excluded.updated, etag = excluded.etag, generation_id = excluded.generation_id,
               doc = excluded.doc, twin = excluded.twin, twin_version = excluded.twin_version"
        ),
        params![
            d.hub,
            d.device_id,
            d.status,
            sealer.seal(&d.primary_key.to_base64())?,
            sealer.seal(&d.secondary_key.to_base64())?,
            to_ticks(d.created),
            to_ticks(d.updated),
            d.etag,
            d.generation_id,
            d.doc.to_string(),
            d.twin.to_string(),
            d.twin_version,
        ],
    )?;
    Ok(())
}

/// Runs statements through the connection's statement cache: each SQL text is parsed and planned
/// once per connection, not on every call (parsing was 6-7 % of a registration's CPU).
trait Cached {
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // Every statement Usher runs is compiled once per connection and kept (see `Cached`).
    conn.set_prepared_statement_cache_capacity(128);
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: Option<i64> =
        conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
    let current = current.unwrap_or(0);
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    // Some migrations rebuild tables others refer to: foreign keys are checked once, after.
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql}; INSERT INTO schema_version (version) VALUES ({version}); COMMIT;"))
            .inspect_err(|_| {
                let _ = conn.execute_batch("ROLLBACK");
            })?;
    }
    let broken: Option<String> = conn
        .query_row(
            "SELECT \"table\" FROM pragma_foreign_key_check LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    if let Some(table) = broken {
        return Err(StoreError::Corrupt(format!(
            "a row of {table} refers to a row that does not exist"
        )));
    }
    Ok(())
}

fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    metrics: &OnceLock<Metrics>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = tokio::time::Instant::now();
        let batch_size = batch.len();
        if let Err(e) = conn.exec("BEGIN IMMEDIATE", []) {
            let error = StoreError::from(e);
            for job in batch {
                job.abandon(error.clone());
            }
            continue;
        }
        let mut completions = Vec::with_capacity(batch.len());
        for job in batch {
            if let Err(e) = conn.exec("SAVEPOINT job", []) {
                job.abandon(StoreError::from(e));
                continue;
            }
            let (keep, completion) = job.run(&conn);
            let end = if keep {
                conn.exec("RELEASE job", [])
            } else {
                conn.exec("ROLLBACK TO job", [])
                    .and_then(|_| conn.exec("RELEASE job", []))
            };
            match end {
                Ok(_) => completions.push(completion),
                Err(e) => completion(Err(StoreError::from(e))),
            }
        }
        let commit = conn
            .exec("COMMIT", [])
            .map(|_| ())
            .map_err(StoreError::from);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        if let Some(metrics) = metrics.get() {
            metrics.store_commit(started.elapsed(), batch_size);
        }
        for completion in completions {
            completion(commit.clone());
        }
    }
}

fn load_instance(c: &Connection) -> rusqlite::Result<Option<Instance>> {
    c.row(
        "SELECT id_scope, service_host, created FROM instance WHERE id = 1",
        [],
        |r| {
            Ok(Instance {
                id_scope: r.get(0)?,
                service_host: r.get(1)?,
                created: from_ticks(r.get(2)?),
            })
        },
    )
    .optional()
}

fn insert_hub(c: &Connection, h: &Hub) -> rusqlite::Result<()> {
    c.exec(
        "INSERT INTO hubs (name, hostname, weight, apply_allocation_policy, builtin, created, location, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT coalesce(max(seq), 0) + 1 FROM hubs))",
        params![h.name, h.hostname, h.weight, h.apply_allocation_policy, h.builtin, to_ticks(h.created), h.location],
    )?;
    Ok(())
}

fn hub_row(r: &Row<'_>) -> rusqlite::Result<Hub> {
    Ok(Hub {
        name: r.get(0)?,
        hostname: r.get(1)?,
        weight: r.get(2)?,
        apply_allocation_policy: r.get(3)?,
        builtin: r.get(4)?,
        created: from_ticks(r.get(5)?),
        location: r.get(6)?,
    })
}

const CA_COLUMNS: &str = "name, certificate, verified, verification_code, created, updated, etag";

fn ca_row(r: &Row<'_>) -> rusqlite::Result<CaCertificate> {
    Ok(CaCertificate {
        name: r.get(0)?,
        certificate: r.get(1)?,
        verified: r.get(2)?,
        verification_code: r.get(3)?,
        created: from_ticks(r.get(4)?),
        updated: from_ticks(r.get(5)?),
        etag: r.get(6)?,
    })
}

fn load_ca(c: &Connection, key: &str) -> Result<Option<CaCertificate>, StoreError> {
    Ok(c.row(
        &format!("SELECT {CA_COLUMNS} FROM ca_certificates WHERE key = ?1"),
        [key],
        ca_row,
    )
    .optional()?)
}

fn load_hubs(c: &Connection) -> rusqlite::Result<Vec<Hub>> {
    c.prepare_cached(
        "SELECT name, hostname, weight, apply_allocation_policy, builtin, created, location FROM hubs ORDER BY seq",
    )?
    .query_map([], hub_row)?
    .collect()
}

fn load_allocation(c: &Connection) -> Result<AllocationSettings, StoreError> {
    let row: Option<(String, String)> = c
        .row(
            "SELECT allocation_policy, geo_map FROM instance WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((policy, geo)) = row else {
        return Ok(AllocationSettings::default());
    };
    Ok(AllocationSettings {
        default_policy: usher_proto::service::AllocationPolicy::parse(&policy)
            .ok_or_else(|| StoreError::Corrupt(format!("allocation policy {policy:?}")))?,
        geo_map: serde_json::from_str(&geo)
            .map_err(|e| StoreError::Corrupt(format!("geo map: {e}")))?,
    })
}

/// A policy row before its keys are opened.
pub(super) type RawPolicy = (String, String, String, i64);

fn raw_policy(r: &Row<'_>) -> rusqlite::Result<RawPolicy> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

/// Inserts a policy (into `policies`, or a hub's into `hub_policies`) unless one of that name
/// exists; whether it was inserted.
fn insert_policy(
    c: &Connection,
    sealer: &Sealer,
    table: &str,
    hub: Option<&str>,
    p: &Policy,
) -> Result<bool, StoreError> {
    let (primary, secondary) = (
        sealer.seal(&p.primary_key.to_base64())?,
        sealer.seal(&p.secondary_key.to_base64())?,
    );
    let bits = Right::to_bits(&p.rights);
    let n = match hub {
        None => c.exec(
            &format!(
                "INSERT INTO {table} (name, primary_key, secondary_key, rights) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING"
            ),
            params![p.name, primary, secondary, bits],
        )?,
        Some(hub) => c.exec(
            &format!(
                "INSERT INTO {table} (hub, name, primary_key, secondary_key, rights) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING"
            ),
            params![hub, p.name, primary, secondary, bits],
        )?,
    };
    Ok(n == 1)
}

pub(super) fn table(coll: Collection) -> &'static str {
    match coll {
        Collection::Enrollments => "enrollments",
        Collection::EnrollmentGroups => "enrollment_groups",
    }
}

pub(super) fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The columns a document is read from.
const DOC_COLUMNS: &str = "id, doc, etag, primary_key, secondary_key";

/// A document row: (id, JSON without keys, etag, sealed primary key, sealed secondary key).
pub(super) type RawDoc = (String, String, String, Option<String>, Option<String>);

fn raw_doc_at(r: &Row<'_>, at: usize) -> rusqlite::Result<RawDoc> {
    Ok((
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        r.get(at + 3)?,
        r.get(at + 4)?,
    ))
}

/// A document as the domain sees it: its keys opened and put back into its attestation.
pub(super) fn parse_doc(
    sealer: &Sealer,
    (id, json, etag, primary, secondary): RawDoc,
) -> Result<Doc, StoreError> {
    let mut json: Value = serde_json::from_str(&json)
        .map_err(|e| StoreError::Corrupt(format!("document {id}: {e}")))?;
    for (field, sealed) in [("primaryKey", primary), ("secondaryKey", secondary)] {
        if let Some(sealed) = sealed
            && let Some(attestation) = json.get_mut("attestation").and_then(Value::as_object_mut)
        {
            let keys = attestation
                .entry("symmetricKey")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Some(keys) = keys.as_object_mut() {
                keys.insert(field.into(), Value::String(sealer.open(&sealed)?));
            }
        }
    }
    Ok(Doc { id, json, etag })
}

fn load_doc(
    c: &Connection,
    sealer: &Sealer,
    coll: Collection,
    key: &str,
) -> Result<Option<Doc>, StoreError> {
    let sql = format!("SELECT {DOC_COLUMNS} FROM {} WHERE key = ?1", table(coll));
    c.prepare_cached(&sql)?
        .query_row([key], |r| raw_doc_at(r, 0))
        .optional()?
        .map(|raw| parse_doc(sealer, raw))
        .transpose()
}

/// Writes a document: its keys sealed in their own columns, its typed fields in theirs, the rest
/// (every field the client sent) as JSON. An update keeps the row's place in the sequence.
fn write_doc(
    c: &Connection,
    sealer: &Sealer,
    coll: Collection,
    key: &str,
    doc: &Doc,
) -> Result<(), StoreError> {
    put_row(c, coll, &encode_doc(sealer, key, doc)?, OnConflict::Replace).map(|_| ())
}

/// A document as its row: keys sealed, typed columns read out, the rest rendered as JSON. Pure
/// CPU work, so a bulk insert does it before entering the writer.
pub(super) struct DocRow {
    pub(super) key: String,
    pub(super) id: String,
    pub(super) attestation: &'static str,
    pub(super) primary_key: Option<String>,
    pub(super) secondary_key: Option<String>,
    pub(super) status: &'static str,
    pub(super) policy: Option<&'static str>,
    pub(super) created: i64,
    pub(super) updated: i64,
    pub(super) doc: String,
    pub(super) etag: String,
}

pub(super) fn encode_doc(sealer: &Sealer, key: &str, doc: &Doc) -> Result<DocRow, StoreError> {
    let mut json = doc.json.clone();
    let keys = json
        .pointer_mut("/attestation")
        .and_then(Value::as_object_mut)
        .and_then(|a| a.remove("symmetricKey"));
    let key_of = |name: &str| -> Result<Option<String>, StoreError> {
        keys.as_ref()
            .and_then(|k| k.get(name))
            .and_then(Value::as_str)
            .map(|k| sealer.seal(k).map_err(StoreError::from))
            .transpose()
    };
    let text = |path: &str| json.pointer(path).and_then(Value::as_str);
    let ticks = |path: &str| {
        text(path)
            .and_then(usher_proto::model::parse_timestamp)
            .map_or(0, to_ticks)
    };
    Ok(DocRow {
        key: key.to_owned(),
        id: doc.id.clone(),
        attestation: text("/attestation/type")
            .and_then(usher_proto::service::AttestationType::parse)
            .map_or("none", usher_proto::service::AttestationType::as_str),
        primary_key: key_of("primaryKey")?,
        secondary_key: key_of("secondaryKey")?,
        status: text("/provisioningStatus")
            .and_then(usher_proto::service::ProvisioningStatus::parse)
            .map_or("enabled", usher_proto::service::ProvisioningStatus::as_str),
        policy: text("/allocationPolicy")
            .and_then(usher_proto::service::AllocationPolicy::parse)
            .map(usher_proto::service::AllocationPolicy::as_str),
        created: ticks("/createdDateTimeUtc"),
        updated: ticks("/lastUpdatedDateTimeUtc"),
        doc: json.to_string(),
        etag: doc.etag.clone(),
    })
}

/// What [`put_row`] does when a row with the key exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OnConflict {
    Replace,
    Keep,
}

/// Stores a row; returns whether it was written (with [`OnConflict::Keep`], false when the key
/// exists).
fn put_row(
    c: &Connection,
    coll: Collection,
    row: &DocRow,
    on_conflict: OnConflict,
) -> Result<bool, StoreError> {
    macro_rules! upsert {
        ($table:literal) => {
            (
                concat!(
                    "INSERT INTO ",
                    $table,
                    " (key, id, attestation, primary_key, secondary_key, provisioning_status,
                       allocation_policy, created, updated, doc, etag)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (key) DO UPDATE SET id = excluded.id,
                       attestation = excluded.attestation, primary_key = excluded.primary_key,
                       secondary_key = excluded.secondary_key,
                       provisioning_status = excluded.provisioning_status,
                       allocation_policy = excluded.allocation_policy, created = excluded.created,
                       updated = excluded.updated, doc = excluded.doc, etag = excluded.etag"
                ),
                concat!(
                    "INSERT INTO ",
                    $table,
                    " (key, id, attestation, primary_key, secondary_key, provisioning_status,
                       allocation_policy, created, updated, doc, etag)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (key) DO NOTHING"
                ),
            )
        };
    }
    let (replace, keep) = match coll {
        Collection::Enrollments => upsert!("enrollments"),
        Collection::EnrollmentGroups => upsert!("enrollment_groups"),
    };
    let sql = match on_conflict {
        OnConflict::Replace => replace,
        OnConflict::Keep => keep,
    };
    let changed = c.prepare_cached(sql)?.execute(params![
        row.key,
        row.id,
        row.attestation,
        row.primary_key,
        row.secondary_key,
        row.status,
        row.policy,
        row.created,
        row.updated,
        row.doc,
        row.etag,
    ])?;
    Ok(changed == 1)
}

pub(super) fn open_policy(
    sealer: &Sealer,
    (name, primary, secondary, bits): RawPolicy,
) -> Result<Policy, StoreError> {
    Ok(Policy {
        name,
        primary_key: open_key(sealer, &primary)?,
        secondary_key: open_key(sealer, &secondary)?,
        rights: Right::from_bits(bits),
    })
}

/// The last entry's place and hash (or the anchor's, or the genesis): where the next entry chains on.
fn chain_end(c: &Connection) -> rusqlite::Result<(u64, String)> {
    let last = c
        .row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?
        .or(c
            .row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?);
    Ok(last.map_or_else(
        || (0, usher_proto::audit::GENESIS.to_owned()),
        |(seq, hash)| (u64::try_from(seq).unwrap_or(0), hash),
    ))
}

/// Stores one audit entry as it is (its place and hashes already set).
fn insert_audit_entry(c: &Connection, e: &AuditEntry) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO audit_log (seq, at, actor, address, action, target, result, prev, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        clamp(e.seq),
        e.at,
        e.actor,
        e.address,
        e.action,
        e.target,
        e.result,
        e.prev,
        e.hash
    ])?;
    Ok(())
}

/// Appends records to the audit log, each chained to the one before, inside the writer's
/// transaction (so the chain has one writer and no two entries claim the same place).
fn append_audit(c: &Connection, records: Vec<AuditRecord>) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let (mut seq, mut prev) = chain_end(c)?;
    for record in records {
        seq += 1;
        let e = record.chain(seq, &prev);
        insert_audit_entry(c, &e)?;
        prev = e.hash;
    }
    Ok(())
}

/// The data key: unwrapped with `kek`, or on a database that has none yet, made and wrapped.
fn data_key(c: &Connection, kek: &Kek) -> Result<DataKey, StoreError> {
    let stored: Option<(String, String)> = c
        .row(
            "SELECT kek_id, wrapped_dek FROM keyring WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((kek_id, wrapped)) = stored {
        return Ok(kek.unwrap(&wrapped, &kek_id)?);
    }
    let dek = DataKey::generate()?;
    c.exec(
        "INSERT INTO keyring (id, kek_id, wrapped_dek) VALUES (1, ?1, ?2)",
        params![kek.id(), kek.wrap(&dek)?],
    )?;
    Ok(dek)
}

/// Seals, in one transaction, every secret still stored in plaintext (a database from before
/// encryption at rest). Does nothing on a database whose secrets are all sealed.
fn seal_plaintext(c: &Connection, sealer: &Sealer) -> Result<(), StoreError> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<(), StoreError> {
        for table in [
            "policies",
            "hub_policies",
            "hub_devices",
            "enrollments",
            "enrollment_groups",
        ] {
            let rows: Vec<(i64, Option<String>, Option<String>)> = c
                .prepare(&format!(
                    "SELECT rowid, primary_key, secondary_key FROM {table}"
                ))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (rowid, primary, secondary) in rows {
                let plain =
                    |k: &Option<String>| k.as_deref().is_some_and(|k| !Sealer::is_sealed(k));
                if !plain(&primary) && !plain(&secondary) {
                    continue;
                }
                let seal = |k: Option<String>| -> Result<Option<String>, StoreError> {
                    match k {
                        Some(k) if !Sealer::is_sealed(&k) => Ok(Some(sealer.seal(&k)?)),
                        other => Ok(other),
                    }
                };
                c.exec(
                    &format!(
                        "UPDATE {table} SET primary_key = ?2, secondary_key = ?3 WHERE rowid = ?1"
                    ),
                    params![rowid, seal(primary)?, seal(secondary)?],
                )?;
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => c.execute_batch("COMMIT")?,
        Err(_) => {
            let _ = c.execute_batch("ROLLBACK");
        }
    }
    result
}

/// A registration row before its enums, times and payload are read.
pub(super) type RawRegistration = (
    Registration,
    String,
    Option<String>,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn raw_registration(r: &Row<'_>) -> rusqlite::Result<RawRegistration> {
    Ok((
        Registration {
            registration_id: r.get(0)?,
            enrollment_group_id: r.get(1)?,
            status: RegistrationStatus::Failed,
            substatus: None,
            assigned_hub: r.get(4)?,
            device_id: r.get(5)?,
            error_code: r.get(6)?,
            error_message: r.get(7)?,
            created: Time::UNIX_EPOCH,
            updated: Time::UNIX_EPOCH,
            etag: r.get(10)?,
            operation_id: r.get(11)?,
            payload: None,
            initial_hub: r.get(13)?,
            x509: None,
            issued_chain: None,
        },
        r.get(2)?,
        r.get(3)?,
        r.get(8)?,
        r.get(9)?,
        r.get(12)?,
        r.get(14)?,
        r.get(15)?,
    ))
}

pub(super) fn parse_registration(
    (mut reg, status, substatus, created, updated, payload, x509, issued): RawRegistration,
) -> Result<Registration, StoreError> {
    let corrupt =
        |what: &str| StoreError::Corrupt(format!("registration {}: {what}", reg.registration_id));
    reg.status = RegistrationStatus::parse(&status).ok_or_else(|| corrupt("status"))?;
    reg.substatus = substatus
        .map(|s| Substatus::parse(&s).ok_or_else(|| corrupt("substatus")))
        .transpose()?;
    reg.created = from_ticks(created);
    reg.updated = from_ticks(updated);
    reg.payload = payload
        .map(|p| serde_json::from_str(&p))
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?;
    reg.x509 = x509
        .map(|p| serde_json::from_str(&p))
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?;
    reg.issued_chain = issued
        .map(|p| serde_json::from_str(&p))
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?;
    Ok(reg)
}

fn load_registration(c: &Connection, key: &str) -> Result<Option<Registration>, StoreError> {
    let sql = format!("SELECT {REGISTRATION_COLUMNS} FROM registrations WHERE key = ?1");
    c.prepare_cached(&sql)?
        .query_row([key], raw_registration)
        .optional()?
        .map(parse_registration)
        .transpose()
}
