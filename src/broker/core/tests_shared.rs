//! Shared subscriptions (5.0 §4.8.2) in the broker state machine, and the other 5.0 features
//! of issue 17 (Server Keep Alive).

use super::tests::{config, connack, connect_packet, pid, publish, sent, subscribe, Harness};
use super::*;
use crate::codec::SubscribeProperties;

/// (conn, payload, packet id, dup, subscription ids) of every PUBLISH among `out`, per conn.
fn deliveries(out: &[Action], conns: &[ConnId]) -> Vec<(ConnId, String, u16, bool, Vec<u32>)> {
    let mut all = Vec::new();
    for &conn in conns {
        for p in sent(out, conn) {
            if let Packet::Publish(p) = p {
                all.push((
                    conn,
                    String::from_utf8(p.payload.to_vec()).unwrap(),
                    p.packet_id().map_or(0, |i| i.get()),
                    p.dup,
                    p.properties
                        .subscription_identifiers
                        .iter()
                        .map(|i| i.get())
                        .collect(),
                ));
            }
        }
    }
    all
}

fn v5(h: &mut Harness, conn: ConnId, client_id: &str, expiry_secs: u32) -> ConnAck {
    let mut c = connect_packet(client_id, false, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = Some(expiry_secs);
    let out = h.connect_with(conn, c);
    connack(&out, conn).expect("CONNACK")
}

fn subscribe_id(id: u16, filter: &str, qos: QoS, sub_id: u32) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        properties: SubscribeProperties {
            subscription_identifier: std::num::NonZeroU32::new(sub_id),
            ..Default::default()
        },
        filters: vec![(
            TopicFilter::new(filter).unwrap(),
            SubscriptionOptions::qos(qos),
        )],
    })
}

fn suback(out: &[Action], conn: ConnId) -> Vec<ReasonCode> {
    sent(out, conn)
        .into_iter()
        .find_map(|p| match p {
            Packet::SubAck(s) => Some(s.reason_codes),
            _ => None,
        })
        .expect("SUBACK")
}

#[test]
fn each_message_goes_to_one_member_in_turn_and_retained_messages_are_not_sent() {
    let mut h = Harness::new(config());
    assert_eq!(
        v5(&mut h, 9, "pub", 0)
            .properties
            .shared_subscription_available,
        Some(true)
    );
    h.send(9, publish("jobs/1", "old", QosPid::AtMostOnce, true));
    for (conn, id) in [(1, "a"), (2, "b")] {
        v5(&mut h, conn, id, 60);
        let out = h.send(conn, subscribe(1, &[("$share/g/jobs/+", QoS::AtLeastOnce)]));
        assert_eq!(suback(&out, conn), [ReasonCode::GrantedQoS1]);
        assert!(
            deliveries(&out, &[conn]).is_empty(),
            "no retained message for a shared subscription"
        );
    }
    // A 3.1.1 client joins the same group.
    h.connect(3, "c", false);
    let out = h.send(3, subscribe(1, &[("$share/g/jobs/+", QoS::AtLeastOnce)]));
    assert_eq!(suback(&out, 3), [ReasonCode::GrantedQoS1]);
    let mut got = Vec::new();
    for n in 1..=6u16 {
        let out = h.send(
            9,
            publish("jobs/1", &format!("m{n}"), QosPid::AtMostOnce, false),
        );
        let d = deliveries(&out, &[1, 2, 3]);
        assert_eq!(d.len(), 1, "one member per message: {d:?}");
        got.push(d[0].0);
    }
    assert_eq!(got, [1, 2, 3, 1, 2, 3], "round robin");
    // A malformed `$share` from a 3.1.1 client is refused, not made an ordinary filter.
    let out = h.send(3, subscribe(2, &[("$share//x", QoS::AtLeastOnce)]));
    assert_eq!(suback(&out, 3), [ReasonCode::UnspecifiedError]);
    assert_eq!(h.core.stats(h.now).subscriptions, 3);
}

#[test]
fn shared_subscriptions_can_be_turned_off() {
    let mut h = Harness::new(BrokerConfig {
        shared_subscriptions: false,
        ..config()
    });
    let ack = v5(&mut h, 1, "a", 0);
    assert_eq!(ack.properties.shared_subscription_available, Some(false));
    let out = h.send(1, subscribe(1, &[("$share/g/t", QoS::AtLeastOnce)]));
    assert_eq!(
        suback(&out, 1),
        [ReasonCode::SharedSubscriptionsNotSupported]
    );
}

/// [MQTT-4.8.2-4] [MQTT-4.8.2-5]: an in-flight QoS 2 message stays with its member: resent to
/// it when its session resumes, never sent to another member, dropped if its session ends.
#[test]
fn an_unacknowledged_message_stays_with_its_member() {
    let mut h = Harness::new(config());
    v5(&mut h, 9, "pub", 0);
    v5(&mut h, 1, "a", 60);
    h.send(1, subscribe(1, &[("$share/g/t", QoS::ExactlyOnce)]));
    v5(&mut h, 2, "b", 60);
    h.send(2, subscribe(1, &[("$share/g/t", QoS::ExactlyOnce)]));
    let out = h.send(9, publish("t", "x", QosPid::ExactlyOnce(pid(1)), false));
    let d = deliveries(&out, &[1, 2]);
    assert_eq!(d.len(), 1);
    let (first, _, id, _, _) = d[0].clone();
    assert_eq!(first, 1);
    // Member a drops off with the message unacknowledged; b stays.
    h.end(1);
    let out = h.send(9, publish("t", "y", QosPid::ExactlyOnce(pid(2)), false));
    assert_eq!(
        deliveries(&out, &[2]).len(),
        1,
        "the next message goes to the online member"
    );
    // a comes back: its message again, DUP, same id; b never sees "x".
    let mut c = connect_packet("a", false, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = Some(60);
    let out = h.connect_with(4, c);
    assert!(connack(&out, 4).unwrap().session_present);
    let d = deliveries(&out, &[4]);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].1.as_str(), d[0].2, d[0].3), ("x", id, true));
    // Now a's session ends without a reconnect: "x" (in flight again) goes to no one.
    let out = h.end(4);
    assert!(deliveries(&out, &[2]).is_empty());
    let out = h.advance(61.0);
    assert!(deliveries(&out, &[2]).is_empty());
    assert!(!h.core.state().sessions.contains_key("a"), "a expired");
    let out = h.send(9, publish("t", "z", QosPid::ExactlyOnce(pid(3)), false));
    let d = deliveries(&out, &[2]);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, "z", "x was never handed to b");
}

/// [MQTT-4.8.2-6]: a member's error PUBACK discards the message; no other member gets it.
#[test]
fn an_error_puback_discards_the_message() {
    let mut h = Harness::new(config());
    v5(&mut h, 9, "pub", 0);
    v5(&mut h, 1, "a", 0);
    h.send(1, subscribe(1, &[("$share/g/t", QoS::AtLeastOnce)]));
    v5(&mut h, 2, "b", 0);
    h.send(2, subscribe(1, &[("$share/g/t", QoS::AtLeastOnce)]));
    let out = h.send(9, publish("t", "x", QosPid::AtLeastOnce(pid(1)), false));
    let d = deliveries(&out, &[1, 2]);
    assert_eq!(d.len(), 1);
    let out = h.send(
        d[0].0,
        Packet::PubAck(Ack {
            packet_id: pid(d[0].2),
            reason_code: ReasonCode::UnspecifiedError,
            properties: Default::default(),
        }),
    );
    assert!(deliveries(&out, &[1, 2]).is_empty());
    assert_eq!(h.core.clients()[0].inflight, 0);
}

/// [MQTT-3.3.4-4] [MQTT-3.3.4-5]: the ordinary copy carries every matching ordinary
/// subscription's identifier; the shared copy its own only.
#[test]
fn subscription_identifiers_on_each_copy() {
    let mut h = Harness::new(config());
    v5(&mut h, 9, "pub", 0);
    v5(&mut h, 1, "a", 0);
    h.send(1, subscribe_id(1, "t/#", QoS::AtMostOnce, 11));
    h.send(1, subscribe_id(2, "t/+", QoS::AtMostOnce, 12));
    h.send(1, subscribe_id(3, "$share/g/t/x", QoS::AtMostOnce, 13));
    let out = h.send(9, publish("t/x", "m", QosPid::AtMostOnce, false));
    let mut ids: Vec<Vec<u32>> = deliveries(&out, &[1])
        .into_iter()
        .map(|d| {
            let mut ids = d.4;
            ids.sort_unstable();
            ids
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [vec![11, 12], vec![13]]);
}

/// Membership and a queued shared copy (with its shared filter, for its subscription
/// identifier) come back from the file store after a restart.
#[test]
fn membership_and_queued_copies_survive_a_restart() {
    use crate::store::fs::StdFs;
    use crate::store::{FileStore, SyncPolicy};
    let dir = tempfile::tempdir().unwrap();
    let open =
        || Box::new(FileStore::open(Arc::new(StdFs), dir.path(), SyncPolicy::EveryWrite).unwrap());
    let mut h = Harness::with_store(config(), open());
    v5(&mut h, 1, "a", 600);
    h.send(1, subscribe_id(1, "$share/g/t", QoS::AtLeastOnce, 7));
    v5(&mut h, 2, "b", 600);
    h.send(2, subscribe_id(1, "$share/g/t", QoS::AtLeastOnce, 8));
    h.end(1);
    h.end(2);
    v5(&mut h, 9, "pub", 0);
    // Both offline: queued for one member (round robin: a).
    h.send(9, publish("t", "q", QosPid::AtLeastOnce(pid(1)), false));
    drop(h);
    let mut h = Harness::with_store(config(), open());
    v5(&mut h, 9, "pub", 0);
    let mut c = connect_packet("a", false, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = Some(600);
    let out = h.connect_with(1, c);
    let d = deliveries(&out, &[1]);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].1.as_str(), d[0].4.clone()), ("q", vec![7]));
    v5(&mut h, 2, "b", 600);
    let mut to = Vec::new();
    for n in 1..=4u16 {
        let out = h.send(9, publish("t", "m", QosPid::AtLeastOnce(pid(n)), false));
        let d = deliveries(&out, &[1, 2]);
        assert_eq!(d.len(), 1);
        to.push(d[0].0);
    }
    assert_eq!(to, [1, 2, 1, 2]);
}

/// Server Keep Alive (mosquitto's `max_keepalive`): a 5.0 client asking for more (or none)
/// is told the maximum and held to it [MQTT-3.2.2-22 is the default it replaces]; a 3.1.1
/// client asking for more is refused; one asking for less keeps its own.
#[test]
fn max_keepalive_is_sent_as_server_keep_alive_and_enforced() {
    let mut h = Harness::new(BrokerConfig {
        max_keepalive_secs: Some(10),
        ..config()
    });
    let mut c = connect_packet("long", true, ProtocolVersion::V5);
    c.keep_alive_secs = 60;
    let out = h.connect_with(1, c);
    let ack = connack(&out, 1).unwrap();
    assert_eq!(ack.properties.server_keep_alive_secs, Some(10));
    let mut c = connect_packet("none", true, ProtocolVersion::V5);
    c.keep_alive_secs = 0;
    let ack = connack(&h.connect_with(2, c), 2).unwrap();
    assert_eq!(ack.properties.server_keep_alive_secs, Some(10));
    let mut c = connect_packet("short", true, ProtocolVersion::V5);
    c.keep_alive_secs = 5;
    let ack = connack(&h.connect_with(3, c), 3).unwrap();
    assert_eq!(ack.properties.server_keep_alive_secs, None);
    // Held to 10 s: silent for 14 s is fine, 15.5 s is not (one and a half times).
    let out = h.advance(14.0);
    assert!(!super::tests::closed(&out, 1) && !super::tests::closed(&out, 2));
    assert!(super::tests::closed(&out, 3), "its own 5 s keepalive");
    let out = h.advance(1.5);
    assert!(super::tests::closed(&out, 1) && super::tests::closed(&out, 2));
    // 3.1.1 cannot be told: refused with 0x02.
    let mut c = connect_packet("old", true, ProtocolVersion::V311);
    c.keep_alive_secs = 60;
    let out = h.connect_with(4, c);
    assert_eq!(
        connack(&out, 4).unwrap().reason_code.to_v311_connack(),
        Some(2)
    );
    assert!(super::tests::closed(&out, 4));
    // Without a maximum nothing changes.
    let mut h = Harness::new(config());
    let mut c = connect_packet("long", true, ProtocolVersion::V5);
    c.keep_alive_secs = 60;
    let ack = connack(&h.connect_with(1, c), 1).unwrap();
    assert_eq!(ack.properties.server_keep_alive_secs, None);
}

/// Back-pressure: when every
/// online member's queue is full the publisher is held (`publish_blocker`) rather than a
/// queued message dropped.
#[test]
fn full_members_hold_the_publisher() {
    let mut h = Harness::new(BrokerConfig {
        max_inflight_messages: 1,
        outbound_queue_packets: 16,
        max_queued_messages: 2,
        ..config()
    });
    v5(&mut h, 9, "pub", 0);
    v5(&mut h, 1, "a", 0);
    h.send(1, subscribe(1, &[("$share/g/t", QoS::AtLeastOnce)]));
    v5(&mut h, 2, "b", 0);
    h.send(2, subscribe(1, &[("$share/g/t", QoS::AtLeastOnce)]));
    let probe = |n: u16| Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(pid(n)),
        retain: false,
        topic: TopicName::new("t").unwrap(),
        properties: Default::default(),
        payload: Bytes::from_static(b"m"),
    };
    // Nobody acknowledges: a window of 1 and a queue of 2 each hold 6 messages.
    for n in 1..=6u16 {
        assert_eq!(h.core.publish_blocker(9, &probe(n)), None, "message {n}");
        h.send(9, publish("t", "m", QosPid::AtLeastOnce(pid(n)), false));
    }
    let clients = h.core.clients();
    let held: Vec<(usize, usize)> = clients
        .iter()
        .filter(|c| c.client_id != "pub")
        .map(|c| (c.inflight, c.queued))
        .collect();
    assert_eq!(
        held,
        [(1, 2), (1, 2)],
        "both members filled, none overflowed"
    );
    assert_eq!(h.core.stats(h.now).messages_dropped, 0);
    assert!(h.core.publish_blocker(9, &probe(7)).is_some());
}
