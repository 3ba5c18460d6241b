//! Shared by the certification tests: a broker process started (and restarted) by a shell
//! script, as `simqtt certify --restart-cmd` drives it, and the library cases to run.

#![allow(dead_code)] // each test file uses part of it

pub mod fake;

use std::path::{Path, PathBuf};
use std::time::Duration;

use simqtt::certify::profile::Profile;
use simqtt::certify::runner::{self, Options};
use simqtt::certify::{CaseResult, Certification, Grade, Verdict};
use simqtt::scenario::{self, Scenario};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A broker run by `restart.sh` in its own directory: the script stops the running one (pid
/// file, signal `stop_signal`, bounded wait) and starts another in the background. The test
/// starts it with the same script certify restarts it with.
pub struct ScriptedBroker {
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl ScriptedBroker {
    /// `start` is the shell command that runs the broker in the foreground (the script puts
    /// it in the background and records its pid).
    pub fn start(port: u16, dir: tempfile::TempDir, start: &str, stop_signal: &str) -> Self {
        let d = dir.path().display();
        let script = format!(
            "#!/bin/sh\n\
             # Stops the broker (if running) and starts it again; certify's --restart-cmd.\n\
             if [ -f {d}/pid ]; then\n\
             \x20 pid=$(cat {d}/pid)\n\
             \x20 kill -{stop_signal} \"$pid\" 2>/dev/null\n\
             \x20 # Gone, or a zombie (it has let go of its port; PID 1 may be slow to reap it).\n\
             \x20 for i in $(seq 200); do\n\
             \x20   grep -qs '^State:[[:space:]]*[^Z]' /proc/$pid/status || break; sleep 0.05\n\
             \x20 done\n\
             fi\n\
             {start} >>{d}/broker.log 2>&1 &\n\
             echo $! > {d}/pid\n"
        );
        let path = dir.path().join("restart.sh");
        std::fs::write(&path, script).expect("write restart.sh");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod restart.sh");
        }
        let broker = ScriptedBroker { port, dir };
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(broker.restart_cmd())
            .status()
            .expect("run restart.sh");
        assert!(status.success(), "restart.sh failed: {status}");
        simqtt::certify::tcp::wait_for_port(broker.addr(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
        broker
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn restart_cmd(&self) -> String {
        self.dir.path().join("restart.sh").display().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for ScriptedBroker {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.trim())
                .status();
        }
    }
}

/// mosquitto on a free loopback port, started and restarted by a script that stops it with
/// `stop_signal`. With `persistence`, mosquitto saves its database when it exits on SIGTERM and
/// every `autosave_interval` (1800 s by default: never within a test), so a SIGKILL loses what
/// changed since it started.
pub fn mosquitto(persistence: bool, stop_signal: &str) -> ScriptedBroker {
    assert!(
        Path::new(MOSQUITTO).exists(),
        "{MOSQUITTO} is missing: install the mosquitto package (scripts/install-peers does)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    // Started as root, mosquitto drops to its own user; it must still write its database.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod temp dir");
    }
    let port = free_port();
    let mut config = format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n");
    if persistence {
        config.push_str(&format!(
            "persistence true\npersistence_location {}/\n",
            dir.path().display()
        ));
    } else {
        config.push_str("persistence false\n");
    }
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, config).expect("write mosquitto.conf");
    let start = format!("{MOSQUITTO} -c {}", conf.display());
    ScriptedBroker::start(port, dir, &start, stop_signal)
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Scenario files by path under `scenarios/`, parsed.
pub fn scenarios(names: &[&str]) -> Vec<(PathBuf, Scenario)> {
    names
        .iter()
        .map(|name| {
            let path = root().join("scenarios").join(name);
            let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            (path, s)
        })
        .collect()
}

/// Every scenario file of the library, sorted.
pub fn library() -> Vec<(PathBuf, Scenario)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read scenarios") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("scenarios"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            (path, s)
        })
        .collect()
}

pub fn options(broker: &ScriptedBroker, profile: &str, jobs: usize) -> Options {
    Options {
        broker_url: format!("mqtt://127.0.0.1:{}", broker.port),
        broker: broker.addr(),
        endpoint: Default::default(),
        username: None,
        password: None,
        restart_cmd: Some(broker.restart_cmd()),
        profile: Profile::from_file(&root().join("docs/profiles").join(profile)).expect("profile"),
        profile_file: None,
        seeds: 1,
        seed: None,
        jobs,
        traces: None,
    }
}

pub fn certify(scenarios: &[(PathBuf, Scenario)], options: &Options) -> Certification {
    let cases = runner::plan(scenarios, options);
    runner::certify(
        cases,
        options,
        runner::broker_version(options),
        |_, _, _| {},
    )
}

/// Every failing case with its findings, for assertion messages.
pub fn failures(cert: &Certification) -> String {
    let mut out = String::new();
    // Inconclusive cases too: `certified()` refuses them, and a failed assertion that names
    // no case would leave the reader nothing to rerun.
    for case in cert.cases.iter().filter(|c| c.failed() || c.inconclusive()) {
        out.push_str(&describe(case));
    }
    out
}

pub fn describe(case: &CaseResult) -> String {
    let mut out = format!(
        "{} seed {:?}: {:?}\n",
        case.scenario, case.seed, case.verdict
    );
    for f in &case.findings {
        out.push_str(&format!(
            "  {:?} [{}] {}: {} (owed: {})\n{}\n",
            f.grade, f.statement, f.checker, f.observed, f.owed, f.excerpt
        ));
    }
    out
}

pub fn case<'a>(cases: &'a [CaseResult], scenario: &str) -> &'a CaseResult {
    cases
        .iter()
        .find(|c| c.scenario == scenario)
        .unwrap_or_else(|| panic!("no case {scenario}"))
}

pub fn passed(case: &CaseResult) -> bool {
    matches!(case.verdict, Verdict::Passed)
}

/// The case has a MUST finding citing `statement` from `checker`.
pub fn has_must(case: &CaseResult, checker: &str, statement: &str) -> bool {
    case.findings.iter().any(|f| {
        f.grade == Grade::Must && f.checker == checker && f.statement_ids().any(|s| s == statement)
    })
}
