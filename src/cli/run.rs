//! `simqtt run [PATH...]`: every scenario under the paths, each for its seeds, in the
//! simulator; a summary table; exit 0 only when everything passes. Failures print the
//! scenario, seed, what failed (with the trace around it) and the replay command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use simqtt::scenario::{self, Scenario};
use simqtt::sim;

#[derive(clap::Args)]
pub struct Args {
    /// Scenario files or directories (searched for *.yaml).
    #[arg(default_value = "scenarios")]
    paths: Vec<PathBuf>,
    /// Seeds per scenario (default: the scenario's `seeds`).
    #[arg(long)]
    seeds: Option<u32>,
    /// First seed (default: the scenario's `seed`, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs in parallel (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Only this part of the work: `I/N` (1-based), for CI matrices.
    #[arg(long)]
    shard: Option<String>,
    /// Only scenarios whose path contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
}

fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
                    let p = entry?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|e| e == "yaml") {
                        out.push(p);
                    }
                }
            }
        } else if path.exists() {
            out.push(path.clone());
        } else {
            bail!("{}: no such file or directory", path.display());
        }
    }
    out.sort();
    Ok(out)
}

fn shard(spec: &str) -> Result<(usize, usize)> {
    let (i, n) = spec
        .split_once('/')
        .context("--shard takes I/N, like 1/4")?;
    let (i, n): (usize, usize) = (i.parse()?, n.parse()?);
    if n == 0 || i == 0 || i > n {
        bail!("--shard {spec}: I must be 1..=N");
    }
    Ok((i - 1, n))
}

struct Job {
    path: PathBuf,
    scenario: Scenario,
    seed: u64,
}

struct Done {
    path: PathBuf,
    name: String,
    seed: u64,
    passed: bool,
    report: String,
    wall_secs: f64,
    simulated_secs: f64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let files = collect(&args.paths)?;
    let mut scenarios = Vec::new();
    let mut invalid = 0;
    for path in files {
        if let Some(f) = &args.filter {
            if !path.to_string_lossy().contains(f.as_str()) {
                continue;
            }
        }
        match scenario::load(&path) {
            Ok(s) => scenarios.push((path, s)),
            Err(e) => {
                eprintln!("{e}");
                invalid += 1;
            }
        }
    }
    let mut jobs = Vec::new();
    for (path, s) in &scenarios {
        let seeds = args.seeds.unwrap_or_else(|| s.default_seeds());
        let first = args.seed.or(s.seed).unwrap_or(0);
        for k in 0..u64::from(seeds) {
            jobs.push(Job {
                path: path.clone(),
                scenario: s.clone(),
                seed: first + k,
            });
        }
    }
    if let Some(spec) = &args.shard {
        let (i, n) = shard(spec)?;
        jobs = jobs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, j)| j)
            .collect();
    }
    let threads = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    println!(
        "simqtt run: {} scenario(s), {} run(s), {threads} job(s){}",
        scenarios.len(),
        jobs.len(),
        args.seed
            .map(|s| format!(", first seed {s}"))
            .unwrap_or_default()
    );
    let total = jobs.len();
    let queue = Mutex::new(jobs.into_iter());
    let done: Mutex<Vec<Done>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some(job) = next else { break };
                let t = Instant::now();
                let result = sim::run(&job.scenario, job.seed);
                let d = Done {
                    name: job.scenario.name.clone(),
                    seed: job.seed,
                    passed: result.passed(),
                    report: result.failures(),
                    wall_secs: t.elapsed().as_secs_f64(),
                    simulated_secs: result.simulated.as_secs_f64(),
                    path: job.path,
                };
                let mut all = done.lock().unwrap_or_else(|p| p.into_inner());
                all.push(d);
                let last = all.last().expect("just pushed");
                println!(
                    "[{}/{total}] {} seed {}: {}",
                    all.len(),
                    last.name,
                    last.seed,
                    if last.passed { "ok" } else { "FAILED" }
                );
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by(|a, b| (&a.path, a.seed).cmp(&(&b.path, b.seed)));

    let failed: Vec<&Done> = done.iter().filter(|d| !d.passed).collect();
    for d in &failed {
        println!(
            "\nFAILED {} seed {}\n{}replay: simqtt replay {} --seed {}",
            d.name,
            d.seed,
            d.report,
            d.path.display(),
            d.seed
        );
    }
    println!(
        "\n{:<48} {:>6} {:>6} {:>10}",
        "scenario", "runs", "failed", "sim/wall"
    );
    let mut by_name: Vec<(&str, usize, usize, f64, f64)> = Vec::new();
    for d in &done {
        match by_name.last_mut() {
            Some(e) if e.0 == d.name => {
                e.1 += 1;
                e.2 += usize::from(!d.passed);
                e.3 += d.simulated_secs;
                e.4 += d.wall_secs;
            }
            _ => by_name.push((
                &d.name,
                1,
                usize::from(!d.passed),
                d.simulated_secs,
                d.wall_secs,
            )),
        }
    }
    for (name, runs, failed, sim, wall) in &by_name {
        println!(
            "{name:<48} {runs:>6} {failed:>6} {:>9.1}x",
            sim / wall.max(1e-9)
        );
    }
    println!(
        "\n{} run(s), {} failed, {} invalid file(s), {:.1}s",
        done.len(),
        failed.len(),
        invalid,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.junit {
        write_junit(path, &done)?;
    }
    Ok(if failed.is_empty() && invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn write_junit(path: &Path, done: &[Done]) -> Result<()> {
    let failures = done.iter().filter(|d| !d.passed).count();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"simqtt\" tests=\"{}\" failures=\"{failures}\">\n",
        done.len()
    );
    for d in done {
        xml.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"seed {}\" time=\"{:.3}\">",
            xml_escape(&d.name),
            d.seed,
            d.wall_secs
        ));
        if !d.passed {
            xml.push_str(&format!(
                "<failure message=\"replay: simqtt replay {} --seed {}\">{}</failure>",
                xml_escape(&d.path.display().to_string()),
                d.seed,
                xml_escape(&d.report)
            ));
        }
        xml.push_str("</testcase>\n");
    }
    xml.push_str("</testsuite>\n");
    std::fs::write(path, xml).with_context(|| path.display().to_string())
}
