//! The per-connection fault layer: a stream wrapper, driven by a shared [`FaultHandle`], that
//! can reset a connection, stall it, delay it, or drop / duplicate the next packet of a chosen
//! type in either direction. Many client sessions share one simulated host, so link faults
//! (turmoil partitions) cannot single one out; this layer can.
//!
//! Design: [`FaultHandle::wrap`] hands back one end of an in-memory duplex pipe and spawns a
//! pump task on the current runtime that moves bytes between the other end and the real stream,
//! applying the faults. Writing the faults as an ordinary async loop (with `tokio::time`
//! sleeps, virtual under turmoil) keeps delay pipelined and the state simple; the price is one
//! task and one copy per connection, which the simulator can afford.
//!
//! Directions are seen from the wrapped side: [`Direction::Outbound`] is what its owner writes
//! (for a client: client → broker), [`Direction::Inbound`] what it reads.
//!
//! Packet boundaries come from the fixed header alone — type nibble and Remaining Length —
//! parsed incrementally, so a fault can hit a packet the codec would refuse. A Remaining Length
//! longer than four bytes (malformed) switches that direction to plain pass-through: the peer's
//! decoder is the one that should report it.
//!
//! What each fault looks like to the endpoints:
//! - **reset**: the pump drops both streams; the owner reads EOF and its writes fail, the peer
//!   sees the connection close (turmoil delivers a FIN; there is no RST to model).
//! - **stall**: no byte moves either way, nothing closes — what a segment lost to a partition
//!   does to turmoil's TCP, which does not retransmit. Keepalive has to notice.
//! - **delay**: every chunk is held for the delay before it moves on (order kept).
//! - **drop / duplicate**: the next packet of that type in that direction vanishes, or is sent
//!   twice back to back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{AsyncStream, BoxFuture, BoxStream, Connector};
use crate::codec::PacketType;

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

/// Bytes the in-memory pipe buffers per direction before the owner's writes wait.
pub const PIPE_CAPACITY_BYTES: usize = 64 * 1024;
/// Chunks queued between a direction's reader and its (possibly delayed) writer.
pub const CHUNKS_IN_FLIGHT_MAX: usize = 256;
/// Read size of the pump.
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// Armed packet rules at once (a scenario arms a handful).
pub const PACKET_RULES_MAX: usize = 64;
/// Performed actions kept until `take_log` (oldest dropped beyond this).
pub const LOG_MAX: usize = 1024;

/// What to do to a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketAction {
    Drop,
    Duplicate,
}

/// A fault the layer actually applied (for the trace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The connection number (1 for the first stream the handle wrapped).
    pub connection: u64,
    pub direction: Direction,
    pub packet_type: PacketType,
    pub action: PacketAction,
}

#[derive(Debug, Clone, Copy)]
struct PacketRule {
    direction: Direction,
    packet_type: PacketType,
    action: PacketAction,
}

#[derive(Debug, Default)]
struct State {
    /// Connections wrapped so far; the latest is the "current" one.
    connections: u64,
    /// Every connection numbered up to this one is reset.
    reset_through: u64,
    /// Stalled connections (numbers).
    stalled: Vec<u64>,
    delay: Duration,
    rules: VecDeque<PacketRule>,
    log: VecDeque<Applied>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

/// Controls the faults of the connections it wrapped. Cheap to clone; all clones share state.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl FaultHandle {
    pub fn new() -> FaultHandle {
        FaultHandle::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    fn changed(&self) {
        self.shared.changed.notify_waiters();
    }

    /// Wraps a stream; spawns its pump on the current tokio runtime (or turmoil host).
    pub fn wrap<S: AsyncStream>(&self, stream: S) -> BoxStream {
        let connection = {
            let mut state = self.state();
            state.connections += 1;
            state.connections
        };
        let (near, far) = tokio::io::duplex(PIPE_CAPACITY_BYTES);
        tokio::spawn(pump(stream, far, self.shared.clone(), connection));
        Box::new(near)
    }

    /// Resets the current connection.
    pub fn reset(&self) {
        {
            let mut state = self.state();
            state.reset_through = state.connections;
        }
        self.changed();
    }

    /// Stalls the current connection until [`FaultHandle::resume`] (or a reset).
    pub fn stall(&self) {
        {
            let mut state = self.state();
            let current = state.connections;
            if !state.stalled.contains(&current) {
                state.stalled.push(current);
            }
        }
        self.changed();
    }

    /// Ends every stall.
    pub fn resume(&self) {
        self.state().stalled.clear();
        self.changed();
    }

    /// Holds every chunk for `delay` before passing it on (zero ends the delay). Applies to
    /// chunks read from now on, on every connection of this handle.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
        self.changed();
    }

    /// Drops the next packet of `packet_type` going `direction`. Returns false when
    /// `PACKET_RULES_MAX` rules are already armed.
    pub fn drop_next(&self, direction: Direction, packet_type: PacketType) -> bool {
        self.arm(direction, packet_type, PacketAction::Drop)
    }

    /// Sends the next packet of `packet_type` going `direction` twice.
    pub fn duplicate_next(&self, direction: Direction, packet_type: PacketType) -> bool {
        self.arm(direction, packet_type, PacketAction::Duplicate)
    }

    fn arm(&self, direction: Direction, packet_type: PacketType, action: PacketAction) -> bool {
        let mut state = self.state();
        if state.rules.len() >= PACKET_RULES_MAX {
            return false;
        }
        state.rules.push_back(PacketRule {
            direction,
            packet_type,
            action,
        });
        true
    }

    /// Rules armed and not yet applied.
    pub fn armed(&self) -> usize {
        self.state().rules.len()
    }

    /// The packet faults applied since the last call, oldest first.
    pub fn take_log(&self) -> Vec<Applied> {
        self.state().log.drain(..).collect()
    }

    /// Wraps every stream a connector opens.
    pub fn connector<C: Connector>(&self, inner: C) -> FaultConnector<C> {
        FaultConnector {
            inner,
            handle: self.clone(),
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding this lock cannot leave the plain-data state inconsistent, so a
    // poisoned lock is still usable.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connector whose streams go through a fault handle.
pub struct FaultConnector<C> {
    inner: C,
    handle: FaultHandle,
}

impl<C: Connector> Connector for FaultConnector<C> {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, std::io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = self.inner.connect(addr).await?;
            Ok(self.handle.wrap(stream))
        })
    }
}

impl Shared {
    fn is_reset(&self, connection: u64) -> bool {
        lock(self).reset_through >= connection
    }

    fn is_stalled(&self, connection: u64) -> bool {
        let state = lock(self);
        state.stalled.contains(&connection) && state.reset_through < connection
    }

    fn delay(&self) -> Duration {
        lock(self).delay
    }

    /// Consumes the first armed rule for this packet, logging it.
    fn decide(
        &self,
        connection: u64,
        direction: Direction,
        packet_type: PacketType,
    ) -> Option<PacketAction> {
        let mut state = lock(self);
        let index = state
            .rules
            .iter()
            .position(|r| r.direction == direction && r.packet_type == packet_type)?;
        let rule = state.rules.remove(index)?;
        if state.log.len() >= LOG_MAX {
            state.log.pop_front();
        }
        state.log.push_back(Applied {
            connection,
            direction,
            packet_type,
            action: rule.action,
        });
        Some(rule.action)
    }

    /// Waits until `done()` holds, re-checking whenever the handle changes.
    async fn wait_until(&self, done: impl Fn() -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            notified.await;
        }
    }
}

async fn pump<S: AsyncStream>(
    stream: S,
    far: tokio::io::DuplexStream,
    shared: Arc<Shared>,
    connection: u64,
) {
    let (stream_read, stream_write) = tokio::io::split(stream);
    let (far_read, far_write) = tokio::io::split(far);
    let outbound = direction(
        far_read,
        stream_write,
        Direction::Outbound,
        &shared,
        connection,
    );
    let inbound = direction(
        stream_read,
        far_write,
        Direction::Inbound,
        &shared,
        connection,
    );
    // Biased: without tokio_unstable, turmoil cannot seed tokio's RNG, and an unbiased
    // select! would pick its first branch at random, breaking same-seed-same-trace.
    tokio::select! {
        biased;
        _ = shared.wait_until(|| shared.is_reset(connection)) => {}
        _ = async { tokio::join!(outbound, inbound) } => {}
    }
    // Returning drops both streams: the owner reads EOF, the peer sees the close.
}

async fn direction<R, W>(
    mut source: R,
    mut sink: W,
    direction: Direction,
    shared: &Shared,
    connection: u64,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(CHUNKS_IN_FLIGHT_MAX);
    let not_stalled = || !shared.is_stalled(connection);
    let reader = async {
        let mut framer = Framer::default();
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        loop {
            shared.wait_until(not_stalled).await;
            let n = match source.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let release = Instant::now() + shared.delay();
            let pieces = framer.feed(&buf[..n], |t| shared.decide(connection, direction, t));
            for piece in pieces {
                if tx.send((release, piece)).await.is_err() {
                    return;
                }
            }
        }
        drop(tx);
    };
    let writer = async {
        while let Some((release, bytes)) = rx.recv().await {
            tokio::time::sleep_until(release).await;
            shared.wait_until(not_stalled).await;
            if sink.write_all(&bytes).await.is_err() || sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.shutdown().await;
    };
    tokio::join!(reader, writer);
}

fn packet_type(first_byte: u8) -> Option<PacketType> {
    Some(match first_byte >> 4 {
        1 => PacketType::Connect,
        2 => PacketType::ConnAck,
        3 => PacketType::Publish,
        4 => PacketType::PubAck,
        5 => PacketType::PubRec,
        6 => PacketType::PubRel,
        7 => PacketType::PubComp,
        8 => PacketType::Subscribe,
        9 => PacketType::SubAck,
        10 => PacketType::Unsubscribe,
        11 => PacketType::UnsubAck,
        12 => PacketType::PingReq,
        13 => PacketType::PingResp,
        14 => PacketType::Disconnect,
        15 => PacketType::Auth,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Expecting the first byte of a packet.
    #[default]
    Header,
    /// Reading Remaining Length: value so far, bytes read.
    Length { value: u32, bytes: u8 },
    /// Body bytes left.
    Body { left: u32 },
    /// Framing lost (malformed length): pass everything through.
    PassThrough,
}

/// Finds packet boundaries from fixed headers, incrementally, and applies drop/duplicate.
#[derive(Debug, Default)]
struct Framer {
    phase: Phase,
    action: Option<PacketAction>,
    /// The current packet's bytes while they must be held (duplicate).
    held: BytesMut,
}

impl Framer {
    /// Feeds bytes; returns what to pass on, in order. `decide` is asked once per packet, at
    /// its first byte.
    fn feed(
        &mut self,
        mut input: &[u8],
        mut decide: impl FnMut(PacketType) -> Option<PacketAction>,
    ) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut pass = BytesMut::new();
        while !input.is_empty() {
            match self.phase {
                Phase::PassThrough => {
                    pass.extend_from_slice(input);
                    input = &[];
                }
                Phase::Header => {
                    let byte = input[0];
                    input = &input[1..];
                    self.action = packet_type(byte).and_then(&mut decide);
                    self.phase = Phase::Length { value: 0, bytes: 0 };
                    self.take(byte, &mut pass);
                }
                Phase::Length { value, bytes } => {
                    let byte = input[0];
                    input = &input[1..];
                    self.take(byte, &mut pass);
                    let value = value | (u32::from(byte & 0x7f) << (7 * u32::from(bytes)));
                    let bytes = bytes + 1;
                    if byte & 0x80 != 0 {
                        if bytes == 4 {
                            // A fifth length byte is malformed [MQTT-1.5.5-1 / 2.2.3].
                            self.abandon(&mut pass);
                        } else {
                            self.phase = Phase::Length { value, bytes };
                        }
                    } else if value == 0 {
                        self.finish(&mut pass, &mut out);
                    } else {
                        self.phase = Phase::Body { left: value };
                    }
                }
                Phase::Body { left } => {
                    let n = (left as usize).min(input.len());
                    let (body, rest) = input.split_at(n);
                    input = rest;
                    match self.action {
                        None => pass.extend_from_slice(body),
                        Some(PacketAction::Drop) => {}
                        Some(PacketAction::Duplicate) => self.held.extend_from_slice(body),
                    }
                    let left = left - n as u32;
                    if left == 0 {
                        self.finish(&mut pass, &mut out);
                    } else {
                        self.phase = Phase::Body { left };
                    }
                }
            }
        }
        if !pass.is_empty() {
            out.push(pass.freeze());
        }
        out
    }

    fn take(&mut self, byte: u8, pass: &mut BytesMut) {
        match self.action {
            None => pass.extend_from_slice(&[byte]),
            Some(PacketAction::Drop) => {}
            Some(PacketAction::Duplicate) => self.held.extend_from_slice(&[byte]),
        }
    }

    fn finish(&mut self, pass: &mut BytesMut, out: &mut Vec<Bytes>) {
        if self.action == Some(PacketAction::Duplicate) {
            let packet = self.held.split().freeze();
            pass.extend_from_slice(&packet);
            pass.extend_from_slice(&packet);
        }
        if !pass.is_empty() {
            out.push(pass.split().freeze());
        }
        self.action = None;
        self.phase = Phase::Header;
    }

    fn abandon(&mut self, pass: &mut BytesMut) {
        // Whatever was held or dropped of this packet is released as it was.
        if self.action == Some(PacketAction::Duplicate) {
            pass.extend_from_slice(&self.held.split());
        }
        self.action = None;
        self.phase = Phase::PassThrough;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    const PINGREQ: [u8; 2] = [0xC0, 0x00];
    const PUBACK_1: [u8; 4] = [
        0x40, // PUBACK
        0x02, // remaining length 2
        0x00, 0x01, // packet id 1
    ];
    const PUBACK_2: [u8; 4] = [0x40, 0x02, 0x00, 0x02];

    /// A QoS 0 PUBLISH with a 200-byte body (two-byte Remaining Length).
    fn big_publish() -> Vec<u8> {
        let mut p = vec![
            0x30, // PUBLISH, QoS 0
            0xC8, 0x01, // remaining length 200
            0x00, 0x01, b't', // topic "t"
        ];
        p.extend(std::iter::repeat_n(b'x', 200 - 3));
        p
    }

    fn pair(handle: &FaultHandle) -> (BoxStream, DuplexStream) {
        let (local, remote) = tokio::io::duplex(4096);
        (handle.wrap(local), remote)
    }

    async fn read_exact(stream: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .expect("bytes arrive")
            .expect("read");
        buf
    }

    async fn nothing_arrives(stream: &mut (impl AsyncRead + Unpin), within: Duration) {
        let mut byte = [0u8; 1];
        let got = tokio::time::timeout(within, stream.read(&mut byte)).await;
        assert!(got.is_err(), "expected silence, got {got:?}");
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_untouched() {
        let handle = FaultHandle::new();
        let (mut local, mut remote) = pair(&handle);
        local.write_all(&big_publish()).await.unwrap();
        local.flush().await.unwrap();
        assert_eq!(read_exact(&mut remote, 203).await, big_publish());
        remote.write_all(&PUBACK_1).await.unwrap();
        assert_eq!(read_exact(&mut local, 4).await, PUBACK_1);
    }

    #[tokio::test]
    async fn drops_only_the_next_packet_of_the_type_even_when_split_bytewise() {
        let handle = FaultHandle::new();
        assert!(handle.drop_next(Direction::Outbound, PacketType::PubAck));
        let (mut local, mut remote) = pair(&handle);
        let stream: Vec<u8> = [&PINGREQ[..], &PUBACK_1, &PUBACK_2].concat();
        for byte in stream {
            local.write_all(&[byte]).await.unwrap();
            local.flush().await.unwrap();
        }
        assert_eq!(
            read_exact(&mut remote, 6).await,
            [&PINGREQ[..], &PUBACK_2].concat()
        );
        nothing_arrives(&mut remote, Duration::from_millis(50)).await;
        assert_eq!(
            handle.take_log(),
            vec![Applied {
                connection: 1,
                direction: Direction::Outbound,
                packet_type: PacketType::PubAck,
                action: PacketAction::Drop
            }]
        );
        assert_eq!(handle.armed(), 0);
    }

    #[tokio::test]
    async fn duplicates_an_inbound_packet_with_a_long_length() {
        let handle = FaultHandle::new();
        handle.duplicate_next(Direction::Inbound, PacketType::Publish);
        let (mut local, mut remote) = pair(&handle);
        let publish = big_publish();
        remote.write_all(&publish[..2]).await.unwrap();
        remote.write_all(&publish[2..50]).await.unwrap();
        remote.write_all(&publish[50..]).await.unwrap();
        remote.write_all(&PINGREQ).await.unwrap();
        let got = read_exact(&mut local, 2 * publish.len() + 2).await;
        assert_eq!(got, [&publish[..], &publish, &PINGREQ].concat());
        // Outbound PUBLISHes are not affected by an inbound rule.
        handle.duplicate_next(Direction::Inbound, PacketType::Publish);
        local.write_all(&publish).await.unwrap();
        assert_eq!(read_exact(&mut remote, publish.len()).await, publish);
        nothing_arrives(&mut remote, Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn stall_stops_both_ways_without_closing_and_resume_releases() {
        let handle = FaultHandle::new();
        let (mut local, mut remote) = pair(&handle);
        handle.stall();
        local.write_all(&PINGREQ).await.unwrap();
        remote.write_all(&PUBACK_1).await.unwrap();
        nothing_arrives(&mut remote, Duration::from_millis(50)).await;
        nothing_arrives(&mut local, Duration::from_millis(50)).await;
        handle.resume();
        assert_eq!(read_exact(&mut remote, 2).await, PINGREQ);
        assert_eq!(read_exact(&mut local, 4).await, PUBACK_1);
    }

    #[tokio::test]
    async fn reset_closes_both_ends() {
        let handle = FaultHandle::new();
        let (mut local, mut remote) = pair(&handle);
        handle.reset();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), local.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "owner reads EOF");
        let n = tokio::time::timeout(Duration::from_secs(5), remote.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "peer sees the close");
        // The next connection of the same handle is healthy.
        let (mut local, mut remote) = pair(&handle);
        local.write_all(&PINGREQ).await.unwrap();
        assert_eq!(read_exact(&mut remote, 2).await, PINGREQ);
    }

    #[tokio::test]
    async fn stall_targets_only_the_current_connection() {
        let handle = FaultHandle::new();
        let (mut first, mut first_remote) = pair(&handle);
        handle.stall();
        let (mut second, mut second_remote) = pair(&handle);
        first.write_all(&PINGREQ).await.unwrap();
        second.write_all(&PINGREQ).await.unwrap();
        assert_eq!(read_exact(&mut second_remote, 2).await, PINGREQ);
        nothing_arrives(&mut first_remote, Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn delay_holds_bytes_back_in_order() {
        let handle = FaultHandle::new();
        handle.set_delay(Duration::from_millis(150));
        let (mut local, mut remote) = pair(&handle);
        let start = Instant::now();
        local.write_all(&PUBACK_1).await.unwrap();
        local.write_all(&PUBACK_2).await.unwrap();
        assert_eq!(
            read_exact(&mut remote, 8).await,
            [PUBACK_1, PUBACK_2].concat()
        );
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_connector_wraps_what_it_opens() {
        struct Pipe(Mutex<Option<DuplexStream>>);
        impl Connector for Pipe {
            fn connect<'a>(&'a self, _: &'a str) -> BoxFuture<'a, std::io::Result<BoxStream>> {
                let stream = self.0.lock().unwrap().take();
                Box::pin(async move { Ok(Box::new(stream.expect("one connection")) as BoxStream) })
            }
        }
        let (local, mut remote) = tokio::io::duplex(1024);
        let handle = FaultHandle::new();
        handle.drop_next(Direction::Outbound, PacketType::PingReq);
        let connector = handle.connector(Pipe(Mutex::new(Some(local))));
        let mut stream = connector.connect("broker:1883").await.unwrap();
        stream
            .write_all(&[&PINGREQ[..], &PUBACK_1].concat())
            .await
            .unwrap();
        assert_eq!(read_exact(&mut remote, 4).await, PUBACK_1);
    }

    #[test]
    fn framer_handles_zero_length_and_malformed_lengths() {
        let mut f = Framer::default();
        let out = f.feed(&[0xE0, 0x00, 0xC0, 0x00], |t| {
            (t == PacketType::Disconnect).then_some(PacketAction::Drop)
        });
        assert_eq!(out.concat(), vec![0xC0, 0x00]);
        let mut f = Framer::default();
        let bad = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x02];
        let out = f.feed(&bad, |_| None);
        assert_eq!(out.concat(), bad.to_vec());
        assert_eq!(f.phase, Phase::PassThrough);
        // Duplicating a packet whose length turns out malformed releases it once, untouched.
        let mut f = Framer::default();
        let out = f.feed(&bad, |_| Some(PacketAction::Duplicate));
        assert_eq!(out.concat(), bad.to_vec());
    }
}
