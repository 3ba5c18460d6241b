//! `simqtt explore`: scenarios drawn from a grammar (docs/explore.md), run in the simulator
//! and judged by every checker, until `--runs` or `--duration` is spent. Every distinct
//! failure is shrunk into a regression file (`--out`), and the drawn scenario that showed it
//! is written beside the summary (`--drawn`) for `simqtt run`. Exit 0 when nothing failed,
//! 1 when something did, 2 on bad arguments.

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
    let mut found = |f: &Finding| {
        if tty {
            eprintln!();
        }
        if let Err(e) = report_finding(f, &args.out, &args.drawn) {
            write_error.get_or_insert(e);
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
    Ok(if summary.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn report_finding(f: &Finding, out: &Path, drawn_dir: &Path) -> anyhow::Result<()> {
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
            return Ok(());
        }
    }
    print_timeline(
        &f.scenario,
        f.scenario.seed.unwrap_or(0),
        &f.target,
        "the drawn run",
    );
    Ok(())
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
