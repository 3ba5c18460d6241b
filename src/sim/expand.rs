//! Expands a randomised scenario, from the seed, into explicit clients and timed steps, so one
//! executor runs both kinds. Explicit scenarios pass through unchanged.
//!
//! The expansion: publishers `p0..` and subscribers `s0..` spread round-robin over hosts
//! `h0..`; every subscriber subscribes to a few topics (or wildcards) drawn from the seed; then
//! the timeline interleaves each publisher's messages (at its rate, QoS and topic drawn per
//! message) with nemesis faults (mean gap `interval`, healed within `max_duration`).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec::{PacketType, QoS};
use crate::scenario::{
    ClientSpec, ClientStep, CrashBrokerStep, DelayStep, Dur, FaultKind, FilterSpec, HealStep,
    LatencyStep, LossStep, PacketKind, PacketStep, PartitionStep, ProtocolMix, PublishStep,
    RestartBrokerStep, Scenario, SessionMix, Step, SubscribeStep, WillSpec,
};
use crate::transport::fault::Direction;

/// Timed action of the timeline.
struct Timed {
    at_ms: u64,
    order: u64,
    step: Step,
}

/// The clients and steps to run.
pub fn expand(scenario: &Scenario, seed: u64) -> (BTreeMap<String, ClientSpec>, Vec<Step>) {
    let Some(w) = &scenario.workload else {
        return (scenario.clients.clone(), scenario.steps.clone());
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut clients = BTreeMap::new();
    let hosts = w.hosts.max(1);
    let mut next_host = 0u32;
    let mut client = |rng: &mut ChaCha8Rng, name: String| {
        let persistent = match w.sessions {
            SessionMix::Clean => false,
            SessionMix::Persistent => true,
            SessionMix::Mixed => rng.random_bool(0.5),
        };
        let protocol = match w.protocol {
            ProtocolMix::V311 => crate::codec::ProtocolVersion::V311,
            ProtocolMix::V5 => crate::codec::ProtocolVersion::V5,
            ProtocolMix::Mixed => {
                if rng.random_bool(0.5) {
                    crate::codec::ProtocolVersion::V5
                } else {
                    crate::codec::ProtocolVersion::V311
                }
            }
        };
        let host = format!("h{}", next_host % hosts);
        next_host += 1;
        let spec = ClientSpec {
            client_id: None,
            clean_session: !persistent,
            keepalive: w.keepalive,
            protocol,
            session_expiry: (persistent && protocol == crate::codec::ProtocolVersion::V5)
                .then_some(Dur::from_secs(3600)),
            will: w.wills.then(|| WillSpec {
                topic: format!("will/{name}"),
                qos: QoS::AtLeastOnce,
                retain: false,
                delay: None,
                empty: false,
            }),
            resubscribe: w.resubscribe,
            reconnect: true,
            persistence: crate::scenario::Persistence::None,
            host: Some(host),
        };
        (name, spec)
    };
    let publishers: Vec<String> = (0..w.publishers).map(|i| format!("p{i}")).collect();
    let subscribers: Vec<String> = (0..w.subscribers).map(|i| format!("s{i}")).collect();
    for name in subscribers.iter().chain(publishers.iter()) {
        let (n, s) = client(&mut rng, name.clone());
        clients.insert(n, s);
    }
    let topics: Vec<String> = (0..w.topics.max(1)).map(|i| format!("t/{i}")).collect();
    let mut steps = Vec::new();
    let mut subscriptions: BTreeMap<String, Vec<FilterSpec>> = BTreeMap::new();
    for s in &subscribers {
        steps.push(Step::Connect(ClientStep { client: s.clone() }));
        let mut filters = Vec::new();
        let wanted = rng.random_range(1..=topics.len().min(3));
        for _ in 0..wanted {
            let filter = if w.wildcards && rng.random_bool(0.3) {
                if rng.random_bool(0.5) {
                    "t/+".to_string()
                } else {
                    "#".to_string()
                }
            } else {
                topics[rng.random_range(0..topics.len())].clone()
            };
            if filters.iter().any(|f: &FilterSpec| f.filter == filter) {
                continue;
            }
            filters.push(FilterSpec {
                filter,
                qos: QoS::ExactlyOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            });
        }
        subscriptions.insert(s.clone(), filters.clone());
        steps.push(Step::Subscribe(SubscribeStep {
            client: s.clone(),
            filter: None,
            qos: None,
            filters,
        }));
    }
    for p in &publishers {
        steps.push(Step::Connect(ClientStep { client: p.clone() }));
    }

    let mut timeline: Vec<Timed> = Vec::new();
    let mut order = 0u64;
    let mut push = |timeline: &mut Vec<Timed>, at_ms: u64, step: Step| {
        order += 1;
        timeline.push(Timed { at_ms, order, step });
    };
    let interval = w.rate.interval_ms();
    for p in &publishers {
        let mut at = rng.random_range(0..interval.max(1));
        while at < w.duration.millis {
            let qos = w.qos[rng.random_range(0..w.qos.len().max(1)).min(w.qos.len() - 1)];
            let topic = topics[rng.random_range(0..topics.len())].clone();
            let retain = w.retain > 0.0 && rng.random_bool(w.retain.clamp(0.0, 1.0));
            push(
                &mut timeline,
                at,
                Step::Publish(PublishStep {
                    client: p.clone(),
                    topic,
                    qos,
                    retain,
                    count: 1,
                    rate: None,
                    payload_size: None,
                    empty: false,
                }),
            );
            at += interval;
        }
    }
    if let Some(n) = &scenario.nemesis {
        let all: Vec<String> = clients.keys().cloned().collect();
        let host_names: Vec<String> = (0..hosts).map(|i| format!("h{i}")).collect();
        let mut at = 0u64;
        loop {
            // Exponential gaps with mean `interval`.
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            at += ((-u.ln()) * n.interval.millis as f64).max(1.0) as u64;
            if at >= w.duration.millis || n.faults.is_empty() {
                break;
            }
            let kind = n.faults[rng.random_range(0..n.faults.len())];
            let heal_at = at + rng.random_range(1..=n.max_duration.millis.max(1));
            let client = all[rng.random_range(0..all.len())].clone();
            let host = host_names[rng.random_range(0..host_names.len())].clone();
            let c = || ClientStep {
                client: client.clone(),
            };
            match kind {
                FaultKind::Partition | FaultKind::PartitionOneWay => {
                    push(
                        &mut timeline,
                        at,
                        Step::Partition(PartitionStep {
                            a: host.clone(),
                            b: "broker".into(),
                            one_way: kind == FaultKind::PartitionOneWay,
                        }),
                    );
                    push(
                        &mut timeline,
                        heal_at,
                        Step::Heal(HealStep {
                            a: Some(host.clone()),
                            b: Some("broker".into()),
                        }),
                    );
                }
                FaultKind::Loss => {
                    push(
                        &mut timeline,
                        at,
                        Step::Loss(LossStep {
                            a: host.clone(),
                            b: "broker".into(),
                            rate: n.loss_rate,
                        }),
                    );
                    push(
                        &mut timeline,
                        heal_at,
                        Step::Loss(LossStep {
                            a: host.clone(),
                            b: "broker".into(),
                            rate: 0.0,
                        }),
                    );
                }
                FaultKind::Latency => {
                    push(
                        &mut timeline,
                        at,
                        Step::Latency(LatencyStep {
                            a: host.clone(),
                            b: "broker".into(),
                            latency: Dur::from_millis(rng.random_range(20..200)),
                            jitter: Dur::from_millis(rng.random_range(0..50)),
                        }),
                    );
                    push(
                        &mut timeline,
                        heal_at,
                        Step::Latency(LatencyStep {
                            a: host.clone(),
                            b: "broker".into(),
                            latency: Dur::from_millis(1),
                            jitter: Dur::from_millis(4),
                        }),
                    );
                }
                FaultKind::CrashBroker | FaultKind::PowerLoss => {
                    push(
                        &mut timeline,
                        at,
                        Step::CrashBroker(CrashBrokerStep {
                            power_loss: kind == FaultKind::PowerLoss,
                        }),
                    );
                    push(
                        &mut timeline,
                        heal_at,
                        Step::RestartBroker(RestartBrokerStep {}),
                    );
                }
                FaultKind::CrashClient => {
                    push(&mut timeline, at, Step::CrashClient(c()));
                    push(&mut timeline, heal_at, Step::RestartClient(c()));
                    // The restarted process is a new application: it subscribes again.
                    if let Some(filters) = subscriptions.get(&client) {
                        push(
                            &mut timeline,
                            heal_at,
                            Step::Subscribe(SubscribeStep {
                                client: client.clone(),
                                filter: None,
                                qos: None,
                                filters: filters.clone(),
                            }),
                        );
                    }
                }
                FaultKind::Kick => push(&mut timeline, at, Step::Kick(c())),
                FaultKind::Reset => push(&mut timeline, at, Step::Reset(c())),
                FaultKind::Stall => push(&mut timeline, at, Step::Stall(c())),
                FaultKind::Delay => {
                    push(
                        &mut timeline,
                        at,
                        Step::Delay(DelayStep {
                            client: client.clone(),
                            by: Dur::from_millis(rng.random_range(10..300)),
                        }),
                    );
                    push(
                        &mut timeline,
                        heal_at,
                        Step::Delay(DelayStep {
                            client: client.clone(),
                            by: Dur::from_millis(0),
                        }),
                    );
                }
                FaultKind::DropPacket | FaultKind::DuplicatePacket => {
                    const KINDS: [PacketKind; 7] = [
                        PacketKind::Publish,
                        PacketKind::Puback,
                        PacketKind::Pubrec,
                        PacketKind::Pubrel,
                        PacketKind::Pubcomp,
                        PacketKind::Pingreq,
                        PacketKind::Pingresp,
                    ];
                    let packet = KINDS[rng.random_range(0..KINDS.len())];
                    let direction = match packet.packet_type() {
                        PacketType::PingResp => Direction::Inbound,
                        PacketType::PingReq => Direction::Outbound,
                        _ if rng.random_bool(0.5) => Direction::Inbound,
                        _ => Direction::Outbound,
                    };
                    let step = PacketStep {
                        client: client.clone(),
                        packet,
                        direction,
                    };
                    push(
                        &mut timeline,
                        at,
                        if kind == FaultKind::DropPacket {
                            Step::DropPacket(step)
                        } else {
                            Step::DuplicatePacket(step)
                        },
                    );
                }
            }
        }
    }
    timeline.sort_by_key(|t| (t.at_ms, t.order));
    let mut now = 0u64;
    for t in timeline {
        if t.at_ms > now {
            steps.push(Step::Wait(Dur::from_millis(t.at_ms - now)));
            now = t.at_ms;
        }
        steps.push(t.step);
    }
    if w.duration.millis > now {
        steps.push(Step::Wait(Dur::from_millis(w.duration.millis - now)));
    }
    (clients, steps)
}
