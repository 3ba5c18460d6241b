//! Every field of the format, each refusal with its location, and the README's examples.

use super::*;
use crate::codec::QoS;

const EXPLICIT: &str = r#"
name: every-field
description: Uses every explicit field once.
spec: [MQTT-3.1.2-4, MQTT-4.3.2-1]
requires: [broker_restart, power_loss, persistence, mqtt5, kick, retain, wildcards, will, qos1, qos2, connection_faults, link_faults, acl]
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
    user: acl
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
  - publish: {client: pub, topic: a/b, retain: true, empty: true, await: accepted}
  - publish: {client: pub, topic: a/c, qos: 2, await: ack}
  - disconnect: {client: sub, with_will: true}
  - disconnect: pub
  - crash_broker: {power_loss: true}
  - restart_broker:
  - crash_broker:
  - restart_broker:
  - connect: sub
  - crash_client: sub
  - restart_client: {client: sub}
  - connect: pub
  - partition: {a: sub, b: mqtt, one_way: true}
  - partition: {a: clients}
  - heal: {a: sub, b: mqtt}
  - heal:
  - loss: {a: clients, rate: 0.25}
  - latency: {a: sub, latency: 20ms, jitter: 5ms}
  - stall: {client: sub}
  - reset: sub
  - delay: {client: sub, by: 50ms}
  - drop_packet: {client: sub, packet: puback, direction: inbound}
  - duplicate_packet: {client: pub, packet: publish}
  - kick: pub
  - wait: 2m
  - connect: watcher
  - expect_messages:
      client: sub
      within: 5s
      messages:
        - {id: pub-1, qos: 1, retain: false}
        - {from: pub, topic: a/b, count: 9}
      spec: MQTT-4.3.2-1
  - expect_no_message: {client: watcher, topic: a/#, for: 500ms, since_start: true, spec: MQTT-3.1.2-4}
  - expect_session_present: {client: sub, present: true, spec: MQTT-3.1.2-4}
  - expect_will: {of: sub, to: watcher, delivered: false, within: 10s, retain: true, note: permitted}
  - expect_messages: {client: sub, within: 1s, again: true, messages: [{id: pub-1}], spec: MQTT-4.3.2-1}
"#;

#[test]
fn every_explicit_field_parses() {
    let s = parse("x.yaml", EXPLICIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "every-field");
    assert_eq!(s.description, "Uses every explicit field once.");
    assert_eq!(s.spec, vec!["MQTT-3.1.2-4", "MQTT-4.3.2-1"]);
    assert_eq!(s.requires.len(), 13);
    assert_eq!(s.requires[12], Capability::Acl);
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
            max_keepalive: None,
            topic_alias_maximum: None,
            transport: Transport::Mqtt,
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
    assert_eq!(sub.user, Some(ClientUser::Acl));
    assert_eq!(s.host_of("sub").as_deref(), Some("clients"));
    // Defaults.
    let watcher = &s.clients["watcher"];
    assert_eq!(watcher, &ClientSpec::default());
    assert!(watcher.clean_session && watcher.reconnect && !watcher.resubscribe);
    assert_eq!(watcher.keepalive, Dur::from_secs(30));
    assert_eq!(watcher.protocol, ProtocolVersion::V311);
    assert_eq!(s.host_of("watcher").as_deref(), Some("watcher"));

    let st = &s.steps;
    assert_eq!(st.len(), 38);
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
    assert_eq!(p.await_, PublishAwait::Accepted);
    let Step::Publish(p) = &st[8] else { panic!() };
    assert_eq!((p.qos, p.await_), (QoS::ExactlyOnce, PublishAwait::Ack));
    assert_eq!(
        st[9],
        Step::Disconnect(DisconnectStep {
            client: "sub".into(),
            with_will: true
        })
    );
    assert_eq!(
        st[10],
        Step::Disconnect(DisconnectStep {
            client: "pub".into(),
            with_will: false
        })
    );
    assert_eq!(
        st[11],
        Step::CrashBroker(CrashBrokerStep { power_loss: true })
    );
    assert_eq!(
        st[13],
        Step::CrashBroker(CrashBrokerStep { power_loss: false })
    );
    assert_eq!(st[14], Step::RestartBroker(RestartBrokerStep {}));
    assert_eq!(
        st[16],
        Step::CrashClient(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[17],
        Step::RestartClient(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[19],
        Step::Partition(PartitionStep {
            a: "sub".into(),
            b: "mqtt".into(),
            one_way: true
        })
    );
    let Step::Partition(p) = &st[20] else {
        panic!()
    };
    assert_eq!(
        (p.b.as_str(), p.one_way),
        ("broker", false),
        "default b is `broker`"
    );
    assert_eq!(
        st[21],
        Step::Heal(HealStep {
            a: Some("sub".into()),
            b: Some("mqtt".into())
        })
    );
    assert_eq!(st[22], Step::Heal(HealStep::default()));
    let Step::Loss(l) = &st[23] else { panic!() };
    assert_eq!((l.a.as_str(), l.rate), ("clients", 0.25));
    assert_eq!(
        st[24],
        Step::Latency(LatencyStep {
            a: "sub".into(),
            b: "broker".into(),
            latency: Dur::from_millis(20),
            jitter: Dur::from_millis(5)
        })
    );
    assert_eq!(
        st[26],
        Step::Reset(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[25],
        Step::Stall(ClientStep {
            client: "sub".into()
        })
    );
    assert_eq!(
        st[27],
        Step::Delay(DelayStep {
            client: "sub".into(),
            by: Dur::from_millis(50)
        })
    );
    assert_eq!(
        st[28],
        Step::DropPacket(PacketStep {
            client: "sub".into(),
            packet: PacketKind::Puback,
            direction: Direction::Inbound
        })
    );
    assert_eq!(
        st[29],
        Step::DuplicatePacket(PacketStep {
            client: "pub".into(),
            packet: PacketKind::Publish,
            direction: Direction::Outbound
        })
    );
    assert_eq!(
        st[30],
        Step::Kick(ClientStep {
            client: "pub".into()
        })
    );
    assert_eq!(st[31], Step::Wait(Dur::from_secs(120)));
    let Step::ExpectMessages(x) = &st[33] else {
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
    assert_eq!(x.spec.as_deref(), Some("MQTT-4.3.2-1"));
    assert!(!x.again);
    assert_eq!(
        st[34],
        Step::ExpectNoMessage(ExpectNoMessageStep {
            client: "watcher".into(),
            topic: Some("a/#".into()),
            duration: Dur::from_millis(500),
            spec: Some("MQTT-3.1.2-4".into()),
            note: None,
            since_start: true,
        })
    );
    assert_eq!(
        st[35],
        Step::ExpectSessionPresent(ExpectSessionPresentStep {
            client: "sub".into(),
            present: true,
            spec: Some("MQTT-3.1.2-4".into()),
            note: None,
        })
    );
    assert_eq!(
        st[36],
        Step::ExpectWill(ExpectWillStep {
            of: "sub".into(),
            to: "watcher".into(),
            delivered: false,
            within: Dur::from_secs(10),
            retain: Some(true),
            spec: None,
            note: Some("permitted".into()),
        })
    );
    assert_eq!(st[36].keyword(), "expect_will");
    let Step::ExpectMessages(x) = &st[37] else {
        panic!()
    };
    assert!(x.again);
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
    assert!(e.message.contains("unknown step `conect`"), "{e}");
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

/// Every error of a scenario text, as `line:col message` lines.
fn errors_of(src: &str) -> Vec<String> {
    match parse("f.yaml", src) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.iter()
                .map(|e| format!("{}:{} {}", e.line, e.col, e.message))
                .collect()
        }
    }
}

#[test]
fn steps_on_clients_that_cannot_be_connected_are_refused_where_the_schedule_shows_it() {
    // Never connected.
    let e = errors_of("clients: {pub: {}}\nsteps:\n  - publish: {client: pub, topic: a, qos: 1}\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            "3:23 step 1 (publish) needs \"pub\" connected, but it was never connected"
        ),
        "{e:?}"
    );
    // After its disconnect, and after its crash (without a new connect).
    let e = errors_of(
        "clients: {c: {}}\nsteps:\n  - connect: c\n  - disconnect: c\n  - subscribe: {client: c, filter: a}\n  - connect: c\n  - crash_client: c\n  - kick: c\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("5:25 step 3 (subscribe)") && e[0].contains("disconnected at step 2"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("8:11 step 6 (kick)") && e[1].contains("crashed at step 5"),
        "{e:?}"
    );
    // A fault ended the connection of a client that does not reconnect.
    let e = errors_of(
        "clients: {c: {reconnect: false}}\nsteps:\n  - connect: c\n  - reset: c\n  - publish: {client: c, topic: a}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("its connection ended at step 2 (reset) and it does not reconnect"),
        "{e:?}"
    );
    // A takeover by a client with the same id ends one that does not reconnect.
    let e = errors_of(
        "clients:\n  a: {client_id: x, reconnect: false}\n  b: {client_id: x}\nsteps:\n  - connect: a\n  - connect: b\n  - publish: {client: a, topic: t}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("connection ended at step 2 (connect)"),
        "{e:?}"
    );
    // restart_client needs a crash; restart_broker a crashed broker; crash_broker an up one.
    let e = errors_of(
        "clients: {c: {}}\nsteps:\n  - connect: c\n  - restart_client: c\n  - restart_broker:\n  - crash_broker:\n  - crash_broker:\n",
    );
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].contains("did not crash"), "{e:?}");
    assert!(e[1].contains("the broker is up"), "{e:?}");
    assert!(e[2].contains("already down since step 4"), "{e:?}");
    // Raw clients are never connected: their raw connection is what a fault acts on.
    assert_eq!(
        errors_of("clients: {r: {}}\nsteps:\n  - raw: {client: r, send: connect}\n  - reset: r\n"),
        Vec::<String>::new()
    );
    let e = errors_of("clients: {r: {}}\nsteps:\n  - stall: r\n");
    assert!(e[0].contains("no raw connection open"), "{e:?}");
}

#[test]
fn publish_await_is_accepted_or_ack_and_ack_needs_qos_1_or_2() {
    let s = parse(
        "f.yaml",
        "clients: {p: {}}\nsteps:\n  - connect: p\n  - publish: {client: p, topic: a, qos: 1, await: ack}\n  - publish: {client: p, topic: a}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let awaits: Vec<PublishAwait> = s
        .steps
        .iter()
        .filter_map(|x| match x {
            Step::Publish(p) => Some(p.await_),
            _ => None,
        })
        .collect();
    assert_eq!(awaits, [PublishAwait::Ack, PublishAwait::Accepted]);
    let e = errors_of(
        "clients: {p: {}}\nsteps:\n  - connect: p\n  - publish: {client: p, topic: a, await: ack}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("await: ack needs qos 1 or 2"), "{e:?}");
    let e = errors_of(
        "clients: {p: {}}\nsteps:\n  - connect: p\n  - publish: {client: p, topic: a, await: puback}\n",
    );
    assert!(e[0].contains("accepted") && e[0].contains("ack"), "{e:?}");
}

#[test]
fn duplicate_packet_is_refused_in_a_qos0_workload() {
    let e = errors_of(
        "workload: {publishers: 1, subscribers: 1, qos: [0], rate: 1/s, duration: 1s}\nnemesis: {faults: [reset, duplicate_packet], interval: 1s}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("duplicate_packet meets nothing in a QoS 0 workload"),
        "{e:?}"
    );
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
  - connect: pub
  - publish: {client: pub, topic: a}
  - expect_messages: {client: sub, within: 1s, messages: [{from: ghost}]}
";
    let errors = parse("f.yaml", src).unwrap_err().0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].col), (7, 15));
    assert!(errors[0].message.contains("\"sbu\""));
    assert!(errors[0].message.contains("defined: pub, sub"));
    assert_eq!(errors[1].line, 11);
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
        // Citations: an expectation of a scenario naming several statements names its own.
        (
            "spec: [MQTT-3.1.2-4, MQTT-3.2.2-2]\nclients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: true}\n",
            "say which one this step tests",
            5,
        ),
        (
            "spec: [MQTT-3.1.2-4]\nclients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: true, spec: MQTT-3.2.2-2}\n",
            "does not list",
            5,
        ),
        (
            "spec: [MQTT-3.2.2-2]\nclients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: true, spec: MQTT-3.2.2-2, note: why}\n",
            "not both",
            5,
        ),
        (
            "clients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: true, note: ' '}\n",
            "says why",
            4,
        ),
        (
            "clients: {a: {}, b: {}}\nsteps:\n  - connect: a\n  - expect_messages: {client: a, within: 1s, again: true, messages: [{from: b}]}\n",
            "needs an earlier expect_messages",
            4,
        ),
        (
            "clients: {r: {host: raw}}\nsteps:\n  - raw: {client: r, send: connect}\n  - expect_raw: {client: r, packet: connack, again: true}\n",
            "same packet type",
            4,
        ),
        (
            "clients: {r: {host: raw}}\nsteps:\n  - raw: {client: r, send: connect}\n  - expect_raw: {client: r, packet: connack}\n  - expect_raw: {client: r, packet: connack, again: true, closed: true}\n",
            "leave out `closed`",
            5,
        ),
        (
            "spec: [MQTT-3.1.4-5]\nclients: {r: {host: raw, protocol: v5}}\nsteps:\n  - raw: {client: r, send: connect}\n  - expect_raw: {client: r, packet: connack, assume: true, spec: MQTT-3.1.4-5}\n",
            "no obligation",
            5,
        ),
        (
            "clients: {r: {host: raw, protocol: v5}}\nsteps:\n  - raw: {client: r, send: connect}\n  - expect_raw: {client: r, packet: suback, server_keep_alive: {min: 2s}}\n",
            "goes with packet: connack",
            4,
        ),
        (
            "clients: {r: {host: raw, protocol: v5}}\nsteps:\n  - raw: {client: r, send: connect}\n  - expect_raw: {client: r, packet: connack, server_keep_alive: {min: 3s, max: 2s}}\n",
            "above `max`",
            4,
        ),
        (
            "clients: {r: {host: raw}}\nsteps:\n  - raw: {client: r, send: connect}\n  - expect_raw: {client: r, packet: connack, optional: true, closed: false}\n",
            "`optional` goes with",
            4,
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

#[test]
fn each_step_resolves_to_one_statement_or_none() {
    use cite::{Citation, Source};
    let s = parse(
        "c.yaml",
        "
spec: [MQTT-3.1.2-4, MQTT-3.2.2-2]
clients: {a: {clean_session: false}, r: {host: raw, protocol: v5}, b: {}}
steps:
  - connect: a
  - subscribe: {client: a, filter: t, qos: 1}
  - unsubscribe: {client: a, filter: t}
  - expect_session_present: {client: a, present: true, spec: MQTT-3.2.2-2}
  - expect_no_message: {client: a, for: 1s, note: the spec allows either}
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x00}
  - expect_raw: {client: r, packet: connack, again: true, server_keep_alive: {min: 2s}, assume: true}
  - raw: {client: r, send: pingreq}
  - expect_raw: {client: r, packet: pingresp}
  - wait: 1s
",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cite = |i: usize| s.citation(i);
    assert_eq!(
        cite(0),
        Citation::Statement("MQTT-3.1.4-4".into(), Source::Inherent)
    );
    assert_eq!(
        cite(1),
        Citation::Statement("MQTT-3.8.4-1".into(), Source::Inherent)
    );
    assert_eq!(
        cite(2),
        Citation::Statement("MQTT-3.10.4-4".into(), Source::Inherent)
    );
    assert_eq!(
        cite(3),
        Citation::Statement("MQTT-3.2.2-2".into(), Source::Own)
    );
    assert_eq!(cite(4), Citation::Note("the spec allows either".into()));
    assert_eq!(cite(5), Citation::None);
    // The 5.0 client's CONNECT: the 5.0 statement.
    assert_eq!(
        cite(6),
        Citation::Statement("MQTT-3.1.4-5".into(), Source::Inherent)
    );
    // A premise is no obligation.
    assert_eq!(cite(7), Citation::None);
    assert_eq!(
        cite(9),
        Citation::Statement("MQTT-3.12.4-1".into(), Source::Inherent)
    );
    assert_eq!(cite(10), Citation::None);
    assert_eq!(s.step_statement(3).as_deref(), Some("MQTT-3.2.2-2"));
    // A scenario naming one statement: every other expectation cites it.
    let one = parse(
        "o.yaml",
        "spec: [MQTT-3.2.2-2]\nclients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: true}\n",
    )
    .unwrap();
    assert_eq!(
        one.citation(1),
        Citation::Statement("MQTT-3.2.2-2".into(), Source::Sole)
    );
    // None named: no statement (certify grades it MUST and says so).
    let none = parse(
        "n.yaml",
        "clients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: true}\n",
    )
    .unwrap();
    assert_eq!(none.citation(1), Citation::None);
}

#[test]
fn expectations_on_a_client_that_never_connected_are_refused() {
    // Decided without the broker doing anything: no will exists, no message can arrive.
    for (step, who) in [
        (
            "expect_will: {of: dev, to: mon, delivered: true, within: 1s}",
            "\"mon\"",
        ),
        (
            "expect_messages: {client: mon, within: 1s, messages: [{id: dev-1}]}",
            "\"mon\"",
        ),
        ("expect_no_message: {client: mon, for: 1s}", "\"mon\""),
    ] {
        let e = error(&format!(
            "clients:\n  dev: {{will: {{topic: w}}}}\n  mon: {{}}\nsteps:\n  - connect: dev\n  - {step}\n"
        ));
        let text = e.to_string();
        assert!(
            text.contains("never connected") && text.contains(who),
            "{step}: {text}"
        );
    }
    // Once connected, the same steps are accepted.
    parse(
        "ok.yaml",
        "clients:\n  dev: {will: {topic: w}}\n  mon: {}\nsteps:\n  - connect: mon\n  - connect: dev\n  - expect_will: {of: dev, to: mon, delivered: false, within: 1s}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
