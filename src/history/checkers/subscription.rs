//! Nothing is delivered to a client without a matching subscription of its current session,
//! and nothing above the QoS that subscription allows.
//!
//! A delivery is justified by a subscription of the receiving session whose filter matches the
//! topic [MQTT-3.3.2-3], whose SUBSCRIBE was sent before the delivery (a broker may deliver
//! before its SUBACK), and which was routing when the broker took the message: not removed by
//! an UNSUBSCRIBE sent before the message was sent [MQTT-3.10.4-2], and not added after the
//! broker had already acknowledged the message. Retained copies sent because of a SUBSCRIBE
//! need only the SUBSCRIBE. A session's old subscriptions never justify deliveries after a clean
//! start [MQTT-3.1.2-6 (3.1.1) / MQTT-3.1.2-4 (5.0)].
//!
//! The delivered QoS must be min(publish QoS, granted QoS) of a justifying subscription
//! [MQTT-3.8.4-6 (3.1.1) / MQTT-3.8.4-8 (5.0)].
//!
//! Overlapping subscriptions [MQTT-3.3.5-1 (3.1.1) / MQTT-3.3.4-2 (5.0)]: when several of a
//! session's subscriptions match, the message reaches the client at the maximum QoS of all of
//! them, min(publish QoS, highest granted QoS); further copies, one per other matching
//! subscription at that subscription's own QoS, are permitted (both behaviours are recorded).
//! Copies only at a lower QoS fail. The maximum counts only subscriptions the broker certainly
//! had when it received the message: SUBACK before the publisher first wrote it, no
//! UNSUBSCRIBE or replacing SUBSCRIBE before its last copy arrived. A copy at that QoS may be
//! missing only where the spec lets it go: the session ended (released), or the subscriber is
//! offline or on an impaired link at the end of the trace (unresolved). A copy at QoS ≥ 1 is
//! never lost within a session, so when the session is connected on a healthy link at the end
//! of the quiesced run, its absence is a violation.

use std::collections::BTreeMap;

use super::{epoch_version, spec_id, Outcome, ViolationBuilder};
use crate::codec::{ProtocolVersion, QoS};
use crate::history::model::{Message, Model, Subscription};

pub fn check(model: &Model, out: &mut Outcome) {
    routes(model, out);
    overlap(model, out);
}

/// Every delivery through a matching subscription, at a QoS one of them allows.
fn routes(model: &Model, out: &mut Outcome) {
    for delivery in &model.deliveries {
        let message_index = model.message_by_id.get(&delivery.id).copied();
        let will_conn = model.will_by_id.get(&delivery.id).copied();
        // (sent, acked, qos) of what was delivered; unknown ids are the invented checker's.
        let (sent_ms, acked_ms, qos, publisher, retained_copy, event) =
            match (message_index, will_conn) {
                (Some(m), _) => {
                    let msg = &model.messages[m];
                    let d = model
                        .deliveries
                        .iter()
                        .position(|x| x.event == delivery.event)
                        .unwrap_or(0);
                    (
                        msg.sent_ms,
                        msg.acked.map(|(_, at, _)| at),
                        msg.qos,
                        msg.publisher.clone(),
                        model.retained_copy(d, msg),
                        Some(msg.event),
                    )
                }
                (None, Some(c)) => {
                    let conn = &model.connections[c];
                    let will = conn.will.as_ref().expect("registered wills exist");
                    (
                        conn.end_ms().unwrap_or(delivery.at_ms),
                        None,
                        will.qos,
                        conn.client.clone(),
                        delivery.retain && will.retain,
                        Some(conn.event),
                    )
                }
                (None, None) if delivery.empty => {
                    (0, None, QoS::ExactlyOnce, "?".into(), false, None)
                }
                (None, None) => continue,
            };
        let version = delivery
            .connection
            .map(|c| model.connections[c].protocol)
            .unwrap_or(ProtocolVersion::V311);
        let base = ViolationBuilder::new("")
            .message_ref(&publisher, &delivery.topic, &delivery.id)
            .client(&delivery.client);
        let Some(epoch) = delivery.epoch else {
            out.violation(
                ViolationBuilder {
                    spec: spec_id(version, "MQTT-3.3.2-3", "MQTT-3.3.2-3"),
                    ..base
                }
                .owed("no delivery before the connection is accepted")
                .happened("delivered outside any session")
                .events([delivery.event]),
            );
            continue;
        };
        let routes = |s: &Subscription| {
            s.epoch == epoch
                && s.matches_any(&delivery.topic)
                && s.sent_ms <= delivery.at_ms
                && s.acked.is_none_or(|(_, _, g)| g.is_some())
                && (retained_copy
                    || (acked_ms.is_none_or(|a| a >= s.sent_ms)
                        && s.unsubscribed.is_none_or(|(_, at)| sent_ms <= at)))
        };
        let justifying: Vec<&Subscription> =
            model.subscriptions.iter().filter(|s| routes(s)).collect();
        if justifying.is_empty() {
            // A subscription of an earlier session of the same client id (possibly made under
            // another of the scenario's names for it).
            let client_id = &model.epochs[epoch].client_id;
            let ended = model.subscriptions.iter().find(|s| {
                &model.epochs[s.epoch].client_id == client_id
                    && s.matches_any(&delivery.topic)
                    && s.epoch != epoch
            });
            let unsubscribed = model.subscriptions.iter().find(|s| {
                s.epoch == epoch && s.matches_any(&delivery.topic) && s.unsubscribed.is_some()
            });
            let (spec, why, extra) = if let Some(s) = unsubscribed {
                (
                    spec_id(version, "MQTT-3.10.4-2", "MQTT-3.10.4-2"),
                    "the matching subscription was removed before the message was sent",
                    Some(s.event),
                )
            } else if let Some(s) = ended {
                (
                    spec_id(version, "MQTT-3.1.2-6", "MQTT-3.1.2-4"),
                    "the matching subscription belonged to a session that has ended",
                    Some(s.event),
                )
            } else {
                (
                    spec_id(version, "MQTT-3.3.2-3", "MQTT-3.3.2-3"),
                    "no subscription of the session matches the topic",
                    None,
                )
            };
            out.violation(
                ViolationBuilder { spec, ..base }
                    .owed("deliveries only through a matching subscription of the current session")
                    .happened(why)
                    .events(event.into_iter().chain(extra).chain([delivery.event])),
            );
            continue;
        }
        if delivery.empty && message_index.is_none() {
            continue;
        }
        let allowed: Vec<QoS> = justifying.iter().map(|s| s.qos_bound().min(qos)).collect();
        if !allowed.contains(&delivery.qos) {
            out.violation(
                ViolationBuilder {
                    spec: spec_id(version, "MQTT-3.8.4-6", "MQTT-3.8.4-8"),
                    ..base
                }
                .owed(format!(
                    "QoS {} = min(publish QoS {}, granted QoS)",
                    allowed
                        .iter()
                        .map(|q| q.as_u8().to_string())
                        .collect::<Vec<_>>()
                        .join(" or "),
                    qos.as_u8()
                ))
                .happened(format!("delivered at QoS {}", delivery.qos.as_u8()))
                .events(event.into_iter().chain([delivery.event])),
            );
        }
    }
}

/// Overlapping subscriptions: a copy at the maximum QoS of the matching subscriptions.
fn overlap(model: &Model, out: &mut Outcome) {
    for (index, message) in model.messages.iter().enumerate() {
        if message.empty || message.qos == QoS::AtMostOnce {
            continue;
        }
        let Some(deliveries) = model.deliveries_of.get(&index) else {
            continue;
        };
        let mut by_epoch: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &d in deliveries {
            if let Some(epoch) = model.deliveries[d].epoch {
                if !model.retained_copy(d, message) {
                    by_epoch.entry(epoch).or_default().push(d);
                }
            }
        }
        for (epoch, copies) in by_epoch {
            let last_copy_ms = copies
                .iter()
                .map(|&d| model.deliveries[d].at_ms)
                .max()
                .unwrap_or(0);
            let matching = matching_subscriptions(model, message, epoch, last_copy_ms);
            let filters: Vec<&str> = {
                let mut f: Vec<&str> = matching
                    .iter()
                    .map(|&s| model.subscriptions[s].request.filter.as_str())
                    .collect();
                f.sort_unstable();
                f.dedup();
                f
            };
            if filters.len() < 2 {
                // One subscription: its QoS is the routes check's (MQTT-3.8.4-6/8).
                continue;
            }
            let certain = certain_subscriptions(model, message, epoch, &matching, last_copy_ms);
            let Some(required) = certain
                .iter()
                .filter_map(|&s| model.subscriptions[s].granted())
                .map(|g| g.min(message.qos))
                .max()
            else {
                continue;
            };
            let best = copies
                .iter()
                .map(|&d| model.deliveries[d].qos)
                .max()
                .unwrap_or(QoS::AtMostOnce);
            if best >= required {
                out.note(if copies.len() == 1 {
                    "overlapping subscriptions: one copy, at the maximum QoS"
                } else {
                    "overlapping subscriptions: a copy per subscription, one at the maximum QoS"
                });
                continue;
            }
            if model.epochs[epoch].end.is_some() {
                out.note("overlapping subscriptions: the copy at the maximum QoS released (session ended)");
                continue;
            }
            let Some(holder) = model.holder_at_end(epoch) else {
                out.note("unresolved: copy at the maximum QoS owed, subscriber offline at the end");
                continue;
            };
            if model.impaired(&holder.client, model.end_ms, model.end_ms) {
                out.note(
                    "unresolved: copy at the maximum QoS owed, subscriber link impaired at the end",
                );
                continue;
            }
            let receiver = &model.deliveries[copies[0]].client;
            let sub_text = certain
                .iter()
                .map(|&s| {
                    let sub = &model.subscriptions[s];
                    format!(
                        "{:?} granted QoS {}",
                        sub.request.filter,
                        sub.granted().map_or(0, |q| q.as_u8())
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let copies_text = copies
                .iter()
                .map(|&d| model.deliveries[d].qos.as_u8().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            out.violation(
                ViolationBuilder::new(spec_id(
                    epoch_version(model, epoch),
                    "MQTT-3.3.5-1",
                    "MQTT-3.3.4-2",
                ))
                .message(message)
                .client(receiver)
                .owed(format!(
                    "a copy at QoS {} = min(publish QoS {}, the highest QoS of the overlapping subscriptions {sub_text})",
                    required.as_u8(),
                    message.qos.as_u8()
                ))
                .happened(format!(
                    "delivered only at QoS {copies_text}; the subscriber stayed connected to the end"
                ))
                .events(
                    std::iter::once(message.event)
                        .chain(
                            certain
                                .iter()
                                .filter_map(|&s| model.subscriptions[s].acked.map(|(e, _, _)| e)),
                        )
                        .chain(copies.iter().map(|&d| model.deliveries[d].event)),
                ),
            );
        }
    }
}

/// The session's subscriptions that match the message and can have routed it: SUBSCRIBE sent
/// before its last copy arrived, not refused, not unsubscribed before it was sent, not
/// excluded by No Local.
fn matching_subscriptions(
    model: &Model,
    message: &Message,
    epoch: usize,
    last_copy_ms: u64,
) -> Vec<usize> {
    let publisher_id = model.publisher_client_id(message);
    let epoch_id = model.epochs[epoch].client_id.as_str();
    (0..model.subscriptions.len())
        .filter(|&s| {
            let sub = &model.subscriptions[s];
            sub.epoch == epoch
                && sub.matches(&message.topic)
                && sub.sent_ms <= last_copy_ms
                && sub.acked.is_none_or(|(_, _, g)| g.is_some())
                && sub.unsubscribed.is_none_or(|(_, at)| at >= message.sent_ms)
                && !(sub.request.no_local && publisher_id.as_deref() == Some(epoch_id))
        })
        .collect()
}

/// Of `matching`, those the broker certainly had at every receipt of the message: SUBACK
/// before the publisher first wrote it, no UNSUBSCRIBE and no SUBSCRIBE replacing the filter
/// [MQTT-3.8.4-3] before its last copy arrived.
fn certain_subscriptions(
    model: &Model,
    message: &Message,
    epoch: usize,
    matching: &[usize],
    last_copy_ms: u64,
) -> Vec<usize> {
    let first_write_ms = message
        .transmissions
        .iter()
        .map(|&t| model.transmissions[t].at_ms)
        .min()
        .unwrap_or(message.sent_ms)
        .min(message.sent_ms);
    matching
        .iter()
        .copied()
        .filter(|&s| {
            let sub = &model.subscriptions[s];
            let replaced = model.subscriptions.iter().any(|o| {
                o.epoch == epoch
                    && o.request.filter == sub.request.filter
                    && o.sent_ms > sub.sent_ms
                    && o.sent_ms <= last_copy_ms
            });
            matches!(sub.acked, Some((_, at, Some(_))) if at < first_write_ms)
                && sub.unsubscribed.is_none_or(|(_, at)| at > last_copy_ms)
                && !replaced
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::DisconnectCause;

    fn base() -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false)
            .connect("p", true, false)
            .subscribe("s", "a/+", 2, 1);
        b
    }

    #[test]
    fn matching_delivery_at_min_qos_passes() {
        let mut b = base();
        b.publish_acked("p", "p-1", "a/b", 2)
            .deliver("s", "p-1", "a/b", 1)
            .publish("p", "p-2", "a/c", 0)
            .deliver("s", "p-2", "a/c", 0);
        let out = CheckerName::Subscription.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
    }

    #[test]
    fn non_matching_topic_violates() {
        let mut b = base();
        b.publish("p", "p-1", "b/c", 0)
            .deliver("s", "p-1", "b/c", 0);
        let out = CheckerName::Subscription.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.3.2-3");
    }

    #[test]
    fn wrong_qos_violates() {
        let mut b = base();
        b.publish_acked("p", "p-1", "a/b", 2)
            .deliver("s", "p-1", "a/b", 2);
        let out = CheckerName::Subscription.run(&b.model());
        assert_eq!(out.violations[0].spec, "MQTT-3.8.4-6");
    }

    #[test]
    fn after_unsubscribe_violates_but_in_flight_is_fine() {
        let mut b = base();
        b.publish("p", "p-1", "a/b", 0)
            .unsubscribe("s", "a/+")
            .deliver("s", "p-1", "a/b", 0);
        assert!(CheckerName::Subscription.run(&b.model()).passed());
        b.publish("p", "p-2", "a/b", 0)
            .deliver("s", "p-2", "a/b", 0);
        let out = CheckerName::Subscription.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.10.4-2");
    }

    #[test]
    fn old_session_subscription_after_clean_start_violates() {
        let mut b = base();
        b.disconnect("s", DisconnectCause::KeepaliveTimeout)
            .connect("s", true, false)
            .publish("p", "p-1", "a/b", 0)
            .deliver("s", "p-1", "a/b", 0);
        let out = CheckerName::Subscription.run(&b.model());
        assert_eq!(out.violations[0].spec, "MQTT-3.1.2-6");
    }

    #[test]
    fn old_session_of_the_same_client_id_under_another_name_cites_the_clean_start() {
        let mut b = TraceBuilder::new();
        b.ev(crate::history::Event::ConnectAttempt {
            client: "durable".into(),
            client_id: "dev".into(),
            protocol: crate::codec::ProtocolVersion::V311,
            clean_start: false,
            keep_alive_secs: 10,
            session_expiry_secs: None,
            will: None,
            resubscribe: false,
        })
        .connack("durable", false)
        .subscribe("durable", "t", 1, 1)
        .disconnect(
            "durable",
            DisconnectCause::ClientDisconnect { with_will: false },
        );
        b.ev(crate::history::Event::ConnectAttempt {
            client: "fresh".into(),
            client_id: "dev".into(),
            protocol: crate::codec::ProtocolVersion::V311,
            clean_start: true,
            keep_alive_secs: 10,
            session_expiry_secs: None,
            will: None,
            resubscribe: false,
        })
        .connack("fresh", false)
        .connect("p", true, false)
        .publish_acked("p", "p-1", "t", 1)
        .deliver("fresh", "p-1", "t", 1);
        let out = CheckerName::Subscription.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.1.2-6");
    }

    #[test]
    fn automatic_resubscriptions_count_from_the_connack() {
        use crate::history::{Event, FilterGrant, FilterRequest};
        let mut b = TraceBuilder::new();
        b.connect("s", true, false).connect("p", true, false);
        b.publish_acked("p", "p-1", "a", 1);
        // Recorded at its SUBACK, after the publish was acknowledged; sent at the CONNACK.
        b.ev(Event::Subscribe {
            client: "s".into(),
            filters: vec![FilterRequest {
                filter: "a".into(),
                qos: crate::codec::QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
            automatic: true,
        })
        .ev(Event::SubAck {
            client: "s".into(),
            results: vec![FilterGrant {
                filter: "a".into(),
                granted: Some(crate::codec::QoS::AtLeastOnce),
            }],
        })
        .deliver("s", "p-1", "a", 1);
        assert!(CheckerName::Subscription.run(&b.model()).passed());
    }

    #[test]
    fn message_acknowledged_before_the_subscribe_is_not_routed() {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false)
            .connect("p", true, false)
            .publish_acked("p", "p-1", "a", 1)
            .subscribe("s", "a", 1, 1)
            .deliver("s", "p-1", "a", 1);
        assert_eq!(
            CheckerName::Subscription.run(&b.model()).violations.len(),
            1
        );
    }

    /// Subscribes `s` to two filters: in one SUBSCRIBE, or in two.
    fn overlapping(
        protocol: crate::codec::ProtocolVersion,
        filters: [(&str, u8); 2],
        one_packet: bool,
    ) -> TraceBuilder {
        use crate::history::model::build::q;
        use crate::history::{Event, FilterGrant, FilterRequest};
        let mut b = TraceBuilder::new();
        b.connect_opts("s", true, protocol, None, None)
            .connack("s", false)
            .connect("p", true, false);
        if one_packet {
            b.ev(Event::Subscribe {
                client: "s".into(),
                filters: filters
                    .iter()
                    .map(|&(f, qos)| FilterRequest {
                        filter: f.into(),
                        qos: q(qos),
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    })
                    .collect(),
                automatic: false,
            })
            .ev(Event::SubAck {
                client: "s".into(),
                results: filters
                    .iter()
                    .map(|&(f, qos)| FilterGrant {
                        filter: f.into(),
                        granted: Some(q(qos)),
                    })
                    .collect(),
            });
        } else {
            for (f, qos) in filters {
                b.subscribe("s", f, qos, qos);
            }
        }
        b
    }

    #[test]
    fn overlap_delivered_only_at_the_lower_qos_fails_in_both_orders() {
        use crate::codec::ProtocolVersion::{V311, V5};
        for (protocol, spec) in [(V311, "MQTT-3.3.5-1"), (V5, "MQTT-3.3.4-2")] {
            for filters in [
                [("a/#", 2), ("a/b", 1)],
                [("a/b", 1), ("a/#", 2)],
                [("a/#", 1), ("a/b", 2)],
                [("a/b", 2), ("a/#", 1)],
                [("#", 2), ("a/+", 0)],
            ] {
                for one_packet in [true, false] {
                    let lower = filters.iter().map(|f| f.1).min().unwrap();
                    let mut b = overlapping(protocol, filters, one_packet);
                    b.publish_acked("p", "p-1", "a/b", 2)
                        .deliver("s", "p-1", "a/b", lower);
                    let out = CheckerName::Subscription.run(&b.model());
                    assert_eq!(out.violations.len(), 1, "{filters:?} {one_packet}");
                    let v = &out.violations[0];
                    assert_eq!(v.spec, spec);
                    assert!(v.owed.contains("a copy at QoS 2"), "{}", v.owed);

                    // Two copies, one at the maximum: permitted.
                    let mut b = overlapping(protocol, filters, one_packet);
                    b.publish_acked("p", "p-1", "a/b", 2)
                        .deliver("s", "p-1", "a/b", lower)
                        .deliver("s", "p-1", "a/b", 2);
                    let out = CheckerName::Subscription.run(&b.model());
                    assert!(out.passed(), "{:?}", out.violations);
                    assert!(out
                        .notes
                        .keys()
                        .any(|n| n.contains("a copy per subscription")));

                    // One copy at the maximum: permitted.
                    let mut b = overlapping(protocol, filters, one_packet);
                    b.publish_acked("p", "p-1", "a/b", 2)
                        .deliver("s", "p-1", "a/b", 2);
                    let out = CheckerName::Subscription.run(&b.model());
                    assert!(out.passed(), "{:?}", out.violations);
                    assert!(out
                        .notes
                        .keys()
                        .any(|n| n.contains("one copy, at the maximum")));
                }
            }
        }
    }

    #[test]
    fn the_maximum_is_min_of_publish_qos_and_the_highest_grant() {
        // Published at QoS 1: a QoS 2 subscription allows no more than 1.
        let mut b = overlapping(
            crate::codec::ProtocolVersion::V311,
            [("a/#", 2), ("a/b", 0)],
            false,
        );
        b.publish_acked("p", "p-1", "a/b", 1)
            .deliver("s", "p-1", "a/b", 1);
        assert!(CheckerName::Subscription.run(&b.model()).passed());
        let mut b = overlapping(
            crate::codec::ProtocolVersion::V311,
            [("a/#", 2), ("a/b", 0)],
            false,
        );
        b.publish_acked("p", "p-1", "a/b", 1)
            .deliver("s", "p-1", "a/b", 0);
        assert_eq!(
            CheckerName::Subscription.run(&b.model()).violations.len(),
            1
        );
    }

    #[test]
    fn a_missing_maximum_copy_is_excused_only_where_the_spec_lets_it_go() {
        let v311 = crate::codec::ProtocolVersion::V311;
        // The higher subscription arrived while the message was in flight: not certain.
        let mut b = overlapping(v311, [("a/b", 1), ("x", 0)], false);
        b.publish_acked("p", "p-1", "a/b", 2)
            .subscribe("s", "a/#", 2, 2)
            .deliver("s", "p-1", "a/b", 1);
        assert!(CheckerName::Subscription.run(&b.model()).passed());
        // The session ended after the lower copy: the other was released with it.
        let mut b = overlapping(v311, [("a/#", 2), ("a/b", 1)], false);
        b.publish_acked("p", "p-1", "a/b", 2)
            .deliver("s", "p-1", "a/b", 1)
            .disconnect("s", DisconnectCause::KeepaliveTimeout);
        let out = CheckerName::Subscription.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
        assert!(out.notes.keys().any(|n| n.contains("released")));
        // The subscriber's link is impaired at the end: it may still come.
        let mut b = overlapping(v311, [("a/#", 2), ("a/b", 1)], false);
        b.publish_acked("p", "p-1", "a/b", 2)
            .deliver("s", "p-1", "a/b", 1)
            .fault(crate::history::Fault::Stall { client: "s".into() });
        let out = CheckerName::Subscription.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
        assert!(out.notes.keys().any(|n| n.contains("unresolved")));
        // Unsubscribed from the higher one before the message was sent.
        let mut b = overlapping(v311, [("a/#", 2), ("a/b", 1)], false);
        b.unsubscribe("s", "a/#")
            .publish_acked("p", "p-1", "a/b", 2)
            .deliver("s", "p-1", "a/b", 1);
        assert!(CheckerName::Subscription.run(&b.model()).passed());
    }
}
