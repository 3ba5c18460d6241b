//! The connection driver: one task per client that owns the `ClientState`, opens connections
//! through a transport `Connector` (tokio TCP or turmoil, unchanged), reads and writes packets,
//! applies persistence ops, reconnects with backoff, and turns actions into events and token
//! completions. The application holds a cloneable `Client` handle and an event `Receiver`.
//!
//! A slow application never stalls the protocol. Events go into a bounded channel
//! (`ConnectOptions::event_capacity`); when it is full the driver keeps the event in a small
//! backlog (order kept) and stops reading the socket until the application has made room, so
//! the broker is held back by TCP flow control rather than by anything lost: every message
//! the client read (and acknowledged) is delivered, none is dropped, whatever its QoS. While
//! reading is paused the driver still sends PINGREQ every keepalive (so the broker does not
//! close the connection [MQTT-3.1.2-24]), the acknowledgements of what it already read, and
//! the application's requests; it does not count a missing PINGRESP against the broker then
//! (the answer is waiting unread behind the messages), so a broker that died then is noticed
//! once the application catches up. Until a connection's CONNACK has arrived reading goes
//! on regardless, so a reconnect completes while the application sleeps. Once the backlog holds
//! `REQUEST_PAUSE_BACKLOG` events, requests wait too, so an application that never reads
//! its events is eventually blocked in its own calls rather than growing memory.

use std::collections::{BTreeMap, VecDeque};
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
use super::state::{Action, ClientState, Command, Completion, EventKind, Message, Token};
use crate::codec::{
    self, MqttStr, ProtocolVersion, PublishProperties, QoS, ReasonCode, SubscriptionOptions,
    TopicFilter, TopicName,
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
/// Events waiting for room in a full event channel beyond which the driver stops taking
/// requests too (it already stopped reading the socket at the first one).
const REQUEST_PAUSE_BACKLOG: usize = 1024;
/// Requests with a response outstanding (`Client::request`) the driver keeps at once.
const PENDING_RESPONSES_MAX: usize = 4096;

/// Where the driver answers one request.
pub type Reply = oneshot::Sender<Result<Completion, ClientError>>;

/// What a `Client` handle asks of its driver. Public for drivers other than this module's:
/// `certify_client` serves a handle with a client under test in another process.
pub enum Request {
    Command(Command, Reply),
    Disconnect(oneshot::Sender<()>, ReasonCode),
    /// Route the first message on `topic` carrying `correlation` to `reply` instead of the
    /// event stream.
    AwaitResponse {
        topic: TopicName,
        correlation: Bytes,
        reply: oneshot::Sender<Message>,
    },
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
    client_id: Arc<str>,
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
                backlog: VecDeque::new(),
                responses: BTreeMap::new(),
            };
        let task = tokio::spawn(driver.run());
        Ok((
            Client {
                requests: request_tx,
                window: semaphore,
                next_token: Arc::new(AtomicU64::new(1)),
                abort: Arc::new(task.abort_handle()),
                protocol: options.protocol,
                client_id: Arc::from(options.client_id.as_str()),
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
        client_id: &str,
        requests: mpsc::Sender<Request>,
        abort: tokio::task::AbortHandle,
    ) -> Client {
        Client {
            requests,
            window: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            next_token: Arc::new(AtomicU64::new(1)),
            abort: Arc::new(abort),
            protocol,
            client_id: Arc::from(client_id),
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

    async fn send_command(&self, command: Command) -> Result<OpToken, ClientError> {
        let token = match &command {
            Command::Publish { token, .. }
            | Command::Subscribe { token, .. }
            | Command::Unsubscribe { token, .. }
            | Command::Reauthenticate { token, .. } => *token,
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
        self.publish_with(topic, payload, qos, retain, PublishProperties::default())
            .await
    }

    /// [`Client::publish`] with 5.0 properties: message expiry interval, content type,
    /// payload format indicator, response topic, correlation data, user properties (in
    /// order), topic alias. They are kept with the message, so a resend after a reconnect or
    /// restart carries them too. A topic alias is used only within the Topic Alias Maximum
    /// the broker returned on the current connection (else the topic goes in full); with
    /// `ConnectOptions::outbound_topic_aliases` the client picks aliases itself. Properties
    /// under 3.1.1, or a Subscription Identifier [MQTT-3.3.4-6], are refused.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
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
        self.send_command(Command::Publish {
            token: self.token(),
            topic,
            payload: payload.into(),
            qos,
            retain,
            properties: properties.into(),
        })
        .await
    }

    /// 5.0 request/response (§4.10): subscribes to `response_topic`, publishes the request
    /// with that Response Topic and Correlation Data (`properties.correlation_data`, or one
    /// made unique from the client id and a counter), and returns the first message that
    /// arrives on `response_topic` with the same correlation data. That message goes to the
    /// caller, not to the event stream; others on the topic are events as usual. Fails with
    /// `ClientError::ResponseTimeout` when no response comes within `wait`.
    pub async fn request(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        response_topic: &str,
        mut properties: PublishProperties,
        wait: std::time::Duration,
    ) -> Result<Message, ClientError> {
        if self.protocol != ProtocolVersion::V5 {
            return Err(ClientError::InvalidArgument(
                "request/response (Response Topic, Correlation Data) needs MQTT 5.0".into(),
            ));
        }
        let response = TopicName::new(response_topic)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "[MQTT-3.3.2-14] invalid response topic {response_topic:?}"
                ))
            })?;
        let correlation = properties
            .correlation_data
            .clone()
            .unwrap_or_else(|| Bytes::from(format!("{}/{}", self.client_id, self.token())));
        properties.correlation_data = Some(correlation.clone());
        properties.response_topic = Some(response.clone());
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::AwaitResponse {
                topic: response.clone(),
                correlation,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Stopped)?;
        let filter = TopicFilter::new(response.as_str())
            .map_err(|e| ClientError::InvalidArgument(format!("response topic: {e}")))?;
        let granted = match self
            .start_subscribe(vec![(filter, SubscriptionOptions::qos(qos))])
            .await?
            .wait()
            .await?
        {
            Completion::Subscribed(codes) => codes,
            other => return Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        };
        if let Some(code) = granted.iter().find(|c| c.is_error()) {
            return Err(ClientError::Rejected(*code));
        }
        self.publish_with(topic, payload, qos, false, properties)
            .await?
            .wait()
            .await?;
        match timeout(wait, rx).await {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(_)) => Err(ClientError::Stopped),
            Err(_) => Err(ClientError::ResponseTimeout(wait)),
        }
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
        self.send_command(Command::Subscribe {
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
            .send_command(Command::Unsubscribe { token, filters })
            .await?
            .wait()
            .await?
        {
            Completion::Unsubscribed(codes) => Ok(codes),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// 5.0 enhanced authentication: re-authenticates on the current connection (AUTH 0x19,
    /// SCRAM-SHA-256 with the options' credentials) and waits for the broker's AUTH 0x00,
    /// whose signature is checked. A broker that refuses closes the connection (DISCONNECT
    /// 0x87): the error says so, and the client reconnects if it is set to.
    pub async fn reauthenticate(&self) -> Result<(), ClientError> {
        self.reauthenticate_with(None).await
    }

    /// [`Client::reauthenticate`] with another password for this exchange only (the
    /// options' password stays the one reconnects use): a password rotated on the broker,
    /// or a test of the broker's refusal.
    pub async fn reauthenticate_with(&self, password: Option<Bytes>) -> Result<(), ClientError> {
        let token = self.token();
        match self
            .send_command(Command::Reauthenticate { token, password })
            .await?
            .wait()
            .await?
        {
            Completion::Reauthenticated => Ok(()),
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
    /// Events waiting for room in the full event channel, in order. While any waits, the
    /// socket is not read (see the module comment).
    backlog: VecDeque<Event>,
    /// `Client::request` waiters by correlation data: the response topic and the reply.
    responses: BTreeMap<Bytes, (TopicName, oneshot::Sender<Message>)>,
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
        // The application may still read what waited; then the channel closes.
        while let Some(event) = self.backlog.pop_front() {
            if self.events.send(event).await.is_err() {
                break;
            }
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
            let backlogged = !self.backlog.is_empty();
            let taking = self.backlog.len() < REQUEST_PAUSE_BACKLOG;
            tokio::select! {
                biased;
                () = sleep_until(until) => return None,
                permit = self.events.clone().reserve_owned(), if backlogged => self.forward_backlog(permit),
                request = self.requests.recv(), if taking => match request {
                    None => return Some(None),
                    Some(Request::Disconnect(done, reason)) => {
                        self.disconnect_reason = reason;
                        return Some(Some(done));
                    }
                    Some(Request::AwaitResponse { topic, correlation, reply }) => {
                        self.await_response(topic, correlation, reply);
                    }
                    Some(Request::Command(command, reply)) => {
                        let actions = self.accept(command, reply);
                        self.apply_offline(actions).await;
                    }
                },
            }
        }
    }

    /// Moves backlogged events into the channel while it has room (`permit` is the first).
    fn forward_backlog(
        &mut self,
        permit: Result<mpsc::OwnedPermit<Event>, mpsc::error::SendError<()>>,
    ) {
        let Ok(permit) = permit else {
            // Nobody listens any more: what waited has no reader.
            self.backlog.clear();
            return;
        };
        let Some(event) = self.backlog.pop_front() else {
            return;
        };
        permit.send(event);
        while let Some(event) = self.backlog.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    break;
                }
            }
        }
    }

    fn await_response(
        &mut self,
        topic: TopicName,
        correlation: Bytes,
        reply: oneshot::Sender<Message>,
    ) {
        // Callers that gave up (timed out) leave closed senders: drop them first.
        self.responses.retain(|_, (_, waiter)| !waiter.is_closed());
        if self.responses.len() >= PENDING_RESPONSES_MAX {
            // Dropping `reply` fails that request with `Stopped`-like closure; bounded.
            return;
        }
        self.responses.insert(correlation, (topic, reply));
    }

    fn accept(&mut self, command: Command, reply: Reply) -> Vec<Action> {
        let token = match &command {
            Command::Publish { token, .. }
            | Command::Subscribe { token, .. }
            | Command::Unsubscribe { token, .. }
            | Command::Reauthenticate { token, .. } => *token,
        };
        self.waiters.insert(token, reply);
        self.state.handle_command(command, Instant::now())
    }

    async fn run_connection(&mut self, stream: BoxStream) -> End {
        let version = self.options.protocol;
        let (read_half, write_half) = tokio::io::split(stream);
        // A 5.0 Maximum Packet Size we announced is the most we accept (§3.1.2.11.4): a
        // larger packet is a protocol error.
        let max_packet_size = match version {
            ProtocolVersion::V5 => self
                .options
                .connect_properties
                .maximum_packet_size
                .map_or(codec::DEFAULT_MAX_PACKET_SIZE, |m| m.get()),
            ProtocolVersion::V311 => codec::DEFAULT_MAX_PACKET_SIZE,
        };
        let mut reader = FramedRead::new(read_half, version, max_packet_size);
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
            // A full event channel pauses reading (module comment): the state machine keeps
            // the keepalive going without blaming the broker for the PINGRESP it cannot see.
            // Until CONNACK, reading goes on regardless: the connection must complete (else the
            // connect timeout would close it over and over while the application sleeps).
            let reading = self.backlog.is_empty() || !self.state.is_connected();
            let taking = self.backlog.len() < REQUEST_PAUSE_BACKLOG;
            if self.state.reading_paused() == reading {
                self.state.set_reading_paused(!reading, Instant::now());
            }
            // Biased for determinism (no runtime RNG picks the branch).
            let actions = tokio::select! {
                biased;
                () = tick => self.state.handle_tick(Instant::now()),
                permit = self.events.clone().reserve_owned(), if !reading => {
                    self.forward_backlog(permit);
                    continue;
                }
                packet = reader.read_packet(), if reading => {
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
                request = self.requests.recv(), if taking => {
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
                Request::AwaitResponse {
                    topic,
                    correlation,
                    reply,
                } => self.await_response(topic, correlation, reply),
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
        if let EventKind::MessageArrived(message) = &kind {
            if let Some(correlation) = &message.properties.correlation_data {
                let matches = self
                    .responses
                    .get(correlation)
                    .is_some_and(|(topic, _)| *topic == message.topic);
                if matches {
                    let (_, waiter) = self.responses.remove(correlation).expect("checked");
                    // If the caller gave up, the message is an ordinary event.
                    if waiter.send(message.clone()).is_ok() {
                        return;
                    }
                }
            }
        }
        let event = Event {
            at: Instant::now(),
            connection: self.attempt,
            kind,
        };
        // Never wait here: a full channel parks the event in the backlog, which pauses
        // reading (module comment). A dropped receiver means nobody listens; that is allowed.
        if !self.backlog.is_empty() {
            self.backlog.push_back(event);
            return;
        }
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(event)) => self.backlog.push_back(event),
        }
    }
}
