//! QoS 0: at most once, never with DUP. A QoS 0 message reaches the broker at most once (there
//! is no retry), so a session gets at most one copy per matching subscription — one copy in
//! total, or one per overlapping subscription, both permitted [MQTT-3.3.5-1 (3.1.1)] — unless
//! the fault layer duplicated the PUBLISH on the wire.

use super::{
    epoch_version, publish_fault_on_path, spec_id, Outcome, PublishFault, ViolationBuilder,
};
use crate::codec::QoS;
use crate::history::model::Model;

pub fn check(model: &Model, out: &mut Outcome) {
    for (index, message) in model.messages.iter().enumerate() {
        if message.qos != QoS::AtMostOnce || message.empty {
            continue;
        }
        let Some(deliveries) = model.deliveries_of.get(&index) else {
            continue;
        };
        for &d in deliveries {
            let delivery = &model.deliveries[d];
            if delivery.dup {
                let version = delivery
                    .epoch
                    .map(|e| epoch_version(model, e))
                    .unwrap_or(crate::codec::ProtocolVersion::V311);
                out.violation(
                    ViolationBuilder::new(spec_id(version, "MQTT-3.3.1-2", "MQTT-3.3.1-2"))
                        .message(message)
                        .client(&delivery.client)
                        .owed("a QoS 0 PUBLISH with DUP 0")
                        .happened("delivered with DUP 1")
                        .events([message.event, delivery.event]),
                );
            }
        }
        let mut epochs: Vec<usize> = deliveries
            .iter()
            .filter_map(|&d| model.deliveries[d].epoch)
            .collect();
        epochs.sort_unstable();
        epochs.dedup();
        for epoch in epochs {
            let copies: Vec<usize> = model
                .deliveries_in(index, epoch)
                .into_iter()
                .filter(|&d| !model.retained_copy(d, message))
                .collect();
            let bound = model.matching_filters(message, epoch, None).max(1);
            if copies.len() > bound {
                if publish_fault_on_path(
                    model,
                    PublishFault::Duplicated,
                    &message.publisher,
                    &model.deliveries[copies[0]].client,
                ) {
                    out.note("extra QoS 0 copies after a duplicated PUBLISH on the wire");
                    continue;
                }
                let receiver = model.deliveries[copies[0]].client.clone();
                out.violation(
                    ViolationBuilder::new("MQTT-4.3.1-1")
                        .message(message)
                        .client(&receiver)
                        .owed(format!(
                            "at most {bound} cop{} (QoS 0: at most once per matching subscription)",
                            if bound == 1 { "y" } else { "ies" }
                        ))
                        .happened(format!("{} copies delivered", copies.len()))
                        .events(
                            std::iter::once(message.event)
                                .chain(copies.iter().map(|&d| model.deliveries[d].event)),
                        ),
                );
            } else if bound > 1 {
                out.note(if copies.len() == 1 {
                    "overlapping subscriptions: one copy"
                } else {
                    "overlapping subscriptions: one copy per subscription"
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::{Direction, Fault};

    fn base() -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false)
            .connect("p", true, false)
            .subscribe("s", "t/#", 0, 0);
        b
    }

    #[test]
    fn one_copy_passes_and_loss_is_fine() {
        let mut b = base();
        b.publish("p", "p-1", "t/a", 0)
            .deliver("s", "p-1", "t/a", 0)
            .publish("p", "p-2", "t/a", 0);
        let out = CheckerName::Qos0.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
    }

    #[test]
    fn two_copies_through_one_subscription_violate() {
        let mut b = base();
        b.publish("p", "p-1", "t/a", 0)
            .deliver("s", "p-1", "t/a", 0)
            .deliver("s", "p-1", "t/a", 0);
        let out = CheckerName::Qos0.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        let v = &out.violations[0];
        assert_eq!(v.spec, "MQTT-4.3.1-1");
        assert_eq!(v.message.as_ref().unwrap().id, "p-1");
        assert_eq!(v.events.len(), 3);
    }

    #[test]
    fn overlapping_subscriptions_allow_one_copy_each_and_record_it() {
        let mut b = base();
        b.subscribe("s", "t/a", 0, 0)
            .publish("p", "p-1", "t/a", 0)
            .deliver("s", "p-1", "t/a", 0)
            .deliver("s", "p-1", "t/a", 0);
        let out = CheckerName::Qos0.run(&b.model());
        assert!(out.passed());
        assert!(out
            .notes
            .contains_key("overlapping subscriptions: one copy per subscription"));
    }

    #[test]
    fn dup_on_qos0_violates() {
        let mut b = base();
        b.publish("p", "p-1", "t/a", 0)
            .deliver_opts("s", "p-1", "t/a", 0, false, true);
        let out = CheckerName::Qos0.run(&b.model());
        assert_eq!(out.violations[0].spec, "MQTT-3.3.1-2");
    }

    #[test]
    fn a_duplicated_publish_on_the_wire_excuses_a_second_copy() {
        let mut b = base();
        b.fault(Fault::DuplicatePacket {
            client: "p".into(),
            direction: Direction::Outbound,
            packet_type: "publish".into(),
        })
        .publish("p", "p-1", "t/a", 0)
        .deliver("s", "p-1", "t/a", 0)
        .deliver("s", "p-1", "t/a", 0);
        assert!(CheckerName::Qos0.run(&b.model()).passed());
    }
}
