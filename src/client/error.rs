//! Why a connection ended or an operation failed. Cloneable, because one cause is reported
//! both in an event and to every waiting token.

use crate::codec::{ProtocolVersion, ReasonCode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to {server}: {message}")]
    Unreachable { server: String, message: String },
    #[error("connection i/o error: {0}")]
    Io(String),
    #[error("no CONNACK within the connect timeout")]
    ConnectTimeout,
    #[error("connection refused by the broker: {}", reason_meaning(*.code, *.protocol))]
    Refused {
        code: ReasonCode,
        protocol: ProtocolVersion,
    },
    #[error("no PINGRESP within the keepalive interval (MQTT 3.1.2.10): broker presumed dead")]
    KeepaliveTimeout,
    #[error("protocol error from the broker: {0}")]
    Protocol(String),
    #[error("broker sent DISCONNECT: {}", reason_meaning(*.0, ProtocolVersion::V5))]
    ServerDisconnected(ReasonCode),
    #[error("connection closed by the broker")]
    ConnectionClosed,
    #[error("not connected (QoS 0 messages are not queued while offline)")]
    NotConnected,
    #[error("in-flight window full")]
    InflightWindowFull,
    #[error("too many SUBSCRIBE/UNSUBSCRIBE requests awaiting acknowledgement")]
    TooManyPendingRequests,
    #[error("broker rejected the operation: {}", reason_meaning(*.0, ProtocolVersion::V5))]
    Rejected(ReasonCode),
    #[error("persistence: {0}")]
    Persistence(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("client stopped")]
    Stopped,
    #[error("gave up reconnecting after {0} attempts")]
    GaveUp(u32),
    /// 5.0 enhanced authentication failed on our side (the broker's SCRAM answer was wrong,
    /// e.g. it does not know the password).
    #[error("authentication: {0}")]
    Authentication(String),
    #[error("no response within {0:?}")]
    ResponseTimeout(std::time::Duration),
}

/// What a CONNACK return code or reason code means, in the words mosquitto's clients use.
pub fn reason_meaning(code: ReasonCode, protocol: ProtocolVersion) -> String {
    use ReasonCode::*;
    if protocol == ProtocolVersion::V311 {
        if let Some(rc) = code.to_v311_connack() {
            let text = match rc {
                0 => "Connection Accepted.",
                1 => "Connection Refused: unacceptable protocol version.",
                2 => "Connection Refused: identifier rejected.",
                3 => "Connection Refused: broker unavailable.",
                4 => "Connection Refused: bad user name or password.",
                _ => "Connection Refused: not authorised.",
            };
            return format!("{text} (return code {rc})");
        }
    }
    let text = match code {
        Success => "Success",
        GrantedQoS1 => "Granted QoS 1",
        GrantedQoS2 => "Granted QoS 2",
        DisconnectWithWillMessage => "Disconnect with Will Message",
        NoMatchingSubscribers => "No matching subscribers",
        NoSubscriptionExisted => "No subscription existed",
        ContinueAuthentication => "Continue authentication",
        ReAuthenticate => "Re-authenticate",
        UnspecifiedError => "Unspecified error",
        MalformedPacket => "Malformed Packet",
        ProtocolError => "Protocol Error",
        ImplementationSpecificError => "Implementation specific error",
        UnsupportedProtocolVersion => "Unsupported Protocol Version",
        ClientIdentifierNotValid => "Client Identifier not valid",
        BadUserNameOrPassword => "Bad User Name or Password",
        NotAuthorized => "Not authorized",
        ServerUnavailable => "Server unavailable",
        ServerBusy => "Server busy",
        Banned => "Banned",
        ServerShuttingDown => "Server shutting down",
        BadAuthenticationMethod => "Bad authentication method",
        KeepAliveTimeout => "Keep Alive timeout",
        SessionTakenOver => "Session taken over",
        TopicFilterInvalid => "Topic Filter invalid",
        TopicNameInvalid => "Topic Name invalid",
        PacketIdentifierInUse => "Packet Identifier in use",
        PacketIdentifierNotFound => "Packet Identifier not found",
        ReceiveMaximumExceeded => "Receive Maximum exceeded",
        TopicAliasInvalid => "Topic Alias invalid",
        PacketTooLarge => "Packet too large",
        MessageRateTooHigh => "Message rate too high",
        QuotaExceeded => "Quota exceeded",
        AdministrativeAction => "Administrative action",
        PayloadFormatInvalid => "Payload format invalid",
        RetainNotSupported => "Retain not supported",
        QoSNotSupported => "QoS not supported",
        UseAnotherServer => "Use another server",
        ServerMoved => "Server moved",
        SharedSubscriptionsNotSupported => "Shared Subscriptions not supported",
        ConnectionRateExceeded => "Connection rate exceeded",
        MaximumConnectTime => "Maximum connect time",
        SubscriptionIdentifiersNotSupported => "Subscription identifiers not supported",
        WildcardSubscriptionsNotSupported => "Wildcard Subscriptions not supported",
    };
    format!("{text} (reason code 0x{:02x})", code.as_u8())
}
