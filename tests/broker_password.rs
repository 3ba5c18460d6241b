//! Issue 14, defect 9's consequence for the broker: at a modern work factor one password check
//! takes hundreds of milliseconds, and the broker did it on the task that serves every client,
//! so each CONNECT with a password stalled everyone. Connections now check their CONNECT's
//! password a slice at a time beside the core. Shown over real TCP against `simqtt broker`
//! by order, not by time: while one client's (deliberately slow) check runs, another client
//! connects and gets its PINGRESP before the first gets its CONNACK.

mod broker_support;

use broker_support::{connect_packet, write_file, ChildBroker, RawClient, Received, WAIT};
use simqtt::codec::{Packet, ProtocolVersion, ReasonCode};

#[test]
fn a_slow_password_check_holds_up_only_its_own_client() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    // 100,000 iterations: about a second in this unoptimised test build (the CONNECT timeout is
    // raised so a loaded machine cannot turn that into a close), where a client's CONNECT
    // and PINGREQ take milliseconds.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_simqtt"))
        .args(["passwd", "-c", "-b", "-I", "100000"])
        .arg(&passwd)
        .args(["slow", "secret"])
        .status()
        .unwrap();
    assert!(status.success());
    let config = write_file(
        dir.path(),
        "broker.toml",
        &format!(
            "password_file = {:?}\nconnect_timeout_secs = 120\n",
            passwd.display().to_string()
        ),
    );
    let mut broker = ChildBroker::start(&["--config", &config]);

    for password in ["secret", "wrong"] {
        let mut slow = RawClient::open(broker.port, ProtocolVersion::V311);
        slow.send(&Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V311,
            "slow",
            true,
            Some(("slow", password)),
        ))));
        // Give the broker the CONNECT before the other client arrives.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut quick = RawClient::connect(broker.port, ProtocolVersion::V311, "quick", true, None);
        assert!(quick.ping(), "the anonymous client is served");
        match slow.recv(std::time::Duration::from_millis(50)) {
            Received::Nothing => {}
            other => panic!(
                "the slow check ({password}) finished before another client was served: {other:?}"
            ),
        }
        match slow.recv(WAIT * 3) {
            Received::Packet(Packet::ConnAck(connack)) => {
                let want = if password == "secret" {
                    ReasonCode::Success
                } else {
                    ReasonCode::BadUserNameOrPassword
                };
                assert_eq!(connack.reason_code, want);
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        quick.disconnect();
    }
    broker.assert_alive("at the end");
}
