//! The broker's file store in real processes: the data directory lock, a full disk under
//! `sync = "every-write"` (no acknowledgement without durability, then kill -9), and a damaged
//! log (refusal to start, `--salvage`). Each test starts its own `simqtt broker` on a free port
//! and bounds every wait.

#![allow(dead_code)] // The client helpers serve the disk tests that follow in the next commits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use simqtt::codec::{
    self, Connect, ConnectProperties, MqttStr, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, QosPid, ReasonCode, Subscribe, SubscribeProperties,
    SubscriptionOptions, TopicFilter, TopicName,
};

const WAIT: Duration = Duration::from_secs(10);

/// `simqtt broker` in a child process, killed (SIGKILL) when dropped.
struct Broker {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    fn command(data_dir: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_simqtt"));
        command
            .args(["broker", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        Broker::spawn(Broker::command(data_dir, extra))
    }

    fn spawn(mut command: Command) -> Broker {
        let mut child = command.spawn().expect("starting simqtt broker");
        let log = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stderr.take().unwrap(), log.clone());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "simqtt broker printed no listening line; log: {}",
                log.lock().unwrap().join("\n")
            )
        });
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Broker { child, port, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `text`.
    fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("no log line with {text:?}; log:\n{}", self.log());
    }

    /// SIGKILL: no shutdown, no final sync.
    fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

/// Runs `command` to its end (bounded): exit status and stderr.
fn run_to_end(mut command: Command) -> (ExitStatus, String) {
    let mut child = command.spawn().expect("spawn");
    let err = Arc::new(Mutex::new(Vec::new()));
    collect_lines(child.stderr.take().unwrap(), err.clone());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "still running after {WAIT:?}; stderr: {}",
                err.lock().unwrap().join("\n")
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Let the reader thread take the last lines.
    thread::sleep(Duration::from_millis(100));
    let stderr = err.lock().unwrap().join("\n");
    (status, stderr)
}

/// A blocking MQTT client over the crate's codec: just enough to drive the broker.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    fn connect(port: u16, client_id: &str, clean: bool, version: ProtocolVersion) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
            version,
        };
        let mut properties = ConnectProperties::default();
        if version == ProtocolVersion::V5 && !clean {
            properties.session_expiry_interval_secs = Some(u32::MAX);
        }
        client.send(&Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: clean,
            keep_alive_secs: 0,
            properties,
            client_id: MqttStr::new(client_id).unwrap(),
            will: None,
            username: None,
            password: None,
        })));
        match client.recv() {
            Some(Packet::ConnAck(ack)) if ack.reason_code == ReasonCode::Success => client,
            other => panic!("{client_id}: expected CONNACK 0, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(packet, self.version, &mut out).unwrap();
        self.stream.write_all(&out).expect("write");
    }

    /// The next packet; `None` when the broker closed the connection.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) =
                codec::decode(&mut self.buf, self.version, codec::DEFAULT_MAX_PACKET_SIZE)
                    .expect("valid packet from the broker")
            {
                return Some(packet);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: SubscribeProperties::default(),
            filters: vec![(
                TopicFilter::new(filter).unwrap(),
                SubscriptionOptions::qos(qos),
            )],
        }));
        match self.recv() {
            Some(Packet::SubAck(ack)) if !ack.reason_codes[0].is_error() => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

fn publish(topic: &str, payload: Bytes, qos_pid: QosPid) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        properties: PublishProperties::default().into(),
        payload,
    })
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused_naming_the_dir_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Broker::start(&data, &[]);
    let (status, stderr) = run_to_end(Broker::command(&data, &[]));
    assert!(!status.success(), "the second broker started: {stderr}");
    assert!(
        stderr.contains(&data.display().to_string()),
        "the error does not name the directory: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "the error does not name the holder's pid: {stderr}"
    );
    // The lock goes with its holder, however it ends.
    first.kill9();
    let again = Broker::start(&data, &[]);
    drop(again);
}
