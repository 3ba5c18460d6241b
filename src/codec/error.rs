//! Codec errors. Each message names the normative statement it enforces, so the same ids key
//! the certification report.

use super::packet::PacketType;
use super::reason::ReasonCode;

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

/// Why bytes could not be decoded into a packet. `reason_code()` gives the 5.0 reason code a
/// server sends in DISCONNECT/CONNACK before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Filled in by the codec implementation; see `decode.rs`.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    pub fn reason_code(&self) -> ReasonCode {
        ReasonCode::MalformedPacket
    }
}

/// Why a packet cannot be written in the requested protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0:?} does not exist in MQTT 3.1.1")]
    NotInV311(PacketType),
}
