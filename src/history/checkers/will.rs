//! Wills: published iff the connection ended without a DISCONNECT that removes it, with the
//! will's QoS and retain flag; never while the connection is alive; never twice at QoS 0/2.
//!
//! - Required: network error, keepalive timeout, kick, client crash, reset, a server-sent
//!   DISCONNECT, or 5.0 DISCONNECT 0x04 [MQTT-3.1.2-8]; with a 5.0 Will Delay Interval, only if
//!   no new connection to the session came within the delay [MQTT-3.1.3-9 (5.0)].
//! - Forbidden: a normal DISCONNECT on a healthy link [MQTT-3.14.4-3]; a connection still open.
//! - Either (recorded): takeover in 3.1.1 (the spec does not say whether the server's closing of
//!   the old connection publishes the will), a broker crash, a DISCONNECT sent while a fault
//!   touched the link (the broker may never have seen it), an attempt superseded without a
//!   recorded cause, and a connection the client saw end (keepalive, stream error, its crash)
//!   when the broker crashed before the close can have crossed the link (`Model::crossed_by`:
//!   the network's latency bound and the latency faults on the link).
//!
//! A required will is owed like a message: to sessions whose subscription was acknowledged
//! before the connection ended, at min(will QoS, granted). At effective QoS 0 it is owed only
//! when the subscriber stayed connected on a healthy link until the end of the trace.

use super::{spec_id, Outcome, ViolationBuilder};
use crate::codec::{ProtocolVersion, QoS};
use crate::history::model::{Connection, Model};
use crate::history::DisconnectCause;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Required,
    Forbidden(&'static str, &'static str),
    Either(&'static str),
}

pub fn check(model: &Model, out: &mut Outcome) {
    for (conn_index, conn) in model.connections.iter().enumerate() {
        let Some(will) = &conn.will else { continue };
        if !conn.accepted() || will.id.is_empty() {
            continue;
        }
        let deliveries = matched_deliveries(model, conn_index);
        let verdict = verdict(model, conn_index, conn);
        let end_ms = conn.end_ms();
        let will_ref = |b: ViolationBuilder| b.message_ref(&conn.client, &will.topic, &will.id);

        // Never while the connection is alive. The broker may declare a connection dead
        // (keepalive, a stalled stream) before the client notices, so a will that arrives while
        // the client still thinks it is connected is fine if that connection later ends
        // without DISCONNECT; it is wrong if the connection lives on to the end of the trace.
        for &d in &deliveries {
            let delivery = &model.deliveries[d];
            let premature =
                end_ms.is_none() && !model.impaired(&conn.client, delivery.at_ms, model.end_ms);
            if premature {
                out.violation(
                    will_ref(ViolationBuilder::new("MQTT-3.1.2-8"))
                        .client(&delivery.client)
                        .owed("the will only after the connection that registered it ended")
                        .happened(
                            "will delivered while that connection was open, and it stayed open",
                        )
                        .events([conn.event, delivery.event]),
                );
            } else if end_ms.is_none_or(|end| delivery.at_ms < end) {
                out.note("will delivered before the client noticed its connection was lost");
            }
            if delivery.qos > will.qos {
                out.violation(
                    will_ref(ViolationBuilder::new(spec_id(
                        conn.protocol,
                        "MQTT-3.8.4-6",
                        "MQTT-3.8.4-8",
                    )))
                    .client(&delivery.client)
                    .owed(format!("the will at QoS ≤ {}", will.qos.as_u8()))
                    .happened(format!("delivered at QoS {}", delivery.qos.as_u8()))
                    .events([conn.event, delivery.event]),
                );
            }
        }
        let Some(end_ms) = end_ms else { continue };
        let end_event = conn.end.as_ref().map(|(e, _, _)| *e).unwrap_or(conn.event);

        match verdict {
            Verdict::Forbidden(v311, v5) => {
                if let Some(&d) = deliveries.first() {
                    out.violation(
                        will_ref(ViolationBuilder::new(spec_id(conn.protocol, v311, v5)))
                            .client(&model.deliveries[d].client)
                            .owed("no will: the connection ended with a normal DISCONNECT")
                            .happened("the will was delivered")
                            .events([conn.event, end_event, model.deliveries[d].event]),
                    );
                }
            }
            Verdict::Either(why) => {
                out.note(format!(
                    "will {} on {why}",
                    if deliveries.is_empty() {
                        "not published"
                    } else {
                        "published"
                    }
                ));
            }
            Verdict::Required => {
                let published_at = end_ms + u64::from(will.delay_secs.unwrap_or(0)) * 1000;
                // Subscriptions made after the broker may already have published the will are
                // not owed it.
                let broker_end = model.broker_side_end(conn_index).unwrap_or(end_ms)
                    + u64::from(will.delay_secs.unwrap_or(0)) * 1000;
                // Any copy of this will id after the connection started satisfies it: with
                // reused ids, which connection a copy came from is not always decidable.
                let any_copies: Vec<usize> = model
                    .deliveries
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.id == will.id && d.at_ms >= conn.attempt_ms)
                    .map(|(i, _)| i)
                    .collect();
                for epoch in 0..model.epochs.len() {
                    let subs: Vec<usize> = (0..model.subscriptions.len())
                        .filter(|&s| {
                            let sub = &model.subscriptions[s];
                            sub.epoch == epoch
                                && sub.matches(&will.topic)
                                && matches!(sub.acked, Some((_, at, Some(_))) if at < broker_end)
                                && sub.end_ms(&model.epochs).is_none_or(|e| e > published_at)
                        })
                        .collect();
                    if subs.is_empty() {
                        continue;
                    }
                    let got = any_copies
                        .iter()
                        .any(|&d| model.deliveries[d].epoch == Some(epoch));
                    if got {
                        continue;
                    }
                    let effective = subs
                        .iter()
                        .filter_map(|&s| model.subscriptions[s].granted())
                        .map(|g| g.min(will.qos))
                        .max()
                        .unwrap_or(QoS::AtMostOnce);
                    let Some(holder) = model.holder_at_end(epoch) else {
                        out.note("unresolved: will owed, subscriber offline at the end");
                        continue;
                    };
                    let healthy_since = if effective == QoS::AtMostOnce {
                        // QoS 0 may be lost on any broken link: demand it only from a
                        // subscriber connected on a healthy link throughout.
                        let since = holder.connack.map(|(_, at, _, _)| at).unwrap_or(u64::MAX);
                        if since > end_ms {
                            out.note("will at QoS 0 to a subscriber that reconnected: not owed");
                            continue;
                        }
                        end_ms
                    } else {
                        model.end_ms
                    };
                    if model.impaired(&holder.client, healthy_since, model.end_ms) {
                        out.note("unresolved: will owed, subscriber link impaired");
                        continue;
                    }
                    let mut events = vec![conn.event, end_event];
                    events.extend(
                        subs.iter()
                            .filter_map(|&s| model.subscriptions[s].acked.map(|(e, _, _)| e)),
                    );
                    out.violation(
                        will_ref(ViolationBuilder::new("MQTT-3.1.2-8"))
                            .client(&holder.client)
                            .owed(format!(
                                "the will (QoS {}, retain {}) after the connection ended without DISCONNECT ({})",
                                will.qos.as_u8(),
                                will.retain,
                                cause_text(conn)
                            ))
                            .happened("never delivered")
                            .events(events),
                    );
                }
            }
        }
    }
}

/// The deliveries of a connection's will. A client that reconnects registers the same will
/// payload (so the same id) on every connection. A delivery belongs to the latest connection
/// started by then if that connection had ended, or ends later without a normal DISCONNECT
/// (the broker noticed first); otherwise to the connection before it.
fn matched_deliveries(model: &Model, conn_index: usize) -> Vec<usize> {
    let Some(will) = &model.connections[conn_index].will else {
        return Vec::new();
    };
    let same: Vec<usize> = (0..model.connections.len())
        .filter(|&c| {
            model.connections[c].accepted()
                && model.connections[c]
                    .will
                    .as_ref()
                    .is_some_and(|w| w.id == will.id)
        })
        .collect();
    model
        .deliveries
        .iter()
        .enumerate()
        .filter(|(_, d)| d.id == will.id)
        .filter(|(_, d)| {
            let Some(k) = same
                .iter()
                .rposition(|&c| model.connections[c].attempt_ms <= d.at_ms)
            else {
                return false;
            };
            let latest = &model.connections[same[k]];
            let owns = match &latest.end {
                Some((_, end, cause)) => {
                    *end <= d.at_ms || !cause.as_ref().is_some_and(|c| c.is_normal_disconnect())
                }
                None => false,
            };
            let owner = if owns || k == 0 { same[k] } else { same[k - 1] };
            owner == conn_index
        })
        .map(|(i, _)| i)
        .collect()
}

fn cause_text(conn: &Connection) -> String {
    match conn.end.as_ref().and_then(|(_, _, c)| c.as_ref()) {
        Some(cause) => serde_json::to_string(cause).unwrap_or_default(),
        None => "unknown".into(),
    }
}

fn verdict(model: &Model, conn_index: usize, conn: &Connection) -> Verdict {
    let Some((_, end_ms, cause)) = &conn.end else {
        // Still open: any will delivery is caught above as premature.
        return Verdict::Forbidden("MQTT-3.1.2-8", "MQTT-3.1.2-8");
    };
    let connack_ms = conn
        .connack
        .map(|(_, at, _, _)| at)
        .unwrap_or(conn.attempt_ms);
    let base = match cause {
        None => Verdict::Either("a connection superseded without a recorded cause"),
        Some(DisconnectCause::ClientDisconnect { with_will: false }) => {
            if model.impaired(&conn.client, connack_ms, *end_ms) {
                Verdict::Either("a DISCONNECT sent over an impaired link")
            } else {
                Verdict::Forbidden("MQTT-3.14.4-3", "MQTT-3.14.4-3")
            }
        }
        Some(DisconnectCause::BrokerCrash) => Verdict::Either("a broker crash"),
        Some(DisconnectCause::Takeover) => match conn.protocol {
            ProtocolVersion::V311 => Verdict::Either("takeover (3.1.1)"),
            ProtocolVersion::V5 => Verdict::Required,
        },
        Some(_) => Verdict::Required,
    };
    if base != Verdict::Required {
        return base;
    }
    // The client saw its connection end (its keepalive gave up, the stream broke, its host
    // crashed); the broker learns of it only when the close crosses the link. A broker crash
    // before that can have happened with the connection still open on the broker's side, and
    // a crashing broker owes no will for it.
    let client_side = matches!(
        cause,
        Some(
            DisconnectCause::KeepaliveTimeout
                | DisconnectCause::NetworkError { .. }
                | DisconnectCause::ClientCrash
                | DisconnectCause::ConnectionReset
        )
    );
    if client_side {
        let noticed_by = model.crossed_by(&conn.client, *end_ms);
        if model
            .broker_crashes
            .iter()
            .any(|&(_, at)| at >= *end_ms && at <= noticed_by)
        {
            return Verdict::Either("a broker crash before the close can have reached it");
        }
    }
    // 5.0 Will Delay Interval: a new connection to the session within the delay cancels it,
    // unless that connection starts clean (the session, and with it the delay, ends).
    let delay_ms = conn
        .will
        .as_ref()
        .and_then(|w| w.delay_secs)
        .map(|s| u64::from(s) * 1000)
        .unwrap_or(0);
    let expiry_ms = u64::from(conn.session_expiry_secs.unwrap_or(0)) * 1000;
    if conn.protocol == ProtocolVersion::V5 && delay_ms > 0 {
        if expiry_ms < delay_ms {
            // The session ends first; the will goes out then [MQTT-3.1.2-8 (5.0)].
            return Verdict::Required;
        }
        let resumed = model.connections[conn_index + 1..]
            .iter()
            .find(|c| c.client_id == conn.client_id && c.attempt_ms >= *end_ms && c.accepted());
        match resumed {
            Some(c) if c.attempt_ms < end_ms + delay_ms => {
                if c.clean_start {
                    return Verdict::Either("a clean reconnect within the will delay");
                }
                return Verdict::Forbidden("MQTT-3.1.3-9", "MQTT-3.1.3-9");
            }
            Some(_) => {}
            None if end_ms + delay_ms > model.end_ms => {
                return Verdict::Either("a will delay running past the end of the trace");
            }
            None => {}
        }
    }
    Verdict::Required
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::codec::ProtocolVersion;
    use crate::history::model::build::{q, TraceBuilder};
    use crate::history::{DisconnectCause, Fault, WillInfo};

    fn will(delay: Option<u32>) -> Option<WillInfo> {
        Some(WillInfo {
            id: "w-c-1".into(),
            topic: "status/c".into(),
            qos: q(1),
            retain: false,
            delay_secs: delay,
        })
    }

    fn base(protocol: ProtocolVersion, delay: Option<u32>) -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false).subscribe("s", "status/#", 1, 1);
        b.connect_opts("c", true, protocol, Some(300), will(delay))
            .connack("c", false);
        b
    }

    #[test]
    fn will_on_keepalive_expiry_passes_and_its_absence_violates() {
        let mut b = base(ProtocolVersion::V311, None);
        b.disconnect("c", DisconnectCause::KeepaliveTimeout)
            .deliver("s", "w-c-1", "status/c", 1);
        assert!(CheckerName::Will.run(&b.model()).passed());

        let mut b = base(ProtocolVersion::V311, None);
        b.disconnect("c", DisconnectCause::ClientCrash);
        let out = CheckerName::Will.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.1.2-8");
        assert!(out.violations[0].owed.contains("client_crash"));
    }

    #[test]
    fn will_after_normal_disconnect_violates() {
        let mut b = base(ProtocolVersion::V311, None);
        b.disconnect("c", DisconnectCause::ClientDisconnect { with_will: false })
            .deliver("s", "w-c-1", "status/c", 1);
        let out = CheckerName::Will.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.14.4-3");
    }

    #[test]
    fn disconnect_over_an_impaired_link_accepts_either() {
        let mut b = base(ProtocolVersion::V311, None);
        b.fault(Fault::Stall { client: "c".into() })
            .disconnect("c", DisconnectCause::ClientDisconnect { with_will: false })
            .deliver("s", "w-c-1", "status/c", 1);
        let out = CheckerName::Will.run(&b.model());
        assert!(out.passed());
        assert!(out.notes.keys().any(|n| n.contains("impaired")));
    }

    #[test]
    fn takeover_in_311_accepts_both_and_records_it() {
        for publish in [false, true] {
            let mut b = base(ProtocolVersion::V311, None);
            b.disconnect("c", DisconnectCause::Takeover);
            if publish {
                b.deliver("s", "w-c-1", "status/c", 1);
            }
            let out = CheckerName::Will.run(&b.model());
            assert!(out.passed());
            let expected = if publish {
                "will published on takeover (3.1.1)"
            } else {
                "will not published on takeover (3.1.1)"
            };
            assert!(out.notes.contains_key(expected), "{:?}", out.notes);
        }
    }

    #[test]
    fn will_while_connected_violates() {
        let mut b = base(ProtocolVersion::V311, None);
        b.deliver("s", "w-c-1", "status/c", 1);
        let out = CheckerName::Will.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert!(out.violations[0].happened.contains("open"));
    }

    #[test]
    fn will_before_the_client_notices_and_reused_will_ids_are_attributed() {
        // The broker's keepalive fires before the client's: the will arrives first.
        let mut b = base(ProtocolVersion::V311, None);
        b.deliver("s", "w-c-1", "status/c", 1)
            .disconnect("c", DisconnectCause::KeepaliveTimeout);
        let out = CheckerName::Will.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
        assert!(out
            .notes
            .keys()
            .any(|n| n.contains("before the client noticed")));
        // The client reconnects with the same will payload; the old connection's will arrives
        // after the new attempt and is not blamed on the new connection.
        let mut b = base(ProtocolVersion::V311, None);
        b.disconnect("c", DisconnectCause::ConnectionReset)
            .connect_opts("c", true, ProtocolVersion::V311, None, will(None))
            .connack("c", false)
            .deliver("s", "w-c-1", "status/c", 1);
        let out = CheckerName::Will.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
    }

    #[test]
    fn subscriptions_after_the_broker_noticed_are_not_owed_and_second_wills_count() {
        // Kicked: the broker ends the connection (and publishes the will) at once; the client
        // notices later. A subscription acknowledged in between is not owed the will.
        let mut b = TraceBuilder::new();
        b.connect_opts("c", true, ProtocolVersion::V311, None, will(None))
            .connack("c", false)
            .fault(Fault::Kick { client: "c".into() })
            .connect("s", true, false)
            .subscribe("s", "status/#", 1, 1)
            .disconnect("c", DisconnectCause::Kicked);
        assert!(CheckerName::Will.run(&b.model()).passed());

        // Two connections with the same will id; the second one's will arrives before its
        // client notices the partition.
        let mut b = base(ProtocolVersion::V311, None);
        b.disconnect("c", DisconnectCause::ConnectionReset)
            .deliver("s", "w-c-1", "status/c", 1)
            .connect_opts("c", true, ProtocolVersion::V311, None, will(None))
            .connack("c", false)
            .fault(Fault::Partition {
                a: "h-c".into(),
                b: "broker".into(),
                one_way: false,
            })
            .deliver("s", "w-c-1", "status/c", 1)
            .disconnect("c", DisconnectCause::KeepaliveTimeout);
        let out = CheckerName::Will.run(&b.model());
        assert!(out.passed(), "{:?}", out.violations);
    }

    /// chaos-mixed-v5-wills seed 349: the client's keepalive gave up and it closed 15 ms
    /// before the broker crashed, on links with up to 35 ms of latency. The close may never
    /// have reached the broker, so the will is not owed; a crash after the close certainly
    /// arrived leaves it owed.
    #[test]
    fn a_broker_crash_before_the_close_can_arrive_makes_the_will_optional() {
        use crate::history::Event;
        let build = |crash_after_ms: u64| {
            let mut b = TraceBuilder::new();
            b.ev(Event::Network {
                tick_ms: 5,
                latency_min_ms: 5,
                latency_max_ms: 35,
            });
            // The subscriber's session outlives the crash (durable broker, persistent).
            b.connect("s", false, false)
                .subscribe("s", "status/#", 1, 1);
            b.connect_opts("c", true, ProtocolVersion::V5, None, will(None))
                .connack("c", false);
            b.at(5765)
                .disconnect("c", DisconnectCause::KeepaliveTimeout)
                .at(5765 + crash_after_ms)
                .fault(Fault::BrokerCrash { power_loss: false });
            b.at(7000).ev(Event::BrokerStarted { durable: true });
            b.disconnect("s", DisconnectCause::BrokerCrash)
                .connect("s", false, true);
            b
        };
        let out = CheckerName::Will.run(&build(15).model());
        assert!(out.passed(), "{:?}", out.violations);
        assert!(
            out.notes.keys().any(|n| n.contains("before the close")),
            "{:?}",
            out.notes
        );
        let out = CheckerName::Will.run(&build(500).model());
        assert_eq!(out.violations.len(), 1, "{:?}", out.notes);
        // A latency fault on the client's link stretches the window.
        let mut b = build(500);
        b.trace.records.insert(
            3,
            crate::history::Record {
                at_ms: 3,
                host: "sim".into(),
                event: Event::Fault {
                    fault: Fault::Latency {
                        a: "h-c".into(),
                        b: "broker".into(),
                        latency_ms: 600,
                        jitter_ms: 0,
                    },
                },
            },
        );
        assert!(CheckerName::Will.run(&b.model()).passed());
    }

    #[test]
    fn will_delay_cancelled_by_a_resume_within_the_delay() {
        let mut b = base(ProtocolVersion::V5, Some(10));
        b.disconnect(
            "c",
            DisconnectCause::NetworkError {
                detail: "reset".into(),
            },
        );
        b.connect_opts("c", false, ProtocolVersion::V5, Some(300), None)
            .connack("c", true)
            .deliver("s", "w-c-1", "status/c", 1);
        let out = CheckerName::Will.run(&b.model());
        assert_eq!(out.violations.len(), 1);
        assert_eq!(out.violations[0].spec, "MQTT-3.1.3-9");
    }

    #[test]
    fn will_at_higher_qos_than_registered_violates() {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false).subscribe("s", "status/#", 2, 2);
        b.connect_opts(
            "c",
            true,
            ProtocolVersion::V311,
            None,
            Some(WillInfo {
                id: "w-c-1".into(),
                topic: "status/c".into(),
                qos: q(0),
                retain: false,
                delay_secs: None,
            }),
        )
        .connack("c", false)
        .disconnect("c", DisconnectCause::KeepaliveTimeout)
        .deliver("s", "w-c-1", "status/c", 2);
        let out = CheckerName::Will.run(&b.model());
        assert_eq!(out.violations[0].spec, "MQTT-3.8.4-6");
    }
}
