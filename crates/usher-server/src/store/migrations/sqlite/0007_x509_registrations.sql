-- X.509 attestation: what a registration record shows of the device's certificate
-- (X509RegistrationResult JSON: certificateInfo, enrollmentGroupId, signingCertificateInfo).
ALTER TABLE registrations ADD COLUMN x509 TEXT;
