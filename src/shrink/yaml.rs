//! A scenario as YAML in the library's compact style: serde_yaml serialises it (steps in the
//! `singleton_map` form of [`Scenario`]'s serde attributes), and this module lays the value out
//! the way the hand-written files are: one line per client and per step in flow style, short
//! forms where the format has them (`- connect: sub`, `- restart_broker:`), fields at their
//! default left out, a folded `postmortem: >` paragraph. The text is parsed back and must give
//! the same scenario; if it would not, serde_yaml's own layout is returned instead.

use serde_yaml::{Mapping, Value};

use crate::scenario::{BrokerSpec, ClientSpec, Scenario, Step};

/// Width the postmortem paragraph is wrapped to.
const WRAP: usize = 94;

/// The scenario as YAML text that [`crate::scenario::parse`] reads back to the same scenario.
pub fn to_yaml(s: &Scenario) -> Result<String, String> {
    let compact = compact(s)?;
    if same(s, &compact) {
        return Ok(compact);
    }
    let plain = serde_yaml::to_string(s).map_err(|e| e.to_string())?;
    if same(s, &plain) {
        Ok(plain)
    } else {
        Err("the scenario does not read back the same from YAML".into())
    }
}

/// Whether `text` parses to `s` (names aside: an empty name becomes the file's; postmortems
/// aside from the folded paragraph's final line break).
fn same(s: &Scenario, text: &str) -> bool {
    let Ok(mut back) = crate::scenario::parse("scenario.yaml", text) else {
        return false;
    };
    let mut want = s.clone();
    if want.name.is_empty() {
        want.name = back.name.clone();
    }
    let trim = |p: &mut Option<String>| {
        if let Some(t) = p {
            *t = t.trim_end().to_string();
        }
    };
    trim(&mut want.postmortem);
    trim(&mut back.postmortem);
    back == want
}

fn compact(s: &Scenario) -> Result<String, String> {
    let value = serde_yaml::to_value(s).map_err(|e| e.to_string())?;
    let Value::Mapping(top) = value else {
        return Err("a scenario serialises to a mapping".into());
    };
    // Every top-level field at its default: what an empty file gives.
    let defaults: Scenario = serde_yaml::from_str("{}").map_err(|e| e.to_string())?;
    let default_top = match serde_yaml::to_value(&defaults).map_err(|e| e.to_string())? {
        Value::Mapping(m) => m,
        _ => Mapping::new(),
    };
    let mut out = String::new();
    for (key, value) in &top {
        let Some(key) = key.as_str() else { continue };
        if default_top.get(key) == Some(value) && key != "clients" && key != "steps" {
            continue;
        }
        match (key, value) {
            ("postmortem", Value::String(text)) => {
                out.push_str("postmortem: >\n");
                out.push_str(&wrap(text, WRAP, "  "));
            }
            ("clients", Value::Mapping(clients)) => {
                out.push_str("clients:\n");
                for (name, spec) in clients {
                    let pruned = prune(spec, &|v| {
                        serde_yaml::from_value::<ClientSpec>(v.clone()).ok()
                            == serde_yaml::from_value::<ClientSpec>(spec.clone()).ok()
                    });
                    out.push_str(&format!("  {}: {}\n", flow(name), flow(&pruned)));
                }
            }
            ("steps", Value::Sequence(steps)) => {
                out.push_str("steps:\n");
                for step in steps {
                    out.push_str(&format!("  - {}\n", step_line(step)));
                }
            }
            ("broker", broker @ Value::Mapping(_)) => {
                let pruned = prune(broker, &|v| {
                    serde_yaml::from_value::<BrokerSpec>(v.clone()).ok()
                        == serde_yaml::from_value::<BrokerSpec>(broker.clone()).ok()
                });
                out.push_str(&format!("broker: {}\n", flow(&pruned)));
            }
            (key, value) => out.push_str(&format!("{key}: {}\n", flow(value))),
        }
    }
    Ok(out)
}

fn parse_step(v: &Value) -> Option<Step> {
    serde_yaml::with::singleton_map_recursive::deserialize(v.clone()).ok()
}

/// One step as `keyword: value`, in its shortest form that reads back the same.
fn step_line(step: &Value) -> String {
    let Value::Mapping(m) = step else {
        return flow(step);
    };
    let Some((key, body)) = m.iter().next() else {
        return flow(step);
    };
    let original = parse_step(step);
    let with_body = |body: Value| {
        let mut m = Mapping::new();
        m.insert(key.clone(), body);
        Value::Mapping(m)
    };
    let body = prune(body, &|v| parse_step(&with_body(v.clone())) == original);
    let keyword = flow(key);
    // Short forms: nothing, or just the client's name.
    if let Value::Mapping(fields) = &body {
        if fields.is_empty() && parse_step(&with_body(Value::Null)) == original {
            return format!("{keyword}:");
        }
        if fields.len() == 1 {
            if let Some(name) = fields.get("client") {
                if parse_step(&with_body(name.clone())) == original {
                    return format!("{keyword}: {}", flow(name));
                }
            }
        }
    }
    format!("{keyword}: {}", flow(&body))
}

/// `value` without the mapping entries (at any depth) whose absence `same` accepts.
fn prune(value: &Value, same: &dyn Fn(&Value) -> bool) -> Value {
    let mut current = value.clone();
    let mut paths = Vec::new();
    collect_paths(&current, &mut Vec::new(), &mut paths);
    for path in paths {
        let mut candidate = current.clone();
        if remove_path(&mut candidate, &path) && same(&candidate) {
            current = candidate;
        }
    }
    current
}

/// A step into a value: a mapping's key or a sequence's index.
#[derive(Clone)]
enum Seg {
    Key(Value),
    Index(usize),
}

/// Every mapping entry at any depth (inside sequences too), parents before children.
fn collect_paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                prefix.push(Seg::Key(k.clone()));
                out.push(prefix.clone());
                collect_paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(Seg::Index(i));
                collect_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// Removes the mapping entry at `path`; false if there is none.
fn remove_path(v: &mut Value, path: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = path.split_last() else {
        return false;
    };
    let mut at = v;
    for seg in parents {
        let next = match (at, seg) {
            (Value::Mapping(m), Seg::Key(k)) => m.get_mut(k),
            (Value::Sequence(items), Seg::Index(i)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(child) => at = child,
            None => return false,
        }
    }
    match at {
        Value::Mapping(m) => m.remove(last).is_some(),
        _ => false,
    }
}

/// A value in flow style on one line.
fn flow(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar(s),
        Value::Sequence(items) => {
            format!(
                "[{}]",
                items.iter().map(flow).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| match v {
                    Value::Null => flow(k),
                    v => format!("{}: {}", flow(k), flow(v)),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Tagged(t) => format!("{} {}", t.tag, flow(&t.value)),
    }
}

/// A string as a plain scalar where YAML reads it back as that string in flow context, else
/// double-quoted.
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`~ ".contains(c))
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.contains(|c: char| ",[]{}\n\t\"".contains(c) || c.is_control())
        && serde_yaml::from_str::<Value>(s).ok() == Some(Value::String(s.to_string()));
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// A paragraph as the lines of a folded block scalar.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}
