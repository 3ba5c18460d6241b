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

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::grade;
use super::profile::{self, Profile};
use super::statements::Statements;
use super::tcp::{Restart, Target, Tcp};
use super::{CaseResult, Certification, Finding, Grade, Verdict};
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
/// How long to wait for `$SYS/broker/version` (retained where a broker offers it).
const VERSION_WAIT: Duration = Duration::from_secs(3);
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
        let serial =
            writes_raw(scenario) || profile::needed(scenario).contains(&Capability::BrokerRestart);
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
    // Skips first (they take no time), then the parallel phase, then the raw-packet cases in
    // waves of cases whose topics cannot meet, then the restarts one at a time.
    let mut parallel = Vec::new();
    let mut serial = Vec::new();
    let mut waves: Vec<(BTreeSet<String>, Vec<usize>)> = Vec::new();
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
            match topic_roots(&case.scenario) {
                Some(roots) => match waves.iter_mut().find(|(used, _)| used.is_disjoint(&roots)) {
                    Some((used, wave)) => {
                        used.extend(roots);
                        wave.push(i);
                    }
                    None => waves.push((roots, vec![i])),
                },
                None => serial.push(i),
            }
        } else if case.serial {
            serial.push(i);
        } else {
            parallel.push(i);
        }
    }
    let cases = Arc::new(cases);
    let jobs = options.jobs.clamp(1, JOBS_MAX);
    let mut phases = vec![(jobs, parallel)];
    phases.extend(waves.into_iter().map(|(_, wave)| (jobs, wave)));
    phases.push((1, serial));
    for (phase, indices) in phases {
        if indices.is_empty() {
            continue;
        }
        let indices = Arc::new(indices);
        let next = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<(usize, CaseResult)>();
        let mut threads = Vec::new();
        for _ in 0..phase.min(indices.len()) {
            let (cases, indices, next, tx) =
                (cases.clone(), indices.clone(), next.clone(), tx.clone());
            let options = options.clone();
            let run_id = run_id.clone();
            threads.push(std::thread::spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = indices.get(k) else { break };
                let tag = format!("{run_id}{}", base36(i as u64));
                let case = &cases[i];
                // A panic in one case is that case's failure, never a silently missing case.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_case(case, &options, &tag)
                }))
                .unwrap_or_else(|panic| {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    let mut result = case_result(case, Verdict::Failed, Duration::ZERO, &options);
                    result.findings.push(Finding {
                        grade: Grade::Error,
                        statement: String::new(),
                        checker: "runner".into(),
                        owed: "the scenario runs against the broker".into(),
                        observed: format!("the runner panicked: {text}"),
                        excerpt: String::new(),
                    });
                    result
                });
                if tx.send((i, result)).is_err() {
                    break;
                }
            }));
        }
        drop(tx);
        for (i, result) in rx {
            done += 1;
            progress(&result, done, total);
            results[i] = Some(result);
        }
        for t in threads {
            let _ = t.join();
        }
    }
    Certification {
        broker: with_transport(options),
        broker_version,
        profile: options.profile.describe(),
        started: rfc3339(started_at),
        duration: started.elapsed(),
        simqtt_version: env!("CARGO_PKG_VERSION").to_string(),
        cases: results.into_iter().flatten().collect(),
    }
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

/// Runs one case against the broker (blocking; real time) and grades it.
pub fn run_case(case: &Case, options: &Options, tag: &str) -> CaseResult {
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
            // Raw packets carry the scenario's topics, which a prefix would not reach: such a
            // case runs alone (serial phase) with its client ids tagged and topics as written.
            isolation: Some(if writes_raw(scenario) {
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
        return result;
    }
    let backend = match Tcp::new(shared.clone(), target) {
        Ok(b) => b,
        Err(e) => {
            let mut result = case_result(case, Verdict::Failed, started.elapsed(), options);
            result
                .findings
                .push(error(format!("cannot start a runtime: {e}")));
            return result;
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
    let leftovers = clean_up(&shared, options, tag);
    let _ = std::fs::remove_dir_all(&dir);
    let (findings, choices) = grade::grade(scenario, &report, Statements::embedded());
    if let Some(text) = trace_error {
        tracing::warn!(scenario = %scenario.name, seed, "{text}");
    }
    if let Err(text) = leftovers {
        // Not a finding about this case (it is judged), but later cases may meet the leftovers
        // (the foreign-delivery filter keeps them out of their traces).
        tracing::warn!(scenario = %scenario.name, seed, "cleanup after the case: {text}");
    }
    let failed = findings
        .iter()
        .any(|f| matches!(f.grade, Grade::Must | Grade::Error));
    let verdict = if failed {
        Verdict::Failed
    } else {
        Verdict::Passed
    };
    let mut result = case_result(case, verdict, started.elapsed(), options);
    result.findings = findings;
    result.choices = choices;
    result
}

/// Ends every session the case used and clears every retained message it set, so the broker
/// is left as the case found it (a persistent session left behind would queue messages for
/// ever; a retained message would reach later wildcard subscribers).
fn clean_up(shared: &SharedRef, options: &Options, tag: &str) -> Result<(), String> {
    let (client_ids, retained) = {
        let s = lock(shared);
        let ids: BTreeSet<String> = s
            .sessions
            .values()
            .map(|x| s.net.wire_client_id(&x.client_id))
            .collect();
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
        for id in &client_ids {
            if let Err(e) = connect_and_leave(options, id, |_| async { Ok(()) }).await {
                errors.push(format!("ending session {id}: {e}"));
            }
        }
        if !retained.is_empty() {
            let id = Isolation::new(tag).client_id("cleanup");
            let result = connect_and_leave(options, &id, |client| async move {
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

/// Connects a clean 3.1.1 session with `client_id`, runs `work`, disconnects (bounded).
async fn connect_and_leave<F, Fut>(
    options: &Options,
    client_id: &str,
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
            while let Some(event) = events.recv().await {
                if let EventKind::MessageArrived(m) = event.kind {
                    if m.topic.as_str() == "$SYS/broker/version" {
                        return Some(String::from_utf8_lossy(&m.payload).trim().to_string());
                    }
                }
            }
            None
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
