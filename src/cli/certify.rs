//! `simqtt certify`: the scenario library against a real broker over TCP, graded by the spec.
//! Exit 0 when certified (no MUST violation, no case that could not run, none inconclusive),
//! 1 when not, 2 on a usage error (bad broker address, unreadable profile or scenario).

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use simqtt::certify::profile::Profile;
use simqtt::certify::runner::{self, Options};
use simqtt::certify::statements::Statements;
use simqtt::certify::{report, Verdict};

#[derive(clap::Args)]
pub struct Args {
    /// Scenario files or directories (searched for *.yaml). Default: scenarios/.
    paths: Vec<PathBuf>,
    /// The broker under test: mqtt://HOST:PORT (port 1883 when omitted).
    #[arg(long)]
    broker: String,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// Shell command that restarts the broker (run with `sh -c` for every broker crash; the
    /// port is then awaited). Without it, scenarios that restart the broker are skipped.
    #[arg(long)]
    restart_cmd: Option<String>,
    /// What the broker supports (TOML); default: MQTT 3.1.1 + 5.0, no persistence.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Seeds per randomised scenario (explicit scenarios run once).
    #[arg(long, default_value_t = 1)]
    seeds: u32,
    /// Run only this seed of each scenario (the rerun hint of a failed case).
    #[arg(long)]
    seed: Option<u64>,
    /// Cases run at once (cases that restart the broker always run alone).
    #[arg(long, short = 'j', default_value_t = 8)]
    jobs: usize,
    /// Run only scenarios whose name or path contains PATTERN.
    #[arg(long)]
    filter: Option<String>,
    /// Write JUnit XML (one testcase per scenario × seed) to FILE.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write the Markdown report (per normative statement) to FILE.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the JSON report to FILE.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every case's trace (JSON lines, one file per scenario × seed) into DIR.
    #[arg(long, value_name = "DIR")]
    traces: Option<PathBuf>,
}

const USAGE: &str = "usage: simqtt certify --broker mqtt://HOST:PORT [--username U --password P] \
[--restart-cmd 'CMD'] [--profile FILE.toml] [--seeds N] [--jobs J] [--filter P] [--junit FILE] \
[--report FILE.md] [--json FILE] [PATH...]";

/// `mqtt://HOST:PORT`, `mqtt://HOST` or `HOST:PORT` → an address (IPv4 first).
pub fn parse_broker(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = match url.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => rest,
        Some((scheme, _)) => bail!("--broker {url}: scheme {scheme}:// is not supported (mqtt://)"),
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        bail!("--broker {url}: no host");
    }
    let with_port = if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !rest.ends_with(']')
    {
        rest.to_string()
    } else {
        format!("{rest}:1883")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .with_context(|| format!("--broker {url}: cannot resolve {with_port}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("--broker {url}: {with_port} resolves to nothing"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Warnings only (a case's cleanup or trace file failing); RUST_LOG may ask for more.
    super::init_logging("warn");
    let usage = |e: anyhow::Error| {
        eprintln!("simqtt certify: {e:#}\n{USAGE}");
        Ok(ExitCode::from(2))
    };
    let broker = match parse_broker(&args.broker) {
        Ok(b) => b,
        Err(e) => return usage(e),
    };
    if args.password.is_some() && args.username.is_none() {
        return usage(anyhow::anyhow!("--password needs --username"));
    }
    if args.seeds == 0 {
        return usage(anyhow::anyhow!("--seeds must be at least 1"));
    }
    let profile = match &args.profile {
        Some(path) => match Profile::from_file(path) {
            Ok(p) => p,
            Err(e) => return usage(e),
        },
        None => Profile::default(),
    };
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("scenarios")]
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
    let options = Options {
        broker_url: args.broker.clone(),
        broker,
        username: args.username.clone(),
        password: args.password.clone(),
        restart_cmd: args.restart_cmd.clone(),
        profile,
        profile_file: args.profile.clone(),
        seeds: args.seeds,
        seed: args.seed,
        jobs: args.jobs,
        traces: args.traces.clone(),
    };
    // Fail fast on an unreachable broker rather than once per case.
    if let Err(e) = std::net::TcpStream::connect_timeout(&broker, std::time::Duration::from_secs(5))
    {
        eprintln!(
            "simqtt certify: cannot connect to {} ({broker}): {e}",
            args.broker
        );
        return Ok(ExitCode::from(2));
    }
    let version = runner::broker_version(&options);
    let cases = runner::plan(&scenarios, &options);
    eprintln!(
        "certifying {} ({}){}: {} cases from {} scenario files, profile {}",
        args.broker,
        broker,
        version
            .as_deref()
            .map(|v| format!(", {v}"))
            .unwrap_or_default(),
        cases.len(),
        scenarios.len(),
        options.profile.describe()
    );
    let progress = std::io::stderr().is_terminal();
    let mut failed = 0usize;
    let mut skipped = 0usize;
    let mut inconclusive = 0usize;
    let cert = runner::certify(cases, &options, version, |case, done, total| {
        match case.verdict {
            Verdict::Failed => failed += 1,
            Verdict::Skipped { .. } => skipped += 1,
            Verdict::Inconclusive { .. } => inconclusive += 1,
            Verdict::Passed => {}
        }
        if progress {
            eprint!(
                "\r[{done}/{total}] {failed} failed {inconclusive} inconclusive {skipped} skipped  {:<50}",
                super::run::truncate(&case.scenario, 50)
            );
        }
    });
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
    Ok(if cert.certified() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1:1884").unwrap(),
            "127.0.0.1:1884".parse().unwrap()
        );
        assert_eq!(
            parse_broker("mqtt://127.0.0.1").unwrap(),
            "127.0.0.1:1883".parse().unwrap()
        );
        assert_eq!(
            parse_broker("127.0.0.1:2000").unwrap(),
            "127.0.0.1:2000".parse().unwrap()
        );
        assert!(parse_broker("http://127.0.0.1:80").is_err());
        assert!(parse_broker("mqtt://").is_err());
    }
}
