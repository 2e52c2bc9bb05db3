//! Store contract tests: every backend must pass these.

use super::*;
use serde_json::json;

/// Which backend a contract test runs against.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One test's database: a SQLite file in a temporary directory, or a fresh PostgreSQL database on
/// the test server (`USHER_TEST_POSTGRES`, else `postgres://postgres@127.0.0.1:5432/postgres`),
/// dropped when the test ends.
struct Db {
    dir: tempfile::TempDir,
    postgres: Option<crate::test_postgres::TestDatabase>,
}

impl Db {
    async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(crate::test_postgres::TestDatabase::create().await),
        };
        Self { dir, postgres }
    }

    /// Opens (again) the test's database.
    async fn open(&self) -> Store {
        self.open_with(&test_kek()).await.unwrap()
    }

    async fn open_with(&self, kek: &crate::secrets::Kek) -> Result<Store, StoreError> {
        match &self.postgres {
            None => Store::open_sqlite(&self.dir.path().join("usher.db"), kek),
            Some(db) => Store::open_postgres(db.url(), kek).await,
        }
    }
}

async fn open(backend: Backend) -> (Db, Store) {
    let db = Db::new(backend).await;
    let store = db.open().await;
    (db, store)
}

/// Runs each named contract test (an `async fn(Backend)`) against both backends.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Postgres).await
            })*
        }
    };
}

contract!(
    bootstrap_happens_once,
    ca_certificates_read_modify_write_case_insensitively_and_survive_reopen,
    documents_are_case_insensitive_and_read_modify_write,
    concurrent_writes_commit_together_and_a_refusal_does_not_spoil_the_batch,
    assignment_writes_registration_and_hub_device_together_and_survives_reopen,
    hub_registry_read_modify_write_and_policies,
    policies_add_rotate_delete,
    hubs_are_unique_by_name_and_hostname,
    counts_registration_pages_and_recent_records,
    a_data_key_opens_only_with_its_kek,
    the_audit_chain_survives_pruning_from_its_anchor,
    hub_devices_and_group_records_page_by_keyset,
    many_documents_in_one_write_each_deciding_alone,
    bulk_inserts_keep_existing_documents,
);

fn doc(id: &str, etag: &str) -> Doc {
    Doc {
        id: id.into(),
        json: json!({"registrationId": id}),
        etag: etag.into(),
    }
}

#[derive(Debug, PartialEq)]
enum Refused {
    No,
    Store,
}

impl From<StoreError> for Refused {
    fn from(_: StoreError) -> Self {
        Self::Store
    }
}

async fn bootstrap_happens_once(backend: Backend) {
    let (_db, store) = open(backend).await;
    assert_eq!(store.instance().await.unwrap(), None);
    let first = Bootstrap {
        instance: Instance {
            id_scope: "0ne00000001".into(),
            service_host: "localhost".into(),
            created: at(1),
        },
        policies: vec![Policy {
            name: "p".into(),
            primary_key: key(1),
            secondary_key: key(2),
            rights: vec![Right::ServiceConfig, Right::EnrollmentRead],
        }],
        hubs: vec![Hub {
            name: "h".into(),
            hostname: "h.example".into(),
            weight: 1,
            apply_allocation_policy: true,
            builtin: true,
            created: at(1),
            location: None,
        }],
    };
    let instance = store.bootstrap(first.clone()).await.unwrap();
    let mut second = first;
    second.instance.id_scope = "0ne00000002".into();
    assert_eq!(
        store.bootstrap(second).await.unwrap(),
        instance,
        "the first instance stays"
    );
    assert_eq!(
        store.policy("p").await.unwrap().unwrap().rights,
        vec![Right::ServiceConfig, Right::EnrollmentRead]
    );
    assert_eq!(store.hubs().await.unwrap().len(), 1);
}

async fn documents_are_case_insensitive_and_read_modify_write(backend: Backend) {
    let (_db, store) = open(backend).await;
    let created = store
        .upsert_doc(Collection::Enrollments, "Dev-1", |cur| {
            assert!(cur.is_none());
            Ok::<_, Refused>(doc("Dev-1", "e1"))
        })
        .await
        .unwrap();
    assert_eq!(created.etag, "e1");
    let got = store
        .doc(Collection::Enrollments, "DEV-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, "Dev-1");
    // A refusal writes nothing.
    let refused = store
        .upsert_doc(Collection::Enrollments, "dev-1", |_| {
            Err::<Doc, _>(Refused::No)
        })
        .await;
    assert_eq!(refused, Err(Refused::No));
    assert_eq!(
        store
            .doc(Collection::Enrollments, "dev-1")
            .await
            .unwrap()
            .unwrap()
            .etag,
        "e1"
    );
    // Groups are a separate collection.
    assert!(
        store
            .doc(Collection::EnrollmentGroups, "dev-1")
            .await
            .unwrap()
            .is_none()
    );
    // Delete, guarded.
    assert_eq!(
        store
            .delete_doc(Collection::Enrollments, "dev-1", |_| Err(Refused::No))
            .await,
        Err(Refused::No)
    );
    let gone = store
        .delete_doc(Collection::Enrollments, "dev-1", |_| Ok::<_, Refused>(()))
        .await
        .unwrap();
    assert_eq!(gone.unwrap().id, "Dev-1");
    assert!(
        store
            .delete_doc(Collection::Enrollments, "dev-1", |_| Ok::<_, Refused>(()))
            .await
            .unwrap()
            .is_none()
    );
}

async fn concurrent_writes_commit_together_and_a_refusal_does_not_spoil_the_batch(
    backend: Backend,
) {
    let (_db, store) = open(backend).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .upsert_doc(Collection::Enrollments, &format!("d{i}"), move |_| {
                    if i % 10 == 0 {
                        Err(Refused::No)
                    } else {
                        Ok(doc(&format!("d{i}"), "e"))
                    }
                })
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 180);
    let all = store.docs(Collection::Enrollments, 0, 1000).await.unwrap();
    assert_eq!(all.len(), 180);
    assert!(
        store
            .doc(Collection::Enrollments, "d10")
            .await
            .unwrap()
            .is_none()
    );
    // Paging in storage order.
    let page = store.docs(Collection::Enrollments, 170, 50).await.unwrap();
    assert_eq!(page.len(), 10);
}

async fn assignment_writes_registration_and_hub_device_together_and_survives_reopen(
    backend: Backend,
) {
    let db = Db::new(backend).await;
    {
        let store = db.open().await;
        store
            .add_hub(Hub {
                name: "h".into(),
                hostname: "h.example".into(),
                weight: 1,
                apply_allocation_policy: true,
                builtin: true,
                created: at(1),
                location: None,
            })
            .await
            .unwrap();
        let registration = Registration {
            registration_id: "Dev-1".into(),
            enrollment_group_id: Some("G1".into()),
            status: usher_proto::model::RegistrationStatus::Assigned,
            substatus: Some(usher_proto::model::Substatus::InitialAssignment),
            assigned_hub: Some("h.example".into()),
            device_id: Some("Dev-1".into()),
            error_code: None,
            error_message: None,
            created: at(2),
            updated: at(2),
            etag: "e".into(),
            operation_id: "op".into(),
            payload: Some(json!({"a": 1})),
            initial_hub: None,
            x509: None,
            issued_chain: None,
        };
        let device = HubDevice {
            primary_key: key(4),
            secondary_key: key(5),
            ..hub_device("h", "Dev-1")
        };
        record(
            &store,
            Assignment {
                registration: Some(registration),
                device: Some(keep(device)),
                ..Assignment::default()
            },
        )
        .await
        .unwrap();
        // A hub that does not exist violates the foreign key: the whole assignment is refused.
        let bad = Assignment {
            registration: Some(Registration {
                registration_id: "dev-2".into(),
                ..store.registration("dev-1").await.unwrap().unwrap()
            }),
            device: Some(keep(hub_device("nope", "dev-2"))),
            ..Assignment::default()
        };
        assert!(record(&store, bad).await.is_err());
        assert!(
            store.registration("dev-2").await.unwrap().is_none(),
            "no half-written record"
        );
    }
    let store = db.open().await;
    let reg = store.registration("DEV-1").await.unwrap().unwrap();
    assert_eq!(reg.payload, Some(json!({"a": 1})));
    assert_eq!(
        store
            .registrations_of_group("g1", 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.hub_devices("h", 0, 10).await.unwrap()[0]
            .1
            .primary_key,
        key(4)
    );
    let deleted = store
        .delete_registration("dev-1", |_| Ok::<_, Refused>(()))
        .await
        .unwrap();
    assert!(deleted.is_some());
    assert!(store.registration("dev-1").await.unwrap().is_none());
    assert_eq!(
        store.hub_devices("h", 0, 10).await.unwrap().len(),
        1,
        "deleting a registration leaves the hub identity"
    );
}

/// Writes an assignment through `Store::register`, deciding nothing.
async fn record(store: &Store, a: Assignment) -> Result<(), StoreError> {
    let id = a
        .registration
        .as_ref()
        .map(|r| r.registration_id.clone())
        .unwrap_or_default();
    store
        .register(&id, None, move |_| Ok::<_, StoreError>((a, ())))
        .await
}

fn keep(device: HubDevice) -> DeviceWrite {
    DeviceWrite {
        device,
        twin: TwinWrite::Keep,
    }
}

fn hub_device(hub: &str, id: &str) -> HubDevice {
    HubDevice {
        hub: hub.into(),
        device_id: id.into(),
        status: "enabled".into(),
        primary_key: key(3),
        secondary_key: key(3),
        created: at(1),
        updated: at(1),
        etag: "e1".into(),
        generation_id: "g1".into(),
        doc: json!({"authenticationType": "sas"}),
        twin: json!({"tags": {"a": 1}}),
        twin_version: 1,
    }
}

fn builtin(name: &str, hostname: &str) -> Hub {
    Hub {
        name: name.into(),
        hostname: hostname.into(),
        weight: 1,
        apply_allocation_policy: true,
        builtin: true,
        created: at(1),
        location: None,
    }
}

async fn hub_registry_read_modify_write_and_policies(backend: Backend) {
    let (_db, store) = open(backend).await;
    store.add_hub(builtin("h", "h.example")).await.unwrap();
    let created = store
        .upsert_hub_device("h", "Dev-1", |cur| {
            assert!(cur.is_none());
            Ok::<_, Refused>(hub_device("h", "Dev-1"))
        })
        .await
        .unwrap();
    assert_eq!(
        store.hub_device("h", "Dev-1").await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(
        store.hub_device("h", "dev-1").await.unwrap(),
        None,
        "device IDs are case-sensitive"
    );
    let refused = store
        .upsert_hub_device("h", "Dev-1", |_| Err::<HubDevice, _>(Refused::No))
        .await;
    assert_eq!(refused, Err(Refused::No));
    // A DPS re-assignment updates keys and etag but keeps the generation and the twin.
    let reg = Registration {
        registration_id: "Dev-1".into(),
        enrollment_group_id: None,
        status: usher_proto::model::RegistrationStatus::Assigned,
        substatus: None,
        assigned_hub: Some("h.example".into()),
        device_id: Some("Dev-1".into()),
        error_code: None,
        error_message: None,
        created: at(1),
        updated: at(1),
        etag: "r".into(),
        operation_id: "op".into(),
        payload: None,
        initial_hub: None,
        x509: None,
        issued_chain: None,
    };
    let again = HubDevice {
        primary_key: key(6),
        etag: "e2".into(),
        generation_id: "g2".into(),
        twin: json!({}),
        ..hub_device("h", "Dev-1")
    };
    record(
        &store,
        Assignment {
            registration: Some(reg),
            device: Some(keep(again)),
            ..Assignment::default()
        },
    )
    .await
    .unwrap();
    let now = store.hub_device("h", "Dev-1").await.unwrap().unwrap();
    assert_eq!(
        (
            now.primary_key,
            now.etag.as_str(),
            now.generation_id.as_str()
        ),
        (key(6), "e2", "g1")
    );
    assert_eq!(now.twin, json!({"tags": {"a": 1}}));
    assert_eq!(
        store
            .delete_hub_device("h", "Dev-1", |_| Err(Refused::No))
            .await,
        Err(Refused::No)
    );
    assert!(
        store
            .delete_hub_device("h", "Dev-1", |_| Ok::<_, Refused>(()))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .delete_hub_device("h", "Dev-1", |_| Ok::<_, Refused>(()))
            .await
            .unwrap()
            .is_none()
    );

    let p = Policy {
        name: "iothubowner".into(),
        primary_key: key(1),
        secondary_key: key(2),
        rights: vec![Right::RegistryRead],
    };
    store
        .ensure_hub_policies("h", vec![p.clone()])
        .await
        .unwrap();
    store
        .ensure_hub_policies(
            "h",
            vec![Policy {
                primary_key: key(9),
                ..p.clone()
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        store.hub_policy("h", "iothubowner").await.unwrap(),
        Some(p),
        "existing policies are kept"
    );
    assert_eq!(
        store.hub_policy("other", "iothubowner").await.unwrap(),
        None
    );
}

async fn policies_add_rotate_delete(backend: Backend) {
    let (_db, store) = open(backend).await;
    let p = Policy {
        name: "reader".into(),
        primary_key: key(1),
        secondary_key: key(2),
        rights: vec![Right::EnrollmentRead],
    };
    assert!(store.add_policy(p.clone()).await.unwrap());
    assert!(!store.add_policy(p.clone()).await.unwrap());
    let rotated = store
        .set_policy_keys("reader", key(7), key(8))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rotated.primary_key, rotated.secondary_key),
        (key(7), key(8))
    );
    assert_eq!(
        store
            .set_policy_keys("nobody", key(7), key(8))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.policies().await.unwrap().len(), 1);
    assert!(store.delete_policy("reader").await.unwrap());
    assert!(!store.delete_policy("reader").await.unwrap());
}

async fn hubs_are_unique_by_name_and_hostname(backend: Backend) {
    let (_db, store) = open(backend).await;
    let hub = Hub {
        name: "a".into(),
        hostname: "A.example".into(),
        weight: 1,
        apply_allocation_policy: true,
        builtin: true,
        created: at(1),
        location: None,
    };
    assert!(store.add_hub(hub.clone()).await.unwrap());
    assert!(!store.add_hub(hub.clone()).await.unwrap());
    assert!(
        !store
            .add_hub(Hub {
                name: "b".into(),
                hostname: "a.EXAMPLE".into(),
                ..hub.clone()
            })
            .await
            .unwrap()
    );
    assert!(
        store
            .add_hub(Hub {
                name: "b".into(),
                hostname: "b.example".into(),
                ..hub
            })
            .await
            .unwrap()
    );
}

/// A distinct 32-byte key per `n`.
fn key(n: u8) -> SymmetricKey {
    SymmetricKey::from_bytes(vec![n; 32]).unwrap()
}

/// A distinct time per `n`.
fn at(n: i64) -> Time {
    from_ticks(17_000_000_000_000_000 + n * 10_000_000)
}

fn registration(id: &str, group: Option<&str>, updated: Time) -> Registration {
    Registration {
        registration_id: id.into(),
        enrollment_group_id: group.map(Into::into),
        status: usher_proto::model::RegistrationStatus::Assigned,
        substatus: None,
        assigned_hub: Some("h.example".into()),
        device_id: Some(id.into()),
        error_code: None,
        error_message: None,
        created: updated,
        updated,
        etag: "e".into(),
        operation_id: "op".into(),
        payload: None,
        initial_hub: Some("h.example".into()),
        x509: None,
        issued_chain: None,
    }
}

async fn counts_registration_pages_and_recent_records(backend: Backend) {
    let (_db, store) = open(backend).await;
    store.add_hub(builtin("h", "h.example")).await.unwrap();
    store.add_hub(builtin("empty", "e.example")).await.unwrap();
    store
        .upsert_doc(Collection::Enrollments, "e1", |_| {
            Ok::<_, Refused>(doc("e1", "x"))
        })
        .await
        .unwrap();
    store
        .upsert_doc(Collection::EnrollmentGroups, "g1", |_| {
            Ok::<_, Refused>(doc("g1", "x"))
        })
        .await
        .unwrap();
    for (id, updated) in [("r1", at(1)), ("r2", at(3)), ("r3", at(2))] {
        record(
            &store,
            Assignment {
                registration: Some(registration(id, Some("g1"), updated)),
                device: Some(keep(hub_device("h", id))),
                remove_device: None,
                audit: Vec::new(),
            },
        )
        .await
        .unwrap();
    }
    let counts = store.counts().await.unwrap();
    assert_eq!(
        counts,
        Counts {
            enrollments: 1,
            enrollment_groups: 1,
            registrations: 3,
            hub_devices: vec![("h".into(), 3), ("empty".into(), 0)],
        }
    );

    // Pages in storage order, resumable from a position; an update keeps a record's place.
    let first = store.registrations(0, 2).await.unwrap();
    let ids: Vec<&str> = first
        .iter()
        .map(|(_, r)| r.registration_id.as_str())
        .collect();
    assert_eq!(ids, ["r1", "r2"]);
    record(
        &store,
        Assignment {
            registration: Some(registration("r1", None, at(9))),
            device: None,
            remove_device: None,
            audit: Vec::new(),
        },
    )
    .await
    .unwrap();
    let rest = store.registrations(first[1].0, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1.registration_id, "r3");

    // Newest first, by last update.
    let recent = store.recent_registrations(2).await.unwrap();
    let ids: Vec<&str> = recent.iter().map(|r| r.registration_id.as_str()).collect();
    assert_eq!(ids, ["r1", "r2"]);
}

/// The same KEK every time, so a test can reopen a database.
fn test_kek() -> crate::secrets::Kek {
    crate::secrets::Kek::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "test")
        .unwrap()
}

#[tokio::test]
async fn plaintext_keys_from_before_encryption_are_sealed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usher.db");
    {
        // A database as Usher wrote it before keys were sealed (schema version 2).
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(include_str!("migrations/sqlite/0001_initial.sql"))
            .unwrap();
        c.execute_batch(include_str!("migrations/sqlite/0002_hub_registry.sql"))
            .unwrap();
        c.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version VALUES (1), (2);
             INSERT INTO policies VALUES ('owner', 'cGxhaW4tcHJpbWFyeS1rZXktMA==', 'cGxhaW4tc2Vjb25kYXJ5LWtleS0w', 'ServiceConfig');
             INSERT INTO enrollments VALUES ('dev', 'dev',
               '{\"registrationId\":\"dev\",\"createdDateTimeUtc\":\"2026-01-02T03:04:05.123Z\",\"attestation\":{\"type\":\"symmetricKey\",\"symmetricKey\":{\"primaryKey\":\"ZG9jLXByaW1hcnkta2V5LTAwMA==\",\"secondaryKey\":\"ZG9jLXNlY29uZGFyeS1rZXktMDA=\"}}}', 'e1');
             INSERT INTO registrations VALUES ('dev', 'dev', NULL, NULL, 'assigned', 'initialAssignment',
               'h.example', 'dev', NULL, NULL, '2026-01-02T03:04:05.1234567Z',
               '2026-01-02T03:04:06.5Z', 'r1', 'op1', NULL);",
        )
        .unwrap();
    }
    let store = Store::open_sqlite(&path, &test_kek()).unwrap();
    let policy = store.policy("owner").await.unwrap().unwrap();
    assert_eq!(
        policy.primary_key.to_base64(),
        "cGxhaW4tcHJpbWFyeS1rZXktMA=="
    );
    let doc = store
        .doc(Collection::Enrollments, "dev")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        doc.json["attestation"]["symmetricKey"]["secondaryKey"],
        "ZG9jLXNlY29uZGFyeS1rZXktMDA="
    );
    // Text times became 100-ns ticks, short fractions padded.
    let reg = store.registration("dev").await.unwrap().unwrap();
    assert_eq!(
        usher_proto::model::format_timestamp(reg.created),
        "2026-01-02T03:04:05.1234567Z"
    );
    assert_eq!(
        usher_proto::model::format_timestamp(reg.updated),
        "2026-01-02T03:04:06.5000000Z"
    );
    assert_eq!(reg.status, usher_proto::model::RegistrationStatus::Assigned);
    drop(store);
    let c = rusqlite::Connection::open(&path).unwrap();
    let created: i64 = c
        .query_row("SELECT created FROM enrollments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        usher_proto::model::format_timestamp(from_ticks(created)),
        "2026-01-02T03:04:05.1230000Z"
    );
    let (primary, enrollment): (String, String) = c
        .query_row(
            "SELECT p.primary_key, e.doc FROM policies p, enrollments e",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(primary.starts_with("sealed:v1:"), "{primary}");
    assert!(
        !enrollment.contains("ZG9jLXByaW1hcnkta2V5LTAwMA=="),
        "{enrollment}"
    );
    // A KEK other than the one the data key is wrapped with opens nothing.
    let other = crate::secrets::Kek::generate("other").unwrap();
    assert!(matches!(
        Store::open_sqlite(&path, &other).err(),
        Some(StoreError::Secret(
            crate::secrets::SecretError::WrongKek { .. }
        ))
    ));
}

async fn the_audit_chain_survives_pruning_from_its_anchor(backend: Backend) {
    use usher_proto::audit::{GENESIS, Record, verify};
    let (_db, store) = open(backend).await;
    let record = |at: &str, target: &str| Record {
        at: at.into(),
        actor: "policy:owner".into(),
        address: String::new(),
        action: "enrollment.put".into(),
        target: target.into(),
        result: "ok".into(),
    };
    store
        .append_audit(vec![
            record("2026-01-01T00:00:00.0000000Z", "a"),
            record("2026-01-02T00:00:00.0000000Z", "b"),
        ])
        .await
        .unwrap();
    // Concurrent appends each find their own place in the one chain.
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_audit(vec![record(
                    "2026-03-01T00:00:00.0000000Z",
                    &format!("c{n}"),
                )])
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let all = store.audit_entries(0, 100).await.unwrap();
    assert_eq!(all.len(), 22);
    assert_eq!(store.audit_anchor().await.unwrap(), (0, GENESIS.to_owned()));
    assert_eq!(verify(0, GENESIS, &all), Ok(22));

    let removed = store
        .prune_audit("2026-02-01T00:00:00.0000000Z".into())
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let (anchor_seq, anchor_hash) = store.audit_anchor().await.unwrap();
    assert_eq!(
        (anchor_seq, anchor_hash.as_str()),
        (2, all[1].hash.as_str())
    );
    let rest = store.audit_entries(0, 100).await.unwrap();
    assert_eq!(verify(anchor_seq, &anchor_hash, &rest), Ok(20));
    // New entries chain on after pruning.
    store
        .append_audit(vec![record("2026-04-01T00:00:00.0000000Z", "d")])
        .await
        .unwrap();
    let rest = store.audit_entries(0, 100).await.unwrap();
    assert_eq!(rest.last().unwrap().seq, 23);
    assert_eq!(verify(anchor_seq, &anchor_hash, &rest), Ok(21));
}

async fn hub_devices_and_group_records_page_by_keyset(backend: Backend) {
    let (_db, store) = open(backend).await;
    store.add_hub(builtin("h", "h.example")).await.unwrap();
    store.add_hub(builtin("other", "o.example")).await.unwrap();
    for i in 0..7 {
        let id = format!("d{i}");
        let group = if i % 2 == 0 { Some("G1") } else { Some("g2") };
        record(
            &store,
            Assignment {
                registration: Some(registration(&id, group, at(i))),
                device: Some(keep(HubDevice {
                    status: if i < 5 { "enabled" } else { "disabled" }.into(),
                    ..hub_device(if i == 6 { "other" } else { "h" }, &id)
                })),
                ..Assignment::default()
            },
        )
        .await
        .unwrap();
    }
    // Pages of 2 from the start: every device of `h` once, in storage order, none of `other`.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.hub_devices("h", after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some((last, _)) = page.last() else { break };
        after = *last;
        seen.extend(page.into_iter().map(|(_, d)| d.device_id));
    }
    assert_eq!(seen, ["d0", "d1", "d2", "d3", "d4", "d5"]);
    // A deleted device leaves the cursors of the others valid.
    let first = store.hub_devices("h", 0, 2).await.unwrap();
    store
        .delete_hub_device("h", "d2", |_| Ok::<_, Refused>(()))
        .await
        .unwrap();
    let rest: Vec<String> = store
        .hub_devices("h", first[1].0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, d)| d.device_id)
        .collect();
    assert_eq!(rest, ["d3", "d4", "d5"]);
    assert_eq!(store.hub_device_counts("h").await.unwrap(), (5, 4));
    assert_eq!(store.hub_device_counts("other").await.unwrap(), (1, 0));
    assert_eq!(store.hub_device_counts("none").await.unwrap(), (0, 0));

    // A group's records (group IDs are case-insensitive), by keyset.
    let g1 = store.registrations_of_group("g1", 0, 2).await.unwrap();
    let ids: Vec<&str> = g1.iter().map(|(_, r)| r.registration_id.as_str()).collect();
    assert_eq!(ids, ["d0", "d2"]);
    let more = store
        .registrations_of_group("G1", g1[1].0, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = more
        .iter()
        .map(|(_, r)| r.registration_id.as_str())
        .collect();
    assert_eq!(ids, ["d4", "d6"]);
}

async fn many_documents_in_one_write_each_deciding_alone(backend: Backend) {
    let (_db, store) = open(backend).await;
    let generation = store.groups_generation();
    let create = |id: &str| -> (String, Decide<Refused>) {
        let id = id.to_owned();
        (
            id.clone(),
            Box::new(move |cur: Option<Doc>| match cur {
                Some(_) => Err(Refused::No),
                None => Ok(doc(&id, "e1")),
            }),
        )
    };
    // The second "A" sees the first, written earlier in the same call, and refuses.
    let outcomes = store
        .upsert_docs(
            Collection::EnrollmentGroups,
            vec![create("A"), create("b"), create("a"), create("c")],
        )
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Ok(()), Ok(()), Err(Refused::No), Ok(())]);
    let stored = store
        .docs(Collection::EnrollmentGroups, 0, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = stored.iter().map(|(_, d)| d.id.as_str()).collect();
    assert_eq!(ids, ["A", "b", "c"]);
    assert_ne!(
        store.groups_generation(),
        generation,
        "group caches see the write"
    );
}

async fn a_data_key_opens_only_with_its_kek(backend: Backend) {
    let db = Db::new(backend).await;
    {
        let store = db.open().await;
        assert!(
            store
                .add_policy(Policy {
                    name: "p".into(),
                    primary_key: key(7),
                    secondary_key: key(8),
                    rights: vec![Right::EnrollmentRead],
                })
                .await
                .unwrap()
        );
    }
    let other = crate::secrets::Kek::generate("other").unwrap();
    assert!(matches!(
        db.open_with(&other).await.err(),
        Some(StoreError::Secret(
            crate::secrets::SecretError::WrongKek { .. }
        ))
    ));
    let store = db.open().await;
    assert_eq!(
        store.policy("p").await.unwrap().unwrap().primary_key,
        key(7)
    );
}

/// An instance with a little of everything: policies, a built-in hub with policies and devices,
/// enrollments (one deleted, leaving a gap), a group, registration records, a pruned audit log.
async fn populate(store: &Store) {
    store
        .bootstrap(Bootstrap {
            instance: Instance {
                id_scope: "0ne00000042".into(),
                service_host: "dps.example".into(),
                created: at(1),
            },
            policies: vec![Policy {
                name: "owner".into(),
                primary_key: key(1),
                secondary_key: key(2),
                rights: Right::ALL.to_vec(),
            }],
            hubs: vec![builtin("h", "h.example")],
        })
        .await
        .unwrap();
    store
        .ensure_hub_policies(
            "h",
            vec![Policy {
                name: "iothubowner".into(),
                primary_key: key(3),
                secondary_key: key(4),
                rights: Right::HUB.to_vec(),
            }],
        )
        .await
        .unwrap();
    let settings = AllocationSettings {
        default_policy: usher_proto::service::AllocationPolicy::GeoLatency,
        ..AllocationSettings::default()
    };
    store.set_allocation_settings(settings).await.unwrap();
    for i in 0..30 {
        let id = format!("Dev-{i}");
        let mut d = doc(&id, &format!("e{i}"));
        d.json["attestation"] = json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": key(5).to_base64(), "secondaryKey": key(6).to_base64()}});
        store
            .upsert_doc(Collection::Enrollments, &id, move |_| Ok::<_, Refused>(d))
            .await
            .unwrap();
        record(
            &store.clone(),
            Assignment {
                registration: Some(registration(&id, None, at(i))),
                device: Some(keep(hub_device("h", &id))),
                ..Assignment::default()
            },
        )
        .await
        .unwrap();
    }
    store
        .delete_doc(Collection::Enrollments, "dev-3", |_| Ok::<_, Refused>(()))
        .await
        .unwrap();
    store
        .upsert_doc(Collection::EnrollmentGroups, "G1", |_| {
            Ok::<_, Refused>(doc("G1", "g"))
        })
        .await
        .unwrap();
    for (name, verified, code) in [("Line-Root", true, None), ("spare", false, Some("C0DE"))] {
        let ca = CaCertificate {
            name: name.into(),
            certificate: format!(
                "-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n"
            ),
            verified,
            verification_code: code.map(str::to_owned),
            created: at(1),
            updated: at(2),
            etag: format!("ca-{name}"),
        };
        store
            .put_ca_certificate::<StoreError>(name, move |_| Ok(ca))
            .await
            .unwrap();
    }
    let entry = |at: &str, target: &str| usher_proto::audit::Record {
        at: at.into(),
        actor: "policy:owner".into(),
        address: "127.0.0.1".into(),
        action: "enrollment.put".into(),
        target: target.into(),
        result: "ok".into(),
    };
    store
        .append_audit(vec![
            entry("2026-01-01T00:00:00.0000000Z", "a"),
            entry("2026-03-01T00:00:00.0000000Z", "b"),
            entry("2026-04-01T00:00:00.0000000Z", "c"),
        ])
        .await
        .unwrap();
    store
        .prune_audit("2026-02-01T00:00:00.0000000Z".into())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_copy_to_postgres_and_back_exports_the_same() {
    let (_a, sqlite) = open(Backend::Sqlite).await;
    populate(&sqlite).await;
    let original = copy::export(&sqlite).await.unwrap();
    assert!(original.len() > 60, "{}", original.len());
    let (_b, postgres) = open(Backend::Postgres).await;
    let mut seen = Vec::new();
    let copied = copy::copy(&sqlite, &postgres, &mut |what, done, _| {
        seen.push((what.to_owned(), done));
    })
    .await
    .unwrap();
    assert_eq!(
        (
            copied.enrollments,
            copied.registrations,
            copied.hub_devices,
            copied.ca_certificates
        ),
        (29, 30, 30, 2)
    );
    assert!(
        original
            .iter()
            .any(|l| l.contains("\"caCertificate\"") && l.contains("C0DE")),
        "{original:?}"
    );
    assert!(
        seen.contains(&("registration records".to_owned(), 30)),
        "{seen:?}"
    );
    assert_eq!(copy::export(&postgres).await.unwrap(), original);
    // A copy goes only into an empty store.
    assert!(matches!(
        copy::copy(&sqlite, &postgres, &mut |_, _, _| {}).await,
        Err(copy::CopyError::TargetNotEmpty(_))
    ));
    let (_c, back) = open(Backend::Sqlite).await;
    copy::copy(&postgres, &back, &mut |_, _, _| {})
        .await
        .unwrap();
    let round_trip = copy::export(&back).await.unwrap();
    assert_eq!(copy::digest(&round_trip), copy::digest(&original));
    // The copied audit chain still verifies from its anchor.
    let (seq, hash) = back.audit_anchor().await.unwrap();
    assert_eq!(seq, 1);
    let entries = back.audit_entries(0, 10).await.unwrap();
    assert_eq!(usher_proto::audit::verify(seq, &hash, &entries), Ok(2));
}

async fn bulk_inserts_keep_existing_documents(backend: Backend) {
    let (_db, store) = open(backend).await;
    store
        .upsert_doc(Collection::Enrollments, "old", |_| {
            Ok::<_, Refused>(doc("old", "e0"))
        })
        .await
        .unwrap();
    let inserted = store
        .insert_docs(
            Collection::Enrollments,
            vec![
                doc("new-1", "e1"),
                doc("OLD", "e2"),
                doc("new-2", "e3"),
                doc("New-1", "e4"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(inserted, vec![true, false, true, false]);
    let old = store
        .doc(Collection::Enrollments, "old")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (old.id.as_str(), old.etag.as_str()),
        ("old", "e0"),
        "left as it was"
    );
    let new = store
        .doc(Collection::Enrollments, "new-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.etag, "e1");
}

async fn ca_certificates_read_modify_write_case_insensitively_and_survive_reopen(backend: Backend) {
    let (db, store) = open(backend).await;
    let ca = |name: &str, etag: &str, verified: bool, code: Option<&str>| CaCertificate {
        name: name.into(),
        certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        verified,
        verification_code: code.map(str::to_owned),
        created: from_ticks(17_000_000_000_000_000),
        updated: from_ticks(17_000_000_000_000_123),
        etag: etag.into(),
    };
    assert_eq!(store.ca_certificate("root").await.unwrap(), None);
    let first = ca("Root-A", "e1", false, Some("C0DE"));
    let stored = store
        .put_ca_certificate::<StoreError>("Root-A", {
            let first = first.clone();
            move |current| {
                assert_eq!(current, None);
                Ok(first)
            }
        })
        .await
        .unwrap();
    assert_eq!(stored, first);
    // Names are looked up case-insensitively; the stored spelling is kept.
    assert_eq!(
        store.ca_certificate("root-a").await.unwrap(),
        Some(first.clone())
    );

    // A refusal writes nothing.
    let refused = store
        .put_ca_certificate("ROOT-A", |_| Err::<CaCertificate, _>(Refused::No))
        .await;
    assert_eq!(refused, Err(Refused::No));
    assert_eq!(
        store.ca_certificate("Root-A").await.unwrap(),
        Some(first.clone())
    );

    // The decision sees what is stored, and replaces it.
    let verified = ca("Root-A", "e2", true, None);
    store
        .put_ca_certificate::<StoreError>("root-A", {
            let verified = verified.clone();
            let first = first.clone();
            move |current| {
                assert_eq!(current, Some(first));
                Ok(verified)
            }
        })
        .await
        .unwrap();
    let second = ca("Other", "e3", false, None);
    store
        .put_ca_certificate::<StoreError>("Other", {
            let second = second.clone();
            move |_| Ok(second)
        })
        .await
        .unwrap();
    assert_eq!(
        store.ca_certificates().await.unwrap(),
        vec![second.clone(), verified.clone()]
    );

    // It survives reopening; a delete that `allow` refuses keeps it, one it allows removes it.
    drop(store);
    let store = db.open().await;
    assert_eq!(
        store.ca_certificate("ROOT-A").await.unwrap(),
        Some(verified.clone())
    );
    let kept = store
        .delete_ca_certificate("root-a", |_| Err(Refused::No))
        .await;
    assert_eq!(kept, Err(Refused::No));
    let gone = store
        .delete_ca_certificate::<StoreError>("root-a", |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(gone, Some(verified));
    assert_eq!(
        store
            .delete_ca_certificate::<StoreError>("root-a", |_| Ok(()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.ca_certificates().await.unwrap(), vec![second]);
}
