//! `arbitrary` support (feature `arbitrary`, and always in tests): generators for the validated
//! string types and `Bytes`, and `VersionedPacket`, a packet valid for its protocol version
//! (what the fuzz `roundtrip` target and the property tests feed the codec).

use std::num::NonZeroU32;

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;

use super::decode::check_shared_filter;
use super::packet::*;
use super::properties::MAX_VAR_INT;

/// `Bytes` of at most 65,535 bytes (the longest binary field).
pub fn bytes(u: &mut Unstructured<'_>) -> Result<Bytes> {
    let len = u.arbitrary_len::<u8>()?.min(usize::from(u16::MAX));
    Ok(Bytes::copy_from_slice(u.bytes(len)?))
}

pub fn opt_bytes(u: &mut Unstructured<'_>) -> Result<Option<Bytes>> {
    if u.arbitrary()? {
        Ok(Some(bytes(u)?))
    } else {
        Ok(None)
    }
}

/// A string without U+0000 and, when `forbidden` is given, without those characters.
fn clean_string(u: &mut Unstructured<'_>, forbidden: &[char]) -> Result<String> {
    let raw: String = u.arbitrary()?;
    let mut s: String = raw
        .chars()
        .filter(|c| *c != '\0' && !forbidden.contains(c))
        .collect();
    while s.len() > MqttStr::MAX_LEN {
        s.pop();
    }
    Ok(s)
}

impl<'a> Arbitrary<'a> for MqttStr {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let s = clean_string(u, &[])?;
        MqttStr::new(&s).map_err(|_| arbitrary::Error::IncorrectFormat)
    }
}

impl<'a> Arbitrary<'a> for TopicName {
    /// Never empty (the codec refuses an empty topic name except with a 5.0 topic alias).
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut s = clean_string(u, &['+', '#'])?;
        if s.is_empty() {
            s.push('t');
        }
        TopicName::new(&s).map_err(|_| arbitrary::Error::IncorrectFormat)
    }
}

impl<'a> Arbitrary<'a> for TopicFilter {
    /// Levels that are `+`, a name, or a final `#`.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let levels = u.int_in_range(1..=6)?;
        let mut parts = Vec::with_capacity(levels);
        for index in 0..levels {
            let part = match u.int_in_range(0..=5)? {
                0 => "+".to_owned(),
                1 if index + 1 == levels => "#".to_owned(),
                _ => clean_string(u, &['+', '#', '/'])?,
            };
            parts.push(part);
        }
        let mut s = parts.join("/");
        if s.is_empty() || s.len() > MqttStr::MAX_LEN {
            s = "a/+/#".to_owned();
        }
        TopicFilter::new(&s).map_err(|_| arbitrary::Error::IncorrectFormat)
    }
}

/// A protocol version and a packet that is valid in it: it encodes in that version and decodes
/// back to itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedPacket {
    pub version: ProtocolVersion,
    pub packet: Packet,
}

impl<'a> Arbitrary<'a> for VersionedPacket {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let version = u.arbitrary()?;
        let mut packet = u.arbitrary()?;
        fit_to_version(&mut packet, version);
        Ok(VersionedPacket { version, packet })
    }
}

/// Rewrites `packet` into the nearest packet valid in `version`: drops what the version cannot
/// carry and repairs what the codec refuses (a DUP on QoS 0, an empty list, a reason code the
/// packet type does not allow, …).
pub fn fit_to_version(packet: &mut Packet, version: ProtocolVersion) {
    let v5 = version == ProtocolVersion::V5;
    let fix_reason = |code: &mut ReasonCode, packet_type: PacketType| {
        if !v5 || !code.allowed_in(packet_type) {
            *code = ReasonCode::Success;
        }
    };
    match packet {
        Packet::Connect(c) => {
            c.protocol = version;
            if v5 {
                let p = &mut c.properties;
                if p.authentication_data.is_some() && p.authentication_method.is_none() {
                    p.authentication_method = Some(MqttStr::from_static("method"));
                }
            } else {
                c.properties = ConnectProperties::default();
                if c.password.is_some() && c.username.is_none() {
                    c.username = Some(MqttStr::from_static("user"));
                }
            }
            if let Some(will) = &mut c.will {
                if !v5 {
                    will.properties = WillProperties::default();
                }
            }
        }
        Packet::ConnAck(c) => {
            if v5 {
                fix_reason(&mut c.reason_code, PacketType::ConnAck);
                if c.properties.maximum_qos == Some(QoS::ExactlyOnce) {
                    c.properties.maximum_qos = None;
                }
            } else {
                c.properties = ConnAckProperties::default().into();
                if c.reason_code.to_v311_connack().is_none() {
                    c.reason_code = ReasonCode::Success;
                }
            }
        }
        Packet::Publish(p) => {
            if p.qos_pid == QosPid::AtMostOnce {
                p.dup = false;
            }
            if v5 {
                for id in &mut p.properties.subscription_identifiers {
                    *id = clamp_var_int(*id);
                }
            } else {
                p.properties = PublishProperties::default().into();
            }
        }
        Packet::PubAck(a) => fit_ack(a, PacketType::PubAck, v5),
        Packet::PubRec(a) => fit_ack(a, PacketType::PubRec, v5),
        Packet::PubRel(a) => fit_ack(a, PacketType::PubRel, v5),
        Packet::PubComp(a) => fit_ack(a, PacketType::PubComp, v5),
        Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                s.filters.push((
                    TopicFilter::from_static("a/+/#"),
                    SubscriptionOptions::default(),
                ));
            }
            if v5 {
                if let Some(id) = &mut s.properties.subscription_identifier {
                    *id = clamp_var_int(*id);
                }
            } else {
                s.properties = SubscribeProperties::default();
            }
            for (filter, options) in &mut s.filters {
                if v5 {
                    fix_filter(filter);
                    if filter.shared().is_some() {
                        options.no_local = false;
                    }
                } else {
                    *options = SubscriptionOptions::qos(options.qos);
                }
            }
        }
        Packet::SubAck(s) => {
            if s.reason_codes.is_empty() {
                s.reason_codes.push(ReasonCode::GrantedQoS1);
            }
            for code in &mut s.reason_codes {
                if v5 {
                    fix_reason(code, PacketType::SubAck);
                } else {
                    *code = code.to_v311_suback();
                }
            }
            if !v5 {
                s.properties = AckProperties::default().into();
            }
        }
        Packet::Unsubscribe(un) => {
            if un.filters.is_empty() {
                un.filters.push(TopicFilter::from_static("a/+/#"));
            }
            if v5 {
                un.filters.iter_mut().for_each(fix_filter);
            } else {
                un.user_properties.clear();
            }
        }
        Packet::UnsubAck(un) => {
            if v5 {
                if un.reason_codes.is_empty() {
                    un.reason_codes.push(ReasonCode::Success);
                }
                for code in &mut un.reason_codes {
                    fix_reason(code, PacketType::UnsubAck);
                }
            } else {
                un.reason_codes.clear();
                un.properties = AckProperties::default().into();
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                fix_reason(&mut d.reason_code, PacketType::Disconnect);
            } else {
                *d = Disconnect::default();
            }
        }
        Packet::Auth(a) => {
            if v5 {
                fix_reason(&mut a.reason_code, PacketType::Auth);
                let p = &mut a.properties;
                if p.authentication_data.is_some() && p.authentication_method.is_none() {
                    p.authentication_method = Some(MqttStr::from_static("method"));
                }
            } else {
                // AUTH does not exist in 3.1.1.
                *packet = Packet::PingReq;
            }
        }
    }
}

fn fit_ack(a: &mut Ack, packet_type: PacketType, v5: bool) {
    if !v5 || !a.reason_code.allowed_in(packet_type) {
        a.reason_code = ReasonCode::Success;
    }
    if !v5 {
        a.properties = AckProperties::default().into();
    }
}

fn clamp_var_int(id: NonZeroU32) -> NonZeroU32 {
    if id.get() > MAX_VAR_INT {
        NonZeroU32::new(id.get() % MAX_VAR_INT + 1).unwrap_or(NonZeroU32::MIN)
    } else {
        id
    }
}

/// A `$share/…` filter that is not a valid 5.0 shared subscription becomes an ordinary one.
fn fix_filter(filter: &mut TopicFilter) {
    if check_shared_filter(filter.as_str()).is_err() {
        *filter = TopicFilter::from_static("$share/group/a/+");
    }
}
