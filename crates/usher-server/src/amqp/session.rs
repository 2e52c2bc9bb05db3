//! One AMQP session of a device: the device's sender link (its requests, our receiver) and its
//! receiver link (our answers), both at the device's own address (`device-protocol.md` §6).
//! Requests are answered one at a time, in the order they arrive (the C SDK matches answers by
//! order; Node by `correlation_id`, which is echoed).

use std::net::SocketAddr;
use std::sync::Arc;

use fe2o3_amqp::acceptor::{LinkAcceptor, LinkEndpoint, ListenerSessionHandle};
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::types::definitions::{self, AmqpError, Role};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, Properties, TargetArchetype,
};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use fe2o3_amqp::{Receiver, Sender};
use usher_proto::amqp::{self as dps, DeviceIdentity, Request};
use usher_proto::api_version::Api;

use super::Limits;
use super::connection::{self, CLOSE_TIMEOUT, Device};
use crate::app::App;
use crate::error::ApiError;
use crate::registration;

/// Link credit the device's request link gets.
const REQUEST_CREDIT: u32 = 8;

/// Runs a session until it ends, the connection closes, or the device breaks a limit.
pub(super) async fn run(
    app: App,
    device: Arc<Device>,
    mut handle: ListenerSessionHandle,
    limits: Limits,
    peer: SocketAddr,
) {
    let acceptor = LinkAcceptor::builder()
        .max_message_size(limits.max_message)
        .build();
    let mut session = Session {
        app,
        device,
        limits,
        requests: None,
        answers: None,
        requester: None,
    };
    let mut attached = 0u32;
    let reason = loop {
        tokio::select! {
            attach = handle.next_incoming_attach() => {
                let Some(attach) = attach else { break None };
                attached = attached.saturating_add(1);
                if attached > limits.max_links {
                    break Some(connection::amqp_error(
                        AmqpError::ResourceLimitExceeded,
                        Some(format!("at most {} links per session", limits.max_links)),
                    ));
                }
                let checked = session.check_attach(&attach);
                let link = match acceptor.accept_incoming_attach(attach, &mut handle).await {
                    Ok(link) => link,
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "AMQP link not attached");
                        continue;
                    }
                };
                match (checked, link) {
                    // Refusing a link is attaching it and detaching it at once with the error.
                    (Err(error), LinkEndpoint::Sender(l)) => detach_sender(l, error),
                    (Err(error), LinkEndpoint::Receiver(l)) => detach_receiver(l, error),
                    (Ok(_), LinkEndpoint::Sender(l)) => {
                        if let Some(old) = session.answers.replace(l) {
                            detach_sender(old, replaced());
                        }
                    }
                    (Ok(identity), LinkEndpoint::Receiver(mut l)) => {
                        // The requests are the link address's device's: a link at another
                        // device's address is judged request by request, as HTTPS and MQTT judge
                        // a path or topic naming another device (401 for a token or certificate
                        // that is not that device's).
                        session.requester = (!identity.same_device(&session.device.identity))
                            .then(|| Arc::new(Device { identity, ..(*session.device).clone() }));
                        // Requests are answered one at a time: a device needs one credit, a few
                        // keep a pipelining client busy without buffering much.
                        if let Err(e) = l.set_credit(REQUEST_CREDIT).await {
                            tracing::debug!(%peer, error = %e, "AMQP request link ended");
                            continue;
                        }
                        if let Some(old) = session.requests.replace(l) {
                            detach_receiver(old, replaced());
                        }
                    }
                }
            }
            delivery = next_request(&mut session.requests), if session.requests.is_some() => {
                match delivery {
                    Ok(delivery) => {
                        if let Err(e) = session.answer(delivery).await {
                            tracing::info!(%peer, error = %e, "AMQP session ended");
                            break None;
                        }
                    }
                    Err(e) => {
                        // The link was detached (by the device, or for a message over the size
                        // limit); the session goes on and the device may attach another.
                        tracing::debug!(%peer, error = %e, "AMQP request link ended");
                        session.requests = None;
                    }
                }
            }
        }
    };
    if let Some(error) = reason {
        tracing::info!(%peer, error = %error, "AMQP session refused");
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, handle.end_with_error(error)).await;
    } else {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, handle.end()).await;
    }
}

/// Why a session could not answer a request.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error("cannot settle the request: {0}")]
    Disposition(#[from] fe2o3_amqp::link::DispositionError),
    #[error("cannot send the answer: {0}")]
    Send(#[from] fe2o3_amqp::link::SendError),
    #[error("the device took more than {0:?} to take the answer")]
    Timeout(std::time::Duration),
}

struct Session {
    app: App,
    device: Arc<Device>,
    limits: Limits,
    /// Our receiver: the device's sender link, carrying its requests.
    requests: Option<Receiver>,
    /// Our sender: the device's receiver link, for the answers.
    answers: Option<Sender>,
    /// The device the requests link's address names, when it is not the one that authenticated.
    requester: Option<Arc<Device>>,
}

impl Session {
    /// The device a link's address names (`{idScope}/registrations/{registrationId}`, bare or as
    /// `amqps://{host}/…`), or why the link may not be attached.
    fn check_attach(&self, attach: &Attach) -> Result<DeviceIdentity, definitions::Error> {
        // The device's sender link names us as its target, its receiver link as its source.
        let address = match attach.role {
            Role::Sender => attach.target.as_deref().and_then(|t| match t {
                TargetArchetype::Target(t) => t.address.as_deref(),
                #[allow(unreachable_patterns)]
                _ => None,
            }),
            Role::Receiver => attach.source.as_deref().and_then(|s| s.address.as_deref()),
        };
        let Some(address) = address else {
            return Err(connection::amqp_error(
                AmqpError::NotFound,
                Some(
                    "the link has no address; attach at {idScope}/registrations/{registrationId}"
                        .into(),
                ),
            ));
        };
        match dps::parse_link_address(address) {
            Ok(parsed) => {
                // The attach property's api-version is checked as the HTTPS query's is; one that
                // is absent is accepted.
                let version = api_version(attach);
                if let Some(version) = &version
                    && let Err(e) = Api::Device.check(Some(version))
                {
                    return Err(self.device.refuse(&e.into()));
                }
                tracing::debug!(link = %attach.name, api_version = ?version, "AMQP link attached");
                Ok(parsed.identity)
            }
            Err(e) => Err(connection::amqp_error(
                AmqpError::NotFound,
                Some(e.to_string()),
            )),
        }
    }

    /// Answers one request: accepted and answered on the device's receiver link, or rejected
    /// with the DPS error.
    async fn answer(&mut self, delivery: Delivery<Body<Value>>) -> Result<(), AnswerError> {
        // Who the requests are from: the device the requests link names.
        let requester = Arc::clone(self.requester.as_ref().unwrap_or(&self.device));
        let Some(requests) = &self.requests else {
            return Ok(());
        };
        let Some(answers) = &mut self.answers else {
            let error = connection::amqp_error(
                AmqpError::NotAllowed,
                Some("attach a receiver link at your address before sending requests".into()),
            );
            requests.reject(&delivery, error).await?;
            return Ok(());
        };
        let message = delivery.message();
        let result = match read_request(message) {
            Ok(Request::Register { .. }) => {
                match registration::parse_registration_body(&body_bytes(&message.body)) {
                    Ok(body) => registration::register(&self.app, requester.request(), &body).await,
                    Err(e) => Err(e),
                }
            }
            // Poll bodies differ per SDK (Node: an empty string value; C: the registration
            // JSON again): ignored.
            Ok(Request::OperationStatus { operation_id }) => {
                registration::operation_status(&self.app, requester.request(), &operation_id).await
            }
            Err(e) => Err(ApiError::NoRoute(e.to_string())),
        };
        let status = match result {
            Ok(status) => status,
            Err(e) => {
                requests.reject(&delivery, self.device.refuse(&e)).await?;
                return Ok(());
            }
        };
        let (_, retry_after) = registration::response_status(&self.app, &status);
        let properties = message.properties.as_ref();
        // Node matches answers on correlation_id; a request without one (C) is answered with its
        // message_id, or nothing.
        let correlation_id = properties
            .and_then(|p| p.correlation_id.clone())
            .or_else(|| properties.and_then(|p| p.message_id.clone()));
        let mut application_properties = ApplicationProperties::default();
        if let Some(secs) = retry_after {
            let secs = SimpleValue::Int(i32::try_from(secs).unwrap_or(i32::MAX));
            application_properties.insert(dps::RETRY_AFTER.to_owned(), secs.clone());
            application_properties.insert(dps::RETRY_AFTER_DOTNET.to_owned(), secs);
        }
        let body = serde_json::to_vec(&status).unwrap_or_else(|_| b"{}".to_vec());
        let answer = Message::builder()
            .properties(Properties {
                correlation_id,
                content_type: Some("application/json".into()),
                ..Properties::default()
            })
            .application_properties(application_properties)
            .data(Data(Binary::from(body)))
            .build();
        requests.accept(&delivery).await?;
        let timeout = self.limits.answer_timeout;
        match tokio::time::timeout(timeout, answers.send(answer)).await {
            Ok(outcome) => {
                outcome?;
                Ok(())
            }
            Err(_) => Err(AnswerError::Timeout(timeout)),
        }
    }
}

/// The next request on the device's sender link; pending forever when there is none (the
/// `select!` branch is disabled then).
async fn next_request(
    requests: &mut Option<Receiver>,
) -> Result<Delivery<Body<Value>>, fe2o3_amqp::link::RecvError> {
    match requests {
        Some(r) => r.recv::<Body<Value>>().await,
        None => std::future::pending().await,
    }
}

/// The request's operation, from its application properties.
fn read_request<B>(message: &Message<B>) -> Result<Request, dps::AmqpDpsError> {
    let property = |key: &str| {
        message
            .application_properties
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(text_of)
    };
    dps::parse_request(
        property(dps::OPERATION_TYPE).as_deref(),
        property(dps::OPERATION_ID).as_deref(),
        property(dps::FORCE_REGISTRATION).as_deref(),
    )
}

/// The text of a property value: strings and symbols as they are, booleans as `true`/`false`.
fn text_of(value: &SimpleValue) -> Option<String> {
    match value {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.as_str().to_owned()),
        SimpleValue::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The bytes of a request body: its data sections (Node's register, C), or a string or binary
/// value (Node's poll sends an empty string).
fn body_bytes(body: &Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.clone().into_bytes(),
            Value::Binary(b) => b.to_vec(),
            Value::Null => Vec::new(),
            // Not JSON text: the registration core refuses it as invalid JSON.
            _ => b"\0".to_vec(),
        },
        Body::Empty => Vec::new(),
        Body::Sequence(_) => b"\0".to_vec(),
    }
}

/// The `com.microsoft:api-version` attach property, for the log.
fn api_version(attach: &Attach) -> Option<String> {
    let properties = attach.properties.as_ref()?;
    properties
        .iter()
        .find(|(k, _)| k.as_str() == dps::API_VERSION_PROPERTY)
        .and_then(|(_, v)| match v {
            Value::String(s) => Some(s.clone()),
            Value::Symbol(s) => Some(s.as_str().to_owned()),
            _ => None,
        })
}

fn replaced() -> definitions::Error {
    connection::amqp_error(
        AmqpError::ResourceLimitExceeded,
        Some("replaced by a newer link at the same address".into()),
    )
}

/// Detaches a link with an error, in the background: the peer's Detach is awaited for at most
/// [`CLOSE_TIMEOUT`], and the session goes on meanwhile.
fn detach_sender(link: Sender, error: definitions::Error) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.close_with_error(error)).await;
    });
}

/// As [`detach_sender`], for our receiving end of a link.
fn detach_receiver(link: Receiver, error: definitions::Error) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.close_with_error(error)).await;
    });
}
