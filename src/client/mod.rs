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
pub use options::{ConnectOptions, ReconnectOptions, ResubscribePolicy, WillOptions};
pub use persist::{FilePersistence, MemoryPersistence, Persistence};
pub use state::{Completion, EventKind, Message, Token};
