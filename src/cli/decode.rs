//! `simqtt decode`: print the packets in a byte string field by field, as Wireshark's MQTT
//! dissector shows them (`tshark -V`): the same field names, value names and bit layouts, and
//! only the fields the packet's protocol version has (no 5.0 properties on a 3.1.1 packet).
//!
//! Each packet is first decoded by the codec, whose strict validation refuses what a broker
//! would refuse (the error names the spec statement); only then is it walked byte by byte for
//! the display, so the lengths shown are the ones on the wire.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bytes::Bytes;
use simqtt::codec::{self, Packet, ProtocolVersion};

#[derive(clap::Args)]
pub struct Args {
    /// Hex bytes ("10 0c 00 04 ..." or "100c0004..."), or @FILE to read raw bytes from FILE.
    input: String,
    /// Protocol version of the packets before the first CONNECT (a CONNECT sets the version
    /// of the packets after it, as in a captured connection).
    #[arg(short = 'V', long, default_value = "311", value_parser = ["311", "5"])]
    protocol_version: String,
    /// Show PUBLISH and will payloads as text instead of hex bytes (Wireshark's
    /// "Show Message as text").
    #[arg(long)]
    text: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = match args.input.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => parse_hex(&args.input)?,
    };
    let mut version = if args.protocol_version == "311" {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let mut rest = Bytes::from(bytes);
    let mut first = true;
    while !rest.is_empty() {
        match codec::decode_slice(&rest, version, codec::DEFAULT_MAX_PACKET_SIZE) {
            Ok(Some((packet, used))) => {
                if let Packet::Connect(connect) = &packet {
                    version = connect.protocol;
                }
                if !first {
                    println!();
                }
                first = false;
                print!("{}", dissect(&rest[..used], version, args.text));
                rest = rest.slice(used..);
            }
            Ok(None) => bail!("{}", incomplete(&rest)),
            Err(error) => {
                println!("error: {error}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Why the bytes left do not make a packet: what the fixed header announced against what came.
fn incomplete(rest: &[u8]) -> String {
    let mut remaining: usize = 0;
    for (i, byte) in rest.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let header = i + 2;
            return format!(
                "{} trailing bytes do not make a whole packet: its fixed header ({}) announces \
                 a remaining length of {remaining} bytes, and {} follow",
                rest.len(),
                hex(&rest[..header]),
                rest.len() - header
            );
        }
    }
    format!(
        "{} trailing bytes do not make a whole packet: the fixed header's remaining length \
         is cut off",
        rest.len()
    )
}

fn parse_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let digits: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ',')
        .collect();
    let digits = digits.replace("0x", "");
    if digits.len() % 2 != 0 {
        bail!("odd number of hex digits");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).context("not a hex byte"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const MESSAGE_TYPES: [&str; 16] = [
    "Reserved",
    "Connect Command",
    "Connect Ack",
    "Publish Message",
    "Publish Ack",
    "Publish Received",
    "Publish Release",
    "Publish Complete",
    "Subscribe Request",
    "Subscribe Ack",
    "Unsubscribe Request",
    "Unsubscribe Ack",
    "Ping Request",
    "Ping Response",
    "Disconnect Req",
    "Authentication Exchange",
];

fn qos_name(qos: u8) -> &'static str {
    match qos {
        0 => "At most once delivery (Fire and Forget)",
        1 => "At least once delivery (Acknowledged deliver)",
        2 => "Exactly once delivery (Assured Delivery)",
        _ => "Reserved",
    }
}

fn connack_return_code(code: u8) -> &'static str {
    match code {
        0 => "Connection Accepted",
        1 => "Connection Refused: unacceptable protocol version",
        2 => "Connection Refused: identifier rejected",
        3 => "Connection Refused: server unavailable",
        4 => "Connection Refused: bad user name or password",
        5 => "Connection Refused: not authorized",
        _ => "Unknown",
    }
}

/// The name Wireshark gives a 5.0 reason code in a packet of type `packet_type`.
fn reason_name(packet_type: u8, code: u8) -> &'static str {
    match code {
        0x00 => match packet_type {
            9 => "Granted QoS 0",
            14 => "Normal disconnection",
            _ => "Success",
        },
        0x01 if packet_type == 9 => "Granted QoS 1",
        0x02 if packet_type == 9 => "Granted QoS 2",
        0x04 if packet_type == 14 => "Disconnect with Will Message",
        0x10 => "No matching subscribers",
        0x11 => "No subscription existed",
        0x18 => "Continue authentication",
        0x19 => "Re-authenticate",
        0x80 => "Unspecified error",
        0x81 => "Malformed Packet",
        0x82 => "Protocol Error",
        0x83 => "Implementation specific error",
        0x84 => "Unsupported Protocol Version",
        0x85 => "Client Identifier not valid",
        0x86 => "Bad User Name or Password",
        0x87 => "Not authorized",
        0x88 => "Server unavailable",
        0x89 => "Server busy",
        0x8A => "Banned",
        0x8B => "Server shutting down",
        0x8C => "Bad authentication method",
        0x8D => "Keep Alive timeout",
        0x8E => "Session taken over",
        0x8F => "Topic Filter invalid",
        0x90 => "Topic Name invalid",
        0x91 => "Packet Identifier in use",
        0x92 => "Packet Identifier not found",
        0x93 => "Receive Maximum exceeded",
        0x94 => "Topic Alias invalid",
        0x95 => "Packet too large",
        0x96 => "Message rate too high",
        0x97 => "Quota exceeded",
        0x98 => "Administrative action",
        0x99 => "Payload format invalid",
        0x9A => "Retain not supported",
        0x9B => "QoS not supported",
        0x9C => "Use another server",
        0x9D => "Server moved",
        0x9E => "Shared Subscription not supported",
        0x9F => "Connection rate exceeded",
        0xA0 => "Maximum connect time",
        0xA1 => "Subscription Identifiers not supported",
        0xA2 => "Wildcard Subscription not supported",
        _ => "Unknown",
    }
}

fn property_name(id: u8) -> &'static str {
    match id {
        0x01 => "Payload Format Indicator",
        0x02 => "Publication Expiry Interval",
        0x03 => "Content Type",
        0x08 => "Response Topic",
        0x09 => "Correlation Data",
        0x0B => "Subscription Identifier",
        0x11 => "Session Expiry Interval",
        0x12 => "Assigned Client Identifier",
        0x13 => "Server Keep Alive",
        0x15 => "Authentication Method",
        0x16 => "Authentication Data",
        0x17 => "Request Problem Information",
        0x18 => "Will Delay Interval",
        0x19 => "Request Response Information",
        0x1A => "Response Information",
        0x1C => "Server Reference",
        0x1F => "Reason String",
        0x21 => "Receive Maximum",
        0x22 => "Topic Alias Maximum",
        0x23 => "Topic Alias",
        0x24 => "Maximum QoS",
        0x25 => "Retain Available",
        0x26 => "User Property",
        0x27 => "Maximum Packet Size",
        0x28 => "Wildcard Subscription Available",
        0x29 => "Subscription Identifier Available",
        0x2A => "Shared Subscription Available",
        _ => "Unknown",
    }
}

/// `0011 .... ` style: the bits of `mask` in `value`, the others as dots, a space every four.
fn bits(value: u8, mask: u8) -> String {
    let mut out = String::new();
    for i in (0..8).rev() {
        let bit = 1u8 << i;
        out.push(if mask & bit == 0 {
            '.'
        } else if value & bit != 0 {
            '1'
        } else {
            '0'
        });
        if i == 4 {
            out.push(' ');
        }
    }
    out
}

fn set(flag: bool) -> &'static str {
    if flag {
        "Set"
    } else {
        "Not set"
    }
}

/// One field of a bitmask: Wireshark's sub-line, and what it adds to the summary line
/// (enumerated fields always, booleans by name when set, plain integers never).
enum Bit {
    Enum(&'static str, u8, &'static str),
    Flag(&'static str, u8),
    Int(&'static str, u8),
}

struct Out {
    text: String,
}

impl Out {
    fn line(&mut self, depth: usize, text: impl AsRef<str>) {
        let _ = writeln!(self.text, "{}{}", "    ".repeat(depth), text.as_ref());
    }

    /// A bitmask byte: `Name: 0xNN, summary…` and one line per field.
    fn bitmask(&mut self, depth: usize, name: &str, value: u8, fields: &[Bit]) {
        let mut summary = format!("{name}: 0x{value:02x}");
        let mut lines = Vec::new();
        for field in fields {
            match *field {
                Bit::Enum(label, mask, meaning) => {
                    let v = (value & mask) >> mask.trailing_zeros();
                    let _ = write!(summary, ", {label}: {meaning}");
                    lines.push(format!("{} = {label}: {meaning} ({v})", bits(value, mask)));
                }
                Bit::Flag(label, mask) => {
                    if value & mask != 0 {
                        let _ = write!(summary, ", {label}");
                    }
                    lines.push(format!(
                        "{} = {label}: {}",
                        bits(value, mask),
                        set(value & mask != 0)
                    ));
                }
                Bit::Int(label, mask) => {
                    let v = (value & mask) >> mask.trailing_zeros();
                    lines.push(format!("{} = {label}: {v}", bits(value, mask)));
                }
            }
        }
        self.line(depth, summary);
        for l in lines {
            self.line(depth + 1, l);
        }
    }
}

/// A cursor over one packet's bytes. The codec has accepted the packet, so every read is in
/// bounds; a short read (which would be a codec bug) yields zeros rather than a panic.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let end = (self.at + n).min(self.bytes.len());
        let out = &self.bytes[self.at.min(end)..end];
        self.at = end;
        out
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        if b.len() == 2 {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            0
        }
    }

    fn u32(&mut self) -> u32 {
        let b = self.take(4);
        if b.len() == 4 {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            0
        }
    }

    fn varint(&mut self) -> u32 {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8();
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    /// A length-prefixed field: `Length label: n` then `label: value`.
    fn string(&mut self, out: &mut Out, depth: usize, len_label: &str, label: &str) -> String {
        let len = self.u16();
        out.line(depth, format!("{len_label}: {len}"));
        let value = String::from_utf8_lossy(self.take(usize::from(len))).into_owned();
        out.line(depth, format!("{label}: {value}"));
        value
    }

    /// A length-prefixed byte field, as hex (or text with `--text`).
    fn bytes_field(
        &mut self,
        out: &mut Out,
        depth: usize,
        len_label: &str,
        label: &str,
        text: bool,
    ) {
        let len = self.u16();
        out.line(depth, format!("{len_label}: {len}"));
        let value = self.take(usize::from(len));
        out.line(depth, format!("{label}: {}", show_payload(value, text)));
    }
}

fn show_payload(bytes: &[u8], text: bool) -> String {
    if text {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        hex(bytes)
    }
}

/// The 5.0 property list at the cursor, under `title` ("Properties" or "Will Properties").
fn properties(c: &mut Cursor, out: &mut Out, depth: usize, title: &str) {
    let len = c.varint() as usize;
    out.line(depth, title);
    out.line(depth + 1, format!("Total Length: {len}"));
    let end = c.at + len;
    while c.at < end && c.remaining() > 0 {
        let id = c.u8();
        out.line(depth + 1, format!("ID: {} (0x{id:02x})", property_name(id)));
        let d = depth + 1;
        match id {
            0x01 | 0x17 | 0x19 | 0x25 | 0x28 | 0x29 | 0x2A => {
                out.line(d, format!("Value: {}", c.u8()));
            }
            0x24 => {
                let q = c.u8();
                out.line(d, format!("QoS: {} ({q})", qos_name(q)));
            }
            0x23 => out.line(d, format!("Topic Alias: {}", c.u16())),
            0x13 | 0x21 | 0x22 => out.line(d, format!("Value: {}", c.u16())),
            0x02 | 0x11 | 0x18 | 0x27 => out.line(d, format!("Value: {}", c.u32())),
            0x0B => out.line(d, format!("Value: {}", c.varint())),
            0x03 => {
                let len = c.u16();
                let value = String::from_utf8_lossy(c.take(usize::from(len))).into_owned();
                out.line(d, format!("Content Type: {value}"));
            }
            0x09 | 0x16 => {
                let len = c.u16();
                out.line(d, format!("Length: {len}"));
                out.line(d, format!("Value: {}", hex(c.take(usize::from(len)))));
            }
            0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                c.string(out, d, "Length", "Value");
            }
            0x26 => {
                c.string(out, d, "Key Length", "Key");
                c.string(out, d, "Value Length", "Value");
            }
            _ => {
                let rest = c.take(end.saturating_sub(c.at));
                out.line(d, format!("Unknown Property: {}", hex(rest)));
            }
        }
    }
}

/// The lines Wireshark's MQTT dissector shows for one whole packet.
fn dissect(packet: &[u8], version: ProtocolVersion, text: bool) -> String {
    let v5 = version == ProtocolVersion::V5;
    let mut out = Out {
        text: String::new(),
    };
    let mut c = Cursor {
        bytes: packet,
        at: 0,
    };
    let first = c.u8();
    let kind = first >> 4;
    let type_name = MESSAGE_TYPES[usize::from(kind)];
    out.line(0, format!("MQ Telemetry Transport Protocol, {type_name}"));
    let message_type = Bit::Enum("Message Type", 0xf0, type_name);
    if kind == 3 {
        out.bitmask(
            1,
            "Header Flags",
            first,
            &[
                message_type,
                Bit::Flag("DUP Flag", 0x08),
                Bit::Enum("QoS Level", 0x06, qos_name((first >> 1) & 3)),
                Bit::Flag("Retain", 0x01),
            ],
        );
    } else {
        out.bitmask(
            1,
            "Header Flags",
            first,
            &[message_type, Bit::Int("Reserved", 0x0f)],
        );
    }
    let remaining = c.varint();
    out.line(1, format!("Msg Len: {remaining}"));
    match kind {
        1 => {
            c.string(&mut out, 1, "Protocol Name Length", "Protocol Name");
            let level = c.u8();
            let level_name = match level {
                3 => "MQTT v3.1",
                4 => "MQTT v3.1.1",
                5 => "MQTT v5.0",
                _ => "Unknown",
            };
            out.line(1, format!("Version: {level_name} ({level})"));
            let flags = c.u8();
            out.bitmask(
                1,
                "Connect Flags",
                flags,
                &[
                    Bit::Flag("User Name Flag", 0x80),
                    Bit::Flag("Password Flag", 0x40),
                    Bit::Flag("Will Retain", 0x20),
                    Bit::Enum("QoS Level", 0x18, qos_name((flags >> 3) & 3)),
                    Bit::Flag("Will Flag", 0x04),
                    Bit::Flag("Clean Session Flag", 0x02),
                    Bit::Flag("(Reserved)", 0x01),
                ],
            );
            out.line(1, format!("Keep Alive: {}", c.u16()));
            let v5 = level == 5;
            if v5 {
                properties(&mut c, &mut out, 1, "Properties");
            }
            c.string(&mut out, 1, "Client ID Length", "Client ID");
            if flags & 0x04 != 0 {
                if v5 {
                    properties(&mut c, &mut out, 1, "Will Properties");
                }
                c.string(&mut out, 1, "Will Topic Length", "Will Topic");
                c.bytes_field(&mut out, 1, "Will Message Length", "Will Message", text);
            }
            if flags & 0x80 != 0 && c.remaining() > 0 {
                c.string(&mut out, 1, "User Name Length", "User Name");
            }
            if flags & 0x40 != 0 && c.remaining() > 0 {
                // Wireshark shows the password as text.
                c.string(&mut out, 1, "Password Length", "Password");
            }
        }
        2 => {
            let flags = c.u8();
            out.bitmask(
                1,
                "Acknowledge Flags",
                flags,
                &[
                    Bit::Flag("Reserved", 0xfe),
                    Bit::Flag("Session Present", 0x01),
                ],
            );
            let code = c.u8();
            if v5 {
                out.line(1, format!("Reason Code: {} ({code})", reason_name(2, code)));
                properties(&mut c, &mut out, 1, "Properties");
            } else {
                out.line(
                    1,
                    format!("Return Code: {} ({code})", connack_return_code(code)),
                );
            }
        }
        3 => {
            let len = c.u16();
            out.line(1, format!("Topic Length: {len}"));
            if len > 0 {
                let topic = String::from_utf8_lossy(c.take(usize::from(len))).into_owned();
                out.line(1, format!("Topic: {topic}"));
            }
            if first & 0x06 != 0 {
                out.line(1, format!("Message Identifier: {}", c.u16()));
            }
            if v5 {
                properties(&mut c, &mut out, 1, "Properties");
            }
            let payload = c.take(c.remaining());
            out.line(1, format!("Message: {}", show_payload(payload, text)));
        }
        4..=7 => {
            out.line(1, format!("Message Identifier: {}", c.u16()));
            if v5 && remaining > 2 {
                let code = c.u8();
                out.line(
                    1,
                    format!("Reason Code: {} ({code})", reason_name(kind, code)),
                );
                if remaining > 3 {
                    properties(&mut c, &mut out, 1, "Properties");
                }
            }
        }
        8 => {
            out.line(1, format!("Message Identifier: {}", c.u16()));
            if v5 {
                properties(&mut c, &mut out, 1, "Properties");
            }
            while c.remaining() > 0 {
                c.string(&mut out, 1, "Topic Length", "Topic");
                let options = c.u8();
                if v5 {
                    let handling = match (options >> 4) & 3 {
                        0 => "Send msgs at subscription time",
                        1 => "Send msgs if subscription does not exist",
                        2 => "Do not send msgs at subscription time",
                        _ => "Reserved",
                    };
                    out.bitmask(
                        1,
                        "Subscription Options",
                        options,
                        &[
                            Bit::Int("Reserved", 0xc0),
                            Bit::Enum("Retain Handling", 0x30, handling),
                            Bit::Flag("Retain As Published", 0x08),
                            Bit::Flag("No Local", 0x04),
                            Bit::Enum("QoS", 0x03, qos_name(options & 3)),
                        ],
                    );
                } else {
                    out.line(
                        1,
                        format!("Requested QoS: {} ({options})", qos_name(options)),
                    );
                }
            }
        }
        9 => {
            out.line(1, format!("Message Identifier: {}", c.u16()));
            if v5 {
                properties(&mut c, &mut out, 1, "Properties");
            }
            while c.remaining() > 0 {
                let code = c.u8();
                if v5 {
                    out.line(1, format!("Reason Code: {} ({code})", reason_name(9, code)));
                } else {
                    let meaning = if code == 0x80 {
                        "Failure"
                    } else {
                        qos_name(code)
                    };
                    out.line(1, format!("Granted QoS: {meaning} ({code})"));
                }
            }
        }
        10 => {
            out.line(1, format!("Message Identifier: {}", c.u16()));
            if v5 {
                properties(&mut c, &mut out, 1, "Properties");
            }
            while c.remaining() > 0 {
                c.string(&mut out, 1, "Topic Length", "Topic");
            }
        }
        11 => {
            out.line(1, format!("Message Identifier: {}", c.u16()));
            if v5 {
                properties(&mut c, &mut out, 1, "Properties");
                while c.remaining() > 0 {
                    let code = c.u8();
                    out.line(
                        1,
                        format!("Reason Code: {} ({code})", reason_name(11, code)),
                    );
                }
            }
        }
        14 | 15 if v5 && remaining > 0 => {
            let code = c.u8();
            out.line(
                1,
                format!("Reason Code: {} ({code})", reason_name(kind, code)),
            );
            if remaining >= 2 {
                properties(&mut c, &mut out, 1, "Properties");
            }
        }
        _ => {}
    }
    out.text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Vec<u8> {
        parse_hex(s).unwrap()
    }

    #[test]
    fn publish_v311_is_shown_field_by_field_without_properties() {
        let text = dissect(
            &bytes("30 0a 00 03 61 2f 62 68 65 6c 6c 6f"),
            ProtocolVersion::V311,
            false,
        );
        assert_eq!(
            text,
            "\
MQ Telemetry Transport Protocol, Publish Message
    Header Flags: 0x30, Message Type: Publish Message, QoS Level: At most once delivery (Fire and Forget)
        0011 .... = Message Type: Publish Message (3)
        .... 0... = DUP Flag: Not set
        .... .00. = QoS Level: At most once delivery (Fire and Forget) (0)
        .... ...0 = Retain: Not set
    Msg Len: 10
    Topic Length: 3
    Topic: a/b
    Message: 68656c6c6f
"
        );
    }

    #[test]
    fn publish_v5_shows_its_properties_and_set_flags_in_the_summary() {
        // QoS 1, RETAIN, packet id 7, Topic Alias 3, payload "hi".
        let text = dissect(
            &bytes("33 0c 00 03 61 2f 62 00 07 03 23 00 03 68 69"),
            ProtocolVersion::V5,
            true,
        );
        assert!(text.contains(
            "Header Flags: 0x33, Message Type: Publish Message, QoS Level: At least once delivery (Acknowledged deliver), Retain\n"
        ), "{text}");
        assert!(text.contains("    Message Identifier: 7\n    Properties\n        Total Length: 3\n        ID: Topic Alias (0x23)\n        Topic Alias: 3\n    Message: hi\n"), "{text}");
    }

    #[test]
    fn connect_v311_and_its_connack() {
        let text = dissect(
            &bytes("10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 63"),
            ProtocolVersion::V311,
            false,
        );
        assert_eq!(
            text,
            "\
MQ Telemetry Transport Protocol, Connect Command
    Header Flags: 0x10, Message Type: Connect Command
        0001 .... = Message Type: Connect Command (1)
        .... 0000 = Reserved: 0
    Msg Len: 13
    Protocol Name Length: 4
    Protocol Name: MQTT
    Version: MQTT v3.1.1 (4)
    Connect Flags: 0x02, QoS Level: At most once delivery (Fire and Forget), Clean Session Flag
        0... .... = User Name Flag: Not set
        .0.. .... = Password Flag: Not set
        ..0. .... = Will Retain: Not set
        ...0 0... = QoS Level: At most once delivery (Fire and Forget) (0)
        .... .0.. = Will Flag: Not set
        .... ..1. = Clean Session Flag: Set
        .... ...0 = (Reserved): Not set
    Keep Alive: 60
    Client ID Length: 1
    Client ID: c
"
        );
        let ack = dissect(&bytes("20 02 01 05"), ProtocolVersion::V311, false);
        assert!(
            ack.contains("Acknowledge Flags: 0x01, Session Present\n"),
            "{ack}"
        );
        assert!(
            ack.contains("Return Code: Connection Refused: not authorized (5)\n"),
            "{ack}"
        );
        assert!(!ack.contains("Properties"), "{ack}");
    }

    #[test]
    fn subscribe_and_suback_per_version() {
        let sub = dissect(
            &bytes("82 08 00 01 00 03 61 2f 62 01"),
            ProtocolVersion::V311,
            false,
        );
        assert!(sub.contains(
            "Topic: a/b\n    Requested QoS: At least once delivery (Acknowledged deliver) (1)\n"
        ), "{sub}");
        let sub5 = dissect(
            &bytes("82 09 00 01 00 00 03 61 2f 62 25"),
            ProtocolVersion::V5,
            false,
        );
        assert!(sub5.contains("Subscription Options: 0x25, Retain Handling: Do not send msgs at subscription time, No Local, QoS: At least once delivery (Acknowledged deliver)\n"), "{sub5}");
        let ack = dissect(&bytes("90 04 00 01 01 80"), ProtocolVersion::V311, false);
        assert!(ack.contains("Granted QoS: Failure (128)\n"), "{ack}");
        let ack5 = dissect(&bytes("90 04 00 01 00 87"), ProtocolVersion::V5, false);
        assert!(
            ack5.contains("Reason Code: Not authorized (135)\n"),
            "{ack5}"
        );
    }

    #[test]
    fn a_short_packet_says_what_its_header_announced() {
        let message = incomplete(&bytes("30 0b 00 03 61 2f 62 68 65 6c 6c 6f"));
        assert_eq!(
            message,
            "12 trailing bytes do not make a whole packet: its fixed header (300b) announces a \
             remaining length of 11 bytes, and 10 follow"
        );
    }
}
