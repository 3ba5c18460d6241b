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
