//! The driver protocol, version 1: the JSON lines an adapter reads (commands) and writes
//! (events). docs/client-certification.md is its specification; these types follow it field
//! for field. Unknown fields are ignored both ways (serde's default), so later versions can add
//! fields.

use serde::{Deserialize, Serialize};

/// The version this simqtt speaks; an adapter's `ready` line must name it.
pub const PROTOCOL_VERSION: u32 = 1;

/// One filter of a `subscribe` command or a `subscribed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterQos {
    pub filter: String,
    pub qos: u8,
}

/// A will, as the `connect` command carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Will {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
}

/// What simqtt writes to the adapter's stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Connect {
        server: String,
        client_id: String,
        /// `"3.1.1"` or `"5"`.
        version: String,
        clean_session: bool,
        keepalive: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_expiry: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        will: Option<Will>,
        automatic_reconnect: bool,
        resubscribe: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        persistence_dir: Option<String>,
    },
    Subscribe {
        id: u64,
        filters: Vec<FilterQos>,
    },
    Unsubscribe {
        id: u64,
        filters: Vec<String>,
    },
    Publish {
        id: u64,
        topic: String,
        qos: u8,
        retain: bool,
        payload: String,
    },
    Disconnect,
    Exit,
}

/// What the adapter writes to its stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Ready {
        protocol: u32,
        #[serde(default)]
        client: String,
    },
    ConnectComplete {
        #[serde(default)]
        reconnect: bool,
        /// Absent when the library does not tell (Paho C's automatic reconnect).
        #[serde(default)]
        session_present: Option<bool>,
    },
    ConnectionLost {
        #[serde(default)]
        cause: String,
    },
    Message {
        topic: String,
        qos: u8,
        #[serde(default)]
        retain: bool,
        #[serde(default)]
        dup: bool,
        payload: String,
    },
    DeliveryComplete {
        #[serde(default)]
        id: Option<u64>,
        #[serde(default)]
        packet_id: Option<u16>,
    },
    Subscribed {
        #[serde(default)]
        id: Option<u64>,
        filters: Vec<FilterQos>,
        granted: Vec<u8>,
    },
    Unsubscribed {
        id: u64,
    },
    Disconnected,
    Error {
        #[serde(default)]
        id: Option<u64>,
        message: String,
    },
}

impl Command {
    /// One line, newline included.
    pub fn line(&self) -> String {
        let mut text = serde_json::to_string(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

impl Event {
    /// One line as an adapter wrote it (without its newline).
    pub fn parse(line: &str) -> Result<Event, String> {
        serde_json::from_str(line.trim()).map_err(|e| format!("{e} in {:?}", line.trim()))
    }

    pub fn line(&self) -> String {
        let mut text = serde_json::to_string(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_the_documentation_writes_them() {
        // The examples of docs/client-certification.md, verbatim.
        let ready = Event::parse(r#"{"event":"ready","protocol":1,"client":"simqtt 0.1.0"}"#);
        assert_eq!(
            ready,
            Ok(Event::Ready {
                protocol: 1,
                client: "simqtt 0.1.0".into()
            })
        );
        let resub = Event::parse(
            r#"{"event":"subscribed","filters":[{"filter":"c/1","qos":1}],"granted":[1]}"#,
        )
        .unwrap();
        assert_eq!(
            resub,
            Event::Subscribed {
                id: None,
                filters: vec![FilterQos {
                    filter: "c/1".into(),
                    qos: 1
                }],
                granted: vec![1]
            }
        );
        let publish = Command::Publish {
            id: 2,
            topic: "c/2".into(),
            qos: 1,
            retain: false,
            payload: "app-1".into(),
        };
        assert_eq!(
            publish.line(),
            "{\"cmd\":\"publish\",\"id\":2,\"topic\":\"c/2\",\"qos\":1,\"retain\":false,\"payload\":\"app-1\"}\n"
        );
        assert_eq!(Command::Disconnect.line(), "{\"cmd\":\"disconnect\"}\n");
        // Unknown fields are ignored (later versions may add some).
        assert!(Event::parse(r#"{"event":"disconnected","extra":3}"#).is_ok());
        assert!(Event::parse(r#"{"event":"nonsense"}"#).is_err());
    }
}
