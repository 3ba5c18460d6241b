//! Retained messages: a new subscription gets the latest retained message of each matching
//! topic (if there is one), an empty retained payload clears it, a RETAIN 0 publish leaves it
//! alone, and live forwards carry RETAIN 0 (3.1.1) unless Retain As Published (5.0).
//!
//! "Latest" is judged with what the trace can prove. A retained publish is *certain* once its
//! flow completed (PUBACK/PUBCOMP); a certain write acknowledged before a SUBSCRIBE was sent
//! supersedes every write that was itself certain before it was sent. Whatever is not provably
//! superseded is a *candidate*: concurrent writes may land in either order, QoS 0 writes may be
//! lost, a will with retain lands when the broker notices the dead connection. A retained copy
//! must be a candidate; one is owed when the latest certain write is non-empty and no candidate
//! could have cleared it. A broker crash without durability clears every topic.

use super::{spec_id, Outcome, ViolationBuilder};
use crate::codec::{matches, ProtocolVersion, QoS};
use crate::history::model::Model;

#[derive(Debug, Clone)]
struct Write {
    /// Message index, or `None` for a will or a volatile crash.
    message: Option<usize>,
    id: String,
    topic: String,
    empty: bool,
    qos: QoS,
    sent_ms: u64,
    certain_ms: Option<u64>,
    publisher: String,
    event: usize,
}

fn writes(model: &Model) -> Vec<Write> {
    let mut out = Vec::new();
    for (i, m) in model.messages.iter().enumerate() {
        if !m.retain || m.acked.is_some_and(|(_, _, accepted)| !accepted) {
            continue;
        }
        out.push(Write {
            message: Some(i),
            id: m.id.clone(),
            topic: m.topic.clone(),
            empty: m.empty,
            qos: m.qos,
            sent_ms: m.sent_ms,
            certain_ms: m.acked.map(|(_, at, _)| at),
            publisher: m.publisher.clone(),
            event: m.event,
        });
    }
    for c in &model.connections {
        let (Some(will), Some((_, end_ms, cause))) = (&c.will, &c.end) else {
            continue;
        };
        if !will.retain || !c.accepted() || cause.as_ref().is_some_and(|c| c.is_normal_disconnect())
        {
            continue;
        }
        out.push(Write {
            message: None,
            id: will.id.clone(),
            topic: will.topic.clone(),
            empty: will.id.is_empty(),
            qos: will.qos,
            sent_ms: *end_ms,
            certain_ms: None,
            publisher: c.client.clone(),
            event: c.event,
        });
    }
    out
}

/// Volatile crashes: (record, at_ms).
fn volatile_crashes(model: &Model) -> Vec<(usize, u64)> {
    model
        .broker_crashes
        .iter()
        .copied()
        .filter(|&(event, _)| {
            !model
                .broker_starts
                .iter()
                .rev()
                .find(|(e, _, _)| *e < event)
                .is_some_and(|(_, _, durable)| *durable)
        })
        .collect()
}

/// Whether `w` is provably superseded before `before_ms` on its topic.
fn superseded<'a>(
    w: &Write,
    all: &'a [Write],
    crashes: &[(usize, u64)],
    before_ms: u64,
) -> Option<(&'a str, bool, usize)> {
    let landed = w.certain_ms.unwrap_or(w.sent_ms);
    for q in all {
        if q.topic != w.topic || q.event == w.event {
            continue;
        }
        let Some(q_certain) = q.certain_ms else {
            continue;
        };
        if q_certain >= before_ms {
            continue;
        }
        let after = if w.certain_ms.is_some() {
            q.sent_ms > landed
        } else if w.message.is_some() && w.qos == QoS::AtMostOnce {
            // A lone QoS 0 write: only the same publisher's later write is surely after it.
            q.publisher == w.publisher && q.sent_ms > w.sent_ms
        } else {
            false
        };
        if after {
            return Some((q.id.as_str(), q.empty, q.event));
        }
    }
    for &(event, at) in crashes {
        if landed < at && at < before_ms && (w.certain_ms.is_some() || w.message.is_none()) {
            return Some(("", true, event));
        }
    }
    None
}

pub fn check(model: &Model, out: &mut Outcome) {
    let all = writes(model);
    let crashes = volatile_crashes(model);
    // Assign every RETAIN 1 delivery to the latest matching SUBSCRIBE of its epoch before it.
    let mut assigned: Vec<Vec<usize>> = vec![Vec::new(); model.subscriptions.len()];
    for (d, delivery) in model.deliveries.iter().enumerate() {
        if !delivery.retain {
            continue;
        }
        let version = delivery
            .connection
            .map(|c| model.connections[c].protocol)
            .unwrap_or(ProtocolVersion::V311);
        let sub = (0..model.subscriptions.len()).rev().find(|&s| {
            let sub = &model.subscriptions[s];
            Some(sub.epoch) == delivery.epoch
                && sub.matches(&delivery.topic)
                && sub.sent_ms <= delivery.at_ms
        });
        let Some(s) = sub else { continue };
        let sub = &model.subscriptions[s];
        let message = model
            .message_by_id
            .get(&delivery.id)
            .map(|&m| &model.messages[m]);
        let after_suback = |sent_ms: u64| matches!(sub.acked, Some((_, at, _)) if at < sent_ms);
        // An empty payload carries no id: it is a live forward when an empty publish on its
        // topic came after the SUBACK (5.0 Retain As Published keeps its RETAIN 1).
        let empty_live = delivery.empty
            && model.messages.iter().any(|m| {
                m.empty
                    && m.topic == delivery.topic
                    && after_suback(m.sent_ms)
                    && m.sent_ms <= delivery.at_ms
            });
        let live = message.is_some_and(|m| after_suback(m.sent_ms)) || empty_live;
        if live {
            // A live forward with RETAIN 1.
            let permitted = version == ProtocolVersion::V5 && sub.request.retain_as_published;
            if !permitted {
                let mut v =
                    ViolationBuilder::new(spec_id(version, "MQTT-3.3.1-9", "MQTT-3.3.1-12"))
                        .client(&delivery.client)
                        .owed("RETAIN 0 on a message forwarded to an existing subscription")
                        .happened("forwarded with RETAIN 1");
                v = match message {
                    Some(m) => v.message(m).events([sub.event, m.event, delivery.event]),
                    None => v
                        .message_ref("?", &delivery.topic, "")
                        .events([sub.event, delivery.event]),
                };
                out.violation(v);
            } else if m_retain(message) {
                out.note("retain as published kept RETAIN 1");
            }
            continue;
        }
        assigned[s].push(d);
    }

    for (s, sub) in model.subscriptions.iter().enumerate() {
        let version = model.connections[sub.connection].protocol;
        let Some(granted) = sub.granted() else {
            continue;
        };
        let existed_before = model.subscriptions[..s].iter().any(|o| {
            o.epoch == sub.epoch
                && o.request.filter == sub.request.filter
                && o.unsubscribed.is_none_or(|(_, at)| at > sub.sent_ms)
        });
        let rh = if version == ProtocolVersion::V5 {
            sub.request.retain_handling
        } else {
            0
        };
        let suback_ms = sub.acked.map(|(_, at, _)| at).unwrap_or(sub.sent_ms);

        for &d in &assigned[s] {
            let delivery = &model.deliveries[d];
            let base = ViolationBuilder::new("").client(&delivery.client);
            if delivery.empty {
                out.violation(
                    ViolationBuilder {
                        spec: spec_id(version, "MQTT-3.3.1-11", "MQTT-3.3.1-7"),
                        ..base
                    }
                    .message_ref("?", &delivery.topic, "")
                    .owed("no retained message: an empty retained payload is never stored")
                    .happened("an empty retained message was sent on SUBSCRIBE")
                    .events([sub.event, delivery.event]),
                );
                continue;
            }
            if rh == 2 || (rh == 1 && existed_before) {
                out.violation(
                    ViolationBuilder {
                        spec: spec_id(
                            version,
                            "MQTT-3.3.1-9",
                            if rh == 2 {
                                "MQTT-3.3.1-11"
                            } else {
                                "MQTT-3.3.1-10"
                            },
                        ),
                        ..base
                    }
                    .message_ref("?", &delivery.topic, &delivery.id)
                    .owed(format!("no retained messages (Retain Handling {rh})"))
                    .happened("a retained message was sent on SUBSCRIBE")
                    .events([sub.event, delivery.event]),
                );
                continue;
            }
            let Some(write) = all
                .iter()
                .find(|w| w.id == delivery.id && w.topic == delivery.topic)
            else {
                if let Some(&m) = model.message_by_id.get(&delivery.id) {
                    let m = &model.messages[m];
                    if !m.retain && m.sent_ms < sub.sent_ms {
                        out.violation(
                            ViolationBuilder {
                                spec: spec_id(version, "MQTT-3.3.1-12", "MQTT-3.3.1-8"),
                                ..base
                            }
                            .message(m)
                            .owed("only messages published with RETAIN 1 are retained")
                            .happened("a RETAIN 0 message came back as retained on SUBSCRIBE")
                            .events([
                                m.event,
                                sub.event,
                                delivery.event,
                            ]),
                        );
                    }
                }
                continue;
            };
            if write.sent_ms > delivery.at_ms {
                continue; // invented: the invented checker reports it.
            }
            if let Some((by, cleared, by_event)) = superseded(write, &all, &crashes, sub.sent_ms) {
                let (v311, v5, owed) = if cleared {
                    (
                        "MQTT-3.3.1-10",
                        "MQTT-3.3.1-6",
                        "nothing: the retained message was cleared before the SUBSCRIBE"
                            .to_string(),
                    )
                } else {
                    (
                        "MQTT-3.3.1-6",
                        "MQTT-3.3.1-5",
                        format!("the latest retained message ({by} or later)"),
                    )
                };
                out.violation(
                    ViolationBuilder {
                        spec: spec_id(version, v311, v5),
                        ..base
                    }
                    .message_ref(&write.publisher, &write.topic, &write.id)
                    .owed(owed)
                    .happened(format!("stale retained message {} delivered", write.id))
                    .events([write.event, by_event, sub.event, delivery.event]),
                );
            }
        }

        // Owed retained copies.
        if rh == 2 || (rh == 1 && existed_before) {
            continue;
        }
        let mut topics: Vec<&str> = all
            .iter()
            .filter(|w| matches(&sub.request.filter, &w.topic))
            .map(|w| w.topic.as_str())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            let candidates: Vec<&Write> = all
                .iter()
                .filter(|w| {
                    w.topic == topic
                        && w.sent_ms <= suback_ms
                        && superseded(w, &all, &crashes, sub.sent_ms).is_none()
                })
                .collect();
            let baseline = all
                .iter()
                .filter(|w| w.topic == topic && w.certain_ms.is_some_and(|c| c < sub.sent_ms))
                .max_by_key(|w| w.certain_ms);
            let Some(baseline) = baseline else { continue };
            let crash_may_clear = crashes
                .iter()
                .any(|&(_, at)| at > baseline.sent_ms && at < suback_ms);
            if baseline.empty || crash_may_clear || candidates.iter().any(|w| w.empty) {
                continue;
            }
            // A QoS 0 retained message that may have landed last discards the earlier one, and
            // the broker MAY discard it too at any time (3.1.1 [MQTT-3.3.1-7]; 5.0 §3.3.1.3 says
            // the same): then no retained message is left, so none is owed.
            if candidates.iter().any(|w| w.qos == QoS::AtMostOnce) {
                out.note("no retained message owed: a QoS 0 retained message may have replaced it and been discarded");
                continue;
            }
            if candidates.is_empty() {
                continue;
            }
            let got = model.deliveries.iter().any(|d| {
                d.retain
                    && d.topic == topic
                    && candidates.iter().any(|w| w.id == d.id)
                    && d.epoch == Some(sub.epoch)
                    && d.at_ms >= sub.sent_ms
            });
            if got {
                continue;
            }
            let effective = candidates
                .iter()
                .map(|w| w.qos.min(granted))
                .min()
                .unwrap_or(QoS::AtMostOnce);
            let Some(holder) = model.holder_at_end(sub.epoch) else {
                out.note("unresolved: retained message owed, subscriber offline at the end");
                continue;
            };
            if sub.end_ms(&model.epochs).is_some() {
                out.note("retained message released: subscription ended");
                continue;
            }
            let from = if effective == QoS::AtMostOnce {
                if holder.event != model.connections[sub.connection].event {
                    out.note("retained QoS 0 copy owed to a connection that ended: not owed");
                    continue;
                }
                sub.sent_ms
            } else {
                model.end_ms
            };
            if model.impaired(&holder.client, from, model.end_ms) {
                out.note("unresolved: retained message owed, subscriber link impaired");
                continue;
            }
            out.violation(
                ViolationBuilder::new(spec_id(version, "MQTT-3.3.1-6", "MQTT-3.3.1-9"))
                    .message_ref(&baseline.publisher, topic, &baseline.id)
                    .client(&sub.client)
                    .owed(format!(
                        "the retained message of {topic:?} ({}) on subscribing to {:?}",
                        candidates
                            .iter()
                            .map(|w| w.id.as_str())
                            .collect::<Vec<_>>()
                            .join(" or "),
                        sub.request.filter
                    ))
                    .happened("no retained message delivered")
                    .events([baseline.event, sub.event]),
            );
        }
    }
}

fn m_retain(message: Option<&crate::history::model::Message>) -> bool {
    message.is_some_and(|m| m.retain)
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::Fault;

    fn publisher() -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("p", true, false);
        b
    }

    fn retain(b: &mut TraceBuilder, id: &str, len: u32) {
        b.publish_opts("p", id, "r/a", 1, true, len).acked("p", id);
    }

    #[test]
    fn latest_retained_message_passes_and_missing_one_violates() {
        let mut b = publisher();
        retain(&mut b, "p-1", 4);
        retain(&mut b, "p-2", 4);
        b.connect("s", true, false)
            .subscribe("s", "r/+", 1, 1)
            .deliver_opts("s", "p-2", "r/a", 1, true, false);
        let out = CheckerName::Retained.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);

        let mut b = publisher();
        retain(&mut b, "p-1", 4);
        b.connect("s", true, false).subscribe("s", "r/+", 1, 1);
        let out = CheckerName::Retained.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.3.1-6");
        assert!(out.violations[0].owed.contains("p-1"));
    }

    #[test]
    fn a_qos0_retained_message_may_leave_nothing_retained() {
        // p-1 (QoS 1) is certain; p-2, a later QoS 0 retained message, may have replaced it and
        // then been discarded [MQTT-3.3.1-7]: a subscriber that gets neither is not failed.
        let mut b = publisher();
        retain(&mut b, "p-1", 4);
        b.publish_opts("p", "p-2", "r/a", 0, true, 4);
        b.connect("s", true, false).subscribe("s", "r/+", 1, 1);
        let out = CheckerName::Retained.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
        assert!(
            out.notes.keys().any(|n| n.contains("QoS 0 retained")),
            "{:?}",
            out.notes
        );
        // Either one delivered is fine too.
        let mut b = publisher();
        retain(&mut b, "p-1", 4);
        b.publish_opts("p", "p-2", "r/a", 0, true, 4);
        b.connect("s", true, false)
            .subscribe("s", "r/+", 1, 1)
            .deliver_opts("s", "p-2", "r/a", 0, true, false);
        assert!(CheckerName::Retained.run(&b.model()).passed());
    }

    #[test]
    fn replaced_message_violates() {
        let mut b = publisher();
        retain(&mut b, "p-1", 4);
        retain(&mut b, "p-2", 4);
        b.connect("s", true, false)
            .subscribe("s", "r/a", 1, 1)
            .deliver_opts("s", "p-1", "r/a", 1, true, false);
        let out = CheckerName::Retained.run(&b.model());
        assert_eq!(
            out.violations.len(),
            2,
            "stale copy, and the latest missing"
        );
        assert!(out.violations[0].happened.contains("stale"));
    }

    #[test]
    fn cleared_message_must_not_come_back() {
        let mut b = publisher();
        retain(&mut b, "p-1", 4);
        retain(&mut b, "p-clear", 0);
        b.connect("s", true, false).subscribe("s", "r/a", 1, 1);
        assert!(CheckerName::Retained.run(&b.model()).passed());
        b.deliver_opts("s", "p-1", "r/a", 1, true, false);
        let out = CheckerName::Retained.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.3.1-10");
    }

    /// An empty retained publish forwarded live to a 5.0 Retain As Published subscription
    /// keeps RETAIN 1 [MQTT-3.3.1-13]: not an empty message "sent on SUBSCRIBE"; in 3.1.1 the
    /// same delivery is a live forward with RETAIN 1 [MQTT-3.3.1-9].
    #[test]
    fn empty_live_forward_is_judged_as_live() {
        use crate::codec::ProtocolVersion;
        use crate::history::{Event, FilterGrant, FilterRequest};
        let mut b = publisher();
        b.connect_opts("s", true, ProtocolVersion::V5, None, None)
            .connack("s", false)
            .ev(Event::Subscribe {
                client: "s".into(),
                filters: vec![FilterRequest {
                    filter: "r/a".into(),
                    qos: crate::codec::QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: 0,
                }],
                automatic: false,
            })
            .ev(Event::SubAck {
                client: "s".into(),
                results: vec![FilterGrant {
                    filter: "r/a".into(),
                    granted: Some(crate::codec::QoS::AtLeastOnce),
                }],
            });
        retain(&mut b, "p-clear", 0);
        b.deliver_opts("s", "", "r/a", 1, true, false);
        let out = CheckerName::Retained.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);

        let mut b = publisher();
        b.connect("s", true, false).subscribe("s", "r/a", 1, 1);
        retain(&mut b, "p-clear", 0);
        b.deliver_opts("s", "", "r/a", 1, true, false);
        let out = CheckerName::Retained.run(&b.model());
        assert_eq!(out.violations.len(), 1, "{:?}", out.violations);
        assert_eq!(out.violations[0].spec, "MQTT-3.3.1-9");
    }

    #[test]
    fn live_forward_with_retain_flag_violates_in_311() {
        let mut b = publisher();
        b.connect("s", true, false).subscribe("s", "r/a", 1, 1);
        retain(&mut b, "p-1", 4);
        b.deliver_opts("s", "p-1", "r/a", 1, true, false);
        let out = CheckerName::Retained.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.3.1-9");
    }

    #[test]
    fn concurrent_writes_accept_either_and_volatile_crash_clears() {
        let mut b = publisher();
        b.connect("q", true, false);
        b.publish_opts("p", "p-1", "r/a", 1, true, 4)
            .publish_opts("q", "q-1", "r/a", 1, true, 4)
            .acked("q", "q-1")
            .acked("p", "p-1")
            .connect("s", true, false)
            .subscribe("s", "r/a", 1, 1)
            .deliver_opts("s", "q-1", "r/a", 1, true, false);
        assert!(CheckerName::Retained.run(&b.model()).passed());

        let mut b = TraceBuilder::volatile_broker();
        b.connect("p", true, false);
        retain(&mut b, "p-1", 4);
        b.fault(Fault::BrokerCrash { power_loss: true })
            .connect("s", true, false)
            .subscribe("s", "r/a", 1, 1);
        assert!(CheckerName::Retained.run(&b.model()).passed());
        b.deliver_opts("s", "p-1", "r/a", 1, true, false);
        assert_eq!(CheckerName::Retained.run(&b.model()).violations.len(), 1);
    }
}
