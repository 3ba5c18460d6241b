//! A server that only reads: it answers the handshake and acknowledges what QoS requires, counts
//! PUBLISH packets and throws them away. Against it the generator's own ceiling shows (`simqtt
//! bench --sink fan-in`), which proves the generator is not what limits a broker's figure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::load::ReadBuffer;
use super::scan::{self, push_ack};
use super::BenchError;

/// Replies a connection may owe before the sink stops reading from it.
const REPLY_BACKLOG_BYTES: usize = 64 * 1024;
/// Connections the sink serves at once; more are refused (closed at accept).
const SINK_CONNECTIONS_MAX: usize = 100_000;

pub struct Sink {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Binds `addr` (port 0 for any) and starts accepting.
    pub async fn start(addr: SocketAddr) -> Result<Sink, BenchError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BenchError::Io {
                context: format!("binding the sink on {addr}"),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| BenchError::Io {
            context: "sink address".into(),
            source,
        })?;
        let received = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, received.clone(), stopped));
        Ok(Sink {
            addr,
            received,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PUBLISH packets read so far, over all connections.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    received: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if connections.len() >= SINK_CONNECTIONS_MAX {
                    continue; // dropping the stream closes it
                }
                connections.spawn(serve(stream, received.clone(), stopped.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Reads until the peer leaves; replies only where the protocol needs an answer to go on.
async fn serve(
    mut stream: TcpStream,
    received: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.split();
    let mut input = ReadBuffer::new(Vec::new());
    let mut replies: Vec<u8> = Vec::with_capacity(2 * REPLY_BACKLOG_BYTES);
    let mut replies_offset = 0usize;
    let mut v5 = false;
    loop {
        let can_read = replies.len() - replies_offset < REPLY_BACKLOG_BYTES;
        tokio::select! {
            biased;
            _ = stopped.changed() => return,
            written = writer.write(&replies[replies_offset..]), if replies_offset < replies.len() => {
                let Ok(n) = written else { return };
                replies_offset += n;
                if replies_offset == replies.len() {
                    replies.clear();
                    replies_offset = 0;
                }
            }
            read = reader.read(input.spare()), if can_read => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                input.filled += n;
                let mut publishes = 0u64;
                let mut leave = false;
                let consumed = input.consume(|frame, body| {
                    match frame.packet_type() {
                        scan::PUBLISH => {
                            publishes += 1;
                            let qos = (frame.first_byte >> 1) & 0b11;
                            if qos > 0 {
                                let view = scan::publish_view(frame.first_byte, body, v5)
                                    .map_err(BenchError::Scan)?;
                                if let Some(id) = view.packet_id {
                                    let kind = if qos == 1 { scan::PUBACK } else { scan::PUBREC };
                                    push_ack(kind, id, &mut replies);
                                }
                            }
                        }
                        scan::CONNECT => {
                            v5 = connect_level(body) == Some(5);
                            // CONNACK: no session present, accepted; 5.0 adds an empty
                            // property length.
                            if v5 {
                                replies.extend_from_slice(&[0x20, 0x03, 0x00, 0x00, 0x00]);
                            } else {
                                replies.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]);
                            }
                        }
                        scan::SUBSCRIBE => suback(body, v5, &mut replies)?,
                        scan::PUBREL => {
                            push_ack(scan::PUBCOMP, scan::ack_packet_id(body, "PUBREL")?, &mut replies)
                        }
                        scan::PINGREQ => replies.extend_from_slice(&[0xd0, 0x00]),
                        scan::DISCONNECT => leave = true,
                        _ => {}
                    }
                    Ok(())
                });
                received.fetch_add(publishes, Ordering::Relaxed);
                if consumed.is_err() || leave {
                    let _ = writer.write_all(&replies[replies_offset..]).await;
                    return;
                }
            }
        }
    }
}

/// The protocol level of a CONNECT body (after the protocol name).
fn connect_level(body: &[u8]) -> Option<u8> {
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_len).copied()
}

/// A SUBACK granting each filter the QoS it asked for.
fn suback(body: &[u8], v5: bool, out: &mut Vec<u8>) -> Result<(), BenchError> {
    let truncated = || BenchError::Scan(scan::ScanError::Truncated("SUBSCRIBE", body.len()));
    let packet_id = scan::ack_packet_id(body, "SUBSCRIBE")?;
    let mut at = 2;
    if v5 {
        let (properties_len, used) = scan::read_varint(&body[at..]).ok_or_else(truncated)?;
        at += used + properties_len;
    }
    let mut codes: Vec<u8> = Vec::new();
    while at < body.len() {
        let filter_len = usize::from(u16::from_be_bytes([
            body[at],
            *body.get(at + 1).ok_or_else(truncated)?,
        ]));
        at += 2 + filter_len;
        let options = *body.get(at).ok_or_else(truncated)?;
        codes.push(options & 0b11);
        at += 1;
    }
    let remaining = 2 + usize::from(v5) + codes.len();
    out.push(0x90);
    scan::write_varint(remaining, out);
    out.extend_from_slice(&packet_id.to_be_bytes());
    if v5 {
        out.push(0);
    }
    out.extend_from_slice(&codes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suback_grants_what_was_asked() {
        let body = [
            0x00, 0x0a, // packet id 10
            0x00, 0x01, b'a', 0x01, // "a", QoS 1
            0x00, 0x01, b'b', 0x02, // "b", QoS 2
        ];
        let mut out = Vec::new();
        suback(&body, false, &mut out).unwrap();
        assert_eq!(out, [0x90, 0x04, 0x00, 0x0a, 0x01, 0x02]);

        let body = [0x00, 0x0b, 0x00, 0x00, 0x01, b'c', 0x00]; // 5.0: no properties, "c" QoS 0
        let mut out = Vec::new();
        suback(&body, true, &mut out).unwrap();
        assert_eq!(out, [0x90, 0x04, 0x00, 0x0b, 0x00, 0x00]);

        assert!(suback(&[0x00, 0x01, 0x00, 0x05, b'x'], false, &mut out).is_err());
    }

    #[test]
    fn connect_levels() {
        assert_eq!(
            connect_level(&[0, 4, b'M', b'Q', b'T', b'T', 4, 2]),
            Some(4)
        );
        assert_eq!(connect_level(&[0, 4, b'M', b'Q', b'T', b'T', 5]), Some(5));
        assert_eq!(connect_level(&[0, 4, b'M']), None);
    }
}
