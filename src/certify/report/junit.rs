//! JUnit XML for CI test views: one `<testcase>` per scenario × seed, classname the scenario.
//! MUST violations are `<failure>`s, runs that could not be judged are `<error>`s (inconclusive
//! cases too, with `type="INCONCLUSIVE"` and the reason), skipped scenarios carry
//! `<skipped message="reason"/>`, and SHOULD deviations, the allowed alternatives chosen and
//! the findings set aside go to `<system-out>` (they do not fail the case). When the broker
//! stopped answering during the run, a `broker_health` property says how and after what.
//!
//! The XML is written by quick-junit (a maintained JUnit writer, shared with `simqtt run`);
//! [`text`] and [`attribute`] first replace what XML 1.0 cannot carry (payloads in trace
//! excerpts can hold anything) and keep attributes on one line.

use std::fmt::Write;

use quick_junit::{
    NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite, XmlString,
};

use super::{case_name, grade_name, health_line};
use crate::certify::{CaseResult, Certification, Finding, Grade, Verdict};

pub fn junit(cert: &Certification) -> String {
    let suite_name = format!("simqtt certify {}", cert.broker);
    let mut report = Report::new(attribute(&suite_name));
    report.set_time(cert.duration);
    let mut suite = TestSuite::new(attribute(&suite_name));
    suite.set_time(cert.duration);
    // Kept as written (RFC 3339 from the run's start), not re-parsed into a date type.
    suite.extra.insert(
        XmlString::new("timestamp"),
        XmlString::new(attribute(&cert.started)),
    );
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
        suite.add_property(Property::new(name, attribute(&value)));
    }
    for case in &cert.cases {
        suite.add_test_case(testcase(case));
    }
    report.add_test_suite(suite);
    // Writing into memory fails only on a bug in the writer; say so rather than lose the
    // report silently.
    report
        .to_string()
        .unwrap_or_else(|e| format!("<!-- simqtt: the JUnit writer failed: {e} -->\n"))
}

fn testcase(case: &CaseResult) -> TestCase {
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
    let inconclusive = match &case.verdict {
        Verdict::Inconclusive { reason } => Some(reason),
        _ => None,
    };
    let status = if let Verdict::Skipped { reason } = &case.verdict {
        let mut status = TestCaseStatus::skipped();
        status.set_message(attribute(reason));
        status
    } else if let Some(reason) = inconclusive {
        // Not a pass, and not a verdict on the broker: the case could not be judged.
        let mut body = format!("inconclusive: {reason}\n");
        if !case.rerun.is_empty() {
            let _ = writeln!(body, "rerun: {}", case.rerun);
        }
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status
            .set_message(attribute(&format!("inconclusive: {reason}")))
            .set_type("INCONCLUSIVE")
            .set_description(text(&body));
        status
    } else if !failing.is_empty() {
        // One element for the case (JUnit allows one), naming the first finding and holding
        // them all; a case with a MUST violation is a failure even if it also errored.
        let kind = if failing.iter().any(|f| f.grade == Grade::Must) {
            NonSuccessKind::Failure
        } else {
            NonSuccessKind::Error
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
        let mut status = TestCaseStatus::non_success(kind);
        status
            .set_message(attribute(&headline(first)))
            .set_type(grade_name(first.grade))
            .set_description(text(&body));
        status
    } else {
        TestCaseStatus::success()
    };
    let mut tc = TestCase::new(attribute(&case_name(case)), status);
    tc.set_classname(attribute(&case.scenario))
        .set_time(case.duration);
    tc.extra.insert(
        XmlString::new("file"),
        XmlString::new(attribute(&case.file.display().to_string())),
    );
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
        tc.set_system_out(text(&body));
    }
    tc
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

/// Text XML 1.0 can carry: the characters it forbids (C0 controls but tab, LF and CR;
/// U+FFFE, U+FFFF) become U+FFFD, so nothing vanishes without a trace.
pub fn text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// [`text`] on one line: an attribute's line breaks would be folded into spaces by the XML
/// parser anyway, so fold them here where the reader can see it.
pub fn attribute(s: &str) -> String {
    text(&s.replace("\r\n", " ").replace(['\n', '\r', '\t'], " "))
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
            "<testsuites name=\"simqtt certify mqtt://127.0.0.1:1883\" tests=\"7\" skipped=\"1\" failures=\"1\" errors=\"2\""
        ));
        assert!(xml.contains("<skipped message=\"broker_restart: no --restart-cmd was given\"/>"));
        assert!(xml.contains(
            "name=\"faults/qos2-dropped-pubrec seed 3\" classname=\"faults/qos2-dropped-pubrec\""
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
    fn forbidden_characters_are_replaced_and_attributes_kept_on_one_line() {
        assert_eq!(text("a\u{7}b\u{FFFF}\n"), "a\u{FFFD}b\u{FFFD}\n");
        assert_eq!(attribute("a\nb\r\nc\td"), "a b c d");
    }
}
