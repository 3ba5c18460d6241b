//! The hosts of a simulated world and the state they share with the runner.
//!
//! - The **broker host** is a factory: each (re)start opens the store (a `FileStore` on the
//!   host's simulated disk when the scenario wants durability, else a fresh `MemoryStore`),
//!   publishes its `BrokerHandle` for kicks, and serves `broker::run` on a `SimListener`.
//! - A **client host** carries many client sessions. It takes commands from the runner over a
//!   channel (hosts are single-threaded futures; the runner is the loop around `Sim::step`).
//!   Each session is a `client::Client` whose connector wraps every connection in the session's
//!   fault layer, so faults hit one session while its host-mates carry on.
//! - Client events become trace records stamped with simulated time as the application sees
//!   them (a task per client instance reads the event channel).
//!
//! Everything shared sits behind one `Arc<Mutex<_>>`: inside one simulation only one host runs
//! at a time, so the lock is never contended and adds no nondeterminism; `Arc` rather than
//! `Rc` because the client's connector runs in `Send` tasks.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerConfig, BrokerHandle, WallClock};
use crate::client::{
    Client, ClientError, ConnectOptions, EventKind, FilePersistence, MemoryPersistence,
    Persistence as ClientPersistence, ReconnectOptions, ResubscribePolicy, WillOptions,
};
use crate::codec::{
    ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions, TopicFilter, TopicName,
};
use crate::history::{
    DisconnectCause, Event, Fault, FilterGrant, FilterRequest, Record, Trace, WillInfo,
};
use crate::scenario::{ClientSpec, FilterSpec, Persistence};
use crate::store::fs::{SharedFs, SimFs};
use crate::store::{Compaction, FileStore, FileStoreOptions, MemoryStore, Store, SyncPolicy};
use crate::transport::fault::{FaultConnector, FaultControl};
use crate::transport::sim::{SimConnector, SimListener};
use crate::transport::Connector;

use super::isolation::Isolation;

/// The port the broker listens on.
pub const BROKER_PORT: u16 = 1883;
/// Width of the connection number in a will's payload (`w-c1-7     `), fixed so the fault
/// layer can number the will in the CONNECT without changing its length.
const WILL_NUMBER_WIDTH: usize = 6;
/// Where durable state lives on the simulated disks.
const BROKER_DIR: &str = "/var/lib/simqtt";
/// The simulated wall clock at the start of every run (2026-01-01T00:00:00Z). The broker keeps
/// message and session expiry as wall-clock instants; inside the simulation its wall clock is
/// this plus the simulated time elapsed (which runs on while the broker host is down), so a
/// run is the same on any day and a restart sees the time that passed.
pub const SIM_WALL_CLOCK_START_MS: u64 = 1_767_225_600_000;
const CLIENT_DIR: &str = "/var/lib/simqtt-client";

/// One message to publish.
#[derive(Debug, Clone)]
pub struct PlannedPublish {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub payload_size: u32,
    pub empty: bool,
}

/// What the runner asks a client host to do.
pub enum HostCommand {
    /// Start a client instance (connect, or restart after a crash) with its persistence.
    /// `restart`: the application starts again after a crash and subscribes to what it had
    /// subscribed to (a new process knows no subscriptions until it makes them).
    Start {
        client: String,
        restart: bool,
    },
    Subscribe {
        client: String,
        filters: Vec<FilterSpec>,
    },
    Unsubscribe {
        client: String,
        filters: Vec<String>,
    },
    /// Publish in order, one every `interval_ms` (0: a burst).
    Publish {
        client: String,
        messages: Vec<PlannedPublish>,
        interval_ms: u64,
    },
    Disconnect {
        client: String,
    },
    /// The client's process dies: no DISCONNECT, no goodbye.
    Crash {
        client: String,
    },
    /// 5.0 re-authentication (`password`: another than the client's, for this exchange).
    Reauthenticate {
        client: String,
        password: Option<Bytes>,
    },
    /// Ask the broker's admin handle to close a client id's connection.
    Kick {
        client_id: String,
    },
    /// A raw connection's open, send or close (see `sim::raw`).
    Raw(super::raw::RawCommand),
}

/// The runner's view of one client session.
pub struct Session {
    pub spec: ClientSpec,
    pub client_id: String,
    pub host: String,
    pub index: u64,
    pub control: Arc<FaultControl>,
    /// Client instances started (connect/restart steps).
    pub instance: u32,
    /// TCP connections opened (each sends a CONNECT).
    pub connections: u32,
    pub attempt_open: bool,
    pub connected: bool,
    pub running: bool,
    pub connacks: u32,
    pub last_session_present: Option<bool>,
    pub subacks: u32,
    pub unsubacks: u32,
    /// Why the next lost connection ended, when the runner caused it.
    pub pending_cause: Option<DisconnectCause>,
    /// Messages numbered so far (ids `<client>-<n>`).
    pub next_message: u32,
    /// Messages publish commands asked for, and how many were handled (handed to the client,
    /// or skipped while down); the run is quiet only once the two are equal.
    pub publish_requested: u64,
    pub publish_handled: u64,
    /// Other commands finished (disconnect).
    pub commands_done: u64,
    /// How each re-authentication the runner asked for ended, in order.
    pub reauths: Vec<Result<(), ClientError>>,
    pub tokens: BTreeMap<u64, String>,
    pub packet_ids: BTreeMap<u16, String>,
    /// QoS 1/2 messages handed over and not yet finished, by number.
    pub unacked: BTreeMap<u32, String>,
    /// QoS 1/2 messages handed to a client instance (payload id → instance) that it has not
    /// yet taken into its in-flight state (`PublishAccepted`): if that instance dies first,
    /// the message is lost with it.
    pub handed: BTreeMap<String, u32>,
    /// Latest requested options per filter (for recording automatic resubscribes).
    pub requested: BTreeMap<String, FilterRequest>,
    /// Application SUBSCRIBEs awaiting SUBACK: token → (filters, CONNACKs seen when recorded).
    /// One answered after a later CONNACK was sent again on that connection.
    pub pending_subscribes: BTreeMap<u64, (Vec<FilterRequest>, u32)>,
}

/// State shared by the runner and the hosts.
#[derive(Default)]
pub struct Shared {
    pub trace: Trace,
    pub broker_handle: Option<BrokerHandle>,
    pub sessions: BTreeMap<String, Session>,
    pub hosts: BTreeMap<String, mpsc::UnboundedSender<HostCommand>>,
    pub broker_addr: String,
    pub seed: u64,
    /// Tests only: the bug planted in the simulated broker (`broker: {planted_bug: ...}`).
    pub planted_bug: Option<crate::broker::PlantedBug>,
    /// The broker's `max_keepalive_secs` (`broker: {max_keepalive: ...}`).
    pub max_keepalive_secs: Option<u16>,
    /// The broker's `topic_alias_maximum` (`broker: {topic_alias_maximum: ...}`); `None`: the
    /// broker's default.
    pub topic_alias_maximum: Option<u16>,
    /// When the randomised nemesis healed each fault it drew. Not every heal leaves a trace
    /// record (ending a stall or a delay does not), and the shrinker needs them all to write
    /// the drawn schedule out as explicit steps.
    pub nemesis_heals: Vec<NemesisHeal>,
    pub raw: super::raw::RawState,
    /// How the client hosts reach the broker, keep their files and tell the time.
    pub net: ClientNet,
    /// Topics this run published retained messages on (or registered retained wills for), as
    /// sent on the wire; kept only under isolation, so a real broker can be cleaned after it.
    pub retained_topics: BTreeSet<String>,
    /// Simulated broker only: bytes it wrote to each peer IP (whatever the link did with
    /// them), the evidence that a cut or lossy link from the broker met traffic.
    pub broker_sent: BTreeMap<String, u64>,
    /// Simulated TLS and WebSocket runs only: bytes each client host's sessions wrote into
    /// their TCP connections, below TLS (the fault layer above it counts only what follows
    /// the handshake).
    pub client_sent: BTreeMap<String, u64>,
    /// The simulated broker's password and ACL checks (default: everyone may do everything);
    /// a scenario with an ACL user gets `scenario::SIM_ACL`'s.
    pub broker_authenticator: Option<crate::broker::auth::Authenticator>,
    /// The simulated broker's transport (`broker: {transport: …}`) and, for TLS, its
    /// certificate, made from the seed.
    pub transport: crate::scenario::Transport,
    pub tls: Option<crate::transport::simtls::SimTls>,
    /// Handshakes (TLS and/or WebSocket) the simulated broker has begun and not ended.
    pub handshakes_pending: u64,
}

/// The nemesis healed a fault of `kind` on `target` (a client name) at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NemesisHeal {
    pub at_ms: u64,
    pub kind: crate::scenario::FaultKind,
    pub target: String,
}

/// Where the hosts' time comes from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// turmoil's simulated time (deterministic).
    #[default]
    Simulated,
    /// Real time since this instant (a run against a real broker).
    Real(tokio::time::Instant),
}

/// What the client hosts' sessions are built from. The default is the simulated world
/// (turmoil TCP, turmoil's disk, simulated time); certification swaps in real TCP to a fault
/// proxy per client host, a real directory, the real clock and per-run isolation, and runs the
/// same host code.
pub struct ClientNet {
    /// Opens every session's connections (under the session's fault layer).
    pub connector: Arc<dyn Connector>,
    /// Client persistence (`persistence: disk`) lives here, under `dir`.
    pub fs: SharedFs,
    pub dir: PathBuf,
    pub clock: Clock,
    /// The address a client host's sessions connect to, when not `Shared::broker_addr`
    /// (certification: that host's fault proxy).
    pub host_addrs: BTreeMap<String, String>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    /// The credentials of clients with `user: acl` (the profile's `[acl]` user under certify,
    /// `scenario::SIM_ACL`'s in the simulator).
    pub acl_user: Option<(String, Bytes)>,
    /// Prefixes client ids and topics so runs can share one real broker.
    pub isolation: Option<Isolation>,
    /// Simulated runs over TLS and/or WebSocket: the endpoint each session's connections are
    /// upgraded to (over simulated TCP, see `backend::UpgradingConnector`); `connector` then
    /// serves the raw connections.
    pub sim_endpoint: Option<crate::transport::url::Endpoint>,
    /// `simqtt certify-client`: the scenario client whose every instance is a client under
    /// test in another process instead of simqtt's own client.
    pub external: Option<ExternalClient>,
}

/// Starts the client under test in place of one scenario client (`ClientNet::external`).
#[derive(Clone)]
pub struct ExternalClient {
    /// The scenario client it stands for.
    pub client: String,
    pub start: Arc<dyn Fn(ExternalStart) -> ExternalStarted + Send + Sync>,
}

/// What an external client instance is started with: the options simqtt's own client would
/// get, the connector (under the session's fault layer) its connections must go through, and
/// where its persistence lives when the scenario gives it some.
pub struct ExternalStart {
    pub options: ConnectOptions,
    pub connector: Arc<dyn Connector>,
    pub persistence_dir: Option<PathBuf>,
}

pub type ExternalStarted = Result<(Client, mpsc::Receiver<crate::client::Event>), ClientError>;

impl Default for ClientNet {
    fn default() -> ClientNet {
        ClientNet {
            connector: Arc::new(SimConnector),
            fs: Arc::new(SimFs),
            dir: PathBuf::from(CLIENT_DIR),
            clock: Clock::Simulated,
            host_addrs: BTreeMap::new(),
            username: None,
            password: None,
            acl_user: None,
            isolation: None,
            sim_endpoint: None,
            external: None,
        }
    }
}

impl ClientNet {
    /// The client id sent on the wire.
    pub fn wire_client_id(&self, client_id: &str) -> String {
        match &self.isolation {
            Some(iso) => iso.client_id(client_id),
            None => client_id.to_string(),
        }
    }

    fn wire_topic(&self, topic: &str) -> String {
        match &self.isolation {
            Some(iso) => iso.topic(topic),
            None => topic.to_string(),
        }
    }

    fn wire_filter(&self, filter: &str) -> String {
        match &self.isolation {
            Some(iso) => iso.filter(filter),
            None => filter.to_string(),
        }
    }

    /// A filter as the scenario wrote it, from its wire form.
    fn scenario_filter(&self, wire: &str) -> String {
        match &self.isolation {
            Some(iso) => iso.unfilter(wire),
            None => wire.to_string(),
        }
    }
}

pub type SharedRef = Arc<Mutex<Shared>>;

pub fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Routes a command to the host of `client`.
pub fn send(shared: &SharedRef, client: &str, command: HostCommand) -> Result<(), String> {
    let s = lock(shared);
    let host = s
        .sessions
        .get(client)
        .map(|x| x.host.clone())
        .ok_or_else(|| format!("no client {client:?}"))?;
    let tx = s
        .hosts
        .get(&host)
        .ok_or_else(|| format!("client host {host:?} is not running"))?;
    tx.send(command)
        .map_err(|_| format!("client host {host:?} stopped"))
}

impl Shared {
    /// Milliseconds since the run started, as the hosts see them (simulated time inside a
    /// turmoil host).
    pub fn now_ms(&self) -> u64 {
        let elapsed = match self.net.clock {
            Clock::Simulated => turmoil::sim_elapsed().unwrap_or_default(),
            Clock::Real(start) => start.elapsed(),
        };
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Records an event at the hosts' current time.
    pub fn record_now(&mut self, host: &str, event: Event) {
        let at = self.now_ms();
        self.record(at, host, event);
    }

    pub fn record(&mut self, at_ms: u64, host: &str, event: Event) {
        // Hosts run one after another within a tick, each with its own clock reading; keep
        // the trace's times monotonic so "before" in the trace means before in time.
        let at_ms = self
            .trace
            .records
            .last()
            .map_or(at_ms, |r| r.at_ms.max(at_ms));
        self.trace.records.push(Record {
            at_ms,
            host: host.to_string(),
            event,
        });
    }

    pub fn fault(&mut self, at_ms: u64, fault: Fault) {
        self.record(at_ms, "sim", Event::Fault { fault });
    }

    /// Ends the session's connection in the trace (if open) with `cause`.
    pub fn end_connection(&mut self, client: &str, at_ms: u64, cause: DisconnectCause) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        if !session.connected {
            return;
        }
        session.connected = false;
        let cause = session.pending_cause.take().unwrap_or(cause);
        let host = session.host.clone();
        self.record(
            at_ms,
            &host,
            Event::Disconnected {
                client: client.to_string(),
                cause,
            },
        );
    }

    /// Gives up the session's unfinished QoS 1/2 messages (no persistence kept them).
    pub fn fail_unacked(&mut self, client: &str, at_ms: u64, cause: &str) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let ids: Vec<String> = std::mem::take(&mut session.unacked).into_values().collect();
        session.handed.clear();
        session.tokens.clear();
        session.packet_ids.clear();
        let host = session.host.clone();
        for id in ids {
            self.record(
                at_ms,
                &host,
                Event::PublishFailed {
                    client: client.to_string(),
                    id,
                    cause: cause.to_string(),
                },
            );
        }
    }
}

/// Registers the broker host. `durable`: a file store on the host's simulated disk that
/// syncs every write; otherwise a memory store that a crash wipes.
pub fn broker_host(sim: &mut turmoil::Sim<'_>, host: &str, shared: SharedRef, durable: bool) {
    let (seed, planted_bug, max_keepalive_secs, topic_alias_maximum) = {
        let s = lock(&shared);
        (
            s.seed,
            s.planted_bug,
            s.max_keepalive_secs,
            s.topic_alias_maximum,
        )
    };
    sim.host(host, move || {
        let shared = shared.clone();
        async move {
            let store: Box<dyn Store> = if durable {
                let options = FileStoreOptions {
                    sync: SyncPolicy::EveryWrite,
                    // As `simqtt broker` does, off the core; a task here (no OS thread).
                    compaction: Compaction::Task,
                    ..FileStoreOptions::default()
                };
                Box::new(FileStore::open_with(
                    Arc::new(SimFs),
                    Path::new(BROKER_DIR),
                    options,
                )?)
            } else {
                Box::new(MemoryStore::new())
            };
            let authenticator = lock(&shared)
                .broker_authenticator
                .clone()
                .unwrap_or_default();
            let config = BrokerConfig {
                authenticator,
                rng_seed: Some(seed),
                // $SYS publications every few seconds: cheap, and they give `$` topics for
                // the wildcard scenarios to (not) match [MQTT-4.7.2-1].
                sys_interval_secs: 5,
                planted_bug,
                max_keepalive_secs,
                topic_alias_maximum: topic_alias_maximum
                    .unwrap_or(BrokerConfig::default().topic_alias_maximum),
                wall_clock: WallClock::from_fn(|| {
                    let elapsed = turmoil::sim_elapsed().unwrap_or_default().as_millis();
                    SIM_WALL_CLOCK_START_MS
                        .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
                }),
                ..BrokerConfig::default()
            };
            let (broker, handle) = Broker::new(store, config);
            let listener = SimListener::bind(&format!("0.0.0.0:{BROKER_PORT}")).await?;
            let (transport, server_tls) = {
                let mut s = lock(&shared);
                s.broker_handle = Some(handle);
                // A crash ended every handshake the last run of the host had begun.
                s.handshakes_pending = 0;
                let at = s.now_ms();
                s.record(at, "broker", Event::BrokerStarted { durable });
                let tls = match &s.tls {
                    Some(tls) => Some(tls.server_config()?),
                    None => None,
                };
                (s.transport, tls)
            };
            // Counting below TLS and WebSocket: what a cut took is bytes on the wire.
            let listener = super::backend::CountingListener {
                inner: listener,
                shared: shared.clone(),
            };
            if transport.is_plain() {
                broker.run(listener, std::future::pending::<()>()).await?;
            } else {
                let listener = crate::transport::listen::Upgrading::over(
                    Box::new(listener),
                    server_tls,
                    transport
                        .scheme()
                        .websocket()
                        .then(|| crate::transport::ws::DEFAULT_PATH.to_string()),
                    crate::codec::DEFAULT_MAX_PACKET_SIZE as usize,
                    Some(Arc::new(Handshakes {
                        shared: shared.clone(),
                    })),
                );
                broker.run(listener, std::future::pending::<()>()).await?;
            }
            Ok(())
        }
    });
}

/// Writes the simulated broker's handshakes into the trace (begun, then completed or dropped
/// and why), so a reader sees where a fault met one, and keeps count of those in progress, so
/// a run can show that no half-done handshake is left holding the broker.
struct Handshakes {
    shared: SharedRef,
}

impl crate::transport::listen::HandshakeObserver for Handshakes {
    fn started(&self, peer: &str) {
        let mut s = lock(&self.shared);
        s.handshakes_pending += 1;
        let text = format!("broker: handshake from {peer} begun");
        s.record_now("broker", Event::Note { text });
    }

    fn finished(&self, peer: &str, outcome: Result<(), &str>) {
        let mut s = lock(&self.shared);
        s.handshakes_pending = s.handshakes_pending.saturating_sub(1);
        let text = match outcome {
            Ok(()) => format!("broker: handshake from {peer} completed"),
            Err(why) => format!("broker: handshake from {peer} dropped: {why}"),
        };
        s.record_now("broker", Event::Note { text });
    }
}

/// Host-local state of a client host.
struct HostState {
    name: String,
    shared: SharedRef,
    clients: BTreeMap<String, Client>,
    /// One publish queue per client keeps its messages in order across commands.
    publish_locks: BTreeMap<String, Rc<tokio::sync::Mutex<()>>>,
}

/// Registers a client host carrying the sessions the runner assigns to it.
pub fn client_host(sim: &mut turmoil::Sim<'_>, host: &str, shared: SharedRef) {
    let name = host.to_string();
    sim.host(host, move || {
        let shared = shared.clone();
        let name = name.clone();
        async move {
            client_host_main(name, shared).await;
            Ok(())
        }
    });
}

/// The body of a client host (a turmoil host, or a task on a real runtime's `LocalSet`):
/// registers its command channel and carries out commands until the runner goes away.
pub async fn client_host_main(name: String, shared: SharedRef) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    lock(&shared).hosts.insert(name.clone(), tx);
    let state = Rc::new(RefCell::new(HostState {
        name,
        shared,
        clients: BTreeMap::new(),
        publish_locks: BTreeMap::new(),
    }));
    while let Some(command) = rx.recv().await {
        handle(&state, command);
    }
}

fn handle(state: &Rc<RefCell<HostState>>, command: HostCommand) {
    match command {
        HostCommand::Start { client, restart } => {
            start(state, &client);
            if restart {
                let filters: Vec<FilterSpec> = {
                    let st = state.borrow();
                    let s = lock(&st.shared);
                    s.sessions
                        .get(&client)
                        .map(|x| {
                            x.requested
                                .values()
                                .map(|r| FilterSpec {
                                    filter: r.filter.clone(),
                                    qos: r.qos,
                                    no_local: r.no_local,
                                    retain_as_published: r.retain_as_published,
                                    retain_handling: r.retain_handling,
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                if !filters.is_empty() {
                    // The application subscribes once it is connected (the trace's SUBSCRIBE
                    // is what the client sends, after the CONNACK).
                    let state = state.clone();
                    tokio::task::spawn_local(async move {
                        let instance = {
                            let st = state.borrow();
                            let s = lock(&st.shared);
                            s.sessions.get(&client).map(|x| x.instance)
                        };
                        loop {
                            let (alive, connected) = {
                                let st = state.borrow();
                                let s = lock(&st.shared);
                                s.sessions.get(&client).map_or((false, false), |x| {
                                    (x.running && Some(x.instance) == instance, x.connected)
                                })
                            };
                            if !alive {
                                return;
                            }
                            if connected {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        handle(&state, HostCommand::Subscribe { client, filters });
                    });
                }
            }
        }
        HostCommand::Subscribe { client, filters } => {
            let Some(handle) = state.borrow().clients.get(&client).cloned() else {
                return;
            };
            let shared = state.borrow().shared.clone();
            let wire_filters: Vec<String> = {
                let s = lock(&shared);
                filters
                    .iter()
                    .map(|f| s.net.wire_filter(&f.filter))
                    .collect()
            };
            let mut requests = Vec::new();
            let mut wire = Vec::new();
            for (f, wire_filter) in filters.iter().zip(&wire_filters) {
                let request = FilterRequest {
                    filter: f.filter.clone(),
                    qos: f.qos,
                    no_local: f.no_local,
                    retain_as_published: f.retain_as_published,
                    retain_handling: f.retain_handling,
                };
                let Ok(filter) = TopicFilter::new(wire_filter) else {
                    continue;
                };
                wire.push((
                    filter,
                    SubscriptionOptions {
                        qos: f.qos,
                        no_local: f.no_local,
                        retain_as_published: f.retain_as_published,
                        retain_handling: match f.retain_handling {
                            1 => RetainHandling::SendIfNewSubscription,
                            2 => RetainHandling::DoNotSend,
                            _ => RetainHandling::SendAtSubscribe,
                        },
                    },
                ));
                requests.push(request);
            }
            let host = state.borrow().name.clone();
            tokio::task::spawn_local(async move {
                let connacks = {
                    let mut s = lock(&shared);
                    let connacks = match s.sessions.get_mut(&client) {
                        Some(session) => {
                            for r in &requests {
                                session.requested.insert(r.filter.clone(), r.clone());
                            }
                            session.connacks
                        }
                        None => 0,
                    };
                    s.record_now(
                        &host,
                        Event::Subscribe {
                            client: client.clone(),
                            filters: requests.clone(),
                            automatic: false,
                        },
                    );
                    connacks
                };
                if let Ok(op) = handle.start_subscribe(wire).await {
                    if let Some(session) = lock(&shared).sessions.get_mut(&client) {
                        session
                            .pending_subscribes
                            .insert(op.token, (requests, connacks));
                    }
                }
            });
        }
        HostCommand::Unsubscribe { client, filters } => {
            let Some(handle) = state.borrow().clients.get(&client).cloned() else {
                return;
            };
            let shared = state.borrow().shared.clone();
            let host = state.borrow().name.clone();
            tokio::task::spawn_local(async move {
                lock(&shared).record_now(
                    &host,
                    Event::Unsubscribe {
                        client: client.clone(),
                        filters: filters.clone(),
                    },
                );
                let wire: Vec<String> = {
                    let s = lock(&shared);
                    filters.iter().map(|f| s.net.wire_filter(f)).collect()
                };
                let refs: Vec<&str> = wire.iter().map(String::as_str).collect();
                let _ = handle.unsubscribe(&refs).await;
            });
        }
        HostCommand::Publish {
            client,
            messages,
            interval_ms,
        } => {
            let queue = state
                .borrow_mut()
                .publish_locks
                .entry(client.clone())
                .or_default()
                .clone();
            let state = state.clone();
            tokio::task::spawn_local(async move {
                let _turn = queue.lock().await;
                for (i, message) in messages.into_iter().enumerate() {
                    if i > 0 && interval_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
                    }
                    publish_one(&state, &client, message).await;
                }
            });
        }
        HostCommand::Disconnect { client } => {
            let handle = state.borrow_mut().clients.remove(&client);
            let shared = state.borrow().shared.clone();
            tokio::task::spawn_local(async move {
                if let Some(handle) = handle {
                    if let Some(s) = lock(&shared).sessions.get_mut(&client) {
                        s.pending_cause =
                            Some(DisconnectCause::ClientDisconnect { with_will: false });
                    }
                    handle.disconnect().await;
                }
                let mut s = lock(&shared);
                let at = s.now_ms();
                s.end_connection(
                    &client,
                    at,
                    DisconnectCause::ClientDisconnect { with_will: false },
                );
                let keep = s
                    .sessions
                    .get(&client)
                    .is_some_and(|x| x.spec.persistence == Persistence::Disk);
                if !keep {
                    s.fail_unacked(&client, at, "client stopped without persistence");
                }
                if let Some(session) = s.sessions.get_mut(&client) {
                    session.running = false;
                    session.attempt_open = false;
                    session.pending_cause = None;
                    session.commands_done += 1;
                }
            });
        }
        HostCommand::Reauthenticate { client, password } => {
            let handle = state.borrow().clients.get(&client).cloned();
            let shared = state.borrow().shared.clone();
            tokio::task::spawn_local(async move {
                let result = match handle {
                    Some(handle) => handle.reauthenticate_with(password).await,
                    None => Err(ClientError::NotConnected),
                };
                if let Some(session) = lock(&shared).sessions.get_mut(&client) {
                    session.reauths.push(result);
                }
            });
        }
        HostCommand::Crash { client } => {
            let handle = state.borrow_mut().clients.remove(&client);
            if let Some(handle) = handle {
                handle.kill();
            }
            let shared = state.borrow().shared.clone();
            let mut s = lock(&shared);
            let at = s.now_ms();
            s.end_connection(&client, at, DisconnectCause::ClientCrash);
            let keep = s
                .sessions
                .get(&client)
                .is_some_and(|x| x.spec.persistence == Persistence::Disk);
            if !keep {
                s.fail_unacked(&client, at, "client crashed without persistence");
            }
            if let Some(session) = s.sessions.get_mut(&client) {
                session.running = false;
                session.attempt_open = false;
                session.pending_cause = None;
                // Events the dead process had not read yet are never seen by its application.
                session.instance += 1;
                session.commands_done += 1;
            }
        }
        HostCommand::Raw(command) => {
            let (shared, host) = {
                let st = state.borrow();
                (st.shared.clone(), st.name.clone())
            };
            super::raw::handle(&shared, &host, command);
        }
        HostCommand::Kick { client_id } => {
            let shared = state.borrow().shared.clone();
            tokio::task::spawn_local(async move {
                let handle = lock(&shared).broker_handle.clone();
                if let Some(handle) = handle {
                    handle.kick(&client_id).await;
                }
            });
        }
    }
}

/// The payload id in a payload: the text before the first space.
pub fn payload_id(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

async fn publish_one(state: &Rc<RefCell<HostState>>, client: &str, message: PlannedPublish) {
    let (handle, shared, host) = {
        let st = state.borrow();
        (
            st.clients.get(client).cloned(),
            st.shared.clone(),
            st.name.clone(),
        )
    };
    let number = {
        let mut s = lock(&shared);
        let Some(session) = s.sessions.get_mut(client) else {
            return;
        };
        session.next_message += 1;
        session.next_message
    };
    let id = format!("{client}-{number}");
    let done = |shared: &SharedRef| {
        if let Some(session) = lock(shared).sessions.get_mut(client) {
            session.publish_handled += 1;
        }
    };
    let Some(handle) = handle else {
        // The client is down (crashed or disconnected): the application skips the message.
        done(&shared);
        return;
    };
    let payload = if message.empty {
        Bytes::new()
    } else {
        let mut text = id.clone().into_bytes();
        while text.len() < message.payload_size as usize {
            text.push(b' ');
        }
        Bytes::from(text)
    };
    let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let (instance, topic) = {
        let mut s = lock(&shared);
        let topic = s.net.wire_topic(&message.topic);
        if message.retain && s.net.isolation.is_some() {
            s.retained_topics.insert(topic.clone());
        }
        (s.sessions.get(client).map(|x| x.instance), topic)
    };
    let publish = handle.publish(&topic, payload, message.qos, message.retain);
    tokio::pin!(publish);
    // A full in-flight window waits for acknowledgements; if the client dies meanwhile the
    // wait would never end, so look up every so often whether this instance still lives.
    let result = loop {
        match tokio::time::timeout(Duration::from_millis(500), publish.as_mut()).await {
            Ok(result) => break result,
            Err(_) => {
                let s = lock(&shared);
                let alive = s
                    .sessions
                    .get(client)
                    .is_some_and(|x| x.running && Some(x.instance) == instance);
                if !alive {
                    break Err(ClientError::Stopped);
                }
            }
        }
    };
    match result {
        Ok(token) => {
            let mut s = lock(&shared);
            if let Some(session) = s.sessions.get_mut(client) {
                session.tokens.insert(token.token, id.clone());
                if message.qos != QoS::AtMostOnce {
                    session.unacked.insert(number, id.clone());
                    if let Some(instance) = instance {
                        session.handed.insert(id.clone(), instance);
                    }
                }
            }
            s.record_now(
                &host,
                Event::PublishSent {
                    client: client.to_string(),
                    id,
                    topic: message.topic.clone(),
                    qos: message.qos,
                    retain: message.retain,
                    payload_len,
                },
            );
        }
        Err(_) => {
            // Stopped under us (crash or disconnect): never handed over.
        }
    }
    done(&shared);
}

fn will_template(client: &str) -> String {
    format!("w-{client}-{}", "~".repeat(WILL_NUMBER_WIDTH))
}

fn will_payload(client: &str, connection: u32) -> String {
    format!("w-{client}-{connection:<WILL_NUMBER_WIDTH$}")
}

/// A session's view of the network, taken from `ClientNet` when it starts: the client id and
/// will topic as sent on the wire, and what its connections and files go through.
struct Wire {
    connector: Arc<dyn Connector>,
    fs: SharedFs,
    dir: PathBuf,
    username: Option<String>,
    password: Option<Bytes>,
    client_id: String,
    will_topic: Option<String>,
}

fn start(state: &Rc<RefCell<HostState>>, client: &str) {
    let shared = state.borrow().shared.clone();
    let host = state.borrow().name.clone();
    let (spec, client_id, control, index, instance, server, seed, wire) = {
        let mut s = lock(&shared);
        let server = s
            .net
            .host_addrs
            .get(&host)
            .unwrap_or(&s.broker_addr)
            .clone();
        let seed = s.seed;
        let connector = match &s.net.sim_endpoint {
            Some(endpoint) => Arc::new(super::backend::UpgradingConnector {
                endpoint: endpoint.clone(),
                shared: shared.clone(),
                host: host.clone(),
            }) as Arc<dyn Connector>,
            None => s.net.connector.clone(),
        };
        let wire = Wire {
            connector,
            fs: s.net.fs.clone(),
            dir: s.net.dir.clone(),
            username: s.net.username.clone(),
            password: s.net.password.clone(),
            client_id: String::new(),
            will_topic: None,
        };
        let acl_user = s.net.acl_user.clone();
        let Some(session) = s.sessions.get_mut(client) else {
            return;
        };
        // A client with `user: acl` connects as the ACL user instead.
        let wire = match (session.spec.user, acl_user) {
            (Some(crate::scenario::ClientUser::Acl), Some((username, password))) => Wire {
                username: Some(username),
                password: Some(password),
                ..wire
            },
            _ => wire,
        };
        session.instance += 1;
        session.running = true;
        // Tokens are not cleared: a restarted client's tokens are new, and the dead one's
        // late wire events still need theirs (`wire_id`).
        let spec = session.spec.clone();
        let client_id = session.client_id.clone();
        let (control, index, instance) = (session.control.clone(), session.index, session.instance);
        let wire = Wire {
            client_id: s.net.wire_client_id(&client_id),
            will_topic: spec.will.as_ref().map(|w| s.net.wire_topic(&w.topic)),
            ..wire
        };
        if let (Some(topic), Some(true)) = (&wire.will_topic, spec.will.as_ref().map(|w| w.retain))
        {
            if s.net.isolation.is_some() {
                s.retained_topics.insert(topic.clone());
            }
        }
        (
            spec, client_id, control, index, instance, server, seed, wire,
        )
    };
    let protocol = spec.protocol;
    let keep_alive_secs = u16::try_from(spec.keepalive.millis / 1000).unwrap_or(u16::MAX);
    let mut options = ConnectOptions::new(server, wire.client_id.clone());
    options.username = wire.username.clone();
    options.password = wire.password.clone();
    options.protocol = protocol;
    options.enhanced_auth = spec.auth.map(|_| crate::client::EnhancedAuth {
        nonce_seed: seed ^ index.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ u64::from(instance),
    });
    options.clean_session = spec.clean_session;
    options.keep_alive_secs = keep_alive_secs;
    options.connect_timeout = Duration::from_secs(5);
    options.reconnect = spec.reconnect.then(|| ReconnectOptions {
        min_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        seed: seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(instance),
        max_attempts: None,
    });
    options.resubscribe = if spec.resubscribe {
        ResubscribePolicy::WhenSessionNotPresent
    } else {
        ResubscribePolicy::Never
    };
    // The scenario's absent expiry means 0, as on the wire (the client's own default for a
    // persistent 5.0 session would be "never").
    options.session_expiry_interval_secs = Some(
        spec.session_expiry
            .map_or(0, |d| u32::try_from(d.millis / 1000).unwrap_or(u32::MAX)),
    );
    let will_info = spec.will.as_ref().map(|w| WillInfo {
        id: String::new(),
        topic: w.topic.clone(),
        qos: w.qos,
        retain: w.retain,
        delay_secs: w
            .delay
            .map(|d| u32::try_from(d.millis / 1000).unwrap_or(u32::MAX)),
    });
    let will_empty = spec.will.as_ref().is_some_and(|w| w.empty);
    if let Some(w) = &spec.will {
        let will_topic = wire.will_topic.as_deref().unwrap_or(&w.topic);
        if let Ok(topic) = TopicName::new(will_topic) {
            options.will = Some(WillOptions {
                topic,
                payload: if w.empty {
                    Bytes::new()
                } else {
                    Bytes::from(will_template(client))
                },
                qos: w.qos,
                retain: w.retain,
                properties: crate::codec::WillProperties {
                    will_delay_interval_secs: w
                        .delay
                        .map(|d| u32::try_from(d.millis / 1000).unwrap_or(u32::MAX)),
                    ..Default::default()
                },
            });
        }
    }
    let attempt_template = Event::ConnectAttempt {
        client: client.to_string(),
        client_id: client_id.clone(),
        protocol,
        clean_start: spec.clean_session,
        keep_alive_secs,
        session_expiry_secs: match protocol {
            ProtocolVersion::V5 => options.session_expiry_interval_secs.filter(|&s| s > 0),
            ProtocolVersion::V311 => None,
        },
        will: will_info,
        resubscribe: spec.resubscribe,
    };
    let on_connect = {
        let shared = shared.clone();
        let client = client.to_string();
        let host = host.clone();
        move |result: Result<(), String>| -> Option<(Vec<u8>, Vec<u8>)> {
            let mut s = lock(&shared);
            let session = s.sessions.get_mut(&client)?;
            if session.instance != instance {
                return None;
            }
            if let Err(error) = result {
                // Over TLS or WebSocket the attempt may fail in its handshake: the trace
                // shows where faults met it (plain TCP traces stay as they were).
                if !s.transport.is_plain() {
                    let text = format!("{client}: connection attempt failed: {error}");
                    s.record_now(&host, Event::Note { text });
                }
                return None;
            }
            session.connections += 1;
            session.attempt_open = true;
            let number = session.connections;
            let mut event = attempt_template.clone();
            if let Event::ConnectAttempt {
                will: Some(will), ..
            } = &mut event
            {
                if !will_empty {
                    will.id = format!("w-{client}-{number}");
                }
            }
            s.record_now(&host, event);
            (!will_empty).then(|| {
                (
                    will_template(&client).into_bytes(),
                    will_payload(&client, number).into_bytes(),
                )
            })
        }
    };
    let connector = Arc::new(FaultConnector {
        inner: wire.connector.clone(),
        control,
        on_connect: Box::new(on_connect),
    });
    let persistence: Box<dyn ClientPersistence> = match spec.persistence {
        Persistence::Disk => Box::new(FilePersistence::new(
            wire.fs.clone(),
            &wire.dir,
            &wire.client_id,
        )),
        Persistence::None => Box::new(MemoryPersistence::new()),
    };
    let external = lock(&shared)
        .net
        .external
        .clone()
        .filter(|e| e.client == client);
    let started = match external {
        Some(external) => (external.start)(ExternalStart {
            options,
            connector,
            persistence_dir: (spec.persistence == Persistence::Disk)
                .then(|| wire.dir.join(&wire.client_id)),
        }),
        None => Client::start(options, connector, persistence),
    };
    let (handle, mut events) = match started {
        Ok(pair) => pair,
        Err(error) => {
            let mut s = lock(&shared);
            s.record_now(
                &host,
                Event::Note {
                    text: format!("client {client} could not start: {error}"),
                },
            );
            if let Some(session) = s.sessions.get_mut(client) {
                session.running = false;
            }
            return;
        }
    };
    state
        .borrow_mut()
        .clients
        .insert(client.to_string(), handle);
    let client = client.to_string();
    tokio::task::spawn_local(async move {
        while let Some(event) = events.recv().await {
            let mut s = lock(&shared);
            if s.sessions.get(&client).map(|x| x.instance) == Some(instance) {
                record_event(&mut s, &client, &host, event.kind);
            } else if matches!(
                event.kind,
                EventKind::PublishSent { .. }
                    | EventKind::ReleaseSent { .. }
                    | EventKind::PublishAccepted { .. }
            ) {
                // A crashed process's application never sees these events, but its wire
                // writes and its persistence happened (or were about to): the checkers reason
                // about what reached the broker, so the trace keeps them.
                record_event(&mut s, &client, &host, event.kind);
            }
        }
        // The instance is gone and every event it sent has been read: what it was handed and
        // never took in is lost with it.
        lose_unaccepted(&mut lock(&shared), &client, &host, instance);
    });
}

fn reason_hex(code: ReasonCode) -> String {
    format!("0x{:02X}", code.as_u8())
}

fn cause_of(error: &ClientError) -> DisconnectCause {
    match error {
        ClientError::KeepaliveTimeout => DisconnectCause::KeepaliveTimeout,
        ClientError::ServerDisconnected(code) => DisconnectCause::ServerDisconnect {
            reason: reason_hex(*code),
        },
        other => DisconnectCause::NetworkError {
            detail: other.to_string(),
        },
    }
}

fn record_event(s: &mut Shared, client: &str, host: &str, kind: EventKind) {
    let at = s.now_ms();
    let c = client.to_string();
    match kind {
        EventKind::ConnectComplete {
            session_present, ..
        } => {
            let client_id = {
                let Some(session) = s.sessions.get_mut(client) else {
                    return;
                };
                session.attempt_open = false;
                session.connected = true;
                session.connacks += 1;
                session.last_session_present = Some(session_present);
                session.pending_cause = None;
                session.client_id.clone()
            };
            // Another connected session with this client id is being taken over.
            for (name, other) in s.sessions.iter_mut() {
                if name != client && other.client_id == client_id && other.connected {
                    other.pending_cause = Some(DisconnectCause::Takeover);
                }
            }
            s.record(
                at,
                host,
                Event::ConnAck {
                    client: c,
                    session_present,
                    reason: "0x00".into(),
                },
            );
        }
        EventKind::ConnectFailed { cause } => {
            let open = s
                .sessions
                .get_mut(client)
                .map(|x| std::mem::replace(&mut x.attempt_open, false))
                .unwrap_or(false);
            if !open {
                return;
            }
            let event = match cause {
                ClientError::Refused { code, .. } => Event::ConnAck {
                    client: c,
                    session_present: false,
                    reason: reason_hex(code),
                },
                other => Event::ConnectFailed {
                    client: c,
                    error: other.to_string(),
                },
            };
            s.record(at, host, event);
        }
        EventKind::ConnectionLost { cause } => {
            s.end_connection(client, at, cause_of(&cause));
        }
        EventKind::ReconnectScheduled { .. } => {}
        EventKind::MessageArrived(m) => {
            let topic = match &s.net.isolation {
                // Another run's traffic (or a leftover) reaching a wildcard-first filter:
                // not part of this run, so not in its trace.
                Some(iso) => match iso.delivered(m.topic.as_str()) {
                    Some(topic) => topic,
                    None => return,
                },
                None => m.topic.to_string(),
            };
            let id = payload_id(&m.payload);
            s.record(
                at,
                host,
                Event::Delivered {
                    client: c,
                    id,
                    topic,
                    qos: m.qos,
                    retain: m.retain,
                    dup: m.dup,
                    payload_len: u32::try_from(m.payload.len()).unwrap_or(u32::MAX),
                },
            );
        }
        EventKind::PublishSent {
            token,
            packet_id,
            dup,
            ..
        } => {
            let Some(id) = wire_id(s, client, token, packet_id.map(|p| p.get())) else {
                return;
            };
            if let (Some(session), Some(pid)) = (s.sessions.get_mut(client), packet_id) {
                session.packet_ids.insert(pid.get(), id.clone());
            }
            s.record(
                at,
                host,
                Event::PublishTransmitted {
                    client: c,
                    id,
                    dup,
                    packet_id: packet_id.map(|p| p.get()),
                },
            );
        }
        EventKind::PublishAccepted { token, packet_id } => {
            let Some(id) = wire_id(s, client, token, Some(packet_id.get())) else {
                return;
            };
            if let Some(session) = s.sessions.get_mut(client) {
                session.handed.remove(&id);
                session.packet_ids.insert(packet_id.get(), id);
            }
        }
        EventKind::ReleaseSent { token, packet_id } => {
            let Some(id) = wire_id(s, client, token, Some(packet_id.get())) else {
                return;
            };
            s.record(
                at,
                host,
                Event::ReleaseTransmitted {
                    client: c,
                    id,
                    packet_id: packet_id.get(),
                },
            );
        }
        EventKind::DeliveryComplete {
            token,
            packet_id,
            qos,
        } => {
            if qos == QoS::AtMostOnce {
                if let Some(session) = s.sessions.get_mut(client) {
                    session.tokens.remove(&token);
                }
                return;
            }
            let Some(id) = finish(s, client, token, packet_id.map(|p| p.get())) else {
                return;
            };
            s.record(
                at,
                host,
                Event::PublishAcked {
                    client: c,
                    id,
                    accepted: true,
                    reason: "0x00".into(),
                },
            );
        }
        EventKind::DeliveryFailed {
            token,
            packet_id,
            cause,
        } => {
            let Some(id) = finish(s, client, token, packet_id.map(|p| p.get())) else {
                return;
            };
            let event = match cause {
                ClientError::Rejected(code) => Event::PublishAcked {
                    client: c,
                    id,
                    accepted: false,
                    reason: reason_hex(code),
                },
                other => Event::PublishFailed {
                    client: c,
                    id,
                    cause: other.to_string(),
                },
            };
            s.record(at, host, event);
        }
        EventKind::SubscribeComplete {
            token,
            filters,
            granted,
            resubscribe,
            ..
        } => {
            let filters: Vec<String> = filters
                .iter()
                .map(|f| s.net.scenario_filter(f.as_str()))
                .collect();
            let resent = s.sessions.get_mut(client).and_then(|session| {
                let (requests, connacks) = session.pending_subscribes.remove(&token)?;
                (connacks != session.connacks).then_some(requests)
            });
            if let Some(requests) = resent {
                // Recorded while an earlier connection (or none) was up; the client sent it
                // again after the latest CONNACK.
                s.record(
                    at,
                    host,
                    Event::Subscribe {
                        client: c.clone(),
                        filters: requests,
                        automatic: false,
                    },
                );
            }
            if resubscribe {
                let requests: Vec<FilterRequest> = {
                    let session = s.sessions.get(client);
                    filters
                        .iter()
                        .zip(&granted)
                        .map(|(f, g)| {
                            session
                                .and_then(|x| x.requested.get(f.as_str()).cloned())
                                .unwrap_or(FilterRequest {
                                    filter: f.to_string(),
                                    qos: QoS::from_u8(g.as_u8()).unwrap_or_default(),
                                    no_local: false,
                                    retain_as_published: false,
                                    retain_handling: 0,
                                })
                        })
                        .collect()
                };
                s.record(
                    at,
                    host,
                    Event::Subscribe {
                        client: c.clone(),
                        filters: requests,
                        automatic: true,
                    },
                );
            }
            let results = filters
                .iter()
                .zip(&granted)
                .map(|(f, g)| FilterGrant {
                    filter: f.to_string(),
                    granted: if g.is_error() {
                        None
                    } else {
                        QoS::from_u8(g.as_u8())
                    },
                })
                .collect();
            if let Some(session) = s.sessions.get_mut(client) {
                session.subacks += 1;
            }
            s.record(at, host, Event::SubAck { client: c, results });
        }
        EventKind::UnsubscribeComplete { filters, .. } => {
            let filters: Vec<String> = filters
                .iter()
                .map(|f| s.net.scenario_filter(f.as_str()))
                .collect();
            if let Some(session) = s.sessions.get_mut(client) {
                session.unsubacks += 1;
                for f in &filters {
                    session.requested.remove(f.as_str());
                }
            }
            s.record(
                at,
                host,
                Event::UnsubAck {
                    client: c,
                    filters: filters.iter().map(|f| f.to_string()).collect(),
                },
            );
        }
        EventKind::PersistenceWarning { message } => {
            s.record(
                at,
                host,
                Event::Note {
                    text: format!("{client}: persistence: {message}"),
                },
            );
        }
        EventKind::Stopped { cause } => {
            let lost = cause
                .as_ref()
                .map(cause_of)
                .unwrap_or(DisconnectCause::ClientDisconnect { with_will: false });
            s.end_connection(client, at, lost);
            if let Some(session) = s.sessions.get_mut(client) {
                session.running = false;
            }
        }
    }
}

/// Fails the messages a client instance was handed and never took into its in-flight state
/// (it crashed, or stopped, with them still in its request queue): no persistence has them.
fn lose_unaccepted(s: &mut Shared, client: &str, host: &str, instance: u32) {
    let Some(session) = s.sessions.get_mut(client) else {
        return;
    };
    let lost: Vec<String> = session
        .handed
        .iter()
        .filter(|(_, &i)| i == instance)
        .map(|(id, _)| id.clone())
        .collect();
    let mut failed = Vec::new();
    for id in lost {
        session.handed.remove(&id);
        let number = session
            .unacked
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| *k);
        if let Some(n) = number {
            session.unacked.remove(&n);
            failed.push(id);
        }
    }
    let at = s.now_ms();
    for id in failed {
        s.record(
            at,
            host,
            Event::PublishFailed {
                client: client.to_string(),
                id,
                cause: "lost: the client stopped before it took the message in".into(),
            },
        );
    }
}

/// The payload id of a message the client writes: by the token `publish` returned, or by
/// packet id for a flow restored from persistence after a restart (its token is the client's
/// own).
fn wire_id(s: &Shared, client: &str, token: u64, packet_id: Option<u16>) -> Option<String> {
    let session = s.sessions.get(client)?;
    session
        .tokens
        .get(&token)
        .or_else(|| packet_id.and_then(|p| session.packet_ids.get(&p)))
        .cloned()
}

/// Finds and forgets the payload id of a finished QoS 1/2 flow.
fn finish(s: &mut Shared, client: &str, token: u64, packet_id: Option<u16>) -> Option<String> {
    let session = s.sessions.get_mut(client)?;
    let id = session
        .tokens
        .remove(&token)
        .or_else(|| packet_id.and_then(|p| session.packet_ids.get(&p).cloned()))?;
    if let Some(p) = packet_id {
        session.packet_ids.remove(&p);
    }
    let number = session
        .unacked
        .iter()
        .find(|(_, v)| **v == id)
        .map(|(k, _)| *k);
    match number {
        Some(n) => {
            session.unacked.remove(&n);
            Some(id)
        }
        // Already finished (or given up): not a second completion.
        None => None,
    }
}

/// Clients known to the runner, ordered (BTreeSet) for deterministic iteration.
pub fn connected_clients(s: &Shared) -> BTreeSet<String> {
    s.sessions
        .iter()
        .filter(|(_, x)| x.connected)
        .map(|(k, _)| k.clone())
        .collect()
}
