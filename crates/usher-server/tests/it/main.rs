//! Integration tests: one binary; every test starts a real server on a loopback port with its own
//! data directory and talks to it over TLS.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod allocation;
mod amqp;
mod console;
mod device;
mod exposure;
mod fidelity;
mod management;
mod mqtt;
mod ops;
mod parity;
mod support;
mod testing_modes;
mod x509;
