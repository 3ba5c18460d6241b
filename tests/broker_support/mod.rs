//! Shared by the tests that attack `simqtt broker` over real TCP: the broker as a child process
//! (so a crash is a dead process, not a dead test) and a raw MQTT client that writes exactly
//! the packets a test builds and reads what comes back, with every wait bounded.

#![allow(dead_code)] // Each test file uses part of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use simqtt::codec::{
    self, ConnAck, Connect, MqttStr, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid,
    Subscribe, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
};

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// `simqtt broker` in a child process on a port it picked; killed when dropped.
pub struct ChildBroker {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl ChildBroker {
    /// Starts `simqtt broker --listen 127.0.0.1:0 ARGS` and waits for its listening line.
    pub fn start(args: &[&str]) -> ChildBroker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_simqtt"))
            .args(["broker", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting simqtt broker");
        let log = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let into = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                into.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "simqtt broker printed no listening line; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        ChildBroker { child, port, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Panics, with the broker's log, when the process has exited.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            // Let the log reader catch the last lines.
            thread::sleep(Duration::from_millis(200));
            panic!(
                "the broker died {when} ({status}); its log:\n{}",
                self.log()
            );
        }
    }

    /// The broker's resident set size now, in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a test file");
    path.display().to_string()
}

/// What `RawClient::recv` saw.
#[derive(Debug)]
pub enum Received {
    Packet(Packet),
    /// The broker closed the connection (end of stream or reset).
    Closed,
    /// Nothing within the wait.
    Nothing,
}

/// One TCP connection speaking MQTT packet by packet.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    pub version: ProtocolVersion,
}

pub fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero packet id")
}

/// A CONNECT with the given identity; everything else plain (keepalive 60 s).
pub fn connect_packet(
    version: ProtocolVersion,
    client_id: &str,
    clean_start: bool,
    user: Option<(&str, &str)>,
) -> Connect {
    let mut connect = Connect {
        protocol: version,
        clean_start,
        keep_alive_secs: 60,
        properties: Default::default(),
        client_id: MqttStr::new(client_id).expect("client id"),
        will: None,
        username: user.map(|(u, _)| MqttStr::new(u).expect("user name")),
        password: user.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
    };
    if version == ProtocolVersion::V5 && !clean_start {
        // A 5.0 session outlives the connection only with an expiry.
        connect.properties.session_expiry_interval_secs = Some(u32::MAX);
    }
    connect
}

impl RawClient {
    /// Opens a connection and sends nothing.
    pub fn open(port: u16, version: ProtocolVersion) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the broker");
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            buf: BytesMut::new(),
            version,
        }
    }

    /// Opens a connection, sends `connect` and returns the CONNACK (panics on anything else).
    pub fn connect_with(port: u16, connect: Connect) -> (RawClient, ConnAck) {
        let mut client = RawClient::open(port, connect.protocol);
        client.send(&Packet::Connect(Box::new(connect)));
        match client.recv(WAIT) {
            Received::Packet(Packet::ConnAck(connack)) => (client, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and expects CONNACK success.
    pub fn connect(
        port: u16,
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
        user: Option<(&str, &str)>,
    ) -> RawClient {
        let (client, connack) =
            RawClient::connect_with(port, connect_packet(version, client_id, clean_start, user));
        assert!(
            !connack.reason_code.is_error(),
            "{client_id}: CONNACK {:?}",
            connack.reason_code
        );
        client
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(packet, self.version, &mut out).expect("encoding a test packet");
        // A write may fail once the broker closed; the next `recv` reports the close.
        let _ = self.stream.write_all(&out);
    }

    pub fn subscribe(&mut self, id: u16, filters: &[(&str, QoS)]) {
        let filters = filters
            .iter()
            .map(|(f, q)| {
                (
                    TopicFilter::new(f).expect("topic filter"),
                    SubscriptionOptions::qos(*q),
                )
            })
            .collect();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(id),
            properties: Default::default(),
            filters,
        }));
    }

    /// Subscribes and returns the SUBACK's codes (as bytes).
    pub fn subscribe_codes(&mut self, id: u16, filters: &[(&str, QoS)]) -> Vec<u8> {
        self.subscribe(id, filters);
        match self.recv_skipping_publishes(WAIT) {
            Received::Packet(Packet::SubAck(suback)) => {
                assert_eq!(suback.packet_id, pid(id));
                suback.reason_codes.iter().map(|c| *c as u8).collect()
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn unsubscribe(&mut self, id: u16, filters: &[&str]) {
        self.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(id),
            user_properties: Vec::new(),
            filters: filters
                .iter()
                .map(|f| TopicFilter::new(f).expect("topic filter"))
                .collect(),
        }));
    }

    pub fn publish(&mut self, topic: &str, qos: QoS, id: u16, retain: bool, payload: &[u8]) {
        let qos_pid = QosPid::new(qos, PacketId::new(id)).expect("a packet id for QoS 1/2");
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos_pid,
            retain,
            topic: TopicName::new(topic).expect("topic name"),
            properties: Default::default(),
            payload: Bytes::copy_from_slice(payload),
        }));
    }

    /// The next packet, the close, or nothing within `wait`.
    pub fn recv(&mut self, wait: Duration) -> Received {
        let deadline = Instant::now() + wait;
        loop {
            match codec::decode(&mut self.buf, self.version, u32::MAX >> 4) {
                Ok(Some(packet)) => return Received::Packet(packet),
                Ok(None) => {}
                Err(error) => panic!("the broker sent a malformed packet: {error}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Received::Nothing;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Received::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Received::Closed,
            }
        }
    }

    /// Like `recv`, but PUBLISH packets are passed over.
    pub fn recv_skipping_publishes(&mut self, wait: Duration) -> Received {
        let deadline = Instant::now() + wait;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Received::Packet(Packet::Publish(_)) => continue,
                other => return other,
            }
        }
    }

    /// Every PUBLISH that arrives within `wait` (acknowledging QoS 1 ones), as (topic, payload).
    pub fn collect_publishes(&mut self, wait: Duration) -> Vec<(String, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Received::Packet(Packet::Publish(p)) => {
                    if let QosPid::AtLeastOnce(id) = p.qos_pid {
                        self.send(&Packet::PubAck(codec::Ack::new(id)));
                    }
                    out.push((p.topic.to_string(), p.payload.to_vec()));
                }
                Received::Packet(_) => {}
                Received::Closed | Received::Nothing => return out,
            }
        }
    }

    /// PINGREQ, and true when PINGRESP comes back (other packets on the way are passed over).
    pub fn ping(&mut self) -> bool {
        self.send(&Packet::PingReq);
        let deadline = Instant::now() + WAIT;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Received::Packet(Packet::PingResp) => return true,
                Received::Packet(_) => continue,
                _ => return false,
            }
        }
    }

    /// Expects the broker to close the connection within `wait` (packets before are passed
    /// over and returned).
    pub fn expect_closed(&mut self, wait: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Received::Packet(p) => seen.push(p),
                Received::Closed => return seen,
                Received::Nothing => panic!("the broker did not close the connection: {seen:?}"),
            }
        }
    }

    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Default::default()));
    }
}

/// `QoS` from its number.
pub fn qos(n: u8) -> QoS {
    QoS::from_u8(n).expect("QoS 0, 1 or 2")
}
