//! The broker state machine on packet values: no sockets, no runtime, time passed in.

use std::num::NonZeroU16;

use super::*;
use crate::codec::{ConnectProperties, SubscribeProperties, TopicFilter, WillProperties};
use crate::store::MemoryStore;

pub(super) struct Harness {
    pub(super) core: Core,
    pub(super) now: Instant,
}

pub(super) fn config() -> BrokerConfig {
    BrokerConfig {
        sys_interval_secs: 0,
        sync_interval_ms: 0,
        rng_seed: Some(7),
        ..BrokerConfig::default()
    }
}

pub(super) fn pid(n: u16) -> PacketId {
    NonZeroU16::new(n).unwrap()
}

pub(super) fn connect_packet(client_id: &str, clean: bool, protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive_secs: 0,
        properties: ConnectProperties::default(),
        client_id: MqttStr::new(client_id).unwrap(),
        will: None,
        username: None,
        password: None,
    }
}

pub(super) fn publish(topic: &str, payload: &str, qos_pid: QosPid, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain,
        topic: TopicName::new(topic).unwrap(),
        properties: PublishProperties::default().into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

pub(super) fn subscribe(id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        properties: SubscribeProperties::default(),
        filters: filters
            .iter()
            .map(|(f, q)| (TopicFilter::new(f).unwrap(), SubscriptionOptions::qos(*q)))
            .collect(),
    })
}

fn will(topic: &str, payload: &str) -> Will {
    Will {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

/// Packets sent to `conn` among `actions`.
pub(super) fn sent(actions: &[Action], conn: ConnId) -> Vec<Packet> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, packet } if *c == conn => Some(packet.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn closed(actions: &[Action], conn: ConnId) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Close { conn: c } if *c == conn))
}

/// (topic, payload, qos, retain, dup, packet id) of each PUBLISH sent to `conn`.
fn publishes(actions: &[Action], conn: ConnId) -> Vec<(String, String, u8, bool, bool, u16)> {
    sent(actions, conn)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.topic.to_string(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
                p.qos().as_u8(),
                p.retain,
                p.dup,
                p.packet_id().map_or(0, |i| i.get()),
            )),
            _ => None,
        })
        .collect()
}

pub(super) fn connack(actions: &[Action], conn: ConnId) -> Option<ConnAck> {
    sent(actions, conn).into_iter().find_map(|p| match p {
        Packet::ConnAck(c) => Some(c),
        _ => None,
    })
}

impl Harness {
    pub(super) fn new(config: BrokerConfig) -> Harness {
        Harness::with_store(config, Box::new(MemoryStore::new()))
    }

    pub(super) fn with_store(config: BrokerConfig, store: Box<dyn Store>) -> Harness {
        let now = Instant::now();
        Harness {
            core: Core::new(config, store, Arc::new(ByteCounters::default()), now),
            now,
        }
    }

    pub(super) fn open(&mut self, conn: ConnId) {
        self.core.opened(conn, format!("peer-{conn}"), self.now);
    }

    pub(super) fn send(&mut self, conn: ConnId, packet: Packet) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.handle(conn, packet, self.now, &mut out);
        self.core.flush_store(self.now, &mut out);
        out
    }

    pub(super) fn connect_with(&mut self, conn: ConnId, connect: Connect) -> Vec<Action> {
        self.open(conn);
        self.send(conn, Packet::Connect(Box::new(connect)))
    }

    /// Connects a 3.1.1 client and returns its session-present flag.
    pub(super) fn connect(&mut self, conn: ConnId, client_id: &str, clean: bool) -> bool {
        let out = self.connect_with(
            conn,
            connect_packet(client_id, clean, ProtocolVersion::V311),
        );
        let ack = connack(&out, conn).expect("CONNACK");
        assert_eq!(ack.reason_code, ReasonCode::Success);
        ack.session_present
    }

    pub(super) fn end(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        self.core
            .ended(conn, EndCause::PeerClosed, self.now, &mut out);
        self.core.flush_store(self.now, &mut out);
        out
    }

    pub(super) fn advance(&mut self, secs: f64) -> Vec<Action> {
        self.now += Duration::from_secs_f64(secs);
        let mut out = Vec::new();
        self.core.on_timer(self.now, &mut out);
        self.core.flush_store(self.now, &mut out);
        out
    }
}

#[test]
fn session_present_follows_clean_session() {
    let mut h = Harness::new(config());
    // [MQTT-3.2.2-3] no stored session yet.
    assert!(!h.connect(1, "c", false));
    h.send(1, Packet::Disconnect(Disconnect::default()));
    // [MQTT-3.2.2-2] stored session resumed.
    assert!(h.connect(2, "c", false));
    h.send(2, Packet::Disconnect(Disconnect::default()));
    // [MQTT-3.2.2-1] clean session: never present, and the old one is gone [MQTT-3.1.2-6].
    assert!(!h.connect(3, "c", true));
    h.send(3, Packet::Disconnect(Disconnect::default()));
    assert!(h.core.state().sessions.is_empty());
    assert!(!h.connect(4, "c", false));
}

#[test]
fn first_packet_must_be_connect_and_only_once() {
    let mut h = Harness::new(config());
    h.open(1);
    let out = h.send(1, Packet::PingReq);
    // [MQTT-3.1.4-1] closed without any CONNACK.
    assert!(sent(&out, 1).is_empty());
    assert!(closed(&out, 1));

    let mut c = connect_packet("w", true, ProtocolVersion::V311);
    c.will = Some(will("wills/w", "gone"));
    h.connect_with(2, c);
    h.connect(3, "watcher", true);
    h.send(3, subscribe(1, &[("wills/#", QoS::AtLeastOnce)]));
    // [MQTT-3.1.0-2] a second CONNECT is a violation: closed, and the will goes out.
    let out = h.send(
        2,
        Packet::Connect(Box::new(connect_packet("w", true, ProtocolVersion::V311))),
    );
    assert!(closed(&out, 2));
    assert_eq!(publishes(&out, 3)[0].1, "gone");
    assert_eq!(h.core.stats(h.now).protocol_errors, 2);
}

#[test]
fn connack_return_codes() {
    let mut h = Harness::new(BrokerConfig {
        allow_anonymous: false,
        ..config()
    });
    // [MQTT-3.1.3-8] empty id with clean session 0: 0x02 and close.
    let out = h.connect_with(1, connect_packet("", false, ProtocolVersion::V311));
    let ack = connack(&out, 1).unwrap();
    assert_eq!(ack.reason_code.to_v311_connack(), Some(2));
    assert!(!ack.session_present);
    assert!(closed(&out, 1));
    // Anonymous refused: 0x05.
    let out = h.connect_with(2, connect_packet("x", true, ProtocolVersion::V311));
    assert_eq!(
        connack(&out, 2).unwrap().reason_code.to_v311_connack(),
        Some(5)
    );
    assert!(closed(&out, 2));
    // Unsupported protocol level reported by the decoder: 0x01 in the 3.1.1 form.
    h.open(3);
    let mut out = Vec::new();
    let error = DecodeError::UnsupportedProtocolVersion { level: 3 };
    h.core.ended(3, EndCause::Decode(error), h.now, &mut out);
    assert_eq!(
        connack(&out, 3).unwrap().reason_code.to_v311_connack(),
        Some(1)
    );
    assert!(closed(&out, 3));

    // Server unavailable when full.
    let mut h = Harness::new(BrokerConfig {
        max_connections: 1,
        ..config()
    });
    h.connect(1, "a", true);
    let out = h.connect_with(2, connect_packet("b", true, ProtocolVersion::V311));
    assert_eq!(
        connack(&out, 2).unwrap().reason_code.to_v311_connack(),
        Some(3)
    );
    // A takeover does not count as a new connection.
    assert!(!h.connect(3, "a", true));
    assert_eq!(h.core.stats(h.now).connections_refused, 1);
}

#[test]
fn empty_client_id_gets_a_seeded_unique_id() {
    let mut h = Harness::new(config());
    h.connect_with(1, connect_packet("", true, ProtocolVersion::V311));
    let mut c = connect_packet("", true, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = Some(0);
    let out = h.connect_with(2, c);
    let assigned = connack(&out, 2)
        .unwrap()
        .properties
        .into_inner()
        .assigned_client_identifier
        .unwrap();
    let ids: Vec<String> = h.core.clients().into_iter().map(|c| c.client_id).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert!(ids.contains(&assigned.to_string()));
    // Same seed, same ids.
    let mut again = Harness::new(config());
    again.connect_with(1, connect_packet("", true, ProtocolVersion::V311));
    assert!(ids.contains(&again.core.clients()[0].client_id));
}

#[test]
fn takeover_closes_the_old_connection_and_publishes_its_will() {
    let mut h = Harness::new(config());
    h.connect(9, "watcher", true);
    h.send(9, subscribe(1, &[("w", QoS::AtMostOnce)]));
    let mut c = connect_packet("dev", false, ProtocolVersion::V311);
    c.will = Some(will("w", "old died"));
    h.connect_with(1, c);
    h.send(1, subscribe(2, &[("t", QoS::AtLeastOnce)]));
    h.open(2);
    let out = h.send(
        2,
        Packet::Connect(Box::new(connect_packet(
            "dev",
            false,
            ProtocolVersion::V311,
        ))),
    );
    assert!(closed(&out, 1));
    assert!(connack(&out, 2).unwrap().session_present);
    assert_eq!(
        publishes(&out, 9),
        [("w".into(), "old died".into(), 0, false, false, 0)]
    );
    // The subscription moved with the session.
    let out = h.send(9, publish("t", "x", QosPid::AtMostOnce, false));
    assert_eq!(publishes(&out, 2).len(), 1);
    assert_eq!(h.core.clients().len(), 2);
}

#[test]
fn keepalive_closes_after_one_and_a_half_periods() {
    let mut h = Harness::new(config());
    h.connect(9, "watcher", true);
    h.send(9, subscribe(1, &[("w", QoS::AtMostOnce)]));
    let mut c = connect_packet("k", true, ProtocolVersion::V311);
    c.keep_alive_secs = 10;
    c.will = Some(will("w", "timeout"));
    h.connect_with(1, c);
    assert!(h.advance(9.0).is_empty());
    assert_eq!(sent(&h.send(1, Packet::PingReq), 1), [Packet::PingResp]);
    // 14.9 s after the PINGREQ: still open.
    assert!(h.advance(14.9).is_empty());
    // [MQTT-3.1.2-24] 15 s of silence: closed as a network failure, will published.
    let out = h.advance(0.1);
    assert!(closed(&out, 1));
    assert_eq!(publishes(&out, 9)[0].1, "timeout");
    assert_eq!(h.core.stats(h.now).keepalive_timeouts, 1);
}

#[test]
fn connect_timeout_closes_silent_sockets() {
    let mut h = Harness::new(config());
    h.open(1);
    assert!(h.advance(9.0).is_empty());
    assert!(closed(&h.advance(1.0), 1));
}

#[test]
fn qos1_and_qos2_flows_through_the_broker() {
    let mut h = Harness::new(config());
    h.connect(1, "pub", true);
    h.connect(2, "sub", true);
    let out = h.send(2, subscribe(5, &[("a/+", QoS::ExactlyOnce)]));
    assert_eq!(
        sent(&out, 2),
        [Packet::SubAck(SubAck {
            packet_id: pid(5),
            properties: Default::default(),
            reason_codes: vec![ReasonCode::GrantedQoS2],
        })]
    );
    // QoS 1 in: PUBACK to the publisher, QoS 1 out with a fresh id.
    let out = h.send(1, publish("a/b", "one", QosPid::AtLeastOnce(pid(7)), false));
    assert_eq!(sent(&out, 1), [Packet::PubAck(Ack::new(pid(7)))]);
    assert_eq!(
        publishes(&out, 2),
        [("a/b".into(), "one".into(), 1, false, false, 1)]
    );
    h.send(2, Packet::PubAck(Ack::new(pid(1))));
    assert!(h.core.state().sessions["sub"].outgoing.is_empty());

    // QoS 2 in, retransmitted with DUP before PUBREL: delivered once [MQTT-4.3.3-2].
    let out = h.send(1, publish("a/b", "two", QosPid::ExactlyOnce(pid(8)), false));
    assert_eq!(sent(&out, 1), [Packet::PubRec(Ack::new(pid(8)))]);
    assert_eq!(
        publishes(&out, 2),
        [("a/b".into(), "two".into(), 2, false, false, 2)]
    );
    let out = h.send(1, publish("a/b", "two", QosPid::ExactlyOnce(pid(8)), false));
    assert_eq!(sent(&out, 1), [Packet::PubRec(Ack::new(pid(8)))]);
    assert!(publishes(&out, 2).is_empty());
    let out = h.send(1, Packet::PubRel(Ack::new(pid(8))));
    assert_eq!(sent(&out, 1), [Packet::PubComp(Ack::new(pid(8)))]);
    assert!(h.core.state().sessions["pub"].incoming_qos2.is_empty());
    // After PUBCOMP the same id is a new message [MQTT-4.3.3-2].
    let out = h.send(
        1,
        publish("a/b", "three", QosPid::ExactlyOnce(pid(8)), false),
    );
    assert_eq!(publishes(&out, 2).len(), 1);

    // QoS 2 out: PUBREC -> PUBREL, PUBCOMP completes.
    let out = h.send(2, Packet::PubRec(Ack::new(pid(2))));
    assert_eq!(sent(&out, 2), [Packet::PubRel(Ack::new(pid(2)))]);
    h.send(2, Packet::PubComp(Ack::new(pid(2))));
    let outgoing: Vec<u16> = h.core.state().sessions["sub"]
        .outgoing
        .iter()
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(outgoing, [3]);
}

#[test]
fn inflight_window_bounds_outgoing_and_keeps_order() {
    let mut h = Harness::new(BrokerConfig {
        max_inflight_messages: 2,
        ..config()
    });
    h.connect(1, "pub", true);
    h.connect(2, "sub", true);
    h.send(2, subscribe(1, &[("t", QoS::AtLeastOnce)]));
    let mut got = Vec::new();
    for i in 0..5 {
        let out = h.send(
            1,
            publish("t", &i.to_string(), QosPid::AtLeastOnce(pid(i + 1)), false),
        );
        got.extend(publishes(&out, 2));
    }
    assert_eq!(got.len(), 2);
    assert_eq!(h.core.state().sessions["sub"].queued.len(), 3);
    // Each PUBACK frees one slot; order is publish order [MQTT-4.6.0-6].
    for id in 1..=5 {
        let out = h.send(2, Packet::PubAck(Ack::new(pid(id))));
        got.extend(publishes(&out, 2));
    }
    let payloads: Vec<String> = got.iter().map(|p| p.1.clone()).collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
}

#[test]
fn offline_queue_resume_and_overflow_drops_oldest() {
    let store = Box::new(MemoryStore::new());
    let mut h = Harness::with_store(
        BrokerConfig {
            max_queued_messages: 3,
            ..config()
        },
        store,
    );
    h.connect(1, "pub", true);
    h.connect(2, "sub", false);
    h.send(2, subscribe(1, &[("t", QoS::ExactlyOnce)]));
    // One message in flight, unacknowledged, when the subscriber drops.
    h.send(1, publish("t", "m0", QosPid::AtLeastOnce(pid(1)), false));
    h.end(2);
    for i in 1..=5 {
        h.send(
            1,
            publish(
                "t",
                &format!("m{i}"),
                QosPid::ExactlyOnce(pid(10 + i)),
                false,
            ),
        );
        h.send(1, Packet::PubRel(Ack::new(pid(10 + i))));
    }
    // QoS 0 is not queued for an offline client by default.
    h.send(1, publish("t", "q0", QosPid::AtMostOnce, false));
    let stats = h.core.stats(h.now);
    assert_eq!(stats.dropped_queue_full, 2);
    assert_eq!(stats.messages_queued, 3);
    // The mirror and the store agree on the persistent session.
    assert_eq!(
        h.core.state().sessions["sub"],
        h.core.store().state().sessions["sub"]
    );
    // [MQTT-4.4.0-1] resume: the unacknowledged one again with DUP, then the queue.
    h.open(3);
    let out = h.send(
        3,
        Packet::Connect(Box::new(connect_packet(
            "sub",
            false,
            ProtocolVersion::V311,
        ))),
    );
    assert!(connack(&out, 3).unwrap().session_present);
    assert_eq!(
        publishes(&out, 3),
        [
            ("t".into(), "m0".into(), 1, false, true, 1),
            ("t".into(), "m3".into(), 2, false, false, 2),
            ("t".into(), "m4".into(), 2, false, false, 3),
            ("t".into(), "m5".into(), 2, false, false, 4),
        ]
    );
    // A PUBREL waiting for PUBCOMP is resent on the next resume.
    h.send(3, Packet::PubRec(Ack::new(pid(2))));
    h.end(3);
    h.open(4);
    let out = h.send(
        4,
        Packet::Connect(Box::new(connect_packet(
            "sub",
            false,
            ProtocolVersion::V311,
        ))),
    );
    let resent = sent(&out, 4);
    assert!(resent.contains(&Packet::PubRel(Ack::new(pid(2)))));
    assert_eq!(publishes(&out, 4).iter().filter(|p| p.4).count(), 3);
}

#[test]
fn retained_messages() {
    let mut h = Harness::new(config());
    h.connect(1, "pub", true);
    h.send(1, publish("r/a", "A", QosPid::AtLeastOnce(pid(1)), true));
    h.send(1, publish("r/b", "B", QosPid::AtMostOnce, true));
    h.send(1, publish("r/b", "B2", QosPid::AtMostOnce, true));
    h.send(1, publish("r/c", "C", QosPid::AtMostOnce, true));
    h.send(1, publish("r/c", "", QosPid::AtMostOnce, true));
    // RETAIN 0 does not disturb the retained one [MQTT-3.3.1-12].
    h.send(1, publish("r/a", "live", QosPid::AtMostOnce, false));
    h.connect(2, "sub", true);
    let out = h.send(2, subscribe(1, &[("r/#", QoS::AtMostOnce)]));
    assert!(
        matches!(sent(&out, 2)[0], Packet::SubAck(_)),
        "SUBACK first"
    );
    assert_eq!(
        publishes(&out, 2),
        [
            ("r/a".into(), "A".into(), 0, true, false, 0),
            ("r/b".into(), "B2".into(), 0, true, false, 0),
        ]
    );
    // Live forwarding clears RETAIN [MQTT-3.3.1-9].
    let out = h.send(1, publish("r/a", "A2", QosPid::AtMostOnce, true));
    assert_eq!(
        publishes(&out, 2),
        [("r/a".into(), "A2".into(), 0, false, false, 0)]
    );
    // Retained messages survive in the store, also after the sessions end [MQTT-3.1.2-7].
    h.end(1);
    h.end(2);
    assert_eq!(h.core.store().state().retained.len(), 2);
}

#[test]
fn dollar_topics_and_overlapping_subscriptions() {
    let mut h = Harness::new(config());
    h.connect(1, "pub", true);
    h.connect(2, "sub", true);
    h.send(
        2,
        subscribe(
            1,
            &[
                ("#", QoS::AtMostOnce),
                ("a/#", QoS::ExactlyOnce),
                ("a/b", QoS::AtLeastOnce),
            ],
        ),
    );
    // One copy at the highest granted QoS.
    let out = h.send(1, publish("a/b", "x", QosPid::ExactlyOnce(pid(1)), false));
    assert_eq!(
        publishes(&out, 2),
        [("a/b".into(), "x".into(), 2, false, false, 1)]
    );
    // Clients may not publish into `$` topics: acknowledged, dropped, counted.
    let out = h.send(
        1,
        publish("$SYS/fake", "x", QosPid::AtLeastOnce(pid(2)), false),
    );
    assert_eq!(sent(&out, 1), [Packet::PubAck(Ack::new(pid(2)))]);
    assert!(publishes(&out, 2).is_empty());
    assert_eq!(h.core.stats(h.now).dropped_not_authorized, 1);
    // Unsubscribe is literal and always answered.
    let out = h.send(
        2,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            user_properties: vec![],
            filters: vec![
                TopicFilter::new("a/#").unwrap(),
                TopicFilter::new("a/+").unwrap(),
            ],
        }),
    );
    assert!(
        matches!(&sent(&out, 2)[0], Packet::UnsubAck(u) if u.packet_id == pid(3) && u.reason_codes.is_empty())
    );
    let out = h.send(1, publish("a/b", "y", QosPid::ExactlyOnce(pid(4)), false));
    assert_eq!(publishes(&out, 2)[0].2, 1);
}

#[test]
fn sys_topics_are_published_and_not_matched_by_leading_wildcards() {
    let mut h = Harness::new(BrokerConfig {
        sys_interval_secs: 5,
        ..config()
    });
    h.connect(1, "all", true);
    h.connect(2, "sys", true);
    h.send(
        1,
        subscribe(
            1,
            &[("#", QoS::AtMostOnce), ("+/broker/uptime", QoS::AtMostOnce)],
        ),
    );
    h.send(
        2,
        subscribe(1, &[("$SYS/broker/clients/connected", QoS::AtMostOnce)]),
    );
    let out = h.advance(5.0);
    assert!(publishes(&out, 1).is_empty(), "[MQTT-4.7.2-1]");
    assert_eq!(
        publishes(&out, 2),
        [(
            "$SYS/broker/clients/connected".into(),
            "2".into(),
            0,
            false,
            false,
            0
        )]
    );
    // A later subscriber gets the last value as a retained message.
    let out = h.send(1, subscribe(2, &[("$SYS/broker/version", QoS::AtMostOnce)]));
    assert_eq!(publishes(&out, 1).len(), 1);
    assert!(publishes(&out, 1)[0].3);
}

#[test]
fn will_is_discarded_on_disconnect_and_published_on_network_loss() {
    let mut h = Harness::new(config());
    h.connect(9, "watcher", true);
    h.send(9, subscribe(1, &[("w/#", QoS::AtLeastOnce)]));
    let mut c = connect_packet("a", false, ProtocolVersion::V311);
    c.will = Some(Will {
        retain: true,
        ..will("w/a", "a died")
    });
    h.connect_with(1, c.clone());
    let out = h.send(1, Packet::Disconnect(Disconnect::default()));
    assert!(publishes(&out, 9).is_empty(), "[MQTT-3.14.4-3]");
    assert!(h.core.state().sessions["a"].will.is_none());
    h.connect_with(2, c);
    assert!(
        h.core.store().state().sessions["a"].will.is_some(),
        "kept for a crash"
    );
    let out = h.end(2);
    assert_eq!(
        publishes(&out, 9),
        [("w/a".into(), "a died".into(), 1, false, false, 1)]
    );
    // Will Retain 1: retained [MQTT-3.1.2-17].
    assert!(h
        .core
        .state()
        .retained
        .contains_key(&TopicName::new("w/a").unwrap()));
    assert!(h.core.store().state().sessions["a"].will.is_none());
}

#[test]
fn restart_from_the_store_keeps_sessions_queues_and_wills() {
    let mut h = Harness::new(config());
    h.connect(1, "sub", false);
    h.send(
        1,
        subscribe(1, &[("t", QoS::AtLeastOnce), ("w", QoS::AtLeastOnce)]),
    );
    h.end(1);
    h.connect(2, "pub", true);
    h.send(2, publish("t", "kept", QosPid::AtLeastOnce(pid(1)), false));
    let mut c = connect_packet("dying", false, ProtocolVersion::V311);
    c.will = Some(will("w", "lost in crash"));
    h.connect_with(3, c);
    // The broker "crashes": only the store is left.
    let state = h.core.store().state().clone();
    assert!(
        !state.sessions.contains_key("pub"),
        "clean sessions are not stored"
    );
    let mut restored = MemoryStore::new();
    // MemoryStore has no constructor from a state; replay the equivalent ops.
    for (id, s) in &state.sessions {
        restored
            .apply(StoreOp::SessionCreated {
                client_id: id.clone(),
                expiry_interval_secs: s.expiry_interval_secs,
                protocol_level: 4,
            })
            .unwrap();
        for (f, sub) in &s.subscriptions {
            restored
                .apply(StoreOp::Subscribed {
                    client_id: id.clone(),
                    filter: f.clone(),
                    subscription: sub.clone(),
                })
                .unwrap();
        }
        for m in &s.queued {
            restored
                .apply(StoreOp::Queued {
                    client_id: id.clone(),
                    message: m.clone(),
                })
                .unwrap();
        }
        if let Some(w) = &s.will {
            restored
                .apply(StoreOp::WillStored {
                    client_id: id.clone(),
                    will: (**w).clone(),
                })
                .unwrap();
        }
        if let Some(owner) = &s.owner {
            restored
                .apply(StoreOp::SessionOwner {
                    client_id: id.clone(),
                    owner: owner.username().map(str::to_string),
                })
                .unwrap();
        }
    }
    assert_eq!(restored.state(), &state);
    let mut h = Harness::with_store(config(), Box::new(restored));
    assert!(h.connect(1, "sub", false));
    h.open(5);
    let out = h.send(
        5,
        Packet::Connect(Box::new(connect_packet(
            "sub",
            false,
            ProtocolVersion::V311,
        ))),
    );
    let got: Vec<String> = publishes(&out, 5).into_iter().map(|p| p.1).collect();
    assert_eq!(got, ["kept", "lost in crash"]);
}

#[test]
fn v5_session_expiry_receive_maximum_and_reason_codes() {
    let mut h = Harness::new(BrokerConfig {
        max_inflight_messages: 10,
        // 0x9E where shared subscriptions are off (tests_shared.rs has them on).
        shared_subscriptions: false,
        ..config()
    });
    let mut c = connect_packet("v5", true, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = Some(60);
    c.properties.receive_maximum = NonZeroU16::new(1);
    let out = h.connect_with(1, c.clone());
    assert!(matches!(
        out[0],
        Action::SetProtocol {
            version: ProtocolVersion::V5,
            ..
        }
    ));
    let out = h.send(
        1,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: SubscribeProperties {
                subscription_identifier: std::num::NonZeroU32::new(42),
                user_properties: vec![],
            },
            filters: vec![
                (
                    TopicFilter::new("t").unwrap(),
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                ),
                (
                    TopicFilter::new("$share/g/t").unwrap(),
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                ),
            ],
        }),
    );
    assert!(matches!(&sent(&out, 1)[0], Packet::SubAck(s)
        if s.reason_codes == [ReasonCode::GrantedQoS1, ReasonCode::SharedSubscriptionsNotSupported]));
    h.connect(2, "pub", true);
    let out = h.send(2, publish("t", "a", QosPid::AtLeastOnce(pid(1)), false));
    match &sent(&out, 1)[0] {
        Packet::Publish(p) => assert_eq!(
            p.properties.subscription_identifiers,
            [std::num::NonZeroU32::new(42).unwrap()]
        ),
        other => panic!("{other:?}"),
    }
    // Receive Maximum 1: the second waits.
    let out = h.send(2, publish("t", "b", QosPid::AtLeastOnce(pid(2)), false));
    assert!(publishes(&out, 1).is_empty());
    // Unknown PUBREL id: PUBCOMP 0x92.
    let out = h.send(1, Packet::PubRel(Ack::new(pid(9))));
    assert!(
        matches!(&sent(&out, 1)[0], Packet::PubComp(a) if a.reason_code == ReasonCode::PacketIdentifierNotFound)
    );
    // Session expiry 60 s: kept at 59 s, gone at 60 s.
    h.end(1);
    h.advance(59.0);
    assert!(h.core.state().sessions.contains_key("v5"));
    h.advance(1.0);
    assert!(!h.core.state().sessions.contains_key("v5"));
    // Raising the expiry on DISCONNECT after CONNECT said 0 is a protocol error.
    let mut c = connect_packet("z", true, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = None;
    h.connect_with(3, c);
    let out = h.send(
        3,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::Success,
            properties: crate::codec::DisconnectProperties {
                session_expiry_interval_secs: Some(10),
                ..Default::default()
            }
            .into(),
        }),
    );
    assert!(
        matches!(&sent(&out, 3)[0], Packet::Disconnect(d) if d.reason_code == ReasonCode::ProtocolError)
    );
    assert!(closed(&out, 3));
}

#[test]
fn kick_and_shutdown() {
    let mut h = Harness::new(config());
    h.connect(9, "watcher", true);
    h.send(9, subscribe(1, &[("w", QoS::AtMostOnce)]));
    let mut c = connect_packet("k", true, ProtocolVersion::V311);
    c.will = Some(will("w", "kicked"));
    h.connect_with(1, c);
    let mut out = Vec::new();
    assert!(h.core.kick("k", h.now, &mut out));
    assert!(closed(&out, 1));
    assert_eq!(publishes(&out, 9)[0].1, "kicked");
    assert!(!h.core.kick("k", h.now, &mut out));
    let mut out = Vec::new();
    h.core.shutdown(h.now, &mut out);
    assert!(closed(&out, 9));
    assert!(h.core.clients().is_empty());
}

#[test]
fn slow_consumer_ends_with_will_and_keeps_inflight() {
    let mut h = Harness::new(config());
    h.connect(9, "watcher", true);
    h.send(9, subscribe(1, &[("w", QoS::AtMostOnce)]));
    let mut c = connect_packet("slow", false, ProtocolVersion::V311);
    c.will = Some(will("w", "slow"));
    h.connect_with(1, c);
    h.send(1, subscribe(1, &[("t", QoS::AtLeastOnce)]));
    h.send(9, publish("t", "x", QosPid::AtLeastOnce(pid(1)), false));
    let mut out = Vec::new();
    h.core.ended(1, EndCause::SlowConsumer, h.now, &mut out);
    assert_eq!(publishes(&out, 9)[0].1, "slow");
    assert_eq!(h.core.state().sessions["slow"].outgoing.len(), 1);
    assert_eq!(h.core.stats(h.now).slow_consumers, 1);
}

#[test]
fn store_ops_are_written_as_one_batch_before_actions_run() {
    let mut h = Harness::new(config());
    h.connect(1, "pub", true);
    h.connect(2, "sub", false);
    h.send(2, subscribe(1, &[("t", QoS::AtLeastOnce)]));
    h.end(2);
    let mut out = Vec::new();
    h.core.handle(
        1,
        publish("t", "x", QosPid::AtLeastOnce(pid(1)), false),
        h.now,
        &mut out,
    );
    // The PUBACK is among the actions, and the op it depends on waits for `flush_store`,
    // which the server loop runs before it carries out any action.
    assert_eq!(sent(&out, 1), [Packet::PubAck(Ack::new(pid(1)))]);
    assert_eq!(h.core.pending_store_ops(), 1);
    assert!(h.core.store().state().sessions["sub"].queued.is_empty());
    h.core.flush_store(h.now, &mut out);
    assert_eq!(h.core.pending_store_ops(), 0);
    assert_eq!(h.core.store().state().sessions["sub"].queued.len(), 1);
    // Clean sessions never reach the store.
    assert!(!h.core.store().state().sessions.contains_key("pub"));
}

#[test]
fn incoming_qos2_state_is_bounded() {
    let mut h = Harness::new(BrokerConfig {
        max_incoming_qos2: 2,
        ..config()
    });
    h.connect(1, "pub", true);
    h.send(1, publish("t", "a", QosPid::ExactlyOnce(pid(1)), false));
    h.send(1, publish("t", "b", QosPid::ExactlyOnce(pid(2)), false));
    // A retransmission of a known id is fine at the limit.
    let out = h.send(1, publish("t", "b", QosPid::ExactlyOnce(pid(2)), false));
    assert_eq!(sent(&out, 1), [Packet::PubRec(Ack::new(pid(2)))]);
    let out = h.send(1, publish("t", "c", QosPid::ExactlyOnce(pid(3)), false));
    assert!(closed(&out, 1));
    // 5.0 clients are told the limit.
    let out = h.connect_with(2, connect_packet("v5", true, ProtocolVersion::V5));
    assert_eq!(
        connack(&out, 2).unwrap().properties.receive_maximum,
        NonZeroU16::new(2)
    );
}

/// Seeded random operation sequences (connect, publish, acks, subscribe, disconnect, network
/// loss, timers, kicks, restarts from the store) never panic the core and keep its bounds and
/// its store in step with its memory.
#[test]
fn random_operations_keep_invariants() {
    use rand::{Rng, SeedableRng};
    let topics = ["a", "a/b", "a/c", "$SYS/x", "b"];
    let filters = ["a/#", "+/b", "#", "a", "b", "$SYS/#"];
    for seed in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let config = BrokerConfig {
            max_inflight_messages: 3,
            max_queued_messages: 4,
            max_incoming_qos2: 3,
            max_connections: 3,
            sys_interval_secs: 7,
            // Messages here are 2 to 9 bytes (a will: "SYS/x" and "will"): the byte bounds
            // bite as often as the counts.
            max_queued_bytes: 14,
            max_inflight_bytes: 10,
            ..config()
        };
        let mut h = Harness::new(config.clone());
        let mut next_conn = 1;
        let mut open: Vec<ConnId> = Vec::new();
        for step in 0..400 {
            let qos = QoS::from_u8(rng.random_range(0..3)).unwrap();
            let id = pid(rng.random_range(1..6));
            let topic = topics[rng.random_range(0..topics.len())];
            let conn = if open.is_empty() || rng.random_bool(0.1) {
                let c = next_conn;
                next_conn += 1;
                h.open(c);
                open.push(c);
                c
            } else {
                open[rng.random_range(0..open.len())]
            };
            let packet = match rng.random_range(0..14) {
                0 | 1 => {
                    let mut c = connect_packet(
                        ["x", "y", "z", ""][rng.random_range(0..4)],
                        rng.random_bool(0.5),
                        if rng.random_bool(0.7) {
                            ProtocolVersion::V311
                        } else {
                            ProtocolVersion::V5
                        },
                    );
                    c.keep_alive_secs = rng.random_range(0..4);
                    c.properties.session_expiry_interval_secs =
                        [None, Some(0), Some(5), Some(u32::MAX)][rng.random_range(0..4)];
                    if rng.random_bool(0.3) {
                        c.will = Some(will(topic.trim_start_matches('$'), "will"));
                    }
                    Packet::Connect(Box::new(c))
                }
                2..=4 => publish(
                    topic,
                    &step.to_string(),
                    QosPid::new(qos, Some(id)).unwrap(),
                    rng.random_bool(0.2),
                ),
                // Acknowledgements name the id the broker is waiting for on this connection
                // more often than not (random ids alone almost never complete a flow).
                5 | 6 | 8 => {
                    let owed = h
                        .core
                        .online(conn)
                        .and_then(|o| h.core.session(o.sid))
                        .and_then(|s| s.stored.outgoing.front())
                        .and_then(|(id, _)| PacketId::new(*id))
                        .filter(|_| rng.random_bool(0.8))
                        .unwrap_or(id);
                    match rng.random_range(0..3) {
                        0 => Packet::PubAck(Ack::new(owed)),
                        1 => Packet::PubRec(Ack::new(owed)),
                        _ => Packet::PubComp(Ack::new(owed)),
                    }
                }
                7 => Packet::PubRel(Ack::new(id)),
                9 => subscribe(1, &[(filters[rng.random_range(0..filters.len())], qos)]),
                10 => Packet::Unsubscribe(Unsubscribe {
                    packet_id: id,
                    user_properties: vec![],
                    filters: vec![
                        TopicFilter::new(filters[rng.random_range(0..filters.len())]).unwrap(),
                    ],
                }),
                11 => Packet::PingReq,
                12 => Packet::Disconnect(Disconnect::default()),
                _ => Packet::SubAck(SubAck {
                    packet_id: id,
                    properties: Default::default(),
                    reason_codes: vec![ReasonCode::Success],
                }),
            };
            let out = match rng.random_range(0..20) {
                0 => h.end(conn),
                1 => h.advance(rng.random_range(0.0..4.0)),
                2 => {
                    let mut out = Vec::new();
                    h.core
                        .kick(["x", "y", "z"][rng.random_range(0..3)], h.now, &mut out);
                    h.core.flush_store(h.now, &mut out);
                    out
                }
                3 => {
                    // Restart: only the store survives.
                    let mut restored = MemoryStore::new();
                    let state = h.core.store().state().clone();
                    for (client_id, s) in &state.sessions {
                        let c = client_id.clone();
                        let _ = restored.apply(StoreOp::SessionCreated {
                            client_id: c.clone(),
                            expiry_interval_secs: s.expiry_interval_secs,
                            protocol_level: s.protocol_level,
                        });
                        for (f, sub) in &s.subscriptions {
                            let _ = restored.apply(StoreOp::Subscribed {
                                client_id: c.clone(),
                                filter: f.clone(),
                                subscription: sub.clone(),
                            });
                        }
                        for m in &s.queued {
                            let _ = restored.apply(StoreOp::Queued {
                                client_id: c.clone(),
                                message: m.clone(),
                            });
                        }
                    }
                    for m in state.retained.values() {
                        let _ = restored.apply(StoreOp::RetainedSet { message: m.clone() });
                    }
                    h = Harness::with_store(config.clone(), Box::new(restored));
                    open.clear();
                    Vec::new()
                }
                _ => h.send(conn, packet),
            };
            for action in &out {
                if let Action::Close { conn } = action {
                    open.retain(|c| c != conn);
                }
            }
            // Invariants.
            h.core.check_byte_counts();
            let state = h.core.state();
            for (client_id, s) in &state.sessions {
                assert!(s.outgoing.len() <= 3, "seed {seed} step {step}: window");
                assert!(s.queued.len() <= 4, "seed {seed} step {step}: queue");
                assert!(s.incoming_qos2.len() <= 3, "seed {seed} step {step}: qos2");
                // A queue may pass its byte bound by one message (9 bytes at most here), the
                // window by none unless it holds one message alone.
                let queued: usize = s.queued.iter().map(message_bytes).sum();
                assert!(
                    queued < 14 + 9,
                    "seed {seed} step {step}: queued bytes {queued}"
                );
                let inflight: Vec<usize> = s
                    .outgoing
                    .iter()
                    .filter_map(|(_, o)| match o {
                        OutgoingState::Publish(m) => Some(message_bytes(m)),
                        OutgoingState::PubRel => None,
                    })
                    .collect();
                assert!(
                    inflight.len() <= 1 || inflight.iter().sum::<usize>() <= 10,
                    "seed {seed} step {step}: in-flight bytes {inflight:?}"
                );
                if let Some(stored) = h.core.store().state().sessions.get(client_id) {
                    assert_eq!(
                        stored, s,
                        "seed {seed} step {step}: store and memory differ"
                    );
                }
            }
            assert!(
                h.core.clients().len() <= 3,
                "seed {seed} step {step}: max_connections"
            );
            assert_eq!(state.retained, h.core.store().state().retained);
            for a in &out {
                if let Action::Send {
                    packet: Packet::Publish(p),
                    ..
                } = a
                {
                    assert!(!(p.dup && p.qos() == QoS::AtMostOnce), "[MQTT-3.3.1-2]");
                }
            }
        }
    }
}

#[test]
fn v5_will_delay_waits_and_a_reconnect_cancels_it() {
    let mut h = Harness::new(config());
    h.connect(9, "watcher", true);
    h.send(9, subscribe(1, &[("w", QoS::AtMostOnce)]));
    let mut c = connect_packet("d", true, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = Some(100);
    c.will = Some(Will {
        properties: WillProperties {
            will_delay_interval_secs: Some(10),
            ..WillProperties::default()
        },
        ..will("w", "delayed")
    });
    h.connect_with(1, c.clone());
    assert!(publishes(&h.end(1), 9).is_empty());
    assert!(publishes(&h.advance(9.9), 9).is_empty());
    assert_eq!(publishes(&h.advance(0.1), 9)[0].1, "delayed");
    // Reconnecting within the delay cancels the will.
    h.connect_with(2, c.clone());
    h.end(2);
    let mut again = c.clone();
    again.clean_start = false;
    h.connect_with(3, again);
    assert!(publishes(&h.advance(20.0), 9).is_empty());
    // A session that ends before the delay publishes the will when it ends.
    let mut short = c;
    short.properties.session_expiry_interval_secs = Some(3);
    h.send(
        3,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::DisconnectWithWillMessage,
            properties: Default::default(),
        }),
    );
    h.connect_with(4, short);
    h.end(4);
    assert_eq!(publishes(&h.advance(3.0), 9)[0].1, "delayed");
}

fn as_publish(packet: &Packet) -> &Publish {
    match packet {
        Packet::Publish(p) => p,
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

#[test]
fn publish_blocker_names_a_full_online_queue_and_only_for_qos_1_and_2() {
    let mut h = Harness::new(BrokerConfig {
        max_inflight_messages: 1,
        max_queued_messages: 2,
        ..config()
    });
    h.connect(1, "pub", true);
    h.connect(2, "sub", false);
    h.connect(3, "other", true);
    h.send(2, subscribe(1, &[("t/#", QoS::AtLeastOnce)]));
    h.send(3, subscribe(1, &[("u", QoS::AtLeastOnce)]));
    // Window 1 + queue 2: three messages are taken without blocking anyone.
    for i in 1..=3 {
        let p = publish("t/a", "x", QosPid::AtLeastOnce(pid(i)), false);
        assert_eq!(h.core.publish_blocker(1, as_publish(&p)), None);
        h.send(1, p);
    }
    assert_eq!(h.core.state().sessions["sub"].queued.len(), 2);
    let fourth = publish("t/a", "x", QosPid::AtLeastOnce(pid(4)), false);
    assert_eq!(
        h.core.publish_blocker(1, as_publish(&fourth)).as_deref(),
        Some("sub")
    );
    // QoS 0, other topics, and the subscriber publishing to itself are never held.
    let qos0 = publish("t/a", "x", QosPid::AtMostOnce, false);
    assert_eq!(h.core.publish_blocker(1, as_publish(&qos0)), None);
    let elsewhere = publish("u", "x", QosPid::AtLeastOnce(pid(5)), false);
    assert_eq!(h.core.publish_blocker(1, as_publish(&elsewhere)), None);
    let own = publish("t/own", "x", QosPid::AtLeastOnce(pid(6)), false);
    assert_eq!(h.core.publish_blocker(2, as_publish(&own)), None);
    // A PUBACK makes room: the fourth may go, and nothing was dropped.
    h.send(2, Packet::PubAck(Ack::new(pid(1))));
    assert_eq!(h.core.publish_blocker(1, as_publish(&fourth)), None);
    h.send(1, fourth.clone());
    assert_eq!(h.core.stats(h.now).messages_dropped, 0);
    // Offline, the (persistent) session takes the overflow policy instead of holding
    // publishers.
    assert!(h.core.publish_blocker(1, as_publish(&fourth)).is_some());
    h.end(2);
    assert_eq!(h.core.state().sessions["sub"].queued.len(), 2);
    assert_eq!(h.core.publish_blocker(1, as_publish(&fourth)), None);
}

#[test]
fn a_paused_connection_is_exempt_from_keepalive() {
    let mut h = Harness::new(config());
    let mut c = connect_packet("pub", true, ProtocolVersion::V311);
    c.keep_alive_secs = 10;
    h.connect_with(1, c);
    h.core.set_paused(1, true, h.now);
    assert!(
        !closed(&h.advance(40.0), 1),
        "paused: not read, not timed out"
    );
    h.core.set_paused(1, false, h.now);
    assert!(
        !closed(&h.advance(14.0), 1),
        "the period restarts on resume"
    );
    assert!(closed(&h.advance(2.0), 1));
}

/// `alloc_packet_id` against a plain search: over any run of sends and out-of-order
/// acknowledgements (ids wrap round 65535 many times, some messages stay unacknowledged for
/// long), every id it gives is free, and while it says the ids are in order they are.
mod packet_ids {
    use proptest::prelude::*;

    use super::super::{alloc_packet_id, ids_in_order};
    use crate::store::{StoredMessage, StoredSession};

    fn message() -> StoredMessage {
        StoredMessage {
            topic: crate::codec::TopicName::from_static("t"),
            payload: bytes::Bytes::new(),
            qos: crate::codec::QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        }
    }

    /// Out of order (as after ids wrapped round to a stuck message), the search walks up
    /// from `next_packet_id` past every id in flight to the next free one.
    #[test]
    fn the_search_takes_the_next_free_id_up_from_next_packet_id() {
        let mut session = StoredSession::new(None, 4);
        for id in [5u16, 1, 6] {
            session.send_in_flight(crate::codec::PacketId::new(id).unwrap(), message());
        }
        session.next_packet_id = 5;
        let (id, _) = alloc_packet_id(&session, false);
        assert_eq!(id.get(), 7);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn ids_are_free_and_order_is_told_right(
            start in 1u16..=u16::MAX,
            // (send how many, then acknowledge which entry of the window, as a fraction)
            steps in proptest::collection::vec((1usize..40, 0.0f64..1.0), 150..300),
            stuck in any::<bool>(),
        ) {
            let mut session = StoredSession::new(None, 4);
            session.next_packet_id = start;
            let mut ordered = true;
            for (sends, which) in steps {
                for _ in 0..sends {
                    if session.outgoing.len() >= 128 {
                        break;
                    }
                    let (id, now_ordered) = alloc_packet_id(&session, ordered);
                    prop_assert!(
                        !session.outgoing.iter().any(|(i, _)| *i == id.get()),
                        "id {} is in flight", id
                    );
                    session.send_in_flight(id, message());
                    ordered = now_ordered;
                    if ordered {
                        prop_assert!(ids_in_order(&session));
                    }
                }
                // Acknowledge one entry, never the front when it is stuck (so ids wrap
                // round to it).
                let len = session.outgoing.len();
                let first = usize::from(stuck && len > 1);
                let at = first + ((len - first) as f64 * which) as usize;
                if at < len {
                    let id = session.outgoing[at].0;
                    session.complete_outgoing(crate::codec::PacketId::new(id).unwrap());
                }
                // Long runs of sends and acknowledgements: a few hundred ids at a time.
                for _ in 0..300 {
                    if session.outgoing.len() <= 1 {
                        break;
                    }
                    let at = usize::from(stuck);
                    let id = session.outgoing[at.min(session.outgoing.len() - 1)].0;
                    session.complete_outgoing(crate::codec::PacketId::new(id).unwrap());
                    let (id, now_ordered) = alloc_packet_id(&session, ordered);
                    prop_assert!(!session.outgoing.iter().any(|(i, _)| *i == id.get()));
                    session.send_in_flight(id, message());
                    ordered = now_ordered;
                    if ordered {
                        prop_assert!(ids_in_order(&session));
                    }
                }
            }
        }
    }
}
