//! `simqtt explore`: scenarios drawn from a grammar (docs/explore.md), run in the simulator
//! and judged by every checker, until `--runs` or `--duration` is spent. Every distinct
//! failure is shrunk into a regression file (`--out`), and the drawn scenario that showed it
//! is written beside the summary (`--drawn`) for `simqtt run`. Exit 0 when nothing failed,
//! 1 when something did, 2 on bad arguments.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use simqtt::broker::PlantedBug;
use simqtt::explore::{self, Finding, Summary};
use simqtt::scenario::{Dur, Kind};
use simqtt::shrink::{self, Target};

/// Without `--runs` or `--duration`, an exploration lasts this long.
const DEFAULT_DURATION: Duration = Duration::from_secs(60);
/// Without a terminal, a progress line this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct Args {
    /// The exploration's seed (default: drawn from the clock, printed first). The same seed
    /// and `--runs` give the same runs and findings, whatever `--jobs` is.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many runs.
    #[arg(long)]
    runs: Option<u64>,
    /// Start no new run after this long (like 30s, 10m, 2h; default 1m without --runs).
    #[arg(long)]
    duration: Option<String>,
    /// Runs at once (default: the number of cores).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Where the shrunk regression files go.
    #[arg(long, default_value = "scenarios/regression")]
    out: PathBuf,
    /// Where the drawn scenario of each distinct failure goes (rerun it with `simqtt run`).
    #[arg(long, default_value = "explore-drawn")]
    drawn: PathBuf,
    /// Write a Markdown report to FILE: each distinct failure (its shrunk run, or the drawn
    /// run when it could not shrink) with its timeline as a Mermaid sequence diagram.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the same as one self-contained HTML file (no script, no network).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Maintainers only: plant a bug in the simulated broker (docs/shrinking.md).
    #[arg(long, hide = true)]
    planted_bug: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() % 1_000_000)
    });
    let duration = match (&args.duration, args.runs) {
        (Some(text), _) => Some(
            Dur::parse(text)
                .map_err(|e| anyhow::anyhow!("--duration: {e}"))?
                .as_duration(),
        ),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_DURATION),
    };
    let planted_bug = match &args.planted_bug {
        None => None,
        Some(name) => match PlantedBug::ALL.iter().find(|b| b.as_str() == name) {
            Some(b) => Some(*b),
            None => bail!(
                "--planted-bug {name}: one of {}",
                PlantedBug::ALL.map(|b| b.as_str()).join(", ")
            ),
        },
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 256);
    println!("seed {seed}");
    println!(
        "explore: {} on {jobs} threads{}; regression files to {}, drawn scenarios to {}",
        match (args.runs, duration) {
            (Some(n), Some(d)) => format!("{n} runs or {}", Dur::from_millis(d.as_millis() as u64)),
            (Some(n), None) => format!("{n} runs"),
            (None, Some(d)) => format!("for {}", Dur::from_millis(d.as_millis() as u64)),
            (None, None) => unreachable!("a default duration is set"),
        },
        planted_bug.map_or(String::new(), |b| format!(", planted bug {}", b.as_str())),
        args.out.display(),
        args.drawn.display()
    );
    let options = explore::Options {
        seed,
        runs: args.runs,
        duration,
        jobs,
        planted_bug,
        ..explore::Options::default()
    };
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut progress = |s: &Summary| {
        let line = format!(
            "[{} runs, {:.2} simulated h, {} failed, {} distinct]",
            s.runs,
            s.simulated.as_secs_f64() / 3600.0,
            s.failed_runs,
            s.findings.len()
        );
        if tty {
            eprint!("\r{line}");
        } else if last_line.elapsed() >= PROGRESS_EVERY {
            eprintln!("{line}");
            last_line = Instant::now();
        }
    };
    let mut write_error: Option<anyhow::Error> = None;
    // Each finding's file (regression or drawn) and the scenario and seed that fail.
    let mut shown: Vec<(PathBuf, simqtt::scenario::Scenario, u64)> = Vec::new();
    let mut found = |f: &Finding| {
        if tty {
            eprintln!();
        }
        match report_finding(f, &args.out, &args.drawn) {
            Ok(entry) => shown.push(entry),
            Err(e) => {
                write_error.get_or_insert(e);
            }
        }
    };
    let summary = explore::explore(&options, &mut progress, &mut found);
    if tty {
        eprintln!();
    }
    if let Some(e) = write_error {
        return Err(e);
    }
    print_summary(seed, &summary);
    if args.report.is_some() || args.html.is_some() {
        write_reports(&shown, args.report.as_deref(), args.html.as_deref())?;
    }
    Ok(if summary.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints a finding, writes its files; returns the file that shows it best (the regression
/// file, else the drawn one) with its scenario and seed.
fn report_finding(
    f: &Finding,
    out: &Path,
    drawn_dir: &Path,
) -> anyhow::Result<(PathBuf, simqtt::scenario::Scenario, u64)> {
    let kind = match f.scenario.kind() {
        Kind::Randomised => "workload",
        Kind::Explicit => "program",
    };
    println!(
        "found: {} in run {} ({kind}, seed {}): {}",
        f.target,
        f.index,
        f.scenario.seed.unwrap_or(0),
        f.failure.happened
    );
    std::fs::create_dir_all(drawn_dir)
        .with_context(|| format!("creating {}", drawn_dir.display()))?;
    let drawn_path = drawn_dir.join(format!("{}.yaml", f.scenario.name));
    let text = shrink::yaml::to_yaml(&f.scenario).map_err(|e| anyhow::anyhow!(e))?;
    std::fs::write(&drawn_path, text)
        .with_context(|| format!("writing {}", drawn_path.display()))?;
    println!("  drawn scenario: simqtt run {}", drawn_path.display());
    match &f.shrunk {
        None => println!("  not shrunk: a `sim` failure is the simulation's, not the broker's"),
        Some(Err(e)) => println!("  not shrunk: {e}"),
        Some(Ok(shrunk)) => {
            let path = shrink::write_regression(out, shrunk, &f.scenario.name)
                .with_context(|| format!("writing a regression file into {}", out.display()))?;
            println!(
                "  shrunk {} -> {} steps ({} runs): simqtt run {}",
                shrunk.steps_before,
                shrunk.steps_after,
                shrunk.runs,
                path.display()
            );
            print_timeline(&shrunk.scenario, shrunk.seed, &f.target, "the shrunk run");
            let scenario = named(shrunk.scenario.clone(), &path);
            return Ok((path, scenario, shrunk.seed));
        }
    }
    let seed = f.scenario.seed.unwrap_or(0);
    print_timeline(&f.scenario, seed, &f.target, "the drawn run");
    let scenario = named(f.scenario.clone(), &drawn_path);
    Ok((drawn_path, scenario, seed))
}

/// `--report` and `--html`: each finding's run, replayed (the same seed gives the same trace),
/// as `simqtt run` reports a failure.
fn write_reports(
    shown: &[(PathBuf, simqtt::scenario::Scenario, u64)],
    report: Option<&Path>,
    html: Option<&Path>,
) -> anyhow::Result<()> {
    let scenarios: Vec<(PathBuf, simqtt::scenario::Scenario)> = shown
        .iter()
        .map(|(path, s, _)| (path.clone(), s.clone()))
        .collect();
    let results: BTreeMap<usize, Vec<(simqtt::sim::RunReport, Duration)>> = shown
        .iter()
        .enumerate()
        .map(|(i, (_, s, seed))| (i, vec![(simqtt::sim::run(s, *seed), Duration::ZERO)]))
        .collect();
    let runs = super::run_report::Runs {
        scenarios: &scenarios,
        results: &results,
        elapsed: Duration::ZERO,
        title: "simqtt explore",
    };
    for (path, kind) in [
        (report, super::run_report::Kind::Markdown),
        (html, super::run_report::Kind::Html),
    ] {
        if let Some(path) = path {
            std::fs::write(path, runs.render(kind)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// A scenario as loading its file would name it (a shrunk or drawn scenario has no name of
/// its own until then).
fn named(mut scenario: simqtt::scenario::Scenario, path: &Path) -> simqtt::scenario::Scenario {
    if scenario.name.is_empty() {
        scenario.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
    }
    scenario
}

/// The timeline of `target`'s failure in `scenario` run with `seed` (run again: a finding
/// keeps its failure, not its trace; the same seed gives the same trace).
fn print_timeline(scenario: &simqtt::scenario::Scenario, seed: u64, target: &Target, which: &str) {
    let report = simqtt::sim::run(scenario, seed);
    if let Some(failure) = report.failures.iter().find(|f| target.matches(f)) {
        println!("  timeline of {which}:");
        for line in super::run::timeline(&report, failure).text().lines() {
            println!("    {line}");
        }
    }
}

fn print_summary(seed: u64, s: &Summary) {
    println!(
        "explore seed {seed}: {} runs ({} workload{}, {} program{}), {:.2} simulated hours in {:.1} wall s; {} failed, {} distinct failure{}",
        s.runs,
        s.workloads,
        if s.workloads == 1 { "" } else { "s" },
        s.programs,
        if s.programs == 1 { "" } else { "s" },
        s.simulated.as_secs_f64() / 3600.0,
        s.wall.as_secs_f64(),
        s.failed_runs,
        s.findings.len(),
        if s.findings.len() == 1 { "" } else { "s" }
    );
    for f in &s.findings {
        let shrunk = match &f.shrunk {
            Some(Ok(x)) => format!("{} -> {} steps", x.steps_before, x.steps_after),
            Some(Err(_)) => "not shrunk".into(),
            None => "not shrinkable".into(),
        };
        println!(
            "  {}: {} run{}, first run {} ({shrunk})",
            f.target,
            f.hits,
            if f.hits == 1 { "" } else { "s" },
            f.index
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_draw_each_findings_run() {
        let yaml = "spec: [MQTT-4.3.3-2]\nbroker: {planted_bug: lose_qos2_receive_ids, durable: true}\n\
                    quiesce: 1s\nclients:\n  p0: {clean_session: false}\n  s1: {clean_session: false}\n\
                    steps:\n  - connect: s1\n  - subscribe: {client: s1, filter: t/0, qos: 2}\n\
                    \x20 - connect: p0\n  - publish: {client: p0, topic: t/0, qos: 2}\n  - wait: 15ms\n\
                    \x20 - crash_broker:\n";
        let mut s = simqtt::scenario::parse("planted.yaml", yaml).expect("scenario");
        // As the shrinker hands it over: named by the file it is written to.
        s.name.clear();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("0001-qos2-planted.yaml");
        let shown = vec![(path.clone(), named(s, &path), 0)];
        let (md, html) = (dir.path().join("e.md"), dir.path().join("e.html"));
        write_reports(&shown, Some(&md), Some(&html)).expect("reports");
        let md = std::fs::read_to_string(md).expect("md");
        assert!(md.starts_with("# simqtt explore\n"), "{md}");
        assert!(md.contains("### FAIL 0001-qos2-planted seed 0"), "{md}");
        assert!(md.contains("```mermaid\nsequenceDiagram\n"), "{md}");
        let html = std::fs::read_to_string(html).expect("html");
        assert_eq!(html.matches("<svg").count(), 1, "{html}");
    }
}
