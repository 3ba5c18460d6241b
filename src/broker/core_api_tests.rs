//! The broker core through its public API only (`Core::new`, `opened`, `handle`,
//! `flush_store`, `ended`, `on_timer`, `clients`, `stats`, …: what the server loop and the
//! simulator call), for behaviour the scenario library cannot see: the admin handle's client
//! list, the counters behind `$SYS`, message expiry of a will. Each test here catches a mutant
//! the mutation harness found surviving (docs/mutation.md names the test beside the mutant);
//! they use no private item of `core.rs`, so they hold while its insides move.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::{Duration, Instant};

use super::stats::ByteCounters;
use super::{Action, BrokerConfig, ConnId, Core, EndCause, Stats};
use crate::codec::{
    Connect, ConnectProperties, DecodeError, Disconnect, DisconnectProperties, MqttStr, Packet,
    ProtocolVersion, Publish, PublishProperties, QoS, QosPid, ReasonCode, Subscribe,
    SubscribeProperties, SubscriptionOptions, TopicFilter, TopicName, Will, WillProperties,
};
use crate::store::MemoryStore;

fn config() -> BrokerConfig {
    BrokerConfig {
        sys_interval_secs: 0,
        sync_interval_ms: 0,
        rng_seed: Some(7),
        ..BrokerConfig::default()
    }
}

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

/// A CONNECT with keepalive 30 s; 5.0 ones ask for a session that outlives the connection by
/// 300 s unless `clean`.
fn connect_packet(client_id: &str, clean: bool, protocol: ProtocolVersion) -> Connect {
    let mut properties = ConnectProperties::default();
    if protocol == ProtocolVersion::V5 && !clean {
        properties.session_expiry_interval_secs = Some(300);
    }
    Connect {
        protocol,
        clean_start: clean,
        keep_alive_secs: 30,
        properties,
        client_id: MqttStr::new(client_id).unwrap(),
        will: None,
        username: None,
        password: None,
    }
}

struct Broker {
    core: Core,
    now: Instant,
}

impl Broker {
    fn new(config: BrokerConfig) -> Broker {
        let now = Instant::now();
        Broker {
            core: Core::new(
                config,
                Box::new(MemoryStore::new()),
                Arc::new(ByteCounters::default()),
                now,
            ),
            now,
        }
    }

    fn send(&mut self, conn: ConnId, packet: Packet) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.handle(conn, packet, self.now, &mut out);
        self.core.flush_store(self.now, &mut out);
        out
    }

    /// Opens `conn` and sends `connect` on it; asserts the CONNACK accepted it.
    fn connect_with(&mut self, conn: ConnId, connect: Connect) -> Vec<Action> {
        self.core.opened(conn, format!("peer-{conn}"), self.now);
        let out = self.send(conn, Packet::Connect(Box::new(connect)));
        let accepted = out.iter().any(|a| {
            matches!(a, Action::Send { conn: c, packet: Packet::ConnAck(ack) }
                if *c == conn && ack.reason_code == ReasonCode::Success)
        });
        assert!(accepted, "CONNACK accepting conn {conn}: {out:?}");
        out
    }

    fn connect(
        &mut self,
        conn: ConnId,
        client_id: &str,
        clean: bool,
        protocol: ProtocolVersion,
    ) -> Vec<Action> {
        self.connect_with(conn, connect_packet(client_id, clean, protocol))
    }

    fn end(&mut self, conn: ConnId, cause: EndCause) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.ended(conn, cause, self.now, &mut out);
        self.core.flush_store(self.now, &mut out);
        out
    }

    fn subscribe(&mut self, conn: ConnId, id: u16, filter: &str, qos: QoS) -> Vec<Action> {
        self.send(
            conn,
            Packet::Subscribe(Subscribe {
                packet_id: pid(id),
                properties: SubscribeProperties::default(),
                filters: vec![(
                    TopicFilter::new(filter).unwrap(),
                    SubscriptionOptions::qos(qos),
                )],
            }),
        )
    }

    fn publish(
        &mut self,
        conn: ConnId,
        topic: &str,
        qos_pid: QosPid,
        payload: &str,
    ) -> Vec<Action> {
        self.send(
            conn,
            Packet::Publish(Publish {
                dup: false,
                qos_pid,
                retain: false,
                topic: TopicName::new(topic).unwrap(),
                properties: PublishProperties::default().into(),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
            }),
        )
    }

    fn advance(&mut self, secs: u64) -> Vec<Action> {
        self.now += Duration::from_secs(secs);
        let mut out = Vec::new();
        self.core.on_timer(self.now, &mut out);
        self.core.flush_store(self.now, &mut out);
        out
    }

    fn stats(&self) -> Stats {
        self.core.stats(self.now)
    }
}

/// The PUBLISH packets `actions` send to `conn`.
fn publishes_to(actions: &[Action], conn: ConnId) -> Vec<Publish> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn: c,
                packet: Packet::Publish(p),
            } if *c == conn => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// `{:?}` of a core names its session and connection counts (what a log line shows of it).
#[test]
fn debug_shows_sessions_and_connections() {
    let mut b = Broker::new(config());
    b.connect(1, "a", false, ProtocolVersion::V311);
    b.core.opened(2, "peer-2".into(), b.now);
    let shown = format!("{:?}", b.core);
    assert!(
        shown.contains("Core") && shown.contains("sessions: 1") && shown.contains("conns: 2"),
        "{shown}"
    );
}

/// The admin handle's client list (`BrokerHandle::clients`): every connected client, in
/// client-id order, with its connection, version, keepalive, persistence and subscriptions;
/// a socket still before CONNECT is not a client.
#[test]
fn clients_lists_the_connected_clients_in_id_order() {
    let mut b = Broker::new(config());
    b.connect(1, "zed", true, ProtocolVersion::V5);
    b.connect(2, "amy", false, ProtocolVersion::V311);
    b.subscribe(2, 1, "a/#", QoS::AtLeastOnce);
    b.subscribe(2, 2, "b", QoS::AtMostOnce);
    b.core.opened(3, "peer-3".into(), b.now);
    let clients = b.core.clients();
    let summary: Vec<_> = clients
        .iter()
        .map(|c| {
            (
                c.client_id.as_str(),
                c.conn,
                c.peer.as_str(),
                c.protocol,
                c.keep_alive_secs,
                c.persistent,
                c.subscriptions,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("amy", 2, "peer-2", ProtocolVersion::V311, 30, true, 2),
            ("zed", 1, "peer-1", ProtocolVersion::V5, 30, false, 0),
        ]
    );
    assert_eq!(b.core.connection_count(), 3);
}

/// Past the broker-wide budget (`max_queued_bytes_total`) nothing more waits for an offline
/// session, whatever its QoS: the message is dropped and counted, and only what fitted is
/// delivered when the session comes back.
#[test]
fn past_the_budget_an_offline_session_queues_nothing_more() {
    // Each message weighs topic + payload = 2 bytes: two fit, the third finds the budget used.
    let mut b = Broker::new(BrokerConfig {
        max_queued_bytes_total: 4,
        ..config()
    });
    b.connect(1, "sub", false, ProtocolVersion::V311);
    b.subscribe(1, 1, "t", QoS::AtLeastOnce);
    b.end(1, EndCause::PeerClosed);
    b.connect(2, "pub", true, ProtocolVersion::V311);
    for id in 1..=3 {
        b.publish(2, "t", QosPid::AtLeastOnce(pid(id)), "m");
    }
    let stats = b.stats();
    assert_eq!(
        (
            stats.messages_queued,
            stats.messages_dropped,
            stats.dropped_memory
        ),
        (2, 1, 1)
    );
    let out = b.connect(3, "sub", false, ProtocolVersion::V311);
    assert_eq!(publishes_to(&out, 3).len(), 2, "{out:?}");
}

/// A session that may queue nothing (`max_queued_messages` 0) drops every message for it
/// while it is offline, and counts each as dropped for a full queue.
#[test]
fn a_queue_of_zero_drops_and_counts_every_message() {
    let mut b = Broker::new(BrokerConfig {
        max_queued_messages: 0,
        ..config()
    });
    b.connect(1, "sub", false, ProtocolVersion::V311);
    b.subscribe(1, 1, "t", QoS::AtLeastOnce);
    b.end(1, EndCause::PeerClosed);
    b.connect(2, "pub", true, ProtocolVersion::V311);
    for id in 1..=2 {
        b.publish(2, "t", QosPid::AtLeastOnce(pid(id)), "m");
    }
    let stats = b.stats();
    assert_eq!(
        (
            stats.messages_queued,
            stats.messages_dropped,
            stats.dropped_queue_full
        ),
        (0, 2, 2)
    );
}

/// The counters behind `$SYS/broker/...` count each event once: messages received, sent and
/// dropped (by cause), takeovers, wills, slow consumers, protocol errors, refused connections,
/// and the connected-clients gauge.
#[test]
fn counters_count_each_event_once() {
    let mut b = Broker::new(BrokerConfig {
        max_topic_levels: 3,
        ..config()
    });
    let counts = |s: Stats| {
        [
            s.clients_connected,
            s.messages_received,
            s.messages_sent,
            s.messages_dropped,
            s.dropped_topic_levels,
            s.dropped_not_authorized,
            s.dropped_slow_consumer,
            s.dropped_memory,
            s.takeovers,
            s.wills_published,
            s.slow_consumers,
            s.protocol_errors,
            s.connections_refused,
        ]
    };
    b.connect(1, "sub", true, ProtocolVersion::V311);
    b.subscribe(1, 1, "t", QoS::AtMostOnce);
    b.subscribe(1, 2, "q", QoS::AtLeastOnce);
    b.connect(2, "pub", true, ProtocolVersion::V5);
    assert_eq!(counts(b.stats()), [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // One message in, one out, at QoS 0 and at QoS 1.
    b.publish(2, "t", QosPid::AtMostOnce, "m");
    b.publish(2, "q", QosPid::AtLeastOnce(pid(1)), "m");
    assert_eq!(counts(b.stats()), [2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // Too deep a topic (5.0: PUBACK 0x90), and a publish into `$` topics.
    let out = b.publish(2, "a/b/c/d", QosPid::AtLeastOnce(pid(2)), "m");
    assert!(
        out.iter().any(
            |a| matches!(a, Action::Send { packet: Packet::PubAck(ack), .. }
            if ack.reason_code == ReasonCode::TopicNameInvalid)
        ),
        "{out:?}"
    );
    b.publish(2, "$SYS/fake", QosPid::AtLeastOnce(pid(3)), "m");
    assert_eq!(counts(b.stats()), [2, 4, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
    // The server loop could not hand a QoS 0 message over: for want of room in the
    // connection's buffer, then of the broker's budget (each takes back one "sent").
    b.core.qos0_dropped();
    b.core.qos0_dropped_memory();
    assert_eq!(counts(b.stats()), [2, 4, 0, 4, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    // A takeover: still two clients.
    b.connect(3, "sub", true, ProtocolVersion::V311);
    assert_eq!(counts(b.stats()), [2, 4, 0, 4, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
    // A client with a will loses its connection: the will goes out.
    let mut with_will = connect_packet("w", true, ProtocolVersion::V311);
    with_will.will = Some(Will {
        topic: TopicName::new("gone").unwrap(),
        payload: Bytes::from_static(b"w"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    b.connect_with(4, with_will);
    assert_eq!(b.stats().clients_connected, 3);
    b.end(4, EndCause::PeerClosed);
    assert_eq!(counts(b.stats()), [2, 4, 0, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    // A slow consumer, a bad packet from a connected client, a CONNECT of an unknown
    // protocol level (CONNACK 0x01: refused).
    b.end(3, EndCause::SlowConsumer);
    b.end(2, EndCause::Decode(DecodeError::EmptyTopicName));
    b.core.opened(5, "peer-5".into(), b.now);
    b.end(
        5,
        EndCause::Decode(DecodeError::UnsupportedProtocolVersion { level: 9 }),
    );
    assert_eq!(counts(b.stats()), [0, 4, 0, 4, 1, 1, 1, 1, 1, 1, 1, 2, 1]);
}

/// A will's Message Expiry Interval runs from when the will is published: a subscriber that
/// comes back within it gets the will with the time that remains, one that comes back after
/// it gets nothing (the message was undeliverable, and is counted so).
#[test]
fn a_will_expires_its_interval_after_it_is_published() {
    let mut b = Broker::new(config());
    for (conn, id) in [(1, "early"), (2, "late")] {
        b.connect(conn, id, false, ProtocolVersion::V5);
        b.subscribe(conn, 1, "gone", QoS::AtLeastOnce);
        b.end(conn, EndCause::PeerClosed);
    }
    b.advance(5);
    let mut with_will = connect_packet("w", true, ProtocolVersion::V5);
    with_will.will = Some(Will {
        topic: TopicName::new("gone").unwrap(),
        payload: Bytes::from_static(b"w"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            message_expiry_interval_secs: Some(10),
            ..WillProperties::default()
        },
    });
    b.connect_with(3, with_will);
    b.end(3, EndCause::PeerClosed);
    b.advance(1);
    let out = b.connect(4, "early", false, ProtocolVersion::V5);
    let got = publishes_to(&out, 4);
    assert_eq!(got.len(), 1, "{out:?}");
    assert_eq!(got[0].properties.message_expiry_interval_secs, Some(9));
    b.advance(14);
    let out = b.connect(5, "late", false, ProtocolVersion::V5);
    assert!(publishes_to(&out, 5).is_empty(), "{out:?}");
    assert_eq!(b.stats().dropped_undeliverable, 1);
}

/// A 5.0 client's Maximum Packet Size: a QoS 0 message that would not fit is not sent to it,
/// and is counted as undeliverable; one that fits is sent.
#[test]
fn a_message_over_the_maximum_packet_size_is_dropped_and_counted() {
    let mut b = Broker::new(config());
    let mut small = connect_packet("small", true, ProtocolVersion::V5);
    small.properties.maximum_packet_size = NonZeroU32::new(32);
    b.connect_with(1, small);
    b.subscribe(1, 1, "t", QoS::AtMostOnce);
    b.connect(2, "pub", true, ProtocolVersion::V311);
    let out = b.publish(2, "t", QosPid::AtMostOnce, "fits");
    assert_eq!(publishes_to(&out, 1).len(), 1, "{out:?}");
    let out = b.publish(2, "t", QosPid::AtMostOnce, &"x".repeat(64));
    assert!(publishes_to(&out, 1).is_empty(), "{out:?}");
    assert_eq!(
        (b.stats().messages_dropped, b.stats().dropped_undeliverable),
        (1, 1)
    );
}

/// The reason codes of the SUBACK `actions` send to `conn`.
fn suback_codes(actions: &[Action], conn: ConnId) -> Vec<ReasonCode> {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send {
                conn: c,
                packet: Packet::SubAck(ack),
            } if *c == conn => Some(ack.reason_codes.clone()),
            _ => None,
        })
        .expect("a SUBACK")
}

/// `max_topic_levels` is the most levels a filter may have: a filter with exactly that many is
/// granted, one with one more is refused (5.0: 0x8F; 3.1.1: 0x80).
#[test]
fn a_filter_may_have_max_topic_levels_levels_and_no_more() {
    let mut b = Broker::new(BrokerConfig {
        max_topic_levels: 3,
        ..config()
    });
    b.connect(1, "v5", true, ProtocolVersion::V5);
    b.connect(2, "v311", true, ProtocolVersion::V311);
    for (conn, refused) in [
        (1, ReasonCode::TopicFilterInvalid),
        (2, ReasonCode::UnspecifiedError),
    ] {
        let out = b.subscribe(conn, 1, "a/b/+", QoS::AtLeastOnce);
        assert_eq!(suback_codes(&out, conn), [ReasonCode::GrantedQoS1]);
        let out = b.subscribe(conn, 2, "a/b/c/#", QoS::AtLeastOnce);
        assert_eq!(suback_codes(&out, conn), [refused]);
    }
}

/// The broker-wide budget counts the bytes waiting in connections' outgoing buffers beside
/// the queued messages: full buffers alone use it up.
#[test]
fn the_budget_counts_bytes_waiting_in_outgoing_buffers() {
    let bytes = Arc::new(ByteCounters::default());
    let now = Instant::now();
    let core = Core::new(
        BrokerConfig {
            max_queued_bytes_total: 100,
            ..config()
        },
        Box::new(MemoryStore::new()),
        bytes.clone(),
        now,
    );
    assert!(!core.over_budget());
    bytes
        .outbound_queued
        .store(99, std::sync::atomic::Ordering::Relaxed);
    assert!(!core.over_budget());
    bytes
        .outbound_queued
        .store(100, std::sync::atomic::Ordering::Relaxed);
    assert!(core.over_budget());
}

/// [MQTT-3.14.2-2] a 5.0 client that connected with Session Expiry Interval 0 may not set a
/// non-zero one on DISCONNECT (protocol error: DISCONNECT 0x82, counted); setting 0 again is
/// no error.
#[test]
fn disconnect_may_not_set_a_session_expiry_after_connect_said_0() {
    let mut b = Broker::new(config());
    let disconnect = |secs| {
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::Success,
            properties: DisconnectProperties {
                session_expiry_interval_secs: Some(secs),
                ..DisconnectProperties::default()
            }
            .into(),
        })
    };
    b.connect(1, "zero-again", true, ProtocolVersion::V5);
    let out = b.send(1, disconnect(0));
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Send {
                packet: Packet::Disconnect(_),
                ..
            }
        )),
        "{out:?}"
    );
    assert_eq!(b.stats().protocol_errors, 0);
    b.connect(2, "sets-one", true, ProtocolVersion::V5);
    let out = b.send(2, disconnect(10));
    assert!(
        out.iter().any(
            |a| matches!(a, Action::Send { conn: 2, packet: Packet::Disconnect(d) }
            if d.reason_code == ReasonCode::ProtocolError)
        ),
        "{out:?}"
    );
    assert_eq!(b.stats().protocol_errors, 1);
}

/// A timer runs at its deadline, not after it: `on_timer` at exactly `next_deadline` does the
/// work due then (here a connection that sent no CONNECT within `connect_timeout_secs` is
/// closed), so a driver that sleeps until the deadline and calls `on_timer` makes progress.
#[test]
fn a_timer_runs_at_its_deadline() {
    let mut b = Broker::new(config());
    b.core.opened(1, "peer-1".into(), b.now);
    let at = b.core.next_deadline().expect("the CONNECT timer");
    assert_eq!(at, b.now + Duration::from_secs(10));
    let mut out = Vec::new();
    b.core.on_timer(at, &mut out);
    assert_eq!(out, [Action::Close { conn: 1 }]);
    assert_eq!(b.core.connection_count(), 0);
}

/// A full queue drops its oldest message for the new one ("drop the oldest",
/// `BrokerConfig::max_queued_messages`) and counts it as dropped, for a full queue: the
/// session gets the newest messages when it comes back.
#[test]
fn a_full_queue_drops_its_oldest_message_and_counts_it() {
    let mut b = Broker::new(BrokerConfig {
        max_queued_messages: 2,
        ..config()
    });
    b.connect(1, "sub", false, ProtocolVersion::V311);
    b.subscribe(1, 1, "t", QoS::AtLeastOnce);
    b.end(1, EndCause::PeerClosed);
    b.connect(2, "pub", true, ProtocolVersion::V311);
    for id in 1..=3 {
        b.publish(2, "t", QosPid::AtLeastOnce(pid(id)), &id.to_string());
    }
    let stats = b.stats();
    assert_eq!((stats.messages_dropped, stats.dropped_queue_full), (1, 1));
    let out = b.connect(3, "sub", false, ProtocolVersion::V311);
    let payloads: Vec<Bytes> = publishes_to(&out, 3)
        .into_iter()
        .map(|p| p.payload)
        .collect();
    let newest: [&[u8]; 2] = [b"2", b"3"];
    assert_eq!(payloads, newest);
}

/// A shared subscription's message goes to a member that is connected while one is
/// (`BrokerConfig::shared_subscription_strategy`: the strategy picks among online members with
/// room): a member whose session waits offline is passed over, in turn or not.
#[test]
fn a_shared_message_skips_a_member_that_is_offline() {
    let mut b = Broker::new(config());
    // "a" joins first, so round robin would take it first and then every other time.
    for (conn, client_id) in [(1, "a"), (2, "b")] {
        b.connect(conn, client_id, false, ProtocolVersion::V5);
        b.subscribe(conn, 1, "$share/g/t", QoS::AtLeastOnce);
    }
    b.end(1, EndCause::PeerClosed);
    b.connect(3, "pub", true, ProtocolVersion::V5);
    let mut to_b = Vec::new();
    for id in 1..=4 {
        let out = b.publish(3, "t", QosPid::AtLeastOnce(pid(id)), &id.to_string());
        assert!(publishes_to(&out, 1).is_empty());
        to_b.extend(publishes_to(&out, 2).into_iter().map(|p| p.payload));
    }
    let all: [&[u8]; 4] = [b"1", b"2", b"3", b"4"];
    assert_eq!(to_b, all);
}

/// Past the broker-wide budget a QoS 1/2 PUBLISH is held (`publish_blocker`) while an online
/// subscriber would have to queue it: here one whose in-flight window is full though its
/// queue is still empty. Under the budget nothing holds it.
#[test]
fn past_the_budget_a_subscriber_with_a_full_window_holds_the_publisher() {
    let bytes = Arc::new(ByteCounters::default());
    let now = Instant::now();
    let config = BrokerConfig {
        max_inflight_messages: 1,
        max_queued_bytes_total: 100,
        ..config()
    };
    let store = Box::new(MemoryStore::new());
    let mut b = Broker {
        core: Core::new(config, store, bytes.clone(), now),
        now,
    };
    b.connect(1, "sub", true, ProtocolVersion::V311);
    b.subscribe(1, 1, "t", QoS::AtLeastOnce);
    b.connect(2, "pub", true, ProtocolVersion::V311);
    let out = b.publish(2, "t", QosPid::AtLeastOnce(pid(1)), "m");
    assert_eq!(publishes_to(&out, 1).len(), 1, "in flight, unacknowledged");
    let next = Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(pid(2)),
        retain: false,
        topic: TopicName::new("t").unwrap(),
        properties: PublishProperties::default().into(),
        payload: Bytes::from_static(b"m"),
    };
    assert_eq!(b.core.publish_blocker(2, &next), None);
    bytes
        .outbound_queued
        .store(100, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(b.core.publish_blocker(2, &next).as_deref(), Some("sub"));
}
