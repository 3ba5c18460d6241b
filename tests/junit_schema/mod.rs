//! The JUnit schema check the tests share: tests/data/junit.xsd through Python's xmlschema in
//! the venv `scripts/install-peers` makes (`$SIMQTT_VENV`, else target/venv).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Validates `xml` against tests/data/junit.xsd, and checks that the totals on `<testsuites>`
/// and on each `<testsuite>` are the counts of what they hold. Fails (never skips) without
/// the validator.
pub fn validate_junit(xml: &Path) {
    let venv = std::env::var_os("SIMQTT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv"));
    let python = venv.join("bin/python");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/junit.xsd");
    let script = r#"
import sys
try:
    import xmlschema
except ImportError:
    sys.exit("xmlschema is not installed in this venv: run scripts/install-peers")
from xml.etree import ElementTree
xmlschema.XMLSchema(sys.argv[1]).validate(sys.argv[2])
root = ElementTree.parse(sys.argv[2]).getroot()
def count(cases, tag):
    return sum(1 for c in cases if c.find(tag) is not None)
def check(node, cases):
    want = {"tests": len(cases), "failures": count(cases, "failure"),
            "errors": count(cases, "error"), "skipped": count(cases, "skipped")}
    for k, v in want.items():
        got = int(node.get(k, "0"))
        if got != v:
            sys.exit(f"<{node.tag} name={node.get('name')!r}> says {k}={got}, holds {v}")
check(root, root.findall("./testsuite/testcase"))
for suite in root.findall("testsuite"):
    check(suite, suite.findall("testcase"))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&schema)
        .arg(xml)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): the JUnit schema check needs the venv with xmlschema that \
                 scripts/install-peers makes",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "{} does not validate against tests/data/junit.xsd:\n{}{}",
        xml.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
