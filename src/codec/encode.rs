//! Encoder.
//!
//! Two passes: `measure` validates the packet for the version and computes its remaining
//! length, then `write` appends the bytes and cannot fail. So a refused packet leaves `out`
//! untouched, and `out` grows once per packet. The encoder refuses whatever the decoder
//! refuses (and 3.1.1-unrepresentable content), so a packet that encodes decodes to itself.
//! Where the wire has several forms for one packet (a 5.0 PUBACK with Success and no
//! properties may omit both) the shortest is written.

use bytes::{BufMut, Bytes, BytesMut};

use super::decode::{check_shared_filter, MAX_REMAINING_LENGTH};
use super::error::EncodeError;
use super::packet::*;
use super::properties as prop;

use ProtocolVersion::{V311, V5};

/// Appends the wire form of `packet` in `version` to `out`. A CONNECT is written in its own
/// `protocol` version, whatever `version` says (as `decode` reads it). On error `out` is
/// unchanged.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    // PUBLISH is most of the traffic: measured and written without the general `match`, and
    // with `measure_publish` inlined its `Ok` stays in a register instead of a `Result` in
    // memory.
    if let Packet::Publish(p) = packet {
        let remaining = measure_publish(p, version)?;
        out.reserve(1 + var_int_len(remaining) + remaining);
        write_publish(p, version, remaining, out);
        return Ok(());
    }
    let remaining = measure(packet, version)?;
    out.reserve(1 + var_int_len(remaining) + remaining);
    write(packet, version, remaining, out);
    Ok(())
}

/// The number of bytes `encode` would append.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = measure(packet, version)?;
    Ok(1 + var_int_len(remaining) + remaining)
}

#[inline]
fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[inline]
fn put_var_int(out: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

#[inline]
fn put_str(out: &mut BytesMut, s: &MqttStr) {
    // MqttStr guarantees at most 65,535 bytes.
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// Binary data; its length was checked by `binary_len` during `measure`.
#[inline]
fn put_binary(out: &mut BytesMut, b: &Bytes) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn binary_len(b: &Bytes, what: &'static str) -> Result<usize, EncodeError> {
    if b.len() > usize::from(u16::MAX) {
        return Err(EncodeError::TooLong { what, len: b.len() });
    }
    Ok(2 + b.len())
}

fn v311_refuses(packet_type: PacketType, what: &'static str) -> EncodeError {
    EncodeError::NotRepresentableInV311 { packet_type, what }
}

fn check_reason(packet_type: PacketType, code: ReasonCode) -> Result<(), EncodeError> {
    if code.allowed_in(packet_type) {
        Ok(())
    } else {
        Err(EncodeError::ReasonCodeNotAllowed { packet_type, code })
    }
}

// ---- property lengths and writers -------------------------------------------------------

fn user_properties_len(user: &[UserProperty]) -> usize {
    user.iter().map(|(k, v)| 5 + k.len() + v.len()).sum()
}

#[inline]
fn opt_str_len(s: &Option<MqttStr>) -> usize {
    s.as_ref().map_or(0, |s| 3 + s.len())
}

#[inline]
fn opt_topic_len(s: &Option<TopicName>) -> usize {
    s.as_ref().map_or(0, |s| 3 + s.len())
}

/// Binary properties are checked for length during `measure`, so this cannot fail later.
fn opt_binary_len(b: &Option<Bytes>, what: &'static str) -> Result<usize, EncodeError> {
    b.as_ref()
        .map_or(Ok(0), |b| binary_len(b, what).map(|n| n + 1))
}

fn put_user_properties(out: &mut BytesMut, user: &[UserProperty]) {
    for (k, v) in user {
        out.put_u8(prop::USER_PROPERTY);
        put_str(out, k);
        put_str(out, v);
    }
}

fn put_opt_str(out: &mut BytesMut, id: u8, s: &Option<MqttStr>) {
    if let Some(s) = s {
        out.put_u8(id);
        put_str(out, s);
    }
}

fn put_opt_topic(out: &mut BytesMut, id: u8, s: &Option<TopicName>) {
    if let Some(s) = s {
        out.put_u8(id);
        put_str(out, s.as_mqtt_str());
    }
}

fn put_opt_binary(out: &mut BytesMut, id: u8, b: &Option<Bytes>) {
    if let Some(b) = b {
        out.put_u8(id);
        put_binary(out, b);
    }
}

fn put_opt_u8(out: &mut BytesMut, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u8(v);
    }
}

fn put_opt_u16(out: &mut BytesMut, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u16(v);
    }
}

fn put_opt_u32(out: &mut BytesMut, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u32(v);
    }
}

#[inline]
fn n(present: bool, len: usize) -> usize {
    if present {
        len
    } else {
        0
    }
}

fn connect_properties_len(p: &ConnectProperties) -> Result<usize, EncodeError> {
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(EncodeError::AuthDataWithoutMethod("CONNECT"));
    }
    Ok(n(p.session_expiry_interval_secs.is_some(), 5)
        + n(p.receive_maximum.is_some(), 3)
        + n(p.maximum_packet_size.is_some(), 5)
        + n(p.topic_alias_maximum.is_some(), 3)
        + n(p.request_response_information.is_some(), 2)
        + n(p.request_problem_information.is_some(), 2)
        + user_properties_len(&p.user_properties)
        + opt_str_len(&p.authentication_method)
        + opt_binary_len(&p.authentication_data, "authentication data")?)
}

fn put_connect_properties(out: &mut BytesMut, p: &ConnectProperties, len: usize) {
    put_var_int(out, len);
    put_opt_u32(
        out,
        prop::SESSION_EXPIRY_INTERVAL,
        p.session_expiry_interval_secs,
    );
    put_opt_u16(
        out,
        prop::RECEIVE_MAXIMUM,
        p.receive_maximum.map(|v| v.get()),
    );
    put_opt_u32(
        out,
        prop::MAXIMUM_PACKET_SIZE,
        p.maximum_packet_size.map(|v| v.get()),
    );
    put_opt_u16(out, prop::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    put_opt_u8(
        out,
        prop::REQUEST_RESPONSE_INFORMATION,
        p.request_response_information.map(u8::from),
    );
    put_opt_u8(
        out,
        prop::REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information.map(u8::from),
    );
    put_user_properties(out, &p.user_properties);
    put_opt_str(out, prop::AUTHENTICATION_METHOD, &p.authentication_method);
    put_opt_binary(out, prop::AUTHENTICATION_DATA, &p.authentication_data);
}

fn will_properties_len(p: &WillProperties) -> Result<usize, EncodeError> {
    if p.response_topic.as_ref().is_some_and(|t| t.is_empty()) {
        return Err(EncodeError::EmptyTopic("response topic"));
    }
    Ok(n(p.will_delay_interval_secs.is_some(), 5)
        + n(p.payload_format_utf8.is_some(), 2)
        + n(p.message_expiry_interval_secs.is_some(), 5)
        + opt_str_len(&p.content_type)
        + opt_topic_len(&p.response_topic)
        + opt_binary_len(&p.correlation_data, "correlation data")?
        + user_properties_len(&p.user_properties))
}

fn put_will_properties(out: &mut BytesMut, p: &WillProperties, len: usize) {
    put_var_int(out, len);
    put_opt_u32(out, prop::WILL_DELAY_INTERVAL, p.will_delay_interval_secs);
    put_opt_u8(
        out,
        prop::PAYLOAD_FORMAT_INDICATOR,
        p.payload_format_utf8.map(u8::from),
    );
    put_opt_u32(
        out,
        prop::MESSAGE_EXPIRY_INTERVAL,
        p.message_expiry_interval_secs,
    );
    put_opt_str(out, prop::CONTENT_TYPE, &p.content_type);
    put_opt_topic(out, prop::RESPONSE_TOPIC, &p.response_topic);
    put_opt_binary(out, prop::CORRELATION_DATA, &p.correlation_data);
    put_user_properties(out, &p.user_properties);
}

fn connack_properties_len(p: &ConnAckProperties) -> Result<usize, EncodeError> {
    if p.maximum_qos == Some(QoS::ExactlyOnce) {
        // Absent means 2; only 0 or 1 may be sent (5.0 3.2.2.3.4).
        return Err(EncodeError::InvalidPropertyValue {
            id: prop::MAXIMUM_QOS,
            value: 2,
        });
    }
    Ok(n(p.session_expiry_interval_secs.is_some(), 5)
        + n(p.receive_maximum.is_some(), 3)
        + n(p.maximum_qos.is_some(), 2)
        + n(p.retain_available.is_some(), 2)
        + n(p.maximum_packet_size.is_some(), 5)
        + opt_str_len(&p.assigned_client_identifier)
        + n(p.topic_alias_maximum.is_some(), 3)
        + opt_str_len(&p.reason_string)
        + user_properties_len(&p.user_properties)
        + n(p.wildcard_subscription_available.is_some(), 2)
        + n(p.subscription_identifiers_available.is_some(), 2)
        + n(p.shared_subscription_available.is_some(), 2)
        + n(p.server_keep_alive_secs.is_some(), 3)
        + opt_str_len(&p.response_information)
        + opt_str_len(&p.server_reference)
        + opt_str_len(&p.authentication_method)
        + opt_binary_len(&p.authentication_data, "authentication data")?)
}

fn put_connack_properties(out: &mut BytesMut, p: &ConnAckProperties, len: usize) {
    put_var_int(out, len);
    put_opt_u32(
        out,
        prop::SESSION_EXPIRY_INTERVAL,
        p.session_expiry_interval_secs,
    );
    put_opt_u16(
        out,
        prop::RECEIVE_MAXIMUM,
        p.receive_maximum.map(|v| v.get()),
    );
    put_opt_u8(out, prop::MAXIMUM_QOS, p.maximum_qos.map(QoS::as_u8));
    put_opt_u8(
        out,
        prop::RETAIN_AVAILABLE,
        p.retain_available.map(u8::from),
    );
    put_opt_u32(
        out,
        prop::MAXIMUM_PACKET_SIZE,
        p.maximum_packet_size.map(|v| v.get()),
    );
    put_opt_str(
        out,
        prop::ASSIGNED_CLIENT_IDENTIFIER,
        &p.assigned_client_identifier,
    );
    put_opt_u16(out, prop::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    put_opt_str(out, prop::REASON_STRING, &p.reason_string);
    put_user_properties(out, &p.user_properties);
    put_opt_u8(
        out,
        prop::WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available.map(u8::from),
    );
    put_opt_u8(
        out,
        prop::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifiers_available.map(u8::from),
    );
    put_opt_u8(
        out,
        prop::SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available.map(u8::from),
    );
    put_opt_u16(out, prop::SERVER_KEEP_ALIVE, p.server_keep_alive_secs);
    put_opt_str(out, prop::RESPONSE_INFORMATION, &p.response_information);
    put_opt_str(out, prop::SERVER_REFERENCE, &p.server_reference);
    put_opt_str(out, prop::AUTHENTICATION_METHOD, &p.authentication_method);
    put_opt_binary(out, prop::AUTHENTICATION_DATA, &p.authentication_data);
}

#[inline]
fn publish_properties_len(p: &PublishProperties) -> Result<usize, EncodeError> {
    let mut len = n(p.payload_format_utf8.is_some(), 2)
        + n(p.message_expiry_interval_secs.is_some(), 5)
        + n(p.topic_alias.is_some(), 3)
        + opt_topic_len(&p.response_topic)
        + opt_str_len(&p.content_type);
    if p.correlation_data.is_some() {
        len += opt_binary_len(&p.correlation_data, "correlation data")?;
    }
    if p.response_topic.as_ref().is_some_and(|t| t.is_empty()) {
        return Err(EncodeError::EmptyTopic("response topic"));
    }
    if !p.user_properties.is_empty() {
        len += user_properties_len(&p.user_properties);
    }
    for id in &p.subscription_identifiers {
        if id.get() > prop::MAX_VAR_INT {
            return Err(EncodeError::InvalidPropertyValue {
                id: prop::SUBSCRIPTION_IDENTIFIER,
                value: id.get(),
            });
        }
        len += 1 + var_int_len(id.get() as usize);
    }
    Ok(len)
}

fn put_publish_properties(out: &mut BytesMut, p: &PublishProperties, len: usize) {
    put_var_int(out, len);
    if len == 0 {
        return;
    }
    put_opt_u8(
        out,
        prop::PAYLOAD_FORMAT_INDICATOR,
        p.payload_format_utf8.map(u8::from),
    );
    put_opt_u32(
        out,
        prop::MESSAGE_EXPIRY_INTERVAL,
        p.message_expiry_interval_secs,
    );
    put_opt_u16(out, prop::TOPIC_ALIAS, p.topic_alias.map(|v| v.get()));
    put_opt_topic(out, prop::RESPONSE_TOPIC, &p.response_topic);
    put_opt_binary(out, prop::CORRELATION_DATA, &p.correlation_data);
    put_user_properties(out, &p.user_properties);
    for id in &p.subscription_identifiers {
        out.put_u8(prop::SUBSCRIPTION_IDENTIFIER);
        put_var_int(out, id.get() as usize);
    }
    put_opt_str(out, prop::CONTENT_TYPE, &p.content_type);
}

fn ack_properties_len(p: &AckProperties) -> usize {
    opt_str_len(&p.reason_string) + user_properties_len(&p.user_properties)
}

fn put_ack_properties(out: &mut BytesMut, p: &AckProperties, len: usize) {
    put_var_int(out, len);
    put_opt_str(out, prop::REASON_STRING, &p.reason_string);
    put_user_properties(out, &p.user_properties);
}

fn subscribe_properties_len(p: &SubscribeProperties) -> Result<usize, EncodeError> {
    let mut len = user_properties_len(&p.user_properties);
    if let Some(id) = p.subscription_identifier {
        if id.get() > prop::MAX_VAR_INT {
            return Err(EncodeError::InvalidPropertyValue {
                id: prop::SUBSCRIPTION_IDENTIFIER,
                value: id.get(),
            });
        }
        len += 1 + var_int_len(id.get() as usize);
    }
    Ok(len)
}

fn disconnect_properties_len(p: &DisconnectProperties) -> usize {
    n(p.session_expiry_interval_secs.is_some(), 5)
        + opt_str_len(&p.reason_string)
        + user_properties_len(&p.user_properties)
        + opt_str_len(&p.server_reference)
}

fn auth_properties_len(p: &AuthProperties) -> Result<usize, EncodeError> {
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(EncodeError::AuthDataWithoutMethod("AUTH"));
    }
    Ok(opt_str_len(&p.authentication_method)
        + opt_binary_len(&p.authentication_data, "authentication data")?
        + opt_str_len(&p.reason_string)
        + user_properties_len(&p.user_properties))
}

/// A property block: its length prefix plus its content.
#[inline]
fn block(len: usize) -> usize {
    var_int_len(len) + len
}

fn check_filter(filter: &TopicFilter, version: ProtocolVersion) -> Result<(), EncodeError> {
    if version == V5 && check_shared_filter(filter.as_str()).is_err() {
        return Err(EncodeError::InvalidSharedSubscription(
            filter.as_str().to_owned(),
        ));
    }
    Ok(())
}

// ---- measure: validate and compute the remaining length ---------------------------------

fn measure(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let len = match packet {
        Packet::Publish(p) => measure_publish(p, version)?,
        Packet::Connect(c) => measure_connect(c)?,
        Packet::ConnAck(c) => match version {
            V311 => {
                if !c.properties.is_empty() {
                    return Err(v311_refuses(PacketType::ConnAck, "properties"));
                }
                if c.reason_code.to_v311_connack().is_none() {
                    return Err(EncodeError::NoV311ConnAckCode(c.reason_code));
                }
                2
            }
            V5 => {
                check_reason(PacketType::ConnAck, c.reason_code)?;
                2 + block(connack_properties_len(&c.properties)?)
            }
        },
        Packet::PubAck(a) => measure_ack(a, PacketType::PubAck, version)?,
        Packet::PubRec(a) => measure_ack(a, PacketType::PubRec, version)?,
        Packet::PubRel(a) => measure_ack(a, PacketType::PubRel, version)?,
        Packet::PubComp(a) => measure_ack(a, PacketType::PubComp, version)?,
        Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(EncodeError::Empty(PacketType::Subscribe));
            }
            let mut len = 2;
            match version {
                V311 => {
                    if s.properties != SubscribeProperties::default() {
                        return Err(v311_refuses(PacketType::Subscribe, "properties"));
                    }
                    for (_, options) in &s.filters {
                        if *options != SubscriptionOptions::qos(options.qos) {
                            return Err(v311_refuses(
                                PacketType::Subscribe,
                                "subscription options other than QoS",
                            ));
                        }
                    }
                }
                V5 => len += block(subscribe_properties_len(&s.properties)?),
            }
            for (filter, options) in &s.filters {
                check_filter(filter, version)?;
                if version == V5 && options.no_local && filter.shared().is_some() {
                    return Err(EncodeError::NoLocalOnSharedSubscription(
                        filter.as_str().to_owned(),
                    ));
                }
                len += 3 + filter.len();
            }
            len
        }
        Packet::SubAck(s) => {
            if s.reason_codes.is_empty() {
                return Err(EncodeError::Empty(PacketType::SubAck));
            }
            match version {
                V311 => {
                    if !s.properties.is_empty() {
                        return Err(v311_refuses(PacketType::SubAck, "properties"));
                    }
                    for &code in &s.reason_codes {
                        if code.to_v311_suback() != code {
                            return Err(v311_refuses(
                                PacketType::SubAck,
                                "a return code other than 0x00, 0x01, 0x02, 0x80",
                            ));
                        }
                    }
                    2 + s.reason_codes.len()
                }
                V5 => {
                    for &code in &s.reason_codes {
                        check_reason(PacketType::SubAck, code)?;
                    }
                    2 + block(ack_properties_len(&s.properties)) + s.reason_codes.len()
                }
            }
        }
        Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(EncodeError::Empty(PacketType::Unsubscribe));
            }
            let mut len = 2;
            match version {
                V311 => {
                    if !u.user_properties.is_empty() {
                        return Err(v311_refuses(PacketType::Unsubscribe, "properties"));
                    }
                }
                V5 => len += block(user_properties_len(&u.user_properties)),
            }
            for filter in &u.filters {
                check_filter(filter, version)?;
                len += 2 + filter.len();
            }
            len
        }
        Packet::UnsubAck(u) => match version {
            V311 => {
                if !u.properties.is_empty() {
                    return Err(v311_refuses(PacketType::UnsubAck, "properties"));
                }
                if !u.reason_codes.is_empty() {
                    return Err(v311_refuses(PacketType::UnsubAck, "reason codes"));
                }
                2
            }
            V5 => {
                if u.reason_codes.is_empty() {
                    return Err(EncodeError::Empty(PacketType::UnsubAck));
                }
                for &code in &u.reason_codes {
                    check_reason(PacketType::UnsubAck, code)?;
                }
                2 + block(ack_properties_len(&u.properties)) + u.reason_codes.len()
            }
        },
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => match version {
            V311 => {
                if d.reason_code != ReasonCode::NORMAL_DISCONNECTION {
                    return Err(v311_refuses(PacketType::Disconnect, "a reason code"));
                }
                if !d.properties.is_empty() {
                    return Err(v311_refuses(PacketType::Disconnect, "properties"));
                }
                0
            }
            V5 => {
                check_reason(PacketType::Disconnect, d.reason_code)?;
                let props = disconnect_properties_len(&d.properties);
                short_form(d.reason_code, props)
            }
        },
        Packet::Auth(a) => match version {
            V311 => return Err(EncodeError::NotInV311(PacketType::Auth)),
            V5 => {
                check_reason(PacketType::Auth, a.reason_code)?;
                let props = auth_properties_len(&a.properties)?;
                short_form(a.reason_code, props)
            }
        },
    };
    if len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(len));
    }
    Ok(len)
}

/// DISCONNECT and AUTH (5.0): no body for Success without properties, the reason code alone
/// when there are no properties, else both.
fn short_form(reason: ReasonCode, properties_len: usize) -> usize {
    if properties_len > 0 {
        1 + block(properties_len)
    } else if reason != ReasonCode::Success {
        1
    } else {
        0
    }
}

#[inline(always)]
fn measure_publish(p: &Publish, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if p.dup && p.qos_pid == QosPid::AtMostOnce {
        return Err(EncodeError::DupOnQoS0);
    }
    let mut len = 2 + p.topic.len() + p.payload.len();
    if p.qos_pid != QosPid::AtMostOnce {
        len += 2;
    }
    match version {
        V311 => {
            if !p.properties.is_empty() {
                return Err(v311_refuses(PacketType::Publish, "properties"));
            }
            if p.topic.is_empty() {
                return Err(EncodeError::EmptyTopic("topic name"));
            }
        }
        V5 => {
            if p.topic.is_empty() && p.properties.topic_alias.is_none() {
                return Err(EncodeError::EmptyTopic("topic name"));
            }
            len += block(publish_properties_len(&p.properties)?);
        }
    }
    Ok(len)
}

fn measure_ack(
    a: &Ack,
    packet_type: PacketType,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    match version {
        V311 => {
            if a.reason_code != ReasonCode::Success {
                return Err(v311_refuses(packet_type, "a reason code"));
            }
            if !a.properties.is_empty() {
                return Err(v311_refuses(packet_type, "properties"));
            }
            Ok(2)
        }
        V5 => {
            check_reason(packet_type, a.reason_code)?;
            Ok(2 + short_form(a.reason_code, ack_properties_len(&a.properties)))
        }
    }
}

fn measure_connect(c: &Connect) -> Result<usize, EncodeError> {
    let v5 = c.protocol == V5;
    // Protocol name (2 + 4), level, flags, keep alive.
    let mut len = 10 + 2 + c.client_id.len();
    if v5 {
        len += block(connect_properties_len(&c.properties)?);
    } else if c.properties != ConnectProperties::default() {
        return Err(v311_refuses(PacketType::Connect, "properties"));
    }
    if let Some(will) = &c.will {
        if will.topic.is_empty() {
            return Err(EncodeError::EmptyTopic("will topic"));
        }
        len += 2 + will.topic.len() + binary_len(&will.payload, "will payload")?;
        if v5 {
            len += block(will_properties_len(&will.properties)?);
        } else if will.properties != WillProperties::default() {
            return Err(v311_refuses(PacketType::Connect, "will properties"));
        }
    }
    if let Some(username) = &c.username {
        len += 2 + username.len();
    }
    if let Some(password) = &c.password {
        if !v5 && c.username.is_none() {
            return Err(EncodeError::PasswordWithoutUserName);
        }
        len += binary_len(password, "password")?;
    }
    Ok(len)
}

// ---- write: append the bytes (cannot fail) -----------------------------------------------

/// The fixed header and the topic length go out as whole integers built in registers: gathered
/// byte by byte in a stack array and copied with a variable length (as before), they cost a
/// `memcpy` call whose wide loads could not be forwarded from the narrow stores that had just
/// filled the array (a store-forwarding stall on every packet; 0.87x rumqttc at 64 bytes with
/// the same instruction count).
#[inline(always)]
fn write_publish(p: &Publish, version: ProtocolVersion, remaining: usize, out: &mut BytesMut) {
    let first = 0x30 | (p.qos_pid.qos().as_u8() << 1) | (u8::from(p.dup) << 3) | u8::from(p.retain);
    // MqttStr guarantees at most 65,535 bytes.
    let topic_len = u32::from(p.topic.len() as u16);
    if remaining < 0x80 {
        // One byte of remaining length: 4 header bytes, one store.
        out.put_u32(u32::from(first) << 24 | (remaining as u32) << 16 | topic_len);
    } else if remaining < 0x4000 {
        // Two bytes of remaining length (up to 16 KiB): 5 header bytes, two stores.
        out.put_u8(first);
        let length = (remaining as u32 & 0x7F | 0x80) << 8 | (remaining >> 7) as u32;
        out.put_u32(length << 16 | topic_len);
    } else {
        out.put_u8(first);
        put_var_int(out, remaining);
        out.put_u16(topic_len as u16);
    }
    out.put_slice(p.topic.as_mqtt_str().as_bytes());
    if let Some(id) = p.qos_pid.packet_id() {
        out.put_u16(id.get());
    }
    if version == V5 {
        if p.properties.is_empty() {
            out.put_u8(0);
        } else {
            // Cannot fail: `measure` ran the same computation.
            let len = publish_properties_len(&p.properties).unwrap_or(0);
            put_publish_properties(out, &p.properties, len);
        }
    }
    out.put_slice(&p.payload);
}

fn write(packet: &Packet, version: ProtocolVersion, remaining: usize, out: &mut BytesMut) {
    match packet {
        Packet::Publish(p) => write_publish(p, version, remaining, out),
        Packet::Connect(c) => {
            out.put_u8(0x10);
            put_var_int(out, remaining);
            write_connect(c, out);
        }
        Packet::ConnAck(c) => {
            out.put_u8(0x20);
            put_var_int(out, remaining);
            out.put_u8(u8::from(c.session_present));
            match version {
                V311 => out.put_u8(c.reason_code.to_v311_connack().unwrap_or(0)),
                V5 => {
                    out.put_u8(c.reason_code.as_u8());
                    let len = connack_properties_len(&c.properties).unwrap_or(0);
                    put_connack_properties(out, &c.properties, len);
                }
            }
        }
        Packet::PubAck(a) => write_ack(0x40, a, version, remaining, out),
        Packet::PubRec(a) => write_ack(0x50, a, version, remaining, out),
        Packet::PubRel(a) => write_ack(0x62, a, version, remaining, out),
        Packet::PubComp(a) => write_ack(0x70, a, version, remaining, out),
        Packet::Subscribe(s) => {
            out.put_u8(0x82);
            put_var_int(out, remaining);
            out.put_u16(s.packet_id.get());
            if version == V5 {
                let p = &s.properties;
                let len = subscribe_properties_len(p).unwrap_or(0);
                put_var_int(out, len);
                if let Some(id) = p.subscription_identifier {
                    out.put_u8(prop::SUBSCRIPTION_IDENTIFIER);
                    put_var_int(out, id.get() as usize);
                }
                put_user_properties(out, &p.user_properties);
            }
            for (filter, o) in &s.filters {
                put_str(out, filter.as_mqtt_str());
                let mut byte = o.qos.as_u8() | ((o.retain_handling as u8) << 4);
                if o.no_local {
                    byte |= 0x04;
                }
                if o.retain_as_published {
                    byte |= 0x08;
                }
                out.put_u8(byte);
            }
        }
        Packet::SubAck(s) => {
            out.put_u8(0x90);
            put_var_int(out, remaining);
            out.put_u16(s.packet_id.get());
            if version == V5 {
                put_ack_properties(out, &s.properties, ack_properties_len(&s.properties));
            }
            for code in &s.reason_codes {
                out.put_u8(code.as_u8());
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u8(0xA2);
            put_var_int(out, remaining);
            out.put_u16(u.packet_id.get());
            if version == V5 {
                put_var_int(out, user_properties_len(&u.user_properties));
                put_user_properties(out, &u.user_properties);
            }
            for filter in &u.filters {
                put_str(out, filter.as_mqtt_str());
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u8(0xB0);
            put_var_int(out, remaining);
            out.put_u16(u.packet_id.get());
            if version == V5 {
                put_ack_properties(out, &u.properties, ack_properties_len(&u.properties));
                for code in &u.reason_codes {
                    out.put_u8(code.as_u8());
                }
            }
        }
        Packet::PingReq => out.put_slice(&[0xC0, 0x00]),
        Packet::PingResp => out.put_slice(&[0xD0, 0x00]),
        Packet::Disconnect(d) => {
            out.put_u8(0xE0);
            put_var_int(out, remaining);
            if remaining > 0 {
                out.put_u8(d.reason_code.as_u8());
                if remaining > 1 {
                    let p = &d.properties;
                    put_var_int(out, disconnect_properties_len(p));
                    put_opt_u32(
                        out,
                        prop::SESSION_EXPIRY_INTERVAL,
                        p.session_expiry_interval_secs,
                    );
                    put_opt_str(out, prop::REASON_STRING, &p.reason_string);
                    put_user_properties(out, &p.user_properties);
                    put_opt_str(out, prop::SERVER_REFERENCE, &p.server_reference);
                }
            }
        }
        Packet::Auth(a) => {
            out.put_u8(0xF0);
            put_var_int(out, remaining);
            if remaining > 0 {
                out.put_u8(a.reason_code.as_u8());
                if remaining > 1 {
                    let p = &a.properties;
                    put_var_int(out, auth_properties_len(p).unwrap_or(0));
                    put_opt_str(out, prop::AUTHENTICATION_METHOD, &p.authentication_method);
                    put_opt_binary(out, prop::AUTHENTICATION_DATA, &p.authentication_data);
                    put_opt_str(out, prop::REASON_STRING, &p.reason_string);
                    put_user_properties(out, &p.user_properties);
                }
            }
        }
    }
}

fn write_ack(first: u8, a: &Ack, version: ProtocolVersion, remaining: usize, out: &mut BytesMut) {
    out.put_u8(first);
    put_var_int(out, remaining);
    out.put_u16(a.packet_id.get());
    if version == V5 && remaining > 2 {
        out.put_u8(a.reason_code.as_u8());
        if remaining > 3 {
            put_ack_properties(out, &a.properties, ack_properties_len(&a.properties));
        }
    }
}

fn write_connect(c: &Connect, out: &mut BytesMut) {
    let v5 = c.protocol == V5;
    out.put_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', c.protocol.level()]);
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos.as_u8() << 3);
        if will.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive_secs);
    if v5 {
        let len = connect_properties_len(&c.properties).unwrap_or(0);
        put_connect_properties(out, &c.properties, len);
    }
    put_str(out, &c.client_id);
    if let Some(will) = &c.will {
        if v5 {
            let len = will_properties_len(&will.properties).unwrap_or(0);
            put_will_properties(out, &will.properties, len);
        }
        put_str(out, will.topic.as_mqtt_str());
        put_binary(out, &will.payload);
    }
    if let Some(username) = &c.username {
        put_str(out, username);
    }
    if let Some(password) = &c.password {
        put_binary(out, password);
    }
}
