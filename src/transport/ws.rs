//! MQTT over WebSocket (MQTT 5.0 section 6, 3.1.1 section 6): the HTTP upgrade with the `mqtt`
//! subprotocol, then binary frames. [`WsStream`] turns the frames back into a byte stream, so
//! the codec's incremental decode reads it as it reads TCP: a packet may span frames and a
//! frame may hold several packets ([MQTT-6.0.0-2]); nothing here looks at packet boundaries.
//!
//! The frames themselves (masking, fragmentation, ping/pong, close) are tokio-tungstenite's.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// The WebSocket path brokers serve MQTT on by default (mosquitto, EMQX, HiveMQ).
pub const DEFAULT_PATH: &str = "/mqtt";
/// The subprotocol MQTT 3.1.1 and 5.0 name ([MQTT-6.0.0-3], [MQTT-6.0.0-4]).
pub const SUBPROTOCOL: &str = "mqtt";
/// MQTT 3.1's name, which older clients still offer (mosquitto accepts it too).
const SUBPROTOCOL_V31: &str = "mqttv3.1";
/// Largest payload one outgoing frame carries: a longer batch goes out in several frames
/// (legal, [MQTT-6.0.0-2]); bounds what tungstenite buffers for a connection that cannot
/// write.
const FRAME_OUT_MAX: usize = 64 * 1024;
/// Room kept for the frame or message a peer may send beyond the largest packet (a frame may
/// hold several small packets).
const FRAME_SLACK: usize = 64 * 1024;

/// tungstenite's settings for MQTT: a small read buffer (its default of 128 KiB per
/// connection would dwarf an idle MQTT connection), no write buffering beyond the batch the
/// caller hands over, and frames and messages bounded by the largest packet accepted.
fn config(max_packet_size: usize) -> WebSocketConfig {
    let bound = max_packet_size.saturating_add(FRAME_SLACK);
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_frame_size(Some(bound))
        .max_message_size(Some(bound))
}

/// A byte stream over WebSocket binary frames.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last binary frame read.
    read: Bytes,
}

impl<S> WsStream<S> {
    pub fn get_ref(&self) -> &S
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.inner.get_ref()
    }
}

fn io_error(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {other}")),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                let chunk = self.read.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                // An empty frame is not the end of the stream: read on.
                Some(Ok(Message::Binary(data))) => self.read = data,
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // The peer's close (tungstenite replies to it): the end of the stream.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "[MQTT-6.0.0-1] a WebSocket text frame: MQTT travels in binary frames",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(io_error)?;
        let n = data.len().min(FRAME_OUT_MAX);
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(&data[..n])))
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The close frame, then the stream under it (TLS close_notify, TCP FIN).
        match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(e) => return Poll::Ready(Err(io_error(e))),
        }
        Pin::new(self.inner.get_mut()).poll_shutdown(cx)
    }
}

/// Whether a `Sec-WebSocket-Protocol` header offers `name` (a comma-separated list).
fn offers(header: Option<&HeaderValue>, name: &str) -> bool {
    header
        .and_then(|h| h.to_str().ok())
        .is_some_and(|list| list.split(',').any(|p| p.trim().eq_ignore_ascii_case(name)))
}

fn refuse(status: StatusCode, why: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why));
    *response.status_mut() = status;
    response
}

/// The server side of the upgrade: the request must be for `path` and, when it names
/// subprotocols, offer `mqtt` (or 3.1's `mqttv3.1`), which the answer selects. A request that
/// names none is served (as mosquitto does), with no subprotocol in the answer.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    path: &str,
    max_packet_size: usize,
) -> io::Result<WsStream<S>> {
    let path = path.to_string();
    let callback = move |request: &Request, mut response: Response| {
        if request.uri().path() != path {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("MQTT is served on {path}, not {}", request.uri().path()),
            ));
        }
        let offered = request.headers().get("Sec-WebSocket-Protocol");
        let chosen = if offers(offered, SUBPROTOCOL) {
            Some(SUBPROTOCOL)
        } else if offers(offered, SUBPROTOCOL_V31) {
            Some(SUBPROTOCOL_V31)
        } else if offered.is_some() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "[MQTT-6.0.0-3] the client must offer the \"mqtt\" subprotocol".into(),
            ));
        } else {
            None
        };
        if let Some(chosen) = chosen {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        }
        Ok(response)
    };
    let inner = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(config(max_packet_size)),
    )
    .await
    .map_err(|e| match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket upgrade: {other}"),
        ),
    })?;
    Ok(WsStream {
        inner,
        read: Bytes::new(),
    })
}

/// The client side of the upgrade: `GET path` with `Host: host` and the `mqtt` subprotocol,
/// which the server must select ([MQTT-6.0.0-4]; tungstenite refuses an answer without it).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    path: &str,
    max_packet_size: usize,
) -> io::Result<WsStream<S>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let uri = format!("ws://{host}{path}");
    let mut request = uri
        .as_str()
        .into_client_request()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {e}")))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    // In a simulated run the key comes from the seed, as everything else there does.
    if let Some(key) = super::simtls::websocket_key() {
        if let Ok(value) = HeaderValue::from_str(&key) {
            request.headers_mut().insert("Sec-WebSocket-Key", value);
        }
    }
    let (inner, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config(max_packet_size)))
            .await
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("WebSocket upgrade at {uri} failed: {}", upgrade_error(e)),
                )
            })?;
    Ok(WsStream {
        inner,
        read: Bytes::new(),
    })
}

fn upgrade_error(error: tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .filter(|b| !b.is_empty());
            match body {
                Some(body) => format!("HTTP {}: {body}", response.status()),
                None => format!("HTTP {}", response.status()),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, Packet, ProtocolVersion};
    use crate::transport::FramedRead;
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server-side `WsStream` and the raw client-side WebSocket, over an in-memory pipe.
    async fn pair() -> (
        WsStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(accept(a, DEFAULT_PATH, 1 << 20));
        let (client, response) = tokio_tungstenite::client_async(
            {
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let mut r = "ws://broker/mqtt".into_client_request().unwrap();
                r.headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
                r
            },
            b,
        )
        .await
        .unwrap();
        assert_eq!(
            response.headers().get("Sec-WebSocket-Protocol").unwrap(),
            "mqtt",
            "[MQTT-6.0.0-4] the server selects mqtt"
        );
        (server.await.unwrap().unwrap(), client)
    }

    fn publish(topic: &str, payload: &'static [u8]) -> Vec<u8> {
        let packet = Packet::Publish(codec::Publish {
            dup: false,
            qos_pid: codec::QosPid::AtMostOnce,
            retain: false,
            topic: codec::TopicName::new(topic).unwrap(),
            properties: Default::default(),
            payload: Bytes::from_static(payload),
        });
        let mut out = bytes::BytesMut::new();
        codec::encode(&packet, ProtocolVersion::V311, &mut out).unwrap();
        out.to_vec()
    }

    fn topic_of(packet: Packet) -> String {
        match packet {
            Packet::Publish(p) => p.topic.as_str().to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_packet_split_over_frames_is_read_whole() {
        let (server, mut client) = pair().await;
        let bytes = publish("a/b", b"hello");
        // One byte per frame, with an empty frame and a ping among them.
        for (i, b) in bytes.iter().enumerate() {
            client
                .send(Message::Binary(Bytes::copy_from_slice(&[*b])))
                .await
                .unwrap();
            if i == 2 {
                client.send(Message::Binary(Bytes::new())).await.unwrap();
                client
                    .send(Message::Ping(Bytes::from_static(b"p")))
                    .await
                    .unwrap();
            }
        }
        let mut reader = FramedRead::new(server, ProtocolVersion::V311, 1 << 20);
        assert_eq!(
            topic_of(reader.read_packet().await.unwrap().unwrap()),
            "a/b"
        );
    }

    #[tokio::test]
    async fn several_packets_in_one_frame_are_all_read() {
        let (server, mut client) = pair().await;
        // Longer than a quiet connection's first read (128 bytes): what that read leaves of
        // the frame must still come.
        static PAYLOAD: [u8; 100] = [b'x'; 100];
        let mut frame = publish("one", &PAYLOAD);
        frame.extend(publish("two", &PAYLOAD));
        frame.extend(publish("three", &PAYLOAD));
        // And the last packet's tail in a second frame.
        let tail = frame.split_off(frame.len() - 2);
        client.send(Message::Binary(frame.into())).await.unwrap();
        client.send(Message::Binary(tail.into())).await.unwrap();
        client.close(None).await.unwrap();
        let mut reader = FramedRead::new(server, ProtocolVersion::V311, 1 << 20);
        for topic in ["one", "two", "three"] {
            assert_eq!(
                topic_of(reader.read_packet().await.unwrap().unwrap()),
                topic
            );
        }
        assert!(
            reader.read_packet().await.unwrap().is_none(),
            "close: end of stream"
        );
    }

    #[tokio::test]
    async fn writes_go_out_as_binary_frames_and_a_text_frame_is_refused() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"\x30\x00").await.unwrap();
        server.flush().await.unwrap();
        use futures_util::StreamExt;
        match client.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], b"\x30\x00"),
            other => panic!("{other:?}"),
        }
        client.send(Message::Text("hi".into())).await.unwrap();
        let mut buf = [0u8; 8];
        let e = server.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("MQTT-6.0.0-1"), "{e}");
    }

    #[tokio::test]
    async fn a_wrong_path_or_subprotocol_is_refused() {
        for (path, protocol, why) in [
            ("/other", Some("mqtt"), "404"),
            ("/mqtt", Some("chat"), "MQTT-6.0.0-3"),
        ] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let server = tokio::spawn(accept(a, DEFAULT_PATH, 1 << 20));
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut r = format!("ws://broker{path}").into_client_request().unwrap();
            if let Some(p) = protocol {
                r.headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
            }
            let e = tokio_tungstenite::client_async(r, b).await.unwrap_err();
            let text = upgrade_error(e);
            assert!(text.contains(why), "{path} {protocol:?}: {text}");
            assert!(server.await.unwrap().is_err());
        }
    }

    #[tokio::test]
    async fn the_client_side_needs_the_mqtt_subprotocol_back() {
        // A server that selects no subprotocol although mqtt was offered.
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let _ = tokio_tungstenite::accept_async(a).await;
        });
        let e = connect(b, "broker", "/mqtt", 1 << 20).await.err().unwrap();
        assert!(e.to_string().contains("WebSocket upgrade"), "{e}");
    }
}
