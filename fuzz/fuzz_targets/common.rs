//! Shared by the decode targets: raw bytes never panic the decoder, and whatever decodes
//! re-encodes and re-decodes to the same packet.

use bytes::{Bytes, BytesMut};
use simqtt::codec::{self, ProtocolVersion, DEFAULT_MAX_PACKET_SIZE};

pub fn check(data: &[u8], version: ProtocolVersion) {
    let input = Bytes::copy_from_slice(data);
    let mut rest = input.clone();
    // Every packet of the stream, until the first error or incomplete packet.
    let mut decoded = Vec::new();
    loop {
        let result = codec::decode_slice(&rest, version, DEFAULT_MAX_PACKET_SIZE);
        // The PUBLISH fast path and the general path agree, errors included.
        assert_eq!(
            result,
            codec::decode::decode_slice_general(&rest, version, DEFAULT_MAX_PACKET_SIZE)
        );
        match result {
            Ok(Some((packet, used))) => {
                assert!(used > 0 && used <= rest.len());
                let len = codec::encoded_len(&packet, version)
                    .unwrap_or_else(|e| panic!("decoded {packet:?} does not re-encode: {e}"));
                let mut out = BytesMut::new();
                codec::encode(&packet, version, &mut out).expect("encoded_len agreed");
                assert_eq!(out.len(), len);
                let out = out.freeze();
                let (again, again_used) = codec::decode_slice(&out, version, DEFAULT_MAX_PACKET_SIZE)
                    .expect("re-encoded packet decodes")
                    .expect("re-encoded packet is complete");
                assert_eq!(again, packet);
                assert_eq!(again_used, out.len());
                decoded.push(packet);
                rest = rest.slice(used..);
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The BytesMut path agrees with the slice path, and a small maximum size never panics.
    let mut buf = BytesMut::from(data);
    for packet in &decoded {
        let got = codec::decode(&mut buf, version, DEFAULT_MAX_PACKET_SIZE)
            .expect("decode agrees with decode_slice")
            .expect("complete");
        assert_eq!(&got, packet);
    }
    let small = u32::from(data.first().copied().unwrap_or(0));
    let _ = codec::decode_slice(&input, version, small);
}
