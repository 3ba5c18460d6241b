//! The client against a real mosquitto broker on a loopback port: round trips at every QoS,
//! surviving a broker restart, and each client guarantee provoked with faults injected into
//! the client's own TCP stream (the broker stays real).

mod client_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client_support::{options, payloads, wait_for, FaultConnector, Mosquitto};
use simqtt::client::{
    Client, ClientError, Completion, EventKind, FilePersistence, MemoryPersistence,
};
use simqtt::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use simqtt::store::fs::{SharedFs, StdFs};
use simqtt::transport::tcp::TcpConnector;

const V311: ProtocolVersion = ProtocolVersion::V311;

async fn plain_client(
    broker: &Mosquitto,
    id: &str,
    clean: bool,
) -> (Client, tokio::sync::mpsc::Receiver<simqtt::client::Event>) {
    let (client, events, _) = Client::connect(
        options(&broker.addr(), id, clean),
        Arc::new(TcpConnector),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .expect("connect to mosquitto");
    (client, events)
}

fn dup_publishes(packets: &[Packet]) -> Vec<(u16, bool, Bytes)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.packet_id().map_or(0, |i| i.get()),
                p.dup,
                p.payload.clone(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn round_trip_at_every_qos() {
    let broker = Mosquitto::start(false);
    let (sub, mut sub_events) = plain_client(&broker, "rt-sub", true).await;
    let granted = sub.subscribe(&[("rt/#", QoS::ExactlyOnce)]).await.unwrap();
    assert_eq!(granted, vec![ReasonCode::GrantedQoS2]);
    let (publisher, mut pub_events) = plain_client(&broker, "rt-pub", true).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let token = publisher
            .publish(
                &format!("rt/{}", qos.as_u8()),
                format!("q{}", qos.as_u8()),
                qos,
                false,
            )
            .await
            .unwrap();
        assert_eq!(token.wait().await, Ok(Completion::Published));
    }
    let mut seen = Vec::new();
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = wait_for(&mut sub_events, &mut seen, 5, "three messages", |k| {
            matches!(k, EventKind::MessageArrived(_))
        })
        .await;
        if let EventKind::MessageArrived(m) = event.kind {
            got.push((m.topic.to_string(), m.payload, m.qos));
        }
    }
    assert_eq!(
        got,
        vec![
            ("rt/0".into(), Bytes::from("q0"), QoS::AtMostOnce),
            ("rt/1".into(), Bytes::from("q1"), QoS::AtLeastOnce),
            ("rt/2".into(), Bytes::from("q2"), QoS::ExactlyOnce),
        ]
    );
    // Delivery events for the three publishes, each at its QoS.
    let mut pub_seen = Vec::new();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        wait_for(
            &mut pub_events,
            &mut pub_seen,
            5,
            "delivery",
            |k| matches!(k, EventKind::DeliveryComplete { qos: q, .. } if *q == qos),
        )
        .await;
    }
    // No duplicate QoS 2 shows up afterwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(event) = sub_events.try_recv() {
        seen.push(event);
    }
    assert_eq!(payloads(&seen).len(), 3, "{seen:#?}");
    assert_eq!(sub.unsubscribe(&["rt/#"]).await, Ok(vec![]));
    publisher.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test]
async fn subscriber_keeps_receiving_after_broker_restart() {
    let mut broker = Mosquitto::start(true);
    let (sub, mut events) = plain_client(&broker, "keeper", false).await;
    sub.subscribe(&[("keep/#", QoS::AtLeastOnce)])
        .await
        .unwrap();
    let (publisher, _pe) = plain_client(&broker, "keeper-pub", true).await;
    publisher
        .publish("keep/a", "before", QoS::AtLeastOnce, false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let mut seen = Vec::new();
    wait_for(
        &mut events,
        &mut seen,
        5,
        "message before restart",
        |k| matches!(k, EventKind::MessageArrived(m) if m.payload == "before"),
    )
    .await;
    publisher.kill();

    broker.restart();
    wait_for(&mut events, &mut seen, 5, "connection lost", |k| {
        matches!(k, EventKind::ConnectionLost { .. })
    })
    .await;
    let back = wait_for(&mut events, &mut seen, 10, "reconnect", |k| {
        matches!(k, EventKind::ConnectComplete { .. })
    })
    .await;
    assert_eq!(
        back.kind,
        EventKind::ConnectComplete {
            reconnect: true,
            session_present: true
        },
        "mosquitto restored the session from its persistence file; log:\n{}",
        broker.log()
    );
    let (publisher, _pe) = plain_client(&broker, "keeper-pub2", true).await;
    publisher
        .publish("keep/b", "after", QoS::AtLeastOnce, false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        5,
        "message after restart",
        |k| matches!(k, EventKind::MessageArrived(m) if m.payload == "after"),
    )
    .await;
    sub.disconnect().await;
}

#[tokio::test]
async fn unacked_publishes_are_resent_with_dup_after_reconnect() {
    let broker = Mosquitto::start(false);
    let (sub, mut sub_events) = plain_client(&broker, "dup-sub", true).await;
    sub.subscribe(&[("dup/#", QoS::ExactlyOnce)]).await.unwrap();

    let connector = FaultConnector::default();
    let (publisher, mut events, _) = Client::connect(
        options(&broker.addr(), "dup-pub", false),
        Arc::new(connector.clone()),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .unwrap();
    // The network eats everything the publisher sends from now on.
    connector
        .stream(0)
        .drop_writes
        .store(true, Ordering::SeqCst);
    let one = publisher
        .publish("dup/1", "one", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let two = publisher
        .publish("dup/2", "two", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let mut seen = Vec::new();
    wait_for(&mut events, &mut seen, 10, "connection lost", |k| {
        matches!(k, EventKind::ConnectionLost { .. })
    })
    .await;
    assert_eq!(one.wait().await, Ok(Completion::Published));
    assert_eq!(two.wait().await, Ok(Completion::Published));
    assert_eq!(connector.connections(), 2);
    let resent = dup_publishes(&connector.written(1, V311));
    assert_eq!(
        resent,
        vec![(1, true, Bytes::from("one")), (2, true, Bytes::from("two"))],
        "resent with the original ids, in order, with DUP set"
    );
    let mut sub_seen = Vec::new();
    for payload in ["one", "two"] {
        wait_for(
            &mut sub_events,
            &mut sub_seen,
            5,
            payload,
            |k| matches!(k, EventKind::MessageArrived(m) if m.payload == payload),
        )
        .await;
    }
    publisher.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test]
async fn pubrel_flow_resumes_after_reconnect() {
    let broker = Mosquitto::start(false);
    let (sub, mut sub_events) = plain_client(&broker, "rel-sub", true).await;
    sub.subscribe(&[("rel", QoS::ExactlyOnce)]).await.unwrap();

    let connector = FaultConnector::default();
    // PUBREL (0x62) on the first connection is lost, and so is everything after it.
    connector
        .next_drop_from_first_byte
        .store(0x62, Ordering::SeqCst);
    let (publisher, _events, _) = Client::connect(
        options(&broker.addr(), "rel-pub", false),
        Arc::new(connector.clone()),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .unwrap();
    let token = publisher
        .publish("rel", "once", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), token.wait()).await,
        Ok(Ok(Completion::Published))
    );
    let first = connector.written(0, V311);
    assert!(first.iter().any(|p| matches!(p, Packet::Publish(_))));
    let second = connector.written(1, V311);
    assert!(
        second
            .iter()
            .any(|p| matches!(p, Packet::PubRel(a) if a.packet_id.get() == 1)),
        "PUBREL resent on the new connection: {second:?}"
    );
    assert!(
        dup_publishes(&second).is_empty(),
        "no PUBLISH after PUBREC [MQTT-4.3.3-1]: {second:?}"
    );
    let mut seen = Vec::new();
    wait_for(&mut sub_events, &mut seen, 5, "the message", |k| {
        matches!(k, EventKind::MessageArrived(_))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(e) = sub_events.try_recv() {
        seen.push(e);
    }
    assert_eq!(payloads(&seen), vec![Bytes::from("once")]);
    publisher.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test]
async fn file_persistence_resends_after_a_client_restart() {
    let broker = Mosquitto::start(false);
    let (sub, mut sub_events) = plain_client(&broker, "fp-sub", true).await;
    sub.subscribe(&[("fp/#", QoS::ExactlyOnce)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs: SharedFs = Arc::new(StdFs);

    // First life: a QoS 2 message gets as far as PUBREC (its PUBREL is lost), then a QoS 1
    // message goes into the void, then the process dies.
    let connector = FaultConnector::default();
    connector
        .next_drop_from_first_byte
        .store(0x62, Ordering::SeqCst);
    let (first, mut events, _) = Client::connect(
        options(&broker.addr(), "fp-pub", false),
        Arc::new(connector.clone()),
        Box::new(FilePersistence::new(fs.clone(), dir.path(), "fp-pub")),
    )
    .await
    .unwrap();
    let _q2 = first
        .publish("fp/2", "two", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let mut seen = Vec::new();
    wait_for(&mut events, &mut seen, 5, "PUBLISH written", |k| {
        matches!(k, EventKind::PublishSent { .. })
    })
    .await;
    // Wait until PUBREC came back and PUBREL was (not) sent.
    for _ in 0..100 {
        if connector.stream(0).drop_writes.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(connector.stream(0).drop_writes.load(Ordering::SeqCst));
    let _q1 = first
        .publish("fp/1", "one", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    wait_for(&mut events, &mut seen, 5, "second PUBLISH written", |k| {
        matches!(
            k,
            EventKind::PublishSent {
                qos: QoS::AtLeastOnce,
                ..
            }
        )
    })
    .await;
    first.kill();
    drop(events);

    // Second life: same id, same directory.
    let connector = FaultConnector::default();
    let (second, mut events, session_present) = Client::connect(
        options(&broker.addr(), "fp-pub", false),
        Arc::new(connector.clone()),
        Box::new(FilePersistence::new(fs.clone(), dir.path(), "fp-pub")),
    )
    .await
    .unwrap();
    assert!(session_present);
    let mut seen = Vec::new();
    for _ in 0..2 {
        wait_for(&mut events, &mut seen, 5, "restored flows complete", |k| {
            matches!(k, EventKind::DeliveryComplete { .. })
        })
        .await;
    }
    let written = connector.written(0, V311);
    assert!(
        written
            .iter()
            .any(|p| matches!(p, Packet::PubRel(a) if a.packet_id.get() == 1)),
        "{written:?}"
    );
    assert_eq!(dup_publishes(&written), vec![(2, true, Bytes::from("one"))]);
    let mut sub_seen = Vec::new();
    for payload in ["two", "one"] {
        wait_for(
            &mut sub_events,
            &mut sub_seen,
            5,
            payload,
            |k| matches!(k, EventKind::MessageArrived(m) if m.payload == payload),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(e) = sub_events.try_recv() {
        sub_seen.push(e);
    }
    assert_eq!(payloads(&sub_seen).len(), 2, "{sub_seen:#?}");
    second.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test]
async fn incoming_qos2_reaches_the_application_once() {
    let broker = Mosquitto::start(false);
    let connector = FaultConnector::default();
    let (sub, mut events, _) = Client::connect(
        options(&broker.addr(), "once-sub", false),
        Arc::new(connector.clone()),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .unwrap();
    sub.subscribe(&[("once", QoS::ExactlyOnce)]).await.unwrap();
    // The subscriber's PUBREC (0x50) is lost, so mosquitto must resend the PUBLISH.
    connector
        .stream(0)
        .drop_from_first_byte
        .store(0x50, Ordering::SeqCst);
    let (publisher, _pe) = plain_client(&broker, "once-pub", true).await;
    publisher
        .publish("once", "exactly", QoS::ExactlyOnce, false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let mut seen = Vec::new();
    wait_for(&mut events, &mut seen, 10, "reconnect", |k| {
        matches!(
            k,
            EventKind::ConnectComplete {
                reconnect: true,
                ..
            }
        )
    })
    .await;
    // Give mosquitto time to resend and the flow to finish.
    for _ in 0..100 {
        if connector
            .written(1, V311)
            .iter()
            .any(|p| matches!(p, Packet::PubComp(_)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = connector.received(1, V311);
    assert!(
        received
            .iter()
            .any(|p| matches!(p, Packet::Publish(p) if p.dup && p.payload == "exactly")),
        "mosquitto resent the PUBLISH with DUP: {received:?}"
    );
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert_eq!(payloads(&seen), vec![Bytes::from("exactly")], "{seen:#?}");
    sub.disconnect().await;
}

#[tokio::test]
async fn a_dead_broker_is_detected_by_keepalive_and_reconnected() {
    let broker = Mosquitto::start(false);
    let connector = FaultConnector::default();
    let (client, mut events, _) = Client::connect(
        options(&broker.addr(), "ka", true),
        Arc::new(connector.clone()),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let up = wait_for(&mut events, &mut seen, 2, "connected", |k| {
        matches!(k, EventKind::ConnectComplete { .. })
    })
    .await;
    // The broker goes silent: nothing it sends arrives (PINGRESP included).
    connector.stream(0).drop_reads.store(true, Ordering::SeqCst);
    let lost = wait_for(&mut events, &mut seen, 5, "connection lost", |k| {
        matches!(k, EventKind::ConnectionLost { .. })
    })
    .await;
    assert_eq!(
        lost.kind,
        EventKind::ConnectionLost {
            cause: ClientError::KeepaliveTimeout
        }
    );
    // PINGREQ after 1 s idle, no PINGRESP within 1 s more.
    let silent_for = lost.at - up.at;
    assert!(
        silent_for >= Duration::from_millis(1900) && silent_for < Duration::from_secs(4),
        "{silent_for:?}"
    );
    let scheduled = wait_for(&mut events, &mut seen, 2, "backoff", |k| {
        matches!(k, EventKind::ReconnectScheduled { .. })
    })
    .await;
    let EventKind::ReconnectScheduled { delay, .. } = scheduled.kind else {
        unreachable!()
    };
    assert!(delay >= Duration::from_millis(25) && delay <= Duration::from_millis(400));
    let back = wait_for(&mut events, &mut seen, 5, "reconnected", |k| {
        matches!(k, EventKind::ConnectComplete { .. })
    })
    .await;
    assert_eq!(
        back.kind,
        EventKind::ConnectComplete {
            reconnect: true,
            session_present: false
        }
    );
    assert!(back.at - scheduled.at >= delay);
    assert_eq!(back.connection, 2);
    client.disconnect().await;
}

#[tokio::test]
async fn clean_session_reconnect_resubscribes() {
    let broker = Mosquitto::start(false);
    let connector = FaultConnector::default();
    let (sub, mut events, _) = Client::connect(
        options(&broker.addr(), "resub", true),
        Arc::new(connector.clone()),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .unwrap();
    sub.subscribe(&[("resub/#", QoS::AtLeastOnce)])
        .await
        .unwrap();
    connector.stream(0).drop_reads.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    wait_for(&mut events, &mut seen, 10, "clean reconnect", |k| {
        matches!(
            k,
            EventKind::ConnectComplete {
                reconnect: true,
                session_present: false
            }
        )
    })
    .await;
    let resub = wait_for(&mut events, &mut seen, 5, "resubscribe", |k| {
        matches!(
            k,
            EventKind::SubscribeComplete {
                resubscribe: true,
                ..
            }
        )
    })
    .await;
    let EventKind::SubscribeComplete {
        filters, granted, ..
    } = resub.kind
    else {
        unreachable!()
    };
    assert_eq!(filters[0].as_str(), "resub/#");
    assert_eq!(granted, vec![ReasonCode::GrantedQoS1]);
    let (publisher, _pe) = plain_client(&broker, "resub-pub", true).await;
    publisher
        .publish("resub/x", "still here", QoS::AtLeastOnce, false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        5,
        "message after resubscribe",
        |k| matches!(k, EventKind::MessageArrived(m) if m.payload == "still here"),
    )
    .await;
    sub.disconnect().await;
}

#[tokio::test]
async fn a_full_inflight_window_makes_publish_wait() {
    let broker = Mosquitto::start(false);
    let connector = FaultConnector::default();
    let mut o = options(&broker.addr(), "window", false);
    o.inflight_window = 2;
    let (client, mut events, _) = Client::connect(
        o,
        Arc::new(connector.clone()),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .unwrap();
    connector
        .stream(0)
        .drop_writes
        .store(true, Ordering::SeqCst);
    let a = client
        .publish("w", "a", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let b = client
        .publish("w", "b", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    // The third call itself blocks: the window is full and nothing is acknowledged.
    let third = tokio::time::timeout(
        Duration::from_millis(500),
        client.publish("w", "c", QoS::AtLeastOnce, false),
    )
    .await;
    assert!(third.is_err(), "publish returned with a full window");
    // After the reconnect the first two complete and room opens up.
    let c = tokio::time::timeout(
        Duration::from_secs(10),
        client.publish("w", "c", QoS::AtLeastOnce, false),
    )
    .await
    .expect("publish got a window slot after acknowledgements")
    .unwrap();
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e.kind, EventKind::DeliveryComplete { .. })),
        "a slot opened only after a delivery completed: {seen:#?}"
    );
    for token in [a, b, c] {
        assert_eq!(token.wait().await, Ok(Completion::Published));
    }
    client.disconnect().await;
}

#[tokio::test]
async fn mqtt5_round_trip_and_persistent_session() {
    let broker = Mosquitto::start(false);
    let connect5 = |id: &str, clean: bool| {
        let mut o = options(&broker.addr(), id, clean);
        o.protocol = ProtocolVersion::V5;
        Client::connect(
            o,
            Arc::new(TcpConnector),
            Box::new(MemoryPersistence::new()),
        )
    };
    let (sub, mut events, present) = connect5("v5-sub", false).await.unwrap();
    assert!(!present);
    assert_eq!(
        sub.subscribe(&[("v5/#", QoS::ExactlyOnce)]).await,
        Ok(vec![ReasonCode::GrantedQoS2])
    );
    let (publisher, _pe, _) = connect5("v5-pub", true).await.unwrap();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let token = publisher
            .publish("v5/t", format!("v5 q{}", qos.as_u8()), qos, false)
            .await
            .unwrap();
        assert_eq!(token.wait().await, Ok(Completion::Published));
    }
    let mut seen = Vec::new();
    wait_for(
        &mut events,
        &mut seen,
        5,
        "v5 QoS 2 message",
        |k| matches!(k, EventKind::MessageArrived(m) if m.payload == "v5 q2"),
    )
    .await;
    assert_eq!(payloads(&seen).len(), 3);

    // The session outlives the connection (session expiry "never" by default with -c), and
    // messages published meanwhile are waiting.
    sub.disconnect().await;
    publisher
        .publish("v5/t", "while away", QoS::AtLeastOnce, false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let (sub, mut events, present) = connect5("v5-sub", false).await.unwrap();
    assert!(present, "mosquitto kept the 5.0 session");
    let mut seen = Vec::new();
    wait_for(
        &mut events,
        &mut seen,
        5,
        "queued message",
        |k| matches!(k, EventKind::MessageArrived(m) if m.payload == "while away"),
    )
    .await;
    // 5.0 UNSUBACK carries one reason code per filter.
    assert_eq!(
        sub.unsubscribe(&["v5/#"]).await,
        Ok(vec![ReasonCode::Success])
    );
    sub.disconnect().await;
    publisher.disconnect().await;
}
