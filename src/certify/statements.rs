//! The normative statements of MQTT 3.1.1 and 5.0, embedded from the shared index
//! (`spec/*.tsv`, copied from `../shared/spec/`; its README says how each column was judged).
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
        let [id, section, actor, level, observable, summary] = cols[..] else {
            return Err(err(format!("expected 6 columns, found {}", cols.len())));
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
