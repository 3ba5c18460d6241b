//! Known-answer tests on annotated bytes, the annotated wire snapshots of every packet type, and
//! the error snapshot of a canonical malformed instance of every validation rule.

use std::fmt::Write as _;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};

use super::decode::trace;
use super::*;

use ProtocolVersion::{V311, V5};

const MAX: u32 = DEFAULT_MAX_PACKET_SIZE;

fn pid(id: u16) -> PacketId {
    NonZeroU16::new(id).unwrap()
}

fn dec(bytes: &[u8], version: ProtocolVersion) -> Result<Option<(Packet, usize)>, DecodeError> {
    decode_slice(&Bytes::copy_from_slice(bytes), version, MAX)
}

fn dec_one(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let (packet, used) = dec(bytes, version).unwrap().expect("complete");
    assert_eq!(used, bytes.len());
    packet
}

fn enc(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).unwrap();
    out.to_vec()
}

/// A packet from its first byte and body (the remaining length is computed).
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len & 0x7F) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

// ---- remaining length boundaries --------------------------------------------------------

/// The remaining-length encodings of spec 2.2.3 (3.1.1) / 1.5.5 (5.0), at each boundary.
const REMAINING_LENGTHS: [(usize, &[u8]); 8] = [
    (0, &[0x00]),
    (127, &[0x7F]),
    (128, &[0x80, 0x01]),
    (16_383, &[0xFF, 0x7F]),
    (16_384, &[0x80, 0x80, 0x01]),
    (2_097_151, &[0xFF, 0xFF, 0x7F]),
    (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
    (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
];

/// A QoS 0 PUBLISH to topic "a" whose remaining length is exactly `remaining`.
fn publish_with_remaining(remaining: usize) -> Publish {
    Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: TopicName::from_static("a"),
        properties: PublishProperties::default().into(),
        // 2-byte length + "a" = 3 bytes of variable header.
        payload: Bytes::from(vec![0x5A; remaining - 3]),
    }
}

#[test]
fn remaining_length_boundaries_encode_and_decode() {
    for (remaining, wire) in REMAINING_LENGTHS {
        // The header alone: incomplete at every boundary, refused when over a small maximum.
        let mut header = vec![0x30]; // PUBLISH, QoS 0
        header.extend_from_slice(wire);
        let small = (header.len() + remaining).saturating_sub(1) as u32;
        if remaining > 0 {
            assert_eq!(dec(&header, V311), Ok(None), "{remaining}");
            assert_eq!(
                decode_slice(&Bytes::from(header.clone()), V311, small),
                Err(DecodeError::PacketTooLarge {
                    size: (header.len() + remaining) as u64,
                    max: small
                }),
                "{remaining} refused from the fixed header"
            );
        }
        // Whole packets up to the 3-byte boundaries (the 4-byte ones need 2 MiB .. 256 MiB).
        if (3..=2_097_152).contains(&remaining) {
            let packet = Packet::Publish(publish_with_remaining(remaining));
            let bytes = enc(&packet, V311);
            assert_eq!(&bytes[1..1 + wire.len()], wire, "{remaining}");
            assert_eq!(bytes.len(), 1 + wire.len() + remaining);
            assert_eq!(dec_one(&bytes, V311), packet);
        }
    }
    // PINGREQ has remaining length 0.
    assert_eq!(enc(&Packet::PingReq, V311), [0xC0, 0x00]);
}

#[test]
fn remaining_length_past_the_largest_is_refused() {
    // 268,435,456 needs a fifth byte: 0x80 0x80 0x80 0x80 0x01.
    let five = [0x30, 0x80, 0x80, 0x80, 0x80, 0x01];
    for version in [V311, V5] {
        assert_eq!(
            dec(&five, version),
            Err(DecodeError::VarIntTooLong {
                field: "remaining length",
                version
            })
        );
        // Refused as soon as the fourth length byte says "more follows".
        assert!(dec(&five[..5], version).is_err());
    }
    // The encoder refuses a body one byte past the largest remaining length.
    assert_eq!(
        encoded_len(
            &Packet::Publish(Publish {
                payload: Bytes::from(vec![0; 268_435_456 - 3]),
                ..publish_with_remaining(3)
            }),
            V311
        ),
        Err(EncodeError::PacketTooLarge(268_435_456))
    );
}

// ---- the specs' worked examples ---------------------------------------------------------

#[test]
fn v311_connect_variable_header_example() {
    // 3.1.1 figure 3.6 (CONNECT variable header example), with a payload added.
    let bytes = pkt(
        0x10, // CONNECT
        &[
            0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
            0x04, // protocol level 4
            0xCE, // user name, password, will QoS 1, will flag, clean session
            0x00, 0x0A, // keep alive 10 s
            0x00, 0x01, b'c', // client identifier "c"
            0x00, 0x01, b'w', // will topic "w"
            0x00, 0x02, b'h', b'i', // will message "hi"
            0x00, 0x01, b'u', // user name "u"
            0x00, 0x01, b'p', // password "p"
        ],
    );
    let expected = Packet::Connect(Box::new(Connect {
        protocol: V311,
        clean_start: true,
        keep_alive_secs: 10,
        properties: ConnectProperties::default(),
        client_id: MqttStr::from_static("c"),
        will: Some(Will {
            topic: TopicName::from_static("w"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(MqttStr::from_static("u")),
        password: Some(Bytes::from_static(b"p")),
    }));
    assert_eq!(dec_one(&bytes, V311), expected);
    assert_eq!(enc(&expected, V311), bytes);
}

#[test]
fn v5_connect_variable_header_example() {
    // 5.0 figure 3-6 (CONNECT variable header example): session expiry interval 10.
    let bytes = pkt(
        0x10, // CONNECT
        &[
            0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
            0x05, // protocol level 5
            0xC2, // user name, password, clean start
            0x00, 0x0A, // keep alive 10 s
            0x05, // property length 5
            0x11, 0x00, 0x00, 0x00, 0x0A, // session expiry interval 10
            0x00, 0x00, // client identifier "" (the server assigns one)
            0x00, 0x01, b'u', // user name "u"
            0x00, 0x00, // password (empty)
        ],
    );
    let Packet::Connect(connect) = dec_one(&bytes, V311) else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.protocol, V5, "a CONNECT is read by its own level");
    assert_eq!(connect.properties.session_expiry_interval_secs, Some(10));
    assert!(connect.client_id.is_empty());
    assert_eq!(connect.password, Some(Bytes::new()));
    assert_eq!(enc(&Packet::Connect(connect), V5), bytes);
}

#[test]
fn v311_publish_variable_header_example() {
    // 3.1.1 figure 3.11: topic "a/b", packet identifier 10.
    let bytes = [
        0x32, // PUBLISH, QoS 1
        0x09, // remaining length 9
        0x00, 0x03, b'a', b'/', b'b', // topic name "a/b"
        0x00, 0x0A, // packet identifier 10
        b'x', b'y', // payload
    ];
    let expected = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(pid(10)),
        retain: false,
        topic: TopicName::from_static("a/b"),
        properties: PublishProperties::default().into(),
        payload: Bytes::from_static(b"xy"),
    });
    assert_eq!(dec_one(&bytes, V311), expected);
    assert_eq!(enc(&expected, V311), bytes);
}

#[test]
fn utf8_string_example_keeps_the_supplementary_character() {
    // 3.1.1 figure 1.3 / 5.0 figure 1-1: "A" U+2A6D4 encodes as 41 F0 AA 9B 94.
    let bytes = [
        0x30, // PUBLISH, QoS 0
        0x07, // remaining length 7
        0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94, // topic "A\u{2A6D4}"
    ];
    let Packet::Publish(publish) = dec_one(&bytes, V311) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.topic.as_str(), "A\u{2A6D4}");
    // U+FEFF is data, never stripped [MQTT-1.5.3-3].
    let bom = [0x30, 0x05, 0x00, 0x03, 0xEF, 0xBB, 0xBF];
    let Packet::Publish(publish) = dec_one(&bom, V311) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.topic.as_str(), "\u{FEFF}");
}

#[test]
fn v5_short_acknowledgement_forms() {
    // 5.0 3.4.2.1: remaining length 2 means Success and no properties; 3 means no properties.
    let two = [0x40, 0x02, 0x00, 0x07]; // PUBACK, packet identifier 7
    let three = [0x40, 0x03, 0x00, 0x07, 0x10]; // ... reason No matching subscribers
    assert_eq!(dec_one(&two, V5), Packet::PubAck(Ack::new(pid(7))));
    let with_reason = Packet::PubAck(Ack {
        reason_code: ReasonCode::NoMatchingSubscribers,
        ..Ack::new(pid(7))
    });
    assert_eq!(dec_one(&three, V5), with_reason);
    assert_eq!(enc(&with_reason, V5), three);
    assert_eq!(enc(&Packet::PubAck(Ack::new(pid(7))), V5), two);
    // DISCONNECT: remaining length 0 is Normal disconnection.
    assert_eq!(
        dec_one(&[0xE0, 0x00], V5),
        Packet::Disconnect(Disconnect::default())
    );
    // A 3.1.1 server reading level 4 CONNACK return code 1 gets Unsupported protocol version.
    let connack = [0x20, 0x02, 0x00, 0x01];
    let Packet::ConnAck(c) = dec_one(&connack, V311) else {
        panic!("not a CONNACK");
    };
    assert_eq!(c.reason_code, ReasonCode::UnsupportedProtocolVersion);
}

#[test]
fn interoperates_with_rumqttc_v311() {
    use rumqttc::mqttbytes::v4 as rumq;
    for (name, packet) in samples::canonical(V311) {
        let bytes = enc(&packet, V311);
        let mut buf = BytesMut::from(&bytes[..]);
        let theirs = rumq::Packet::read(&mut buf, 1 << 20)
            .unwrap_or_else(|e| panic!("rumqttc refuses our {name}: {e:?}"));
        let mut back = BytesMut::new();
        theirs.write(&mut back, 1 << 20).unwrap();
        // rumqttc writes the same bytes back, except where its model drops detail.
        if !matches!(name, "connect" | "suback") {
            assert_eq!(back.to_vec(), bytes, "{name}");
        }
        assert!(dec(&back, V311).unwrap().is_some(), "{name}");
    }
}

// ---- annotated wire snapshots -----------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The bytes of one packet, each field on its own line with its name, as the decoder read
/// them; then the decoded packet.
fn annotate(bytes: &[u8], version: ProtocolVersion) -> String {
    let (result, spans) = trace::collect(|| dec(bytes, version));
    let mut out = String::new();
    let header_len = 1 + bytes[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    let remaining = bytes.len() - header_len;
    let type_name = match &result {
        Ok(Some((packet, _))) => format!("{:?}", packet.packet_type()),
        _ => "?".to_owned(),
    };
    let _ = writeln!(
        out,
        "{:<50}# fixed header: {type_name}, flags {:04b}",
        hex(&bytes[..1]),
        bytes[0] & 0x0F
    );
    let _ = writeln!(
        out,
        "{:<50}# remaining length {remaining}",
        hex(&bytes[1..header_len])
    );
    // Merge consecutive reads of one field (a length prefix and its data).
    let mut merged: Vec<(usize, usize, &str)> = Vec::new();
    for (start, len, field) in spans {
        match merged.last_mut() {
            Some(last) if last.2 == field && last.0 + last.1 == start => last.1 += len,
            _ => merged.push((start, len, field)),
        }
    }
    for (start, len, field) in merged {
        let chunk = &bytes[start..start + len];
        for (index, line) in chunk.chunks(16).enumerate() {
            if index == 0 {
                let _ = writeln!(out, "{:<50}# {field}", hex(line));
            } else {
                let _ = writeln!(out, "{}", hex(line));
            }
        }
    }
    let _ = writeln!(out, "\n{result:#?}");
    out
}

#[test]
fn wire_snapshots_of_every_packet_type() {
    for version in [V311, V5] {
        for (name, packet) in samples::canonical(version) {
            let bytes = enc(&packet, version);
            assert_eq!(dec_one(&bytes, version), packet);
            let tag = match version {
                V311 => "v311",
                V5 => "v5",
            };
            insta::with_settings!({
                snapshot_path => "../../snapshots",
                prepend_module_to_snapshot => false,
                omit_expression => true,
            }, {
                insta::assert_snapshot!(format!("wire-{tag}-{name}"), annotate(&bytes, version));
            });
        }
    }
}

// ---- validation rules: one canonical malformed instance each ------------------------------

/// The body of a 3.1.1 or 5.0 CONNECT with `flags`, keep alive 60, client id "c" and `rest`.
fn connect_body(level: u8, flags: u8, properties: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 0x3C];
    if level == 5 {
        body.push(properties.len() as u8);
        body.extend_from_slice(properties);
    }
    body.extend_from_slice(&[0x00, 0x01, b'c']);
    body.extend_from_slice(rest);
    body
}

/// A 5.0 PUBLISH QoS 0 to "a" with the given property bytes.
fn v5_publish(properties: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, b'a', properties.len() as u8];
    body.extend_from_slice(properties);
    pkt(0x30, &body)
}

/// A SUBSCRIBE with packet identifier 1 and one filter.
fn subscribe(version: ProtocolVersion, filter: &str, options: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x01];
    if version == V5 {
        body.push(0x00); // property length
    }
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(options);
    pkt(0x82, &body)
}

/// Every validation rule with a malformed instance: (rule, version, bytes, max packet size).
fn malformed_cases() -> Vec<(&'static str, ProtocolVersion, Vec<u8>, u32)> {
    let mut cases = vec![
        ("reserved packet type 0", V311, vec![0x00, 0x00], MAX),
        ("auth in 3.1.1", V311, vec![0xF0, 0x00], MAX),
        ("reserved flags puback", V311, pkt(0x41, &[0x00, 0x01]), MAX),
        (
            "reserved flags puback v5",
            V5,
            pkt(0x41, &[0x00, 0x01]),
            MAX,
        ),
        ("reserved flags pubrel", V311, pkt(0x60, &[0x00, 0x01]), MAX),
        (
            "reserved flags subscribe",
            V311,
            pkt(0x80, &[0x00, 0x01]),
            MAX,
        ),
        (
            "reserved flags unsubscribe",
            V311,
            pkt(0xA0, &[0x00, 0x01]),
            MAX,
        ),
        ("reserved flags disconnect v5", V5, vec![0xE1, 0x00], MAX),
        ("reserved flags auth", V5, vec![0xF1, 0x00], MAX),
        ("publish qos 3", V311, pkt(0x36, &[0x00, 0x01, b'a']), MAX),
        ("dup on qos 0", V311, pkt(0x38, &[0x00, 0x01, b'a']), MAX),
        (
            "remaining length over 4 bytes",
            V311,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            MAX,
        ),
        (
            "remaining length not shortest v5",
            V5,
            vec![0xC0, 0x80, 0x00],
            MAX,
        ),
        ("packet too large", V311, vec![0x30, 0x7F], 100),
        ("truncated puback", V311, pkt(0x40, &[0x00]), MAX),
        ("trailing bytes pingreq", V311, pkt(0xC0, &[0x00]), MAX),
        (
            "trailing bytes puback v311",
            V311,
            pkt(0x40, &[0x00, 0x01, 0x00]),
            MAX,
        ),
        (
            "string length past the packet",
            V311,
            pkt(0x30, &[0x00, 0x09, b'a']),
            MAX,
        ),
        (
            "invalid utf-8",
            V311,
            pkt(0x30, &[0x00, 0x02, 0xC3, 0x28]),
            MAX,
        ),
        (
            "utf-8 surrogate",
            V5,
            pkt(0x30, &[0x00, 0x03, 0xED, 0xA0, 0x80, 0x00]),
            MAX,
        ),
        (
            "null character",
            V311,
            pkt(0x30, &[0x00, 0x02, b'a', 0x00]),
            MAX,
        ),
        (
            "wildcard in topic name",
            V5,
            pkt(0x30, &[0x00, 0x03, b'a', b'/', b'+', 0x00]),
            MAX,
        ),
        ("empty topic name", V311, pkt(0x30, &[0x00, 0x00]), MAX),
        (
            "empty topic name without alias v5",
            V5,
            pkt(0x30, &[0x00, 0x00, 0x00]),
            MAX,
        ),
        (
            "packet id 0 publish",
            V311,
            pkt(0x32, &[0x00, 0x01, b'a', 0x00, 0x00]),
            MAX,
        ),
        ("packet id 0 puback v5", V5, pkt(0x40, &[0x00, 0x00]), MAX),
        (
            "protocol name",
            V311,
            pkt(0x10, &[0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04]),
            MAX,
        ),
        (
            "protocol level 6",
            V311,
            pkt(0x10, &connect_body(6, 0x02, &[], &[])),
            MAX,
        ),
        (
            "mqtt 3.1 (MQIsdp)",
            V311,
            pkt(
                0x10,
                &[0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02],
            ),
            MAX,
        ),
        (
            "connect reserved flag",
            V311,
            pkt(0x10, &connect_body(4, 0x03, &[], &[])),
            MAX,
        ),
        (
            "will qos without will",
            V311,
            pkt(0x10, &connect_body(4, 0x0A, &[], &[])),
            MAX,
        ),
        (
            "will retain without will v5",
            V5,
            pkt(0x10, &connect_body(5, 0x22, &[], &[])),
            MAX,
        ),
        (
            "will qos 3",
            V311,
            pkt(
                0x10,
                &connect_body(4, 0x1E, &[], &[0x00, 0x01, b'w', 0x00, 0x00]),
            ),
            MAX,
        ),
        (
            "empty will topic",
            V311,
            pkt(0x10, &connect_body(4, 0x06, &[], &[0x00, 0x00, 0x00, 0x00])),
            MAX,
        ),
        (
            "password without user name",
            V311,
            pkt(0x10, &connect_body(4, 0x42, &[], &[0x00, 0x01, b'p'])),
            MAX,
        ),
        (
            "connack reserved flags",
            V311,
            pkt(0x20, &[0x02, 0x00]),
            MAX,
        ),
        ("connack return code 6", V311, pkt(0x20, &[0x00, 0x06]), MAX),
        (
            "connack reason code not allowed v5",
            V5,
            pkt(0x20, &[0x00, 0x04, 0x00]),
            MAX,
        ),
        (
            "puback reason code not allowed",
            V5,
            pkt(0x40, &[0x00, 0x01, 0x92]),
            MAX,
        ),
        (
            "pubrel reason code not allowed",
            V5,
            pkt(0x62, &[0x00, 0x01, 0x10]),
            MAX,
        ),
        (
            "suback return code 3",
            V311,
            pkt(0x90, &[0x00, 0x01, 0x03]),
            MAX,
        ),
        ("suback without codes", V311, pkt(0x90, &[0x00, 0x01]), MAX),
        (
            "unsuback without codes v5",
            V5,
            pkt(0xB0, &[0x00, 0x01, 0x00]),
            MAX,
        ),
        (
            "disconnect reason code not allowed",
            V5,
            pkt(0xE0, &[0x01]),
            MAX,
        ),
        ("auth reason code not allowed", V5, pkt(0xF0, &[0x87]), MAX),
        (
            "subscribe without filters",
            V311,
            pkt(0x82, &[0x00, 0x01]),
            MAX,
        ),
        (
            "subscribe without filters v5",
            V5,
            pkt(0x82, &[0x00, 0x01, 0x00]),
            MAX,
        ),
        (
            "unsubscribe without filters",
            V311,
            pkt(0xA2, &[0x00, 0x01]),
            MAX,
        ),
        (
            "subscribe options reserved bits",
            V311,
            subscribe(V311, "a", 0x04),
            MAX,
        ),
        (
            "subscribe options reserved bits v5",
            V5,
            subscribe(V5, "a", 0x40),
            MAX,
        ),
        ("subscribe qos 3", V311, subscribe(V311, "a", 0x03), MAX),
        ("subscribe qos 3 v5", V5, subscribe(V5, "a", 0x03), MAX),
        ("retain handling 3", V5, subscribe(V5, "a", 0x30), MAX),
        ("empty topic filter", V311, subscribe(V311, "", 0x00), MAX),
        ("misplaced #", V311, subscribe(V311, "a/#/b", 0x00), MAX),
        ("misplaced # v5", V5, subscribe(V5, "a#", 0x00), MAX),
        ("misplaced +", V311, subscribe(V311, "a/b+", 0x00), MAX),
        (
            "empty share name",
            V5,
            subscribe(V5, "$share//a", 0x00),
            MAX,
        ),
        (
            "share name with wildcard",
            V5,
            subscribe(V5, "$share/g+/a", 0x00),
            MAX,
        ),
        (
            "shared subscription without filter",
            V5,
            subscribe(V5, "$share/g", 0x00),
            MAX,
        ),
        (
            "no local on shared subscription",
            V5,
            subscribe(V5, "$share/g/a", 0x04),
            MAX,
        ),
        ("unknown property", V5, v5_publish(&[0x05, 0x00]), MAX),
        (
            "property identifier over 4 bytes",
            V5,
            v5_publish(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            MAX,
        ),
        (
            "property not allowed",
            V5,
            v5_publish(&[0x11, 0x00, 0x00, 0x00, 0x01]),
            MAX,
        ),
        (
            "duplicate property",
            V5,
            v5_publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
            MAX,
        ),
        (
            "payload format indicator 2",
            V5,
            v5_publish(&[0x01, 0x02]),
            MAX,
        ),
        ("topic alias 0", V5, v5_publish(&[0x23, 0x00, 0x00]), MAX),
        (
            "subscription identifier 0",
            V5,
            v5_publish(&[0x0B, 0x00]),
            MAX,
        ),
        (
            "subscription identifier not shortest",
            V5,
            v5_publish(&[0x0B, 0x81, 0x00]),
            MAX,
        ),
        (
            "response topic with wildcard",
            V5,
            v5_publish(&[0x08, 0x00, 0x01, b'#']),
            MAX,
        ),
        (
            "property value past the block",
            V5,
            v5_publish(&[0x02, 0x00, 0x00]),
            MAX,
        ),
        (
            "property length past the packet",
            V5,
            pkt(0x30, &[0x00, 0x01, b'a', 0x09]),
            MAX,
        ),
        (
            "receive maximum 0",
            V5,
            pkt(0x10, &connect_body(5, 0x02, &[0x21, 0x00, 0x00], &[])),
            MAX,
        ),
        (
            "maximum packet size 0",
            V5,
            pkt(0x10, &connect_body(5, 0x02, &[0x27, 0, 0, 0, 0], &[])),
            MAX,
        ),
        (
            "request problem information 2",
            V5,
            pkt(0x10, &connect_body(5, 0x02, &[0x17, 0x02], &[])),
            MAX,
        ),
        (
            "authentication data without method",
            V5,
            pkt(0x10, &connect_body(5, 0x02, &[0x16, 0x00, 0x00], &[])),
            MAX,
        ),
        (
            "maximum qos 2",
            V5,
            pkt(0x20, &[0x00, 0x00, 0x02, 0x24, 0x02]),
            MAX,
        ),
        (
            "will property not allowed",
            V5,
            pkt(
                0x10,
                &connect_body(
                    5,
                    0x06,
                    &[],
                    &[0x03, 0x23, 0x00, 0x01, 0x00, 0x01, b'w', 0x00, 0x00],
                ),
            ),
            MAX,
        ),
        (
            "ack property not allowed",
            V5,
            pkt(0x40, &[0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01]),
            MAX,
        ),
    ];
    cases.sort_by_key(|case| case.0);
    cases
}

#[test]
fn every_validation_rule_is_an_error_naming_its_statement() {
    let mut report = String::new();
    for (rule, version, bytes, max) in malformed_cases() {
        let result = decode_slice(&Bytes::from(bytes.clone()), version, max);
        let error = match result {
            Err(error) => error,
            other => panic!("{rule}: expected an error, got {other:?}"),
        };
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("[{}] ", error.spec_id())),
            "{rule}: {text}"
        );
        // The BytesMut path refuses it too.
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, version, max), Err(error.clone()), "{rule}");
        let _ = writeln!(
            report,
            "{rule} ({version:?}): {}\n  error: {text}\n  reason code: {:?}\n",
            hex(&bytes),
            error.reason_code()
        );
    }
    insta::with_settings!({
        snapshot_path => "../../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!("decode-errors", report);
    });
}

#[test]
fn unsupported_protocol_versions_are_distinct_errors() {
    for level in [0u8, 3, 6, 255] {
        let bytes = pkt(0x10, &connect_body(level, 0x02, &[], &[]));
        let error = dec(&bytes, V5).unwrap_err();
        assert_eq!(error, DecodeError::UnsupportedProtocolVersion { level });
        assert_eq!(error.reason_code(), ReasonCode::UnsupportedProtocolVersion);
        // A 3.1.1 server answers CONNACK return code 1.
        assert_eq!(error.reason_code().to_v311_connack(), Some(1));
    }
}

#[test]
fn oversize_is_refused_before_the_body_arrives() {
    // Only the fixed header of a 1 MiB PUBLISH is buffered.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x40][..]);
    assert_eq!(
        decode(&mut buf, V5, 65_536),
        Err(DecodeError::PacketTooLarge {
            size: 4 + (1 << 20),
            max: 65_536
        })
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 0, max: 0 }.reason_code(),
        ReasonCode::PacketTooLarge
    );
}

// ---- encoder refusals --------------------------------------------------------------------

#[test]
fn encoder_refuses_what_3_1_1_cannot_carry() {
    let v5_packets = samples::canonical(V5);
    let mut report = String::new();
    for (name, packet) in &v5_packets {
        if *name == "connect" {
            // A CONNECT is written in its own version.
            continue;
        }
        match encode(packet, V311, &mut BytesMut::new()) {
            Ok(()) => {
                // Only packets with nothing 5.0-specific may pass.
                assert!(
                    matches!(name, &"pingreq" | &"pingresp"),
                    "{name} encoded in 3.1.1"
                );
            }
            Err(error) => {
                let _ = writeln!(report, "{name}: {error}");
            }
        }
    }
    insta::with_settings!({
        snapshot_path => "../../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!("encode-errors-v311", report);
    });
}

#[test]
fn encoder_refusal_leaves_the_buffer_untouched() {
    let mut out = BytesMut::from(&b"keep"[..]);
    let publish = Packet::Publish(Publish {
        dup: true,
        ..samples::bench_publish(4)
    });
    let mut qos0 = publish.clone();
    if let Packet::Publish(p) = &mut qos0 {
        p.qos_pid = QosPid::AtMostOnce;
    }
    assert_eq!(encode(&qos0, V5, &mut out), Err(EncodeError::DupOnQoS0));
    assert_eq!(&out[..], b"keep");
    let empty = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        filters: Vec::new(),
    });
    assert_eq!(
        encode(&empty, V311, &mut out),
        Err(EncodeError::Empty(PacketType::Subscribe))
    );
    assert_eq!(&out[..], b"keep");
}
