//! Issue 14, defect 2: user-a with `readwrite user-a/#` and `deny user-a/secret` received
//! `user-a/secret` live and retained through `user-a/#` and `user-a/+`: the broker never
//! called the ACL's read check on delivery. Every delivery path is checked here over real TCP
//! against `simqtt broker`: live, retained at SUBSCRIBE, queued for an offline session, wills,
//! in-flight messages resent after a restart under a stricter ACL, and a session taken over by
//! another user under `session_takeover = "any-user"`.

mod broker_support;

use std::path::Path;
use std::time::Duration;

use broker_support::{connect_packet, qos, write_file, ChildBroker, RawClient, Received, WAIT};
use simqtt::codec::{Packet, ProtocolVersion, QosPid, TopicName, Will};

const ALICE: Option<(&str, &str)> = Some(("user-a", "pa"));
const BOB: Option<(&str, &str)> = Some(("user-b", "pb"));
const WRITER: Option<(&str, &str)> = Some(("writer", "pw"));

const ACL: &str = "\
user user-a
topic readwrite user-a/#
topic deny user-a/secret
user user-b
topic readwrite user-b/#
topic readwrite user-a/#
topic deny user-a/#
user writer
topic write #
";

/// Long enough for any delivery on loopback; what has not come by then is not coming.
const SETTLE: Duration = Duration::from_millis(700);

fn broker(dir: &Path, acl: &str, extra: &str) -> ChildBroker {
    let passwd = dir.join("passwd");
    if !passwd.exists() {
        for (i, (user, password)) in [("user-a", "pa"), ("user-b", "pb"), ("writer", "pw")]
            .iter()
            .enumerate()
        {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_simqtt"));
            // Few iterations: this test is about the ACL, not the work factor.
            cmd.args(["passwd", "-b", "-I", "1000"]);
            if i == 0 {
                cmd.arg("-c");
            }
            assert!(cmd
                .arg(&passwd)
                .args([user, password])
                .status()
                .unwrap()
                .success());
        }
    }
    let acl = write_file(dir, "acl", acl);
    let config = write_file(
        dir,
        "broker.toml",
        &format!(
            "allow_anonymous = false\npassword_file = {:?}\nacl_file = {acl:?}\n{extra}",
            passwd.display().to_string()
        ),
    );
    let data = dir.join("data").display().to_string();
    ChildBroker::start(&["--config", &config, "--data-dir", &data])
}

/// Publishes `(topic, retain)` pairs at QoS 1 as `writer`, each acknowledged.
fn publish_all(port: u16, messages: &[(&str, bool)]) {
    let mut w = RawClient::connect(port, ProtocolVersion::V311, "writer", true, WRITER);
    for (i, (topic, retain)) in messages.iter().enumerate() {
        w.publish(topic, qos(1), i as u16 + 1, *retain, topic.as_bytes());
        assert!(
            matches!(w.recv(WAIT), Received::Packet(Packet::PubAck(_))),
            "PUBACK for {topic}"
        );
    }
    w.disconnect();
}

fn topics(got: &[(String, Vec<u8>)]) -> Vec<&str> {
    let mut t: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    t.sort();
    t
}

#[test]
fn deny_holds_live_retained_queued_and_for_wills() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), ACL, "");
    let port = broker.port;

    // Retained first: the SUBSCRIBE below must not bring the denied one.
    publish_all(port, &[("user-a/secret", true), ("user-a/open", true)]);
    let mut a = RawClient::connect(port, ProtocolVersion::V5, "a", false, ALICE);
    assert_eq!(
        a.subscribe_codes(1, &[("user-a/#", qos(1)), ("user-a/+", qos(0))]),
        [0x01, 0x00]
    );
    assert_eq!(
        topics(&a.collect_publishes(SETTLE)),
        ["user-a/open", "user-a/open"],
        "retained: one per matching subscription, none denied"
    );

    // Live, through both wildcards.
    publish_all(port, &[("user-a/secret", false), ("user-a/live", false)]);
    assert_eq!(
        topics(&a.collect_publishes(SETTLE)),
        ["user-a/live"],
        "live"
    );

    // A will on the denied topic (from a client allowed to write it) is not delivered; one on
    // an allowed topic is.
    for (cid, topic) in [("w1", "user-a/secret"), ("w2", "user-a/will")] {
        let mut connect = connect_packet(ProtocolVersion::V311, cid, true, WRITER);
        connect.will = Some(Will {
            topic: TopicName::new(topic).unwrap(),
            payload: bytes::Bytes::from_static(b"will"),
            qos: qos(1),
            retain: false,
            properties: Default::default(),
        });
        let (w, connack) = RawClient::connect_with(port, connect);
        assert!(!connack.reason_code.is_error());
        drop(w); // Closed without DISCONNECT: the will goes out.
    }
    assert_eq!(
        topics(&a.collect_publishes(SETTLE)),
        ["user-a/will"],
        "wills"
    );

    // Queued for the offline session.
    a.disconnect();
    publish_all(port, &[("user-a/secret", false), ("user-a/queued", false)]);
    let (mut a, connack) =
        RawClient::connect_with(port, connect_packet(ProtocolVersion::V5, "a", false, ALICE));
    assert!(connack.session_present);
    assert_eq!(
        topics(&a.collect_publishes(SETTLE)),
        ["user-a/queued"],
        "queued"
    );
    a.disconnect();
}

#[test]
fn in_flight_and_queued_messages_are_checked_again_when_they_leave() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), ACL, "");
    let port = broker.port;
    // user-a receives `user-a/x` at QoS 1 and never acknowledges it (it stays in flight), and
    // `user-a/y` is queued while it is away.
    let mut a = RawClient::connect(port, ProtocolVersion::V311, "a", false, ALICE);
    assert_eq!(a.subscribe_codes(1, &[("user-a/#", qos(1))]), [0x01]);
    publish_all(port, &[("user-a/x", false)]);
    match a.recv(WAIT) {
        Received::Packet(Packet::Publish(p)) => {
            assert_eq!(&*p.topic, "user-a/x");
            assert!(matches!(p.qos_pid, QosPid::AtLeastOnce(_)));
        }
        other => panic!("expected user-a/x, got {other:?}"),
    }
    a.disconnect();
    publish_all(port, &[("user-a/y", false), ("user-a/z", false)]);
    broker.kill();

    // Restarted with an ACL that now denies user-a/x and user-a/y: neither the resent
    // in-flight message nor the queued one reaches user-a; user-a/z still does.
    let stricter = format!("{ACL}user user-a\ntopic deny user-a/x\ntopic deny user-a/y\n");
    let broker = self::broker(dir.path(), &stricter, "");
    let (mut a, connack) = RawClient::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "a", false, ALICE),
    );
    assert!(connack.session_present);
    assert_eq!(topics(&a.collect_publishes(SETTLE)), ["user-a/z"]);
}

#[test]
fn a_session_taken_over_by_another_user_gets_that_users_acl() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), ACL, "session_takeover = \"any-user\"\n");
    let port = broker.port;
    let mut a = RawClient::connect(port, ProtocolVersion::V311, "shared", false, ALICE);
    assert_eq!(a.subscribe_codes(1, &[("user-a/#", qos(1))]), [0x01]);
    a.disconnect();
    publish_all(port, &[("user-a/private", false)]);
    // user-b may take the session over under this policy, but its ACL denies user-a/#: the
    // queued message is not handed to it.
    let (mut b, connack) = RawClient::connect_with(
        port,
        connect_packet(ProtocolVersion::V311, "shared", false, BOB),
    );
    assert!(connack.session_present);
    assert_eq!(b.collect_publishes(SETTLE), []);
}
