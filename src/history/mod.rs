//! The trace of a run and the checkers that judge it. Pure: no tokio, no I/O beyond reading and
//! writing JSON lines from/to byte buffers.
//!
//! A trace is a list of [`Record`]s in the order the simulation observed them. Each record
//! carries the simulated time (`at_ms`, milliseconds since the simulation started), the host on
//! which it was observed, and an [`Event`]. Events are what a black-box observer of MQTT can see:
//! what a client sent and what its application received, plus the faults the nemesis injected
//! (so a checker can tell a permitted loss from a broken promise).
//!
//! Serialisation is deterministic: every type is a struct or enum with fields in declared order,
//! no maps with random state, so the same run writes the same bytes (DESIGN.md, Determinism).
//!
//! Messages are identified by a *payload id* chosen by the runner (`p1-17`: publisher `p1`, its
//! 17th message; `w-c3-2`: the will of `c3`'s second connection). The runner puts the id in the
//! payload, so a delivery names the message it carries without the checker trusting the broker.

pub mod checkers;
pub mod model;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{ProtocolVersion, QoS};

/// One observed event at a simulated time on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Simulated milliseconds since the start of the run.
    pub at_ms: u64,
    /// The host that observed the event (a client host, the broker host, or `sim` for the
    /// nemesis).
    pub host: String,
    #[serde(flatten)]
    pub event: Event,
}

/// The will a connection registers in its CONNECT. It is registered once the CONNACK accepts
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WillInfo {
    /// Payload id of the will message (e.g. `w-c1-2`); empty when the payload is empty.
    pub id: String,
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 Will Delay Interval; absent for 3.1.1 and for no delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_secs: Option<u32>,
}

/// One filter of a SUBSCRIBE as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRequest {
    pub filter: String,
    pub qos: QoS,
    /// 5.0 subscription options (default false / 0 for 3.1.1).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_local: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub retain_as_published: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retain_handling: u8,
}

/// One filter's result in a SUBACK: the granted QoS, or `None` for a failure code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterGrant {
    pub filter: String,
    pub granted: Option<QoS>,
}

/// Why a connection ended, as the runner knows it (it injected the faults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DisconnectCause {
    /// The client sent DISCONNECT. `with_will` is the 5.0 reason 0x04 (Disconnect with Will
    /// Message), which keeps the will.
    ClientDisconnect {
        #[serde(default, skip_serializing_if = "is_false")]
        with_will: bool,
    },
    /// The stream failed (reset, EOF, write error) without a DISCONNECT.
    NetworkError { detail: String },
    /// The client's keepalive gave up waiting for PINGRESP.
    KeepaliveTimeout,
    /// The broker sent a DISCONNECT (5.0) with this reason code (e.g. `0x8D`).
    ServerDisconnect { reason: String },
    /// Another connection with the same client id took the session over.
    Takeover,
    /// The broker's admin handle closed the connection.
    Kicked,
    /// The broker crashed (or lost power) under the connection.
    BrokerCrash,
    /// The client's host crashed: its process and connection vanished.
    ClientCrash,
    /// The fault layer reset the connection.
    ConnectionReset,
}

impl DisconnectCause {
    /// True when the broker saw (or should have seen) a DISCONNECT that removes the will.
    pub fn is_normal_disconnect(&self) -> bool {
        matches!(self, DisconnectCause::ClientDisconnect { with_will: false })
    }
}

/// Direction of a packet through the per-connection fault layer (defined with the layer).
pub use crate::transport::fault::Direction;

/// A fault the nemesis injected (or healed). Host names are turmoil host names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Packets from `a` to `b` are lost (and from `b` to `a` unless `one_way`).
    Partition {
        a: String,
        b: String,
        #[serde(default, skip_serializing_if = "is_false")]
        one_way: bool,
    },
    /// Ends a partition between `a` and `b` (both directions).
    Heal { a: String, b: String },
    /// Random loss on the link (0.0 ends it). Under turmoil TCP a lost segment stalls the
    /// stream, so loss means half-open connections that keepalive must catch.
    Loss { a: String, b: String, rate: f64 },
    /// Latency and jitter on the link.
    Latency {
        a: String,
        b: String,
        latency_ms: u64,
        jitter_ms: u64,
    },
    /// The fault layer stops moving bytes on the client's connection both ways.
    Stall { client: String },
    /// The fault layer resets the client's connection.
    Reset { client: String },
    /// The fault layer delays bytes on the client's connection.
    Delay { client: String, delay_ms: u64 },
    /// The fault layer drops the next packet of this type in this direction.
    DropPacket {
        client: String,
        direction: Direction,
        packet_type: String,
    },
    /// The fault layer sends the next packet of this type twice.
    DuplicatePacket {
        client: String,
        direction: Direction,
        packet_type: String,
    },
    /// The broker host crashed; with `power_loss` its unsynced writes are gone.
    BrokerCrash {
        #[serde(default, skip_serializing_if = "is_false")]
        power_loss: bool,
    },
    /// The broker host restarts (see also `Event::BrokerStarted`).
    BrokerRestart,
    /// The client's host crashed.
    ClientCrash { client: String },
    /// The client's host restarts (with its persistence, if it has any).
    ClientRestart { client: String },
    /// The broker's admin handle closes the client's connection.
    Kick { client: String },
}

// `f64` is not `Eq`; rates are finite numbers chosen by the nemesis, so equality is total here.
impl Eq for Fault {}

impl Fault {
    /// The link endpoints or the client the fault concerns.
    pub fn targets(&self) -> FaultTarget<'_> {
        match self {
            Fault::Partition { a, b, .. }
            | Fault::Heal { a, b }
            | Fault::Loss { a, b, .. }
            | Fault::Latency { a, b, .. } => FaultTarget::Link(a, b),
            Fault::Stall { client }
            | Fault::Reset { client }
            | Fault::Delay { client, .. }
            | Fault::DropPacket { client, .. }
            | Fault::DuplicatePacket { client, .. }
            | Fault::ClientCrash { client }
            | Fault::ClientRestart { client }
            | Fault::Kick { client } => FaultTarget::Client(client),
            Fault::BrokerCrash { .. } | Fault::BrokerRestart => FaultTarget::Broker,
        }
    }
}

/// What a fault concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTarget<'a> {
    Link(&'a str, &'a str),
    Client(&'a str),
    Broker,
}

/// Every observable event. `client` is always the scenario's name for the client (not its MQTT
/// client id, which `ConnectAttempt` records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The broker (re)started. `durable`: state it acknowledged before a crash survives the
    /// restart (sessions, subscriptions, queued messages, retained messages).
    BrokerStarted { durable: bool },
    /// The simulated network: its tick and the one-way latency bounds on every link before
    /// faults add to them (recorded first; absent on a real network). A checker uses them to
    /// tell whether a packet can have reached the broker by some time.
    Network {
        tick_ms: u64,
        latency_min_ms: u64,
        latency_max_ms: u64,
    },
    /// The client sent CONNECT.
    ConnectAttempt {
        client: String,
        client_id: String,
        protocol: ProtocolVersion,
        clean_start: bool,
        keep_alive_secs: u16,
        /// 5.0 Session Expiry Interval (absent: 0, or 3.1.1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_expiry_secs: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        will: Option<WillInfo>,
        /// The client resubscribes on its own after a reconnect without a session.
        #[serde(default, skip_serializing_if = "is_false")]
        resubscribe: bool,
    },
    /// A CONNACK arrived. `reason` is the reason/return code in hex (`0x00` accepts).
    ConnAck {
        client: String,
        session_present: bool,
        reason: String,
    },
    /// A connect attempt failed before a CONNACK (refused socket, timeout, stream error).
    ConnectFailed { client: String, error: String },
    /// The client sent SUBSCRIBE. `automatic`: the client library resubscribed on its own,
    /// right after a CONNACK; the runner may record it when the SUBACK arrives, so checkers
    /// take that connection's CONNACK as its send time.
    Subscribe {
        client: String,
        filters: Vec<FilterRequest>,
        #[serde(default, skip_serializing_if = "is_false")]
        automatic: bool,
    },
    /// A SUBACK arrived.
    SubAck {
        client: String,
        results: Vec<FilterGrant>,
    },
    /// The client sent UNSUBSCRIBE.
    Unsubscribe {
        client: String,
        filters: Vec<String>,
    },
    /// An UNSUBACK arrived.
    UnsubAck {
        client: String,
        filters: Vec<String>,
    },
    /// The application handed a message to the client (sent, or queued for sending).
    PublishSent {
        client: String,
        id: String,
        topic: String,
        qos: QoS,
        retain: bool,
        /// Zero for an empty payload (which clears a retained message). The message still has
        /// an id here, for its acknowledgement, but its deliveries cannot carry it.
        payload_len: u32,
    },
    /// The publisher's flow completed: PUBACK (QoS 1) or PUBCOMP (QoS 2). `accepted` is false
    /// for a 5.0 error reason code (≥ 0x80), after which the broker does not deliver it.
    PublishAcked {
        client: String,
        id: String,
        accepted: bool,
        reason: String,
    },
    /// The client wrote a PUBLISH of the message on its connection: the first send or a
    /// resend, in the order the client wrote them, with the DUP flag as sent. `packet_id` is
    /// absent for QoS 0.
    PublishTransmitted {
        client: String,
        id: String,
        dup: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packet_id: Option<u16>,
    },
    /// The client wrote a PUBREL for the QoS 2 message: after its PUBREC, or resent on a
    /// reconnect.
    ReleaseTransmitted {
        client: String,
        id: String,
        packet_id: u16,
    },
    /// The client gave the message up (its session was discarded, or it crashed without
    /// persistence).
    PublishFailed {
        client: String,
        id: String,
        cause: String,
    },
    /// The client handed a received PUBLISH to the application.
    Delivered {
        client: String,
        /// Payload id read from the payload; empty for an empty payload.
        id: String,
        topic: String,
        qos: QoS,
        retain: bool,
        dup: bool,
        payload_len: u32,
    },
    /// A connection of the client ended.
    Disconnected {
        client: String,
        cause: DisconnectCause,
    },
    /// The nemesis injected or healed a fault.
    Fault { fault: Fault },
    /// Free text from the runner (an expectation's outcome, a phase marker).
    Note { text: String },
    /// A raw connection opened: bytes the runner writes itself, bypassing the client, to see
    /// what the broker does with malformed or forbidden input. `connection` counts from 1.
    RawOpened { client: String, connection: u32 },
    /// Bytes written on a raw connection, in hex.
    RawSent {
        client: String,
        connection: u32,
        bytes: String,
    },
    /// A packet the broker sent on a raw connection: its type and a one-line summary
    /// (`undecodable` with the bytes in hex when the codec refuses it).
    RawReceived {
        client: String,
        connection: u32,
        packet: String,
        summary: String,
    },
    /// A raw connection ended. `by`: `broker` (it closed or reset the stream) or `client`
    /// (the scenario closed it).
    RawClosed {
        client: String,
        connection: u32,
        by: String,
        detail: String,
    },
}

impl Event {
    /// The client the event belongs to, if any.
    pub fn client(&self) -> Option<&str> {
        match self {
            Event::ConnectAttempt { client, .. }
            | Event::ConnAck { client, .. }
            | Event::ConnectFailed { client, .. }
            | Event::Subscribe { client, .. }
            | Event::SubAck { client, .. }
            | Event::Unsubscribe { client, .. }
            | Event::UnsubAck { client, .. }
            | Event::PublishSent { client, .. }
            | Event::PublishAcked { client, .. }
            | Event::PublishTransmitted { client, .. }
            | Event::ReleaseTransmitted { client, .. }
            | Event::PublishFailed { client, .. }
            | Event::Delivered { client, .. }
            | Event::Disconnected { client, .. }
            | Event::RawOpened { client, .. }
            | Event::RawSent { client, .. }
            | Event::RawReceived { client, .. }
            | Event::RawClosed { client, .. } => Some(client),
            Event::BrokerStarted { .. }
            | Event::Network { .. }
            | Event::Fault { .. }
            | Event::Note { .. } => None,
        }
    }
}

/// A finished (or growing) trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub records: Vec<Record>,
}

/// A line of a JSON-lines trace that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("trace line {line}: {source}")]
pub struct TraceParseError {
    pub line: usize,
    #[source]
    pub source: serde_json::Error,
}

impl Trace {
    pub fn new() -> Trace {
        Trace::default()
    }

    pub fn push(&mut self, at_ms: u64, host: impl Into<String>, event: Event) {
        self.records.push(Record {
            at_ms,
            host: host.into(),
            event,
        });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The trace as JSON lines: one record per line, each line ending in `\n`.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for record in &self.records {
            out.push_str(&record_to_json(record));
            out.push('\n');
        }
        out
    }

    /// Reads JSON lines written by `to_jsonl`. Blank lines are skipped.
    pub fn from_jsonl(text: &str) -> Result<Trace, TraceParseError> {
        let mut records = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = serde_json::from_str(line).map_err(|source| TraceParseError {
                line: index + 1,
                source,
            })?;
            records.push(record);
        }
        Ok(Trace { records })
    }

    /// Puts concurrent records in a canonical order: within a run of consecutive records with
    /// the same `at_ms`, none from `barrier_host`, records are ordered by host and client
    /// (stable, so each client's own order is kept). Records of different clients within one
    /// millisecond cannot be causally related when every message takes at least a millisecond
    /// (clients meet only through the broker), while the order in which the simulator happens
    /// to run them may vary (turmoil delivers the FINs of a crashed host in an unspecified
    /// order).
    pub fn canonicalize(&mut self, barrier_host: &str) {
        let records = &mut self.records;
        let mut start = 0;
        while start < records.len() {
            let at = records[start].at_ms;
            let mut end = start;
            while end < records.len()
                && records[end].at_ms == at
                && records[end].host != barrier_host
            {
                end += 1;
            }
            if end > start + 1 {
                records[start..end]
                    .sort_by(|a, b| (&a.host, a.event.client()).cmp(&(&b.host, b.event.client())));
            }
            start = end.max(start + 1);
        }
    }

    /// Records `index - radius ..= index + radius`, rendered one per line with their index, for
    /// violation reports.
    pub fn excerpt(&self, indices: &[usize], radius: usize) -> String {
        let mut wanted = std::collections::BTreeSet::new();
        for &index in indices {
            let start = index.saturating_sub(radius);
            let end = (index + radius).min(self.records.len().saturating_sub(1));
            for i in start..=end {
                if i < self.records.len() {
                    wanted.insert(i);
                }
            }
        }
        let mut out = String::new();
        let mut previous: Option<usize> = None;
        for i in wanted {
            if let Some(p) = previous {
                if i > p + 1 {
                    out.push_str("      ...\n");
                }
            }
            let marker = if indices.contains(&i) { '>' } else { ' ' };
            out.push_str(&format!(
                "{marker}{i:>5} {}\n",
                record_to_json(&self.records[i])
            ));
            previous = Some(i);
        }
        out
    }
}

fn record_to_json(record: &Record) -> String {
    // Serialising plain structs and enums to a String cannot fail: there are no maps with
    // non-string keys and no custom serialisers that error. Fall back to Debug all the same
    // rather than panic.
    serde_json::to_string(record).unwrap_or_else(|_| format!("{record:?}"))
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&record_to_json(self))
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &u8) -> bool {
    *value == 0
}

// The codec's QoS and protocol version travel in traces and scenario files as plain numbers
// (0/1/2) and names ("v311"/"v5"); the codec itself stays free of serde.
impl Serialize for QoS {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.as_u8())
    }
}

// Both impls refuse inside a visitor rather than after reading the value: serde_yaml places
// (and names the path of) only the errors raised while it visits a value, so this is what puts
// a scenario error on the `3` of `qos: 3` under `clients.device.protocol`, not on the map
// around it.
impl<'de> Deserialize<'de> for QoS {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<QoS, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = QoS;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a QoS level: 0, 1 or 2")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<QoS, E> {
                u8::try_from(value)
                    .ok()
                    .and_then(QoS::from_u8)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<QoS, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::invalid_value(
                        serde::de::Unexpected::Signed(value),
                        &self,
                    )),
                }
            }
        }
        deserializer.deserialize_u8(V)
    }
}

impl Serialize for ProtocolVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            ProtocolVersion::V311 => "v311",
            ProtocolVersion::V5 => "v5",
        })
    }
}

impl<'de> Deserialize<'de> for ProtocolVersion {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ProtocolVersion, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ProtocolVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a protocol version: v311 or v5")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<ProtocolVersion, E> {
                match value {
                    "v311" | "3.1.1" => Ok(ProtocolVersion::V311),
                    "v5" | "5" | "5.0" => Ok(ProtocolVersion::V5),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trace {
        let mut trace = Trace::new();
        trace.push(0, "broker", Event::BrokerStarted { durable: true });
        trace.push(
            3,
            "clients",
            Event::ConnectAttempt {
                client: "c1".into(),
                client_id: "c1".into(),
                protocol: ProtocolVersion::V5,
                clean_start: false,
                keep_alive_secs: 10,
                session_expiry_secs: Some(60),
                will: Some(WillInfo {
                    id: "w-c1-1".into(),
                    topic: "status/c1".into(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    delay_secs: None,
                }),
                resubscribe: true,
            },
        );
        trace.push(
            4,
            "clients",
            Event::Delivered {
                client: "c1".into(),
                id: "p1-1".into(),
                topic: "a/b".into(),
                qos: QoS::ExactlyOnce,
                retain: false,
                dup: true,
                payload_len: 4,
            },
        );
        trace.push(
            5,
            "sim",
            Event::Fault {
                fault: Fault::Loss {
                    a: "broker".into(),
                    b: "clients".into(),
                    rate: 0.25,
                },
            },
        );
        trace.push(
            6,
            "clients",
            Event::Disconnected {
                client: "c1".into(),
                cause: DisconnectCause::ClientDisconnect { with_will: false },
            },
        );
        trace
    }

    #[test]
    fn jsonl_round_trips() {
        let trace = sample();
        let text = trace.to_jsonl();
        assert_eq!(text.lines().count(), 5);
        assert_eq!(Trace::from_jsonl(&text).unwrap(), trace);
    }

    #[test]
    fn serialisation_is_stable_and_flat() {
        let text = sample().to_jsonl();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"at_ms":0,"host":"broker","event":"broker_started","durable":true}"#
        );
        assert_eq!(
            lines[2],
            r#"{"at_ms":4,"host":"clients","event":"delivered","client":"c1","id":"p1-1","topic":"a/b","qos":2,"retain":false,"dup":true,"payload_len":4}"#
        );
        assert_eq!(
            lines[4],
            r#"{"at_ms":6,"host":"clients","event":"disconnected","client":"c1","cause":{"kind":"client_disconnect"}}"#
        );
        // Same value, same bytes.
        assert_eq!(sample().to_jsonl(), text);
    }

    #[test]
    fn bad_lines_name_their_line() {
        let err = Trace::from_jsonl("\n{\"at_ms\":1}\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = Trace::from_jsonl(r#"{"at_ms":1,"host":"h","event":"delivered","client":"c","id":"x","topic":"t","qos":3,"retain":false,"dup":false,"payload_len":1}"#).unwrap_err();
        assert!(err.to_string().contains("QoS"), "{err}");
    }

    #[test]
    fn canonical_order_sorts_concurrent_hosts_and_keeps_barriers() {
        let note = |t: &str| Event::Note { text: t.into() };
        let mut a = Trace::new();
        a.push(5, "h1", note("h1-a"));
        a.push(5, "h0", note("h0-a"));
        a.push(5, "h1", note("h1-b"));
        a.push(5, "sim", note("sim"));
        a.push(5, "h1", note("h1-c"));
        a.push(5, "h0", note("h0-b"));
        a.push(6, "h0", note("h0-c"));
        let mut b = Trace::new();
        for i in [1, 0, 2, 3, 5, 4, 6] {
            b.records.push(a.records[i].clone());
        }
        a.canonicalize("sim");
        b.canonicalize("sim");
        assert_eq!(a, b);
        let texts: Vec<String> = a
            .records
            .iter()
            .map(|r| match &r.event {
                Event::Note { text } => text.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            texts,
            ["h0-a", "h1-a", "h1-b", "sim", "h0-b", "h1-c", "h0-c"]
        );
    }

    #[test]
    fn excerpt_marks_the_events() {
        let trace = sample();
        let text = trace.excerpt(&[2], 1);
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().nth(1).unwrap().starts_with(">    2 "));
    }
}
