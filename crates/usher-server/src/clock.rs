//! The clock and fresh identifiers, for the domain modules. (The pure core takes time and random
//! values as parameters; this is where the server draws them.)

use time::OffsetDateTime;

/// The current UTC time.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The current time in DPS's timestamp format.
pub fn now_text() -> String {
    usher_proto::model::format_timestamp(now())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    u64::try_from(now().unix_timestamp()).unwrap_or(0)
}

/// A new opaque etag, shaped like DPS's (base64 of a quoted identifier).
pub fn new_etag() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\"{}\"", uuid::Uuid::new_v4()))
}
