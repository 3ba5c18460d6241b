//! The keepalive scenarios find what they promise to find, against a tiny fake broker over real
//! TCP: the library's own files run through `simqtt certify`'s runner.
//!
//! The fake speaks just enough MQTT 3.1.1 and 5.0 for those files and the runner's clean-up
//! (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PUBLISH, PINGREQ, DISCONNECT), and has two knobs: the
//! multiple of the Keep Alive after which it closes a silent connection, and whether it refuses
//! Keep Alive 0 (closing before any CONNACK, as rumqttd 0.20 does). A conforming fake passes
//! every keepalive file; one that closes at twice the Keep Alive fails the 1.5-times files; one
//! that refuses Keep Alive 0 fails the Keep Alive 0 files.

mod certify_support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use certify_support::{case, describe, root, scenarios};
use simqtt::certify::profile::Profile;
use simqtt::certify::runner::{self, Options};
use simqtt::certify::{Certification, Grade, Verdict};

/// How the fake broker treats keepalive.
#[derive(Clone, Copy)]
struct Fake {
    /// A silent connection is closed after this many Keep Alive periods.
    keepalive_factor: f64,
    refuse_keepalive_zero: bool,
}

/// Reads one packet: (first byte, body). `None` on a close, a timeout or garbage.
fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).ok()?;
    let mut length = 0usize;
    let mut shift = 0;
    loop {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).ok()?;
        length |= usize::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

/// The bytes of a packet with this first byte and body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// One connection: CONNECT first, then the answers the scenarios and the runner need.
fn serve(mut stream: TcpStream, fake: Fake) {
    let Some((0x10, connect)) = read_packet(&mut stream) else {
        return;
    };
    // Protocol name (2 + 4 bytes), level, flags, Keep Alive.
    let (Some(&level), Some(keepalive)) = (
        connect.get(6),
        connect.get(8..10).map(|b| u16::from_be_bytes([b[0], b[1]])),
    ) else {
        return;
    };
    let v5 = level == 5;
    if keepalive == 0 && fake.refuse_keepalive_zero {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let connack = if v5 {
        packet(0x20, &[0, 0, 0])
    } else {
        packet(0x20, &[0, 0])
    };
    if stream.write_all(&connack).is_err() {
        return;
    }
    if keepalive > 0 {
        let silence = Duration::from_secs_f64(f64::from(keepalive) * fake.keepalive_factor);
        let _ = stream.set_read_timeout(Some(silence));
    }
    while let Some((first, body)) = read_packet(&mut stream) {
        let id = body.get(..2).map(<[u8]>::to_vec).unwrap_or_default();
        let answer = match first >> 4 {
            // PUBLISH: acknowledge what its QoS asks for.
            3 => {
                let topic_len = body
                    .get(..2)
                    .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
                let pid = body.get(2 + topic_len..4 + topic_len).map(<[u8]>::to_vec);
                match ((first >> 1) & 3, pid) {
                    (1, Some(pid)) => Some(packet(0x40, &pid)),
                    (2, Some(pid)) => Some(packet(0x50, &pid)),
                    _ => None,
                }
            }
            6 => Some(packet(0x70, &id)),
            // SUBSCRIBE: grant QoS 0 to every filter (one code per filter).
            8 => {
                let mut at = if v5 {
                    3 + usize::from(body.get(2).copied().unwrap_or(0))
                } else {
                    2
                };
                let mut codes = Vec::new();
                while at + 2 <= body.len() {
                    let len = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
                    at += 2 + len + 1;
                    codes.push(0u8);
                }
                let mut ack = id.clone();
                if v5 {
                    ack.push(0);
                }
                ack.extend(codes);
                Some(packet(0x90, &ack))
            }
            10 => {
                let mut ack = id.clone();
                if v5 {
                    ack.push(0);
                    ack.push(0);
                }
                Some(packet(0xb0, &ack))
            }
            12 => Some(packet(0xd0, &[])),
            14 => break,
            _ => None,
        };
        if let Some(bytes) = answer {
            if stream.write_all(&bytes).is_err() {
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Starts the fake on a loopback port; it serves until the test process ends.
fn start(fake: Fake) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream, fake));
        }
    });
    addr
}

fn certify(fake: Fake, files: &[&str]) -> Certification {
    let addr = start(fake);
    let options = Options {
        broker_url: format!("mqtt://{addr}"),
        broker: addr,
        endpoint: Default::default(),
        username: None,
        password: None,
        restart_cmd: None,
        profile: Profile {
            name: "keepalive fake".into(),
            ..Profile::default()
        },
        profile_file: None,
        seeds: 1,
        seed: None,
        jobs: 4,
        traces: None,
    };
    let set = scenarios(files);
    let cases = runner::plan(&set, &options);
    runner::certify(cases, &options, None, |_, _, _| {})
}

const ONE_AND_A_HALF: [&str; 2] = [
    "keepalive/raw-one-and-a-half-keepalive-v311.yaml",
    "keepalive/raw-one-and-a-half-keepalive-v5.yaml",
];
const ZERO: [&str; 2] = [
    "keepalive/raw-keepalive-zero-v311.yaml",
    "keepalive/raw-keepalive-zero-v5.yaml",
];

/// The case's MUST findings, as `statement` strings.
fn musts(cert: &Certification, scenario: &str) -> Vec<String> {
    case(&cert.cases, scenario)
        .findings
        .iter()
        .filter(|f| f.grade == Grade::Must)
        .map(|f| f.statement.clone())
        .collect()
}

#[test]
fn a_conforming_fake_passes_every_keepalive_file() {
    assert!(root().join("scenarios/keepalive").is_dir());
    let cert = certify(
        Fake {
            keepalive_factor: 1.5,
            refuse_keepalive_zero: false,
        },
        &[ONE_AND_A_HALF, ZERO].concat(),
    );
    for c in &cert.cases {
        assert!(
            matches!(c.verdict, Verdict::Passed) && c.choices.is_empty(),
            "{}",
            describe(c)
        );
    }
}

#[test]
fn a_broker_closing_at_twice_the_keepalive_fails() {
    let cert = certify(
        Fake {
            keepalive_factor: 2.0,
            refuse_keepalive_zero: false,
        },
        &ONE_AND_A_HALF,
    );
    assert_eq!(
        musts(&cert, "raw-one-and-a-half-keepalive-v311"),
        ["MQTT-3.1.2-24"],
        "{}",
        describe(case(&cert.cases, "raw-one-and-a-half-keepalive-v311"))
    );
    assert_eq!(
        musts(&cert, "raw-one-and-a-half-keepalive-v5"),
        ["MQTT-3.1.2-22"],
        "{}",
        describe(case(&cert.cases, "raw-one-and-a-half-keepalive-v5"))
    );
}

#[test]
fn a_broker_refusing_keepalive_zero_is_found() {
    let cert = certify(
        Fake {
            keepalive_factor: 1.5,
            refuse_keepalive_zero: true,
        },
        &ZERO,
    );
    let v311 = case(&cert.cases, "raw-keepalive-zero-v311");
    assert!(v311.failed(), "{}", describe(v311));
    assert_eq!(
        musts(&cert, "raw-keepalive-zero-v311"),
        ["MQTT-3.1.4-4"],
        "{}",
        describe(v311)
    );
    let v5 = case(&cert.cases, "raw-keepalive-zero-v5");
    assert!(v5.failed(), "{}", describe(v5));
    assert_eq!(
        musts(&cert, "raw-keepalive-zero-v5"),
        ["MQTT-3.1.4-5"],
        "{}",
        describe(v5)
    );
}
