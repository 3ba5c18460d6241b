//! The file store's binary encoding of `StoreOp`s (log records) and of `DurableState`
//! (snapshots).
//!
//! Compact: integers are LEB128 varints, an `Option<u32>` is one varint (0 = none, n + 1 =
//! some(n)), a message without 5.0 properties costs its topic, payload and one flags byte.
//! Versioned: the format version is in the header of every log and snapshot file
//! (`FORMAT_VERSION`); a reader refuses a version it does not know instead of guessing.
//! Decoding validates everything it builds (topic names and filters, QoS, non-zero packet and
//! subscription ids, reserved bits) and never trusts a length or count beyond the bytes that
//! remain, so garbage gives an error, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;

use super::{
    DurableState, MessageProperties, OutgoingState, Owner, StoreOp, StoredMessage, StoredSession,
    StoredSubscription, StoredWill,
};
use crate::codec::{
    MqttStr, PacketId, QoS, RetainHandling, SubscriptionOptions, TopicFilter, TopicName,
};

/// The encoding version written into file headers. Bump it when any layout below changes.
pub const FORMAT_VERSION: u8 = 1;

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ends early at byte {offset}")]
    UnexpectedEnd { offset: usize },
    #[error("varint at byte {offset} is longer than 10 bytes or overflows")]
    BadVarint { offset: usize },
    #[error("unknown op tag {tag}")]
    UnknownOpTag { tag: u8 },
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("{count} bytes left over after the value")]
    Trailing { count: usize },
}

fn invalid(what: &'static str, detail: impl ToString) -> DecodeError {
    DecodeError::Invalid {
        what,
        detail: detail.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_opt_u32(out: &mut Vec<u8>, value: Option<u32>) {
    put_varint(out, value.map_or(0, |v| u64::from(v) + 1));
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

const MSG_RETAIN: u8 = 0b0000_0100;
const MSG_HAS_PROPERTIES: u8 = 0b0000_1000;
const MSG_RESERVED: u8 = 0b1111_0000;

const PROP_PAYLOAD_FORMAT: u8 = 0b0000_0001;
const PROP_PAYLOAD_UTF8: u8 = 0b0000_0010;
const PROP_EXPIRES_AT: u8 = 0b0000_0100;
const PROP_RESPONSE_TOPIC: u8 = 0b0000_1000;
const PROP_CORRELATION: u8 = 0b0001_0000;
const PROP_USER: u8 = 0b0010_0000;
const PROP_CONTENT_TYPE: u8 = 0b0100_0000;
/// The copy was given to a shared subscription member (`MessageProperties::shared_filter`).
/// Added without a version bump: it was a reserved bit that readers refused, so every file
/// written before reads as before, and an older reader refuses a file that uses it.
const PROP_SHARED_FILTER: u8 = 0b1000_0000;

fn put_message(out: &mut Vec<u8>, m: &StoredMessage) {
    put_bytes(out, m.topic.as_bytes());
    put_bytes(out, &m.payload);
    let p = &m.properties;
    let has_properties = !p.is_empty();
    let mut flags = m.qos.as_u8();
    if m.retain {
        flags |= MSG_RETAIN;
    }
    if has_properties {
        flags |= MSG_HAS_PROPERTIES;
    }
    out.push(flags);
    if !has_properties {
        return;
    }
    let mut present = 0u8;
    if let Some(utf8) = p.payload_format_utf8 {
        present |= PROP_PAYLOAD_FORMAT;
        if utf8 {
            present |= PROP_PAYLOAD_UTF8;
        }
    }
    if p.expires_at_ms.is_some() {
        present |= PROP_EXPIRES_AT;
    }
    if p.response_topic.is_some() {
        present |= PROP_RESPONSE_TOPIC;
    }
    if p.correlation_data.is_some() {
        present |= PROP_CORRELATION;
    }
    if !p.user_properties.is_empty() {
        present |= PROP_USER;
    }
    if p.content_type.is_some() {
        present |= PROP_CONTENT_TYPE;
    }
    if p.shared_filter.is_some() {
        present |= PROP_SHARED_FILTER;
    }
    out.push(present);
    if let Some(at) = p.expires_at_ms {
        put_varint(out, at);
    }
    if let Some(topic) = &p.response_topic {
        put_bytes(out, topic.as_bytes());
    }
    if let Some(data) = &p.correlation_data {
        put_bytes(out, data);
    }
    if !p.user_properties.is_empty() {
        put_varint(out, p.user_properties.len() as u64);
        for (name, value) in &p.user_properties {
            put_bytes(out, name.as_bytes());
            put_bytes(out, value.as_bytes());
        }
    }
    if let Some(content_type) = &p.content_type {
        put_bytes(out, content_type.as_bytes());
    }
    if let Some(filter) = &p.shared_filter {
        put_bytes(out, filter.as_str().as_bytes());
    }
}

/// The MQTT 5.0 subscription options byte layout (3.8.3.1), reserved bits zero.
fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn put_subscription(out: &mut Vec<u8>, filter: &TopicFilter, s: &StoredSubscription) {
    put_bytes(out, filter.as_bytes());
    out.push(options_byte(&s.options));
    put_opt_u32(out, s.subscription_id.map(NonZeroU32::get));
}

fn put_will(out: &mut Vec<u8>, will: &StoredWill) {
    put_message(out, &will.message);
    put_varint(out, u64::from(will.delay_interval_secs));
}

mod tag {
    pub const SESSION_CREATED: u8 = 1;
    pub const SESSION_EXPIRY_CHANGED: u8 = 2;
    pub const SESSION_DELETED: u8 = 3;
    pub const SUBSCRIBED: u8 = 4;
    pub const UNSUBSCRIBED: u8 = 5;
    pub const QUEUED: u8 = 6;
    pub const DEQUEUED: u8 = 7;
    pub const SENT_IN_FLIGHT: u8 = 8;
    pub const PUBREC_RECEIVED: u8 = 9;
    pub const OUTGOING_COMPLETED: u8 = 10;
    pub const QUEUE_FRONT_DROPPED: u8 = 11;
    pub const INCOMING_QOS2_RECEIVED: u8 = 12;
    pub const INCOMING_QOS2_RELEASED: u8 = 13;
    pub const RETAINED_SET: u8 = 14;
    pub const RETAINED_CLEARED: u8 = 15;
    pub const WILL_STORED: u8 = 16;
    pub const WILL_CLEARED: u8 = 17;
    pub const SESSION_OWNER: u8 = 18;
    /// Added without a version bump: older readers refuse the tag ("unknown op tag 19"), and
    /// every log written before reads as before.
    pub const SESSION_OFFLINE: u8 = 19;
}

/// Appends the encoding of `op` to `out`.
pub fn encode_op(op: &StoreOp, out: &mut Vec<u8>) {
    match op {
        StoreOp::SessionCreated {
            client_id,
            expiry_interval_secs,
            protocol_level,
        } => {
            out.push(tag::SESSION_CREATED);
            put_bytes(out, client_id.as_bytes());
            put_opt_u32(out, *expiry_interval_secs);
            out.push(*protocol_level);
        }
        StoreOp::SessionExpiryChanged {
            client_id,
            expiry_interval_secs,
        } => {
            out.push(tag::SESSION_EXPIRY_CHANGED);
            put_bytes(out, client_id.as_bytes());
            put_opt_u32(out, *expiry_interval_secs);
        }
        StoreOp::SessionDeleted { client_id } => {
            out.push(tag::SESSION_DELETED);
            put_bytes(out, client_id.as_bytes());
        }
        StoreOp::Subscribed {
            client_id,
            filter,
            subscription,
        } => {
            out.push(tag::SUBSCRIBED);
            put_bytes(out, client_id.as_bytes());
            put_subscription(out, filter, subscription);
        }
        StoreOp::Unsubscribed { client_id, filter } => {
            out.push(tag::UNSUBSCRIBED);
            put_bytes(out, client_id.as_bytes());
            put_bytes(out, filter.as_bytes());
        }
        StoreOp::Queued { client_id, message } => {
            out.push(tag::QUEUED);
            put_bytes(out, client_id.as_bytes());
            put_message(out, message);
        }
        StoreOp::Dequeued {
            client_id,
            packet_id,
        } => {
            out.push(tag::DEQUEUED);
            put_bytes(out, client_id.as_bytes());
            put_u16(out, packet_id.get());
        }
        StoreOp::SentInFlight {
            client_id,
            packet_id,
            message,
        } => {
            out.push(tag::SENT_IN_FLIGHT);
            put_bytes(out, client_id.as_bytes());
            put_u16(out, packet_id.get());
            put_message(out, message);
        }
        StoreOp::PubRecReceived {
            client_id,
            packet_id,
        } => {
            out.push(tag::PUBREC_RECEIVED);
            put_bytes(out, client_id.as_bytes());
            put_u16(out, packet_id.get());
        }
        StoreOp::OutgoingCompleted {
            client_id,
            packet_id,
        } => {
            out.push(tag::OUTGOING_COMPLETED);
            put_bytes(out, client_id.as_bytes());
            put_u16(out, packet_id.get());
        }
        StoreOp::QueueFrontDropped { client_id } => {
            out.push(tag::QUEUE_FRONT_DROPPED);
            put_bytes(out, client_id.as_bytes());
        }
        StoreOp::IncomingQos2Received {
            client_id,
            packet_id,
        } => {
            out.push(tag::INCOMING_QOS2_RECEIVED);
            put_bytes(out, client_id.as_bytes());
            put_u16(out, packet_id.get());
        }
        StoreOp::IncomingQos2Released {
            client_id,
            packet_id,
        } => {
            out.push(tag::INCOMING_QOS2_RELEASED);
            put_bytes(out, client_id.as_bytes());
            put_u16(out, packet_id.get());
        }
        StoreOp::RetainedSet { message } => {
            out.push(tag::RETAINED_SET);
            put_message(out, message);
        }
        StoreOp::RetainedCleared { topic } => {
            out.push(tag::RETAINED_CLEARED);
            put_bytes(out, topic.as_bytes());
        }
        StoreOp::WillStored { client_id, will } => {
            out.push(tag::WILL_STORED);
            put_bytes(out, client_id.as_bytes());
            put_will(out, will);
        }
        StoreOp::WillCleared { client_id } => {
            out.push(tag::WILL_CLEARED);
            put_bytes(out, client_id.as_bytes());
        }
        StoreOp::SessionOwner { client_id, owner } => {
            out.push(tag::SESSION_OWNER);
            put_bytes(out, client_id.as_bytes());
            put_owner(out, owner.as_deref());
        }
        StoreOp::SessionOffline { client_id, at_ms } => {
            out.push(tag::SESSION_OFFLINE);
            put_bytes(out, client_id.as_bytes());
            put_opt_u64(out, *at_ms);
        }
    }
}

/// An `Option<u64>` as one varint: 0 = none, n + 1 = some(n) (`u64::MAX` is not a wall-clock
/// time, so it is written as `u64::MAX - 1`).
fn put_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    put_varint(out, value.map_or(0, |v| v.min(u64::MAX - 1) + 1));
}

const OUTGOING_PUBLISH: u8 = 0;
const OUTGOING_PUBREL: u8 = 1;

/// Appends the encoding of the whole state (a snapshot body) to `out`.
pub fn encode_state(state: &DurableState, out: &mut Vec<u8>) {
    let mut sink = |chunk: &[u8]| {
        out.extend_from_slice(chunk);
        Ok(())
    };
    encode_state_to(state, &mut sink).expect("a vector takes every chunk");
}

/// Bytes gathered before `encode_state_to` hands them on.
const CHUNK_BYTES: usize = 1 << 20;

/// Gathers encoded bytes and hands them to a sink about every `chunk_bytes`.
struct Chunks<'a> {
    buf: Vec<u8>,
    chunk_bytes: usize,
    sink: &'a mut dyn FnMut(&[u8]) -> std::io::Result<()>,
}

impl Chunks<'_> {
    fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= self.chunk_bytes {
            (self.sink)(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// The encoding of `encode_state`, handed to `sink` in chunks (of about a MiB, each message
/// whole), so that a snapshot of a large state is written without being one buffer.
pub fn encode_state_to(
    state: &DurableState,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    encode_state_in_chunks(state, CHUNK_BYTES, sink)
}

fn encode_state_in_chunks(
    state: &DurableState,
    chunk_bytes: usize,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut c = Chunks {
        buf: Vec::with_capacity(chunk_bytes.min(64 << 10)),
        chunk_bytes,
        sink,
    };
    put_varint(&mut c.buf, state.sessions.len() as u64);
    for (client_id, s) in &state.sessions {
        let out = &mut c.buf;
        put_bytes(out, client_id.as_bytes());
        put_opt_u32(out, s.expiry_interval_secs);
        out.push(s.protocol_level);
        put_u16(out, s.next_packet_id);
        put_varint(out, s.subscriptions.len() as u64);
        for (filter, subscription) in &s.subscriptions {
            put_subscription(&mut c.buf, filter, subscription);
            c.maybe_flush()?;
        }
        put_varint(&mut c.buf, s.outgoing.len() as u64);
        for (packet_id, state) in &s.outgoing {
            put_u16(&mut c.buf, *packet_id);
            match state {
                OutgoingState::Publish(message) => {
                    c.buf.push(OUTGOING_PUBLISH);
                    put_message(&mut c.buf, message);
                }
                OutgoingState::PubRel => c.buf.push(OUTGOING_PUBREL),
            }
            c.maybe_flush()?;
        }
        put_varint(&mut c.buf, s.queued.len() as u64);
        for message in &s.queued {
            put_message(&mut c.buf, message);
            c.maybe_flush()?;
        }
        let out = &mut c.buf;
        put_varint(out, s.incoming_qos2.len() as u64);
        for packet_id in &s.incoming_qos2 {
            put_u16(out, *packet_id);
        }
        match &s.will {
            None => out.push(0),
            Some(will) => {
                out.push(1);
                put_will(out, will);
            }
        }
        c.maybe_flush()?;
    }
    put_varint(&mut c.buf, state.retained.len() as u64);
    for message in state.retained.values() {
        put_message(&mut c.buf, message);
        c.maybe_flush()?;
    }
    // Session owners, after everything else: a snapshot written before owners existed ends
    // at the retained messages and still reads (its sessions have no owner).
    let owned: Vec<(&String, &Owner)> = state
        .sessions
        .iter()
        .filter_map(|(id, s)| Some((id, s.owner.as_ref()?)))
        .collect();
    // Then the offline times, after the owners: a snapshot written before they existed ends
    // earlier and still reads (its sessions count their expiry from the restart).
    let offline: Vec<(&String, u64)> = state
        .sessions
        .iter()
        .filter_map(|(id, s)| Some((id, s.offline_since_ms?)))
        .collect();
    if !owned.is_empty() || !offline.is_empty() {
        put_varint(&mut c.buf, owned.len() as u64);
        for (client_id, owner) in owned {
            put_bytes(&mut c.buf, client_id.as_bytes());
            put_owner(&mut c.buf, owner.username());
            c.maybe_flush()?;
        }
    }
    if !offline.is_empty() {
        put_varint(&mut c.buf, offline.len() as u64);
        for (client_id, at_ms) in offline {
            put_bytes(&mut c.buf, client_id.as_bytes());
            put_varint(&mut c.buf, at_ms);
            c.maybe_flush()?;
        }
    }
    if !c.buf.is_empty() {
        (c.sink)(&c.buf)?;
    }
    Ok(())
}

/// A session owner: 0 for anonymous, or 1 and the user name.
fn put_owner(out: &mut Vec<u8>, owner: Option<&str>) {
    match owner {
        None => out.push(0),
        Some(user) => {
            out.push(1);
            put_bytes(out, user.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A cursor over bytes being decoded.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::UnexpectedEnd {
                offset: self.buf.len(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.u8()?;
            let part = u64::from(byte & 0x7f);
            if shift == 63 && part > 1 {
                return Err(DecodeError::BadVarint { offset: start });
            }
            value |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint { offset: start })
    }

    /// A count of items that each take at least one byte: never more than the bytes left, so a
    /// corrupt count cannot make us allocate more than the input's size.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(invalid(
                "count",
                format!("{n} items but {} bytes left", self.remaining()),
            ));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(DecodeError::UnexpectedEnd {
                offset: self.buf.len(),
            });
        }
        self.take(n as usize)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|e| invalid("client id", e))
    }

    fn owner(&mut self) -> Result<Owner, DecodeError> {
        match self.u8()? {
            0 => Ok(Owner::Anonymous),
            1 => {
                let b = self.bytes()?;
                let user = std::str::from_utf8(b).map_err(|e| invalid("session owner", e))?;
                Ok(Owner::User(user.into()))
            }
            other => Err(invalid("session owner kind", other)),
        }
    }

    fn mqtt_str(&mut self, what: &'static str) -> Result<MqttStr, DecodeError> {
        let b = self.bytes()?;
        MqttStr::from_bytes(Bytes::copy_from_slice(b)).map_err(|e| invalid(what, e))
    }

    fn topic_name(&mut self) -> Result<TopicName, DecodeError> {
        TopicName::from_str(self.mqtt_str("topic name")?).map_err(|e| invalid("topic name", e))
    }

    fn topic_filter(&mut self) -> Result<TopicFilter, DecodeError> {
        TopicFilter::from_str(self.mqtt_str("topic filter")?)
            .map_err(|e| invalid("topic filter", e))
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        Ok(self.varint()?.checked_sub(1))
    }

    fn opt_u32(&mut self) -> Result<Option<u32>, DecodeError> {
        match self.varint()? {
            0 => Ok(None),
            n if n <= u64::from(u32::MAX) + 1 => Ok(Some((n - 1) as u32)),
            n => Err(invalid("optional u32", n)),
        }
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let n = self.varint()?;
        u32::try_from(n).map_err(|_| invalid(what, n))
    }

    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        NonZeroU16::new(self.u16()?).ok_or_else(|| invalid("packet id", 0))
    }

    fn qos(&mut self, bits: u8) -> Result<QoS, DecodeError> {
        QoS::from_u8(bits).ok_or_else(|| invalid("QoS", bits))
    }

    fn message(&mut self) -> Result<StoredMessage, DecodeError> {
        let topic = self.topic_name()?;
        let payload = Bytes::copy_from_slice(self.bytes()?);
        let flags = self.u8()?;
        if flags & MSG_RESERVED != 0 {
            return Err(invalid("message flags", format!("{flags:#04x}")));
        }
        let qos = self.qos(flags & 0b11)?;
        let mut properties = MessageProperties::default();
        if flags & MSG_HAS_PROPERTIES != 0 {
            let present = self.u8()?;
            if present & PROP_PAYLOAD_UTF8 != 0 && present & PROP_PAYLOAD_FORMAT == 0 {
                return Err(invalid("message properties", format!("{present:#04x}")));
            }
            if present & PROP_PAYLOAD_FORMAT != 0 {
                properties.payload_format_utf8 = Some(present & PROP_PAYLOAD_UTF8 != 0);
            }
            if present & PROP_EXPIRES_AT != 0 {
                properties.expires_at_ms = Some(self.varint()?);
            }
            if present & PROP_RESPONSE_TOPIC != 0 {
                properties.response_topic = Some(self.topic_name()?);
            }
            if present & PROP_CORRELATION != 0 {
                properties.correlation_data = Some(Bytes::copy_from_slice(self.bytes()?));
            }
            if present & PROP_USER != 0 {
                let n = self.count()?;
                for _ in 0..n {
                    let name = self.mqtt_str("user property name")?;
                    let value = self.mqtt_str("user property value")?;
                    properties.user_properties.push((name, value));
                }
            }
            if present & PROP_CONTENT_TYPE != 0 {
                properties.content_type = Some(self.mqtt_str("content type")?);
            }
            if present & PROP_SHARED_FILTER != 0 {
                properties.shared_filter = Some(self.topic_filter()?);
            }
        }
        Ok(StoredMessage {
            topic,
            payload,
            qos,
            retain: flags & MSG_RETAIN != 0,
            properties: properties.into(),
        })
    }

    fn subscription(&mut self) -> Result<(TopicFilter, StoredSubscription), DecodeError> {
        let filter = self.topic_filter()?;
        let byte = self.u8()?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            2 => RetainHandling::DoNotSend,
            _ => return Err(invalid("subscription options", format!("{byte:#04x}"))),
        };
        if byte & 0b1100_0000 != 0 {
            return Err(invalid("subscription options", format!("{byte:#04x}")));
        }
        let options = SubscriptionOptions {
            qos: self.qos(byte & 0b11)?,
            no_local: byte & 0b100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        };
        let subscription_id = match self.opt_u32()? {
            None => None,
            Some(id) => Some(NonZeroU32::new(id).ok_or_else(|| invalid("subscription id", 0))?),
        };
        Ok((
            filter,
            StoredSubscription {
                options,
                subscription_id,
            },
        ))
    }

    fn will(&mut self) -> Result<StoredWill, DecodeError> {
        Ok(StoredWill {
            message: self.message()?,
            delay_interval_secs: self.u32("will delay")?,
        })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::Trailing { count }),
        }
    }
}

/// Decodes one op that fills all of `bytes`.
pub fn decode_op(bytes: &[u8]) -> Result<StoreOp, DecodeError> {
    let mut r = Reader::new(bytes);
    let op = match r.u8()? {
        tag::SESSION_CREATED => StoreOp::SessionCreated {
            client_id: r.string()?,
            expiry_interval_secs: r.opt_u32()?,
            protocol_level: r.u8()?,
        },
        tag::SESSION_EXPIRY_CHANGED => StoreOp::SessionExpiryChanged {
            client_id: r.string()?,
            expiry_interval_secs: r.opt_u32()?,
        },
        tag::SESSION_DELETED => StoreOp::SessionDeleted {
            client_id: r.string()?,
        },
        tag::SUBSCRIBED => {
            let client_id = r.string()?;
            let (filter, subscription) = r.subscription()?;
            StoreOp::Subscribed {
                client_id,
                filter,
                subscription,
            }
        }
        tag::UNSUBSCRIBED => StoreOp::Unsubscribed {
            client_id: r.string()?,
            filter: r.topic_filter()?,
        },
        tag::QUEUED => StoreOp::Queued {
            client_id: r.string()?,
            message: r.message()?,
        },
        tag::DEQUEUED => StoreOp::Dequeued {
            client_id: r.string()?,
            packet_id: r.packet_id()?,
        },
        tag::SENT_IN_FLIGHT => StoreOp::SentInFlight {
            client_id: r.string()?,
            packet_id: r.packet_id()?,
            message: r.message()?,
        },
        tag::PUBREC_RECEIVED => StoreOp::PubRecReceived {
            client_id: r.string()?,
            packet_id: r.packet_id()?,
        },
        tag::OUTGOING_COMPLETED => StoreOp::OutgoingCompleted {
            client_id: r.string()?,
            packet_id: r.packet_id()?,
        },
        tag::QUEUE_FRONT_DROPPED => StoreOp::QueueFrontDropped {
            client_id: r.string()?,
        },
        tag::INCOMING_QOS2_RECEIVED => StoreOp::IncomingQos2Received {
            client_id: r.string()?,
            packet_id: r.packet_id()?,
        },
        tag::INCOMING_QOS2_RELEASED => StoreOp::IncomingQos2Released {
            client_id: r.string()?,
            packet_id: r.packet_id()?,
        },
        tag::RETAINED_SET => StoreOp::RetainedSet {
            message: r.message()?,
        },
        tag::RETAINED_CLEARED => StoreOp::RetainedCleared {
            topic: r.topic_name()?,
        },
        tag::WILL_STORED => StoreOp::WillStored {
            client_id: r.string()?,
            will: r.will()?,
        },
        tag::WILL_CLEARED => StoreOp::WillCleared {
            client_id: r.string()?,
        },
        tag::SESSION_OWNER => StoreOp::SessionOwner {
            client_id: r.string()?,
            owner: r.owner()?.username().map(str::to_string),
        },
        tag::SESSION_OFFLINE => StoreOp::SessionOffline {
            client_id: r.string()?,
            at_ms: r.opt_u64()?,
        },
        tag => return Err(DecodeError::UnknownOpTag { tag }),
    };
    r.finish()?;
    Ok(op)
}

/// Decodes a whole state (a snapshot body) that fills all of `bytes`.
pub fn decode_state(bytes: &[u8]) -> Result<DurableState, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut state = DurableState::default();
    for _ in 0..r.count()? {
        let client_id = r.string()?;
        let mut s = StoredSession {
            expiry_interval_secs: r.opt_u32()?,
            protocol_level: r.u8()?,
            next_packet_id: r.u16()?,
            ..StoredSession::default()
        };
        let mut subscriptions = BTreeMap::new();
        for _ in 0..r.count()? {
            let (filter, subscription) = r.subscription()?;
            subscriptions.insert(filter, subscription);
        }
        s.subscriptions = subscriptions;
        for _ in 0..r.count()? {
            let packet_id = r.u16()?;
            let state = match r.u8()? {
                OUTGOING_PUBLISH => OutgoingState::Publish(r.message()?),
                OUTGOING_PUBREL => OutgoingState::PubRel,
                other => return Err(invalid("outgoing state", other)),
            };
            s.outgoing.push_back((packet_id, state));
        }
        for _ in 0..r.count()? {
            s.queued.push_back(r.message()?);
        }
        for _ in 0..r.count()? {
            s.incoming_qos2.insert(r.u16()?);
        }
        s.will = match r.u8()? {
            0 => None,
            1 => Some(Box::new(r.will()?)),
            other => return Err(invalid("will flag", other)),
        };
        state.sessions.insert(client_id, s);
    }
    for _ in 0..r.count()? {
        let message = r.message()?;
        state.retained.insert(message.topic.clone(), message);
    }
    if r.remaining() > 0 {
        for _ in 0..r.count()? {
            let client_id = r.string()?;
            let owner = r.owner()?;
            match state.sessions.get_mut(&client_id) {
                Some(session) => session.owner = Some(owner),
                None => return Err(invalid("session owner", "names no session")),
            }
        }
    }
    if r.remaining() > 0 {
        for _ in 0..r.count()? {
            let client_id = r.string()?;
            let at_ms = r.varint()?;
            match state.sessions.get_mut(&client_id) {
                Some(session) => session.offline_since_ms = Some(at_ms),
                None => return Err(invalid("session offline time", "names no session")),
            }
        }
    }
    r.finish()?;
    Ok(state)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_mqtt_str() -> impl Strategy<Value = MqttStr> {
        "[a-zA-Z0-9 éü]{0,12}".prop_map(|s| MqttStr::new(&s).unwrap())
    }

    fn arb_topic() -> impl Strategy<Value = TopicName> {
        prop_oneof![
            Just(TopicName::from_static("a/b")),
            Just(TopicName::from_static("$SYS/x")),
            "[a-z/]{1,16}".prop_map(|s| TopicName::new(&s).unwrap()),
        ]
    }

    fn arb_filter() -> impl Strategy<Value = TopicFilter> {
        prop_oneof![
            Just(TopicFilter::from_static("#")),
            Just(TopicFilter::from_static("a/+/c")),
            "[a-z/]{1,16}".prop_map(|s| TopicFilter::new(&s).unwrap()),
        ]
    }

    fn arb_qos() -> impl Strategy<Value = QoS> {
        prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ]
    }

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
    }

    fn arb_properties() -> impl Strategy<Value = MessageProperties> {
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(arb_topic()),
            proptest::option::of(arb_bytes()),
            proptest::collection::vec((arb_mqtt_str(), arb_mqtt_str()), 0..3),
            proptest::option::of(arb_mqtt_str()),
            proptest::option::of(arb_filter()),
        )
            .prop_map(
                |(
                    payload_format_utf8,
                    expires_at_ms,
                    response_topic,
                    correlation,
                    user,
                    ct,
                    shared,
                )| {
                    MessageProperties {
                        payload_format_utf8,
                        expires_at_ms,
                        response_topic,
                        correlation_data: correlation,
                        user_properties: user,
                        content_type: ct,
                        shared_filter: shared
                            .map(|f| TopicFilter::new(&format!("$share/g/{f}")).unwrap()),
                    }
                },
            )
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = StoredMessage> {
        (
            arb_topic(),
            arb_bytes(),
            arb_qos(),
            any::<bool>(),
            prop_oneof![Just(MessageProperties::default()), arb_properties()],
        )
            .prop_map(|(topic, payload, qos, retain, properties)| StoredMessage {
                topic,
                payload,
                qos,
                retain,
                properties: properties.into(),
            })
    }

    fn arb_subscription() -> impl Strategy<Value = StoredSubscription> {
        (
            arb_qos(),
            any::<bool>(),
            any::<bool>(),
            0u8..3,
            proptest::option::of(1u32..),
        )
            .prop_map(|(qos, no_local, rap, rh, id)| StoredSubscription {
                options: SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published: rap,
                    retain_handling: match rh {
                        0 => RetainHandling::SendAtSubscribe,
                        1 => RetainHandling::SendIfNewSubscription,
                        _ => RetainHandling::DoNotSend,
                    },
                },
                subscription_id: id.and_then(NonZeroU32::new),
            })
    }

    fn arb_client() -> impl Strategy<Value = String> {
        prop_oneof![Just("c1".to_string()), Just("c2".to_string()), "[a-z]{0,6}"]
    }

    fn arb_pid() -> impl Strategy<Value = PacketId> {
        prop_oneof![1u16..4, any::<u16>().prop_filter("non-zero", |p| *p != 0)]
            .prop_map(|p| NonZeroU16::new(p).unwrap())
    }

    /// Every op variant, with client ids and packet ids drawn from small sets so that folds of
    /// random op lists build sessions with real content.
    pub(crate) fn arb_op() -> impl Strategy<Value = StoreOp> {
        prop_oneof![
            (
                arb_client(),
                proptest::option::of(any::<u32>()),
                prop_oneof![Just(4u8), Just(5u8)]
            )
                .prop_map(|(client_id, expiry_interval_secs, protocol_level)| {
                    StoreOp::SessionCreated {
                        client_id,
                        expiry_interval_secs,
                        protocol_level,
                    }
                }),
            (arb_client(), proptest::option::of(any::<u32>())).prop_map(|(client_id, e)| {
                StoreOp::SessionExpiryChanged {
                    client_id,
                    expiry_interval_secs: e,
                }
            }),
            arb_client().prop_map(|client_id| StoreOp::SessionDeleted { client_id }),
            (arb_client(), arb_filter(), arb_subscription()).prop_map(
                |(client_id, filter, subscription)| StoreOp::Subscribed {
                    client_id,
                    filter,
                    subscription,
                }
            ),
            (arb_client(), arb_filter())
                .prop_map(|(client_id, filter)| StoreOp::Unsubscribed { client_id, filter }),
            (arb_client(), arb_message())
                .prop_map(|(client_id, message)| StoreOp::Queued { client_id, message }),
            (arb_client(), arb_pid()).prop_map(|(client_id, packet_id)| StoreOp::Dequeued {
                client_id,
                packet_id
            }),
            (arb_client(), arb_pid(), arb_message()).prop_map(|(client_id, packet_id, message)| {
                StoreOp::SentInFlight {
                    client_id,
                    packet_id,
                    message,
                }
            }),
            (arb_client(), arb_pid()).prop_map(|(client_id, packet_id)| {
                StoreOp::PubRecReceived {
                    client_id,
                    packet_id,
                }
            }),
            (arb_client(), arb_pid()).prop_map(|(client_id, packet_id)| {
                StoreOp::OutgoingCompleted {
                    client_id,
                    packet_id,
                }
            }),
            arb_client().prop_map(|client_id| StoreOp::QueueFrontDropped { client_id }),
            (arb_client(), arb_pid()).prop_map(|(client_id, packet_id)| {
                StoreOp::IncomingQos2Received {
                    client_id,
                    packet_id,
                }
            }),
            (arb_client(), arb_pid()).prop_map(|(client_id, packet_id)| {
                StoreOp::IncomingQos2Released {
                    client_id,
                    packet_id,
                }
            }),
            arb_message().prop_map(|message| StoreOp::RetainedSet { message }),
            arb_topic().prop_map(|topic| StoreOp::RetainedCleared { topic }),
            (arb_client(), arb_message(), any::<u32>()).prop_map(|(client_id, message, d)| {
                StoreOp::WillStored {
                    client_id,
                    will: StoredWill {
                        message,
                        delay_interval_secs: d,
                    },
                }
            }),
            arb_client().prop_map(|client_id| StoreOp::WillCleared { client_id }),
            (arb_client(), proptest::option::of("[a-z]{0,8}"))
                .prop_map(|(client_id, owner)| StoreOp::SessionOwner { client_id, owner }),
            (arb_client(), proptest::option::of(0..u64::MAX - 1))
                .prop_map(|(client_id, at_ms)| StoreOp::SessionOffline { client_id, at_ms }),
        ]
    }

    /// A list of ops that starts by creating the sessions the others name.
    pub(crate) fn arb_ops(max: usize) -> impl Strategy<Value = Vec<StoreOp>> {
        proptest::collection::vec(arb_op(), 0..max).prop_map(|ops| {
            let mut all: Vec<StoreOp> = ["c1", "c2", ""]
                .iter()
                .map(|c| StoreOp::SessionCreated {
                    client_id: c.to_string(),
                    expiry_interval_secs: None,
                    protocol_level: 4,
                })
                .collect();
            all.extend(ops);
            all
        })
    }

    proptest! {
        #[test]
        fn every_op_round_trips(op in arb_op()) {
            let mut buf = Vec::new();
            encode_op(&op, &mut buf);
            prop_assert_eq!(decode_op(&buf), Ok(op.clone()));
            // Every strict prefix is refused, never misread as a shorter op.
            for cut in 0..buf.len() {
                prop_assert!(decode_op(&buf[..cut]).is_err(), "prefix {} of {:?}", cut, op);
            }
        }

        #[test]
        fn folded_state_round_trips(ops in arb_ops(60)) {
            let mut state = DurableState::default();
            for op in &ops {
                state.apply(op);
            }
            let mut buf = Vec::new();
            encode_state(&state, &mut buf);
            prop_assert_eq!(decode_state(&buf), Ok(state));
        }

        #[test]
        fn a_state_in_chunks_is_the_state_whole(ops in arb_ops(60), chunk in 1usize..200) {
            let mut state = DurableState::default();
            for op in &ops {
                state.apply(op);
            }
            let mut whole = Vec::new();
            encode_state(&state, &mut whole);
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            encode_state_in_chunks(&state, chunk, &mut |c| {
                chunks.push(c.to_vec());
                Ok(())
            })
            .unwrap();
            prop_assert!(chunks.iter().all(|c| !c.is_empty()));
            prop_assert_eq!(chunks.concat(), whole);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_op(&bytes);
            let _ = decode_state(&bytes);
        }
    }

    /// Offline times survive a snapshot, with or without owners before them; a snapshot
    /// written before they existed reads with none.
    #[test]
    fn snapshots_keep_offline_times() {
        for owned in [false, true] {
            let mut state = DurableState::default();
            for client_id in ["a", "b"] {
                state.apply(&StoreOp::SessionCreated {
                    client_id: client_id.into(),
                    expiry_interval_secs: Some(60),
                    protocol_level: 5,
                });
            }
            if owned {
                state.apply(&StoreOp::SessionOwner {
                    client_id: "b".into(),
                    owner: None,
                });
            }
            let mut before = Vec::new();
            encode_state(&state, &mut before);
            assert_eq!(decode_state(&before).unwrap(), state);
            state.apply(&StoreOp::SessionOffline {
                client_id: "a".into(),
                at_ms: Some(1_767_225_600_000),
            });
            let mut buf = Vec::new();
            encode_state(&state, &mut buf);
            let decoded = decode_state(&buf).unwrap();
            assert_eq!(
                decoded.sessions["a"].offline_since_ms,
                Some(1_767_225_600_000)
            );
            assert_eq!(decoded, state);
        }
    }

    /// A snapshot written before session owners existed (no owner section after the retained
    /// messages) still reads; one with owners gives them back.
    #[test]
    fn snapshots_without_owners_still_read() {
        let mut state = DurableState::default();
        for (client_id, owner) in [("a", Some(Some("alice"))), ("b", None), ("c", Some(None))] {
            state.apply(&StoreOp::SessionCreated {
                client_id: client_id.into(),
                expiry_interval_secs: None,
                protocol_level: 4,
            });
            if let Some(owner) = owner {
                state.apply(&StoreOp::SessionOwner {
                    client_id: client_id.into(),
                    owner: owner.map(str::to_string),
                });
            }
        }
        let mut buf = Vec::new();
        encode_state(&state, &mut buf);
        let decoded = decode_state(&buf).unwrap();
        assert_eq!(
            decoded.sessions["a"].owner,
            Some(Owner::User("alice".into()))
        );
        assert_eq!(decoded.sessions["b"].owner, None);
        assert_eq!(decoded.sessions["c"].owner, Some(Owner::Anonymous));
        // The same state without owners encodes as before: no owner section at all.
        let mut plain = state.clone();
        for session in plain.sessions.values_mut() {
            session.owner = None;
        }
        let mut old = Vec::new();
        encode_state(&plain, &mut old);
        assert_eq!(
            buf.len(),
            old.len() + 1 + (2 + 1 + 6) + (2 + 1),
            "count, \"a\" user \"alice\", \"c\" anonymous"
        );
        assert_eq!(decode_state(&old), Ok(plain));
    }

    #[test]
    fn a_plain_message_is_compact() {
        let op = StoreOp::Queued {
            client_id: "c1".into(),
            message: StoredMessage {
                topic: TopicName::from_static("a/b"),
                payload: Bytes::from_static(b"hello"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
            },
        };
        let mut buf = Vec::new();
        encode_op(&op, &mut buf);
        assert_eq!(
            buf,
            [
                6, // tag: Queued
                2, b'c', b'1', // client id
                3, b'a', b'/', b'b', // topic
                5, b'h', b'e', b'l', b'l', b'o', // payload
                0x01, // flags: QoS 1, no retain, no properties
            ]
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        // Queued with a wildcard in the topic name.
        let bytes = [6, 1, b'c', 1, b'#', 0, 0];
        assert!(matches!(
            decode_op(&bytes),
            Err(DecodeError::Invalid {
                what: "topic name",
                ..
            })
        ));
        // Dequeued with packet id 0.
        assert!(decode_op(&[7, 1, b'c', 0, 0]).is_err());
        // QoS 3.
        assert!(decode_op(&[6, 1, b'c', 1, b'a', 0, 3]).is_err());
        // Unknown tag.
        assert_eq!(
            decode_op(&[200]),
            Err(DecodeError::UnknownOpTag { tag: 200 })
        );
        // Trailing byte.
        assert_eq!(
            decode_op(&[3, 1, b'c', 9]),
            Err(DecodeError::Trailing { count: 1 })
        );
        // A huge count with no bytes behind it.
        assert!(decode_state(&[0xff, 0xff, 0xff, 0x7f]).is_err());
    }
}
