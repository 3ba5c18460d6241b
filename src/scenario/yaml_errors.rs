//! Turns serde_yaml's errors into ones a scenario author can act on: a tab is called a tab, a
//! step field indented under the wrong key is called that (serde only sees a missing field),
//! and Rust type names (`expected struct ClientSpec`, `u32`) become the form the file needs.

use super::locate::{self, Seg};

/// `(line, col, message)` for a serde_yaml error on `src`.
pub(super) fn explain(src: &str, error: &serde_yaml::Error) -> (usize, usize, String) {
    let (line, col) = error
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let mut message = error.to_string();
    if let Some(at) = message.find(" at line ") {
        message.truncate(at);
    }
    if let Some(found) = tab(src, line, col, &message) {
        return found;
    }
    if let Some(found) = misindented_step_field(src, &message) {
        return found;
    }
    if let Some(found) = step_with_siblings(src, &message) {
        return found;
    }
    (line, col, humanize(&message))
}

/// A tab where YAML wants indentation: serde_yaml says "found character that cannot start any
/// token" (or names the tab only in some places).
fn tab(src: &str, line: usize, col: usize, message: &str) -> Option<(usize, usize, String)> {
    let text = src.lines().nth(line.checked_sub(1)?)?;
    let at_error = text.chars().nth(col.saturating_sub(1)) == Some('\t');
    let scanner = message.contains("tab character") || message.contains("cannot start any token");
    if !(at_error || scanner) {
        return None;
    }
    let tab_col = text.chars().position(|c| c == '\t')? + 1;
    Some((
        line,
        tab_col,
        "a tab character: YAML indents with spaces only; replace the tab with spaces".into(),
    ))
}

/// `steps[3].publish: missing field `client`` while line 9 says `client: pub`, indented no
/// deeper than `publish:` itself, so YAML read it as a sibling of the step's key.
fn misindented_step_field(src: &str, message: &str) -> Option<(usize, usize, String)> {
    let (path, rest) = message.split_once(": ")?;
    let field = rest.strip_prefix("missing field `")?.strip_suffix('`')?;
    let (index, keyword) = path.strip_prefix("steps[")?.split_once("].")?;
    let index: usize = index.parse().ok()?;
    if keyword.contains(['.', '[']) {
        return None;
    }
    let (item_line, dash_col) = locate::locate(src, &[Seg::Key("steps"), Seg::Index(index)], None)?;
    let lines: Vec<&str> = src.lines().collect();
    let item = lines.get(item_line - 1)?;
    let keyword_col = item.find(keyword)? + 1;
    let dash_indent = dash_col - 1;
    let mut placed: Option<(usize, usize)> = None;
    for (i, text) in lines.iter().enumerate().skip(item_line) {
        let trimmed = text.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = text.len() - trimmed.len();
        if indent < dash_indent
            || (indent == dash_indent && (trimmed.starts_with('-') || dash_indent == 0))
        {
            break;
        }
        let col = indent + 1;
        if col > keyword_col && placed.is_none() {
            let key = trimmed.split(':').next().unwrap_or("");
            placed = Some((i + 1, col)).filter(|_| !key.is_empty() && key != field);
        }
        let is_field = trimmed
            .strip_prefix(field)
            .is_some_and(|after| after.starts_with(':'));
        if is_field {
            let hint = match placed {
                Some((l, c)) => format!(
                    "column {c}, like `{}` on line {l}",
                    lines[l - 1].trim_start().split(':').next().unwrap_or("")
                ),
                None => format!("column {}", keyword_col + 2),
            };
            return Some((
                i + 1,
                col,
                format!(
                    "{path}: `{field}` on line {} is not inside `{keyword}`: indent the step's \
                     fields further than `{keyword}:` ({hint})",
                    i + 1
                ),
            ));
        }
    }
    None
}

/// `steps[0]: invalid value: map, expected map with a single key`: a field of the step was
/// indented to the step key's own column, so the step has two keys.
fn step_with_siblings(src: &str, message: &str) -> Option<(usize, usize, String)> {
    let index = message
        .strip_prefix("steps[")?
        .strip_suffix("]: invalid value: map, expected map with a single key")?;
    let index: usize = index.parse().ok()?;
    let (item_line, dash_col) = locate::locate(src, &[Seg::Key("steps"), Seg::Index(index)], None)?;
    let lines: Vec<&str> = src.lines().collect();
    let item = lines.get(item_line - 1)?;
    let after_dash = item.get(dash_col..)?.trim_start();
    let keyword_col = item.len() - after_dash.len() + 1;
    let keyword = after_dash.split(':').next()?.trim();
    for (i, text) in lines.iter().enumerate().skip(item_line) {
        let trimmed = text.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let col = text.len() - trimmed.len() + 1;
        if col < keyword_col {
            break;
        }
        if col == keyword_col {
            let field = trimmed.split(':').next().unwrap_or(trimmed).trim();
            return Some((
                i + 1,
                col,
                format!(
                    "steps[{index}]: a step is a map with one key, its name, but `{field}` on \
                     line {} lines up with `{keyword}:`; indent the step's fields further than \
                     `{keyword}:` (column {})",
                    i + 1,
                    keyword_col + 2
                ),
            ));
        }
    }
    None
}

/// What the Rust type names in serde's messages stand for in a scenario file.
const TYPE_NAMES: &[(&str, &str)] = &[
    (
        "struct Scenario",
        "a scenario: a map of keys like `clients` and `steps`",
    ),
    (
        "struct BrokerSpec",
        "a map of broker options (durable, host)",
    ),
    (
        "struct ClientSpec",
        "a map of client options (client_id, clean_session, keepalive, protocol, will, …)",
    ),
    (
        "struct WillSpec",
        "a map of will options (topic, qos, retain, delay, empty)",
    ),
    ("struct FilterSpec", "a map like {filter: a/#, qos: 1}"),
    (
        "struct ExpectedMessage",
        "a map like {id: pub-1} or {from: pub, count: 3}",
    ),
    (
        "struct Workload",
        "a map of workload options (publishers, subscribers, rate, duration, …)",
    ),
    (
        "struct Nemesis",
        "a map of nemesis options (faults, interval, …)",
    ),
    (
        "enum Step",
        "a step: a map with one key, like `- connect: sub`",
    ),
    ("f64", "a number"),
    ("f32", "a number"),
    ("u8", "a whole number from 0 to 255"),
    ("u16", "a whole number from 0 to 65535"),
    ("u32", "a whole number from 0 to 4294967295"),
    ("u64", "a whole number of at least 0"),
    ("usize", "a whole number of at least 0"),
];

/// Replaces Rust type names with the form the file needs.
fn humanize(message: &str) -> String {
    let mut out = message.replace("unknown variant", "unknown value");
    if let Some(at) = out.find("expected ") {
        let (head, tail) = out.split_at(at + "expected ".len());
        let mut tail = tail.to_string();
        for (rust, human) in TYPE_NAMES {
            if tail == *rust || tail.starts_with(&format!("{rust} ")) {
                tail = format!("{human}{}", &tail[rust.len()..]);
                break;
            }
        }
        // `struct SubscribeStep`, `a map of ClientStep options`, …: the step's own fields.
        if let Some(name) = tail.strip_prefix("struct ") {
            if name.ends_with("Step") {
                tail =
                    "a map of the step's fields (see the step table in scenarios/README.md)".into();
            }
        }
        tail = replace_step_options(&tail);
        out = format!("{head}{tail}");
    }
    if out.starts_with("steps[") {
        if let Some((path, rest)) = out.split_once(": unknown value ") {
            if !path.contains('.') {
                out = format!("{path}: unknown step {rest}");
            }
        }
    }
    out
}

/// `a map of ClientStep options` → `a map of the step's fields`.
fn replace_step_options(text: &str) -> String {
    let Some(start) = text.find("a map of ") else {
        return text.to_string();
    };
    let after = &text[start + "a map of ".len()..];
    let Some(end) = after.find(" options") else {
        return text.to_string();
    };
    let name = &after[..end];
    if name.ends_with("Step") && name.chars().all(char::is_alphanumeric) {
        format!(
            "{}a map of the step's fields{}",
            &text[..start],
            &after[end + " options".len()..]
        )
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one error `parse` gives for `src`, as `line:col: message`.
    fn refusal(src: &str) -> String {
        let errors = super::super::parse("t.yaml", src).expect_err("refused");
        assert_eq!(errors.0.len(), 1, "{errors}");
        let e = &errors.0[0];
        format!("{}:{}: {}", e.line, e.col, e.message)
    }

    #[test]
    fn a_tab_is_called_a_tab_where_it_is() {
        assert_eq!(
            refusal("clients:\n  sub: {}\nsteps:\n\t- connect: sub\n"),
            "4:1: a tab character: YAML indents with spaces only; replace the tab with spaces"
        );
        assert_eq!(
            refusal("clients:\n  sub:\n  \tkeepalive: 1s\nsteps:\n  - connect: sub\n"),
            "3:3: a tab character: YAML indents with spaces only; replace the tab with spaces"
        );
    }

    #[test]
    fn a_fractional_duration_is_explained_at_its_value() {
        assert_eq!(
            refusal("clients:\n  sub: {keepalive: 1.5s}\nsteps:\n  - connect: sub\n"),
            "2:20: clients.sub.keepalive: \"1.5s\" is a fraction; durations are whole numbers \
             of a unit: write 1500ms"
        );
    }

    #[test]
    fn the_column_is_the_offending_values_and_the_path_names_the_field() {
        assert_eq!(
            refusal(
                "clients:\n  sub: {}\nsteps:\n  - connect: sub\n  - subscribe: {client: sub, filter: a, qos: 3}\n"
            ),
            "5:46: steps[1].subscribe.qos: invalid value: integer `3`, expected a QoS level: 0, 1 or 2"
        );
        assert_eq!(
            refusal("clients:\n  sub: {}\nsteps:\n  - subscribe:\n      client: sub\n      filter: a\n      qos: 3\n"),
            "7:12: steps[0].subscribe.qos: invalid value: integer `3`, expected a QoS level: 0, 1 or 2"
        );
        assert_eq!(
            refusal("seeds: 0\nclients:\n  sub: {}\nsteps:\n  - connect: sub\n"),
            "1:8: seeds must be 1..=100000"
        );
        assert_eq!(
            refusal("clients:\n  device:\n    protocol: v6\nsteps:\n  - connect: device\n"),
            "3:15: clients.device.protocol: invalid value: string \"v6\", expected a protocol \
             version: v311 or v5"
        );
    }

    #[test]
    fn no_rust_type_names_reach_the_author() {
        for src in [
            "3\n",
            "clients:\n  device: 3\nsteps:\n  - connect: device\n",
            "broker: 3\nclients:\n  a: {}\nsteps:\n  - connect: a\n",
            "clients:\n  a: {will: 3}\nsteps:\n  - connect: a\n",
            "clients:\n  a: {}\nsteps: [3]\n",
            "clients:\n  a: {}\nsteps:\n  - connect: [a]\n",
            "clients:\n  a: {}\nsteps:\n  - subscribe: a\n",
            "clients:\n  a: {}\nsteps:\n  - restart_broker: 3\n",
            "clients:\n  a: {}\nsteps:\n  - fly: a\n",
            "clients:\n  a: {}\nsteps:\n  - subscribe: {client: a, filters: [3]}\n",
            "clients:\n  a: {}\nsteps:\n  - expect_messages: {client: a, within: 1s, messages: [3]}\n",
            "clients:\n  a: {}\nsteps:\n  - loss: {a: a, rate: x}\n",
            "clients:\n  a: {}\nsteps:\n  - raw: 3\n",
            "seeds: -1\nclients:\n  a: {}\nsteps:\n  - connect: a\n",
            "workload: 3\n",
            "nemesis: 3\nworkload: {publishers: 1, subscribers: 1, rate: 1/s, duration: 1s}\n",
            "workload: {publishers: x, subscribers: 1, rate: 1/s, duration: 1s}\n",
        ] {
            let message = refusal(src);
            for rust in [
                "struct ", "enum ", "Spec", "Step", "variant", "u8", "u16", "u32", "u64", "f64",
            ] {
                assert!(!message.contains(rust), "{src:?}: {message}");
            }
        }
    }

    #[test]
    fn an_under_indented_step_field_is_not_called_missing() {
        // `client` lines up with `publish`, so YAML reads it as the step's second key.
        assert_eq!(
            refusal("clients:\n  pub: {}\nsteps:\n  - publish:\n    client: pub\n    topic: t\n"),
            "5:5: steps[0].publish: `client` on line 5 is not inside `publish`: indent the \
             step's fields further than `publish:` (column 7)"
        );
        // One field right, the next one column short.
        assert_eq!(
            refusal(
                "clients:\n  pub: {}\nsteps:\n  - publish:\n      client: pub\n     topic: t\n"
            ),
            "6:6: steps[0].publish: `topic` on line 6 is not inside `publish`: indent the \
             step's fields further than `publish:` (column 7, like `client` on line 5)"
        );
        assert_eq!(
            refusal(
                "clients:\n  sub: {}\nsteps:\n  - subscribe:\n      client: sub\n    filter: a\n"
            ),
            "6:5: steps[0]: a step is a map with one key, its name, but `filter` on line 6 lines \
             up with `subscribe:`; indent the step's fields further than `subscribe:` (column 7)"
        );
    }

    #[test]
    fn expect_will_on_a_client_without_a_will_is_refused_at_load() {
        assert_eq!(
            refusal(
                "clients:\n  sub: {}\n  dev: {}\nsteps:\n  - connect: sub\n  - connect: dev\n  - expect_will: {of: dev, to: sub, delivered: false, within: 1s}\n"
            ),
            "7:23: expect_will: client \"dev\" has no will to deliver; give it one in `clients` \
             (will: {topic: …})"
        );
    }

    #[test]
    fn rust_type_names_become_the_expected_form() {
        for (rust, want) in [
            (
                "clients.a: invalid type: integer `3`, expected struct ClientSpec",
                "clients.a: invalid type: integer `3`, expected a map of client options (client_id, clean_session, keepalive, protocol, will, …)",
            ),
            (
                "steps[0].connect: invalid type: sequence, expected a client name or a map of ClientStep options",
                "steps[0].connect: invalid type: sequence, expected a client name or a map of the step's fields",
            ),
            (
                "steps[0].subscribe: invalid type: string \"a\", expected struct SubscribeStep",
                "steps[0].subscribe: invalid type: string \"a\", expected a map of the step's fields (see the step table in scenarios/README.md)",
            ),
            (
                "seeds: invalid type: integer `-1`, expected u32",
                "seeds: invalid type: integer `-1`, expected a whole number from 0 to 4294967295",
            ),
            (
                "steps[0]: unknown variant `fly`, expected one of `connect`",
                "steps[0]: unknown step `fly`, expected one of `connect`",
            ),
        ] {
            assert_eq!(humanize(rust), want);
        }
    }
}
