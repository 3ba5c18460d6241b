//! Incremental decoder. (Contract; the implementation lands with the codec issue.)

use bytes::{Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::{Packet, ProtocolVersion};

/// Largest remaining length the wire format can express (4-byte variable byte integer).
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 268_435_455 + 5;

/// Decodes one packet from the front of `buf`. `Ok(None)`: incomplete, nothing consumed.
/// `Ok(Some(p))`: the packet's bytes were split off `buf` (zero-copy into `p`'s `Bytes`).
/// A packet whose total size exceeds `max_packet_size` is refused from its fixed header.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    unimplemented!("codec issue")
}

/// Decodes one packet from the front of `buf` without consuming it: returns the packet and the
/// number of bytes it occupied.
pub fn decode_slice(
    buf: &Bytes,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    unimplemented!("codec issue")
}
