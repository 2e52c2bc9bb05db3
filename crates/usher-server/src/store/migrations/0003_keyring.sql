-- The instance's data-encryption key, wrapped by the key-encryption key (which never enters the
-- database); `kek_id` names the KEK it is wrapped with. Secret columns hold values sealed with it.
CREATE TABLE keyring (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  kek_id TEXT NOT NULL,
  wrapped_dek TEXT NOT NULL
);
