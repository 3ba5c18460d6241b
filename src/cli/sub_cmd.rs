//! `simqtt sub`: subscribe like mosquitto_sub. Reconnects by itself after a lost connection
//! (a kick, a broker restart) and subscribes again, so it keeps receiving.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use simqtt::client::{Client, ClientError, EventKind, MemoryPersistence, Message};
use simqtt::codec::{ProtocolVersion, PublishProperties, QoS, RetainHandling, TopicFilter};

use super::pub_cmd::{connect_failure, parse_qos, ConnArgs, Failure};

/// mosquitto_sub's exit code when -W expires (MOSQ_ERR_TIMEOUT).
const EXIT_TIMED_OUT: u8 = 27;

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Topic filter to subscribe to; may be repeated (-L adds its topic).
    #[arg(short = 't', long = "topic", required_unless_present = "url")]
    pub topics: Vec<String>,
    /// Unsubscribe from this filter after subscribing, on every connect (clears a persistent
    /// session's subscription); may be repeated.
    #[arg(short = 'U', long = "unsubscribe", value_name = "FILTER")]
    pub unsubscribe: Vec<String>,
    /// Topic to leave out of the output; may be repeated (a filter, as in mosquitto).
    #[arg(short = 'T', long = "filter-out")]
    pub filter_out: Vec<String>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Print "topic payload" instead of the payload alone.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    pub count: Option<u64>,
    /// Exit after this many seconds (exit code 27, "Timed out").
    #[arg(short = 'W', long = "timeout")]
    pub timeout_secs: Option<u64>,
    /// Do not print an end of line after each message.
    #[arg(short = 'N')]
    pub no_newline: bool,
    /// Do not print stale (retained) messages (5.0: asks the broker not to send them).
    #[arg(short = 'R')]
    pub no_retained: bool,
    /// Print only retained messages; exit at the first message that is not retained.
    #[arg(long = "retained-only", conflicts_with = "no_retained")]
    pub retained_only: bool,
    /// Clear each retained message received (publish an empty retained message to its topic;
    /// -T keeps topics out of it).
    #[arg(long = "remove-retained")]
    pub remove_retained: bool,
    /// Print each message in this format, as mosquitto_sub -F: %t topic, %p payload, %q QoS,
    /// %r retain, %m message id, %l length, %x/%X hex, %j/%J JSON, %I/%U/@… time, \n …
    #[arg(short = 'F', value_name = "FORMAT")]
    pub format: Option<String>,
    /// Indent the JSON of -F %j and %J.
    #[arg(long = "pretty")]
    pub pretty: bool,
    /// Exit once the subscriptions are acknowledged (mosquitto_sub -E).
    #[arg(short = 'E')]
    pub exit_after_subscribe: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let quiet = args.conn.quiet;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(match runtime.block_on(subscribe(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(quiet),
    })
}

async fn subscribe(mut args: Args) -> Result<(), Failure> {
    if let Some(format) = &args.format {
        super::format::check(format).map_err(Failure::new)?;
    }
    if let Some(topic) = args.conn.apply_url()? {
        args.topics.push(topic);
    }
    if args.conn.properties()?.publish != PublishProperties::default() {
        return Err(Failure::new(
            "Error: -D publish properties are for simqtt pub.",
        ));
    }
    let v5 = args.conn.version == ProtocolVersion::V5;
    let mut filters = Vec::new();
    for topic in &args.topics {
        let filter = TopicFilter::new(topic).map_err(|e| {
            Failure::new(format!("Error: Invalid subscription topic '{topic}': {e}"))
        })?;
        let mut options = simqtt::codec::SubscriptionOptions::qos(args.qos);
        if args.no_retained && v5 {
            options.retain_handling = RetainHandling::DoNotSend;
        }
        filters.push((filter, options));
    }
    for topic in &args.filter_out {
        TopicFilter::new(topic)
            .map_err(|e| Failure::new(format!("Error: Invalid filter topic '{topic}': {e}")))?;
    }
    for topic in &args.unsubscribe {
        TopicFilter::new(topic).map_err(|e| {
            Failure::new(format!("Error: Invalid unsubscribe topic '{topic}': {e}"))
        })?;
    }
    let deadline = args
        .timeout_secs
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let options = args.conn.options("sub")?;
    let connect = Client::connect(
        options,
        args.conn.connector()?,
        Box::new(MemoryPersistence::new()),
    );
    let (client, mut events, _) = match deadline {
        Some(at) => match tokio::time::timeout_at(at, connect).await {
            Ok(result) => result,
            Err(_) => return Err(timed_out()),
        },
        None => connect.await,
    }
    .map_err(connect_failure)?;
    // Subscribed now; later connections resubscribe by policy (ResubscribePolicy::Always, as
    // mosquitto_sub subscribes in its on_connect).
    let subscribe = client
        .start_subscribe(filters)
        .await
        .map_err(|e| Failure::new(format!("Error: {e}")))?;
    let subscribe_token = subscribe.token;
    drop(subscribe);
    unsubscribe(&client, &args.unsubscribe);

    let mut received = 0u64;
    // Removals of retained messages in flight: the command waits for them before it exits.
    let mut removals: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let stdout = std::io::stdout();
    let sleep_until = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    let finish = |client: Client, removals: Vec<tokio::task::JoinHandle<()>>| async move {
        for removal in removals {
            let _ = removal.await;
        }
        client.disconnect().await;
    };
    loop {
        let event = tokio::select! {
            biased;
            () = &mut sleep_until => {
                client.disconnect().await;
                return Err(timed_out());
            }
            event = events.recv() => event,
        };
        let Some(event) = event else {
            return Err(Failure::new("Error: client stopped"));
        };
        match event.kind {
            EventKind::MessageArrived(message) => {
                if args.retained_only && !message.retain {
                    finish(client, removals).await;
                    return Ok(());
                }
                if args.no_retained && message.retain {
                    continue;
                }
                if args
                    .filter_out
                    .iter()
                    .any(|f| simqtt::codec::matches(f, message.topic.as_str()))
                {
                    continue;
                }
                if args.remove_retained && message.retain {
                    let client = client.clone();
                    let topic = message.topic.to_string();
                    removals.push(tokio::spawn(async move {
                        if let Ok(token) = client
                            .publish(&topic, Bytes::new(), QoS::AtLeastOnce, true)
                            .await
                        {
                            let _ = token.wait().await;
                        }
                    }));
                }
                let (line, errors) = render(&args, &message);
                if !args.conn.quiet {
                    for error in errors {
                        eprintln!("{error}");
                    }
                }
                let mut out = stdout.lock();
                // A closed stdout (e.g. `| head`) ends the subscriber quietly.
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    drop(out);
                    client.disconnect().await;
                    return Ok(());
                }
                drop(out);
                received += 1;
                if args.count.is_some_and(|c| received >= c) {
                    finish(client, removals).await;
                    return Ok(());
                }
            }
            EventKind::SubscribeComplete {
                token,
                packet_id,
                granted,
                ..
            } => {
                if args.conn.debug && !args.conn.quiet {
                    let codes: Vec<String> =
                        granted.iter().map(|g| g.as_u8().to_string()).collect();
                    println!(
                        "Subscribed (mid: {}): {}",
                        packet_id.get(),
                        codes.join(", ")
                    );
                }
                if token == subscribe_token {
                    if granted.iter().all(|g| g.is_error()) {
                        client.disconnect().await;
                        return Err(Failure::new("All subscription requests were denied."));
                    }
                    if granted.iter().any(|g| g.is_error()) && !args.conn.quiet {
                        eprintln!("Warning: Subscription to some topics denied.");
                    }
                    if args.exit_after_subscribe {
                        finish(client, removals).await;
                        return Ok(());
                    }
                }
            }
            EventKind::ConnectComplete {
                reconnect: true, ..
            } => unsubscribe(&client, &args.unsubscribe),
            EventKind::Stopped { cause } => {
                return Err(Failure::new(format!(
                    "Error: {}",
                    cause.unwrap_or(ClientError::Stopped)
                )));
            }
            _ => {}
        }
    }
}

/// `-U`: one UNSUBSCRIBE per filter, sent after the SUBSCRIBE without waiting for it, as
/// mosquitto_sub does in its on_connect.
fn unsubscribe(client: &Client, filters: &[String]) {
    for filter in filters {
        let client = client.clone();
        let filter = filter.clone();
        tokio::spawn(async move {
            let _ = client.unsubscribe(&[&filter]).await;
        });
    }
}

/// One message as the flags say: `-F FORMAT`, else `-v` ("topic payload") or the payload,
/// each with an end of line unless `-N`. As mosquitto_sub: an empty payload prints nothing
/// without -v, and "topic (null)" with it (nothing at all with -N).
fn render(args: &Args, message: &Message) -> (Vec<u8>, Vec<String>) {
    if let Some(format) = &args.format {
        let properties = (args.conn.version == ProtocolVersion::V5
            && message.properties != PublishProperties::default())
        .then_some(&message.properties);
        let fields = super::format::Fields {
            topic: message.topic.as_str(),
            payload: &message.payload,
            qos: message.qos.as_u8(),
            retain: message.retain,
            mid: message.packet_id.map_or(0, |id| id.get()),
            properties,
        };
        return super::format::render(
            format,
            &fields,
            &super::format::Clock::now(),
            args.pretty,
            !args.no_newline,
        );
    }
    let mut line = Vec::with_capacity(message.topic.len() + message.payload.len() + 2);
    if message.payload.is_empty() {
        if args.verbose && !args.no_newline {
            line.extend_from_slice(message.topic.as_str().as_bytes());
            line.extend_from_slice(b" (null)\n");
        }
        return (line, Vec::new());
    }
    if args.verbose {
        line.extend_from_slice(message.topic.as_str().as_bytes());
        line.push(b' ');
    }
    line.extend_from_slice(&message.payload);
    if !args.no_newline {
        line.push(b'\n');
    }
    (line, Vec::new())
}

fn timed_out() -> Failure {
    Failure {
        message: "Timed out".into(),
        code: EXIT_TIMED_OUT,
    }
}
