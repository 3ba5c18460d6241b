//! `simqtt certify` against the simqtt broker over real TCP: the same scenarios the simulator
//! runs, now through fault proxies, real sockets and real time. The broker must pass everything
//! its profile (docs/profiles/simqtt.toml) claims.
//!
//! - The whole library against `simqtt broker --data-dir` run as a child process, restarted by
//!   a script with SIGKILL (it syncs every write, so a kill loses nothing it acknowledged).
//! - The broker in-process on 127.0.0.1:0 without a restart command: restart scenarios are
//!   skipped with that reason, the rest of a small set passes, and `$SYS/broker/version` is read.
//! - Usage errors exit 2.

mod certify_support;

use std::process::Command;

use certify_support::{
    case, certify, describe, failures, free_port, library, options, passed, root, scenarios,
    ScriptedBroker,
};
use simqtt::broker::{Broker, BrokerConfig};
use simqtt::certify::profile::{Acl, Profile};
use simqtt::certify::runner::Options;
use simqtt::certify::Verdict;
use simqtt::store::MemoryStore;
use simqtt::transport::tcp::TcpListener;

/// The ACL of docs/profiles/simqtt.toml's [acl] example: user `certify` with a deny inside an
/// allowed wildcard, everyone else (anonymous) allowed everything the library uses.
const ACL_FILE: &str = "\
topic readwrite #
topic readwrite $SYS/#
topic readwrite $app/#
user certify
topic readwrite private/#
topic deny private/x
";

#[test]
fn simqtt_broker_passes_the_whole_library_over_tcp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    // With a password file and an ACL, as the profile's [acl] example says, so the `acl`
    // scenarios run too (few hash iterations: the test is not about the work factor), and the
    // user's SCRAM credential (`--scram`), so the `enhanced_auth` ones do.
    let d = dir.path().display().to_string();
    let status = Command::new(env!("CARGO_BIN_EXE_simqtt"))
        .args(["passwd", "-c", "-b", "-I", "1000", "--scram"])
        .arg(format!("{d}/passwd"))
        .args(["certify", "secret"])
        .status()
        .expect("simqtt passwd");
    assert!(status.success());
    std::fs::write(format!("{d}/acl"), ACL_FILE).expect("write the ACL");
    std::fs::write(
        format!("{d}/broker.toml"),
        format!("password_file = \"{d}/passwd\"\nacl_file = \"{d}/acl\"\n"),
    )
    .expect("write the broker config");
    let start = format!(
        "{} broker --listen 127.0.0.1:{port} --data-dir {d}/data --config {d}/broker.toml",
        env!("CARGO_BIN_EXE_simqtt"),
    );
    let broker = ScriptedBroker::start(port, dir, &start, "KILL");
    // Real time dominates (waits and quiet periods), not CPU: many cases at once.
    let mut options = options(&broker, "simqtt.toml", 24);
    options.profile.acl = Some(Acl {
        username: "certify".into(),
        password: "secret".into(),
        denied_topic: "private/x".into(),
        allowed_topic: Some("private/open".into()),
        readable_filter: Some("private/#".into()),
    });
    options.profile.enhanced_auth = true;
    let all = library();
    let cert = certify(&all, &options);
    assert!(
        cert.certified(),
        "the simqtt broker failed over TCP:\n{}\nbroker log:\n{}",
        failures(&cert),
        broker.log()
    );
    // The robustness probes ran (the `acl` ones need the profile's [acl] user) and passed.
    for name in [
        "acl-deny-inside-wildcard",
        "session-resumed-by-another-user",
        "deep-topic-levels-v311",
        "deep-topic-levels-v5",
        "non-reading-subscriber-flood",
        "scram-connect",
        "scram-exchange-by-hand",
        "scram-exchange-fails-midway",
        "scram-reauthenticate",
        "scram-reauthenticate-wrong-password",
    ] {
        let c = case(&cert.cases, name);
        assert!(passed(c), "{name}: {}", describe(c));
    }
    let ran = cert
        .cases
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Passed))
        .count();
    // Only what no real broker can do from outside is skipped: power loss, the scenarios
    // that expect a broker to forget its sessions (the profile declares persistence), those
    // timed against the simulator's own TLS/WebSocket handshakes, and the one that needs the
    // broker's longest Keep Alive set to its 2 s (a setting that would change every other case).
    for c in &cert.cases {
        if let Verdict::Skipped { reason } = &c.verdict {
            assert!(
                reason.contains("power_loss")
                    || reason.contains("volatile broker")
                    || reason.starts_with("transport: ")
                    || reason.starts_with("max_keepalive: "),
                "{} skipped: {reason}",
                c.scenario
            );
        }
    }
    assert!(
        ran * 10 >= all.len() * 8,
        "only {ran} of {} scenarios ran",
        all.len()
    );
    assert_eq!(
        cert.broker_version.as_deref(),
        Some(format!("simqtt {}", env!("CARGO_PKG_VERSION")).as_str())
    );
}

/// The broker in this process, on a port it picked, with an in-memory store.
fn in_process_broker() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr: std::net::SocketAddr = listener.0.local_addr().expect("addr");
            let (broker, _handle) = Broker::new(
                Box::new(MemoryStore::new()),
                BrokerConfig {
                    sys_interval_secs: 5,
                    ..BrokerConfig::default()
                },
            );
            addr_tx.send(addr).expect("send addr");
            let stop = async move {
                let _ = stop_rx.await;
            };
            broker.run(listener, stop).await.expect("broker");
        });
    });
    let addr = addr_rx.recv().expect("broker address");
    (addr, stop_tx)
}

#[test]
fn in_process_broker_without_restart_command() {
    let (addr, stop) = in_process_broker();
    let options = Options {
        broker_url: format!("mqtt://{addr}"),
        broker: addr,
        endpoint: Default::default(),
        username: None,
        password: None,
        restart_cmd: None,
        profile: Profile {
            name: "simqtt in memory".into(),
            ..Profile::default()
        },
        profile_file: None,
        seeds: 2,
        seed: None,
        jobs: 8,
        traces: None,
    };
    let set = scenarios(&[
        "qos/qos1-basic.yaml",
        "qos/qos2-basic.yaml",
        "will/will-on-kick.yaml",
        "topics/dollar-not-matched-by-hash.yaml",
        "faults/broker-restart-durable-sessions.yaml",
        "chaos/mixed-qos-clean-sessions.yaml",
    ]);
    let cert = certify(&set, &options);
    let _ = stop.send(());
    assert!(cert.certified(), "{}", failures(&cert));
    let restart = cert
        .cases
        .iter()
        .find(|c| c.scenario == "broker-restart-durable-sessions")
        .expect("restart case");
    match &restart.verdict {
        Verdict::Skipped { reason } => assert!(reason.contains("--restart-cmd"), "{reason}"),
        other => panic!("a restart scenario without --restart-cmd: {other:?}"),
    }
    // The randomised scenario ran --seeds 2 seeds; the explicit ones once.
    let chaos: Vec<Option<u64>> = cert
        .cases
        .iter()
        .filter(|c| c.scenario == "mixed-qos-clean-sessions")
        .map(|c| c.seed)
        .collect();
    assert_eq!(chaos.len(), 2, "{chaos:?}");
    assert_eq!(
        cert.cases
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Passed))
            .count(),
        6
    );
    assert!(cert
        .broker_version
        .as_deref()
        .is_some_and(|v| v.starts_with("simqtt ")));
}

#[test]
fn usage_errors_exit_2() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_simqtt"))
            .current_dir(root())
            .arg("certify")
            .args(args)
            .output()
            .expect("run simqtt certify")
    };
    let bad_scheme = run(&["--broker", "http://127.0.0.1:1"]);
    assert_eq!(bad_scheme.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_scheme.stderr).contains("usage: simqtt certify"));
    let missing = run(&[]);
    assert_eq!(missing.status.code(), Some(2), "--broker is required");
    let no_file = run(&["--broker", "mqtt://127.0.0.1:1", "no/such/file.yaml"]);
    assert_eq!(no_file.status.code(), Some(2));
    // Nothing listens on port 1: refused before any case runs.
    let unreachable = run(&[
        "--broker",
        "mqtt://127.0.0.1:1",
        "scenarios/qos/qos0-basic.yaml",
    ]);
    assert_eq!(unreachable.status.code(), Some(2));
}
