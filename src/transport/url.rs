//! Broker URLs (`mqtt://`, `mqtts://`, `ws://`, `wss://`) and the connector each one needs.
//!
//! ```text
//! mqtt://[USER[:PASSWORD]@]HOST[:PORT][/REST]     plain TCP, port 1883
//! mqtts://…                                       TLS, port 8883
//! ws://HOST[:PORT][/PATH]                         WebSocket, port 80, path /mqtt
//! wss://HOST[:PORT][/PATH]                        WebSocket over TLS, port 443, path /mqtt
//! ```
//!
//! What follows the host is the caller's: a topic for `simqtt pub -L`, the WebSocket path for
//! `--broker`. Ports default as mosquitto (1883/8883) and RFC 6455 (80/443) do.

use std::fmt;
use std::io;
use std::sync::Arc;

use super::tcp::TcpConnector;
use super::tls::{self, ClientTls, TlsError};
use super::ws::{self, DEFAULT_PATH};
use super::{BoxFuture, BoxStream, Connector};

/// How a broker is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    #[default]
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    pub fn websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    /// What a report says the transport was.
    pub fn describe(self) -> &'static str {
        match self {
            Scheme::Mqtt => "TCP",
            Scheme::Mqtts => "TLS over TCP",
            Scheme::Ws => "WebSocket",
            Scheme::Wss => "WebSocket over TLS",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    /// Without brackets for an IPv6 address.
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// What follows `HOST[:PORT]`, without its leading `/`; `None` when nothing (not even a
    /// `/`) follows.
    pub rest: Option<String>,
}

impl BrokerUrl {
    /// Parses `SCHEME://[USER[:PASSWORD]@]HOST[:PORT][/REST]` (no percent-decoding, as
    /// mosquitto's clients). Without `SCHEME://`, `HOST[:PORT]` is taken as `mqtt://`.
    pub fn parse(text: &str) -> Result<BrokerUrl, String> {
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (
                match scheme.to_ascii_lowercase().as_str() {
                    "mqtt" | "tcp" => Scheme::Mqtt,
                    "mqtts" | "ssl" | "tls" => Scheme::Mqtts,
                    "ws" => Scheme::Ws,
                    "wss" => Scheme::Wss,
                    other => {
                        return Err(format!(
                            "{text}: unknown scheme {other}:// (mqtt://, mqtts://, ws:// or wss://)"
                        ))
                    }
                },
                rest,
            ),
            None => (Scheme::Mqtt, text),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p.to_string())),
            None => (rest, None),
        };
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        let (username, password) = match credentials {
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(c.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{text}: unclosed '[' in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{text}: no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{text}: invalid port {p:?}"))?,
            None => scheme.default_port(),
        };
        Ok(BrokerUrl {
            scheme,
            host: host.to_string(),
            port,
            username,
            password,
            rest: path,
        })
    }

    /// `HOST:PORT` for a connector (`[HOST]:PORT` for IPv6).
    pub fn addr(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// The WebSocket path: `/` and what follows the host, or `/mqtt` when nothing does.
    pub fn ws_path(&self) -> String {
        match self.rest.as_deref() {
            None | Some("") => DEFAULT_PATH.to_string(),
            Some(path) => format!("/{path}"),
        }
    }
}

/// `HOST:PORT`, bracketing an IPv6 host.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Everything needed to open a connection to one broker: the scheme, the name TLS checks
/// and WebSocket's `Host` header carry, the WebSocket path, and the TLS client settings.
/// Cheap to clone; `Endpoint::default()` is plain TCP.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub ws_path: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The TLS options `tls` was built from (for rerun hints and reports).
    pub tls_options: ClientTls,
    /// Largest packet a WebSocket frame is allowed to carry in (bounds its buffer).
    pub max_packet_size: usize,
}

impl Endpoint {
    /// The endpoint of `url` with the TLS settings `tls` (used by `mqtts://` and `wss://`;
    /// for the other schemes, giving any TLS file is an error rather than silently unused).
    pub fn new(url: &BrokerUrl, ws_path: String, tls: &ClientTls) -> Result<Endpoint, TlsError> {
        let config = if url.scheme.tls() {
            Some(tls.config()?)
        } else if tls.any_given() || tls.insecure {
            return Err(TlsError::Invalid(format!(
                "TLS options given for a {}:// URL; use mqtts:// or wss://",
                url.scheme
            )));
        } else {
            None
        };
        Ok(Endpoint {
            scheme: url.scheme,
            host: url.host.clone(),
            port: url.port,
            ws_path,
            tls: config,
            tls_options: tls.clone(),
            max_packet_size: crate::codec::DEFAULT_MAX_PACKET_SIZE as usize,
        })
    }

    /// Plain TCP to `host:port`.
    pub fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint {
            scheme: Scheme::Mqtt,
            host: host.to_string(),
            port,
            ws_path: DEFAULT_PATH.to_string(),
            tls: None,
            tls_options: ClientTls::default(),
            max_packet_size: crate::codec::DEFAULT_MAX_PACKET_SIZE as usize,
        }
    }

    /// `HOST:PORT`.
    pub fn addr(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// `SCHEME://HOST:PORT[/PATH]`, for reports and logs.
    pub fn url(&self) -> String {
        if self.scheme.websocket() {
            format!("{}://{}{}", self.scheme, self.addr(), self.ws_path)
        } else {
            format!("{}://{}", self.scheme, self.addr())
        }
    }

    /// The TLS options as command-line flags (`--cafile FILE …`), for rerun hints.
    pub fn tls_flags(&self) -> Vec<String> {
        let t = &self.tls_options;
        let mut out = Vec::new();
        for (flag, path) in [
            ("--cafile", &t.cafile),
            ("--capath", &t.capath),
            ("--cert", &t.cert),
            ("--key", &t.key),
        ] {
            if let Some(path) = path {
                out.push(flag.to_string());
                out.push(path.display().to_string());
            }
        }
        if t.insecure {
            out.push("--insecure".into());
        }
        if t.version != Default::default() {
            out.push("--tls-version".into());
            out.push(t.version.to_string());
        }
        out
    }

    /// A connector for this endpoint over real TCP.
    pub fn connector(&self) -> Result<Arc<dyn Connector>, TlsError> {
        self.wrap(Arc::new(TcpConnector))
    }

    /// This endpoint's TLS and WebSocket layers over the streams `inner` opens (whatever
    /// address it is given: a fault proxy's, in certification).
    pub fn wrap(&self, inner: Arc<dyn Connector>) -> Result<Arc<dyn Connector>, TlsError> {
        if self.scheme == Scheme::Mqtt {
            return Ok(inner);
        }
        let mut endpoint = self.clone();
        if endpoint.scheme.tls() && endpoint.tls.is_none() {
            endpoint.tls = Some(ClientTls::default().config()?);
        }
        let server_name = match endpoint.scheme.tls() {
            true => Some(tls::server_name(&endpoint.host)?),
            false => None,
        };
        Ok(Arc::new(Layered {
            inner,
            endpoint,
            server_name,
        }))
    }

    /// TLS and/or the WebSocket upgrade over a connected stream.
    pub async fn upgrade(&self, stream: BoxStream) -> io::Result<BoxStream> {
        let server_name = match self.scheme.tls() {
            true => Some(tls::server_name(&self.host).map_err(invalid)?),
            false => None,
        };
        upgrade(self, server_name.as_ref(), stream, &self.addr()).await
    }
}

fn invalid(e: TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

async fn upgrade(
    endpoint: &Endpoint,
    server_name: Option<&rustls::pki_types::ServerName<'static>>,
    mut stream: BoxStream,
    addr: &str,
) -> io::Result<BoxStream> {
    if let Some(name) = server_name {
        let config = match &endpoint.tls {
            Some(c) => c.clone(),
            None => ClientTls::default().config().map_err(invalid)?,
        };
        stream = tls::connect(stream, config, name.clone(), addr).await?;
    }
    if endpoint.scheme.websocket() {
        stream = Box::new(
            ws::connect(
                stream,
                &endpoint.addr(),
                &endpoint.ws_path,
                endpoint.max_packet_size,
            )
            .await?,
        );
    }
    Ok(stream)
}

/// An endpoint's TLS and WebSocket over the streams of another connector.
struct Layered {
    inner: Arc<dyn Connector>,
    endpoint: Endpoint,
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl Connector for Layered {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = self.inner.connect(addr).await?;
            upgrade(&self.endpoint, self.server_name.as_ref(), stream, addr).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_ports_and_paths() {
        let u = BrokerUrl::parse("mqtts://alice:pw@broker.example/a/b").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.rest.as_deref()),
            (Scheme::Mqtts, "broker.example", 8883, Some("a/b"))
        );
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("alice"), Some("pw"))
        );
        let u = BrokerUrl::parse("ws://127.0.0.1:8083").unwrap();
        assert_eq!(
            (u.scheme, u.port, u.ws_path()),
            (Scheme::Ws, 8083, "/mqtt".to_string())
        );
        let u = BrokerUrl::parse("wss://h/ws").unwrap();
        assert_eq!((u.port, u.ws_path()), (443, "/ws".to_string()));
        let u = BrokerUrl::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.addr()),
            ("::1", 1884, "[::1]:1884".to_string())
        );
        let u = BrokerUrl::parse("localhost:1885").unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Mqtt, 1885));
        assert_eq!(BrokerUrl::parse("h").unwrap().port, 1883);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(BrokerUrl::parse("http://h")
            .unwrap_err()
            .contains("unknown scheme http://"));
        assert!(BrokerUrl::parse("mqtt://h:99999")
            .unwrap_err()
            .contains("invalid port"));
        assert!(BrokerUrl::parse("mqtt://:1883")
            .unwrap_err()
            .contains("no host"));
        assert!(BrokerUrl::parse("mqtt://[::1")
            .unwrap_err()
            .contains("unclosed"));
    }

    #[test]
    fn tls_files_on_a_plain_url_are_refused() {
        let url = BrokerUrl::parse("mqtt://h").unwrap();
        let tls = ClientTls {
            cafile: Some("ca.crt".into()),
            ..ClientTls::default()
        };
        let e = Endpoint::new(&url, String::new(), &tls)
            .unwrap_err()
            .to_string();
        assert!(e.contains("use mqtts://"), "{e}");
    }
}
