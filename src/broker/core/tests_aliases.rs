//! 5.0 topic aliases through the core: inbound up to `topic_alias_maximum`, outbound by the
//! policy of `aliases.rs`, both per connection.

use std::num::NonZeroU16;

use super::tests::{closed, config, connack, connect_packet, pid, sent, subscribe, Harness};
use super::*;

fn alias(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn aliased_publish(topic: &str, payload: &str, qos_pid: QosPid, alias_no: Option<u16>) -> Packet {
    let properties = PublishProperties {
        topic_alias: alias_no.map(alias),
        ..Default::default()
    };
    Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        properties: properties.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

/// Connects a 5.0 client that accepts `aliases` topic aliases (None: announces none).
fn connect_v5(h: &mut Harness, conn: ConnId, client_id: &str, aliases: Option<u16>) -> ConnAck {
    let mut c = connect_packet(client_id, true, ProtocolVersion::V5);
    c.properties.topic_alias_maximum = aliases;
    let out = h.connect_with(conn, c);
    connack(&out, conn).expect("CONNACK")
}

/// (topic, alias, payload) of each PUBLISH sent to `conn`.
fn received(out: &[Action], conn: ConnId) -> Vec<(String, Option<u16>, String)> {
    sent(out, conn)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.topic.to_string(),
                p.properties.topic_alias.map(|a| a.get()),
                String::from_utf8(p.payload.to_vec()).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

fn disconnect_reason(out: &[Action], conn: ConnId) -> Option<ReasonCode> {
    sent(out, conn).into_iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

#[test]
fn connack_announces_the_configured_maximum_or_none() {
    let mut h = Harness::new(BrokerConfig {
        topic_alias_maximum: 7,
        ..config()
    });
    assert_eq!(
        connect_v5(&mut h, 1, "a", None)
            .properties
            .topic_alias_maximum,
        Some(7)
    );
    let mut h = Harness::new(BrokerConfig {
        topic_alias_maximum: 0,
        ..config()
    });
    assert_eq!(
        connect_v5(&mut h, 1, "a", None)
            .properties
            .topic_alias_maximum,
        None
    );
}

#[test]
fn inbound_alias_is_set_then_used_up_to_the_maximum() {
    let mut h = Harness::new(BrokerConfig {
        topic_alias_maximum: 3,
        ..config()
    });
    connect_v5(&mut h, 1, "sub", None);
    h.send(1, subscribe(1, &[("ta/#", QoS::AtMostOnce)]));
    connect_v5(&mut h, 2, "pub", None);
    // [MQTT-3.3.2-12] every alias from 1 to the announced maximum is accepted.
    let out = h.send(2, aliased_publish("ta/x", "1", QosPid::AtMostOnce, Some(3)));
    assert_eq!(received(&out, 1), [("ta/x".into(), None, "1".into())]);
    let out = h.send(
        2,
        aliased_publish("", "2", QosPid::AtLeastOnce(pid(1)), Some(3)),
    );
    assert_eq!(received(&out, 1), [("ta/x".into(), None, "2".into())]);
    assert!(!closed(&out, 2));
    // A new topic on the same alias replaces the mapping.
    h.send(2, aliased_publish("ta/y", "3", QosPid::AtMostOnce, Some(3)));
    let out = h.send(2, aliased_publish("", "4", QosPid::AtMostOnce, Some(3)));
    assert_eq!(received(&out, 1), [("ta/y".into(), None, "4".into())]);
}

#[test]
fn inbound_alias_above_the_maximum_closes_with_0x94() {
    let mut h = Harness::new(BrokerConfig {
        topic_alias_maximum: 3,
        ..config()
    });
    connect_v5(&mut h, 1, "pub", None);
    let out = h.send(1, aliased_publish("ta/x", "1", QosPid::AtMostOnce, Some(4)));
    assert_eq!(
        disconnect_reason(&out, 1),
        Some(ReasonCode::TopicAliasInvalid)
    );
    assert!(closed(&out, 1));
    // With no maximum announced, any alias is above it.
    let mut h = Harness::new(BrokerConfig {
        topic_alias_maximum: 0,
        ..config()
    });
    connect_v5(&mut h, 1, "pub", None);
    let out = h.send(1, aliased_publish("ta/x", "1", QosPid::AtMostOnce, Some(1)));
    assert_eq!(
        disconnect_reason(&out, 1),
        Some(ReasonCode::TopicAliasInvalid)
    );
}

#[test]
fn inbound_mappings_do_not_survive_the_connection() {
    let mut h = Harness::new(config());
    connect_v5(&mut h, 1, "sub", None);
    h.send(1, subscribe(1, &[("ta/#", QoS::AtMostOnce)]));
    connect_v5(&mut h, 2, "pub", None);
    h.send(2, aliased_publish("ta/x", "1", QosPid::AtMostOnce, Some(1)));
    h.send(2, Packet::Disconnect(Disconnect::default()));
    // [MQTT-3.3.2-7] the new connection of the same client has no alias 1.
    connect_v5(&mut h, 3, "pub", None);
    let out = h.send(3, aliased_publish("", "2", QosPid::AtMostOnce, Some(1)));
    assert_eq!(disconnect_reason(&out, 3), Some(ReasonCode::ProtocolError));
    assert!(closed(&out, 3));
    assert!(received(&out, 1).is_empty());
}

#[test]
fn outbound_aliases_only_for_clients_that_allow_them_and_within_their_maximum() {
    let mut h = Harness::new(config());
    connect_v5(&mut h, 1, "none", None);
    connect_v5(&mut h, 2, "two", Some(2));
    h.send(1, subscribe(1, &[("ta/#", QoS::AtLeastOnce)]));
    h.send(2, subscribe(1, &[("ta/#", QoS::AtLeastOnce)]));
    connect_v5(&mut h, 3, "pub", None);
    let mut to_none = Vec::new();
    let mut to_two = Vec::new();
    for (i, topic) in ["ta/one", "ta/one", "ta/two", "ta/thr", "ta/one", "ta/thr"]
        .iter()
        .enumerate()
    {
        let payload = i.to_string();
        let out = h.send(
            3,
            aliased_publish(
                topic,
                &payload,
                QosPid::AtLeastOnce(pid(i as u16 + 1)),
                None,
            ),
        );
        to_none.extend(received(&out, 1));
        to_two.extend(received(&out, 2));
        // Acknowledge so the window never fills.
        for (conn, packets) in [(1, sent(&out, 1)), (2, sent(&out, 2))] {
            for p in packets {
                if let Packet::Publish(p) = p {
                    h.send(conn, Packet::PubAck(Ack::new(p.packet_id().unwrap())));
                }
            }
        }
    }
    // [MQTT-3.1.2-27] none for a client that announced no maximum.
    assert!(to_none.iter().all(|(_, a, _)| a.is_none()));
    // [MQTT-3.1.2-26] [MQTT-3.3.2-11] never above 2; set with the topic, then used alone;
    // the least recently used alias moves to a new topic.
    let expected: Vec<(String, Option<u16>, String)> = vec![
        ("ta/one".into(), Some(1), "0".into()),
        ("".into(), Some(1), "1".into()),
        ("ta/two".into(), Some(2), "2".into()),
        ("ta/thr".into(), Some(1), "3".into()),
        ("ta/one".into(), Some(2), "4".into()),
        ("".into(), Some(1), "5".into()),
    ];
    assert_eq!(to_two, expected);
}

#[test]
fn outbound_qos0_uses_but_never_sets_an_alias_and_a_new_connection_starts_afresh() {
    let mut h = Harness::new(config());
    connect_v5(&mut h, 1, "sub", Some(5));
    h.send(1, subscribe(1, &[("ta/#", QoS::AtLeastOnce)]));
    connect_v5(&mut h, 2, "pub", None);
    let out = h.send(2, aliased_publish("ta/long", "a", QosPid::AtMostOnce, None));
    assert_eq!(received(&out, 1), [("ta/long".into(), None, "a".into())]);
    let out = h.send(
        2,
        aliased_publish("ta/long", "b", QosPid::AtLeastOnce(pid(1)), None),
    );
    assert_eq!(received(&out, 1), [("ta/long".into(), Some(1), "b".into())]);
    h.send(1, Packet::PubAck(Ack::new(pid(1))));
    let out = h.send(2, aliased_publish("ta/long", "c", QosPid::AtMostOnce, None));
    assert_eq!(received(&out, 1), [("".into(), Some(1), "c".into())]);
    // A new connection: the alias is set up again before it is used alone [MQTT-3.3.2-7].
    h.end(1);
    let mut c = connect_packet("sub", true, ProtocolVersion::V5);
    c.properties.topic_alias_maximum = Some(5);
    h.connect_with(3, c);
    h.send(3, subscribe(1, &[("ta/#", QoS::AtLeastOnce)]));
    let out = h.send(2, aliased_publish("ta/long", "d", QosPid::AtMostOnce, None));
    assert_eq!(received(&out, 3), [("ta/long".into(), None, "d".into())]);
}

#[test]
fn outbound_alias_is_not_set_when_it_would_exceed_the_clients_maximum_packet_size() {
    let mut h = Harness::new(config());
    let mut c = connect_packet("sub", true, ProtocolVersion::V5);
    c.properties.topic_alias_maximum = Some(5);
    // PUBLISH QoS 1 "ta/long" with payload "x": 2 + 2 + 7 + 2 + 1 (properties) + 1 = 15 bytes.
    c.properties.maximum_packet_size = std::num::NonZeroU32::new(15);
    h.connect_with(1, c);
    h.send(1, subscribe(1, &[("ta/#", QoS::AtLeastOnce)]));
    connect_v5(&mut h, 2, "pub", None);
    let out = h.send(
        2,
        aliased_publish("ta/long", "x", QosPid::AtLeastOnce(pid(1)), None),
    );
    assert_eq!(received(&out, 1), [("ta/long".into(), None, "x".into())]);
}

#[test]
fn no_maximum_is_announced_where_it_would_not_fit_the_clients_maximum_packet_size() {
    let mut h = Harness::new(config());
    let mut c = connect_packet("small", true, ProtocolVersion::V5);
    // The CONNACK without a Topic Alias Maximum: fixed header 2, flags and reason 2,
    // properties: length 1, Maximum Packet Size 5, Receive Maximum 3, Shared Subscription
    // Available 2 = 15 bytes; with it, 18.
    c.properties.maximum_packet_size = std::num::NonZeroU32::new(16);
    let out = h.connect_with(1, c);
    let ack = connack(&out, 1).expect("CONNACK");
    assert_eq!(ack.properties.topic_alias_maximum, None);
    // [MQTT-3.1.2-24] the CONNACK fits, and with no maximum announced no alias is accepted.
    assert!(codec::encoded_len(&Packet::ConnAck(ack), ProtocolVersion::V5).unwrap() <= 16);
    let out = h.send(1, aliased_publish("ta/x", "1", QosPid::AtMostOnce, Some(1)));
    assert_eq!(
        disconnect_reason(&out, 1),
        Some(ReasonCode::TopicAliasInvalid)
    );
}

#[test]
fn a_publish_with_its_alias_alone_is_held_for_a_full_queue_like_one_with_its_topic() {
    let mut h = Harness::new(BrokerConfig {
        max_inflight_messages: 1,
        max_queued_messages: 1,
        ..config()
    });
    connect_v5(&mut h, 1, "pub", None);
    let mut c = connect_packet("sub", false, ProtocolVersion::V5);
    c.properties.session_expiry_interval_secs = Some(60);
    h.connect_with(2, c);
    h.send(2, subscribe(1, &[("ta/#", QoS::AtLeastOnce)]));
    // One in flight, one queued: the queue is full.
    h.send(
        1,
        aliased_publish("ta/x", "1", QosPid::AtLeastOnce(pid(1)), Some(1)),
    );
    h.send(
        1,
        aliased_publish("", "2", QosPid::AtLeastOnce(pid(2)), Some(1)),
    );
    let third = aliased_publish("", "3", QosPid::AtLeastOnce(pid(3)), Some(1));
    let Packet::Publish(third) = third else {
        unreachable!()
    };
    assert_eq!(h.core.publish_blocker(1, &third).as_deref(), Some("sub"));
}
