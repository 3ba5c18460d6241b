//! Shrinking as `replay --shrink` and `explore` print it: what is kept, the size before and
//! after, the time it took, and the regression file written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use simqtt::scenario::Scenario;
use simqtt::shrink::{self, Target};

/// Shrinks one failing run and writes its regression file into `out`; `None` (with the reason
/// printed) when it cannot be shrunk.
pub fn shrink_and_write(
    scenario: &Scenario,
    seed: u64,
    target: Option<Target>,
    origin: &str,
    jobs: usize,
    out: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let started = Instant::now();
    let options = shrink::Options {
        jobs,
        ..shrink::Options::default()
    };
    let shrunk = match shrink::shrink(scenario, seed, target, origin, &options) {
        Ok(s) => s,
        Err(e) => {
            println!("shrink: {e}");
            return Ok(None);
        }
    };
    let elapsed = started.elapsed();
    println!("shrink: keeping {}", shrunk.target);
    if let (Some(drawn), Some(variant)) = (&shrunk.drawn, &shrunk.variant) {
        println!(
            "shrink: the drawn plan ({} messages, {} faults) as explicit steps: {} steps, still failing ({variant})",
            drawn.messages, drawn.faults, shrunk.steps_before
        );
    }
    println!(
        "shrink: {} steps -> {} steps in {} runs, {:.1} s",
        shrunk.steps_before,
        shrunk.steps_after,
        shrunk.runs,
        elapsed.as_secs_f64()
    );
    let path = shrink::write_regression(out, &shrunk, &scenario.name)
        .with_context(|| format!("writing the regression file into {}", out.display()))?;
    println!("shrink: wrote {}", path.display());
    println!("shrink: it fails with: simqtt run {}", path.display());
    Ok(Some(path))
}
