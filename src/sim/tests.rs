//! Every fault proves it took effect: a fault or control step whose effect cannot be
//! confirmed makes the run inconclusive, never a pass.

use super::*;
use crate::scenario;

/// The turmoil world as `run` builds it, wrapped by `wrap`, run and judged.
fn run_wrapped<B: Backend>(
    s: &Scenario,
    seed: u64,
    wrap: impl FnOnce(backend::Turmoil<'static>) -> B,
) -> RunReport {
    let knobs = knobs(seed);
    let sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .tick_duration(Duration::from_millis(knobs.tick_ms))
        .min_message_latency(Duration::from_millis(knobs.min_latency_ms))
        .max_message_latency(Duration::from_millis(knobs.max_latency_ms))
        .simulation_duration(RUN_LIMIT + Duration::from_secs(60))
        .build();
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        broker_addr: format!("{}:{}", s.broker.host, world::BROKER_PORT),
        seed,
        ..Shared::default()
    }));
    let backend = wrap(backend::Turmoil::new(
        sim,
        shared.clone(),
        s.broker.host.clone(),
    ));
    let mut report = execute(backend, s, seed, shared);
    judge(s, &mut report);
    report
}

/// A target whose kick mechanism does nothing (a broker that ignores the admin request, or
/// a takeover the broker does not act on): everything else is the simulator's.
struct NoKick<'a>(backend::Turmoil<'a>);

impl Backend for NoKick<'_> {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn step(&mut self) -> Result<(), String> {
        self.0.step()
    }
    fn build(&mut self, client_hosts: &[String], durable: bool) -> Result<(), String> {
        self.0.build(client_hosts, durable)
    }
    fn partition(&mut self, a: &str, b: &str, one_way: bool) {
        self.0.partition(a, b, one_way)
    }
    fn repair(&mut self, a: &str, b: &str) {
        self.0.repair(a, b)
    }
    fn loss(&mut self, a: &str, b: &str, rate: f64) {
        self.0.loss(a, b, rate)
    }
    fn latency(&mut self, a: &str, b: &str, latency: Duration, jitter: Duration) {
        self.0.latency(a, b, latency, jitter)
    }
    fn reset_latency(&mut self, a: &str, b: &str) {
        self.0.reset_latency(a, b)
    }
    fn heal_links(&mut self) {
        self.0.heal_links()
    }
    fn crash_broker(&mut self, power_loss: bool) -> Result<Confirmation, String> {
        self.0.crash_broker(power_loss)
    }
    fn restart_broker(&mut self) -> Result<Confirmation, String> {
        self.0.restart_broker()
    }
    fn kick(&mut self, _client: &str, _client_id: &str) -> Result<(), String> {
        Ok(())
    }
    fn link_count(&mut self, host: &str) -> backend::LinkCount {
        self.0.link_count(host)
    }
}

fn library(path: &str) -> Scenario {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    scenario::load(&root.join("scenarios").join(path)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_kick_that_does_nothing_makes_the_run_inconclusive() {
    let s = library("reconnect/reconnect-after-kick.yaml");
    let real = run(&s, 0);
    assert_eq!(real.outcome(), Outcome::Passed, "{:#?}", real.failures);
    let report = run_wrapped(&s, 0, NoKick);
    // Everything the scenario expects still happens (the subscriber never lost its
    // connection): without the kick's confirmation this run would pass.
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.outcome(), Outcome::Inconclusive);
    assert!(!report.passed());
    let reasons = report.inconclusive();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("step 4 (kick sub): sub's connection did not end within 10s"),
        "{reasons:?}"
    );
}

fn inline(src: &str) -> Scenario {
    scenario::parse("t.yaml", src).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_drop_rule_no_packet_meets_is_not_a_pass() {
    let s = inline(
        "clients: {c: {}}\nsteps:\n  - connect: c\n  - drop_packet: {client: c, packet: unsubscribe}\n  - drop_packet: {client: c, packet: pingreq}\n  - wait: 40s\nquiesce: 1s\n",
    );
    let report = run(&s, 0);
    assert_eq!(report.outcome(), Outcome::Inconclusive);
    // The PINGREQ (keepalive 30s) was dropped within the 40s: only the UNSUBSCRIBE rule,
    // which nothing met, is unconfirmed.
    assert_eq!(
        report.inconclusive(),
        ["step 2 (drop_packet unsubscribe outbound on c): no unsubscribe packet went outbound on c's connections before the fault was healed"]
    );
}

#[test]
fn a_partition_is_confirmed_only_when_traffic_met_it() {
    let quiet = inline(
        "clients: {c: {keepalive: 2s}}\nsteps:\n  - connect: c\n  - partition: {a: c}\n  - heal:\nquiesce: 1s\n",
    );
    let report = run(&quiet, 0);
    assert_eq!(report.outcome(), Outcome::Inconclusive);
    assert!(
        report.inconclusive()[0]
            .starts_with("step 2 (partition c - broker): nothing was sent across the cut link"),
        "{:?}",
        report.inconclusive()
    );
    // Held past the keepalive: the PINGREQ meets the cut.
    let held = inline(
        "clients: {c: {keepalive: 2s}}\nsteps:\n  - connect: c\n  - partition: {a: c}\n  - wait: 3s\n  - heal:\nquiesce: 1s\n",
    );
    let report = run(&held, 0);
    assert!(
        report.inconclusive().is_empty(),
        "{:?}",
        report.inconclusive()
    );
    // A one-way cut from the broker: what the broker sent toward the client was cut (the
    // simulated broker counts what it writes per peer).
    let from_broker = inline(
        "clients: {c: {keepalive: 2s}}\nsteps:\n  - connect: c\n  - partition: {a: broker, b: c, one_way: true}\n  - wait: 3s\n  - heal:\nquiesce: 1s\n",
    );
    let report = run(&from_broker, 0);
    assert!(
        report.inconclusive().is_empty(),
        "{:?}",
        report.inconclusive()
    );
}

#[test]
fn publish_await_ack_returns_once_the_broker_owns_the_message() {
    // With 500ms on the publisher's link, the PUBACK comes long after the client took the
    // message: `await: ack` holds the crash back until it came.
    let src = |how: &str| {
        format!(
            "clients: {{p: {{}}}}\nsteps:\n  - connect: p\n  - latency: {{a: p, latency: 500ms}}\n  - publish: {{client: p, topic: t, qos: 1, await: {how}}}\n  - crash_broker:\n  - restart_broker:\nquiesce: 2s\n"
        )
    };
    let order = |report: &RunReport| {
        let at = |f: &dyn Fn(&Event) -> bool| report.trace.records.iter().position(|r| f(&r.event));
        let acked = at(&|e| matches!(e, Event::PublishAcked { id, .. } if id == "p-1"));
        let crash = at(&|e| {
            matches!(
                e,
                Event::Fault {
                    fault: Fault::BrokerCrash { .. }
                }
            )
        });
        (acked, crash)
    };
    let report = run(&inline(&src("ack")), 0);
    assert_eq!(report.outcome(), Outcome::Passed, "{:#?}", report.failures);
    let (acked, crash) = order(&report);
    assert!(acked.is_some() && acked < crash, "{acked:?} {crash:?}");
    // `accepted` (the default) returns when the client took it: the crash comes first.
    let report = run(&inline(&src("accepted")), 0);
    let (acked, crash) = order(&report);
    assert!(acked.is_none_or(|a| Some(a) > crash), "{acked:?} {crash:?}");
}

#[test]
fn publish_await_ack_fails_the_step_when_no_acknowledgement_comes() {
    let s = inline(
        "clients: {p: {}}\nsteps:\n  - connect: p\n  - partition: {a: p}\n  - publish: {client: p, topic: t, qos: 1, await: ack}\n  - heal:\nquiesce: 1s\n",
    );
    let report = run(&s, 0);
    let f = report
        .failures
        .iter()
        .find(|f| f.kind == "expect")
        .unwrap_or_else(|| panic!("{:#?}", report.failures));
    assert!(
        f.happened.contains("p-1 not acknowledged within 30s"),
        "{}",
        f.happened
    );
}

#[test]
fn the_nemesis_is_inconclusive_only_when_none_of_its_faults_took_effect() {
    let mut report = run(&inline("clients: {c: {}}\nsteps:\n  - connect: c\n"), 0);
    assert!(report.passed());
    let miss = |fault: &str| Unconfirmed {
        step: None,
        fault: fault.into(),
        reason: "met nothing".into(),
        nemesis: true,
    };
    report.nemesis_faults = 3;
    report.nemesis_effective = 1;
    report.unconfirmed = vec![miss("kick s0"), miss("stall p1")];
    assert_eq!(report.outcome(), Outcome::Passed);
    report.nemesis_effective = 0;
    report.unconfirmed.push(miss("reset s1"));
    assert_eq!(report.outcome(), Outcome::Inconclusive);
    assert!(report.inconclusive()[0].starts_with(
        "none of the 3 faults the nemesis drew took effect (nemesis kick s0: met nothing;"
    ));
}

#[test]
fn nemesis_packet_rules_name_packets_the_target_carries() {
    use Direction::{Inbound, Outbound};
    let q1 = [QoS::AtLeastOnce];
    assert_eq!(
        packets_carried(true, &q1, Outbound, false),
        [PacketKind::Publish]
    );
    assert_eq!(
        packets_carried(true, &q1, Inbound, false),
        [PacketKind::Puback]
    );
    assert_eq!(
        packets_carried(false, &q1, Outbound, true),
        [PacketKind::Puback]
    );
    let q0 = [QoS::AtMostOnce];
    // A QoS 0 PUBLISH is never duplicated; an idle QoS 0 subscriber pings.
    assert!(packets_carried(true, &q0, Outbound, true).is_empty());
    assert_eq!(
        packets_carried(false, &q0, Inbound, false),
        [PacketKind::Publish, PacketKind::Pingresp]
    );
    let q2 = [QoS::ExactlyOnce];
    assert_eq!(
        packets_carried(true, &q2, Inbound, false),
        [PacketKind::Pubrec, PacketKind::Pubcomp]
    );
}

/// Each transport carries a session; over TLS and WebSocket the broker's handshakes are in
/// the trace (so the layers really ran), and the trace replays byte for byte.
#[test]
fn every_transport_runs_its_handshakes_in_the_simulation() {
    for transport in ["mqtt", "mqtts", "ws", "wss"] {
        let s = inline(&format!(
            "broker: {{transport: {transport}}}
clients:
  sub: {{clean_session: false}}
  pub: {{}}
steps:
  - connect: sub
  - subscribe: {{client: sub, filter: t, qos: 1}}
  - connect: pub
  - publish: {{client: pub, topic: t, qos: 1, count: 2}}
  - expect_messages: {{client: sub, within: 5s, messages: [{{from: pub, count: 2}}]}}
"
        ));
        let first = run(&s, 5);
        assert_eq!(
            first.outcome(),
            Outcome::Passed,
            "{transport}: {:#?}",
            first.failures
        );
        let trace = first.trace.to_jsonl();
        let completed = trace.matches("handshake from").count();
        let plain = transport == "mqtt";
        assert_eq!(
            completed == 0,
            plain,
            "{transport}: handshake notes in\n{trace}"
        );
        if !plain {
            // Two clients: two handshakes begun and completed.
            assert_eq!(
                trace.matches(" completed\"").count(),
                2,
                "{transport}:\n{trace}"
            );
            assert!(
                trace.contains(&format!("\"transport: {transport} (")),
                "{trace}"
            );
        }
        assert_eq!(
            trace,
            run(&s, 5).trace.to_jsonl(),
            "{transport}: not replayed"
        );
    }
}

/// The library's handshake scenarios do hit handshakes: each has a handshake the broker began
/// before a fault and dropped after it.
#[test]
fn the_transport_scenarios_cut_handshakes_half_way() {
    for name in [
        "half-done-handshake-leaves-no-session-v5",
        "tls-broker-crash-during-handshake",
        "tls-one-way-partition-during-handshake",
        "wss-loss-during-handshake",
    ] {
        let s = library(&format!("transport/{name}.yaml"));
        let seed = seeds_of(&s, None)[0];
        let report = run(&s, seed);
        assert_eq!(
            report.outcome(),
            Outcome::Passed,
            "{name}: {:#?}",
            report.failures
        );
        let lines: Vec<String> = report.trace.to_jsonl().lines().map(String::from).collect();
        let cut = lines.iter().enumerate().any(|(i, line)| {
            let Some(rest) = line.split("handshake from ").nth(1) else {
                return false;
            };
            let Some(peer) = rest.strip_suffix(" begun\"}") else {
                return false;
            };
            // The next record about this peer's handshake, and whether a fault came first.
            let mut fault = false;
            for later in &lines[i + 1..] {
                if later.contains("\"event\":\"fault\"") {
                    fault = true;
                }
                if later.contains(&format!("handshake from {peer} ")) {
                    return fault && later.contains(" dropped: ");
                }
            }
            // Ended by a broker crash (the host and its handshakes are gone).
            fault && name.contains("crash")
        });
        assert!(
            cut,
            "{name}: no handshake was cut by a fault:\n{}",
            lines.join("\n")
        );
    }
}
