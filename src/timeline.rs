//! The story of a failure, told from its trace: the clients, the broker and the faults as lanes,
//! the packets and events around the violation, what was owed and what happened. Rendered as a
//! Mermaid sequence diagram (Markdown reports), an inline SVG (the self-contained HTML report)
//! or plain text lines (terminals, JUnit).
//!
//! A timeline is built from trace records only (no clock, no environment), so the same run
//! always draws the same timeline and replay output stays byte-identical.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::history::{Event, Fault, FaultTarget, Record, Trace};

/// Records shown before a violation's first marked record: what led to it.
pub const RECORDS_BEFORE: usize = 10;
/// Records shown after each marked record.
pub const RECORDS_AFTER: usize = 3;
/// Faults and broker restarts before the window, shown however far back they are (the most
/// recent ones): a lost message is usually the doing of a fault long before it was missed.
pub const EARLIER_FAULTS_SHOWN: usize = 6;
/// A bound on the entries of one timeline, so a diagram stays readable.
pub const ENTRIES_MAX: usize = 60;

/// The lane of the faults (and of the runner's notes).
pub const FAULT_LANE: &str = "faults";
/// The lane of the broker.
pub const BROKER_LANE: &str = "broker";

/// One row of a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A record: an arrow from lane `from` to lane `to`, or a note over `from` when they are
    /// equal.
    Event {
        /// The record's index in the trace.
        index: usize,
        at_ms: u64,
        from: usize,
        to: usize,
        label: String,
        /// One of the records that show the violation.
        marked: bool,
    },
    /// Records left out.
    Gap { skipped: usize },
}

/// What led to one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// `[MQTT-4.3.3-2] qos2`, or the checker alone when no statement applies.
    pub title: String,
    pub owed: String,
    pub happened: String,
    /// Client lanes in order of appearance, then the broker, then the faults.
    pub lanes: Vec<String>,
    pub entries: Vec<Entry>,
}

/// Indices of the records a failure report marks (`>` lines of [`Trace::excerpt`]): the
/// records that show the violation.
pub fn marked_records(report: &str) -> Vec<usize> {
    report
        .lines()
        .filter_map(|line| line.strip_prefix('>'))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The records of an excerpt ([`Trace::excerpt`]) with their indices and marks, and the gaps
/// (`...`) between them; lines that are not records are ignored. Certification keeps only the
/// excerpt of a finding, not the whole trace.
fn excerpt_records(excerpt: &str) -> Vec<Option<(usize, bool, Record)>> {
    let mut out = Vec::new();
    for line in excerpt.lines() {
        if line.trim() == "..." {
            out.push(None);
            continue;
        }
        let (marked, rest) = match line.strip_prefix('>') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let rest = rest.trim_start();
        let Some((index, json)) = rest.split_once(' ') else {
            continue;
        };
        let (Ok(index), Ok(record)) = (index.parse(), serde_json::from_str::<Record>(json)) else {
            continue;
        };
        out.push(Some((index, marked, record)));
    }
    out
}

/// The message ids a failure report names (`message ID from PUBLISHER`, as
/// [`crate::history::checkers::Violation::render`] writes them).
pub fn message_of(report: &str) -> Option<&str> {
    let first = report.lines().next()?;
    let (_, rest) = first.split_once(" message ")?;
    let (id, rest) = rest.split_once(' ')?;
    rest.starts_with("from ").then_some(id)
}

impl Timeline {
    /// The timeline of a failure over its whole trace: the records around the marked ones,
    /// with the faults and broker restarts that came before.
    pub fn from_trace(
        trace: &Trace,
        title: String,
        owed: String,
        happened: String,
        marked: &[usize],
    ) -> Timeline {
        let len = trace.records.len();
        let mut marked: Vec<usize> = marked.iter().copied().filter(|&i| i < len).collect();
        if marked.is_empty() && len > 0 {
            marked.push(len - 1);
        }
        let mut wanted = BTreeSet::new();
        for &i in &marked {
            let start = i.saturating_sub(RECORDS_BEFORE);
            let end = (i + RECORDS_AFTER).min(len.saturating_sub(1));
            wanted.extend(start..=end);
        }
        let first = wanted.first().copied().unwrap_or(0);
        let earlier: Vec<usize> = (0..first)
            .filter(|&i| {
                matches!(
                    trace.records[i].event,
                    Event::Fault { .. } | Event::BrokerStarted { .. }
                )
            })
            .collect();
        wanted.extend(earlier.iter().rev().take(EARLIER_FAULTS_SHOWN));
        // Past the bound, keep the records nearest the marked ones.
        while wanted.len() > ENTRIES_MAX {
            let far = wanted
                .iter()
                .copied()
                .filter(|i| !marked.contains(i))
                .max_by_key(|i| marked.iter().map(|m| m.abs_diff(*i)).min().unwrap_or(0));
            match far {
                Some(i) => wanted.remove(&i),
                None => break,
            };
        }
        let mut rows = Vec::new();
        let mut previous: Option<usize> = None;
        for i in wanted {
            match previous {
                Some(p) if i > p + 1 => rows.push(None),
                None if i > 0 => rows.push(None),
                _ => {}
            }
            rows.push(Some((i, marked.contains(&i), trace.records[i].clone())));
            previous = Some(i);
        }
        Timeline::build(title, owed, happened, rows, Some(len))
    }

    /// The timeline of a failure from the excerpt of its report (certification keeps no more).
    pub fn from_excerpt(title: String, owed: String, happened: String, excerpt: &str) -> Timeline {
        Timeline::build(title, owed, happened, excerpt_records(excerpt), None)
    }

    fn build(
        title: String,
        owed: String,
        happened: String,
        rows: Vec<Option<(usize, bool, Record)>>,
        trace_len: Option<usize>,
    ) -> Timeline {
        let mut clients: Vec<String> = Vec::new();
        for (_, _, record) in rows.iter().flatten() {
            for name in lanes_of(record) {
                if name != BROKER_LANE && name != FAULT_LANE && !clients.contains(&name) {
                    clients.push(name);
                }
            }
        }
        let mut lanes = clients;
        lanes.push(BROKER_LANE.to_string());
        lanes.push(FAULT_LANE.to_string());
        let lane = |name: &str| lanes.iter().position(|l| l == name).unwrap_or(0);
        let mut entries = Vec::new();
        let mut last_index: Option<usize> = None;
        let mut pending_gap = false;
        for row in rows {
            let Some((index, marked, record)) = row else {
                pending_gap = true;
                continue;
            };
            if pending_gap || last_index.is_some_and(|p| index > p + 1) {
                let skipped = index - last_index.map_or(0, |p| p + 1);
                entries.push(Entry::Gap { skipped });
                pending_gap = false;
            }
            let (from, to, label) = describe(&record);
            entries.push(Entry::Event {
                index,
                at_ms: record.at_ms,
                from: lane(&from),
                to: lane(&to),
                label,
                marked,
            });
            last_index = Some(index);
        }
        if let (Some(len), Some(last)) = (trace_len, last_index) {
            if last + 1 < len {
                entries.push(Entry::Gap {
                    skipped: len - last - 1,
                });
            }
        }
        Timeline {
            title,
            owed,
            happened,
            lanes,
            entries,
        }
    }

    /// A Mermaid sequence diagram (for a ```` ```mermaid ```` block). The records that show the
    /// violation are on a red background; what was owed and what happened close it.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("sequenceDiagram\n");
        for (i, lane) in self.lanes.iter().enumerate() {
            let _ = writeln!(out, "    participant L{i} as {}", mermaid_text(lane));
        }
        let (first, last) = (0, self.lanes.len() - 1);
        for entry in &self.entries {
            match entry {
                Entry::Gap { skipped } => {
                    let _ = writeln!(
                        out,
                        "    Note over L{first},L{last}: … {skipped} record{} …",
                        plural(*skipped)
                    );
                }
                Entry::Event {
                    index,
                    at_ms,
                    from,
                    to,
                    label,
                    marked,
                } => {
                    if *marked {
                        out.push_str("    rect rgb(255, 214, 214)\n");
                    }
                    let text = mermaid_text(&format!("{} #{index} {label}", ms(*at_ms)));
                    if from == to {
                        let _ = writeln!(out, "    Note over L{from}: {text}");
                    } else {
                        let arrow = if label.starts_with("disconnected") {
                            "-x"
                        } else {
                            "->>"
                        };
                        let _ = writeln!(out, "    L{from}{arrow}L{to}: {text}");
                    }
                    if *marked {
                        out.push_str("    end\n");
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "    Note over L{first},L{last}: owed: {}",
            mermaid_text(&self.owed)
        );
        let _ = writeln!(
            out,
            "    Note over L{first},L{last}: happened: {}",
            mermaid_text(&self.happened)
        );
        out
    }

    /// Plain text, one line per record: time, lanes, what happened; `>` marks the records that
    /// show the violation.
    pub fn text(&self) -> String {
        let width = self
            .lanes
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for entry in &self.entries {
            match entry {
                Entry::Gap { skipped } => {
                    let _ = writeln!(out, "  {:>10}  … {skipped} record{}", "", plural(*skipped));
                }
                Entry::Event {
                    index,
                    at_ms,
                    from,
                    to,
                    label,
                    marked,
                } => {
                    let mark = if *marked { '>' } else { ' ' };
                    let path = if from == to {
                        format!("{:>width$}   {:width$}", self.lanes[*from], "")
                    } else {
                        format!("{:>width$} → {:width$}", self.lanes[*from], self.lanes[*to])
                    };
                    let _ = writeln!(out, "{mark} {:>10}  {path}  #{index} {label}", ms(*at_ms));
                }
            }
        }
        let _ = writeln!(out, "  owed:     {}", self.owed);
        let _ = writeln!(out, "  happened: {}", self.happened);
        out
    }

    /// An inline SVG sequence diagram (no script, no network): lanes as vertical lines,
    /// arrows between them, notes on a lane, marked records on a red band.
    pub fn svg(&self) -> String {
        const LANE_WIDTH: usize = 240;
        const ROW_HEIGHT: usize = 26;
        const TOP: usize = 40;
        const LEFT: usize = 80;
        let width = LEFT + LANE_WIDTH * self.lanes.len();
        let height = TOP + ROW_HEIGHT * (self.entries.len() + 1);
        let x = |lane: usize| LEFT + LANE_WIDTH * lane + LANE_WIDTH / 2;
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"{width}\" \
             height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"monospace\" \
             font-size=\"11\">\n<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" \
             refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">\
             <path d=\"M 0 0 L 10 5 L 0 10 z\"/></marker></defs>\n"
        );
        for (i, lane) in self.lanes.iter().enumerate() {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\
                 <line x1=\"{0}\" y1=\"28\" x2=\"{0}\" y2=\"{height}\" stroke=\"#999\" \
                 stroke-dasharray=\"4 3\"/>",
                x(i),
                html_escape(lane)
            );
        }
        for (row, entry) in self.entries.iter().enumerate() {
            let y = TOP + ROW_HEIGHT * row + ROW_HEIGHT / 2;
            match entry {
                Entry::Gap { skipped } => {
                    let _ = writeln!(
                        out,
                        "<text x=\"{}\" y=\"{y}\" text-anchor=\"middle\" fill=\"#777\">… {skipped} \
                         record{} …</text>",
                        width / 2,
                        plural(*skipped)
                    );
                }
                Entry::Event {
                    index,
                    at_ms,
                    from,
                    to,
                    label,
                    marked,
                } => {
                    if *marked {
                        let _ = writeln!(
                            out,
                            "<rect x=\"0\" y=\"{}\" width=\"{width}\" height=\"{ROW_HEIGHT}\" \
                             fill=\"#ffd6d6\"/>",
                            y - ROW_HEIGHT / 2
                        );
                    }
                    let _ = writeln!(
                        out,
                        "<text x=\"4\" y=\"{}\" fill=\"#555\">{} #{index}</text>",
                        y + 4,
                        ms(*at_ms)
                    );
                    let label = html_escape(&shorten(label, 60));
                    if from == to {
                        let _ = writeln!(
                            out,
                            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#333\" \
                             font-style=\"italic\">{label}</text>",
                            x(*from),
                            y + 4
                        );
                    } else {
                        let _ = writeln!(
                            out,
                            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{0}\" stroke=\"#000\" \
                             marker-end=\"url(#arrow)\"/><text x=\"{}\" y=\"{}\" \
                             text-anchor=\"middle\">{label}</text>",
                            x(*from),
                            y + 6,
                            x(*to),
                            (x(*from) + x(*to)) / 2,
                            y + 1
                        );
                    }
                }
            }
        }
        out.push_str("</svg>\n");
        out
    }
}

/// The lanes a record touches.
fn lanes_of(record: &Record) -> Vec<String> {
    let (from, to, _) = describe(record);
    vec![from, to]
}

/// (from lane, to lane, label) of a record.
fn describe(record: &Record) -> (String, String, String) {
    let broker = || BROKER_LANE.to_string();
    let to_broker = |c: &str, label: String| (c.to_string(), broker(), label);
    let to_client = |c: &str, label: String| (broker(), c.to_string(), label);
    let note = |lane: &str, label: String| (lane.to_string(), lane.to_string(), label);
    match &record.event {
        Event::BrokerStarted { durable } => note(
            BROKER_LANE,
            format!("broker started{}", if *durable { " (durable)" } else { "" }),
        ),
        Event::Network {
            latency_min_ms,
            latency_max_ms,
            ..
        } => note(
            FAULT_LANE,
            format!("network latency {latency_min_ms}-{latency_max_ms} ms"),
        ),
        Event::ConnectAttempt {
            client,
            clean_start,
            keep_alive_secs,
            will,
            protocol,
            ..
        } => to_broker(
            client,
            format!(
                "CONNECT {} clean={clean_start} keepalive={keep_alive_secs}s{}",
                compact(protocol),
                will.as_ref()
                    .map(|w| format!(" will {} on {}", w.id, w.topic))
                    .unwrap_or_default()
            ),
        ),
        Event::ConnAck {
            client,
            session_present,
            reason,
        } => to_client(
            client,
            format!("CONNACK {reason} session_present={session_present}"),
        ),
        Event::ConnectFailed { client, error } => note(client, format!("connect failed: {error}")),
        Event::Subscribe {
            client, filters, ..
        } => to_broker(
            client,
            format!(
                "SUBSCRIBE {}",
                filters
                    .iter()
                    .map(|f| format!("{} q{}", f.filter, f.qos.as_u8()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Event::SubAck { client, results } => to_client(
            client,
            format!(
                "SUBACK {}",
                results
                    .iter()
                    .map(|g| match g.granted {
                        Some(q) => format!("q{}", q.as_u8()),
                        None => "refused".to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Event::Unsubscribe { client, filters } => {
            to_broker(client, format!("UNSUBSCRIBE {}", filters.join(", ")))
        }
        Event::UnsubAck { client, .. } => to_client(client, "UNSUBACK".to_string()),
        Event::PublishSent {
            client,
            id,
            topic,
            qos,
            retain,
            ..
        } => note(
            client,
            format!(
                "app publishes {id} on {topic} q{}{}",
                qos.as_u8(),
                if *retain { " retain" } else { "" }
            ),
        ),
        Event::PublishTransmitted {
            client,
            id,
            dup,
            packet_id,
        } => to_broker(
            client,
            format!(
                "PUBLISH {id}{}{}",
                packet_id.map(|p| format!(" pid={p}")).unwrap_or_default(),
                if *dup { " dup" } else { "" }
            ),
        ),
        Event::ReleaseTransmitted {
            client,
            id,
            packet_id,
        } => to_broker(client, format!("PUBREL {id} pid={packet_id}")),
        Event::PublishAcked {
            client,
            id,
            accepted,
            reason,
        } => to_client(
            client,
            format!(
                "ack of {id} {reason}{}",
                if *accepted { "" } else { " (refused)" }
            ),
        ),
        Event::PublishFailed { client, id, cause } => {
            note(client, format!("gave up {id}: {cause}"))
        }
        Event::Delivered {
            client,
            id,
            topic,
            qos,
            retain,
            dup,
            ..
        } => to_client(
            client,
            format!(
                "PUBLISH {id} on {topic} q{}{}{}",
                qos.as_u8(),
                if *retain { " retain" } else { "" },
                if *dup { " dup" } else { "" }
            ),
        ),
        Event::Disconnected { client, cause } => {
            to_broker(client, format!("disconnected: {}", compact(cause)))
        }
        Event::Fault { fault } => {
            let label = format!("fault {}", compact(fault));
            match fault_lane(fault) {
                Some(target) => (FAULT_LANE.to_string(), target, label),
                None => note(FAULT_LANE, label),
            }
        }
        Event::Note { text } => note(FAULT_LANE, text.clone()),
        Event::RawOpened { client, connection } => {
            to_broker(client, format!("raw connection {connection} opened"))
        }
        Event::RawSent {
            client,
            connection,
            bytes,
        } => to_broker(
            client,
            format!("raw {connection}: bytes {}", shorten(bytes, 24)),
        ),
        Event::RawReceived {
            client,
            connection,
            summary,
            ..
        } => to_client(client, format!("raw {connection}: {summary}")),
        Event::RawClosed {
            client,
            connection,
            by,
            detail,
        } => note(client, format!("raw {connection} closed by {by}: {detail}")),
    }
}

/// The lane a fault acts on: the client or the broker; a link fault between a client's host
/// and the broker's has no one lane (a note over the faults).
fn fault_lane(fault: &Fault) -> Option<String> {
    match fault.targets() {
        FaultTarget::Client(c) => Some(c.to_string()),
        FaultTarget::Broker => Some(BROKER_LANE.to_string()),
        FaultTarget::Link(..) => None,
    }
}

/// `kind k=v k=v` from a tagged enum's JSON (faults, disconnect causes).
fn compact<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => {
            let mut out = map
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_string();
            for (k, v) in map.iter().filter(|(k, _)| *k != "kind") {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = write!(out, " {k}={v}");
            }
            out
        }
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn ms(at_ms: u64) -> String {
    format!("{}.{:03}s", at_ms / 1000, at_ms % 1000)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).collect::<String>() + "…"
    }
}

/// Text Mermaid shows as written: its statement separator, comment and entity characters and
/// HTML as entity codes, one line.
fn mermaid_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ';' => out.push_str("#59;"),
            '#' => out.push_str("#35;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '%' => out.push_str("#37;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A whole HTML page around `body`: one file with its style inline, no script, nothing
/// fetched from the network (a CI artefact opens as it is).
pub fn html_page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>\n{HTML_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        html_escape(title)
    )
}

const HTML_STYLE: &str = "body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
tr.bad td { background: #ffe8e8; }
section.failure { border-top: 2px solid #c33; margin-top: 2em; }
div.timeline { overflow-x: auto; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
code { background: #f3f3f3; padding: 0 0.2em; }
";

/// Text safe inside HTML (and SVG) elements and attributes.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
