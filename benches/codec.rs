//! `cargo bench --bench codec`: decode and encode 100,000 QoS 1 PUBLISH packets (31-byte topic;
//! 64-byte and 1 KiB payloads) with simqtt's codec and, in the same run, with rumqttc's 3.1.1
//! codec as the baseline; a plain copy of the same bytes is the floor. Each figure is the best
//! of several rounds, so a busy machine shows up as noise rather than as a slow codec.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4 as rumq;
use simqtt::codec::{self, samples, Packet, ProtocolVersion};

const PACKETS: usize = 100_000;
const ROUNDS: usize = 7;

/// The best time of `ROUNDS` runs of `round`, each given fresh input from `setup`.
fn best<S, T>(mut setup: impl FnMut() -> S, mut round: impl FnMut(S) -> T) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let input = setup();
        let start = Instant::now();
        black_box(round(input));
        best = best.min(start.elapsed());
    }
    best
}

struct Row {
    name: &'static str,
    time: Duration,
}

fn main() {
    let version = ProtocolVersion::V311;
    for payload_len in [64usize, 1024] {
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

        let simqtt_decode = best(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let mut count = 0;
                while let Some(p) =
                    codec::decode(&mut buf, version, codec::DEFAULT_MAX_PACKET_SIZE).unwrap()
                {
                    black_box(&p);
                    count += 1;
                }
                assert_eq!(count, PACKETS);
            },
        );
        let simqtt_decode_slice = best(
            || stream.clone(),
            |mut rest: Bytes| {
                let mut count = 0;
                while let Some((p, used)) =
                    codec::decode_slice(&rest, version, codec::DEFAULT_MAX_PACKET_SIZE).unwrap()
                {
                    black_box(&p);
                    rest = rest.slice(used..);
                    count += 1;
                }
                assert_eq!(count, PACKETS);
            },
        );
        let rumqttc_decode = best(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let mut count = 0;
                while !buf.is_empty() {
                    let p = rumq::Packet::read(&mut buf, usize::MAX).unwrap();
                    black_box(&p);
                    count += 1;
                }
                assert_eq!(count, PACKETS);
            },
        );
        let simqtt_encode = best(
            || BytesMut::with_capacity(bytes),
            |mut out| {
                for _ in 0..PACKETS {
                    codec::encode(black_box(&packet), version, &mut out).unwrap();
                }
                assert_eq!(out.len(), bytes);
                out
            },
        );
        let rumqttc_encode = best(
            || BytesMut::with_capacity(bytes),
            |mut out| {
                for _ in 0..PACKETS {
                    black_box(&theirs).write(&mut out, usize::MAX).unwrap();
                }
                assert_eq!(out.len(), bytes);
                out
            },
        );
        let copy = best(
            || vec![0u8; bytes],
            |mut out| {
                out.copy_from_slice(black_box(&stream[..]));
                out
            },
        );

        println!(
            "\n{PACKETS} QoS 1 PUBLISH, 31-byte topic, {payload_len}-byte payload \
             ({} bytes each, {:.1} MB in all), best of {ROUNDS}:",
            bytes / PACKETS,
            bytes as f64 / 1e6
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
