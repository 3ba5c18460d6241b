//! Incremental decoder.
//!
//! The fixed header is read from a plain slice first: an incomplete packet costs nothing and
//! consumes nothing, and an oversize one is refused from its first five bytes, before its body
//! is buffered. A complete packet is split off the input as one `Bytes`, and every string and
//! payload of the decoded packet is a slice of it (zero-copy).
//!
//! The decoder is strict: whatever either spec requires of a receiver is checked here, and each
//! failure is a `DecodeError` naming the statement. The encoder refuses the same things, so a
//! packet that encodes decodes back to itself.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};

use super::error::{DecodeError, StringError};
use super::packet::*;
use super::properties as prop;
use super::strings::{check_topic_name, is_plain_topic_name};

/// Largest remaining length the wire format can express (4-byte variable byte integer).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Largest packet the wire format can express: fixed header byte, 4-byte remaining length,
/// and the largest remaining length.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 268_435_455 + 5;

/// Decodes one packet from the front of `buf`. `Ok(None)`: incomplete, nothing consumed.
/// `Ok(Some(p))`: the packet's bytes were split off `buf` (zero-copy into `p`'s `Bytes`).
/// A packet whose total size exceeds `max_packet_size` is refused from its fixed header.
/// After an error the connection must be closed; the packet's bytes may have been consumed.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    if let Some((header, plan)) = publish_fast_plan(buf, version, max_packet_size) {
        // One split of the input and one slice of the frame: two refcount increments, as
        // for two split_to calls, but the BytesMut bookkeeping runs once.
        let total = header.header_len + header.remaining;
        let mut frame = buf.split_to(total).freeze();
        let topic = frame.slice(plan.topic.clone());
        bytes::Buf::advance(&mut frame, plan.payload_start);
        return Ok(Some(fast_publish(header.first, &plan, topic, frame)));
    }
    decode_general(buf, version, max_packet_size)
}

/// `decode` for whatever the fast path does not take: every packet type, errors, incomplete
/// input. Kept out of line so that the fast path's caller does not pay for its stack frame.
#[inline(never)]
fn decode_general(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = fixed_header(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    let total = header.header_len + header.remaining;
    if buf.len() < total {
        return Ok(None);
    }
    prefetch_next(buf, total);
    if header.packet_type == PacketType::Publish && !tracing() {
        if let Some(plan) = publish_fast(&buf[..total], header, version) {
            let mut frame = buf.split_to(total).freeze();
            let topic = frame.slice(plan.topic.clone());
            bytes::Buf::advance(&mut frame, plan.payload_start);
            return Ok(Some(fast_publish(header.first, &plan, topic, frame)));
        }
    }
    let frame = buf.split_to(total).freeze();
    decode_frame(header, frame, version).map(Some)
}

/// The fast path's whole check of a complete PUBLISH at the front of `buf` whose remaining
/// length takes one or two bytes (every PUBLISH up to 16 KiB) and which has no properties.
/// `None` for anything else (another type, a longer or non-minimal length, an incomplete or
/// malformed packet): the general path reads it again and reports the precise error. The fixed
/// header is checked exactly as `fixed_header` and `packet_type` check it, without building a
/// `Result` in memory.
#[inline(always)]
fn publish_fast_plan(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Option<(FixedHeader, FastPublish)> {
    if tracing() {
        return None;
    }
    let (&[first, length_1], rest) = buf.split_first_chunk::<2>()?;
    let qos = (first >> 1) & 0x03;
    // PUBLISH; not QoS 3 [MQTT-3.3.1-4]; no DUP on QoS 0 [MQTT-3.3.1-2].
    if first >> 4 != 3 || qos == 3 || (qos == 0 && first & 0x08 != 0) {
        return None;
    }
    let (header_len, remaining) = if length_1 < 0x80 {
        (2, usize::from(length_1))
    } else {
        let &length_2 = rest.first()?;
        // A third length byte, or a non-minimal second one: the general path.
        if length_2 >= 0x80 || length_2 == 0 {
            return None;
        }
        (3, usize::from(length_1 & 0x7F) | usize::from(length_2) << 7)
    };
    let total = header_len + remaining;
    if total as u64 > u64::from(max_packet_size) || buf.len() < total {
        return None;
    }
    prefetch_next(buf, total);
    let header = FixedHeader {
        first,
        packet_type: PacketType::Publish,
        header_len,
        remaining,
    };
    let plan = publish_fast(&buf[..total], header, version)?;
    Some((header, plan))
}

/// How many packets ahead `prefetch_next` guesses, assuming the packets that follow are as long
/// as this one. A large buffer of packets is a chain of dependent loads (each packet's position
/// is known only once the previous length is read), so without the guess every packet of a
/// buffer that is not in cache waits for memory in full; with it, the next few are on their way.
/// Four packets cover a memory latency of about four packets' decode time.
const PREFETCH_PACKETS_AHEAD: usize = 4;

/// Bytes of a packet's front that the fast path reads (fixed header, topic length, a topic of
/// up to ~40 bytes, packet id): the second cache line is asked for too, as such a front crosses
/// a line boundary more often than not.
const PREFETCH_FRONT_BYTES: usize = 48;

/// Asks the CPU for the next packet's first bytes now, and for those of the packet
/// `PREFETCH_PACKETS_AHEAD` further on if the packets are all of this one's length. The next
/// packet's address is known only once this packet's length is read, and the refcount updates
/// below (locked instructions) hold back every later load until they finish, so without the
/// hint each packet of a large buffer waits for memory in full. A wrong guess costs one wasted
/// line fetch; a buffer already in cache (the usual socket read buffer) costs a few
/// instructions.
#[inline(always)]
fn prefetch_next(buf: &[u8], total: usize) {
    prefetch_front(buf, total);
    prefetch_front(buf, total.saturating_mul(PREFETCH_PACKETS_AHEAD + 1));
}

#[inline(always)]
fn prefetch_front(buf: &[u8], at: usize) {
    prefetch(buf.get(at));
    prefetch(buf.get(at.saturating_add(PREFETCH_FRONT_BYTES)));
}

#[inline(always)]
fn prefetch(byte: Option<&u8>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(byte) = byte {
        // SAFETY: a prefetch is a hint; it cannot fault or change memory, and the address is
        // that of a byte we hold a reference to.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (byte as *const u8).cast::<i8>(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = byte;
}

/// The hot path's plan for a PUBLISH without properties: where its topic and payload lie in
/// the packet, so the caller can cut them from the packet's bytes directly (one scan of the
/// topic, no `Reader`). `None`: the packet has properties or is malformed; the
/// general path, which reports the precise error, takes it.
struct FastPublish {
    topic: std::ops::Range<usize>,
    payload_start: usize,
    qos_pid: QosPid,
}

#[inline(always)]
fn publish_fast(
    packet: &[u8],
    header: FixedHeader,
    version: ProtocolVersion,
) -> Option<FastPublish> {
    let body = &packet[header.header_len..];
    let (len_bytes, rest) = body.split_first_chunk::<2>()?;
    let topic_len = usize::from(u16::from_be_bytes(*len_bytes));
    if rest.len() < topic_len || topic_len == 0 {
        return None;
    }
    let (topic_bytes, rest) = rest.split_at(topic_len);
    if !is_plain_topic_name(topic_bytes) {
        check_topic_name(topic_bytes).ok()?;
    }
    let mut skip = 0;
    let qos_pid = match (header.first >> 1) & 0x03 {
        0 => QosPid::AtMostOnce,
        qos => {
            let id = NonZeroU16::new(u16::from_be_bytes(*rest.first_chunk::<2>()?))?;
            skip = 2;
            if qos == 1 {
                QosPid::AtLeastOnce(id)
            } else {
                QosPid::ExactlyOnce(id)
            }
        }
    };
    if version == ProtocolVersion::V5 {
        // Only an empty property block (one zero byte) stays on the fast path.
        if rest.get(skip) != Some(&0) {
            return None;
        }
        skip += 1;
    }
    if rest.len() < skip {
        return None;
    }
    let topic_start = header.header_len + 2;
    Some(FastPublish {
        topic: topic_start..topic_start + topic_len,
        payload_start: topic_start + topic_len + skip,
        qos_pid,
    })
}

/// The annotated snapshots record which field each byte was read as; only the general path
/// records, so they bypass the fast one.
#[inline(always)]
fn tracing() -> bool {
    #[cfg(test)]
    return trace::active();
    #[cfg(not(test))]
    false
}

/// Builds the PUBLISH of a fast-path plan from its split-off topic and payload.
#[inline]
fn fast_publish(first: u8, plan: &FastPublish, topic: Bytes, payload: Bytes) -> Packet {
    // SAFETY: publish_fast checked these bytes with check_topic_name: UTF-8, no U+0000.
    let topic = TopicName::from_checked(unsafe { MqttStr::from_bytes_unchecked(topic) });
    Packet::Publish(Publish {
        dup: first & 0x08 != 0,
        qos_pid: plan.qos_pid,
        retain: first & 0x01 != 0,
        topic,
        properties: PropertyBox::none(),
        payload,
    })
}

/// Decodes one packet from the front of `buf` without consuming it: returns the packet and the
/// number of bytes it occupied.
pub fn decode_slice(
    buf: &Bytes,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    if let Some((header, plan)) = publish_fast_plan(buf, version, max_packet_size) {
        let total = header.header_len + header.remaining;
        let topic = buf.slice(plan.topic.clone());
        let payload = buf.slice(plan.payload_start..total);
        return Ok(Some((
            fast_publish(header.first, &plan, topic, payload),
            total,
        )));
    }
    decode_slice_slow(buf, version, max_packet_size)
}

/// `decode_slice` for whatever the fast path does not take (see `decode_general`).
#[inline(never)]
fn decode_slice_slow(
    buf: &Bytes,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(header) = fixed_header(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    let total = header.header_len + header.remaining;
    if buf.len() < total {
        return Ok(None);
    }
    prefetch_next(buf, total);
    if header.packet_type == PacketType::Publish && !tracing() {
        if let Some(plan) = publish_fast(&buf[..total], header, version) {
            let topic = buf.slice(plan.topic.clone());
            let payload = buf.slice(plan.payload_start..total);
            return Ok(Some((
                fast_publish(header.first, &plan, topic, payload),
                total,
            )));
        }
    }
    let frame = buf.slice(..total);
    decode_frame(header, frame, version).map(|packet| Some((packet, total)))
}

/// `decode_slice` without the PUBLISH fast path: the fuzz targets and tests check that both
/// paths agree.
#[doc(hidden)]
pub fn decode_slice_general(
    buf: &Bytes,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(header) = fixed_header(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    let total = header.header_len + header.remaining;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = buf.slice(..total);
    decode_frame(header, frame, version).map(|packet| Some((packet, total)))
}

/// The first byte and the remaining length of a packet.
#[derive(Clone, Copy)]
struct FixedHeader {
    first: u8,
    packet_type: PacketType,
    header_len: usize,
    remaining: usize,
}

/// Reads the fixed header from the front of `buf`; `Ok(None)` when it is incomplete. Everything
/// the header alone can show to be wrong is refused here, without waiting for the body.
#[inline]
fn fixed_header(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = packet_type(first, version)?;
    let mut remaining: usize = 0;
    let mut index = 1;
    loop {
        if index > 4 {
            return Err(DecodeError::VarIntTooLong {
                field: "remaining length",
                version,
            });
        }
        let Some(&byte) = buf.get(index) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * (index - 1));
        index += 1;
        if byte & 0x80 == 0 {
            if byte == 0 && index > 2 && version == ProtocolVersion::V5 {
                return Err(DecodeError::NonMinimalVarInt {
                    field: "remaining length",
                });
            }
            break;
        }
    }
    let size = (index + remaining) as u64;
    if size > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(Some(FixedHeader {
        first,
        packet_type,
        header_len: index,
        remaining,
    }))
}

/// The packet type of a first byte, with its flags checked against the flag table
/// (3.1.1 2.2.2, 5.0 2.1.3).
#[inline]
fn packet_type(first: u8, version: ProtocolVersion) -> Result<PacketType, DecodeError> {
    let flags = first & 0x0F;
    let packet_type = match first >> 4 {
        1 => PacketType::Connect,
        2 => PacketType::ConnAck,
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::PublishQoS3);
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::DupOnQoS0);
            }
            return Ok(PacketType::Publish);
        }
        4 => PacketType::PubAck,
        5 => PacketType::PubRec,
        6 => PacketType::PubRel,
        7 => PacketType::PubComp,
        8 => PacketType::Subscribe,
        9 => PacketType::SubAck,
        10 => PacketType::Unsubscribe,
        11 => PacketType::UnsubAck,
        12 => PacketType::PingReq,
        13 => PacketType::PingResp,
        14 => PacketType::Disconnect,
        15 if version == ProtocolVersion::V5 => PacketType::Auth,
        type_bits => {
            return Err(DecodeError::ReservedPacketType { type_bits, version });
        }
    };
    let expected = match packet_type {
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(DecodeError::ReservedFlags {
            packet_type,
            flags,
            version,
        });
    }
    Ok(packet_type)
}

fn decode_frame(
    header: FixedHeader,
    frame: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let end = frame.len();
    let mut r = Reader {
        buf: frame,
        pos: header.header_len,
        end,
        version,
        packet_type: header.packet_type,
    };
    let packet = match header.packet_type {
        PacketType::Publish => return publish(&mut r, header.first).map(Packet::Publish),
        PacketType::Connect => Packet::Connect(Box::new(connect(&mut r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack(&mut r)?),
        PacketType::PubAck => Packet::PubAck(ack(&mut r, "PUBACK")?),
        PacketType::PubRec => Packet::PubRec(ack(&mut r, "PUBREC")?),
        PacketType::PubRel => Packet::PubRel(ack(&mut r, "PUBREL")?),
        PacketType::PubComp => Packet::PubComp(ack(&mut r, "PUBCOMP")?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(&mut r)?),
        PacketType::SubAck => Packet::SubAck(suback(&mut r)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(&mut r)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback(&mut r)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(disconnect(&mut r)?),
        PacketType::Auth => Packet::Auth(auth(&mut r)?),
    };
    r.finish()?;
    Ok(packet)
}

/// A cursor over the body of one packet (or over one property block).
struct Reader {
    buf: Bytes,
    pos: usize,
    end: usize,
    version: ProtocolVersion,
    packet_type: PacketType,
}

impl Reader {
    #[inline]
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn truncated(&self, field: &'static str) -> DecodeError {
        DecodeError::Truncated {
            packet_type: self.packet_type,
            field,
            version: self.version,
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.end {
            return Err(DecodeError::TrailingBytes {
                packet_type: self.packet_type,
                extra: self.remaining(),
                version: self.version,
            });
        }
        Ok(())
    }

    #[inline]
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        if self.pos >= self.end {
            return Err(self.truncated(field));
        }
        let value = self.buf[self.pos];
        #[cfg(test)]
        trace::record(self.pos, 1, field);
        self.pos += 1;
        Ok(value)
    }

    #[inline]
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        if self.remaining() < 2 {
            return Err(self.truncated(field));
        }
        let value = u16::from_be_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        #[cfg(test)]
        trace::record(self.pos, 2, field);
        self.pos += 2;
        Ok(value)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        if self.remaining() < 4 {
            return Err(self.truncated(field));
        }
        let b = &self.buf[self.pos..self.pos + 4];
        let value = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        #[cfg(test)]
        trace::record(self.pos, 4, field);
        self.pos += 4;
        Ok(value)
    }

    /// A variable byte integer (5.0 1.5.5): at most 4 bytes, shortest form [MQTT-1.5.5-1].
    fn var_int(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for index in 0..4 {
            let byte = self.u8(field)?;
            value |= u32::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                if byte == 0 && index > 0 {
                    return Err(DecodeError::NonMinimalVarInt { field });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::VarIntTooLong {
            field,
            version: self.version,
        })
    }

    #[inline]
    fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(self.truncated(field));
        }
        let bytes = self.buf.slice(self.pos..self.pos + len);
        #[cfg(test)]
        trace::record(self.pos, len, field);
        self.pos += len;
        Ok(bytes)
    }

    /// Binary data: a two-byte length, then that many bytes.
    #[inline]
    fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    #[inline]
    fn string(&mut self, field: &'static str) -> Result<MqttStr, DecodeError> {
        let bytes = self.binary(field)?;
        MqttStr::from_bytes(bytes).map_err(|error| self.string_error(field, error))
    }

    fn string_error(&self, field: &'static str, error: StringError) -> DecodeError {
        DecodeError::InvalidString {
            field,
            error,
            version: self.version,
        }
    }

    /// A topic name that may be empty (PUBLISH in 5.0 with a topic alias); callers check.
    #[inline]
    fn topic_name(&mut self, field: &'static str) -> Result<TopicName, DecodeError> {
        let bytes = self.binary(field)?;
        check_topic_name(&bytes).map_err(|error| self.string_error(field, error))?;
        // SAFETY: check_topic_name verified UTF-8 (and no U+0000, no wildcard).
        let s = unsafe { MqttStr::from_bytes_unchecked(bytes) };
        Ok(TopicName::from_checked(s))
    }

    /// A topic name that must not be empty [MQTT-4.7.3-1].
    fn non_empty_topic_name(&mut self, field: &'static str) -> Result<TopicName, DecodeError> {
        let topic = self.topic_name(field)?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopic { field });
        }
        Ok(topic)
    }

    fn topic_filter(&mut self) -> Result<TopicFilter, DecodeError> {
        const FIELD: &str = "topic filter";
        let s = self.string(FIELD)?;
        let filter = TopicFilter::from_str(s).map_err(|error| self.string_error(FIELD, error))?;
        if self.version == ProtocolVersion::V5 {
            check_shared_filter(filter.as_str())?;
        }
        Ok(filter)
    }

    #[inline]
    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        let id = self.u16("packet identifier")?;
        NonZeroU16::new(id).ok_or(DecodeError::ZeroPacketId {
            packet_type: self.packet_type,
            version: self.version,
        })
    }

    /// A reason code allowed in this packet type (5.0).
    fn reason_code(&mut self) -> Result<ReasonCode, DecodeError> {
        let code = self.u8("reason code")?;
        ReasonCode::from_u8(code)
            .filter(|reason| reason.allowed_in(self.packet_type))
            .ok_or(DecodeError::InvalidReasonCode {
                packet_type: self.packet_type,
                code,
            })
    }

    /// The property block (5.0 2.2.2): its length, then a reader over exactly its bytes.
    fn properties(&mut self) -> Result<Properties, DecodeError> {
        let len = self.var_int("property length")? as usize;
        if self.remaining() < len {
            return Err(self.truncated("properties"));
        }
        let block = Reader {
            buf: self.buf.clone(),
            pos: self.pos,
            end: self.pos + len,
            version: self.version,
            packet_type: self.packet_type,
        };
        self.pos += len;
        Ok(Properties(block))
    }

    fn rest(&mut self) -> Bytes {
        let bytes = self.buf.slice(self.pos..self.end);
        #[cfg(test)]
        trace::record(self.pos, self.end - self.pos, "payload");
        self.pos = self.end;
        bytes
    }
}

/// One decoded 5.0 property, its value checked against the range the spec allows.
enum Property {
    PayloadFormatIndicator(bool),
    MessageExpiryInterval(u32),
    ContentType(MqttStr),
    ResponseTopic(TopicName),
    CorrelationData(Bytes),
    SubscriptionIdentifier(NonZeroU32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(MqttStr),
    ServerKeepAlive(u16),
    AuthenticationMethod(MqttStr),
    AuthenticationData(Bytes),
    RequestProblemInformation(bool),
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(MqttStr),
    ServerReference(MqttStr),
    ReasonString(MqttStr),
    ReceiveMaximum(NonZeroU16),
    TopicAliasMaximum(u16),
    TopicAlias(NonZeroU16),
    MaximumQoS(QoS),
    RetainAvailable(bool),
    User(MqttStr, MqttStr),
    MaximumPacketSize(NonZeroU32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifierAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

impl Property {
    fn id(&self) -> u8 {
        use Property::*;
        match self {
            PayloadFormatIndicator(_) => prop::PAYLOAD_FORMAT_INDICATOR,
            MessageExpiryInterval(_) => prop::MESSAGE_EXPIRY_INTERVAL,
            ContentType(_) => prop::CONTENT_TYPE,
            ResponseTopic(_) => prop::RESPONSE_TOPIC,
            CorrelationData(_) => prop::CORRELATION_DATA,
            SubscriptionIdentifier(_) => prop::SUBSCRIPTION_IDENTIFIER,
            SessionExpiryInterval(_) => prop::SESSION_EXPIRY_INTERVAL,
            AssignedClientIdentifier(_) => prop::ASSIGNED_CLIENT_IDENTIFIER,
            ServerKeepAlive(_) => prop::SERVER_KEEP_ALIVE,
            AuthenticationMethod(_) => prop::AUTHENTICATION_METHOD,
            AuthenticationData(_) => prop::AUTHENTICATION_DATA,
            RequestProblemInformation(_) => prop::REQUEST_PROBLEM_INFORMATION,
            WillDelayInterval(_) => prop::WILL_DELAY_INTERVAL,
            RequestResponseInformation(_) => prop::REQUEST_RESPONSE_INFORMATION,
            ResponseInformation(_) => prop::RESPONSE_INFORMATION,
            ServerReference(_) => prop::SERVER_REFERENCE,
            ReasonString(_) => prop::REASON_STRING,
            ReceiveMaximum(_) => prop::RECEIVE_MAXIMUM,
            TopicAliasMaximum(_) => prop::TOPIC_ALIAS_MAXIMUM,
            TopicAlias(_) => prop::TOPIC_ALIAS,
            MaximumQoS(_) => prop::MAXIMUM_QOS,
            RetainAvailable(_) => prop::RETAIN_AVAILABLE,
            User(..) => prop::USER_PROPERTY,
            MaximumPacketSize(_) => prop::MAXIMUM_PACKET_SIZE,
            WildcardSubscriptionAvailable(_) => prop::WILDCARD_SUBSCRIPTION_AVAILABLE,
            SubscriptionIdentifierAvailable(_) => prop::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            SharedSubscriptionAvailable(_) => prop::SHARED_SUBSCRIPTION_AVAILABLE,
        }
    }
}

/// A property block being read.
struct Properties(Reader);

impl Properties {
    fn next(&mut self) -> Result<Option<Property>, DecodeError> {
        let r = &mut self.0;
        if r.remaining() == 0 {
            return Ok(None);
        }
        let id = r.var_int("property identifier")?;
        let Ok(id) = u8::try_from(id) else {
            return Err(DecodeError::UnknownProperty { id });
        };
        use Property::*;
        let property = match id {
            prop::PAYLOAD_FORMAT_INDICATOR => PayloadFormatIndicator(flag(r, id)?),
            prop::MESSAGE_EXPIRY_INTERVAL => MessageExpiryInterval(r.u32("message expiry")?),
            prop::CONTENT_TYPE => ContentType(r.string("content type")?),
            prop::RESPONSE_TOPIC => ResponseTopic(r.non_empty_topic_name("response topic")?),
            prop::CORRELATION_DATA => CorrelationData(r.binary("correlation data")?),
            prop::SUBSCRIPTION_IDENTIFIER => {
                let value = r.var_int("subscription identifier")?;
                SubscriptionIdentifier(
                    NonZeroU32::new(value)
                        .ok_or(DecodeError::InvalidPropertyValue { id, value })?,
                )
            }
            prop::SESSION_EXPIRY_INTERVAL => SessionExpiryInterval(r.u32("session expiry")?),
            prop::ASSIGNED_CLIENT_IDENTIFIER => {
                AssignedClientIdentifier(r.string("assigned client identifier")?)
            }
            prop::SERVER_KEEP_ALIVE => ServerKeepAlive(r.u16("server keep alive")?),
            prop::AUTHENTICATION_METHOD => AuthenticationMethod(r.string("authentication method")?),
            prop::AUTHENTICATION_DATA => AuthenticationData(r.binary("authentication data")?),
            prop::REQUEST_PROBLEM_INFORMATION => RequestProblemInformation(flag(r, id)?),
            prop::WILL_DELAY_INTERVAL => WillDelayInterval(r.u32("will delay interval")?),
            prop::REQUEST_RESPONSE_INFORMATION => RequestResponseInformation(flag(r, id)?),
            prop::RESPONSE_INFORMATION => ResponseInformation(r.string("response information")?),
            prop::SERVER_REFERENCE => ServerReference(r.string("server reference")?),
            prop::REASON_STRING => ReasonString(r.string("reason string")?),
            prop::RECEIVE_MAXIMUM => {
                let value = r.u16("receive maximum")?;
                ReceiveMaximum(
                    NonZeroU16::new(value).ok_or(DecodeError::InvalidPropertyValue {
                        id,
                        value: u32::from(value),
                    })?,
                )
            }
            prop::TOPIC_ALIAS_MAXIMUM => TopicAliasMaximum(r.u16("topic alias maximum")?),
            prop::TOPIC_ALIAS => {
                let value = r.u16("topic alias")?;
                TopicAlias(NonZeroU16::new(value).ok_or(DecodeError::TopicAliasZero)?)
            }
            prop::MAXIMUM_QOS => {
                let value = r.u8("maximum qos")?;
                MaximumQoS(match value {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => {
                        return Err(DecodeError::InvalidPropertyValue {
                            id,
                            value: u32::from(value),
                        })
                    }
                })
            }
            prop::RETAIN_AVAILABLE => RetainAvailable(flag(r, id)?),
            prop::USER_PROPERTY => {
                let name = r.string("user property name")?;
                let value = r.string("user property value")?;
                User(name, value)
            }
            prop::MAXIMUM_PACKET_SIZE => {
                let value = r.u32("maximum packet size")?;
                MaximumPacketSize(
                    NonZeroU32::new(value)
                        .ok_or(DecodeError::InvalidPropertyValue { id, value })?,
                )
            }
            prop::WILDCARD_SUBSCRIPTION_AVAILABLE => WildcardSubscriptionAvailable(flag(r, id)?),
            prop::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                SubscriptionIdentifierAvailable(flag(r, id)?)
            }
            prop::SHARED_SUBSCRIPTION_AVAILABLE => SharedSubscriptionAvailable(flag(r, id)?),
            _ => return Err(DecodeError::UnknownProperty { id: u32::from(id) }),
        };
        Ok(Some(property))
    }
}

/// A byte property whose only values are 0 and 1.
fn flag(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
    match r.u8(super::error::property_name(id))? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(DecodeError::InvalidPropertyValue {
            id,
            value: u32::from(value),
        }),
    }
}

/// Stores a property that may appear at most once.
#[inline]
fn once<T>(
    slot: &mut Option<T>,
    value: T,
    id: u8,
    context: &'static str,
) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty { id, context });
    }
    *slot = Some(value);
    Ok(())
}

fn not_allowed(property: &Property, context: &'static str) -> DecodeError {
    DecodeError::PropertyNotAllowed {
        id: property.id(),
        context,
    }
}

/// Checks the form of a 5.0 shared subscription filter `$share/{ShareName}/{filter}`
/// [MQTT-4.8.2-1] [MQTT-4.8.2-2]. Other filters pass.
pub(crate) fn check_shared_filter(filter: &str) -> Result<(), DecodeError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(());
    };
    let invalid = || DecodeError::InvalidShareName {
        filter: filter.to_owned(),
    };
    let (share_name, inner) = rest.split_once('/').ok_or_else(invalid)?;
    if share_name.is_empty() {
        return Err(DecodeError::EmptyShareName {
            filter: filter.to_owned(),
        });
    }
    if share_name.contains(['+', '#']) || inner.is_empty() {
        return Err(invalid());
    }
    Ok(())
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary("protocol name")?;
    if &name[..] != b"MQTT" {
        if &name[..] == b"MQIsdp" {
            // MQTT 3.1: a known protocol at a level we do not speak.
            let level = r.u8("protocol level")?;
            return Err(DecodeError::UnsupportedProtocolVersion { level });
        }
        return Err(DecodeError::InvalidProtocolName {
            name: String::from_utf8_lossy(&name).into_owned(),
        });
    }
    let level = r.u8("protocol level")?;
    let protocol = ProtocolVersion::from_level(level)
        .ok_or(DecodeError::UnsupportedProtocolVersion { level })?;
    // From here on the CONNECT is read by its own version, whatever the caller assumed.
    r.version = protocol;
    let v5 = protocol == ProtocolVersion::V5;

    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag {
        if will_qos != 0 {
            return Err(DecodeError::WillQoSWithoutWill {
                qos: will_qos,
                version: protocol,
            });
        }
        if will_retain {
            return Err(DecodeError::WillRetainWithoutWill { version: protocol });
        }
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::WillQoS3 { version: protocol })?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUserName);
    }
    let keep_alive_secs = r.u16("keep alive")?;
    let properties = if v5 {
        connect_properties(r)?
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if v5 {
            will_properties(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.non_empty_topic_name("will topic")?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive_secs,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn connect_properties(r: &mut Reader) -> Result<ConnectProperties, DecodeError> {
    const CX: &str = "CONNECT";
    let mut block = r.properties()?;
    let mut p = ConnectProperties::default();
    while let Some(property) = block.next()? {
        let id = property.id();
        match property {
            Property::SessionExpiryInterval(v) => {
                once(&mut p.session_expiry_interval_secs, v, id, CX)?
            }
            Property::ReceiveMaximum(v) => once(&mut p.receive_maximum, v, id, CX)?,
            Property::MaximumPacketSize(v) => once(&mut p.maximum_packet_size, v, id, CX)?,
            Property::TopicAliasMaximum(v) => once(&mut p.topic_alias_maximum, v, id, CX)?,
            Property::RequestResponseInformation(v) => {
                once(&mut p.request_response_information, v, id, CX)?
            }
            Property::RequestProblemInformation(v) => {
                once(&mut p.request_problem_information, v, id, CX)?
            }
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::AuthenticationMethod(v) => once(&mut p.authentication_method, v, id, CX)?,
            Property::AuthenticationData(v) => once(&mut p.authentication_data, v, id, CX)?,
            other => return Err(not_allowed(&other, CX)),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod { context: CX });
    }
    Ok(p)
}

fn will_properties(r: &mut Reader) -> Result<WillProperties, DecodeError> {
    const CX: &str = "will properties";
    let mut block = r.properties()?;
    let mut p = WillProperties::default();
    while let Some(property) = block.next()? {
        let id = property.id();
        match property {
            Property::WillDelayInterval(v) => once(&mut p.will_delay_interval_secs, v, id, CX)?,
            Property::PayloadFormatIndicator(v) => once(&mut p.payload_format_utf8, v, id, CX)?,
            Property::MessageExpiryInterval(v) => {
                once(&mut p.message_expiry_interval_secs, v, id, CX)?
            }
            Property::ContentType(v) => once(&mut p.content_type, v, id, CX)?,
            Property::ResponseTopic(v) => once(&mut p.response_topic, v, id, CX)?,
            Property::CorrelationData(v) => once(&mut p.correlation_data, v, id, CX)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            other => return Err(not_allowed(&other, CX)),
        }
    }
    Ok(p)
}

fn connack(r: &mut Reader) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ConnAckReservedFlags {
            flags,
            version: r.version,
        });
    }
    let session_present = flags & 0x01 != 0;
    if r.version == ProtocolVersion::V311 {
        let code = r.u8("return code")?;
        let reason_code = ReasonCode::from_v311_connack(code)
            .ok_or(DecodeError::InvalidConnAckReturnCode { code })?;
        return Ok(ConnAck {
            session_present,
            reason_code,
            properties: PropertyBox::none(),
        });
    }
    let reason_code = r.reason_code()?;
    const CX: &str = "CONNACK";
    let mut block = r.properties()?;
    let mut p = ConnAckProperties::default();
    while let Some(property) = block.next()? {
        let id = property.id();
        match property {
            Property::SessionExpiryInterval(v) => {
                once(&mut p.session_expiry_interval_secs, v, id, CX)?
            }
            Property::ReceiveMaximum(v) => once(&mut p.receive_maximum, v, id, CX)?,
            Property::MaximumQoS(v) => once(&mut p.maximum_qos, v, id, CX)?,
            Property::RetainAvailable(v) => once(&mut p.retain_available, v, id, CX)?,
            Property::MaximumPacketSize(v) => once(&mut p.maximum_packet_size, v, id, CX)?,
            Property::AssignedClientIdentifier(v) => {
                once(&mut p.assigned_client_identifier, v, id, CX)?
            }
            Property::TopicAliasMaximum(v) => once(&mut p.topic_alias_maximum, v, id, CX)?,
            Property::ReasonString(v) => once(&mut p.reason_string, v, id, CX)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::WildcardSubscriptionAvailable(v) => {
                once(&mut p.wildcard_subscription_available, v, id, CX)?
            }
            Property::SubscriptionIdentifierAvailable(v) => {
                once(&mut p.subscription_identifiers_available, v, id, CX)?
            }
            Property::SharedSubscriptionAvailable(v) => {
                once(&mut p.shared_subscription_available, v, id, CX)?
            }
            Property::ServerKeepAlive(v) => once(&mut p.server_keep_alive_secs, v, id, CX)?,
            Property::ResponseInformation(v) => once(&mut p.response_information, v, id, CX)?,
            Property::ServerReference(v) => once(&mut p.server_reference, v, id, CX)?,
            Property::AuthenticationMethod(v) => once(&mut p.authentication_method, v, id, CX)?,
            Property::AuthenticationData(v) => once(&mut p.authentication_data, v, id, CX)?,
            other => return Err(not_allowed(&other, CX)),
        }
    }
    Ok(ConnAck {
        session_present,
        reason_code,
        properties: p.into(),
    })
}

#[inline]
fn publish(r: &mut Reader, first: u8) -> Result<Publish, DecodeError> {
    let dup = first & 0x08 != 0;
    let retain = first & 0x01 != 0;
    let topic = r.topic_name("topic name")?;
    let qos_pid = match (first >> 1) & 0x03 {
        0 => QosPid::AtMostOnce,
        1 => QosPid::AtLeastOnce(r.packet_id()?),
        // The fixed header check has refused QoS 3 already.
        _ => QosPid::ExactlyOnce(r.packet_id()?),
    };
    let properties = if r.version == ProtocolVersion::V5 {
        publish_properties(r)?.into()
    } else {
        PropertyBox::none()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicName);
    }
    Ok(Publish {
        dup,
        qos_pid,
        retain,
        topic,
        properties,
        payload: r.rest(),
    })
}

fn publish_properties(r: &mut Reader) -> Result<PublishProperties, DecodeError> {
    const CX: &str = "PUBLISH";
    let mut block = r.properties()?;
    let mut p = PublishProperties::default();
    while let Some(property) = block.next()? {
        let id = property.id();
        match property {
            Property::PayloadFormatIndicator(v) => once(&mut p.payload_format_utf8, v, id, CX)?,
            Property::MessageExpiryInterval(v) => {
                once(&mut p.message_expiry_interval_secs, v, id, CX)?
            }
            Property::TopicAlias(v) => once(&mut p.topic_alias, v, id, CX)?,
            Property::ResponseTopic(v) => once(&mut p.response_topic, v, id, CX)?,
            Property::CorrelationData(v) => once(&mut p.correlation_data, v, id, CX)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::SubscriptionIdentifier(v) => p.subscription_identifiers.push(v),
            Property::ContentType(v) => once(&mut p.content_type, v, id, CX)?,
            other => return Err(not_allowed(&other, CX)),
        }
    }
    Ok(p)
}

/// Reason string and user properties: the properties of the acknowledgements.
fn ack_properties(r: &mut Reader, context: &'static str) -> Result<AckProperties, DecodeError> {
    let mut block = r.properties()?;
    let mut p = AckProperties::default();
    while let Some(property) = block.next()? {
        let id = property.id();
        match property {
            Property::ReasonString(v) => once(&mut p.reason_string, v, id, context)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            other => return Err(not_allowed(&other, context)),
        }
    }
    Ok(p)
}

fn ack(r: &mut Reader, context: &'static str) -> Result<Ack, DecodeError> {
    let packet_id = r.packet_id()?;
    if r.version == ProtocolVersion::V311 {
        return Ok(Ack::new(packet_id));
    }
    // 5.0 3.4.2.1: a remaining length of 2 means Success and no properties; 3 means a reason
    // code and no properties.
    let reason_code = if r.remaining() == 0 {
        ReasonCode::Success
    } else {
        r.reason_code()?
    };
    let properties = if r.remaining() == 0 {
        PropertyBox::none()
    } else {
        ack_properties(r, context)?.into()
    };
    Ok(Ack {
        packet_id,
        reason_code,
        properties,
    })
}

fn subscribe(r: &mut Reader) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let v5 = r.version == ProtocolVersion::V5;
    let mut properties = SubscribeProperties::default();
    if v5 {
        const CX: &str = "SUBSCRIBE";
        let mut block = r.properties()?;
        while let Some(property) = block.next()? {
            let id = property.id();
            match property {
                Property::SubscriptionIdentifier(v) => {
                    once(&mut properties.subscription_identifier, v, id, CX)?
                }
                Property::User(k, v) => properties.user_properties.push((k, v)),
                other => return Err(not_allowed(&other, CX)),
            }
        }
    }
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.topic_filter()?;
        let byte = r.u8("subscription options")?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if byte & reserved != 0 {
            return Err(DecodeError::SubscriptionOptionsReserved {
                options: byte,
                version: r.version,
            });
        }
        let qos = QoS::from_u8(byte & 0x03)
            .ok_or(DecodeError::SubscriptionQoS3 { version: r.version })?;
        let retain_handling = match (byte >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::RetainHandling3),
        };
        let options = SubscriptionOptions {
            qos,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        };
        if options.no_local && filter.shared().is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription {
                filter: filter.as_str().to_owned(),
            });
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet_type: PacketType::Subscribe,
            version: r.version,
        });
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn suback(r: &mut Reader) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if r.version == ProtocolVersion::V5 {
        ack_properties(r, "SUBACK")?.into()
    } else {
        PropertyBox::none()
    };
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        let reason = if r.version == ProtocolVersion::V5 {
            r.reason_code()?
        } else {
            let code = r.u8("return code")?;
            match code {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => {
                    return Err(DecodeError::InvalidReasonCode {
                        packet_type: PacketType::SubAck,
                        code,
                    })
                }
            }
        };
        reason_codes.push(reason);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::NoReasonCodes {
            packet_type: PacketType::SubAck,
            version: r.version,
        });
    }
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn unsubscribe(r: &mut Reader) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut user_properties = Vec::new();
    if r.version == ProtocolVersion::V5 {
        let mut block = r.properties()?;
        while let Some(property) = block.next()? {
            match property {
                Property::User(k, v) => user_properties.push((k, v)),
                other => return Err(not_allowed(&other, "UNSUBSCRIBE")),
            }
        }
    }
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.topic_filter()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet_type: PacketType::Unsubscribe,
            version: r.version,
        });
    }
    Ok(Unsubscribe {
        packet_id,
        user_properties,
        filters,
    })
}

fn unsuback(r: &mut Reader) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if r.version == ProtocolVersion::V311 {
        return Ok(UnsubAck {
            packet_id,
            properties: PropertyBox::none(),
            reason_codes: Vec::new(),
        });
    }
    let properties = ack_properties(r, "UNSUBACK")?;
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        reason_codes.push(r.reason_code()?);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::NoReasonCodes {
            packet_type: PacketType::UnsubAck,
            version: r.version,
        });
    }
    Ok(UnsubAck {
        packet_id,
        properties: properties.into(),
        reason_codes,
    })
}

fn disconnect(r: &mut Reader) -> Result<Disconnect, DecodeError> {
    if r.version == ProtocolVersion::V311 || r.remaining() == 0 {
        // 3.1.1 DISCONNECT has no body (the caller refuses trailing bytes); in 5.0 an empty
        // body means Normal disconnection.
        return Ok(Disconnect::default());
    }
    let reason_code = r.reason_code()?;
    let mut p = DisconnectProperties::default();
    if r.remaining() > 0 {
        const CX: &str = "DISCONNECT";
        let mut block = r.properties()?;
        while let Some(property) = block.next()? {
            let id = property.id();
            match property {
                Property::SessionExpiryInterval(v) => {
                    once(&mut p.session_expiry_interval_secs, v, id, CX)?
                }
                Property::ReasonString(v) => once(&mut p.reason_string, v, id, CX)?,
                Property::User(k, v) => p.user_properties.push((k, v)),
                Property::ServerReference(v) => once(&mut p.server_reference, v, id, CX)?,
                other => return Err(not_allowed(&other, CX)),
            }
        }
    }
    Ok(Disconnect {
        reason_code,
        properties: p.into(),
    })
}

fn auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    if r.remaining() == 0 {
        return Ok(Auth::default());
    }
    let reason_code = r.reason_code()?;
    let mut p = AuthProperties::default();
    if r.remaining() > 0 {
        const CX: &str = "AUTH";
        let mut block = r.properties()?;
        while let Some(property) = block.next()? {
            let id = property.id();
            match property {
                Property::AuthenticationMethod(v) => once(&mut p.authentication_method, v, id, CX)?,
                Property::AuthenticationData(v) => once(&mut p.authentication_data, v, id, CX)?,
                Property::ReasonString(v) => once(&mut p.reason_string, v, id, CX)?,
                Property::User(k, v) => p.user_properties.push((k, v)),
                other => return Err(not_allowed(&other, CX)),
            }
        }
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod { context: CX });
        }
    }
    Ok(Auth {
        reason_code,
        properties: p.into(),
    })
}

/// Test-only record of which bytes each field was read from, for the annotated snapshots.
#[cfg(test)]
pub(crate) mod trace {
    use std::cell::RefCell;

    /// (offset in the packet, length, field).
    pub type Span = (usize, usize, &'static str);

    thread_local! {
        static SPANS: RefCell<Option<Vec<Span>>> = const { RefCell::new(None) };
    }

    pub fn record(start: usize, len: usize, field: &'static str) {
        SPANS.with(|spans| {
            if let Some(spans) = spans.borrow_mut().as_mut() {
                spans.push((start, len, field));
            }
        });
    }

    pub fn active() -> bool {
        SPANS.with(|spans| spans.borrow().is_some())
    }

    /// Runs `f` and returns the spans it read: (offset in the packet, length, field).
    pub fn collect<T>(f: impl FnOnce() -> T) -> (T, Vec<Span>) {
        SPANS.with(|spans| *spans.borrow_mut() = Some(Vec::new()));
        let value = f();
        let spans = SPANS
            .with(|spans| spans.borrow_mut().take())
            .unwrap_or_default();
        (value, spans)
    }
}
