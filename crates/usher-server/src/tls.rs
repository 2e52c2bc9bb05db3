//! TLS configuration. Every TLS setting lives here, so the rustls 0.24 provider move touches one file.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A server configuration with the certificate chain and key in PEM files: TLS 1.2 (the Python
/// SDK speaks only 1.2) and 1.3, stateless session tickets so reconnecting devices resume cheaply,
/// and an optional client certificate (X.509 devices; see [`DeferredClientCert`]). Tickets are
/// made from `ticket_secret` when given (several nodes given the same secret resume each other's
/// sessions), else from keys of this process's own.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    alpn: &[&[u8]],
    ticket_secret: Option<[u8; 32]>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: cert_path.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificates {
            path: cert_path.display().to_string(),
            reason: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(DeferredClientCert {
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_single_cert(chain, key)?;
    config.ticketer = match ticket_secret {
        Some(secret) => Arc::new(SharedTicketer::new(secret)),
        None => aws_lc_rs::Ticketer::new()?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Asks every client for a certificate and takes any chain, or none: X.509 devices present one,
/// SAS devices and the console do not. Whether a chain is trusted is the registration core's
/// decision against the enrollments as they are when the device asks (their certificates change
/// at runtime, so no fixed set of roots could decide here); the handshake proves only that the
/// client holds the leaf's private key, checked with the provider's signature algorithms. No CA
/// names are offered as hints, so a client picks its certificate by its own configuration.
#[derive(Debug)]
pub struct DeferredClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for DeferredClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    // Possession is checked with the leaf's public key alone (rustls-webpki's raw-key
    // verification), not by parsing the leaf as a webpki end entity: that refuses X.509 v1
    // certificates, which devices do present (the Node SDK's own e2e test makes its self-signed
    // device certificates v1, and DPS accepts them). Whether the certificate is trusted is decided
    // later, against the enrollments.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = leaf_public_key(cert)?;
        let key = webpki::RawPublicKeyEntity::try_from(&spki).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        let algorithms = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ))?;
        // As rustls does for TLS 1.2: every algorithm of the scheme is tried.
        if algorithms
            .iter()
            .any(|alg| key.verify_signature(*alg, message, dss.signature()).is_ok())
        {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature,
            ))
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &leaf_public_key(cert)?,
            dss,
            &self.algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The public key (SubjectPublicKeyInfo, DER) of a client's certificate, of any X.509 version.
fn leaf_public_key(
    cert: &CertificateDer<'_>,
) -> Result<rustls_pki_types::SubjectPublicKeyInfoDer<'static>, rustls::Error> {
    use x509_parser::prelude::FromDer as _;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    Ok(rustls_pki_types::SubjectPublicKeyInfoDer::from(
        parsed.tbs_certificate.subject_pki.raw.to_vec(),
    ))
}

/// How long one ticket key is used to make tickets; a ticket opens during its period and the next.
const TICKET_PERIOD_SECS: u64 = 6 * 3600;

/// Session tickets from a secret shared by every node: each period's key is derived from the
/// secret and the period's number (HMAC-SHA-256), tickets are AES-256-GCM sealed with it and
/// carry the period's number, so keys rotate without the nodes talking to each other and a ticket
/// any node made opens on every node. `Debug` leaves the secret out.
pub struct SharedTicketer {
    secret: [u8; 32],
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer").finish_non_exhaustive()
    }
}

impl SharedTicketer {
    pub fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    fn period_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / TICKET_PERIOD_SECS)
    }

    fn key(&self, period: u64) -> Option<::aws_lc_rs::aead::LessSafeKey> {
        use ::aws_lc_rs::{aead, hmac};
        let mac = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        let tag = hmac::sign(
            &mac,
            &[b"usher tls tickets ".as_slice(), &period.to_be_bytes()].concat(),
        );
        aead::UnboundKey::new(&aead::AES_256_GCM, tag.as_ref())
            .ok()
            .map(aead::LessSafeKey::new)
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(TICKET_PERIOD_SECS).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        use ::aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
        let period = Self::period_now();
        let mut nonce = [0u8; NONCE_LEN];
        ::aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.key(period)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(8 + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&period.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        use ::aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
        let (period, rest) = ticket.split_first_chunk::<8>()?;
        let period = u64::from_be_bytes(*period);
        let now = Self::period_now();
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key(period)?
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::empty(), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConnection};

    /// Runs a handshake (and the tickets after it) in memory; how it went.
    fn connect(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> HandshakeKind {
        let mut c =
            ClientConnection::new(Arc::clone(client), "localhost".try_into().unwrap()).unwrap();
        let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets().unwrap();
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        assert!(!c.is_handshaking());
        c.handshake_kind().unwrap()
    }

    #[test]
    fn nodes_sharing_a_ticket_secret_resume_each_others_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::pki::ensure(
            dir.path(),
            &["localhost".to_owned()],
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let node = |secret| server_config(&files.server_cert, &files.server_key, &[], secret);
        let (a, b) = (node(Some([7; 32])).unwrap(), node(Some([7; 32])).unwrap());
        let stranger = node(Some([8; 32])).unwrap();
        let own = node(None).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&files.ca_cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = |version: &'static rustls::SupportedProtocolVersion| {
            Arc::new(
                ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                    .with_protocol_versions(&[version])
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            )
        };
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let client = client(version);
            assert_eq!(connect(&client, &a), HandshakeKind::Full);
            assert_eq!(
                connect(&client, &b),
                HandshakeKind::Resumed,
                "a ticket from one node opens on another"
            );
            assert_eq!(connect(&client, &stranger), HandshakeKind::Full);
            assert_eq!(connect(&client, &own), HandshakeKind::Full);
        }
    }
}
