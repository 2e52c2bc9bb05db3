-- Allocation: a hub's location (geoLatency), the instance's default policy and the network map
-- from client addresses to locations, and the hub a registration was first assigned to
-- (reprovisionedToInitialAssignment).
ALTER TABLE hubs ADD COLUMN location TEXT;
ALTER TABLE instance ADD COLUMN allocation_policy TEXT NOT NULL DEFAULT 'hashed';
ALTER TABLE instance ADD COLUMN geo_map TEXT NOT NULL DEFAULT '[]';
ALTER TABLE registrations ADD COLUMN initial_hub TEXT;
