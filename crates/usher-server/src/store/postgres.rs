//! The PostgreSQL backend: several Usher nodes on one database.
//!
//! Reads run on a connection pool. Writes go to this node's writer task, which batches concurrent
//! writes into one transaction (group commit) as the SQLite backend does: each job runs inside its
//! own `SAVEPOINT`, so a refused job writes nothing while the others commit, and every job is
//! answered only once the `COMMIT` returned. Every write transaction first takes one
//! transaction-scoped advisory lock ([`WRITE_LOCK`]), so write transactions of all nodes run one
//! at a time: a read-modify-write decision sees the rows as the last committed write left them and
//! nothing can come between its read and its write, on this node or another — including the
//! creation of a row that did not exist (which a row lock could not cover). Deadlocks and
//! serialization failures cannot happen, so nothing is retried. Reads do not take the lock.
//!
//! Connections are plain TCP or Unix sockets: TLS to the database is not supported (`sslmode`
//! `disable` and `prefer` connect without TLS; `require` fails to connect).

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::sqlite::{
    DocRow, OnConflict, RawDoc, RawPolicy, RawRegistration, clamp, encode_doc, open_key,
    open_policy, parse_doc, parse_registration, table,
};
use super::{
    AllocationSettings, Assignment, Bootstrap, CaCertificate, Collection, Counts, Doc, Hub,
    HubDevice, Instance, Policy, RegisterView, Registration, Right, StoreError, Time, TwinWrite,
    from_ticks, to_ticks,
};
use crate::metrics::Metrics;
use crate::secrets::{DataKey, Kek, Sealer};
use usher_proto::SymmetricKey;
use usher_proto::audit::{Entry as AuditEntry, Record as AuditRecord};
use usher_proto::model::{RegistrationStatus, Substatus};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 256;
/// Queued jobs beyond which writers wait (back-pressure).
const QUEUE_DEPTH: usize = 4096;
/// Pooled connections per node (the writer takes one of them).
const POOL_SIZE: usize = 16;
/// How long a connection attempt, or a wait for a pooled connection, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Session settings unless the URL gives `options`.
const IDLE_IN_TRANSACTION: &str = "-c idle_in_transaction_session_timeout=30s";
/// The advisory lock every write transaction (and schema migration) holds: "usher" in ASCII.
const WRITE_LOCK: i64 = 0x0075_7368_6572;
/// The channel a committed write to enrollment groups notifies, so every node reloads its cache.
const GROUPS_CHANNEL: &str = "usher_groups";

/// Schema migrations, applied in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_initial.sql"),
    include_str!("migrations/postgres/0002_x509_registrations.sql"),
    include_str!("migrations/postgres/0003_ca_certificates.sql"),
];

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's Display of a server error is only "db error"; the server's message says why.
        match e.as_db_error() {
            Some(db) => Self::Database(format!("{}: {}", db.code().code(), db.message())),
            None => Self::Database(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Database(format!("no database connection: {e}"))
    }
}

/// A pooled connection.
type Conn = ClientWrapper;
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A job for the writer; see the SQLite backend's `Job`.
trait Job: Send {
    fn run<'a>(self: Box<Self>, conn: &'a Conn) -> BoxFuture<'a, (bool, Completion)>;
    fn abandon(self: Box<Self>, error: StoreError);
}

struct WriteJob<F, T, E> {
    work: F,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Job for WriteJob<F, T, E>
where
    F: for<'a> FnOnce(&'a Conn) -> BoxFuture<'a, Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run<'a>(self: Box<Self>, conn: &'a Conn) -> BoxFuture<'a, (bool, Completion)> {
        let Self { work, reply } = *self;
        Box::pin(async move {
            let result = work(conn).await;
            let keep = result.is_ok();
            let completion: Completion = Box::new(move |commit| {
                let outcome = match commit {
                    Ok(()) => result,
                    Err(e) => result.and_then(|_| Err(E::from(e))),
                };
                let _ = reply.send(outcome);
            });
            (keep, completion)
        })
    }

    fn abandon(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(E::from(error)));
    }
}

/// The PostgreSQL store. Cloning shares the pool and the writer.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    jobs: mpsc::Sender<Box<dyn Job>>,
    metrics: Arc<OnceLock<Metrics>>,
    sealer: Arc<Sealer>,
    /// Bumped after every committed write to enrollment groups by any node (this node's at once,
    /// the others' when their notification arrives, and whenever the listener reconnects).
    groups_generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Whether `location` names a PostgreSQL database (a `postgres://` or `postgresql://` URL).
pub fn is_postgres_url(location: &str) -> bool {
    let lower = location.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// A connection URL with its password left out, for messages.
pub fn redact_url(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("****"));
            }
            u.to_string()
        }
        Err(_) => "(an unparsable database URL)".into(),
    }
}

impl PgStore {
    /// Connects to the database at `url`, applies migrations and unwraps the data key with `kek`
    /// (making and wrapping one on first open), all under the write lock so nodes starting at once
    /// do it one after the other; then starts the writer and the groups listener. Must be called
    /// inside a Tokio runtime.
    pub async fn open(url: &str, kek: &Kek) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Database(format!("bad database URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("usher");
        }
        // A node cut off from the database in the middle of a write transaction holds the write
        // lock until the server drops its session: the server drops a session idle inside a
        // transaction after 30 s, and TCP keepalives find a silent peer.
        if config.get_options().is_none() {
            config.options(IDLE_IN_TRANSACTION);
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot make a connection pool: {e}")))?;
        let dek = {
            let c = pool.get().await?;
            prepare(&c, kek).await?
        };
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let metrics = Arc::new(OnceLock::new());
        let groups_generation = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer_loop(pool.clone(), rx, Arc::clone(&metrics)));
        tokio::spawn(listen_groups(
            config,
            Arc::downgrade(&groups_generation),
            jobs.downgrade(),
        ));
        Ok(Self {
            pool,
            jobs,
            metrics,
            sealer: Arc::new(Sealer::new(dek)),
            groups_generation,
        })
    }

    pub(super) fn set_metrics(&self, metrics: Metrics) {
        let _ = self.metrics.set(metrics);
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        if self.jobs.is_closed() {
            return Err(StoreError::WriterGone);
        }
        let c = self.conn().await?;
        one(&c, "SELECT MAX(version) FROM schema_version", &[]).await?;
        Ok(())
    }

    /// Re-wraps the data key with `new` (after checking `current` unwraps it), under the write lock.
    pub async fn rewrap(url: &str, current: &Kek, new: &Kek) -> Result<(), StoreError> {
        let store = Self::open(url, current).await?;
        let c = store.conn().await?;
        c.batch_execute("BEGIN").await?;
        let result = async {
            one(&c, "SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]).await?;
            let dek = data_key(&c, current).await?;
            exec(
                &c,
                "UPDATE keyring SET kek_id = $1, wrapped_dek = $2 WHERE id = 1",
                &[&new.id(), &new.wrap(&dek)?],
            )
            .await?;
            Ok::<_, StoreError>(())
        }
        .await;
        match &result {
            Ok(()) => c.batch_execute("COMMIT").await?,
            Err(_) => {
                let _ = c.batch_execute("ROLLBACK").await;
            }
        }
        result
    }

    /// Runs `work` in the writer's next transaction and waits until it is durable.
    async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'a> FnOnce(&'a Conn) -> BoxFuture<'a, Result<T, E>> + Send + 'static,
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

    /// A file the instance's nodes share, if stored.
    pub async fn shared_file(&self, name: &str) -> Result<Option<String>, StoreError> {
        let c = self.conn().await?;
        opt(
            &c,
            "SELECT content FROM instance_files WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| Ok(self.sealer.open(&r.try_get::<_, String>(0)?)?))
        .transpose()
    }

    /// Stores each (name, content) unless a file of that name is stored already, and returns the
    /// contents in force, in the order given: the first node's files win, every later node gets
    /// them. Contents are sealed.
    pub async fn share_files(
        &self,
        files: Vec<(String, String)>,
    ) -> Result<Vec<String>, StoreError> {
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            Box::pin(async move {
                let mut in_force = Vec::with_capacity(files.len());
                for (name, content) in files {
                    let stored = opt(
                        c,
                        "SELECT content FROM instance_files WHERE name = $1",
                        &[&name],
                    )
                    .await?;
                    match stored {
                        Some(r) => in_force.push(sealer.open(&r.try_get::<_, String>(0)?)?),
                        None => {
                            exec(
                                c,
                                "INSERT INTO instance_files (name, content) VALUES ($1, $2)",
                                &[&name, &sealer.seal(&content)?],
                            )
                            .await?;
                            in_force.push(content);
                        }
                    }
                }
                Ok::<_, StoreError>(in_force)
            })
        })
        .await
    }

    pub(super) async fn instance(&self) -> Result<Option<Instance>, StoreError> {
        load_instance(&*self.conn().await?).await
    }

    pub(super) async fn bootstrap(&self, first: Bootstrap) -> Result<Instance, StoreError> {
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            Box::pin(async move {
                if let Some(existing) = load_instance(c).await? {
                    return Ok(existing);
                }
                let i = &first.instance;
                exec(
                    c,
                    "INSERT INTO instance (id, id_scope, service_host, created) VALUES (1, $1, $2, $3)",
                    &[&i.id_scope, &i.service_host, &to_ticks(i.created)],
                )
                .await?;
                for p in &first.policies {
                    insert_policy(c, &sealer, None, p).await?;
                }
                for h in &first.hubs {
                    insert_hub(c, h).await?;
                }
                Ok(first.instance)
            })
        })
        .await
    }

    pub(super) async fn policy(&self, name: &str) -> Result<Option<Policy>, StoreError> {
        let c = self.conn().await?;
        opt(
            &c,
            "SELECT name, primary_key, secondary_key, rights FROM policies WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| open_policy(&self.sealer, raw_policy(&r)?))
        .transpose()
    }

    pub(super) async fn policies(&self) -> Result<Vec<Policy>, StoreError> {
        let c = self.conn().await?;
        query(
            &c,
            "SELECT name, primary_key, secondary_key, rights FROM policies ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| open_policy(&self.sealer, raw_policy(r)?))
        .collect()
    }

    pub(super) async fn add_policy(&self, p: Policy) -> Result<bool, StoreError> {
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| Box::pin(async move { insert_policy(c, &sealer, None, &p).await }))
            .await
    }

    pub(super) async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                Ok(exec(c, "DELETE FROM policies WHERE name = $1", &[&name]).await? == 1)
            })
        })
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
            Box::pin(async move {
                let (primary, secondary) = (
                    sealer.seal(&primary_key.to_base64())?,
                    sealer.seal(&secondary_key.to_base64())?,
                );
                opt(
                    c,
                    "UPDATE policies SET primary_key = $2, secondary_key = $3 WHERE name = $1
                     RETURNING name, primary_key, secondary_key, rights",
                    &[&name, &primary, &secondary],
                )
                .await?
                .map(|r| open_policy(&sealer, raw_policy(&r)?))
                .transpose()
            })
        })
        .await
    }

    pub(super) async fn hubs(&self) -> Result<Vec<Hub>, StoreError> {
        load_hubs(&*self.conn().await?).await
    }

    pub(super) async fn add_hub(&self, hub: Hub) -> Result<bool, StoreError> {
        self.write(move |c| {
            Box::pin(async move {
                let taken: bool = one(
                    c,
                    "SELECT EXISTS (SELECT 1 FROM hubs WHERE name = $1 OR lower(hostname) = lower($2))",
                    &[&hub.name, &hub.hostname],
                )
                .await?
                .try_get(0)?;
                if taken {
                    return Ok(false);
                }
                insert_hub(c, &hub).await?;
                Ok(true)
            })
        })
        .await
    }

    pub(super) async fn counts(&self) -> Result<Counts, StoreError> {
        let c = self.conn().await?;
        let row = one(
            &c,
            "SELECT (SELECT COUNT(*) FROM enrollments), (SELECT COUNT(*) FROM enrollment_groups),
                    (SELECT COUNT(*) FROM registrations)",
            &[],
        )
        .await?;
        let hub_devices = query(
            &c,
            "SELECT hubs.name, COUNT(hub_devices.device_id) FROM hubs
             LEFT JOIN hub_devices ON hub_devices.hub = hubs.name
             WHERE hubs.builtin GROUP BY hubs.name, hubs.seq ORDER BY hubs.seq",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, count(r.try_get(1)?))))
        .collect::<Result<_, StoreError>>()?;
        Ok(Counts {
            enrollments: count(row.try_get(0)?),
            enrollment_groups: count(row.try_get(1)?),
            registrations: count(row.try_get(2)?),
            hub_devices,
        })
    }

    pub(super) async fn hub_devices(
        &self,
        hub: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, HubDevice)>, StoreError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {HUB_DEVICE_COLUMNS}, seq FROM hub_devices WHERE hub = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        query(&c, &sql, &[&hub, &clamp(after), &clamp(limit)])
            .await?
            .iter()
            .map(|r| Ok((count(r.try_get(12)?), hub_device_row(&self.sealer, r)?)))
            .collect()
    }

    pub(super) async fn hub_device_counts(&self, hub: &str) -> Result<(u64, u64), StoreError> {
        let c = self.conn().await?;
        let r = one(
            &c,
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'enabled') FROM hub_devices WHERE hub = $1",
            &[&hub],
        )
        .await?;
        Ok((count(r.try_get(0)?), count(r.try_get(1)?)))
    }

    pub(super) async fn hub_device(
        &self,
        hub: &str,
        device_id: &str,
    ) -> Result<Option<HubDevice>, StoreError> {
        load_hub_device(&*self.conn().await?, &self.sealer, hub, device_id).await
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
            Box::pin(async move {
                let current = load_hub_device(c, &sealer, &hub, &device_id).await?;
                let device = decide(current)?;
                write_hub_device(c, &sealer, &device).await?;
                Ok(device)
            })
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
            Box::pin(async move {
                let Some(device) = load_hub_device(c, &sealer, &hub, &device_id).await? else {
                    return Ok(None);
                };
                allow(&device)?;
                exec(
                    c,
                    "DELETE FROM hub_devices WHERE hub = $1 AND device_id = $2",
                    &[&hub, &device_id],
                )
                .await?;
                Ok(Some(device))
            })
        })
        .await
    }

    pub(super) async fn hub_policy(
        &self,
        hub: &str,
        name: &str,
    ) -> Result<Option<Policy>, StoreError> {
        let c = self.conn().await?;
        opt(
            &c,
            "SELECT name, primary_key, secondary_key, rights FROM hub_policies WHERE hub = $1 AND name = $2",
            &[&hub, &name],
        )
        .await?
        .map(|r| open_policy(&self.sealer, raw_policy(&r)?))
        .transpose()
    }

    pub(super) async fn ensure_hub_policies(
        &self,
        hub: &str,
        policies: Vec<Policy>,
    ) -> Result<(), StoreError> {
        let hub = hub.to_owned();
        let sealer = Arc::clone(&self.sealer);
        self.write(move |c| {
            Box::pin(async move {
                for p in &policies {
                    insert_policy(c, &sealer, Some(&hub), p).await?;
                }
                Ok(())
            })
        })
        .await
    }

    pub(super) async fn doc(&self, coll: Collection, id: &str) -> Result<Option<Doc>, StoreError> {
        let key = id.to_ascii_lowercase();
        load_doc(&*self.conn().await?, &self.sealer, coll, &key).await
    }

    pub(super) async fn docs(
        &self,
        coll: Collection,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Doc)>, StoreError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT seq, {DOC_COLUMNS} FROM {} WHERE seq > $1 ORDER BY seq LIMIT $2",
            table(coll)
        );
        query(&c, &sql, &[&clamp(after), &clamp(limit)])
            .await?
            .iter()
            .map(|r| {
                Ok((
                    count(r.try_get(0)?),
                    parse_doc(&self.sealer, raw_doc(r, 1)?)?,
                ))
            })
            .collect()
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
            Box::pin(async move {
                let current = load_doc(c, &sealer, coll, &key).await?;
                let doc = decide(current)?;
                write_doc(c, &sealer, coll, &key, &doc).await?;
                touched(c, coll).await?;
                Ok(doc)
            })
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
            Box::pin(async move {
                let mut outcomes = Vec::with_capacity(items.len());
                for (id, decide) in items {
                    let key = id.to_ascii_lowercase();
                    let current = load_doc(c, &sealer, coll, &key).await?;
                    match decide(current) {
                        Ok(doc) => {
                            write_doc(c, &sealer, coll, &key, &doc).await?;
                            outcomes.push(Ok(()));
                        }
                        Err(e) => outcomes.push(Err(e)),
                    }
                }
                touched(c, coll).await?;
                Ok::<_, StoreError>(outcomes)
            })
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
            Box::pin(async move {
                let stmt = c.prepare_cached(&doc_sql(coll, OnConflict::Keep)).await?;
                // Sent all at once (pipelined), run in order: one round trip, not one per row.
                let changed = futures_util::future::try_join_all(
                    rows.iter().map(|row| c.execute_raw(&stmt, row.params())),
                )
                .await?;
                touched(c, coll).await?;
                Ok(changed.into_iter().map(|n| n == 1).collect())
            })
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
            Box::pin(async move {
                let Some(doc) = load_doc(c, &sealer, coll, &key).await? else {
                    return Ok(None);
                };
                allow(&doc)?;
                let sql = format!("DELETE FROM {} WHERE key = $1", table(coll));
                exec(c, &sql, &[&key]).await?;
                touched(c, coll).await?;
                Ok(Some(doc))
            })
        })
        .await
        .inspect(|_| self.touched(coll))
    }

    /// Notes a committed write to a collection.
    fn touched(&self, coll: Collection) {
        if coll == Collection::EnrollmentGroups {
            self.groups_generation.fetch_add(1, Ordering::Release);
        }
    }

    pub(super) fn groups_generation(&self) -> u64 {
        self.groups_generation.load(Ordering::Acquire)
    }

    pub(super) async fn registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<Registration>, StoreError> {
        let key = registration_id.to_ascii_lowercase();
        load_registration(&*self.conn().await?, &key).await
    }

    pub(super) async fn registrations_of_group(
        &self,
        group_id: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Registration)>, StoreError> {
        let key = group_id.to_ascii_lowercase();
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {REGISTRATION_COLUMNS}, seq FROM registrations
             WHERE enrollment_group_key = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        query(&c, &sql, &[&key, &clamp(after), &clamp(limit)])
            .await?
            .iter()
            .map(|r| Ok((count(r.try_get(16)?), registration_row(r)?)))
            .collect()
    }

    pub(super) async fn registrations(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Registration)>, StoreError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {REGISTRATION_COLUMNS}, seq FROM registrations WHERE seq > $1 ORDER BY seq LIMIT $2"
        );
        query(&c, &sql, &[&clamp(after), &clamp(limit)])
            .await?
            .iter()
            .map(|r| Ok((count(r.try_get(16)?), registration_row(r)?)))
            .collect()
    }

    pub(super) async fn recent_registrations(
        &self,
        limit: u64,
    ) -> Result<Vec<Registration>, StoreError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {REGISTRATION_COLUMNS} FROM registrations ORDER BY updated DESC, seq DESC LIMIT $1"
        );
        query(&c, &sql, &[&clamp(limit)])
            .await?
            .iter()
            .map(registration_row)
            .collect()
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
            Box::pin(async move {
                // The reads are independent: sent at once (pipelined), one round trip for all.
                let (previous, hubs, allocation, individual, group) = tokio::try_join!(
                    load_registration(c, &key),
                    load_hubs(c),
                    load_allocation(c),
                    load_doc(c, &sealer, Collection::Enrollments, &key),
                    async {
                        match &group_key {
                            Some(g) => load_doc(c, &sealer, Collection::EnrollmentGroups, g).await,
                            None => Ok(None),
                        }
                    },
                )?;
                let view = RegisterView {
                    previous,
                    hubs,
                    allocation,
                    individual,
                    group,
                };
                let (assignment, answer) = decide(view)?;
                write_assignment(c, &sealer, assignment).await?;
                Ok(answer)
            })
        })
        .await
    }

    pub(super) async fn allocation_settings(&self) -> Result<AllocationSettings, StoreError> {
        load_allocation(&*self.conn().await?).await
    }

    pub(super) async fn set_allocation_settings(
        &self,
        settings: AllocationSettings,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            Box::pin(async move {
                let geo = serde_json::to_string(&settings.geo_map)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                exec(
                    c,
                    "UPDATE instance SET allocation_policy = $1, geo_map = $2 WHERE id = 1",
                    &[&settings.default_policy.as_str(), &geo],
                )
                .await?;
                Ok(())
            })
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
            Box::pin(async move {
                let Some(mut hub) = load_hubs(c).await?.into_iter().find(|h| h.name == name)
                else {
                    return Ok(None);
                };
                change(&mut hub);
                exec(
                    c,
                    "UPDATE hubs SET weight = $2, apply_allocation_policy = $3, location = $4 WHERE name = $1",
                    &[&hub.name, &i64::from(hub.weight), &hub.apply_allocation_policy, &hub.location],
                )
                .await?;
                Ok(Some(hub))
            })
        })
        .await
    }

    pub(super) async fn ca_certificates(&self) -> Result<Vec<CaCertificate>, StoreError> {
        let c = self.conn().await?;
        query(
            &c,
            &format!("SELECT {CA_COLUMNS} FROM ca_certificates ORDER BY key"),
            &[],
        )
        .await?
        .iter()
        .map(ca_row)
        .collect()
    }

    pub(super) async fn ca_certificate(
        &self,
        name: &str,
    ) -> Result<Option<CaCertificate>, StoreError> {
        load_ca(&*self.conn().await?, &name.to_ascii_lowercase()).await
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
            Box::pin(async move {
                let ca = decide(load_ca(c, &key).await?)?;
                exec(
                    c,
                    "INSERT INTO ca_certificates (key, name, certificate, verified, verification_code, created, updated, etag)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (key) DO UPDATE SET name = excluded.name, certificate = excluded.certificate,
                       verified = excluded.verified, verification_code = excluded.verification_code,
                       created = excluded.created, updated = excluded.updated, etag = excluded.etag",
                    &[
                        &key,
                        &ca.name,
                        &ca.certificate,
                        &ca.verified,
                        &ca.verification_code,
                        &to_ticks(ca.created),
                        &to_ticks(ca.updated),
                        &ca.etag,
                    ],
                )
                .await?;
                Ok(ca)
            })
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
            Box::pin(async move {
                let Some(ca) = load_ca(c, &key).await? else {
                    return Ok(None);
                };
                allow(&ca)?;
                exec(c, "DELETE FROM ca_certificates WHERE key = $1", &[&key]).await?;
                Ok(Some(ca))
            })
        })
        .await
    }

    pub(super) async fn append_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        self.write(move |c| Box::pin(async move { append_audit(c, records).await }))
            .await
    }

    pub(super) async fn audit_entries(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.conn().await?;
        query(
            &c,
            "SELECT seq, at, actor, address, action, target, result, prev, hash FROM audit_log
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&clamp(after), &clamp(limit)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                seq: count(r.try_get(0)?),
                at: r.try_get(1)?,
                actor: r.try_get(2)?,
                address: r.try_get(3)?,
                action: r.try_get(4)?,
                target: r.try_get(5)?,
                result: r.try_get(6)?,
                prev: r.try_get(7)?,
                hash: r.try_get(8)?,
            })
        })
        .collect()
    }

    pub(super) async fn audit_anchor(&self) -> Result<(u64, String), StoreError> {
        let c = self.conn().await?;
        let anchor = opt(&c, "SELECT seq, hash FROM audit_anchor WHERE id = 1", &[]).await?;
        Ok(match anchor {
            Some(r) => (count(r.try_get(0)?), r.try_get(1)?),
            None => (0, usher_proto::audit::GENESIS.to_owned()),
        })
    }

    pub(super) async fn prune_audit(&self, before: String) -> Result<u64, StoreError> {
        self.write(move |c| {
            Box::pin(async move {
                let last = opt(
                    c,
                    "SELECT seq, hash FROM audit_log WHERE at < $1 ORDER BY seq DESC LIMIT 1",
                    &[&before],
                )
                .await?;
                let Some(last) = last else {
                    return Ok(0);
                };
                let (seq, hash): (i64, String) = (last.try_get(0)?, last.try_get(1)?);
                // Everything up to that entry goes, so the chain stays whole from the anchor on.
                let n = exec(c, "DELETE FROM audit_log WHERE seq <= $1", &[&seq]).await?;
                exec(
                    c,
                    "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    &[&seq, &hash],
                )
                .await?;
                Ok(n)
            })
        })
        .await
    }

    pub(super) async fn hub_policies(&self, hub: &str) -> Result<Vec<Policy>, StoreError> {
        let c = self.conn().await?;
        query(
            &c,
            "SELECT name, primary_key, secondary_key, rights FROM hub_policies WHERE hub = $1 ORDER BY name",
            &[&hub],
        )
        .await?
        .iter()
        .map(|r| open_policy(&self.sealer, raw_policy(r)?))
        .collect()
    }

    pub(super) async fn restore_audit(
        &self,
        (anchor_seq, anchor_hash): (u64, String),
        entries: Vec<AuditEntry>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            Box::pin(async move {
                if anchor_seq > 0 {
                    exec(
                        c,
                        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, $1, $2)
                         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                        &[&clamp(anchor_seq), &anchor_hash],
                    )
                    .await?;
                }
                for e in entries {
                    exec(
                        c,
                        "INSERT INTO audit_log (seq, at, actor, address, action, target, result, prev, hash)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        &[
                            &clamp(e.seq),
                            &e.at,
                            &e.actor,
                            &e.address,
                            &e.action,
                            &e.target,
                            &e.result,
                            &e.prev,
                            &e.hash,
                        ],
                    )
                    .await?;
                }
                Ok(())
            })
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
            Box::pin(async move {
                let Some(reg) = load_registration(c, &key).await? else {
                    return Ok(None);
                };
                allow(&reg)?;
                exec(c, "DELETE FROM registrations WHERE key = $1", &[&key]).await?;
                Ok(Some(reg))
            })
        })
        .await
    }
}

/// Brings the schema up to date and returns the data key, in one transaction under the write lock.
async fn prepare(c: &Conn, kek: &Kek) -> Result<DataKey, StoreError> {
    c.batch_execute("BEGIN").await?;
    let result = async {
        one(c, "SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]).await?;
        migrate(c).await?;
        data_key(c, kek).await
    }
    .await;
    match &result {
        Ok(_) => c.batch_execute("COMMIT").await?,
        Err(_) => {
            let _ = c.batch_execute("ROLLBACK").await;
        }
    }
    result
}

async fn migrate(c: &Conn) -> Result<(), StoreError> {
    let exists: bool = one(c, "SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        c.batch_execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            .await?;
    }
    let current: Option<i64> = one(c, "SELECT MAX(version) FROM schema_version", &[])
        .await?
        .try_get(0)?;
    let current = current.unwrap_or(0);
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        c.batch_execute(sql).await?;
        let version = index as i64 + 1;
        exec(
            c,
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    Ok(())
}

/// The data key: unwrapped with `kek`, or on a database that has none yet, made and wrapped.
async fn data_key(c: &Conn, kek: &Kek) -> Result<DataKey, StoreError> {
    if let Some(r) = opt(
        c,
        "SELECT kek_id, wrapped_dek FROM keyring WHERE id = 1",
        &[],
    )
    .await?
    {
        let (kek_id, wrapped): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        return Ok(kek.unwrap(&wrapped, &kek_id)?);
    }
    let dek = DataKey::generate()?;
    exec(
        c,
        "INSERT INTO keyring (id, kek_id, wrapped_dek) VALUES (1, $1, $2)",
        &[&kek.id(), &kek.wrap(&dek)?],
    )
    .await?;
    Ok(dek)
}

/// Takes queued jobs in batches and commits each batch in one transaction under the write lock.
async fn writer_loop(
    pool: Pool,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    metrics: Arc<OnceLock<Metrics>>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = tokio::time::Instant::now();
        let batch_size = batch.len();
        let conn = match pool.get().await {
            Ok(conn) => conn,
            Err(e) => {
                let error = StoreError::from(e);
                for job in batch {
                    job.abandon(error.clone());
                }
                continue;
            }
        };
        // Round trips are most of a job's cost: the lock and the first savepoint go with BEGIN,
        // and each job's end with the next job's savepoint.
        let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK}); SAVEPOINT job");
        if let Err(e) = conn.batch_execute(&begin).await {
            let error = StoreError::from(e);
            let _ = conn.batch_execute("ROLLBACK").await;
            for job in batch {
                job.abandon(error.clone());
            }
            continue;
        }
        let mut completions = Vec::with_capacity(batch.len());
        let mut broken: Option<StoreError> = None;
        for (index, job) in batch.into_iter().enumerate() {
            if let Some(error) = &broken {
                job.abandon(error.clone());
                continue;
            }
            let (keep, completion) = job.run(&conn).await;
            let end = match (keep, index + 1 == batch_size) {
                (true, false) => "RELEASE job; SAVEPOINT job",
                (true, true) => "RELEASE job",
                (false, false) => "ROLLBACK TO job; RELEASE job; SAVEPOINT job",
                (false, true) => "ROLLBACK TO job; RELEASE job",
            };
            match conn.batch_execute(end).await {
                Ok(()) => completions.push(completion),
                Err(e) => {
                    let error = StoreError::from(e);
                    completion(Err(error.clone()));
                    broken = Some(error);
                }
            }
        }
        let commit = conn.batch_execute("COMMIT").await.map_err(StoreError::from);
        if commit.is_err() {
            let _ = conn.batch_execute("ROLLBACK").await;
        }
        drop(conn);
        if let Some(metrics) = metrics.get() {
            metrics.store_commit(started.elapsed(), batch_size);
        }
        for completion in completions {
            completion(commit.clone());
        }
    }
}

/// Listens for other nodes' writes to enrollment groups and bumps `generation` on each (and on
/// every reconnection, since notifications sent while disconnected are lost). Ends with the store.
async fn listen_groups(
    config: tokio_postgres::Config,
    generation: std::sync::Weak<AtomicU64>,
    alive: mpsc::WeakSender<Box<dyn Job>>,
) {
    use futures_util::StreamExt as _;
    while alive.upgrade().is_some() {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let sql = format!("LISTEN {GROUPS_CHANNEL}");
            let listen = client.batch_execute(&sql);
            // The connection must be polled for the LISTEN to complete.
            let listened = tokio::select! {
                r = listen => r.is_ok(),
                _ = messages.next() => false,
            };
            if listened {
                match generation.upgrade() {
                    Some(g) => g.fetch_add(1, Ordering::Release),
                    None => return,
                };
                loop {
                    let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
                    match next {
                        Ok(Some(Ok(tokio_postgres::AsyncMessage::Notification(_)))) => {
                            match generation.upgrade() {
                                Some(g) => g.fetch_add(1, Ordering::Release),
                                None => return,
                            };
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(Some(Err(_)) | None) => break,
                        Err(_) if alive.upgrade().is_none() => return,
                        Err(_) => {}
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Tells every node a collection changed (delivered when the transaction commits).
async fn touched(c: &Conn, coll: Collection) -> Result<(), StoreError> {
    if coll == Collection::EnrollmentGroups {
        one(c, "SELECT pg_notify($1, '')", &[&GROUPS_CHANNEL]).await?;
    }
    Ok(())
}

async fn exec(c: &Conn, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

async fn query(c: &Conn, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

async fn opt(c: &Conn, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

async fn one(c: &Conn, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_one(&stmt, params).await?)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

async fn load_instance(c: &Conn) -> Result<Option<Instance>, StoreError> {
    opt(
        c,
        "SELECT id_scope, service_host, created FROM instance WHERE id = 1",
        &[],
    )
    .await?
    .map(|r| {
        Ok(Instance {
            id_scope: r.try_get(0)?,
            service_host: r.try_get(1)?,
            created: from_ticks(r.try_get(2)?),
        })
    })
    .transpose()
}

async fn insert_hub(c: &Conn, h: &Hub) -> Result<(), StoreError> {
    exec(
        c,
        "INSERT INTO hubs (name, hostname, weight, apply_allocation_policy, builtin, created, location, seq)
         VALUES ($1, $2, $3, $4, $5, $6, $7, (SELECT coalesce(max(seq), 0) + 1 FROM hubs))",
        &[
            &h.name,
            &h.hostname,
            &i64::from(h.weight),
            &h.apply_allocation_policy,
            &h.builtin,
            &to_ticks(h.created),
            &h.location,
        ],
    )
    .await?;
    Ok(())
}

const CA_COLUMNS: &str = "name, certificate, verified, verification_code, created, updated, etag";

fn ca_row(r: &Row) -> Result<CaCertificate, StoreError> {
    Ok(CaCertificate {
        name: r.try_get(0)?,
        certificate: r.try_get(1)?,
        verified: r.try_get(2)?,
        verification_code: r.try_get(3)?,
        created: from_ticks(r.try_get(4)?),
        updated: from_ticks(r.try_get(5)?),
        etag: r.try_get(6)?,
    })
}

async fn load_ca(c: &Conn, key: &str) -> Result<Option<CaCertificate>, StoreError> {
    opt(
        c,
        &format!("SELECT {CA_COLUMNS} FROM ca_certificates WHERE key = $1"),
        &[&key],
    )
    .await?
    .as_ref()
    .map(ca_row)
    .transpose()
}

async fn load_hubs(c: &Conn) -> Result<Vec<Hub>, StoreError> {
    query(
        c,
        "SELECT name, hostname, weight, apply_allocation_policy, builtin, created, location FROM hubs ORDER BY seq",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(Hub {
            name: r.try_get(0)?,
            hostname: r.try_get(1)?,
            weight: u32::try_from(r.try_get::<_, i64>(2)?)
                .map_err(|_| StoreError::Corrupt("a hub's weight".into()))?,
            apply_allocation_policy: r.try_get(3)?,
            builtin: r.try_get(4)?,
            created: from_ticks(r.try_get(5)?),
            location: r.try_get(6)?,
        })
    })
    .collect()
}

async fn load_allocation(c: &Conn) -> Result<AllocationSettings, StoreError> {
    let Some(r) = opt(
        c,
        "SELECT allocation_policy, geo_map FROM instance WHERE id = 1",
        &[],
    )
    .await?
    else {
        return Ok(AllocationSettings::default());
    };
    let (policy, geo): (String, String) = (r.try_get(0)?, r.try_get(1)?);
    Ok(AllocationSettings {
        default_policy: usher_proto::service::AllocationPolicy::parse(&policy)
            .ok_or_else(|| StoreError::Corrupt(format!("allocation policy {policy:?}")))?,
        geo_map: serde_json::from_str(&geo)
            .map_err(|e| StoreError::Corrupt(format!("geo map: {e}")))?,
    })
}

fn raw_policy(r: &Row) -> Result<RawPolicy, StoreError> {
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
}

/// Inserts a policy (into `policies`, or a hub's into `hub_policies`) unless one of that name
/// exists; whether it was inserted.
async fn insert_policy(
    c: &Conn,
    sealer: &Sealer,
    hub: Option<&str>,
    p: &Policy,
) -> Result<bool, StoreError> {
    let (primary, secondary) = (
        sealer.seal(&p.primary_key.to_base64())?,
        sealer.seal(&p.secondary_key.to_base64())?,
    );
    let bits = Right::to_bits(&p.rights);
    let n = match hub {
        None => {
            exec(
                c,
                "INSERT INTO policies (name, primary_key, secondary_key, rights) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&p.name, &primary, &secondary, &bits],
            )
            .await?
        }
        Some(hub) => {
            exec(
                c,
                "INSERT INTO hub_policies (hub, name, primary_key, secondary_key, rights)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&hub, &p.name, &primary, &secondary, &bits],
            )
            .await?
        }
    };
    Ok(n == 1)
}

/// The columns a document is read from.
const DOC_COLUMNS: &str = "id, doc, etag, primary_key, secondary_key";

fn raw_doc(r: &Row, at: usize) -> Result<RawDoc, StoreError> {
    Ok((
        r.try_get(at)?,
        r.try_get(at + 1)?,
        r.try_get(at + 2)?,
        r.try_get(at + 3)?,
        r.try_get(at + 4)?,
    ))
}

async fn load_doc(
    c: &Conn,
    sealer: &Sealer,
    coll: Collection,
    key: &str,
) -> Result<Option<Doc>, StoreError> {
    let sql = format!("SELECT {DOC_COLUMNS} FROM {} WHERE key = $1", table(coll));
    opt(c, &sql, &[&key])
        .await?
        .map(|r| parse_doc(sealer, raw_doc(&r, 0)?))
        .transpose()
}

/// Writes a document as the SQLite backend does: keys sealed in their own columns, typed fields
/// in theirs, the rest as JSON; an update keeps the row's place in the sequence.
async fn write_doc(
    c: &Conn,
    sealer: &Sealer,
    coll: Collection,
    key: &str,
    doc: &Doc,
) -> Result<(), StoreError> {
    let row = encode_doc(sealer, key, doc)?;
    exec(c, &doc_sql(coll, OnConflict::Replace), &row.params()).await?;
    Ok(())
}

impl DocRow {
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.key,
            &self.id,
            &self.attestation,
            &self.primary_key,
            &self.secondary_key,
            &self.status,
            &self.policy,
            &self.created,
            &self.updated,
            &self.doc,
            &self.etag,
        ]
    }
}

fn doc_sql(coll: Collection, on_conflict: OnConflict) -> String {
    let conflict = match on_conflict {
        OnConflict::Replace => {
            "DO UPDATE SET id = excluded.id, attestation = excluded.attestation,
               primary_key = excluded.primary_key, secondary_key = excluded.secondary_key,
               provisioning_status = excluded.provisioning_status,
               allocation_policy = excluded.allocation_policy, created = excluded.created,
               updated = excluded.updated, doc = excluded.doc, etag = excluded.etag"
        }
        OnConflict::Keep => "DO NOTHING",
    };
    format!(
        "INSERT INTO {} (key, id, attestation, primary_key, secondary_key, provisioning_status,
                          allocation_policy, created, updated, doc, etag)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (key) {conflict}",
        table(coll)
    )
}

/// The last entry's place and hash (or the anchor's, or the genesis): where the next entry chains on.
async fn chain_end(c: &Conn) -> Result<(u64, String), StoreError> {
    let last = opt(
        c,
        "(SELECT seq, hash, 0 AS o FROM audit_log ORDER BY seq DESC LIMIT 1)
         UNION ALL (SELECT seq, hash, 1 FROM audit_anchor WHERE id = 1) ORDER BY o LIMIT 1",
        &[],
    )
    .await?;
    Ok(match last {
        Some(r) => (count(r.try_get(0)?), r.try_get(1)?),
        None => (0, usher_proto::audit::GENESIS.to_owned()),
    })
}

/// Appends records to the audit log, each chained to the one before, inside a write transaction
/// (which holds the write lock, so the chain has one writer across all nodes).
async fn append_audit(c: &Conn, records: Vec<AuditRecord>) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let end = chain_end(c).await?;
    insert_audit(c, end, records).await
}

/// Chains records on after `end` (see [`chain_end`]) and inserts them.
async fn insert_audit(
    c: &Conn,
    (mut seq, mut prev): (u64, String),
    records: Vec<AuditRecord>,
) -> Result<(), StoreError> {
    let mut entries = Vec::with_capacity(records.len());
    for record in records {
        seq += 1;
        let e = record.chain(seq, &prev);
        prev.clone_from(&e.hash);
        entries.push(e);
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO audit_log (seq, at, actor, address, action, target, result, prev, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let seqs: Vec<i64> = entries.iter().map(|e| clamp(e.seq)).collect();
    // Sent at once (pipelined) and run in order.
    futures_util::future::try_join_all(entries.iter().zip(&seqs).map(|(e, seq)| {
        let params: [&(dyn ToSql + Sync); 9] = [
            seq, &e.at, &e.actor, &e.address, &e.action, &e.target, &e.result, &e.prev, &e.hash,
        ];
        c.execute_raw(&stmt, params)
    }))
    .await?;
    Ok(())
}

const REGISTRATION_COLUMNS: &str = "registration_id, enrollment_group_id, status, substatus, assigned_hub, device_id, \
     error_code, error_message, created, updated, etag, operation_id, payload, initial_hub, x509, issued_chain";

fn registration_row(r: &Row) -> Result<Registration, StoreError> {
    let error_code: Option<i64> = r.try_get(6)?;
    let raw: RawRegistration = (
        Registration {
            registration_id: r.try_get(0)?,
            enrollment_group_id: r.try_get(1)?,
            status: RegistrationStatus::Failed,
            substatus: None,
            assigned_hub: r.try_get(4)?,
            device_id: r.try_get(5)?,
            error_code: error_code.and_then(|c| u32::try_from(c).ok()),
            error_message: r.try_get(7)?,
            created: Time::UNIX_EPOCH,
            updated: Time::UNIX_EPOCH,
            etag: r.try_get(10)?,
            operation_id: r.try_get(11)?,
            payload: None,
            initial_hub: r.try_get(13)?,
            x509: None,
            issued_chain: None,
        },
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(8)?,
        r.try_get(9)?,
        r.try_get(12)?,
        r.try_get(14)?,
        r.try_get(15)?,
    );
    parse_registration(raw)
}

async fn load_registration(c: &Conn, key: &str) -> Result<Option<Registration>, StoreError> {
    let sql = format!("SELECT {REGISTRATION_COLUMNS} FROM registrations WHERE key = $1");
    opt(c, &sql, &[&key])
        .await?
        .map(|r| registration_row(&r))
        .transpose()
}

/// Writes a registration's effects: the record, the hub identity (with its twin as the decision
/// says), the identity it left, and the audit entries. What does not depend on what comes before
/// it is sent at once (pipelined): the record, the identity reads and where the audit chain ends;
/// then the identity and the audit entries; then the removal.
async fn write_assignment(c: &Conn, sealer: &Sealer, a: Assignment) -> Result<(), StoreError> {
    let Assignment {
        registration,
        device,
        remove_device,
        audit,
    } = a;
    let record = async {
        if let Some(r) = &registration {
            write_registration(c, r).await?;
        }
        Ok::<_, StoreError>(())
    };
    // The twin to carry over is read before the identity it comes from is removed.
    let reads = async {
        let Some(write) = &device else {
            return Ok(None);
        };
        let d = &write.device;
        let carried = async {
            match &write.twin {
                TwinWrite::CopyFrom(hub, device_id) => {
                    Ok(load_hub_device(c, sealer, hub, device_id)
                        .await?
                        .map(|from| from.twin))
                }
                _ => Ok::<_, StoreError>(None),
            }
        };
        let (carried, existing) =
            tokio::try_join!(carried, load_hub_device(c, sealer, &d.hub, &d.device_id))?;
        Ok::<_, StoreError>(Some((carried, existing)))
    };
    let chain = async {
        if audit.is_empty() {
            Ok(None)
        } else {
            chain_end(c).await.map(Some)
        }
    };
    let ((), reads, chain) = tokio::try_join!(record, reads, chain)?;
    let identity = async {
        let (Some(write), Some((carried, existing))) = (&device, reads) else {
            return Ok(());
        };
        let device = write.onto(existing, carried);
        write_hub_device(c, sealer, &device).await
    };
    let entries = async {
        match chain {
            Some(end) => insert_audit(c, end, audit).await,
            None => Ok(()),
        }
    };
    tokio::try_join!(identity, entries)?;
    if let Some((hub, device_id)) = &remove_device {
        exec(
            c,
            "DELETE FROM hub_devices WHERE hub = $1 AND device_id = $2",
            &[hub, device_id],
        )
        .await?;
    }
    Ok(())
}

async fn write_registration(c: &Conn, r: &Registration) -> Result<(), StoreError> {
    let payload = r.payload.as_ref().map(Value::to_string);
    let sql = format!(
            "INSERT INTO registrations ({REGISTRATION_COLUMNS}, key, enrollment_group_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
             ON CONFLICT (key) DO UPDATE SET
               registration_id = excluded.registration_id, enrollment_group_id = excluded.enrollment_group_id,
               enrollment_group_key = excluded.enrollment_group_key, status = excluded.status,
               substatus = excluded.substatus, assigned_hub = excluded.assigned_hub,
               device_id = excluded.device_id, error_code = excluded.error_code,
               error_message = excluded.error_message, updated = excluded.updated, etag = excluded.etag,
               operation_id = excluded.operation_id, payload = excluded.payload,
               initial_hub = excluded.initial_hub, x509 = excluded.x509,
               issued_chain = excluded.issued_chain"
        );
    let x509 = r.x509.as_ref().map(Value::to_string);
    let issued = r
        .issued_chain
        .as_ref()
        .map(|c| serde_json::to_string(c).unwrap_or_default());
    exec(
        c,
        &sql,
        &[
            &r.registration_id,
            &r.enrollment_group_id,
            &r.status.as_str(),
            &r.substatus.map(Substatus::as_str),
            &r.assigned_hub,
            &r.device_id,
            &r.error_code.map(i64::from),
            &r.error_message,
            &to_ticks(r.created),
            &to_ticks(r.updated),
            &r.etag,
            &r.operation_id,
            &payload,
            &r.initial_hub,
            &x509,
            &issued,
            &r.registration_id.to_ascii_lowercase(),
            &r.enrollment_group_id
                .as_deref()
                .map(str::to_ascii_lowercase),
        ],
    )
    .await?;
    Ok(())
}

const HUB_DEVICE_COLUMNS: &str = "hub, device_id, status, primary_key, secondary_key, created, updated, etag, \
     generation_id, doc, twin, twin_version";

fn hub_device_row(sealer: &Sealer, r: &Row) -> Result<HubDevice, StoreError> {
    let device_id: String = r.try_get(1)?;
    let json = |at: usize| -> Result<Value, StoreError> {
        serde_json::from_str(&r.try_get::<_, String>(at)?)
            .map_err(|e| StoreError::Corrupt(format!("hub device {device_id}: {e}")))
    };
    Ok(HubDevice {
        doc: json(9)?,
        twin: json(10)?,
        hub: r.try_get(0)?,
        status: r.try_get(2)?,
        primary_key: open_key(sealer, &r.try_get::<_, String>(3)?)?,
        secondary_key: open_key(sealer, &r.try_get::<_, String>(4)?)?,
        created: from_ticks(r.try_get(5)?),
        updated: from_ticks(r.try_get(6)?),
        etag: r.try_get(7)?,
        generation_id: r.try_get(8)?,
        twin_version: r.try_get(11)?,
        device_id,
    })
}

async fn load_hub_device(
    c: &Conn,
    sealer: &Sealer,
    hub: &str,
    device_id: &str,
) -> Result<Option<HubDevice>, StoreError> {
    let sql =
        format!("SELECT {HUB_DEVICE_COLUMNS} FROM hub_devices WHERE hub = $1 AND device_id = $2");
    opt(c, &sql, &[&hub, &device_id])
        .await?
        .map(|r| hub_device_row(sealer, &r))
        .transpose()
}

async fn write_hub_device(c: &Conn, sealer: &Sealer, d: &HubDevice) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO hub_devices ({HUB_DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (hub, device_id) DO UPDATE SET status = excluded.status,
           primary_key = excluded.primary_key, secondary_key = excluded.secondary_key,
           updated = excluded.updated, etag = excluded.etag, generation_id = excluded.generation_id,
           doc = excluded.doc, twin = excluded.twin, twin_version = excluded.twin_version"
    );
    let (primary, secondary) = (
        sealer.seal(&d.primary_key.to_base64())?,
        sealer.seal(&d.secondary_key.to_base64())?,
    );
    let (doc, twin) = (d.doc.to_string(), d.twin.to_string());
    exec(
        c,
        &sql,
        &[
            &d.hub,
            &d.device_id,
            &d.status,
            &primary,
            &secondary,
            &to_ticks(d.created),
            &to_ticks(d.updated),
            &d.etag,
            &d.generation_id,
            &doc,
            &twin,
            &d.twin_version,
        ],
    )
    .await?;
    Ok(())
}
