//! The certification report in Markdown, keyed by the spec's normative statements: a header
//! (broker, version, date, profile, duration, the broker's health when it stopped answering,
//! verdict), the MUST violations, errors and SHOULD deviations each with scenario, seed, what
//! was owed, what the broker did, its timeline (a Mermaid sequence diagram) and the trace
//! excerpt, the inconclusive cases and the
//! findings set aside (not charged) with why, the allowed alternatives the broker chose, the
//! skipped scenarios with reasons, and every statement of both versions with its result,
//! grouped by version and section.

use std::fmt::Write;

use super::{case_name, choices, grade_name, health_line, human_duration, incident_text, summary};
use crate::certify::coverage::{coverage, StatementCoverage, Status, Via};
use crate::certify::statements::{Observable, SpecVersion, Statements};
use crate::certify::{CaseResult, Certification, Finding, Grade, Verdict};

pub fn markdown(cert: &Certification, statements: &Statements) -> String {
    let mut out = String::new();
    let s = summary(cert);
    let _ = writeln!(out, "# MQTT certification of {}\n", cell(&cert.broker));
    let verdict = if s.certified {
        "**CERTIFIED**: no MUST violation, no error".to_string()
    } else {
        format!(
            "**NOT CERTIFIED**: {} MUST violation{}, {} error{}, {} inconclusive case{}",
            s.must,
            plural(s.must),
            s.errors,
            plural(s.errors),
            s.inconclusive,
            plural(s.inconclusive)
        )
    };
    let _ = writeln!(out, "| | |\n|---|---|");
    let rows = [
        ("Broker", cert.broker.clone()),
        (
            "Broker version",
            cert.broker_version
                .clone()
                .map(|v| format!("{v} (from `$SYS/broker/version`)"))
                .unwrap_or_else(|| "not offered (`$SYS/broker/version` absent)".into()),
        ),
        ("Date", cert.started.clone()),
        ("Profile", cert.profile.clone()),
        ("Duration", human_duration(cert.duration)),
        ("simqtt", cert.simqtt_version.clone()),
        (
            "Broker health",
            health_line(cert)
                .map(|h| format!("**{h}**"))
                .unwrap_or_else(|| "answered throughout".into()),
        ),
        ("Verdict", verdict),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {} |", cell(&v));
    }
    let _ = writeln!(out);
    if !cert.incidents.is_empty() {
        let _ = writeln!(out, "## Broker incidents\n");
        let _ = writeln!(
            out,
            "The liveness guard checks between cases and while they run that the broker still answers new connections and held ones. Each time it did not, no finding was charged to the broker for what happened meanwhile: the cases it hit were rerun alone on the restarted broker (inconclusive without a restart command), and the one whose input broke it again carries one MUST robustness finding.\n"
        );
        for (n, i) in cert.incidents.iter().enumerate() {
            let _ = writeln!(out, "{}. {}", n + 1, one_line(&incident_text(i)));
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(
        out,
        "{} scenarios, {} cases (scenario × seed): {} passed, {} failed, {} inconclusive, {} skipped.\n",
        s.scenarios, s.cases, s.passed, s.failed, s.inconclusive, s.skipped
    );
    let _ = writeln!(
        out,
        "Findings: {} MUST violation{} (fail certification), {} SHOULD deviation{} (reported, do not fail), {} error{} (runs that could not be judged); {} allowed alternative{} chosen.\n",
        s.must,
        plural(s.must),
        s.should,
        plural(s.should),
        s.errors,
        plural(s.errors),
        s.choices,
        plural(s.choices)
    );
    let cov = coverage(cert, statements);
    let _ = writeln!(
        out,
        "| Spec | Statements | Pass | Fail | Skip | Inconclusive | Untested | of which not observable | Observable tested |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for v in SpecVersion::ALL {
        let t = cov.totals(v);
        let _ = writeln!(
            out,
            "| MQTT {v} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
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

    findings_section(
        &mut out,
        cert,
        statements,
        Grade::Must,
        "MUST violations",
        "These fail certification.",
    );
    findings_section(
        &mut out,
        cert,
        statements,
        Grade::Error,
        "Errors",
        "Runs the runner could not carry out; nothing was judged, so they fail certification too.",
    );
    findings_section(
        &mut out,
        cert,
        statements,
        Grade::Should,
        "SHOULD deviations",
        "Recommendations the broker does not follow; reported, they do not fail certification.",
    );

    let _ = writeln!(out, "## Inconclusive cases\n");
    let inconclusive: Vec<(&CaseResult, &String)> = cert
        .cases
        .iter()
        .filter_map(|c| match &c.verdict {
            Verdict::Inconclusive { reason } => Some((c, reason)),
            _ => None,
        })
        .collect();
    if inconclusive.is_empty() {
        let _ = writeln!(out, "None.\n");
    } else {
        let _ = writeln!(
            out,
            "Cases that ran but prove nothing either way: a fault or control step did not take effect, or the broker stopped answering and the case could not be rerun. They are not passes and fail certification.\n"
        );
        let _ = writeln!(out, "| Case | Why | Rerun |\n|---|---|---|");
        for (case, reason) in inconclusive {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` |",
                cell(&case_name(case)),
                cell(reason),
                case.rerun.replace('`', "'").replace('|', "\\|")
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Findings set aside\n");
    let aside: Vec<(&CaseResult, &crate::certify::SetAside)> = cert
        .cases
        .iter()
        .flat_map(|c| c.set_aside.iter().map(move |a| (c, a)))
        .collect();
    if aside.is_empty() {
        let _ = writeln!(out, "None.\n");
    } else {
        let _ = writeln!(
            out,
            "What runs found that is not charged to the broker, and why (an inconclusive run, the fallout of a crash, a cascade that vanished when the case was rerun alone).\n"
        );
        for (case, a) in aside {
            let _ = writeln!(out, "- {}: {}", cell(&case_name(case)), one_line(&a.reason));
            for f in &a.findings {
                let cited = if f.statement.is_empty() {
                    String::new()
                } else {
                    format!("[{}] ", f.statement)
                };
                let _ = writeln!(
                    out,
                    "  - {cited}{} {}: owed {}; observed {}",
                    grade_name(f.grade),
                    f.checker,
                    one_line(&f.owed),
                    one_line(&f.observed)
                );
            }
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Allowed alternatives chosen\n");
    let chosen = choices(cert);
    if chosen.is_empty() {
        let _ = writeln!(out, "None observed.\n");
    } else {
        let _ = writeln!(
            out,
            "Where the spec permits several behaviours, the checkers accept each and record the one the broker showed.\n"
        );
        let _ = writeln!(
            out,
            "| Checker | Behaviour | Times | Scenarios |\n|---|---|---|---|"
        );
        for c in &chosen {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                cell(&c.checker),
                cell(&c.text),
                c.count,
                cell(&c.scenarios.join(", "))
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Skipped scenarios\n");
    let skipped: Vec<(&CaseResult, &String)> = cert
        .cases
        .iter()
        .filter_map(|c| match &c.verdict {
            Verdict::Skipped { reason } => Some((c, reason)),
            _ => None,
        })
        .collect();
    if skipped.is_empty() {
        let _ = writeln!(out, "None.\n");
    } else {
        let _ = writeln!(out, "| Scenario | Reason |\n|---|---|");
        for (case, reason) in skipped {
            let _ = writeln!(out, "| {} | {} |", cell(&case.scenario), cell(reason));
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Gaps\n");
    let _ = writeln!(
        out,
        "Statements a black-box test can show (observable: yes) that no scenario of this run tested (skipped ones are listed under their statement below, not here).\n"
    );
    for v in SpecVersion::ALL {
        let gaps: Vec<&str> = cov
            .version(v)
            .filter(|s| s.observable == Observable::Yes && matches!(s.status, Status::Untested))
            .map(|s| s.id.as_str())
            .collect();
        if gaps.is_empty() {
            let _ = writeln!(out, "- MQTT {v}: none.");
        } else {
            let _ = writeln!(out, "- MQTT {v} ({}): {}", gaps.len(), gaps.join(", "));
        }
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## Normative statements\n");
    let _ = writeln!(
        out,
        "Every numbered statement of each version, in document order, with the scenarios that test it (named in `spec:` or checked by a checker the scenario runs; `*` marks the checker route). \"untested (not observable)\" marks statements a test talking to a broker from outside cannot show (client-only or invisible); the other untested ones are gaps in the scenario library.\n"
    );
    for v in SpecVersion::ALL {
        let _ = writeln!(out, "### MQTT {v}\n");
        let mut section = "";
        for st in cov.version(v) {
            if st.section != section {
                if !section.is_empty() {
                    let _ = writeln!(out);
                }
                section = &st.section;
                let _ = writeln!(out, "#### {}\n", cell(section));
                let _ = writeln!(
                    out,
                    "| Statement | Level | Actor | Observable | Result | Scenarios | Summary |"
                );
                let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                st.id,
                st.level,
                st.actor.as_str(),
                st.observable.as_str(),
                result_cell(st),
                cell(&scenario_list(st)),
                cell(&st.summary)
            );
        }
        let _ = writeln!(out);
    }
    out
}

/// Scenarios shown per statement before the cell says how many more (a statement every
/// checker run covers would otherwise list the whole library).
const SCENARIOS_SHOWN_MAX: usize = 6;

pub(super) fn scenario_list(st: &StatementCoverage) -> String {
    let mut names: Vec<String> = st
        .scenarios
        .iter()
        .take(SCENARIOS_SHOWN_MAX)
        .map(|(name, via)| match via {
            Via::Spec => name.clone(),
            Via::Checker => format!("{name}*"),
        })
        .collect();
    if st.scenarios.len() > SCENARIOS_SHOWN_MAX {
        names.push(format!(
            "and {} more",
            st.scenarios.len() - SCENARIOS_SHOWN_MAX
        ));
    }
    names.join(", ")
}

pub(super) fn result_cell(st: &StatementCoverage) -> String {
    match &st.status {
        Status::Passed { cases } => format!("pass ({})", cases.len()),
        Status::Failed { cases } => {
            let must = cases.iter().any(|c| c.grade == Some(Grade::Must));
            let label = if must {
                "**FAIL**"
            } else if cases.iter().any(|c| c.grade == Some(Grade::Error)) {
                "**ERROR**"
            } else {
                "SHOULD deviation"
            };
            let names: Vec<String> = cases
                .iter()
                .map(|c| match c.seed {
                    Some(seed) => format!("{} seed {seed}", c.scenario),
                    None => c.scenario.clone(),
                })
                .collect();
            format!("{label}: {}", names.join(", "))
        }
        Status::Inconclusive { cases } => format!("inconclusive ({} errored)", cases.len()),
        Status::Skipped { reasons } => format!("skip ({})", reasons.len()),
        Status::Untested if st.observable == Observable::No => "untested (not observable)".into(),
        Status::Untested => "untested".into(),
    }
}

/// Findings of one grade shown in full per case; the rest of that case's are listed one line
/// each (a randomised run can break one rule hundreds of times; the first few show how).
const FINDINGS_IN_FULL_PER_CASE: usize = 5;

fn findings_section(
    out: &mut String,
    cert: &Certification,
    statements: &Statements,
    grade: Grade,
    title: &str,
    blurb: &str,
) {
    let _ = writeln!(
        out,
        "## {title}
"
    );
    let mut n = 0;
    for case in &cert.cases {
        let of_grade: Vec<&Finding> = case.findings.iter().filter(|f| f.grade == grade).collect();
        for f in of_grade.iter().take(FINDINGS_IN_FULL_PER_CASE) {
            n += 1;
            if n == 1 {
                let _ = writeln!(out, "{blurb}\n");
            }
            finding(out, n, case, f, statements);
        }
        let rest = &of_grade[of_grade.len().min(FINDINGS_IN_FULL_PER_CASE)..];
        if !rest.is_empty() {
            let _ = writeln!(
                out,
                "{} more in {} (same seed; the JSON report has each with its trace excerpt):\n",
                rest.len(),
                cell(&case_name(case))
            );
            for f in rest {
                n += 1;
                let cited = if f.statement.is_empty() {
                    String::new()
                } else {
                    format!("[{}] ", f.statement)
                };
                let _ = writeln!(
                    out,
                    "- {n}. {cited}{}: owed {}; broker did {}",
                    f.checker,
                    one_line(&f.owed),
                    one_line(&f.observed)
                );
            }
            let _ = writeln!(out);
        }
    }
    if n == 0 {
        let _ = writeln!(out, "None.\n");
    }
}

fn finding(out: &mut String, n: usize, case: &CaseResult, f: &Finding, statements: &Statements) {
    let cited = if f.statement.is_empty() {
        String::new()
    } else {
        format!("[{}] ", f.statement)
    };
    let _ = writeln!(
        out,
        "### {n}. {}{} — {}\n",
        cited,
        cell(&case_name(case)),
        grade_name(f.grade)
    );
    for id in f.statement_ids() {
        match statements.resolve(&case.versions, id) {
            Some(st) => {
                let _ = writeln!(
                    out,
                    "- Statement: {} (MQTT {}, {}, {} {}): {}",
                    st.id,
                    st.version,
                    st.section,
                    st.actor.as_str(),
                    st.level,
                    st.summary
                );
            }
            None => {
                let _ = writeln!(out, "- Statement: {id} (not in the statement index)");
            }
        }
    }
    let _ = writeln!(
        out,
        "- Scenario: `{}` ({})",
        case.scenario.replace('`', "'"),
        one_line(&case.file.display().to_string())
    );
    if let Some(seed) = case.seed {
        let _ = writeln!(out, "- Seed: {seed}");
    }
    let _ = writeln!(out, "- Checker: {}", f.checker);
    let _ = writeln!(out, "- Owed: {}", one_line(&f.owed));
    let _ = writeln!(out, "- Broker did: {}", one_line(&f.observed));
    if !case.rerun.is_empty() {
        let _ = writeln!(out, "- Rerun: `{}`", case.rerun.replace('`', "'"));
    }
    let _ = writeln!(out);
    if let Some(t) = super::timeline(f) {
        let _ = writeln!(out, "```mermaid\n{}```\n", t.mermaid());
    }
    if !f.excerpt.trim().is_empty() {
        let fence = fence_for(&f.excerpt);
        let _ = writeln!(out, "{fence}text\n{}\n{fence}\n", f.excerpt.trim_end());
    }
}

/// A code fence longer than any backtick run inside the text.
fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

/// Text safe as Markdown prose: one line, and no `<`/`&` a renderer would take for HTML.
fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text safe inside a table cell: prose with pipes escaped.
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certify::report::fixture;

    #[test]
    fn header_findings_and_statements() {
        let md = markdown(&fixture::sample(), Statements::embedded());
        assert!(md.starts_with("# MQTT certification of mqtt://127.0.0.1:1883\n"));
        assert!(md.contains(
            "| Broker version | mosquitto version 2.0.11 (from `$SYS/broker/version`) |"
        ));
        assert!(md.contains(
            "| Verdict | **NOT CERTIFIED**: 1 MUST violation, 1 error, 1 inconclusive case |"
        ));
        assert!(md.contains("### 1. [MQTT-4.3.3-2] faults/qos2-dropped-pubrec seed 3 — MUST"));
        assert!(md.contains("- Owed: message pub-1 delivered once to sub"));
        assert!(md.contains("1.900s sub  <- PUBLISH qos=2 \"pub-1\""));
        assert!(md.contains(
            "| MQTT-4.3.3-2 | MUST | both | yes | **FAIL**: faults/qos2-dropped-pubrec seed 3 |"
        ));
        assert!(md.contains(
            "| session/broker-restart-keeps-session | broker_restart: no --restart-cmd was given |"
        ));
        assert!(md.contains(
            "| qos0 | one copy per overlapping subscription | 1 | qos/overlapping-subscriptions |"
        ));
        // Every statement of both versions has its row.
        let rows = md.lines().filter(|l| l.starts_with("| MQTT-")).count();
        assert_eq!(rows, 141 + 251);
        assert!(md.contains("untested (not observable)"));
    }

    #[test]
    fn many_findings_of_one_case_are_shown_in_full_only_first() {
        let mut cert = fixture::sample();
        let f = cert.cases[2].findings[0].clone();
        cert.cases[2].findings = vec![f; FINDINGS_IN_FULL_PER_CASE + 3];
        let md = markdown(&cert, Statements::embedded());
        assert_eq!(
            md.matches("- Owed: message pub-1").count(),
            FINDINGS_IN_FULL_PER_CASE
        );
        assert!(md.contains("3 more in faults/qos2-dropped-pubrec seed 3"));
        assert!(md.contains("- 8. [MQTT-4.3.3-2] qos2: owed message pub-1 delivered once to sub;"));
        assert!(md.contains("## Gaps"));
    }

    #[test]
    fn cells_and_fences_cannot_break_the_layout() {
        assert_eq!(cell("a | b\nc <x> & y"), "a \\| b c &lt;x&gt; &amp; y");
        assert_eq!(fence_for("x ``` y"), "````");
        assert_eq!(fence_for("plain"), "```");
    }
}
