//! A sans-IO codec for the MQTT 3.1.1 subset DPS devices speak.
//!
//! [`decode`] takes whatever bytes have arrived and returns a packet and how many bytes it used, or
//! `Ok(None)` when more bytes are needed; [`encode`] appends a packet's bytes to a buffer. Nothing
//! here touches a socket, so TLS, WebSockets and in-memory tests are all just byte sources.
//!
//! The decoder is strict where DPS needs it to be: a maximum packet size checked from the fixed
//! header before anything is buffered, no QoS 2, no packet identifier 0, no trailing bytes, no
//! wildcards in published topics, valid UTF-8 without U+0000 in every string.

mod codec;
pub mod dps;

pub use codec::{DecodeError, decode, encode};

/// MQTT 3.1.1's protocol level.
pub const PROTOCOL_LEVEL: u8 = 4;

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// A CONNACK return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    pub fn from_byte(b: u8) -> Option<Self> {
        [
            Self::Accepted,
            Self::UnacceptableProtocolVersion,
            Self::IdentifierRejected,
            Self::ServerUnavailable,
            Self::BadUserNameOrPassword,
            Self::NotAuthorized,
        ]
        .into_iter()
        .find(|c| *c as u8 == b)
    }
}

/// A will message (DPS devices send none; it is decoded and ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub message: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol name as sent (`MQTT` for 3.1.1).
    pub protocol_name: String,
    pub protocol_level: u8,
    pub clean_session: bool,
    /// Seconds; 0 turns keep-alive off (the C SDK sends 0).
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    /// Present exactly when `qos` is above 0.
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

/// A packet of the subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck {
        session_present: bool,
        code: ConnectReturnCode,
    },
    Publish(Publish),
    PubAck {
        packet_id: u16,
    },
    Subscribe {
        packet_id: u16,
        filters: Vec<(String, QoS)>,
    },
    /// Return codes: granted QoS (0–2) or 0x80 for failure.
    SubAck {
        packet_id: u16,
        return_codes: Vec<u8>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    UnsubAck {
        packet_id: u16,
    },
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    /// The packet's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck { .. } => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck { .. } => "PUBACK",
            Self::Subscribe { .. } => "SUBSCRIBE",
            Self::SubAck { .. } => "SUBACK",
            Self::Unsubscribe { .. } => "UNSUBSCRIBE",
            Self::UnsubAck { .. } => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

#[cfg(test)]
mod tests;
