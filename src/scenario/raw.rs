//! Raw-packet steps: bytes written to the broker over a connection the simqtt client does not
//! drive, and expectations on what the broker answers. They test what a broker does with
//! malformed or forbidden input (a second CONNECT, reserved flags, bad UTF-8, QoS 3 …), which
//! a conforming client can never send.
//!
//! ```yaml
//! - raw: {client: r, send: connect}                      # a valid CONNECT from r's options
//! - expect_raw: {client: r, packet: connack, reason: 0x00}
//! - raw: {client: r, send: "30 06 00 02 61 2b 68 69"}    # PUBLISH to "a+" (a wildcard)
//! - expect_raw: {client: r, closed: true, within: 2s, spec: MQTT-3.3.2-2}
//! ```

use serde::{Deserialize, Serialize};

use super::{ClientSpec, Dur, Errors, PacketKind, Seg};
use crate::codec::{
    encode, Connect, ConnectProperties, MqttStr, Packet, ProtocolVersion, QoS, TopicName, Will,
    WillProperties,
};

/// Longest a raw send may be (a bound on a scenario's bytes).
pub const RAW_BYTES_MAX: usize = 1 << 16;

/// The 5.0 properties `expect_raw`'s `absent` can name: those whose absence a statement
/// requires of the broker.
pub const PROPERTY_NAMES: [&str; 6] = [
    "session_expiry_interval",
    "response_information",
    "server_keep_alive",
    "topic_alias",
    "reason_string",
    "user_property",
];

/// Writes bytes on the client's raw connection, opening one first if none is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub client: String,
    /// Hex bytes (`"c0 00"`; spaces and line breaks ignored), or a packet by name: `connect`
    /// (built from the client's options), `pingreq`, `disconnect`, or `deep_subscribe N`,
    /// `deep_unsubscribe N`, `deep_publish N` (packet id 1, QoS 0) on a filter or topic of N
    /// empty levels (`/` repeated; too long to write out in hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Close the open raw connection (if any) and open a new one before sending.
    #[serde(default, rename = "new")]
    pub new_connection: bool,
    /// Close the raw connection after sending (the client's side of the TCP connection).
    #[serde(default)]
    pub close: bool,
}

/// What the broker sent (or did not) on the client's raw connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedPacket {
    /// No packet arrives (before the close, or within the deadline).
    None,
    Connack,
    Publish,
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
    Suback,
    Unsuback,
    Pingresp,
    Disconnect,
    Auth,
}

impl ExpectedPacket {
    /// The packet kind, `None` for `none`.
    pub fn kind(self) -> Option<PacketKind> {
        Some(match self {
            ExpectedPacket::None => return None,
            ExpectedPacket::Connack => PacketKind::Connack,
            ExpectedPacket::Publish => PacketKind::Publish,
            ExpectedPacket::Puback => PacketKind::Puback,
            ExpectedPacket::Pubrec => PacketKind::Pubrec,
            ExpectedPacket::Pubrel => PacketKind::Pubrel,
            ExpectedPacket::Pubcomp => PacketKind::Pubcomp,
            ExpectedPacket::Suback => PacketKind::Suback,
            ExpectedPacket::Unsuback => PacketKind::Unsuback,
            ExpectedPacket::Pingresp => PacketKind::Pingresp,
            ExpectedPacket::Disconnect => PacketKind::Disconnect,
            ExpectedPacket::Auth => PacketKind::Auth,
        })
    }
}

/// An expectation on the client's raw connection. `packet` is matched against the next
/// packet the broker sent that no earlier `expect_raw` consumed; `closed` says whether the
/// broker has closed the connection by the deadline (`true`) or keeps it open through it
/// (`false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRawStep {
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<ExpectedPacket>,
    /// CONNACK return/reason code, or the reason code of PUBACK/PUBREC/PUBREL/PUBCOMP,
    /// DISCONNECT or AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<u8>,
    /// Acceptable reason codes, when the spec allows several (e.g. `[0x81, 0x82]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<u8>,
    /// CONNACK Session Present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_present: Option<bool>,
    /// SUBACK/UNSUBACK return or reason codes, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<u8>>,
    /// The packet identifier the packet must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_id: Option<u16>,
    /// PUBLISH: its topic, QoS, RETAIN and DUP flags, and payload (as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<QoS>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dup: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The largest the packet may be, in bytes (a client's Maximum Packet Size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u32>,
    /// 5.0 properties the packet must not carry, by name (see `PROPERTY_NAMES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
    /// PUBLISH: its Topic Alias, if it carries one, is at most this (a client's Topic Alias
    /// Maximum); a PUBLISH without one passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_alias_max: Option<u16>,
    /// Byte sequences (hex) the packet must contain, each in one piece, e.g. properties
    /// (`["0b 05"]`: the Subscription Identifier 5); `"a | b"` takes either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<bool>,
    /// The spec lets the broker leave `packet` out: with `closed: true`, a close with nothing
    /// passes; without `closed`, nothing by the deadline (or a close) passes. A packet that
    /// arrives must still match.
    #[serde(default)]
    pub optional: bool,
    #[serde(default = "default_within")]
    pub within: Dur,
    /// The statement a failure breaks (one id of the scenario's `spec:`); see
    /// [`super::cite`] for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// The spec permits the other outcome: a failure is reported as a note, never a finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Check the packet the previous `expect_raw` of this client took, again (another
    /// statement about the same packet), instead of taking the next one.
    #[serde(default)]
    pub again: bool,
    /// A premise of the scenario, not an obligation of the broker: when it does not hold, the
    /// run stops here and nothing after it is judged (the case is inconclusive).
    #[serde(default)]
    pub assume: bool,
    /// CONNACK: the Server Keep Alive, when the CONNACK carries one, lies within these bounds
    /// (a CONNACK without one passes). A premise for timing scenarios (with `assume: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_keep_alive: Option<KeepAliveBounds>,
}

/// Bounds on a Server Keep Alive (whole seconds), either side optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepAliveBounds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Dur>,
}

impl KeepAliveBounds {
    /// Whether a Server Keep Alive of `secs` lies within the bounds.
    pub fn admits(&self, secs: u16) -> bool {
        let ms = u64::from(secs) * 1000;
        self.min.is_none_or(|d| ms >= d.millis) && self.max.is_none_or(|d| ms <= d.millis)
    }
}

fn default_within() -> Dur {
    Dur::from_secs(5)
}

/// Named sends that acknowledge the latest packet of a type the broker sent (their packet
/// identifier is the broker's choice, so a scenario cannot write it down).
pub const ACK_SENDS: [&str; 4] = ["puback", "pubrec", "pubrel", "pubcomp"];

/// An acknowledgement send: `puback`, or `puback 80` with a 5.0 reason code (hex).
pub fn ack_send(send: &str) -> Option<Result<(&str, Option<u8>), String>> {
    let mut words = send.split_whitespace();
    let name = words.next().filter(|w| ACK_SENDS.contains(w))?;
    let reason = match (words.next(), words.next()) {
        (None, _) => None,
        (Some(code), None) => match u8::from_str_radix(code.trim_start_matches("0x"), 16) {
            Ok(code) => Some(code),
            Err(_) => {
                return Some(Err(format!(
                    "{code:?} is not a reason code in hex, like 80"
                )))
            }
        },
        _ => {
            return Some(Err(format!(
                "{send:?}: an acknowledgement takes one reason code at most"
            )))
        }
    };
    Some(Ok((name, reason)))
}

/// An acknowledgement named in `ACK_SENDS` for packet identifier `id`, with a reason code
/// (5.0, no properties) when one is given.
pub fn ack_bytes(name: &str, id: u16, reason: Option<u8>) -> Option<Vec<u8>> {
    let first = match name {
        "puback" => 0x40,
        "pubrec" => 0x50,
        "pubrel" => 0x62,
        "pubcomp" => 0x70,
        _ => return None,
    };
    let [high, low] = id.to_be_bytes();
    Some(match reason {
        None => vec![first, 0x02, high, low],
        Some(code) => vec![first, 0x03, high, low, code],
    })
}

/// Parses a raw send: a packet name or hex bytes. The acknowledgements in `ACK_SENDS` are
/// built by the runner from what the broker sent; here they parse to nothing.
pub fn send_bytes(send: &str, client: &str, spec: &ClientSpec) -> Result<Vec<u8>, String> {
    if let Some(deep) = deep_bytes(send, spec.protocol) {
        return deep;
    }
    match send.trim() {
        "connect" => connect_bytes(client, spec),
        // Computed at run time from the broker's latest AUTH (`scram_client_final`).
        s if scram_client_final(s).is_some() => Ok(Vec::new()),
        "pingreq" => Ok(vec![0xC0, 0x00]),
        "disconnect" => Ok(vec![0xE0, 0x00]),
        ack if ack_send(ack).is_some() => {
            ack_send(ack).unwrap_or(Ok(("", None))).map(|_| Vec::new())
        }
        hex => parse_hex(hex),
    }
}

/// Most levels `deep_*` sends take: a topic of 65,535 bytes has 65,536.
pub const DEEP_LEVELS_MAX: usize = 65_536;

/// `deep_subscribe N`, `deep_unsubscribe N` or `deep_publish N`: the packet on N empty levels,
/// or `None` for another send.
fn deep_bytes(send: &str, protocol: ProtocolVersion) -> Option<Result<Vec<u8>, String>> {
    let mut words = send.split_whitespace();
    let name = words.next()?;
    if !matches!(name, "deep_subscribe" | "deep_unsubscribe" | "deep_publish") {
        return None;
    }
    let levels = match (words.next().map(str::parse::<usize>), words.next()) {
        (Some(Ok(n)), None) if (1..=DEEP_LEVELS_MAX).contains(&n) => n,
        _ => {
            return Some(Err(format!(
                "{name} takes a number of levels from 1 to {DEEP_LEVELS_MAX}, like `{name} 20000`"
            )))
        }
    };
    let deep = "/".repeat(levels - 1);
    let id = crate::codec::PacketId::MIN;
    let packet = match name {
        "deep_subscribe" => Packet::Subscribe(crate::codec::Subscribe {
            packet_id: id,
            properties: Default::default(),
            filters: vec![(
                crate::codec::TopicFilter::new(&deep).ok()?,
                crate::codec::SubscriptionOptions::qos(QoS::AtMostOnce),
            )],
        }),
        "deep_unsubscribe" => Packet::Unsubscribe(crate::codec::Unsubscribe {
            packet_id: id,
            user_properties: Vec::new(),
            filters: vec![crate::codec::TopicFilter::new(&deep).ok()?],
        }),
        _ => Packet::Publish(crate::codec::Publish {
            dup: false,
            qos_pid: crate::codec::QosPid::AtMostOnce,
            retain: false,
            topic: TopicName::new(&deep).ok()?,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"deep"),
        }),
    };
    let mut out = bytes::BytesMut::new();
    Some(
        encode(&packet, protocol, &mut out)
            .map(|()| out.to_vec())
            .map_err(|e| format!("encoding {name}: {e}")),
    )
}

/// Hex digits in pairs; whitespace is ignored.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.is_empty() {
        return Err("no bytes to send".into());
    }
    if digits.len() % 2 != 0 {
        return Err(format!(
            "{text:?} has an odd number of hex digits; write bytes as pairs like \"c0 00\""
        ));
    }
    if digits.len() / 2 > RAW_BYTES_MAX {
        return Err(format!("at most {RAW_BYTES_MAX} bytes per raw send"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "{:?} is not a hex byte; send takes hex bytes or connect, pingreq, disconnect",
                        String::from_utf8_lossy(pair)
                    )
                })
        })
        .collect()
}

/// A valid CONNECT from the client's options. A will carries the payload `w-<client>-raw`.
/// The client nonce of a raw `auth: scram` CONNECT's client-first.
pub const RAW_SCRAM_NONCE: &str = "raw-client-nonce";

/// The client-first of a raw `auth: scram` CONNECT for `username`.
pub fn raw_client_first(username: &str) -> bytes::Bytes {
    let (_, first) = crate::scram::ClientExchange::start(username, b"", RAW_SCRAM_NONCE);
    bytes::Bytes::from(first)
}

/// `scram_client_final` (`Some(false)`) or `scram_client_final wrong_password`
/// (`Some(true)`): AUTH 0x18 with the client-final that answers the broker's latest AUTH
/// (server-first) to a raw `send: connect` of an `auth: scram` client, proving the ACL user's
/// password (or a wrong one); `None` for another send.
pub fn scram_client_final(send: &str) -> Option<bool> {
    match send.split_whitespace().collect::<Vec<_>>()[..] {
        ["scram_client_final"] => Some(false),
        ["scram_client_final", "wrong_password"] => Some(true),
        _ => None,
    }
}

/// The AUTH of `scram_client_final`: `server_first` from the broker's AUTH, the credentials
/// of the raw CONNECT's client-first (`raw_client_first`).
pub fn scram_client_final_bytes(
    server_first: &[u8],
    username: &str,
    password: &[u8],
) -> Result<Vec<u8>, String> {
    let (exchange, _) = crate::scram::ClientExchange::start(username, password, RAW_SCRAM_NONCE);
    let (_, client_final) = exchange
        .respond(server_first)
        .map_err(|e| format!("the broker's server-first: {e}"))?;
    let auth = Packet::Auth(crate::codec::Auth {
        reason_code: crate::codec::ReasonCode::ContinueAuthentication,
        properties: crate::codec::AuthProperties {
            authentication_method: Some(MqttStr::from_static(crate::scram::METHOD)),
            authentication_data: Some(bytes::Bytes::from(client_final)),
            ..Default::default()
        }
        .into(),
    });
    let mut out = bytes::BytesMut::new();
    encode(&auth, ProtocolVersion::V5, &mut out).map_err(|e| e.to_string())?;
    Ok(out.to_vec())
}

fn connect_bytes(client: &str, spec: &ClientSpec) -> Result<Vec<u8>, String> {
    let client_id = spec.client_id.clone().unwrap_or_else(|| client.to_string());
    let will = match &spec.will {
        Some(w) => Some(Will {
            topic: TopicName::new(&w.topic).map_err(|e| format!("will topic: {e}"))?,
            payload: if w.empty {
                bytes::Bytes::new()
            } else {
                bytes::Bytes::from(format!("w-{client}-raw"))
            },
            qos: w.qos,
            retain: w.retain,
            properties: WillProperties {
                will_delay_interval_secs: w
                    .delay
                    .map(|d| u32::try_from(d.millis / 1000).unwrap_or(u32::MAX)),
                ..WillProperties::default()
            },
        }),
        None => None,
    };
    let connect = Connect {
        protocol: spec.protocol,
        clean_start: spec.clean_session,
        keep_alive_secs: u16::try_from(spec.keepalive.millis / 1000).unwrap_or(u16::MAX),
        properties: ConnectProperties {
            session_expiry_interval_secs: match spec.protocol {
                ProtocolVersion::V5 => spec
                    .session_expiry
                    .map(|d| u32::try_from(d.millis / 1000).unwrap_or(u32::MAX)),
                ProtocolVersion::V311 => None,
            },
            // `auth: scram`: the method and a client-first for the ACL user (the run puts
            // its own ACL user's name in, see `sim::raw`).
            authentication_method: spec
                .auth
                .map(|_| MqttStr::from_static(crate::scram::METHOD)),
            authentication_data: spec
                .auth
                .map(|_| raw_client_first(super::acl::SIM_ACL.username)),
            ..ConnectProperties::default()
        },
        client_id: MqttStr::new(&client_id).map_err(|e| format!("client id: {e}"))?,
        will,
        username: None,
        password: None,
    };
    let mut out = bytes::BytesMut::new();
    encode(&Packet::Connect(Box::new(connect)), spec.protocol, &mut out)
        .map_err(|e| format!("encoding CONNECT: {e}"))?;
    Ok(out.to_vec())
}

pub(super) fn validate_raw(
    s: &super::Scenario,
    step: &RawStep,
    path: &[Seg<'_>],
    e: &mut Errors<'_>,
) {
    if step.send.is_none() && !step.new_connection && !step.close {
        e.at(
            path,
            None,
            "raw needs `send`, `new: true` or `close: true`".into(),
        );
    }
    if let (Some(send), Some(spec)) = (&step.send, s.clients.get(&step.client)) {
        if let Err(msg) = send_bytes(send, &step.client, spec) {
            e.at(path, Some("send"), msg);
        }
    }
}

pub(super) fn validate_expect_raw(step: &ExpectRawStep, path: &[Seg<'_>], e: &mut Errors<'_>) {
    if step.packet.is_none() && step.closed.is_none() {
        e.at(
            path,
            None,
            "expect_raw needs `packet` (a packet type or none) or `closed`".into(),
        );
    }
    let kind = step.packet.and_then(ExpectedPacket::kind);
    if step.optional && (kind.is_none() || step.closed == Some(false)) {
        e.at(
            path,
            Some("optional"),
            "`optional` goes with a `packet` type (and `closed: true` or no `closed`)".into(),
        );
    }
    let has_reason = step.reason.is_some() || !step.reasons.is_empty();
    if has_reason
        && !matches!(
            kind,
            Some(
                PacketKind::Connack
                    | PacketKind::Puback
                    | PacketKind::Pubrec
                    | PacketKind::Pubrel
                    | PacketKind::Pubcomp
                    | PacketKind::Disconnect
                    | PacketKind::Auth
            )
        )
    {
        e.at(
            path,
            Some("reason"),
            "`reason` goes with packet connack, puback, pubrec, pubrel, pubcomp, disconnect or auth"
                .into(),
        );
    }
    if step.reason.is_some() && !step.reasons.is_empty() {
        e.at(
            path,
            Some("reasons"),
            "give `reason` or `reasons`, not both".into(),
        );
    }
    if step.session_present.is_some() && kind != Some(PacketKind::Connack) {
        e.at(
            path,
            Some("session_present"),
            "`session_present` goes with packet: connack".into(),
        );
    }
    let publish_fields = step.topic.is_some()
        || step.qos.is_some()
        || step.retain.is_some()
        || step.dup.is_some()
        || step.payload.is_some();
    if publish_fields && kind != Some(PacketKind::Publish) {
        e.at(
            path,
            None,
            "`topic`, `qos`, `retain`, `dup` and `payload` go with packet: publish".into(),
        );
    }
    for name in &step.absent {
        if !PROPERTY_NAMES.contains(&name.as_str()) {
            e.at(
                path,
                Some(name),
                format!(
                    "{name:?} is not a property `absent` knows; one of {}",
                    PROPERTY_NAMES.join(", ")
                ),
            );
        }
    }
    if step.topic_alias_max.is_some() && kind != Some(PacketKind::Publish) {
        e.at(
            path,
            Some("topic_alias_max"),
            "`topic_alias_max` goes with packet: publish".into(),
        );
    }
    if step.max_len.is_some() && kind.is_none() {
        e.at(path, Some("max_len"), "`max_len` needs a `packet`".into());
    }
    if !step.absent.is_empty() && kind.is_none() {
        e.at(path, Some("absent"), "`absent` needs a `packet`".into());
    }
    if !step.contains.is_empty() && kind.is_none() {
        e.at(path, Some("contains"), "`contains` needs a `packet`".into());
    }
    for hex in step.contains.iter().flat_map(|c| c.split('|')) {
        if let Err(msg) = parse_hex(hex) {
            e.at(path, Some("contains"), msg);
        }
    }
    if step.codes.is_some() && !matches!(kind, Some(PacketKind::Suback | PacketKind::Unsuback)) {
        e.at(
            path,
            Some("codes"),
            "`codes` goes with packet: suback or unsuback".into(),
        );
    }
    if step.again {
        if kind.is_none() {
            e.at(
                path,
                Some("again"),
                "`again` checks a packet once more: it needs a `packet` type".into(),
            );
        }
        if step.closed.is_some() || step.optional {
            e.at(
                path,
                Some("again"),
                "`again` looks at a packet already taken: leave out `closed` and `optional`".into(),
            );
        }
    }
    if let Some(bounds) = &step.server_keep_alive {
        if kind != Some(PacketKind::Connack) {
            e.at(
                path,
                Some("server_keep_alive"),
                "`server_keep_alive` goes with packet: connack".into(),
            );
        }
        for d in [bounds.min, bounds.max].into_iter().flatten() {
            if d.whole_secs().is_none_or(|s| s > u64::from(u16::MAX)) {
                e.at(
                    path,
                    Some("server_keep_alive"),
                    "a Server Keep Alive bound is whole seconds up to 65535s, like 20s".into(),
                );
            }
        }
        if let (Some(min), Some(max)) = (bounds.min, bounds.max) {
            if min.millis > max.millis {
                e.at(
                    path,
                    Some("server_keep_alive"),
                    "`min` is above `max`".into(),
                );
            }
        }
    }
    if step.within.millis == 0 {
        e.at(
            path,
            Some("within"),
            "within must be above zero, like 2s".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_with_spaces_and_errors() {
        assert_eq!(parse_hex("c0 00").unwrap(), vec![0xC0, 0x00]);
        assert_eq!(parse_hex("C000\n 10").unwrap(), vec![0xC0, 0x00, 0x10]);
        assert!(parse_hex("c0 0").unwrap_err().contains("odd"));
        assert!(parse_hex("zz").unwrap_err().contains("not a hex byte"));
        assert!(parse_hex(" ").is_err());
    }

    #[test]
    fn named_connect_decodes_as_the_client_asked() {
        let spec = ClientSpec {
            clean_session: false,
            ..ClientSpec::default()
        };
        let bytes = send_bytes("connect", "r1", &spec).unwrap();
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let packet = crate::codec::decode(&mut buf, ProtocolVersion::V311, 1 << 20)
            .unwrap()
            .unwrap();
        match packet {
            Packet::Connect(c) => {
                assert_eq!(c.client_id.as_str(), "r1");
                assert!(!c.clean_start);
                assert_eq!(c.keep_alive_secs, 30);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(send_bytes("pingreq", "r1", &spec).unwrap(), vec![0xC0, 0]);
    }

    #[test]
    fn deep_sends_build_packets_on_empty_levels() {
        for protocol in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let spec = ClientSpec {
                protocol,
                ..ClientSpec::default()
            };
            for (send, levels) in [
                ("deep_subscribe 20000", 20_000),
                ("deep_unsubscribe 3", 3),
                ("deep_publish 65536", 65_536),
            ] {
                let bytes = send_bytes(send, "r", &spec).unwrap();
                let mut buf = bytes::BytesMut::from(&bytes[..]);
                let packet = crate::codec::decode(&mut buf, protocol, u32::MAX >> 4)
                    .unwrap()
                    .unwrap();
                let topic = match packet {
                    Packet::Subscribe(s) => s.filters[0].0.to_string(),
                    Packet::Unsubscribe(u) => u.filters[0].to_string(),
                    Packet::Publish(p) => p.topic.to_string(),
                    other => panic!("{other:?}"),
                };
                assert_eq!(topic.split('/').count(), levels, "{send}");
            }
        }
        let spec = ClientSpec::default();
        for bad in [
            "deep_subscribe",
            "deep_subscribe 0",
            "deep_publish 65537",
            "deep_publish x",
        ] {
            let e = send_bytes(bad, "r", &spec).unwrap_err();
            assert!(e.contains("number of levels"), "{bad}: {e}");
        }
    }
}
