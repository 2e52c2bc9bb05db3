//! The development PKI: a CA and a server certificate (ECDSA P-256), made on first run in the data
//! directory and reused afterwards. The server certificate is re-issued from the same CA when the
//! configured host names change or it nears expiry, so devices that trust the CA keep working.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Why the PKI could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} holds no usable certificate or key: {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// Where the PKI files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// The CA certificate devices and clients must trust.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

const CA_COMMON_NAME: &str = "Usher Development CA";
/// The issuing CA made on first run when none is configured: its certificate and key, in the PKI
/// directory.
pub const ISSUING_CA_CERT: &str = "issuing-ca.pem";
pub const ISSUING_CA_KEY: &str = "issuing-ca.key";
const ISSUING_CA_COMMON_NAME: &str = "Usher Issuing CA";
/// Re-issue the server certificate when it has less than this left.
const RENEW_BEFORE: Duration = Duration::days(30);

/// Makes sure `dir` holds a CA and a server certificate for `hostnames` (DNS names or IP
/// addresses), creating or re-issuing what is missing or stale.
pub fn ensure(dir: &Path, hostnames: &[String], now: OffsetDateTime) -> Result<PkiFiles, PkiError> {
    create_dir(dir)?;
    let files = PkiFiles {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    let ca_key_path = dir.join("ca.key");
    let names_path = dir.join("server.names");

    let (ca_pem, ca_key) = if files.ca_cert.exists() && ca_key_path.exists() {
        let key_pem = read(&ca_key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| unusable(&ca_key_path, e))?;
        (read(&files.ca_cert)?, key)
    } else {
        let (cert, key) = self_signed_ca(CA_COMMON_NAME, now)?;
        write(&ca_key_path, &key.serialize_pem())?;
        write(&files.ca_cert, &cert.pem())?;
        // A new CA invalidates any old server certificate.
        let _ = fs::remove_file(&names_path);
        (cert.pem(), key)
    };

    let wanted = hostnames.join("\n");
    let current = fs::read_to_string(&names_path).ok();
    let fresh = files.server_cert.exists()
        && files.server_key.exists()
        && current.as_deref() == Some(wanted.as_str())
        && read_not_after(&files.server_cert).is_some_and(|end| end - now > RENEW_BEFORE);
    if !fresh {
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(|e| unusable(&files.ca_cert, e))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hostnames.to_vec())?;
        params.distinguished_name = name(hostnames.first().map_or("usher", String::as_str));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(397);
        let cert = params.signed_by(&key, &issuer)?;
        write(&files.server_key, &key.serialize_pem())?;
        write(&files.server_cert, &format!("{}{}", cert.pem(), ca_pem))?;
        write(&names_path, &wanted)?;
        write(
            &dir.join("server.not_after"),
            &params.not_after.unix_timestamp().to_string(),
        )?;
    }
    Ok(files)
}

/// Makes sure `dir` holds an issuing CA (a self-signed ECDSA P-256 CA valid for ten years) for
/// the device certificates issued at registration, creating it if missing; returns its
/// certificate's path, the certificate (PEM) and its key (PEM).
pub fn ensure_issuing_ca(
    dir: &Path,
    now: OffsetDateTime,
) -> Result<(PathBuf, String, String), PkiError> {
    create_dir(dir)?;
    let cert_path = dir.join(ISSUING_CA_CERT);
    let key_path = dir.join(ISSUING_CA_KEY);
    if cert_path.exists() && key_path.exists() {
        let (cert, key) = (read(&cert_path)?, read(&key_path)?);
        return Ok((cert_path, cert, key));
    }
    let (cert, key) = self_signed_ca(ISSUING_CA_COMMON_NAME, now)?;
    let (cert, key) = (cert.pem(), key.serialize_pem());
    write(&key_path, &key)?;
    write(&cert_path, &cert)?;
    Ok((cert_path, cert, key))
}

fn read_not_after(cert_path: &Path) -> Option<OffsetDateTime> {
    let text = fs::read_to_string(cert_path.with_file_name("server.not_after")).ok()?;
    OffsetDateTime::from_unix_timestamp(text.trim().parse().ok()?).ok()
}

/// A new self-signed CA (ECDSA P-256, ten years from yesterday): the development CA and the
/// issuing CA are both made this way.
fn self_signed_ca(
    common_name: &str,
    now: OffsetDateTime,
) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Usher");
    dn
}

fn unusable(path: &Path, reason: impl std::fmt::Display) -> PkiError {
    PkiError::Unusable {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    crate::files::create_private_dir(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Every file of the PKI is written readable by the owner only, like the rest of the data
/// directory (`files`).
fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    crate::files::write_private(path, contents.as_bytes()).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuing_ca_is_made_once_owner_only_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (path, cert, key) = ensure_issuing_ca(dir.path(), now).unwrap();
        assert_eq!(path, dir.path().join(ISSUING_CA_CERT));
        #[cfg(unix)]
        for name in [ISSUING_CA_CERT, ISSUING_CA_KEY] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(
            ensure_issuing_ca(dir.path(), now).unwrap(),
            (path, cert.clone(), key.clone()),
            "reused"
        );
        let unix = u64::try_from(now.unix_timestamp()).unwrap();
        crate::issuance::IssuingCa::from_pem(&cert, &key, unix).unwrap();
    }

    #[test]
    fn creates_then_reuses_then_reissues_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let files = ensure(dir.path(), &names, now).unwrap();
        let ca = fs::read_to_string(&files.ca_cert).unwrap();
        let server = fs::read_to_string(&files.server_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        // The chain file holds the leaf then the CA.
        assert_eq!(server.matches("BEGIN CERTIFICATE").count(), 2);

        let again = ensure(dir.path(), &names, now).unwrap();
        assert_eq!(again, files);
        assert_eq!(
            fs::read_to_string(&files.server_cert).unwrap(),
            server,
            "reused"
        );

        let more = vec!["localhost".to_owned(), "usher.test".to_owned()];
        ensure(dir.path(), &more, now).unwrap();
        assert_ne!(
            fs::read_to_string(&files.server_cert).unwrap(),
            server,
            "re-issued"
        );
        assert_eq!(fs::read_to_string(&files.ca_cert).unwrap(), ca, "same CA");

        // Close to expiry: re-issued.
        let current = fs::read_to_string(&files.server_cert).unwrap();
        ensure(dir.path(), &more, now + Duration::days(380)).unwrap();
        assert_ne!(fs::read_to_string(&files.server_cert).unwrap(), current);
    }
}
