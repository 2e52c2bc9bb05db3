//! One AMQP connection: SASL PLAIN (or, for a device that presented a client certificate,
//! EXTERNAL or ANONYMOUS), the open deadline, the device's credentials checked by the
//! registration core, and a task per session.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, ListenerConnectionHandle, SaslAcceptor, SessionAcceptor,
};
use fe2o3_amqp::types::definitions::{self, AmqpError, Fields};
use fe2o3_amqp::types::primitives::{Array, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use usher_proto::amqp::{self as dps, DeviceIdentity};

use super::session;
use crate::app::{App, Protocol};
use crate::error::ApiError;
use crate::registration::{self, DeviceRequest};

/// The only SASL mechanism DPS offers devices with symmetric keys.
const PLAIN: &str = "PLAIN";
/// What a device that authenticated with its TLS client certificate may ask for instead.
const EXTERNAL: &str = "EXTERNAL";
const ANONYMOUS: &str = "ANONYMOUS";
/// The AMQP protocol header without a SASL layer (protocol ID 0): what a device that
/// authenticated in the TLS handshake may send first instead of the SASL header (the C SDK's
/// X.509 transport does).
const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// Frames (and session frames) buffered between fe2o3's engine tasks and ours. Small, so that a
/// peer that floods is slowed down by TCP back-pressure instead of filling memory.
pub(super) const BUFFER: usize = 64;
/// How long a close may wait for the peer's Close or Detach.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a device presented at SASL (who it says it is, its SAS token) or in its TLS handshake (its
/// certificate chain), and where it connected from.
#[derive(Clone)]
pub(super) struct Device {
    pub(super) identity: DeviceIdentity,
    /// `None` for a device that attests with its certificate.
    pub(super) token: Option<String>,
    pub(super) chain: crate::x509::ClientChain,
    pub(super) peer: SocketAddr,
    pub(super) protocol: Protocol,
}

impl std::fmt::Debug for Device {
    /// The token never reaches `Debug` output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// The registration core's view of this device's requests.
    pub(super) fn request(&self) -> DeviceRequest<'_> {
        DeviceRequest {
            id_scope: &self.identity.id_scope,
            registration_id: &self.identity.registration_id,
            authorization: self.token.as_deref(),
            client_chain: &self.chain,
            peer: Some(self.peer.ip()),
            protocol: self.protocol,
        }
    }

    /// The AMQP error a refused request (or connection) gets, after the log line every transport
    /// writes for a refusal.
    pub(super) fn refuse(&self, error: &ApiError) -> definitions::Error {
        error.log(self.protocol, Some(self.peer));
        error_for(error)
    }
}

/// SASL PLAIN for one connection: the initial response is parsed (`usher_proto::amqp`) and kept
/// for the connection task, which checks it once the connection is open. fe2o3-amqp's acceptor
/// asks synchronously, so no token can be verified here (that needs the store); a user name that
/// is not `{idScope}/registrations/{registrationId}` is refused at once.
///
/// A device that presented a client certificate may use EXTERNAL or ANONYMOUS instead: its
/// identity is then its certificate's common name in this instance's ID scope (the link address
/// must name the same device).
#[derive(Clone, Default)]
struct DeviceSasl {
    slot: Arc<Mutex<Option<Sasl>>>,
    /// Whether the TLS handshake carried a client certificate.
    certificate: bool,
}

/// What SASL settled.
enum Sasl {
    Plain(DeviceIdentity, String),
    Certificate,
}

impl DeviceSasl {
    fn take(&self) -> Option<Sasl> {
        self.slot.lock().ok().and_then(|mut d| d.take())
    }

    fn set(&self, sasl: Sasl) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(sasl);
        }
    }

    fn outcome(code: SaslCode) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }
}

impl SaslAcceptor for DeviceSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        if self.certificate {
            Array::from(vec![
                Symbol::from(EXTERNAL),
                Symbol::from(PLAIN),
                Symbol::from(ANONYMOUS),
            ])
        } else {
            Array::from(vec![Symbol::from(PLAIN)])
        }
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let mechanism = init.mechanism.as_str();
        if self.certificate && (mechanism == EXTERNAL || mechanism == ANONYMOUS) {
            self.set(Sasl::Certificate);
            return Self::outcome(SaslCode::Ok);
        }
        if mechanism != PLAIN {
            tracing::debug!(mechanism = %init.mechanism.as_str(), "SASL mechanism refused");
            return Self::outcome(SaslCode::Auth);
        }
        let response = init
            .initial_response
            .map(|r| r.into_vec())
            .unwrap_or_default();
        let device = dps::parse_sasl_plain(&response).and_then(|plain| {
            Ok((
                dps::parse_identity(plain.authcid)?,
                plain.password.to_owned(),
            ))
        });
        match device {
            Ok((identity, token)) => {
                self.set(Sasl::Plain(identity, token));
                Self::outcome(SaslCode::Ok)
            }
            Err(e) => {
                tracing::info!(error = %e, "SASL PLAIN refused");
                Self::outcome(SaslCode::Auth)
            }
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // PLAIN has no challenge, so there is nothing to respond to.
        Self::outcome(SaslCode::Auth)
    }
}

/// Serves one AMQP connection over any byte stream (TLS, or a WebSocket) until the device closes
/// it, misbehaves, or `shutdown` is cancelled.
pub async fn serve<Io>(
    app: App,
    endpoint: &super::Endpoint,
    io: Io,
    peer: SocketAddr,
    chain: crate::x509::ClientChain,
    protocol: Protocol,
    shutdown: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let Ok(_permit) = Arc::clone(&endpoint.connections).try_acquire_owned() else {
        tracing::warn!(%peer, "AMQP connection limit reached");
        return;
    };
    let _open = app.metrics.amqp_connection(protocol);
    let limits = endpoint.limits;
    let sasl = DeviceSasl {
        slot: Arc::default(),
        certificate: chain.is_present(),
    };
    let acceptor = ConnectionAcceptor::builder()
        .container_id("usher")
        .max_frame_size(limits.max_frame_size)
        .session_max(limits.max_sessions)
        .idle_time_out(u32::try_from(limits.idle_timeout.as_millis()).unwrap_or(u32::MAX))
        .buffer_size(BUFFER)
        .sasl_acceptor(sasl.clone())
        .build();
    // A device with a certificate may skip SASL: its first eight bytes say which it does, and
    // are replayed, through the guard, to the acceptor that speaks that.
    let bare_acceptor = ConnectionAcceptor::builder()
        .container_id("usher")
        .max_frame_size(limits.max_frame_size)
        .session_max(limits.max_sessions)
        .idle_time_out(u32::try_from(limits.idle_timeout.as_millis()).unwrap_or(u32::MAX))
        .buffer_size(BUFFER)
        .build();
    let mut without_sasl = false;
    let opening = async {
        if !chain.is_present() {
            return acceptor.accept(super::guard::Guarded::new(io)).await;
        }
        let mut io = io;
        let mut header = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut io, &mut header)
            .await
            .map_err(fe2o3_amqp::connection::OpenError::Io)?;
        let (read, write) = tokio::io::split(io);
        let replayed = tokio::io::join(
            tokio::io::AsyncReadExt::chain(std::io::Cursor::new(header.to_vec()), read),
            write,
        );
        let replayed = super::guard::Guarded::new(replayed);
        if header == AMQP_HEADER {
            without_sasl = true;
            bare_acceptor.accept(replayed).await
        } else {
            acceptor.accept(replayed).await
        }
    };
    let mut connection = match tokio::time::timeout(limits.open_timeout, opening).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "AMQP connection not opened");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, timeout = ?limits.open_timeout, "AMQP connection not opened in time");
            return;
        }
    };
    let sasl_outcome = if without_sasl {
        Some(Sasl::Certificate)
    } else {
        sasl.take()
    };
    let settled = match sasl_outcome {
        Some(Sasl::Plain(identity, token)) => Some((identity, Some(token))),
        // The device is its certificate's common name; the link address must agree.
        Some(Sasl::Certificate) => chain
            .leaf()
            .and_then(|leaf| crate::x509::common_name(leaf).ok())
            .map(|cn| {
                (
                    DeviceIdentity {
                        id_scope: app.instance.id_scope.clone(),
                        registration_id: cn,
                    },
                    None,
                )
            }),
        None => None,
    };
    let Some((identity, token)) = settled else {
        // The acceptor only opens after a successful SASL outcome, which stores the device.
        close(
            &mut connection,
            Some(amqp_error(AmqpError::InternalError, None)),
        )
        .await;
        return;
    };
    let device = Device {
        identity,
        token,
        chain,
        peer,
        protocol,
    };
    // DPS checks a symmetric-key device's token when the connection opens and refuses it with
    // the error JSON as the description (`device-protocol.md` §6).
    if let Err(e) = registration::authenticate(&app, device.request()).await {
        close(&mut connection, Some(device.refuse(&e))).await;
        return;
    }
    tracing::debug!(%peer, device = ?device.identity, "AMQP connection opened");

    let device = Arc::new(device);
    let mut sessions = JoinSet::new();
    let mut reason = None;
    loop {
        tokio::select! {
            incoming = connection.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                // fe2o3 already refuses a Begin beyond channel-max; this is the same limit,
                // counted where a refusal can say why.
                if sessions.len() >= usize::from(limits.max_sessions) {
                    reason = Some(amqp_error(
                        AmqpError::ResourceLimitExceeded,
                        Some(format!("at most {} sessions per connection", limits.max_sessions)),
                    ));
                    break;
                }
                let acceptor = SessionAcceptor::builder()
                    .handle_max(limits.max_links.saturating_sub(1))
                    .buffer_size(BUFFER)
                    .build();
                match acceptor.accept_incoming_session(incoming, &mut connection).await {
                    Ok(handle) => {
                        sessions.spawn(session::run(app.clone(), Arc::clone(&device), handle, limits, peer));
                    }
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "AMQP session not begun");
                        break;
                    }
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            () = shutdown.cancelled() => break,
        }
    }
    close(&mut connection, reason).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    sessions.abort_all();
    tracing::debug!(%peer, "AMQP connection ended");
}

/// Closes the connection (with an error, if any), waiting a little for the peer's Close.
async fn close(connection: &mut ListenerConnectionHandle, error: Option<definitions::Error>) {
    let closing = async {
        match error {
            Some(error) => connection.close_with_error(error).await,
            None => connection.close().await,
        }
    };
    if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
        tracing::debug!(error = %e, "AMQP connection closed with an error");
    }
}

pub(super) fn amqp_error(condition: AmqpError, description: Option<String>) -> definitions::Error {
    definitions::Error::new(condition, description, None)
}

/// The AMQP error a refused request (or connection) gets: the condition the SDKs map to the same
/// class of failure as the HTTP status, the DPS error JSON as the description, and the
/// retry-after of a throttled request in `info` (where Node and .NET read it).
fn error_for(error: &ApiError) -> definitions::Error {
    let code = error.code();
    let status = code.http_status();
    let condition: definitions::ErrorCondition = match status {
        401 | 403 => AmqpError::UnauthorizedAccess.into(),
        404 => AmqpError::NotFound.into(),
        // Retryable for Node (ThrottlingError, InternalServerError): it registers again later.
        429 => definitions::ErrorCondition::Custom(Symbol::from(
            "com.microsoft:device-container-throttled",
        )),
        s if s >= 500 => AmqpError::InternalError.into(),
        412 => {
            definitions::ErrorCondition::Custom(Symbol::from("com.microsoft:precondition-failed"))
        }
        _ => definitions::ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error")),
    };
    let description = serde_json::to_string(&error.body()).unwrap_or_else(|_| code.name());
    let info = error.retry_after().map(|secs| {
        let secs = Value::Int(i32::try_from(secs).unwrap_or(i32::MAX));
        let mut info = Fields::default();
        info.insert(Symbol::from(dps::RETRY_AFTER), secs.clone());
        info.insert(Symbol::from(dps::RETRY_AFTER_DOTNET), secs);
        info
    });
    definitions::Error::new(condition, Some(description), info)
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::definitions::ErrorCondition;

    use super::*;
    use crate::error::AuthError;
    use crate::store::StoreError;

    fn condition(error: &ApiError) -> ErrorCondition {
        error_for(error).condition
    }

    #[test]
    fn refusals_map_to_the_conditions_the_sdks_read() {
        assert_eq!(
            condition(&ApiError::Unauthorized(AuthError::NoMatchingEnrollment)),
            ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
        );
        assert_eq!(
            condition(&ApiError::OperationNotFound("x".into())),
            ErrorCondition::AmqpError(AmqpError::NotFound)
        );
        assert_eq!(
            condition(&ApiError::InvalidJson("x".into())),
            ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error"))
        );
        // Retryable for Node: amqp:internal-error becomes InternalServerError.
        let fault = error_for(&ApiError::Store(StoreError::Database("down".into())));
        assert_eq!(
            fault.condition,
            ErrorCondition::AmqpError(AmqpError::InternalError)
        );
        let body: serde_json::Value =
            serde_json::from_str(fault.description.as_deref().unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(body["errorCode"], 500_001, "{body}");
        assert!(
            !fault.description.unwrap_or_default().contains("down"),
            "server faults say no more than their code"
        );
        assert!(fault.info.is_none(), "no retry-after without throttling");
    }
}
