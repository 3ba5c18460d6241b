//! Shared by the client integration tests: a real mosquitto on a loopback port, and a
//! connector that injects faults into (and records) the client's TCP streams.
#![allow(dead_code)]

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use simqtt::client::{ConnectOptions, Event, EventKind, ReconnectOptions};
use simqtt::codec::{self, Packet, ProtocolVersion};
use simqtt::transport::tcp::TcpConnector;
use simqtt::transport::{BoxFuture, BoxStream, Connector};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc::Receiver;

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A mosquitto process on 127.0.0.1:<random port> with its config and data in a temp dir.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts mosquitto; panics (fails the test) when it is not installed.
    pub fn start(persistence: bool) -> Mosquitto {
        Self::start_with(persistence, true)
    }

    /// `allow_anonymous: false` without a password file makes mosquitto refuse every
    /// CONNECT with "not authorised".
    pub fn start_with(persistence: bool, allow_anonymous: bool) -> Mosquitto {
        assert!(
            std::path::Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing: install the mosquitto package (.ci/run does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        // Started as root, mosquitto drops to its own user; it must still write its database.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod temp dir");
        }
        let port = free_port();
        let mut config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous {allow_anonymous}\nmax_inflight_messages 20\nlog_dest stderr\n"
        );
        if persistence {
            config.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            ));
        }
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("write config");
        let mut broker = Mosquitto {
            port,
            dir,
            child: None,
        };
        broker.spawn();
        broker
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "mosquitto did not listen on port {}: {}",
            self.port,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// SIGTERM and wait: mosquitto saves its persistence file on the way out.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Options for a test client: short keepalive and reconnect delays so faults resolve fast.
pub fn options(addr: &str, id: &str, clean: bool) -> ConnectOptions {
    let mut o = ConnectOptions::new(addr, id);
    o.clean_session = clean;
    o.keep_alive_secs = 1;
    o.connect_timeout = Duration::from_secs(5);
    o.reconnect = Some(ReconnectOptions {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        seed: 1,
        max_attempts: None,
    });
    o
}

/// Receives events until one matches, returning it; panics after `secs` seconds, listing
/// what did arrive. Every event seen is appended to `seen`.
pub async fn wait_for(
    events: &mut Receiver<Event>,
    seen: &mut Vec<Event>,
    secs: u64,
    what: &str,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                seen.push(event.clone());
                if pred(&event.kind) {
                    return event;
                }
            }
            Ok(None) => panic!("event stream ended waiting for {what}; saw {seen:#?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
        }
    }
}

pub fn payloads(seen: &[Event]) -> Vec<Bytes> {
    seen.iter()
        .filter_map(|e| match &e.kind {
            EventKind::MessageArrived(m) => Some(m.payload.clone()),
            _ => None,
        })
        .collect()
}

/// Per-connection fault switches and byte recordings.
#[derive(Default)]
pub struct StreamCtl {
    /// Writes succeed but go nowhere (a silent network or broker).
    pub drop_writes: AtomicBool,
    /// Bytes that arrive are thrown away.
    pub drop_reads: AtomicBool,
    /// The first write batch starting with this fixed-header byte is swallowed, and from
    /// then on every write is (so the client must time out and reconnect). 0: off.
    pub drop_from_first_byte: AtomicU8,
    pub written: Mutex<Vec<u8>>,
    pub read: Mutex<Vec<u8>>,
}

/// A connector over real TCP whose streams can be faulted one connection at a time.
#[derive(Default, Clone)]
pub struct FaultConnector {
    pub streams: Arc<Mutex<Vec<Arc<StreamCtl>>>>,
    /// Applied to each new connection as it opens (then cleared).
    pub next_drop_from_first_byte: Arc<AtomicU8>,
}

impl FaultConnector {
    pub fn connections(&self) -> usize {
        self.streams.lock().unwrap().len()
    }

    pub fn stream(&self, index: usize) -> Arc<StreamCtl> {
        self.streams.lock().unwrap()[index].clone()
    }

    pub fn last(&self) -> Arc<StreamCtl> {
        self.streams
            .lock()
            .unwrap()
            .last()
            .expect("no connection")
            .clone()
    }

    /// Packets the client wrote on connection `index` (that reached the socket).
    pub fn written(&self, index: usize, version: ProtocolVersion) -> Vec<Packet> {
        decode_all(&self.stream(index).written.lock().unwrap(), version)
    }

    /// Packets the client received on connection `index`.
    pub fn received(&self, index: usize, version: ProtocolVersion) -> Vec<Packet> {
        decode_all(&self.stream(index).read.lock().unwrap(), version)
    }
}

pub fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Vec<Packet> {
    let mut buf = bytes::BytesMut::from(bytes);
    let mut packets = Vec::new();
    while let Ok(Some(packet)) = codec::decode(&mut buf, version, codec::DEFAULT_MAX_PACKET_SIZE) {
        packets.push(packet);
    }
    packets
}

impl Connector for FaultConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let inner = TcpConnector.connect(addr).await?;
            let ctl = Arc::new(StreamCtl::default());
            ctl.drop_from_first_byte.store(
                self.next_drop_from_first_byte.swap(0, Ordering::SeqCst),
                Ordering::SeqCst,
            );
            self.streams.lock().unwrap().push(ctl.clone());
            Ok(Box::new(FaultStream { inner, ctl }) as BoxStream)
        })
    }
}

struct FaultStream {
    inner: BoxStream,
    ctl: Arc<StreamCtl>,
}

impl AsyncRead for FaultStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut tmp = vec![0u8; buf.remaining().min(8192)];
        loop {
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let filled = rb.filled();
                    if filled.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    if self.ctl.drop_reads.load(Ordering::SeqCst) {
                        continue;
                    }
                    self.ctl.read.lock().unwrap().extend_from_slice(filled);
                    buf.put_slice(filled);
                    return Poll::Ready(Ok(()));
                }
                other => return other,
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
        let first = self.ctl.drop_from_first_byte.load(Ordering::SeqCst);
        if first != 0 && buf.first() == Some(&first) {
            self.ctl.drop_writes.store(true, Ordering::SeqCst);
        }
        if self.ctl.drop_writes.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.ctl
                    .written
                    .lock()
                    .unwrap()
                    .extend_from_slice(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
