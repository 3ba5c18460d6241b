use super::*;
use crate::codec::QoS;
use crate::history::checkers::{CheckerName, MessageRef, Violation};
use crate::history::DisconnectCause;

/// pub publishes m-pub-1 on `rs/#`-matching topic; the broker crashes; sub never receives it.
fn trace() -> Trace {
    let mut t = Trace::new();
    t.push(0, "broker", Event::BrokerStarted { durable: true });
    t.push(
        5,
        "sub",
        Event::Subscribe {
            client: "sub".into(),
            filters: vec![crate::history::FilterRequest {
                filter: "rs/#".into(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
            automatic: false,
        },
    );
    t.push(
        10,
        "pub",
        Event::PublishSent {
            client: "pub".into(),
            id: "m-pub-1".into(),
            topic: "rs/a".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            payload_len: 8,
        },
    );
    t.push(
        11,
        "pub",
        Event::PublishTransmitted {
            client: "pub".into(),
            id: "m-pub-1".into(),
            dup: false,
            packet_id: Some(1),
        },
    );
    t.push(
        20,
        "sim",
        Event::Fault {
            fault: Fault::BrokerCrash { power_loss: true },
        },
    );
    t.push(
        21,
        "sub",
        Event::Disconnected {
            client: "sub".into(),
            cause: DisconnectCause::BrokerCrash,
        },
    );
    t.push(
        1500,
        "pub",
        Event::PublishAcked {
            client: "pub".into(),
            id: "m-pub-1".into(),
            accepted: true,
            reason: "0x00".into(),
        },
    );
    t
}

fn violation() -> Violation {
    Violation {
        checker: CheckerName::Qos1,
        spec: "MQTT-4.3.2-2".into(),
        message: Some(MessageRef {
            publisher: "pub".into(),
            topic: "rs/a".into(),
            id: "m-pub-1".into(),
        }),
        client: Some("sub".into()),
        owed: "at least one delivery of an acknowledged QoS 1 message".into(),
        happened: "never delivered".into(),
        events: vec![3, 6],
    }
}

#[test]
fn reports_name_their_marked_records_and_message() {
    let report = violation().render(&trace());
    assert_eq!(marked_records(&report), vec![3, 6]);
    assert_eq!(message_of(&report), Some("m-pub-1"));
    assert_eq!(
        message_of("step 3 (expect_delivery): nothing arrived"),
        None
    );
}

#[test]
fn a_timeline_has_client_broker_and_fault_lanes_and_marks_the_violation() {
    let v = violation();
    let t = Timeline::from_trace(
        &trace(),
        "[MQTT-4.3.2-2] qos1".into(),
        v.owed.clone(),
        v.happened.clone(),
        &v.events,
    );
    assert_eq!(t.lanes, ["sub", "pub", "broker", "faults"]);
    let marked: Vec<usize> = t
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Event {
                index,
                marked: true,
                ..
            } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(marked, vec![3, 6]);
    let mermaid = t.mermaid();
    assert!(mermaid.starts_with("sequenceDiagram\n"), "{mermaid}");
    assert!(mermaid.contains("participant L0 as sub"), "{mermaid}");
    // The crash is an arrow from the faults to the broker; the pub's PUBLISH an arrow to it.
    assert!(
        mermaid.contains("L3->>L2: 0.020s #35;4 fault broker_crash power_loss=true"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("    rect rgb(255, 214, 214)\n    L1->>L2: 0.011s #35;3 PUBLISH m-pub-1 pid=1\n    end\n"),
        "{mermaid}"
    );
    // `#` and `;` would end a Mermaid statement or start an entity: written as entities.
    assert!(mermaid.contains("SUBSCRIBE rs/#35; q1"), "{mermaid}");
    assert!(
        mermaid.contains("L1-xL2") || mermaid.contains("L0-xL2"),
        "{mermaid}"
    );
    assert!(mermaid.contains("happened: never delivered"), "{mermaid}");
    let text = t.text();
    assert!(
        text.contains(">     0.011s     pub → broker  #3 PUBLISH m-pub-1 pid=1"),
        "{text}"
    );
    let svg = t.svg();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("fill=\"#ffd6d6\"").count(), 2, "{svg}");
}

#[test]
fn the_excerpt_of_a_report_draws_the_same_records() {
    let v = violation();
    let trace = trace();
    let report = v.render(&trace);
    let from_excerpt =
        Timeline::from_excerpt("t".into(), v.owed.clone(), v.happened.clone(), &report);
    let rows: Vec<usize> = from_excerpt
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Event { index, .. } => Some(*index),
            Entry::Gap { .. } => None,
        })
        .collect();
    // The excerpt (radius 2) of records 3 and 6: 1..=6.
    assert_eq!(rows, vec![1, 2, 3, 4, 5, 6]);
    assert!(from_excerpt.mermaid().contains("rect rgb"));
}

#[test]
fn far_records_are_left_out_but_earlier_faults_are_kept() {
    let mut t = trace();
    for i in 0..100 {
        t.push(
            2000 + i,
            "sim",
            Event::Note {
                text: format!("n{i}"),
            },
        );
    }
    let last = t.records.len() - 1;
    let timeline = Timeline::from_trace(&t, "x".into(), "o".into(), "h".into(), &[last]);
    let indices: Vec<usize> = timeline
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Event { index, .. } => Some(*index),
            Entry::Gap { .. } => None,
        })
        .collect();
    // The broker's start and crash, far before, then the ten records before the last.
    assert_eq!(indices[..2], [0, 4]);
    assert_eq!(
        indices[2..],
        (last - RECORDS_BEFORE..=last).collect::<Vec<_>>()[..]
    );
    assert!(matches!(timeline.entries[1], Entry::Gap { skipped: 3 }));
}
