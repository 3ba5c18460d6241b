//! Every field of the format, each refusal with its location, and the README's examples.

use super::*;
use crate::codec::QoS;

const EXPLICIT: &str = r#"
name: every-field
description: Uses every explicit field once.
spec: [MQTT-3.1.2-4, MQTT-4.3.2-1]
requires: [broker_restart, power_loss, persistence, mqtt5, kick, retain, wildcards, will, qos1, qos2, connection_faults, link_faults]
seeds: 3
seed: 42
broker:
  durable: false
  host: mqtt
checkers: [qos1, ordering]
quiesce: 20s
postmortem: The broker forgot the session.
clients:
  sub:
    client_id: subscriber-1
    clean_session: false
    keepalive: 10s
    protocol: v5
    session_expiry: 1m
    will: {topic: status/sub, qos: 1, retain: true, delay: 5s, empty: false}
    resubscribe: true
    reconnect: false
    persistence: disk
    host: clients
  pub:
    host: clients
  watcher: {}
steps:
  - connect: sub
  - connect: {client: pub}
  - subscribe: {client: sub, filter: a/#, qos: 2}
  - subscribe:
      client: sub
      filters:
        - {filter: b/+, qos: 1, no_local: true, retain_as_published: true, retain_handling: 2}
  - unsubscribe: {client: sub, filter: b/+}
  - unsubscribe: {client: sub, filters: [a/#, c]}
  - publish: {client: pub, topic: a/b, qos: 1, retain: true, count: 10, rate: 100/s, payload_size: 64}
  - publish: {client: pub, topic: a/b, retain: true, empty: true}
  - disconnect: {client: sub, with_will: true}
  - disconnect: pub
  - crash_broker: {power_loss: true}
  - crash_broker:
  - restart_broker:
  - crash_client: sub
  - restart_client: {client: sub}
  - partition: {a: sub, b: mqtt, one_way: true}
  - partition: {a: clients}
  - heal: {a: sub, b: mqtt}
  - heal:
  - loss: {a: clients, rate: 0.25}
  - latency: {a: sub, latency: 20ms, jitter: 5ms}
  - reset: sub
  - stall: {client: sub}
  - delay: {client: sub, by: 50ms}
  - drop_packet: {client: sub, packet: puback, direction: inbound}
  - duplicate_packet: {client: pub, packet: publish}
  - kick: pub
  - wait: 2m
  - expect_messages:
      client: sub
      within: 5s
      messages:
        - {id: pub-1, qos: 1, retain: false}
        - {from: pub, topic: a/b, count: 9}
  - expect_no_message: {client: watcher, topic: a/#, for: 500ms}
  - expect_session_present: {client: sub, present: true}
  - expect_will: {of: sub, to: watcher, delivered: false, within: 10s, retain: true}
"#;

#[test]
fn every_explicit_field_parses() {
    let s = parse("x.yaml", EXPLICIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "every-field");
    assert_eq!(s.description, "Uses every explicit field once.");
    assert_eq!(s.spec, vec!["MQTT-3.1.2-4", "MQTT-4.3.2-1"]);
    assert_eq!(s.requires.len(), 12);
    assert_eq!(s.requires[3], Capability::Mqtt5);
    assert_eq!(s.seeds, Some(3));
    assert_eq!(s.default_seeds(), 3);
    assert_eq!(s.seed, Some(42));
    assert_eq!(
        s.broker,
        BrokerSpec {
            durable: false,
            host: "mqtt".into(),
            planted_bug: None,
        }
    );
    assert_eq!(
        s.checker_list(),
        vec![CheckerName::Qos1, CheckerName::Ordering]
    );
    assert_eq!(s.quiesce, Dur::from_secs(20));
    assert_eq!(
        s.postmortem.as_deref(),
        Some("The broker forgot the session.")
    );
    assert_eq!(s.kind(), Kind::Explicit);

    let sub = &s.clients["sub"];
    assert_eq!(sub.client_id.as_deref(), Some("subscriber-1"));
    assert!(!sub.clean_session);
    assert_eq!(sub.keepalive, Dur::from_secs(10));
    assert_eq!(sub.protocol, ProtocolVersion::V5);
    assert_eq!(sub.session_expiry, Some(Dur::from_secs(60)));
    assert_eq!(
        sub.will,
        Some(WillSpec {
            topic: "status/sub".into(),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay: Some(Dur::from_secs(5)),
            empty: false,
        })
    );
    assert!(sub.resubscribe);
    assert!(!sub.reconnect);
    assert_eq!(sub.persistence, Persistence::Disk);
    assert_eq!(s.host_of("sub").as_deref(), Some("clients"));
    // Defaults.
    let watcher = &s.clients["watcher"];
    assert_eq!(watcher, &ClientSpec::default());
    assert!(watcher.clean_session && watcher.reconnect && !watcher.resubscribe);
    assert_eq!(watcher.keepalive, Dur::from_secs(30));
    assert_eq!(watcher.protocol, ProtocolVersion::V311);
    assert_eq!(s.host_of("watcher").as_deref(), Some("watcher"));

    let st = &s.steps;
    assert_eq!(st.len(), 32);
    assert_eq!(
        st[0],
        Step::Connect(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[1],
        Step::Connect(ClientStep {
            client: "pub".into()
        })
    );
    let Step::Subscribe(a) = &st[2] else { panic!() };
    assert_eq!(a.all_filters()[0].filter, "a/#");
    assert_eq!(a.all_filters()[0].qos, QoS::ExactlyOnce);
    let Step::Subscribe(b) = &st[3] else { panic!() };
    assert_eq!(
        b.filters[0],
        FilterSpec {
            filter: "b/+".into(),
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2
        }
    );
    let Step::Unsubscribe(u) = &st[4] else {
        panic!()
    };
    assert_eq!(u.all_filters(), vec!["b/+"]);
    let Step::Unsubscribe(u) = &st[5] else {
        panic!()
    };
    assert_eq!(u.all_filters(), vec!["a/#", "c"]);
    let Step::Publish(p) = &st[6] else { panic!() };
    assert_eq!(
        (
            p.qos,
            p.retain,
            p.count,
            p.rate.unwrap().interval_ms(),
            p.payload_size,
            p.empty
        ),
        (QoS::AtLeastOnce, true, 10, 10, Some(64), false)
    );
    let Step::Publish(p) = &st[7] else { panic!() };
    assert_eq!(
        (p.qos, p.count, p.rate, p.empty),
        (QoS::AtMostOnce, 1, None, true)
    );
    assert_eq!(
        st[8],
        Step::Disconnect(DisconnectStep {
            client: "sub".into(),
            with_will: true
        })
    );
    assert_eq!(
        st[9],
        Step::Disconnect(DisconnectStep {
            client: "pub".into(),
            with_will: false
        })
    );
    assert_eq!(
        st[10],
        Step::CrashBroker(CrashBrokerStep { power_loss: true })
    );
    assert_eq!(
        st[11],
        Step::CrashBroker(CrashBrokerStep { power_loss: false })
    );
    assert_eq!(st[12], Step::RestartBroker(RestartBrokerStep {}));
    assert_eq!(
        st[13],
        Step::CrashClient(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[14],
        Step::RestartClient(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[15],
        Step::Partition(PartitionStep {
            a: "sub".into(),
            b: "mqtt".into(),
            one_way: true
        })
    );
    let Step::Partition(p) = &st[16] else {
        panic!()
    };
    assert_eq!(
        (p.b.as_str(), p.one_way),
        ("broker", false),
        "default b is `broker`"
    );
    assert_eq!(
        st[17],
        Step::Heal(HealStep {
            a: Some("sub".into()),
            b: Some("mqtt".into())
        })
    );
    assert_eq!(st[18], Step::Heal(HealStep::default()));
    let Step::Loss(l) = &st[19] else { panic!() };
    assert_eq!((l.a.as_str(), l.rate), ("clients", 0.25));
    assert_eq!(
        st[20],
        Step::Latency(LatencyStep {
            a: "sub".into(),
            b: "broker".into(),
            latency: Dur::from_millis(20),
            jitter: Dur::from_millis(5)
        })
    );
    assert_eq!(
        st[21],
        Step::Reset(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[22],
        Step::Stall(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[23],
        Step::Delay(DelayStep {
            client: "sub".into(),
            by: Dur::from_millis(50)
        })
    );
    assert_eq!(
        st[24],
        Step::DropPacket(PacketStep {
            client: "sub".into(),
            packet: PacketKind::Puback,
            direction: Direction::Inbound
        })
    );
    assert_eq!(
        st[25],
        Step::DuplicatePacket(PacketStep {
            client: "pub".into(),
            packet: PacketKind::Publish,
            direction: Direction::Outbound
        })
    );
    assert_eq!(
        st[26],
        Step::Kick(ClientStep {
            client: "pub".into()
        })
    );
    assert_eq!(st[27], Step::Wait(Dur::from_secs(120)));
    let Step::ExpectMessages(x) = &st[28] else {
        panic!()
    };
    assert_eq!(x.within, Dur::from_secs(5));
    assert_eq!(x.messages[0].id.as_deref(), Some("pub-1"));
    assert_eq!(x.messages[0].qos, Some(QoS::AtLeastOnce));
    assert_eq!(x.messages[0].retain, Some(false));
    assert_eq!(x.messages[0].count, 1);
    assert_eq!(x.messages[1].from.as_deref(), Some("pub"));
    assert_eq!(x.messages[1].topic.as_deref(), Some("a/b"));
    assert_eq!(x.messages[1].count, 9);
    assert_eq!(
        st[29],
        Step::ExpectNoMessage(ExpectNoMessageStep {
            client: "watcher".into(),
            topic: Some("a/#".into()),
            duration: Dur::from_millis(500)
        })
    );
    assert_eq!(
        st[30],
        Step::ExpectSessionPresent(ExpectSessionPresentStep {
            client: "sub".into(),
            present: true
        })
    );
    assert_eq!(
        st[31],
        Step::ExpectWill(ExpectWillStep {
            of: "sub".into(),
            to: "watcher".into(),
            delivered: false,
            within: Dur::from_secs(10),
            retain: Some(true)
        })
    );
    assert_eq!(st[31].keyword(), "expect_will");
}

const RANDOMISED: &str = r#"
spec: [MQTT-4.3.2-1]
seeds: 100
checkers: [qos0, qos1, qos2, ordering, will, retained, session, resubscribe, subscription, invented]
workload:
  publishers: 3
  subscribers: 2
  topics: 5
  qos: [1, 2]
  rate: 50/s
  duration: 30s
  retain: 0.1
  sessions: mixed
  protocol: v5
  keepalive: 3s
  hosts: 4
  wildcards: true
  wills: true
  resubscribe: false
nemesis:
  faults: [partition, partition_one_way, loss, latency, crash_broker, power_loss, crash_client, kick, reset, stall, delay, drop_packet, duplicate_packet]
  interval: 2s
  max_duration: 3s
  loss_rate: 0.1
"#;

#[test]
fn every_randomised_field_parses() {
    let s = parse("scenarios/chaos/mixed.yaml", RANDOMISED).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "mixed", "the name defaults to the file stem");
    assert_eq!(s.kind(), Kind::Randomised);
    assert_eq!(s.default_seeds(), 100);
    assert_eq!(s.checker_list().len(), 10);
    let w = s.workload.as_ref().unwrap();
    assert_eq!((w.publishers, w.subscribers, w.topics), (3, 2, 5));
    assert_eq!(w.qos, vec![QoS::AtLeastOnce, QoS::ExactlyOnce]);
    assert_eq!(w.rate.interval_ms(), 20);
    assert_eq!(w.duration, Dur::from_secs(30));
    assert_eq!(w.retain, 0.1);
    assert_eq!(w.sessions, SessionMix::Mixed);
    assert_eq!(w.protocol, ProtocolMix::V5);
    assert_eq!(w.keepalive, Dur::from_secs(3));
    assert_eq!(w.hosts, 4);
    assert!(w.wildcards && w.wills && !w.resubscribe);
    let n = s.nemesis.as_ref().unwrap();
    assert_eq!(n.faults.len(), 13);
    assert_eq!(n.faults[12], FaultKind::DuplicatePacket);
    assert_eq!(n.interval, Dur::from_secs(2));
    assert_eq!(n.max_duration, Dur::from_secs(3));
    assert_eq!(n.loss_rate, 0.1);
}

#[test]
fn randomised_defaults() {
    let s = parse(
        "r.yaml",
        "workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s}\n",
    )
    .unwrap();
    let w = s.workload.as_ref().unwrap();
    assert_eq!(w.topics, 4);
    assert_eq!(w.qos.len(), 3);
    assert_eq!(w.sessions, SessionMix::Clean);
    assert_eq!(w.protocol, ProtocolMix::V311);
    assert_eq!(w.keepalive, Dur::from_secs(5));
    assert_eq!(w.hosts, 2);
    assert!(w.resubscribe && !w.wildcards && !w.wills);
    assert_eq!(s.default_seeds(), 20);
    assert_eq!(s.quiesce, Dur::from_secs(10));
    assert!(s.broker.durable);
    assert_eq!(s.broker.host, "broker");
    assert!(s.nemesis.is_none());
}

fn error(src: &str) -> ScenarioError {
    let errors = parse("f.yaml", src).unwrap_err();
    errors.0[0].clone()
}

#[test]
fn unknown_keys_are_refused_with_location_and_expected_keys() {
    let e = error("clients:\n  a:\n    keepalive: 5s\n    clean: true\nsteps:\n  - connect: a\n");
    assert_eq!((e.line, e.col), (4, 5), "{e}");
    assert!(e.message.contains("unknown field `clean`"), "{e}");
    assert!(
        e.message.contains("clean_session"),
        "lists the expected keys: {e}"
    );
    assert!(e.to_string().starts_with("f.yaml:4:5: "), "{e}");

    let e = error("clients: {a: {}}\nsteps:\n  - conect: a\n");
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("unknown variant `conect`"), "{e}");
    assert!(e.message.contains("connect"), "{e}");

    let e = error("steps:\n  - connect: {client: a, clean: true}\n");
    assert!(e.message.contains("unknown field `clean`"), "{e}");
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn bad_values_are_refused_with_the_expected_form() {
    let e = error("clients: {a: {keepalive: 10}}\nsteps: [{connect: a}]\n");
    assert!(e.message.contains("500ms, 10s"), "{e}");
    assert_eq!(e.line, 1);

    let e = error("clients: {a: {}}\nsteps:\n  - publish: {client: a, topic: t, qos: 3}\n");
    assert!(e.message.contains("0, 1 or 2"), "{e}");
    assert_eq!(e.line, 3);

    let e = error("clients: {a: {protocol: v4}}\nsteps: [{connect: a}]\n");
    assert!(e.message.contains("v311 or v5"), "{e}");

    let e = error("clients: {a: {}}\nsteps:\n  - wait: soon\n");
    assert!(e.message.contains("500ms, 10s"), "{e}");

    let e = error("clients: {a: {}}\nsteps:\n  - publish: {client: a, topic: t, rate: fast}\n");
    assert!(e.message.contains("100/s"), "{e}");

    let e = error("requires: [teleport]\nclients: {a: {}}\nsteps: [{connect: a}]\n");
    assert!(e.message.contains("broker_restart"), "{e}");

    let e = error("checkers: [qos3]\nclients: {a: {}}\nsteps: [{connect: a}]\n");
    assert!(e.message.contains("qos1"), "{e}");

    let e = error("clients: {a: {}}\nsteps:\n  - drop_packet: {client: a, packet: ping}\n");
    assert!(e.message.contains("pingreq"), "{e}");
}

#[test]
fn undefined_clients_are_refused_before_running() {
    let src = "\
clients:
  sub: {}
  pub: {}
steps:
  - connect: sub
  - subscribe:
      client: sbu
      filter: a
  - publish: {client: pub, topic: a}
  - expect_messages: {client: sub, within: 1s, messages: [{from: ghost}]}
";
    let errors = parse("f.yaml", src).unwrap_err().0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].col), (7, 15));
    assert!(errors[0].message.contains("\"sbu\""));
    assert!(errors[0].message.contains("defined: pub, sub"));
    assert_eq!(errors[1].line, 10);
    assert!(errors[1].message.contains("\"ghost\""));
}

#[test]
fn semantic_refusals_name_their_place() {
    let cases: &[(&str, &str, usize)] = &[
        // (source, expected message fragment, line)
        ("seeds: 1\n", "needs `steps`", 1),
        (
            "clients: {a: {}}\nsteps: [{connect: a}]\nworkload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s}\n",
            "not both",
            3,
        ),
        (
            "clients: {a: {}}\nsteps: [{connect: a}]\nnemesis: {faults: [kick], interval: 1s}\n",
            "needs a `workload`",
            3,
        ),
        (
            "spec: [MQTT-3.1.2-4, 3.1.2-5]\nclients: {a: {}}\nsteps: [{connect: a}]\n",
            "MQTT-3.1.2-4",
            1,
        ),
        ("seeds: 0\nclients: {a: {}}\nsteps: [{connect: a}]\n", "seeds must be", 1),
        (
            "clients:\n  a:\n    keepalive: 1500ms\nsteps: [{connect: a}]\n",
            "whole seconds",
            3,
        ),
        (
            "clients:\n  a:\n    session_expiry: 10s\nsteps: [{connect: a}]\n",
            "MQTT 5.0 only",
            3,
        ),
        (
            "clients:\n  a:\n    will: {topic: a/#}\nsteps: [{connect: a}]\n",
            "valid topic name",
            3,
        ),
        (
            "clients:\n  a:\n    will:\n      topic: a\n      delay: 5s\nsteps: [{connect: a}]\n",
            "will delay is MQTT 5.0",
            5,
        ),
        (
            "clients:\n  a: {client_id: '', clean_session: false}\nsteps: [{connect: a}]\n",
            "empty client id",
            2,
        ),
        (
            "clients:\n  broker: {}\nsteps: [{connect: broker}]\n",
            "broker's host",
            2,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - subscribe: {client: a}\n",
            "needs `filter` or `filters`",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - subscribe: {client: a, filter: 'a/#/b'}\n",
            "valid topic filter",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - subscribe: {client: a, filters: [{filter: a, no_local: true}]}\n",
            "5.0 only",
            3,
        ),
        (
            "clients: {a: {protocol: v5}}\nsteps:\n  - subscribe: {client: a, filters: [{filter: a, retain_handling: 3}]}\n",
            "retain_handling is 0, 1 or 2",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - unsubscribe: {client: a}\n",
            "unsubscribe needs",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - publish: {client: a, topic: a/+}\n",
            "valid topic name",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - publish: {client: a, topic: a, count: 0}\n",
            "count must be",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - publish: {client: a, topic: a, empty: true, payload_size: 3}\n",
            "exclude each other",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - disconnect: {client: a, with_will: true}\n",
            "5.0 only",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - partition: {a: a, b: mars}\n",
            "\"mars\"",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - heal: {a: a}\n",
            "both `a` and `b`",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - loss: {a: a, rate: 1.5}\n",
            "fraction",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - expect_messages: {client: a, within: 1s, messages: []}\n",
            "at least one expected",
            3,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - expect_messages: {client: a, within: 1s, messages: [{id: b-1}]}\n",
            "not a message id",
            3,
        ),
        (
            "workload: {publishers: 0, subscribers: 0, rate: 1/s, duration: 1s}\n",
            "publishers or subscribers",
            1,
        ),
        (
            "workload:\n  publishers: 1\n  subscribers: 1\n  rate: 1/s\n  duration: 0s\n",
            "duration must be",
            5,
        ),
        (
            "workload:\n  publishers: 1\n  subscribers: 1\n  rate: 1/s\n  duration: 1s\n  qos: []\n",
            "at least one QoS",
            6,
        ),
        (
            "workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s, retain: 2}\n",
            "fraction",
            1,
        ),
        (
            "workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s, topics: 0}\n",
            "topics must be",
            1,
        ),
        (
            "workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s, hosts: 0}\n",
            "hosts must be",
            1,
        ),
        (
            "workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s}\nnemesis:\n  faults: []\n  interval: 1s\n",
            "at least one fault",
            3,
        ),
        (
            "workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s}\nnemesis:\n  faults: [kick]\n  interval: 0s\n",
            "above zero",
            4,
        ),
        (
            "workload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s}\nclients: {a: {}}\n",
            "remove `clients`",
            2,
        ),
    ];
    for (src, fragment, line) in cases {
        let e = error(src);
        assert!(e.message.contains(fragment), "{src}\n→ {e}");
        assert_eq!(e.line, *line, "{src}\n→ {e}");
    }
}

#[test]
fn scenarios_serialise_back_to_yaml_that_parses_the_same() {
    let s = parse("x.yaml", EXPLICIT).unwrap();
    let text = serde_yaml::to_string(&s).unwrap();
    let again = parse("x.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again, s);
    let s = parse("r.yaml", RANDOMISED).unwrap();
    let again = parse("r.yaml", &serde_yaml::to_string(&s).unwrap()).unwrap();
    assert_eq!(again, s);
}

/// Every ```yaml block of scenarios/README.md is a valid scenario, except blocks marked
/// `# invalid:` whose first line names the error they must produce.
#[test]
fn readme_examples_parse() {
    let readme = include_str!("../../scenarios/README.md");
    let mut blocks = 0;
    let mut rest = readme;
    while let Some(start) = rest.find("```yaml\n") {
        let body_start = start + "```yaml\n".len();
        let end = rest[body_start..].find("```").expect("closed block") + body_start;
        let block = &rest[body_start..end];
        rest = &rest[end + 3..];
        blocks += 1;
        if let Some(expected) = block
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# invalid: "))
        {
            let err = parse("README.md", block).expect_err(block).to_string();
            assert!(err.contains(expected.trim()), "{err}\nexpected {expected}");
        } else if block
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("# fragment"))
        {
            continue;
        } else {
            parse("README.md", block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        }
    }
    assert!(blocks >= 5, "README has {blocks} yaml blocks");
}

/// Every scenario file in the library parses.
#[test]
fn library_scenarios_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut stack = vec![root];
    let mut count = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
    }
    assert!(count >= 1, "no scenario files found");
}
