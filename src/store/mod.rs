//! Durable broker state. The broker describes every change of durable state as a `StoreOp`;
//! a `Store` applies it to a `DurableState` (the fold of all ops) and, for the file store, logs
//! it. After a restart `Store::load` gives back the state to rebuild sessions and retained
//! messages from. The state is plain data in ordered maps so that restarts are deterministic.
//!
//! Stores: `MemoryStore` (nothing survives) and `FileStore` (snapshot + checksummed op log,
//! `file.rs`; binary format in `encoding.rs`), opened over the filesystem seam:
//! `FileStore::open(Arc::new(fs::StdFs), dir, SyncPolicy::EveryWrite)` on a real disk,
//! `FileStore::open(Arc::new(fs::SimFs), dir, ..)` inside a turmoil host (its disk keeps only
//! synced writes across `sim.crash`). Ops that belong together (one PUBLISH queued for many
//! sessions) go through `Store::apply_batch`: one fsync for all of them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub mod encoding;
pub mod file;
pub mod fs;

pub use file::{Compaction, FileStore, FileStoreOptions, Recovery, RecoveryMode, Salvaged};

use bytes::Bytes;

use crate::codec::{
    EmptyProperties, PacketId, PropertyBox, QoS, SubscriptionOptions, TopicFilter, TopicName,
    UserProperty,
};

/// An application message as the broker keeps it (queued, in flight or retained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 properties that travel with the message. Boxed, and absent when empty (nearly
    /// always): inline they made every queued and in-flight message 216 bytes to move, where a
    /// message without them is 80.
    pub properties: PropertyBox<MessageProperties>,
}

/// The 5.0 PUBLISH properties a broker forwards (topic alias and subscription ids are per hop).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties {
    pub payload_format_utf8: Option<bool>,
    /// When the message expires, in wall-clock milliseconds since the UNIX epoch (so expiry
    /// counts across a broker restart). A value below `LEGACY_EXPIRY_LIMIT_MS` was written by
    /// an older broker, which counted from its own start: it is read as counting from the
    /// current start, as that broker did.
    pub expires_at_ms: Option<u64>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    pub content_type: Option<crate::codec::MqttStr>,
    /// Not a PUBLISH property: the `$share/{ShareName}/{filter}` subscription this copy was
    /// given to a member through. Its PUBLISH then carries that subscription's identifier,
    /// and none of the member's other subscriptions' (they get their own copy, 5.0 3.3.4).
    pub shared_filter: Option<TopicFilter>,
}

impl EmptyProperties for MessageProperties {
    #[inline]
    fn empty() -> &'static Self {
        static EMPTY: MessageProperties = MessageProperties {
            payload_format_utf8: None,
            expires_at_ms: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            content_type: None,
            shared_filter: None,
        };
        &EMPTY
    }
}

/// `MessageProperties::expires_at_ms` values below this (2001-09-09, before any store existed)
/// are milliseconds since an older broker's start, not wall-clock instants. An older broker
/// would have had to run for 31 years to write one this large.
pub const LEGACY_EXPIRY_LIMIT_MS: u64 = 1_000_000_000_000;

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<std::num::NonZeroU32>,
}

/// Where an outgoing QoS 1/2 message is in its flow.
// Nearly every entry is a `Publish` (PubRel lasts one round trip), so boxing the message would
// cost an allocation per in-flight message to save space in the rare PubRel entries.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutgoingState {
    /// PUBLISH sent (or to be resent with DUP), waiting for PUBACK / PUBREC.
    Publish(StoredMessage),
    /// PUBREC received, PUBREL sent, waiting for PUBCOMP.
    PubRel,
}

/// A Will Message stored with its session, so that a broker that crashed while the client was
/// connected can still publish it after the restart (5.0 lets a server defer a will until it
/// restarts after a failure, MQTT 5.0 3.1.2.5; in 3.1.1 the will belongs to the connection and
/// a broker may use the same rule). Cleared on DISCONNECT and once published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    pub message: StoredMessage,
    /// 5.0 Will Delay Interval; 0 publishes at once (3.1.1 always).
    pub delay_interval_secs: u32,
}

/// One client's session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredSession {
    /// 3.1.1 persistent session: `None` (never expires). 5.0: the session expiry interval.
    pub expiry_interval_secs: Option<u32>,
    pub protocol_level: u8,
    pub subscriptions: BTreeMap<TopicFilter, StoredSubscription>,
    /// Outgoing messages with a packet id, in the order they were first sent (resent in this
    /// order on resume [MQTT-4.4.0-1]; the in-flight window bounds its length).
    pub outgoing: VecDeque<(u16, OutgoingState)>,
    /// Messages waiting for a free slot in the in-flight window or for the client to come back.
    pub queued: VecDeque<StoredMessage>,
    /// Incoming QoS 2 packet ids received (PUBREC sent) and not yet released by PUBREL.
    pub incoming_qos2: BTreeSet<u16>,
    /// The next packet id to try for an outgoing message.
    pub next_packet_id: u16,
    /// The will of the connection that holds this session, if it has one (boxed: most sessions
    /// have none, and this struct is kept per idle connection).
    pub will: Option<Box<StoredWill>>,
    /// When the session's last connection ended (wall-clock milliseconds since the UNIX
    /// epoch), while it is offline with a finite expiry: its expiry counts from here across a
    /// restart. `None` while connected, and for a session whose connection was open when the
    /// broker stopped (or from a store written before this was recorded): its expiry then
    /// counts from the restart, never ending it early.
    pub offline_since_ms: Option<u64>,
    /// Who created the session; `None` in a store written before owners were recorded. The
    /// broker refuses the session to anyone else (`session_takeover`) and checks deliveries
    /// to it against this user's ACL while it is offline.
    pub owner: Option<Owner>,
}

/// Who created a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A client without a user name.
    Anonymous,
    /// A client with this user name.
    User(Box<str>),
}

impl Owner {
    /// The owner a client with `username` would be.
    pub fn of(username: Option<&str>) -> Owner {
        match username {
            None => Owner::Anonymous,
            Some(user) => Owner::User(user.into()),
        }
    }

    /// The user name (`None` for anonymous).
    pub fn username(&self) -> Option<&str> {
        match self {
            Owner::Anonymous => None,
            Owner::User(user) => Some(user),
        }
    }
}

/// The whole durable state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DurableState {
    pub sessions: BTreeMap<String, StoredSession>,
    pub retained: BTreeMap<TopicName, StoredMessage>,
}

/// Every change of durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Creates (or replaces with an empty one) a session.
    SessionCreated {
        client_id: String,
        expiry_interval_secs: Option<u32>,
        protocol_level: u8,
    },
    /// Changes the expiry interval of an existing session (5.0 DISCONNECT may do this).
    SessionExpiryChanged {
        client_id: String,
        expiry_interval_secs: Option<u32>,
    },
    SessionDeleted {
        client_id: String,
    },
    Subscribed {
        client_id: String,
        filter: TopicFilter,
        subscription: StoredSubscription,
    },
    Unsubscribed {
        client_id: String,
        filter: TopicFilter,
    },
    /// Appended to the session's queue.
    Queued {
        client_id: String,
        message: StoredMessage,
    },
    /// The front of the queue moved into flight under `packet_id`.
    Dequeued {
        client_id: String,
        packet_id: PacketId,
    },
    /// A message sent in flight directly (not through the queue).
    SentInFlight {
        client_id: String,
        packet_id: PacketId,
        message: StoredMessage,
    },
    /// PUBREC received for an outgoing QoS 2 message.
    PubRecReceived {
        client_id: String,
        packet_id: PacketId,
    },
    /// PUBACK or PUBCOMP received: the outgoing flow is complete.
    OutgoingCompleted {
        client_id: String,
        packet_id: PacketId,
    },
    /// The oldest queued message was dropped (queue limit).
    QueueFrontDropped {
        client_id: String,
    },
    /// An incoming QoS 2 PUBLISH was received and acknowledged with PUBREC.
    IncomingQos2Received {
        client_id: String,
        packet_id: PacketId,
    },
    /// PUBREL received for an incoming QoS 2 id.
    IncomingQos2Released {
        client_id: String,
        packet_id: PacketId,
    },
    RetainedSet {
        message: StoredMessage,
    },
    RetainedCleared {
        topic: TopicName,
    },
    /// The session belongs to this user (`None`: an anonymous client). Follows
    /// `SessionCreated`, and records the first owner of a session from a store written before
    /// owners existed; a separate op so that such logs still read.
    SessionOwner {
        client_id: String,
        owner: Option<String>,
    },
    /// A connection with a Will Message took over the session (replaces any earlier will).
    WillStored {
        client_id: String,
        will: StoredWill,
    },
    /// The will was discarded (DISCONNECT) or published.
    WillCleared {
        client_id: String,
    },
    /// The session's connection ended at `at_ms` (wall clock, see
    /// `StoredSession::offline_since_ms`), or (`None`) a connection took it again.
    SessionOffline {
        client_id: String,
        at_ms: Option<u64>,
    },
}

/// When the file store forces writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fsync after every op: an acknowledged message survives power loss.
    #[default]
    EveryWrite,
    /// fsync when `Store::sync` is called (the broker calls it every `interval_ms`).
    Periodic { interval_ms: u64 },
}

/// Durable broker state. Implementations: `MemoryStore` (nothing survives the process) and
/// `FileStore` (append log with checksums and compaction, over `fs::FileSystem`).
pub trait Store: Send + 'static {
    /// The state after every op applied so far; right after opening, the state recovered from
    /// disk (empty for a new store).
    fn state(&self) -> &DurableState;
    /// Applies `op` to the state and makes it durable per the sync policy. On an I/O error the
    /// op is in the state all the same, and it is not lost for the disk: the next `apply` or
    /// `sync` writes it (before anything newer) once the disk takes it. Until a call returns
    /// `Ok`, nothing that depends on the op may be acknowledged (the broker refuses those
    /// acknowledgements and says so in its log and `$SYS`).
    fn apply(&mut self, op: StoreOp) -> std::io::Result<()>;
    /// Applies several ops as one write (group commit): under `SyncPolicy::EveryWrite` one
    /// sync covers them all, so e.g. a message queued for 100 offline sessions costs one fsync,
    /// not 100. Every op reaches the state even when the write fails (as with `apply`).
    fn apply_batch(&mut self, ops: Vec<StoreOp>) -> std::io::Result<()> {
        let mut result = Ok(());
        for op in ops {
            if let Err(e) = self.apply(op) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
    /// Forces pending writes to disk (and retries those that failed).
    fn sync(&mut self) -> std::io::Result<()>;
}

impl StoredSession {
    /// A new, empty session (what `StoreOp::SessionCreated` creates).
    pub fn new(expiry_interval_secs: Option<u32>, protocol_level: u8) -> StoredSession {
        StoredSession {
            expiry_interval_secs,
            protocol_level,
            next_packet_id: 1,
            ..StoredSession::default()
        }
    }

    /// `apply` for an op the caller has no further use for: a message it carries is moved
    /// into the session rather than cloned (the broker's path for every delivery of a
    /// non-persistent session, whose ops are not written anywhere).
    pub fn apply_owned(&mut self, op: StoreOp) {
        match op {
            StoreOp::Queued { message, .. } => self.queued.push_back(message),
            StoreOp::SentInFlight {
                packet_id, message, ..
            } => self.send_in_flight(packet_id, message),
            other => self.apply(&other),
        }
    }

    /// `StoreOp::SentInFlight`: `message` goes into flight under `packet_id`.
    pub fn send_in_flight(&mut self, packet_id: PacketId, message: StoredMessage) {
        self.outgoing
            .push_back((packet_id.get(), OutgoingState::Publish(message)));
        self.next_packet_id = next_id(packet_id.get());
    }

    /// `StoreOp::Dequeued`: the front of the queue goes into flight under `packet_id`.
    pub fn dequeue(&mut self, packet_id: PacketId) {
        if let Some(message) = self.queued.pop_front() {
            self.send_in_flight(packet_id, message);
        }
    }

    /// `StoreOp::OutgoingCompleted`: the flow of `packet_id` is over.
    pub fn complete_outgoing(&mut self, packet_id: PacketId) {
        // Acknowledgements come mostly in order, so the entry is usually at the front:
        // `remove` keeps the order and moves the shorter side, where `retain` moved every
        // entry after it (a window's worth per PUBACK).
        if let Some(at) = self
            .outgoing
            .iter()
            .position(|(id, _)| *id == packet_id.get())
        {
            self.outgoing.remove(at);
        }
    }

    /// Folds one op of this session into it; the op's client id is not looked at (the caller
    /// found the session). Ops that create, delete or do not concern a session are ignored
    /// here (`DurableState::apply` handles them), as are ops naming a missing packet id.
    pub fn apply(&mut self, op: &StoreOp) {
        match op {
            StoreOp::SessionExpiryChanged {
                expiry_interval_secs,
                ..
            } => self.expiry_interval_secs = *expiry_interval_secs,
            StoreOp::Subscribed {
                filter,
                subscription,
                ..
            } => {
                self.subscriptions
                    .insert(filter.clone(), subscription.clone());
            }
            StoreOp::Unsubscribed { filter, .. } => {
                self.subscriptions.remove(filter);
            }
            StoreOp::Queued { message, .. } => self.queued.push_back(message.clone()),
            StoreOp::Dequeued { packet_id, .. } => self.dequeue(*packet_id),
            StoreOp::SentInFlight {
                packet_id, message, ..
            } => self.send_in_flight(*packet_id, message.clone()),
            StoreOp::PubRecReceived { packet_id, .. } => {
                if let Some(entry) = self
                    .outgoing
                    .iter_mut()
                    .find(|(id, _)| *id == packet_id.get())
                {
                    entry.1 = OutgoingState::PubRel;
                }
            }
            StoreOp::OutgoingCompleted { packet_id, .. } => self.complete_outgoing(*packet_id),
            StoreOp::QueueFrontDropped { .. } => {
                self.queued.pop_front();
            }
            StoreOp::IncomingQos2Received { packet_id, .. } => {
                self.incoming_qos2.insert(packet_id.get());
            }
            StoreOp::IncomingQos2Released { packet_id, .. } => {
                self.incoming_qos2.remove(&packet_id.get());
            }
            StoreOp::WillStored { will, .. } => self.will = Some(Box::new(will.clone())),
            StoreOp::WillCleared { .. } => self.will = None,
            StoreOp::SessionOwner { owner, .. } => {
                self.owner = Some(Owner::of(owner.as_deref()));
            }
            StoreOp::SessionOffline { at_ms, .. } => self.offline_since_ms = *at_ms,
            StoreOp::SessionCreated { .. }
            | StoreOp::SessionDeleted { .. }
            | StoreOp::RetainedSet { .. }
            | StoreOp::RetainedCleared { .. } => {}
        }
    }
}

impl StoreOp {
    /// The client whose session the op changes (`None` for retained messages).
    pub fn client_id(&self) -> Option<&str> {
        Some(match self {
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
            | StoreOp::WillCleared { client_id }
            | StoreOp::SessionOwner { client_id, .. }
            | StoreOp::SessionOffline { client_id, .. } => client_id,
            StoreOp::RetainedSet { .. } | StoreOp::RetainedCleared { .. } => return None,
        })
    }
}

impl DurableState {
    /// Folds one op into the state. Ops that name a missing session or packet id are ignored:
    /// a log replayed after a crash may hold ops for a session deleted later in the same log.
    pub fn apply(&mut self, op: &StoreOp) {
        match op {
            StoreOp::SessionCreated {
                client_id,
                expiry_interval_secs,
                protocol_level,
            } => {
                self.sessions.insert(
                    client_id.clone(),
                    StoredSession::new(*expiry_interval_secs, *protocol_level),
                );
            }
            StoreOp::SessionDeleted { client_id } => {
                self.sessions.remove(client_id);
            }
            StoreOp::RetainedSet { message } => {
                self.retained.insert(message.topic.clone(), message.clone());
            }
            StoreOp::RetainedCleared { topic } => {
                self.retained.remove(topic);
            }
            session_op => {
                let session = session_op
                    .client_id()
                    .and_then(|id| self.sessions.get_mut(id));
                if let Some(session) = session {
                    session.apply(session_op);
                }
            }
        }
    }
}

fn next_id(id: u16) -> u16 {
    if id == u16::MAX {
        1
    } else {
        id + 1
    }
}

/// Keeps the state in memory only: nothing survives the process (or a simulated crash).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: DurableState,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn state(&self) -> &DurableState {
        &self.state
    }

    fn apply(&mut self, op: StoreOp) -> std::io::Result<()> {
        self.state.apply(&op);
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
