//! `simqtt bench` against a real mosquitto on a random loopback port (a short smoke of every
//! shape, under 3 s). Fails, never skips, when mosquitto is missing: scripts/install-peers
//! installs it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simqtt::bench::{self, Config, Shape, Target};
use simqtt::codec::QoS;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mosquitto() -> Mosquitto {
    assert!(
        std::path::Path::new(MOSQUITTO).exists(),
        "{MOSQUITTO} is missing: run scripts/install-peers"
    );
    // A free port: bind port 0, read it, release it for mosquitto.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mosquitto");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Mosquitto {
        child,
        port,
        _dir: dir,
    }
}

fn config(mosquitto: &Mosquitto, shape: Shape) -> Config {
    let mut config = Config::new(
        Target::Broker {
            host: "127.0.0.1".into(),
            port: mosquitto.port,
        },
        shape,
    );
    config.broker_pid = Some(mosquitto.child.id());
    config.drain = Duration::from_secs(1);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_against_mosquitto() {
    let mosquitto = start_mosquitto();

    // fan-in at QoS 1, paced below what mosquitto's default queue (1000 per client) absorbs,
    // so every acknowledged message must arrive.
    let mut fan_in = config(&mosquitto, Shape::FanIn);
    fan_in.qos = QoS::AtLeastOnce;
    fan_in.publishers = 2;
    fan_in.rate_per_sec = Some(2000.0);
    fan_in.duration = Duration::from_millis(600);
    let report = bench::run(&fan_in).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let t = report.throughput.unwrap();
    assert!(t.sent >= 1000, "sent only {}", t.sent);
    assert_eq!(t.acked, t.sent);
    assert_eq!((t.expected, t.received_total), (t.sent, t.sent));
    assert_eq!((t.not_received, t.extra, t.unacked), (0, 0, 0));
    assert!(t.received_per_sec > 1000.0);
    let broker = report.broker_process.unwrap();
    assert!(broker.rss_max_bytes > 0 && broker.rss_end_bytes > 0);
    assert_eq!(broker.unit, "message");

    // latency at QoS 0: one sample per delivered message, ordered percentiles.
    let mut latency = config(&mosquitto, Shape::Latency);
    latency.rate_per_sec = Some(1000.0);
    latency.duration = Duration::from_millis(500);
    let report = bench::run(&latency).await.unwrap();
    let t = report.throughput.unwrap();
    let l = report.latency.unwrap();
    assert!(t.sent >= 400, "sent only {}", t.sent);
    assert_eq!(l.samples, t.received_total);
    assert_eq!(t.received_total, t.sent);
    assert!(0.0 < l.p50_ms && l.p50_ms <= l.p99_ms && l.p99_ms <= l.max_ms);
    assert!(l.p99_ms < 500.0, "p99 {} ms", l.p99_ms);

    // fan-out: each message reaches every subscriber.
    let mut fan_out = config(&mosquitto, Shape::FanOut);
    fan_out.subscribers = 5;
    fan_out.rate_per_sec = Some(500.0);
    fan_out.duration = Duration::from_millis(300);
    let report = bench::run(&fan_out).await.unwrap();
    let t = report.throughput.unwrap();
    assert_eq!(t.expected, t.sent * 5);
    assert_eq!(t.received_total, t.expected);

    // shared: each message reaches one member of the group, none twice, and the group splits
    // them (no member got them all).
    let mut shared = config(&mosquitto, Shape::Shared);
    shared.qos = QoS::AtLeastOnce;
    shared.subscribers = 4;
    shared.rate_per_sec = Some(500.0);
    shared.duration = Duration::from_millis(300);
    let report = bench::run(&shared).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let t = report.throughput.unwrap();
    assert!(t.sent >= 100, "sent only {}", t.sent);
    assert_eq!((t.expected, t.received_total), (t.sent, t.sent));
    assert_eq!((t.not_received, t.extra), (0, 0));
    let group = t.shared.unwrap();
    assert!(
        group.filter.starts_with("$share/simqtt-bench/"),
        "{}",
        group.filter
    );
    assert_eq!(
        (group.members, group.distinct, group.duplicates),
        (4, t.sent, 0)
    );
    assert!(
        group.per_member_max < t.sent,
        "one member got every message"
    );

    // connections: all open, all held, weighed in mosquitto's RSS.
    let mut connections = config(&mosquitto, Shape::Connections);
    connections.connections = 300;
    connections.duration = Duration::from_millis(300);
    let report = bench::run(&connections).await.unwrap();
    let c = report.connections.unwrap();
    assert_eq!((c.opened, c.failed, c.alive_at_end), (300, 0, 300));
    assert!(c.broker_bytes_per_connection.is_some());
    assert_eq!(report.broker_process.unwrap().unit, "connection");
}

/// The short smoke CI runs: `simqtt bench` against the simqtt broker itself (in process, on a
/// port-0 listener). Paced so that nothing may be dropped: every acknowledged message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_against_the_simqtt_broker() {
    use simqtt::broker::{self as broker, BrokerConfig};
    use simqtt::store::MemoryStore;
    use simqtt::transport::tcp::TcpListener;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.0.local_addr().unwrap().port();
    let config = BrokerConfig {
        rng_seed: Some(7),
        ..BrokerConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(broker::run(
        listener,
        Box::new(MemoryStore::new()),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    let target = Target::Broker {
        host: "127.0.0.1".into(),
        port,
    };

    let mut fan_in = Config::new(target.clone(), Shape::FanIn);
    fan_in.qos = QoS::AtLeastOnce;
    fan_in.publishers = 2;
    fan_in.rate_per_sec = Some(2000.0);
    fan_in.duration = Duration::from_millis(500);
    fan_in.drain = Duration::from_secs(1);
    let report = bench::run(&fan_in).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let t = report.throughput.unwrap();
    assert!(t.sent >= 800, "sent only {}", t.sent);
    assert_eq!(
        (t.acked, t.received_total, t.not_received),
        (t.sent, t.sent, 0)
    );

    let mut latency = Config::new(target, Shape::Latency);
    latency.rate_per_sec = Some(1000.0);
    latency.duration = Duration::from_millis(300);
    latency.drain = Duration::from_secs(1);
    let report = bench::run(&latency).await.unwrap();
    let l = report.latency.unwrap();
    assert_eq!(l.samples, report.throughput.unwrap().sent);
    assert!(l.p50_ms <= l.p99_ms && l.p99_ms <= l.max_ms);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
