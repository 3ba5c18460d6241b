//! No acknowledgement without durability: what the core does when the store cannot write.
//!
//! An acknowledgement (CONNACK, PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK) that follows a
//! change of durable state promises that change; under `sync = "every-write"` the store makes
//! it durable before the acknowledgement leaves (`Core::flush_store`, before the I/O layer
//! carries out the actions). When the write fails:
//!
//! - **The batch whose write failed.** Its packets were handled already (messages routed,
//!   subscriptions made, in memory). Each connection that was given an acknowledgement that
//!   depended on the write gets its acknowledgements withdrawn and is closed (5.0: DISCONNECT
//!   with the reason below first, when its CONNACK went out earlier). That is exactly a
//!   connection lost before the acknowledgement: the client sends again (3.1.1 and 5.0 resend
//!   unacknowledged PUBLISH and PUBREL on reconnect) and the broker, which kept the state in
//!   memory, answers the resend as a resend (a QoS 2 id it holds is not delivered twice).
//! - **While the store is failing.** A packet that would change durable state is refused
//!   before it changes anything: 5.0 PUBLISH gets PUBACK/PUBREC with the reason below (the
//!   message is not routed); SUBSCRIBE gets a SUBACK failure for every filter (3.1.1: 0x80);
//!   5.0 UNSUBSCRIBE gets UNSUBACK 0x80 (its list has no 0x97); CONNECT gets CONNACK with the
//!   reason (3.1.1: 0x03 Server unavailable); packets that have no way to say it (3.1.1
//!   PUBLISH and UNSUBSCRIBE, PUBREL) close the connection unacknowledged. Everything that
//!   needs no store goes on as usual: QoS 0, clean sessions, subscribers that are only in
//!   memory.
//! - **Recovery.** The store keeps the records that failed and writes them first once the disk
//!   takes them (`Store::apply`). The core retries at most every `RETRY_INTERVAL`: on the next
//!   packet that needs the store, and after every batch. The first success ends the failure.
//!
//! The reason code: 0x97 Quota exceeded ("an implementation or administrative imposed limit
//! has been exceeded", MQTT 5.0 3.4.2.1) when the store reports no space or a size limit
//! (ENOSPC, EDQUOT, EFBIG): the disk or the file size limit is such a limit, and it tells the
//! client the refusal is about capacity, not its message. Any other error: 0x80 Unspecified
//! error ("the receiver does not accept the publish but either does not want to reveal the
//! reason, or it does not match one of the other values").
//!
//! The log says it once per transition (ERROR when writes start failing, WARN when they work
//! again); `$SYS/broker/store/status` and `$SYS/broker/store/refused` say it too.

use std::collections::BTreeSet;
use std::io;
use std::time::Duration;

use tokio::time::Instant;

use super::{ack, Action, ConnId, Core};
use crate::codec::{Packet, ProtocolVersion, QosPid, ReasonCode, SubAck, UnsubAck};

/// How often a failing store is tried again, at most.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// The core's view of its store.
#[derive(Debug, Default)]
pub(super) struct StoreHealth {
    /// The last write failed: its error and since when.
    failing: Option<Failure>,
    /// Connections handed, since the last flush, an acknowledgement that depends on ops that
    /// wait for it.
    promised: BTreeSet<ConnId>,
    /// When the store was last tried while failing.
    last_try: Option<Instant>,
}

#[derive(Debug)]
struct Failure {
    error: String,
    reason: ReasonCode,
    since: Instant,
}

impl StoreHealth {
    /// The store's current failure, for `$SYS` (`None`: writing works).
    pub(super) fn failure(&self) -> Option<&str> {
        self.failing.as_ref().map(|f| f.error.as_str())
    }
}

/// The reason a refusal gives for `error` (see the module documentation).
fn reason_for(error: &io::Error) -> ReasonCode {
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => {
            ReasonCode::QuotaExceeded
        }
        _ => ReasonCode::UnspecifiedError,
    }
}

/// Packets whose answer promises the durable change they made.
fn acknowledged(packet: &Packet) -> bool {
    match packet {
        Packet::Publish(p) => p.qos_pid != QosPid::AtMostOnce,
        Packet::Connect(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) | Packet::PubRel(_) => {
            true
        }
        _ => false,
    }
}

/// An acknowledgement packet, which a failed write withdraws.
fn is_ack(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::ConnAck(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubComp(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
    )
}

impl Core {
    /// `handle`, with the store's health taken into account (see the module documentation).
    pub fn handle(&mut self, conn: ConnId, packet: Packet, now: Instant, out: &mut Vec<Action>) {
        if self.store_health.failing.is_some()
            && self.needs_store(conn, &packet)
            && self.still_failing(now, out)
        {
            self.refuse_for_store(conn, packet, now, out);
            return;
        }
        let ops_before = self.pending_ops.len();
        let promises = acknowledged(&packet);
        self.handle_packet(conn, packet, now, out);
        if promises && self.pending_ops.len() > ops_before {
            self.store_health.promised.insert(conn);
        }
    }

    /// Writes the store ops gathered since the last call as one batch (group commit: under
    /// `every-write` one sync for all of them). The I/O layer calls it after every batch of
    /// events and BEFORE it carries out the resulting actions (`out`), so no acknowledgement
    /// leaves before the state it promises is durable; when the write fails, the
    /// acknowledgements in `out` that depend on it are withdrawn (see the module
    /// documentation). The core does no I/O between gathering and flushing, so a crash cannot
    /// fall in between. While the store is failing, this also tries it again.
    pub fn flush_store(&mut self, now: Instant, out: &mut Vec<Action>) {
        let result = if !self.pending_ops.is_empty() {
            let ops = std::mem::take(&mut self.pending_ops);
            self.store.apply_batch(ops)
        } else if self.store_health.failing.is_some() && self.retry_due(now) {
            self.store.sync()
        } else {
            self.store_health.promised.clear();
            return;
        };
        if self.store_health.failing.is_some() {
            self.store_health.last_try = Some(now);
        }
        self.store_result(result, now, out);
    }

    /// Forces the store's writes to disk (the periodic timer, shutdown).
    pub(super) fn sync_store(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.flush_store(now, out);
        if self.store_health.failing.is_none() {
            // (While failing, `flush_store` has just tried it again if that was due.)
            let result = self.store.sync();
            self.store_result(result, now, out);
        }
    }

    fn retry_due(&self, now: Instant) -> bool {
        self.store_health
            .last_try
            .is_none_or(|at| now >= at + RETRY_INTERVAL)
    }

    /// True when the store is still failing after (at most every `RETRY_INTERVAL`) one more
    /// try; false when writing works again.
    fn still_failing(&mut self, now: Instant, out: &mut Vec<Action>) -> bool {
        if self.retry_due(now) {
            self.store_health.last_try = Some(now);
            let result = if self.pending_ops.is_empty() {
                self.store.sync()
            } else {
                let ops = std::mem::take(&mut self.pending_ops);
                self.store.apply_batch(ops)
            };
            self.store_result(result, now, out);
        }
        self.store_health.failing.is_some()
    }

    fn store_result(&mut self, result: io::Result<()>, now: Instant, out: &mut Vec<Action>) {
        match result {
            Ok(()) => {
                if let Some(failure) = self.store_health.failing.take() {
                    let secs = now.saturating_duration_since(failure.since).as_secs();
                    tracing::warn!(
                        failed_for_secs = secs,
                        refused = self.stats.store_refused,
                        "store writes work again: acknowledging as usual (everything kept in \
                         memory meanwhile is on disk now)"
                    );
                }
                self.store_health.promised.clear();
            }
            Err(error) => {
                self.stats.store_errors += 1;
                if self.store_health.failing.is_none() {
                    tracing::error!(
                        %error,
                        "store write failed: acknowledgements that need the store are refused \
                         until it works again (tried again on the next packet that needs it, at \
                         most every {} ms); everything else is served",
                        RETRY_INTERVAL.as_millis()
                    );
                    self.store_health.failing = Some(Failure {
                        error: error.to_string(),
                        reason: reason_for(&error),
                        since: now,
                    });
                    self.store_health.last_try = Some(now);
                }
                let promised = std::mem::take(&mut self.store_health.promised);
                for conn in promised {
                    self.withdraw_acks(conn, now, out);
                }
            }
        }
    }

    /// The reason refusals give now.
    fn store_reason(&self) -> ReasonCode {
        self.store_health
            .failing
            .as_ref()
            .map_or(ReasonCode::UnspecifiedError, |f| f.reason)
    }

    /// The write that `conn`'s acknowledgements in `out` promised failed: they are withdrawn
    /// and the connection is closed, as if it had been lost before them.
    fn withdraw_acks(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Action>) {
        let mut withdrawn = 0u64;
        let mut connack_withdrawn = false;
        out.retain(|action| match action {
            Action::Send { conn: c, packet } if *c == conn && is_ack(packet) => {
                withdrawn += 1;
                connack_withdrawn |= matches!(packet, Packet::ConnAck(_));
                false
            }
            _ => true,
        });
        self.stats.store_refused += withdrawn;
        tracing::debug!(
            conn,
            withdrawn,
            "acknowledgements withdrawn: their store write failed"
        );
        if !connack_withdrawn {
            // [MQTT-3.14.0-1 in 5.0] DISCONNECT only after a successful CONNACK.
            self.send_disconnect_v5(conn, self.store_reason(), out);
        }
        self.end_connection(conn, true, now, out);
    }

    /// True when handling `packet` from `conn` would change durable state (an op for the
    /// store), judged before handling it.
    fn needs_store(&self, conn: ConnId, packet: &Packet) -> bool {
        let Some(online) = self.online(conn) else {
            let Packet::Connect(connect) = packet else {
                return false;
            };
            // A session that outlives the connection, or one that replaces a stored one.
            let persistent = if connect.protocol == ProtocolVersion::V5 {
                connect.properties.session_expiry_interval_secs.unwrap_or(0) != 0
            } else {
                !connect.clean_start
            };
            let replaces_stored = self
                .sid_of(connect.client_id.as_str())
                .and_then(|sid| self.session(sid))
                .is_some_and(|s| s.persistent);
            return persistent || replaces_stored;
        };
        let sid = online.sid;
        let persistent = self.session(sid).is_some_and(|s| s.persistent);
        match packet {
            Packet::Publish(p) => {
                if p.qos_pid == QosPid::AtMostOnce {
                    return false;
                }
                if let QosPid::ExactlyOnce(id) = p.qos_pid {
                    let seen = self
                        .session(sid)
                        .is_some_and(|s| s.stored.incoming_qos2.contains(&id.get()));
                    if seen {
                        // A resend: answered from memory, nothing new to store.
                        return false;
                    }
                    if persistent {
                        return true;
                    }
                }
                if p.retain && self.config.retain_available {
                    return true;
                }
                let mut stored_subscriber = false;
                self.router.for_each_match(&p.topic, |&sub, _| {
                    stored_subscriber |= self.session(sub).is_some_and(|s| s.persistent);
                });
                stored_subscriber
            }
            Packet::Subscribe(_) | Packet::Unsubscribe(_) => persistent,
            Packet::PubRel(rel) => {
                persistent
                    && self
                        .session(sid)
                        .is_some_and(|s| s.stored.incoming_qos2.contains(&rel.packet_id.get()))
            }
            _ => false,
        }
    }

    /// Refuses `packet`, which needs the failing store, without changing anything.
    fn refuse_for_store(
        &mut self,
        conn: ConnId,
        packet: Packet,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.stats.store_refused += 1;
        let reason = self.store_reason();
        let Some(online) = self.online(conn) else {
            if let Packet::Connect(connect) = packet {
                // 3.1.1: `refuse` answers 0x03 Server unavailable.
                self.refuse(conn, connect.protocol, reason, now, out);
            }
            return;
        };
        let v5 = online.protocol == ProtocolVersion::V5;
        tracing::debug!(conn, packet = ?packet.packet_type(), "refused: the store is failing");
        let answer = match packet {
            Packet::Publish(p) if v5 => {
                self.stats.messages_received += 1;
                self.stats.messages_dropped += 1;
                match p.qos_pid {
                    QosPid::AtLeastOnce(id) => Some(Packet::PubAck(ack(id, reason))),
                    // A PUBREC with an error ends the exchange: no id is kept.
                    QosPid::ExactlyOnce(id) => Some(Packet::PubRec(ack(id, reason))),
                    QosPid::AtMostOnce => None,
                }
            }
            Packet::Subscribe(subscribe) => Some(Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                properties: Default::default(),
                reason_codes: vec![
                    if v5 {
                        reason
                    } else {
                        // 3.1.1 "Failure" [MQTT-3.9.3-2].
                        ReasonCode::UnspecifiedError
                    };
                    subscribe.filters.len()
                ],
            })),
            Packet::Unsubscribe(unsubscribe) if v5 => Some(Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: Default::default(),
                reason_codes: vec![ReasonCode::UnspecifiedError; unsubscribe.filters.len()],
            })),
            _ => None,
        };
        match answer {
            Some(packet) => out.push(Action::Send { conn, packet }),
            None => {
                // No way to say it in this packet's answer: unacknowledged, the client sends
                // it again after reconnecting.
                self.send_disconnect_v5(conn, reason, out);
                self.end_connection(conn, true, now, out);
            }
        }
    }

    /// `$SYS` text for the store's state.
    pub(super) fn store_status(&self) -> Option<String> {
        self.store_health.failure().map(str::to_string)
    }

    /// Ops gathered and not yet written by `flush_store`.
    pub fn pending_store_ops(&self) -> usize {
        self.pending_ops.len()
    }
}
