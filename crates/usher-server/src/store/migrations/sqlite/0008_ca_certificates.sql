-- Verified CA certificates (DPS's "certificates"): CAs the operator uploaded, which X.509
-- enrollments and groups name in `caReferences`. A device's chain may lead to one only once it
-- is verified, by proof of possession (a certificate whose CN is `verification_code`, signed by
-- the CA's key) or declared verified on upload. `key` is the lower-cased name.
CREATE TABLE ca_certificates (
  key TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  certificate TEXT NOT NULL,
  verified INTEGER NOT NULL CHECK (verified IN (0, 1)),
  verification_code TEXT,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  etag TEXT NOT NULL
);
