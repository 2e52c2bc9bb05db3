//! Verified CA certificates: what DPS (its portal and ARM API) calls "certificates". The operator
//! uploads a root or intermediate CA under a name; X.509 enrollments and groups name it in
//! `attestation.x509.caReferences` instead of carrying the certificate themselves. A device's
//! chain may lead to it only once it is verified: the operator proves possession of the CA's
//! private key by signing a certificate whose common name is a one-time verification code Usher
//! handed out (or declares it verified on upload, as DPS allows with `isVerified`).
//!
//! The answers have the shape of ARM's `CertificateResponse` (`name`, `etag`, `type`,
//! `properties` with `subject`, `expiry`, `thumbprint`, `isVerified`, `created`, `updated`,
//! `certificate`), with times in ISO 8601 and the certificate's `info` as enrollments show it.

use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use crate::app::App;
use crate::error::ApiError;
use crate::management::{Precondition, PutRefused};
use crate::store::CaCertificate;
use crate::x509::{self, X509Error};

/// The `type` ARM gives a provisioning service's certificate.
const RESOURCE_TYPE: &str = "Microsoft.Devices/ProvisioningServices/Certificates";

/// A certificate name: 1 to 64 letters, digits, `-`, `_` and `.`, as ARM allows.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    if !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "invalid certificate name {name:?}: use 1-64 letters, digits, '-', '_' and '.'"
        )))
    }
}

/// One certificate as the API shows it; `verificationCode` only where it was just made.
fn render(ca: &CaCertificate, with_code: bool) -> Value {
    let der = x509::parse_stored(&ca.certificate).ok();
    let info = der.as_ref().and_then(|d| x509::info(d).ok());
    let field = |name: &str| {
        info.as_ref()
            .and_then(|i| i.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut properties = json!({
        "subject": field("subjectName"),
        "expiry": field("notAfterUtc"),
        "thumbprint": field("sha1Thumbprint"),
        "isVerified": ca.verified,
        "created": usher_proto::model::format_timestamp(ca.created),
        "updated": usher_proto::model::format_timestamp(ca.updated),
        "certificate": ca.certificate,
        "info": info,
    });
    if with_code && let Some(code) = &ca.verification_code {
        properties["verificationCode"] = code.clone().into();
    }
    json!({
        "name": ca.name,
        "etag": ca.etag,
        "type": RESOURCE_TYPE,
        "properties": properties,
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::CaCertificateNotFound(name.to_owned())
}

/// The CA certificates, by name.
pub async fn list(app: &App) -> Result<Vec<Value>, ApiError> {
    Ok(app
        .store
        .ca_certificates()
        .await?
        .iter()
        .map(|ca| render(ca, false))
        .collect())
}

/// One CA certificate.
pub async fn get(app: &App, name: &str) -> Result<Value, ApiError> {
    let ca = app
        .store
        .ca_certificate(name)
        .await?
        .ok_or_else(|| not_found(name))?;
    Ok(render(&ca, false))
}

/// `PUT /usher/certificates/{name}`: uploads a CA certificate, or replaces one under `If-Match`.
/// The body is `{"certificate": PEM or base64 DER, "isVerified": bool}`, bare or inside
/// `properties` as ARM sends it. The certificate must be able to sign others (basic constraints
/// CA); a replaced certificate stays verified only if it is the same certificate.
pub async fn put(app: &App, name: &str, body: &[u8], pre: Precondition) -> Result<Value, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Upload {
        certificate: Option<String>,
        #[serde(default)]
        is_verified: Option<bool>,
        #[serde(default)]
        properties: Option<Box<Self>>,
    }
    check_name(name)?;
    let mut upload: Upload =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if let Some(inner) = upload.properties.take() {
        upload = *inner;
    }
    let text = upload
        .certificate
        .ok_or_else(|| ApiError::InvalidArgument("the body has no certificate".into()))?;
    let der = x509::parse_stored(&text)
        .map_err(|e| ApiError::InvalidArgument(format!("certificate: {e}")))?;
    x509::check_can_sign(&der)
        .map_err(|e| ApiError::InvalidArgument(format!("certificate: {e}")))?;
    let pem = x509::to_pem(&der);
    let declared_verified = upload.is_verified.unwrap_or(false);
    let name = name.to_owned();
    let now = crate::clock::now();
    let stored = app
        .store
        .put_ca_certificate(&name.clone(), move |current| {
            if let Err(refused) = pre.check_put(current.as_ref().map(|c| c.etag.as_str())) {
                return Err(match refused {
                    PutRefused::Exists => ApiError::CaCertificateExists(name),
                    PutRefused::Missing => ApiError::CaCertificateNotFound(name),
                    PutRefused::EtagMismatch => ApiError::EtagMismatch,
                });
            }
            let same = current.as_ref().filter(|c| c.certificate == pem);
            Ok(CaCertificate {
                name,
                verified: declared_verified || same.is_some_and(|c| c.verified),
                verification_code: same.and_then(|c| c.verification_code.clone()),
                created: current.as_ref().map_or(now, |c| c.created),
                updated: now,
                etag: crate::clock::new_etag(),
                certificate: pem,
            })
        })
        .await?;
    Ok(render(&stored, false))
}

/// `POST /usher/certificates/{name}/generateVerificationCode`: a new one-time code (replacing
/// any earlier one) for the proof of possession.
pub async fn generate_verification_code(
    app: &App,
    name: &str,
    pre: Precondition,
) -> Result<Value, ApiError> {
    let code = new_verification_code()?;
    let owned = name.to_owned();
    let stored = app
        .store
        .put_ca_certificate(name, move |current| {
            let mut ca = current.ok_or(ApiError::CaCertificateNotFound(owned))?;
            if !pre.allows(&ca.etag) {
                return Err(ApiError::EtagMismatch);
            }
            ca.verification_code = Some(code);
            ca.updated = crate::clock::now();
            ca.etag = crate::clock::new_etag();
            Ok(ca)
        })
        .await?;
    Ok(render(&stored, true))
}

/// 16 random bytes as upper-case hex: the common name a proof certificate must carry.
fn new_verification_code() -> Result<String, ApiError> {
    Ok(crate::app::random_vec(16)?
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect())
}

/// `POST /usher/certificates/{name}/verify` with `{"certificate": PEM or base64 DER}`: checks the
/// proof of possession (its common name is the code in force, it is signed by the CA's key) and
/// marks the CA verified. The code is used up whichever way the proof is judged, so a refused
/// proof needs a new code: nobody gets to try many certificates against one code.
pub async fn verify(
    app: &App,
    name: &str,
    body: &[u8],
    pre: Precondition,
) -> Result<Value, ApiError> {
    #[derive(serde::Deserialize)]
    struct Proof {
        certificate: String,
    }
    let proof: Proof =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let proof = x509::parse_stored(&proof.certificate)
        .map_err(|e| ApiError::InvalidArgument(format!("certificate: {e}")))?;
    let ca = app
        .store
        .ca_certificate(name)
        .await?
        .ok_or_else(|| not_found(name))?;
    if !pre.allows(&ca.etag) {
        return Err(ApiError::EtagMismatch);
    }
    let Some(code) = ca.verification_code.clone() else {
        return Err(ApiError::InvalidArgument(format!(
            "certificate {name:?} has no verification code; generate one first"
        )));
    };
    let ca_der = x509::parse_stored(&ca.certificate)
        .map_err(|e| ApiError::Store(crate::store::StoreError::Corrupt(e.to_string())))?;
    let outcome = x509::check_proof_of_possession(&ca_der, &proof, &code);
    let proven = outcome.is_ok();
    // The code judged must still be the one in force when the verdict is written (a compare and
    // swap): a code generated meanwhile, or used by a concurrent proof, is not overwritten.
    let owned = name.to_owned();
    let stored = app
        .store
        .put_ca_certificate(name, move |current| {
            let mut ca = current.ok_or_else(|| ApiError::CaCertificateNotFound(owned.clone()))?;
            if ca.verification_code.as_deref() != Some(code.as_str()) {
                return Err(ApiError::InvalidArgument(format!(
                    "the verification code of certificate {owned:?} changed meanwhile; generate a new one"
                )));
            }
            ca.verification_code = None;
            ca.verified |= proven;
            ca.updated = crate::clock::now();
            ca.etag = crate::clock::new_etag();
            Ok(ca)
        })
        .await?;
    outcome.map_err(|e| {
        ApiError::InvalidArgument(format!(
            "proof of possession refused: {e}; the code is used up, generate a new one"
        ))
    })?;
    Ok(render(&stored, false))
}

/// `DELETE /usher/certificates/{name}`. Enrollments that name it keep the name; their devices are
/// refused until a CA of that name is uploaded and verified again.
pub async fn delete(app: &App, name: &str, pre: Precondition) -> Result<(), ApiError> {
    app.store
        .delete_ca_certificate(name, move |ca| {
            if pre.allows(&ca.etag) {
                Ok(())
            } else {
                Err(ApiError::EtagMismatch)
            }
        })
        .await?
        .map(|_| ())
        .ok_or_else(|| not_found(name))
}

/// A CA an enrollment names, as the store held it when the device attested: its certificate if it
/// is there and verified, or why it cannot be used.
#[derive(Debug, Clone)]
pub struct NamedCa {
    pub name: String,
    pub certificate: Result<CertificateDer<'static>, X509Error>,
}

/// Looks up the CAs an attestation names (a point read each).
pub async fn resolve(app: &App, names: &[String]) -> Result<Vec<NamedCa>, ApiError> {
    let mut resolved = Vec::with_capacity(names.len());
    for name in names {
        let certificate = match app.store.ca_certificate(name).await? {
            None => Err(X509Error::CaNotFound(name.clone())),
            Some(ca) if !ca.verified => Err(X509Error::CaNotVerified(name.clone())),
            Some(ca) => x509::parse_stored(&ca.certificate),
        };
        resolved.push(NamedCa {
            name: name.clone(),
            certificate,
        });
    }
    Ok(resolved)
}

/// The names an X.509 attestation's `caReferences` holds (primary, then secondary).
pub fn references(x509: Option<&Value>) -> Vec<String> {
    let Some(refs) = x509.and_then(|x| x.get("caReferences")) else {
        return Vec::new();
    };
    ["primary", "secondary"]
        .iter()
        .filter_map(|which| refs.get(which).and_then(Value::as_str))
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}
