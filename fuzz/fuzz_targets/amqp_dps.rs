//! The DPS strings inside AMQP (SASL PLAIN response, user name, link address, request properties)
//! and the frame guard in front of fe2o3-amqp never panic, whatever the bytes and however they
//! are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usher_proto::amqp;

fuzz_target!(|data: &[u8]| {
    let mut guard = amqp::FrameGuard::new();
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    for chunk in data.chunks(split) {
        if guard.check(chunk).is_err() {
            break;
        }
    }
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
