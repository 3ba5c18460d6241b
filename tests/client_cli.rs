//! `simqtt pub` / `simqtt sub` as processes against a real mosquitto: the classic check (one
//! subscriber, one publisher, a kicked subscriber that reconnects by itself and keeps
//! receiving, also across a broker restart), and the errors a user sees.

mod client_support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use client_support::{free_port, Mosquitto};

const SIMQTT: &str = env!("CARGO_BIN_EXE_simqtt");

fn simqtt(args: &[&str]) -> Output {
    Command::new(SIMQTT)
        .args(args)
        .output()
        .expect("run simqtt")
}

/// A running `simqtt sub -d`: its packet log and messages arrive on stdout (as mosquitto_sub
/// prints them), errors on stderr.
struct Sub {
    child: Child,
    stdout: mpsc::Receiver<String>,
    _stderr: mpsc::Receiver<String>,
}

impl Sub {
    fn start(args: &[&str]) -> Sub {
        let mut child = Command::new(SIMQTT)
            .arg("sub")
            .arg("-d")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start simqtt sub");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Sub {
            child,
            stdout,
            _stderr: stderr,
        }
    }

    /// Waits for a packet log line containing `needle` (messages before it are lost).
    fn wait_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(100)) {
                if line.contains(needle) {
                    return;
                }
                seen.push(line);
            }
        }
        panic!("sub never printed {needle:?}; stdout: {seen:#?}");
    }

    /// The next message line (packet log lines skipped).
    fn next_line(&self) -> String {
        loop {
            let line = self
                .stdout
                .recv_timeout(Duration::from_secs(10))
                .expect("a line from simqtt sub");
            if !line.starts_with("Client ") && !line.starts_with("Subscribed (mid") {
                return line;
            }
        }
    }

    fn wait_exit(mut self) -> std::process::ExitStatus {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        panic!("simqtt sub did not exit");
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn publish(port: &str, topic: &str, message: &str, qos: &str) {
    let out = simqtt(&["pub", "-p", port, "-t", topic, "-m", message, "-q", qos]);
    assert!(
        out.status.success(),
        "pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pub_and_sub_round_trip_with_count_and_verbose() {
    let broker = Mosquitto::start(false);
    let port = broker.port.to_string();
    let sub = Sub::start(&["-p", &port, "-t", "cli/#", "-v", "-C", "3", "-q", "2"]);
    sub.wait_log("Subscribed (mid: 1)");
    publish(&port, "cli/0", "zero", "0");
    publish(&port, "cli/1", "one", "1");
    let out = simqtt(&["pub", "-p", &port, "-t", "cli/2", "-n", "-q", "2"]);
    assert!(out.status.success());
    assert_eq!(sub.next_line(), "cli/0 zero");
    assert_eq!(sub.next_line(), "cli/1 one");
    assert_eq!(sub.next_line(), "cli/2 (null)");
    assert!(
        sub.wait_exit().success(),
        "-C 3 exits 0 after three messages"
    );
}

#[test]
fn pub_reads_lines_and_files() {
    let broker = Mosquitto::start(false);
    let port = broker.port.to_string();
    let sub = Sub::start(&["-p", &port, "-t", "lines", "-C", "4", "-q", "1"]);
    sub.wait_log("Subscribed (mid: 1)");
    let mut pub_lines = Command::new(SIMQTT)
        .args(["pub", "-p", &port, "-t", "lines", "-l", "-q", "1"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    pub_lines
        .stdin
        .take()
        .unwrap()
        .write_all(b"first\nsecond\nthird\n")
        .unwrap();
    assert!(pub_lines.wait().unwrap().success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload");
    std::fs::write(&file, "from a file").unwrap();
    let out = simqtt(&[
        "pub",
        "-p",
        &port,
        "-t",
        "lines",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let got: Vec<String> = (0..4).map(|_| sub.next_line()).collect();
    assert_eq!(got, ["first", "second", "third", "from a file"]);
    assert!(sub.wait_exit().success());
}

#[test]
fn kicked_subscriber_reconnects_and_keeps_receiving_also_across_a_broker_restart() {
    let mut broker = Mosquitto::start(true);
    let port = broker.port.to_string();
    let sub = Sub::start(&[
        "-p", &port, "-t", "k/#", "-q", "1", "-c", "-i", "kicked", "-v", "-C", "3",
    ]);
    sub.wait_log("Subscribed (mid: 1)");
    publish(&port, "k/1", "before kick", "1");
    assert_eq!(sub.next_line(), "k/1 before kick");

    // Kick: another client takes the id (mosquitto closes the first connection) and leaves.
    let kick = simqtt(&[
        "pub", "-p", &port, "-i", "kicked", "-c", "-t", "other", "-m", "x",
    ]);
    assert!(kick.status.success());
    // Reconnected and subscribed again: the next SUBACK.
    sub.wait_log("Client kicked sending CONNECT");
    sub.wait_log("Subscribed (mid:");
    publish(&port, "k/2", "after kick", "1");
    assert_eq!(sub.next_line(), "k/2 after kick");

    broker.restart();
    sub.wait_log("Client kicked sending CONNECT");
    sub.wait_log("Subscribed (mid:");
    publish(&port, "k/3", "after restart", "1");
    assert_eq!(sub.next_line(), "k/3 after restart");
    assert!(sub.wait_exit().success());
}

#[test]
fn unreachable_broker_is_a_clear_error() {
    let port = free_port().to_string();
    for args in [
        vec!["sub", "-h", "127.0.0.1", "-p", &port, "-t", "x"],
        vec!["pub", "-h", "127.0.0.1", "-p", &port, "-t", "x", "-m", "y"],
    ] {
        let out = simqtt(&args);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("Error: Connection refused"), "{stderr}");
    }
}

#[test]
fn refused_connect_reports_the_return_code_meaning() {
    let broker = Mosquitto::start_with(false, false);
    let port = broker.port.to_string();
    let out = simqtt(&["sub", "-p", &port, "-t", "x"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "exit code is the CONNACK return code"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Connection error: Connection Refused: not authorised. (return code 5)"
    );
    let out = simqtt(&["pub", "-p", &port, "-t", "x", "-m", "y", "-V", "5"]);
    assert_eq!(out.status.code(), Some(0x87));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Not authorized (reason code 0x87)"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_print_usage() {
    for args in [
        vec!["pub", "-t", "x"],                  // no message source
        vec!["pub", "-t", "x", "-m", "a", "-n"], // two message sources
        vec!["sub", "-t", "x", "-q", "3"],       // no QoS 3
        vec!["sub"],                             // no topic
        vec!["sub", "-t", "x", "-V", "3"],       // unknown protocol version
        vec!["pub", "-t", "x", "-m", "a", "-D", "publish", "content-type"], // -D: 3 words
        vec!["pub", "-t", "x", "-m", "a", "-W", "3"], // -W is for -e
    ] {
        let out = simqtt(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains("Usage: simqtt") || stderr.contains("try '--help'"),
            "{args:?}: {stderr}"
        );
    }
    let out = simqtt(&["pub", "-t", "a/#", "-m", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid publish topic 'a/#'"));
    // Bad -D and -e values: refused before connecting, with the reason.
    for (args, reason) in [
        (
            &[
                "pub",
                "-t",
                "x",
                "-m",
                "a",
                "-D",
                "publish",
                "content-type",
                "t",
            ][..],
            "-D (properties) is MQTT 5.0 only; add -V 5.",
        ),
        (
            &[
                "pub",
                "-V",
                "5",
                "-t",
                "x",
                "-m",
                "a",
                "-D",
                "publsh",
                "content-type",
                "t",
            ],
            "Invalid command given in -D argument.",
        ),
        (
            &[
                "pub",
                "-V",
                "5",
                "-t",
                "x",
                "-m",
                "a",
                "-D",
                "connect",
                "topic-alias",
                "1",
            ],
            "topic-alias property not allowed for connect",
        ),
        (
            &[
                "pub",
                "-V",
                "5",
                "-t",
                "x",
                "-m",
                "a",
                "-D",
                "publish",
                "message-expiry-interval",
                "soon",
            ],
            "message-expiry-interval soon: not a number",
        ),
        (
            &["pub", "-t", "x", "-m", "a", "-e", "r"],
            "-e (request/response) is MQTT 5.0 only; add -V 5.",
        ),
        (
            &["pub", "-V", "5", "-t", "x", "-l", "-e", "r"],
            "-e sends one request",
        ),
        (
            &[
                "sub",
                "-V",
                "5",
                "-t",
                "x",
                "-D",
                "publish",
                "content-type",
                "t",
            ],
            "-D publish properties are for simqtt pub.",
        ),
    ] {
        let out = simqtt(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    let out = simqtt(&["sub", "-t", "x", "-c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("provide a client id"));
    // --help works even though -h is the host.
    let out = simqtt(&["sub", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-h, --host"));
}

#[test]
fn sub_timeout_exits_27() {
    let broker = Mosquitto::start(false);
    let port = broker.port.to_string();
    let started = std::time::Instant::now();
    let out = simqtt(&["sub", "-p", &port, "-t", "quiet", "-W", "1"]);
    assert_eq!(out.status.code(), Some(27));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "Timed out");
    assert!(started.elapsed() >= Duration::from_secs(1));
}
