//! Codec errors. Each message names the normative statement it enforces, so the same ids key
//! the certification report.
//!
//! Where a rule has a numbered statement (`MQTT-3.3.1-4`) the error names it; the two specs
//! number some rules differently, so those variants carry the protocol version and name the id
//! of the spec in force. Where the spec states a rule without numbering it, the error names the
//! section (`MQTT-5.0 §2.2.2.2`).

use super::packet::{PacketType, ProtocolVersion};
use super::reason::ReasonCode;

use ProtocolVersion::{V311, V5};

/// Why a string is not a valid MQTT string, topic name or topic filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StringError {
    #[error("[MQTT-1.5.3-1] string is not well-formed UTF-8")]
    InvalidUtf8,
    #[error("[MQTT-1.5.3-2] string contains U+0000")]
    NullCharacter,
    #[error("[MQTT-1.5.3-1] string is {0} bytes, more than 65535")]
    TooLong(usize),
    #[error("[MQTT-3.3.2-2] topic name contains a wildcard")]
    WildcardInTopicName,
    #[error("[MQTT-4.7.3-1] topic filter is empty")]
    EmptyTopicFilter,
    #[error("[MQTT-4.7.1-2] '#' is not alone as the last level of the topic filter")]
    MisplacedMultiLevelWildcard,
    #[error("[MQTT-4.7.1-3] '+' does not occupy a whole level of the topic filter")]
    MisplacedSingleLevelWildcard,
}

impl StringError {
    /// The statement this breaks, numbered as in the spec of `version` (the `Display` form uses
    /// the 3.1.1 numbering).
    pub fn spec_id(&self, version: ProtocolVersion) -> &'static str {
        match (self, version) {
            (StringError::InvalidUtf8 | StringError::TooLong(_), V311) => "MQTT-1.5.3-1",
            (StringError::InvalidUtf8 | StringError::TooLong(_), V5) => "MQTT-1.5.4-1",
            (StringError::NullCharacter, V311) => "MQTT-1.5.3-2",
            (StringError::NullCharacter, V5) => "MQTT-1.5.4-2",
            (StringError::WildcardInTopicName, _) => "MQTT-3.3.2-2",
            (StringError::EmptyTopicFilter, _) => "MQTT-4.7.3-1",
            (StringError::MisplacedMultiLevelWildcard, V311) => "MQTT-4.7.1-2",
            (StringError::MisplacedMultiLevelWildcard, V5) => "MQTT-4.7.1-1",
            (StringError::MisplacedSingleLevelWildcard, V311) => "MQTT-4.7.1-3",
            (StringError::MisplacedSingleLevelWildcard, V5) => "MQTT-4.7.1-2",
        }
    }

    /// The message without its statement id.
    pub fn describe(&self) -> String {
        let text = self.to_string();
        match text.split_once("] ") {
            Some((_, rest)) => rest.to_owned(),
            None => text,
        }
    }
}

/// Why bytes could not be decoded into a packet. `reason_code()` gives the 5.0 reason code a
/// server sends in DISCONNECT/CONNACK before closing; `spec_id()` the statement broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("[{}] packet type {type_bits} is reserved", self.spec_id())]
    ReservedPacketType {
        type_bits: u8,
        version: ProtocolVersion,
    },
    #[error("[{}] reserved flags {flags:#06b} of {packet_type:?} are not the values the flag table gives", self.spec_id())]
    ReservedFlags {
        packet_type: PacketType,
        flags: u8,
        version: ProtocolVersion,
    },
    #[error("[{}] PUBLISH with QoS 3", self.spec_id())]
    PublishQoS3,
    #[error("[{}] DUP set on a QoS 0 PUBLISH", self.spec_id())]
    DupOnQoS0,
    #[error("[{}] variable byte integer ({field}) takes more than 4 bytes", self.spec_id())]
    VarIntTooLong {
        field: &'static str,
        version: ProtocolVersion,
    },
    #[error("[{}] variable byte integer ({field}) is not in its shortest form", self.spec_id())]
    NonMinimalVarInt { field: &'static str },
    #[error("[{}] packet of {size} bytes exceeds the maximum packet size {max}", self.spec_id())]
    PacketTooLarge { size: u64, max: u32 },
    #[error("[{}] {packet_type:?} ends inside its {field}", self.spec_id())]
    Truncated {
        packet_type: PacketType,
        field: &'static str,
        version: ProtocolVersion,
    },
    #[error("[{}] {packet_type:?} has {extra} bytes after its last field", self.spec_id())]
    TrailingBytes {
        packet_type: PacketType,
        extra: usize,
        version: ProtocolVersion,
    },
    #[error("[{}] {field}: {}", self.spec_id(), .error.describe())]
    InvalidString {
        field: &'static str,
        error: StringError,
        version: ProtocolVersion,
    },
    #[error("[{}] PUBLISH topic name is empty (and has no topic alias)", self.spec_id())]
    EmptyTopicName,
    #[error("[{}] {field} is empty", self.spec_id())]
    EmptyTopic { field: &'static str },
    #[error("[{}] {packet_type:?} has packet identifier 0", self.spec_id())]
    ZeroPacketId {
        packet_type: PacketType,
        version: ProtocolVersion,
    },
    #[error("[{}] CONNECT protocol name {name:?} is not \"MQTT\"", self.spec_id())]
    InvalidProtocolName { name: String },
    #[error("[{}] CONNECT protocol level {level} is not supported (4: 3.1.1, 5: 5.0)", self.spec_id())]
    UnsupportedProtocolVersion { level: u8 },
    #[error("[{}] CONNECT reserved flag is set", self.spec_id())]
    ConnectReservedFlag,
    #[error("[{}] CONNECT will QoS is {qos} without a will", self.spec_id())]
    WillQoSWithoutWill { qos: u8, version: ProtocolVersion },
    #[error("[{}] CONNECT will retain is set without a will", self.spec_id())]
    WillRetainWithoutWill { version: ProtocolVersion },
    #[error("[{}] CONNECT will QoS is 3", self.spec_id())]
    WillQoS3 { version: ProtocolVersion },
    #[error("[{}] CONNECT password flag is set without the user name flag", self.spec_id())]
    PasswordWithoutUserName,
    #[error("[{}] CONNACK acknowledge flags {flags:#010b} have reserved bits set", self.spec_id())]
    ConnAckReservedFlags { flags: u8, version: ProtocolVersion },
    #[error("[{}] CONNACK return code {code} is reserved", self.spec_id())]
    InvalidConnAckReturnCode { code: u8 },
    #[error("[{}] reason code {code:#04x} is not allowed in {packet_type:?}", self.spec_id())]
    InvalidReasonCode { packet_type: PacketType, code: u8 },
    #[error("[{}] {packet_type:?} has no topic filter", self.spec_id())]
    NoTopicFilters {
        packet_type: PacketType,
        version: ProtocolVersion,
    },
    #[error("[{}] {packet_type:?} has no reason code", self.spec_id())]
    NoReasonCodes {
        packet_type: PacketType,
        version: ProtocolVersion,
    },
    #[error("[{}] SUBSCRIBE options byte {options:#010b} has reserved bits set", self.spec_id())]
    SubscriptionOptionsReserved {
        options: u8,
        version: ProtocolVersion,
    },
    #[error("[{}] SUBSCRIBE requests QoS 3", self.spec_id())]
    SubscriptionQoS3 { version: ProtocolVersion },
    #[error("[{}] SUBSCRIBE retain handling is 3", self.spec_id())]
    RetainHandling3,
    #[error("[{}] shared subscription {filter:?}: the share name must be non-empty", self.spec_id())]
    EmptyShareName { filter: String },
    #[error("[{}] shared subscription {filter:?}: the share name must be followed by '/' and a filter, and contain no '/', '+' or '#'", self.spec_id())]
    InvalidShareName { filter: String },
    #[error("[{}] no local is set on shared subscription {filter:?}", self.spec_id())]
    NoLocalOnSharedSubscription { filter: String },
    #[error("[{}] unknown property identifier {id:#04x}", self.spec_id())]
    UnknownProperty { id: u32 },
    #[error("[{}] property {} is not allowed in {context}", self.spec_id(), property_name(*.id))]
    PropertyNotAllowed { id: u8, context: &'static str },
    #[error("[{}] property {} appears more than once in {context}", self.spec_id(), property_name(*.id))]
    DuplicateProperty { id: u8, context: &'static str },
    #[error("[{}] property {} has the invalid value {value}", self.spec_id(), property_name(*.id))]
    InvalidPropertyValue { id: u8, value: u32 },
    #[error("[{}] topic alias 0", self.spec_id())]
    TopicAliasZero,
    #[error("[{}] {context} has authentication data without an authentication method", self.spec_id())]
    AuthDataWithoutMethod { context: &'static str },
}

impl DecodeError {
    /// The 5.0 reason code for this error: what a 5.0 server puts in its CONNACK or DISCONNECT
    /// (a 3.1.1 server only closes, except that `UnsupportedProtocolVersion` maps to CONNACK 1).
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion { .. } | InvalidProtocolName { .. } => {
                ReasonCode::UnsupportedProtocolVersion
            }
            InvalidString {
                error: StringError::WildcardInTopicName,
                field,
                ..
            } if *field == "topic name" => ReasonCode::TopicNameInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            EmptyTopicName
            | ZeroPacketId { .. }
            | NoTopicFilters { .. }
            | RetainHandling3
            | EmptyShareName { .. }
            | InvalidShareName { .. }
            | NoLocalOnSharedSubscription { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | AuthDataWithoutMethod { .. } => ReasonCode::ProtocolError,
            ReservedPacketType { .. }
            | ReservedFlags { .. }
            | PublishQoS3
            | DupOnQoS0
            | VarIntTooLong { .. }
            | NonMinimalVarInt { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | InvalidString { .. }
            | EmptyTopic { .. }
            | ConnectReservedFlag
            | WillQoSWithoutWill { .. }
            | WillRetainWithoutWill { .. }
            | WillQoS3 { .. }
            | PasswordWithoutUserName
            | ConnAckReservedFlags { .. }
            | InvalidConnAckReturnCode { .. }
            | InvalidReasonCode { .. }
            | NoReasonCodes { .. }
            | SubscriptionOptionsReserved { .. }
            | SubscriptionQoS3 { .. }
            | UnknownProperty { .. }
            | PropertyNotAllowed { .. } => ReasonCode::MalformedPacket,
        }
    }

    /// The normative statement broken (`MQTT-x.x.x-y`), or the section that states the rule
    /// when the spec gives it no number (`MQTT-5.0 §2.2.2.2`).
    pub fn spec_id(&self) -> &'static str {
        use DecodeError::*;
        match self {
            ReservedPacketType { version: V311, .. } => "MQTT-3.1.1 §2.2.1",
            ReservedPacketType { version: V5, .. } => "MQTT-5.0 §2.1.2",
            ReservedFlags {
                packet_type: PacketType::PubRel,
                ..
            } => "MQTT-3.6.1-1",
            ReservedFlags {
                packet_type: PacketType::Subscribe,
                ..
            } => "MQTT-3.8.1-1",
            ReservedFlags {
                packet_type: PacketType::Unsubscribe,
                ..
            } => "MQTT-3.10.1-1",
            ReservedFlags {
                packet_type: PacketType::Disconnect,
                ..
            } => "MQTT-3.14.1-1",
            ReservedFlags {
                packet_type: PacketType::Auth,
                ..
            } => "MQTT-3.15.1-1",
            ReservedFlags { version: V311, .. } => "MQTT-2.2.2-1",
            ReservedFlags { version: V5, .. } => "MQTT-2.1.3-1",
            PublishQoS3 => "MQTT-3.3.1-4",
            DupOnQoS0 => "MQTT-3.3.1-2",
            VarIntTooLong { version: V311, .. } => "MQTT-3.1.1 §2.2.3",
            VarIntTooLong { version: V5, .. } => "MQTT-5.0 §1.5.5",
            NonMinimalVarInt { .. } => "MQTT-1.5.5-1",
            PacketTooLarge { .. } => "MQTT-5.0 §3.1.2.11.4",
            Truncated { version: V311, .. } | TrailingBytes { version: V311, .. } => {
                "MQTT-3.1.1 §2.2.3"
            }
            Truncated { version: V5, .. } | TrailingBytes { version: V5, .. } => "MQTT-5.0 §2.1.4",
            InvalidString {
                field: "response topic",
                error: StringError::WildcardInTopicName,
                ..
            } => "MQTT-3.3.2-14",
            InvalidString { error, version, .. } => error.spec_id(*version),
            EmptyTopicName | EmptyTopic { .. } => "MQTT-4.7.3-1",
            ZeroPacketId { version: V311, .. } => "MQTT-2.3.1-1",
            ZeroPacketId { version: V5, .. } => "MQTT-2.2.1-3",
            InvalidProtocolName { .. } => "MQTT-3.1.2-1",
            UnsupportedProtocolVersion { .. } => "MQTT-3.1.2-2",
            ConnectReservedFlag => "MQTT-3.1.2-3",
            WillQoSWithoutWill { version: V311, .. } => "MQTT-3.1.2-13",
            WillQoSWithoutWill { version: V5, .. } => "MQTT-3.1.2-11",
            WillRetainWithoutWill { version: V311 } => "MQTT-3.1.2-15",
            WillRetainWithoutWill { version: V5 } => "MQTT-3.1.2-13",
            WillQoS3 { version: V311 } => "MQTT-3.1.2-14",
            WillQoS3 { version: V5 } => "MQTT-3.1.2-12",
            PasswordWithoutUserName => "MQTT-3.1.2-22",
            ConnAckReservedFlags { version: V311, .. } => "MQTT-3.1.1 §3.2.2.1",
            ConnAckReservedFlags { version: V5, .. } => "MQTT-3.2.2-1",
            InvalidConnAckReturnCode { .. } => "MQTT-3.1.1 §3.2.2.3",
            InvalidReasonCode { packet_type, .. } => match packet_type {
                PacketType::ConnAck => "MQTT-3.2.2-8",
                PacketType::PubAck => "MQTT-3.4.2-1",
                PacketType::PubRec => "MQTT-3.5.2-1",
                PacketType::PubRel => "MQTT-3.6.2-1",
                PacketType::PubComp => "MQTT-3.7.2-1",
                PacketType::SubAck => "MQTT-3.9.3-2",
                PacketType::UnsubAck => "MQTT-3.11.3-2",
                PacketType::Disconnect => "MQTT-3.14.2-1",
                PacketType::Auth => "MQTT-3.15.2-1",
                _ => "MQTT-5.0 §2.4",
            },
            NoTopicFilters {
                packet_type: PacketType::Subscribe,
                version: V311,
            } => "MQTT-3.8.3-3",
            NoTopicFilters {
                packet_type: PacketType::Subscribe,
                version: V5,
            } => "MQTT-3.8.3-2",
            NoTopicFilters { .. } => "MQTT-3.10.3-2",
            NoReasonCodes {
                packet_type: PacketType::SubAck,
                version: V311,
            } => "MQTT-3.8.4-5",
            NoReasonCodes {
                packet_type: PacketType::SubAck,
                version: V5,
            } => "MQTT-3.8.4-6",
            NoReasonCodes { .. } => "MQTT-3.11.3-1",
            SubscriptionOptionsReserved { version: V311, .. } => "MQTT-3.8.3-4",
            SubscriptionOptionsReserved { version: V5, .. } => "MQTT-3.8.3-5",
            SubscriptionQoS3 { version: V311 } => "MQTT-3.8.3-4",
            SubscriptionQoS3 { version: V5 } => "MQTT-5.0 §3.8.3.1",
            RetainHandling3 => "MQTT-5.0 §3.8.3.1",
            EmptyShareName { .. } => "MQTT-4.8.2-1",
            InvalidShareName { .. } => "MQTT-4.8.2-2",
            NoLocalOnSharedSubscription { .. } => "MQTT-3.8.3-4",
            UnknownProperty { .. } | PropertyNotAllowed { .. } | DuplicateProperty { .. } => {
                "MQTT-5.0 §2.2.2.2"
            }
            InvalidPropertyValue { id, .. } => property_section(*id),
            TopicAliasZero => "MQTT-3.3.2-8",
            AuthDataWithoutMethod { .. } => "MQTT-5.0 §3.1.2.11.10",
        }
    }
}

/// Why a packet cannot be written in the requested protocol version (or at all: the encoder
/// refuses what the decoder would refuse, so whatever encodes decodes to the same packet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0:?} does not exist in MQTT 3.1.1")]
    NotInV311(PacketType),
    #[error("{packet_type:?} in MQTT 3.1.1 cannot carry {what}")]
    NotRepresentableInV311 {
        packet_type: PacketType,
        what: &'static str,
    },
    #[error("[MQTT-3.1.1 §3.2.2.3] CONNACK reason {0:?} has no 3.1.1 return code")]
    NoV311ConnAckCode(ReasonCode),
    #[error("reason code {code:?} is not allowed in {packet_type:?}")]
    ReasonCodeNotAllowed {
        packet_type: PacketType,
        code: ReasonCode,
    },
    #[error("[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    #[error("[MQTT-4.7.3-1] {0} is empty")]
    EmptyTopic(&'static str),
    #[error("{0:?} must carry at least one entry")]
    Empty(PacketType),
    #[error("{what} is {len} bytes, more than 65535")]
    TooLong { what: &'static str, len: usize },
    #[error("packet body of {0} bytes exceeds the largest remaining length 268435455")]
    PacketTooLarge(usize),
    #[error("property {} has the invalid value {value}", property_name(*.id))]
    InvalidPropertyValue { id: u8, value: u32 },
    #[error("{0} has authentication data without an authentication method")]
    AuthDataWithoutMethod(&'static str),
    #[error("[MQTT-3.1.2-22] a 3.1.1 CONNECT cannot carry a password without a user name")]
    PasswordWithoutUserName,
    #[error("invalid shared subscription {0:?}")]
    InvalidSharedSubscription(String),
    #[error("[MQTT-3.8.3-4] no local set on shared subscription {0:?}")]
    NoLocalOnSharedSubscription(String),
}

/// The 5.0 name of a property identifier.
pub fn property_name(id: u8) -> &'static str {
    use super::properties as p;
    match id {
        p::PAYLOAD_FORMAT_INDICATOR => "Payload Format Indicator",
        p::MESSAGE_EXPIRY_INTERVAL => "Message Expiry Interval",
        p::CONTENT_TYPE => "Content Type",
        p::RESPONSE_TOPIC => "Response Topic",
        p::CORRELATION_DATA => "Correlation Data",
        p::SUBSCRIPTION_IDENTIFIER => "Subscription Identifier",
        p::SESSION_EXPIRY_INTERVAL => "Session Expiry Interval",
        p::ASSIGNED_CLIENT_IDENTIFIER => "Assigned Client Identifier",
        p::SERVER_KEEP_ALIVE => "Server Keep Alive",
        p::AUTHENTICATION_METHOD => "Authentication Method",
        p::AUTHENTICATION_DATA => "Authentication Data",
        p::REQUEST_PROBLEM_INFORMATION => "Request Problem Information",
        p::WILL_DELAY_INTERVAL => "Will Delay Interval",
        p::REQUEST_RESPONSE_INFORMATION => "Request Response Information",
        p::RESPONSE_INFORMATION => "Response Information",
        p::SERVER_REFERENCE => "Server Reference",
        p::REASON_STRING => "Reason String",
        p::RECEIVE_MAXIMUM => "Receive Maximum",
        p::TOPIC_ALIAS_MAXIMUM => "Topic Alias Maximum",
        p::TOPIC_ALIAS => "Topic Alias",
        p::MAXIMUM_QOS => "Maximum QoS",
        p::RETAIN_AVAILABLE => "Retain Available",
        p::USER_PROPERTY => "User Property",
        p::MAXIMUM_PACKET_SIZE => "Maximum Packet Size",
        p::WILDCARD_SUBSCRIPTION_AVAILABLE => "Wildcard Subscription Available",
        p::SUBSCRIPTION_IDENTIFIER_AVAILABLE => "Subscription Identifier Available",
        p::SHARED_SUBSCRIPTION_AVAILABLE => "Shared Subscription Available",
        _ => "(unknown)",
    }
}

/// The 5.0 section that defines a property's allowed values.
fn property_section(id: u8) -> &'static str {
    use super::properties as p;
    match id {
        p::PAYLOAD_FORMAT_INDICATOR => "MQTT-5.0 §3.3.2.3.2",
        p::SUBSCRIPTION_IDENTIFIER => "MQTT-5.0 §3.8.2.1.2",
        p::REQUEST_PROBLEM_INFORMATION => "MQTT-5.0 §3.1.2.11.7",
        p::REQUEST_RESPONSE_INFORMATION => "MQTT-5.0 §3.1.2.11.6",
        p::RECEIVE_MAXIMUM => "MQTT-5.0 §3.1.2.11.3",
        p::MAXIMUM_PACKET_SIZE => "MQTT-5.0 §3.1.2.11.4",
        p::MAXIMUM_QOS => "MQTT-5.0 §3.2.2.3.4",
        p::RETAIN_AVAILABLE => "MQTT-5.0 §3.2.2.3.5",
        p::WILDCARD_SUBSCRIPTION_AVAILABLE => "MQTT-5.0 §3.2.2.3.11",
        p::SUBSCRIPTION_IDENTIFIER_AVAILABLE => "MQTT-5.0 §3.2.2.3.12",
        p::SHARED_SUBSCRIPTION_AVAILABLE => "MQTT-5.0 §3.2.2.3.13",
        _ => "MQTT-5.0 §2.2.2.2",
    }
}
