//! Issue 14, defect 1: one anonymous client with a filter of 60,000 empty levels crashed the
//! broker (the router recursed once per level), and a persistent session holding it crashed it
//! again on every restart. Over real TCP against `simqtt broker` in a child process:
//! - with the default `max_topic_levels` (128) the filter and topic are refused with the
//!   reason codes of each version, and the broker keeps serving;
//! - with the limit raised to its maximum the router itself serves them (no recursion);
//! - a stored session holding such a filter loads under the default limit without dying (the
//!   subscription is dropped with a warning) and under the raised one it is served.

mod broker_support;

use broker_support::{connect_packet, qos, ChildBroker, RawClient, Received, WAIT};
use simqtt::codec::{Packet, ProtocolVersion, ReasonCode};

const LEVELS: usize = 60_000;

fn deep() -> String {
    "/".repeat(LEVELS - 1)
}

/// Another client can still connect and get a PINGRESP.
fn assert_serving(broker: &mut ChildBroker, when: &str) {
    broker.assert_alive(when);
    let mut probe = RawClient::connect(broker.port, ProtocolVersion::V311, "probe", true, None);
    assert!(probe.ping(), "no PINGRESP {when}");
    probe.disconnect();
    broker.assert_alive(when);
}

#[test]
fn deep_filters_and_topics_are_refused_by_default_and_the_broker_stays_up() {
    let mut broker = ChildBroker::start(&[]);
    let deep = deep();

    // 3.1.1: SUBACK 0x80 for the deep filter (and 0x00 for a normal one beside it).
    let mut v3 = RawClient::connect(broker.port, ProtocolVersion::V311, "v3", true, None);
    assert_eq!(
        v3.subscribe_codes(1, &[(&deep, qos(0)), ("ok/+", qos(0))]),
        [0x80, 0x00]
    );
    v3.unsubscribe(2, &[&deep]);
    assert!(matches!(
        v3.recv(WAIT),
        Received::Packet(Packet::UnsubAck(_))
    ));
    // A PUBLISH to a deep topic closes a 3.1.1 connection (no way to refuse one message).
    v3.publish(&deep, qos(0), 0, false, b"x");
    v3.expect_closed(WAIT);
    assert_serving(
        &mut broker,
        "after a 3.1.1 client's deep SUBSCRIBE and PUBLISH",
    );

    // 5.0: SUBACK 0x8F Topic Filter invalid; QoS 1 PUBLISH gets PUBACK 0x90 and the
    // connection stays; QoS 0 gets DISCONNECT 0x90.
    let mut v5 = RawClient::connect(broker.port, ProtocolVersion::V5, "v5", true, None);
    assert_eq!(v5.subscribe_codes(1, &[(&deep, qos(1))]), [0x8F]);
    v5.publish(&deep, qos(1), 7, false, b"x");
    match v5.recv(WAIT) {
        Received::Packet(Packet::PubAck(ack)) => {
            assert_eq!(ack.packet_id.get(), 7);
            assert_eq!(ack.reason_code, ReasonCode::TopicNameInvalid);
        }
        other => panic!("expected PUBACK 0x90, got {other:?}"),
    }
    assert!(
        v5.ping(),
        "the 5.0 connection stays after a refused QoS 1 PUBLISH"
    );
    v5.publish(&deep, qos(0), 0, false, b"x");
    let before_close = v5.expect_closed(WAIT);
    assert!(
        matches!(before_close.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::TopicNameInvalid),
        "{before_close:?}"
    );

    // A will topic beyond the limit refuses the CONNECT: 5.0 CONNACK 0x90.
    let mut connect = connect_packet(ProtocolVersion::V5, "will", true, None);
    connect.will = Some(simqtt::codec::Will {
        topic: simqtt::codec::TopicName::new(&deep).unwrap(),
        payload: bytes::Bytes::from_static(b"w"),
        qos: qos(0),
        retain: false,
        properties: Default::default(),
    });
    let (_, connack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(connack.reason_code, ReasonCode::TopicNameInvalid);
    assert_serving(&mut broker, "after 5.0 deep packets");

    // The limit itself: 128 levels pass, 129 do not.
    let mut edge = RawClient::connect(broker.port, ProtocolVersion::V311, "edge", true, None);
    let at_limit = vec!["l"; 128].join("/");
    let over = vec!["l"; 129].join("/");
    assert_eq!(
        edge.subscribe_codes(1, &[(&at_limit, qos(0)), (&over, qos(0))]),
        [0x00, 0x80]
    );
    edge.publish(&at_limit, qos(0), 0, false, b"edge");
    let got = edge.collect_publishes(std::time::Duration::from_millis(500));
    assert_eq!(got, [(at_limit.clone(), b"edge".to_vec())]);
    edge.disconnect();
    assert_serving(&mut broker, "at the end");
}

#[test]
fn a_raised_limit_is_served_and_a_stored_deep_session_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let high = broker_support::write_file(dir.path(), "high.toml", "max_topic_levels = 65536\n");
    let deep = deep();

    // Served: SUBSCRIBE, a delivery through it, UNSUBSCRIBE, SUBSCRIBE again, and a 5.0
    // session that keeps the subscription ended by DISCONNECT (the crash points).
    let mut broker = ChildBroker::start(&["--config", &high, "--data-dir", data]);
    let mut c = RawClient::connect(broker.port, ProtocolVersion::V5, "deep", false, None);
    assert_eq!(c.subscribe_codes(1, &[(&deep, qos(0))]), [0x00]);
    c.publish(&deep, qos(0), 0, false, b"down there");
    let got = c.collect_publishes(std::time::Duration::from_millis(1000));
    assert_eq!(got.len(), 1, "the deep subscription got its message");
    c.unsubscribe(2, &[&deep]);
    assert!(matches!(
        c.recv(WAIT),
        Received::Packet(Packet::UnsubAck(_))
    ));
    assert_eq!(c.subscribe_codes(3, &[(&deep, qos(1))]), [0x01]);
    c.disconnect();
    assert_serving(&mut broker, "after the deep session disconnected");
    broker.kill();

    // Restarted with the same store under the default limit: loads, drops the subscription.
    let mut broker = ChildBroker::start(&["--data-dir", data]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_serving(&mut broker, "after a restart under the default limit");
    assert!(
        broker.log().contains("dropping a stored subscription"),
        "the dropped subscription is logged:\n{}",
        broker.log()
    );
    let c = RawClient::connect(broker.port, ProtocolVersion::V5, "deep", false, None);
    c.disconnect();
    broker.kill();

    // And again: the drop was stored, nothing is left to warn about.
    let mut broker = ChildBroker::start(&["--data-dir", data]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_serving(&mut broker, "after a second restart");
    assert!(!broker.log().contains("dropping a stored subscription"));
    broker.kill();

    // A store with the deep subscription, restarted under the raised limit: served.
    let broker = ChildBroker::start(&["--config", &high, "--data-dir", data]);
    let mut c = RawClient::connect(broker.port, ProtocolVersion::V5, "deep", false, None);
    assert_eq!(c.subscribe_codes(1, &[(&deep, qos(1))]), [0x01]);
    c.disconnect();
    broker.kill();
    let mut broker = ChildBroker::start(&["--config", &high, "--data-dir", data]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_serving(
        &mut broker,
        "after a restart with the deep subscription loaded",
    );
    let mut p = RawClient::connect(broker.port, ProtocolVersion::V311, "p", true, None);
    p.publish(&deep, qos(0), 0, false, b"x");
    p.disconnect();
    let mut c = RawClient::connect(broker.port, ProtocolVersion::V5, "deep", false, None);
    c.unsubscribe(9, &[&deep]);
    assert!(matches!(
        c.recv_skipping_publishes(WAIT),
        Received::Packet(Packet::UnsubAck(_))
    ));
    c.disconnect();
    assert_serving(&mut broker, "after serving the loaded deep subscription");
}
