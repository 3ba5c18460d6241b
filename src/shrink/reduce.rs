//! Delta debugging over an explicit scenario. A candidate is kept when it still parses as a
//! scenario (so the shrinker never writes a file `simqtt run` refuses, whatever validation
//! says today) and still fails with the target ([`super::reproduces`]).
//!
//! Passes, repeated until a round changes nothing (or the run budget is spent):
//! 1. cut the tail: the shortest prefix of the steps that still fails (binary search);
//! 2. remove whole clients with every step that names them;
//! 3. remove chunks of steps, halving the chunk down to single steps (ddmin's complement
//!    removal);
//! 4. merge runs of identical one-message `publish` steps into one with a `count`, then lower
//!    counts;
//! 5. shorten waits (binary search down to the tick), the fault windows among them, and round
//!    them to readable values;
//! 6. simplify clients (drop options back to their defaults: will, persistence,
//!    resubscription, session kind, protocol, keepalive) and their subscriptions;
//! 7. shorten the quiet period;
//! 8. name hosts after their only client.
//!
//! Candidates of one pass that do not depend on each other are run `jobs` at a time; the
//! first one in the pass's order that still fails is kept, exactly as a sequential search
//! would, so the result does not depend on `jobs`.

use std::collections::BTreeMap;

use super::{reproduces, Options, Oracle, Target};
use crate::scenario::{ClientSpec, Dur, Persistence, Scenario, Step};

/// Waits are shortened down to this granularity (the simulation tick).
const WAIT_GRAIN_MS: u64 = 5;
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
    /// Refuse candidates whose steps act on clients not running then ([`schedule_ok`]); off
    /// for an input that does so itself.
    check_schedule: bool,
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
            check_schedule: true,
        }
    }

    /// Keeps the schedule check only if `input` passes it.
    pub fn check_schedule_like(&mut self, input: &Scenario) {
        self.check_schedule = schedule_ok(input);
    }

    /// Candidate runs so far.
    pub fn runs(&self) -> usize {
        self.runs
    }

    fn budget_left(&self) -> bool {
        self.runs < self.max_runs
    }

    /// Whether `s` still fails with the target (run once; remembered).
    pub fn interesting(&mut self, s: &Scenario) -> bool {
        self.first_interesting(std::slice::from_ref(s)).is_some()
    }

    /// The index of the first candidate (in order) that still fails, running them `jobs` at a
    /// time and stopping at the first batch that has one.
    fn first_interesting(&mut self, candidates: &[Scenario]) -> Option<usize> {
        let mut start = 0;
        while start < candidates.len() {
            // Judge what is known or invalid without running; collect what must run.
            let mut batch: Vec<(usize, String)> = Vec::new();
            let mut index = start;
            while index < candidates.len() && batch.len() < self.jobs {
                let Some(text) = valid_text(&candidates[index], self.check_schedule) else {
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
            for ((i, text), ok) in batch.iter().zip(&results) {
                self.memo.insert(text.clone(), *ok);
                let _ = i;
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
            let failures = self.oracle.failures(&candidates[i], self.seed);
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
    pub fn reduce(&mut self, mut s: Scenario) -> Scenario {
        s = self.cut_tail(s);
        for _round in 0..4 {
            let before = valid_text(&s, false);
            s = self.remove_clients(s);
            s = self.remove_chunks(s);
            s = self.actions_to_waits(s);
            s = self.merge_publishes(s);
            s = self.lower_counts(s);
            s = self.shorten_waits(s);
            s = self.simplify_clients(s);
            s = self.shorten_quiesce(s);
            s = self.name_hosts(s);
            if valid_text(&s, false) == before || !self.budget_left() {
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
                Some(k) => {
                    s = candidates[k].clone();
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
                    Some(k) => {
                        start += k * chunk;
                        s = candidates[k].clone();
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
            if let Some(k) = self.first_interesting(&candidates) {
                s = candidates[k].clone();
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
                if self.interesting(&c) {
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
                if self.interesting(&c) {
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
                if self.interesting(&c) {
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
                if self.interesting(&c) {
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
                if self.interesting(&c) {
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
                if c.clients != s.clients && self.interesting(&c) {
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
                if self.interesting(&c) {
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
                if c != s && self.interesting(&c) {
                    s = c;
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
            if self.interesting(&c) {
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
            if self.interesting(&c) {
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

/// The candidate's text if it parses back as a valid scenario; `None` if it is refused.
fn valid_text(s: &Scenario, check_schedule: bool) -> Option<String> {
    if check_schedule && !schedule_ok(s) {
        return None;
    }
    let text = super::yaml::to_yaml(s).ok()?;
    crate::scenario::parse("candidate.yaml", &text).ok()?;
    Some(text)
}
