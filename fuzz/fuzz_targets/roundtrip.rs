#![no_main]
//! Arbitrary packets valid for their version: encode then decode is the identity.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use simqtt::codec::arbitrary::VersionedPacket;
use simqtt::codec::{self, DEFAULT_MAX_PACKET_SIZE};

fuzz_target!(|input: VersionedPacket| {
    let VersionedPacket { version, packet } = input;
    let len = codec::encoded_len(&packet, version)
        .unwrap_or_else(|e| panic!("valid {packet:?} does not encode in {version:?}: {e}"));
    let mut out = BytesMut::new();
    codec::encode(&packet, version, &mut out).expect("encoded_len agreed");
    assert_eq!(out.len(), len);
    let out = out.freeze();
    let (decoded, used) = codec::decode_slice(&out, version, DEFAULT_MAX_PACKET_SIZE)
        .unwrap_or_else(|e| panic!("{packet:?} encoded in {version:?} does not decode: {e}"))
        .expect("complete");
    assert_eq!(used, out.len());
    assert_eq!(decoded, packet);
});
