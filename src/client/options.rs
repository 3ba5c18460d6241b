//! Connect options, modelled on Paho's `MqttConnectOptions`.

use std::time::Duration;

use bytes::Bytes;

use crate::codec::{ConnectProperties, ProtocolVersion, QoS, TopicName, WillProperties};

/// The will message a broker publishes when the connection ends without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillOptions {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 will properties (Will Delay Interval, Message Expiry, …); not sent in 3.1.1,
    /// which has none.
    pub properties: WillProperties,
}

/// When to send SUBSCRIBE again for the filters the application subscribed to, after a
/// reconnect. Paho leaves this to the application (`connectComplete`); here it is a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResubscribePolicy {
    /// After every successful reconnect.
    Always,
    /// Only when the broker reports no stored session (session_present = false): a clean
    /// session, or a persistent session the broker lost.
    #[default]
    WhenSessionNotPresent,
    /// Never: the application handles it.
    Never,
}

/// Automatic reconnect with exponential backoff and jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectOptions {
    /// Delay before the first retry; doubled after each failed attempt.
    pub min_delay: Duration,
    /// Cap on the delay.
    pub max_delay: Duration,
    /// Seed of the jitter RNG (ChaCha8), so a simulation replays the same delays.
    pub seed: u64,
    /// Give up after this many consecutive failed attempts; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            seed: 0,
            max_attempts: None,
        }
    }
}

/// MQTT 5.0 enhanced authentication (§4.12) with SCRAM-SHA-256 (`crate::scram`), in place of
/// sending the password in CONNECT: `username` and `password` of the options are the
/// credentials; CONNECT carries neither, only the method and client-first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnhancedAuth {
    /// Seed of the client nonces (ChaCha8): a simulation replays the same exchanges; the CLI
    /// draws it from the OS.
    pub nonce_seed: u64,
}

/// Everything needed to connect and keep connected.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// "host:port" handed to the transport `Connector`.
    pub server: String,
    pub protocol: ProtocolVersion,
    /// May be empty with a clean session (the broker assigns one).
    pub client_id: String,
    /// "Clean Session" (3.1.1) / "Clean Start" (5.0).
    pub clean_session: bool,
    /// 0 disables keepalive (no PINGREQ, no dead-broker detection).
    pub keep_alive_secs: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<WillOptions>,
    /// Bound on TCP connect + CONNACK.
    pub connect_timeout: Duration,
    /// `None`: a lost connection ends the client (Paho's automaticReconnect = false).
    pub reconnect: Option<ReconnectOptions>,
    pub resubscribe: ResubscribePolicy,
    /// Most QoS 1/2 publishes not yet completed (Paho's maxInflight). `publish` waits for room.
    pub inflight_window: u16,
    /// Capacity of the event channel. When the application does not read events the client
    /// stops reading the socket instead of buffering without limit.
    pub event_capacity: usize,
    /// 5.0 session expiry interval. `None` picks what mosquitto does: forever for a persistent
    /// session, 0 for a clean one.
    pub session_expiry_interval_secs: Option<u32>,
    /// 5.0: authenticate with SCRAM-SHA-256 (`--auth-method SCRAM-SHA-256`); `None`: the
    /// password, if any, goes in CONNECT.
    pub enhanced_auth: Option<EnhancedAuth>,
    /// 5.0 Topic Alias Maximum announced in CONNECT: the broker may then send aliases
    /// 1..=this value [MQTT-3.3.2-10], which the client resolves per connection. 0 (the
    /// default, as mosquitto's clients) allows none [MQTT-3.1.2-27].
    pub topic_alias_maximum: u16,
    /// 5.0: alias outgoing topics automatically, within the Topic Alias Maximum the broker
    /// returned in CONNACK (see `state` for the policy). Off by default, as mosquitto's
    /// clients; an alias the application sets on a publish is honoured either way.
    pub outbound_topic_aliases: bool,
    /// Further 5.0 CONNECT properties (receive maximum, maximum packet size, request
    /// response/problem information, user properties), sent as given. Session expiry and
    /// Topic Alias Maximum come from their own fields above, which the client acts on.
    pub connect_properties: ConnectProperties,
}

impl ConnectOptions {
    /// Paho's defaults (keepalive 60 s, clean session, connect timeout 30 s, window 10) with
    /// automatic reconnect on.
    pub fn new(server: impl Into<String>, client_id: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            server: server.into(),
            protocol: ProtocolVersion::V311,
            client_id: client_id.into(),
            clean_session: true,
            keep_alive_secs: 60,
            username: None,
            password: None,
            will: None,
            connect_timeout: Duration::from_secs(30),
            reconnect: Some(ReconnectOptions::default()),
            resubscribe: ResubscribePolicy::default(),
            inflight_window: 10,
            event_capacity: 1024,
            session_expiry_interval_secs: None,
            enhanced_auth: None,
            topic_alias_maximum: 0,
            outbound_topic_aliases: false,
            connect_properties: ConnectProperties::default(),
        }
    }
}
