-- The built-in hubs' registry: device etags and generation IDs, the rest of the device document,
-- twins, and each hub's shared access policies.
ALTER TABLE hub_devices ADD COLUMN etag TEXT NOT NULL DEFAULT '';
ALTER TABLE hub_devices ADD COLUMN generation_id TEXT NOT NULL DEFAULT '';
ALTER TABLE hub_devices ADD COLUMN doc TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hub_devices ADD COLUMN twin TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hub_devices ADD COLUMN twin_version INTEGER NOT NULL DEFAULT 1;
CREATE TABLE hub_policies (
  hub TEXT NOT NULL REFERENCES hubs (name),
  name TEXT NOT NULL,
  primary_key TEXT NOT NULL,
  secondary_key TEXT NOT NULL,
  rights TEXT NOT NULL,
  PRIMARY KEY (hub, name)
);
