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
    ClientSpec, FaultKind, FilterSpec, Kind, PacketKind, Persistence, ProtocolMix, PublishAwait,
    Scenario, SessionMix, Step, WillSpec, Workload,
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
/// Longest the quiet period waits for publishers to hand over their last messages.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// Longest a single run may simulate (a bound on a runaway scenario).
const RUN_LIMIT: Duration = Duration::from_secs(3600);
/// How long a `kick` or `reset` waits for the connection it hits to end, and a broker restart
/// for the broker to start again: the bound on confirming that the step took effect. (A
/// kick over real TCP is a takeover: a new connection's CONNECT and CONNACK come first.)
const CONFIRM_WAIT: Duration = Duration::from_secs(10);
/// The error a step returns when a premise (`assume: true`) did not hold: the run stops there
/// and is inconclusive (the premise is in `unconfirmed`).
pub(crate) const PREMISE_FAILED: &str = "a premise did not hold";
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

/// A fault or control step whose effect could not be confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfirmed {
    /// The explicit step (0-based); `None` for a nemesis fault or the final restart.
    pub step: Option<usize>,
    /// What was injected, e.g. `kick sub` or `drop_packet pubrec inbound on pub`.
    pub fault: String,
    /// Why it cannot be confirmed.
    pub reason: String,
    /// Drawn by the randomised nemesis (judged together: see [`RunReport::inconclusive`]).
    pub nemesis: bool,
}

impl fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some(i) => write!(f, "step {} ({}): {}", i + 1, self.fault, self.reason),
            None if self.nemesis => write!(f, "nemesis {}: {}", self.fault, self.reason),
            None => write!(f, "{}: {}", self.fault, self.reason),
        }
    }
}

/// What a run came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    /// A fault or control step could not be confirmed to have taken effect: the run proves
    /// nothing either way (its failures may be the fault's absence, its pass vacuous).
    Inconclusive,
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
    /// Every fault or control step whose effect was not confirmed (explicit steps and
    /// nemesis faults alike; [`RunReport::inconclusive`] says which of them make the run
    /// inconclusive).
    pub unconfirmed: Vec<Unconfirmed>,
    /// Faults the randomised nemesis drew, and how many of them took effect.
    pub nemesis_faults: u32,
    pub nemesis_effective: u32,
}

impl RunReport {
    /// Passed: no failure, and every fault took effect (see [`RunReport::outcome`]).
    pub fn passed(&self) -> bool {
        self.outcome() == Outcome::Passed
    }

    /// Inconclusive wins over failed: with a fault that did not happen, a failure may be its
    /// absence, not the broker's doing.
    pub fn outcome(&self) -> Outcome {
        if !self.inconclusive().is_empty() {
            Outcome::Inconclusive
        } else if self.failures.is_empty() {
            Outcome::Passed
        } else {
            Outcome::Failed
        }
    }

    /// Why the run is inconclusive (empty when it is not): every explicit fault or control
    /// step must take effect; the randomised nemesis, random by nature, may draw a fault that
    /// meets nothing (a kick of a client that is reconnecting, a drop rule no packet meets
    /// before its heal), so its run is inconclusive only when none of the faults it drew took
    /// effect (the run then tested nothing but a quiet workload).
    pub fn inconclusive(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .unconfirmed
            .iter()
            .filter(|u| !u.nemesis)
            .map(ToString::to_string)
            .collect();
        if self.nemesis_faults > 0 && self.nemesis_effective == 0 {
            out.push(format!(
                "none of the {} faults the nemesis drew took effect ({})",
                self.nemesis_faults,
                self.unconfirmed
                    .iter()
                    .filter(|u| u.nemesis)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        out
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

/// The simulated broker's checks for a scenario with an ACL user (`scenario::SIM_ACL`): that
/// user's password (few iterations: a simulation is not an attack) and ACL; everyone else
/// anonymous, allowed everything.
fn sim_acl() -> (crate::broker::auth::Authenticator, (String, bytes::Bytes)) {
    use crate::broker::auth::{Acl, Authenticator, PasswordFile, PasswordHash, SALT_BYTES};
    let acl = &crate::scenario::SIM_ACL;
    let hash = PasswordHash::with_salt(acl.password.as_bytes(), [7; SALT_BYTES], 1000);
    // Its SCRAM-SHA-256 credential too, for `auth: scram` clients (RFC 7677's 4096
    // iterations, the client's to pay at each exchange).
    let scram = crate::scram::ScramCredential::derive(
        acl.password.as_bytes(),
        b"sim-acl-scram-salt",
        crate::scram::DEFAULT_ITERATIONS,
    );
    let passwords = PasswordFile::from_entries([(acl.username.to_string(), hash)])
        .with_scram(acl.username, scram);
    let rules = Acl::parse(acl.acl_file, std::path::Path::new("sim-acl"))
        .expect("the simulator's ACL parses");
    (
        Authenticator::new(true, Some(passwords), Some(rules)),
        (
            acl.username.to_string(),
            bytes::Bytes::from_static(acl.password.as_bytes()),
        ),
    )
}

/// Runs one seed of a scenario.
pub fn run(scenario: &Scenario, seed: u64) -> RunReport {
    run_observed(scenario, seed).0
}

/// [`run`], also returning when the nemesis healed each fault it drew (the shrinker writes a
/// randomised run out as explicit steps from the trace and these).
pub fn run_observed(scenario: &Scenario, seed: u64) -> (RunReport, Vec<world::NemesisHeal>) {
    if scenario.uses_acl() {
        let resolved = scenario.with_acl_topics(&crate::scenario::SIM_ACL.topics());
        return run_resolved(&resolved, seed, Some(sim_acl()));
    }
    run_resolved(scenario, seed, None)
}

fn run_resolved(
    scenario: &Scenario,
    seed: u64,
    acl: Option<(crate::broker::auth::Authenticator, (String, bytes::Bytes))>,
) -> (RunReport, Vec<world::NemesisHeal>) {
    let knobs = knobs(seed);
    let sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .tick_duration(Duration::from_millis(knobs.tick_ms))
        .min_message_latency(Duration::from_millis(knobs.min_latency_ms))
        .max_message_latency(Duration::from_millis(knobs.max_latency_ms))
        .simulation_duration(RUN_LIMIT + Duration::from_secs(60))
        .build();
    let (broker_authenticator, acl_user) = acl.unzip();
    // rustls inside the run draws from the seed (see transport::simtls).
    let _tls_seed = crate::transport::simtls::seed_thread(seed);
    let transport = match sim_transport(scenario, seed) {
        Ok(t) => t,
        Err(e) => return (setup_failure(scenario, seed, knobs, e), Vec::new()),
    };
    let mut net = world::ClientNet {
        acl_user,
        ..world::ClientNet::default()
    };
    if let Some(connector) = &transport.connector {
        net.connector = connector.clone();
    }
    net.sim_endpoint = transport.endpoint;
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        broker_addr: format!("{}:{}", scenario.broker.host, world::BROKER_PORT),
        seed,
        broker_authenticator,
        net,
        planted_bug: scenario.broker.planted_bug,
        max_keepalive_secs: scenario
            .broker
            .max_keepalive
            .and_then(|d| d.whole_secs())
            .and_then(|secs| u16::try_from(secs).ok()),
        topic_alias_maximum: scenario.broker.topic_alias_maximum,
        transport: scenario.broker.transport,
        tls: transport.tls,
        ..Shared::default()
    }));
    lock(&shared).record(
        0,
        "sim",
        Event::Network {
            tick_ms: knobs.tick_ms,
            latency_min_ms: knobs.min_latency_ms,
            latency_max_ms: knobs.max_latency_ms,
        },
    );
    if !scenario.broker.transport.is_plain() {
        let scheme = scenario.broker.transport.scheme();
        let text = format!(
            "transport: {scheme} ({}){}",
            scheme.describe(),
            if scheme.tls() {
                format!(
                    ", the broker's certificate for {} made from the seed",
                    scenario.broker.host
                )
            } else {
                String::new()
            }
        );
        lock(&shared).record(0, "sim", Event::Note { text });
    }
    let backend = backend::Turmoil::new(sim, shared.clone(), scenario.broker.host.clone());
    let mut report = execute(backend, scenario, seed, shared.clone());
    judge(scenario, &mut report);
    let heals = std::mem::take(&mut lock(&shared).nemesis_heals);
    (report, heals)
}

/// What a run's transport needs: the broker's certificate (TLS) and the clients' connector
/// (TLS and/or WebSocket over simulated TCP); nothing for plain TCP.
struct SimTransport {
    tls: Option<crate::transport::simtls::SimTls>,
    endpoint: Option<crate::transport::url::Endpoint>,
    connector: Option<Arc<dyn crate::transport::Connector>>,
}

/// A run that could not be set up (the simulated broker's certificate could not be made).
fn setup_failure(scenario: &Scenario, seed: u64, knobs: Knobs, why: String) -> RunReport {
    RunReport {
        scenario: scenario.name.clone(),
        seed,
        knobs,
        trace: Trace::default(),
        failures: vec![Failure {
            kind: "sim".into(),
            spec: String::new(),
            text: why.clone(),
            owed: "the simulated world is set up".into(),
            happened: why,
        }],
        notes: BTreeMap::new(),
        simulated: Duration::ZERO,
        unconfirmed: Vec::new(),
        nemesis_faults: 0,
        nemesis_effective: 0,
    }
}

fn sim_transport(scenario: &Scenario, seed: u64) -> Result<SimTransport, String> {
    use crate::transport::url::Endpoint;
    let scheme = scenario.broker.transport.scheme();
    if scenario.broker.transport.is_plain() {
        return Ok(SimTransport {
            tls: None,
            endpoint: None,
            connector: None,
        });
    }
    let host = &scenario.broker.host;
    let tls = match scheme.tls() {
        true => Some(
            crate::transport::simtls::SimTls::new(host, seed)
                .map_err(|e| format!("the simulated broker's certificate: {e}"))?,
        ),
        false => None,
    };
    let mut endpoint = Endpoint::tcp(host, world::BROKER_PORT);
    endpoint.scheme = scheme;
    endpoint.tls = match &tls {
        Some(t) => Some(t.client_config().map_err(|e| e.to_string())?),
        None => None,
    };
    let connector = endpoint
        .wrap(Arc::new(crate::transport::sim::SimConnector))
        .map_err(|e| e.to_string())?;
    Ok(SimTransport {
        tls,
        endpoint: Some(endpoint),
        connector: Some(connector),
    })
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
        expect_starts: BTreeMap::new(),
        statements: Vec::new(),
        pending: Vec::new(),
        unconfirmed: Vec::new(),
        nemesis_faults: 0,
        nemesis_effective: 0,
        publishers: Vec::new(),
        workload_qos: Vec::new(),
    };
    let result = match scenario.kind() {
        Kind::Explicit => runner.explicit(scenario),
        Kind::Randomised => runner.randomised(scenario),
    };
    // A failed premise stopped the run on purpose; it is recorded as unconfirmed (the run is
    // inconclusive), not as a failure of the run.
    if let Err(text) = result {
        if text == PREMISE_FAILED {
            let at = runner.now_ms();
            lock(&shared).record(
                at,
                "sim",
                Event::Note {
                    text: "a premise did not hold: the run stops, inconclusive".into(),
                },
            );
        } else {
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
    }
    let failures = std::mem::take(&mut runner.failures);
    let unconfirmed = std::mem::take(&mut runner.unconfirmed);
    let (nemesis_faults, nemesis_effective) = (runner.nemesis_faults, runner.nemesis_effective);
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
        unconfirmed,
        nemesis_faults,
        nemesis_effective,
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
    /// Per client: where its last `expect_messages` started counting (`again` counts from
    /// there too).
    expect_starts: BTreeMap<String, usize>,
    /// Per step: the one statement its failure cites (`Scenario::step_statement`).
    statements: Vec<Option<String>>,
    /// Faults whose effect shows only once traffic met them, settled at their heal (or at
    /// the end of the steps).
    pending: Vec<Pending>,
    unconfirmed: Vec<Unconfirmed>,
    nemesis_faults: u32,
    nemesis_effective: u32,
    /// Randomised scenarios: the publishing clients and the workload's QoS levels (what
    /// packets a drop or duplicate rule can meet).
    publishers: Vec<String>,
    workload_qos: Vec<QoS>,
}

type StepResult = Result<(), String>;

/// Whether a fault took effect: `Ok(())` confirmed, `Err(why)` not.
pub type Confirmation = Result<(), String>;

/// A fault waiting for the evidence that it took effect.
struct Pending {
    step: Option<usize>,
    fault: String,
    evidence: Evidence,
}

/// What proves a pending fault took effect.
enum Evidence {
    /// `client`'s connection ended after trace record `mark` (a nemesis kick or reset, which
    /// does not wait: the hold that follows gives it the time).
    Ends { client: String, mark: usize },
    /// The drop or duplicate rule met its packet.
    Rule {
        control: Arc<FaultControl>,
        id: u64,
        what: String,
    },
    /// Packets were held by a `delay` while it was on.
    Delayed {
        control: Arc<FaultControl>,
        before: u64,
        client: String,
    },
    /// Traffic met a link fault on the link between `host` and the broker.
    Link {
        host: String,
        kind: LinkFault,
        before: LinkSnapshot,
    },
}

/// A link fault, with the ways it cuts (partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkFault {
    Partition { to_broker: bool, from_broker: bool },
    Loss,
    Latency,
}

/// What had crossed a client host's link so far (see `Runner::link_snapshot`).
#[derive(Debug, Clone, Copy, Default)]
struct LinkSnapshot {
    /// Bytes the host's sessions and raw connections wrote and read (their fault layers).
    outbound: u64,
    inbound: u64,
    /// What the backend counts on the link.
    backend: backend::LinkCount,
}

/// Whether `client`'s connection (session or raw) ended after trace record `mark`.
fn connection_ended(s: &Shared, client: &str, mark: usize) -> bool {
    s.trace.records[mark.min(s.trace.len())..]
        .iter()
        .any(|r| match &r.event {
            Event::Disconnected { client: c, .. }
            | Event::ConnectFailed { client: c, .. }
            | Event::RawClosed { client: c, .. } => c == client,
            _ => false,
        })
}

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

    /// The statement step `step` tests, as the reports show it: ` [MQTT-…]`, or nothing.
    pub(super) fn cited(&self, step: usize) -> (String, String) {
        let spec = self
            .statements
            .get(step)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let shown = if spec.is_empty() {
            String::new()
        } else {
            format!(" [{spec}]")
        };
        (spec, shown)
    }

    /// Records a failed step. Its `owed` starts `step N (keyword)`: certification finds the
    /// step (its statement's version, what the broker did in it) from there.
    fn expect_failure(&mut self, step: usize, keyword: &str, text: String, events: Vec<usize>) {
        let (spec, shown) = self.cited(step);
        let s = lock(&self.shared);
        let mut report = format!("step {} ({keyword}){shown}: {text}\n", step + 1);
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
                text: format!(
                    "expectation failed: step {} ({keyword}){shown}: {text}",
                    step + 1
                ),
            },
        );
        self.failures.push(Failure {
            kind: "expect".into(),
            spec,
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
                        publish_requested: 0,
                        publish_handled: 0,
                        commands_done: 0,
                        reauths: Vec::new(),
                        tokens: BTreeMap::new(),
                        handed: BTreeMap::new(),
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

    /// The broker dies. Confirmed as the backend can tell (the simulated host stopped; a real
    /// broker dropped its connections).
    fn crash_broker(&mut self, power_loss: bool) -> Result<Confirmation, String> {
        if !self.broker_up {
            return Ok(Err("the broker was already down".into()));
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

    /// The broker comes back. Confirmed when it started again (and answers, where the backend
    /// can tell).
    fn restart_broker(&mut self) -> Result<Confirmation, String> {
        if self.broker_up {
            return Ok(Err("the broker was up: nothing to restart".into()));
        }
        self.fault(Fault::BrokerRestart);
        let mark = self.mark();
        let answered = self.backend.restart_broker()?;
        self.broker_up = true;
        self.step()?;
        let started = self.run_until(CONFIRM_WAIT, move |s| {
            s.trace.records[mark.min(s.trace.len())..]
                .iter()
                .any(|r| matches!(r.event, Event::BrokerStarted { .. }))
        })?;
        Ok(if started {
            answered
        } else {
            Err(format!(
                "the broker did not start again within {}s",
                CONFIRM_WAIT.as_secs()
            ))
        })
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

    fn mark(&self) -> usize {
        lock(&self.shared).trace.len()
    }

    /// Records whether a fault took effect: always as a trace note for a nemesis fault (the
    /// run is judged on all of them together), only when it did not for a step.
    fn confirm(&mut self, step: Option<usize>, nemesis: bool, fault: String, result: Confirmation) {
        if nemesis {
            self.nemesis_faults += 1;
            if result.is_ok() {
                self.nemesis_effective += 1;
            }
        }
        let text = match &result {
            Ok(()) if nemesis => Some(format!("nemesis {fault}: took effect")),
            Ok(()) => None,
            Err(reason) => Some(format!(
                "not confirmed: {}",
                Unconfirmed {
                    step,
                    fault: fault.clone(),
                    reason: reason.clone(),
                    nemesis,
                }
            )),
        };
        if let Some(text) = text {
            let at = self.now_ms();
            lock(&self.shared).record(at, "sim", Event::Note { text });
        }
        if let Err(reason) = result {
            self.unconfirmed.push(Unconfirmed {
                step,
                fault,
                reason,
                nemesis,
            });
        }
    }

    /// Whether `client` has a connection a broker-side fault can end: a session past its
    /// CONNACK, or an open raw connection.
    fn connected(&self, client: &str) -> bool {
        let s = lock(&self.shared);
        s.sessions.get(client).is_some_and(|x| x.connected)
            || s.raw
                .connections
                .get(client)
                .is_some_and(|c| c.open && !c.closed)
    }

    /// Waits (bounded) for `client`'s connection to end after trace record `mark`.
    fn await_end(&mut self, client: &str, mark: usize, what: &str) -> Result<Confirmation, String> {
        let name = client.to_string();
        let ended = self.run_until(CONFIRM_WAIT, move |s| connection_ended(s, &name, mark))?;
        Ok(if ended {
            Ok(())
        } else {
            Err(format!(
                "{client}'s connection did not end within {}s of the {what}",
                CONFIRM_WAIT.as_secs()
            ))
        })
    }

    /// The kick: the broker ends the client's connection. Confirmed when it did.
    fn kick(&mut self, client: &str) -> Result<Confirmation, String> {
        self.fault(Fault::Kick {
            client: client.into(),
        });
        if !self.connected(client) {
            return Ok(Err(format!("{client} had no connection to kick")));
        }
        self.set_pending(client, crate::history::DisconnectCause::Kicked);
        let client_id = lock(&self.shared)
            .sessions
            .get(client)
            .map(|s| s.client_id.clone())
            .unwrap_or_default();
        let mark = self.mark();
        self.backend.kick(client, &client_id)?;
        self.await_end(client, mark, "kick")
    }

    /// The reset of the client's current connection. Confirmed when the connection ended.
    fn reset(&mut self, client: &str) -> Result<Confirmation, String> {
        self.fault(Fault::Reset {
            client: client.into(),
        });
        self.set_pending(client, crate::history::DisconnectCause::ConnectionReset);
        let mark = self.mark();
        let reset = self.control(client).is_some_and(|c| c.reset());
        if !reset {
            return Ok(Err(format!("{client} had no open connection to reset")));
        }
        self.await_end(client, mark, "reset")
    }

    /// The stall of the client's current connection: in effect at once if there is one.
    fn stall(&mut self, client: &str) -> Confirmation {
        self.fault(Fault::Stall {
            client: client.into(),
        });
        if self.control(client).is_some_and(|c| c.stall()) {
            Ok(())
        } else {
            Err(format!("{client} had no open connection to stall"))
        }
    }

    /// The client's process dies. Confirmed when a running instance was stopped.
    fn crash_client(&mut self, client: &str) -> Result<Confirmation, String> {
        self.fault(Fault::ClientCrash {
            client: client.into(),
        });
        let running = |s: &Shared| s.sessions.get(client).map(|x| (x.running, x.instance));
        let before = running(&lock(&self.shared));
        self.send(
            client,
            HostCommand::Crash {
                client: client.into(),
            },
        )?;
        self.step()?;
        let after = running(&lock(&self.shared));
        Ok(match (before, after) {
            (Some((true, a)), Some((false, b))) if b > a => Ok(()),
            (Some((false, _)), _) => Err(format!("{client} was not running: nothing to crash")),
            _ => Err(format!("{client}'s process did not stop")),
        })
    }

    /// What had crossed the link between `host` and the broker so far.
    fn link_snapshot(&mut self, host: &str) -> LinkSnapshot {
        let controls: Vec<Arc<FaultControl>> = lock(&self.shared)
            .sessions
            .values()
            .filter(|x| x.host == host)
            .map(|x| x.control.clone())
            .collect();
        let mut snap = LinkSnapshot {
            backend: self.backend.link_count(host),
            ..LinkSnapshot::default()
        };
        for c in controls {
            let n = c.counters();
            snap.outbound += n.outbound_bytes;
            snap.inbound += n.inbound_bytes;
        }
        // Over TLS or WebSocket, what the host's sessions wrote below the handshakes too (a
        // cut that meets only a handshake met traffic).
        snap.outbound += lock(&self.shared)
            .client_sent
            .get(host)
            .copied()
            .unwrap_or(0);
        snap
    }

    /// A link fault between `a` and `b` (hosts) begins: waits for traffic to meet it.
    fn pend_link(&mut self, step: Option<usize>, fault: String, a: &str, b: &str, kind: LinkFault) {
        let broker = self.broker_host.clone();
        let (host, kind) = if b == broker && a != broker {
            (a.to_string(), kind)
        } else if a == broker && b != broker {
            // Seen from the client host, the ways swap.
            let kind = match kind {
                LinkFault::Partition {
                    to_broker,
                    from_broker,
                } => LinkFault::Partition {
                    to_broker: from_broker,
                    from_broker: to_broker,
                },
                other => other,
            };
            (b.to_string(), kind)
        } else {
            let nemesis = step.is_none();
            self.confirm(
                step,
                nemesis,
                fault,
                Err(format!(
                    "{a} - {b} is not a link to the broker: no MQTT traffic crosses it"
                )),
            );
            return;
        };
        let before = self.link_snapshot(&host);
        self.pending.push(Pending {
            step,
            fault,
            evidence: Evidence::Link { host, kind, before },
        });
    }

    /// Settles the pending faults `which` selects: each took effect or did not, by now.
    fn settle(&mut self, which: impl Fn(&Pending) -> bool) {
        let (now, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| which(p));
        self.pending = later;
        for p in now {
            let result = self.evidence(&p.evidence);
            self.confirm(p.step, p.step.is_none(), p.fault, result);
        }
    }

    fn evidence(&mut self, evidence: &Evidence) -> Confirmation {
        match evidence {
            Evidence::Ends { client, mark } => {
                if connection_ended(&lock(&self.shared), client, *mark) {
                    Ok(())
                } else {
                    Err(format!("{client}'s connection did not end before the heal"))
                }
            }
            Evidence::Rule { control, id, what } => {
                if control.rule_fired(*id) {
                    Ok(())
                } else {
                    Err(format!("no {what} before the fault was healed"))
                }
            }
            Evidence::Delayed {
                control,
                before,
                client,
            } => {
                if control.counters().delayed_packets > *before {
                    Ok(())
                } else {
                    Err(format!(
                        "no packet crossed {client}'s connection while the delay was on"
                    ))
                }
            }
            Evidence::Link { host, kind, before } => {
                let after = self.link_snapshot(host);
                let sent = after.outbound - before.outbound;
                let received = after.inbound - before.inbound;
                let from_broker = after
                    .backend
                    .from_broker
                    .zip(before.backend.from_broker)
                    .map(|(a, b)| a - b);
                match kind {
                    LinkFault::Partition {
                        to_broker,
                        from_broker: cut_from,
                    } => {
                        let cut = match (before.backend.discarded, after.backend.discarded) {
                            // The backend counts what its partition discarded: the proof.
                            (Some((t0, f0)), Some((t1, f1))) => {
                                (if *to_broker { t1 - t0 } else { 0 })
                                    + if *cut_from { f1 - f0 } else { 0 }
                            }
                            // Otherwise (the simulator, which loses everything that enters a
                            // cut link): what was written into the cut ways.
                            _ => {
                                (if *to_broker { sent } else { 0 })
                                    + if *cut_from {
                                        from_broker.unwrap_or(0)
                                    } else {
                                        0
                                    }
                            }
                        };
                        if cut > 0 {
                            Ok(())
                        } else {
                            Err(format!(
                                "nothing was sent across the cut link of {host} while it was cut: there was no traffic to cut"
                            ))
                        }
                    }
                    LinkFault::Loss | LinkFault::Latency => {
                        let held = match (before.backend.held, after.backend.held) {
                            (Some((t0, f0)), Some((t1, f1))) => t1 - t0 + f1 - f0,
                            _ => 0,
                        };
                        if sent + received + from_broker.unwrap_or(0) + held > 0 {
                            Ok(())
                        } else {
                            Err(format!(
                                "no traffic crossed the link of {host} while the fault was on"
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Settles the pending link faults on `host`'s link (of the kinds `kinds` selects).
    fn settle_link(&mut self, host: &str, kinds: impl Fn(LinkFault) -> bool) {
        self.settle(|p| matches!(&p.evidence, Evidence::Link { host: h, kind, .. } if h == host && kinds(*kind)));
    }

    fn publish(
        &mut self,
        client: &str,
        messages: Vec<PlannedPublish>,
        interval_ms: u64,
        wait: bool,
    ) -> StepResult {
        let count = messages.len() as u64;
        let before = match lock(&self.shared).sessions.get_mut(client) {
            Some(s) => {
                s.publish_requested += count;
                s.publish_handled
            }
            None => 0,
        };
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

    /// `await: ack`: waits until every message of the step completed its flow (PUBACK or
    /// PUBCOMP), so the broker owns it. A message never handed over, refused, given up or
    /// not acknowledged within [`ACK_WAIT`] is an unmet expectation of the step.
    fn await_acks(
        &mut self,
        step: usize,
        client: &str,
        ids: Vec<String>,
        mark: usize,
    ) -> StepResult {
        let name = client.to_string();
        let wanted = ids.clone();
        let done = move |s: &Shared| -> Vec<(String, Option<String>)> {
            // Per id: None while open; Some("") acknowledged; Some(why) ended otherwise.
            let mut out: Vec<(String, Option<String>)> =
                wanted.iter().map(|id| (id.clone(), None)).collect();
            let mut handed: Vec<&str> = Vec::new();
            for r in &s.trace.records[mark.min(s.trace.len())..] {
                let (c, id, end) = match &r.event {
                    Event::PublishSent { client, id, .. } => {
                        if client == &name {
                            handed.push(id);
                        }
                        continue;
                    }
                    Event::PublishAcked {
                        client,
                        id,
                        accepted,
                        reason,
                    } => (
                        client,
                        id,
                        if *accepted {
                            String::new()
                        } else {
                            format!("refused by the broker ({reason})")
                        },
                    ),
                    Event::PublishFailed { client, id, cause } => {
                        (client, id, format!("failed: {cause}"))
                    }
                    _ => continue,
                };
                if c == &name {
                    if let Some(slot) = out.iter_mut().find(|(w, e)| w == id && e.is_none()) {
                        slot.1 = Some(end);
                    }
                }
            }
            // Messages the client never took (it was down) will never complete.
            let running = s.sessions.get(&name).is_some_and(|x| x.running);
            for (id, end) in &mut out {
                if end.is_none() && !running && !handed.contains(&id.as_str()) {
                    *end = Some("never handed to the client (it was not running)".into());
                }
            }
            out
        };
        let check = done.clone();
        self.run_until(ACK_WAIT, move |s| check(s).iter().all(|(_, e)| e.is_some()))?;
        let state = done(&lock(&self.shared));
        let problems: Vec<String> = state
            .iter()
            .filter_map(|(id, end)| match end {
                Some(e) if e.is_empty() => None,
                Some(e) => Some(format!("{id} {e}")),
                None => Some(format!(
                    "{id} not acknowledged within {}s",
                    ACK_WAIT.as_secs()
                )),
            })
            .collect();
        if !problems.is_empty() {
            self.expect_failure(
                step,
                "publish",
                format!(
                    "await: ack: {} (the step's messages must be the broker's before the next step)",
                    problems.join("; ")
                ),
                vec![],
            );
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Explicit scenarios

    fn explicit(&mut self, scenario: &Scenario) -> StepResult {
        let host_of = |name: &str| scenario.host_of(name).unwrap_or_else(|| name.to_string());
        self.build(&scenario.clients, host_of, scenario.broker.durable)?;
        self.statements = (0..scenario.steps.len())
            .map(|i| scenario.step_statement(i))
            .collect();
        for (i, step) in scenario.steps.iter().enumerate() {
            self.explicit_step(i, step)?;
            self.backend.after_step(i)?;
        }
        self.quiesce(scenario.quiesce.as_duration())
    }

    fn quiesce(&mut self, quiet: Duration) -> StepResult {
        // What is still pending never meets its traffic now: the faults end here.
        self.settle(|_| true);
        self.heal_all();
        if !self.broker_up {
            let restarted = self.restart_broker()?;
            self.confirm(
                None,
                false,
                "restart_broker before the quiet phase".into(),
                restarted,
            );
        }
        let at = self.now_ms();
        lock(&self.shared).record(
            at,
            "sim",
            Event::Note {
                text: "quiesce: faults healed".into(),
            },
        );
        // A publisher slowed by the faults (a full in-flight window) may still be working
        // through its messages: the quiet period starts after the last one is handed over, so
        // the trace never ends with a message acknowledged and its deliveries still in flight.
        //
        // In real time (certify) it also ends once the run has recorded nothing for
        // `drain_silence`: three of the longest keepalive and a second, at least five seconds.
        // By then a dead link has been noticed by its keepalive (one and a half periods at the
        // broker, two at the client) and a reconnect would have been recorded; a publisher
        // still waiting is stuck for good (acknowledgements of PUBLISHes a partition discarded
        // on a connection that lives on come only after a reconnect), and the rest of
        // `DRAIN_LIMIT` would record nothing either.
        let silence = self.backend.real_time().then(|| self.drain_silence());
        let end = self.backend.elapsed() + DRAIN_LIMIT;
        let (mut seen, mut since) = (lock(&self.shared).trace.len(), self.backend.elapsed());
        let drained = loop {
            let (done, len) = {
                let s = lock(&self.shared);
                let done = s
                    .sessions
                    .values()
                    .all(|x| x.publish_handled >= x.publish_requested);
                (done, s.trace.len())
            };
            let now = self.backend.elapsed();
            if done {
                break true;
            }
            if len != seen {
                (seen, since) = (len, now);
            }
            if now >= end || silence.is_some_and(|quiet| now >= since + quiet) {
                break false;
            }
            self.step()?;
        };
        if !drained {
            let at = self.now_ms();
            lock(&self.shared).record(
                at,
                "sim",
                Event::Note {
                    text: match silence {
                        Some(quiet) => format!(
                            "quiesce: publishers still busy, nothing recorded for {}s (at most {}s)",
                            quiet.as_secs(),
                            DRAIN_LIMIT.as_secs()
                        ),
                        None => format!(
                            "quiesce: publishers still busy after {}s",
                            DRAIN_LIMIT.as_secs()
                        ),
                    },
                },
            );
        }
        self.run_for(quiet)?;
        self.no_handshake_left()
    }

    /// How long a real-time run must record nothing before its busy publishers count as
    /// stuck (`quiesce`): three of the longest keepalive of its clients and a second, at
    /// least five seconds.
    fn drain_silence(&self) -> Duration {
        let longest = lock(&self.shared)
            .sessions
            .values()
            .map(|x| x.spec.keepalive.as_duration())
            .max()
            .unwrap_or_default();
        (longest * 3 + Duration::from_secs(1)).max(Duration::from_secs(5))
    }

    /// With TLS or WebSocket, a half-done handshake (the client vanished or its link was cut
    /// in the middle) must not stay with the broker: within its handshake timeout after the
    /// quiet period, none may be left. The count is the simulated broker's own (a run against
    /// a real broker has no such count and skips this).
    fn no_handshake_left(&mut self) -> StepResult {
        if lock(&self.shared).transport.is_plain() {
            return Ok(());
        }
        let limit = crate::transport::listen::HANDSHAKE_TIMEOUT + Duration::from_secs(1);
        if self.run_until(limit, |s| s.handshakes_pending == 0)? {
            return Ok(());
        }
        let left = lock(&self.shared).handshakes_pending;
        let text = format!(
            "{left} half-done handshake(s) still held by the broker {}s after the quiet period",
            limit.as_secs()
        );
        let at = self.now_ms();
        lock(&self.shared).record(at, "sim", Event::Note { text: text.clone() });
        self.failures.push(Failure {
            kind: "sim".into(),
            spec: String::new(),
            owed: "every handshake the broker began ends (completed, failed or timed out)".into(),
            happened: text.clone(),
            text,
        });
        Ok(())
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
                let before = lock(&self.shared)
                    .sessions
                    .get(&c.client)
                    .map_or(0, |x| x.instance);
                if !self.connect(&c.client, restart)? {
                    self.expect_failure(
                        i,
                        kw,
                        format!("{} got no CONNACK within {}s", c.client, ACK_WAIT.as_secs()),
                        vec![],
                    );
                }
                if restart {
                    // A new process of the client started (its CONNACK is the expectation
                    // above, the broker's part).
                    let started = lock(&self.shared)
                        .sessions
                        .get(&c.client)
                        .is_some_and(|x| x.instance > before && x.running);
                    self.confirm(
                        Some(i),
                        false,
                        format!("restart_client {}", c.client),
                        if started {
                            Ok(())
                        } else {
                            Err(format!("{}'s new process did not start", c.client))
                        },
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
                let first = lock(&self.shared)
                    .sessions
                    .get(&p.client)
                    .map_or(0, |x| x.next_message)
                    + 1;
                let mark = self.mark();
                self.publish(&p.client, vec![message; p.count as usize], interval, true)?;
                if p.await_ == PublishAwait::Ack {
                    let ids: Vec<String> = (first..first + p.count)
                        .map(|n| format!("{}-{n}", p.client))
                        .collect();
                    self.await_acks(i, &p.client, ids, mark)?;
                }
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
            Step::Reauthenticate(r) => {
                let name = r.client.clone();
                let before = lock(&self.shared)
                    .sessions
                    .get(&name)
                    .map_or(0, |s| s.reauths.len());
                self.send(
                    &name,
                    HostCommand::Reauthenticate {
                        client: name.clone(),
                        password: r
                            .wrong_password
                            .then(|| bytes::Bytes::from_static(b"not-the-password")),
                    },
                )?;
                let wait_for = name.clone();
                self.run_until(ACK_WAIT, move |s| {
                    s.sessions
                        .get(&wait_for)
                        .is_some_and(|x| x.reauths.len() > before)
                })?;
                let result = lock(&self.shared)
                    .sessions
                    .get(&name)
                    .and_then(|s| s.reauths.get(before).cloned());
                let failure = match (r.wrong_password, result) {
                    (_, None) => Some(format!(
                        "{name}'s re-authentication got no answer within {}s",
                        ACK_WAIT.as_secs()
                    )),
                    (false, Some(Ok(()))) => None,
                    (false, Some(Err(e))) => {
                        Some(format!("{name}'s re-authentication failed: {e}"))
                    }
                    (true, Some(Ok(()))) => Some(format!(
                        "the broker accepted {name}'s re-authentication with a wrong password"
                    )),
                    (
                        true,
                        Some(Err(
                            crate::client::ClientError::ServerDisconnected(_)
                            | crate::client::ClientError::ConnectionClosed
                            | crate::client::ClientError::Io(_),
                        )),
                    ) => None,
                    (true, Some(Err(e))) => Some(format!(
                        "{name}'s re-authentication with a wrong password ended without the \
                         broker closing the connection: {e}"
                    )),
                };
                if let Some(text) = failure {
                    self.expect_failure(i, kw, text, vec![]);
                }
            }
            Step::CrashBroker(c) => {
                let crashed = self.crash_broker(c.power_loss)?;
                self.step()?;
                let what = if c.power_loss {
                    "crash_broker (power loss)"
                } else {
                    "crash_broker"
                };
                self.confirm(Some(i), false, what.into(), crashed);
            }
            Step::RestartBroker(_) => {
                let restarted = self.restart_broker()?;
                self.confirm(Some(i), false, "restart_broker".into(), restarted);
            }
            Step::CrashClient(c) => {
                let crashed = self.crash_client(&c.client)?;
                self.confirm(
                    Some(i),
                    false,
                    format!("crash_client {}", c.client),
                    crashed,
                );
            }
            Step::Partition(p) => {
                let (a, b) = (self.endpoint(&p.a), self.endpoint(&p.b));
                self.fault(Fault::Partition {
                    a: a.clone(),
                    b: b.clone(),
                    one_way: p.one_way,
                });
                self.backend.partition(&a, &b, p.one_way);
                let what = format!("partition {a} {} {b}", if p.one_way { "->" } else { "-" });
                self.pend_link(
                    Some(i),
                    what,
                    &a,
                    &b,
                    LinkFault::Partition {
                        to_broker: true,
                        from_broker: !p.one_way,
                    },
                );
            }
            Step::Heal(h) => match (&h.a, &h.b) {
                (Some(a), Some(b)) => {
                    let (a, b) = (self.endpoint(a), self.endpoint(b));
                    // Partitions and loss end here (latency stays until the end).
                    for host in [&a, &b] {
                        self.settle_link(host, |k| k != LinkFault::Latency);
                    }
                    self.fault(Fault::Heal {
                        a: a.clone(),
                        b: b.clone(),
                    });
                    self.backend.repair(&a, &b);
                    self.backend.loss(&a, &b, 0.0);
                }
                _ => {
                    // Every partition and loss, and every connection fault (delays, drop and
                    // duplicate rules) ends here.
                    self.settle(|p| {
                        !matches!(
                            p.evidence,
                            Evidence::Link {
                                kind: LinkFault::Latency,
                                ..
                            }
                        )
                    });
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
                if l.rate > 0.0 {
                    self.pend_link(Some(i), format!("loss {a} - {b}"), &a, &b, LinkFault::Loss);
                }
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
                self.pend_link(
                    Some(i),
                    format!("latency {a} - {b}"),
                    &a,
                    &b,
                    LinkFault::Latency,
                );
            }
            Step::Reset(c) => {
                let reset = self.reset(&c.client)?;
                self.confirm(Some(i), false, format!("reset {}", c.client), reset);
            }
            Step::Stall(c) => {
                let stalled = self.stall(&c.client);
                self.confirm(Some(i), false, format!("stall {}", c.client), stalled);
            }
            Step::Delay(d) => {
                self.fault(Fault::Delay {
                    client: d.client.clone(),
                    delay_ms: d.by.millis,
                });
                if let Some(control) = self.control(&d.client) {
                    control.set_delay(d.by.as_duration());
                    if !d.by.as_duration().is_zero() {
                        let before = control.counters().delayed_packets;
                        self.pending.push(Pending {
                            step: Some(i),
                            fault: format!("delay {}", d.client),
                            evidence: Evidence::Delayed {
                                control,
                                before,
                                client: d.client.clone(),
                            },
                        });
                    }
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
                        packet_type: name.clone(),
                    }
                } else {
                    Fault::DuplicatePacket {
                        client: p.client.clone(),
                        direction: p.direction,
                        packet_type: name.clone(),
                    }
                });
                if let Some(control) = self.control(&p.client) {
                    let id = if drop {
                        control.drop_next(p.direction, packet_type)
                    } else {
                        control.duplicate_next(p.direction, packet_type)
                    };
                    let way = direction_name(p.direction);
                    self.pending.push(Pending {
                        step: Some(i),
                        fault: format!("{kw} {name} {way} on {}", p.client),
                        evidence: Evidence::Rule {
                            control,
                            id,
                            what: format!("{name} packet went {way} on {}'s connections", p.client),
                        },
                    });
                }
            }
            Step::Kick(c) => {
                let kicked = self.kick(&c.client)?;
                self.confirm(Some(i), false, format!("kick {}", c.client), kicked);
            }
            Step::Wait(d) => self.run_for(d.as_duration())?,
            Step::ExpectMessages(x) => {
                let from_index = if x.again {
                    self.expect_starts.get(&x.client).copied().unwrap_or(0)
                } else {
                    self.expect_marks.get(&x.client).copied().unwrap_or(0)
                };
                self.expect_starts.insert(x.client.clone(), from_index);
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
                let from_index = if x.since_start {
                    0
                } else {
                    lock(&self.shared).trace.len()
                };
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
                            "{} received {} message(s) it should not have {} {}",
                            x.client,
                            hits.len(),
                            if x.since_start {
                                "since the start, or within"
                            } else {
                                "within"
                            },
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
        self.publishers = plan.publishers.keys().cloned().collect();
        self.workload_qos = workload.qos.clone();
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
                let what = format!("partition {a} {} {b}", if one_way { "->" } else { "-" });
                self.pend_link(
                    None,
                    what,
                    &a,
                    &b,
                    LinkFault::Partition {
                        to_broker: true,
                        from_broker: !one_way,
                    },
                );
            }
            FaultKind::Loss => {
                self.fault(Fault::Loss {
                    a: host.clone(),
                    b: broker.clone(),
                    rate: loss_rate,
                });
                self.backend.loss(&host, &broker, loss_rate);
                if loss_rate > 0.0 {
                    let what = format!("loss {host} - {broker}");
                    self.pend_link(None, what, &host, &broker, LinkFault::Loss);
                }
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
                let what = format!("latency {host} - {broker}");
                self.pend_link(None, what, &host, &broker, LinkFault::Latency);
            }
            FaultKind::CrashBroker | FaultKind::PowerLoss => {
                let crashed = self.crash_broker(kind == FaultKind::PowerLoss)?;
                let what = if kind == FaultKind::PowerLoss {
                    "power_loss"
                } else {
                    "crash_broker"
                };
                self.confirm(None, true, what.into(), crashed);
            }
            FaultKind::CrashClient => {
                let what = format!("crash_client {target}");
                if crashed.iter().any(|c| c == target) {
                    self.confirm(None, true, what, Err(format!("{target} was already down")));
                } else {
                    let result = self.crash_client(target)?;
                    if result.is_ok() {
                        crashed.push(target.into());
                    }
                    self.confirm(None, true, what, result);
                }
            }
            FaultKind::Kick => {
                self.fault(Fault::Kick {
                    client: target.into(),
                });
                let what = format!("kick {target}");
                if self.connected(target) {
                    self.set_pending(target, crate::history::DisconnectCause::Kicked);
                    let client_id = lock(&self.shared)
                        .sessions
                        .get(target)
                        .map(|s| s.client_id.clone())
                        .unwrap_or_default();
                    let mark = self.mark();
                    self.backend.kick(target, &client_id)?;
                    self.pending.push(Pending {
                        step: None,
                        fault: what,
                        evidence: Evidence::Ends {
                            client: target.into(),
                            mark,
                        },
                    });
                } else {
                    let why = format!("{target} had no connection to kick");
                    self.confirm(None, true, what, Err(why));
                }
            }
            FaultKind::Reset => {
                self.fault(Fault::Reset {
                    client: target.into(),
                });
                self.set_pending(target, crate::history::DisconnectCause::ConnectionReset);
                let what = format!("reset {target}");
                let mark = self.mark();
                if control.as_ref().is_some_and(|c| c.reset()) {
                    self.pending.push(Pending {
                        step: None,
                        fault: what,
                        evidence: Evidence::Ends {
                            client: target.into(),
                            mark,
                        },
                    });
                } else {
                    let why = format!("{target} had no open connection to reset");
                    self.confirm(None, true, what, Err(why));
                }
            }
            FaultKind::Stall => {
                let stalled = self.stall(target);
                self.confirm(None, true, format!("stall {target}"), stalled);
            }
            FaultKind::Delay => {
                let delay_ms = self.rng.random_range(50..=1000u64);
                self.fault(Fault::Delay {
                    client: target.into(),
                    delay_ms,
                });
                if let Some(c) = control {
                    c.set_delay(Duration::from_millis(delay_ms));
                    let before = c.counters().delayed_packets;
                    self.pending.push(Pending {
                        step: None,
                        fault: format!("delay {target}"),
                        evidence: Evidence::Delayed {
                            control: c,
                            before,
                            client: target.into(),
                        },
                    });
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
                let k = self.rng.random_range(0..KINDS.len());
                let drawn = if self.rng.random_bool(0.5) {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                let drop = kind == FaultKind::DropPacket;
                // A rule for a packet the target never carries that way (a PINGRESP sent by a
                // client, a PUBREC at QoS 1) would meet nothing: take one it carries, from the
                // same draw (so the seed's later draws stay the same).
                let publisher = self.publishers.iter().any(|p| p == target);
                let carried =
                    |d: Direction| packets_carried(publisher, &self.workload_qos, d, !drop);
                let (packet, direction) = if carried(drawn).contains(&KINDS[k]) {
                    (KINDS[k], drawn)
                } else {
                    let other = match drawn {
                        Direction::Outbound => Direction::Inbound,
                        Direction::Inbound => Direction::Outbound,
                    };
                    match (carried(drawn), carried(other)) {
                        (c, _) if !c.is_empty() => (c[k % c.len()], drawn),
                        (_, c) if !c.is_empty() => (c[k % c.len()], other),
                        _ => (KINDS[k], drawn),
                    }
                };
                let name = packet.as_str().to_string();
                self.fault(if drop {
                    Fault::DropPacket {
                        client: target.into(),
                        direction,
                        packet_type: name.clone(),
                    }
                } else {
                    Fault::DuplicatePacket {
                        client: target.into(),
                        direction,
                        packet_type: name.clone(),
                    }
                });
                if let Some(c) = control {
                    let t = packet.packet_type() as u8;
                    // A dropped packet is only recovered by a new connection (MQTT resends
                    // on reconnect): the heal resets this one so the run goes on.
                    let id = if drop {
                        c.drop_next(direction, t)
                    } else {
                        c.duplicate_next(direction, t)
                    };
                    let way = direction_name(direction);
                    let verb = if drop {
                        "drop_packet"
                    } else {
                        "duplicate_packet"
                    };
                    self.pending.push(Pending {
                        step: None,
                        fault: format!("{verb} {name} {way} on {target}"),
                        evidence: Evidence::Rule {
                            control: c,
                            id,
                            what: format!("{name} packet went {way} on {target}'s connections"),
                        },
                    });
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
        // The fault ran its time: whatever it was going to meet, it met.
        self.settle(|p| p.step.is_none());
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
            FaultKind::CrashBroker | FaultKind::PowerLoss => {
                if !self.broker_up {
                    // Not the nemesis' own fault: every later fault needs the broker back.
                    let restarted = self.restart_broker()?;
                    self.confirm(None, false, "restart_broker".into(), restarted);
                }
            }
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

/// The packets a workload client carries `direction` (outbound: it sends them), so a drop
/// (or, with `duplicate`, a duplicate) rule on it can meet one. A duplicate never meets a
/// QoS 0 PUBLISH (the fault layer models a retransmission); a client sends PINGREQ (and
/// receives PINGRESP) only when idle, which a workload client is only without acknowledgements
/// to send: a subscriber of QoS 0 alone.
fn packets_carried(
    publisher: bool,
    qos: &[QoS],
    direction: Direction,
    duplicate: bool,
) -> Vec<PacketKind> {
    let q1 = qos.contains(&QoS::AtLeastOnce);
    let q2 = qos.contains(&QoS::ExactlyOnce);
    let publish = !duplicate || q1 || q2;
    let idle = !q1 && !q2;
    let mut out = Vec::new();
    let mut add = |yes: bool, p: PacketKind| {
        if yes {
            out.push(p);
        }
    };
    match (publisher, direction) {
        (true, Direction::Outbound) => {
            add(publish, PacketKind::Publish);
            add(q2, PacketKind::Pubrel);
        }
        (true, Direction::Inbound) => {
            add(q1, PacketKind::Puback);
            add(q2, PacketKind::Pubrec);
            add(q2, PacketKind::Pubcomp);
        }
        (false, Direction::Outbound) => {
            add(q1, PacketKind::Puback);
            add(q2, PacketKind::Pubrec);
            add(q2, PacketKind::Pubcomp);
        }
        (false, Direction::Inbound) => {
            add(publish, PacketKind::Publish);
            add(q2, PacketKind::Pubrel);
            add(idle, PacketKind::Pingresp);
        }
    }
    out
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
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
            let mut line = format!(
                "{} message(s) [{}], got {}",
                m.count,
                what.join(", "),
                ids.len()
            );
            // Messages that match all but the QoS or RETAIN asked for: say how they did
            // arrive, so "got 0" never hides six deliveries at another QoS.
            if m.qos.is_some() || m.retain.is_some() {
                let mut otherwise: BTreeMap<(u8, bool), Vec<&str>> = BTreeMap::new();
                for (id, topic, qos, retain) in &deliveries {
                    let rest = m.id.as_deref().is_none_or(|want| want == *id)
                        && m.from.as_deref().is_none_or(|from| {
                            id.rsplit_once('-').is_some_and(|(publisher, n)| {
                                publisher == from && n.parse::<u32>().is_ok()
                            })
                        })
                        && m.topic.as_deref().is_none_or(|t| matches(t, topic));
                    let differs =
                        m.qos.is_some_and(|q| q != *qos) || m.retain.is_some_and(|r| r != *retain);
                    if rest && differs {
                        let ids = otherwise.entry((qos.as_u8(), *retain)).or_default();
                        if !ids.contains(id) {
                            ids.push(id);
                        }
                    }
                }
                let parts: Vec<String> = otherwise
                    .iter()
                    .map(|((qos, retain), ids)| {
                        let mut how = Vec::new();
                        if m.qos.is_some() {
                            how.push(format!("qos {qos}"));
                        }
                        if m.retain.is_some() {
                            how.push(format!("retain {retain}"));
                        }
                        format!("{} with {}", ids.len(), how.join(", "))
                    })
                    .collect();
                if !parts.is_empty() {
                    line.push_str(&format!(" (otherwise matching: {})", parts.join("; ")));
                }
            }
            out.push(line);
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
                user: None,
                auth: None,
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

#[cfg(test)]
mod library_tests;
#[cfg(test)]
mod tests;
