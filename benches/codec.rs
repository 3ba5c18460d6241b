//! `cargo bench --bench codec`: decode and encode 100,000 QoS 1 PUBLISH packets (31-byte topic;
//! 64-byte and 1 KiB payloads) with simqtt's codec and, in the same run, with rumqttc's 3.1.1
//! codec as the baseline; a plain copy of the same bytes is the floor. Each figure is the best
//! of several rounds of thread CPU time, so a busy machine shows up as noise rather than as a
//! slow codec, and the arms take turns round by round, so that noise hits them alike.
//! Figures and what limits them: docs/codec-performance.md.
//!
//! Both decoders do the same work: each reads the same bytes from a `BytesMut` made the same way
//! (copied from the stream and made shared by a zero-length split, untimed; the copy's memory
//! is freed after the timed part), returns an owned packet whose payload is a `Bytes` sharing
//! that buffer, and the packet is dropped inside the timed loop. rumqttc's topic is a `String`
//! (allocated and copied); simqtt's is a validated `Bytes` slice of the same buffer. Each
//! decoded packet costs simqtt two refcount increments and two decrements (topic and payload),
//! rumqttc the same plus an allocation. `CODEC_BENCH_ROUNDS=1` under
//! `valgrind --tool=callgrind` gives repeatable instruction counts for the `*_all` functions;
//! `CODEC_BENCH_PAYLOAD=64` (or 1024) runs one payload size only.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4 as rumq;
use simqtt::codec::{self, samples, Packet, ProtocolVersion};

const PACKETS: usize = 100_000;
/// Rounds per figure; `CODEC_BENCH_ROUNDS=1` runs each once (for callgrind, whose counts do
/// not vary between rounds).
const DEFAULT_ROUNDS: usize = 15;

fn rounds() -> usize {
    std::env::var("CODEC_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

/// CPU time of this thread: the benchmark shares its machine, and wall-clock time would count
/// the time other processes held the core.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Times exactly the work it is given, in thread CPU time.
fn timed(work: impl FnOnce()) -> Duration {
    let start = thread_cpu_time();
    work();
    thread_cpu_time() - start
}

/// The best of `rounds()` runs of each arm. Each arm prepares its input (untimed) and returns the
/// time of exactly the work measured. The arms take turns round by round, so a burst of other
/// work on the machine hits every arm alike instead of all the rounds of one.
fn best_interleaved<const N: usize>(arms: &mut [&mut dyn FnMut() -> Duration; N]) -> [Duration; N] {
    let mut best = [Duration::MAX; N];
    for _ in 0..rounds() {
        for (arm, best) in arms.iter_mut().zip(&mut best) {
            *best = (*best).min(arm());
        }
    }
    best
}

// The timed loops, each in a function of its own so a profiler (callgrind's inclusive counts)
// can attribute its cost. Each decoded packet is dropped inside the loop, by both decoders: a
// receiver drops (or hands on) every packet, and the drop (refcounts, property fields) is part
// of what a packet costs.

#[inline(never)]
fn simqtt_decode_all(buf: &mut BytesMut, version: ProtocolVersion) -> usize {
    let mut count = 0;
    while let Some(p) = codec::decode(buf, version, codec::DEFAULT_MAX_PACKET_SIZE).unwrap() {
        black_box(&p);
        count += 1;
    }
    count
}

#[inline(never)]
fn simqtt_decode_slice_all(stream: &Bytes, version: ProtocolVersion) -> usize {
    let mut rest = stream.clone();
    let mut count = 0;
    while let Some((p, used)) =
        codec::decode_slice(&rest, version, codec::DEFAULT_MAX_PACKET_SIZE).unwrap()
    {
        black_box(&p);
        rest = rest.slice(used..);
        count += 1;
    }
    count
}

#[inline(never)]
fn rumqttc_decode_all(buf: &mut BytesMut) -> usize {
    let mut count = 0;
    while !buf.is_empty() {
        let p = rumq::Packet::read(buf, usize::MAX).unwrap();
        black_box(&p);
        count += 1;
    }
    count
}

#[inline(never)]
fn simqtt_encode_all(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    for _ in 0..PACKETS {
        codec::encode(black_box(packet), version, out).unwrap();
    }
}

#[inline(never)]
fn rumqttc_encode_all(packet: &rumq::Packet, out: &mut BytesMut) {
    for _ in 0..PACKETS {
        black_box(packet).write(out, usize::MAX).unwrap();
    }
}

#[inline(never)]
fn plain_copy(from: &[u8], to: &mut [u8]) {
    to.copy_from_slice(black_box(from));
}

struct Row {
    name: &'static str,
    time: Duration,
}

fn main() {
    let version = ProtocolVersion::V311;
    // `CODEC_BENCH_PAYLOAD=64` (or 1024) runs one size only, for a profiler.
    let only: Option<usize> = std::env::var("CODEC_BENCH_PAYLOAD")
        .ok()
        .and_then(|n| n.parse().ok());
    for payload_len in [64usize, 1024] {
        if only.is_some_and(|only| only != payload_len) {
            continue;
        }
        let publish = samples::bench_publish(payload_len);
        assert_eq!(publish.topic.len(), 31);
        let packet = Packet::Publish(publish.clone());
        let theirs = rumq::Packet::Publish(rumq::Publish {
            dup: false,
            qos: rumqttc::QoS::AtLeastOnce,
            retain: false,
            topic: publish.topic.as_str().to_owned(),
            pkid: publish.packet_id().map_or(1, |id| id.get()),
            payload: publish.payload.clone(),
        });

        // The stream both decoders read: our encoding, checked to be byte-identical to theirs.
        let mut stream = BytesMut::new();
        for _ in 0..PACKETS {
            codec::encode(&packet, version, &mut stream).expect("encodes");
        }
        let stream = stream.freeze();
        let mut check = BytesMut::new();
        theirs
            .write(&mut check, usize::MAX)
            .expect("rumqttc encodes");
        assert_eq!(&check[..], &stream[..check.len()], "same wire bytes");
        let bytes = stream.len();

        // Inputs and outputs are allocated and touched outside the timed part, and the input
        // buffer outlives it (a guard holds it), so page faults and unmapping are not measured.
        // One output buffer for both encoders (a RefCell, as both arms hold it), sized and
        // touched once: neither encoder grows it or faults its pages in.
        let out = std::cell::RefCell::new(BytesMut::with_capacity(bytes));
        out.borrow_mut().resize(bytes, 0);
        let mut copy_out = vec![1u8; bytes];
        let [simqtt_decode, simqtt_decode_slice, rumqttc_decode, simqtt_encode, rumqttc_encode, copy] =
            best_interleaved(&mut [
                &mut || {
                    let mut buf = BytesMut::from(&stream[..]);
                    let guard = buf.split_to(0);
                    let time = timed(|| assert_eq!(simqtt_decode_all(&mut buf, version), PACKETS));
                    drop(guard);
                    time
                },
                &mut || timed(|| assert_eq!(simqtt_decode_slice_all(&stream, version), PACKETS)),
                &mut || {
                    let mut buf = BytesMut::from(&stream[..]);
                    let guard = buf.split_to(0);
                    let time = timed(|| assert_eq!(rumqttc_decode_all(&mut buf), PACKETS));
                    drop(guard);
                    time
                },
                &mut || {
                    let mut out = out.borrow_mut();
                    out.clear();
                    let time = timed(|| simqtt_encode_all(&packet, version, &mut out));
                    assert_eq!(out.len(), bytes);
                    time
                },
                &mut || {
                    let mut out = out.borrow_mut();
                    out.clear();
                    let time = timed(|| rumqttc_encode_all(&theirs, &mut out));
                    assert_eq!(out.len(), bytes);
                    time
                },
                &mut || {
                    let time = timed(|| plain_copy(&stream, &mut copy_out));
                    black_box(&copy_out);
                    time
                },
            ]);

        println!(
            "\n{PACKETS} QoS 1 PUBLISH, 31-byte topic, {payload_len}-byte payload \
             ({} bytes each, {:.1} MB in all), best of {}, thread CPU time:",
            bytes / PACKETS,
            bytes as f64 / 1e6,
            rounds()
        );
        println!(
            "{:<32} {:>12} {:>12} {:>10}",
            "", "packets/s", "MB/s", "ns/packet"
        );
        let rows = [
            Row {
                name: "simqtt decode (BytesMut)",
                time: simqtt_decode,
            },
            Row {
                name: "simqtt decode_slice (Bytes)",
                time: simqtt_decode_slice,
            },
            Row {
                name: "rumqttc decode",
                time: rumqttc_decode,
            },
            Row {
                name: "simqtt encode",
                time: simqtt_encode,
            },
            Row {
                name: "rumqttc encode",
                time: rumqttc_encode,
            },
            Row {
                name: "plain copy (floor)",
                time: copy,
            },
        ];
        for row in &rows {
            let secs = row.time.as_secs_f64();
            println!(
                "{:<32} {:>12.0} {:>12.0} {:>10.1}",
                row.name,
                PACKETS as f64 / secs,
                bytes as f64 / secs / 1e6,
                secs * 1e9 / PACKETS as f64
            );
        }
        let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
        println!(
            "decode: simqtt is {:.2}x rumqttc (goal >= 2); decode_slice {:.2}x",
            ratio(simqtt_decode, rumqttc_decode),
            ratio(simqtt_decode_slice, rumqttc_decode)
        );
        println!(
            "encode: simqtt is {:.2}x rumqttc (goal >= 1)",
            ratio(simqtt_encode, rumqttc_encode)
        );
        println!(
            "vs plain copy: decode takes {:.2}x, encode {:.2}x the copy's time{}",
            simqtt_decode.as_secs_f64() / copy.as_secs_f64(),
            simqtt_encode.as_secs_f64() / copy.as_secs_f64(),
            if payload_len == 1024 {
                " (goal <= 1.3)"
            } else {
                ""
            }
        );
    }
}
