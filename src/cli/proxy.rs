//! `simqtt proxy`: the certify fault proxy by hand, to put latency (and jitter) in front of a
//! broker. Runs until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use simqtt::scenario::Dur;
use simqtt::transport::proxy::FaultProxy;
use simqtt::transport::url::BrokerUrl;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (an IP and port; port 0 picks a free one). The bound address is
    /// printed on stdout.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1884")]
    listen: SocketAddr,
    /// The broker to forward to: HOST:PORT or a broker URL (mqtt://, mqtts://, ws://, wss://;
    /// its port, or the scheme's). The proxy forwards bytes, so TLS and WebSocket pass through
    /// it: clients speak them to the broker behind.
    #[arg(long, value_name = "URL")]
    upstream: String,
    /// Delay added to every chunk each way (500ms, 2s).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    latency: Duration,
    /// Up to this much more delay, drawn uniformly per chunk; order is kept.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    jitter: Duration,
    /// Seed of the jitter draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    Dur::parse(text).map(Dur::as_duration)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::init_logging("info");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let upstream = resolve(&args.upstream).await?;
        let proxy = FaultProxy::bind(args.listen, upstream, args.seed)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        proxy.control().set_latency(args.latency, args.jitter);
        // A line for scripts and tests that listen on port 0.
        println!(
            "simqtt proxy listening on {} -> {upstream} (latency {}ms, jitter {}ms)",
            proxy.addr(),
            args.latency.as_millis(),
            args.jitter.as_millis()
        );
        std::io::stdout().flush().ok();
        super::broker::shutdown_signal("proxy").await;
        drop(proxy);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn resolve(upstream: &str) -> anyhow::Result<SocketAddr> {
    let url = BrokerUrl::parse(upstream).map_err(|e| anyhow::anyhow!("--upstream {e}"))?;
    let addr = url.addr();
    let mut addrs = tokio::net::lookup_host(&addr)
        .await
        .with_context(|| format!("resolving --upstream {upstream} ({addr})"))?;
    match addrs.next() {
        Some(addr) => Ok(addr),
        None => bail!("--upstream {upstream} resolves to no address"),
    }
}
