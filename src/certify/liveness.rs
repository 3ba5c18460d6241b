//! The liveness guard: whether the broker under test still answers well, asked between cases
//! (after each one ends), every [`PROBE_INTERVAL`] while cases run, and after each step of a
//! case rerun alone to find the input that broke it.
//!
//! A check opens [`PROBE_CONNECTIONS`] new connections at once (TCP, a clean 3.1.1 CONNECT
//! with the run's credentials, its CONNACK, DISCONNECT) and pings a *sentinel*: a connection
//! the guard opened at the start and holds (PINGREQ, PINGRESP). What they show:
//! - every new connection answered, the sentinel too: **well**;
//! - new connections fail and the sentinel is gone: **crashed**; the sentinel gone while new
//!   connections answer: crashed and already back (restarted by something else), **crashed**
//!   as well;
//! - new connections refused or unanswered (TCP refused, no CONNACK, closed, a refusing
//!   return code) while the sentinel lives: **degraded**. A loaded broker can be slow once, so degraded is
//!   reported only when a second check right after the first fails too.
//!
//! Every check runs on the guard's own thread (the sentinel's socket lives on its runtime);
//! callers wait for the answer of a check that started after they asked, so "well after this
//! case" means after the case's end. A check costs a few loopback round trips.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::codec::{Connect, ConnectProperties, Disconnect, MqttStr, Packet, ProtocolVersion};
use crate::transport::{FramedRead, FramedWrite};

/// Bound on one probe connection's TCP connect, CONNECT → CONNACK, and the sentinel's ping.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the guard checks on its own while cases run.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// New connections per check (a broker that refuses some of them is caught by one).
const PROBE_CONNECTIONS: usize = 2;
/// Pause before the second check that confirms a degradation.
const CONFIRM_PAUSE: Duration = Duration::from_millis(300);
/// Keep Alive of the sentinel and the probes (the sentinel is pinged far more often).
const KEEP_ALIVE_SECS: u16 = 60;

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Well,
    /// New connections fail while held ones live on.
    Degraded(String),
    /// The broker dropped its connections (and refuses new ones, or came back by itself).
    Crashed(String),
}

impl Health {
    pub fn is_well(&self) -> bool {
        matches!(self, Health::Well)
    }

    pub fn detail(&self) -> &str {
        match self {
            Health::Well => "answering",
            Health::Degraded(d) | Health::Crashed(d) => d,
        }
    }
}

/// How the guard reaches the broker.
#[derive(Debug, Clone)]
pub struct Reach {
    pub broker: SocketAddr,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    /// Prefix of the probes' client ids (unique to the run, so no case meets them).
    pub id_prefix: String,
}

impl Reach {
    fn connect_packet(&self, client_id: &str) -> Result<Connect, String> {
        Ok(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive_secs: KEEP_ALIVE_SECS,
            properties: ConnectProperties::default(),
            client_id: MqttStr::new(client_id).map_err(|e| format!("client id: {e}"))?,
            will: None,
            username: match &self.username {
                Some(u) => Some(MqttStr::new(u).map_err(|e| format!("username: {e}"))?),
                None => None,
            },
            password: self.password.clone(),
        })
    }
}

/// One new connection's fate.
#[derive(Debug)]
enum Attempt {
    Answered,
    /// Nothing accepts TCP connections on the port.
    Refused(String),
    /// Accepted, but no good CONNACK.
    Failed(String),
}

/// An MQTT connection opened with a CONNECT and its CONNACK (probe or sentinel).
pub struct Held {
    reader: FramedRead<OwnedReadHalf>,
    writer: FramedWrite<OwnedWriteHalf>,
}

impl Held {
    /// Connects, sends CONNECT and waits for a CONNACK that accepts it. `Err((refused, why))`.
    async fn open(reach: &Reach, client_id: &str) -> Result<Held, (bool, String)> {
        let connect = reach.connect_packet(client_id).map_err(|e| (false, e))?;
        let stream =
            match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(reach.broker)).await {
                Err(_) => return Err((false, "TCP connect timed out".into())),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err((true, format!("connection refused: {e}")))
                }
                Ok(Err(e)) => return Err((false, format!("TCP connect failed: {e}"))),
                Ok(Ok(stream)) => stream,
            };
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mut held = Held {
            reader: FramedRead::new(
                read,
                ProtocolVersion::V311,
                crate::codec::DEFAULT_MAX_PACKET_SIZE,
            ),
            writer: FramedWrite::new(write, ProtocolVersion::V311),
        };
        let answer = async {
            held.writer
                .write_packet(&Packet::Connect(Box::new(connect)))
                .await
                .map_err(|e| format!("writing CONNECT: {e}"))?;
            match held.reader.read_packet().await {
                Ok(Some(Packet::ConnAck(ack))) if ack.reason_code.is_error() => {
                    Err(format!("CONNACK refused it ({:?})", ack.reason_code))
                }
                Ok(Some(Packet::ConnAck(_))) => Ok(()),
                Ok(Some(other)) => Err(format!("answered {:?}, not CONNACK", other.packet_type())),
                Ok(None) => Err("closed the connection before CONNACK".into()),
                Err(e) => Err(format!("reading CONNACK: {e}")),
            }
        };
        match tokio::time::timeout(PROBE_TIMEOUT, answer).await {
            Ok(Ok(())) => Ok(held),
            Ok(Err(e)) => Err((false, e)),
            Err(_) => Err((
                false,
                format!("no CONNACK within {}s", PROBE_TIMEOUT.as_secs()),
            )),
        }
    }

    /// PINGREQ, then PINGRESP within the timeout (other packets are skipped).
    pub async fn ping(&mut self) -> Result<(), String> {
        let exchange = async {
            self.writer
                .write_packet(&Packet::PingReq)
                .await
                .map_err(|e| format!("writing PINGREQ: {e}"))?;
            loop {
                match self.reader.read_packet().await {
                    Ok(Some(Packet::PingResp)) => return Ok(()),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err("the connection was closed".to_string()),
                    Err(e) => return Err(format!("the connection failed: {e}")),
                }
            }
        };
        tokio::time::timeout(PROBE_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no PINGRESP within {}s", PROBE_TIMEOUT.as_secs()))?
    }

    /// Whether the broker closed this connection within `within` (EOF or an error).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let closed = async {
            loop {
                match self.reader.read_packet().await {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::time::timeout(within, closed).await.is_ok()
    }

    async fn leave(mut self) {
        let _ = self
            .writer
            .write_packet(&Packet::Disconnect(Disconnect::default()))
            .await;
        let _ = self.writer.shutdown().await;
    }
}

/// Opens a held connection (the TCP backend's crash confirmation uses one too).
pub async fn hold(reach: &Reach, client_id: &str) -> Result<Held, String> {
    Held::open(reach, client_id).await.map_err(|(_, e)| e)
}

/// One new connection answered with a CONNACK that accepts it, then left.
pub async fn answers(reach: &Reach, client_id: &str) -> Result<(), String> {
    match attempt(reach, client_id).await {
        Attempt::Answered => Ok(()),
        Attempt::Refused(e) | Attempt::Failed(e) => Err(e),
    }
}

async fn attempt(reach: &Reach, client_id: &str) -> Attempt {
    match Held::open(reach, client_id).await {
        Ok(held) => {
            held.leave().await;
            Attempt::Answered
        }
        Err((true, e)) => Attempt::Refused(e),
        Err((false, e)) => Attempt::Failed(e),
    }
}

enum Request {
    Stop,
    Check(mpsc::Sender<Health>),
    /// Opens the sentinel again (after a deliberate restart); answers when done.
    Reopen(mpsc::Sender<()>),
    /// Periodic checks off (true) or on (false) — a deliberate restart is no incident.
    /// Answered once in effect (no check runs any more).
    Pause(bool, mpsc::Sender<()>),
}

/// The guard. Dropping it stops the guard's thread.
pub struct Guard {
    handle: GuardHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A way to ask the guard, for other threads.
#[derive(Clone)]
pub struct GuardHandle {
    tx: mpsc::Sender<Request>,
}

impl Guard {
    /// Starts the guard's thread; `on_unwell` is called (on that thread) with what a periodic
    /// check found wrong. `Err` when the probes fail from the start (wrong credentials, say):
    /// then no check could tell a broker that stopped answering from one that never did.
    pub fn start(
        reach: Reach,
        on_unwell: impl Fn(Health) + Send + 'static,
    ) -> Result<Guard, String> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("guard runtime: {e}")));
                    return;
                }
            };
            let mut prober = Prober {
                reach,
                sentinel: None,
                probes: 0,
            };
            let first = runtime.block_on(async {
                prober.reopen().await;
                let health = prober.check().await;
                match (&prober.sentinel, health) {
                    (Some(_), Health::Well) => Ok(()),
                    (None, _) => Err("the guard's sentinel connection was refused".to_string()),
                    (_, unwell) => Err(unwell.detail().to_string()),
                }
            });
            let ok = first.is_ok();
            let _ = ready_tx.send(first);
            if !ok {
                return;
            }
            let mut paused = false;
            let mut next = Instant::now() + PROBE_INTERVAL;
            loop {
                let wait = next.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(Request::Stop) => break,
                    Ok(Request::Check(reply)) => {
                        // Every check asked before this one starts gets its answer.
                        let mut replies = vec![reply];
                        let mut other = Vec::new();
                        while let Ok(r) = rx.try_recv() {
                            match r {
                                Request::Check(reply) => replies.push(reply),
                                r => other.push(r),
                            }
                        }
                        let health = runtime.block_on(prober.confirmed_check());
                        for reply in replies {
                            let _ = reply.send(health.clone());
                        }
                        for r in other {
                            prober.handle(&runtime, r, &mut paused);
                        }
                    }
                    Ok(r) => prober.handle(&runtime, r, &mut paused),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        next = Instant::now() + PROBE_INTERVAL;
                        if !paused {
                            let health = runtime.block_on(prober.confirmed_check());
                            if !health.is_well() {
                                on_unwell(health);
                            }
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Guard {
                handle: GuardHandle { tx },
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the guard's thread ended".into()),
        }
    }

    pub fn handle(&self) -> GuardHandle {
        self.handle.clone()
    }

    pub fn check(&self) -> Health {
        self.handle.check()
    }
}

impl GuardHandle {
    /// Checks now (a check that starts after this call) and returns what it found.
    pub fn check(&self) -> Health {
        let (reply, answer) = mpsc::channel();
        if self.tx.send(Request::Check(reply)).is_err() {
            return Health::Well;
        }
        answer.recv().unwrap_or(Health::Well)
    }

    /// Opens the sentinel again (after the broker was restarted on purpose).
    pub fn reopen(&self) {
        let (reply, done) = mpsc::channel();
        if self.tx.send(Request::Reopen(reply)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Stops (true) or resumes (false) the periodic checks; returns once that is in effect,
    /// so no check that began before overlaps what follows (a restart on purpose).
    pub fn pause(&self, paused: bool) {
        let (reply, done) = mpsc::channel();
        if self.tx.send(Request::Pause(paused, reply)).is_ok() {
            let _ = done.recv();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.handle.tx.send(Request::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Prober {
    reach: Reach,
    sentinel: Option<Held>,
    probes: u64,
}

impl Prober {
    fn handle(&mut self, runtime: &tokio::runtime::Runtime, r: Request, paused: &mut bool) {
        match r {
            Request::Stop => {}
            Request::Check(reply) => {
                let _ = reply.send(runtime.block_on(self.confirmed_check()));
            }
            Request::Reopen(reply) => {
                runtime.block_on(self.reopen());
                let _ = reply.send(());
            }
            Request::Pause(p, reply) => {
                *paused = p;
                let _ = reply.send(());
            }
        }
    }

    async fn reopen(&mut self) {
        if let Some(old) = self.sentinel.take() {
            old.leave().await;
        }
        let id = format!("{}-guard", self.reach.id_prefix);
        self.sentinel = Held::open(&self.reach, &id).await.ok();
    }

    /// A check; a degradation is reported only when a second check agrees.
    async fn confirmed_check(&mut self) -> Health {
        match self.check().await {
            Health::Degraded(_) => {
                tokio::time::sleep(CONFIRM_PAUSE).await;
                self.check().await
            }
            other => other,
        }
    }

    async fn check(&mut self) -> Health {
        let mut attempts = Vec::new();
        for _ in 0..PROBE_CONNECTIONS {
            self.probes += 1;
            let id = format!("{}-p{}", self.reach.id_prefix, self.probes);
            let reach = self.reach.clone();
            attempts.push(tokio::spawn(async move { attempt(&reach, &id).await }));
        }
        let sentinel = match &mut self.sentinel {
            Some(s) => s
                .ping()
                .await
                .map_err(|e| format!("the guard's held connection: {e}")),
            None => Err("the guard holds no connection".to_string()),
        };
        let mut refused = Vec::new();
        let mut failed = Vec::new();
        for a in attempts {
            match a.await {
                Ok(Attempt::Answered) => {}
                Ok(Attempt::Refused(e)) => refused.push(e),
                Ok(Attempt::Failed(e)) => failed.push(e),
                Err(e) => failed.push(format!("probe task: {e}")),
            }
        }
        let new_ok = refused.is_empty() && failed.is_empty();
        let had_sentinel = self.sentinel.is_some();
        if sentinel.is_err() {
            self.sentinel = None;
        }
        match (new_ok, sentinel) {
            (true, Ok(())) => Health::Well,
            (true, Err(e)) if had_sentinel => {
                // It answers new connections but dropped the one held since before: it went
                // down and came back.
                Health::Crashed(format!(
                    "{e}, while new connections are answered (it restarted)"
                ))
            }
            (true, Err(_)) => {
                // No sentinel to lose (it could not be opened again): take the new ones' word.
                self.reopen().await;
                Health::Well
            }
            (false, held) => {
                let mut what: Vec<String> = refused.iter().chain(&failed).cloned().collect();
                what.dedup();
                let new = format!(
                    "{} of {PROBE_CONNECTIONS} new connections failed ({})",
                    refused.len() + failed.len(),
                    what.join("; ")
                );
                match held {
                    Ok(()) => {
                        Health::Degraded(format!("{new}, while a held connection still answers"))
                    }
                    Err(e) => Health::Crashed(format!("{new}; {e}")),
                }
            }
        }
    }
}
