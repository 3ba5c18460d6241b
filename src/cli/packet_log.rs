//! `-d` for `simqtt pub` and `simqtt sub`: the packet log mosquitto's clients print (on stdout,
//! as they do), one line per packet sent or received:
//!
//! ```text
//! Client sensor-1 sending CONNECT
//! Client sensor-1 received CONNACK (0)
//! Client sensor-1 sending PUBLISH (d0, q1, r0, m1, 'a/b', ... (5 bytes))
//! Client sensor-1 received PUBACK (Mid: 1, RC:0)
//! ```
//!
//! The lines come from the bytes on the connection: a connector wraps each stream (above TLS
//! and WebSocket) and decodes what passes through it (the client itself is not involved).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use simqtt::codec::{self, Packet, ProtocolVersion};
use simqtt::transport::{BoxFuture, BoxStream, Connector};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the log knows across the connections of one client.
struct LogState {
    /// The client id from CONNECT (or the one a 5.0 CONNACK assigned); `(null)` when empty.
    name: String,
    version: ProtocolVersion,
    /// libmosquitto numbers every message, QoS 0 included; a QoS 0 PUBLISH has no packet
    /// identifier on the wire, so its number is counted here.
    qos0_mid: u16,
}

/// A connector whose streams log their packets: it wraps the connector that reaches the
/// broker (TCP, or TLS/WebSocket over it), so it reads the MQTT bytes themselves.
pub struct LoggingConnector {
    inner: Arc<dyn Connector>,
    state: Arc<Mutex<LogState>>,
}

impl LoggingConnector {
    pub fn new(version: ProtocolVersion, inner: Arc<dyn Connector>) -> LoggingConnector {
        LoggingConnector {
            inner,
            state: Arc::new(Mutex::new(LogState {
                name: "(null)".into(),
                version,
                qos0_mid: 0,
            })),
        }
    }
}

impl Connector for LoggingConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = self.inner.connect(addr).await?;
            Ok(Box::new(Tap {
                inner: stream,
                state: self.state.clone(),
                inbound: BytesMut::new(),
                outbound: BytesMut::new(),
            }) as BoxStream)
        })
    }
}

struct Tap {
    inner: BoxStream,
    state: Arc<Mutex<LogState>>,
    inbound: BytesMut,
    outbound: BytesMut,
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Sending,
    Received,
}

/// Decodes the whole packets at the front of `buf` and prints their lines.
fn drain(buf: &mut BytesMut, state: &Mutex<LogState>, way: Way) {
    loop {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = Bytes::copy_from_slice(buf);
        match codec::decode_slice(&bytes, state.version, u32::MAX) {
            Ok(Some((packet, used))) => {
                let _ = buf.split_to(used);
                for line in lines(&packet, &mut state, way) {
                    println!("{line}");
                }
            }
            Ok(None) => return,
            Err(_) => {
                // Not ours to judge here: the client or broker will say what is wrong.
                buf.clear();
                return;
            }
        }
    }
}

fn lines(packet: &Packet, state: &mut LogState, way: Way) -> Vec<String> {
    use Way::*;
    if let Packet::Connect(connect) = packet {
        state.version = connect.protocol;
        state.name = if connect.client_id.is_empty() {
            "(null)".into()
        } else {
            connect.client_id.as_str().to_string()
        };
    }
    if let (Packet::ConnAck(ack), Received) = (packet, way) {
        if let Some(id) = &ack.properties.assigned_client_identifier {
            state.name = id.as_str().to_string();
        }
    }
    let name = state.name.clone();
    let client = |text: String| format!("Client {name} {text}");
    match (packet, way) {
        (Packet::Connect(_), _) => vec![client("sending CONNECT".into())],
        (Packet::ConnAck(ack), _) => {
            let code = match state.version {
                ProtocolVersion::V311 => ack.reason_code.to_v311_connack().unwrap_or(0),
                ProtocolVersion::V5 => ack.reason_code.as_u8(),
            };
            vec![client(format!("received CONNACK ({code})"))]
        }
        (Packet::Publish(p), _) => {
            let mid = match p.packet_id() {
                Some(id) => id.get(),
                None if way == Sending => {
                    state.qos0_mid = state.qos0_mid.wrapping_add(1).max(1);
                    state.qos0_mid
                }
                None => 0,
            };
            let verb = if way == Sending {
                "sending"
            } else {
                "received"
            };
            vec![client(format!(
                "{verb} PUBLISH (d{}, q{}, r{}, m{mid}, '{}', ... ({} bytes))",
                u8::from(p.dup),
                p.qos().as_u8(),
                u8::from(p.retain),
                p.topic.as_str(),
                p.payload.len()
            ))]
        }
        (Packet::PubAck(a), Sending) => vec![client(format!(
            "sending PUBACK (m{}, rc{})",
            a.packet_id.get(),
            a.reason_code.as_u8()
        ))],
        (Packet::PubRec(a), Sending) => vec![client(format!(
            "sending PUBREC (m{}, rc{})",
            a.packet_id.get(),
            a.reason_code.as_u8()
        ))],
        (Packet::PubRel(a), Sending) => {
            vec![client(format!("sending PUBREL (m{})", a.packet_id.get()))]
        }
        (Packet::PubComp(a), Sending) => {
            vec![client(format!("sending PUBCOMP (m{})", a.packet_id.get()))]
        }
        (Packet::PubAck(a), Received) => vec![client(format!(
            "received PUBACK (Mid: {}, RC:{})",
            a.packet_id.get(),
            a.reason_code.as_u8()
        ))],
        (Packet::PubComp(a), Received) => vec![client(format!(
            "received PUBCOMP (Mid: {}, RC:{})",
            a.packet_id.get(),
            a.reason_code.as_u8()
        ))],
        (Packet::PubRec(a), Received) => {
            vec![client(format!(
                "received PUBREC (Mid: {})",
                a.packet_id.get()
            ))]
        }
        (Packet::PubRel(a), Received) => {
            vec![client(format!(
                "received PUBREL (Mid: {})",
                a.packet_id.get()
            ))]
        }
        (Packet::Subscribe(s), _) => s
            .filters
            .iter()
            .map(|(filter, options)| {
                let flags = u8::from(options.no_local) << 2
                    | u8::from(options.retain_as_published) << 3
                    | (options.retain_handling as u8) << 4;
                client(format!(
                    "sending SUBSCRIBE (Mid: {}, Topic: {}, QoS: {}, Options: 0x{flags:02x})",
                    s.packet_id.get(),
                    filter.as_str(),
                    options.qos.as_u8(),
                ))
            })
            .collect(),
        (Packet::SubAck(_), _) => vec![client("received SUBACK".into())],
        (Packet::Unsubscribe(u), _) => u
            .filters
            .iter()
            .map(|filter| {
                client(format!(
                    "sending UNSUBSCRIBE (Mid: {}, Topic: {})",
                    u.packet_id.get(),
                    filter.as_str()
                ))
            })
            .collect(),
        (Packet::UnsubAck(_), _) => vec![client("received UNSUBACK".into())],
        (Packet::PingReq, _) => vec![client("sending PINGREQ".into())],
        (Packet::PingResp, _) => vec![client("received PINGRESP".into())],
        (Packet::Disconnect(_), Sending) => vec![client("sending DISCONNECT".into())],
        (Packet::Disconnect(d), Received) => {
            vec![format!("Received DISCONNECT ({})", d.reason_code.as_u8())]
        }
        (Packet::Auth(_), Received) => vec![client("received AUTH".into())],
        (Packet::Auth(_), Sending) => vec![client("sending AUTH".into())],
    }
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let this = &mut *self;
                this.inbound.extend_from_slice(new);
                drain(&mut this.inbound, &this.state, Way::Received);
            }
        }
        result
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            let this = &mut *self;
            this.outbound.extend_from_slice(&buf[..n]);
            drain(&mut this.outbound, &this.state, Way::Sending);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Written through poll_write so every byte passes the log once, in order.
        let first = bufs.iter().find(|b| !b.is_empty());
        match first {
            Some(b) => self.poll_write(cx, b),
            None => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}
