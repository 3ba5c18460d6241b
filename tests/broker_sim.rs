//! The broker inside turmoil: seeded simulations where test clients (written directly on the
//! framed transport, so they test only the broker) exchange messages through it, and where the
//! broker host crashes and restarts from its file store on turmoil's simulated disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use simqtt::broker::{Broker, BrokerConfig};
use simqtt::codec::{
    Ack, Connect, ConnectProperties, Disconnect, MqttStr, Packet, ProtocolVersion, Publish,
    PublishProperties, QoS, QosPid, ReasonCode, Subscribe, SubscribeProperties,
    SubscriptionOptions, TopicFilter, TopicName, DEFAULT_MAX_PACKET_SIZE,
};
use simqtt::store::fs::{SharedFs, SimFs};
use simqtt::store::{Compaction, FileStore, FileStoreOptions, MemoryStore, Store, SyncPolicy};
use simqtt::transport::sim::{SimConnector, SimListener};
use simqtt::transport::{BoxStream, Connector, FramedRead, FramedWrite};
use tokio::sync::Notify;

const BROKER: &str = "broker:1883";

type Error = Box<dyn std::error::Error>;

/// A bare MQTT 3.1.1 client: packets in, packets out, nothing automatic.
struct TestClient {
    read: FramedRead<tokio::io::ReadHalf<BoxStream>>,
    write: FramedWrite<tokio::io::WriteHalf<BoxStream>>,
}

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn io_error(what: String) -> io::Error {
    io::Error::other(what)
}

impl TestClient {
    /// Connects and returns the client with CONNACK's session-present flag.
    async fn connect(client_id: &str, clean: bool) -> Result<(TestClient, bool), Error> {
        let stream = SimConnector.connect(BROKER).await?;
        let (read, write) = tokio::io::split(stream);
        let mut client = TestClient {
            read: FramedRead::new(read, ProtocolVersion::V311, DEFAULT_MAX_PACKET_SIZE),
            write: FramedWrite::new(write, ProtocolVersion::V311),
        };
        client
            .send(Packet::Connect(Box::new(Connect {
                protocol: ProtocolVersion::V311,
                clean_start: clean,
                keep_alive_secs: 5,
                properties: ConnectProperties::default(),
                client_id: MqttStr::new(client_id)?,
                will: None,
                username: None,
                password: None,
            })))
            .await?;
        match client.recv(Duration::from_secs(2)).await? {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => {
                Ok((client, ack.session_present))
            }
            other => Err(io_error(format!("expected CONNACK, got {other:?}")).into()),
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), Error> {
        self.write.write_packet(&packet).await?;
        Ok(())
    }

    async fn recv(&mut self, timeout: Duration) -> Result<Packet, Error> {
        match tokio::time::timeout(timeout, self.read.read_packet()).await {
            Err(_) => Err(io_error("timed out".into()).into()),
            Ok(Ok(Some(packet))) => Ok(packet),
            Ok(Ok(None)) => Err(io_error("closed".into()).into()),
            Ok(Err(error)) => Err(error.into()),
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), Error> {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: SubscribeProperties::default(),
            filters: vec![(TopicFilter::new(filter)?, SubscriptionOptions::qos(qos))],
        }))
        .await?;
        match self.recv(Duration::from_secs(2)).await? {
            Packet::SubAck(ack)
                if ack.reason_codes.len() == 1 && !ack.reason_codes[0].is_error() =>
            {
                Ok(())
            }
            other => Err(io_error(format!("expected SUBACK, got {other:?}")).into()),
        }
    }
}

fn publish_packet(topic: &str, payload: String, qos_pid: QosPid) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        properties: PublishProperties::default().into(),
        payload: Bytes::from(payload),
    })
}

/// What a subscriber does with an incoming packet: acknowledge it, and return the payload if
/// it is a message to hand to the application. `pending_release` holds the QoS 2 ids received
/// and not yet released, so a redelivered QoS 2 PUBLISH is delivered once [MQTT-4.3.3-2].
async fn receive_side(
    client: &mut TestClient,
    packet: Packet,
    pending_release: &mut BTreeSet<u16>,
) -> Result<Option<(QoS, String)>, Error> {
    match packet {
        Packet::Publish(p) => {
            let payload = String::from_utf8(p.payload.to_vec())?;
            match p.qos_pid {
                QosPid::AtMostOnce => Ok(Some((QoS::AtMostOnce, payload))),
                QosPid::AtLeastOnce(id) => {
                    client.send(Packet::PubAck(Ack::new(id))).await?;
                    Ok(Some((QoS::AtLeastOnce, payload)))
                }
                QosPid::ExactlyOnce(id) => {
                    let new = pending_release.insert(id.get());
                    client.send(Packet::PubRec(Ack::new(id))).await?;
                    Ok(new.then_some((QoS::ExactlyOnce, payload)))
                }
            }
        }
        Packet::PubRel(rel) => {
            pending_release.remove(&rel.packet_id.get());
            client
                .send(Packet::PubComp(Ack::new(rel.packet_id)))
                .await?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Publishes one message and completes its flow. Returns true once the broker acknowledged it
/// (PUBACK for QoS 1, PUBREC for QoS 2: from then on the broker owns the message).
async fn publish_flow(
    client: &mut TestClient,
    topic: &str,
    payload: String,
    qos: QoS,
    id: u16,
) -> Result<bool, Error> {
    let qos_pid = QosPid::new(qos, Some(pid(id))).unwrap();
    client.send(publish_packet(topic, payload, qos_pid)).await?;
    match qos {
        QoS::AtMostOnce => Ok(true),
        QoS::AtLeastOnce => match client.recv(Duration::from_secs(2)).await? {
            Packet::PubAck(a) if a.packet_id.get() == id => Ok(true),
            other => Err(io_error(format!("expected PUBACK {id}, got {other:?}")).into()),
        },
        QoS::ExactlyOnce => {
            match client.recv(Duration::from_secs(2)).await? {
                Packet::PubRec(a) if a.packet_id.get() == id => {}
                other => {
                    return Err(io_error(format!("expected PUBREC {id}, got {other:?}")).into())
                }
            }
            client.send(Packet::PubRel(Ack::new(pid(id)))).await?;
            match client.recv(Duration::from_secs(2)).await? {
                Packet::PubComp(a) if a.packet_id.get() == id => Ok(true),
                other => Err(io_error(format!("expected PUBCOMP {id}, got {other:?}")).into()),
            }
        }
    }
}

fn memory_broker(sim: &mut turmoil::Sim<'_>, seed: u64) {
    sim.host("broker", move || async move {
        let config = BrokerConfig {
            rng_seed: Some(seed),
            ..BrokerConfig::default()
        };
        let (broker, _handle) = Broker::new(Box::new(MemoryStore::new()), config);
        let listener = SimListener::bind("0.0.0.0:1883").await?;
        broker.run(listener, std::future::pending::<()>()).await?;
        Ok(())
    });
}

/// One seeded run of publisher → broker → subscriber at QoS 0, 1 and 2. Returns what the
/// subscriber saw, with the simulated time of each delivery.
fn exchange(seed: u64) -> Vec<(u128, u8, String)> {
    const PER_QOS: usize = 10;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .simulation_duration(Duration::from_secs(60))
        .build();
    memory_broker(&mut sim, seed);
    let ready = Arc::new(Notify::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let ready = ready.clone();
        let seen = seen.clone();
        sim.client("subscriber", async move {
            let (mut client, present) = TestClient::connect("sub", true).await?;
            assert!(!present);
            client.subscribe("t/#", QoS::ExactlyOnce).await?;
            ready.notify_one();
            let mut pending = BTreeSet::new();
            let start = tokio::time::Instant::now();
            while seen.lock().unwrap().len() < 3 * PER_QOS {
                let packet = client.recv(Duration::from_secs(5)).await?;
                if let Some((qos, payload)) =
                    receive_side(&mut client, packet, &mut pending).await?
                {
                    let at = start.elapsed().as_millis();
                    seen.lock().unwrap().push((at, qos.as_u8(), payload));
                }
            }
            client
                .send(Packet::Disconnect(Disconnect::default()))
                .await?;
            Ok(())
        });
    }
    sim.client("publisher", async move {
        ready.notified().await;
        let (mut client, _) = TestClient::connect("pub", true).await?;
        let mut id = 0;
        for i in 0..PER_QOS {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                id += 1;
                let topic = format!("t/q{}", qos.as_u8());
                let payload = format!("{}-{i}", qos.as_u8());
                assert!(publish_flow(&mut client, &topic, payload, qos, id).await?);
            }
        }
        client
            .send(Packet::Disconnect(Disconnect::default()))
            .await?;
        Ok(())
    });
    sim.run().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let seen = seen.lock().unwrap().clone();
    seen
}

#[test]
fn clients_exchange_qos_0_1_2_through_the_broker() {
    for seed in 0..6u64 {
        println!("seed {seed}");
        let seen = exchange(seed);
        // Each QoS level arrives complete, once, in publish order, at its own QoS.
        for qos in 0..3u8 {
            let got: Vec<&str> = seen
                .iter()
                .filter(|(_, q, _)| *q == qos)
                .map(|(_, _, p)| p.as_str())
                .collect();
            let want: Vec<String> = (0..10).map(|i| format!("{qos}-{i}")).collect();
            assert_eq!(got, want, "seed {seed} QoS {qos}");
        }
    }
}

#[test]
fn same_seed_same_run() {
    let seed = 11;
    println!("seed {seed}");
    assert_eq!(exchange(seed), exchange(seed));
}

/// What the crash run observed.
#[derive(Default)]
struct Ledger {
    /// Payloads the broker acknowledged to the publisher (PUBACK / PUBREC), by QoS.
    acked: BTreeMap<String, QoS>,
    publisher_done: bool,
    /// Payloads handed to the subscriber's application, in order.
    delivered: Vec<String>,
    /// Times the subscriber resumed its session, and whether the broker said it was present.
    resumes: Vec<bool>,
}

/// One seeded run: a persistent subscriber, a publisher of QoS 1 and 2 messages, and the
/// broker host (file store on the simulated disk, sync every write) crashed mid-traffic and
/// restarted after a seed-chosen pause.
fn crash_run(seed: u64) -> Ledger {
    use rand::{Rng, SeedableRng};
    const MESSAGES: usize = 60;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let crash_at_step = rng.random_range(150..700);
    let down_steps = rng.random_range(1..300);
    println!("seed {seed}: crash at step {crash_at_step}, down for {down_steps} steps");

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .simulation_duration(Duration::from_secs(120))
        .build();
    sim.host("broker", move || async move {
        let fs: SharedFs = Arc::new(SimFs);
        let options = FileStoreOptions {
            sync: SyncPolicy::EveryWrite,
            // Compactions all along the traffic, off the core as the broker runs them, so the
            // crash falls in one now and then.
            compact_log_bytes: 2048,
            compaction: Compaction::Task,
            ..FileStoreOptions::default()
        };
        let store = FileStore::open_with(fs, Path::new("/var/lib/simqtt"), options)?;
        let config = BrokerConfig {
            rng_seed: Some(seed),
            sys_interval_secs: 0,
            ..BrokerConfig::default()
        };
        let (broker, _handle) = Broker::new(Box::new(store) as Box<dyn Store>, config);
        let listener = SimListener::bind("0.0.0.0:1883").await?;
        broker.run(listener, std::future::pending::<()>()).await?;
        Ok(())
    });
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let ready = Arc::new(Notify::new());
    {
        let ledger = ledger.clone();
        let ready = ready.clone();
        sim.client("subscriber", async move {
            let mut subscribed = false;
            // QoS 2 ids received and not yet released: the client's own session state, kept
            // across reconnects as a persistent client must.
            let mut pending = BTreeSet::new();
            let start = tokio::time::Instant::now();
            // Bounded: after a minute of simulated time the ledger shows what is missing.
            while start.elapsed() < Duration::from_secs(60) {
                {
                    let l = ledger.lock().unwrap();
                    let delivered: BTreeSet<&String> = l.delivered.iter().collect();
                    if l.publisher_done && l.acked.keys().all(|p| delivered.contains(p)) {
                        return Ok(());
                    }
                }
                let Ok((mut client, present)) = TestClient::connect("sub", false).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if subscribed {
                    ledger.lock().unwrap().resumes.push(present);
                } else {
                    if client.subscribe("t", QoS::ExactlyOnce).await.is_err() {
                        continue;
                    }
                    subscribed = true;
                    ready.notify_one();
                }
                while let Ok(packet) = client.recv(Duration::from_secs(2)).await {
                    match receive_side(&mut client, packet, &mut pending).await {
                        Ok(Some((_, payload))) => ledger.lock().unwrap().delivered.push(payload),
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            }
            Ok(())
        });
    }
    {
        let ledger = ledger.clone();
        sim.client("publisher", async move {
            ready.notified().await;
            let mut connection: Option<TestClient> = None;
            let mut id = 0u16;
            for i in 0..MESSAGES {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let qos = if i % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let payload = format!("m{i}");
                if connection.is_none() {
                    connection = TestClient::connect("pub", true).await.ok().map(|(c, _)| c);
                }
                let Some(client) = connection.as_mut() else {
                    // Broker down: this message is never sent, so it is not owed.
                    continue;
                };
                id = id % 1000 + 1;
                // Sent once and never retried (a retry from a clean session would be a new
                // message); it is owed only if the broker acknowledged it.
                let qos_pid = QosPid::new(qos, Some(pid(id))).unwrap();
                if client
                    .send(publish_packet("t", payload.clone(), qos_pid))
                    .await
                    .is_err()
                {
                    connection = None;
                    continue;
                }
                let ack = match client.recv(Duration::from_secs(2)).await {
                    Ok(Packet::PubAck(a)) if qos == QoS::AtLeastOnce => a.packet_id.get() == id,
                    Ok(Packet::PubRec(a)) if qos == QoS::ExactlyOnce => a.packet_id.get() == id,
                    _ => false,
                };
                if !ack {
                    connection = None;
                    continue;
                }
                ledger.lock().unwrap().acked.insert(payload, qos);
                if qos == QoS::ExactlyOnce {
                    let done = async {
                        client.send(Packet::PubRel(Ack::new(pid(id)))).await?;
                        client.recv(Duration::from_secs(2)).await
                    };
                    if !matches!(done.await, Ok(Packet::PubComp(_))) {
                        connection = None;
                    }
                }
            }
            ledger.lock().unwrap().publisher_done = true;
            Ok(())
        });
    }
    for _ in 0..crash_at_step {
        sim.step().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    sim.crash("broker");
    for _ in 0..down_steps {
        sim.step().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    sim.bounce("broker");
    sim.run().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let mut ledger = ledger.lock().unwrap();
    std::mem::take(&mut *ledger)
}

#[test]
fn acknowledged_messages_survive_a_broker_crash() {
    let mut acked_total = 0;
    let mut resumed = 0;
    for seed in 0..10u64 {
        let ledger = crash_run(seed);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for payload in &ledger.delivered {
            *counts.entry(payload.as_str()).or_default() += 1;
        }
        for (payload, qos) in &ledger.acked {
            let n = counts.get(payload.as_str()).copied().unwrap_or(0);
            assert!(
                n >= 1,
                "seed {seed}: acknowledged {payload} ({qos:?}) never delivered"
            );
            if *qos == QoS::ExactlyOnce {
                assert_eq!(n, 1, "seed {seed}: QoS 2 {payload} delivered {n} times");
            }
        }
        // A stored session is resumed as present after the restart.
        assert!(
            ledger.resumes.iter().all(|&present| present),
            "seed {seed}: session not present on resume: {:?}",
            ledger.resumes
        );
        assert!(
            ledger.acked.len() < 60,
            "seed {seed}: the crash cost no message at all"
        );
        acked_total += ledger.acked.len();
        resumed += ledger.resumes.len();
    }
    println!("{acked_total} acknowledged messages checked, {resumed} session resumes");
    assert!(acked_total > 100 && resumed >= 10);
}

#[test]
fn handle_lists_clients_and_kicks_one_with_its_will() {
    let seed = 3;
    println!("seed {seed}");
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(30))
        .build();
    let handle_slot: Arc<Mutex<Option<simqtt::broker::BrokerHandle>>> = Arc::default();
    {
        let handle_slot = handle_slot.clone();
        sim.host("broker", move || {
            let handle_slot = handle_slot.clone();
            async move {
                let config = BrokerConfig {
                    rng_seed: Some(seed),
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
    let watching = Arc::new(Notify::new());
    {
        let watching = watching.clone();
        sim.client("watcher", async move {
            let (mut client, _) = TestClient::connect("watcher", true).await?;
            client.subscribe("will/#", QoS::AtLeastOnce).await?;
            watching.notify_one();
            match client.recv(Duration::from_secs(10)).await? {
                Packet::Publish(p) => {
                    assert_eq!(&*p.topic, "will/victim");
                    assert_eq!(&p.payload[..], b"kicked");
                }
                other => panic!("expected the will, got {other:?}"),
            }
            Ok(())
        });
    }
    sim.client("victim", async move {
        watching.notified().await;
        let stream = SimConnector.connect(BROKER).await?;
        let (read, write) = tokio::io::split(stream);
        let mut client = TestClient {
            read: FramedRead::new(read, ProtocolVersion::V311, DEFAULT_MAX_PACKET_SIZE),
            write: FramedWrite::new(write, ProtocolVersion::V311),
        };
        let mut connect = Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive_secs: 0,
            properties: ConnectProperties::default(),
            client_id: MqttStr::new("victim")?,
            will: None,
            username: None,
            password: None,
        };
        connect.will = Some(simqtt::codec::Will {
            topic: TopicName::new("will/victim")?,
            payload: Bytes::from_static(b"kicked"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        client.send(Packet::Connect(Box::new(connect))).await?;
        assert!(matches!(
            client.recv(Duration::from_secs(2)).await?,
            Packet::ConnAck(_)
        ));
        // The broker closes the connection when the test kicks it.
        assert!(client.recv(Duration::from_secs(10)).await.is_err());
        Ok(())
    });
    // A client of the simulation drives the handle: list until both are connected, then kick.
    let listed = Arc::new(Mutex::new(Vec::new()));
    {
        let listed = listed.clone();
        sim.client("operator", async move {
            loop {
                let handle = handle_slot.lock().unwrap().clone();
                if let Some(handle) = handle {
                    let ids: Vec<String> = handle
                        .clients()
                        .await
                        .into_iter()
                        .map(|c| c.client_id)
                        .collect();
                    listed.lock().unwrap().push(ids.clone());
                    if ids == ["victim", "watcher"] {
                        assert!(handle.kick("victim").await);
                        assert!(!handle.kick("nobody").await);
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    sim.run().unwrap();
    let listed = listed.lock().unwrap();
    assert!(listed.iter().any(|ids| ids.len() < 2), "{listed:?}");
}
