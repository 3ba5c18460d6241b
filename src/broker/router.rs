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

impl<C> Drop for Node<C> {
    /// Takes the subtree apart with a heap stack: the derived drop would recurse once per
    /// level, and one filter of 60,000 empty levels overflowed the stack that way (issue 14).
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node<C>> = std::mem::take(&mut self.children).into_values().collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(std::mem::take(&mut node.children).into_values());
            // `node` drops here with no children.
        }
    }
}

impl<C: Ord> Node<C> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }
}

/// Filter → subscribers index.
///
/// Nothing here recurses over the levels of a filter or topic (insert, remove, match, drop):
/// the broker limits levels (`max_topic_levels`), but the router stays safe for any depth, so
/// a limit raised by configuration or a stored session cannot overflow the stack.
pub struct Router<C> {
    root: Node<C>,
    count: usize,
}

impl<C> std::fmt::Debug for Router<C> {
    // Not derived: a derived `Debug` would recurse once per level.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("subscriptions", &self.count)
            .finish_non_exhaustive()
    }
}

impl<C> Default for Router<C> {
    fn default() -> Self {
        Router {
            root: Node::default(),
            count: 0,
        }
    }
}

/// The first level of `rest` and what follows it (`None` after the last level); levels are
/// what `split('/')` gives, so `""` is one empty level.
fn next_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
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
        // Down to the filter's node, remembering the deepest node on the way that stays
        // (it has subscribers or another child): the branch below it is cut if it empties.
        let mut keep_depth = 0;
        let mut node = &mut self.root;
        for (depth, level) in filter.split('/').enumerate() {
            if depth > 0 && (!node.subscribers.is_empty() || node.children.len() > 1) {
                keep_depth = depth;
            }
            let Some(child) = node.children.get_mut(level) else {
                return false;
            };
            node = child;
        }
        if node.subscribers.remove(client).is_none() {
            return false;
        }
        self.count -= 1;
        if node.is_empty() {
            let mut levels = filter.split('/');
            let mut keep = &mut self.root;
            for level in levels.by_ref().take(keep_depth) {
                match keep.children.get_mut(level) {
                    Some(child) => keep = child,
                    None => return true,
                }
            }
            if let Some(level) = levels.next() {
                // Its drop takes the (possibly deep) branch apart without recursion.
                keep.children.remove(level);
            }
        }
        true
    }

    /// Calls `found(client, route)` for every subscription whose filter matches `topic`. A client
    /// with several matching filters is reported once per filter; the caller merges.
    ///
    /// A walk down the trie with a stack of the `+` branches still to visit: it allocates
    /// nothing unless `+` filters branch off the topic's path, and its depth costs heap, not
    /// call stack.
    pub fn for_each_match(&self, topic: &str, mut found: impl FnMut(&C, &Route)) {
        let report = |n: &Node<C>, found: &mut dyn FnMut(&C, &Route)| {
            for (client, route) in &n.subscribers {
                found(client, route);
            }
        };
        // [MQTT-4.7.2-1] filters starting with a wildcard never match a `$` topic: the root
        // level skips `#` and `+` then.
        let mut at: Option<(&Node<C>, Option<&str>, bool)> =
            Some((&self.root, Some(topic), topic.starts_with('$')));
        let mut branches: Vec<(&Node<C>, Option<&str>)> = Vec::new();
        while let Some((node, rest, skip_wildcards)) = at
            .take()
            .or_else(|| branches.pop().map(|(n, rest)| (n, rest, false)))
        {
            if !skip_wildcards {
                // `#` matches this level and everything below, including the parent level
                // itself ("sport/#" matches "sport").
                if let Some(hash) = node.children.get("#") {
                    report(hash, &mut found);
                }
            }
            let Some(rest) = rest else {
                report(node, &mut found);
                continue;
            };
            let (level, tail) = next_level(rest);
            if !skip_wildcards {
                if let Some(plus) = node.children.get("+") {
                    branches.push((plus, tail));
                }
            }
            if let Some(child) = node.children.get(level) {
                at = Some((child, tail, false));
            }
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

    /// Removing prunes exactly the branch that emptied, whatever else shares its path.
    #[test]
    fn remove_prunes_only_empty_branches() {
        let mut r = Router::new();
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        r.insert("x/y/z", &a, route(QoS::AtMostOnce));
        r.insert("x/y", &b, route(QoS::AtMostOnce));
        r.insert("x/w/z", &a, route(QoS::AtMostOnce));
        assert!(r.remove("x/y/z", &a));
        assert_eq!(matched(&r, "x/y"), ["b:0"]);
        assert_eq!(matched(&r, "x/w/z"), ["a:0"]);
        assert!(r.root.children["x"].children["y"].children.is_empty());
        assert!(r.remove("x/w/z", &a));
        assert!(r.remove("x/y", &b));
        assert!(r.root.children.is_empty(), "every branch pruned");
        assert!(r.is_empty());
    }

    /// Issue 14: one filter of 60,000 empty levels overflowed the stack in match, remove and
    /// drop, which recursed once per level. Run on a thread with a 256 KiB stack, where the
    /// recursive router died at a few thousand levels.
    #[test]
    fn deep_filters_and_topics_do_not_recurse() {
        const LEVELS: usize = 100_000;
        let deep = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let filter = "/".repeat(LEVELS - 1);
                let mut r = Router::new();
                let a: Arc<str> = "a".into();
                let b: Arc<str> = "b".into();
                r.insert(&filter, &a, route(QoS::AtMostOnce));
                r.insert(&format!("{filter}/+"), &b, route(QoS::AtMostOnce));
                r.insert("+/#", &b, route(QoS::AtLeastOnce));
                let mut plus = "+/".repeat(LEVELS - 1);
                plus.push('#');
                r.insert(&plus, &a, route(QoS::ExactlyOnce));
                assert_eq!(matched(&r, &filter), ["a:0", "a:2", "b:1"]);
                assert_eq!(matched(&r, &format!("{filter}/x")), ["a:2", "b:0", "b:1"]);
                assert!(r.remove(&filter, &a));
                assert_eq!(matched(&r, &filter), ["a:2", "b:1"]);
                assert!(!r.remove(&filter, &a));
                drop(r);
                // A deep branch dropped as a whole (not through `remove`).
                let mut r = Router::new();
                r.insert(&filter, &a, route(QoS::AtMostOnce));
                drop(r);
            })
            .unwrap();
        deep.join().expect("the deep router overflowed its stack");
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
