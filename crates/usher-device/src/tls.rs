//! The client TLS configuration: a given CA, or the platform's trust store.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use rustls_platform_verifier::BuilderVerifierExt as _;

use crate::ProvisionError;

pub(crate) fn client_config(
    ca_pem: Option<&[u8]>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, ProvisionError> {
    let bad_ca = |e: String| ProvisionError::BadCa(e);
    let builder = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
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
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .with_platform_verifier()
            .map_err(|e| bad_ca(e.to_string()))?
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection makes a full handshake, as a device that keeps no TLS session does (and
    // as a load test of the service must).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}
