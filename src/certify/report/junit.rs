//! JUnit XML for CI test views: one `<testcase>` per scenario × seed, classname the scenario.
//! MUST violations are `<failure>`s, runs that could not be judged are `<error>`s (inconclusive
//! cases too, with `type="INCONCLUSIVE"` and the reason), skipped scenarios carry
//! `<skipped message="reason"/>`, and SHOULD deviations, the allowed alternatives chosen and
//! the findings set aside go to `<system-out>` (they do not fail the case). When the broker
//! stopped answering during the run, a `broker_health` property says how and after what.
//!
//! The XML is written through a minimal writer that escapes every attribute and text node and
//! replaces characters XML 1.0 cannot carry (payloads in trace excerpts can hold anything).

use std::fmt::Write;

use super::{case_name, grade_name, health_line};
use crate::certify::{CaseResult, Certification, Finding, Grade, Verdict};

pub fn junit(cert: &Certification) -> String {
    let tests = cert.cases.len();
    let count = |pred: &dyn Fn(&CaseResult) -> bool| cert.cases.iter().filter(|c| pred(c)).count();
    // A failed case without a MUST violation failed only because it could not be judged.
    let errored = |c: &CaseResult| {
        c.inconclusive() || (c.failed() && !has(c, Grade::Must) && has(c, Grade::Error))
    };
    let errors = count(&errored);
    let failures = count(&|c| c.failed() && !errored(c));
    let skipped = count(&|c| matches!(c.verdict, Verdict::Skipped { .. }));
    let suite = format!("simqtt certify {}", cert.broker);
    let time = seconds(cert.duration);

    let mut w = Xml::default();
    w.raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let totals = [
        ("name", suite.clone()),
        ("tests", tests.to_string()),
        ("failures", failures.to_string()),
        ("errors", errors.to_string()),
        ("skipped", skipped.to_string()),
        ("time", time.clone()),
    ];
    w.open("testsuites", &totals);
    let mut attrs = totals.to_vec();
    attrs.push(("timestamp", cert.started.clone()));
    w.open("testsuite", &attrs);
    w.open("properties", &[]);
    let mut props = vec![
        ("broker", cert.broker.clone()),
        ("profile", cert.profile.clone()),
        ("simqtt_version", cert.simqtt_version.clone()),
        ("certified", cert.certified().to_string()),
    ];
    if let Some(v) = &cert.broker_version {
        props.insert(1, ("broker_version", v.clone()));
    }
    if let Some(health) = health_line(cert) {
        props.push(("broker_health", health));
    }
    for (name, value) in props {
        w.empty("property", &[("name", name.to_string()), ("value", value)]);
    }
    w.close("properties");
    for case in &cert.cases {
        testcase(&mut w, case);
    }
    w.close("testsuite");
    w.close("testsuites");
    w.out
}

fn has(case: &CaseResult, grade: Grade) -> bool {
    case.findings.iter().any(|f| f.grade == grade)
}

fn testcase(w: &mut Xml, case: &CaseResult) {
    let name = case_name(case);
    let attrs = [
        ("classname", case.scenario.clone()),
        ("name", name),
        ("file", case.file.display().to_string()),
        ("time", seconds(case.duration)),
    ];
    let failing: Vec<&Finding> = case
        .findings
        .iter()
        .filter(|f| f.grade != Grade::Should)
        .collect();
    let deviations: Vec<&Finding> = case
        .findings
        .iter()
        .filter(|f| f.grade == Grade::Should)
        .collect();
    let skipped = match &case.verdict {
        Verdict::Skipped { reason } => Some(reason),
        _ => None,
    };
    let inconclusive = match &case.verdict {
        Verdict::Inconclusive { reason } => Some(reason),
        _ => None,
    };
    if failing.is_empty()
        && deviations.is_empty()
        && case.choices.is_empty()
        && skipped.is_none()
        && inconclusive.is_none()
        && case.set_aside.is_empty()
    {
        w.empty("testcase", &attrs);
        return;
    }
    w.open("testcase", &attrs);
    if let Some(reason) = skipped {
        w.empty("skipped", &[("message", reason.clone())]);
    }
    if let Some(reason) = inconclusive {
        // Not a pass, and not a verdict on the broker: the case could not be judged.
        let mut body = format!("inconclusive: {reason}\n");
        if !case.rerun.is_empty() {
            let _ = writeln!(body, "rerun: {}", case.rerun);
        }
        w.open(
            "error",
            &[
                ("message", format!("inconclusive: {reason}")),
                ("type", "INCONCLUSIVE".to_string()),
            ],
        );
        w.text(&body);
        w.close("error");
    }
    if !failing.is_empty() && inconclusive.is_none() {
        // One element for the case (JUnit allows one), naming the first finding and holding
        // them all; a case with a MUST violation is a failure even if it also errored.
        let element = if failing.iter().any(|f| f.grade == Grade::Must) {
            "failure"
        } else {
            "error"
        };
        let first = failing[0];
        let mut body = String::new();
        for f in &failing {
            body.push_str(&finding_text(f));
            body.push('\n');
        }
        if !case.rerun.is_empty() {
            let _ = writeln!(body, "rerun: {}", case.rerun);
        }
        w.open(
            element,
            &[
                ("message", headline(first)),
                ("type", grade_name(first.grade).to_string()),
            ],
        );
        w.text(&body);
        w.close(element);
    }
    if !deviations.is_empty()
        || !case.choices.is_empty()
        || !case.set_aside.is_empty()
        || (inconclusive.is_some() && !failing.is_empty())
    {
        let mut body = String::new();
        // An inconclusive case's remaining findings are SHOULD-only, but say so anyway.
        for f in failing.iter().filter(|_| inconclusive.is_some()) {
            body.push_str(&finding_text(f));
            body.push('\n');
        }
        for aside in &case.set_aside {
            let _ = writeln!(
                body,
                "set aside, not charged to the broker: {}",
                aside.reason
            );
            for f in &aside.findings {
                body.push_str(&finding_text(f));
                body.push('\n');
            }
        }
        for f in &deviations {
            body.push_str(&finding_text(f));
            body.push('\n');
        }
        for c in &case.choices {
            let _ = writeln!(
                body,
                "allowed alternative chosen: {}: {} (×{})",
                c.checker, c.text, c.count
            );
        }
        w.open("system-out", &[]);
        w.text(&body);
        w.close("system-out");
    }
    w.close("testcase");
}

fn headline(f: &Finding) -> String {
    if f.statement.is_empty() {
        format!("{} {}: {}", grade_name(f.grade), f.checker, f.observed)
    } else {
        format!(
            "{} [{}] {}: {}",
            grade_name(f.grade),
            f.statement,
            f.checker,
            f.observed
        )
    }
}

fn finding_text(f: &Finding) -> String {
    let mut s = format!(
        "{}\n  owed:     {}\n  observed: {}\n",
        headline(f),
        f.owed,
        f.observed
    );
    if !f.excerpt.is_empty() {
        s.push_str(&f.excerpt);
        if !f.excerpt.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

fn seconds(d: std::time::Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// A minimal XML writer: elements nest by construction of the calls, and every attribute value
/// and text node passes through [`escape`].
#[derive(Default)]
struct Xml {
    out: String,
    depth: usize,
}

impl Xml {
    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }

    fn start(&mut self, name: &str, attrs: &[(&str, String)]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            let _ = write!(self.out, " {k}=\"{}\"", escape(v, true));
        }
    }

    fn open(&mut self, name: &str, attrs: &[(&str, String)]) {
        self.start(name, attrs);
        self.out.push_str(">\n");
        self.depth += 1;
    }

    fn empty(&mut self, name: &str, attrs: &[(&str, String)]) {
        self.start(name, attrs);
        self.out.push_str("/>\n");
    }

    fn text(&mut self, text: &str) {
        self.out.push_str(&escape(text, false));
        if !text.ends_with('\n') {
            self.out.push('\n');
        }
    }

    fn close(&mut self, name: &str) {
        self.depth = self.depth.saturating_sub(1);
        self.indent();
        let _ = writeln!(self.out, "</{name}>");
    }
}

/// Escapes markup characters; in attributes also quotes and line breaks (which attribute
/// normalisation would otherwise fold into spaces). Characters XML 1.0 forbids (C0 controls
/// but tab, LF and CR; U+FFFE/U+FFFF) become U+FFFD.
pub fn escape(s: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\'' if attribute => out.push_str("&apos;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certify::report::fixture;

    /// A strict little well-formedness check: tags balance, attributes are quoted, no raw `<`
    /// or `&` outside markup and entities, only XML 1.0 characters.
    fn check_well_formed(xml: &str) -> Result<Vec<String>, String> {
        let body = xml
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
            .ok_or("missing XML declaration")?;
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = body;
        let check_text = |t: &str| -> Result<(), String> {
            for (i, c) in t.char_indices() {
                if c == '&' {
                    let entity = &t[i..];
                    let ok = [
                        "&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#10;", "&#13;", "&#9;",
                    ]
                    .iter()
                    .any(|e| entity.starts_with(e));
                    if !ok {
                        return Err(format!("bare & in {t:?}"));
                    }
                }
                if c == '>' {
                    return Err(format!("raw > in {t:?}"));
                }
                if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') {
                    return Err(format!("control character in {t:?}"));
                }
            }
            Ok(())
        };
        while let Some(lt) = rest.find('<') {
            check_text(&rest[..lt])?;
            let gt = rest[lt..].find('>').ok_or("unclosed tag")? + lt;
            let tag = &rest[lt + 1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("stray </{name}>"))?;
                if open != name {
                    return Err(format!("</{name}> closes <{open}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let (name, mut attrs) = tag.split_once(' ').unwrap_or((tag, ""));
            // Attributes: name="value" pairs, values free of < and raw quotes.
            while !attrs.trim().is_empty() {
                let a = attrs.trim_start();
                let eq = a
                    .find("=\"")
                    .ok_or(format!("unquoted attribute in <{name}>"))?;
                let value_end = a[eq + 2..].find('"').ok_or("unterminated value")? + eq + 2;
                let value = &a[eq + 2..value_end];
                if value.contains('<') || value.contains('\n') {
                    return Err(format!("raw < or newline in attribute of <{name}>"));
                }
                check_text(value)?;
                attrs = &a[value_end + 1..];
            }
            seen.push(name.to_string());
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        check_text(rest)?;
        if !stack.is_empty() {
            return Err(format!("unclosed: {stack:?}"));
        }
        Ok(seen)
    }

    #[test]
    fn well_formed_with_one_testcase_per_case() {
        let cert = fixture::sample();
        let xml = junit(&cert);
        let tags = check_well_formed(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!(
            tags.iter().filter(|t| *t == "testcase").count(),
            cert.cases.len()
        );
        assert_eq!(tags.iter().filter(|t| *t == "failure").count(), 1);
        assert_eq!(tags.iter().filter(|t| *t == "error").count(), 2);
        assert_eq!(tags.iter().filter(|t| *t == "skipped").count(), 1);
        assert!(xml.contains(
            "<testsuites name=\"simqtt certify mqtt://127.0.0.1:1883\" tests=\"7\" failures=\"1\" errors=\"2\" skipped=\"1\""
        ));
        assert!(xml.contains("<skipped message=\"broker_restart: no --restart-cmd was given\"/>"));
        assert!(xml.contains(
            "classname=\"faults/qos2-dropped-pubrec\" name=\"faults/qos2-dropped-pubrec seed 3\""
        ));
        // The finding's text is escaped, not dropped.
        assert!(xml.contains("delivered 2 times (a &amp; b &lt;dup&gt;)"));
    }

    #[test]
    fn hostile_text_stays_well_formed() {
        let mut cert = fixture::sample();
        let nasty = "</failure><x a=\"'\"> & \u{0} \u{1b}[31m \r\n ]]> \u{FFFF}";
        cert.broker = nasty.into();
        for case in &mut cert.cases {
            case.scenario = nasty.into();
            for f in &mut case.findings {
                f.excerpt = nasty.into();
                f.observed = nasty.into();
            }
            if let Verdict::Skipped { reason } = &mut case.verdict {
                *reason = nasty.into();
            }
        }
        let xml = junit(&cert);
        check_well_formed(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert!(!xml.contains('\u{0}'));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("a<b>&\"c'\n", true),
            "a&lt;b&gt;&amp;&quot;c&apos;&#10;"
        );
        assert_eq!(escape("a<b>&\"c'\n", false), "a&lt;b&gt;&amp;\"c'\n");
        assert_eq!(escape("\u{7}", false), "\u{FFFD}");
    }
}
