//! The scenario library in this process: what `simqtt run scenarios/` runs (every scenario
//! under `scenarios/`, every default seed, through `sim::run`), failing on any failed run. It
//! is the fast stage of the mutation harness (`scripts/mutants`, docs/mutation.md), which
//! builds it with the `mutants` profile so the library runs in seconds. It is a unit test, not
//! a `tests/` target, so that a mutant costs one build of simqtt (the lib's test binary)
//! rather than three (the lib, the binary every integration test brings, and the test).
//!
//! Ignored by a plain `cargo test`: CI already runs the same library through the release CLI
//! (`cargo run --release -- run scenarios/`), and in the dev profile it takes minutes. Run it
//! with `cargo test --profile mutants --lib -- --ignored sim::library_tests`.
//!
//! `SIMQTT_FAIL_FAST=1` stops at the first failing run (the harness needs one failure to call
//! a mutant caught, not all of them); without it every failing run is reported.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::scenario::{self, Scenario};
use crate::sim;

fn scenario_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            scenario_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
#[ignore = "the mutation harness's fast stage; CI runs the same library through `simqtt run scenarios/`"]
fn every_library_scenario_passes_its_default_seeds() {
    let mut files = Vec::new();
    scenario_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
        &mut files,
    );
    assert!(
        files.len() >= 50,
        "the library has {} scenarios, fewer than 50",
        files.len()
    );
    let scenarios: Vec<(PathBuf, Scenario)> = files
        .into_iter()
        .map(|f| {
            let s = scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
            (f, s)
        })
        .collect();
    // Explicit scenarios first: one seed each, and the likeliest to fail fast on a mutant.
    let mut work: Vec<(usize, u64)> = Vec::new();
    for pass in [scenario::Kind::Explicit, scenario::Kind::Randomised] {
        for (i, (_, s)) in scenarios.iter().enumerate() {
            if s.kind() == pass {
                work.extend(sim::seeds_of(s, None).into_iter().map(|seed| (i, seed)));
            }
        }
    }
    let fail_fast = std::env::var_os("SIMQTT_FAIL_FAST").is_some_and(|v| v == "1");
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let ran = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(i, seed)) = work.get(k) else { break };
                let (path, s) = &scenarios[i];
                let report = sim::run(s, seed);
                ran.fetch_add(1, Ordering::Relaxed);
                if !report.passed() {
                    let first = &report.failures[0];
                    failed.lock().unwrap().push(format!(
                        "{} seed {seed}: {} failure(s), first {} [{}]: {}\n  replay: simqtt replay {} --seed {seed}",
                        s.name,
                        report.failures.len(),
                        first.kind,
                        first.spec,
                        first.happened,
                        path.display()
                    ));
                    if fail_fast {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} runs failed:\n{}",
        failed.len(),
        ran.into_inner(),
        failed.join("\n")
    );
    assert_eq!(ran.into_inner(), work.len(), "every run ran");
}
