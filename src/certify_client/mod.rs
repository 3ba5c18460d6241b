//! `simqtt certify-client`: a third-party MQTT client library certified under faults.
//!
//! The scenario library's client-side scenarios (`scenarios/client/`, where the client named
//! `app` is the client under test) run over real TCP with the client under test in place of
//! `app`: an adapter process that speaks the driver protocol (docs/client-certification.md,
//! [`protocol`]), served to the scenario world as a `Client` handle by [`external`]. The broker
//! is simqtt's own (`simqtt broker`, a fresh one per case, restarted by a command for
//! `crash_broker`), behind the same fault proxy and per-connection fault layer `simqtt certify`
//! uses (`certify::tcp`); the other clients of a scenario are simqtt's own.
//!
//! Judging: the same step expectations and trace checkers as everywhere else. A finding is
//! charged to the client under test when it is about `app` (an expectation of a client-side
//! scenario, or a checker violation owed to `app` or about a message `app` published), graded by
//! the level of the statement it cites (MUST fails, SHOULD is reported, a `note:` is a
//! permitted alternative). The broker and the other clients are simqtt's reference, which the
//! library holds to every statement in the simulator (`simqtt run`): a violation that concerns
//! only them is a harness error (nothing certified), never the client's.
//!
//! Layout: [`protocol`] (the JSON lines), [`external`] (the adapter process and the relay that
//! reads what it writes on the wire), [`profile`] (what the library claims; skips).

pub mod external;
pub mod profile;
pub mod protocol;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::certify::coverage::{relevant_checkers, scenario_versions};
use crate::certify::statements::{Level, SpecVersion, Statements};
use crate::certify::tcp::{wait_for_port, Restart, Target, Tcp, Watch};
use crate::certify::{grade, CaseResult, Certification, Choice, Finding, Grade, Verdict};
use crate::history::checkers;
use crate::scenario::cite::Citation;
use crate::scenario::{Scenario, Step};
use crate::sim::world::{ClientNet, Shared, SharedRef};
use crate::sim::{self, RunReport};
use crate::store::fs::StdFs;
use external::Adapter;
use profile::{ClientProfile, UNDER_TEST};

/// Longest the broker may take to accept connections after it was started.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(15);

/// What a client certification runs with.
#[derive(Debug, Clone)]
pub struct Options {
    pub adapter: Adapter,
    pub profile: ClientProfile,
    /// The profile file given, for rerun hints.
    pub profile_file: Option<PathBuf>,
    /// The `simqtt` executable that runs the broker (`simqtt broker`).
    pub simqtt: PathBuf,
    /// Where each case's broker keeps its store and log (a directory per case, removed after).
    pub work_dir: PathBuf,
    /// Write each case's trace (JSON lines) here.
    pub traces: Option<PathBuf>,
}

/// Why a scenario cannot be a client-side case at all (a usage error, not a skip).
pub fn refuse(scenario: &Scenario) -> Option<String> {
    if !scenario.clients.contains_key(UNDER_TEST) {
        return Some(format!(
            "{} has no client named {UNDER_TEST:?}, the client under test (client-side scenarios are in scenarios/client/)",
            scenario.name
        ));
    }
    if scenario.steps.is_empty() {
        return Some(format!(
            "{} is randomised; certify-client runs explicit scenarios",
            scenario.name
        ));
    }
    None
}

/// Starts the adapter once, reads its `ready` line and ends it: the client's name and
/// version, or why it cannot be certified (it does not start, or speaks another version of
/// the driver protocol), said once before any case runs.
pub fn preflight(adapter: &Adapter) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    runtime.block_on(async {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&adapter.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", adapter.command))?;
        let stdout = child.stdout.take().ok_or("the adapter has no stdout")?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        let said = match tokio::time::timeout(Duration::from_secs(20), read).await {
            Err(_) => {
                return Err(
                    "the adapter said nothing within 20s (its first line must be ready)"
                        .to_string(),
                )
            }
            Ok(Err(e)) => return Err(format!("reading the adapter: {e}")),
            Ok(Ok(0)) => return Err("the adapter exited before its ready line".to_string()),
            Ok(Ok(_)) => protocol::Event::parse(&line)?,
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin
                .write_all(protocol::Command::Exit.line().as_bytes())
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        match said {
            protocol::Event::Ready { protocol, client }
                if protocol == protocol::PROTOCOL_VERSION =>
            {
                Ok(client)
            }
            protocol::Event::Ready { protocol, .. } => Err(format!(
                "the adapter speaks driver protocol {protocol}; this simqtt speaks {}",
                protocol::PROTOCOL_VERSION
            )),
            other => Err(format!(
                "the adapter's first line must be ready, not {other:?}"
            )),
        }
    })
}

/// Why this harness cannot run the scenario (besides the profile's claims).
fn harness_skip(scenario: &Scenario) -> Option<String> {
    if !scenario.broker.transport.is_plain() {
        return Some("runs over TLS/WebSocket in the simulator; certify-client speaks TCP".into());
    }
    for step in &scenario.steps {
        match step {
            Step::CrashBroker(c) if c.power_loss => {
                return Some(
                    "a power loss cannot be injected into a broker process from outside".into(),
                )
            }
            Step::Raw(_) | Step::ExpectRaw(_) => {
                return Some("raw packets bypass the client under test".into())
            }
            _ => {}
        }
    }
    None
}

/// Runs every scenario (in order, one case at a time: each has its own broker and adapter)
/// and reports each result to `progress` as it ends.
pub fn certify(
    scenarios: &[(PathBuf, Scenario)],
    options: &Options,
    client_version: Option<String>,
    mut progress: impl FnMut(&CaseResult, usize, usize),
) -> Certification {
    let started = Instant::now();
    let started_at = crate::certify::runner::rfc3339(SystemTime::now());
    let total = scenarios.len();
    let mut cases = Vec::new();
    for (i, (file, scenario)) in scenarios.iter().enumerate() {
        let skip = options
            .profile
            .unmet(scenario)
            .or_else(|| harness_skip(scenario));
        let result = match skip {
            Some(reason) => {
                let mut r = case_result(file, scenario, None, options);
                r.verdict = Verdict::Skipped { reason };
                r
            }
            None => {
                let seed = sim::seeds_of(scenario, Some(1))
                    .first()
                    .copied()
                    .unwrap_or(0);
                run_case(file, scenario, seed, options, i)
            }
        };
        progress(&result, i + 1, total);
        cases.push(result);
    }
    Certification {
        broker: format!("client: {}", options.adapter.command),
        broker_version: client_version,
        profile: options.profile.describe(),
        started: started_at,
        duration: started.elapsed(),
        simqtt_version: env!("CARGO_PKG_VERSION").to_string(),
        cases,
        incidents: Vec::new(),
    }
}

fn case_result(
    file: &Path,
    scenario: &Scenario,
    seed: Option<u64>,
    options: &Options,
) -> CaseResult {
    CaseResult {
        scenario: scenario.name.clone(),
        file: file.to_path_buf(),
        seed,
        spec: scenario.spec.clone(),
        checkers: relevant_checkers(scenario),
        versions: scenario_versions(scenario),
        verdict: Verdict::Passed,
        findings: Vec::new(),
        set_aside: Vec::new(),
        choices: Vec::new(),
        duration: Duration::ZERO,
        rerun: rerun(file, options),
    }
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

fn rerun(file: &Path, options: &Options) -> String {
    let mut out = format!(
        "simqtt certify-client --cmd {}",
        shell_quote(&options.adapter.command)
    );
    if let Some(p) = &options.profile_file {
        out.push_str(&format!(
            " --profile {}",
            shell_quote(&p.display().to_string())
        ));
    }
    out.push(' ');
    out.push_str(&shell_quote(&file.display().to_string()));
    out
}

/// simqtt's broker as a process of its own, so a `crash_broker` can kill it (SIGKILL) and a
/// command start it again on the same port and store.
struct BrokerProcess {
    addr: SocketAddr,
    pid_file: PathBuf,
    restart: String,
}

impl BrokerProcess {
    fn start(simqtt: &Path, dir: &Path, durable: bool) -> Result<BrokerProcess, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("picking a port for the broker: {e}"))?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let pid_file = dir.join("broker.pid");
        let q = |p: &Path| shell_quote(&p.display().to_string());
        let data = if durable {
            format!(" --data-dir {}", q(&dir.join("store")))
        } else {
            String::new()
        };
        let start = format!(
            "{} broker --listen {addr}{data} </dev/null >>{} 2>&1 & echo $! > {}",
            q(simqtt),
            q(&dir.join("broker.log")),
            q(&pid_file)
        );
        let restart = format!(
            "kill -9 $(cat {pid}) 2>/dev/null; sleep 0.2; {start}",
            pid = q(&pid_file)
        );
        let status = Command::new("sh")
            .arg("-c")
            .arg(&start)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("starting the broker: {e}"))?;
        if !status.success() {
            return Err(format!("starting the broker: {status}"));
        }
        wait_for_port(addr, BROKER_START_TIMEOUT)?;
        Ok(BrokerProcess {
            addr,
            pid_file,
            restart,
        })
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run_case(
    file: &Path,
    scenario: &Scenario,
    seed: u64,
    options: &Options,
    index: usize,
) -> CaseResult {
    let started = Instant::now();
    let mut result = case_result(file, scenario, Some(seed), options);
    let error = |text: String| Finding {
        grade: Grade::Error,
        statement: String::new(),
        checker: "runner".into(),
        owed: "the scenario runs against the client".into(),
        observed: text,
        excerpt: String::new(),
    };
    let dir = options
        .work_dir
        .join(format!("case-{}-{index}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(dir.join("client")) {
        result.verdict = Verdict::Failed;
        result
            .findings
            .push(error(format!("creating {}: {e}", dir.display())));
        return result;
    }
    let broker = match BrokerProcess::start(&options.simqtt, &dir, scenario.broker.durable) {
        Ok(b) => b,
        Err(e) => {
            result.verdict = Verdict::Failed;
            result.findings.push(error(e));
            return result;
        }
    };
    let adapter = Adapter {
        stderr: options
            .adapter
            .stderr
            .clone()
            .or_else(|| Some(dir.join("adapter.log"))),
        ..options.adapter.clone()
    };
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        seed,
        net: ClientNet {
            fs: Arc::new(StdFs),
            dir: dir.join("client"),
            external: Some(external::external(adapter, UNDER_TEST)),
            ..ClientNet::default()
        },
        ..Shared::default()
    }));
    let target = Target {
        broker: broker.addr,
        endpoint: Default::default(),
        restart: Some(Restart {
            command: broker.restart.clone(),
        }),
        durable: scenario.broker.durable,
        watch: Watch::default(),
    };
    let backend = match Tcp::new(shared.clone(), target) {
        Ok(b) => b,
        Err(e) => {
            result.verdict = Verdict::Failed;
            result
                .findings
                .push(error(format!("cannot start a runtime: {e}")));
            return result;
        }
    };
    let report = sim::execute(backend, scenario, seed, shared);
    drop(broker);
    if let Some(traces) = &options.traces {
        let path = traces.join(format!("{}-seed{seed}.jsonl", scenario.name));
        if let Err(e) = std::fs::create_dir_all(traces)
            .and_then(|()| std::fs::write(&path, report.trace.to_jsonl()))
        {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }
    let (findings, choices, could_not_run) = judge(scenario, &report, Statements::embedded());
    // Keep the adapter's log of a case that did not pass next to the traces, if asked.
    let _ = std::fs::remove_dir_all(&dir);
    result.choices = choices;
    result.duration = started.elapsed();
    let mut inconclusive = report.inconclusive();
    inconclusive.extend(could_not_run);
    crate::certify::runner::settle(
        &mut result,
        findings,
        &inconclusive,
        "not confirmed or not run",
    );
    result
}

fn grade_of(level: Level) -> Option<Grade> {
    match level {
        Level::Must | Level::MustNot => Some(Grade::Must),
        Level::Should | Level::ShouldNot => Some(Grade::Should),
        Level::May => None,
    }
}

/// Grades a finished run for the client under test (see the module's header).
/// Returns the findings, the permitted alternatives seen, and the steps that could not run
/// (which make the case inconclusive).
pub fn judge(
    scenario: &Scenario,
    report: &RunReport,
    statements: &Statements,
) -> (Vec<Finding>, Vec<Choice>, Vec<String>) {
    let versions = scenario_versions(scenario);
    let mut findings = Vec::new();
    let mut choices = Vec::new();
    let mut could_not_run = Vec::new();
    for f in &report.failures {
        let base = Finding {
            grade: Grade::Error,
            statement: f.spec.clone(),
            checker: f.kind.clone(),
            owed: f.owed.clone(),
            observed: f.happened.clone(),
            excerpt: f.text.clone(),
        };
        if f.kind != "expect" {
            // The world could not carry a step out: nothing was judged.
            findings.push(base);
            continue;
        }
        let step = grade::failed_step(f).filter(|&i| i < scenario.steps.len());
        if let Some(i) = step.filter(|&i| !scenario.steps[i].keyword().starts_with("expect")) {
            // An action the client did not carry out (no CONNACK, no SUBACK): the scenario
            // could not go on as written, so it proves nothing either way.
            could_not_run.push(format!(
                "step {} ({}) could not run: {}",
                i + 1,
                scenario.steps[i].keyword(),
                f.happened
            ));
            continue;
        }
        let citation = step.map_or(Citation::None, |i| scenario.citation(i));
        match citation {
            Citation::Note(why) => choices.push(Choice {
                checker: "expect".into(),
                text: format!("{}: {} (permitted: {why})", f.owed, f.happened),
                count: 1,
            }),
            Citation::None => findings.push(Finding {
                grade: if scenario.should.is_some() {
                    Grade::Should
                } else {
                    Grade::Must
                },
                ..base
            }),
            Citation::Statement(id, _) => {
                let order: Vec<SpecVersion> = step
                    .map(|i| vec![SpecVersion::from(scenario.step_version(i))])
                    .unwrap_or_else(|| versions.clone());
                match statements
                    .resolve(&order, &id)
                    .and_then(|s| grade_of(s.level))
                {
                    Some(grade) => findings.push(Finding {
                        grade,
                        statement: id,
                        ..base
                    }),
                    None => findings.push(Finding {
                        observed: format!("scenario bug: cites {id}, no MUST or SHOULD statement; it reported: {}", f.happened),
                        ..base
                    }),
                }
            }
        }
    }
    for outcome in checkers::run(&report.trace, &scenario.checker_list()) {
        for (note, &count) in &outcome.notes {
            choices.push(Choice {
                checker: outcome.checker.as_str().to_string(),
                text: note.clone(),
                count,
            });
        }
        for v in &outcome.violations {
            let about_client = v.client.as_deref() == Some(UNDER_TEST)
                || v.message
                    .as_ref()
                    .is_some_and(|m| m.publisher == UNDER_TEST);
            let base = Finding {
                grade: Grade::Error,
                statement: v.spec.clone(),
                checker: v.checker.as_str().to_string(),
                owed: v.owed.clone(),
                observed: v.happened.clone(),
                excerpt: v.render(&report.trace),
            };
            if !about_client {
                findings.push(Finding {
                    observed: format!(
                        "harness error: simqtt's own broker or peer client broke {} (not the client under test): {}",
                        v.spec, v.happened
                    ),
                    ..base
                });
                continue;
            }
            let grade = statements
                .resolve(&versions, &v.spec)
                .and_then(|s| grade_of(s.level));
            findings.push(match grade {
                Some(grade) => Finding { grade, ..base },
                None => Finding {
                    observed: format!(
                        "checker bug: cites {:?}, no MUST or SHOULD statement: {}",
                        v.spec, v.happened
                    ),
                    ..base
                },
            });
        }
    }
    (findings, choices, could_not_run)
}
