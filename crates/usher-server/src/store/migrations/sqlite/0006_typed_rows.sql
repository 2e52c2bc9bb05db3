-- Typed rows: statuses and substatuses constrained to their enums, times as 100-ns ticks since the
-- Unix epoch (DPS's 7 fractional digits), policy rights as a bit set, an explicit sequence column
-- that query continuations follow, and enrollment keys in sealed columns of their own beside the
-- JSON document (which keeps every other field a client sent, to round-trip it).
-- A text time 'YYYY-MM-DDTHH:MM:SS.fffffffZ' becomes ticks (fewer fractional digits are padded; a
-- missing time becomes 0, the epoch):
--   strftime('%s', substr(t, 1, 19)) * 10000000 + substr(rtrim(substr(t, 21), 'Z') || '0000000', 1, 7)

CREATE TABLE instance_new (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  id_scope TEXT NOT NULL,
  service_host TEXT NOT NULL,
  created INTEGER NOT NULL,
  allocation_policy TEXT NOT NULL DEFAULT 'hashed'
    CHECK (allocation_policy IN ('hashed', 'geoLatency', 'static')),
  geo_map TEXT NOT NULL DEFAULT '[]'
);
INSERT INTO instance_new SELECT id, id_scope, service_host,
  coalesce(CAST(strftime('%s', substr(created, 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(created, 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
  allocation_policy, geo_map FROM instance;
DROP TABLE instance;
ALTER TABLE instance_new RENAME TO instance;

-- Rights: ServiceConfig 1, EnrollmentRead 2, EnrollmentWrite 4, DeviceConnect 8,
-- RegistrationStatusRead 16, RegistrationStatusWrite 32, RegistryRead 64, RegistryWrite 128,
-- ServiceConnect 256.
CREATE TABLE policies_new (
  name TEXT PRIMARY KEY,
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  rights INTEGER NOT NULL CHECK (rights BETWEEN 0 AND 511)
);
CREATE TABLE hub_policies_new (
  hub TEXT NOT NULL REFERENCES hubs (name),
  name TEXT NOT NULL,
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  rights INTEGER NOT NULL CHECK (rights BETWEEN 0 AND 511),
  PRIMARY KEY (hub, name)
);
INSERT INTO policies_new SELECT name, primary_key, secondary_key,
    (CASE WHEN instr(',' || rights || ',', ',ServiceConfig,') > 0 THEN 1 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',EnrollmentRead,') > 0 THEN 2 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',EnrollmentWrite,') > 0 THEN 4 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',DeviceConnect,') > 0 THEN 8 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',RegistrationStatusRead,') > 0 THEN 16 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',RegistrationStatusWrite,') > 0 THEN 32 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',RegistryRead,') > 0 THEN 64 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',RegistryWrite,') > 0 THEN 128 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',ServiceConnect,') > 0 THEN 256 ELSE 0 END)
  FROM policies;
INSERT INTO hub_policies_new SELECT hub, name, primary_key, secondary_key,
    (CASE WHEN instr(',' || rights || ',', ',ServiceConfig,') > 0 THEN 1 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',EnrollmentRead,') > 0 THEN 2 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',EnrollmentWrite,') > 0 THEN 4 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',DeviceConnect,') > 0 THEN 8 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',RegistrationStatusRead,') > 0 THEN 16 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',RegistrationStatusWrite,') > 0 THEN 32 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',RegistryRead,') > 0 THEN 64 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',RegistryWrite,') > 0 THEN 128 ELSE 0 END)
  | (CASE WHEN instr(',' || rights || ',', ',ServiceConnect,') > 0 THEN 256 ELSE 0 END)
  FROM hub_policies;
DROP TABLE policies;
ALTER TABLE policies_new RENAME TO policies;

CREATE TABLE hubs_new (
  name TEXT PRIMARY KEY,
  hostname TEXT NOT NULL UNIQUE COLLATE NOCASE,
  weight INTEGER NOT NULL CHECK (weight BETWEEN 1 AND 1000),
  apply_allocation_policy INTEGER NOT NULL CHECK (apply_allocation_policy IN (0, 1)),
  builtin INTEGER NOT NULL CHECK (builtin IN (0, 1)),
  created INTEGER NOT NULL,
  location TEXT,
  seq INTEGER NOT NULL UNIQUE
);
INSERT INTO hubs_new SELECT name, hostname, weight, apply_allocation_policy, builtin,
  coalesce(CAST(strftime('%s', substr(created, 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(created, 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
  location, rowid FROM hubs;

CREATE TABLE hub_devices_new (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  hub TEXT NOT NULL REFERENCES hubs (name),
  device_id TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  etag TEXT NOT NULL,
  generation_id TEXT NOT NULL,
  doc TEXT NOT NULL,
  twin TEXT NOT NULL,
  twin_version INTEGER NOT NULL,
  UNIQUE (hub, device_id)
);
INSERT INTO hub_devices_new (hub, device_id, status, primary_key, secondary_key, created, updated,
    etag, generation_id, doc, twin, twin_version)
  SELECT hub, device_id, status, primary_key, secondary_key,
    coalesce(CAST(strftime('%s', substr(created, 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(created, 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
    coalesce(CAST(strftime('%s', substr(updated, 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(updated, 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
    etag, generation_id, doc, twin, twin_version
  FROM hub_devices ORDER BY rowid;
DROP TABLE hub_devices;
DROP TABLE hub_policies;
DROP TABLE hubs;
ALTER TABLE hubs_new RENAME TO hubs;
ALTER TABLE hub_devices_new RENAME TO hub_devices;
ALTER TABLE hub_policies_new RENAME TO hub_policies;

-- Enrollments and groups: the typed fields in columns, the keys sealed in columns of their own,
-- the rest of the document as the client sent it.
CREATE TABLE enrollments_new (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  id TEXT NOT NULL,
  attestation TEXT NOT NULL CHECK (attestation IN ('none', 'tpm', 'x509', 'symmetricKey')),
  primary_key TEXT,
  secondary_key TEXT,
  provisioning_status TEXT NOT NULL CHECK (provisioning_status IN ('enabled', 'disabled')),
  allocation_policy TEXT CHECK (allocation_policy IN ('hashed', 'geoLatency', 'static', 'custom')),
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  doc TEXT NOT NULL,
  etag TEXT NOT NULL
);
CREATE TABLE enrollment_groups_new (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  id TEXT NOT NULL,
  attestation TEXT NOT NULL CHECK (attestation IN ('none', 'tpm', 'x509', 'symmetricKey')),
  primary_key TEXT,
  secondary_key TEXT,
  provisioning_status TEXT NOT NULL CHECK (provisioning_status IN ('enabled', 'disabled')),
  allocation_policy TEXT CHECK (allocation_policy IN ('hashed', 'geoLatency', 'static', 'custom')),
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  doc TEXT NOT NULL,
  etag TEXT NOT NULL
);
INSERT INTO enrollments_new (key, id, attestation, primary_key, secondary_key, provisioning_status,
    allocation_policy, created, updated, doc, etag)
  SELECT key, id,
    CASE lower(json_extract(doc, '$.attestation.type')) WHEN 'symmetrickey' THEN 'symmetricKey'
      ELSE lower(json_extract(doc, '$.attestation.type')) END,
    json_extract(doc, '$.attestation.symmetricKey.primaryKey'),
    json_extract(doc, '$.attestation.symmetricKey.secondaryKey'),
    lower(coalesce(json_extract(doc, '$.provisioningStatus'), 'enabled')),
    CASE lower(json_extract(doc, '$.allocationPolicy')) WHEN 'geolatency' THEN 'geoLatency'
      ELSE lower(json_extract(doc, '$.allocationPolicy')) END,
    coalesce(CAST(strftime('%s', substr(json_extract(doc, '$.createdDateTimeUtc'), 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(json_extract(doc, '$.createdDateTimeUtc'), 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
    coalesce(CAST(strftime('%s', substr(json_extract(doc, '$.lastUpdatedDateTimeUtc'), 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(json_extract(doc, '$.lastUpdatedDateTimeUtc'), 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
    json_remove(doc, '$.attestation.symmetricKey'), etag
  FROM enrollments ORDER BY rowid;
INSERT INTO enrollment_groups_new (key, id, attestation, primary_key, secondary_key,
    provisioning_status, allocation_policy, created, updated, doc, etag)
  SELECT key, id,
    CASE lower(json_extract(doc, '$.attestation.type')) WHEN 'symmetrickey' THEN 'symmetricKey'
      ELSE lower(json_extract(doc, '$.attestation.type')) END,
    json_extract(doc, '$.attestation.symmetricKey.primaryKey'),
    json_extract(doc, '$.attestation.symmetricKey.secondaryKey'),
    lower(coalesce(json_extract(doc, '$.provisioningStatus'), 'enabled')),
    CASE lower(json_extract(doc, '$.allocationPolicy')) WHEN 'geolatency' THEN 'geoLatency'
      ELSE lower(json_extract(doc, '$.allocationPolicy')) END,
    coalesce(CAST(strftime('%s', substr(json_extract(doc, '$.createdDateTimeUtc'), 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(json_extract(doc, '$.createdDateTimeUtc'), 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
    coalesce(CAST(strftime('%s', substr(json_extract(doc, '$.lastUpdatedDateTimeUtc'), 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(json_extract(doc, '$.lastUpdatedDateTimeUtc'), 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
    json_remove(doc, '$.attestation.symmetricKey'), etag
  FROM enrollment_groups ORDER BY rowid;
DROP TABLE enrollments;
DROP TABLE enrollment_groups;
ALTER TABLE enrollments_new RENAME TO enrollments;
ALTER TABLE enrollment_groups_new RENAME TO enrollment_groups;

CREATE TABLE registrations_new (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  registration_id TEXT NOT NULL,
  enrollment_group_id TEXT,
  enrollment_group_key TEXT,
  status TEXT NOT NULL CHECK (status IN ('unassigned', 'assigning', 'assigned', 'failed', 'disabled')),
  substatus TEXT CHECK (substatus IN ('initialAssignment', 'deviceDataMigrated', 'deviceDataReset',
                                      'reprovisionedToInitialAssignment')),
  assigned_hub TEXT,
  device_id TEXT,
  error_code INTEGER CHECK (error_code BETWEEN 100000 AND 599999),
  error_message TEXT,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  etag TEXT NOT NULL,
  operation_id TEXT NOT NULL,
  payload TEXT,
  initial_hub TEXT
);
INSERT INTO registrations_new (key, registration_id, enrollment_group_id, enrollment_group_key,
    status, substatus, assigned_hub, device_id, error_code, error_message, created, updated, etag,
    operation_id, payload, initial_hub)
  SELECT key, registration_id, enrollment_group_id, enrollment_group_key, status, substatus,
    assigned_hub, device_id, error_code, error_message,
    coalesce(CAST(strftime('%s', substr(created, 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(created, 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
    coalesce(CAST(strftime('%s', substr(updated, 1, 19)) AS INTEGER) * 10000000
      + CAST(substr(rtrim(substr(updated, 21), 'Z') || '0000000', 1, 7) AS INTEGER), 0),
    etag, operation_id, payload, initial_hub
  FROM registrations ORDER BY rowid;
DROP TABLE registrations;
ALTER TABLE registrations_new RENAME TO registrations;
CREATE INDEX registrations_by_group ON registrations (enrollment_group_key, seq);
CREATE INDEX registrations_by_update ON registrations (updated);
CREATE INDEX hub_devices_by_hub ON hub_devices (hub, seq);
