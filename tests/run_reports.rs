//! What `simqtt run` hands CI and people (issue 15 parts 3 and 4): JUnit that validates against
//! the schema CI views parse (tests/data/junit.xsd, checked with Python's xmlschema from the
//! venv `scripts/install-peers` makes), failure messages naming statement and checker, shards
//! by (scenario, seed) where an empty one exits 0, names that must be unique, and Markdown and
//! HTML reports that draw each failure's timeline, byte-identical from run to run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod junit_schema;

use junit_schema::validate_junit;

const SIMQTT: &str = env!("CARGO_BIN_EXE_simqtt");

/// A QoS 2 message resent across a broker crash, with the planted bug that forgets QoS 2
/// receive ids on restart (docs/shrinking.md): delivered twice, [MQTT-4.3.3-2] qos2.
const PLANTED_QOS2: &str = "description: planted qos2 bug
spec: [MQTT-4.3.3-2]
broker: {planted_bug: lose_qos2_receive_ids, durable: true}
quiesce: 1s
clients:
  p0: {clean_session: false}
  s1: {clean_session: false}
steps:
  - connect: s1
  - subscribe: {client: s1, filter: t/0, qos: 2}
  - connect: p0
  - publish: {client: p0, topic: t/0, qos: 2}
  - wait: 15ms
  - crash_broker:
";

/// Passes.
const CLEAN: &str = "clients: {c: {}}\nsteps:\n  - connect: c\n  - subscribe: {client: c, filter: a}\nquiesce: 1s\n";

/// A drop rule no packet meets: inconclusive.
const NEVER: &str = "clients: {c: {}}\nsteps:\n  - connect: c\n  - drop_packet: {client: c, packet: unsubscribe}\n  - wait: 1s\nquiesce: 1s\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, text).expect("write scenario");
    path
}

fn simqtt_run(args: &[&str]) -> Output {
    Command::new(SIMQTT)
        .arg("run")
        .args(args)
        .output()
        .expect("run simqtt run")
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn junit_validates_and_names_statement_checker_and_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let planted = write(dir.path(), "qos2-dup.yaml", PLANTED_QOS2);
    write(dir.path(), "clean.yaml", CLEAN);
    write(dir.path(), "never.yaml", NEVER);
    let junit = dir.path().join("junit.xml");
    let out = simqtt_run(&[s(dir.path()), "--junit", s(&junit)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    validate_junit(&junit);
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(
        xml.contains(
            "<testsuites name=\"simqtt run\" tests=\"3\" skipped=\"0\" failures=\"1\" errors=\"1\""
        ),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"[MQTT-4.3.3-2] qos2: 2 copies delivered\" type=\"qos2\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase name=\"seed 0\" classname=\"qos2-dup\" time=\""),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("file=\"{}\"", planted.display())),
        "{xml}"
    );
    assert!(xml.contains("<error message=\"inconclusive: "), "{xml}");
}

#[test]
fn the_schema_check_fails_a_report_that_breaks_it() {
    // The validator is not a rubber stamp: a test case without its classname, and totals that
    // do not add up, are refused.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = write(
        dir.path(),
        "bad.xml",
        "<testsuites tests=\"1\" failures=\"0\" errors=\"0\"><testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\"><testcase name=\"a\"/></testsuite></testsuites>",
    );
    let result = std::panic::catch_unwind(|| validate_junit(&bad));
    assert!(result.is_err(), "a testcase without classname validated");
    let wrong_totals = write(
        dir.path(),
        "totals.xml",
        "<testsuites tests=\"2\" failures=\"0\" errors=\"0\"><testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\"><testcase name=\"a\" classname=\"x\"/></testsuite></testsuites>",
    );
    let result = std::panic::catch_unwind(|| validate_junit(&wrong_totals));
    assert!(result.is_err(), "totals that do not add up validated");
}

#[test]
fn an_empty_shard_exits_0_with_a_note_and_shards_split_seeds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clean = write(dir.path(), "clean.yaml", CLEAN);
    // One explicit scenario, one seed: shard 2 of 2 receives nothing.
    let junit = dir.path().join("empty.xml");
    let out = simqtt_run(&[s(&clean), "--shard", "2/2", "--junit", s(&junit)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("shard 2/2 received none of the 1 (scenario, seed) runs; nothing to do"),
        "{}",
        text(&out)
    );
    validate_junit(&junit);
    // Four seeds of one file over two shards: two each, together all four.
    let mut seeds = Vec::new();
    for shard in ["1/2", "2/2"] {
        let junit = dir.path().join("shard.xml");
        let out = simqtt_run(&[
            s(&clean),
            "--seeds",
            "4",
            "--shard",
            shard,
            "--junit",
            s(&junit),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let xml = std::fs::read_to_string(&junit).expect("junit");
        let mine: Vec<String> = xml
            .split("<testcase name=\"seed ")
            .skip(1)
            .map(|rest| rest.split('"').next().expect("seed").to_string())
            .collect();
        assert_eq!(mine.len(), 2, "shard {shard}: {xml}");
        seeds.extend(mine);
    }
    seeds.sort();
    assert_eq!(seeds, ["0", "1", "2", "3"]);
    // No scenario at all is still a usage error.
    let empty_dir = dir.path().join("none");
    std::fs::create_dir_all(&empty_dir).expect("mkdir");
    let out = simqtt_run(&[s(&empty_dir), "--shard", "1/2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn two_scenario_files_of_one_name_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = write(dir.path(), "a/same.yaml", CLEAN);
    let b = write(dir.path(), "b/same.yaml", CLEAN);
    let out = simqtt_run(&[s(dir.path())]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "{}: scenario name \"same\" is also the name of {}",
            a.display(),
            b.display()
        )),
        "{}",
        text(&out)
    );
}

#[test]
fn the_library_has_no_two_files_of_one_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let out = simqtt_run(&[s(&root), "--filter", "no scenario is named this"]);
    // Loading refuses duplicates before the filter; with none, nothing matches: exit 2 with
    // "no scenarios", not "refused".
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("refused"), "{stderr}");
}

#[test]
fn failures_are_drawn_as_timelines_and_every_failing_seed_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let planted = write(dir.path(), "qos2-dup.yaml", PLANTED_QOS2);
    let (md, html) = (dir.path().join("r.md"), dir.path().join("r.html"));
    let out = simqtt_run(&[
        s(&planted),
        "--seeds",
        "16",
        "--report",
        s(&md),
        "--html",
        s(&html),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The terminal: the message the failure names, its timeline, every failing seed.
    assert!(
        stdout.contains("messages the failures name (1): p0-1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("timeline of the first failure ([MQTT-4.3.3-2] qos2):"),
        "{stdout}"
    );
    assert!(
        stdout.contains("faults → broker  #10 fault broker_crash"),
        "{stdout}"
    );
    let failing: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL qos2-dup ("))
        .map(|l| l.rsplit(' ').next().expect("seed").parse().expect("seed"))
        .collect();
    assert_eq!(failing.len(), 3, "{stdout}");
    let listed = stdout
        .lines()
        .find_map(|l| l.split_once("more failing or inconclusive seeds of qos2-dup: "))
        .map(|(count, seeds)| (count.trim().to_string(), seeds.to_string()))
        .expect("the other failing seeds listed");
    let rest: Vec<&str> = listed.1.split(' ').collect();
    assert_eq!(listed.0, rest.len().to_string(), "{stdout}");
    // Seeds 0..16 of this file fail more than four times: the list is more than one seed.
    assert!(rest.len() > 1, "{stdout}");
    assert!(!stdout.contains("... and"), "{stdout}");
    let summary_failed = stdout
        .lines()
        .find_map(|l| l.split_once(" passed, ").map(|(_, r)| r.to_string()))
        .expect("summary");
    assert!(
        summary_failed.starts_with(&format!("{} failed", 3 + rest.len())),
        "{stdout}"
    );

    // Markdown: a Mermaid sequence diagram per failure, the violation on a red band.
    let report = std::fs::read_to_string(&md).expect("markdown");
    assert!(report.contains("### FAIL qos2-dup seed 0"), "{report}");
    assert!(report.contains("#### [MQTT-4.3.3-2] qos2"), "{report}");
    assert!(
        report.contains("```mermaid\nsequenceDiagram\n    participant L0 as s1\n    participant L1 as p0\n    participant L2 as broker\n    participant L3 as faults\n"),
        "{report}"
    );
    assert!(
        report.contains("    rect rgb(255, 214, 214)\n    L2->>L0: "),
        "{report}"
    );
    assert!(
        report.contains("Note over L0,L3: happened: 2 copies delivered"),
        "{report}"
    );
    // HTML: one file, the same timelines drawn in SVG, nothing fetched, no script.
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert_eq!(
        page.matches("<svg").count(),
        report.matches("```mermaid").count(),
        "{page}"
    );
    assert!(page.contains("fault broker_crash"), "{page}");
    for forbidden in [
        "<script",
        "<link",
        " src=",
        "@import",
        "https://",
        "http://cdn",
    ] {
        assert!(!page.contains(forbidden), "{forbidden} in {page}");
    }
    // The same runs give the same bytes: no clock in either report.
    let again = (dir.path().join("again.md"), dir.path().join("again.html"));
    let out = simqtt_run(&[
        s(&planted),
        "--seeds",
        "16",
        "--report",
        s(&again.0),
        "--html",
        s(&again.1),
        "--jobs",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&again.0).expect("md"), report);
    assert_eq!(std::fs::read_to_string(&again.1).expect("html"), page);
}

#[test]
fn without_a_terminal_progress_is_plain_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clean = write(dir.path(), "clean.yaml", CLEAN);
    let out = simqtt_run(&[s(&clean), "--seeds", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // No carriage returns or terminal escapes in a log.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{stderr:?}"
    );
}

#[test]
fn the_junit_files_of_shards_merge_into_one_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let planted = write(dir.path(), "qos2-dup.yaml", PLANTED_QOS2);
    let clean = write(dir.path(), "clean.yaml", CLEAN);
    // Five seeds of each file (ten runs) over four shards, and the eleventh shard of an
    // eleven-machine matrix, which receives nothing.
    let mut files = Vec::new();
    let mut failed = 0;
    for shard in ["1/4", "2/4", "3/4", "4/4", "11/11"] {
        let junit = dir
            .path()
            .join(format!("shard-{}.xml", shard.replace('/', "-")));
        let out = simqtt_run(&[
            s(&planted),
            s(&clean),
            "--seeds",
            "5",
            "--shard",
            shard,
            "--junit",
            s(&junit),
        ]);
        assert!(matches!(out.status.code(), Some(0 | 1)), "{}", text(&out));
        let xml = std::fs::read_to_string(&junit).expect("junit");
        failed += xml.matches("<failure ").count();
        files.push(junit);
    }
    let merged = dir.path().join("merged.xml");
    let out = Command::new(SIMQTT)
        .arg("junit-merge")
        .arg("--out")
        .arg(&merged)
        .args(&files)
        .output()
        .expect("run simqtt junit-merge");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    validate_junit(&merged);
    let xml = std::fs::read_to_string(&merged).expect("merged");
    // One suite per scenario, every seed once, the totals of them all.
    assert_eq!(xml.matches("<testsuite ").count(), 2, "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), 10, "{xml}");
    assert!(failed > 0, "the planted bug fails some seed");
    assert!(
        xml.contains(&format!(
            "<testsuites name=\"simqtt run\" tests=\"10\" skipped=\"0\" failures=\"{failed}\" errors=\"0\""
        )),
        "{xml}"
    );
    // A file that is not JUnit is refused, and says which.
    let bogus = write(dir.path(), "bogus.xml", "not xml at all");
    let out = Command::new(SIMQTT)
        .arg("junit-merge")
        .arg("--out")
        .arg(dir.path().join("x.xml"))
        .arg(&bogus)
        .output()
        .expect("run simqtt junit-merge");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogus.xml: not a JUnit report"),
        "{}",
        text(&out)
    );
}

#[test]
fn shrink_to_writes_a_regression_file_per_failing_scenario() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "qos2-dup.yaml", PLANTED_QOS2);
    write(dir.path(), "clean.yaml", CLEAN);
    let regressions = dir.path().join("regressions");
    let out = simqtt_run(&[
        s(dir.path()),
        "--seeds",
        "2",
        "--shrink-to",
        s(&regressions),
        "--jobs",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let files: Vec<PathBuf> = std::fs::read_dir(&regressions)
        .expect("regressions written")
        .map(|e| e.expect("entry").path())
        .collect();
    // The planted scenario only: the clean one passes.
    assert_eq!(files.len(), 1, "{files:?}\n{}", text(&out));
    let name = files[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(name.starts_with("0001-qos2-"), "{name}");
    // The regression file fails with the statement and checker kept.
    let junit = dir.path().join("regression.xml");
    let out = simqtt_run(&[s(&files[0]), "--junit", s(&junit)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains("message=\"[MQTT-4.3.3-2] qos2: "), "{xml}");
}
