//! Statement → the scenarios that test it, and what became of them in a run.
//!
//! A scenario tests a statement in two ways: it names it in `spec:` (its expectations are
//! about it), or it runs a checker that can cite it (the checker judges the whole trace against
//! it). Which ids each checker can cite is the explicit table [`checker_statements`], kept
//! honest by a test that reads the checkers' sources.
//!
//! The id → statement mapping depends on the version: the scenario's clients speak 3.1.1, 5.0
//! or both ([`scenario_versions`]), and its ids are read in those versions.
//!
//! Per statement the verdict across the run is, strongest first: failed (some case has a
//! finding citing it), passed (some case that tests it ran clean of it and of errors),
//! inconclusive (every case that tests it ran into an `Error` or was inconclusive), skipped (every case that tests
//! it was skipped; the reasons), untested (no scenario tests it). With each goes whether a black
//! box can observe the statement at all, so "untested, not observable from outside" stands apart
//! from a real gap.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::certify::statements::{Actor, Level, Observable, SpecVersion, Statements};
use crate::certify::{CaseResult, Certification, Finding, Grade, Verdict};
use crate::codec::{ProtocolVersion, QoS};
use crate::history::checkers::CheckerName;
use crate::scenario::{ProtocolMix, Scenario, Step};

/// The spec versions a scenario's clients speak (3.1.1 first); 3.1.1 when it has none.
pub fn scenario_versions(scenario: &Scenario) -> Vec<SpecVersion> {
    let mut set = BTreeSet::new();
    for c in scenario.clients.values() {
        set.insert(SpecVersion::from(c.protocol));
    }
    if let Some(w) = &scenario.workload {
        match w.protocol {
            ProtocolMix::V311 => {
                set.insert(SpecVersion::V311);
            }
            ProtocolMix::V5 => {
                set.insert(SpecVersion::V5);
            }
            ProtocolMix::Mixed => {
                set.insert(SpecVersion::V311);
                set.insert(SpecVersion::V5);
            }
        }
    }
    if set.is_empty() {
        set.insert(SpecVersion::from(ProtocolVersion::V311));
    }
    set.into_iter().collect()
}

/// The checkers a scenario runs that have something to judge in it: a checker over a trace
/// with no will, no retained message or no QoS 2 message passes vacuously, and counting that
/// as testing its statements would overstate coverage. Fill `CaseResult::checkers` with this.
pub fn relevant_checkers(scenario: &Scenario) -> Vec<CheckerName> {
    let mut qos_published = BTreeSet::new();
    let mut retain = false;
    let mut subscribes = false;
    let mut shared_subscribes = false;
    let mut repeated_publish = false;
    let mut publishes: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for step in &scenario.steps {
        match step {
            Step::Publish(p) => {
                qos_published.insert(p.qos);
                retain |= p.retain;
                let n = publishes.entry((&p.client, &p.topic)).or_insert(0);
                *n += p.count;
                repeated_publish |= *n > 1;
            }
            Step::Subscribe(s) => {
                subscribes = true;
                shared_subscribes |= s
                    .all_filters()
                    .iter()
                    .any(|f| f.filter.starts_with("$share/"));
            }
            _ => {}
        }
    }
    let mut wills = false;
    let mut resubscribe = false;
    for c in scenario.clients.values() {
        if let Some(w) = &c.will {
            wills = true;
            qos_published.insert(w.qos);
            retain |= w.retain;
        }
        resubscribe |= c.resubscribe;
    }
    if let Some(w) = &scenario.workload {
        qos_published.extend(w.qos.iter().copied());
        retain |= w.retain > 0.0;
        wills |= w.wills;
        resubscribe |= w.resubscribe;
        subscribes |= w.subscribers > 0;
        repeated_publish |= w.publishers > 0;
    }
    let relevant = |c: CheckerName| match c {
        CheckerName::Qos0 => qos_published.contains(&QoS::AtMostOnce),
        CheckerName::Qos1 => {
            qos_published.contains(&QoS::AtLeastOnce) || qos_published.contains(&QoS::ExactlyOnce)
        }
        CheckerName::Qos2 => qos_published.contains(&QoS::ExactlyOnce),
        CheckerName::Ordering => repeated_publish,
        CheckerName::Will => wills,
        CheckerName::Retained => retain,
        CheckerName::Resubscribe => resubscribe,
        CheckerName::Subscription => subscribes,
        CheckerName::Shared => shared_subscribes,
        // Every CONNACK's Session Present and every delivery's origin are judged.
        CheckerName::Session | CheckerName::Invented => true,
        // It judges simqtt's own client, the instrument: nothing it checks is the broker's
        // statement tested (a finding is a harness error, see `grade`).
        CheckerName::Client => false,
    };
    scenario
        .checker_list()
        .into_iter()
        .filter(|&c| relevant(c))
        .collect()
}

/// The statement ids a checker can cite in a violation, per version. Kept in step with the
/// checkers by `checker_table_matches_checker_sources` below.
pub fn checker_statements(checker: CheckerName, version: SpecVersion) -> &'static [&'static str] {
    use SpecVersion::{V311, V5};
    match (checker, version) {
        // QoS 0 carries DUP 0 [3.3.1-2]; at most once [4.3.1-1].
        (CheckerName::Qos0, _) => &["MQTT-3.3.1-2", "MQTT-4.3.1-1"],
        // Every owed message is delivered [4.5.0-1].
        (CheckerName::Qos1, _) => &["MQTT-4.5.0-1"],
        // Exactly once: no duplicate to the application.
        (CheckerName::Qos2, V311) => &["MQTT-4.3.3-2"],
        (CheckerName::Qos2, V5) => &["MQTT-4.3.3-10"],
        // Order per publisher, topic and QoS.
        (CheckerName::Ordering, V311) => &["MQTT-4.6.0-6"],
        (CheckerName::Ordering, V5) => &["MQTT-4.6.0-5"],
        // Published iff the connection ended without DISCONNECT; QoS ≤ granted; not after a
        // normal DISCONNECT; 5.0: not when the session resumed within the will delay.
        (CheckerName::Will, V311) => &["MQTT-3.1.2-8", "MQTT-3.8.4-6", "MQTT-3.14.4-3"],
        (CheckerName::Will, V5) => &[
            "MQTT-3.1.2-8",
            "MQTT-3.8.4-8",
            "MQTT-3.14.4-3",
            "MQTT-3.1.3-9",
        ],
        // RETAIN 0 on a live forward, empty payload never stored, only RETAIN 1 is kept, the
        // latest replaces, an empty payload clears, delivery on SUBSCRIBE; 5.0 Retain Handling.
        (CheckerName::Retained, V311) => &[
            "MQTT-3.3.1-6",
            "MQTT-3.3.1-9",
            "MQTT-3.3.1-10",
            "MQTT-3.3.1-11",
            "MQTT-3.3.1-12",
        ],
        (CheckerName::Retained, V5) => &[
            "MQTT-3.3.1-5",
            "MQTT-3.3.1-6",
            "MQTT-3.3.1-7",
            "MQTT-3.3.1-8",
            "MQTT-3.3.1-9",
            "MQTT-3.3.1-10",
            "MQTT-3.3.1-11",
            "MQTT-3.3.1-12",
        ],
        // Session Present and session state by Clean Session / Clean Start.
        (CheckerName::Session, V311) => &[
            "MQTT-3.1.2-4",
            "MQTT-3.1.2-5",
            "MQTT-3.2.2-1",
            "MQTT-3.2.2-2",
            "MQTT-3.2.2-3",
            "MQTT-3.2.2-4",
        ],
        (CheckerName::Session, V5) => &[
            "MQTT-3.1.2-5",
            "MQTT-3.1.2-23",
            "MQTT-3.2.2-2",
            "MQTT-3.2.2-3",
            "MQTT-3.2.2-6",
        ],
        // A clean reconnect holds no subscriptions; resubscribing receives again.
        (CheckerName::Resubscribe, _) => &["MQTT-3.2.2-3", "MQTT-4.5.0-1"],
        // Delivered only through a matching subscription that existed, not after UNSUBSCRIBE
        // or a clean start, at QoS ≤ granted; overlapping subscriptions at their maximum QoS.
        (CheckerName::Subscription, V311) => &[
            "MQTT-3.1.2-6",
            "MQTT-3.3.2-3",
            "MQTT-3.3.5-1",
            "MQTT-3.8.4-6",
            "MQTT-3.10.4-2",
        ],
        (CheckerName::Subscription, V5) => &[
            "MQTT-3.1.2-4",
            "MQTT-3.3.2-3",
            "MQTT-3.3.4-2",
            "MQTT-3.8.4-8",
            "MQTT-3.10.4-2",
        ],
        // Shared subscriptions: QoS ≥ 1 reaches a member at its granted QoS; a QoS 2 message
        // stays with its member, and goes to no other when that member's session ends.
        (CheckerName::Shared, V311) => &[],
        (CheckerName::Shared, V5) => &["MQTT-4.8.2-3", "MQTT-4.8.2-4", "MQTT-4.8.2-5"],
        // Nothing delivered that nobody published.
        (CheckerName::Invented, _) => &["MQTT-4.5.0-1", "MQTT-4.7.3-4"],
        // The client's own duties as a sender (never counted for a broker: see
        // `relevant_checkers`): DUP, resend on reconnect in order, and the broker's answer to
        // what it wrote.
        (CheckerName::Client, V311) => &[
            "MQTT-3.3.1-1",
            "MQTT-3.3.1-2",
            "MQTT-4.3.2-1",
            "MQTT-4.3.2-2",
            "MQTT-4.3.3-1",
            "MQTT-4.3.3-2",
            "MQTT-4.4.0-1",
            "MQTT-4.6.0-1",
            "MQTT-4.6.0-4",
        ],
        (CheckerName::Client, V5) => &[
            "MQTT-3.3.1-1",
            "MQTT-3.3.1-2",
            "MQTT-4.3.2-2",
            "MQTT-4.3.2-4",
            "MQTT-4.3.3-2",
            "MQTT-4.3.3-6",
            "MQTT-4.3.3-8",
            "MQTT-4.3.3-11",
            "MQTT-4.4.0-1",
            "MQTT-4.6.0-1",
            "MQTT-4.6.0-4",
        ],
    }
}

/// How a scenario comes to test a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Named in its `spec:`.
    Spec,
    /// Citable by a checker it runs.
    Checker,
}

/// The statements one case tests: (version, id) → how.
pub fn case_statements(
    case: &CaseResult,
    statements: &Statements,
) -> BTreeMap<(SpecVersion, String), Via> {
    let versions = if case.versions.is_empty() {
        vec![SpecVersion::V311]
    } else {
        case.versions.clone()
    };
    let mut out = BTreeMap::new();
    for &v in &versions {
        for checker in &case.checkers {
            for id in checker_statements(*checker, v) {
                if statements.get(v, id).is_some() {
                    out.insert((v, id.to_string()), Via::Checker);
                }
            }
        }
    }
    // What it names, and what its findings cite (a step's own action, e.g. a CONNECT that got
    // no CONNACK, cites a statement the scenario need not name).
    let cited = case.findings.iter().flat_map(Finding::statement_ids);
    for id in case.spec.iter().map(String::as_str).chain(cited) {
        // In the versions the clients speak; an id only the other version has still counts
        // there, so a mislabelled id is reported rather than dropped.
        let mut found = false;
        for &v in &versions {
            if statements.get(v, id).is_some() {
                out.insert((v, id.to_string()), Via::Spec);
                found = true;
            }
        }
        if !found {
            if let Some(s) = statements.find(id).first() {
                out.insert((s.version, id.to_string()), Via::Spec);
            }
        }
    }
    out
}

/// One case, as a statement's verdict refers to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CaseRef {
    pub scenario: String,
    pub seed: Option<u64>,
    /// The worst grade of the findings citing the statement (failed cases), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<Grade>,
}

/// What became of a statement across the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// A finding cites it (MUST or SHOULD; see each case's grade).
    Failed {
        cases: Vec<CaseRef>,
    },
    /// Tested and no finding cites it.
    Passed {
        cases: Vec<CaseRef>,
    },
    /// Tested only in cases the runner could not carry out.
    Inconclusive {
        cases: Vec<CaseRef>,
    },
    /// Every scenario that tests it was skipped.
    Skipped {
        reasons: Vec<String>,
    },
    Untested,
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Failed { .. } => "fail",
            Status::Passed { .. } => "pass",
            Status::Inconclusive { .. } => "inconclusive",
            Status::Skipped { .. } => "skip",
            Status::Untested => "untested",
        }
    }
}

/// One statement's line in the coverage table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementCoverage {
    pub version: SpecVersion,
    pub id: String,
    pub section: String,
    pub actor: Actor,
    pub level: Level,
    pub observable: Observable,
    pub summary: String,
    /// Scenario names that test it, with how (sorted, distinct).
    pub scenarios: Vec<(String, Via)>,
    #[serde(flatten)]
    pub status: Status,
}

impl StatementCoverage {
    /// Untested, but a broker's outside cannot show it anyway (client-only or invisible).
    pub fn untested_unobservable(&self) -> bool {
        matches!(self.status, Status::Untested) && self.observable == Observable::No
    }

    /// Untested although a black-box test could show it: a real gap in the library.
    pub fn gap(&self) -> bool {
        matches!(self.status, Status::Untested) && self.observable != Observable::No
    }
}

/// Counts per status for one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub statements: usize,
    pub passed: usize,
    pub failed: usize,
    pub inconclusive: usize,
    pub skipped: usize,
    pub untested: usize,
    /// Of the untested: not observable from a broker's outside.
    pub untested_unobservable: usize,
    /// Observable (yes or partly) statements some scenario tests.
    pub observable_tested: usize,
    pub observable: usize,
}

/// The coverage table of a run: every statement of both versions in document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub statements: Vec<StatementCoverage>,
}

impl Coverage {
    pub fn version(&self, v: SpecVersion) -> impl Iterator<Item = &StatementCoverage> {
        self.statements.iter().filter(move |s| s.version == v)
    }

    pub fn totals(&self, v: SpecVersion) -> Totals {
        let mut t = Totals::default();
        for s in self.version(v) {
            t.statements += 1;
            match s.status {
                Status::Passed { .. } => t.passed += 1,
                Status::Failed { .. } => t.failed += 1,
                Status::Inconclusive { .. } => t.inconclusive += 1,
                Status::Skipped { .. } => t.skipped += 1,
                Status::Untested => {
                    t.untested += 1;
                    if s.observable == Observable::No {
                        t.untested_unobservable += 1;
                    }
                }
            }
            if s.observable != Observable::No {
                t.observable += 1;
                if !matches!(s.status, Status::Untested) {
                    t.observable_tested += 1;
                }
            }
        }
        t
    }
}

/// The worst grade among a case's findings citing statement `id` of version `v`, if any.
fn cites(case: &CaseResult, v: SpecVersion, id: &str, statements: &Statements) -> Option<Grade> {
    // A finding names an id, not a version: it belongs to `v` when the case speaks `v`, or
    // when none of the versions the case speaks has the id (then `case_statements` placed it
    // in the version that does). An id in several of the case's versions counts against each.
    if !case.versions.is_empty()
        && !case.versions.contains(&v)
        && case
            .versions
            .iter()
            .any(|&cv| statements.get(cv, id).is_some())
    {
        return None;
    }
    case.findings
        .iter()
        .filter(|f| f.statement_ids().any(|s| s == id))
        .map(|f| f.grade)
        .min()
}

/// Builds the coverage table of a certification.
pub fn coverage(cert: &Certification, statements: &Statements) -> Coverage {
    // (version, id) → (scenario, via) and the cases.
    let mut tested: BTreeMap<(SpecVersion, String), Vec<(usize, Via)>> = BTreeMap::new();
    for (i, case) in cert.cases.iter().enumerate() {
        for (key, via) in case_statements(case, statements) {
            tested.entry(key).or_default().push((i, via));
        }
    }
    let mut out = Vec::new();
    for s in statements.all() {
        let key = (s.version, s.id.clone());
        let cases = tested.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let mut scenarios: BTreeMap<String, Via> = BTreeMap::new();
        for &(i, via) in cases {
            let e = scenarios
                .entry(cert.cases[i].scenario.clone())
                .or_insert(via);
            *e = (*e).min(via);
        }
        let mut failed = Vec::new();
        let mut passed = Vec::new();
        let mut errored = Vec::new();
        let mut skipped = BTreeSet::new();
        for &(i, _) in cases {
            let case = &cert.cases[i];
            let at = |grade| CaseRef {
                scenario: case.scenario.clone(),
                seed: case.seed,
                grade,
            };
            match &case.verdict {
                Verdict::Skipped { reason } => {
                    skipped.insert(format!("{}: {reason}", case.scenario));
                }
                // Ran, but proved nothing (its findings are set aside): never a pass.
                Verdict::Inconclusive { .. } => errored.push(at(None)),
                _ => {
                    if let Some(grade) = cites(case, s.version, &s.id, statements) {
                        failed.push(at(Some(grade)));
                    } else if case.findings.iter().any(|f| f.grade == Grade::Error) {
                        errored.push(at(None));
                    } else {
                        passed.push(at(None));
                    }
                }
            }
        }
        let status = if !failed.is_empty() {
            Status::Failed { cases: failed }
        } else if !passed.is_empty() {
            Status::Passed { cases: passed }
        } else if !errored.is_empty() {
            Status::Inconclusive { cases: errored }
        } else if !skipped.is_empty() {
            Status::Skipped {
                reasons: skipped.into_iter().collect(),
            }
        } else {
            Status::Untested
        };
        out.push(StatementCoverage {
            version: s.version,
            id: s.id.clone(),
            section: s.section.clone(),
            actor: s.actor,
            level: s.level,
            observable: s.observable,
            summary: s.summary.clone(),
            scenarios: scenarios.into_iter().collect(),
            status,
        });
    }
    Coverage { statements: out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certify::{Choice, Finding};
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::time::Duration;

    /// The string literals `"MQTT-…"` in a checker's code (its tests excluded).
    fn cited_in_source(src: &str) -> BTreeSet<String> {
        let code = src.split("#[cfg(test)]").next().unwrap_or(src);
        code.match_indices("\"MQTT-")
            .filter_map(|(at, _)| {
                let rest = &code[at + 1..];
                rest.find('"').map(|end| rest[..end].to_string())
            })
            .collect()
    }

    #[test]
    fn checker_table_matches_checker_sources() {
        let sources = [
            (
                CheckerName::Qos0,
                include_str!("../history/checkers/qos0.rs"),
            ),
            (
                CheckerName::Qos1,
                include_str!("../history/checkers/qos1.rs"),
            ),
            (
                CheckerName::Qos2,
                include_str!("../history/checkers/qos2.rs"),
            ),
            (
                CheckerName::Ordering,
                include_str!("../history/checkers/ordering.rs"),
            ),
            (
                CheckerName::Will,
                include_str!("../history/checkers/will.rs"),
            ),
            (
                CheckerName::Retained,
                include_str!("../history/checkers/retained.rs"),
            ),
            (
                CheckerName::Session,
                include_str!("../history/checkers/session.rs"),
            ),
            (
                CheckerName::Resubscribe,
                include_str!("../history/checkers/resubscribe.rs"),
            ),
            (
                CheckerName::Subscription,
                include_str!("../history/checkers/subscription.rs"),
            ),
            (
                CheckerName::Invented,
                include_str!("../history/checkers/invented.rs"),
            ),
            (
                CheckerName::Client,
                include_str!("../history/checkers/client.rs"),
            ),
            (
                CheckerName::Shared,
                include_str!("../history/checkers/shared.rs"),
            ),
        ];
        assert_eq!(
            sources.len(),
            CheckerName::ALL.len(),
            "every checker listed"
        );
        for (checker, src) in sources {
            let in_source = cited_in_source(src);
            let in_table: BTreeSet<String> = SpecVersion::ALL
                .iter()
                .flat_map(|&v| checker_statements(checker, v))
                .map(|s| s.to_string())
                .collect();
            assert_eq!(in_source, in_table, "{checker}: source vs coverage table");
        }
        // The shared helpers cite nothing themselves.
        assert!(cited_in_source(include_str!("../history/checkers/mod.rs")).is_empty());
    }

    fn case(scenario: &str, seed: u64, verdict: Verdict, findings: Vec<Finding>) -> CaseResult {
        CaseResult {
            scenario: scenario.into(),
            file: PathBuf::from(format!("scenarios/{scenario}.yaml")),
            seed: match verdict {
                Verdict::Skipped { .. } => None,
                _ => Some(seed),
            },
            spec: vec!["MQTT-4.3.3-2".into()],
            checkers: vec![CheckerName::Qos2],
            versions: vec![SpecVersion::V311],
            verdict,
            findings,
            set_aside: Vec::new(),
            choices: Vec::<Choice>::new(),
            duration: Duration::from_millis(10),
            rerun: String::new(),
        }
    }

    fn finding(grade: Grade, statement: &str) -> Finding {
        Finding {
            grade,
            statement: statement.into(),
            checker: "qos2".into(),
            owed: "once".into(),
            observed: "twice".into(),
            excerpt: String::new(),
        }
    }

    fn cert(cases: Vec<CaseResult>) -> Certification {
        Certification {
            broker: "mqtt://127.0.0.1:1883".into(),
            broker_version: None,
            profile: "test".into(),
            started: "2026-01-01T00:00:00Z".into(),
            duration: Duration::from_secs(1),
            simqtt_version: "0".into(),
            cases,
            incidents: Vec::new(),
        }
    }

    fn status<'a>(c: &'a Coverage, v: SpecVersion, id: &str) -> &'a StatementCoverage {
        c.version(v).find(|s| s.id == id).expect("statement listed")
    }

    #[test]
    fn every_statement_of_both_versions_is_listed() {
        let c = coverage(&cert(vec![]), Statements::embedded());
        assert_eq!(c.version(SpecVersion::V311).count(), 141);
        assert_eq!(c.version(SpecVersion::V5).count(), 251);
        assert!(c.statements.iter().all(|s| s.status == Status::Untested));
        let t = c.totals(SpecVersion::V311);
        assert_eq!(t.untested, 141);
        assert_eq!(t.untested_unobservable, 32);
        assert_eq!(t.observable, 109);
    }

    #[test]
    fn verdicts_fail_beats_pass_beats_error_beats_skip() {
        let s = Statements::embedded();
        let passed = case("qos2-basic", 1, Verdict::Passed, vec![]);
        let failed = case(
            "qos2-dup",
            2,
            Verdict::Failed,
            vec![finding(Grade::Must, "MQTT-4.3.3-2")],
        );
        let skipped = case(
            "qos2-restart",
            0,
            Verdict::Skipped {
                reason: "broker_restart: no --restart-cmd".into(),
            },
            vec![],
        );
        let errored = case(
            "qos2-error",
            3,
            Verdict::Failed,
            vec![finding(Grade::Error, "")],
        );

        let c = coverage(&cert(vec![passed.clone(), failed.clone()]), s);
        let st = status(&c, SpecVersion::V311, "MQTT-4.3.3-2");
        assert_eq!(
            st.status,
            Status::Failed {
                cases: vec![CaseRef {
                    scenario: "qos2-dup".into(),
                    seed: Some(2),
                    grade: Some(Grade::Must)
                }]
            }
        );
        assert_eq!(
            st.scenarios,
            vec![
                ("qos2-basic".to_string(), Via::Spec),
                ("qos2-dup".to_string(), Via::Spec)
            ]
        );
        // The 5.0 statement with the same number is not touched by a 3.1.1 case.
        assert_eq!(
            status(&c, SpecVersion::V5, "MQTT-4.3.3-2").status,
            Status::Untested
        );
        // A 5.0-only id of the checker is not tested by a 3.1.1 case either.
        assert_eq!(
            status(&c, SpecVersion::V5, "MQTT-4.3.3-10").status,
            Status::Untested
        );

        let c = coverage(&cert(vec![passed.clone(), skipped.clone()]), s);
        assert!(matches!(
            status(&c, SpecVersion::V311, "MQTT-4.3.3-2").status,
            Status::Passed { .. }
        ));

        let c = coverage(&cert(vec![errored.clone(), skipped.clone()]), s);
        assert!(matches!(
            status(&c, SpecVersion::V311, "MQTT-4.3.3-2").status,
            Status::Inconclusive { .. }
        ));

        let c = coverage(&cert(vec![skipped]), s);
        assert_eq!(
            status(&c, SpecVersion::V311, "MQTT-4.3.3-2").status,
            Status::Skipped {
                reasons: vec!["qos2-restart: broker_restart: no --restart-cmd".into()]
            }
        );
    }

    #[test]
    fn a_statement_a_finding_cites_is_tested_by_its_case() {
        // A CONNECT left unanswered cites [MQTT-3.1.4-4] though the file names only 4.3.3-2:
        // the table shows that statement failed, not untested.
        let s = Statements::embedded();
        let failed = case(
            "qos2-dup",
            2,
            Verdict::Failed,
            vec![finding(Grade::Must, "MQTT-3.1.4-4")],
        );
        let c = coverage(&cert(vec![failed]), s);
        assert!(matches!(
            status(&c, SpecVersion::V311, "MQTT-3.1.4-4").status,
            Status::Failed { .. }
        ));
        assert!(matches!(
            status(&c, SpecVersion::V311, "MQTT-4.3.3-2").status,
            Status::Passed { .. }
        ));
    }

    #[test]
    fn checkers_count_as_testing_their_statements() {
        let s = Statements::embedded();
        let mut c5 = case("v5-qos2", 1, Verdict::Passed, vec![]);
        c5.spec.clear();
        c5.versions = vec![SpecVersion::V5];
        let c = coverage(&cert(vec![c5]), s);
        let st = status(&c, SpecVersion::V5, "MQTT-4.3.3-10");
        assert!(matches!(st.status, Status::Passed { .. }));
        assert_eq!(st.scenarios, vec![("v5-qos2".to_string(), Via::Checker)]);
        assert_eq!(
            status(&c, SpecVersion::V311, "MQTT-4.3.3-2").status,
            Status::Untested
        );
    }

    #[test]
    fn untested_unobservable_apart_from_gaps() {
        let c = coverage(&cert(vec![]), Statements::embedded());
        // A client-only obligation: no broker test can show it.
        let client_only = status(&c, SpecVersion::V311, "MQTT-3.1.2-22");
        assert_eq!(client_only.observable, Observable::No);
        assert!(client_only.untested_unobservable());
        assert!(!client_only.gap());
        let server = status(&c, SpecVersion::V311, "MQTT-4.3.3-2");
        assert!(server.gap());
    }

    #[test]
    fn only_checkers_with_material_count_as_testing() {
        let checkers = |yaml: &str| {
            relevant_checkers(&crate::scenario::parse("t.yaml", yaml).expect("parses"))
        };
        // One QoS 1 message, no will, no retain, no resubscribing client.
        assert_eq!(
            checkers(
                "clients: {a: {}}\nsteps:\n  - connect: a\n  - subscribe: {client: a, filter: t, qos: 1}\n  - publish: {client: a, topic: t, qos: 1}\n"
            ),
            [
                CheckerName::Qos1,
                CheckerName::Session,
                CheckerName::Subscription,
                CheckerName::Invented
            ]
        );
        // A retained QoS 2 will, two messages on one topic, a resubscribing client; the
        // scenario's own `checkers:` list still bounds the result.
        assert_eq!(
            checkers(
                "checkers: [qos2, will, retained, ordering, resubscribe]\nclients: {a: {resubscribe: true, will: {topic: w, qos: 2, retain: true}}}\nsteps:\n  - connect: a\n  - publish: {client: a, topic: t, count: 2}\n"
            ),
            [
                CheckerName::Qos2,
                CheckerName::Will,
                CheckerName::Retained,
                CheckerName::Ordering,
                CheckerName::Resubscribe
            ]
        );
        // A randomised workload exercises what it draws.
        let w = checkers(
            "workload: {publishers: 2, subscribers: 2, rate: 1/s, duration: 1s, qos: [0, 2], wills: true}\n",
        );
        assert!(w.contains(&CheckerName::Qos0) && w.contains(&CheckerName::Qos2));
        assert!(w.contains(&CheckerName::Will) && !w.contains(&CheckerName::Retained));
    }

    #[test]
    fn scenario_versions_follow_the_clients() {
        let v = |yaml: &str| {
            scenario_versions(&crate::scenario::parse("t.yaml", yaml).expect("parses"))
        };
        assert_eq!(
            v("clients: {a: {}}\nsteps:\n  - connect: a\n"),
            [SpecVersion::V311]
        );
        assert_eq!(
            v("clients: {a: {protocol: v5}, b: {}}\nsteps:\n  - connect: a\n"),
            [SpecVersion::V311, SpecVersion::V5]
        );
        assert_eq!(
            v("workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s, protocol: v5}\n"),
            [SpecVersion::V5]
        );
    }
}
