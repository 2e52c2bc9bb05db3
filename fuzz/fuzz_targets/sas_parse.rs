//! The SAS token parser never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usher_proto::SasToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SasToken::parse(text);
    }
});
