//! 5.0 topic aliases of one connection, both ways (§3.3.2.3.4).
//!
//! Inbound: the client sets `alias → topic` with a PUBLISH carrying both, and later PUBLISHes
//! may carry the alias alone; the broker accepts aliases 1..=`topic_alias_maximum`, the value
//! it announced in CONNACK [MQTT-3.3.2-12].
//!
//! Outbound (`BrokerConfig::topic_alias_maximum_outbound`): a topic of `MIN_TOPIC_BYTES` or
//! more gets an alias the first time a QoS 1/2 PUBLISH carries it; later PUBLISHes of any QoS
//! on it carry the alias alone. QoS 0 never sets one up: the broker may drop a QoS 0 PUBLISH
//! between the core and the socket (a full outgoing queue), and a dropped first PUBLISH would
//! leave the client an alias it never learnt; a QoS 1/2 PUBLISH is never dropped there without
//! the connection closing. When all aliases are taken the least recently used one moves to
//! the new topic. Aliases never exceed the client's Topic Alias Maximum [MQTT-3.1.2-26]
//! [MQTT-3.3.2-11], and a client that announced none gets none [MQTT-3.1.2-27].
//!
//! Both maps belong to the connection and end with it [MQTT-3.3.2-7]; the core keeps them
//! boxed and only once a connection uses an alias (memory per idle connection).

use std::collections::BTreeMap;
use std::num::NonZeroU16;

use crate::codec::TopicName;

/// Outbound aliases are given only to topics at least this long: the alias property takes 3
/// bytes, so on a shorter topic it would save nothing.
pub(super) const MIN_TOPIC_BYTES: usize = 4;

/// How an outgoing PUBLISH uses an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outbound {
    /// Send the topic and no alias.
    None,
    /// Send the topic with this alias (sets up or moves the mapping).
    Set(NonZeroU16),
    /// Send an empty topic with this alias (the mapping is known to the client).
    Use(NonZeroU16),
}

/// Why an inbound alias is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InboundError {
    /// Above the maximum the broker announced.
    AboveMaximum,
    /// An empty topic with an alias this connection never set.
    Unknown,
}

#[derive(Debug, Default)]
pub(super) struct TopicAliases {
    /// Inbound: what the client set.
    inbound: BTreeMap<u16, TopicName>,
    /// Outbound: topic → (alias, stamp of its last use).
    outbound: BTreeMap<TopicName, (NonZeroU16, u64)>,
    /// Outbound, by last use: stamp → topic (the first entry is the least recently used).
    by_use: BTreeMap<u64, TopicName>,
    /// Counts outbound uses (the stamps).
    uses: u64,
    /// Outbound aliases handed out so far are 1..=`fresh`, less `freed`.
    fresh: u16,
    freed: Vec<NonZeroU16>,
}

impl TopicAliases {
    /// The topic of an inbound PUBLISH with `topic` and `alias`, recording a new mapping when
    /// it carries both; `maximum` is what the broker announced.
    pub(super) fn inbound(
        &mut self,
        topic: &TopicName,
        alias: NonZeroU16,
        maximum: u16,
    ) -> Result<TopicName, InboundError> {
        if alias.get() > maximum {
            return Err(InboundError::AboveMaximum);
        }
        if topic.is_empty() {
            return self
                .inbound
                .get(&alias.get())
                .cloned()
                .ok_or(InboundError::Unknown);
        }
        self.inbound.insert(alias.get(), topic.clone());
        Ok(topic.clone())
    }

    /// The topic an inbound alias stands for now, if set.
    pub(super) fn inbound_topic(&self, alias: NonZeroU16) -> Option<&TopicName> {
        self.inbound.get(&alias.get())
    }

    /// How an outgoing PUBLISH on `topic` at QoS > 0 (`reliable`) uses an alias, given the
    /// most aliases the client may get (`maximum`, already capped by the client's own).
    pub(super) fn outbound(&mut self, topic: &TopicName, reliable: bool, maximum: u16) -> Outbound {
        self.uses += 1;
        let stamp = self.uses;
        if let Some((alias, last)) = self.outbound.get_mut(topic) {
            let alias = *alias;
            self.by_use.remove(last);
            *last = stamp;
            self.by_use.insert(stamp, topic.clone());
            return Outbound::Use(alias);
        }
        if !reliable || maximum == 0 || topic.len() < MIN_TOPIC_BYTES {
            return Outbound::None;
        }
        let alias = if let Some(alias) = self.freed.pop() {
            Some(alias)
        } else if self.fresh < maximum {
            self.fresh += 1;
            NonZeroU16::new(self.fresh)
        } else {
            // Every alias is taken: the least recently used moves to this topic.
            let (_, old) = self.by_use.pop_first().expect("maximum > 0 aliases in use");
            self.outbound.remove(&old).map(|(alias, _)| alias)
        };
        let Some(alias) = alias else {
            return Outbound::None;
        };
        self.outbound.insert(topic.clone(), (alias, stamp));
        self.by_use.insert(stamp, topic.clone());
        Outbound::Set(alias)
    }

    /// Undoes the last `outbound` that returned `Set` (the packet was not sent after all).
    pub(super) fn forget_outbound(&mut self, topic: &TopicName) {
        if let Some((alias, stamp)) = self.outbound.remove(topic) {
            self.by_use.remove(&stamp);
            self.freed.push(alias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    fn a(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    #[test]
    fn inbound_sets_then_resolves_and_refuses_unknown_or_too_high() {
        let mut m = TopicAliases::default();
        assert_eq!(m.inbound(&t(""), a(1), 10), Err(InboundError::Unknown));
        assert_eq!(m.inbound(&t("a/b"), a(1), 10), Ok(t("a/b")));
        assert_eq!(m.inbound(&t(""), a(1), 10), Ok(t("a/b")));
        // A new topic on the same alias replaces the mapping.
        assert_eq!(m.inbound(&t("c"), a(1), 10), Ok(t("c")));
        assert_eq!(m.inbound(&t(""), a(1), 10), Ok(t("c")));
        assert_eq!(m.inbound(&t("x"), a(10), 10), Ok(t("x")));
        assert_eq!(
            m.inbound(&t("x"), a(11), 10),
            Err(InboundError::AboveMaximum)
        );
        assert_eq!(m.inbound(&t("x"), a(1), 0), Err(InboundError::AboveMaximum));
    }

    #[test]
    fn outbound_sets_on_reliable_uses_on_any_and_replaces_least_recently_used() {
        let mut m = TopicAliases::default();
        // QoS 0 never sets one up; short topics never get one.
        assert_eq!(m.outbound(&t("long/1"), false, 2), Outbound::None);
        assert_eq!(m.outbound(&t("abc"), true, 2), Outbound::None);
        assert_eq!(m.outbound(&t("long/1"), true, 2), Outbound::Set(a(1)));
        assert_eq!(m.outbound(&t("long/1"), false, 2), Outbound::Use(a(1)));
        assert_eq!(m.outbound(&t("long/2"), true, 2), Outbound::Set(a(2)));
        assert_eq!(m.outbound(&t("long/1"), true, 2), Outbound::Use(a(1)));
        // Full: long/2 is the least recently used, so long/3 takes its alias.
        assert_eq!(m.outbound(&t("long/3"), true, 2), Outbound::Set(a(2)));
        assert_eq!(m.outbound(&t("long/2"), false, 2), Outbound::None);
        assert_eq!(m.outbound(&t("long/3"), false, 2), Outbound::Use(a(2)));
        // No alias beyond the maximum, however many topics.
        for i in 0..20 {
            match m.outbound(&t(&format!("more/{i}")), true, 2) {
                Outbound::Set(x) | Outbound::Use(x) => assert!(x.get() <= 2),
                Outbound::None => panic!("a reliable long topic gets an alias"),
            }
        }
        assert_eq!(m.outbound(&t("long/9"), true, 0), Outbound::None);
    }

    #[test]
    fn forgetting_a_set_alias_frees_it() {
        let mut m = TopicAliases::default();
        assert_eq!(m.outbound(&t("long/1"), true, 1), Outbound::Set(a(1)));
        m.forget_outbound(&t("long/1"));
        assert_eq!(m.outbound(&t("long/1"), false, 1), Outbound::None);
        assert_eq!(m.outbound(&t("long/2"), true, 1), Outbound::Set(a(1)));
        // A freed alias below one in use is handed out again, never one in use.
        let mut m = TopicAliases::default();
        assert_eq!(m.outbound(&t("long/1"), true, 3), Outbound::Set(a(1)));
        assert_eq!(m.outbound(&t("long/2"), true, 3), Outbound::Set(a(2)));
        m.forget_outbound(&t("long/1"));
        assert_eq!(m.outbound(&t("long/3"), true, 3), Outbound::Set(a(1)));
        assert_eq!(m.outbound(&t("long/4"), true, 3), Outbound::Set(a(3)));
        assert_eq!(m.outbound(&t("long/2"), false, 3), Outbound::Use(a(2)));
    }
}
