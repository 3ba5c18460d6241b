//! Shrinking: a failing (scenario, seed) becomes a small explicit scenario that still fails
//! with the same checker and statement, written as `scenarios/regression/NNNN-short-name.yaml`.
//!
//! 1. **Target**: the failure to keep (a checker and the statement it cites; by default the
//!    run's first failure).
//! 2. **Explicit form** ([`convert`]): a randomised run's drawn plan — its clients, their
//!    subscriptions, every message it handed to a client and every fault the nemesis injected
//!    and healed — is written out as explicit steps at the times the trace shows, and run again
//!    to check that it still fails. Timing is rebuilt approximately (each step costs simulated
//!    time the random run did not spend), so a few variants are tried; the output says which one
//!    kept the failure.
//! 3. **Reduction** ([`reduce`]): delta debugging over the steps, then over clients, message
//!    counts, waits (fault windows are the waits between a fault and its heal), client options
//!    and the quiet period; every candidate must still parse as a scenario and fail the same way.
//! 4. **Output** ([`yaml`]): the scenario serialised with serde_yaml (the `singleton_map` step
//!    form of [`Scenario`]), laid out in the library's compact style, with the seed pinned and a
//!    generated `postmortem:` paragraph for a person to edit.
//!
//! Everything is deterministic: the same input gives the same output file, whatever `jobs` is
//! (candidates are tried in a fixed order, and of a batch run in parallel the first one in that
//! order wins, exactly as a one-at-a-time search would).

pub mod convert;
pub mod reduce;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::scenario::{Capability, Kind, Scenario, Step};
use crate::sim::{self, Failure};

/// The failure a shrink keeps: a checker (or `expect`, for a step's expectation) and the
/// statement it cites.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// The failure's kind: a checker name, or `expect`.
    pub checker: String,
    /// The normative statement (`MQTT-4.3.3-2`); empty for an expectation.
    pub statement: String,
    /// For an expectation: the step's keyword (its number changes as steps go).
    pub step: Option<String>,
}

impl Target {
    /// The target a failure stands for.
    pub fn of(failure: &Failure) -> Target {
        let step = (failure.kind == "expect").then(|| expect_keyword(&failure.owed));
        Target {
            checker: failure.kind.clone(),
            statement: failure.spec.clone(),
            step,
        }
    }

    /// Parses `CHECKER` or `CHECKER:STATEMENT` (as `--target` takes it).
    pub fn parse(text: &str) -> Target {
        let (checker, statement) = text.split_once(':').unwrap_or((text, ""));
        Target {
            checker: checker.trim().to_string(),
            statement: statement.trim().to_string(),
            step: None,
        }
    }

    pub fn matches(&self, failure: &Failure) -> bool {
        failure.kind == self.checker
            && (self.statement.is_empty() || failure.spec == self.statement)
            && self
                .step
                .as_ref()
                .is_none_or(|k| expect_keyword(&failure.owed) == *k)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.checker)?;
        if !self.statement.is_empty() {
            write!(f, " [{}]", self.statement)?;
        }
        if let Some(step) = &self.step {
            write!(f, " ({step})")?;
        }
        Ok(())
    }
}

/// `step 4 (expect_messages)` → `expect_messages`.
fn expect_keyword(owed: &str) -> String {
    owed.rsplit_once('(')
        .map(|(_, k)| k.trim_end_matches(')').to_string())
        .unwrap_or_else(|| owed.to_string())
}

/// Runs a candidate and says how it failed.
pub trait Oracle: Sync {
    fn failures(&self, scenario: &Scenario, seed: u64) -> Vec<Failure>;
}

/// The simulator: deterministic, so one run decides.
pub struct Simulator;

impl Oracle for Simulator {
    fn failures(&self, scenario: &Scenario, seed: u64) -> Vec<Failure> {
        sim::run(scenario, seed).failures
    }
}

/// A candidate keeps the failure when the target is among its failures and the world itself
/// did not break (a `sim` failure means the run could not be carried out).
pub fn reproduces(failures: &[Failure], target: &Target) -> bool {
    failures.iter().any(|f| target.matches(f)) && !failures.iter().any(|f| f.kind == "sim")
}

/// Seeds after the run's own that the explicit form is tried with when it loses the failure
/// under the run's seed (the explicit run draws its latencies in another order anyway, so
/// the seed is one more knob of its timing).
pub const NEARBY_SEEDS: u64 = 4;

/// The first variant of the explicit form that keeps the failure: the run's seed with the
/// estimated waits, calibrated waits, raw waits; then the nearby seeds with estimated and raw
/// waits. Returns it (its seed pinned) and a label for the output.
fn explicit_form(
    conversion: &convert::Conversion,
    seed: u64,
    search: &mut reduce::Search,
) -> Option<(Scenario, String)> {
    use convert::Variant;
    let pinned = |mut s: Scenario, k: u64| {
        s.seed = Some(k);
        s
    };
    let estimated = conversion.explicit(Variant::Estimated, &[]);
    search.check_like(&estimated);
    if search.interesting(&estimated) {
        return Some((estimated, "estimated timing".into()));
    }
    // Measure where the explicit run put each action and correct its waits.
    let mut adjust = Vec::new();
    let mut candidate = estimated;
    for _ in 0..convert::CALIBRATION_ROUNDS {
        let trace = sim::run(&candidate, seed).trace;
        adjust = conversion.calibrate(&candidate, &trace, &adjust);
        candidate = conversion.explicit(Variant::Estimated, &adjust);
        if search.interesting(&candidate) {
            return Some((candidate, "calibrated timing".into()));
        }
    }
    let raw = conversion.explicit(Variant::Raw, &[]);
    if search.interesting(&raw) {
        return Some((raw, "raw timing".into()));
    }
    for k in 1..=NEARBY_SEEDS {
        let other = seed.wrapping_add(k);
        for variant in [Variant::Estimated, Variant::Raw] {
            let c = pinned(conversion.explicit(variant, &[]), other);
            if search.interesting(&c) {
                return Some((c, format!("{} timing, seed {other}", variant.as_str())));
            }
        }
    }
    None
}

/// How a shrink is bounded and run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Candidates run at once (the result does not depend on it).
    pub jobs: usize,
    /// Most candidate runs (a bound on the search, not a clock: the result stays
    /// deterministic).
    pub max_runs: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            jobs: 1,
            max_runs: 4000,
        }
    }
}

/// A finished shrink.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The minimal explicit scenario (seed pinned, postmortem written).
    pub scenario: Scenario,
    pub seed: u64,
    pub target: Target,
    /// The failure as the original run reported it.
    pub original: Failure,
    /// The failure as the minimal scenario reports it.
    pub minimal: Failure,
    /// Steps of the explicit form before reduction (for a randomised input: the drawn plan
    /// written out), and after.
    pub steps_before: usize,
    pub steps_after: usize,
    /// Messages and faults of the randomised run that the explicit form writes out.
    pub drawn: Option<convert::Drawn>,
    /// Which explicit form kept the failure (timing variant and seed).
    pub variant: Option<String>,
    /// Candidate scenarios run.
    pub runs: usize,
}

/// Why a shrink could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShrinkError {
    /// The input run passes (or does not fail with the target).
    NoFailure(String),
    /// The explicit form of a randomised run loses the failure in every variant tried.
    ConversionLost(String),
}

impl fmt::Display for ShrinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShrinkError::NoFailure(t) | ShrinkError::ConversionLost(t) => f.write_str(t),
        }
    }
}

impl std::error::Error for ShrinkError {}

/// Shrinks `scenario` run with `seed` in the simulator, keeping `target` (default: the run's
/// first failure). `origin` says where the input came from, for the postmortem (`replay of
/// scenarios/chaos/x.yaml`).
pub fn shrink(
    scenario: &Scenario,
    seed: u64,
    target: Option<Target>,
    origin: &str,
    options: &Options,
) -> Result<Shrunk, ShrinkError> {
    let (report, heals) = sim::run_observed(scenario, seed);
    let target = match target {
        Some(t) => t,
        // A checker's failure first: it owes only what the trace shows was promised (a will
        // after a connection ended without DISCONNECT), so no candidate keeps it by no longer
        // doing what led to it. A step's expectation is the author's claim about the whole
        // scenario; with the steps that made it true cut away (the partition that should
        // trigger the will), it fails just the same on any broker.
        None => match report
            .failures
            .iter()
            .find(|f| f.kind != "expect")
            .or(report.failures.first())
        {
            Some(f) => Target::of(f),
            None => {
                return Err(ShrinkError::NoFailure(format!(
                    "{} seed {seed} passes: nothing to shrink",
                    scenario.name
                )))
            }
        },
    };
    let Some(original) = report.failures.iter().find(|f| target.matches(f)).cloned() else {
        return Err(ShrinkError::NoFailure(format!(
            "{} seed {seed} does not fail with {target}",
            scenario.name
        )));
    };
    let oracle = Simulator;
    let mut search = reduce::Search::new(&oracle, seed, target.clone(), options);
    let (explicit, drawn, variant) = match scenario.kind() {
        Kind::Explicit => {
            let mut s = scenario.clone();
            s.seed = Some(seed);
            s.seeds = None;
            search.check_like(&s);
            if !search.interesting(&s) {
                return Err(ShrinkError::NoFailure(format!(
                    "{} seed {seed}: the failure does not reproduce",
                    scenario.name
                )));
            }
            (s, None, None)
        }
        Kind::Randomised => {
            let conversion = convert::Conversion::new(scenario, seed, &report.trace, &heals)
                .map_err(ShrinkError::ConversionLost)?;
            let Some((explicit, variant)) = explicit_form(&conversion, seed, &mut search) else {
                return Err(ShrinkError::ConversionLost(format!(
                    "{} seed {seed}: the drawn schedule written out as explicit steps ({} \
                         steps) no longer fails with {target} in any variant tried (timing \
                         estimated, calibrated or raw; seeds {seed} to {}); the randomised file \
                         and seed still reproduce it",
                    scenario.name,
                    conversion
                        .explicit(convert::Variant::Estimated, &[])
                        .steps
                        .len(),
                    seed.wrapping_add(NEARBY_SEEDS),
                )));
            };
            (explicit, Some(conversion.drawn.clone()), Some(variant))
        }
    };
    let steps_before = explicit.steps.len();
    let minimal = search.reduce(explicit);
    // The explicit form may have kept the failure under a nearby seed.
    let input_seed = seed;
    let seed = minimal.seed.unwrap_or(seed);
    let failures = sim::run(&minimal, seed).failures;
    let minimal_failure = failures
        .iter()
        .find(|f| target.matches(f))
        .cloned()
        .unwrap_or_else(|| original.clone());
    let mut minimal = minimal;
    // The file's name is its name.
    minimal.name = String::new();
    minimal.description = description(&target, &minimal_failure);
    minimal.spec = if target.statement.is_empty() {
        scenario.spec.clone()
    } else {
        vec![target.statement.clone()]
    };
    minimal.requires = requires_of(&minimal);
    minimal.postmortem = Some(postmortem_text(
        origin,
        input_seed,
        &target,
        &original,
        &minimal,
        steps_before,
        drawn.as_ref(),
    ));
    Ok(Shrunk {
        steps_after: minimal.steps.len(),
        scenario: minimal,
        seed,
        target,
        original,
        minimal: minimal_failure,
        steps_before,
        drawn,
        variant,
        runs: search.runs(),
    })
}

fn description(target: &Target, failure: &Failure) -> String {
    let mut text = format!("Regression ({}", target.checker);
    if !target.statement.is_empty() {
        text.push_str(&format!(" {}", target.statement));
    }
    text.push_str(&format!(
        "): owed {}; instead {}.",
        failure.owed.trim_end_matches('.'),
        failure.happened.trim_end_matches('.')
    ));
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The capabilities a target needs to run this scenario: what `certify` derives from its
/// content ([`crate::certify::profile::needed`]), plus the fault kinds and the persistence
/// its steps rely on, written out so the regression file says them.
pub fn requires_of(s: &Scenario) -> Vec<Capability> {
    let mut content = s.clone();
    content.requires.clear();
    let mut out = crate::certify::profile::needed(&content);
    for step in &s.steps {
        match step {
            Step::Partition(_) | Step::Loss(_) | Step::Latency(_) => {
                out.insert(Capability::LinkFaults);
            }
            Step::Reset(_)
            | Step::Stall(_)
            | Step::Delay(_)
            | Step::DropPacket(_)
            | Step::DuplicatePacket(_) => {
                out.insert(Capability::ConnectionFaults);
            }
            Step::Kick(_) => {
                out.insert(Capability::Kick);
            }
            _ => {}
        }
    }
    let persistent = s.clients.values().any(|c| !c.clean_session);
    if out.contains(&Capability::BrokerRestart) && s.broker.durable && persistent {
        out.insert(Capability::Persistence);
    }
    out.into_iter().collect()
}

/// A one-line account of a step, for the postmortem.
fn tell(step: &Step) -> String {
    match step {
        Step::Connect(c) => format!("{} connects", c.client),
        Step::Subscribe(s) => format!(
            "{} subscribes to {}",
            s.client,
            s.all_filters()
                .iter()
                .map(|f| format!("{} (QoS {})", f.filter, f.qos.as_u8()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Step::Publish(p) => format!(
            "{} publishes {} QoS {}{} message{} on {}",
            p.client,
            p.count,
            p.qos.as_u8(),
            if p.retain { " retained" } else { "" },
            if p.count == 1 { "" } else { "s" },
            p.topic
        ),
        Step::Disconnect(d) => format!("{} disconnects", d.client),
        Step::CrashBroker(c) if c.power_loss => "the broker loses power".into(),
        Step::CrashBroker(_) => "the broker crashes".into(),
        Step::RestartBroker(_) => "the broker restarts".into(),
        Step::CrashClient(c) => format!("{} crashes", c.client),
        Step::RestartClient(c) => format!("{} restarts", c.client),
        Step::Partition(p) => format!(
            "{} is cut off from {}{}",
            p.a,
            p.b,
            if p.one_way { " (one way)" } else { "" }
        ),
        Step::Heal(h) => match (&h.a, &h.b) {
            (Some(a), Some(b)) => format!("the link {a}–{b} heals"),
            _ => "every fault heals".into(),
        },
        Step::Loss(l) => format!("the link {}–{} loses {}%", l.a, l.b, l.rate * 100.0),
        Step::Latency(l) => format!("the link {}–{} takes {}", l.a, l.b, l.latency),
        Step::Reset(c) => format!("{}'s connection is reset", c.client),
        Step::Stall(c) => format!("{}'s connection stalls", c.client),
        Step::Delay(d) => format!("{}'s connection is delayed by {}", d.client, d.by),
        Step::DropPacket(p) => format!(
            "the next {} {} of {} is dropped",
            direction(p.direction),
            p.packet.as_str().to_uppercase(),
            p.client
        ),
        Step::DuplicatePacket(p) => format!(
            "the next {} {} of {} is sent twice",
            direction(p.direction),
            p.packet.as_str().to_uppercase(),
            p.client
        ),
        Step::Kick(c) => format!("the broker kicks {}", c.client),
        Step::Wait(d) => format!("{d} pass"),
        other => other.keyword().replace('_', " "),
    }
}

fn direction(d: crate::history::Direction) -> &'static str {
    match d {
        crate::history::Direction::Outbound => "outbound",
        crate::history::Direction::Inbound => "inbound",
    }
}

/// The postmortem as one paragraph (single spaces, as a folded YAML block reads back).
#[allow(clippy::too_many_arguments)]
fn postmortem_text(
    origin: &str,
    seed: u64,
    target: &Target,
    original: &Failure,
    minimal: &Scenario,
    steps_before: usize,
    drawn: Option<&convert::Drawn>,
) -> String {
    let mut text = format!(
        "Found by {origin} with seed {seed}: the {} checker",
        target.checker
    );
    if !target.statement.is_empty() {
        text.push_str(&format!(" [{}]", target.statement));
    }
    text.push_str(&format!(
        " reported: {}; owed: {}.",
        original.happened.trim_end_matches('.'),
        original.owed.trim_end_matches('.')
    ));
    if let Some(d) = drawn {
        text.push_str(&format!(
            " The randomised run's plan ({} message{}, {} fault{}) was written out as {steps_before} explicit steps",
            d.messages,
            if d.messages == 1 { "" } else { "s" },
            d.faults,
            if d.faults == 1 { "" } else { "s" },
        ));
        if let Some(k) = minimal.seed.filter(|&k| k != seed) {
            text.push_str(&format!(" (failing with seed {k})"));
        }
    } else {
        text.push_str(&format!(" The scenario had {steps_before} steps"));
    }
    text.push_str(&format!(
        "; shrunk to {} steps, the schedule is: {}; then every fault heals and the run goes quiet for {}.",
        minimal.steps.len(),
        minimal
            .steps
            .iter()
            .map(tell)
            .collect::<Vec<_>>()
            .join("; "),
        minimal.quiesce
    ));
    text.push_str(" Generated by the shrinker: say here what broke, why, and how it was fixed.");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The next free `NNNN` in `dir` (one more than the highest `NNNN-*.yaml` there).
pub fn next_number(dir: &Path) -> u32 {
    let mut highest = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .split_once('-')
                .and_then(|(n, _)| n.parse::<u32>().ok())
            {
                highest = highest.max(n);
            }
        }
    }
    highest + 1
}

/// A short file name for a shrunk failure: `<checker>-<scenario name>`, lowercase, dashes.
pub fn short_name(target: &Target, scenario_name: &str) -> String {
    let raw = format!("{}-{}", target.checker, scenario_name);
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.trim_end_matches('-').chars().take(48).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Writes the shrunk scenario as `dir/NNNN-<short name>.yaml` (NNNN: the next free number),
/// creating `dir`; returns the path. The text is checked to parse back to the same scenario.
pub fn write_regression(
    dir: &Path,
    shrunk: &Shrunk,
    scenario_name: &str,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let number = next_number(dir);
    let path = dir.join(format!(
        "{number:04}-{}.yaml",
        short_name(&shrunk.target, scenario_name)
    ));
    let text = yaml::to_yaml(&shrunk.scenario).map_err(std::io::Error::other)?;
    // Never overwrite: a file with that name means another writer raced us.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests;
