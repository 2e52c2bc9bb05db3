//! The pure protocol core of Usher, a self-hosted Device Provisioning Service.
//!
//! Nothing in this crate performs I/O, reads a clock or draws random bytes: the current time and
//! any random material are parameters. Given the same inputs, every function gives the same output,
//! which is what lets the server, the device library and the tests share one implementation.
//!
//! # Layout
//! - [`sas`]: `SharedAccessSignature` tokens: parse, build, verify (device and service flavours).
//! - [`keys`]: symmetric keys, group-key derivation, key generation from injected random bytes.
//! - [`ids`]: registration IDs and ID scopes.
//! - [`model`]: the device-API wire JSON (`DeviceRegistration`, `RegistrationOperationStatus`, …).
//! - [`error_code`]: the one catalogue of six-digit DPS error codes and their HTTP statuses.
//! - [`service`]: the management-API wire model (enrollments, groups, attestation).
//! - [`decision`]: the registration decision (hub, device ID, substatus, identity plans).
//! - [`audit`]: audit-log entries and their hash chain.
//! - [`allocation`]: choosing a hub (weighted rendezvous hashing).
//! - [`amqp`]: the DPS grammar inside AMQP 1.0 (SASL PLAIN identity, link addresses, request properties).
//! - [`api_version`]: the `api-version` values each API accepts.
//! - [`mqtt`]: a sans-IO MQTT 3.1.1 codec for the subset DPS uses, and the DPS topic grammar.
//! - [`query`]: the management API's query language (DPS's `SELECT *`, plus `WHERE` filters).
//! - [`throttle`]: failure budgets (GCRA) with time passed in.
//! - [`ttl`]: human durations (`90s`, `15m`, `1h`, `7d`) for token lifetimes.
#![forbid(unsafe_code)]

pub mod allocation;
pub mod amqp;
pub mod api_version;
pub mod audit;
pub mod decision;
pub mod error_code;
pub mod ids;
pub mod keys;
pub mod model;
pub mod mqtt;
pub mod query;
pub mod sas;
pub mod service;
pub mod throttle;
pub mod ttl;

pub use error_code::ErrorCode;
pub use ids::{IdError, IdScope, RegistrationId};
pub use keys::{KeyError, SymmetricKey};
pub use sas::{SasError, SasToken};
