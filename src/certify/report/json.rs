//! json report.

use crate::certify::statements::Statements;
use crate::certify::Certification;

pub fn json(cert: &Certification, statements: &Statements) -> String {
    let _ = (cert, statements);
    String::new()
}
