//! Subcommands, one file each.

pub mod bench;
pub mod broker;
pub mod certify;
pub mod decode;
pub mod explore;
pub mod passwd;
pub mod proxy;
pub mod pub_cmd;
pub mod replay;
pub mod run;
pub mod shrink_cmd;
pub mod sub_cmd;

/// Logs to stderr at `default` level unless RUST_LOG says otherwise (the long-running
/// subcommands: broker, proxy, certify).
fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}
