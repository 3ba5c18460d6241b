//! Per-run isolation on a shared real broker: certification runs many scenarios at once
//! against one broker, each with its own short tag. A run's client ids and topics carry the
//! tag on the wire, so runs never take over each other's sessions or see each other's
//! messages; the trace keeps the scenario's own names, so the checkers are unchanged.
//!
//! - Client ids become `<tag>-<id>`; longer than 23 bytes (the length every server must accept,
//!   [MQTT-3.1.3-5]) they become `<tag>-<hash of id>`, the same for the same id, so clients that
//!   share an id in the scenario still share one on the wire.
//! - Topics and filters become `<tag>/<topic>`, except `$` topics (the broker's own namespace,
//!   [MQTT-4.7.2-1]) and filters that start with a wildcard, whose meaning a prefix would
//!   change (`#` would no longer match `$`-free topics of other levels). Deliveries to those
//!   filters may be other runs' traffic or leftovers; [`Isolation::delivered`] refuses them.
//!
//! The simulator runs without isolation (one world per run).

/// Longest client id every server must accept [MQTT-3.1.3-5].
pub const CLIENT_ID_MAX: usize = 23;

/// One run's tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    tag: String,
    /// `<tag>/`, the topic prefix.
    prefix: String,
}

impl Isolation {
    /// `tag` must be short (a few characters), `[0-9a-z]`, so prefixed ids stay valid and short.
    pub fn new(tag: &str) -> Isolation {
        Isolation {
            tag: tag.to_string(),
            prefix: format!("{tag}/"),
        }
    }

    /// Client ids only, topics as written: for a run that has the broker to itself (a
    /// scenario writing raw packets, whose topic bytes cannot be rewritten; certify runs those
    /// alone), so every delivery is the run's.
    pub fn ids_only(tag: &str) -> Isolation {
        Isolation {
            tag: tag.to_string(),
            prefix: String::new(),
        }
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The client id on the wire.
    pub fn client_id(&self, id: &str) -> String {
        let plain = format!("{}-{id}", self.tag);
        if plain.len() <= CLIENT_ID_MAX {
            return plain;
        }
        // FNV-1a: fixed, so the same id maps to the same wire id in every run and process.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let mut out = format!("{}-{hash:016x}", self.tag);
        out.truncate(CLIENT_ID_MAX);
        out
    }

    /// The topic name on the wire.
    pub fn topic(&self, topic: &str) -> String {
        if topic.starts_with('$') {
            topic.to_string()
        } else {
            format!("{}{topic}", self.prefix)
        }
    }

    /// The topic filter on the wire. A shared subscription `$share/{ShareName}/{filter}` keeps
    /// its group and gets its inner filter prefixed: the messages it must match are the
    /// run's prefixed topics.
    pub fn filter(&self, filter: &str) -> String {
        if let Some((group, inner)) = shared(filter) {
            return format!("$share/{group}/{}", self.filter(inner));
        }
        if filter.starts_with(['$', '+', '#']) {
            filter.to_string()
        } else {
            format!("{}{filter}", self.prefix)
        }
    }

    /// A filter as the scenario wrote it, from its wire form.
    pub fn unfilter(&self, wire: &str) -> String {
        if let Some((group, inner)) = shared(wire) {
            return format!("$share/{group}/{}", self.unfilter(inner));
        }
        wire.strip_prefix(&self.prefix).unwrap_or(wire).to_string()
    }

    /// The scenario's topic of a delivery, or `None` when the message is not this run's:
    /// another run's topic or any other unprefixed topic. `$` topics (the broker's, such as
    /// `$SYS`) are kept as they are.
    pub fn delivered(&self, wire_topic: &str) -> Option<String> {
        if let Some(topic) = wire_topic.strip_prefix(&self.prefix) {
            return Some(topic.to_string());
        }
        wire_topic.starts_with('$').then(|| wire_topic.to_string())
    }
}

/// `$share/{ShareName}/{filter}` as its group and inner filter.
fn shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_subscription_keeps_its_group_and_prefixes_its_filter() {
        let iso = Isolation::new("k3f9a2");
        assert_eq!(iso.filter("$share/g/r/#"), "$share/g/k3f9a2/r/#");
        assert_eq!(iso.unfilter("$share/g/k3f9a2/r/#"), "$share/g/r/#");
        assert_eq!(iso.filter("$share/g/#"), "$share/g/#");
        assert_eq!(iso.filter("$SYS/#"), "$SYS/#");
        assert_eq!(iso.delivered("k3f9a2/r/1").as_deref(), Some("r/1"));
    }

    #[test]
    fn ids_only_keeps_topics_and_every_delivery() {
        let iso = Isolation::ids_only("t1");
        assert_eq!(iso.client_id("c"), "t1-c");
        assert_eq!(iso.topic("a/b"), "a/b");
        assert_eq!(iso.filter("a/+"), "a/+");
        assert_eq!(iso.unfilter("a/+"), "a/+");
        assert_eq!(iso.delivered("x/y").as_deref(), Some("x/y"));
    }

    #[test]
    fn client_ids_are_prefixed_and_hashed_when_long() {
        let iso = Isolation::new("k3f9a2");
        assert_eq!(iso.client_id("sub"), "k3f9a2-sub");
        let long = iso.client_id("a-very-long-client-identifier");
        assert!(long.len() <= CLIENT_ID_MAX, "{long}");
        assert!(long.starts_with("k3f9a2-"));
        // Shared ids stay shared; different ids differ.
        assert_eq!(long, iso.client_id("a-very-long-client-identifier"));
        assert_ne!(long, iso.client_id("a-very-long-client-identifieR"));
        // Exactly 23 is kept as it is.
        assert_eq!(iso.client_id("0123456789abcdef").len(), 23);
        assert_eq!(iso.client_id("0123456789abcdef"), "k3f9a2-0123456789abcdef");
    }

    #[test]
    fn topics_and_filters_are_prefixed_except_dollar_and_wildcard_first() {
        let iso = Isolation::new("t1");
        assert_eq!(iso.topic("a/b"), "t1/a/b");
        assert_eq!(iso.topic("/a"), "t1//a");
        assert_eq!(iso.topic("$app/x"), "$app/x");
        assert_eq!(iso.filter("a/+"), "t1/a/+");
        assert_eq!(iso.filter("#"), "#");
        assert_eq!(iso.filter("+/broker/#"), "+/broker/#");
        assert_eq!(iso.filter("$SYS/#"), "$SYS/#");
        assert_eq!(iso.unfilter("t1/a/+"), "a/+");
        assert_eq!(iso.unfilter("#"), "#");
    }

    #[test]
    fn foreign_deliveries_are_refused_and_dollar_topics_kept() {
        let iso = Isolation::new("t1");
        assert_eq!(iso.delivered("t1/a/b").as_deref(), Some("a/b"));
        assert_eq!(iso.delivered("t2/a/b"), None);
        assert_eq!(iso.delivered("a/b"), None);
        assert_eq!(iso.delivered("t1x/a"), None);
        assert_eq!(
            iso.delivered("$SYS/broker/version").as_deref(),
            Some("$SYS/broker/version")
        );
    }
}
