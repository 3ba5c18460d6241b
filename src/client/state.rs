//! The client state machine. It does no I/O: the driver feeds it packets, commands and clock
//! ticks (`handle_*(…, now)`) and carries out the `Action`s it returns, in order. Everything
//! the protocol promises (packet id reuse, DUP on resend, resend order, PUBREL resumption,
//! exactly-once delivery of incoming QoS 2, keepalive, resubscription) is decided here, so it
//! is unit-tested on packet values without sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use super::error::ClientError;
use super::options::{ConnectOptions, ResubscribePolicy};
use super::persist::{ClientDurable, PersistOp, StoredPublish};
use crate::codec::{
    Ack, Auth, AuthProperties, Connect, ConnectProperties, Disconnect, MqttStr, Packet, PacketId,
    PropertyBox, ProtocolVersion, Publish, PublishProperties, QoS, QosPid, ReasonCode, Subscribe,
    SubscribeProperties, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe, Will,
    WillProperties,
};
use crate::scram::{self, ClientAwaitingFinal, ClientExchange};

/// Identifies one operation (publish, subscribe, unsubscribe) across actions and events.
pub type Token = u64;

/// Tokens the state machine makes up itself (restored publishes, resubscriptions) have the top
/// bit set, so they never collide with tokens the application's handle hands out.
pub const INTERNAL_TOKEN_BASE: Token = 1 << 63;

/// Largest in-flight window: leaves packet ids for SUBSCRIBE/UNSUBSCRIBE.
pub const INFLIGHT_WINDOW_MAX: u16 = 65_535 - PENDING_REQUESTS_MAX as u16;
/// Most SUBSCRIBE/UNSUBSCRIBE awaiting acknowledgement.
pub const PENDING_REQUESTS_MAX: usize = 1024;
/// Filters per resubscribe SUBSCRIBE packet, so one packet stays well under size limits.
const RESUBSCRIBE_FILTERS_PER_PACKET: usize = 64;

/// A request from the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Publish {
        token: Token,
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        /// 5.0 properties (empty in 3.1.1). A `topic_alias` here is honoured when it is
        /// within the broker's Topic Alias Maximum, else the topic is sent in full.
        properties: PropertyBox<PublishProperties>,
    },
    Subscribe {
        token: Token,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
    },
    Unsubscribe {
        token: Token,
        filters: Vec<TopicFilter>,
    },
    /// 5.0: re-authenticate (SCRAM-SHA-256, §4.12.1) on the current connection, with the
    /// options' password or, for this exchange only, `password`.
    Reauthenticate {
        token: Token,
        password: Option<Bytes>,
    },
}

/// A message delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<PacketId>,
    /// 5.0 only; default in 3.1.1.
    pub properties: PublishProperties,
}

/// What happened, as the application (and a trace checker) sees it. The driver wraps each in
/// an `Event` with the time and the connection attempt number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// CONNACK accepted. `reconnect`: an earlier connection of this client had completed.
    ConnectComplete {
        reconnect: bool,
        session_present: bool,
    },
    /// A connection attempt ended before CONNACK accepted it.
    ConnectFailed {
        cause: ClientError,
    },
    /// An accepted connection ended.
    ConnectionLost {
        cause: ClientError,
    },
    /// The driver will try again after `delay` (`failures` consecutive failures so far).
    ReconnectScheduled {
        delay: Duration,
        failures: u32,
    },
    MessageArrived(Message),
    /// A PUBLISH of ours was written (first send or resend), with the DUP flag it carries.
    PublishSent {
        token: Token,
        packet_id: Option<PacketId>,
        qos: QoS,
        dup: bool,
    },
    /// A QoS 1/2 publish was taken into the in-flight state (persisted first) with this packet
    /// id; from here on it is resent after a restart with its persistence.
    PublishAccepted {
        token: Token,
        packet_id: PacketId,
    },
    /// A PUBREL of ours was written: after a PUBREC, or resent on reconnect [MQTT-4.4.0-1].
    ReleaseSent {
        token: Token,
        packet_id: PacketId,
    },
    /// QoS 0: written; QoS 1: PUBACK; QoS 2: PUBCOMP (or PUBREC accepted before a session
    /// was lost: the broker owns the message then).
    DeliveryComplete {
        token: Token,
        packet_id: Option<PacketId>,
        qos: QoS,
    },
    DeliveryFailed {
        token: Token,
        packet_id: Option<PacketId>,
        cause: ClientError,
    },
    SubscribeComplete {
        token: Token,
        packet_id: PacketId,
        filters: Vec<TopicFilter>,
        granted: Vec<ReasonCode>,
        /// Sent by the client itself after a reconnect (the resubscribe policy).
        resubscribe: bool,
    },
    UnsubscribeComplete {
        token: Token,
        packet_id: PacketId,
        filters: Vec<TopicFilter>,
        reason_codes: Vec<ReasonCode>,
    },
    /// Persistence trouble that was survived (torn log tail) or that lost durability.
    PersistenceWarning {
        message: String,
    },
    /// The client ended: by `disconnect`, or by giving up (`cause`).
    Stopped {
        cause: Option<ClientError>,
    },
}

/// How an operation completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Published,
    /// One code per filter: granted QoS or failure.
    Subscribed(Vec<ReasonCode>),
    /// 5.0: one code per filter; 3.1.1: empty.
    Unsubscribed(Vec<ReasonCode>),
    /// 5.0: the broker accepted a re-authentication (AUTH 0x00, its signature checked).
    Reauthenticated,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Packet),
    /// Make this durable before any later `Send`.
    Persist(PersistOp),
    Event(EventKind),
    Complete {
        token: Token,
        result: Result<Completion, ClientError>,
    },
    /// A QoS 0 publish: complete `token` (and report DeliveryComplete) once the sends before it
    /// are written, or fail it if writing fails.
    CompleteWhenWritten {
        token: Token,
    },
    /// A QoS 1/2 flow ended: one more publish fits in the in-flight window.
    WindowSlotFreed,
    /// Close the network connection; the driver then calls `connection_lost(cause)`.
    Close(ClientError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    AwaitingConnAck { since: Instant },
    Up,
}

#[derive(Debug)]
struct Outgoing {
    token: Token,
    publish: StoredPublish,
    /// Sent at least once in the current session: a resend carries DUP [MQTT-3.3.1-1].
    sent_in_session: bool,
    /// Sent on the current connection and not yet answered (counts against receive maximum).
    on_wire: bool,
}

#[derive(Debug)]
struct PendingSubscribe {
    token: Token,
    filters: Vec<(TopicFilter, SubscriptionOptions)>,
    resubscribe: bool,
}

#[derive(Debug)]
struct PendingUnsubscribe {
    token: Token,
    filters: Vec<TopicFilter>,
}

/// Where a SCRAM-SHA-256 exchange stands (`crate::scram`).
#[derive(Debug)]
enum ScramPhase {
    /// client-first sent (in CONNECT or AUTH 0x19).
    AwaitingServerFirst(ClientExchange),
    /// client-final sent: the broker's server-final (CONNACK or AUTH 0x00) must prove it
    /// knows the password.
    AwaitingServerFinal(ClientAwaitingFinal),
}

/// The client's protocol state: one per client, kept across connections.
#[derive(Debug)]
pub struct ClientState {
    options: ConnectOptions,
    link: Link,
    ever_connected: bool,
    /// Outgoing QoS 1/2 by acceptance order (the resend order [MQTT-4.6.0-1]).
    outgoing: BTreeMap<u64, Outgoing>,
    outgoing_by_id: BTreeMap<PacketId, u64>,
    /// How many `outgoing` entries are `on_wire`, so acks need not scan the window.
    on_wire_count: usize,
    next_seq: u64,
    pending_subscribes: BTreeMap<PacketId, PendingSubscribe>,
    pending_unsubscribes: BTreeMap<PacketId, PendingUnsubscribe>,
    /// Filters to restore on reconnect, with the options they were requested with.
    subscriptions: BTreeMap<TopicFilter, SubscriptionOptions>,
    /// Incoming QoS 2 ids delivered and awaiting PUBREL [MQTT-4.3.3-2].
    incoming_qos2: BTreeSet<PacketId>,
    next_packet_id: u16,
    next_internal_token: Token,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    keep_alive: Duration,
    /// 5.0 Receive Maximum from CONNACK: most unacknowledged QoS 1/2 on the wire.
    send_quota: usize,
    /// Enhanced authentication: the exchange in progress, the token of a re-authentication
    /// the application waits on, and the source of client nonces.
    scram: Option<ScramPhase>,
    reauth_token: Option<Token>,
    nonce_rng: ChaCha8Rng,
    /// Topic aliases of the current connection, both ways [MQTT-3.3.2-7].
    aliases: TopicAliases,
    /// The driver stopped reading the socket because the application is behind: PINGRESP
    /// cannot be seen, so its absence is not held against the broker.
    reading_paused: bool,
}

/// The topic alias mappings of one network connection; a new connection starts empty
/// [MQTT-3.3.2-7].
///
/// Outbound policy (with `outbound_topic_aliases`): a topic gets the lowest free alias the
/// first time it is published on the connection, while the broker's Topic Alias Maximum from
/// CONNACK leaves one free; it is then sent as an empty topic name plus the alias. Once all
/// aliases are taken, other topics go in full; a mapping never changes within a connection
/// except when the application names an alias itself. No alias is ever above the broker's
/// maximum, and none is sent when the broker announced none [MQTT-3.2.2-17] [MQTT-3.2.2-18].
/// Resends after a reconnect start from the empty table, so they carry their full topic.
#[derive(Debug, Default)]
struct TopicAliases {
    /// The broker's Topic Alias Maximum (0: none) for the current connection.
    outbound_maximum: u16,
    outbound: BTreeMap<TopicName, NonZeroU16>,
    outbound_topics: BTreeMap<NonZeroU16, TopicName>,
    /// What the broker mapped, within the maximum we announced.
    inbound: BTreeMap<NonZeroU16, TopicName>,
}

impl TopicAliases {
    /// The topic name and alias to send for `topic`; `requested` is the application's alias.
    fn outbound(
        &mut self,
        topic: &TopicName,
        requested: Option<NonZeroU16>,
        automatic: bool,
    ) -> (TopicName, Option<NonZeroU16>) {
        let within = |alias: NonZeroU16| alias.get() <= self.outbound_maximum;
        if let Some(alias) = requested.filter(|a| within(*a)) {
            if self.outbound_topics.get(&alias) == Some(topic) {
                return (TopicName::default(), Some(alias));
            }
            self.map(topic.clone(), alias);
            return (topic.clone(), Some(alias));
        }
        if !automatic || self.outbound_maximum == 0 {
            return (topic.clone(), None);
        }
        if let Some(&alias) = self.outbound.get(topic) {
            return (TopicName::default(), Some(alias));
        }
        let free = (1..=self.outbound_maximum)
            .filter_map(NonZeroU16::new)
            .find(|a| !self.outbound_topics.contains_key(a));
        match free {
            Some(alias) => {
                self.map(topic.clone(), alias);
                (topic.clone(), Some(alias))
            }
            None => (topic.clone(), None),
        }
    }

    fn map(&mut self, topic: TopicName, alias: NonZeroU16) {
        if let Some(old) = self.outbound_topics.insert(alias, topic.clone()) {
            self.outbound.remove(&old);
        }
        if let Some(old) = self.outbound.insert(topic, alias) {
            if old != alias {
                self.outbound_topics.remove(&old);
            }
        }
    }
}

impl ClientState {
    /// A state starting from what persistence restored (empty for a fresh client).
    pub fn new(options: ConnectOptions, restored: &ClientDurable, now: Instant) -> ClientState {
        let nonce_seed = options.enhanced_auth.as_ref().map_or(0, |a| a.nonce_seed);
        let mut state = ClientState {
            keep_alive: Duration::from_secs(u64::from(options.keep_alive_secs)),
            options,
            link: Link::Down,
            ever_connected: false,
            outgoing: BTreeMap::new(),
            outgoing_by_id: BTreeMap::new(),
            on_wire_count: 0,
            next_seq: 0,
            pending_subscribes: BTreeMap::new(),
            pending_unsubscribes: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            incoming_qos2: restored.incoming_qos2.clone(),
            next_packet_id: 1,
            next_internal_token: INTERNAL_TOKEN_BASE,
            last_sent: now,
            ping_sent: None,
            send_quota: usize::from(u16::MAX),
            scram: None,
            reauth_token: None,
            nonce_rng: ChaCha8Rng::seed_from_u64(nonce_seed),
            aliases: TopicAliases::default(),
            reading_paused: false,
        };
        for publish in restored.outgoing() {
            let token = state.internal_token();
            // Whether it reached the broker before the restart is unknown: assume it did, so
            // a resend carries DUP (harmless if it had not).
            state.insert_outgoing(token, publish.clone(), true);
            state.next_packet_id = publish.packet_id.get().wrapping_add(1).max(1);
        }
        state
    }

    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    pub fn is_connected(&self) -> bool {
        self.link == Link::Up
    }

    /// Outgoing QoS 1/2 publishes not yet completed (each holds a window slot).
    pub fn inflight_len(&self) -> usize {
        self.outgoing.len()
    }

    pub fn inflight_window(&self) -> usize {
        usize::from(self.options.inflight_window.clamp(1, INFLIGHT_WINDOW_MAX))
    }

    /// Filters the client would restore on reconnect.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&TopicFilter, &SubscriptionOptions)> {
        self.subscriptions.iter()
    }

    /// Incoming QoS 2 ids held until PUBREL.
    pub fn incoming_qos2(&self) -> &BTreeSet<PacketId> {
        &self.incoming_qos2
    }

    fn internal_token(&mut self) -> Token {
        let token = self.next_internal_token;
        self.next_internal_token += 1;
        token
    }

    fn insert_outgoing(&mut self, token: Token, publish: StoredPublish, sent: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outgoing_by_id.insert(publish.packet_id, seq);
        self.outgoing.insert(
            seq,
            Outgoing {
                token,
                publish,
                sent_in_session: sent,
                on_wire: false,
            },
        );
    }

    fn take_outgoing(&mut self, seq: u64) -> Outgoing {
        let entry = self
            .outgoing
            .remove(&seq)
            .expect("seq of an outgoing entry");
        self.outgoing_by_id.remove(&entry.publish.packet_id);
        if entry.on_wire {
            self.on_wire_count -= 1;
        }
        entry
    }

    /// A packet id in use by nothing else [MQTT-2.3.1-2].
    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            let candidate = NonZeroU16::new(self.next_packet_id);
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if let Some(id) = candidate {
                if !self.outgoing_by_id.contains_key(&id)
                    && !self.pending_subscribes.contains_key(&id)
                    && !self.pending_unsubscribes.contains_key(&id)
                {
                    return Some(id);
                }
            }
        }
        None
    }

    fn send(&mut self, packet: Packet, now: Instant, actions: &mut Vec<Action>) {
        self.last_sent = now;
        actions.push(Action::Send(packet));
    }

    // ---- connection lifecycle ------------------------------------------------------------

    /// The transport connected: send CONNECT.
    pub fn transport_connected(&mut self, now: Instant) -> Vec<Action> {
        self.link = Link::AwaitingConnAck { since: now };
        self.ping_sent = None;
        self.reading_paused = false;
        // Aliases belong to one network connection [MQTT-3.3.2-7].
        self.aliases = TopicAliases::default();
        self.keep_alive = Duration::from_secs(u64::from(self.options.keep_alive_secs));
        let mut actions = Vec::new();
        let mut connect = self.connect_packet();
        self.scram = None;
        if self.uses_scram() {
            // The credentials go through the exchange, not in CONNECT.
            let client_first = self.start_scram(None);
            connect.username = None;
            connect.password = None;
            connect.properties.authentication_method = Some(MqttStr::from_static(scram::METHOD));
            connect.properties.authentication_data = Some(Bytes::from(client_first));
        }
        self.send(Packet::Connect(Box::new(connect)), now, &mut actions);
        actions
    }

    /// 5.0 with `enhanced_auth` set.
    fn uses_scram(&self) -> bool {
        self.options.protocol == ProtocolVersion::V5 && self.options.enhanced_auth.is_some()
    }

    /// A new exchange: its client-first.
    fn start_scram(&mut self, password: Option<&[u8]>) -> Vec<u8> {
        let mut random = [0u8; scram::NONCE_BYTES];
        self.nonce_rng.fill_bytes(&mut random);
        let (exchange, client_first) = ClientExchange::start(
            self.options.username.as_deref().unwrap_or_default(),
            password.unwrap_or(self.options.password.as_deref().unwrap_or_default()),
            &scram::nonce(&random),
        );
        self.scram = Some(ScramPhase::AwaitingServerFirst(exchange));
        client_first
    }

    /// An AUTH from the broker: server-first (0x18) or, re-authenticating, the server-final
    /// of success (0x00). Anything else, or a failed check, closes the connection.
    fn on_auth(&mut self, auth: Auth, now: Instant, actions: &mut Vec<Action>) {
        let method_ok = auth.properties.authentication_method.as_deref() == Some(scram::METHOD);
        let data = auth
            .properties
            .authentication_data
            .clone()
            .unwrap_or_default();
        let outcome: Result<(), ClientError> = match (self.scram.take(), auth.reason_code) {
            (_, _) if !method_ok => Err(ClientError::Protocol(
                "[MQTT-4.12.0-5] AUTH without the CONNECT's authentication method".into(),
            )),
            (
                Some(ScramPhase::AwaitingServerFirst(exchange)),
                ReasonCode::ContinueAuthentication,
            ) => match exchange.respond(&data) {
                Ok((awaiting, client_final)) => {
                    self.scram = Some(ScramPhase::AwaitingServerFinal(awaiting));
                    let packet = Packet::Auth(Auth {
                        reason_code: ReasonCode::ContinueAuthentication,
                        properties: AuthProperties {
                            authentication_method: Some(MqttStr::from_static(scram::METHOD)),
                            authentication_data: Some(Bytes::from(client_final)),
                            ..Default::default()
                        }
                        .into(),
                    });
                    self.send(packet, now, actions);
                    return;
                }
                Err(error) => Err(ClientError::Authentication(error.to_string())),
            },
            (Some(ScramPhase::AwaitingServerFinal(awaiting)), ReasonCode::Success)
                if self.link == Link::Up =>
            {
                match awaiting.verify(&data) {
                    Ok(()) => {
                        if let Some(token) = self.reauth_token.take() {
                            actions.push(Action::Complete {
                                token,
                                result: Ok(Completion::Reauthenticated),
                            });
                        }
                        return;
                    }
                    Err(error) => Err(ClientError::Authentication(error.to_string())),
                }
            }
            (_, reason) => Err(ClientError::Protocol(format!(
                "AUTH {reason:?} out of turn in the authentication exchange"
            ))),
        };
        if let Err(cause) = outcome {
            if let Some(token) = self.reauth_token.take() {
                actions.push(Action::Complete {
                    token,
                    result: Err(cause.clone()),
                });
            }
            actions.push(Action::Close(cause));
        }
    }

    fn connect_packet(&self) -> Connect {
        let o = &self.options;
        let v5 = o.protocol == ProtocolVersion::V5;
        let mut properties = ConnectProperties::default();
        if v5 {
            properties = o.connect_properties.clone();
            let expiry = o
                .session_expiry_interval_secs
                .unwrap_or(if o.clean_session { 0 } else { u32::MAX });
            properties.session_expiry_interval_secs = (expiry != 0).then_some(expiry);
            properties.topic_alias_maximum =
                (o.topic_alias_maximum != 0).then_some(o.topic_alias_maximum);
        }
        Connect {
            protocol: o.protocol,
            clean_start: o.clean_session,
            keep_alive_secs: o.keep_alive_secs,
            properties,
            // Checked when the handle is built; an invalid id here would be refused by the
            // broker anyway, so fall back to empty rather than panic.
            client_id: MqttStr::new(&o.client_id).unwrap_or_default(),
            will: o.will.as_ref().map(|w| Will {
                topic: w.topic.clone(),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                properties: match o.protocol {
                    ProtocolVersion::V5 => w.properties.clone(),
                    ProtocolVersion::V311 => WillProperties::default(),
                },
            }),
            username: o.username.as_deref().and_then(|u| MqttStr::new(u).ok()),
            password: o.password.clone(),
        }
    }

    /// The connection ended (after `Close`, a read/write error or end of stream).
    pub fn connection_lost(&mut self, cause: ClientError) -> Vec<Action> {
        let was = self.link;
        self.link = Link::Down;
        self.ping_sent = None;
        self.scram = None;
        let reauth = self.reauth_token.take().map(|token| Action::Complete {
            token,
            result: Err(cause.clone()),
        });
        for entry in self.outgoing.values_mut() {
            entry.on_wire = false;
        }
        self.on_wire_count = 0;
        let event = match was {
            Link::Up => Action::Event(EventKind::ConnectionLost { cause }),
            Link::AwaitingConnAck { .. } | Link::Down => {
                Action::Event(EventKind::ConnectFailed { cause })
            }
        };
        reauth.into_iter().chain([event]).collect()
    }

    /// The DISCONNECT to send for a graceful close, with `reason` in 5.0 (3.1.1 has none).
    pub fn disconnect_packet(&mut self, reason: ReasonCode) -> Packet {
        self.link = Link::Down;
        let reason_code = match self.options.protocol {
            ProtocolVersion::V5 => reason,
            ProtocolVersion::V311 => ReasonCode::Success,
        };
        Packet::Disconnect(Disconnect {
            reason_code,
            ..Disconnect::default()
        })
    }

    /// The client stops: every waiting operation fails. Persisted publishes stay persisted.
    pub fn shutdown(&mut self, cause: ClientError) -> Vec<Action> {
        let mut actions = Vec::new();
        for entry in self.outgoing.values() {
            if entry.token < INTERNAL_TOKEN_BASE {
                actions.push(Action::Complete {
                    token: entry.token,
                    result: Err(cause.clone()),
                });
            }
        }
        for pending in self.pending_subscribes.values() {
            if !pending.resubscribe {
                actions.push(Action::Complete {
                    token: pending.token,
                    result: Err(cause.clone()),
                });
            }
        }
        for pending in self.pending_unsubscribes.values() {
            actions.push(Action::Complete {
                token: pending.token,
                result: Err(cause.clone()),
            });
        }
        self.pending_subscribes.clear();
        self.pending_unsubscribes.clear();
        actions
    }

    // ---- time ----------------------------------------------------------------------------

    pub fn reading_paused(&self) -> bool {
        self.reading_paused
    }

    /// The driver stopped (or resumed) reading the socket for a slow application. While
    /// paused, PINGREQ still goes out every keepalive, so the broker sees the client alive
    /// [MQTT-3.1.2-24], but an unanswered one does not close the connection: its PINGRESP is
    /// queued unread. On resume, an outstanding PINGREQ gets a full keepalive from now.
    pub fn set_reading_paused(&mut self, paused: bool, now: Instant) {
        self.reading_paused = paused;
        if !paused && self.ping_sent.is_some() {
            self.ping_sent = Some(now);
        }
    }

    /// When `handle_tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.link {
            Link::Down => None,
            Link::AwaitingConnAck { since } => Some(since + self.options.connect_timeout),
            Link::Up if self.keep_alive.is_zero() => None,
            Link::Up if self.reading_paused => Some(self.last_sent + self.keep_alive),
            Link::Up => Some(match self.ping_sent {
                Some(sent) => sent + self.keep_alive,
                None => self.last_sent + self.keep_alive,
            }),
        }
    }

    /// Keepalive [MQTT-3.1.2-23] and the connect timeout.
    pub fn handle_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.link {
            Link::Down => {}
            Link::AwaitingConnAck { since } => {
                if now >= since + self.options.connect_timeout {
                    actions.push(Action::Close(ClientError::ConnectTimeout));
                }
            }
            Link::Up if self.keep_alive.is_zero() => {}
            Link::Up if self.reading_paused => {
                if now >= self.last_sent + self.keep_alive {
                    self.ping_sent = Some(self.ping_sent.unwrap_or(now));
                    self.send(Packet::PingReq, now, &mut actions);
                }
            }
            Link::Up => match self.ping_sent {
                Some(sent) if now >= sent + self.keep_alive => {
                    actions.push(Action::Close(ClientError::KeepaliveTimeout));
                }
                Some(_) => {}
                None if now >= self.last_sent + self.keep_alive => {
                    self.ping_sent = Some(now);
                    self.send(Packet::PingReq, now, &mut actions);
                }
                None => {}
            },
        }
        actions
    }

    // ---- commands ------------------------------------------------------------------------

    pub fn handle_command(&mut self, command: Command, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match command {
            Command::Publish {
                token,
                topic,
                payload,
                qos,
                retain,
                properties,
            } => self.publish(
                token,
                topic,
                payload,
                qos,
                retain,
                properties,
                now,
                &mut actions,
            ),
            Command::Subscribe { token, filters } => {
                if self.pending_requests() >= PENDING_REQUESTS_MAX {
                    return fail(token, ClientError::TooManyPendingRequests);
                }
                let Some(packet_id) = self.allocate_packet_id() else {
                    return fail(token, ClientError::TooManyPendingRequests);
                };
                self.pending_subscribes.insert(
                    packet_id,
                    PendingSubscribe {
                        token,
                        filters,
                        resubscribe: false,
                    },
                );
                if self.is_connected() {
                    let packet = self.subscribe_packet(packet_id);
                    self.send(packet, now, &mut actions);
                }
            }
            Command::Unsubscribe { token, filters } => {
                if self.pending_requests() >= PENDING_REQUESTS_MAX {
                    return fail(token, ClientError::TooManyPendingRequests);
                }
                let Some(packet_id) = self.allocate_packet_id() else {
                    return fail(token, ClientError::TooManyPendingRequests);
                };
                // The application no longer wants these: never restore them on reconnect.
                for filter in &filters {
                    self.subscriptions.remove(filter);
                }
                self.pending_unsubscribes
                    .insert(packet_id, PendingUnsubscribe { token, filters });
                if self.is_connected() {
                    let packet = self.unsubscribe_packet(packet_id);
                    self.send(packet, now, &mut actions);
                }
            }
            Command::Reauthenticate { token, password } => {
                if !self.uses_scram() {
                    return fail(
                        token,
                        ClientError::InvalidArgument(
                            "[MQTT-4.12.0-7] re-authentication needs a 5.0 connection made with \
                             enhanced authentication"
                                .into(),
                        ),
                    );
                }
                if !self.is_connected() {
                    return fail(token, ClientError::NotConnected);
                }
                if self.reauth_token.is_some() || self.scram.is_some() {
                    return fail(
                        token,
                        ClientError::InvalidArgument("a re-authentication is under way".into()),
                    );
                }
                let client_first = self.start_scram(password.as_deref());
                self.reauth_token = Some(token);
                // [MQTT-4.12.1-1] the CONNECT's method, reason 0x19.
                let packet = Packet::Auth(Auth {
                    reason_code: ReasonCode::ReAuthenticate,
                    properties: AuthProperties {
                        authentication_method: Some(MqttStr::from_static(scram::METHOD)),
                        authentication_data: Some(Bytes::from(client_first)),
                        ..Default::default()
                    }
                    .into(),
                });
                self.send(packet, now, &mut actions);
            }
        }
        actions
    }

    fn pending_requests(&self) -> usize {
        self.pending_subscribes.len() + self.pending_unsubscribes.len()
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        token: Token,
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: PropertyBox<PublishProperties>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if self.options.protocol == ProtocolVersion::V311 && !properties.is_empty() {
            // Dropping them silently would change what the message means.
            actions.extend(fail(
                token,
                ClientError::InvalidArgument("publish properties need MQTT 5.0".into()),
            ));
            if qos != QoS::AtMostOnce {
                actions.push(Action::WindowSlotFreed);
            }
            return;
        }
        if !properties.subscription_identifiers.is_empty() {
            actions.extend(fail(
                token,
                ClientError::InvalidArgument(
                    "[MQTT-3.3.4-6] a client's PUBLISH carries no Subscription Identifier".into(),
                ),
            ));
            if qos != QoS::AtMostOnce {
                actions.push(Action::WindowSlotFreed);
            }
            return;
        }
        if qos == QoS::AtMostOnce {
            if !self.is_connected() {
                actions.extend(fail(token, ClientError::NotConnected));
                return;
            }
            let (topic, properties) = self.wire_topic(&topic, &properties);
            let packet = Packet::Publish(Publish {
                dup: false,
                qos_pid: QosPid::AtMostOnce,
                retain,
                topic,
                properties: properties.into(),
                payload,
            });
            self.send(packet, now, actions);
            actions.push(Action::Event(EventKind::PublishSent {
                token,
                packet_id: None,
                qos,
                dup: false,
            }));
            actions.push(Action::CompleteWhenWritten { token });
            return;
        }
        // The handle took a window slot for this publish; a refusal gives it back.
        if self.outgoing.len() >= self.inflight_window() {
            actions.extend(fail(token, ClientError::InflightWindowFull));
            actions.push(Action::WindowSlotFreed);
            return;
        }
        let Some(packet_id) = self.allocate_packet_id() else {
            actions.extend(fail(token, ClientError::InflightWindowFull));
            actions.push(Action::WindowSlotFreed);
            return;
        };
        let stored = StoredPublish {
            packet_id,
            topic,
            payload,
            qos,
            retain,
            released: false,
            properties,
        };
        actions.push(Action::Persist(PersistOp::Outgoing(stored.clone())));
        actions.push(Action::Event(EventKind::PublishAccepted {
            token,
            packet_id,
        }));
        self.insert_outgoing(token, stored, false);
        self.send_queued(now, actions);
    }

    /// Sends outgoing entries not yet on the wire, in order, while the quota allows.
    fn send_queued(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if !self.is_connected() {
            return;
        }
        debug_assert_eq!(
            self.on_wire_count,
            self.outgoing.values().filter(|e| e.on_wire).count()
        );
        let room = self.send_quota.saturating_sub(self.on_wire_count);
        if room == 0 || self.on_wire_count == self.outgoing.len() {
            return;
        }
        let seqs: Vec<u64> = self
            .outgoing
            .iter()
            .filter(|(_, e)| !e.on_wire)
            .map(|(s, _)| *s)
            .take(room)
            .collect();
        for seq in seqs {
            let entry = self.outgoing.get_mut(&seq).expect("seq listed above");
            entry.on_wire = true;
            self.on_wire_count += 1;
            let packet = if entry.publish.released {
                // The broker has the message; only the release is outstanding [MQTT-4.3.3-1].
                actions.push(Action::Event(EventKind::ReleaseSent {
                    token: entry.token,
                    packet_id: entry.publish.packet_id,
                }));
                Packet::PubRel(Ack::new(entry.publish.packet_id))
            } else {
                let dup = entry.sent_in_session;
                entry.sent_in_session = true;
                let token = entry.token;
                let p = entry.publish.clone();
                let qos_pid = QosPid::new(p.qos, Some(p.packet_id)).expect("QoS 1/2 with an id");
                actions.push(Action::Event(EventKind::PublishSent {
                    token,
                    packet_id: Some(p.packet_id),
                    qos: p.qos,
                    dup,
                }));
                let (topic, properties) = self.wire_topic(&p.topic, &p.properties);
                Packet::Publish(Publish {
                    dup,
                    qos_pid,
                    retain: p.retain,
                    topic,
                    properties: properties.into(),
                    payload: p.payload,
                })
            };
            self.send(packet, now, actions);
        }
    }

    /// The topic name and properties a PUBLISH of `topic` carries on this connection: the
    /// alias policy of `TopicAliases` applied (5.0 only).
    fn wire_topic(
        &mut self,
        topic: &TopicName,
        properties: &PublishProperties,
    ) -> (TopicName, PublishProperties) {
        let mut properties = properties.clone();
        let requested = properties.topic_alias.take();
        if self.options.protocol == ProtocolVersion::V311 {
            return (topic.clone(), properties);
        }
        let (name, alias) =
            self.aliases
                .outbound(topic, requested, self.options.outbound_topic_aliases);
        properties.topic_alias = alias;
        (name, properties)
    }

    fn subscribe_packet(&self, packet_id: PacketId) -> Packet {
        let pending = &self.pending_subscribes[&packet_id];
        Packet::Subscribe(Subscribe {
            packet_id,
            properties: SubscribeProperties::default(),
            filters: pending.filters.clone(),
        })
    }

    fn unsubscribe_packet(&self, packet_id: PacketId) -> Packet {
        let pending = &self.pending_unsubscribes[&packet_id];
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            user_properties: Vec::new(),
            filters: pending.filters.clone(),
        })
    }

    // ---- packets from the broker ---------------------------------------------------------

    pub fn handle_packet(&mut self, packet: Packet, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Link::AwaitingConnAck { .. } = self.link {
            match packet {
                Packet::ConnAck(connack) => self.on_connack(connack, now, &mut actions),
                Packet::Auth(auth) if self.scram.is_some() => self.on_auth(auth, now, &mut actions),
                // 5.0: a broker may refuse with DISCONNECT-less close; anything else first is
                // a protocol error [MQTT-3.2.0-1].
                other => actions.push(Action::Close(ClientError::Protocol(format!(
                    "[MQTT-3.2.0-1] expected CONNACK first, got {:?}",
                    other.packet_type()
                )))),
            }
            return actions;
        }
        if self.link == Link::Down {
            return actions;
        }
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, now, &mut actions),
            Packet::PubAck(ack) => {
                self.on_final_ack(ack, QoS::AtLeastOnce, now, &mut actions);
            }
            Packet::PubRec(ack) => self.on_pubrec(ack, now, &mut actions),
            Packet::PubRel(ack) => {
                // Release the id; the message was delivered when the PUBLISH arrived.
                if self.incoming_qos2.remove(&ack.packet_id) {
                    actions.push(Action::Persist(PersistOp::IncomingReleased(ack.packet_id)));
                }
                // Answer even for an unknown id (e.g. state lost), so the broker can finish.
                self.send(Packet::PubComp(Ack::new(ack.packet_id)), now, &mut actions);
            }
            Packet::PubComp(ack) => {
                self.on_final_ack(ack, QoS::ExactlyOnce, now, &mut actions);
            }
            Packet::SubAck(suback) => {
                if let Some(pending) = self.pending_subscribes.remove(&suback.packet_id) {
                    let mut filters = Vec::with_capacity(pending.filters.len());
                    for (i, (filter, options)) in pending.filters.into_iter().enumerate() {
                        let granted = suback
                            .reason_codes
                            .get(i)
                            .copied()
                            .unwrap_or(ReasonCode::UnspecifiedError);
                        if granted.is_error() {
                            self.subscriptions.remove(&filter);
                        } else {
                            self.subscriptions.insert(filter.clone(), options);
                        }
                        filters.push(filter);
                    }
                    actions.push(Action::Event(EventKind::SubscribeComplete {
                        token: pending.token,
                        packet_id: suback.packet_id,
                        filters,
                        granted: suback.reason_codes.clone(),
                        resubscribe: pending.resubscribe,
                    }));
                    actions.push(Action::Complete {
                        token: pending.token,
                        result: Ok(Completion::Subscribed(suback.reason_codes)),
                    });
                }
            }
            Packet::UnsubAck(unsuback) => {
                if let Some(pending) = self.pending_unsubscribes.remove(&unsuback.packet_id) {
                    actions.push(Action::Event(EventKind::UnsubscribeComplete {
                        token: pending.token,
                        packet_id: unsuback.packet_id,
                        filters: pending.filters,
                        reason_codes: unsuback.reason_codes.clone(),
                    }));
                    actions.push(Action::Complete {
                        token: pending.token,
                        result: Ok(Completion::Unsubscribed(unsuback.reason_codes)),
                    });
                }
            }
            Packet::PingResp => self.ping_sent = None,
            Packet::Auth(auth) if self.scram.is_some() => self.on_auth(auth, now, &mut actions),
            Packet::Disconnect(disconnect) => {
                actions.push(Action::Close(ClientError::ServerDisconnected(
                    disconnect.reason_code,
                )));
            }
            other => actions.push(Action::Close(ClientError::Protocol(format!(
                "a server does not send {:?} to a client",
                other.packet_type()
            )))),
        }
        actions
    }

    fn on_connack(
        &mut self,
        connack: crate::codec::ConnAck,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if connack.reason_code != ReasonCode::Success {
            actions.push(Action::Close(ClientError::Refused {
                code: connack.reason_code,
                protocol: self.options.protocol,
            }));
            return;
        }
        if self.uses_scram() {
            // The broker proves it knows the password (server-final in CONNACK); a broker
            // that skips the exchange proves nothing.
            let verified = match self.scram.take() {
                Some(ScramPhase::AwaitingServerFinal(awaiting)) => awaiting
                    .verify(
                        connack
                            .properties
                            .authentication_data
                            .as_deref()
                            .unwrap_or_default(),
                    )
                    .map_err(|e| e.to_string()),
                _ => Err("CONNACK before the SCRAM exchange ended".to_string()),
            };
            if let Err(why) = verified {
                actions.push(Action::Close(ClientError::Authentication(why)));
                return;
            }
        }
        self.link = Link::Up;
        let props = &connack.properties;
        self.send_quota = props
            .receive_maximum
            .map_or(usize::from(u16::MAX), |m| usize::from(m.get()));
        self.aliases.outbound_maximum = match self.options.protocol {
            ProtocolVersion::V5 => props.topic_alias_maximum.unwrap_or(0),
            ProtocolVersion::V311 => 0,
        };
        if let Some(secs) = props.server_keep_alive_secs {
            self.keep_alive = Duration::from_secs(u64::from(secs));
        }
        if let Some(id) = &props.assigned_client_identifier {
            // Reconnect as the same client the broker named.
            self.options.client_id = id.as_str().to_string();
        }
        // A clean session, or a persistent one the broker lost: the broker knows none of our
        // packet ids [MQTT-3.1.2-6]. Publishes it had not acknowledged become new messages
        // (DUP 0); a QoS 2 flow past PUBREC is complete, the broker took ownership at PUBREC.
        let session_present = connack.session_present && !self.options.clean_session;
        if !session_present {
            if !self.incoming_qos2.is_empty() {
                self.incoming_qos2.clear();
                actions.push(Action::Persist(PersistOp::ClearIncoming));
            }
            let released: Vec<u64> = self
                .outgoing
                .iter()
                .filter(|(_, e)| e.publish.released)
                .map(|(s, _)| *s)
                .collect();
            for seq in released {
                let entry = self.take_outgoing(seq);
                complete_publish(entry, Ok(()), actions);
            }
            // A QoS 2 PUBLISH already sent in the lost session may have reached the broker
            // (its PUBREC lost): sent again as a new message it could be delivered twice,
            // breaking exactly once [MQTT-4.3.3-2]. With the session gone [MQTT-3.1.2-6] its
            // fate is unknown, so it fails rather than risk a duplicate.
            let unknown: Vec<u64> = self
                .outgoing
                .iter()
                .filter(|(_, e)| e.publish.qos == QoS::ExactlyOnce && e.sent_in_session)
                .map(|(s, _)| *s)
                .collect();
            for seq in unknown {
                let entry = self.outgoing.remove(&seq).expect("listed above");
                self.outgoing_by_id.remove(&entry.publish.packet_id);
                complete_publish(
                    entry,
                    Err(ClientError::Protocol(
                        "[MQTT-3.1.2-6] session lost with this QoS 2 message unacknowledged; not resent, to keep exactly once".into(),
                    )),
                    actions,
                );
            }
            for entry in self.outgoing.values_mut() {
                entry.sent_in_session = false;
            }
        }
        actions.push(Action::Event(EventKind::ConnectComplete {
            reconnect: self.ever_connected,
            session_present: connack.session_present,
        }));
        self.ever_connected = true;

        // Subscriptions first, so messages matching them that we publish below are routed.
        let resubscribe = match self.options.resubscribe {
            ResubscribePolicy::Always => true,
            ResubscribePolicy::WhenSessionNotPresent => !session_present,
            ResubscribePolicy::Never => false,
        };
        if resubscribe {
            self.resubscribe();
        }
        let subscribe_ids: Vec<PacketId> = self.pending_subscribes.keys().copied().collect();
        for id in subscribe_ids {
            let packet = self.subscribe_packet(id);
            self.send(packet, now, actions);
        }
        let unsubscribe_ids: Vec<PacketId> = self.pending_unsubscribes.keys().copied().collect();
        for id in unsubscribe_ids {
            let packet = self.unsubscribe_packet(id);
            self.send(packet, now, actions);
        }
        // Resend in the original order with the original ids [MQTT-4.4.0-1] [MQTT-4.6.0-1].
        self.send_queued(now, actions);
    }

    /// Queues SUBSCRIBE for every known filter not already being subscribed.
    fn resubscribe(&mut self) {
        let in_progress: BTreeSet<&TopicFilter> = self
            .pending_subscribes
            .values()
            .flat_map(|p| p.filters.iter().map(|(f, _)| f))
            .collect();
        let wanted: Vec<(TopicFilter, SubscriptionOptions)> = self
            .subscriptions
            .iter()
            .filter(|(f, _)| !in_progress.contains(f))
            .map(|(f, o)| (f.clone(), *o))
            .collect();
        for chunk in wanted.chunks(RESUBSCRIBE_FILTERS_PER_PACKET) {
            let Some(packet_id) = self.allocate_packet_id() else {
                return;
            };
            let token = self.internal_token();
            self.pending_subscribes.insert(
                packet_id,
                PendingSubscribe {
                    token,
                    filters: chunk.to_vec(),
                    resubscribe: true,
                },
            );
        }
    }

    /// Resolves an incoming topic alias: the topic to deliver, or the protocol error (a
    /// DISCONNECT with 0x94 Topic Alias invalid, then close, as §4.13 says).
    fn resolve_alias(&mut self, publish: &mut Publish) -> Result<(), String> {
        let maximum = match self.options.protocol {
            ProtocolVersion::V5 => self.options.topic_alias_maximum,
            ProtocolVersion::V311 => 0,
        };
        let Some(alias) = publish.properties.topic_alias else {
            if publish.topic.is_empty() {
                return Err("[MQTT-4.7.3-1] PUBLISH with an empty topic name and no alias".into());
            }
            return Ok(());
        };
        if alias.get() > maximum {
            return Err(if maximum == 0 {
                format!("[MQTT-3.1.2-27] topic alias {alias} used, but the client allows none")
            } else {
                format!("[MQTT-3.3.2-11] topic alias {alias} above the client's Topic Alias Maximum {maximum}")
            });
        }
        if publish.topic.is_empty() {
            match self.aliases.inbound.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    return Err(format!(
                        "topic alias {alias} used with an empty topic name before it was mapped on this connection (§3.3.2.3.4: a Protocol Error)"
                    ))
                }
            }
        } else {
            self.aliases.inbound.insert(alias, publish.topic.clone());
        }
        // The application sees the topic, and the alias it came with (as libmosquitto, so
        // `sub -F %A` prints it).
        Ok(())
    }

    fn on_publish(&mut self, mut publish: Publish, now: Instant, actions: &mut Vec<Action>) {
        if let Err(message) = self.resolve_alias(&mut publish) {
            if self.options.protocol == ProtocolVersion::V5 {
                self.send(
                    Packet::Disconnect(Disconnect {
                        reason_code: ReasonCode::TopicAliasInvalid,
                        ..Disconnect::default()
                    }),
                    now,
                    actions,
                );
            }
            actions.push(Action::Close(ClientError::Protocol(message)));
            return;
        }
        let message = |p: Publish| Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos_pid.qos(),
            retain: p.retain,
            dup: p.dup,
            packet_id: p.qos_pid.packet_id(),
            properties: p.properties.into_inner(),
        };
        match publish.qos_pid {
            QosPid::AtMostOnce => {
                actions.push(Action::Event(EventKind::MessageArrived(message(publish))));
            }
            QosPid::AtLeastOnce(id) => {
                actions.push(Action::Event(EventKind::MessageArrived(message(publish))));
                self.send(Packet::PubAck(Ack::new(id)), now, actions);
            }
            QosPid::ExactlyOnce(id) => {
                // Deliver once; a resent PUBLISH with an id we still hold is the same message
                // [MQTT-4.3.3-2]. The id is persisted before PUBREC goes out, so a restart
                // between the two cannot deliver twice.
                if self.incoming_qos2.insert(id) {
                    actions.push(Action::Persist(PersistOp::IncomingQos2(id)));
                    actions.push(Action::Event(EventKind::MessageArrived(message(publish))));
                }
                self.send(Packet::PubRec(Ack::new(id)), now, actions);
            }
        }
    }

    fn on_pubrec(&mut self, ack: Ack, now: Instant, actions: &mut Vec<Action>) {
        let id = ack.packet_id;
        let Some(&seq) = self.outgoing_by_id.get(&id) else {
            // Unknown id: release it anyway so the broker can drop its state.
            let mut rel = Ack::new(id);
            if self.options.protocol == ProtocolVersion::V5 {
                rel.reason_code = ReasonCode::PacketIdentifierNotFound;
            }
            self.send(Packet::PubRel(rel), now, actions);
            return;
        };
        let entry = self.outgoing.get_mut(&seq).expect("index consistent");
        if entry.publish.qos != QoS::ExactlyOnce {
            actions.push(Action::Close(ClientError::Protocol(format!(
                "PUBREC for QoS 1 packet id {id}"
            ))));
            return;
        }
        if ack.reason_code.is_error() {
            // 5.0: the broker refused the message; the flow ends here.
            self.remove_outgoing(
                id,
                Err(ClientError::Rejected(ack.reason_code)),
                now,
                actions,
            );
            return;
        }
        if !entry.publish.released {
            entry.publish.released = true;
            actions.push(Action::Persist(PersistOp::Released(id)));
        }
        actions.push(Action::Event(EventKind::ReleaseSent {
            token: entry.token,
            packet_id: id,
        }));
        self.send(Packet::PubRel(Ack::new(id)), now, actions);
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the flow is done.
    fn on_final_ack(&mut self, ack: Ack, qos: QoS, now: Instant, actions: &mut Vec<Action>) {
        let Some(&seq) = self.outgoing_by_id.get(&ack.packet_id) else {
            // A duplicate or late acknowledgement: nothing waits for it.
            return;
        };
        let entry = &self.outgoing[&seq];
        if entry.publish.qos != qos || (qos == QoS::ExactlyOnce && !entry.publish.released) {
            actions.push(Action::Close(ClientError::Protocol(format!(
                "{:?} does not match the state of packet id {}",
                if qos == QoS::AtLeastOnce {
                    "PUBACK"
                } else {
                    "PUBCOMP"
                },
                ack.packet_id
            ))));
            return;
        }
        // A QoS 2 message's fate is decided at PUBREC: a successful PUBREC means the broker took
        // ownership of it [MQTT-4.3.3-8 (5.0)]. PUBCOMP only ends the packet id's use; its one
        // error, 0x92 Packet Identifier not found, answers a PUBREL the broker had already
        // completed (its PUBCOMP was lost and we resent the PUBREL on reconnect), so it does not
        // refuse the message (5.0 §3.7.2.1).
        let result = if ack.reason_code.is_error() && qos == QoS::AtLeastOnce {
            Err(ClientError::Rejected(ack.reason_code))
        } else {
            Ok(())
        };
        self.remove_outgoing(ack.packet_id, result, now, actions);
    }

    fn remove_outgoing(
        &mut self,
        id: PacketId,
        result: Result<(), ClientError>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(&seq) = self.outgoing_by_id.get(&id) else {
            return;
        };
        let entry = self.take_outgoing(seq);
        complete_publish(entry, result, actions);
        // Room on the wire: the next queued publish may go.
        self.send_queued(now, actions);
    }
}

/// Ends one outgoing flow: persistence, event, token, window slot.
fn complete_publish(entry: Outgoing, result: Result<(), ClientError>, actions: &mut Vec<Action>) {
    let packet_id = Some(entry.publish.packet_id);
    actions.push(Action::Persist(PersistOp::Completed(
        entry.publish.packet_id,
    )));
    actions.push(Action::Event(match &result {
        Ok(()) => EventKind::DeliveryComplete {
            token: entry.token,
            packet_id,
            qos: entry.publish.qos,
        },
        Err(cause) => EventKind::DeliveryFailed {
            token: entry.token,
            packet_id,
            cause: cause.clone(),
        },
    }));
    actions.push(Action::Complete {
        token: entry.token,
        result: result.map(|()| Completion::Published),
    });
    actions.push(Action::WindowSlotFreed);
}

fn fail(token: Token, cause: ClientError) -> Vec<Action> {
    vec![Action::Complete {
        token,
        result: Err(cause),
    }]
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::*;
    use crate::client::options::WillOptions;
    use crate::codec::ConnAck;

    fn pid(n: u16) -> PacketId {
        NonZeroU16::new(n).unwrap()
    }

    fn options() -> ConnectOptions {
        let mut o = ConnectOptions::new("broker:1883", "c1");
        o.clean_session = false;
        o.keep_alive_secs = 10;
        o.connect_timeout = Duration::from_secs(5);
        o
    }

    fn sends(actions: &[Action]) -> Vec<Packet> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn events(actions: &[Action]) -> Vec<EventKind> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn delivered(actions: &[Action]) -> Vec<Message> {
        events(actions)
            .into_iter()
            .filter_map(|e| match e {
                EventKind::MessageArrived(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn completion(actions: &[Action], token: Token) -> Option<Result<Completion, ClientError>> {
        actions.iter().find_map(|a| match a {
            Action::Complete { token: t, result } if *t == token => Some(result.clone()),
            _ => None,
        })
    }

    fn connack(session_present: bool) -> Packet {
        Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::Success,
            properties: Default::default(),
        })
    }

    /// A state connected with the given session_present; returns the CONNACK's actions.
    fn connected(state: &mut ClientState, now: Instant, session_present: bool) -> Vec<Action> {
        state.transport_connected(now);
        state.handle_packet(connack(session_present), now)
    }

    fn publish_cmd(token: Token, topic: &str, qos: QoS) -> Command {
        Command::Publish {
            token,
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from(format!("m{token}")),
            qos,
            retain: false,
            properties: Default::default(),
        }
    }

    fn incoming(id: u16, qos: QoS, dup: bool) -> Packet {
        Packet::Publish(Publish {
            dup,
            qos_pid: QosPid::new(qos, PacketId::new(id)).unwrap(),
            retain: false,
            topic: TopicName::new("in").unwrap(),
            properties: Default::default(),
            payload: Bytes::from_static(b"x"),
        })
    }

    fn publishes(packets: &[Packet]) -> Vec<(u16, bool)> {
        packets
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((p.packet_id().map_or(0, |i| i.get()), p.dup)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn connect_packet_carries_the_options() {
        let now = Instant::now();
        let mut o = options();
        o.username = Some("u".into());
        o.password = Some(Bytes::from_static(b"p"));
        o.will = Some(WillOptions {
            topic: TopicName::new("will/c1").unwrap(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval_secs: Some(5),
                ..WillProperties::default()
            },
        });
        let mut state = ClientState::new(o.clone(), &ClientDurable::default(), now);
        let actions = state.transport_connected(now);
        let [Packet::Connect(connect)] = &sends(&actions)[..] else {
            panic!("{actions:?}")
        };
        // 3.1.1 has no will properties: the 5.0 ones are left out, the will itself kept.
        assert_eq!(o.protocol, ProtocolVersion::V311);
        assert_eq!(
            connect.will.as_ref().unwrap().properties,
            WillProperties::default()
        );
        o.protocol = ProtocolVersion::V5;
        let mut v5 = ClientState::new(o, &ClientDurable::default(), now);
        let actions = v5.transport_connected(now);
        let [Packet::Connect(connect5)] = &sends(&actions)[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            connect5
                .will
                .as_ref()
                .unwrap()
                .properties
                .will_delay_interval_secs,
            Some(5)
        );
        assert_eq!(connect.client_id.as_str(), "c1");
        assert!(!connect.clean_start);
        assert_eq!(connect.keep_alive_secs, 10);
        assert_eq!(connect.username.as_deref(), Some("u"));
        let will = connect.will.as_ref().unwrap();
        assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
    }

    #[tokio::test(start_paused = true)]
    async fn qos1_completes_at_puback_and_is_persisted_before_it_is_sent() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        let actions = state.handle_command(publish_cmd(1, "t", QoS::AtLeastOnce), now);
        let persist_at = actions
            .iter()
            .position(|a| matches!(a, Action::Persist(PersistOp::Outgoing(_))))
            .unwrap();
        let send_at = actions
            .iter()
            .position(|a| matches!(a, Action::Send(_)))
            .unwrap();
        assert!(persist_at < send_at);
        assert_eq!(publishes(&sends(&actions)), vec![(1, false)]);
        assert_eq!(completion(&actions, 1), None);
        let actions = state.handle_packet(Packet::PubAck(Ack::new(pid(1))), now);
        assert_eq!(completion(&actions, 1), Some(Ok(Completion::Published)));
        assert!(actions.contains(&Action::Persist(PersistOp::Completed(pid(1)))));
        assert!(actions.contains(&Action::WindowSlotFreed));
        assert_eq!(state.inflight_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn qos2_completes_at_pubcomp_after_pubrel() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        state.handle_command(publish_cmd(1, "t", QoS::ExactlyOnce), now);
        let actions = state.handle_packet(Packet::PubRec(Ack::new(pid(1))), now);
        assert_eq!(sends(&actions), vec![Packet::PubRel(Ack::new(pid(1)))]);
        assert!(actions.contains(&Action::Persist(PersistOp::Released(pid(1)))));
        assert_eq!(completion(&actions, 1), None);
        // A PUBACK for a QoS 2 flow is a protocol error.
        let wrong = state.handle_packet(Packet::PubAck(Ack::new(pid(1))), now);
        assert!(matches!(
            wrong[..],
            [Action::Close(ClientError::Protocol(_))]
        ));
        let actions = state.handle_packet(Packet::PubComp(Ack::new(pid(1))), now);
        assert_eq!(completion(&actions, 1), Some(Ok(Completion::Published)));
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_resends_unacked_with_dup_in_order_and_resumes_pubrel() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        state.handle_command(publish_cmd(1, "a", QoS::AtLeastOnce), now);
        state.handle_command(publish_cmd(2, "b", QoS::ExactlyOnce), now);
        state.handle_command(publish_cmd(3, "c", QoS::ExactlyOnce), now);
        state.handle_packet(Packet::PubRec(Ack::new(pid(2))), now);
        let lost = state.connection_lost(ClientError::ConnectionClosed);
        assert!(matches!(
            events(&lost)[..],
            [EventKind::ConnectionLost { .. }]
        ));

        let actions = connected(&mut state, now, true);
        assert_eq!(
            events(&actions)[0],
            EventKind::ConnectComplete {
                reconnect: true,
                session_present: true
            }
        );
        // Original ids and order [MQTT-4.4.0-1] [MQTT-4.6.0-1]; PUBREL, not PUBLISH, for 2.
        let packets = sends(&actions);
        assert_eq!(packets.len(), 3);
        assert!(
            matches!(&packets[0], Packet::Publish(p) if p.dup && p.packet_id() == Some(pid(1)))
        );
        assert_eq!(packets[1], Packet::PubRel(Ack::new(pid(2))));
        assert!(
            matches!(&packets[2], Packet::Publish(p) if p.dup && p.packet_id() == Some(pid(3)))
        );
        let actions = state.handle_packet(Packet::PubComp(Ack::new(pid(2))), now);
        assert_eq!(completion(&actions, 2), Some(Ok(Completion::Published)));
    }

    #[tokio::test(start_paused = true)]
    async fn restored_state_is_resent_with_dup_after_restart() {
        let now = Instant::now();
        let mut durable = ClientDurable::default();
        for (id, qos, released) in [(4, QoS::AtLeastOnce, false), (5, QoS::ExactlyOnce, true)] {
            durable.apply(&PersistOp::Outgoing(StoredPublish {
                packet_id: pid(id),
                topic: TopicName::new("t").unwrap(),
                payload: Bytes::from_static(b"p"),
                qos,
                retain: false,
                released,
                properties: Default::default(),
            }));
        }
        durable.apply(&PersistOp::IncomingQos2(pid(9)));
        let mut state = ClientState::new(options(), &durable, now);
        assert_eq!(state.inflight_len(), 2);
        let actions = connected(&mut state, now, true);
        let packets = sends(&actions);
        assert!(
            matches!(&packets[0], Packet::Publish(p) if p.dup && p.packet_id() == Some(pid(4)))
        );
        assert_eq!(packets[1], Packet::PubRel(Ack::new(pid(5))));
        // The held incoming id still suppresses a redelivery.
        let actions = state.handle_packet(incoming(9, QoS::ExactlyOnce, true), now);
        assert!(delivered(&actions).is_empty());
        // New ids do not collide with restored ones.
        let actions = state.handle_command(publish_cmd(1, "t", QoS::AtLeastOnce), now);
        assert_eq!(publishes(&sends(&actions)), vec![(6, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_session_turns_unacked_into_new_messages_and_completes_released() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        state.handle_command(publish_cmd(1, "a", QoS::AtLeastOnce), now);
        state.handle_command(publish_cmd(2, "b", QoS::ExactlyOnce), now);
        state.handle_packet(Packet::PubRec(Ack::new(pid(2))), now);
        state.handle_packet(incoming(7, QoS::ExactlyOnce, false), now);
        state.connection_lost(ClientError::ConnectionClosed);
        let actions = connected(&mut state, now, false);
        assert_eq!(publishes(&sends(&actions)), vec![(1, false)]);
        assert!(!sends(&actions)
            .iter()
            .any(|p| matches!(p, Packet::PubRel(_))));
        assert_eq!(completion(&actions, 2), Some(Ok(Completion::Published)));
        assert!(actions.contains(&Action::Persist(PersistOp::ClearIncoming)));
        assert!(state.incoming_qos2().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn incoming_qos2_is_delivered_exactly_once_until_pubrel() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        let first = state.handle_packet(incoming(7, QoS::ExactlyOnce, false), now);
        assert_eq!(delivered(&first).len(), 1);
        assert_eq!(state.incoming_qos2(), &BTreeSet::from([pid(7)]));
        let persist_at = first
            .iter()
            .position(|a| *a == Action::Persist(PersistOp::IncomingQos2(pid(7))))
            .unwrap();
        let rec_at = first
            .iter()
            .position(|a| *a == Action::Send(Packet::PubRec(Ack::new(pid(7)))))
            .unwrap();
        assert!(persist_at < rec_at);
        let dup = state.handle_packet(incoming(7, QoS::ExactlyOnce, true), now);
        assert!(delivered(&dup).is_empty());
        assert_eq!(sends(&dup), vec![Packet::PubRec(Ack::new(pid(7)))]);
        // Across a reconnect of the same session too.
        state.connection_lost(ClientError::ConnectionClosed);
        connected(&mut state, now, true);
        let dup = state.handle_packet(incoming(7, QoS::ExactlyOnce, true), now);
        assert!(delivered(&dup).is_empty());
        let rel = state.handle_packet(Packet::PubRel(Ack::new(pid(7))), now);
        assert_eq!(sends(&rel), vec![Packet::PubComp(Ack::new(pid(7)))]);
        assert!(rel.contains(&Action::Persist(PersistOp::IncomingReleased(pid(7)))));
        assert!(state.incoming_qos2().is_empty());
        // After PUBREL the id is free: the same id is a new message.
        let again = state.handle_packet(incoming(7, QoS::ExactlyOnce, false), now);
        assert_eq!(delivered(&again).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn incoming_qos1_is_delivered_and_acked_and_qos0_just_delivered() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        let actions = state.handle_packet(incoming(3, QoS::AtLeastOnce, false), now);
        assert_eq!(delivered(&actions)[0].packet_id, Some(pid(3)));
        assert_eq!(sends(&actions), vec![Packet::PubAck(Ack::new(pid(3)))]);
        let actions = state.handle_packet(incoming(0, QoS::AtMostOnce, false), now);
        assert_eq!(delivered(&actions).len(), 1);
        assert!(sends(&actions).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_when_idle_and_declares_a_silent_broker_dead() {
        let start = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), start);
        connected(&mut state, start, false);
        let ka = Duration::from_secs(10);
        assert_eq!(state.next_deadline(), Some(start + ka));
        assert!(state.handle_tick(start + ka / 2).is_empty());
        let ping = state.handle_tick(start + ka);
        assert_eq!(sends(&ping), vec![Packet::PingReq]);
        // Answered: the next ping is due a keepalive after the last send.
        state.handle_packet(Packet::PingResp, start + ka);
        assert_eq!(state.next_deadline(), Some(start + ka * 2));
        let ping = state.handle_tick(start + ka * 2);
        assert_eq!(sends(&ping), vec![Packet::PingReq]);
        // Not answered within keepalive: close.
        assert!(state.handle_tick(start + ka * 2 + ka / 2).is_empty());
        let dead = state.handle_tick(start + ka * 3);
        assert_eq!(dead, vec![Action::Close(ClientError::KeepaliveTimeout)]);
        let lost = state.connection_lost(ClientError::KeepaliveTimeout);
        assert_eq!(
            events(&lost),
            vec![EventKind::ConnectionLost {
                cause: ClientError::KeepaliveTimeout
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connect_timeout_and_refused_connack() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        state.transport_connected(now);
        assert_eq!(
            state.handle_tick(now + Duration::from_secs(5)),
            vec![Action::Close(ClientError::ConnectTimeout)]
        );
        state.connection_lost(ClientError::ConnectTimeout);
        state.transport_connected(now);
        let refused = state.handle_packet(
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::NotAuthorized,
                properties: Default::default(),
            }),
            now,
        );
        let cause = ClientError::Refused {
            code: ReasonCode::NotAuthorized,
            protocol: ProtocolVersion::V311,
        };
        assert_eq!(refused, vec![Action::Close(cause.clone())]);
        assert!(cause.to_string().contains("not authorised"));
        assert!(cause.to_string().contains("return code 5"));
        assert_eq!(
            events(&state.connection_lost(cause.clone())),
            vec![EventKind::ConnectFailed { cause }]
        );
    }

    fn subscribe_and_ack(state: &mut ClientState, now: Instant) {
        let actions = state.handle_command(
            Command::Subscribe {
                token: 1,
                filters: vec![(
                    TopicFilter::new("a/#").unwrap(),
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                )],
            },
            now,
        );
        let [Packet::Subscribe(sub)] = &sends(&actions)[..] else {
            panic!("{actions:?}")
        };
        let ack = state.handle_packet(
            Packet::SubAck(crate::codec::SubAck {
                packet_id: sub.packet_id,
                properties: Default::default(),
                reason_codes: vec![ReasonCode::GrantedQoS1],
            }),
            now,
        );
        assert_eq!(
            completion(&ack, 1),
            Some(Ok(Completion::Subscribed(vec![ReasonCode::GrantedQoS1])))
        );
    }

    fn resubscribed(policy: ResubscribePolicy, session_present: bool) -> Vec<String> {
        let now = Instant::now();
        let mut o = options();
        o.resubscribe = policy;
        let mut state = ClientState::new(o, &ClientDurable::default(), now);
        connected(&mut state, now, false);
        subscribe_and_ack(&mut state, now);
        state.connection_lost(ClientError::ConnectionClosed);
        let actions = connected(&mut state, now, session_present);
        sends(&actions)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Subscribe(s) => Some(s.filters[0].0.as_str().to_string()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn resubscribe_policy() {
        use ResubscribePolicy::*;
        assert_eq!(resubscribed(WhenSessionNotPresent, false), vec!["a/#"]);
        assert!(resubscribed(WhenSessionNotPresent, true).is_empty());
        assert_eq!(resubscribed(Always, true), vec!["a/#"]);
        assert!(resubscribed(Never, false).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn resubscribe_suback_is_reported_as_a_resubscribe() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        subscribe_and_ack(&mut state, now);
        state.connection_lost(ClientError::ConnectionClosed);
        let actions = connected(&mut state, now, false);
        let [Packet::Subscribe(sub)] = &sends(&actions)[..] else {
            panic!("{actions:?}")
        };
        let ack = state.handle_packet(
            Packet::SubAck(crate::codec::SubAck {
                packet_id: sub.packet_id,
                properties: Default::default(),
                reason_codes: vec![ReasonCode::GrantedQoS1],
            }),
            now,
        );
        assert!(matches!(
            &events(&ack)[..],
            [EventKind::SubscribeComplete {
                resubscribe: true,
                ..
            }]
        ));
        // Unsubscribing removes the filter from what is restored.
        state.handle_command(
            Command::Unsubscribe {
                token: 2,
                filters: vec![TopicFilter::new("a/#").unwrap()],
            },
            now,
        );
        assert_eq!(state.subscriptions().count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_made_offline_go_out_at_connect() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        let q0 = state.handle_command(publish_cmd(1, "t", QoS::AtMostOnce), now);
        assert_eq!(completion(&q0, 1), Some(Err(ClientError::NotConnected)));
        let q1 = state.handle_command(publish_cmd(2, "t", QoS::AtLeastOnce), now);
        assert!(sends(&q1).is_empty());
        state.handle_command(
            Command::Subscribe {
                token: 3,
                filters: vec![(
                    TopicFilter::new("x").unwrap(),
                    SubscriptionOptions::default(),
                )],
            },
            now,
        );
        let actions = connected(&mut state, now, false);
        let packets = sends(&actions);
        assert!(matches!(packets[0], Packet::Subscribe(_)));
        // Never sent before: not a duplicate.
        assert_eq!(publishes(&packets), vec![(1, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn qos0_completes_when_written() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        let actions = state.handle_command(publish_cmd(1, "t", QoS::AtMostOnce), now);
        assert_eq!(publishes(&sends(&actions)), vec![(0, false)]);
        assert_eq!(
            actions.last(),
            Some(&Action::CompleteWhenWritten { token: 1 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inflight_window_is_bounded() {
        let now = Instant::now();
        let mut o = options();
        o.inflight_window = 2;
        let mut state = ClientState::new(o, &ClientDurable::default(), now);
        connected(&mut state, now, false);
        state.handle_command(publish_cmd(1, "t", QoS::AtLeastOnce), now);
        state.handle_command(publish_cmd(2, "t", QoS::AtLeastOnce), now);
        let third = state.handle_command(publish_cmd(3, "t", QoS::AtLeastOnce), now);
        assert_eq!(
            completion(&third, 3),
            Some(Err(ClientError::InflightWindowFull))
        );
        assert!(third.contains(&Action::WindowSlotFreed));
        assert!(sends(&third).is_empty());
        assert_eq!(state.inflight_len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn receive_maximum_limits_what_is_on_the_wire() {
        let now = Instant::now();
        let mut o = options();
        o.protocol = ProtocolVersion::V5;
        let mut state = ClientState::new(o, &ClientDurable::default(), now);
        state.transport_connected(now);
        state.handle_packet(
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: crate::codec::ConnAckProperties {
                    receive_maximum: NonZeroU16::new(1),
                    ..Default::default()
                }
                .into(),
            }),
            now,
        );
        let first = state.handle_command(publish_cmd(1, "t", QoS::AtLeastOnce), now);
        let second = state.handle_command(publish_cmd(2, "t", QoS::AtLeastOnce), now);
        assert_eq!(publishes(&sends(&first)), vec![(1, false)]);
        assert!(sends(&second).is_empty());
        let ack = state.handle_packet(Packet::PubAck(Ack::new(pid(1))), now);
        assert_eq!(publishes(&sends(&ack)), vec![(2, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn packet_ids_skip_ids_in_use_and_wrap() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        state.next_packet_id = u16::MAX;
        let a = state.handle_command(publish_cmd(1, "t", QoS::AtLeastOnce), now);
        let b = state.handle_command(publish_cmd(2, "t", QoS::AtLeastOnce), now);
        assert_eq!(publishes(&sends(&a)), vec![(u16::MAX, false)]);
        assert_eq!(publishes(&sends(&b)), vec![(1, false)]);
        state.next_packet_id = u16::MAX;
        let c = state.handle_command(publish_cmd(3, "t", QoS::AtLeastOnce), now);
        assert_eq!(publishes(&sends(&c)), vec![(2, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn unexpected_packets() {
        let now = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        state.transport_connected(now);
        let early = state.handle_packet(Packet::PingResp, now);
        assert!(matches!(
            early[..],
            [Action::Close(ClientError::Protocol(_))]
        ));
        state.connection_lost(ClientError::ConnectionClosed);
        connected(&mut state, now, false);
        // Unknown PUBREC: release anyway. Unknown PUBACK: ignore.
        let rec = state.handle_packet(Packet::PubRec(Ack::new(pid(40))), now);
        assert_eq!(sends(&rec), vec![Packet::PubRel(Ack::new(pid(40)))]);
        assert!(state
            .handle_packet(Packet::PubAck(Ack::new(pid(41))), now)
            .is_empty());
        let mut aliased = incoming(5, QoS::AtLeastOnce, false);
        if let Packet::Publish(p) = &mut aliased {
            p.properties.topic_alias = NonZeroU16::new(1);
        }
        let refused = state.handle_packet(aliased, now);
        assert!(matches!(
            refused[..],
            [Action::Close(ClientError::Protocol(_))]
        ));
        let bad = state.handle_packet(Packet::PingReq, now);
        assert!(matches!(bad[..], [Action::Close(ClientError::Protocol(_))]));
    }

    fn v5_connected(o: ConnectOptions, now: Instant, alias_max: Option<u16>) -> ClientState {
        let mut state = ClientState::new(o, &ClientDurable::default(), now);
        state.transport_connected(now);
        state.handle_packet(
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: crate::codec::ConnAckProperties {
                    topic_alias_maximum: alias_max,
                    ..Default::default()
                }
                .into(),
            }),
            now,
        );
        state
    }

    fn v5_options(outbound_aliases: bool) -> ConnectOptions {
        let mut o = options();
        o.protocol = ProtocolVersion::V5;
        o.outbound_topic_aliases = outbound_aliases;
        o
    }

    /// (topic name on the wire, alias) of each PUBLISH sent.
    fn wire_topics(actions: &[Action]) -> Vec<(String, Option<u16>)> {
        sends(actions)
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((
                    p.topic.as_str().to_string(),
                    p.properties.topic_alias.map(|a| a.get()),
                )),
                _ => None,
            })
            .collect()
    }

    fn publish_props(
        token: Token,
        topic: &str,
        qos: QoS,
        properties: PublishProperties,
    ) -> Command {
        let Command::Publish {
            token,
            topic,
            payload,
            qos,
            retain,
            ..
        } = publish_cmd(token, topic, qos)
        else {
            unreachable!()
        };
        Command::Publish {
            token,
            topic,
            payload,
            qos,
            retain,
            properties: properties.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn outbound_aliases_follow_the_policy_within_the_brokers_maximum() {
        let now = Instant::now();
        let mut state = v5_connected(v5_options(true), now, Some(2));
        let mut sent = Vec::new();
        for (token, topic) in [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "c")] {
            let actions = state.handle_command(publish_cmd(token, topic, QoS::AtMostOnce), now);
            sent.extend(wire_topics(&actions));
        }
        // First use maps (full topic + alias), later uses send the alias alone; "c" finds no
        // free alias under the maximum 2 and always goes in full [MQTT-3.2.2-17].
        assert_eq!(
            sent,
            vec![
                ("a".into(), Some(1)),
                ("b".into(), Some(2)),
                ("c".into(), None),
                ("".into(), Some(1)),
                ("".into(), Some(2)),
                ("c".into(), None),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_outbound_alias_without_a_brokers_maximum_or_beyond_it() {
        let now = Instant::now();
        // The broker announced none: not even an alias the application asks for
        // [MQTT-3.2.2-18].
        let mut state = v5_connected(v5_options(true), now, None);
        let mut props = PublishProperties {
            topic_alias: NonZeroU16::new(1),
            ..Default::default()
        };
        let a = state.handle_command(publish_props(1, "a", QoS::AtMostOnce, props.clone()), now);
        let b = state.handle_command(publish_cmd(2, "a", QoS::AtMostOnce), now);
        assert_eq!(wire_topics(&a), vec![("a".into(), None)]);
        assert_eq!(wire_topics(&b), vec![("a".into(), None)]);
        // Maximum 1: the application's alias 1 is used, its alias 2 is not [MQTT-3.3.2-9].
        let mut state = v5_connected(v5_options(false), now, Some(1));
        let a = state.handle_command(publish_props(1, "a", QoS::AtMostOnce, props.clone()), now);
        let again =
            state.handle_command(publish_props(2, "a", QoS::AtMostOnce, props.clone()), now);
        props.topic_alias = NonZeroU16::new(2);
        let over = state.handle_command(publish_props(3, "b", QoS::AtMostOnce, props), now);
        let plain = state.handle_command(publish_cmd(4, "a", QoS::AtMostOnce), now);
        assert_eq!(wire_topics(&a), vec![("a".into(), Some(1))]);
        assert_eq!(wire_topics(&again), vec![("".into(), Some(1))]);
        assert_eq!(wire_topics(&over), vec![("b".into(), None)]);
        // Automatic aliasing is off: a publish without an alias goes in full.
        assert_eq!(wire_topics(&plain), vec![("a".into(), None)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_drops_alias_mappings_and_resends_full_topics() {
        let now = Instant::now();
        let mut state = v5_connected(v5_options(true), now, Some(5));
        let first = state.handle_command(publish_cmd(1, "t/1", QoS::AtLeastOnce), now);
        let second = state.handle_command(publish_cmd(2, "t/1", QoS::AtLeastOnce), now);
        assert_eq!(wire_topics(&first), vec![("t/1".into(), Some(1))]);
        assert_eq!(wire_topics(&second), vec![("".into(), Some(1))]);
        state.connection_lost(ClientError::ConnectionClosed);
        state.transport_connected(now);
        let resumed = state.handle_packet(
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::Success,
                properties: crate::codec::ConnAckProperties {
                    topic_alias_maximum: Some(5),
                    ..Default::default()
                }
                .into(),
            }),
            now,
        );
        // Both in-flight messages are resent; the first carries the full topic again (the
        // new connection knows no alias [MQTT-3.3.2-7]), mapping it afresh.
        assert_eq!(
            wire_topics(&resumed),
            vec![("t/1".into(), Some(1)), ("".into(), Some(1))]
        );
        assert_eq!(publishes(&sends(&resumed)), vec![(1, true), (2, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn publish_properties_go_on_the_wire_and_into_persistence() {
        let now = Instant::now();
        let mut state = v5_connected(v5_options(false), now, None);
        let properties = PublishProperties {
            payload_format_utf8: Some(true),
            message_expiry_interval_secs: Some(30),
            response_topic: Some(TopicName::new("reply/1").unwrap()),
            correlation_data: Some(Bytes::from_static(b"c-1")),
            user_properties: vec![
                (MqttStr::new("k").unwrap(), MqttStr::new("v").unwrap()),
                (MqttStr::new("k").unwrap(), MqttStr::new("w").unwrap()),
            ],
            content_type: Some(MqttStr::new("text/plain").unwrap()),
            ..Default::default()
        };
        let actions = state.handle_command(
            publish_props(1, "t", QoS::AtLeastOnce, properties.clone()),
            now,
        );
        let [Packet::Publish(sent)] = &sends(&actions)[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(*sent.properties, properties);
        let persisted = actions.iter().find_map(|a| match a {
            Action::Persist(PersistOp::Outgoing(p)) => Some(p.properties.clone()),
            _ => None,
        });
        assert_eq!(persisted, Some(properties.clone().into()));
        // 3.1.1 cannot carry them: refused, not silently dropped; the window slot returns.
        let mut state = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut state, now, false);
        let refused =
            state.handle_command(publish_props(2, "t", QoS::AtLeastOnce, properties), now);
        assert!(matches!(
            completion(&refused, 2),
            Some(Err(ClientError::InvalidArgument(_)))
        ));
        assert!(refused.contains(&Action::WindowSlotFreed));
        assert!(sends(&refused).is_empty());
    }

    fn aliased(id: u16, topic: &str, alias: Option<u16>) -> Packet {
        let mut packet = incoming(id, QoS::AtLeastOnce, false);
        if let Packet::Publish(p) = &mut packet {
            p.topic = TopicName::new(topic).unwrap();
            p.properties.topic_alias = alias.and_then(NonZeroU16::new);
        }
        packet
    }

    fn is_alias_error(actions: &[Action]) -> bool {
        sends(actions)
            == vec![Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::TopicAliasInvalid,
                ..Disconnect::default()
            })]
            && matches!(
                actions.last(),
                Some(Action::Close(ClientError::Protocol(_)))
            )
    }

    #[tokio::test(start_paused = true)]
    async fn inbound_aliases_are_resolved_up_to_the_announced_maximum() {
        let now = Instant::now();
        let mut o = v5_options(false);
        o.topic_alias_maximum = 3;
        let mut state = ClientState::new(o, &ClientDurable::default(), now);
        let connect = state.transport_connected(now);
        let [Packet::Connect(c)] = &sends(&connect)[..] else {
            panic!()
        };
        assert_eq!(c.properties.topic_alias_maximum, Some(3));
        state.handle_packet(connack(false), now);
        // Any alias 1..=3 is accepted [MQTT-3.3.2-10]; the application sees the topic.
        let map = state.handle_packet(aliased(1, "x/y", Some(3)), now);
        let used = state.handle_packet(aliased(2, "", Some(3)), now);
        let got: Vec<(String, Option<NonZeroU16>)> = delivered(&map)
            .into_iter()
            .chain(delivered(&used))
            .map(|m| (m.topic.as_str().to_string(), m.properties.topic_alias))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x/y".into(), NonZeroU16::new(3)),
                ("x/y".into(), NonZeroU16::new(3))
            ]
        );
        // Remapping an alias replaces its topic.
        state.handle_packet(aliased(3, "z", Some(3)), now);
        let used = state.handle_packet(aliased(4, "", Some(3)), now);
        assert_eq!(delivered(&used)[0].topic.as_str(), "z");
        // Beyond the maximum: Protocol Error, DISCONNECT 0x94 [MQTT-3.3.2-11].
        assert!(is_alias_error(
            &state.handle_packet(aliased(5, "w", Some(4)), now)
        ));
        // A new connection knows none of the old mappings [MQTT-3.3.2-7].
        state.connection_lost(ClientError::ConnectionClosed);
        connected(&mut state, now, false);
        let unmapped = state.handle_packet(aliased(6, "", Some(3)), now);
        assert!(delivered(&unmapped).is_empty());
        assert!(is_alias_error(&unmapped));
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_flows_while_reading_is_paused_for_a_slow_application() {
        let start = Instant::now();
        let mut state = ClientState::new(options(), &ClientDurable::default(), start);
        connected(&mut state, start, false);
        let ka = Duration::from_secs(10);
        state.set_reading_paused(true, start);
        // PINGREQ every keepalive, though none is answered (the answers wait unread).
        for n in 1..=5u32 {
            assert_eq!(state.next_deadline(), Some(start + ka * n));
            let actions = state.handle_tick(start + ka * n);
            assert_eq!(actions, vec![Action::Send(Packet::PingReq)], "tick {n}");
        }
        // Resumed: the outstanding PINGREQ gets a full keepalive from now.
        state.set_reading_paused(false, start + ka * 5);
        assert!(state.handle_tick(start + ka * 5 + ka / 2).is_empty());
        assert_eq!(
            state.handle_tick(start + ka * 6),
            vec![Action::Close(ClientError::KeepaliveTimeout)]
        );
    }

    /// chaos-mixed-v5-wills seed 831: the PUBCOMP was lost, the client resent the PUBREL on
    /// reconnect, and the broker, which had completed the flow, answered PUBCOMP 0x92. The
    /// message was accepted at its PUBREC; the flow completes, it is not a refusal. A PUBACK
    /// with an error code still refuses a QoS 1 message.
    #[tokio::test(start_paused = true)]
    async fn pubcomp_packet_id_not_found_after_a_resent_pubrel_completes_the_flow() {
        let now = Instant::now();
        let mut o = options();
        o.protocol = ProtocolVersion::V5;
        let mut state = ClientState::new(o, &ClientDurable::default(), now);
        connected(&mut state, now, false);
        state.handle_command(publish_cmd(1, "t", QoS::ExactlyOnce), now);
        let rec = state.handle_packet(Packet::PubRec(Ack::new(pid(1))), now);
        assert!(rec
            .iter()
            .any(|a| matches!(a, Action::Event(EventKind::ReleaseSent { token: 1, .. }))));
        state.connection_lost(ClientError::ConnectionClosed);
        let resumed = connected(&mut state, now, true);
        assert_eq!(sends(&resumed), vec![Packet::PubRel(Ack::new(pid(1)))]);
        assert!(resumed
            .iter()
            .any(|a| matches!(a, Action::Event(EventKind::ReleaseSent { token: 1, .. }))));
        let mut comp = Ack::new(pid(1));
        comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        let done = state.handle_packet(Packet::PubComp(comp), now);
        assert_eq!(completion(&done, 1), Some(Ok(Completion::Published)));

        state.handle_command(publish_cmd(2, "t", QoS::AtLeastOnce), now);
        let mut ack = Ack::new(pid(2));
        ack.reason_code = ReasonCode::QuotaExceeded;
        let refused = state.handle_packet(Packet::PubAck(ack), now);
        assert_eq!(
            completion(&refused, 2),
            Some(Err(ClientError::Rejected(ReasonCode::QuotaExceeded)))
        );
    }

    /// A SCRAM-SHA-256 broker for the state machine: alice's credential.
    fn scram_server(client_first: &[u8], nonce: &str) -> (crate::scram::ServerExchange, Vec<u8>) {
        let credential = crate::scram::ScramCredential::derive(b"s3cret", b"salt", 64);
        crate::scram::ServerExchange::start(
            client_first,
            |user| (user == "alice").then(|| credential.clone()),
            b"decoy",
            nonce,
        )
        .unwrap()
    }

    fn scram_auth(reason_code: ReasonCode, data: Vec<u8>) -> Packet {
        Packet::Auth(Auth {
            reason_code,
            properties: AuthProperties {
                authentication_method: Some(MqttStr::from_static(scram::METHOD)),
                authentication_data: Some(Bytes::from(data)),
                ..Default::default()
            }
            .into(),
        })
    }

    /// The AUTH's reason and data among `packets`.
    fn auth_data(packets: &[Packet]) -> (ReasonCode, Vec<u8>) {
        packets
            .iter()
            .find_map(|p| match p {
                Packet::Auth(a) => Some((
                    a.reason_code,
                    a.properties
                        .authentication_data
                        .as_deref()
                        .unwrap()
                        .to_vec(),
                )),
                _ => None,
            })
            .expect("an AUTH")
    }

    fn scram_options(password: &'static [u8]) -> ConnectOptions {
        let mut o = options();
        o.protocol = ProtocolVersion::V5;
        o.username = Some("alice".into());
        o.password = Some(Bytes::from_static(password));
        o.enhanced_auth = Some(crate::client::EnhancedAuth { nonce_seed: 3 });
        o
    }

    /// Connects with SCRAM against `scram_server`; the CONNACK's actions.
    fn scram_connected(
        state: &mut ClientState,
        now: Instant,
        server_final_ok: bool,
    ) -> Vec<Action> {
        let connect = match &sends(&state.transport_connected(now))[..] {
            [Packet::Connect(c)] => c.clone(),
            other => panic!("{other:?}"),
        };
        // The credentials go through the exchange, not in CONNECT.
        assert_eq!((&connect.username, &connect.password), (&None, &None));
        assert_eq!(
            connect.properties.authentication_method.as_deref(),
            Some(scram::METHOD)
        );
        let client_first = connect.properties.authentication_data.clone().unwrap();
        let (server, server_first) = scram_server(&client_first, "srv");
        let reply = sends(&state.handle_packet(
            scram_auth(ReasonCode::ContinueAuthentication, server_first),
            now,
        ));
        let (reason, client_final) = auth_data(&reply);
        // [MQTT-4.12.0-3]
        assert_eq!(reason, ReasonCode::ContinueAuthentication);
        let server_final = match server.finish(&client_final) {
            Ok(v) if server_final_ok => v,
            _ => b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_vec(),
        };
        state.handle_packet(
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: crate::codec::ConnAckProperties {
                    authentication_method: Some(MqttStr::from_static(scram::METHOD)),
                    authentication_data: Some(Bytes::from(server_final)),
                    ..Default::default()
                }
                .into(),
            }),
            now,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn scram_connects_and_checks_the_brokers_signature() {
        let now = Instant::now();
        let mut state = ClientState::new(scram_options(b"s3cret"), &ClientDurable::default(), now);
        let actions = scram_connected(&mut state, now, true);
        assert!(state.is_connected(), "{actions:?}");
        // A broker that does not know the password (wrong server-final) is left.
        let mut state = ClientState::new(scram_options(b"s3cret"), &ClientDurable::default(), now);
        let actions = scram_connected(&mut state, now, false);
        assert!(!state.is_connected());
        assert!(
            matches!(
                &actions[..],
                [Action::Close(ClientError::Authentication(_))]
            ),
            "{actions:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scram_re_authenticates_on_demand() {
        let now = Instant::now();
        let mut state = ClientState::new(scram_options(b"s3cret"), &ClientDurable::default(), now);
        scram_connected(&mut state, now, true);
        let started = sends(&state.handle_command(
            Command::Reauthenticate {
                token: 9,
                password: None,
            },
            now,
        ));
        let (reason, client_first) = auth_data(&started);
        // [MQTT-4.12.1-1] 0x19 with the CONNECT's method.
        assert_eq!(reason, ReasonCode::ReAuthenticate);
        let (server, server_first) = scram_server(&client_first, "again");
        let reply = sends(&state.handle_packet(
            scram_auth(ReasonCode::ContinueAuthentication, server_first),
            now,
        ));
        let (reason, client_final) = auth_data(&reply);
        assert_eq!(reason, ReasonCode::ContinueAuthentication);
        let server_final = server.finish(&client_final).expect("the right proof");
        let done = state.handle_packet(scram_auth(ReasonCode::Success, server_final), now);
        assert_eq!(completion(&done, 9), Some(Ok(Completion::Reauthenticated)));
        assert!(state.is_connected());
        // The broker's refusal (DISCONNECT 0x87) fails the waiting token.
        state.handle_command(
            Command::Reauthenticate {
                token: 10,
                password: Some(Bytes::from_static(b"wrong")),
            },
            now,
        );
        let lost =
            state.connection_lost(ClientError::ServerDisconnected(ReasonCode::NotAuthorized));
        assert_eq!(
            completion(&lost, 10),
            Some(Err(ClientError::ServerDisconnected(
                ReasonCode::NotAuthorized
            )))
        );
        // Without enhanced authentication there is nothing to re-authenticate [MQTT-4.12.0-7].
        let mut plain = ClientState::new(options(), &ClientDurable::default(), now);
        connected(&mut plain, now, false);
        let refused = plain.handle_command(
            Command::Reauthenticate {
                token: 11,
                password: None,
            },
            now,
        );
        assert!(sends(&refused).is_empty());
        assert!(matches!(
            completion(&refused, 11),
            Some(Err(ClientError::InvalidArgument(_)))
        ));
    }
}
