//! The `simqtt` command line. The only place that formats for humans and picks exit codes;
//! each subcommand lives in its own file under `src/cli/`.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "simqtt",
    version,
    about = "MQTT codec, broker, client, simulator and certifier"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode MQTT packets from a hex string or file and print them (a codec debugging aid).
    Decode(cli::decode::Args),
    /// Add, update or delete a user in a mosquitto-format password file (like mosquitto_passwd).
    Passwd(cli::passwd::Args),
    /// Run the MQTT broker (127.0.0.1:1883, in-memory store, unless told otherwise).
    Broker(cli::broker::Args),
    /// Publish messages, like mosquitto_pub (-h is the host; help is --help).
    #[command(disable_help_flag = true)]
    Pub(cli::pub_cmd::Args),
    /// Subscribe and print messages, like mosquitto_sub; reconnects by itself.
    #[command(disable_help_flag = true)]
    Sub(cli::sub_cmd::Args),
    /// Measure a broker: throughput (fan-in, fan-out, shared), latency, idle connections.
    Bench(cli::bench::Args),
    /// Run scenarios in the simulator, every seed; exit 0 only when all pass.
    Run(cli::run::Args),
    /// Certify a real broker: the scenario library over TCP, graded by the spec's statements.
    Certify(cli::certify::Args),
    /// Certify a client library: its adapter (docs/client-certification.md) under the
    /// client-side scenarios against simqtt's broker, with the same faults and checkers.
    CertifyClient(cli::certify_client::Args),
    /// simqtt's own client behind the driver protocol (the reference adapter of
    /// certify-client).
    Adapter(cli::adapter::Args),
    /// Reproduce one simulated run byte for byte, write its trace, shrink it (--shrink).
    Replay(cli::replay::Args),
    /// Draw scenarios from a grammar, run and judge them, shrink every distinct failure.
    Explore(cli::explore::Args),
    /// Merge the JUnit files of a sharded run into one (suites of one name merged, totals
    /// recounted).
    JunitMerge(cli::junit_merge::Args),
    /// Forward TCP to a broker with added latency and jitter (the certify fault proxy by hand).
    Proxy(cli::proxy::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode(args) => cli::decode::run(args),
        Command::Passwd(args) => cli::passwd::run(args),
        Command::Pub(args) => cli::pub_cmd::run(args),
        Command::Sub(args) => cli::sub_cmd::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Broker(args) => cli::broker::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Certify(args) => cli::certify::run(args),
        Command::CertifyClient(args) => cli::certify_client::run(args),
        Command::Adapter(args) => cli::adapter::run(args),
        Command::Replay(args) => cli::replay::run(args),
        Command::Explore(args) => cli::explore::run(args),
        Command::JunitMerge(args) => cli::junit_merge::run(args),
        Command::Proxy(args) => cli::proxy::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("simqtt: {error:#}");
            ExitCode::from(2)
        }
    }
}
