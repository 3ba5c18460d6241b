//! Ordering (MQTT 4.6): on an ordered topic (every topic by default), messages from one
//! publisher on one topic at one QoS reach each subscriber in the order they were published
//! [MQTT-4.6.0-6 (3.1.1) / MQTT-4.6.0-5 (5.0)].
//!
//! What 4.6 permits, and this checker accepts: with QoS 1, a redelivery of an earlier message
//! may arrive after later ones ("1,2,3,2,3,4"), because resends after a reconnect repeat the
//! unacknowledged tail in order. So the rule is on *first* copies: a message seen for the first
//! time must not come after a later message of the same stream was already seen. Streams are
//! keyed by (subscriber session, publisher, topic, publish QoS, delivered QoS). Order across
//! QoS levels is not promised; the checker records whether it held. Retained copies sent
//! because of a SUBSCRIBE are not part of the stream. A PUBLISH dropped by the fault layer
//! (which no TCP would do) excuses reordering of that stream.

use std::collections::BTreeMap;

use super::{
    epoch_version, publish_fault_on_path, spec_id, Outcome, PublishFault, ViolationBuilder,
};
use crate::codec::QoS;
use crate::history::model::Model;

#[derive(Default)]
struct Stream {
    /// Message seq → delivery index of its first copy.
    seen: BTreeMap<usize, usize>,
    /// Highest seq seen so far, with its first delivery.
    highest: Option<(usize, usize)>,
}

pub fn check(model: &Model, out: &mut Outcome) {
    let mut streams: BTreeMap<(usize, String, String, QoS, QoS), Stream> = BTreeMap::new();
    // Cross-QoS: per (epoch, publisher, topic), the highest seq seen over all QoS levels.
    let mut across: BTreeMap<(usize, String, String), (usize, Vec<QoS>)> = BTreeMap::new();
    for (d, delivery) in model.deliveries.iter().enumerate() {
        let Some(epoch) = delivery.epoch else {
            continue;
        };
        let Some(&message_index) = model.message_by_id.get(&delivery.id) else {
            continue;
        };
        let message = &model.messages[message_index];
        if message.topic != delivery.topic || model.retained_copy(d, message) {
            continue;
        }
        let key = (
            epoch,
            message.publisher.clone(),
            message.topic.clone(),
            message.qos,
            delivery.qos,
        );
        let stream = streams.entry(key).or_default();
        if stream.seen.contains_key(&message.seq) {
            if stream.highest.is_some_and(|(h, _)| h > message.seq) {
                out.note("redelivery of an earlier message after later ones (permitted by 4.6)");
            }
            continue;
        }
        stream.seen.insert(message.seq, d);
        match stream.highest {
            Some((highest, first)) if highest > message.seq => {
                if publish_fault_on_path(
                    model,
                    PublishFault::Dropped,
                    &message.publisher,
                    &delivery.client,
                ) {
                    out.note("reordering after a PUBLISH dropped by the fault layer (excused)");
                } else {
                    let later = &model.deliveries[first];
                    out.violation(
                        ViolationBuilder::new(spec_id(
                            epoch_version(model, epoch),
                            "MQTT-4.6.0-6",
                            "MQTT-4.6.0-5",
                        ))
                        .message(message)
                        .client(&delivery.client)
                        .owed(format!(
                            "publish order: {} before {}, as {} published them (topic {:?}, QoS {})",
                            message.id,
                            later.id,
                            message.publisher,
                            message.topic,
                            message.qos.as_u8()
                        ))
                        .happened(format!(
                            "{} first arrived after {} had arrived",
                            message.id, later.id
                        ))
                        .events([message.event, later.event, delivery.event]),
                    );
                }
            }
            _ => stream.highest = Some((message.seq, d)),
        }
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

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::{Direction, DisconnectCause, Fault};

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
}
