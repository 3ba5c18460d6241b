//! Shrinking speed and size (issue 15, §1): a planted broker bug that loses QoS 2 receive ids
//! across a restart, found by `scenarios/chaos/qos2-broker-crash.yaml`, and one that forgets
//! the will on keepalive expiry, found by `scenarios/chaos/chaos-mixed-v5-wills.yaml`. For
//! every seed of the scenario (its `seeds:`) on which the planted bug shows, the failing run is
//! shrunk and the size before and after and the wall time are printed.
//! Goal on the 2-core reference machine: at most 12 steps, in under 60 s, for every seed.
//!
//! `cargo bench --bench shrink` (one candidate at a time; `-- --jobs 2` to run two at once,
//! `-- --first N` to shrink only the first N failing seeds of each bug).

use std::path::Path;
use std::time::{Duration, Instant};

use simqtt::broker::PlantedBug;
use simqtt::scenario;
use simqtt::shrink::{self, Target};
use simqtt::sim;

const GOAL_STEPS: usize = 12;
const GOAL_TIME: Duration = Duration::from_secs(60);

/// CPU time this process has used (user + system, every thread): on a shared machine the
/// wall time also counts other people's work.
fn cpu() -> Duration {
    // SAFETY: getrusage(2) fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// Shrinks every failing seed of `file` with `bug` planted; returns whether the goal held.
fn bench(file: &str, bug: PlantedBug, target: &str, jobs: usize, first: usize) -> bool {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(file);
    let mut s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    s.broker.planted_bug = Some(bug);
    let target = Target::parse(target);
    let seeds = sim::seeds_of(&s, None);
    let failing: Vec<u64> = seeds
        .iter()
        .copied()
        .filter(|&seed| shrink::reproduces(&sim::run(&s, seed).failures, &target))
        .collect();
    println!(
        "{file} with {}: {target} on {} of {} seeds",
        bug.as_str(),
        failing.len(),
        seeds.len()
    );
    let mut worst_steps = 0;
    let mut worst_time = Duration::ZERO;
    let mut worst_cpu = Duration::ZERO;
    let mut total = Duration::ZERO;
    let mut shrunk_count = 0;
    for &seed in failing.iter().take(first) {
        let started = Instant::now();
        let cpu_before = cpu();
        let result = shrink::shrink(
            &s,
            seed,
            Some(target.clone()),
            "cargo bench --bench shrink",
            &shrink::Options {
                jobs,
                ..shrink::Options::default()
            },
        );
        let wall = started.elapsed();
        let cpu_used = cpu() - cpu_before;
        total += wall;
        worst_time = worst_time.max(wall);
        worst_cpu = worst_cpu.max(cpu_used);
        match result {
            Ok(x) => {
                shrunk_count += 1;
                worst_steps = worst_steps.max(x.steps_after);
                println!(
                    "  seed {seed:>3}: {:>4} -> {:>2} steps, {:>4} runs, {:>5.1} s wall, {:>5.1} s cpu{}",
                    x.steps_before,
                    x.steps_after,
                    x.runs,
                    wall.as_secs_f64(),
                    cpu_used.as_secs_f64(),
                    x.variant.map(|v| format!(" ({v})")).unwrap_or_default()
                );
            }
            Err(e) => println!(
                "  seed {seed:>3}: not shrunk ({:.1} s wall): {e}",
                wall.as_secs_f64()
            ),
        }
    }
    let tried = failing.len().min(first);
    let met = shrunk_count == tried && worst_steps <= GOAL_STEPS && worst_time < GOAL_TIME;
    println!(
        "  {shrunk_count} of {tried} shrunk; largest {worst_steps} steps, slowest {:.1} s wall ({:.1} s cpu at most), mean {:.1} s wall: goal (<= {GOAL_STEPS} steps, < {} s wall) {}",
        worst_time.as_secs_f64(),
        worst_cpu.as_secs_f64(),
        total.as_secs_f64() / tried.max(1) as f64,
        GOAL_TIME.as_secs(),
        if met { "met" } else { "NOT MET" }
    );
    met
}

fn main() {
    let jobs = arg("--jobs").unwrap_or(1);
    let first = arg("--first").unwrap_or(usize::MAX);
    println!("shrink benchmark: {jobs} candidate run(s) at once");
    let a = bench(
        "chaos/qos2-broker-crash.yaml",
        PlantedBug::LoseQos2ReceiveIds,
        "qos2:MQTT-4.3.3-2",
        jobs,
        first,
    );
    let b = bench(
        "chaos/chaos-mixed-v5-wills.yaml",
        PlantedBug::ForgetWillOnKeepalive,
        "will:MQTT-3.1.2-8",
        jobs,
        first,
    );
    if !(a && b) {
        std::process::exit(1);
    }
}
