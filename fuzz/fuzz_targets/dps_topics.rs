//! The DPS topic and user-name parsers never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usher_proto::mqtt::dps;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = dps::parse_request(text);
        let _ = dps::parse_username(text);
        let _ = dps::parse_response(text);
    }
});
