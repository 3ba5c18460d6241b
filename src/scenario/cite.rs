//! Which statement a step's failure cites: exactly one, or none, never several.
//!
//! A failed step is reported against the one normative statement it tests, so a reader can tell
//! which rule broke and a coverage table fails only that statement. In order:
//!
//! 1. `note:` on an expectation: the spec permits the other outcome, so a failure is a note
//!    (what the broker chose), never a finding; no statement.
//! 2. The expectation's own `spec:` (an id the scenario's `spec:` lists).
//! 3. The statement the runner's own action tests, whatever the scenario is about:
//!    `connect`/`restart_client` getting no CONNACK, and an `expect_raw` that checks only a
//!    CONNACK 0x00 after the runner's own `send: connect` → a valid CONNECT is acknowledged
//!    with 0x00 (3.1.1 [MQTT-3.1.4-4], 5.0 [MQTT-3.1.4-5]); `subscribe` getting no SUBACK →
//!    [MQTT-3.8.4-1]; `unsubscribe` getting no UNSUBACK → [MQTT-3.10.4-4]; an `expect_raw`
//!    that checks only a PINGRESP after `send: pingreq` → [MQTT-3.12.4-1].
//! 4. The scenario's only `spec:` id.
//! 5. None: the scenario names no statement (certify grades the failure MUST and says so, or
//!    SHOULD with `should:`).
//!
//! A scenario that names several statements must say which one each other expectation tests;
//! [`validate`] refuses it otherwise, at load time, so an ambiguous citation never reaches a
//! report.

use super::raw::ExpectRawStep;
use super::{Errors, PacketKind, Scenario, Seg, Step};
use crate::codec::ProtocolVersion;
use crate::scenario::raw::ExpectedPacket;

/// Where a step's statement comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The step's own `spec:`.
    Own,
    /// The runner's own action (connect, subscribe, unsubscribe, a CONNACK or PINGRESP
    /// answering the runner's own CONNECT or PINGREQ).
    Inherent,
    /// The scenario's only `spec:` id.
    Sole,
}

/// What a failure of one step cites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Citation {
    /// A failure breaks this statement.
    Statement(String, Source),
    /// A failure is a note: the spec permits the other outcome (the text says why).
    Note(String),
    /// The scenario names no statement.
    None,
}

impl Citation {
    /// The statement id, if the step has one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Citation::Statement(id, _) => Some(id),
            _ => None,
        }
    }
}

/// The valid CONNECT → CONNACK 0x00 statement of a version.
pub fn connect_acknowledged(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V311 => "MQTT-3.1.4-4",
        ProtocolVersion::V5 => "MQTT-3.1.4-5",
    }
}

/// SUBSCRIBE → SUBACK (the same id in both versions).
pub const SUBSCRIBE_ANSWERED: &str = "MQTT-3.8.4-1";
/// UNSUBSCRIBE → UNSUBACK (the same id in both versions).
pub const UNSUBSCRIBE_ANSWERED: &str = "MQTT-3.10.4-4";
/// PINGREQ → PINGRESP (the same id in both versions).
pub const PINGREQ_ANSWERED: &str = "MQTT-3.12.4-1";

impl Step {
    /// An expectation's `spec` and `note`; `None` for steps that are not expectations.
    pub fn citation_fields(&self) -> Option<(Option<&str>, Option<&str>)> {
        fn pair<'a>(
            spec: &'a Option<String>,
            note: &'a Option<String>,
        ) -> Option<(Option<&'a str>, Option<&'a str>)> {
            Some((spec.as_deref(), note.as_deref()))
        }
        match self {
            Step::ExpectMessages(x) => pair(&x.spec, &x.note),
            Step::ExpectNoMessage(x) => pair(&x.spec, &x.note),
            Step::ExpectSessionPresent(x) => pair(&x.spec, &x.note),
            Step::ExpectWill(x) => pair(&x.spec, &x.note),
            Step::ExpectRaw(x) => pair(&x.spec, &x.note),
            Step::Reauthenticate(x) => pair(&x.spec, &x.note),
            _ => None,
        }
    }

    /// The client whose protocol version the step's statement is read in: the one it
    /// expects of (the receiving client; a will's owner, whose CONNECT registered it).
    pub fn subject_client(&self) -> Option<&str> {
        match self {
            Step::Connect(c) | Step::RestartClient(c) => Some(&c.client),
            Step::Subscribe(x) => Some(&x.client),
            Step::Unsubscribe(x) => Some(&x.client),
            Step::ExpectMessages(x) => Some(&x.client),
            Step::ExpectNoMessage(x) => Some(&x.client),
            Step::ExpectSessionPresent(x) => Some(&x.client),
            Step::ExpectWill(x) => Some(&x.of),
            Step::ExpectRaw(x) => Some(&x.client),
            Step::Raw(x) => Some(&x.client),
            Step::Reauthenticate(x) => Some(&x.client),
            _ => None,
        }
    }
}

impl Scenario {
    /// The protocol version of step `index`'s subject client (3.1.1 when it has none).
    pub fn step_version(&self, index: usize) -> ProtocolVersion {
        self.steps
            .get(index)
            .and_then(Step::subject_client)
            .and_then(|c| self.clients.get(c))
            .map_or(ProtocolVersion::V311, |c| c.protocol)
    }

    /// What a failure of step `index` cites (see the module documentation).
    pub fn citation(&self, index: usize) -> Citation {
        let Some(step) = self.steps.get(index) else {
            return Citation::None;
        };
        if let Step::ExpectRaw(x) = step {
            if x.assume {
                // A premise: when it fails the run stops, and nothing is charged.
                return Citation::None;
            }
        }
        if let Some((spec, note)) = step.citation_fields() {
            if let Some(note) = note {
                return Citation::Note(note.to_string());
            }
            if let Some(id) = spec {
                return Citation::Statement(id.to_string(), Source::Own);
            }
        }
        if let Some(id) = self.inherent(index) {
            return Citation::Statement(id.to_string(), Source::Inherent);
        }
        if step.citation_fields().is_none() {
            // Actions and faults test nothing of their own.
            return Citation::None;
        }
        match self.spec.as_slice() {
            [only] => Citation::Statement(only.clone(), Source::Sole),
            _ => Citation::None,
        }
    }

    /// The statement id a failure of step `index` cites, if any.
    pub fn step_statement(&self, index: usize) -> Option<String> {
        self.citation(index).id().map(str::to_string)
    }

    /// The statement the runner's own action at step `index` tests, if it is one.
    fn inherent(&self, index: usize) -> Option<&'static str> {
        let version = self.step_version(index);
        match &self.steps[index] {
            Step::Connect(_) | Step::RestartClient(_) => Some(connect_acknowledged(version)),
            Step::Subscribe(_) => Some(SUBSCRIBE_ANSWERED),
            Step::Unsubscribe(_) => Some(UNSUBSCRIBE_ANSWERED),
            Step::ExpectRaw(x) if x.spec.is_none() && x.note.is_none() => {
                let sent = self.latest_send(index, &x.client)?;
                match (x.packet?, sent) {
                    (ExpectedPacket::Connack, "connect")
                        if x.reason == Some(0) && checks_only_the_packet(x) =>
                    {
                        Some(connect_acknowledged(version))
                    }
                    (ExpectedPacket::Pingresp, "pingreq")
                        if x.reason.is_none() && checks_only_the_packet(x) =>
                    {
                        Some(PINGREQ_ANSWERED)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// What the latest `raw` step of `client` before step `index` sent (trimmed).
    fn latest_send(&self, index: usize, client: &str) -> Option<&str> {
        self.steps[..index].iter().rev().find_map(|s| match s {
            Step::Raw(r) if r.client == client => r.send.as_deref().map(str::trim),
            _ => None,
        })
    }
}

/// An `expect_raw` that checks nothing but the packet type (and a reason code the caller
/// looks at): no other field, no premise, no second look.
fn checks_only_the_packet(x: &ExpectRawStep) -> bool {
    x.reasons.is_empty()
        && x.session_present.is_none()
        && x.codes.is_none()
        && x.packet_id.is_none()
        && x.topic.is_none()
        && x.qos.is_none()
        && x.retain.is_none()
        && x.dup.is_none()
        && x.payload.is_none()
        && x.max_len.is_none()
        && x.topic_alias_max.is_none()
        && x.absent.is_empty()
        && x.contains.is_empty()
        && x.closed.is_none()
        && !x.optional
        && !x.again
        && !x.assume
        && x.server_keep_alive.is_none()
}

/// The load-time checks: an expectation names its statement when the scenario names several;
/// the statement it names is one the scenario lists; `spec` and `note` exclude each other.
pub(super) fn validate(s: &Scenario, e: &mut Errors<'_>) {
    for (i, step) in s.steps.iter().enumerate() {
        let Some((spec, note)) = step.citation_fields() else {
            continue;
        };
        let kw = step.keyword();
        let path = [Seg::Key("steps"), Seg::Index(i), Seg::Key(kw)];
        if spec.is_some() && note.is_some() {
            e.at(
                &path,
                Some("note"),
                format!(
                    "step {} ({kw}): give `spec` (a failure breaks it) or `note` (the spec permits a failure), not both",
                    i + 1
                ),
            );
        }
        if note.is_some_and(|n| n.trim().is_empty()) {
            e.at(
                &path,
                Some("note"),
                format!(
                    "step {} ({kw}): a `note` says why the spec permits the other outcome",
                    i + 1
                ),
            );
        }
        if let Some(id) = spec {
            if !super::spec_id_ok(id) {
                e.at(
                    &path,
                    Some(id),
                    format!("{id:?} is not a statement id; expected the form MQTT-3.1.2-4"),
                );
            } else if !s.spec.iter().any(|listed| listed == id) {
                e.at(
                    &path,
                    Some(id),
                    format!(
                        "step {} ({kw}) cites {id}, which the scenario's `spec:` does not list; add it there",
                        i + 1
                    ),
                );
            }
        }
        let premise = matches!(step, Step::ExpectRaw(x) if x.assume);
        if premise && (spec.is_some() || note.is_some()) {
            e.at(
                &path,
                Some("assume"),
                format!(
                    "step {} ({kw}): a premise (`assume: true`) is no obligation of the broker: it takes no `spec` or `note`",
                    i + 1
                ),
            );
        }
        if s.spec.len() > 1 && !premise && s.citation(i) == Citation::None {
            e.at(
                &path,
                None,
                format!(
                    "step {} ({kw}): the scenario names {} statements, so say which one this step tests with `spec:` (or `note:` where the spec permits a failure)",
                    i + 1,
                    s.spec.len()
                ),
            );
        }
    }
    // `again` judges the deliveries an earlier expect_messages of the same client judged.
    for (i, step) in s.steps.iter().enumerate() {
        let Step::ExpectMessages(x) = step else {
            continue;
        };
        let earlier = s.steps[..i]
            .iter()
            .any(|p| matches!(p, Step::ExpectMessages(p) if p.client == x.client));
        if x.again && !earlier {
            e.at(
                &[
                    Seg::Key("steps"),
                    Seg::Index(i),
                    Seg::Key("expect_messages"),
                ],
                Some("again"),
                format!(
                    "step {} (expect_messages): `again` needs an earlier expect_messages of {}",
                    i + 1,
                    x.client
                ),
            );
        }
    }
    // `again` looks at the packet an earlier expect_raw of the same client took.
    for (i, step) in s.steps.iter().enumerate() {
        let Step::ExpectRaw(x) = step else { continue };
        if !x.again {
            continue;
        }
        let previous = s.steps[..i].iter().rev().find_map(|p| match p {
            Step::ExpectRaw(p) if p.client == x.client => Some(p),
            _ => None,
        });
        let same = previous.is_some_and(|p| {
            p.packet.and_then(ExpectedPacket::kind).is_some()
                && p.packet.and_then(ExpectedPacket::kind)
                    == x.packet.and_then(ExpectedPacket::kind)
        });
        if !same {
            e.at(
                &[Seg::Key("steps"), Seg::Index(i), Seg::Key("expect_raw")],
                Some("again"),
                format!(
                    "step {} (expect_raw): `again` needs an earlier expect_raw of {} that takes the same packet type",
                    i + 1,
                    x.client
                ),
            );
        }
    }
}

/// The packet kinds an `expect_raw` can name, for callers that look at what a step takes.
pub fn expected_kind(x: &ExpectRawStep) -> Option<PacketKind> {
    x.packet.and_then(ExpectedPacket::kind)
}
