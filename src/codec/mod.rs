//! MQTT 3.1.1 and 5.0 wire format: the packet model, incremental decode, encode, and the topic
//! rules. Pure: bytes in, packets out; no tokio, no I/O.
//!
//! ```text
//! decode(&mut BytesMut, version, max_packet_size) -> Result<Option<Packet>, DecodeError>
//! encode(&Packet, version, &mut BytesMut)        -> Result<(), EncodeError>
//! ```
//! A CONNECT carries its own protocol level, so a server decodes the first packet with any
//! `version` and uses `Connect::protocol` from then on.

#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;
pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod samples;
pub mod strings;
pub mod topic;

pub use decode::{decode, decode_slice, DEFAULT_MAX_PACKET_SIZE, MAX_REMAINING_LENGTH};
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError, StringError};
pub use packet::*;
pub use topic::matches;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_wire;
