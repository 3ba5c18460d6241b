//! `simqtt bench`: measure a broker (or, with --sink, the generator itself) and print or save the
//! figures.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use simqtt::bench::{self, Config, Report, Shape, Target};
use simqtt::codec::{ProtocolVersion, QoS};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ShapeArg {
    /// N publishers (default 4), each on its own topic, to one wildcard subscriber.
    FanIn,
    /// One publisher to N subscribers (default 50) of its topic.
    FanOut,
    /// One publisher at a fixed rate (default 2000 msg/s) to one subscriber: p50/p99/max.
    Latency,
    /// N idle connections (default 10000) opened and held for the duration.
    Connections,
    /// One publisher to a group of N subscribers (default 10) of `$share/simqtt-bench/TOPIC`:
    /// each message is owed to one member; reports duplicates and the spread over members.
    Shared,
}

#[derive(clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    shape: ShapeArg,
    /// The broker: mqtt://HOST:PORT, mqtts://HOST:PORT (TLS), ws://HOST:PORT/PATH or
    /// wss://HOST:PORT/PATH (WebSocket).
    #[arg(long, required_unless_present = "sink", conflicts_with = "sink")]
    broker: Option<String>,
    #[command(flatten)]
    tls: super::certify::TlsArgs,
    /// Instead of a broker, an in-process server that only reads: measures the generator.
    #[arg(long)]
    sink: bool,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// How long to measure (10s, 500ms, 2m); for connections, how long to hold them.
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration)]
    duration: std::time::Duration,
    /// Publisher connections.
    #[arg(long)]
    publishers: Option<usize>,
    /// Subscriber connections.
    #[arg(long)]
    subscribers: Option<usize>,
    /// Total messages per second over all publishers (latency: default 2000; else unlimited).
    #[arg(long)]
    rate: Option<f64>,
    /// Idle connections for the connections shape.
    #[arg(long)]
    connections: Option<usize>,
    /// The broker's process id: report its CPU per message and RSS from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// MQTT protocol version.
    #[arg(long, default_value = "311", value_parser = ["311", "5"])]
    protocol: String,
    /// Unacknowledged QoS 1/2 messages each publisher keeps in flight at most.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// How long subscribers may keep receiving after the run before the rest counts as lost.
    #[arg(long, default_value = "5s", value_parser = bench::parse_duration)]
    drain: std::time::Duration,
}

impl Args {
    fn config(&self) -> anyhow::Result<Config> {
        let target = match &self.broker {
            Some(url) => bench::parse_broker_url(url).map_err(anyhow::Error::msg)?,
            None => Target::Sink,
        };
        let shape = match self.shape {
            ShapeArg::FanIn => Shape::FanIn,
            ShapeArg::FanOut => Shape::FanOut,
            ShapeArg::Latency => Shape::Latency,
            ShapeArg::Connections => Shape::Connections,
            ShapeArg::Shared => Shape::Shared,
        };
        let mut config = Config::new(target, shape);
        if let Some(url) = &self.broker {
            config.endpoint = super::certify::endpoint("--broker", url, &self.tls)?;
        }
        config.qos = QoS::from_u8(self.qos).context("QoS must be 0, 1 or 2")?;
        config.protocol = if self.protocol == "5" {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        config.payload_bytes = self.payload;
        config.duration = self.duration;
        config.drain = self.drain;
        config.inflight = self.inflight;
        config.broker_pid = self.pid;
        if let Some(n) = self.publishers {
            config.publishers = n;
        }
        if let Some(n) = self.subscribers {
            config.subscribers = n;
        }
        if self.sink {
            config.subscribers = 0;
        }
        if let Some(rate) = self.rate {
            config.rate_per_sec = Some(rate);
        }
        if let Some(n) = self.connections {
            config.connections = n;
        }
        if let Err(message) = config.validate() {
            bail!(message);
        }
        Ok(config)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(bench::run(&config))?;
    print!("{}", render(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1} k", per_sec / 1e3)
    } else {
        format!("{per_sec:.0} ")
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// The human summary of a report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let shape = report.shape.name();
    line(format!(
        "{shape} against {} (MQTT {}, QoS {}, {}-byte payload, {:.1} s)",
        report.broker, report.protocol, report.qos, report.payload_bytes, report.duration_secs
    ));
    if let Some(t) = &report.throughput {
        line(format!(
            "  publishers {}  subscribers {}{}",
            report.publishers,
            report.subscribers,
            report
                .rate_per_sec
                .map(|r| format!("  rate {} msg/s", rate(r)))
                .unwrap_or_default()
        ));
        line(format!(
            "  sent      {:>12} msgs  {}msg/s",
            t.sent,
            rate(t.sent_per_sec)
        ));
        line(format!(
            "  received  {:>12} msgs  {}msg/s in the window",
            t.received_in_window,
            rate(t.received_per_sec)
        ));
        line(format!(
            "  drained   {:>12} of {} expected after {:.2} s ({}msg/s overall); not received \
             (lost or still queued) {}{}",
            t.received_total,
            t.expected,
            t.drain_secs,
            rate(t.received_total_per_sec),
            t.not_received,
            if t.extra > 0 {
                format!("; {} extra (duplicates)", t.extra)
            } else {
                String::new()
            }
        ));
        if let Some(s) = &t.shared {
            line(format!(
                "  group     {} members of {}: {} distinct messages, {} duplicates, per member \
                 {}..{}",
                s.members, s.filter, s.distinct, s.duplicates, s.per_member_min, s.per_member_max
            ));
        }
        if report.qos > 0 {
            line(format!(
                "  acked     {:>12}  rejected {}  unacked {}",
                t.acked, t.rejected, t.unacked
            ));
        }
    }
    if let Some(l) = &report.latency {
        line(format!(
            "  latency   p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  \
             ({} samples)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
        ));
    }
    if let Some(c) = &report.connections {
        line(format!(
            "  opened {} of {} in {:.2} s ({}conn/s), failed {}, still open after the hold {}",
            c.opened,
            c.requested,
            c.connect_secs,
            rate(c.connections_per_sec),
            c.failed,
            c.alive_at_end
        ));
        if let Some(error) = &c.first_error {
            line(format!("  first failure: {error}"));
        }
        if let Some(per) = c.broker_bytes_per_connection {
            line(format!("  broker RSS per connection {}", bytes(per)));
        }
    }
    if let Some(p) = &report.broker_process {
        line(format!(
            "  broker pid {}: CPU {:.2} s{}, RSS {} -> {} (max {})",
            p.pid,
            p.cpu_secs,
            p.cpu_us_per_unit
                .map(|us| format!(" ({us:.2} µs per {})", p.unit))
                .unwrap_or_default(),
            bytes(p.rss_start_bytes),
            bytes(p.rss_end_bytes),
            bytes(p.rss_max_bytes)
        ));
    }
    line(format!(
        "  generator CPU {:.2} s ({:.0} % of one core), RSS {}",
        report.generator.cpu_secs,
        report.generator.cpu_percent,
        bytes(report.generator.rss_bytes)
    ));
    for error in &report.errors {
        line(format!("  error: {error}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied()))?;
        cli.args.config()
    }

    #[test]
    fn full_command_line() {
        let config = parse(&[
            "fan-in",
            "--broker",
            "mqtt://127.0.0.1:1884",
            "--qos",
            "1",
            "--payload",
            "128",
            "--duration",
            "3s",
            "--publishers",
            "8",
            "--pid",
            "42",
            "--inflight",
            "500",
        ])
        .unwrap();
        assert_eq!(config.shape, Shape::FanIn);
        assert_eq!(
            config.target,
            Target::Broker {
                host: "127.0.0.1".into(),
                port: 1884
            }
        );
        assert_eq!(config.qos, QoS::AtLeastOnce);
        assert_eq!(config.payload_bytes, 128);
        assert_eq!(config.duration, std::time::Duration::from_secs(3));
        assert_eq!((config.publishers, config.subscribers), (8, 1));
        assert_eq!((config.broker_pid, config.inflight), (Some(42), 500));
    }

    #[test]
    fn shape_defaults_apply() {
        let config = parse(&["latency", "--broker", "mqtt://h:1"]).unwrap();
        assert_eq!(config.rate_per_sec, Some(2000.0));
        let config = parse(&["connections", "--broker", "h:1", "--connections", "5"]).unwrap();
        assert_eq!(config.connections, 5);
        let config = parse(&["fan-out", "--broker", "h"]).unwrap();
        assert_eq!(config.subscribers, 50);
        let config = parse(&["shared", "--broker", "h", "--qos", "1"]).unwrap();
        assert_eq!(
            (config.shape, config.publishers, config.subscribers),
            (Shape::Shared, 1, 10)
        );
        let config = parse(&["fan-in", "--sink"]).unwrap();
        assert_eq!((config.target, config.subscribers), (Target::Sink, 0));
    }

    #[test]
    fn refuses_bad_lines() {
        assert!(parse(&["fan-in"]).is_err(), "needs --broker or --sink");
        assert!(parse(&["fan-in", "--sink", "--broker", "h"]).is_err());
        assert!(parse(&["fan-in", "--broker", "h", "--qos", "3"]).is_err());
        assert!(parse(&["fan-in", "--broker", "h", "--duration", "soon"]).is_err());
        assert!(parse(&["latency", "--broker", "h", "--payload", "4"]).is_err());
        assert!(parse(&["latency", "--sink"]).is_err());
        assert!(parse(&["shared", "--sink"]).is_err());
        assert!(parse(&["shared", "--broker", "h", "--payload", "8"]).is_err());
        assert!(parse(&["sideways", "--broker", "h"]).is_err());
    }
}
