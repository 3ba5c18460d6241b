//! The real-TCP backend of the scenario step executor: the broker under test at a socket
//! address, one fault proxy per client host in front of it, a restart command for crashes.
//!
//! It lives in `certify`, not in `sim`, because it is the one place of the executor that
//! touches real sockets, real processes and the wall clock; `sim` stays deterministic and
//! only defines the `Backend` seam this implements.
//!
//! Time: a tokio current-thread runtime with a `LocalSet` that runs only inside [`Tcp::step`]
//! (one short real tick), so the executor's loop (`run_until`, `run_for`) is the same as over
//! turmoil; the trace's `at_ms` is real milliseconds since the run started.
//!
//! Faults, mapped onto what TCP can show:
//! - partition (both ways / one way) → the client host's proxy blackholes that way;
//! - loss → the proxy stalls (through TCP, loss is retransmission: bytes stop, then resume);
//! - latency → the proxy's latency and jitter;
//! - per-connection faults (reset, stall, delay, drop, duplicate) → the session's own fault
//!   layer, which wraps every connection whatever the connector;
//! - broker crash → every proxy resets its connections and holds new ones, the restart
//!   command runs (`sh -c`), the port is awaited; the broker's restart releases the held
//!   connections. Confirmed by a connection held directly to the broker from before the
//!   command, which the broker must have dropped (it went down), and a new connection answered
//!   with a CONNACK after it (it came back). A power loss cannot be injected from outside
//!   (refused; certify skips such scenarios with that reason);
//! - kick → a session takeover: a throwaway connection with the session's client id, the same
//!   clean-session/expiry and Keep Alive, closed once it has its CONNACK without acknowledging
//!   anything, so what the broker sends it is redelivered to the real client, which reconnects
//!   by itself. The step executor confirms it by the old connection's end: a broker that does
//!   not close it makes the case inconclusive.
//!
//! A partition is confirmed by the bytes the proxy discarded, a loss (a stall) by the bytes it
//! found waiting ([`Backend::link_count`]); the certify runner's liveness guard reaches in
//! through [`Watch`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::task::LocalSet;
use tokio::time::Instant;

use crate::codec::{Connect, ConnectProperties, MqttStr, Packet, ProtocolVersion};
use crate::history::Event;
use crate::sim::backend::LinkCount;
use crate::sim::world::{self, lock, Clock, SharedRef};
use crate::sim::{Backend, Confirmation};
use crate::transport::proxy::{Blackhole, FaultProxy};
use crate::transport::url::Endpoint;
use crate::transport::Connector;
use crate::transport::{FramedRead, FramedWrite};

/// One step of real time. Short enough that `expect` steps see a delivery promptly, long
/// enough that stepping costs nothing next to the I/O it waits for.
pub const TICK: Duration = Duration::from_millis(5);
/// Longest the restart command may run.
pub const RESTART_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest to wait for the broker's port to accept again after the restart command.
pub const RESTART_PORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a takeover connection's CONNECT → CONNACK.
const KICK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the connection held across a restart command may take to see its end.
const DOWN_CONFIRM_WAIT: Duration = Duration::from_secs(2);

/// How the broker under test is restarted.
#[derive(Debug, Clone)]
pub struct Restart {
    /// Run with `sh -c`; it must stop the broker and start it again (and may return before the
    /// port accepts: that is awaited).
    pub command: String,
}

/// The broker under test and what the backend needs to reach it.
#[derive(Clone)]
pub struct Target {
    pub broker: SocketAddr,
    /// TLS and WebSocket over each connection (to the broker or through a fault proxy,
    /// which forwards the encrypted bytes: its faults apply below TLS).
    pub endpoint: Endpoint,
    pub restart: Option<Restart>,
    /// `BrokerStarted { durable }` in the trace: the profile claims persistence and the
    /// scenario wants a durable broker.
    pub durable: bool,
    /// What the certify runner's liveness guard asks of the run.
    pub watch: Watch,
}

/// A yes/no question the runner asks between ticks or steps.
pub type Ask = Arc<dyn Fn() -> bool + Send + Sync>;
/// A check that says what went wrong.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The liveness guard's hooks into one run (all optional).
#[derive(Clone, Default)]
pub struct Watch {
    /// True once the broker stopped answering well since the run began: the run stops at its
    /// next tick (it will be rerun).
    pub stop: Option<Ask>,
    /// Asked after each explicit step: does the broker still answer well? An `Err` ends the
    /// run and is recorded in `broke` with the step and its trace records.
    pub after_step: Option<Check>,
    pub broke: Arc<std::sync::Mutex<Option<Broke>>>,
    /// Told `true` before a restart command runs and `false` once the broker is back, so a
    /// deliberate restart is no incident.
    pub restarting: Option<Arc<dyn Fn(bool) + Send + Sync>>,
}

/// The broker stopped answering well right after an explicit step.
#[derive(Debug, Clone)]
pub struct Broke {
    /// The step (0-based).
    pub step: usize,
    /// What the check found.
    pub health: String,
    /// The trace records the step made (`from..to`).
    pub from: usize,
    pub to: usize,
}

/// The real-TCP world of one run.
pub struct Tcp {
    // Field order is drop order: the proxies and hosts go before the runtime under them.
    proxies: BTreeMap<String, FaultProxy>,
    local: LocalSet,
    runtime: Runtime,
    shared: SharedRef,
    target: Target,
    start: Instant,
    /// Between `crash_broker` and `restart_broker`: every proxy holds its connections.
    down: bool,
    /// Client hosts whose link has a loss (stall) on.
    lossy: BTreeMap<String, bool>,
    /// Trace length after the latest explicit step (where the next step's records begin).
    step_mark: usize,
    /// Whether the broker answered a new connection after the latest restart command.
    restarted: Confirmation,
}

impl Tcp {
    /// A world for one run; `shared.net` is set to real TCP, the real clock and `net`'s other
    /// fields (isolation, credentials, persistence directory) as the caller filled them.
    pub fn new(shared: SharedRef, target: Target) -> std::io::Result<Tcp> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let start = Instant::now();
        {
            let mut s = lock(&shared);
            s.net.clock = Clock::Real(start);
            s.net.connector = target
                .endpoint
                .connector()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            s.broker_addr = target.broker.to_string();
        }
        Ok(Tcp {
            proxies: BTreeMap::new(),
            local: LocalSet::new(),
            runtime,
            shared,
            target,
            start,
            down: false,
            lossy: BTreeMap::new(),
            step_mark: 0,
            restarted: Ok(()),
        })
    }

    /// How the backend's own connections reach the broker (with the run's credentials).
    fn reach(&self, what: &str) -> crate::certify::liveness::Reach {
        let s = lock(&self.shared);
        crate::certify::liveness::Reach {
            broker: self.target.broker,
            username: s.net.username.clone(),
            password: s.net.password.clone(),
            id_prefix: s.net.wire_client_id(what),
        }
    }

    /// Runs `future` on this world's runtime (inside its `LocalSet`).
    pub fn block_on<F: std::future::Future>(&mut self, future: F) -> F::Output {
        self.runtime.block_on(self.local.run_until(future))
    }

    /// The client host's proxy on the link `a`–`b`, when one end is the broker, with whether
    /// `a` is the client side.
    fn link(&self, a: &str, b: &str) -> Option<(&FaultProxy, bool)> {
        if let Some(p) = self.proxies.get(a) {
            if !self.proxies.contains_key(b) {
                return Some((p, true));
            }
        }
        if let Some(p) = self.proxies.get(b) {
            if !self.proxies.contains_key(a) {
                return Some((p, false));
            }
        }
        // Two client hosts exchange nothing in MQTT: nothing to cut.
        None
    }

    fn host_of_link(&self, a: &str, b: &str) -> Option<String> {
        if self.proxies.contains_key(a) && !self.proxies.contains_key(b) {
            Some(a.to_string())
        } else if self.proxies.contains_key(b) && !self.proxies.contains_key(a) {
            Some(b.to_string())
        } else {
            None
        }
    }

    /// Puts a proxy's stall as the link's loss and the broker's state want it.
    fn apply_stall(&self, host: &str) {
        if let Some(p) = self.proxies.get(host) {
            let control = p.control();
            if self.down || self.lossy.get(host).copied().unwrap_or(false) {
                control.stall();
            } else {
                control.unstall();
            }
        }
    }

    fn note(&self, text: String) {
        let mut s = lock(&self.shared);
        let at = s.now_ms();
        s.record(at, "sim", Event::Note { text });
    }

    fn run_restart_command(&mut self) -> Result<(), String> {
        let Some(restart) = self.target.restart.clone() else {
            return Err("the broker cannot be restarted: no --restart-cmd was given".into());
        };
        run_restart(&restart.command, self.target.broker)
    }
}

/// Runs the restart command (`sh -c`, the world stopped meanwhile: a restart is a pause for
/// every client) and waits for the broker's port.
pub fn run_restart(command: &str, broker: SocketAddr) -> Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("restart command {command:?}: {e}"))?;
    let deadline = StdInstant::now() + RESTART_COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if StdInstant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "restart command {command:?} still running after {}s",
                    RESTART_COMMAND_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("restart command {command:?}: {e}")),
        }
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            use std::io::Read;
            let _ = err.read_to_string(&mut stderr);
        }
        return Err(format!(
            "restart command {command:?} failed ({status}): {}",
            stderr.trim()
        ));
    }
    wait_for_port(broker, RESTART_PORT_TIMEOUT)
}

/// Waits until `addr` accepts a TCP connection.
pub fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = StdInstant::now() + within;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if StdInstant::now() >= deadline {
            return Err(format!(
                "the broker at {addr} did not accept connections within {}s of its restart",
                within.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Backend for Tcp {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn real_time(&self) -> bool {
        true
    }

    fn step(&mut self) -> Result<(), String> {
        if self.target.watch.stop.as_ref().is_some_and(|stop| stop()) {
            return Err(
                "the broker stopped answering well while the case ran (the case is rerun)".into(),
            );
        }
        // The timer is made inside the runtime (it needs its time driver).
        self.block_on(async { tokio::time::sleep(TICK).await });
        Ok(())
    }

    fn after_step(&mut self, index: usize) -> Result<(), String> {
        let from = self.step_mark;
        self.step_mark = lock(&self.shared).trace.len();
        let Some(check) = self.target.watch.after_step.clone() else {
            return Ok(());
        };
        // Let what the step wrote reach the broker (and the broker choke on it) first.
        for _ in 0..4 {
            self.block_on(async { tokio::time::sleep(TICK).await });
        }
        match check() {
            Ok(()) => Ok(()),
            Err(health) => {
                let to = lock(&self.shared).trace.len();
                *self
                    .target
                    .watch
                    .broke
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Broke {
                    step: index,
                    health: health.clone(),
                    from,
                    to,
                });
                Err(format!(
                    "the broker stopped answering well after step {}: {health}",
                    index + 1
                ))
            }
        }
    }

    fn link_count(&mut self, host: &str) -> LinkCount {
        let control = self.proxies.get(host).map(|p| p.control());
        LinkCount {
            discarded: control.as_ref().map(|c| c.discarded_bytes()),
            from_broker: None,
            held: control.as_ref().map(|c| c.held_bytes()),
        }
    }

    fn build(&mut self, client_hosts: &[String], durable: bool) -> Result<(), String> {
        let _ = durable;
        let broker = self.target.broker;
        for host in client_hosts {
            let proxy = self
                .block_on(FaultProxy::start(broker))
                .map_err(|e| format!("fault proxy for {host}: {e}"))?;
            lock(&self.shared)
                .net
                .host_addrs
                .insert(host.clone(), proxy.addr().to_string());
            self.proxies.insert(host.clone(), proxy);
            self.local
                .spawn_local(world::client_host_main(host.clone(), self.shared.clone()));
        }
        lock(&self.shared).record_now(
            "broker",
            Event::BrokerStarted {
                durable: self.target.durable,
            },
        );
        Ok(())
    }

    fn partition(&mut self, a: &str, b: &str, one_way: bool) {
        match self.link(a, b) {
            Some((proxy, a_is_client)) => {
                proxy.control().blackhole(match (one_way, a_is_client) {
                    (false, _) => Blackhole::Both,
                    (true, true) => Blackhole::ClientToBroker,
                    (true, false) => Blackhole::BrokerToClient,
                })
            }
            None => self.note(format!(
                "partition {a} - {b}: not between a client host and the broker, nothing to cut over TCP"
            )),
        }
    }

    fn repair(&mut self, a: &str, b: &str) {
        let Some(host) = self.host_of_link(a, b) else {
            return;
        };
        if let Some(p) = self.proxies.get(&host) {
            // The proxy heals everything at once; put back what is not a partition.
            let control = p.control();
            let before = control.faults();
            control.heal();
            if !before.latency.is_zero() || !before.jitter.is_zero() {
                control.set_latency(before.latency, before.jitter);
            }
        }
        self.apply_stall(&host);
    }

    fn loss(&mut self, a: &str, b: &str, rate: f64) {
        let Some(host) = self.host_of_link(a, b) else {
            return;
        };
        self.lossy.insert(host.clone(), rate > 0.0);
        self.apply_stall(&host);
    }

    fn latency(&mut self, a: &str, b: &str, latency: Duration, jitter: Duration) {
        if let Some((proxy, _)) = self.link(a, b) {
            proxy.control().set_latency(latency, jitter);
        }
    }

    fn reset_latency(&mut self, a: &str, b: &str) {
        // Loopback's own latency is the default: none added.
        if let Some((proxy, _)) = self.link(a, b) {
            proxy.control().set_latency(Duration::ZERO, Duration::ZERO);
        }
    }

    fn heal_links(&mut self) {
        let hosts: Vec<String> = self.proxies.keys().cloned().collect();
        for host in hosts {
            self.lossy.insert(host.clone(), false);
            if let Some(p) = self.proxies.get(&host) {
                let control = p.control();
                let before = control.faults();
                control.heal();
                if !before.latency.is_zero() || !before.jitter.is_zero() {
                    control.set_latency(before.latency, before.jitter);
                }
            }
            self.apply_stall(&host);
        }
    }

    fn crash_broker(&mut self, power_loss: bool) -> Result<Confirmation, String> {
        if power_loss {
            return Err(
                "a power loss cannot be injected into a real broker from outside (only into the simulated one)"
                    .into(),
            );
        }
        // A connection of our own, straight to the broker: the restart must end it.
        let reach = self.reach("restart");
        let held =
            self.block_on(async { crate::certify::liveness::hold(&reach, &reach.id_prefix).await });
        // The peers see their connections die at once (as with a process crash), and new
        // connections wait at the proxies until the broker is back.
        self.down = true;
        let hosts: Vec<String> = self.proxies.keys().cloned().collect();
        for host in &hosts {
            if let Some(p) = self.proxies.get(host) {
                p.control().reset();
            }
            self.apply_stall(host);
        }
        // Let the resets reach the clients before the world pauses for the restart.
        self.block_on(async { tokio::time::sleep(TICK).await });
        if let Some(restarting) = &self.target.watch.restarting {
            restarting(true);
        }
        let command = self.run_restart_command();
        let went_down = match held {
            Err(e) => Err(format!(
                "no connection could be held to the broker before the restart command: {e}"
            )),
            Ok(mut held) => {
                if self.block_on(held.closed_within(DOWN_CONFIRM_WAIT)) {
                    Ok(())
                } else {
                    Err("a connection held to the broker before the restart command was still open after it: the broker did not go down".into())
                }
            }
        };
        self.restarted = match &command {
            Ok(()) => {
                let id = format!("{}-back", reach.id_prefix);
                self.block_on(async { crate::certify::liveness::answers(&reach, &id).await })
                    .map_err(|e| {
                        format!("after the restart command the broker does not answer: {e}")
                    })
            }
            Err(e) => Err(e.clone()),
        };
        if let Some(restarting) = &self.target.watch.restarting {
            restarting(false);
        }
        command?;
        Ok(went_down)
    }

    fn restart_broker(&mut self) -> Result<Confirmation, String> {
        self.down = false;
        let hosts: Vec<String> = self.proxies.keys().cloned().collect();
        for host in &hosts {
            self.apply_stall(host);
        }
        lock(&self.shared).record_now(
            "broker",
            Event::BrokerStarted {
                durable: self.target.durable,
            },
        );
        Ok(self.restarted.clone())
    }

    fn kick(&mut self, client: &str, client_id: &str) -> Result<(), String> {
        let connect = {
            let s = lock(&self.shared);
            let spec = &s
                .sessions
                .get(client)
                .ok_or_else(|| format!("no client {client:?}"))?
                .spec;
            let wire_id = s.net.wire_client_id(client_id);
            let expiry = match spec.protocol {
                ProtocolVersion::V5 => spec
                    .session_expiry
                    .map(|d| u32::try_from(d.millis / 1000).unwrap_or(u32::MAX))
                    .filter(|&secs| secs > 0),
                ProtocolVersion::V311 => None,
            };
            Connect {
                protocol: spec.protocol,
                clean_start: spec.clean_session,
                // The client's own: some brokers refuse Keep Alive 0, and the kick is not
                // about keepalive.
                keep_alive_secs: u16::try_from(spec.keepalive.millis / 1000).unwrap_or(u16::MAX),
                properties: ConnectProperties {
                    session_expiry_interval_secs: expiry,
                    ..ConnectProperties::default()
                },
                client_id: MqttStr::new(&wire_id).map_err(|e| format!("client id: {e}"))?,
                will: None,
                username: match &s.net.username {
                    Some(u) => Some(MqttStr::new(u).map_err(|e| format!("username: {e}"))?),
                    None => None,
                },
                password: s.net.password.clone(),
            }
        };
        let broker = self.target.broker;
        let shared = self.shared.clone();
        let connector = lock(&self.shared).net.connector.clone();
        self.local.spawn_local(async move {
            if let Err(e) = takeover(connector, broker, connect).await {
                let mut s = lock(&shared);
                let at = s.now_ms();
                s.record(
                    at,
                    "sim",
                    Event::Note {
                        text: format!("kick by takeover failed: {e}"),
                    },
                );
            }
        });
        Ok(())
    }
}

/// Connects with `connect` and waits for the CONNACK, then drops the connection without
/// acknowledging anything the broker sent (it redelivers that to the session's next
/// connection).
async fn takeover(
    connector: Arc<dyn Connector>,
    broker: SocketAddr,
    connect: Connect,
) -> Result<(), String> {
    let protocol = connect.protocol;
    let work = async {
        let stream = connector
            .connect(&broker.to_string())
            .await
            .map_err(|e| e.to_string())?;
        let (read, write) = tokio::io::split(stream);
        let mut writer = FramedWrite::new(write, protocol);
        writer
            .write_packet(&Packet::Connect(Box::new(connect)))
            .await
            .map_err(|e| e.to_string())?;
        let mut reader = FramedRead::new(read, protocol, crate::codec::DEFAULT_MAX_PACKET_SIZE);
        match reader.read_packet().await.map_err(|e| e.to_string())? {
            Some(Packet::ConnAck(ack)) if ack.reason_code.is_error() => {
                Err(format!("CONNACK {:?}", ack.reason_code))
            }
            Some(Packet::ConnAck(_)) => Ok(()),
            Some(other) => Err(format!("expected CONNACK, got {:?}", other.packet_type())),
            None => Err("the broker closed the connection before its CONNACK".into()),
        }
    };
    tokio::time::timeout(KICK_TIMEOUT, work)
        .await
        .map_err(|_| format!("no CONNACK within {}s", KICK_TIMEOUT.as_secs()))?
}

/// Password bytes from text.
pub fn password(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}
