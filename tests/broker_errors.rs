//! `simqtt broker` as an operator meets it: a config file's mistakes are reported once, naming
//! the setting and the file; paths in a config file are relative to the file; the ACL's
//! refusals are logged at info with who and what; logs piped to a file carry no colour codes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIMQTT: &str = env!("CARGO_BIN_EXE_simqtt");

fn simqtt(args: &[&str], cwd: &Path) -> Output {
    Command::new(SIMQTT)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A running `simqtt broker` (default log level), its stderr collected.
struct Broker {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Broker {
    fn start(args: &[&str], cwd: &Path) -> Broker {
        let mut child = Command::new(SIMQTT)
            .args(["broker", "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let into = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = into.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}; log: {}", log.lock().unwrap()));
        Broker { child, port, log }
    }

    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log.lock().unwrap().clone();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `conf/broker.toml` with `text`, and the password file the tests use next to it.
fn config_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    std::fs::write(dir.path().join("conf/broker.toml"), text).unwrap();
    dir
}

#[test]
fn a_missing_password_file_names_the_setting_and_the_config_file_once() {
    let dir = config_dir("password_file = \"pw\"\nallow_anonymous = false\n");
    let out = simqtt(
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "conf/broker.toml",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "simqtt: password_file = \"pw\" in conf/broker.toml: cannot read conf/pw: No such file or directory (os error 2)"
    );
    // A bad ACL line: the setting, the config file, then the ACL's own file:line.
    std::fs::write(dir.path().join("conf/broker.toml"), "acl_file = \"acl\"\n").unwrap();
    std::fs::write(dir.path().join("conf/acl"), "user\n").unwrap();
    let out = simqtt(
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "conf/broker.toml",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "simqtt: acl_file = \"acl\" in conf/broker.toml: conf/acl:1: expected a user name after `user`"
    );
}

#[test]
fn config_paths_are_relative_to_the_config_file() {
    let dir = config_dir(
        "password_file = \"pw\"\nacl_file = \"acl\"\nallow_anonymous = false\ndata_dir = \"data\"\n",
    );
    let made = simqtt(
        &["passwd", "-c", "-b", "conf/pw", "alice", "s3cret"],
        dir.path(),
    );
    assert!(made.status.success(), "{made:?}");
    std::fs::write(
        dir.path().join("conf/acl"),
        "user alice\ntopic readwrite a/#\n",
    )
    .unwrap();
    // Started from another directory: the files are found next to the config.
    let broker = Broker::start(
        &["--config", "../conf/broker.toml"],
        &dir.path().join("elsewhere"),
    );
    let port = broker.port.to_string();
    let pub_ = |password: &str| {
        simqtt(
            &[
                "pub",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                "alice",
                "-P",
                password,
                "-t",
                "a/b",
                "-m",
                "x",
            ],
            dir.path(),
        )
    };
    assert!(
        pub_("s3cret").status.success(),
        "the password file was loaded"
    );
    assert_eq!(pub_("wrong").status.code(), Some(4), "and is checked");
    assert!(
        dir.path().join("conf/data").is_dir(),
        "data_dir is relative to the config file too"
    );
}

#[test]
fn refusals_are_logged_at_info_with_client_user_and_topic_without_colour() {
    let dir = config_dir("acl_file = \"acl\"\n");
    std::fs::write(
        dir.path().join("conf/acl"),
        "topic read public/#\nuser alice\ntopic readwrite a/#\n",
    )
    .unwrap();
    let broker = Broker::start(&["--config", "conf/broker.toml"], dir.path());
    let port = broker.port.to_string();
    let base = ["-h", "127.0.0.1", "-p", &port];
    let run = |extra: &[&str]| {
        let mut args = vec!["pub"];
        args.extend(base);
        args.extend(extra);
        simqtt(&args, dir.path())
    };
    assert!(
        run(&["-u", "alice", "-i", "pub-1", "-t", "b/secret", "-m", "x"])
            .status
            .success()
    );
    let line = broker.wait_log("publish refused");
    for part in [
        "INFO",
        "client_id=\"pub-1\"",
        "user=\"alice\"",
        "topic=b/secret",
        "not allowed by the ACL",
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    assert!(run(&["-i", "anon-1", "-t", "public/x", "-m", "x"])
        .status
        .success());
    let line = broker.wait_log("client_id=\"anon-1\"");
    assert!(line.contains("user=\"(anonymous)\""), "{line}");
    let sub = simqtt(
        &[
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "alice",
            "-i",
            "sub-1",
            "-t",
            "b/#",
            "-W",
            "1",
        ],
        dir.path(),
    );
    assert_eq!(
        String::from_utf8_lossy(&sub.stderr).trim(),
        "All subscription requests were denied."
    );
    let line = broker.wait_log("subscribe refused");
    for part in ["INFO", "client_id=\"sub-1\"", "user=\"alice\"", "topic=b/#"] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    let log = broker.log.lock().unwrap().clone();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a piped log:\n{log:?}"
    );
}
