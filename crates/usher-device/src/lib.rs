//! The device side of DPS: what a device holds (a registration ID and a key) and the registration
//! flow over HTTPS, MQTT, AMQP and both over WebSockets.
//!
//! The CLI (`usher provision`), the integration tests and the load generator all provision through
//! this crate. The flow (register, poll while `assigning`, honour `Retry-After`) is written once in
//! [`Client::provision`]; the transports only exchange one request for one answer.
#![forbid(unsafe_code)]

mod amqp;
mod client;
pub mod credential;
mod http;
mod mqtt;
mod tls;

pub use client::{
    API_VERSION, Client, Connection, DEFAULT_RETRY_AFTER, Endpoint, Progress, ProvisionError,
    Transport,
};
pub use credential::{ClientCertificate, Credential, CredentialError};
