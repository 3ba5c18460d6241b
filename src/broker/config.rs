//! Broker configuration: every limit and switch, with its default. `docs/broker.toml` shows the
//! same options as a TOML file (`simqtt broker --config FILE`); keep the two in step.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::auth::Authenticator;
use super::listener::ListenerConfig;

/// Every option of the broker. Missing keys in a TOML file take the default shown in each
/// field's documentation; unknown keys are an error (a misspelt limit must not be ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address `simqtt broker` binds for plain MQTT over TCP. Default `"127.0.0.1:1883"`.
    /// `--listen` overrides it; `""` binds none (only the `[[listener]]` tables). (Used by the
    /// command only; `broker::run` takes an already bound listener.)
    pub listen: String,
    /// More listeners (`[[listener]]` tables): TLS, WebSocket, WebSocket over TLS, each with
    /// its own settings (see `ListenerConfig`). Default: none.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Directory of the durable store. Default: none (an in-memory store; nothing survives a
    /// restart). `--data-dir` overrides it. (Used by the command only.)
    pub data_dir: Option<PathBuf>,
    /// `"every-write"` (default): the store syncs each change before the broker acknowledges
    /// anything that depends on it. `"periodic"`: the store syncs every `sync_interval_ms`.
    /// (Used by the command when it opens the file store.)
    pub sync: SyncMode,
    /// How often the broker asks the store to sync, in milliseconds. Default 1000. With
    /// `every-write` this only bounds the time of anything the store buffers itself; 0 turns
    /// periodic syncing off (the store is still synced on shutdown).
    pub sync_interval_ms: u64,

    /// Threads of `simqtt broker`. Default 1: the core (routing, sessions) is one task
    /// whatever this says, and on one thread every hand-off between it and the connections is
    /// a plain function call; measured on 2 shared cores it was faster in every shape but
    /// fan-out and matched mosquitto's latency, where 2 threads lost (docs/performance.md).
    /// More threads decode, encode and do the socket I/O of connections beside the core,
    /// which pays with spare cores and many busy connections. 0: one per core. (Used by the
    /// command only; `broker::run` runs on whatever runtime calls it.)
    pub threads: usize,

    /// Accept clients that send no user name. Default `true`.
    pub allow_anonymous: bool,
    /// Password file (`simqtt passwd` writes it). Default: none (no passwords checked).
    /// (`simqtt broker` reads a relative path in a config file from the file's directory, as
    /// it does `acl_file` and `data_dir`.)
    pub password_file: Option<PathBuf>,
    /// ACL file of per-user topic patterns. Default: none (everyone may do everything).
    pub acl_file: Option<PathBuf>,
    /// Who may resume or take over the session of a client id. `"same-user"` (default): only
    /// a client with the user name that created the session (an anonymous session: only an
    /// anonymous client); anyone else's CONNECT is refused with "not authorized" (3.1.1
    /// CONNACK 0x05, 5.0 0x87) and the session and its connection are left alone, so another
    /// user can neither read its queued messages nor disconnect it nor discard it with a clean
    /// start. `"any-user"`: any authenticated client may (mosquitto's behaviour); the session
    /// then belongs to the last user that resumed it. A session stored before owners were
    /// recorded goes to the first client that resumes it.
    pub session_takeover: SessionTakeover,

    /// Largest packet accepted from a client, in bytes (whole packet, fixed header included).
    /// A larger packet closes that connection. Default 1048576 (1 MiB). 5.0 clients are told
    /// this in CONNACK (Maximum Packet Size).
    pub max_packet_size: u32,
    /// Most levels a topic name or filter may have (`a/b/c` has 3; every `/` adds one). A
    /// SUBSCRIBE filter beyond it is refused (3.1.1 SUBACK 0x80, 5.0 0x8F Topic Filter
    /// invalid); a PUBLISH beyond it is refused (3.1.1: the connection is closed, 3.1.1 having
    /// no way to refuse one message; 5.0: PUBACK/PUBREC 0x90 Topic Name invalid at QoS 1/2,
    /// DISCONNECT 0x90 at QoS 0, which has no acknowledgement to carry it), and so is a CONNECT
    /// whose will topic is beyond it (5.0 CONNACK 0x90; 3.1.1 closes without CONNACK, none of
    /// its return codes applying). A stored subscription beyond it is dropped, with a warning,
    /// when the broker loads its store. Default 128, as EMQX (`max_topic_levels`); mosquitto
    /// allows 201 (`TOPIC_HIERARCHY_LIMIT`, after CVE-2019-11779). At most 65536, the most a
    /// 65535-byte topic can have.
    pub max_topic_levels: usize,
    /// Most clients connected at once; a CONNECT beyond it gets CONNACK "server unavailable"
    /// (3.1.1 code 3, 5.0 0x88). Default 100000. Sockets that have not yet sent CONNECT are
    /// bounded too, at `max_connections + 1024`; beyond that new sockets are closed at once.
    pub max_connections: usize,
    /// Outgoing QoS 1/2 messages per client that may await acknowledgement at once (the
    /// in-flight window). Default 128. A 5.0 client's Receive Maximum lowers it further. The
    /// window is what a subscriber can have on the way at once, so it bounds a QoS 1/2
    /// subscriber's rate to window / round trip, and how many messages go in one write: 32
    /// held fan-out QoS 1 to 1.1-1.3 M deliveries/s here where 128 gave 1.8 M (and rumqttd,
    /// measured beside it, runs with 100). It costs nothing while unused; it bounds what is
    /// resent with DUP after a reconnect.
    pub max_inflight_messages: u16,
    /// Incoming QoS 2 messages per client received (PUBREC sent) and not yet released by
    /// PUBREL. Default 1024. 5.0 clients are told it as Receive Maximum in CONNACK; a client
    /// that goes beyond it is disconnected (5.0: reason 0x93 Receive Maximum exceeded; 3.1.1,
    /// which has no flow control, is closed the same way and counted as a protocol error), so a
    /// client cannot make the broker keep unbounded QoS 2 state.
    pub max_incoming_qos2: u16,
    /// Messages held per session beyond the in-flight window (while the client is offline or
    /// its window is full). Default 1000. When an ONLINE subscriber's queue is full, QoS 1/2
    /// publishers to it are paused (back-pressure, see `slow_subscriber_timeout_secs`) and
    /// nothing is dropped. Overflow policy otherwise (offline session, QoS 0 queued for it, a
    /// client publishing to its own full queue, wills and `$SYS`): the oldest queued message is
    /// dropped to make room for the new one (counted in `$SYS/broker/messages/dropped`). Either
    /// way the bound is hard.
    pub max_queued_messages: usize,
    /// Bytes (payload and topic) of the messages held per session beyond the in-flight window;
    /// the same rules as `max_queued_messages`, whichever bound is reached first (a message is
    /// taken while the queue is below it, so a queue may pass it by one message). Default
    /// 67108864 (64 MiB). mosquitto has the same option (unbounded by default).
    pub max_queued_bytes: usize,
    /// Bytes (payload and topic) of the outgoing QoS 1/2 messages in flight per session: the
    /// window stops filling when they reach this, beside `max_inflight_messages` (one message
    /// always fits, whatever its size). Default 16777216 (16 MiB): a client reading 1 MB
    /// messages has 16 on the way at once, not 128.
    pub max_inflight_bytes: usize,
    /// The broker-wide memory budget for waiting messages: the bytes (payload and topic) of
    /// every session's queue plus every connection's outbound queue. Past it, a QoS 0 message
    /// is dropped (counted in `$SYS/broker/messages/dropped/memory`), a message for an offline
    /// session is dropped (likewise), and a QoS 1/2 PUBLISH that would have to wait in an
    /// online subscriber's queue holds its publisher (back-pressure, as for a full queue)
    /// until the budget has room; a subscriber that keeps publishers waiting this way is
    /// closed by the rule of `slow_subscriber_timeout_secs`. In-flight messages are outside
    /// it (bounded per session by `max_inflight_bytes`). Default 536870912 (512 MiB).
    pub max_queued_bytes_total: usize,
    /// Also queue QoS 0 messages for offline persistent sessions. Default `false` (QoS 0 is
    /// at most once; MQTT allows dropping it for an offline client).
    pub queue_qos0_messages: bool,
    /// Packets buffered per connection between the broker and the socket writer. When a client
    /// reads too slowly and this fills, QoS 0 messages to it are dropped (counted) and any other
    /// packet closes its connection as a slow consumer (its will is published, its in-flight
    /// messages stay in its session). Default 1024; must exceed `max_inflight_messages`.
    pub outbound_queue_packets: usize,
    /// Bytes (payload and topic) of the messages buffered per connection between the broker
    /// and the socket writer: a QoS 0 message that would take them past this is dropped
    /// (counted in `$SYS/broker/messages/dropped/slow_consumer`; into an empty buffer one
    /// message always fits). QoS 1/2 messages are not refused here: the in-flight window
    /// bounds them (`max_inflight_bytes`). A client that reads nothing at all is closed once a
    /// write has made no progress for 60 s. Default 8388608 (8 MiB).
    pub outbound_queue_bytes: usize,
    /// Back-pressure bound. A QoS 1/2 PUBLISH that would overflow an online subscriber's
    /// queue (`max_queued_messages`) is not dropped: the broker stops reading that publisher
    /// until the subscriber makes room. A subscriber that makes no room for this many seconds
    /// while publishers wait on it is closed as a slow consumer (its session keeps its queue;
    /// messages for it while offline follow the overflow policy). Default 30; 0 waits forever.
    pub slow_subscriber_timeout_secs: u64,
    /// Seconds a new socket may take to send CONNECT before it is closed. Default 10.
    pub connect_timeout_secs: u64,
    /// Store retained messages. Default `true`. When `false`, a PUBLISH with RETAIN set is
    /// delivered as a normal message and nothing is kept (5.0 clients are told in CONNACK).
    pub retain_available: bool,
    /// Highest QoS granted to a subscription. Default 2.
    pub max_qos: u8,
    /// The longest Keep Alive the broker lets a client have, in seconds (mosquitto's
    /// `max_keepalive`). Default: none, each client's own is enforced. With a maximum, a 5.0
    /// client asking for more (or for 0, no keepalive) is told this value as Server Keep Alive
    /// in CONNACK and held to it; a 3.1.1 client, which cannot be told, is refused (CONNACK
    /// 0x02 Identifier rejected, as mosquitto does). 1 to 65535.
    pub max_keepalive_secs: Option<u16>,
    /// Serve shared subscriptions `$share/{ShareName}/{filter}` (5.0 §4.8.2; also accepted
    /// from 3.1.1 clients, as mosquitto and EMQX do). Default `true`. When `false`, 5.0 clients
    /// are told `Shared Subscription Available 0` and such a SUBSCRIBE gets 0x9E; a 3.1.1
    /// client's `$share/...` filter is then an ordinary filter.
    pub shared_subscriptions: bool,
    /// Which member of a shared subscription group gets each message. Default round-robin.
    pub shared_subscription_strategy: SharedStrategy,
    /// 5.0 Topic Alias Maximum the broker accepts from a client, announced in CONNACK.
    /// Default 10 (mosquitto's `max_topic_alias`); 0 announces none, and any alias is then
    /// refused. A PUBLISH with an alias above it, or with an empty topic and an alias this
    /// connection never set, ends the connection (DISCONNECT 0x94 Topic Alias invalid, 0x82
    /// Protocol Error). Mappings live as long as the connection [MQTT-3.3.2-7].
    pub topic_alias_maximum: u16,
    /// The most topic aliases the broker uses toward one 5.0 client (never more than the
    /// client's own Topic Alias Maximum; none for a client that announces none). Default 10;
    /// 0 turns outbound aliases off. Policy: a topic of 4 bytes or more gets an alias the first
    /// time a QoS 1/2 PUBLISH carries it (sent with topic and alias), and later PUBLISHes of
    /// any QoS on it carry only the alias; when every alias is taken, the least recently used
    /// one is given to the new topic. Never set up by QoS 0, which the broker may drop on its
    /// way out (a dropped first PUBLISH would leave the client an alias it never learnt).
    pub topic_alias_maximum_outbound: u16,
    /// Seconds between `$SYS/broker/...` statistics publications. Default 10; 0 turns `$SYS`
    /// off.
    pub sys_interval_secs: u64,
    /// Seed for the random part of client ids the broker assigns to clients that send an
    /// empty one. Default: none, in which case `simqtt broker` draws one from the clock at start
    /// (the broker itself never reads the clock or an unseeded RNG, so the simulator, which
    /// always sets it, stays deterministic).
    pub rng_seed: Option<u64>,

    /// Where the broker reads the wall-clock time, once at start (message and session expiry
    /// are kept in the store as wall-clock instants, so they count across a restart). The
    /// system clock by default; the simulator gives the simulated one. Not part of the TOML
    /// file.
    #[serde(skip)]
    pub wall_clock: WallClock,

    /// Authentication and ACL checks, built by the caller (the command loads
    /// `password_file`/`acl_file` into it). Not part of the TOML file.
    #[serde(skip)]
    pub authenticator: Authenticator,

    /// Test-only: a bug planted on purpose, so the shrinker and the explorer can be shown to
    /// find and shrink a known failure (docs/shrinking.md). Never set by `simqtt broker`; only
    /// the simulator sets it, from a scenario's hidden `broker: {planted_bug: ...}`. Checked
    /// only where the bug lives (a restart's load, a keepalive expiry), off every hot path.
    #[doc(hidden)]
    #[serde(skip)]
    pub planted_bug: Option<PlantedBug>,
}

/// The broker's source of wall-clock time: milliseconds since the UNIX epoch. The broker
/// reads it once, when it starts, and counts on from there with its monotonic (tokio) clock,
/// so a run inside the simulator, whose clock is virtual, stays deterministic.
#[derive(Clone, Default)]
pub struct WallClock(Option<Arc<dyn Fn() -> u64 + Send + Sync>>);

impl WallClock {
    /// The system clock (`SystemTime`).
    pub fn system() -> WallClock {
        WallClock(None)
    }

    /// A clock of the caller's (the simulator's virtual one).
    pub fn from_fn(now_ms: impl Fn() -> u64 + Send + Sync + 'static) -> WallClock {
        WallClock(Some(Arc::new(now_ms)))
    }

    /// Milliseconds since the UNIX epoch now.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Some(f) => f(),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "WallClock(custom)"
        } else {
            "WallClock(system)"
        })
    }
}

/// A deliberate broker bug for testing the test tools (see [`BrokerConfig::planted_bug`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlantedBug {
    /// A restart forgets the QoS 2 packet ids received and not yet released (PUBREC sent, no
    /// PUBREL yet), so a PUBLISH the client sends again after the restart is delivered again
    /// [MQTT-4.3.3-2].
    LoseQos2ReceiveIds,
    /// A connection closed for keepalive expiry ends without its will [MQTT-3.1.2-8].
    ForgetWillOnKeepalive,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 2] = [
        PlantedBug::LoseQos2ReceiveIds,
        PlantedBug::ForgetWillOnKeepalive,
    ];

    /// The name a scenario's `broker: {planted_bug: ...}` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PlantedBug::LoseQos2ReceiveIds => "lose_qos2_receive_ids",
            PlantedBug::ForgetWillOnKeepalive => "forget_will_on_keepalive",
        }
    }
}

/// The most levels a topic of 65535 bytes can have: `max_topic_levels` above it would mean the
/// same.
const MAX_TOPIC_LEVELS_LIMIT: usize = 65_536;

/// Who may resume or take over a session (`BrokerConfig::session_takeover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionTakeover {
    #[default]
    SameUser,
    AnyUser,
}

/// How a shared subscription group picks the member for a message
/// (`BrokerConfig::shared_subscription_strategy`). Each picks among the members whose session
/// is online (and may read the topic), or, when none is, among all of them (the message then
/// waits in that member's session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SharedStrategy {
    /// The members in turn, in the order their sessions were created.
    #[default]
    RoundRobin,
    /// A member drawn from the broker's seeded generator (`rng_seed`).
    Random,
    /// The messages of one publishing client go to one member, chosen by a hash of the
    /// publisher's client id, for as long as the group's eligible members stay the same.
    StickyByClient,
}

/// The store's sync policy as the configuration file spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    #[default]
    EveryWrite,
    Periodic,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:1883".to_string(),
            listeners: Vec::new(),
            data_dir: None,
            sync: SyncMode::EveryWrite,
            sync_interval_ms: 1000,
            threads: 1,
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            session_takeover: SessionTakeover::SameUser,
            max_packet_size: 1024 * 1024,
            max_topic_levels: 128,
            max_connections: 100_000,
            max_inflight_messages: 128,
            max_incoming_qos2: 1024,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_inflight_bytes: 16 * 1024 * 1024,
            max_queued_bytes_total: 512 * 1024 * 1024,
            queue_qos0_messages: false,
            outbound_queue_packets: 1024,
            outbound_queue_bytes: 8 * 1024 * 1024,
            slow_subscriber_timeout_secs: 30,
            connect_timeout_secs: 10,
            retain_available: true,
            max_qos: 2,
            max_keepalive_secs: None,
            shared_subscriptions: true,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            topic_alias_maximum: 10,
            topic_alias_maximum_outbound: 10,
            sys_interval_secs: 10,
            rng_seed: None,
            wall_clock: WallClock::default(),
            authenticator: Authenticator::default(),
            planted_bug: None,
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Toml(String),
    #[error("{field} = {value}: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

impl BrokerConfig {
    /// Parses a TOML document and checks the values.
    pub fn from_toml(text: &str) -> Result<BrokerConfig, ConfigError> {
        let config: BrokerConfig =
            toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, value: String, why| Err(ConfigError::Invalid { field, value, why });
        if self.max_packet_size < 2 {
            return invalid(
                "max_packet_size",
                self.max_packet_size.to_string(),
                "the smallest packet is 2 bytes",
            );
        }
        if self.max_keepalive_secs == Some(0) {
            return invalid(
                "max_keepalive_secs",
                "0".into(),
                "must be at least 1 (leave it out for no maximum)",
            );
        }
        if self.max_inflight_messages == 0 {
            return invalid("max_inflight_messages", "0".into(), "must be at least 1");
        }
        if self.outbound_queue_packets <= usize::from(self.max_inflight_messages) {
            return invalid(
                "outbound_queue_packets",
                self.outbound_queue_packets.to_string(),
                "must exceed max_inflight_messages",
            );
        }
        if self.max_qos > 2 {
            return invalid("max_qos", self.max_qos.to_string(), "must be 0, 1 or 2");
        }
        if self.max_incoming_qos2 == 0 {
            return invalid("max_incoming_qos2", "0".into(), "must be at least 1");
        }
        // Durations are added to the current time; keep them far from overflow.
        const DAY_SECS: u64 = 86_400;
        for (field, secs) in [
            ("connect_timeout_secs", self.connect_timeout_secs),
            (
                "slow_subscriber_timeout_secs",
                self.slow_subscriber_timeout_secs,
            ),
            ("sys_interval_secs", self.sys_interval_secs),
            ("sync_interval_ms", self.sync_interval_ms / 1000),
        ] {
            if secs > DAY_SECS {
                return invalid(field, secs.to_string(), "must be at most one day");
            }
        }
        if !(1..=MAX_TOPIC_LEVELS_LIMIT).contains(&self.max_topic_levels) {
            return invalid(
                "max_topic_levels",
                self.max_topic_levels.to_string(),
                "must be from 1 to 65536 (a topic is at most 65535 bytes)",
            );
        }
        for (field, bytes) in [
            ("max_queued_bytes", self.max_queued_bytes),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("max_queued_bytes_total", self.max_queued_bytes_total),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
        ] {
            if bytes == 0 {
                return invalid(field, "0".into(), "must be at least 1");
            }
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "0".into(), "must be at least 1");
        }
        if self.listen.is_empty() && self.listeners.is_empty() {
            return invalid(
                "listen",
                "\"\"".into(),
                "no listener left: set listen or add a [[listener]]",
            );
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            listener.check().map_err(|why| {
                ConfigError::Toml(format!(
                    "[[listener]] {} (listen = {:?}): {why}",
                    i + 1,
                    listener.listen
                ))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_defaults() {
        let config = BrokerConfig::from_toml("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:1883");
        assert_eq!(config.max_inflight_messages, 128);
        assert_eq!(config.sync, SyncMode::EveryWrite);
    }

    #[test]
    fn unknown_key_and_bad_relation_are_refused() {
        assert!(BrokerConfig::from_toml("max_inflight = 3").is_err());
        assert!(BrokerConfig::from_toml(
            "max_inflight_messages = 100\noutbound_queue_packets = 50"
        )
        .is_err());
    }

    #[test]
    fn documented_example_parses_and_matches_defaults() {
        let text = include_str!("../../docs/broker.toml");
        let config = BrokerConfig::from_toml(text).unwrap();
        let defaults = BrokerConfig::default();
        // The example file shows every option at its default value.
        assert_eq!(
            toml::to_string(&config).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
    }
}
