//! Back-pressure under overload, inside turmoil: fast QoS 1 publishers and one subscriber that
//! reads slowly. The broker must slow the publishers to the subscriber's pace rather than
//! acknowledge messages and drop them at the subscriber's queue limit (issue 7, section 3:
//! "publishers are slowed by back-pressure, memory stays bounded, nothing acknowledged is
//! dropped").

use std::collections::BTreeSet;
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use simqtt::broker::{Broker, BrokerConfig, BrokerHandle};
use simqtt::codec::{
    Ack, Connect, ConnectProperties, MqttStr, Packet, ProtocolVersion, Publish, PublishProperties,
    QoS, QosPid, Subscribe, SubscribeProperties, SubscriptionOptions, TopicFilter, TopicName,
    DEFAULT_MAX_PACKET_SIZE,
};
use simqtt::store::MemoryStore;
use simqtt::transport::sim::{SimConnector, SimListener};
use simqtt::transport::{BoxStream, Connector, FramedRead, FramedWrite};
use tokio::sync::Notify;

type Error = Box<dyn std::error::Error>;
type Read = FramedRead<tokio::io::ReadHalf<BoxStream>>;
type Write = FramedWrite<tokio::io::WriteHalf<BoxStream>>;

const PUBLISHERS: usize = 3;
const PER_PUBLISHER: u16 = 200;
const MAX_QUEUED: usize = 20;
const MAX_INFLIGHT: u16 = 8;

async fn connect(client_id: &str) -> Result<(Read, Write), Error> {
    let stream = SimConnector.connect("broker:1883").await?;
    let (read, write) = tokio::io::split(stream);
    let mut read = FramedRead::new(read, ProtocolVersion::V311, DEFAULT_MAX_PACKET_SIZE);
    let mut write = FramedWrite::new(write, ProtocolVersion::V311);
    write
        .write_packet(&Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive_secs: 5,
            properties: ConnectProperties::default(),
            client_id: MqttStr::new(client_id)?,
            will: None,
            username: None,
            password: None,
        })))
        .await?;
    match read.read_packet().await? {
        Some(Packet::ConnAck(ack)) if !ack.reason_code.is_error() => Ok((read, write)),
        other => Err(format!("expected CONNACK, got {other:?}").into()),
    }
}

/// Connects as "sub" and subscribes to `filter` at QoS 1.
async fn subscriber(filter: &str) -> Result<(Read, Write), Error> {
    let (mut read, mut write) = connect("sub").await?;
    write
        .write_packet(&Packet::Subscribe(Subscribe {
            packet_id: NonZeroU16::new(1).unwrap(),
            properties: SubscribeProperties::default(),
            filters: vec![(
                TopicFilter::new(filter)?,
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
        }))
        .await?;
    match read.read_packet().await? {
        Some(Packet::SubAck(_)) => Ok((read, write)),
        other => Err(format!("expected SUBACK, got {other:?}").into()),
    }
}

/// Reads the next packet, which must be a QoS 1 PUBLISH, acknowledges it and gives its payload.
async fn take_delivery(read: &mut Read, write: &mut Write) -> Result<String, Error> {
    match read.read_packet().await? {
        Some(Packet::Publish(p)) => {
            let QosPid::AtLeastOnce(id) = p.qos_pid else {
                return Err(format!("expected QoS 1, got {:?}", p.qos_pid).into());
            };
            write.write_packet(&Packet::PubAck(Ack::new(id))).await?;
            Ok(String::from_utf8(p.payload.to_vec())?)
        }
        other => Err(format!("expected PUBLISH, got {other:?}").into()),
    }
}

/// What the run observed, shared by the simulated clients (turmoil runs them on one thread).
#[derive(Default)]
struct Ledger {
    /// Payloads the broker acknowledged (PUBACK read by the publisher).
    acked: BTreeSet<String>,
    /// Payloads the subscriber read, in order.
    delivered: Vec<String>,
    /// The largest `acked - delivered` seen when a PUBACK arrived: messages the broker owns
    /// and has not handed over. Without back-pressure it grows to nearly everything sent.
    max_backlog: usize,
    /// The largest session queue the operator saw.
    max_queued: usize,
    stats_dropped: Option<u64>,
}

fn broker(sim: &mut turmoil::Sim<'_>, slot: Arc<Mutex<Option<BrokerHandle>>>, timeout: u64) {
    sim.host("broker", move || {
        let slot = slot.clone();
        async move {
            let config = BrokerConfig {
                rng_seed: Some(1),
                max_queued_messages: MAX_QUEUED,
                max_inflight_messages: MAX_INFLIGHT,
                outbound_queue_packets: 64,
                slow_subscriber_timeout_secs: timeout,
                ..BrokerConfig::default()
            };
            let (broker, handle) = Broker::new(Box::new(MemoryStore::new()), config);
            *slot.lock().unwrap() = Some(handle);
            let listener = SimListener::bind("0.0.0.0:1883").await?;
            broker.run(listener, std::future::pending::<()>()).await?;
            Ok(())
        }
    });
}

/// Pipelines `PER_PUBLISHER` QoS 1 messages (every id distinct, no window) and reads PUBACKs.
fn publisher(sim: &mut turmoil::Sim<'_>, n: usize, ready: Arc<Notify>, ledger: Arc<Mutex<Ledger>>) {
    sim.client(format!("publisher{n}"), async move {
        ready.notified().await;
        let (mut read, mut write) = connect(&format!("pub{n}")).await?;
        let sender = tokio::spawn(async move {
            for i in 1..=PER_PUBLISHER {
                let id = NonZeroU16::new(i).unwrap();
                let packet = Packet::Publish(Publish {
                    dup: false,
                    qos_pid: QosPid::AtLeastOnce(id),
                    retain: false,
                    topic: TopicName::new(&format!("t/{n}")).unwrap(),
                    properties: PublishProperties::default().into(),
                    payload: Bytes::from(format!("{n}-{i}")),
                });
                write.write_packet(&packet).await?;
            }
            Ok::<_, simqtt::transport::TransportError>(write)
        });
        let mut acks = 0;
        while acks < PER_PUBLISHER {
            match read.read_packet().await? {
                Some(Packet::PubAck(ack)) => {
                    acks += 1;
                    let mut ledger = ledger.lock().unwrap();
                    ledger.acked.insert(format!("{n}-{}", ack.packet_id));
                    let backlog = ledger.acked.len().saturating_sub(ledger.delivered.len());
                    ledger.max_backlog = ledger.max_backlog.max(backlog);
                }
                other => return Err(format!("expected PUBACK, got {other:?}").into()),
            }
        }
        let _write = sender.await??;
        Ok(())
    });
}

/// A subscriber that takes one message per `pace` (so at most 1000/pace msg/s).
fn slow_subscriber(
    sim: &mut turmoil::Sim<'_>,
    pace: Duration,
    ready: Arc<Notify>,
    ledger: Arc<Mutex<Ledger>>,
) {
    sim.client("subscriber", async move {
        let (mut read, mut write) = subscriber("t/+").await?;
        for _ in 0..PUBLISHERS {
            ready.notify_one();
        }
        let total = PUBLISHERS * usize::from(PER_PUBLISHER);
        while ledger.lock().unwrap().delivered.len() < total {
            tokio::time::sleep(pace).await;
            let payload = take_delivery(&mut read, &mut write).await?;
            ledger.lock().unwrap().delivered.push(payload);
        }
        Ok(())
    });
}

/// Watches the broker's session queues through its handle while the clients run, then reads
/// its drop counter.
fn operator(
    sim: &mut turmoil::Sim<'_>,
    slot: Arc<Mutex<Option<BrokerHandle>>>,
    ledger: Arc<Mutex<Ledger>>,
) {
    sim.client("operator", async move {
        let total = PUBLISHERS * usize::from(PER_PUBLISHER);
        loop {
            let handle = slot.lock().unwrap().clone();
            if let Some(handle) = handle {
                let queued = handle.clients().await.iter().map(|c| c.queued).max();
                let done = {
                    let mut ledger = ledger.lock().unwrap();
                    ledger.max_queued = ledger.max_queued.max(queued.unwrap_or(0));
                    ledger.delivered.len() >= total
                };
                if done {
                    let stats = handle.stats().await.expect("broker running");
                    ledger.lock().unwrap().stats_dropped = Some(stats.messages_dropped);
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

#[test]
fn slow_qos1_subscriber_slows_publishers_and_loses_nothing_acknowledged() {
    let mut sim = turmoil::Builder::new()
        .rng_seed(7)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(2))
        .simulation_duration(Duration::from_secs(120))
        .build();
    let slot = Arc::default();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let ready = Arc::new(Notify::new());
    broker(&mut sim, Arc::clone(&slot), 30);
    slow_subscriber(
        &mut sim,
        Duration::from_millis(10),
        ready.clone(),
        ledger.clone(),
    );
    for n in 0..PUBLISHERS {
        publisher(&mut sim, n, ready.clone(), ledger.clone());
    }
    operator(&mut sim, slot, ledger.clone());
    sim.run().unwrap();

    let ledger = ledger.lock().unwrap();
    let total = PUBLISHERS * usize::from(PER_PUBLISHER);
    assert_eq!(ledger.acked.len(), total, "every message acknowledged");
    // Every acknowledged message reached the subscriber, exactly once and in order per topic.
    let delivered: BTreeSet<&String> = ledger.delivered.iter().collect();
    assert_eq!(delivered.len(), total, "no duplicates, none lost");
    assert!(ledger.acked.iter().all(|p| delivered.contains(p)));
    for n in 0..PUBLISHERS {
        let mine: Vec<&String> = ledger
            .delivered
            .iter()
            .filter(|p| p.starts_with(&format!("{n}-")))
            .collect();
        let want: Vec<String> = (1..=PER_PUBLISHER).map(|i| format!("{n}-{i}")).collect();
        assert!(mine.iter().zip(&want).all(|(a, b)| *a == b), "order of {n}");
    }
    assert_eq!(ledger.stats_dropped, Some(0), "the broker dropped nothing");
    // Memory bounded by configuration: the session queue never passed its limit, and the
    // broker never owned more undelivered messages than its queue and in-flight window hold
    // (publishers were held at the subscriber's pace, not acknowledged ahead of it).
    assert!(ledger.max_queued <= MAX_QUEUED, "{}", ledger.max_queued);
    assert!(
        ledger.max_backlog <= MAX_QUEUED + usize::from(MAX_INFLIGHT),
        "backlog {} > queue {MAX_QUEUED} + window {MAX_INFLIGHT}",
        ledger.max_backlog
    );
    assert!(
        ledger.max_backlog >= MAX_QUEUED,
        "the test did overload the subscriber"
    );
}

/// A simulation (seeded `seed`) with the broker of these tests, for a burst.
fn burst_sim<'a>(seed: u64) -> turmoil::Sim<'a> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(60))
        .build();
    broker(&mut sim, Arc::default(), 30);
    sim
}

/// Every message of a burst of `count` was acknowledged to its publisher and delivered once,
/// in order.
fn assert_burst_delivered(
    acked: &Mutex<BTreeSet<u16>>,
    delivered: &Mutex<Vec<String>>,
    count: u16,
) {
    assert_eq!(acked.lock().unwrap().len(), usize::from(count));
    let want: Vec<String> = (1..=count).map(|i| i.to_string()).collect();
    assert_eq!(*delivered.lock().unwrap(), want, "all delivered, in order");
}

/// Publishes `count` QoS 1 messages on "burst" (payloads "1", "2", ...) in one write once
/// `ready` is notified, and records the packet ids the broker acknowledges in `acked`.
fn burst_publisher(
    sim: &mut turmoil::Sim<'_>,
    count: u16,
    ready: Arc<Notify>,
    acked: Arc<Mutex<BTreeSet<u16>>>,
) {
    sim.client("publisher", async move {
        ready.notified().await;
        let (mut read, mut write) = connect("pub").await?;
        // One write of the whole burst, so the broker reads hundreds of packets at once.
        for i in 1..=count {
            write.push(&Packet::Publish(Publish {
                dup: false,
                qos_pid: QosPid::AtLeastOnce(NonZeroU16::new(i).unwrap()),
                retain: false,
                topic: TopicName::new("burst")?,
                properties: PublishProperties::default().into(),
                payload: Bytes::from(i.to_string()),
            }))?;
        }
        write.flush().await?;
        while acked.lock().unwrap().len() < usize::from(count) {
            match read.read_packet().await? {
                Some(Packet::PubAck(ack)) => {
                    acked.lock().unwrap().insert(ack.packet_id.get());
                }
                other => return Err(format!("expected PUBACK, got {other:?}").into()),
            }
        }
        Ok(())
    });
}

/// A subscriber that acknowledges its whole in-flight window in one write: the broker's
/// connection hands those PUBACKs to the core as runs (`Event::PubAcks`). Every one must free
/// its slot: had a run's acknowledgements been lost, the window would stay full after the first
/// run and the subscriber would wait for ever. A PINGREQ in the middle of each write splits
/// the run, and is answered.
#[test]
fn a_window_acknowledged_in_one_write_frees_every_slot() {
    const BURST: u16 = 400;
    let mut sim = burst_sim(12);
    let ready = Arc::new(Notify::new());
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let pings = Arc::new(Mutex::new((0usize, 0usize)));

    let (sub_ready, sub_delivered, sub_pings) = (ready.clone(), delivered.clone(), pings.clone());
    sim.client("subscriber", async move {
        let (mut read, mut write) = subscriber("burst").await?;
        sub_ready.notify_one();
        let mut window = Vec::new();
        while sub_delivered.lock().unwrap().len() < usize::from(BURST) {
            // A full window (or what is left), acknowledged in one write.
            let left = usize::from(BURST) - sub_delivered.lock().unwrap().len();
            while window.len() < usize::from(MAX_INFLIGHT).min(left) {
                match read.read_packet().await? {
                    Some(Packet::Publish(p)) => {
                        let QosPid::AtLeastOnce(id) = p.qos_pid else {
                            return Err(format!("expected QoS 1, got {:?}", p.qos_pid).into());
                        };
                        window.push(id);
                        let payload = String::from_utf8(p.payload.to_vec())?;
                        sub_delivered.lock().unwrap().push(payload);
                    }
                    Some(Packet::PingResp) => sub_pings.lock().unwrap().1 += 1,
                    other => return Err(format!("expected PUBLISH, got {other:?}").into()),
                }
            }
            let half = window.len() / 2;
            for (i, id) in window.drain(..).enumerate() {
                if i == half {
                    write.push(&Packet::PingReq)?;
                    sub_pings.lock().unwrap().0 += 1;
                }
                write.push(&Packet::PubAck(Ack::new(id)))?;
            }
            write.flush().await?;
        }
        // The last PINGRESP may still be on its way.
        loop {
            let (sent, answered) = *sub_pings.lock().unwrap();
            if answered == sent {
                break;
            }
            match read.read_packet().await? {
                Some(Packet::PingResp) => sub_pings.lock().unwrap().1 += 1,
                other => return Err(format!("expected PINGRESP, got {other:?}").into()),
            }
        }
        Ok(())
    });
    burst_publisher(&mut sim, BURST, ready, acked.clone());
    sim.run().unwrap();
    assert_burst_delivered(&acked, &delivered, BURST);
    let (sent, answered) = *pings.lock().unwrap();
    assert_eq!(sent, usize::from(BURST) / usize::from(MAX_INFLIGHT));
    assert_eq!(answered, sent, "every PINGREQ inside a run answered");
}

/// A burst larger than the core's event batch: one publisher pipelines `BURST` QoS 1 messages
/// without waiting, so its connection hands the core hundreds of packets at once, and a
/// subscriber acknowledges each delivery at once. Every PUBLISH must be acknowledged and
/// delivered, every delivery's PUBACK must free its slot: the core once took the event after
/// each full batch of 256 and dropped it, losing a PUBLISH (never acknowledged) or a PUBACK
/// (the subscriber's window and its reader's credit shrank for good).
#[test]
fn a_burst_beyond_one_event_batch_loses_no_packet() {
    const BURST: u16 = 3000;
    let mut sim = burst_sim(11);
    let ready = Arc::new(Notify::new());
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let delivered = Arc::new(Mutex::new(Vec::new()));

    let (sub_ready, sub_delivered) = (ready.clone(), delivered.clone());
    sim.client("subscriber", async move {
        let (mut read, mut write) = subscriber("burst").await?;
        sub_ready.notify_one();
        while sub_delivered.lock().unwrap().len() < usize::from(BURST) {
            let payload = take_delivery(&mut read, &mut write).await?;
            sub_delivered.lock().unwrap().push(payload);
        }
        Ok(())
    });

    burst_publisher(&mut sim, BURST, ready, acked.clone());
    sim.run().unwrap();
    assert_burst_delivered(&acked, &delivered, BURST);
}
