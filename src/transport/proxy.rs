//! The TCP fault proxy: real tokio sockets between a client host and a broker under test, so
//! the certify runner can do to a third-party broker's connections what the simulator does to
//! turmoil links. One `FaultProxy` per client host; its `ProxyControl` is shared with the
//! runner's nemesis.
//!
//! Faults, each applying at once to every open connection and to every new one:
//! - **reset**: every open connection is closed with `SO_LINGER 0`, so both peers get an RST
//!   (a crash of the path: neither side sees an orderly FIN);
//! - **blackhole** (both ways or one way): bytes that way are read and discarded, and chunks
//!   already queued that way (latency) are lost too; TCP stays up, so each peer sees silence,
//!   which is what a partition looks like through TCP. A FIN read while blackholed is held and
//!   passed on after `heal` (TCP would retransmit it), but the bytes are gone: a healed MQTT
//!   stream has lost the middle of its byte stream, and a peer will usually fail to parse
//!   it, which is what a real peer would see after such a loss too.
//!   A connection accepted while both ways are blackholed is accepted (the kernel completes
//!   the handshake) but the upstream is not dialled until the blackhole lifts; the client's
//!   bytes meanwhile are swallowed;
//! - **stall**: nothing is read or delivered either way; the sockets' buffers fill and the
//!   senders block (loss as TCP shows it). `unstall` resumes without losing a byte. A
//!   connection accepted while stalled is not dialled upstream until the stall ends. What
//!   waits at a stall is peeked at (not read) once per stall and counted
//!   (`ProxyControl::held_bytes`), so certify can tell a stall that met traffic;
//! - **latency**: each chunk is delivered `latency + U[0, jitter]` after it was read, and never
//!   before the chunk read ahead of it (order is kept per direction);
//! - `heal` ends blackhole, stall and latency (chunks already delayed are delivered at once;
//!   lowering the latency likewise caps the wait of chunks already queued).
//!
//! Blackhole is the lossy partition (a healed stream has a hole in it); stall is the lossless
//! one (TCP's retransmission, as the endpoints see it). Bytes a blackhole discards are counted
//! (`ProxyControl::discarded_bytes`), so certify can tell a partition that met traffic. Without faults the proxy passes
//! everything on, FIN included (a half-close stays a half-close); an error on one socket resets
//! the other, and an upstream that refuses the dial gets the client closed.
//!
//! Memory is bounded: each direction holds at most `IN_FLIGHT_BYTES_MAX` of delayed bytes and
//! stops reading (back-pressure to the sender) when it is full; blackholed bytes are dropped as
//! they are read.
//!
//! Each connection is one task with one `select!` loop over both directions rather than two
//! tasks: a reset must close both sockets together with `SO_LINGER 0`, and a single owner of
//! both sockets does that without sharing them behind locks; the directions stay independent
//! because every loop iteration polls the read and the write of both directions at once, and a
//! handler never waits (a blocked write in one direction never holds up the other).
//!
//! The proxy reads the wall clock through `tokio::time` and draws jitter from a seeded RNG; it
//! is a real-network tool (certify, `simqtt proxy`), never used inside the simulator.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// Most bytes one direction of one connection holds between reading and delivering them
/// (latency queue plus a partly written chunk). Past it the proxy stops reading that way, so
/// the sender's socket buffer fills and TCP pushes back. 256 KiB covers 50 ms of latency at
/// ~40 Mbit/s per connection, far beyond what a certification scenario sends.
pub const IN_FLIGHT_BYTES_MAX: usize = 256 * 1024;
/// Bytes asked for per read; one read becomes one delayed chunk.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bound on dialling the upstream (loopback answers at once; a remote `--upstream` may not).
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Which directions a blackhole swallows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blackhole {
    Both,
    ClientToBroker,
    BrokerToClient,
}

/// The fault state every connection follows. A snapshot is `ProxyControl::faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Client-to-broker bytes are discarded.
    pub blackhole_client_to_broker: bool,
    /// Broker-to-client bytes are discarded.
    pub blackhole_broker_to_client: bool,
    pub stalled: bool,
    pub latency: Duration,
    pub jitter: Duration,
    /// Bumped by every `reset`; a connection opened under an older value is reset.
    reset_epoch: u64,
    /// Set when the `FaultProxy` is dropped: every connection closes.
    closed: bool,
}

impl Faults {
    fn blackholed(&self, direction: Way) -> bool {
        match direction {
            Way::ClientToBroker => self.blackhole_client_to_broker,
            Way::BrokerToClient => self.blackhole_broker_to_client,
        }
    }

    /// No upstream connection is dialled while the path can carry nothing from the client.
    fn path_down(&self) -> bool {
        self.stalled || (self.blackhole_client_to_broker && self.blackhole_broker_to_client)
    }
}

/// Fault switches shared between the proxy's connections and whoever injects faults. Every
/// method is plain (not async) and may be called from any task or thread.
#[derive(Debug)]
pub struct ProxyControl {
    faults: watch::Sender<Faults>,
    connections: Arc<AtomicUsize>,
    buffered_bytes: Arc<AtomicUsize>,
    /// Bytes a blackhole discarded, client to broker and broker to client.
    discarded: Arc<[AtomicU64; 2]>,
    /// Bytes found waiting at a stall (seen without being read), each way.
    held: Arc<[AtomicU64; 2]>,
}

impl ProxyControl {
    fn new() -> ProxyControl {
        ProxyControl {
            faults: watch::Sender::new(Faults::default()),
            connections: Arc::new(AtomicUsize::new(0)),
            buffered_bytes: Arc::new(AtomicUsize::new(0)),
            discarded: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
            held: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        }
    }

    /// Bytes found waiting to cross while a stall held them: (client to broker, broker to
    /// client), counted once per stall and connection (a peek at what waits, nothing read).
    /// A stall (certify's loss) met traffic when this grew while it was on.
    pub fn held_bytes(&self) -> (u64, u64) {
        (
            self.held[0].load(Ordering::SeqCst),
            self.held[1].load(Ordering::SeqCst),
        )
    }

    /// Bytes blackholes have discarded so far: (client to broker, broker to client). A
    /// partition took effect when this grew while it was on.
    pub fn discarded_bytes(&self) -> (u64, u64) {
        (
            self.discarded[0].load(Ordering::SeqCst),
            self.discarded[1].load(Ordering::SeqCst),
        )
    }

    /// Resets every open connection now: both peers get an RST, as when the path crashes.
    /// Connections accepted after this call are not affected. The sockets close within a
    /// scheduler turn; `connections()` drops to 0 then.
    pub fn reset(&self) {
        self.faults.send_modify(|f| f.reset_epoch += 1);
    }

    /// Sets which directions are blackholed (replacing an earlier blackhole): their bytes are
    /// read and discarded while TCP stays up.
    pub fn blackhole(&self, blackhole: Blackhole) {
        let (client_to_broker, broker_to_client) = match blackhole {
            Blackhole::Both => (true, true),
            Blackhole::ClientToBroker => (true, false),
            Blackhole::BrokerToClient => (false, true),
        };
        self.faults.send_modify(|f| {
            f.blackhole_client_to_broker = client_to_broker;
            f.blackhole_broker_to_client = broker_to_client;
        });
    }

    /// Stops reading and delivering both ways; nothing is lost.
    pub fn stall(&self) {
        self.faults.send_modify(|f| f.stalled = true);
    }

    /// Resumes after `stall`, delivering everything held.
    pub fn unstall(&self) {
        self.faults.send_modify(|f| f.stalled = false);
    }

    /// Each chunk read from now on is delivered `latency + U[0, jitter]` after it was read,
    /// never before the chunk read ahead of it. Lowering it also shortens the wait of chunks
    /// already held to at most the new `latency + jitter` from now.
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        self.faults.send_modify(|f| {
            f.latency = latency;
            f.jitter = jitter;
        });
    }

    /// Ends blackhole, stall and latency; bytes held by latency are delivered now (in order).
    pub fn heal(&self) {
        self.faults.send_modify(|f| {
            f.blackhole_client_to_broker = false;
            f.blackhole_broker_to_client = false;
            f.stalled = false;
            f.latency = Duration::ZERO;
            f.jitter = Duration::ZERO;
        });
    }

    /// Open proxied connections (accepted from a client and not yet closed, including those
    /// waiting for the path to come up before dialling the upstream).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Bytes read and not yet delivered, over all connections and both directions (at most
    /// `IN_FLIGHT_BYTES_MAX` per direction of each connection).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes.load(Ordering::SeqCst)
    }

    /// The current fault switches.
    pub fn faults(&self) -> Faults {
        *self.faults.borrow()
    }

    fn close(&self) {
        self.faults.send_modify(|f| f.closed = true);
    }
}

/// A running proxy. Dropping it stops accepting and closes every connection it carries.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: Arc<ProxyControl>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Binds 127.0.0.1:0 and forwards every accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        FaultProxy::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), upstream, 0).await
    }

    /// Binds `listen` and forwards to `upstream`; `seed` seeds the jitter draws.
    pub async fn bind(
        listen: SocketAddr,
        upstream: SocketAddr,
        seed: u64,
    ) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(ProxyControl::new());
        let accept_task = tokio::spawn(accept_loop(listener, upstream, control.clone(), seed));
        Ok(FaultProxy {
            addr,
            upstream,
            control,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn control(&self) -> Arc<ProxyControl> {
        self.control.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.control.close();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    control: Arc<ProxyControl>,
    seed: u64,
) {
    let mut accepted: u64 = 0;
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "proxy accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        accepted += 1;
        // Counted from here, and released by the guard's drop wherever the task ends (even
        // if it is aborted before it first runs).
        control.connections.fetch_add(1, Ordering::SeqCst);
        let guard = CountGuard(control.connections.clone());
        let changes = control.faults.subscribe();
        let epoch = changes.borrow().reset_epoch;
        let switches = Switches {
            epoch,
            latest: changes.clone(),
            changes,
        };
        let rng_seed = seed ^ accepted.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let buffered = control.buffered_bytes.clone();
        let counts = Counts {
            discarded: control.discarded.clone(),
            held: control.held.clone(),
        };
        tokio::spawn(async move {
            let _guard = guard;
            match proxy_connection(client, upstream, switches, rng_seed, buffered, counts).await {
                End::UpstreamUnreachable(error) => {
                    tracing::warn!(%peer, %upstream, %error, "proxy cannot reach the upstream; client closed")
                }
                End::Failed(error) => {
                    tracing::debug!(%peer, %error, "proxied connection failed; other side reset")
                }
                end => tracing::debug!(%peer, ?end, "proxied connection ended"),
            }
        });
    }
}

struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    ClientToBroker,
    BrokerToClient,
}

/// Why a proxied connection ended.
#[derive(Debug)]
enum End {
    /// Both directions finished with a FIN each way.
    Finished,
    /// `reset()`; both sockets were closed with RST.
    Reset,
    /// The proxy was dropped.
    Closed,
    /// The upstream refused or timed out; the client is closed.
    UpstreamUnreachable(io::Error),
    /// A socket failed; the other side was reset to pass the failure on.
    Failed(io::Error),
}

/// One chunk of bytes waiting for its delivery time.
struct Chunk {
    due: Instant,
    bytes: Bytes,
}

/// One direction's state: the delayed chunks, the read buffer and the FIN bookkeeping.
struct Flow {
    way: Way,
    queue: VecDeque<Chunk>,
    queued_bytes: usize,
    /// The proxy-wide total of `queued_bytes` (`ProxyControl::buffered_bytes`).
    buffered_total: Arc<AtomicUsize>,
    /// The proxy-wide counts of bytes discarded and held, per way.
    counts: Counts,
    /// What waits at the current stall was counted.
    held_seen: bool,
    read_buf: Box<[u8]>,
    /// The source sent FIN.
    source_done: bool,
    /// The FIN was passed on (`shutdown` of the destination's write side).
    finished: bool,
    /// Due time of the last chunk queued, so jitter never reorders.
    last_due: Instant,
    rng: ChaCha8Rng,
}

impl Flow {
    fn new(way: Way, seed: u64, buffered_total: Arc<AtomicUsize>, counts: Counts) -> Flow {
        Flow {
            way,
            queue: VecDeque::new(),
            queued_bytes: 0,
            buffered_total,
            counts,
            held_seen: false,
            read_buf: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            source_done: false,
            finished: false,
            last_due: Instant::now(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn can_read(&self, faults: &Faults) -> bool {
        // One read may add a whole buffer, so reading stops a buffer short of the cap.
        !self.source_done
            && !faults.stalled
            && self.queued_bytes + READ_CHUNK_BYTES <= IN_FLIGHT_BYTES_MAX
    }

    fn can_deliver(&self, faults: &Faults) -> bool {
        !faults.stalled && !faults.blackholed(self.way) && !self.queue.is_empty()
    }

    /// Time to pass the FIN on: everything read was delivered and the path is up.
    fn should_finish(&self, faults: &Faults) -> bool {
        self.source_done
            && !self.finished
            && self.queue.is_empty()
            && !faults.stalled
            && !faults.blackholed(self.way)
    }

    /// The first `n` bytes of the read buffer are new: queue them with their due time, or
    /// drop them when this direction is blackholed.
    fn take_read(&mut self, n: usize, faults: &Faults) {
        if faults.blackholed(self.way) {
            self.count_discarded(n);
            return;
        }
        let jitter = if faults.jitter.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(faults.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.random_range(0..=nanos))
        };
        let due = (Instant::now() + faults.latency + jitter).max(self.last_due);
        self.last_due = due;
        self.queued_bytes += n;
        self.buffered_total.fetch_add(n, Ordering::SeqCst);
        self.queue.push_back(Chunk {
            due,
            bytes: Bytes::copy_from_slice(&self.read_buf[..n]),
        });
    }

    /// `n` bytes of the front chunk were written.
    fn delivered(&mut self, n: usize) {
        if let Some(front) = self.queue.front_mut() {
            let n = n.min(front.bytes.len());
            front.bytes.advance(n);
            self.queued_bytes -= n;
            self.buffered_total.fetch_sub(n, Ordering::SeqCst);
            if front.bytes.is_empty() {
                self.queue.pop_front();
            }
        }
    }

    /// Latency was lowered (or healed): no queued chunk waits past `latest`, the due time of
    /// the slowest chunk read now, so a heal does not leave old delays behind. Clamping a
    /// non-decreasing sequence keeps it non-decreasing, so order holds.
    fn hurry(&mut self, latest: Instant) {
        for chunk in &mut self.queue {
            chunk.due = chunk.due.min(latest);
        }
        self.last_due = self.last_due.min(latest);
    }

    fn way_index(&self) -> usize {
        match self.way {
            Way::ClientToBroker => 0,
            Way::BrokerToClient => 1,
        }
    }

    fn count_discarded(&self, n: usize) {
        self.counts.discarded[self.way_index()].fetch_add(n as u64, Ordering::SeqCst);
    }

    /// Whether to look (once per stall) at what waits to be read.
    fn should_peek(&self, faults: &Faults) -> bool {
        faults.stalled && !self.held_seen && !self.source_done
    }

    /// A peek at a stall found `n` bytes waiting.
    fn held(&mut self, n: usize) {
        self.held_seen = true;
        self.counts.held[self.way_index()].fetch_add(n as u64, Ordering::SeqCst);
    }

    /// A blackhole began: what was on its way is lost.
    fn blackholed_queue(&mut self) {
        self.count_discarded(self.queued_bytes);
        self.drop_queued();
    }

    /// A blackhole began (what was on its way is lost) or the connection ended.
    fn drop_queued(&mut self) {
        self.queue.clear();
        self.buffered_total
            .fetch_sub(self.queued_bytes, Ordering::SeqCst);
        self.queued_bytes = 0;
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.drop_queued();
    }
}

/// The proxy-wide counters a connection adds to.
#[derive(Clone)]
struct Counts {
    discarded: Arc<[AtomicU64; 2]>,
    held: Arc<[AtomicU64; 2]>,
}

/// What a read branch got.
enum Got {
    Read(usize),
    /// Bytes seen waiting at a stall (peeked, not read).
    Held(usize),
}

/// At a stall (`peek`), looks at what waits without reading it; otherwise `read_when`.
async fn read_or_peek(
    allowed: bool,
    peek: bool,
    latest: &watch::Receiver<Faults>,
    source: &mut ReadHalf<'_>,
    buf: &mut [u8],
) -> io::Result<Got> {
    if peek {
        return source.peek(buf).await.map(Got::Held);
    }
    read_when(allowed, latest, source, buf).await.map(Got::Read)
}

/// Reads into `buf` when allowed; otherwise never completes (the branch stays quiet).
/// `latest` is checked besides the loop's snapshot: a `stall()` made since the snapshot was
/// taken (the loop learns of it on its next turn) already stops this read.
async fn read_when(
    allowed: bool,
    latest: &watch::Receiver<Faults>,
    source: &mut ReadHalf<'_>,
    buf: &mut [u8],
) -> io::Result<usize> {
    if !allowed || latest.borrow().stalled {
        return std::future::pending().await;
    }
    source.read(buf).await
}

/// Writes (part of) the front chunk once it is due; `write` is cancel safe, so a fault change
/// that drops this future loses nothing. The latest fault state is checked right before the
/// write, so no chunk moves after the call that stalls or blackholes its direction returned.
async fn deliver_when(
    allowed: bool,
    latest: &watch::Receiver<Faults>,
    way: Way,
    destination: &mut WriteHalf<'_>,
    front: Option<&Chunk>,
) -> io::Result<usize> {
    let front = match front {
        Some(front) if allowed => front,
        _ => return std::future::pending().await,
    };
    // A due chunk goes without touching the timer: tokio rounds a deadline up to the next
    // millisecond tick, which cost every chunk ~1 ms with no latency set.
    if front.due > Instant::now() {
        sleep_until(front.due).await;
    }
    let faults = *latest.borrow();
    if faults.stalled || faults.blackholed(way) {
        return std::future::pending().await;
    }
    match destination.write(&front.bytes).await {
        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
        other => other,
    }
}

/// The connection's view of the fault switches: `changes` wakes the loop, `latest` is read
/// inside the I/O futures and handlers to act on the newest state.
struct Switches {
    changes: watch::Receiver<Faults>,
    latest: watch::Receiver<Faults>,
    epoch: u64,
}

impl Switches {
    /// The newest state, or how the connection must end under it.
    fn current(&mut self) -> Result<Faults, End> {
        let now = *self.changes.borrow_and_update();
        if now.closed {
            Err(End::Closed)
        } else if now.reset_epoch != self.epoch {
            Err(End::Reset)
        } else {
            Ok(now)
        }
    }

    fn latest(&self) -> Faults {
        *self.latest.borrow()
    }
}

/// Waits until the path is up for dialling (not stalled, not blackholed both ways), draining
/// and discarding the client's bytes while blackholed.
async fn wait_for_path(
    client: &mut TcpStream,
    switches: &mut Switches,
    c2b: &mut Flow,
) -> Result<(), End> {
    loop {
        let now = switches.current()?;
        if !now.path_down() {
            return Ok(());
        }
        let (mut reader, _) = client.split();
        let can_read = c2b.can_read(&now);
        tokio::select! {
            changed = switches.changes.changed() => {
                if changed.is_err() {
                    return Err(End::Closed);
                }
            }
            read = read_when(can_read, &switches.latest, &mut reader, &mut c2b.read_buf) => {
                match read {
                    Ok(0) => c2b.source_done = true,
                    Ok(n) => c2b.take_read(n, &switches.latest()),
                    Err(error) => return Err(End::Failed(error)),
                }
            }
        }
    }
}

async fn dial(upstream: SocketAddr, switches: &mut Switches) -> Result<TcpStream, End> {
    let connect = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream));
    tokio::pin!(connect);
    loop {
        tokio::select! {
            result = &mut connect => {
                return match result {
                    Ok(Ok(stream)) => Ok(stream),
                    Ok(Err(error)) => Err(End::UpstreamUnreachable(error)),
                    Err(_) => Err(End::UpstreamUnreachable(io::ErrorKind::TimedOut.into())),
                };
            }
            changed = switches.changes.changed() => {
                if changed.is_err() {
                    return Err(End::Closed);
                }
                switches.current()?;
            }
        }
    }
}

async fn proxy_connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut switches: Switches,
    seed: u64,
    buffered_total: Arc<AtomicUsize>,
    counts: Counts,
) -> End {
    // Latency is what this proxy is for; Nagle would add its own on top.
    let _ = client.set_nodelay(true);
    let mut c2b = Flow::new(
        Way::ClientToBroker,
        seed,
        buffered_total.clone(),
        counts.clone(),
    );
    let mut b2c = Flow::new(
        Way::BrokerToClient,
        seed.rotate_left(1) ^ 1,
        buffered_total,
        counts,
    );

    let dialled = match wait_for_path(&mut client, &mut switches, &mut c2b).await {
        Ok(()) => dial(upstream, &mut switches).await,
        Err(end) => Err(end),
    };
    let mut broker = match dialled {
        Ok(stream) => stream,
        Err(end) => return close(client, None, end),
    };
    let _ = broker.set_nodelay(true);

    let end = pump(&mut client, &mut broker, &mut switches, &mut c2b, &mut b2c).await;
    close(client, Some(broker), end)
}

/// Moves bytes both ways under the current faults until both directions finished or the
/// connection must end.
async fn pump(
    client: &mut TcpStream,
    broker: &mut TcpStream,
    switches: &mut Switches,
    c2b: &mut Flow,
    b2c: &mut Flow,
) -> End {
    let (mut client_reader, mut client_writer) = client.split();
    let (mut broker_reader, mut broker_writer) = broker.split();
    let mut was = Faults::default();
    loop {
        let now = match switches.current() {
            Ok(now) => now,
            Err(end) => return end,
        };
        let slowest = now.latency + now.jitter;
        for flow in [&mut *c2b, &mut *b2c] {
            if now.blackholed(flow.way) && !was.blackholed(flow.way) {
                flow.blackholed_queue();
            }
            if !now.stalled {
                flow.held_seen = false;
            }
            if slowest < was.latency + was.jitter {
                flow.hurry(Instant::now() + slowest);
            }
        }
        was = now;

        // FINs are passed on outside the select: shutting down a TCP write half completes at
        // once, so it never holds up the other direction.
        if c2b.should_finish(&now) {
            if let Err(error) = broker_writer.shutdown().await {
                return End::Failed(error);
            }
            c2b.finished = true;
        }
        if b2c.should_finish(&now) {
            if let Err(error) = client_writer.shutdown().await {
                return End::Failed(error);
            }
            b2c.finished = true;
        }
        if c2b.finished && b2c.finished {
            return End::Finished;
        }

        let c2b_read = c2b.can_read(&now);
        let c2b_peek = c2b.should_peek(&now);
        let c2b_deliver = c2b.can_deliver(&now);
        let b2c_read = b2c.can_read(&now);
        let b2c_peek = b2c.should_peek(&now);
        let b2c_deliver = b2c.can_deliver(&now);
        let latest = &switches.latest;
        tokio::select! {
            changed = switches.changes.changed() => {
                if changed.is_err() {
                    return End::Closed;
                }
            }
            read = read_or_peek(c2b_read, c2b_peek, latest, &mut client_reader, &mut c2b.read_buf) => {
                match read {
                    Ok(Got::Held(n)) => c2b.held(n),
                    Ok(Got::Read(0)) => c2b.source_done = true,
                    Ok(Got::Read(n)) => c2b.take_read(n, &switches.latest()),
                    Err(error) => return End::Failed(error),
                }
            }
            read = read_or_peek(b2c_read, b2c_peek, latest, &mut broker_reader, &mut b2c.read_buf) => {
                match read {
                    Ok(Got::Held(n)) => b2c.held(n),
                    Ok(Got::Read(0)) => b2c.source_done = true,
                    Ok(Got::Read(n)) => b2c.take_read(n, &switches.latest()),
                    Err(error) => return End::Failed(error),
                }
            }
            written = deliver_when(
                c2b_deliver, latest, Way::ClientToBroker, &mut broker_writer, c2b.queue.front(),
            ) => match written {
                Ok(n) => c2b.delivered(n),
                Err(error) => return End::Failed(error),
            },
            written = deliver_when(
                b2c_deliver, latest, Way::BrokerToClient, &mut client_writer, b2c.queue.front(),
            ) => match written {
                Ok(n) => b2c.delivered(n),
                Err(error) => return End::Failed(error),
            },
        }
    }
}

/// Closes both sockets the way `end` calls for: RST (linger 0) for a reset or a failure, so
/// the peer learns the path broke; an orderly close otherwise.
fn close(client: TcpStream, broker: Option<TcpStream>, end: End) -> End {
    let abortive = matches!(end, End::Reset | End::Failed(_));
    for stream in std::iter::once(client).chain(broker) {
        if abortive {
            let _ = stream.set_zero_linger();
        }
        drop(stream);
    }
    end
}
