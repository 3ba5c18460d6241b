//! `simqtt junit-merge --out FILE IN...`: the JUnit files of a sharded run (one per CI
//! machine) as one report. Test suites of one name (a scenario whose seeds several shards ran)
//! become one suite holding all their test cases; every total is recounted from the cases, so
//! the merged `<testsuites>` says how many ran in all. Read and written by quick-junit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use quick_junit::{Report, TestSuite};

#[derive(clap::Args)]
pub struct Args {
    /// Where the merged report goes.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The JUnit files to merge (`simqtt run --junit` or `simqtt certify --junit` output).
    #[arg(required = true, value_name = "IN")]
    inputs: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for path in &args.inputs {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report = Report::deserialize_from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a JUnit report: {e}", path.display()))?;
        reports.push(report);
    }
    let merged = merge(reports);
    let text = merged
        .to_string()
        .context("writing the merged JUnit report")?;
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "simqtt: merged {} files into {}: {} tests, {} failures, {} errors, {} skipped",
        args.inputs.len(),
        args.out.display(),
        merged.tests,
        merged.failures,
        merged.errors,
        merged.skipped
    );
    Ok(ExitCode::SUCCESS)
}

/// The reports as one: suites merged by name in order of first appearance, totals recounted,
/// times summed (machine time spent, not the wall time of the slowest shard).
pub fn merge(reports: Vec<Report>) -> Report {
    let name = reports
        .iter()
        .find_map(|r| r.name.clone())
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| "simqtt".to_string());
    let mut suites: Vec<TestSuite> = Vec::new();
    let mut time = std::time::Duration::ZERO;
    for report in reports {
        time += report.time.unwrap_or_default();
        for suite in report.test_suites {
            match suites.iter_mut().find(|s| s.name == suite.name) {
                Some(into) => {
                    into.time = match (into.time, suite.time) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    };
                    for p in suite.properties {
                        if !into.properties.contains(&p) {
                            into.properties.push(p);
                        }
                    }
                    into.add_test_cases(suite.test_cases);
                }
                None => {
                    // Recount from the cases: add_test_cases counts each as it goes.
                    let mut fresh = TestSuite::new(suite.name.clone());
                    fresh.time = suite.time;
                    fresh.timestamp = suite.timestamp;
                    fresh.properties = suite.properties;
                    fresh.system_out = suite.system_out;
                    fresh.system_err = suite.system_err;
                    fresh.extra = suite.extra;
                    fresh.add_test_cases(suite.test_cases);
                    suites.push(fresh);
                }
            }
        }
    }
    let mut out = Report::new(name);
    out.set_time(time);
    out.add_test_suites(suites);
    out
}
