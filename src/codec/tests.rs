//! Codec tests: round trips, incremental decoding, known answers, validation rules.

use bytes::BytesMut;

use super::*;

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

fn enc(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("encodes");
    assert_eq!(out.len(), encoded_len(packet, version).unwrap());
    out
}

#[test]
fn canonical_packets_round_trip() {
    for version in VERSIONS {
        for (name, packet) in samples::canonical(version) {
            let mut buf = enc(&packet, version);
            let len = buf.len();
            let frozen = buf.clone().freeze();
            let decoded = decode(&mut buf, version, DEFAULT_MAX_PACKET_SIZE)
                .unwrap_or_else(|e| panic!("{version:?} {name}: {e}"))
                .expect("complete");
            assert_eq!(decoded, packet, "{version:?} {name}");
            assert!(buf.is_empty());
            let (again, used) = decode_slice(&frozen, version, DEFAULT_MAX_PACKET_SIZE)
                .unwrap()
                .unwrap();
            assert_eq!((again, used), (packet.clone(), len));
        }
    }
}

#[test]
fn every_prefix_is_incomplete_and_consumes_nothing() {
    for version in VERSIONS {
        for (name, packet) in samples::canonical(version) {
            let full = enc(&packet, version);
            for cut in 0..full.len() {
                let mut part = BytesMut::from(&full[..cut]);
                assert_eq!(
                    decode(&mut part, version, DEFAULT_MAX_PACKET_SIZE),
                    Ok(None),
                    "{version:?} {name} cut at {cut}"
                );
                assert_eq!(part.len(), cut);
            }
        }
    }
}

mod properties {
    //! proptest: encode→decode identity for every packet type in both versions, a valid stream
    //! split at every byte boundary, arbitrary bytes never panic.

    use ::arbitrary::{Arbitrary, Unstructured};
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;

    use super::super::arbitrary::fit_to_version;
    use super::super::*;

    /// A packet of type `type_index` (0..15) built from `data`, made valid for `version`.
    fn packet_of(type_index: u8, data: &[u8], version: ProtocolVersion) -> Packet {
        let mut u = Unstructured::new(data);
        let generated = match type_index {
            0 => Connect::arbitrary(&mut u).map(|c| Packet::Connect(Box::new(c))),
            1 => ConnAck::arbitrary(&mut u).map(Packet::ConnAck),
            2 => Publish::arbitrary(&mut u).map(Packet::Publish),
            3 => Ack::arbitrary(&mut u).map(Packet::PubAck),
            4 => Ack::arbitrary(&mut u).map(Packet::PubRec),
            5 => Ack::arbitrary(&mut u).map(Packet::PubRel),
            6 => Ack::arbitrary(&mut u).map(Packet::PubComp),
            7 => Subscribe::arbitrary(&mut u).map(Packet::Subscribe),
            8 => SubAck::arbitrary(&mut u).map(Packet::SubAck),
            9 => Unsubscribe::arbitrary(&mut u).map(Packet::Unsubscribe),
            10 => UnsubAck::arbitrary(&mut u).map(Packet::UnsubAck),
            11 => Ok(Packet::PingReq),
            12 => Ok(Packet::PingResp),
            13 => Disconnect::arbitrary(&mut u).map(Packet::Disconnect),
            _ => Auth::arbitrary(&mut u).map(Packet::Auth),
        };
        // `arbitrary` refuses some draws (a zero where a NonZero goes); fall back to the
        // canonical packet of the type, so every type is still exercised.
        let mut packet = generated.unwrap_or_else(|_| {
            let canonical = samples::canonical(ProtocolVersion::V5);
            canonical[usize::from(type_index).min(canonical.len() - 1)]
                .1
                .clone()
        });
        fit_to_version(&mut packet, version);
        packet
    }

    fn version() -> impl Strategy<Value = ProtocolVersion> {
        prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
    }

    fn packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
        (
            version(),
            0u8..15,
            proptest::collection::vec(any::<u8>(), 0..400),
        )
            .prop_map(|(version, type_index, data)| {
                (version, packet_of(type_index, &data, version))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn encode_then_decode_is_identity((version, packet) in packet()) {
            let mut out = BytesMut::new();
            encode(&packet, version, &mut out).unwrap();
            prop_assert_eq!(out.len(), encoded_len(&packet, version).unwrap());
            let total = out.len();
            let decoded = decode(&mut out, version, DEFAULT_MAX_PACKET_SIZE).unwrap();
            prop_assert_eq!(decoded, Some(packet));
            prop_assert!(out.is_empty(), "{} of {} bytes left", out.len(), total);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            version in version(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
            max in prop_oneof![Just(DEFAULT_MAX_PACKET_SIZE), 0u32..400],
        ) {
            let mut buf = BytesMut::from(&data[..]);
            // Both fast paths (BytesMut and Bytes) agree with the general path on the first
            // packet, errors and consumed lengths included.
            let first = decode(&mut buf, version, max)
                .map(|packet| packet.map(|packet| (packet, data.len() - buf.len())));
            while let Ok(Some(_)) = decode(&mut buf, version, max) {}
            let data = Bytes::from(data);
            let general = super::super::decode::decode_slice_general(&data, version, max);
            prop_assert_eq!(&first, &general);
            prop_assert_eq!(decode_slice(&data, version, max), general);
        }

        /// PUBLISH frames near the fast path's edges: one- and two-byte remaining lengths (and a
        /// non-minimal two-byte one), topics with wildcards, U+0000 and broken UTF-8, a small
        /// maximum packet size, and a frame cut short: `decode`, `decode_slice` and the general
        /// path agree, errors and consumed lengths included.
        #[test]
        fn publish_fast_paths_agree_with_the_general_path(
            version in version(),
            flags in 0u8..16,
            topic in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'/'), Just(b'+'), Just(b'#'), Just(0u8), Just(0xC3u8), any::<u8>()],
                0..40,
            ),
            extra in proptest::collection::vec(any::<u8>(), 0..6),
            payload_len in 0usize..300,
            non_minimal in any::<bool>(),
            max in prop_oneof![Just(DEFAULT_MAX_PACKET_SIZE), 100u32..400],
            cut in any::<bool>(),
        ) {
            let mut body = (topic.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(&topic);
            body.extend_from_slice(&extra);
            body.resize(body.len() + payload_len, b'x');
            let len = body.len();
            let mut data = vec![0x30 | flags];
            if len < 128 && non_minimal {
                data.extend_from_slice(&[len as u8 | 0x80, 0]);
            } else if len < 128 {
                data.push(len as u8);
            } else {
                data.extend_from_slice(&[(len as u8 & 0x7F) | 0x80, (len >> 7) as u8]);
            }
            data.extend_from_slice(&body);
            if cut {
                data.pop();
            }
            let data = Bytes::from(data);
            let general = super::super::decode::decode_slice_general(&data, version, max);
            prop_assert_eq!(&decode_slice(&data, version, max), &general);
            let mut buf = BytesMut::from(&data[..]);
            let first = decode(&mut buf, version, max)
                .map(|packet| packet.map(|packet| (packet, data.len() - buf.len())));
            prop_assert_eq!(&first, &general);
        }

        /// Arbitrary bytes after a valid fixed header: the body parser sees every kind of junk.
        #[test]
        fn arbitrary_bodies_never_panic(
            version in version(),
            first in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut data = vec![first, body.len() as u8];
            data.extend_from_slice(&body);
            let data = Bytes::from(data);
            let result = decode_slice(&data, version, DEFAULT_MAX_PACKET_SIZE);
            // The PUBLISH fast path and the general path agree, errors included.
            prop_assert_eq!(
                &result,
                &super::super::decode::decode_slice_general(&data, version, DEFAULT_MAX_PACKET_SIZE)
            );
            if let Ok(Some((packet, _))) = result {
                // Whatever decodes re-encodes and decodes the same.
                let mut out = BytesMut::new();
                encode(&packet, version, &mut out).unwrap();
                prop_assert_eq!(decode(&mut out, version, DEFAULT_MAX_PACKET_SIZE).unwrap(), Some(packet));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn stream_split_anywhere_decodes_the_same(
            version in version(),
            packets in proptest::collection::vec((0u8..15, proptest::collection::vec(any::<u8>(), 0..120)), 1..6),
        ) {
            let packets: Vec<Packet> = packets
                .iter()
                .map(|(t, data)| packet_of(*t, data, version))
                .collect();
            let mut stream = BytesMut::new();
            for p in &packets {
                encode(p, version, &mut stream).unwrap();
            }
            let stream = stream.freeze();
            for cut in 0..=stream.len() {
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for chunk in [&stream[..cut], &stream[cut..]] {
                    buf.extend_from_slice(chunk);
                    while let Some(p) = decode(&mut buf, version, DEFAULT_MAX_PACKET_SIZE).unwrap() {
                        got.push(p);
                    }
                }
                prop_assert!(buf.is_empty());
                prop_assert_eq!(&got, &packets, "split at {}", cut);
            }
        }
    }
}

/// Writes the fuzz seed corpus (run with `cargo test --lib write_fuzz_seed_corpus -- --ignored`):
/// the canonical packets of each version, one file per packet and one whole stream.
#[test]
#[ignore]
fn write_fuzz_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, version) in [
        ("decode_v311", ProtocolVersion::V311),
        ("decode_v5", ProtocolVersion::V5),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let mut stream = BytesMut::new();
        for (name, packet) in samples::canonical(version) {
            let bytes = enc(&packet, version);
            std::fs::write(dir.join(format!("seed-{name}")), &bytes).unwrap();
            stream.extend_from_slice(&bytes);
        }
        std::fs::write(dir.join("seed-stream"), &stream).unwrap();
    }
    // `roundtrip` reads its input through `arbitrary`; any bytes are a valid seed, and the
    // encoded canonical packets give it long, varied inputs.
    let dir = root.join("roundtrip");
    std::fs::create_dir_all(&dir).unwrap();
    for version in VERSIONS {
        for (name, packet) in samples::canonical(version) {
            let bytes = enc(&packet, version);
            std::fs::write(dir.join(format!("seed-{version:?}-{name}")), &bytes).unwrap();
        }
    }
}
