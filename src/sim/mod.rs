//! Target #1: a seeded turmoil world running the simqtt broker and client sessions under
//! faults, driven by a scenario, judged by the trace checkers.
//!
//! `run(scenario, seed)` builds the world from the seed alone (turmoil's RNG, the link
//! latencies, every nemesis draw, the clients' backoff jitter, the broker's RNG), runs the
//! explicit steps or the randomised workload, heals every fault, lets the system quiesce, and
//! returns the trace with the failures: unmet expectations and checker violations. Same
//! scenario + same seed ⇒ byte-identical trace (tested in `tests/determinism.rs`).
//!
//! Speed (DESIGN.md, Performance shape): turmoil's cost per tick grows with the number of
//! hosts, so sessions share few client hosts (explicit scenarios put each named client on its
//! own host unless `host:` says otherwise; workloads spread sessions over `hosts`), and the
//! tick is [`TICK`]: MQTT's timers are whole seconds, and link latencies are drawn as
//! multiples of the tick so no precision is pretended.
//!
//! Link faults are turmoil's. Know its TCP: there is no retransmission, so a segment dropped
//! by a partition or by a link `fail_rate` stalls that stream forever. "Loss" therefore makes
//! half-open connections that keepalive must catch, which is exactly the MQTT behaviour worth
//! testing; loss that real TCP would hide is modelled as latency/jitter (`latency`) or as the
//! fault layer's `delay`.

pub mod backend;
pub mod isolation;
pub mod raw;
pub mod world;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec::{matches, QoS};
use crate::history::checkers::{self, CheckerName};
use crate::history::{Direction, Event, Fault, Trace};
use crate::scenario::{
    ClientSpec, FaultKind, FilterSpec, Kind, PacketKind, Persistence, ProtocolMix, Scenario,
    SessionMix, Step, WillSpec, Workload,
};
use crate::transport::fault::FaultControl;
pub use backend::Backend;
use world::{lock, HostCommand, PlannedPublish, Session, Shared, SharedRef};

/// The simulation tick. Measured on this machine: 1 ms ticks cost about 3× the wall time of
/// 5 ms ticks for the same simulated time (`simqtt run scenarios/chaos/chaos-qos1-persistent.yaml
/// --jobs 1`, release: 2.1–2.4 s at 5 ms, 6.3–7.4 s at 1 ms), and nothing in MQTT needs finer
/// timing than the keepalive's seconds.
pub const TICK: Duration = Duration::from_millis(5);
/// How long a `connect` step waits for its CONNACK, and `subscribe`/`unsubscribe` for theirs.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Longest a single run may simulate (a bound on a runaway scenario).
const RUN_LIMIT: Duration = Duration::from_secs(3600);
/// Epoch of every simulation: fixed, so nothing depends on the wall clock.
const EPOCH_SECS: u64 = 1_700_000_000;

/// Everything derived from the seed, printed after it (STYLE.md #7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    pub tick_ms: u64,
    pub min_latency_ms: u64,
    pub max_latency_ms: u64,
}

impl fmt::Display for Knobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tick={}ms latency={}..{}ms",
            self.tick_ms, self.min_latency_ms, self.max_latency_ms
        )
    }
}

impl Knobs {
    fn from_rng(rng: &mut ChaCha8Rng) -> Knobs {
        let tick_ms = u64::try_from(TICK.as_millis()).unwrap_or(5);
        let min_latency_ms = tick_ms * rng.random_range(0..=2u64);
        let max_latency_ms = min_latency_ms + tick_ms * rng.random_range(1..=6u64);
        Knobs {
            tick_ms,
            min_latency_ms,
            max_latency_ms,
        }
    }
}

/// One thing that went wrong in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `expect` (a step's expectation), `sim` (the world itself), or a checker's name.
    pub kind: String,
    /// The normative statement, when one applies.
    pub spec: String,
    /// A human report with the trace records around it.
    pub text: String,
    /// What was owed (the spec's promise or the step's expectation), one line.
    pub owed: String,
    /// What happened instead, one line.
    pub happened: String,
}

/// The outcome of one seed of one scenario.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub scenario: String,
    pub seed: u64,
    pub knobs: Knobs,
    pub trace: Trace,
    pub failures: Vec<Failure>,
    /// Permitted behaviours the checkers observed, with counts.
    pub notes: BTreeMap<String, usize>,
    pub simulated: Duration,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The seeds `simqtt run` tries for a scenario: `count` seeds from its pinned `seed` (or 0).
pub fn seeds_of(scenario: &Scenario, count: Option<u32>) -> Vec<u64> {
    let first = scenario.seed.unwrap_or(0);
    let n = count.unwrap_or_else(|| scenario.default_seeds());
    (0..u64::from(n)).map(|i| first.wrapping_add(i)).collect()
}

/// The knobs a seed gives (the same ones `run` uses).
pub fn knobs(seed: u64) -> Knobs {
    Knobs::from_rng(&mut ChaCha8Rng::seed_from_u64(seed))
}

/// Runs one seed of a scenario.
pub fn run(scenario: &Scenario, seed: u64) -> RunReport {
    run_observed(scenario, seed).0
}

/// [`run`], also returning when the nemesis healed each fault it drew (the shrinker writes a
/// randomised run out as explicit steps from the trace and these).
pub fn run_observed(scenario: &Scenario, seed: u64) -> (RunReport, Vec<world::NemesisHeal>) {
    let knobs = knobs(seed);
    let sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .tick_duration(Duration::from_millis(knobs.tick_ms))
        .min_message_latency(Duration::from_millis(knobs.min_latency_ms))
        .max_message_latency(Duration::from_millis(knobs.max_latency_ms))
        .simulation_duration(RUN_LIMIT + Duration::from_secs(60))
        .build();
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        broker_addr: format!("{}:{}", scenario.broker.host, world::BROKER_PORT),
        seed,
        planted_bug: scenario.broker.planted_bug,
        ..Shared::default()
    }));
    let backend = backend::Turmoil::new(sim, shared.clone(), scenario.broker.host.clone());
    let mut report = execute(backend, scenario, seed, shared.clone());
    judge(scenario, &mut report);
    let heals = std::mem::take(&mut lock(&shared).nemesis_heals);
    (report, heals)
}

/// Runs one seed of a scenario on `backend` (the step executor both backends share);
/// `shared` is the state the backend's hosts write the trace into. Every draw (workload,
/// nemesis) comes from the seed after its knobs, so a seed means the same schedule on both
/// backends. The report's failures are the unmet expectations (no checkers yet: [`judge`]).
pub fn execute<B: Backend>(
    backend: B,
    scenario: &Scenario,
    seed: u64,
    shared: SharedRef,
) -> RunReport {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let _ = Knobs::from_rng(&mut rng);
    let mut runner = Runner {
        backend,
        shared: shared.clone(),
        rng,
        broker_host: scenario.broker.host.clone(),
        client_hosts: Vec::new(),
        failures: Vec::new(),
        broker_up: true,
        expect_marks: BTreeMap::new(),
    };
    let result = match scenario.kind() {
        Kind::Explicit => runner.explicit(scenario),
        Kind::Randomised => runner.randomised(scenario),
    };
    if let Err(text) = result {
        let at = runner.now_ms();
        runner.failures.push(Failure {
            kind: "sim".into(),
            spec: String::new(),
            owed: "the scenario runs to its end".into(),
            happened: text.clone(),
            text: text.clone(),
        });
        lock(&shared).record(at, "sim", Event::Note { text });
    }
    let failures = std::mem::take(&mut runner.failures);
    let simulated = runner.backend.elapsed();
    drop(runner);
    let trace = std::mem::take(&mut lock(&shared).trace);
    RunReport {
        scenario: scenario.name.clone(),
        seed,
        knobs: knobs(seed),
        trace,
        failures,
        notes: BTreeMap::new(),
        simulated,
    }
}

/// Runs the simulation only: the report's failures are the unmet expectations; `judge`
/// adds the checkers' verdicts (kept apart so a benchmark can time the two).
pub fn simulate(scenario: &Scenario, seed: u64) -> RunReport {
    let mut s = scenario.clone();
    s.checkers = Some(Vec::new());
    run(&s, seed)
}

/// Applies the scenario's checkers to a finished run.
pub fn judge(scenario: &Scenario, report: &mut RunReport) {
    let trace = &report.trace;
    let failures = &mut report.failures;
    let notes = &mut report.notes;
    for outcome in checkers::run(trace, &scenario.checker_list()) {
        for (note, count) in &outcome.notes {
            *notes
                .entry(format!("{}: {note}", outcome.checker))
                .or_insert(0) += count;
        }
        for v in &outcome.violations {
            failures.push(Failure {
                kind: v.checker.as_str().to_string(),
                spec: v.spec.clone(),
                owed: v.owed.clone(),
                happened: v.happened.clone(),
                text: v.render(trace),
            });
        }
    }
}

struct Runner<B: Backend> {
    backend: B,
    shared: SharedRef,
    rng: ChaCha8Rng,
    broker_host: String,
    client_hosts: Vec<String>,
    failures: Vec<Failure>,
    broker_up: bool,
    /// Per client: trace length when its last `expect_messages` ended (later expectations
    /// count deliveries from there).
    expect_marks: BTreeMap<String, usize>,
}

type StepResult = Result<(), String>;

impl<B: Backend> Runner<B> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.backend.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn step(&mut self) -> StepResult {
        if self.backend.elapsed() > RUN_LIMIT {
            return Err(format!(
                "the run exceeded {}s of simulated time",
                RUN_LIMIT.as_secs()
            ));
        }
        self.backend.step()
    }

    fn run_for(&mut self, duration: Duration) -> StepResult {
        let end = self.backend.elapsed() + duration;
        while self.backend.elapsed() < end {
            self.step()?;
        }
        Ok(())
    }

    /// Steps until `done` holds or `within` passes; returns whether it held.
    fn run_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Shared) -> bool,
    ) -> Result<bool, String> {
        let end = self.backend.elapsed() + within;
        loop {
            if done(&lock(&self.shared)) {
                return Ok(true);
            }
            if self.backend.elapsed() >= end {
                return Ok(false);
            }
            self.step()?;
        }
    }

    fn expect_failure(&mut self, step: usize, keyword: &str, text: String, events: Vec<usize>) {
        let s = lock(&self.shared);
        let mut report = format!("step {} ({keyword}): {text}\n", step + 1);
        let mut indices = events;
        if indices.is_empty() && !s.trace.is_empty() {
            indices.push(s.trace.len() - 1);
        }
        report.push_str(&s.trace.excerpt(&indices, 3));
        drop(s);
        let at = self.now_ms();
        lock(&self.shared).record(
            at,
            "sim",
            Event::Note {
                text: format!("expectation failed: step {} ({keyword}): {text}", step + 1),
            },
        );
        self.failures.push(Failure {
            kind: "expect".into(),
            spec: String::new(),
            owed: format!("step {} ({keyword})", step + 1),
            happened: text,
            text: report,
        });
    }

    fn send(&self, client: &str, command: HostCommand) -> StepResult {
        world::send(&self.shared, client, command)
    }

    fn fault(&self, fault: Fault) {
        let at = self.now_ms();
        lock(&self.shared).fault(at, fault);
    }

    /// Builds the hosts. Runs one tick so every host registers its command channel.
    fn build(
        &mut self,
        clients: &BTreeMap<String, ClientSpec>,
        host_of: impl Fn(&str) -> String,
        durable: bool,
    ) -> StepResult {
        let mut hosts: Vec<String> = Vec::new();
        {
            let mut s = lock(&self.shared);
            for (index, (name, spec)) in clients.iter().enumerate() {
                let host = host_of(name);
                if !hosts.contains(&host) {
                    hosts.push(host.clone());
                }
                s.sessions.insert(
                    name.clone(),
                    Session {
                        spec: spec.clone(),
                        client_id: spec.client_id.clone().unwrap_or_else(|| name.clone()),
                        host,
                        index: index as u64,
                        control: FaultControl::new(),
                        instance: 0,
                        connections: 0,
                        attempt_open: false,
                        connected: false,
                        running: false,
                        connacks: 0,
                        last_session_present: None,
                        subacks: 0,
                        unsubacks: 0,
                        pending_cause: None,
                        next_message: 0,
                        publish_handled: 0,
                        commands_done: 0,
                        tokens: BTreeMap::new(),
                        packet_ids: BTreeMap::new(),
                        unacked: BTreeMap::new(),
                        requested: BTreeMap::new(),
                        pending_subscribes: BTreeMap::new(),
                    },
                );
            }
        }
        self.backend.build(&hosts, durable)?;
        self.client_hosts = hosts;
        self.step()
    }

    /// The turmoil host an endpoint names: the broker, a client's host, or a host.
    fn endpoint(&self, name: &str) -> String {
        if name == "broker" {
            return self.broker_host.clone();
        }
        lock(&self.shared)
            .sessions
            .get(name)
            .map(|s| s.host.clone())
            .unwrap_or_else(|| name.to_string())
    }

    fn connect(&mut self, client: &str, restart: bool) -> Result<bool, String> {
        let before = lock(&self.shared)
            .sessions
            .get(client)
            .map_or(0, |s| s.connacks);
        let running = lock(&self.shared)
            .sessions
            .get(client)
            .is_some_and(|s| s.running);
        if !running {
            self.send(
                client,
                HostCommand::Start {
                    client: client.into(),
                    restart,
                },
            )?;
        }
        let name = client.to_string();
        self.run_until(ACK_WAIT, move |s| {
            s.sessions
                .get(&name)
                .is_some_and(|x| x.connacks > before || (running && x.connected))
        })
    }

    fn crash_broker(&mut self, power_loss: bool) -> StepResult {
        if !self.broker_up {
            return Ok(());
        }
        self.fault(Fault::BrokerCrash { power_loss });
        {
            let mut s = lock(&self.shared);
            s.broker_handle = None;
            for session in s.sessions.values_mut() {
                if session.connected {
                    session.pending_cause = Some(crate::history::DisconnectCause::BrokerCrash);
                }
            }
        }
        self.broker_up = false;
        self.backend.crash_broker(power_loss)
    }

    fn restart_broker(&mut self) -> StepResult {
        if self.broker_up {
            return Ok(());
        }
        self.fault(Fault::BrokerRestart);
        self.backend.restart_broker()?;
        self.broker_up = true;
        self.step()
    }

    /// Ends every link and connection fault (not crashes).
    fn heal_all(&mut self) {
        self.backend.heal_links();
        let controls: Vec<Arc<FaultControl>> = lock(&self.shared)
            .sessions
            .values()
            .map(|s| s.control.clone())
            .collect();
        for c in controls {
            c.heal();
        }
    }

    fn control(&self, client: &str) -> Option<Arc<FaultControl>> {
        lock(&self.shared)
            .sessions
            .get(client)
            .map(|s| s.control.clone())
    }

    fn set_pending(&self, client: &str, cause: crate::history::DisconnectCause) {
        if let Some(s) = lock(&self.shared).sessions.get_mut(client) {
            if s.connected {
                s.pending_cause = Some(cause);
            }
        }
    }

    fn publish(
        &mut self,
        client: &str,
        messages: Vec<PlannedPublish>,
        interval_ms: u64,
        wait: bool,
    ) -> StepResult {
        let count = messages.len() as u64;
        let before = lock(&self.shared)
            .sessions
            .get(client)
            .map_or(0, |s| s.publish_handled);
        self.send(
            client,
            HostCommand::Publish {
                client: client.into(),
                messages,
                interval_ms,
            },
        )?;
        if wait {
            let name = client.to_string();
            let within = Duration::from_millis(interval_ms.saturating_mul(count)) + ACK_WAIT;
            self.run_until(within, move |s| {
                s.sessions
                    .get(&name)
                    .is_some_and(|x| x.publish_handled >= before + count)
            })?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Explicit scenarios

    fn explicit(&mut self, scenario: &Scenario) -> StepResult {
        let host_of = |name: &str| scenario.host_of(name).unwrap_or_else(|| name.to_string());
        self.build(&scenario.clients, host_of, scenario.broker.durable)?;
        lock(&self.shared).raw.spec = scenario.spec.clone();
        for (i, step) in scenario.steps.iter().enumerate() {
            self.explicit_step(i, step)?;
        }
        self.quiesce(scenario.quiesce.as_duration())
    }

    fn quiesce(&mut self, quiet: Duration) -> StepResult {
        self.heal_all();
        self.restart_broker()?;
        let at = self.now_ms();
        lock(&self.shared).record(
            at,
            "sim",
            Event::Note {
                text: "quiesce: faults healed".into(),
            },
        );
        self.run_for(quiet)
    }

    fn explicit_step(&mut self, i: usize, step: &Step) -> StepResult {
        let kw = step.keyword();
        match step {
            Step::Connect(c) | Step::RestartClient(c) => {
                let restart = matches!(step, Step::RestartClient(_));
                if restart {
                    self.fault(Fault::ClientRestart {
                        client: c.client.clone(),
                    });
                }
                if !self.connect(&c.client, restart)? {
                    self.expect_failure(
                        i,
                        kw,
                        format!("{} got no CONNACK within {}s", c.client, ACK_WAIT.as_secs()),
                        vec![],
                    );
                }
            }
            Step::Subscribe(sub) => {
                let before = lock(&self.shared)
                    .sessions
                    .get(&sub.client)
                    .map_or(0, |s| s.subacks);
                self.send(
                    &sub.client,
                    HostCommand::Subscribe {
                        client: sub.client.clone(),
                        filters: sub.all_filters(),
                    },
                )?;
                let name = sub.client.clone();
                if !self.run_until(ACK_WAIT, move |s| {
                    s.sessions.get(&name).is_some_and(|x| x.subacks > before)
                })? {
                    self.expect_failure(i, kw, format!("{} got no SUBACK", sub.client), vec![]);
                }
            }
            Step::Unsubscribe(u) => {
                let before = lock(&self.shared)
                    .sessions
                    .get(&u.client)
                    .map_or(0, |s| s.unsubacks);
                self.send(
                    &u.client,
                    HostCommand::Unsubscribe {
                        client: u.client.clone(),
                        filters: u.all_filters(),
                    },
                )?;
                let name = u.client.clone();
                if !self.run_until(ACK_WAIT, move |s| {
                    s.sessions.get(&name).is_some_and(|x| x.unsubacks > before)
                })? {
                    self.expect_failure(i, kw, format!("{} got no UNSUBACK", u.client), vec![]);
                }
            }
            Step::Publish(p) => {
                let message = PlannedPublish {
                    topic: p.topic.clone(),
                    qos: p.qos,
                    retain: p.retain,
                    payload_size: p.payload_size.unwrap_or(0),
                    empty: p.empty,
                };
                let interval = p.rate.map_or(0, |r| r.interval_ms());
                self.publish(&p.client, vec![message; p.count as usize], interval, true)?;
            }
            Step::Disconnect(d) => {
                if d.with_will {
                    return Err(format!(
                        "step {} (disconnect with_will): the simqtt client cannot send DISCONNECT with reason 0x04",
                        i + 1
                    ));
                }
                let before = lock(&self.shared)
                    .sessions
                    .get(&d.client)
                    .map_or(0, |s| s.commands_done);
                self.send(
                    &d.client,
                    HostCommand::Disconnect {
                        client: d.client.clone(),
                    },
                )?;
                let name = d.client.clone();
                self.run_until(ACK_WAIT, move |s| {
                    s.sessions
                        .get(&name)
                        .is_some_and(|x| x.commands_done > before)
                })?;
            }
            Step::CrashBroker(c) => {
                self.crash_broker(c.power_loss)?;
                self.step()?;
            }
            Step::RestartBroker(_) => self.restart_broker()?,
            Step::CrashClient(c) => {
                self.fault(Fault::ClientCrash {
                    client: c.client.clone(),
                });
                self.send(
                    &c.client,
                    HostCommand::Crash {
                        client: c.client.clone(),
                    },
                )?;
                self.step()?;
            }
            Step::Partition(p) => {
                let (a, b) = (self.endpoint(&p.a), self.endpoint(&p.b));
                self.fault(Fault::Partition {
                    a: a.clone(),
                    b: b.clone(),
                    one_way: p.one_way,
                });
                self.backend.partition(&a, &b, p.one_way);
            }
            Step::Heal(h) => match (&h.a, &h.b) {
                (Some(a), Some(b)) => {
                    let (a, b) = (self.endpoint(a), self.endpoint(b));
                    self.fault(Fault::Heal {
                        a: a.clone(),
                        b: b.clone(),
                    });
                    self.backend.repair(&a, &b);
                    self.backend.loss(&a, &b, 0.0);
                }
                _ => {
                    let broker = self.broker_host.clone();
                    for host in self.client_hosts.clone() {
                        self.fault(Fault::Heal {
                            a: host.clone(),
                            b: broker.clone(),
                        });
                    }
                    self.heal_all();
                }
            },
            Step::Loss(l) => {
                let (a, b) = (self.endpoint(&l.a), self.endpoint(&l.b));
                self.fault(Fault::Loss {
                    a: a.clone(),
                    b: b.clone(),
                    rate: l.rate,
                });
                self.backend.loss(&a, &b, l.rate);
            }
            Step::Latency(l) => {
                let (a, b) = (self.endpoint(&l.a), self.endpoint(&l.b));
                self.fault(Fault::Latency {
                    a: a.clone(),
                    b: b.clone(),
                    latency_ms: l.latency.millis,
                    jitter_ms: l.jitter.millis,
                });
                self.backend
                    .latency(&a, &b, l.latency.as_duration(), l.jitter.as_duration());
            }
            Step::Reset(c) => {
                self.fault(Fault::Reset {
                    client: c.client.clone(),
                });
                self.set_pending(&c.client, crate::history::DisconnectCause::ConnectionReset);
                if let Some(control) = self.control(&c.client) {
                    control.reset();
                }
                self.step()?;
            }
            Step::Stall(c) => {
                self.fault(Fault::Stall {
                    client: c.client.clone(),
                });
                if let Some(control) = self.control(&c.client) {
                    control.stall();
                }
            }
            Step::Delay(d) => {
                self.fault(Fault::Delay {
                    client: d.client.clone(),
                    delay_ms: d.by.millis,
                });
                if let Some(control) = self.control(&d.client) {
                    control.set_delay(d.by.as_duration());
                }
            }
            Step::DropPacket(p) | Step::DuplicatePacket(p) => {
                let packet_type = p.packet.packet_type() as u8;
                let drop = matches!(step, Step::DropPacket(_));
                let name = p.packet.as_str().to_string();
                self.fault(if drop {
                    Fault::DropPacket {
                        client: p.client.clone(),
                        direction: p.direction,
                        packet_type: name,
                    }
                } else {
                    Fault::DuplicatePacket {
                        client: p.client.clone(),
                        direction: p.direction,
                        packet_type: name,
                    }
                });
                if let Some(control) = self.control(&p.client) {
                    if drop {
                        control.drop_next(p.direction, packet_type);
                    } else {
                        control.duplicate_next(p.direction, packet_type);
                    }
                }
            }
            Step::Kick(c) => {
                self.fault(Fault::Kick {
                    client: c.client.clone(),
                });
                self.set_pending(&c.client, crate::history::DisconnectCause::Kicked);
                let client_id = lock(&self.shared)
                    .sessions
                    .get(&c.client)
                    .map(|s| s.client_id.clone())
                    .unwrap_or_default();
                self.backend.kick(&c.client, &client_id)?;
                self.step()?;
            }
            Step::Wait(d) => self.run_for(d.as_duration())?,
            Step::ExpectMessages(x) => {
                let from_index = self.expect_marks.get(&x.client).copied().unwrap_or(0);
                let client = x.client.clone();
                let wanted = x.messages.clone();
                let satisfied =
                    |s: &Shared| unmet(&s.trace, from_index, &client, &wanted).is_empty();
                let ok = self.run_until(x.within.as_duration(), satisfied)?;
                let len = lock(&self.shared).trace.len();
                self.expect_marks.insert(x.client.clone(), len);
                if !ok {
                    let (missing, events) = {
                        let s = lock(&self.shared);
                        let missing = unmet(&s.trace, from_index, &x.client, &x.messages);
                        let events: Vec<usize> = s.trace.records[from_index..]
                            .iter()
                            .enumerate()
                            .filter(|(_, r)| {
                                matches!(&r.event, Event::Delivered { client, .. } if *client == x.client)
                            })
                            .map(|(k, _)| from_index + k)
                            .collect();
                        (missing, events)
                    };
                    self.expect_failure(
                        i,
                        kw,
                        format!(
                            "{} did not receive within {}: {}",
                            x.client,
                            x.within,
                            missing.join("; ")
                        ),
                        events,
                    );
                }
            }
            Step::ExpectNoMessage(x) => {
                let from_index = lock(&self.shared).trace.len();
                self.run_for(x.duration.as_duration())?;
                let hits: Vec<usize> = {
                    let s = lock(&self.shared);
                    s.trace.records[from_index..]
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| match &r.event {
                            Event::Delivered { client, topic, .. } => {
                                *client == x.client
                                    && x.topic.as_deref().is_none_or(|f| matches(f, topic))
                            }
                            _ => false,
                        })
                        .map(|(k, _)| from_index + k)
                        .collect()
                };
                if !hits.is_empty() {
                    self.expect_failure(
                        i,
                        kw,
                        format!(
                            "{} received {} message(s) it should not have within {}",
                            x.client,
                            hits.len(),
                            x.duration
                        ),
                        hits,
                    );
                }
            }
            Step::ExpectSessionPresent(x) => {
                let (flag, index) = {
                    let s = lock(&self.shared);
                    let flag = s
                        .sessions
                        .get(&x.client)
                        .and_then(|v| v.last_session_present);
                    let index = s.trace.records.iter().rposition(|r| {
                        matches!(&r.event, Event::ConnAck { client, .. } if *client == x.client)
                    });
                    (flag, index)
                };
                if flag != Some(x.present) {
                    self.expect_failure(
                        i,
                        kw,
                        format!(
                            "{}'s latest CONNACK has session_present {}, expected {}",
                            x.client,
                            flag.map_or("(no CONNACK)".to_string(), |f| f.to_string()),
                            x.present
                        ),
                        index.into_iter().collect(),
                    );
                }
            }
            Step::Raw(r) => self.raw_step(i, r)?,
            Step::ExpectRaw(x) => self.expect_raw(i, x)?,
            Step::ExpectWill(x) => {
                let prefix = format!("w-{}-", x.of);
                let to = x.to.clone();
                let retain = x.retain;
                let find = move |s: &Shared| -> Option<usize> {
                    s.trace.records.iter().position(|r| match &r.event {
                        Event::Delivered {
                            client,
                            id,
                            retain: flag,
                            ..
                        } => {
                            *client == to
                                && id.starts_with(&prefix)
                                && retain.is_none_or(|want| want == *flag)
                        }
                        _ => false,
                    })
                };
                if x.delivered {
                    let ok = self.run_until(x.within.as_duration(), |s| find(s).is_some())?;
                    if !ok {
                        self.expect_failure(
                            i,
                            kw,
                            format!("{}'s will did not reach {} within {}", x.of, x.to, x.within),
                            vec![],
                        );
                    }
                } else {
                    self.run_for(x.within.as_duration())?;
                    let hit = find(&lock(&self.shared));
                    if let Some(index) = hit {
                        self.expect_failure(
                            i,
                            kw,
                            format!("{}'s will reached {} but should not have", x.of, x.to),
                            vec![index],
                        );
                    }
                }
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Randomised scenarios

    fn randomised(&mut self, scenario: &Scenario) -> StepResult {
        let Some(workload) = &scenario.workload else {
            return Err("a randomised scenario needs a workload".into());
        };
        let plan = Plan::draw(workload, &mut self.rng);
        let hosts = plan_hosts(&plan.clients, workload);
        self.build(
            &plan.clients,
            |name| hosts.get(name).cloned().unwrap_or_else(|| "h0".into()),
            scenario.broker.durable,
        )?;
        // Subscribers first, so the traffic has an audience.
        for (name, filters) in &plan.subscriptions {
            self.connect(name, false)?;
            self.send(
                name,
                HostCommand::Subscribe {
                    client: name.clone(),
                    filters: filters.clone(),
                },
            )?;
        }
        for name in plan.publishers.keys() {
            self.connect(name, false)?;
        }
        let subscribers: Vec<String> = plan.subscriptions.keys().cloned().collect();
        self.run_until(ACK_WAIT, move |s| {
            subscribers
                .iter()
                .all(|n| s.sessions.get(n).is_some_and(|x| x.subacks > 0))
        })?;
        let interval_ms = workload.rate.interval_ms();
        for (name, messages) in &plan.publishers {
            self.publish(name, messages.clone(), interval_ms, false)?;
        }
        let mut crashed: Vec<String> = Vec::new();
        if let Some(nemesis) = &scenario.nemesis {
            let end = self.backend.elapsed() + workload.duration.as_duration();
            let clients: Vec<String> = plan.clients.keys().cloned().collect();
            loop {
                let gap = nemesis.interval.millis / 2
                    + self.rng.random_range(0..=nemesis.interval.millis.max(1));
                let start = self.backend.elapsed() + Duration::from_millis(gap);
                if start >= end {
                    break;
                }
                self.run_for(start - self.backend.elapsed())?;
                let kind = nemesis.faults[self.rng.random_range(0..nemesis.faults.len())];
                let target = clients[self.rng.random_range(0..clients.len())].clone();
                let hold = Duration::from_millis(self.rng.random_range(
                    nemesis.max_duration.millis / 4..=nemesis.max_duration.millis.max(1),
                ));
                self.inject(kind, &target, nemesis.loss_rate, &mut crashed)?;
                self.run_for(hold)?;
                self.heal_fault(kind, &target, &mut crashed)?;
            }
            let now = self.backend.elapsed();
            if now < end {
                self.run_for(end - now)?;
            }
        } else {
            self.run_for(workload.duration.as_duration())?;
        }
        for name in std::mem::take(&mut crashed) {
            self.fault(Fault::ClientRestart {
                client: name.clone(),
            });
            self.send(
                &name,
                HostCommand::Start {
                    client: name.clone(),
                    restart: true,
                },
            )?;
        }
        self.quiesce(scenario.quiesce.as_duration())
    }

    fn inject(
        &mut self,
        kind: FaultKind,
        target: &str,
        loss_rate: f64,
        crashed: &mut Vec<String>,
    ) -> StepResult {
        let host = self.endpoint(target);
        let broker = self.broker_host.clone();
        let control = self.control(target);
        match kind {
            FaultKind::Partition | FaultKind::PartitionOneWay => {
                let one_way = kind == FaultKind::PartitionOneWay;
                let (a, b) = if one_way && self.rng.random_bool(0.5) {
                    (broker, host)
                } else {
                    (host, broker)
                };
                self.fault(Fault::Partition {
                    a: a.clone(),
                    b: b.clone(),
                    one_way,
                });
                self.backend.partition(&a, &b, one_way);
            }
            FaultKind::Loss => {
                self.fault(Fault::Loss {
                    a: host.clone(),
                    b: broker.clone(),
                    rate: loss_rate,
                });
                self.backend.loss(&host, &broker, loss_rate);
            }
            FaultKind::Latency => {
                let latency_ms = self.rng.random_range(20..=300u64);
                let jitter_ms = self.rng.random_range(0..=100u64);
                self.fault(Fault::Latency {
                    a: host.clone(),
                    b: broker.clone(),
                    latency_ms,
                    jitter_ms,
                });
                self.backend.latency(
                    &host,
                    &broker,
                    Duration::from_millis(latency_ms),
                    Duration::from_millis(jitter_ms),
                );
            }
            FaultKind::CrashBroker => self.crash_broker(false)?,
            FaultKind::PowerLoss => self.crash_broker(true)?,
            FaultKind::CrashClient => {
                if !crashed.iter().any(|c| c == target) {
                    self.fault(Fault::ClientCrash {
                        client: target.into(),
                    });
                    self.send(
                        target,
                        HostCommand::Crash {
                            client: target.into(),
                        },
                    )?;
                    crashed.push(target.into());
                }
            }
            FaultKind::Kick => {
                self.fault(Fault::Kick {
                    client: target.into(),
                });
                self.set_pending(target, crate::history::DisconnectCause::Kicked);
                let client_id = lock(&self.shared)
                    .sessions
                    .get(target)
                    .map(|s| s.client_id.clone())
                    .unwrap_or_default();
                self.backend.kick(target, &client_id)?;
            }
            FaultKind::Reset => {
                self.fault(Fault::Reset {
                    client: target.into(),
                });
                self.set_pending(target, crate::history::DisconnectCause::ConnectionReset);
                if let Some(c) = control {
                    c.reset();
                }
            }
            FaultKind::Stall => {
                self.fault(Fault::Stall {
                    client: target.into(),
                });
                if let Some(c) = control {
                    c.stall();
                }
            }
            FaultKind::Delay => {
                let delay_ms = self.rng.random_range(50..=1000u64);
                self.fault(Fault::Delay {
                    client: target.into(),
                    delay_ms,
                });
                if let Some(c) = control {
                    c.set_delay(Duration::from_millis(delay_ms));
                }
            }
            FaultKind::DropPacket | FaultKind::DuplicatePacket => {
                const KINDS: [PacketKind; 6] = [
                    PacketKind::Publish,
                    PacketKind::Puback,
                    PacketKind::Pubrec,
                    PacketKind::Pubrel,
                    PacketKind::Pubcomp,
                    PacketKind::Pingresp,
                ];
                let packet = KINDS[self.rng.random_range(0..KINDS.len())];
                let direction = if self.rng.random_bool(0.5) {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                let name = packet.as_str().to_string();
                let drop = kind == FaultKind::DropPacket;
                self.fault(if drop {
                    Fault::DropPacket {
                        client: target.into(),
                        direction,
                        packet_type: name,
                    }
                } else {
                    Fault::DuplicatePacket {
                        client: target.into(),
                        direction,
                        packet_type: name,
                    }
                });
                if let Some(c) = control {
                    let t = packet.packet_type() as u8;
                    if drop {
                        c.drop_next(direction, t);
                        // A dropped packet is only recovered by a new connection (MQTT
                        // resends on reconnect); reset this one so the run goes on.
                    } else {
                        c.duplicate_next(direction, t);
                    }
                }
            }
        }
        Ok(())
    }

    fn heal_fault(
        &mut self,
        kind: FaultKind,
        target: &str,
        crashed: &mut Vec<String>,
    ) -> StepResult {
        let at_ms = self.now_ms();
        lock(&self.shared).nemesis_heals.push(world::NemesisHeal {
            at_ms,
            kind,
            target: target.to_string(),
        });
        let host = self.endpoint(target);
        let broker = self.broker_host.clone();
        match kind {
            FaultKind::Partition
            | FaultKind::PartitionOneWay
            | FaultKind::Loss
            | FaultKind::Latency => {
                self.fault(Fault::Heal {
                    a: host.clone(),
                    b: broker.clone(),
                });
                self.backend.repair(&host, &broker);
                self.backend.loss(&host, &broker, 0.0);
                if kind == FaultKind::Latency {
                    self.backend.reset_latency(&host, &broker);
                }
            }
            FaultKind::CrashBroker | FaultKind::PowerLoss => self.restart_broker()?,
            FaultKind::CrashClient => {
                if let Some(pos) = crashed.iter().position(|c| c == target) {
                    crashed.remove(pos);
                    self.fault(Fault::ClientRestart {
                        client: target.into(),
                    });
                    self.send(
                        target,
                        HostCommand::Start {
                            client: target.into(),
                            restart: true,
                        },
                    )?;
                }
            }
            FaultKind::Stall | FaultKind::Delay => {
                if let Some(c) = self.control(target) {
                    c.unstall();
                    c.set_delay(Duration::ZERO);
                }
            }
            FaultKind::DropPacket => {
                // The dropped packet is only recovered on a new connection (MQTT resends
                // unacknowledged packets on reconnect): reset this one.
                self.fault(Fault::Reset {
                    client: target.into(),
                });
                self.set_pending(target, crate::history::DisconnectCause::ConnectionReset);
                if let Some(c) = self.control(target) {
                    c.heal();
                    c.reset();
                }
            }
            FaultKind::Kick | FaultKind::Reset | FaultKind::DuplicatePacket => {
                if let Some(c) = self.control(target) {
                    c.heal();
                }
            }
        }
        Ok(())
    }
}

/// The expected messages not yet matched, as text.
fn unmet(
    trace: &Trace,
    from_index: usize,
    client: &str,
    wanted: &[crate::scenario::ExpectedMessage],
) -> Vec<String> {
    let mut out = Vec::new();
    let deliveries: Vec<(&str, &str, QoS, bool)> = trace.records[from_index.min(trace.len())..]
        .iter()
        .filter_map(|r| match &r.event {
            Event::Delivered {
                client: c,
                id,
                topic,
                qos,
                retain,
                ..
            } if c == client => Some((id.as_str(), topic.as_str(), *qos, *retain)),
            _ => None,
        })
        .collect();
    for m in wanted {
        let mut ids: Vec<&str> = deliveries
            .iter()
            .filter(|(id, topic, qos, retain)| {
                m.id.as_deref().is_none_or(|want| want == *id)
                    && m.from.as_deref().is_none_or(|from| {
                        id.rsplit_once('-').is_some_and(|(publisher, n)| {
                            publisher == from && n.parse::<u32>().is_ok()
                        })
                    })
                    && m.topic.as_deref().is_none_or(|t| matches(t, topic))
                    && m.qos.is_none_or(|q| q == *qos)
                    && m.retain.is_none_or(|r| r == *retain)
            })
            .map(|(id, ..)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if (ids.len() as u64) < u64::from(m.count) {
            let mut what = Vec::new();
            if let Some(id) = &m.id {
                what.push(format!("id {id}"));
            }
            if let Some(from) = &m.from {
                what.push(format!("from {from}"));
            }
            if let Some(t) = &m.topic {
                what.push(format!("topic {t}"));
            }
            if let Some(q) = m.qos {
                what.push(format!("qos {}", q.as_u8()));
            }
            if let Some(r) = m.retain {
                what.push(format!("retain {r}"));
            }
            out.push(format!(
                "{} message(s) [{}], got {}",
                m.count,
                what.join(", "),
                ids.len()
            ));
        }
    }
    out
}

/// A randomised workload drawn from the seed.
struct Plan {
    clients: BTreeMap<String, ClientSpec>,
    subscriptions: BTreeMap<String, Vec<FilterSpec>>,
    publishers: BTreeMap<String, Vec<PlannedPublish>>,
}

impl Plan {
    fn draw(w: &Workload, rng: &mut ChaCha8Rng) -> Plan {
        let mut clients = BTreeMap::new();
        let mut subscriptions = BTreeMap::new();
        let mut publishers = BTreeMap::new();
        let topic = |i: u32| format!("t/{i}");
        let spec_for = |name: &str, rng: &mut ChaCha8Rng| {
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
            let v5 = protocol == crate::codec::ProtocolVersion::V5;
            ClientSpec {
                client_id: None,
                // A 5.0 persistent session resumes with Clean Start 0 and a Session Expiry
                // Interval; 3.1.1 with Clean Session 0.
                clean_session: !persistent,
                keepalive: w.keepalive,
                protocol,
                session_expiry: (v5 && persistent).then(|| crate::scenario::Dur::from_secs(300)),
                will: w.wills.then(|| WillSpec {
                    topic: format!("will/{name}"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    delay: None,
                    empty: false,
                }),
                resubscribe: w.resubscribe,
                reconnect: true,
                persistence: if persistent {
                    Persistence::Disk
                } else {
                    Persistence::None
                },
                host: None,
            }
        };
        for i in 0..w.subscribers {
            let name = format!("s{i}");
            let spec = spec_for(&name, rng);
            let mut filters = Vec::new();
            let qos = *w.qos.iter().max().unwrap_or(&QoS::AtMostOnce);
            let first = rng.random_range(0..w.topics);
            filters.push(FilterSpec {
                filter: topic(first),
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            });
            if w.wildcards && rng.random_bool(0.5) {
                filters.push(FilterSpec {
                    filter: if rng.random_bool(0.5) {
                        "t/+".into()
                    } else {
                        "t/#".into()
                    },
                    qos: w.qos[rng.random_range(0..w.qos.len())],
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                });
            } else if w.topics > 1 {
                let second = (first + 1 + rng.random_range(0..w.topics - 1)) % w.topics;
                filters.push(FilterSpec {
                    filter: topic(second),
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                });
            }
            if w.wills {
                filters.push(FilterSpec {
                    filter: "will/#".into(),
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                });
            }
            clients.insert(name.clone(), spec);
            subscriptions.insert(name, filters);
        }
        let per_publisher =
            (w.duration.millis / w.rate.interval_ms().max(1)).clamp(1, 100_000) as usize;
        for i in 0..w.publishers {
            let name = format!("p{i}");
            let spec = spec_for(&name, rng);
            let messages = (0..per_publisher)
                .map(|_| PlannedPublish {
                    topic: topic(rng.random_range(0..w.topics)),
                    qos: w.qos[rng.random_range(0..w.qos.len())],
                    retain: w.retain > 0.0 && rng.random_bool(w.retain.clamp(0.0, 1.0)),
                    payload_size: 0,
                    empty: false,
                })
                .collect();
            clients.insert(name.clone(), spec);
            publishers.insert(name, messages);
        }
        Plan {
            clients,
            subscriptions,
            publishers,
        }
    }
}

/// The client hosts a workload spreads its sessions over.
fn plan_hosts(clients: &BTreeMap<String, ClientSpec>, w: &Workload) -> BTreeMap<String, String> {
    let host_count = w.hosts.max(1) as usize;
    clients
        .keys()
        .enumerate()
        .map(|(i, name)| (name.clone(), format!("h{}", i % host_count)))
        .collect()
}

/// What a randomised scenario's seed draws before it runs: its clients (each with the `host`
/// it runs on), and the filters of each subscriber.
pub struct DrawnClients {
    pub clients: BTreeMap<String, ClientSpec>,
    pub subscriptions: BTreeMap<String, Vec<FilterSpec>>,
}

/// The clients a randomised scenario's seed draws (`None` for an explicit scenario).
pub fn drawn_clients(scenario: &Scenario, seed: u64) -> Option<DrawnClients> {
    let workload = scenario.workload.as_ref()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let _ = Knobs::from_rng(&mut rng);
    let mut plan = Plan::draw(workload, &mut rng);
    let hosts = plan_hosts(&plan.clients, workload);
    for (name, spec) in plan.clients.iter_mut() {
        spec.host = hosts.get(name).cloned();
    }
    Some(DrawnClients {
        clients: plan.clients,
        subscriptions: plan.subscriptions,
    })
}

/// The names of the checkers a run applied (for reports).
pub fn checker_names(scenario: &Scenario) -> Vec<&'static str> {
    scenario
        .checker_list()
        .into_iter()
        .map(CheckerName::as_str)
        .collect()
}
