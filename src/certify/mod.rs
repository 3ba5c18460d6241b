//! Target #2: certification of a real broker over TCP.
//!
//! The same scenario files and the same step executor as the simulator (`sim`), with a real
//! clock, real TCP through the built-in fault proxy (`transport::proxy`), and the broker under
//! test instead of the simqtt broker. The checkers read the same trace; their violations are
//! then graded by what the spec says (MUST / SHOULD / an allowed alternative) and mapped onto
//! the normative statements of MQTT 3.1.1 and 5.0 for the reports.
//!
//! Layout:
//! - this file: the result model every part shares (runner → grading → reports);
//! - [`profile`]: what the broker under test declares it supports (TOML or flags) and why a
//!   scenario is skipped;
//! - [`statements`]: the normative statement index of both specs (embedded TSV);
//! - [`grade`]: a finished run → graded findings and the alternatives the broker chose;
//! - [`citations`]: which statements a step or checker may cite (checked by tests over the
//!   library), and what the broker does in a step;
//! - [`coverage`]: statement → scenarios that test it, and their verdicts;
//! - [`report`]: terminal summary, JUnit XML, Markdown, JSON;
//! - [`runner`]: runs scenarios against the target (phases, seeds, isolation, progress), and
//!   handles the broker stopping answering (reruns, the robustness finding, cascades);
//! - [`liveness`]: the guard that checks the broker still answers well;
//! - [`tcp`]: the real-TCP backend of the step executor (fault proxies, restart command).

pub mod citations;
pub mod coverage;
pub mod grade;
pub mod liveness;
pub mod profile;
pub mod report;
pub mod runner;
pub mod statements;
pub mod tcp;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::history::checkers::CheckerName;
use statements::SpecVersion;

/// How bad a finding is, by the level of the statement it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    /// A MUST / MUST NOT statement broken: fails certification.
    Must,
    /// A SHOULD / SHOULD NOT statement not followed: reported, does not fail.
    Should,
    /// The runner could not carry the scenario out (the broker refused a connection the
    /// scenario needs, a step timed out before anything could be judged): fails, because
    /// nothing was certified, and says so apart from spec violations.
    Error,
}

/// One graded deviation found in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub grade: Grade,
    /// The one statement broken (`MQTT-4.3.3-2`), or empty when none applies (an `Error`, or a
    /// step of a scenario that names no statement).
    pub statement: String,
    /// The checker (`qos2`, `will`, …), `expect` for a step's expectation, `runner`.
    pub checker: String,
    /// What the spec owed, one line.
    pub owed: String,
    /// What the broker did instead, one line.
    pub observed: String,
    /// The trace records around it (rendered text).
    pub excerpt: String,
}

/// A permitted behaviour the broker chose where the spec leaves a choice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Choice {
    pub checker: String,
    /// E.g. "one copy per overlapping subscription".
    pub text: String,
    pub count: usize,
}

/// What became of one scenario × seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// Ran; no MUST or Error finding (SHOULD findings may be present).
    Passed,
    /// Ran; at least one MUST or Error finding.
    Failed,
    /// Not run: why (an unmet `requires:` and what the profile lacks).
    Skipped { reason: String },
    /// Ran, but proves nothing either way: a fault or control step of the case did not take
    /// effect (a kick that disconnected nobody), or the broker stopped answering while the
    /// case ran and it could not be rerun. Never a pass; the findings the run produced are
    /// set aside (`CaseResult::set_aside`), not charged to the broker.
    Inconclusive { reason: String },
}

/// Findings a run produced that are not charged to the broker, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAside {
    /// E.g. "step 4 (kick sub) did not take effect", or "cascade: seen after the broker
    /// degraded (after case X); gone when the case was rerun alone on a restarted broker".
    pub reason: String,
    pub findings: Vec<Finding>,
}

/// The broker stopped answering well during the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// `crashed` (new connections refused and held ones dropped) or `degraded` (new
    /// connections refused or unanswered while held ones live on).
    pub kind: IncidentKind,
    /// What the probe saw.
    pub detail: String,
    /// The cases that were running (or had just ended) when it happened.
    pub during: Vec<String>,
    /// The case (and step) whose input did it, when a rerun alone reproduced it.
    pub culprit: Option<String>,
    /// The restart command brought it back (false: no command, or it did not).
    pub restarted: bool,
    /// Cases rerun alone on the restarted broker because of it.
    pub rerun: Vec<String>,
}

/// How the broker stopped answering well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    Crashed,
    Degraded,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Crashed => "crashed",
            IncidentKind::Degraded => "degraded",
        }
    }
}

/// One scenario × seed against the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseResult {
    /// Scenario name (file stem unless the file names it).
    pub scenario: String,
    pub file: PathBuf,
    /// `None` for a skipped scenario (no seed was drawn).
    pub seed: Option<u64>,
    /// The statements the scenario declares it exercises (`spec:`).
    pub spec: Vec<String>,
    /// The checkers that judged something in this scenario
    /// (`coverage::relevant_checkers(scenario)`): coverage counts the statements each can cite
    /// as tested by this case. (`scenario.checker_list()` would also count checkers that pass
    /// vacuously, e.g. the will checker in a scenario without wills.)
    #[serde(default)]
    pub checkers: Vec<CheckerName>,
    /// The spec versions its clients speak (`coverage::scenario_versions(scenario)`): the same
    /// id names different statements in 3.1.1 and 5.0.
    #[serde(default)]
    pub versions: Vec<SpecVersion>,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
    /// Findings of this case's runs that are not charged to the broker (an inconclusive
    /// run's, or a cascade that vanished when the case was rerun alone), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_aside: Vec<SetAside>,
    pub choices: Vec<Choice>,
    /// Wall time the run took.
    #[serde(with = "duration_ms")]
    pub duration: Duration,
    /// The replay/rerun hint: the command that runs just this case again.
    pub rerun: String,
}

impl CaseResult {
    pub fn failed(&self) -> bool {
        matches!(self.verdict, Verdict::Failed)
    }

    pub fn inconclusive(&self) -> bool {
        matches!(self.verdict, Verdict::Inconclusive { .. })
    }
}

/// A whole certification run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certification {
    /// `mqtt://HOST:PORT` as given.
    pub broker: String,
    /// From `$SYS/broker/version` where the broker offers it.
    pub broker_version: Option<String>,
    /// The profile name and its declared capabilities, as text for the report header.
    pub profile: String,
    /// UTC date and time the run started, RFC 3339.
    pub started: String,
    #[serde(with = "duration_ms")]
    pub duration: Duration,
    /// simqtt's own version (`CARGO_PKG_VERSION`).
    pub simqtt_version: String,
    pub cases: Vec<CaseResult>,
    /// Every time the broker stopped answering well (crashed or degraded), in order.
    #[serde(default)]
    pub incidents: Vec<Incident>,
}

impl Certification {
    /// Certified when no case failed and none was inconclusive (SHOULD findings and skips
    /// with their reasons do not fail it; an inconclusive case certified nothing).
    pub fn certified(&self) -> bool {
        !self.cases.iter().any(|c| c.failed() || c.inconclusive())
    }
}

/// Durations as whole milliseconds in JSON.
mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
