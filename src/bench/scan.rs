//! Allocation-free reading of MQTT frames for the load generator's hot path.
//!
//! The generator must never be the bottleneck, so its read loops do not decode packets into the
//! packet model (that allocates topics and boxes); they find frame boundaries from the fixed
//! header and peek at the few fields they need (packet type, packet id, payload) in place.
//! Handshake packets (CONNACK, SUBACK) still go through `codec::decode`.

use thiserror::Error;

/// The largest remaining length the four-byte variable byte integer can express.
pub const REMAINING_LENGTH_MAX: usize = 268_435_455;

/// Packet type numbers the generator reacts to (first byte's high nibble).
pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScanError {
    #[error("[MQTT 2.2.3 / 1.5.5] remaining length uses more than four bytes")]
    RemainingLengthTooLong,
    #[error("[MQTT-3.3.2-1] PUBLISH too short for its topic name ({0} bytes of body)")]
    PublishTooShort(usize),
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    PublishQos3,
    #[error("[MQTT 3.3.2.3] PUBLISH property length runs past the packet")]
    PublishProperties,
    #[error("{0} packet too short ({1} bytes of body)")]
    Truncated(&'static str, usize),
}

/// One complete frame at the front of a buffer: `first_byte`, then the remaining length in
/// `header_len - 1` bytes, then `remaining_len` bytes of body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub first_byte: u8,
    pub header_len: usize,
    pub remaining_len: usize,
}

impl Frame {
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }

    /// Header plus body: how far to advance past this frame.
    pub fn total_len(&self) -> usize {
        self.header_len + self.remaining_len
    }

    /// The body (variable header and payload) of this frame within the buffer it was scanned
    /// from. The caller passes the same slice `scan_frame` saw.
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.header_len..self.total_len()]
    }
}

/// Finds the frame at the front of `buf`. `Ok(None)`: the buffer does not yet hold the whole
/// frame (header included); nothing is consumed, read more and call again.
pub fn scan_frame(buf: &[u8]) -> Result<Option<Frame>, ScanError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    let mut remaining_len = 0usize;
    let mut shift = 0;
    for i in 1..=4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        remaining_len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let header_len = i + 1;
            if buf.len() < header_len + remaining_len {
                return Ok(None);
            }
            return Ok(Some(Frame {
                first_byte,
                header_len,
                remaining_len,
            }));
        }
        shift += 7;
    }
    Err(ScanError::RemainingLengthTooLong)
}

/// Only the header part of a frame: `Some((header_len, remaining_len))` once the length bytes
/// are in, even if the body is not. Lets a reader size its buffer for a large frame.
pub fn scan_header(buf: &[u8]) -> Result<Option<(usize, usize)>, ScanError> {
    let mut remaining_len = 0usize;
    let mut shift = 0;
    for i in 1..=4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        remaining_len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some((i + 1, remaining_len)));
        }
        shift += 7;
    }
    Err(ScanError::RemainingLengthTooLong)
}

/// The fields of a PUBLISH body the generator reads, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishView<'a> {
    pub qos: u8,
    pub packet_id: Option<u16>,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// Reads a PUBLISH body in place. `v5`: the body carries a property length after the packet id
/// (the properties themselves are skipped, not parsed).
pub fn publish_view(first_byte: u8, body: &[u8], v5: bool) -> Result<PublishView<'_>, ScanError> {
    let qos = (first_byte >> 1) & 0b11;
    if qos == 3 {
        return Err(ScanError::PublishQos3);
    }
    if body.len() < 2 {
        return Err(ScanError::PublishTooShort(body.len()));
    }
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let mut at = 2 + topic_len;
    if body.len() < at {
        return Err(ScanError::PublishTooShort(body.len()));
    }
    let topic = &body[2..at];
    let packet_id = if qos > 0 {
        if body.len() < at + 2 {
            return Err(ScanError::PublishTooShort(body.len()));
        }
        let id = u16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
        Some(id)
    } else {
        None
    };
    if v5 {
        let (properties_len, used) =
            read_varint(&body[at..]).ok_or(ScanError::PublishProperties)?;
        at += used;
        if body.len() < at + properties_len {
            return Err(ScanError::PublishProperties);
        }
        at += properties_len;
    }
    Ok(PublishView {
        qos,
        packet_id,
        topic,
        payload: &body[at..],
    })
}

/// The packet id at the front of a PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK body.
pub fn ack_packet_id(body: &[u8], name: &'static str) -> Result<u16, ScanError> {
    if body.len() < 2 {
        return Err(ScanError::Truncated(name, body.len()));
    }
    Ok(u16::from_be_bytes([body[0], body[1]]))
}

/// A variable byte integer at the front of `buf`: `(value, bytes used)`; `None` if truncated or
/// longer than four bytes.
pub fn read_varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Appends `value` as a variable byte integer (at most four bytes; callers keep it in range).
pub fn write_varint(mut value: usize, out: &mut Vec<u8>) {
    debug_assert!(value <= REMAINING_LENGTH_MAX);
    loop {
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return;
        }
    }
}

/// Appends a four-byte ack (PUBACK, PUBREC, PUBREL or PUBCOMP with success and no
/// properties, valid in both 3.1.1 and 5.0 [MQTT-3.4.2-1]). PUBREL carries flags 0b0010
/// [MQTT-3.6.1-1].
pub fn push_ack(packet_type: u8, packet_id: u16, out: &mut Vec<u8>) {
    let flags = if packet_type == PUBREL { 0b0010 } else { 0 };
    let [high, low] = packet_id.to_be_bytes();
    out.extend_from_slice(&[packet_type << 4 | flags, 2, high, low]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_boundaries() {
        // (remaining length, its encoding) at each byte-count boundary of MQTT 2.2.3.
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (REMAINING_LENGTH_MAX, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (len, encoded) in cases {
            let mut written = Vec::new();
            write_varint(len, &mut written);
            assert_eq!(written, encoded, "encoding of {len}");
            let mut header = vec![0x30]; // PUBLISH, QoS 0
            header.extend_from_slice(encoded);
            assert_eq!(scan_header(&header), Ok(Some((1 + encoded.len(), len))));
            assert_eq!(read_varint(encoded), Some((len, encoded.len())));
        }
    }

    #[test]
    fn fifth_length_byte_is_malformed() {
        let buf = [0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(scan_frame(&buf), Err(ScanError::RemainingLengthTooLong));
        assert_eq!(scan_header(&buf), Err(ScanError::RemainingLengthTooLong));
        assert_eq!(read_varint(&buf[1..]), None);
    }

    #[test]
    fn incomplete_frames_consume_nothing() {
        assert_eq!(scan_frame(&[]), Ok(None));
        assert_eq!(scan_frame(&[0x30]), Ok(None)); // no length yet
        assert_eq!(scan_frame(&[0x30, 0x80]), Ok(None)); // length continues
        assert_eq!(scan_frame(&[0x30, 0x03, 0x00, 0x01]), Ok(None)); // body short by one
        assert_eq!(scan_header(&[0x30, 0x80]), Ok(None));
    }

    #[test]
    fn walks_several_frames_in_one_buffer() {
        let buf = [
            0x20, 0x02, 0x00, 0x00, // CONNACK, accepted
            0x40, 0x02, 0x00, 0x07, // PUBACK id 7
            0x30, 0x05, 0x00, 0x01, b't', b'h', b'i', // PUBLISH QoS 0 "t" payload "hi"
            0xd0, // PINGRESP, length still missing
        ];
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some(frame) = scan_frame(&buf[at..]).unwrap() {
            seen.push((frame.packet_type(), frame.body(&buf[at..]).to_vec()));
            at += frame.total_len();
        }
        assert_eq!(
            seen,
            vec![
                (CONNACK, vec![0x00, 0x00]),
                (PUBACK, vec![0x00, 0x07]),
                (PUBLISH, vec![0x00, 0x01, b't', b'h', b'i']),
            ]
        );
        assert_eq!(at, buf.len() - 1);
    }

    #[test]
    fn publish_view_v311_qos1() {
        let body = [
            0x00, 0x03, b'a', b'/', b'b', // topic "a/b"
            0x12, 0x34, // packet id
            1, 2, 3, // payload
        ];
        let view = publish_view(0x32, &body, false).unwrap(); // PUBLISH, QoS 1
        assert_eq!(view.qos, 1);
        assert_eq!(view.packet_id, Some(0x1234));
        assert_eq!(view.topic, b"a/b");
        assert_eq!(view.payload, &[1, 2, 3]);
    }

    #[test]
    fn publish_view_v5_skips_properties() {
        let body = [
            0x00, 0x01, b't', // topic "t"
            0x00, 0x09, // packet id 9
            0x03, 0x23, 0x00, 0x05, // properties: topic alias 5
            0xaa, // payload
        ];
        let view = publish_view(0x34, &body, true).unwrap(); // PUBLISH, QoS 2
        assert_eq!(view.qos, 2);
        assert_eq!(view.packet_id, Some(9));
        assert_eq!(view.payload, &[0xaa]);
        // QoS 0 in 5.0: no packet id, property length still present.
        let body = [0x00, 0x01, b't', 0x00, 0xbb];
        let view = publish_view(0x30, &body, true).unwrap();
        assert_eq!((view.packet_id, view.payload), (None, &[0xbb][..]));
    }

    #[test]
    fn publish_view_refuses_bad_bodies() {
        assert_eq!(
            publish_view(0x36, &[0, 0], false),
            Err(ScanError::PublishQos3)
        );
        assert_eq!(
            publish_view(0x30, &[0x00, 0x05, b'a'], false),
            Err(ScanError::PublishTooShort(3))
        );
        assert_eq!(
            publish_view(0x32, &[0x00, 0x01, b'a', 0x00], false),
            Err(ScanError::PublishTooShort(4))
        );
        assert_eq!(
            publish_view(0x30, &[0x00, 0x01, b'a', 0x05, 0x00], true),
            Err(ScanError::PublishProperties)
        );
    }

    #[test]
    fn acks_are_four_bytes() {
        let mut out = Vec::new();
        push_ack(PUBACK, 0x0102, &mut out);
        push_ack(PUBREL, 7, &mut out);
        assert_eq!(out, [0x40, 0x02, 0x01, 0x02, 0x62, 0x02, 0x00, 0x07]);
        assert_eq!(ack_packet_id(&out[2..4], "PUBACK"), Ok(0x0102));
        assert_eq!(
            ack_packet_id(&[1], "PUBACK"),
            Err(ScanError::Truncated("PUBACK", 1))
        );
    }
}
