//! The packet model: one set of types for MQTT 3.1.1 and 5.0 (the 5.0 superset).
//!
//! The protocol version is not stored in most packets; it travels with the codec
//! (`encode(packet, version, …)`). Fields that only exist in 5.0 (properties, most reason
//! codes) are left at their defaults when a packet is used with 3.1.1, and the 3.1.1 encoder
//! refuses a packet whose 5.0-only content cannot be expressed (see `EncodeError`).
//!
//! Invalid packets are made unrepresentable where the type system allows it: packet ids are
//! `NonZeroU16`, strings are validated (`MqttStr`, `TopicName`, `TopicFilter`), the QoS of a
//! PUBLISH carries its packet id, payloads are zero-copy `Bytes`.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;

pub use super::reason::ReasonCode;
pub use super::strings::{MqttStr, TopicFilter, TopicName};

/// A packet identifier: never zero [MQTT-2.3.1-1].
pub type PacketId = NonZeroU16;

/// The protocol level in CONNECT: 4 for MQTT 3.1.1, 5 for MQTT 5.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub enum ProtocolVersion {
    V311,
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            4 => Some(ProtocolVersion::V311),
            5 => Some(ProtocolVersion::V5),
            _ => None,
        }
    }
}

/// Quality of service level. QoS 3 does not exist [MQTT-3.3.1-4].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The QoS of a PUBLISH together with its packet id: QoS 0 has none, QoS 1 and 2 must have one
/// [MQTT-2.3.1-5].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub enum QosPid {
    AtMostOnce,
    AtLeastOnce(PacketId),
    ExactlyOnce(PacketId),
}

impl QosPid {
    pub fn qos(self) -> QoS {
        match self {
            QosPid::AtMostOnce => QoS::AtMostOnce,
            QosPid::AtLeastOnce(_) => QoS::AtLeastOnce,
            QosPid::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            QosPid::AtMostOnce => None,
            QosPid::AtLeastOnce(id) | QosPid::ExactlyOnce(id) => Some(id),
        }
    }

    /// Builds the pair from a QoS and an id; `None` for QoS 1/2 without an id.
    pub fn new(qos: QoS, packet_id: Option<PacketId>) -> Option<QosPid> {
        match (qos, packet_id) {
            (QoS::AtMostOnce, _) => Some(QosPid::AtMostOnce),
            (QoS::AtLeastOnce, Some(id)) => Some(QosPid::AtLeastOnce(id)),
            (QoS::ExactlyOnce, Some(id)) => Some(QosPid::ExactlyOnce(id)),
            _ => None,
        }
    }
}

/// A 5.0 user property: a name/value pair of UTF-8 strings. Order and duplicates are kept.
pub type UserProperty = (MqttStr, MqttStr);

/// Properties a packet rarely carries, boxed: a packet without them holds one null pointer, so
/// it stays small to move and costs nothing to drop. (`Packet` was 256 bytes with these structs
/// inline; a decoded PUBLISH was moved and its eight property fields checked on drop, per packet.)
///
/// It reads like the struct it holds (`Deref`; an absent box reads as the empty struct), and a
/// mutable access allocates the box. Absent and present-but-empty are the same value: they
/// compare equal and encode to the same bytes, and `From` stores an empty struct as absent, as
/// the decoder does.
pub struct PropertyBox<T: EmptyProperties>(Option<Box<T>>);

/// A properties struct with a shared empty instance (what an absent `PropertyBox` reads as).
pub trait EmptyProperties: Default + PartialEq + 'static {
    fn empty() -> &'static Self;
}

impl<T: EmptyProperties> PropertyBox<T> {
    /// No properties (no allocation).
    pub const fn none() -> Self {
        PropertyBox(None)
    }

    /// True when no property is set.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|p| p == T::empty())
    }

    /// The properties, owned (the empty struct when absent).
    pub fn into_inner(self) -> T {
        self.0.map_or_else(T::default, |b| *b)
    }
}

impl<T: EmptyProperties> Default for PropertyBox<T> {
    #[inline]
    fn default() -> Self {
        PropertyBox(None)
    }
}

impl<T: EmptyProperties> From<T> for PropertyBox<T> {
    fn from(properties: T) -> Self {
        if properties == *T::empty() {
            PropertyBox(None)
        } else {
            PropertyBox(Some(Box::new(properties)))
        }
    }
}

impl<T: EmptyProperties> std::ops::Deref for PropertyBox<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::empty())
    }
}

impl<T: EmptyProperties> std::ops::DerefMut for PropertyBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: EmptyProperties + Clone> Clone for PropertyBox<T> {
    #[inline]
    fn clone(&self) -> Self {
        PropertyBox(self.0.clone())
    }
}

impl<T: EmptyProperties> PartialEq for PropertyBox<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: EmptyProperties + Eq> Eq for PropertyBox<T> {}

/// Prints the struct (the empty one when absent), as an inline field would.
impl<T: EmptyProperties + std::fmt::Debug> std::fmt::Debug for PropertyBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(any(test, feature = "arbitrary"))]
impl<'a, T: EmptyProperties + arbitrary::Arbitrary<'a>> arbitrary::Arbitrary<'a>
    for PropertyBox<T>
{
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        T::arbitrary(u).map(PropertyBox::from)
    }

    fn size_hint(depth: usize) -> (usize, Option<usize>) {
        T::size_hint(depth)
    }
}

/// Implements `EmptyProperties` with a static empty instance (every field `None` or empty).
macro_rules! empty_properties {
    ($name:ident { $($field:ident: $value:expr),* $(,)? }) => {
        impl EmptyProperties for $name {
            #[inline]
            fn empty() -> &'static Self {
                static EMPTY: $name = $name { $($field: $value),* };
                &EMPTY
            }
        }
    };
}

empty_properties!(ConnAckProperties {
    session_expiry_interval_secs: None,
    receive_maximum: None,
    maximum_qos: None,
    retain_available: None,
    maximum_packet_size: None,
    assigned_client_identifier: None,
    topic_alias_maximum: None,
    reason_string: None,
    user_properties: Vec::new(),
    wildcard_subscription_available: None,
    subscription_identifiers_available: None,
    shared_subscription_available: None,
    server_keep_alive_secs: None,
    response_information: None,
    server_reference: None,
    authentication_method: None,
    authentication_data: None,
});
empty_properties!(PublishProperties {
    payload_format_utf8: None,
    message_expiry_interval_secs: None,
    topic_alias: None,
    response_topic: None,
    correlation_data: None,
    user_properties: Vec::new(),
    subscription_identifiers: Vec::new(),
    content_type: None,
});
empty_properties!(AckProperties {
    reason_string: None,
    user_properties: Vec::new(),
});
empty_properties!(DisconnectProperties {
    session_expiry_interval_secs: None,
    reason_string: None,
    user_properties: Vec::new(),
    server_reference: None,
});
empty_properties!(AuthProperties {
    authentication_method: None,
    authentication_data: None,
    reason_string: None,
    user_properties: Vec::new(),
});

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// 5.0 only.
    Auth(Auth),
}

/// The packet type number of the fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT. The protocol version is part of the packet (the level byte).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// "Clean Session" in 3.1.1, "Clean Start" in 5.0.
    pub clean_start: bool,
    pub keep_alive_secs: u16,
    pub properties: ConnectProperties,
    /// May be empty (the server may assign one).
    pub client_id: MqttStr,
    pub will: Option<Will>,
    pub username: Option<MqttStr>,
    #[cfg_attr(any(test, feature = "arbitrary"), arbitrary(with = super::arbitrary::opt_bytes))]
    pub password: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ConnectProperties {
    pub session_expiry_interval_secs: Option<u32>,
    /// Zero is a protocol error [MQTT-3.1.2-?]; hence non-zero.
    pub receive_maximum: Option<NonZeroU16>,
    pub maximum_packet_size: Option<NonZeroU32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: Vec<UserProperty>,
    pub authentication_method: Option<MqttStr>,
    #[cfg_attr(any(test, feature = "arbitrary"), arbitrary(with = super::arbitrary::opt_bytes))]
    pub authentication_data: Option<Bytes>,
}

/// The Will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Will {
    pub topic: TopicName,
    #[cfg_attr(any(test, feature = "arbitrary"), arbitrary(with = super::arbitrary::bytes))]
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct WillProperties {
    pub will_delay_interval_secs: Option<u32>,
    /// `Some(true)`: the payload is UTF-8 (payload format indicator 1).
    pub payload_format_utf8: Option<bool>,
    pub message_expiry_interval_secs: Option<u32>,
    pub content_type: Option<MqttStr>,
    pub response_topic: Option<TopicName>,
    #[cfg_attr(any(test, feature = "arbitrary"), arbitrary(with = super::arbitrary::opt_bytes))]
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK. In 3.1.1 only the codes with a 3.1.1 return code are representable on the wire
/// (see `ReasonCode::to_v311_connack`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ConnAck {
    pub session_present: bool,
    pub reason_code: ReasonCode,
    pub properties: PropertyBox<ConnAckProperties>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct ConnAckProperties {
    pub session_expiry_interval_secs: Option<u32>,
    pub receive_maximum: Option<NonZeroU16>,
    /// Only 0 or 1 may be sent (absent means 2).
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<NonZeroU32>,
    pub assigned_client_identifier: Option<MqttStr>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<MqttStr>,
    pub user_properties: Vec<UserProperty>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive_secs: Option<u16>,
    pub response_information: Option<MqttStr>,
    pub server_reference: Option<MqttStr>,
    pub authentication_method: Option<MqttStr>,
    #[cfg_attr(any(test, feature = "arbitrary"), arbitrary(with = super::arbitrary::opt_bytes))]
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Publish {
    /// Must be false for QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    pub qos_pid: QosPid,
    pub retain: bool,
    /// May be empty only in 5.0 when a topic alias is present [MQTT-3.3.2-1].
    pub topic: TopicName,
    pub properties: PropertyBox<PublishProperties>,
    #[cfg_attr(any(test, feature = "arbitrary"), arbitrary(with = super::arbitrary::bytes))]
    pub payload: Bytes,
}

impl Publish {
    pub fn qos(&self) -> QoS {
        self.qos_pid.qos()
    }

    pub fn packet_id(&self) -> Option<PacketId> {
        self.qos_pid.packet_id()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct PublishProperties {
    pub payload_format_utf8: Option<bool>,
    pub message_expiry_interval_secs: Option<u32>,
    pub topic_alias: Option<NonZeroU16>,
    pub response_topic: Option<TopicName>,
    #[cfg_attr(any(test, feature = "arbitrary"), arbitrary(with = super::arbitrary::opt_bytes))]
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    /// Server to client only; each 1..=268,435,455.
    pub subscription_identifiers: Vec<NonZeroU32>,
    pub content_type: Option<MqttStr>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape. In 3.1.1 the reason code is always
/// `Success` and there are no properties.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Ack {
    pub packet_id: PacketId,
    pub reason_code: ReasonCode,
    pub properties: PropertyBox<AckProperties>,
}

impl Ack {
    pub fn new(packet_id: PacketId) -> Ack {
        Ack {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: PropertyBox::none(),
        }
    }
}

/// Properties of PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct AckProperties {
    pub reason_string: Option<MqttStr>,
    pub user_properties: Vec<UserProperty>,
}

/// Retain handling subscription option (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send retained messages only if the subscription does not currently exist.
    SendIfNewSubscription = 1,
    /// 2: do not send retained messages.
    DoNotSend = 2,
}

/// The options byte of one SUBSCRIBE entry. In 3.1.1 only `qos` is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        }
    }
}

/// SUBSCRIBE. `filters` is never empty on the wire [MQTT-3.8.3-3].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub properties: SubscribeProperties,
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct SubscribeProperties {
    /// 1..=268,435,455.
    pub subscription_identifier: Option<NonZeroU32>,
    pub user_properties: Vec<UserProperty>,
}

/// SUBACK: one reason code per filter of the SUBSCRIBE, in order. In 3.1.1 the codes are
/// GrantedQoS0/1/2 (0x00–0x02) or UnspecifiedError (0x80, "Failure").
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct SubAck {
    pub packet_id: PacketId,
    pub properties: PropertyBox<AckProperties>,
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE. `filters` is never empty on the wire [MQTT-3.10.3-2].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub user_properties: Vec<UserProperty>,
    pub filters: Vec<TopicFilter>,
}

/// UNSUBACK. In 3.1.1 `reason_codes` is empty and there are no properties.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct UnsubAck {
    pub packet_id: PacketId,
    pub properties: PropertyBox<AckProperties>,
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT. In 3.1.1 it has no content (reason `NormalDisconnection`, no properties).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: PropertyBox<DisconnectProperties>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct DisconnectProperties {
    pub session_expiry_interval_secs: Option<u32>,
    pub reason_string: Option<MqttStr>,
    pub user_properties: Vec<UserProperty>,
    pub server_reference: Option<MqttStr>,
}

/// AUTH (5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: PropertyBox<AuthProperties>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(arbitrary::Arbitrary))]
pub struct AuthProperties {
    pub authentication_method: Option<MqttStr>,
    #[cfg_attr(any(test, feature = "arbitrary"), arbitrary(with = super::arbitrary::opt_bytes))]
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<MqttStr>,
    pub user_properties: Vec<UserProperty>,
}
