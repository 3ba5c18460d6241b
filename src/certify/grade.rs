//! A finished run → graded findings and the alternatives the broker chose.
//!
//! The grade comes from the spec, never from the checker's opinion, and every finding cites
//! exactly one statement (or none, and says why):
//! - a checker failure cites one statement; MUST / MUST NOT → [`Grade::Must`], SHOULD /
//!   SHOULD NOT → [`Grade::Should`]. A MAY statement can never be broken, so a checker citing
//!   one (or an id no spec has) is a bug in the checker, reported as [`Grade::Error`] with that
//!   text rather than held against the broker;
//! - a failed step cites the one statement the step tests (`Scenario::citation`: its own
//!   `spec:`, the statement of the runner's own action, or the scenario's only id), read in the
//!   version its client speaks; MUST when the scenario names none (and says so), SHOULD with
//!   `should:`;
//! - what is not the broker's to break is never a finding against it: a step with `note:` (the
//!   spec permits the other outcome) and a statement that binds only the *sender* of a packet
//!   cited by a step where the broker only received (it sent nothing the step looks at) become
//!   notes ([`Choice`]s); a statement only a client is bound by is the harness's own failure
//!   ([`Grade::Error`]);
//! - `sim`/`runner` failures (the run itself could not be carried out) → [`Grade::Error`];
//! - a `client` checker failure (simqtt's own client, the instrument, broke a client duty) →
//!   [`Grade::Error`], a harness error, never a finding against the broker; but a PUBLISH or
//!   PUBREL the broker never answered cites the broker's duty as receiver, and is graded as
//!   that statement says;
//! - the checkers' notes (the permitted options the broker took) become [`Choice`]s: they pass.

use crate::certify::citations::broker_sends;
use crate::certify::coverage::scenario_versions;
use crate::certify::statements::{Actor, Level, Role, SpecVersion, Statements};
use crate::certify::{Choice, Finding, Grade};
use crate::history::checkers::CheckerName;
use crate::scenario::cite::Citation;
use crate::scenario::Scenario;
use crate::sim::{Failure, RunReport};

/// The checker name of findings and notes that come from a step (not a trace checker).
pub const EXPECT: &str = "expect";

impl Finding {
    /// The statement ids this finding cites: one, or none for a finding without one.
    pub fn statement_ids(&self) -> impl Iterator<Item = &str> {
        Some(self.statement.trim())
            .filter(|s| !s.is_empty())
            .into_iter()
    }
}

/// What one failure becomes.
enum Graded {
    Finding(Finding),
    Note(Choice),
}

/// Grades every failure of a run and turns its notes into choices.
pub fn grade(
    scenario: &Scenario,
    report: &RunReport,
    statements: &Statements,
) -> (Vec<Finding>, Vec<Choice>) {
    let versions = scenario_versions(scenario);
    let mut findings = Vec::new();
    let mut choices: Vec<Choice> = report
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
    for f in &report.failures {
        match grade_failure(scenario, &versions, f, statements) {
            Graded::Finding(finding) => findings.push(finding),
            Graded::Note(choice) => choices.push(choice),
        }
    }
    (findings, choices)
}

/// The step a `sim` error names: the runner reports a step it could not carry out as
/// `step N (keyword): why` in what happened.
fn sim_error_step(f: &Finding) -> Option<usize> {
    if f.checker != "sim" || f.grade != Grade::Error {
        return None;
    }
    let rest = f.observed.strip_prefix("step ")?;
    rest.split(' ').next()?.parse().ok()
}

/// Takes out the `sim` errors that are fallout of a broker finding earlier in the same run: a
/// step the runner could not carry out (e.g. a raw `pubrec` answering a PUBLISH the broker
/// never sent) after an expectation failed with a MUST or SHOULD finding. The case is already
/// judged by that finding; the error says only that the scenario could not go on past it,
/// not that the harness broke, so it is set aside with that reason rather than reported as a
/// harness error. A `sim` error with no earlier failed expectation stays an error.
pub fn fallout_of_findings(findings: &mut Vec<Finding>) -> Option<crate::certify::SetAside> {
    let first = findings
        .iter()
        .filter(|f| f.checker == EXPECT && matches!(f.grade, Grade::Must | Grade::Should))
        .filter_map(|f| {
            let rest = f.owed.strip_prefix("step ")?;
            rest.split(' ').next()?.parse::<usize>().ok()
        })
        .min()?;
    let (aside, kept): (Vec<Finding>, Vec<Finding>) = std::mem::take(findings)
        .into_iter()
        .partition(|f| sim_error_step(f).is_some_and(|step| step > first));
    *findings = kept;
    (!aside.is_empty()).then(|| crate::certify::SetAside {
        reason: format!(
            "fallout: the scenario could not go on after step {first} failed (the finding \
             there); a later step needed what the broker did not do"
        ),
        findings: aside,
    })
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

/// The step a failure of a step reports: the runner's `owed` starts `step N (keyword)`.
pub fn failed_step(f: &Failure) -> Option<usize> {
    let rest = f.owed.strip_prefix("step ")?;
    let number: usize = rest.split(' ').next()?.parse().ok()?;
    number.checked_sub(1)
}

fn grade_failure(
    scenario: &Scenario,
    versions: &[SpecVersion],
    f: &Failure,
    statements: &Statements,
) -> Graded {
    let base = Finding {
        grade: Grade::Error,
        statement: f.spec.clone(),
        checker: f.kind.clone(),
        owed: f.owed.clone(),
        observed: f.happened.clone(),
        excerpt: f.text.clone(),
    };
    if f.kind == EXPECT {
        return grade_expect(scenario, versions, f, base, statements);
    }
    if !is_checker(&f.kind) {
        // `sim`, `runner`: nothing was judged, so nothing is certified.
        return Graded::Finding(base);
    }
    if f.kind == CheckerName::Client.as_str() {
        // The client checker judges simqtt's own client, the instrument of certification: its
        // finding says the harness misbehaved, never what the broker under test did. Except
        // one: a PUBLISH or PUBREL the client wrote on a healthy connection that the broker
        // never answered. That statement binds the broker as the receiver of what the client
        // sent, so it is graded as any other broker finding.
        let receiver_duty = statements
            .resolve(versions, &f.spec)
            .filter(|s| s.role == Role::Receiver && s.actor != Actor::Client);
        if let Some(s) = receiver_duty {
            if let Some(grade) = grade_of(s.level) {
                return Graded::Finding(Finding { grade, ..base });
            }
        }
        return Graded::Finding(Finding {
            grade: Grade::Error,
            observed: format!(
                "harness error: simqtt's own client broke a duty of the client ({}), so this \
                 case cannot judge the broker (it reported: {})",
                f.spec, f.happened
            ),
            ..base
        });
    }
    Graded::Finding(match statements.resolve(versions, &f.spec) {
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
    })
}

/// A failed step is graded by the one statement it tests.
fn grade_expect(
    scenario: &Scenario,
    versions: &[SpecVersion],
    f: &Failure,
    base: Finding,
    statements: &Statements,
) -> Graded {
    let step = failed_step(f).filter(|&i| i < scenario.steps.len());
    let citation = match step {
        Some(i) => scenario.citation(i),
        // Not a step the scenario has: trust what the runner cited.
        None if f.spec.is_empty() => Citation::None,
        None => Citation::Statement(f.spec.clone(), crate::scenario::cite::Source::Own),
    };
    let note = |why: String| {
        Graded::Note(Choice {
            checker: EXPECT.into(),
            text: format!("{}: {} ({why})", f.owed, f.happened),
            count: 1,
        })
    };
    let id = match citation {
        Citation::Note(why) => return note(format!("permitted: {why}")),
        Citation::None => return Graded::Finding(unnumbered(scenario, versions, base)),
        Citation::Statement(id, _) => id,
    };
    // Read in the version the step's client speaks, then the scenario's others.
    let mut order: Vec<SpecVersion> = step
        .map(|i| vec![SpecVersion::from(scenario.step_version(i))])
        .unwrap_or_default();
    for &v in versions {
        if !order.contains(&v) {
            order.push(v);
        }
    }
    let Some(s) = statements.resolve(&order, &id) else {
        return Graded::Finding(Finding {
            grade: Grade::Error,
            statement: id.clone(),
            observed: format!(
                "scenario bug: {} cites {id}, which is no statement of MQTT {}; it reported: {}",
                scenario.name,
                versions_text(&order),
                base.observed
            ),
            ..base
        });
    };
    let base = Finding {
        statement: s.id.clone(),
        ..base
    };
    if s.actor == Actor::Client {
        return Graded::Finding(Finding {
            grade: Grade::Error,
            observed: format!(
                "{} binds the client, not the broker: the harness's own client did not do it, so \
                 nothing is charged to the broker (it reported: {})",
                s.id, base.observed
            ),
            ..base
        });
    }
    let broker_sent = step.is_none_or(|i| broker_sends(&scenario.steps[i]));
    if s.role == Role::Sender && !broker_sent {
        return note(format!(
            "{} {} binds the sender of the packet; the broker only received it, and no \
             statement the step names obliges a receiver to refuse it",
            s.id, s.version
        ));
    }
    Graded::Finding(match grade_of(s.level) {
        Some(grade) => Finding { grade, ..base },
        None => Finding {
            grade: Grade::Error,
            observed: format!(
                "scenario bug: {} demands a behaviour {} ({}) only permits (MAY); it reported: {}",
                scenario.name, s.id, s.version, base.observed
            ),
            ..base
        },
    })
}

/// A failed step of a scenario that names no statement: SHOULD with `should:`, else MUST,
/// saying so.
fn unnumbered(scenario: &Scenario, versions: &[SpecVersion], base: Finding) -> Finding {
    if let Some(should) = &scenario.should {
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
    let known: Vec<&str> = scenario.spec.iter().map(String::as_str).collect();
    let why = if known.is_empty() {
        "the scenario names no statement (`spec:`), so its expectation is graded MUST".to_string()
    } else {
        format!(
            "the step names none of the scenario's statements ({}) in MQTT {}, so it is graded MUST",
            known.join(", "),
            versions_text(versions)
        )
    };
    Finding {
        grade: Grade::Must,
        statement: String::new(),
        owed: format!("{} ({why})", base.owed),
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certify::statements::{Observable, Statement};
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
            role: Role::Any,
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
    fn a_client_duty_broken_under_certify_is_a_harness_error_not_a_finding() {
        let s = scenario(V311_SCENARIO);
        let (findings, _) = grade(
            &s,
            &report(vec![failure("client", "MQTT-3.3.1-1")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Error);
        assert!(findings[0].observed.starts_with("harness error"));
        assert_eq!(findings[0].checker, "client");
    }

    #[test]
    fn an_unanswered_publish_the_client_checker_finds_is_the_brokers() {
        // 3.1.1 MQTT-4.3.2-2: the QoS 1 receiver answers PUBACK. The broker is that receiver.
        let s = scenario(V311_SCENARIO);
        let (findings, _) = grade(
            &s,
            &report(vec![failure("client", "MQTT-4.3.2-2")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Must);
        assert_eq!(findings[0].statement, "MQTT-4.3.2-2");
        // 5.0 MQTT-4.3.3-11: PUBREL answered with PUBCOMP.
        let s = scenario("clients: {a: {protocol: v5}}\nsteps:\n  - connect: a\n");
        let (findings, _) = grade(
            &s,
            &report(vec![failure("client", "MQTT-4.3.3-11")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Must);
        // 5.0 MQTT-4.3.2-2 is the sender's DUP 0 on a first PUBLISH: the client's own.
        let (findings, _) = grade(
            &s,
            &report(vec![failure("client", "MQTT-4.3.2-2")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Error);
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

    /// A failed step as the runner reports it: `owed` starts `step N (keyword)`.
    fn step_failure(step: usize, keyword: &str, spec: &str) -> Failure {
        Failure {
            kind: "expect".into(),
            spec: spec.into(),
            text: format!("step {step} ({keyword}) excerpt"),
            owed: format!("step {step} ({keyword})"),
            happened: "what happened".into(),
        }
    }

    #[test]
    fn a_failed_step_cites_the_one_statement_it_tests() {
        let index = Statements::embedded();
        let s = scenario(
            "
spec: [MQTT-3.2.2-2, MQTT-3.1.2-5]
clients: {sub: {clean_session: false}, pub: {}}
steps:
  - connect: sub
  - expect_session_present: {client: sub, present: true, spec: MQTT-3.2.2-2}
  - expect_messages: {client: sub, within: 1s, messages: [{from: pub}], spec: MQTT-3.1.2-5}
",
        );
        // The scenario's step decides, not what the runner wrote into the failure.
        let (findings, _) = grade(
            &s,
            &report(
                vec![step_failure(3, "expect_messages", "MQTT-3.2.2-2")],
                &[],
            ),
            index,
        );
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].grade, Grade::Must);
        assert_eq!(findings[0].statement, "MQTT-3.1.2-5");
        assert_eq!(
            findings[0].statement_ids().collect::<Vec<_>>(),
            ["MQTT-3.1.2-5"]
        );
        // The runner's own action cites what it tests: a CONNECT left unanswered.
        let (findings, _) = grade(
            &s,
            &report(vec![step_failure(1, "connect", "")], &[]),
            index,
        );
        assert_eq!(findings[0].statement, "MQTT-3.1.4-4");
        assert_eq!(findings[0].grade, Grade::Must);
    }

    #[test]
    fn a_statement_is_read_in_the_version_its_step_speaks() {
        // MQTT-3.1.2-8 is the will in both versions, MQTT-3.1.2-22 is a client duty in 3.1.1
        // (password flag) and the server's keepalive close in 5.0: the v5 client's step is
        // graded by the 5.0 statement although the scenario also speaks 3.1.1.
        let s = scenario(
            "
spec: [MQTT-3.1.2-22, MQTT-3.1.2-8]
clients: {old: {}, r: {host: raw, protocol: v5, keepalive: 2s}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, closed: true, within: 4s, spec: MQTT-3.1.2-22}
  - connect: old
  - expect_session_present: {client: old, present: false, spec: MQTT-3.1.2-8}
",
        );
        let (findings, _) = grade(
            &s,
            &report(vec![step_failure(2, "expect_raw", "MQTT-3.1.2-22")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Must, "{findings:#?}");
        assert_eq!(findings[0].statement, "MQTT-3.1.2-22");
    }

    #[test]
    fn a_sender_only_statement_never_fails_the_receiving_broker() {
        // 5.0 [MQTT-1.5.5-1] binds whoever encodes a Variable Byte Integer. Cited for the
        // close after a PINGREQ with a two-byte Remaining Length, the broker only received:
        // a note, never a MUST.
        let s = scenario(
            "
spec: [MQTT-1.5.5-1]
clients: {r: {host: raw, protocol: v5}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x00}
  - raw: {client: r, send: \"c0 80 00\"}
  - expect_raw: {client: r, closed: true, within: 2s}
",
        );
        let (findings, choices) = grade(
            &s,
            &report(vec![step_failure(4, "expect_raw", "MQTT-1.5.5-1")], &[]),
            Statements::embedded(),
        );
        assert!(findings.is_empty(), "{findings:#?}");
        assert_eq!(choices.len(), 1);
        assert_eq!(choices[0].checker, EXPECT);
        assert!(choices[0].text.contains("binds the sender"), "{choices:#?}");
        // The same statement judging what the broker itself sends is its own.
        let s = scenario(
            "
spec: [MQTT-1.5.5-1]
clients: {r: {host: raw, protocol: v5}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x00, max_len: 5}
",
        );
        let (findings, _) = grade(
            &s,
            &report(vec![step_failure(2, "expect_raw", "MQTT-1.5.5-1")], &[]),
            Statements::embedded(),
        );
        assert_eq!(findings[0].grade, Grade::Must);
    }

    /// Recertification of issue 13, mosquitto `session/raw-qos2-outlives-expiry-v5`: the broker
    /// did not resend the PUBLISH (a MUST finding at step 18), so step 21's raw `pubrec` had
    /// nothing to answer; that runner error is the finding's fallout, not a harness error.
    #[test]
    fn a_sim_error_after_a_failed_expectation_is_set_aside_as_fallout() {
        let finding = |grade: Grade, checker: &str, owed: &str, observed: &str| Finding {
            grade,
            statement: String::new(),
            checker: checker.into(),
            owed: owed.into(),
            observed: observed.into(),
            excerpt: String::new(),
        };
        let must = finding(
            Grade::Must,
            EXPECT,
            "step 18 (expect_raw): PUBLISH",
            "nothing arrived",
        );
        let after = finding(
            Grade::Error,
            "sim",
            "the scenario runs to its end",
            "step 21 (raw): pubrec answers a packet with an identifier, and s received none",
        );
        let mut findings = vec![must.clone(), after.clone()];
        let aside = fallout_of_findings(&mut findings).expect("set aside");
        assert_eq!(findings, vec![must.clone()]);
        assert_eq!(aside.findings, vec![after.clone()]);
        assert!(aside.reason.contains("after step 18"), "{}", aside.reason);

        // Without an earlier failed expectation (or before it) the error stays an error.
        for mut findings in [
            vec![after.clone()],
            vec![
                finding(
                    Grade::Must,
                    EXPECT,
                    "step 23 (expect_raw): PUBREL",
                    "nothing arrived",
                ),
                after.clone(),
            ],
        ] {
            let before = findings.clone();
            assert!(fallout_of_findings(&mut findings).is_none());
            assert_eq!(findings, before);
        }
    }

    #[test]
    fn a_note_step_and_a_client_duty_are_never_broker_findings() {
        let s = scenario(
            "
spec: [MQTT-3.1.2-23]
clients: {a: {keepalive: 1s}}
steps:
  - connect: a
  - expect_session_present: {client: a, present: false}
  - expect_session_present: {client: a, present: false, note: a permitted outcome}
",
        );
        let (findings, choices) = grade(
            &s,
            &report(
                vec![
                    step_failure(2, "expect_session_present", "MQTT-3.1.2-23"),
                    step_failure(3, "expect_session_present", ""),
                ],
                &[],
            ),
            Statements::embedded(),
        );
        // 3.1.1 [MQTT-3.1.2-23] is the client's keepalive duty: the harness's, not the broker's.
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].grade, Grade::Error);
        assert!(findings[0].observed.contains("binds the client"));
        assert_eq!(choices.len(), 1);
        assert!(
            choices[0].text.contains("a permitted outcome"),
            "{choices:#?}"
        );
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
        let s = scenario(
            "spec: [MQTT-9.0.0-5]\nclients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: true}\n",
        );
        let (findings, _) = grade(
            &s,
            &report(
                vec![step_failure(2, "expect_session_present", "MQTT-9.0.0-5")],
                &[],
            ),
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

    /// The steps the citation rules rely on, run on the simqtt broker in the simulator.
    #[test]
    fn again_optional_and_premises_behave_as_documented() {
        let run = |yaml: &str| {
            let s = scenario(yaml);
            let report = crate::sim::run(&s, 1);
            (s, report)
        };
        // `again` checks the same CONNACK once more, under its own statement.
        let (s, report) = run("
spec: [MQTT-3.2.2-1]
clients: {r: {host: raw}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x00}
  - expect_raw: {client: r, packet: connack, session_present: true, again: true}
  - raw: {client: r, send: pingreq}
  - expect_raw: {client: r, packet: pingresp}
");
        assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
        assert_eq!(report.failures[0].spec, "MQTT-3.2.2-1");
        assert!(report.failures[0].owed.starts_with("step 3 (expect_raw)"));
        // It looked at the CONNACK already taken, not at whatever came next.
        assert!(
            report.failures[0]
                .happened
                .contains("connack session_present=0"),
            "{:?}",
            report.failures[0].happened
        );
        let (findings, _) = grade(&s, &report, Statements::embedded());
        assert_eq!(findings[0].statement, "MQTT-3.2.2-1");
        // Without `again` the step would have taken the PINGRESP: the next step still gets it.
        assert!(report
            .failures
            .iter()
            .all(|f| !f.owed.starts_with("step 5")));

        // `optional` without `closed`: nothing by the deadline passes, another packet fails.
        let (_, report) = run("
clients: {r: {host: raw}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x00}
  - expect_raw: {client: r, packet: disconnect, optional: true, within: 1s}
  - raw: {client: r, send: pingreq}
  - expect_raw: {client: r, packet: disconnect, optional: true, within: 1s}
");
        assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
        assert!(report.failures[0].owed.starts_with("step 5"));
        assert!(
            report.failures[0].happened.contains("pingresp"),
            "{:#?}",
            report.failures
        );

        // With `closed: true` an optional packet that does not come leaves the close owed.
        let (_, report) = run("
clients: {r: {host: raw}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x00}
  - expect_raw: {client: r, packet: disconnect, optional: true, closed: true, within: 1s}
");
        assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
        assert_eq!(report.failures[0].happened, "the connection was still open");

        // A premise that does not hold stops the run: inconclusive, no finding, and the steps
        // after it (which would fail) are not run.
        let (s, report) = run("
spec: [MQTT-3.1.4-4]
clients: {r: {host: raw}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x05, assume: true}
  - expect_raw: {client: r, closed: true, within: 1s, spec: MQTT-3.1.4-4}
");
        assert!(report.failures.is_empty(), "{:#?}", report.failures);
        assert_eq!(report.outcome(), crate::sim::Outcome::Inconclusive);
        assert!(
            report.inconclusive()[0].contains("the scenario assumes"),
            "{:?}",
            report.inconclusive()
        );
        let (findings, _) = grade(&s, &report, Statements::embedded());
        assert!(findings.is_empty(), "{findings:#?}");
        // The simqtt broker names no Server Keep Alive: any bounds hold.
        let (_, report) = run("
clients: {r: {host: raw, protocol: v5}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, server_keep_alive: {min: 20s, max: 30s}, assume: true}
");
        assert!(report.passed(), "{:#?}", report.failures);

        // `expect_messages` with `again` judges the same deliveries, and says how they arrived.
        let (_, report) = run("
spec: [MQTT-4.5.0-1, MQTT-3.8.4-6]
clients: {sub: {}, pub: {}}
steps:
  - connect: sub
  - subscribe: {client: sub, filter: t, qos: 1}
  - connect: pub
  - publish: {client: pub, topic: t, qos: 1, count: 3}
  - expect_messages: {client: sub, within: 2s, messages: [{from: pub, count: 3}], spec: MQTT-4.5.0-1}
  - expect_messages: {client: sub, within: 1s, again: true, messages: [{from: pub, qos: 0, count: 3}], spec: MQTT-3.8.4-6}
");
        let expect: Vec<&Failure> = report
            .failures
            .iter()
            .filter(|f| f.kind == EXPECT)
            .collect();
        assert_eq!(expect.len(), 1, "{:#?}", report.failures);
        assert_eq!(expect[0].spec, "MQTT-3.8.4-6");
        assert!(
            expect[0]
                .happened
                .contains("got 0 (otherwise matching: 3 with qos 1)"),
            "{:?}",
            expect[0].happened
        );
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

        // The same broker with an expectation nothing can meet: the failed step cites the one
        // statement it names, as the runner reports it too.
        let s = scenario(
            "
spec: [MQTT-4.5.0-1, MQTT-3.3.5-1]
clients: {sub: {}, pub: {}}
steps:
  - connect: sub
  - subscribe: {client: sub, filter: a, qos: 1}
  - connect: pub
  - expect_messages: {client: sub, within: 1s, messages: [{from: pub, count: 1}], spec: MQTT-4.5.0-1}
",
        );
        let report = crate::sim::run(&s, 1);
        assert_eq!(report.failures[0].spec, "MQTT-4.5.0-1");
        assert!(report.failures[0].text.contains("[MQTT-4.5.0-1]"));
        let (findings, _) = grade(&s, &report, Statements::embedded());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].grade, Grade::Must);
        assert_eq!(findings[0].checker, "expect");
        assert_eq!(findings[0].statement, "MQTT-4.5.0-1");
        assert!(!findings[0].observed.is_empty());
    }
}
