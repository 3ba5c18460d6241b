//! A password file written by `simqtt passwd` is accepted by a real mosquitto broker (and a
//! wrong password refused). Skipped, with a message, when mosquitto is not installed.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn installed(path: &str) -> bool {
    Path::new(path).exists()
}

#[test]
fn mosquitto_accepts_simqtt_passwd_files() {
    if !installed("/usr/sbin/mosquitto") || !installed("/usr/bin/mosquitto_pub") {
        eprintln!("skipped: mosquitto or mosquitto_pub is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    let simqtt = env!("CARGO_BIN_EXE_simqtt");
    for (create, user, password) in [(true, "alice", "open sesame"), (false, "bob", "x:y")] {
        let mut cmd = Command::new(simqtt);
        cmd.arg("passwd");
        if create {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&pw)
            .args([user, password])
            .status()
            .unwrap();
        assert!(status.success());
    }

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mosquitto.conf");
    // `user root`: when started as root mosquitto would otherwise switch to the `mosquitto`
    // user, which cannot read the owner-only file.
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            pw.display()
        ),
    )
    .unwrap();
    let mut broker = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let publish = |user: &str, password: &str| {
        Command::new("/usr/bin/mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-u", user, "-P", password, "-t", "t", "-m", "hi"])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let results = [
        publish("alice", "open sesame"),
        publish("bob", "x:y"),
        publish("alice", "wrong"),
        publish("carol", "open sesame"),
    ];
    broker.kill().ok();
    broker.wait().ok();
    assert_eq!(results, [true, true, false, false]);
}
