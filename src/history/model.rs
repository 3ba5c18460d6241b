//! An index over a finished trace that every checker shares: messages, connections, session
//! epochs, subscriptions, deliveries and fault spans, with the cross references filled in.
//!
//! Sessions live on the broker under a client id, not under the scenario's client names (two
//! named clients may share an id to take a session over). A *session epoch* is one lifetime of
//! the session of a client id: it starts with a clean start (or when a resume finds no session)
//! and ends with the next clean start, the end of a non-persistent session's connection, session
//! expiry, a broker crash the broker does not promise to survive, or a resume answered with
//! `session_present = false` (the session was lost at some point before that CONNACK).
//!
//! DESIGN.md, Checkers: a message is *owed* to a subscription when the SUBACK arrived before the
//! message was sent, the session (and the subscription) did not end before delivery, and for
//! QoS ≥ 1 the publisher's flow completed. Effective QoS = min(publish QoS, granted QoS).
//! [`Model::owed`] implements exactly that.

use std::collections::BTreeMap;

use crate::codec::{matches, ProtocolVersion, QoS};

use super::{DisconnectCause, Event, Fault, FaultTarget, FilterRequest, Trace, WillInfo};

/// A message a client published.
#[derive(Debug, Clone)]
pub struct Message {
    /// Index of the `PublishSent` record.
    pub event: usize,
    pub publisher: String,
    pub id: String,
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub empty: bool,
    pub sent_ms: u64,
    /// Position among this publisher's messages (publish order, MQTT 4.6).
    pub seq: usize,
    /// The publisher's connection when it was sent (`None` while offline: queued).
    pub connection: Option<usize>,
    /// `(record, at_ms, accepted)` of the PUBACK/PUBCOMP.
    pub acked: Option<(usize, u64, bool)>,
    /// The publisher's connection the PUBACK/PUBCOMP arrived on.
    pub acked_connection: Option<usize>,
    /// Record of a `PublishFailed`.
    pub failed: Option<usize>,
    /// The PUBLISH packets the publisher wrote for it, in order (indices into
    /// `Model::transmissions`).
    pub transmissions: Vec<usize>,
    /// The PUBREL packets it wrote for it (QoS 2), in order.
    pub releases: Vec<usize>,
}

/// One PUBLISH or PUBREL a client wrote for a message.
#[derive(Debug, Clone)]
pub struct Transmission {
    /// Index of the record (`publish_transmitted`, `release_transmitted`, or for a trace
    /// without them the `publish_sent`).
    pub event: usize,
    pub at_ms: u64,
    pub message: usize,
    /// The publisher's connection it went out on; `None` when the trace does not say.
    pub connection: Option<usize>,
    pub dup: bool,
    pub packet_id: Option<u16>,
    /// A PUBREL rather than a PUBLISH.
    pub release: bool,
    /// False for the one send a trace without wire records is assumed to show: the
    /// `publish_sent` on the connection open then.
    pub recorded: bool,
}

impl Message {
    /// The publisher's flow completed and the broker accepted the message.
    pub fn flow_completed(&self) -> bool {
        matches!(self.acked, Some((_, _, true)))
    }
}

/// One connection attempt and what became of it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub event: usize,
    pub client: String,
    pub client_id: String,
    pub protocol: ProtocolVersion,
    pub clean_start: bool,
    pub keep_alive_secs: u16,
    pub session_expiry_secs: Option<u32>,
    pub will: Option<WillInfo>,
    pub resubscribe: bool,
    pub attempt_ms: u64,
    /// `(record, at_ms, session_present, accepted)`.
    pub connack: Option<(usize, u64, bool, bool)>,
    /// `(record, at_ms, cause)`; `None` while open at the end of the trace. A failed attempt
    /// ends with `ConnectFailed` (cause `None`).
    pub end: Option<(usize, u64, Option<DisconnectCause>)>,
    /// The session epoch this connection belongs to (set when accepted).
    pub epoch: Option<usize>,
    /// Whether the broker held a session for the client id when this connection was accepted,
    /// as far as the trace can tell.
    pub prior_session: PriorSession,
}

/// What the trace says about a stored session at a CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PriorSession {
    /// No session can exist (never created, cleaned, expired, or lost in a volatile crash).
    #[default]
    Absent,
    /// A session certainly exists.
    Present,
    /// The trace cannot tell (an unanswered CONNECT may have created or cleaned it, expiry at
    /// the boundary, or a non-persistent connection still holding it).
    Unknown,
}

impl Connection {
    pub fn accepted(&self) -> bool {
        matches!(self.connack, Some((_, _, _, true)))
    }

    /// Whether the session outlives the connection: 3.1.1 Clean Session 0, or a 5.0 Session
    /// Expiry Interval above 0 [MQTT-3.1.2-23 (5.0)].
    pub fn persistent(&self) -> bool {
        match self.protocol {
            ProtocolVersion::V311 => !self.clean_start,
            ProtocolVersion::V5 => self.session_expiry_secs.unwrap_or(0) > 0,
        }
    }

    pub fn end_ms(&self) -> Option<u64> {
        self.end.as_ref().map(|(_, at, _)| *at)
    }

    /// Open (accepted and not ended) at `at_ms`.
    pub fn open_at(&self, at_ms: u64) -> bool {
        match self.connack {
            Some((_, connack_ms, _, true)) => {
                connack_ms <= at_ms && self.end_ms().is_none_or(|end| end >= at_ms)
            }
            _ => false,
        }
    }
}

/// How a session epoch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochEnd {
    /// A connection with Clean Session / Clean Start 1 replaced it.
    CleanStart,
    /// The connection of a non-persistent session ended.
    ConnectionEnded,
    /// The 5.0 Session Expiry Interval passed.
    Expired,
    /// The broker crashed and does not promise durability.
    BrokerCrash,
    /// A resume got `session_present = false`: the broker had lost it by then.
    Lost,
}

/// One lifetime of the session of a client id.
#[derive(Debug, Clone)]
pub struct Epoch {
    pub client_id: String,
    pub start_ms: u64,
    /// Connections (indices) that belonged to the epoch, in order.
    pub connections: Vec<usize>,
    pub end: Option<(u64, EpochEnd)>,
}

impl Epoch {
    pub fn end_ms(&self) -> Option<u64> {
        self.end.as_ref().map(|(at, _)| *at)
    }

    pub fn alive_at(&self, at_ms: u64) -> bool {
        self.start_ms <= at_ms && self.end_ms().is_none_or(|end| at_ms <= end)
    }
}

/// One subscription (one filter of one SUBSCRIBE).
#[derive(Debug, Clone)]
pub struct Subscription {
    pub event: usize,
    pub client: String,
    pub epoch: usize,
    pub connection: usize,
    pub request: FilterRequest,
    pub sent_ms: u64,
    /// `(record, at_ms, granted)` from the SUBACK.
    pub acked: Option<(usize, u64, Option<QoS>)>,
    /// `(record, at_ms)` of the UNSUBSCRIBE that removed it.
    pub unsubscribed: Option<(usize, u64)>,
    pub automatic: bool,
}

impl Subscription {
    pub fn granted(&self) -> Option<QoS> {
        self.acked.and_then(|(_, _, granted)| granted)
    }

    /// The QoS the broker may use for it: granted when known, else the requested one.
    pub fn qos_bound(&self) -> QoS {
        match self.acked {
            Some((_, _, Some(granted))) => granted,
            _ => self.request.qos,
        }
    }

    /// Matches through an ordinary subscription. A shared subscription's filter
    /// (`$share/{ShareName}/{filter}`) matches nothing here: a message is owed to its group,
    /// not to each member (`checkers/shared.rs` judges groups; `matches_any` includes them).
    pub fn matches(&self, topic: &str) -> bool {
        matches(&self.request.filter, topic)
    }

    /// `(ShareName, filter)` of a shared subscription `$share/{ShareName}/{filter}` (5.0
    /// 4.8.2; brokers accept the form from 3.1.1 clients too).
    pub fn shared(&self) -> Option<(&str, &str)> {
        let (share_name, filter) = self
            .request
            .filter
            .strip_prefix("$share/")?
            .split_once('/')?;
        (!share_name.is_empty() && !filter.is_empty()).then_some((share_name, filter))
    }

    /// Matches through the subscription, as ordinary or as a member of a shared group (a
    /// member MAY get the message).
    pub fn matches_any(&self, topic: &str) -> bool {
        match self.shared() {
            Some((_, filter)) => matches(filter, topic),
            None => self.matches(topic),
        }
    }

    /// When it stopped: unsubscribe sent, or its epoch ended.
    pub fn end_ms(&self, epochs: &[Epoch]) -> Option<u64> {
        let unsubscribed = self.unsubscribed.map(|(_, at)| at);
        let epoch_end = epochs[self.epoch].end_ms();
        match (unsubscribed, epoch_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One message handed to a client's application.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: usize,
    pub at_ms: u64,
    /// The message it carries (by payload id), when someone published it.
    pub message: Option<usize>,
    pub client: String,
    pub connection: Option<usize>,
    pub epoch: Option<usize>,
    pub id: String,
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub empty: bool,
}

/// A fault active from `start_ms` until `end_ms` (`None`: until the end of the trace).
#[derive(Debug, Clone)]
pub struct FaultSpan {
    pub event: usize,
    pub fault: Fault,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
}

/// Why a message is owed to a session epoch.
#[derive(Debug, Clone)]
pub struct Owed {
    pub epoch: usize,
    /// The subscriptions that make it owed.
    pub subscriptions: Vec<usize>,
    /// The highest effective QoS among them [MQTT-3.3.5-1].
    pub effective: QoS,
    /// The epoch (or every such subscription) ended before any delivery: no longer owed.
    pub released: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    pub end_ms: u64,
    pub broker_host: Option<String>,
    pub client_hosts: BTreeMap<String, String>,
    pub messages: Vec<Message>,
    pub message_by_id: BTreeMap<String, usize>,
    pub connections: Vec<Connection>,
    pub epochs: Vec<Epoch>,
    pub subscriptions: Vec<Subscription>,
    pub deliveries: Vec<Delivery>,
    pub faults: Vec<FaultSpan>,
    /// `(record, at_ms, durable)` of every broker start.
    pub broker_starts: Vec<(usize, u64, bool)>,
    /// `(record, at_ms)` of every broker crash.
    pub broker_crashes: Vec<(usize, u64)>,
    /// Per message index, the deliveries carrying it.
    pub deliveries_of: BTreeMap<usize, Vec<usize>>,
    /// Wills by payload id: the connection that registered each.
    pub will_by_id: BTreeMap<String, usize>,
    /// Armed packet drops and duplications: `(record, at_ms, fault)`.
    pub packet_faults: Vec<(usize, u64, Fault)>,
    /// Every PUBLISH/PUBREL a client wrote, in trace order.
    pub transmissions: Vec<Transmission>,
    /// The trace records the clients' wire writes (`publish_transmitted`).
    pub wire_recorded: bool,
    /// `(tick_ms, latency_max_ms)` of a simulated network; `None` on a real one.
    pub network: Option<(u64, u64)>,
    /// Latency and delay faults as set: `(at_ms, fault)` (they last until replaced).
    pub slow_faults: Vec<(u64, Fault)>,
}

impl Model {
    pub fn build(trace: &Trace) -> Model {
        let mut m = Model {
            end_ms: trace.records.last().map(|r| r.at_ms).unwrap_or(0),
            ..Model::default()
        };
        // Per client name: its latest connection.
        let mut current_conn: BTreeMap<String, usize> = BTreeMap::new();
        // Per client id: its current epoch.
        let mut current_epoch: BTreeMap<String, usize> = BTreeMap::new();
        let mut publish_seq: BTreeMap<String, usize> = BTreeMap::new();
        let mut durable = false;

        for (index, record) in trace.records.iter().enumerate() {
            let at = record.at_ms;
            if let Some(client) = record.event.client() {
                m.client_hosts
                    .entry(client.to_string())
                    .or_insert_with(|| record.host.clone());
            }
            match &record.event {
                Event::BrokerStarted { durable: d } => {
                    durable = *d;
                    if m.broker_host.is_none() {
                        m.broker_host = Some(record.host.clone());
                    }
                    m.broker_starts.push((index, at, *d));
                    m.close_spans(at, |f| matches!(f, Fault::BrokerCrash { .. }));
                }
                Event::ConnectAttempt {
                    client,
                    client_id,
                    protocol,
                    clean_start,
                    keep_alive_secs,
                    session_expiry_secs,
                    will,
                    resubscribe,
                } => {
                    // A new attempt ends whatever the previous one left open.
                    if let Some(&previous) = current_conn.get(client) {
                        m.end_connection(previous, index, at, None, &mut current_epoch);
                    }
                    let conn = m.connections.len();
                    m.connections.push(Connection {
                        event: index,
                        client: client.clone(),
                        client_id: client_id.clone(),
                        protocol: *protocol,
                        clean_start: *clean_start,
                        keep_alive_secs: *keep_alive_secs,
                        session_expiry_secs: *session_expiry_secs,
                        will: will.clone(),
                        resubscribe: *resubscribe,
                        attempt_ms: at,
                        connack: None,
                        end: None,
                        epoch: None,
                        prior_session: PriorSession::Absent,
                    });
                    current_conn.insert(client.clone(), conn);
                    if let Some(will) = will {
                        if !will.id.is_empty() {
                            m.will_by_id.insert(will.id.clone(), conn);
                        }
                    }
                }
                Event::ConnAck {
                    client,
                    session_present,
                    reason,
                } => {
                    let Some(&conn) = current_conn.get(client) else {
                        continue;
                    };
                    let accepted = reason_accepts(reason);
                    m.connections[conn].connack = Some((index, at, *session_present, accepted));
                    if accepted {
                        m.attach_epoch(conn, at, *session_present, &mut current_epoch);
                    } else {
                        m.connections[conn].end = Some((index, at, None));
                    }
                }
                Event::ConnectFailed { client, .. } => {
                    if let Some(&conn) = current_conn.get(client) {
                        if m.connections[conn].end.is_none() {
                            m.connections[conn].end = Some((index, at, None));
                        }
                    }
                }
                Event::Disconnected { client, cause } => {
                    if let Some(&conn) = current_conn.get(client) {
                        m.end_connection(conn, index, at, Some(cause.clone()), &mut current_epoch);
                    }
                    // A stall or armed packet drop lasts as long as the connection it targets.
                    m.close_spans(at, |f| match f {
                        Fault::Stall { client: c } | Fault::DropPacket { client: c, .. } => {
                            c == client
                        }
                        _ => false,
                    });
                }
                Event::Subscribe {
                    client,
                    filters,
                    automatic,
                } => {
                    let Some(&conn) = current_conn.get(client) else {
                        continue;
                    };
                    let Some(epoch) = m.connections[conn].epoch else {
                        continue;
                    };
                    // The client library resubscribes right after the CONNACK; the runner only
                    // learns of it from the SUBACK, so take the CONNACK as the send time.
                    let sent_ms = match (automatic, m.connections[conn].connack) {
                        (true, Some((_, connack_ms, _, _))) => connack_ms.min(at),
                        _ => at,
                    };
                    for request in filters {
                        m.subscriptions.push(Subscription {
                            event: index,
                            client: client.clone(),
                            epoch,
                            connection: conn,
                            request: request.clone(),
                            sent_ms,
                            acked: None,
                            unsubscribed: None,
                            automatic: *automatic,
                        });
                    }
                }
                Event::SubAck { client, results } => {
                    for result in results {
                        // The oldest unacknowledged subscription of this filter by this client.
                        if let Some(sub) = m.subscriptions.iter_mut().find(|s| {
                            &s.client == client
                                && s.acked.is_none()
                                && s.request.filter == result.filter
                        }) {
                            sub.acked = Some((index, at, result.granted));
                        }
                    }
                }
                Event::Unsubscribe { client, filters } => {
                    let Some(&conn) = current_conn.get(client) else {
                        continue;
                    };
                    let Some(epoch) = m.connections[conn].epoch else {
                        continue;
                    };
                    for filter in filters {
                        for sub in m.subscriptions.iter_mut().filter(|s| {
                            s.epoch == epoch
                                && &s.request.filter == filter
                                && s.unsubscribed.is_none()
                        }) {
                            sub.unsubscribed = Some((index, at));
                        }
                    }
                }
                Event::UnsubAck { .. } => {}
                Event::PublishSent {
                    client,
                    id,
                    topic,
                    qos,
                    retain,
                    payload_len,
                } => {
                    let seq = publish_seq.entry(client.clone()).or_insert(0);
                    let connection = current_conn
                        .get(client)
                        .copied()
                        .filter(|&c| m.connections[c].end.is_none());
                    let message = m.messages.len();
                    m.messages.push(Message {
                        event: index,
                        publisher: client.clone(),
                        id: id.clone(),
                        topic: topic.clone(),
                        qos: *qos,
                        retain: *retain,
                        empty: *payload_len == 0,
                        sent_ms: at,
                        seq: *seq,
                        connection,
                        acked: None,
                        acked_connection: None,
                        failed: None,
                        transmissions: Vec::new(),
                        releases: Vec::new(),
                    });
                    *seq += 1;
                    if !id.is_empty() {
                        m.message_by_id.insert(id.clone(), message);
                    }
                }
                Event::PublishAcked {
                    client,
                    id,
                    accepted,
                    ..
                } => {
                    if let Some(&message) = m.message_by_id.get(id) {
                        if m.messages[message].acked.is_none() {
                            m.messages[message].acked = Some((index, at, *accepted));
                            m.messages[message].acked_connection =
                                current_conn.get(client).copied();
                        }
                    }
                }
                Event::PublishTransmitted {
                    client,
                    id,
                    dup,
                    packet_id,
                } => {
                    m.wire_recorded = true;
                    if let Some(&message) = m.message_by_id.get(id) {
                        let t = m.transmissions.len();
                        m.transmissions.push(Transmission {
                            event: index,
                            at_ms: at,
                            message,
                            connection: current_conn.get(client).copied(),
                            dup: *dup,
                            packet_id: *packet_id,
                            release: false,
                            recorded: true,
                        });
                        m.messages[message].transmissions.push(t);
                    }
                }
                Event::ReleaseTransmitted {
                    client,
                    id,
                    packet_id,
                } => {
                    m.wire_recorded = true;
                    if let Some(&message) = m.message_by_id.get(id) {
                        let t = m.transmissions.len();
                        m.transmissions.push(Transmission {
                            event: index,
                            at_ms: at,
                            message,
                            connection: current_conn.get(client).copied(),
                            dup: false,
                            packet_id: Some(*packet_id),
                            release: true,
                            recorded: true,
                        });
                        m.messages[message].releases.push(t);
                    }
                }
                Event::Network {
                    tick_ms,
                    latency_max_ms,
                    ..
                } => {
                    m.network = Some((*tick_ms, *latency_max_ms));
                }
                Event::PublishFailed { id, .. } => {
                    if let Some(&message) = m.message_by_id.get(id) {
                        m.messages[message].failed.get_or_insert(index);
                    }
                }
                Event::Delivered {
                    client,
                    id,
                    topic,
                    qos,
                    retain,
                    dup,
                    payload_len,
                } => {
                    let connection = current_conn.get(client).copied();
                    let epoch = connection.and_then(|c| m.connections[c].epoch);
                    let delivery = m.deliveries.len();
                    let message = m.message_by_id.get(id).copied();
                    m.deliveries.push(Delivery {
                        event: index,
                        at_ms: at,
                        message,
                        client: client.clone(),
                        connection,
                        epoch,
                        id: id.clone(),
                        topic: topic.clone(),
                        qos: *qos,
                        retain: *retain,
                        dup: *dup,
                        empty: *payload_len == 0,
                    });
                    if let Some(&message) = m.message_by_id.get(id) {
                        m.deliveries_of.entry(message).or_default().push(delivery);
                    }
                }
                Event::Fault { fault } => {
                    m.apply_fault(index, at, fault, durable, &mut current_epoch);
                }
                // Raw connections bypass the client: the checkers judge the clients' traffic,
                // the raw steps' own expectations judge theirs.
                Event::Note { .. }
                | Event::RawOpened { .. }
                | Event::RawSent { .. }
                | Event::RawReceived { .. }
                | Event::RawClosed { .. } => {}
            }
        }
        // A trace without wire records (older traces, hand-written tests): assume each
        // message went out once, when it was handed over, on the connection open then.
        if !m.wire_recorded {
            for message in 0..m.messages.len() {
                let msg = &m.messages[message];
                let t = m.transmissions.len();
                m.transmissions.push(Transmission {
                    event: msg.event,
                    at_ms: msg.sent_ms,
                    message,
                    connection: msg.connection,
                    dup: false,
                    packet_id: None,
                    release: false,
                    recorded: false,
                });
                m.messages[message].transmissions.push(t);
            }
        }
        // Sessions whose expiry passed before the end of the trace.
        let end_ms = m.end_ms;
        for epoch in 0..m.epochs.len() {
            if m.epochs[epoch].end.is_none() {
                if let Some(expiry_end) = m.expiry_end(epoch) {
                    if expiry_end <= end_ms {
                        m.epochs[epoch].end = Some((expiry_end, EpochEnd::Expired));
                    }
                }
            }
        }
        m
    }

    fn close_spans(&mut self, at: u64, which: impl Fn(&Fault) -> bool) {
        for span in self.faults.iter_mut() {
            if span.end_ms.is_none() && which(&span.fault) {
                span.end_ms = Some(at);
            }
        }
    }

    fn apply_fault(
        &mut self,
        index: usize,
        at: u64,
        fault: &Fault,
        durable: bool,
        current_epoch: &mut BTreeMap<String, usize>,
    ) {
        let same_link =
            |a: &str, b: &str, x: &str, y: &str| (a == x && b == y) || (a == y && b == x);
        match fault {
            Fault::Heal { a, b } => {
                // The runner's heal repairs the link and ends its loss as well.
                self.close_spans(at, |f| match f {
                    Fault::Partition { a: x, b: y, .. } | Fault::Loss { a: x, b: y, .. } => {
                        same_link(a, b, x, y)
                    }
                    _ => false,
                });
                return;
            }
            Fault::Loss { a, b, rate } => {
                self.close_spans(at, |f| match f {
                    Fault::Loss { a: x, b: y, .. } => same_link(a, b, x, y),
                    _ => false,
                });
                if *rate <= 0.0 {
                    return;
                }
            }
            Fault::ClientRestart { client } => {
                self.close_spans(
                    at,
                    |f| matches!(f, Fault::ClientCrash { client: c } if c == client),
                );
                return;
            }
            Fault::BrokerCrash { .. } => {
                self.broker_crashes.push((index, at));
                if !durable {
                    for (_, epoch) in std::mem::take(current_epoch) {
                        if self.epochs[epoch].end.is_none() {
                            self.epochs[epoch].end = Some((at, EpochEnd::BrokerCrash));
                        }
                    }
                }
            }
            Fault::DropPacket { .. } => {
                self.packet_faults.push((index, at, fault.clone()));
            }
            Fault::DuplicatePacket { .. } => {
                self.packet_faults.push((index, at, fault.clone()));
                return;
            }
            // Latency and delay lose nothing, but slow what crosses the link.
            Fault::Latency { .. } | Fault::Delay { .. } => {
                self.slow_faults.push((at, fault.clone()));
                return;
            }
            // Restarts are recorded elsewhere.
            Fault::BrokerRestart => return,
            _ => {}
        }
        let instant = matches!(fault, Fault::Reset { .. } | Fault::Kick { .. });
        self.faults.push(FaultSpan {
            event: index,
            fault: fault.clone(),
            start_ms: at,
            end_ms: if instant { Some(at) } else { None },
        });
    }

    fn end_connection(
        &mut self,
        conn: usize,
        index: usize,
        at: u64,
        cause: Option<DisconnectCause>,
        current_epoch: &mut BTreeMap<String, usize>,
    ) {
        if self.connections[conn].end.is_some() {
            return;
        }
        self.connections[conn].end = Some((index, at, cause));
        let c = &self.connections[conn];
        if let Some(epoch) = c.epoch {
            if !c.persistent() && self.epochs[epoch].end.is_none() {
                // Only the connection that currently holds the session ends it: a takeover by
                // a persistent connection keeps the epoch going.
                if self.epochs[epoch].connections.last() == Some(&conn) {
                    self.epochs[epoch].end = Some((at, EpochEnd::ConnectionEnded));
                    if current_epoch.get(&c.client_id) == Some(&epoch) {
                        current_epoch.remove(&c.client_id);
                    }
                }
            }
        }
    }

    /// The time a persistent 5.0 session expires after its last connection ended, if it has a
    /// finite expiry and no later connection.
    fn expiry_end(&self, epoch: usize) -> Option<u64> {
        let last = *self.epochs[epoch].connections.last()?;
        let c = &self.connections[last];
        if c.protocol != ProtocolVersion::V5 {
            return None;
        }
        let expiry = c.session_expiry_secs.unwrap_or(0);
        if expiry == u32::MAX {
            return None;
        }
        let end = c.end_ms()?;
        Some(end + u64::from(expiry) * 1000)
    }

    fn attach_epoch(
        &mut self,
        conn: usize,
        at: u64,
        session_present: bool,
        current_epoch: &mut BTreeMap<String, usize>,
    ) {
        let client_id = self.connections[conn].client_id.clone();
        let attempt_ms = self.connections[conn].attempt_ms;
        let mut existing = current_epoch.get(&client_id).copied();
        let mut prior = PriorSession::Absent;
        // A 5.0 session that expired before this attempt is gone.
        if let Some(epoch) = existing {
            if let Some(expiry_end) = self.expiry_end(epoch) {
                if expiry_end.abs_diff(attempt_ms) < EXPIRY_SLACK_MS {
                    prior = PriorSession::Unknown;
                }
                if expiry_end < attempt_ms {
                    self.epochs[epoch].end = Some((expiry_end, EpochEnd::Expired));
                    existing = None;
                }
            }
            if self.epochs[epoch].end.is_some() {
                existing = None;
            }
        }
        if let Some(epoch) = existing {
            if prior == PriorSession::Absent {
                prior = PriorSession::Present;
            }
            if let Some(&holder) = self.epochs[epoch].connections.last() {
                let h = &self.connections[holder];
                if !h.persistent() && h.end_ms().is_none_or(|end| end >= attempt_ms) {
                    prior = PriorSession::Unknown;
                }
            }
        }
        // An earlier CONNECT for this id that never got its CONNACK may have created or cleaned
        // the session.
        if let Some(previous) = self.connections[..conn]
            .iter()
            .rev()
            .find(|c| c.client_id == client_id)
        {
            if previous.connack.is_none() {
                prior = PriorSession::Unknown;
            }
        }
        self.connections[conn].prior_session = prior;
        let resume = !self.connections[conn].clean_start && session_present;
        let epoch = match existing {
            Some(epoch) if resume => epoch,
            _ => {
                if let Some(old) = existing {
                    let reason = if self.connections[conn].clean_start {
                        EpochEnd::CleanStart
                    } else {
                        EpochEnd::Lost
                    };
                    self.epochs[old].end = Some((attempt_ms.min(at), reason));
                }
                let epoch = self.epochs.len();
                self.epochs.push(Epoch {
                    client_id: client_id.clone(),
                    start_ms: attempt_ms,
                    connections: Vec::new(),
                    end: None,
                });
                current_epoch.insert(client_id, epoch);
                epoch
            }
        };
        self.epochs[epoch].connections.push(conn);
        self.connections[conn].epoch = Some(epoch);
    }

    /// The epoch a client id's session was in at `at_ms` (the latest one alive).
    pub fn epoch_of(&self, client_id: &str, at_ms: u64) -> Option<usize> {
        (0..self.epochs.len())
            .rev()
            .find(|&e| self.epochs[e].client_id == client_id && self.epochs[e].alive_at(at_ms))
    }

    /// The client name holding an epoch's session at the end of the trace, if it is connected.
    pub fn holder_at_end(&self, epoch: usize) -> Option<&Connection> {
        let last = *self.epochs[epoch].connections.last()?;
        let c = &self.connections[last];
        (c.accepted() && c.end.is_none() && self.epochs[epoch].end.is_none()).then_some(c)
    }

    /// Faults that can lose bytes and touched the client's connection during
    /// `[from_ms, to_ms]`.
    pub fn affecting<'a>(
        &'a self,
        client: &'a str,
        from_ms: u64,
        to_ms: u64,
    ) -> impl Iterator<Item = &'a FaultSpan> + 'a {
        let host = self.client_hosts.get(client).map(String::as_str);
        self.faults.iter().filter(move |span| {
            let overlaps = span.start_ms <= to_ms && span.end_ms.is_none_or(|end| end >= from_ms);
            overlaps
                && match span.fault.targets() {
                    FaultTarget::Link(a, b) => {
                        let touches = |x: &str| Some(x) == host;
                        let other_is_broker =
                            |x: &str| self.broker_host.as_deref().is_none_or(|broker| broker == x);
                        (touches(a) && other_is_broker(b)) || (touches(b) && other_is_broker(a))
                    }
                    FaultTarget::Client(c) => c == client,
                    FaultTarget::Broker => true,
                }
        })
    }

    /// True when a fault that can lose bytes touched the client's connection during
    /// `[from_ms, to_ms]`.
    pub fn impaired(&self, client: &str, from_ms: u64, to_ms: u64) -> bool {
        self.affecting(client, from_ms, to_ms).next().is_some()
    }

    /// The earliest time the broker may have considered a connection over: its recorded end,
    /// or the start of the first fault that touched it (a kicked, partitioned or stalled
    /// connection is over for the broker before the client notices).
    pub fn broker_side_end(&self, conn: usize) -> Option<u64> {
        let c = &self.connections[conn];
        let end = c.end_ms()?;
        let from = c.connack.map(|(_, at, _, _)| at).unwrap_or(c.attempt_ms);
        let first = self
            .affecting(&c.client, from, end)
            .map(|s| s.start_ms.max(from))
            .min();
        Some(first.map_or(end, |f| f.min(end)))
    }

    /// The latest time (exclusive of processing) by which something the client wrote at
    /// `at_ms` has certainly crossed its link to the broker: the network's bound (its largest
    /// one-way latency and a tick, or [`REAL_NETWORK_BOUND_MS`] on a real network) plus the
    /// latency and delay faults set on that link by then (a fault lasts until replaced; the
    /// trace does not show every reset, so this errs long).
    pub fn crossed_by(&self, client: &str, at_ms: u64) -> u64 {
        let base = match self.network {
            Some((tick_ms, max_ms)) => max_ms + tick_ms,
            None => REAL_NETWORK_BOUND_MS,
        };
        let host = self.client_hosts.get(client).map(String::as_str);
        let mut extra_link = 0;
        let mut extra_conn = 0;
        for (start, fault) in &self.slow_faults {
            if *start > at_ms {
                break;
            }
            match fault {
                Fault::Latency {
                    a,
                    b,
                    latency_ms,
                    jitter_ms,
                } if host.is_some_and(|h| h == a || h == b) => {
                    // A latency fault replaces the link's bounds.
                    extra_link = latency_ms + jitter_ms;
                }
                Fault::Delay {
                    client: c,
                    delay_ms,
                } if c == client => extra_conn = *delay_ms,
                _ => {}
            }
        }
        at_ms + base + extra_link + extra_conn
    }

    /// The PUBACK/PUBCOMP that answered a PUBLISH transmission: the message's acknowledgement,
    /// when it arrived on the connection the transmission went out on, after it. `(record,
    /// at_ms)`.
    pub fn answered(&self, transmission: usize) -> Option<(usize, u64)> {
        let t = &self.transmissions[transmission];
        let msg = &self.messages[t.message];
        let (record, at, _) = msg.acked?;
        (t.connection.is_some() && msg.acked_connection == t.connection && record > t.event)
            .then_some((record, at))
    }

    /// The deliveries of a message to one epoch.
    pub fn deliveries_in(&self, message: usize, epoch: usize) -> Vec<usize> {
        self.deliveries_of
            .get(&message)
            .map(|ds| {
                ds.iter()
                    .copied()
                    .filter(|&d| self.deliveries[d].epoch == Some(epoch))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The client id of the client's connection that was current at a record.
    pub fn client_id_of(&self, client: &str) -> Option<&str> {
        self.connections
            .iter()
            .rev()
            .find(|c| c.client == client)
            .map(|c| c.client_id.as_str())
    }

    /// Whether a delivery plausibly is a retained copy sent because of a SUBSCRIBE (rather than
    /// a live forward): it carries RETAIN 1 and its epoch sent a matching SUBSCRIBE after the
    /// message was published.
    pub fn retained_copy(&self, delivery: usize, message: &Message) -> bool {
        let d = &self.deliveries[delivery];
        d.retain
            && message.retain
            && self.subscriptions.iter().any(|s| {
                Some(s.epoch) == d.epoch
                    && s.matches(&d.topic)
                    && s.sent_ms >= message.sent_ms
                    && s.sent_ms <= d.at_ms
            })
    }

    /// The subscriptions of an epoch through which `message` is owed: SUBACK granted before it
    /// was sent, not unsubscribed before it was sent, matching, and not excluded by No Local.
    fn owing_subscriptions(&self, message: &Message, epoch: usize) -> Vec<usize> {
        let publisher_id = self.publisher_client_id(message);
        (0..self.subscriptions.len())
            .filter(|&s| {
                let sub = &self.subscriptions[s];
                sub.epoch == epoch
                    && sub.matches(&message.topic)
                    && matches!(sub.acked, Some((_, at, Some(_))) if at < message.sent_ms)
                    && sub.unsubscribed.is_none_or(|(_, at)| at > message.sent_ms)
                    && !(sub.request.no_local
                        && publisher_id.as_deref() == Some(self.epochs[epoch].client_id.as_str()))
            })
            .collect()
    }

    /// The publisher's client id when it sent the message.
    pub fn publisher_client_id(&self, message: &Message) -> Option<String> {
        self.connections
            .iter()
            .rev()
            .find(|c| c.client == message.publisher && c.attempt_ms <= message.sent_ms)
            .map(|c| c.client_id.clone())
    }

    /// Every epoch a message is owed to (DESIGN.md's definition). For QoS 0 publishes the flow
    /// cannot complete, so nothing is owed; `Owed::effective` then is what a delivery may use.
    pub fn owed(&self, message: usize) -> Vec<Owed> {
        let msg = &self.messages[message];
        if msg.empty || (msg.qos != QoS::AtMostOnce && !msg.flow_completed()) {
            return Vec::new();
        }
        if msg.qos == QoS::AtMostOnce {
            return Vec::new();
        }
        self.candidates(message)
    }

    /// Like `owed` but without requiring the publisher's flow to complete: the epochs that
    /// could legitimately receive the message, with the QoS they may receive it at.
    pub fn candidates(&self, message: usize) -> Vec<Owed> {
        let msg = &self.messages[message];
        let mut out = Vec::new();
        for epoch in 0..self.epochs.len() {
            if !self.epochs[epoch].alive_at(msg.sent_ms) {
                continue;
            }
            let subs = self.owing_subscriptions(msg, epoch);
            if subs.is_empty() {
                continue;
            }
            let effective = subs
                .iter()
                .filter_map(|&s| self.subscriptions[s].granted())
                .map(|g| g.min(msg.qos))
                .max()
                .unwrap_or(QoS::AtMostOnce);
            let delivered = !self.deliveries_in(message, epoch).is_empty();
            let all_ended = subs
                .iter()
                .all(|&s| self.subscriptions[s].end_ms(&self.epochs).is_some());
            out.push(Owed {
                epoch,
                subscriptions: subs,
                effective,
                released: !delivered && all_ended,
            });
        }
        out
    }

    /// Distinct matching filters of an epoch active while the message could be routed: the
    /// bound on copies when the broker sends one copy per overlapping subscription.
    pub fn matching_filters(&self, message: &Message, epoch: usize, qos: Option<QoS>) -> usize {
        let mut filters: Vec<&str> = self
            .subscriptions
            .iter()
            .filter(|s| {
                s.epoch == epoch
                    && s.matches_any(&message.topic)
                    && s.acked.is_none_or(|(_, _, g)| g.is_some())
                    && qos.is_none_or(|q| s.qos_bound().min(message.qos) == q)
            })
            .map(|s| s.request.filter.as_str())
            .collect();
        filters.sort_unstable();
        filters.dedup();
        filters.len()
    }
}

/// Expiry this close to a reconnect is a race the trace cannot decide.
const EXPIRY_SLACK_MS: u64 = 1000;

/// On a real network (no `network` record) the trace knows no latency bound; a packet is
/// taken to have crossed within this. Generous on purpose: the bound only ever turns a verdict
/// into "either" (a race the trace cannot decide), never into a demand.
pub const REAL_NETWORK_BOUND_MS: u64 = 1000;

/// A CONNACK reason (`0x00`, `0`, `success`) that accepts the connection.
pub fn reason_accepts(reason: &str) -> bool {
    matches!(reason, "0x00" | "0" | "success" | "Success")
}

#[cfg(test)]
pub(crate) mod build {
    //! A tiny builder for hand-written traces in checker tests.
    use super::super::*;
    use crate::codec::{ProtocolVersion, QoS};

    pub struct TraceBuilder {
        pub trace: Trace,
        pub now: u64,
    }

    pub fn q(level: u8) -> QoS {
        QoS::from_u8(level).unwrap()
    }

    impl TraceBuilder {
        pub fn new() -> TraceBuilder {
            let mut trace = Trace::new();
            trace.push(0, "broker", Event::BrokerStarted { durable: true });
            TraceBuilder { trace, now: 0 }
        }

        pub fn volatile_broker() -> TraceBuilder {
            let mut trace = Trace::new();
            trace.push(0, "broker", Event::BrokerStarted { durable: false });
            TraceBuilder { trace, now: 0 }
        }

        pub fn at(&mut self, ms: u64) -> &mut Self {
            self.now = ms;
            self
        }

        pub fn ev(&mut self, event: Event) -> &mut Self {
            self.now += 1;
            let host = match event.client() {
                Some(c) => format!("h-{c}"),
                None => "sim".to_string(),
            };
            self.trace.push(self.now, host, event);
            self
        }

        pub fn connect_opts(
            &mut self,
            client: &str,
            clean: bool,
            protocol: ProtocolVersion,
            expiry: Option<u32>,
            will: Option<WillInfo>,
        ) -> &mut Self {
            self.ev(Event::ConnectAttempt {
                client: client.into(),
                client_id: client.into(),
                protocol,
                clean_start: clean,
                keep_alive_secs: 10,
                session_expiry_secs: expiry,
                will,
                resubscribe: false,
            })
        }

        /// CONNECT + CONNACK (3.1.1).
        pub fn connect(&mut self, client: &str, clean: bool, session_present: bool) -> &mut Self {
            self.connect_opts(client, clean, ProtocolVersion::V311, None, None);
            self.connack(client, session_present)
        }

        pub fn connack(&mut self, client: &str, session_present: bool) -> &mut Self {
            self.ev(Event::ConnAck {
                client: client.into(),
                session_present,
                reason: "0x00".into(),
            })
        }

        pub fn subscribe(&mut self, client: &str, filter: &str, qos: u8, granted: u8) -> &mut Self {
            self.ev(Event::Subscribe {
                client: client.into(),
                filters: vec![FilterRequest {
                    filter: filter.into(),
                    qos: q(qos),
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                }],
                automatic: false,
            });
            self.ev(Event::SubAck {
                client: client.into(),
                results: vec![FilterGrant {
                    filter: filter.into(),
                    granted: Some(q(granted)),
                }],
            })
        }

        pub fn unsubscribe(&mut self, client: &str, filter: &str) -> &mut Self {
            self.ev(Event::Unsubscribe {
                client: client.into(),
                filters: vec![filter.into()],
            });
            self.ev(Event::UnsubAck {
                client: client.into(),
                filters: vec![filter.into()],
            })
        }

        pub fn publish(&mut self, client: &str, id: &str, topic: &str, qos: u8) -> &mut Self {
            self.publish_opts(client, id, topic, qos, false, 4)
        }

        pub fn publish_opts(
            &mut self,
            client: &str,
            id: &str,
            topic: &str,
            qos: u8,
            retain: bool,
            payload_len: u32,
        ) -> &mut Self {
            self.ev(Event::PublishSent {
                client: client.into(),
                id: id.into(),
                topic: topic.into(),
                qos: q(qos),
                retain,
                payload_len,
            })
        }

        pub fn acked(&mut self, client: &str, id: &str) -> &mut Self {
            self.ev(Event::PublishAcked {
                client: client.into(),
                id: id.into(),
                accepted: true,
                reason: "0x00".into(),
            })
        }

        /// Publish and ack at once (QoS ≥ 1).
        pub fn publish_acked(&mut self, client: &str, id: &str, topic: &str, qos: u8) -> &mut Self {
            self.publish(client, id, topic, qos);
            self.acked(client, id)
        }

        pub fn deliver(&mut self, client: &str, id: &str, topic: &str, qos: u8) -> &mut Self {
            self.deliver_opts(client, id, topic, qos, false, false)
        }

        pub fn deliver_opts(
            &mut self,
            client: &str,
            id: &str,
            topic: &str,
            qos: u8,
            retain: bool,
            dup: bool,
        ) -> &mut Self {
            self.ev(Event::Delivered {
                client: client.into(),
                id: id.into(),
                topic: topic.into(),
                qos: q(qos),
                retain,
                dup,
                payload_len: if id.is_empty() { 0 } else { 4 },
            })
        }

        pub fn disconnect(&mut self, client: &str, cause: DisconnectCause) -> &mut Self {
            self.ev(Event::Disconnected {
                client: client.into(),
                cause,
            })
        }

        pub fn fault(&mut self, fault: Fault) -> &mut Self {
            self.ev(Event::Fault { fault })
        }

        pub fn model(&self) -> super::Model {
            super::Model::build(&self.trace)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn clean_reconnect_starts_a_new_epoch() {
        let mut b = TraceBuilder::new();
        b.connect("s", false, false)
            .subscribe("s", "t", 1, 1)
            .disconnect("s", DisconnectCause::KeepaliveTimeout)
            .connect("s", false, true)
            .disconnect("s", DisconnectCause::ClientDisconnect { with_will: false })
            .connect("s", true, false);
        let m = b.model();
        assert_eq!(m.epochs.len(), 2);
        assert_eq!(m.epochs[0].connections, vec![0, 1]);
        assert_eq!(m.epochs[0].end.as_ref().unwrap().1, EpochEnd::CleanStart);
        assert!(m.epochs[1].end.is_none());
    }

    #[test]
    fn clean_session_ends_with_its_connection_and_volatile_crash_ends_all() {
        let mut b = TraceBuilder::volatile_broker();
        b.connect("a", true, false)
            .connect("b", false, false)
            .disconnect("a", DisconnectCause::ClientDisconnect { with_will: false })
            .fault(Fault::BrokerCrash { power_loss: false });
        let m = b.model();
        assert_eq!(
            m.epochs[0].end.as_ref().unwrap().1,
            EpochEnd::ConnectionEnded
        );
        assert_eq!(m.epochs[1].end.as_ref().unwrap().1, EpochEnd::BrokerCrash);
    }

    #[test]
    fn owed_needs_suback_before_send_and_a_completed_flow() {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false)
            .connect("p", true, false)
            .publish_acked("p", "p-1", "t", 1)
            .subscribe("s", "t", 2, 1)
            .publish_acked("p", "p-2", "t", 2)
            .publish("p", "p-3", "t", 1);
        let m = b.model();
        assert!(m.owed(0).is_empty(), "sent before the SUBACK");
        let owed = m.owed(1);
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].effective, QoS::AtLeastOnce, "min(2, granted 1)");
        assert!(m.owed(2).is_empty(), "flow not completed");
    }

    #[test]
    fn partition_impairs_until_heal() {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false);
        b.fault(Fault::Partition {
            a: "sim".into(),
            b: "h-s".into(),
            one_way: false,
        });
        let start = b.now;
        b.at(100).fault(Fault::Heal {
            a: "h-s".into(),
            b: "sim".into(),
        });
        let m = b.model();
        // The builder writes BrokerStarted from host "broker"; partitions name "sim" here, so
        // set the broker host to match.
        let mut m2 = m.clone();
        m2.broker_host = Some("sim".into());
        assert!(m2.impaired("s", start, start));
        assert!(!m2.impaired("s", 102, 200));
        assert!(
            !m.impaired("s", start, start),
            "partition not with the broker"
        );
    }
}
