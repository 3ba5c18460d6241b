//! The `simqtt` command line. The only place that formats for humans and picks exit codes.

use clap::Parser;

#[derive(Parser)]
#[command(name = "simqtt", version, about = "MQTT codec, broker, client, simulator and certifier")]
enum Cli {}

fn main() {
    let _ = Cli::parse();
}
