//! Runs the scenario library against a real broker: which cases run (profile, seeds), in which
//! phase, each in isolation from the others, graded into a [`Certification`].
//!
//! - A case is one scenario × seed: explicit scenarios run once (their pinned seed or 0),
//!   randomised ones `seeds` seeds. A scenario the target cannot carry out is one skipped case
//!   with the profile's reason.
//! - Isolation: every case gets a short unique tag that prefixes its client ids and topics on
//!   the wire (`sim::isolation`), so cases run side by side against one broker; at its end the
//!   case ends the sessions it left and clears the retained messages it set.
//! - Phases: cases that restart the broker run one at a time after the others (a restart kills
//!   every connection, a concurrent case's too); the rest run `jobs` at a time, each on its own
//!   OS thread with its own runtime (a real-time run spends its time waiting, not computing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::grade;
use super::liveness::{Guard, Health, Reach};
use super::profile::{self, Profile};
use super::statements::Statements;
use super::tcp::{Broke, Restart, Target, Tcp, Watch};
use super::{CaseResult, Certification, Finding, Grade, Incident, IncidentKind, SetAside, Verdict};
use crate::client::{Client, ConnectOptions, EventKind, MemoryPersistence};
use crate::codec::{ProtocolVersion, QoS};
use crate::scenario::{Capability, Kind, Scenario, Step};
use crate::sim::isolation::Isolation;
use crate::sim::world::{lock, ClientNet, Shared, SharedRef};
use crate::sim::{self, RunReport};
use crate::store::fs::StdFs;
use crate::transport::url::Endpoint;
use crate::transport::Connector;

/// Bound on one cleanup or probe connection (connect, a few packets, disconnect).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `$SYS/broker/version` (retained where a broker offers it) in all.
const VERSION_WAIT: Duration = Duration::from_secs(3);
/// How long after the SUBACK: a retained message follows its subscription's SUBACK at once
/// (mosquitto sends it in the same write), so a broker that sent nothing by then has none.
const VERSION_AFTER_SUBACK: Duration = Duration::from_millis(500);
/// Most parallel cases (`--jobs` is clamped to it): each holds a thread, a runtime, a proxy
/// per client host and its sessions' sockets.
pub const JOBS_MAX: usize = 64;

/// What a certification run is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// As the user wrote it (`mqtt://HOST:PORT`), for the report and rerun hints.
    pub broker_url: String,
    pub broker: SocketAddr,
    /// How to reach it: TCP, TLS, WebSocket (`Endpoint::default()` is plain TCP).
    pub endpoint: Endpoint,
    pub username: Option<String>,
    pub password: Option<String>,
    pub restart_cmd: Option<String>,
    pub profile: Profile,
    /// The profile file given, for rerun hints.
    pub profile_file: Option<PathBuf>,
    /// Seeds per randomised scenario.
    pub seeds: u32,
    /// Run only this seed of every scenario.
    pub seed: Option<u64>,
    pub jobs: usize,
    /// Write each case's trace (JSON lines) here, to read its findings' context in full.
    pub traces: Option<PathBuf>,
}

/// One scenario × seed to run, or a scenario to skip.
#[derive(Debug, Clone)]
pub struct Case {
    pub file: PathBuf,
    pub scenario: Scenario,
    /// `None` when skipped.
    pub seed: Option<u64>,
    pub skip: Option<String>,
    /// Restarts the broker, or writes raw packets (whose bytes carry the scenario's own client
    /// ids and topics, which isolation cannot rewrite): runs alone, in the serial phase.
    pub serial: bool,
}

/// The cases for these scenarios, in file order.
pub fn plan(scenarios: &[(PathBuf, Scenario)], options: &Options) -> Vec<Case> {
    let mut cases = Vec::new();
    for (file, scenario) in scenarios {
        // An ACL scenario's topics are the profile's (`scenario::acl`).
        let resolved;
        let scenario = match options.profile.acl.as_ref().and_then(|a| a.topics()) {
            Some(topics) if scenario.uses_acl() => {
                resolved = scenario.with_acl_topics(&topics);
                &resolved
            }
            _ => scenario,
        };
        let serial = topics_as_written(scenario)
            || profile::needed(scenario).contains(&Capability::BrokerRestart);
        if let Some(reason) = options
            .profile
            .unmet(scenario, options.restart_cmd.is_some())
        {
            cases.push(Case {
                file: file.clone(),
                scenario: scenario.clone(),
                seed: None,
                skip: Some(reason),
                serial,
            });
            continue;
        }
        let seeds = match (options.seed, scenario.kind()) {
            (Some(seed), _) => vec![seed],
            (None, Kind::Explicit) => sim::seeds_of(scenario, Some(1)),
            (None, Kind::Randomised) => sim::seeds_of(scenario, Some(options.seeds.max(1))),
        };
        for seed in seeds {
            cases.push(Case {
                file: file.clone(),
                scenario: scenario.clone(),
                seed: Some(seed),
                skip: None,
                serial,
            });
        }
    }
    cases
}

/// Runs every case and grades it. `progress` is called after each case with (done, total).
///
/// The liveness guard (`liveness::Guard`) checks the broker after every case and while cases
/// run. When it stops answering well (crashed, or degraded: new connections refused while old
/// ones live), no new case starts, the cases in flight stop, the broker is restarted with the
/// restart command, and every case that ran while it was unwell is rerun alone, with a check
/// after each of its steps: the one whose input breaks it again gets one MUST robustness
/// finding (`robustness`) and nothing else; the others get their rerun's verdict, and a
/// failure of the first run that the rerun does not show is set aside as cascade. Without a
/// restart command (and a broker that does not come back by itself), those cases and every
/// later one are inconclusive. Each time is an `Incident` of the report.
pub fn certify(
    cases: Vec<Case>,
    options: &Options,
    broker_version: Option<String>,
    mut progress: impl FnMut(&CaseResult, usize, usize),
) -> Certification {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let run_id = run_id();
    let total = cases.len();
    let mut results: Vec<Option<CaseResult>> = vec![None; total];
    let mut done = 0usize;
    // Skips first (they take no time), then the shared phase, then the restarts one at a
    // time. In the shared phase, cases whose topics carry their tag run side by side, and so
    // do raw-packet cases (topics as written) as long as the first topic levels of those in
    // flight are disjoint: a tagged case's topics all start with its own tag, which no
    // scenario's topic does (`Queue::new` sends such a case to the serial phase).
    let mut shared = Vec::new();
    let mut serial = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        if let Some(reason) = &case.skip {
            let result = skipped(case, reason);
            done += 1;
            progress(&result, done, total);
            results[i] = Some(result);
        } else if case.serial
            && !profile::needed(&case.scenario).contains(&Capability::BrokerRestart)
        {
            // Raw packets keep the scenario's topics, so such cases may share the broker
            // only with cases whose topics they cannot reach (first topic levels disjoint).
            match topic_roots(&case.scenario)
                .filter(|roots| !roots.iter().any(|r| r.starts_with(&run_id)))
            {
                Some(roots) => shared.push((i, roots)),
                None => serial.push(i),
            }
        } else if case.serial {
            serial.push(i);
        } else {
            shared.push((i, BTreeSet::new()));
        }
    }
    let coord = Arc::new(Coord::default());
    let guard = {
        let coord = coord.clone();
        let reach = Reach {
            broker: options.broker,
            username: options.username.clone(),
            password: options.password.as_deref().map(super::tcp::password),
            id_prefix: Isolation::new(&run_id).client_id("live"),
        };
        match Guard::start(reach, move |health| coord.open_incident(health, None)) {
            Ok(guard) => Some(guard),
            Err(e) => {
                tracing::warn!(
                    "liveness guard off: its probes fail from the start ({e}); a broker that stops answering will not be told from one that never did"
                );
                None
            }
        }
    };
    let ctx = Arc::new(Ctx {
        cases,
        options: options.clone(),
        run_id,
        guard,
        coord,
    });
    let jobs = options.jobs.clamp(1, JOBS_MAX);
    let phases = [
        (jobs, shared),
        (
            1,
            serial.into_iter().map(|i| (i, BTreeSet::new())).collect(),
        ),
    ];
    let mut take = |rx: mpsc::Receiver<(usize, CaseResult)>,
                    results: &mut Vec<Option<CaseResult>>| {
        for (i, result) in rx {
            // A case rerun after its first result was taken (a culprit found among cases that
            // had ended just before an incident) replaces it without counting twice.
            if results[i].is_none() {
                done += 1;
                progress(&result, done, total);
            }
            results[i] = Some(result);
        }
    };
    for (phase, cases) in phases {
        if cases.is_empty() {
            continue;
        }
        let workers = phase.min(cases.len());
        let queue = Arc::new(Queue::new(cases));
        let (tx, rx) = mpsc::channel::<(usize, CaseResult)>();
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (ctx, queue, tx) = (ctx.clone(), queue.clone(), tx.clone());
            threads.push(std::thread::spawn(move || ctx.worker(&queue, &tx)));
        }
        drop(tx);
        take(rx, &mut results);
        for t in threads {
            let _ = t.join();
        }
    }
    // An incident the guard saw after the last case ended.
    let (tx, rx) = mpsc::channel();
    ctx.settle(&tx);
    drop(tx);
    take(rx, &mut results);
    let incidents = std::mem::take(&mut lock_coord(&ctx.coord).incidents);
    Certification {
        broker: with_transport(options),
        broker_version,
        profile: options.profile.describe(),
        started: rfc3339(started_at),
        duration: started.elapsed(),
        simqtt_version: env!("CARGO_PKG_VERSION").to_string(),
        cases: results.into_iter().flatten().collect(),
        incidents,
    }
}

/// The cases of a phase not yet started, and the first topic levels of the raw-packet cases
/// in flight: a raw case starts only when its first levels are disjoint from theirs (a tagged
/// case has none to reserve; its topics start with its own tag).
struct Queue {
    state: Mutex<QueueState>,
    freed: Condvar,
}

struct QueueState {
    /// In plan order: (case, the first topic levels it reserves).
    pending: Vec<(usize, BTreeSet<String>)>,
    running: BTreeMap<usize, BTreeSet<String>>,
}

impl Queue {
    fn new(cases: Vec<(usize, BTreeSet<String>)>) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                pending: cases,
                running: BTreeMap::new(),
            }),
            freed: Condvar::new(),
        }
    }

    /// The first pending case whose topics no case in flight can reach (waiting for one to
    /// end when none can start), or `None` when every case has started.
    fn take(&self) -> Option<usize> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.pending.is_empty() {
                return None;
            }
            let free = st
                .pending
                .iter()
                .position(|(_, roots)| st.running.values().all(|busy| busy.is_disjoint(roots)));
            if let Some(k) = free {
                let (i, roots) = st.pending.remove(k);
                st.running.insert(i, roots);
                return Some(i);
            }
            st = self.freed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self, i: usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.running.remove(&i);
        self.freed.notify_all();
    }
}

/// Frees a case's topics when its worker is done with it (whatever way).
struct Release<'a>(&'a Queue, usize);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// How long before an incident a case may have ended and still be suspected of causing it
/// (a broker may die a moment after the input that kills it): such a case is rerun alone to
/// look for the culprit, its result kept unless the rerun breaks the broker again.
const CULPRIT_GRACE: Duration = Duration::from_secs(3);
/// Without a restart command: how long to wait for a broker that stopped answering to come
/// back by itself.
const RECOVERY_WAIT: Duration = Duration::from_secs(10);

/// What the workers share: the cases, the guard and the incident state.
struct Ctx {
    cases: Vec<Case>,
    options: Options,
    run_id: String,
    guard: Option<Guard>,
    coord: Arc<Coord>,
}

/// The incident state, shared with the guard's thread.
#[derive(Default)]
struct Coord {
    state: Mutex<CoordState>,
    changed: Condvar,
    /// Bumped when an incident opens: a run that began under an older value stops.
    epoch: Arc<AtomicU64>,
}

#[derive(Default)]
struct CoordState {
    /// The incident waiting to be handled.
    open: Option<Open>,
    in_flight: BTreeSet<usize>,
    /// Cases accepted, with when they ended (culprit candidates for an incident soon after).
    recent: Vec<(usize, Instant)>,
    /// Results of runs that overlapped an incident: to be redone.
    suspects: Vec<(usize, CaseResult)>,
    resolving: bool,
    /// The broker is down for good: later cases are not run.
    gave_up: Option<String>,
    incidents: Vec<Incident>,
    /// Reruns made so far (each gets its own isolation tag).
    reruns: u64,
}

struct Open {
    health: Health,
    during: BTreeSet<usize>,
    candidates: Vec<usize>,
}

fn lock_coord(coord: &Coord) -> std::sync::MutexGuard<'_, CoordState> {
    coord.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Coord {
    /// The broker stopped answering well (seen by the guard, or after case `by`).
    fn open_incident(&self, health: Health, by: Option<usize>) {
        let mut st = lock_coord(self);
        self.open_locked(&mut st, health, by);
    }

    fn open_locked(&self, st: &mut CoordState, health: Health, by: Option<usize>) {
        if health.is_well() || st.resolving {
            // While an incident is handled, its reruns check the broker themselves.
            return;
        }
        match &mut st.open {
            Some(open) => open.during.extend(by),
            None => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                let mut during: BTreeSet<usize> = st.in_flight.clone();
                during.extend(by);
                let now = Instant::now();
                let candidates = st
                    .recent
                    .iter()
                    .filter(|(i, at)| {
                        now.duration_since(*at) <= CULPRIT_GRACE && !during.contains(i)
                    })
                    .map(|(i, _)| *i)
                    .collect();
                st.open = Some(Open {
                    health,
                    during,
                    candidates,
                });
            }
        }
        self.changed.notify_all();
    }
}

type Results = mpsc::Sender<(usize, CaseResult)>;

/// A case's run, with what an incident needs after it.
struct Ran {
    result: CaseResult,
    trace: crate::history::Trace,
    broke: Option<Broke>,
}

impl Ctx {
    fn worker(&self, queue: &Queue, tx: &Results) {
        loop {
            self.wait_ready(tx);
            let Some(i) = queue.take() else { break };
            // `take` may have waited for topics to free: an incident may have opened since.
            self.wait_ready(tx);
            let _release = Release(queue, i);
            let case = &self.cases[i];
            let (epoch, gave_up) = {
                let mut st = lock_coord(&self.coord);
                st.in_flight.insert(i);
                (self.coord.epoch.load(Ordering::SeqCst), st.gave_up.clone())
            };
            if let Some(reason) = gave_up {
                lock_coord(&self.coord).in_flight.remove(&i);
                let _ = tx.send((i, not_run(case, &self.options, &reason)));
                continue;
            }
            let tag = format!("{}{}", self.run_id, base36(i as u64));
            let ran = self.run(case, &tag, Some(epoch), false);
            let health = self.check();
            let mut st = lock_coord(&self.coord);
            st.in_flight.remove(&i);
            let unwell = !health.is_well();
            self.coord.open_locked(&mut st, health, Some(i));
            if unwell || self.coord.epoch.load(Ordering::SeqCst) != epoch {
                st.suspects.push((i, ran.result));
            } else {
                let now = Instant::now();
                st.recent
                    .retain(|(_, at)| now.duration_since(*at) <= CULPRIT_GRACE);
                st.recent.push((i, now));
                let _ = tx.send((i, ran.result));
            }
            drop(st);
            self.settle(tx);
        }
        self.settle(tx);
    }

    /// Waits while an incident is open (handling it once nothing runs any more).
    fn wait_ready(&self, tx: &Results) {
        loop {
            let st = lock_coord(&self.coord);
            if st.open.is_none() && !st.resolving {
                return;
            }
            if st.open.is_some() && st.in_flight.is_empty() && !st.resolving {
                drop(st);
                self.settle(tx);
                continue;
            }
            let _unused = self
                .coord
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Handles the open incident if no case runs any more (one thread does it).
    fn settle(&self, tx: &Results) {
        loop {
            let (open, suspects) = {
                let mut st = lock_coord(&self.coord);
                if st.open.is_none() || !st.in_flight.is_empty() || st.resolving {
                    return;
                }
                st.resolving = true;
                let open = st.open.take();
                (open, std::mem::take(&mut st.suspects))
            };
            let incident = open.map(|open| self.resolve(open, suspects, tx));
            let mut st = lock_coord(&self.coord);
            st.incidents.extend(incident);
            st.resolving = false;
            st.recent.clear();
            self.coord.changed.notify_all();
        }
    }

    fn check(&self) -> Health {
        self.guard.as_ref().map_or(Health::Well, Guard::check)
    }

    /// Runs a case: `epoch` stops it when an incident opens; `alone` (a rerun during an
    /// incident) checks the broker after each explicit step and after the run.
    fn run(&self, case: &Case, tag: &str, epoch: Option<u64>, alone: bool) -> Ran {
        let mut watch = Watch::default();
        if let Some(epoch) = epoch {
            let current = self.coord.epoch.clone();
            watch.stop = Some(Arc::new(move || current.load(Ordering::SeqCst) != epoch));
        }
        if self.guard.is_some() {
            let guard = self.guard_handle();
            watch.restarting = Some(Arc::new(move |restarting| {
                if restarting {
                    guard.pause(true);
                } else {
                    guard.reopen();
                    guard.pause(false);
                }
            }));
            if alone {
                let guard = self.guard_handle();
                watch.after_step = Some(Arc::new(move || match guard.check() {
                    Health::Well => Ok(()),
                    other => Err(describe_health(&other)),
                }));
            }
        }
        let broke = watch.broke.clone();
        // A panic in one case is that case's failure, never a silently missing case.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_watched(case, &self.options, tag, watch)
        }));
        let (result, trace) = outcome.unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            let mut result = case_result(case, Verdict::Failed, Duration::ZERO, &self.options);
            result.findings.push(Finding {
                grade: Grade::Error,
                statement: String::new(),
                checker: "runner".into(),
                owed: "the scenario runs against the broker".into(),
                observed: format!("the runner panicked: {text}"),
                excerpt: String::new(),
            });
            (result, crate::history::Trace::new())
        });
        let broke = broke.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ran {
            result,
            trace,
            broke,
        }
    }

    fn guard_handle(&self) -> GuardHandle {
        GuardHandle(self.guard.as_ref().map(Guard::handle))
    }

    /// Handles one incident: brings the broker back, reruns every suspect alone, finds the
    /// culprit, sends the final results.
    fn resolve(
        &self,
        open: Open,
        mut suspects: Vec<(usize, CaseResult)>,
        tx: &Results,
    ) -> Incident {
        let guard = self.guard_handle();
        guard.pause(true);
        let kind = match open.health {
            Health::Degraded(_) => IncidentKind::Degraded,
            _ => IncidentKind::Crashed,
        };
        let detail = open.health.detail().to_string();
        let name = |i: usize| case_label(&self.cases[i]);
        let mut incident = Incident {
            kind,
            detail: detail.clone(),
            during: open.during.iter().map(|&i| name(i)).collect(),
            culprit: None,
            restarted: false,
            rerun: Vec::new(),
        };
        let mut gave_up = match self.bring_back(kind, &detail) {
            Ok(restarted) => {
                incident.restarted = restarted;
                None
            }
            Err(e) => Some(e),
        };
        suspects.sort_by_key(|(i, _)| *i);
        let mut merged = Vec::new();
        for (i, original) in suspects {
            let case = &self.cases[i];
            if let Some(reason) = &gave_up {
                let _ = tx.send((i, inconclusive(original, reason)));
                continue;
            }
            incident.rerun.push(name(i));
            let ran = self.rerun(case);
            match self.culprit(&ran) {
                Some(broke) => {
                    let culprit = robustness(case, &ran, broke.as_ref(), kind, &self.options);
                    incident
                        .culprit
                        .get_or_insert_with(|| culprit_name(case, broke.as_ref()));
                    let _ = tx.send((i, with_fallout(culprit, original)));
                    match self.bring_back(kind, &detail) {
                        Ok(restarted) => incident.restarted |= restarted,
                        Err(e) => gave_up = Some(e),
                    }
                }
                None => merged.push((i, original, ran.result)),
            }
        }
        // A case that ended just before may have dealt the blow (its result stands unless its
        // rerun alone breaks the broker again).
        for i in open.candidates {
            if incident.culprit.is_some() || gave_up.is_some() {
                break;
            }
            let case = &self.cases[i];
            let ran = self.rerun(case);
            if let Some(broke) = self.culprit(&ran) {
                let culprit = robustness(case, &ran, broke.as_ref(), kind, &self.options);
                incident.culprit = Some(culprit_name(case, broke.as_ref()));
                incident.rerun.push(name(i));
                let _ = tx.send((i, culprit));
                if let Err(e) = self.bring_back(kind, &detail) {
                    gave_up = Some(e);
                }
            }
        }
        let after = incident
            .culprit
            .clone()
            .unwrap_or_else(|| format!("while {} ran", incident.during.join(", ")));
        for (i, original, rerun) in merged {
            let _ = tx.send((i, cascade(original, rerun, kind, &after)));
        }
        if let Some(reason) = gave_up {
            lock_coord(&self.coord).gave_up = Some(reason);
        }
        guard.pause(false);
        incident
    }

    /// Reruns a case alone (its own isolation tag), checking the broker after each step.
    fn rerun(&self, case: &Case) -> Ran {
        let n = {
            let mut st = lock_coord(&self.coord);
            st.reruns += 1;
            st.reruns
        };
        let tag = format!("{}r{}", self.run_id, base36(n));
        self.run(case, &tag, None, true)
    }

    /// Whether a rerun alone broke the broker: after a step (`Some(Some(broke))`), or by the
    /// end of the run (`Some(None)`).
    fn culprit(&self, ran: &Ran) -> Option<Option<Broke>> {
        if let Some(broke) = &ran.broke {
            return Some(Some(broke.clone()));
        }
        (!self.check().is_well()).then_some(None)
    }

    /// Restarts the broker (the restart command), or waits for it to come back by itself.
    /// `Ok(true)`: restarted by the command; `Ok(false)`: came back by itself.
    fn bring_back(&self, kind: IncidentKind, detail: &str) -> Result<bool, String> {
        let guard = self.guard_handle();
        if let Some(command) = &self.options.restart_cmd {
            super::tcp::run_restart(command, self.options.broker)
                .map_err(|e| format!("the broker {} ({detail}) and {e}", kind.as_str()))?;
            guard.reopen();
            return match guard.check() {
                Health::Well => Ok(true),
                other => Err(format!(
                    "the broker {} ({detail}) and does not answer well after --restart-cmd: {}",
                    kind.as_str(),
                    other.detail()
                )),
            };
        }
        let deadline = Instant::now() + RECOVERY_WAIT;
        while Instant::now() < deadline {
            guard.reopen();
            if guard.check().is_well() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(format!(
            "the broker {} ({detail}) and did not come back; without --restart-cmd it cannot be restarted and the case rerun",
            kind.as_str()
        ))
    }
}

/// A guard that may be absent (the guard is off), usable from other threads.
#[derive(Clone)]
struct GuardHandle(Option<super::liveness::GuardHandle>);

impl GuardHandle {
    fn pause(&self, paused: bool) {
        if let Some(g) = &self.0 {
            g.pause(paused);
        }
    }

    fn reopen(&self) {
        if let Some(g) = &self.0 {
            g.reopen();
        }
    }

    fn check(&self) -> Health {
        self.0.as_ref().map_or(Health::Well, |g| g.check())
    }
}

fn describe_health(health: &Health) -> String {
    match health {
        Health::Well => "answering".into(),
        Health::Crashed(d) => format!("crashed: {d}"),
        Health::Degraded(d) => format!("degraded: {d}"),
    }
}

/// `scenario seed N`.
fn case_label(case: &Case) -> String {
    match case.seed {
        Some(seed) => format!("{} seed {seed}", case.scenario.name),
        None => case.scenario.name.clone(),
    }
}

fn culprit_name(case: &Case, broke: Option<&Broke>) -> String {
    match broke {
        Some(b) => format!(
            "{} step {} ({})",
            case_label(case),
            b.step + 1,
            case.scenario.steps.get(b.step).map_or("?", Step::keyword)
        ),
        None => case_label(case),
    }
}

/// The one finding of the case whose input broke the broker: MUST, checker `liveness`. It
/// cites the statement the breaking input exercises: the `spec` of the first `expect_raw`
/// after the step (or the scenario's first statement), which tells what the broker owes that
/// input; a broker that stops answering everyone has failed it in the worst way. With no
/// statement named, the finding cites none and stands as a robustness failure.
fn robustness(
    case: &Case,
    ran: &Ran,
    broke: Option<&Broke>,
    kind: IncidentKind,
    options: &Options,
) -> CaseResult {
    let scenario = &case.scenario;
    let (observed, statement, excerpt) = match broke {
        Some(b) => {
            let step = scenario.steps.get(b.step);
            let keyword = step.map_or("?", Step::keyword);
            let records = &ran.trace.records[b.from.min(ran.trace.len())..b.to.min(ran.trace.len())];
            let sent: Vec<&str> = records
                .iter()
                .filter_map(|r| match &r.event {
                    crate::history::Event::RawSent { bytes, .. } => Some(bytes.as_str()),
                    _ => None,
                })
                .collect();
            let what = if sent.is_empty() {
                format!("step {} ({keyword})", b.step + 1)
            } else {
                format!(
                    "step {} ({keyword}), which sent `{}`",
                    b.step + 1,
                    sent.join("` then `")
                )
            };
            let statement = scenario.steps[b.step + 1..]
                .iter()
                .find_map(|s| match s {
                    Step::ExpectRaw(x) => Some(x.spec.clone()),
                    _ => None,
                })
                .flatten()
                .or_else(|| scenario.spec.first().cloned())
                .unwrap_or_default();
            let indices: Vec<usize> = (b.from..b.to.min(ran.trace.len())).collect();
            (
                format!(
                    "the broker {} after {what}, when the case was rerun alone: {}",
                    kind.as_str(),
                    b.health
                ),
                statement,
                ran.trace.excerpt(&indices, 2),
            )
        }
        None => (
            format!(
                "the broker {} during this case, when it was rerun alone (not after one step: a randomised workload, or a delayed effect)",
                kind.as_str()
            ),
            scenario.spec.first().cloned().unwrap_or_default(),
            String::new(),
        ),
    };
    let mut result = case_result(case, Verdict::Failed, ran.result.duration, options);
    result.findings.push(Finding {
        grade: Grade::Must,
        statement,
        checker: "liveness".into(),
        owed: "the broker keeps answering everyone after any input (it may refuse the input and close that one connection)".into(),
        observed,
        excerpt,
    });
    result
}

/// The culprit's first run's findings are the fallout of its own blow: set aside.
fn with_fallout(mut culprit: CaseResult, original: CaseResult) -> CaseResult {
    let findings: Vec<Finding> = original
        .findings
        .into_iter()
        .chain(original.set_aside.into_iter().flat_map(|s| s.findings))
        .filter(|f| f.grade != Grade::Should)
        .collect();
    if !findings.is_empty() {
        culprit.set_aside.push(SetAside {
            reason: "the first run's findings: fallout of the breakage its own input caused".into(),
            findings,
        });
    }
    culprit
}

/// The rerun alone is the case's verdict; what the first run (made while the broker was not
/// well) found and the rerun does not is cascade.
fn cascade(
    original: CaseResult,
    mut rerun: CaseResult,
    kind: IncidentKind,
    after: &str,
) -> CaseResult {
    let failing: Vec<Finding> = original
        .findings
        .into_iter()
        .filter(|f| f.grade != Grade::Should)
        .collect();
    if !failing.is_empty() {
        let reason = if rerun.failed() {
            format!(
                "the first run, made while the broker {} ({after}); superseded by the rerun alone on a restarted broker",
                kind.as_str()
            )
        } else {
            format!(
                "cascade: seen while the broker {} ({after}); gone when the case was rerun alone on a restarted broker",
                kind.as_str()
            )
        };
        rerun.set_aside.push(SetAside {
            reason,
            findings: failing,
        });
    }
    rerun
}

/// A case that ran while the broker stopped answering and could not be rerun.
fn inconclusive(mut original: CaseResult, reason: &str) -> CaseResult {
    let findings: Vec<Finding> = std::mem::take(&mut original.findings)
        .into_iter()
        .filter(|f| f.grade != Grade::Should)
        .collect();
    let why =
        format!("ran while the broker stopped answering well, and could not be rerun: {reason}");
    if !findings.is_empty() {
        original.set_aside.push(SetAside {
            reason: why.clone(),
            findings,
        });
    }
    original.verdict = Verdict::Inconclusive { reason: why };
    original
}

/// A case not run because the broker is down for good.
fn not_run(case: &Case, options: &Options, reason: &str) -> CaseResult {
    case_result(
        case,
        Verdict::Inconclusive {
            reason: format!("not run: {reason}"),
        },
        Duration::ZERO,
        options,
    )
}

fn case_result(case: &Case, verdict: Verdict, duration: Duration, options: &Options) -> CaseResult {
    CaseResult {
        scenario: case.scenario.name.clone(),
        file: case.file.clone(),
        seed: case.seed,
        spec: case.scenario.spec.clone(),
        checkers: super::coverage::relevant_checkers(&case.scenario),
        versions: super::coverage::scenario_versions(&case.scenario),
        verdict,
        findings: Vec::new(),
        set_aside: Vec::new(),
        choices: Vec::new(),
        duration,
        rerun: rerun(case, options),
    }
}

fn skipped(case: &Case, reason: &str) -> CaseResult {
    CaseResult {
        scenario: case.scenario.name.clone(),
        file: case.file.clone(),
        seed: None,
        spec: case.scenario.spec.clone(),
        checkers: super::coverage::relevant_checkers(&case.scenario),
        versions: super::coverage::scenario_versions(&case.scenario),
        verdict: Verdict::Skipped {
            reason: reason.to_string(),
        },
        findings: Vec::new(),
        set_aside: Vec::new(),
        choices: Vec::new(),
        duration: Duration::ZERO,
        rerun: String::new(),
    }
}

/// The first topic levels a scenario's traffic can touch (its publishes, subscriptions, wills
/// and the topics inside its raw packets), or `None` when it may touch any: a filter that
/// starts with a wildcard. Raw bytes that do not decode (malformed on purpose) are closed on
/// by the broker before anything is routed, so they add nothing.
fn topic_roots(scenario: &Scenario) -> Option<BTreeSet<String>> {
    let mut topics: Vec<String> = Vec::new();
    for client in scenario.clients.values() {
        if let Some(will) = &client.will {
            topics.push(will.topic.clone());
        }
    }
    for step in &scenario.steps {
        match step {
            Step::Publish(p) => topics.push(p.topic.clone()),
            Step::Subscribe(sub) => topics.extend(sub.all_filters().into_iter().map(|f| f.filter)),
            Step::Unsubscribe(u) => topics.extend(u.all_filters()),
            Step::Raw(r) => {
                let (Some(send), Some(spec)) = (&r.send, scenario.clients.get(&r.client)) else {
                    continue;
                };
                let Ok(bytes) = crate::scenario::raw::send_bytes(send, &r.client, spec) else {
                    continue;
                };
                let buf = bytes::Bytes::from(bytes);
                let mut at = 0;
                while let Ok(Some((packet, used))) =
                    crate::codec::decode_slice(&buf.slice(at..), spec.protocol, u32::MAX)
                {
                    at += used;
                    match packet {
                        crate::codec::Packet::Publish(p) => topics.push(p.topic.to_string()),
                        crate::codec::Packet::Subscribe(sub) => {
                            topics.extend(sub.filters.iter().map(|(f, _)| f.to_string()))
                        }
                        crate::codec::Packet::Unsubscribe(u) => {
                            topics.extend(u.filters.iter().map(|f| f.to_string()))
                        }
                        crate::codec::Packet::Connect(c) => {
                            topics.extend(c.will.map(|w| w.topic.to_string()))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut roots = BTreeSet::new();
    for topic in topics {
        if topic.starts_with(['+', '#']) {
            return None;
        }
        roots.insert(topic.split('/').next().unwrap_or_default().to_string());
    }
    Some(roots)
}

/// Whether the scenario writes raw packets (their client ids and topics are the scenario's).
fn writes_raw(scenario: &Scenario) -> bool {
    scenario
        .steps
        .iter()
        .any(|s| matches!(s, Step::Raw(_) | Step::ExpectRaw(_)))
}

/// The case's topics go on the wire as the scenario (resolved) writes them: raw packets, whose
/// bytes isolation cannot rewrite, and ACL scenarios, whose topics are the profile's.
fn topics_as_written(scenario: &Scenario) -> bool {
    writes_raw(scenario) || scenario.uses_acl()
}

/// Runs one case against the broker (blocking; real time) and grades it.
pub fn run_case(case: &Case, options: &Options, tag: &str) -> CaseResult {
    run_watched(case, options, tag, Watch::default()).0
}

/// Runs one case under the liveness guard's `watch`; the case's result and its trace.
fn run_watched(
    case: &Case,
    options: &Options,
    tag: &str,
    watch: Watch,
) -> (CaseResult, crate::history::Trace) {
    let started = Instant::now();
    let seed = case.seed.unwrap_or(0);
    let scenario = &case.scenario;
    let dir = std::env::temp_dir().join(format!("simqtt-certify-{}-{tag}", std::process::id()));
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        seed,
        net: ClientNet {
            fs: Arc::new(StdFs),
            dir: dir.clone(),
            username: options.username.clone(),
            password: options.password.as_deref().map(super::tcp::password),
            acl_user: options
                .profile
                .acl
                .as_ref()
                .map(|acl| (acl.username.clone(), super::tcp::password(&acl.password))),
            // Raw packets carry the scenario's topics, which a prefix would not reach, and an
            // ACL scenario's are the ones the profile names: such a case runs with its client
            // ids tagged and topics as written, in a wave of cases whose topics cannot meet.
            isolation: Some(if topics_as_written(scenario) {
                Isolation::ids_only(tag)
            } else {
                Isolation::new(tag)
            }),
            ..ClientNet::default()
        },
        ..Shared::default()
    }));
    let target = Target {
        broker: options.broker,
        endpoint: options.endpoint.clone(),
        restart: options
            .restart_cmd
            .clone()
            .map(|command| Restart { command }),
        durable: scenario.broker.durable && options.profile.persistence,
        watch: watch.clone(),
    };
    let error = |text: String| Finding {
        grade: Grade::Error,
        statement: String::new(),
        checker: "runner".into(),
        owed: "the scenario runs against the broker".into(),
        observed: text,
        excerpt: String::new(),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        let mut result = case_result(case, Verdict::Failed, started.elapsed(), options);
        result.findings.push(error(format!(
            "cannot create the client persistence directory {}: {e}",
            dir.display()
        )));
        return (result, crate::history::Trace::new());
    }
    let backend = match Tcp::new(shared.clone(), target) {
        Ok(b) => b,
        Err(e) => {
            let mut result = case_result(case, Verdict::Failed, started.elapsed(), options);
            result
                .findings
                .push(error(format!("cannot start a runtime: {e}")));
            return (result, crate::history::Trace::new());
        }
    };
    let mut report: RunReport = sim::execute(backend, scenario, seed, shared.clone());
    sim::judge(scenario, &mut report);
    let trace_error = options.traces.as_ref().and_then(|dir| {
        let path = dir.join(format!("{}-seed{seed}.jsonl", scenario.name));
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, report.trace.to_jsonl()))
            .err()
            .map(|e| format!("writing {}: {e}", path.display()))
    });
    // A run stopped because the broker stopped answering well is rerun with a tag of its
    // own: cleaning up after it would only wait on a broker that does not answer.
    let stopped = watch.stop.as_ref().is_some_and(|stop| stop())
        || watch
            .broke
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
    let leftovers = if stopped {
        Ok(())
    } else {
        clean_up(&shared, options, tag)
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (mut findings, choices) = grade::grade(scenario, &report, Statements::embedded());
    let fallout = grade::fallout_of_findings(&mut findings);
    if let Some(text) = trace_error {
        tracing::warn!(scenario = %scenario.name, seed, "{text}");
    }
    if let Err(text) = leftovers {
        // Not a finding about this case (it is judged), but later cases may meet the leftovers
        // (the foreign-delivery filter keeps them out of their traces).
        tracing::warn!(scenario = %scenario.name, seed, "cleanup after the case: {text}");
    }
    let inconclusive = report.inconclusive();
    let mut result = case_result(case, Verdict::Passed, started.elapsed(), options);
    result.choices = choices;
    result.set_aside.extend(fallout);
    // A fault that did not take effect: what the run found may be its absence.
    settle(&mut result, findings, &inconclusive, "not confirmed");
    (result, report.trace)
}

/// Ends every session the case used and clears every retained message it set, so the broker
/// is left as the case found it (a persistent session left behind would queue messages for
/// ever; a retained message would reach later wildcard subscribers).
fn clean_up(shared: &SharedRef, options: &Options, tag: &str) -> Result<(), String> {
    let (client_ids, retained) = {
        let s = lock(shared);
        // A session of the ACL user is ended as that user: the broker may keep a session for
        // the user that made it (when clients of two users share an id, the ACL user's wins).
        let mut ids: BTreeMap<String, Option<(String, Bytes)>> = BTreeMap::new();
        for x in s.sessions.values() {
            let acl = x.spec.user == Some(crate::scenario::ClientUser::Acl);
            let user = s.net.acl_user.clone().filter(|_| acl);
            let entry = ids.entry(s.net.wire_client_id(&x.client_id)).or_default();
            if entry.is_none() {
                *entry = user;
            }
        }
        (ids, s.retained_topics.clone())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cleanup runtime: {e}"))?;
    runtime.block_on(async {
        let mut errors = Vec::new();
        // A clean-session CONNECT discards whatever session the id had (3.1.1 works with
        // every broker, and ends a 5.0 session as well).
        for (id, user) in &client_ids {
            let leave = connect_and_leave(options, id, user.as_ref(), |_| async { Ok(()) });
            if let Err(e) = leave.await {
                errors.push(format!("ending session {id}: {e}"));
            }
        }
        if !retained.is_empty() {
            let id = Isolation::new(tag).client_id("cleanup");
            let result = connect_and_leave(options, &id, None, |client| async move {
                let mut tokens = Vec::new();
                for topic in &retained {
                    tokens.push(
                        client
                            .publish(topic, Bytes::new(), QoS::AtLeastOnce, true)
                            .await
                            .map_err(|e| format!("clearing retained {topic}: {e}"))?,
                    );
                }
                for token in tokens {
                    token.wait().await.map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = result {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    })
}

/// Connects a clean 3.1.1 session with `client_id` (as `user`, else with the run's
/// credentials), runs `work`, disconnects (bounded).
async fn connect_and_leave<F, Fut>(
    options: &Options,
    client_id: &str,
    user: Option<&(String, Bytes)>,
    work: F,
) -> Result<(), String>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut connect = ConnectOptions::new(options.broker.to_string(), client_id);
    connect.protocol = ProtocolVersion::V311;
    connect.clean_session = true;
    connect.keep_alive_secs = 30;
    connect.connect_timeout = Duration::from_secs(5);
    connect.username = options.username.clone();
    connect.password = options.password.as_deref().map(super::tcp::password);
    if let Some((username, password)) = user {
        connect.username = Some(username.clone());
        connect.password = Some(password.clone());
    }
    let all = async {
        let (client, _events, _) = Client::connect(
            connect,
            connector(options)?,
            Box::new(MemoryPersistence::new()),
        )
        .await
        .map_err(|e| e.to_string())?;
        let result = work(client.clone()).await;
        client.disconnect().await;
        result
    };
    tokio::time::timeout(CLEANUP_TIMEOUT, all)
        .await
        .map_err(|_| format!("timed out after {}s", CLEANUP_TIMEOUT.as_secs()))?
}

/// A connector to the broker over the run's transport (`Options::endpoint`).
fn connector(options: &Options) -> Result<Arc<dyn Connector>, String> {
    options.endpoint.connector().map_err(|e| e.to_string())
}

/// The broker as the reports name it: the URL, and the transport when it is not plain TCP.
fn with_transport(options: &Options) -> String {
    match options.endpoint.scheme {
        crate::transport::url::Scheme::Mqtt => options.broker_url.clone(),
        scheme => format!("{} ({})", options.broker_url, scheme.describe()),
    }
}

/// The broker's `$SYS/broker/version`, where it offers one.
pub fn broker_version(options: &Options) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let id = Isolation::new(&run_id()).client_id("version");
        let mut connect = ConnectOptions::new(options.broker.to_string(), id);
        connect.clean_session = true;
        connect.connect_timeout = Duration::from_secs(5);
        connect.username = options.username.clone();
        connect.password = options.password.as_deref().map(super::tcp::password);
        let (client, mut events, _) = Client::connect(
            connect,
            connector(options).ok()?,
            Box::new(MemoryPersistence::new()),
        )
        .await
        .ok()?;
        let wait = async {
            client
                .subscribe(&[("$SYS/broker/version", QoS::AtMostOnce)])
                .await
                .ok()?;
            let arrived = async {
                while let Some(event) = events.recv().await {
                    if let EventKind::MessageArrived(m) = event.kind {
                        if m.topic.as_str() == "$SYS/broker/version" {
                            return Some(String::from_utf8_lossy(&m.payload).trim().to_string());
                        }
                    }
                }
                None
            };
            tokio::time::timeout(VERSION_AFTER_SUBACK, arrived)
                .await
                .ok()
                .flatten()
        };
        let version = tokio::time::timeout(VERSION_WAIT, wait)
            .await
            .ok()
            .flatten();
        client.disconnect().await;
        version
    })
}

/// The command that runs just this case again.
fn rerun(case: &Case, options: &Options) -> String {
    let mut out = format!(
        "simqtt certify --broker {}",
        shell_quote(&options.broker_url)
    );
    for flag in options.endpoint.tls_flags() {
        out.push(' ');
        out.push_str(&shell_quote(&flag));
    }
    if let Some(cmd) = &options.restart_cmd {
        out.push_str(&format!(" --restart-cmd {}", shell_quote(cmd)));
    }
    if let Some(p) = &options.profile_file {
        out.push_str(&format!(
            " --profile {}",
            shell_quote(&p.display().to_string())
        ));
    }
    if options.username.is_some() {
        out.push_str(" --username … --password …");
    }
    if let Some(seed) = case.seed {
        out.push_str(&format!(" --seed {seed}"));
    }
    out.push(' ');
    out.push_str(&shell_quote(&case.file.display().to_string()));
    out
}

fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A short id for this certification run: tags are `<run id><case number>`, base 36, so a
/// case's client ids stay short ([MQTT-3.1.3-5]) and two runs against one broker differ.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()) << 32);
    // A letter and three base-36 digits (46 656 values), so a tag is never a number.
    let digits = base36(mixed % 36u64.pow(3));
    format!("c{digits:0>3}")
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for a time.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The verdict of a case from its findings and what could not be confirmed: failed on a MUST
/// or an error, passed otherwise; inconclusive when anything was not confirmed (`what` names
/// how, e.g. "not confirmed"), in which case only SHOULD findings are kept and the others are
/// set aside, since what the run found may be the fault's absence. Shared by `certify` and
/// `certify-client`.
pub(crate) fn settle(
    result: &mut CaseResult,
    findings: Vec<Finding>,
    inconclusive: &[String],
    what: &str,
) {
    if inconclusive.is_empty() {
        let failed = findings
            .iter()
            .any(|f| matches!(f.grade, Grade::Must | Grade::Error));
        result.verdict = if failed {
            Verdict::Failed
        } else {
            Verdict::Passed
        };
        result.findings = findings;
        return;
    }
    let reason = format!("{what}: {}", inconclusive.join("; "));
    let (kept, aside): (Vec<Finding>, Vec<Finding>) =
        findings.into_iter().partition(|f| f.grade == Grade::Should);
    result.findings = kept;
    if !aside.is_empty() {
        result.set_aside.push(SetAside {
            reason: format!("the run is inconclusive ({reason})"),
            findings: aside,
        });
    }
    result.verdict = Verdict::Inconclusive { reason };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn tags_are_short_and_lowercase() {
        let id = run_id();
        assert_eq!(id.len(), 4, "{id}");
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    fn roots(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn raw_cases_wait_only_for_cases_whose_topics_they_can_reach() {
        // 0 and 1 are tagged cases (nothing reserved); 2 and 4 share the root `t`; 3 is
        // disjoint from both.
        let queue = Queue::new(vec![
            (0, roots(&[])),
            (1, roots(&[])),
            (2, roots(&["t", "u"])),
            (3, roots(&["v"])),
            (4, roots(&["t"])),
        ]);
        assert_eq!(queue.take(), Some(0));
        assert_eq!(queue.take(), Some(1));
        assert_eq!(queue.take(), Some(2));
        // 4 would meet 2's topics: 3 starts first.
        assert_eq!(queue.take(), Some(3));
        {
            let st = queue.state.lock().unwrap();
            assert_eq!(st.pending.len(), 1);
        }
        // 4 starts once 2 has ended (from another worker, which `take` waits for).
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| queue.take());
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished(), "case 4 started while case 2 ran");
            drop(Release(&queue, 2));
            assert_eq!(waiter.join().unwrap(), Some(4));
        });
        assert_eq!(queue.take(), None);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_quote("mqtt://127.0.0.1:1883"),
            "mqtt://127.0.0.1:1883"
        );
        assert_eq!(shell_quote("kill 1; start"), "'kill 1; start'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
