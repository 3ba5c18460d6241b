//! The report files of `simqtt run` (and `replay`): JUnit XML for CI test views, written by
//! quick-junit; Markdown with each failure's timeline as a Mermaid sequence diagram; one
//! self-contained HTML file with the same timelines drawn as inline SVG.
//!
//! The Markdown and HTML reports hold no wall-clock time: the same runs give the same bytes.
//! JUnit carries wall times because CI views show them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite, XmlString};
use simqtt::scenario::Scenario;
use simqtt::sim::{Outcome, RunReport};
use simqtt::timeline::{html_escape, html_page};

use super::run::{failure_report, failure_title, missing_messages, timeline};

/// Failing runs per scenario drawn in full in Markdown and HTML (the rest listed by seed).
pub const RUNS_DRAWN_PER_SCENARIO: usize = 10;
/// Failures per run drawn with a timeline (the rest one line each).
pub const TIMELINES_PER_RUN: usize = 5;

/// The runs of one `simqtt run`, by scenario (index into `scenarios`), sorted by seed.
pub struct Runs<'a> {
    pub scenarios: &'a [(PathBuf, Scenario)],
    pub results: &'a BTreeMap<usize, Vec<(RunReport, Duration)>>,
    /// Wall time of the whole run (JUnit only).
    pub elapsed: Duration,
    /// The reports' title: the command (`simqtt run`, `simqtt replay`, `simqtt explore`).
    pub title: &'a str,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Junit,
    Markdown,
    Html,
}

impl Runs<'_> {
    pub fn render(&self, kind: Kind) -> anyhow::Result<String> {
        Ok(match kind {
            Kind::Junit => self.junit()?,
            Kind::Markdown => self.markdown(),
            Kind::Html => self.html(),
        })
    }

    /// One `<testsuite>` per scenario (with its `file`), one `<testcase>` per seed. A failed
    /// run is a `<failure>` whose message names the statement and the checker of its first
    /// failure and what happened; an inconclusive run is an `<error>` (it could not be
    /// judged). The text holds the terminal's failure report, timeline included.
    pub fn junit(&self) -> anyhow::Result<String> {
        let mut report = Report::new(self.title);
        report.set_time(self.elapsed);
        for (file, runs) in self.results {
            let (path, s) = &self.scenarios[*file];
            let file_attr = path.display().to_string();
            let mut suite = TestSuite::new(s.name.as_str());
            suite
                .extra
                .insert(XmlString::new("file"), XmlString::new(&file_attr));
            suite.set_time(runs.iter().map(|(_, w)| *w).sum());
            for (run, wall) in runs {
                let status = match run.outcome() {
                    Outcome::Passed => TestCaseStatus::success(),
                    Outcome::Failed => {
                        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        let first = &run.failures[0];
                        let more = match run.failures.len() - 1 {
                            0 => String::new(),
                            n => format!(" (and {n} more failure{})", plural(n)),
                        };
                        status
                            .set_message(format!(
                                "{}: {}{more}",
                                failure_title(first),
                                one_line(&first.happened)
                            ))
                            .set_type(first.kind.as_str())
                            .set_description(failure_report(path, s, run));
                        status
                    }
                    Outcome::Inconclusive => {
                        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                        status
                            .set_message(format!(
                                "inconclusive: {}",
                                one_line(&run.inconclusive().join("; "))
                            ))
                            .set_type("inconclusive")
                            .set_description(failure_report(path, s, run));
                        status
                    }
                };
                let mut case = TestCase::new(format!("seed {}", run.seed), status);
                case.set_classname(s.name.as_str()).set_time(*wall);
                case.extra
                    .insert(XmlString::new("file"), XmlString::new(&file_attr));
                suite.add_test_case(case);
            }
            report.add_test_suite(suite);
        }
        report.to_string().context("writing the JUnit report")
    }

    fn totals(&self) -> (usize, usize, usize, usize) {
        let mut t = (0, 0, 0, 0);
        for (run, _) in self.results.values().flatten() {
            t.0 += 1;
            match run.outcome() {
                Outcome::Passed => t.1 += 1,
                Outcome::Failed => t.2 += 1,
                Outcome::Inconclusive => t.3 += 1,
            }
        }
        t
    }

    /// Per scenario: (path, scenario, runs, passed, failed, inconclusive).
    fn rows(&self) -> Vec<(String, &Scenario, usize, usize, usize, usize)> {
        self.results
            .iter()
            .map(|(file, runs)| {
                let (path, s) = &self.scenarios[*file];
                let count = |o: Outcome| runs.iter().filter(|(r, _)| r.outcome() == o).count();
                (
                    path.display().to_string(),
                    s,
                    runs.len(),
                    count(Outcome::Passed),
                    count(Outcome::Failed),
                    count(Outcome::Inconclusive),
                )
            })
            .collect()
    }

    /// Per scenario with failing runs: (path, scenario, failing runs).
    fn failing(&self) -> Vec<(String, &Scenario, Vec<&RunReport>)> {
        self.results
            .iter()
            .filter_map(|(file, runs)| {
                let (path, s) = &self.scenarios[*file];
                let failing: Vec<&RunReport> = runs
                    .iter()
                    .map(|(r, _)| r)
                    .filter(|r| !r.passed())
                    .collect();
                (!failing.is_empty()).then(|| (path.display().to_string(), s, failing))
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let (runs, passed, failed, inconclusive) = self.totals();
        let mut out = format!("# {}\n\n", self.title);
        let _ = writeln!(
            out,
            "{runs} run{}: {passed} passed, {failed} failed, {inconclusive} inconclusive.\n",
            plural(runs)
        );
        let _ = writeln!(
            out,
            "| Scenario | File | Seeds | Pass | Fail | Inconclusive |\n|---|---|---|---|---|---|"
        );
        for (path, s, n, p, f, i) in self.rows() {
            let _ = writeln!(
                out,
                "| {} | `{}` | {n} | {p} | {f} | {i} |",
                cell(&s.name),
                cell(&path)
            );
        }
        let _ = writeln!(out, "\n## Failures\n");
        let failing = self.failing();
        if failing.is_empty() {
            let _ = writeln!(out, "None.");
        }
        for (path, s, reports) in failing {
            for run in reports.iter().take(RUNS_DRAWN_PER_SCENARIO) {
                let verdict = verdict(run);
                let _ = writeln!(out, "### {verdict} {} seed {}\n", cell(&s.name), run.seed);
                let _ = writeln!(out, "- File: `{}`", cell(&path));
                let _ = writeln!(out, "- Replay: `simqtt replay {path} --seed {}`", run.seed);
                let _ = writeln!(out, "- Knobs: {}", one_line(&run.knobs.to_string()));
                for reason in run.inconclusive() {
                    let _ = writeln!(out, "- Not confirmed: {}", one_line(&reason));
                }
                let messages = missing_messages(run);
                if !messages.is_empty() {
                    let _ = writeln!(out, "- Messages the failures name: {}", messages.join(", "));
                }
                let _ = writeln!(out);
                for f in run.failures.iter().take(TIMELINES_PER_RUN) {
                    let _ = writeln!(out, "#### {}\n", cell(&failure_title(f)));
                    let _ = writeln!(out, "- Owed: {}", one_line(&f.owed));
                    let _ = writeln!(out, "- Happened: {}\n", one_line(&f.happened));
                    let _ = writeln!(out, "```mermaid\n{}```\n", timeline(run, f).mermaid());
                }
                for f in run.failures.iter().skip(TIMELINES_PER_RUN) {
                    let _ = writeln!(
                        out,
                        "- {}: {}",
                        cell(&failure_title(f)),
                        one_line(&f.happened)
                    );
                }
                let _ = writeln!(out);
            }
            let rest = seeds_of(&reports[reports.len().min(RUNS_DRAWN_PER_SCENARIO)..]);
            if !rest.is_empty() {
                let _ = writeln!(
                    out,
                    "More failing or inconclusive seeds of {}: {rest}\n",
                    cell(&s.name)
                );
            }
        }
        out
    }

    pub fn html(&self) -> String {
        let (runs, passed, failed, inconclusive) = self.totals();
        let mut body = format!("<h1>{}</h1>\n", html_escape(self.title));
        let _ = writeln!(
            body,
            "<p>{runs} run{}: {passed} passed, {failed} failed, {inconclusive} inconclusive.</p>",
            plural(runs)
        );
        body.push_str(
            "<table>\n<tr><th>Scenario</th><th>File</th><th>Seeds</th><th>Pass</th><th>Fail</th>\
             <th>Inconclusive</th></tr>\n",
        );
        for (path, s, n, p, f, i) in self.rows() {
            let class = if f + i > 0 { " class=\"bad\"" } else { "" };
            let _ = writeln!(
                body,
                "<tr{class}><td>{}</td><td><code>{}</code></td><td>{n}</td><td>{p}</td>\
                 <td>{f}</td><td>{i}</td></tr>",
                html_escape(&s.name),
                html_escape(&path)
            );
        }
        body.push_str("</table>\n<h2>Failures</h2>\n");
        let failing = self.failing();
        if failing.is_empty() {
            body.push_str("<p>None.</p>\n");
        }
        for (path, s, reports) in failing {
            for run in reports.iter().take(RUNS_DRAWN_PER_SCENARIO) {
                let _ = writeln!(
                    body,
                    "<section class=\"failure\">\n<h3>{} {} seed {}</h3>\n<ul>\
                     <li>File: <code>{}</code></li><li>Replay: <code>simqtt replay {} --seed {}\
                     </code></li><li>Knobs: {}</li>",
                    verdict(run),
                    html_escape(&s.name),
                    run.seed,
                    html_escape(&path),
                    html_escape(&path),
                    run.seed,
                    html_escape(&run.knobs.to_string())
                );
                for reason in run.inconclusive() {
                    let _ = writeln!(body, "<li>Not confirmed: {}</li>", html_escape(&reason));
                }
                let messages = missing_messages(run);
                if !messages.is_empty() {
                    let _ = writeln!(
                        body,
                        "<li>Messages the failures name: {}</li>",
                        html_escape(&messages.join(", "))
                    );
                }
                body.push_str("</ul>\n");
                for f in run.failures.iter().take(TIMELINES_PER_RUN) {
                    let _ = writeln!(
                        body,
                        "<h4>{}</h4>\n<p><b>Owed:</b> {}<br><b>Happened:</b> {}</p>\n\
                         <div class=\"timeline\">{}</div>",
                        html_escape(&failure_title(f)),
                        html_escape(&f.owed),
                        html_escape(&f.happened),
                        timeline(run, f).svg()
                    );
                }
                for f in run.failures.iter().skip(TIMELINES_PER_RUN) {
                    let _ = writeln!(
                        body,
                        "<p>{}: {}</p>",
                        html_escape(&failure_title(f)),
                        html_escape(&f.happened)
                    );
                }
                body.push_str("</section>\n");
            }
            let rest = seeds_of(&reports[reports.len().min(RUNS_DRAWN_PER_SCENARIO)..]);
            if !rest.is_empty() {
                let _ = writeln!(
                    body,
                    "<p>More failing or inconclusive seeds of {}: {}</p>",
                    html_escape(&s.name),
                    html_escape(&rest)
                );
            }
        }
        html_page(self.title, &body)
    }
}

fn verdict(run: &RunReport) -> &'static str {
    match run.outcome() {
        Outcome::Inconclusive => "INCONCLUSIVE",
        _ => "FAIL",
    }
}

fn seeds_of(runs: &[&RunReport]) -> String {
    runs.iter()
        .map(|r| r.seed.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text safe in a Markdown table cell or heading.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|").replace('`', "'")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
