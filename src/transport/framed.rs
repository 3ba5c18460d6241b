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

/// Reads packets from `R`.
pub struct FramedRead<R> {
    inner: R,
    buf: BytesMut,
    pub version: ProtocolVersion,
    pub max_packet_size: u32,
}

impl<R: AsyncRead + Unpin> FramedRead<R> {
    pub fn new(inner: R, version: ProtocolVersion, max_packet_size: u32) -> Self {
        FramedRead {
            inner,
            buf: BytesMut::with_capacity(4096),
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
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
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
        FramedWrite {
            inner,
            buf: BytesMut::with_capacity(4096),
            version,
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
