//! Checkers over a finished trace, one file per property (tigerbeetle's `*_checker.zig`
//! layout). Each reads the shared [`Model`] and returns violations plus notes on which of the
//! behaviours the spec permits it saw.
//!
//! A checker never demands one of several permitted behaviours: where MQTT leaves a choice (one
//! copy or one per overlapping subscription, a will on takeover in 3.1.1, order across QoS
//! levels) it accepts each and records the one observed as a [`Note`].

pub mod client;
pub mod invented;
pub mod ordering;
pub mod qos0;
pub mod qos1;
pub mod qos2;
pub mod resubscribe;
pub mod retained;
pub mod session;
pub mod shared;
pub mod subscription;
pub mod will;

use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::Model;
use super::{Direction, Fault, Trace};
use crate::codec::ProtocolVersion;

/// The checkers, by the name scenario files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckerName {
    Qos0,
    Qos1,
    Qos2,
    Ordering,
    Will,
    Retained,
    Session,
    Resubscribe,
    Subscription,
    Invented,
    Client,
    Shared,
}

impl CheckerName {
    pub const ALL: [CheckerName; 12] = [
        CheckerName::Qos0,
        CheckerName::Qos1,
        CheckerName::Qos2,
        CheckerName::Ordering,
        CheckerName::Will,
        CheckerName::Retained,
        CheckerName::Session,
        CheckerName::Resubscribe,
        CheckerName::Subscription,
        CheckerName::Invented,
        CheckerName::Client,
        CheckerName::Shared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckerName::Qos0 => "qos0",
            CheckerName::Qos1 => "qos1",
            CheckerName::Qos2 => "qos2",
            CheckerName::Ordering => "ordering",
            CheckerName::Will => "will",
            CheckerName::Retained => "retained",
            CheckerName::Session => "session",
            CheckerName::Resubscribe => "resubscribe",
            CheckerName::Subscription => "subscription",
            CheckerName::Invented => "invented",
            CheckerName::Client => "client",
            CheckerName::Shared => "shared",
        }
    }

    pub fn run(self, model: &Model) -> Outcome {
        let mut out = Outcome::new(self);
        match self {
            CheckerName::Qos0 => qos0::check(model, &mut out),
            CheckerName::Qos1 => qos1::check(model, &mut out),
            CheckerName::Qos2 => qos2::check(model, &mut out),
            CheckerName::Ordering => ordering::check(model, &mut out),
            CheckerName::Will => will::check(model, &mut out),
            CheckerName::Retained => retained::check(model, &mut out),
            CheckerName::Session => session::check(model, &mut out),
            CheckerName::Resubscribe => resubscribe::check(model, &mut out),
            CheckerName::Subscription => subscription::check(model, &mut out),
            CheckerName::Invented => invented::check(model, &mut out),
            CheckerName::Client => client::check(model, &mut out),
            CheckerName::Shared => shared::check(model, &mut out),
        }
        out
    }
}

impl fmt::Display for CheckerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message a violation is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    pub publisher: String,
    pub topic: String,
    pub id: String,
}

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub checker: CheckerName,
    /// The normative statement, e.g. `MQTT-4.3.2-2`.
    pub spec: String,
    pub message: Option<MessageRef>,
    /// The client (scenario name) the promise was owed to.
    pub client: Option<String>,
    /// What the spec owed.
    pub owed: String,
    /// What the trace shows instead.
    pub happened: String,
    /// Indices of the records that show it.
    pub events: Vec<usize>,
}

impl Violation {
    /// A report: the violation and the trace records around it.
    pub fn render(&self, trace: &Trace) -> String {
        let mut out = format!("[{}] {} ", self.spec, self.checker);
        if let Some(m) = &self.message {
            out.push_str(&format!(
                "message {} from {} on {:?}",
                m.id, m.publisher, m.topic
            ));
        }
        if let Some(c) = &self.client {
            out.push_str(&format!(" to {c}"));
        }
        out.push_str(&format!(
            "\n  owed:     {}\n  happened: {}\n",
            self.owed, self.happened
        ));
        out.push_str(&trace.excerpt(&self.events, 2));
        out
    }
}

/// A permitted behaviour the checker observed, or something it could not decide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Note {
    pub checker: CheckerName,
    pub text: String,
}

/// What one checker found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub checker: CheckerName,
    pub violations: Vec<Violation>,
    /// Distinct notes with how often each was seen.
    pub notes: std::collections::BTreeMap<String, usize>,
}

impl Outcome {
    pub fn new(checker: CheckerName) -> Outcome {
        Outcome {
            checker,
            violations: Vec::new(),
            notes: Default::default(),
        }
    }

    pub fn note(&mut self, text: impl Into<String>) {
        *self.notes.entry(text.into()).or_insert(0) += 1;
    }

    pub fn violation(&mut self, v: ViolationBuilder) {
        self.violations.push(Violation {
            checker: self.checker,
            spec: v.spec,
            message: v.message,
            client: v.client,
            owed: v.owed,
            happened: v.happened,
            events: v.events,
        });
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The fields a checker fills; `Outcome::violation` adds the checker's name.
#[derive(Debug, Clone, Default)]
pub struct ViolationBuilder {
    pub spec: String,
    pub message: Option<MessageRef>,
    pub client: Option<String>,
    pub owed: String,
    pub happened: String,
    pub events: Vec<usize>,
}

impl ViolationBuilder {
    pub fn new(spec: impl Into<String>) -> ViolationBuilder {
        ViolationBuilder {
            spec: spec.into(),
            ..Default::default()
        }
    }

    pub fn message(mut self, m: &super::model::Message) -> Self {
        self.message = Some(MessageRef {
            publisher: m.publisher.clone(),
            topic: m.topic.clone(),
            id: m.id.clone(),
        });
        self
    }

    pub fn message_ref(mut self, publisher: &str, topic: &str, id: &str) -> Self {
        self.message = Some(MessageRef {
            publisher: publisher.into(),
            topic: topic.into(),
            id: id.into(),
        });
        self
    }

    pub fn client(mut self, client: &str) -> Self {
        self.client = Some(client.into());
        self
    }

    pub fn owed(mut self, text: impl Into<String>) -> Self {
        self.owed = text.into();
        self
    }

    pub fn happened(mut self, text: impl Into<String>) -> Self {
        self.happened = text.into();
        self
    }

    pub fn events(mut self, events: impl IntoIterator<Item = usize>) -> Self {
        self.events = events.into_iter().collect();
        self.events.sort_unstable();
        self.events.dedup();
        self
    }
}

/// What the fault layer did to a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishFault {
    Dropped,
    Duplicated,
}

/// Whether the fault layer dropped or duplicated a PUBLISH on the way from `publisher` to
/// `receiver` (leaving the publisher, or arriving at the receiver) anywhere in the run.
pub(crate) fn publish_fault_on_path(
    model: &Model,
    kind: PublishFault,
    publisher: &str,
    receiver: &str,
) -> bool {
    model.packet_faults.iter().any(|(_, _, fault)| {
        let (client, direction, packet_type) = match (kind, fault) {
            (
                PublishFault::Dropped,
                Fault::DropPacket {
                    client,
                    direction,
                    packet_type,
                },
            )
            | (
                PublishFault::Duplicated,
                Fault::DuplicatePacket {
                    client,
                    direction,
                    packet_type,
                },
            ) => (client, direction, packet_type),
            _ => return false,
        };
        packet_type.eq_ignore_ascii_case("publish")
            && ((client == publisher && *direction == Direction::Outbound)
                || (client == receiver && *direction == Direction::Inbound))
    })
}

/// Whether connection `conn` stayed up through a fault that discards bytes on its link (a
/// partition or a loss) at some time in `[from_ms, to_ms]`. MQTT runs over "ordered, lossless"
/// streams (§4.2, both versions): a connection whose stream lost bytes in the middle and went
/// on is outside the protocol's premise. Neither side resends on the same connection (5.0
/// [MQTT-4.4.0-1] forbids it; 3.1.1 resends on reconnect only), so a PUBLISH or an
/// acknowledgement the fault discarded stays missing until the next reconnect: the peer's
/// flow, and the broker's in-flight window toward that client, can stay stuck for good
/// without either side breaking a statement. (Over TCP a partition shorter than the keepalive
/// detection does exactly this: the recertification of issue 13 saw mosquitto's 20-message
/// in-flight window toward a subscriber filled by acknowledgements a one-way partition
/// discarded.)
pub(crate) fn lost_bytes_while_up(model: &Model, conn: usize, from_ms: u64, to_ms: u64) -> bool {
    let c = &model.connections[conn];
    let Some((_, up_ms, _, true)) = c.connack else {
        return false;
    };
    let from = from_ms.max(up_ms);
    let to = c.end_ms().map_or(to_ms, |end| end.min(to_ms));
    from <= to
        && model
            .affecting(&c.client, from, to)
            .any(|span| matches!(span.fault, Fault::Partition { .. } | Fault::Loss { .. }))
}

/// Picks the statement id for the protocol version in use (the ids differ between 3.1.1 and
/// 5.0 for the same rule).
pub fn spec_id(version: ProtocolVersion, v311: &str, v5: &str) -> String {
    match version {
        ProtocolVersion::V311 => v311.to_string(),
        ProtocolVersion::V5 => v5.to_string(),
    }
}

/// The protocol version of an epoch (its latest connection's).
pub fn epoch_version(model: &Model, epoch: usize) -> ProtocolVersion {
    model.epochs[epoch]
        .connections
        .last()
        .map(|&c| model.connections[c].protocol)
        .unwrap_or(ProtocolVersion::V311)
}

/// Runs the named checkers over a trace.
pub fn run(trace: &Trace, checkers: &[CheckerName]) -> Vec<Outcome> {
    let model = Model::build(trace);
    checkers.iter().map(|c| c.run(&model)).collect()
}

/// Runs every checker.
pub fn run_all(trace: &Trace) -> Vec<Outcome> {
    run(trace, &CheckerName::ALL)
}
