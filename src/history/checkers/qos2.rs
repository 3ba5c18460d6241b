//! QoS 2: exactly once. A QoS 2 message reaches the broker once, so every session gets at most
//! one copy per matching subscription at each QoS it may be delivered with (one copy in total
//! or one per overlapping subscription: both permitted), and every owed message with effective
//! QoS 2 arrives.

use super::{epoch_version, spec_id, Outcome, ViolationBuilder};
use crate::codec::QoS;
use crate::history::model::Model;

pub fn check(model: &Model, out: &mut Outcome) {
    for (index, message) in model.messages.iter().enumerate() {
        if message.qos != QoS::ExactlyOnce || message.empty {
            continue;
        }
        // Duplicates, per epoch and delivered QoS. QoS 1 deliveries (granted 1) may repeat.
        let mut epochs: Vec<usize> = model
            .deliveries_of
            .get(&index)
            .map(|ds| {
                ds.iter()
                    .filter_map(|&d| model.deliveries[d].epoch)
                    .collect()
            })
            .unwrap_or_default();
        epochs.sort_unstable();
        epochs.dedup();
        for epoch in epochs {
            for qos in [QoS::AtMostOnce, QoS::ExactlyOnce] {
                let copies: Vec<usize> = model
                    .deliveries_in(index, epoch)
                    .into_iter()
                    .filter(|&d| model.deliveries[d].qos == qos && !model.retained_copy(d, message))
                    .collect();
                let bound = model.matching_filters(message, epoch, Some(qos)).max(1);
                if copies.len() > bound {
                    let receiver = model.deliveries[copies[0]].client.clone();
                    out.violation(
                        ViolationBuilder::new(spec_id(
                            epoch_version(model, epoch),
                            "MQTT-4.3.3-2",
                            "MQTT-4.3.3-10",
                        ))
                        .message(message)
                        .client(&receiver)
                        .owed(format!(
                            "exactly once: at most {bound} cop{} at QoS {}",
                            if bound == 1 { "y" } else { "ies" },
                            qos.as_u8()
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
        for owed in model.owed(index) {
            if owed.effective != QoS::ExactlyOnce {
                continue;
            }
            if model.deliveries_in(index, owed.epoch).is_empty() {
                super::qos1::missing(model, out, index, &owed, "exactly once (QoS 2)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::DisconnectCause;

    fn base() -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("s", false, false)
            .connect("p", false, false)
            .subscribe("s", "t", 2, 2);
        b
    }

    #[test]
    fn exactly_one_copy_across_a_reconnect_passes() {
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 2)
            .disconnect(
                "s",
                DisconnectCause::NetworkError {
                    detail: "reset".into(),
                },
            )
            .connect("s", false, true)
            .deliver("s", "p-1", "t", 2);
        let out = CheckerName::Qos2.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
    }

    #[test]
    fn a_second_copy_violates() {
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 2)
            .deliver("s", "p-1", "t", 2)
            .disconnect("s", DisconnectCause::KeepaliveTimeout)
            .connect("s", false, true)
            .deliver_opts("s", "p-1", "t", 2, false, true);
        let out = CheckerName::Qos2.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-4.3.3-2");
        assert!(out.violations[0].happened.contains("2 copies"));
    }

    #[test]
    fn a_missing_copy_violates() {
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 2);
        let out = CheckerName::Qos2.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert!(out.violations[0].owed.contains("exactly once"));
    }

    #[test]
    fn granted_qos1_copies_may_repeat() {
        let mut b = TraceBuilder::new();
        b.connect("s", false, false)
            .connect("p", false, false)
            .subscribe("s", "t", 1, 1)
            .publish_acked("p", "p-1", "t", 2)
            .deliver("s", "p-1", "t", 1)
            .deliver_opts("s", "p-1", "t", 1, false, true);
        assert!(CheckerName::Qos2.run(&b.model()).passed());
    }
}
