//! Finds the `line:col` of a value in a scenario file for errors found after parsing (a step
//! naming an undefined client, a 5.0 option on a 3.1.1 client). serde_yaml reports locations
//! only for its own errors, so this walks the source by indentation along a path of keys and
//! list indices, then looks for the offending token. It understands block style (what the
//! scenario library uses) and falls back to a plain search inside flow style.

/// One step of a path into the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Debug, Clone)]
struct Line {
    /// 1-based line number.
    line: usize,
    /// 1-based column of the first character of `text`.
    col: usize,
    indent: usize,
    text: String,
}

fn lines(src: &str) -> Vec<Line> {
    src.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            let text = raw[indent..].trim_end();
            if text.is_empty() || text.starts_with('#') || text == "---" {
                return None;
            }
            Some(Line {
                line: i + 1,
                col: indent + 1,
                indent,
                text: text.to_string(),
            })
        })
        .collect()
}

/// Lines after `index` that are deeper than `indent` (a block's children).
fn children(all: &[Line], index: usize, indent: usize) -> Vec<Line> {
    all[index + 1..]
        .iter()
        .take_while(|l| l.indent > indent)
        .cloned()
        .collect()
}

fn key_prefix(text: &str, key: &str) -> Option<usize> {
    for quoted in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(rest) = text.strip_prefix(&quoted) {
            if rest.starts_with(':') {
                return Some(quoted.len() + 1);
            }
        }
    }
    None
}

/// `(line, col)` of the path's target, then of `needle` inside it when given.
pub fn locate(src: &str, path: &[Seg], needle: Option<&str>) -> Option<(usize, usize)> {
    let mut region = lines(src);
    let mut anchor = region.first().map(|l| (l.line, l.col));
    for seg in path {
        let base = region.iter().map(|l| l.indent).min()?;
        match *seg {
            Seg::Key(key) => {
                let found = region
                    .iter()
                    .position(|l| l.indent == base && key_prefix(&l.text, key).is_some());
                match found {
                    Some(i) => {
                        let l = &region[i];
                        let skip = key_prefix(&l.text, key).unwrap_or(0);
                        let value = l.text[skip..].trim_start();
                        let value_col = l.col + l.text.len() - value.len();
                        anchor = Some(if is_scalar(value) {
                            (l.line, value_col)
                        } else {
                            (l.line, l.col)
                        });
                        let mut next = Vec::new();
                        if !value.is_empty() {
                            next.push(Line {
                                line: l.line,
                                col: value_col,
                                indent: base + 1,
                                text: value.to_string(),
                            });
                        }
                        let mut kids = children(&region, i, base);
                        if kids.is_empty() && value.is_empty() {
                            // A list may sit at the key's own indentation.
                            kids = region[i + 1..]
                                .iter()
                                .take_while(|x| {
                                    x.indent > base || (x.indent == base && x.text.starts_with('-'))
                                })
                                .cloned()
                                .collect();
                        }
                        next.extend(kids);
                        region = next;
                    }
                    None => {
                        // Flow style: `{a: 1, key: value}`.
                        let hit = region.iter().find_map(|l| {
                            find_token(&l.text, &format!("{key}:")).map(|c| (l.clone(), c))
                        })?;
                        let (l, c) = hit;
                        let rest = l.text[c + key.len() + 1..].to_string();
                        let col = l.col + c + key.len() + 1;
                        let value = rest.trim_start();
                        anchor = Some(if is_scalar(value) {
                            (l.line, col + rest.len() - value.len())
                        } else {
                            (l.line, l.col + c)
                        });
                        region = vec![Line {
                            line: l.line,
                            col,
                            indent: base + 1,
                            text: rest,
                        }];
                    }
                }
            }
            Seg::Index(n) => {
                let items: Vec<usize> = region
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| {
                        l.indent == base && (l.text == "-" || l.text.starts_with("- "))
                    })
                    .map(|(i, _)| i)
                    .collect();
                let Some(&i) = items.get(n) else {
                    // Flow lists keep the whole region.
                    continue;
                };
                let l = &region[i];
                anchor = Some((l.line, l.col));
                let value = l.text[1..].trim_start();
                let value_col = l.col + l.text.len() - value.len();
                let mut next = Vec::new();
                if !value.is_empty() {
                    next.push(Line {
                        line: l.line,
                        col: value_col,
                        indent: value_col - 1,
                        text: value.to_string(),
                    });
                }
                next.extend(children(&region, i, base));
                region = next;
            }
        }
    }
    if let Some(needle) = needle {
        for l in &region {
            if let Some(c) = find_token(&l.text, needle) {
                return Some((l.line, l.col + c));
            }
        }
    }
    anchor
}

/// A key's value that an error about the key points at: a scalar written on the key's line
/// (`seeds: 0`, `qos: 3`), not a map or list, which the key itself stands for better.
fn is_scalar(value: &str) -> bool {
    !value.is_empty() && !value.starts_with(['{', '[', '#', '|', '>'])
}

fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '+' | '#' | '$')
}

/// Byte offset of `needle` in `text` where it is not part of a longer token.
fn find_token(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let mut from = 0;
    while let Some(pos) = text[from..].find(needle) {
        let start = from + pos;
        let end = start + needle.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        let needle_ends_with_colon = needle.ends_with(':');
        if !before.is_some_and(is_token_char)
            && (needle_ends_with_colon || !after.is_some_and(is_token_char))
        {
            return Some(start);
        }
        from = start + needle.len().max(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
name: x
clients:
  sub: {clean_session: false}
  pub:
    keepalive: 10s
steps:
  # a comment
  - connect: sub
  - subscribe:
      client: subx
      filter: a/#
  - publish: {client: ghost, topic: a}
";

    #[test]
    fn finds_keys_items_and_tokens() {
        assert_eq!(locate(DOC, &[Seg::Key("steps")], None), Some((6, 1)));
        assert_eq!(
            locate(
                DOC,
                &[Seg::Key("clients"), Seg::Key("pub"), Seg::Key("keepalive")],
                None
            ),
            // At the value: an error about a key is about what it says.
            Some((5, 16))
        );
        // A key whose value is a block or a flow map stays at the key.
        assert_eq!(
            locate(DOC, &[Seg::Key("clients"), Seg::Key("sub")], None),
            Some((3, 3))
        );
        assert_eq!(
            locate(DOC, &[Seg::Key("steps"), Seg::Index(0)], Some("sub")),
            Some((8, 14))
        );
        assert_eq!(
            locate(DOC, &[Seg::Key("steps"), Seg::Index(1)], Some("subx")),
            Some((10, 15))
        );
        assert_eq!(
            locate(DOC, &[Seg::Key("steps"), Seg::Index(2)], Some("ghost")),
            Some((12, 23))
        );
        assert_eq!(
            locate(
                DOC,
                &[
                    Seg::Key("clients"),
                    Seg::Key("sub"),
                    Seg::Key("clean_session")
                ],
                None
            ),
            Some((3, 24))
        );
    }

    #[test]
    fn lists_at_the_key_indentation_and_whole_tokens() {
        let doc = "steps:\n- connect: a\n- connect: ab\n";
        assert_eq!(
            locate(doc, &[Seg::Key("steps"), Seg::Index(1)], Some("ab")),
            Some((3, 12))
        );
        assert_eq!(find_token("connect: ab", "a"), None);
        assert_eq!(find_token("x: a, y: a", "a"), Some(3));
    }
}
