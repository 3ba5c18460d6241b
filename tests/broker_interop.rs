//! Interoperability: real third-party clients against `simqtt broker` on loopback.
//! mosquitto_pub / mosquitto_sub (Debian `mosquitto-clients`) and the paho-mqtt Python client
//! (2.x). Each test starts its own broker on a free port (`--listen 127.0.0.1:0`) and bounds
//! every wait; a missing program is a failure, not a skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// `simqtt broker` in a child process, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    fn start(args: &[&str]) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_simqtt"))
            .args(["broker", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting simqtt broker");
        let log = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stderr.take().unwrap(), log.clone());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(WAIT)
            .expect("simqtt broker printed no listening line");
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Broker { child, port, log }
    }

    fn port(&self) -> String {
        self.port.to_string()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then the exit status (bounded).
    fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker ignored SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

/// A client program whose stdout lines are collected as they come.
struct Program {
    name: String,
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

impl Program {
    fn start(program: &str, args: &[&str]) -> Program {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stdout.take().unwrap(), out.clone());
        collect_lines(child.stderr.take().unwrap(), err.clone());
        Program {
            name: format!("{program} {}", args.join(" ")),
            child,
            out,
            err,
        }
    }

    /// Waits until a stdout line contains `text`.
    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.out.lock().unwrap().iter().any(|l| l.contains(text)) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "{}: no line with {text:?}; stdout: {:?}; stderr: {:?}",
            self.name,
            self.out.lock().unwrap(),
            self.err.lock().unwrap()
        );
    }

    /// Waits for the exit (bounded) and returns the status and the stdout lines.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                thread::sleep(Duration::from_millis(50));
                let out = self.out.lock().unwrap().clone();
                return (status, out);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not finish; stdout: {:?}; stderr: {:?}",
                    self.name,
                    self.out.lock().unwrap(),
                    self.err.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Messages printed by `mosquitto_sub -v` (debug lines removed).
    fn messages(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed"))
            .cloned()
            .collect()
    }
}

fn run(program: &str, args: &[&str]) -> Vec<String> {
    let p = Program::start(program, args);
    let name = p.name.clone();
    let err = p.err.clone();
    let (status, out) = p.finish();
    assert!(
        status.success(),
        "{name} failed: {status}; stdout {out:?}; stderr {:?}",
        err.lock().unwrap()
    );
    out
}

fn pub_(broker: &Broker, args: &[&str]) {
    let port = broker.port();
    let mut all = vec!["-p", port.as_str(), "-h", "127.0.0.1"];
    all.extend_from_slice(args);
    run("mosquitto_pub", &all);
}

/// Starts mosquitto_sub in debug mode and returns once its SUBACK arrived.
fn sub(broker: &Broker, args: &[&str]) -> Program {
    let port = broker.port();
    // Line-buffered, so the debug line of the SUBACK reaches the pipe when it is printed.
    let mut all = vec![
        "-oL",
        "mosquitto_sub",
        "-p",
        port.as_str(),
        "-h",
        "127.0.0.1",
        "-d",
        "-v",
    ];
    all.extend_from_slice(args);
    let p = Program::start("stdbuf", &all);
    p.wait_for("received SUBACK");
    p
}

/// The Python that has paho-mqtt 2.x: the venv `scripts/install-peers` makes (Debian's own
/// python3 may not install packages, and its python3-paho-mqtt is 1.6). Same location rule as
/// that script: `$SIMQTT_VENV`, else `target/venv` in the repository.
fn paho_python() -> String {
    let venv = std::env::var_os("SIMQTT_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-peers (it makes the venv with paho-mqtt 2.x), \
         or scripts/test, which runs it first",
        python.display()
    );
    python.display().to_string()
}

fn python(broker: &Broker, script: &str) -> Vec<String> {
    let prologue = r#"
import sys, time, threading
import paho.mqtt.client as mqtt
PORT = int(sys.argv[1])
def wait(pred, secs=5.0):
    end = time.time() + secs
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    raise SystemExit("timed out waiting")
def client(cid, clean=True, v5=False, **kw):
    if v5:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, **kw)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean, **kw)
    c.events = []
    c.messages = []
    c.connected = threading.Event()
    def on_connect(cl, ud, flags, rc, props):
        cl.events.append(("connect", flags.session_present, int(rc.value) if hasattr(rc, "value") else int(rc)))
        cl.connected.set()
    def on_disconnect(cl, ud, flags, rc, props):
        cl.events.append(("disconnect",))
    def on_message(cl, ud, m):
        cl.messages.append((m.topic, m.payload.decode(), m.qos, int(m.retain)))
    def on_subscribe(cl, ud, mid, codes, props):
        cl.events.append(("suback", [int(getattr(c, "value", c)) for c in codes]))
    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    return c
def start(c, clean_start=None):
    c.connected.clear()
    if clean_start is None:
        c.connect("127.0.0.1", PORT, keepalive=30)
    else:
        c.connect("127.0.0.1", PORT, keepalive=30, clean_start=clean_start)
    c.loop_start()
    wait(c.connected.is_set)
def subscribe(c, topic, qos):
    n = len([e for e in c.events if e[0] == "suback"])
    c.subscribe(topic, qos)
    wait(lambda: len([e for e in c.events if e[0] == "suback"]) > n)
"#;
    let program = format!("{prologue}\n{script}");
    let port = broker.port();
    let python = paho_python();
    let p = Program::start(&python, &["-c", &program, &port]);
    let name = format!("{python} (paho)");
    let err = p.err.clone();
    let (status, out) = p.finish();
    assert!(
        status.success(),
        "{name} failed: {status}; stdout {out:?}; stderr {:?}\nbroker log:\n{}",
        err.lock().unwrap(),
        broker.log()
    );
    out
}

#[test]
fn mosquitto_qos_round_trips() {
    let broker = Broker::start(&[]);
    for qos in ["0", "1", "2"] {
        let topic = format!("rt/q{qos}");
        let s = sub(&broker, &["-q", qos, "-t", &topic, "-C", "3"]);
        for i in 0..3 {
            pub_(&broker, &["-q", qos, "-t", &topic, "-m", &format!("m{i}")]);
        }
        let (status, out) = s.finish();
        assert!(status.success());
        let want: Vec<String> = (0..3).map(|i| format!("{topic} m{i}")).collect();
        assert_eq!(Program::messages(&out), want, "QoS {qos}");
        // The debug lines show each message arrived at the subscribed QoS.
        let q = format!("q{qos},");
        assert_eq!(
            out.iter()
                .filter(|l| l.contains("received PUBLISH") && l.contains(&q))
                .count(),
            3,
            "{out:?}"
        );
    }
}

#[test]
fn mosquitto_retained_set_and_clear() {
    let broker = Broker::start(&[]);
    pub_(&broker, &["-q", "1", "-r", "-t", "ret/a", "-m", "kept"]);
    pub_(&broker, &["-r", "-t", "ret/b", "-m", "old"]);
    pub_(&broker, &["-r", "-t", "ret/b", "-m", "new"]);
    let port = broker.port();
    let base = ["-p", port.as_str(), "-h", "127.0.0.1"];
    let out = run(
        "mosquitto_sub",
        &[&base[..], &["-t", "ret/#", "-C", "2", "-F", "%r %t %p"]].concat(),
    );
    assert_eq!(out, ["1 ret/a kept", "1 ret/b new"]);
    // An empty retained message clears the topic.
    pub_(&broker, &["-r", "-t", "ret/a", "-n"]);
    let out = run(
        "mosquitto_sub",
        &[&base[..], &["-t", "ret/#", "-C", "1", "-F", "%r %t %p"]].concat(),
    );
    assert_eq!(out, ["1 ret/b new"]);
    // Live messages are forwarded with RETAIN 0.
    let s = sub(&broker, &["-t", "ret/c", "-C", "1", "-F", "%r %t %p"]);
    pub_(&broker, &["-r", "-t", "ret/c", "-m", "live"]);
    let (_, out) = s.finish();
    assert!(out.contains(&"0 ret/c live".to_string()), "{out:?}");
}

#[test]
fn mosquitto_will_on_killed_client_not_on_clean_exit() {
    let broker = Broker::start(&[]);
    let watcher = sub(&broker, &["-t", "will/#", "-C", "1"]);
    // A clean exit sends DISCONNECT: no will.
    pub_(
        &broker,
        &[
            "-i",
            "polite",
            "--will-topic",
            "will/polite",
            "--will-payload",
            "bye",
            "-t",
            "x",
            "-m",
            "x",
        ],
    );
    let victim = sub(
        &broker,
        &[
            "-i",
            "victim",
            "--will-topic",
            "will/victim",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
            "-t",
            "x",
        ],
    );
    victim.kill();
    let (status, out) = watcher.finish();
    assert!(status.success());
    assert_eq!(Program::messages(&out), ["will/victim gone"]);
}

#[test]
fn mosquitto_persistent_session_gets_queued_messages() {
    let broker = Broker::start(&[]);
    let port = broker.port();
    let base = ["-p", port.as_str(), "-h", "127.0.0.1"];
    // Create the session and its subscription, then leave (clean DISCONNECT).
    run(
        "mosquitto_sub",
        &[
            &base[..],
            &["-c", "-i", "keeper", "-q", "1", "-t", "queue/t", "-E"],
        ]
        .concat(),
    );
    for i in 0..3 {
        pub_(
            &broker,
            &["-q", "1", "-t", "queue/t", "-m", &format!("q{i}")],
        );
    }
    let out = run(
        "mosquitto_sub",
        &[
            &base[..],
            &[
                "-c", "-i", "keeper", "-q", "1", "-t", "queue/t", "-C", "3", "-v",
            ],
        ]
        .concat(),
    );
    assert_eq!(out, ["queue/t q0", "queue/t q1", "queue/t q2"]);
}

#[test]
fn mosquitto_wildcards_and_sys_topics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "sys_interval_secs = 1\n").unwrap();
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let plus = sub(&broker, &["-t", "w/+/x", "-C", "2"]);
    let hash = sub(&broker, &["-t", "#", "-C", "3"]);
    for topic in ["w/a/x", "w/a/y", "w/b/x"] {
        pub_(&broker, &["-t", topic, "-m", topic]);
    }
    let (_, out) = plus.finish();
    assert_eq!(Program::messages(&out), ["w/a/x w/a/x", "w/b/x w/b/x"]);
    let (_, out) = hash.finish();
    // `#` never matches `$SYS` [MQTT-4.7.2-1], though $SYS is published every second.
    assert_eq!(
        Program::messages(&out),
        ["w/a/x w/a/x", "w/a/y w/a/y", "w/b/x w/b/x"]
    );
    let port = broker.port();
    let out = run(
        "mosquitto_sub",
        &[
            "-p",
            &port,
            "-h",
            "127.0.0.1",
            "-t",
            "$SYS/broker/uptime",
            "-C",
            "1",
            "-v",
        ],
    );
    assert!(
        out[0].starts_with("$SYS/broker/uptime ") && out[0].ends_with(" seconds"),
        "{out:?}"
    );
}

#[test]
fn garbage_and_oversize_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "max_packet_size = 1024\n").unwrap();
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let s = sub(&broker, &["-t", "ok", "-C", "2"]);
    // A byte stream that is not MQTT: refused and closed.
    let mut raw = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\xff\xff\xff\xff")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "garbage got an answer: {:?}", &buf[..n]);
    pub_(&broker, &["-t", "ok", "-m", "after garbage"]);
    // An oversize PUBLISH closes the publisher's connection only.
    let big = "x".repeat(2000);
    let p = Program::start(
        "mosquitto_pub",
        &[
            "-p",
            &broker.port(),
            "-h",
            "127.0.0.1",
            "-q",
            "1",
            "-t",
            "ok",
            "-m",
            &big,
        ],
    );
    let (status, _) = p.finish();
    assert!(!status.success(), "an oversize publish was accepted");
    pub_(&broker, &["-t", "ok", "-m", "after oversize"]);
    let (status, out) = s.finish();
    assert!(status.success());
    assert_eq!(
        Program::messages(&out),
        ["ok after garbage", "ok after oversize"]
    );
    assert!(broker.log().contains("bad packet"), "{}", broker.log());
}

#[test]
fn paho_qos_round_trips_v311_and_v5() {
    let broker = Broker::start(&[]);
    let out = python(
        &broker,
        r#"
for v5 in (False, True):
    s = client("sub-%s" % v5, v5=v5)
    start(s)
    subscribe(s, "p/#", 2)
    p = client("pub-%s" % v5, v5=v5)
    start(p)
    for q in (0, 1, 2):
        p.publish("p/q%d" % q, "m%d" % q, qos=q).wait_for_publish(5)
    wait(lambda: len(s.messages) == 3)
    print(v5, sorted(s.messages))
    p.disconnect(); s.disconnect()
    p.loop_stop(); s.loop_stop()
"#,
    );
    let want = "[('p/q0', 'm0', 0, 0), ('p/q1', 'm1', 1, 0), ('p/q2', 'm2', 2, 0)]";
    assert_eq!(out, [format!("False {want}"), format!("True {want}")]);
}

#[test]
fn paho_session_present_and_queued_messages() {
    let broker = Broker::start(&[]);
    let out = python(
        &broker,
        r#"
s = client("durable", clean=False)
start(s)
print("first", s.events[0])
subscribe(s, "d/t", 2)
s.disconnect(); s.loop_stop()
p = client("pub")
start(p)
p.publish("d/t", "one", qos=1).wait_for_publish(5)
p.publish("d/t", "two", qos=2).wait_for_publish(5)
p.disconnect(); p.loop_stop()
s2 = client("durable", clean=False)
start(s2)
print("resume", s2.events[0])
wait(lambda: len(s2.messages) == 2)
print(s2.messages)
s2.disconnect(); s2.loop_stop()
s3 = client("durable", clean=True)
start(s3)
print("clean", s3.events[0])
s3.disconnect(); s3.loop_stop()
"#,
    );
    assert_eq!(
        out,
        [
            "first ('connect', False, 0)",
            "resume ('connect', True, 0)",
            "[('d/t', 'one', 1, 0), ('d/t', 'two', 2, 0)]",
            "clean ('connect', False, 0)",
        ]
    );
}

#[test]
fn paho_takeover_closes_the_older_connection() {
    let broker = Broker::start(&[]);
    let out = python(
        &broker,
        r#"
w = client("watcher")
start(w)
subscribe(w, "will/#", 1)
a = client("same")
a.will_set("will/same", "taken over", qos=1)
a.reconnect_delay_set(60, 60)
start(a)
b = client("same")
start(b)
wait(lambda: ("disconnect",) in a.events)
wait(lambda: len(w.messages) == 1)
print("old", a.events)
print("new", b.events)
print("will", w.messages)
a.loop_stop()
b.disconnect(); b.loop_stop(); w.disconnect(); w.loop_stop()
"#,
    );
    assert_eq!(
        out,
        [
            "old [('connect', False, 0), ('disconnect',)]",
            "new [('connect', False, 0)]",
            "will [('will/same', 'taken over', 1, 0)]",
        ]
    );
}

#[test]
fn sigterm_flushes_the_store_and_a_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let broker = Broker::start(&["--data-dir", data_arg]);
    let port = broker.port();
    run(
        "mosquitto_sub",
        &[
            "-p",
            &port,
            "-h",
            "127.0.0.1",
            "-c",
            "-i",
            "survivor",
            "-q",
            "1",
            "-t",
            "s/t",
            "-E",
        ],
    );
    pub_(&broker, &["-q", "1", "-t", "s/t", "-m", "queued"]);
    pub_(&broker, &["-q", "1", "-r", "-t", "s/r", "-m", "retained"]);
    let status = broker.terminate();
    assert!(status.success(), "{status}");
    // The store's first log (no compaction yet).
    assert!(Path::new(&data).join("log.0").exists());

    let broker = Broker::start(&["--data-dir", data_arg]);
    let port = broker.port();
    let out = run(
        "mosquitto_sub",
        &[
            "-p",
            &port,
            "-h",
            "127.0.0.1",
            "-c",
            "-i",
            "survivor",
            "-q",
            "1",
            "-t",
            "s/t",
            "-C",
            "1",
            "-v",
        ],
    );
    assert_eq!(out, ["s/t queued"]);
    let out = run(
        "mosquitto_sub",
        &["-p", &port, "-h", "127.0.0.1", "-t", "s/r", "-C", "1", "-v"],
    );
    assert_eq!(out, ["s/r retained"]);
}

#[test]
fn wrong_password_refused_and_acl_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let acl = dir.path().join("acl");
    let simqtt = env!("CARGO_BIN_EXE_simqtt");
    run(
        simqtt,
        &[
            "passwd",
            "-c",
            "-b",
            // Few iterations: this test is about refusals and the ACL, not the work factor,
            // and the broker pays one derivation per CONNECT.
            "-I",
            "1000",
            passwd.to_str().unwrap(),
            "alice",
            "secret",
        ],
    );
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite alice/#\ntopic read news/#\npattern write clients/%c/%u\n",
    )
    .unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "allow_anonymous = false\npassword_file = {:?}\nacl_file = {:?}\n",
            passwd.to_str().unwrap(),
            acl.to_str().unwrap()
        ),
    )
    .unwrap();
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let port = broker.port();
    let base = ["-p", port.as_str(), "-h", "127.0.0.1"];
    // Wrong password: CONNACK 4; no user name: CONNACK 5.
    for (args, code) in [
        (
            vec!["-u", "alice", "-P", "wrong"],
            "bad user name or password",
        ),
        (
            vec!["-u", "mallory", "-P", "secret"],
            "bad user name or password",
        ),
        (vec![], "not authorised"),
    ] {
        let p = Program::start(
            "mosquitto_pub",
            &[&base[..], &args[..], &["-t", "alice/x", "-m", "x"]].concat(),
        );
        let err = p.err.clone();
        let (status, _) = p.finish();
        assert!(!status.success(), "{args:?} was accepted");
        let err = err.lock().unwrap().join("\n").to_lowercase();
        assert!(err.contains(code), "{args:?}: {err}");
    }
    // The right password connects; the ACL decides per topic.
    let out = python(
        &broker,
        r#"
s = client("reader")
s.username_pw_set("alice", "secret")
start(s)
subscribe(s, "alice/#", 1)
subscribe(s, "secret/#", 1)
subscribe(s, "clients/#", 1)
print([e for e in s.events if e[0] == "suback"])
p = client("writer")
p.username_pw_set("alice", "secret")
start(p)
p.publish("news/today", "refused: read only", qos=1).wait_for_publish(5)
p.publish("clients/writer/alice", "allowed by pattern", qos=1).wait_for_publish(5)
p.publish("alice/x", "allowed", qos=1).wait_for_publish(5)
wait(lambda: len(s.messages) == 1)
time.sleep(0.2)
print(s.messages)
"#,
    );
    assert_eq!(
        out,
        [
            "[('suback', [1]), ('suback', [128]), ('suback', [128])]",
            "[('alice/x', 'allowed', 1, 0)]",
        ]
    );
}

/// Shared subscriptions (5.0 4.8.2) with mosquitto's clients: a 5.0 member and a 3.1.1 member
/// (accepted as mosquitto and EMQX do) of `$share/g/sh/t` share six QoS 2 messages, each
/// delivered to exactly one of them (round robin, the default strategy: three each).
#[test]
fn mosquitto_shared_subscription_members_share_the_messages() {
    let broker = Broker::start(&[]);
    let v5 = sub(
        &broker,
        &["-V", "mqttv5", "-q", "2", "-t", "$share/g/sh/t", "-C", "3"],
    );
    let v311 = sub(
        &broker,
        &[
            "-V",
            "mqttv311",
            "-q",
            "2",
            "-t",
            "$share/g/sh/t",
            "-C",
            "3",
        ],
    );
    for i in 0..6 {
        pub_(
            &broker,
            &[
                "-V",
                "mqttv5",
                "-q",
                "2",
                "-t",
                "sh/t",
                "-m",
                &format!("m{i}"),
            ],
        );
    }
    let mut got = Vec::new();
    for member in [v5, v311] {
        let (status, out) = member.finish();
        assert!(status.success());
        let messages = Program::messages(&out);
        assert_eq!(messages.len(), 3, "{out:?}");
        got.extend(messages);
    }
    got.sort();
    let want: Vec<String> = (0..6).map(|i| format!("sh/t m{i}")).collect();
    assert_eq!(got, want, "each message to exactly one member");
}

/// mosquitto_pub 2.0.11 with a topic alias (`-D publish topic-alias 1`) sends the first
/// PUBLISH with topic and alias and the rest with the alias alone; the simqtt broker resolves
/// them, and a subscriber that announced no Topic Alias Maximum gets every message with its
/// topic and no alias [MQTT-3.3.2-12] [MQTT-3.1.2-27].
#[test]
fn mosquitto_pub_topic_alias_is_resolved_by_the_broker() {
    let broker = Broker::start(&[]);
    let s = sub(
        &broker,
        &["-V", "mqttv5", "-q", "1", "-t", "ta/#", "-C", "3"],
    );
    let port = broker.port();
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-p", &port, "-h", "127.0.0.1", "-V", "mqttv5", "-q", "1"])
        .args([
            "-D",
            "publish",
            "topic-alias",
            "1",
            "-t",
            "ta/x",
            "-l",
            "-d",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run mosquitto_pub (is it installed?)");
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"l1\nl2\nl3\n")
        .unwrap();
    let output = publisher.wait_with_output().unwrap();
    let debug = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{debug}");
    // The premise: mosquitto_pub sent two PUBLISHes with the alias alone (topic printed as
    // '(null)'), each acknowledged.
    assert_eq!(debug.matches("'(null)'").count(), 2, "{debug}");
    assert_eq!(debug.matches("RC:0)").count(), 3, "{debug}");
    let (status, out) = s.finish();
    assert!(status.success(), "{out:?}");
    assert_eq!(Program::messages(&out), ["ta/x l1", "ta/x l2", "ta/x l3"]);
    assert!(
        !broker.log().contains("protocol violation"),
        "{}",
        broker.log()
    );
}
