//! Scenarios about authorisation: a client that connects as the ACL user (`user: acl`), and
//! topics that name what that user's ACL allows and denies (`{acl.denied_topic}`,
//! `{acl.readable_filter}`, `{acl.allowed_topic}`).
//!
//! The topics are the target's: `simqtt certify` takes them (and the user's credentials) from
//! the profile's `[acl]` table, the simulator from [`SIM_ACL`], the ACL its broker runs with for
//! such a scenario. So one file tests "a deny inside an allowed wildcard" against any broker
//! whose operator declared where that deny is. Such a scenario says `requires: [acl]`.
//!
//! ```yaml
//! requires: [acl]
//! clients:
//!   reader: {user: acl}
//!   writer: {}
//! steps:
//!   - connect: reader
//!   - subscribe: {client: reader, filter: "{acl.readable_filter}", qos: 1}
//! ```

use serde::{Deserialize, Serialize};

use super::{Capability, Errors, Scenario, Step};

/// Whose credentials a client connects with (`ClientSpec::user`); without one, the run's
/// (none in the simulator, `--username/--password` under certify).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientUser {
    /// The ACL user: the profile's `[acl]` user under certify, [`SIM_ACL`]'s in the simulator.
    Acl,
}

/// What the ACL user may and may not do, as a scenario's topics name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclTopics {
    /// A topic the user may neither publish to nor subscribe to, nor receive.
    pub denied_topic: String,
    /// A filter the user may subscribe to that covers `denied_topic`: the deny is inside an
    /// allowed wildcard.
    pub readable_filter: String,
    /// A topic the user may publish to and receive, matched by `readable_filter`.
    pub allowed_topic: String,
}

/// The ACL user of the simulator: its credentials, its topics, and the broker's ACL and
/// password for it. Other clients are anonymous and may do everything (`$` topics included).
pub struct SimAcl {
    pub username: &'static str,
    pub password: &'static str,
    pub denied_topic: &'static str,
    pub readable_filter: &'static str,
    pub allowed_topic: &'static str,
    /// The broker's ACL file (mosquitto's format).
    pub acl_file: &'static str,
}

pub const SIM_ACL: SimAcl = SimAcl {
    username: "acl-user",
    password: "acl-password",
    denied_topic: "acl/secret",
    readable_filter: "acl/#",
    allowed_topic: "acl/open",
    acl_file: "topic readwrite #\ntopic readwrite $SYS/#\n\
               user acl-user\ntopic readwrite acl/#\ntopic deny acl/secret\n",
};

impl SimAcl {
    pub fn topics(&self) -> AclTopics {
        AclTopics {
            denied_topic: self.denied_topic.into(),
            readable_filter: self.readable_filter.into(),
            allowed_topic: self.allowed_topic.into(),
        }
    }
}

/// The `AclTopics` field a placeholder stands for.
type Field = fn(&AclTopics) -> &str;

/// The placeholders a topic may hold, and the `AclTopics` field each stands for.
const PLACEHOLDERS: [(&str, Field); 3] = [
    ("{acl.denied_topic}", |t| &t.denied_topic),
    ("{acl.readable_filter}", |t| &t.readable_filter),
    ("{acl.allowed_topic}", |t| &t.allowed_topic),
];

/// Replaces every placeholder in `topic`.
fn resolve(topic: &str, topics: &AclTopics) -> String {
    let mut out = topic.to_string();
    for (name, field) in PLACEHOLDERS {
        out = out.replace(name, field(topics));
    }
    out
}

impl Scenario {
    /// Some client connects as the ACL user, or a topic names the ACL.
    pub fn uses_acl(&self) -> bool {
        self.clients
            .values()
            .any(|c| c.user == Some(ClientUser::Acl))
            || topics(self).iter().any(|t| t.contains("{acl."))
    }

    /// The scenario with its ACL placeholders replaced by the target's topics (a scenario
    /// without them comes back as it was).
    pub fn with_acl_topics(&self, acl: &AclTopics) -> Scenario {
        let mut s = self.clone();
        let fix = |t: &mut String| *t = resolve(t, acl);
        for client in s.clients.values_mut() {
            if let Some(will) = &mut client.will {
                fix(&mut will.topic);
            }
        }
        for step in &mut s.steps {
            match step {
                Step::Subscribe(sub) => {
                    sub.filter.iter_mut().for_each(fix);
                    sub.filters.iter_mut().for_each(|f| fix(&mut f.filter));
                }
                Step::Unsubscribe(u) => {
                    u.filter.iter_mut().for_each(fix);
                    u.filters.iter_mut().for_each(fix);
                }
                Step::Publish(p) => fix(&mut p.topic),
                Step::ExpectMessages(x) => x
                    .messages
                    .iter_mut()
                    .for_each(|m| m.topic.iter_mut().for_each(fix)),
                Step::ExpectNoMessage(x) => x.topic.iter_mut().for_each(fix),
                Step::ExpectRaw(x) => x.topic.iter_mut().for_each(fix),
                _ => {}
            }
        }
        s
    }
}

/// Every topic and filter the scenario writes (not raw hex).
fn topics(s: &Scenario) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for client in s.clients.values() {
        if let Some(will) = &client.will {
            out.push(&will.topic);
        }
    }
    for step in &s.steps {
        match step {
            Step::Subscribe(sub) => {
                out.extend(sub.filter.as_deref());
                out.extend(sub.filters.iter().map(|f| f.filter.as_str()));
            }
            Step::Unsubscribe(u) => {
                out.extend(u.filter.as_deref());
                out.extend(u.filters.iter().map(String::as_str));
            }
            Step::Publish(p) => out.push(&p.topic),
            Step::ExpectMessages(x) => {
                out.extend(x.messages.iter().filter_map(|m| m.topic.as_deref()))
            }
            Step::ExpectNoMessage(x) => out.extend(x.topic.as_deref()),
            Step::ExpectRaw(x) => out.extend(x.topic.as_deref()),
            _ => {}
        }
    }
    out
}

/// A scenario that uses the ACL says `requires: [acl]`, and names only known placeholders.
pub(super) fn validate_acl(s: &Scenario, e: &mut Errors<'_>) {
    if s.uses_acl() && !s.requires.contains(&Capability::Acl) {
        e.at(
            &[],
            None,
            "a client with `user: acl` or a topic naming `{acl.…}` needs `requires: [acl]` \
             (certify skips the scenario for a broker whose profile declares no ACL user)"
                .into(),
        );
    }
    for topic in topics(s) {
        let mut rest = topic;
        while let Some(at) = rest.find("{acl.") {
            let tail = &rest[at..];
            let known = PLACEHOLDERS.iter().find(|(name, _)| tail.starts_with(name));
            match known {
                Some((name, _)) => rest = &tail[name.len()..],
                None => {
                    e.at(
                        &[],
                        Some(topic),
                        format!(
                            "{topic:?} names an ACL placeholder this runner does not know; \
                             expected {{acl.denied_topic}}, {{acl.readable_filter}} or \
                             {{acl.allowed_topic}}"
                        ),
                    );
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
requires: [acl]
clients:
  reader: {user: acl, clean_session: false}
  writer: {will: {topic: "{acl.denied_topic}"}}
steps:
  - connect: reader
  - subscribe: {client: reader, filter: "{acl.readable_filter}", qos: 1}
  - connect: writer
  - publish: {client: writer, topic: "{acl.denied_topic}", qos: 1}
  - publish: {client: writer, topic: "{acl.allowed_topic}", qos: 1}
  - expect_messages: {client: reader, within: 5s, messages: [{topic: "{acl.allowed_topic}"}]}
  - expect_no_message: {client: reader, topic: "{acl.denied_topic}", for: 2s}
"#;

    #[test]
    fn placeholders_resolve_to_the_targets_topics() {
        let s = crate::scenario::parse("t.yaml", YAML).unwrap();
        assert!(s.uses_acl());
        let resolved = s.with_acl_topics(&SIM_ACL.topics());
        let all = topics(&resolved);
        assert!(all.iter().all(|t| !t.contains('{')), "{all:?}");
        assert!(all.contains(&"acl/#") && all.contains(&"acl/secret") && all.contains(&"acl/open"));
        assert_eq!(resolved.clients["reader"].user, Some(ClientUser::Acl));
    }

    #[test]
    fn acl_scenarios_must_require_acl_and_name_known_placeholders() {
        let without = YAML.replace("requires: [acl]\n", "");
        let e = crate::scenario::parse("t.yaml", &without)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `requires: [acl]`"), "{e}");
        let unknown = YAML.replace("{acl.allowed_topic}", "{acl.allowed}");
        let e = crate::scenario::parse("t.yaml", &unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ACL placeholder"), "{e}");
        let plain = "clients:\n  c: {}\nsteps:\n  - connect: c\n";
        let s = crate::scenario::parse("t.yaml", plain).unwrap();
        assert!(!s.uses_acl());
        assert_eq!(s.with_acl_topics(&SIM_ACL.topics()), s);
    }
}
