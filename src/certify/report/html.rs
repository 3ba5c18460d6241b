//! The certification report as one self-contained HTML file (style inline, no script, nothing
//! fetched): the header and verdict, the coverage totals, every MUST violation, error and
//! SHOULD deviation with its timeline drawn as inline SVG, the inconclusive and skipped cases,
//! and the coverage table of every normative statement. The Markdown report holds the same
//! findings with Mermaid diagrams; this one opens as it is, as a CI artefact.

use std::fmt::Write;

use super::markdown::{result_cell, scenario_list};
use super::{case_name, grade_name, health_line, human_duration, summary, timeline};
use crate::certify::coverage::coverage;
use crate::certify::statements::{SpecVersion, Statements};
use crate::certify::{Certification, Grade, Verdict};
use crate::timeline::{html_escape as esc, html_page};

pub fn html(cert: &Certification, statements: &Statements) -> String {
    let s = summary(cert);
    let mut body = format!(
        "<h1>MQTT certification of {}</h1>\n<table>\n",
        esc(&cert.broker)
    );
    let verdict = if s.certified {
        "CERTIFIED: no MUST violation, no error".to_string()
    } else {
        format!(
            "NOT CERTIFIED: {} MUST violations, {} errors, {} inconclusive cases",
            s.must, s.errors, s.inconclusive
        )
    };
    let rows = [
        ("Broker", cert.broker.clone()),
        (
            "Broker version",
            cert.broker_version
                .clone()
                .unwrap_or_else(|| "not offered".into()),
        ),
        ("Date", cert.started.clone()),
        ("Profile", cert.profile.clone()),
        ("Duration", human_duration(cert.duration)),
        ("simqtt", cert.simqtt_version.clone()),
        (
            "Broker health",
            health_line(cert).unwrap_or_else(|| "answered throughout".into()),
        ),
        ("Verdict", verdict),
    ];
    for (k, v) in rows {
        let _ = writeln!(body, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    body.push_str("</table>\n<h2>Summary</h2>\n");
    let _ = writeln!(
        body,
        "<p>{} scenarios, {} cases (scenario × seed): {} passed, {} failed, {} inconclusive, {} \
         skipped. Findings: {} MUST, {} SHOULD, {} errors.</p>",
        s.scenarios,
        s.cases,
        s.passed,
        s.failed,
        s.inconclusive,
        s.skipped,
        s.must,
        s.should,
        s.errors
    );
    let cov = coverage(cert, statements);
    body.push_str(
        "<table>\n<tr><th>Spec</th><th>Statements</th><th>Pass</th><th>Fail</th><th>Skip</th>\
         <th>Inconclusive</th><th>Untested</th><th>of which not observable</th>\
         <th>Observable tested</th></tr>\n",
    );
    for v in SpecVersion::ALL {
        let t = cov.totals(v);
        let _ = writeln!(
            body,
            "<tr><td>MQTT {v}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}/{}</td></tr>",
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
    body.push_str("</table>\n");
    for (grade, title) in [
        (Grade::Must, "MUST violations"),
        (Grade::Error, "Errors"),
        (Grade::Should, "SHOULD deviations"),
    ] {
        let _ = writeln!(body, "<h2>{title}</h2>");
        let mut n = 0;
        for case in &cert.cases {
            for f in case.findings.iter().filter(|f| f.grade == grade) {
                n += 1;
                let cited = if f.statement.is_empty() {
                    String::new()
                } else {
                    format!("[{}] ", f.statement)
                };
                let _ = writeln!(
                    body,
                    "<section class=\"failure\">\n<h3>{n}. {}{} — {}</h3>\n<ul><li>Checker: {}\
                     </li><li>File: <code>{}</code></li><li>Owed: {}</li><li>Broker did: {}</li>",
                    esc(&cited),
                    esc(&case_name(case)),
                    grade_name(f.grade),
                    esc(&f.checker),
                    esc(&case.file.display().to_string()),
                    esc(&f.owed),
                    esc(&f.observed)
                );
                if !case.rerun.is_empty() {
                    let _ = writeln!(body, "<li>Rerun: <code>{}</code></li>", esc(&case.rerun));
                }
                body.push_str("</ul>\n");
                if let Some(t) = timeline(f) {
                    let _ = writeln!(body, "<div class=\"timeline\">{}</div>", t.svg());
                }
                if !f.excerpt.trim().is_empty() {
                    let _ = writeln!(body, "<pre>{}</pre>", esc(f.excerpt.trim_end()));
                }
                body.push_str("</section>\n");
            }
        }
        if n == 0 {
            body.push_str("<p>None.</p>\n");
        }
    }
    body.push_str("<h2>Inconclusive and skipped cases</h2>\n<ul>\n");
    let mut any = false;
    for case in &cert.cases {
        let (label, reason) = match &case.verdict {
            Verdict::Inconclusive { reason } => ("inconclusive", reason),
            Verdict::Skipped { reason } => ("skipped", reason),
            _ => continue,
        };
        any = true;
        let _ = writeln!(
            body,
            "<li>{} ({label}): {}</li>",
            esc(&case_name(case)),
            esc(reason)
        );
    }
    if !any {
        body.push_str("<li>None.</li>\n");
    }
    body.push_str("</ul>\n<h2>Normative statements</h2>\n");
    for v in SpecVersion::ALL {
        let _ = writeln!(
            body,
            "<h3>MQTT {v}</h3>\n<table>\n<tr><th>Statement</th><th>Section</th><th>Level</th>\
             <th>Actor</th><th>Observable</th><th>Result</th><th>Scenarios</th><th>Summary</th>\
             </tr>"
        );
        for st in cov.version(v) {
            let result = result_cell(st).replace("**", "");
            let class = if result.starts_with("FAIL") || result.starts_with("ERROR") {
                " class=\"bad\""
            } else {
                ""
            };
            let _ = writeln!(
                body,
                "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                esc(&st.id),
                esc(&st.section),
                st.level,
                st.actor.as_str(),
                st.observable.as_str(),
                esc(&result),
                esc(&scenario_list(st)),
                esc(&st.summary)
            );
        }
        body.push_str("</table>\n");
    }
    html_page(&format!("MQTT certification of {}", cert.broker), &body)
}
