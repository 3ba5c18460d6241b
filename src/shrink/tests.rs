use super::*;
use crate::broker::PlantedBug;
use crate::scenario;

fn library_file(path: &str) -> Scenario {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(path);
    scenario::load(&full).unwrap_or_else(|e| panic!("{e}"))
}

fn planted(path: &str, bug: PlantedBug) -> Scenario {
    let mut s = library_file(path);
    s.broker.planted_bug = Some(bug);
    s
}

fn library_paths(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            library_paths(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

#[test]
fn every_library_scenario_reads_back_the_same_from_the_compact_yaml() {
    let mut files = Vec::new();
    library_paths(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
        &mut files,
    );
    assert!(files.len() > 50);
    for file in files {
        let s = scenario::load(&file).unwrap();
        let text = yaml::to_yaml(&s).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let back = scenario::parse(&file.display().to_string(), &text)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", file.display()));
        let trim = |p: &Option<String>| p.as_ref().map(|t| t.trim_end().to_string());
        assert_eq!(
            (Scenario {
                postmortem: trim(&back.postmortem),
                ..back
            }),
            (Scenario {
                postmortem: trim(&s.postmortem),
                ..s
            }),
            "{}:\n{text}",
            file.display()
        );
    }
}

#[test]
fn compact_yaml_uses_the_short_forms() {
    let s = scenario::parse(
        "x.yaml",
        "clients:\n  sub: {clean_session: false}\n  pub: {}\nsteps:\n  - connect: sub\n  - subscribe: {client: sub, filter: t/#, qos: 2}\n  - crash_broker:\n  - heal:\n  - wait: 500ms\n  - disconnect: sub\n",
    )
    .unwrap();
    let text = yaml::to_yaml(&s).unwrap();
    for line in [
        "  sub: {clean_session: false}",
        "  pub: {}",
        "  - connect: sub",
        "  - subscribe: {client: sub, filter: t/#, qos: 2}",
        "  - crash_broker:",
        "  - heal:",
        "  - wait: 500ms",
        "  - disconnect: sub",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
}

#[test]
fn targets_parse_and_match() {
    let t = Target::parse("qos2:MQTT-4.3.3-2");
    let failure = |kind: &str, spec: &str| Failure {
        kind: kind.into(),
        spec: spec.into(),
        text: String::new(),
        owed: "step 4 (expect_messages)".into(),
        happened: String::new(),
    };
    assert!(t.matches(&failure("qos2", "MQTT-4.3.3-2")));
    assert!(!t.matches(&failure("qos2", "MQTT-4.3.3-10")));
    assert!(!t.matches(&failure("qos1", "MQTT-4.3.3-2")));
    assert!(Target::parse("qos2").matches(&failure("qos2", "MQTT-4.3.3-10")));
    let expect = Target::of(&failure("expect", ""));
    assert_eq!(expect.step.as_deref(), Some("expect_messages"));
    assert!(expect.matches(&failure("expect", "")));
    assert!(reproduces(&[failure("qos2", "MQTT-4.3.3-2")], &t));
    assert!(!reproduces(
        &[failure("qos2", "MQTT-4.3.3-2"), failure("sim", "")],
        &t
    ));
}

#[test]
fn short_names_and_numbers() {
    let t = Target::parse("qos2:MQTT-4.3.3-2");
    assert_eq!(
        short_name(&t, "qos2-broker-crash"),
        "qos2-qos2-broker-crash"
    );
    assert_eq!(short_name(&t, "A b_c!"), "qos2-a-b-c");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(next_number(dir.path()), 1);
    std::fs::write(dir.path().join("0007-x.yaml"), "").unwrap();
    std::fs::write(dir.path().join("README"), "").unwrap();
    assert_eq!(next_number(dir.path()), 8);
}

/// The explicit form of a randomised run writes out every message and fault it drew, parses,
/// and still carries the run's failure: checked on a seed where the planted bug shows.
#[test]
fn a_randomised_run_written_out_as_explicit_steps_still_fails() {
    let s = planted(
        "chaos/qos2-broker-crash.yaml",
        PlantedBug::LoseQos2ReceiveIds,
    );
    let (report, heals) = sim::run_observed(&s, 2);
    let target = Target::parse("qos2:MQTT-4.3.3-2");
    assert!(
        reproduces(&report.failures, &target),
        "seed 2 shows the bug"
    );
    let conversion = convert::Conversion::new(&s, 2, &report.trace, &heals).unwrap();
    let explicit = conversion.explicit(convert::Variant::Estimated, &[]);
    let sent = report
        .trace
        .records
        .iter()
        .filter(|r| matches!(r.event, crate::history::Event::PublishSent { .. }))
        .count();
    let publishes = explicit
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Publish(_)))
        .count();
    assert_eq!(publishes, sent);
    assert_eq!(conversion.drawn.messages, sent);
    assert!(explicit
        .steps
        .iter()
        .any(|s| matches!(s, Step::CrashBroker(_))));
    let text = yaml::to_yaml(&explicit).unwrap();
    let back = scenario::parse("explicit.yaml", &text).unwrap();
    assert_eq!(back.seed, Some(2));
    assert!(reproduces(&sim::run(&back, 2).failures, &target));
}

/// The goal of issue 15, as a test of the result (the time is measured by
/// `cargo bench --bench shrink`): the planted QoS 2 bug found by chaos/qos2-broker-crash
/// shrinks to at most 12 steps that fail with the same checker and statement; the unplanted
/// broker passes that file.
#[test]
fn the_planted_qos2_bug_shrinks_to_a_small_file() {
    let s = planted(
        "chaos/qos2-broker-crash.yaml",
        PlantedBug::LoseQos2ReceiveIds,
    );
    let options = Options {
        jobs: 2,
        ..Options::default()
    };
    let shrunk = shrink(&s, 2, None, "a test", &options).unwrap();
    assert_eq!(shrunk.target, Target::parse("qos2:MQTT-4.3.3-2"));
    assert!(shrunk.steps_after <= 12, "{} steps", shrunk.steps_after);
    assert!(shrunk.steps_after < shrunk.steps_before);
    let text = yaml::to_yaml(&shrunk.scenario).unwrap();
    let file = scenario::parse("0001-x.yaml", &text).unwrap();
    // The file fails with the seed it pins (the shrinker may have had to take a nearby one).
    let seed = file.seed.expect("a regression file pins its seed");
    assert!(
        reproduces(&sim::run(&file, seed).failures, &shrunk.target),
        "{text}"
    );
    let mut fixed = file.clone();
    fixed.broker.planted_bug = None;
    assert!(sim::run(&fixed, seed).passed(), "{text}");
}

#[test]
fn the_planted_will_bug_shrinks_to_a_small_file() {
    let s = planted(
        "chaos/chaos-mixed-v5-wills.yaml",
        PlantedBug::ForgetWillOnKeepalive,
    );
    let shrunk = shrink(&s, 1, None, "a test", &Options::default()).unwrap();
    assert_eq!(shrunk.target, Target::parse("will:MQTT-3.1.2-8"));
    assert!(shrunk.steps_after <= 12, "{} steps", shrunk.steps_after);
    let text = yaml::to_yaml(&shrunk.scenario).unwrap();
    let file = scenario::parse("0001-x.yaml", &text).unwrap();
    let seed = file.seed.expect("a regression file pins its seed");
    assert!(reproduces(&sim::run(&file, seed).failures, &shrunk.target));
    assert!(text.contains("postmortem: >"), "{text}");
}

#[test]
fn a_passing_run_has_nothing_to_shrink() {
    let s = library_file("chaos/qos2-broker-crash.yaml");
    let e = shrink(&s, 2, None, "a test", &Options::default()).unwrap_err();
    assert!(matches!(e, ShrinkError::NoFailure(_)), "{e}");
}

#[test]
fn an_explicit_failing_scenario_shrinks_keeping_its_failure() {
    // A partitioned device's will must reach the monitor; with the planted bug it does not.
    let s = scenario::parse(
        "will.yaml",
        "broker: {planted_bug: forget_will_on_keepalive}
clients:
  device: {keepalive: 2s, will: {topic: status/device, qos: 1}}
  monitor: {}
  other: {}
steps:
  - connect: other
  - connect: monitor
  - subscribe: {client: monitor, filter: status/#, qos: 1}
  - publish: {client: other, topic: x, qos: 1, count: 3}
  - connect: device
  - wait: 1s
  - partition: {a: device}
  - wait: 10s
  - heal:
",
    )
    .unwrap();
    let shrunk = shrink(&s, 0, None, "a test", &Options::default()).unwrap();
    assert_eq!(shrunk.target.checker, "will");
    let text = yaml::to_yaml(&shrunk.scenario).unwrap();
    assert!(shrunk.steps_after < s.steps.len(), "{text}");
    assert!(!shrunk.scenario.clients.contains_key("other"), "{text}");
    // The same file whatever `jobs` is.
    let two = shrink(
        &s,
        0,
        None,
        "a test",
        &Options {
            jobs: 2,
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(yaml::to_yaml(&two.scenario).unwrap(), text);
}
