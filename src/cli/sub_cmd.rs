//! `simqtt sub`: subscribe like mosquitto_sub. Reconnects by itself after a lost connection
//! (a kick, a broker restart) and subscribes again, so it keeps receiving.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use simqtt::client::{Client, ClientError, EventKind, MemoryPersistence};
use simqtt::codec::{QoS, TopicFilter};
use simqtt::transport::tcp::TcpConnector;

use super::pub_cmd::{connect_failure, parse_qos, ConnArgs, Failure};

/// mosquitto_sub's exit code when -W expires (MOSQ_ERR_TIMEOUT).
const EXIT_TIMED_OUT: u8 = 27;

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Topic filter to subscribe to; may be repeated.
    #[arg(short = 't', long = "topic", required = true)]
    pub topics: Vec<String>,
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
    /// Do not print stale (retained) messages.
    #[arg(short = 'R')]
    pub no_retained: bool,
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

async fn subscribe(args: Args) -> Result<(), Failure> {
    let mut filters = Vec::new();
    for topic in &args.topics {
        let filter = TopicFilter::new(topic).map_err(|e| {
            Failure::new(format!("Error: Invalid subscription topic '{topic}': {e}"))
        })?;
        filters.push((filter, simqtt::codec::SubscriptionOptions::qos(args.qos)));
    }
    for topic in &args.filter_out {
        TopicFilter::new(topic)
            .map_err(|e| Failure::new(format!("Error: Invalid filter topic '{topic}': {e}")))?;
    }
    let deadline = args
        .timeout_secs
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let options = args.conn.options("sub")?;
    let connect = Client::connect(
        options,
        Arc::new(TcpConnector),
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

    let mut received = 0u64;
    let stdout = std::io::stdout();
    let sleep_until = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
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
        if args.conn.debug {
            eprintln!("[{}] {:?}", event.connection, event.kind);
        }
        match event.kind {
            EventKind::MessageArrived(message) => {
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
                let mut out = stdout.lock();
                let mut line = Vec::with_capacity(message.topic.len() + message.payload.len() + 2);
                // As mosquitto_sub: "topic (null)" for an empty payload with -v, and nothing
                // at all (not even the newline) without -v.
                if args.verbose {
                    line.extend_from_slice(message.topic.as_str().as_bytes());
                    line.push(b' ');
                    if message.payload.is_empty() {
                        line.extend_from_slice(b"(null)");
                    }
                }
                line.extend_from_slice(&message.payload);
                if !args.no_newline && !line.is_empty() {
                    line.push(b'\n');
                }
                // A closed stdout (e.g. `| head`) ends the subscriber quietly.
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    drop(out);
                    client.disconnect().await;
                    return Ok(());
                }
                received += 1;
                if args.count.is_some_and(|c| received >= c) {
                    drop(out);
                    client.disconnect().await;
                    return Ok(());
                }
            }
            EventKind::SubscribeComplete { token, granted, .. } if token == subscribe_token => {
                if granted.iter().all(|g| g.is_error()) {
                    client.disconnect().await;
                    return Err(Failure::new("All subscription requests were denied."));
                }
                if granted.iter().any(|g| g.is_error()) && !args.conn.quiet {
                    eprintln!("Warning: Subscription to some topics denied.");
                }
            }
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

fn timed_out() -> Failure {
    Failure {
        message: "Timed out".into(),
        code: EXIT_TIMED_OUT,
    }
}
