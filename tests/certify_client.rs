//! `simqtt certify-client` against real client processes: simqtt's own client behind
//! `simqtt adapter` (the reference, which must certify clean), the same adapter with a planted
//! client bug (caught, citing the statement it breaks), and Eclipse Paho C behind
//! adapters/paho-c/adapter.c (Debian's libpaho-mqtt-dev), and paho-mqtt 2.x (Python) behind
//! adapters/paho-python/adapter.py (in the venv at `$SIMQTT_VENV`, default target/venv);
//! MQTT.js (npm mqtt 5.16.0 under `$BENCH_PEERS_HOME/node`) behind adapters/mqttjs/adapter.js;
//! `scripts/install-peers` installs them all.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn simqtt() -> &'static str {
    env!("CARGO_BIN_EXE_simqtt")
}

/// Runs certify-client; its exit code and JSON report.
fn certify_client(cmd: &str, profile: &str, paths: &[&str]) -> (i32, Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let output = Command::new(simqtt())
        .current_dir(root())
        .arg("certify-client")
        .args(["--cmd", cmd, "--profile", profile, "--json"])
        .arg(&json)
        .args(paths)
        .output()
        .expect("run simqtt certify-client");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let report = std::fs::read_to_string(&json)
        .map(|t| serde_json::from_str(&t).expect("the JSON report parses"))
        .unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), report, stdout)
}

fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["cases"]
        .as_array()
        .map(|cases| {
            cases
                .iter()
                .map(|c| {
                    (
                        c["scenario"].as_str().unwrap_or("").to_string(),
                        c["verdict"]["status"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (grade, statement, checker) of every finding.
fn findings(report: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for case in report["cases"].as_array().into_iter().flatten() {
        for f in case["findings"].as_array().into_iter().flatten() {
            out.push((
                f["grade"].as_str().unwrap_or("").to_string(),
                f["statement"].as_str().unwrap_or("").to_string(),
                f["checker"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

#[test]
fn simqtt_client_certifies_clean_through_its_adapter() {
    let cmd = format!("{} adapter", simqtt());
    let (code, report, out) = certify_client(
        &cmd,
        "docs/profiles/clients/simqtt.toml",
        &["scenarios/client"],
    );
    let v = verdicts(&report);
    assert!(v.len() >= 4, "every client-side scenario ran: {v:?}\n{out}");
    assert!(
        v.iter().all(|(_, status)| status == "passed"),
        "the reference client passes everything it claims (nothing skipped): {v:?}\n{out}"
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_client_that_never_resubscribes_is_caught() {
    let cmd = format!("{} adapter --fault no-resubscribe", simqtt());
    let (code, report, out) = certify_client(
        &cmd,
        "docs/profiles/clients/simqtt.toml",
        &["scenarios/client/resubscribe-after-reset.yaml"],
    );
    assert_eq!(code, 1, "{out}");
    let f = findings(&report);
    assert!(
        f.contains(&("must".into(), "MQTT-3.2.2-3".into(), "resubscribe".into())),
        "the missing SUBSCRIBE after Session Present 0 is the finding: {f:?}\n{out}"
    );
}

#[test]
fn a_client_that_resends_qos1_without_dup_is_caught() {
    let cmd = format!("{} adapter --fault no-dup", simqtt());
    let (code, report, out) = certify_client(
        &cmd,
        "docs/profiles/clients/simqtt.toml",
        &["scenarios/client/qos1-resend-with-dup.yaml"],
    );
    assert_eq!(code, 1, "{out}");
    let f = findings(&report);
    assert_eq!(
        f,
        vec![("must".into(), "MQTT-3.3.1-1".into(), "client".into())],
        "the resend with DUP 0 is the one finding: {out}"
    );
}

#[test]
fn an_adapter_of_another_protocol_version_is_refused_with_the_reason() {
    // Says it speaks version 2, then waits for commands it will never understand.
    let cmd = r#"echo '{"event":"ready","protocol":2,"client":"future"}'; cat >/dev/null"#;
    let (code, report, out) = certify_client(
        cmd,
        "docs/profiles/clients/simqtt.toml",
        &["scenarios/client/qos1-resend-with-dup.yaml"],
    );
    assert_eq!(code, 2, "refused before any case runs: {out}");
    assert_eq!(report, Value::Null, "no report: nothing ran");
    assert!(
        out.contains("the adapter speaks driver protocol 2; this simqtt speaks 1"),
        "{out}"
    );
}

#[test]
fn a_client_that_never_connects_leaves_the_case_inconclusive() {
    // Speaks the protocol's first line, then does nothing it is asked.
    let cmd = r#"echo '{"event":"ready","protocol":1,"client":"mute"}'; cat >/dev/null"#;
    let (code, report, out) = certify_client(
        cmd,
        "docs/profiles/clients/simqtt.toml",
        &["scenarios/client/qos1-resend-with-dup.yaml"],
    );
    assert_eq!(code, 1, "not certified: {out}");
    let case = &report["cases"][0];
    assert_eq!(case["verdict"]["status"], "inconclusive", "{out}");
    let reason = case["verdict"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("step 3 (connect) could not run: app got no CONNACK"),
        "{reason}"
    );
}

/// adapters/paho-c/adapter.c built against Debian's libpaho-mqtt-dev.
fn paho_c_adapter(dir: &Path) -> PathBuf {
    assert!(
        Path::new("/usr/include/MQTTAsync.h").exists(),
        "Paho C is not installed: run scripts/install-peers (it installs libpaho-mqtt-dev)"
    );
    let exe = dir.join("paho-c-adapter");
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(root().join("adapters/paho-c/adapter.c"))
        .args(["-lpaho-mqtt3a", "-lpthread"])
        .status()
        .expect("run cc");
    assert!(status.success(), "adapters/paho-c/adapter.c compiles");
    exe
}

#[test]
fn paho_c_certifies_under_the_client_side_scenarios() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = paho_c_adapter(dir.path());
    let (code, report, out) = certify_client(
        &exe.display().to_string(),
        "docs/profiles/clients/paho-c.toml",
        &["scenarios/client"],
    );
    let v = verdicts(&report);
    assert!(v.len() >= 4, "every client-side scenario ran: {v:?}\n{out}");
    // docs/client-certification.md records this result: Paho C passes every scenario its
    // profile claims.
    assert!(
        v.iter().all(|(_, status)| status == "passed"),
        "{v:?}\n{out}"
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn paho_python_under_the_client_side_scenarios() {
    // The venv scripts/install-peers makes (the other Python peers' tests use the same).
    let venv = std::env::var_os("SIMQTT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no {}: run scripts/install-peers (it makes the venv with paho-mqtt 2.x)",
        python.display()
    );
    let cmd = format!(
        "{} {}",
        python.display(),
        root().join("adapters/paho-python/adapter.py").display()
    );
    let (code, report, out) = certify_client(
        &cmd,
        "docs/profiles/clients/paho-python.toml",
        &["scenarios/client"],
    );
    let v = verdicts(&report);
    assert!(v.len() >= 4, "every client-side scenario ran: {v:?}\n{out}");
    // docs/client-certification.md records this result: the scenario that needs persistence,
    // which paho-mqtt does not have, is skipped; offline-buffering fails by the client
    // checker's reading of [MQTT-4.3.2-1] (paho-mqtt resends with DUP 1 as the first write of
    // a new clean session a message it had written on a connection never acknowledged; the
    // docs say why that reading is open to question); everything else passes.
    for (scenario, status) in &v {
        let expected = match scenario.as_str() {
            "qos1-resent-after-client-restart" => "skipped",
            "offline-buffering" => "failed",
            _ => "passed",
        };
        assert_eq!(status, expected, "{scenario}: {out}");
    }
    assert_eq!(
        findings(&report),
        vec![("must".into(), "MQTT-4.3.2-1".into(), "client".into())],
        "{out}"
    );
    assert_eq!(code, 1, "{out}");
}

#[test]
fn mqttjs_is_caught_resending_qos1_without_dup() {
    let home = std::env::var_os("BENCH_PEERS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/simqtt-bench-peers")
        });
    let modules = home.join("node/node_modules");
    assert!(
        modules.join("mqtt/package.json").exists(),
        "no MQTT.js under {}: run scripts/install-peers",
        modules.display()
    );
    let cmd = format!(
        "NODE_PATH={} node {}",
        modules.display(),
        root().join("adapters/mqttjs/adapter.js").display()
    );
    let (code, report, out) = certify_client(
        &cmd,
        "docs/profiles/clients/mqttjs.toml",
        &["scenarios/client"],
    );
    let v = verdicts(&report);
    assert!(v.len() >= 4, "every client-side scenario ran: {v:?}\n{out}");
    // docs/client-certification.md, MQTT.js: its store resends an unacknowledged QoS 1
    // PUBLISH after a reconnect with DUP 0 (reproduced with mosquitto -v there). Everything
    // else it claims passes.
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        findings(&report),
        vec![("must".into(), "MQTT-3.3.1-1".into(), "client".into())],
        "{out}"
    );
    for (scenario, status) in &v {
        let expected = match scenario.as_str() {
            "qos1-resend-with-dup" => "failed",
            // No persistence in MQTT.js's default stores: skipped, not run.
            "qos1-resent-after-client-restart" => "skipped",
            _ => "passed",
        };
        assert_eq!(status, expected, "{scenario}: {out}");
    }
}
