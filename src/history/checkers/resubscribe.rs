//! Resubscription: a client whose policy is to resubscribe, reconnecting to a broker that has no
//! session for it (Session Present 0), subscribes again to every filter its application still
//! wants, and then receives again. The obligation is the client library's: Session Present 0
//! means the broker holds no subscriptions [MQTT-3.2.2-3], so without resubscribing the
//! application silently stops receiving.
//!
//! A connection that ended before the client could send anything owes nothing; one that lived
//! on (open at the end, or the client published or received on it) must have resubscribed.

use std::collections::BTreeMap;

use super::{Outcome, ViolationBuilder};
use crate::codec::QoS;
use crate::history::model::Model;

pub fn check(model: &Model, out: &mut Outcome) {
    for (index, conn) in model.connections.iter().enumerate() {
        if !conn.resubscribe || !conn.accepted() {
            continue;
        }
        let Some((connack_event, connack_ms, session_present, _)) = conn.connack else {
            continue;
        };
        if session_present {
            continue;
        }
        let wanted = wanted_filters(model, &conn.client, conn.attempt_ms);
        if wanted.is_empty() {
            continue;
        }
        let end_ms = conn.end_ms().unwrap_or(u64::MAX);
        let on_this = |at: u64| at >= connack_ms && at <= end_ms;
        let resubscribed: Vec<&str> = model
            .subscriptions
            .iter()
            .filter(|s| s.connection == index && on_this(s.sent_ms))
            .map(|s| s.request.filter.as_str())
            .collect();
        let lived_on = conn.end.is_none()
            || model
                .messages
                .iter()
                .any(|m| m.publisher == conn.client && m.connection == Some(index))
            || model.deliveries.iter().any(|d| d.connection == Some(index));
        for (filter, (qos, event)) in &wanted {
            if resubscribed.contains(&filter.as_str()) {
                continue;
            }
            if !lived_on {
                out.note("connection ended before the client could resubscribe");
                continue;
            }
            out.violation(
                ViolationBuilder::new(super::spec_id(
                    conn.protocol,
                    "MQTT-3.2.2-3",
                    "MQTT-3.2.2-3",
                ))
                .client(&conn.client)
                .owed(format!(
                    "SUBSCRIBE {filter:?} (QoS {}) again after Session Present 0",
                    qos.as_u8()
                ))
                .happened("the client did not resubscribe on this connection")
                .events([*event, conn.event, connack_event]),
            );
        }
        // Receiving again: owed messages through the renewed subscriptions arrive.
        for (m_index, message) in model.messages.iter().enumerate() {
            for owed in model.owed(m_index) {
                if owed.effective == QoS::AtMostOnce
                    || owed.released
                    || !owed
                        .subscriptions
                        .iter()
                        .all(|&s| model.subscriptions[s].connection == index)
                    || !model.deliveries_in(m_index, owed.epoch).is_empty()
                {
                    continue;
                }
                let Some(holder) = model.holder_at_end(owed.epoch) else {
                    continue;
                };
                if model.impaired(&holder.client, model.end_ms, model.end_ms) {
                    continue;
                }
                let sub = &model.subscriptions[owed.subscriptions[0]];
                out.violation(
                    ViolationBuilder::new("MQTT-4.5.0-1")
                        .message(message)
                        .client(&conn.client)
                        .owed(format!(
                            "delivery through the renewed subscription {:?}",
                            sub.request.filter
                        ))
                        .happened("never delivered")
                        .events([sub.event, message.event]),
                );
            }
        }
    }
}

/// Filter → (QoS, record of the SUBSCRIBE) the application wants before `at_ms`. A client
/// process that crashed starts over: what it subscribed to before is forgotten with it.
fn wanted_filters(model: &Model, client: &str, at_ms: u64) -> BTreeMap<String, (QoS, usize)> {
    let mut wanted = BTreeMap::new();
    let restarted_ms = model
        .faults
        .iter()
        .filter(|f| {
            matches!(&f.fault, crate::history::Fault::ClientCrash { client: c } if c == client)
                && f.start_ms < at_ms
        })
        .map(|f| f.start_ms)
        .max();
    for s in &model.subscriptions {
        if s.client != client
            || s.automatic
            || s.sent_ms >= at_ms
            || restarted_ms.is_some_and(|r| s.sent_ms <= r)
        {
            continue;
        }
        if s.granted().is_some() || s.acked.is_none() {
            wanted.insert(s.request.filter.clone(), (s.request.qos, s.event));
        }
    }
    // Application unsubscribes remove filters for good.
    for s in &model.subscriptions {
        if s.client == client {
            if let Some((_, at)) = s.unsubscribed {
                if at < at_ms {
                    let later = model.subscriptions.iter().any(|o| {
                        o.client == client
                            && !o.automatic
                            && o.request.filter == s.request.filter
                            && o.sent_ms > at
                            && o.sent_ms < at_ms
                    });
                    if !later {
                        wanted.remove(&s.request.filter);
                    }
                }
            }
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::codec::ProtocolVersion;
    use crate::history::model::build::{q, TraceBuilder};
    use crate::history::{DisconnectCause, Event, FilterRequest};

    fn connect_resub(b: &mut TraceBuilder, clean: bool, present: bool) {
        b.ev(Event::ConnectAttempt {
            client: "s".into(),
            client_id: "s".into(),
            protocol: ProtocolVersion::V311,
            clean_start: clean,
            keep_alive_secs: 5,
            session_expiry_secs: None,
            will: None,
            resubscribe: true,
        })
        .connack("s", present);
    }

    fn auto_subscribe(b: &mut TraceBuilder) {
        b.ev(Event::Subscribe {
            client: "s".into(),
            filters: vec![FilterRequest {
                filter: "t".into(),
                qos: q(1),
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
            automatic: true,
        })
        .ev(Event::SubAck {
            client: "s".into(),
            results: vec![crate::history::FilterGrant {
                filter: "t".into(),
                granted: Some(q(1)),
            }],
        });
    }

    fn base() -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("p", true, false);
        connect_resub(&mut b, true, false);
        b.subscribe("s", "t", 1, 1)
            .disconnect("s", DisconnectCause::KeepaliveTimeout);
        connect_resub(&mut b, true, false);
        b
    }

    #[test]
    fn resubscribing_and_receiving_passes() {
        let mut b = base();
        auto_subscribe(&mut b);
        b.publish_acked("p", "p-1", "t", 1)
            .deliver("s", "p-1", "t", 1);
        let out = CheckerName::Resubscribe.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
    }

    #[test]
    fn not_resubscribing_violates() {
        let b = base();
        let out = CheckerName::Resubscribe.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert!(out.violations[0].owed.contains("SUBSCRIBE \"t\""));
    }

    #[test]
    fn resubscribed_but_not_receiving_violates() {
        let mut b = base();
        auto_subscribe(&mut b);
        b.publish_acked("p", "p-1", "t", 1);
        let out = CheckerName::Resubscribe.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert!(out.violations[0].owed.contains("renewed"));
    }

    #[test]
    fn a_crashed_client_process_forgets_its_subscriptions() {
        let mut b = TraceBuilder::new();
        connect_resub(&mut b, true, false);
        b.subscribe("s", "t", 1, 1)
            .fault(crate::history::Fault::ClientCrash { client: "s".into() })
            .disconnect("s", DisconnectCause::ClientCrash)
            .fault(crate::history::Fault::ClientRestart { client: "s".into() });
        connect_resub(&mut b, true, false);
        assert!(CheckerName::Resubscribe.run(&b.model()).passed());
    }

    #[test]
    fn a_connection_that_died_at_once_owes_nothing_and_unsubscribed_filters_are_dropped() {
        let mut b = base();
        b.disconnect("s", DisconnectCause::KeepaliveTimeout);
        assert!(CheckerName::Resubscribe.run(&b.model()).passed());

        let mut b = TraceBuilder::new();
        connect_resub(&mut b, true, false);
        b.subscribe("s", "t", 1, 1)
            .unsubscribe("s", "t")
            .disconnect("s", DisconnectCause::KeepaliveTimeout);
        connect_resub(&mut b, true, false);
        assert!(CheckerName::Resubscribe.run(&b.model()).passed());
    }
}
