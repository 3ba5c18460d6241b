//! Encoder. (Contract; the implementation lands with the codec issue.)

use bytes::BytesMut;

use super::error::EncodeError;
use super::packet::{Packet, ProtocolVersion};

/// Appends the wire form of `packet` in `version` to `out`.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let _ = (packet, version, out);
    unimplemented!("codec issue")
}

/// The number of bytes `encode` would append.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let _ = (packet, version);
    unimplemented!("codec issue")
}
