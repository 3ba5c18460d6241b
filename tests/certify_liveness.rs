//! `simqtt certify` against a broker that breaks: never a finding charged to a dead broker.
//!
//! - A broker that crashes on one raw input while other cases run beside it: exactly one
//!   robustness finding (the case, the step, the bytes), the cases it took down rerun alone and
//!   passing, the crash in the report's header; without a restart command, inconclusive cases
//!   and no finding at all.
//! - A broker that degrades on one input (new connections refused, old ones kept): the
//!   failures of the cases that met the degraded broker vanish when rerun alone and are set
//!   aside as cascade, naming the case after which it degraded.
//! - A broker that ignores takeovers: certify's kick does nothing, and the case is
//!   inconclusive instead of passing.
//! - A broker that requires a password: the raw CONNECTs carry certify's credentials.
//!
//! The broken brokers are `certify_support::fake`: the simqtt broker in this process behind a
//! front that breaks on given bytes.

mod certify_support;

use std::path::PathBuf;

use certify_support::fake::{Breaks, Fake};
use certify_support::{case, certify, describe, failures, scenarios};
use simqtt::certify::profile::Profile;
use simqtt::certify::runner::Options;
use simqtt::certify::{Certification, Grade, IncidentKind, Verdict};
use simqtt::scenario::{self, Scenario};

/// The PUBLISH (QoS 0, topic `k1ll`, payload `hi`) the crashing fake dies of.
const KILL: &str = "30 08 00 04 6b 31 6c 6c 68 69";
/// The PUBLISH (QoS 0, topic `d3gr`, payload `hi`) after which the degrading fake refuses
/// new connections.
const DEGRADE: &str = "30 08 00 04 64 33 67 72 68 69";

/// A raw case that sends `bytes` after a second on a connection of its own.
fn breaker(name: &str, bytes: &str) -> (PathBuf, String) {
    (
        PathBuf::from(format!("{name}.yaml")),
        format!(
            "description: Sends bytes some brokers do not survive.\n\
             spec: [MQTT-4.7.3-2]\n\
             clients:\n  r: {{}}\n\
             steps:\n\
             \x20 - raw: {{client: r, send: connect}}\n\
             \x20 - expect_raw: {{client: r, packet: connack, reason: 0x00}}\n\
             \x20 - expect_raw: {{client: r, packet: none, within: 1s}}\n\
             \x20 - raw: {{client: r, send: \"{bytes}\"}}\n\
             \x20 - expect_raw: {{client: r, packet: none, within: 1s, spec: MQTT-4.7.3-2}}\n"
        ),
    )
}

/// A raw case that holds a connection through the breakage, then needs both that connection
/// (PINGREQ answered) and a new one (CONNACK): it fails on a crashed or degraded broker.
fn bystander(name: &str, topic: &str) -> (PathBuf, String) {
    (
        PathBuf::from(format!("{name}.yaml")),
        format!(
            "description: Minds its own business while another case breaks the broker.\n\
             spec: [MQTT-3.12.4-1]\n\
             clients:\n  v: {{}}\n\
             steps:\n\
             \x20 - raw: {{client: v, send: connect}}\n\
             \x20 - expect_raw: {{client: v, packet: connack, reason: 0x00}}\n\
             \x20 - raw: {{client: v, send: \"82 {len:02x} 00 01 00 {tlen:02x} {hex} 00\"}}\n\
             \x20 - expect_raw: {{client: v, packet: suback, codes: [0]}}\n\
             \x20 - expect_raw: {{client: v, packet: none, within: 3s}}\n\
             \x20 - raw: {{client: v, send: pingreq}}\n\
             \x20 - expect_raw: {{client: v, packet: pingresp}}\n\
             \x20 - raw: {{client: v, new: true, send: connect}}\n\
             \x20 - expect_raw: {{client: v, packet: connack, reason: 0x00}}\n",
            len = 2 + 2 + topic.len() + 1,
            tlen = topic.len(),
            hex = topic
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    )
}

fn parsed(files: &[(PathBuf, String)]) -> Vec<(PathBuf, Scenario)> {
    files
        .iter()
        .map(|(path, src)| {
            let s = scenario::parse(&path.display().to_string(), src)
                .unwrap_or_else(|e| panic!("{e}\n{src}"));
            (path.clone(), s)
        })
        .collect()
}

fn options(fake: &Fake, restart: bool) -> Options {
    Options {
        broker_url: format!("mqtt://{}", fake.addr()),
        broker: fake.addr(),
        endpoint: Default::default(),
        username: None,
        password: None,
        restart_cmd: restart.then(|| fake.restart_cmd()),
        profile: Profile::default(),
        profile_file: None,
        seeds: 1,
        seed: None,
        jobs: 8,
        traces: None,
    }
}

fn all_findings(cert: &Certification) -> Vec<String> {
    cert.cases
        .iter()
        .flat_map(|c| {
            c.findings
                .iter()
                .map(move |f| format!("{} {:?} {} {}", c.scenario, f.grade, f.checker, f.observed))
        })
        .collect()
}

#[test]
fn a_broker_that_crashes_on_one_input_yields_one_robustness_finding_and_no_fallout() {
    let fake = Fake::start(Breaks {
        crash_on: Some(b"k1ll".to_vec()),
        ..Breaks::default()
    });
    // The three raw cases share a wave (their topics cannot meet): the bystanders are in
    // flight when the breaker's input crashes the broker.
    let files = [
        breaker("breaker", KILL),
        bystander("bystander-a", "ba"),
        bystander("bystander-b", "bb"),
    ];
    let cert = certify(&parsed(&files), &options(&fake, true));
    assert!(fake.crashes() >= 2, "the crash and its reproduction alone");
    let findings = all_findings(&cert);
    assert_eq!(findings.len(), 1, "{findings:#?}\n{}", failures(&cert));
    let breaker = case(&cert.cases, "breaker");
    assert!(
        matches!(breaker.verdict, Verdict::Failed),
        "{}",
        describe(breaker)
    );
    let f = &breaker.findings[0];
    assert_eq!((f.grade, f.checker.as_str()), (Grade::Must, "liveness"));
    // It cites the statement the breaking input's expectation tests, and names the step and
    // its bytes.
    assert_eq!(f.statement, "MQTT-4.7.3-2");
    assert!(
        f.observed.contains("crashed after step 4 (raw)"),
        "{}",
        f.observed
    );
    assert!(
        f.observed.contains(&format!("sent `{KILL}`")),
        "{}",
        f.observed
    );
    for name in ["bystander-a", "bystander-b"] {
        let c = case(&cert.cases, name);
        assert!(matches!(c.verdict, Verdict::Passed), "{}", describe(c));
    }
    // The header: crashed once, after the breaker's step 4, restarted, the cases rerun.
    assert_eq!(cert.incidents.len(), 1, "{:#?}", cert.incidents);
    let incident = &cert.incidents[0];
    assert_eq!(incident.kind, IncidentKind::Crashed);
    assert_eq!(
        incident.culprit.as_deref(),
        Some("breaker seed 0 step 4 (raw)")
    );
    assert!(incident.restarted);
    let text = simqtt::certify::report::terminal(
        &cert,
        simqtt::certify::statements::Statements::embedded(),
    );
    assert!(
        text.contains("BROKER HEALTH: the broker crashed once during the run: crashed after breaker seed 0 step 4 (raw)"),
        "{text}"
    );
}

#[test]
fn without_a_restart_command_a_crash_leaves_inconclusive_cases_and_no_finding() {
    let fake = Fake::start(Breaks {
        crash_on: Some(b"k1ll".to_vec()),
        ..Breaks::default()
    });
    let mut files = vec![
        breaker("breaker", KILL),
        bystander("bystander-a", "ba"),
        bystander("bystander-b", "bb"),
    ];
    // A case that would only run after the crash: it is not run against a dead broker.
    files.push((
        PathBuf::from("later.yaml"),
        "description: Runs after the others.\nspec: [MQTT-3.12.4-1]\nclients:\n  w: {}\nsteps:\n  - raw: {client: w, send: connect}\n  - expect_raw: {client: w, packet: connack}\n  - raw: {client: w, send: \"82 0e 00 01 00 09 2b 2f 61 6e 79 77 68 65 72 65 00\"}\n  - expect_raw: {client: w, packet: suback}\n".into(),
    ));
    let cert = certify(&parsed(&files), &options(&fake, false));
    let findings = all_findings(&cert);
    assert!(findings.is_empty(), "{findings:#?}");
    for c in &cert.cases {
        assert!(c.inconclusive(), "{}", describe(c));
    }
    assert!(!cert.certified());
    assert_eq!(cert.incidents.len(), 1);
    assert!(!cert.incidents[0].restarted);
}

#[test]
fn a_degraded_brokers_cascade_is_reported_as_cascade() {
    let fake = Fake::start(Breaks {
        degrade_on: Some(b"d3gr".to_vec()),
        ..Breaks::default()
    });
    let files = [
        breaker("degrader", DEGRADE),
        bystander("bystander-a", "ba"),
        bystander("bystander-b", "bb"),
    ];
    let cert = certify(&parsed(&files), &options(&fake, true));
    assert!(
        fake.degradations() >= 2,
        "the degradation and its reproduction alone"
    );
    let findings = all_findings(&cert);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let degrader = case(&cert.cases, "degrader");
    let f = &degrader.findings[0];
    assert_eq!((f.grade, f.checker.as_str()), (Grade::Must, "liveness"));
    assert!(
        f.observed.contains("degraded after step 4 (raw)"),
        "{}",
        f.observed
    );
    assert_eq!(cert.incidents[0].kind, IncidentKind::Degraded);
    // The bystanders met the degraded broker (a new connection refused) and passed alone:
    // their first run's failures are set aside as cascade, naming the degrader.
    let mut cascades = 0;
    for name in ["bystander-a", "bystander-b"] {
        let c = case(&cert.cases, name);
        assert!(matches!(c.verdict, Verdict::Passed), "{}", describe(c));
        for aside in &c.set_aside {
            assert!(
                aside.reason.starts_with(
                    "cascade: seen while the broker degraded (degrader seed 0 step 4 (raw))"
                ),
                "{}",
                aside.reason
            );
            cascades += 1;
        }
    }
    assert!(cascades >= 1, "{}", failures(&cert));
}

#[test]
fn a_kick_the_broker_does_not_act_on_is_inconclusive_not_a_pass() {
    let set = scenarios(&["reconnect/reconnect-after-kick.yaml"]);
    let fine = Fake::start(Breaks::default());
    let cert = certify(&set, &options(&fine, true));
    assert!(cert.certified(), "{}", failures(&cert));
    let deaf = Fake::start(Breaks {
        ignore_takeovers: true,
        ..Breaks::default()
    });
    let cert = certify(&set, &options(&deaf, true));
    let c = case(&cert.cases, "reconnect-after-kick");
    match &c.verdict {
        Verdict::Inconclusive { reason } => assert!(
            reason.contains("step 4 (kick sub): sub's connection did not end"),
            "{reason}"
        ),
        other => panic!("a kick that did nothing: {other:?}\n{}", describe(c)),
    }
    assert!(c.findings.is_empty(), "{}", describe(c));
    assert!(!cert.certified());
}

#[test]
fn raw_connects_carry_the_credentials_to_a_broker_that_requires_them() {
    use simqtt::broker::auth::{Authenticator, PasswordFile, PasswordHash};
    use simqtt::broker::{Broker, BrokerConfig};
    use simqtt::store::MemoryStore;
    use simqtt::transport::tcp::TcpListener;

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr: std::net::SocketAddr = listener.0.local_addr().expect("addr");
            let hash = PasswordHash::with_salt(b"secret", [7; 12], 1000);
            let passwords = PasswordFile::from_entries([("certify".to_string(), hash)]);
            let config = BrokerConfig {
                allow_anonymous: false,
                authenticator: Authenticator::new(false, Some(passwords), None),
                ..BrokerConfig::default()
            };
            let (broker, _handle) = Broker::new(Box::new(MemoryStore::new()), config);
            addr_tx.send(addr).expect("send addr");
            let stop = async move {
                let _ = stop_rx.await;
            };
            broker.run(listener, stop).await.expect("broker");
        });
    });
    let addr = addr_rx.recv().expect("broker address");
    let options = Options {
        broker_url: format!("mqtt://{addr}"),
        broker: addr,
        endpoint: Default::default(),
        username: Some("certify".into()),
        password: Some("secret".into()),
        restart_cmd: None,
        profile: Profile::default(),
        profile_file: None,
        seeds: 1,
        seed: None,
        jobs: 4,
        traces: None,
    };
    // Raw cases whose CONNECTs are `send: connect`, and a client session beside them.
    let set = scenarios(&[
        "qos/raw-flows-v311.yaml",
        "session/raw-redelivery-v311.yaml",
        "qos/qos1-basic.yaml",
    ]);
    let cert = certify(&set, &options);
    let _ = stop_tx.send(());
    let _ = thread.join();
    assert!(cert.certified(), "{}", failures(&cert));
    assert!(cert.incidents.is_empty(), "{:#?}", cert.incidents);
}
