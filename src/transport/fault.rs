//! The per-connection fault layer: a stream wrapper that lets the nemesis hit one client
//! session while many share a turmoil host (a link fault would hit them all).
//!
//! It sits on the client side of each connection, so it sees both directions of exactly one
//! session's traffic: `Outbound` bytes are what the client writes, `Inbound` what it reads.
//! Faults:
//! - **reset**: the current connection fails at once with `ConnectionReset` both ways (the
//!   client drops it, so the broker sees the TCP stream close);
//! - **stall**: the current connection stops moving bytes both ways without closing, a
//!   half-open connection that only keepalive can catch; a later connection is unaffected;
//! - **delay**: every packet is held for a while before it moves on (both ways), a slow path
//!   that TCP would survive;
//! - **drop / duplicate** the next packet of one type in one direction (on whichever
//!   connection carries it). The layer frames packets itself from the MQTT fixed header, so it
//!   needs no codec and never reorders bytes within a packet.
//!
//! Everything is driven by `tokio::time` (virtual under turmoil) and a mutex that is never
//! contended (a simulation is single-threaded); no randomness lives here.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{BoxFuture, BoxStream, Connector};

/// Which way a packet travels, seen from the wrapped side.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Written by the wrapped side (for a client: client to broker).
    Outbound,
    /// Read by the wrapped side (for a client: broker to client).
    Inbound,
}

/// Bytes the layer holds in each direction before it pushes back on the writer.
const BUFFERED_BYTES_MAX: usize = 1 << 20;
/// Bytes read from the inner stream per poll.
const READ_CHUNK: usize = 16 * 1024;

/// Flags of one connection.
#[derive(Default)]
struct ConnFlags {
    reset: bool,
    stalled: bool,
    /// The stream was dropped (the connection is over): nothing left to reset or stall.
    closed: bool,
    /// Tasks parked on a stall, woken when it ends.
    wakers: Vec<Waker>,
}

#[derive(Default)]
struct ControlState {
    /// The latest connection: reset and stall hit it.
    current: Option<Arc<Mutex<ConnFlags>>>,
    delay: Duration,
    /// Pending "drop the next packet of type T in direction D" rules (type = fixed-header
    /// nibble), each with its id, consumed one per matching packet.
    drop: Vec<(u64, Direction, u8)>,
    duplicate: Vec<(u64, Direction, u8)>,
    /// Ids handed out so far; the rules that met their packet.
    rules: u64,
    fired: BTreeSet<u64>,
}

/// What the layer did so far, for confirming that a fault took effect (every count only
/// grows). Bytes are counted where they meet the inner stream, so they are what really
/// crossed the connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Bytes written to the inner stream (the wrapped side's sends).
    pub outbound_bytes: u64,
    /// Bytes read from the inner stream.
    pub inbound_bytes: u64,
    /// Packets held back by a `delay` (released later than they arrived).
    pub delayed_packets: u64,
}

/// The nemesis' handle on one client session's connections.
#[derive(Default)]
pub struct FaultControl {
    state: Mutex<ControlState>,
    outbound_bytes: AtomicU64,
    inbound_bytes: AtomicU64,
    delayed_packets: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would already have failed the simulation; the data is
    // plain flags, valid either way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultControl {
    pub fn new() -> Arc<FaultControl> {
        Arc::new(FaultControl::default())
    }

    /// Resets the current connection. False when there is none (or it is already over).
    pub fn reset(&self) -> bool {
        let state = lock(&self.state);
        let Some(flags) = &state.current else {
            return false;
        };
        let mut f = lock(flags);
        if f.closed {
            return false;
        }
        f.reset = true;
        for w in f.wakers.drain(..) {
            w.wake();
        }
        true
    }

    /// Stalls the current connection until `unstall` (or until the client gives it up).
    /// False when there is none (or it is already over): nothing was stalled.
    pub fn stall(&self) -> bool {
        let state = lock(&self.state);
        let Some(flags) = &state.current else {
            return false;
        };
        let mut f = lock(flags);
        if f.closed {
            return false;
        }
        f.stalled = true;
        true
    }

    /// Whether the latest connection is still open (its stream not yet dropped).
    pub fn connection_open(&self) -> bool {
        let state = lock(&self.state);
        state.current.as_ref().is_some_and(|f| !lock(f).closed)
    }

    /// What the layer has done so far.
    pub fn counters(&self) -> FaultCounters {
        FaultCounters {
            outbound_bytes: self.outbound_bytes.load(Ordering::Relaxed),
            inbound_bytes: self.inbound_bytes.load(Ordering::Relaxed),
            delayed_packets: self.delayed_packets.load(Ordering::Relaxed),
        }
    }

    /// Whether the drop or duplicate rule `id` met its packet.
    pub fn rule_fired(&self, id: u64) -> bool {
        lock(&self.state).fired.contains(&id)
    }

    /// Ends a stall of the current connection.
    pub fn unstall(&self) {
        let state = lock(&self.state);
        if let Some(flags) = &state.current {
            let mut f = lock(flags);
            f.stalled = false;
            for w in f.wakers.drain(..) {
                w.wake();
            }
        }
    }

    /// Holds every packet for `delay` (zero ends it).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// Drops the next packet of `packet_type` (fixed-header type, 1..=15) going `direction`.
    /// Returns the rule's id for [`FaultControl::rule_fired`].
    pub fn drop_next(&self, direction: Direction, packet_type: u8) -> u64 {
        let mut state = lock(&self.state);
        state.rules += 1;
        let id = state.rules;
        state.drop.push((id, direction, packet_type));
        id
    }

    /// Sends the next packet of `packet_type` going `direction` twice. Returns the rule's id.
    pub fn duplicate_next(&self, direction: Direction, packet_type: u8) -> u64 {
        let mut state = lock(&self.state);
        state.rules += 1;
        let id = state.rules;
        state.duplicate.push((id, direction, packet_type));
        id
    }

    /// Clears every fault (the quiet phase before judging a run).
    pub fn heal(&self) {
        self.unstall();
        let mut state = lock(&self.state);
        state.delay = Duration::ZERO;
        state.drop.clear();
        state.duplicate.clear();
    }

    /// Wraps a new connection of this session.
    pub fn wrap(self: &Arc<Self>, inner: BoxStream) -> FaultStream {
        self.wrap_with(inner, None)
    }

    /// Wraps a new connection; `rewrite` replaces a byte pattern (same length) in the first
    /// outbound CONNECT. The runner uses it to number a will's payload per connection, which
    /// the client library fixes once per client instance.
    pub fn wrap_with(
        self: &Arc<Self>,
        inner: BoxStream,
        rewrite: Option<(Vec<u8>, Vec<u8>)>,
    ) -> FaultStream {
        let flags = Arc::new(Mutex::new(ConnFlags::default()));
        lock(&self.state).current = Some(flags.clone());
        FaultStream {
            inner,
            control: self.clone(),
            flags,
            read_raw: BytesMut::new(),
            read_queue: VecDeque::new(),
            read_eof: false,
            read_sleep: None,
            write_raw: BytesMut::new(),
            write_queue: VecDeque::new(),
            write_queued_bytes: 0,
            write_sleep: None,
            rewrite,
        }
    }

    /// What to do with one packet: how many copies to pass (0, 1 or 2) and its release time.
    fn route(&self, direction: Direction, header: u8) -> (usize, Instant) {
        let packet_type = header >> 4;
        let mut state = lock(&self.state);
        let release = Instant::now() + state.delay;
        if !state.delay.is_zero() {
            self.delayed_packets.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(i) = state
            .drop
            .iter()
            .position(|&(_, d, t)| d == direction && t == packet_type)
        {
            let (id, ..) = state.drop.remove(i);
            state.fired.insert(id);
            return (0, release);
        }
        // A duplicate models a retransmission, which MQTT makes only at QoS 1 and 2: a QoS 0
        // PUBLISH (QoS bits 0) is never sent twice, so the rule waits for one that can be.
        let qos0_publish = packet_type == 3 && header & 0b0110 == 0;
        if let Some(i) = state
            .duplicate
            .iter()
            .position(|&(_, d, t)| d == direction && t == packet_type && !qos0_publish)
        {
            let (id, ..) = state.duplicate.remove(i);
            state.fired.insert(id);
            return (2, release);
        }
        (1, release)
    }
}

/// Length of the first complete MQTT packet in `buf`, `Ok(None)` if incomplete, `Err` if the
/// remaining length is malformed (then the bytes pass through unframed).
fn packet_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 1 + i + 1 + remaining;
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(())
}

/// Splits complete packets off `raw` and queues them as `route` says.
fn frame(
    raw: &mut BytesMut,
    queue: &mut VecDeque<(Instant, Bytes)>,
    control: &FaultControl,
    direction: Direction,
) -> usize {
    let mut queued = 0;
    loop {
        let len = match packet_len(raw) {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(()) => {
                // Not MQTT framing: pass what there is through untouched.
                let all = raw.split().freeze();
                queued += all.len();
                queue.push_back((Instant::now(), all));
                break;
            }
        };
        let packet = raw.split_to(len).freeze();
        let (copies, release) = control.route(direction, packet[0]);
        for _ in 0..copies {
            queued += packet.len();
            queue.push_back((release, packet.clone()));
        }
    }
    queued
}

/// A connection under the fault layer.
pub struct FaultStream {
    inner: BoxStream,
    control: Arc<FaultControl>,
    flags: Arc<Mutex<ConnFlags>>,
    read_raw: BytesMut,
    read_queue: VecDeque<(Instant, Bytes)>,
    read_eof: bool,
    read_sleep: Option<Pin<Box<Sleep>>>,
    write_raw: BytesMut,
    write_queue: VecDeque<(Instant, Bytes)>,
    write_queued_bytes: usize,
    write_sleep: Option<Pin<Box<Sleep>>>,
    rewrite: Option<(Vec<u8>, Vec<u8>)>,
}

/// Tasks parked on one connection: its reader and its writer, so a handful at most.
const PARKED_TASKS_MAX: usize = 8;

fn park(flags: &mut ConnFlags, cx: &mut Context<'_>) {
    if flags.wakers.iter().any(|w| w.will_wake(cx.waker())) {
        return;
    }
    if flags.wakers.len() >= PARKED_TASKS_MAX {
        flags.wakers.remove(0);
    }
    flags.wakers.push(cx.waker().clone());
}

/// Replaces the first occurrence of `pattern` in `packet` by `replacement` (same length).
fn rewrite_packet(packet: &[u8], pattern: &[u8], replacement: &[u8]) -> Option<Bytes> {
    if pattern.is_empty() || pattern.len() != replacement.len() {
        return None;
    }
    let at = packet.windows(pattern.len()).position(|w| w == pattern)?;
    let mut out = packet.to_vec();
    out[at..at + pattern.len()].copy_from_slice(replacement);
    Some(Bytes::from(out))
}

impl FaultStream {
    /// `Some(result)` when a fault decides the poll.
    fn faulted(&self, cx: &mut Context<'_>) -> Option<Poll<io::Error>> {
        let mut flags = lock(&self.flags);
        if flags.reset {
            return Some(Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset by the fault layer",
            )));
        }
        if flags.stalled {
            park(&mut flags, cx);
            return Some(Poll::Pending);
        }
        None
    }

    /// Returns `Pending`, remembering the task so a reset or the end of a stall wakes it even
    /// while it waits on the inner stream.
    fn pending<T>(&self, cx: &mut Context<'_>) -> Poll<T> {
        park(&mut lock(&self.flags), cx);
        Poll::Pending
    }

    /// Waits for the release time of the head of a queue.
    fn wait_release(
        sleep: &mut Option<Pin<Box<Sleep>>>,
        release: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if release <= Instant::now() {
            *sleep = None;
            return Poll::Ready(());
        }
        let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(release)));
        if s.deadline() != release {
            s.as_mut().reset(release);
        }
        match s.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *sleep = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes queued outbound packets whose time has come. Ready when the queue is empty.
    fn drain_writes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((release, _)) = self.write_queue.front() {
            let release = *release;
            if Self::wait_release(&mut self.write_sleep, release, cx).is_pending() {
                return Poll::Pending;
            }
            let Some((_, bytes)) = self.write_queue.front_mut() else {
                break;
            };
            match Pin::new(&mut self.inner).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    bytes.advance(n);
                    self.control
                        .outbound_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    self.write_queued_bytes = self.write_queued_bytes.saturating_sub(n);
                    if bytes.is_empty() {
                        self.write_queue.pop_front();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

use std::future::Future;

impl Drop for FaultStream {
    fn drop(&mut self) {
        // The connection is over: a later reset or stall finds nothing to act on.
        lock(&self.flags).closed = true;
    }
}

impl AsyncRead for FaultStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(p) = this.faulted(cx) {
            return p.map(Err);
        }
        loop {
            if let Some((release, _)) = this.read_queue.front() {
                let release = *release;
                if Self::wait_release(&mut this.read_sleep, release, cx).is_pending() {
                    return this.pending(cx);
                }
                if let Some((_, bytes)) = this.read_queue.front_mut() {
                    let n = bytes.len().min(buf.remaining());
                    buf.put_slice(&bytes[..n]);
                    bytes.advance(n);
                    if bytes.is_empty() {
                        this.read_queue.pop_front();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Ready(Ok(())) => {
                    let filled = chunk_buf.filled();
                    if filled.is_empty() {
                        this.read_eof = true;
                        // A partial packet at EOF passes through for the reader to judge.
                        if !this.read_raw.is_empty() {
                            let rest = this.read_raw.split().freeze();
                            this.read_queue.push_back((Instant::now(), rest));
                        }
                    } else {
                        this.control
                            .inbound_bytes
                            .fetch_add(filled.len() as u64, Ordering::Relaxed);
                        this.read_raw.extend_from_slice(filled);
                        frame(
                            &mut this.read_raw,
                            &mut this.read_queue,
                            &this.control,
                            Direction::Inbound,
                        );
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.pending(cx),
            }
        }
    }
}

impl AsyncWrite for FaultStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(p) = this.faulted(cx) {
            return p.map(Err);
        }
        if this.write_queued_bytes + this.write_raw.len() >= BUFFERED_BYTES_MAX {
            match this.drain_writes(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {
                    if this.write_queued_bytes + this.write_raw.len() >= BUFFERED_BYTES_MAX {
                        return this.pending(cx);
                    }
                }
            }
        }
        this.write_raw.extend_from_slice(buf);
        let first_new = this.write_queue.len();
        this.write_queued_bytes += frame(
            &mut this.write_raw,
            &mut this.write_queue,
            &this.control,
            Direction::Outbound,
        );
        if let Some((pattern, replacement)) = &this.rewrite {
            let mut done = false;
            for (_, packet) in this.write_queue.iter_mut().skip(first_new) {
                if packet.first().map(|b| b >> 4) == Some(1) {
                    if let Some(new) = rewrite_packet(packet, pattern, replacement) {
                        *packet = new;
                    }
                    done = true;
                    break;
                }
            }
            if done {
                this.rewrite = None;
            }
        }
        // Move what may move now; the rest goes at flush.
        if let Poll::Ready(Err(e)) = this.drain_writes(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(p) = this.faulted(cx) {
            return p.map(Err);
        }
        match this.drain_writes(cx) {
            Poll::Ready(Ok(())) => match Pin::new(&mut this.inner).poll_flush(cx) {
                Poll::Pending => this.pending(cx),
                ready => ready,
            },
            Poll::Pending => this.pending(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(p) = this.faulted(cx) {
            return p.map(Err);
        }
        match this.drain_writes(cx) {
            Poll::Ready(Ok(())) => match Pin::new(&mut this.inner).poll_shutdown(cx) {
                Poll::Pending => this.pending(cx),
                ready => ready,
            },
            Poll::Pending => this.pending(cx),
            other => other,
        }
    }
}

/// A connector that wraps every connection of one session in its fault layer and tells the
/// runner when a TCP connection is up (the client writes CONNECT right after).
pub struct FaultConnector {
    pub inner: Arc<dyn Connector>,
    pub control: Arc<FaultControl>,
    /// Called with the outcome of each connection attempt; for a connection it returns the
    /// CONNECT rewrite to apply (see `FaultControl::wrap_with`).
    #[allow(clippy::type_complexity)]
    pub on_connect: Box<dyn Fn(Result<(), String>) -> Option<(Vec<u8>, Vec<u8>)> + Send + Sync>,
}

impl Connector for FaultConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            match self.inner.connect(addr).await {
                Ok(stream) => {
                    let rewrite = (self.on_connect)(Ok(()));
                    Ok(Box::new(self.control.wrap_with(stream, rewrite)) as BoxStream)
                }
                Err(e) => {
                    let _ = (self.on_connect)(Err(e.to_string()));
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_lengths_from_the_fixed_header() {
        assert_eq!(packet_len(&[]), Ok(None));
        assert_eq!(packet_len(&[0xC0]), Ok(None)); // PINGREQ, length missing
        assert_eq!(packet_len(&[0xC0, 0x00]), Ok(Some(2))); // PINGREQ
        assert_eq!(packet_len(&[0x40, 0x02, 0x00]), Ok(None)); // PUBACK, body incomplete
        assert_eq!(packet_len(&[0x40, 0x02, 0x00, 0x01, 0xff]), Ok(Some(4)));
        // Remaining length 128 takes two bytes (0x80 0x01).
        let mut long = vec![0x30, 0x80, 0x01];
        long.extend(std::iter::repeat_n(0u8, 128));
        assert_eq!(packet_len(&long), Ok(Some(131)));
        assert_eq!(packet_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(()));
    }

    #[test]
    fn rewrite_replaces_one_occurrence_of_the_same_length() {
        let packet = b"\x10\x05w-a-~".to_vec();
        let out = rewrite_packet(&packet, b"w-a-~", b"w-a-7").unwrap();
        assert_eq!(&out[..], b"\x10\x05w-a-7");
        assert!(rewrite_packet(&packet, b"zz", b"yy").is_none());
        assert!(rewrite_packet(&packet, b"w-a-~", b"w").is_none());
    }

    fn queue_types(queue: &VecDeque<(Instant, Bytes)>) -> Vec<u8> {
        queue.iter().map(|(_, b)| b[0] >> 4).collect()
    }

    #[tokio::test]
    async fn drop_and_duplicate_hit_the_next_matching_packet_once() {
        let control = FaultControl::new();
        control.drop_next(Direction::Inbound, 4); // PUBACK
        control.duplicate_next(Direction::Inbound, 3); // PUBLISH
        let mut raw = BytesMut::new();
        // PUBACK 1, PUBLISH "t" QoS 0 (never duplicated), PUBLISH QoS 1 id 7, PUBACK 2,
        // PUBLISH QoS 1 again.
        raw.extend_from_slice(&[0x40, 0x02, 0x00, 0x01]);
        raw.extend_from_slice(&[0x30, 0x03, 0x00, 0x01, b't']);
        raw.extend_from_slice(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x07]);
        raw.extend_from_slice(&[0x40, 0x02, 0x00, 0x02]);
        raw.extend_from_slice(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x08]);
        raw.extend_from_slice(&[0x40]); // a partial packet stays buffered
        let mut queue = VecDeque::new();
        frame(&mut raw, &mut queue, &control, Direction::Inbound);
        assert_eq!(queue_types(&queue), vec![3, 3, 3, 4, 3]);
        assert_eq!(&raw[..], &[0x40]);
        // Outbound rules are separate from inbound ones.
        control.drop_next(Direction::Outbound, 4);
        let mut raw = BytesMut::from(&[0x40, 0x02, 0x00, 0x03][..]);
        let mut queue = VecDeque::new();
        frame(&mut raw, &mut queue, &control, Direction::Inbound);
        assert_eq!(queue_types(&queue), vec![4]);
    }

    #[tokio::test]
    async fn reset_and_stall_hit_only_the_current_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let control = FaultControl::new();
        let (a, mut a_peer) = tokio::io::duplex(1024);
        let mut first = control.wrap(Box::new(a));
        a_peer.write_all(&[0xD0, 0x00]).await.unwrap(); // PINGRESP
        let mut buf = [0u8; 2];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [0xD0, 0x00]);
        assert!(control.stall());
        a_peer.write_all(&[0xD0, 0x00]).await.unwrap();
        let stalled =
            tokio::time::timeout(Duration::from_millis(50), first.read_exact(&mut buf)).await;
        assert!(stalled.is_err(), "a stalled connection moves no bytes");
        // A new connection is not stalled; resetting it leaves the first alone.
        let (b, mut b_peer) = tokio::io::duplex(1024);
        let mut second = control.wrap(Box::new(b));
        b_peer.write_all(&[0xD0, 0x00]).await.unwrap();
        second.read_exact(&mut buf).await.unwrap();
        assert!(control.reset());
        let err = second.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(second.write_all(&[0xC0, 0x00]).await.is_err());
    }

    #[tokio::test]
    async fn counters_and_rules_tell_what_took_effect() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let control = FaultControl::new();
        assert!(!control.connection_open());
        assert!(!control.reset(), "no connection: nothing to reset");
        let dropped = control.drop_next(Direction::Inbound, 4); // PUBACK
        let unmet = control.drop_next(Direction::Outbound, 10); // UNSUBSCRIBE, never sent
        let (a, mut peer) = tokio::io::duplex(1024);
        let mut stream = control.wrap(Box::new(a));
        assert!(control.connection_open());
        stream.write_all(&[0xC0, 0x00]).await.unwrap(); // PINGREQ
        stream.flush().await.unwrap();
        peer.write_all(&[0x40, 0x02, 0x00, 0x01, 0xD0, 0x00])
            .await
            .unwrap();
        let mut buf = [0u8; 2];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [0xD0, 0x00], "the PUBACK was dropped");
        assert!(control.rule_fired(dropped));
        assert!(!control.rule_fired(unmet));
        let c = control.counters();
        assert_eq!((c.outbound_bytes, c.inbound_bytes), (2, 6));
        assert_eq!(c.delayed_packets, 0);
        drop(stream);
        assert!(!control.connection_open());
        assert!(!control.stall(), "a closed connection cannot be stalled");
        assert!(!control.reset());
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_packets_for_the_delay() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let control = FaultControl::new();
        control.set_delay(Duration::from_millis(300));
        let (a, mut peer) = tokio::io::duplex(1024);
        let mut stream = control.wrap(Box::new(a));
        let start = Instant::now();
        stream.write_all(&[0xC0, 0x00]).await.unwrap();
        stream.flush().await.unwrap();
        assert!(Instant::now() - start >= Duration::from_millis(300));
        let mut buf = [0u8; 2];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [0xC0, 0x00]);
        assert_eq!(control.counters().delayed_packets, 1);
    }
}
