//! One body, two backends (STYLE.md #11): the scenario step executor in `sim` (`Runner`) drives
//! a [`Backend`] for everything that is not MQTT: time, the hosts, link faults, the broker's
//! life. [`Turmoil`] is the deterministic simulated world; the certify runner's TCP backend
//! (`certify::runner`) drives a real broker through fault proxies with a real clock. Both build
//! the same client hosts (`world::client_host_main`), so the clients, the trace they write and
//! the checkers that read it are the same code in both.
//!
//! Endpoints are host names: the broker's host (`scenario.broker.host`) or a client host.

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::world::{self, lock, HostCommand, SharedRef};
use super::Knobs;
use crate::transport::fault::FaultControl;

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
    fn crash_broker(&mut self, power_loss: bool) -> Result<(), String>;
    /// The broker comes back after `crash_broker`.
    fn restart_broker(&mut self) -> Result<(), String>;
    /// Ends `client`'s connection from the broker side, its session kept (a takeover or the
    /// broker's admin kick); the client reconnects on its own.
    fn kick(&mut self, client: &str, client_id: &str) -> Result<(), String>;
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

    fn crash_broker(&mut self, power_loss: bool) -> Result<(), String> {
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
        Ok(())
    }

    fn restart_broker(&mut self) -> Result<(), String> {
        if self.broker_partitioned {
            for host in &self.client_hosts {
                self.sim.repair(self.broker_host.as_str(), host.as_str());
            }
            self.broker_partitioned = false;
        }
        self.sim.bounce(self.broker_host.as_str());
        Ok(())
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
