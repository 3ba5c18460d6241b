//! A randomised run written out as an explicit scenario.
//!
//! The randomised runner draws clients and subscriptions from the seed ([`sim::drawn_clients`]),
//! connects the subscribers (each subscribing), then the publishers, and lets every publisher
//! hand its messages to its client at the workload's rate while the nemesis injects a fault,
//! holds it, heals it, and draws the next. The trace records every message handed over
//! (`publish_sent`: topic, QoS, retain) and every fault injected (`fault`) with its time; the
//! heals that leave no record (a stall's or a delay's end) come from the run's nemesis log.
//!
//! The explicit form is: the clients, one `connect` (+ `subscribe`) per client in the runner's
//! order, then one single-message `publish` per message handed over and the fault steps, in
//! trace order, separated by `wait`s that put each at its recorded time (the random run's
//! quiet period, which begins by healing everything while publishers may still be handing over
//! their last messages, becomes a `heal:` followed by those messages). Each heal mirrors
//! what the nemesis does (`sim::Runner::heal_fault`):
//!
//! | nemesis fault | its heal | explicit heal |
//! |---|---|---|
//! | partition, partition_one_way, loss | repair the link, loss 0 | `heal: {a, b}` |
//! | latency | the same, and the seed's default latency | `heal: {a, b}` + `latency` at the knobs' values |
//! | crash_broker, power_loss | restart | `restart_broker` |
//! | crash_client | restart with persistence | `restart_client` |
//! | stall | unstall, no delay | `heal:` (every fault; nothing else is active then) |
//! | delay | no delay | `delay: {by: 0ms}` |
//! | drop_packet | clear the rule, reset the connection | `heal:` + `reset` |
//! | duplicate_packet | clear the rule | `heal:` |
//! | kick, reset | (nothing left to heal) | — |
//!
//! Steps take simulated time the random run did not spend (a `publish` step returns once its
//! client has the message, a tick or more later), so waits are shortened by an estimate of
//! each step's cost ([`Variant::Estimated`]); when that loses the failure, the explicit run's
//! own trace is measured and the waits corrected (calibration), and then the raw trace gaps
//! are tried ([`Variant::Raw`]).

use std::collections::BTreeMap;

use crate::history::{Event, Fault, Trace};
use crate::scenario::{
    ClientStep, CrashBrokerStep, DelayStep, Dur, FaultKind, HealStep, LatencyStep, LossStep,
    PacketKind, PacketStep, PartitionStep, PublishAwait, PublishStep, RestartBrokerStep, Scenario,
    Step, SubscribeStep,
};
use crate::sim::{self, world::NemesisHeal};

/// Calibration rounds tried after the estimated form loses the failure.
pub const CALIBRATION_ROUNDS: usize = 3;

/// How the waits between actions are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Trace gaps less each step's estimated cost.
    Estimated,
    /// Estimated, corrected by measuring the explicit run ([`Conversion::calibrate`]).
    Calibrated,
    /// The trace gaps as they are.
    Raw,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Estimated => "estimated",
            Variant::Calibrated => "calibrated",
            Variant::Raw => "raw",
        }
    }
}

/// What the randomised run drew and the explicit form writes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drawn {
    /// Messages handed to clients.
    pub messages: usize,
    /// Faults injected.
    pub faults: usize,
}

/// One thing that happened at a time: a message handed over, or a fault step (with its heal
/// companions).
#[derive(Debug, Clone)]
struct Action {
    at_ms: u64,
    steps: Vec<Step>,
    /// Where the explicit run's trace shows this action (for calibration).
    anchor: Option<Anchor>,
}

/// The `nth` record (from 0) of a kind in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Anchor {
    what: AnchorKind,
    nth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum AnchorKind {
    /// A `publish_sent` of this client.
    Publish(String),
    /// A `fault` record with this tag.
    Fault(&'static str),
}

/// A randomised run, ready to be written out.
pub struct Conversion {
    base: Scenario,
    /// The setup: connects and subscribes.
    setup: Vec<Step>,
    /// When the setup ended in the random run.
    setup_end_ms: u64,
    actions: Vec<Action>,
    tick_ms: u64,
    pub drawn: Drawn,
}

fn fault_tag(f: &Fault) -> &'static str {
    match f {
        Fault::Partition { .. } => "partition",
        Fault::Heal { .. } => "heal",
        Fault::Loss { .. } => "loss",
        Fault::Latency { .. } => "latency",
        Fault::Stall { .. } => "stall",
        Fault::Reset { .. } => "reset",
        Fault::Delay { .. } => "delay",
        Fault::DropPacket { .. } => "drop_packet",
        Fault::DuplicatePacket { .. } => "duplicate_packet",
        Fault::BrokerCrash { .. } => "broker_crash",
        Fault::BrokerRestart => "broker_restart",
        Fault::ClientCrash { .. } => "client_crash",
        Fault::ClientRestart { .. } => "client_restart",
        Fault::Kick { .. } => "kick",
    }
}

/// The fault tag an explicit step records first (its calibration anchor), if it has one.
fn step_fault_tag(step: &Step) -> Option<&'static str> {
    Some(match step {
        Step::Partition(_) => "partition",
        Step::Heal(h) if h.a.is_some() => "heal",
        Step::Loss(_) => "loss",
        Step::Latency(_) => "latency",
        Step::Stall(_) => "stall",
        Step::Reset(_) => "reset",
        Step::Delay(_) => "delay",
        Step::DropPacket(_) => "drop_packet",
        Step::DuplicatePacket(_) => "duplicate_packet",
        Step::CrashBroker(_) => "broker_crash",
        Step::RestartBroker(_) => "broker_restart",
        Step::CrashClient(_) => "client_crash",
        Step::RestartClient(_) => "client_restart",
        Step::Kick(_) => "kick",
        _ => return None,
    })
}

pub fn packet_kind(name: &str) -> Option<PacketKind> {
    const ALL: [PacketKind; 15] = [
        PacketKind::Connect,
        PacketKind::Connack,
        PacketKind::Publish,
        PacketKind::Puback,
        PacketKind::Pubrec,
        PacketKind::Pubrel,
        PacketKind::Pubcomp,
        PacketKind::Subscribe,
        PacketKind::Suback,
        PacketKind::Unsubscribe,
        PacketKind::Unsuback,
        PacketKind::Pingreq,
        PacketKind::Pingresp,
        PacketKind::Disconnect,
        PacketKind::Auth,
    ];
    ALL.into_iter().find(|k| k.as_str() == name)
}

/// Simulated time a step takes beyond its wait (ticks), as the executor runs it.
fn cost_ticks(step: &Step) -> u64 {
    match step {
        Step::Publish(_)
        | Step::CrashBroker(_)
        | Step::RestartBroker(_)
        | Step::CrashClient(_)
        | Step::Reset(_)
        | Step::Kick(_) => 1,
        // Waits for the CONNACK: a round trip and a few ticks.
        Step::RestartClient(_) => 4,
        _ => 0,
    }
}

impl Conversion {
    /// Reads the run of randomised `scenario` with `seed`: its trace and nemesis heals.
    pub fn new(
        scenario: &Scenario,
        seed: u64,
        trace: &Trace,
        heals: &[NemesisHeal],
    ) -> Result<Conversion, String> {
        let drawn = sim::drawn_clients(scenario, seed)
            .ok_or_else(|| format!("{} is not a randomised scenario", scenario.name))?;
        let knobs = sim::knobs(seed);
        let mut base = scenario.clone();
        base.workload = None;
        base.nemesis = None;
        base.seeds = None;
        base.seed = Some(seed);
        base.clients = drawn.clients.clone();
        base.steps = Vec::new();
        let mut setup = Vec::new();
        // The runner's order: subscribers (each subscribing), then publishers.
        for (name, filters) in &drawn.subscriptions {
            setup.push(Step::Connect(ClientStep {
                client: name.clone(),
            }));
            setup.push(Step::Subscribe(SubscribeStep {
                client: name.clone(),
                filter: None,
                qos: None,
                filters: filters.clone(),
            }));
        }
        for name in drawn.clients.keys() {
            if !drawn.subscriptions.contains_key(name) {
                setup.push(Step::Connect(ClientStep {
                    client: name.clone(),
                }));
            }
        }
        // The quiet period begins by healing every fault (the broker restarted just before);
        // publishers may still be handing over messages then.
        let quiesce_ms = trace
            .records
            .iter()
            .find(|r| matches!(&r.event, Event::Note { text } if text.starts_with("quiesce")))
            .map(|r| r.at_ms);
        // Heals that leave no record of their own, or whose record needs company (`None`: any
        // target; the nemesis heals one fault at a time, so an instant names the heal).
        let heal_at = |kind: FaultKind, target: Option<&str>, at: u64| {
            heals
                .iter()
                .any(|h| h.kind == kind && target.is_none_or(|t| h.target == t) && h.at_ms == at)
        };
        let mut actions: Vec<Action> = Vec::new();
        let mut publishes: BTreeMap<String, usize> = BTreeMap::new();
        let mut faults = 0;
        let mut messages = 0;
        let mut setup_end_ms = 0;
        let mut started = false;
        for record in &trace.records {
            let at = record.at_ms;
            match &record.event {
                Event::Note { text } if Some(at) == quiesce_ms && text.starts_with("quiesce") => {
                    actions.push(Action {
                        at_ms: at,
                        steps: vec![Step::Heal(HealStep { a: None, b: None })],
                        anchor: None,
                    });
                }
                Event::ConnAck { .. } | Event::SubAck { .. } if !started => {
                    setup_end_ms = at;
                }
                Event::PublishSent {
                    client,
                    topic,
                    qos,
                    retain,
                    payload_len,
                    ..
                } => {
                    started = true;
                    messages += 1;
                    let nth = publishes.entry(client.clone()).or_insert(0);
                    actions.push(Action {
                        at_ms: at,
                        steps: vec![Step::Publish(PublishStep {
                            client: client.clone(),
                            topic: topic.clone(),
                            qos: *qos,
                            retain: *retain,
                            count: 1,
                            rate: None,
                            payload_size: None,
                            empty: *payload_len == 0,
                            await_: PublishAwait::Accepted,
                        })],
                        anchor: Some(Anchor {
                            what: AnchorKind::Publish(client.clone()),
                            nth: *nth,
                        }),
                    });
                    *nth += 1;
                }
                Event::Fault { fault } => {
                    started = true;
                    let steps = fault_steps(fault, at, &knobs, &heal_at)?;
                    let heal = matches!(
                        fault,
                        Fault::Heal { .. } | Fault::BrokerRestart | Fault::ClientRestart { .. }
                    ) || matches!(fault, Fault::Reset { client }
                        if heal_at(FaultKind::DropPacket, Some(client), at));
                    if !heal {
                        faults += 1;
                    }
                    actions.push(Action {
                        at_ms: at,
                        steps,
                        anchor: None,
                    });
                }
                _ => {}
            }
        }
        // Heals without a record of their own, placed after the records of their time.
        for heal in heals {
            let steps = match heal.kind {
                FaultKind::Stall | FaultKind::DuplicatePacket => {
                    vec![Step::Heal(HealStep { a: None, b: None })]
                }
                FaultKind::Delay => vec![Step::Delay(DelayStep {
                    client: heal.target.clone(),
                    by: Dur::from_millis(0),
                })],
                _ => continue,
            };
            let pos = actions.partition_point(|a| a.at_ms <= heal.at_ms);
            actions.insert(
                pos,
                Action {
                    at_ms: heal.at_ms,
                    steps,
                    anchor: None,
                },
            );
        }
        // A fault action's anchor is the first record its steps make of a kind that counts one
        // per step (a `heal:` of everything records one per host, so it is not an anchor).
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for action in &mut actions {
            for step in &action.steps {
                if let Some(tag) = step_fault_tag(step) {
                    let n = counts.entry(tag).or_insert(0);
                    if action.anchor.is_none() {
                        action.anchor = Some(Anchor {
                            what: AnchorKind::Fault(tag),
                            nth: *n,
                        });
                    }
                    *n += 1;
                }
            }
        }
        Ok(Conversion {
            base,
            setup,
            setup_end_ms,
            actions,
            tick_ms: knobs.tick_ms.max(1),
            drawn: Drawn { messages, faults },
        })
    }

    /// The explicit scenario in this variant; `adjust` (per action, ms) corrects the wait
    /// before each action (calibration).
    pub fn explicit(&self, variant: Variant, adjust: &[i64]) -> Scenario {
        let mut s = self.base.clone();
        s.steps = self.setup.clone();
        let mut now = self.setup_end_ms;
        let tick = self.tick_ms;
        for (i, action) in self.actions.iter().enumerate() {
            let gap = i64::try_from(action.at_ms).unwrap_or(i64::MAX)
                - i64::try_from(now).unwrap_or(i64::MAX)
                + adjust.get(i).copied().unwrap_or(0);
            if gap > 0 {
                // Whole ticks: the executor runs whole ticks anyway.
                let ms = (gap as u64).div_ceil(tick) * tick;
                s.steps.push(Step::Wait(Dur::from_millis(ms)));
                now += ms;
            }
            now = now.max(action.at_ms);
            s.steps.extend(action.steps.iter().cloned());
            if variant != Variant::Raw {
                now += action.steps.iter().map(cost_ticks).sum::<u64>() * tick;
            }
        }
        s
    }

    /// Measures where `trace` (a run of `candidate`, built with `adjust`) put each anchored
    /// action, and returns `adjust` corrected so the next build lands nearer the random run's
    /// times.
    pub fn calibrate(&self, _candidate: &Scenario, trace: &Trace, adjust: &[i64]) -> Vec<i64> {
        let mut seen: BTreeMap<AnchorKind, Vec<u64>> = BTreeMap::new();
        for r in &trace.records {
            match &r.event {
                Event::PublishSent { client, .. } => seen
                    .entry(AnchorKind::Publish(client.clone()))
                    .or_default()
                    .push(r.at_ms),
                Event::Fault { fault } => seen
                    .entry(AnchorKind::Fault(fault_tag(fault)))
                    .or_default()
                    .push(r.at_ms),
                _ => {}
            }
        }
        let mut out: Vec<i64> = (0..self.actions.len())
            .map(|i| adjust.get(i).copied().unwrap_or(0))
            .collect();
        let mut previous_drift = 0i64;
        for (i, action) in self.actions.iter().enumerate() {
            let Some(anchor) = &action.anchor else {
                continue;
            };
            let Some(&measured) = seen.get(&anchor.what).and_then(|v| v.get(anchor.nth)) else {
                continue;
            };
            let drift = i64::try_from(measured).unwrap_or(i64::MAX)
                - i64::try_from(action.at_ms).unwrap_or(i64::MAX);
            out[i] -= drift - previous_drift;
            previous_drift = drift;
        }
        out
    }
}

/// The explicit steps of a recorded fault (with the companions its heal needs).
fn fault_steps(
    fault: &Fault,
    at: u64,
    knobs: &sim::Knobs,
    heal_at: &dyn Fn(FaultKind, Option<&str>, u64) -> bool,
) -> Result<Vec<Step>, String> {
    let client = |c: &str| ClientStep {
        client: c.to_string(),
    };
    Ok(match fault {
        Fault::Partition { a, b, one_way } => vec![Step::Partition(PartitionStep {
            a: a.clone(),
            b: b.clone(),
            one_way: *one_way,
        })],
        Fault::Heal { a, b } => {
            let mut steps = vec![Step::Heal(HealStep {
                a: Some(a.clone()),
                b: Some(b.clone()),
            })];
            // A latency fault's heal also puts the seed's latency back.
            if heal_at(FaultKind::Latency, None, at) {
                steps.push(Step::Latency(LatencyStep {
                    a: a.clone(),
                    b: b.clone(),
                    latency: Dur::from_millis(knobs.min_latency_ms),
                    jitter: Dur::from_millis(knobs.max_latency_ms - knobs.min_latency_ms),
                }));
            }
            steps
        }
        Fault::Loss { a, b, rate } => vec![Step::Loss(LossStep {
            a: a.clone(),
            b: b.clone(),
            rate: *rate,
        })],
        Fault::Latency {
            a,
            b,
            latency_ms,
            jitter_ms,
        } => vec![Step::Latency(LatencyStep {
            a: a.clone(),
            b: b.clone(),
            latency: Dur::from_millis(*latency_ms),
            jitter: Dur::from_millis(*jitter_ms),
        })],
        Fault::Stall { client: c } => vec![Step::Stall(client(c))],
        Fault::Reset { client: c } => {
            if heal_at(FaultKind::DropPacket, Some(c), at) {
                // The nemesis clears the drop rule before it resets the connection.
                vec![
                    Step::Heal(HealStep { a: None, b: None }),
                    Step::Reset(client(c)),
                ]
            } else {
                vec![Step::Reset(client(c))]
            }
        }
        Fault::Delay {
            client: c,
            delay_ms,
        } => vec![Step::Delay(DelayStep {
            client: c.clone(),
            by: Dur::from_millis(*delay_ms),
        })],
        Fault::DropPacket {
            client: c,
            direction,
            packet_type,
        }
        | Fault::DuplicatePacket {
            client: c,
            direction,
            packet_type,
        } => {
            let packet = packet_kind(packet_type)
                .ok_or_else(|| format!("unknown packet type {packet_type:?} in the trace"))?;
            let step = PacketStep {
                client: c.clone(),
                packet,
                direction: *direction,
            };
            if matches!(fault, Fault::DropPacket { .. }) {
                vec![Step::DropPacket(step)]
            } else {
                vec![Step::DuplicatePacket(step)]
            }
        }
        Fault::BrokerCrash { power_loss } => vec![Step::CrashBroker(CrashBrokerStep {
            power_loss: *power_loss,
        })],
        Fault::BrokerRestart => vec![Step::RestartBroker(RestartBrokerStep {})],
        Fault::ClientCrash { client: c } => vec![Step::CrashClient(client(c))],
        Fault::ClientRestart { client: c } => vec![Step::RestartClient(client(c))],
        Fault::Kick { client: c } => vec![Step::Kick(client(c))],
    })
}
