//! The DPS strings inside AMQP (SASL PLAIN response, user name, link address, request properties)
//! never panic the parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usher_proto::amqp;

fuzz_target!(|data: &[u8]| {
    if let Ok(plain) = amqp::parse_sasl_plain(data) {
        let _ = amqp::parse_identity(plain.authcid);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = amqp::parse_identity(text);
        let _ = amqp::parse_link_address(text);
        let mut parts = text.splitn(3, '\n');
        let _ = amqp::parse_request(parts.next(), parts.next(), parts.next());
    }
});
