//! Determinism, tested (DESIGN.md): every library scenario runs twice with one seed and the
//! two traces must be the same bytes; the traces of a handful of small explicit scenarios are
//! pinned as insta snapshots in the top-level `snapshots/`, so a change in behaviour shows up
//! as a reviewed diff.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use simqtt::scenario;
use simqtt::sim;

fn scenario_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            scenario_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

fn library() -> Vec<PathBuf> {
    let mut files = Vec::new();
    scenario_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
        &mut files,
    );
    files
}

#[test]
fn every_library_scenario_replays_byte_for_byte() {
    let files = library();
    assert!(
        files.len() >= 50,
        "the library has {} scenarios, fewer than 50",
        files.len()
    );
    let next = AtomicUsize::new(0);
    let differing = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(file) = files.get(i) else { break };
                let s = scenario::load(file).unwrap_or_else(|e| panic!("{e}"));
                let seed = sim::seeds_of(&s, Some(1))[0] ^ 0x5eed;
                let first = sim::run(&s, seed).trace.to_jsonl();
                let second = sim::run(&s, seed).trace.to_jsonl();
                assert!(!first.is_empty(), "{}: empty trace", file.display());
                if first != second {
                    let line = first
                        .lines()
                        .zip(second.lines())
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    differing.lock().unwrap().push(format!(
                        "{} seed {seed}: first difference at line {}",
                        file.display(),
                        line + 1
                    ));
                }
            });
        }
    });
    let differing = differing.into_inner().unwrap();
    assert!(differing.is_empty(), "nondeterministic: {differing:#?}");
}

/// Small explicit scenarios whose traces are pinned.
const PINNED: [&str; 5] = [
    "qos/qos1-basic.yaml",
    "qos/qos2-basic.yaml",
    "will/will-on-client-crash.yaml",
    "retained/retained-replace.yaml",
    "session/persistent-session-present.yaml",
];

#[test]
fn small_explicit_traces_are_pinned() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    for name in PINNED {
        let s = scenario::load(&root.join(name)).unwrap_or_else(|e| panic!("{e}"));
        let report = sim::run(&s, 1);
        assert!(report.passed(), "{name}: {:#?}", report.failures);
        let snapshot = format!("trace-{}", name.trim_end_matches(".yaml").replace('/', "-"));
        insta::with_settings!({
            snapshot_path => "../snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(snapshot, report.trace.to_jsonl());
        });
    }
}

#[test]
fn different_seeds_give_different_worlds() {
    // The seed must reach the world: two seeds of a randomised scenario differ.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let s = scenario::load(&root.join("chaos/chaos-qos1-persistent.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let a = sim::run(&s, 1).trace.to_jsonl();
    let b = sim::run(&s, 2).trace.to_jsonl();
    assert_ne!(a, b);
}
