//! The simulator: runs a [`Scenario`] in a turmoil world seeded from the run's seed, records
//! the trace, checks the expectations of explicit steps, and applies the checkers.
//!
//! Shape:
//! - the broker is a host factory (`crash`/`bounce` restart it from its store: a `FileStore`
//!   on turmoil's simulated disk when `broker.durable`, else a `MemoryStore` that forgets);
//! - clients live on few hosts (their `host`), one *agent* task per client on its host, each
//!   running a simqtt `Client` whose connector goes through the per-connection fault layer;
//! - the steps run from outside the world: this loop injects link faults and crashes through
//!   `turmoil::Sim`, hands client commands to the agents through mailboxes, and advances the
//!   simulation tick by tick until the step is done or its deadline passes;
//! - randomised scenarios are first expanded, from the seed, into the same clients and steps.
//!
//! Everything that varies comes from the seed: turmoil's RNG (`Builder::rng_seed`), the
//! clients' backoff jitter, the broker's RNG, and the expansion of randomised scenarios.

pub mod expand;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::broker::{Broker, BrokerConfig};
use crate::client::{
    Client, ClientError, Completion, ConnectOptions, EventKind, FilePersistence, MemoryPersistence,
    Persistence as ClientPersistence, ReconnectOptions, ResubscribePolicy, WillOptions,
};
use crate::codec::{QoS, ReasonCode, SubscriptionOptions, TopicFilter, TopicName};
use crate::history::checkers::{self, Outcome};
use crate::history::{DisconnectCause, Event, Fault, FilterGrant, FilterRequest, Trace, WillInfo};
use crate::scenario::{
    ClientSpec, ExpectedMessage, FilterSpec, Persistence, PublishStep, Scenario, Step,
};
use crate::store::fs::{SharedFs, SimFs};
use crate::store::{FileStore, MemoryStore, Store, SyncPolicy};
use crate::transport::fault::FaultHandle;
use crate::transport::sim::{SimConnector, SimListener};
use crate::transport::Connector;

/// The MQTT port inside the simulation.
const PORT: u16 = 1883;
/// How long a step that waits for the client (connect, subscribe, …) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Directory of the broker's store on its simulated disk.
const BROKER_DATA_DIR: &str = "/var/lib/simqtt";
/// turmoil's tick: 1 ms keeps keepalive and latency honest at millisecond resolution.
const TICK: Duration = Duration::from_millis(1);
/// The simulated wall clock at the start of every run, in seconds after the Unix epoch
/// (2023-11-14T22:13:20Z).
const SIM_EPOCH_SECS: u64 = 1_700_000_000;
/// Longest run, a bound against a scenario that never ends.
const SIMULATION_MAX: Duration = Duration::from_secs(6 * 3600);

/// One client command handed to an agent.
#[derive(Debug, Clone)]
enum Command {
    Connect,
    Subscribe(Vec<FilterSpec>),
    Unsubscribe(Vec<String>),
    Publish(PublishStep),
    Disconnect,
    /// The client's process dies: no DISCONNECT, its socket closes (the broker sees FIN).
    Kill,
}

#[derive(Debug, Default)]
struct Shared {
    trace: Mutex<Trace>,
    mailboxes: Mutex<BTreeMap<String, mpsc::UnboundedSender<Command>>>,
    /// Commands an agent has not finished, per client.
    busy: Mutex<BTreeMap<String, u32>>,
    /// The cause the runner knows for a client's next disconnection (it injected the fault).
    causes: Mutex<BTreeMap<String, DisconnectCause>>,
    kick: Mutex<Option<mpsc::UnboundedSender<String>>>,
    faults: BTreeMap<String, FaultHandle>,
    /// Per client: messages published so far (ids `<client>-<n>` continue across restarts).
    published: Mutex<BTreeMap<String, u32>>,
    /// Per client: client instances started (will ids `w-<client>-<n>`).
    starts: Mutex<BTreeMap<String, u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind every lock here: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    turmoil::sim_elapsed()
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    fn record(&self, host: &str, event: Event) {
        lock(&self.trace).push(now_ms(), host, event);
    }

    fn done(&self, client: &str) {
        if let Some(n) = lock(&self.busy).get_mut(client) {
            *n = n.saturating_sub(1);
        }
    }
}

/// What an expectation step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectationResult {
    /// 1-based step number.
    pub step: usize,
    pub passed: bool,
    pub message: String,
}

/// One seeded run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub scenario: String,
    pub seed: u64,
    pub trace: Trace,
    pub expectations: Vec<ExpectationResult>,
    pub outcomes: Vec<Outcome>,
    /// The simulation itself failed (a host returned an error).
    pub error: Option<String>,
    /// Simulated time the run covered.
    pub simulated: Duration,
}

impl RunResult {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.expectations.iter().all(|e| e.passed)
            && self.outcomes.iter().all(|o| o.passed())
    }

    /// A human report of what failed (empty when passed).
    pub fn failures(&self) -> String {
        let mut out = String::new();
        if let Some(e) = &self.error {
            out.push_str(&format!("simulation error: {e}\n"));
        }
        for e in self.expectations.iter().filter(|e| !e.passed) {
            out.push_str(&format!("step {}: {}\n", e.step, e.message));
        }
        for o in &self.outcomes {
            for v in &o.violations {
                out.push_str(&v.render(&self.trace));
            }
        }
        out
    }
}

/// Runs one scenario with one seed.
pub fn run(scenario: &Scenario, seed: u64) -> RunResult {
    let (clients, steps) = expand::expand(scenario, seed);
    let faults = clients
        .keys()
        .map(|c| (c.clone(), FaultHandle::new()))
        .collect();
    let shared = Arc::new(Shared {
        faults,
        ..Shared::default()
    });
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        // turmoil's default epoch is the wall clock; a fixed one keeps simulated system time
        // (and anything derived from it) the same on every run.
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(SIM_EPOCH_SECS))
        .tick_duration(TICK)
        .simulation_duration(SIMULATION_MAX)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .build();
    let broker_host = scenario.broker.host.clone();
    broker_factory(
        &mut sim,
        &broker_host,
        scenario.broker.durable,
        seed,
        &shared,
    );
    let mut hosts: BTreeMap<String, Vec<(String, ClientSpec)>> = BTreeMap::new();
    for (name, spec) in &clients {
        let host = spec.host.clone().unwrap_or_else(|| name.clone());
        hosts
            .entry(host)
            .or_default()
            .push((name.clone(), spec.clone()));
    }
    for (host, members) in &hosts {
        client_factory(&mut sim, host, members.clone(), &broker_host, seed, &shared);
    }
    let mut runner = Runner {
        sim,
        shared: shared.clone(),
        broker_host,
        clients,
        hosts,
        expectations: Vec::new(),
        error: None,
    };
    // Let the hosts start (the broker binds, agents register).
    runner.advance(Duration::from_millis(10));
    for (index, step) in steps.iter().enumerate() {
        if runner.error.is_some() {
            break;
        }
        runner.step(index + 1, step);
    }
    if runner.error.is_none() {
        runner.heal_all();
        runner.advance(scenario.quiesce.as_duration());
    }
    let simulated = runner.sim.elapsed();
    let mut trace = lock(&shared.trace).clone();
    trace.canonicalize("sim");
    let outcomes = checkers::run(&trace, &scenario.checker_list());
    RunResult {
        scenario: scenario.name.clone(),
        seed,
        trace,
        expectations: runner.expectations,
        outcomes,
        error: runner.error,
        simulated,
    }
}

fn broker_factory(
    sim: &mut turmoil::Sim<'_>,
    host: &str,
    durable: bool,
    seed: u64,
    shared: &Arc<Shared>,
) {
    let shared = shared.clone();
    let host_name = host.to_string();
    sim.host(host, move || {
        let shared = shared.clone();
        let host_name = host_name.clone();
        async move {
            let store: Box<dyn Store> = if durable {
                let fs: SharedFs = Arc::new(SimFs);
                Box::new(FileStore::open(
                    fs,
                    Path::new(BROKER_DATA_DIR),
                    SyncPolicy::EveryWrite,
                )?)
            } else {
                Box::new(MemoryStore::new())
            };
            let config = BrokerConfig {
                rng_seed: Some(seed),
                sys_interval_secs: 0,
                ..BrokerConfig::default()
            };
            let (broker, handle) = Broker::new(store, config);
            let (kick_tx, mut kick_rx) = mpsc::unbounded_channel::<String>();
            *lock(&shared.kick) = Some(kick_tx);
            tokio::spawn(async move {
                while let Some(client_id) = kick_rx.recv().await {
                    handle.kick(&client_id).await;
                }
            });
            shared.record(&host_name, Event::BrokerStarted { durable });
            let listener = SimListener::bind(&format!("0.0.0.0:{PORT}")).await?;
            broker.run(listener, std::future::pending::<()>()).await?;
            Ok(())
        }
    });
}

fn client_factory(
    sim: &mut turmoil::Sim<'_>,
    host: &str,
    members: Vec<(String, ClientSpec)>,
    broker_host: &str,
    seed: u64,
    shared: &Arc<Shared>,
) {
    let shared = shared.clone();
    let host_name = host.to_string();
    let server = format!("{broker_host}:{PORT}");
    sim.host(host, move || {
        let shared = shared.clone();
        let members = members.clone();
        let host_name = host_name.clone();
        let server = server.clone();
        async move {
            for (name, spec) in members {
                let (tx, rx) = mpsc::unbounded_channel();
                lock(&shared.mailboxes).insert(name.clone(), tx);
                let agent = Agent {
                    name,
                    spec,
                    host: host_name.clone(),
                    server: server.clone(),
                    seed,
                    shared: shared.clone(),
                };
                tokio::spawn(agent.run(rx));
            }
            std::future::pending::<()>().await;
            Ok(())
        }
    });
}

/// Drives one client on its host.
struct Agent {
    name: String,
    spec: ClientSpec,
    host: String,
    server: String,
    seed: u64,
    shared: Arc<Shared>,
}

impl Agent {
    fn client_id(&self) -> String {
        self.spec
            .client_id
            .clone()
            .unwrap_or_else(|| self.name.clone())
    }

    fn will_id(&self, start: u32) -> Option<String> {
        self.spec.will.as_ref().map(|w| {
            if w.empty {
                String::new()
            } else {
                format!("w-{}-{start}", self.name)
            }
        })
    }

    fn options(&self, start: u32) -> ConnectOptions {
        let spec = &self.spec;
        let mut o = ConnectOptions::new(self.server.clone(), self.client_id());
        o.protocol = spec.protocol;
        o.clean_session = spec.clean_session;
        o.keep_alive_secs = spec.keepalive.whole_secs().unwrap_or(30).min(65_535) as u16;
        o.connect_timeout = Duration::from_secs(5);
        o.reconnect = spec.reconnect.then(|| ReconnectOptions {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(3),
            seed: self.seed ^ fnv(&self.name),
            max_attempts: None,
        });
        o.resubscribe = if spec.resubscribe {
            ResubscribePolicy::WhenSessionNotPresent
        } else {
            ResubscribePolicy::Never
        };
        o.session_expiry_interval_secs = spec
            .session_expiry
            .and_then(|d| d.whole_secs())
            .map(|s| s.min(u64::from(u32::MAX)) as u32);
        o.will = spec.will.as_ref().and_then(|w| {
            Some(WillOptions {
                topic: TopicName::new(&w.topic).ok()?,
                payload: Bytes::from(self.will_id(start).unwrap_or_default()),
                qos: w.qos,
                retain: w.retain,
            })
        });
        o
    }

    fn connect_event(&self, start: u32) -> Event {
        let spec = &self.spec;
        Event::ConnectAttempt {
            client: self.name.clone(),
            client_id: self.client_id(),
            protocol: spec.protocol,
            clean_start: spec.clean_session,
            keep_alive_secs: spec.keepalive.whole_secs().unwrap_or(30).min(65_535) as u16,
            session_expiry_secs: spec
                .session_expiry
                .and_then(|d| d.whole_secs())
                .map(|s| s.min(u64::from(u32::MAX)) as u32),
            will: spec.will.as_ref().map(|w| WillInfo {
                id: self.will_id(start).unwrap_or_default(),
                topic: w.topic.clone(),
                qos: w.qos,
                retain: w.retain,
                delay_secs: w.delay.and_then(|d| d.whole_secs()).map(|s| s as u32),
            }),
            resubscribe: spec.resubscribe,
        }
    }

    async fn run(self, mut mailbox: mpsc::UnboundedReceiver<Command>) {
        let agent = Arc::new(self);
        let mut client: Option<Client> = None;
        let mut publisher: Option<mpsc::UnboundedSender<PublishStep>> = None;
        while let Some(command) = mailbox.recv().await {
            match command {
                Command::Connect => {
                    if let Some(old) = client.take() {
                        old.kill();
                    }
                    let start = {
                        let mut starts = lock(&agent.shared.starts);
                        let n = starts.entry(agent.name.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    let persistence: Box<dyn ClientPersistence> = match agent.spec.persistence {
                        Persistence::None => Box::new(MemoryPersistence::new()),
                        Persistence::Disk => {
                            let fs: SharedFs = Arc::new(SimFs);
                            Box::new(FilePersistence::new(
                                fs,
                                format!("/var/lib/simqtt-client/{}", agent.name),
                                &agent.client_id(),
                            ))
                        }
                    };
                    let fault = agent
                        .shared
                        .faults
                        .get(&agent.name)
                        .cloned()
                        .unwrap_or_default();
                    let connector: Arc<dyn Connector> = Arc::new(fault.connector(SimConnector));
                    match Client::start(agent.options(start), connector, persistence) {
                        Ok((c, events)) => {
                            let (first_tx, first_rx) = oneshot::channel();
                            tokio::spawn(pump_events(agent.clone(), start, events, first_tx));
                            let (ptx, prx) = mpsc::unbounded_channel();
                            tokio::spawn(publish_loop(agent.clone(), c.clone(), prx));
                            publisher = Some(ptx);
                            client = Some(c);
                            let _ = first_rx.await;
                        }
                        Err(e) => agent.shared.record(
                            &agent.host,
                            Event::Note {
                                text: format!("{} could not start: {e}", agent.name),
                            },
                        ),
                    }
                    agent.shared.done(&agent.name);
                }
                Command::Subscribe(filters) => {
                    let Some(c) = client.clone() else {
                        agent.shared.done(&agent.name);
                        continue;
                    };
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        subscribe(&agent, &c, filters).await;
                        agent.shared.done(&agent.name);
                    });
                }
                Command::Unsubscribe(filters) => {
                    let Some(c) = client.clone() else {
                        agent.shared.done(&agent.name);
                        continue;
                    };
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        agent.shared.record(
                            &agent.host,
                            Event::Unsubscribe {
                                client: agent.name.clone(),
                                filters: filters.clone(),
                            },
                        );
                        let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
                        if c.unsubscribe(&refs).await.is_ok() {
                            agent.shared.record(
                                &agent.host,
                                Event::UnsubAck {
                                    client: agent.name.clone(),
                                    filters,
                                },
                            );
                        }
                        agent.shared.done(&agent.name);
                    });
                }
                Command::Publish(step) => {
                    if let Some(p) = &publisher {
                        let _ = p.send(step);
                    }
                    agent.shared.done(&agent.name);
                }
                Command::Kill => {
                    if let Some(c) = client.take() {
                        c.kill();
                    }
                    publisher = None;
                    agent.shared.done(&agent.name);
                }
                Command::Disconnect => {
                    if let Some(c) = client.take() {
                        lock(&agent.shared.causes).insert(
                            agent.name.clone(),
                            DisconnectCause::ClientDisconnect { with_will: false },
                        );
                        c.disconnect().await;
                    }
                    publisher = None;
                    agent.shared.done(&agent.name);
                }
            }
        }
    }
}

fn fnv(text: &str) -> u64 {
    // FNV-1a: a fixed, portable hash to derive per-client seeds from the run's seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn granted(code: ReasonCode) -> Option<QoS> {
    match code {
        ReasonCode::Success => Some(QoS::AtMostOnce),
        ReasonCode::GrantedQoS1 => Some(QoS::AtLeastOnce),
        ReasonCode::GrantedQoS2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

async fn subscribe(agent: &Agent, client: &Client, filters: Vec<FilterSpec>) {
    let requests: Vec<FilterRequest> = filters
        .iter()
        .map(|f| FilterRequest {
            filter: f.filter.clone(),
            qos: f.qos,
            no_local: f.no_local,
            retain_as_published: f.retain_as_published,
            retain_handling: f.retain_handling,
        })
        .collect();
    let mut packet_filters = Vec::new();
    for f in &filters {
        let Ok(filter) = TopicFilter::new(&f.filter) else {
            return;
        };
        let mut options = SubscriptionOptions::qos(f.qos);
        options.no_local = f.no_local;
        options.retain_as_published = f.retain_as_published;
        options.retain_handling = match f.retain_handling {
            1 => crate::codec::RetainHandling::SendIfNewSubscription,
            2 => crate::codec::RetainHandling::DoNotSend,
            _ => crate::codec::RetainHandling::SendAtSubscribe,
        };
        packet_filters.push((filter, options));
    }
    agent.shared.record(
        &agent.host,
        Event::Subscribe {
            client: agent.name.clone(),
            filters: requests,
            automatic: false,
        },
    );
    let Ok(token) = client.start_subscribe(packet_filters).await else {
        return;
    };
    if let Ok(Completion::Subscribed(codes)) = token.wait().await {
        let results = filters
            .iter()
            .zip(codes)
            .map(|(f, code)| FilterGrant {
                filter: f.filter.clone(),
                granted: granted(code),
            })
            .collect();
        agent.shared.record(
            &agent.host,
            Event::SubAck {
                client: agent.name.clone(),
                results,
            },
        );
    }
}

/// Publishes the client's messages one after another, so publish order is call order.
async fn publish_loop(
    agent: Arc<Agent>,
    client: Client,
    mut jobs: mpsc::UnboundedReceiver<PublishStep>,
) {
    while let Some(job) = jobs.recv().await {
        for i in 0..job.count {
            if i > 0 {
                if let Some(rate) = job.rate {
                    tokio::time::sleep(Duration::from_millis(rate.interval_ms())).await;
                }
            }
            let n = {
                let mut published = lock(&agent.shared.published);
                let n = published.entry(agent.name.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let id = format!("{}-{n}", agent.name);
            let payload = payload_for(&id, &job);
            agent.shared.record(
                &agent.host,
                Event::PublishSent {
                    client: agent.name.clone(),
                    id: id.clone(),
                    topic: job.topic.clone(),
                    qos: job.qos,
                    retain: job.retain,
                    payload_len: payload.len() as u32,
                },
            );
            match client
                .publish(&job.topic, payload, job.qos, job.retain)
                .await
            {
                Ok(token) if job.qos != QoS::AtMostOnce => {
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        let event = match token.wait().await {
                            Ok(_) => Event::PublishAcked {
                                client: agent.name.clone(),
                                id,
                                accepted: true,
                                reason: "0x00".into(),
                            },
                            Err(ClientError::Rejected(code)) => Event::PublishAcked {
                                client: agent.name.clone(),
                                id,
                                accepted: false,
                                reason: format!("0x{:02X}", code.as_u8()),
                            },
                            Err(e) => Event::PublishFailed {
                                client: agent.name.clone(),
                                id,
                                cause: e.to_string(),
                            },
                        };
                        agent.shared.record(&agent.host, event);
                    });
                }
                Ok(_) => {}
                Err(e) => agent.shared.record(
                    &agent.host,
                    Event::PublishFailed {
                        client: agent.name.clone(),
                        id,
                        cause: e.to_string(),
                    },
                ),
            }
        }
    }
}

/// The payload carries the id first, then `|` and padding up to `payload_size`.
fn payload_for(id: &str, job: &PublishStep) -> Bytes {
    if job.empty {
        return Bytes::new();
    }
    let mut payload = id.as_bytes().to_vec();
    if let Some(size) = job.payload_size {
        let size = size as usize;
        if size > payload.len() {
            payload.push(b'|');
            payload.resize(size, b'x');
        }
    }
    Bytes::from(payload)
}

fn id_of(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    text.split('|').next().unwrap_or_default().to_string()
}

/// Turns the client's events into trace records.
async fn pump_events(
    agent: Arc<Agent>,
    start: u32,
    mut events: mpsc::Receiver<crate::client::Event>,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut connected = false;
    let name = agent.name.clone();
    let record = |event: Event| agent.shared.record(&agent.host, event);
    while let Some(event) = events.recv().await {
        match event.kind {
            EventKind::ConnectComplete {
                session_present, ..
            } => {
                record(agent.connect_event(start));
                record(Event::ConnAck {
                    client: name.clone(),
                    session_present,
                    reason: "0x00".into(),
                });
                connected = true;
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
            }
            EventKind::ConnectFailed { cause } => {
                record(agent.connect_event(start));
                match cause {
                    ClientError::Refused { code, .. } => record(Event::ConnAck {
                        client: name.clone(),
                        session_present: false,
                        reason: format!("0x{:02X}", code.as_u8()),
                    }),
                    other => record(Event::ConnectFailed {
                        client: name.clone(),
                        error: other.to_string(),
                    }),
                }
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
            }
            EventKind::ConnectionLost { cause } if connected => {
                connected = false;
                let known = lock(&agent.shared.causes).remove(&name);
                let cause = known.unwrap_or(match cause {
                    ClientError::KeepaliveTimeout => DisconnectCause::KeepaliveTimeout,
                    ClientError::ServerDisconnected(code) => DisconnectCause::ServerDisconnect {
                        reason: format!("0x{:02X}", code.as_u8()),
                    },
                    other => DisconnectCause::NetworkError {
                        detail: other.to_string(),
                    },
                });
                record(Event::Disconnected {
                    client: name.clone(),
                    cause,
                });
            }
            EventKind::Stopped { cause } => {
                if connected {
                    let known = lock(&agent.shared.causes).remove(&name);
                    let cause = known.unwrap_or(match cause {
                        None => DisconnectCause::ClientDisconnect { with_will: false },
                        Some(e) => DisconnectCause::NetworkError {
                            detail: e.to_string(),
                        },
                    });
                    record(Event::Disconnected {
                        client: name.clone(),
                        cause,
                    });
                }
                break;
            }
            EventKind::MessageArrived(m) => {
                record(Event::Delivered {
                    client: name.clone(),
                    id: id_of(&m.payload),
                    topic: m.topic.as_str().to_string(),
                    qos: m.qos,
                    retain: m.retain,
                    dup: m.dup,
                    payload_len: m.payload.len() as u32,
                });
            }
            EventKind::SubscribeComplete {
                filters,
                granted: codes,
                resubscribe: true,
                ..
            } => {
                record(Event::Subscribe {
                    client: name.clone(),
                    filters: filters
                        .iter()
                        .map(|f| FilterRequest {
                            filter: f.as_str().to_string(),
                            qos: QoS::AtMostOnce,
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: 0,
                        })
                        .collect(),
                    automatic: true,
                });
                record(Event::SubAck {
                    client: name.clone(),
                    results: filters
                        .iter()
                        .zip(codes)
                        .map(|(f, code)| FilterGrant {
                            filter: f.as_str().to_string(),
                            granted: granted(code),
                        })
                        .collect(),
                });
            }
            _ => {}
        }
    }
    if let Some(f) = first.take() {
        let _ = f.send(());
    }
}

/// The loop outside the world.
struct Runner<'a> {
    sim: turmoil::Sim<'a>,
    shared: Arc<Shared>,
    broker_host: String,
    clients: BTreeMap<String, ClientSpec>,
    hosts: BTreeMap<String, Vec<(String, ClientSpec)>>,
    expectations: Vec<ExpectationResult>,
    error: Option<String>,
}

impl Runner<'_> {
    fn now_ms(&self) -> u64 {
        self.sim.elapsed().as_millis() as u64
    }

    fn record(&self, event: Event) {
        lock(&self.shared.trace).push(self.now_ms(), "sim", event);
    }

    fn tick(&mut self) -> bool {
        match self.sim.step() {
            Ok(_) => true,
            Err(e) => {
                self.error = Some(e.to_string());
                false
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        let until = self.sim.elapsed() + by;
        while self.sim.elapsed() < until {
            if !self.tick() {
                return;
            }
        }
    }

    /// Advances until `done` holds or `within` passes; true when done.
    fn until(&mut self, within: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.sim.elapsed() + within;
        loop {
            if done(self) {
                return true;
            }
            if self.sim.elapsed() >= deadline || !self.tick() {
                return done(self);
            }
        }
    }

    fn send(&mut self, client: &str, command: Command) {
        *lock(&self.shared.busy)
            .entry(client.to_string())
            .or_insert(0) += 1;
        let sent = lock(&self.shared.mailboxes)
            .get(client)
            .is_some_and(|m| m.send(command).is_ok());
        if !sent {
            self.shared.done(client);
        }
    }

    fn wait_idle(&mut self, client: &str) {
        let shared = self.shared.clone();
        let client = client.to_string();
        self.until(STEP_TIMEOUT, |_| {
            lock(&shared.busy).get(&client).copied().unwrap_or(0) == 0
        });
    }

    fn host_of(&self, endpoint: &str) -> String {
        if endpoint == "broker" {
            return self.broker_host.clone();
        }
        match self.clients.get(endpoint) {
            Some(spec) => spec.host.clone().unwrap_or_else(|| endpoint.to_string()),
            None => endpoint.to_string(),
        }
    }

    fn connected(&self, client: &str) -> bool {
        let trace = lock(&self.shared.trace);
        let mut connected = false;
        for r in &trace.records {
            match &r.event {
                Event::ConnAck {
                    client: c, reason, ..
                } if c == client => connected = crate::history::model::reason_accepts(reason),
                Event::Disconnected { client: c, .. } if c == client => connected = false,
                _ => {}
            }
        }
        connected
    }

    fn fault(&mut self, fault: Fault) {
        self.record(Event::Fault { fault });
    }

    fn heal_all(&mut self) {
        let hosts: Vec<String> = self.hosts.keys().cloned().collect();
        for h in &hosts {
            self.sim.repair(h.as_str(), self.broker_host.as_str());
            self.sim
                .set_link_fail_rate(h.as_str(), self.broker_host.as_str(), 0.0);
            self.fault(Fault::Heal {
                a: h.clone(),
                b: self.broker_host.clone(),
            });
        }
        for handle in self.shared.faults.values() {
            handle.resume();
            handle.set_delay(Duration::ZERO);
        }
    }

    fn step(&mut self, number: usize, step: &Step) {
        match step {
            Step::Connect(s) => {
                // Another connected client with the same id is about to be taken over.
                let id = self.clients[&s.client]
                    .client_id
                    .clone()
                    .unwrap_or_else(|| s.client.clone());
                let others: Vec<String> = self
                    .clients
                    .iter()
                    .filter(|(n, c)| {
                        *n != &s.client && c.client_id.clone().unwrap_or_else(|| (*n).clone()) == id
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                for other in others {
                    if self.connected(&other) {
                        lock(&self.shared.causes).insert(other, DisconnectCause::Takeover);
                    }
                }
                self.send(&s.client, Command::Connect);
                self.wait_idle(&s.client);
            }
            Step::Subscribe(s) => {
                self.send(&s.client, Command::Subscribe(s.all_filters()));
                self.wait_idle(&s.client);
            }
            Step::Unsubscribe(s) => {
                self.send(&s.client, Command::Unsubscribe(s.all_filters()));
                self.wait_idle(&s.client);
            }
            Step::Publish(p) => {
                self.send(&p.client, Command::Publish(p.clone()));
                self.wait_idle(&p.client);
            }
            Step::Disconnect(d) => {
                self.send(&d.client, Command::Disconnect);
                self.wait_idle(&d.client);
            }
            Step::CrashBroker(c) => {
                let connected: Vec<String> = self
                    .clients
                    .keys()
                    .filter(|c| self.connected(c))
                    .cloned()
                    .collect();
                for c in connected {
                    lock(&self.shared.causes).insert(c, DisconnectCause::BrokerCrash);
                }
                self.fault(Fault::BrokerCrash {
                    power_loss: c.power_loss,
                });
                let host = self.broker_host.clone();
                self.sim.crash(host.as_str());
            }
            Step::RestartBroker(_) => {
                self.fault(Fault::BrokerRestart);
                let host = self.broker_host.clone();
                self.sim.bounce(host.as_str());
                self.advance(Duration::from_millis(10));
            }
            Step::CrashClient(c) => {
                // One client process dies; the others on its host live on. Its persistence is
                // what it had written (disk) or nothing (memory).
                self.fault(Fault::ClientCrash {
                    client: c.client.clone(),
                });
                if self.connected(&c.client) {
                    self.record(Event::Disconnected {
                        client: c.client.clone(),
                        cause: DisconnectCause::ClientCrash,
                    });
                }
                self.send(&c.client, Command::Kill);
                self.wait_idle(&c.client);
            }
            Step::RestartClient(c) => {
                self.fault(Fault::ClientRestart {
                    client: c.client.clone(),
                });
                self.send(&c.client, Command::Connect);
                self.wait_idle(&c.client);
            }
            Step::Partition(p) => {
                let (a, b) = (self.host_of(&p.a), self.host_of(&p.b));
                if p.one_way {
                    self.sim.partition_oneway(a.as_str(), b.as_str());
                } else {
                    self.sim.partition(a.as_str(), b.as_str());
                }
                self.fault(Fault::Partition {
                    a,
                    b,
                    one_way: p.one_way,
                });
            }
            Step::Heal(h) => match (&h.a, &h.b) {
                (Some(a), Some(b)) => {
                    let (a, b) = (self.host_of(a), self.host_of(b));
                    self.sim.repair(a.as_str(), b.as_str());
                    self.sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                    self.fault(Fault::Heal { a, b });
                }
                _ => self.heal_all(),
            },
            Step::Loss(l) => {
                let (a, b) = (self.host_of(&l.a), self.host_of(&l.b));
                self.sim.set_link_fail_rate(a.as_str(), b.as_str(), l.rate);
                self.fault(Fault::Loss { a, b, rate: l.rate });
            }
            Step::Latency(l) => {
                let (a, b) = (self.host_of(&l.a), self.host_of(&l.b));
                self.sim
                    .set_link_latency(a.as_str(), b.as_str(), l.latency.as_duration());
                self.sim.set_link_max_message_latency(
                    a.as_str(),
                    b.as_str(),
                    l.latency.as_duration() + l.jitter.as_duration(),
                );
                self.fault(Fault::Latency {
                    a,
                    b,
                    latency_ms: l.latency.millis,
                    jitter_ms: l.jitter.millis,
                });
            }
            Step::Reset(c) => {
                if self.connected(&c.client) {
                    lock(&self.shared.causes)
                        .insert(c.client.clone(), DisconnectCause::ConnectionReset);
                }
                self.fault(Fault::Reset {
                    client: c.client.clone(),
                });
                if let Some(h) = self.shared.faults.get(&c.client) {
                    h.reset();
                }
            }
            Step::Stall(c) => {
                self.fault(Fault::Stall {
                    client: c.client.clone(),
                });
                if let Some(h) = self.shared.faults.get(&c.client) {
                    h.stall();
                }
            }
            Step::Delay(d) => {
                self.fault(Fault::Delay {
                    client: d.client.clone(),
                    delay_ms: d.by.millis,
                });
                if let Some(h) = self.shared.faults.get(&d.client) {
                    h.set_delay(d.by.as_duration());
                }
            }
            Step::DropPacket(p) | Step::DuplicatePacket(p) => {
                let drop = matches!(step, Step::DropPacket(_));
                let packet_type = p.packet.as_str().to_string();
                self.fault(if drop {
                    Fault::DropPacket {
                        client: p.client.clone(),
                        direction: p.direction,
                        packet_type,
                    }
                } else {
                    Fault::DuplicatePacket {
                        client: p.client.clone(),
                        direction: p.direction,
                        packet_type,
                    }
                });
                if let Some(h) = self.shared.faults.get(&p.client) {
                    if drop {
                        h.drop_next(p.direction, p.packet.packet_type());
                    } else {
                        h.duplicate_next(p.direction, p.packet.packet_type());
                    }
                }
            }
            Step::Kick(c) => {
                if self.connected(&c.client) {
                    lock(&self.shared.causes).insert(c.client.clone(), DisconnectCause::Kicked);
                }
                self.fault(Fault::Kick {
                    client: c.client.clone(),
                });
                let id = self.clients[&c.client]
                    .client_id
                    .clone()
                    .unwrap_or_else(|| c.client.clone());
                if let Some(k) = lock(&self.shared.kick).as_ref() {
                    let _ = k.send(id);
                }
            }
            Step::Wait(d) => self.advance(d.as_duration()),
            Step::ExpectMessages(x) => {
                let start = self.now_ms();
                let client = x.client.clone();
                let messages = x.messages.clone();
                let shared = self.shared.clone();
                let ok = self.until(x.within.as_duration(), |_| {
                    missing(&lock(&shared.trace), &client, &messages).is_none()
                });
                let message = match missing(&lock(&self.shared.trace), &client, &messages) {
                    None => format!("{client} received the expected messages"),
                    Some(m) => format!(
                        "{client} did not receive {m} within {} (from {start} ms)",
                        x.within
                    ),
                };
                self.expect(number, ok, message);
            }
            Step::ExpectNoMessage(x) => {
                let start = self.now_ms();
                self.advance(x.duration.as_duration());
                let trace = lock(&self.shared.trace).clone();
                let got: Vec<String> = trace
                    .records
                    .iter()
                    .filter(|r| r.at_ms >= start)
                    .filter_map(|r| match &r.event {
                        Event::Delivered {
                            client, id, topic, ..
                        } if client == &x.client
                            && x.topic
                                .as_deref()
                                .is_none_or(|f| crate::codec::matches(f, topic)) =>
                        {
                            Some(format!("{id} on {topic}"))
                        }
                        _ => None,
                    })
                    .collect();
                let ok = got.is_empty();
                let message = if ok {
                    format!("{} received nothing for {}", x.client, x.duration)
                } else {
                    format!(
                        "{} received {} but expected nothing",
                        x.client,
                        got.join(", ")
                    )
                };
                self.expect(number, ok, message);
            }
            Step::ExpectSessionPresent(x) => {
                let trace = lock(&self.shared.trace).clone();
                let flag = trace.records.iter().rev().find_map(|r| match &r.event {
                    Event::ConnAck {
                        client,
                        session_present,
                        ..
                    } if client == &x.client => Some(*session_present),
                    _ => None,
                });
                let ok = flag == Some(x.present);
                let message = match flag {
                    Some(f) => format!("{}'s latest CONNACK has session present {f}", x.client),
                    None => format!("{} has no CONNACK", x.client),
                };
                self.expect(number, ok, message);
            }
            Step::ExpectWill(x) => {
                // Any time counts: a retained will may arrive with the SUBSCRIBE, before this
                // step began.
                let prefix = format!("w-{}-", x.of);
                let shared = self.shared.clone();
                let to = x.to.clone();
                let found = |trace: &Trace| {
                    trace.records.iter().find_map(|r| match &r.event {
                        Event::Delivered {
                            client, id, retain, ..
                        } if client == &to && id.starts_with(&prefix) => Some(*retain),
                        _ => None,
                    })
                };
                let delivered = if x.delivered {
                    self.until(x.within.as_duration(), |_| {
                        found(&lock(&shared.trace)).is_some()
                    });
                    found(&lock(&self.shared.trace))
                } else {
                    self.advance(x.within.as_duration());
                    found(&lock(&self.shared.trace))
                };
                let ok = delivered.is_some() == x.delivered
                    && x.retain
                        .is_none_or(|r| delivered.is_none_or(|got| got == r));
                let message = match delivered {
                    Some(retain) => format!("{}'s will reached {} (retain {retain})", x.of, x.to),
                    None => format!("{}'s will did not reach {} within {}", x.of, x.to, x.within),
                };
                self.expect(number, ok, message);
            }
        }
    }

    fn expect(&mut self, step: usize, passed: bool, message: String) {
        self.record(Event::Note {
            text: format!(
                "step {step}: {} {message}",
                if passed { "ok:" } else { "FAILED:" }
            ),
        });
        self.expectations.push(ExpectationResult {
            step,
            passed,
            message,
        });
    }
}

/// The first expected entry not yet satisfied, described.
fn missing(trace: &Trace, client: &str, expected: &[ExpectedMessage]) -> Option<String> {
    for e in expected {
        let mut ids: Vec<&str> = trace
            .records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Delivered {
                    client: c,
                    id,
                    topic,
                    qos,
                    retain,
                    ..
                } if c == client
                    && e.id.as_deref().is_none_or(|x| x == id)
                    && e.from
                        .as_deref()
                        .is_none_or(|f| id.strip_prefix(f).is_some_and(|r| r.starts_with('-')))
                    && e.topic
                        .as_deref()
                        .is_none_or(|t| crate::codec::matches(t, topic))
                    && e.qos.is_none_or(|q| q == *qos)
                    && e.retain.is_none_or(|x| x == *retain) =>
                {
                    Some(id.as_str())
                }
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if (ids.len() as u32) < e.count {
            return Some(format!(
                "{} message(s) matching {} (got {})",
                e.count,
                serde_json::to_string(e).unwrap_or_default(),
                ids.len()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
