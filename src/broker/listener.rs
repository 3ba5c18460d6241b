//! `[[listener]]` tables of the broker configuration: more ports beside `listen`, each with its
//! own transport (MQTT or WebSocket, plain or TLS) and TLS settings, spelt as mosquitto.conf
//! spells them (`certfile`, `keyfile`, `cafile`, `require_certificate`,
//! `use_identity_as_username`, `tls_version`, `protocol websockets`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::transport::listen::ListenerSpec;
use crate::transport::tls::{ServerTls, TlsVersion};
use crate::transport::ws::DEFAULT_PATH;

/// What a listener speaks on top of TCP (or TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// MQTT straight on the stream.
    #[default]
    Mqtt,
    /// MQTT in WebSocket binary frames (subprotocol `mqtt`) after an HTTP upgrade.
    Websockets,
}

/// One `[[listener]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `HOST:PORT` to bind (port 0: any free port, printed at start).
    pub listen: String,
    /// `"mqtt"` (default) or `"websockets"`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// WebSocket path clients must ask for. Default `/mqtt`. Websockets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_path: Option<String>,
    /// Server certificate (PEM, the chain after it); with `keyfile`, turns TLS on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certfile: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are checked against. A client that
    /// presents a certificate not signed by them is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cafile: Option<PathBuf>,
    /// Refuse clients that present no certificate (mutual TLS). Needs `cafile`.
    #[serde(default)]
    pub require_certificate: bool,
    /// The client certificate's common name (CN) is the client's user name: the password
    /// file is not consulted for it, the ACL is. Needs `require_certificate`.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Lowest TLS version accepted: `"tlsv1.2"` (default: 1.2 and 1.3) or `"tlsv1.3"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
}

impl ListenerConfig {
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub fn scheme(&self) -> &'static str {
        match (self.certfile.is_some(), self.protocol) {
            (false, ListenerProtocol::Mqtt) => "mqtt",
            (true, ListenerProtocol::Mqtt) => "mqtts",
            (false, ListenerProtocol::Websockets) => "ws",
            (true, ListenerProtocol::Websockets) => "wss",
        }
    }

    /// Checks how the settings fit together (not the files: `spec` users load them).
    pub fn check(&self) -> Result<(), String> {
        let tls = self.certfile.is_some() || self.keyfile.is_some();
        if self.certfile.is_some() != self.keyfile.is_some() {
            return Err("certfile and keyfile go together (TLS needs both)".into());
        }
        if !tls {
            for (set, name) in [
                (self.cafile.is_some(), "cafile"),
                (self.require_certificate, "require_certificate"),
                (self.use_identity_as_username, "use_identity_as_username"),
                (self.tls_version.is_some(), "tls_version"),
            ] {
                if set {
                    return Err(format!("{name} needs TLS: set certfile and keyfile too"));
                }
            }
        }
        if self.require_certificate && self.cafile.is_none() {
            return Err(
                "require_certificate needs cafile (the CA client certificates are checked against)"
                    .into(),
            );
        }
        if self.use_identity_as_username && !self.require_certificate {
            return Err(
                "use_identity_as_username needs require_certificate = true (the name comes from the client's certificate)"
                    .into(),
            );
        }
        if let Some(v) = &self.tls_version {
            TlsVersion::parse(v).map_err(|e| format!("tls_version = {v:?}: {e}"))?;
        }
        match (&self.websocket_path, self.protocol) {
            (Some(_), ListenerProtocol::Mqtt) => {
                return Err("websocket_path needs protocol = \"websockets\"".into())
            }
            (Some(p), ListenerProtocol::Websockets) if !p.starts_with('/') => {
                return Err(format!("websocket_path = {p:?} must start with '/'"))
            }
            _ => {}
        }
        Ok(())
    }

    /// The transport's view of this listener.
    pub fn spec(&self, max_packet_size: u32) -> Result<ListenerSpec, String> {
        self.check()?;
        let tls = match (&self.certfile, &self.keyfile) {
            (Some(certfile), Some(keyfile)) => Some(ServerTls {
                certfile: certfile.clone(),
                keyfile: keyfile.clone(),
                cafile: self.cafile.clone(),
                require_certificate: self.require_certificate,
                version: match &self.tls_version {
                    Some(v) => TlsVersion::parse(v)?,
                    None => TlsVersion::default(),
                },
            }),
            _ => None,
        };
        Ok(ListenerSpec {
            addr: self.listen.clone(),
            tls,
            websocket_path: match self.protocol {
                ListenerProtocol::Mqtt => None,
                ListenerProtocol::Websockets => Some(
                    self.websocket_path
                        .clone()
                        .unwrap_or_else(|| DEFAULT_PATH.to_string()),
                ),
            },
            use_identity_as_username: self.use_identity_as_username,
            max_packet_size: max_packet_size as usize,
        })
    }

    /// The paths in this table, to resolve them against the config file's directory.
    pub fn paths_mut(&mut self) -> [&mut Option<PathBuf>; 3] {
        [&mut self.certfile, &mut self.keyfile, &mut self.cafile]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ListenerConfig, String> {
        let l: ListenerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        l.check()?;
        Ok(l)
    }

    #[test]
    fn schemes() {
        let l = parse("listen = \"127.0.0.1:8883\"\ncertfile = \"s.crt\"\nkeyfile = \"s.key\"")
            .unwrap();
        assert_eq!(l.scheme(), "mqtts");
        let l = parse("listen = \"127.0.0.1:8083\"\nprotocol = \"websockets\"").unwrap();
        assert_eq!(l.scheme(), "ws");
        assert_eq!(
            l.spec(100).unwrap().websocket_path.as_deref(),
            Some("/mqtt")
        );
    }

    #[test]
    fn the_documented_listeners_parse() {
        let text = include_str!("../../docs/broker.toml");
        let start = text.find("# --- listeners (example) ---").unwrap();
        let end = text.find("# --- end of listeners ---").unwrap();
        let uncommented: String = text[start..end]
            .lines()
            .skip(1)
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let config = crate::broker::BrokerConfig::from_toml(&uncommented).unwrap();
        let schemes: Vec<_> = config.listeners.iter().map(|l| l.scheme()).collect();
        assert_eq!(schemes, ["mqtts", "ws", "wss", "mqtts"]);
        assert!(config.listeners[3].use_identity_as_username);
    }

    #[test]
    fn settings_that_do_not_fit_together_are_refused() {
        for (text, why) in [
            ("certfile = \"c\"", "go together"),
            ("cafile = \"c\"", "cafile needs TLS"),
            ("certfile = \"c\"\nkeyfile = \"k\"\nrequire_certificate = true", "needs cafile"),
            (
                "certfile = \"c\"\nkeyfile = \"k\"\ncafile = \"a\"\nuse_identity_as_username = true",
                "needs require_certificate",
            ),
            ("certfile = \"c\"\nkeyfile = \"k\"\ntls_version = \"tlsv1.1\"", "1.2 and 1.3 only"),
            ("websocket_path = \"/ws\"", "needs protocol"),
            ("protocol = \"websockets\"\nwebsocket_path = \"ws\"", "must start with"),
            ("protocol = \"http\"", "unknown variant"),
            ("port = 1", "unknown field"),
        ] {
            let e = parse(&format!("listen = \"127.0.0.1:1\"\n{text}")).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
