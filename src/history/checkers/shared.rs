//! Shared subscriptions (5.0 §4.8.2): a group `$share/{ShareName}/{filter}` gets each message
//! once, through ONE of its members, at the QoS that member was granted.
//!
//! A group is the (ShareName, filter) pair; its members are the subscriptions to exactly that
//! shared filter. For every message that matches a group's filter while the group has members:
//! - **QoS ≥ 1 to at least one member**: a message whose publisher's flow completed after a
//!   member's SUBACK, with effective QoS ≥ 1 for that member, reaches some member
//!   [MQTT-4.8.2-3]. Released (noted, not charged) when some member that held a subscription
//!   then is not connected at the end of the trace, or its session or subscription ended: the
//!   broker may have given the message to that member, where it waits, or went with its
//!   session [MQTT-4.8.2-5].
//! - **QoS 2 to exactly one**: copies delivered to two different members, the first of them
//!   at QoS 2 (or two at QoS 2). Charged
//!   [MQTT-4.8.2-5] when the first member's session had ended before the second copy (the
//!   message went on to another member), else [MQTT-4.8.2-4] (the message belonged to the
//!   first member, with which its delivery is completed).
//! - QoS 1 to more than one member is permitted (4.8.2: the server SHOULD send it to another
//!   member when the first one's session ends) and noted.
//!
//! A member's client that also holds an ordinary subscription matching the message gets the
//! ordinary copy as well (5.0 4.8.2); its copies cannot be told apart, so such a member is
//! left out of the counts (noted). Deliveries through no subscription at all (a non-member)
//! are the subscription checker's: it matches shared filters by their filter part.

use std::collections::BTreeMap;

use super::{Outcome, ViolationBuilder};
use crate::codec::{matches, QoS};
use crate::history::model::Model;

pub fn check(model: &Model, out: &mut Outcome) {
    // Group → its member subscriptions.
    let mut groups: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (s, sub) in model.subscriptions.iter().enumerate() {
        if let Some(key) = sub.shared() {
            groups.entry(key).or_default().push(s);
        }
    }
    for ((share_name, filter), members) in &groups {
        for (index, message) in model.messages.iter().enumerate() {
            if message.empty || !matches(filter, &message.topic) {
                continue;
            }
            check_message(model, out, share_name, filter, members, index);
        }
    }
}

fn check_message(
    model: &Model,
    out: &mut Outcome,
    share_name: &str,
    filter: &str,
    members: &[usize],
    index: usize,
) {
    let message = &model.messages[index];
    let group = format!("$share/{share_name}/{filter}");
    // Members whose epoch also holds an ordinary subscription matching the message: their
    // copies are ambiguous.
    let ordinary = |epoch: usize| {
        model
            .subscriptions
            .iter()
            .any(|s| s.epoch == epoch && s.matches(&message.topic))
    };
    // Member subscriptions in place when the message was sent: SUBACK granted before it, not
    // unsubscribed before it, epoch alive.
    let holding: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&s| {
            let sub = &model.subscriptions[s];
            matches!(sub.acked, Some((_, at, Some(_))) if at < message.sent_ms)
                && sub.unsubscribed.is_none_or(|(_, at)| at > message.sent_ms)
                && model.epochs[sub.epoch].alive_at(message.sent_ms)
        })
        .collect();
    if holding
        .iter()
        .any(|&s| ordinary(model.subscriptions[s].epoch))
    {
        out.note("member also subscribed outside the group: not counted");
        return;
    }
    // Copies to members, by epoch (first copy of each).
    let member_epochs: Vec<usize> = members
        .iter()
        .map(|&s| model.subscriptions[s].epoch)
        .collect();
    let mut firsts: BTreeMap<usize, usize> = BTreeMap::new();
    if let Some(ds) = model.deliveries_of.get(&index) {
        for &d in ds {
            let delivery = &model.deliveries[d];
            let Some(epoch) = delivery.epoch else {
                continue;
            };
            if member_epochs.contains(&epoch) && !model.retained_copy(d, message) {
                firsts.entry(epoch).or_insert(d);
            }
        }
    }
    // QoS 2 to exactly one member.
    let mut by_arrival: Vec<usize> = firsts.values().copied().collect();
    by_arrival.sort_unstable();
    if by_arrival.len() > 1 {
        // The member given the message first got it at QoS 2 (then it is that member's), or
        // two members got it at QoS 2.
        let at_qos2 = by_arrival
            .iter()
            .filter(|&&d| model.deliveries[d].qos == QoS::ExactlyOnce)
            .count();
        let exactly_once = model.deliveries[by_arrival[0]].qos == QoS::ExactlyOnce || at_qos2 > 1;
        if exactly_once {
            let first = &model.deliveries[by_arrival[0]];
            let second = &model.deliveries[by_arrival[1]];
            let first_ended = first
                .epoch
                .and_then(|e| model.epochs[e].end_ms())
                .is_some_and(|end| end <= second.at_ms);
            let spec = if first_ended {
                "MQTT-4.8.2-5"
            } else {
                "MQTT-4.8.2-4"
            };
            out.violation(
                ViolationBuilder::new(spec)
                    .message(message)
                    .client(&second.client)
                    .owed(format!(
                        "one member of {group} gets a QoS 2 message; it was {}'s{}",
                        first.client,
                        if first_ended {
                            ", whose session ended: no other member may get it"
                        } else {
                            ", with which its delivery is completed"
                        }
                    ))
                    .happened(format!(
                        "delivered to {} members: {}",
                        by_arrival.len(),
                        by_arrival
                            .iter()
                            .map(|&d| model.deliveries[d].client.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .events(
                        std::iter::once(message.event)
                            .chain(by_arrival.iter().map(|&d| model.deliveries[d].event)),
                    ),
            );
        } else {
            out.note("QoS 1 message delivered to more than one member (permitted)");
        }
    } else if by_arrival.len() == 1 {
        out.note("message delivered to one member");
    }
    // QoS ≥ 1 to at least one member.
    let effective = holding
        .iter()
        .filter_map(|&s| model.subscriptions[s].granted())
        .map(|g| g.min(message.qos))
        .max();
    let owed = message.qos != QoS::AtMostOnce
        && message.flow_completed()
        && effective.is_some_and(|q| q != QoS::AtMostOnce);
    if !owed || !firsts.is_empty() {
        return;
    }
    // Released when a member that can have been given the message cannot be reached at the
    // end, or dropped it legitimately with its session or subscription.
    let released = holding.iter().any(|&s| {
        let sub = &model.subscriptions[s];
        sub.end_ms(&model.epochs).is_some()
            || model
                .holder_at_end(sub.epoch)
                .is_none_or(|holder| model.impaired(&holder.client, model.end_ms, model.end_ms))
    });
    if released {
        out.note("unresolved: a member that may hold the message is gone or offline at the end");
        return;
    }
    let mut events = vec![message.event];
    events.extend(message.acked.map(|(e, _, _)| e));
    events.extend(
        holding
            .iter()
            .filter_map(|&s| model.subscriptions[s].acked.map(|(e, _, _)| e)),
    );
    out.violation(
        ViolationBuilder::new("MQTT-4.8.2-3")
            .message(message)
            .client(&model.subscriptions[holding[0]].client)
            .owed(format!(
                "delivery at QoS {} to one member of {group} (members {}, each connected at the end)",
                effective.map_or(0, |q| q.as_u8()),
                holding
                    .iter()
                    .map(|&s| model.subscriptions[s].client.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .happened("delivered to no member")
            .events(events),
    );
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::DisconnectCause;

    fn base(qos: u8) -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("a", false, false)
            .connect("b", false, false)
            .connect("p", true, false)
            .subscribe("a", "$share/g/t", qos, qos)
            .subscribe("b", "$share/g/t", qos, qos);
        b
    }

    #[test]
    fn one_member_per_message_passes() {
        let mut b = base(2);
        b.publish_acked("p", "p-1", "t", 2)
            .deliver("a", "p-1", "t", 2)
            .publish_acked("p", "p-2", "t", 2)
            .deliver("b", "p-2", "t", 2);
        let model = b.model();
        let out = CheckerName::Shared.run(&model);
        assert!(out.passed(), "{:?}", out.violations);
        // The other checkers owe nothing to each member and see the deliveries as routed.
        for checker in [
            CheckerName::Qos1,
            CheckerName::Qos2,
            CheckerName::Subscription,
            CheckerName::Ordering,
        ] {
            let out = checker.run(&model);
            assert!(out.passed(), "{checker}: {:?}", out.violations);
        }
    }

    #[test]
    fn qos2_to_two_members_violates() {
        let mut b = base(2);
        b.publish_acked("p", "p-1", "t", 2)
            .deliver("a", "p-1", "t", 2)
            .deliver("b", "p-1", "t", 2);
        let out = CheckerName::Shared.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-4.8.2-4");
        // After a's session ended (clean start), b's copy is 4.8.2-5's.
        let mut b = base(2);
        b.publish_acked("p", "p-1", "t", 2)
            .deliver("a", "p-1", "t", 2)
            .disconnect("a", DisconnectCause::KeepaliveTimeout)
            .connect("a", true, false)
            .deliver("b", "p-1", "t", 2);
        let out = CheckerName::Shared.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-4.8.2-5");
    }

    #[test]
    fn a_qos2_copy_then_a_qos1_copy_to_another_member_violates() {
        let mut b = base(2);
        b.connect("c", false, false)
            .subscribe("c", "$share/g/t", 1, 1)
            .publish_acked("p", "p-1", "t", 2)
            .deliver("a", "p-1", "t", 2)
            .deliver("c", "p-1", "t", 1);
        let out = CheckerName::Shared.run(&b.model());
        assert_eq!(out.violations.len(), 1, "{:?}", out.violations);
    }

    #[test]
    fn qos1_to_two_members_is_permitted() {
        let mut b = base(1);
        b.publish_acked("p", "p-1", "t", 1)
            .deliver("a", "p-1", "t", 1)
            .deliver("b", "p-1", "t", 1);
        let out = CheckerName::Shared.run(&b.model());
        assert!(out.passed());
        assert!(out.notes.keys().any(|n| n.contains("more than one member")));
    }

    #[test]
    fn a_message_no_member_got_violates_unless_a_member_is_gone() {
        let mut b = base(1);
        b.publish_acked("p", "p-1", "t", 1);
        let out = CheckerName::Shared.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-4.8.2-3");
        // The qos1 checker owes nothing to a member by itself.
        assert!(CheckerName::Qos1.run(&b.model()).passed());
        let mut b = base(1);
        b.publish_acked("p", "p-1", "t", 1)
            .disconnect("b", DisconnectCause::KeepaliveTimeout);
        let out = CheckerName::Shared.run(&b.model());
        assert!(out.passed(), "b may hold it, offline");
        // QoS 0: nothing owed.
        let mut b = base(1);
        b.publish_acked("p", "p-1", "t", 0);
        assert!(CheckerName::Shared.run(&b.model()).passed());
    }

    #[test]
    fn a_delivery_to_a_non_member_is_the_subscription_checkers() {
        let mut b = base(1);
        b.connect("x", false, false)
            .subscribe("x", "other", 1, 1)
            .publish_acked("p", "p-1", "t", 1)
            .deliver("a", "p-1", "t", 1)
            .deliver("x", "p-1", "t", 1);
        let out = CheckerName::Subscription.run(&b.model());
        assert_eq!(out.violations.len(), 1, "{:?}", out.violations);
        assert_eq!(out.violations[0].client.as_deref(), Some("x"));
    }
}
