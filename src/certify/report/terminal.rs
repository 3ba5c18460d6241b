//! The summary a person reads at the end of `simqtt certify`: one line per scenario, totals,
//! findings by grade, the failures with their rerun commands, coverage, and the verdict.

use std::fmt::Write;

use super::{case_name, grade_name, health_line, human_duration, scenario_rows, summary};
use crate::certify::coverage::coverage;
use crate::certify::statements::{SpecVersion, Statements};
use crate::certify::{Certification, Grade, Verdict};
use crate::timeline::message_of;

/// Longest scenario name shown before it is cut (the table stays one line per scenario).
const NAME_WIDTH_MAX: usize = 60;
/// Findings listed per case; the reports have the rest.
const FINDINGS_SHOWN_PER_CASE: usize = 3;

pub fn terminal(cert: &Certification, statements: &Statements) -> String {
    let mut out = String::new();
    let version = cert
        .broker_version
        .as_deref()
        .unwrap_or("version not offered");
    let _ = writeln!(
        out,
        "simqtt {} certify {} ({version})",
        cert.simqtt_version, cert.broker
    );
    let _ = writeln!(out, "profile: {}", cert.profile);
    let _ = writeln!(
        out,
        "started {}, took {}",
        cert.started,
        human_duration(cert.duration)
    );
    if let Some(health) = health_line(cert) {
        let _ = writeln!(out, "BROKER HEALTH: {health}");
    }
    let _ = writeln!(out);

    let rows = scenario_rows(cert);
    let width = rows
        .iter()
        .map(|r| r.scenario.chars().count())
        .max()
        .unwrap_or(0)
        .clamp("scenario".len(), NAME_WIDTH_MAX);
    let line = |out: &mut String, name: &str, cols: [String; 6]| {
        let name = cut(name, width);
        let _ = writeln!(
            out,
            "{name:<width$}  {:>5}  {:>6}  {:>6}  {:>7}  {:>7}  {:>6}",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5]
        );
    };
    line(
        &mut out,
        "scenario",
        ["runs", "passed", "failed", "inconcl", "skipped", "SHOULD"].map(String::from),
    );
    for r in &rows {
        line(
            &mut out,
            &r.scenario,
            [
                r.runs,
                r.passed,
                r.failed,
                r.inconclusive,
                r.skipped,
                r.should,
            ]
            .map(|n| n.to_string()),
        );
    }
    let s = summary(cert);
    let _ = writeln!(out, "{}", "-".repeat(width + 51));
    line(
        &mut out,
        &format!("total ({} scenarios)", s.scenarios),
        [
            s.runs,
            s.passed,
            s.failed,
            s.inconclusive,
            s.skipped,
            s.should,
        ]
        .map(|n| n.to_string()),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "findings: {} MUST violation{}, {} SHOULD deviation{}, {} error{}; {} allowed alternative{} chosen",
        s.must,
        plural(s.must),
        s.should,
        plural(s.should),
        s.errors,
        plural(s.errors),
        s.choices,
        plural(s.choices)
    );

    let failing: Vec<_> = cert
        .cases
        .iter()
        .filter(|c| !c.findings.is_empty())
        .collect();
    if !failing.is_empty() {
        let _ = writeln!(out);
        for case in failing {
            for f in case.findings.iter().take(FINDINGS_SHOWN_PER_CASE) {
                let statement = if f.statement.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", f.statement)
                };
                let _ = writeln!(
                    out,
                    "{:<6} {}{statement} {}: {}",
                    grade_name(f.grade),
                    case_name(case),
                    f.checker,
                    f.observed
                );
                let _ = writeln!(out, "       owed: {}", f.owed);
            }
            if case.findings.len() > FINDINGS_SHOWN_PER_CASE {
                let _ = writeln!(
                    out,
                    "       … and {} more findings in this case (see the Markdown or JSON report)",
                    case.findings.len() - FINDINGS_SHOWN_PER_CASE
                );
            }
            // Every message the case's findings name, the ones cut above included.
            let mut messages: Vec<&str> = Vec::new();
            for id in case.findings.iter().filter_map(|f| message_of(&f.excerpt)) {
                if !messages.contains(&id) {
                    messages.push(id);
                }
            }
            if !messages.is_empty() {
                let _ = writeln!(out, "       messages: {}", messages.join(", "));
            }
            if case.findings.iter().any(|f| f.grade != Grade::Should) && !case.rerun.is_empty() {
                let _ = writeln!(out, "       rerun: {}", case.rerun);
            }
        }
    }

    let inconclusive: Vec<_> = cert.cases.iter().filter(|c| c.inconclusive()).collect();
    if !inconclusive.is_empty() {
        let _ = writeln!(out);
        for case in inconclusive {
            if let Verdict::Inconclusive { reason } = &case.verdict {
                let _ = writeln!(out, "INCONCLUSIVE {}: {reason}", case_name(case));
            }
            if !case.rerun.is_empty() {
                let _ = writeln!(out, "       rerun: {}", case.rerun);
            }
        }
    }
    let set_aside: usize = cert
        .cases
        .iter()
        .flat_map(|c| &c.set_aside)
        .map(|s| s.findings.len())
        .sum();
    if set_aside > 0 {
        let _ = writeln!(
            out,
            "\n{set_aside} finding{} set aside, not charged to the broker (inconclusive runs, crash fallout, cascades, steps that could not run after a finding): see the Markdown or JSON report",
            plural(set_aside)
        );
    }

    let cov = coverage(cert, statements);
    let _ = writeln!(out);
    for v in SpecVersion::ALL {
        let t = cov.totals(v);
        let _ = writeln!(
            out,
            "MQTT {v}: {} statements: {} pass, {} fail, {} skip, {} inconclusive, {} untested ({} of them not observable from outside); {}/{} observable statements tested",
            t.statements,
            t.passed,
            t.failed,
            t.skipped,
            t.inconclusive,
            t.untested,
            t.untested_unobservable,
            t.observable_tested,
            t.observable
        );
    }
    let _ = writeln!(out);
    if s.certified {
        let _ = writeln!(out, "certified: yes");
    } else {
        let _ = writeln!(
            out,
            "certified: no ({} MUST violation{}, {} error{}, {} inconclusive case{})",
            s.must,
            plural(s.must),
            s.errors,
            plural(s.errors),
            s.inconclusive,
            plural(s.inconclusive)
        );
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The first `width` characters, with `…` when cut.
fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certify::report::fixture;

    #[test]
    fn summary_table_totals_findings_and_verdict() {
        let text = terminal(&fixture::sample(), Statements::embedded());
        assert!(text.contains("certify mqtt://127.0.0.1:1883 (mosquitto version 2.0.11)"));
        let row = text
            .lines()
            .find(|l| l.starts_with("faults/qos2-dropped-pubrec"))
            .expect("scenario row");
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1..], ["1", "0", "1", "0", "0", "0"]);
        let total = text
            .lines()
            .find(|l| l.starts_with("total (7 scenarios)"))
            .expect("total row");
        let cols: Vec<&str> = total.split_whitespace().collect();
        assert_eq!(cols[3..], ["6", "3", "2", "1", "1", "1"], "{total}");
        assert!(text.contains("findings: 1 MUST violation, 1 SHOULD deviation, 1 error; 2 allowed alternatives chosen"));
        assert!(text.contains("MUST   faults/qos2-dropped-pubrec seed 3 [MQTT-4.3.3-2] qos2"));
        assert!(text.contains("rerun: simqtt certify"));
        assert!(text.contains("MQTT 3.1.1: 141 statements"));
        assert!(text.contains("MQTT 5.0: 251 statements"));
        assert!(text
            .trim_end()
            .ends_with("certified: no (1 MUST violation, 1 error, 1 inconclusive case)"));
    }

    #[test]
    fn a_clean_run_is_certified() {
        let mut cert = fixture::sample();
        cert.cases.retain(|c| !c.failed() && !c.inconclusive());
        cert.incidents.clear();
        let text = terminal(&cert, Statements::embedded());
        assert!(text.trim_end().ends_with("certified: yes"));
        assert_eq!(cut("abcdef", 4), "abc…");
    }

    #[test]
    fn long_finding_lists_are_cut() {
        let mut cert = fixture::sample();
        let f = cert.cases[2].findings[0].clone();
        cert.cases[2].findings = vec![f; 10];
        let text = terminal(&cert, Statements::embedded());
        assert_eq!(text.matches("MUST   faults/qos2-dropped-pubrec").count(), 3);
        assert!(text.contains("… and 7 more findings in this case"));
    }
}
