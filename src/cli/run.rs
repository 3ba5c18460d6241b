//! `simqtt run`: every scenario under the given paths, every seed, in the simulator. Seeds run
//! in parallel on OS threads (each turmoil simulation is single-threaded inside, so threads
//! change nothing in a run). Exit 0 only when everything passes; 1 on a failure or an
//! inconclusive run (a fault or control step that did not take effect); 2 when a scenario file
//! is refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use simqtt::scenario::{self, Scenario};
use simqtt::sim::{self, Outcome, RunReport};

#[derive(clap::Args)]
pub struct Args {
    /// Scenario files or directories (searched for *.yaml). Default: scenarios/.
    paths: Vec<PathBuf>,
    /// Seeds per scenario (default: the scenario's `seeds`, 1 for explicit, 20 for randomised).
    #[arg(long)]
    seeds: Option<u32>,
    /// Run only this seed of each scenario.
    #[arg(long)]
    seed: Option<u64>,
    /// Parallel runs (default: the number of cores).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Run only shard I of N (1-based, like `--shard 2/4`), for CI matrices.
    #[arg(long)]
    shard: Option<String>,
    /// Run only scenarios whose name or path contains PATTERN.
    #[arg(long)]
    filter: Option<String>,
    /// Write a JUnit XML report to FILE.
    #[arg(long)]
    junit: Option<PathBuf>,
}

/// Failing seeds reported in full per scenario (the rest are counted).
const FAILURES_SHOWN_PER_SCENARIO: usize = 3;
/// Failures reported in full per run.
const FAILURES_SHOWN_PER_RUN: usize = 3;

/// Scenario files under `paths`, sorted, with their parse.
pub fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Scenario)>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files)
                .with_context(|| format!("reading directory {}", path.display()))?;
        } else if path.exists() {
            files.push(path.clone());
        } else {
            bail!("{}: no such file or directory", path.display());
        }
    }
    files.sort();
    files.dedup();
    let mut out = Vec::new();
    let mut refused = String::new();
    for file in files {
        match scenario::load(&file) {
            Ok(s) => out.push((file, s)),
            Err(errors) => {
                let _ = writeln!(refused, "{errors}");
            }
        }
    }
    if !refused.is_empty() {
        bail!("scenario files refused:\n{}", refused.trim_end());
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

fn parse_shard(text: &str) -> anyhow::Result<(usize, usize)> {
    let (i, n) = text
        .split_once('/')
        .context("--shard takes I/N, like 2/4")?;
    let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
    if n == 0 || i == 0 || i > n {
        bail!("--shard {text}: I must be 1..=N");
    }
    Ok((i - 1, n))
}

struct Work {
    file: usize,
    seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        args.paths.clone()
    };
    let scenarios = match collect(&paths) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simqtt: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let scenarios = filter_scenarios(scenarios, args.filter.as_deref());
    let mut work = Vec::new();
    for (i, (_, s)) in scenarios.iter().enumerate() {
        let seeds = match args.seed {
            Some(seed) => vec![seed],
            None => sim::seeds_of(s, args.seeds),
        };
        work.extend(seeds.into_iter().map(|seed| Work { file: i, seed }));
    }
    if let Some(shard) = &args.shard {
        let (index, count) = parse_shard(shard)?;
        work = work
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % count == index)
            .map(|(_, w)| w)
            .collect();
    }
    if work.is_empty() {
        eprintln!("simqtt: no scenarios to run under {paths:?}");
        return Ok(ExitCode::from(2));
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 256);
    let total = work.len();
    let started = Instant::now();
    let scenarios = Arc::new(scenarios);
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<(usize, RunReport, Duration)>();
    let mut threads = Vec::new();
    for _ in 0..jobs.min(total) {
        let (scenarios, work, next, tx) =
            (scenarios.clone(), work.clone(), next.clone(), tx.clone());
        threads.push(std::thread::spawn(move || loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(w) = work.get(k) else { break };
            let t = Instant::now();
            let report = sim::run(&scenarios[w.file].1, w.seed);
            if tx.send((w.file, report, t.elapsed())).is_err() {
                break;
            }
        }));
    }
    drop(tx);
    let progress = std::io::stderr().is_terminal();
    let mut results: BTreeMap<usize, Vec<(RunReport, Duration)>> = BTreeMap::new();
    let mut done = 0usize;
    let mut failed = 0usize;
    let mut inconclusive = 0usize;
    for (file, report, wall) in rx {
        done += 1;
        match report.outcome() {
            Outcome::Passed => {}
            Outcome::Failed => failed += 1,
            Outcome::Inconclusive => inconclusive += 1,
        }
        if progress {
            eprint!(
                "\r[{done}/{total}] {failed} failed {inconclusive} inconclusive  {:<50}",
                truncate(&report.scenario, 50)
            );
        }
        results.entry(file).or_default().push((report, wall));
    }
    if progress {
        eprintln!();
    }
    for t in threads {
        let _ = t.join();
    }
    for runs in results.values_mut() {
        runs.sort_by_key(|(r, _)| r.seed);
    }
    // Failures first, in full.
    for (file, runs) in &results {
        let (path, s) = &scenarios[*file];
        let failing: Vec<&RunReport> = runs
            .iter()
            .map(|(r, _)| r)
            .filter(|r| !r.passed())
            .collect();
        for report in failing.iter().take(FAILURES_SHOWN_PER_SCENARIO) {
            println!("{}", failure_report(path, s, report));
        }
        if failing.len() > FAILURES_SHOWN_PER_SCENARIO {
            println!(
                "... and {} more failing or inconclusive seeds of {}",
                failing.len() - FAILURES_SHOWN_PER_SCENARIO,
                s.name
            );
        }
    }
    // The summary table.
    println!(
        "{:<48} {:>6} {:>6} {:>6} {:>7} {:>10} {:>8}",
        "scenario", "seeds", "pass", "fail", "inconc", "sim s", "wall s"
    );
    let mut sim_total = Duration::ZERO;
    for (file, runs) in &results {
        let (_, s) = &scenarios[*file];
        let count = |o: Outcome| runs.iter().filter(|(r, _)| r.outcome() == o).count();
        let sim_s: Duration = runs.iter().map(|(r, _)| r.simulated).sum();
        let wall: Duration = runs.iter().map(|(_, w)| *w).sum();
        sim_total += sim_s;
        println!(
            "{:<48} {:>6} {:>6} {:>6} {:>7} {:>10.1} {:>8.2}",
            truncate(&s.name, 48),
            runs.len(),
            count(Outcome::Passed),
            count(Outcome::Failed),
            count(Outcome::Inconclusive),
            sim_s.as_secs_f64(),
            wall.as_secs_f64()
        );
    }
    let elapsed = started.elapsed();
    println!(
        "{} runs, {} passed, {} failed, {inconclusive} inconclusive; {:.0} simulated s in {:.1} wall s ({:.0}x) on {jobs} threads",
        total,
        total - failed - inconclusive,
        failed,
        sim_total.as_secs_f64(),
        elapsed.as_secs_f64(),
        sim_total.as_secs_f64() / elapsed.as_secs_f64().max(1e-9)
    );
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&scenarios, &results))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if failed == 0 && inconclusive == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `text` cut to `width` characters with an ellipsis (progress lines and tables).
pub(crate) fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars()
            .take(width.saturating_sub(1))
            .collect::<String>()
            + "…"
    }
}

/// The failure report of one run: scenario, seed, knobs, why it is inconclusive (a fault
/// that did not take effect), each failure, the replay command.
pub fn failure_report(path: &Path, s: &Scenario, report: &RunReport) -> String {
    let verdict = match report.outcome() {
        Outcome::Inconclusive => "INCONCLUSIVE",
        _ => "FAIL",
    };
    let mut out = format!(
        "{verdict} {} ({}) seed {}\n  knobs: {}\n",
        s.name,
        path.display(),
        report.seed,
        report.knobs
    );
    for reason in report.inconclusive() {
        let _ = writeln!(out, "  not confirmed: {reason}");
    }
    if report.outcome() == Outcome::Inconclusive && !report.failures.is_empty() {
        let _ = writeln!(
            out,
            "  (the failures below may be the missing fault's doing, not the broker's or the client's)"
        );
    }
    for f in report.failures.iter().take(FAILURES_SHOWN_PER_RUN) {
        let spec = if f.spec.is_empty() {
            String::new()
        } else {
            format!(" [{}]", f.spec)
        };
        let _ = writeln!(out, "  {}{spec}:", f.kind);
        for line in f.text.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    if report.failures.len() > FAILURES_SHOWN_PER_RUN {
        let _ = writeln!(
            out,
            "  ... and {} more failures",
            report.failures.len() - FAILURES_SHOWN_PER_RUN
        );
    }
    let _ = writeln!(
        out,
        "  replay: simqtt replay {} --seed {}",
        path.display(),
        report.seed
    );
    out
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn junit(
    scenarios: &[(PathBuf, Scenario)],
    results: &BTreeMap<usize, Vec<(RunReport, Duration)>>,
) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"simqtt run\">\n",
    );
    for (file, runs) in results {
        let (path, s) = &scenarios[*file];
        let failures = runs
            .iter()
            .filter(|(r, _)| r.outcome() == Outcome::Failed)
            .count();
        let errors = runs
            .iter()
            .filter(|(r, _)| r.outcome() == Outcome::Inconclusive)
            .count();
        let time: f64 = runs.iter().map(|(_, w)| w.as_secs_f64()).sum();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">",
            xml_escape(&s.name),
            runs.len()
        );
        for (report, wall) in runs {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"seed {}\" time=\"{:.3}\"",
                xml_escape(&s.name),
                report.seed,
                wall.as_secs_f64()
            );
            match report.outcome() {
                Outcome::Passed => out.push_str("/>\n"),
                Outcome::Failed => {
                    let first = &report.failures[0];
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        xml_escape(&format!("{} {}", first.kind, first.spec)),
                        xml_escape(&failure_report(path, s, report))
                    );
                }
                // Not a pass and not a verdict on the broker: the run could not be judged.
                Outcome::Inconclusive => {
                    let _ = writeln!(
                        out,
                        ">\n      <error type=\"inconclusive\" message=\"{}\">{}</error>\n    </testcase>",
                        xml_escape(&format!(
                            "inconclusive: {}",
                            report.inconclusive().join("; ")
                        )),
                        xml_escape(&failure_report(path, s, report))
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// The scenarios whose name or path contains `filter` (all of them without one).
pub(super) fn filter_scenarios(
    scenarios: Vec<(PathBuf, Scenario)>,
    filter: Option<&str>,
) -> Vec<(PathBuf, Scenario)> {
    scenarios
        .into_iter()
        .filter(|(path, s)| {
            filter.is_none_or(|f| s.name.contains(f) || path.to_string_lossy().contains(f))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_one_based() {
        assert_eq!(parse_shard("1/4").unwrap(), (0, 4));
        assert_eq!(parse_shard("4/4").unwrap(), (3, 4));
        assert!(parse_shard("0/4").is_err());
        assert!(parse_shard("5/4").is_err());
        assert!(parse_shard("x").is_err());
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml_escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}
