//! `simqtt broker`: run the MQTT broker on real TCP until SIGINT or SIGTERM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use simqtt::broker::{self, BrokerConfig, SyncMode};
use simqtt::store::fs::StdFs;
use simqtt::store::{
    Compaction, FileStore, FileStoreOptions, MemoryStore, RecoveryMode, Store, SyncPolicy,
};
use simqtt::transport::listen::{self, Listeners};
use simqtt::transport::tcp::TcpListener;
use simqtt::transport::Listener;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on [default: 127.0.0.1:1883, or `listen` in the config file].
    /// Port 0 picks a free port; the bound address is printed on stdout.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Keep sessions and retained messages in this directory (created if missing) [default:
    /// in memory only].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file; docs/broker.toml documents every option with its default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Start even though the store's log is damaged (damage followed by intact records, which
    /// the broker otherwise refuses to start with): the log is copied aside (DATA_DIR/log.damaged)
    /// and the store is rewritten from every intact record; the damaged ones are lost. Meant
    /// for one start after reading that error; docs/reliability.md says more.
    #[arg(long)]
    salvage: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::init_logging("info");
    // A write beyond the file size limit (`ulimit -f`) must fail with EFBIG, which the store
    // reports like a full disk, rather than kill the broker with SIGXFSZ (whose default action
    // is to end the process and dump core).
    // SAFETY: `signal` with SIG_IGN installs no handler code; nothing else is touched.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }

    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the config file {}", path.display()))?;
            let mut config =
                BrokerConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
            relative_to_config(&mut config, path);
            config
        }
        None => BrokerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    }
    if config.rng_seed.is_none() {
        // The broker never reads the clock itself (determinism); the command may.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        config.rng_seed = Some(nanos ^ u64::from(std::process::id()));
    }
    config.authenticator = load_authenticator(&config, args.config.as_deref())?;

    if args.salvage && config.data_dir.is_none() {
        anyhow::bail!("--salvage repairs a data directory: give --data-dir (or data_dir)");
    }
    let store: Box<dyn Store> = match &config.data_dir {
        Some(dir) => {
            let policy = match config.sync {
                SyncMode::EveryWrite => SyncPolicy::EveryWrite,
                SyncMode::Periodic => SyncPolicy::Periodic {
                    interval_ms: config.sync_interval_ms,
                },
            };
            let options = FileStoreOptions {
                sync: policy,
                recovery: if args.salvage {
                    RecoveryMode::Salvage
                } else {
                    RecoveryMode::Strict
                },
                // Snapshots are written off the core, which keeps serving meanwhile.
                compaction: Compaction::Thread,
                ..FileStoreOptions::default()
            };
            let store = FileStore::open_with(Arc::new(StdFs), dir, options)
                .with_context(|| format!("opening the store in {}", dir.display()))?;
            Box::new(store)
        }
        None => Box::new(MemoryStore::new()),
    };

    // One thread: the core and every connection task on it (see `BrokerConfig::threads`).
    // More: the core runs as a task on the workers too, not on this thread inside
    // `block_on`, from where each event from a connection would be a wake-up across threads.
    let runtime = match config.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                builder.worker_threads(n);
            }
            builder.enable_all().build()
        }
    }
    .context("starting the runtime")?;
    let config_file = args.config.clone();
    let serve = async move {
        let listener = bind_listeners(&config, config_file.as_deref()).await?;
        broker::run(listener, store, config, shutdown_signal("broker"))
            .await
            .context("serving")
    };
    runtime
        .block_on(async { tokio::spawn(serve).await })
        .context("the broker task failed")??;
    Ok(ExitCode::SUCCESS)
}

/// Binds `listen` and every `[[listener]]`, printing a line for each (scripts and tests that
/// start the broker on port 0 read the address from it). An error names the listener and the
/// config file: a TLS file that is missing or does not fit, a port in use.
async fn bind_listeners(
    config: &BrokerConfig,
    config_file: Option<&Path>,
) -> anyhow::Result<Box<dyn Listener>> {
    let mut bound: Vec<Box<dyn Listener>> = Vec::new();
    if !config.listen.is_empty() {
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        println!("simqtt broker listening on {}", listener.local_addr());
        bound.push(Box::new(listener));
    }
    for (i, table) in config.listeners.iter().enumerate() {
        let name = match config_file {
            Some(file) => format!(
                "[[listener]] {} (listen = {:?}) in {}",
                i + 1,
                table.listen,
                file.display()
            ),
            None => format!("[[listener]] {} (listen = {:?})", i + 1, table.listen),
        };
        let spec = table
            .spec(config.max_packet_size)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let listener = listen::bind(&spec)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        println!(
            "simqtt broker listening on {} ({})",
            listener.local_addr(),
            spec.scheme()
        );
        bound.push(listener);
    }
    std::io::stdout().flush().ok();
    Ok(match bound.len() {
        1 => bound.pop().expect("one"),
        _ => Box::new(Listeners::new(bound)),
    })
}

/// Paths in a config file are relative to the file, not to wherever the broker was started
/// (as in mosquitto.conf's include_dir and systemd units, a config is moved with its files).
fn relative_to_config(config: &mut BrokerConfig, file: &Path) {
    let dir = file.parent().unwrap_or(Path::new(""));
    let mut paths = vec![
        &mut config.password_file,
        &mut config.acl_file,
        &mut config.data_dir,
    ];
    for listener in &mut config.listeners {
        paths.extend(listener.paths_mut());
    }
    for path in paths.into_iter().flatten() {
        if path.is_relative() {
            *path = dir.join(&*path);
        }
    }
}

/// Loads the password and ACL files; an error names the setting and the config file that
/// named the file (`password_file = "pw" in conf/broker.toml: cannot read conf/pw: …`).
fn load_authenticator(
    config: &BrokerConfig,
    config_file: Option<&Path>,
) -> anyhow::Result<broker::auth::Authenticator> {
    use broker::auth::{Acl, Authenticator, PasswordFile};
    let origin = |setting: &str, path: &Path| match config_file {
        Some(file) => {
            let written = path
                .strip_prefix(file.parent().unwrap_or(Path::new("")))
                .unwrap_or(path);
            format!(
                "{setting} = {:?} in {}",
                written.display().to_string(),
                file.display()
            )
        }
        None => setting.to_string(),
    };
    let read = |setting: &str, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read {}: {e}",
                origin(setting, path),
                path.display()
            )
        })
    };
    let passwords = match &config.password_file {
        Some(path) => Some(
            PasswordFile::parse(&read("password_file", path)?, path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", origin("password_file", path)))?,
        ),
        None => None,
    };
    let acl = match &config.acl_file {
        Some(path) => Some(
            Acl::parse(&read("acl_file", path)?, path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", origin("acl_file", path)))?,
        ),
        None => None,
    };
    Ok(Authenticator::new(config.allow_anonymous, passwords, acl))
}

/// SIGINT (Ctrl-C) or SIGTERM; `what` names the program in the warning when SIGTERM cannot
/// be watched. Shared by `simqtt broker` and `simqtt proxy`.
pub(crate) async fn shutdown_signal(what: &str) {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the {what}");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
