-- X.509 attestation: what a registration record shows of the device's certificate
-- (X509RegistrationResult JSON: certificateInfo, enrollmentGroupId, signingCertificateInfo), and
-- the certificate chain issued for the operation's CSR (a JSON array of base64 DER).
ALTER TABLE registrations ADD COLUMN x509 TEXT;
ALTER TABLE registrations ADD COLUMN issued_chain TEXT;
