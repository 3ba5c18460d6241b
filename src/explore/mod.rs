//! Exploration beyond the library's files: scenarios drawn from a grammar ([`grammar`]), each
//! run in the simulator and judged by every checker; every distinct failure (by checker and
//! statement) is shrunk ([`crate::shrink`]) into a regression file.
//!
//! Run `i` of an exploration with seed `S` draws its scenario and its run seed from a ChaCha8
//! stream keyed by `(S, i)` alone, so a run can be drawn again without the ones before it, and
//! runs are processed in index order whatever `jobs` is: an exploration bounded by a run count
//! is deterministic (same findings, same regression files). One bounded by time runs as many
//! runs as fit, each of them deterministic.

pub mod grammar;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::broker::PlantedBug;
use crate::scenario::{Kind, Scenario};
use crate::shrink::{self, ShrinkError, Shrunk, Target};
use crate::sim::{self, Failure};

/// Run seeds are drawn below this, so they read well in a file.
const RUN_SEED_MAX: u64 = 1_000_000;

/// What an exploration is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Stop after this many runs.
    pub runs: Option<u64>,
    /// Start no run after this much wall time.
    pub duration: Option<Duration>,
    /// Runs at once (and shrink candidates at once).
    pub jobs: usize,
    /// Tests only: plant this bug in the simulated broker of every drawn scenario.
    pub planted_bug: Option<PlantedBug>,
    /// Bound on each shrink's candidate runs.
    pub shrink_max_runs: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seed: 0,
            runs: None,
            duration: None,
            jobs: 1,
            planted_bug: None,
            shrink_max_runs: shrink::Options::default().max_runs,
        }
    }
}

/// Run `index` of exploration `seed`: its scenario (seed pinned, so `simqtt run` on the file
/// replays it) and whether it is a workload.
pub fn drawn(seed: u64, index: u64, planted_bug: Option<PlantedBug>) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let run_seed = rng.random_range(0..RUN_SEED_MAX);
    let mut s = grammar::draw(&mut rng, &format!("explore-{seed}-{index}"));
    s.seed = Some(run_seed);
    s.seeds = Some(1);
    s.broker.planted_bug = planted_bug;
    s
}

/// A distinct failure: the first run that showed it, and its shrink.
#[derive(Debug, Clone)]
pub struct Finding {
    pub target: Target,
    /// The first run (index) that showed it, its drawn scenario and the failure.
    pub index: u64,
    pub scenario: Scenario,
    pub failure: Failure,
    /// Runs that showed it.
    pub hits: u64,
    /// The shrink of the first run (`None` for a `sim` failure, which is not a verdict on the
    /// broker and cannot be shrunk).
    pub shrunk: Option<Result<Shrunk, ShrinkError>>,
}

/// What an exploration did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub runs: u64,
    pub workloads: u64,
    pub programs: u64,
    pub failed_runs: u64,
    pub simulated: Duration,
    pub wall: Duration,
    pub findings: Vec<Finding>,
}

/// Explores until the run count or the time is spent. `progress` hears after every batch of
/// runs; `found` hears each new finding once it is shrunk (to write its files at once, so an
/// interrupted exploration keeps what it found).
pub fn explore(
    options: &Options,
    progress: &mut dyn FnMut(&Summary),
    found: &mut dyn FnMut(&Finding),
) -> Summary {
    let started = Instant::now();
    let jobs = options.jobs.max(1);
    let mut summary = Summary::default();
    let mut seen: BTreeMap<Target, usize> = BTreeMap::new();
    let mut index = 0u64;
    loop {
        if options.runs.is_some_and(|n| index >= n) {
            break;
        }
        if options.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if options.runs.is_none() && options.duration.is_none() && index > 0 {
            break;
        }
        let end = match options.runs {
            Some(n) => (index + jobs as u64).min(n),
            None => index + jobs as u64,
        };
        let batch: Vec<u64> = (index..end).collect();
        let results = run_batch(options, &batch);
        for (i, scenario, report) in results {
            summary.runs += 1;
            match scenario.kind() {
                Kind::Randomised => summary.workloads += 1,
                Kind::Explicit => summary.programs += 1,
            }
            summary.simulated += report.simulated;
            if !report.passed() {
                summary.failed_runs += 1;
            }
            let mut targets_here: Vec<Target> = Vec::new();
            for failure in &report.failures {
                let target = Target::of(failure);
                if targets_here.contains(&target) {
                    continue;
                }
                targets_here.push(target.clone());
                if let Some(&k) = seen.get(&target) {
                    summary.findings[k].hits += 1;
                    continue;
                }
                let seed = scenario.seed.unwrap_or(0);
                let shrunk = (failure.kind != "sim").then(|| {
                    shrink::shrink(
                        &scenario,
                        seed,
                        Some(target.clone()),
                        &format!("simqtt explore --seed {} (run {i})", options.seed),
                        &shrink::Options {
                            jobs,
                            max_runs: options.shrink_max_runs,
                        },
                    )
                });
                let finding = Finding {
                    target: target.clone(),
                    index: i,
                    scenario: scenario.clone(),
                    failure: failure.clone(),
                    hits: 1,
                    shrunk,
                };
                found(&finding);
                seen.insert(target, summary.findings.len());
                summary.findings.push(finding);
            }
        }
        index = end;
        summary.wall = started.elapsed();
        progress(&summary);
    }
    summary.wall = started.elapsed();
    summary
}

/// Runs a batch of runs in parallel; results in index order.
fn run_batch(options: &Options, batch: &[u64]) -> Vec<(u64, Scenario, sim::RunReport)> {
    let one = |i: u64| {
        let scenario = drawn(options.seed, i, options.planted_bug);
        let report = sim::run(&scenario, scenario.seed.unwrap_or(0));
        (i, scenario, report)
    };
    if batch.len() == 1 {
        return vec![one(batch[0])];
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = batch
            .iter()
            .map(|&i| {
                let one = &one;
                scope.spawn(move || one(i))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests;
