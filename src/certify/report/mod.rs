//! The reports of a certification run, all from the same [`Certification`]:
//! - [`terminal`]: the summary table a person reads at the end of a run;
//! - [`junit`]: JUnit XML, one testcase per scenario × seed, for CI test views;
//! - [`markdown`]: the full report keyed by the spec's normative statements;
//! - [`json`]: the same content as the Markdown, for tools.
//!
//! Reports are pure functions of their input (no clock, no environment), so they snapshot.

pub mod json;
pub mod junit;
pub mod markdown;
pub mod terminal;

pub use json::json;
pub use junit::junit;
pub use markdown::markdown;
pub use terminal::terminal;
