//! What to measure: the shape, its knobs with per-shape defaults, and the parsing of the
//! command-line values that are not plain numbers (durations, broker URLs).

use std::time::Duration;

use serde::Serialize;

use crate::codec::{ProtocolVersion, QoS};
use crate::transport::url::{BrokerUrl, Endpoint};

/// Largest QoS 1/2 window a publisher may keep: ids are 16-bit and must stay unique while in
/// flight [MQTT-2.3.1-2], so leave room for the allocator to find a free one.
pub const INFLIGHT_MAX: u16 = 65_000;
/// Bytes of the latency payload taken by the send timestamp (ns since the run's epoch) and the
/// sequence number.
pub const LATENCY_PAYLOAD_MIN: usize = 16;
/// Largest payload the generator builds; its read buffers are sized from it.
pub const PAYLOAD_MAX: usize = 16 * 1024 * 1024;
/// Most publisher or subscriber connections in one throughput run (each has a task and
/// buffers; the connections shape is the one for many connections).
pub const CLIENTS_MAX: usize = 10_000;
/// Most idle connections the connections shape opens (the goal is 100,000).
pub const CONNECTIONS_MAX: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// N publishers, each on its own topic, to wildcard subscribers (default 1).
    FanIn,
    /// Publishers (default 1) on one topic to N subscribers (default 50).
    FanOut,
    /// One publisher at a fixed rate to one subscriber; latency from a timestamp in the payload.
    Latency,
    /// N idle connections opened and held.
    Connections,
    /// Publishers (default 1) on one topic to a group of N subscribers (default 10) of
    /// `$share/GROUP/TOPIC`: each message is owed to one member of the group, not to each.
    Shared,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::FanIn => "fan-in",
            Shape::FanOut => "fan-out",
            Shape::Latency => "latency",
            Shape::Connections => "connections",
            Shape::Shared => "shared",
        }
    }
}

/// The share name the shared shape's subscribers join (`$share/GROUP/TOPIC`).
pub const SHARE_GROUP: &str = "simqtt-bench";

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Broker {
        host: String,
        port: u16,
    },
    /// An in-process server that only reads (and acknowledges): measures the generator itself.
    Sink,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub shape: Shape,
    pub qos: QoS,
    pub protocol: ProtocolVersion,
    pub payload_bytes: usize,
    pub duration: Duration,
    pub publishers: usize,
    pub subscribers: usize,
    /// Total messages per second over all publishers; `None`: as fast as the broker takes them.
    pub rate_per_sec: Option<f64>,
    pub connections: usize,
    /// Unacknowledged QoS 1/2 messages each publisher keeps in flight at most.
    pub inflight: u16,
    /// How long after the run subscribers may still receive (and publishers await acks) before
    /// the rest counts as lost or still queued.
    pub drain: Duration,
    /// The broker's process id, for its CPU time and RSS from /proc.
    pub broker_pid: Option<u32>,
    /// TLS and/or WebSocket over each connection (`Endpoint::default()`: plain TCP).
    pub endpoint: Endpoint,
}

impl Config {
    /// The defaults of `shape` (those the table uses).
    pub fn new(target: Target, shape: Shape) -> Config {
        let (publishers, subscribers, rate_per_sec) = match shape {
            Shape::FanIn => (4, 1, None),
            Shape::FanOut => (1, 50, None),
            Shape::Latency => (1, 1, Some(2000.0)),
            Shape::Connections => (0, 0, None),
            Shape::Shared => (1, 10, None),
        };
        Config {
            target,
            shape,
            qos: QoS::AtMostOnce,
            protocol: ProtocolVersion::V311,
            payload_bytes: 64,
            duration: Duration::from_secs(10),
            publishers,
            subscribers,
            rate_per_sec,
            connections: 10_000,
            inflight: 100,
            drain: Duration::from_secs(5),
            broker_pid: None,
            endpoint: Endpoint::default(),
        }
    }

    /// The keep-alive every bench connection asks for: long enough that no connection needs a
    /// PINGREQ before the run ends (setup, window, drain, and a minute to spare; a connection
    /// takes up to a millisecond to set up), so idle subscribers and held connections stay
    /// silent. Not 0 ("no keep-alive"), which some brokers refuse (rumqttd: ZeroKeepAlive).
    pub fn keep_alive_secs(&self) -> u16 {
        let clients = match self.shape {
            Shape::Connections => self.connections,
            _ => self.publishers + self.subscribers,
        };
        let secs = self.duration.as_secs() + self.drain.as_secs() + 60 + clients as u64 / 1000;
        secs.clamp(60, u64::from(u16::MAX)) as u16
    }

    /// Deliveries the subscribers are owed for `sent` messages: one per message per subscriber,
    /// except in a shared subscription, where each message goes to one member of the group
    /// (MQTT 5.0 §4.8.2: a message matching a Shared Subscription is sent to only one of the
    /// Sessions attached to it), and against the sink, which counts what it reads.
    pub fn deliveries_owed(&self, sent: u64) -> u64 {
        if self.target == Target::Sink || self.shape == Shape::Shared {
            sent
        } else {
            sent * self.subscribers as u64
        }
    }

    /// Whether publishers stamp each payload with a timestamp and a sequence number
    /// (latency: for the latency; shared: to find a message delivered twice).
    pub fn stamps(&self) -> bool {
        matches!(self.shape, Shape::Latency | Shape::Shared)
    }

    /// Refuses combinations that cannot measure what the shape promises.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if self.payload_bytes > PAYLOAD_MAX {
            return Err(format!("--payload is at most {PAYLOAD_MAX} bytes"));
        }
        if self.inflight == 0 || self.inflight > INFLIGHT_MAX {
            return Err(format!("--inflight must be in 1..={INFLIGHT_MAX}"));
        }
        if let Some(rate) = self.rate_per_sec {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of messages per second".into());
            }
        }
        match self.shape {
            Shape::Connections => {
                if self.connections == 0 || self.connections > CONNECTIONS_MAX {
                    return Err(format!("--connections must be in 1..={CONNECTIONS_MAX}"));
                }
            }
            shape => {
                if self.publishers == 0 || self.publishers > CLIENTS_MAX {
                    return Err(format!("--publishers must be in 1..={CLIENTS_MAX}"));
                }
                if self.subscribers > CLIENTS_MAX {
                    return Err(format!("--subscribers is at most {CLIENTS_MAX}"));
                }
                if self.subscribers == 0 && self.target != Target::Sink {
                    return Err(format!("{} needs at least one subscriber", shape.name()));
                }
                if self.stamps() && self.payload_bytes < LATENCY_PAYLOAD_MIN {
                    return Err(format!(
                        "{} needs --payload >= {LATENCY_PAYLOAD_MIN} (timestamp and sequence \
                         number)",
                        shape.name()
                    ));
                }
                if shape == Shape::Latency && self.rate_per_sec.is_none() {
                    return Err("latency needs a fixed --rate".into());
                }
            }
        }
        if self.target == Target::Sink && self.shape != Shape::FanIn {
            return Err("--sink measures the generator's publishers: use it with fan-in".into());
        }
        Ok(())
    }
}

/// "10s", "500ms", "2m", "1.5s", "250us"; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `mqtt://HOST:PORT`, `tcp://HOST:PORT` or `HOST:PORT` (port 1883 when omitted), or
/// `mqtts://`, `ws://`, `wss://` (the transport is `Config::endpoint`'s; see
/// `transport::url`). IPv6 hosts go in brackets (`mqtt://[::1]:1883`).
pub fn parse_broker_url(text: &str) -> Result<Target, String> {
    let url = BrokerUrl::parse(text)?;
    if url.username.is_some() {
        return Err(format!("{text:?}: the bench sends no user name"));
    }
    if !url.scheme.websocket() && url.rest.as_deref().is_some_and(|r| !r.is_empty()) {
        return Err(format!("{text:?} is not mqtt://HOST:PORT"));
    }
    if url.port == 0 {
        return Err(format!("{text:?}: port must be 1..=65535"));
    }
    Ok(Target::Broker {
        host: url.host,
        port: url.port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn broker_urls() {
        let broker = |host: &str, port| {
            Ok(Target::Broker {
                host: host.into(),
                port,
            })
        };
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1884"),
            broker("127.0.0.1", 1884)
        );
        assert_eq!(
            parse_broker_url("tcp://localhost"),
            broker("localhost", 1883)
        );
        assert_eq!(parse_broker_url("localhost:9"), broker("localhost", 9));
        assert_eq!(parse_broker_url("mqtt://[::1]:1883/"), broker("::1", 1883));
        assert_eq!(parse_broker_url("mqtts://h"), broker("h", 8883));
        assert_eq!(parse_broker_url("wss://h/mqtt"), broker("h", 443));
        assert!(parse_broker_url("mqtts://h:8883/x").is_err());
        assert!(parse_broker_url("mqtt://h:0").is_err());
        assert!(parse_broker_url("mqtt://h:99999").is_err());
        assert!(parse_broker_url("mqtt://:1883").is_err());
        assert!(parse_broker_url("mqtt://user@h:1883").is_err());
    }

    #[test]
    fn shape_defaults_and_validation() {
        let broker = parse_broker_url("mqtt://127.0.0.1:1883").unwrap();
        let fan_out = Config::new(broker.clone(), Shape::FanOut);
        assert_eq!((fan_out.publishers, fan_out.subscribers), (1, 50));
        assert_eq!(fan_out.validate(), Ok(()));

        let mut latency = Config::new(broker.clone(), Shape::Latency);
        assert_eq!(latency.rate_per_sec, Some(2000.0));
        latency.payload_bytes = 8;
        assert!(latency.validate().unwrap_err().contains("--payload >= 16"));

        let mut fan_in = Config::new(broker.clone(), Shape::FanIn);
        fan_in.subscribers = 0;
        assert!(fan_in.validate().is_err());
        fan_in.subscribers = 1;
        fan_in.inflight = 0;
        assert!(fan_in.validate().is_err());

        let mut connections = Config::new(broker, Shape::Connections);
        assert_eq!(connections.validate(), Ok(()));
        connections.connections = 0;
        assert!(connections.validate().is_err());

        let mut sink = Config::new(Target::Sink, Shape::FanIn);
        sink.subscribers = 0;
        assert_eq!(sink.validate(), Ok(()));
        assert!(Config::new(Target::Sink, Shape::Latency)
            .validate()
            .is_err());
    }

    /// A shared group owes each message once, whatever its size; fan-out owes it to each
    /// subscriber; the sink counts what it reads.
    #[test]
    fn deliveries_owed_by_shape() {
        let broker = parse_broker_url("h").unwrap();
        let shared = Config::new(broker.clone(), Shape::Shared);
        assert_eq!((shared.publishers, shared.subscribers), (1, 10));
        assert_eq!(shared.validate(), Ok(()));
        assert_eq!(shared.deliveries_owed(1000), 1000);
        let mut fan_out = Config::new(broker.clone(), Shape::FanOut);
        fan_out.subscribers = 10;
        assert_eq!(fan_out.deliveries_owed(1000), 10_000);
        let fan_in = Config::new(broker.clone(), Shape::FanIn);
        assert_eq!(
            fan_in.deliveries_owed(1000),
            1000 * fan_in.subscribers as u64
        );
        let mut sink = Config::new(Target::Sink, Shape::FanIn);
        sink.subscribers = 0;
        assert_eq!(sink.deliveries_owed(1000), 1000);

        // Duplicates are found by the sequence number in the payload: it must fit.
        let mut small = Config::new(broker.clone(), Shape::Shared);
        small.payload_bytes = 15;
        assert!(small
            .validate()
            .unwrap_err()
            .contains("shared needs --payload >= 16"));
        let mut empty = Config::new(broker, Shape::Shared);
        empty.subscribers = 0;
        assert!(empty.validate().is_err());
    }

    #[test]
    fn keep_alive_outlasts_the_run() {
        let broker = parse_broker_url("h").unwrap();
        let mut config = Config::new(broker, Shape::Connections);
        // 10 s window + 5 s drain + 60 s spare + 10 s for 10,000 connections.
        assert_eq!(config.keep_alive_secs(), 85);
        config.duration = Duration::from_secs(1_000_000);
        assert_eq!(config.keep_alive_secs(), u16::MAX);
        config.duration = Duration::from_millis(1);
        config.drain = Duration::ZERO;
        config.connections = 1;
        assert_eq!(config.keep_alive_secs(), 60);
    }
}
