//! Decoding and encoding, in the rustls `Codec`/`Reader` style: a cursor over a borrowed slice whose
//! every read names what it was reading, so errors say what was missing.

use super::{Connect, ConnectReturnCode, Packet, Publish, QoS, Will};

/// The largest remaining length the variable-length encoding can express.
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Why bytes are not a valid packet. The connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the remaining length uses more than four bytes")]
    MalformedRemainingLength,
    #[error("the packet is {size} bytes; at most {max} are accepted")]
    PacketTooLarge { size: usize, max: usize },
    #[error("packet type {0} is reserved or not supported")]
    UnsupportedPacketType(u8),
    #[error("{packet} has invalid fixed-header flags {flags:#06b}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    #[error("the packet ends inside {0}")]
    Truncated(&'static str),
    #[error("{0} is not valid UTF-8 or contains U+0000")]
    InvalidString(&'static str),
    #[error("{0} has an invalid QoS")]
    InvalidQos(&'static str),
    #[error("QoS 2 is not supported")]
    QoS2NotSupported,
    #[error("{0} carries packet identifier 0")]
    ZeroPacketId(&'static str),
    #[error("{0} has bytes after its end")]
    TrailingBytes(&'static str),
    #[error("the CONNECT flags have the reserved bit set or an inconsistent will")]
    InvalidConnectFlags,
    #[error("a password without a user name")]
    PasswordWithoutUsername,
    #[error("{0} lists no topic filter")]
    NoTopicFilters(&'static str),
    #[error("the published topic is empty or contains a wildcard")]
    InvalidTopic,
    #[error("the CONNACK return code {0} is unknown")]
    UnknownReturnCode(u8),
}

/// Decodes one packet from the front of `buf`. Returns the packet and the number of bytes it used,
/// or `Ok(None)` if `buf` does not yet hold a whole packet. A packet whose declared size exceeds
/// `max_packet` is refused as soon as its fixed header is seen.
pub fn decode(buf: &[u8], max_packet: usize) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining += usize::from(byte & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header_len == 5 {
            return Err(DecodeError::MalformedRemainingLength);
        }
    }
    let size = header_len + remaining;
    if size > max_packet {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet,
        });
    }
    let Some(body) = buf.get(header_len..size) else {
        return Ok(None);
    };
    let packet = decode_body(first >> 4, first & 0x0f, body)?;
    Ok(Some((packet, size)))
}

fn decode_body(kind: u8, flags: u8, body: &[u8]) -> Result<Packet, DecodeError> {
    let mut r = Reader { buf: body, pos: 0 };
    let expect_flags = |packet: &'static str, want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::InvalidFlags { packet, flags })
        }
    };
    let packet = match kind {
        1 => {
            expect_flags("CONNECT", 0)?;
            Packet::Connect(Box::new(connect(&mut r)?))
        }
        2 => {
            expect_flags("CONNACK", 0)?;
            let ack = r.u8("CONNACK flags")?;
            let code = r.u8("CONNACK return code")?;
            Packet::ConnAck {
                session_present: ack & 1 == 1,
                code: ConnectReturnCode::from_byte(code)
                    .ok_or(DecodeError::UnknownReturnCode(code))?,
            }
        }
        3 => Packet::Publish(publish(flags, &mut r)?),
        4 => {
            expect_flags("PUBACK", 0)?;
            Packet::PubAck {
                packet_id: r.packet_id("PUBACK")?,
            }
        }
        5..=7 => return Err(DecodeError::QoS2NotSupported),
        8 => {
            expect_flags("SUBSCRIBE", 0b0010)?;
            let packet_id = r.packet_id("SUBSCRIBE")?;
            let mut filters = Vec::new();
            while !r.at_end() {
                let filter = r.string("SUBSCRIBE topic filter")?;
                let qos = r.u8("SUBSCRIBE requested QoS")?;
                let qos = QoS::from_bits(qos)
                    .filter(|_| qos & 0xfc == 0)
                    .ok_or(DecodeError::InvalidQos("SUBSCRIBE"))?;
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return Err(DecodeError::NoTopicFilters("SUBSCRIBE"));
            }
            Packet::Subscribe { packet_id, filters }
        }
        9 => {
            expect_flags("SUBACK", 0)?;
            let packet_id = r.packet_id("SUBACK")?;
            Packet::SubAck {
                packet_id,
                return_codes: r.rest().to_vec(),
            }
        }
        10 => {
            expect_flags("UNSUBSCRIBE", 0b0010)?;
            let packet_id = r.packet_id("UNSUBSCRIBE")?;
            let mut filters = Vec::new();
            while !r.at_end() {
                filters.push(r.string("UNSUBSCRIBE topic filter")?);
            }
            if filters.is_empty() {
                return Err(DecodeError::NoTopicFilters("UNSUBSCRIBE"));
            }
            Packet::Unsubscribe { packet_id, filters }
        }
        11 => {
            expect_flags("UNSUBACK", 0)?;
            Packet::UnsubAck {
                packet_id: r.packet_id("UNSUBACK")?,
            }
        }
        12 => {
            expect_flags("PINGREQ", 0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags("PINGRESP", 0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags("DISCONNECT", 0)?;
            Packet::Disconnect
        }
        other => return Err(DecodeError::UnsupportedPacketType(other)),
    };
    r.expect_end(packet.name())?;
    Ok(packet)
}

fn connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let protocol_name = r.string("CONNECT protocol name")?;
    let protocol_level = r.u8("CONNECT protocol level")?;
    let flags = r.u8("CONNECT flags")?;
    let keep_alive = r.u16("CONNECT keep-alive")?;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    if flags & 1 != 0 || (!will_flag && (will_qos != 0 || will_retain)) || will_qos == 3 {
        return Err(DecodeError::InvalidConnectFlags);
    }
    let has_username = flags & 0b1000_0000 != 0;
    let has_password = flags & 0b0100_0000 != 0;
    if has_password && !has_username {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let client_id = r.string("CONNECT client identifier")?;
    let will = if will_flag {
        Some(Will {
            topic: r.string("CONNECT will topic")?,
            message: r.binary("CONNECT will message")?.to_vec(),
            qos: QoS::from_bits(will_qos).ok_or(DecodeError::InvalidConnectFlags)?,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("CONNECT user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("CONNECT password")?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        protocol_name,
        protocol_level,
        clean_session: flags & 0b10 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn publish(flags: u8, r: &mut Reader<'_>) -> Result<Publish, DecodeError> {
    let qos = match (flags >> 1) & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => return Err(DecodeError::QoS2NotSupported),
        _ => return Err(DecodeError::InvalidQos("PUBLISH")),
    };
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::InvalidFlags {
            packet: "PUBLISH",
            flags,
        });
    }
    let topic = r.string("PUBLISH topic")?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(DecodeError::InvalidTopic);
    }
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id("PUBLISH")?)
    };
    Ok(Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        payload: r.rest().to_vec(),
    })
}

/// A cursor over a packet body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(what))?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated(what))?;
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn packet_id(&mut self, packet: &'static str) -> Result<u16, DecodeError> {
        match self.u16(packet)? {
            0 => Err(DecodeError::ZeroPacketId(packet)),
            id => Ok(id),
        }
    }

    fn binary(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.binary(what)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidString(what))?;
        if text.contains('\0') {
            return Err(DecodeError::InvalidString(what));
        }
        Ok(text.to_owned())
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn expect_end(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(what))
        }
    }
}

/// Appends the encoding of `packet` to `out`. Never panics.
///
/// The types do not bound lengths, so callers keep packets within the protocol's limits: a string
/// or binary field longer than 65,535 bytes is cut to that length, and a body longer than the
/// largest remaining length (268,435,455 bytes) gets a wrong length prefix. Usher encodes only
/// topics and payloads it built itself, all far below both limits.
pub fn encode(packet: &Packet, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    let first: u8 = match packet {
        Packet::Connect(c) => {
            put_str(&mut body, &c.protocol_name);
            body.push(c.protocol_level);
            let mut flags = 0u8;
            if c.clean_session {
                flags |= 0b10;
            }
            if let Some(w) = &c.will {
                flags |= 0b100 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0b0010_0000;
                }
            }
            if c.username.is_some() {
                flags |= 0b1000_0000;
            }
            if c.password.is_some() {
                flags |= 0b0100_0000;
            }
            body.push(flags);
            body.extend_from_slice(&c.keep_alive.to_be_bytes());
            put_str(&mut body, &c.client_id);
            if let Some(w) = &c.will {
                put_str(&mut body, &w.topic);
                put_bin(&mut body, &w.message);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u);
            }
            if let Some(p) = &c.password {
                put_bin(&mut body, p);
            }
            0x10
        }
        Packet::ConnAck {
            session_present,
            code,
        } => {
            body.push(u8::from(*session_present));
            body.push(*code as u8);
            0x20
        }
        Packet::Publish(p) => {
            put_str(&mut body, &p.topic);
            if let Some(id) = p.packet_id {
                body.extend_from_slice(&id.to_be_bytes());
            }
            body.extend_from_slice(&p.payload);
            0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck { packet_id } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            0x40
        }
        Packet::Subscribe { packet_id, filters } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            for (f, q) in filters {
                put_str(&mut body, f);
                body.push(*q as u8);
            }
            0x82
        }
        Packet::SubAck {
            packet_id,
            return_codes,
        } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            body.extend_from_slice(return_codes);
            0x90
        }
        Packet::Unsubscribe { packet_id, filters } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            for f in filters {
                put_str(&mut body, f);
            }
            0xa2
        }
        Packet::UnsubAck { packet_id } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect => 0xe0,
    };
    out.push(first);
    let mut len = body.len().min(MAX_REMAINING_LENGTH);
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
}

fn put_bin(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bin(out, text.as_bytes());
}
