//! The MQTT broker.
//!
//! - [`core`]: the state machine of every session and connection (no I/O, no clock):
//!   CONNECT/CONNACK, takeover, keepalive, QoS 0/1/2 flows, the in-flight window and session
//!   queues, subscriptions, retained messages, wills, `$SYS`, limits. Its ops go to a `Store`.
//! - [`router`]: the topic trie that finds the subscriptions matching a topic.
//! - `aliases`: 5.0 topic aliases of one connection, both ways, and the outbound policy.
//! - `shared`: shared subscription groups (`$share/{ShareName}/{filter}`) and how one member
//!   is picked per message.
//! - [`server`]: the I/O driver over a transport `Listener`: `run`, `Broker`, `BrokerHandle`.
//! - [`config`]: `BrokerConfig`, every option with its default (`docs/broker.toml`).
//! - [`listener`]: the `[[listener]]` tables (TLS, WebSocket ports beside `listen`).
//! - [`auth`]: password and ACL checks.
//! - [`stats`]: the counters behind `$SYS/broker/...`.

mod aliases;
pub mod auth;
pub mod config;
mod connection;
pub mod core;
#[cfg(test)]
mod core_api_tests;
pub mod listener;
pub mod router;
pub mod server;
mod shared;
pub mod stats;

pub use config::{
    BrokerConfig, ConfigError, PlantedBug, SessionTakeover, SharedStrategy, SyncMode, WallClock,
};
pub use core::{Action, ClientInfo, ConnId, Core, EndCause};
pub use listener::{ListenerConfig, ListenerProtocol};
pub use server::{run, Broker, BrokerHandle};
pub use stats::Stats;
