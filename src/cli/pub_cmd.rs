//! `simqtt pub`: publish like mosquitto_pub (same common flags, messages and exit codes).
//! Also home of the connection flags `simqtt sub` shares.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::ArgAction;
use simqtt::client::{
    Client, ClientError, Completion, ConnectOptions, MemoryPersistence, OpToken, ReconnectOptions,
    ResubscribePolicy, WillOptions,
};
use simqtt::codec::{ProtocolVersion, QoS, TopicName};
use simqtt::transport::tls::{ClientTls, TlsVersion};
use simqtt::transport::url::{host_port, BrokerUrl, Endpoint, Scheme};

use super::props::CliProperties;
use tokio::io::AsyncBufReadExt;

/// Connection flags common to `pub` and `sub`, spelled as mosquitto's clients spell them.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Broker host (-h as in mosquitto; help is --help only).
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    pub host: String,
    /// Broker port [default: 1883, or 8883 with TLS].
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Client id. Defaults to simqtt_pub_/simqtt_sub_ and the process id.
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// User name.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password (needs -u).
    #[arg(short = 'P', long = "pw", requires = "username")]
    pub password: Option<String>,
    /// 5.0 enhanced authentication: SCRAM-SHA-256 (the only method offered) proves -u/-P
    /// through an AUTH exchange instead of sending the password; needs -V 5, -u and -P.
    #[arg(long = "auth-method", value_name = "METHOD", requires = "password")]
    pub auth_method: Option<String>,
    /// Keep alive in seconds; 0 turns it off (legal MQTT; mosquitto's clients require 5-65535).
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC: host, port, user, password and topic in
    /// one (overrides -h, -p, -u, -P). mqtts:// is TLS (port 8883), ws:// and wss:// are
    /// WebSocket (ports 80 and 443, path /mqtt or --ws-path).
    #[arg(short = 'L', long = "url", value_name = "URL")]
    pub url: Option<String>,
    /// CA certificates (PEM) the broker's certificate must be signed by; turns TLS on.
    #[arg(long = "cafile", value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Directory of CA certificates (PEM files); turns TLS on.
    #[arg(long = "capath", value_name = "DIR")]
    pub capath: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that require one; needs --key.
    #[arg(long = "cert", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Do not check that the broker's certificate names the host connected to (the CA
    /// still must have signed it).
    #[arg(long = "insecure")]
    pub insecure: bool,
    /// Lowest TLS version to accept: tlsv1.2 (default: 1.2 or 1.3) or tlsv1.3.
    #[arg(long = "tls-version", value_name = "VERSION", value_parser = TlsVersion::parse)]
    pub tls_version: Option<TlsVersion>,
    /// WebSocket path for ws:// and wss:// URLs [default: /mqtt].
    #[arg(long = "ws-path", value_name = "PATH")]
    pub ws_path: Option<String>,
    /// The scheme of -L, once applied.
    #[arg(skip)]
    pub scheme: Option<Scheme>,
    /// Disable clean session (persistent session; needs -i).
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// MQTT version: 311 (mqttv311) or 5 (mqttv5).
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// 5.0 session expiry interval in seconds (-1: never); needs -V 5. Defaults to -1 with
    /// -c, else 0.
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
    /// Print every packet sent and received on stdout, in mosquitto's format
    /// ("Client ID sending CONNECT", …).
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Do not print error messages.
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// An MQTT 5.0 property, as mosquitto's -D: COMMAND IDENTIFIER VALUE (user-property
    /// takes NAME VALUE), e.g. `-D publish user-property k v`, `-D publish
    /// message-expiry-interval 30`, `-D connect session-expiry-interval 60`. Commands:
    /// connect, publish (pub only), will. Needs -V 5; may be repeated.
    #[arg(short = 'D', long = "property", num_args = 3..=4,
          value_names = ["COMMAND", "IDENTIFIER", "VALUE"])]
    pub properties: Vec<String>,
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
        if !quiet && !self.message.is_empty() {
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

/// The parts of an `-L` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    pub username: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub topic: String,
}

/// Parses `SCHEME://[user[:password]@]host[:port]/topic` as mosquitto's clients do (no
/// percent-decoding), for the schemes mqtt, mqtts, ws and wss.
pub fn parse_url(url: &str) -> Result<Url, Failure> {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    if !matches!(
        url[..scheme_end].to_ascii_lowercase().as_str(),
        "mqtt://" | "mqtts://" | "ws://" | "wss://"
    ) {
        return Err(Failure::new("Error: Unsupported URL scheme."));
    }
    let parsed = BrokerUrl::parse(url).map_err(|e| {
        if e.contains("invalid port") {
            let port = url[scheme_end..]
                .split('/')
                .next()
                .and_then(|a| a.rsplit_once(':'))
                .map(|(_, p)| p)
                .unwrap_or("");
            Failure::new(format!("Error: Invalid port given: {port}"))
        } else {
            Failure::new(format!("Error: {e}"))
        }
    })?;
    let Some(topic) = parsed.rest else {
        return Err(Failure::new(
            "Error: Invalid URL for -L argument specified - topic missing.",
        ));
    };
    Ok(Url {
        scheme: parsed.scheme,
        username: parsed.username,
        password: parsed.password,
        host: parsed.host,
        port: parsed.port,
        topic,
    })
}

impl ConnArgs {
    /// Applies `-L`: host, port, user and password from the URL; returns its topic.
    pub fn apply_url(&mut self) -> Result<Option<String>, Failure> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let url = parse_url(url)?;
        self.scheme = Some(url.scheme);
        self.host = url.host;
        self.port = Some(url.port);
        if url.username.is_some() {
            self.username = url.username;
            self.password = url.password;
        }
        Ok(Some(url.topic))
    }

    /// The transport: the scheme of -L, else TLS when --cafile or --capath is given (as
    /// mosquitto's clients), else plain TCP.
    pub fn scheme(&self) -> Scheme {
        match self.scheme {
            Some(scheme) => scheme,
            None if self.cafile.is_some() || self.capath.is_some() => Scheme::Mqtts,
            None => Scheme::Mqtt,
        }
    }

    fn tls(&self) -> ClientTls {
        ClientTls {
            cafile: self.cafile.clone(),
            capath: self.capath.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            insecure: self.insecure,
            version: self.tls_version.unwrap_or_default(),
        }
    }

    /// The connector: TCP, TLS and/or WebSocket as the scheme says, under the packet log of
    /// `-d` (which reads the MQTT bytes, above TLS and WebSocket). Reads the TLS files now,
    /// so a missing or bad one is an error before anything connects.
    pub fn connector(&self) -> Result<Arc<dyn simqtt::transport::Connector>, Failure> {
        let scheme = self.scheme();
        let tls_flags = [
            (self.cert.is_some(), "--cert"),
            (self.key.is_some(), "--key"),
            (self.insecure, "--insecure"),
            (self.tls_version.is_some(), "--tls-version"),
            (self.cafile.is_some(), "--cafile"),
            (self.capath.is_some(), "--capath"),
        ];
        if !scheme.tls() {
            if let Some((_, flag)) = tls_flags.iter().find(|(given, _)| *given) {
                return Err(Failure::new(format!(
                    "Error: {flag} is a TLS option, and -L {scheme}:// is not TLS; use mqtts:// or wss://"
                )));
            }
        }
        if self.ws_path.is_some() && !scheme.websocket() {
            return Err(Failure::new(
                "Error: --ws-path needs a ws:// or wss:// URL (-L).",
            ));
        }
        let endpoint = Endpoint {
            scheme,
            host: self.host.clone(),
            port: self.port(),
            ws_path: self
                .ws_path
                .clone()
                .unwrap_or_else(|| simqtt::transport::ws::DEFAULT_PATH.to_string()),
            tls: match scheme.tls() {
                true => Some(
                    self.tls()
                        .config()
                        .map_err(|e| Failure::new(format!("Error: {e}")))?,
                ),
                false => None,
            },
            tls_options: self.tls(),
            max_packet_size: simqtt::codec::DEFAULT_MAX_PACKET_SIZE as usize,
        };
        let connector = endpoint
            .connector()
            .map_err(|e| Failure::new(format!("Error: {e}")))?;
        Ok(if self.debug {
            Arc::new(super::packet_log::LoggingConnector::new(
                self.version,
                connector,
            ))
        } else {
            connector
        })
    }

    /// -p, else the scheme's port.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.scheme().default_port())
    }

    /// The properties of -D (checked: known names, values in range, -V 5).
    pub fn properties(&self) -> Result<CliProperties, Failure> {
        let parsed = super::props::parse_words(&self.properties).map_err(Failure::new)?;
        if !parsed.is_empty() && self.version != ProtocolVersion::V5 {
            return Err(Failure::new(
                "Error: -D (properties) is MQTT 5.0 only; add -V 5.",
            ));
        }
        Ok(parsed)
    }

    /// The options for this command; `kind` is "pub" or "sub" (for the default id).
    pub fn options(&self, kind: &str) -> Result<ConnectOptions, Failure> {
        let properties = self.properties()?;
        if self.session_expiry.is_some() && self.version != ProtocolVersion::V5 {
            // mosquitto's clients ignore -x under 3.1.1; a setting that silently does nothing
            // is refused here instead.
            return Err(Failure::new(
                "Error: -x (session expiry interval) is MQTT 5.0 only; add -V 5.",
            ));
        }
        if self.persistent && self.id.is_none() {
            return Err(Failure::new(
                "Error: You must provide a client id if you are using the -c option.",
            ));
        }
        let enhanced_auth =
            match self.auth_method.as_deref() {
                None => None,
                Some(method) if method != simqtt::scram::METHOD => {
                    return Err(Failure::new(format!(
                        "Error: authentication method {method:?} is not offered (only {})",
                        simqtt::scram::METHOD
                    )))
                }
                Some(_) if self.version != ProtocolVersion::V5 => return Err(Failure::new(
                    "Error: --auth-method (enhanced authentication) is MQTT 5.0 only; add -V 5.",
                )),
                Some(_) => Some(simqtt::client::EnhancedAuth {
                    // Client nonces must not be guessable outside the simulator.
                    nonce_seed: rand::random(),
                }),
            };
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("simqtt_{kind}_{}", std::process::id()));
        let server = host_port(&self.host, self.port());
        let mut options = ConnectOptions::new(server, id);
        options.protocol = self.version;
        options.clean_session = !self.persistent;
        options.keep_alive_secs = self.keepalive;
        options.username = self.username.clone();
        options.password = self.password.clone().map(Bytes::from);
        options.enhanced_auth = enhanced_auth;
        options.connect_timeout = Duration::from_secs(10);
        options.resubscribe = ResubscribePolicy::Always;
        let mut connect = properties.connect;
        if connect.session_expiry_interval_secs.is_some() && self.session_expiry.is_some() {
            return Err(Failure::new(
                "Error: give the session expiry interval once (-x or -D connect session-expiry-interval).",
            ));
        }
        options.topic_alias_maximum = connect.topic_alias_maximum.take().unwrap_or(0);
        options.session_expiry_interval_secs = match self.session_expiry {
            None => connect.session_expiry_interval_secs.take(),
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
        options.connect_properties = connect;
        if properties.will != Default::default() && self.will_topic.is_none() {
            return Err(Failure::new("Error: -D will needs --will-topic."));
        }
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
                properties: properties.will,
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
    /// Topic to publish to (or the topic of -L).
    #[arg(short = 't', long = "topic", required_unless_present = "url")]
    pub topic: Option<String>,
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
    /// With -m, -f, -s or -n: publish the message N times, each after the last completed.
    #[arg(long = "repeat", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Seconds to wait between repeats (fractions allowed).
    #[arg(long = "repeat-delay", value_name = "SECONDS", default_value_t = 0.0, value_parser = parse_delay)]
    pub repeat_delay: f64,
    /// Request/response, as mosquitto_rr -e: subscribe to this response topic, publish the
    /// message with it as Response Topic and with Correlation Data (-D publish
    /// correlation-data, or one made up), print the first response carrying the same
    /// correlation data, and exit. Needs -V 5 and one message (-m, -f, -n or -s).
    #[arg(short = 'e', long = "response-topic", value_name = "TOPIC")]
    pub response_topic: Option<String>,
    /// With -e: give up waiting for the response after this many seconds (exit code 27,
    /// "Timed out").
    #[arg(
        short = 'W',
        long = "timeout",
        value_name = "SECONDS",
        requires = "response_topic"
    )]
    pub timeout_secs: Option<u64>,
    /// With -e: print the response as "topic payload".
    #[arg(short = 'v', long = "verbose", requires = "response_topic")]
    pub verbose: bool,
}

fn parse_delay(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a delay in seconds from 0 to 86400")),
    }
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

async fn publish(mut args: Args) -> Result<(), Failure> {
    let url_topic = args.conn.apply_url()?;
    let topic = url_topic.or(args.topic.clone()).unwrap_or_default();
    if TopicName::new(&topic).is_err() || topic.is_empty() {
        return Err(Failure::new(format!(
            "Error: Invalid publish topic '{topic}', does it contain '+' or '#'?"
        )));
    }
    let properties = args.conn.properties()?.publish;
    if args.response_topic.is_some() {
        if args.conn.version != ProtocolVersion::V5 {
            return Err(Failure::new(
                "Error: -e (request/response) is MQTT 5.0 only; add -V 5.",
            ));
        }
        if args.stdin_line || args.repeat > 1 {
            return Err(Failure::new(
                "Error: -e sends one request: use -m, -f, -n or -s, without --repeat.",
            ));
        }
        if properties.response_topic.is_some() {
            return Err(Failure::new(
                "Error: give the response topic once (-e or -D publish response-topic).",
            ));
        }
    }
    let mut options = args.conn.options("pub")?;
    options.inflight_window = args.max_inflight.max(1);
    let connector = args.conn.connector()?;
    let (client, mut events, _) =
        Client::connect(options, connector, Box::new(MemoryPersistence::new()))
            .await
            .map_err(connect_failure)?;
    // Keep draining so the client never waits on a full event channel.
    tokio::spawn(async move { while events.recv().await.is_some() {} });

    let publish_failure = |e: ClientError| Failure::new(format!("Error: {e}"));
    // A message the broker refused (5.0 reason code >= 0x80 in PUBACK or PUBREC, such as
    // 0x87 Not authorized) is reported by number, like mosquitto_pub's warning; the others
    // are still sent, and the exit status is 1.
    let mut outcome = Outcome {
        quiet: args.conn.quiet,
        ..Outcome::default()
    };
    let payload: Option<Bytes> = if let Some(m) = &args.message {
        Some(Bytes::from(m.clone()))
    } else if let Some(path) = &args.file {
        let data = std::fs::read(path).map_err(|e| {
            Failure::new(format!(
                "Error: Unable to read file \"{}\": {e}.",
                path.display()
            ))
        })?;
        Some(Bytes::from(data))
    } else if args.null_message {
        Some(Bytes::new())
    } else if args.stdin_file {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| Failure::new(format!("Error: reading stdin: {e}")))?;
        Some(Bytes::from(data))
    } else {
        None
    };
    if let (Some(response_topic), Some(payload)) = (&args.response_topic, &payload) {
        let wait = args.timeout_secs.map_or(Duration::MAX, Duration::from_secs);
        let result = client
            .request(
                &topic,
                payload.clone(),
                args.qos,
                response_topic,
                properties,
                wait,
            )
            .await;
        let response = match result {
            Ok(response) => response,
            Err(ClientError::ResponseTimeout(_)) => {
                client.disconnect().await;
                return Err(Failure {
                    message: "Timed out".into(),
                    code: 27,
                });
            }
            Err(e) => {
                client.disconnect().await;
                return Err(Failure::new(format!("Error: {e}")));
            }
        };
        let mut line = Vec::new();
        if args.verbose {
            line.extend_from_slice(response.topic.as_str().as_bytes());
            line.push(b' ');
        }
        line.extend_from_slice(&response.payload);
        line.push(b'\n');
        use std::io::Write;
        let _ = std::io::stdout().write_all(&line);
        client.disconnect().await;
        return Ok(());
    }
    if let Some(payload) = payload {
        for i in 0..args.repeat {
            if i > 0 && args.repeat_delay > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(args.repeat_delay)).await;
            }
            let token = client
                .publish_with(
                    &topic,
                    payload.clone(),
                    args.qos,
                    args.retain,
                    properties.clone(),
                )
                .await
                .map_err(publish_failure)?;
            outcome.record(token.wait().await)?;
        }
    }
    if args.stdin_line {
        // One message per line; the in-flight window paces reading (back-pressure).
        let mut tokens: std::collections::VecDeque<OpToken> = Default::default();
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = lines.next_line().await;
            let Some(line) = line.transpose() else { break };
            let line = line.map_err(|e| Failure::new(format!("Error: reading stdin: {e}")))?;
            let token = client
                .publish_with(&topic, line, args.qos, args.retain, properties.clone())
                .await
                .map_err(publish_failure)?;
            tokens.push_back(token);
            // Completed tokens need not be kept: wait for the ones at the front that are done.
            if tokens.len() > 4 * usize::from(args.max_inflight.max(1)) {
                if let Some(done) = tokens.pop_front() {
                    outcome.record(done.wait().await)?;
                }
            }
        }
        for token in tokens {
            outcome.record(token.wait().await)?;
        }
    }
    client.disconnect().await;
    if outcome.refused > 0 {
        return Err(Failure {
            message: String::new(),
            code: 1,
        });
    }
    Ok(())
}

/// Counts the messages sent and the ones the broker refused.
#[derive(Default)]
struct Outcome {
    quiet: bool,
    sent: u32,
    refused: u32,
}

impl Outcome {
    fn record(&mut self, result: Result<Completion, ClientError>) -> Result<(), Failure> {
        self.sent += 1;
        match result {
            Ok(_) => Ok(()),
            Err(ClientError::Rejected(code)) => {
                self.refused += 1;
                if self.quiet {
                    return Ok(());
                }
                // mosquitto_pub's words ("Publish 1 failed: Not authorized."), without the
                // "(reason code 0x87)" reason_meaning adds.
                let meaning = simqtt::client::reason_meaning(code, ProtocolVersion::V5);
                let meaning = meaning
                    .split(" (reason code")
                    .next()
                    .unwrap_or(&meaning)
                    .to_string();
                eprintln!("Error: Publish {} failed: {meaning}.", self.sent);
                Ok(())
            }
            Err(e) => Err(Failure::new(format!("Error: {e}"))),
        }
    }
}
