//! Server-side transports: a TCP listener with TLS and/or WebSocket over it ([`Upgrading`]),
//! and several listeners served as one ([`Listeners`]), so `broker::run` still takes one bound
//! listener (STYLE.md #2) whatever mix of mqtt/mqtts/ws/wss ports it serves.
//!
//! Handshakes (TLS, then the WebSocket upgrade) run side by side, each in its own task and
//! bounded in time and number, so a client that stalls mid-handshake holds up nobody: a
//! connection reaches the broker only once it speaks MQTT.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::tcp::TcpListener;
use super::tls::{common_name, describe, ServerTls, TlsError};
use super::{Accepted, BoxFuture, BoxStream, Listener};

/// Longest a client may take over its TLS handshake and WebSocket upgrade.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress per listener; beyond it, new connections wait in the kernel's
/// backlog until one finishes.
pub const HANDSHAKES_MAX: usize = 1024;
/// Connections accepted by the listeners of a `Listeners` and not yet taken by the broker.
const ACCEPTED_QUEUE: usize = 64;

/// One listener's transport settings.
#[derive(Debug, Clone, Default)]
pub struct ListenerSpec {
    /// `HOST:PORT` to bind.
    pub addr: String,
    /// TLS with these files; `None`: plain.
    pub tls: Option<ServerTls>,
    /// WebSocket on this path; `None`: MQTT straight on the (TLS) stream.
    pub websocket_path: Option<String>,
    /// The client certificate's common name becomes the connection's identity (its user
    /// name). Needs `tls` with `require_certificate`.
    pub use_identity_as_username: bool,
    /// Largest packet the broker accepts (bounds a WebSocket frame).
    pub max_packet_size: usize,
}

impl ListenerSpec {
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub fn scheme(&self) -> &'static str {
        match (self.tls.is_some(), self.websocket_path.is_some()) {
            (false, false) => "mqtt",
            (true, false) => "mqtts",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Loads the TLS files (first: a bad file is reported before a port is taken), then binds.
pub async fn bind(spec: &ListenerSpec) -> Result<Box<dyn Listener>, ListenError> {
    if spec.use_identity_as_username && !spec.tls.as_ref().is_some_and(|t| t.require_certificate) {
        return Err(ListenError::Invalid(
            "use_identity_as_username = true needs TLS with require_certificate = true (the name comes from the client's certificate)"
                .into(),
        ));
    }
    let tls = match &spec.tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(tls.config()?)),
        None => None,
    };
    let tcp = TcpListener::bind(&spec.addr)
        .await
        .map_err(|error| ListenError::Bind {
            addr: spec.addr.clone(),
            error,
        })?;
    if tls.is_none() && spec.websocket_path.is_none() {
        return Ok(Box::new(tcp));
    }
    Ok(Box::new(Upgrading {
        inner: Box::new(tcp),
        upgrade: Arc::new(Upgrade {
            scheme: spec.scheme(),
            tls,
            websocket_path: spec.websocket_path.clone(),
            identity: spec.use_identity_as_username,
            max_packet_size: spec.max_packet_size,
        }),
        pending: JoinSet::new(),
        observer: None,
    }))
}

/// Told of every handshake a listener runs (the simulator writes them into its trace and
/// checks that none is left half done).
pub trait HandshakeObserver: Send + Sync + 'static {
    /// A connection was accepted and its handshake begins.
    fn started(&self, peer: &str);
    /// Its handshake ended: the connection goes to the broker (`Ok`) or is dropped (`Err`:
    /// why).
    fn finished(&self, peer: &str, outcome: Result<(), &str>);
}

struct Upgrade {
    scheme: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
    websocket_path: Option<String>,
    identity: bool,
    max_packet_size: usize,
}

impl Upgrade {
    /// TLS, then WebSocket, over a fresh connection; `Err` says why the client was dropped.
    async fn run(&self, stream: BoxStream, peer: String) -> Result<Accepted, String> {
        let mut identity = None;
        let stream: BoxStream = match &self.tls {
            Some(acceptor) => {
                let tls = acceptor
                    .accept(stream)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {}", describe(&e, "client")))?;
                if self.identity {
                    let name = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| common_name(cert));
                    identity = Some(name.ok_or(
                        "the client certificate has no common name (CN), which use_identity_as_username needs",
                    )?);
                }
                Box::new(tls)
            }
            None => stream,
        };
        let stream: BoxStream = match &self.websocket_path {
            Some(path) => Box::new(
                super::ws::accept(stream, path, self.max_packet_size)
                    .await
                    .map_err(|e| format!("WebSocket upgrade failed: {e}"))?,
            ),
            None => stream,
        };
        Ok(Accepted {
            stream,
            peer,
            identity,
        })
    }
}

/// A TCP listener whose connections go through TLS and/or the WebSocket upgrade before they
/// are handed out.
pub struct Upgrading {
    inner: Box<dyn Listener>,
    upgrade: Arc<Upgrade>,
    pending: JoinSet<Option<Accepted>>,
    observer: Option<Arc<dyn HandshakeObserver>>,
}

impl Upgrading {
    /// TLS with `tls` (a server configuration made elsewhere: the simulator's) and/or the
    /// WebSocket upgrade on `websocket_path` over the connections of `inner`, with every
    /// handshake reported to `observer`.
    pub fn over(
        inner: Box<dyn Listener>,
        tls: Option<Arc<rustls::ServerConfig>>,
        websocket_path: Option<String>,
        max_packet_size: usize,
        observer: Option<Arc<dyn HandshakeObserver>>,
    ) -> Upgrading {
        let scheme = match (tls.is_some(), websocket_path.is_some()) {
            (false, false) => "mqtt",
            (true, false) => "mqtts",
            (false, true) => "ws",
            (true, true) => "wss",
        };
        Upgrading {
            inner,
            upgrade: Arc::new(Upgrade {
                scheme,
                tls: tls.map(tokio_rustls::TlsAcceptor::from),
                websocket_path,
                identity: false,
                max_packet_size,
            }),
            pending: JoinSet::new(),
            observer,
        }
    }
}

impl Listener for Upgrading {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let accepted = self.accept_client().await?;
            Ok((accepted.stream, accepted.peer))
        })
    }

    fn local_addr(&self) -> String {
        self.inner.local_addr()
    }

    fn accept_client(&mut self) -> BoxFuture<'_, io::Result<Accepted>> {
        Box::pin(async move {
            loop {
                tokio::select! {
                    // Both branches are cancel-safe: a dropped `accept_client` loses nothing.
                    Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                        if let Ok(Some(accepted)) = done {
                            return Ok(accepted);
                        }
                    }
                    accepted = self.inner.accept(), if self.pending.len() < HANDSHAKES_MAX => {
                        let (stream, peer) = accepted?;
                        let upgrade = self.upgrade.clone();
                        let observer = self.observer.clone();
                        if let Some(o) = &observer {
                            o.started(&peer);
                        }
                        self.pending.spawn(async move {
                            let scheme = upgrade.scheme;
                            let result =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade.run(stream, peer.clone()))
                                    .await
                                    .unwrap_or_else(|_| {
                                        Err(format!(
                                            "no handshake within {}s",
                                            HANDSHAKE_TIMEOUT.as_secs()
                                        ))
                                    });
                            if let Some(o) = &observer {
                                o.finished(&peer, result.as_ref().map(|_| ()).map_err(|e| e.as_str()));
                            }
                            match result {
                                Ok(accepted) => Some(accepted),
                                Err(why) => {
                                    tracing::info!(%peer, listener = scheme, "connection dropped: {why}");
                                    None
                                }
                            }
                        });
                    }
                }
            }
        })
    }
}

/// Several bound listeners served as one: each accepts in its own task into one queue.
pub struct Listeners {
    waiting: Vec<Box<dyn Listener>>,
    addrs: Vec<String>,
    accepted: Option<mpsc::Receiver<io::Result<Accepted>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listeners {
    pub fn new(listeners: Vec<Box<dyn Listener>>) -> Listeners {
        Listeners {
            addrs: listeners.iter().map(|l| l.local_addr()).collect(),
            waiting: listeners,
            accepted: None,
            tasks: Vec::new(),
        }
    }

    /// Starts the accept tasks on first use (the runtime is there by then).
    fn receiver(&mut self) -> &mut mpsc::Receiver<io::Result<Accepted>> {
        if self.accepted.is_none() {
            let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
            for mut listener in self.waiting.drain(..) {
                let tx = tx.clone();
                self.tasks.push(tokio::spawn(async move {
                    loop {
                        let next = listener.accept_client().await;
                        if tx.send(next).await.is_err() {
                            return;
                        }
                    }
                }));
            }
            self.accepted = Some(rx);
        }
        self.accepted.as_mut().expect("just set")
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Listener for Listeners {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let accepted = self.accept_client().await?;
            Ok((accepted.stream, accepted.peer))
        })
    }

    fn local_addr(&self) -> String {
        self.addrs.join(", ")
    }

    fn accept_client(&mut self) -> BoxFuture<'_, io::Result<Accepted>> {
        Box::pin(async move {
            match self.receiver().recv().await {
                Some(next) => next,
                // Every accept task ended (they do not, short of a panic): nothing more comes.
                None => std::future::pending().await,
            }
        })
    }
}
