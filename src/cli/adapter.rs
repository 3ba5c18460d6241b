//! `simqtt adapter`: simqtt's own client behind the driver protocol of
//! docs/client-certification.md, the reference `simqtt certify-client` must certify clean.
//! `--fault` plants one client bug (for the tests that prove certify-client catches it):
//! `no-resubscribe` never subscribes again after a reconnect without a session; `no-dup`
//! clears the DUP flag of every PUBLISH the client writes, so resends go out as DUP 0.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use simqtt::certify_client::protocol::{Command as Line, Event as Said, FilterQos};
use simqtt::client::{
    Client, ClientError, ConnectOptions, EventKind, FilePersistence, MemoryPersistence,
    Persistence, ReconnectOptions, ResubscribePolicy, WillOptions,
};
use simqtt::codec::{ProtocolVersion, QoS, SubscriptionOptions, TopicFilter, TopicName};
use simqtt::store::fs::StdFs;
use simqtt::transport::tcp::TcpConnector;
use simqtt::transport::{BoxFuture, BoxStream, Connector};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Never subscribe again after a reconnect that found no session.
    NoResubscribe,
    /// Write every PUBLISH with DUP 0, resends included.
    NoDup,
}

#[derive(clap::Args)]
pub struct Args {
    /// Plant a client bug (tests of certify-client only).
    #[arg(long, value_enum)]
    fault: Option<Fault>,
}

fn say(out: &mpsc::UnboundedSender<String>, event: Said) {
    let _ = out.send(event.line());
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(args.fault))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(fault: Option<Fault>) -> anyhow::Result<()> {
    let (out, mut lines) = mpsc::unbounded_channel::<String>();
    // One writer, so lines from tasks never interleave.
    tokio::task::spawn_local(async move {
        use tokio::io::AsyncWriteExt;
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.recv().await {
            let _ = stdout.write_all(line.as_bytes()).await;
            let _ = stdout.flush().await;
        }
    });
    say(
        &out,
        Said::Ready {
            protocol: simqtt::certify_client::protocol::PROTOCOL_VERSION,
            client: format!("simqtt {}", env!("CARGO_PKG_VERSION")),
        },
    );
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut client: Option<Client> = None;
    let mut events: Option<mpsc::Receiver<simqtt::client::Event>> = None;
    // Token → command id, for the completions the client reports by token.
    let mut ids: BTreeMap<u64, u64> = BTreeMap::new();
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { return Ok(()) };
                if line.trim().is_empty() {
                    continue;
                }
                let command: Line = match serde_json::from_str(&line) {
                    Ok(c) => c,
                    Err(e) => {
                        say(&out, Said::Error { id: None, message: format!("{e}: {line}") });
                        continue;
                    }
                };
                match command {
                    Line::Connect { .. } => match start(&command, fault) {
                        Ok((c, e)) => {
                            client = Some(c);
                            events = Some(e);
                        }
                        Err(e) => say(&out, Said::Error { id: None, message: e.to_string() }),
                    },
                    Line::Exit => return Ok(()),
                    other => {
                        let Some(c) = client.clone() else {
                            say(&out, Said::Error { id: None, message: "not connected: send connect first".into() });
                            continue;
                        };
                        command_to(&c, other, &out, &mut ids).await;
                    }
                }
            }
            event = async {
                match events.as_mut() {
                    Some(e) => e.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match event {
                    Some(event) => heard(event.kind, &out, &mut ids),
                    None => events = None,
                }
            }
        }
    }
}

async fn command_to(
    client: &Client,
    command: Line,
    out: &mpsc::UnboundedSender<String>,
    ids: &mut BTreeMap<u64, u64>,
) {
    match command {
        Line::Subscribe { id, filters } => {
            let wire: Result<Vec<_>, _> = filters
                .iter()
                .map(|f| {
                    TopicFilter::new(&f.filter).map(|t| {
                        (
                            t,
                            SubscriptionOptions::qos(QoS::from_u8(f.qos).unwrap_or_default()),
                        )
                    })
                })
                .collect();
            match wire {
                Ok(wire) => match client.start_subscribe(wire).await {
                    Ok(op) => {
                        ids.insert(op.token, id);
                    }
                    Err(e) => say(out, error(id, e)),
                },
                Err(e) => say(
                    out,
                    Said::Error {
                        id: Some(id),
                        message: e.to_string(),
                    },
                ),
            }
        }
        Line::Unsubscribe { id, filters } => {
            let client = client.clone();
            let out = out.clone();
            tokio::task::spawn_local(async move {
                let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
                match client.unsubscribe(&refs).await {
                    Ok(_) => say(&out, Said::Unsubscribed { id }),
                    Err(e) => say(&out, error(id, e)),
                }
            });
        }
        Line::Publish {
            id,
            topic,
            qos,
            retain,
            payload,
        } => {
            let qos = QoS::from_u8(qos).unwrap_or_default();
            match client
                .publish(&topic, payload.into_bytes(), qos, retain)
                .await
            {
                Ok(op) => {
                    ids.insert(op.token, id);
                }
                Err(e) => say(out, error(id, e)),
            }
        }
        Line::Disconnect => {
            client.disconnect().await;
            say(out, Said::Disconnected);
        }
        Line::Connect { .. } | Line::Exit => {}
    }
}

fn error(id: u64, e: ClientError) -> Said {
    Said::Error {
        id: Some(id),
        message: e.to_string(),
    }
}

fn heard(kind: EventKind, out: &mpsc::UnboundedSender<String>, ids: &mut BTreeMap<u64, u64>) {
    match kind {
        EventKind::ConnectComplete {
            reconnect,
            session_present,
        } => say(
            out,
            Said::ConnectComplete {
                reconnect,
                session_present: Some(session_present),
            },
        ),
        EventKind::ConnectionLost { cause } => say(
            out,
            Said::ConnectionLost {
                cause: cause.to_string(),
            },
        ),
        EventKind::MessageArrived(m) => say(
            out,
            Said::Message {
                topic: m.topic.as_str().to_string(),
                qos: m.qos.as_u8(),
                retain: m.retain,
                dup: m.dup,
                payload: String::from_utf8_lossy(&m.payload).into_owned(),
            },
        ),
        EventKind::DeliveryComplete {
            token,
            packet_id,
            qos,
        } => {
            let id = ids.remove(&token);
            if qos != QoS::AtMostOnce {
                say(
                    out,
                    Said::DeliveryComplete {
                        id,
                        packet_id: if id.is_none() {
                            packet_id.map(|p| p.get())
                        } else {
                            None
                        },
                    },
                );
            }
        }
        EventKind::DeliveryFailed { token, cause, .. } => {
            if let Some(id) = ids.remove(&token) {
                say(out, error(id, cause));
            }
        }
        EventKind::SubscribeComplete {
            token,
            filters,
            granted,
            resubscribe,
            ..
        } => {
            let id = if resubscribe {
                None
            } else {
                ids.remove(&token)
            };
            say(
                out,
                Said::Subscribed {
                    id,
                    filters: filters
                        .iter()
                        .zip(&granted)
                        .map(|(f, g)| FilterQos {
                            filter: f.as_str().to_string(),
                            qos: g.as_u8().min(2),
                        })
                        .collect(),
                    granted: granted.iter().map(|g| g.as_u8()).collect(),
                },
            );
        }
        EventKind::Stopped { cause: Some(cause) } => say(
            out,
            Said::Error {
                id: None,
                message: format!("the client stopped: {cause}"),
            },
        ),
        _ => {}
    }
}

type Started = (Client, mpsc::Receiver<simqtt::client::Event>);

fn start(command: &Line, fault: Option<Fault>) -> Result<Started, ClientError> {
    let Line::Connect {
        server,
        client_id,
        version,
        clean_session,
        keepalive,
        session_expiry,
        username,
        password,
        will,
        automatic_reconnect,
        resubscribe,
        persistence_dir,
    } = command
    else {
        return Err(ClientError::InvalidArgument("not a connect".into()));
    };
    let mut options = ConnectOptions::new(server.clone(), client_id.clone());
    options.protocol = if version == "5" {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    options.clean_session = *clean_session;
    options.keep_alive_secs = *keepalive;
    options.session_expiry_interval_secs = *session_expiry;
    options.username = username.clone();
    options.password = password.as_ref().map(|p| p.clone().into_bytes().into());
    options.connect_timeout = Duration::from_secs(5);
    if let Some(w) = will {
        options.will = Some(WillOptions {
            topic: TopicName::new(&w.topic)
                .map_err(|e| ClientError::InvalidArgument(format!("will topic: {e}")))?,
            payload: w.payload.clone().into_bytes().into(),
            qos: QoS::from_u8(w.qos).unwrap_or_default(),
            retain: w.retain,
            properties: Default::default(),
        });
    }
    options.reconnect = automatic_reconnect.then(|| ReconnectOptions {
        min_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        seed: u64::from(std::process::id()),
        max_attempts: None,
    });
    options.resubscribe = if *resubscribe && fault != Some(Fault::NoResubscribe) {
        ResubscribePolicy::WhenSessionNotPresent
    } else {
        ResubscribePolicy::Never
    };
    let persistence: Box<dyn Persistence> = match persistence_dir {
        Some(dir) => Box::new(FilePersistence::new(Arc::new(StdFs), dir, client_id)),
        None => Box::new(MemoryPersistence::new()),
    };
    let connector: Arc<dyn Connector> = match fault {
        Some(Fault::NoDup) => Arc::new(NoDupConnector),
        _ => Arc::new(TcpConnector),
    };
    Client::start(options, connector, persistence)
}

/// TCP whose writes have the DUP flag of every PUBLISH cleared (`--fault no-dup`).
struct NoDupConnector;

impl Connector for NoDupConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let inner = TcpConnector.connect(addr).await?;
            Ok(Box::new(NoDup {
                inner,
                scan: Scan::default(),
            }) as BoxStream)
        })
    }
}

/// Where the writer is in the packet stream: the bytes of the current packet still to pass,
/// or the fixed header being read.
#[derive(Default, Clone, Copy)]
struct Scan {
    body_left: usize,
    /// Fixed header bytes seen of the current packet (0: the next byte starts a packet).
    header_len: usize,
    remaining: usize,
}

impl Scan {
    /// Steps over one byte; true when it is a packet's first byte.
    fn step(&mut self, byte: u8) -> bool {
        if self.body_left > 0 {
            self.body_left -= 1;
            return false;
        }
        if self.header_len == 0 {
            self.header_len = 1;
            self.remaining = 0;
            return true;
        }
        self.remaining |= usize::from(byte & 0x7f) << (7 * (self.header_len - 1));
        self.header_len += 1;
        if byte & 0x80 == 0 || self.header_len > 4 {
            self.body_left = self.remaining;
            self.header_len = 0;
        }
        false
    }
}

struct NoDup {
    inner: BoxStream,
    scan: Scan,
}

impl AsyncRead for NoDup {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoDup {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut copy = buf.to_vec();
        let mut scan = self.scan;
        for byte in copy.iter_mut() {
            if scan.step(*byte) && *byte >> 4 == 3 {
                *byte &= !0x08;
            }
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, &copy);
        if let Poll::Ready(Ok(n)) = written {
            for &byte in &buf[..n] {
                self.scan.step(byte);
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
