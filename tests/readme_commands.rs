//! Every command README.md and scenarios/README.md show runs here, so the docs cannot promise
//! what does not work:
//!
//! - each line of a ```sh block runs in bash as written, in a scratch directory that holds the
//!   repository's `scenarios/`, `docs/`, `scripts/` and `adapters/` (so files the commands
//!   write stay out of the checkout), with `simqtt` on the PATH through the README's own `export PATH=…` line.
//!   The one change: the port numbers the examples use (1883, 1884, 1885, 18830, 8883, 8083,
//!   8084) become free ports, the same one for the same number throughout, in the commands and
//!   in the config files they copy (`cp`).
//! - A publish must reach every running subscriber whose filter matches its topic and that is
//!   connected to the same broker (a broker's ports are the ones it prints at start).
//! - Long-running commands (`simqtt broker`, `simqtt proxy`, a `simqtt sub` without -C or -W)
//!   are started, checked to listen or to receive, and stopped at the end.
//! - The README's two commands for a fresh machine are what CI runs: `.ci/run` must hold them
//!   verbatim (`scripts/test` is what runs this test).
//! - ```text blocks are examples the tests do not run; the README must say so just above them.
//! - Every valid YAML example of scenarios/README.md runs in the simulator (the refused ones are
//!   pinned by `src/scenario/tests.rs`).
//!
//! mosquitto must be installed (scripts/install-peers): the certification examples fail, never
//! skip, without it.

mod junit_schema;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use junit_schema::validate_junit;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SIMQTT: &str = env!("CARGO_BIN_EXE_simqtt");
/// The ports the examples name; each becomes a free port.
const EXAMPLE_PORTS: [&str; 7] = ["18830", "1883", "1884", "1885", "8883", "8083", "8084"];

struct Block {
    lang: String,
    /// The lines just above the opening fence.
    preamble: String,
    body: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].strip_prefix("```") {
            let preamble = lines[i.saturating_sub(3)..i].join("\n");
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                body.push(lines[i]);
                i += 1;
            }
            out.push(Block {
                lang: lang.trim().to_string(),
                preamble,
                body: body.join("\n"),
            });
        }
        i += 1;
    }
    out
}

/// The commands of a sh block: continuation lines joined, comments and blank lines dropped.
fn commands(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut exits = None;
    for raw in body.lines() {
        let line = strip_comment(raw);
        // A command shown failing says so: `# exits 1: why` (kept for `expected_exit`).
        if let Some(n) = raw[line.len()..]
            .trim_start_matches(['#', ' '])
            .strip_prefix("exits ")
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        {
            exits = Some(n.to_string());
        }
        if let Some(head) = line.trim_end().strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(&line);
        let mut command = current.trim().to_string();
        current.clear();
        if let Some(n) = exits.take() {
            command.push_str(&format!(" # exits {n}"));
        }
        if !command.is_empty() {
            out.push(command);
        }
    }
    out
}

/// The line up to a `#` that starts a shell comment (after a blank, outside quotes).
fn strip_comment(line: &str) -> String {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return line[..i].to_string(),
            None => {}
        }
        previous = c;
    }
    line.to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process's output lines, collected as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(stream: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let into = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                into.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.count(needle) > 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// A long-running command, stopped with SIGTERM when the walk ends.
struct Running {
    command: String,
    child: Child,
    stdout: Lines,
    stderr: Lines,
    /// A broker's listening ports.
    ports: Vec<u16>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scratch directory the commands run in, and what they started.
struct Walk {
    dir: tempfile::TempDir,
    ports: BTreeMap<&'static str, u16>,
    running: Vec<Running>,
    /// The README's `export PATH=…` line, run before every command.
    path_line: String,
}

impl Walk {
    fn new(path_line: &str) -> Walk {
        let dir = tempfile::tempdir().unwrap();
        for name in ["scenarios", "docs", "scripts", "adapters"] {
            std::os::unix::fs::symlink(Path::new(ROOT).join(name), dir.path().join(name)).unwrap();
        }
        // Where `cargo run --release` leaves the binary; the test's own build stands in.
        let release = dir.path().join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        std::os::unix::fs::symlink(SIMQTT, release.join("simqtt")).unwrap();
        let ports = EXAMPLE_PORTS.iter().map(|p| (*p, free_port())).collect();
        Walk {
            dir,
            ports,
            running: Vec::new(),
            path_line: path_line.to_string(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The command with the example ports replaced (longest first: 18830 before 1883).
    fn localize(&self, command: &str) -> String {
        let mut out = String::new();
        let mut rest = command;
        'scan: while !rest.is_empty() {
            for port in EXAMPLE_PORTS {
                if let Some(after) = rest.strip_prefix(port) {
                    let before_digit = out.chars().next_back().is_some_and(|c| c.is_ascii_digit());
                    let after_digit = after.chars().next().is_some_and(|c| c.is_ascii_digit());
                    if !before_digit && !after_digit {
                        out.push_str(&self.ports[port].to_string());
                        rest = after;
                        continue 'scan;
                    }
                }
            }
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// `command` in bash after the README's PATH line; `exec`: bash becomes the program, so
    /// a signal to the child reaches it.
    fn bash(&self, command: &str, exec: bool) -> Command {
        let mut bash = Command::new("bash");
        let exec = if exec { "exec " } else { "" };
        bash.arg("-c")
            .arg(format!("set -e\n{}\n{exec}{command}", self.path_line))
            .current_dir(self.path())
            .env("SIMQTT", SIMQTT)
            // scripts/install-peers (which certify-peers runs) checks the repository's venv,
            // not one in the scratch directory.
            .env(
                "SIMQTT_VENV",
                std::env::var_os("SIMQTT_VENV")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| Path::new(ROOT).join("target/venv")),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        bash
    }

    fn spawn(&mut self, command: &str, ready: Option<&str>) {
        let mut child = self
            .bash(command, true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        let stdout = Lines::collect(child.stdout.take().unwrap());
        let stderr = Lines::collect(child.stderr.take().unwrap());
        let mut running = Running {
            command: command.to_string(),
            child,
            stdout,
            stderr,
            ports: Vec::new(),
        };
        if let Some(ready) = ready {
            assert!(
                running.stdout.wait_for(ready, Duration::from_secs(20)),
                "{command}: no {ready:?} on stdout; stdout: {}; stderr: {}",
                running.stdout.text(),
                running.stderr.text()
            );
            // A broker prints one line per listener, all before it serves.
            std::thread::sleep(Duration::from_millis(200));
            running.ports = running
                .stdout
                .text()
                .lines()
                .filter_map(|l| l.strip_prefix("simqtt broker listening on "))
                .filter_map(|rest| rest.split(' ').next()?.rsplit(':').next()?.parse().ok())
                .collect();
        }
        self.running.push(running);
    }

    /// Runs to the end; panics unless it exits 0. Returns stdout.
    fn run(&self, command: &str, stdin: Option<&str>) -> String {
        self.run_expecting(command, stdin, 0).0
    }

    /// Runs to the end; panics unless it exits with `expected`. Returns stdout and stderr.
    fn run_expecting(&self, command: &str, stdin: Option<&str>, expected: i32) -> (String, String) {
        let mut child = self
            .bash(command, false)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let stdout = Lines::collect(child.stdout.take().unwrap());
        let stderr = Lines::collect(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{command}: still running after 300 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            status.code() == Some(expected),
            "{command}: {status}, the README says it exits {expected}\nstdout:\n{}\nstderr:\n{}",
            stdout.text(),
            stderr.text()
        );
        (stdout.text(), stderr.text())
    }

    /// The subscribers still running.
    fn subscribers(&self) -> Vec<&Running> {
        self.running
            .iter()
            .filter(|r| r.command.contains("simqtt sub"))
            .collect()
    }

    /// The ports of the running broker that listens on `port` (`None`: no broker does, e.g.
    /// a proxy's port).
    fn broker_ports(&self, port: u16) -> Option<&[u16]> {
        self.running
            .iter()
            .find(|r| r.ports.contains(&port))
            .map(|r| r.ports.as_slice())
    }

    /// The subscribers a publish must reach: filter matching `topic`, on the publisher's
    /// broker (any, when the publisher's port is not a broker's).
    fn subscribers_of(&self, publish: &[&str]) -> Vec<&Running> {
        let Some(topic) = topic_of(publish) else {
            return self.subscribers();
        };
        let broker = port_of(publish).and_then(|p| self.broker_ports(p));
        self.subscribers()
            .into_iter()
            .filter(|s| {
                let words: Vec<&str> = s.command.split_whitespace().collect();
                let matches = topic_of(&words).is_some_and(|f| filter_matches(&f, &topic));
                let same_broker = match (broker, port_of(&words)) {
                    (Some(ports), Some(port)) => ports.contains(&port),
                    _ => true,
                };
                matches && same_broker
            })
            .collect()
    }

    /// After `cp SOURCE DEST`: DEST's example ports become the free ones (a config file).
    fn localize_file(&self, words: &[&str]) {
        if let Some(dest) = words.last() {
            let path = self.path().join(dest);
            if let Ok(text) = std::fs::read_to_string(&path) {
                std::fs::write(&path, self.localize(&text)).unwrap();
            }
        }
    }

    /// Runs one README command and checks what it promises. A command that is shown failing
    /// says so in its comment (`# exits 1: ...`).
    fn step(&mut self, written: &str) {
        let command = self.localize(written);
        let words: Vec<&str> = command.split_whitespace().collect();
        match (words.first().copied(), words.get(1).copied()) {
            (Some("simqtt"), Some("broker")) | (Some("simqtt"), Some("proxy")) => {
                self.spawn(&command, Some("listening on"));
                if words[1] == "proxy" {
                    // What goes through the proxy reaches the broker behind it.
                    let proxy_port = self.ports["1885"];
                    let probe = format!(
                        "simqtt pub -h 127.0.0.1 -p {proxy_port} -t sensors/proxied -m via-proxy -q 1"
                    );
                    self.publish_until_received(&probe, "sensors/proxied via-proxy", 1);
                }
            }
            (Some("simqtt"), Some("sub"))
                if !words
                    .iter()
                    .any(|w| ["-C", "-W", "--retained-only"].contains(w)) =>
            {
                // Checked by the publishes that follow: each is repeated until it shows here.
                self.spawn(&command, None);
            }
            (Some("simqtt"), Some("pub")) if words.contains(&"-e") => {
                // Request/response with nobody answering: -W gives up as mosquitto_rr does.
                let (_, err) = self.run_expecting(&command, None, expected_exit(&command));
                assert_eq!(err.trim(), "Timed out", "{command}");
            }
            (Some("simqtt"), Some("pub")) | (Some("mosquitto_pub"), _) => {
                let expect = expected_delivery(&words);
                let times = words
                    .iter()
                    .position(|w| *w == "--repeat")
                    .and_then(|i| words.get(i + 1))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                if let Some(expect) = expect.filter(|_| !self.subscribers_of(&words).is_empty()) {
                    self.publish_until_received(&command, &expect, times);
                } else {
                    self.run(&command, None);
                }
            }
            (Some("mkdir"), _) | (Some("openssl"), _) => {
                self.run(&command, None);
            }
            (Some("cp"), _) => {
                self.run(&command, None);
                self.localize_file(&words);
            }
            (Some("simqtt"), Some("passwd")) => {
                self.run(&command, Some("s3cret\ns3cret\n"));
                let file = std::fs::read_to_string(self.path().join("passwords")).unwrap();
                assert!(file.starts_with("alice:$7$210000$"), "{file}");
            }
            (Some("simqtt"), Some("decode")) => {
                let out = self.run(&command, None);
                for field in [
                    "MQ Telemetry Transport Protocol, Publish Message",
                    "Msg Len: 10",
                    "Topic: a/b",
                    "Message: 68656c6c6f",
                ] {
                    assert!(out.contains(field), "{command}: no {field:?} in\n{out}");
                }
                assert!(!out.contains("Properties"), "3.1.1 has none:\n{out}");
            }
            (Some("simqtt"), Some("run")) if expected_exit(&command) != 0 => {
                // A run the README shows failing: it fails, and says so.
                let (out, _) = self.run_expecting(&command, None, expected_exit(&command));
                assert!(
                    out.contains("FAIL ") && !out.contains(" 0 failed"),
                    "{command}:\n{out}"
                );
            }
            (Some("simqtt"), Some("replay")) if words.contains(&"--shrink") => {
                // It writes the smaller file it reports (into --out), which still fails.
                let (out, err) = self.run_expecting(&command, None, expected_exit(&command));
                let text = format!("{out}{err}");
                let wrote = text
                    .lines()
                    .find_map(|l| l.strip_prefix("shrink: wrote "))
                    .unwrap_or_else(|| panic!("{command}: no file written:\n{text}"));
                let before_after = text
                    .lines()
                    .find(|l| l.contains(" steps -> "))
                    .unwrap_or_else(|| panic!("{command}: no sizes:\n{text}"));
                let sizes: Vec<usize> = before_after
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                assert!(sizes[1] < sizes[0], "{before_after}");
                if let Some(i) = words.iter().position(|w| *w == "--out") {
                    assert!(wrote.starts_with(words[i + 1]), "{wrote}");
                }
                assert!(self.path().join(wrote.trim()).exists(), "{wrote}");
            }
            (Some("simqtt"), Some("run")) => {
                let out = self.run(&command, None);
                assert!(out.contains(" 0 failed"), "{command}:\n{out}");
                if let Some(i) = words.iter().position(|w| *w == "--junit") {
                    let path = self.path().join(words[i + 1]);
                    let report = std::fs::read_to_string(&path).unwrap();
                    assert!(report.contains("<testsuite"), "{report}");
                    validate_junit(&path);
                }
                if let Some(i) = words.iter().position(|w| *w == "--report") {
                    let report = std::fs::read_to_string(self.path().join(words[i + 1])).unwrap();
                    assert!(report.starts_with("# simqtt run\n"), "{report}");
                }
                if let Some(i) = words.iter().position(|w| *w == "--html") {
                    let page = std::fs::read_to_string(self.path().join(words[i + 1])).unwrap();
                    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
                }
            }
            (Some("simqtt"), Some("junit-merge")) => {
                self.run(&command, None);
                let i = words.iter().position(|w| *w == "--out").expect("--out");
                let path = self.path().join(words[i + 1]);
                validate_junit(&path);
                let merged = std::fs::read_to_string(&path).unwrap();
                // Every input's test cases, in one report.
                let inputs: usize = words[i + 2..]
                    .iter()
                    .map(|f| {
                        std::fs::read_to_string(self.path().join(f))
                            .unwrap()
                            .matches("<testcase ")
                            .count()
                    })
                    .sum();
                assert_eq!(merged.matches("<testcase ").count(), inputs, "{merged}");
            }
            (Some("simqtt"), Some("replay")) => {
                let out = self.run(&command, None);
                assert!(out.contains("PASS "), "{command}:\n{out}");
                let trace = std::fs::read_to_string(self.path().join("run.jsonl")).unwrap();
                assert!(trace.lines().count() > 10, "a trace: {trace}");
            }
            (Some("simqtt"), Some("certify")) => {
                let out = self.run(&command, None);
                assert!(out.contains("certified: yes"), "{command}:\n{out}");
                for file in ["report.md", "report.json", "junit.xml"] {
                    assert!(self.path().join(file).exists(), "{command} wrote no {file}");
                }
                validate_junit(&self.path().join("junit.xml"));
                if let Some(i) = words.iter().position(|w| *w == "--html") {
                    let page = std::fs::read_to_string(self.path().join(words[i + 1])).unwrap();
                    assert!(page.contains("<h2>Normative statements</h2>"), "{page}");
                }
            }
            (Some("simqtt"), Some("certify-client")) => {
                let out = self.run(&command, None);
                assert!(out.contains("certified: yes"), "{command}:\n{out}");
                for (flag, file) in [("--report", "client.md"), ("--junit", "client.xml")] {
                    if words.contains(&flag) {
                        assert!(self.path().join(file).exists(), "{command} wrote no {file}");
                    }
                }
                if words.contains(&"--junit") {
                    validate_junit(&self.path().join("client.xml"));
                }
            }
            (Some("cc"), _) => {
                self.run(&command, None);
            }
            (Some("simqtt"), Some("bench")) => {
                let out = self.run(&command, None);
                assert!(out.contains("acked"), "{command}:\n{out}");
            }
            (Some("scripts/certify-peers"), _) => {
                let out = self.run(&command, None);
                assert!(out.contains("mosquitto  0"), "{command}:\n{out}");
            }
            (Some(program), _) if program.starts_with("scripts/") || program == "simqtt" => {
                self.run(&command, None);
            }
            (Some("export"), _) => {
                assert_eq!(
                    written, self.path_line,
                    "one export line, run before the others"
                );
                let out = self.run("command -v simqtt", None);
                assert_eq!(
                    Path::new(out.trim()),
                    self.path().join("target/release/simqtt"),
                    "the README's PATH line finds the binary `cargo run --release` built"
                );
            }
            _ => panic!("the README shows {written:?}, which this test does not know how to run"),
        }
    }

    /// Runs `command` (a publish) until every running subscriber it must reach prints `line`
    /// `times` times.
    fn publish_until_received(&self, command: &str, line: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let words: Vec<&str> = command.split_whitespace().collect();
        let subscribers = self.subscribers_of(&words);
        loop {
            let before: Vec<usize> = subscribers.iter().map(|s| s.stdout.count(line)).collect();
            self.run(command, None);
            let received = |i: usize, s: &Running| s.stdout.count(line) >= before[i] + times;
            let wait_until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < wait_until
                && !subscribers.iter().enumerate().all(|(i, s)| received(i, s))
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            if subscribers.iter().enumerate().all(|(i, s)| received(i, s)) {
                return;
            }
            // A subscriber that had not subscribed yet missed it: publish again.
            assert!(
                Instant::now() < deadline,
                "{command}: the subscribers never printed {line:?} {times} times: {}",
                subscribers
                    .iter()
                    .map(|s| format!("{}: {}", s.command, s.stdout.text()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// The value of `flag` in a command's words, without shell quotes.
fn flag_value(words: &[&str], flag: &str) -> Option<String> {
    words
        .iter()
        .position(|w| *w == flag)
        .and_then(|i| words.get(i + 1))
        .map(|s| s.trim_matches('\'').trim_matches('"').to_string())
}

/// The topic (a publish) or filter (a subscription) of a pub/sub command: -t, or -L's path.
fn topic_of(words: &[&str]) -> Option<String> {
    flag_value(words, "-t").or_else(|| {
        flag_value(words, "-L")
            .and_then(|url| Some(url.split_once("://")?.1.split_once('/')?.1.to_string()))
    })
}

/// The broker port a pub/sub command connects to: -p, or -L's port, or its scheme's.
fn port_of(words: &[&str]) -> Option<u16> {
    if let Some(p) = flag_value(words, "-p") {
        return p.parse().ok();
    }
    let url = flag_value(words, "-L")?;
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    match authority.rsplit_once(':') {
        Some((_, port)) => port.parse().ok(),
        None => Some(match scheme {
            "mqtts" => 8883,
            "ws" => 80,
            "wss" => 443,
            _ => 1883,
        }),
    }
}

/// MQTT's filter matching (`+` one level, `#` the rest).
fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// What `simqtt sub -v` prints for this publish: "TOPIC PAYLOAD".
fn expected_delivery(words: &[&str]) -> Option<String> {
    let value = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    let topic = value("-t").or_else(|| {
        value("-L").and_then(|url| {
            url.split_once("://")?
                .1
                .split_once('/')
                .map(|(_, t)| t.to_string())
        })
    })?;
    Some(format!("{topic} {}", value("-m")?))
}

fn readme(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(name)).unwrap()
}

/// The README's `export PATH=…` line.
fn path_line(readme: &str) -> String {
    blocks(readme)
        .iter()
        .flat_map(|b| commands(&b.body))
        .find(|c| c.starts_with("export PATH="))
        .expect("the README says how to put simqtt on the PATH")
}

/// Blocks the tests do not run say so.
fn text_blocks_are_marked(name: &str, markdown: &str) {
    for block in blocks(markdown) {
        if block.lang == "text" {
            assert!(
                block
                    .preamble
                    .to_lowercase()
                    .contains("not run by the tests"),
                "{name}: a ```text block without \"not run by the tests\" just above it:\n{}",
                block.body
            );
        }
        assert!(
            ["sh", "text", "yaml", ""].contains(&block.lang.as_str()),
            "{name}: a ```{} block; commands go in ```sh",
            block.lang
        );
    }
}

#[test]
fn every_readme_command_runs() {
    let top = readme("README.md");
    let scenarios = readme("scenarios/README.md");
    text_blocks_are_marked("README.md", &top);
    text_blocks_are_marked("scenarios/README.md", &scenarios);
    let ci = readme(".ci/run");
    let mut walk = Walk::new(&path_line(&top));
    let mut ran = 0;
    for (name, markdown) in [("README.md", &top), ("scenarios/README.md", &scenarios)] {
        for block in blocks(markdown).iter().filter(|b| b.lang == "sh") {
            for command in commands(&block.body) {
                if command == "cargo run --release -- run scenarios/" || command == "scripts/test" {
                    assert!(
                        ci.lines().any(|l| l.trim() == command),
                        "{name} promises `{command}`; .ci/run must run it"
                    );
                    continue;
                }
                walk.step(&command);
                ran += 1;
            }
        }
    }
    // Stop the peer a failed certification example may have left running.
    let _ = walk
        .bash("scripts/peerctl stop target/peer/mosquitto", false)
        .status();
    assert!(ran >= 15, "ran {ran} commands");
}

#[test]
fn the_valid_scenario_examples_run() {
    let scenarios = readme("scenarios/README.md");
    let dir = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for (i, block) in blocks(&scenarios)
        .iter()
        .filter(|b| b.lang == "yaml")
        .enumerate()
    {
        let first = block.body.lines().next().unwrap_or("");
        if first.starts_with("# invalid") || first.starts_with("# fragment") {
            continue;
        }
        let file: PathBuf = dir.path().join(format!("example-{i}.yaml"));
        std::fs::write(&file, &block.body).unwrap();
        let out = Command::new(SIMQTT)
            .args(["run", file.to_str().unwrap(), "--seeds", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "example {i} failed:\n{}\n{}{}",
            block.body,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 5, "ran {ran} examples");
}

#[test]
fn commands_are_read_as_the_shell_reads_them() {
    assert_eq!(
        commands("a 'x/#' -v   # comment\nb \\\n  --c d\n\n# only a comment\n"),
        ["a 'x/#' -v", "b   --c d"]
    );
    let failing = commands("simqtt run x.yaml   # exits 1: a planted bug\n");
    assert_eq!(failing, ["simqtt run x.yaml # exits 1"]);
    assert_eq!(expected_exit(&failing[0]), 1);
    assert_eq!(expected_exit("simqtt run x.yaml"), 0);
    let walk = Walk::new("export PATH=\"$PWD/target/release:$PATH\"");
    let p = walk.ports["1883"];
    let q = walk.ports["18830"];
    assert_eq!(
        walk.localize("simqtt broker --listen 127.0.0.1:1883 mqtt://h:18830/a/18831"),
        format!("simqtt broker --listen 127.0.0.1:{p} mqtt://h:{q}/a/18831")
    );
}

/// The exit status a README command's comment promises (`# exits 1: why`); 0 without one.
fn expected_exit(command: &str) -> i32 {
    command
        .split_once(" # exits ")
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
