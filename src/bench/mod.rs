//! `simqtt bench`: a load generator for any MQTT broker (throughput, latency, idle
//! connections), with the broker's CPU and memory read from /proc.
//!
//! It is written directly on tokio TCP and the allocation-free frame scanner in [`scan`], not on
//! the general client, so the generator is never what limits a figure: publishers write
//! pre-encoded PUBLISH batches (packet ids and timestamps patched in place), readers find frames
//! from the fixed header without decoding them. `--sink` runs the publishers against an
//! in-process [`sink::Sink`] that only reads, which shows the generator's own ceiling.
//!
//! Bench is not part of the simulation: it uses real clocks (`std::time::Instant`, tokio's
//! real-time timers) and real sockets, and its numbers are not deterministic.
//!
//! How a throughput run counts (fan-in, fan-out, latency, shared):
//! - the clock starts once every subscriber holds its SUBACK and every publisher its CONNACK;
//! - `received_per_sec` counts deliveries during the window only, so a broker that buffers
//!   cannot look faster than it delivers;
//! - after the window publishers stop and subscribers drain (until all expected deliveries
//!   arrived, nothing arrived for a second, or `--drain` ran out); what never arrived is
//!   `not_received`: lost, or still queued in the broker;
//! - in the shared shape each message is owed to one member of the group, not to each
//!   subscriber; publishers number their messages, so a message that reached two members (or
//!   one twice) counts as a duplicate, and loss counts distinct messages.

pub mod config;
pub mod connections;
pub mod histogram;
pub mod load;
pub mod procfs;
pub mod scan;
pub mod sink;
pub mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

pub use config::{parse_broker_url, parse_duration, Config, Shape, Target};

use crate::codec::ProtocolVersion;
use histogram::Histogram;
use load::{PublisherPlan, PublisherResult, SubscriberPlan, SubscriberResult};
use procfs::ProcSample;
use sink::Sink;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Broker(String),
    #[error("{0}")]
    Config(String),
    #[error("malformed frame from the broker: {0}")]
    Scan(#[from] scan::ScanError),
}

/// Handshakes in progress at once while a throughput run sets up its clients.
const SETUP_IN_FLIGHT: usize = 64;
/// How often the broker's RSS is sampled for its maximum.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// A drain ends early once nothing has arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// Errors kept in a report (the first ones; a broker that fails usually fails alike).
const ERRORS_KEPT: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub shape: Shape,
    pub broker: String,
    pub sink: bool,
    pub protocol: &'static str,
    pub qos: u8,
    pub payload_bytes: usize,
    pub duration_secs: f64,
    pub publishers: usize,
    pub subscribers: usize,
    pub rate_per_sec: Option<f64>,
    pub inflight: u16,
    pub throughput: Option<ThroughputReport>,
    pub latency: Option<LatencyReport>,
    pub connections: Option<ConnectionsReport>,
    pub broker_process: Option<BrokerProcess>,
    pub generator: GeneratorProcess,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    /// Messages the publishers wrote whole.
    pub sent: u64,
    pub sent_per_sec: f64,
    /// Deliveries counted by the subscribers (or the sink) during the window.
    pub received_in_window: u64,
    pub received_per_sec: f64,
    /// Deliveries owed: sent × subscribers; sent against the sink and to a shared group.
    pub expected: u64,
    /// Deliveries by the end of the drain.
    pub received_total: u64,
    /// received_total over the window plus the drain: what a broker that buffers under load
    /// and delivers afterwards sustained overall (`received_per_sec` counts only the window).
    pub received_total_per_sec: f64,
    /// Expected deliveries that never arrived: lost, or still queued in the broker.
    pub not_received: u64,
    /// Deliveries beyond the expected (duplicates).
    pub extra: u64,
    /// QoS 1/2 flows completed by the broker, refused by it (5.0 reason codes), and still
    /// unacknowledged when the drain ended.
    pub acked: u64,
    pub rejected: u64,
    pub unacked: u64,
    pub drain_secs: f64,
    /// The shared shape's group accounting (`None` for the other shapes).
    pub shared: Option<SharedReport>,
}

/// How a shared subscription's group split the messages: each is owed to exactly one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedReport {
    /// The subscribers' filter, `$share/GROUP/TOPIC`.
    pub filter: String,
    pub members: usize,
    /// Different messages delivered to some member (by sequence number), by the end of the
    /// drain.
    pub distinct: u64,
    /// Deliveries of a message some member had already received (the same member again, or
    /// another one): a duplicate at QoS 2, a redelivery worth counting at QoS 1.
    pub duplicates: u64,
    /// Deliveries to the member that received fewest and most.
    pub per_member_min: u64,
    pub per_member_max: u64,
}

impl SharedReport {
    /// Accounts for `members` (each member's sequence numbers received, in any order).
    pub fn of(filter: &str, members: &[Vec<u64>]) -> SharedReport {
        let mut all: Vec<u64> = members.iter().flatten().copied().collect();
        let total = all.len() as u64;
        all.sort_unstable();
        all.dedup();
        let distinct = all.len() as u64;
        let counts = members.iter().map(|m| m.len() as u64);
        SharedReport {
            filter: filter.to_string(),
            members: members.len(),
            distinct,
            duplicates: total - distinct,
            per_member_min: counts.clone().min().unwrap_or(0),
            per_member_max: counts.max().unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub samples: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencyReport {
    fn from_histogram(histogram: &Histogram) -> LatencyReport {
        let s = histogram.summary();
        let ms = |ns: u64| ns as f64 / 1e6;
        LatencyReport {
            samples: s.samples,
            min_ms: ms(s.min_ns),
            mean_ms: ms(s.mean_ns),
            p50_ms: ms(s.p50_ns),
            p90_ms: ms(s.p90_ns),
            p99_ms: ms(s.p99_ns),
            p999_ms: ms(s.p999_ns),
            max_ms: ms(s.max_ns),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub connect_secs: f64,
    pub connections_per_sec: f64,
    /// Connections the broker had not closed when the hold ended.
    pub alive_at_end: usize,
    pub hold_secs: f64,
    pub broker_rss_before: Option<u64>,
    pub broker_rss_after: Option<u64>,
    /// (RSS after − RSS before) / opened.
    pub broker_bytes_per_connection: Option<u64>,
}

/// The broker's cost, from /proc/PID over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerProcess {
    pub pid: u32,
    pub cpu_secs: f64,
    /// What `cpu_us_per_unit` divides by: "message" (deliveries) or "connection".
    pub unit: &'static str,
    pub cpu_us_per_unit: Option<f64>,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_max_bytes: u64,
}

impl BrokerProcess {
    fn between(
        pid: u32,
        before: &ProcSample,
        after: &ProcSample,
        rss_max: u64,
        units: u64,
    ) -> BrokerProcess {
        let cpu_secs = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64
            / procfs::clock_ticks_per_sec() as f64;
        BrokerProcess {
            pid,
            cpu_secs,
            unit: "connection",
            cpu_us_per_unit: (units > 0).then(|| cpu_secs * 1e6 / units as f64),
            rss_start_bytes: before.rss_bytes,
            rss_end_bytes: after.rss_bytes,
            rss_max_bytes: rss_max.max(before.rss_bytes).max(after.rss_bytes),
        }
    }
}

/// The generator's own cost over the window: if its CPU is near cores × 100 %, the figure is
/// the generator's, not the broker's.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratorProcess {
    pub cpu_secs: f64,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

impl GeneratorProcess {
    /// This process's cost from `before` until now, over a window of `elapsed`.
    fn between(before: Option<ProcSample>, elapsed: Duration) -> GeneratorProcess {
        match (before, procfs::sample(None)) {
            (Some(before), Ok(after)) => {
                let cpu_secs = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64
                    / procfs::clock_ticks_per_sec() as f64;
                GeneratorProcess {
                    cpu_secs,
                    cpu_percent: 100.0 * cpu_secs / elapsed.as_secs_f64().max(1e-9),
                    rss_bytes: after.rss_bytes,
                }
            }
            _ => GeneratorProcess {
                cpu_secs: 0.0,
                cpu_percent: 0.0,
                rss_bytes: 0,
            },
        }
    }
}

/// Runs one measurement as `config` describes and reports it.
pub async fn run(config: &Config) -> Result<Report, BenchError> {
    config.validate().map_err(BenchError::Config)?;
    let run_id = format!(
        "{:08x}",
        std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
    );
    let (broker, sink, broker_name) = match &config.target {
        Target::Broker { host, port } => (
            resolve(host, *port).await?,
            None,
            match config.endpoint.scheme {
                crate::transport::url::Scheme::Mqtt => format!("mqtt://{host}:{port}"),
                _ => config.endpoint.url(),
            },
        ),
        Target::Sink => {
            let sink = Sink::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let addr = sink.addr();
            (addr, Some(sink), format!("sink {addr}"))
        }
    };
    let self_before = procfs::sample(None).ok();
    let started = std::time::Instant::now();
    let mut report = Report {
        shape: config.shape,
        broker: broker_name,
        sink: sink.is_some(),
        protocol: match config.protocol {
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        },
        qos: config.qos.as_u8(),
        payload_bytes: config.payload_bytes,
        duration_secs: config.duration.as_secs_f64(),
        publishers: config.publishers,
        subscribers: if sink.is_some() {
            0
        } else {
            config.subscribers
        },
        rate_per_sec: config.rate_per_sec,
        inflight: config.inflight,
        throughput: None,
        latency: None,
        connections: None,
        broker_process: None,
        generator: GeneratorProcess {
            cpu_secs: 0.0,
            cpu_percent: 0.0,
            rss_bytes: 0,
        },
        errors: Vec::new(),
    };
    match config.shape {
        Shape::Connections => {
            report.publishers = 0;
            report.subscribers = 0;
            let (connections, process) = connections::run(
                &config.endpoint,
                broker,
                config.connections,
                config.duration,
                config.protocol,
                config.keep_alive_secs(),
                &run_id,
                config.broker_pid,
            )
            .await?;
            report.connections = Some(connections);
            report.broker_process = process;
            report.generator = GeneratorProcess::between(self_before, started.elapsed());
        }
        _ => throughput(config, broker, sink.as_ref(), &run_id, &mut report).await?,
    }
    if let Some(sink) = sink {
        sink.stop().await;
    }
    Ok(report)
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, BenchError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| BenchError::Io {
            context: format!("resolving {host}"),
            source,
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| BenchError::Config(format!("{host} resolves to no address")))
}

/// Opens `count` sessions (and subscribes each to `filter` if given), a bounded number at a
/// time.
async fn open_sessions(
    broker: SocketAddr,
    count: usize,
    config: &Config,
    client_id_prefix: &str,
    filter: Option<&str>,
) -> Result<Vec<wire::Session>, BenchError> {
    let mut sessions: Vec<Option<wire::Session>> = (0..count).map(|_| None).collect();
    let mut pending = JoinSet::new();
    let mut next = 0;
    while next < count || !pending.is_empty() {
        while next < count && pending.len() < SETUP_IN_FLIGHT {
            let client_id = format!("{client_id_prefix}{next}");
            let filter = filter.map(str::to_string);
            let (protocol, qos) = (config.protocol, config.qos);
            let keep_alive_secs = config.keep_alive_secs();
            let endpoint = config.endpoint.clone();
            let index = next;
            pending.spawn(async move {
                let mut session = wire::open(
                    &endpoint,
                    broker,
                    None,
                    &client_id,
                    protocol,
                    keep_alive_secs,
                )
                .await?;
                if let Some(filter) = filter {
                    wire::subscribe(&mut session, &filter, qos, protocol).await?;
                }
                Ok::<_, BenchError>((index, session))
            });
            next += 1;
        }
        if let Some(joined) = pending.join_next().await {
            let (index, session) =
                joined.map_err(|e| BenchError::Broker(format!("setup task failed: {e}")))??;
            sessions[index] = Some(session);
        }
    }
    Ok(sessions.into_iter().flatten().collect())
}

/// fan-in, fan-out and latency.
async fn throughput(
    config: &Config,
    broker: SocketAddr,
    sink: Option<&Sink>,
    run_id: &str,
    report: &mut Report,
) -> Result<(), BenchError> {
    let epoch = std::time::Instant::now();
    let prefix = format!("simqtt-bench/{run_id}");
    let (filter, topic_of): (String, Box<dyn Fn(usize) -> String>) = match config.shape {
        Shape::FanIn => {
            let p = prefix.clone();
            (
                format!("{prefix}/in/+"),
                Box::new(move |i| format!("{p}/in/{i}")),
            )
        }
        Shape::Shared => {
            let topic = format!("{prefix}/out");
            (
                format!("$share/{}/{topic}", config::SHARE_GROUP),
                Box::new(move |_| topic.clone()),
            )
        }
        _ => {
            let topic = format!("{prefix}/out");
            (topic.clone(), Box::new(move |_| topic.clone()))
        }
    };
    let subscriber_count = if sink.is_some() {
        0
    } else {
        config.subscribers
    };
    procfs::raise_nofile_limit((config.publishers + subscriber_count) as u64 + 256).map_err(
        |source| BenchError::Io {
            context: "raising RLIMIT_NOFILE".into(),
            source,
        },
    )?;

    let received = Arc::new(AtomicU64::new(0));
    let (stop_subscribers, stop_rx) = watch::channel(false);
    let mut subscribers: JoinSet<Result<SubscriberResult, BenchError>> = JoinSet::new();
    let subscriber_sessions = open_sessions(
        broker,
        subscriber_count,
        config,
        &format!("simqtt-bench-{run_id}-s"),
        Some(&filter),
    )
    .await?;
    for session in subscriber_sessions {
        subscribers.spawn(load::subscriber(
            session,
            SubscriberPlan {
                protocol: config.protocol,
                latency: config.shape == Shape::Latency,
                epoch,
                received: received.clone(),
                stop: stop_rx.clone(),
                sequences: config.shape == Shape::Shared,
            },
        ));
    }
    let publisher_sessions = open_sessions(
        broker,
        config.publishers,
        config,
        &format!("simqtt-bench-{run_id}-p"),
        None,
    )
    .await?;

    let count = || match sink {
        Some(sink) => sink.received(),
        None => received.load(Ordering::Relaxed),
    };
    let broker_before = sample_broker(config.broker_pid)?;
    let generator_before = procfs::sample(None).ok();
    let (stop_sampler, sampler) = spawn_rss_sampler(config.broker_pid);
    let start = Instant::now();
    let deadline = start + config.duration;
    let drain_deadline = deadline + config.drain;
    let mut publishers: JoinSet<Result<PublisherResult, BenchError>> = JoinSet::new();
    let rate_each = config
        .rate_per_sec
        .map(|rate| rate / config.publishers as f64);
    for (index, session) in publisher_sessions.into_iter().enumerate() {
        let template = wire::publish_template(
            &topic_of(index),
            config.qos,
            config.payload_bytes,
            config.protocol,
        )?;
        publishers.spawn(load::publisher(
            session,
            PublisherPlan {
                template,
                qos: config.qos.as_u8(),
                protocol: config.protocol,
                inflight: config.inflight,
                rate_per_sec: rate_each,
                stamp: config.stamps(),
                // 2^40 sequence numbers each: more than a publisher sends in any run.
                sequence_base: (index as u64) << 40,
                epoch,
                start,
                deadline,
                drain_deadline,
            },
        ));
    }

    sleep_until(deadline).await;
    let received_in_window = count();
    let broker_after = sample_broker(config.broker_pid)?;
    report.generator = GeneratorProcess::between(generator_before, start.elapsed());

    let mut sent = PublisherResult::default();
    while let Some(joined) = publishers.join_next().await {
        match joined {
            Ok(Ok(result)) => {
                sent.sent += result.sent;
                sent.sent_in_window += result.sent_in_window;
                sent.acked += result.acked;
                sent.rejected += result.rejected;
                sent.unacked += result.unacked;
            }
            Ok(Err(error)) => keep_error(&mut report.errors, format!("publisher: {error}")),
            Err(error) => keep_error(&mut report.errors, format!("publisher task: {error}")),
        }
    }
    let expected = config.deliveries_owed(sent.sent);
    // Drain: wait for what is still on its way, but not for what will never come.
    let mut last = count();
    let mut last_change = Instant::now();
    loop {
        let now = Instant::now();
        let current = count();
        if current != last {
            last = current;
            last_change = now;
        }
        if current >= expected
            || now >= drain_deadline
            || now.duration_since(last_change) >= DRAIN_IDLE
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_secs = Instant::now().duration_since(deadline).as_secs_f64();
    let received_total = count();
    let _ = stop_subscribers.send(true);
    let mut latency = Histogram::new();
    let mut members: Vec<Vec<u64>> = Vec::new();
    while let Some(joined) = subscribers.join_next().await {
        match joined {
            Ok(Ok(result)) => {
                if let Some(histogram) = result.latency {
                    latency.merge(&histogram);
                }
                members.push(result.sequences);
            }
            Ok(Err(error)) => keep_error(&mut report.errors, format!("subscriber: {error}")),
            Err(error) => keep_error(&mut report.errors, format!("subscriber task: {error}")),
        }
    }
    let _ = stop_sampler.send(true);
    let rss_max = sampler.await.unwrap_or(0);

    let shared = (config.shape == Shape::Shared).then(|| SharedReport::of(&filter, &members));
    // In a group a duplicate could hide a loss: what arrived is counted by distinct message.
    let arrived = shared.as_ref().map_or(received_total, |s| s.distinct);
    let secs = config.duration.as_secs_f64();
    report.throughput = Some(ThroughputReport {
        sent: sent.sent,
        sent_per_sec: sent.sent_in_window as f64 / secs,
        received_in_window,
        received_per_sec: received_in_window as f64 / secs,
        expected,
        received_total,
        received_total_per_sec: received_total as f64 / (secs + drain_secs).max(1e-9),
        not_received: expected.saturating_sub(arrived),
        extra: received_total.saturating_sub(expected),
        acked: sent.acked,
        rejected: sent.rejected,
        unacked: sent.unacked,
        drain_secs,
        shared,
    });
    if config.shape == Shape::Latency {
        report.latency = Some(LatencyReport::from_histogram(&latency));
    }
    if let (Some(pid), Some(before), Some(after)) = (config.broker_pid, broker_before, broker_after)
    {
        let mut process = BrokerProcess::between(pid, &before, &after, rss_max, received_in_window);
        process.unit = "message";
        report.broker_process = Some(process);
    }
    Ok(())
}

fn keep_error(errors: &mut Vec<String>, error: String) {
    if errors.len() < ERRORS_KEPT {
        errors.push(error);
    }
}

fn sample_broker(pid: Option<u32>) -> Result<Option<ProcSample>, BenchError> {
    pid.map(|pid| {
        procfs::sample(Some(pid)).map_err(|source| BenchError::Io {
            context: format!("reading /proc/{pid} (is --pid the broker's?)"),
            source,
        })
    })
    .transpose()
}

/// Samples the broker's RSS until told to stop; yields the largest seen (0 without a pid).
fn spawn_rss_sampler(pid: Option<u32>) -> (watch::Sender<bool>, tokio::task::JoinHandle<u64>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let Some(pid) = pid else { return 0 };
        let mut max = 0;
        let mut ticker = tokio::time::interval(RSS_SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                _ = stopped.changed() => return max,
                _ = ticker.tick() => {
                    if let Ok(sample) = procfs::sample(Some(pid)) {
                        max = max.max(sample.rss_bytes);
                    }
                }
            }
        }
    });
    (stop, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    /// Against the sink every message written whole is counted, at QoS 0 and QoS 1 alike, and
    /// QoS 1 windows close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sink_counts_every_message_sent() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut config = Config::new(Target::Sink, Shape::FanIn);
            config.subscribers = 0;
            config.publishers = 2;
            config.qos = qos;
            config.duration = Duration::from_millis(300);
            config.drain = Duration::from_secs(2);
            let report = run(&config).await.unwrap();
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            let t = report.throughput.unwrap();
            assert!(t.sent > 0, "{qos:?}: nothing sent");
            assert_eq!(t.received_total, t.sent, "{qos:?}");
            assert_eq!(t.not_received, 0, "{qos:?}");
            if qos != QoS::AtMostOnce {
                assert_eq!((t.acked, t.unacked), (t.sent, 0), "{qos:?}");
            }
        }
    }

    /// Each message counts once however many members hold it; a second copy, to another member
    /// or the same one, is a duplicate; the spread is per member.
    #[test]
    fn shared_accounting_counts_messages_not_copies() {
        let members = vec![vec![0, 2, 4], vec![1, 3], vec![5, 2], vec![]];
        let report = SharedReport::of("$share/g/t", &members);
        assert_eq!(
            report,
            SharedReport {
                filter: "$share/g/t".into(),
                members: 4,
                distinct: 6,
                duplicates: 1,
                per_member_min: 0,
                per_member_max: 3,
            }
        );
        let again = SharedReport::of("$share/g/t", &[vec![7, 7, 7]]);
        assert_eq!((again.distinct, again.duplicates), (1, 2));
        assert_eq!(SharedReport::of("f", &[]).per_member_max, 0);
    }

    #[tokio::test]
    async fn unreachable_broker_is_an_error() {
        // Port 1 on loopback: nothing listens there.
        let mut config = Config::new(
            Target::Broker {
                host: "127.0.0.1".into(),
                port: 1,
            },
            Shape::FanIn,
        );
        config.duration = Duration::from_millis(100);
        let error = run(&config).await.unwrap_err();
        assert!(
            error.to_string().contains("connecting to 127.0.0.1:1"),
            "{error}"
        );
    }
}
