//! The device side of DPS: what a device holds (a registration ID and a key) and what it sends.
//!
//! The CLI, the integration tests and the load generator all provision through this crate.
#![forbid(unsafe_code)]

pub mod credential;
pub mod http;

pub use credential::{Credential, CredentialError};
