//! Persistence of the client's in-flight state: outgoing QoS 1/2 publishes not yet completed
//! (and whether PUBREL was sent), and incoming QoS 2 packet ids held until PUBREL.
//!
//! The state machine emits `PersistOp`s; a `Persistence` applies them before the packets they
//! describe are written, so after a crash the file never lags behind the wire. Two impls:
//! `MemoryPersistence` (survives reconnects, not restarts) and `FilePersistence`, an append-only
//! log of checksummed records over the `FileSystem` seam, so it runs on the real disk and on
//! turmoil's simulated one (where unsynced writes vanish when the host crashes).
//!
//! File format (little endian):
//! ```text
//! header  "SQCLINF1"                                  8 bytes
//! record  len: u32 | crc32(body): u32 | body[len]     repeated
//! body    tag: u8, then
//!   1 Outgoing          id: u16, qos: u8, flags: u8 (1 retain, 2 released),
//!                       topic_len: u16, topic, payload_len: u32, payload
//!   2 Released          id: u16
//!   3 Completed         id: u16
//!   4 IncomingQos2      id: u16
//!   5 IncomingReleased  id: u16
//!   6 ClearIncoming
//!   7 Outgoing with 5.0 properties
//!                       flags: u8 (2 released), then the message as a 5.0 PUBLISH packet
//!                       (packet id, QoS, retain, topic, properties, payload)
//! ```
//! A publish without properties is written as tag 1, so logs without 5.0 properties keep
//! the format earlier versions read.
//! A record that is cut short or fails its checksum ends the log: it and everything after it
//! are dropped with a warning (a torn write of the last append is the expected crash shape),
//! never a refusal to start. Loading rewrites the file as a compact snapshot, and so does an
//! append once the log holds many more records than live entries.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::codec::{
    PacketId, PropertyBox, ProtocolVersion, Publish, PublishProperties, QoS, QosPid, TopicName,
};
use crate::store::fs::{AppendFile, SharedFs};

/// An outgoing QoS 1/2 publish whose flow has not completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPublish {
    pub packet_id: PacketId,
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// QoS 2 only: PUBREC arrived and PUBREL was sent; what is resent is PUBREL.
    pub released: bool,
    /// 5.0 properties the application gave (the topic alias is applied per connection).
    pub properties: PropertyBox<PublishProperties>,
}

/// One change to the persisted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistOp {
    Outgoing(StoredPublish),
    Released(PacketId),
    Completed(PacketId),
    IncomingQos2(PacketId),
    IncomingReleased(PacketId),
    /// The broker has no session: incoming QoS 2 ids no longer mean anything.
    ClearIncoming,
}

/// The persisted state: the fold of every `PersistOp` so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientDurable {
    /// Keyed by insertion order, which is the order to resend in [MQTT-4.6.0-1].
    outgoing: BTreeMap<u64, StoredPublish>,
    order: BTreeMap<PacketId, u64>,
    next_seq: u64,
    pub incoming_qos2: BTreeSet<PacketId>,
}

impl ClientDurable {
    pub fn apply(&mut self, op: &PersistOp) {
        match op {
            PersistOp::Outgoing(publish) => {
                if let Some(old) = self.order.remove(&publish.packet_id) {
                    self.outgoing.remove(&old);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.order.insert(publish.packet_id, seq);
                self.outgoing.insert(seq, publish.clone());
            }
            PersistOp::Released(id) => {
                if let Some(entry) = self.order.get(id).and_then(|s| self.outgoing.get_mut(s)) {
                    entry.released = true;
                }
            }
            PersistOp::Completed(id) => {
                if let Some(seq) = self.order.remove(id) {
                    self.outgoing.remove(&seq);
                }
            }
            PersistOp::IncomingQos2(id) => {
                self.incoming_qos2.insert(*id);
            }
            PersistOp::IncomingReleased(id) => {
                self.incoming_qos2.remove(id);
            }
            PersistOp::ClearIncoming => self.incoming_qos2.clear(),
        }
    }

    /// Outgoing publishes in the order they were first accepted.
    pub fn outgoing(&self) -> impl Iterator<Item = &StoredPublish> {
        self.outgoing.values()
    }

    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// The ops that rebuild this state from nothing (a snapshot).
    pub fn snapshot_ops(&self) -> Vec<PersistOp> {
        let mut ops: Vec<PersistOp> = self.outgoing().cloned().map(PersistOp::Outgoing).collect();
        ops.extend(
            self.incoming_qos2
                .iter()
                .copied()
                .map(PersistOp::IncomingQos2),
        );
        ops
    }
}

/// What `open` found.
#[derive(Debug, Default)]
pub struct Restored {
    pub state: ClientDurable,
    /// Problems that were survived, e.g. a torn tail that was dropped.
    pub warnings: Vec<String>,
}

/// Where in-flight state lives.
pub trait Persistence: Send + 'static {
    /// Loads what an earlier run left. Damage is reported in `warnings`, not as an error;
    /// an error means the storage itself is unusable.
    fn open(&mut self) -> io::Result<Restored>;
    /// Applies `ops` durably, in order.
    fn apply(&mut self, ops: &[PersistOp]) -> io::Result<()>;
}

/// Keeps state in memory: survives reconnects (and reuse of this object), not a restart.
#[derive(Debug, Default)]
pub struct MemoryPersistence {
    state: ClientDurable,
}

impl MemoryPersistence {
    pub fn new() -> MemoryPersistence {
        MemoryPersistence::default()
    }

    pub fn state(&self) -> &ClientDurable {
        &self.state
    }
}

impl Persistence for MemoryPersistence {
    fn open(&mut self) -> io::Result<Restored> {
        Ok(Restored {
            state: self.state.clone(),
            warnings: Vec::new(),
        })
    }

    fn apply(&mut self, ops: &[PersistOp]) -> io::Result<()> {
        for op in ops {
            self.state.apply(op);
        }
        Ok(())
    }
}

const MAGIC: &[u8; 8] = b"SQCLINF1";
/// A bound on one record: the largest MQTT payload plus the largest topic and a little.
const RECORD_MAX_LEN: u32 = 268_435_455 + 65_535 + 16;
/// Compaction threshold: rewrite when the log holds this many records more than live entries.
const COMPACT_SLACK_RECORDS: usize = 256;

/// An append-only checksummed log in `dir`, one file per client id.
pub struct FilePersistence {
    fs: SharedFs,
    path: PathBuf,
    file: Option<Box<dyn AppendFile>>,
    state: ClientDurable,
    records_in_log: usize,
}

impl FilePersistence {
    pub fn new(fs: SharedFs, dir: impl AsRef<Path>, client_id: &str) -> FilePersistence {
        // Client ids may hold any character; keep the file name portable and unambiguous.
        let mut name = String::from("client-");
        for b in client_id.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(b as char);
            } else {
                name.push_str(&format!("%{b:02x}"));
            }
        }
        name.push_str(".inflight");
        FilePersistence {
            fs,
            path: dir.as_ref().join(name),
            file: None,
            state: ClientDurable::default(),
            records_in_log: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn compact(&mut self) -> io::Result<()> {
        let ops = self.state.snapshot_ops();
        let mut data = MAGIC.to_vec();
        for op in &ops {
            encode_record(op, &mut data);
        }
        // Close the appender first: its file is about to be replaced.
        self.file = None;
        self.fs.write_atomic(&self.path, &data)?;
        self.file = Some(self.fs.open_append(&self.path)?);
        self.records_in_log = ops.len();
        Ok(())
    }
}

impl Persistence for FilePersistence {
    fn open(&mut self) -> io::Result<Restored> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            self.fs.create_dir_all(dir)?;
        }
        let mut warnings = Vec::new();
        let mut state = ClientDurable::default();
        if let Some(data) = self.fs.read(&self.path)? {
            let (ops, problem) = decode_log(&data);
            for op in &ops {
                state.apply(op);
            }
            if let Some(problem) = problem {
                warnings.push(format!(
                    "{}: {problem}; kept {} records before it",
                    self.path.display(),
                    ops.len()
                ));
            }
        }
        self.state = state.clone();
        self.compact()?;
        Ok(Restored { state, warnings })
    }

    fn apply(&mut self, ops: &[PersistOp]) -> io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.compact()?;
        }
        let mut data = Vec::new();
        for op in ops {
            encode_record(op, &mut data);
            self.state.apply(op);
        }
        let file = self.file.as_mut().expect("compact opened the log");
        file.append(&data)?;
        file.sync()?;
        self.records_in_log += ops.len();
        let live = self.state.outgoing_len() + self.state.incoming_qos2.len();
        if self.records_in_log > live * 2 + COMPACT_SLACK_RECORDS {
            self.compact()?;
        }
        Ok(())
    }
}

fn encode_record(op: &PersistOp, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    match op {
        PersistOp::Outgoing(p) if !p.properties.is_empty() => {
            body.push(7);
            body.push(u8::from(p.released) << 1);
            let packet = crate::codec::Packet::Publish(Publish {
                dup: false,
                qos_pid: QosPid::new(p.qos, Some(p.packet_id)).expect("QoS 1/2 with an id"),
                retain: p.retain,
                topic: p.topic.clone(),
                properties: p.properties.clone(),
                payload: p.payload.clone(),
            });
            let mut wire = bytes::BytesMut::new();
            // It was encodable when accepted; an error here would be a codec bug, and an
            // undecodable record ends the log on load with a warning rather than a crash.
            let _ = crate::codec::encode(&packet, ProtocolVersion::V5, &mut wire);
            body.extend_from_slice(&wire);
        }
        PersistOp::Outgoing(p) => {
            body.push(1);
            body.extend_from_slice(&p.packet_id.get().to_le_bytes());
            body.push(p.qos.as_u8());
            body.push(u8::from(p.retain) | (u8::from(p.released) << 1));
            body.extend_from_slice(&(p.topic.len() as u16).to_le_bytes());
            body.extend_from_slice(p.topic.as_str().as_bytes());
            body.extend_from_slice(&(p.payload.len() as u32).to_le_bytes());
            body.extend_from_slice(&p.payload);
        }
        PersistOp::Released(id) => id_body(2, *id, &mut body),
        PersistOp::Completed(id) => id_body(3, *id, &mut body),
        PersistOp::IncomingQos2(id) => id_body(4, *id, &mut body),
        PersistOp::IncomingReleased(id) => id_body(5, *id, &mut body),
        PersistOp::ClearIncoming => body.push(6),
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

fn id_body(tag: u8, id: PacketId, body: &mut Vec<u8>) {
    body.push(tag);
    body.extend_from_slice(&id.get().to_le_bytes());
}

/// The ops of a log up to the first damaged record, and what the damage was.
fn decode_log(data: &[u8]) -> (Vec<PersistOp>, Option<String>) {
    let mut ops = Vec::new();
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return (ops, Some("not an in-flight log (bad header)".to_string()));
    }
    let mut at = MAGIC.len();
    while at < data.len() {
        let Some(header) = data.get(at..at + 8) else {
            return (ops, Some(format!("record header torn at byte {at}")));
        };
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if len > RECORD_MAX_LEN {
            return (
                ops,
                Some(format!("record length {len} at byte {at} too large")),
            );
        }
        let Some(body) = data.get(at + 8..at + 8 + len as usize) else {
            return (ops, Some(format!("record torn at byte {at}")));
        };
        if crc32fast::hash(body) != crc {
            return (ops, Some(format!("checksum mismatch at byte {at}")));
        }
        match decode_body(body) {
            Some(op) => ops.push(op),
            None => return (ops, Some(format!("undecodable record at byte {at}"))),
        }
        at += 8 + len as usize;
    }
    (ops, None)
}

fn decode_body(body: &[u8]) -> Option<PersistOp> {
    let (&tag, rest) = body.split_first()?;
    let id = || {
        let bytes: [u8; 2] = rest.get(0..2)?.try_into().ok()?;
        PacketId::new(u16::from_le_bytes(bytes))
    };
    Some(match tag {
        1 => {
            let packet_id = id()?;
            let qos = QoS::from_u8(*rest.get(2)?).filter(|q| *q != QoS::AtMostOnce)?;
            let flags = *rest.get(3)?;
            let topic_len = u16::from_le_bytes(rest.get(4..6)?.try_into().ok()?) as usize;
            let topic = std::str::from_utf8(rest.get(6..6 + topic_len)?).ok()?;
            let topic = TopicName::new(topic).ok()?;
            let at = 6 + topic_len;
            let payload_len = u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize;
            let payload = rest.get(at + 4..at + 4 + payload_len)?;
            PersistOp::Outgoing(StoredPublish {
                packet_id,
                topic,
                payload: Bytes::copy_from_slice(payload),
                qos,
                retain: flags & 1 != 0,
                released: flags & 2 != 0,
                properties: PropertyBox::none(),
            })
        }
        7 => {
            let flags = *rest.first()?;
            let wire = Bytes::copy_from_slice(rest.get(1..)?);
            let (packet, used) = crate::codec::decode_slice(
                &wire,
                ProtocolVersion::V5,
                crate::codec::DEFAULT_MAX_PACKET_SIZE,
            )
            .ok()??;
            let crate::codec::Packet::Publish(p) = packet else {
                return None;
            };
            if used != wire.len() || p.topic.is_empty() {
                return None;
            }
            PersistOp::Outgoing(StoredPublish {
                packet_id: p.qos_pid.packet_id()?,
                qos: p.qos_pid.qos(),
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
                released: flags & 2 != 0,
                properties: p.properties,
            })
        }
        2 => PersistOp::Released(id()?),
        3 => PersistOp::Completed(id()?),
        4 => PersistOp::IncomingQos2(id()?),
        5 => PersistOp::IncomingReleased(id()?),
        6 => PersistOp::ClearIncoming,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::fs::StdFs;

    fn pid(n: u16) -> PacketId {
        PacketId::new(n).unwrap()
    }

    fn publish(n: u16, qos: QoS) -> StoredPublish {
        StoredPublish {
            packet_id: pid(n),
            topic: TopicName::new(&format!("t/{n}")).unwrap(),
            payload: Bytes::from(format!("payload {n}")),
            qos,
            retain: n % 2 == 0,
            released: false,
            properties: PropertyBox::none(),
        }
    }

    #[test]
    fn fold_keeps_insertion_order_and_applies_acks() {
        let mut s = ClientDurable::default();
        for op in [
            PersistOp::Outgoing(publish(5, QoS::AtLeastOnce)),
            PersistOp::Outgoing(publish(2, QoS::ExactlyOnce)),
            PersistOp::Outgoing(publish(9, QoS::AtLeastOnce)),
            PersistOp::Released(pid(2)),
            PersistOp::Completed(pid(5)),
            PersistOp::IncomingQos2(pid(3)),
            PersistOp::IncomingQos2(pid(4)),
            PersistOp::IncomingReleased(pid(3)),
        ] {
            s.apply(&op);
        }
        let ids: Vec<u16> = s.outgoing().map(|p| p.packet_id.get()).collect();
        assert_eq!(ids, vec![2, 9]);
        assert!(s.outgoing().next().unwrap().released);
        assert_eq!(s.incoming_qos2, BTreeSet::from([pid(4)]));
    }

    #[test]
    fn file_round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let fs: SharedFs = Arc::new(StdFs);
        let mut p = FilePersistence::new(fs.clone(), dir.path(), "c/1");
        assert!(p.open().unwrap().state.outgoing().next().is_none());
        p.apply(&[
            PersistOp::Outgoing(publish(1, QoS::AtLeastOnce)),
            PersistOp::Outgoing(publish(2, QoS::ExactlyOnce)),
        ])
        .unwrap();
        p.apply(&[PersistOp::Released(pid(2)), PersistOp::IncomingQos2(pid(7))])
            .unwrap();
        let expected = p.state.clone();
        drop(p);

        let mut again = FilePersistence::new(fs, dir.path(), "c/1");
        assert!(again.path().ends_with("client-c%2f1.inflight"));
        let restored = again.open().unwrap();
        assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
        assert_eq!(
            restored.state.outgoing().collect::<Vec<_>>(),
            expected.outgoing().collect::<Vec<_>>()
        );
        assert_eq!(restored.state.incoming_qos2, BTreeSet::from([pid(7)]));
    }

    /// 5.0 properties survive a restart, so a resend carries what the application set.
    #[test]
    fn publish_properties_survive_reopen() {
        use crate::codec::MqttStr;
        let dir = tempfile::tempdir().unwrap();
        let fs: SharedFs = Arc::new(StdFs);
        let mut p = FilePersistence::new(fs.clone(), dir.path(), "props");
        p.open().unwrap();
        let mut with = publish(3, QoS::ExactlyOnce);
        with.properties = PropertyBox::from(PublishProperties {
            payload_format_utf8: Some(true),
            message_expiry_interval_secs: Some(30),
            response_topic: Some(TopicName::new("reply").unwrap()),
            correlation_data: Some(Bytes::from_static(b"\x00id")),
            user_properties: vec![(MqttStr::new("k").unwrap(), MqttStr::new("v").unwrap())],
            content_type: Some(MqttStr::new("text/plain").unwrap()),
            ..Default::default()
        });
        p.apply(&[
            PersistOp::Outgoing(publish(1, QoS::AtLeastOnce)),
            PersistOp::Outgoing(with.clone()),
            PersistOp::Released(pid(3)),
        ])
        .unwrap();
        drop(p);
        let restored = FilePersistence::new(fs, dir.path(), "props")
            .open()
            .unwrap();
        assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
        with.released = true;
        assert_eq!(
            restored.state.outgoing().cloned().collect::<Vec<_>>(),
            vec![publish(1, QoS::AtLeastOnce), with]
        );
    }

    #[test]
    fn torn_or_corrupt_tail_is_dropped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let fs: SharedFs = Arc::new(StdFs);
        let mut p = FilePersistence::new(fs.clone(), dir.path(), "c");
        p.open().unwrap();
        p.apply(&[PersistOp::Outgoing(publish(1, QoS::AtLeastOnce))])
            .unwrap();
        p.apply(&[PersistOp::Outgoing(publish(2, QoS::AtLeastOnce))])
            .unwrap();
        let path = p.path().to_path_buf();
        drop(p);
        let full = fs.read(&path).unwrap().unwrap();

        // Every cut inside the last record keeps exactly the first one.
        let last_record_len = 8 + 1 + 2 + 2 + 2 + 3 + 4 + 9;
        for cut in 1..last_record_len {
            fs.write_atomic(&path, &full[..full.len() - cut]).unwrap();
            let restored = FilePersistence::new(fs.clone(), dir.path(), "c")
                .open()
                .unwrap();
            let ids: Vec<u16> = restored
                .state
                .outgoing()
                .map(|p| p.packet_id.get())
                .collect();
            assert_eq!(ids, vec![1], "cut {cut}");
            assert_eq!(restored.warnings.len(), 1, "cut {cut}");
        }

        // A flipped bit in the last payload fails its checksum.
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        fs.write_atomic(&path, &flipped).unwrap();
        let restored = FilePersistence::new(fs.clone(), dir.path(), "c")
            .open()
            .unwrap();
        assert_eq!(restored.state.outgoing_len(), 1);
        assert!(restored.warnings[0].contains("checksum"));

        // Garbage instead of a log: start empty, do not fail.
        fs.write_atomic(&path, b"garbage").unwrap();
        let restored = FilePersistence::new(fs.clone(), dir.path(), "c")
            .open()
            .unwrap();
        assert_eq!(restored.state.outgoing_len(), 0);
        assert!(restored.warnings[0].contains("header"));
    }

    #[test]
    fn log_compacts_instead_of_growing_forever() {
        let dir = tempfile::tempdir().unwrap();
        let fs: SharedFs = Arc::new(StdFs);
        let mut p = FilePersistence::new(fs.clone(), dir.path(), "c");
        p.open().unwrap();
        for round in 0..400u16 {
            let id = round % 100 + 1;
            p.apply(&[PersistOp::Outgoing(publish(id, QoS::AtLeastOnce))])
                .unwrap();
            p.apply(&[PersistOp::Completed(pid(id))]).unwrap();
        }
        let size = fs.read(p.path()).unwrap().unwrap().len();
        assert!(
            size < 40 * (COMPACT_SLACK_RECORDS + 2),
            "log is {size} bytes"
        );
    }
}
