//! The connection driver: one task per client that owns the `ClientState`, opens connections
//! through a transport `Connector` (tokio TCP or turmoil, unchanged), reads and writes packets,
//! applies persistence ops, reconnects with backoff, and turns actions into events and token
//! completions. The application holds a cloneable `Client` handle and an event `Receiver`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{sleep_until, timeout, Instant};

use super::backoff::Backoff;
use super::error::ClientError;
use super::options::ConnectOptions;
use super::persist::{PersistOp, Persistence};
use super::state::{Action, ClientState, Command, Completion, EventKind, Token};
use crate::codec::{
    self, MqttStr, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions, TopicFilter, TopicName,
};
use crate::transport::{BoxStream, Connector, FramedRead, FramedWrite, TransportError};

/// One event, stamped with the (virtual under turmoil) time and the connection attempt it
/// belongs to (1 for the first attempt, counting failed attempts too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Instant,
    pub connection: u32,
    pub kind: EventKind,
}

/// Requests queued from handles to the driver. Bounded: a flood of calls waits here.
const REQUEST_QUEUE_CAPACITY: usize = 64;
/// Requests handled per wake before one flush.
const REQUEST_BATCH: usize = 64;
/// Buffered packets handled per wake before one flush.
const PACKET_BATCH: usize = 256;

/// Where the driver answers one request.
pub type Reply = oneshot::Sender<Result<Completion, ClientError>>;

/// What a `Client` handle asks of its driver. Public for drivers other than this module's:
/// `certify_client` serves a handle with a client under test in another process.
pub enum Request {
    Command(Command, Reply),
    Disconnect(oneshot::Sender<()>, ReasonCode),
}

/// A handle to a running client. Cheap to clone; when every clone is dropped the client
/// disconnects and stops.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    window: Arc<Semaphore>,
    next_token: Arc<AtomicU64>,
    abort: Arc<tokio::task::AbortHandle>,
    protocol: ProtocolVersion,
}

/// Completes when the operation does (see `EventKind::DeliveryComplete` for when that is).
pub struct OpToken {
    pub token: Token,
    reply: oneshot::Receiver<Result<Completion, ClientError>>,
}

impl OpToken {
    pub async fn wait(self) -> Result<Completion, ClientError> {
        self.reply.await.unwrap_or(Err(ClientError::Stopped))
    }
}

impl Future for OpToken {
    type Output = Result<Completion, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Stopped)))
    }
}

impl Client {
    /// Starts the client in the background (on the current tokio runtime, so on the current
    /// turmoil host inside a simulation). It connects, and reconnects as the options say.
    pub fn start(
        options: ConnectOptions,
        connector: Arc<dyn Connector>,
        persistence: Box<dyn Persistence>,
    ) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        let (client, events, _) = Self::spawn(options, connector, persistence, false)?;
        Ok((client, events))
    }

    /// Starts the client and waits for the first connection attempt, like Paho's `connect`:
    /// an unreachable broker or a refused CONNACK is returned as the error (and the client
    /// stops); after that, lost connections are reconnected per the options. Returns
    /// session_present of the first CONNACK.
    pub async fn connect(
        options: ConnectOptions,
        connector: Arc<dyn Connector>,
        persistence: Box<dyn Persistence>,
    ) -> Result<(Client, mpsc::Receiver<Event>, bool), ClientError> {
        let (client, events, first) = Self::spawn(options, connector, persistence, true)?;
        let session_present = first.await.unwrap_or(Err(ClientError::Stopped))?;
        Ok((client, events, session_present))
    }

    #[allow(clippy::type_complexity)]
    fn spawn(
        options: ConnectOptions,
        connector: Arc<dyn Connector>,
        mut persistence: Box<dyn Persistence>,
        stop_on_first_failure: bool,
    ) -> Result<
        (
            Client,
            mpsc::Receiver<Event>,
            oneshot::Receiver<Result<bool, ClientError>>,
        ),
        ClientError,
    > {
        MqttStr::new(&options.client_id)
            .map_err(|e| ClientError::InvalidArgument(format!("client id: {e}")))?;
        let restored = persistence
            .open()
            .map_err(|e| ClientError::Persistence(e.to_string()))?;
        let now = Instant::now();
        let state = ClientState::new(options.clone(), &restored.state, now);
        let window = state.inflight_window();
        let restored_len = restored.state.outgoing_len();
        let (event_tx, event_rx) = mpsc::channel(options.event_capacity.max(16));
        for message in restored.warnings {
            let _ = event_tx.try_send(Event {
                at: now,
                connection: 0,
                kind: EventKind::PersistenceWarning { message },
            });
        }
        let (request_tx, request_rx) = mpsc::channel(REQUEST_QUEUE_CAPACITY);
        let semaphore = Arc::new(Semaphore::new(window.saturating_sub(restored_len)));
        let (first_tx, first_rx) = oneshot::channel();
        let driver =
            Driver {
                backoff: options.reconnect.as_ref().map(Backoff::new),
                write_timeout: options.connect_timeout.max(std::time::Duration::from_secs(
                    u64::from(options.keep_alive_secs),
                )),
                disconnect_reason: ReasonCode::Success,
                options: options.clone(),
                state,
                connector,
                persistence,
                requests: request_rx,
                events: event_tx,
                waiters: BTreeMap::new(),
                window: semaphore.clone(),
                window_debt: restored_len.saturating_sub(window),
                attempt: 0,
                connected_this_attempt: false,
                failed_attempts: 0,
                first_outcome: Some(first_tx),
                stop_on_first_failure,
            };
        let task = tokio::spawn(driver.run());
        Ok((
            Client {
                requests: request_tx,
                window: semaphore,
                next_token: Arc::new(AtomicU64::new(1)),
                abort: Arc::new(task.abort_handle()),
                protocol: options.protocol,
            },
            event_rx,
            first_rx,
        ))
    }

    /// A handle served by a driver of the caller's own (one that reads `requests` from the
    /// channel `request_channel` made and ends when `abort` aborts it). The in-flight window
    /// is that driver's business: `publish` never waits here.
    pub fn with_driver(
        protocol: ProtocolVersion,
        requests: mpsc::Sender<Request>,
        abort: tokio::task::AbortHandle,
    ) -> Client {
        Client {
            requests,
            window: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            next_token: Arc::new(AtomicU64::new(1)),
            abort: Arc::new(abort),
            protocol,
        }
    }

    /// The channel between handles and a driver of the caller's own (`with_driver`).
    pub fn request_channel() -> (mpsc::Sender<Request>, mpsc::Receiver<Request>) {
        mpsc::channel(REQUEST_QUEUE_CAPACITY)
    }

    pub fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    fn token(&self) -> Token {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    async fn request(&self, command: Command) -> Result<OpToken, ClientError> {
        let token = match &command {
            Command::Publish { token, .. }
            | Command::Subscribe { token, .. }
            | Command::Unsubscribe { token, .. } => *token,
        };
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Command(command, tx))
            .await
            .map_err(|_| ClientError::Stopped)?;
        Ok(OpToken { token, reply: rx })
    }

    /// Publishes a message. QoS 1/2 first waits for room in the in-flight window (this is the
    /// back-pressure), is persisted, and is sent now or after the next (re)connect; the token
    /// completes at PUBACK (QoS 1) or PUBCOMP (QoS 2). QoS 0 completes once written and fails
    /// with `NotConnected` while offline.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<OpToken, ClientError> {
        let topic = TopicName::new(topic)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ClientError::InvalidArgument(format!("invalid topic name {topic:?}")))?;
        if qos != QoS::AtMostOnce {
            let permit = self
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ClientError::Stopped)?;
            // The driver returns the slot (WindowSlotFreed) when the flow ends.
            permit.forget();
        }
        self.request(Command::Publish {
            token: self.token(),
            topic,
            payload: payload.into(),
            qos,
            retain,
        })
        .await
    }

    /// Sends SUBSCRIBE (now or at the next connect) and returns a token for the SUBACK.
    pub async fn start_subscribe(
        &self,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
    ) -> Result<OpToken, ClientError> {
        if filters.is_empty() {
            return Err(ClientError::InvalidArgument(
                "[MQTT-3.8.3-3] SUBSCRIBE needs at least one filter".into(),
            ));
        }
        self.request(Command::Subscribe {
            token: self.token(),
            filters,
        })
        .await
    }

    /// Subscribes and waits for the SUBACK: one granted QoS (or failure code) per filter.
    pub async fn subscribe(&self, filters: &[(&str, QoS)]) -> Result<Vec<ReasonCode>, ClientError> {
        let filters = filters
            .iter()
            .map(|(f, qos)| {
                TopicFilter::new(f)
                    .map(|f| (f, SubscriptionOptions::qos(*qos)))
                    .map_err(|e| ClientError::InvalidArgument(format!("topic filter {f:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        match self.start_subscribe(filters).await?.wait().await? {
            Completion::Subscribed(codes) => Ok(codes),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Unsubscribes and waits for the UNSUBACK (5.0: one reason code per filter).
    pub async fn unsubscribe(&self, filters: &[&str]) -> Result<Vec<ReasonCode>, ClientError> {
        let filters = filters
            .iter()
            .map(|f| {
                TopicFilter::new(f)
                    .map_err(|e| ClientError::InvalidArgument(format!("topic filter {f:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if filters.is_empty() {
            return Err(ClientError::InvalidArgument(
                "[MQTT-3.10.3-2] UNSUBSCRIBE needs at least one filter".into(),
            ));
        }
        let token = self.token();
        match self
            .request(Command::Unsubscribe { token, filters })
            .await?
            .wait()
            .await?
        {
            Completion::Unsubscribed(codes) => Ok(codes),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Sends DISCONNECT (the broker discards the will), closes, and stops the client.
    /// Unfinished QoS 1/2 publishes stay in persistence for the next start.
    pub async fn disconnect(&self) {
        self.disconnect_with(ReasonCode::Success).await;
    }

    /// Like [`Client::disconnect`] with a 5.0 reason code: `DisconnectWithWillMessage` (0x04)
    /// asks the broker to publish the will anyway [MQTT-3.14.4-3]. A 3.1.1 DISCONNECT has no
    /// reason code, so there the code is ignored and the will discarded as always.
    pub async fn disconnect_with(&self, reason: ReasonCode) {
        let (tx, rx) = oneshot::channel();
        if self
            .requests
            .send(Request::Disconnect(tx, reason))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Stops the client at once without DISCONNECT, like a process crash (the broker will
    /// publish the will). Persistence keeps what was applied.
    pub fn kill(&self) {
        self.abort.abort();
    }
}

/// How one connection ended.
enum End {
    Lost(ClientError),
    Stop(Option<oneshot::Sender<()>>),
}

struct Driver {
    options: ConnectOptions,
    state: ClientState,
    connector: Arc<dyn Connector>,
    persistence: Box<dyn Persistence>,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Event>,
    waiters: BTreeMap<Token, Reply>,
    window: Arc<Semaphore>,
    /// Restored publishes beyond the window: slots freed for them are not handed out.
    window_debt: usize,
    backoff: Option<Backoff>,
    write_timeout: std::time::Duration,
    /// The reason code the application's disconnect asked for (5.0).
    disconnect_reason: ReasonCode,
    attempt: u32,
    connected_this_attempt: bool,
    /// Consecutive attempts that did not reach CONNACK (bounded by `max_attempts`).
    failed_attempts: u32,
    first_outcome: Option<oneshot::Sender<Result<bool, ClientError>>>,
    stop_on_first_failure: bool,
}

impl Driver {
    async fn run(mut self) {
        let (stop_cause, done) = self.run_connections().await;
        let cause = stop_cause.clone().unwrap_or(ClientError::Stopped);
        let actions = self.state.shutdown(cause.clone());
        self.apply_offline(actions).await;
        for (_, waiter) in std::mem::take(&mut self.waiters) {
            let _ = waiter.send(Err(cause.clone()));
        }
        if let Some(first) = self.first_outcome.take() {
            let _ = first.send(Err(cause.clone()));
        }
        self.window.close();
        self.emit(EventKind::Stopped { cause: stop_cause }).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Connects and reconnects until told to stop or out of attempts.
    async fn run_connections(&mut self) -> (Option<ClientError>, Option<oneshot::Sender<()>>) {
        loop {
            self.attempt = self.attempt.saturating_add(1);
            self.connected_this_attempt = false;
            let connected = timeout(
                self.options.connect_timeout,
                self.connector.connect(&self.options.server),
            )
            .await;
            let cause = match connected {
                Ok(Ok(stream)) => match self.run_connection(stream).await {
                    End::Stop(done) => return (None, done),
                    End::Lost(cause) => cause,
                },
                Ok(Err(e)) => ClientError::Unreachable {
                    server: self.options.server.clone(),
                    message: e.to_string(),
                },
                Err(_) => ClientError::ConnectTimeout,
            };
            let actions = self.state.connection_lost(cause.clone());
            self.apply_offline(actions).await;

            if self.first_outcome.is_some() && self.stop_on_first_failure {
                return (Some(cause), None);
            }
            let Some(backoff) = self.backoff.as_mut() else {
                return (Some(cause), None);
            };
            if self.connected_this_attempt {
                backoff.reset();
                self.failed_attempts = 0;
            } else {
                self.failed_attempts = self.failed_attempts.saturating_add(1);
            }
            if let Some(max) = self.options.reconnect.as_ref().and_then(|r| r.max_attempts) {
                if self.failed_attempts >= max {
                    return (Some(ClientError::GaveUp(max)), None);
                }
            }
            let delay = backoff.next_delay();
            let failures = backoff.failures();
            self.emit(EventKind::ReconnectScheduled { delay, failures })
                .await;
            if let Some(done) = self.wait_offline(Instant::now() + delay).await {
                return (None, done);
            }
        }
    }

    /// Serves requests until `until`; `Some` when asked to stop.
    async fn wait_offline(&mut self, until: Instant) -> Option<Option<oneshot::Sender<()>>> {
        loop {
            tokio::select! {
                biased;
                () = sleep_until(until) => return None,
                request = self.requests.recv() => match request {
                    None => return Some(None),
                    Some(Request::Disconnect(done, reason)) => {
                        self.disconnect_reason = reason;
                        return Some(Some(done));
                    }
                    Some(Request::Command(command, reply)) => {
                        let actions = self.accept(command, reply);
                        self.apply_offline(actions).await;
                    }
                },
            }
        }
    }

    fn accept(&mut self, command: Command, reply: Reply) -> Vec<Action> {
        let token = match &command {
            Command::Publish { token, .. }
            | Command::Subscribe { token, .. }
            | Command::Unsubscribe { token, .. } => *token,
        };
        self.waiters.insert(token, reply);
        self.state.handle_command(command, Instant::now())
    }

    async fn run_connection(&mut self, stream: BoxStream) -> End {
        let version = self.options.protocol;
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = FramedRead::new(read_half, version, codec::DEFAULT_MAX_PACKET_SIZE);
        let mut writer = FramedWrite::new(write_half, version);
        let actions = self.state.transport_connected(Instant::now());
        if let Err(cause) = self.apply(actions, &mut writer).await {
            return End::Lost(cause);
        }
        loop {
            let deadline = self.state.next_deadline();
            let tick = async move {
                match deadline {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Biased for determinism (no runtime RNG picks the branch).
            let actions = tokio::select! {
                biased;
                () = tick => self.state.handle_tick(Instant::now()),
                packet = reader.read_packet() => {
                    let packet = match packet {
                        Ok(Some(packet)) => packet,
                        Ok(None) => return End::Lost(ClientError::ConnectionClosed),
                        Err(TransportError::Io(e)) => return End::Lost(ClientError::Io(e.to_string())),
                        Err(e) => return End::Lost(ClientError::Protocol(e.to_string())),
                    };
                    let mut actions = self.state.handle_packet(packet, Instant::now());
                    let closes = |actions: &[Action]| actions.iter().any(|a| matches!(a, Action::Close(_)));
                    let mut closing = closes(&actions);
                    // Drain what is already buffered, so one flush answers a batch.
                    let mut drained = 0;
                    while !closing && drained < PACKET_BATCH {
                        match reader.try_read_buffered() {
                            Ok(Some(packet)) => {
                                let more = self.state.handle_packet(packet, Instant::now());
                                closing = closes(&more);
                                actions.extend(more);
                                drained += 1;
                            }
                            Ok(None) => break,
                            Err(e) => return End::Lost(ClientError::Protocol(e.to_string())),
                        }
                    }
                    // Requests too (at least one per wake, so a busy inbound stream cannot
                    // starve them), unless the connection is closing: their actions would be
                    // cut off behind the Close.
                    let request = if closing { Err(mpsc::error::TryRecvError::Empty) } else { self.requests.try_recv() };
                    match request {
                        Ok(request) => match self.take_requests(request, &mut actions) {
                            Some(done) => {
                                if let Err(cause) = self.apply(actions, &mut writer).await {
                                    return End::Lost(cause);
                                }
                                return self.graceful_close(&mut writer, done).await;
                            }
                            None => actions,
                        },
                        Err(_) => actions,
                    }
                }
                request = self.requests.recv() => {
                    let mut actions = Vec::new();
                    let request = match request {
                        Some(request) => request,
                        None => return self.graceful_close(&mut writer, None).await,
                    };
                    if let Some(done) = self.take_requests(request, &mut actions) {
                        if let Err(cause) = self.apply(actions, &mut writer).await {
                            return End::Lost(cause);
                        }
                        return self.graceful_close(&mut writer, done).await;
                    }
                    actions
                }
            };
            if let Err(cause) = self.apply(actions, &mut writer).await {
                return End::Lost(cause);
            }
        }
    }

    /// Handles `first` and whatever else is already queued (up to `REQUEST_BATCH`), so one
    /// flush carries a burst of publishes. `Some(done)` when a disconnect was asked for (the
    /// requests before it are handled; none after it are taken).
    fn take_requests(
        &mut self,
        first: Request,
        actions: &mut Vec<Action>,
    ) -> Option<Option<oneshot::Sender<()>>> {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(request) = next.take() {
            match request {
                Request::Command(command, reply) => actions.extend(self.accept(command, reply)),
                Request::Disconnect(done, reason) => {
                    self.disconnect_reason = reason;
                    return Some(Some(done));
                }
            }
            taken += 1;
            if taken < REQUEST_BATCH {
                next = self.requests.try_recv().ok();
            }
        }
        None
    }

    async fn graceful_close<W>(
        &mut self,
        writer: &mut FramedWrite<W>,
        done: Option<oneshot::Sender<()>>,
    ) -> End
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let disconnect = self.state.disconnect_packet(self.disconnect_reason);
        // [MQTT-3.14.4-1]: close after DISCONNECT; nothing more is sent [MQTT-3.14.4-2].
        if writer.push(&disconnect).is_ok() {
            let _ = timeout(self.write_timeout, writer.shutdown()).await;
        }
        End::Stop(done)
    }

    /// Carries out actions on a live connection. `Err` means the connection must end.
    async fn apply<W>(
        &mut self,
        actions: Vec<Action>,
        writer: &mut FramedWrite<W>,
    ) -> Result<(), ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut persist = Vec::new();
        let mut written_qos0 = Vec::new();
        let mut close = None;
        for action in actions {
            if !matches!(action, Action::Persist(_)) {
                self.persist(&mut persist).await;
            }
            match action {
                Action::Persist(op) => persist.push(op),
                Action::Send(packet) => {
                    if let Err(e) = writer.push(&packet) {
                        close = Some(ClientError::Protocol(format!("cannot encode: {e}")));
                        break;
                    }
                }
                Action::CompleteWhenWritten { token } => written_qos0.push(token),
                Action::Close(cause) => {
                    close = Some(cause);
                    break;
                }
                other => self.apply_local(other).await,
            }
        }
        self.persist(&mut persist).await;
        let flushed = match timeout(self.write_timeout, writer.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Io(e.to_string())),
            Err(_) => Err(ClientError::Io(
                "write timed out: broker not reading".into(),
            )),
        };
        for token in written_qos0 {
            let kind = match &flushed {
                Ok(()) => EventKind::DeliveryComplete {
                    token,
                    packet_id: None,
                    qos: QoS::AtMostOnce,
                },
                Err(cause) => EventKind::DeliveryFailed {
                    token,
                    packet_id: None,
                    cause: cause.clone(),
                },
            };
            self.emit(kind).await;
            self.complete(token, flushed.clone().map(|()| Completion::Published));
        }
        flushed?;
        match close {
            Some(cause) => Err(cause),
            None => Ok(()),
        }
    }

    /// Carries out actions while there is no connection (no packet can be sent).
    async fn apply_offline(&mut self, actions: Vec<Action>) {
        let mut persist = Vec::new();
        for action in actions {
            match action {
                Action::Persist(op) => persist.push(op),
                Action::Send(_) | Action::Close(_) => {}
                Action::CompleteWhenWritten { token } => {
                    self.complete(token, Err(ClientError::NotConnected));
                }
                other => {
                    self.persist(&mut persist).await;
                    self.apply_local(other).await;
                }
            }
        }
        self.persist(&mut persist).await;
    }

    async fn apply_local(&mut self, action: Action) {
        match action {
            Action::Event(kind) => {
                if let EventKind::ConnectComplete {
                    session_present, ..
                } = kind
                {
                    self.connected_this_attempt = true;
                    if let Some(first) = self.first_outcome.take() {
                        let _ = first.send(Ok(session_present));
                    }
                }
                self.emit(kind).await;
            }
            Action::Complete { token, result } => self.complete(token, result),
            Action::WindowSlotFreed => {
                if self.window_debt > 0 {
                    self.window_debt -= 1;
                } else {
                    self.window.add_permits(1);
                }
            }
            Action::Persist(_)
            | Action::Send(_)
            | Action::Close(_)
            | Action::CompleteWhenWritten { .. } => {}
        }
    }

    async fn persist(&mut self, ops: &mut Vec<PersistOp>) {
        if ops.is_empty() {
            return;
        }
        if let Err(e) = self.persistence.apply(ops) {
            // The message is still in memory and will be delivered; only a crash now could
            // lose it. Say so rather than stop the client.
            tracing::warn!(error = %e, "client persistence failed");
            self.emit(EventKind::PersistenceWarning {
                message: format!("could not persist in-flight state: {e}"),
            })
            .await;
        }
        ops.clear();
    }

    fn complete(&mut self, token: Token, result: Result<Completion, ClientError>) {
        if let Some(waiter) = self.waiters.remove(&token) {
            let _ = waiter.send(result);
        }
    }

    async fn emit(&mut self, kind: EventKind) {
        let event = Event {
            at: Instant::now(),
            connection: self.attempt,
            kind,
        };
        // A full channel makes the driver wait: back-pressure to the socket instead of an
        // unbounded buffer. A dropped receiver means nobody listens; that is allowed.
        let _ = self.events.send(event).await;
    }
}
