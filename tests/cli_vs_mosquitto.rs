//! `simqtt pub` / `simqtt sub` next to `mosquitto_pub` / `mosquitto_sub`: each flag simqtt
//! supports runs with the same arguments through both programs against one mosquitto broker
//! (with a password file and an ACL), and what they print, what they send and their exit
//! status are compared. The differences README.md documents are asserted as differences.
//!
//! mosquitto and mosquitto-clients must be installed (scripts/install-peers): the test fails,
//! never skips, without them.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIMQTT: &str = env!("CARGO_BIN_EXE_simqtt");
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tool {
    Mosquitto,
    Simqtt,
}

const TOOLS: [Tool; 2] = [Tool::Mosquitto, Tool::Simqtt];

impl Tool {
    fn command(self, kind: &str) -> Command {
        match self {
            Tool::Mosquitto => {
                let program = format!("mosquitto_{kind}");
                assert!(
                    Path::new("/usr/bin").join(&program).exists(),
                    "/usr/bin/{program} is missing: run scripts/install-peers"
                );
                // Its -d log lines are printf'd without a flush: line-buffer the pipe.
                let mut c = Command::new("stdbuf");
                c.args(["-oL", &program]);
                c
            }
            Tool::Simqtt => {
                let mut c = Command::new(SIMQTT);
                c.arg(kind);
                c
            }
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Tool::Mosquitto => "m",
            Tool::Simqtt => "s",
        }
    }
}

/// mosquitto with a password file (alice / s3cret) and an ACL that lets everyone read and
/// write everything but `denied/#`.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Broker {
    fn start() -> Broker {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing: run scripts/install-peers"
        );
        let dir = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let pw = dir.path().join("pw");
        let made = Command::new("/usr/bin/mosquitto_passwd")
            .args(["-c", "-b", pw.to_str().unwrap(), "alice", "s3cret"])
            .status()
            .expect("mosquitto_passwd (install mosquitto: scripts/install-peers)");
        assert!(made.success());
        let acl = dir.path().join("acl");
        std::fs::write(
            &acl,
            "topic readwrite #\ntopic deny denied/#\nuser alice\ntopic readwrite #\ntopic deny denied/#\n",
        )
        .unwrap();
        for f in [&pw, &acl] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npassword_file {}\nacl_file {}\nlog_dest stderr\n",
                pw.display(),
                acl.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { port, dir, child }
    }

    fn p(&self) -> String {
        self.port.to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs to the end (bounded) with `stdin`.
fn run(tool: Tool, kind: &str, args: &[String], stdin: &[u8]) -> Out {
    let mut child = tool
        .command(kind)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{tool:?} {kind} {args:?} did not finish: {}", stdout.text());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(30));
    Out {
        code: status.code(),
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn text(&self) -> String {
        let lines = self.0.lock().unwrap();
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

fn collect(stream: impl Read + Send + 'static) -> Lines {
    let lines = Lines::default();
    let into = lines.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    into.0
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&line).into_owned());
                }
            }
        }
    });
    lines
}

fn args(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// A subscriber started with -d, so the test knows when its SUBACK arrived; its message lines
/// (the packet log left out) are what the comparison reads.
struct LiveSub {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

impl LiveSub {
    fn start(tool: Tool, args: &[String]) -> LiveSub {
        let mut child = tool
            .command("sub")
            .arg("-d")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let sub = LiveSub {
            child,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sub.stdout.text().contains("Subscribed (mid:") {
            assert!(
                Instant::now() < deadline,
                "{tool:?} sub {args:?} never subscribed: {}{}",
                sub.stdout.text(),
                sub.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sub
    }

    /// Waits for the exit (bounded): the status and the message lines.
    fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "a subscriber did not exit: {}",
                self.stdout.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_millis(30));
        (status.code(), messages(&self.stdout.text()))
    }
}

impl Drop for LiveSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Output lines that are not the packet log.
fn messages(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed (mid"))
        .map(str::to_string)
        .collect()
}

/// mosquitto_pub, to set up retained messages and live traffic.
fn publish(broker: &Broker, rest: &str) {
    let out = run(
        Tool::Mosquitto,
        "pub",
        &args(&format!("-h 127.0.0.1 -p {} {rest}", broker.p())),
        b"",
    );
    assert_eq!(out.code, Some(0), "{rest}: {out:?}");
}

/// What a subscriber to `filter` receives while `action` runs, as "topic|qos|retain|payload".
/// The end is a marker published afterwards: mosquitto forwards in the order it takes
/// publishes in, and the marker's client connects only after the action's client is done.
fn deliveries(broker: &Broker, filter: &str, action: impl FnOnce()) -> Vec<String> {
    let sub = LiveSub::start(
        Tool::Mosquitto,
        &args(&format!(
            "-h 127.0.0.1 -p {} -q 2 -t {filter} -t marker -F %t|%q|%r|%p",
            broker.p()
        )),
    );
    action();
    publish(broker, "-t marker -m end -q 2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sub.stdout.text().contains("marker|") {
        assert!(
            Instant::now() < deadline,
            "no marker: {}",
            sub.stdout.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = messages(&sub.stdout.text());
    drop(sub);
    lines
        .into_iter()
        .filter(|l| !l.starts_with("marker|"))
        .collect()
}

/// The time fields of -F output made comparable: every digit becomes 0.
fn no_digits(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect()
}

#[test]
fn publish_flags_send_what_mosquitto_pub_sends() {
    let broker = Broker::start();
    let file = broker.dir.path().join("payload");
    std::fs::write(&file, b"from a\nfile").unwrap();
    let file = file.display().to_string();
    let port = broker.p();
    let cases: Vec<(String, &[u8])> = vec![
        ("-t x/{T} -m hello -q 0".to_string(), b""),
        ("-t x/{T} -m hello -q 1 -r".to_string(), b""),
        ("-t x/{T} -m hello -q 2 -V 5".to_string(), b""),
        (format!("-t x/{{T}} -f {file} -q 1"), b""),
        ("-t x/{T} -n -r".to_string(), b""),
        ("-t x/{T} -s".to_string(), b"all of\nstdin"),
        (
            "-t x/{T} -l -q 1 -M 2".to_string(),
            b"one\ntwo\nthree\nfour\n",
        ),
        (
            "-t x/{T} -m rep --repeat 3 --repeat-delay 0.1 -q 1".to_string(),
            b"",
        ),
        (format!("-L mqtt://127.0.0.1:{port}/x/{{T}} -m by-url"), b""),
        (
            format!("-L mqtt://alice:s3cret@127.0.0.1:{port}/x/{{T}} -m as-alice -q 1"),
            b"",
        ),
        (
            "-t x/{T} -m auth -u alice -P s3cret -i {T}-id -c -k 30".to_string(),
            b"",
        ),
        ("-t x/{T} -m v5 -V 5 -x 60 -i {T}-id -q 2".to_string(), b""),
        (
            "-t x/{T} -m will --will-topic w/{T} --will-payload bye --will-qos 1 --will-retain"
                .to_string(),
            b"",
        ),
        ("-t x/{T} -m quiet --quiet".to_string(), b""),
    ];
    for (template, stdin) in &cases {
        let mut seen = Vec::new();
        for tool in TOOLS {
            let line = template.replace("{T}", tool.tag());
            let mut a = args(&format!("-h 127.0.0.1 -p {port}"));
            if !line.starts_with("-L") {
                a.extend(args(&line));
            } else {
                a = args(&line);
            }
            let mut out = None;
            let got = deliveries(&broker, &format!("x/{}", tool.tag()), || {
                out = Some(run(tool, "pub", &a, stdin));
            });
            let out = out.unwrap();
            assert_eq!(out.code, Some(0), "{tool:?} pub {line}: {out:?}");
            // Retained leftovers would show in the next case.
            publish(&broker, &format!("-t x/{} -n -r", tool.tag()));
            let got: Vec<String> = got
                .iter()
                .map(|l| l.replacen(&format!("x/{}", tool.tag()), "x/T", 1))
                .collect();
            seen.push((got, out.stdout, out.stderr));
        }
        assert_eq!(
            seen[0], seen[1],
            "pub {template}: mosquitto_pub, then simqtt pub"
        );
        assert!(!seen[0].0.is_empty(), "pub {template}: nothing arrived");
    }
}

#[test]
fn the_debug_log_is_mosquittos() {
    let broker = Broker::start();
    publish(&broker, "-t d/r -m kept -q 1 -r");
    for (kind, template) in [
        ("pub", "-t d/{T} -m qos2 -q 2 -i dbg-{T}"),
        ("pub", "-t d/{T} -m qos1 -q 1 -r -i dbg-{T} -V 5"),
        ("pub", "-t d/{T} -m a -q 0 --repeat 2 -i dbg-{T}"),
        ("sub", "-t d/r -t d/none -q 1 -C 1 -i dbg-{T}"),
        ("sub", "-t d/r -q 2 -C 1 -v -i dbg-{T} -V 5"),
    ] {
        let mut logs = Vec::new();
        for tool in TOOLS {
            let line = template.replace("{T}", tool.tag());
            let a = args(&format!("-h 127.0.0.1 -p {} -d {line}", broker.p()));
            let out = run(tool, kind, &a, b"");
            assert_eq!(out.code, Some(0), "{tool:?} {kind} {line}: {out:?}");
            logs.push(
                out.stdout
                    .replace(&format!("-{}", tool.tag()), "-T")
                    .replace(&format!("d/{}", tool.tag()), "d/T"),
            );
        }
        assert_eq!(logs[0], logs[1], "{kind} -d {template}");
        assert!(logs[0].contains("sending CONNECT"), "{}", logs[0]);
    }
}

#[test]
fn subscribe_flags_print_what_mosquitto_sub_prints() {
    let broker = Broker::start();
    publish(&broker, "-t r/a -m A -q 1 -r");
    publish(&broker, "-t r/b -m B -r");
    publish(&broker, "-t r/c/d -m D -q 2 -r");
    publish(
        &broker,
        "-t j/x -m {\"t\":21.5,\"ok\":true,\"tags\":[\"a\",\"b\"]} -r",
    );
    publish(&broker, "-t esc/x -m a\"b\\c/d -r");
    let port = broker.p();
    for (template, masked) in [
        ("-t r/# -v -C 3", false),
        ("-t r/# -C 3 -q 2", false),
        ("-t r/a -C 1 -N", false),
        ("-t r/# -T r/c/# -v -C 2", false),
        ("-t r/a -t r/b -v -C 2 -V 5", false),
        ("-L mqtt://127.0.0.1:{P}/r/a -C 1 -v", false),
        ("-t r/# -v -C 3 -u alice -P s3cret -k 30", false),
        ("-t r/# -C 3 -F %t|%p|%q|%r|%l|%x|%X|%m", false),
        ("-t r/a -C 1 -F [%-8t][%8p][%05l][%.1t]\\t%%", false),
        ("-t r/b -C 1 -F %j", true),
        ("-t j/x -C 1 -F %J", true),
        ("-t j/x -C 1 -F %j --pretty", true),
        ("-t j/x -C 1 -F %J --pretty -q 1", true),
        ("-t esc/x -C 1 -F %j", true),
        ("-t esc/x -C 1 -F %J", true),
        ("-t esc/x -C 1 -F %x|%X|%-20x|%20X", false),
        ("-t r/a -C 1 -F %I|%U|@Y-@m-@d|@@", true),
        ("-t r/# -v -W 1 --retained-only", false),
        ("-t r/# -v -W 1 -R", false),
        ("-t r/# -v -W 1 -U r/#", false),
        ("-t nothing/here -W 1", false),
    ] {
        let line = template.replace("{P}", &port);
        let a = if line.starts_with("-L") {
            args(&line)
        } else {
            args(&format!("-h 127.0.0.1 -p {port} {line}"))
        };
        let outs: Vec<Out> = TOOLS.iter().map(|t| run(*t, "sub", &a, b"")).collect();
        let shown = |o: &Out| {
            let mut lines: Vec<String> = o.stdout.lines().map(str::to_string).collect();
            // Retained messages of different topics may come in any order.
            if !line.contains("-N") && !line.contains("--pretty") {
                lines.sort();
            }
            let text = lines.join("\n");
            if masked {
                no_digits(&text)
            } else {
                text
            }
        };
        assert_eq!(
            (outs[0].code, shown(&outs[0]), outs[0].stderr.clone()),
            (outs[1].code, shown(&outs[1]), outs[1].stderr.clone()),
            "sub {line}: mosquitto_sub, then simqtt sub"
        );
    }
}

#[test]
fn live_traffic_flags_agree() {
    let broker = Broker::start();
    let port = broker.p();
    publish(&broker, "-t live/old -m old -r");
    // -R hides the retained message and shows the live one; --retained-only prints the
    // retained one and exits 0 at the first live one.
    for (template, expect) in [
        ("-t live/# -v -R -C 1", vec!["live/new new"]),
        ("-t live/# -v --retained-only", vec!["live/old old"]),
        (
            "-t live/# -v -C 2 -q 1 -c -i live-{T} -x 60 -V 5",
            vec!["live/new new", "live/old old"],
        ),
    ] {
        let subs: Vec<LiveSub> = TOOLS
            .iter()
            .map(|t| {
                let line = template.replace("{T}", t.tag());
                LiveSub::start(*t, &args(&format!("-h 127.0.0.1 -p {port} {line}")))
            })
            .collect();
        publish(&broker, "-t live/new -m new -q 1");
        let results: Vec<(Option<i32>, Vec<String>)> = subs
            .into_iter()
            .map(|s| {
                let (code, mut lines) = s.finish();
                lines.sort();
                (code, lines)
            })
            .collect();
        assert_eq!(results[0], results[1], "sub {template}");
        let expect: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
        assert_eq!(results[0], (Some(0), expect), "sub {template}");
    }
    // A will: a subscriber killed without DISCONNECT leaves its retained will.
    for tool in TOOLS {
        let sub = LiveSub::start(
            tool,
            &args(&format!(
                "-h 127.0.0.1 -p {port} -t nothing -k 5 --will-topic will/{} --will-payload gone --will-qos 1 --will-retain",
                tool.tag()
            )),
        );
        drop(sub); // SIGKILL
    }
    let out = run(
        Tool::Mosquitto,
        "sub",
        &args(&format!("-h 127.0.0.1 -p {port} -t will/# -v -C 2 -W 5")),
        b"",
    );
    let mut wills: Vec<&str> = out.stdout.lines().collect();
    wills.sort();
    assert_eq!(wills, ["will/m gone", "will/s gone"], "{out:?}");
}

#[test]
fn remove_retained_clears_what_it_prints() {
    let broker = Broker::start();
    let port = broker.p();
    let mut printed = Vec::new();
    for tool in TOOLS {
        let t = tool.tag();
        publish(&broker, &format!("-t rr/{t}/a -m A -r"));
        publish(&broker, &format!("-t rr/{t}/b -m B -r"));
        publish(&broker, &format!("-t rr/{t}/keep -m K -r"));
        let out = run(
            tool,
            "sub",
            &args(&format!(
                "-h 127.0.0.1 -p {port} -t rr/{t}/# -T rr/{t}/keep -v -W 2 --remove-retained"
            )),
            b"",
        );
        // (-W, not -C: mosquitto_sub 2.0.11 never exits after -C with --remove-retained.)
        assert_eq!(out.code, Some(27), "{tool:?}: {out:?}");
        let mut lines: Vec<String> = out
            .stdout
            .lines()
            .map(|l| l.replace(&format!("rr/{t}/"), "rr/T/"))
            .collect();
        lines.sort();
        printed.push(lines);
        // Only the filtered-out one is left.
        let left = run(
            Tool::Mosquitto,
            "sub",
            &args(&format!("-h 127.0.0.1 -p {port} -t rr/{t}/# -v -W 1")),
            b"",
        );
        assert_eq!(left.stdout.trim(), format!("rr/{t}/keep K"), "{tool:?}");
    }
    // Each prints the retained messages, then its own removals as they come back.
    assert_eq!(printed[0], printed[1]);
    assert_eq!(
        printed[0],
        ["rr/T/a (null)", "rr/T/a A", "rr/T/b (null)", "rr/T/b B"]
    );
}

/// Where README.md says simqtt differs from mosquitto on purpose, it does, as it says.
#[test]
fn documented_differences() {
    let broker = Broker::start();
    let port = broker.p();
    let base = format!("-h 127.0.0.1 -p {port} -t x -m y");
    // -k 0: legal MQTT (keep alive off), which mosquitto_pub refuses.
    let m = run(Tool::Mosquitto, "pub", &args(&format!("{base} -k 0")), b"");
    let s = run(Tool::Simqtt, "pub", &args(&format!("{base} -k 0")), b"");
    assert_eq!(m.code, Some(1));
    assert!(m.stderr.contains("Invalid keepalive"), "{m:?}");
    assert_eq!(s.code, Some(0), "{s:?}");
    // -x without -V 5: mosquitto ignores it; simqtt refuses it.
    let m = run(Tool::Mosquitto, "pub", &args(&format!("{base} -x 60")), b"");
    let s = run(Tool::Simqtt, "pub", &args(&format!("{base} -x 60")), b"");
    assert_eq!(m.code, Some(0), "{m:?}");
    assert_eq!(s.code, Some(1));
    assert_eq!(
        s.stderr.trim(),
        "Error: -x (session expiry interval) is MQTT 5.0 only; add -V 5."
    );
    // A publish the ACL refuses (5.0 PUBACK 0x87): the same words, a warning and exit 0 from
    // mosquitto_pub, an error and exit 1 from simqtt pub.
    let denied = format!("-h 127.0.0.1 -p {port} -t denied/x -m y -q 1 -V 5 -u alice -P s3cret");
    let m = run(Tool::Mosquitto, "pub", &args(&denied), b"");
    let s = run(Tool::Simqtt, "pub", &args(&denied), b"");
    assert_eq!(
        (m.code, m.stderr.trim()),
        (Some(0), "Warning: Publish 1 failed: Not authorized.")
    );
    assert_eq!(
        (s.code, s.stderr.trim()),
        (Some(1), "Error: Publish 1 failed: Not authorized.")
    );
    // Under 3.1.1 the broker cannot say so: both exit 0.
    let denied = format!("-h 127.0.0.1 -p {port} -t denied/x -m y -q 1 -u alice -P s3cret");
    assert_eq!(
        run(Tool::Mosquitto, "pub", &args(&denied), b"").code,
        Some(0)
    );
    assert_eq!(run(Tool::Simqtt, "pub", &args(&denied), b"").code, Some(0));
    // -L URLs simqtt cannot use (mqtts://, ws:// and wss:// are tests/tls_ws.rs's).
    for (url, said) in [
        ("http://127.0.0.1/x", "Error: Unsupported URL scheme."),
        (
            "mqtt://127.0.0.1",
            "Error: Invalid URL for -L argument specified - topic missing.",
        ),
    ] {
        let s = run(Tool::Simqtt, "pub", &args(&format!("-L {url} -m y")), b"");
        assert_eq!((s.code, s.stderr.trim()), (Some(1), said), "{url}");
    }
}
