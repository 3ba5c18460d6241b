//! One body, two backends (STYLE.md #11): the scenario step executor in `sim` (`Runner`) drives
//! a [`Backend`] for everything that is not MQTT: time, the hosts, link faults, the broker's
//! life. [`Turmoil`] is the deterministic simulated world; the certify runner's TCP backend
//! (`certify::runner`) drives a real broker through fault proxies with a real clock. Both build
//! the same client hosts (`world::client_host_main`), so the clients, the trace they write and
//! the checkers that read it are the same code in both.
//!
//! Endpoints are host names: the broker's host (`scenario.broker.host`) or a client host.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::world::{self, lock, HostCommand, SharedRef};
use super::{Confirmation, Knobs};
use crate::transport::fault::FaultControl;
use crate::transport::{BoxFuture, BoxStream, Listener};

/// What a backend can count on the link between a client host and the broker, to confirm
/// that a link fault met traffic (counts only grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCount {
    /// Bytes its partitions discarded (toward the broker, from it): the proof that a cut
    /// took effect, where the backend's cut is a program that can count.
    pub discarded: Option<(u64, u64)>,
    /// Bytes the broker wrote toward the host (into the link, whatever became of them).
    pub from_broker: Option<u64>,
    /// Bytes found waiting at a stalled link (toward the broker, from it): a lossless loss
    /// (certify's stall) met traffic.
    pub held: Option<(u64, u64)>,
}

/// What the step executor needs from a world.
pub trait Backend {
    /// Time since the run started (simulated, or real for a real broker).
    fn elapsed(&self) -> Duration;
    /// Advances the world by one tick.
    fn step(&mut self) -> Result<(), String>;
    /// Starts the broker (where the backend owns it) and the client hosts, whose sessions are
    /// already in the shared state. The caller steps once after, so hosts register.
    fn build(&mut self, client_hosts: &[String], durable: bool) -> Result<(), String>;
    /// Cuts the link between two endpoints (only `a → b` when `one_way`).
    fn partition(&mut self, a: &str, b: &str, one_way: bool);
    /// Ends a partition between two endpoints.
    fn repair(&mut self, a: &str, b: &str);
    /// Loses this fraction of what crosses the link (0 ends it).
    fn loss(&mut self, a: &str, b: &str, rate: f64);
    /// Delays what crosses the link by `latency` .. `latency + jitter`.
    fn latency(&mut self, a: &str, b: &str, latency: Duration, jitter: Duration);
    /// Puts the link's latency back to the world's default.
    fn reset_latency(&mut self, a: &str, b: &str);
    /// Ends every partition and loss between every pair of endpoints (not a broker crash).
    fn heal_links(&mut self);
    /// The broker dies; `power_loss`: before anything more leaves it (unsynced writes lost).
    /// The runner has recorded the fault and marked the connected sessions' pending cause.
    /// Returns whether the broker is known to have gone down (`Err(why)` when not).
    fn crash_broker(&mut self, power_loss: bool) -> Result<Confirmation, String>;
    /// The broker comes back after `crash_broker`. Returns whether it is known to answer
    /// again (the runner also waits for its `broker_started` record).
    fn restart_broker(&mut self) -> Result<Confirmation, String>;
    /// Ends `client`'s connection from the broker side, its session kept (a takeover or the
    /// broker's admin kick); the client reconnects on its own. The runner confirms the kick
    /// by the connection's end.
    fn kick(&mut self, client: &str, client_id: &str) -> Result<(), String>;
    /// What the backend can count on the link between client host `host` and the broker
    /// (the runner adds what the host's clients wrote and read).
    fn link_count(&mut self, host: &str) -> LinkCount {
        let _ = host;
        LinkCount::default()
    }
    /// Whether time costs real time here: the quiet period's wait for busy publishers then
    /// also ends once the run has been silent long enough that nothing more can come (see
    /// `Runner::quiesce`). A simulation waits the full limit (its time is free, and its
    /// traces stay as they were).
    fn real_time(&self) -> bool {
        false
    }
    /// Called after each explicit step (`index`, 0-based); an error ends the run (the
    /// certify runner stops a case whose broker stopped answering).
    fn after_step(&mut self, index: usize) -> Result<(), String> {
        let _ = index;
        Ok(())
    }
}

/// The turmoil world: the simqtt broker on its own host, client hosts, turmoil links.
pub struct Turmoil<'a> {
    sim: turmoil::Sim<'a>,
    shared: SharedRef,
    broker_host: String,
    client_hosts: Vec<String>,
    /// A power loss partitioned the broker from every client host until it restarts.
    broker_partitioned: bool,
}

impl<'a> Turmoil<'a> {
    pub fn new(sim: turmoil::Sim<'a>, shared: SharedRef, broker_host: String) -> Turmoil<'a> {
        Turmoil {
            sim,
            shared,
            broker_host,
            client_hosts: Vec::new(),
            broker_partitioned: false,
        }
    }
}

impl Backend for Turmoil<'_> {
    fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    fn step(&mut self) -> Result<(), String> {
        self.sim
            .step()
            .map(|_| ())
            .map_err(|e| format!("a host failed: {e}"))
    }

    fn build(&mut self, client_hosts: &[String], durable: bool) -> Result<(), String> {
        world::broker_host(
            &mut self.sim,
            &self.broker_host.clone(),
            self.shared.clone(),
            durable,
        );
        for host in client_hosts {
            world::client_host(&mut self.sim, host, self.shared.clone());
        }
        self.client_hosts = client_hosts.to_vec();
        Ok(())
    }

    fn partition(&mut self, a: &str, b: &str, one_way: bool) {
        if one_way {
            self.sim.partition_oneway(a, b);
        } else {
            self.sim.partition(a, b);
        }
    }

    fn repair(&mut self, a: &str, b: &str) {
        self.sim.repair(a, b);
    }

    fn loss(&mut self, a: &str, b: &str, rate: f64) {
        self.sim.set_link_fail_rate(a, b, rate);
    }

    fn latency(&mut self, a: &str, b: &str, latency: Duration, jitter: Duration) {
        self.sim.set_link_latency(a, b, latency);
        self.sim
            .set_link_max_message_latency(a, b, latency + jitter);
    }

    fn reset_latency(&mut self, a: &str, b: &str) {
        let k = Knobs::from_rng(&mut ChaCha8Rng::seed_from_u64(lock(&self.shared).seed));
        self.sim
            .set_link_latency(a, b, Duration::from_millis(k.min_latency_ms));
        self.sim
            .set_link_max_message_latency(a, b, Duration::from_millis(k.max_latency_ms));
    }

    fn heal_links(&mut self) {
        let mut endpoints = vec![self.broker_host.clone()];
        endpoints.extend(self.client_hosts.clone());
        for (i, a) in endpoints.iter().enumerate() {
            for b in &endpoints[i + 1..] {
                self.sim.repair(a.as_str(), b.as_str());
                self.sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
            }
        }
        self.broker_partitioned = false;
    }

    fn crash_broker(&mut self, power_loss: bool) -> Result<Confirmation, String> {
        // Cut the broker off before it dies. Dropping a crashed host's runtime drops its tasks
        // in an order set by tokio's process-wide task ids, so the FINs its sockets would send
        // come out in an order that differs between runs in one process (and between `run`
        // and `replay`). Dropped by the partition, they leave no trace; the peers' view of a
        // crash is then made below in client-name order.
        for host in &self.client_hosts {
            self.sim.partition(self.broker_host.as_str(), host.as_str());
        }
        self.sim.crash(self.broker_host.as_str());
        if power_loss {
            // The power goes before anything can leave: peers see no FIN, only silence that
            // their keepalive must notice. (turmoil drops unsynced writes on every crash; with
            // the durable broker syncing each write, the two crashes differ on the wire.)
            self.broker_partitioned = true;
        } else {
            // A process crash: the kernel closes its sockets, so every peer sees its
            // connection close at once.
            for host in &self.client_hosts {
                self.sim.repair(self.broker_host.as_str(), host.as_str());
            }
            let controls: Vec<Arc<FaultControl>> = lock(&self.shared)
                .sessions
                .values()
                .filter(|s| s.connected || s.attempt_open)
                .map(|s| s.control.clone())
                .collect();
            for control in controls {
                control.reset();
            }
        }
        let broker = self.broker_host.clone();
        Ok(if self.sim.is_host_running(broker.as_str()) {
            Err("the simulated broker host is still running".into())
        } else {
            Ok(())
        })
    }

    fn restart_broker(&mut self) -> Result<Confirmation, String> {
        if self.broker_partitioned {
            for host in &self.client_hosts {
                self.sim.repair(self.broker_host.as_str(), host.as_str());
            }
            self.broker_partitioned = false;
        }
        self.sim.bounce(self.broker_host.as_str());
        let broker = self.broker_host.clone();
        Ok(if self.sim.is_host_running(broker.as_str()) {
            Ok(())
        } else {
            Err("the simulated broker host did not start".into())
        })
    }

    fn link_count(&mut self, host: &str) -> LinkCount {
        let ip = self.sim.lookup(host).to_string();
        LinkCount {
            discarded: None,
            from_broker: Some(
                lock(&self.shared)
                    .broker_sent
                    .get(&ip)
                    .copied()
                    .unwrap_or(0),
            ),
            held: None,
        }
    }

    fn kick(&mut self, client: &str, client_id: &str) -> Result<(), String> {
        // The broker's admin handle closes the connection; a client host runs the call.
        world::send(
            &self.shared,
            client,
            HostCommand::Kick {
                client_id: client_id.to_string(),
            },
        )
    }
}

/// The simulated broker's listener, counting what the broker writes to each peer (by IP) into
/// `Shared::broker_sent`: in the simulator a cut or lossy link loses what enters it, so bytes
/// the broker wrote toward a host while its link was cut are bytes the cut took.
pub struct CountingListener<L: Listener> {
    pub inner: L,
    pub shared: SharedRef,
}

impl<L: Listener> Listener for CountingListener<L> {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            let ip = peer
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| peer.clone());
            let counted = CountingStream {
                inner: stream,
                shared: self.shared.clone(),
                tally: Tally::FromBroker(ip),
            };
            Ok((Box::new(counted) as BoxStream, peer))
        })
    }

    fn local_addr(&self) -> String {
        self.inner.local_addr()
    }
}

struct CountingStream {
    inner: BoxStream,
    shared: SharedRef,
    tally: Tally,
}

/// Where a counted stream's writes are added up.
enum Tally {
    /// `Shared::broker_sent`, by the peer's IP.
    FromBroker(String),
    /// `Shared::client_sent`, by the client host's name.
    ToBroker(String),
}

impl CountingStream {
    fn add(&self, n: usize) {
        let mut s = lock(&self.shared);
        let (map, key) = match &self.tally {
            Tally::FromBroker(ip) => (&mut s.broker_sent, ip),
            Tally::ToBroker(host) => (&mut s.client_sent, host),
        };
        *map.entry(key.clone()).or_insert(0) += n as u64;
    }
}

/// A client session's connector when the run speaks TLS and/or WebSocket: simulated TCP,
/// counted where the bytes enter the link (below TLS, so a cut that meets only a handshake
/// is seen to meet traffic), then the endpoint's handshakes.
pub struct UpgradingConnector {
    pub endpoint: crate::transport::url::Endpoint,
    pub shared: SharedRef,
    /// The client host the connections start from.
    pub host: String,
}

impl crate::transport::Connector for UpgradingConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let tcp = turmoil::net::TcpStream::connect(addr).await?;
            let counted = CountingStream {
                inner: Box::new(tcp),
                shared: self.shared.clone(),
                tally: Tally::ToBroker(self.host.clone()),
            };
            self.endpoint.upgrade(Box::new(counted)).await
        })
    }
}

impl tokio::io::AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.add(*n);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &result {
            this.add(*n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
