//! The only layer that knows sockets. `Listener` and `Connector` hide whether a stream is a
//! real tokio TCP stream or a turmoil simulated one; `Framed*` read and write whole packets.
//! Broker and client code never name `tokio::net` or `turmoil`.
//!
//! TLS ([`tls`]) and WebSocket ([`ws`]) are layers over any stream: a `Connector` that wraps
//! another (so the fault proxy and fault layer stay below them), and [`listen`]'s listener
//! that runs the server handshakes. [`url`] turns a broker URL into the connector it needs.
//! They run over simulated TCP too, deterministically: [`simtls`] draws rustls' randomness
//! from the run's seed.

pub mod fault;
pub mod framed;
pub mod listen;
pub mod proxy;
pub mod sim;
pub mod simtls;
pub mod tcp;
pub mod tls;
pub mod url;
pub mod ws;

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
    /// The next connection with what the transport learned of its peer. The default has
    /// nothing to add to `accept`; a TLS listener tells the client certificate's name.
    fn accept_client(&mut self) -> BoxFuture<'_, io::Result<Accepted>> {
        Box::pin(async move {
            let (stream, peer) = self.accept().await?;
            Ok(Accepted {
                stream,
                peer,
                identity: None,
            })
        })
    }
}

impl Listener for Box<dyn Listener> {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        (**self).accept()
    }
    fn local_addr(&self) -> String {
        (**self).local_addr()
    }
    fn accept_client(&mut self) -> BoxFuture<'_, io::Result<Accepted>> {
        (**self).accept_client()
    }
}

/// A connection a listener accepted.
pub struct Accepted {
    pub stream: BoxStream,
    /// Printable peer address.
    pub peer: String,
    /// The user name the transport vouches for: the common name of a verified TLS client
    /// certificate, on a listener with `use_identity_as_username`.
    pub identity: Option<String>,
}

/// Opens streams to a server address ("host:port").
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>>;
}
