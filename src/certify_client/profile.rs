//! What a client library claims (a TOML file, `--profile`), and which client-side scenarios
//! need a claim it does not make (those are skipped, with the reason).

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use crate::codec::{ProtocolVersion, QoS};
use crate::scenario::{Persistence, Scenario, Step};

/// The scenario client that is the client under test.
pub const UNDER_TEST: &str = crate::scenario::CLIENT_UNDER_TEST;

/// Who subscribes again after a reconnect that found no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resubscribe {
    /// The library itself.
    Library,
    /// The application, in the library's connected callback (Paho's `connectComplete`).
    Application,
    /// Nobody: the library offers no way to know (such scenarios are skipped).
    None,
}

/// A client library's claims. Every field defaults to what every MQTT client does (3.1.1,
/// QoS 0 and 1); a claim beyond that is opt-in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientProfile {
    /// Shown in the report header.
    pub name: String,
    /// Reconnects on its own after losing the connection.
    pub automatic_reconnect: bool,
    /// Who resubscribes after a reconnect without a session.
    pub resubscribe: Resubscribe,
    /// In-flight QoS 1/2 messages survive a restart of the client's process (file persistence).
    pub persistence: bool,
    /// What the application publishes while the client is offline is sent after it reconnects.
    pub offline_buffering: bool,
    pub qos2: bool,
    pub mqtt5: bool,
}

impl Default for ClientProfile {
    fn default() -> ClientProfile {
        ClientProfile {
            name: "default".into(),
            automatic_reconnect: false,
            resubscribe: Resubscribe::None,
            persistence: false,
            offline_buffering: false,
            qos2: false,
            mqtt5: false,
        }
    }
}

/// A claim a scenario needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Claim {
    AutomaticReconnect,
    Resubscribe,
    Persistence,
    OfflineBuffering,
    Qos2,
    Mqtt5,
}

impl Claim {
    pub fn as_str(self) -> &'static str {
        match self {
            Claim::AutomaticReconnect => "automatic_reconnect",
            Claim::Resubscribe => "resubscribe",
            Claim::Persistence => "persistence",
            Claim::OfflineBuffering => "offline_buffering",
            Claim::Qos2 => "qos2",
            Claim::Mqtt5 => "mqtt5",
        }
    }
}

impl ClientProfile {
    pub fn from_file(path: &Path) -> anyhow::Result<ClientProfile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the profile {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("in {}: {e}", path.display()))
    }

    fn claims(&self, claim: Claim) -> bool {
        match claim {
            Claim::AutomaticReconnect => self.automatic_reconnect,
            Claim::Resubscribe => self.resubscribe != Resubscribe::None,
            Claim::Persistence => self.persistence,
            Claim::OfflineBuffering => self.offline_buffering,
            Claim::Qos2 => self.qos2,
            Claim::Mqtt5 => self.mqtt5,
        }
    }

    /// Why the scenario is skipped for this client, if it is.
    pub fn unmet(&self, scenario: &Scenario) -> Option<String> {
        let missing: Vec<&str> = needed(scenario)
            .into_iter()
            .filter(|&c| !self.claims(c))
            .map(Claim::as_str)
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "the client's profile ({}) does not claim {}",
                self.name,
                missing.join(", ")
            )
        })
    }

    pub fn describe(&self) -> String {
        let mut claims: Vec<&str> = [
            Claim::AutomaticReconnect,
            Claim::Resubscribe,
            Claim::Persistence,
            Claim::OfflineBuffering,
            Claim::Qos2,
            Claim::Mqtt5,
        ]
        .into_iter()
        .filter(|&c| self.claims(c))
        .map(Claim::as_str)
        .collect();
        if claims.is_empty() {
            claims.push("no claims beyond 3.1.1 QoS 0/1");
        }
        format!("{} ({})", self.name, claims.join(", "))
    }
}

/// The claims a client-side scenario needs of the client under test (`app`).
pub fn needed(scenario: &Scenario) -> BTreeSet<Claim> {
    let mut out = BTreeSet::new();
    let Some(app) = scenario.clients.get(UNDER_TEST) else {
        return out;
    };
    if app.protocol == ProtocolVersion::V5 {
        out.insert(Claim::Mqtt5);
    }
    if app.resubscribe {
        out.insert(Claim::Resubscribe);
    }
    if app.persistence == Persistence::Disk {
        out.insert(Claim::Persistence);
    }
    let mut faulted = false;
    // The link of the client under test is cut (partition or loss, not yet healed).
    let mut cut = false;
    let app_host = app.host.clone().unwrap_or_else(|| UNDER_TEST.to_string());
    let is_app = |end: &str| end == UNDER_TEST || end == app_host;
    for step in &scenario.steps {
        let on_app = step.clients().contains(&UNDER_TEST);
        match step {
            Step::Partition(p) if is_app(&p.a) || is_app(&p.b) => cut = true,
            Step::Heal(h) => {
                let ends = [h.a.as_deref(), h.b.as_deref()];
                if ends.iter().all(Option::is_none) || ends.iter().flatten().any(|e| is_app(e)) {
                    cut = false;
                }
            }
            Step::Publish(_) if on_app && cut => {
                out.insert(Claim::OfflineBuffering);
            }
            _ => {}
        }
        match step {
            Step::Subscribe(s)
                if on_app && s.all_filters().iter().any(|f| f.qos == QoS::ExactlyOnce) =>
            {
                out.insert(Claim::Qos2);
            }
            Step::Publish(p) if on_app && p.qos == QoS::ExactlyOnce => {
                out.insert(Claim::Qos2);
            }
            Step::CrashClient(_) | Step::RestartClient(_) if on_app => {
                out.insert(Claim::Persistence);
            }
            Step::Reset(_)
            | Step::Stall(_)
            | Step::Kick(_)
            | Step::DropPacket(_)
            | Step::DuplicatePacket(_)
            | Step::Delay(_)
                if on_app =>
            {
                faulted = true;
            }
            Step::CrashBroker(_) | Step::Partition(_) | Step::Loss(_) => faulted = true,
            _ => {}
        }
    }
    if faulted && app.reconnect {
        out.insert(Claim::AutomaticReconnect);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(yaml: &str) -> Scenario {
        crate::scenario::parse("t.yaml", yaml).unwrap()
    }

    #[test]
    fn a_scenario_is_skipped_for_each_claim_it_needs_and_the_profile_lacks() {
        let s = scenario(
            "clients:\n  app: {resubscribe: true, keepalive: 2s}\n  peer: {}\nsteps:\n  - connect: app\n  - subscribe: {client: app, filter: a, qos: 2}\n  - reset: app\n",
        );
        let needs: Vec<Claim> = needed(&s).into_iter().collect();
        assert_eq!(
            needs,
            vec![Claim::AutomaticReconnect, Claim::Resubscribe, Claim::Qos2]
        );
        let none = ClientProfile::default();
        let reason = none.unmet(&s).unwrap();
        assert!(
            reason.contains("automatic_reconnect, resubscribe, qos2"),
            "{reason}"
        );
        let all = ClientProfile {
            automatic_reconnect: true,
            resubscribe: Resubscribe::Application,
            qos2: true,
            ..ClientProfile::default()
        };
        assert_eq!(all.unmet(&s), None);
    }

    #[test]
    fn publishing_while_the_link_is_cut_needs_offline_buffering() {
        let yaml = |heal_first: &str| {
            format!(
                "clients:\n  app: {{keepalive: 2s}}\nsteps:\n  - connect: app\n  - partition: {{a: app}}\n{heal_first}  - publish: {{client: app, topic: a, qos: 1}}\n"
            )
        };
        assert!(needed(&scenario(&yaml(""))).contains(&Claim::OfflineBuffering));
        assert!(!needed(&scenario(&yaml("  - heal:\n"))).contains(&Claim::OfflineBuffering));
    }

    #[test]
    fn profiles_are_read_strictly() {
        let p: ClientProfile = toml::from_str(
            "name = \"x\"\nautomatic_reconnect = true\nresubscribe = \"application\"\n",
        )
        .unwrap();
        assert_eq!(p.resubscribe, Resubscribe::Application);
        assert!(toml::from_str::<ClientProfile>("automatic_reconect = true\n").is_err());
    }
}
