//! MQTT 5.0 enhanced authentication end to end over real TCP: `simqtt passwd --scram` writes
//! a user's SCRAM-SHA-256 credential, `simqtt broker` checks the AUTH exchange against it,
//! and `simqtt pub --auth-method SCRAM-SHA-256` performs it (and checks the broker's
//! signature).

mod broker_support;

use broker_support::{write_file, ChildBroker};

fn simqtt(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_simqtt"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn scram_logins_through_the_cli_against_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let file = passwd.to_str().unwrap();
    // alice has a SCRAM credential, bob only the mosquitto hash.
    for (create, scram, user) in [(true, true, "alice"), (false, false, "bob")] {
        let mut args = vec!["passwd", "-b", "-I", "1000"];
        if create {
            args.push("-c");
        }
        if scram {
            args.push("--scram");
        }
        args.extend([file, user, "s3cret"]);
        assert!(simqtt(&args).status.success());
    }
    let config = write_file(
        dir.path(),
        "broker.toml",
        &format!("password_file = {file:?}\nallow_anonymous = false\n"),
    );
    let mut broker = ChildBroker::start(&["--config", &config]);
    let port = broker.port.to_string();
    let publish = |user: &str, password: &str, extra: &[&str]| {
        let mut args = vec![
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            user,
            "-P",
            password,
            "-t",
            "t",
            "-m",
            "x",
        ];
        args.extend(extra);
        simqtt(&args)
    };
    let scram = ["-V", "5", "--auth-method", "SCRAM-SHA-256"];
    let ok = publish("alice", "s3cret", &scram);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A wrong password, a user without a SCRAM credential: CONNACK 0x86.
    for (user, password) in [("alice", "wrong"), ("bob", "s3cret")] {
        let refused = publish(user, password, &scram);
        assert!(!refused.status.success(), "{user}/{password}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("reason code 0x86"), "{stderr}");
    }
    // bob's plain password login still works.
    assert!(publish("bob", "s3cret", &["-V", "5"]).status.success());
    // 3.1.1 has no enhanced authentication; an unknown method is refused before connecting.
    for extra in [
        &["--auth-method", "SCRAM-SHA-256"][..],
        &["-V", "5", "--auth-method", "PLAIN"][..],
    ] {
        let refused = publish("alice", "s3cret", extra);
        assert!(!refused.status.success());
    }
    broker.assert_alive("at the end");
}
