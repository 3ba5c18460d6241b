//! Issue 14, defect 4: no acknowledgement without durability. The broker core over a
//! `FileStore` on a disk that fills up (`LimitedFs`, the store's file system seam).

use std::sync::Mutex;

use super::store_health::RETRY_INTERVAL;
use super::tests::{config, connack, connect_packet, pid, publish, sent, subscribe, Harness};
use super::*;
use crate::store::fs::testing::LimitedFs;
use crate::store::fs::StdFs;
use crate::store::{FileStore, SyncPolicy};

fn v5_connect(client_id: &str, expiry_secs: u32) -> Connect {
    let mut connect = connect_packet(client_id, true, ProtocolVersion::V5);
    connect.properties.session_expiry_interval_secs = Some(expiry_secs);
    connect
}

fn bytes_in(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn acked(packet: &Packet) -> (u16, ReasonCode) {
    match packet {
        Packet::PubAck(a) | Packet::PubRec(a) => (a.packet_id.get(), a.reason_code),
        other => panic!("not a PUBACK/PUBREC: {other:?}"),
    }
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_disk_refuses_every_acknowledgement_that_needs_it_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LimitedFs::new(1 << 20);
    let capacity = fs.capacity.clone();
    let store = FileStore::open(Arc::new(fs), dir.path(), SyncPolicy::EveryWrite).unwrap();
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut h = Harness::with_store(config(), Box::new(store));
        // A persistent 3.1.1 subscriber, offline: QoS 1 messages for it go to the store.
        assert!(!h.connect(1, "sub", false));
        h.send(1, subscribe(1, &[("t/#", QoS::AtLeastOnce)]));
        h.end(1);
        // Publishers (clean sessions, 5.0 and 3.1.1) and persistent sessions that subscribe
        // later.
        h.connect_with(2, v5_connect("p5", 0));
        assert!(!h.connect(3, "p3", true));
        h.connect_with(4, v5_connect("s5", 3600));
        assert!(!h.connect(5, "s3", false));
        let out = h.send(2, publish("t/0", "0", QosPid::AtLeastOnce(pid(1)), false));
        assert_eq!(sent(&out, 2), [Packet::PubAck(Ack::new(pid(1)))]);

        // The disk fills up.
        capacity.store(bytes_in(dir.path()), std::sync::atomic::Ordering::SeqCst);

        // The batch whose write fails: its PUBACK is withdrawn and the connection closed, as
        // if it had been lost before the PUBACK (the client sends again on reconnect).
        let out = h.send(2, publish("t/1", "1", QosPid::AtLeastOnce(pid(2)), false));
        assert_eq!(sent(&out, 2), [disconnect(ReasonCode::QuotaExceeded)]);
        assert!(super::tests::closed(&out, 2));

        // While the store fails, 5.0 PUBLISH is refused with 0x97 and not routed.
        let out = h.connect_with(6, v5_connect("p5", 0));
        assert_eq!(connack(&out, 6).unwrap().reason_code, ReasonCode::Success);
        let out = h.send(6, publish("t/2", "2", QosPid::AtLeastOnce(pid(3)), false));
        assert_eq!(
            sent(&out, 6).iter().map(acked).collect::<Vec<_>>(),
            [(3, ReasonCode::QuotaExceeded)]
        );
        let out = h.send(6, publish("t/3", "3", QosPid::ExactlyOnce(pid(4)), false));
        assert_eq!(
            sent(&out, 6).iter().map(acked).collect::<Vec<_>>(),
            [(4, ReasonCode::QuotaExceeded)]
        );
        let queued: Vec<String> = h.core.state().sessions["sub"]
            .queued
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        assert_eq!(queued, ["t/0", "t/1"], "refused messages were routed");
        // 3.1.1 has no refusing PUBACK: the connection closes unacknowledged.
        let out = h.send(3, publish("t/4", "4", QosPid::AtLeastOnce(pid(5)), false));
        assert!(sent(&out, 3).is_empty());
        assert!(super::tests::closed(&out, 3));
        // What needs no store is served: nobody stored subscribes to u/1.
        let out = h.send(6, publish("u/1", "5", QosPid::AtLeastOnce(pid(6)), false));
        assert_eq!(
            sent(&out, 6).iter().map(acked).collect::<Vec<_>>(),
            [(6, ReasonCode::Success)]
        );
        // SUBSCRIBE of a stored session: every filter fails.
        let out = h.send(
            4,
            subscribe(7, &[("a", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]),
        );
        let Packet::SubAck(suback) = &sent(&out, 4)[0] else {
            panic!("no SUBACK")
        };
        assert_eq!(suback.reason_codes, [ReasonCode::QuotaExceeded; 2]);
        let out = h.send(5, subscribe(8, &[("a", QoS::AtLeastOnce)]));
        let Packet::SubAck(suback) = &sent(&out, 5)[0] else {
            panic!("no SUBACK")
        };
        assert_eq!(
            suback.reason_codes,
            [ReasonCode::UnspecifiedError],
            "3.1.1 Failure"
        );
        assert!(h.core.state().sessions["s3"].subscriptions.is_empty());
        // A new stored session is refused at CONNECT.
        let out = h.connect_with(7, connect_packet("n3", false, ProtocolVersion::V311));
        assert_eq!(
            connack(&out, 7).unwrap().reason_code,
            ReasonCode::ServerUnavailable
        );
        let out = h.connect_with(8, v5_connect("n5", 60));
        assert_eq!(
            connack(&out, 8).unwrap().reason_code,
            ReasonCode::QuotaExceeded
        );
        // $SYS says so.
        let stats = h.core.stats(h.now);
        let failure = stats.store_failure.clone().expect("failing");
        assert!(failure.contains("No space left"), "{failure}");
        assert!(stats.store_refused >= 7, "{}", stats.store_refused);
        let topics = stats.sys_topics();
        let status = topics
            .iter()
            .find(|(t, _)| *t == "$SYS/broker/store/status")
            .unwrap();
        assert!(status.1.starts_with("failing: "), "{}", status.1);

        // Space returns: the next packet that needs the store tries it again.
        capacity.store(1 << 30, std::sync::atomic::Ordering::SeqCst);
        h.now += RETRY_INTERVAL;
        let out = h.send(6, publish("t/5", "5", QosPid::AtLeastOnce(pid(9)), false));
        assert_eq!(
            sent(&out, 6).iter().map(acked).collect::<Vec<_>>(),
            [(9, ReasonCode::Success)]
        );
        let stats = h.core.stats(h.now);
        assert_eq!(stats.store_failure, None);
        let topics = stats.sys_topics();
        let status = topics
            .iter()
            .find(|(t, _)| *t == "$SYS/broker/store/status")
            .unwrap();
        assert_eq!(status.1, "ok");

        // kill -9: only the disk survives. Every acknowledged message is on it (t/1, never
        // acknowledged, too: it was kept in memory and written once space returned).
        drop(h);
        let reopened =
            FileStore::open(Arc::new(StdFs), dir.path(), SyncPolicy::EveryWrite).unwrap();
        let queued: Vec<String> = reopened.state().sessions["sub"]
            .queued
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        assert_eq!(queued, ["t/0", "t/1", "t/5"]);
    });
    // The log says it once per transition, not once per refusal.
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("store write failed").count(), 1, "{text}");
    assert_eq!(text.matches("store writes work again").count(), 1, "{text}");
}
