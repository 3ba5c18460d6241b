//! `scripts/certify-compare`: two `simqtt certify --json` reports, case by case.

use std::path::Path;
use std::process::Command;

fn case(name: &str, seed: Option<u64>, status: &str, findings: &[(&str, &str)]) -> String {
    let findings: Vec<String> = findings
        .iter()
        .map(|(statement, checker)| {
            format!(
                r#"{{"grade":"must","statement":"{statement}","checker":"{checker}","owed":"","observed":"","excerpt":""}}"#
            )
        })
        .collect();
    let seed = seed.map_or("null".to_string(), |s| s.to_string());
    format!(
        r#"{{"scenario":"{name}","seed":{seed},"verdict":{{"status":"{status}"}},"findings":[{}]}}"#,
        findings.join(",")
    )
}

fn report(dir: &Path, name: &str, ms: u64, cases: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(r#"{{"duration_ms":{ms},"cases":[{}]}}"#, cases.join(",")),
    )
    .unwrap();
    path.display().to_string()
}

fn compare(args: &[&str]) -> (i32, String) {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/certify-compare"
    ))
    .args(args)
    .output()
    .expect("python3 runs scripts/certify-compare");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn same_verdicts_pass_and_every_difference_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let old = report(
        dir.path(),
        "old.json",
        277_000,
        &[
            case("a", Some(0), "passed", &[]),
            case("b", Some(1), "failed", &[("MQTT-4.3.3-2", "qos2")]),
            case("c", None, "skipped", &[]),
        ],
    );
    let same = report(
        dir.path(),
        "same.json",
        55_000,
        &[
            case("c", None, "skipped", &[]),
            case("a", Some(0), "passed", &[]),
            case("b", Some(1), "failed", &[("MQTT-4.3.3-2", "qos2")]),
        ],
    );
    let (code, out) = compare(&[&old, &same, "--findings"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 cases, 0 differ"), "{out}");
    assert!(
        out.contains("OLD 277.0 s") && out.contains("NEW 55.0 s"),
        "{out}"
    );

    // A verdict that changed, a case missing, and (with --findings) another statement broken.
    let other = report(
        dir.path(),
        "other.json",
        50_000,
        &[
            case("a", Some(0), "inconclusive", &[]),
            case("b", Some(1), "failed", &[("MQTT-4.3.3-3", "qos2")]),
        ],
    );
    let (code, out) = compare(&[&old, &other]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("a seed 0: passed -> inconclusive"), "{out}");
    assert!(out.contains("c: only in OLD"), "{out}");
    assert!(
        !out.contains("b seed 1"),
        "findings compared only with --findings: {out}"
    );
    let (code, out) = compare(&[&old, &other, "--findings"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("b seed 1: failed in both, other findings"),
        "{out}"
    );
    assert!(out.contains("only OLD: must MQTT-4.3.3-2 qos2"), "{out}");
    assert!(out.contains("3 cases, 3 differ"), "{out}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"cases\": 3}").unwrap();
    let bad = bad.display().to_string();
    let (code, out) = compare(&[&bad, &bad]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("is not a `simqtt certify --json` report"),
        "{out}"
    );
    let (code, out) = compare(&["only-one.json"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("usage:"), "{out}");
}
