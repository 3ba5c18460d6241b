//! Delta debugging over an explicit scenario. A candidate is kept when it still parses as a
//! scenario (so the shrinker never writes a file `simqtt run` refuses, whatever validation
//! says today), acts only on clients running at that point of its schedule, gives keepalive no
//! less time than the input to catch a connection a fault left half open (see
//! [`quiet_shortfall`]), and still fails with the target ([`super::reproduces`]).
//!
//! First, once: cut the tail (the shortest prefix of the steps that still fails, by binary
//! search), then the head (the longest run of steps after the setup that can go, replaced by
//! one wait as long as its waits so what follows keeps its times). Then these passes, repeated
//! until a round changes nothing (or the run budget is spent):
//! 1. turn faults that act by chance into faults that act for sure (a `loss` into a
//!    `partition` of the link), then remove whole clients with every step that names them;
//! 2. remove groups of steps of one kind (every publish of a client, every publish, every
//!    step of one fault kind);
//! 3. remove chunks of steps, halving the chunk down to single steps (ddmin's complement
//!    removal);
//! 4. replace an action kept only for the time it takes by a `wait`;
//! 5. merge runs of identical one-message `publish` steps into one with a `count`, then lower
//!    counts;
//! 6. shorten waits (binary search down to the tick), the fault windows among them, and round
//!    them to readable values;
//! 7. simplify clients (drop options back to their defaults: will, persistence,
//!    resubscription, session kind, protocol, keepalive) and their subscriptions;
//! 8. shorten the quiet period;
//! 9. name hosts after their only client.
//!
//! A result still longer than 8 steps goes through the rounds again with every candidate also
//! tried under the next three seeds (pinning the one that fails): a failure that hangs on the
//! seed's draws (which segment a `loss` drops, a latency) may need another seed once the steps
//! that consumed those draws are gone.
//!
//! Candidates of one pass that do not depend on each other are run `jobs` at a time; the
//! first one in the pass's order that still fails is kept, exactly as a sequential search
//! would, so the result does not depend on `jobs`.

use std::collections::BTreeMap;

use super::{reproduces, Options, Oracle, Target};
use crate::scenario::{ClientSpec, Dur, Persistence, Scenario, Step};

/// Waits are shortened down to this granularity (the simulation tick).
const WAIT_GRAIN_MS: u64 = 5;
/// Which steps a group removal takes out.
type StepGroup = Box<dyn Fn(&Step) -> bool>;

/// A result longer than this gets a second phase whose candidates may also take one of the
/// next seeds (`RESEED_SEEDS` in all), when the seed's draws are what the failure hangs on.
const RESEED_ABOVE_STEPS: usize = 8;
const RESEED_SEEDS: u64 = 4;
/// Waits tried in place of an action (`actions_to_waits`).
const ACTION_WAITS_MS: [u64; 4] = [100, 1000, 5000, 30_000];
/// Readable values a wait is rounded up to when that still fails.
const ROUNDINGS_MS: [u64; 4] = [1000, 500, 100, 50];

pub struct Search<'a> {
    oracle: &'a dyn Oracle,
    seed: u64,
    target: Target,
    jobs: usize,
    max_runs: usize,
    runs: usize,
    /// Candidates already judged, by their YAML.
    memo: BTreeMap<String, bool>,
    /// Seeds each candidate is tried with (its pinned one and the next ones); more than one
    /// only in the second phase of `reduce`.
    reseed: u64,
    /// Refuse candidates whose steps act on clients not running then ([`schedule_ok`]); off
    /// for an input that does so itself.
    check_schedule: bool,
    /// The most a candidate's quiet period may fall short ([`quiet_shortfall`]): the input's.
    shortfall: u64,
}

impl<'a> Search<'a> {
    pub fn new(oracle: &'a dyn Oracle, seed: u64, target: Target, options: &Options) -> Search<'a> {
        Search {
            oracle,
            seed,
            target,
            jobs: options.jobs.max(1),
            max_runs: options.max_runs,
            runs: 0,
            memo: BTreeMap::new(),
            reseed: 1,
            check_schedule: true,
            shortfall: 0,
        }
    }

    /// Takes the checks' measure from the input: the schedule check only if `input` passes
    /// it, and no candidate's quiet period shorter for its keepalive than the input's.
    pub fn check_like(&mut self, input: &Scenario) {
        self.check_schedule = schedule_ok(input);
        self.shortfall = quiet_shortfall(input);
    }

    /// Candidate runs so far.
    pub fn runs(&self) -> usize {
        self.runs
    }

    fn budget_left(&self) -> bool {
        self.runs < self.max_runs
    }

    /// Whether `s` still fails with the target (run once with its pinned seed; remembered).
    pub fn interesting(&mut self, s: &Scenario) -> bool {
        let reseed = std::mem::replace(&mut self.reseed, 1);
        let found = self.first_interesting(std::slice::from_ref(s)).is_some();
        self.reseed = reseed;
        found
    }

    /// `c` as it still fails: itself, or (when reseeding) itself pinned to a nearby seed.
    fn accept(&mut self, c: &Scenario) -> Option<Scenario> {
        self.first_interesting(std::slice::from_ref(c))
            .map(|(_, s)| s)
    }

    /// The first candidate (in order) that still fails, with its index: each candidate is
    /// tried with its pinned seed and, when reseeding, the next `reseed - 1` seeds; they run
    /// `jobs` at a time, stopping at the first batch that has one.
    fn first_interesting(&mut self, candidates: &[Scenario]) -> Option<(usize, Scenario)> {
        let expanded: Vec<(usize, Scenario)> = candidates
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                let base = c.seed.unwrap_or(self.seed);
                (0..self.reseed).map(move |j| {
                    let mut c = c.clone();
                    if j > 0 {
                        c.seed = Some(base.wrapping_add(j));
                    }
                    (i, c)
                })
            })
            .collect();
        let scenarios: Vec<Scenario> = expanded.iter().map(|(_, c)| c.clone()).collect();
        let k = self.first_in(&scenarios)?;
        expanded.into_iter().nth(k)
    }

    /// The index of the first scenario (in order) that still fails.
    fn first_in(&mut self, candidates: &[Scenario]) -> Option<usize> {
        let mut start = 0;
        while start < candidates.len() {
            // Judge what is known or invalid without running; collect what must run.
            let mut batch: Vec<(usize, String)> = Vec::new();
            let mut index = start;
            while index < candidates.len() && batch.len() < self.jobs {
                let Some(text) =
                    valid_text(&candidates[index], self.check_schedule, self.shortfall)
                else {
                    index += 1;
                    continue;
                };
                match self.memo.get(&text) {
                    Some(true) if batch.is_empty() => return Some(index),
                    Some(true) => break,
                    Some(false) => {}
                    None => {
                        if !self.budget_left() {
                            break;
                        }
                        self.runs += 1;
                        batch.push((index, text));
                    }
                }
                index += 1;
            }
            if batch.is_empty() {
                if index >= candidates.len() || !self.budget_left() {
                    return None;
                }
                // A remembered success ended the batch.
                start = index;
                continue;
            }
            let results = self.run_batch(candidates, &batch);
            for ((_, text), ok) in batch.iter().zip(&results) {
                self.memo.insert(text.clone(), *ok);
            }
            if let Some(k) = results.iter().position(|ok| *ok) {
                return Some(batch[k].0);
            }
            start = index;
        }
        None
    }

    fn run_batch(&self, candidates: &[Scenario], batch: &[(usize, String)]) -> Vec<bool> {
        let judge = |i: usize| {
            // A candidate runs with its pinned seed (the file will), else the input's.
            let seed = candidates[i].seed.unwrap_or(self.seed);
            let failures = self.oracle.failures(&candidates[i], seed);
            reproduces(&failures, &self.target)
        };
        if batch.len() == 1 {
            return vec![judge(batch[0].0)];
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(i, _)| {
                    let i = *i;
                    let judge = &judge;
                    scope.spawn(move || judge(i))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    /// Reduces a failing explicit scenario as far as the passes and the budget go.
    pub fn reduce(&mut self, s: Scenario) -> Scenario {
        let s = self.cut_tail(s);
        let s = self.cut_head(s);
        let s = self.rounds(s);
        if s.steps.len() <= RESEED_ABOVE_STEPS {
            return s;
        }
        // A failure that hangs on the seed's draws (a lost segment, a latency) may need
        // another seed once steps that consumed those draws are gone.
        self.reseed = RESEED_SEEDS;
        let s = self.rounds(s);
        self.reseed = 1;
        s
    }

    fn rounds(&mut self, mut s: Scenario) -> Scenario {
        for _round in 0..4 {
            let before = valid_text(&s, false, u64::MAX);
            s = self.simplify_faults(s);
            s = self.remove_clients(s);
            s = self.remove_groups(s);
            s = self.remove_chunks(s);
            s = self.actions_to_waits(s);
            s = self.merge_publishes(s);
            s = self.lower_counts(s);
            s = self.shorten_waits(s);
            s = self.simplify_clients(s);
            s = self.shorten_quiesce(s);
            s = self.name_hosts(s);
            if valid_text(&s, false, u64::MAX) == before || !self.budget_left() {
                break;
            }
        }
        s
    }

    /// The shortest prefix that still fails (binary search; the rest is the quiet period's).
    fn cut_tail(&mut self, s: Scenario) -> Scenario {
        let prefix = |n: usize| {
            let mut c = s.clone();
            c.steps.truncate(n);
            c
        };
        let (mut lo, mut hi) = (0usize, s.steps.len());
        while hi - lo > 1 && self.budget_left() {
            let mid = lo + (hi - lo) / 2;
            if self.interesting(&prefix(mid)) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        prefix(hi)
    }

    /// The longest run of steps after the setup (the first steps that only connect and
    /// subscribe) that can go, replaced by one wait as long as its waits, so the steps after it
    /// keep their times (binary search).
    fn cut_head(&mut self, s: Scenario) -> Scenario {
        let setup = s
            .steps
            .iter()
            .take_while(|x| matches!(x, Step::Connect(_) | Step::Subscribe(_)))
            .count();
        let without = |k: usize| {
            let mut c = s.clone();
            let waited: u64 = c.steps[setup..k]
                .iter()
                .map(|x| match x {
                    Step::Wait(d) => d.millis,
                    _ => 0,
                })
                .sum();
            let wait = (waited > 0).then(|| Step::Wait(Dur::from_millis(waited)));
            c.steps.splice(setup..k, wait);
            c
        };
        // `lo` steps can go (none, to start with); `hi` cannot.
        let (mut lo, mut hi) = (setup, s.steps.len());
        while hi - lo > 1 && self.budget_left() {
            let mid = lo + (hi - lo) / 2;
            if self.interesting(&without(mid)) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if lo > setup {
            without(lo)
        } else {
            s
        }
    }

    /// Removes groups of steps of one kind at once: every publish of one client, every
    /// publish, every step of one fault kind.
    fn remove_groups(&mut self, mut s: Scenario) -> Scenario {
        loop {
            let mut groups: Vec<StepGroup> = Vec::new();
            groups.push(Box::new(|x: &Step| matches!(x, Step::Publish(_))));
            for name in s.clients.keys() {
                let name = name.clone();
                groups.push(Box::new(
                    move |x: &Step| matches!(x, Step::Publish(p) if p.client == name),
                ));
            }
            let mut kinds: Vec<&'static str> = s
                .steps
                .iter()
                .filter(|x| !matches!(x, Step::Wait(_) | Step::Publish(_)))
                .map(Step::keyword)
                .collect();
            kinds.sort_unstable();
            kinds.dedup();
            for kind in kinds {
                groups.push(Box::new(move |x: &Step| x.keyword() == kind));
            }
            let candidates: Vec<Scenario> = groups
                .iter()
                .map(|group| {
                    let mut c = s.clone();
                    c.steps.retain(|x| !group(x));
                    c
                })
                .filter(|c| c.steps.len() < s.steps.len())
                .collect();
            match self.first_interesting(&candidates) {
                Some((_, c)) => s = c,
                None => return s,
            }
        }
    }

    /// Faults that act by chance become faults that act for sure, when that still fails: a
    /// `loss` (which stalls a stream when the seed's draw drops one of its segments) becomes a
    /// `partition` of the same link.
    fn simplify_faults(&mut self, mut s: Scenario) -> Scenario {
        let mut i = 0;
        while i < s.steps.len() && self.budget_left() {
            if let Step::Loss(l) = &s.steps[i] {
                if l.rate > 0.0 {
                    let mut c = s.clone();
                    c.steps[i] = Step::Partition(crate::scenario::PartitionStep {
                        a: l.a.clone(),
                        b: l.b.clone(),
                        one_way: false,
                    });
                    if let Some(c) = self.accept(&c) {
                        s = c;
                    }
                }
            }
            i += 1;
        }
        s
    }

    /// Removes each client (in name order) with every step that names it or its own host.
    fn remove_clients(&mut self, mut s: Scenario) -> Scenario {
        let mut i = 0;
        loop {
            let names: Vec<String> = s.clients.keys().cloned().collect();
            if i >= names.len() || names.len() <= 1 {
                return s;
            }
            let candidates: Vec<Scenario> = names[i..]
                .iter()
                .map(|name| without_client(&s, name))
                .collect();
            match self.first_interesting(&candidates) {
                Some((k, c)) => {
                    s = c;
                    i += k;
                }
                None => return s,
            }
        }
    }

    /// ddmin's complement removal: chunks of n/2, n/4, … 1 steps.
    fn remove_chunks(&mut self, mut s: Scenario) -> Scenario {
        let mut chunk = (s.steps.len() / 2).max(1);
        loop {
            let mut changed = false;
            let mut start = 0;
            while start < s.steps.len() && self.budget_left() {
                let candidates: Vec<Scenario> = (start..s.steps.len())
                    .step_by(chunk)
                    .map(|from| {
                        let mut c = s.clone();
                        let to = (from + chunk).min(c.steps.len());
                        c.steps.drain(from..to);
                        c
                    })
                    .collect();
                match self.first_interesting(&candidates) {
                    Some((k, c)) => {
                        start += k * chunk;
                        s = c;
                        changed = true;
                    }
                    None => break,
                }
            }
            if !self.budget_left() {
                return s;
            }
            if chunk == 1 {
                if !changed {
                    return s;
                }
            } else {
                chunk = (chunk / 2).max(1);
            }
        }
    }

    /// An action kept only for the time it takes becomes a plain wait (tried at a few lengths;
    /// `shorten_waits` then finds the shortest).
    fn actions_to_waits(&mut self, mut s: Scenario) -> Scenario {
        let mut i = 0;
        while i < s.steps.len() && self.budget_left() {
            if matches!(s.steps[i], Step::Wait(_)) {
                i += 1;
                continue;
            }
            let candidates: Vec<Scenario> = ACTION_WAITS_MS
                .iter()
                .map(|&ms| {
                    let mut c = s.clone();
                    c.steps[i] = Step::Wait(Dur::from_millis(ms));
                    c
                })
                .collect();
            if let Some((_, c)) = self.first_interesting(&candidates) {
                s = c;
            }
            i += 1;
        }
        s
    }

    /// Runs of identical one-message publishes (nothing between them) become one step with a
    /// count, when that still fails.
    fn merge_publishes(&mut self, mut s: Scenario) -> Scenario {
        let mut i = 0;
        while i < s.steps.len() && self.budget_left() {
            let Step::Publish(first) = &s.steps[i] else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            let mut count = first.count;
            while let Some(Step::Publish(p)) = s.steps.get(j) {
                let same = p.client == first.client
                    && p.topic == first.topic
                    && p.qos == first.qos
                    && p.retain == first.retain
                    && p.rate.is_none()
                    && first.rate.is_none()
                    && p.payload_size == first.payload_size
                    && p.empty == first.empty;
                if !same {
                    break;
                }
                count += p.count;
                j += 1;
            }
            if j > i + 1 {
                let mut c = s.clone();
                let mut merged = first.clone();
                merged.count = count;
                c.steps.splice(i..j, [Step::Publish(merged)]);
                if let Some(c) = self.accept(&c) {
                    s = c;
                }
            }
            i += 1;
        }
        s
    }

    /// Lowers each publish step's count (binary search down to 1).
    fn lower_counts(&mut self, mut s: Scenario) -> Scenario {
        for i in 0..s.steps.len() {
            let Step::Publish(p) = &s.steps[i] else {
                continue;
            };
            let (mut lo, mut hi) = (0u32, p.count);
            while hi - lo > 1 && self.budget_left() {
                let mid = lo + (hi - lo) / 2;
                let mut c = s.clone();
                if let Step::Publish(p) = &mut c.steps[i] {
                    p.count = mid;
                }
                if let Some(c) = self.accept(&c) {
                    hi = mid;
                    s = c;
                } else {
                    lo = mid;
                }
            }
        }
        s
    }

    /// Shortens every wait: merged with a neighbouring wait, then the shortest that still
    /// fails (binary search to the tick), then rounded up to a readable value.
    fn shorten_waits(&mut self, mut s: Scenario) -> Scenario {
        // Adjacent waits are one wait.
        let mut i = 0;
        while i + 1 < s.steps.len() && self.budget_left() {
            if let (Step::Wait(a), Step::Wait(b)) = (&s.steps[i], &s.steps[i + 1]) {
                let mut c = s.clone();
                c.steps.splice(
                    i..i + 2,
                    [Step::Wait(Dur::from_millis(a.millis + b.millis))],
                );
                if let Some(c) = self.accept(&c) {
                    s = c;
                    continue;
                }
            }
            i += 1;
        }
        for i in 0..s.steps.len() {
            let Step::Wait(d) = s.steps[i] else {
                continue;
            };
            let with = |s: &Scenario, ms: u64| {
                let mut c = s.clone();
                c.steps[i] = Step::Wait(Dur::from_millis(ms));
                c
            };
            let (mut lo, mut hi) = (0u64, d.millis / WAIT_GRAIN_MS);
            while hi - lo > 1 && self.budget_left() {
                let mid = lo + (hi - lo) / 2;
                let c = with(&s, mid * WAIT_GRAIN_MS);
                if let Some(c) = self.accept(&c) {
                    hi = mid;
                    s = c;
                } else {
                    lo = mid;
                }
            }
            let Step::Wait(now) = s.steps[i] else {
                continue;
            };
            // A readable value at most a little above (never below) what was found.
            for grain in ROUNDINGS_MS {
                let rounded = now.millis.div_ceil(grain) * grain;
                if rounded == now.millis {
                    break;
                }
                if rounded > now.millis + now.millis / 4 + 50 || !self.budget_left() {
                    continue;
                }
                let c = with(&s, rounded);
                if let Some(c) = self.accept(&c) {
                    s = c;
                    break;
                }
            }
        }
        s
    }

    /// Puts client options back to their defaults where the failure does not need them, and
    /// drops subscription filters it does not need.
    fn simplify_clients(&mut self, mut s: Scenario) -> Scenario {
        let names: Vec<String> = s.clients.keys().cloned().collect();
        let default = ClientSpec::default();
        type Edit = fn(&mut ClientSpec, &ClientSpec);
        let edits: [Edit; 8] = [
            |c, _| c.will = None,
            |c, _| c.persistence = Persistence::None,
            |c, _| c.resubscribe = false,
            |c, d| c.clean_session = d.clean_session,
            |c, _| {
                c.session_expiry = None;
                if let Some(w) = &mut c.will {
                    w.delay = None;
                }
            },
            |c, d| c.protocol = d.protocol,
            |c, d| c.keepalive = d.keepalive,
            |c, d| c.reconnect = d.reconnect,
        ];
        for name in &names {
            for edit in edits {
                if !self.budget_left() {
                    return s;
                }
                let mut c = s.clone();
                if let Some(spec) = c.clients.get_mut(name) {
                    edit(spec, &default);
                }
                if c.clients == s.clients {
                    continue;
                }
                if let Some(c) = self.accept(&c) {
                    s = c;
                }
            }
        }
        // Subscription filters, one at a time.
        let mut i = 0;
        while i < s.steps.len() && self.budget_left() {
            let Step::Subscribe(sub) = &s.steps[i] else {
                i += 1;
                continue;
            };
            let filters = sub.all_filters();
            let mut k = 0;
            let mut current = filters;
            while current.len() > 1 && k < current.len() && self.budget_left() {
                let mut fewer = current.clone();
                fewer.remove(k);
                let mut c = s.clone();
                if let Step::Subscribe(sub) = &mut c.steps[i] {
                    set_filters(sub, &fewer);
                }
                if let Some(c) = self.accept(&c) {
                    s = c;
                    current = fewer;
                } else {
                    k += 1;
                }
            }
            // One filter is written in the short form.
            if current.len() == 1 {
                let mut c = s.clone();
                if let Step::Subscribe(sub) = &mut c.steps[i] {
                    set_filters(sub, &current);
                }
                if c != s {
                    if let Some(c) = self.accept(&c) {
                        s = c;
                    }
                }
            }
            i += 1;
        }
        s
    }

    /// The shortest quiet period (whole seconds, binary search) that still fails.
    fn shorten_quiesce(&mut self, mut s: Scenario) -> Scenario {
        let (mut lo, mut hi) = (0u64, s.quiesce.millis / 1000);
        while hi - lo > 1 && self.budget_left() {
            let mid = lo + (hi - lo) / 2;
            let mut c = s.clone();
            c.quiesce = Dur::from_secs(mid);
            if let Some(c) = self.accept(&c) {
                hi = mid;
                s = c;
            } else {
                lo = mid;
            }
        }
        s
    }

    /// A host that carries one client is named after it (its `host:` dropped, link steps
    /// naming the client), when that still fails.
    fn name_hosts(&mut self, mut s: Scenario) -> Scenario {
        let names: Vec<String> = s.clients.keys().cloned().collect();
        for name in names {
            let Some(host) = s.clients.get(&name).and_then(|c| c.host.clone()) else {
                continue;
            };
            let sharing = s
                .clients
                .iter()
                .filter(|(n, c)| *n != &name && (c.host.as_deref() == Some(&host) || **n == host))
                .count();
            if sharing > 0 || !self.budget_left() {
                continue;
            }
            let mut c = s.clone();
            if let Some(spec) = c.clients.get_mut(&name) {
                spec.host = None;
            }
            for step in &mut c.steps {
                rename_endpoint(step, &host, &name);
            }
            if let Some(c) = self.accept(&c) {
                s = c;
            }
        }
        s
    }
}

fn set_filters(sub: &mut crate::scenario::SubscribeStep, filters: &[crate::scenario::FilterSpec]) {
    let plain = |f: &crate::scenario::FilterSpec| {
        !f.no_local && !f.retain_as_published && f.retain_handling == 0
    };
    if filters.len() == 1 && plain(&filters[0]) {
        sub.filter = Some(filters[0].filter.clone());
        sub.qos = Some(filters[0].qos);
        sub.filters = Vec::new();
    } else {
        sub.filter = None;
        sub.qos = None;
        sub.filters = filters.to_vec();
    }
}

fn rename_endpoint(step: &mut Step, from: &str, to: &str) {
    let swap = |x: &mut String| {
        if x == from {
            *x = to.to_string();
        }
    };
    match step {
        Step::Partition(p) => {
            swap(&mut p.a);
            swap(&mut p.b);
        }
        Step::Heal(h) => {
            if let Some(a) = &mut h.a {
                swap(a);
            }
            if let Some(b) = &mut h.b {
                swap(b);
            }
        }
        Step::Loss(l) => {
            swap(&mut l.a);
            swap(&mut l.b);
        }
        Step::Latency(l) => {
            swap(&mut l.a);
            swap(&mut l.b);
        }
        _ => {}
    }
}

/// `s` without client `name`: its steps, and link steps naming a host only it used.
fn without_client(s: &Scenario, name: &str) -> Scenario {
    let mut c = s.clone();
    let host = s.host_of(name).unwrap_or_else(|| name.to_string());
    c.clients.remove(name);
    let host_in_use = c
        .clients
        .keys()
        .any(|n| c.host_of(n).as_deref() == Some(host.as_str()));
    c.steps.retain(|step| {
        !step.clients().contains(&name)
            && (host_in_use || !step.endpoints().iter().any(|e| *e == host || *e == name))
    });
    c
}

/// Whether every step that needs its client running finds it running at that point of the
/// schedule (a `subscribe` after the `connect` it needs was removed would do nothing, and a
/// reader could not make sense of it).
fn schedule_ok(s: &Scenario) -> bool {
    use std::collections::BTreeSet;
    let mut running: BTreeSet<&str> = BTreeSet::new();
    let mut crashed: BTreeSet<&str> = BTreeSet::new();
    for step in &s.steps {
        match step {
            Step::Connect(c) => {
                if crashed.contains(c.client.as_str()) {
                    return false;
                }
                running.insert(&c.client);
            }
            Step::RestartClient(c) => {
                if !crashed.remove(c.client.as_str()) {
                    return false;
                }
                running.insert(&c.client);
            }
            Step::CrashClient(c) => {
                if !running.remove(c.client.as_str()) {
                    return false;
                }
                crashed.insert(&c.client);
            }
            Step::Disconnect(d) if !running.remove(d.client.as_str()) => return false,
            Step::Subscribe(x) if !running.contains(x.client.as_str()) => return false,
            Step::Unsubscribe(x) if !running.contains(x.client.as_str()) => return false,
            Step::Publish(x) if !running.contains(x.client.as_str()) => return false,
            _ => {}
        }
    }
    true
}

/// How much the quiet period falls short of giving keepalive time to catch a connection that a
/// link fault or a stall left half open (under simulated TCP a segment lost to a partition
/// stalls its stream for good), in milliseconds; 0 without such faults. A candidate may not
/// fall shorter than its input: shortening the quiet period or lengthening a keepalive could
/// turn the failure into another that only looks the same (a message "never delivered" to a
/// connection nobody could yet see was dead).
fn quiet_shortfall(s: &Scenario) -> u64 {
    let half_open = s
        .steps
        .iter()
        .any(|x| matches!(x, Step::Partition(_) | Step::Loss(_) | Step::Stall(_)));
    match s.clients.values().map(|c| c.keepalive).max() {
        Some(k) if half_open && k.millis > 0 => crate::explore::grammar::quiet_enough(k)
            .millis
            .saturating_sub(s.quiesce.millis),
        _ => 0,
    }
}

/// The candidate's text if it parses back as a valid scenario; `None` if it is refused.
fn valid_text(s: &Scenario, check_schedule: bool, shortfall: u64) -> Option<String> {
    if check_schedule && !schedule_ok(s) {
        return None;
    }
    if quiet_shortfall(s) > shortfall {
        return None;
    }
    // serde_yaml's own layout: cheaper than the compact one, and the same verdict (the
    // compact text is checked to read back the same before it is written).
    let text = serde_yaml::to_string(s).ok()?;
    crate::scenario::parse("candidate.yaml", &text).ok()?;
    Some(text)
}
