//! The normative statements of MQTT 3.1.1 and 5.0, embedded from the repository's index in
//! `src/certify/spec/mqtt-*-statements.tsv` (its README says how each column was judged,
//! including the `role` column this repository adds: which side of a packet exchange a
//! statement binds; `scripts/spec-coverage` reads the same files).
//!
//! The same id can name different rules in the two versions (`MQTT-3.3.1-9` is "RETAIN 0 on a
//! forward" in 3.1.1 and a Retain Handling rule in 5.0), so every lookup takes the version, and
//! [`Statements::find`] returns one statement per version that has the id.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::codec::ProtocolVersion;

const V311_TSV: &str = include_str!("spec/mqtt-3.1.1-statements.tsv");
const V5_TSV: &str = include_str!("spec/mqtt-5.0-statements.tsv");

/// A version of the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SpecVersion {
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5.0")]
    V5,
}

impl SpecVersion {
    pub const ALL: [SpecVersion; 2] = [SpecVersion::V311, SpecVersion::V5];

    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V311 => "3.1.1",
            SpecVersion::V5 => "5.0",
        }
    }
}

impl From<ProtocolVersion> for SpecVersion {
    fn from(v: ProtocolVersion) -> SpecVersion {
        match v {
            ProtocolVersion::V311 => SpecVersion::V311,
            ProtocolVersion::V5 => SpecVersion::V5,
        }
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The strongest keyword of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    #[serde(rename = "MUST")]
    Must,
    #[serde(rename = "MUST NOT")]
    MustNot,
    #[serde(rename = "SHOULD")]
    Should,
    #[serde(rename = "SHOULD NOT")]
    ShouldNot,
    #[serde(rename = "MAY")]
    May,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "MUST" => Level::Must,
            "MUST NOT" => Level::MustNot,
            "SHOULD" => Level::Should,
            "SHOULD NOT" => Level::ShouldNot,
            "MAY" => Level::May,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::MustNot => "MUST NOT",
            Level::Should => "SHOULD",
            Level::ShouldNot => "SHOULD NOT",
            Level::May => "MAY",
        }
    }

    /// Mandatory: breaking it fails certification.
    pub fn mandatory(self) -> bool {
        matches!(self, Level::Must | Level::MustNot)
    }

    /// Recommended: not following it is a deviation that is reported but does not fail.
    pub fn recommended(self) -> bool {
        matches!(self, Level::Should | Level::ShouldNot)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whom a statement obliges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Client,
    Server,
    /// Either side, as sender or receiver.
    Both,
}

impl Actor {
    pub fn parse(s: &str) -> Option<Actor> {
        Some(match s {
            "client" => Actor::Client,
            "server" => Actor::Server,
            "both" => Actor::Both,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Client => "client",
            Actor::Server => "server",
            Actor::Both => "both",
        }
    }
}

/// Which side of a packet exchange a statement binds, as its `actor` takes that side.
///
/// A broker is judged in both roles: it receives what a scenario's client sends and sends
/// what the client receives. A statement that binds only the sender of a packet (how it is
/// encoded, what it may carry) says nothing about what its receiver must do with a packet that
/// breaks it; that is the receiver's own statement, where the spec has one (e.g. 3.1.1
/// [MQTT-4.8.0-1], 5.0 [MQTT-4.13.1-1]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The side that sends the packet or field it is about.
    Sender,
    /// The side that receives it: how it validates it, answers it, acts on it.
    Receiver,
    /// Both: a content rule and the receiver's duty in one statement.
    Both,
    /// Not tied to one side of a packet exchange (state kept, matching, ordering, timing).
    Any,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "sender" => Role::Sender,
            "receiver" => Role::Receiver,
            "both" => Role::Both,
            "any" => Role::Any,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
            Role::Both => "both",
            Role::Any => "any",
        }
    }

    /// Binds the receiver of the packet it is about (alone or with the sender).
    pub fn binds_receiver(self) -> bool {
        !matches!(self, Role::Sender)
    }
}

/// Whether a black-box test talking to a broker over the network can show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observable {
    Yes,
    /// Only in some cases (an optional feature or configuration, timing, size limits).
    Partly,
    /// Obliges only clients, or is not visible from outside.
    No,
}

impl Observable {
    pub fn parse(s: &str) -> Option<Observable> {
        Some(match s {
            "yes" => Observable::Yes,
            "partly" => Observable::Partly,
            "no" => Observable::No,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Observable::Yes => "yes",
            Observable::Partly => "partly",
            Observable::No => "no",
        }
    }
}

/// One numbered normative statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub version: SpecVersion,
    /// `MQTT-3.1.2-24`.
    pub id: String,
    /// The deepest section holding it, number and title (`3.1.2.10 Keep Alive`).
    pub section: String,
    pub actor: Actor,
    pub level: Level,
    pub observable: Observable,
    /// A short paraphrase (not the normative text).
    pub summary: String,
    /// Which side of the exchange it binds (the index's last column).
    pub role: Role,
}

impl Statement {
    /// The section number alone (`3.1.2.10`).
    pub fn section_number(&self) -> &str {
        self.section.split(' ').next().unwrap_or("")
    }
}

/// The statement index of both versions, in document order per version.
#[derive(Debug, Clone)]
pub struct Statements {
    v311: Vec<Statement>,
    v5: Vec<Statement>,
    by_id: BTreeMap<(SpecVersion, String), usize>,
}

/// A row the TSV parser refused: its line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsvError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for TsvError {}

/// Parses one statement TSV (header first, `#` comment lines skipped).
pub fn parse_tsv(version: SpecVersion, text: &str) -> Result<Vec<Statement>, TsvError> {
    let mut out = Vec::new();
    let mut header_seen = false;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if !header_seen {
            header_seen = true;
            if cols.first() == Some(&"id") {
                continue;
            }
        }
        let err = |message: String| TsvError {
            line: line_no,
            message,
        };
        let [id, section, actor, level, observable, summary, role] = cols[..] else {
            return Err(err(format!("expected 7 columns, found {}", cols.len())));
        };
        out.push(Statement {
            version,
            id: id.to_string(),
            section: section.to_string(),
            actor: Actor::parse(actor).ok_or_else(|| err(format!("unknown actor {actor:?}")))?,
            level: Level::parse(level).ok_or_else(|| err(format!("unknown level {level:?}")))?,
            observable: Observable::parse(observable)
                .ok_or_else(|| err(format!("unknown observable {observable:?}")))?,
            summary: summary.to_string(),
            role: Role::parse(role).ok_or_else(|| err(format!("unknown role {role:?}")))?,
        });
    }
    Ok(out)
}

impl Statements {
    /// The index built into the binary. The TSVs are checked by the tests below, so a parse
    /// failure here is a build defect, not bad input.
    pub fn embedded() -> &'static Statements {
        static EMBEDDED: OnceLock<Statements> = OnceLock::new();
        EMBEDDED.get_or_init(|| {
            let v311 = parse_tsv(SpecVersion::V311, V311_TSV)
                .expect("embedded MQTT 3.1.1 statement index parses (tested)");
            let v5 = parse_tsv(SpecVersion::V5, V5_TSV)
                .expect("embedded MQTT 5.0 statement index parses (tested)");
            Statements::new(v311, v5)
        })
    }

    /// An index over the given statements (tests build small ones).
    pub fn new(v311: Vec<Statement>, v5: Vec<Statement>) -> Statements {
        let mut by_id = BTreeMap::new();
        for (i, s) in v311.iter().enumerate() {
            by_id.insert((SpecVersion::V311, s.id.clone()), i);
        }
        for (i, s) in v5.iter().enumerate() {
            by_id.insert((SpecVersion::V5, s.id.clone()), i);
        }
        Statements { v311, v5, by_id }
    }

    /// One version's statements in document order.
    pub fn iter(&self, version: SpecVersion) -> std::slice::Iter<'_, Statement> {
        match version {
            SpecVersion::V311 => self.v311.iter(),
            SpecVersion::V5 => self.v5.iter(),
        }
    }

    /// Both versions, 3.1.1 first, each in document order.
    pub fn all(&self) -> impl Iterator<Item = &Statement> {
        self.v311.iter().chain(self.v5.iter())
    }

    pub fn len(&self, version: SpecVersion) -> usize {
        self.iter(version).len()
    }

    pub fn is_empty(&self) -> bool {
        self.v311.is_empty() && self.v5.is_empty()
    }

    /// The statement `id` of one version.
    pub fn get(&self, version: SpecVersion, id: &str) -> Option<&Statement> {
        let &i = self.by_id.get(&(version, id.to_string()))?;
        self.iter(version).as_slice().get(i)
    }

    /// Every version's statement with this id (3.1.1 first).
    pub fn find(&self, id: &str) -> Vec<&Statement> {
        SpecVersion::ALL
            .iter()
            .filter_map(|&v| self.get(v, id))
            .collect()
    }

    /// Whether any version has the id.
    pub fn contains(&self, id: &str) -> bool {
        SpecVersion::ALL.iter().any(|&v| self.get(v, id).is_some())
    }

    /// The id looked up in `preferred` versions first, then in any version.
    pub fn resolve(&self, preferred: &[SpecVersion], id: &str) -> Option<&Statement> {
        preferred
            .iter()
            .find_map(|&v| self.get(v, id))
            .or_else(|| self.find(id).into_iter().next())
    }

    pub fn by_level(&self, version: SpecVersion, level: Level) -> Vec<&Statement> {
        self.iter(version).filter(|s| s.level == level).collect()
    }

    pub fn by_actor(&self, version: SpecVersion, actor: Actor) -> Vec<&Statement> {
        self.iter(version).filter(|s| s.actor == actor).collect()
    }

    pub fn by_observable(&self, version: SpecVersion, observable: Observable) -> Vec<&Statement> {
        self.iter(version)
            .filter(|s| s.observable == observable)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certify::coverage::{checker_statements, scenario_versions};
    use crate::history::checkers::CheckerName;
    use std::path::{Path, PathBuf};

    #[test]
    fn embedded_index_has_every_statement_of_both_versions() {
        let s = Statements::embedded();
        // The README's counts: 141 ids in 3.1.1 (two the spec prints malformed), 251 in 5.0.
        assert_eq!(s.len(SpecVersion::V311), 141);
        assert_eq!(s.len(SpecVersion::V5), 251);
        let count = |v, a| s.by_actor(v, a).len();
        assert_eq!(count(SpecVersion::V311, Actor::Server), 69);
        assert_eq!(count(SpecVersion::V311, Actor::Client), 31);
        assert_eq!(count(SpecVersion::V311, Actor::Both), 41);
        assert_eq!(count(SpecVersion::V5, Actor::Server), 118);
        assert_eq!(s.by_level(SpecVersion::V311, Level::Must).len(), 118);
        assert_eq!(s.by_level(SpecVersion::V311, Level::MustNot).len(), 23);
        assert_eq!(s.by_level(SpecVersion::V5, Level::MustNot).len(), 72);
        assert_eq!(
            s.by_observable(SpecVersion::V311, Observable::Yes).len(),
            94
        );
        assert_eq!(
            s.by_observable(SpecVersion::V5, Observable::Partly).len(),
            44
        );
        assert_eq!(s.by_observable(SpecVersion::V5, Observable::No).len(), 41);
        // Ids are unique per version.
        for v in SpecVersion::ALL {
            let mut ids: Vec<&str> = s.iter(v).map(|st| st.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), s.len(v), "duplicate ids in {v}");
        }
    }

    #[test]
    fn lookup_is_per_version_and_in_document_order() {
        let s = Statements::embedded();
        // The same id, two different rules.
        let v311 = s
            .get(SpecVersion::V311, "MQTT-3.3.1-9")
            .expect("3.1.1 has it");
        let v5 = s.get(SpecVersion::V5, "MQTT-3.3.1-9").expect("5.0 has it");
        assert_ne!(v311.summary, v5.summary);
        assert_eq!(s.find("MQTT-3.3.1-9").len(), 2);
        // 5.0 only.
        assert!(s.get(SpecVersion::V311, "MQTT-4.3.3-10").is_none());
        assert_eq!(
            s.resolve(&[SpecVersion::V311], "MQTT-4.3.3-10")
                .map(|st| st.version),
            Some(SpecVersion::V5)
        );
        assert!(!s.contains("MQTT-9.9.9-9"));
        // The two ids the 3.1.1 text prints malformed are listed normalised.
        assert!(s.get(SpecVersion::V311, "MQTT-3.1.2-7").is_some());
        assert!(s.get(SpecVersion::V311, "MQTT-3.8.3-4").is_some());
        let first = s.iter(SpecVersion::V311).next().expect("non-empty");
        assert_eq!(first.id, "MQTT-1.5.3-1");
        assert_eq!(first.section_number(), "1.5.3");
        assert_eq!(first.level, Level::Must);
        assert_eq!(first.actor, Actor::Both);
        let last = s.iter(SpecVersion::V311).last().expect("non-empty");
        assert_eq!(last.id, "MQTT-7.1.2-1");
    }

    #[test]
    fn bad_rows_are_refused_with_their_line() {
        let text = "id\tsection\tactor\tlevel\tobservable\tsummary\trole\n\
                    MQTT-1.1.1-1\t1.1 X\tserver\tMUST\tyes\tok\treceiver\n\
                    MQTT-1.1.1-2\t1.1 X\tserver\tOUGHT\tyes\tbad level\tsender\n";
        let e = parse_tsv(SpecVersion::V311, text).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("OUGHT"));
        let e = parse_tsv(SpecVersion::V311, "MQTT-1.1.1-1\tonly two\n").unwrap_err();
        assert_eq!(e.line, 1);
        let ok = parse_tsv(
            SpecVersion::V5,
            "# comment\nMQTT-1.1.1-1\t1.1 X\tclient\tSHOULD NOT\tno\tfine\tany\n",
        )
        .expect("parses without a header");
        assert_eq!(ok[0].level, Level::ShouldNot);
        assert_eq!(ok[0].observable, Observable::No);
        assert_eq!(ok[0].role, Role::Any);
        let e = parse_tsv(
            SpecVersion::V311,
            "MQTT-1.1.1-1\t1.1 X\tserver\tMUST\tyes\tok\tsideways\n",
        )
        .unwrap_err();
        assert!(e.message.contains("sideways"), "{e}");
        // The six-column form of the shared index is refused: the role is not guessed.
        let e = parse_tsv(
            SpecVersion::V311,
            "MQTT-1.1.1-1\t1.1 X\tserver\tMUST\tyes\tok\n",
        )
        .unwrap_err();
        assert!(e.message.contains("expected 7 columns"), "{e}");
    }

    #[test]
    fn roles_follow_the_statement_text() {
        let s = Statements::embedded();
        let role = |v, id| s.get(v, id).expect("listed").role;
        // 5.0 minimum-length Variable Byte Integer: the encoder's rule only.
        assert_eq!(role(SpecVersion::V5, "MQTT-1.5.5-1"), Role::Sender);
        // A Response Topic without wildcards: whoever sends the PUBLISH.
        assert_eq!(role(SpecVersion::V5, "MQTT-3.3.2-14"), Role::Sender);
        // 3.1.1 well-formed UTF-8: the sender's rule and the receiver's close in one.
        assert_eq!(role(SpecVersion::V311, "MQTT-1.5.3-1"), Role::Both);
        // 5.0 moved the receiver's part out ("is a Malformed Packet", then 4.13).
        assert_eq!(role(SpecVersion::V5, "MQTT-1.5.4-1"), Role::Sender);
        assert_eq!(role(SpecVersion::V5, "MQTT-4.13.1-1"), Role::Receiver);
        assert_eq!(role(SpecVersion::V311, "MQTT-4.8.0-1"), Role::Receiver);
        assert_eq!(role(SpecVersion::V311, "MQTT-2.2.2-1"), Role::Sender);
        assert_eq!(role(SpecVersion::V311, "MQTT-2.2.2-2"), Role::Receiver);
        // Per version counts, as the index README gives them.
        for (v, sender, receiver, both, any) in [
            (SpecVersion::V311, 65, 45, 7, 24),
            (SpecVersion::V5, 153, 62, 6, 30),
        ] {
            let count = |r| s.iter(v).filter(|st| st.role == r).count();
            assert_eq!(
                (
                    count(Role::Sender),
                    count(Role::Receiver),
                    count(Role::Both),
                    count(Role::Any)
                ),
                (sender, receiver, both, any),
                "{v}"
            );
        }
    }

    fn scenario_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("scenarios/ is readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                scenario_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_scenario_spec_id_is_a_statement_of_a_version_its_clients_speak() {
        let s = Statements::embedded();
        let mut files = Vec::new();
        scenario_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
            &mut files,
        );
        assert!(files.len() > 50, "found the scenario library");
        let mut missing = Vec::new();
        for file in &files {
            let scenario = crate::scenario::load(file).expect("library scenarios parse");
            let versions = scenario_versions(&scenario);
            for id in &scenario.spec {
                if !versions.iter().any(|&v| s.get(v, id).is_some()) {
                    missing.push(format!(
                        "{}: {id} is no statement of MQTT {:?}",
                        file.display(),
                        versions
                    ));
                }
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn every_checker_statement_is_in_the_index() {
        let s = Statements::embedded();
        for checker in CheckerName::ALL {
            for v in SpecVersion::ALL {
                for id in checker_statements(checker, v) {
                    assert!(s.get(v, id).is_some(), "{checker} cites {id}, not in {v}");
                }
            }
        }
    }
}
