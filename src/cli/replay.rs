//! `simqtt replay FILE --seed N [--trace OUT.jsonl]`: one run, reproduced byte for byte.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use simqtt::{scenario, sim};

#[derive(clap::Args)]
pub struct Args {
    /// The scenario file.
    file: PathBuf,
    /// The seed to replay.
    #[arg(long)]
    seed: u64,
    /// Write the trace as JSON lines here.
    #[arg(long)]
    trace: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let s = scenario::load(&args.file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (clients, steps) = sim::expand::expand(&s, args.seed);
    println!(
        "simqtt replay: {} seed {} ({} clients, {} steps, checkers: {})",
        s.name,
        args.seed,
        clients.len(),
        steps.len(),
        s.checker_list()
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let result = sim::run(&s, args.seed);
    if let Some(path) = &args.trace {
        std::fs::write(path, result.trace.to_jsonl())
            .with_context(|| path.display().to_string())?;
        println!("trace: {} ({} records)", path.display(), result.trace.len());
    }
    for e in &result.expectations {
        println!(
            "step {}: {} {}",
            e.step,
            if e.passed { "ok" } else { "FAILED" },
            e.message
        );
    }
    for o in &result.outcomes {
        let notes: Vec<String> = o.notes.iter().map(|(n, c)| format!("{n} ×{c}")).collect();
        println!(
            "checker {}: {}{}",
            o.checker,
            if o.passed() { "ok" } else { "FAILED" },
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            }
        );
    }
    if result.passed() {
        println!("passed ({:.1}s simulated)", result.simulated.as_secs_f64());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{}", result.failures());
        Ok(ExitCode::FAILURE)
    }
}
