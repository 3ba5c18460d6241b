//! Whole packets over a byte stream: a read half that buffers until a packet is complete, and a
//! write half that batches encoded packets and flushes once per batch.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, DecodeError, EncodeError, Packet, ProtocolVersion};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

/// Bytes read into a connection's own small array while it has no buffer (see `FramedRead`).
const IDLE_READ: usize = 128;
/// Capacity a buffer is given (or topped up to) once traffic arrives.
const READ_CHUNK: usize = 4096;

/// Reads packets from `R`.
///
/// Memory per idle connection matters (a broker holds 100,000): the buffer is allocated only
/// while traffic flows. When a read was small and left no partial packet, the buffer is given
/// up and the next read goes into `idle`, a few bytes inside the struct; a read that fills it
/// means traffic again, and a buffer is allocated. Decoded payloads share the buffer's
/// allocation (`Bytes`), so giving it up never copies.
pub struct FramedRead<R> {
    inner: R,
    buf: BytesMut,
    idle: [u8; IDLE_READ],
    /// The last read returned little: traffic is light, give the buffer up when empty.
    light: bool,
    pub version: ProtocolVersion,
    pub max_packet_size: u32,
}

impl<R: AsyncRead + Unpin> FramedRead<R> {
    pub fn new(inner: R, version: ProtocolVersion, max_packet_size: u32) -> Self {
        FramedRead {
            inner,
            buf: BytesMut::new(),
            idle: [0; IDLE_READ],
            light: true,
            version,
            max_packet_size,
        }
    }

    /// The next packet; `Ok(None)` on a clean end of stream between packets. An end of stream
    /// inside a packet is an `UnexpectedEof` error.
    pub async fn read_packet(&mut self) -> Result<Option<Packet>, TransportError> {
        loop {
            if let Some(packet) = codec::decode(&mut self.buf, self.version, self.max_packet_size)?
            {
                return Ok(Some(packet));
            }
            let n = if self.buf.is_empty() && self.light {
                // Between packets on a quiet connection: hold no buffer while waiting.
                self.buf = BytesMut::new();
                let n = self.inner.read(&mut self.idle).await?;
                if n > 0 {
                    self.buf
                        .reserve(if n == IDLE_READ { READ_CHUNK } else { n });
                    self.buf.extend_from_slice(&self.idle[..n]);
                }
                n
            } else {
                if self.buf.capacity() - self.buf.len() < 1024 {
                    self.buf.reserve(READ_CHUNK);
                }
                self.inner.read_buf(&mut self.buf).await?
            };
            self.light = n < IDLE_READ;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof inside a packet").into())
                };
            }
        }
    }

    /// A packet already buffered, without reading (for draining a batch).
    pub fn try_read_buffered(&mut self) -> Result<Option<Packet>, TransportError> {
        Ok(codec::decode(
            &mut self.buf,
            self.version,
            self.max_packet_size,
        )?)
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes packets to `W`: `push` encodes into a buffer, `flush` writes the batch.
pub struct FramedWrite<W> {
    inner: W,
    buf: BytesMut,
    pub version: ProtocolVersion,
}

impl<W: AsyncWrite + Unpin> FramedWrite<W> {
    pub fn new(inner: W, version: ProtocolVersion) -> Self {
        // Allocated by the first packet, not up front (see `release`).
        FramedWrite {
            inner,
            buf: BytesMut::new(),
            version,
        }
    }

    /// Gives the buffer up if nothing is pending, so an idle connection holds none; call it
    /// before waiting for more packets.
    pub fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    pub fn push(&mut self, packet: &Packet) -> Result<(), EncodeError> {
        codec::encode(packet, self.version, &mut self.buf)
    }

    /// Bytes encoded but not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.inner.flush().await
    }

    pub async fn write_packet(&mut self, packet: &Packet) -> Result<(), TransportError> {
        self.push(packet)?;
        self.flush().await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.inner.shutdown().await
    }
}
