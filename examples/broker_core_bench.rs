//! Cost of the broker core alone (no sockets, no encoding): how many PUBLISH packets per second
//! it routes, fan-in (one subscriber) and fan-out (many subscribers), at QoS 0 and 1.
//! `cargo run --release --example broker_core_bench`

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Instant as WallClock;

use bytes::Bytes;
use simqtt::broker::stats::ByteCounters;
use simqtt::broker::{Action, BrokerConfig, Core};
use simqtt::codec::{
    Ack, Connect, ConnectProperties, MqttStr, Packet, ProtocolVersion, Publish, PublishProperties,
    QoS, QosPid, Subscribe, SubscribeProperties, SubscriptionOptions, TopicFilter, TopicName,
};
use simqtt::store::MemoryStore;
use tokio::time::Instant;

fn connect(core: &mut Core, conn: u64, id: &str, now: Instant, out: &mut Vec<Action>) {
    core.opened(conn, String::new(), now);
    let c = Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive_secs: 0,
        properties: ConnectProperties::default(),
        client_id: MqttStr::new(id).unwrap(),
        will: None,
        username: None,
        password: None,
    };
    core.handle(conn, Packet::Connect(Box::new(c)), now, out);
}

fn run(subscribers: u64, qos: QoS, messages: u64) {
    let now = Instant::now();
    let config = BrokerConfig {
        sys_interval_secs: 0,
        rng_seed: Some(1),
        max_inflight_messages: u16::MAX,
        outbound_queue_packets: 1 << 20,
        ..BrokerConfig::default()
    };
    let mut core = Core::new(
        config,
        Box::new(MemoryStore::new()),
        Arc::new(ByteCounters::default()),
        now,
    );
    let mut out = Vec::new();
    for s in 0..subscribers {
        connect(&mut core, s + 1, &format!("sub{s}"), now, &mut out);
        let sub = Subscribe {
            packet_id: NonZeroU16::new(1).unwrap(),
            properties: SubscribeProperties::default(),
            filters: vec![(
                TopicFilter::new("bench/+").unwrap(),
                SubscriptionOptions::qos(qos),
            )],
        };
        core.handle(s + 1, Packet::Subscribe(sub), now, &mut out);
    }
    let publisher = subscribers + 1;
    connect(&mut core, publisher, "pub", now, &mut out);
    out.clear();
    let topic = TopicName::new("bench/x").unwrap();
    let payload = Bytes::from(vec![7u8; 64]);
    let start = WallClock::now();
    let mut deliveries = 0u64;
    for i in 0..messages {
        let id = NonZeroU16::new((i % 65_000 + 1) as u16).unwrap();
        let qos_pid = QosPid::new(qos, Some(id)).unwrap();
        let publish = Publish {
            dup: false,
            qos_pid,
            retain: false,
            topic: topic.clone(),
            properties: PublishProperties::default().into(),
            payload: payload.clone(),
        };
        core.handle(publisher, Packet::Publish(publish), now, &mut out);
        for action in out.drain(..) {
            if let Action::Send {
                conn,
                packet: Packet::Publish(p),
            } = action
            {
                deliveries += 1;
                // Subscribers acknowledge at once, so the window never fills.
                if let Some(id) = p.packet_id() {
                    let mut acks = Vec::new();
                    core.handle(conn, Packet::PubAck(Ack::new(id)), now, &mut acks);
                }
            }
        }
        core.flush_store(now, &mut out);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "subscribers={subscribers:>5} qos={} messages={messages} deliveries={deliveries} \
         {:.0} msg/s in, {:.0} deliveries/s out",
        qos.as_u8(),
        messages as f64 / secs,
        deliveries as f64 / secs
    );
}

fn main() {
    run(1, QoS::AtMostOnce, 2_000_000);
    run(1, QoS::AtLeastOnce, 1_000_000);
    run(1000, QoS::AtMostOnce, 5_000);
    run(1000, QoS::AtLeastOnce, 2_000);
}
