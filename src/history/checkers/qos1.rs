//! QoS 1: every owed message is delivered at least once, possibly after reconnects and
//! possibly more than once (with DUP on redelivery). Owed is DESIGN.md's definition, computed by
//! `Model::owed`; here effective QoS 1 (publish QoS 1 or 2, granted 1 or a QoS 1 publish with
//! granted 2). Effective QoS 2 belongs to the QoS 2 checker.
//!
//! An owed message whose session is not connected at the end of the trace (client offline,
//! crashed, or its link still partitioned) is *unresolved*, not violated: the broker still holds
//! it. The runner ends runs with the faults healed and a quiet period so this stays rare.

use super::{Outcome, ViolationBuilder};
use crate::codec::QoS;
use crate::history::model::{Model, Owed};

pub fn check(model: &Model, out: &mut Outcome) {
    for (index, message) in model.messages.iter().enumerate() {
        if message.qos == QoS::AtMostOnce {
            continue;
        }
        for owed in model.owed(index) {
            if owed.effective != QoS::AtLeastOnce {
                continue;
            }
            let copies = model.deliveries_in(index, owed.epoch);
            if copies.len() > 1 {
                out.note("QoS 1 message delivered more than once (permitted)");
            }
            if !copies.is_empty() {
                continue;
            }
            missing(model, out, index, &owed, "at least once (QoS 1)");
        }
    }
}

/// Reports an owed message that never arrived, unless the session was released or cannot be
/// reached at the end of the trace. Shared with the QoS 2 checker.
pub(crate) fn missing(model: &Model, out: &mut Outcome, message: usize, owed: &Owed, what: &str) {
    let m = &model.messages[message];
    if owed.released {
        out.note("owed message released: subscription or session ended before delivery");
        return;
    }
    let Some(holder) = model.holder_at_end(owed.epoch) else {
        out.note("unresolved: owed message, subscriber session offline at the end");
        return;
    };
    if model.impaired(&holder.client, model.end_ms, model.end_ms) {
        out.note("unresolved: owed message, subscriber link impaired at the end");
        return;
    }
    let holder_conn = model.epochs[owed.epoch].connections.last().copied();
    if holder_conn.is_some_and(|c| super::lost_bytes_while_up(model, c, 0, model.end_ms)) {
        out.note(
            "unresolved: owed message, the subscriber's connection lived through a fault that \
             discarded bytes (§4.2: MQTT needs a lossless stream; nothing is resent before a reconnect)",
        );
        return;
    }
    let sub = &model.subscriptions[owed.subscriptions[0]];
    let mut events = vec![m.event];
    events.extend(m.acked.map(|(e, _, _)| e));
    events.extend(
        owed.subscriptions
            .iter()
            .filter_map(|&s| model.subscriptions[s].acked.map(|(e, _, _)| e)),
    );
    events.push(holder.event);
    out.violation(
        ViolationBuilder::new("MQTT-4.5.0-1")
            .message(m)
            .client(&holder.client)
            .owed(format!(
                "{what} through subscription {:?} granted QoS {} (acked before the message was sent; publisher's flow completed)",
                sub.request.filter,
                sub.granted().map(|q| q.as_u8()).unwrap_or(0)
            ))
            .happened(format!(
                "never delivered; subscriber connected at the end (since {} ms)",
                holder.connack.map(|(_, at, _, _)| at).unwrap_or(0)
            ))
            .events(events),
    );
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::{DisconnectCause, Fault};

    fn base() -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("s", false, false)
            .connect("p", true, false)
            .subscribe("s", "t", 1, 1);
        b
    }

    #[test]
    fn delivered_once_or_twice_passes() {
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 1)
            .deliver("s", "p-1", "t", 1)
            .deliver_opts("s", "p-1", "t", 1, false, true);
        let out = CheckerName::Qos1.run(&b.model());
        assert!(out.passed());
        assert!(out.notes.keys().any(|n| n.contains("more than once")));
    }

    #[test]
    fn missing_owed_message_violates() {
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 1);
        let out = CheckerName::Qos1.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        let v = &out.violations[0];
        assert_eq!(v.spec, "MQTT-4.5.0-1");
        assert_eq!(v.client.as_deref(), Some("s"));
        assert!(v.owed.contains("granted QoS 1"), "{}", v.owed);
    }

    #[test]
    fn redelivery_after_reconnect_of_persistent_session_passes() {
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 1)
            .disconnect("s", DisconnectCause::KeepaliveTimeout)
            .connect("s", false, true)
            .deliver_opts("s", "p-1", "t", 1, false, true);
        assert!(CheckerName::Qos1.run(&b.model()).passed());
    }

    #[test]
    fn unacked_publish_and_clean_reconnect_release_the_obligation() {
        let mut b = base();
        b.publish("p", "p-1", "t", 1)
            .publish_acked("p", "p-2", "t", 1)
            .disconnect("s", DisconnectCause::KeepaliveTimeout)
            .connect("s", true, false);
        let out = CheckerName::Qos1.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
        assert!(out.notes.keys().any(|n| n.contains("released")));
    }

    #[test]
    fn offline_or_partitioned_subscriber_is_unresolved() {
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 1)
            .disconnect("s", DisconnectCause::KeepaliveTimeout);
        let out = CheckerName::Qos1.run(&b.model());
        assert!(out.passed());
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 1)
            .fault(Fault::Stall { client: "s".into() });
        assert!(CheckerName::Qos1.run(&b.model()).passed());
    }

    /// Recertification of issue 13, mosquitto `chaos/mixed-qos-clean-sessions` seed 0: a
    /// one-way partition (subscriber → broker) discarded 20 acknowledgements on a connection
    /// that stayed up, which filled mosquitto's in-flight window toward the subscriber (20);
    /// later messages then waited, legitimately, for a reconnect that never came.
    #[test]
    fn owed_to_a_connection_that_lived_through_a_partition_is_unresolved() {
        let partitioned = |link: &str| {
            let mut b = base();
            b.fault(Fault::Partition {
                a: link.into(),
                b: "broker".into(),
                one_way: true,
            });
            let heal = b.now + 100;
            b.at(heal).fault(Fault::Heal {
                a: link.into(),
                b: "broker".into(),
            });
            b.publish_acked("p", "p-1", "t", 1);
            CheckerName::Qos1.run(&b.model())
        };
        let out = partitioned("h-s");
        assert!(out.passed(), "{:?}", out.violations);
        assert!(out.notes.keys().any(|n| n.contains("discarded bytes")));
        // The publisher's link lost bytes, the subscriber's did not: still owed.
        assert_eq!(partitioned("h-p").violations.len(), 1);
    }

    #[test]
    fn downgraded_qos2_publish_is_owed_at_qos1() {
        let mut b = base();
        b.publish_acked("p", "p-1", "t", 2);
        let out = CheckerName::Qos1.run(&b.model());
        assert_eq!(out.violations.len(), 1);
    }
}
