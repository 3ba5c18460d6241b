//! Raw connections: the `raw` and `expect_raw` steps. A raw connection carries bytes the
//! runner writes itself, bypassing the simqtt client, so a scenario can send what no
//! conforming client sends (a second CONNECT, reserved flag bits, a wildcard in a PUBLISH
//! topic, QoS 3 …) and check what the broker does: the CONNACK code it answers, the DISCONNECT
//! reason, whether it closes the connection.
//!
//! The connection runs on the named client's host and is opened through the same connector
//! the client sessions use (turmoil TCP under the session's fault layer), so link and
//! connection faults reach it too, and a target that swaps the network swaps it here as well.
//! Everything it does goes into the trace (`raw_opened`, `raw_sent`, `raw_received`,
//! `raw_closed`), and each unmet expectation is reported against the statement it tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::world::{lock, HostCommand, SharedRef};
use super::{Failure, Runner, StepResult};
use crate::codec::{self, MqttStr, Packet, PacketType, ProtocolVersion};
use crate::history::Event;
use crate::scenario::raw::{ack_bytes, ack_send, parse_hex, send_bytes, ExpectRawStep, RawStep};
use crate::transport::fault::{FaultConnector, FaultControl};
use crate::transport::Connector;

/// How long a raw step waits for its connection to open and its bytes to be written.
const RAW_WAIT: Duration = Duration::from_secs(10);
/// Received packets kept per raw connection (a bound on a broker that floods).
const RECEIVED_MAX: usize = 1024;
/// Bytes of an undecodable packet shown in the trace.
const HEX_SHOWN_MAX: usize = 64;

/// A packet the broker sent on a raw connection, as the expectations compare it.
#[derive(Debug, Clone)]
pub struct RawPacket {
    /// `None`: the codec could not decode the bytes.
    pub packet_type: Option<PacketType>,
    pub reason: Option<u8>,
    pub session_present: Option<bool>,
    pub codes: Vec<u8>,
    pub packet_id: Option<u16>,
    /// PUBLISH only.
    pub publish: Option<(String, u8, bool, bool, Vec<u8>)>,
    /// The packet as it came off the wire.
    pub bytes: Vec<u8>,
    /// The 5.0 properties of `PROPERTY_NAMES` it carries.
    pub properties: Vec<&'static str>,
    /// A CONNACK's Server Keep Alive (5.0), in seconds.
    pub server_keep_alive: Option<u16>,
    /// A PUBLISH's Topic Alias (5.0).
    pub topic_alias: Option<u16>,
    pub summary: String,
    /// Its record in the trace.
    pub event: usize,
}

/// One client's raw connection, as the runner and the host's tasks share it.
#[derive(Default)]
pub struct RawConn {
    /// Connections opened so far; the current one's number.
    pub connection: u32,
    pub open: bool,
    /// The current connection ended (by the broker, or by the scenario).
    pub closed: bool,
    pub closed_by_broker: bool,
    /// Writes finished on the current connection.
    pub writes_done: u64,
    pub received: Vec<RawPacket>,
    /// Packets of `received` already matched by an `expect_raw`.
    pub consumed: usize,
    /// The packet (index into `received`) the latest `expect_raw` took, for `again`.
    pub last_taken: Option<usize>,
    writer: Option<mpsc::UnboundedSender<Vec<u8>>>,
    reader: Option<tokio::task::AbortHandle>,
}

/// The raw connections of a run, by client name.
#[derive(Default)]
pub struct RawState {
    pub connections: BTreeMap<String, RawConn>,
}

/// What the runner asks a client host to do with a raw connection.
pub enum RawCommand {
    /// Close the current connection (if any) and open a new one.
    Open {
        client: String,
    },
    Send {
        client: String,
        bytes: Vec<u8>,
        /// The bytes are the CONNECT `send: connect` built from the client's options: it
        /// carries the run's credentials (certify's `--username/--password`). A CONNECT the
        /// step wrote as hex goes as written (it may be testing credentials).
        credentials: bool,
    },
    Close {
        client: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes
        .iter()
        .take(HEX_SHOWN_MAX)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut out = shown.join(" ");
    if bytes.len() > HEX_SHOWN_MAX {
        out.push_str(&format!(" … ({} bytes)", bytes.len()));
    }
    out
}

/// The connector raw connections use: the one client sessions are given (`Shared::net`:
/// turmoil in the simulator, TCP to the host's fault proxy in certification), with a fault
/// layer that leaves the CONNECT as it is.
fn connector(inner: Arc<dyn Connector>, control: Arc<FaultControl>) -> Arc<dyn Connector> {
    Arc::new(FaultConnector {
        inner,
        control,
        on_connect: Box::new(|_| None),
    })
}

/// Runs a raw command on the client's host.
pub(super) fn handle(shared: &SharedRef, host: &str, command: RawCommand) {
    match command {
        RawCommand::Open { client } => {
            close(shared, host, &client);
            let (number, control, version, addr, inner) = {
                let mut s = lock(shared);
                let Some(session) = s.sessions.get(&client) else {
                    return;
                };
                let control = session.control.clone();
                let version = session.spec.protocol;
                // The host's own way to the broker (its fault proxy under certification).
                let addr = s.net.host_addrs.get(host).unwrap_or(&s.broker_addr).clone();
                let inner = s.net.connector.clone();
                let conn = s.raw.connections.entry(client.clone()).or_default();
                conn.connection += 1;
                conn.open = false;
                conn.closed = false;
                conn.closed_by_broker = false;
                conn.writes_done = 0;
                conn.received.clear();
                conn.consumed = 0;
                (conn.connection, control, version, addr, inner)
            };
            let shared = shared.clone();
            let host = host.to_string();
            tokio::task::spawn_local(async move {
                let connector = connector(inner, control);
                open(shared, host, client, number, connector, version, addr).await;
            });
        }
        RawCommand::Send {
            client,
            bytes,
            credentials,
        } => {
            let mut s = lock(shared);
            let bytes = prepare_connect(&s.net, bytes, credentials);
            let number = s.raw.connections.get(&client).map_or(0, |c| c.connection);
            let text = hex(&bytes);
            let sent = s
                .raw
                .connections
                .get(&client)
                .and_then(|c| c.writer.as_ref())
                .is_some_and(|w| w.send(bytes).is_ok());
            let event = if sent {
                Event::RawSent {
                    client: client.clone(),
                    connection: number,
                    bytes: text,
                }
            } else {
                Event::Note {
                    text: format!("raw: {client} has no open connection to send on"),
                }
            };
            s.record_now(host, event);
            if !sent {
                // Nothing will be written: count it done so the step does not wait.
                if let Some(c) = s.raw.connections.get_mut(&client) {
                    c.writes_done += 1;
                }
            }
        }
        RawCommand::Close { client } => close(shared, host, &client),
    }
}

/// A raw CONNECT as the run sends it. Under certification's isolation it carries the run's
/// wire client id, so its session is this run's alone (and ended after it) like every
/// session's; with `credentials` (a `send: connect`) it carries the run's username and
/// password. Any other bytes go out as written. A CONNECT is recognised only when the bytes
/// are exactly one well-formed CONNECT: a malformed one is the point of its step and is left
/// alone, and so is an empty client id (the point of its step: an assigned id, or refusal
/// 0x02 [MQTT-3.1.3-8]).
fn prepare_connect(net: &super::world::ClientNet, bytes: Vec<u8>, credentials: bool) -> Vec<u8> {
    let add_credentials = credentials && net.username.is_some();
    let acl_user = net.acl_user.as_ref().map(|(user, _)| user.as_str());
    if net.isolation.is_none() && !add_credentials && acl_user.is_none() {
        return bytes;
    }
    let buf = bytes::Bytes::from(bytes.clone());
    // A CONNECT is read in its own protocol version whatever `version` says.
    let Ok(Some((Packet::Connect(mut connect), used))) =
        codec::decode_slice(&buf, ProtocolVersion::V5, u32::MAX)
    else {
        return bytes;
    };
    if used != bytes.len() {
        return bytes;
    }
    if let Some(iso) = &net.isolation {
        if !connect.client_id.is_empty() {
            let Ok(id) = MqttStr::new(&iso.client_id(connect.client_id.as_str())) else {
                return bytes;
            };
            connect.client_id = id;
        }
    }
    let scram = connect.properties.authentication_method.as_deref() == Some(crate::scram::METHOD);
    if let (true, true, Some(user)) = (credentials, scram, acl_user) {
        // A `send: connect` of an `auth: scram` client: client-first names the run's ACL
        // user, and the credentials go through the exchange, not in CONNECT.
        connect.properties.authentication_data = Some(crate::scenario::raw::raw_client_first(user));
    } else if add_credentials && connect.username.is_none() {
        let Some(Ok(username)) = net.username.as_deref().map(MqttStr::new) else {
            return bytes;
        };
        connect.username = Some(username);
        connect.password = net.password.clone();
    }
    let protocol = connect.protocol;
    let mut out = BytesMut::new();
    match codec::encode(&Packet::Connect(connect), protocol, &mut out) {
        Ok(()) => out.to_vec(),
        Err(_) => bytes,
    }
}

/// The scenario closes the client's raw connection (if open).
fn close(shared: &SharedRef, host: &str, client: &str) {
    let mut s = lock(shared);
    let Some(conn) = s.raw.connections.get_mut(client) else {
        return;
    };
    let was_open = conn.open && !conn.closed;
    conn.writer = None;
    if let Some(reader) = conn.reader.take() {
        reader.abort();
    }
    conn.open = false;
    conn.closed = true;
    let number = conn.connection;
    if was_open {
        s.record_now(
            host,
            Event::RawClosed {
                client: client.to_string(),
                connection: number,
                by: "client".into(),
                detail: "the scenario closed it".into(),
            },
        );
    }
}

/// Whether `number` is still the client's live raw connection.
fn current(shared: &SharedRef, client: &str, number: u32) -> bool {
    lock(shared)
        .raw
        .connections
        .get(client)
        .is_some_and(|c| c.connection == number && !c.closed)
}

fn broker_closed(shared: &SharedRef, host: &str, client: &str, number: u32, detail: String) {
    let mut s = lock(shared);
    let Some(conn) = s.raw.connections.get_mut(client) else {
        return;
    };
    if conn.connection != number || conn.closed {
        return;
    }
    conn.closed = true;
    conn.closed_by_broker = true;
    conn.writer = None;
    s.record_now(
        host,
        Event::RawClosed {
            client: client.to_string(),
            connection: number,
            by: "broker".into(),
            detail,
        },
    );
}

async fn open(
    shared: SharedRef,
    host: String,
    client: String,
    number: u32,
    connector: Arc<dyn Connector>,
    version: ProtocolVersion,
    addr: String,
) {
    let stream = match connector.connect(&addr).await {
        Ok(stream) => stream,
        Err(e) => {
            broker_closed(
                &shared,
                &host,
                &client,
                number,
                format!("connect failed: {e}"),
            );
            return;
        }
    };
    if !current(&shared, &client, number) {
        return;
    }
    let (mut read, mut write) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_shared = shared.clone();
    let writer_client = client.clone();
    tokio::task::spawn_local(async move {
        while let Some(bytes) = rx.recv().await {
            let result = async {
                write.write_all(&bytes).await?;
                write.flush().await
            }
            .await;
            let mut s = lock(&writer_shared);
            if let Some(c) = s.raw.connections.get_mut(&writer_client) {
                if c.connection == number {
                    c.writes_done += 1;
                }
            }
            if result.is_err() {
                break;
            }
        }
        // The scenario closed the connection (or the broker did): our side ends too.
        let _ = write.shutdown().await;
    });
    let reader_shared = shared.clone();
    let reader_host = host.clone();
    let reader_client = client.clone();
    let reader = tokio::task::spawn_local(async move {
        let mut buf = BytesMut::with_capacity(1024);
        let mut decodable = true;
        loop {
            let read_result = read.read_buf(&mut buf).await;
            match read_result {
                Ok(0) => {
                    broker_closed(
                        &reader_shared,
                        &reader_host,
                        &reader_client,
                        number,
                        "end of stream".into(),
                    );
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    broker_closed(
                        &reader_shared,
                        &reader_host,
                        &reader_client,
                        number,
                        e.to_string(),
                    );
                    return;
                }
            }
            while decodable {
                let before = buf.clone();
                let mut decoded = codec::decode(&mut buf, version, codec::DEFAULT_MAX_PACKET_SIZE);
                // A broker that refuses a protocol level it does not speak may answer in the
                // 3.1.1 form every version can read (CONNACK 0x01): read it so.
                let mut old_form = false;
                if decoded.is_err()
                    && version == ProtocolVersion::V5
                    && before.starts_with(&[0x20, 0x02])
                {
                    let mut again = before.clone();
                    if let Ok(Some(packet)) = codec::decode(&mut again, ProtocolVersion::V311, 4) {
                        decoded = Ok(Some(packet));
                        buf = again;
                        old_form = true;
                    }
                }
                let packet = match decoded {
                    Ok(Some(packet)) if old_form => {
                        let mut p = received(&packet, ProtocolVersion::V311);
                        p.bytes = before[..before.len() - buf.len()].to_vec();
                        p.summary.push_str(" (3.1.1 form)");
                        p
                    }
                    Ok(Some(packet)) => {
                        let mut p = received(&packet, version);
                        p.bytes = before[..before.len() - buf.len()].to_vec();
                        p
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // No resynchronising after bytes the codec refuses: keep reading only
                        // to see the close.
                        decodable = false;
                        RawPacket {
                            packet_type: None,
                            reason: None,
                            session_present: None,
                            codes: Vec::new(),
                            packet_id: None,
                            publish: None,
                            bytes: buf.to_vec(),
                            properties: Vec::new(),
                            server_keep_alive: None,
                            topic_alias: None,
                            summary: format!("undecodable ({e}): {}", hex(&buf)),
                            event: 0,
                        }
                    }
                };
                record_received(&reader_shared, &reader_host, &reader_client, number, packet);
            }
            if !decodable {
                buf.clear();
            }
        }
    });
    let mut s = lock(&shared);
    let Some(conn) = s.raw.connections.get_mut(&client) else {
        reader.abort();
        return;
    };
    if conn.connection != number || conn.closed {
        reader.abort();
        return;
    }
    conn.open = true;
    conn.writer = Some(tx);
    conn.reader = Some(reader.abort_handle());
    s.record_now(
        &host,
        Event::RawOpened {
            client,
            connection: number,
        },
    );
}

fn record_received(shared: &SharedRef, host: &str, client: &str, number: u32, mut p: RawPacket) {
    let mut s = lock(shared);
    let live =
        s.raw.connections.get(client).is_some_and(|c| {
            c.connection == number && !c.closed && c.received.len() < RECEIVED_MAX
        });
    if !live {
        return;
    }
    p.event = s.trace.len();
    s.record_now(
        host,
        Event::RawReceived {
            client: client.to_string(),
            connection: number,
            packet: packet_name(p.packet_type).into(),
            summary: p.summary.clone(),
        },
    );
    if let Some(c) = s.raw.connections.get_mut(client) {
        c.received.push(p);
    }
}

fn packet_name(t: Option<PacketType>) -> &'static str {
    match t {
        None => "undecodable",
        Some(PacketType::Connect) => "connect",
        Some(PacketType::ConnAck) => "connack",
        Some(PacketType::Publish) => "publish",
        Some(PacketType::PubAck) => "puback",
        Some(PacketType::PubRec) => "pubrec",
        Some(PacketType::PubRel) => "pubrel",
        Some(PacketType::PubComp) => "pubcomp",
        Some(PacketType::Subscribe) => "subscribe",
        Some(PacketType::SubAck) => "suback",
        Some(PacketType::Unsubscribe) => "unsubscribe",
        Some(PacketType::UnsubAck) => "unsuback",
        Some(PacketType::PingReq) => "pingreq",
        Some(PacketType::PingResp) => "pingresp",
        Some(PacketType::Disconnect) => "disconnect",
        Some(PacketType::Auth) => "auth",
    }
}

/// The fields the expectations compare, read from a decoded packet. `received`, `mismatch`
/// and `describe` know nothing of turmoil: a runner over real TCP judges raw steps with them.
pub fn received(packet: &Packet, version: ProtocolVersion) -> RawPacket {
    let mut p = RawPacket {
        packet_type: Some(packet.packet_type()),
        reason: None,
        session_present: None,
        codes: Vec::new(),
        packet_id: None,
        publish: None,
        bytes: Vec::new(),
        properties: Vec::new(),
        server_keep_alive: None,
        topic_alias: None,
        summary: String::new(),
        event: 0,
    };
    if let Packet::ConnAck(c) = packet {
        p.server_keep_alive = c.properties.server_keep_alive_secs;
    }
    if let Packet::Publish(publish) = packet {
        p.topic_alias = publish.properties.topic_alias.map(|a| a.get());
    }
    let mut has = |present: bool, name: &'static str| {
        if present {
            p.properties.push(name);
        }
    };
    match packet {
        Packet::ConnAck(c) => {
            has(
                c.properties.session_expiry_interval_secs.is_some(),
                "session_expiry_interval",
            );
            has(
                c.properties.response_information.is_some(),
                "response_information",
            );
            has(
                c.properties.server_keep_alive_secs.is_some(),
                "server_keep_alive",
            );
            has(c.properties.reason_string.is_some(), "reason_string");
            has(!c.properties.user_properties.is_empty(), "user_property");
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            has(a.properties.reason_string.is_some(), "reason_string");
            has(!a.properties.user_properties.is_empty(), "user_property");
        }
        Packet::SubAck(a) => {
            has(a.properties.reason_string.is_some(), "reason_string");
            has(!a.properties.user_properties.is_empty(), "user_property");
        }
        Packet::UnsubAck(a) => {
            has(a.properties.reason_string.is_some(), "reason_string");
            has(!a.properties.user_properties.is_empty(), "user_property");
        }
        Packet::Publish(m) => {
            has(m.properties.topic_alias.is_some(), "topic_alias");
            has(!m.properties.user_properties.is_empty(), "user_property");
        }
        Packet::Disconnect(d) => {
            has(
                d.properties.session_expiry_interval_secs.is_some(),
                "session_expiry_interval",
            );
            has(d.properties.reason_string.is_some(), "reason_string");
            has(!d.properties.user_properties.is_empty(), "user_property");
        }
        Packet::Auth(a) => {
            has(a.properties.reason_string.is_some(), "reason_string");
            has(!a.properties.user_properties.is_empty(), "user_property");
        }
        _ => {}
    }
    match packet {
        Packet::ConnAck(c) => {
            let code = match version {
                ProtocolVersion::V311 => c
                    .reason_code
                    .to_v311_connack()
                    .unwrap_or(c.reason_code.as_u8()),
                ProtocolVersion::V5 => c.reason_code.as_u8(),
            };
            p.reason = Some(code);
            p.session_present = Some(c.session_present);
            p.summary = format!(
                "session_present={} reason=0x{code:02x}",
                u8::from(c.session_present)
            );
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            p.reason = Some(a.reason_code.as_u8());
            p.packet_id = Some(a.packet_id.get());
            p.summary = format!(
                "packet_id={} reason=0x{:02x}",
                a.packet_id,
                a.reason_code.as_u8()
            );
        }
        Packet::SubAck(a) => {
            p.packet_id = Some(a.packet_id.get());
            p.codes = a.reason_codes.iter().map(|c| c.as_u8()).collect();
            p.summary = format!("packet_id={} codes={}", a.packet_id, hex(&p.codes));
        }
        Packet::UnsubAck(a) => {
            p.packet_id = Some(a.packet_id.get());
            p.codes = a.reason_codes.iter().map(|c| c.as_u8()).collect();
            p.summary = format!("packet_id={} codes={}", a.packet_id, hex(&p.codes));
        }
        Packet::Publish(m) => {
            p.packet_id = m.packet_id().map(|id| id.get());
            p.publish = Some((
                m.topic.as_str().to_string(),
                m.qos().as_u8(),
                m.retain,
                m.dup,
                m.payload.to_vec(),
            ));
            p.summary = format!(
                "topic={:?} qos={} retain={} dup={} payload={:?}",
                m.topic.as_str(),
                m.qos().as_u8(),
                u8::from(m.retain),
                u8::from(m.dup),
                String::from_utf8_lossy(&m.payload[..m.payload.len().min(HEX_SHOWN_MAX)])
            );
        }
        Packet::Disconnect(d) => {
            p.reason = Some(d.reason_code.as_u8());
            p.summary = format!("reason=0x{:02x}", d.reason_code.as_u8());
        }
        Packet::Auth(a) => {
            p.reason = Some(a.reason_code.as_u8());
            p.summary = format!("reason=0x{:02x}", a.reason_code.as_u8());
        }
        Packet::PingResp
        | Packet::PingReq
        | Packet::Connect(_)
        | Packet::Subscribe(_)
        | Packet::Unsubscribe(_) => {}
    }
    p
}

/// What one received packet looks like against an expectation: `None` when it matches
/// (`bytes` must be set by the caller: `received` has only the decoded packet).
pub fn mismatch(x: &ExpectRawStep, p: &RawPacket) -> Option<String> {
    let want = x.packet.and_then(|k| k.kind())?;
    let got = packet_name(p.packet_type);
    if p.packet_type != Some(want.packet_type()) {
        return Some(format!("{got} {}", p.summary));
    }
    let mut wrong = Vec::new();
    if let Some(r) = x.reason {
        if p.reason != Some(r) {
            wrong.push(format!("reason 0x{r:02x}"));
        }
    }
    if !x.reasons.is_empty() && !p.reason.is_some_and(|r| x.reasons.contains(&r)) {
        let list: Vec<String> = x.reasons.iter().map(|r| format!("0x{r:02x}")).collect();
        wrong.push(format!("reason one of {}", list.join(", ")));
    }
    if let Some(sp) = x.session_present {
        if p.session_present != Some(sp) {
            wrong.push(format!("session_present {}", u8::from(sp)));
        }
    }
    if let Some(codes) = &x.codes {
        if &p.codes != codes {
            wrong.push(format!("codes {}", hex(codes)));
        }
    }
    if let Some(id) = x.packet_id {
        if p.packet_id != Some(id) {
            wrong.push(format!("packet_id {id}"));
        }
    }
    if let Some((topic, qos, retain, dup, payload)) = &p.publish {
        if x.topic.as_ref().is_some_and(|t| t != topic) {
            wrong.push(format!(
                "topic {:?}",
                x.topic.as_deref().unwrap_or_default()
            ));
        }
        if x.qos.is_some_and(|q| q.as_u8() != *qos) {
            wrong.push(format!("qos {}", x.qos.map_or(0, |q| q.as_u8())));
        }
        if x.retain.is_some_and(|r| r != *retain) {
            wrong.push(format!("retain {}", u8::from(!*retain)));
        }
        if x.dup.is_some_and(|d| d != *dup) {
            wrong.push(format!("dup {}", u8::from(!*dup)));
        }
        if x.payload
            .as_ref()
            .is_some_and(|want| want.as_bytes() != payload.as_slice())
        {
            wrong.push(format!(
                "payload {:?}",
                x.payload.as_deref().unwrap_or_default()
            ));
        }
    }
    if let (Some(max), Some(alias)) = (x.topic_alias_max, p.topic_alias) {
        if alias > max {
            wrong.push(format!(
                "no Topic Alias or one of at most {max} (it is {alias})"
            ));
        }
    }
    if let Some(max) = x.max_len {
        if p.bytes.len() as u64 > u64::from(max) {
            wrong.push(format!("at most {max} bytes, not {}", p.bytes.len()));
        }
    }
    for name in &x.absent {
        if p.properties.contains(&name.as_str()) {
            wrong.push(format!("no {name} property"));
        }
    }
    if let (Some(bounds), Some(secs)) = (&x.server_keep_alive, p.server_keep_alive) {
        if !bounds.admits(secs) {
            let mut range = Vec::new();
            if let Some(min) = bounds.min {
                range.push(format!("at least {min}"));
            }
            if let Some(max) = bounds.max {
                range.push(format!("at most {max}"));
            }
            wrong.push(format!(
                "no Server Keep Alive, or one of {} (it is {secs}s)",
                range.join(" and ")
            ));
        }
    }
    for entry in &x.contains {
        let found = entry
            .split('|')
            .filter_map(|h| parse_hex(h).ok())
            .any(|want| {
                !want.is_empty() && p.bytes.windows(want.len()).any(|w| w == want.as_slice())
            });
        if !found {
            wrong.push(format!("bytes containing {entry}"));
        }
    }
    (!wrong.is_empty()).then(|| format!("{got} {} (wanted {})", p.summary, wrong.join(", ")))
}

pub fn describe(x: &ExpectRawStep) -> String {
    let mut parts = Vec::new();
    if let Some(p) = x.packet {
        let mut text = match p.kind() {
            Some(k) if x.optional => format!("nothing or {}", k.as_str().to_uppercase()),
            Some(k) => k.as_str().to_uppercase(),
            None => "no packet".into(),
        };
        if let Some(r) = x.reason {
            text.push_str(&format!(" reason 0x{r:02x}"));
        }
        if !x.reasons.is_empty() {
            let list: Vec<String> = x.reasons.iter().map(|r| format!("0x{r:02x}")).collect();
            text.push_str(&format!(" reason one of {}", list.join("/")));
        }
        if let Some(sp) = x.session_present {
            text.push_str(&format!(" session_present {}", u8::from(sp)));
        }
        if let Some(codes) = &x.codes {
            text.push_str(&format!(" codes {}", hex(codes)));
        }
        if let Some(id) = x.packet_id {
            text.push_str(&format!(" packet_id {id}"));
        }
        if let Some(t) = &x.topic {
            text.push_str(&format!(" topic {t:?}"));
        }
        if let Some(q) = x.qos {
            text.push_str(&format!(" qos {}", q.as_u8()));
        }
        if let Some(r) = x.retain {
            text.push_str(&format!(" retain {}", u8::from(r)));
        }
        if let Some(d) = x.dup {
            text.push_str(&format!(" dup {}", u8::from(d)));
        }
        if let Some(p) = &x.payload {
            text.push_str(&format!(" payload {p:?}"));
        }
        for c in &x.contains {
            text.push_str(&format!(" containing {c}"));
        }
        for a in &x.absent {
            text.push_str(&format!(" without {a}"));
        }
        if let Some(max) = x.max_len {
            text.push_str(&format!(" of at most {max} bytes"));
        }
        if let Some(max) = x.topic_alias_max {
            text.push_str(&format!(" with no Topic Alias or one of at most {max}"));
        }
        if let Some(b) = &x.server_keep_alive {
            text.push_str(" with no Server Keep Alive, or one");
            if let Some(min) = b.min {
                text.push_str(&format!(" of at least {min}"));
            }
            if let Some(max) = b.max {
                text.push_str(&format!(" of at most {max}"));
            }
        }
        if x.again {
            text.push_str(" (the packet the previous expect_raw took)");
        }
        parts.push(text);
    }
    match x.closed {
        Some(true) => parts.push("the broker closes the connection".into()),
        Some(false) => parts.push("the connection stays open".into()),
        None => {}
    }
    format!("{} within {}", parts.join(", then "), x.within)
}

impl<B: super::backend::Backend> Runner<B> {
    fn raw_conn<T>(&self, client: &str, f: impl FnOnce(&RawConn) -> T) -> Option<T> {
        lock(&self.shared).raw.connections.get(client).map(f)
    }

    fn raw_command(&self, client: &str, command: RawCommand) -> StepResult {
        self.send(client, HostCommand::Raw(command))
    }

    /// The `raw` step: open (or reopen) the connection, write the bytes, close if asked.
    pub(super) fn raw_step(&mut self, i: usize, step: &RawStep) -> StepResult {
        let usable = self
            .raw_conn(&step.client, |c| c.open && !c.closed)
            .unwrap_or(false);
        if step.new_connection || (!usable && step.send.is_some()) {
            let before = self.raw_conn(&step.client, |c| c.connection).unwrap_or(0);
            self.raw_command(
                &step.client,
                RawCommand::Open {
                    client: step.client.clone(),
                },
            )?;
            let name = step.client.clone();
            let opened = self.run_until(RAW_WAIT, move |s| {
                s.raw
                    .connections
                    .get(&name)
                    .is_some_and(|c| c.connection > before && (c.open || c.closed))
            })?;
            let open = self
                .raw_conn(&step.client, |c| c.open && !c.closed)
                .unwrap_or(false);
            if !opened || !open {
                return Err(format!(
                    "step {} (raw): {} could not open a raw connection to the broker",
                    i + 1,
                    step.client
                ));
            }
        }
        if let Some(send) = &step.send {
            let spec = lock(&self.shared)
                .sessions
                .get(&step.client)
                .map(|s| s.spec.clone())
                .ok_or_else(|| format!("no client {:?}", step.client))?;
            let credentials = send.trim() == "connect";
            let bytes = if let Some(wrong) = crate::scenario::raw::scram_client_final(send) {
                let latest_auth = self
                    .raw_conn(&step.client, |c| {
                        c.received
                            .iter()
                            .rev()
                            .find(|p| p.packet_type == Some(PacketType::Auth))
                            .map(|p| p.bytes.clone())
                    })
                    .flatten()
                    .ok_or_else(|| {
                        format!(
                            "step {} (raw): scram_client_final answers the broker's AUTH, and {} received none",
                            i + 1,
                            step.client
                        )
                    })?;
                let server_first = match codec::decode_slice(
                    &bytes::Bytes::from(latest_auth),
                    ProtocolVersion::V5,
                    u32::MAX,
                ) {
                    Ok(Some((Packet::Auth(auth), _))) => auth
                        .properties
                        .authentication_data
                        .clone()
                        .unwrap_or_default(),
                    _ => bytes::Bytes::new(),
                };
                let (username, password) =
                    lock(&self.shared).net.acl_user.clone().unwrap_or_else(|| {
                        (
                            crate::scenario::SIM_ACL.username.to_string(),
                            bytes::Bytes::from_static(crate::scenario::SIM_ACL.password.as_bytes()),
                        )
                    });
                let password: &[u8] = if wrong {
                    b"not-the-password"
                } else {
                    &password
                };
                crate::scenario::raw::scram_client_final_bytes(&server_first, &username, password)
                    .map_err(|e| format!("step {} (raw): {e}", i + 1))?
            } else if let Some(ack) = ack_send(send) {
                let (name, reason) = ack.map_err(|e| format!("step {} (raw): {e}", i + 1))?;
                // Acknowledge the latest packet the broker sent that this one answers.
                let answers = match name {
                    "puback" | "pubrec" => PacketType::Publish,
                    "pubrel" => PacketType::PubRec,
                    _ => PacketType::PubRel,
                };
                let id = self
                    .raw_conn(&step.client, |c| {
                        c.received
                            .iter()
                            .rev()
                            .find(|p| p.packet_type == Some(answers))
                            .and_then(|p| p.packet_id)
                    })
                    .flatten()
                    .ok_or_else(|| {
                        format!(
                            "step {} (raw): {name} answers a packet with an identifier, and {} received none",
                            i + 1,
                            step.client
                        )
                    })?;
                ack_bytes(name, id, reason).unwrap_or_default()
            } else {
                send_bytes(send, &step.client, &spec)
                    .map_err(|e| format!("step {} (raw): {e}", i + 1))?
            };
            let before = self.raw_conn(&step.client, |c| c.writes_done).unwrap_or(0);
            self.raw_command(
                &step.client,
                RawCommand::Send {
                    client: step.client.clone(),
                    bytes,
                    credentials,
                },
            )?;
            let name = step.client.clone();
            self.run_until(RAW_WAIT, move |s| {
                s.raw
                    .connections
                    .get(&name)
                    .is_none_or(|c| c.writes_done > before || c.closed)
            })?;
        }
        if step.close {
            self.raw_command(
                &step.client,
                RawCommand::Close {
                    client: step.client.clone(),
                },
            )?;
            self.step()?;
        }
        Ok(())
    }

    /// The `expect_raw` step.
    pub(super) fn expect_raw(&mut self, i: usize, x: &ExpectRawStep) -> StepResult {
        let end = self.backend.elapsed() + x.within.as_duration();
        let remaining = |runner: &Self| end.saturating_sub(runner.backend.elapsed());
        let name = x.client.clone();
        let pending = move |s: &super::world::Shared| -> (bool, bool) {
            s.raw
                .connections
                .get(&name)
                .map_or((false, true), |c| (c.received.len() > c.consumed, c.closed))
        };
        let mut problem: Option<(String, Vec<usize>)> = None;
        if x.again {
            // The packet the previous expect_raw of this client took (none: it took nothing,
            // an optional packet that did not come, and there is nothing to look at again).
            let taken = self.raw_conn(&x.client, |c| {
                c.last_taken.and_then(|i| c.received.get(i).cloned())
            });
            if let Some(got) = taken.flatten() {
                if let Some(text) = mismatch(x, &got) {
                    problem = Some((format!("got {text}"), vec![got.event]));
                }
            }
            if let Some((happened, events)) = problem {
                self.raw_failure(i, x, happened, events)?;
            }
            return Ok(());
        }
        if let Some(c) = lock(&self.shared).raw.connections.get_mut(&x.client) {
            c.last_taken = None;
        }
        if let Some(packet) = x.packet {
            let p = pending.clone();
            match packet.kind() {
                Some(_) => {
                    self.run_until(remaining(self), move |s| {
                        let (waiting, closed) = p(s);
                        waiting || closed
                    })?;
                    let next = self.raw_conn(&x.client, |c| c.received.get(c.consumed).cloned());
                    match next.flatten() {
                        Some(got) => {
                            if let Some(c) = lock(&self.shared).raw.connections.get_mut(&x.client) {
                                c.last_taken = Some(c.consumed);
                                c.consumed += 1;
                            }
                            if let Some(text) = mismatch(x, &got) {
                                problem = Some((format!("got {text}"), vec![got.event]));
                            }
                        }
                        None => {
                            let closed = self.raw_conn(&x.client, |c| c.closed).unwrap_or(true);
                            // Optional: nothing arriving is no failure of the packet; with
                            // `closed: true` the close is still owed (checked below, and
                            // reported as the connection still open).
                            if !x.optional {
                                problem = Some((
                                    if closed {
                                        "the connection closed without it".into()
                                    } else {
                                        "nothing arrived".into()
                                    },
                                    vec![],
                                ));
                            }
                        }
                    }
                }
                None => {
                    let until_close = x.closed == Some(true);
                    self.run_until(remaining(self), move |s| {
                        let (waiting, closed) = p(s);
                        waiting || (until_close && closed)
                    })?;
                    let got = self.raw_conn(&x.client, |c| c.received.get(c.consumed).cloned());
                    if let Some(got) = got.flatten() {
                        problem = Some((
                            format!("got {} {}", packet_name(got.packet_type), got.summary),
                            vec![got.event],
                        ));
                    }
                }
            }
        }
        if problem.is_none() {
            match x.closed {
                Some(true) => {
                    let name = x.client.clone();
                    let closed = self.run_until(remaining(self), move |s| {
                        s.raw.connections.get(&name).is_none_or(|c| c.closed)
                    })?;
                    if !closed {
                        problem = Some(("the connection was still open".into(), vec![]));
                    }
                }
                Some(false) => {
                    let wait = remaining(self);
                    self.run_for(wait)?;
                    let by_broker = self
                        .raw_conn(&x.client, |c| c.closed_by_broker)
                        .unwrap_or(false);
                    if by_broker {
                        problem = Some(("the broker closed the connection".into(), vec![]));
                    }
                }
                None => {}
            }
        }
        if let Some((happened, events)) = problem {
            self.raw_failure(i, x, happened, events)?;
        }
        Ok(())
    }

    /// Records a failed `expect_raw`; a failed premise (`assume`) ends the run instead.
    fn raw_failure(
        &mut self,
        i: usize,
        x: &ExpectRawStep,
        happened: String,
        events: Vec<usize>,
    ) -> StepResult {
        let owed = describe(x);
        if x.assume {
            // Not the broker's obligation: what follows assumes it, so nothing after it can
            // be judged. The run stops and is inconclusive (never a finding, never a pass).
            self.unconfirmed.push(super::Unconfirmed {
                step: Some(i),
                fault: "expect_raw premise".into(),
                reason: format!(
                    "the scenario assumes {owed}; {happened}; the steps after it were not run"
                ),
                nemesis: false,
            });
            return Err(super::PREMISE_FAILED.into());
        }
        let (spec, shown) = self.cited(i);
        let report = {
            let s = lock(&self.shared);
            let mut indices = events;
            if indices.is_empty() {
                if let Some(last) = s.trace.records.iter().rposition(|r| {
                    r.event.client() == Some(x.client.as_str())
                        && matches!(
                            r.event,
                            Event::RawSent { .. }
                                | Event::RawReceived { .. }
                                | Event::RawClosed { .. }
                        )
                }) {
                    indices.push(last);
                }
            }
            let mut report = format!(
                "step {} (expect_raw){shown} {}:\n  owed:     {owed}\n  happened: {happened}\n",
                i + 1,
                x.client
            );
            report.push_str(&s.trace.excerpt(&indices, 3));
            report
        };
        let at = self.now_ms();
        lock(&self.shared).record(
            at,
            "sim",
            Event::Note {
                text: format!(
                    "expectation failed: step {} (expect_raw){shown}: {owed}; {happened}",
                    i + 1
                ),
            },
        );
        self.failures.push(Failure {
            kind: "expect".into(),
            spec,
            owed: format!("step {} (expect_raw): {owed}", i + 1),
            happened,
            text: report,
        });
        Ok(())
    }
}
