//! Which statements a step or a checker may cite, checked mechanically.
//!
//! A finding is worth its citation: the statement it names must be the one the step or checker
//! actually tests, in the version its client speaks, binding the broker in the role the broker
//! has in that step. Tables here say, per kind of expectation, packet and field, which sections
//! of the spec can be about it; [`check_scenario`] and [`check_checker`] hold a citation against
//! them, and the tests below hold the whole library and every checker to them.
//!
//! The sections are the spec's own (`Statement::section`): chapter 3 is one section per packet
//! (3.1 CONNECT … 3.15 AUTH), so a SUBACK expectation citing a 3.10 UNSUBSCRIBE statement is
//! caught; chapters 1, 2 and 4 (data representation, packet format, behaviours) may be cited by
//! any step, with two exceptions that the statement's `role` decides: a rule that binds only
//! the sender of a packet is never the broker's when the step judges how the broker *reacted*
//! to a packet it received, and topic-name/filter syntax (4.7, 4.8.2) binds the client that
//! wrote them, never the broker delivering messages.

use crate::certify::coverage::{checker_statements, relevant_checkers, scenario_versions};
use crate::certify::statements::{Actor, Level, Role, SpecVersion, Statement, Statements};
use crate::history::checkers::CheckerName;
use crate::scenario::cite::Citation;
use crate::scenario::raw::{ack_send, parse_hex, ExpectRawStep, ExpectedPacket};
use crate::scenario::{PacketKind, Scenario, Step};

/// Whether the step judges what the broker sends (or must not send). An `expect_raw` that
/// expects no packet but a reaction (the connection closed, or kept open) judges the broker
/// purely as the receiver of what the scenario sent: a statement that binds only a packet's
/// sender is not the broker's there. `packet: none` alone ("nothing arrives") judges the
/// broker as a sender of nothing.
pub fn broker_sends(step: &Step) -> bool {
    match step {
        Step::ExpectRaw(x) => match x.packet {
            Some(ExpectedPacket::None) => x.closed != Some(true),
            Some(_) => true,
            None => false,
        },
        _ => true,
    }
}

/// A section number as its components (`3.1.2.11.4` → [3, 1, 2, 11, 4]). A packet's opening
/// section (`3.14`) reads as `3.14.0`, as its statements' ids do (`MQTT-3.14.0-1`).
fn components(section: &str) -> Vec<u32> {
    let mut out: Vec<u32> = section
        .split('.')
        .map_while(|p| p.parse::<u32>().ok())
        .collect();
    if out.len() == 2 && out[0] == 3 {
        out.push(0);
    }
    out
}

fn within(section: &[u32], prefix: &[u32]) -> bool {
    section.len() >= prefix.len() && section[..prefix.len()] == *prefix
}

fn within_any(section: &[u32], prefixes: &[&[u32]]) -> bool {
    prefixes.iter().any(|p| within(section, p))
}

/// The CONNECT's options that govern the whole connection and session (Clean Session/Start,
/// will, keepalive, properties such as Maximum Packet Size; the payload): any step may be
/// about them. Not 3.1.0, 3.1.2.1–3.1.2.3 and 3.1.4, which are about handling a CONNECT.
fn connect_option(section: &[u32]) -> bool {
    within(section, &[3, 1, 3]) || (within(section, &[3, 1, 2]) && section.get(3) >= Some(&4))
}

/// The chapter 3 section of a packet type.
fn packet_section(kind: PacketKind) -> u32 {
    match kind {
        PacketKind::Connect => 1,
        PacketKind::Connack => 2,
        PacketKind::Publish => 3,
        PacketKind::Puback => 4,
        PacketKind::Pubrec => 5,
        PacketKind::Pubrel => 6,
        PacketKind::Pubcomp => 7,
        PacketKind::Subscribe => 8,
        PacketKind::Suback => 9,
        PacketKind::Unsubscribe => 10,
        PacketKind::Unsuback => 11,
        PacketKind::Pingreq => 12,
        PacketKind::Pingresp => 13,
        PacketKind::Disconnect => 14,
        PacketKind::Auth => 15,
    }
}

fn kind_of_type(nibble: u8) -> Option<PacketKind> {
    Some(match nibble {
        1 => PacketKind::Connect,
        2 => PacketKind::Connack,
        3 => PacketKind::Publish,
        4 => PacketKind::Puback,
        5 => PacketKind::Pubrec,
        6 => PacketKind::Pubrel,
        7 => PacketKind::Pubcomp,
        8 => PacketKind::Subscribe,
        9 => PacketKind::Suback,
        10 => PacketKind::Unsubscribe,
        11 => PacketKind::Unsuback,
        12 => PacketKind::Pingreq,
        13 => PacketKind::Pingresp,
        14 => PacketKind::Disconnect,
        15 => PacketKind::Auth,
        _ => return None,
    })
}

/// The packets the `raw` sends of `client` before step `index` started with, latest first.
fn raw_inputs(scenario: &Scenario, index: usize, client: &str) -> Vec<PacketKind> {
    scenario.steps[..index]
        .iter()
        .rev()
        .filter_map(|s| match s {
            Step::Raw(r) if r.client == client => r.send.as_deref().and_then(sent_kind),
            _ => None,
        })
        .collect()
}

/// The packet a raw send starts with.
fn sent_kind(send: &str) -> Option<PacketKind> {
    let send = send.trim();
    match send {
        "connect" => Some(PacketKind::Connect),
        "pingreq" => Some(PacketKind::Pingreq),
        "disconnect" => Some(PacketKind::Disconnect),
        s if crate::scenario::raw::scram_client_final(s).is_some() => Some(PacketKind::Auth),
        _ => match ack_send(send) {
            Some(Ok((name, _))) => match name {
                "puback" => Some(PacketKind::Puback),
                "pubrec" => Some(PacketKind::Pubrec),
                "pubrel" => Some(PacketKind::Pubrel),
                _ => Some(PacketKind::Pubcomp),
            },
            _ => parse_hex(send)
                .ok()
                .and_then(|b| b.first().copied())
                .and_then(|b| kind_of_type(b >> 4)),
        },
    }
}

/// Chapter 3 sections an `expect_raw` taking `expected` (after the client sent `inputs`) can
/// be about, besides the CONNECT's options.
fn raw_sections(expected: Option<PacketKind>, inputs: &[PacketKind]) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for &k in inputs {
        out.push(vec![3, packet_section(k)]);
    }
    if let Some(k) = expected {
        out.push(vec![3, packet_section(k)]);
        let related: &[&[u32]] = match k {
            // The CONNECT it answers; no DISCONNECT may come before it.
            PacketKind::Connack => &[&[3, 1], &[3, 14, 0]],
            PacketKind::Puback | PacketKind::Pubrec => &[&[3, 3]],
            PacketKind::Pubrel => &[&[3, 5], &[3, 3]],
            PacketKind::Pubcomp => &[&[3, 6], &[3, 3]],
            PacketKind::Suback => &[&[3, 8]],
            PacketKind::Unsuback => &[&[3, 10]],
            PacketKind::Pingresp => &[&[3, 12]],
            // What routed it (a subscription), what ended it (an unsubscribe), the flows that
            // resend or complete it, a resumed session.
            PacketKind::Publish => &[
                &[3, 8],
                &[3, 10],
                &[3, 4],
                &[3, 5],
                &[3, 6],
                &[3, 7],
                &[3, 1, 4],
            ],
            // A takeover, a second CONNECT.
            PacketKind::Disconnect => &[&[3, 1, 4], &[3, 1, 0]],
            PacketKind::Auth => &[&[3, 1]],
            _ => &[],
        };
        out.extend(related.iter().map(|p| p.to_vec()));
    }
    out
}

/// The sections that say how the packet `k` answers another (its request's "Actions" or
/// "Response" section): a sender rule there is about `k`.
fn answers(k: PacketKind) -> &'static [&'static [u32]] {
    match k {
        PacketKind::Connack => &[&[3, 1, 4], &[3, 14, 0]],
        PacketKind::Puback | PacketKind::Pubrec => &[&[3, 3, 4]],
        PacketKind::Pubrel => &[&[3, 5, 4]],
        PacketKind::Pubcomp => &[&[3, 6, 4]],
        PacketKind::Suback => &[&[3, 8, 4]],
        PacketKind::Unsuback => &[&[3, 10, 4]],
        PacketKind::Pingresp => &[&[3, 12, 4]],
        PacketKind::Disconnect => &[&[3, 1, 4]],
        _ => &[],
    }
}

/// Per checked field of an `expect_raw`, the sections a statement about it can be in.
fn raw_field_sections(x: &ExpectRawStep) -> Vec<(&'static str, FieldRule)> {
    let mut out = Vec::new();
    if x.dup.is_some() {
        out.push((
            "dup",
            FieldRule::Sections(&[&[3, 3, 1, 1], &[4, 3], &[4, 4]]),
        ));
    }
    if x.qos.is_some() {
        out.push(("qos", FieldRule::Sections(QOS_SECTIONS)));
    }
    if x.retain.is_some() {
        out.push(("retain", FieldRule::Sections(RETAIN_SECTIONS)));
    }
    if x.max_len.is_some() {
        out.push(("max_len", FieldRule::MaximumPacketSize));
    }
    if x.topic_alias_max.is_some() {
        out.push((
            "topic_alias_max",
            FieldRule::Sections(&[&[3, 1, 2, 11, 5], &[3, 3, 2, 3, 4]]),
        ));
    }
    if x.session_present.is_some() {
        out.push(("session_present", FieldRule::SessionPresent));
    }
    if x.codes.is_some() {
        out.push((
            "codes",
            FieldRule::Sections(&[
                &[3, 8],
                &[3, 9],
                &[3, 10],
                &[3, 11],
                &[3, 2, 2, 3],
                &[4, 7],
                &[4, 8, 2],
            ]),
        ));
    }
    for name in &x.absent {
        let rule = match name.as_str() {
            "session_expiry_interval" => FieldRule::Sections(&[&[3, 14, 2, 2, 2]]),
            "response_information" => FieldRule::Sections(&[&[3, 1, 2, 11, 6]]),
            "topic_alias" => FieldRule::Sections(&[&[3, 1, 2, 11, 5], &[3, 3, 2, 3, 4]]),
            "reason_string" | "user_property" => FieldRule::ProblemInformation,
            // No statement forbids a Server Keep Alive: only a premise may ask for none.
            _ => FieldRule::Premise,
        };
        out.push(("absent", rule));
    }
    if x.server_keep_alive.is_some() {
        out.push(("server_keep_alive", FieldRule::Premise));
    }
    out
}

const QOS_SECTIONS: &[&[u32]] = &[
    &[3, 3, 1, 2],
    &[3, 3, 1, 3],
    &[3, 3, 4],
    &[3, 3, 5],
    &[3, 8, 4],
    &[3, 1, 2, 6],
    &[3, 2, 2, 3, 4],
    &[4, 3],
    &[4, 4],
    &[4, 8, 2],
];
const RETAIN_SECTIONS: &[&[u32]] = &[&[3, 3, 1, 3], &[3, 1, 2, 7]];

/// What a statement about one checked field must be.
#[derive(Debug, Clone, Copy)]
enum FieldRule {
    Sections(&'static [&'static [u32]]),
    /// The client's Maximum Packet Size, or a property left out to respect it.
    MaximumPacketSize,
    /// Request Problem Information, or a property left out to respect Maximum Packet Size.
    ProblemInformation,
    SessionPresent,
    /// Nothing obliges it: only a premise (`assume: true`) may check it.
    Premise,
}

impl FieldRule {
    fn admits(self, s: &Statement, section: &[u32]) -> bool {
        let size =
            || within(section, &[3, 1, 2, 11, 4]) || s.summary.contains("Maximum Packet Size");
        match self {
            FieldRule::Sections(prefixes) => within_any(section, prefixes),
            FieldRule::MaximumPacketSize => size(),
            FieldRule::ProblemInformation => within(section, &[3, 1, 2, 11, 7]) || size(),
            FieldRule::SessionPresent => {
                s.section.contains("Session Present")
                    || within_any(
                        section,
                        &[
                            &[3, 1, 2, 4],
                            &[3, 1, 2, 11, 2],
                            &[3, 1, 3, 1],
                            &[3, 1, 4],
                            &[4, 1],
                        ],
                    )
            }
            FieldRule::Premise => false,
        }
    }
}

/// Chapter 3 sections a trace expectation (not raw) can be about, besides the CONNECT's
/// options.
fn expectation_sections(step: &Step) -> &'static [&'static [u32]] {
    match step {
        // Deliveries: the PUBLISH, the subscription that routes it, an unsubscribe, a session
        // resumed or taken over, a connection kept open by PINGREQ/PINGRESP.
        Step::ExpectMessages(_) | Step::ExpectNoMessage(_) => &[
            &[3, 3],
            &[3, 8],
            &[3, 10],
            &[3, 1, 4],
            &[3, 14, 4],
            &[3, 12, 4],
        ],
        Step::ExpectWill(_) => &[&[3, 14, 4], &[3, 1, 4], &[3, 3, 1, 3]],
        Step::ExpectSessionPresent(_) => &[&[3, 2, 2], &[3, 1, 4]],
        _ => &[],
    }
}

/// What is wrong with the citation of step `index` (empty: nothing).
pub fn check_step(scenario: &Scenario, index: usize, statements: &Statements) -> Vec<String> {
    let step = &scenario.steps[index];
    let where_ = format!("step {} ({})", index + 1, step.keyword());
    let id = match scenario.citation(index) {
        Citation::Statement(id, _) => id,
        Citation::Note(_) | Citation::None => return Vec::new(),
    };
    let version = SpecVersion::from(scenario.step_version(index));
    let Some(s) = statements.get(version, &id) else {
        return vec![format!(
            "{where_} cites {id}, which is no statement of MQTT {version} (the version its client speaks)"
        )];
    };
    let mut out = Vec::new();
    let cite = format!(
        "{where_} cites {id} ({version}, {}: {})",
        s.section, s.summary
    );
    if s.actor == Actor::Client {
        out.push(format!("{cite}: it binds the client, not the broker"));
    }
    if s.level == Level::May {
        out.push(format!("{cite}: a MAY can never be broken"));
    }
    let section = components(s.section_number());
    let chapter = section.first().copied().unwrap_or(0);
    let chapter3_ok = |allowed: &[Vec<u32>]| {
        chapter != 3 || connect_option(&section) || allowed.iter().any(|p| within(&section, p))
    };
    let client_syntax = within_any(&section, &[&[4, 7], &[4, 8, 2]]) && s.role == Role::Sender;
    match step {
        Step::ExpectRaw(x) => {
            let expected = x.packet.and_then(ExpectedPacket::kind);
            let sent = raw_inputs(scenario, index, &x.client);
            let refusal = expected.is_none() || x.closed == Some(true);
            // A reaction is to the packet just sent; "nothing arrives" may be about anything
            // the client sent before.
            let inputs = if x.packet == Some(ExpectedPacket::None) && x.closed.is_none() {
                &sent[..]
            } else {
                &sent[..sent.len().min(1)]
            };
            let mut in_play = raw_sections(expected, inputs);
            // Another client connecting since the last send may take this session over.
            let last_send = scenario.steps[..index].iter().rposition(
                |p| matches!(p, Step::Raw(r) if r.client == x.client && r.send.is_some()),
            );
            if scenario.steps[last_send.map_or(0, |i| i + 1)..index]
                .iter()
                .any(|p| matches!(p, Step::Connect(_) | Step::RestartClient(_)))
            {
                in_play.push(vec![3, 1, 4]);
            }
            // What the broker sent this client before.
            let taken: Vec<PacketKind> = scenario.steps[..index]
                .iter()
                .filter_map(|p| match p {
                    Step::ExpectRaw(e) if e.client == x.client => {
                        e.packet.and_then(ExpectedPacket::kind)
                    }
                    _ => None,
                })
                .collect();
            // A connection that receives PUBLISHes is under their flow control throughout
            // (Receive Maximum: other packets keep flowing).
            let receives_publish = taken.contains(&PacketKind::Publish);
            if receives_publish {
                in_play.push(vec![3, 3, 4]);
            }
            // "Nothing arrives" may be about any packet the broker sends here.
            if x.packet == Some(ExpectedPacket::None) && x.closed.is_none() {
                in_play.extend(taken.iter().map(|&k| vec![3, packet_section(k)]));
            }
            if !chapter3_ok(&in_play) {
                out.push(format!(
                    "{cite}: that section is about none of the packets in play (expected {}, after the client sent {})",
                    expected.map_or("no packet", PacketKind::as_str),
                    inputs.first().map_or("nothing", |k| k.as_str())
                ));
            }
            if s.role == Role::Sender {
                if !broker_sends(step) {
                    out.push(format!(
                        "{cite}: it binds the sender, and the broker sends nothing here: cite the receiver's own duty (3.1.1 MQTT-4.8.0-1, 5.0 MQTT-4.13.1-1, or the packet's own) or make the step a `note:`"
                    ));
                } else if refusal && matches!(chapter, 1 | 2) {
                    out.push(format!(
                        "{cite}: a data-format rule binds the sender of the input this step refuses: cite the receiver's own duty"
                    ));
                } else if chapter == 3
                    && !connect_option(&section)
                    && x.packet != Some(ExpectedPacket::None)
                    && !(receives_publish && within(&section, &[3, 3, 4]))
                    && !expected.is_some_and(|k| {
                        within(&section, &[3, packet_section(k)])
                            || within_any(&section, answers(k))
                    })
                {
                    out.push(format!(
                        "{cite}: it binds the sender of a packet the broker does not send here"
                    ));
                } else if client_syntax {
                    out.push(format!(
                        "{cite}: topic syntax binds the client that wrote it"
                    ));
                }
            }
            for (field, rule) in raw_field_sections(x) {
                if matches!(rule, FieldRule::Premise) {
                    if !x.assume {
                        out.push(format!(
                            "{where_} checks `{field}` as an obligation, which no statement makes it: use it in a premise (`assume: true`)"
                        ));
                    }
                    continue;
                }
                if !rule.admits(s, &section) {
                    out.push(format!(
                        "{cite}: it is not about the `{field}` the step checks"
                    ));
                }
            }
        }
        Step::ExpectMessages(_)
        | Step::ExpectNoMessage(_)
        | Step::ExpectWill(_)
        | Step::ExpectSessionPresent(_) => {
            let allowed: Vec<Vec<u32>> = expectation_sections(step)
                .iter()
                .map(|p| p.to_vec())
                .collect();
            if !chapter3_ok(&allowed) {
                out.push(format!(
                    "{cite}: that section is not about what the step checks"
                ));
            }
            if s.role == Role::Sender {
                let broker_sent = chapter != 3
                    || connect_option(&section)
                    || within_any(&section, &[&[3, 3], &[3, 2]]);
                if !broker_sent || client_syntax {
                    out.push(format!(
                        "{cite}: it binds the sender of what the client sent (its topic names, filters or packets), not the broker"
                    ));
                }
            }
            let mut fields = Vec::new();
            match step {
                Step::ExpectMessages(x) => {
                    if x.messages.iter().any(|m| m.qos.is_some()) {
                        fields.push(("qos", QOS_SECTIONS));
                    }
                    if x.messages.iter().any(|m| m.retain.is_some()) {
                        fields.push(("retain", RETAIN_SECTIONS));
                    }
                }
                Step::ExpectWill(x) if x.retain.is_some() => {
                    fields.push(("retain", RETAIN_SECTIONS))
                }
                _ => {}
            }
            for (field, prefixes) in fields {
                if !within_any(&section, prefixes) {
                    out.push(format!(
                        "{cite}: it is not about the `{field}` the step checks"
                    ));
                }
            }
        }
        _ => {}
    }
    out
}

/// Every citation problem of a scenario's steps and premises, and every statement its
/// `spec:` claims that nothing in it can fail (coverage would count it as tested and passed).
pub fn check_scenario(scenario: &Scenario, statements: &Statements) -> Vec<String> {
    let mut out: Vec<String> = (0..scenario.steps.len())
        .flat_map(|i| check_step(scenario, i, statements))
        .collect();
    let versions = scenario_versions(scenario);
    let mut checkers = relevant_checkers(scenario);
    // A client-side scenario's `client` checker judges the client under test
    // (`simqtt certify-client`), so the client's duties it cites can fail there.
    if scenario.client_side() && scenario.checker_list().contains(&CheckerName::Client) {
        checkers.push(CheckerName::Client);
    }
    for id in &scenario.spec {
        let by_step = (0..scenario.steps.len()).any(|i| scenario.citation(i).id() == Some(id));
        let by_checker = checkers.iter().any(|&c| {
            versions
                .iter()
                .any(|&v| checker_statements(c, v).contains(&id.as_str()))
        });
        if !by_step && !by_checker {
            out.push(format!(
                "`spec:` lists {id}, but no step cites it and no checker the scenario runs can: nothing here could fail it"
            ));
        }
    }
    out
}

/// The sections a checker's statements may come from: what it judges.
pub fn checker_sections(checker: CheckerName) -> &'static [&'static [u32]] {
    match checker {
        // DUP 0 on QoS 0; at most once.
        CheckerName::Qos0 => &[&[3, 3, 1, 1], &[4, 3, 1]],
        CheckerName::Qos1 => &[&[4, 3, 2], &[4, 5]],
        CheckerName::Qos2 => &[&[4, 3, 3]],
        CheckerName::Ordering => &[&[4, 6]],
        // The will's registration and publication, its delay, its QoS against the granted one,
        // its removal on DISCONNECT.
        CheckerName::Will => &[
            &[3, 1, 2, 5],
            &[3, 1, 2, 6],
            &[3, 1, 2, 7],
            &[3, 1, 3],
            &[3, 8, 4],
            &[3, 14, 4],
        ],
        CheckerName::Retained => &[&[3, 3, 1, 3]],
        CheckerName::Session => &[&[3, 1, 2, 4], &[3, 1, 2, 11, 2], &[3, 2, 2]],
        CheckerName::Resubscribe => &[&[3, 2, 2], &[4, 5]],
        // Matching subscriptions of the current session, the granted QoS, and overlapping
        // subscriptions at their maximum QoS (3.1.1 §3.3.5 Server response, 5.0 §3.3.4 PUBLISH
        // Actions).
        CheckerName::Subscription => &[
            &[3, 1, 2, 4],
            &[3, 3, 2, 1],
            &[3, 3, 4],
            &[3, 3, 5],
            &[3, 8, 4],
            &[3, 10, 4],
        ],
        CheckerName::Invented => &[&[4, 5], &[4, 7, 3]],
        CheckerName::Shared => &[&[4, 8, 2]],
        // The client's own duties as a sender: DUP, the QoS 1/2 flows, resend on reconnect and
        // the order of resends.
        CheckerName::Client => &[&[3, 3, 1, 1], &[4, 3, 2], &[4, 3, 3], &[4, 4], &[4, 6]],
    }
}

/// What is wrong with the statements a checker cites, in each version.
pub fn check_checker(checker: CheckerName, statements: &Statements) -> Vec<String> {
    let mut out = Vec::new();
    for version in SpecVersion::ALL {
        for id in checker_statements(checker, version) {
            let Some(s) = statements.get(version, id) else {
                out.push(format!(
                    "{checker} cites {id}, no statement of MQTT {version}"
                ));
                continue;
            };
            let cite = format!(
                "{checker} cites {id} ({version}, {}: {})",
                s.section, s.summary
            );
            if !s.level.mandatory() {
                out.push(format!("{cite}: not a MUST, so a violation is no finding"));
            }
            // The client checker judges simqtt's own client (its findings are harness errors,
            // never the broker's); every other checker judges the broker.
            if checker == CheckerName::Client {
                if s.actor == Actor::Server {
                    out.push(format!(
                        "{cite}: it binds the server, and the checker judges the client"
                    ));
                }
            } else if s.actor == Actor::Client {
                out.push(format!(
                    "{cite}: it binds the client, and the checker judges the broker"
                ));
            }
            if !within_any(&components(s.section_number()), checker_sections(checker)) {
                out.push(format!(
                    "{cite}: that section is not about what the checker judges"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn scenario(yaml: &str) -> Scenario {
        crate::scenario::parse("t.yaml", yaml).expect("test scenario parses")
    }

    fn problems(yaml: &str) -> Vec<String> {
        check_scenario(&scenario(yaml), Statements::embedded())
    }

    fn library() -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("scenarios/ is readable") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
            &mut out,
        );
        out.sort();
        out
    }

    #[test]
    fn every_library_step_cites_the_statement_it_tests() {
        let files = library();
        assert!(files.len() > 100, "found the scenario library");
        let mut all = Vec::new();
        for file in &files {
            // A scenario whose citations are ambiguous is refused at load time.
            let s = match crate::scenario::load(file) {
                Ok(s) => s,
                Err(e) => {
                    all.push(e.to_string());
                    continue;
                }
            };
            for p in check_scenario(&s, Statements::embedded()) {
                all.push(format!("{}: {p}", file.display()));
            }
        }
        assert!(
            all.is_empty(),
            "{} problems:\n{}",
            all.len(),
            all.join("\n")
        );
    }

    #[test]
    fn the_readme_examples_cite_as_the_library_does() {
        let readme = include_str!("../../scenarios/README.md");
        let mut checked = 0;
        for block in readme.split("```yaml\n").skip(1) {
            let block = &block[..block.find("```").expect("closed block")];
            let first = block.lines().next().unwrap_or_default();
            if first.starts_with("# invalid:") || first.starts_with("# fragment") {
                continue;
            }
            let s = crate::scenario::parse("README.md", block).expect("README example parses");
            let p = check_scenario(&s, Statements::embedded());
            assert!(p.is_empty(), "{block}\n{p:#?}");
            checked += 1;
        }
        assert!(checked >= 5, "checked {checked} examples");
    }

    #[test]
    fn every_checker_cites_what_it_judges() {
        let mut all = Vec::new();
        for checker in CheckerName::ALL {
            all.extend(check_checker(checker, Statements::embedded()));
        }
        assert!(all.is_empty(), "{}", all.join("\n"));
    }

    const SETUP: &str = "
clients: {r: {host: raw, protocol: v5}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x00}
";

    #[test]
    fn a_statement_about_another_packet_is_caught() {
        // SUBACK expectation citing the UNSUBSCRIBE section.
        let p = problems(&format!(
            "spec: [MQTT-3.10.4-4]\n{SETUP}  - raw: {{client: r, send: \"82 07 00 02 00 00 01 71 02\"}}\n  - expect_raw: {{client: r, packet: suback, packet_id: 2}}\n"
        ));
        assert!(
            p.iter()
                .any(|p| p.contains("step 4") && p.contains("none of the packets in play")),
            "{p:#?}"
        );
        // The same with the SUBACK's own statement passes.
        let p = problems(&format!(
            "spec: [MQTT-3.8.4-2]\n{SETUP}  - raw: {{client: r, send: \"82 07 00 02 00 00 01 71 02\"}}\n  - expect_raw: {{client: r, packet: suback, packet_id: 2}}\n"
        ));
        assert!(p.is_empty(), "{p:#?}");
    }

    #[test]
    fn a_field_checked_under_a_statement_not_about_it_is_caught() {
        // A DUP flag cited against "deliveries already started are completed after
        // UNSUBSCRIBE" (raw-redelivery-v311 step 30 before the fix).
        let yaml = "
spec: [MQTT-3.10.4-3]
clients: {r: {host: raw}}
steps:
  - raw: {client: r, send: connect}
  - expect_raw: {client: r, packet: connack, reason: 0x00}
  - raw: {client: r, send: \"a2 05 00 05 00 01 74\"}
  - expect_raw: {client: r, packet: publish, dup: true}
";
        let p = problems(yaml);
        assert!(p.iter().any(|p| p.contains("`dup`")), "{p:#?}");
        // The DUP statement itself is about it.
        assert!(problems(&yaml.replace("MQTT-3.10.4-3", "MQTT-3.3.1-1")).is_empty());
    }

    #[test]
    fn a_sender_rule_on_a_step_where_the_broker_only_receives_is_caught() {
        // 5.0 minimum-length Variable Byte Integer, cited for the close after a PINGREQ that
        // breaks it: the encoder's rule, not the broker's.
        let yaml = format!(
            "spec: [MQTT-1.5.5-1]\n{SETUP}  - raw: {{client: r, send: \"c0 80 00\"}}\n  - expect_raw: {{client: r, closed: true, within: 2s}}\n"
        );
        let p = problems(&yaml);
        assert!(p.iter().any(|p| p.contains("binds the sender")), "{p:#?}");
        // The receiver's own duty is fine.
        assert!(problems(&yaml.replace("MQTT-1.5.5-1", "MQTT-4.13.1-1")).is_empty());
        // So is a CONNECT refusal citing a data-format rule, only when it is the CONNECT's.
        let yaml = "
spec: [MQTT-1.5.4-1]
clients: {r: {host: raw, protocol: v5}}
steps:
  - raw: {client: r, send: \"10 11 00 04 4d 51 54 54 05 02 00 1e 00 00 04 72 ed a0 80\"}
  - expect_raw: {client: r, packet: connack, reasons: [0x80, 0x85], optional: true, closed: true, within: 2s}
";
        let p = problems(yaml);
        assert!(p.iter().any(|p| p.contains("data-format rule")), "{p:#?}");
        assert!(problems(&yaml.replace("MQTT-1.5.4-1", "MQTT-3.1.4-1")).is_empty());
    }

    #[test]
    fn client_statements_and_wrong_versions_are_caught() {
        // 3.1.1 client keepalive duty.
        let p = problems(
            "spec: [MQTT-3.1.2-23]\nclients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: false}\n",
        );
        assert!(p.iter().any(|p| p.contains("binds the client")), "{p:#?}");
        // A 5.0-only id on a 3.1.1 client.
        let p = problems(
            "spec: [MQTT-4.3.3-10]\nclients: {a: {}}\nsteps:\n  - connect: a\n  - expect_session_present: {client: a, present: false}\n",
        );
        assert!(
            p.iter().any(|p| p.contains("no statement of MQTT 3.1.1")),
            "{p:#?}"
        );
    }

    #[test]
    fn topic_syntax_is_not_the_delivering_brokers() {
        // "'#' stands alone or after '/'" binds whoever writes the filter; the delivery
        // through it is 4.5.0-1 (added to every matching subscription).
        let yaml = "
spec: [MQTT-4.7.1-2]
clients: {s: {}, p: {}}
steps:
  - connect: s
  - subscribe: {client: s, filter: 'a/#', qos: 0}
  - connect: p
  - publish: {client: p, topic: a/b/c}
  - expect_messages: {client: s, within: 2s, messages: [{from: p}]}
";
        let p = problems(yaml);
        assert!(p.iter().any(|p| p.contains("not the broker")), "{p:#?}");
        assert!(problems(&yaml.replace("MQTT-4.7.1-2", "MQTT-4.5.0-1")).is_empty());
    }

    #[test]
    fn a_qos_checked_under_a_queueing_statement_is_caught() {
        // qos1-offline-queue-mixed before the fix: the delivered QoS judged under "queue
        // while offline".
        let yaml = "
spec: [MQTT-3.1.2-5]
clients: {sub: {clean_session: false}, pub: {}}
steps:
  - connect: sub
  - subscribe: {client: sub, filter: 'q/#', qos: 2}
  - disconnect: sub
  - connect: pub
  - publish: {client: pub, topic: q/a, qos: 1}
  - connect: sub
  - expect_messages: {client: sub, within: 5s, messages: [{from: pub, qos: 1}]}
";
        let p = problems(yaml);
        assert!(p.iter().any(|p| p.contains("`qos`")), "{p:#?}");
        assert!(problems(&yaml.replace(", qos: 1}]", "}]")).is_empty());
    }

    #[test]
    fn a_premise_checked_as_an_obligation_is_caught() {
        let yaml = "spec: [MQTT-3.2.2-22]\nclients: {r: {host: raw, protocol: v5}}\nsteps:\n  - raw: {client: r, send: connect}\n  - expect_raw: {client: r, packet: connack, reason: 0x00, absent: [server_keep_alive]}\n";
        let p = problems(yaml);
        assert!(p.iter().any(|p| p.contains("premise")), "{p:#?}");
        let premise = yaml.replace("server_keep_alive]}", "server_keep_alive], assume: true}");
        let p = problems(&premise);
        assert!(!p.iter().any(|p| p.contains("`absent`")), "{p:#?}");
    }

    #[test]
    fn a_checker_citing_outside_what_it_judges_is_caught() {
        // The table itself: the will checker may cite the will's sections, not ordering.
        let s = Statements::embedded();
        let will = checker_sections(CheckerName::Will);
        let ordering = s.get(SpecVersion::V311, "MQTT-4.6.0-6").expect("listed");
        assert!(!within_any(&components(ordering.section_number()), will));
        let delay = s.get(SpecVersion::V5, "MQTT-3.1.3-9").expect("listed");
        assert!(within_any(&components(delay.section_number()), will));
    }
}
