//! Issue 14, defect 3: user-b, with its own valid password, connected with user-a's client id
//! and clean session 0, got CONNACK 0 and user-a's queued message, and user-a was disconnected.
//! A client id's session belongs to the user who created it (`session_takeover =
//! "same-user"`, the default): another user's CONNECT is refused (3.1.1 0x05, 5.0 0x87),
//! whether it would resume the session, take over its connection or discard it with a clean
//! start, and the owner survives a restart. Over real TCP against `simqtt broker`.

mod broker_support;

use std::time::Duration;

use broker_support::{connect_packet, qos, write_file, ChildBroker, RawClient, Received, WAIT};
use simqtt::codec::{Packet, ProtocolVersion, ReasonCode};

const ALICE: Option<(&str, &str)> = Some(("user-a", "pa"));
const BOB: Option<(&str, &str)> = Some(("user-b", "pb"));

/// A broker with users user-a and user-b (few hash iterations: this is not about the work
/// factor), each allowed its own topics, anonymous clients allowed on `public/#`.
fn broker(dir: &std::path::Path, extra: &str, data_dir: bool) -> ChildBroker {
    let passwd = dir.join("passwd");
    if !passwd.exists() {
        for (i, (user, password)) in [("user-a", "pa"), ("user-b", "pb")].iter().enumerate() {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_simqtt"));
            cmd.args(["passwd", "-b", "-I", "1000"]);
            if i == 0 {
                cmd.arg("-c");
            }
            let status = cmd.arg(&passwd).args([user, password]).status().unwrap();
            assert!(status.success());
        }
    }
    let acl = write_file(
        dir,
        "acl",
        "topic readwrite public/#\nuser user-a\ntopic readwrite user-a/#\nuser user-b\ntopic readwrite user-b/#\n",
    );
    let config = write_file(
        dir,
        "broker.toml",
        &format!(
            "password_file = {:?}\nacl_file = {acl:?}\n{extra}",
            passwd.display().to_string()
        ),
    );
    let data = dir.join("data").display().to_string();
    let mut args = vec!["--config".to_string(), config];
    if data_dir {
        args.extend(["--data-dir".to_string(), data]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChildBroker::start(&args)
}

/// CONNECT with `user` and client id `cid`; the CONNACK's reason code.
fn connect_as(
    port: u16,
    version: ProtocolVersion,
    cid: &str,
    clean: bool,
    user: Option<(&str, &str)>,
) -> (RawClient, ReasonCode) {
    let (client, connack) =
        RawClient::connect_with(port, connect_packet(version, cid, clean, user));
    (client, connack.reason_code)
}

#[test]
fn another_user_cannot_resume_take_over_or_discard_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), "", true);
    let port = broker.port;

    // user-a's persistent session with a queued QoS 1 message.
    let mut a = RawClient::connect(port, ProtocolVersion::V311, "shared", false, ALICE);
    assert_eq!(a.subscribe_codes(1, &[("user-a/#", qos(1))]), [0x01]);
    a.disconnect();
    let mut p = RawClient::connect(port, ProtocolVersion::V311, "a-pub", true, ALICE);
    p.publish("user-a/inbox", qos(1), 1, false, b"for user-a");
    assert!(matches!(p.recv(WAIT), Received::Packet(Packet::PubAck(_))));
    p.disconnect();

    // user-b, correct password, user-a's client id: refused in both versions, resume or clean
    // start, and no PUBLISH reaches it.
    for (version, clean, code) in [
        (ProtocolVersion::V311, false, ReasonCode::NotAuthorized),
        (ProtocolVersion::V311, true, ReasonCode::NotAuthorized),
        (ProtocolVersion::V5, false, ReasonCode::NotAuthorized),
        (ProtocolVersion::V5, true, ReasonCode::NotAuthorized),
    ] {
        let (mut b, got) = connect_as(port, version, "shared", clean, BOB);
        assert_eq!(got, code, "{version:?} clean {clean}");
        let after = b.expect_closed(WAIT);
        assert!(
            after.iter().all(|p| !matches!(p, Packet::Publish(_))),
            "user-b got {after:?}"
        );
    }
    // Nor an anonymous client.
    let (mut anon, got) = connect_as(port, ProtocolVersion::V311, "shared", false, None);
    assert_eq!(got, ReasonCode::NotAuthorized);
    anon.expect_closed(WAIT);

    // The session is intact after a restart too (the owner is stored): user-a resumes it,
    // gets its message, and user-b still cannot take the live connection over.
    broker.kill();
    let broker = self::broker(dir.path(), "", true);
    let port = broker.port;
    let (mut b, got) = connect_as(port, ProtocolVersion::V311, "shared", false, BOB);
    assert_eq!(got, ReasonCode::NotAuthorized, "after a restart");
    b.expect_closed(WAIT);
    let (mut a, connack) = RawClient::connect_with(
        port,
        connect_packet(ProtocolVersion::V311, "shared", false, ALICE),
    );
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert!(
        connack.session_present,
        "user-a's session survived user-b's attempts"
    );
    let got = a.collect_publishes(Duration::from_millis(1000));
    assert_eq!(got, [("user-a/inbox".to_string(), b"for user-a".to_vec())]);
    let (mut b, got) = connect_as(port, ProtocolVersion::V5, "shared", false, BOB);
    assert_eq!(
        got,
        ReasonCode::NotAuthorized,
        "no takeover of a live session"
    );
    b.expect_closed(WAIT);
    assert!(a.ping(), "user-a's connection was not taken over");

    // user-a itself may take over its own session.
    let (mut a2, connack) = RawClient::connect_with(
        port,
        connect_packet(ProtocolVersion::V311, "shared", false, ALICE),
    );
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert!(connack.session_present);
    a.expect_closed(WAIT);
    assert!(a2.ping());
}

#[test]
fn anonymous_sessions_belong_to_anonymous_clients_and_any_user_is_the_old_rule() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), "", false);
    let mut anon = RawClient::connect(broker.port, ProtocolVersion::V311, "anon-1", false, None);
    assert_eq!(anon.subscribe_codes(1, &[("public/#", qos(1))]), [0x01]);
    anon.disconnect();
    // A user cannot take an anonymous client's session...
    let (mut a, got) = connect_as(broker.port, ProtocolVersion::V311, "anon-1", false, ALICE);
    assert_eq!(got, ReasonCode::NotAuthorized);
    a.expect_closed(WAIT);
    // ...another anonymous client can (anonymous clients cannot be told apart).
    let (_anon, connack) = RawClient::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "anon-1", false, None),
    );
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert!(connack.session_present);
    drop(broker);

    // `session_takeover = "any-user"`: mosquitto's rule, where user-b may take over.
    let dir = tempfile::tempdir().unwrap();
    let broker = self::broker(dir.path(), "session_takeover = \"any-user\"\n", false);
    let mut a = RawClient::connect(broker.port, ProtocolVersion::V311, "shared", false, ALICE);
    assert!(a.ping());
    let (_b, connack) = RawClient::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "shared", false, BOB),
    );
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert!(connack.session_present);
    a.expect_closed(WAIT);
}
