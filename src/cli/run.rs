//! `simqtt run`: every scenario under the given paths, every seed, in the simulator. Seeds run
//! in parallel on OS threads (each turmoil simulation is single-threaded inside, so threads
//! change nothing in a run). Exit 0 only when everything passes; 1 on a failure or an
//! inconclusive run (a fault or control step that did not take effect); 2 when a scenario file
//! is refused (two files of one scenario name included). A `--shard K/N` that receives no
//! (scenario, seed) run exits 0 with a note: a CI matrix wider than the work is no failure.

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
use simqtt::sim::{self, Failure, Outcome, RunReport};
use simqtt::timeline::{marked_records, message_of, Timeline};

use super::run_report;

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
    /// Write a Markdown report to FILE: the summary, and each failure with its timeline as a
    /// Mermaid sequence diagram.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write a self-contained HTML report to FILE (one file, no script, no network): the
    /// summary, and each failure with its timeline drawn.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Shrink the first failing seed of each failing scenario into a regression file in DIR
    /// (as `simqtt replay FILE --seed N --shrink` does), for CI to keep as an artefact.
    #[arg(long, value_name = "DIR")]
    shrink_to: Option<PathBuf>,
}

/// Scenarios one `run --shrink-to` shrinks at most (each shrink takes seconds); the others'
/// failing seeds are printed, to replay and shrink by hand.
const SHRINKS_PER_RUN_MAX: usize = 10;

/// Failing seeds reported in full per scenario (the rest are listed by number).
const FAILURES_SHOWN_PER_SCENARIO: usize = 3;
/// Failures reported in full per run (the rest one line each).
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
    // A scenario's name keys its trace files, its JUnit test cases and its regression files:
    // two files of one name would overwrite each other's traces and merge in CI views.
    let mut by_name: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for (file, s) in &out {
        by_name.entry(&s.name).or_default().push(file);
    }
    for (name, files) in by_name.iter().filter(|(_, files)| files.len() > 1) {
        let listed: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let _ = writeln!(
            refused,
            "{}: scenario name {name:?} is also the name of {} (names must be unique: rename one \
             file, or give it a `name:`)",
            listed[0],
            listed[1..].join(", ")
        );
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
    let all_runs = work.len();
    if let Some(shard) = &args.shard {
        // By (scenario, seed), not by file: 100,000 seeds of one scenario spread over the
        // shards as evenly as 100,000 files would.
        let (index, count) = parse_shard(shard)?;
        work = work
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % count == index)
            .map(|(_, w)| w)
            .collect();
    }
    let outputs = Outputs {
        junit: args.junit.clone(),
        markdown: args.report.clone(),
        html: args.html.clone(),
    };
    if work.is_empty() {
        if let Some(shard) = &args.shard {
            if all_runs > 0 {
                // A CI matrix wider than the work leaves some machines nothing to do: that is
                // no failure of theirs, and their (empty) reports still merge.
                eprintln!(
                    "simqtt: shard {shard} received none of the {all_runs} (scenario, seed) runs; nothing to do"
                );
                outputs.write(&scenarios, &BTreeMap::new(), Duration::ZERO)?;
                return Ok(ExitCode::SUCCESS);
            }
        }
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
    let mut progress = Progress::new(total as u64);
    let mut results: BTreeMap<usize, Vec<(RunReport, Duration)>> = BTreeMap::new();
    let mut failed = 0usize;
    let mut inconclusive = 0usize;
    for (file, report, wall) in rx {
        match report.outcome() {
            Outcome::Passed => {}
            Outcome::Failed => failed += 1,
            Outcome::Inconclusive => inconclusive += 1,
        }
        progress.update(failed, inconclusive, &report.scenario);
        results.entry(file).or_default().push((report, wall));
    }
    progress.finish();
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
            // Every failing seed by number, so each can be replayed (and shrunk).
            let seeds: Vec<String> = failing[FAILURES_SHOWN_PER_SCENARIO..]
                .iter()
                .map(|r| r.seed.to_string())
                .collect();
            println!(
                "{} more failing or inconclusive seeds of {}: {}\n  replay one: simqtt replay {} --seed N\n",
                seeds.len(),
                s.name,
                seeds.join(" "),
                path.display()
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
    outputs.write(&scenarios, &results, elapsed)?;
    if let Some(dir) = &args.shrink_to {
        // A failed run, not an inconclusive one: its failure is the broker's or the client's.
        let first_failures: Vec<(usize, u64)> = results
            .iter()
            .filter_map(|(file, runs)| {
                let run = runs.iter().find(|(r, _)| r.outcome() == Outcome::Failed)?;
                Some((*file, run.0.seed))
            })
            .collect();
        for (n, (file, seed)) in first_failures.iter().enumerate() {
            let (path, s) = &scenarios[*file];
            if n == SHRINKS_PER_RUN_MAX {
                println!(
                    "shrink: {} more failing scenarios not shrunk (at most {SHRINKS_PER_RUN_MAX} a run); replay and shrink them by hand",
                    first_failures.len() - n
                );
                break;
            }
            println!("shrink: {} seed {seed}", s.name);
            let origin = format!("simqtt run {}", path.display());
            super::shrink_cmd::shrink_and_write(s, *seed, None, &origin, jobs, dir)?;
        }
    }
    Ok(if failed == 0 && inconclusive == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The report files a run writes.
struct Outputs {
    junit: Option<PathBuf>,
    markdown: Option<PathBuf>,
    html: Option<PathBuf>,
}

impl Outputs {
    fn write(
        &self,
        scenarios: &[(PathBuf, Scenario)],
        results: &BTreeMap<usize, Vec<(RunReport, Duration)>>,
        elapsed: Duration,
    ) -> anyhow::Result<()> {
        let runs = run_report::Runs {
            scenarios,
            results,
            elapsed,
            title: "simqtt run",
        };
        let files = [
            (&self.junit, run_report::Kind::Junit),
            (&self.markdown, run_report::Kind::Markdown),
            (&self.html, run_report::Kind::Html),
        ];
        for (path, kind) in files {
            if let Some(path) = path {
                std::fs::write(path, runs.render(kind)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// Progress on stderr while runs finish: a bar on a terminal; elsewhere (CI logs) a plain
/// line every [`PROGRESS_LINE_INTERVAL`], so a log shows the run is alive without a line per
/// run or carriage returns.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

/// How often a run without a terminal prints its progress line.
const PROGRESS_LINE_INTERVAL: Duration = Duration::from_secs(5);

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} runs {elapsed_precise} (eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            total,
            done: 0,
            started: now,
            last_line: now,
        }
    }

    fn update(&mut self, failed: usize, inconclusive: usize, scenario: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!(
                    "{failed} failed {inconclusive} inconclusive  {}",
                    truncate(scenario, 40)
                ));
                bar.inc(1);
            }
            None => {
                if self.last_line.elapsed() >= PROGRESS_LINE_INTERVAL {
                    self.last_line = Instant::now();
                    eprintln!(
                        "progress: {}/{} runs, {failed} failed, {inconclusive} inconclusive, {:.0} s",
                        self.done,
                        self.total,
                        self.started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
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

/// `[MQTT-4.3.2-2] qos1`: the statement broken and the checker (or `expect` for a step's
/// expectation) that found it.
pub fn failure_title(f: &Failure) -> String {
    if f.spec.is_empty() {
        format!("{} (no statement cited)", f.kind)
    } else {
        format!("[{}] {}", f.spec, f.kind)
    }
}

/// The timeline of one failure of a run, from the run's trace.
pub fn timeline(report: &RunReport, f: &Failure) -> Timeline {
    Timeline::from_trace(
        &report.trace,
        failure_title(f),
        f.owed.clone(),
        f.happened.clone(),
        &marked_records(&f.text),
    )
}

/// The message ids the run's failures name, in order, each once.
pub fn missing_messages(report: &RunReport) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in &report.failures {
        if let Some(id) = message_of(&f.text) {
            if !out.iter().any(|m| m == id) {
                out.push(id.to_string());
            }
        }
    }
    out
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
    // The rest one line each: a person sees every failure and every message it names.
    for f in report.failures.iter().skip(FAILURES_SHOWN_PER_RUN) {
        let _ = writeln!(out, "  {}: {}", failure_title(f), f.happened);
    }
    let messages = missing_messages(report);
    if !messages.is_empty() {
        let _ = writeln!(
            out,
            "  messages the failures name ({}): {}",
            messages.len(),
            messages.join(", ")
        );
    }
    if let Some(first) = report.failures.first() {
        let _ = writeln!(
            out,
            "  timeline of the first failure ({}):",
            failure_title(first)
        );
        for line in timeline(report, first).text().lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    let _ = writeln!(
        out,
        "  replay: simqtt replay {} --seed {}",
        path.display(),
        report.seed
    );
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
}
