//! The reports of a certification run, all from the same [`Certification`]:
//! - [`terminal`]: the summary table a person reads at the end of a run;
//! - [`junit`]: JUnit XML, one testcase per scenario × seed, for CI test views;
//! - [`markdown`]: the full report keyed by the spec's normative statements;
//! - [`json`]: the same content as the Markdown, for tools;
//! - [`html`]: one self-contained HTML file: the summary, each finding's timeline drawn, the
//!   coverage table.
//!
//! Reports are pure functions of their input (no clock, no environment), so they snapshot.

pub mod html;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod terminal;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use html::html;
pub use json::json;
pub use junit::junit;
pub use markdown::markdown;
pub use terminal::terminal;

use crate::certify::{CaseResult, Certification, Finding, Grade, Incident, IncidentKind, Verdict};
use crate::timeline::Timeline;

/// The timeline of a finding, drawn from the trace records of its excerpt (a report keeps no
/// more of the trace); `None` when the excerpt holds no records (a runner error).
pub fn timeline(f: &Finding) -> Option<Timeline> {
    let title = if f.statement.is_empty() {
        f.checker.clone()
    } else {
        format!("[{}] {}", f.statement, f.checker)
    };
    let t = Timeline::from_excerpt(title, f.owed.clone(), f.observed.clone(), &f.excerpt);
    (!t.entries.is_empty()).then_some(t)
}

/// One scenario's line of the summary: its cases (seeds) by verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioRow {
    pub scenario: String,
    /// Cases that ran (passed + failed + inconclusive).
    pub runs: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Ran, but a fault did not take effect or the broker stopped answering: no verdict.
    #[serde(default)]
    pub inconclusive: usize,
    /// SHOULD findings across its runs (they do not fail a case).
    pub should: usize,
}

/// Per scenario, in the order the run met them.
pub fn scenario_rows(cert: &Certification) -> Vec<ScenarioRow> {
    let mut rows: Vec<ScenarioRow> = Vec::new();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cert.cases {
        let i = *index.entry(&case.scenario).or_insert_with(|| {
            rows.push(ScenarioRow {
                scenario: case.scenario.clone(),
                ..Default::default()
            });
            rows.len() - 1
        });
        let row = &mut rows[i];
        match case.verdict {
            Verdict::Passed => {
                row.runs += 1;
                row.passed += 1;
            }
            Verdict::Failed => {
                row.runs += 1;
                row.failed += 1;
            }
            Verdict::Skipped { .. } => row.skipped += 1,
            Verdict::Inconclusive { .. } => {
                row.runs += 1;
                row.inconclusive += 1;
            }
        }
        row.should += count_grade(case, Grade::Should);
    }
    rows
}

fn count_grade(case: &CaseResult, grade: Grade) -> usize {
    case.findings.iter().filter(|f| f.grade == grade).count()
}

/// Totals over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub scenarios: usize,
    pub cases: usize,
    pub runs: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    #[serde(default)]
    pub inconclusive: usize,
    pub must: usize,
    pub should: usize,
    pub errors: usize,
    /// Distinct allowed alternatives the broker chose.
    pub choices: usize,
    pub certified: bool,
}

pub fn summary(cert: &Certification) -> Summary {
    let rows = scenario_rows(cert);
    let mut s = Summary {
        scenarios: rows.len(),
        cases: cert.cases.len(),
        certified: cert.certified(),
        choices: choices(cert).len(),
        ..Default::default()
    };
    for r in &rows {
        s.runs += r.runs;
        s.passed += r.passed;
        s.failed += r.failed;
        s.skipped += r.skipped;
        s.inconclusive += r.inconclusive;
    }
    for case in &cert.cases {
        s.must += count_grade(case, Grade::Must);
        s.should += count_grade(case, Grade::Should);
        s.errors += count_grade(case, Grade::Error);
    }
    s
}

/// An allowed alternative with how often, and in which scenarios, the broker chose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChoiceTotal {
    pub checker: String,
    pub text: String,
    pub count: usize,
    pub scenarios: Vec<String>,
}

/// The choices of every case, merged by (checker, text).
pub fn choices(cert: &Certification) -> Vec<ChoiceTotal> {
    let mut merged: BTreeMap<(&str, &str), (usize, BTreeSet<&str>)> = BTreeMap::new();
    for case in &cert.cases {
        for c in &case.choices {
            let e = merged.entry((&c.checker, &c.text)).or_default();
            e.0 += c.count;
            e.1.insert(&case.scenario);
        }
    }
    merged
        .into_iter()
        .map(|((checker, text), (count, scenarios))| ChoiceTotal {
            checker: checker.to_string(),
            text: text.to_string(),
            count,
            scenarios: scenarios.into_iter().map(str::to_string).collect(),
        })
        .collect()
}

/// `1m 23.4s`, `850ms`: short and stable.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let tenths = (ms % 1000) / 100;
    if secs < 60 {
        return format!("{secs}.{tenths}s");
    }
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m}m {s}s")
    } else {
        format!("{m}m {s}.{tenths}s")
    }
}

/// A case's name in lists: `scenario seed N` (or `scenario` when skipped).
pub fn case_name(case: &CaseResult) -> String {
    match case.seed {
        Some(seed) => format!("{} seed {seed}", case.scenario),
        None => case.scenario.clone(),
    }
}

/// The report header's line on the broker's health: `None` when it answered throughout, else
/// how often it stopped answering well, how, and after what.
pub fn health_line(cert: &Certification) -> Option<String> {
    if cert.incidents.is_empty() {
        return None;
    }
    let crashed = cert
        .incidents
        .iter()
        .filter(|i| i.kind == IncidentKind::Crashed)
        .count();
    let degraded = cert.incidents.len() - crashed;
    let mut parts = Vec::new();
    if crashed > 0 {
        parts.push(format!("crashed {}", times(crashed)));
    }
    if degraded > 0 {
        parts.push(format!("degraded {}", times(degraded)));
    }
    let each: Vec<String> = cert.incidents.iter().map(incident_text).collect();
    Some(format!(
        "the broker {} during the run: {}",
        parts.join(" and "),
        each.join("; ")
    ))
}

fn times(n: usize) -> String {
    if n == 1 {
        "once".into()
    } else {
        format!("{n} times")
    }
}

/// One incident in one line: how, after what, what was done.
pub fn incident_text(i: &Incident) -> String {
    let after = match &i.culprit {
        Some(c) => format!("after {c}"),
        None if i.during.is_empty() => "between cases (not reproduced by a rerun)".into(),
        None => format!(
            "while {} ran (not reproduced when rerun alone)",
            i.during.join(", ")
        ),
    };
    let then = if i.restarted {
        format!(
            "restarted with --restart-cmd; {} case{} rerun alone",
            i.rerun.len(),
            if i.rerun.len() == 1 { "" } else { "s" }
        )
    } else if i.rerun.is_empty() {
        "not restarted: the cases it hit are inconclusive".into()
    } else {
        format!(
            "it came back by itself; {} cases rerun alone",
            i.rerun.len()
        )
    };
    format!("{} {after} ({}); {then}", i.kind.as_str(), i.detail)
}

pub fn grade_name(grade: Grade) -> &'static str {
    match grade {
        Grade::Must => "MUST",
        Grade::Should => "SHOULD",
        Grade::Error => "ERROR",
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A small certification with one of everything, for the report tests and snapshots.

    use std::path::PathBuf;
    use std::time::Duration;

    use crate::certify::statements::SpecVersion;
    use crate::certify::{
        CaseResult, Certification, Choice, Finding, Grade, Incident, IncidentKind, SetAside,
        Verdict,
    };
    use crate::history::checkers::CheckerName;

    fn case(scenario: &str, seed: Option<u64>, verdict: Verdict) -> CaseResult {
        CaseResult {
            scenario: scenario.into(),
            file: PathBuf::from(format!("scenarios/{scenario}.yaml")),
            seed,
            spec: Vec::new(),
            checkers: Vec::new(),
            versions: vec![SpecVersion::V311],
            verdict,
            findings: Vec::new(),
            set_aside: Vec::new(),
            choices: Vec::new(),
            duration: Duration::from_millis(1500),
            rerun: format!(
                "simqtt certify --broker mqtt://127.0.0.1:1883 scenarios/{scenario}.yaml{}",
                seed.map(|s| format!(" --seed {s}")).unwrap_or_default()
            ),
        }
    }

    pub fn sample() -> Certification {
        let mut qos1 = case("qos/qos1-basic", Some(0), Verdict::Passed);
        qos1.spec = vec!["MQTT-4.3.2-2".into()];
        qos1.checkers = vec![CheckerName::Qos1, CheckerName::Ordering];
        qos1.choices = vec![Choice {
            checker: "qos1".into(),
            text: "QoS 1 message delivered more than once (permitted)".into(),
            count: 2,
        }];

        let mut overlap = case("qos/overlapping-subscriptions", Some(0), Verdict::Passed);
        overlap.spec = vec!["MQTT-3.3.5-1".into()];
        overlap.checkers = vec![CheckerName::Qos0, CheckerName::Subscription];
        overlap.choices = vec![Choice {
            checker: "qos0".into(),
            text: "one copy per overlapping subscription".into(),
            count: 1,
        }];

        let mut qos2 = case("faults/qos2-dropped-pubrec", Some(3), Verdict::Failed);
        qos2.spec = vec!["MQTT-4.3.3-2".into()];
        qos2.checkers = vec![CheckerName::Qos2];
        qos2.findings = vec![Finding {
            grade: Grade::Must,
            statement: "MQTT-4.3.3-2".into(),
            checker: "qos2".into(),
            owed: "message pub-1 delivered once to sub".into(),
            observed: "delivered 2 times (a & b <dup>)".into(),
            excerpt: "  1.200s pub  -> PUBLISH qos=2 id=1 \"pub-1\"\n  1.300s sub  <- PUBLISH qos=2 \"pub-1\"\n  1.900s sub  <- PUBLISH qos=2 \"pub-1\"".into(),
        }];

        let mut will = case("will/retained-will", Some(0), Verdict::Passed);
        will.spec = vec!["MQTT-3.1.2-8".into()];
        will.findings = vec![Finding {
            grade: Grade::Should,
            statement: "MQTT-3.1.2-8".into(),
            checker: "will".into(),
            owed: "the will within 1s of the connection's end".into(),
            observed: "the will after 4s".into(),
            excerpt: String::new(),
        }];

        let mut restart = case(
            "session/broker-restart-keeps-session",
            None,
            Verdict::Skipped {
                reason: "broker_restart: no --restart-cmd was given".into(),
            },
        );
        restart.spec = vec!["MQTT-3.1.2-4".into()];
        restart.duration = Duration::ZERO;

        let mut chaos = case("chaos/qos1-persistent", Some(7), Verdict::Failed);
        chaos.checkers = vec![CheckerName::Qos1];
        chaos.findings = vec![Finding {
            grade: Grade::Error,
            statement: String::new(),
            checker: "runner".into(),
            owed: "step 2 (connect)".into(),
            observed: "CONNACK 0x05 not authorized".into(),
            excerpt: String::new(),
        }];

        let mut kick = case(
            "reconnect/reconnect-after-kick",
            Some(0),
            Verdict::Inconclusive {
                reason: "not confirmed: step 4 (kick sub): sub's connection did not end within 10s of the kick".into(),
            },
        );
        kick.spec = vec!["MQTT-3.1.2-4".into()];
        kick.set_aside = vec![SetAside {
            reason: "the run is inconclusive (the kick did not take effect)".into(),
            findings: vec![Finding {
                grade: Grade::Must,
                statement: "MQTT-3.1.2-4".into(),
                checker: "expect".into(),
                owed: "step 5 (expect_messages)".into(),
                observed: "sub did not receive within 10s: 5 message(s) [from pub], got 0".into(),
                excerpt: String::new(),
            }],
        }];

        Certification {
            broker: "mqtt://127.0.0.1:1883".into(),
            broker_version: Some("mosquitto version 2.0.11".into()),
            profile: "mosquitto, mqtt5, persistence".into(),
            started: "2026-11-25T23:00:00Z".into(),
            duration: Duration::from_millis(83_400),
            simqtt_version: "0.1.0".into(),
            cases: vec![qos1, overlap, qos2, will, restart, chaos, kick],
            incidents: vec![Incident {
                kind: IncidentKind::Crashed,
                detail: "2 of 2 new connections failed (connection refused); the guard's held connection: the connection was closed".into(),
                during: vec!["topics/raw-bom-kept-v311 seed 0".into(), "qos/raw-flows-v311 seed 0".into()],
                culprit: Some("topics/raw-bom-kept-v311 seed 0 step 3 (raw)".into()),
                restarted: true,
                rerun: vec!["topics/raw-bom-kept-v311 seed 0".into(), "qos/raw-flows-v311 seed 0".into()],
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_summary_count_each_case_once() {
        let cert = fixture::sample();
        let rows = scenario_rows(&cert);
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0].scenario, "qos/qos1-basic");
        let s = summary(&cert);
        assert_eq!(
            (
                s.cases,
                s.runs,
                s.passed,
                s.failed,
                s.skipped,
                s.inconclusive
            ),
            (7, 6, 3, 2, 1, 1)
        );
        assert_eq!((s.must, s.should, s.errors), (1, 1, 1));
        assert_eq!(s.choices, 2);
        assert!(!s.certified);
    }

    #[test]
    fn a_certification_built_from_simulator_runs_renders_and_covers() {
        use crate::certify::coverage::{coverage, relevant_checkers, scenario_versions, Status};
        use crate::certify::grade::grade;
        use crate::certify::statements::{SpecVersion, Statements};
        use crate::certify::CaseResult;

        let statements = Statements::embedded();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cases = Vec::new();
        for file in [
            "scenarios/qos/qos1-basic.yaml",
            "scenarios/retained/retained-set.yaml",
            "scenarios/will/will-on-client-crash.yaml",
        ] {
            let path = root.join(file);
            let s = crate::scenario::load(&path).expect("library scenario");
            let report = crate::sim::run(&s, 0);
            let (findings, choices) = grade(&s, &report, statements);
            let failed = findings.iter().any(|f| f.grade != Grade::Should);
            cases.push(CaseResult {
                scenario: s.name.clone(),
                file: path,
                seed: Some(0),
                spec: s.spec.clone(),
                checkers: relevant_checkers(&s),
                versions: scenario_versions(&s),
                verdict: if failed {
                    Verdict::Failed
                } else {
                    Verdict::Passed
                },
                findings,
                set_aside: Vec::new(),
                choices,
                duration: Duration::from_millis(5),
                rerun: String::new(),
            });
        }
        let cert = Certification {
            broker: "sim".into(),
            broker_version: None,
            profile: "simqtt".into(),
            started: "2026-01-01T00:00:00Z".into(),
            duration: Duration::from_secs(1),
            simqtt_version: "0".into(),
            cases,
            incidents: Vec::new(),
        };
        assert!(cert.certified(), "{:#?}", cert.cases);
        let cov = coverage(&cert, statements);
        let passed = |id: &str| {
            cov.version(SpecVersion::V311)
                .find(|s| s.id == id)
                .is_some_and(|s| matches!(s.status, Status::Passed { .. }))
        };
        // From `spec:` (qos1-basic) and from the checkers every scenario runs.
        assert!(passed("MQTT-4.5.0-1"));
        assert!(passed("MQTT-4.6.0-6"));
        assert!(passed("MQTT-3.1.2-8"));
        // Only will-on-client-crash has a will: the others do not count for the will checker.
        let will = cov
            .version(SpecVersion::V311)
            .find(|s| s.id == "MQTT-3.1.2-8")
            .expect("listed");
        assert_eq!(will.scenarios.len(), 1, "{:?}", will.scenarios);
        for text in [
            terminal(&cert, statements),
            markdown(&cert, statements),
            junit(&cert),
            json(&cert, statements),
        ] {
            assert!(!text.is_empty());
        }
        assert!(terminal(&cert, statements)
            .trim_end()
            .ends_with("certified: yes"));
    }

    #[test]
    fn a_finding_is_drawn_as_a_timeline_in_markdown_and_html() {
        use crate::certify::coverage::{relevant_checkers, scenario_versions};
        use crate::certify::grade::grade;
        use crate::certify::statements::Statements;

        // The planted bug that forgets QoS 2 receive ids on restart (docs/shrinking.md): a
        // QoS 2 message resent across a broker crash is delivered twice.
        let yaml = "spec: [MQTT-4.3.3-2]\nbroker: {planted_bug: lose_qos2_receive_ids, durable: true}\n\
                    quiesce: 1s\nclients:\n  p0: {clean_session: false}\n  s1: {clean_session: false}\n\
                    steps:\n  - connect: s1\n  - subscribe: {client: s1, filter: t/0, qos: 2}\n\
                    \x20 - connect: p0\n  - publish: {client: p0, topic: t/0, qos: 2}\n  - wait: 15ms\n\
                    \x20 - crash_broker:\n";
        let s = crate::scenario::parse("planted.yaml", yaml).expect("scenario");
        let statements = Statements::embedded();
        let run = crate::sim::run(&s, 0);
        let (findings, choices) = grade(&s, &run, statements);
        assert!(
            findings.iter().any(|f| f.grade == Grade::Must),
            "{findings:#?}"
        );
        let cert = Certification {
            broker: "sim".into(),
            broker_version: None,
            profile: "simqtt".into(),
            started: "2026-01-01T00:00:00Z".into(),
            duration: Duration::from_secs(1),
            simqtt_version: "0".into(),
            cases: vec![CaseResult {
                scenario: "planted".into(),
                file: "planted.yaml".into(),
                seed: Some(0),
                spec: s.spec.clone(),
                checkers: relevant_checkers(&s),
                versions: scenario_versions(&s),
                verdict: Verdict::Failed,
                findings,
                set_aside: Vec::new(),
                choices,
                duration: Duration::from_millis(5),
                rerun: String::new(),
            }],
            incidents: Vec::new(),
        };
        // The terminal names the message the finding is about.
        let text = terminal(&cert, statements);
        assert!(text.contains("\n       messages: p0-1\n"), "{text}");
        let md = markdown(&cert, statements);
        assert!(md.contains("```mermaid\nsequenceDiagram\n"), "{md}");
        assert!(md.contains("rect rgb(255, 214, 214)"), "{md}");
        assert!(md.contains("happened: 2 copies delivered"), "{md}");
        let page = html(&cert, statements);
        assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
        assert_eq!(
            page.matches("<svg").count(),
            md.matches("```mermaid").count()
        );
        assert!(page.contains("fill=\"#ffd6d6\""), "{page}");
        // The coverage table, with the statement the finding breaks marked failed.
        assert!(page.contains("<h2>Normative statements</h2>"), "{page}");
        assert!(
            page.contains("<tr class=\"bad\"><td>MQTT-4.3.3-2</td>"),
            "{page}"
        );
        for forbidden in ["<script", "<link", " src=", "@import"] {
            assert!(!page.contains(forbidden), "{forbidden}");
        }
    }

    #[test]
    fn an_inconclusive_case_is_never_a_pass_and_the_header_tells_the_crash() {
        let mut cert = fixture::sample();
        cert.cases
            .retain(|c| c.inconclusive() || c.scenario == "qos/qos1-basic");
        assert!(!cert.certified(), "an inconclusive case certified nothing");
        let s = summary(&cert);
        assert_eq!((s.passed, s.inconclusive, s.must), (1, 1, 0));
        let health = health_line(&cert).expect("a health line");
        assert!(
            health.starts_with("the broker crashed once during the run: crashed after topics/raw-bom-kept-v311 seed 0 step 3 (raw)"),
            "{health}"
        );
        assert!(health.contains("restarted with --restart-cmd; 2 cases rerun alone"));
        let statements = crate::certify::statements::Statements::embedded();
        let text = terminal(&cert, statements);
        assert!(
            text.contains("BROKER HEALTH: the broker crashed once"),
            "{text}"
        );
        assert!(text.contains("INCONCLUSIVE reconnect/reconnect-after-kick seed 0: not confirmed: step 4 (kick sub)"), "{text}");
        assert!(
            text.contains("1 finding set aside, not charged to the broker"),
            "{text}"
        );
        assert!(
            text.trim_end()
                .ends_with("certified: no (0 MUST violations, 0 errors, 1 inconclusive case)"),
            "{text}"
        );
        let md = markdown(&cert, statements);
        assert!(
            md.contains("| Broker health | **the broker crashed once during the run:"),
            "{md}"
        );
        assert!(md.contains("## Broker incidents"));
        assert!(
            md.contains(
                "| reconnect/reconnect-after-kick seed 0 | not confirmed: step 4 (kick sub)"
            ),
            "{md}"
        );
        assert!(md.contains("- reconnect/reconnect-after-kick seed 0: the run is inconclusive (the kick did not take effect)"));
        assert!(md.contains(
            "| Verdict | **NOT CERTIFIED**: 0 MUST violations, 0 errors, 1 inconclusive case |"
        ));
        let xml = junit(&cert);
        assert!(
            xml.contains("<error message=\"inconclusive: not confirmed: step 4 (kick sub)"),
            "{xml}"
        );
        assert!(xml.contains("type=\"INCONCLUSIVE\""));
        assert!(xml.contains("name=\"broker_health\""));
        assert!(xml.contains("errors=\"1\""));
        let v: serde_json::Value = serde_json::from_str(&json(&cert, statements)).expect("json");
        assert_eq!(v["summary"]["inconclusive"], 1);
        assert_eq!(v["cases"][1]["verdict"]["status"], "inconclusive");
        assert_eq!(
            v["cases"][1]["set_aside"][0]["findings"][0]["statement"],
            "MQTT-3.1.2-4"
        );
        assert_eq!(v["incidents"][0]["kind"], "crashed");
        // The statement the inconclusive case names is not passed by it.
        let cov = crate::certify::coverage::coverage(&cert, statements);
        let st = cov
            .version(crate::certify::statements::SpecVersion::V311)
            .find(|s| s.id == "MQTT-3.1.2-4")
            .expect("row");
        assert_eq!(st.status.name(), "inconclusive");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human_duration(Duration::from_millis(83_400)), "1m 23.4s");
        assert_eq!(human_duration(Duration::from_secs(3723)), "1h 2m 3s");
    }
}

#[cfg(test)]
mod snapshots {
    use super::*;
    use crate::certify::statements::{SpecVersion, Statements};

    /// The sections the fixture's statements live in, so the snapshot stays reviewable while
    /// still showing pass, fail, skip and both kinds of untested rows.
    fn small_index() -> Statements {
        let all = Statements::embedded();
        let keep = |v: SpecVersion, prefixes: &[&str]| {
            all.iter(v)
                .filter(|s| prefixes.iter().any(|p| s.section.starts_with(p)))
                .cloned()
                .collect::<Vec<_>>()
        };
        Statements::new(
            keep(
                SpecVersion::V311,
                &["3.1.2.4 ", "3.1.2.5 ", "3.1.2.9 ", "4.3."],
            ),
            keep(SpecVersion::V5, &["4.3.3 "]),
        )
    }

    fn settings() -> insta::Settings {
        let mut s = insta::Settings::clone_current();
        s.set_snapshot_path("../../../snapshots");
        s.set_prepend_module_to_snapshot(false);
        s.set_omit_expression(true);
        s
    }

    #[test]
    fn report_snapshots() {
        let cert = fixture::sample();
        let index = small_index();
        assert!(index.len(SpecVersion::V311) > 5 && index.len(SpecVersion::V5) > 3);
        settings().bind(|| {
            insta::assert_snapshot!("certify-report-markdown", markdown(&cert, &index));
            insta::assert_snapshot!("certify-report-junit", junit(&cert));
            insta::assert_snapshot!("certify-report-terminal", terminal(&cert, &index));
        });
    }
}
