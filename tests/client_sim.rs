//! The client inside turmoil against the simqtt broker: the same `Client` code as over TCP,
//! with `SimConnector`. Seeded loss and partitions break connections; the client notices
//! (keepalive), reconnects with backoff, resubscribes when its session is gone, and with a
//! persistent session no QoS 1/2 message is lost. A client host crash keeps its in-flight
//! publishes on turmoil's simulated disk (file persistence over `SimFs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simqtt::broker::{Broker, BrokerConfig};
use simqtt::client::{
    Client, ClientError, Completion, ConnectOptions, Event, EventKind, FilePersistence,
    MemoryPersistence, ReconnectOptions, ResubscribePolicy,
};
use simqtt::codec::QoS;
use simqtt::store::fs::{SharedFs, SimFs};
use simqtt::store::MemoryStore;
use simqtt::transport::sim::{SimConnector, SimListener};

const BROKER: &str = "broker:1883";

fn broker_host(sim: &mut turmoil::Sim<'_>, seed: u64) {
    sim.host("broker", move || async move {
        let config = BrokerConfig {
            rng_seed: Some(seed),
            sys_interval_secs: 0,
            ..BrokerConfig::default()
        };
        let (broker, _handle) = Broker::new(Box::new(MemoryStore::new()), config);
        let listener = SimListener::bind("0.0.0.0:1883").await?;
        broker.run(listener, std::future::pending::<()>()).await?;
        Ok(())
    });
}

fn options(id: &str, clean: bool, seed: u64) -> ConnectOptions {
    let mut o = ConnectOptions::new(BROKER, id);
    o.clean_session = clean;
    o.keep_alive_secs = 2;
    o.connect_timeout = Duration::from_secs(3);
    o.inflight_window = 5;
    o.reconnect = Some(ReconnectOptions {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        seed,
        max_attempts: None,
    });
    o
}

/// One line per client event: simulated milliseconds since the host started, the connection
/// attempt, and the event. What a scenario trace would hold.
type Trace = Arc<Mutex<Vec<String>>>;

fn record(trace: &Trace, who: &str, start: tokio::time::Instant, event: &Event) {
    trace.lock().unwrap().push(format!(
        "{:>7}ms {who} #{} {:?}",
        (event.at - start).as_millis(),
        event.connection,
        event.kind
    ));
}

struct Outcome {
    /// payload → (QoS it was published at, times the subscriber's application got it)
    delivered: BTreeMap<String, (QoS, usize)>,
    published: Vec<(String, QoS)>,
    subscriber_reconnects: usize,
    publisher_reconnects: usize,
    resubscribes: usize,
    trace: Vec<String>,
}

/// Publisher and subscriber (both persistent sessions unless `clean_subscriber`) exchange
/// QoS 1/2 messages while a seeded nemesis partitions links and makes them lossy.
fn faulty_exchange(seed: u64, clean_subscriber: bool) -> Outcome {
    const MESSAGES: usize = 60;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    println!("seed {seed}");
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .repair_rate(0.05)
        .simulation_duration(Duration::from_secs(600))
        .build();
    broker_host(&mut sim, seed);

    let trace: Trace = Arc::default();
    let delivered = Arc::new(Mutex::new(BTreeMap::<String, (QoS, usize)>::new()));
    let published = Arc::new(Mutex::new(Vec::new()));
    let subscribed = Arc::new(AtomicBool::new(false));
    let publisher_done = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new((0usize, 0usize, 0usize)));

    {
        let (trace, delivered, subscribed, publisher_done, counts) = (
            trace.clone(),
            delivered.clone(),
            subscribed.clone(),
            publisher_done.clone(),
            counts.clone(),
        );
        sim.client("subscriber", async move {
            let start = tokio::time::Instant::now();
            let mut o = options("sub", clean_subscriber, seed);
            o.resubscribe = ResubscribePolicy::WhenSessionNotPresent;
            let (client, mut events, _) = Client::connect(
                o,
                Arc::new(SimConnector),
                Box::new(MemoryPersistence::new()),
            )
            .await?;
            client.subscribe(&[("t/#", QoS::ExactlyOnce)]).await?;
            subscribed.store(true, Ordering::SeqCst);
            let mut quiet_since = None;
            loop {
                let event = match tokio::time::timeout(Duration::from_secs(1), events.recv()).await
                {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    Err(_) => {
                        // Done once the publisher finished and nothing arrived for 10 s.
                        if publisher_done.load(Ordering::SeqCst) {
                            let since = *quiet_since.get_or_insert(tokio::time::Instant::now());
                            if since.elapsed() > Duration::from_secs(10) {
                                break;
                            }
                        }
                        continue;
                    }
                };
                quiet_since = None;
                record(&trace, "sub", start, &event);
                match event.kind {
                    EventKind::MessageArrived(m) => {
                        let payload = String::from_utf8_lossy(&m.payload).to_string();
                        delivered
                            .lock()
                            .unwrap()
                            .entry(payload)
                            .or_insert((m.qos, 0))
                            .1 += 1;
                    }
                    EventKind::ConnectComplete {
                        reconnect: true, ..
                    } => counts.lock().unwrap().0 += 1,
                    EventKind::SubscribeComplete {
                        resubscribe: true, ..
                    } => counts.lock().unwrap().2 += 1,
                    _ => {}
                }
            }
            client.disconnect().await;
            Ok(())
        });
    }
    {
        let (trace, published, subscribed, publisher_done, counts) = (
            trace.clone(),
            published.clone(),
            subscribed.clone(),
            publisher_done.clone(),
            counts.clone(),
        );
        let gaps: Vec<u64> = (0..MESSAGES).map(|_| rng.random_range(50..400)).collect();
        sim.client("publisher", async move {
            let start = tokio::time::Instant::now();
            while !subscribed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (client, mut events, _) = Client::connect(
                options("pub", false, seed + 1),
                Arc::new(SimConnector),
                Box::new(MemoryPersistence::new()),
            )
            .await?;
            let drain = {
                let trace = trace.clone();
                tokio::spawn(async move {
                    let mut reconnects = 0;
                    while let Some(event) = events.recv().await {
                        record(&trace, "pub", start, &event);
                        if let EventKind::ConnectComplete {
                            reconnect: true, ..
                        } = event.kind
                        {
                            reconnects += 1;
                        }
                    }
                    reconnects
                })
            };
            let mut tokens = Vec::new();
            for (i, gap) in gaps.into_iter().enumerate() {
                let qos = if i % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let payload = format!("m{i:03}");
                // Waits while the in-flight window is full (e.g. during a partition).
                let token = client
                    .publish(&format!("t/{}", i % 3), payload.clone(), qos, false)
                    .await?;
                published.lock().unwrap().push((payload, qos));
                tokens.push(token);
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            for token in tokens {
                assert_eq!(token.wait().await, Ok(Completion::Published));
            }
            client.disconnect().await;
            counts.lock().unwrap().1 = drain.await?;
            publisher_done.store(true, Ordering::SeqCst);
            Ok(())
        });
    }

    // The nemesis: every few seconds, one of the two clients loses the broker for a while
    // (longer than keepalive, so connections die), or its link turns lossy.
    let mut next_fault = Duration::from_secs(2);
    let mut heal_at = None;
    while !sim.step().expect("simulation failed") {
        let now = sim.elapsed();
        if let Some((at, victim)) = heal_at {
            if now >= at {
                sim.repair(victim, "broker");
                sim.set_link_fail_rate(victim, "broker", 0.0);
                heal_at = None;
                next_fault = now + Duration::from_millis(rng.random_range(1000..4000));
            }
        } else if now >= next_fault && now < Duration::from_secs(30) {
            let victim = if rng.random_bool(0.5) {
                "subscriber"
            } else {
                "publisher"
            };
            if rng.random_bool(0.6) {
                sim.partition(victim, "broker");
            } else {
                sim.set_link_fail_rate(victim, "broker", 0.02);
            }
            heal_at = Some((
                now + Duration::from_millis(rng.random_range(1000..8000)),
                victim,
            ));
        }
    }

    let (subscriber_reconnects, publisher_reconnects, resubscribes) = *counts.lock().unwrap();
    let delivered = delivered.lock().unwrap().clone();
    let published = published.lock().unwrap().clone();
    let trace = trace.lock().unwrap().clone();
    Outcome {
        delivered,
        published,
        subscriber_reconnects,
        publisher_reconnects,
        resubscribes,
        trace,
    }
}

#[test]
fn faults_cause_reconnects_and_no_qos12_message_is_lost_with_a_persistent_session() {
    no_loss_over_seeds(&[1, 2, 3]);
}

/// More seeds: `SIMQTT_CLIENT_SEEDS=1-50 cargo test --test client_sim -- --ignored`.
#[test]
#[ignore]
fn no_loss_over_many_seeds() {
    let range = std::env::var("SIMQTT_CLIENT_SEEDS").unwrap_or_else(|_| "1-20".into());
    let (from, to) = range.split_once('-').unwrap_or((&range, &range));
    let seeds: Vec<u64> = (from.parse().unwrap()..=to.parse().unwrap()).collect();
    no_loss_over_seeds(&seeds);
}

fn no_loss_over_seeds(seeds: &[u64]) {
    let mut reconnects = 0;
    for &seed in seeds {
        let outcome = faulty_exchange(seed, false);
        assert_eq!(outcome.published.len(), 60, "seed {seed}");
        for (payload, qos) in &outcome.published {
            let got = outcome.delivered.get(payload).map_or(0, |(_, n)| *n);
            match qos {
                QoS::ExactlyOnce => assert_eq!(
                    got,
                    1,
                    "seed {seed}: QoS 2 {payload} delivered {got} times\n{}",
                    outcome.trace.join("\n")
                ),
                _ => assert!(
                    got >= 1,
                    "seed {seed}: QoS 1 {payload} lost\n{}",
                    outcome.trace.join("\n")
                ),
            }
        }
        assert_eq!(
            outcome.resubscribes, 0,
            "seed {seed}: the broker kept the session, nothing to resubscribe"
        );
        reconnects += outcome.subscriber_reconnects + outcome.publisher_reconnects;
    }
    assert!(
        reconnects >= 3,
        "the faults did break connections ({reconnects})"
    );
}

#[test]
fn a_clean_session_subscriber_resubscribes_after_each_reconnect() {
    let outcome = (1..=5)
        .map(|seed| faulty_exchange(seed, true))
        .find(|o| o.subscriber_reconnects > 0)
        .expect("some seed partitions the subscriber");
    assert_eq!(
        outcome.resubscribes,
        outcome.subscriber_reconnects,
        "{}",
        outcome.trace.join("\n")
    );
    // A clean session has no subscriptions: a message arriving on a connection after a
    // reconnect can only come from the client's own resubscription on that connection.
    let connection_of = |line: &str| {
        line.split(" sub #")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_string)
    };
    let delivered_after_resubscribe = outcome.trace.iter().any(|line| {
        line.contains(" sub #") && line.contains("MessageArrived") && {
            let conn = connection_of(line);
            outcome
                .trace
                .iter()
                .any(|other| other.contains("resubscribe: true") && connection_of(other) == conn)
        }
    });
    assert!(delivered_after_resubscribe, "{}", outcome.trace.join("\n"));
}

#[test]
fn same_seed_same_client_trace() {
    let a = faulty_exchange(7, false).trace;
    let b = faulty_exchange(7, false).trace;
    assert!(a.len() > 60);
    assert_eq!(a, b);
}

/// A client host that crashes with unacknowledged publishes resends them (DUP) when it comes
/// back, because they were synced to its (simulated) disk before they were sent.
#[test]
fn client_crash_keeps_inflight_publishes_on_the_simulated_disk() -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .rng_seed(11)
        .simulation_duration(Duration::from_secs(120))
        .build();
    broker_host(&mut sim, 11);
    let restarted = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicBool::new(false));
    let resent = Arc::new(Mutex::new(Vec::new()));
    {
        let (restarted, sent, resent) = (restarted.clone(), sent.clone(), resent.clone());
        sim.host("publisher", move || {
            let (restarted, sent, resent) = (restarted.clone(), sent.clone(), resent.clone());
            async move {
                let fs: SharedFs = Arc::new(SimFs);
                let persistence = FilePersistence::new(fs, "/var/lib/client", "pub");
                let (client, mut events) = Client::start(
                    options("pub", false, 5),
                    Arc::new(SimConnector),
                    Box::new(persistence),
                )
                .map_err(|e| e.to_string())?;
                if !restarted.load(Ordering::SeqCst) {
                    while let Some(event) = events.recv().await {
                        if let EventKind::ConnectComplete { .. } = event.kind {
                            break;
                        }
                    }
                    // Connected; the test now cuts the link, so these are never acknowledged.
                    while !sent.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    for i in 0..3 {
                        let _ = client
                            .publish("crash/t", format!("c{i}"), QoS::AtLeastOnce, false)
                            .await;
                    }
                    std::future::pending::<()>().await;
                } else {
                    while let Some(event) = events.recv().await {
                        match event.kind {
                            EventKind::PublishSent { packet_id, dup, .. } => resent
                                .lock()
                                .unwrap()
                                .push((packet_id.map(|p| p.get()), dup)),
                            EventKind::PersistenceWarning { message } => return Err(message.into()),
                            _ => {}
                        }
                    }
                }
                Ok(())
            }
        });
    }
    let received = Arc::new(Mutex::new(Vec::new()));
    {
        let received = received.clone();
        sim.client("subscriber", async move {
            let (client, mut events, _) = Client::connect(
                options("crash-sub", false, 9),
                Arc::new(SimConnector),
                Box::new(MemoryPersistence::new()),
            )
            .await?;
            client.subscribe(&[("crash/#", QoS::AtLeastOnce)]).await?;
            while received.lock().unwrap().len() < 3 {
                let Some(event) = events.recv().await else {
                    break;
                };
                if let EventKind::MessageArrived(m) = event.kind {
                    received.lock().unwrap().push(m.payload);
                }
            }
            client.disconnect().await;
            Ok(())
        });
    }
    // Let both connect, then cut the publisher off and let it publish into the void.
    for _ in 0..2000 {
        sim.step()?;
    }
    sim.partition("publisher", "broker");
    sent.store(true, Ordering::SeqCst);
    for _ in 0..500 {
        sim.step()?;
    }
    assert!(received.lock().unwrap().is_empty());
    sim.crash("publisher");
    sim.repair("publisher", "broker");
    restarted.store(true, Ordering::SeqCst);
    sim.bounce("publisher");
    sim.run()?;
    let received = received.lock().unwrap().clone();
    assert_eq!(received, vec!["c0", "c1", "c2"]);
    assert_eq!(
        resent.lock().unwrap().clone(),
        vec![(Some(1), true), (Some(2), true), (Some(3), true)],
        "restored from disk and resent with DUP, in order, with their ids"
    );
    Ok(())
}

#[test]
fn gives_up_after_max_attempts_when_the_broker_never_comes() -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .rng_seed(3)
        .simulation_duration(Duration::from_secs(120))
        .build();
    // A host that exists but never listens: every connect is refused.
    sim.host("broker", || async {
        std::future::pending::<()>().await;
        Ok(())
    });
    sim.client("client", async {
        let mut o = options("lonely", true, 3);
        o.reconnect.as_mut().unwrap().max_attempts = Some(4);
        let (_client, mut events) = Client::start(
            o,
            Arc::new(SimConnector),
            Box::new(MemoryPersistence::new()),
        )
        .map_err(|e| e.to_string())?;
        let mut failures = 0;
        let mut delays = Vec::new();
        while let Some(event) = events.recv().await {
            match event.kind {
                EventKind::ConnectFailed {
                    cause: ClientError::Unreachable { .. },
                } => failures += 1,
                EventKind::ReconnectScheduled { delay, .. } => delays.push(delay),
                EventKind::Stopped { cause } => {
                    assert_eq!(cause, Some(ClientError::GaveUp(4)));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(failures, 4);
        assert_eq!(delays.len(), 3);
        // Exponential: each ceiling doubles (min 100 ms), jitter keeps at least half of it.
        for (i, d) in delays.iter().enumerate() {
            let ceiling = Duration::from_millis(100 << i);
            assert!(*d >= ceiling / 2 && *d <= ceiling, "{i}: {d:?}");
        }
        Ok(())
    });
    sim.run()
}

/// 5.0: `disconnect_with(DisconnectWithWillMessage)` sends reason 0x04, so the broker publishes
/// the will; a plain DISCONNECT (reason 0) makes it discard the will [MQTT-3.14.4-3]. The first
/// client disconnects plainly, the second with 0x04: only the second's will arrives.
#[test]
fn disconnect_with_will_message_publishes_the_will_in_v5() -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .rng_seed(5)
        .simulation_duration(Duration::from_secs(60))
        .build();
    broker_host(&mut sim, 5);
    sim.client("client", async {
        let mut watch = options("watcher", true, 5);
        watch.protocol = simqtt::codec::ProtocolVersion::V5;
        let (watcher, mut events) = Client::start(
            watch,
            Arc::new(SimConnector),
            Box::new(MemoryPersistence::new()),
        )
        .map_err(|e| e.to_string())?;
        watcher
            .subscribe(&[("will/#", QoS::AtLeastOnce)])
            .await
            .map_err(|e| e.to_string())?;
        for (id, reason) in [
            ("plain", simqtt::codec::ReasonCode::Success),
            (
                "with-will",
                simqtt::codec::ReasonCode::DisconnectWithWillMessage,
            ),
        ] {
            let mut o = options(id, true, 5);
            o.protocol = simqtt::codec::ProtocolVersion::V5;
            o.will = Some(simqtt::client::WillOptions {
                topic: simqtt::codec::TopicName::new(&format!("will/{id}")).unwrap(),
                payload: bytes::Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
            });
            let (client, _events, _) = Client::connect(
                o,
                Arc::new(SimConnector),
                Box::new(MemoryPersistence::new()),
            )
            .await
            .map_err(|e| e.to_string())?;
            client.disconnect_with(reason).await;
        }
        let mut wills = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            if let EventKind::MessageArrived(m) = event.kind {
                wills.push(m.topic.to_string());
            }
        }
        assert_eq!(wills, vec!["will/with-will".to_string()]);
        Ok(())
    });
    sim.run()
}

fn v5_options(id: &str) -> ConnectOptions {
    let mut o = options(id, true, 17);
    o.protocol = simqtt::codec::ProtocolVersion::V5;
    o
}

async fn sim_client(
    o: ConnectOptions,
) -> Result<(Client, tokio::sync::mpsc::Receiver<Event>), String> {
    let (client, events, _) = Client::connect(
        o,
        Arc::new(SimConnector),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((client, events))
}

/// A subscriber whose application reads nothing for 30 s (15 keepalives) while 300 QoS 1
/// messages arrive, far more than its event channel holds. The driver stops reading the
/// socket instead of waiting on the channel, so its PINGREQs keep reaching the broker, which
/// would otherwise close the connection after 1.5 keepalives [MQTT-3.1.2-24]: the connection
/// stays up (one connection, no ConnectionLost), and once the application reads, every
/// message is there, once, in order. Before the fix the driver blocked on the full channel,
/// sent no PINGREQ and was disconnected, losing the clean session's messages.
#[test]
fn a_slow_application_keeps_the_connection_alive_and_loses_nothing() -> turmoil::Result {
    const MESSAGES: usize = 300;
    let mut sim = turmoil::Builder::new()
        .rng_seed(17)
        .simulation_duration(Duration::from_secs(300))
        .build();
    broker_host(&mut sim, 17);
    sim.client("client", async {
        let mut o = options("slow", true, 17);
        o.event_capacity = 16;
        let (slow, mut events) = sim_client(o).await?;
        slow.subscribe(&[("slow/t", QoS::AtLeastOnce)])
            .await
            .map_err(|e| e.to_string())?;
        let (publisher, _publisher_events) = sim_client(options("fast", true, 17)).await?;
        for i in 0..MESSAGES {
            publisher
                .publish("slow/t", format!("m{i}"), QoS::AtLeastOnce, false)
                .await
                .map_err(|e| e.to_string())?
                .wait()
                .await
                .map_err(|e| e.to_string())?;
        }
        // The application is busy elsewhere for 15 keepalives.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let mut got = Vec::new();
        let mut lost = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            assert_eq!(event.connection, 1, "{:?}", event.kind);
            match event.kind {
                EventKind::MessageArrived(m) => {
                    got.push(String::from_utf8_lossy(&m.payload).to_string())
                }
                EventKind::ConnectionLost { cause } => lost.push(cause),
                _ => {}
            }
            if got.len() == MESSAGES {
                break;
            }
        }
        assert!(lost.is_empty(), "{lost:?}");
        let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
        assert_eq!(got, expected);
        Ok(())
    });
    sim.run()
}

/// Every 5.0 publish property reaches a subscriber through the broker unchanged, user
/// properties in order; the request/response helper gets the response carrying its
/// correlation data (and only that one), and times out when nobody answers.
#[test]
fn publish_properties_and_request_response_through_the_broker() -> turmoil::Result {
    use bytes::Bytes;
    use simqtt::codec::{MqttStr, PublishProperties, TopicName};
    let mut sim = turmoil::Builder::new()
        .rng_seed(18)
        .simulation_duration(Duration::from_secs(120))
        .build();
    broker_host(&mut sim, 18);
    sim.client("client", async {
        // A responder: answers each request on its response topic, echoing the correlation
        // data, after a decoy on the same topic with other correlation data.
        let (responder, mut requests) = sim_client(v5_options("responder")).await?;
        responder
            .subscribe(&[("svc/#", QoS::AtLeastOnce)])
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while let Some(event) = requests.recv().await {
                let EventKind::MessageArrived(m) = event.kind else {
                    continue;
                };
                let Some(reply_to) = m.properties.response_topic.clone() else {
                    continue;
                };
                let decoy = PublishProperties {
                    correlation_data: Some(Bytes::from_static(b"someone else")),
                    ..Default::default()
                };
                let answer = PublishProperties {
                    correlation_data: m.properties.correlation_data.clone(),
                    ..Default::default()
                };
                for (payload, properties) in [("decoy", decoy), ("pong", answer)] {
                    let _ = responder
                        .publish_with(
                            reply_to.as_str(),
                            payload,
                            QoS::AtLeastOnce,
                            false,
                            properties,
                        )
                        .await;
                }
            }
        });

        let (watcher, mut watched) = sim_client(v5_options("watcher")).await?;
        watcher
            .subscribe(&[("props/t", QoS::AtLeastOnce)])
            .await
            .map_err(|e| e.to_string())?;
        let (requester, mut requester_events) = sim_client(v5_options("requester")).await?;
        let properties = PublishProperties {
            payload_format_utf8: Some(true),
            message_expiry_interval_secs: Some(3600),
            response_topic: Some(TopicName::new("props/reply").unwrap()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![
                (MqttStr::new("b").unwrap(), MqttStr::new("2").unwrap()),
                (MqttStr::new("a").unwrap(), MqttStr::new("1").unwrap()),
                (MqttStr::new("b").unwrap(), MqttStr::new("3").unwrap()),
            ],
            content_type: Some(MqttStr::new("text/plain").unwrap()),
            ..Default::default()
        };
        requester
            .publish_with(
                "props/t",
                "hello",
                QoS::AtLeastOnce,
                false,
                properties.clone(),
            )
            .await
            .map_err(|e| e.to_string())?
            .wait()
            .await
            .map_err(|e| e.to_string())?;
        let received = loop {
            match watched.recv().await.map(|e| e.kind) {
                Some(EventKind::MessageArrived(m)) => break m,
                Some(_) => continue,
                None => return Err("watcher stopped".into()),
            }
        };
        let mut seen = received.properties.clone();
        // The broker may lower the expiry by the time the message waited [MQTT-3.3.2-6].
        assert!(seen.message_expiry_interval_secs.is_some_and(|s| s <= 3600));
        seen.message_expiry_interval_secs = Some(3600);
        assert_eq!(seen, properties);

        let response = requester
            .request(
                "svc/echo",
                "ping",
                QoS::AtLeastOnce,
                "replies/requester",
                PublishProperties::default(),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&response.payload[..], b"pong");
        assert_eq!(response.topic.as_str(), "replies/requester");
        // The decoy (other correlation data) stayed an ordinary event.
        let decoy = loop {
            match requester_events.recv().await.map(|e| e.kind) {
                Some(EventKind::MessageArrived(m)) => break m,
                Some(_) => continue,
                None => return Err("requester stopped".into()),
            }
        };
        assert_eq!(&decoy.payload[..], b"decoy");

        let unanswered = requester
            .request(
                "nobody/home",
                "ping",
                QoS::AtLeastOnce,
                "replies/requester",
                PublishProperties::default(),
                Duration::from_secs(2),
            )
            .await;
        assert_eq!(
            unanswered.map(|m| m.payload),
            Err(ClientError::ResponseTimeout(Duration::from_secs(2)))
        );
        Ok(())
    });
    sim.run()
}

/// The broker kicks a subscriber whose application is asleep with its event channel full.
/// The client reconnects at once (its backlog of events waiting for the application does not
/// stop it reading the CONNACK), so no attempt ends in a connect timeout, and everything
/// published while it slept (to its persistent session) is delivered once it reads.
#[test]
fn a_slow_application_does_not_stop_a_reconnect() -> turmoil::Result {
    const MESSAGES: usize = 100;
    let mut sim = turmoil::Builder::new()
        .rng_seed(19)
        .simulation_duration(Duration::from_secs(300))
        .build();
    let handle_slot: Arc<Mutex<Option<simqtt::broker::BrokerHandle>>> = Arc::default();
    {
        let handle_slot = handle_slot.clone();
        sim.host("broker", move || {
            let handle_slot = handle_slot.clone();
            async move {
                let config = BrokerConfig {
                    rng_seed: Some(19),
                    sys_interval_secs: 0,
                    ..BrokerConfig::default()
                };
                let (broker, handle) = Broker::new(Box::new(MemoryStore::new()), config);
                *handle_slot.lock().unwrap() = Some(handle);
                let listener = SimListener::bind("0.0.0.0:1883").await?;
                broker.run(listener, std::future::pending::<()>()).await?;
                Ok(())
            }
        });
    }
    sim.client("client", async move {
        let mut o = options("sleepy", false, 19);
        o.event_capacity = 16;
        let (sleepy, mut events) = sim_client(o).await?;
        sleepy
            .subscribe(&[("sleepy/t", QoS::AtLeastOnce)])
            .await
            .map_err(|e| e.to_string())?;
        let (publisher, _publisher_events) = sim_client(options("pub", true, 19)).await?;
        for i in 0..MESSAGES {
            if i == MESSAGES / 2 {
                let handle = handle_slot.lock().unwrap().clone().expect("broker up");
                assert!(handle.kick("sleepy").await);
            }
            publisher
                .publish("sleepy/t", format!("m{i}"), QoS::AtLeastOnce, false)
                .await
                .map_err(|e| e.to_string())?
                .wait()
                .await
                .map_err(|e| e.to_string())?;
        }
        // Asleep for many connect timeouts (3 s each).
        tokio::time::sleep(Duration::from_secs(30)).await;
        let mut got = std::collections::BTreeSet::new();
        let mut failed = Vec::new();
        let mut completed = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            match event.kind {
                EventKind::MessageArrived(m) => {
                    got.insert(String::from_utf8_lossy(&m.payload).to_string());
                }
                EventKind::ConnectFailed { cause } => failed.push(cause),
                EventKind::ConnectComplete { .. } => completed += 1,
                _ => {}
            }
            if got.len() == MESSAGES {
                break;
            }
        }
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(completed, 2, "the first connection and one reconnect");
        let expected: std::collections::BTreeSet<String> =
            (0..MESSAGES).map(|i| format!("m{i}")).collect();
        assert_eq!(got, expected);
        Ok(())
    });
    sim.run()
}
