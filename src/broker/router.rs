//! The topic router: subscriptions indexed by filter level in a trie, so matching a topic costs
//! its number of levels (times the wildcard branches), not the number of subscriptions.
//!
//! Subscribers are named by a key `C` (the broker uses its dense session index, tests use
//! client ids). Children and subscribers are kept in `BTreeMap`s, so matches come in key order
//! and the order of deliveries never depends on a hasher (determinism, DESIGN.md).

use std::collections::BTreeMap;

use crate::codec::SubscriptionOptions;

/// One subscription as the router needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<std::num::NonZeroU32>,
}

#[derive(Debug)]
struct Node<C> {
    children: BTreeMap<Box<str>, Node<C>>,
    /// Subscriptions whose filter ends at this node.
    subscribers: BTreeMap<C, Route>,
}

impl<C> Default for Node<C> {
    fn default() -> Self {
        Node {
            children: BTreeMap::new(),
            subscribers: BTreeMap::new(),
        }
    }
}

impl<C: Ord> Node<C> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }
}

/// Filter → subscribers index.
#[derive(Debug)]
pub struct Router<C> {
    root: Node<C>,
    count: usize,
}

impl<C> Default for Router<C> {
    fn default() -> Self {
        Router {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<C: Ord + Clone> Router<C> {
    pub fn new() -> Router<C> {
        Router::default()
    }

    /// Number of (client, filter) subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces the subscription of `client` to `filter`. Returns true when it is new.
    pub fn insert(&mut self, filter: &str, client: &C, route: Route) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let new = node.subscribers.insert(client.clone(), route).is_none();
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes the subscription of `client` to exactly `filter` (no wildcard interpretation
    /// [MQTT-3.10.4-1]). Returns true when it existed. Empty branches are pruned.
    pub fn remove(&mut self, filter: &str, client: &C) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_in(&mut self.root, &levels, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Calls `found(client, route)` for every subscription whose filter matches `topic`. A client
    /// with several matching filters is reported once per filter; the caller merges.
    pub fn for_each_match(&self, topic: &str, mut found: impl FnMut(&C, &Route)) {
        let levels: Vec<&str> = topic.split('/').collect();
        // [MQTT-4.7.2-1] filters starting with a wildcard never match a `$` topic.
        let dollar = topic.starts_with('$');
        match_in(&self.root, &levels, dollar, &mut found);
    }
}

fn remove_in<C: Ord>(node: &mut Node<C>, levels: &[&str], client: &C) -> bool {
    match levels.split_first() {
        None => node.subscribers.remove(client).is_some(),
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove_in(child, rest, client);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn match_in<C>(
    node: &Node<C>,
    levels: &[&str],
    skip_wildcards: bool,
    found: &mut impl FnMut(&C, &Route),
) {
    let report = |n: &Node<C>, found: &mut dyn FnMut(&C, &Route)| {
        for (client, route) in &n.subscribers {
            found(client, route);
        }
    };
    if !skip_wildcards {
        // `#` matches this level and everything below, including the parent level itself
        // ("sport/#" matches "sport").
        if let Some(hash) = node.children.get("#") {
            report(hash, found);
        }
    }
    let Some((level, rest)) = levels.split_first() else {
        report(node, found);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        match_in(child, rest, false, found);
    }
    if !skip_wildcards {
        if let Some(plus) = node.children.get("+") {
            match_in(plus, rest, false, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::codec::{matches, QoS};

    fn route(qos: QoS) -> Route {
        Route {
            options: SubscriptionOptions::qos(qos),
            subscription_id: None,
        }
    }

    fn matched(router: &Router<Arc<str>>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        router.for_each_match(topic, |c, r| {
            out.push(format!("{c}:{}", r.options.qos.as_u8()))
        });
        out.sort();
        out
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut r = Router::new();
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        r.insert("sport/#", &a, route(QoS::AtLeastOnce));
        r.insert("sport/+/player1", &b, route(QoS::ExactlyOnce));
        r.insert("#", &b, route(QoS::AtMostOnce));
        r.insert("$SYS/#", &a, route(QoS::AtMostOnce));
        assert_eq!(matched(&r, "sport"), ["a:1", "b:0"]);
        assert_eq!(matched(&r, "sport/tennis/player1"), ["a:1", "b:0", "b:2"]);
        assert_eq!(matched(&r, "$SYS/broker/uptime"), ["a:0"]);
        assert_eq!(matched(&r, "other"), ["b:0"]);
        assert!(r.remove("sport/+/player1", &b));
        assert!(!r.remove("sport/+/player1", &b));
        assert!(
            !r.remove("sport/tennis/player1", &a),
            "no wildcard interpretation"
        );
        assert_eq!(matched(&r, "sport/tennis/player1"), ["a:1", "b:0"]);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn empty_levels_are_levels() {
        let mut r = Router::new();
        let a: Arc<str> = "a".into();
        r.insert("/+", &a, route(QoS::AtMostOnce));
        r.insert("+/+", &a, route(QoS::AtLeastOnce));
        assert_eq!(matched(&r, "/finance"), ["a:0", "a:1"]);
        assert_eq!(matched(&r, "finance"), Vec::<String>::new());
    }

    /// The trie agrees with the reference matcher on every pair drawn from small alphabets.
    #[test]
    fn agrees_with_codec_matches() {
        let filters = [
            "#", "+", "a", "a/#", "a/+", "+/b", "a/b", "+/+", "/#", "/+", "$x/#", "$x/+", "+/#",
            "a/b/c", "a/+/c", "$x", "",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "/", "/a", "b", "$x", "$x/a", "a/", "", "a//c", "x/b",
        ];
        let mut r = Router::new();
        for (i, f) in filters.iter().enumerate() {
            let id: Arc<str> = format!("{i:02}").into();
            r.insert(f, &id, route(QoS::AtMostOnce));
        }
        for t in topics {
            let mut got: Vec<usize> = Vec::new();
            r.for_each_match(t, |c, _| got.push(c.parse().unwrap()));
            got.sort();
            let want: Vec<usize> = (0..filters.len())
                .filter(|&i| !filters[i].is_empty() && matches(filters[i], t))
                .collect();
            // The empty filter is never valid; the trie files it as one empty level.
            let got: Vec<usize> = got
                .into_iter()
                .filter(|&i| !filters[i].is_empty())
                .collect();
            assert_eq!(got, want, "topic {t:?}");
        }
    }
}
