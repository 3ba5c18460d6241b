//! The MQTT client, shaped like Paho's async client.
//!
//! - [`state`]: the protocol state machine, no I/O: `handle_packet/command/tick(…, now)`
//!   return `Action`s.
//! - [`driver`]: the task that runs the state machine over a transport `Connector` (tokio TCP
//!   or turmoil), reconnecting with backoff; the `Client` handle and the `Event` stream.
//! - [`options`]: `ConnectOptions` (Paho's MqttConnectOptions), reconnect and resubscribe
//!   policies.
//! - [`persist`]: in-flight state in memory or in a checksummed log over the filesystem seam.
//! - [`backoff`]: exponential backoff with jitter from a seeded RNG.
//! - [`error`]: `ClientError` and the meanings of CONNACK return codes.
//!
//! Guarantees, and where each is tested (unit tests in `state.rs`; `tests/client_mosquitto.rs`
//! against a real mosquitto with faults injected into the client's socket;
//! `tests/client_sim.rs` in turmoil against the simqtt broker):
//! - unacknowledged QoS 1/2 publishes are resent with DUP, original ids, original order after
//!   a reconnect, and after a restart with `FilePersistence`; PUBREL flows resume;
//! - an incoming QoS 2 message reaches the application once: its id is persisted and held
//!   until PUBREL;
//! - no PINGRESP within the keepalive → `ConnectionLost{KeepaliveTimeout}` → reconnect after an
//!   exponential, jittered, seeded backoff;
//! - after a reconnect without a session, the client resubscribes (`ResubscribePolicy`);
//! - at most `inflight_window` QoS 1/2 publishes are unfinished; `publish` waits for room.
//! - 5.0: `publish_with` sends every publish property (message expiry, content type, payload
//!   format, response topic, correlation data, user properties in order, topic alias) and
//!   keeps them with the message for resends and restarts; `request` is request/response
//!   (§4.10) with a timeout (`state` unit tests, `tests/client_sim.rs`,
//!   `tests/client_v5_mosquitto.rs` against mosquitto_rr);
//! - 5.0 topic aliases: outbound within the broker's Topic Alias Maximum by the policy in
//!   `state::TopicAliases` (`outbound_topic_aliases`), inbound up to `topic_alias_maximum`,
//!   both forgotten with the connection, so resends carry the full topic; a bad inbound alias
//!   is a Protocol Error (DISCONNECT 0x94);
//! - a slow application never stalls the driver: a full event channel pauses reading the
//!   socket (TCP back-pressure) while PINGREQ, acknowledgements and requests keep flowing; no
//!   message the client read is dropped (`driver` module comment;
//!   `tests/client_sim.rs::a_slow_application_keeps_the_connection_alive_and_loses_nothing`).
//!
//! Events carry the connection attempt number and the (virtual, under turmoil) time, so a
//! trace built from them tells connections apart; `PublishSent` and `DeliveryComplete` carry
//! the token `publish` returned and the packet id.
//!
//! ```no_run
//! # async fn example() -> Result<(), simqtt::client::ClientError> {
//! use std::sync::Arc;
//! use simqtt::client::{Client, ConnectOptions, MemoryPersistence};
//! use simqtt::codec::QoS;
//! use simqtt::transport::tcp::TcpConnector;
//!
//! let options = ConnectOptions::new("127.0.0.1:1883", "sensor-1");
//! let (client, mut events, _session_present) =
//!     Client::connect(options, Arc::new(TcpConnector), Box::new(MemoryPersistence::new())).await?;
//! client.subscribe(&[("cmd/#", QoS::AtLeastOnce)]).await?;
//! client.publish("sensors/1", "21.5", QoS::AtLeastOnce, false).await?.wait().await?;
//! while let Some(event) = events.recv().await {
//!     println!("{:?}", event.kind);
//! }
//! # Ok(()) }
//! ```

pub mod backoff;
pub mod driver;
pub mod error;
pub mod options;
pub mod persist;
pub mod state;

pub use driver::{Client, Event, OpToken};
pub use error::{reason_meaning, ClientError};
pub use options::{ConnectOptions, EnhancedAuth, ReconnectOptions, ResubscribePolicy, WillOptions};
pub use persist::{FilePersistence, MemoryPersistence, Persistence};
pub use state::{Completion, EventKind, Message, Token};
