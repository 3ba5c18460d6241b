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
//! [MQTT-3.8.4-6 (3.1.1) / MQTT-3.8.4-8 (5.0)]; with overlapping subscriptions either the
//! highest of them (one copy) or each subscription's own (one copy each) is accepted.

use super::{spec_id, Outcome, ViolationBuilder};
use crate::codec::{ProtocolVersion, QoS};
use crate::history::model::{Model, Subscription};

pub fn check(model: &Model, out: &mut Outcome) {
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
                && s.matches(&delivery.topic)
                && s.sent_ms <= delivery.at_ms
                && s.acked.is_none_or(|(_, _, g)| g.is_some())
                && (retained_copy
                    || (acked_ms.is_none_or(|a| a >= s.sent_ms)
                        && s.unsubscribed.is_none_or(|(_, at)| sent_ms <= at)))
        };
        let justifying: Vec<&Subscription> =
            model.subscriptions.iter().filter(|s| routes(s)).collect();
        if justifying.is_empty() {
            let ended = model.subscriptions.iter().find(|s| {
                s.client == delivery.client && s.matches(&delivery.topic) && s.epoch != epoch
            });
            let unsubscribed = model.subscriptions.iter().find(|s| {
                s.epoch == epoch && s.matches(&delivery.topic) && s.unsubscribed.is_some()
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
        let highest = allowed.iter().copied().max().unwrap_or(QoS::AtMostOnce);
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
        } else if allowed.len() > 1 && allowed.iter().any(|&q| q != highest) {
            out.note(if delivery.qos == highest {
                "overlapping subscriptions: delivered at the highest QoS"
            } else {
                "overlapping subscriptions: delivered at a lower subscription's QoS"
            });
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
}
