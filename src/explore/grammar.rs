//! The grammar `simqtt explore` draws scenarios from, with its weights (docs/explore.md shows
//! the same table; keep the two in step). Two kinds of scenario:
//!
//! - a **workload** (randomised scenario: publishers, subscribers, a nemesis drawn from the
//!   run's seed), its knobs drawn here;
//! - a **program** (explicit scenario): 2–4 named clients with drawn options and a sequence of
//!   steps drawn from a state machine that only offers what makes sense at that point (a client
//!   publishes only while it runs, the broker restarts only after a crash, a heal follows a
//!   partition), so every drawn file is a scenario `simqtt run` accepts and carries out.
//!
//! Programs have no expectations: every checker judges the trace. Steps that wait for an
//! acknowledgement (`connect`, `subscribe`, `unsubscribe`) are drawn only while the broker is
//! up and the client's link is whole, so a missing CONNACK or SUBACK is the broker's doing.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::codec::{ProtocolVersion, QoS};
use crate::history::Direction;
use crate::scenario::{
    ClientSpec, ClientStep, CrashBrokerStep, Dur, FaultKind, HealStep, Nemesis, PacketKind,
    PacketStep, PartitionStep, Persistence, ProtocolMix, PublishAwait, PublishStep, Rate,
    RestartBrokerStep, Scenario, SessionMix, Step, SubscribeStep, UnsubscribeStep, WillSpec,
    Workload,
};

/// Weight of a workload against a program.
pub const KIND_WEIGHTS: [(&str, u32); 2] = [("workload", 3), ("program", 1)];

/// Every fault kind a workload's nemesis may list.
pub const FAULTS: [FaultKind; 13] = [
    FaultKind::Partition,
    FaultKind::PartitionOneWay,
    FaultKind::Loss,
    FaultKind::Latency,
    FaultKind::CrashBroker,
    FaultKind::PowerLoss,
    FaultKind::CrashClient,
    FaultKind::Kick,
    FaultKind::Reset,
    FaultKind::Stall,
    FaultKind::Delay,
    FaultKind::DropPacket,
    FaultKind::DuplicatePacket,
];

/// Program steps and their weights (each drawn only when it applies).
pub const STEP_WEIGHTS: [(&str, u32); 17] = [
    ("connect", 3),
    ("subscribe", 4),
    ("unsubscribe", 1),
    ("publish", 6),
    ("disconnect", 1),
    ("crash_client", 1),
    ("restart_client", 2),
    ("crash_broker", 1),
    ("restart_broker", 3),
    ("partition", 1),
    ("heal", 2),
    ("reset", 1),
    ("stall", 1),
    ("kick", 1),
    ("drop_packet", 1),
    ("duplicate_packet", 1),
    ("wait", 3),
];

/// Filters programs subscribe to and topics they publish on.
const FILTERS: [&str; 6] = ["t/0", "t/1", "t/2", "t/+", "t/#", "will/#"];
const TOPICS: [&str; 3] = ["t/0", "t/1", "t/2"];
/// Packets a program's drop/duplicate steps aim at (the flows of a publish, and the pings).
const PACKETS: [PacketKind; 6] = [
    PacketKind::Publish,
    PacketKind::Puback,
    PacketKind::Pubrec,
    PacketKind::Pubrel,
    PacketKind::Pubcomp,
    PacketKind::Pingresp,
];
const WAITS_MS: [u64; 5] = [100, 500, 1000, 2000, 5000];

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn weighted<'a>(rng: &mut ChaCha8Rng, items: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total.max(1));
    for (name, w) in items {
        if x < *w {
            return name;
        }
        x -= w;
    }
    items[0].0
}

fn qos(rng: &mut ChaCha8Rng) -> QoS {
    pick(rng, &[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

/// One drawn scenario (named `name`), valid by construction.
pub fn draw(rng: &mut ChaCha8Rng, name: &str) -> Scenario {
    // Every field at its default, as an empty file gives it.
    let mut s: Scenario = serde_yaml::from_str("{}").expect("an empty mapping is a scenario");
    s.name = name.to_string();
    match weighted(rng, &KIND_WEIGHTS) {
        "workload" => workload(rng, &mut s),
        _ => program(rng, &mut s),
    }
    s
}

fn workload(rng: &mut ChaCha8Rng, s: &mut Scenario) {
    let mut levels: Vec<QoS> = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .filter(|_| rng.random_bool(0.5))
        .collect();
    if levels.is_empty() {
        levels.push(qos(rng));
    }
    let w = Workload {
        publishers: rng.random_range(1..=3),
        subscribers: rng.random_range(1..=3),
        topics: rng.random_range(1..=4),
        qos: levels,
        rate: Rate {
            count: pick(rng, &[5, 10, 20]),
            per: Dur::from_secs(1),
        },
        duration: Dur::from_secs(rng.random_range(3..=8)),
        retain: pick(rng, &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.3]),
        sessions: pick(
            rng,
            &[SessionMix::Clean, SessionMix::Persistent, SessionMix::Mixed],
        ),
        protocol: pick(
            rng,
            &[ProtocolMix::V311, ProtocolMix::V5, ProtocolMix::Mixed],
        ),
        keepalive: Dur::from_secs(rng.random_range(2..=5)),
        hosts: rng.random_range(1..=2),
        wildcards: rng.random_bool(0.5),
        wills: rng.random_bool(0.4),
        resubscribe: rng.random_bool(0.8),
    };
    s.description = "Drawn by simqtt explore: a randomised workload under a drawn nemesis.".into();
    s.broker.durable = rng.random_bool(0.85);
    s.quiesce = Dur::from_secs(rng.random_range(6..=10));
    s.quiesce = s.quiesce.max(quiet_enough(w.keepalive));
    s.seeds = Some(1);
    if rng.random_bool(0.85) {
        let count = rng.random_range(1..=4usize);
        // A duplicate models a retransmission, which a QoS 0 workload never makes (the
        // scenario format refuses it there).
        let qos0_only = w.qos.iter().all(|q| *q == QoS::AtMostOnce);
        let mut faults: Vec<FaultKind> = Vec::new();
        while faults.len() < count {
            let f = pick(rng, &FAULTS);
            if qos0_only && f == FaultKind::DuplicatePacket {
                continue;
            }
            if !faults.contains(&f) {
                faults.push(f);
            }
        }
        faults.sort();
        s.nemesis = Some(Nemesis {
            faults,
            interval: Dur::from_secs(rng.random_range(1..=4)),
            max_duration: Dur::from_secs(rng.random_range(1..=3)),
            loss_rate: 0.05,
        });
    }
    s.workload = Some(w);
}

/// What the program's state machine knows about a client.
#[derive(Default, Clone)]
struct ClientState {
    running: bool,
    crashed: bool,
    /// Its host is cut off from the broker, or its connection stalled (until a heal).
    impaired: bool,
    filters: Vec<String>,
}

fn program(rng: &mut ChaCha8Rng, s: &mut Scenario) {
    s.description = "Drawn by simqtt explore: clients and a sequence of steps.".into();
    s.broker.durable = rng.random_bool(0.85);
    s.quiesce = Dur::from_secs(rng.random_range(6..=10));
    let n = rng.random_range(2..=4);
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    for name in &names {
        let v5 = rng.random_bool(0.4);
        let clean = rng.random_bool(0.5);
        let will = rng.random_bool(0.4).then(|| WillSpec {
            topic: format!("will/{name}"),
            qos: qos(rng),
            retain: rng.random_bool(0.2),
            delay: (v5 && rng.random_bool(0.3)).then(|| Dur::from_secs(rng.random_range(1..=4))),
            empty: false,
        });
        let spec = ClientSpec {
            clean_session: clean,
            keepalive: Dur::from_secs(rng.random_range(2..=10)),
            protocol: if v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            },
            session_expiry: (v5 && !clean).then(|| Dur::from_secs(pick(rng, &[10, 60, 300]))),
            will,
            resubscribe: rng.random_bool(0.5),
            persistence: if !clean && rng.random_bool(0.5) {
                Persistence::Disk
            } else {
                Persistence::None
            },
            ..ClientSpec::default()
        };
        s.clients.insert(name.clone(), spec);
    }
    let mut state: Vec<ClientState> = vec![ClientState::default(); names.len()];
    let mut broker_up = true;
    let client = |i: usize| ClientStep {
        client: names[i].clone(),
    };
    // Everyone connects first, in a drawn order.
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    for &i in &order {
        s.steps.push(Step::Connect(client(i)));
        state[i].running = true;
    }
    let length = rng.random_range(6..=24);
    let mut guard = 0;
    while s.steps.len() < length + n && guard < 1000 {
        guard += 1;
        let kind = weighted(rng, &STEP_WEIGHTS);
        let i = rng.random_range(0..n);
        let c = &state[i];
        // Acknowledged steps only when the acknowledgement can come.
        let reachable = broker_up && !c.impaired;
        let step = match kind {
            "connect" if !c.running && !c.crashed && reachable => {
                state[i].running = true;
                Step::Connect(client(i))
            }
            "subscribe" if c.running && reachable => {
                let filter = pick(rng, &FILTERS).to_string();
                if !state[i].filters.contains(&filter) {
                    state[i].filters.push(filter.clone());
                }
                Step::Subscribe(SubscribeStep {
                    client: names[i].clone(),
                    filter: Some(filter),
                    qos: Some(qos(rng)),
                    filters: Vec::new(),
                })
            }
            "unsubscribe" if c.running && reachable && !c.filters.is_empty() => {
                let k = rng.random_range(0..c.filters.len());
                let filter = state[i].filters.remove(k);
                Step::Unsubscribe(UnsubscribeStep {
                    client: names[i].clone(),
                    filter: Some(filter),
                    filters: Vec::new(),
                })
            }
            "publish" if c.running => {
                let retain = rng.random_bool(0.15);
                Step::Publish(PublishStep {
                    client: names[i].clone(),
                    topic: pick(rng, &TOPICS).to_string(),
                    qos: qos(rng),
                    retain,
                    count: if rng.random_bool(0.7) {
                        1
                    } else {
                        rng.random_range(2..=5)
                    },
                    rate: rng.random_bool(0.3).then_some(Rate {
                        count: 10,
                        per: Dur::from_secs(1),
                    }),
                    payload_size: None,
                    empty: retain && rng.random_bool(0.2),
                    await_: PublishAwait::Accepted,
                })
            }
            "disconnect" if c.running && reachable => {
                state[i].running = false;
                Step::Disconnect(crate::scenario::DisconnectStep {
                    client: names[i].clone(),
                    with_will: false,
                })
            }
            "crash_client" if c.running => {
                state[i].running = false;
                state[i].crashed = true;
                Step::CrashClient(client(i))
            }
            "restart_client" if c.crashed && reachable => {
                state[i].crashed = false;
                state[i].running = true;
                Step::RestartClient(client(i))
            }
            "crash_broker" if broker_up => {
                broker_up = false;
                Step::CrashBroker(CrashBrokerStep {
                    power_loss: s.broker.durable && rng.random_bool(0.3),
                })
            }
            "restart_broker" if !broker_up => {
                broker_up = true;
                Step::RestartBroker(RestartBrokerStep {})
            }
            "partition" if !c.impaired => {
                state[i].impaired = true;
                Step::Partition(PartitionStep {
                    a: names[i].clone(),
                    b: "broker".into(),
                    one_way: rng.random_bool(0.3),
                })
            }
            "heal" if state.iter().any(|x| x.impaired) => {
                for x in state.iter_mut() {
                    x.impaired = false;
                }
                Step::Heal(HealStep { a: None, b: None })
            }
            "reset" if c.running => Step::Reset(client(i)),
            "stall" if c.running && !c.impaired => {
                state[i].impaired = true;
                Step::Stall(client(i))
            }
            "kick" if c.running && broker_up => Step::Kick(client(i)),
            "drop_packet" | "duplicate_packet" if c.running => {
                let p = PacketStep {
                    client: names[i].clone(),
                    packet: pick(rng, &PACKETS),
                    direction: if rng.random_bool(0.5) {
                        Direction::Outbound
                    } else {
                        Direction::Inbound
                    },
                };
                if kind == "drop_packet" {
                    Step::DropPacket(p)
                } else {
                    Step::DuplicatePacket(p)
                }
            }
            "wait" => Step::Wait(Dur::from_millis(pick(rng, &WAITS_MS))),
            _ => continue,
        };
        s.steps.push(step);
    }
    if let Some(longest) = s.clients.values().map(|c| c.keepalive).max() {
        s.quiesce = s.quiesce.max(quiet_enough(longest));
    }
}

/// A quiet period long enough for keepalive to catch a connection a fault left half open
/// (under simulated TCP a segment lost to a partition stalls its stream for good, even after
/// the heal): three keepalive periods and a second, as the library's chaos files do. A
/// shorter one lets a checker owe a message to a connection nobody could yet see was dead.
pub fn quiet_enough(keepalive: Dur) -> Dur {
    Dur::from_millis(keepalive.millis * 3 + 1000)
}
