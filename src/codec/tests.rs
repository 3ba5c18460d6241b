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
