//! The only layer that knows sockets. `Listener` and `Connector` hide whether a stream is a
//! real tokio TCP stream or a turmoil simulated one; `Framed*` read and write whole packets.
//! Broker and client code never name `tokio::net` or `turmoil`.

pub mod fault;
pub mod framed;
pub mod proxy;
pub mod sim;
pub mod tcp;

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

pub use framed::{FramedRead, FramedWrite, TransportError};

/// A byte stream to a peer.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

/// A boxed stream, so one broker serves TCP, turmoil and fault-wrapped streams alike.
pub type BoxStream = Box<dyn AsyncStream>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bound listener. `accept` returns the stream and a printable peer address.
pub trait Listener: Send + 'static {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>>;
    /// The bound address, for logs and tests.
    fn local_addr(&self) -> String;
}

/// Opens streams to a server address ("host:port").
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>>;
}
