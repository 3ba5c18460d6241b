//! The YAML scenario format: its typed model, parsing, and validation with `file:line:col`
//! errors. The format is documented for users in `scenarios/README.md`; every field there has a
//! test here.
//!
//! One file format, two kinds of scenario:
//! - **explicit**: named `clients` and ordered `steps` (actions, faults and expectations);
//! - **randomised**: a `workload` and a `nemesis` drawn from the seed, judged by `checkers`,
//!   run for `seeds: N` seeds.
//!
//! Parsing is two passes. serde_yaml (with `deny_unknown_fields` everywhere) refuses unknown
//! keys and malformed values with its own location; then [`validate`] checks what the types
//! cannot say (a step naming an undefined client, a 5.0 option on a 3.1.1 client, a rate of
//! zero) and places each error with [`locate`] by walking the source along the value's path.

pub mod acl;
pub mod cite;
pub mod locate;
pub mod raw;
pub mod units;
mod yaml_errors;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{PacketType, ProtocolVersion, QoS};
use crate::history::checkers::CheckerName;
use crate::history::Direction;
pub use acl::{AclTopics, ClientUser, SIM_ACL};
pub use locate::Seg;
pub use units::{Dur, Rate};

/// Bounds that keep a scenario from asking for an unbounded run.
pub const SEEDS_MAX: u32 = 100_000;
pub const PUBLISH_COUNT_MAX: u32 = 1_000_000;
pub const WORKLOAD_CLIENTS_MAX: u32 = 10_000;
pub const PAYLOAD_SIZE_MAX: u32 = 1 << 20;

/// A parsed and validated scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Defaults to the file name without `.yaml`.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Normative statements the scenario exercises (`MQTT-4.3.2-1`, …).
    #[serde(default)]
    pub spec: Vec<String>,
    /// Capabilities the target must have (certification skips otherwise).
    #[serde(default)]
    pub requires: Vec<Capability>,
    /// How many seeds `simqtt run` tries (default 1 for explicit, 20 for randomised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<u32>,
    /// A fixed first seed (regression files pin the seed that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub broker: BrokerSpec,
    /// Checkers to run over the trace; default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkers: Option<Vec<CheckerName>>,
    /// Quiet time after the last step (faults healed) before the trace is judged.
    #[serde(default = "default_quiesce")]
    pub quiesce: Dur,
    /// Regression files: what the bug was and how it was fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmortem: Option<String>,
    /// An un-numbered SHOULD of the specs that the expectations test ("§4.7.2: the Server
    /// SHOULD prevent …"), for a scenario naming no `spec:` statement (every numbered
    /// statement is a MUST): certification grades its failed expectations SHOULD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub should: Option<String>,
    /// Explicit scenarios: the clients by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clients: BTreeMap<String, ClientSpec>,
    /// Explicit scenarios: what happens, in order. Each step is a one-key map
    /// (`- connect: sub`), not serde_yaml 0.9's default `!connect` tag.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "serde_yaml::with::singleton_map_recursive"
    )]
    pub steps: Vec<Step>,
    /// Randomised scenarios: the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Randomised scenarios: the faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nemesis: Option<Nemesis>,
}

/// The client a client-side scenario (`scenarios/client/`) judges: `simqtt certify-client`
/// runs the client under test in its place.
pub const CLIENT_UNDER_TEST: &str = "app";

impl Scenario {
    /// A client-side scenario: one of its clients is the client under test.
    pub fn client_side(&self) -> bool {
        self.clients.contains_key(CLIENT_UNDER_TEST)
    }
}

fn default_quiesce() -> Dur {
    Dur::from_secs(10)
}

/// Which kind a scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Explicit,
    Randomised,
}

impl Scenario {
    pub fn kind(&self) -> Kind {
        if self.workload.is_some() {
            Kind::Randomised
        } else {
            Kind::Explicit
        }
    }

    /// Seeds to run by default.
    pub fn default_seeds(&self) -> u32 {
        self.seeds.unwrap_or(match self.kind() {
            Kind::Explicit => 1,
            Kind::Randomised => 20,
        })
    }

    /// The checkers to apply.
    pub fn checker_list(&self) -> Vec<CheckerName> {
        self.checkers
            .clone()
            .unwrap_or_else(|| CheckerName::ALL.to_vec())
    }

    /// The turmoil host a client runs on (its `host`, else its own name).
    pub fn host_of(&self, client: &str) -> Option<String> {
        self.clients
            .get(client)
            .map(|c| c.host.clone().unwrap_or_else(|| client.to_string()))
    }
}

/// A capability a scenario needs from its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// The target can be stopped and restarted (crash_broker/restart_broker).
    BrokerRestart,
    /// Power loss: unsynced writes vanish.
    PowerLoss,
    /// Sessions and retained messages survive a broker restart.
    Persistence,
    /// MQTT 5.0.
    Mqtt5,
    /// The broker's admin handle can close a client's connection.
    Kick,
    Retain,
    Wildcards,
    Will,
    Qos1,
    Qos2,
    /// Faults inside one connection (the simulator's fault layer or the certify proxy).
    ConnectionFaults,
    /// Link faults between hosts (partition, loss, latency).
    LinkFaults,
    /// An ACL user with a deny inside an allowed wildcard (`user: acl` clients, `{acl.…}`
    /// topics; see `scenario::acl`).
    Acl,
    /// Shared subscriptions `$share/{ShareName}/{filter}` (5.0 Shared Subscription Available).
    SharedSubscriptions,
    /// 5.0 enhanced authentication with SCRAM-SHA-256 for the ACL user (`auth: scram`
    /// clients, `reauthenticate` steps).
    EnhancedAuth,
}

/// Broker options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// Sessions, queued messages and retained messages survive a crash (written to the
    /// store and synced before being acknowledged).
    #[serde(default = "yes")]
    pub durable: bool,
    /// The broker's turmoil host name.
    #[serde(default = "default_broker_host")]
    pub host: String,
    /// For trying and testing the test tools, never a broker setting: the simulated broker
    /// runs with this bug planted, so the shrinker and the explorer meet a known failure
    /// (docs/shrinking.md; docs/examples/planted-will-bug.yaml for the README's example).
    #[doc(hidden)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planted_bug: Option<crate::broker::PlantedBug>,
    /// The broker's longest Keep Alive (whole seconds; `max_keepalive_secs`): clients asking
    /// for more are given it as Server Keep Alive (5.0). `simqtt certify` runs the scenario only
    /// against a profile declaring the same `max_keepalive_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keepalive: Option<Dur>,
    /// The broker's Topic Alias Maximum (`topic_alias_maximum`, announced in CONNACK): the
    /// simulated broker runs with it, and `simqtt certify` runs the scenario only against a
    /// profile declaring the same `topic_alias_maximum`. 0 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_alias_maximum: Option<u16>,
    /// How the simulated clients reach the broker: plain TCP, TLS, WebSocket or WebSocket
    /// over TLS (`simqtt certify` skips such a scenario: its transport is its `--broker` URL's).
    #[serde(default, skip_serializing_if = "Transport::is_plain")]
    pub transport: Transport,
}

/// The transport of a simulated run (`broker: {transport: …}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// MQTT straight on TCP.
    #[default]
    Mqtt,
    /// TLS over TCP.
    Mqtts,
    /// WebSocket (the `mqtt` subprotocol on `/mqtt`).
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    pub fn is_plain(&self) -> bool {
        *self == Transport::Mqtt
    }

    pub fn scheme(self) -> crate::transport::url::Scheme {
        use crate::transport::url::Scheme;
        match self {
            Transport::Mqtt => Scheme::Mqtt,
            Transport::Mqtts => Scheme::Mqtts,
            Transport::Ws => Scheme::Ws,
            Transport::Wss => Scheme::Wss,
        }
    }
}

impl Default for BrokerSpec {
    fn default() -> BrokerSpec {
        BrokerSpec {
            durable: true,
            host: default_broker_host(),
            planted_bug: None,
            max_keepalive: None,
            topic_alias_maximum: None,
            transport: Transport::Mqtt,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_broker_host() -> String {
    "broker".into()
}

/// Client options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// MQTT client identifier; defaults to the client's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    #[serde(default = "yes")]
    pub clean_session: bool,
    /// Keep Alive, whole seconds (0 disables).
    #[serde(default = "default_keepalive")]
    pub keepalive: Dur,
    #[serde(default = "default_protocol")]
    pub protocol: ProtocolVersion,
    /// 5.0 Session Expiry Interval (whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expiry: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will: Option<WillSpec>,
    /// Subscribe again on its own after a reconnect that finds no session.
    #[serde(default)]
    pub resubscribe: bool,
    /// Reconnect on its own after losing the connection.
    #[serde(default = "yes")]
    pub reconnect: bool,
    /// Where in-flight QoS 1/2 state lives across a client crash.
    #[serde(default)]
    pub persistence: Persistence,
    /// The turmoil host it runs on; defaults to its name. Clients may share a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Connect as this user (`acl`: the ACL user); default: the run's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ClientUser>,
    /// 5.0 enhanced authentication (`scram`: SCRAM-SHA-256 with the client's credentials, in
    /// place of the password in CONNECT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ClientAuth>,
}

/// How a client authenticates (`auth:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// MQTT 5.0 enhanced authentication with SCRAM-SHA-256 (`crate::scram`).
    Scram,
}

impl Default for ClientSpec {
    fn default() -> ClientSpec {
        ClientSpec {
            client_id: None,
            clean_session: true,
            keepalive: default_keepalive(),
            protocol: default_protocol(),
            session_expiry: None,
            will: None,
            resubscribe: false,
            reconnect: true,
            persistence: Persistence::None,
            host: None,
            user: None,
            auth: None,
        }
    }
}

fn default_keepalive() -> Dur {
    Dur::from_secs(30)
}

fn default_protocol() -> ProtocolVersion {
    ProtocolVersion::V311
}

/// Client-side persistence of in-flight messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// Lost when the client crashes.
    #[default]
    None,
    /// Kept on the client host's (simulated) disk.
    Disk,
}

/// A will registered at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WillSpec {
    pub topic: String,
    #[serde(default)]
    pub qos: QoS,
    #[serde(default)]
    pub retain: bool,
    /// 5.0 Will Delay Interval (whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Dur>,
    /// An empty will payload (clears a retained message on the will topic).
    #[serde(default)]
    pub empty: bool,
}

/// A packet type, as fault steps name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketKind {
    Connect,
    Connack,
    Publish,
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
    Subscribe,
    Suback,
    Unsubscribe,
    Unsuback,
    Pingreq,
    Pingresp,
    Disconnect,
    Auth,
}

impl PacketKind {
    pub fn packet_type(self) -> PacketType {
        match self {
            PacketKind::Connect => PacketType::Connect,
            PacketKind::Connack => PacketType::ConnAck,
            PacketKind::Publish => PacketType::Publish,
            PacketKind::Puback => PacketType::PubAck,
            PacketKind::Pubrec => PacketType::PubRec,
            PacketKind::Pubrel => PacketType::PubRel,
            PacketKind::Pubcomp => PacketType::PubComp,
            PacketKind::Subscribe => PacketType::Subscribe,
            PacketKind::Suback => PacketType::SubAck,
            PacketKind::Unsubscribe => PacketType::Unsubscribe,
            PacketKind::Unsuback => PacketType::UnsubAck,
            PacketKind::Pingreq => PacketType::PingReq,
            PacketKind::Pingresp => PacketType::PingResp,
            PacketKind::Disconnect => PacketType::Disconnect,
            PacketKind::Auth => PacketType::Auth,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PacketKind::Connect => "connect",
            PacketKind::Connack => "connack",
            PacketKind::Publish => "publish",
            PacketKind::Puback => "puback",
            PacketKind::Pubrec => "pubrec",
            PacketKind::Pubrel => "pubrel",
            PacketKind::Pubcomp => "pubcomp",
            PacketKind::Subscribe => "subscribe",
            PacketKind::Suback => "suback",
            PacketKind::Unsubscribe => "unsubscribe",
            PacketKind::Unsuback => "unsuback",
            PacketKind::Pingreq => "pingreq",
            PacketKind::Pingresp => "pingresp",
            PacketKind::Disconnect => "disconnect",
            PacketKind::Auth => "auth",
        }
    }
}

/// Steps whose only required field is a client may be written `- kick: c1` as well as
/// `- kick: {client: c1}`; steps with no required field may be written `- restart_broker:`.
/// The structs derive with `remote = "Self"` so the map form keeps serde's own field errors
/// (with their locations) and these impls add the short forms.
macro_rules! short_form {
    ($ty:ident, $field:ident) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        write!(
                            f,
                            "a {} name or a map of {} options",
                            stringify!($field),
                            stringify!($ty)
                        )
                    }
                    // Some short-form structs have only the one field.
                    #[allow(clippy::needless_update)]
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        Ok($ty {
                            $field: v.to_string(),
                            ..Default::default()
                        })
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        $ty::deserialize(de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self, serializer)
            }
        }
    };
    ($ty:ident) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        write!(f, "nothing, or a map of {} options", stringify!($ty))
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
                        Ok($ty::default())
                    }
                    fn visit_none<E: de::Error>(self) -> Result<$ty, E> {
                        Ok($ty::default())
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        $ty::deserialize(de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self, serializer)
            }
        }
    };
}

/// A step naming just a client (connect, crash_client, restart_client, reset, stall, kick).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct ClientStep {
    pub client: String,
}
short_form!(ClientStep, client);

/// One filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub filter: String,
    #[serde(default)]
    pub qos: QoS,
    /// 5.0 subscription options.
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default)]
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeStep {
    pub client: String,
    /// Short form for one filter (with `qos`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<QoS>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterSpec>,
}

impl SubscribeStep {
    /// The filters, whichever form was used.
    pub fn all_filters(&self) -> Vec<FilterSpec> {
        let mut out = self.filters.clone();
        if let Some(filter) = &self.filter {
            out.insert(
                0,
                FilterSpec {
                    filter: filter.clone(),
                    qos: self.qos.unwrap_or_default(),
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                },
            );
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeStep {
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
}

impl UnsubscribeStep {
    pub fn all_filters(&self) -> Vec<String> {
        self.filter
            .iter()
            .cloned()
            .chain(self.filters.iter().cloned())
            .collect()
    }
}

/// Publishes `count` messages (ids `<client>-<n>`, numbered from 1 per client) at `rate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishStep {
    pub client: String,
    pub topic: String,
    #[serde(default)]
    pub qos: QoS,
    #[serde(default)]
    pub retain: bool,
    #[serde(default = "one")]
    pub count: u32,
    /// Without a rate, a burst: all handed to the client at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Payload bytes (at least the id's length; padded after the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u32>,
    /// An empty payload (clears the retained message with `retain: true`).
    #[serde(default)]
    pub empty: bool,
    /// What the step waits for before the next step runs.
    #[serde(
        default,
        rename = "await",
        skip_serializing_if = "PublishAwait::is_accepted"
    )]
    pub await_: PublishAwait,
}

/// What a `publish` step waits for before the next step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishAwait {
    /// The client took every message (queued or written; at the step's `rate`): nothing is
    /// known yet of the broker.
    #[default]
    Accepted,
    /// Every message's flow completed: PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived, so the
    /// broker owns the message.
    Ack,
}

impl PublishAwait {
    fn is_accepted(&self) -> bool {
        *self == PublishAwait::Accepted
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct DisconnectStep {
    pub client: String,
    /// 5.0 reason 0x04: disconnect but publish the will.
    #[serde(default)]
    pub with_will: bool,
}
short_form!(DisconnectStep, client);

/// `reauthenticate`: 5.0 re-authentication (§4.12.1) of an `auth: scram` client.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct ReauthenticateStep {
    pub client: String,
    /// Re-authenticate with a wrong password: the broker must refuse and close.
    #[serde(default)]
    pub wrong_password: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}
short_form!(ReauthenticateStep, client);

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct CrashBrokerStep {
    /// Power loss: the broker host's unsynced writes are lost too.
    #[serde(default)]
    pub power_loss: bool,
}
short_form!(CrashBrokerStep);

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct RestartBrokerStep {}
short_form!(RestartBrokerStep);

/// Two link endpoints: `broker`, a client name or a host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionStep {
    pub a: String,
    #[serde(default = "default_broker_host")]
    pub b: String,
    /// Only `a → b` is cut.
    #[serde(default)]
    pub one_way: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct HealStep {
    /// Without endpoints, heals every partition and loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
}
short_form!(HealStep);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossStep {
    pub a: String,
    #[serde(default = "default_broker_host")]
    pub b: String,
    /// 0.0 ..= 1.0; 0 ends the loss.
    pub rate: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyStep {
    pub a: String,
    #[serde(default = "default_broker_host")]
    pub b: String,
    pub latency: Dur,
    #[serde(default)]
    pub jitter: Dur,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayStep {
    pub client: String,
    pub by: Dur,
}

/// Drop or duplicate the next packet of a type on one client's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketStep {
    pub client: String,
    pub packet: PacketKind,
    /// `outbound` (client → broker, default) or `inbound`.
    #[serde(default = "outbound")]
    pub direction: Direction,
}

fn outbound() -> Direction {
    Direction::Outbound
}

/// One expected message (or several with `count`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedMessage {
    /// A payload id (`pub-3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The publishing client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<QoS>,
    /// The RETAIN flag of the delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    /// Distinct messages that must match (default 1).
    #[serde(default = "one")]
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectMessagesStep {
    pub client: String,
    pub messages: Vec<ExpectedMessage>,
    pub within: Dur,
    /// Judge the deliveries the previous `expect_messages` of this client looked at, again
    /// (another statement about the same messages), instead of those after it.
    #[serde(default)]
    pub again: bool,
    /// The statement a failure breaks (one id of the scenario's `spec:`); see [`cite`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// The spec permits the other outcome: a failure is reported as a note, never a finding
    /// (the text says why, e.g. the section that allows it). Excludes `spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectNoMessageStep {
    pub client: String,
    /// Only messages matching this filter count (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(rename = "for")]
    pub duration: Dur,
    /// The statement a failure breaks (one id of the scenario's `spec:`); see [`cite`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// The spec permits the other outcome: a failure is reported as a note, never a finding
    /// (the text says why, e.g. the section that allows it). Excludes `spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Also count what arrived before the step, from the start of the run: nothing matching
    /// may ever have arrived (an ACL's deny, say).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub since_start: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSessionPresentStep {
    pub client: String,
    /// The flag of the client's latest CONNACK.
    pub present: bool,
    /// The statement a failure breaks (one id of the scenario's `spec:`); see [`cite`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// The spec permits the other outcome: a failure is reported as a note, never a finding
    /// (the text says why, e.g. the section that allows it). Excludes `spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectWillStep {
    /// The client whose will it is.
    pub of: String,
    /// The client that should (not) receive it.
    pub to: String,
    pub delivered: bool,
    pub within: Dur,
    /// The RETAIN flag the delivery must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    /// The statement a failure breaks (one id of the scenario's `spec:`); see [`cite`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// The spec permits the other outcome: a failure is reported as a note, never a finding
    /// (the text says why, e.g. the section that allows it). Excludes `spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One step of an explicit scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Connect(ClientStep),
    Subscribe(SubscribeStep),
    Unsubscribe(UnsubscribeStep),
    Publish(PublishStep),
    Disconnect(DisconnectStep),
    Reauthenticate(ReauthenticateStep),
    CrashBroker(CrashBrokerStep),
    RestartBroker(RestartBrokerStep),
    CrashClient(ClientStep),
    RestartClient(ClientStep),
    Partition(PartitionStep),
    Heal(HealStep),
    Loss(LossStep),
    Latency(LatencyStep),
    Reset(ClientStep),
    Stall(ClientStep),
    Delay(DelayStep),
    DropPacket(PacketStep),
    DuplicatePacket(PacketStep),
    Kick(ClientStep),
    Wait(Dur),
    ExpectMessages(ExpectMessagesStep),
    ExpectNoMessage(ExpectNoMessageStep),
    ExpectSessionPresent(ExpectSessionPresentStep),
    ExpectWill(ExpectWillStep),
    Raw(raw::RawStep),
    ExpectRaw(raw::ExpectRawStep),
}

impl Step {
    /// The key the step is written with.
    pub fn keyword(&self) -> &'static str {
        match self {
            Step::Connect(_) => "connect",
            Step::Subscribe(_) => "subscribe",
            Step::Unsubscribe(_) => "unsubscribe",
            Step::Publish(_) => "publish",
            Step::Disconnect(_) => "disconnect",
            Step::Reauthenticate(_) => "reauthenticate",
            Step::CrashBroker(_) => "crash_broker",
            Step::RestartBroker(_) => "restart_broker",
            Step::CrashClient(_) => "crash_client",
            Step::RestartClient(_) => "restart_client",
            Step::Partition(_) => "partition",
            Step::Heal(_) => "heal",
            Step::Loss(_) => "loss",
            Step::Latency(_) => "latency",
            Step::Reset(_) => "reset",
            Step::Stall(_) => "stall",
            Step::Delay(_) => "delay",
            Step::DropPacket(_) => "drop_packet",
            Step::DuplicatePacket(_) => "duplicate_packet",
            Step::Kick(_) => "kick",
            Step::Wait(_) => "wait",
            Step::ExpectMessages(_) => "expect_messages",
            Step::ExpectNoMessage(_) => "expect_no_message",
            Step::ExpectSessionPresent(_) => "expect_session_present",
            Step::ExpectWill(_) => "expect_will",
            Step::Raw(_) => "raw",
            Step::ExpectRaw(_) => "expect_raw",
        }
    }

    /// Client names the step refers to (for validation, and the shrinker's client removal).
    pub fn clients(&self) -> Vec<&str> {
        match self {
            Step::Connect(s)
            | Step::CrashClient(s)
            | Step::RestartClient(s)
            | Step::Reset(s)
            | Step::Stall(s)
            | Step::Kick(s) => vec![&s.client],
            Step::Subscribe(s) => vec![&s.client],
            Step::Unsubscribe(s) => vec![&s.client],
            Step::Publish(s) => vec![&s.client],
            Step::Disconnect(s) => vec![&s.client],
            Step::Reauthenticate(s) => vec![&s.client],
            Step::Delay(s) => vec![&s.client],
            Step::DropPacket(s) | Step::DuplicatePacket(s) => vec![&s.client],
            Step::ExpectMessages(s) => {
                let mut v = vec![s.client.as_str()];
                v.extend(s.messages.iter().filter_map(|m| m.from.as_deref()));
                v
            }
            Step::ExpectNoMessage(s) => vec![&s.client],
            Step::ExpectSessionPresent(s) => vec![&s.client],
            Step::ExpectWill(s) => vec![&s.of, &s.to],
            Step::Raw(s) => vec![&s.client],
            Step::ExpectRaw(s) => vec![&s.client],
            Step::CrashBroker(_)
            | Step::RestartBroker(_)
            | Step::Partition(_)
            | Step::Heal(_)
            | Step::Loss(_)
            | Step::Latency(_)
            | Step::Wait(_) => vec![],
        }
    }

    /// Link endpoints the step names.
    pub fn endpoints(&self) -> Vec<&str> {
        match self {
            Step::Partition(s) => vec![&s.a, &s.b],
            Step::Heal(s) => s.a.iter().chain(s.b.iter()).map(String::as_str).collect(),
            Step::Loss(s) => vec![&s.a, &s.b],
            Step::Latency(s) => vec![&s.a, &s.b],
            _ => vec![],
        }
    }
}

/// Session kinds a workload's clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMix {
    #[default]
    Clean,
    Persistent,
    /// Drawn per client from the seed.
    Mixed,
}

/// Protocol versions a workload's clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolMix {
    #[default]
    V311,
    V5,
    Mixed,
}

/// The traffic of a randomised scenario. Publisher `p<i>` publishes on topics drawn from the
/// seed; subscriber `s<i>` subscribes to topics (or wildcards) drawn from the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub publishers: u32,
    pub subscribers: u32,
    /// Number of topics (`t/0` …).
    #[serde(default = "default_topics")]
    pub topics: u32,
    /// QoS levels drawn per message.
    #[serde(default = "all_qos")]
    pub qos: Vec<QoS>,
    /// Per publisher.
    pub rate: Rate,
    /// How long publishers publish.
    pub duration: Dur,
    /// Fraction of messages published with RETAIN.
    #[serde(default)]
    pub retain: f64,
    #[serde(default)]
    pub sessions: SessionMix,
    #[serde(default)]
    pub protocol: ProtocolMix,
    #[serde(default = "default_workload_keepalive")]
    pub keepalive: Dur,
    /// Client hosts the sessions are spread over (few hosts, many sessions: fast).
    #[serde(default = "default_hosts")]
    pub hosts: u32,
    /// Subscribers use `+`/`#` filters too.
    #[serde(default)]
    pub wildcards: bool,
    /// Clients register wills.
    #[serde(default)]
    pub wills: bool,
    #[serde(default = "yes")]
    pub resubscribe: bool,
}

fn default_topics() -> u32 {
    4
}

fn all_qos() -> Vec<QoS> {
    vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
}

fn default_workload_keepalive() -> Dur {
    Dur::from_secs(5)
}

fn default_hosts() -> u32 {
    2
}

/// Fault kinds the nemesis may draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Partition,
    PartitionOneWay,
    Loss,
    Latency,
    CrashBroker,
    PowerLoss,
    CrashClient,
    Kick,
    Reset,
    Stall,
    Delay,
    DropPacket,
    DuplicatePacket,
}

/// The fault schedule of a randomised scenario, drawn from the seed: a fault every
/// `interval` on average, each healed after at most `max_duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nemesis {
    pub faults: Vec<FaultKind>,
    pub interval: Dur,
    #[serde(default = "default_fault_duration")]
    pub max_duration: Dur,
    /// Loss rate for `loss` faults.
    #[serde(default = "default_loss_rate")]
    pub loss_rate: f64,
}

fn default_fault_duration() -> Dur {
    Dur::from_secs(5)
}

fn default_loss_rate() -> f64 {
    0.05
}

/// A refusal with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Every refusal found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioErrors {}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioErrors> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        ScenarioErrors(vec![ScenarioError {
            file: file.clone(),
            line: 1,
            col: 1,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(&file, &src)
}

/// Parses and validates scenario text; `file` names it in errors and gives the default name.
pub fn parse(file: &str, src: &str) -> Result<Scenario, ScenarioErrors> {
    let mut scenario: Scenario = serde_yaml::from_str(src).map_err(|e| {
        let (line, col, message) = yaml_errors::explain(src, &e);
        ScenarioErrors(vec![ScenarioError {
            file: file.to_string(),
            line,
            col,
            message,
        }])
    })?;
    if scenario.name.is_empty() {
        scenario.name = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    let errors = validate(&scenario, file, src);
    if errors.is_empty() {
        Ok(scenario)
    } else {
        Err(ScenarioErrors(errors))
    }
}

struct Errors<'a> {
    file: &'a str,
    src: &'a str,
    out: Vec<ScenarioError>,
}

impl Errors<'_> {
    fn at(&mut self, path: &[Seg], needle: Option<&str>, message: String) {
        let (line, col) = locate::locate(self.src, path, needle).unwrap_or((1, 1));
        self.out.push(ScenarioError {
            file: self.file.to_string(),
            line,
            col,
            message,
        });
    }
}

fn spec_id_ok(id: &str) -> bool {
    // MQTT-<section numbers>-<statement number>, e.g. MQTT-3.1.2-24 or MQTT-4.2.0-1.
    let Some(rest) = id.strip_prefix("MQTT-") else {
        return false;
    };
    let Some((section, number)) = rest.rsplit_once('-') else {
        return false;
    };
    !section.is_empty()
        && section
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        && !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
}

/// The semantic checks; returns every error found.
pub fn validate(s: &Scenario, file: &str, src: &str) -> Vec<ScenarioError> {
    let mut e = Errors {
        file,
        src,
        out: Vec::new(),
    };
    for id in &s.spec {
        if !spec_id_ok(id) {
            e.at(
                &[Seg::Key("spec")],
                Some(id),
                format!("{id:?} is not a statement id; expected the form MQTT-3.1.2-4"),
            );
        }
    }
    if let Some(max) = s.broker.max_keepalive {
        if !max
            .whole_secs()
            .is_some_and(|secs| (1..=u64::from(u16::MAX)).contains(&secs))
        {
            e.at(
                &[Seg::Key("broker"), Seg::Key("max_keepalive")],
                None,
                "max_keepalive is whole seconds from 1s up to 65535s, like 5s".into(),
            );
        }
    }
    if let Some(seeds) = s.seeds {
        if seeds == 0 || seeds > SEEDS_MAX {
            e.at(
                &[Seg::Key("seeds")],
                None,
                format!("seeds must be 1..={SEEDS_MAX}"),
            );
        }
    }
    match (s.steps.is_empty(), s.workload.is_some()) {
        (true, false) => e.at(
            &[],
            None,
            "a scenario needs `steps` (explicit) or `workload` (randomised)".into(),
        ),
        (false, true) => e.at(
            &[Seg::Key("workload")],
            None,
            "a scenario has either `steps` or `workload`, not both".into(),
        ),
        _ => {}
    }
    if s.nemesis.is_some() && s.workload.is_none() {
        e.at(
            &[Seg::Key("nemesis")],
            None,
            "`nemesis` needs a `workload`; explicit scenarios inject faults as steps".into(),
        );
    }
    if s.workload.is_some() && !s.clients.is_empty() {
        e.at(
            &[Seg::Key("clients")],
            None,
            "randomised scenarios generate their clients; remove `clients`".into(),
        );
    }
    if s.broker.host.is_empty() {
        e.at(
            &[Seg::Key("broker"), Seg::Key("host")],
            None,
            "the broker host needs a name".into(),
        );
    }
    validate_clients(s, &mut e);
    validate_steps(s, &mut e);
    cite::validate(s, &mut e);
    validate_schedule(s, &mut e);
    acl::validate_acl(s, &mut e);
    if let Some(w) = &s.workload {
        validate_workload(w, &mut e);
    }
    if let Some(n) = &s.nemesis {
        if n.faults.is_empty() {
            e.at(
                &[Seg::Key("nemesis"), Seg::Key("faults")],
                None,
                "list at least one fault kind".into(),
            );
        }
        let qos0_only = s
            .workload
            .as_ref()
            .is_some_and(|w| w.qos.iter().all(|q| *q == QoS::AtMostOnce));
        if qos0_only && n.faults.contains(&FaultKind::DuplicatePacket) {
            e.at(
                &[Seg::Key("nemesis"), Seg::Key("faults")],
                Some("duplicate_packet"),
                "duplicate_packet meets nothing in a QoS 0 workload (a duplicate models a retransmission, and a QoS 0 PUBLISH is never retransmitted); remove it".into(),
            );
        }
        if n.interval.millis == 0 {
            e.at(
                &[Seg::Key("nemesis"), Seg::Key("interval")],
                None,
                "the interval must be above zero, like 2s".into(),
            );
        }
        if !(0.0..=1.0).contains(&n.loss_rate) {
            e.at(
                &[Seg::Key("nemesis"), Seg::Key("loss_rate")],
                None,
                "loss_rate is a fraction between 0.0 and 1.0".into(),
            );
        }
    }
    e.out
}

fn validate_clients(s: &Scenario, e: &mut Errors) {
    for (name, c) in &s.clients {
        let path = |key: &'static str| [Seg::Key("clients"), Seg::Key(name), Seg::Key(key)];
        if name == &s.broker.host || name == "broker" || name.is_empty() {
            e.at(
                &[Seg::Key("clients"), Seg::Key(name)],
                None,
                format!("{name:?} cannot name a client: it is the broker's host"),
            );
        }
        if c.host.as_deref() == Some(s.broker.host.as_str()) {
            e.at(
                &path("host"),
                None,
                "a client cannot run on the broker's host".into(),
            );
        }
        if c.auth.is_some() && c.protocol != ProtocolVersion::V5 {
            e.at(
                &path("auth"),
                None,
                "auth: scram (enhanced authentication) is MQTT 5.0 only: add protocol: v5".into(),
            );
        }
        match c.keepalive.whole_secs() {
            Some(secs) if secs <= u64::from(u16::MAX) => {}
            _ => e.at(
                &path("keepalive"),
                None,
                "keepalive is whole seconds up to 65535s (18h12m15s), like 10s".into(),
            ),
        }
        if c.client_id.as_deref() == Some("") && !c.clean_session {
            e.at(
                &path("client_id"),
                None,
                "an empty client id needs clean_session: true [MQTT-3.1.3-7]".into(),
            );
        }
        let v311 = c.protocol == ProtocolVersion::V311;
        if let Some(expiry) = c.session_expiry {
            if v311 {
                e.at(
                    &path("session_expiry"),
                    None,
                    "session_expiry is MQTT 5.0 only; set `protocol: v5`".into(),
                );
            }
            if expiry.whole_secs().is_none_or(|s| s > u64::from(u32::MAX)) {
                e.at(
                    &path("session_expiry"),
                    None,
                    "session_expiry is whole seconds, like 60s".into(),
                );
            }
        }
        if let Some(will) = &c.will {
            if crate::codec::TopicName::new(&will.topic).is_err() {
                e.at(
                    &[
                        Seg::Key("clients"),
                        Seg::Key(name),
                        Seg::Key("will"),
                        Seg::Key("topic"),
                    ],
                    None,
                    format!("{:?} is not a valid topic name", will.topic),
                );
            }
            if let Some(delay) = will.delay {
                if v311 {
                    e.at(
                        &[
                            Seg::Key("clients"),
                            Seg::Key(name),
                            Seg::Key("will"),
                            Seg::Key("delay"),
                        ],
                        None,
                        "a will delay is MQTT 5.0 only; set `protocol: v5`".into(),
                    );
                }
                if delay.whole_secs().is_none() {
                    e.at(
                        &[
                            Seg::Key("clients"),
                            Seg::Key(name),
                            Seg::Key("will"),
                            Seg::Key("delay"),
                        ],
                        None,
                        "a will delay is whole seconds, like 5s".into(),
                    );
                }
            }
        }
    }
}

// One arm per step kind, each a list of checks; keeping them as `if`s inside the arms reads
// better than spreading one kind over several guarded arms.
#[allow(clippy::collapsible_match)]
fn validate_steps(s: &Scenario, e: &mut Errors) {
    // `broker` always names the broker, whatever its host is called.
    let mut endpoints: Vec<String> = vec![s.broker.host.clone(), "broker".into()];
    for name in s.clients.keys() {
        endpoints.push(name.clone());
        if let Some(h) = s.host_of(name) {
            endpoints.push(h);
        }
    }
    let defined = |c: &str| s.clients.contains_key(c);
    let known: Vec<&str> = s.clients.keys().map(String::as_str).collect();
    for (i, step) in s.steps.iter().enumerate() {
        let kw = step.keyword();
        let path = [Seg::Key("steps"), Seg::Index(i), Seg::Key(kw)];
        for client in step.clients() {
            if !defined(client) {
                e.at(
                    &path,
                    Some(client),
                    format!(
                        "step {} ({kw}) names client {client:?}, which `clients` does not define; defined: {}",
                        i + 1,
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                );
            }
        }
        for endpoint in step.endpoints() {
            if !endpoints.iter().any(|x| x == endpoint) {
                e.at(
                    &path,
                    Some(endpoint),
                    format!(
                        "step {} ({kw}) names {endpoint:?}, which is neither `broker`, a client nor a client host",
                        i + 1,
                    ),
                );
            }
        }
        let version = |c: &str| s.clients.get(c).map(|c| c.protocol);
        match step {
            Step::Subscribe(sub) => {
                let filters = sub.all_filters();
                if filters.is_empty() {
                    e.at(&path, None, "subscribe needs `filter` or `filters`".into());
                }
                if sub.filter.is_none() && sub.qos.is_some() {
                    e.at(
                        &path,
                        Some("qos"),
                        "`qos` goes with `filter`; in `filters` each entry has its own".into(),
                    );
                }
                for f in &filters {
                    if crate::codec::TopicFilter::new(&f.filter).is_err() {
                        e.at(
                            &path,
                            Some(&f.filter),
                            format!("{:?} is not a valid topic filter", f.filter),
                        );
                    }
                    if f.retain_handling > 2 {
                        e.at(
                            &path,
                            Some("retain_handling"),
                            "retain_handling is 0, 1 or 2".into(),
                        );
                    }
                    let v5_options = f.no_local || f.retain_as_published || f.retain_handling != 0;
                    if v5_options && version(&sub.client) == Some(ProtocolVersion::V311) {
                        e.at(
                            &path,
                            Some(&f.filter),
                            "no_local, retain_as_published and retain_handling are MQTT 5.0 only"
                                .into(),
                        );
                    }
                }
            }
            Step::Unsubscribe(u) => {
                if u.all_filters().is_empty() {
                    e.at(
                        &path,
                        None,
                        "unsubscribe needs `filter` or `filters`".into(),
                    );
                }
            }
            Step::Publish(p) => {
                if crate::codec::TopicName::new(&p.topic).is_err() {
                    e.at(
                        &path,
                        Some(&p.topic),
                        format!(
                            "{:?} is not a valid topic name (no wildcards, not empty)",
                            p.topic
                        ),
                    );
                }
                if p.count == 0 || p.count > PUBLISH_COUNT_MAX {
                    e.at(
                        &path,
                        Some("count"),
                        format!("count must be 1..={PUBLISH_COUNT_MAX}"),
                    );
                }
                if p.payload_size.is_some_and(|n| n > PAYLOAD_SIZE_MAX) {
                    e.at(
                        &path,
                        Some("payload_size"),
                        format!("payload_size is at most {PAYLOAD_SIZE_MAX} bytes"),
                    );
                }
                if p.empty && p.payload_size.is_some() {
                    e.at(
                        &path,
                        Some("empty"),
                        "`empty` and `payload_size` exclude each other".into(),
                    );
                }
                if p.await_ == PublishAwait::Ack && p.qos == QoS::AtMostOnce {
                    e.at(
                        &path,
                        Some("await"),
                        "await: ack needs qos 1 or 2 (a QoS 0 message is never acknowledged)"
                            .into(),
                    );
                }
            }
            Step::Reauthenticate(r) => {
                if s.clients.get(&r.client).is_some_and(|c| c.auth.is_none()) {
                    e.at(
                        &path,
                        Some("client"),
                        format!(
                            "reauthenticate needs a client connected with enhanced \
                             authentication, and {:?} has no `auth: scram`",
                            r.client
                        ),
                    );
                }
            }
            Step::Disconnect(d) => {
                if d.with_will && version(&d.client) == Some(ProtocolVersion::V311) {
                    e.at(
                        &path,
                        Some("with_will"),
                        "with_will (reason 0x04) is MQTT 5.0 only".into(),
                    );
                }
            }
            Step::Heal(h) => {
                if h.a.is_some() != h.b.is_some() {
                    e.at(
                        &path,
                        None,
                        "heal takes both `a` and `b`, or neither (heal everything)".into(),
                    );
                }
            }
            Step::Loss(l) => {
                if !(0.0..=1.0).contains(&l.rate) {
                    e.at(
                        &path,
                        Some("rate"),
                        "rate is a fraction between 0.0 and 1.0".into(),
                    );
                }
            }
            Step::ExpectWill(w) => {
                if s.clients.get(&w.of).is_some_and(|c| c.will.is_none()) {
                    e.at(
                        &path,
                        Some(&w.of),
                        format!(
                            "expect_will: client {:?} has no will to deliver; give it one in \
                             `clients` (will: {{topic: …}})",
                            w.of
                        ),
                    );
                }
            }
            Step::Raw(r) => raw::validate_raw(s, r, &path, e),
            Step::ExpectRaw(x) => raw::validate_expect_raw(x, &path, e),
            Step::ExpectMessages(x) => {
                if x.messages.is_empty() {
                    e.at(
                        &path,
                        Some("messages"),
                        "list at least one expected message (or use expect_no_message)".into(),
                    );
                }
                for m in &x.messages {
                    if let Some(id) = &m.id {
                        let publisher = id
                            .rsplit_once('-')
                            .map(|(c, n)| (c, n.parse::<u32>().is_ok()));
                        match publisher {
                            Some((c, true)) if defined(c) => {}
                            _ => e.at(&path, Some(id), format!("{id:?} is not a message id of a defined client; ids are <client>-<n>, like pub-1")),
                        }
                    }
                    if m.count == 0 {
                        e.at(&path, Some("count"), "count must be at least 1".into());
                    }
                }
            }
            _ => {}
        }
    }
}

/// Where a client stands at one point of an explicit schedule (see [`validate_schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// No `connect` yet.
    Never,
    /// Connected (or reconnecting on its own after a fault).
    Up,
    /// `disconnect` at this step.
    Disconnected(usize),
    /// `crash_client` at this step.
    Crashed(usize),
    /// A fault at this step ended its connection, and it does not reconnect
    /// (`reconnect: false`).
    Lost(usize),
}

/// Refuses, where the schedule shows it, a step that needs a client connected (or a broker
/// up) at a point where it cannot be: `publish` on a client never connected, after its
/// `disconnect` or `crash_client`, or after a fault ended the connection of a client that does
/// not reconnect; `restart_client` without a crash; `restart_broker` without a crash. Such a
/// step would do nothing and its case pass without having tested anything.
///
/// Raw clients are not `connect`ed: their `raw` steps open a connection of their own, and a
/// connection fault (`reset`, `stall`, `kick`) on them needs that raw connection open.
fn validate_schedule(s: &Scenario, e: &mut Errors) {
    let mut life: BTreeMap<&str, Life> = s
        .clients
        .keys()
        .map(|c| (c.as_str(), Life::Never))
        .collect();
    let mut raw_open: BTreeMap<&str, bool> = BTreeMap::new();
    let mut broker_down: Option<usize> = None;
    let client_id = |c: &str| {
        s.clients
            .get(c)
            .and_then(|x| x.client_id.clone())
            .unwrap_or_else(|| c.to_string())
    };
    let reconnects = |c: &str| s.clients.get(c).is_none_or(|x| x.reconnect);
    for (i, step) in s.steps.iter().enumerate() {
        let kw = step.keyword();
        let path = [Seg::Key("steps"), Seg::Index(i), Seg::Key(kw)];
        let why_not = |life: Life, client: &str| -> String {
            match life {
                Life::Never => format!("it was never connected (add `- connect: {client}` before)"),
                Life::Up => String::new(),
                Life::Disconnected(at) => format!(
                    "it disconnected at step {} and did not connect again",
                    at + 1
                ),
                Life::Crashed(at) => format!(
                    "it crashed at step {} (crash_client); restart_client or connect it first",
                    at + 1
                ),
                Life::Lost(at) => format!(
                    "its connection ended at step {} ({}) and it does not reconnect (reconnect: false)",
                    at + 1,
                    s.steps[at].keyword()
                ),
            }
        };
        // The client must be connected (a session step).
        let need_up = |e: &mut Errors, client: &str| {
            let now = life.get(client).copied().unwrap_or(Life::Up);
            if now != Life::Up {
                e.at(
                    &path,
                    Some(client),
                    format!(
                        "step {} ({kw}) needs {client:?} connected, but {}",
                        i + 1,
                        why_not(now, client)
                    ),
                );
            }
        };
        match step {
            Step::Subscribe(x) => need_up(e, &x.client),
            Step::Unsubscribe(x) => need_up(e, &x.client),
            Step::Publish(x) => need_up(e, &x.client),
            Step::Reauthenticate(x) => {
                need_up(e, &x.client);
                // A refused re-authentication ends the connection.
                if x.wrong_password && !reconnects(&x.client) {
                    life.insert(&x.client, Life::Lost(i));
                }
            }
            Step::Disconnect(x) => {
                need_up(e, &x.client);
                life.insert(&x.client, Life::Disconnected(i));
            }
            Step::CrashClient(x) => {
                need_up(e, &x.client);
                life.insert(&x.client, Life::Crashed(i));
            }
            Step::RestartClient(x) => {
                let now = life.get(x.client.as_str()).copied().unwrap_or(Life::Never);
                if !matches!(now, Life::Crashed(_)) {
                    e.at(
                        &path,
                        Some(&x.client),
                        format!(
                            "step {} (restart_client) restarts {:?} after a crash, but it did not crash (crash_client) before; use connect",
                            i + 1,
                            x.client
                        ),
                    );
                }
                life.insert(&x.client, Life::Up);
            }
            Step::Connect(x) => {
                // A session taken over by this CONNECT (same client id) ends; one that does not
                // reconnect stays down.
                let id = client_id(&x.client);
                for (other, state) in life.iter_mut() {
                    if *other != x.client
                        && *state == Life::Up
                        && client_id(other) == id
                        && !reconnects(other)
                    {
                        *state = Life::Lost(i);
                    }
                }
                life.insert(&x.client, Life::Up);
            }
            Step::Kick(x) | Step::Reset(x) | Step::Stall(x) => {
                let raw = raw_open.get(x.client.as_str()).copied().unwrap_or(false);
                let now = life.get(x.client.as_str()).copied().unwrap_or(Life::Up);
                if now != Life::Up && !raw {
                    e.at(
                        &path,
                        Some(&x.client),
                        format!(
                            "step {} ({kw}) needs a connection of {:?} to act on, but {} (and it has no raw connection open)",
                            i + 1,
                            x.client,
                            why_not(now, &x.client)
                        ),
                    );
                }
                if !matches!(step, Step::Stall(_)) {
                    if now == Life::Up && !reconnects(&x.client) {
                        life.insert(&x.client, Life::Lost(i));
                    }
                    raw_open.insert(&x.client, false);
                }
            }
            Step::Raw(r) => {
                if r.send.is_some() || r.new_connection {
                    raw_open.insert(&r.client, true);
                }
                if r.close {
                    raw_open.insert(&r.client, false);
                }
            }
            // An expectation about a client that never connected holds or fails without the
            // broker doing anything: no will exists, no message could reach it.
            Step::ExpectMessages(x) if life.get(x.client.as_str()) == Some(&Life::Never) => {
                let text = format!(
                    "step {} (expect_messages) waits for messages to {:?}, but it was never connected (add `- connect: {}` before)",
                    i + 1,
                    x.client,
                    x.client
                );
                e.at(&path, Some(&x.client), text);
            }
            Step::ExpectNoMessage(x) if life.get(x.client.as_str()) == Some(&Life::Never) => {
                let text = format!(
                    "step {} (expect_no_message) would pass for {:?} without testing anything: it was never connected (add `- connect: {}` before)",
                    i + 1,
                    x.client,
                    x.client
                );
                e.at(&path, Some(&x.client), text);
            }
            Step::ExpectWill(x) => {
                for (role, client) in [("of", &x.of), ("to", &x.to)] {
                    if life.get(client.as_str()) == Some(&Life::Never) {
                        let text = format!(
                            "step {} (expect_will) names {client:?} ({role}), which was never connected: the expectation would be decided without the broker doing anything (add `- connect: {client}` before)",
                            i + 1
                        );
                        e.at(&path, Some(client), text);
                    }
                }
            }
            Step::ExpectSessionPresent(x) if life.get(x.client.as_str()) == Some(&Life::Never) => {
                let text = format!(
                    "step {} (expect_session_present) reads {:?}'s latest CONNACK, but it was never connected",
                    i + 1,
                    x.client
                );
                e.at(&path, Some(&x.client), text);
            }
            Step::CrashBroker(_) => {
                if let Some(at) = broker_down {
                    e.at(
                        &path,
                        None,
                        format!(
                            "step {} (crash_broker): the broker is already down since step {} (restart_broker first)",
                            i + 1,
                            at + 1
                        ),
                    );
                }
                broker_down = Some(i);
                for (client, state) in life.iter_mut() {
                    if *state == Life::Up && !reconnects(client) {
                        *state = Life::Lost(i);
                    }
                }
            }
            Step::RestartBroker(_) => {
                if broker_down.is_none() {
                    e.at(
                        &path,
                        None,
                        format!(
                            "step {} (restart_broker): the broker is up (no crash_broker before); a restart needs a crash",
                            i + 1
                        ),
                    );
                }
                broker_down = None;
            }
            _ => {}
        }
    }
}

fn validate_workload(w: &Workload, e: &mut Errors) {
    let path = |key: &'static str| [Seg::Key("workload"), Seg::Key(key)];
    if w.publishers + w.subscribers == 0 {
        e.at(
            &path("publishers"),
            None,
            "a workload needs publishers or subscribers".into(),
        );
    }
    if w.publishers > WORKLOAD_CLIENTS_MAX || w.subscribers > WORKLOAD_CLIENTS_MAX {
        e.at(
            &path("publishers"),
            None,
            format!(
                "at most {WORKLOAD_CLIENTS_MAX} publishers and {WORKLOAD_CLIENTS_MAX} subscribers"
            ),
        );
    }
    if w.topics == 0 {
        e.at(&path("topics"), None, "topics must be at least 1".into());
    }
    if w.qos.is_empty() {
        e.at(
            &path("qos"),
            None,
            "list at least one QoS level, like [0, 1, 2]".into(),
        );
    }
    if w.duration.millis == 0 {
        e.at(
            &path("duration"),
            None,
            "duration must be above zero, like 30s".into(),
        );
    }
    if !(0.0..=1.0).contains(&w.retain) {
        e.at(
            &path("retain"),
            None,
            "retain is a fraction between 0.0 and 1.0".into(),
        );
    }
    if w.hosts == 0 {
        e.at(&path("hosts"), None, "hosts must be at least 1".into());
    }
    if w.keepalive
        .whole_secs()
        .is_none_or(|s| s > u64::from(u16::MAX))
    {
        e.at(
            &path("keepalive"),
            None,
            "keepalive is whole seconds up to 65535s, like 5s".into(),
        );
    }
}

#[cfg(test)]
mod tests;
