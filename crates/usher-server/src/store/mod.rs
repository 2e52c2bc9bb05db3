//! Durable state behind one interface.
//!
//! [`Store`] is a closed enum of backends (embedded SQLite, and PostgreSQL for several nodes on one
//! database); each method is a match over the backends, so handlers see one concrete type. All
//! writes go through each backend's single writer (one per node), which batches concurrent writes
//! into one transaction (group commit); a write returns only once its transaction is durable. On
//! PostgreSQL the write transactions of all nodes take one advisory lock, so they run one at a time
//! and every read-modify-write decision is linearizable across nodes.

pub mod copy;
mod postgres;
mod sqlite;

use std::path::Path;

use serde_json::Value;
use usher_proto::{SasError, SasToken, SymmetricKey};

pub use postgres::{PgStore, is_postgres_url, redact_url};
pub use sqlite::SqliteStore;

/// What went wrong in storage. These are server faults, never the client's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("the database schema is version {found}, newer than this Usher ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// A point in time. Stored as 100-ns ticks since the Unix epoch (DPS shows seven fractional
/// digits); shown with `usher_proto::model::format_timestamp`.
pub type Time = time::OffsetDateTime;

/// A time as stored.
pub fn to_ticks(t: Time) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 100).unwrap_or(i64::MAX)
}

/// A stored time.
pub fn from_ticks(ticks: i64) -> Time {
    Time::from_unix_timestamp_nanos(i128::from(ticks) * 100).unwrap_or(Time::UNIX_EPOCH)
}

/// A right a shared access policy grants: the DPS rights, then the IoT Hub ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    ServiceConfig,
    EnrollmentRead,
    EnrollmentWrite,
    DeviceConnect,
    RegistrationStatusRead,
    RegistrationStatusWrite,
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
}

impl Right {
    /// Every right a DPS shared access policy can hold, in the order DPS lists them.
    pub const ALL: [Self; 6] = [
        Self::ServiceConfig,
        Self::EnrollmentRead,
        Self::EnrollmentWrite,
        Self::DeviceConnect,
        Self::RegistrationStatusRead,
        Self::RegistrationStatusWrite,
    ];

    /// The rights of a built-in hub's policies.
    pub const HUB: [Self; 3] = [
        Self::RegistryRead,
        Self::RegistryWrite,
        Self::ServiceConnect,
    ];

    /// Every right of either kind; a right's bit is its place here.
    const EVERY: [Self; 9] = [
        Self::ServiceConfig,
        Self::EnrollmentRead,
        Self::EnrollmentWrite,
        Self::DeviceConnect,
        Self::RegistrationStatusRead,
        Self::RegistrationStatusWrite,
        Self::RegistryRead,
        Self::RegistryWrite,
        Self::ServiceConnect,
    ];

    /// The right's name as DPS and IoT Hub spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ServiceConfig => "ServiceConfig",
            Self::EnrollmentRead => "EnrollmentRead",
            Self::EnrollmentWrite => "EnrollmentWrite",
            Self::DeviceConnect => "DeviceConnect",
            Self::RegistrationStatusRead => "RegistrationStatusRead",
            Self::RegistrationStatusWrite => "RegistrationStatusWrite",
            Self::RegistryRead => "RegistryRead",
            Self::RegistryWrite => "RegistryWrite",
            Self::ServiceConnect => "ServiceConnect",
        }
    }

    /// A right by its name (case-insensitively).
    pub fn parse(name: &str) -> Option<Self> {
        Self::EVERY
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Its bit in the stored set.
    pub fn bit(self) -> i64 {
        1 << (self as u32)
    }

    /// The rights of a stored set.
    pub fn from_bits(bits: i64) -> Vec<Self> {
        Self::EVERY
            .into_iter()
            .filter(|r| bits & r.bit() != 0)
            .collect()
    }

    /// A stored set.
    pub fn to_bits(rights: &[Self]) -> i64 {
        rights.iter().fold(0, |bits, r| bits | r.bit())
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The identity of this provisioning instance, made once on first run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id_scope: String,
    /// The host name service tokens are signed for, and the device endpoint.
    pub service_host: String,
    pub created: Time,
}

/// A shared access policy: a name, two keys and the rights it grants. `Debug` leaves the keys out.
#[derive(Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub primary_key: SymmetricKey,
    pub secondary_key: SymmetricKey,
    pub rights: Vec<Right>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Checks a token's signature against this policy's keys (primary, then secondary) and returns
    /// the index of the key that signed it.
    pub fn check_signature(&self, token: &SasToken) -> Result<usize, SasError> {
        token.check_signature(&[&self.primary_key, &self.secondary_key])
    }

    /// Whether the policy holds the right named `right`.
    pub fn grants(&self, right: &str) -> bool {
        Right::parse(right).is_some_and(|r| self.rights.contains(&r))
    }

    /// The rights' names, comma-separated.
    pub fn rights_text(&self) -> String {
        self.rights
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A linked IoT hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    pub name: String,
    pub hostname: String,
    pub weight: u32,
    /// Whether the hub takes part in `hashed` allocation (it can still be named by an enrollment).
    pub apply_allocation_policy: bool,
    /// Whether Usher's own registry holds the hub's device identities.
    pub builtin: bool,
    pub created: Time,
    /// An Azure-style region name, for `geoLatency` allocation.
    pub location: Option<String>,
}

/// How the instance allocates devices whose enrollment names no policy, and where clients are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationSettings {
    pub default_policy: usher_proto::service::AllocationPolicy,
    /// Client networks and the location each is in, for `geoLatency`; the first match wins.
    pub geo_map: Vec<GeoRule>,
}

impl Default for AllocationSettings {
    fn default() -> Self {
        Self {
            default_policy: usher_proto::service::AllocationPolicy::Hashed,
            geo_map: Vec::new(),
        }
    }
}

/// A client network (CIDR) and its location.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeoRule {
    pub network: ipnet::IpNet,
    pub location: String,
}

impl AllocationSettings {
    /// The location of a client address by the network map.
    pub fn location_of(&self, address: std::net::IpAddr) -> Option<&str> {
        self.geo_map
            .iter()
            .find(|r| r.network.contains(&address))
            .map(|r| r.location.as_str())
    }
}

/// A device identity in a built-in hub. `Debug` leaves the keys out.
#[derive(Clone, PartialEq, Eq)]
pub struct HubDevice {
    pub hub: String,
    pub device_id: String,
    /// `enabled` or `disabled`.
    pub status: String,
    pub primary_key: SymmetricKey,
    pub secondary_key: SymmetricKey,
    pub created: Time,
    pub updated: Time,
    /// Changes on every write to the device.
    pub etag: String,
    /// Changes when the device is deleted and created again.
    pub generation_id: String,
    /// The rest of the device document (`statusReason`, `capabilities`, authentication type and
    /// thumbprints, `deviceScope`, …), as the registry API shows it.
    pub doc: Value,
    /// `{"tags": {…}, "desired": {…}, "reported": {…}, "desiredVersion": n}`.
    pub twin: Value,
    pub twin_version: i64,
}

impl HubDevice {
    /// Takes the tags and desired properties of another identity's twin (a migration), as a new
    /// version of its twin. (Here, not in `hub`, so the store needs no domain module.)
    pub fn carry_twin(&mut self, from: &Value) {
        if let Some(obj) = self.twin.as_object_mut() {
            for field in ["tags", "desired"] {
                if let Some(v) = from.get(field) {
                    obj.insert(field.into(), v.clone());
                }
            }
            let version = from
                .get("desiredVersion")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            obj.insert("desiredVersion".into(), Value::from(version + 1));
        }
        self.twin_version += 1;
    }
}

impl std::fmt::Debug for HubDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubDevice")
            .field("hub", &self.hub)
            .field("device_id", &self.device_id)
            .field("status", &self.status)
            .field("etag", &self.etag)
            .finish_non_exhaustive()
    }
}

/// How many records the store holds, for the console's overview.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub enrollments: u64,
    pub enrollment_groups: u64,
    pub registrations: u64,
    /// Device identities per built-in hub, by hub name, in hub order (hubs without devices too).
    pub hub_devices: Vec<(String, u64)>,
}

/// Which document collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Enrollments,
    EnrollmentGroups,
}

/// One document's read-modify-write decision for [`Store::upsert_docs`].
pub type Decide<E> = Box<dyn FnOnce(Option<Doc>) -> Result<Doc, E> + Send>;

/// A stored enrollment or enrollment group: the full JSON document (keys included), keyed on the
/// lower-cased ID.
#[derive(Clone, PartialEq)]
pub struct Doc {
    /// The ID as the client spelled it.
    pub id: String,
    pub json: Value,
    pub etag: String,
}

impl std::fmt::Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The document holds keys: only its identity is shown.
        f.debug_struct("Doc")
            .field("id", &self.id)
            .field("etag", &self.etag)
            .finish_non_exhaustive()
    }
}

/// A device's registration record.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// As the device spelled it on its latest registration.
    pub registration_id: String,
    pub enrollment_group_id: Option<String>,
    pub status: usher_proto::model::RegistrationStatus,
    pub substatus: Option<usher_proto::model::Substatus>,
    pub assigned_hub: Option<String>,
    pub device_id: Option<String>,
    pub error_code: Option<u32>,
    pub error_message: Option<String>,
    pub created: Time,
    pub updated: Time,
    pub etag: String,
    /// The latest operation; operation-status requests must name it.
    pub operation_id: String,
    pub payload: Option<Value>,
    /// The hub the device was first assigned to.
    pub initial_hub: Option<String>,
    /// For a device that attested with a certificate: the `x509` registration result
    /// (`certificateInfo`, `enrollmentGroupId`, `signingCertificateInfo`).
    pub x509: Option<Value>,
    /// The certificate chain issued for this operation's CSR (base64 DER), if it asked for one.
    pub issued_chain: Option<Vec<String>>,
}

/// One registration's durable effects, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    /// The record to write, if any (a disabled enrollment writes none).
    pub registration: Option<Registration>,
    /// The identity to create or update in a built-in hub.
    pub device: Option<DeviceWrite>,
    /// An identity to remove from a built-in hub: (hub name, device ID).
    pub remove_device: Option<(String, String)>,
    /// What the audit log says of it, written in the same transaction.
    pub audit: Vec<usher_proto::audit::Record>,
}

/// A hub identity an assignment creates or updates, and what its twin becomes.
#[derive(Debug, Clone)]
pub struct DeviceWrite {
    /// The identity with the twin it is to have if it is new.
    pub device: HubDevice,
    pub twin: TwinWrite,
}

impl DeviceWrite {
    /// The identity to store, given the one the registry has (if any) and the twin carried over
    /// from a previous identity (if any). An existing identity keeps its generation and document;
    /// its status, keys and etag follow the assignment, its capabilities the enrollment, its
    /// authentication (type and thumbprints) the credential the device attested with this time
    /// (a renewed certificate replaces the old one's thumbprint), its twin the decision. The same
    /// rule on every backend.
    pub fn onto(&self, existing: Option<HubDevice>, carried: Option<Value>) -> HubDevice {
        let d = &self.device;
        let mut device = match existing {
            Some(existing) => {
                let replace = self.twin == TwinWrite::Replace;
                let mut doc = existing.doc.clone();
                if let Some(obj) = doc.as_object_mut() {
                    if let Some(caps) = d.doc.get("capabilities") {
                        obj.insert("capabilities".into(), caps.clone());
                    }
                    for field in ["authenticationType", "x509Thumbprint"] {
                        match d.doc.get(field) {
                            Some(value) => obj.insert(field.into(), value.clone()),
                            None => obj.remove(field),
                        };
                    }
                }
                HubDevice {
                    status: d.status.clone(),
                    primary_key: d.primary_key.clone(),
                    secondary_key: d.secondary_key.clone(),
                    updated: d.updated,
                    etag: d.etag.clone(),
                    doc,
                    twin: if replace {
                        d.twin.clone()
                    } else {
                        existing.twin.clone()
                    },
                    twin_version: if replace {
                        existing.twin_version + 1
                    } else {
                        existing.twin_version
                    },
                    ..existing
                }
            }
            None => d.clone(),
        };
        if let Some(from) = carried {
            device.carry_twin(&from);
        }
        device
    }
}

/// What an existing identity's twin becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwinWrite {
    /// Kept as it is (a new identity gets `device.twin`).
    Keep,
    /// Replaced by `device.twin` (a reset to the initial twin).
    Replace,
    /// The tags and desired properties of another identity: (hub name, device ID).
    CopyFrom(String, String),
}

/// A CA certificate the operator uploaded for X.509 attestation (what DPS calls a "certificate"):
/// enrollments and groups name it in `caReferences`, and a device's chain may lead to it once it is
/// verified.
#[derive(Debug, Clone, PartialEq)]
pub struct CaCertificate {
    /// The name as the operator spelled it (looked up case-insensitively).
    pub name: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// Proof of possession was shown (or the operator declared it verified on upload).
    pub verified: bool,
    /// The code a proof-of-possession certificate must carry as its CN, until it is used.
    pub verification_code: Option<String>,
    pub created: Time,
    pub updated: Time,
    pub etag: String,
}

/// What a registration decides over, read inside its write transaction.
#[derive(Debug, Clone)]
pub struct RegisterView {
    pub previous: Option<Registration>,
    pub hubs: Vec<Hub>,
    pub allocation: AllocationSettings,
    /// The individual enrollment of the registration ID, as it is now.
    pub individual: Option<Doc>,
    /// The group the device attested through, as it is now.
    pub group: Option<Doc>,
}

/// Everything a first run creates, written in one transaction.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub instance: Instance,
    pub policies: Vec<Policy>,
    pub hubs: Vec<Hub>,
}

/// The store. See the module docs.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Dispatches a method to the backend.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Sqlite($store) => $call,
            Store::Postgres($store) => $call,
        }
    };
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, brings its schema up to date and
    /// unwraps its data key with `kek`.
    pub fn open_sqlite(path: &Path, kek: &crate::secrets::Kek) -> Result<Self, StoreError> {
        Ok(Self::Sqlite(SqliteStore::open(path, kek)?))
    }

    /// Connects to the PostgreSQL database at `url` (a `postgres://` URL), brings its schema up to
    /// date and unwraps its data key with `kek`; several nodes may open the same database.
    pub async fn open_postgres(url: &str, kek: &crate::secrets::Kek) -> Result<Self, StoreError> {
        Ok(Self::Postgres(PgStore::open(url, kek).await?))
    }

    /// Records each transaction's latency and batch size in `metrics` from now on (the first
    /// handle given wins).
    pub fn set_metrics(&self, metrics: crate::metrics::Metrics) {
        dispatch!(self, s => s.set_metrics(metrics))
    }

    /// A cheap read that proves the database answers and the writer runs (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    pub async fn instance(&self) -> Result<Option<Instance>, StoreError> {
        dispatch!(self, s => s.instance().await)
    }

    /// Writes the first-run state unless an instance exists already; returns the instance in force.
    pub async fn bootstrap(&self, first_run: Bootstrap) -> Result<Instance, StoreError> {
        dispatch!(self, s => s.bootstrap(first_run).await)
    }

    pub async fn policy(&self, name: &str) -> Result<Option<Policy>, StoreError> {
        dispatch!(self, s => s.policy(name).await)
    }

    pub async fn policies(&self) -> Result<Vec<Policy>, StoreError> {
        dispatch!(self, s => s.policies().await)
    }

    /// Creates a policy; `Ok(false)` if one of that name exists.
    pub async fn add_policy(&self, policy: Policy) -> Result<bool, StoreError> {
        dispatch!(self, s => s.add_policy(policy).await)
    }

    /// Deletes a policy; `Ok(false)` if there was none.
    pub async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_policy(name).await)
    }

    /// Replaces a policy's keys; `Ok(None)` if there is no such policy.
    pub async fn set_policy_keys(
        &self,
        name: &str,
        primary_key: SymmetricKey,
        secondary_key: SymmetricKey,
    ) -> Result<Option<Policy>, StoreError> {
        dispatch!(self, s => s.set_policy_keys(name, primary_key, secondary_key).await)
    }

    pub async fn hubs(&self) -> Result<Vec<Hub>, StoreError> {
        dispatch!(self, s => s.hubs().await)
    }

    /// Adds a hub; `Ok(false)` if a hub of that name or host name exists.
    pub async fn add_hub(&self, hub: Hub) -> Result<bool, StoreError> {
        dispatch!(self, s => s.add_hub(hub).await)
    }

    /// How many enrollments, groups, registration records and hub devices there are.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        dispatch!(self, s => s.counts().await)
    }

    /// Up to `limit` device identities of `hub` in storage order, each with its position, after
    /// position `after` (0 for the beginning): a keyset page, as cheap at the millionth device as
    /// at the first.
    pub async fn hub_devices(
        &self,
        hub: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, HubDevice)>, StoreError> {
        dispatch!(self, s => s.hub_devices(hub, after, limit).await)
    }

    /// How many device identities `hub` holds, and how many of them are enabled.
    pub async fn hub_device_counts(&self, hub: &str) -> Result<(u64, u64), StoreError> {
        dispatch!(self, s => s.hub_device_counts(hub).await)
    }

    pub async fn hub_device(
        &self,
        hub: &str,
        device_id: &str,
    ) -> Result<Option<HubDevice>, StoreError> {
        dispatch!(self, s => s.hub_device(hub, device_id).await)
    }

    /// Read-modify-write of one hub device inside the writer's transaction.
    pub async fn upsert_hub_device<E>(
        &self,
        hub: &str,
        device_id: &str,
        decide: impl FnOnce(Option<HubDevice>) -> Result<HubDevice, E> + Send + 'static,
    ) -> Result<HubDevice, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        dispatch!(self, s => s.upsert_hub_device(hub, device_id, decide).await)
    }

    /// Deletes one hub device if `allow` agrees; `Ok(None)` if there was none.
    pub async fn delete_hub_device<E>(
        &self,
        hub: &str,
        device_id: &str,
        allow: impl FnOnce(&HubDevice) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<HubDevice>, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        dispatch!(self, s => s.delete_hub_device(hub, device_id, allow).await)
    }

    pub async fn hub_policy(&self, hub: &str, name: &str) -> Result<Option<Policy>, StoreError> {
        dispatch!(self, s => s.hub_policy(hub, name).await)
    }

    /// A built-in hub's policies, by name.
    pub async fn hub_policies(&self, hub: &str) -> Result<Vec<Policy>, StoreError> {
        dispatch!(self, s => s.hub_policies(hub).await)
    }

    /// Adds each policy the hub does not have yet (by name); existing ones are left as they are.
    pub async fn ensure_hub_policies(
        &self,
        hub: &str,
        policies: Vec<Policy>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.ensure_hub_policies(hub, policies).await)
    }

    pub async fn doc(&self, coll: Collection, id: &str) -> Result<Option<Doc>, StoreError> {
        dispatch!(self, s => s.doc(coll, id).await)
    }

    /// Up to `limit` documents in storage order, each with its position, starting after position
    /// `after` (0 for the beginning). Positions are stable: an update keeps a document's position and
    /// a delete does not move the others, so a cursor stays valid while records change.
    pub async fn docs(
        &self,
        coll: Collection,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Doc)>, StoreError> {
        dispatch!(self, s => s.docs(coll, after, limit).await)
    }

    /// Read-modify-write of one document inside the writer's transaction: `decide` sees the stored
    /// document (if any) and returns the one to store, or refuses and nothing is written.
    pub async fn upsert_doc<E>(
        &self,
        coll: Collection,
        id: &str,
        decide: impl FnOnce(Option<Doc>) -> Result<Doc, E> + Send + 'static,
    ) -> Result<Doc, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        dispatch!(self, s => s.upsert_doc(coll, id, decide).await)
    }

    /// Many read-modify-writes of documents in one transaction (one commit, one fsync): each
    /// `decide` sees its stored document (including ones stored earlier in the same call) and its
    /// refusal leaves the others unaffected. A store failure writes none of them.
    pub async fn upsert_docs<E>(
        &self,
        coll: Collection,
        items: Vec<(String, Decide<E>)>,
    ) -> Result<Vec<Result<(), E>>, StoreError>
    where
        E: Send + 'static,
    {
        dispatch!(self, s => s.upsert_docs(coll, items).await)
    }

    /// Inserts new documents in one transaction; one that exists (by key) is left as it is and
    /// reported `false`. Keys are sealed and rows encoded before the writer is entered, so the
    /// writer only inserts.
    pub async fn insert_docs(
        &self,
        coll: Collection,
        docs: Vec<Doc>,
    ) -> Result<Vec<bool>, StoreError> {
        dispatch!(self, s => s.insert_docs(coll, docs).await)
    }

    /// A number that changes whenever an enrollment group is written, for caches of the groups.
    pub fn groups_generation(&self) -> u64 {
        dispatch!(self, s => s.groups_generation())
    }

    /// Deletes one document if `allow` agrees; `Ok(None)` if there was none.
    pub async fn delete_doc<E>(
        &self,
        coll: Collection,
        id: &str,
        allow: impl FnOnce(&Doc) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<Doc>, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        dispatch!(self, s => s.delete_doc(coll, id, allow).await)
    }

    /// The CA certificates, by name.
    pub async fn ca_certificates(&self) -> Result<Vec<CaCertificate>, StoreError> {
        dispatch!(self, s => s.ca_certificates().await)
    }

    /// One CA certificate, by name (case-insensitive).
    pub async fn ca_certificate(&self, name: &str) -> Result<Option<CaCertificate>, StoreError> {
        dispatch!(self, s => s.ca_certificate(name).await)
    }

    /// Read-modify-write of one CA certificate inside the writer's transaction: `decide` sees the
    /// stored one (if any) and returns what to store, or refuses and nothing is written.
    pub async fn put_ca_certificate<E>(
        &self,
        name: &str,
        decide: impl FnOnce(Option<CaCertificate>) -> Result<CaCertificate, E> + Send + 'static,
    ) -> Result<CaCertificate, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        dispatch!(self, s => s.put_ca_certificate(name, decide).await)
    }

    /// Deletes one CA certificate if `allow` agrees; `Ok(None)` if there was none.
    pub async fn delete_ca_certificate<E>(
        &self,
        name: &str,
        allow: impl FnOnce(&CaCertificate) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<CaCertificate>, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        dispatch!(self, s => s.delete_ca_certificate(name, allow).await)
    }

    pub async fn registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<Registration>, StoreError> {
        dispatch!(self, s => s.registration(registration_id).await)
    }

    /// Up to `limit` records of devices registered through `group_id`, after position `after`:
    /// a keyset page.
    pub async fn registrations_of_group(
        &self,
        group_id: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Registration)>, StoreError> {
        dispatch!(self, s => s.registrations_of_group(group_id, after, limit).await)
    }

    /// Up to `limit` registration records in storage order, each with its position, after position
    /// `after` (0 for the beginning); positions are stable as for [`Store::docs`].
    pub async fn registrations(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Registration)>, StoreError> {
        dispatch!(self, s => s.registrations(after, limit).await)
    }

    /// The `limit` most recently updated registration records, newest first.
    pub async fn recent_registrations(&self, limit: u64) -> Result<Vec<Registration>, StoreError> {
        dispatch!(self, s => s.recent_registrations(limit).await)
    }

    /// A registration, in one write transaction: `decide` sees the rows as they are (the previous
    /// record, the hubs, the allocation settings, the enrollment), returns the effects to write and
    /// a value for the caller; nothing another writer does can come between the read and the write.
    pub async fn register<R, E>(
        &self,
        registration_id: &str,
        group_id: Option<&str>,
        decide: impl FnOnce(RegisterView) -> Result<(Assignment, R), E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        dispatch!(self, s => s.register(registration_id, group_id, decide).await)
    }

    pub async fn allocation_settings(&self) -> Result<AllocationSettings, StoreError> {
        dispatch!(self, s => s.allocation_settings().await)
    }

    pub async fn set_allocation_settings(
        &self,
        settings: AllocationSettings,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_allocation_settings(settings).await)
    }

    /// Changes a hub's weight, location or allocation flag; `Ok(None)` if there is no such hub.
    pub async fn update_hub(
        &self,
        name: &str,
        change: impl FnOnce(&mut Hub) + Send + 'static,
    ) -> Result<Option<Hub>, StoreError> {
        dispatch!(self, s => s.update_hub(name, change).await)
    }

    /// Appends records to the audit log, chained, in the writer's next transaction.
    pub async fn append_audit(
        &self,
        records: Vec<usher_proto::audit::Record>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.append_audit(records).await)
    }

    /// Up to `limit` audit entries after position `after`, in order.
    pub async fn audit_entries(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<Vec<usher_proto::audit::Entry>, StoreError> {
        dispatch!(self, s => s.audit_entries(after, limit).await)
    }

    /// Where the audit chain starts: the last pruned entry's position and hash (0 and
    /// `audit::GENESIS` if none was pruned).
    pub async fn audit_anchor(&self) -> Result<(u64, String), StoreError> {
        dispatch!(self, s => s.audit_anchor().await)
    }

    /// Removes the audit entries written before `before` (a timestamp), keeping the last removed
    /// one's hash as the chain's anchor; returns how many went.
    pub async fn prune_audit(&self, before: String) -> Result<u64, StoreError> {
        dispatch!(self, s => s.prune_audit(before).await)
    }

    /// Writes audit entries as they are (positions and hashes kept), after setting the chain's
    /// anchor: for copying a log into an empty store (`usher migrate`).
    pub async fn restore_audit(
        &self,
        anchor: (u64, String),
        entries: Vec<usher_proto::audit::Entry>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.restore_audit(anchor, entries).await)
    }

    /// Deletes a registration record if `allow` agrees; `Ok(None)` if there was none.
    pub async fn delete_registration<E>(
        &self,
        registration_id: &str,
        allow: impl FnOnce(&Registration) -> Result<(), E> + Send + 'static,
    ) -> Result<Option<Registration>, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        dispatch!(self, s => s.delete_registration(registration_id, allow).await)
    }
}

#[cfg(test)]
mod tests;
