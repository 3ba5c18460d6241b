//! The server loop: the thin I/O driver around `Core`.
//!
//! Shape (DESIGN.md "Performance shape"):
//! - one task owns the `Core` and is the only one to touch broker state, so no lock exists,
//!   let alone one held while a message is routed;
//! - per connection, one task (`connection::serve`) decodes what the socket brings and encodes
//!   what the core sends; it does only framing and I/O, so on a multi-threaded runtime
//!   decoding and encoding run beside routing (`simqtt broker` runs on one thread unless
//!   `threads` says otherwise: on a small machine shared with its clients that was faster);
//! - the core takes at most `EVENT_BATCH` events per wake-up, and only takes an event it will
//!   handle in that batch;
//! - connections hand packets to the core over one bounded channel and wait when it is full,
//!   which pushes back on fast publishers through TCP;
//! - back-pressure per publisher: each connection may have at most `READER_CREDIT` packets
//!   with the core (queued or held) and stops reading its socket beyond that. When a QoS 1/2
//!   PUBLISH would overflow an online subscriber's session queue (`Core::publish_blocker`),
//!   the driver holds it unacknowledged, with whatever that connection sends after it
//!   (acknowledgements excepted: they only free room), until the subscriber makes room. The
//!   publisher's TCP window fills and it slows down to the subscriber's pace; nothing
//!   acknowledged is dropped. A subscriber that makes no room for
//!   `slow_subscriber_timeout_secs` is closed as a slow consumer (its session keeps its
//!   queue), which also breaks wait cycles between clients;
//! - the core hands packets to each connection through a bounded queue with `try_send`, never
//!   waiting: a slow subscriber loses QoS 0 messages or its connection, never anyone's time.
//!   The queue is bounded in packets (`outbound_queue_packets`) and, for QoS 0, in bytes
//!   (`outbound_queue_bytes`); a reader's packets with the core are bounded in bytes too
//!   (`READER_CREDIT_BYTES`);
//! - memory budget: the bytes waiting in session queues and in connections' outbound queues
//!   are bounded broker-wide (`max_queued_bytes_total`). Past it a QoS 0 message that would
//!   wait behind others is dropped, a message for an offline session is dropped, and a QoS
//!   1/2 PUBLISH that would wait in an online subscriber's queue is held like one for a full
//!   queue (`Core::publish_blocker`), with the same slow-subscriber rule;
//! - a connection takes everything queued (up to a batch bound) before one write;
//! - payloads travel as `Bytes`, shared by every subscriber's copy of a message;
//! - the store ops of one batch of events are written together (`Core::flush_store`, one
//!   fsync under `every-write`) before the batch's acknowledgements are handed to writers (when
//!   the write fails, those acknowledgements are withdrawn: `core/store_health.rs`). The
//!   write runs on the core task: with a file store on a real disk the fsync bounds the rate of
//!   persistent-session traffic, while the connection tasks keep reading and writing.
//!
//! Nothing here names `tokio::net` or `turmoil`, reads the wall clock, or starts an OS thread:
//! the same code serves real TCP and the simulator.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::auth::AuthOutcome;
use super::config::BrokerConfig;
use super::connection::{self, inbound_cost, ConnHandle, Counted, Outbound, PubAckRun};
use super::core::{Action, ClientInfo, ConnId, Core, EndCause};
use super::stats::{ByteCounters, Stats};
use crate::codec::{Connect, Packet, QosPid};
use crate::store::Store;
use crate::transport::{BoxStream, Listener};

/// Events from the connection tasks to the core. Bounded so connections wait when the core is
/// busy.
const EVENT_QUEUE: usize = 4096;
/// Events the core takes in one wake before it runs timers and executes actions again.
const EVENT_BATCH: usize = 256;
/// Sockets allowed beyond `max_connections` while they have not sent CONNECT.
const PENDING_CONNECTIONS: usize = 1024;
/// How long `run` waits at shutdown for writers to flush their last packets.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// What connections tell the core.
// Nearly every event is a packet; boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Event {
    /// The stream, the peer's address, the identity the transport vouches for.
    Accepted(BoxStream, String, Option<String>),
    Packet(ConnId, Packet),
    /// The first CONNECT, its credentials checked by the connection (`connection::Gate`).
    Connect(ConnId, Box<Connect>, AuthOutcome),
    /// Plain PUBACKs that came in a row (`connection::take_puback_run`).
    PubAcks(ConnId, PubAckRun),
    Ended(ConnId, EndCause),
}

enum Command {
    Clients(oneshot::Sender<Vec<ClientInfo>>),
    Kick(String, oneshot::Sender<bool>),
    Stats(oneshot::Sender<Stats>),
}

/// In-process control of a running broker (the simulator's "kick" uses it). Cheap to clone.
/// Every call answers "nothing" once the broker has stopped.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    commands: mpsc::Sender<Command>,
}

impl BrokerHandle {
    /// The connected clients, in client-id order.
    pub async fn clients(&self) -> Vec<ClientInfo> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Clients(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Closes the connection of `client_id` as if the network had failed (its will is
    /// published; 5.0 clients get DISCONNECT 0x98 first). False when it is not connected.
    pub async fn kick(&self, client_id: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Kick(client_id.to_string(), tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// The broker's counters now; `None` once it has stopped.
    pub async fn stats(&self) -> Option<Stats> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Stats(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// A broker ready to serve; `new` also gives the handle that controls it.
pub struct Broker {
    store: Box<dyn Store>,
    config: BrokerConfig,
    commands: mpsc::Receiver<Command>,
}

impl Broker {
    pub fn new(store: Box<dyn Store>, config: BrokerConfig) -> (Broker, BrokerHandle) {
        let (tx, rx) = mpsc::channel(64);
        (
            Broker {
                store,
                config,
                commands: rx,
            },
            BrokerHandle { commands: tx },
        )
    }

    /// Serves clients from `listener` until `shutdown` completes, then closes every
    /// connection and syncs the store.
    pub async fn run(self, listener: impl Listener, shutdown: impl Future) -> io::Result<()> {
        let Broker {
            store,
            config,
            mut commands,
        } = self;
        tracing::info!(addr = %listener.local_addr(), "broker listening");
        let bytes = Arc::new(ByteCounters::default());
        let max_packet_size = config.max_packet_size;
        let outbound_queue = config.outbound_queue_packets;
        let outbound_queue_bytes = config.outbound_queue_bytes;
        let slow_subscriber_timeout = config.slow_subscriber_timeout_secs;
        let max_sockets = config.max_connections.saturating_add(PENDING_CONNECTIONS);
        let gate = Arc::new(connection::Gate::new(config.authenticator.clone()));
        let mut core = Core::new(config, store, bytes.clone(), Instant::now());
        let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
        let acceptor = tokio::spawn(accept_loop(listener, events_tx.clone()));
        // Each writer holds a clone; when all are gone `recv` returns None (all flushed).
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let stall = match slow_subscriber_timeout {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let mut driver = Driver {
            conns: BTreeMap::new(),
            next_conn: 1,
            actions: Vec::new(),
            executing: Vec::new(),
            held: BTreeMap::new(),
            wake: Vec::new(),
        };
        tokio::pin!(shutdown);
        loop {
            let deadline = core.next_deadline();
            let stall_deadline = stall.and_then(|d| driver.stall_deadline(d));
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sleep_until(deadline) => {
                    core.on_timer(Instant::now(), &mut driver.actions);
                }
                _ = sleep_until(stall_deadline) => {
                    if let Some(stall) = stall {
                        driver.end_stalled(&mut core, stall, Instant::now());
                    }
                }
                Some(command) = commands.recv() => {
                    let now = Instant::now();
                    match command {
                        Command::Clients(reply) => {
                            let _ = reply.send(core.clients());
                        }
                        Command::Kick(client_id, reply) => {
                            let _ = reply.send(core.kick(&client_id, now, &mut driver.actions));
                        }
                        Command::Stats(reply) => {
                            let _ = reply.send(core.stats(now));
                        }
                    }
                }
                event = events.recv() => {
                    let Some(mut event) = event else { break };
                    let now = Instant::now();
                    let mut taken = 1;
                    loop {
                        match event {
                            Event::Accepted(stream, peer, identity) => {
                                if core.connection_count() >= max_sockets {
                                    tracing::warn!(%peer, "too many sockets; closing at once");
                                    drop(stream);
                                } else {
                                    let conn = driver.next_conn;
                                    driver.next_conn += 1;
                                    let stream = Counted { inner: stream, bytes: bytes.clone() };
                                    let (handle, task) = connection::shared(
                                        outbound_queue,
                                        outbound_queue_bytes,
                                        bytes.clone(),
                                    );
                                    tokio::spawn(connection::serve(
                                        conn,
                                        stream,
                                        max_packet_size,
                                        events_tx.clone(),
                                        identity.is_none().then(|| gate.clone()),
                                        task,
                                        alive_tx.clone(),
                                    ));
                                    driver.conns.insert(conn, handle);
                                    core.opened(conn, peer, now);
                                    if let Some(identity) = identity {
                                        core.set_identity(conn, identity);
                                    }
                                }
                            }
                            Event::Packet(conn, packet) => {
                                driver.packet(&mut core, conn, packet, now);
                            }
                            Event::Connect(conn, connect, outcome) => {
                                // First on its connection: nothing is held before it.
                                core.handle_connect(conn, connect, outcome, now, &mut driver.actions);
                                driver.give_credit(conn, 1, 0);
                            }
                            Event::PubAcks(conn, run) => {
                                // Acknowledgements pass held packets (see `Driver::packet`).
                                core.pubacks(conn, run.ids(), now, &mut driver.actions);
                                driver.give_credit(conn, run.ids().len(), 0);
                            }
                            Event::Ended(conn, cause) => match driver.held.get_mut(&conn) {
                                // After the held packets, in order (a held DISCONNECT first).
                                Some(held) => held.ended = Some(cause),
                                None => core.ended(conn, cause, now, &mut driver.actions),
                            },
                        }
                        // Take the next event only if this batch may still handle it: an
                        // event taken and not handled would be lost (a PUBACK lost this way
                        // kept a slot of the subscriber's window, and its reader's credit,
                        // forever).
                        if taken == EVENT_BATCH {
                            break;
                        }
                        match events.try_recv() {
                            Ok(next) => {
                                event = next;
                                taken += 1;
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            // Subscribers may have made room (acknowledgements, timers, ends).
            driver.resume(&mut core, Instant::now());
            // Durable first, then the packets that depend on it (acknowledgements; those whose
            // write failed are withdrawn here).
            core.flush_store(Instant::now(), &mut driver.actions);
            driver.execute(&mut core);
        }
        acceptor.abort();
        let now = Instant::now();
        core.shutdown(now, &mut driver.actions);
        core.flush_store(now, &mut driver.actions);
        driver.execute(&mut core);
        drop(driver);
        drop(alive_tx);
        if tokio::time::timeout(SHUTDOWN_FLUSH, alive_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("connections still flushing at shutdown; closing them anyway");
        }
        tracing::info!("broker stopped");
        Ok(())
    }
}

/// Serves clients from `listener` with `store` and `config` until `shutdown` completes
/// (STYLE.md #2). Use `Broker::new` instead to also get a `BrokerHandle`.
pub async fn run(
    listener: impl Listener,
    store: Box<dyn Store>,
    config: BrokerConfig,
    shutdown: impl Future,
) -> io::Result<()> {
    let (broker, _handle) = Broker::new(store, config);
    broker.run(listener, shutdown).await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A connection whose PUBLISH waits for room in a subscriber's queue.
struct Held {
    /// The waiting PUBLISH first, then what the connection sent after it.
    packets: VecDeque<Packet>,
    /// The reader reported the end of the connection after these packets.
    ended: Option<EndCause>,
    /// The session that has no room.
    blocker: Arc<str>,
    /// Since when no held packet could be handled.
    since: Instant,
}

struct Driver {
    conns: BTreeMap<ConnId, ConnHandle>,
    next_conn: ConnId,
    actions: Vec<Action>,
    /// The batch `execute` works through (kept, with its capacity, between batches: a vector
    /// left empty regrew by doubling for every batch of thousands of deliveries).
    executing: Vec<Action>,
    /// Connections paused by back-pressure.
    held: BTreeMap<ConnId, Held>,
    /// Connections given packets by `execute`, woken once it has queued them all.
    wake: Vec<Waker>,
}

impl Driver {
    fn give_credit(&self, conn: ConnId, n: usize, bytes: usize) {
        if let Some(handle) = self.conns.get(&conn) {
            handle.give_credit(n, bytes);
        }
    }

    /// A packet from a reader: handled now, or held behind a PUBLISH that waits for room.
    fn packet(&mut self, core: &mut Core, conn: ConnId, packet: Packet, now: Instant) {
        if let Some(held) = self.held.get_mut(&conn) {
            // Acknowledgements free room and depend on nothing held (a PUBREL answers a PUBREC
            // the broker sent, so its PUBLISH was handled); the rest keeps its order.
            if !matches!(
                packet,
                Packet::PubAck(_)
                    | Packet::PubRec(_)
                    | Packet::PubRel(_)
                    | Packet::PubComp(_)
                    | Packet::PingReq
            ) {
                held.packets.push_back(packet);
                return;
            }
        } else if let Packet::Publish(publish) = &packet {
            if let Some(blocker) = core.publish_blocker(conn, publish) {
                tracing::debug!(conn, blocker = &*blocker, "publisher paused: queue full");
                core.set_paused(conn, true, now);
                self.held.insert(
                    conn,
                    Held {
                        packets: VecDeque::from([packet]),
                        ended: None,
                        blocker,
                        since: now,
                    },
                );
                return;
            }
        }
        let bytes = inbound_cost(&packet);
        core.handle(conn, packet, now, &mut self.actions);
        self.give_credit(conn, 1, bytes);
    }

    /// Hands the core the held packets that can go now; resumes connections left with none.
    fn resume(&mut self, core: &mut Core, now: Instant) {
        if self.held.is_empty() {
            return;
        }
        let conns: Vec<ConnId> = self.held.keys().copied().collect();
        for conn in conns {
            let Some(mut held) = self.held.remove(&conn) else {
                continue;
            };
            let mut progressed = false;
            let mut blocked = false;
            while let Some(packet) = held.packets.pop_front() {
                if let Packet::Publish(publish) = &packet {
                    if let Some(blocker) = core.publish_blocker(conn, publish) {
                        held.blocker = blocker;
                        held.packets.push_front(packet);
                        blocked = true;
                        break;
                    }
                }
                let bytes = inbound_cost(&packet);
                core.handle(conn, packet, now, &mut self.actions);
                self.give_credit(conn, 1, bytes);
                progressed = true;
            }
            if blocked {
                if progressed {
                    held.since = now;
                }
                self.held.insert(conn, held);
                continue;
            }
            core.set_paused(conn, false, now);
            if let Some(cause) = held.ended {
                core.ended(conn, cause, now, &mut self.actions);
            }
        }
    }

    /// When the longest-waiting publisher gives up on its subscriber.
    fn stall_deadline(&self, stall: Duration) -> Option<Instant> {
        self.held.values().map(|h| h.since + stall).min()
    }

    /// Closes, as slow consumers, the subscribers that kept a publisher waiting `stall` with
    /// no progress; their sessions go offline, so the held messages are queued (drop-oldest).
    fn end_stalled(&mut self, core: &mut Core, stall: Duration, now: Instant) {
        let mut blockers = Vec::new();
        for held in self.held.values_mut() {
            if held.since + stall <= now {
                blockers.push(held.blocker.clone());
                held.since = now;
            }
        }
        blockers.sort();
        blockers.dedup();
        for client_id in blockers {
            tracing::warn!(
                client_id = &*client_id,
                "publishers waited too long on this subscriber; closing it"
            );
            core.end_slow_consumer(&client_id, now, &mut self.actions);
        }
    }

    /// Carries out the core's actions; a full or closed writer queue goes back to the core,
    /// which may answer with more actions.
    fn execute(&mut self, core: &mut Core) {
        let now = Instant::now();
        let mut batch = std::mem::take(&mut self.executing);
        while !self.actions.is_empty() {
            std::mem::swap(&mut batch, &mut self.actions);
            let mut actions = batch.drain(..);
            while let Some(action) = actions.next() {
                let (conn, mut item) = match action {
                    Action::Send { conn, packet } => (conn, Outbound::Packet(packet)),
                    Action::SetProtocol { conn, version } => (conn, Outbound::Protocol(version)),
                    Action::Close { conn } => {
                        // The connection writes what is queued and shuts the stream down.
                        self.conns.remove(&conn);
                        continue;
                    }
                };
                let Some(handle) = self.conns.get(&conn) else {
                    continue;
                };
                // The actions for this connection that follow go under one lock.
                let mut sender = handle.sender();
                loop {
                    // Past the broker's budget a QoS 0 message is dropped where it would wait
                    // (behind others in this queue); into an empty queue it still goes.
                    let qos0 = matches!(&item, Outbound::Packet(Packet::Publish(p)) if p.qos_pid == QosPid::AtMostOnce);
                    let over_budget = qos0 && core.over_budget();
                    match sender.try_send(item, over_budget, &mut self.wake) {
                        Ok(()) => {}
                        Err(TrySendError::Full(Outbound::Packet(Packet::Publish(p))))
                            if p.qos_pid == QosPid::AtMostOnce =>
                        {
                            if over_budget {
                                core.qos0_dropped_memory();
                            } else {
                                core.qos0_dropped();
                            }
                        }
                        Err(TrySendError::Full(_)) => {
                            core.ended(conn, EndCause::SlowConsumer, now, &mut self.actions);
                        }
                        Err(TrySendError::Closed(_)) => {
                            let cause = EndCause::Io("connection writer stopped".into());
                            core.ended(conn, cause, now, &mut self.actions);
                        }
                    }
                    // Looked at in place (a `Peekable` moved every action through its slot).
                    if !actions
                        .as_slice()
                        .first()
                        .is_some_and(|a| same_conn_item(a, conn))
                    {
                        break;
                    }
                    item = match actions.next() {
                        Some(Action::Send { packet, .. }) => Outbound::Packet(packet),
                        Some(Action::SetProtocol { version, .. }) => Outbound::Protocol(version),
                        _ => break,
                    };
                }
            }
            drop(actions);
            // A connection ended above may have published a will.
            core.flush_store(now, &mut self.actions);
        }
        self.executing = batch;
        // Every packet of this batch is queued: now the connections may write them, each
        // batch with one system call.
        for waker in self.wake.drain(..) {
            waker.wake();
        }
    }
}

/// `action` queues something on `conn` (a close does not: it ends the run).
fn same_conn_item(action: &Action, conn: ConnId) -> bool {
    match action {
        Action::Send { conn: c, .. } | Action::SetProtocol { conn: c, .. } => *c == conn,
        Action::Close { .. } => false,
    }
}

async fn accept_loop(mut listener: impl Listener, events: mpsc::Sender<Event>) {
    loop {
        match listener.accept_client().await {
            Ok(accepted) => {
                let event = Event::Accepted(accepted.stream, accepted.peer, accepted.identity);
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
