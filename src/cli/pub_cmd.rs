//! `simqtt pub`: publish like mosquitto_pub (same common flags, messages and exit codes).
//! Also home of the connection flags `simqtt sub` shares.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::ArgAction;
use simqtt::client::{
    Client, ClientError, ConnectOptions, MemoryPersistence, OpToken, ReconnectOptions,
    ResubscribePolicy, WillOptions,
};
use simqtt::codec::{ProtocolVersion, QoS, TopicName};
use simqtt::transport::tcp::TcpConnector;
use tokio::io::AsyncBufReadExt;

/// Connection flags common to `pub` and `sub`, spelled as mosquitto's clients spell them.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Broker host (-h as in mosquitto; help is --help only).
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    pub host: String,
    /// Broker port.
    #[arg(short = 'p', long = "port", default_value_t = 1883)]
    pub port: u16,
    /// Client id. Defaults to simqtt_pub_/simqtt_sub_ and the process id.
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// User name.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password (needs -u).
    #[arg(short = 'P', long = "pw", requires = "username")]
    pub password: Option<String>,
    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// Disable clean session (persistent session; needs -i).
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// MQTT version: 311 (mqttv311) or 5 (mqttv5).
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// 5.0 session expiry interval in seconds (-1: never). Defaults to -1 with -c, else 0.
    #[arg(short = 'x', long = "session-expiry", allow_negative_numbers = true)]
    pub session_expiry: Option<i64>,
    /// Topic of the will message.
    #[arg(long = "will-topic")]
    pub will_topic: Option<String>,
    /// Payload of the will message (empty when not given).
    #[arg(long = "will-payload", requires = "will_topic")]
    pub will_payload: Option<String>,
    #[arg(long = "will-qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2), requires = "will_topic")]
    pub will_qos: u8,
    #[arg(long = "will-retain", requires = "will_topic")]
    pub will_retain: bool,
    /// Shortest delay before reconnecting after a lost connection, in milliseconds.
    #[arg(long = "reconnect-min-ms", default_value_t = 250)]
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnect attempts, in milliseconds.
    #[arg(long = "reconnect-max-ms", default_value_t = 10_000)]
    pub reconnect_max_ms: u64,
    /// Print connection events to stderr.
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Do not print error messages.
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "311" | "mqttv311" | "4" => Ok(ProtocolVersion::V311),
        "5" | "mqttv5" | "50" => Ok(ProtocolVersion::V5),
        other => Err(format!("unsupported MQTT version {other:?} (use 311 or 5)")),
    }
}

pub fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS must be 0, 1 or 2, not {s:?}"))
}

/// A failure the user sees: the message and the exit code mosquitto would use.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    pub fn exit(self, quiet: bool) -> ExitCode {
        if !quiet {
            eprintln!("{}", self.message);
        }
        ExitCode::from(self.code)
    }
}

/// What mosquitto's clients print for a connect failure, and their exit code: the CONNACK
/// return code (or 5.0 reason code) when refused, 1 otherwise.
pub fn connect_failure(error: ClientError) -> Failure {
    match &error {
        ClientError::Refused { code, protocol } => Failure {
            message: format!(
                "Connection error: {}",
                simqtt::client::reason_meaning(*code, *protocol)
            ),
            code: match protocol {
                ProtocolVersion::V311 => code.to_v311_connack().unwrap_or(1),
                ProtocolVersion::V5 => code.as_u8(),
            },
        },
        ClientError::Unreachable { message, .. } => Failure::new(format!("Error: {message}")),
        other => Failure::new(format!("Error: {other}")),
    }
}

impl ConnArgs {
    /// The options for this command; `kind` is "pub" or "sub" (for the default id).
    pub fn options(&self, kind: &str) -> Result<ConnectOptions, Failure> {
        if self.persistent && self.id.is_none() {
            return Err(Failure::new(
                "Error: You must provide a client id if you are using the -c option.",
            ));
        }
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("simqtt_{kind}_{}", std::process::id()));
        let server = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut options = ConnectOptions::new(server, id);
        options.protocol = self.version;
        options.clean_session = !self.persistent;
        options.keep_alive_secs = self.keepalive;
        options.username = self.username.clone();
        options.password = self.password.clone().map(Bytes::from);
        options.connect_timeout = Duration::from_secs(10);
        options.resubscribe = ResubscribePolicy::Always;
        options.session_expiry_interval_secs = match self.session_expiry {
            None => None,
            Some(-1) => Some(u32::MAX),
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                Failure::new(format!(
                    "Error: session expiry {n} out of range (-1 or 0..4294967295)"
                ))
            })?),
        };
        options.reconnect = Some(ReconnectOptions {
            min_delay: Duration::from_millis(self.reconnect_min_ms.max(1)),
            max_delay: Duration::from_millis(self.reconnect_max_ms.max(self.reconnect_min_ms)),
            // Outside the simulator, spreading clients apart is what matters, not replay.
            seed: u64::from(std::process::id()),
            max_attempts: None,
        });
        if let Some(topic) = &self.will_topic {
            let topic = TopicName::new(topic)
                .ok()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Failure::new(format!("Error: Invalid will topic '{topic}'")))?;
            options.will = Some(WillOptions {
                topic,
                payload: Bytes::from(self.will_payload.clone().unwrap_or_default()),
                qos: QoS::from_u8(self.will_qos).unwrap_or_default(),
                retain: self.will_retain,
                properties: Default::default(),
            });
        }
        Ok(options)
    }
}

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
#[command(group(clap::ArgGroup::new("message_source").required(true).args(["message", "file", "stdin_line", "null_message", "stdin_file"])))]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Topic to publish to.
    #[arg(short = 't', long = "topic", required = true)]
    pub topic: String,
    /// Message payload.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file")]
    pub file: Option<std::path::PathBuf>,
    /// Read stdin, sending one message per line.
    #[arg(short = 'l', long = "stdin-line")]
    pub stdin_line: bool,
    /// Send a null (zero length) message.
    #[arg(short = 'n', long = "null-message")]
    pub null_message: bool,
    /// Read stdin, sending all of it as one message.
    #[arg(short = 's', long = "stdin-file")]
    pub stdin_file: bool,
    /// QoS of the messages.
    #[arg(short = 'q', long = "qos", default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    pub retain: bool,
    /// Most QoS 1/2 messages in flight at once.
    #[arg(short = 'M', long = "max-inflight", default_value_t = 20)]
    pub max_inflight: u16,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let quiet = args.conn.quiet;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(match runtime.block_on(publish(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(quiet),
    })
}

async fn publish(args: Args) -> Result<(), Failure> {
    let topic = args.topic.clone();
    if TopicName::new(&topic).is_err() || topic.is_empty() {
        return Err(Failure::new(format!(
            "Error: Invalid publish topic '{topic}', does it contain '+' or '#'?"
        )));
    }
    let mut options = args.conn.options("pub")?;
    options.inflight_window = args.max_inflight.max(1);
    let (client, mut events, _) = Client::connect(
        options,
        Arc::new(TcpConnector),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .map_err(connect_failure)?;
    if args.conn.debug {
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                eprintln!("{:?}", event.kind);
            }
        });
    } else {
        // Keep draining so the client never waits on a full event channel.
        tokio::spawn(async move { while events.recv().await.is_some() {} });
    }

    let publish_failure = |e: ClientError| Failure::new(format!("Error: {e}"));
    let mut tokens: Vec<OpToken> = Vec::new();
    let payloads: Vec<Bytes> = if let Some(m) = &args.message {
        vec![Bytes::from(m.clone())]
    } else if let Some(path) = &args.file {
        let data = std::fs::read(path).map_err(|e| {
            Failure::new(format!(
                "Error: Unable to read file \"{}\": {e}.",
                path.display()
            ))
        })?;
        vec![Bytes::from(data)]
    } else if args.null_message {
        vec![Bytes::new()]
    } else if args.stdin_file {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| Failure::new(format!("Error: reading stdin: {e}")))?;
        vec![Bytes::from(data)]
    } else {
        Vec::new()
    };
    for payload in payloads {
        let token = client
            .publish(&topic, payload, args.qos, args.retain)
            .await
            .map_err(publish_failure)?;
        tokens.push(token);
    }
    if args.stdin_line {
        // One message per line; the in-flight window paces reading (back-pressure).
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = lines.next_line().await;
            let Some(line) = line.transpose() else { break };
            let line = line.map_err(|e| Failure::new(format!("Error: reading stdin: {e}")))?;
            let token = client
                .publish(&topic, line, args.qos, args.retain)
                .await
                .map_err(publish_failure)?;
            tokens.push(token);
            // Completed tokens need not be kept: wait for the ones at the front that are done.
            if tokens.len() > 4 * usize::from(args.max_inflight.max(1)) {
                let done = tokens.remove(0);
                done.wait().await.map_err(publish_failure)?;
            }
        }
    }
    for token in tokens {
        token.wait().await.map_err(publish_failure)?;
    }
    client.disconnect().await;
    Ok(())
}
