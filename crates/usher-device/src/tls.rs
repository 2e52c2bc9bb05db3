//! The client TLS configuration: a given CA, or the platform's trust store.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use rustls_platform_verifier::BuilderVerifierExt as _;

use crate::ProvisionError;

/// The client configuration: the server verified against `ca_pem` (or the platform's roots), and
/// the device's certificate presented when it has one.
pub(crate) fn client_config(
    ca_pem: Option<&[u8]>,
    alpn: &[&[u8]],
    certificate: Option<&crate::credential::ClientCertificate>,
) -> Result<Arc<ClientConfig>, ProvisionError> {
    let bad_ca = |e: String| ProvisionError::BadCa(e);
    let provider = Arc::new(aws_lc_rs::default_provider());
    // The device's certificate and key, without rustls's check that the key matches the
    // certificate (`with_client_auth_cert`): that check parses the certificate as a webpki end
    // entity, which refuses X.509 v1 certificates, and devices do have v1 certificates (openssl's
    // `x509 -req` without extensions makes them). A key that does not match fails the handshake.
    let resolver = |c: &crate::credential::ClientCertificate| {
        let key = provider
            .key_provider
            .load_private_key(c.key.clone_key())
            .map_err(|e| ProvisionError::BadCertificate(e.to_string()))?;
        Ok::<_, ProvisionError>(Arc::new(rustls::sign::SingleCertAndKey::from(
            rustls::sign::CertifiedKey::new(c.chain.clone(), key),
        )))
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad_ca(e.to_string()))?;
    let mut config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.map_err(|e| bad_ca(e.to_string()))?)
                    .map_err(|e| bad_ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad_ca("no certificate in the PEM".into()));
            }
            let builder = builder.with_root_certificates(roots);
            match certificate {
                Some(c) => builder.with_client_cert_resolver(resolver(c)?),
                None => builder.with_no_client_auth(),
            }
        }
        None => {
            let builder = builder
                .with_platform_verifier()
                .map_err(|e| bad_ca(e.to_string()))?;
            match certificate {
                Some(c) => builder.with_client_cert_resolver(resolver(c)?),
                None => builder.with_no_client_auth(),
            }
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection makes a full handshake, as a device that keeps no TLS session does (and
    // as a load test of the service must).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}
