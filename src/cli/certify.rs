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
use simqtt::transport::tls::{ClientTls, TlsVersion};
use simqtt::transport::url::{BrokerUrl, Endpoint};

#[derive(clap::Args)]
pub struct Args {
    /// Scenario files or directories (searched for *.yaml). Default: scenarios/.
    paths: Vec<PathBuf>,
    /// The broker under test: mqtt://HOST:PORT (port 1883 when omitted), mqtts://HOST:PORT
    /// (TLS, 8883), ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (WebSocket, path /mqtt).
    #[arg(long)]
    broker: String,
    #[command(flatten)]
    tls: TlsArgs,
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
    /// Cases run at once (cases that restart the broker always run alone). A case spends its
    /// time waiting on the broker and the clock, not computing: 32 fill two cores.
    #[arg(long, short = 'j', default_value_t = 32)]
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
    /// Write a self-contained HTML report to FILE (one file, no script, no network): each
    /// finding's timeline drawn, and the coverage table.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write every case's trace (JSON lines, one file per scenario × seed) into DIR.
    #[arg(long, value_name = "DIR")]
    traces: Option<PathBuf>,
}

const USAGE: &str = "usage: simqtt certify --broker mqtt[s]://HOST:PORT|ws[s]://HOST:PORT/PATH \
[--cafile FILE] [--cert FILE --key FILE] [--username U --password P] \
[--restart-cmd 'CMD'] [--profile FILE.toml] [--seeds N] [--jobs J] [--filter P] [--junit FILE] \
[--report FILE.md] [--json FILE] [--html FILE] [PATH...]";

/// mosquitto's TLS flags, for a `--broker` that names a broker (`certify`, `bench`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// CA certificates (PEM) the broker's certificate must be signed by (mqtts://, wss://;
    /// default: the system's).
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Directory of CA certificates (PEM files).
    #[arg(long, value_name = "DIR")]
    pub capath: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that require one; needs --key.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Do not check that the broker's certificate names its host (the CA still must sign it).
    #[arg(long)]
    pub insecure: bool,
    /// Lowest TLS version to accept: tlsv1.2 (default: 1.2 or 1.3) or tlsv1.3.
    #[arg(long, value_name = "VERSION", value_parser = TlsVersion::parse)]
    pub tls_version: Option<TlsVersion>,
}

impl TlsArgs {
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            cafile: self.cafile.clone(),
            capath: self.capath.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            insecure: self.insecure,
            version: self.tls_version.unwrap_or_default(),
        }
    }
}

/// `--broker URL` with the TLS flags → how to reach the broker (TLS files read now, so a bad
/// one is an error before anything runs).
pub fn endpoint(flag: &str, url: &str, tls: &TlsArgs) -> anyhow::Result<Endpoint> {
    let parsed = BrokerUrl::parse(url).map_err(|e| anyhow::anyhow!("{flag} {e}"))?;
    if parsed.username.is_some() {
        bail!("{flag} {url}: give the user name with --username, not in the URL");
    }
    if !parsed.scheme.websocket() && parsed.rest.as_deref().is_some_and(|r| !r.is_empty()) {
        bail!("{flag} {url}: a {}:// URL has no path", parsed.scheme);
    }
    Endpoint::new(&parsed, parsed.ws_path(), &tls.client_tls())
        .map_err(|e| anyhow::anyhow!("{flag} {url}: {e}"))
}

/// Opens one connection over the endpoint's transport (TCP, TLS handshake, WebSocket
/// upgrade), so a wrong CA, a host name the certificate does not cover or a wrong path is one
/// clear error before the run, not a failure in every case.
pub async fn probe(endpoint: &Endpoint, addr: SocketAddr) -> anyhow::Result<()> {
    let connector = endpoint.connector()?;
    let addr = addr.to_string();
    let connect = connector.connect(&addr);
    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => bail!("no connection within 5 s"),
    }
}

/// `mqtt://HOST:PORT`, `mqtts://HOST`, `ws://HOST:PORT/PATH` or `HOST:PORT` → the broker's
/// address (IPv4 first).
pub fn parse_broker(url: &str) -> anyhow::Result<SocketAddr> {
    let parsed = BrokerUrl::parse(url).map_err(|e| anyhow::anyhow!("--broker {e}"))?;
    let with_port = parsed.addr();
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
    let endpoint = match endpoint("--broker", &args.broker, &args.tls) {
        Ok(e) => e,
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
        endpoint: endpoint.clone(),
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
    // Over the run's transport: a TLS or WebSocket failure is said here once.
    let probed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?
        .block_on(probe(&endpoint, broker));
    if let Err(e) = probed {
        eprintln!(
            "simqtt certify: cannot connect to {} ({broker}): {e:#}",
            args.broker
        );
        return Ok(ExitCode::from(2));
    }
    // `$SYS/broker/version` is asked once per run, beside the cases (a broker without it
    // costs its wait only to a run shorter than that wait).
    let version = {
        let options = options.clone();
        std::thread::spawn(move || runner::broker_version(&options))
    };
    let cases = runner::plan(&scenarios, &options);
    eprintln!(
        "certifying {} ({}, {}): {} cases from {} scenario files, profile {}",
        args.broker,
        broker,
        endpoint.scheme.describe(),
        cases.len(),
        scenarios.len(),
        options.profile.describe()
    );
    let progress = std::io::stderr().is_terminal();
    let mut failed = 0usize;
    let mut skipped = 0usize;
    let mut inconclusive = 0usize;
    let mut cert = runner::certify(cases, &options, None, |case, done, total| {
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
    cert.broker_version = version.join().unwrap_or_default();
    if let Some(v) = &cert.broker_version {
        eprintln!("broker version ($SYS/broker/version): {v}");
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
