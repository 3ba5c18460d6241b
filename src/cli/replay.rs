//! `simqtt replay FILE --seed N`: one run of one scenario, byte for byte the run `simqtt run`
//! made with that seed. Prints the seed first, then the knobs derived from it, then the
//! outcome; `--trace OUT.jsonl` writes the trace as JSON lines.

use std::path::PathBuf;
use std::process::ExitCode;

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
        Ok(ExitCode::SUCCESS)
    } else {
        print!(
            "{}",
            super::run::failure_report(&args.file, &scenario, &report)
        );
        Ok(ExitCode::from(1))
    }
}
