CREATE TABLE instance (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  id_scope TEXT NOT NULL,
  service_host TEXT NOT NULL,
  created TEXT NOT NULL
);
CREATE TABLE policies (
  name TEXT PRIMARY KEY,
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  rights TEXT NOT NULL
);
CREATE TABLE hubs (
  name TEXT PRIMARY KEY,
  hostname TEXT NOT NULL UNIQUE COLLATE NOCASE,
  weight INTEGER NOT NULL,
  apply_allocation_policy INTEGER NOT NULL,
  builtin INTEGER NOT NULL,
  created TEXT NOT NULL
);
CREATE TABLE hub_devices (
  hub TEXT NOT NULL REFERENCES hubs (name),
  device_id TEXT NOT NULL,
  status TEXT NOT NULL,
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  created TEXT NOT NULL,
  updated TEXT NOT NULL,
  PRIMARY KEY (hub, device_id)
);
-- Enrollments and groups are stored as their full JSON documents, keyed on the lower-cased ID.
CREATE TABLE enrollments (
  key TEXT PRIMARY KEY,
  id TEXT NOT NULL,
  doc TEXT NOT NULL,
  etag TEXT NOT NULL
);
CREATE TABLE enrollment_groups (
  key TEXT PRIMARY KEY,
  id TEXT NOT NULL,
  doc TEXT NOT NULL,
  etag TEXT NOT NULL
);
CREATE TABLE registrations (
  key TEXT PRIMARY KEY,
  registration_id TEXT NOT NULL,
  enrollment_group_id TEXT,
  enrollment_group_key TEXT,
  status TEXT NOT NULL,
  substatus TEXT,
  assigned_hub TEXT,
  device_id TEXT,
  error_code INTEGER,
  error_message TEXT,
  created TEXT NOT NULL,
  updated TEXT NOT NULL,
  etag TEXT NOT NULL,
  operation_id TEXT NOT NULL,
  payload TEXT
);
CREATE INDEX registrations_by_group ON registrations (enrollment_group_key);
