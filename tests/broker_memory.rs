//! Issue 14, defect 5: three anonymous subscribers that never read pinned 3.1 GiB of the
//! broker (1 MB QoS 0 messages, a 1024-packet outbound queue each): queues were bounded in
//! packets, not bytes, and nothing bounded the broker as a whole. Over real TCP against
//! `simqtt broker` in a child process, its resident set (VmRSS of /proc/PID/status) is held
//! under a stated bound while it is attacked, and it keeps serving other clients. These are
//! resource bounds, bounded in message count and time; nothing here times the broker.

mod broker_support;

use std::time::{Duration, Instant};

use broker_support::{qos, write_file, ChildBroker, RawClient, Received, WAIT};
use simqtt::codec::{Packet, ProtocolVersion};

const MIB: u64 = 1024;

/// Reads `$SYS/broker/...` counter `name` from its next publication (the broker publishes
/// every second in these tests; the retained copy a SUBSCRIBE brings may be older).
fn sys_counter(port: u16, name: &str) -> u64 {
    let mut c = RawClient::connect(port, ProtocolVersion::V311, "sys-reader", true, None);
    let topic = format!("$SYS/broker/{name}");
    assert_eq!(c.subscribe_codes(1, &[(&topic, qos(0))]), [0x00]);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Received::Packet(Packet::Publish(p)) = c.recv(WAIT) {
            if *p.topic == *topic && !p.retain {
                return std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            }
        }
    }
    panic!("no {topic}");
}

/// The attack: 3 anonymous subscribers that never read, one publisher of 1 MB QoS 0
/// messages. RSS stays under 96 MiB (was 3.1 GiB): per subscriber at most
/// `outbound_queue_bytes` (8 MiB) queued plus the message being written, per publisher at
/// most `READER_CREDIT_BYTES` (4 MiB) with the core, plus the broker's own few MiB.
#[test]
fn non_reading_subscribers_cannot_pin_memory_with_qos0() {
    const MESSAGES: usize = 400;
    const BOUND_KIB: u64 = 96 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "broker.toml", "sys_interval_secs = 1\n");
    let mut broker = ChildBroker::start(&["--config", &config]);
    let port = broker.port;
    let before = broker.rss_kib();

    let mut sleepers: Vec<RawClient> = (0..3)
        .map(|i| {
            let mut s = RawClient::connect(
                port,
                ProtocolVersion::V311,
                &format!("sleeper-{i}"),
                true,
                None,
            );
            assert_eq!(s.subscribe_codes(1, &[("flood/#", qos(0))]), [0x00]);
            s
        })
        .collect();
    // A subscriber that reads, on another topic: it must keep being served.
    let mut awake = RawClient::connect(port, ProtocolVersion::V311, "awake", true, None);
    assert_eq!(awake.subscribe_codes(1, &[("other/#", qos(1))]), [0x01]);

    let mut publisher = RawClient::connect(port, ProtocolVersion::V311, "flooder", true, None);
    let payload = vec![0x5a; 1_000_000];
    let mut most = 0;
    let started = Instant::now();
    for i in 0..MESSAGES {
        publisher.publish("flood/x", qos(0), 0, false, &payload);
        if i % 20 == 0 {
            most = most.max(broker.rss_kib());
            broker.assert_alive("during the flood");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the flood is bounded in time too"
        );
    }
    // Everything the publisher wrote has been read once its PINGRESP comes back.
    assert!(publisher.ping(), "the publisher is still served");
    for _ in 0..10 {
        most = most.max(broker.rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Others are served meanwhile.
    let mut other = RawClient::connect(port, ProtocolVersion::V311, "other-pub", true, None);
    other.publish("other/t", qos(1), 1, false, b"still here");
    assert!(matches!(
        other.recv(WAIT),
        Received::Packet(Packet::PubAck(_))
    ));
    assert_eq!(
        awake.collect_publishes(Duration::from_millis(1000)),
        [("other/t".to_string(), b"still here".to_vec())]
    );
    let dropped = sys_counter(port, "messages/dropped/slow_consumer");
    eprintln!(
        "RSS before {before} KiB, at most {most} KiB under the flood of {MESSAGES} x 1 MiB to 3 \
         non-reading subscribers; {dropped} QoS 0 deliveries dropped"
    );
    assert!(
        most < BOUND_KIB,
        "RSS reached {most} KiB under the attack (bound {BOUND_KIB} KiB)"
    );
    assert!(dropped > 0, "the dropped deliveries are counted in $SYS");
    broker.assert_alive("after the flood");
    drop(sleepers.drain(..));
}

/// The broker-wide budget (lowered here to 24 MiB): persistent sessions that are offline or
/// never acknowledge cannot take more. Messages for offline sessions past it are dropped and
/// counted; a QoS 1 publisher whose messages would wait for an online subscriber that makes
/// no room is held (no PUBACK) until that subscriber is closed by the slow-consumer rule
/// (`slow_subscriber_timeout_secs`, 2 s here), and then goes on.
#[test]
fn the_broker_wide_budget_holds_offline_queues_and_back_pressures_qos1() {
    const BUDGET: u64 = 24 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "broker.toml",
        &format!(
            "max_queued_bytes_total = {BUDGET}\nmax_inflight_bytes = 4194304\n\
             slow_subscriber_timeout_secs = 2\nsys_interval_secs = 1\n"
        ),
    );
    let mut broker = ChildBroker::start(&["--config", &config]);
    let port = broker.port;
    let payload = vec![0x33; 1_000_000];

    // Three offline persistent sessions subscribed to `off/#`.
    for i in 0..3 {
        let mut s = RawClient::connect(
            port,
            ProtocolVersion::V311,
            &format!("off-{i}"),
            false,
            None,
        );
        assert_eq!(s.subscribe_codes(1, &[("off/#", qos(1))]), [0x01]);
        s.disconnect();
    }
    // 40 x 1 MiB QoS 1 for them: 120 MiB offered, at most the budget kept; never held.
    let mut p = RawClient::connect(port, ProtocolVersion::V311, "p-off", true, None);
    for i in 0..40u16 {
        p.publish("off/t", qos(1), i + 1, false, &payload);
        match p.recv(WAIT) {
            Received::Packet(Packet::PubAck(_)) => {}
            other => panic!("message {i} for offline sessions: {other:?}"),
        }
    }
    let queued = sys_counter(port, "memory/queued_bytes");
    assert!(
        queued <= BUDGET + 1024 * 1024 + 16,
        "queued {queued} bytes, budget {BUDGET}"
    );
    assert!(sys_counter(port, "messages/dropped/memory") > 0);
    assert!(broker.rss_kib() < 96 * MIB, "RSS {} KiB", broker.rss_kib());

    // An online QoS 1 subscriber that never acknowledges: the publisher is held once its
    // messages would have to queue past the budget, and goes on once the subscriber is closed.
    let mut sleeper = RawClient::connect(port, ProtocolVersion::V311, "sleeper", true, None);
    assert_eq!(sleeper.subscribe_codes(1, &[("on/#", qos(1))]), [0x01]);
    let mut p = RawClient::connect(port, ProtocolVersion::V311, "p-on", true, None);
    let mut held_at = None;
    for i in 0..16u16 {
        p.publish("on/t", qos(1), i + 1, false, &payload);
        match p.recv(Duration::from_millis(1000)) {
            Received::Packet(Packet::PubAck(ack)) => assert_eq!(ack.packet_id.get(), i + 1),
            Received::Nothing => {
                held_at = Some(i + 1);
                break;
            }
            other => panic!("publisher: {other:?}"),
        }
    }
    let held_at = held_at.expect("the publisher was never held past the budget");
    // Held: no PUBACK until the slow-consumer rule closes the sleeper (2 s without room).
    match p.recv(Duration::from_secs(10)) {
        Received::Packet(Packet::PubAck(ack)) => assert_eq!(ack.packet_id.get(), held_at),
        other => panic!("the held publisher never went on: {other:?}"),
    }
    sleeper.expect_closed(WAIT);
    assert!(sys_counter(port, "connections/slow_consumers") >= 1);
    assert!(broker.rss_kib() < 96 * MIB, "RSS {} KiB", broker.rss_kib());
    broker.assert_alive("at the end");
}
