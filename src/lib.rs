//! simqtt: an MQTT 3.1.1 and 5.0 codec, broker and client, a deterministic simulation that runs
//! them under faults, and checkers for MQTT's guarantees.
//!
//! Module map (each layer may use only the layers above it):
//!
//! - [`codec`]: the wire format. Packet model, incremental decode, encode, topic rules. Pure.
//! - [`transport`]: the only place that knows sockets. Listener/Connector traits over tokio TCP
//!   and turmoil, framed packet read/write, the per-connection fault layer.
//! - [`store`]: durable broker state behind a trait; in-memory and file-backed (over a small
//!   filesystem seam that also runs on turmoil's simulated disk).
//! - [`broker`]: session state machines (no I/O), router, retained messages, wills, keepalive,
//!   auth/ACL, limits, and the server loop over a `Listener`.
//! - [`scram`]: SCRAM-SHA-256 (RFC 5802/7677), both ends of MQTT 5.0 enhanced authentication's
//!   exchange as pure state machines; the broker and the client drive them.
//! - [`client`]: the client state machine (no I/O) and its driver: reconnect, resubscription,
//!   in-flight persistence, Paho-style events.
//! - [`history`]: the trace of observable events and the checkers that read it. Pure.
//! - [`scenario`]: the YAML scenario format, its validation, and the runner.
//! - [`sim`]: the turmoil world: hosts, seeded fault injection, crash and restart.
//! - [`certify`]: the scenario library against a real broker over TCP, graded by the spec, with reports.
//! - [`certify_client`]: a third-party client library (an adapter process speaking the driver
//!   protocol) in place of a scenario client, against simqtt's broker under the same faults.
//! - [`bench`]: load generator for any broker (throughput, latency, idle connections); real clocks.
//! - [`shrink`]: a failing run reduced to a minimal explicit scenario (a regression file).
//! - [`explore`]: randomised scenarios drawn from a grammar, run and judged, failures shrunk.
//! - [`timeline`]: what led to a failure, drawn from its trace (Mermaid, SVG, text) for reports.

pub mod bench;
pub mod broker;
pub mod certify;
pub mod certify_client;
pub mod client;
pub mod codec;
pub mod explore;
pub mod history;
pub mod scenario;
pub mod scram;
pub mod shrink;
pub mod sim;
pub mod store;
pub mod timeline;
pub mod transport;
