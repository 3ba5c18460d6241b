//! MQTT over TLS and WebSocket end to end, with real processes: the simqtt broker's mqtts, ws
//! and wss listeners (and a mutual-TLS one whose client certificates name the users its ACL
//! knows) against the simqtt CLI, mosquitto's clients, paho-mqtt's WebSocket transport, MQTT.js
//! and a raw WebSocket client; the simqtt CLI against mosquitto's TLS listener and against aedes
//! over WebSocket; clear errors for a
//! wrong CA, a host-name mismatch and bad listener files; `simqtt certify` over mqtts:// and
//! wss://. Certificates are made at test time (tests/tls_support).
//!
//! mosquitto, paho-mqtt, node with MQTT.js, ws and aedes must be installed
//! (scripts/install-peers): these tests fail, never skip, without them.

mod tls_support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIMQTT: &str = env!("CARGO_BIN_EXE_simqtt");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The listeners of the test broker, in the order of its config file.
const PLAIN: usize = 0;
const MQTTS: usize = 1;
const WS: usize = 2;
const WSS: usize = 3;
const MUTUAL: usize = 4;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
acl_file = "acl"
password_file = "passwords"
"#;

const LISTENERS: &str = r#"

[[listener]]
listen = "127.0.0.1:0"
certfile = "server.crt"
keyfile = "server.key"

[[listener]]
listen = "127.0.0.1:0"
protocol = "websockets"

[[listener]]
listen = "127.0.0.1:0"
protocol = "websockets"
certfile = "server.crt"
keyfile = "server.key"

[[listener]]
listen = "127.0.0.1:0"
certfile = "server.crt"
keyfile = "server.key"
cafile = "ca.crt"
require_certificate = true
use_identity_as_username = true
"#;

/// Anonymous clients may use open/#; alice and bob their own trees.
const ACL: &str = "topic readwrite open/#\n\nuser alice\ntopic readwrite alice/#\n\nuser bob\ntopic readwrite bob/#\n";

struct Broker {
    child: Child,
    ports: Vec<u16>,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let into = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut log = into.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// A simqtt broker with `config` in a directory holding the test certificates, an ACL and a
/// password file (carol:s3cret); `listeners` lines of "listening on" are awaited.
fn start_broker(config: &str, listeners: usize) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    tls_support::write_certs(dir.path());
    std::fs::write(dir.path().join("broker.toml"), config).unwrap();
    std::fs::write(dir.path().join("acl"), ACL).unwrap();
    let out = Command::new(SIMQTT)
        .args(["passwd", "-c", "-b", "passwords", "carol", "s3cret"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut child = Command::new(SIMQTT)
        .args(["broker", "--config", "broker.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(child.stderr.take().unwrap());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ports = Vec::new();
    while ports.len() < listeners {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("the broker stopped; log:\n{}", log.lock().unwrap());
        }
        let addr = line
            .trim()
            .strip_prefix("simqtt broker listening on ")
            .unwrap_or_else(|| panic!("{line:?}"));
        let addr = addr.split(' ').next().unwrap();
        ports.push(addr.rsplit(':').next().unwrap().parse().unwrap());
    }
    Broker {
        child,
        ports,
        log,
        dir,
    }
}

fn broker() -> Broker {
    start_broker(&format!("{CONFIG}{LISTENERS}"), 5)
}

impl Broker {
    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

fn run(program: &str, args: &[String]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// A subscriber (`program` with `args`, which must print one line per message), a publisher
/// run until the subscriber has printed `expect`, then the subscriber's whole output.
fn deliver(sub: (&str, Vec<String>), publish: (&str, Vec<String>), expect: &str) -> String {
    let mut child = Command::new(sub.0)
        .args(&sub.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let published = run(publish.0, &publish.1);
        assert!(
            published.status.success(),
            "{} {:?}: {}",
            publish.0,
            publish.1,
            String::from_utf8_lossy(&published.stderr)
        );
        let wait = Instant::now() + Duration::from_secs(1);
        while Instant::now() < wait && !out.lock().unwrap().contains(expect) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if out.lock().unwrap().contains(expect) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} {:?} never printed {expect:?}; stdout {:?}, stderr {:?}",
            sub.0,
            sub.1,
            out.lock().unwrap(),
            err.lock().unwrap()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = out.lock().unwrap().clone();
    text
}

#[test]
fn the_simqtt_cli_over_every_transport_of_the_simqtt_broker() {
    let b = broker();
    let ca = b.path("ca.crt");
    let urls = [
        format!("mqtt://localhost:{}", b.ports[PLAIN]),
        format!("mqtts://localhost:{}", b.ports[MQTTS]),
        format!("ws://localhost:{}", b.ports[WS]),
        format!("wss://localhost:{}", b.ports[WSS]),
    ];
    // Every pair of transports: one broker behind them all.
    for (i, sub_url) in urls.iter().enumerate() {
        let publisher = &urls[(i + 1) % urls.len()];
        let tls = |url: &str| {
            if url.starts_with("mqtts") || url.starts_with("wss") {
                format!(" --cafile {ca}")
            } else {
                String::new()
            }
        };
        let topic = format!("open/t{i}");
        let out = deliver(
            (
                SIMQTT,
                words(&format!("sub -L {sub_url}/{topic} -v{}", tls(sub_url))),
            ),
            (
                SIMQTT,
                words(&format!(
                    "pub -L {publisher}/{topic} -m hello-{i} -q 1{}",
                    tls(publisher)
                )),
            ),
            &format!("{topic} hello-{i}"),
        );
        assert!(out.contains(&format!("{topic} hello-{i}")), "{out}");
    }
    // -h/-p with --cafile is TLS too, as with mosquitto's clients; -d logs the MQTT packets
    // inside TLS.
    let out = run(
        SIMQTT,
        &words(&format!(
            "pub -h localhost -p {} --cafile {ca} -t open/x -m y -d",
            b.ports[MQTTS]
        )),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("received CONNACK (0)"), "{stdout}");
    // The same flags against the plain port: a TLS client meets no TLS there, and says so.
    let out = run(
        SIMQTT,
        &words(&format!(
            "pub -h localhost -p {} --cafile {ca} -t open/x -m y",
            b.ports[PLAIN]
        )),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS handshake with localhost"),
        "{out:?}"
    );
}

#[test]
fn mosquitto_clients_against_the_simqtt_tls_listeners() {
    let b = broker();
    let ca = b.path("ca.crt");
    let port = b.ports[MQTTS];
    let out = deliver(
        (
            "mosquitto_sub",
            words(&format!(
                "-h localhost -p {port} --cafile {ca} -t open/m -v"
            )),
        ),
        (
            "mosquitto_pub",
            words(&format!(
                "-h localhost -p {port} --cafile {ca} -t open/m -m via-mosquitto -q 1"
            )),
        ),
        "open/m via-mosquitto",
    );
    assert!(out.contains("open/m via-mosquitto"));
    // With client certificates, on the listener that requires them.
    let mutual = b.ports[MUTUAL];
    let cert = |user: &str| {
        format!(
            "--cert {} --key {}",
            b.path(&format!("{user}.crt")),
            b.path(&format!("{user}.key"))
        )
    };
    let out = deliver(
        (
            "mosquitto_sub",
            words(&format!(
                "-h localhost -p {mutual} --cafile {ca} {} -t alice/m -v",
                cert("alice")
            )),
        ),
        (
            "mosquitto_pub",
            words(&format!(
                "-h localhost -p {mutual} --cafile {ca} {} -t alice/m -m mutual -q 1",
                cert("alice")
            )),
        ),
        "alice/m mutual",
    );
    assert!(out.contains("alice/m mutual"));
    // Without one: the handshake fails.
    let out = run(
        "mosquitto_pub",
        &words(&format!(
            "-h localhost -p {mutual} --cafile {ca} -t alice/m -m x"
        )),
    );
    assert_ne!(out.status.code(), Some(0), "{out:?}");
}

/// The broker's mutual-TLS listener: the certificate's CN is the user name its ACL sees,
/// whatever user name and password the client sends, and no password is checked for it.
#[test]
fn mutual_tls_identity_is_the_user_name_of_the_acl() {
    let b = broker();
    let ca = b.path("ca.crt");
    let mutual = b.ports[MUTUAL];
    let as_user = |user: &str| {
        format!(
            "--cafile {ca} --cert {} --key {}",
            b.path(&format!("{user}.crt")),
            b.path(&format!("{user}.key"))
        )
    };
    // alice (by certificate) saying she is bob, with a password the file does not know.
    let alice_as_bob = format!("{} -u bob -P wrong", as_user("alice"));
    let out = deliver(
        (
            SIMQTT,
            words(&format!(
                "sub -L mqtts://localhost:{mutual}/alice/# -v {}",
                as_user("alice")
            )),
        ),
        (
            SIMQTT,
            words(&format!(
                "pub -L mqtts://localhost:{mutual}/alice/x -m mine -q 1 -V 5 {alice_as_bob}"
            )),
        ),
        "alice/x mine",
    );
    assert!(out.contains("alice/x mine"));
    // bob's tree is refused to her: under 5.0 the PUBACK says so (0x87).
    let out = run(
        SIMQTT,
        &words(&format!(
            "pub -L mqtts://localhost:{mutual}/bob/x -m not-yours -q 1 -V 5 {alice_as_bob}"
        )),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not authorized"),
        "{out:?}"
    );
    let out = run(
        SIMQTT,
        &words(&format!(
            "pub -L mqtts://localhost:{mutual}/bob/x -m bobs -q 1 -V 5 {}",
            as_user("bob")
        )),
    );
    assert!(out.status.success(), "{out:?}");
    // The broker's log names the certificate's user for the refusal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.log.lock().unwrap().contains("user=\"alice\" topic=bob/x") {
        assert!(Instant::now() < deadline, "log: {}", b.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    // No certificate, or one another CA signed: refused in the handshake, quickly.
    for flags in [
        format!("--cafile {ca}"),
        format!(
            "--cafile {ca} --cert {} --key {}",
            b.path("stranger.crt"),
            b.path("stranger.key")
        ),
    ] {
        let started = Instant::now();
        let out = run(
            SIMQTT,
            &words(&format!(
                "pub -L mqtts://localhost:{mutual}/alice/x -m x {flags}"
            )),
        );
        assert_eq!(out.status.code(), Some(1), "{flags}: {out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn a_wrong_ca_or_host_name_is_a_clear_error_not_a_hang() {
    let b = broker();
    let port = b.ports[MQTTS];
    for (args, said) in [
        (
            format!(
                "pub -L mqtts://localhost:{port}/open/x -m x --cafile {}",
                b.path("other-ca.crt")
            ),
            "not signed by a trusted CA",
        ),
        (
            format!(
                "pub -L mqtts://127.0.0.1:{port}/open/x -m x --cafile {}",
                b.path("ca.crt")
            ),
            "not valid for the host name \"127.0.0.1\" (it names localhost)",
        ),
        (
            format!(
                "sub -L wss://127.0.0.1:{}/open/x --cafile {}",
                b.ports[WSS],
                b.path("ca.crt")
            ),
            "not valid for the host name",
        ),
        (
            format!(
                "pub -L mqtts://localhost:{port}/open/x -m x --cafile {}",
                b.path("missing.crt")
            ),
            "--cafile",
        ),
        (
            format!(
                "pub -L ws://localhost:{}/open/x -m x --ws-path /nothing",
                b.ports[WS]
            ),
            "HTTP 404",
        ),
    ] {
        let started = Instant::now();
        let out = run(SIMQTT, &words(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args}: {stderr}");
        assert!(stderr.contains(said), "{args}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args}: took {:?}",
            started.elapsed()
        );
    }
    // --insecure: the CA is still checked, the host name no longer.
    let out = run(
        SIMQTT,
        &words(&format!(
            "pub -L mqtts://127.0.0.1:{port}/open/x -m x --insecure --cafile {}",
            b.path("ca.crt")
        )),
    );
    assert!(out.status.success(), "{out:?}");
    // certify says it once, before any case, with exit 2.
    let out = run(
        SIMQTT,
        &words(&format!(
            "certify --broker mqtts://127.0.0.1:{port} --cafile {} {ROOT}/scenarios/qos/qos0-basic.yaml",
            b.path("ca.crt")
        )),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid for the host name"),
        "{out:?}"
    );
}

/// paho-mqtt over WebSocket and WebSocket over TLS, both ways, against the simqtt broker.
#[test]
fn paho_over_websocket_against_the_simqtt_broker() {
    let b = broker();
    let python = std::env::var_os("SIMQTT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/venv"))
        .join("bin/python");
    assert!(
        python.exists(),
        "paho-mqtt's venv: run scripts/install-peers"
    );
    let script = r#"
import sys, ssl, time
import paho.mqtt.client as mqtt
port, tls, ca, mode, topic = int(sys.argv[1]), sys.argv[2] == "tls", sys.argv[3], sys.argv[4], sys.argv[5]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, transport="websockets")
c.ws_set_options(path="/mqtt")
if tls:
    c.tls_set(ca_certs=ca)
got = []
def on_message(client, userdata, msg):
    print(msg.topic, msg.payload.decode(), flush=True)
    got.append(msg)
c.on_message = on_message
c.connect("localhost", port, 30)
c.loop_start()
if mode == "pub":
    c.publish(topic, "from-paho", qos=1).wait_for_publish(10)
else:
    c.subscribe(topic, qos=1)
    deadline = time.time() + 20
    while not got and time.time() < deadline:
        time.sleep(0.02)
c.disconnect()
c.loop_stop()
sys.exit(0 if mode == "pub" or got else 1)
"#;
    let script_path = b.dir.path().join("paho_ws.py");
    std::fs::write(&script_path, script).unwrap();
    let python = python.display().to_string();
    let ca = b.path("ca.crt");
    for (port, tls, url) in [
        (
            b.ports[WS],
            "plain",
            format!("ws://localhost:{}", b.ports[WS]),
        ),
        (
            b.ports[WSS],
            "tls",
            format!("wss://localhost:{}", b.ports[WSS]),
        ),
    ] {
        let paho = |mode: &str, topic: &str| {
            vec![
                script_path.display().to_string(),
                port.to_string(),
                tls.to_string(),
                ca.clone(),
                mode.to_string(),
                topic.to_string(),
            ]
        };
        let ca_flag = if tls == "tls" {
            format!(" --cafile {ca}")
        } else {
            String::new()
        };
        // paho publishes, simqtt sub (over the same transport) receives.
        let out = deliver(
            (
                SIMQTT,
                words(&format!("sub -L {url}/open/paho -v{ca_flag}")),
            ),
            (&python, paho("pub", "open/paho")),
            "open/paho from-paho",
        );
        assert!(out.contains("open/paho from-paho"));
        // simqtt publishes, paho receives.
        let out = deliver(
            (&python, paho("sub", "open/to-paho")),
            (
                SIMQTT,
                words(&format!(
                    "pub -L {url}/open/to-paho -m to-paho -q 1{ca_flag}"
                )),
            ),
            "open/to-paho to-paho",
        );
        assert!(out.contains("open/to-paho to-paho"));
    }
}

/// A raw WebSocket client: CONNECT split over three frames, then SUBSCRIBE and PUBLISH in one
/// frame ([MQTT-6.0.0-2]); the broker answers CONNACK, SUBACK and the PUBLISH.
#[test]
fn packets_split_over_frames_and_packed_in_one_frame() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let b = broker();
    let port = b.ports[WS];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut request = format!("ws://127.0.0.1:{port}/mqtt")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "mqtt");
        let connect: &[u8] = &[
            0x10, 0x0F, // CONNECT, remaining length 15
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // "MQTT", level 4 (3.1.1)
            0x02, 0x00, 0x3C, // clean session, keep alive 60
            0x00, 0x03, b'r', b'a', b'w', // client id "raw"
        ];
        for part in [&connect[..3], &connect[3..9], &connect[9..]] {
            ws.send(Message::Binary(part.to_vec().into()))
                .await
                .unwrap();
        }
        let mut both = vec![
            0x82, 0x0B, // SUBSCRIBE, remaining length 11
            0x00, 0x01, // packet id 1
            0x00, 0x06, b'o', b'p', b'e', b'n', b'/', b'w', // filter "open/w"
            0x00, // QoS 0
        ];
        both.extend_from_slice(&[
            0x30, 0x0A, // PUBLISH QoS 0, remaining length 10
            0x00, 0x06, b'o', b'p', b'e', b'n', b'/', b'w', // topic "open/w"
            b'h', b'i', // payload
        ]);
        ws.send(Message::Binary(both.into())).await.unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 4 + 5 + 12 {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Binary(data)))) => got.extend_from_slice(&data),
                Ok(Some(Ok(_))) => {}
                other => panic!("{other:?} after {got:02x?}"),
            }
        }
        assert_eq!(
            got,
            [
                0x20, 0x02, 0x00, 0x00, // CONNACK accepted
                0x90, 0x03, 0x00, 0x01, 0x00, // SUBACK id 1, granted QoS 0
                0x30, 0x0A, 0x00, 0x06, b'o', b'p', b'e', b'n', b'/', b'w', b'h',
                b'i', // PUBLISH
            ]
        );
        // A text frame is not MQTT ([MQTT-6.0.0-1]): the broker closes the connection.
        ws.send(Message::Text("hello".into())).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "the broker kept the connection");
    });
}

/// TLS 1.2 and 1.3: the default listener takes either; one with tls_version = "tlsv1.3"
/// refuses a client that speaks only 1.2.
#[test]
fn tls_versions() {
    let config = format!(
        "{CONFIG}{LISTENERS}\n[[listener]]\nlisten = \"127.0.0.1:0\"\ncertfile = \"server.crt\"\nkeyfile = \"server.key\"\ntls_version = \"tlsv1.3\"\n"
    );
    let b = start_broker(&config, 6);
    let ca = b.path("ca.crt");
    for (port, version, ok) in [
        (b.ports[MQTTS], "tlsv1.2", true),
        (b.ports[MQTTS], "tlsv1.3", true),
        (b.ports[5], "tlsv1.3", true),
    ] {
        let out = run(
            SIMQTT,
            &words(&format!(
                "pub -L mqtts://localhost:{port}/open/v -m x --cafile {ca} --tls-version {version}"
            )),
        );
        assert_eq!(out.status.success(), ok, "{port} {version}: {out:?}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let negotiated = |port: u16| {
        runtime.block_on(async {
            let mut roots = rustls::RootCertStore::empty();
            for cert in simqtt::transport::tls::load_certs("ca", Path::new(&ca)).unwrap() {
                roots.add(cert).unwrap();
            }
            #[allow(deprecated)]
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await
                .map(|tls| tls.get_ref().1.protocol_version())
        })
    };
    assert_eq!(
        negotiated(b.ports[MQTTS]).unwrap(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert!(negotiated(b.ports[5]).is_err(), "a 1.3-only listener");
}

#[test]
fn listener_mistakes_name_the_listener_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tls_support::write_certs(dir.path());
    std::fs::write(dir.path().join("garbage.crt"), "not a certificate\n").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let tls = |cert: &str, key: &str, extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\ncertfile = \"{cert}\"\nkeyfile = \"{key}\"\n{extra}"
        )
    };
    for (config, said) in [
        (
            tls("missing.crt", "server.key", ""),
            vec!["[[listener]] 1", "broker.toml", "certfile", "missing.crt", "cannot read"],
        ),
        (
            tls("server.crt", "alice.key", ""),
            vec!["[[listener]] 1", "alice.key", "does not belong to the certificate", "server.crt"],
        ),
        (
            tls("server.crt", "server.key", "cafile = \"garbage.crt\"\n"),
            vec!["[[listener]] 1", "cafile", "garbage.crt", "holds no certificate"],
        ),
        (
            format!("listen = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:{taken_port}\"\nprotocol = \"websockets\"\n"),
            vec!["[[listener]] 1", &format!("127.0.0.1:{taken_port}"), "cannot listen", "in use"],
        ),
        (
            tls("server.crt", "server.key", "use_identity_as_username = true\n"),
            vec!["[[listener]] 1", "use_identity_as_username needs require_certificate"],
        ),
    ] {
        std::fs::write(dir.path().join("broker.toml"), &config).unwrap();
        let mut child = Command::new(SIMQTT)
            .args(["broker", "--config", "broker.toml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{config}: the broker started");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{config}");
        for needle in said {
            assert!(stderr.contains(needle), "{config}: no {needle:?} in {stderr}");
        }
    }
    drop(taken);
}

/// mosquitto's TLS listener (with client certificates required), from the simqtt CLI.
#[test]
fn the_simqtt_cli_against_mosquittos_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    tls_support::write_certs(dir.path());
    let port = free_port();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nlog_dest stderr\n",
            p("ca.crt"),
            p("server.crt"),
            p("server.key")
        ),
    )
    .unwrap();
    let mut mosquitto = Command::new(mosquitto_path())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(mosquitto.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tls = format!(
        "--cafile {} --cert {} --key {}",
        p("ca.crt"),
        p("alice.crt"),
        p("alice.key")
    );
    let out = deliver(
        (
            SIMQTT,
            words(&format!("sub -L mqtts://localhost:{port}/m/t -v {tls}")),
        ),
        (
            SIMQTT,
            words(&format!(
                "pub -L mqtts://localhost:{port}/m/t -m to-mosquitto -q 2 {tls}"
            )),
        ),
        "m/t to-mosquitto",
    );
    assert!(out.contains("m/t to-mosquitto"));
    // mosquitto_sub beside it sees what simqtt publishes.
    let out = deliver(
        (
            "mosquitto_sub",
            words(&format!("-h localhost -p {port} -t m/u -v {tls}")),
        ),
        (
            SIMQTT,
            words(&format!(
                "pub -h localhost -p {port} -t m/u -m both-ways -q 1 {tls}"
            )),
        ),
        "m/u both-ways",
    );
    assert!(out.contains("m/u both-ways"));
    // Without a client certificate mosquitto ends the handshake: a clear error, quickly.
    let started = Instant::now();
    let out = run(
        SIMQTT,
        &words(&format!(
            "pub -L mqtts://localhost:{port}/m/t -m x --cafile {}",
            p("ca.crt")
        )),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("TLS: the broker ended the TLS session with the alert CertificateRequired: it requires a client certificate"),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto_path() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

/// Certification over TLS and WebSocket: raw packets, a kick (takeover) and the fault layer go
/// through the same transport; the report names it.
#[test]
fn certify_over_mqtts_and_wss() {
    // No ACL: the scenarios use their own topics.
    let b = start_broker(&format!("listen = \"127.0.0.1:0\"\n{LISTENERS}"), 5);
    let ca = b.path("ca.crt");
    let files = [
        "scenarios/qos/qos1-basic.yaml",
        "scenarios/qos/raw-flows-v311.yaml",
        "scenarios/reconnect/reconnect-after-kick.yaml",
        "scenarios/faults/duplicate-inbound-qos1-at-least-once.yaml",
    ]
    .map(|f| format!("{ROOT}/{f}"))
    .join(" ");
    for (url, transport) in [
        (
            format!("mqtts://localhost:{}", b.ports[MQTTS]),
            "TLS over TCP",
        ),
        (
            format!("wss://localhost:{}/mqtt", b.ports[WSS]),
            "WebSocket over TLS",
        ),
    ] {
        let report = b.dir.path().join("report.md");
        let out = run(
            SIMQTT,
            &words(&format!(
                "certify --broker {url} --cafile {ca} --report {} {files}",
                report.display()
            )),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{url}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("4 passed, 0 failed, 0 inconclusive, 0 skipped"),
            "{url}: {stdout}"
        );
        let report = std::fs::read_to_string(report).unwrap();
        assert!(report.contains(&format!("{url} ({transport})")), "{report}");
    }
}

/// What certify finds over mosquitto's TLS listener is what it finds over its plain one.
#[test]
fn certify_mosquitto_over_tls_matches_plain_tcp() {
    let dir = tempfile::tempdir().unwrap();
    tls_support::write_certs(dir.path());
    let (plain, tls) = (free_port(), free_port());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {plain} 127.0.0.1\nallow_anonymous true\nlistener {tls} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            p("server.crt"),
            p("server.key")
        ),
    )
    .unwrap();
    let mut mosquitto = Command::new(mosquitto_path())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let files = [
        "scenarios/qos/qos2-basic.yaml",
        "scenarios/qos/raw-flows-v5.yaml",
        "scenarios/malformed/subscribe-v311.yaml",
    ]
    .map(|f| format!("{ROOT}/{f}"))
    .join(" ");
    let verdicts = |args: String| {
        let json = dir.path().join("report.json");
        let out = run(
            SIMQTT,
            &words(&format!("certify {args} --json {} {files}", json.display())),
        );
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        let report: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args}: {e}: {out:?}"));
        let mut cases: Vec<String> = report["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c["scenario"], c["verdict"]))
            .collect();
        cases.sort();
        cases
    };
    let over_tcp = verdicts(format!("--broker mqtt://127.0.0.1:{plain}"));
    let over_tls = verdicts(format!(
        "--broker mqtts://localhost:{tls} --cafile {}",
        p("ca.crt")
    ));
    assert_eq!(over_tcp.len(), 3, "{over_tcp:?}");
    assert_eq!(over_tls, over_tcp);
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    let _ = std::io::stdout().flush();
}

/// The node packages of the WebSocket interop tests (scripts/install-peers puts them under
/// $BENCH_PEERS_HOME/node, default ~/.cache/simqtt-bench-peers/node).
fn node_modules() -> PathBuf {
    let home = std::env::var_os("BENCH_PEERS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/simqtt-bench-peers")
        });
    let modules = home.join("node/node_modules");
    for package in ["mqtt", "ws", "aedes"] {
        assert!(
            modules.join(package).join("package.json").exists(),
            "npm package {package} is not in {}: run scripts/install-peers",
            modules.display()
        );
    }
    assert!(
        Command::new("node").arg("--version").output().is_ok(),
        "node is not installed: run scripts/install-peers"
    );
    modules
}

/// MQTT.js: connect to URL (trusting CA unless `-`), then `pub` one QoS 1 message or `sub`
/// and print the first message as "TOPIC PAYLOAD".
const MQTTJS: &str = r#"
const mqtt = require('mqtt');
const fs = require('fs');
const [url, ca, mode, topic, version] = process.argv.slice(2);
const options = { protocolVersion: Number(version), connectTimeout: 10000, reconnectPeriod: 0 };
if (ca !== '-') options.ca = fs.readFileSync(ca);
const client = mqtt.connect(url, options);
const fail = (what) => { console.error(String(what)); process.exit(1); };
client.on('error', fail);
client.on('connect', () => {
  if (mode === 'pub') {
    client.publish(topic, 'from-mqttjs', { qos: 1 }, (e) => e ? fail(e) : client.end(false, () => process.exit(0)));
  } else {
    client.subscribe(topic, { qos: 1 }, (e) => { if (e) fail(e); });
  }
});
client.on('message', (t, payload) => {
  console.log(t + ' ' + payload.toString());
  client.end(false, () => process.exit(0));
});
setTimeout(() => fail('no answer within 20 s'), 20000);
"#;

/// MQTT.js (npm `mqtt`) over WebSocket and WebSocket over TLS, MQTT 3.1.1 and 5.0, both ways,
/// against the simqtt broker.
#[test]
fn mqttjs_over_websocket_against_the_simqtt_broker() {
    // deliver() starts node without its own environment: MQTT.js is found through NODE_PATH.
    std::env::set_var("NODE_PATH", node_modules());
    let b = broker();
    let script = b.dir.path().join("mqttjs.js");
    std::fs::write(&script, MQTTJS).unwrap();
    let ca = b.path("ca.crt");
    for (url, tls) in [
        (format!("ws://localhost:{}", b.ports[WS]), false),
        (format!("wss://localhost:{}", b.ports[WSS]), true),
    ] {
        for (version, simqtt_version) in [("4", "mqttv311"), ("5", "mqttv5")] {
            let mqttjs = |mode: &str, topic: &str| {
                vec![
                    script.display().to_string(),
                    format!("{url}/mqtt"),
                    if tls { ca.clone() } else { "-".into() },
                    mode.to_string(),
                    topic.to_string(),
                    version.to_string(),
                ]
            };
            let ca_flag = if tls {
                format!(" --cafile {ca}")
            } else {
                String::new()
            };
            let node = |args: Vec<String>| -> (&'static str, Vec<String>) { ("node", args) };
            // MQTT.js publishes, simqtt sub receives.
            let topic = format!("open/mqttjs-{version}");
            let out = deliver(
                (
                    SIMQTT,
                    words(&format!(
                        "sub -L {url}/{topic} -v -V {simqtt_version}{ca_flag}"
                    )),
                ),
                node(mqttjs("pub", &topic)),
                &format!("{topic} from-mqttjs"),
            );
            assert!(
                out.contains(&format!("{topic} from-mqttjs")),
                "{url}: {out}"
            );
            // simqtt publishes, MQTT.js receives.
            let topic = format!("open/to-mqttjs-{version}");
            let out = deliver(
                node(mqttjs("sub", &topic)),
                (
                    SIMQTT,
                    words(&format!(
                        "pub -L {url}/{topic} -m to-mqttjs -q 1 -V {simqtt_version}{ca_flag}"
                    )),
                ),
                &format!("{topic} to-mqttjs"),
            );
            assert!(out.contains(&format!("{topic} to-mqttjs")), "{url}: {out}");
        }
    }
}

/// aedes served over WebSocket by `ws` (the `mqtt` subprotocol on /mqtt) on a free port; it
/// prints `listening PORT`.
const AEDES_WS: &str = r#"
const aedesModule = require('aedes');
const { WebSocketServer, createWebSocketStream } = require('ws');
(async () => {
  const broker = aedesModule.Aedes && aedesModule.Aedes.createBroker
    ? await aedesModule.Aedes.createBroker()
    : aedesModule();
  const wss = new WebSocketServer({
    host: '127.0.0.1', port: 0, path: '/mqtt',
    handleProtocols: (offered) => offered.has('mqtt') ? 'mqtt' : false,
  });
  wss.on('connection', (socket) => broker.handle(createWebSocketStream(socket)));
  wss.on('listening', () => console.log('listening ' + wss.address().port));
})();
"#;

/// The simqtt client (sub and pub) against aedes over WebSocket.
#[test]
fn the_simqtt_client_against_aedes_over_websocket() {
    let modules = node_modules();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("aedes_ws.js");
    std::fs::write(&script, AEDES_WS).unwrap();
    let mut aedes = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &modules)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let err = collect(aedes.stderr.take().unwrap());
    let mut line = String::new();
    BufReader::new(aedes.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("aedes did not start: {line:?} {}", err.lock().unwrap()));
    // simqtt's -L takes the topic after the host (the WebSocket path is /mqtt by default).
    let url = format!("ws://127.0.0.1:{port}");
    let out = deliver(
        (SIMQTT, words(&format!("sub -L {url}/a/t -v -q 1"))),
        (
            SIMQTT,
            words(&format!("pub -L {url}/a/t -m via-aedes -q 1")),
        ),
        "a/t via-aedes",
    );
    let _ = aedes.kill();
    let _ = aedes.wait();
    assert!(out.contains("a/t via-aedes"), "{out}");
}
