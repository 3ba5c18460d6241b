//! Broker counters, published under `$SYS/broker/...` and readable through `BrokerHandle`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes moved on client sockets. Shared between the connection tasks (which add) and the
/// broker core (which reads); atomics rather than a lock so no task ever waits on another.
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Bytes (payload and topic) of the PUBLISH packets waiting in every connection's outbound
    /// queue: the connections' part of the broker's memory budget.
    pub outbound_queued: AtomicU64,
}

impl ByteCounters {
    pub fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A snapshot of the broker's counters. Totals count since start; gauges (`clients_connected`,
/// `sessions`, `messages_queued`, `messages_inflight`, `retained`, `subscriptions`) are current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub uptime_secs: u64,
    pub clients_connected: u64,
    /// Sessions held, connected or not.
    pub sessions: u64,
    pub connections_accepted: u64,
    /// CONNECTs answered with a non-zero return code.
    pub connections_refused: u64,
    /// Connections closed for a malformed packet, an oversize packet or a protocol violation.
    pub protocol_errors: u64,
    /// Connections closed because the client read too slowly.
    pub slow_consumers: u64,
    pub keepalive_timeouts: u64,
    pub takeovers: u64,
    /// CONNECTs refused because the client id's session belongs to another user.
    pub sessions_refused_other_user: u64,
    pub wills_published: u64,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets handed to connections.
    pub messages_sent: u64,
    /// Every message not delivered for one of the reasons below (their sum).
    pub messages_dropped: u64,
    /// Oldest queued message dropped because a session queue was full.
    pub dropped_queue_full: u64,
    /// PUBLISH refused by the ACL or aimed at a `$` topic, and deliveries the receiver's ACL
    /// does not allow it to read.
    pub dropped_not_authorized: u64,
    /// QoS 0 message dropped because the subscriber's connection queue was full.
    pub dropped_slow_consumer: u64,
    /// 5.0 message whose expiry interval ran out before it could be sent, or larger than the
    /// client's maximum packet size.
    pub dropped_undeliverable: u64,
    /// Messages dropped because the broker's memory budget (`max_queued_bytes_total`) was used
    /// up: QoS 0 messages, and messages for offline sessions.
    pub dropped_memory: u64,
    /// PUBLISH refused because its topic has more levels than `max_topic_levels`.
    pub dropped_topic_levels: u64,
    pub messages_queued: u64,
    pub messages_inflight: u64,
    /// Bytes (payload and topic) of the messages in session queues.
    pub queued_bytes: u64,
    /// Bytes of the QoS 1/2 messages in flight.
    pub inflight_bytes: u64,
    /// Bytes of the messages in connections' outbound queues.
    pub outbound_bytes: u64,
    pub retained: u64,
    pub subscriptions: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Store writes that failed (the broker carries on from memory and retries them).
    pub store_errors: u64,
    /// Acknowledgements refused or withdrawn because the store could not write what they
    /// promise (docs/reliability.md).
    pub store_refused: u64,
    /// Why the store is failing now; `None` while it writes.
    pub store_failure: Option<String>,
}

impl Stats {
    /// The `$SYS` topics and their payloads.
    pub fn sys_topics(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "$SYS/broker/version",
                format!("simqtt {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", self.uptime_secs),
            ),
            (
                "$SYS/broker/clients/connected",
                self.clients_connected.to_string(),
            ),
            ("$SYS/broker/clients/total", self.sessions.to_string()),
            (
                "$SYS/broker/clients/disconnected",
                self.sessions
                    .saturating_sub(self.clients_connected)
                    .to_string(),
            ),
            (
                "$SYS/broker/connections/accepted",
                self.connections_accepted.to_string(),
            ),
            (
                "$SYS/broker/connections/refused",
                self.connections_refused.to_string(),
            ),
            (
                "$SYS/broker/connections/protocol_errors",
                self.protocol_errors.to_string(),
            ),
            (
                "$SYS/broker/connections/slow_consumers",
                self.slow_consumers.to_string(),
            ),
            (
                "$SYS/broker/connections/keepalive_timeouts",
                self.keepalive_timeouts.to_string(),
            ),
            (
                "$SYS/broker/connections/refused/other_user",
                self.sessions_refused_other_user.to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                self.messages_received.to_string(),
            ),
            ("$SYS/broker/messages/sent", self.messages_sent.to_string()),
            (
                "$SYS/broker/messages/dropped",
                self.messages_dropped.to_string(),
            ),
            (
                "$SYS/broker/messages/dropped/queue_full",
                self.dropped_queue_full.to_string(),
            ),
            (
                "$SYS/broker/messages/dropped/not_authorized",
                self.dropped_not_authorized.to_string(),
            ),
            (
                "$SYS/broker/messages/dropped/slow_consumer",
                self.dropped_slow_consumer.to_string(),
            ),
            (
                "$SYS/broker/messages/dropped/undeliverable",
                self.dropped_undeliverable.to_string(),
            ),
            (
                "$SYS/broker/messages/dropped/memory",
                self.dropped_memory.to_string(),
            ),
            (
                "$SYS/broker/messages/dropped/topic_levels",
                self.dropped_topic_levels.to_string(),
            ),
            (
                "$SYS/broker/messages/queued",
                self.messages_queued.to_string(),
            ),
            (
                "$SYS/broker/messages/inflight",
                self.messages_inflight.to_string(),
            ),
            (
                "$SYS/broker/memory/queued_bytes",
                self.queued_bytes.to_string(),
            ),
            (
                "$SYS/broker/memory/inflight_bytes",
                self.inflight_bytes.to_string(),
            ),
            (
                "$SYS/broker/memory/outbound_bytes",
                self.outbound_bytes.to_string(),
            ),
            (
                "$SYS/broker/wills/published",
                self.wills_published.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                self.retained.to_string(),
            ),
            (
                "$SYS/broker/subscriptions/count",
                self.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                self.bytes_received.to_string(),
            ),
            ("$SYS/broker/bytes/sent", self.bytes_sent.to_string()),
            ("$SYS/broker/store/errors", self.store_errors.to_string()),
            ("$SYS/broker/store/refused", self.store_refused.to_string()),
            (
                "$SYS/broker/store/status",
                match &self.store_failure {
                    None => "ok".to_string(),
                    Some(error) => format!("failing: {error}"),
                },
            ),
        ]
    }
}
