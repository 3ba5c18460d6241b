//! A client under test in another process, served to the scenario world as a `Client` handle.
//!
//! The world starts it where it would start simqtt's own client (`sim::world::ExternalClient`):
//! the adapter command runs (`sh -c`), says `ready`, and is told to `connect` to a **relay**,
//! a loopback listener of this module. Each connection the client opens to the relay is
//! forwarded through the connector the world gave (the session's fault layer over the fault
//! proxy of the client's host), so resets, stalls, dropped packets and partitions hit the
//! client under test as they hit simqtt's own client. On the way, the relay reads what the
//! client wrote: every PUBLISH (with its DUP flag and packet id) and PUBREL becomes the wire
//! event simqtt's own client would have reported of itself, so the checkers judge the bytes
//! the client put on the wire, not what it says it did. Everything the application sees
//! (connect_complete, message, delivery_complete, …) comes from the adapter's events.
//!
//! Killing the handle (`crash_client`) kills the process; `disconnect` asks it to disconnect
//! and exit.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::protocol::{self, Command as Line, Event as Said, FilterQos};
use crate::client::driver::{Reply, Request};
use crate::client::state::Command;
use crate::client::{Client, ClientError, Completion, ConnectOptions, Event, EventKind, Message};
use crate::codec::{ProtocolVersion, PublishProperties, QoS, ReasonCode, TopicFilter, TopicName};
use crate::sim::world::{ExternalClient, ExternalStart, ExternalStarted};
use crate::transport::Connector;

/// Longest the adapter may take to say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a `disconnect` may take to be answered, and the process to exit after `exit`.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events buffered between the adapter and the world.
const EVENT_CAPACITY: usize = 4096;

/// How to start the client under test.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Run with `sh -c`.
    pub command: String,
    /// Where the adapter's stderr goes (appended); `None`: discarded.
    pub stderr: Option<PathBuf>,
}

/// The world's hook that starts `adapter` in place of the scenario client `client`.
pub fn external(adapter: Adapter, client: &str) -> ExternalClient {
    // One relay port for every process of the client: a restarted application connects to
    // the server it connected to before, and a library may key its persistence by the
    // server's URI (Paho C does), so a new port would hide what it persisted.
    let relay_port = Arc::new(std::sync::Mutex::new(0u16));
    ExternalClient {
        client: client.to_string(),
        start: Arc::new(move |start| start_adapter(&adapter, &relay_port, start)),
    }
}

/// A listener on 127.0.0.1:`port` (0: any), retried for a while: the previous process's
/// relay, aborted with it, may not have let go of the port yet.
fn relay_listener(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        match socket
            .bind(([127, 0, 0, 1], port).into())
            .and_then(|()| socket.listen(64))
        {
            Ok(listener) => return Ok(listener),
            Err(e) if tries >= 50 => return Err(e),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn start_adapter(
    adapter: &Adapter,
    relay_port: &std::sync::Mutex<u16>,
    start: ExternalStart,
) -> ExternalStarted {
    let stderr = match &adapter.stderr {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Stdio::from)
            .map_err(|e| ClientError::InvalidArgument(format!("{}: {e}", path.display())))?,
        None => Stdio::null(),
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&adapter.command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            ClientError::InvalidArgument(format!("adapter command {:?}: {e}", adapter.command))
        })?;
    let listener = {
        let mut port = relay_port.lock().unwrap_or_else(|e| e.into_inner());
        let listener = relay_listener(*port)
            .map_err(|e| ClientError::Io(format!("relay listener on port {port}: {e}")))?;
        if let Ok(addr) = listener.local_addr() {
            *port = addr.port();
        }
        listener
    };
    let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
        (Some(i), Some(o)) => (i, o),
        _ => return Err(ClientError::Io("adapter without stdin/stdout".into())),
    };
    let (requests_tx, requests) = Client::request_channel();
    let (events, events_rx) = mpsc::channel(EVENT_CAPACITY);
    let protocol = start.options.protocol;
    let client_id = start.options.client_id.clone();
    let driver = Driver {
        child,
        stdin,
        events,
        wire: Rc::new(RefCell::new(Wire::default())),
        publishes: BTreeMap::new(),
        subscribes: BTreeMap::new(),
        unsubscribes: BTreeMap::new(),
        connections: Rc::new(RefCell::new(0)),
    };
    let task =
        tokio::task::spawn_local(driver.run(start, listener, BufReader::new(stdout), requests));
    Ok((
        Client::with_driver(protocol, &client_id, requests_tx, task.abort_handle()),
        events_rx,
    ))
}

/// What the relay learned from the wire, shared between the driver and its connections.
#[derive(Default)]
struct Wire {
    /// Payload id → the token of the publish that carries it.
    by_payload: BTreeMap<String, u64>,
    /// Packet id → token of the message the client sent with it.
    by_packet: BTreeMap<u16, u64>,
    /// Token → packet id (the first PUBLISH with one).
    packet_of: BTreeMap<u64, u16>,
    /// A CONNACK accepted a connection of this process before.
    connected_once: bool,
}

struct Driver {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Sender<Event>,
    wire: Rc<RefCell<Wire>>,
    publishes: BTreeMap<u64, (QoS, Reply)>,
    subscribes: BTreeMap<u64, Reply>,
    unsubscribes: BTreeMap<u64, (Vec<TopicFilter>, Reply)>,
    connections: Rc<RefCell<u32>>,
}

/// The payload id in a payload: the text before the first space (as `sim::world` reads it).
fn payload_id(payload: &[u8]) -> String {
    crate::sim::world::payload_id(payload)
}

fn qos_of(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

impl Driver {
    async fn emit(&self, kind: EventKind) {
        let connection = *self.connections.borrow();
        let _ = self
            .events
            .send(Event {
                at: Instant::now(),
                connection,
                kind,
            })
            .await;
    }

    async fn say(&mut self, line: &Line) {
        // A dead adapter is noticed on its stdout; a failed write here says nothing more.
        let _ = self.stdin.write_all(line.line().as_bytes()).await;
        let _ = self.stdin.flush().await;
    }

    async fn run(
        mut self,
        start: ExternalStart,
        listener: tokio::net::TcpListener,
        mut stdout: BufReader<tokio::process::ChildStdout>,
        mut requests: mpsc::Receiver<Request>,
    ) {
        let mut line = String::new();
        let ready = tokio::time::timeout(READY_TIMEOUT, stdout.read_line(&mut line)).await;
        let first = match ready {
            Err(_) => Err(format!(
                "the adapter said nothing within {}s (its first line must be ready)",
                READY_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => Err(format!("reading the adapter: {e}")),
            Ok(Ok(0)) => Err("the adapter exited before its ready line".to_string()),
            Ok(Ok(_)) => Said::parse(&line),
        };
        match first {
            Ok(Said::Ready { protocol, .. }) if protocol == protocol::PROTOCOL_VERSION => {}
            Ok(Said::Ready { protocol, .. }) => {
                return self
                    .stop(format!(
                        "the adapter speaks driver protocol {protocol}; this simqtt speaks {}",
                        protocol::PROTOCOL_VERSION
                    ))
                    .await;
            }
            Ok(other) => {
                return self
                    .stop(format!(
                        "the adapter's first line must be ready, not {other:?}"
                    ))
                    .await;
            }
            Err(e) => return self.stop(e).await,
        }
        let relay = match listener.local_addr() {
            Ok(a) => a.to_string(),
            Err(e) => return self.stop(format!("relay listener: {e}")).await,
        };
        let connect = connect_line(&start.options, relay, start.persistence_dir.as_ref());
        self.say(&connect).await;
        let connector = start.connector.clone();
        let server = start.options.server.clone();
        let protocol = start.options.protocol;
        let mut disconnecting: Option<(oneshot::Sender<()>, tokio::time::Instant)> = None;
        loop {
            line.clear();
            let deadline = disconnecting
                .as_ref()
                .map(|(_, at)| *at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                read = stdout.read_line(&mut line) => {
                    match read {
                        Ok(0) | Err(_) => {
                            let status = self.child.wait().await;
                            if let Some((done, _)) = disconnecting.take() {
                                self.emit(EventKind::Stopped { cause: None }).await;
                                let _ = done.send(());
                                return;
                            }
                            let text = match status {
                                Ok(s) => format!("the adapter exited ({s})"),
                                Err(e) => format!("the adapter ended: {e}"),
                            };
                            return self.stop(text).await;
                        }
                        Ok(_) => {}
                    }
                    if line.trim().is_empty() {
                        continue;
                    }
                    match Said::parse(&line) {
                        Ok(Said::Disconnected) => {
                            if let Some((done, _)) = disconnecting.take() {
                                self.say(&Line::Exit).await;
                                let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, self.child.wait()).await;
                                self.emit(EventKind::Stopped { cause: None }).await;
                                let _ = done.send(());
                                return;
                            }
                        }
                        Ok(said) => self.heard(said, protocol).await,
                        Err(e) => tracing::warn!("adapter: {e}"),
                    }
                }
                request = requests.recv() => {
                    match request {
                        Some(Request::Command(command, reply)) => self.command(command, reply).await,
                        // Driver protocol v1 has no request/response: dropping the reply
                        // ends the application's wait with an error rather than a hang.
                        Some(Request::AwaitResponse { .. }) => {}
                        Some(Request::Disconnect(done, _reason)) => {
                            self.say(&Line::Disconnect).await;
                            disconnecting = Some((done, Instant::now() + DISCONNECT_TIMEOUT));
                        }
                        // Every handle dropped: the application is gone.
                        None => {
                            let _ = self.child.start_kill();
                            return;
                        }
                    }
                }
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        *self.connections.borrow_mut() += 1;
                        tokio::task::spawn_local(relay_connection(
                            stream,
                            connector.clone(),
                            server.clone(),
                            protocol,
                            self.wire.clone(),
                            self.events.clone(),
                            self.connections.clone(),
                        ));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if let Some((done, _)) = disconnecting.take() {
                        // No `disconnected` in time: the process is ended as a crash would.
                        let _ = self.child.start_kill();
                        let _ = self.child.wait().await;
                        self.emit(EventKind::Stopped {
                            cause: Some(ClientError::Protocol(format!(
                                "the adapter did not answer disconnect within {}s",
                                DISCONNECT_TIMEOUT.as_secs()
                            ))),
                        })
                        .await;
                        let _ = done.send(());
                        return;
                    }
                }
            }
        }
    }

    async fn stop(mut self, why: String) {
        let _ = self.child.start_kill();
        self.emit(EventKind::Stopped {
            cause: Some(ClientError::Protocol(why)),
        })
        .await;
    }

    async fn command(&mut self, command: Command, reply: Reply) {
        match command {
            Command::Publish {
                token,
                topic,
                payload,
                qos,
                retain,
                properties,
            } => {
                if *properties != PublishProperties::default() {
                    // Driver protocol v1 carries no 5.0 publish properties: refuse rather
                    // than publish something else than what the scenario asked for.
                    let _ = reply.send(Err(ClientError::InvalidArgument(
                        "driver protocol v1 cannot carry publish properties".into(),
                    )));
                    return;
                }
                self.wire
                    .borrow_mut()
                    .by_payload
                    .insert(payload_id(&payload), token);
                self.say(&Line::Publish {
                    id: token,
                    topic: topic.as_str().to_string(),
                    qos: qos.as_u8(),
                    retain,
                    payload: String::from_utf8_lossy(&payload).into_owned(),
                })
                .await;
                if qos == QoS::AtMostOnce {
                    let _ = reply.send(Ok(Completion::Published));
                } else {
                    self.publishes.insert(token, (qos, reply));
                }
            }
            Command::Subscribe { token, filters } => {
                self.say(&Line::Subscribe {
                    id: token,
                    filters: filters
                        .iter()
                        .map(|(f, o)| FilterQos {
                            filter: f.as_str().to_string(),
                            qos: o.qos.as_u8(),
                        })
                        .collect(),
                })
                .await;
                self.subscribes.insert(token, reply);
            }
            Command::Unsubscribe { token, filters } => {
                self.say(&Line::Unsubscribe {
                    id: token,
                    filters: filters.iter().map(|f| f.as_str().to_string()).collect(),
                })
                .await;
                self.unsubscribes.insert(token, (filters, reply));
            }
            Command::Reauthenticate { .. } => {
                let _ = reply.send(Err(ClientError::InvalidArgument(
                    "driver protocol v1 has no re-authentication".into(),
                )));
            }
        }
    }

    /// One event the adapter wrote (other than `disconnected`).
    async fn heard(&mut self, said: Said, protocol: ProtocolVersion) {
        let _ = protocol;
        match said {
            Said::Ready { .. } | Said::Disconnected => {}
            Said::ConnectComplete { .. } => {
                // The trace takes the CONNACK from the wire (see `relay_connection`); what the
                // library told its application is the adapter's business.
            }
            Said::ConnectionLost { .. } => {
                // Taken from the wire too (`relay_connection`).
            }
            Said::Message {
                topic,
                qos,
                retain,
                dup,
                payload,
            } => {
                let Ok(topic) = TopicName::new(&topic) else {
                    tracing::warn!("adapter: message on an invalid topic {topic:?}");
                    return;
                };
                self.emit(EventKind::MessageArrived(Message {
                    topic,
                    payload: Bytes::from(payload.into_bytes()),
                    qos: qos_of(qos),
                    retain,
                    dup,
                    packet_id: None,
                    properties: PublishProperties::default(),
                }))
                .await;
            }
            Said::DeliveryComplete { id, packet_id } => {
                let token = id.or_else(|| {
                    packet_id.and_then(|p| self.wire.borrow().by_packet.get(&p).copied())
                });
                let packet = packet_id
                    .or_else(|| token.and_then(|t| self.wire.borrow().packet_of.get(&t).copied()));
                let pending = token.and_then(|t| self.publishes.remove(&t));
                let qos = pending.as_ref().map_or(QoS::AtLeastOnce, |(q, _)| *q);
                if let Some((_, reply)) = pending {
                    let _ = reply.send(Ok(Completion::Published));
                }
                self.emit(EventKind::DeliveryComplete {
                    token: token.unwrap_or(0),
                    packet_id: packet.and_then(NonZeroU16::new),
                    qos,
                })
                .await;
            }
            Said::Subscribed {
                id,
                filters,
                granted,
            } => {
                let codes: Vec<ReasonCode> = granted
                    .iter()
                    .map(|&g| ReasonCode::from_u8(g).unwrap_or(ReasonCode::UnspecifiedError))
                    .collect();
                let filters: Vec<TopicFilter> = filters
                    .iter()
                    .filter_map(|f| TopicFilter::new(&f.filter).ok())
                    .collect();
                if let Some(reply) = id.and_then(|t| self.subscribes.remove(&t)) {
                    let _ = reply.send(Ok(Completion::Subscribed(codes.clone())));
                }
                self.emit(EventKind::SubscribeComplete {
                    token: id.unwrap_or(0),
                    packet_id: NonZeroU16::MIN,
                    filters,
                    granted: codes,
                    resubscribe: id.is_none(),
                })
                .await;
            }
            Said::Unsubscribed { id } => {
                if let Some((filters, reply)) = self.unsubscribes.remove(&id) {
                    let _ = reply.send(Ok(Completion::Unsubscribed(Vec::new())));
                    self.emit(EventKind::UnsubscribeComplete {
                        token: id,
                        packet_id: NonZeroU16::MIN,
                        filters,
                        reason_codes: Vec::new(),
                    })
                    .await;
                }
            }
            Said::Error { id, message } => {
                tracing::debug!("adapter error (id {id:?}): {message}");
                let Some(id) = id else { return };
                if let Some((_, reply)) = self.publishes.remove(&id) {
                    let _ = reply.send(Err(ClientError::Protocol(message.clone())));
                    let packet = self.wire.borrow().packet_of.get(&id).copied();
                    self.emit(EventKind::DeliveryFailed {
                        token: id,
                        packet_id: packet.and_then(NonZeroU16::new),
                        cause: ClientError::Protocol(format!("the client reported: {message}")),
                    })
                    .await;
                } else if let Some(reply) = self.subscribes.remove(&id) {
                    let _ = reply.send(Err(ClientError::Protocol(message)));
                } else if let Some((_, reply)) = self.unsubscribes.remove(&id) {
                    let _ = reply.send(Err(ClientError::Protocol(message)));
                }
            }
        }
    }
}

/// The `connect` command for simqtt's own client options.
fn connect_line(options: &ConnectOptions, relay: String, persistence: Option<&PathBuf>) -> Line {
    Line::Connect {
        server: relay,
        client_id: options.client_id.clone(),
        version: match options.protocol {
            ProtocolVersion::V311 => "3.1.1".into(),
            ProtocolVersion::V5 => "5".into(),
        },
        clean_session: options.clean_session,
        keepalive: options.keep_alive_secs,
        session_expiry: match options.protocol {
            ProtocolVersion::V5 => options.session_expiry_interval_secs,
            ProtocolVersion::V311 => None,
        },
        username: options.username.clone(),
        password: options
            .password
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        will: options.will.as_ref().map(|w| protocol::Will {
            topic: w.topic.as_str().to_string(),
            qos: w.qos.as_u8(),
            retain: w.retain,
            payload: String::from_utf8_lossy(&w.payload).into_owned(),
        }),
        automatic_reconnect: options.reconnect.is_some(),
        resubscribe: options.resubscribe != crate::client::ResubscribePolicy::Never,
        persistence_dir: persistence.map(|p| p.display().to_string()),
    }
}

/// Splits a byte stream into MQTT packets (fixed header + Remaining Length).
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    /// The packets `bytes` completes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((remaining, header_len)) = remaining_length(&self.buf) {
            let total = header_len + remaining;
            if self.buf.len() < total {
                break;
            }
            out.push(self.buf.drain(..total).collect());
        }
        out
    }
}

/// Remaining Length and the fixed header's length, once the buffer holds them.
fn remaining_length(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, 2 + i));
        }
    }
    // Malformed (more than 4 bytes): pass the rest through unread.
    Some((buf.len().saturating_sub(1), 1))
}

/// What a packet the client wrote shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// CONNECT with its protocol level (4: 3.1.1, 5: 5.0).
    Connect {
        level: u8,
    },
    Publish {
        qos: u8,
        dup: bool,
        packet_id: Option<u16>,
        payload: Vec<u8>,
    },
    PubRel {
        packet_id: u16,
    },
    Other,
}

/// Reads one packet the client wrote.
pub fn read_written(frame: &[u8], v5: bool) -> Written {
    let Some((_, header_len)) = remaining_length(frame) else {
        return Written::Other;
    };
    let body = &frame[header_len.min(frame.len())..];
    let u16_at = |b: &[u8], i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
    };
    match frame[0] >> 4 {
        1 => {
            // Protocol Name (a length-prefixed string), then the level.
            let name_len = u16_at(body, 0).map_or(0, usize::from);
            match body.get(2 + name_len) {
                Some(&level) => Written::Connect { level },
                None => Written::Other,
            }
        }
        3 => {
            let qos = (frame[0] >> 1) & 3;
            let dup = frame[0] & 0x08 != 0;
            let Some(topic_len) = u16_at(body, 0) else {
                return Written::Other;
            };
            let mut at = 2 + usize::from(topic_len);
            let packet_id = if qos > 0 {
                let id = u16_at(body, at);
                at += 2;
                id
            } else {
                None
            };
            if v5 {
                // Properties: a Variable Byte Integer length, then the properties.
                let mut len = 0usize;
                let mut i = 0;
                loop {
                    let Some(&b) = body.get(at + i) else {
                        return Written::Other;
                    };
                    len |= usize::from(b & 0x7f) << (7 * i);
                    i += 1;
                    if b & 0x80 == 0 || i == 4 {
                        break;
                    }
                }
                at += i + len;
            }
            Written::Publish {
                qos,
                dup,
                packet_id,
                payload: body.get(at..).unwrap_or_default().to_vec(),
            }
        }
        6 => match u16_at(body, 0) {
            Some(packet_id) => Written::PubRel { packet_id },
            None => Written::Other,
        },
        _ => Written::Other,
    }
}

/// One connection of the client under test: forwarded both ways, what the client writes
/// read on the way.
async fn relay_connection(
    inbound: tokio::net::TcpStream,
    connector: Arc<dyn Connector>,
    server: String,
    protocol: ProtocolVersion,
    wire: Rc<RefCell<Wire>>,
    events: mpsc::Sender<Event>,
    connections: Rc<RefCell<u32>>,
) {
    let _ = inbound.set_nodelay(true);
    let Ok(outbound) = connector.connect(&server).await else {
        // Closing the client's connection is how it learns the broker is unreachable.
        return;
    };
    let accepted = std::cell::Cell::new(false);
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut broker_read, mut broker_write) = tokio::io::split(outbound);
    let up = async {
        let mut frames = Frames::default();
        let mut v5 = protocol == ProtocolVersion::V5;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for frame in frames.push(&buf[..n]) {
                let written = read_written(&frame, v5);
                if let Written::Connect { level } = written {
                    v5 = level == 5;
                }
                if let Some(kind) = wire_event(&wire, written) {
                    let connection = *connections.borrow();
                    for kind in kind {
                        let _ = events
                            .send(Event {
                                at: Instant::now(),
                                connection,
                                kind,
                            })
                            .await;
                    }
                }
            }
            if broker_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let _ = broker_write.flush().await;
        }
        let _ = broker_write.shutdown().await;
    };
    let down = async {
        // The CONNACK is read here, from the wire, and reported before the client gets it:
        // its Session Present is the broker's (a library may not tell its application, as
        // Paho C's automatic reconnect does not), and whatever the client writes after it
        // (resends) follows it in the trace as it follows it on the wire.
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut connack_seen = false;
        loop {
            let n = match broker_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !connack_seen {
                for frame in frames.push(&buf[..n]) {
                    if connack_seen {
                        break;
                    }
                    connack_seen = true;
                    // CONNACK: flags (bit 0 Session Present), then the return/reason code.
                    if frame.first().map(|b| b >> 4) == Some(2) && frame.get(3) == Some(&0) {
                        accepted.set(true);
                        let session_present = frame.get(2).is_some_and(|f| f & 1 == 1);
                        let reconnect =
                            std::mem::replace(&mut wire.borrow_mut().connected_once, true);
                        let connection = *connections.borrow();
                        let _ = events
                            .send(Event {
                                at: Instant::now(),
                                connection,
                                kind: EventKind::ConnectComplete {
                                    reconnect,
                                    session_present,
                                },
                            })
                            .await;
                    }
                }
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    let ended_by = tokio::select! {
        () = up => "the client closed the connection",
        () = down => "the connection to the broker ended",
    };
    if accepted.get() {
        // Like the CONNACK, the end of an accepted connection is taken from the wire.
        let connection = *connections.borrow();
        let _ = events
            .send(Event {
                at: Instant::now(),
                connection,
                kind: EventKind::ConnectionLost {
                    cause: ClientError::Io(ended_by.into()),
                },
            })
            .await;
    }
}

/// The wire events of one packet the client wrote, as simqtt's own client reports them.
fn wire_event(wire: &Rc<RefCell<Wire>>, written: Written) -> Option<Vec<EventKind>> {
    let mut w = wire.borrow_mut();
    match written {
        Written::Publish {
            qos,
            dup,
            packet_id,
            payload,
        } => {
            let token = w
                .by_payload
                .get(&payload_id(&payload))
                .copied()
                .unwrap_or(0);
            let mut out = Vec::new();
            let packet = packet_id.and_then(NonZeroU16::new);
            if let Some(p) = packet {
                if w.by_packet.get(&p.get()) != Some(&token) || !w.packet_of.contains_key(&token) {
                    // First seen with this packet id: taken into the client's in-flight state.
                    w.by_packet.insert(p.get(), token);
                    w.packet_of.insert(token, p.get());
                    out.push(EventKind::PublishAccepted {
                        token,
                        packet_id: p,
                    });
                }
            }
            out.push(EventKind::PublishSent {
                token,
                packet_id: packet,
                qos: qos_of(qos),
                dup,
            });
            Some(out)
        }
        Written::PubRel { packet_id } => {
            let token = w.by_packet.get(&packet_id).copied().unwrap_or(0);
            Some(vec![EventKind::ReleaseSent {
                token,
                packet_id: NonZeroU16::new(packet_id)?,
            }])
        }
        Written::Connect { .. } | Written::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_and_publish_fields_read() {
        // PUBLISH QoS 1 DUP 1, topic "a/b", packet id 7, payload "app-1 ".
        let publish = [
            0x3A, // PUBLISH, DUP 1, QoS 1
            13,   // Remaining Length
            0x00, 0x03, b'a', b'/', b'b', // topic
            0x00, 0x07, // packet id
            b'a', b'p', b'p', b'-', b'1', b' ', // payload
        ];
        let pubrel = [0x62, 0x02, 0x00, 0x07]; // PUBREL, packet id 7
        let mut frames = Frames::default();
        assert!(frames.push(&publish[..5]).is_empty());
        let mut rest = publish[5..].to_vec();
        rest.extend_from_slice(&pubrel);
        let got = frames.push(&rest);
        assert_eq!(got.len(), 2);
        assert_eq!(
            read_written(&got[0], false),
            Written::Publish {
                qos: 1,
                dup: true,
                packet_id: Some(7),
                payload: b"app-1 ".to_vec()
            }
        );
        assert_eq!(
            read_written(&got[1], false),
            Written::PubRel { packet_id: 7 }
        );
        // 5.0: a properties length (here 0) sits before the payload.
        let v5 = [0x32, 8, 0x00, 0x01, b't', 0x00, 0x01, 0x00, b'x', b' '];
        assert_eq!(
            read_written(&v5, true),
            Written::Publish {
                qos: 1,
                dup: false,
                packet_id: Some(1),
                payload: b"x ".to_vec()
            }
        );
    }

    #[test]
    fn a_resend_is_one_flow_with_its_dup_flag() {
        let wire = Rc::new(RefCell::new(Wire::default()));
        wire.borrow_mut().by_payload.insert("app-1".into(), 5);
        let publish = |dup| Written::Publish {
            qos: 1,
            dup,
            packet_id: Some(9),
            payload: b"app-1".to_vec(),
        };
        let first = wire_event(&wire, publish(false)).unwrap();
        assert!(matches!(
            first[0],
            EventKind::PublishAccepted { token: 5, .. }
        ));
        assert!(matches!(
            first[1],
            EventKind::PublishSent {
                token: 5,
                dup: false,
                ..
            }
        ));
        let resend = wire_event(&wire, publish(true)).unwrap();
        assert_eq!(resend.len(), 1, "{resend:?}");
        assert!(matches!(
            resend[0],
            EventKind::PublishSent {
                token: 5,
                dup: true,
                ..
            }
        ));
    }
}
