//! `simqtt run`'s verdicts as a user meets them: an inconclusive run (a fault that did not take
//! effect) is reported as such and fails the command; a step on a client that cannot be
//! connected is refused before anything runs; a clean run exits 0.

use std::process::Command;

const SIMQTT: &str = env!("CARGO_BIN_EXE_simqtt");

fn run(dir: &std::path::Path, file: &str, text: &str, extra: &[&str]) -> std::process::Output {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write scenario");
    Command::new(SIMQTT)
        .arg("run")
        .arg(&path)
        .args(extra)
        .output()
        .expect("run simqtt run")
}

#[test]
fn an_inconclusive_run_fails_simqtt_run_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("junit.xml");
    // No UNSUBSCRIBE is ever sent: the drop rule meets nothing.
    let out = run(
        dir.path(),
        "never.yaml",
        "clients: {c: {}}\nsteps:\n  - connect: c\n  - drop_packet: {client: c, packet: unsubscribe}\n  - wait: 1s\nquiesce: 1s\n",
        &["--junit", junit.to_str().expect("utf-8 path")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("INCONCLUSIVE never ("), "{stdout}");
    assert!(
        stdout.contains("not confirmed: step 2 (drop_packet unsubscribe outbound on c): no unsubscribe packet went outbound"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 runs, 0 passed, 0 failed, 1 inconclusive"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains("type=\"inconclusive\">"), "{xml}");
    // The same schedule with the UNSUBSCRIBE it waits for passes.
    let out = run(
        dir.path(),
        "met.yaml",
        "clients: {c: {}}\nsteps:\n  - connect: c\n  - subscribe: {client: c, filter: a}\n  - drop_packet: {client: c, packet: unsubscribe}\n  - unsubscribe: {client: c, filter: a}\n  - wait: 1s\nquiesce: 1s\n",
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The dropped UNSUBSCRIBE gets no UNSUBACK: an unmet expectation, but the fault happened.
    assert!(!stdout.contains("INCONCLUSIVE"), "{stdout}");
    assert!(stdout.contains("got no UNSUBACK"), "{stdout}");
}

#[test]
fn a_step_on_a_client_that_cannot_be_connected_is_refused_before_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(
        dir.path(),
        "early.yaml",
        "clients: {pub: {}}\nsteps:\n  - publish: {client: pub, topic: a, qos: 1}\n",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "early.yaml:3:23: step 1 (publish) needs \"pub\" connected, but it was never connected"
        ),
        "{stderr}"
    );
}
