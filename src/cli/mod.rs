//! Subcommands, one file each.

pub mod adapter;
pub mod bench;
pub mod broker;
pub mod certify;
pub mod certify_client;
pub mod decode;
pub mod explore;
pub mod format;
pub mod junit_merge;
pub mod packet_log;
pub mod passwd;
pub mod props;
pub mod proxy;
pub mod pub_cmd;
pub mod replay;
pub mod run;
pub mod run_report;
pub mod shrink_cmd;
pub mod sub_cmd;

/// Logs to stderr at `default` level unless RUST_LOG says otherwise (the long-running
/// subcommands: broker, proxy, certify). Colours only on a terminal (and not with NO_COLOR):
/// a log file or a pipe gets plain text, not escape sequences.
fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}
