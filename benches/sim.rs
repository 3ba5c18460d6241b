//! Simulator speed (issue 5, §7): simulated seconds per wall second for
//! (a) 1 broker + 10 clients at QoS 1 for 60 simulated seconds and
//! (b) 1 broker + 200 client sessions, and seeds per second for a chaos scenario.
//! Goals on the 2-core reference machine: (a) ≥ 200×, (b) ≥ 20×.
//!
//! `cargo bench --bench sim` (one thread per measurement; `simqtt run` adds parallel seeds).

use std::path::Path;
use std::time::Instant;

use simqtt::scenario;
use simqtt::sim;

fn measure(label: &str, yaml: &str, seed: u64) {
    let s = scenario::parse(label, yaml).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let mut report = sim::simulate(&s, seed);
    let wall = started.elapsed().as_secs_f64();
    let judged = Instant::now();
    sim::judge(&s, &mut report);
    let judge_wall = judged.elapsed().as_secs_f64();
    let simulated = report.simulated.as_secs_f64();
    let deliveries = report
        .trace
        .records
        .iter()
        .filter(|r| matches!(r.event, simqtt::history::Event::Delivered { .. }))
        .count();
    println!(
        "{label}: {simulated:.0} simulated s in {wall:.2} wall s = {:.0}x real time; \
         checkers {judge_wall:.2} s ({deliveries} deliveries, {} trace records, {})",
        simulated / wall,
        report.trace.len(),
        if report.passed() {
            "checkers pass"
        } else {
            "CHECKERS FAIL"
        }
    );
}

fn main() {
    // (a) 10 clients (5 publishers at 10 msg/s, 5 subscribers), QoS 1, 60 s, one client host.
    measure(
        "(a) 1 broker + 10 clients, QoS 1, 60 s",
        "description: bench a
seeds: 1
broker: {durable: false}
quiesce: 1s
workload:
  publishers: 5
  subscribers: 5
  topics: 5
  qos: [1]
  rate: 10/s
  duration: 60s
  keepalive: 30s
  hosts: 1
",
        1,
    );
    // (b) 200 sessions (100 publishers at 1 msg/s, 100 subscribers) over 4 client hosts.
    // (a) and (b) measure the simulator with the in-memory store; the durable broker's file
    // store on turmoil's simulated disk (a sync per acknowledged change) costs more, and the
    // chaos measurement (c) includes it.
    measure(
        "(b) 1 broker + 200 sessions, QoS 1, 20 s",
        "description: bench b
seeds: 1
broker: {durable: false}
quiesce: 1s
workload:
  publishers: 100
  subscribers: 100
  topics: 20
  qos: [1]
  rate: 1/s
  duration: 20s
  keepalive: 30s
  hosts: 4
",
        1,
    );
    // (c) seeds per second of a library chaos scenario, on one thread.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/chaos/chaos-qos1-persistent.yaml");
    let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let seeds = 20;
    let started = Instant::now();
    let mut passed = 0;
    let mut simulated = 0.0;
    for seed in 0..seeds {
        let report = sim::run(&s, seed);
        simulated += report.simulated.as_secs_f64();
        passed += usize::from(report.passed());
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "(c) {}: {seeds} seeds in {wall:.2} wall s = {:.1} seeds/s on one thread ({:.0}x real time, {passed}/{seeds} pass)",
        s.name,
        seeds as f64 / wall,
        simulated / wall
    );
}
