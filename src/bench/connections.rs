//! The connections shape: open N idle MQTT connections, hold them, and weigh them in the
//! broker's RSS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::wire::Stream;
use crate::transport::url::Endpoint;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::procfs::{self, ProcSample};
use super::wire;
use super::{BenchError, BrokerProcess, ConnectionsReport};
use crate::codec::ProtocolVersion;

/// Handshakes in progress at once: enough to keep a broker busy accepting, few enough not to
/// overflow its listen backlog.
const HANDSHAKES_IN_FLIGHT: usize = 128;
/// Connections per loopback source address: well under the ~28,000 ephemeral ports one
/// address has, so no source runs out.
pub const CONNECTIONS_PER_SOURCE: usize = 10_000;
/// Descriptors the generator keeps for itself beyond one per connection.
const SPARE_DESCRIPTORS: u64 = 1024;
/// How long after the last connection the broker's RSS is read (lets lazy allocations land).
const SETTLE: Duration = Duration::from_millis(500);

/// The source address for connection `index` when the broker is on loopback: 127.1.0.1,
/// 127.1.0.2, … each carrying `CONNECTIONS_PER_SOURCE`; 127.0.0.0/8 is all loopback on Linux,
/// and each address has its own ephemeral ports. `None` when the broker is elsewhere.
pub fn source_address(broker: IpAddr, index: usize) -> Option<IpAddr> {
    match broker {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let k = index / CONNECTIONS_PER_SOURCE;
            // 250 per octet keeps away from .0 and .255.
            let ip = Ipv4Addr::new(
                127,
                1 + (k / (250 * 250)) as u8,
                ((k / 250) % 250) as u8,
                (k % 250) as u8 + 1,
            );
            Some(IpAddr::V4(ip))
        }
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    endpoint: &Endpoint,
    broker: SocketAddr,
    connections: usize,
    hold: Duration,
    protocol: ProtocolVersion,
    keep_alive_secs: u16,
    run_id: &str,
    broker_pid: Option<u32>,
) -> Result<(ConnectionsReport, Option<BrokerProcess>), BenchError> {
    let limit =
        procfs::raise_nofile_limit(connections as u64 + SPARE_DESCRIPTORS).map_err(|source| {
            BenchError::Io {
                context: "raising RLIMIT_NOFILE".into(),
                source,
            }
        })?;
    if limit < connections as u64 + 16 {
        return Err(BenchError::Config(format!(
            "the file-descriptor limit is {limit}, too low for {connections} connections \
             (raise `ulimit -n`)"
        )));
    }
    let before = sample(broker_pid)?;
    let started = Instant::now();
    let mut held: Vec<Stream> = Vec::with_capacity(connections);
    let mut failed = 0usize;
    let mut first_error: Option<String> = None;
    let mut handshakes = JoinSet::new();
    let mut next = 0usize;
    while next < connections || !handshakes.is_empty() {
        while next < connections && handshakes.len() < HANDSHAKES_IN_FLIGHT {
            let source = source_address(broker.ip(), next);
            let client_id = format!("simqtt-bench-{run_id}-c{next}");
            let endpoint = endpoint.clone();
            handshakes.spawn(async move {
                wire::open(
                    &endpoint,
                    broker,
                    source,
                    &client_id,
                    protocol,
                    keep_alive_secs,
                )
                .await
            });
            next += 1;
        }
        match handshakes.join_next().await {
            Some(Ok(Ok(session))) => held.push(session.stream),
            Some(Ok(Err(error))) => {
                failed += 1;
                first_error.get_or_insert_with(|| error.to_string());
            }
            Some(Err(join)) => {
                failed += 1;
                first_error.get_or_insert_with(|| join.to_string());
            }
            None => {}
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE.min(hold)).await;
    let loaded = sample(broker_pid)?;
    tokio::time::sleep(hold.saturating_sub(SETTLE)).await;
    let after = sample(broker_pid)?;
    // A connection the broker closed reads EOF (or an error); an open idle one would block.
    let alive_at_end = held
        .iter_mut()
        .map(Stream::idle_and_open)
        .filter(|open| *open)
        .count();
    let opened = held.len();
    drop(held);

    let broker_process = match (broker_pid, before, loaded, after) {
        (Some(pid), Some(before), Some(loaded), Some(after)) => Some(BrokerProcess::between(
            pid,
            &before,
            &after,
            loaded.rss_bytes.max(after.rss_bytes),
            opened as u64,
        )),
        _ => None,
    };
    let bytes_per_connection = match (before, after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some(after.rss_bytes.saturating_sub(before.rss_bytes) / opened as u64)
        }
        _ => None,
    };
    Ok((
        ConnectionsReport {
            requested: connections,
            opened,
            failed,
            first_error,
            connect_secs,
            connections_per_sec: opened as f64 / connect_secs.max(1e-9),
            alive_at_end,
            hold_secs: hold.as_secs_f64(),
            broker_rss_before: before.map(|s| s.rss_bytes),
            broker_rss_after: after.map(|s| s.rss_bytes),
            broker_bytes_per_connection: bytes_per_connection,
        },
        broker_process,
    ))
}

fn sample(pid: Option<u32>) -> Result<Option<ProcSample>, BenchError> {
    pid.map(|pid| {
        procfs::sample(Some(pid)).map_err(|source| BenchError::Io {
            context: format!("reading /proc/{pid} (is --pid the broker's?)"),
            source,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let at = |i| source_address(loopback, i).unwrap().to_string();
        assert_eq!(at(0), "127.1.0.1");
        assert_eq!(at(CONNECTIONS_PER_SOURCE - 1), "127.1.0.1");
        assert_eq!(at(CONNECTIONS_PER_SOURCE), "127.1.0.2");
        assert_eq!(at(250 * CONNECTIONS_PER_SOURCE), "127.1.1.1");
        // A million connections stay inside 127/8 and away from .0/.255 in the last octet.
        assert_eq!(at(1_000_000), "127.1.0.101");
        assert_eq!(source_address("10.0.0.1".parse().unwrap(), 0), None);
        assert_eq!(source_address("::1".parse().unwrap(), 0), None);
    }
}
