//! The Usher server: sockets, TLS, HTTP and storage around the pure `usher-proto` core.
#![forbid(unsafe_code)]
