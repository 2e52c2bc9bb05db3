//! The application state every handler shares, and first-run set-up of a data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use usher_proto::{IdScope, SymmetricKey};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pki::{self, PkiError, PkiFiles};
use crate::secrets::KekSource;
use crate::store::{Bootstrap, Hub, Instance, Policy, Right, Store, StoreError};

/// The owner policy every instance starts with.
pub const OWNER_POLICY: &str = "provisioningserviceowner";
/// The name of the hub a new instance gets.
pub const BUILTIN_HUB: &str = "usher-hub";
/// The database file inside the data directory.
pub const DB_FILE: &str = "usher.db";
/// Names the PostgreSQL database of an instance kept there (written by `usher serve --store`), so
/// the CLI run beside the data directory finds the instance.
pub const STORE_FILE: &str = "store.url";
/// Written once the server listens, so the CLI can find it.
pub const RUNTIME_FILE: &str = "runtime.json";

/// How the register response reports a completed assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterResponse {
    /// `200` with the final status at once: a fast path for CI. The Python, Node and C SDKs accept
    /// it; IoT Edge's identity service (aziot-identityd) does not: it accepts only `202`.
    Assigned,
    /// `202` with status `assigning` and `Retry-After`, as DPS does; the device then polls the
    /// operation, which answers the final state. The default.
    Assigning { retry_after_secs: u32 },
}

/// The transport a request arrived on (defined with the metrics, which the store reports to).
pub use crate::metrics::Protocol;

/// The Retry-After DPS-like answers carry unless `--retry-after` says otherwise: 2 s is the Node
/// SDK's own default, and keeps a device that polls at that pace within DPS's quota of 5 polls per
/// 10 s.
pub const DEFAULT_RETRY_AFTER_SECS: u32 = 2;

/// How long open connections get to finish after shutdown is asked for, unless
/// `--shutdown-timeout` says otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Settings that shape behaviour, fixed at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How far past expiry a token is still accepted.
    pub clock_skew_secs: u64,
    pub register_response: RegisterResponse,
    /// How long open connections get to finish after shutdown is asked for, before the server
    /// stops anyway.
    pub shutdown_timeout: std::time::Duration,
    /// Failed-attestation budgets.
    pub throttle: crate::throttle::ThrottleSettings,
    /// How long audit entries are kept.
    pub audit_retention: std::time::Duration,
    /// How custom allocation webhooks are called.
    pub webhook: crate::webhook::WebhookSettings,
    /// Firmware-testing modes for every device (an enrollment's own replace them).
    pub testing: crate::testing::TestingModes,
    /// The instance's registrations per minute under the `quotas` testing mode.
    pub testing_registrations_per_minute: u32,
    /// The CA that signs devices' certificates from a register request's `csr`; without one such
    /// a request is refused.
    pub issuing_ca: Option<Arc<crate::issuance::IssuingCa>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            clock_skew_secs: 300,
            register_response: RegisterResponse::Assigning {
                retry_after_secs: DEFAULT_RETRY_AFTER_SECS,
            },
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            throttle: crate::throttle::ThrottleSettings::default(),
            audit_retention: crate::audit::DEFAULT_RETENTION,
            webhook: crate::webhook::WebhookSettings::default(),
            testing: crate::testing::TestingModes::default(),
            testing_registrations_per_minute: 1000,
            issuing_ca: None,
        }
    }
}

/// Shared state: cheap to clone.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    pub store: Store,
    pub instance: Instance,
    /// Host names this instance answers to; service tokens may name any of them.
    pub hostnames: Vec<String>,
    pub settings: Settings,
    /// The failed-attestation budgets of every client address and registration ID.
    pub throttle: crate::throttle::Throttle,
    /// The counters of the firmware-testing modes.
    pub testing: crate::testing::Testing,
    /// The enrollment groups, decoded for attestation.
    pub groups: crate::groups::GroupIndex,
    /// Cancelled when the server shuts down; long-lived sessions watch it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Counters, gauges and histograms for the metrics listener.
    pub metrics: Metrics,
    /// Set once every listener accepts connections (`/readyz`).
    pub listening: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    pub fn new(
        store: Store,
        instance: Instance,
        hostnames: Vec<String>,
        settings: Settings,
    ) -> Self {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let metrics = Metrics::new();
        store.set_metrics(metrics.clone());
        let throttle = crate::throttle::Throttle::new(settings.throttle);
        let testing = crate::testing::Testing::new(settings.testing_registrations_per_minute);
        Self(Arc::new(AppInner {
            store,
            instance,
            hostnames,
            settings,
            throttle,
            testing,
            groups: crate::groups::GroupIndex::default(),
            shutdown,
            metrics,
            listening: std::sync::atomic::AtomicBool::new(false),
        }))
    }
}

/// Why a data directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the issuing CA made on first run: {0}")]
    IssuingCa(#[from] crate::issuance::IssuanceError),
    #[error("cannot draw random bytes: {0}")]
    Random(String),
    #[error("{0:?} holds no Usher instance; run `usher serve --data-dir {0:?}` once to create one")]
    NoInstance(PathBuf),
    #[error(
        "with a PostgreSQL store the key-encryption key must be given, the same on every node \
         (--kek-file, USHER_KEK_FILE, USHER_KEK or the systemd credential usher-kek), not generated \
         in one node's data directory; make one with `head -c 32 /dev/urandom | base64 > kek`"
    )]
    KekRequired,
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SetupError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| SetupError::Random(e.to_string()))?;
    Ok(buf)
}

/// A new random key of `n` bytes (16 to 64).
pub fn new_symmetric_key(n: usize) -> Result<SymmetricKey, ApiError> {
    SymmetricKey::generate(&random_vec(n)?).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// `n` bytes from the operating system's randomness.
pub fn random_vec(n: usize) -> Result<Vec<u8>, ApiError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)
        .map_err(|e| StoreError::Database(format!("cannot draw random bytes: {e}")))?;
    Ok(buf)
}

/// A new random key of `n` bytes (16 to 64), as base64.
pub fn new_key(n: usize) -> Result<String, ApiError> {
    new_symmetric_key(n).map(|k| k.to_base64())
}

/// Opens (creating on first run) the data directory and the store (SQLite in the data directory,
/// or the PostgreSQL database `store` names): instance identity, owner policy, built-in hub.
/// `service_host` is used only on first run. Several nodes may open one PostgreSQL database at
/// once: the first run's state is written once, and every node gets the instance in force.
pub async fn open_data_dir(
    data_dir: &Path,
    service_host: &str,
    kek: &KekSource,
    store: Option<&str>,
) -> Result<(Store, Instance), SetupError> {
    let private = |source| SetupError::DataDir {
        path: data_dir.to_owned(),
        source,
    };
    crate::files::create_private_dir(data_dir).map_err(private)?;
    // A data directory from before file modes were enforced gets them now.
    crate::files::restrict_tree(data_dir).map_err(private)?;
    let store = match store {
        None => {
            let kek = kek.load(data_dir, true).map_err(StoreError::from)?;
            Store::open_sqlite(&data_dir.join(DB_FILE), &kek)?
        }
        Some(url) => {
            if kek.is_data_dir() && !data_dir.join(crate::secrets::KEK_FILE).exists() {
                return Err(SetupError::KekRequired);
            }
            let kek = kek.load(data_dir, false).map_err(StoreError::from)?;
            let store = Store::open_postgres(url, &kek).await?;
            crate::files::write_private(&data_dir.join(STORE_FILE), url.as_bytes())
                .map_err(private)?;
            store
        }
    };
    if let Some(instance) = store.instance().await? {
        return Ok((store, instance));
    }
    let created = crate::clock::now();
    let key = || {
        new_symmetric_key(crate::management::GENERATED_KEY_BYTES)
            .map_err(|e| SetupError::Random(e.to_string()))
    };
    let owner = Policy {
        name: OWNER_POLICY.into(),
        primary_key: key()?,
        secondary_key: key()?,
        rights: Right::ALL.to_vec(),
    };
    let hub = Hub {
        name: BUILTIN_HUB.into(),
        hostname: service_host.to_owned(),
        weight: 1,
        apply_allocation_policy: true,
        builtin: true,
        created,
        location: None,
    };
    let first = Bootstrap {
        instance: Instance {
            id_scope: IdScope::generate(random_bytes()?).to_string(),
            service_host: service_host.to_owned(),
            created,
        },
        policies: vec![owner],
        hubs: vec![hub],
    };
    let instance = store.bootstrap(first).await?;
    Ok((store, instance))
}

/// Opens an existing data directory (or the PostgreSQL database its `store.url` names) without
/// creating anything.
pub async fn open_existing(
    data_dir: &Path,
    kek: &KekSource,
) -> Result<(Store, Instance), SetupError> {
    let db = data_dir.join(DB_FILE);
    let url = std::fs::read_to_string(data_dir.join(STORE_FILE)).ok();
    if !db.exists() && url.is_none() {
        return Err(SetupError::NoInstance(data_dir.to_owned()));
    }
    let kek = kek.load(data_dir, false).map_err(StoreError::from)?;
    let store = match url {
        Some(url) => Store::open_postgres(url.trim(), &kek).await?,
        None => Store::open_sqlite(&db, &kek)?,
    };
    let instance = store
        .instance()
        .await?
        .ok_or_else(|| SetupError::NoInstance(data_dir.to_owned()))?;
    Ok((store, instance))
}

/// The development PKI directory inside a data directory.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Makes sure the development PKI exists for `hostnames`.
pub fn ensure_pki(data_dir: &Path, hostnames: &[String]) -> Result<PkiFiles, SetupError> {
    Ok(pki::ensure(
        &pki_dir(data_dir),
        hostnames,
        time::OffsetDateTime::now_utc(),
    )?)
}

/// Makes sure the development PKI exists for `hostnames`; with PostgreSQL, the CA is the
/// instance's (the first node's, stored sealed in the database), so every node's server
/// certificate chains to the CA devices trust.
pub async fn ensure_shared_pki(
    store: &Store,
    data_dir: &Path,
    hostnames: &[String],
) -> Result<PkiFiles, SetupError> {
    let files = ensure_pki(data_dir, hostnames)?;
    let Store::Postgres(pg) = store else {
        return Ok(files);
    };
    let dir = pki_dir(data_dir);
    let io = |path: PathBuf| {
        move |source| {
            SetupError::Pki(PkiError::Io {
                path: path.clone(),
                source,
            })
        }
    };
    let mut local = Vec::new();
    for name in ["ca.pem", "ca.key"] {
        let path = dir.join(name);
        local.push((
            name.to_owned(),
            std::fs::read_to_string(&path).map_err(io(path))?,
        ));
    }
    let shared = pg.share_files(local.clone()).await?;
    if local.iter().map(|(_, c)| c).eq(shared.iter()) {
        return Ok(files);
    }
    for ((name, _), content) in local.iter().zip(&shared) {
        let path = dir.join(name);
        crate::files::write_private(&path, content.as_bytes()).map_err(io(path))?;
    }
    // The server certificate was issued by this node's own CA: issued again by the instance's.
    let names = dir.join("server.names");
    match std::fs::remove_file(&names) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(names)(e)),
    }
    ensure_pki(data_dir, hostnames)
}

/// The issuing CA for certificates requested at registration when none is configured: made on
/// first run in the PKI directory (owner-only files); with PostgreSQL, the instance's (the first
/// node's, stored sealed in the database), so every node issues from the same CA. Returns the
/// path of its certificate and the CA.
pub async fn ensure_issuing_ca(
    store: &Store,
    data_dir: &Path,
) -> Result<(PathBuf, crate::issuance::IssuingCa), SetupError> {
    let dir = pki_dir(data_dir);
    let (path, mut cert, mut key) = pki::ensure_issuing_ca(&dir, time::OffsetDateTime::now_utc())?;
    if let Store::Postgres(pg) = store {
        let shared = pg
            .share_files(vec![
                (pki::ISSUING_CA_CERT.to_owned(), cert.clone()),
                (pki::ISSUING_CA_KEY.to_owned(), key.clone()),
            ])
            .await?;
        if let [shared_cert, shared_key] = shared.as_slice()
            && (shared_cert != &cert || shared_key != &key)
        {
            for (name, content) in [
                (pki::ISSUING_CA_CERT, shared_cert),
                (pki::ISSUING_CA_KEY, shared_key),
            ] {
                let file = dir.join(name);
                crate::files::write_private(&file, content.as_bytes()).map_err(|source| {
                    SetupError::Pki(PkiError::Io {
                        path: file.clone(),
                        source,
                    })
                })?;
            }
            cert.clone_from(shared_cert);
            key.clone_from(shared_key);
        }
    }
    let ca = crate::issuance::IssuingCa::from_pem(&cert, &key, crate::clock::unix_now())?;
    Ok((std::path::absolute(&path).unwrap_or(path), ca))
}

/// The secret every node makes TLS session tickets from (PostgreSQL: the instance's, so a device
/// resumes on any node); `None` on SQLite, where one process serves and keeps its own ticket keys.
pub async fn shared_ticket_secret(store: &Store) -> Result<Option<[u8; 32]>, SetupError> {
    let Store::Postgres(pg) = store else {
        return Ok(None);
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let fresh = b64.encode(random_bytes::<32>()?);
    let shared = pg
        .share_files(vec![("tls-ticket-secret".into(), fresh)])
        .await?;
    let secret = shared
        .first()
        .and_then(|text| b64.decode(text).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| StoreError::Corrupt("the TLS ticket secret".into()))?;
    Ok(Some(secret))
}

/// What `usher serve` prints at start and `usher instance show` prints for a data directory, like
/// the portal's overview page.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub id_scope: String,
    pub device_endpoint: String,
    pub service_connection_string: String,
    pub ca_certificate: Option<String>,
    /// The issuing CA made on first run (its certificate's path), when there is one.
    pub issuing_ca_certificate: Option<String>,
    pub hubs: Vec<HubOverview>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubOverview {
    pub name: String,
    pub hostname: String,
    pub weight: u32,
    pub builtin: bool,
    /// The hub owner's connection string (built-in hubs), for the IoT Hub service clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_string: Option<String>,
}

/// Builds the overview of an instance.
pub async fn overview(
    store: &Store,
    instance: &Instance,
    data_dir: &Path,
) -> Result<Overview, SetupError> {
    let owner = store.policy(OWNER_POLICY).await?;
    let shown = |name: &str| {
        let path = pki_dir(data_dir).join(name);
        path.exists().then(|| {
            std::path::absolute(&path)
                .unwrap_or(path)
                .display()
                .to_string()
        })
    };
    let ca = shown("ca.pem");
    Ok(Overview {
        id_scope: instance.id_scope.clone(),
        device_endpoint: instance.service_host.clone(),
        service_connection_string: owner
            .map(|p| {
                format!(
                    "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
                    instance.service_host,
                    p.name,
                    p.primary_key.to_base64()
                )
            })
            .unwrap_or_default(),
        ca_certificate: ca,
        issuing_ca_certificate: shown(pki::ISSUING_CA_CERT),
        hubs: hub_overviews(store).await?,
    })
}

async fn hub_overviews(store: &Store) -> Result<Vec<HubOverview>, SetupError> {
    let mut out = Vec::new();
    for h in store.hubs().await? {
        let owner = if h.builtin {
            store
                .hub_policy(&h.name, crate::hub::HUB_OWNER_POLICY)
                .await?
        } else {
            None
        };
        out.push(HubOverview {
            connection_string: owner.map(|p| {
                format!(
                    "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
                    h.hostname,
                    p.name,
                    p.primary_key.to_base64()
                )
            }),
            name: h.name,
            hostname: h.hostname,
            weight: h.weight,
            builtin: h.builtin,
        });
    }
    Ok(out)
}

/// Gives every built-in hub the default policies it lacks (new hubs, and data directories made
/// before hubs had policies).
pub async fn ensure_hub_policies(store: &Store) -> Result<(), SetupError> {
    for hub in store.hubs().await?.into_iter().filter(|h| h.builtin) {
        let policies =
            crate::hub::default_policies().map_err(|e| SetupError::Random(e.to_string()))?;
        store.ensure_hub_policies(&hub.name, policies).await?;
    }
    Ok(())
}
