//! The TCP fault proxy (`transport::proxy`) over real loopback sockets: forwarding, half-close,
//! each fault on open and new connections, bounded buffering, an MQTT exchange with the
//! simqtt broker and client through it, and the `simqtt proxy` command. Servers bind port 0;
//! every wait is bounded.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use simqtt::transport::proxy::{Blackhole, FaultProxy, ProxyControl, IN_FLIGHT_BYTES_MAX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// Bound on anything that should happen "promptly".
const PROMPT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// An echo server: each connection echoes until EOF, then closes its write side.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                let _ = writer.shutdown().await;
            });
        }
    });
    addr
}

/// A server that hands each accepted stream to the test.
async fn holding_server() -> (SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if tx.send(stream).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// A port nothing listens on (bound, then released).
async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    timeout(PROMPT, stream.read_exact(&mut buf))
        .await
        .expect("bytes did not arrive in time")
        .expect("read failed");
    buf
}

/// Asserts nothing arrives for `QUIET` (and the stream stays open).
async fn assert_quiet(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(QUIET, stream.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("stream closed while it should only be quiet"),
        Ok(Ok(n)) => panic!("{n} bytes arrived while quiet: {:?}", &buf[..n]),
        Ok(Err(e)) => panic!("stream failed while it should only be quiet: {e}"),
    }
}

/// Reads until EOF or error; Ok(bytes) at EOF, Err at error. Bounded by `PROMPT`.
async fn read_to_end_or_error(stream: &mut TcpStream) -> Result<Vec<u8>, std::io::Error> {
    let mut all = Vec::new();
    timeout(PROMPT, stream.read_to_end(&mut all))
        .await
        .expect("neither EOF nor error arrived in time")
        .map(|_| all)
}

async fn wait_connections(control: &ProxyControl, n: usize) {
    let deadline = Instant::now() + PROMPT;
    while control.connections() != n {
        assert!(
            Instant::now() < deadline,
            "connections() stayed {} instead of {n}",
            control.connections()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Deterministic, non-repeating-looking test data.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Writes `data` and reads as many bytes back concurrently (an echo through the proxy).
async fn echo_round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(data).await.unwrap();
    };
    let read = async {
        let mut back = vec![0; data.len()];
        reader.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) = timeout(Duration::from_secs(30), async { tokio::join!(write, read) })
        .await
        .expect("echo of a large transfer timed out");
    back
}

#[tokio::test]
async fn forwards_both_ways_byte_exact_including_large_transfers() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    assert!(proxy.addr().ip().is_loopback());
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();

    stream.write_all(b"hello").await.unwrap();
    assert_eq!(read_exact(&mut stream, 5).await, b"hello");

    // 8 MiB: far more than the proxy's per-direction cap and the socket buffers, so the
    // back-pressure path is exercised while both directions run at once.
    let data = pattern(8 * 1024 * 1024);
    let back = echo_round_trip(&mut stream, &data).await;
    assert!(back == data, "echoed bytes differ from what was sent");
    assert_eq!(proxy.control().buffered_bytes(), 0);
}

/// Without latency a chunk must not wait for a timer tick (tokio rounds deadlines up to the
/// next millisecond, which once made every round trip cost ~3.5 ms through the proxy).
#[tokio::test]
async fn no_latency_means_no_timer_wait() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let round_trips = 200;
    let started = Instant::now();
    for i in 0..round_trips {
        stream.write_all(&[i as u8]).await.unwrap();
        assert_eq!(read_exact(&mut stream, 1).await, [i as u8]);
    }
    let each = started.elapsed() / round_trips;
    assert!(
        each < Duration::from_micros(1500),
        "{each:?} per round trip"
    );
}

#[tokio::test]
async fn half_close_is_passed_on_both_ways() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let control = proxy.control();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"last words").await.unwrap();
    // Client FIN: the echo server only ends (and shuts its side down) when it sees EOF, so
    // reaching EOF here proves the FIN went upstream and the server's FIN came back.
    stream.shutdown().await.unwrap();
    let back = read_to_end_or_error(&mut stream).await.unwrap();
    assert_eq!(back, b"last words");
    wait_connections(&control, 0).await;
}

#[tokio::test]
async fn a_server_that_writes_after_the_client_half_closed_still_reaches_it() {
    let (addr, mut accepted) = holding_server().await;
    let proxy = FaultProxy::start(addr).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let request = read_to_end_or_error(&mut server).await.unwrap();
    assert_eq!(request, b"request", "server reads the request, then EOF");
    server.write_all(b"response").await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(
        read_to_end_or_error(&mut client).await.unwrap(),
        b"response"
    );
}

#[tokio::test]
async fn reset_closes_both_sides_promptly_with_an_error() {
    let (addr, mut accepted) = holding_server().await;
    let proxy = FaultProxy::start(addr).await.unwrap();
    let control = proxy.control();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();
    client.write_all(b"ping").await.unwrap();
    assert_eq!(read_exact(&mut server, 4).await, b"ping");
    wait_connections(&control, 1).await;

    let started = Instant::now();
    control.reset();
    // SO_LINGER 0 sends RST, which a reader sees as ConnectionReset (not a clean EOF).
    let client_end = read_to_end_or_error(&mut client).await;
    let server_end = read_to_end_or_error(&mut server).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "reset took {:?}",
        started.elapsed()
    );
    for (side, end) in [("client", client_end), ("server", server_end)] {
        match end {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{side}"),
            Ok(bytes) => panic!("{side} saw an orderly EOF after {bytes:?}, not a reset"),
        }
    }
    wait_connections(&control, 0).await;

    // A connection made after the reset is not affected by it.
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();
    again.write_all(b"again").await.unwrap();
    assert_eq!(read_exact(&mut server, 5).await, b"again");
}

#[tokio::test]
async fn blackhole_both_ways_loses_bytes_keeps_tcp_up_and_heal_restores_the_same_connection() {
    let (addr, mut accepted) = holding_server().await;
    let proxy = FaultProxy::start(addr).await.unwrap();
    let control = proxy.control();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();
    client.write_all(b"before").await.unwrap();
    assert_eq!(read_exact(&mut server, 6).await, b"before");

    control.blackhole(Blackhole::Both);
    client.write_all(b"lost-up").await.unwrap();
    server.write_all(b"lost-down").await.unwrap();
    assert_quiet(&mut server).await;
    assert_quiet(&mut client).await;
    assert_eq!(control.connections(), 1, "TCP stays up through a blackhole");

    control.heal();
    client.write_all(b"after-up").await.unwrap();
    server.write_all(b"after-down").await.unwrap();
    // Exactly the bytes sent after heal: those sent during the blackhole are gone.
    assert_eq!(read_exact(&mut server, 8).await, b"after-up");
    assert_eq!(read_exact(&mut client, 10).await, b"after-down");
    assert_eq!(control.buffered_bytes(), 0);
    // What the blackhole swallowed is counted, each way (a partition proves it took effect).
    assert_eq!(control.discarded_bytes(), (7, 9));
}

#[tokio::test]
async fn blackhole_one_way_leaves_the_other_way_flowing() {
    let (addr, mut accepted) = holding_server().await;
    let proxy = FaultProxy::start(addr).await.unwrap();
    let control = proxy.control();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();

    control.blackhole(Blackhole::ClientToBroker);
    client.write_all(b"swallowed").await.unwrap();
    server.write_all(b"down-ok").await.unwrap();
    assert_eq!(read_exact(&mut client, 7).await, b"down-ok");
    assert_quiet(&mut server).await;

    // Replacing the blackhole: now only broker-to-client is cut.
    control.blackhole(Blackhole::BrokerToClient);
    client.write_all(b"up-ok").await.unwrap();
    server.write_all(b"swallowed").await.unwrap();
    assert_eq!(read_exact(&mut server, 5).await, b"up-ok");
    assert_quiet(&mut client).await;

    control.heal();
    server.write_all(b"healed").await.unwrap();
    assert_eq!(read_exact(&mut client, 6).await, b"healed");
    assert_eq!(control.discarded_bytes(), (9, 9));
}

#[tokio::test]
async fn a_connection_made_during_a_full_blackhole_reaches_the_upstream_only_after_heal() {
    let (addr, mut accepted) = holding_server().await;
    let proxy = FaultProxy::start(addr).await.unwrap();
    let control = proxy.control();
    control.blackhole(Blackhole::Both);
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client.write_all(b"swallowed").await.unwrap();
    wait_connections(&control, 1).await;
    assert!(
        timeout(QUIET, accepted.recv()).await.is_err(),
        "the upstream was dialled during the blackhole"
    );

    control.heal();
    let mut server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();
    client.write_all(b"fresh").await.unwrap();
    assert_eq!(read_exact(&mut server, 5).await, b"fresh");
}

#[tokio::test]
async fn stall_then_unstall_delivers_everything_in_order() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let control = proxy.control();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"warm").await.unwrap();
    assert_eq!(read_exact(&mut stream, 4).await, b"warm");

    control.stall();
    // More than the proxy could buffer, written from a task because the write blocks once the
    // socket buffers are full (that is the stall working).
    let data = pattern(256 * 1024);
    let (mut reader, mut writer) = stream.into_split();
    let to_send = data.clone();
    let writer_task = tokio::spawn(async move {
        writer.write_all(&to_send).await.unwrap();
        writer
    });
    let mut probe = [0u8; 1];
    assert!(
        timeout(QUIET, reader.read(&mut probe)).await.is_err(),
        "bytes moved during a stall"
    );
    assert_eq!(control.buffered_bytes(), 0, "a stalled proxy reads nothing");
    // What waits at the stall is seen (a peek), which is how certify confirms a loss.
    let (held_up, held_down) = control.held_bytes();
    assert!(
        held_up > 0,
        "the bytes waiting at the stall were not counted"
    );
    assert_eq!(held_down, 0, "nothing came the other way");

    control.unstall();
    let mut back = vec![0; data.len()];
    timeout(PROMPT, reader.read_exact(&mut back))
        .await
        .expect("stalled bytes were not delivered after unstall")
        .unwrap();
    assert!(back == data, "bytes lost or reordered across the stall");
    timeout(PROMPT, writer_task).await.unwrap().unwrap();
}

#[tokio::test]
async fn latency_delays_each_way_and_keeps_order_under_jitter() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let control = proxy.control();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let latency = Duration::from_millis(100);
    control.set_latency(latency, Duration::from_millis(40));

    // Small writes spaced out so they become separate chunks with separate jitter draws.
    let started = Instant::now();
    let (mut reader, mut writer) = stream.split();
    let messages: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + usize::from(i % 7)]).collect();
    let expected: Vec<u8> = messages.concat();
    let write = async {
        for message in &messages {
            writer.write_all(message).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let read = async {
        let mut first = [0u8; 1];
        reader.read_exact(&mut first).await.unwrap();
        let first_after = started.elapsed();
        let mut rest = vec![0; expected.len() - 1];
        reader.read_exact(&mut rest).await.unwrap();
        let mut all = first.to_vec();
        all.extend(rest);
        (first_after, all)
    };
    let ((), (first_after, all)) = timeout(PROMPT, async { tokio::join!(write, read) })
        .await
        .unwrap();
    // Client to echo and back: the latency twice.
    assert!(
        first_after >= 2 * latency,
        "first byte back after {first_after:?}"
    );
    assert_eq!(all, expected, "jitter reordered bytes");

    // Bytes held by a long latency are delivered at once by heal, still in order.
    control.set_latency(Duration::from_secs(60), Duration::ZERO);
    stream.write_all(b"held-").await.unwrap();
    stream.write_all(b"then").await.unwrap();
    assert_quiet(&mut stream).await;
    control.heal();
    assert_eq!(read_exact(&mut stream, 9).await, b"held-then");

    let started = Instant::now();
    stream.write_all(b"x").await.unwrap();
    assert_eq!(read_exact(&mut stream, 1).await, b"x");
    assert!(
        started.elapsed() < latency,
        "heal left latency: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_delayed_direction_buffers_at_most_its_cap_and_pushes_back() {
    let (addr, mut accepted) = holding_server().await;
    let proxy = FaultProxy::start(addr).await.unwrap();
    let control = proxy.control();
    control.set_latency(Duration::from_secs(30), Duration::ZERO);
    let client = TcpStream::connect(proxy.addr()).await.unwrap();
    let _server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();

    // The client writes as fast as it can; the proxy may hold only its cap, so once the
    // socket buffers are full too the client blocks.
    let (sent_tx, sent_rx) = tokio::sync::watch::channel(0usize);
    let writer_task = tokio::spawn(async move {
        let mut client = client;
        let chunk = vec![7u8; 64 * 1024];
        loop {
            if client.write_all(&chunk).await.is_err() {
                break;
            }
            sent_tx.send_modify(|n| *n += chunk.len());
        }
    });
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = *sent_rx.borrow();
        if sent == last {
            break; // the writer is blocked: back-pressure reached it
        }
        assert!(
            sent < 256 * 1024 * 1024,
            "no back-pressure after {sent} bytes"
        );
        last = sent;
    }
    let buffered = control.buffered_bytes();
    assert!(
        buffered > 0 && buffered <= IN_FLIGHT_BYTES_MAX,
        "proxy buffers {buffered} bytes (cap {IN_FLIGHT_BYTES_MAX})"
    );
    writer_task.abort();
}

#[tokio::test]
async fn a_blackholed_direction_buffers_nothing() {
    let (addr, mut accepted) = holding_server().await;
    let proxy = FaultProxy::start(addr).await.unwrap();
    let control = proxy.control();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();
    control.blackhole(Blackhole::ClientToBroker);
    // 16 MiB go into the hole without the writer blocking: discarded as read.
    let data = pattern(16 * 1024 * 1024);
    timeout(Duration::from_secs(30), client.write_all(&data))
        .await
        .expect("a blackhole should swallow, not block")
        .unwrap();
    assert_eq!(control.buffered_bytes(), 0);
    assert_quiet(&mut server).await;
}

#[tokio::test]
async fn an_unreachable_upstream_closes_the_client() {
    let proxy = FaultProxy::start(dead_port().await).await.unwrap();
    let control = proxy.control();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let _ = client.write_all(b"anyone?").await;
    // Ok(empty) (FIN) or an error are both a closed connection; what must not happen is a hang.
    if let Ok(bytes) = read_to_end_or_error(&mut client).await {
        assert!(
            bytes.is_empty(),
            "the upstream is down, yet {bytes:?} came back"
        );
    }
    wait_connections(&control, 0).await;
}

#[tokio::test]
async fn an_upstream_that_closes_closes_the_client() {
    let (addr, mut accepted) = holding_server().await;
    let proxy = FaultProxy::start(addr).await.unwrap();
    let control = proxy.control();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let server = timeout(PROMPT, accepted.recv()).await.unwrap().unwrap();
    drop(server);
    assert!(read_to_end_or_error(&mut client).await.unwrap().is_empty());
    drop(client);
    wait_connections(&control, 0).await;
}

#[tokio::test]
async fn connections_counts_open_connections_and_dropping_the_proxy_closes_them() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let control = proxy.control();
    assert_eq!(control.connections(), 0);
    let mut streams = Vec::new();
    for i in 0..3u8 {
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream.write_all(&[i]).await.unwrap();
        assert_eq!(read_exact(&mut stream, 1).await, [i]);
        streams.push(stream);
    }
    wait_connections(&control, 3).await;
    drop(streams.pop());
    wait_connections(&control, 2).await;

    let addr = proxy.addr();
    drop(proxy);
    for mut stream in streams {
        assert!(read_to_end_or_error(&mut stream).await.unwrap().is_empty());
    }
    wait_connections(&control, 0).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a dropped proxy still accepts"
    );
}

#[tokio::test]
async fn faults_can_be_switched_from_another_thread() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let control: Arc<ProxyControl> = proxy.control();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let from_thread = control.clone();
    std::thread::spawn(move || from_thread.stall())
        .join()
        .unwrap();
    stream.write_all(b"held").await.unwrap();
    assert_quiet(&mut stream).await;
    let from_thread = control.clone();
    std::thread::spawn(move || from_thread.heal())
        .join()
        .unwrap();
    assert_eq!(read_exact(&mut stream, 4).await, b"held");
}

/// An MQTT exchange with the simqtt broker and client through the proxy: subscribe and
/// publish at QoS 1, the same under latency, and a reset that the client survives by
/// reconnecting through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_through_the_proxy_to_the_simqtt_broker() {
    use simqtt::broker::{self, BrokerConfig};
    use simqtt::client::{Client, ConnectOptions, EventKind, MemoryPersistence, ReconnectOptions};
    use simqtt::codec::{QoS, ReasonCode};
    use simqtt::store::MemoryStore;
    use simqtt::transport::tcp::{TcpConnector, TcpListener as BrokerListener};

    let listener = BrokerListener::bind("127.0.0.1:0").await.unwrap();
    let broker_addr = listener.0.local_addr().unwrap();
    let config = BrokerConfig {
        rng_seed: Some(6),
        ..BrokerConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(broker::run(
        listener,
        Box::new(MemoryStore::new()),
        config,
        async move {
            let _ = stopped.await;
        },
    ));

    let proxy = FaultProxy::start(broker_addr).await.unwrap();
    let control = proxy.control();
    let options = |id: &str| {
        let mut options = ConnectOptions::new(proxy.addr().to_string(), id);
        options.connect_timeout = PROMPT;
        options.reconnect = Some(ReconnectOptions {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            ..ReconnectOptions::default()
        });
        options
    };
    let (subscriber, mut events, _) = Client::connect(
        options("proxy-sub"),
        Arc::new(TcpConnector),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .expect("connect through the proxy");
    let granted = subscriber
        .subscribe(&[("proxy/#", QoS::AtLeastOnce)])
        .await
        .unwrap();
    assert_eq!(granted, vec![ReasonCode::GrantedQoS1]);
    let (publisher, _publisher_events, _) = Client::connect(
        options("proxy-pub"),
        Arc::new(TcpConnector),
        Box::new(MemoryPersistence::new()),
    )
    .await
    .unwrap();
    wait_connections(&control, 2).await;

    async fn next_message(
        events: &mut tokio::sync::mpsc::Receiver<simqtt::client::Event>,
    ) -> Vec<u8> {
        timeout(PROMPT, async {
            loop {
                let event = events.recv().await.expect("client stopped");
                if let EventKind::MessageArrived(message) = event.kind {
                    return message.payload.to_vec();
                }
            }
        })
        .await
        .expect("no message arrived")
    }

    publisher
        .publish("proxy/a", &b"one"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(next_message(&mut events).await, b"one");

    // Under 50 ms latency each way the PUBLISH -> PUBACK round trip takes at least 100 ms.
    control.set_latency(Duration::from_millis(50), Duration::from_millis(10));
    let started = Instant::now();
    publisher
        .publish("proxy/b", &b"two"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(next_message(&mut events).await, b"two");
    control.heal();

    // A reset breaks both clients' connections; they reconnect through the proxy, the
    // subscriber resubscribes (clean session), and messages flow again.
    control.reset();
    timeout(PROMPT, async {
        let mut lost = false;
        loop {
            match events.recv().await.expect("client stopped").kind {
                EventKind::ConnectionLost { .. } => lost = true,
                EventKind::SubscribeComplete {
                    resubscribe: true, ..
                } if lost => break,
                _ => {}
            }
        }
    })
    .await
    .expect("the subscriber did not reconnect and resubscribe after the reset");
    wait_connections(&control, 2).await;
    timeout(PROMPT, async {
        publisher
            .publish("proxy/c", &b"three"[..], QoS::AtLeastOnce, false)
            .await
            .unwrap()
            .wait()
            .await
    })
    .await
    .expect("publish after the reset timed out")
    .unwrap();
    assert_eq!(next_message(&mut events).await, b"three");

    subscriber.disconnect().await;
    publisher.disconnect().await;
    let _ = stop.send(());
    timeout(PROMPT, server).await.unwrap().unwrap().unwrap();
}

/// `simqtt proxy` in a child process, killed when dropped.
struct ProxyProcess(Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_proxy_command_adds_latency_in_front_of_a_server() {
    let upstream = echo_server().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_simqtt"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(upstream.to_string())
        .args(["--latency", "60ms", "--jitter", "10ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting simqtt proxy");
    let stdout = child.stdout.take().unwrap();
    let process = ProxyProcess(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = timeout(PROMPT, line).await.unwrap().unwrap().unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"ping").await.unwrap();
    assert_eq!(read_exact(&mut stream, 4).await, b"ping");
    assert!(
        started.elapsed() >= Duration::from_millis(120),
        "round trip {:?} under 2 x 60ms",
        started.elapsed()
    );
    drop(process);
}
