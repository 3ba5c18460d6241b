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
//!   that would push an online session's queue past `max_queued_messages` is not accepted:
//!   `publish_blocker` names the full session, the server holds the PUBLISH (unacknowledged)
//!   and stops reading that publisher until the subscriber makes room. So nothing the broker
//!   acknowledged is dropped for a slow reader. Exceptions, which still drop the OLDEST queued
//!   message (counted): an offline session (a publisher must not wait days for it), a client
//!   publishing to its own full queue (waiting on itself would deadlock: its PUBACKs sit
//!   behind its held PUBLISHes), and messages the broker publishes itself (wills, `$SYS`).
//! - Unauthorised PUBLISH (ACL, or a `$` topic): acknowledged normally in 3.1.1
//!   [MQTT-3.3.5-2], with reason 0x87 in 5.0; never delivered; counted.
//! - Server shutdown closes connections without publishing wills (the clients did not fail).
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

use super::auth::AuthOutcome;
use super::config::BrokerConfig;
use super::router::{Route, Router};
use super::stats::{ByteCounters, Stats};
use crate::codec::{
    self, Ack, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, MqttStr, Packet,
    PacketId, ProtocolVersion, Publish, PublishProperties, QoS, QosPid, ReasonCode, RetainHandling,
    SubAck, Subscribe, SubscriptionOptions, TopicName, UnsubAck, Unsubscribe, Will,
};
use crate::store::{
    DurableState, MessageProperties, OutgoingState, Store, StoreOp, StoredMessage,
    StoredSubscription, StoredWill,
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

/// Per-session facts that are not durable.
#[derive(Debug)]
struct SessionRuntime {
    conn: Option<ConnId>,
    /// The store holds this session (its ops are logged).
    persistent: bool,
    /// When an offline session with a finite expiry ends.
    expires_at: Option<Instant>,
    /// 5.0: a will waiting for its delay interval, and when it is due. Boxed: rare, and a
    /// `StoredMessage` inline would triple every session's entry (memory per connection).
    pending_will: Option<Box<(Instant, StoredMessage)>>,
}

/// A connection that has sent a valid CONNECT.
#[derive(Debug)]
struct Online {
    client_id: Arc<str>,
    protocol: ProtocolVersion,
    username: Option<String>,
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
}

/// Small on purpose (memory per idle connection): what only an online connection has is boxed.
#[derive(Debug)]
struct Conn {
    peer: String,
    last_seen: Instant,
    online: Option<Box<Online>>,
}

/// The broker state machine. See the module documentation.
pub struct Core {
    config: BrokerConfig,
    store: Box<dyn Store>,
    state: DurableState,
    sessions: BTreeMap<Arc<str>, SessionRuntime>,
    conns: BTreeMap<ConnId, Conn>,
    online_count: usize,
    router: Router,
    sys_retained: BTreeMap<TopicName, StoredMessage>,
    timers: BTreeSet<(Instant, Timer)>,
    stats: Stats,
    rng: ChaCha8Rng,
    started_at: Instant,
    bytes: Arc<ByteCounters>,
    /// Reused per publish to collect matching subscriptions without allocating.
    scratch: Vec<(Arc<str>, Route)>,
    /// Ops for the store not yet written (see `flush_store`).
    pending_ops: Vec<StoreOp>,
    /// Sessions whose queue reached `max_queued_messages` (pruned lazily by
    /// `publish_blocker`), so a publish checks subscribers only while some queue is full.
    full_sessions: BTreeSet<Arc<str>>,
    /// Connections the server stopped reading (back-pressure): exempt from keepalive, since
    /// their silence is the broker's doing.
    paused: BTreeSet<ConnId>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("sessions", &self.sessions.len())
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

fn op_client(op: &StoreOp) -> Option<&str> {
    Some(match op {
        StoreOp::SessionCreated { client_id, .. }
        | StoreOp::SessionExpiryChanged { client_id, .. }
        | StoreOp::SessionDeleted { client_id }
        | StoreOp::Subscribed { client_id, .. }
        | StoreOp::Unsubscribed { client_id, .. }
        | StoreOp::Queued { client_id, .. }
        | StoreOp::Dequeued { client_id, .. }
        | StoreOp::SentInFlight { client_id, .. }
        | StoreOp::PubRecReceived { client_id, .. }
        | StoreOp::OutgoingCompleted { client_id, .. }
        | StoreOp::QueueFrontDropped { client_id }
        | StoreOp::IncomingQos2Received { client_id, .. }
        | StoreOp::IncomingQos2Released { client_id, .. }
        | StoreOp::WillStored { client_id, .. }
        | StoreOp::WillCleared { client_id } => client_id,
        StoreOp::RetainedSet { .. } | StoreOp::RetainedCleared { .. } => return None,
    })
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
        let state = store.state().clone();
        let mut core = Core {
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed.unwrap_or(0)),
            config,
            store,
            state,
            sessions: BTreeMap::new(),
            conns: BTreeMap::new(),
            online_count: 0,
            router: Router::new(),
            sys_retained: BTreeMap::new(),
            timers: BTreeSet::new(),
            stats: Stats::default(),
            started_at: now,
            bytes,
            scratch: Vec::new(),
            pending_ops: Vec::new(),
            full_sessions: BTreeSet::new(),
            paused: BTreeSet::new(),
        };
        let loaded: Vec<(String, Option<u32>)> = core
            .state
            .sessions
            .iter()
            .map(|(id, s)| (id.clone(), s.expiry_interval_secs))
            .collect();
        for (id, expiry) in loaded {
            let client_id: Arc<str> = id.as_str().into();
            for (filter, sub) in &core.state.sessions[&id].subscriptions {
                core.router.insert(
                    filter,
                    &client_id,
                    Route {
                        options: sub.options,
                        subscription_id: sub.subscription_id,
                    },
                );
            }
            // The time the session went offline is not durable; its expiry counts from now.
            let expires_at = expiry.map(|secs| now + Duration::from_secs(secs.into()));
            if let Some(at) = expires_at {
                core.timers
                    .insert((at, Timer::SessionExpiry(client_id.clone())));
            }
            core.sessions.insert(
                client_id.clone(),
                SessionRuntime {
                    conn: None,
                    persistent: true,
                    expires_at,
                    pending_will: None,
                },
            );
        }
        tracing::info!(
            sessions = core.sessions.len(),
            retained = core.state.retained.len(),
            "broker state loaded"
        );
        // A stored will belongs to a connection that was open when the broker stopped without
        // a DISCONNECT from the client (a crash): that connection ended uncleanly, so its will
        // is published now [MQTT-3.1.2-8]. The messages it produces are queued for offline
        // sessions, so no action is lost.
        let wills: Vec<(Arc<str>, StoredWill)> = core
            .state
            .sessions
            .iter()
            .filter_map(|(id, s)| Some((Arc::from(id.as_str()), *s.will.clone()?)))
            .collect();
        let mut ignored = Vec::new();
        for (client_id, will) in wills {
            tracing::info!(
                client_id = &*client_id,
                "publishing the will of a connection lost in a restart"
            );
            core.emit(StoreOp::WillCleared {
                client_id: client_id.to_string(),
            });
            core.stats.wills_published += 1;
            core.publish(Some(&client_id), will.message, now, &mut ignored);
        }
        core.flush_store();
        if core.config.sys_interval_secs > 0 {
            core.timers.insert((now, Timer::Sys));
        }
        if core.config.sync_interval_ms > 0 {
            let at = now + Duration::from_millis(core.config.sync_interval_ms);
            core.timers.insert((at, Timer::Sync));
        }
        core
    }

    /// The in-memory fold of every session (clean ones included) and retained message.
    pub fn state(&self) -> &DurableState {
        &self.state
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
        stats.sessions = self.sessions.len() as u64;
        stats.messages_queued = self
            .state
            .sessions
            .values()
            .map(|s| s.queued.len() as u64)
            .sum();
        stats.messages_inflight = self
            .state
            .sessions
            .values()
            .map(|s| s.outgoing.len() as u64)
            .sum();
        stats.retained = self.state.retained.len() as u64;
        stats.subscriptions = self.router.len() as u64;
        stats.bytes_received = self
            .bytes
            .received
            .load(std::sync::atomic::Ordering::Relaxed);
        stats.bytes_sent = self.bytes.sent.load(std::sync::atomic::Ordering::Relaxed);
        stats
    }

    /// Every connected client, in client-id order.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let mut out: Vec<ClientInfo> = self
            .conns
            .iter()
            .filter_map(|(&conn, c)| {
                let online = c.online.as_ref()?;
                let session = self.state.sessions.get(&*online.client_id)?;
                Some(ClientInfo {
                    client_id: online.client_id.to_string(),
                    conn,
                    peer: c.peer.clone(),
                    protocol: online.protocol,
                    username: online.username.clone(),
                    keep_alive_secs: online.keep_alive.as_secs() as u16,
                    persistent: self
                        .sessions
                        .get(&*online.client_id)
                        .is_some_and(|r| r.persistent),
                    subscriptions: session.subscriptions.len(),
                    inflight: session.outgoing.len(),
                    queued: session.queued.len(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
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
            },
        );
        let at = now + Duration::from_secs(self.config.connect_timeout_secs);
        self.timers.insert((at, Timer::ConnectTimeout(conn)));
    }

    /// The earliest time `on_timer` has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// A packet decoded on `conn`.
    pub fn handle(&mut self, conn: ConnId, packet: Packet, now: Instant, out: &mut Vec<Action>) {
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
            Packet::Auth(_) if v5 => self.violation(
                conn,
                ReasonCode::ProtocolError,
                "[MQTT-4.12.0-1] AUTH without an authentication method in CONNECT",
                now,
                out,
            ),
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
                        self.stats.connections_refused += 1;
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
        let Some(conn) = self.sessions.get(client_id).and_then(|s| s.conn) else {
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
                    let expired = self.sessions.get(&client_id).is_some_and(|s| {
                        s.conn.is_none() && s.expires_at.is_some_and(|at| at <= now)
                    });
                    if expired {
                        tracing::info!(client_id = &*client_id, "session expired");
                        // A delayed will is due at the latest when its session ends.
                        self.publish_pending_will(&client_id, now, out);
                        self.drop_session(&client_id);
                    }
                }
                Timer::WillDelay(client_id) => {
                    let due = self.sessions.get(&client_id).is_some_and(|s| {
                        s.conn.is_none()
                            && s.pending_will
                                .as_ref()
                                .is_some_and(|pending| pending.0 <= now)
                    });
                    if due {
                        self.publish_pending_will(&client_id, now, out);
                    }
                }
                Timer::Sys => {
                    self.publish_sys(now, out);
                    let at = now + Duration::from_secs(self.config.sys_interval_secs);
                    self.timers.insert((at, Timer::Sys));
                }
                Timer::Sync => {
                    self.sync_store();
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
        if publish.qos_pid == QosPid::AtMostOnce || self.full_sessions.is_empty() {
            return None;
        }
        // Forget sessions that made room or went offline.
        let mut full = std::mem::take(&mut self.full_sessions);
        full.retain(|client| self.queue_full_online(client));
        self.full_sessions = full;
        if self.full_sessions.is_empty() {
            return None;
        }
        let publisher = self.online(conn)?.client_id.clone();
        let mut blocker = None;
        let full = &self.full_sessions;
        self.router.for_each_match(&publish.topic, |client, route| {
            if blocker.is_none()
                && route.options.qos != QoS::AtMostOnce
                && **client != *publisher
                && full.contains(client)
            {
                blocker = Some(client.clone());
            }
        });
        blocker
    }

    /// True when `client_id` is online and a QoS 1/2 message to it would overflow its queue.
    fn queue_full_online(&self, client_id: &str) -> bool {
        let Some(conn) = self.sessions.get(client_id).and_then(|s| s.conn) else {
            return false;
        };
        let Some(session) = self.state.sessions.get(client_id) else {
            return false;
        };
        let limit = self.online(conn).map_or(0, |o| o.inflight_limit);
        session.queued.len() >= self.config.max_queued_messages
            && !(session.queued.is_empty() && session.outgoing.len() < limit)
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
        let Some(conn) = self.sessions.get(client_id).and_then(|s| s.conn) else {
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
    pub fn shutdown(&mut self, out: &mut Vec<Action>) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.send_disconnect_v5(conn, ReasonCode::ServerShuttingDown, out);
            out.push(Action::Close { conn });
            // Not a failure of the client: its will must not fire at the next start either.
            let client = self.online(conn).map(|o| o.client_id.clone());
            if let Some(client_id) = client {
                if self
                    .state
                    .sessions
                    .get(&*client_id)
                    .is_some_and(|s| s.will.is_some())
                {
                    self.emit(StoreOp::WillCleared {
                        client_id: client_id.to_string(),
                    });
                }
            }
        }
        self.conns.clear();
        self.online_count = 0;
        self.sync_store();
    }

    // ----- connection lifecycle -----

    fn on_connect(&mut self, conn: ConnId, connect: Connect, now: Instant, out: &mut Vec<Action>) {
        let protocol = connect.protocol;
        let v5 = protocol == ProtocolVersion::V5;
        if v5 && connect.properties.authentication_method.is_some() {
            // Enhanced authentication (AUTH exchanges) is not offered.
            return self.refuse(
                conn,
                protocol,
                ReasonCode::BadAuthenticationMethod,
                now,
                out,
            );
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
        let username = connect.username.as_ref().map(|u| u.to_string());
        if username.is_none() && !self.config.allow_anonymous {
            return self.refuse(conn, protocol, ReasonCode::NotAuthorized, now, out);
        }
        match self
            .config
            .authenticator
            .authenticate(username.as_deref(), connect.password.as_deref())
        {
            AuthOutcome::Allowed => {}
            AuthOutcome::BadUserNameOrPassword => {
                return self.refuse(conn, protocol, ReasonCode::BadUserNameOrPassword, now, out)
            }
            AuthOutcome::NotAuthorized => {
                return self.refuse(conn, protocol, ReasonCode::NotAuthorized, now, out)
            }
        }
        let client_id: Arc<str> = if assigned {
            self.assign_client_id()
        } else {
            connect.client_id.as_str().into()
        };
        let mut will = connect.will;
        if let Some(w) = &will {
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
        let existing_conn = self.sessions.get(&client_id).and_then(|s| s.conn);
        if existing_conn.is_none() && self.online_count >= self.config.max_connections {
            tracing::warn!(conn, "max_connections reached; refusing CONNECT");
            return self.refuse(conn, protocol, ReasonCode::ServerUnavailable, now, out);
        }
        if let Some(rt) = self.sessions.get_mut(&client_id) {
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
        let exists = self.state.sessions.contains_key(&*client_id);
        let session_present = exists && !connect.clean_start;
        if session_present {
            let current = self.state.sessions[&*client_id].expiry_interval_secs;
            if current != expiry {
                self.emit(StoreOp::SessionExpiryChanged {
                    client_id: client_id.to_string(),
                    expiry_interval_secs: expiry,
                });
            }
        } else {
            if exists {
                // [MQTT-3.1.2-6] a clean start discards the previous session.
                self.drop_session(&client_id);
            }
            self.sessions.insert(
                client_id.clone(),
                SessionRuntime {
                    conn: None,
                    persistent: expiry != Some(0),
                    expires_at: None,
                    pending_will: None,
                },
            );
            self.emit(StoreOp::SessionCreated {
                client_id: client_id.to_string(),
                expiry_interval_secs: expiry,
                protocol_level: protocol.level(),
            });
        }
        if let Some(rt) = self.sessions.get_mut(&client_id) {
            rt.conn = Some(conn);
            rt.expires_at = None;
        }
        if let Some(w) = &will {
            // Kept with the session so a broker crash does not lose it (see `Core::new`).
            let message = self.will_message(w, now);
            self.emit(StoreOp::WillStored {
                client_id: client_id.to_string(),
                will: StoredWill {
                    message,
                    delay_interval_secs: w.properties.will_delay_interval_secs.unwrap_or(0),
                },
            });
        } else if self.state.sessions[&*client_id].will.is_some() {
            self.emit(StoreOp::WillCleared {
                client_id: client_id.to_string(),
            });
        }

        let receive_maximum = connect
            .properties
            .receive_maximum
            .map_or(u16::MAX, |r| r.get());
        let inflight_limit = self.config.max_inflight_messages.min(receive_maximum) as usize;
        let keep_alive = Duration::from_secs(connect.keep_alive_secs.into());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.online = Some(Box::new(Online {
                client_id: client_id.clone(),
                protocol,
                username,
                will: will.map(Box::new),
                keep_alive,
                inflight_limit,
                max_packet_size: v5
                    .then_some(connect.properties.maximum_packet_size.map(|m| m.get()))
                    .flatten(),
                connect_expiry_secs,
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
            properties.shared_subscription_available = Some(false);
            properties.receive_maximum = std::num::NonZeroU16::new(self.config.max_incoming_qos2);
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
        let resend: Vec<(u16, OutgoingState)> = self.state.sessions[&*client_id]
            .outgoing
            .iter()
            .cloned()
            .collect();
        for (id, state) in resend {
            let Some(packet_id) = PacketId::new(id) else {
                continue;
            };
            match state {
                OutgoingState::Publish(message) => {
                    let qos_pid = QosPid::new(message.qos, Some(packet_id))
                        .unwrap_or(QosPid::AtLeastOnce(packet_id));
                    self.send_publish(conn, &client_id, &message, qos_pid, true, now, out);
                }
                OutgoingState::PubRel => out.push(Action::Send {
                    conn,
                    packet: Packet::PubRel(Ack::new(packet_id)),
                }),
            }
        }
        self.pump(&client_id, now, out);
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
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        out.push(Action::Close { conn });
        let Some(online) = c.online else {
            return;
        };
        self.online_count -= 1;
        let client_id = online.client_id;
        let expiry = self
            .state
            .sessions
            .get(&*client_id)
            .map(|s| s.expiry_interval_secs);
        let this_conn = self
            .sessions
            .get(&client_id)
            .is_some_and(|rt| rt.conn == Some(conn));
        if this_conn {
            match expiry {
                Some(Some(0)) => self.drop_session(&client_id),
                Some(Some(secs)) => {
                    let at = now + Duration::from_secs(secs.into());
                    if let Some(rt) = self.sessions.get_mut(&client_id) {
                        rt.conn = None;
                        rt.expires_at = Some(at);
                    }
                    self.timers
                        .insert((at, Timer::SessionExpiry(client_id.clone())));
                }
                _ => {
                    if let Some(rt) = self.sessions.get_mut(&client_id) {
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
        let session_lives = this_conn && self.sessions.contains_key(&client_id);
        if publish_will && delay_secs > 0 && session_lives {
            if let Some(will) = &online.will {
                // Due after the delay, or when the session ends if that comes first (the
                // session expiry timer publishes it then). It stays in the store meanwhile.
                let at = now + Duration::from_secs(delay_secs.into());
                let message = self.will_message(will, now);
                if let Some(rt) = self.sessions.get_mut(&client_id) {
                    rt.pending_will = Some(Box::new((at, message)));
                }
                self.timers
                    .insert((at, Timer::WillDelay(client_id.clone())));
                return;
            }
        }
        if self
            .state
            .sessions
            .get(&*client_id)
            .is_some_and(|s| s.will.is_some())
        {
            self.emit(StoreOp::WillCleared {
                client_id: client_id.to_string(),
            });
        }
        if publish_will {
            if let Some(will) = online.will {
                self.stats.wills_published += 1;
                tracing::debug!(client_id = &*client_id, topic = %will.topic, "publishing will");
                let message = self.will_message(&will, now);
                self.publish(Some(&client_id), message, now, out);
            }
        }
    }

    fn publish_pending_will(&mut self, client_id: &Arc<str>, now: Instant, out: &mut Vec<Action>) {
        let Some((_, message)) = self
            .sessions
            .get_mut(client_id)
            .and_then(|rt| rt.pending_will.take())
            .map(|pending| *pending)
        else {
            return;
        };
        if self
            .state
            .sessions
            .get(&**client_id)
            .is_some_and(|s| s.will.is_some())
        {
            self.emit(StoreOp::WillCleared {
                client_id: client_id.to_string(),
            });
        }
        self.stats.wills_published += 1;
        tracing::debug!(client_id = &**client_id, topic = %message.topic, "publishing delayed will");
        self.publish(Some(client_id), message, now, out);
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
            },
        }
    }

    fn drop_session(&mut self, client_id: &str) {
        if let Some(session) = self.state.sessions.get(client_id) {
            let filters: Vec<String> = session
                .subscriptions
                .keys()
                .map(|f| f.to_string())
                .collect();
            for filter in filters {
                self.router.remove(&filter, client_id);
            }
            self.emit(StoreOp::SessionDeleted {
                client_id: client_id.to_string(),
            });
        }
        self.sessions.remove(client_id);
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
        self.end_connection(conn, true, now, out);
    }

    fn assign_client_id(&mut self) -> Arc<str> {
        loop {
            let id = format!("simqtt-{:016x}", self.rng.next_u64());
            if !self.sessions.contains_key(id.as_str()) {
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
        let client_id = online.client_id.clone();
        let v5 = online.protocol == ProtocolVersion::V5;
        let username = online.username.clone();
        if v5 && publish.properties.topic_alias.is_some() {
            // CONNACK announced no Topic Alias Maximum (so 0).
            return self.violation(
                conn,
                ReasonCode::TopicAliasInvalid,
                "[MQTT-3.3.2-8] topic alias above the announced maximum of 0",
                now,
                out,
            );
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
            && self.config.authenticator.can_publish(
                username.as_deref(),
                &client_id,
                &publish.topic,
            );
        if !allowed {
            self.stats.messages_dropped += 1;
            self.stats.dropped_not_authorized += 1;
            tracing::debug!(client_id = &*client_id, topic = %publish.topic, "publish refused");
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
            },
        };
        match qos_pid {
            QosPid::AtMostOnce => {
                if allowed {
                    self.publish(Some(&client_id), message, now, out);
                }
            }
            QosPid::AtLeastOnce(id) => {
                // Routed (and, for persistent subscribers, stored) before the PUBACK goes out.
                if allowed {
                    self.publish(Some(&client_id), message, now, out);
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
                let seen = self
                    .state
                    .sessions
                    .get(&*client_id)
                    .is_some_and(|s| s.incoming_qos2.contains(&id.get()));
                let receiving = self
                    .state
                    .sessions
                    .get(&*client_id)
                    .map_or(0, |s| s.incoming_qos2.len());
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
                        self.publish(Some(&client_id), message, now, out);
                    }
                    self.emit(StoreOp::IncomingQos2Received {
                        client_id: client_id.to_string(),
                        packet_id: id,
                    });
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

    fn on_pubrel(&mut self, conn: ConnId, rel: Ack, out: &mut Vec<Action>) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let client_id = online.client_id.clone();
        let v5 = online.protocol == ProtocolVersion::V5;
        let known = self
            .state
            .sessions
            .get(&*client_id)
            .is_some_and(|s| s.incoming_qos2.contains(&rel.packet_id.get()));
        if known {
            self.emit(StoreOp::IncomingQos2Released {
                client_id: client_id.to_string(),
                packet_id: rel.packet_id,
            });
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

    fn outgoing_state(&self, client_id: &str, id: PacketId) -> Option<&OutgoingState> {
        self.state
            .sessions
            .get(client_id)?
            .outgoing
            .iter()
            .find(|(i, _)| *i == id.get())
            .map(|(_, s)| s)
    }

    fn on_puback(&mut self, conn: ConnId, puback: Ack, now: Instant, out: &mut Vec<Action>) {
        let Some(client_id) = self.online(conn).map(|o| o.client_id.clone()) else {
            return;
        };
        match self.outgoing_state(&client_id, puback.packet_id) {
            Some(OutgoingState::Publish(m)) if m.qos == QoS::AtLeastOnce => {
                self.emit(StoreOp::OutgoingCompleted {
                    client_id: client_id.to_string(),
                    packet_id: puback.packet_id,
                });
                self.pump_after_ack(&client_id, now, out);
            }
            _ => tracing::debug!(conn, id = puback.packet_id, "PUBACK for no QoS 1 message"),
        }
    }

    fn on_pubrec(&mut self, conn: ConnId, pubrec: Ack, now: Instant, out: &mut Vec<Action>) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let client_id = online.client_id.clone();
        let v5 = online.protocol == ProtocolVersion::V5;
        let id = pubrec.packet_id;
        match self.outgoing_state(&client_id, id) {
            Some(OutgoingState::Publish(m)) if m.qos == QoS::ExactlyOnce => {
                if v5 && pubrec.reason_code.is_error() {
                    // The receiver refused the message: the flow ends here.
                    self.emit(StoreOp::OutgoingCompleted {
                        client_id: client_id.to_string(),
                        packet_id: id,
                    });
                    self.pump_after_ack(&client_id, now, out);
                    return;
                }
                self.emit(StoreOp::PubRecReceived {
                    client_id: client_id.to_string(),
                    packet_id: id,
                });
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
        let Some(client_id) = self.online(conn).map(|o| o.client_id.clone()) else {
            return;
        };
        match self.outgoing_state(&client_id, pubcomp.packet_id) {
            Some(OutgoingState::PubRel) => {
                self.emit(StoreOp::OutgoingCompleted {
                    client_id: client_id.to_string(),
                    packet_id: pubcomp.packet_id,
                });
                self.pump_after_ack(&client_id, now, out);
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
        let v5 = online.protocol == ProtocolVersion::V5;
        let username = online.username.clone();
        let max_qos = QoS::from_u8(self.config.max_qos).unwrap_or(QoS::ExactlyOnce);
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained: Vec<StoredMessage> = Vec::new();
        // [MQTT-3.8.4-4] each filter as if in its own SUBSCRIBE, one SUBACK for all.
        for (filter, options) in subscribe.filters {
            if v5 && filter.shared().is_some() {
                codes.push(ReasonCode::SharedSubscriptionsNotSupported);
                continue;
            }
            if !self
                .config
                .authenticator
                .can_subscribe(username.as_deref(), &client_id, &filter)
            {
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
                .state
                .sessions
                .get(&*client_id)
                .is_some_and(|s| s.subscriptions.contains_key(&filter));
            let subscription_id = if v5 {
                subscribe.properties.subscription_identifier
            } else {
                None
            };
            // [MQTT-3.8.4-3] a subscription to the same filter replaces the old one.
            self.emit(StoreOp::Subscribed {
                client_id: client_id.to_string(),
                filter: filter.clone(),
                subscription: StoredSubscription {
                    options,
                    subscription_id,
                },
            });
            self.router.insert(
                &filter,
                &client_id,
                Route {
                    options,
                    subscription_id,
                },
            );
            codes.push(qos_code(granted));
            let send_retained = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNewSubscription => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                // [MQTT-3.3.1-6] [MQTT-3.3.1-8] the latest retained message of each matching
                // topic, with RETAIN set, at the lower of its QoS and the granted one.
                for m in self
                    .state
                    .retained
                    .values()
                    .chain(self.sys_retained.values())
                {
                    if codec::matches(&filter, &m.topic) {
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
            self.deliver(&client_id, message, now, out);
        }
    }

    fn on_unsubscribe(&mut self, conn: ConnId, unsubscribe: Unsubscribe, out: &mut Vec<Action>) {
        let Some(online) = self.online(conn) else {
            return;
        };
        let client_id = online.client_id.clone();
        let v5 = online.protocol == ProtocolVersion::V5;
        let mut codes = Vec::new();
        for filter in unsubscribe.filters {
            // [MQTT-3.10.4-1] compared literally; messages already in flight still complete
            // [MQTT-3.10.4-3] because the session's outgoing state is untouched.
            let existed = self.router.remove(&filter, &client_id);
            if existed {
                self.emit(StoreOp::Unsubscribed {
                    client_id: client_id.to_string(),
                    filter,
                });
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
        let client_id = online.client_id.clone();
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
            self.emit(StoreOp::SessionExpiryChanged {
                client_id: client_id.to_string(),
                expiry_interval_secs: expiry,
            });
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

    /// Milliseconds since the broker started: the clock of message expiry.
    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started_at).as_millis() as u64
    }

    /// Handles a message accepted from `publisher` (None: the broker itself): the retained
    /// store, then every matching subscription [MQTT-4.5.0-1].
    fn publish(
        &mut self,
        publisher: Option<&str>,
        message: StoredMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if message.retain {
            if message.payload.is_empty() {
                // [MQTT-3.3.1-10] [MQTT-3.3.1-11] an empty retained message clears the topic.
                if self.state.retained.contains_key(&message.topic) {
                    self.emit(StoreOp::RetainedCleared {
                        topic: message.topic.clone(),
                    });
                }
            } else {
                // [MQTT-3.3.1-5] [MQTT-3.3.1-7] replaces whatever was retained, QoS 0 included.
                self.emit(StoreOp::RetainedSet {
                    message: message.clone(),
                });
            }
        }
        self.forward(publisher, message, now, out);
    }

    fn forward(
        &mut self,
        publisher: Option<&str>,
        message: StoredMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        self.router.for_each_match(&message.topic, |client, route| {
            if route.options.no_local && publisher == Some(&**client) {
                return;
            }
            matches.push((client.clone(), *route));
        });
        // One copy per client at the highest matching QoS (see the module doc).
        matches.sort_by(|a, b| a.0.cmp(&b.0));
        let mut i = 0;
        while i < matches.len() {
            let client = matches[i].0.clone();
            let mut qos = QoS::AtMostOnce;
            let mut retain_as_published = false;
            while i < matches.len() && matches[i].0 == client {
                qos = qos.max(matches[i].1.options.qos);
                retain_as_published |= matches[i].1.options.retain_as_published;
                i += 1;
            }
            let mut copy = message.clone();
            copy.qos = copy.qos.min(qos);
            // [MQTT-3.3.1-9] live forwarding clears RETAIN (5.0: unless Retain As Published).
            copy.retain = message.retain && retain_as_published;
            self.deliver(&client, copy, now, out);
        }
        self.scratch = matches;
    }

    /// Puts `message` (its QoS already the effective one) on its way to `client_id`: sent now
    /// if the client is online and its window has room, else queued (bounded).
    fn deliver(
        &mut self,
        client_id: &Arc<str>,
        message: StoredMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let conn = self.sessions.get(client_id).and_then(|s| s.conn);
        let Some(session) = self.state.sessions.get(&**client_id) else {
            return;
        };
        if let Some(conn) = conn {
            if message.qos == QoS::AtMostOnce {
                self.send_publish(
                    conn,
                    client_id,
                    &message,
                    QosPid::AtMostOnce,
                    false,
                    now,
                    out,
                );
                return;
            }
            let limit = self.online(conn).map_or(0, |o| o.inflight_limit);
            if session.queued.is_empty() && session.outgoing.len() < limit {
                if !self.deliverable(conn, client_id, &message, now) {
                    return;
                }
                let packet_id = alloc_packet_id(&self.state, client_id);
                self.emit(StoreOp::SentInFlight {
                    client_id: client_id.to_string(),
                    packet_id,
                    message: message.clone(),
                });
                let qos_pid = QosPid::new(message.qos, Some(packet_id))
                    .unwrap_or(QosPid::AtLeastOnce(packet_id));
                self.send_publish(conn, client_id, &message, qos_pid, false, now, out);
                return;
            }
        } else if message.qos == QoS::AtMostOnce && !self.config.queue_qos0_messages {
            return;
        }
        self.enqueue(client_id, message);
    }

    fn enqueue(&mut self, client_id: &str, message: StoredMessage) {
        let Some(session) = self.state.sessions.get(client_id) else {
            return;
        };
        if session.queued.len() + 1 >= self.config.max_queued_messages
            && message.qos != QoS::AtMostOnce
        {
            self.full_sessions.insert(client_id.into());
        }
        if self.config.max_queued_messages == 0 {
            self.stats.messages_dropped += 1;
            self.stats.dropped_queue_full += 1;
            return;
        }
        if session.queued.len() >= self.config.max_queued_messages {
            // Overflow policy: drop the oldest (see `BrokerConfig::max_queued_messages`).
            self.stats.messages_dropped += 1;
            self.stats.dropped_queue_full += 1;
            self.emit(StoreOp::QueueFrontDropped {
                client_id: client_id.to_string(),
            });
        }
        self.emit(StoreOp::Queued {
            client_id: client_id.to_string(),
            message,
        });
    }

    /// `pump` after an acknowledgement freed a slot of `client_id`'s window: only once a
    /// quarter of the window is free (or a QoS 0 message heads the queue). Under load the
    /// window then refills in runs, which the connection writes with one system call each,
    /// instead of one message per acknowledgement; the client still has three quarters of its
    /// window in flight, so nothing waits that could go, and at low load, when nothing is
    /// queued, `deliver` sends at once as before. Nothing can stall: while messages are queued
    /// the window holds at least one unacknowledged message, whose acknowledgement calls this
    /// again.
    fn pump_after_ack(&mut self, client_id: &Arc<str>, now: Instant, out: &mut Vec<Action>) {
        let Some(conn) = self.sessions.get(client_id).and_then(|s| s.conn) else {
            return;
        };
        let limit = self.online(conn).map_or(0, |o| o.inflight_limit);
        let Some(session) = self.state.sessions.get(&**client_id) else {
            return;
        };
        let Some(front) = session.queued.front() else {
            return;
        };
        let refill = (limit / 4).max(1);
        if front.qos == QoS::AtMostOnce || session.outgoing.len() + refill <= limit {
            self.pump(client_id, now, out);
        }
    }

    /// Moves queued messages into the in-flight window while it has room.
    fn pump(&mut self, client_id: &Arc<str>, now: Instant, out: &mut Vec<Action>) {
        let Some(conn) = self.sessions.get(client_id).and_then(|s| s.conn) else {
            return;
        };
        let limit = self.online(conn).map_or(0, |o| o.inflight_limit);
        loop {
            let Some(session) = self.state.sessions.get(&**client_id) else {
                return;
            };
            let Some(front) = session.queued.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce && session.outgoing.len() >= limit {
                return;
            }
            let message = front.clone();
            if message.qos == QoS::AtMostOnce || !self.deliverable(conn, client_id, &message, now) {
                // A QoS 0 message leaves the queue as it is sent (it has no in-flight state).
                self.emit(StoreOp::QueueFrontDropped {
                    client_id: client_id.to_string(),
                });
                if message.qos == QoS::AtMostOnce {
                    self.send_publish(
                        conn,
                        client_id,
                        &message,
                        QosPid::AtMostOnce,
                        false,
                        now,
                        out,
                    );
                }
                continue;
            }
            let packet_id = alloc_packet_id(&self.state, client_id);
            self.emit(StoreOp::Dequeued {
                client_id: client_id.to_string(),
                packet_id,
            });
            let qos_pid =
                QosPid::new(message.qos, Some(packet_id)).unwrap_or(QosPid::AtLeastOnce(packet_id));
            self.send_publish(conn, client_id, &message, qos_pid, false, now, out);
        }
    }

    /// False (and counted) for a 5.0 message that expired or exceeds the client's maximum
    /// packet size; such a message is dropped rather than sent [MQTT-3.3.2-5 in 5.0]
    /// [MQTT-3.1.2-25 in 5.0].
    fn deliverable(
        &mut self,
        conn: ConnId,
        client_id: &str,
        message: &StoredMessage,
        now: Instant,
    ) -> bool {
        let expired = message
            .properties
            .expires_at_ms
            .is_some_and(|at| at <= self.now_ms(now));
        let too_large = match self.online(conn).and_then(|o| o.max_packet_size) {
            Some(max) => {
                let packet =
                    self.publish_packet(conn, client_id, message, QosPid::AtMostOnce, false, now);
                codec::encoded_len(&packet, ProtocolVersion::V5)
                    .map_or(true, |n| n + 2 > max as usize)
            }
            None => false,
        };
        if expired || too_large {
            self.stats.messages_dropped += 1;
            self.stats.dropped_undeliverable += 1;
            return false;
        }
        true
    }

    fn publish_packet(
        &self,
        conn: ConnId,
        client_id: &str,
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
            // Subscription identifiers of the client's matching subscriptions (5.0 3.3.4).
            let subscription_identifiers = self
                .state
                .sessions
                .get(client_id)
                .map(|s| {
                    s.subscriptions
                        .iter()
                        .filter_map(|(f, sub)| {
                            sub.subscription_id
                                .filter(|_| codec::matches(f, &message.topic))
                        })
                        .collect()
                })
                .unwrap_or_default();
            PublishProperties {
                payload_format_utf8: p.payload_format_utf8,
                // The remaining lifetime [MQTT-3.3.2-6 in 5.0].
                message_expiry_interval_secs: p.expires_at_ms.map(|at| {
                    let left_ms = at.saturating_sub(self.now_ms(now));
                    left_ms.div_ceil(1000).min(u64::from(u32::MAX)) as u32
                }),
                topic_alias: None,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers,
                content_type: p.content_type.clone(),
            }
        } else {
            PublishProperties::default()
        };
        Packet::Publish(Publish {
            // [MQTT-3.3.1-2] never DUP on QoS 0.
            dup: dup && qos_pid != QosPid::AtMostOnce,
            qos_pid,
            retain: message.retain,
            topic: message.topic.clone(),
            properties: properties.into(),
            payload: message.payload.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn send_publish(
        &mut self,
        conn: ConnId,
        client_id: &str,
        message: &StoredMessage,
        qos_pid: QosPid,
        dup: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if qos_pid == QosPid::AtMostOnce && !self.deliverable(conn, client_id, message, now) {
            return;
        }
        let packet = self.publish_packet(conn, client_id, message, qos_pid, dup, now);
        self.stats.messages_sent += 1;
        out.push(Action::Send { conn, packet });
    }

    fn publish_sys(&mut self, now: Instant, out: &mut Vec<Action>) {
        let stats = self.stats(now);
        for (topic, value) in stats.sys_topics() {
            let message = StoredMessage {
                topic: TopicName::from_static(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: MessageProperties::default(),
            };
            // Kept for new subscribers, but never in the durable store: it is recomputed.
            self.sys_retained
                .insert(message.topic.clone(), message.clone());
            let mut live = message;
            live.retain = false;
            self.forward(None, live, now, out);
        }
    }

    // ----- the store -----

    /// Writes the store ops gathered since the last call as one batch (group commit: under
    /// `every-write` one sync for all of them). The I/O layer calls it after every batch of
    /// events and BEFORE it carries out the resulting actions, so no acknowledgement leaves
    /// before the state it promises is durable. The core does no I/O between gathering and
    /// flushing, so a crash cannot fall in between.
    pub fn flush_store(&mut self) {
        if self.pending_ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pending_ops);
        if let Err(error) = self.store.apply_batch(ops) {
            self.stats.store_errors += 1;
            tracing::error!(%error, "store write failed; carrying on from memory");
        }
    }

    /// Ops gathered and not yet written by `flush_store`.
    pub fn pending_store_ops(&self) -> usize {
        self.pending_ops.len()
    }

    /// Applies `op` to the in-memory state and, when it concerns a persistent session or a
    /// retained message, queues it for the store (`flush_store`).
    fn emit(&mut self, op: StoreOp) {
        let durable = match &op {
            StoreOp::SessionCreated {
                expiry_interval_secs,
                ..
            } => *expiry_interval_secs != Some(0),
            other => {
                op_client(other).is_none_or(|c| self.sessions.get(c).is_some_and(|s| s.persistent))
            }
        };
        if durable {
            self.state.apply(&op);
            self.pending_ops.push(op);
        } else {
            self.state.apply_owned(op);
        }
    }

    fn sync_store(&mut self) {
        self.flush_store();
        if let Err(error) = self.store.sync() {
            self.stats.store_errors += 1;
            tracing::error!(%error, "store sync failed");
        }
    }
}

fn alloc_packet_id(state: &DurableState, client_id: &str) -> PacketId {
    let session = &state.sessions[client_id];
    let mut id = session.next_packet_id.max(1);
    // The in-flight window is far below 65535, so a free id is always found.
    for _ in 0..u16::MAX {
        if !session.outgoing.iter().any(|(i, _)| *i == id) {
            break;
        }
        id = next_id(id);
    }
    PacketId::new(id).unwrap_or(PacketId::MIN)
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

#[cfg(test)]
mod tests;
