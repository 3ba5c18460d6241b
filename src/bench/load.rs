//! The hot loops: publishers write pre-encoded PUBLISH batches, subscribers scan what arrives.
//!
//! One task per connection, each owning its socket halves and selecting between reading and
//! writing, so a broker that back-pressures one direction while it writes the other (acks)
//! never deadlocks the generator. Buffers are allocated once per connection; the loops copy
//! bytes and bump counters but never allocate per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::histogram::Histogram;
use super::scan::{self, push_ack, scan_frame, scan_header};
use super::wire::{Session, Template, WriteHalf};
use super::BenchError;
use crate::codec::ProtocolVersion;

/// Bytes of PUBLISH packets a publisher hands the kernel per write.
const BATCH_BYTES: usize = 64 * 1024;
/// Read buffer of each connection (grown only for a frame larger than this).
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Largest frame a reader accepts: the largest payload plus room for topic and properties.
const FRAME_MAX: usize = super::config::PAYLOAD_MAX + 64 * 1024;
/// Acks a subscriber may owe the broker before it stops reading to write them: bounds its
/// memory and passes the broker's pace back to it.
const ACK_BACKLOG_BYTES: usize = 64 * 1024;
/// MQTT DISCONNECT with no reason or properties, valid in 3.1.1 and 5.0.
const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// The packet ids a QoS 1/2 publisher has in flight: a bitset over all 65,535 ids so any ack
/// order is handled, and the allocator skips ids still unacknowledged [MQTT-2.3.1-2].
pub struct Window {
    in_flight: Box<[u64; 1024]>,
    count: u32,
    next: u16,
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    pub fn new() -> Window {
        Window {
            in_flight: Box::new([0; 1024]),
            count: 0,
            next: 1,
        }
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn is_set(&self, id: u16) -> bool {
        self.in_flight[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }

    /// The next free id. Callers keep fewer than 65,535 in flight (`INFLIGHT_MAX`).
    pub fn allocate(&mut self) -> u16 {
        debug_assert!(self.count < 65_535);
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            if !self.is_set(id) {
                self.in_flight[usize::from(id / 64)] |= 1 << (id % 64);
                self.count += 1;
                return id;
            }
        }
    }

    /// Frees `id`; false if it was not in flight (a duplicate or invented ack).
    pub fn release(&mut self, id: u16) -> bool {
        if id == 0 || !self.is_set(id) {
            return false;
        }
        self.in_flight[usize::from(id / 64)] &= !(1 << (id % 64));
        self.count -= 1;
        true
    }
}

/// A publisher's instructions.
pub struct PublisherPlan {
    pub template: Template,
    /// 0, 1 or 2.
    pub qos: u8,
    pub protocol: ProtocolVersion,
    pub inflight: u16,
    /// This publisher's messages per second; `None`: as fast as the socket takes them.
    pub rate_per_sec: Option<f64>,
    /// Put the send time and a sequence number in each payload (latency and shared shapes).
    pub stamp: bool,
    /// Added to this publisher's sequence numbers, so they are unique over the run's publishers.
    pub sequence_base: u64,
    /// The instant timestamps count from (shared with the subscribers of this run).
    pub epoch: std::time::Instant,
    pub start: Instant,
    pub deadline: Instant,
    pub drain_deadline: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PublisherResult {
    /// Messages written whole to the socket.
    pub sent: u64,
    /// Of those, written before the deadline.
    pub sent_in_window: u64,
    /// QoS 1/2 flows the broker completed (PUBACK, or PUBCOMP).
    pub acked: u64,
    /// 5.0 acks with an error reason code (counted in `acked` too).
    pub rejected: u64,
    /// Still unacknowledged when the drain ended.
    pub unacked: u64,
}

pub async fn publisher(
    session: Session,
    plan: PublisherPlan,
) -> Result<PublisherResult, BenchError> {
    if plan.qos == 0 && plan.rate_per_sec.is_none() && !plan.stamp {
        return publish_qos0_flat_out(session, plan).await;
    }
    publish_paced(session, plan).await
}

/// QoS 0 as fast as possible: one batch of whole packets, encoded once, written over and over.
async fn publish_qos0_flat_out(
    session: Session,
    plan: PublisherPlan,
) -> Result<PublisherResult, BenchError> {
    let Session { mut stream, .. } = session;
    let packet_len = plan.template.len();
    let per_batch = (BATCH_BYTES / packet_len).max(1);
    let mut batch = Vec::with_capacity(per_batch * packet_len);
    for _ in 0..per_batch {
        plan.template.push(0, None, &mut batch);
    }
    let mut offset = 0usize;
    let mut written: u64 = 0;
    let mut written_in_window: u64 = 0;
    let deadline = sleep_until(plan.deadline);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            _ = &mut deadline => break,
            result = stream.write(&batch[offset..]) => {
                let n = result.map_err(write_error)?;
                written += n as u64;
                offset += n;
                if offset == batch.len() {
                    offset = 0;
                }
            }
        }
    }
    written_in_window += written;
    // Finish the packet cut by the deadline so the broker sees only whole packets, then say
    // goodbye; both bounded by the drain.
    let tail = (packet_len - (written as usize % packet_len)) % packet_len;
    let finish = async {
        stream.write_all(&batch[offset..offset + tail]).await?;
        stream.write_all(&DISCONNECT).await?;
        stream.flush().await
    };
    let finished = matches!(
        tokio::time::timeout_at(plan.drain_deadline, finish).await,
        Ok(Ok(()))
    );
    if finished {
        written += tail as u64;
    }
    let packet_len = packet_len as u64;
    Ok(PublisherResult {
        sent: written / packet_len,
        sent_in_window: written_in_window / packet_len,
        ..PublisherResult::default()
    })
}

/// Any QoS, optionally at a fixed rate and stamped: fills a batch with as many messages as are
/// due and fit the window, patching packet ids (and timestamps), writes it, and reads acks.
async fn publish_paced(
    session: Session,
    plan: PublisherPlan,
) -> Result<PublisherResult, BenchError> {
    let Session {
        mut stream,
        leftover,
    } = session;
    let (mut reader, mut writer) = stream.split();
    let layered = writer.layered();
    let mut flushing = false;
    let v5 = plan.protocol == ProtocolVersion::V5;
    let packet_len = plan.template.len();
    let batch_max = (BATCH_BYTES / packet_len).max(1) as u64;
    let mut out: Vec<u8> = Vec::with_capacity(BATCH_BYTES.max(packet_len) + ACK_BACKLOG_BYTES);
    let mut out_offset = 0usize;
    let mut out_messages: u64 = 0;
    // PUBRELs owed (QoS 2), written ahead of the next batch.
    let mut control: Vec<u8> = Vec::with_capacity(ACK_BACKLOG_BYTES);
    let mut input = ReadBuffer::new(leftover);
    let mut window = Window::new();
    let mut result = PublisherResult::default();
    let mut scheduled: u64 = 0;
    let mut stopping = false;
    let interval = plan.rate_per_sec.map(|rate| 1.0 / rate);

    loop {
        let now = Instant::now();
        if !stopping && now >= plan.deadline {
            stopping = true;
        }
        let room = if plan.qos == 0 {
            batch_max
        } else {
            u64::from(plan.inflight).saturating_sub(u64::from(window.len()))
        };
        if out_offset == out.len() {
            out.clear();
            out_offset = 0;
            out_messages = 0;
            out.append(&mut control);
            if !stopping {
                let due = match interval {
                    None => batch_max,
                    Some(interval) => {
                        let elapsed = now.duration_since(plan.start).as_secs_f64();
                        ((elapsed / interval) as u64 + 1).saturating_sub(scheduled)
                    }
                };
                let n = due.min(room).min(batch_max);
                let stamp_ns = plan.epoch.elapsed().as_nanos() as u64;
                for _ in 0..n {
                    let id = if plan.qos == 0 { 0 } else { window.allocate() };
                    let stamp = plan
                        .stamp
                        .then_some((stamp_ns, plan.sequence_base + scheduled));
                    plan.template.push(id, stamp, &mut out);
                    scheduled += 1;
                }
                out_messages = n;
            }
        }
        let writing = out_offset < out.len();
        if stopping && !writing && window.is_empty() {
            break;
        }
        let next_due = match interval {
            Some(interval) if !stopping && !writing => {
                plan.start + Duration::from_secs_f64(scheduled as f64 * interval)
            }
            // Nothing to wait for but the other branches.
            _ => plan.drain_deadline,
        };
        tokio::select! {
            biased;
            result_read = reader.read(input.spare()), if plan.qos > 0 => {
                let n = result_read.map_err(|e| BenchError::Io {
                    context: "reading acks".into(),
                    source: e,
                })?;
                if n == 0 {
                    return Err(BenchError::Broker(
                        "broker closed a publisher's connection".into(),
                    ));
                }
                input.filled += n;
                input.consume(|frame, body| {
                    match frame.packet_type() {
                        scan::PUBACK if plan.qos == 1 => {
                            let id = scan::ack_packet_id(body, "PUBACK")?;
                            if window.release(id) {
                                result.acked += 1;
                                result.rejected += u64::from(v5 && body.len() > 2 && body[2] >= 0x80);
                            }
                        }
                        scan::PUBREC if plan.qos == 2 => {
                            let id = scan::ack_packet_id(body, "PUBREC")?;
                            if v5 && body.len() > 2 && body[2] >= 0x80 {
                                // A refused QoS 2 flow ends at PUBREC [MQTT-4.3.3-4 in 5.0].
                                if window.release(id) {
                                    result.acked += 1;
                                    result.rejected += 1;
                                }
                            } else {
                                push_ack(scan::PUBREL, id, &mut control);
                            }
                        }
                        scan::PUBCOMP if plan.qos == 2 => {
                            let id = scan::ack_packet_id(body, "PUBCOMP")?;
                            if window.release(id) {
                                result.acked += 1;
                            }
                        }
                        scan::DISCONNECT => {
                            return Err(BenchError::Broker(format!(
                                "broker sent DISCONNECT to a publisher (reason {:?})",
                                body.first()
                            )));
                        }
                        _ => {}
                    }
                    Ok(())
                })?;
            }
            result_write = write_or_flush(&mut writer, if writing { &out[out_offset..] } else { &[] }), if writing || flushing => {
                let n = result_write.map_err(write_error)?;
                flushing = layered && n > 0;
                out_offset += n;
                if n > 0 && out_offset == out.len() {
                    result.sent += out_messages;
                    if Instant::now() <= plan.deadline {
                        result.sent_in_window += out_messages;
                    }
                }
            }
            // With the window full the next message waits for an ack, not for the clock.
            _ = sleep_until(next_due), if interval.is_some() && !stopping && !writing && room > 0 => {}
            _ = sleep_until(plan.deadline), if !stopping => {}
            _ = sleep_until(plan.drain_deadline), if stopping => break,
        }
    }
    result.unacked = u64::from(window.len());
    // Only whole packets are ever in `out` at a boundary; finish the last write then leave.
    let finish = async {
        writer.write_all(&out[out_offset..]).await?;
        writer.write_all(&DISCONNECT).await?;
        writer.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), finish).await;
    Ok(result)
}

/// Writes `data`, or flushes when there is none (returning 0): TLS and WebSocket may hold
/// written bytes until flushed, and one future keeps `select!` to one borrow of the writer.
async fn write_or_flush(writer: &mut WriteHalf<'_>, data: &[u8]) -> std::io::Result<usize> {
    if data.is_empty() {
        writer.flush().await.map(|()| 0)
    } else {
        writer.write(data).await
    }
}

fn write_error(source: std::io::Error) -> BenchError {
    BenchError::Io {
        context: "writing to the broker".into(),
        source,
    }
}

/// A read buffer that hands out whole frames and keeps the partial tail.
pub struct ReadBuffer {
    buf: Vec<u8>,
    pub filled: usize,
}

impl ReadBuffer {
    pub fn new(leftover: Vec<u8>) -> ReadBuffer {
        let mut buf = vec![0u8; READ_BUFFER_BYTES.max(leftover.len() * 2)];
        buf[..leftover.len()].copy_from_slice(&leftover);
        ReadBuffer {
            buf,
            filled: leftover.len(),
        }
    }

    /// Free space to read into (never empty: `consume` grows the buffer for a large frame).
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }

    /// Calls `each` for every whole frame, then moves the partial tail to the front.
    pub fn consume(
        &mut self,
        mut each: impl FnMut(scan::Frame, &[u8]) -> Result<(), BenchError>,
    ) -> Result<(), BenchError> {
        let mut at = 0;
        while let Some(frame) = scan_frame(&self.buf[at..self.filled]).map_err(BenchError::Scan)? {
            each(frame, frame.body(&self.buf[at..self.filled]))?;
            at += frame.total_len();
        }
        self.buf.copy_within(at..self.filled, 0);
        self.filled -= at;
        if self.filled == self.buf.len() {
            // A frame larger than the buffer: grow to hold it, within the frame limit.
            let needed = match scan_header(&self.buf[..self.filled]).map_err(BenchError::Scan)? {
                Some((header_len, remaining_len)) => header_len + remaining_len,
                None => self.buf.len() + 5,
            };
            if needed > FRAME_MAX {
                return Err(BenchError::Broker(format!(
                    "broker sent a {needed}-byte frame (limit {FRAME_MAX})"
                )));
            }
            self.buf
                .resize(needed.max(self.buf.len() * 2).min(FRAME_MAX), 0);
        }
        Ok(())
    }
}

/// A subscriber's instructions.
pub struct SubscriberPlan {
    /// Granted QoS is read from each PUBLISH; this only selects the read of 5.0 properties.
    pub protocol: ProtocolVersion,
    /// Record the latency of each message from the timestamp at the front of its payload.
    pub latency: bool,
    pub epoch: std::time::Instant,
    /// Messages received so far by all subscribers of the run (added once per read).
    pub received: Arc<AtomicU64>,
    pub stop: watch::Receiver<bool>,
    /// Keep the sequence number of each message (bytes 8..16 of its payload), so the run can
    /// tell a message delivered twice from two messages.
    pub sequences: bool,
}

#[derive(Debug, Default)]
pub struct SubscriberResult {
    pub received: u64,
    pub latency: Option<Histogram>,
    /// The sequence numbers received, in arrival order (when `SubscriberPlan::sequences`).
    pub sequences: Vec<u64>,
}

pub async fn subscriber(
    session: Session,
    mut plan: SubscriberPlan,
) -> Result<SubscriberResult, BenchError> {
    let Session {
        mut stream,
        leftover,
    } = session;
    let (mut reader, mut writer) = stream.split();
    let layered = writer.layered();
    let mut flushing = false;
    let v5 = plan.protocol == ProtocolVersion::V5;
    let mut input = ReadBuffer::new(leftover);
    let mut acks: Vec<u8> = Vec::with_capacity(2 * ACK_BACKLOG_BYTES);
    let mut acks_offset = 0usize;
    let mut received: u64 = 0;
    let mut histogram = plan.latency.then(Histogram::new);
    let mut sequences: Vec<u64> = Vec::new();
    // Already-buffered bytes (sent right after SUBACK) are processed before the first read.
    let mut pending_input = input.filled > 0;

    loop {
        let can_read = acks.len() - acks_offset < ACK_BACKLOG_BYTES;
        let n = if pending_input {
            pending_input = false;
            Some(0)
        } else {
            tokio::select! {
                biased;
                _ = plan.stop.changed() => break,
                // TLS or WebSocket may hold written bytes until flushed.
                result = write_or_flush(&mut writer, &acks[acks_offset..]), if acks_offset < acks.len() || flushing => {
                    let n = result.map_err(write_error)?;
                    acks_offset += n;
                    flushing = layered && n > 0;
                    if acks_offset == acks.len() {
                        acks.clear();
                        acks_offset = 0;
                    }
                    None
                }
                result = reader.read(input.spare()), if can_read => {
                    let n = result.map_err(|e| BenchError::Io {
                        context: "reading deliveries".into(),
                        source: e,
                    })?;
                    if n == 0 {
                        return Err(BenchError::Broker(
                            "broker closed a subscriber's connection".into(),
                        ));
                    }
                    Some(n)
                }
            }
        };
        let Some(n) = n else { continue };
        input.filled += n;
        let now_ns = plan.epoch.elapsed().as_nanos() as u64;
        let mut batch: u64 = 0;
        input.consume(|frame, body| {
            match frame.packet_type() {
                scan::PUBLISH => {
                    batch += 1;
                    if frame.first_byte & 0b0110 == 0 && histogram.is_none() && !plan.sequences {
                        // QoS 0 and no latency: counting is all there is to do.
                        return Ok(());
                    }
                    let view =
                        scan::publish_view(frame.first_byte, body, v5).map_err(BenchError::Scan)?;
                    match (view.qos, view.packet_id) {
                        (1, Some(id)) => push_ack(scan::PUBACK, id, &mut acks),
                        (2, Some(id)) => push_ack(scan::PUBREC, id, &mut acks),
                        _ => {}
                    }
                    if let Some(histogram) = histogram.as_mut() {
                        if let Some(stamp) = view.payload.get(..8) {
                            let mut sent = [0u8; 8];
                            sent.copy_from_slice(stamp);
                            histogram.record(now_ns.saturating_sub(u64::from_le_bytes(sent)));
                        }
                    }
                    if plan.sequences {
                        if let Some(sequence) = view.payload.get(8..16) {
                            let mut bytes = [0u8; 8];
                            bytes.copy_from_slice(sequence);
                            sequences.push(u64::from_le_bytes(bytes));
                        }
                    }
                }
                scan::PUBREL => {
                    let id = scan::ack_packet_id(body, "PUBREL")?;
                    push_ack(scan::PUBCOMP, id, &mut acks);
                }
                scan::DISCONNECT => {
                    return Err(BenchError::Broker(format!(
                        "broker sent DISCONNECT to a subscriber (reason {:?})",
                        body.first()
                    )));
                }
                _ => {}
            }
            Ok(())
        })?;
        if batch > 0 {
            received += batch;
            plan.received.fetch_add(batch, Ordering::Relaxed);
        }
    }
    let finish = async {
        writer.write_all(&acks[acks_offset..]).await?;
        writer.write_all(&DISCONNECT).await?;
        writer.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), finish).await;
    Ok(SubscriberResult {
        received,
        latency: histogram,
        sequences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_allocates_unique_ids_and_wraps() {
        let mut window = Window::new();
        assert_eq!(window.allocate(), 1);
        assert_eq!(window.allocate(), 2);
        assert!(window.release(1));
        assert!(!window.release(1), "a second ack for one id is not counted");
        assert!(!window.release(0));
        assert_eq!(window.len(), 1);
        // Walk to the end of the id space: id 2 is still in flight, so the wrap skips it.
        window.next = u16::MAX;
        assert_eq!(window.allocate(), u16::MAX);
        assert_eq!(window.allocate(), 1);
        assert_eq!(window.allocate(), 3);
        assert_eq!(window.len(), 4);
    }

    #[test]
    fn read_buffer_keeps_partial_frames_and_grows() {
        let mut input = ReadBuffer::new(vec![0x40, 0x02, 0x00]); // PUBACK, one byte short
        let mut seen = Vec::new();
        input
            .consume(|frame, body| {
                seen.push((frame.packet_type(), body.to_vec()));
                Ok(())
            })
            .unwrap();
        assert!(seen.is_empty());
        assert_eq!(input.filled, 3);
        input.spare()[0] = 0x05; // the missing byte
        input.filled += 1;
        input
            .consume(|frame, body| {
                seen.push((frame.packet_type(), body.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![(scan::PUBACK, vec![0x00, 0x05])]);
        assert_eq!(input.filled, 0);

        // A frame bigger than the buffer: fill it with the frame's start, the buffer grows.
        let mut input = ReadBuffer::new(Vec::new());
        let capacity = input.spare().len();
        let mut header = vec![0x30]; // PUBLISH QoS 0
        scan::write_varint(capacity * 2, &mut header);
        let spare = input.spare();
        spare[..header.len()].copy_from_slice(&header);
        input.filled = capacity;
        input.consume(|_, _| Ok(())).unwrap();
        assert!(input.spare().len() >= capacity + header.len());
    }
}
