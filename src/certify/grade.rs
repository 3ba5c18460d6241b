//! A finished run → graded findings and the alternatives the broker chose.
//!
//! The grade comes from the spec, never from the checker's opinion:
//! - a checker failure cites one statement; MUST / MUST NOT → [`Grade::Must`], SHOULD /
//!   SHOULD NOT → [`Grade::Should`]. A MAY statement can never be broken, so a checker citing
//!   one (or an id no spec has) is a bug in the checker, reported as [`Grade::Error`] with that
//!   text rather than held against the broker;
//! - a failed `expect` step is graded by the strongest statement the scenario names in `spec:`
//!   (it cites those), MUST when it names none (and says so);
//! - `sim`/`runner` failures (the run itself could not be carried out) → [`Grade::Error`];
//! - the checkers' notes (the permitted options the broker took) become [`Choice`]s: they pass.

use crate::certify::coverage::scenario_versions;
use crate::certify::statements::{Level, SpecVersion, Statement, Statements};
use crate::certify::{Choice, Finding, Grade};
use crate::history::checkers::CheckerName;
use crate::scenario::Scenario;
use crate::sim::{Failure, RunReport};

/// Separates the statement ids of one finding that cites several (an `expect` failure).
pub const STATEMENT_SEPARATOR: &str = ", ";

impl Finding {
    /// The statement ids this finding cites (none for an `Error` without one).
    pub fn statement_ids(&self) -> impl Iterator<Item = &str> {
        self.statement
            .split(STATEMENT_SEPARATOR)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

/// Grades every failure of a run and turns its notes into choices.
pub fn grade(
    scenario: &Scenario,
    report: &RunReport,
    statements: &Statements,
) -> (Vec<Finding>, Vec<Choice>) {
    let versions = scenario_versions(scenario);
    let findings = report
        .failures
        .iter()
        .map(|f| grade_failure(scenario, &versions, f, statements))
        .collect();
    let choices = report
        .notes
        .iter()
        .map(|(note, &count)| {
            // The sim writes notes as "checker: text".
            let (checker, text) = match note.split_once(": ") {
                Some((c, t)) if is_checker(c) => (c.to_string(), t.to_string()),
                _ => (String::new(), note.clone()),
            };
            Choice {
                checker,
                text,
                count,
            }
        })
        .collect();
    (findings, choices)
}

fn is_checker(name: &str) -> bool {
    CheckerName::ALL.iter().any(|c| c.as_str() == name)
}

fn grade_of(level: Level) -> Option<Grade> {
    match level {
        Level::Must | Level::MustNot => Some(Grade::Must),
        Level::Should | Level::ShouldNot => Some(Grade::Should),
        Level::May => None,
    }
}

fn versions_text(versions: &[SpecVersion]) -> String {
    versions
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn grade_failure(
    scenario: &Scenario,
    versions: &[SpecVersion],
    f: &Failure,
    statements: &Statements,
) -> Finding {
    let base = Finding {
        grade: Grade::Error,
        statement: f.spec.clone(),
        checker: f.kind.clone(),
        owed: f.owed.clone(),
        observed: f.happened.clone(),
        excerpt: f.text.clone(),
    };
    if f.kind == "expect" {
        return grade_expect(scenario, versions, base, statements);
    }
    if !is_checker(&f.kind) {
        // `sim`, `runner`: nothing was judged, so nothing is certified.
        return base;
    }
    match statements.resolve(versions, &f.spec) {
        None => Finding {
            grade: Grade::Error,
            observed: format!(
                "checker bug: {} cites {:?}, which is no statement of MQTT {} (it reported: {})",
                f.kind,
                f.spec,
                versions_text(versions),
                f.happened
            ),
            ..base
        },
        Some(s) => match grade_of(s.level) {
            Some(grade) => Finding { grade, ..base },
            None => Finding {
                grade: Grade::Error,
                observed: format!(
                    "checker bug: {} cites {} (MQTT {}), a MAY statement, which permits and \
                     can never be broken (it reported: {})",
                    f.kind, s.id, s.version, f.happened
                ),
                ..base
            },
        },
    }
}

/// An expectation is graded by the statements its scenario says it exercises.
fn grade_expect(
    scenario: &Scenario,
    versions: &[SpecVersion],
    base: Finding,
    statements: &Statements,
) -> Finding {
    // A step that names its own statement (raw expectations do) is graded by that one alone
    // and cites it, not the whole scenario's list.
    if let Some(own) = statements.resolve(versions, &base.statement) {
        let grade = match own.level {
            Level::Must | Level::MustNot => Some(Grade::Must),
            Level::Should | Level::ShouldNot => Some(Grade::Should),
            Level::May => None,
        };
        if let Some(grade) = grade {
            return Finding {
                grade,
                statement: own.id.clone(),
                ..base
            };
        }
    }
    let cited: Vec<&Statement> = scenario
        .spec
        .iter()
        .filter_map(|id| statements.resolve(versions, id))
        .collect();
    if let (true, Some(should)) = (cited.is_empty(), &scenario.should) {
        return Finding {
            grade: Grade::Should,
            statement: String::new(),
            owed: format!(
                "{} (a SHOULD of the spec, not numbered: {should})",
                base.owed
            ),
            ..base
        };
    }
    if cited.is_empty() {
        let why = if scenario.spec.is_empty() {
            "the scenario names no statement (`spec:`), so its expectation is graded MUST".into()
        } else {
            format!(
                "none of the scenario's statements ({}) is in the MQTT {} index, so its \
                 expectation is graded MUST",
                scenario.spec.join(", "),
                versions_text(versions)
            )
        };
        return Finding {
            grade: Grade::Must,
            statement: String::new(),
            owed: format!("{} ({why})", base.owed),
            ..base
        };
    }
    // Strongest first: a mandatory statement outranks a recommendation, which outranks a
    // permission.
    let rank = |s: &&Statement| match s.level {
        Level::Must | Level::MustNot => 0,
        Level::Should | Level::ShouldNot => 1,
        Level::May => 2,
    };
    let strongest = cited.iter().map(rank).min().unwrap_or(0);
    let ids: Vec<&str> = cited
        .iter()
        .filter(|s| rank(s) == strongest)
        .map(|s| s.id.as_str())
        .collect();
    let statement = ids.join(STATEMENT_SEPARATOR);
    match strongest {
        0 => Finding {
            grade: Grade::Must,
            statement,
            ..base
        },
        1 => Finding {
            grade: Grade::Should,
            statement,
            ..base
        },
        _ => Finding {
            grade: Grade::Error,
            observed: format!(
                "scenario bug: {} demands a behaviour its statements ({statement}) only permit \
                 (MAY); it reported: {}",
                scenario.name, base.observed
            ),
            statement,
            ..base
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certify::statements::{Actor, Observable};
    use crate::history::Trace;
    use crate::sim::Knobs;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn scenario(yaml: &str) -> Scenario {
        crate::scenario::parse("t.yaml", yaml).expect("test scenario parses")
    }

    const V311_SCENARIO: &str = "
spec: [MQTT-4.3.3-2]
clients: {a: {}}
steps:
  - connect: a
";

    fn report(failures: Vec<Failure>, notes: &[(&str, usize)]) -> RunReport {
        RunReport {
            scenario: "t".into(),
            seed: 7,
            knobs: Knobs {
                tick_ms: 1,
                min_latency_ms: 0,
                max_latency_ms: 0,
            },
            trace: Trace::new(),
            failures,
            notes: notes
                .iter()
                .map(|(n, c)| (n.to_string(), *c))
                .collect::<BTreeMap<_, _>>(),
            simulated: Duration::from_secs(1),
            unconfirmed: Vec::new(),
            nemesis_faults: 0,
            nemesis_effective: 0,
        }
    }

    fn failure(kind: &str, spec: &str) -> Failure {
        Failure {
            kind: kind.into(),
            spec: spec.into(),
            text: format!("[{spec}] {kind} excerpt"),
            owed: "owed thing".into(),
            happened: "what happened".into(),
        }
    }

    fn statement(version: SpecVersion, id: &str, level: Level) -> Statement {
        Statement {
            version,
            id: id.into(),
            section: "9.9 Test".into(),
            actor: Actor::Server,
            level,
            observable: Observable::Yes,
            summary: "test".into(),
        }
    }

    /// An index with one statement per level, to grade against levels the real index lacks
    /// (every numbered statement of both specs is MUST or MUST NOT).
    fn levels_index() -> Statements {
        let v311 = vec![
            statement(SpecVersion::V311, "MQTT-9.0.0-1", Level::Must),
            statement(SpecVersion::V311, "MQTT-9.0.0-2", Level::MustNot),
            statement(SpecVersion::V311, "MQTT-9.0.0-3", Level::Should),
            statement(SpecVersion::V311, "MQTT-9.0.0-4", Level::ShouldNot),
            statement(SpecVersion::V311, "MQTT-9.0.0-5", Level::May),
        ];
        Statements::new(v311, Vec::new())
    }

    #[test]
    fn checker_failure_graded_by_its_statement_level() {
        let s = scenario(V311_SCENARIO);
        let index = levels_index();
        let cases = [
            ("MQTT-9.0.0-1", Grade::Must),
            ("MQTT-9.0.0-2", Grade::Must),
            ("MQTT-9.0.0-3", Grade::Should),
            ("MQTT-9.0.0-4", Grade::Should),
        ];
        for (id, want) in cases {
            let (findings, _) = grade(&s, &report(vec![failure("qos2", id)], &[]), &index);
            assert_eq!(findings.len(), 1);
            assert_eq!(findings[0].grade, want, "{id}");
            assert_eq!(findings[0].statement, id);
            assert_eq!(findings[0].checker, "qos2");
            assert_eq!(findings[0].owed, "owed thing");
            assert_eq!(findings[0].observed, "what happened");
            assert!(findings[0].excerpt.contains("excerpt"));
        }
    }

    #[test]
    fn a_checker_citing_may_is_a_checker_bug_not_a_broker_failure() {
        let s = scenario(V311_SCENARIO);
        let (findings, _) = grade(
            &s,
            &report(vec![failure("qos1", "MQTT-9.0.0-5")], &[]),
            &levels_index(),
        );
        assert_eq!(findings[0].grade, Grade::Error);
        assert!(findings[0]
            .observed
            .starts_with("checker bug: qos1 cites MQTT-9.0.0-5"));
        assert!(findings[0].observed.contains("MAY"));
    }

    #[test]
    fn a_checker_citing_an_unknown_id_is_a_checker_bug() {
        let s = scenario(V311_SCENARIO);
        let (findings, _) = grade(
            &s,
            &report(vec![failure("will", "MQTT-99.1.1-1")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Error);
        assert!(findings[0].observed.contains("no statement of MQTT 3.1.1"));
    }

    #[test]
    fn real_checker_ids_grade_must_in_the_embedded_index() {
        // qos2's 3.1.1 id: exactly-once delivery is a MUST.
        let s = scenario(V311_SCENARIO);
        let (findings, _) = grade(
            &s,
            &report(vec![failure("qos2", "MQTT-4.3.3-2")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Must);
    }

    #[test]
    fn expect_graded_by_strongest_scenario_statement() {
        let index = levels_index();
        let s = scenario(
            "
spec: [MQTT-9.0.0-5, MQTT-9.0.0-3, MQTT-9.0.0-4]
clients: {a: {}}
steps:
  - connect: a
",
        );
        let (findings, _) = grade(&s, &report(vec![failure("expect", "")], &[]), &index);
        assert_eq!(findings[0].grade, Grade::Should);
        assert_eq!(findings[0].statement, "MQTT-9.0.0-3, MQTT-9.0.0-4");
        assert_eq!(
            findings[0].statement_ids().collect::<Vec<_>>(),
            ["MQTT-9.0.0-3", "MQTT-9.0.0-4"]
        );

        let s = scenario(
            "
spec: [MQTT-9.0.0-3, MQTT-9.0.0-1]
clients: {a: {}}
steps:
  - connect: a
",
        );
        let (findings, _) = grade(&s, &report(vec![failure("expect", "")], &[]), &index);
        assert_eq!(findings[0].grade, Grade::Must);
        assert_eq!(findings[0].statement, "MQTT-9.0.0-1");
    }

    #[test]
    fn expect_naming_its_own_statement_cites_only_that_one() {
        let index = Statements::embedded();
        let s = scenario(V311_SCENARIO);
        let (findings, _) = grade(
            &s,
            &report(vec![failure("expect", "MQTT-3.1.3-8")], &[]),
            index,
        );
        assert_eq!(findings[0].grade, Grade::Must);
        assert_eq!(findings[0].statement, "MQTT-3.1.3-8");
    }

    #[test]
    fn expect_testing_an_unnumbered_should_is_graded_should() {
        let index = Statements::embedded();
        let s = scenario(
            "
spec: []
should: '§4.7.2: the Server SHOULD prevent $-topic exchange'
clients: {a: {}}
steps:
  - connect: a
",
        );
        let (findings, _) = grade(&s, &report(vec![failure("expect", "")], &[]), index);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].grade, Grade::Should);
        assert!(findings[0].owed.contains("§4.7.2"), "{:?}", findings[0]);
    }

    #[test]
    fn expect_without_spec_is_must_and_says_so() {
        let s = scenario("clients: {a: {}}\nsteps:\n  - connect: a\n");
        let (findings, _) = grade(
            &s,
            &report(vec![failure("expect", "")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Must);
        assert_eq!(findings[0].statement, "");
        assert!(findings[0].owed.contains("names no statement"));
    }

    #[test]
    fn expect_citing_only_may_is_a_scenario_bug() {
        let s = scenario("spec: [MQTT-9.0.0-5]\nclients: {a: {}}\nsteps:\n  - connect: a\n");
        let (findings, _) = grade(
            &s,
            &report(vec![failure("expect", "")], &[]),
            &levels_index(),
        );
        assert_eq!(findings[0].grade, Grade::Error);
        assert!(findings[0].observed.starts_with("scenario bug"));
    }

    #[test]
    fn sim_and_runner_failures_are_errors() {
        let s = scenario(V311_SCENARIO);
        let (findings, _) = grade(
            &s,
            &report(vec![failure("sim", ""), failure("runner", "")], &[]),
            Statements::embedded(),
        );
        assert!(findings.iter().all(|f| f.grade == Grade::Error));
        assert_eq!(findings.len(), 2);
    }

    #[test]
    fn permitted_options_pass_and_are_recorded_as_choices() {
        // Each permitted alternative the checkers note — either option of each choice the spec
        // leaves — yields a choice and never a finding.
        let s = scenario(V311_SCENARIO);
        let notes = [
            ("qos0: one copy per overlapping subscription", 2),
            ("qos0: one copy in total", 1),
            ("will: will published on takeover (3.1.1)", 1),
            ("will: no will on takeover (3.1.1)", 1),
            (
                "ordering: order across QoS levels: not preserved (permitted)",
                3,
            ),
            ("ordering: order across QoS levels: preserved", 4),
            (
                "qos1: QoS 1 message delivered more than once (permitted)",
                5,
            ),
        ];
        let (findings, choices) = grade(&s, &report(vec![], &notes), Statements::embedded());
        assert!(findings.is_empty());
        assert_eq!(choices.len(), notes.len());
        let c = choices
            .iter()
            .find(|c| c.text == "one copy per overlapping subscription")
            .expect("choice recorded");
        assert_eq!(c.checker, "qos0");
        assert_eq!(c.count, 2);
        assert!(choices.iter().all(|c| !c.checker.is_empty()));
    }

    #[test]
    fn v5_scenarios_resolve_v5_ids() {
        // MQTT-4.3.3-10 exists only in 5.0; a v5 scenario's qos2 failure grades MUST.
        let s = scenario("clients: {a: {protocol: v5}}\nsteps:\n  - connect: a\n");
        let (findings, _) = grade(
            &s,
            &report(vec![failure("qos2", "MQTT-4.3.3-10")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Must);
    }

    #[test]
    fn real_simulator_runs_grade_as_the_spec_says() {
        // The simqtt broker in the simulator: the library's overlapping-subscriptions scenario
        // passes, and whichever permitted option the broker took is a choice, not a finding.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios/qos/overlapping-subscriptions.yaml");
        let s = crate::scenario::load(&path).expect("library scenario");
        let report = crate::sim::run(&s, 1);
        let (findings, choices) = grade(&s, &report, Statements::embedded());
        assert!(findings.is_empty(), "{findings:#?}");
        assert!(
            choices
                .iter()
                .any(|c| c.checker == "qos0" || c.checker == "subscription"),
            "{choices:#?}"
        );

        // The same broker with an expectation nothing can meet: the failed step is graded by
        // the scenario's statements (all MUST) and cites them.
        let s = scenario(
            "
spec: [MQTT-4.3.2-2, MQTT-3.3.5-1]
clients: {sub: {}, pub: {}}
steps:
  - connect: sub
  - subscribe: {client: sub, filter: a, qos: 1}
  - connect: pub
  - expect_messages: {client: sub, within: 1s, messages: [{from: pub, count: 1}]}
",
        );
        let report = crate::sim::run(&s, 1);
        let (findings, _) = grade(&s, &report, Statements::embedded());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].grade, Grade::Must);
        assert_eq!(findings[0].checker, "expect");
        assert_eq!(findings[0].statement, "MQTT-4.3.2-2, MQTT-3.3.5-1");
        assert!(!findings[0].observed.is_empty());
    }
}
