//! A broker that breaks on purpose, for the liveness guard's tests: the simqtt broker in this
//! process (in memory) behind a front that forwards every connection and watches what clients
//! send. Given bytes make it **crash** (every connection reset, the port closed until the
//! restart command) or **degrade** (new connections accepted and closed at once, old ones
//! kept). With `ignore_takeovers`, a CONNECT with the client id of a live connection is
//! answered by the front and never reaches the broker, so a takeover (certify's kick) does
//! nothing. The restart command (`restart_cmd`) asks the front to come back: every connection
//! is dropped and the port answers again, the broker's sessions kept.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use simqtt::broker::{Broker, BrokerConfig};
use simqtt::codec::{self, Packet, ProtocolVersion};
use simqtt::store::MemoryStore;

/// What breaks the fake.
#[derive(Debug, Clone, Default)]
pub struct Breaks {
    pub crash_on: Option<Vec<u8>>,
    pub degrade_on: Option<Vec<u8>>,
    pub ignore_takeovers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Crashed,
    Degraded,
}

struct State {
    mode: Mode,
    /// Client ids of live connections (how many each).
    live: BTreeMap<String, usize>,
    crashes: usize,
    degradations: usize,
}

pub struct Fake {
    pub port: u16,
    dir: tempfile::TempDir,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const RESTART_FILE: &str = "restart";

impl Fake {
    pub fn start(breaks: Breaks) -> Fake {
        let dir = tempfile::tempdir().expect("temp dir");
        let restart_file = dir.path().join(RESTART_FILE);
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Normal,
            live: BTreeMap::new(),
            crashes: 0,
            degradations: 0,
        }));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(run(breaks, shared, restart_file, port_tx, stop_rx));
        });
        let port = port_rx.recv().expect("the fake's port");
        Fake {
            port,
            dir,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Asks the fake to come back and waits until it did (the command returns once the port
    /// answers normally again).
    pub fn restart_cmd(&self) -> String {
        let f = self.dir.path().join(RESTART_FILE).display().to_string();
        format!("touch {f}; while [ -e {f} ]; do sleep 0.02; done")
    }

    pub fn crashes(&self) -> usize {
        self.state.lock().unwrap().crashes
    }

    pub fn degradations(&self) -> usize {
        self.state.lock().unwrap().degradations
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    breaks: Breaks,
    state: Arc<Mutex<State>>,
    restart_file: PathBuf,
    port_tx: std::sync::mpsc::Sender<u16>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    // The broker itself, on a port of its own.
    let inner = simqtt::transport::tcp::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the inner broker");
    let inner_addr: SocketAddr = inner.0.local_addr().expect("inner address");
    let (broker, _handle) = Broker::new(Box::new(MemoryStore::new()), BrokerConfig::default());
    tokio::spawn(async move {
        let _ = broker.run(inner, std::future::pending::<()>()).await;
    });
    let mut listener = Some(
        TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the front"),
    );
    let port = listener.as_ref().unwrap().local_addr().unwrap().port();
    let _ = port_tx.send(port);
    // Bumped to drop every connection (a crash, or the restart).
    let (epoch_tx, epoch_rx) = watch::channel(0u64);
    let breaks = Arc::new(breaks);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let accept = async {
            match &listener {
                Some(l) => l.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {
                let mode = state.lock().unwrap().mode;
                if restart_file.exists() {
                    state.lock().unwrap().mode = Mode::Normal;
                    epoch_tx.send_modify(|e| *e += 1);
                    if listener.is_none() {
                        listener = Some(
                            TcpListener::bind(("127.0.0.1", port)).await.expect("bind the front again"),
                        );
                    }
                    let _ = std::fs::remove_file(&restart_file);
                } else if mode == Mode::Crashed && listener.is_some() {
                    // Nothing listens on a crashed broker's port.
                    listener = None;
                }
            }
            accepted = accept => {
                let Some((client, _)) = accepted else { continue };
                let mode = state.lock().unwrap().mode;
                match mode {
                    Mode::Normal => {
                        let (state, breaks, epoch) = (state.clone(), breaks.clone(), epoch_rx.clone());
                        let epoch_tx = epoch_tx.clone();
                        tokio::spawn(async move {
                            connection(client, inner_addr, state, breaks, epoch, epoch_tx).await;
                        });
                    }
                    // A new connection of a degraded (or dying) broker ends before CONNACK.
                    Mode::Degraded | Mode::Crashed => drop(client),
                }
            }
        }
    }
}

/// The CONNECT's client id, once a whole first packet is in `buf`.
fn client_id(buf: &[u8]) -> Option<Option<String>> {
    let bytes = bytes::Bytes::copy_from_slice(buf);
    match codec::decode_slice(&bytes, ProtocolVersion::V5, u32::MAX) {
        Ok(Some((Packet::Connect(c), _))) => Some(Some(c.client_id.to_string())),
        Ok(Some(_)) | Err(_) => Some(None),
        Ok(None) => None,
    }
}

fn contains(window: &[u8], pattern: &Option<Vec<u8>>) -> bool {
    pattern
        .as_ref()
        .is_some_and(|p| !p.is_empty() && window.windows(p.len()).any(|w| w == p.as_slice()))
}

async fn connection(
    mut client: TcpStream,
    inner: SocketAddr,
    state: Arc<Mutex<State>>,
    breaks: Arc<Breaks>,
    mut epoch: watch::Receiver<u64>,
    epoch_tx: watch::Sender<u64>,
) {
    let start = *epoch.borrow();
    // The first packet: the CONNECT, to know the client id.
    let mut first = Vec::new();
    let mut chunk = [0u8; 4096];
    let id = loop {
        if let Some(id) = client_id(&first) {
            break id;
        }
        match tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => first.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    if let Some(id) = &id {
        let ignored = {
            let mut s = state.lock().unwrap();
            let taken = breaks.ignore_takeovers && s.live.get(id).is_some_and(|n| *n > 0);
            if !taken {
                *s.live.entry(id.clone()).or_insert(0) += 1;
            }
            taken
        };
        if ignored {
            // Answer it here; the broker never hears of it, so nothing is taken over.
            let _ = client.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
            while matches!(client.read(&mut chunk).await, Ok(n) if n > 0) {}
            return;
        }
    }
    let Ok(mut broker) = TcpStream::connect(inner).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let mut window: Vec<u8> = Vec::new();
    let mut pending = first;
    let mut up = [0u8; 4096];
    let mut down = [0u8; 4096];
    let mut reset = false;
    loop {
        if !pending.is_empty() {
            window.extend_from_slice(&pending);
            if contains(&window, &breaks.crash_on) {
                {
                    let mut s = state.lock().unwrap();
                    s.mode = Mode::Crashed;
                    s.crashes += 1;
                }
                epoch_tx.send_modify(|e| *e += 1);
                reset = true;
                break;
            }
            if contains(&window, &breaks.degrade_on) {
                let mut s = state.lock().unwrap();
                if s.mode == Mode::Normal {
                    s.mode = Mode::Degraded;
                    s.degradations += 1;
                }
                drop(s);
            }
            if broker.write_all(&pending).await.is_err() {
                break;
            }
            pending.clear();
            let keep = window.len().saturating_sub(64);
            window.drain(..keep);
        }
        tokio::select! {
            _ = epoch.changed() => {
                if *epoch.borrow() != start {
                    reset = true;
                    break;
                }
            }
            read = client.read(&mut up) => match read {
                Ok(n) if n > 0 => pending.extend_from_slice(&up[..n]),
                _ => break,
            },
            read = broker.read(&mut down) => match read {
                Ok(n) if n > 0 => {
                    if client.write_all(&down[..n]).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    if let Some(id) = &id {
        let mut s = state.lock().unwrap();
        if let Some(n) = s.live.get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }
    if reset {
        let _ = client.set_zero_linger();
        let _ = broker.set_zero_linger();
    }
}
