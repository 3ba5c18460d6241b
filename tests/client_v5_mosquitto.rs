//! The client's MQTT 5.0 features against mosquitto 2.0 and its own clients: every publish
//! property set with `simqtt pub -D` as mosquitto_sub prints it (and the reverse), request/
//! response with mosquitto_rr on one side and `simqtt pub -e` on the other, and topic
//! aliases the client sends within mosquitto's Topic Alias Maximum, dropped across a
//! reconnect.
//!
//! mosquitto and mosquitto-clients must be installed: the tests fail, never skip, without them.

mod client_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client_support::{options, FaultConnector, Mosquitto};
use simqtt::client::{Client, EventKind, MemoryPersistence};
use simqtt::codec::{Packet, ProtocolVersion, PublishProperties, QoS};

const SIMQTT: &str = env!("CARGO_BIN_EXE_simqtt");

/// -F of mosquitto_sub and simqtt sub: topic, payload and every property but the expiry
/// (which a broker lowers by the time a message waited [MQTT-3.3.2-6]).
const FORMAT: &str = "%t %p | P=%P C=%C F=%F R=%R D=%D";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// -D publish … for every publish property, as both mosquitto_pub and simqtt pub take them.
const PROPERTY_ARGS: &[&str] = &[
    "-D",
    "publish",
    "user-property",
    "k",
    "v1",
    "-D",
    "publish",
    "message-expiry-interval",
    "3600",
    "-D",
    "publish",
    "user-property",
    "k",
    "v2",
    "-D",
    "publish",
    "content-type",
    "text/plain",
    "-D",
    "publish",
    "payload-format-indicator",
    "1",
    "-D",
    "publish",
    "response-topic",
    "reply/here",
    "-D",
    "publish",
    "correlation-data",
    "corr-7",
];

const EXPECTED: &str = "props/t hello | P=k:v1 k:v2 C=text/plain F=1 R=reply/here D=corr-7\n";

/// Retained, so the subscriber that comes after gets it without a race.
fn publish_retained(program: &str, port: &str, extra: &[&str]) {
    let mut args = if program == SIMQTT {
        vec!["pub"]
    } else {
        vec![]
    };
    args.extend([
        "-p", port, "-V", "5", "-t", "props/t", "-m", "hello", "-q", "1", "-r",
    ]);
    args.extend_from_slice(PROPERTY_ARGS);
    args.extend_from_slice(extra);
    let out = run(program, &args);
    assert!(out.status.success(), "{program}: {out:?}");
}

fn subscribe_one(program: &str, port: &str) -> String {
    let mut args = if program == SIMQTT {
        vec!["sub"]
    } else {
        vec![]
    };
    args.extend([
        "-p", port, "-V", "5", "-t", "props/t", "-C", "1", "-W", "10", "-F", FORMAT,
    ]);
    let out = run(program, &args);
    assert!(out.status.success(), "{program}: {out:?}");
    stdout(&out)
}

#[test]
fn properties_set_with_simqtt_pub_d_reach_mosquitto_sub() {
    let broker = Mosquitto::start(false);
    let port = broker.port.to_string();
    publish_retained(SIMQTT, &port, &[]);
    assert_eq!(subscribe_one("mosquitto_sub", &port), EXPECTED);
    let expiry = run(
        "mosquitto_sub",
        &[
            "-p", &port, "-V", "5", "-t", "props/t", "-C", "1", "-W", "10", "-F", "%E",
        ],
    );
    let left: u32 = stdout(&expiry).trim().parse().expect("an expiry interval");
    assert!((3590..=3600).contains(&left), "{left}");
}

#[test]
fn properties_set_with_mosquitto_pub_d_are_printed_by_simqtt_sub() {
    let broker = Mosquitto::start(false);
    let port = broker.port.to_string();
    publish_retained("mosquitto_pub", &port, &[]);
    assert_eq!(subscribe_one(SIMQTT, &port), EXPECTED);
}

/// mosquitto_rr sends the request (response topic and its -D correlation data); a simqtt
/// client answers on the response topic with the correlation data it got; mosquitto_rr
/// prints the answer.
#[test]
fn mosquitto_rr_gets_its_answer_from_a_simqtt_responder() {
    let broker = Mosquitto::start(false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut o = options(&broker.addr(), "responder", true);
    o.protocol = ProtocolVersion::V5;
    o.keep_alive_secs = 10;
    // The receiver is awaited after mosquitto_rr has run, not inside this block.
    #[allow(clippy::async_yields_async)]
    let seen = runtime.block_on(async {
        let (responder, mut events, _) = Client::connect(
            o,
            Arc::new(simqtt::transport::tcp::TcpConnector),
            Box::new(MemoryPersistence::new()),
        )
        .await
        .unwrap();
        responder
            .subscribe(&[("svc/time", QoS::AtLeastOnce)])
            .await
            .unwrap();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let EventKind::MessageArrived(m) = event.kind else {
                    continue;
                };
                let reply_to = m.properties.response_topic.clone().expect("response topic");
                let properties = PublishProperties {
                    correlation_data: m.properties.correlation_data.clone(),
                    ..Default::default()
                };
                responder
                    .publish_with(
                        reply_to.as_str(),
                        "noon",
                        QoS::AtLeastOnce,
                        false,
                        properties,
                    )
                    .await
                    .unwrap()
                    .wait()
                    .await
                    .unwrap();
                let _ = seen_tx.send(m);
                break;
            }
        });
        seen_rx
    });
    let out = run(
        "mosquitto_rr",
        &[
            "-p",
            &broker.port.to_string(),
            "-t",
            "svc/time",
            "-e",
            "rr/answer",
            "-m",
            "what time?",
            "-q",
            "1",
            "-W",
            "10",
            "-D",
            "publish",
            "correlation-data",
            "q-1",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "noon\n");
    let request = runtime.block_on(seen).unwrap();
    assert_eq!(&request.payload[..], b"what time?");
    assert_eq!(
        request.properties.response_topic.unwrap().as_str(),
        "rr/answer"
    );
    assert_eq!(
        request.properties.correlation_data,
        Some(Bytes::from_static(b"q-1"))
    );
}

/// `simqtt pub -e` as mosquitto_rr: mosquitto_sub sees its request (response topic and
/// correlation data), mosquitto_pub answers twice on the response topic, first with other
/// correlation data: simqtt prints only the answer that matches. With nobody answering, -W
/// ends it with "Timed out" and mosquitto_rr's exit code 27.
#[test]
fn simqtt_pub_e_waits_for_the_matching_response() {
    let broker = Mosquitto::start(false);
    let port = broker.port.to_string();
    let mut watcher = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-p",
            &port,
            "-V",
            "5",
            "-t",
            "svc/echo",
            "-C",
            "1",
            "-W",
            "20",
            "-F",
            "%p %R %D",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // mosquitto_sub subscribes right after it connects; give it that moment.
    std::thread::sleep(Duration::from_millis(500));
    let requester = Command::new(SIMQTT)
        .args([
            "pub",
            "-p",
            &port,
            "-V",
            "5",
            "-t",
            "svc/echo",
            "-m",
            "ping",
            "-q",
            "1",
            "-e",
            "echo/reply",
            "-W",
            "20",
            "-D",
            "publish",
            "correlation-data",
            "c42",
            "-v",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(watcher.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ping echo/reply c42\n");
    let _ = watcher.wait();
    for (payload, correlation) in [("decoy", "other"), ("pong", "c42")] {
        let out = run(
            "mosquitto_pub",
            &[
                "-p",
                &port,
                "-V",
                "5",
                "-t",
                "echo/reply",
                "-m",
                payload,
                "-q",
                "1",
                "-D",
                "publish",
                "correlation-data",
                correlation,
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let out = requester.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "echo/reply pong\n");

    let unanswered = run(
        SIMQTT,
        &[
            "pub",
            "-p",
            &port,
            "-V",
            "5",
            "-t",
            "nobody/home",
            "-m",
            "ping",
            "-e",
            "echo/none",
            "-W",
            "1",
        ],
    );
    assert_eq!(unanswered.status.code(), Some(27), "{unanswered:?}");
    assert_eq!(String::from_utf8_lossy(&unanswered.stderr), "Timed out\n");
}

/// mosquitto announces Topic Alias Maximum 10. With automatic aliases the client maps a
/// topic at its first publish and then sends the alias alone; after a connection is lost
/// with a message in flight, the resend on the new connection carries the full topic again
/// (mappings do not survive a connection [MQTT-3.3.2-7]); mosquitto would close a
/// connection that used an alias it never saw mapped, and the message would never complete.
#[test]
fn topic_aliases_to_mosquitto_are_dropped_across_a_reconnect() {
    let broker = Mosquitto::start(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut watch = options(&broker.addr(), "watch", true);
        watch.protocol = ProtocolVersion::V5;
        watch.keep_alive_secs = 10;
        let (watcher, mut watched, _) = Client::connect(
            watch,
            Arc::new(simqtt::transport::tcp::TcpConnector),
            Box::new(MemoryPersistence::new()),
        )
        .await
        .unwrap();
        watcher
            .subscribe(&[("al/#", QoS::AtLeastOnce)])
            .await
            .unwrap();

        let connector = FaultConnector::default();
        let mut o = options(&broker.addr(), "aliaser", false);
        o.protocol = ProtocolVersion::V5;
        o.outbound_topic_aliases = true;
        let (client, _events, _) = Client::connect(
            o,
            Arc::new(connector.clone()),
            Box::new(MemoryPersistence::new()),
        )
        .await
        .unwrap();
        for payload in ["m1", "m2"] {
            client
                .publish("al/a", payload, QoS::AtLeastOnce, false)
                .await
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
        // The next PUBLISH (alias only) goes nowhere; keepalive notices and reconnects.
        connector.last().drop_writes.store(true, Ordering::SeqCst);
        let m3 = client
            .publish("al/a", "m3", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), m3)
            .await
            .expect("m3 completes after the reconnect")
            .unwrap();

        let publishes = |index: usize| -> Vec<(String, Option<u16>, bool)> {
            connector
                .written(index, ProtocolVersion::V5)
                .into_iter()
                .filter_map(|p| match p {
                    Packet::Publish(p) => Some((
                        p.topic.as_str().to_string(),
                        p.properties.topic_alias.map(|a| a.get()),
                        p.dup,
                    )),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            publishes(0),
            vec![
                ("al/a".to_string(), Some(1), false),
                (String::new(), Some(1), false)
            ]
        );
        assert_eq!(
            publishes(1).first(),
            Some(&("al/a".to_string(), Some(1), true))
        );
        let mut got = Vec::new();
        while got.len() < 3 {
            let event = tokio::time::timeout(Duration::from_secs(10), watched.recv())
                .await
                .expect("three messages")
                .expect("watcher running");
            if let EventKind::MessageArrived(m) = event.kind {
                got.push(format!(
                    "{} {}",
                    m.topic,
                    String::from_utf8_lossy(&m.payload)
                ));
            }
        }
        assert_eq!(got, vec!["al/a m1", "al/a m2", "al/a m3"]);
    });
}

/// A shared subscription is a filter the client sends like any other: two `simqtt sub`
/// members of `$share/g/…` on mosquitto together get each of mosquitto_pub's messages once
/// (mosquitto gives each to one member [MQTT-4.8.2-…]); a non-shared watcher gets them all.
#[test]
fn simqtt_sub_members_of_a_shared_subscription_split_the_messages() {
    const MESSAGES: usize = 20;
    let broker = Mosquitto::start(false);
    let port = broker.port.to_string();
    let member = |extra: &[&str]| {
        let mut args = vec!["sub", "-p", &port, "-V", "5", "-q", "1", "-v", "-W", "5"];
        args.extend_from_slice(extra);
        Command::new(SIMQTT)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let members = [
        member(&["-t", "$share/g/sh/#"]),
        member(&["-t", "$share/g/sh/#"]),
    ];
    let watcher = member(&["-t", "sh/#"]);
    std::thread::sleep(Duration::from_millis(700));
    for i in 0..MESSAGES {
        let out = run(
            "mosquitto_pub",
            &["-p", &port, "-t", &format!("sh/{i}"), "-m", "x", "-q", "1"],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let lines = |child: std::process::Child| -> Vec<String> {
        let out = child.wait_with_output().unwrap();
        // -W ends each after 5 s with "Timed out" (exit 27): what they printed is the result.
        assert_eq!(out.status.code(), Some(27), "{out:?}");
        stdout(&out).lines().map(str::to_string).collect()
    };
    let mut shared: Vec<String> = members.into_iter().flat_map(lines).collect();
    shared.sort();
    let mut all = lines(watcher);
    all.sort();
    let mut expected: Vec<String> = (0..MESSAGES).map(|i| format!("sh/{i} x")).collect();
    expected.sort();
    assert_eq!(all, expected);
    assert_eq!(shared, expected);
}

/// `simqtt sub -E` exits 0 once its subscriptions are acknowledged (mosquitto_sub -E); without
/// it the same command waits for messages until -W ends it with exit 27.
#[test]
fn simqtt_sub_e_exits_after_the_suback() {
    let broker = Mosquitto::start(false);
    let port = broker.port.to_string();
    let args = [
        "sub", "-p", &port, "-V", "5", "-t", "a/b", "-t", "c/#", "-W", "3",
    ];
    let with_e = run(SIMQTT, &[&args[..], &["-E"]].concat());
    assert_eq!(with_e.status.code(), Some(0), "{with_e:?}");
    let without = run(SIMQTT, &args);
    assert_eq!(without.status.code(), Some(27), "{without:?}");
}
