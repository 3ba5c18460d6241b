//! The broker's state machine: every session, connection, subscription and retained message,
//! driven by events (`opened`, `handle(packet)`, `ended`, timers) and answering with `Action`s
//! (send this packet on that connection, close that connection). It does no I/O and reads no
//! clock: `now` comes in with every call, so it is unit-tested without sockets and runs the
//! same on tokio and inside turmoil.
//!
//! Durable state is changed only through `StoreOp`s. The core keeps a mirror `DurableState` of
//! every session (clean ones too) by folding the same ops, and hands the ops of persistent
//! sessions and of retained messages to the `Store`; so the in-memory session and the stored
//! one cannot drift apart, and a restart rebuilds exactly what was acknowledged.
//!
//! Choices where MQTT leaves one (checkers accept every permitted option; these are ours):
//! - Overlapping subscriptions of one client: ONE copy per message, at the highest QoS among
//!   the matching subscriptions [MQTT-3.3.5-1]; for 5.0 it carries every matching
//!   subscription identifier.
//! - Session takeover: the older connection is closed as if its network had failed, so its
//!   will IS published (3.1.1 leaves this to the server; mosquitto does the same).
//! - Will delay (5.0): the will waits for the Will Delay Interval or the end of the session,
//!   whichever comes first, and any new connection to the session before then cancels it.
//! - Session queue overflow, online subscriber: back-pressure, not loss. A QoS 1/2 PUBLISH
//!   that would push an online session's queue past `max_queued_messages` or
//!   `max_queued_bytes`, or that would have to wait in an online session's queue while the
//!   broker's budget (`max_queued_bytes_total`) is used up, is not accepted:
//!   `publish_blocker` names the full session, the server holds the PUBLISH (unacknowledged)
//!   and stops reading that publisher until the subscriber makes room. So nothing the broker
//!   acknowledged is dropped for a slow reader. Exceptions, which still drop the OLDEST queued
//!   message (counted): an offline session (a publisher must not wait days for it), a client
//!   publishing to its own full queue (waiting on itself would deadlock: its PUBACKs sit
//!   behind its held PUBLISHes), and messages the broker publishes itself (wills, `$SYS`).
//!   Past the budget, a message for an offline session (or QoS 0 for any) is dropped instead.
//! - Unauthorised PUBLISH (ACL, or a `$` topic): acknowledged normally in 3.1.1
//!   [MQTT-3.3.5-2], with reason 0x87 in 5.0; never delivered; counted.
//! - Unauthorised delivery: every message is checked against the receiver's ACL read access
//!   on its way to it (`may_read`: live, queued for an offline session with its owner's ACL,
//!   retained at SUBSCRIBE, wills, `$SYS`, and again when it leaves the queue or is resent),
//!   so a `deny` inside an allowed wildcard holds; a refused one is dropped and counted.
//! - Server shutdown closes connections without publishing wills (the clients did not fail).
//! - Shared subscriptions (5.0 §4.8.2, `shared.rs`): one member per group and message, picked
//!   by `shared_subscription_strategy` among the online members; a copy given to a member is
//!   that member's like any other delivery (never moved to another member), and it is apart
//!   from the copy the same client may get through an ordinary subscription (5.0 4.8.2). The
//!   shared copy carries its shared subscription's identifier only.
//! - Ordering: messages to one client leave in the order the broker accepted them at each QoS
//!   [MQTT-4.6.0-6]; a QoS 0 message to an online client is sent at once and may overtake QoS
//!   1/2 messages waiting for the in-flight window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use super::aliases::{self, InboundError, TopicAliases};
use super::auth::AuthOutcome;
use super::config::{BrokerConfig, SessionTakeover, SharedStrategy};
use super::router::{Route, Router};
use super::shared::{Gid, Groups};
use super::stats::{ByteCounters, Stats};
use crate::codec::{
    self, Ack, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect,
    MqttStr, Packet, PacketId, PropertyBox, ProtocolVersion, Publish, PublishProperties, QoS,
    QosPid, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, TopicFilter,
    TopicName, UnsubAck, Unsubscribe, Will,
};
use crate::scram::{self, ScramError, ServerExchange};
use crate::store::{
    DurableState, MessageProperties, OutgoingState, Owner, Store, StoreOp, StoredMessage,
    StoredSession, StoredSubscription, StoredWill,
};

/// A connection, numbered by the server loop in accept order.
pub type ConnId = u64;

/// What the core asks the I/O layer to do, in order.
// Nearly every action is a `Send`; boxing the packet would cost an allocation per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `packet` on `conn`.
    Send { conn: ConnId, packet: Packet },
    /// Encode later packets on `conn` in `version` (sent before the CONNACK).
    SetProtocol {
        conn: ConnId,
        version: ProtocolVersion,
    },
    /// Flush what was sent on `conn`, then close it. The core has forgotten `conn`.
    Close { conn: ConnId },
}

/// Why the I/O layer reports a connection gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndCause {
    /// The peer closed the stream between packets.
    PeerClosed,
    /// A read or write failed, or the stream ended inside a packet.
    Io(String),
    /// The bytes were not a valid packet (malformed, oversize, bad protocol level).
    Decode(DecodeError),
    /// The connection's outgoing queue was full for a packet that may not be dropped.
    SlowConsumer,
}

/// A connected client, as `BrokerHandle::clients` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub conn: ConnId,
    pub peer: String,
    pub protocol: ProtocolVersion,
    pub username: Option<String>,
    pub keep_alive_secs: u16,
    /// The session outlives the connection.
    pub persistent: bool,
    pub subscriptions: usize,
    pub inflight: usize,
    pub queued: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ConnectTimeout(ConnId),
    KeepAlive(ConnId),
    SessionExpiry(Arc<str>),
    WillDelay(Arc<str>),
    Sys,
    Sync,
}

/// A session's index in `Core::sessions`. Stable while the session lives; a slot is reused
/// only after its session was dropped (and with it every route naming it). The routing path
/// reaches a session through this index, never through a search by client id: client ids of
/// real fleets share long prefixes, and string comparisons in ordered maps were the largest
/// single cost of a QoS 1 delivery (docs/performance.md).
type Sid = u32;

/// One session: its durable part and the facts that are not durable.
#[derive(Debug)]
struct Session {
    client_id: Arc<str>,
    conn: Option<ConnId>,
    /// The store holds this session (its ops are logged).
    persistent: bool,
    /// When an offline session with a finite expiry ends.
    expires_at: Option<Instant>,
    /// 5.0: a will waiting for its delay interval, and when it is due. Boxed: rare, and a
    /// `StoredMessage` inline would triple every session's entry (memory per connection).
    pending_will: Option<Box<(Instant, StoredMessage)>>,
    /// The durable part: the fold of the session's store ops (for a persistent session, the
    /// same fold the store keeps).
    stored: StoredSession,
    /// `stored.outgoing`'s packet ids climb from front to back in allocation order, so a free
    /// id is found without a search (see `alloc_packet_id`).
    ids_ordered: bool,
    /// Bytes (`message_bytes`) of `stored.queued` and of the messages in `stored.outgoing`:
    /// the per-session byte bounds and the broker's budget (`Core::account`).
    queued_bytes: usize,
    inflight_bytes: usize,
}

/// A connection that has sent a valid CONNECT.
#[derive(Debug)]
struct Online {
    client_id: Arc<str>,
    /// The session this connection holds.
    sid: Sid,
    protocol: ProtocolVersion,
    /// Shared, so that a delivery's ACL check can remember the last user it decided for
    /// (`ReadMemo`) without copying the name.
    username: Option<Arc<str>>,
    /// Boxed: most clients set none, and a `Will` inline would triple every connection's
    /// entry (memory per idle connection).
    will: Option<Box<Will>>,
    keep_alive: Duration,
    /// Outgoing QoS 1/2 messages allowed unacknowledged at once.
    inflight_limit: usize,
    /// 5.0: the client's Maximum Packet Size.
    max_packet_size: Option<u32>,
    /// 5.0: the session expiry the CONNECT asked for (DISCONNECT may not raise it from 0).
    connect_expiry_secs: u32,
    /// 5.0: the connection authenticated with SCRAM-SHA-256 (enhanced authentication), so it
    /// may re-authenticate; an AUTH on any other connection is a Protocol Error.
    enhanced_auth: bool,
    /// 5.0: the most topic aliases the broker may use toward this client (its Topic Alias
    /// Maximum, capped by `topic_alias_maximum_outbound`; 0: none [MQTT-3.1.2-27]).
    alias_maximum_outbound: u16,
    /// 5.0: the Topic Alias Maximum its CONNACK announced (0: none).
    alias_maximum_inbound: u16,
    /// 5.0: the connection's topic aliases, both ways, once one is used (`aliases.rs`).
    aliases: Option<Box<TopicAliases>>,
}

/// An enhanced authentication exchange in progress on a connection (SCRAM-SHA-256).
#[derive(Debug)]
struct Exchange {
    scram: ServerExchange,
    /// Before CONNACK, the CONNECT that waits for the exchange's end; `None` for a
    /// re-authentication.
    connect: Option<Box<Connect>>,
}

/// The outcome of an exchange that succeeded, handed to `on_connect`.
#[derive(Debug)]
struct Authenticated {
    conn: ConnId,
    /// The user name client-first named (the session's owner and the ACL's user).
    username: String,
    /// server-final, sent in CONNACK's Authentication Data.
    server_final: Bytes,
}

/// Small on purpose (memory per idle connection): what only an online connection has is boxed.
#[derive(Debug)]
struct Conn {
    peer: String,
    last_seen: Instant,
    online: Option<Box<Online>>,
    /// The user name the transport vouches for (a TLS client certificate's CN on a listener
    /// with `use_identity_as_username`): it replaces CONNECT's, and no password is checked.
    identity: Option<Box<str>>,
}

/// The broker state machine. See the module documentation.
pub struct Core {
    config: BrokerConfig,
    store: Box<dyn Store>,
    retained: BTreeMap<TopicName, StoredMessage>,
    /// Every session (clean ones too), by `Sid`; boxed so a free slot costs a pointer.
    sessions: Vec<Option<Box<Session>>>,
    /// Slots of `sessions` free for reuse.
    free_sids: Vec<Sid>,
    /// Client id → session: used at CONNECT and by commands, never on the routing path.
    session_ids: BTreeMap<Arc<str>, Sid>,
    conns: BTreeMap<ConnId, Conn>,
    online_count: usize,
    router: Router<Sid>,
    /// Shared subscription groups, apart from `router` (`shared.rs`).
    shared: Groups,
    /// Reused per publish to collect the matching shared groups.
    shared_scratch: Vec<Gid>,
    sys_retained: BTreeMap<TopicName, StoredMessage>,
    timers: BTreeSet<(Instant, Timer)>,
    stats: Stats,
    rng: ChaCha8Rng,
    started_at: Instant,
    /// The wall clock at `started_at` (milliseconds since the UNIX epoch, from
    /// `BrokerConfig::wall_clock`): message and session expiry are kept in the store as
    /// wall-clock instants, so they count across a restart.
    wall_at_start_ms: u64,
    bytes: Arc<ByteCounters>,
    /// Reused per publish to collect matching subscriptions without allocating.
    scratch: Vec<(Sid, Route)>,
    /// Ops for the store not yet written (see `flush_store`).
    pending_ops: Vec<StoreOp>,
    /// Sessions whose queue reached `max_queued_messages` (pruned lazily by
    /// `publish_blocker`), so a publish checks subscribers only while some queue is full.
    full_sessions: BTreeSet<Sid>,
    /// Connections the server stopped reading (back-pressure): exempt from keepalive, since
    /// their silence is the broker's doing.
    paused: BTreeSet<ConnId>,
    /// Whether the store writes, and the acknowledgements waiting on it (`store_health.rs`).
    store_health: store_health::StoreHealth,
    /// The sum of every session's `queued_bytes`: with the connections' outbound bytes
    /// (`ByteCounters::outbound_queued`), what `max_queued_bytes_total` bounds.
    queued_bytes_total: usize,
    /// The credentials check of the CONNECT `handle_connect` is handing to `on_connect`.
    checked: Option<(ConnId, AuthOutcome)>,
    /// Enhanced authentication exchanges in progress (before CONNACK or re-authenticating);
    /// apart from `Conn`, which stays small.
    exchanges: BTreeMap<ConnId, Box<Exchange>>,
    /// The SCRAM exchange `on_connect` is finishing (see `Authenticated`).
    authenticated: Option<Authenticated>,
    /// Keys the decoy salt a SCRAM exchange shows for a user without a credential (drawn
    /// from the seeded RNG at start: stable while the broker runs).
    scram_decoy_secret: [u8; 32],
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("sessions", &self.session_ids.len())
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

fn qos_code(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::GRANTED_QOS0,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    }
}

fn next_id(id: u16) -> u16 {
    if id == u16::MAX {
        1
    } else {
        id + 1
    }
}

impl Core {
    /// Builds the broker from the store's state: persistent sessions come back offline with
    /// their subscriptions, queues and in-flight messages; retained messages come back.
    pub fn new(
        config: BrokerConfig,
        store: Box<dyn Store>,
        bytes: Arc<ByteCounters>,
        now: Instant,
    ) -> Core {
        let retained = store.state().retained.clone();
        let wall_at_start_ms = config.wall_clock.now_ms();
        let mut core = Core {
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed.unwrap_or(0)),
            config,
            store,
            retained,
            sessions: Vec::new(),
            free_sids: Vec::new(),
            session_ids: BTreeMap::new(),
            conns: BTreeMap::new(),
            online_count: 0,
            router: Router::new(),
            shared: Groups::default(),
            shared_scratch: Vec::new(),
            sys_retained: BTreeMap::new(),
            timers: BTreeSet::new(),
            stats: Stats::default(),
            started_at: now,
            wall_at_start_ms,
            bytes,
            scratch: Vec::new(),
            pending_ops: Vec::new(),
            full_sessions: BTreeSet::new(),
            paused: BTreeSet::new(),
            store_health: Default::default(),
            queued_bytes_total: 0,
            checked: None,
            exchanges: BTreeMap::new(),
            authenticated: None,
            scram_decoy_secret: [0; 32],
        };
        core.rng.fill_bytes(&mut core.scram_decoy_secret);
        let loaded: Vec<(String, StoredSession)> = core
            .store
            .state()
            .sessions
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let mut wills: Vec<(Sid, StoredWill)> = Vec::new();
        let forget_qos2 = core.config.planted_bug == Some(super::PlantedBug::LoseQos2ReceiveIds);
        for (id, mut stored) in loaded {
            if forget_qos2 {
                // The planted bug (tests only): QoS 2 receive ids do not survive a restart.
                stored.incoming_qos2.clear();
            }
            let client_id: Arc<str> = id.as_str().into();
            // Its expiry counts from when it went offline, across the restart; a session
            // whose connection was open when the broker stopped (no such time) counts from now.
            let expires_at = stored.expiry_interval_secs.map(|secs| {
                let interval = Duration::from_secs(secs.into());
                let offline_for = stored.offline_since_ms.map_or(Duration::ZERO, |at| {
                    Duration::from_millis(wall_at_start_ms.saturating_sub(at))
                });
                now + interval.saturating_sub(offline_for)
            });
            if let Some(at) = expires_at {
                core.timers
                    .insert((at, Timer::SessionExpiry(client_id.clone())));
            }
            // A subscription beyond `max_topic_levels` (stored before the limit existed, or
            // under a larger one) is dropped here rather than served: it is what a client
            // could no longer subscribe to, and loading it must not endanger the broker.
            let too_deep: Vec<TopicFilter> = stored
                .subscriptions
                .keys()
                .filter(|f| topic_levels(f) > core.config.max_topic_levels)
                .cloned()
                .collect();
            let mut stored = stored;
            for filter in too_deep {
                tracing::warn!(
                    client_id = &*client_id,
                    levels = topic_levels(&filter),
                    max_topic_levels = core.config.max_topic_levels,
                    "dropping a stored subscription with more levels than max_topic_levels"
                );
                let op = StoreOp::Unsubscribed {
                    client_id: id.clone(),
                    filter,
                };
                stored.apply(&op);
                core.pending_ops.push(op);
            }
            let routes: Vec<(TopicFilter, Route)> = stored
                .subscriptions
                .iter()
                .map(|(filter, sub)| {
                    let route = Route {
                        options: sub.options,
                        subscription_id: sub.subscription_id,
                    };
                    (filter.clone(), route)
                })
                .collect();
            let will = stored.will.as_deref().cloned();
            let queued_bytes = stored.queued.iter().map(message_bytes).sum();
            let inflight_bytes = stored
                .outgoing
                .iter()
                .map(|(_, state)| match state {
                    OutgoingState::Publish(m) => message_bytes(m),
                    OutgoingState::PubRel => 0,
                })
                .sum();
            core.queued_bytes_total += queued_bytes;
            let sid = core.insert_session(Session {
                client_id,
                conn: None,
                persistent: true,
                expires_at,
                pending_will: None,
                ids_ordered: ids_in_order(&stored),
                stored,
                queued_bytes,
                inflight_bytes,
            });
            for (filter, route) in routes {
                core.add_route(sid, &filter, route);
            }
            if let Some(will) = will {
                wills.push((sid, will));
            }
        }
        tracing::info!(
            sessions = core.session_ids.len(),
            retained = core.retained.len(),
            "broker state loaded"
        );
        // A stored will belongs to a connection that was open when the broker stopped without
        // a DISCONNECT from the client (a crash): that connection ended uncleanly, so its will
        // is published now [MQTT-3.1.2-8]. The messages it produces are queued for offline
        // sessions, so no action is lost. (In client-id order, as the store lists sessions.)
        let mut ignored = Vec::new();
        for (sid, will) in wills {
            tracing::info!(
                client_id = core.client_id(sid),
                "publishing the will of a connection lost in a restart"
            );
            let op = StoreOp::WillCleared {
                client_id: core.op_id(sid),
            };
            core.emit_session(sid, op);
            core.stats.wills_published += 1;
            core.publish(Some(sid), will.message, now, &mut ignored);
        }
        core.flush_store(now, &mut Vec::new());
        if core.config.sys_interval_secs > 0 {
            core.timers.insert((now, Timer::Sys));
        }
        if core.config.sync_interval_ms > 0 {
            let at = now + Duration::from_millis(core.config.sync_interval_ms);
            core.timers.insert((at, Timer::Sync));
        }
        core
    }

    /// The in-memory fold of every session (clean ones included) and retained message, built
    /// on demand (tests compare it with the store's).
    pub fn state(&self) -> DurableState {
        DurableState {
            sessions: self
                .session_ids
                .iter()
                .filter_map(|(id, &sid)| Some((id.to_string(), self.session(sid)?.stored.clone())))
                .collect(),
            retained: self.retained.clone(),
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The counters, with the gauges computed now.
    pub fn stats(&self, now: Instant) -> Stats {
        let mut stats = self.stats.clone();
        stats.uptime_secs = now.saturating_duration_since(self.started_at).as_secs();
        stats.clients_connected = self.online_count as u64;
        stats.sessions = self.session_ids.len() as u64;
        let live = || self.sessions.iter().flatten();
        stats.messages_queued = live().map(|s| s.stored.queued.len() as u64).sum();
        stats.messages_inflight = live().map(|s| s.stored.outgoing.len() as u64).sum();
        stats.queued_bytes = self.queued_bytes_total as u64;
        stats.inflight_bytes = live().map(|s| s.inflight_bytes as u64).sum();
        stats.outbound_bytes = self
            .bytes
            .outbound_queued
            .load(std::sync::atomic::Ordering::Relaxed);
        stats.retained = self.retained.len() as u64;
        stats.subscriptions = (self.router.len() + self.shared.len()) as u64;
        stats.bytes_received = self
            .bytes
            .received
            .load(std::sync::atomic::Ordering::Relaxed);
        stats.bytes_sent = self.bytes.sent.load(std::sync::atomic::Ordering::Relaxed);
        stats.store_failure = self.store_status();
        stats
    }

    /// Every connected client, in client-id order.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let mut out: Vec<ClientInfo> = self
            .conns
            .iter()
            .filter_map(|(&conn, c)| {
                let online = c.online.as_ref()?;
                let session = self.session(online.sid)?;
                Some(ClientInfo {
                    client_id: online.client_id.to_string(),
                    conn,
                    peer: c.peer.clone(),
                    protocol: online.protocol,
                    username: online.username.as_deref().map(str::to_string),
                    keep_alive_secs: online.keep_alive.as_secs() as u16,
                    persistent: session.persistent,
                    subscriptions: session.stored.subscriptions.len(),
                    inflight: session.stored.outgoing.len(),
                    queued: session.stored.queued.len(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    // ----- sessions by index -----

    fn session(&self, sid: Sid) -> Option<&Session> {
        self.sessions.get(sid as usize)?.as_deref()
    }

    fn session_mut(&mut self, sid: Sid) -> Option<&mut Session> {
        self.sessions.get_mut(sid as usize)?.as_deref_mut()
    }

    fn sid_of(&self, client_id: &str) -> Option<Sid> {
        self.session_ids.get(client_id).copied()
    }

    fn client_id(&self, sid: Sid) -> &str {
        self.session(sid).map_or("", |s| &s.client_id)
    }

    /// Files a new session under a free index.
    fn insert_session(&mut self, session: Session) -> Sid {
        let client_id = session.client_id.clone();
        let sid = match self.free_sids.pop() {
            Some(sid) => {
                self.sessions[sid as usize] = Some(Box::new(session));
                sid
            }
            None => {
                self.sessions.push(Some(Box::new(session)));
                (self.sessions.len() - 1) as Sid
            }
        };
        self.session_ids.insert(client_id, sid);
        sid
    }

    /// The client id a store op of `sid` carries: its own when the op goes to the store; empty
    /// (no allocation) for a session kept only in memory, whose ops are applied and dropped.
    fn op_id(&self, sid: Sid) -> String {
        match self.session(sid) {
            Some(s) if s.persistent => s.client_id.to_string(),
            _ => String::new(),
        }
    }

    /// Queues the op `make` builds (given the client id) for the store when `sid`'s session is
    /// persistent. The caller makes the change in memory with the `StoredSession` method that
    /// folds that op, so the two cannot differ; a delivery to an in-memory session builds no
    /// op at all.
    fn log_op(&mut self, sid: Sid, make: impl FnOnce(String) -> StoreOp) {
        if let Some(session) = self.session(sid).filter(|s| s.persistent) {
            let op = make(session.client_id.to_string());
            self.pending_ops.push(op);
        }
    }

    /// Applies a session op to `sid` and, when the session is persistent, queues it for the
    /// store (`flush_store`). Build the op's client id with `op_id`.
    fn emit_session(&mut self, sid: Sid, op: StoreOp) {
        self.account(sid, &op);
        let Some(session) = self
            .sessions
            .get_mut(sid as usize)
            .and_then(|s| s.as_deref_mut())
        else {
            return;
        };
        if session.persistent {
            session.stored.apply(&op);
            self.pending_ops.push(op);
        } else {
            session.stored.apply_owned(op);
        }
    }

    /// Keeps `sid`'s byte counts (and the broker's total) in step with `op`, about to be
    /// applied to its session (`emit_session`; the paths that change a session without an op
    /// count for themselves).
    fn account(&mut self, sid: Sid, op: &StoreOp) {
        let Some(session) = self.session(sid) else {
            return;
        };
        let stored = &session.stored;
        let outgoing = |id: &PacketId| match stored.outgoing.iter().find(|(i, _)| *i == id.get()) {
            Some((_, OutgoingState::Publish(m))) => message_bytes(m),
            _ => 0,
        };
        let front = || stored.queued.front().map_or(0, message_bytes);
        let (queued_in, queued_out, inflight_in, inflight_out) = match op {
            StoreOp::Queued { message, .. } => (message_bytes(message), 0, 0, 0),
            StoreOp::QueueFrontDropped { .. } => (0, front(), 0, 0),
            StoreOp::Dequeued { .. } => (0, front(), front(), 0),
            StoreOp::SentInFlight { message, .. } => (0, 0, message_bytes(message), 0),
            StoreOp::OutgoingCompleted { packet_id, .. }
            | StoreOp::PubRecReceived { packet_id, .. } => (0, 0, 0, outgoing(packet_id)),
            _ => return,
        };
        if let Some(session) = self.session_mut(sid) {
            session.queued_bytes = session.queued_bytes + queued_in - queued_out;
            session.inflight_bytes = session.inflight_bytes + inflight_in - inflight_out;
        }
        self.queued_bytes_total = self.queued_bytes_total + queued_in - queued_out;
    }

    /// A message of `size` bytes fits `session`'s in-flight byte bound (one always does).
    fn inflight_bytes_fit(&self, session: &Session, size: usize) -> bool {
        session.inflight_bytes == 0
            || session.inflight_bytes + size <= self.config.max_inflight_bytes
    }

    /// Sockets open (connected or still before CONNECT).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// A new socket. It must send CONNECT within `connect_timeout_secs`.
    pub fn opened(&mut self, conn: ConnId, peer: String, now: Instant) {
        self.stats.connections_accepted += 1;
        self.conns.insert(
            conn,
            Conn {
                peer,
                last_seen: now,
                online: None,
                identity: None,
            },
        );
        let at = now + Duration::from_secs(self.config.connect_timeout_secs);
        self.timers.insert((at, Timer::ConnectTimeout(conn)));
    }

    /// The transport vouches for this connection's user name (see `Conn::identity`).
    pub fn set_identity(&mut self, conn: ConnId, identity: String) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.identity = Some(identity.into());
        }
    }

    /// The earliest time `on_timer` has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// A packet decoded on `conn` (through `handle`, which first weighs the store's health).
    fn handle_packet(&mut self, conn: ConnId, packet: Packet, now: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            // Closed already: whatever the client sent after is ignored [MQTT-3.1.4-5].
            return;
        };
        if c.online.is_none() {
            // The CONNECT timer (set at `opened`, when `last_seen` was set) has no more work:
            // drop it now rather than hold an entry per connection until it fires.
            let at = c.last_seen + Duration::from_secs(self.config.connect_timeout_secs);
            self.timers.remove(&(at, Timer::ConnectTimeout(conn)));
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_seen = now;
        let Some(online) = &c.online else {
            if self.exchanges.contains_key(&conn) {
                return self.on_auth_before_connack(conn, packet, now, out);
            }
            match packet {
                Packet::Connect(connect) => self.on_connect(conn, *connect, now, out),
                other => {
                    // Not even a CONNACK for a client that does not start with CONNECT.
                    self.stats.protocol_errors += 1;
                    tracing::info!(
                        conn,
                        packet = ?other.packet_type(),
                        "[MQTT-3.1.0-1] first packet is not CONNECT; closing"
                    );
                    self.end_connection(conn, false, now, out);
                }
            }
            return;
        };
        let v5 = online.protocol == ProtocolVersion::V5;
        match packet {
            Packet::Publish(publish) => self.on_publish(conn, publish, now, out),
            Packet::PubAck(ack) => self.on_puback(conn, ack, now, out),
            Packet::PubRec(ack) => self.on_pubrec(conn, ack, now, out),
            Packet::PubRel(ack) => self.on_pubrel(conn, ack, out),
            Packet::PubComp(ack) => self.on_pubcomp(conn, ack, now, out),
            Packet::Subscribe(subscribe) => self.on_subscribe(conn, subscribe, now, out),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(conn, unsubscribe, out),
            Packet::PingReq => out.push(Action::Send {
                conn,
                packet: Packet::PingResp,
            }),
            Packet::Disconnect(disconnect) => self.on_disconnect(conn, disconnect, now, out),
            Packet::Connect(_) => self.violation(
                conn,
                ReasonCode::ProtocolError,
                "[MQTT-3.1.0-2] second CONNECT on one connection",
                now,
                out,
            ),
            Packet::Auth(auth) if v5 => self.on_reauth(conn, auth, now, out),
            other => {
                let why = match other.packet_type() {
                    codec::PacketType::ConnAck => "CONNACK from a client",
                    codec::PacketType::SubAck => "SUBACK from a client",
                    codec::PacketType::UnsubAck => "UNSUBACK from a client",
                    codec::PacketType::PingResp => "PINGRESP from a client",
                    _ => "packet not allowed from a client",
                };
                self.violation(conn, ReasonCode::ProtocolError, why, now, out)
            }
        }
    }

    /// A CONNECT whose user name and password the connection already checked (stepping
    /// `Authenticator::verifier` beside the core, so a slow hash holds up no one else): the
    /// same as `handle`, with that outcome instead of a check here.
    pub fn handle_connect(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        outcome: AuthOutcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.checked = Some((conn, outcome));
        self.handle(conn, Packet::Connect(connect), now, out);
        self.checked = None;
    }

    /// PUBACKs that came in a row on `conn`: the same as `handle` for each in turn, with the
    /// connection and session looked up once and the window refilled once at the end.
    pub fn pubacks(&mut self, conn: ConnId, ids: &[PacketId], now: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(sid) = c.online.as_ref().map(|o| o.sid) else {
            // Not connected: the first packet is not CONNECT; `handle` says so and closes.
            for &id in ids {
                self.handle(conn, Packet::PubAck(Ack::new(id)), now, out);
            }
            return;
        };
        c.last_seen = now;
        let mut completed = false;
        for &id in ids {
            match self.outgoing_state(sid, id) {
                Some(OutgoingState::Publish(m)) if m.qos == QoS::AtLeastOnce => {
                    let size = message_bytes(m);
                    self.log_op(sid, |client_id| StoreOp::OutgoingCompleted {
                        client_id,
                        packet_id: id,
                    });
                    if let Some(session) = self.session_mut(sid) {
                        session.stored.complete_outgoing(id);
                        session.inflight_bytes -= size;
                    }
                    completed = true;
                }
                _ => tracing::debug!(conn, id, "PUBACK for no QoS 1 message"),
            }
        }
        if completed {
            self.pump_after_ack(conn, sid, now, out);
        }
    }

    /// The I/O layer saw `conn` end (or fail). Not preceded by DISCONNECT: the will goes out.
    pub fn ended(&mut self, conn: ConnId, cause: EndCause, now: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let online_protocol = c.online.as_ref().map(|o| o.protocol);
        match cause {
            EndCause::PeerClosed | EndCause::Io(_) => {
                tracing::debug!(conn, ?cause, "connection lost");
            }
            EndCause::SlowConsumer => {
                self.stats.slow_consumers += 1;
                tracing::warn!(conn, "client reads too slowly; closing its connection");
            }
            EndCause::Decode(error) => {
                self.stats.protocol_errors += 1;
                tracing::info!(conn, %error, "bad packet; closing");
                match online_protocol {
                    // A wrong protocol name only closes [MQTT-3.1.2-1]: the CONNECT may come
                    // from a 5.0 client (level 5), which reads a 3.1.1-form CONNACK 0x01 as
                    // malformed and 0x01 as no 5.0 reason code [MQTT-3.2.2-8].
                    None if error.reason_code() == ReasonCode::UnsupportedProtocolVersion
                        && !matches!(error, DecodeError::InvalidProtocolName { .. }) =>
                    {
                        // [MQTT-3.1.2-2] CONNACK 0x01 in the 3.1.1 form every version can read.
                        // (`refuse` counts it in `connections_refused`, once.)
                        self.refuse(
                            conn,
                            ProtocolVersion::V311,
                            ReasonCode::UnsupportedProtocolVersion,
                            now,
                            out,
                        );
                        return;
                    }
                    Some(ProtocolVersion::V5) => out.push(Action::Send {
                        conn,
                        packet: disconnect(error.reason_code()),
                    }),
                    _ => {}
                }
            }
        }
        self.end_connection(conn, true, now, out);
    }

    /// Closes the connection of `client_id` as if its network had failed (its will is
    /// published). False when the client is not connected.
    pub fn kick(&mut self, client_id: &str, now: Instant, out: &mut Vec<Action>) -> bool {
        let Some(conn) = self.conn_of(client_id) else {
            return false;
        };
        tracing::info!(client_id, conn, "kicked");
        self.send_disconnect_v5(conn, ReasonCode::AdministrativeAction, out);
        self.end_connection(conn, true, now, out);
        true
    }

    /// Runs the timers due at `now`: connect timeouts, keepalive expiry, session expiry,
    /// `$SYS` publication, periodic store sync.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::ConnectTimeout(conn) => {
                    if self.conns.get(&conn).is_some_and(|c| c.online.is_none()) {
                        tracing::debug!(conn, "no CONNECT in time; closing");
                        self.end_connection(conn, false, now, out);
                    }
                }
                Timer::KeepAlive(conn) => self.check_keep_alive(conn, now, out),
                Timer::SessionExpiry(client_id) => {
                    let Some(sid) = self.sid_of(&client_id) else {
                        continue;
                    };
                    let expired = self.session(sid).is_some_and(|s| {
                        s.conn.is_none() && s.expires_at.is_some_and(|at| at <= now)
                    });
                    if expired {
                        tracing::info!(client_id = &*client_id, "session expired");
                        // A delayed will is due at the latest when its session ends.
                        self.publish_pending_will(sid, now, out);
                        self.drop_session(sid);
                    }
                }
                Timer::WillDelay(client_id) => {
                    let Some(sid) = self.sid_of(&client_id) else {
                        continue;
                    };
                    let due = self.session(sid).is_some_and(|s| {
                        s.conn.is_none()
                            && s.pending_will
                                .as_ref()
                                .is_some_and(|pending| pending.0 <= now)
                    });
                    if due {
                        self.publish_pending_will(sid, now, out);
                    }
                }
                Timer::Sys => {
                    self.publish_sys(now, out);
                    let at = now + Duration::from_secs(self.config.sys_interval_secs);
                    self.timers.insert((at, Timer::Sys));
                }
                Timer::Sync => {
                    self.sync_store(now, out);
                    let at = now + Duration::from_millis(self.config.sync_interval_ms);
                    self.timers.insert((at, Timer::Sync));
                }
            }
        }
    }

    /// Back-pressure check, before `handle` is given a PUBLISH from `conn`: the client id of
    /// an online session that would have to drop a queued QoS 1/2 message to take this one
    /// (its queue is at `max_queued_messages` and its in-flight window is full), or `None`
    /// when the PUBLISH can be handled now. The server then holds the PUBLISH (unacknowledged)
    /// and stops reading `conn` until this answers `None`. Never blocks QoS 0, a client's
    /// publish to its own session, or delivery to offline sessions (see the module doc).
    pub fn publish_blocker(&mut self, conn: ConnId, publish: &Publish) -> Option<Arc<str>> {
        if publish.qos_pid == QosPid::AtMostOnce {
            return None;
        }
        let over_budget = self.over_budget();
        if self.full_sessions.is_empty() && !over_budget {
            return None;
        }
        // Forget sessions that made room or went offline.
        let mut full = std::mem::take(&mut self.full_sessions);
        full.retain(|&sid| self.queue_full_online(sid));
        self.full_sessions = full;
        if self.full_sessions.is_empty() && !over_budget {
            return None;
        }
        let online = self.online(conn)?;
        let publisher = online.sid;
        // A PUBLISH with an alias alone goes where its alias's topic goes (an unknown alias
        // blocks nothing: the core refuses it).
        let topic = match publish.properties.topic_alias {
            Some(alias) if publish.topic.is_empty() => {
                online.aliases.as_ref()?.inbound_topic(alias)?.clone()
            }
            _ => publish.topic.clone(),
        };
        let mut blocker = None;
        // Past the budget: an online subscriber that would have to queue this message (the
        // one with the most queued bytes), so healthy subscribers with room in their window
        // are never the ones waited on.
        let mut waiting: Option<(usize, Sid)> = None;
        let full = &self.full_sessions;
        let sessions = &self.sessions;
        self.router.for_each_match(&topic, |&sid, route| {
            if blocker.is_some() || route.options.qos == QoS::AtMostOnce || sid == publisher {
                return;
            }
            if full.contains(&sid) {
                blocker = Some(sid);
            } else if over_budget {
                let session = sessions.get(sid as usize).and_then(|s| s.as_deref());
                if let Some(s) = session.filter(|s| s.conn.is_some()) {
                    // (A 5.0 Receive Maximum below `max_inflight_messages` fills the window
                    // sooner; its queue then fills and is caught by the first test.)
                    let must_queue = !s.stored.queued.is_empty()
                        || s.stored.outgoing.len()
                            >= usize::from(self.config.max_inflight_messages)
                        || s.inflight_bytes >= self.config.max_inflight_bytes;
                    if must_queue && waiting.is_none_or(|(bytes, _)| s.queued_bytes > bytes) {
                        waiting = Some((s.queued_bytes, sid));
                    }
                }
            }
        });
        let blocker = blocker
            .or(waiting.map(|(_, sid)| sid))
            .or_else(|| self.shared_blocker(publisher, &topic))?;
        Some(self.session(blocker)?.client_id.clone())
    }

    /// `publish_blocker` for shared groups: a group whose online members all have a full
    /// queue (a member with room is picked instead, see `forward_shared`) holds the publisher
    /// on its first such member, so a message is not dropped from an online member's queue.
    fn shared_blocker(&mut self, publisher: Sid, topic: &str) -> Option<Sid> {
        if self.shared.is_empty() {
            return None;
        }
        let mut gids = std::mem::take(&mut self.shared_scratch);
        gids.clear();
        self.shared.matching(topic, &mut gids);
        let mut blocker = None;
        for &gid in &gids {
            let mut online = self
                .shared
                .members(gid)
                .filter(|&sid| {
                    sid != publisher && self.session(sid).is_some_and(|s| s.conn.is_some())
                })
                .peekable();
            let Some(&first) = online.peek() else {
                continue;
            };
            if online.all(|sid| self.full_sessions.contains(&sid)) {
                blocker = Some(first);
                break;
            }
        }
        self.shared_scratch = gids;
        blocker
    }

    /// The broker-wide budget for waiting messages is used up (`max_queued_bytes_total`).
    pub fn over_budget(&self) -> bool {
        let outbound = self
            .bytes
            .outbound_queued
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        self.queued_bytes_total + outbound >= self.config.max_queued_bytes_total
    }

    /// A QoS 0 PUBLISH for a connection was dropped because the budget is used up.
    pub fn qos0_dropped_memory(&mut self) {
        self.stats.messages_sent = self.stats.messages_sent.saturating_sub(1);
        self.stats.messages_dropped += 1;
        self.stats.dropped_memory += 1;
    }

    /// True when `sid` is online and a QoS 1/2 message to it would overflow its queue.
    fn queue_full_online(&self, sid: Sid) -> bool {
        let Some(session) = self.session(sid) else {
            return false;
        };
        let Some(conn) = session.conn else {
            return false;
        };
        let stored = &session.stored;
        let limit = self.online(conn).map_or(0, |o| o.inflight_limit);
        (stored.queued.len() >= self.config.max_queued_messages
            || session.queued_bytes >= self.config.max_queued_bytes)
            && !(stored.queued.is_empty() && stored.outgoing.len() < limit)
    }

    /// The connection holding `client_id`'s session, if it is online.
    fn conn_of(&self, client_id: &str) -> Option<ConnId> {
        self.session(self.sid_of(client_id)?)?.conn
    }

    /// The server stopped (`true`) or resumed (`false`) reading `conn` for back-pressure.
    /// A paused connection is exempt from keepalive; resuming restarts its period.
    pub fn set_paused(&mut self, conn: ConnId, paused: bool, now: Instant) {
        if paused {
            self.paused.insert(conn);
        } else if self.paused.remove(&conn) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.last_seen = now;
            }
        }
    }

    /// Ends the connection of `client_id` as a slow consumer (its will is published, its
    /// session keeps what it holds): the server's way out when publishers waited on it too
    /// long without progress. False when it is not connected.
    pub fn end_slow_consumer(
        &mut self,
        client_id: &str,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(conn) = self.conn_of(client_id) else {
            return false;
        };
        self.ended(conn, EndCause::SlowConsumer, now, out);
        true
    }

    /// The connection's outgoing queue could not take a QoS 0 PUBLISH: it is dropped.
    pub fn qos0_dropped(&mut self) {
        self.stats.messages_sent = self.stats.messages_sent.saturating_sub(1);
        self.stats.messages_dropped += 1;
        self.stats.dropped_slow_consumer += 1;
    }

    /// Closes every connection (5.0 clients are told why), keeps persistent sessions, syncs the
    /// store. Wills are not published: the clients did not fail.
    pub fn shutdown(&mut self, now: Instant, out: &mut Vec<Action>) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.send_disconnect_v5(conn, ReasonCode::ServerShuttingDown, out);
            out.push(Action::Close { conn });
            // Not a failure of the client: its will must not fire at the next start either.
            if let Some(sid) = self.online(conn).map(|o| o.sid) {
                self.clear_will(sid);
            }
        }
        self.conns.clear();
        self.online_count = 0;
        self.sync_store(now, out);
    }

    // ----- connection lifecycle -----

    fn on_connect(&mut self, conn: ConnId, connect: Connect, now: Instant, out: &mut Vec<Action>) {
        let protocol = connect.protocol;
        let v5 = protocol == ProtocolVersion::V5;
        let authenticated = self.authenticated.take().filter(|a| a.conn == conn);
        if v5 && authenticated.is_none() && connect.properties.authentication_method.is_some() {
            return self.start_exchange(conn, connect, now, out);
        }
        if let (Some(a), Some(name)) = (&authenticated, &connect.username) {
            if a.username != name.as_str() {
                // One identity per connection: the exchange proved client-first's user.
                tracing::info!(
                    conn,
                    "CONNECT's user name is not the one SCRAM authenticated"
                );
                return self.refuse(conn, protocol, ReasonCode::NotAuthorized, now, out);
            }
        }
        let assigned = connect.client_id.is_empty();
        if assigned && !v5 && !connect.clean_start {
            tracing::info!(conn, "[MQTT-3.1.3-8] empty client id with clean session 0");
            return self.refuse(
                conn,
                protocol,
                ReasonCode::ClientIdentifierNotValid,
                now,
                out,
            );
        }
        let identity = self
            .conns
            .get(&conn)
            .and_then(|c| c.identity.as_deref())
            .map(str::to_string);
        let vouched = identity.is_some() || authenticated.is_some();
        let username = identity
            .or_else(|| authenticated.as_ref().map(|a| a.username.clone()))
            .or_else(|| connect.username.as_ref().map(|u| u.to_string()));
        if username.is_none() && !self.config.allow_anonymous {
            return self.refuse(conn, protocol, ReasonCode::NotAuthorized, now, out);
        }
        // Checked by the connection already (`handle_connect`), or here. A name the
        // transport vouches for is not checked against the password file (as mosquitto's
        // use_identity_as_username); the ACL applies to it all the same.
        let checked = self.checked.take().filter(|(c, _)| *c == conn);
        let outcome = if vouched {
            AuthOutcome::Allowed
        } else {
            match checked {
                Some((_, outcome)) => outcome,
                None => self
                    .config
                    .authenticator
                    .authenticate(username.as_deref(), connect.password.as_deref()),
            }
        };
        match outcome {
            AuthOutcome::Allowed => {}
            AuthOutcome::BadUserNameOrPassword => {
                return self.refuse(conn, protocol, ReasonCode::BadUserNameOrPassword, now, out)
            }
            AuthOutcome::NotAuthorized => {
                return self.refuse(conn, protocol, ReasonCode::NotAuthorized, now, out)
            }
        }
        if !v5 && self.server_keep_alive(connect.keep_alive_secs).is_some() {
            // 3.1.1 cannot be told a Server Keep Alive (mosquitto refuses the same way).
            tracing::info!(
                conn,
                keep_alive_secs = connect.keep_alive_secs,
                "3.1.1 Keep Alive above max_keepalive_secs; refusing"
            );
            return self.refuse(
                conn,
                protocol,
                ReasonCode::ClientIdentifierNotValid,
                now,
                out,
            );
        }
        let client_id: Arc<str> = if assigned {
            self.assign_client_id()
        } else {
            connect.client_id.as_str().into()
        };
        let mut will = connect.will;
        if let Some(w) = &will {
            if topic_levels(&w.topic) > self.config.max_topic_levels {
                tracing::info!(conn, "will topic has more levels than max_topic_levels");
                if v5 {
                    return self.refuse(conn, protocol, ReasonCode::TopicNameInvalid, now, out);
                }
                // [MQTT-3.2.2-6] no 3.1.1 return code applies: close without CONNACK.
                self.stats.connections_refused += 1;
                return self.end_connection(conn, false, now, out);
            }
            if w.topic.starts_with('$')
                || !self
                    .config
                    .authenticator
                    .can_publish(username.as_deref(), &client_id, &w.topic)
            {
                tracing::info!(conn, topic = %w.topic, "will topic not authorised");
                return self.refuse(conn, protocol, ReasonCode::NotAuthorized, now, out);
            }
            if v5 && w.qos.as_u8() > self.config.max_qos {
                return self.refuse(conn, protocol, ReasonCode::QoSNotSupported, now, out);
            }
            if v5 && w.retain && !self.config.retain_available {
                return self.refuse(conn, protocol, ReasonCode::RetainNotSupported, now, out);
            }
        }
        if let Some(w) = &mut will {
            // 3.1.1 has no way to refuse these; the will is published within the limits.
            w.qos = w
                .qos
                .min(QoS::from_u8(self.config.max_qos).unwrap_or(QoS::ExactlyOnce));
            w.retain &= self.config.retain_available;
        }
        let existing = self.sid_of(&client_id);
        let owner = Owner::of(username.as_deref());
        if let Some(current) = existing.and_then(|sid| self.session(sid)?.stored.owner.as_ref()) {
            if *current != owner && self.config.session_takeover == SessionTakeover::SameUser {
                // Another user's session: not resumed, not taken over, not discarded by a
                // clean start (issue 14, defect 3).
                tracing::warn!(
                    conn,
                    client_id = &*client_id,
                    username = username.as_deref(),
                    "CONNECT refused: the client id's session belongs to another user"
                );
                self.stats.sessions_refused_other_user += 1;
                return self.refuse(conn, protocol, ReasonCode::NotAuthorized, now, out);
            }
        }
        let existing_conn = existing.and_then(|sid| self.session(sid)?.conn);
        if existing_conn.is_none() && self.online_count >= self.config.max_connections {
            tracing::warn!(conn, "max_connections reached; refusing CONNECT");
            return self.refuse(conn, protocol, ReasonCode::ServerUnavailable, now, out);
        }
        if let Some(rt) = existing.and_then(|sid| self.session_mut(sid)) {
            if rt.pending_will.take().is_some() {
                // [MQTT-3.1.3-9 in 5.0] a new connection before the delay ends: no will.
                tracing::debug!(
                    client_id = &*client_id,
                    "delayed will cancelled by reconnect"
                );
            }
        }
        if let Some(old) = existing_conn {
            // [MQTT-3.1.4-2] the older connection goes; see the module doc for its will.
            tracing::info!(
                client_id = &*client_id,
                old,
                new = conn,
                "session taken over"
            );
            self.stats.takeovers += 1;
            self.send_disconnect_v5(old, ReasonCode::SessionTakenOver, out);
            self.end_connection(old, true, now, out);
        }

        // Session expiry: 3.1.1 clean session ends with the connection, a persistent one never
        // expires; 5.0 says it in the CONNECT (absent = 0, 0xFFFFFFFF = never).
        let connect_expiry_secs = if v5 {
            connect.properties.session_expiry_interval_secs.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = (connect_expiry_secs != u32::MAX).then_some(connect_expiry_secs);
        // The session this connection resumes (a `Sid` is taken again after a takeover:
        // ending the old connection may have dropped a clean session).
        let existing = self.sid_of(&client_id);
        let session_present = existing.is_some() && !connect.clean_start;
        let sid = match existing {
            Some(sid) if session_present => {
                let current = self
                    .session(sid)
                    .and_then(|s| s.stored.expiry_interval_secs);
                if current != expiry {
                    let op = StoreOp::SessionExpiryChanged {
                        client_id: self.op_id(sid),
                        expiry_interval_secs: expiry,
                    };
                    self.emit_session(sid, op);
                }
                sid
            }
            _ => {
                if let Some(sid) = existing {
                    // [MQTT-3.1.2-6] a clean start discards the previous session.
                    self.drop_session(sid);
                }
                let persistent = expiry != Some(0);
                if persistent {
                    self.pending_ops.push(StoreOp::SessionCreated {
                        client_id: client_id.to_string(),
                        expiry_interval_secs: expiry,
                        protocol_level: protocol.level(),
                    });
                }
                self.insert_session(Session {
                    client_id: client_id.clone(),
                    conn: None,
                    persistent,
                    expires_at: None,
                    pending_will: None,
                    stored: StoredSession::new(expiry, protocol.level()),
                    ids_ordered: true,
                    queued_bytes: 0,
                    inflight_bytes: 0,
                })
            }
        };
        if let Some(rt) = self.session_mut(sid) {
            rt.conn = Some(conn);
            rt.expires_at = None;
        }
        if self
            .session(sid)
            .is_some_and(|s| s.stored.offline_since_ms.is_some())
        {
            let op = StoreOp::SessionOffline {
                client_id: self.op_id(sid),
                at_ms: None,
            };
            self.emit_session(sid, op);
        }
        if self.session(sid).and_then(|s| s.stored.owner.as_ref()) != Some(&owner) {
            // A new session, one stored before owners were recorded, or (`any-user`) one
            // resumed by another user: it is this user's from now on.
            let op = StoreOp::SessionOwner {
                client_id: self.op_id(sid),
                owner: username.clone(),
            };
            self.emit_session(sid, op);
        }
        if let Some(w) = &will {
            // Kept with the session so a broker crash does not lose it (see `Core::new`).
            let message = self.will_message(w, now);
            let op = StoreOp::WillStored {
                client_id: self.op_id(sid),
                will: StoredWill {
                    message,
                    delay_interval_secs: w.properties.will_delay_interval_secs.unwrap_or(0),
                },
            };
            self.emit_session(sid, op);
        } else {
            self.clear_will(sid);
        }

        let receive_maximum = connect
            .properties
            .receive_maximum
            .map_or(u16::MAX, |r| r.get());
        let inflight_limit = self.config.max_inflight_messages.min(receive_maximum) as usize;
        // [MQTT-3.2.2-22] the client's Keep Alive, unless CONNACK gives a Server Keep Alive.
        let server_keep_alive = self.server_keep_alive(connect.keep_alive_secs);
        let keep_alive_secs = server_keep_alive.unwrap_or(connect.keep_alive_secs);
        let keep_alive = Duration::from_secs(keep_alive_secs.into());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.online = Some(Box::new(Online {
                client_id: client_id.clone(),
                sid,
                protocol,
                username: username.map(Arc::from),
                will: will.map(Box::new),
                keep_alive,
                inflight_limit,
                max_packet_size: v5
                    .then_some(connect.properties.maximum_packet_size.map(|m| m.get()))
                    .flatten(),
                connect_expiry_secs,
                enhanced_auth: authenticated.is_some(),
                alias_maximum_outbound: if v5 {
                    connect
                        .properties
                        .topic_alias_maximum
                        .unwrap_or(0)
                        .min(self.config.topic_alias_maximum_outbound)
                } else {
                    0
                },
                alias_maximum_inbound: 0,
                aliases: None,
            }));
        }
        self.online_count += 1;
        if !keep_alive.is_zero() {
            self.timers
                .insert((now + keep_alive.mul_f32(1.5), Timer::KeepAlive(conn)));
        }

        let mut properties = ConnAckProperties::default();
        if v5 {
            if assigned {
                properties.assigned_client_identifier = MqttStr::new(&client_id).ok();
            }
            properties.maximum_packet_size = std::num::NonZeroU32::new(self.config.max_packet_size);
            if !self.config.retain_available {
                properties.retain_available = Some(false);
            }
            if self.config.max_qos < 2 {
                properties.maximum_qos = QoS::from_u8(self.config.max_qos);
            }
            properties.shared_subscription_available = Some(self.config.shared_subscriptions);
            properties.server_keep_alive_secs = server_keep_alive;
            properties.receive_maximum = std::num::NonZeroU16::new(self.config.max_incoming_qos2);
            if let Some(a) = authenticated {
                // [MQTT-4.12.0-5] the CONNECT's method, with server-final.
                properties.authentication_method = Some(MqttStr::from_static(scram::METHOD));
                properties.authentication_data = Some(a.server_final);
            }
            // Absent means 0: no aliases accepted [MQTT-3.2.2-18]. Left out (so none are
            // accepted) where it would make the CONNACK larger than the client's Maximum Packet
            // Size [MQTT-3.1.2-24].
            let alias_maximum = self.config.topic_alias_maximum;
            if alias_maximum > 0 {
                properties.topic_alias_maximum = Some(alias_maximum);
                let with = Packet::ConnAck(ConnAck {
                    session_present,
                    reason_code: ReasonCode::Success,
                    properties: properties.clone().into(),
                });
                let room = connect
                    .properties
                    .maximum_packet_size
                    .map(|m| m.get() as usize);
                let fits = codec::encoded_len(&with, ProtocolVersion::V5)
                    .is_ok_and(|n| room.is_none_or(|max| n <= max));
                if fits {
                    if let Some(online) = self
                        .conns
                        .get_mut(&conn)
                        .and_then(|c| c.online.as_deref_mut())
                    {
                        online.alias_maximum_inbound = alias_maximum;
                    }
                } else {
                    properties.topic_alias_maximum = None;
                }
            }
        }
        out.push(Action::SetProtocol {
            conn,
            version: protocol,
        });
        out.push(Action::Send {
            conn,
            packet: Packet::ConnAck(ConnAck {
                session_present,
                reason_code: ReasonCode::Success,
                properties: properties.into(),
            }),
        });
        tracing::debug!(client_id = &*client_id, conn, session_present, "connected");

        // [MQTT-4.4.0-1] resend unacknowledged PUBLISH (DUP) and PUBREL, in their order.
        let resend: Vec<(u16, OutgoingState)> = self
            .session(sid)
            .map(|s| s.stored.outgoing.iter().cloned().collect())
            .unwrap_or_default();
        for (id, state) in resend {
            let Some(packet_id) = PacketId::new(id) else {
                continue;
            };
            match state {
                OutgoingState::Publish(message) if !self.may_read(sid, &message.topic) => {
                    // Sent under another ACL or user (see `pump_window`): its flow ends here.
                    self.count_not_readable();
                    let op = StoreOp::OutgoingCompleted {
                        client_id: self.op_id(sid),
                        packet_id,
                    };
                    self.emit_session(sid, op);
                }
                OutgoingState::Publish(message) => {
                    let qos_pid = QosPid::new(message.qos, Some(packet_id))
                        .unwrap_or(QosPid::AtLeastOnce(packet_id));
                    self.send_publish(conn, sid, &message, qos_pid, true, now, out);
                }
                OutgoingState::PubRel => out.push(Action::Send {
                    conn,
                    packet: Packet::PubRel(Ack::new(packet_id)),
                }),
            }
        }
        self.pump(sid, now, out);
    }

    /// The Server Keep Alive a client asking for `asked` seconds gets: `max_keepalive_secs`
    /// when it asks for more or for none (0); `None` when its own stands.
    fn server_keep_alive(&self, asked: u16) -> Option<u16> {
        let max = self.config.max_keepalive_secs?;
        (asked == 0 || asked > max).then_some(max)
    }

    /// Answers CONNECT with a refusing CONNACK and closes [MQTT-3.2.2-4] [MQTT-3.2.2-5].
    fn refuse(
        &mut self,
        conn: ConnId,
        protocol: ProtocolVersion,
        reason: ReasonCode,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.stats.connections_refused += 1;
        tracing::info!(conn, ?reason, "CONNECT refused");
        // 3.1.1 has six return codes; the 5.0-only reasons used above are only chosen for 5.0.
        let reason = if protocol == ProtocolVersion::V311 && reason.to_v311_connack().is_none() {
            ReasonCode::ServerUnavailable
        } else {
            reason
        };
        out.push(Action::SetProtocol {
            conn,
            version: protocol,
        });
        out.push(Action::Send {
            conn,
            packet: Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: reason,
                properties: ConnAckProperties::default().into(),
            }),
        });
        self.end_connection(conn, false, now, out);
    }

    fn violation(
        &mut self,
        conn: ConnId,
        reason: ReasonCode,
        why: &str,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.stats.protocol_errors += 1;
        tracing::info!(conn, why, "protocol violation; closing");
        self.send_disconnect_v5(conn, reason, out);
        self.end_connection(conn, true, now, out);
    }

    fn send_disconnect_v5(&self, conn: ConnId, reason: ReasonCode, out: &mut Vec<Action>) {
        let v5 = self
            .conns
            .get(&conn)
            .and_then(|c| c.online.as_ref())
            .is_some_and(|o| o.protocol == ProtocolVersion::V5);
        if v5 {
            out.push(Action::Send {
                conn,
                packet: disconnect(reason),
            });
        }
    }

    /// Forgets `conn`, ends or parks its session, and publishes its will if asked.
    fn end_connection(
        &mut self,
        conn: ConnId,
        publish_will: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.paused.remove(&conn);
        self.exchanges.remove(&conn);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        out.push(Action::Close { conn });
        let Some(online) = c.online else {
            return;
        };
        self.online_count -= 1;
        let client_id = online.client_id;
        let sid = online.sid;
        let this_conn = self.session(sid).is_some_and(|rt| rt.conn == Some(conn));
        if this_conn {
            let expiry = self.session(sid).map(|s| s.stored.expiry_interval_secs);
            match expiry {
                Some(Some(0)) => self.drop_session(sid),
                Some(Some(secs)) => {
                    let at = now + Duration::from_secs(secs.into());
                    if let Some(rt) = self.session_mut(sid) {
                        rt.conn = None;
                        rt.expires_at = Some(at);
                    }
                    // Durable, so that the expiry counts across a restart.
                    let op = StoreOp::SessionOffline {
                        client_id: self.op_id(sid),
                        at_ms: Some(self.now_ms(now)),
                    };
                    self.emit_session(sid, op);
                    self.timers
                        .insert((at, Timer::SessionExpiry(client_id.clone())));
                }
                _ => {
                    if let Some(rt) = self.session_mut(sid) {
                        rt.conn = None;
                    }
                }
            }
        }
        let delay_secs = online
            .will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval_secs)
            .filter(|_| online.protocol == ProtocolVersion::V5)
            .unwrap_or(0);
        // The session still lives and is this connection's (a takeover's new connection holds
        // it under the same `Sid`, but then this one's will is not its business).
        let session_lives = this_conn && self.session(sid).is_some();
        if publish_will && delay_secs > 0 && session_lives {
            if let Some(will) = &online.will {
                // Due after the delay, or when the session ends if that comes first (the
                // session expiry timer publishes it then). It stays in the store meanwhile.
                let at = now + Duration::from_secs(delay_secs.into());
                let message = self.will_message(will, now);
                if let Some(rt) = self.session_mut(sid) {
                    rt.pending_will = Some(Box::new((at, message)));
                }
                self.timers
                    .insert((at, Timer::WillDelay(client_id.clone())));
                return;
            }
        }
        if this_conn {
            self.clear_will(sid);
        }
        if publish_will {
            if let Some(will) = online.will {
                self.stats.wills_published += 1;
                tracing::debug!(client_id = &*client_id, topic = %will.topic, "publishing will");
                let message = self.will_message(&will, now);
                let publisher = self.sid_of(&client_id);
                self.publish(publisher, message, now, out);
            }
        }
    }

    /// Clears the will stored with `sid`'s session, if it has one.
    fn clear_will(&mut self, sid: Sid) {
        if self.session(sid).is_some_and(|s| s.stored.will.is_some()) {
            let op = StoreOp::WillCleared {
                client_id: self.op_id(sid),
            };
            self.emit_session(sid, op);
        }
    }

    fn publish_pending_will(&mut self, sid: Sid, now: Instant, out: &mut Vec<Action>) {
        let Some((_, message)) = self
            .session_mut(sid)
            .and_then(|rt| rt.pending_will.take())
            .map(|pending| *pending)
        else {
            return;
        };
        self.clear_will(sid);
        self.stats.wills_published += 1;
        tracing::debug!(client_id = self.client_id(sid), topic = %message.topic, "publishing delayed will");
        self.publish(Some(sid), message, now, out);
    }

    fn will_message(&self, will: &Will, now: Instant) -> StoredMessage {
        StoredMessage {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties: MessageProperties {
                payload_format_utf8: will.properties.payload_format_utf8,
                expires_at_ms: will
                    .properties
                    .message_expiry_interval_secs
                    .map(|s| self.now_ms(now) + u64::from(s) * 1000),
                response_topic: will.properties.response_topic.clone(),
                correlation_data: will.properties.correlation_data.clone(),
                user_properties: will.properties.user_properties.clone(),
                content_type: will.properties.content_type.clone(),
                shared_filter: None,
            }
            .into(),
        }
    }

    /// Forgets `sid`'s session (and its routes); its slot is free from now on.
    fn drop_session(&mut self, sid: Sid) {
        let Some(session) = self.sessions.get_mut(sid as usize).and_then(Option::take) else {
            return;
        };
        self.queued_bytes_total -= session.queued_bytes;
        for filter in session.stored.subscriptions.keys() {
            self.remove_route(sid, filter);
        }
        if session.persistent {
            self.pending_ops.push(StoreOp::SessionDeleted {
                client_id: session.client_id.to_string(),
            });
        }
        self.session_ids.remove(&session.client_id);
        self.full_sessions.remove(&sid);
        self.free_sids.push(sid);
    }

    fn check_keep_alive(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(online) = &c.online else {
            return;
        };
        // [MQTT-3.1.2-24] silent for one and a half keepalive periods; a paused connection is
        // not read, so its silence does not count (`set_paused` restarts the period).
        let mut deadline = c.last_seen + online.keep_alive.mul_f32(1.5);
        if self.paused.contains(&conn) {
            deadline = deadline.max(now + online.keep_alive.mul_f32(1.5));
        }
        if deadline > now {
            self.timers.insert((deadline, Timer::KeepAlive(conn)));
            return;
        }
        self.stats.keepalive_timeouts += 1;
        tracing::info!(
            conn,
            client_id = &*online.client_id,
            "keepalive expired; closing"
        );
        self.send_disconnect_v5(conn, ReasonCode::KeepAliveTimeout, out);
        // The planted bug (tests only) forgets the will here.
        let forget = self.config.planted_bug == Some(super::PlantedBug::ForgetWillOnKeepalive);
        self.end_connection(conn, !forget, now, out);
    }

    fn assign_client_id(&mut self) -> Arc<str> {
        loop {
            let id = format!("simqtt-{:016x}", self.rng.next_u64());
            if !self.session_ids.contains_key(id.as_str()) {
                return id.into();
            }
        }
    }

    // ----- packets from a connected client -----

    fn online(&self, conn: ConnId) -> Option<&Online> {
        self.conns.get(&conn)?.online.as_deref()
    }

    fn on_publish(&mut self, conn: ConnId, publish: Publish, now: Instant, out: &mut Vec<Action>) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let sid = online.sid;
        let v5 = online.protocol == ProtocolVersion::V5;
        let mut publish = publish;
        if let Some(alias) = publish.properties.topic_alias.filter(|_| v5) {
            let resolved = self.conns.get_mut(&conn).and_then(|c| {
                let online = c.online.as_deref_mut()?;
                let maximum = online.alias_maximum_inbound;
                let aliases = online.aliases.get_or_insert_with(Default::default);
                Some(aliases.inbound(&publish.topic, alias, maximum))
            });
            match resolved {
                Some(Ok(topic)) => publish.topic = topic,
                Some(Err(InboundError::AboveMaximum)) => {
                    let maximum = self.online(conn).map_or(0, |o| o.alias_maximum_inbound);
                    let why = format!(
                        "[MQTT-3.2.2-17] topic alias {alias} above the announced maximum of \
                         {maximum}"
                    );
                    return self.violation(conn, ReasonCode::TopicAliasInvalid, &why, now, out);
                }
                Some(Err(InboundError::Unknown)) => {
                    let why = format!(
                        "[MQTT-3.3.2-7] empty topic with topic alias {alias}, which this \
                         connection never set"
                    );
                    return self.violation(conn, ReasonCode::ProtocolError, &why, now, out);
                }
                None => return,
            }
        }
        if publish.topic.is_empty() {
            return self.violation(
                conn,
                ReasonCode::TopicNameInvalid,
                "[MQTT-4.7.3-1] empty topic name",
                now,
                out,
            );
        }
        if topic_levels(&publish.topic) > self.config.max_topic_levels {
            return self.topic_too_deep(conn, publish.qos_pid, v5, now, out);
        }
        if v5 && publish.qos().as_u8() > self.config.max_qos {
            return self.violation(
                conn,
                ReasonCode::QoSNotSupported,
                "[MQTT-3.2.2-11] PUBLISH above the announced Maximum QoS",
                now,
                out,
            );
        }
        if v5 && publish.retain && !self.config.retain_available {
            return self.violation(
                conn,
                ReasonCode::RetainNotSupported,
                "[MQTT-3.2.2-14] RETAIN set while Retain Available is 0",
                now,
                out,
            );
        }
        self.stats.messages_received += 1;
        let allowed = !publish.topic.starts_with('$')
            && self.online(conn).is_some_and(|o| {
                self.config.authenticator.can_publish(
                    o.username.as_deref(),
                    &o.client_id,
                    &publish.topic,
                )
            });
        if !allowed {
            self.stats.messages_dropped += 1;
            self.stats.dropped_not_authorized += 1;
            let user = self.online(conn).and_then(|o| o.username.as_deref());
            tracing::info!(
                client_id = self.client_id(sid),
                user = user.unwrap_or("(anonymous)"),
                topic = %publish.topic,
                "publish refused: {}",
                if publish.topic.starts_with('$') {
                    "clients may not publish to $ topics"
                } else {
                    "not allowed by the ACL"
                }
            );
        }
        let refused_code = if allowed {
            ReasonCode::Success
        } else {
            ReasonCode::NotAuthorized
        };
        let qos_pid = publish.qos_pid;
        let properties = publish.properties.into_inner();
        let message = StoredMessage {
            topic: publish.topic,
            payload: publish.payload,
            qos: qos_pid.qos(),
            retain: publish.retain && self.config.retain_available,
            properties: MessageProperties {
                payload_format_utf8: properties.payload_format_utf8,
                expires_at_ms: properties
                    .message_expiry_interval_secs
                    .map(|s| self.now_ms(now) + u64::from(s) * 1000),
                response_topic: properties.response_topic,
                correlation_data: properties.correlation_data,
                user_properties: properties.user_properties,
                content_type: properties.content_type,
                shared_filter: None,
            }
            .into(),
        };
        match qos_pid {
            QosPid::AtMostOnce => {
                if allowed {
                    self.publish(Some(sid), message, now, out);
                }
            }
            QosPid::AtLeastOnce(id) => {
                // Routed (and, for persistent subscribers, stored) before the PUBACK goes out.
                if allowed {
                    self.publish(Some(sid), message, now, out);
                }
                out.push(Action::Send {
                    conn,
                    packet: Packet::PubAck(ack(
                        id,
                        if v5 {
                            refused_code
                        } else {
                            ReasonCode::Success
                        },
                    )),
                });
            }
            QosPid::ExactlyOnce(id) => {
                let incoming = self.session(sid).map(|s| &s.stored.incoming_qos2);
                let seen = incoming.is_some_and(|ids| ids.contains(&id.get()));
                let receiving = incoming.map_or(0, |ids| ids.len());
                if !seen && receiving >= usize::from(self.config.max_incoming_qos2) {
                    return self.violation(
                        conn,
                        ReasonCode::ReceiveMaximumExceeded,
                        "[MQTT-3.3.4-8 in 5.0] more unreleased QoS 2 messages than max_incoming_qos2",
                        now,
                        out,
                    );
                }
                if seen {
                    // [MQTT-4.3.3-2] a retransmission: acknowledged again, not delivered again.
                } else if allowed || !v5 {
                    if allowed {
                        self.publish(Some(sid), message, now, out);
                    }
                    let op = StoreOp::IncomingQos2Received {
                        client_id: self.op_id(sid),
                        packet_id: id,
                    };
                    self.emit_session(sid, op);
                }
                // In 5.0 a PUBREC with an error code ends the exchange, so nothing is recorded.
                out.push(Action::Send {
                    conn,
                    packet: Packet::PubRec(ack(
                        id,
                        if v5 {
                            refused_code
                        } else {
                            ReasonCode::Success
                        },
                    )),
                });
            }
        }
    }

    /// A PUBLISH whose topic has more levels than `max_topic_levels`: never routed. 3.1.1 has
    /// no way to refuse one message, so the connection is closed; 5.0 answers QoS 1/2 with
    /// reason 0x90 Topic Name invalid ("not accepted by this Server", 5.0 3.4.2.1) and keeps
    /// the connection, and closes with DISCONNECT 0x90 at QoS 0, which has no acknowledgement
    /// to carry a refusal.
    fn topic_too_deep(
        &mut self,
        conn: ConnId,
        qos_pid: QosPid,
        v5: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.stats.messages_received += 1;
        self.stats.messages_dropped += 1;
        self.stats.dropped_topic_levels += 1;
        let why = "PUBLISH topic has more levels than max_topic_levels";
        let packet = match qos_pid {
            QosPid::AtLeastOnce(id) if v5 => Packet::PubAck(ack(id, ReasonCode::TopicNameInvalid)),
            QosPid::ExactlyOnce(id) if v5 => {
                // An error PUBREC ends the exchange: nothing is recorded for the PUBREL.
                Packet::PubRec(ack(id, ReasonCode::TopicNameInvalid))
            }
            _ => return self.violation(conn, ReasonCode::TopicNameInvalid, why, now, out),
        };
        tracing::info!(conn, why);
        out.push(Action::Send { conn, packet });
    }

    fn on_pubrel(&mut self, conn: ConnId, rel: Ack, out: &mut Vec<Action>) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let sid = online.sid;
        let v5 = online.protocol == ProtocolVersion::V5;
        let known = self
            .session(sid)
            .is_some_and(|s| s.stored.incoming_qos2.contains(&rel.packet_id.get()));
        if known {
            let op = StoreOp::IncomingQos2Released {
                client_id: self.op_id(sid),
                packet_id: rel.packet_id,
            };
            self.emit_session(sid, op);
        }
        let reason = if known || !v5 {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        out.push(Action::Send {
            conn,
            packet: Packet::PubComp(ack(rel.packet_id, reason)),
        });
    }

    fn outgoing_state(&self, sid: Sid, id: PacketId) -> Option<&OutgoingState> {
        self.session(sid)?
            .stored
            .outgoing
            .iter()
            .find(|(i, _)| *i == id.get())
            .map(|(_, s)| s)
    }

    /// The outgoing flow `id` of `sid` is complete (PUBACK, PUBCOMP, or a refusing PUBREC):
    /// its slot of the window is free.
    fn outgoing_completed(
        &mut self,
        conn: ConnId,
        sid: Sid,
        id: PacketId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let op = StoreOp::OutgoingCompleted {
            client_id: self.op_id(sid),
            packet_id: id,
        };
        self.emit_session(sid, op);
        self.pump_after_ack(conn, sid, now, out);
    }

    fn on_puback(&mut self, conn: ConnId, puback: Ack, now: Instant, out: &mut Vec<Action>) {
        // A run of one (a PUBACK with a reason code or properties, or one alone).
        self.pubacks(conn, &[puback.packet_id], now, out);
    }

    fn on_pubrec(&mut self, conn: ConnId, pubrec: Ack, now: Instant, out: &mut Vec<Action>) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let sid = online.sid;
        let v5 = online.protocol == ProtocolVersion::V5;
        let id = pubrec.packet_id;
        match self.outgoing_state(sid, id) {
            Some(OutgoingState::Publish(m)) if m.qos == QoS::ExactlyOnce => {
                if v5 && pubrec.reason_code.is_error() {
                    // The receiver refused the message: the flow ends here.
                    self.outgoing_completed(conn, sid, id, now, out);
                    return;
                }
                let op = StoreOp::PubRecReceived {
                    client_id: self.op_id(sid),
                    packet_id: id,
                };
                self.emit_session(sid, op);
                out.push(Action::Send {
                    conn,
                    packet: Packet::PubRel(Ack::new(id)),
                });
            }
            Some(OutgoingState::PubRel) => out.push(Action::Send {
                conn,
                packet: Packet::PubRel(Ack::new(id)),
            }),
            _ if v5 => out.push(Action::Send {
                conn,
                packet: Packet::PubRel(ack(id, ReasonCode::PacketIdentifierNotFound)),
            }),
            _ => tracing::debug!(conn, id, "PUBREC for no QoS 2 message"),
        }
    }

    fn on_pubcomp(&mut self, conn: ConnId, pubcomp: Ack, now: Instant, out: &mut Vec<Action>) {
        let Some(sid) = self.online(conn).map(|o| o.sid) else {
            return;
        };
        match self.outgoing_state(sid, pubcomp.packet_id) {
            Some(OutgoingState::PubRel) => {
                self.outgoing_completed(conn, sid, pubcomp.packet_id, now, out);
            }
            _ => tracing::debug!(conn, id = pubcomp.packet_id, "PUBCOMP for no PUBREL"),
        }
    }

    fn on_subscribe(
        &mut self,
        conn: ConnId,
        subscribe: Subscribe,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let client_id = online.client_id.clone();
        let sid = online.sid;
        let v5 = online.protocol == ProtocolVersion::V5;
        let username = online.username.clone();
        let max_qos = QoS::from_u8(self.config.max_qos).unwrap_or(QoS::ExactlyOnce);
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained: Vec<StoredMessage> = Vec::new();
        // [MQTT-3.8.4-4] each filter as if in its own SUBSCRIBE, one SUBACK for all.
        for (filter, options) in subscribe.filters {
            if v5 && filter.shared().is_some() && !self.config.shared_subscriptions {
                codes.push(ReasonCode::SharedSubscriptionsNotSupported);
                continue;
            }
            let shared = self.shared_filter(&filter).is_some();
            if !v5 && !shared && self.config.shared_subscriptions && filter.starts_with("$share/") {
                // A 3.1.1 client's `$share/...` that is not of the form 5.0 requires
                // [MQTT-4.8.2-1] [MQTT-4.8.2-2] (the 5.0 decoder refuses those as malformed).
                tracing::info!(conn, %filter, "malformed shared subscription filter");
                codes.push(ReasonCode::UnspecifiedError);
                continue;
            }
            if topic_levels(&filter) > self.config.max_topic_levels {
                // 0x8F: "correctly formed but not allowed for this Client" (5.0 3.9.3);
                // 0x80 is 3.1.1's only failure code [MQTT-3.9.3-2].
                tracing::info!(
                    conn,
                    "SUBSCRIBE filter has more levels than max_topic_levels"
                );
                codes.push(if v5 {
                    ReasonCode::TopicFilterInvalid
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            if !self
                .config
                .authenticator
                .can_subscribe(username.as_deref(), &client_id, &filter)
            {
                tracing::info!(
                    client_id = &*client_id,
                    user = username.as_deref().unwrap_or("(anonymous)"),
                    topic = %filter,
                    "subscribe refused: not allowed by the ACL"
                );
                // 0x80 is "Failure" in 3.1.1 [MQTT-3.9.3-2].
                codes.push(if v5 {
                    ReasonCode::NotAuthorized
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let granted = options.qos.min(max_qos);
            let options = if v5 {
                SubscriptionOptions {
                    qos: granted,
                    ..options
                }
            } else {
                SubscriptionOptions::qos(granted)
            };
            let existed = self
                .session(sid)
                .is_some_and(|s| s.stored.subscriptions.contains_key(&filter));
            let subscription_id = if v5 {
                subscribe.properties.subscription_identifier
            } else {
                None
            };
            // [MQTT-3.8.4-3] a subscription to the same filter replaces the old one.
            let op = StoreOp::Subscribed {
                client_id: self.op_id(sid),
                filter: filter.clone(),
                subscription: StoredSubscription {
                    options,
                    subscription_id,
                },
            };
            self.emit_session(sid, op);
            self.add_route(
                sid,
                &filter,
                Route {
                    options,
                    subscription_id,
                },
            );
            codes.push(qos_code(granted));
            // Retained messages are not sent for a shared subscription (5.0 3.8.4).
            let send_retained = !shared
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNewSubscription => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                // [MQTT-3.3.1-6] [MQTT-3.3.1-8] the latest retained message of each matching
                // topic, with RETAIN set, at the lower of its QoS and the granted one.
                for m in self.retained.values().chain(self.sys_retained.values()) {
                    if codec::matches(&filter, &m.topic) {
                        if !self.may_read(sid, &m.topic) {
                            self.stats.messages_dropped += 1;
                            self.stats.dropped_not_authorized += 1;
                            continue;
                        }
                        let mut m = m.clone();
                        m.qos = m.qos.min(granted);
                        m.retain = true;
                        retained.push(m);
                    }
                }
            }
        }
        out.push(Action::Send {
            conn,
            packet: Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                properties: Default::default(),
                reason_codes: codes,
            }),
        });
        for message in retained {
            self.deliver(sid, message, now, out);
        }
    }

    fn on_unsubscribe(&mut self, conn: ConnId, unsubscribe: Unsubscribe, out: &mut Vec<Action>) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let sid = online.sid;
        let v5 = online.protocol == ProtocolVersion::V5;
        let mut codes = Vec::new();
        for filter in unsubscribe.filters {
            // [MQTT-3.10.4-1] compared literally; messages already in flight still complete
            // [MQTT-3.10.4-3] because the session's outgoing state is untouched.
            let existed = self.remove_route(sid, &filter);
            if existed {
                let op = StoreOp::Unsubscribed {
                    client_id: self.op_id(sid),
                    filter,
                };
                self.emit_session(sid, op);
            }
            if v5 {
                codes.push(if existed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                });
            }
        }
        // [MQTT-3.10.4-4] [MQTT-3.10.4-5] always answered, same packet id.
        out.push(Action::Send {
            conn,
            packet: Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: Default::default(),
                reason_codes: codes,
            }),
        });
    }

    fn on_disconnect(
        &mut self,
        conn: ConnId,
        disconnect: Disconnect,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let sid = online.sid;
        if let Some(secs) = disconnect.properties.session_expiry_interval_secs {
            if online.connect_expiry_secs == 0 && secs != 0 {
                return self.violation(
                    conn,
                    ReasonCode::ProtocolError,
                    "[MQTT-3.14.2-2] DISCONNECT sets a session expiry after CONNECT said 0",
                    now,
                    out,
                );
            }
            let expiry = (secs != u32::MAX).then_some(secs);
            let op = StoreOp::SessionExpiryChanged {
                client_id: self.op_id(sid),
                expiry_interval_secs: expiry,
            };
            self.emit_session(sid, op);
        }
        let keep_will = disconnect.reason_code == ReasonCode::DisconnectWithWillMessage;
        if !keep_will {
            // [MQTT-3.14.4-3] the will is discarded.
            if let Some(online) = self.conns.get_mut(&conn).and_then(|c| c.online.as_mut()) {
                online.will = None;
            }
        }
        self.end_connection(conn, keep_will, now, out);
    }

    // ----- routing and delivery -----

    /// The wall clock at `now` (milliseconds since the UNIX epoch): the clock of message
    /// expiry. Counted on from the start with the monotonic clock, so it never steps back.
    fn now_ms(&self, now: Instant) -> u64 {
        let since_start = now.saturating_duration_since(self.started_at).as_millis() as u64;
        self.wall_at_start_ms.saturating_add(since_start)
    }

    /// A message's expiry instant on the wall clock (`MessageProperties::expires_at_ms`; a
    /// value an older broker wrote counts from this start, as it did).
    fn expiry_ms(&self, at: u64) -> u64 {
        if at < crate::store::LEGACY_EXPIRY_LIMIT_MS {
            self.wall_at_start_ms.saturating_add(at)
        } else {
            at
        }
    }

    /// Handles a message accepted from `publisher` (None: the broker itself): the retained
    /// store, then every matching subscription [MQTT-4.5.0-1].
    fn publish(
        &mut self,
        publisher: Option<Sid>,
        message: StoredMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if message.retain {
            if message.payload.is_empty() {
                // [MQTT-3.3.1-10] [MQTT-3.3.1-11] an empty retained message clears the topic.
                if self.retained.remove(&message.topic).is_some() {
                    self.pending_ops.push(StoreOp::RetainedCleared {
                        topic: message.topic.clone(),
                    });
                }
            } else {
                // [MQTT-3.3.1-5] [MQTT-3.3.1-7] replaces whatever was retained, QoS 0 included.
                self.retained.insert(message.topic.clone(), message.clone());
                self.pending_ops.push(StoreOp::RetainedSet {
                    message: message.clone(),
                });
            }
        }
        self.forward(publisher, message, now, out);
    }

    fn forward(
        &mut self,
        publisher: Option<Sid>,
        message: StoredMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        self.router.for_each_match(&message.topic, |&sid, route| {
            if route.options.no_local && publisher == Some(sid) {
                return;
            }
            matches.push((sid, *route));
        });
        // One copy per client at the highest matching QoS (see the module doc); clients in
        // session-index order.
        matches.sort_unstable_by_key(|m| m.0);
        let acl = self.config.authenticator.has_acl();
        let mut memo = ReadMemo::default();
        let mut i = 0;
        while i < matches.len() {
            let sid = matches[i].0;
            let mut qos = QoS::AtMostOnce;
            let mut retain_as_published = false;
            while i < matches.len() && matches[i].0 == sid {
                qos = qos.max(matches[i].1.options.qos);
                retain_as_published |= matches[i].1.options.retain_as_published;
                i += 1;
            }
            if acl && !self.may_read_memo(sid, &message.topic, &mut memo) {
                // A `deny` inside the subscription (or an ACL changed since it was made).
                self.count_not_readable();
                continue;
            }
            let mut copy = message.clone();
            copy.qos = copy.qos.min(qos);
            // [MQTT-3.3.1-9] live forwarding clears RETAIN (5.0: unless Retain As Published).
            copy.retain = message.retain && retain_as_published;
            self.deliver(sid, copy, now, out);
        }
        self.scratch = matches;
        if !self.shared.is_empty() {
            self.forward_shared(publisher, &message, now, out);
        }
    }

    /// `sid`'s subscription to `filter` goes into the router, or into its shared group.
    fn add_route(&mut self, sid: Sid, filter: &str, route: Route) {
        match self.shared_filter(filter) {
            Some((share_name, inner)) => self.shared.insert(share_name, inner, sid, route),
            None => {
                self.router.insert(filter, &sid, route);
            }
        }
    }

    /// Removes what `add_route` added. True when it existed.
    fn remove_route(&mut self, sid: Sid, filter: &str) -> bool {
        match self.shared_filter(filter) {
            Some((share_name, inner)) => self.shared.remove(share_name, inner, sid),
            None => self.router.remove(filter, &sid),
        }
    }

    /// `$share/{ShareName}/{filter}` split in two, when shared subscriptions are on and the
    /// filter has that form [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    fn shared_filter<'f>(&self, filter: &'f str) -> Option<(&'f str, &'f str)> {
        if !self.config.shared_subscriptions {
            return None;
        }
        let (share_name, inner) = filter.strip_prefix("$share/")?.split_once('/')?;
        (!share_name.is_empty() && !share_name.contains(['+', '#']) && !inner.is_empty())
            .then_some((share_name, inner))
    }

    /// One copy of `message` to one member of each matching shared group, at the QoS that
    /// member was granted [MQTT-4.8.2-3].
    fn forward_shared(
        &mut self,
        publisher: Option<Sid>,
        message: &StoredMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let mut gids = std::mem::take(&mut self.shared_scratch);
        gids.clear();
        self.shared.matching(&message.topic, &mut gids);
        let strategy = self.config.shared_subscription_strategy;
        let publisher_id: Arc<str> = match publisher.and_then(|p| self.session(p)) {
            Some(s) => s.client_id.clone(),
            None => Arc::from(""),
        };
        for &gid in &gids {
            let draw = match strategy {
                SharedStrategy::Random => self.rng.next_u64(),
                _ => 0,
            };
            let mut shared = std::mem::take(&mut self.shared);
            // Online members with room in their queue (QoS 1/2; `shared_blocker` holds the
            // publisher while none has), who may read the topic.
            let needs_room = message.qos != QoS::AtMostOnce;
            let picked = shared.pick(gid, strategy, draw, &publisher_id, |sid| {
                self.session(sid).is_some_and(|s| s.conn.is_some())
                    && !(needs_room && self.queue_full_online(sid))
                    && self.may_read(sid, &message.topic)
            });
            self.shared = shared;
            let Some((sid, route)) = picked else {
                continue;
            };
            if !self.may_read(sid, &message.topic) {
                self.count_not_readable();
                continue;
            }
            let mut copy = message.clone();
            copy.qos = copy.qos.min(route.options.qos);
            copy.retain = message.retain && route.options.retain_as_published;
            // The copy's subscription identifier is its shared subscription's (`publish_packet`).
            copy.properties.shared_filter = self.shared.filter_of(gid);
            self.deliver(sid, copy, now, out);
        }
        self.shared_scratch = gids;
    }

    /// Puts `message` (its QoS already the effective one) on its way to `sid`: sent now if the
    /// client is online and its window has room, else queued (bounded).
    fn deliver(&mut self, sid: Sid, message: StoredMessage, now: Instant, out: &mut Vec<Action>) {
        let Some(session) = self.session(sid) else {
            return;
        };
        if let Some(conn) = session.conn {
            if message.qos == QoS::AtMostOnce {
                self.send_publish(conn, sid, &message, QosPid::AtMostOnce, false, now, out);
                return;
            }
            let limit = self.online(conn).map_or(0, |o| o.inflight_limit);
            let stored = &session.stored;
            let size = message_bytes(&message);
            if stored.queued.is_empty()
                && stored.outgoing.len() < limit
                && self.inflight_bytes_fit(session, size)
            {
                if self.undeliverable(conn, sid, &message, now) {
                    self.count_undeliverable();
                    return;
                }
                let (packet_id, ids_ordered) = alloc_packet_id(stored, session.ids_ordered);
                let qos_pid = QosPid::new(message.qos, Some(packet_id))
                    .unwrap_or(QosPid::AtLeastOnce(packet_id));
                let packet = self.publish_packet(conn, sid, &message, qos_pid, false, now);
                self.log_op(sid, |client_id| StoreOp::SentInFlight {
                    client_id,
                    packet_id,
                    message: message.clone(),
                });
                if let Some(session) = self.session_mut(sid) {
                    session.stored.send_in_flight(packet_id, message);
                    session.ids_ordered = ids_ordered;
                    session.inflight_bytes += size;
                }
                let packet = self.aliased(conn, packet);
                self.stats.messages_sent += 1;
                out.push(Action::Send { conn, packet });
                return;
            }
        } else if message.qos == QoS::AtMostOnce && !self.config.queue_qos0_messages {
            return;
        }
        self.enqueue(sid, message);
    }

    fn enqueue(&mut self, sid: Sid, message: StoredMessage) {
        let Some(session) = self.session(sid) else {
            return;
        };
        let size = message_bytes(&message);
        if self.over_budget() && (session.conn.is_none() || message.qos == QoS::AtMostOnce) {
            // Past the broker's budget nothing more waits for an offline session, nor QoS 0
            // for anyone (`BrokerConfig::max_queued_bytes_total`). An online session's QoS 1/2
            // message got here past `publish_blocker`, which holds publishers meanwhile.
            self.stats.messages_dropped += 1;
            self.stats.dropped_memory += 1;
            return;
        }
        let queued = session.stored.queued.len();
        let full_after = queued + 1 >= self.config.max_queued_messages
            || session.queued_bytes + size >= self.config.max_queued_bytes;
        if full_after && message.qos != QoS::AtMostOnce {
            self.full_sessions.insert(sid);
        }
        if self.config.max_queued_messages == 0 {
            self.stats.messages_dropped += 1;
            self.stats.dropped_queue_full += 1;
            return;
        }
        // Overflow policy: drop the oldest (see `BrokerConfig::max_queued_messages`) while the
        // queue is at either bound.
        while self.session(sid).is_some_and(|s| {
            !s.stored.queued.is_empty()
                && (s.stored.queued.len() >= self.config.max_queued_messages
                    || s.queued_bytes >= self.config.max_queued_bytes)
        }) {
            self.stats.messages_dropped += 1;
            self.stats.dropped_queue_full += 1;
            let op = StoreOp::QueueFrontDropped {
                client_id: self.op_id(sid),
            };
            self.emit_session(sid, op);
        }
        let op = StoreOp::Queued {
            client_id: self.op_id(sid),
            message,
        };
        self.emit_session(sid, op);
    }

    /// `pump` after an acknowledgement on `conn` freed a slot of `sid`'s window: only once a
    /// quarter of the window is free (or a QoS 0 message heads the queue). Under load the
    /// window then refills in runs, which the connection writes with one system call each,
    /// instead of one message per acknowledgement; the client still has three quarters of its
    /// window in flight, so nothing waits that could go, and at low load, when nothing is
    /// queued, `deliver` sends at once as before. Nothing can stall: while messages are queued
    /// the window holds at least one unacknowledged message, whose acknowledgement calls this
    /// again.
    fn pump_after_ack(&mut self, conn: ConnId, sid: Sid, now: Instant, out: &mut Vec<Action>) {
        let Some(session) = self.session(sid) else {
            return;
        };
        let Some(front) = session.stored.queued.front() else {
            return;
        };
        let limit = self.online(conn).map_or(0, |o| o.inflight_limit);
        let refill = (limit / 4).max(1);
        if front.qos == QoS::AtMostOnce || session.stored.outgoing.len() + refill <= limit {
            self.pump(sid, now, out);
        }
    }

    /// Moves queued messages into the in-flight window while it has room.
    fn pump(&mut self, sid: Sid, now: Instant, out: &mut Vec<Action>) {
        let Some(session) = self.session(sid) else {
            return;
        };
        let Some(conn) = session.conn else {
            return;
        };
        if session.stored.queued.is_empty() {
            return;
        }
        self.pump_window(conn, sid, now, out);
    }

    fn pump_window(&mut self, conn: ConnId, sid: Sid, now: Instant, out: &mut Vec<Action>) {
        let limit = self.online(conn).map_or(0, |o| o.inflight_limit);
        loop {
            let Some(session) = self.session(sid) else {
                return;
            };
            let stored = &session.stored;
            let Some(front) = stored.queued.front() else {
                return;
            };
            if !self.may_read(sid, &front.topic) {
                // Queued under another ACL (before a restart with a new ACL file, or for the
                // user that held the session before, under `session_takeover = "any-user"`).
                self.count_not_readable();
                let op = StoreOp::QueueFrontDropped {
                    client_id: self.op_id(sid),
                };
                self.emit_session(sid, op);
                continue;
            }
            if front.qos == QoS::AtMostOnce {
                // A QoS 0 message leaves the queue as it is sent (it has no in-flight state).
                let message = front.clone();
                let op = StoreOp::QueueFrontDropped {
                    client_id: self.op_id(sid),
                };
                self.emit_session(sid, op);
                self.send_publish(conn, sid, &message, QosPid::AtMostOnce, false, now, out);
                continue;
            }
            if stored.outgoing.len() >= limit
                || !self.inflight_bytes_fit(session, message_bytes(front))
            {
                return;
            }
            if self.undeliverable(conn, sid, front, now) {
                self.count_undeliverable();
                let op = StoreOp::QueueFrontDropped {
                    client_id: self.op_id(sid),
                };
                self.emit_session(sid, op);
                continue;
            }
            let (packet_id, ids_ordered) = alloc_packet_id(stored, session.ids_ordered);
            let qos_pid =
                QosPid::new(front.qos, Some(packet_id)).unwrap_or(QosPid::AtLeastOnce(packet_id));
            let packet = self.publish_packet(conn, sid, front, qos_pid, false, now);
            let size = message_bytes(front);
            self.log_op(sid, |client_id| StoreOp::Dequeued {
                client_id,
                packet_id,
            });
            if let Some(session) = self.session_mut(sid) {
                session.stored.dequeue(packet_id);
                session.ids_ordered = ids_ordered;
                session.queued_bytes -= size;
                session.inflight_bytes += size;
            }
            self.queued_bytes_total -= size;
            let packet = self.aliased(conn, packet);
            self.stats.messages_sent += 1;
            out.push(Action::Send { conn, packet });
        }
    }

    /// True for a 5.0 message that expired or exceeds the client's maximum packet size; such
    /// a message is dropped rather than sent [MQTT-3.3.2-5 in 5.0] [MQTT-3.1.2-25 in 5.0]
    /// (the caller counts it with `count_undeliverable`).
    fn undeliverable(&self, conn: ConnId, sid: Sid, message: &StoredMessage, now: Instant) -> bool {
        let expired = message
            .properties
            .expires_at_ms
            .is_some_and(|at| self.expiry_ms(at) <= self.now_ms(now));
        let too_large = match self.online(conn).and_then(|o| o.max_packet_size) {
            Some(max) => {
                let packet =
                    self.publish_packet(conn, sid, message, QosPid::AtMostOnce, false, now);
                codec::encoded_len(&packet, ProtocolVersion::V5)
                    .map_or(true, |n| n + 2 > max as usize)
            }
            None => false,
        };
        expired || too_large
    }

    /// May `sid`'s client receive a message on `topic` (the ACL's read check, issue 14 defect
    /// 2)? The user is the connection's while the session is online, else the session's
    /// owner. Always true without an ACL, at the cost of one test.
    fn may_read(&self, sid: Sid, topic: &str) -> bool {
        let auth = &self.config.authenticator;
        if !auth.has_acl() {
            return true;
        }
        let Some(session) = self.session(sid) else {
            return false;
        };
        let username = match session.conn.and_then(|conn| self.online(conn)) {
            Some(online) => online.username.as_deref(),
            None => session.stored.owner.as_ref().and_then(Owner::username),
        };
        auth.can_read(username, &session.client_id, topic)
    }

    /// `may_read` for one message fanned out to many sessions: the answer that depends on the
    /// user only is remembered for the last online user, so a fan-out to clients of one user
    /// (or to anonymous ones) asks the ACL once, not once per client.
    fn may_read_memo(&self, sid: Sid, topic: &str, memo: &mut ReadMemo) -> bool {
        let Some(session) = self.session(sid) else {
            return false;
        };
        let Some(online) = session.conn.and_then(|conn| self.online(conn)) else {
            return self.may_read(sid, topic);
        };
        if let Some((user, answer)) = &memo.last {
            if *user == online.username {
                return *answer;
            }
        }
        let auth = &self.config.authenticator;
        match auth.can_read_as_user(online.username.as_deref(), topic) {
            Some(answer) => {
                memo.last = Some((online.username.clone(), answer));
                answer
            }
            None => auth.can_read(online.username.as_deref(), &session.client_id, topic),
        }
    }

    fn count_not_readable(&mut self) {
        self.stats.messages_dropped += 1;
        self.stats.dropped_not_authorized += 1;
    }

    fn count_undeliverable(&mut self) {
        self.stats.messages_dropped += 1;
        self.stats.dropped_undeliverable += 1;
    }

    fn publish_packet(
        &self,
        conn: ConnId,
        sid: Sid,
        message: &StoredMessage,
        qos_pid: QosPid,
        dup: bool,
        now: Instant,
    ) -> Packet {
        let v5 = self
            .online(conn)
            .is_some_and(|o| o.protocol == ProtocolVersion::V5);
        let properties = if v5 {
            let p = &message.properties;
            // Subscription identifiers of the client's matching subscriptions, all on the one
            // copy [MQTT-3.3.4-4]; a shared subscription's copy carries its own only
            // [MQTT-3.3.4-5] (`$share/...` filters match no topic through `codec::matches`).
            let subscription_identifiers = self
                .session(sid)
                .map(|s| match &p.shared_filter {
                    Some(shared) => s
                        .stored
                        .subscriptions
                        .get(shared)
                        .and_then(|sub| sub.subscription_id)
                        .into_iter()
                        .collect(),
                    None => s
                        .stored
                        .subscriptions
                        .iter()
                        .filter_map(|(f, sub)| {
                            sub.subscription_id
                                .filter(|_| codec::matches(f, &message.topic))
                        })
                        .collect(),
                })
                .unwrap_or_default();
            PublishProperties {
                payload_format_utf8: p.payload_format_utf8,
                // The remaining lifetime [MQTT-3.3.2-6 in 5.0].
                message_expiry_interval_secs: p.expires_at_ms.map(|at| {
                    let left_ms = self.expiry_ms(at).saturating_sub(self.now_ms(now));
                    left_ms.div_ceil(1000).min(u64::from(u32::MAX)) as u32
                }),
                topic_alias: None,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers,
                content_type: p.content_type.clone(),
            }
            .into()
        } else {
            PropertyBox::none()
        };
        Packet::Publish(Publish {
            // [MQTT-3.3.1-2] never DUP on QoS 0.
            dup: dup && qos_pid != QosPid::AtMostOnce,
            qos_pid,
            retain: message.retain,
            topic: message.topic.clone(),
            properties,
            payload: message.payload.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn send_publish(
        &mut self,
        conn: ConnId,
        sid: Sid,
        message: &StoredMessage,
        qos_pid: QosPid,
        dup: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if qos_pid == QosPid::AtMostOnce && self.undeliverable(conn, sid, message, now) {
            self.count_undeliverable();
            return;
        }
        let packet = self.publish_packet(conn, sid, message, qos_pid, dup, now);
        let packet = self.aliased(conn, packet);
        self.stats.messages_sent += 1;
        out.push(Action::Send { conn, packet });
    }

    /// `packet` (a PUBLISH about to be sent on `conn`) with a topic alias where the policy
    /// gives one (`aliases.rs`), never making it larger than the client's Maximum Packet Size.
    fn aliased(&mut self, conn: ConnId, packet: Packet) -> Packet {
        let Packet::Publish(mut publish) = packet else {
            return packet;
        };
        let Some(online) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.online.as_deref_mut())
        else {
            return Packet::Publish(publish);
        };
        let maximum = online.alias_maximum_outbound;
        if maximum == 0 || publish.topic.len() < aliases::MIN_TOPIC_BYTES {
            return Packet::Publish(publish);
        }
        let max_packet_size = online.max_packet_size;
        let table = online.aliases.get_or_insert_with(Default::default);
        let reliable = publish.qos_pid != QosPid::AtMostOnce;
        match table.outbound(&publish.topic, reliable, maximum) {
            aliases::Outbound::None => Packet::Publish(publish),
            aliases::Outbound::Use(alias) => {
                publish.properties.topic_alias = Some(alias);
                publish.topic = TopicName::default();
                Packet::Publish(publish)
            }
            aliases::Outbound::Set(alias) => {
                let topic = publish.topic.clone();
                publish.properties.topic_alias = Some(alias);
                let packet = Packet::Publish(publish);
                let fits = max_packet_size.is_none_or(|max| {
                    codec::encoded_len(&packet, ProtocolVersion::V5)
                        .is_ok_and(|n| n + 2 <= max as usize)
                });
                if fits {
                    return packet;
                }
                // The alias property would push it past the client's limit: no alias.
                table.forget_outbound(&topic);
                let Packet::Publish(mut publish) = packet else {
                    unreachable!("built as a PUBLISH above")
                };
                publish.properties.topic_alias = None;
                Packet::Publish(publish)
            }
        }
    }

    fn publish_sys(&mut self, now: Instant, out: &mut Vec<Action>) {
        let stats = self.stats(now);
        for (topic, value) in stats.sys_topics() {
            let message = StoredMessage {
                topic: TopicName::from_static(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PropertyBox::none(),
            };
            // Kept for new subscribers, but never in the durable store: it is recomputed.
            self.sys_retained
                .insert(message.topic.clone(), message.clone());
            let mut live = message;
            live.retain = false;
            self.forward(None, live, now, out);
        }
    }

    // ----- the store: `store_health.rs` (flush_store, sync_store, handle) -----
}

#[cfg(test)]
impl Core {
    /// Panics unless every session's byte counts and the broker's total are what its queue
    /// and window hold.
    fn check_byte_counts(&self) {
        let mut total = 0;
        for session in self.sessions.iter().flatten() {
            let queued: usize = session.stored.queued.iter().map(message_bytes).sum();
            let inflight: usize = session
                .stored
                .outgoing
                .iter()
                .map(|(_, state)| match state {
                    OutgoingState::Publish(m) => message_bytes(m),
                    OutgoingState::PubRel => 0,
                })
                .sum();
            assert_eq!(
                session.queued_bytes, queued,
                "{}: queued bytes",
                session.client_id
            );
            assert_eq!(
                session.inflight_bytes, inflight,
                "{}: in-flight bytes",
                session.client_id
            );
            total += queued;
        }
        assert_eq!(self.queued_bytes_total, total, "total queued bytes");
    }
}

/// What `Core::may_read_memo` remembers while one message is fanned out: the last online
/// user whose answer did not depend on the client id, and that answer.
#[derive(Default)]
struct ReadMemo {
    last: Option<(Option<Arc<str>>, bool)>,
}

/// What a message counts against the byte bounds: its payload and topic.
fn message_bytes(message: &StoredMessage) -> usize {
    message.payload.len() + message.topic.len()
}

/// Levels of a topic name or filter: one more than its `/` separators.
fn topic_levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// True when `session`'s in-flight ids climb from front to back (see `alloc_packet_id`), as
/// the broker that stored them allocated them.
fn ids_in_order(session: &StoredSession) -> bool {
    let Some((front, _)) = session.outgoing.front() else {
        return true;
    };
    let from_front = |id: u16| (u32::from(id) + 65535 - u32::from(*front)) % 65535;
    let ids: Vec<u32> = session
        .outgoing
        .iter()
        .map(|(id, _)| from_front(*id))
        .collect();
    ids.windows(2).all(|pair| pair[0] < pair[1])
}

/// A free packet id for `session`'s next outgoing message, and whether its in-flight ids are
/// still in allocation order afterwards (`Session::ids_ordered`, which `ordered` says now).
///
/// Ids are handed out in turn from `next_packet_id`, so the in-flight ids, front to back,
/// normally climb (cyclically, over 1..=65535) from the front's id to the back's: every id not
/// between those two is free, and so is `next_packet_id` once past the back. That answer
/// costs two comparisons; a search of the window (about 100 bytes per entry) cost 11 % of a
/// fan-out's time with a 128-message window. The search remains for the rare case where the
/// ids wrapped round to the front (a message left unacknowledged for 65535 ids), and once it
/// picks an id among the others the order is gone: the session searches from then on, until
/// its window empties.
fn alloc_packet_id(session: &StoredSession, ordered: bool) -> (PacketId, bool) {
    let candidate = session.next_packet_id.max(1);
    let (Some((front, _)), Some((back, _))) = (session.outgoing.front(), session.outgoing.back())
    else {
        // Nothing in flight: any id is free, and one id is in order.
        return (PacketId::new(candidate).unwrap_or(PacketId::MIN), true);
    };
    // Distance from the front's id, walking up through 65535 and on from 1.
    let from_front = |id: u16| (u32::from(id) + 65535 - u32::from(*front)) % 65535;
    if ordered && from_front(candidate) > from_front(*back) {
        return (PacketId::new(candidate).unwrap_or(PacketId::MIN), true);
    }
    let mut id = candidate;
    // The in-flight window is far below 65535, so a free id is always found.
    for _ in 0..u16::MAX {
        if !session.outgoing.iter().any(|(i, _)| *i == id) {
            break;
        }
        id = next_id(id);
    }
    let ordered = ordered && from_front(id) > from_front(*back);
    (PacketId::new(id).unwrap_or(PacketId::MIN), ordered)
}

fn ack(packet_id: PacketId, reason_code: ReasonCode) -> Ack {
    Ack {
        packet_id,
        reason_code,
        properties: Default::default(),
    }
}

fn disconnect(reason_code: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code,
        properties: Default::default(),
    })
}

mod enhanced_auth;
mod store_health;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_aliases;
#[cfg(test)]
mod tests_auth;
#[cfg(test)]
mod tests_expiry;
#[cfg(test)]
mod tests_shared;
#[cfg(test)]
mod tests_store;
