//! The simulator end to end: library scenarios pass, runs are deterministic, and failures are
//! reported.

use std::path::Path;

use super::*;
use crate::scenario;

fn library(path: &str) -> Scenario {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(path);
    scenario::load(&full).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn offline_persistent_subscriber_gets_its_messages() {
    let s = library("qos/qos1-offline-persistent.yaml");
    let result = run(&s, 1);
    println!("{}", result.trace.to_jsonl());
    assert!(result.passed(), "{}", result.failures());
    assert_eq!(result.expectations.len(), 2);
}

#[test]
fn same_seed_same_trace() {
    let s = library("qos/qos1-offline-persistent.yaml");
    let a = run(&s, 7).trace.to_jsonl();
    let b = run(&s, 7).trace.to_jsonl();
    assert_eq!(a, b);
}

#[test]
fn a_failed_expectation_is_reported() {
    let s = scenario::parse(
        "t.yaml",
        "clients: {a: {}, b: {}}\nsteps:\n  - connect: a\n  - connect: b\n  - publish: {client: b, topic: t}\n  - expect_messages: {client: a, within: 1s, messages: [{from: b}]}\n",
    )
    .unwrap();
    let result = run(&s, 1);
    assert!(!result.passed());
    assert!(
        result.failures().contains("step 4"),
        "{}",
        result.failures()
    );
}

/// A probe, not a test: `PROBE=chaos/x.yaml PROBE_SEEDS=20 cargo test --lib chaos_probe --
/// --ignored --nocapture` runs seeds and prints failures, notes and event counts.
#[test]
#[ignore]
fn chaos_probe() {
    let file = std::env::var("PROBE").unwrap_or("chaos/qos1-persistent-partitions.yaml".into());
    let seeds: u64 = std::env::var("PROBE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let verbose = std::env::var("PROBE_VERBOSE").is_ok();
    let s = library(&file);
    for seed in 0..seeds {
        let result = run(&s, seed);
        println!(
            "seed {seed}: simulated {:?}, {} records, passed {}",
            result.simulated,
            result.trace.len(),
            result.passed()
        );
        if !result.passed() {
            println!("{}", result.failures());
        }
        for o in &result.outcomes {
            if !o.notes.is_empty() {
                println!("  {} notes {:?}", o.checker, o.notes);
            }
        }
        let mut kinds = std::collections::BTreeMap::new();
        for r in &result.trace.records {
            let k = serde_json::to_value(&r.event).unwrap();
            let mut key = k["event"].as_str().unwrap_or("").to_string();
            if let Some(f) = k.get("fault") {
                key = format!("fault:{}", f["kind"].as_str().unwrap_or(""));
            }
            if let Some(c) = k.get("cause") {
                key = format!("disc:{}", c["kind"].as_str().unwrap_or(""));
            }
            *kinds.entry(key).or_insert(0) += 1;
        }
        println!("  {kinds:?}");
        if verbose && seed == 0 {
            for r in result.trace.records.iter().filter(|r| {
                !matches!(
                    r.event,
                    Event::PublishSent { .. }
                        | Event::PublishAcked { .. }
                        | Event::Delivered { .. }
                )
            }) {
                println!("    {r}");
            }
        }
    }
}

fn library_files() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every library scenario passes with seed 1, and running it twice gives the same trace byte
/// for byte (DESIGN.md, Determinism). `SIM_FILTER` narrows the set.
#[test]
fn library_passes_and_is_deterministic() {
    let filter = std::env::var("SIM_FILTER").unwrap_or_default();
    let mut failures = Vec::new();
    for path in library_files() {
        if !path.to_string_lossy().contains(&filter) {
            continue;
        }
        let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let first = run(&s, 1);
        let second = run(&s, 1);
        println!(
            "{}: passed {} in {:?} wall for {:?} simulated (x2)",
            path.display(),
            first.passed(),
            started.elapsed(),
            first.simulated
        );
        if !first.passed() {
            failures.push(format!("{}:\n{}", path.display(), first.failures()));
        }
        let (a, b) = (first.trace.to_jsonl(), second.trace.to_jsonl());
        if a != b {
            let at = a.lines().zip(b.lines()).position(|(x, y)| x != y);
            let line = |t: &str, i: Option<usize>| {
                i.and_then(|i| t.lines().nth(i))
                    .unwrap_or("(end)")
                    .to_string()
            };
            failures.push(format!(
                "{}: two runs with seed 1 differ at line {at:?}:\n  {}\n  {}",
                path.display(),
                line(&a, at),
                line(&b, at)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The traces of a few small explicit scenarios, pinned (seed 1). A change in the broker, the
/// client or the runner that alters what happens shows up here first.
#[test]
fn traces_are_pinned() {
    for file in [
        "qos/qos1-offline-persistent.yaml",
        "will/will-on-client-crash.yaml",
        "qos/qos-downgrade.yaml",
    ] {
        let s = library(file);
        let trace = run(&s, 1).trace.to_jsonl();
        let name = file.replace(['/', '.'], "_");
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!(format!("trace_{name}"), trace);
        });
    }
}

/// Probe: runs one scenario several times with one seed and prints where traces diverge.
#[test]
#[ignore]
fn divergence_probe() {
    let file = std::env::var("PROBE").unwrap_or("chaos/qos2-broker-crash.yaml".into());
    let s = library(&file);
    let first = run(&s, 1).trace.to_jsonl();
    for k in 1..4 {
        let again = run(&s, 1).trace.to_jsonl();
        let diverge = first.lines().zip(again.lines()).position(|(a, b)| a != b);
        if let Some(i) = diverge {
            println!(
                "run {k} diverges at line {i}:\n  {}\n  {}",
                first.lines().nth(i).unwrap(),
                again.lines().nth(i).unwrap()
            );
            for l in first.lines().skip(i.saturating_sub(5)).take(5) {
                println!("    ctx {l}");
            }
        } else {
            println!(
                "run {k}: identical ({} vs {} lines)",
                first.lines().count(),
                again.lines().count()
            );
        }
    }
}
