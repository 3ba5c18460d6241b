//! Sessions: `session_present` is true exactly when a stored session was resumed, a refused
//! CONNACK never claims a session, and a resumed persistent session keeps its subscriptions and
//! the messages queued while the client was away.
//!
//! Whether a session was stored comes from the model (`PriorSession`): absent after a clean
//! start, expiry or a crash the broker does not promise to survive; present after an accepted
//! persistent connection; unknown when an unanswered CONNECT may have changed it.

use super::{spec_id, Outcome, ViolationBuilder};
use crate::codec::QoS;
use crate::history::model::{Model, PriorSession};

pub fn check(model: &Model, out: &mut Outcome) {
    for conn in &model.connections {
        let Some((connack_event, _, session_present, accepted)) = conn.connack else {
            continue;
        };
        let v = conn.protocol;
        let base = ViolationBuilder::new("")
            .client(&conn.client)
            .events([conn.event, connack_event]);
        if !accepted {
            if session_present {
                out.violation(
                    ViolationBuilder {
                        spec: spec_id(v, "MQTT-3.2.2-4", "MQTT-3.2.2-6"),
                        ..base
                    }
                    .owed("Session Present 0 on a refused connection")
                    .happened("Session Present 1"),
                );
            }
            continue;
        }
        if conn.clean_start {
            if session_present {
                out.violation(
                    ViolationBuilder {
                        spec: spec_id(v, "MQTT-3.2.2-1", "MQTT-3.2.2-2"),
                        ..base
                    }
                    .owed("Session Present 0 for a clean start")
                    .happened("Session Present 1"),
                );
            }
            continue;
        }
        match (conn.prior_session, session_present) {
            (PriorSession::Present, false) => out.violation(
                ViolationBuilder {
                    spec: spec_id(v, "MQTT-3.2.2-2", "MQTT-3.2.2-3"),
                    ..base
                }
                .owed("Session Present 1: the persistent session was stored and not ended")
                .happened("Session Present 0 (the session was lost)"),
            ),
            (PriorSession::Absent, true) => out.violation(
                ViolationBuilder {
                    spec: spec_id(v, "MQTT-3.2.2-3", "MQTT-3.2.2-3"),
                    ..base
                }
                .owed("Session Present 0: no session could be stored for this client id")
                .happened("Session Present 1"),
            ),
            (PriorSession::Unknown, present) => out.note(format!(
                "session present {} where the trace cannot tell",
                u8::from(present)
            )),
            _ => {}
        }
    }

    // Subscriptions and queued messages survive a resume.
    for (index, message) in model.messages.iter().enumerate() {
        for owed in model.owed(index) {
            if owed.effective == QoS::AtMostOnce
                || owed.released
                || !model.deliveries_in(index, owed.epoch).is_empty()
            {
                continue;
            }
            let epoch = &model.epochs[owed.epoch];
            let Some(holder) = model.holder_at_end(owed.epoch) else {
                continue;
            };
            let holder_index = *epoch
                .connections
                .last()
                .expect("holder implies a connection");
            let subscribed_earlier = owed
                .subscriptions
                .iter()
                .all(|&s| model.subscriptions[s].connection != holder_index);
            if !subscribed_earlier || model.impaired(&holder.client, model.end_ms, model.end_ms) {
                continue;
            }
            let offline = !epoch
                .connections
                .iter()
                .any(|&c| model.connections[c].open_at(message.sent_ms));
            let v = holder.protocol;
            let (spec, owed_text) = if offline {
                (
                    spec_id(v, "MQTT-3.1.2-5", "MQTT-3.1.2-23"),
                    "the message queued while the persistent session was offline",
                )
            } else {
                (
                    spec_id(v, "MQTT-3.1.2-4", "MQTT-3.1.2-5"),
                    "delivery through a subscription kept by the resumed session",
                )
            };
            let sub = &model.subscriptions[owed.subscriptions[0]];
            out.violation(
                ViolationBuilder::new(spec)
                    .message(message)
                    .client(&holder.client)
                    .owed(format!("{owed_text} (filter {:?})", sub.request.filter))
                    .happened("never delivered after the session was resumed")
                    .events([sub.event, message.event, holder.event]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;
    use crate::history::{DisconnectCause, Event, Fault};

    #[test]
    fn correct_session_present_flags_pass() {
        let mut b = TraceBuilder::new();
        b.connect("c", false, false)
            .disconnect("c", DisconnectCause::ClientDisconnect { with_will: false })
            .connect("c", false, true)
            .disconnect("c", DisconnectCause::ClientDisconnect { with_will: false })
            .connect("c", true, false);
        let out = CheckerName::Session.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
    }

    #[test]
    fn lost_session_violates() {
        let mut b = TraceBuilder::new();
        b.connect("c", false, false)
            .disconnect("c", DisconnectCause::KeepaliveTimeout)
            .connect("c", false, false);
        let out = CheckerName::Session.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.2.2-2");
    }

    #[test]
    fn invented_session_and_clean_start_with_session_violate() {
        let mut b = TraceBuilder::new();
        b.connect("c", false, true);
        let out = CheckerName::Session.run(&b.model());
        assert_eq!(out.violations[0].spec, "MQTT-3.2.2-3");
        let mut b = TraceBuilder::new();
        b.connect("c", false, false)
            .disconnect("c", DisconnectCause::KeepaliveTimeout)
            .connect("c", true, true);
        let out = CheckerName::Session.run(&b.model());
        assert_eq!(out.violations[0].spec, "MQTT-3.2.2-1");
    }

    #[test]
    fn volatile_crash_makes_a_lost_session_correct_and_unknowns_are_noted() {
        let mut b = TraceBuilder::volatile_broker();
        b.connect("c", false, false)
            .fault(Fault::BrokerCrash { power_loss: false })
            .disconnect("c", DisconnectCause::BrokerCrash)
            .ev(Event::BrokerStarted { durable: false })
            .connect("c", false, false);
        assert!(CheckerName::Session.run(&b.model()).passed());

        let mut b = TraceBuilder::new();
        b.connect("c", true, false);
        b.connect_opts("c", false, crate::codec::ProtocolVersion::V311, None, None)
            .ev(Event::ConnectFailed {
                client: "c".into(),
                error: "timeout".into(),
            })
            .connect("c", false, true);
        let out = CheckerName::Session.run(&b.model());
        assert!(out.passed());
        assert_eq!(out.notes.len(), 1);
    }

    #[test]
    fn subscriptions_survive_and_queued_messages_arrive() {
        let mut b = TraceBuilder::new();
        b.connect("s", false, false)
            .subscribe("s", "t", 1, 1)
            .connect("p", true, false)
            .disconnect("s", DisconnectCause::ClientDisconnect { with_will: false })
            .publish_acked("p", "p-1", "t", 1)
            .connect("s", false, true)
            .publish_acked("p", "p-2", "t", 1)
            .deliver("s", "p-1", "t", 1);
        let out = CheckerName::Session.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.1.2-4");
        assert_eq!(out.violations[0].message.as_ref().unwrap().id, "p-2");
        b.deliver("s", "p-2", "t", 1);
        assert!(CheckerName::Session.run(&b.model()).passed());
    }

    #[test]
    fn refused_connack_with_session_present_violates() {
        let mut b = TraceBuilder::new();
        b.connect_opts("c", false, crate::codec::ProtocolVersion::V311, None, None)
            .ev(Event::ConnAck {
                client: "c".into(),
                session_present: true,
                reason: "0x05".into(),
            });
        let out = CheckerName::Session.run(&b.model());
        assert_eq!(out.violations[0].spec, "MQTT-3.2.2-4");
    }
}
