//! Connection set-up through the codec (allocations are fine here: it happens before the clock
//! starts), and the pre-encoded PUBLISH template the hot loops copy and patch.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use super::scan::{self, scan_frame};
use super::BenchError;
use crate::codec::{
    self, Connect, ConnectProperties, MqttStr, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, QosPid, Subscribe, SubscribeProperties, SubscriptionOptions,
    TopicFilter, TopicName,
};
use crate::transport::url::{Endpoint, Scheme};
use crate::transport::BoxStream;

/// How long one handshake (TCP connect + CONNECT/CONNACK, or SUBSCRIBE/SUBACK) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest handshake reply the generator accepts (a CONNACK or SUBACK with properties).
const HANDSHAKE_REPLY_MAX: usize = 64 * 1024;

/// A connected, accepted MQTT session and whatever the broker sent after the awaited reply.
pub struct Session {
    pub stream: Stream,
    pub leftover: Vec<u8>,
}

/// A connection: plain TCP (the hot loops' halves borrow it without a lock), or TLS and/or
/// WebSocket over TCP (`tokio::io::split`, which locks per poll; TLS costs far more).
pub enum Stream {
    Tcp(TcpStream),
    Layered(BoxStream),
}

impl Stream {
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Layered(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Layered(r), WriteHalf::Layered(w))
            }
        }
    }

    /// Still open and idle: a read would wait (the broker closed it: EOF or an error).
    pub fn idle_and_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            Stream::Tcp(s) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Stream::Layered(s) => {
                let mut buf = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(Waker::noop());
                Pin::new(s).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }
}

macro_rules! delegate_read {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Layered(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, data),
                    Self::Layered(s) => Pin::new(s).poll_write(cx, data),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Layered(s) => Pin::new(s).poll_flush(cx),
                }
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Layered(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

pub enum ReadHalf<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    Layered(tokio::io::ReadHalf<&'a mut BoxStream>),
}

pub enum WriteHalf<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    Layered(tokio::io::WriteHalf<&'a mut BoxStream>),
}

impl WriteHalf<'_> {
    /// TLS or WebSocket: written bytes may wait in a buffer until flushed.
    pub fn layered(&self) -> bool {
        matches!(self, WriteHalf::Layered(_))
    }
}

delegate_read!(Stream);
delegate_write!(Stream);
delegate_read!(ReadHalf<'_>);
delegate_write!(WriteHalf<'_>);

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

/// Opens a TCP connection (from `source` if given), TLS and/or WebSocket over it as
/// `endpoint` says, and completes CONNECT/CONNACK.
pub async fn open(
    endpoint: &Endpoint,
    broker: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    protocol: ProtocolVersion,
    keep_alive_secs: u16,
) -> Result<Session, BenchError> {
    let connect = async {
        let socket = if broker.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(io_error("creating a socket"))?;
        if let Some(source) = source {
            defer_port_choice(&socket);
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(io_error(format!("binding source address {source}")))?;
        }
        let stream = socket
            .connect(broker)
            .await
            .map_err(io_error(format!("connecting to {broker}")))?;
        // Latency messages and acks are small single writes; Nagle would hold them back.
        stream
            .set_nodelay(true)
            .map_err(io_error("setting TCP_NODELAY"))?;
        let stream = match endpoint.scheme {
            Scheme::Mqtt => Stream::Tcp(stream),
            _ => Stream::Layered(
                endpoint
                    .upgrade(Box::new(stream))
                    .await
                    .map_err(io_error(format!("connecting to {}", endpoint.url())))?,
            ),
        };
        let mut session = Session {
            stream,
            leftover: Vec::new(),
        };
        let packet = Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: true,
            // Chosen to outlast the run (Config::keep_alive_secs), so no PINGREQ is needed.
            keep_alive_secs,
            properties: ConnectProperties::default(),
            client_id: MqttStr::new(client_id).map_err(|e| BenchError::Config(e.to_string()))?,
            will: None,
            username: None,
            password: None,
        }));
        send(&mut session.stream, &packet, protocol).await?;
        match receive(&mut session, protocol).await? {
            Packet::ConnAck(ack) if !ack.reason_code.is_error() => Ok(session),
            Packet::ConnAck(ack) => Err(BenchError::Broker(format!(
                "broker refused CONNECT of {client_id}: {:?}",
                ack.reason_code
            ))),
            other => Err(BenchError::Broker(format!(
                "[MQTT-3.2.0-1] expected CONNACK, broker sent {:?}",
                other.packet_type()
            ))),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .map_err(|_| BenchError::Broker(format!("no CONNACK from {broker} within 10 s")))?
}

/// Lets connect() rather than bind() choose the source port (IP_BIND_ADDRESS_NO_PORT): bind()
/// would search for a port free on the address alone, ever slower as thousands are taken and
/// unable to reuse ports in TIME_WAIT from an earlier run, while connect() needs only the
/// 4-tuple to be unique. Best effort: without it the bind still works, just slower.
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the stated size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Subscribes to one filter and waits for its SUBACK.
pub async fn subscribe(
    session: &mut Session,
    filter: &str,
    qos: QoS,
    protocol: ProtocolVersion,
) -> Result<(), BenchError> {
    let packet = Packet::Subscribe(Subscribe {
        packet_id: PacketId::MIN,
        properties: SubscribeProperties::default(),
        filters: vec![(
            TopicFilter::new(filter).map_err(|e| BenchError::Config(e.to_string()))?,
            SubscriptionOptions::qos(qos),
        )],
    });
    let exchange = async {
        send(&mut session.stream, &packet, protocol).await?;
        match receive(session, protocol).await? {
            Packet::SubAck(ack) => match ack.reason_codes.first() {
                Some(code) if !code.is_error() => Ok(()),
                code => Err(BenchError::Broker(format!(
                    "broker refused SUBSCRIBE {filter}: {code:?}"
                ))),
            },
            other => Err(BenchError::Broker(format!(
                "[MQTT-3.8.4-1] expected SUBACK, broker sent {:?}",
                other.packet_type()
            ))),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| BenchError::Broker(format!("no SUBACK for {filter} within 10 s")))?
}

async fn send(
    stream: &mut Stream,
    packet: &Packet,
    protocol: ProtocolVersion,
) -> Result<(), BenchError> {
    let mut out = BytesMut::new();
    codec::encode(packet, protocol, &mut out).map_err(|e| BenchError::Broker(e.to_string()))?;
    stream
        .write_all(&out)
        .await
        .map_err(io_error("writing a handshake packet"))?;
    // TLS and WebSocket may hold the bytes until flushed (TCP's flush does nothing).
    stream
        .flush()
        .await
        .map_err(io_error("writing a handshake packet"))
}

/// Reads until one whole packet is buffered, decodes it, and keeps the bytes after it.
async fn receive(session: &mut Session, protocol: ProtocolVersion) -> Result<Packet, BenchError> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = scan_frame(&session.leftover).map_err(BenchError::Scan)? {
            let rest = session.leftover.split_off(frame.total_len());
            let mut bytes = BytesMut::from(&session.leftover[..]);
            session.leftover = rest;
            return match codec::decode(&mut bytes, protocol, codec::DEFAULT_MAX_PACKET_SIZE) {
                Ok(Some(packet)) => Ok(packet),
                Ok(None) => Err(BenchError::Broker(
                    "codec found the frame incomplete".into(),
                )),
                Err(error) => Err(BenchError::Broker(format!("broker sent: {error}"))),
            };
        }
        if session.leftover.len() > HANDSHAKE_REPLY_MAX {
            return Err(BenchError::Broker(format!(
                "handshake reply over {HANDSHAKE_REPLY_MAX} bytes"
            )));
        }
        let n = session
            .stream
            .read(&mut chunk)
            .await
            .map_err(io_error("reading a handshake reply"))?;
        if n == 0 {
            return Err(BenchError::Broker(
                "broker closed the connection during the handshake".into(),
            ));
        }
        session.leftover.extend_from_slice(&chunk[..n]);
    }
}

/// One encoded PUBLISH with the offsets of the bytes the hot loop patches.
#[derive(Debug, Clone)]
pub struct Template {
    pub bytes: Vec<u8>,
    /// Where the 2-byte packet id sits (QoS 1 and 2).
    pub packet_id_offset: Option<usize>,
    pub payload_offset: usize,
}

impl Template {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends a copy with `packet_id` (ignored at QoS 0) and, if `stamp` is given, the
    /// timestamp and sequence number at the front of the payload.
    pub fn push(&self, packet_id: u16, stamp: Option<(u64, u64)>, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.packet_id_offset {
            out[start + at..start + at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        if let Some((timestamp_ns, sequence)) = stamp {
            let at = start + self.payload_offset;
            out[at..at + 8].copy_from_slice(&timestamp_ns.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&sequence.to_le_bytes());
        }
    }
}

/// Encodes one PUBLISH on `topic` with a zero payload of `payload_bytes` through the codec and
/// finds the patchable offsets from its fixed header.
pub fn publish_template(
    topic: &str,
    qos: QoS,
    payload_bytes: usize,
    protocol: ProtocolVersion,
) -> Result<Template, BenchError> {
    let qos_pid = QosPid::new(qos, Some(PacketId::MIN))
        .ok_or_else(|| BenchError::Config("QoS needs a packet id".into()))?;
    let packet = Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain: false,
        topic: TopicName::new(topic).map_err(|e| BenchError::Config(e.to_string()))?,
        properties: PublishProperties::default().into(),
        payload: vec![0u8; payload_bytes].into(),
    });
    let mut out = BytesMut::new();
    codec::encode(&packet, protocol, &mut out).map_err(|e| BenchError::Config(e.to_string()))?;
    let bytes = out.to_vec();
    let frame = scan_frame(&bytes)
        .map_err(BenchError::Scan)?
        .ok_or_else(|| BenchError::Config("encoded PUBLISH is incomplete".into()))?;
    let view = scan::publish_view(
        frame.first_byte,
        frame.body(&bytes),
        protocol == ProtocolVersion::V5,
    )
    .map_err(BenchError::Scan)?;
    let packet_id_offset = (qos != QoS::AtMostOnce).then(|| frame.header_len + 2 + topic.len());
    Ok(Template {
        payload_offset: bytes.len() - view.payload.len(),
        packet_id_offset,
        bytes,
    })
}
