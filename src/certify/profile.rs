//! What the broker under test declares it supports, and why a scenario cannot run against it.
//!
//! A profile is a small TOML file (examples for common brokers in `docs/profiles/`):
//!
//! ```toml
//! name = "mosquitto"
//! mqtt5 = true
//! persistence = true
//! max_keepalive_secs = 65535
//! [acl]
//! username = "certify"
//! password = "secret"
//! denied_topic = "private/denied"
//! allowed_topic = "private/open"   # these two: the `acl` scenarios (scenarios/README.md)
//! readable_filter = "private/#"
//! ```
//!
//! Every field has a default (a fully featured MQTT 3.1.1 + 5.0 broker without persistence),
//! so a profile only states where the broker differs. Unknown keys are refused with their place
//! in the file, so a misspelt capability does not silently turn a skip into a failure.
//!
//! A scenario the target cannot carry out is *skipped with a reason* ([`Profile::unmet`]); the
//! reason names the capability and why it is missing, so a report never hides an untested area.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::codec::{ProtocolVersion, QoS};
use crate::scenario::{Capability, FaultKind, Kind, ProtocolMix, Scenario, Step};

/// The broker under test, as its operator declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Shown in the report header.
    pub name: String,
    /// Speaks MQTT 5.0 (3.1.1 is assumed).
    pub mqtt5: bool,
    /// Sessions, queued messages and retained messages survive a restart of the broker through
    /// `--restart-cmd`.
    pub persistence: bool,
    /// Supports the QoS 2 flow (PUBREC/PUBREL/PUBCOMP).
    pub qos2: bool,
    /// Keeps retained messages (5.0 Retain Available).
    pub retain: bool,
    /// Accepts `+`/`#` filters (5.0 Wildcard Subscription Available).
    pub wildcards: bool,
    /// Publishes wills.
    pub will: bool,
    /// Serves shared subscriptions `$share/{ShareName}/{filter}` (5.0 Shared Subscription
    /// Available; false for a broker whose CONNACK says 0).
    pub shared_subscriptions: bool,
    /// The longest Keep Alive the broker accepts as asked; `None` for no limit below 65535 s.
    pub max_keepalive_secs: Option<u16>,
    /// The Topic Alias Maximum the broker announces in CONNACK (5.0; 0 for none); `None`:
    /// not declared, so scenarios that need a known one (`broker: {topic_alias_maximum}`)
    /// are skipped.
    pub topic_alias_maximum: Option<u16>,
    /// The broker's Receive Maximum (QoS 1/2 PUBLISHes it takes in flight from one client).
    pub receive_maximum: Option<u16>,
    /// The largest packet the broker accepts, in bytes; `None` for the protocol's limit.
    pub max_packet_size_bytes: Option<u32>,
    /// The highest QoS the broker grants (5.0 Maximum QoS); 0, 1 or 2.
    pub max_qos: u8,
    /// Offers 5.0 enhanced authentication with SCRAM-SHA-256 (as EMQX can), with a SCRAM
    /// credential for the `[acl]` user; false unless declared (few brokers have it).
    pub enhanced_auth: bool,
    /// A user with a topic it may not use, to test refusals with; optional.
    pub acl: Option<Acl>,
}

/// A user the broker knows and a topic the ACL denies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    pub username: String,
    pub password: String,
    /// A topic this user may neither publish to nor subscribe to, nor receive.
    pub denied_topic: String,
    /// A topic this user may publish to and receive (defaults to none: scenarios use their own
    /// topics). The `acl` scenarios need it, matched by `readable_filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_topic: Option<String>,
    /// A filter this user may subscribe to that covers `denied_topic` (the deny is inside an
    /// allowed wildcard, e.g. `topic readwrite private/#` with `topic deny private/x`). The
    /// `acl` scenarios need it. Other clients (anonymous, or `--username`) must be allowed to
    /// publish to `denied_topic` and `allowed_topic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readable_filter: Option<String>,
}

impl Acl {
    /// The topics the `acl` scenarios name, when the profile declares them all.
    pub fn topics(&self) -> Option<crate::scenario::AclTopics> {
        Some(crate::scenario::AclTopics {
            denied_topic: self.denied_topic.clone(),
            readable_filter: self.readable_filter.clone()?,
            allowed_topic: self.allowed_topic.clone()?,
        })
    }
}

impl Default for Profile {
    /// A fully featured broker that keeps nothing across a restart: the assumptions that let
    /// most of the library run while never claiming durability nobody declared.
    fn default() -> Profile {
        Profile {
            name: "default".into(),
            mqtt5: true,
            persistence: false,
            qos2: true,
            retain: true,
            wildcards: true,
            will: true,
            shared_subscriptions: true,
            max_keepalive_secs: None,
            topic_alias_maximum: None,
            receive_maximum: None,
            max_packet_size_bytes: None,
            max_qos: 2,
            enhanced_auth: false,
            acl: None,
        }
    }
}

/// The fixed header (up to 5 bytes) and a topic name of typical length: the room a PUBLISH
/// needs beyond its payload when checking a payload against `max_packet_size_bytes`.
const PUBLISH_OVERHEAD_BYTES: u32 = 5 + 2 + 64 + 2;

impl Profile {
    /// Reads a TOML profile; errors carry `file:line:col`.
    pub fn from_file(path: &Path) -> anyhow::Result<Profile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read profile {}", path.display()))?;
        Profile::from_toml(&path.display().to_string(), &text).map_err(anyhow::Error::msg)
    }

    /// Parses TOML text; `file` names it in errors, which read `file:line:col: message`.
    pub fn from_toml(file: &str, text: &str) -> Result<Profile, String> {
        let profile: Profile = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|span| line_col(text, span.start))
                .unwrap_or((1, 1));
            format!("{file}:{line}:{col}: {}", e.message())
        })?;
        if profile.max_qos > 2 {
            let (line, col) = find_key(text, "max_qos");
            return Err(format!(
                "{file}:{line}:{col}: max_qos is 0, 1 or 2, not {}",
                profile.max_qos
            ));
        }
        if let Some(0) = profile.receive_maximum {
            let (line, col) = find_key(text, "receive_maximum");
            return Err(format!(
                "{file}:{line}:{col}: receive_maximum is 1..=65535; 0 is a protocol error in MQTT 5.0"
            ));
        }
        Ok(profile)
    }

    /// The capabilities and limits, one line, for the report header.
    pub fn describe(&self) -> String {
        let mut parts = vec![self.name.clone()];
        let flag = |on: bool, name: &str| {
            if on {
                name.to_string()
            } else {
                format!("no {name}")
            }
        };
        parts.push(flag(self.mqtt5, "mqtt5"));
        parts.push(flag(self.persistence, "persistence"));
        parts.push(flag(self.qos2, "qos2"));
        parts.push(flag(self.retain, "retain"));
        parts.push(flag(self.wildcards, "wildcards"));
        parts.push(flag(self.will, "will"));
        parts.push(format!("max_qos {}", self.max_qos));
        if let Some(k) = self.max_keepalive_secs {
            parts.push(format!("max_keepalive {k}s"));
        }
        if let Some(t) = self.topic_alias_maximum {
            parts.push(format!("topic_alias_maximum {t}"));
        }
        if let Some(r) = self.receive_maximum {
            parts.push(format!("receive_maximum {r}"));
        }
        if let Some(p) = self.max_packet_size_bytes {
            parts.push(format!("max_packet_size {p} B"));
        }
        if let Some(acl) = &self.acl {
            parts.push(format!(
                "acl user {} denied {:?}",
                acl.username, acl.denied_topic
            ));
        }
        parts.join(", ")
    }

    /// Why the target cannot run this scenario, or `None` when it can. `restart_cmd`: whether
    /// the user gave `--restart-cmd`. Looks at the declared `requires:` and at what the steps,
    /// clients and workload actually use (a file that forgets to declare `qos2` but publishes at
    /// QoS 2 is still skipped with a reason rather than failed).
    pub fn unmet(&self, scenario: &Scenario, restart_cmd: bool) -> Option<String> {
        let mut reasons = Vec::new();
        for capability in needed(scenario) {
            if let Some(why) = self.lacks(capability, restart_cmd) {
                reasons.push(format!("{}: {why}", capability_name(capability)));
            }
        }
        if !scenario.broker.durable && self.persistence && restarts_broker(scenario) {
            reasons.push(format!(
                "volatile broker: the scenario expects the broker to forget its sessions on a \
                 restart (`broker: {{durable: false}}`), but profile {} keeps them",
                self.name
            ));
        }
        if !scenario.broker.transport.is_plain() {
            // Its faults are timed against the simulated broker's TLS/WebSocket handshakes (a
            // cut between SYN-ACK and ClientHello): over a real broker's transport they would
            // land elsewhere, and an expectation could fail for the timing, not the broker.
            reasons.push(format!(
                "transport: the scenario times its faults against the simulated {} handshakes \
                 (`broker: {{transport: {}}}`), for `simqtt run` only",
                scenario.broker.transport.scheme().describe(),
                scenario.broker.transport.scheme()
            ));
        }
        if let Some(wanted) = scenario.broker.max_keepalive.and_then(|d| d.whole_secs()) {
            if self.max_keepalive_secs.map(u64::from) != Some(wanted) {
                reasons.push(format!(
                    "max_keepalive: the scenario needs a broker whose longest Keep Alive is \
                     {wanted}s, and profile {} declares {}",
                    self.name,
                    self.max_keepalive_secs
                        .map_or("none".to_string(), |k| format!("max_keepalive_secs {k}"))
                ));
            }
        }
        if let Some(wanted) = scenario.broker.topic_alias_maximum {
            if self.topic_alias_maximum != Some(wanted) {
                reasons.push(format!(
                    "topic_alias_maximum: the scenario needs a broker whose Topic Alias Maximum \
                     is {wanted}, and profile {} declares {}",
                    self.name,
                    self.topic_alias_maximum
                        .map_or("none".to_string(), |k| format!("topic_alias_maximum {k}"))
                ));
            }
        }
        // (A scenario that sets `broker.max_keepalive` asks for longer ones on purpose.)
        if let Some(max) = self
            .max_keepalive_secs
            .filter(|_| scenario.broker.max_keepalive.is_none())
        {
            for (who, secs) in keepalives(scenario) {
                if secs > u64::from(max) {
                    reasons.push(format!(
                        "keepalive: {who} asks for a {secs}s keepalive, above the profile's \
                         max_keepalive_secs {max} (the broker would shorten or refuse it)"
                    ));
                }
            }
        }
        if let Some(max) = self.max_packet_size_bytes {
            let biggest = biggest_payload(scenario);
            if biggest.saturating_add(PUBLISH_OVERHEAD_BYTES) > max {
                reasons.push(format!(
                    "max_packet_size: the scenario publishes {biggest}-byte payloads, which do \
                     not fit the profile's max_packet_size_bytes {max}"
                ));
            }
        }
        if reasons.is_empty() {
            None
        } else {
            Some(reasons.join("; "))
        }
    }

    /// Why the target lacks one capability, or `None` when it has it.
    fn lacks(&self, capability: Capability, restart_cmd: bool) -> Option<String> {
        let profile = &self.name;
        match capability {
            Capability::BrokerRestart if !restart_cmd => Some(
                "no --restart-cmd was given, so the broker cannot be stopped and started".into(),
            ),
            Capability::PowerLoss => Some(
                "power loss (unsynced writes vanishing) can only be injected into the simulated \
                 broker, never into a real one from outside"
                    .into(),
            ),
            Capability::Persistence if !self.persistence => Some(format!(
                "profile {profile} says sessions, queued and retained messages do not survive a \
                 restart (persistence = false)"
            )),
            Capability::Mqtt5 if !self.mqtt5 => Some(format!(
                "profile {profile} says the broker does not speak MQTT 5.0 (mqtt5 = false)"
            )),
            Capability::Retain if !self.retain => Some(format!(
                "profile {profile} says the broker keeps no retained messages (retain = false)"
            )),
            Capability::Wildcards if !self.wildcards => Some(format!(
                "profile {profile} says the broker refuses wildcard filters (wildcards = false)"
            )),
            Capability::Will if !self.will => Some(format!(
                "profile {profile} says the broker does not publish wills (will = false)"
            )),
            Capability::SharedSubscriptions if !self.shared_subscriptions => Some(format!(
                "profile {profile} says the broker has no shared subscriptions \
                 (shared_subscriptions = false: its CONNACK says Shared Subscription Available 0)"
            )),
            Capability::Qos1 if self.max_qos < 1 => Some(format!(
                "profile {profile} says the broker grants at most QoS {} (max_qos)",
                self.max_qos
            )),
            Capability::Qos2 if !self.qos2 || self.max_qos < 2 => Some(format!(
                "profile {profile} says the broker {} (qos2 = {}, max_qos = {})",
                if self.qos2 {
                    format!("grants at most QoS {}", self.max_qos)
                } else {
                    "does not support QoS 2".to_string()
                },
                self.qos2,
                self.max_qos
            )),
            Capability::EnhancedAuth if !self.enhanced_auth => Some(format!(
                "profile {profile} does not say the broker offers SCRAM-SHA-256 enhanced \
                 authentication for its [acl] user (enhanced_auth = true)"
            )),
            Capability::Acl => match &self.acl {
                None => Some(format!(
                    "profile {profile} declares no ACL user ([acl] with username, password, \
                     denied_topic, allowed_topic and readable_filter)"
                )),
                Some(acl) if acl.topics().is_none() => Some(format!(
                    "profile {profile}'s [acl] lacks allowed_topic or readable_filter (a \
                     filter the user may subscribe to that covers denied_topic)"
                )),
                Some(_) => None,
            },
            // Kick is a session takeover (a second connection with the same client id), and
            // connection and link faults go through the fault proxy: every broker has them.
            _ => None,
        }
    }
}

/// A capability's name as scenario files write it.
pub fn capability_name(c: Capability) -> &'static str {
    match c {
        Capability::BrokerRestart => "broker_restart",
        Capability::PowerLoss => "power_loss",
        Capability::Persistence => "persistence",
        Capability::Mqtt5 => "mqtt5",
        Capability::Kick => "kick",
        Capability::Retain => "retain",
        Capability::Wildcards => "wildcards",
        Capability::Will => "will",
        Capability::Qos1 => "qos1",
        Capability::Qos2 => "qos2",
        Capability::ConnectionFaults => "connection_faults",
        Capability::LinkFaults => "link_faults",
        Capability::Acl => "acl",
        Capability::SharedSubscriptions => "shared_subscriptions",
        Capability::EnhancedAuth => "enhanced_auth",
    }
}

/// Every capability a scenario needs: its `requires:` and what its content uses.
pub fn needed(scenario: &Scenario) -> BTreeSet<Capability> {
    let mut out: BTreeSet<Capability> = scenario.requires.iter().copied().collect();
    let qos = |out: &mut BTreeSet<Capability>, q: QoS| match q {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            out.insert(Capability::Qos1);
        }
        QoS::ExactlyOnce => {
            out.insert(Capability::Qos2);
        }
    };
    for client in scenario.clients.values() {
        if client.protocol == ProtocolVersion::V5 {
            out.insert(Capability::Mqtt5);
        }
        if client.auth.is_some() {
            out.insert(Capability::EnhancedAuth);
        }
        if let Some(will) = &client.will {
            out.insert(Capability::Will);
            qos(&mut out, will.qos);
            if will.retain {
                out.insert(Capability::Retain);
            }
        }
    }
    for step in &scenario.steps {
        match step {
            Step::Subscribe(s) => {
                for f in s.all_filters() {
                    qos(&mut out, f.qos);
                    if f.filter.contains(['+', '#']) {
                        out.insert(Capability::Wildcards);
                    }
                    if f.filter.starts_with("$share/") {
                        out.insert(Capability::SharedSubscriptions);
                    }
                }
            }
            Step::Publish(p) => {
                qos(&mut out, p.qos);
                if p.retain {
                    out.insert(Capability::Retain);
                }
            }
            Step::CrashBroker(c) => {
                out.insert(Capability::BrokerRestart);
                if c.power_loss {
                    out.insert(Capability::PowerLoss);
                }
            }
            Step::RestartBroker(_) => {
                out.insert(Capability::BrokerRestart);
            }
            Step::Reauthenticate(_) => {
                out.insert(Capability::EnhancedAuth);
            }
            _ => {}
        }
    }
    if let Some(w) = &scenario.workload {
        for &q in &w.qos {
            qos(&mut out, q);
        }
        if w.protocol != ProtocolMix::V311 {
            out.insert(Capability::Mqtt5);
        }
        if w.retain > 0.0 {
            out.insert(Capability::Retain);
        }
        if w.wildcards {
            out.insert(Capability::Wildcards);
        }
        if w.wills {
            out.insert(Capability::Will);
        }
    }
    if let Some(n) = &scenario.nemesis {
        for f in &n.faults {
            match f {
                FaultKind::CrashBroker => {
                    out.insert(Capability::BrokerRestart);
                }
                FaultKind::PowerLoss => {
                    out.insert(Capability::BrokerRestart);
                    out.insert(Capability::PowerLoss);
                }
                _ => {}
            }
        }
    }
    out
}

fn restarts_broker(scenario: &Scenario) -> bool {
    needed(scenario).contains(&Capability::BrokerRestart)
}

/// (who, keepalive seconds) for every client the scenario defines or generates.
fn keepalives(scenario: &Scenario) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    match scenario.kind() {
        Kind::Explicit => {
            for (name, c) in &scenario.clients {
                if let Some(secs) = c.keepalive.whole_secs() {
                    out.push((format!("client {name}"), secs));
                }
            }
        }
        Kind::Randomised => {
            if let Some(secs) = scenario
                .workload
                .as_ref()
                .and_then(|w| w.keepalive.whole_secs())
            {
                out.push(("the workload".to_string(), secs));
            }
        }
    }
    out
}

/// The largest payload a publish step asks for (ids are short; `payload_size` pads them).
fn biggest_payload(scenario: &Scenario) -> u32 {
    scenario
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Publish(p) => p.payload_size,
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // Back off to a character boundary: a span is bytes, and slicing inside a character panics.
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or(before)
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Where a top-level key is written (for errors serde cannot place).
fn find_key(text: &str, key: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return (i + 1, line.len() - trimmed.len() + 1);
        }
    }
    (1, 1)
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(yaml: &str) -> Scenario {
        crate::scenario::parse("t.yaml", yaml).expect("test scenario parses")
    }

    fn profile(toml: &str) -> Profile {
        Profile::from_toml("p.toml", toml).expect("test profile parses")
    }

    /// An `acl` scenario runs only where the profile declares the whole [acl] table, and
    /// then with the profile's topics in place of its placeholders.
    #[test]
    fn acl_scenarios_need_the_whole_acl_table() {
        let s = scenario(
            "requires: [acl]\nclients:\n  r: {user: acl}\nsteps:\n  - connect: r\n  \
             - subscribe: {client: r, filter: \"{acl.readable_filter}\"}\n",
        );
        let none = profile("name = \"b\"\n");
        assert!(none
            .unmet(&s, false)
            .unwrap()
            .contains("declares no ACL user"));
        let partial =
            profile("[acl]\nusername = \"u\"\npassword = \"p\"\ndenied_topic = \"d/x\"\n");
        assert!(partial
            .unmet(&s, false)
            .unwrap()
            .contains("readable_filter"));
        let full = profile(
            "[acl]\nusername = \"u\"\npassword = \"p\"\ndenied_topic = \"d/x\"\n\
             allowed_topic = \"d/ok\"\nreadable_filter = \"d/#\"\n",
        );
        assert_eq!(full.unmet(&s, false), None);
        let topics = full.acl.as_ref().and_then(Acl::topics).unwrap();
        let resolved = s.with_acl_topics(&topics);
        match &resolved.steps[1] {
            Step::Subscribe(sub) => assert_eq!(sub.filter.as_deref(), Some("d/#")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_partial_files() {
        let p = profile("name = \"x\"\npersistence = true\n");
        assert_eq!(p.name, "x");
        assert!(p.persistence && p.mqtt5 && p.qos2 && p.retain && p.wildcards && p.will);
        assert_eq!(p.max_qos, 2);
        assert_eq!(profile(""), Profile::default());
        let p = profile(
            "max_keepalive_secs = 60\nreceive_maximum = 10\nmax_packet_size_bytes = 2048\n\
             [acl]\nusername = \"u\"\npassword = \"p\"\ndenied_topic = \"d/x\"\n",
        );
        assert_eq!(p.max_keepalive_secs, Some(60));
        assert_eq!(p.acl.as_ref().map(|a| a.denied_topic.as_str()), Some("d/x"));
        assert!(p.describe().contains("acl user u denied \"d/x\""));
    }

    #[test]
    fn bad_files_name_file_line_and_column() {
        let e = Profile::from_toml("p.toml", "name = \"x\"\nmqtt6 = true\n").unwrap_err();
        assert!(e.starts_with("p.toml:2:1: "), "{e}");
        assert!(e.contains("mqtt6"), "{e}");
        let e = Profile::from_toml("p.toml", "name = \"x\"\nmqtt5 = \"yes\"\n").unwrap_err();
        assert!(e.starts_with("p.toml:2:9: "), "{e}");
        let e = Profile::from_toml("p.toml", "\n\n  max_qos = 3\n").unwrap_err();
        assert!(e.starts_with("p.toml:3:3: max_qos is 0, 1 or 2"), "{e}");
        let e = Profile::from_toml("p.toml", "receive_maximum = 0\n").unwrap_err();
        assert!(e.starts_with("p.toml:1:1: receive_maximum"), "{e}");
        let e = Profile::from_toml("p.toml", "[acl]\nusername = \"u\"\n").unwrap_err();
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn positions_count_characters_and_never_split_one() {
        assert_eq!(line_col("a\nbé=", 5), (2, 3));
        // Inside the two bytes of 'é': backs off instead of panicking.
        assert_eq!(line_col("é", 1), (1, 1));
        assert_eq!(line_col("ab", 99), (1, 3));
        let e = Profile::from_toml("p.toml", "name = \"é\"\nmqtt5 = 1\n").unwrap_err();
        assert!(e.starts_with("p.toml:2:9: "), "{e}");
    }

    #[test]
    fn from_file_reads_and_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "name = \"b\"\nbogus = 1\n").expect("write");
        let e = Profile::from_file(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2:1: ", path.display())), "{e}");
        let e = Profile::from_file(&dir.path().join("missing.toml")).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read profile"));
    }

    #[test]
    fn shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/profiles");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("docs/profiles exists") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                // docs/profiles/clients: client profiles, another format (certify_client).
                continue;
            }
            let p = Profile::from_file(&path).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(
                Some(p.name.as_str()),
                path.file_stem().and_then(|s| s.to_str()),
                "profile name matches its file"
            );
            names.push(p.name);
        }
        names.sort();
        assert_eq!(
            names,
            ["aedes", "amqtt", "emqx", "mosquitto", "rumqttd", "simqtt"]
        );
        let mosquitto = Profile::from_file(&dir.join("mosquitto.toml")).expect("parses");
        assert!(mosquitto.persistence && mosquitto.mqtt5);
        let aedes = Profile::from_file(&dir.join("aedes.toml")).expect("parses");
        assert!(!aedes.mqtt5 && !aedes.persistence);
    }

    const RESTART: &str = "
requires: [broker_restart, persistence]
clients: {c: {clean_session: false}}
steps:
  - connect: c
  - crash_broker:
  - restart_broker:
";

    #[test]
    fn restart_needs_the_command_and_persistence_the_profile() {
        let s = scenario(RESTART);
        let mut p = Profile::default();
        let why = p.unmet(&s, false).expect("skipped");
        assert!(why.contains("broker_restart: no --restart-cmd"), "{why}");
        assert!(why.contains("persistence: profile default says"), "{why}");
        p.persistence = true;
        assert_eq!(p.unmet(&s, true), None);
    }

    #[test]
    fn power_loss_is_never_available() {
        let s = scenario(
            "clients: {c: {}}\nsteps:\n  - connect: c\n  - crash_broker: {power_loss: true}\n  - restart_broker:\n",
        );
        let p = Profile {
            persistence: true,
            ..Profile::default()
        };
        let why = p.unmet(&s, true).expect("skipped");
        assert!(why.starts_with("power_loss: "), "{why}");
        assert!(why.contains("never into a real one"), "{why}");
    }

    #[test]
    fn content_is_checked_not_only_requires() {
        // No `requires:` at all, but a 5.0 client, QoS 2, a retained publish, a wildcard and a
        // will: each is named.
        let s = scenario(
            "
clients:
  a: {protocol: v5, will: {topic: w, qos: 1}}
steps:
  - connect: a
  - subscribe: {client: a, filter: 'x/+', qos: 2}
  - publish: {client: a, topic: x/y, retain: true}
",
        );
        let p = Profile {
            name: "tiny".into(),
            mqtt5: false,
            qos2: false,
            retain: false,
            wildcards: false,
            will: false,
            ..Profile::default()
        };
        let why = p.unmet(&s, true).expect("skipped");
        for cap in ["mqtt5: ", "qos2: ", "retain: ", "wildcards: ", "will: "] {
            assert!(why.contains(cap), "{cap} missing from {why}");
        }
        assert!(why.contains("profile tiny says the broker does not speak MQTT 5.0"));
        assert_eq!(Profile::default().unmet(&s, false), None);
    }

    #[test]
    fn max_qos_limits_qos_capabilities() {
        let s = scenario("clients: {a: {}}\nsteps:\n  - connect: a\n  - subscribe: {client: a, filter: t, qos: 1}\n");
        let p = Profile {
            max_qos: 0,
            ..Profile::default()
        };
        assert!(p.unmet(&s, false).expect("skipped").starts_with("qos1: "));
        let p = Profile {
            max_qos: 1,
            ..Profile::default()
        };
        assert_eq!(p.unmet(&s, false), None);
    }

    #[test]
    fn faults_and_kick_are_always_available() {
        let s = scenario(
            "
requires: [kick, connection_faults, link_faults]
clients: {a: {}}
steps:
  - connect: a
  - kick: a
  - reset: a
  - partition: {a: a}
  - heal:
",
        );
        assert_eq!(Profile::default().unmet(&s, false), None);
    }

    #[test]
    fn simulated_transport_scenarios_are_skipped() {
        let s = scenario("broker: {transport: wss}\nclients: {c: {}}\nsteps:\n  - connect: c\n");
        let why = Profile::default().unmet(&s, true).expect("skipped");
        assert!(why.starts_with("transport: "), "{why}");
        assert!(why.contains("WebSocket over TLS"), "{why}");
        let plain = scenario("clients: {c: {}}\nsteps:\n  - connect: c\n");
        assert_eq!(Profile::default().unmet(&plain, true), None);
    }

    /// A SCRAM client or a re-authentication runs only where the profile says the broker
    /// offers SCRAM-SHA-256 (few brokers do: the default is to skip, with the reason).
    #[test]
    fn enhanced_auth_scenarios_are_skipped_unless_declared() {
        for yaml in [
            "clients: {c: {protocol: v5, auth: scram}}\nsteps:\n  - connect: c\n",
            "clients: {c: {protocol: v5, auth: scram}}\nsteps:\n  - connect: c\n  - reauthenticate: c\n",
        ] {
            let s = scenario(yaml);
            let why = Profile::default().unmet(&s, true).expect("skipped");
            assert!(why.starts_with("enhanced_auth: "), "{why}");
            assert!(why.contains("enhanced_auth = true"), "{why}");
            let scram = profile("enhanced_auth = true\n");
            assert_eq!(scram.unmet(&s, true), None);
        }
    }

    #[test]
    fn volatile_broker_scenarios_need_a_broker_that_forgets() {
        let s = scenario(
            "requires: [broker_restart]\nbroker: {durable: false}\nclients: {c: {}}\nsteps:\n  - connect: c\n  - crash_broker:\n  - restart_broker:\n",
        );
        let keeps = Profile {
            persistence: true,
            ..Profile::default()
        };
        let why = keeps.unmet(&s, true).expect("skipped");
        assert!(why.starts_with("volatile broker: "), "{why}");
        assert_eq!(Profile::default().unmet(&s, true), None);
    }

    #[test]
    fn limits_keepalive_and_packet_size() {
        let s = scenario(
            "clients: {a: {keepalive: 120s}}\nsteps:\n  - connect: a\n  - publish: {client: a, topic: t, payload_size: 5000}\n",
        );
        let p = Profile {
            max_keepalive_secs: Some(60),
            max_packet_size_bytes: Some(4096),
            ..Profile::default()
        };
        let why = p.unmet(&s, false).expect("skipped");
        assert!(
            why.contains("keepalive: client a asks for a 120s keepalive"),
            "{why}"
        );
        assert!(
            why.contains("max_packet_size: the scenario publishes 5000-byte payloads"),
            "{why}"
        );
        let aliases = scenario(
            "broker: {topic_alias_maximum: 10}\nclients: {a: {}}\nsteps:\n  - connect: a\n",
        );
        let why = Profile::default().unmet(&aliases, false).expect("skipped");
        assert!(why.starts_with("topic_alias_maximum: the scenario needs a broker whose Topic Alias Maximum is 10, and profile default declares none"), "{why}");
        let with_aliases = Profile {
            topic_alias_maximum: Some(10),
            ..Profile::default()
        };
        assert_eq!(with_aliases.unmet(&aliases, false), None);
        let roomy = Profile {
            max_keepalive_secs: Some(120),
            max_packet_size_bytes: Some(8192),
            ..Profile::default()
        };
        assert_eq!(roomy.unmet(&s, false), None);
        let w = scenario(
            "workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s, keepalive: 90s}\n",
        );
        assert!(p
            .unmet(&w, false)
            .expect("skipped")
            .contains("the workload asks for a 90s keepalive"));
    }

    #[test]
    fn the_library_against_a_plain_broker_skips_only_with_reasons() {
        // Every library scenario either runs against a fully featured broker without a
        // restart command, or is skipped for broker_restart / power_loss / persistence, or
        // for acl (the default profile declares no ACL user), for enhanced_auth (it does not
        // declare SCRAM-SHA-256), for max_keepalive (it declares no longest Keep Alive), for
        // topic_alias_maximum (nor a Topic Alias Maximum), or for a simulated transport.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut stack = vec![dir];
        let (mut run, mut skipped) = (0, 0);
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "yaml") {
                    continue;
                }
                let s = crate::scenario::load(&path).expect("library parses");
                match Profile::default().unmet(&s, false) {
                    None => run += 1,
                    Some(why) => {
                        skipped += 1;
                        assert!(
                            why.split("; ").all(|r| r.starts_with("broker_restart: ")
                                || r.starts_with("power_loss: ")
                                || r.starts_with("persistence: ")
                                || r.starts_with("acl: ")
                                || r.starts_with("enhanced_auth: ")
                                || r.starts_with("max_keepalive: ")
                                || r.starts_with("topic_alias_maximum: ")
                                || r.starts_with("transport: ")),
                            "{}: {why}",
                            path.display()
                        );
                    }
                }
            }
        }
        assert!(run > 50 && skipped > 5, "run {run}, skipped {skipped}");
    }
}
