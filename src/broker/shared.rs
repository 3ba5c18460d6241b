//! Shared subscription groups (5.0 §4.8.2): `$share/{ShareName}/{filter}`.
//!
//! A group is one (ShareName, filter) pair; its members are the sessions subscribed to exactly
//! that shared filter. The groups are indexed by their filter in a router of their own, so the
//! routing of a message matches groups the way it matches ordinary subscriptions, and a broker
//! without shared subscriptions pays one emptiness test per message for them.
//!
//! The core picks one member per matching group and message (`Groups::pick`, with the
//! strategy of `BrokerConfig::shared_subscription_strategy`). What happens to the message
//! afterwards is the member session's business, as for any other delivery: it is finished
//! with that member when it reconnects [MQTT-4.8.2-4], dropped with the session if the session
//! ends [MQTT-4.8.2-5], and dropped when the member refuses it with an error PUBACK/PUBREC
//! [MQTT-4.8.2-6]; it is never handed to another member.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::config::SharedStrategy;
use super::router::{Route, Router};
use crate::codec::TopicFilter;

/// A session's index in the core (`core::Sid`).
pub(super) type Sid = u32;

/// A group's index in `Groups::groups`.
pub(super) type Gid = u32;

struct Group {
    /// `$share/{ShareName}/{filter}`, as the members' sessions file it.
    full: TopicFilter,
    /// Members by session index (the order round-robin walks).
    members: BTreeMap<Sid, Route>,
    /// The member round-robin picked last.
    last: Option<Sid>,
}

/// Every shared subscription group. See the module documentation.
#[derive(Default)]
pub(super) struct Groups {
    router: Router<Gid>,
    groups: Vec<Option<Group>>,
    free: Vec<Gid>,
    by_key: BTreeMap<(Box<str>, Box<str>), Gid>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field("groups", &self.by_key.len())
            .finish_non_exhaustive()
    }
}

impl Groups {
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Number of (session, shared filter) subscriptions.
    pub fn len(&self) -> usize {
        self.groups.iter().flatten().map(|g| g.members.len()).sum()
    }

    /// Adds or replaces `sid`'s membership of the group (`share_name`, `filter`).
    pub fn insert(&mut self, share_name: &str, filter: &str, sid: Sid, route: Route) {
        let key: (Box<str>, Box<str>) = (share_name.into(), filter.into());
        let gid = match self.by_key.get(&key) {
            Some(&gid) => gid,
            None => {
                let full = TopicFilter::new(&format!("$share/{share_name}/{filter}"))
                    .unwrap_or_else(|_| TopicFilter::from_static("$share"));
                let group = Group {
                    full,
                    members: BTreeMap::new(),
                    last: None,
                };
                let gid = match self.free.pop() {
                    Some(gid) => {
                        self.groups[gid as usize] = Some(group);
                        gid
                    }
                    None => {
                        self.groups.push(Some(group));
                        (self.groups.len() - 1) as Gid
                    }
                };
                self.by_key.insert(key, gid);
                // The route in the router is the group's, not a member's (unused).
                self.router.insert(filter, &gid, route);
                gid
            }
        };
        if let Some(group) = self.groups[gid as usize].as_mut() {
            group.members.insert(sid, route);
        }
    }

    /// Removes `sid` from the group; the group goes with its last member. True when `sid` was
    /// a member.
    pub fn remove(&mut self, share_name: &str, filter: &str, sid: Sid) -> bool {
        let key: (Box<str>, Box<str>) = (share_name.into(), filter.into());
        let Some(&gid) = self.by_key.get(&key) else {
            return false;
        };
        let Some(group) = self.groups[gid as usize].as_mut() else {
            return false;
        };
        let was = group.members.remove(&sid).is_some();
        if group.members.is_empty() {
            self.router.remove(filter, &gid);
            self.by_key.remove(&key);
            self.groups[gid as usize] = None;
            self.free.push(gid);
        }
        was
    }

    /// Appends the groups whose filter matches `topic`, in group-index order.
    pub fn matching(&self, topic: &str, out: &mut Vec<Gid>) {
        self.router.for_each_match(topic, |&gid, _| out.push(gid));
        out.sort_unstable();
    }

    /// The members of `gid`, in session-index order.
    pub fn members(&self, gid: Gid) -> impl Iterator<Item = Sid> + '_ {
        self.groups
            .get(gid as usize)
            .and_then(Option::as_ref)
            .into_iter()
            .flat_map(|g| g.members.keys().copied())
    }

    /// The group's `$share/{ShareName}/{filter}`.
    pub fn filter_of(&self, gid: Gid) -> Option<TopicFilter> {
        Some(self.groups.get(gid as usize)?.as_ref()?.full.clone())
    }

    /// Picks the member of `gid` that gets the next message: among the members `eligible`
    /// accepts, or among all when it accepts none (see `SharedStrategy`). `draw` is a number
    /// from the broker's seeded generator (used by `Random` only); `publisher` the
    /// publishing client's id (`StickyByClient`).
    pub fn pick(
        &mut self,
        gid: Gid,
        strategy: SharedStrategy,
        draw: u64,
        publisher: &str,
        mut eligible: impl FnMut(Sid) -> bool,
    ) -> Option<(Sid, Route)> {
        let group = self.groups.get_mut(gid as usize)?.as_mut()?;
        let any_eligible = group.members.keys().any(|&sid| eligible(sid));
        let mut ok = |sid: Sid| !any_eligible || eligible(sid);
        let count = group.members.keys().filter(|&&sid| ok(sid)).count();
        if count == 0 {
            return None;
        }
        let chosen = match strategy {
            SharedStrategy::RoundRobin => {
                let after = match group.last {
                    Some(last) => Bound::Excluded(last),
                    None => Bound::Unbounded,
                };
                group
                    .members
                    .range((after, Bound::Unbounded))
                    .chain(group.members.iter())
                    .map(|(&sid, _)| sid)
                    .find(|&sid| ok(sid))?
            }
            SharedStrategy::Random => {
                let n = (draw % count as u64) as usize;
                group.members.keys().copied().filter(|&s| ok(s)).nth(n)?
            }
            SharedStrategy::StickyByClient => {
                let n = (fnv1a(publisher) % count as u64) as usize;
                group.members.keys().copied().filter(|&s| ok(s)).nth(n)?
            }
        };
        group.last = Some(chosen);
        group.members.get(&chosen).map(|route| (chosen, *route))
    }
}

/// FNV-1a: a fixed hash, so a publisher's member is the same in every run (a `HashMap`'s
/// random state would not be).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{QoS, SubscriptionOptions};

    fn route() -> Route {
        Route {
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            subscription_id: None,
        }
    }

    fn picks(g: &mut Groups, strategy: SharedStrategy, n: usize, online: &[Sid]) -> Vec<Sid> {
        let mut gids = Vec::new();
        g.matching("a/b", &mut gids);
        assert_eq!(gids.len(), 1);
        (0..n)
            .map(|i| {
                g.pick(gids[0], strategy, i as u64 * 7, "pub", |s| {
                    online.contains(&s)
                })
                .unwrap()
                .0
            })
            .collect()
    }

    #[test]
    fn round_robin_takes_online_members_in_turn() {
        let mut g = Groups::default();
        for sid in [3, 1, 2] {
            g.insert("g", "a/+", sid, route());
        }
        assert_eq!(
            picks(&mut g, SharedStrategy::RoundRobin, 6, &[1, 2, 3]),
            [1, 2, 3, 1, 2, 3]
        );
        // Member 2 offline: skipped; all offline: every member again.
        assert_eq!(
            picks(&mut g, SharedStrategy::RoundRobin, 3, &[1, 3]),
            [1, 3, 1]
        );
        assert_eq!(picks(&mut g, SharedStrategy::RoundRobin, 3, &[]), [2, 3, 1]);
    }

    #[test]
    fn sticky_keeps_a_publisher_on_one_member_and_random_spreads() {
        let mut g = Groups::default();
        for sid in 0..5 {
            g.insert("g", "a/#", sid, route());
        }
        let sticky = picks(&mut g, SharedStrategy::StickyByClient, 10, &[0, 1, 2, 3, 4]);
        assert!(sticky.iter().all(|&s| s == sticky[0]), "{sticky:?}");
        let random = picks(&mut g, SharedStrategy::Random, 10, &[0, 1, 2, 3, 4]);
        let mut distinct = random.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1, "{random:?}");
    }

    #[test]
    fn groups_are_keyed_by_share_name_and_filter_and_go_with_their_last_member() {
        let mut g = Groups::default();
        g.insert("g1", "a/b", 1, route());
        g.insert("g2", "a/b", 2, route());
        g.insert("g1", "a/+", 3, route());
        let mut gids = Vec::new();
        g.matching("a/b", &mut gids);
        assert_eq!(gids.len(), 3);
        assert_eq!(g.len(), 3);
        assert!(!g.remove("g1", "a/b", 2), "not a member of that group");
        assert!(g.remove("g1", "a/b", 1));
        gids.clear();
        g.matching("a/b", &mut gids);
        assert_eq!(gids.len(), 2);
        assert!(g.remove("g2", "a/b", 2));
        assert!(g.remove("g1", "a/+", 3));
        assert!(g.is_empty());
        gids.clear();
        g.matching("a/b", &mut gids);
        assert!(gids.is_empty());
    }
}
