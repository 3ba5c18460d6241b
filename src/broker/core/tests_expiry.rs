//! Expiry across restarts: session and message expiry count on the wall clock kept in the
//! store, so time spent with the broker down counts (issue 17). The wall clock is the test's.

use std::sync::atomic::{AtomicU64, Ordering};

use super::tests::{config, connack, connect_packet, pid, sent, subscribe, Harness};
use super::*;
use crate::broker::WallClock;
use crate::store::fs::StdFs;
use crate::store::{FileStore, SyncPolicy};

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

struct Restartable {
    dir: tempfile::TempDir,
    wall: Arc<AtomicU64>,
}

impl Restartable {
    fn new() -> Restartable {
        Restartable {
            dir: tempfile::tempdir().unwrap(),
            wall: Arc::new(AtomicU64::new(T0)),
        }
    }

    /// A broker started now from the store (a new process: its own monotonic clock).
    fn start(&self) -> Harness {
        let store =
            FileStore::open(Arc::new(StdFs), self.dir.path(), SyncPolicy::EveryWrite).unwrap();
        let wall = self.wall.clone();
        let config = BrokerConfig {
            wall_clock: WallClock::from_fn(move || wall.load(Ordering::SeqCst)),
            ..config()
        };
        Harness::with_store(config, Box::new(store))
    }

    /// The broker is down for `secs` (the harness is dropped: a crash).
    fn down_for(&self, h: Harness, secs: u64) {
        drop(h);
        self.wall.fetch_add(secs * 1000, Ordering::SeqCst);
    }
}

fn v5(client_id: &str, clean: bool, expiry_secs: u32) -> Connect {
    let mut c = connect_packet(client_id, clean, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = Some(expiry_secs);
    c
}

/// A 5.0 session with a 60 s expiry that subscribed and went offline at T0.
fn offline_session(r: &Restartable) -> Harness {
    let mut h = r.start();
    h.connect_with(1, v5("s", false, 60));
    h.send(1, subscribe(1, &[("t", QoS::AtLeastOnce)]));
    h.end(1);
    h
}

fn present(h: &mut Harness, conn: ConnId) -> bool {
    let out = h.connect_with(conn, v5("s", false, 60));
    connack(&out, conn).unwrap().session_present
}

#[test]
fn a_session_whose_expiry_elapsed_while_the_broker_was_down_is_gone() {
    let r = Restartable::new();
    let h = offline_session(&r);
    r.down_for(h, 100);
    let mut h = r.start();
    h.advance(0.0);
    assert!(!h.core.state().sessions.contains_key("s"));
    assert!(!present(&mut h, 2));
}

#[test]
fn a_session_partly_expired_while_down_has_only_the_rest_left() {
    let r = Restartable::new();
    let h = offline_session(&r);
    r.down_for(h, 40);
    let mut h = r.start();
    h.advance(19.0);
    assert!(h.core.state().sessions.contains_key("s"), "20 s were left");
    h.advance(2.0);
    assert!(!h.core.state().sessions.contains_key("s"), "60 s are over");
}

#[test]
fn a_session_resumed_before_its_expiry_keeps_counting_from_its_next_disconnect() {
    let r = Restartable::new();
    let h = offline_session(&r);
    r.down_for(h, 40);
    let mut h = r.start();
    assert!(present(&mut h, 2));
    // Online again: the offline time is cleared, so a crash now does not count the 40 s.
    r.down_for(h, 50);
    let mut h = r.start();
    h.advance(59.0);
    assert!(h.core.state().sessions.contains_key("s"));
}

#[test]
fn a_message_whose_expiry_elapsed_while_the_broker_was_down_is_not_delivered() {
    for (down_secs, left) in [(100, None), (40, Some(20))] {
        let r = Restartable::new();
        let mut h = offline_session(&r);
        h.connect_with(2, v5("p", true, 0));
        let mut publish = Publish {
            dup: false,
            qos_pid: QosPid::AtLeastOnce(pid(1)),
            retain: false,
            topic: TopicName::new("t").unwrap(),
            properties: PropertyBox::none(),
            payload: Bytes::from_static(b"m"),
        };
        publish.properties.message_expiry_interval_secs = Some(60);
        h.send(2, Packet::Publish(publish));
        r.down_for(h, down_secs);
        let mut h = r.start();
        let out = h.connect_with(3, v5("s", false, 60));
        assert!(connack(&out, 3).unwrap().session_present);
        let expiry: Vec<Option<u32>> = sent(&out, 3)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.properties.message_expiry_interval_secs),
                _ => None,
            })
            .collect();
        // [MQTT-3.3.2-5] dropped once expired; [MQTT-3.3.2-6] else sent with what is left.
        match left {
            None => assert!(
                expiry.is_empty(),
                "expired while down, yet sent: {expiry:?}"
            ),
            Some(secs) => assert_eq!(expiry, [Some(secs)]),
        }
    }
}

#[test]
fn a_connection_open_when_the_broker_crashed_counts_its_session_expiry_from_the_restart() {
    let r = Restartable::new();
    let mut h = r.start();
    h.connect_with(1, v5("s", false, 60));
    r.down_for(h, 100);
    let mut h = r.start();
    h.advance(59.0);
    assert!(h.core.state().sessions.contains_key("s"));
    h.advance(2.0);
    assert!(!h.core.state().sessions.contains_key("s"));
}

#[test]
fn an_expiry_written_by_an_older_broker_counts_from_this_start() {
    // An older broker kept expiry in milliseconds since its own start.
    let r = Restartable::new();
    let mut store = FileStore::open(Arc::new(StdFs), r.dir.path(), SyncPolicy::EveryWrite).unwrap();
    store
        .apply(StoreOp::SessionCreated {
            client_id: "s".into(),
            expiry_interval_secs: Some(3600),
            protocol_level: 5,
        })
        .unwrap();
    store
        .apply(StoreOp::Subscribed {
            client_id: "s".into(),
            filter: TopicFilter::new("t").unwrap(),
            subscription: crate::store::StoredSubscription {
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                subscription_id: None,
            },
        })
        .unwrap();
    store
        .apply(StoreOp::Queued {
            client_id: "s".into(),
            message: StoredMessage {
                topic: TopicName::new("t").unwrap(),
                payload: Bytes::from_static(b"old"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: MessageProperties {
                    expires_at_ms: Some(30_000),
                    ..Default::default()
                }
                .into(),
            },
        })
        .unwrap();
    drop(store);
    let mut h = r.start();
    let out = h.connect_with(1, v5("s", false, 3600));
    let expiry: Vec<Option<u32>> = sent(&out, 1)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.properties.message_expiry_interval_secs),
            _ => None,
        })
        .collect();
    assert_eq!(expiry, [Some(30)]);
}
