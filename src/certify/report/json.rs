//! The report for tools: the same content as the Markdown (header, summary, every case with
//! its findings and choices, the merged choices, the coverage table with per-version totals)
//! as one JSON document.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{choices, summary, ChoiceTotal, Summary};
use crate::certify::coverage::{coverage, StatementCoverage, Totals};
use crate::certify::statements::{SpecVersion, Statements};
use crate::certify::{CaseResult, Certification, Incident};

/// Bumped when a field changes meaning or goes away (adding fields does not bump it).
pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
struct Report<'a> {
    format_version: u32,
    broker: &'a str,
    broker_version: Option<&'a str>,
    profile: &'a str,
    started: &'a str,
    duration_ms: u64,
    simqtt_version: &'a str,
    certified: bool,
    summary: Summary,
    /// Every time the broker stopped answering well, how, after what, what was done.
    incidents: &'a [Incident],
    cases: &'a [CaseResult],
    choices: Vec<ChoiceTotal>,
    coverage_totals: BTreeMap<SpecVersion, Totals>,
    coverage: Vec<StatementCoverage>,
}

pub fn json(cert: &Certification, statements: &Statements) -> String {
    let cov = coverage(cert, statements);
    let report = Report {
        format_version: FORMAT_VERSION,
        broker: &cert.broker,
        broker_version: cert.broker_version.as_deref(),
        profile: &cert.profile,
        started: &cert.started,
        duration_ms: u64::try_from(cert.duration.as_millis()).unwrap_or(u64::MAX),
        simqtt_version: &cert.simqtt_version,
        certified: cert.certified(),
        summary: summary(cert),
        incidents: &cert.incidents,
        cases: &cert.cases,
        choices: choices(cert),
        coverage_totals: SpecVersion::ALL
            .iter()
            .map(|&v| (v, cov.totals(v)))
            .collect(),
        coverage: cov.statements,
    };
    // Every field is plain data with string keys: serialisation cannot fail.
    serde_json::to_string_pretty(&report).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("report serialisation failed: {e}") }).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certify::report::fixture;
    use serde_json::Value;

    #[test]
    fn same_content_as_the_markdown() {
        let cert = fixture::sample();
        let text = json(&cert, Statements::embedded());
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["broker"], "mqtt://127.0.0.1:1883");
        assert_eq!(v["broker_version"], "mosquitto version 2.0.11");
        assert_eq!(v["certified"], false);
        assert_eq!(v["duration_ms"], 83_400);
        assert_eq!(v["summary"]["must"], 1);
        assert_eq!(v["cases"].as_array().map(Vec::len), Some(7));
        assert_eq!(v["cases"][2]["verdict"]["status"], "failed");
        assert_eq!(v["cases"][2]["findings"][0]["statement"], "MQTT-4.3.3-2");
        assert_eq!(
            v["cases"][4]["verdict"]["reason"],
            "broker_restart: no --restart-cmd was given"
        );
        assert_eq!(v["coverage"].as_array().map(Vec::len), Some(141 + 251));
        assert_eq!(v["coverage_totals"]["3.1.1"]["statements"], 141);
        assert_eq!(v["coverage_totals"]["5.0"]["statements"], 251);
        let failed = v["coverage"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|s| s["version"] == "3.1.1" && s["id"] == "MQTT-4.3.3-2")
            })
            .expect("statement row");
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["cases"][0]["seed"], 3);
        assert_eq!(failed["level"], "MUST");
        assert_eq!(failed["observable"], "yes");
        assert_eq!(v["choices"][0]["checker"], "qos0");
        // Cases deserialise back into the model.
        let back: Vec<CaseResult> =
            serde_json::from_value(v["cases"].clone()).expect("cases round-trip");
        assert_eq!(back, cert.cases);
    }
}
