//! The client's own duties as the sender of PUBLISH and PUBREL, read from its wire writes
//! (`publish_transmitted`, `release_transmitted`):
//!
//! - **DUP.** A QoS 0 PUBLISH carries DUP 0 [MQTT-3.3.1-2]. A QoS 1/2 message's first PUBLISH
//!   in a session carries DUP 0 [3.1.1: MQTT-4.3.2-1, MQTT-4.3.3-1; 5.0: MQTT-4.3.2-2,
//!   MQTT-4.3.3-2]; every later PUBLISH of it in that session is a re-delivery and carries
//!   DUP 1 [MQTT-3.3.1-1]. A message the client sends again after its session was lost is a
//!   new PUBLISH in the new session (DUP 0). DUP 1 on a first write is accepted only after the
//!   client's process crashed: the restarted client cannot know whether it wrote the packet,
//!   and DUP 1 says "might be a re-delivery". No PUBLISH after its PUBREL [3.1.1: MQTT-4.3.3-1;
//!   5.0: MQTT-4.3.3-6].
//! - **Resend on reconnect.** On a connection that resumed the session, every message written
//!   earlier in the session and not finished is written again, PUBLISH (or PUBREL once its
//!   PUBREC came) [MQTT-4.4.0-1], the PUBLISHes in their original order [MQTT-4.6.0-1] and the
//!   PUBRELs in theirs [MQTT-4.6.0-4]. A missing resend is a violation when the connection
//!   carried a newer message instead, or stayed up to the end of the run; a message given up
//!   while the resumed session's connection is up is one too.
//! - **Completion.** At the end of a quiesced run, with the publisher connected on a healthy
//!   link for [`COMPLETION_GRACE_MS`], every QoS 1/2 message it was handed has completed
//!   (PUBACK/PUBCOMP) or been reported failed. When its last write went out on that final
//!   connection and nothing came back, the broker's answer is missing (3.1.1: MQTT-4.3.2-2,
//!   MQTT-4.3.3-2; 5.0: MQTT-4.3.2-4, MQTT-4.3.3-8, MQTT-4.3.3-11); when it was never written in
//!   the final session, the client broke its own contract (no MQTT statement: `client
//!   contract`). A flow the fault layer may have cut by dropping one of its packets (no TCP
//!   does that and keeps the connection) waits for the next reconnect: unresolved, not judged.
//!
//! Who is judged: in `simqtt run` the client and the broker are both simqtt's, and these
//! findings are bugs in one of them (the client, except the missing answer). In `simqtt
//! certify` the client is the instrument, not the subject: a finding of this checker there is
//! graded as a harness error (`certify::grade`), never charged to the broker under test, and
//! coverage does not count this checker's statements as tested (`certify::coverage`).
//!
//! A trace without wire records says nothing about the client's writes; the checker notes it
//! and judges nothing.

use std::collections::BTreeMap;

use super::{spec_id, Outcome, ViolationBuilder};
use crate::codec::{ProtocolVersion, QoS};
use crate::history::model::{Message, Model};
use crate::history::DisconnectCause;

/// How long the publisher must have been connected on a healthy link, and its last write must
/// be old, at the end of the run before an unfinished flow counts as stuck: a round trip on the
/// slowest simulated link is well under this, and the run's quiet period (10 s by default) well
/// over it.
pub const COMPLETION_GRACE_MS: u64 = 2000;

/// The label of the one duty that is the client library's, not MQTT's.
pub const CLIENT_CONTRACT: &str = "client contract";

pub fn check(model: &Model, out: &mut Outcome) {
    if !model.wire_recorded {
        if !model.messages.is_empty() {
            out.note("no wire records in the trace: the client's duties are not judged");
        }
        return;
    }
    for message in &model.messages {
        dup(model, message, out);
    }
    for conn in 0..model.connections.len() {
        resend(model, conn, out);
    }
    completion(model, out);
}

fn version_of(model: &Model, message: &Message) -> ProtocolVersion {
    message
        .connection
        .or_else(|| {
            message
                .transmissions
                .first()
                .and_then(|&t| model.transmissions[t].connection)
        })
        .map_or(ProtocolVersion::V311, |c| model.connections[c].protocol)
}

/// The session epoch a write went out in.
fn epoch_of(model: &Model, transmission: usize) -> Option<usize> {
    model.transmissions[transmission]
        .connection
        .and_then(|c| model.connections[c].epoch)
}

/// The publisher's process crashed between the message's hand-over and `before` (a record).
fn crashed_since(model: &Model, message: &Message, before: usize) -> bool {
    model.connections.iter().any(|c| {
        c.client == message.publisher
            && matches!(&c.end, Some((record, _, Some(DisconnectCause::ClientCrash)))
                if *record > message.event && *record < before)
    })
}

fn dup(model: &Model, message: &Message, out: &mut Outcome) {
    let version = version_of(model, message);
    if message.qos == QoS::AtMostOnce {
        for &t in &message.transmissions {
            let x = &model.transmissions[t];
            if x.dup {
                out.violation(
                    ViolationBuilder::new("MQTT-3.3.1-2")
                        .message(message)
                        .client(&message.publisher)
                        .owed("a QoS 0 PUBLISH with DUP 0")
                        .happened("the client wrote it with DUP 1")
                        .events([message.event, x.event]),
                );
            }
        }
        return;
    }
    let first_spec = match message.qos {
        QoS::AtLeastOnce => spec_id(version, "MQTT-4.3.2-1", "MQTT-4.3.2-2"),
        _ => spec_id(version, "MQTT-4.3.3-1", "MQTT-4.3.3-2"),
    };
    // Per session epoch: whether a PUBLISH and a PUBREL of it went out already.
    let mut published: BTreeMap<usize, usize> = BTreeMap::new();
    let mut released: BTreeMap<usize, usize> = BTreeMap::new();
    let mut writes: Vec<usize> = message
        .transmissions
        .iter()
        .chain(&message.releases)
        .copied()
        .collect();
    writes.sort_by_key(|&t| model.transmissions[t].event);
    for t in writes {
        let x = &model.transmissions[t];
        let Some(epoch) = epoch_of(model, t) else {
            continue;
        };
        if x.release {
            released.entry(epoch).or_insert(t);
            continue;
        }
        if let Some(&rel) = released.get(&epoch) {
            out.violation(
                ViolationBuilder::new(spec_id(version, "MQTT-4.3.3-1", "MQTT-4.3.3-6"))
                    .message(message)
                    .client(&message.publisher)
                    .owed("no PUBLISH of a QoS 2 message after its PUBREL")
                    .happened("the client wrote the PUBLISH again after the PUBREL")
                    .events([message.event, model.transmissions[rel].event, x.event]),
            );
        }
        match published.get(&epoch) {
            None => {
                published.insert(epoch, t);
                if x.dup && !crashed_since(model, message, x.event) {
                    out.violation(
                        ViolationBuilder::new(first_spec.clone())
                            .message(message)
                            .client(&message.publisher)
                            .owed(format!(
                                "DUP 0 on the first PUBLISH of a QoS {} message in a session",
                                message.qos.as_u8()
                            ))
                            .happened("the client's first write of it in this session had DUP 1")
                            .events([message.event, x.event]),
                    );
                } else if x.dup {
                    out.note("DUP 1 on a write after the client's process crashed (permitted)");
                }
            }
            Some(&first) => {
                if !x.dup {
                    out.violation(
                        ViolationBuilder::new("MQTT-3.3.1-1")
                            .message(message)
                            .client(&message.publisher)
                            .owed("DUP 1 on a PUBLISH written again in the same session")
                            .happened("the client resent it with DUP 0")
                            .events([message.event, model.transmissions[first].event, x.event]),
                    );
                }
            }
        }
    }
}

/// The record at which a message was finished (acknowledged or given up), if it was.
fn finished_at(message: &Message) -> Option<usize> {
    match (message.acked.map(|(r, _, _)| r), message.failed) {
        (Some(a), Some(f)) => Some(a.min(f)),
        (a, f) => a.or(f),
    }
}

fn resend(model: &Model, conn: usize, out: &mut Outcome) {
    let c = &model.connections[conn];
    let Some(epoch) = c.epoch else {
        return;
    };
    let Some((connack, _, _, true)) = c.connack else {
        return;
    };
    let position = model.epochs[epoch]
        .connections
        .iter()
        .position(|&x| x == conn);
    if !matches!(position, Some(p) if p > 0) {
        // The session's first connection: nothing to resend.
        return;
    }
    let version = c.protocol;
    // The in-flight messages: written on an earlier connection of the session and not
    // finished before this connection's CONNACK. `(message, released, first write record)`.
    let mut in_flight: Vec<(usize, bool, usize)> = Vec::new();
    for (index, message) in model.messages.iter().enumerate() {
        if message.publisher != c.client || message.qos == QoS::AtMostOnce {
            continue;
        }
        if finished_at(message).is_some_and(|f| f < connack) {
            continue;
        }
        let earlier = |t: &usize| {
            let x = &model.transmissions[*t];
            x.event < connack && x.connection != Some(conn) && epoch_of(model, *t) == Some(epoch)
        };
        let Some(first) = message.transmissions.iter().find(|t| earlier(t)) else {
            continue;
        };
        let released = message.releases.iter().any(earlier);
        in_flight.push((index, released, model.transmissions[*first].event));
    }
    if in_flight.is_empty() {
        return;
    }
    // This connection's writes, in order.
    let mut writes: Vec<usize> = (0..model.transmissions.len())
        .filter(|&t| model.transmissions[t].connection == Some(conn))
        .collect();
    writes.sort_by_key(|&t| model.transmissions[t].event);
    let resent_at = |message: usize, release: bool| {
        writes.iter().copied().find(|&t| {
            let x = &model.transmissions[t];
            x.message == message && x.release == release
        })
    };
    let newer_sent = writes.iter().copied().find(|&t| {
        let x = &model.transmissions[t];
        !x.release
            && model.messages[x.message].qos != QoS::AtMostOnce
            && !in_flight.iter().any(|&(m, _, _)| m == x.message)
    });
    let open_to_end = c.end.is_none()
        && model
            .end_ms
            .saturating_sub(c.connack.map_or(0, |(_, at, _, _)| at))
            >= COMPLETION_GRACE_MS
        && !model.impaired(&c.client, model.end_ms, model.end_ms);
    let closed_at = c.end.as_ref().map(|(record, _, _)| *record);
    let mut publishes: Vec<(usize, usize)> = Vec::new();
    let mut releases: Vec<(usize, usize)> = Vec::new();
    for &(m, released, first) in &in_flight {
        let message = &model.messages[m];
        // Given up while the resumed session's connection was up.
        if let Some(failed) = message.failed {
            if failed > connack && closed_at.is_none_or(|end| failed < end) {
                out.violation(
                    ViolationBuilder::new("MQTT-4.4.0-1")
                        .message(message)
                        .client(&c.client)
                        .owed("an in-flight message resent when the session resumes")
                        .happened("the client gave it up on a connection that resumed the session")
                        .events([message.event, connack, failed]),
                );
                continue;
            }
        }
        match resent_at(m, released) {
            Some(t) => {
                if released {
                    releases.push((first, t));
                } else {
                    publishes.push((first, t));
                }
            }
            None => {
                let why = match newer_sent {
                    Some(t) if finished_at(message).is_none_or(|f| f > model.transmissions[t].event) => {
                        Some((
                            format!(
                                "not resent on the resumed connection, which carried the newer {} instead",
                                model.messages[model.transmissions[t].message].id
                            ),
                            Some(model.transmissions[t].event),
                        ))
                    }
                    _ if open_to_end && finished_at(message).is_none() => Some((
                        "not resent on the resumed connection, open to the end of the run".into(),
                        None,
                    )),
                    _ => None,
                };
                if let Some((happened, extra)) = why {
                    out.violation(
                        ViolationBuilder::new("MQTT-4.4.0-1")
                            .message(message)
                            .client(&c.client)
                            .owed(format!(
                                "{} resent after the CONNACK with Session Present 1",
                                if released {
                                    "the PUBREL"
                                } else {
                                    "the PUBLISH"
                                }
                            ))
                            .happened(happened)
                            .events([message.event, first, connack].into_iter().chain(extra)),
                    );
                }
            }
        }
    }
    for (resends, spec, what) in [
        (publishes, "MQTT-4.6.0-1", "PUBLISH"),
        (releases, "MQTT-4.6.0-4", "PUBREL"),
    ] {
        let mut sorted = resends.clone();
        sorted.sort_by_key(|&(first, _)| first);
        for pair in sorted.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if model.transmissions[later.1].event < model.transmissions[earlier.1].event {
                let a = &model.messages[model.transmissions[earlier.1].message];
                let b = &model.messages[model.transmissions[later.1].message];
                out.violation(
                    ViolationBuilder::new(spec_id(version, spec, spec))
                        .message(a)
                        .client(&c.client)
                        .owed(format!(
                            "resent {what}s in their original order: {} before {}",
                            a.id, b.id
                        ))
                        .happened(format!("{} was resent after {}", a.id, b.id))
                        .events([
                            earlier.0,
                            later.0,
                            model.transmissions[later.1].event,
                            model.transmissions[earlier.1].event,
                        ]),
                );
            }
        }
    }
}

fn completion(model: &Model, out: &mut Outcome) {
    for message in &model.messages {
        if message.qos == QoS::AtMostOnce || finished_at(message).is_some() {
            continue;
        }
        let Some(last_conn) = model
            .connections
            .iter()
            .rposition(|c| c.client == message.publisher)
        else {
            continue;
        };
        let c = &model.connections[last_conn];
        let Some((connack, connack_ms, _, true)) = c.connack else {
            out.note("unresolved: unfinished publish, publisher not connected at the end");
            continue;
        };
        if c.end.is_some() {
            out.note("unresolved: unfinished publish, publisher not connected at the end");
            continue;
        }
        // Healthy since: the CONNACK, and the end of the last fault that touched the link.
        let since = model
            .affecting(&c.client, 0, model.end_ms)
            .filter_map(|span| span.end_ms)
            .max()
            .unwrap_or(0)
            .max(connack_ms);
        let mut writes: Vec<usize> = message
            .transmissions
            .iter()
            .chain(&message.releases)
            .copied()
            .collect();
        writes.sort_by_key(|&t| model.transmissions[t].event);
        let last = writes.last().copied();
        let last_ms = last.map_or(0, |t| model.transmissions[t].at_ms);
        if model.impaired(&c.client, model.end_ms, model.end_ms)
            || model.end_ms.saturating_sub(since.max(last_ms)) < COMPLETION_GRACE_MS
        {
            out.note("unresolved: unfinished publish, too close to the end of the run");
            continue;
        }
        if super::lost_bytes_while_up(model, last_conn, last_ms, model.end_ms) {
            out.note(
                "unresolved: unfinished publish, a fault discarded bytes on the publisher's \
                 connection after its last write (§4.2: MQTT needs a lossless stream; nothing is resent before a reconnect)",
            );
            continue;
        }
        if last.is_some_and(|t| flow_packet_dropped(model, message, model.transmissions[t].event)) {
            out.note("unresolved: unfinished publish, the fault layer may have dropped a packet of its flow");
            continue;
        }
        let version = c.protocol;
        match last {
            Some(t) if model.transmissions[t].connection == Some(last_conn) => {
                let x = &model.transmissions[t];
                let (spec, answer) = match (message.qos, x.release) {
                    (QoS::AtLeastOnce, _) => {
                        (spec_id(version, "MQTT-4.3.2-2", "MQTT-4.3.2-4"), "PUBACK")
                    }
                    (_, false) => (spec_id(version, "MQTT-4.3.3-2", "MQTT-4.3.3-8"), "PUBREC"),
                    (_, true) => (spec_id(version, "MQTT-4.3.3-2", "MQTT-4.3.3-11"), "PUBCOMP"),
                };
                out.violation(
                    ViolationBuilder::new(spec)
                        .message(message)
                        .client(&message.publisher)
                        .owed(format!(
                            "a {answer} for the {} the client wrote",
                            if x.release { "PUBREL" } else { "PUBLISH" }
                        ))
                        .happened(format!(
                            "no answer by the end of the run; the publisher stayed connected {} ms after writing it",
                            model.end_ms - x.at_ms
                        ))
                        .events([message.event, connack, x.event]),
                );
            }
            Some(t) if epoch_of(model, t).is_some() && epoch_of(model, t) == c.epoch => {
                // Written earlier in the session and not again on the final connection: the
                // resend check has judged it.
            }
            _ => {
                out.violation(
                    ViolationBuilder::new(CLIENT_CONTRACT)
                        .message(message)
                        .client(&message.publisher)
                        .owed("every QoS 1/2 publish ends in PUBACK/PUBCOMP or a reported failure")
                        .happened(match last {
                            Some(_) => "written in an earlier session, then neither sent again nor reported failed",
                            None => "never written, never reported failed, the publisher connected at the end",
                        })
                        .events(
                            [message.event, connack]
                                .into_iter()
                                .chain(last.map(|t| model.transmissions[t].event)),
                        ),
                );
            }
        }
    }
}

/// Whether a drop the fault layer armed for the publisher can have eaten a packet of this
/// flow (no TCP loses a packet and keeps the connection, so the flow then waits for the next
/// reconnect): a PUBLISH or PUBREL it writes, or a PUBACK, PUBREC or PUBCOMP coming back, of
/// the message's QoS, armed before the flow's last write (`last_write`, a record) and not shown
/// spent by an acknowledgement of that QoS arriving after it was armed. An armed drop waits
/// for its packet on whichever connection carries it, until the run's quiet period heals it.
fn flow_packet_dropped(model: &Model, message: &Message, last_write: usize) -> bool {
    use crate::history::{Direction, Fault};
    model.packet_faults.iter().any(|(record, _, fault)| {
        let Fault::DropPacket {
            client,
            direction,
            packet_type,
        } = fault
        else {
            return false;
        };
        let packet = packet_type.to_ascii_lowercase();
        let relevant = client == &message.publisher
            && matches!(
                (direction, packet.as_str(), message.qos),
                (Direction::Outbound, "publish", _)
                    | (Direction::Outbound, "pubrel", QoS::ExactlyOnce)
                    | (Direction::Inbound, "puback", QoS::AtLeastOnce)
                    | (Direction::Inbound, "pubrec" | "pubcomp", QoS::ExactlyOnce)
            );
        let spent = model.messages.iter().any(|m| {
            m.publisher == message.publisher
                && m.qos == message.qos
                && m.acked
                    .is_some_and(|(ack, _, _)| ack > *record && ack < last_write)
        });
        relevant && *record < last_write && !spent
    })
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::{DisconnectCause, Event};

    fn wire(b: &mut TraceBuilder, id: &str, dup: bool) {
        b.ev(Event::PublishTransmitted {
            client: "p".into(),
            id: id.into(),
            dup,
            packet_id: Some(1),
        });
    }

    fn release(b: &mut TraceBuilder, id: &str) {
        b.ev(Event::ReleaseTransmitted {
            client: "p".into(),
            id: id.into(),
            packet_id: 1,
        });
    }

    fn end(b: &mut TraceBuilder) {
        let at = b.now + 5_000;
        b.at(at).ev(Event::Note { text: "end".into() });
    }

    fn run(b: &TraceBuilder) -> super::super::Outcome {
        CheckerName::Client.run(&b.model())
    }

    fn specs(out: &super::super::Outcome) -> Vec<String> {
        out.violations.iter().map(|v| v.spec.clone()).collect()
    }

    /// A persistent publisher wrote `ids` at QoS `qos`, lost its connection, and resumed its
    /// session.
    fn resumed(ids: &[&str], qos: u8) -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("p", false, false);
        for id in ids {
            b.publish("p", id, "t", qos);
            wire(&mut b, id, false);
        }
        b.disconnect("p", DisconnectCause::KeepaliveTimeout)
            .connect("p", false, true);
        b
    }

    #[test]
    fn dup_0_first_and_dup_1_on_every_resend_in_the_session() {
        let mut b = resumed(&["p-1", "p-2"], 1);
        wire(&mut b, "p-1", true);
        wire(&mut b, "p-2", true);
        b.acked("p", "p-1").acked("p", "p-2");
        end(&mut b);
        let out = run(&b);
        assert!(out.passed(), "{:?}", out.violations);

        // A resend without DUP.
        let mut b = resumed(&["p-1"], 1);
        wire(&mut b, "p-1", false);
        b.acked("p", "p-1");
        assert_eq!(specs(&run(&b)), ["MQTT-3.3.1-1"]);

        // A first send with DUP.
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 2);
        wire(&mut b, "p-1", true);
        release(&mut b, "p-1");
        b.acked("p", "p-1");
        assert_eq!(specs(&run(&b)), ["MQTT-4.3.3-1"]);

        // QoS 0 never carries DUP.
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 0);
        wire(&mut b, "p-1", true);
        assert_eq!(specs(&run(&b)), ["MQTT-3.3.1-2"]);
    }

    #[test]
    fn a_new_session_sends_again_with_dup_0_and_a_crashed_process_may_set_dup() {
        // The session was lost: the resend is a new PUBLISH of the new session.
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 1);
        wire(&mut b, "p-1", false);
        b.disconnect("p", DisconnectCause::KeepaliveTimeout)
            .connect("p", true, false);
        wire(&mut b, "p-1", false);
        b.acked("p", "p-1");
        end(&mut b);
        assert!(run(&b).passed());

        // Handed over, the process crashed; restarted, it cannot know whether it wrote it.
        let mut b = TraceBuilder::new();
        b.connect("p", false, false).publish("p", "p-1", "t", 1);
        b.disconnect("p", DisconnectCause::ClientCrash)
            .connect("p", false, true);
        wire(&mut b, "p-1", true);
        b.acked("p", "p-1");
        let out = run(&b);
        assert!(out.passed(), "{:?}", out.violations);
        assert!(out.notes.keys().any(|n| n.contains("crashed")));
    }

    #[test]
    fn no_publish_after_its_pubrel() {
        let mut b = resumed(&["p-1"], 2);
        release(&mut b, "p-1");
        b.disconnect("p", DisconnectCause::KeepaliveTimeout)
            .connect("p", false, true);
        wire(&mut b, "p-1", true);
        b.acked("p", "p-1");
        let out = run(&b);
        assert!(specs(&out).contains(&"MQTT-4.3.3-1".to_string()), "{out:?}");
    }

    #[test]
    fn in_flight_messages_are_resent_on_a_resumed_session_in_order() {
        // Dropped on reconnect: a newer message went out instead.
        let mut b = resumed(&["p-1", "p-2"], 1);
        b.publish("p", "p-3", "t", 1);
        wire(&mut b, "p-3", false);
        b.acked("p", "p-3");
        end(&mut b);
        let out = run(&b);
        assert_eq!(
            specs(&out),
            ["MQTT-4.4.0-1", "MQTT-4.4.0-1"],
            "{:?}",
            out.violations
        );
        assert!(out.violations[0].happened.contains("newer p-3"));

        // Dropped on reconnect, nothing else sent, connected to the end.
        let mut b = resumed(&["p-1"], 1);
        end(&mut b);
        let out = run(&b);
        assert_eq!(specs(&out), ["MQTT-4.4.0-1"], "{:?}", out.violations);

        // Given up instead of resent.
        let mut b = resumed(&["p-1"], 1);
        b.ev(Event::PublishFailed {
            client: "p".into(),
            id: "p-1".into(),
            cause: "dropped".into(),
        });
        end(&mut b);
        assert_eq!(specs(&run(&b)), ["MQTT-4.4.0-1"]);

        // Resent out of order.
        let mut b = resumed(&["p-1", "p-2"], 1);
        wire(&mut b, "p-2", true);
        wire(&mut b, "p-1", true);
        b.acked("p", "p-1").acked("p", "p-2");
        assert_eq!(specs(&run(&b)), ["MQTT-4.6.0-1"]);

        // A QoS 2 message past its PUBREC is resent as a PUBREL.
        let mut b = resumed(&["p-1"], 2);
        release(&mut b, "p-1");
        b.disconnect("p", DisconnectCause::KeepaliveTimeout)
            .connect("p", false, true);
        release(&mut b, "p-1");
        b.acked("p", "p-1");
        end(&mut b);
        let out = run(&b);
        assert!(out.passed(), "{:?}", out.violations);

        // The resumed connection died at once: nothing to judge there.
        let mut b = resumed(&["p-1"], 1);
        b.disconnect("p", DisconnectCause::KeepaliveTimeout);
        end(&mut b);
        assert!(run(&b).passed());
    }

    #[test]
    fn every_publish_completes_or_fails_by_the_end() {
        // Written on the final connection, never answered.
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 1);
        wire(&mut b, "p-1", false);
        end(&mut b);
        let out = run(&b);
        assert_eq!(specs(&out), ["MQTT-4.3.2-2"], "{:?}", out.violations);
        assert!(out.violations[0].owed.contains("PUBACK"));

        // Never written although connected.
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 1);
        wire(&mut b, "p-0", false);
        end(&mut b);
        assert_eq!(specs(&run(&b)), [super::CLIENT_CONTRACT]);

        // Reported failed, or offline, or the run ends too soon: nothing owed.
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 1);
        wire(&mut b, "p-1", false);
        b.ev(Event::PublishFailed {
            client: "p".into(),
            id: "p-1".into(),
            cause: "session lost".into(),
        });
        end(&mut b);
        assert!(run(&b).passed());
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 1);
        wire(&mut b, "p-1", false);
        b.disconnect("p", DisconnectCause::ClientCrash);
        end(&mut b);
        assert!(run(&b).passed());
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 1);
        wire(&mut b, "p-1", false);
        let out = run(&b);
        assert!(out.passed());
        assert!(out.notes.keys().any(|n| n.contains("too close")));
    }

    /// qos/qos2-lost-pubcomp-resend-pubrel: the armed PUBCOMP drop outlived the reset and ate
    /// the answer to the resent PUBREL; the flow waits for a reconnect that never comes.
    #[test]
    fn a_flow_whose_packet_the_fault_layer_dropped_is_unresolved() {
        use crate::history::{Direction, Fault};
        let mut b = TraceBuilder::new();
        b.connect("p", false, false)
            .fault(Fault::DropPacket {
                client: "p".into(),
                direction: Direction::Inbound,
                packet_type: "pubcomp".into(),
            })
            .publish("p", "p-1", "t", 2);
        wire(&mut b, "p-1", false);
        release(&mut b, "p-1");
        b.disconnect("p", DisconnectCause::ConnectionReset)
            .connect("p", false, true);
        release(&mut b, "p-1");
        end(&mut b);
        let out = run(&b);
        assert!(out.passed(), "{:?}", out.violations);
        assert!(out.notes.keys().any(|n| n.contains("dropped")));

        // The drop was spent on an earlier flow: this one is stuck for another reason.
        let mut b = TraceBuilder::new();
        b.connect("p", false, false)
            .fault(Fault::DropPacket {
                client: "p".into(),
                direction: Direction::Inbound,
                packet_type: "pubcomp".into(),
            })
            .publish("p", "p-0", "t", 2);
        wire(&mut b, "p-0", false);
        release(&mut b, "p-0");
        b.acked("p", "p-0")
            .disconnect("p", DisconnectCause::ConnectionReset)
            .connect("p", false, true)
            .publish("p", "p-1", "t", 2);
        wire(&mut b, "p-1", false);
        release(&mut b, "p-1");
        end(&mut b);
        assert_eq!(specs(&run(&b)), ["MQTT-4.3.3-2"]);
    }

    /// Recertification of issue 13, mosquitto `chaos/mixed-qos-clean-sessions` seed 0: a
    /// one-way partition (client → broker, 2.2 s, shorter than the keepalive could notice on a
    /// busy connection) discarded the PUBLISHes the publisher wrote; the connection stayed up,
    /// nothing resends on it, and the flows were charged to the broker as unanswered.
    #[test]
    fn a_flow_written_into_a_partition_the_connection_survived_is_unresolved() {
        use crate::history::Fault;
        let partitioned = |one_way: bool| {
            let mut b = TraceBuilder::new();
            b.connect("p", true, false)
                .fault(Fault::Partition {
                    a: "h-p".into(),
                    b: "broker".into(),
                    one_way,
                })
                .publish("p", "p-1", "t", 1);
            wire(&mut b, "p-1", false);
            let heal = b.now + 100;
            b.at(heal).fault(Fault::Heal {
                a: "h-p".into(),
                b: "broker".into(),
            });
            end(&mut b);
            b
        };
        for one_way in [true, false] {
            let out = run(&partitioned(one_way));
            assert!(out.passed(), "{:?}", out.violations);
            assert!(out.notes.keys().any(|n| n.contains("discarded bytes")));
        }
        // A partition of another client's link excuses nothing.
        let mut b = TraceBuilder::new();
        b.connect("p", true, false)
            .fault(Fault::Partition {
                a: "h-q".into(),
                b: "broker".into(),
                one_way: true,
            })
            .publish("p", "p-1", "t", 1);
        wire(&mut b, "p-1", false);
        let heal = b.now + 100;
        b.at(heal).fault(Fault::Heal {
            a: "h-q".into(),
            b: "broker".into(),
        });
        end(&mut b);
        assert_eq!(specs(&run(&b)), ["MQTT-4.3.2-2"]);
    }

    #[test]
    fn a_trace_without_wire_records_is_not_judged() {
        let mut b = TraceBuilder::new();
        b.connect("p", true, false).publish("p", "p-1", "t", 1);
        end(&mut b);
        let out = run(&b);
        assert!(out.passed());
        assert!(out.notes.keys().any(|n| n.contains("no wire records")));
    }
}
