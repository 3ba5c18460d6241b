//! Every statement the scenario library does not cover has a written reason, and no reason
//! outlives its statement's coverage: `scripts/spec-coverage --check-reasons` against
//! src/certify/spec/uncovered-reasons.tsv (issue 17). The other tests feed it a reasons file
//! with one line taken out or one added, to show the check fails when it should.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn reasons_file() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("src/certify/spec/uncovered-reasons.tsv"))
        .expect("src/certify/spec/uncovered-reasons.tsv")
}

/// Runs the check, with another reasons file when given; (success, stdout).
fn check(reasons: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(ROOT).join("scripts/spec-coverage"))
        .arg("--check-reasons")
        .env_remove("SIMQTT_SPEC_DIR");
    if let Some(path) = reasons {
        cmd.arg("--reasons").arg(path);
    }
    let out = cmd.output().expect("python3 runs scripts/spec-coverage");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "spec-coverage crashed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

fn with_reasons(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reasons.tsv");
    std::fs::write(&path, text).unwrap();
    check(Some(&path))
}

#[test]
fn every_uncovered_statement_has_a_reason_and_none_is_stale() {
    let (ok, out) = check(None);
    assert!(ok, "scripts/spec-coverage --check-reasons:\n{out}");
    assert!(out.contains("MQTT v311: all "), "{out}");
    assert!(out.contains("MQTT v5: all "), "{out}");
}

#[test]
fn an_uncovered_statement_without_a_reason_fails() {
    let text = reasons_file();
    let line = text
        .lines()
        .find(|l| l.starts_with("MQTT-") && l.contains("\tv5\t"))
        .expect("a 5.0 reason");
    let id = line.split('\t').next().unwrap();
    let (ok, out) = with_reasons(&text.replace(&format!("{line}\n"), ""));
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("v5\tno reason\t{id}")), "{out}");
}

#[test]
fn a_reason_for_a_covered_statement_is_stale() {
    // qos/raw-subscribe-many-v5.yaml names MQTT-3.9.3-1.
    let text = reasons_file() + "MQTT-3.9.3-1\tv5\tno longer true\n";
    let (ok, out) = with_reasons(&text);
    assert!(!ok, "{out}");
    assert!(
        out.contains("v5\tstale reason\tMQTT-3.9.3-1\tcovered by "),
        "{out}"
    );
}

#[test]
fn a_malformed_or_repeated_line_fails() {
    let text = reasons_file();
    let line = text
        .lines()
        .find(|l| l.starts_with("MQTT-"))
        .expect("a reason")
        .to_string();
    let (ok, out) = with_reasons(&format!("{text}{line}\n"));
    assert!(!ok, "a repeated line: {out}");
    assert!(out.contains("has a reason already"), "{out}");
    let (ok, out) = with_reasons(&format!("{text}MQTT-1.5.4-1\tv6\tno such version\n"));
    assert!(!ok, "a bad version: {out}");
    assert!(out.contains("want id<TAB>v311|v5<TAB>reason"), "{out}");
}
