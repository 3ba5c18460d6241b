//! `simqtt certify-client`: a client library, through its adapter, under the client-side
//! scenarios against simqtt's own broker (src/certify_client). Exit 0 when certified, 1 when
//! not, 2 on a usage error (unreadable profile or scenario, a scenario without the client
//! under test).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use simqtt::certify::statements::Statements;
use simqtt::certify::{report, Verdict};
use simqtt::certify_client::external::Adapter;
use simqtt::certify_client::profile::ClientProfile;
use simqtt::certify_client::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// Client-side scenario files or directories (searched for *.yaml). Default:
    /// scenarios/client/.
    paths: Vec<PathBuf>,
    /// The adapter: a shell command (run with `sh -c`, once per client process) that speaks
    /// the driver protocol of docs/client-certification.md on stdin/stdout.
    #[arg(long, value_name = "COMMAND")]
    cmd: String,
    /// What the client library claims (TOML); default: no claims beyond 3.1.1 QoS 0/1.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Run only scenarios whose name or path contains PATTERN.
    #[arg(long)]
    filter: Option<String>,
    /// Write JUnit XML (one testcase per scenario) to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write the Markdown report (per normative statement) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write every case's trace (JSON lines) into DIR.
    #[arg(long, value_name = "DIR")]
    traces: Option<PathBuf>,
    /// Append the adapter's stderr to FILE (default: discarded).
    #[arg(long, value_name = "FILE")]
    adapter_log: Option<PathBuf>,
}

const USAGE: &str = "usage: simqtt certify-client --cmd 'COMMAND' [--profile FILE.toml] \
[--filter P] [--report FILE.md] [--json FILE] [--junit FILE] [--html FILE] [PATH...]";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::init_logging("warn");
    let usage = |e: anyhow::Error| {
        eprintln!("simqtt certify-client: {e:#}\n{USAGE}");
        Ok(ExitCode::from(2))
    };
    if args.cmd.trim().is_empty() {
        return usage(anyhow::anyhow!("--cmd is empty"));
    }
    let profile = match &args.profile {
        Some(path) => match ClientProfile::from_file(path) {
            Ok(p) => p,
            Err(e) => return usage(e),
        },
        None => ClientProfile::default(),
    };
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("scenarios/client")]
    } else {
        args.paths.clone()
    };
    let scenarios = match super::run::collect(&paths) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let scenarios = super::run::filter_scenarios(scenarios, args.filter.as_deref());
    if scenarios.is_empty() {
        return usage(anyhow::anyhow!("no scenarios under {paths:?}"));
    }
    for (file, scenario) in &scenarios {
        if let Some(why) = certify_client::refuse(scenario) {
            return usage(anyhow::anyhow!("{}: {why}", file.display()));
        }
    }
    let options = Options {
        adapter: Adapter {
            command: args.cmd.clone(),
            stderr: args.adapter_log.clone(),
        },
        profile,
        profile_file: args.profile.clone(),
        simqtt: std::env::current_exe().context("finding the simqtt executable")?,
        work_dir: std::env::temp_dir().join("simqtt-certify-client"),
        traces: args.traces.clone(),
    };
    let version = match certify_client::preflight(&options.adapter) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("simqtt certify-client: the adapter {:?}: {e}", args.cmd);
            return Ok(ExitCode::from(2));
        }
    };
    eprintln!(
        "certifying the client {:?} ({version}): {} scenario files, profile {}",
        args.cmd,
        scenarios.len(),
        options.profile.describe()
    );
    let progress = std::io::stderr().is_terminal();
    let cert = certify_client::certify(
        &scenarios,
        &options,
        Some(version.clone()),
        |case, done, total| {
            if progress {
                eprint!(
                    "\r[{done}/{total}] {:<50}",
                    super::run::truncate(&case.scenario, 50)
                );
            }
        },
    );
    if progress {
        eprintln!();
    }
    let statements = Statements::embedded();
    print!("{}", report::terminal(&cert, statements));
    let count = |f: fn(&Verdict) -> bool| cert.cases.iter().filter(|c| f(&c.verdict)).count();
    println!(
        "{} cases: {} passed, {} failed, {} inconclusive, {} skipped in {:.1} s; {}",
        cert.cases.len(),
        count(|v| matches!(v, Verdict::Passed)),
        count(|v| matches!(v, Verdict::Failed)),
        count(|v| matches!(v, Verdict::Inconclusive { .. })),
        count(|v| matches!(v, Verdict::Skipped { .. })),
        cert.duration.as_secs_f64(),
        if cert.certified() {
            "certified"
        } else {
            "NOT certified"
        }
    );
    let write = |path: &Option<PathBuf>, text: String| -> anyhow::Result<()> {
        if let Some(path) = path {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    };
    write(&args.junit, report::junit(&cert))?;
    write(&args.report, report::markdown(&cert, statements))?;
    write(&args.json, report::json(&cert, statements))?;
    write(&args.html, report::html(&cert, statements))?;
    Ok(if cert.certified() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
