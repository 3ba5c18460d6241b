//! Ordering (MQTT 4.6): on an ordered topic (every topic by default), the broker sends a
//! subscriber the PUBLISH packets of one topic and QoS *in the order it received them* from a
//! given client [MQTT-4.6.0-6 (3.1.1) / MQTT-4.6.0-5 (5.0)].
//!
//! The rule is about what the broker received, so the checker reasons about the publisher's
//! wire writes (`publish_transmitted`), not about the order the application published in. A
//! message can reach the broker more than once: a QoS 1 resend after a reconnect (4.6's own
//! "1,2,3,2,3,4"), or a resend as a new message after the publisher's clean reconnect (a new
//! session: the broker received an earlier message again, after later ones). What the trace
//! proves about the broker's receive order:
//! - two writes on one connection arrive in the order written (TCP);
//! - a write whose PUBACK/PUBCOMP came back before another write was sent arrived first.
//!
//! Streams are keyed by (subscriber session, publisher, topic, publish QoS, delivered QoS);
//! order across QoS levels is not promised (the checker records whether it held). Retained
//! copies sent because of a SUBSCRIBE are not part of the stream. Only *first* copies are
//! ordered: a redelivery of an earlier message may follow later ones. When message B first
//! reaches the subscriber before message A does, that is a violation when either
//! - (A) every write of A that can have produced the subscriber's copy certainly reached the
//!   broker before every write of B that can have produced its copy; or
//! - (B) some write of A certainly reached the broker before every write of B that can have
//!   produced its copy, the subscriber was certainly subscribed when it did (SUBACK before the
//!   write), and the copy is QoS ≥ 1 in one session (it cannot have been lost: it had to come
//!   first).
//!
//! A write "can have produced" a copy when it was sent before the copy arrived and the broker
//! can have had one of the session's matching subscriptions when it arrived. A PUBLISH
//! dropped by the fault layer (which no TCP would do) breaks the first rule, so it excuses
//! reordering of that stream.

use std::collections::BTreeMap;

use super::{
    epoch_version, publish_fault_on_path, spec_id, Outcome, PublishFault, ViolationBuilder,
};
use crate::codec::QoS;
use crate::history::model::{Delivery, Model};

/// A first copy in a stream and the writes that can have produced it.
struct First {
    delivery: usize,
    message: usize,
    sources: Vec<usize>,
}

pub fn check(model: &Model, out: &mut Outcome) {
    // Per stream: the first copy of each message, in arrival order.
    let mut streams: BTreeMap<(usize, String, String, QoS, QoS), Vec<First>> = BTreeMap::new();
    // Cross-QoS: per (epoch, publisher, topic), the highest seq seen over all QoS levels.
    let mut across: BTreeMap<(usize, String, String), (usize, Vec<QoS>)> = BTreeMap::new();
    let any_shared = model.subscriptions.iter().any(|s| s.shared().is_some());
    for (d, delivery) in model.deliveries.iter().enumerate() {
        let (Some(epoch), Some(message_index)) = (delivery.epoch, delivery.message) else {
            continue;
        };
        let message = &model.messages[message_index];
        if message.topic != delivery.topic || model.retained_copy(d, message) {
            continue;
        }
        // Ordered topics are promised on non-shared subscriptions [MQTT-4.6.0-6 (5.0)]: a
        // copy only a shared subscription can have routed is in no stream.
        if any_shared {
            let shared = model
                .subscriptions
                .iter()
                .any(|s| s.epoch == epoch && s.shared().is_some() && s.matches_any(&message.topic));
            let ordinary = model
                .subscriptions
                .iter()
                .any(|s| s.epoch == epoch && s.matches(&message.topic));
            if shared && !ordinary {
                continue;
            }
        }
        let key = (
            epoch,
            message.publisher.clone(),
            message.topic.clone(),
            message.qos,
            delivery.qos,
        );
        let firsts = streams.entry(key).or_default();
        let later_seen = firsts
            .iter()
            .any(|f| model.messages[f.message].seq > message.seq);
        if firsts.iter().any(|f| f.message == message_index) {
            if later_seen {
                out.note("redelivery of an earlier message after later ones (permitted by 4.6)");
            }
            continue;
        }
        let first = First {
            delivery: d,
            message: message_index,
            sources: sources(model, epoch, d),
        };
        // The earliest first copy that this one had to precede.
        let broken = firsts
            .iter()
            .find(|earlier| must_precede(model, epoch, &first, earlier));
        match broken {
            Some(earlier) => {
                if publish_fault_on_path(
                    model,
                    PublishFault::Dropped,
                    &message.publisher,
                    &delivery.client,
                ) {
                    out.note("reordering after a PUBLISH dropped by the fault layer (excused)");
                } else {
                    let other = &model.deliveries[earlier.delivery];
                    out.violation(
                        ViolationBuilder::new(spec_id(
                            epoch_version(model, epoch),
                            "MQTT-4.6.0-6",
                            "MQTT-4.6.0-5",
                        ))
                        .message(message)
                        .client(&delivery.client)
                        .owed(format!(
                            "arrival order at the broker: {} before {}, as {} sent them (topic {:?}, QoS {})",
                            message.id,
                            other.id,
                            message.publisher,
                            message.topic,
                            message.qos.as_u8()
                        ))
                        .happened(format!(
                            "{} first arrived after {} had arrived",
                            message.id, other.id
                        ))
                        .events(
                            first
                                .sources
                                .iter()
                                .chain(&earlier.sources)
                                .map(|&t| model.transmissions[t].event)
                                .chain([other.event, delivery.event]),
                        ),
                    );
                }
            }
            None if later_seen => out.note(
                "a message first arrived after later ones that reached the broker before it (a resend; permitted)",
            ),
            None => {}
        }
        firsts.push(first);
        // Order across QoS levels: permitted either way; record what happened.
        let entry = across
            .entry((epoch, message.publisher.clone(), message.topic.clone()))
            .or_insert((message.seq, Vec::new()));
        if !entry.1.contains(&message.qos) {
            entry.1.push(message.qos);
        }
        if entry.1.len() > 1 {
            if message.seq < entry.0 {
                out.note("order across QoS levels: not preserved (permitted)");
            } else {
                out.note("order across QoS levels: preserved");
            }
        }
        entry.0 = entry.0.max(message.seq);
    }
}

/// Whether the first copy `late` (arrived after the first copy `early` in the same stream)
/// had to arrive first: rule (A) or (B) of the header.
fn must_precede(model: &Model, epoch: usize, late: &First, early: &First) -> bool {
    if early.sources.is_empty() || late.sources.is_empty() {
        return false;
    }
    let before_all_early = |x: usize| early.sources.iter().all(|&z| certainly_before(model, x, z));
    // (A): whichever writes produced the two copies, the late one's reached the broker first.
    if late.sources.iter().all(|&x| before_all_early(x)) {
        return true;
    }
    // (B): a write of the late message reached the broker first while the session was
    // certainly subscribed, and a QoS ≥ 1 copy of it could not be lost within the session.
    let d_late = &model.deliveries[late.delivery];
    if d_late.qos == QoS::AtMostOnce {
        return false;
    }
    let d_early = &model.deliveries[early.delivery];
    model.messages[late.message]
        .transmissions
        .iter()
        .any(|&y| before_all_early(y) && certainly_routed(model, epoch, y, d_early, d_late.qos))
}

/// The PUBLISH writes of a delivery's message that can have produced it: sent before it
/// arrived, at a time the broker can have had a matching subscription of the session.
fn sources(model: &Model, epoch: usize, delivery: usize) -> Vec<usize> {
    let d = &model.deliveries[delivery];
    let Some(message) = d.message.map(|m| &model.messages[m]) else {
        return Vec::new();
    };
    let earliest_subscribe = model
        .subscriptions
        .iter()
        .filter(|s| s.epoch == epoch && s.matches(&message.topic))
        .map(|s| s.sent_ms)
        .min();
    let Some(earliest_subscribe) = earliest_subscribe else {
        // Delivered without a subscription: the subscription checker's business; any write
        // can be the source.
        return message
            .transmissions
            .iter()
            .copied()
            .filter(|&t| model.transmissions[t].at_ms <= d.at_ms)
            .collect();
    };
    message
        .transmissions
        .iter()
        .copied()
        .filter(|&t| {
            let x = &model.transmissions[t];
            // The latest the broker can have received it: its acknowledgement, or this copy.
            let latest = model.answered(t).map_or(d.at_ms, |(_, at)| at.min(d.at_ms));
            x.at_ms <= d.at_ms && latest >= earliest_subscribe
        })
        .collect()
}

/// Write `x` certainly reached the broker before write `z` did.
fn certainly_before(model: &Model, x: usize, z: usize) -> bool {
    let (tx, tz) = (&model.transmissions[x], &model.transmissions[z]);
    let same_connection = tx.connection.is_some() && tx.connection == tz.connection;
    (same_connection && tx.event < tz.event)
        || model
            .answered(x)
            .is_some_and(|(record, _)| record < tz.event)
}

/// The broker certainly routed write `y` to the session at delivered QoS `qos`: a matching
/// subscription's SUBACK arrived before `y` was sent, it stayed until the other copy
/// (`until`) arrived, and every subscription that can have been there gives that QoS.
fn certainly_routed(model: &Model, epoch: usize, y: usize, until: &Delivery, qos: QoS) -> bool {
    let t = &model.transmissions[y];
    let message = &model.messages[t.message];
    let publisher_id = model.publisher_client_id(message);
    let epoch_id = model.epochs[epoch].client_id.as_str();
    let candidates = model.subscriptions.iter().filter(|s| {
        s.epoch == epoch
            && s.matches(&message.topic)
            && !(s.request.no_local && publisher_id.as_deref() == Some(epoch_id))
    });
    let mut certain = Vec::new();
    let mut possible = Vec::new();
    for s in candidates {
        let effective = s.qos_bound().min(message.qos);
        let could_be_there = s.sent_ms <= until.at_ms
            && s.acked.is_none_or(|(_, _, g)| g.is_some())
            && s.unsubscribed.is_none_or(|(_, at)| at >= t.at_ms);
        if could_be_there {
            possible.push(effective);
        }
        let replaced = model.subscriptions.iter().any(|o| {
            o.epoch == epoch
                && o.request.filter == s.request.filter
                && o.sent_ms > s.sent_ms
                && o.sent_ms <= until.at_ms
        });
        if matches!(s.acked, Some((_, at, Some(_))) if at < t.at_ms)
            && s.unsubscribed.is_none_or(|(_, at)| at > until.at_ms)
            && !replaced
        {
            certain.push(effective);
        }
    }
    let Some(&must) = certain.iter().max() else {
        return false;
    };
    must == qos && possible.iter().all(|&p| p <= must)
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::{Direction, DisconnectCause, Event, Fault};

    fn base() -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("s", false, false)
            .connect("p", false, false)
            .subscribe("s", "t", 1, 1);
        for i in 1..=4 {
            b.publish_acked("p", &format!("p-{i}"), "t", 1);
        }
        b
    }

    fn wire(b: &mut TraceBuilder, client: &str, id: &str, dup: bool) {
        b.ev(Event::PublishTransmitted {
            client: client.into(),
            id: id.into(),
            dup,
            packet_id: Some(1),
        });
    }

    #[test]
    fn in_order_and_permitted_redelivery_pass() {
        let mut b = base();
        for i in [1, 2, 3] {
            b.deliver("s", &format!("p-{i}"), "t", 1);
        }
        b.disconnect("s", DisconnectCause::KeepaliveTimeout)
            .connect("s", false, true);
        // 1,2,3,2,3,4: the example 4.6 gives.
        b.deliver_opts("s", "p-2", "t", 1, false, true)
            .deliver_opts("s", "p-3", "t", 1, false, true)
            .deliver("s", "p-4", "t", 1);
        let out = CheckerName::Ordering.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
        assert!(out.notes.keys().any(|n| n.contains("redelivery")));
    }

    #[test]
    fn a_new_message_after_a_later_one_violates() {
        let mut b = base();
        b.deliver("s", "p-1", "t", 1)
            .deliver("s", "p-3", "t", 1)
            .deliver("s", "p-2", "t", 1);
        let out = CheckerName::Ordering.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        let v = &out.violations[0];
        assert_eq!(v.spec, "MQTT-4.6.0-6");
        assert_eq!(v.message.as_ref().unwrap().id, "p-2");
        assert!(v.happened.contains("after p-3"));
    }

    #[test]
    fn different_topics_and_qos_levels_are_separate_streams() {
        let mut b = TraceBuilder::new();
        b.connect("s", false, false)
            .connect("p", false, false)
            .subscribe("s", "#", 2, 2)
            .publish_acked("p", "a-1", "a", 1)
            .publish_acked("p", "b-1", "b", 1)
            .publish_acked("p", "a-2", "a", 2)
            .deliver("s", "b-1", "b", 1)
            .deliver("s", "a-2", "a", 2)
            .deliver("s", "a-1", "a", 1);
        let out = CheckerName::Ordering.run(&b.model());
        assert!(out.passed());
        assert!(out.notes.keys().any(|n| n.contains("not preserved")));
    }

    #[test]
    fn a_dropped_publish_excuses_reordering() {
        let mut b = base();
        b.fault(Fault::DropPacket {
            client: "p".into(),
            direction: Direction::Outbound,
            packet_type: "publish".into(),
        })
        .deliver("s", "p-2", "t", 1)
        .deliver("s", "p-1", "t", 1);
        assert!(CheckerName::Ordering.run(&b.model()).passed());
    }

    /// The shape of mixed-qos-clean-sessions seed 247 (and the 16 other chaos seeds of issue
    /// 13): the publisher's PUBACKs are lost, the subscriber's new session starts between two
    /// of its messages, and the publisher's clean reconnect sends the earlier message again
    /// as a new one. The broker received p-1, p-2, then p-1 and p-2 again; the new session got
    /// p-2 (first receipt), p-1 (second receipt), p-2: arrival order.
    #[test]
    fn an_earlier_message_resent_after_the_publishers_clean_reconnect_may_follow() {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false).subscribe("s", "t", 1, 1);
        b.connect("p", true, false);
        b.publish("p", "p-1", "t", 1);
        wire(&mut b, "p", "p-1", false);
        b.deliver("s", "p-1", "t", 1)
            .disconnect("s", DisconnectCause::KeepaliveTimeout)
            .connect("s", true, false)
            .subscribe("s", "t", 1, 1);
        b.publish("p", "p-2", "t", 1);
        wire(&mut b, "p", "p-2", false);
        b.deliver("s", "p-2", "t", 1)
            .disconnect("p", DisconnectCause::KeepaliveTimeout)
            .connect("p", true, false);
        wire(&mut b, "p", "p-1", false);
        wire(&mut b, "p", "p-2", false);
        b.deliver("s", "p-1", "t", 1)
            .acked("p", "p-1")
            .deliver("s", "p-2", "t", 1)
            .acked("p", "p-2");
        let out = CheckerName::Ordering.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
        assert!(
            out.notes.keys().any(|n| n.contains("a resend")),
            "{:?}",
            out.notes
        );

        // The same trace without the resend: p-1 reached the broker only before p-2.
        let mut b = TraceBuilder::new();
        b.connect("s", true, false).subscribe("s", "t", 1, 1);
        b.connect("p", true, false);
        b.publish("p", "p-1", "t", 1);
        wire(&mut b, "p", "p-1", false);
        b.publish("p", "p-2", "t", 1);
        wire(&mut b, "p", "p-2", false);
        b.deliver("s", "p-2", "t", 1).deliver("s", "p-1", "t", 1);
        let out = CheckerName::Ordering.run(&b.model());
        assert_eq!(out.violations.len(), 1, "{:?}", out.notes);
    }

    /// Rule (B): the subscriber was subscribed when the broker received p-1 (before p-2), so a
    /// QoS 1 copy was owed ahead of p-2 and a later resend of p-1 does not excuse its absence.
    #[test]
    fn a_resend_does_not_excuse_a_copy_the_broker_had_to_send_first() {
        let mut b = TraceBuilder::new();
        b.connect("s", false, false).subscribe("s", "t", 1, 1);
        b.connect("p", true, false);
        b.publish("p", "p-1", "t", 1);
        wire(&mut b, "p", "p-1", false);
        b.publish("p", "p-2", "t", 1);
        wire(&mut b, "p", "p-2", false);
        b.deliver("s", "p-2", "t", 1)
            .disconnect("p", DisconnectCause::KeepaliveTimeout)
            .connect("p", true, false);
        wire(&mut b, "p", "p-1", false);
        b.deliver("s", "p-1", "t", 1);
        let out = CheckerName::Ordering.run(&b.model());
        assert_eq!(out.violations.len(), 1, "{:?}", out.notes);
        assert_eq!(out.violations[0].message.as_ref().unwrap().id, "p-1");

        // At QoS 0 the first copy may have been lost; the resend explains the order.
        let mut b = TraceBuilder::new();
        b.connect("s", false, false).subscribe("s", "t", 0, 0);
        b.connect("p", true, false);
        b.publish("p", "p-1", "t", 1);
        wire(&mut b, "p", "p-1", false);
        b.publish("p", "p-2", "t", 1);
        wire(&mut b, "p", "p-2", false);
        b.deliver("s", "p-2", "t", 0)
            .disconnect("p", DisconnectCause::KeepaliveTimeout)
            .connect("p", true, false);
        wire(&mut b, "p", "p-1", false);
        b.deliver("s", "p-1", "t", 0);
        let out = CheckerName::Ordering.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
    }

    #[test]
    fn an_acknowledgement_orders_writes_across_connections() {
        // p-1 was acknowledged before p-2 was sent on another connection: the broker had
        // p-1 first, whatever the connections.
        let mut b = TraceBuilder::new();
        b.connect("s", false, false).subscribe("s", "t", 1, 1);
        b.connect("p", false, false);
        b.publish("p", "p-1", "t", 1);
        wire(&mut b, "p", "p-1", false);
        b.acked("p", "p-1")
            .disconnect("p", DisconnectCause::KeepaliveTimeout)
            .connect("p", false, true);
        b.publish("p", "p-2", "t", 1);
        wire(&mut b, "p", "p-2", false);
        b.deliver("s", "p-2", "t", 1).deliver("s", "p-1", "t", 1);
        assert_eq!(CheckerName::Ordering.run(&b.model()).violations.len(), 1);
    }
}
