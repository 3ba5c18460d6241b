//! `simqtt replay FILE --seed N`: one run of one scenario, byte for byte the run `simqtt run`
//! made with that seed. Prints the seed first, then the knobs derived from it, then the
//! outcome and, for a failure, its timeline; `--trace OUT.jsonl` writes the trace as JSON
//! lines, `--report FILE.md` and `--html FILE` the reports `simqtt run` writes; `--shrink`
//! reduces a failing run to a minimal explicit scenario under `scenarios/regression/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use simqtt::scenario;
use simqtt::sim;

#[derive(clap::Args)]
pub struct Args {
    /// The scenario file.
    file: PathBuf,
    /// The seed to replay.
    #[arg(long)]
    seed: u64,
    /// Write the trace as JSON lines to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write a Markdown report to FILE (a failure's timeline as a Mermaid sequence diagram).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write a self-contained HTML report to FILE (the timeline drawn; no script, no network).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Shrink the failing run to a minimal explicit scenario and write it as a regression
    /// file (`NNNN-short-name.yaml` in `--out`).
    #[arg(long)]
    shrink: bool,
    /// With --shrink: the failure to keep, as CHECKER or CHECKER:STATEMENT (default: the
    /// run's first checker failure, else its first failed step).
    #[arg(long, requires = "shrink")]
    target: Option<String>,
    /// With --shrink: where the regression file goes.
    #[arg(long, requires = "shrink", default_value = "scenarios/regression")]
    out: PathBuf,
    /// With --shrink: candidate runs at once (the result does not depend on it; default: the
    /// number of cores).
    #[arg(long, short = 'j', requires = "shrink")]
    jobs: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let scenario = match scenario::load(&args.file) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    println!("seed {}", args.seed);
    println!("knobs: {}", sim::knobs(args.seed));
    let report = sim::run(&scenario, args.seed);
    if let Some(path) = &args.trace {
        std::fs::write(path, report.trace.to_jsonl())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.report.is_some() || args.html.is_some() {
        let scenarios = [(args.file.clone(), scenario.clone())];
        let results = BTreeMap::from([(0, vec![(report.clone(), Duration::ZERO)])]);
        let runs = super::run_report::Runs {
            scenarios: &scenarios,
            results: &results,
            elapsed: Duration::ZERO,
            title: "simqtt replay",
        };
        for (path, kind) in [
            (&args.report, super::run_report::Kind::Markdown),
            (&args.html, super::run_report::Kind::Html),
        ] {
            if let Some(path) = path {
                std::fs::write(path, runs.render(kind)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    for (note, count) in &report.notes {
        println!("note: {note} (x{count})");
    }
    println!(
        "{} records, {:.1} simulated s",
        report.trace.len(),
        report.simulated.as_secs_f64()
    );
    if report.passed() {
        println!("PASS {} seed {}", scenario.name, args.seed);
        if args.shrink {
            eprintln!("simqtt: nothing to shrink: the run passes");
            return Ok(ExitCode::from(2));
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        super::run::failure_report(&args.file, &scenario, &report)
    );
    if args.shrink {
        let jobs = args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let target = args.target.as_deref().map(simqtt::shrink::Target::parse);
        let origin = format!("simqtt replay {}", args.file.display());
        super::shrink_cmd::shrink_and_write(
            &scenario, args.seed, target, &origin, jobs, &args.out,
        )?;
    }
    Ok(ExitCode::from(1))
}
