//! The MQTT decoder never panics, and whatever it decodes re-encodes to bytes that decode to the
//! same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usher_proto::mqtt::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((packet, used))) = decode(rest, 1 << 20) {
        let mut again = Vec::new();
        encode(&packet, &mut again);
        let (round, _) = decode(&again, 1 << 20).expect("re-encoded packet decodes").expect("complete");
        assert_eq!(round, packet);
        rest = &rest[used..];
    }
});
