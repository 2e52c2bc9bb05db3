-- The PostgreSQL schema: the same rows as the SQLite schema after its migration 6 (typed rows).
-- Times are 100-ns ticks since the Unix epoch; policy rights a bit set (ServiceConfig 1,
-- EnrollmentRead 2, EnrollmentWrite 4, DeviceConnect 8, RegistrationStatusRead 16,
-- RegistrationStatusWrite 32, RegistryRead 64, RegistryWrite 128, ServiceConnect 256); secret
-- columns hold values sealed with the data key, which `keyring` holds wrapped by the KEK (which
-- never enters the database). `seq` columns are the positions query continuations follow.
CREATE TABLE instance (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  id_scope TEXT NOT NULL,
  service_host TEXT NOT NULL,
  created BIGINT NOT NULL,
  allocation_policy TEXT NOT NULL DEFAULT 'hashed'
    CHECK (allocation_policy IN ('hashed', 'geoLatency', 'static')),
  geo_map TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE keyring (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  kek_id TEXT NOT NULL,
  wrapped_dek TEXT NOT NULL
);
CREATE TABLE policies (
  name TEXT PRIMARY KEY,
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  rights BIGINT NOT NULL CHECK (rights BETWEEN 0 AND 511)
);
CREATE TABLE hubs (
  name TEXT PRIMARY KEY,
  hostname TEXT NOT NULL,
  weight BIGINT NOT NULL CHECK (weight BETWEEN 1 AND 1000),
  apply_allocation_policy BOOLEAN NOT NULL,
  builtin BOOLEAN NOT NULL,
  created BIGINT NOT NULL,
  location TEXT,
  seq BIGINT NOT NULL UNIQUE
);
CREATE UNIQUE INDEX hubs_by_hostname ON hubs (lower(hostname));
CREATE TABLE hub_policies (
  hub TEXT NOT NULL REFERENCES hubs (name),
  name TEXT NOT NULL,
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  rights BIGINT NOT NULL CHECK (rights BETWEEN 0 AND 511),
  PRIMARY KEY (hub, name)
);
CREATE TABLE hub_devices (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  hub TEXT NOT NULL REFERENCES hubs (name),
  device_id TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  etag TEXT NOT NULL,
  generation_id TEXT NOT NULL,
  doc TEXT NOT NULL,
  twin TEXT NOT NULL,
  twin_version BIGINT NOT NULL,
  UNIQUE (hub, device_id)
);
CREATE INDEX hub_devices_by_hub ON hub_devices (hub, seq);
CREATE TABLE enrollments (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  key TEXT NOT NULL UNIQUE,
  id TEXT NOT NULL,
  attestation TEXT NOT NULL CHECK (attestation IN ('none', 'tpm', 'x509', 'symmetricKey')),
  primary_key TEXT,
  secondary_key TEXT,
  provisioning_status TEXT NOT NULL CHECK (provisioning_status IN ('enabled', 'disabled')),
  allocation_policy TEXT CHECK (allocation_policy IN ('hashed', 'geoLatency', 'static', 'custom')),
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  doc TEXT NOT NULL,
  etag TEXT NOT NULL
);
CREATE TABLE enrollment_groups (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  key TEXT NOT NULL UNIQUE,
  id TEXT NOT NULL,
  attestation TEXT NOT NULL CHECK (attestation IN ('none', 'tpm', 'x509', 'symmetricKey')),
  primary_key TEXT,
  secondary_key TEXT,
  provisioning_status TEXT NOT NULL CHECK (provisioning_status IN ('enabled', 'disabled')),
  allocation_policy TEXT CHECK (allocation_policy IN ('hashed', 'geoLatency', 'static', 'custom')),
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  doc TEXT NOT NULL,
  etag TEXT NOT NULL
);
CREATE TABLE registrations (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  key TEXT NOT NULL UNIQUE,
  registration_id TEXT NOT NULL,
  enrollment_group_id TEXT,
  enrollment_group_key TEXT,
  status TEXT NOT NULL CHECK (status IN ('unassigned', 'assigning', 'assigned', 'failed', 'disabled')),
  substatus TEXT CHECK (substatus IN ('initialAssignment', 'deviceDataMigrated', 'deviceDataReset',
                                      'reprovisionedToInitialAssignment')),
  assigned_hub TEXT,
  device_id TEXT,
  error_code BIGINT CHECK (error_code BETWEEN 100000 AND 599999),
  error_message TEXT,
  created BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  etag TEXT NOT NULL,
  operation_id TEXT NOT NULL,
  payload TEXT,
  initial_hub TEXT
);
CREATE INDEX registrations_by_group ON registrations (enrollment_group_key, seq);
CREATE INDEX registrations_by_update ON registrations (updated);
-- The audit log: append-only, each entry chained to the one before by its hash
-- (usher_proto::audit). `audit_anchor` holds the last pruned entry, where the chain now starts.
CREATE TABLE audit_log (
  seq BIGINT PRIMARY KEY,
  at TEXT NOT NULL,
  actor TEXT NOT NULL,
  address TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  result TEXT NOT NULL,
  prev TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at);
CREATE TABLE audit_anchor (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq BIGINT NOT NULL,
  hash TEXT NOT NULL
);
-- What every node of the instance must share besides the rows above, sealed: the development CA
-- (certificate and key), so every node's server certificate chains to the one CA devices trust, and
-- the secret TLS session tickets are made from, so a device resumes its session on any node.
CREATE TABLE instance_files (
  name TEXT PRIMARY KEY,
  content TEXT NOT NULL
);
