//! TLS over any byte stream, with rustls (ring provider; TLS 1.2 and 1.3).
//!
//! - [`ClientTls`]: what a client trusts and presents (mosquitto_pub's `--cafile`, `--capath`,
//!   `--cert`, `--key`, `--insecure`, `--tls-version`), turned into a rustls `ClientConfig`;
//!   [`connect`] speaks TLS over whatever stream it is given (`url::Endpoint` puts it over a
//!   connector's streams, so the fault proxy below still sees bytes).
//! - [`ServerTls`]: a listener's certificate, key and optional client-certificate CA
//!   (mosquitto's `certfile`, `keyfile`, `cafile`, `require_certificate`, `tls_version`).
//! - [`common_name`]: the subject CN of a client certificate (`use_identity_as_username`).
//!
//! Errors name the file and say what is wrong with it in words (a missing file, no certificate
//! in it, a key that does not match the certificate), and a failed handshake says why (an
//! unknown CA, a host name the certificate does not cover) rather than only rustls' variant.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::BoxStream;

/// The lowest TLS version a side accepts (mosquitto's `tls_version`, which is a minimum on
/// both sides). rustls speaks 1.2 and 1.3 only, so `tlsv1.1` is refused rather than quietly
/// raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 or 1.3 (the default).
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

impl TlsVersion {
    /// `tlsv1.2` / `tlsv1.3`, as mosquitto spells them.
    pub fn parse(text: &str) -> Result<TlsVersion, String> {
        match text {
            "tlsv1.2" => Ok(TlsVersion::V1_2),
            "tlsv1.3" => Ok(TlsVersion::V1_3),
            "tlsv1.1" | "tlsv1" => Err(format!(
                "{text}: simqtt speaks TLS 1.2 and 1.3 only (rustls has no older version); use tlsv1.2 or tlsv1.3"
            )),
            other => Err(format!("{other}: unknown TLS version (tlsv1.2 or tlsv1.3)")),
        }
    }

    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static FROM_1_2: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_1_3: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::V1_2 => &FROM_1_2,
            TlsVersion::V1_3 => &ONLY_1_3,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "tlsv1.2",
            TlsVersion::V1_3 => "tlsv1.3",
        })
    }
}

/// Why a TLS configuration cannot be built. `setting` is the flag or key that named the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {}: cannot read it: {error}", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{setting} {}: {why}", path.display())]
    Content {
        setting: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// ring: it builds with a C compiler alone, where aws-lc-rs (rustls' default, the one with
/// post-quantum key exchange, hence ring's deprecation notice) wants more of the toolchain.
/// Every classical suite of TLS 1.2 and 1.3 that mosquitto and the brokers certified here
/// offer is there.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file; an error when there is none.
pub fn load_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|error| TlsError::Read {
        setting,
        path: path.to_path_buf(),
        error,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Content {
            setting,
            path: path.to_path_buf(),
            why: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            setting,
            path: path.to_path_buf(),
            why: "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|error| TlsError::Read {
        setting,
        path: path.to_path_buf(),
        error,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Content {
        setting,
        path: path.to_path_buf(),
        why: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (expected -----BEGIN PRIVATE KEY----- or an RSA/EC key)"
                    .to_string()
            }
            other => format!("not a PEM private key ({other})"),
        },
    })
}

/// Adds the CA certificates of `cafile` (a PEM file) and of every file in `capath` (a
/// directory, as OpenSSL's `-CApath`: files that hold no certificate are skipped).
fn roots(
    cafile: Option<&Path>,
    cafile_setting: &'static str,
    capath: Option<&Path>,
) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let mut add = |setting: &'static str, path: &Path, certs: Vec<CertificateDer<'static>>| {
        for cert in certs {
            store.add(cert).map_err(|e| TlsError::Content {
                setting,
                path: path.to_path_buf(),
                why: format!("a certificate there is not a usable CA certificate ({e})"),
            })?;
        }
        Ok::<(), TlsError>(())
    };
    if let Some(path) = cafile {
        add(cafile_setting, path, load_certs(cafile_setting, path)?)?;
    }
    if let Some(dir) = capath {
        let entries = std::fs::read_dir(dir).map_err(|error| TlsError::Read {
            setting: "--capath",
            path: dir.to_path_buf(),
            error,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut found = 0;
        for file in files {
            if let Ok(certs) = load_certs("--capath", &file) {
                found += certs.len();
                add("--capath", &file, certs)?;
            }
        }
        if found == 0 {
            return Err(TlsError::Content {
                setting: "--capath",
                path: dir.to_path_buf(),
                why: "holds no PEM certificate".into(),
            });
        }
    }
    Ok(store)
}

/// What a client trusts and presents. With neither `cafile` nor `capath`, the system's CA
/// certificates are trusted (as mosquitto_pub does for `mqtts://`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    /// Client certificate (PEM) and its key, for brokers that ask for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Do not check that the broker's certificate is for the host name connected to (the
    /// chain is still checked), as mosquitto's `--insecure`.
    pub insecure: bool,
    pub version: TlsVersion,
}

impl ClientTls {
    /// Whether any TLS option was given (mosquitto_pub turns TLS on with `--cafile`/`--capath`).
    pub fn any_given(&self) -> bool {
        self.cafile.is_some() || self.capath.is_some() || self.cert.is_some() || self.key.is_some()
    }

    pub fn config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let roots = if self.cafile.is_some() || self.capath.is_some() {
            roots(self.cafile.as_deref(), "--cafile", self.capath.as_deref())?
        } else {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(TlsError::Invalid(
                    "no --cafile or --capath given and no system CA certificates found".into(),
                ));
            }
            store
        };
        let provider = provider();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Invalid(format!("CA certificates: {e}")))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(self.version.versions())
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
        } else {
            builder.with_webpki_verifier(verifier)
        };
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let certs = load_certs("--cert", cert)?;
                let key_der = load_key("--key", key)?;
                builder
                    .with_client_auth_cert(certs, key_der)
                    .map_err(|e| TlsError::Content {
                        setting: "--key",
                        path: key.clone(),
                        why: key_error(&e, "--cert"),
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Invalid(
                    "both --cert and --key must be given if one of them is".into(),
                ))
            }
        };
        Ok(Arc::new(config))
    }
}

fn key_error(error: &rustls::Error, cert_setting: &str) -> String {
    match error {
        rustls::Error::InconsistentKeys(_) => {
            format!("this key does not belong to the certificate in {cert_setting}")
        }
        other => format!("unusable key ({other})"),
    }
}

/// `--insecure`: the chain is verified, the host name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS listener's files and policy (mosquitto's listener options of the same names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTls {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    /// CA whose certificates clients may present. Needed by `require_certificate`.
    pub cafile: Option<PathBuf>,
    /// Refuse clients that present no certificate signed by `cafile` (mutual TLS). Without
    /// it, a client may present one (it is verified) or none.
    pub require_certificate: bool,
    pub version: TlsVersion,
}

impl ServerTls {
    pub fn config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.version.versions())
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = match &self.cafile {
            Some(cafile) => {
                let roots = roots(Some(cafile), "cafile", None)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_certificate {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| {
                    TlsError::Content {
                        setting: "cafile",
                        path: cafile.clone(),
                        why: format!("unusable as a client CA ({e})"),
                    }
                })?)
            }
            None if self.require_certificate => {
                return Err(TlsError::Invalid(
                    "require_certificate = true needs a cafile (the CA client certificates are checked against)"
                        .into(),
                ))
            }
            None => builder.with_no_client_auth(),
        };
        let certs = load_certs("certfile", &self.certfile)?;
        let key = load_key("keyfile", &self.keyfile)?;
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Content {
                setting: "keyfile",
                path: self.keyfile.clone(),
                why: key_error(&e, &format!("certfile {}", self.certfile.display())),
            })?;
        Ok(Arc::new(config))
    }
}

/// Says what went wrong in a handshake in words, from the error rustls gave; `peer` is who
/// presented the certificate ("broker" on the client side, "client" on the server side).
pub fn describe(error: &io::Error, peer: &str) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return error.to_string();
    };
    let hint = match peer {
        "broker" => " (check --cafile/--capath)",
        _ => " (check the listener's cafile)",
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                format!("the {peer}'s certificate is not signed by a trusted CA (unknown issuer){hint}")
            }
            CertificateError::NotValidForName => {
                format!("the {peer}'s certificate is not valid for the host name connected to")
            }
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "the {peer}'s certificate is not valid for the host name {:?} (it names {}); connect with a name it names, or --insecure",
                server_name_text(expected),
                if presented.is_empty() {
                    "no host".to_string()
                } else {
                    presented
                        .iter()
                        .map(|p| plain_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the {peer}'s certificate has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the {peer}'s certificate is not valid yet")
            }
            other => format!("the {peer}'s certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => {
            let why = match alert {
                rustls::AlertDescription::CertificateRequired => {
                    ": it requires a client certificate (--cert and --key)"
                }
                rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::CertificateUnknown => {
                    ": it refused the client certificate (not signed by a CA it trusts?)"
                }
                rustls::AlertDescription::ProtocolVersion => {
                    ": no TLS version both sides accept (--tls-version)"
                }
                _ => "",
            };
            format!("the {peer} ended the TLS session with the alert {alert:?}{why}")
        }
        rustls::Error::NoCertificatesPresented => {
            "the client presented no certificate, and this listener requires one".into()
        }
        other => other.to_string(),
    }
}

/// `DnsName("localhost")` (how rustls lists the names a certificate presents) as `localhost`.
fn plain_name(presented: &str) -> &str {
    match (presented.find("(\""), presented.rfind("\")")) {
        (Some(start), Some(end)) if start + 2 <= end => &presented[start + 2..end],
        _ => presented,
    }
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// The name a broker's certificate is checked against: the host of its URL (an IP address
/// is checked against the certificate's IP addresses).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Invalid(format!("{host:?} is not a host name TLS can check ({e})")))
}

/// The client side of a handshake over `stream`; `addr` only names the broker in the error,
/// which says why in words ([`describe`]), as do later errors of the session (under TLS 1.3 a
/// broker refuses a client certificate only after the client's side of the handshake is done,
/// so that refusal comes with the first read).
pub async fn connect(
    stream: BoxStream,
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    addr: &str,
) -> io::Result<BoxStream> {
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, stream)
        .await
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "TLS handshake with {addr} failed: {}",
                    describe(&e, "broker")
                ),
            )
        })?;
    Ok(Box::new(Described(tls)))
}

/// A client TLS stream whose errors say what rustls meant, in words.
struct Described(tokio_rustls::client::TlsStream<BoxStream>);

fn reword(error: io::Error) -> io::Error {
    if error
        .get_ref()
        .is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some())
    {
        io::Error::new(error.kind(), format!("TLS: {}", describe(&error, "broker")))
    } else {
        error
    }
}

impl AsyncRead for Described {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf).map_err(reword)
    }
}

impl AsyncWrite for Described {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data).map_err(reword)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(reword)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx).map_err(reword)
    }
}

/// The subject common name (OID 2.5.4.3) of a DER certificate: the first one when there are
/// several, as mosquitto takes it (`X509_NAME_get_index_by_NID(name, NID_commonName, -1)`).
/// `None` when the certificate has no CN or is not a certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
    //   signature AlgorithmIdentifier, issuer Name, validity, subject Name, ... } ... }
    let (_, cert, _) = der_item(der)?;
    let (_, mut tbs, _) = der_item(cert)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() && fields.len() < 6 {
        let (tag, body, rest) = der_item(tbs)?;
        fields.push((tag, body));
        tbs = rest;
    }
    // Skip the explicit [0] version when present.
    let start = usize::from(fields.first()?.0 == 0xA0);
    let (tag, mut subject) = *fields.get(start + 4)?;
    if tag != 0x30 {
        return None;
    }
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
    while !subject.is_empty() {
        let (tag, mut set, rest) = der_item(subject)?;
        subject = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (_, attribute, rest) = der_item(set)?;
            set = rest;
            let (oid_tag, oid, value) = der_item(attribute)?;
            let (value_tag, value, _) = der_item(value)?;
            if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                return Some(match value_tag {
                    // UTF8String, PrintableString, IA5String, TeletexString (as Latin-1).
                    0x0C | 0x13 | 0x16 => String::from_utf8(value.to_vec()).ok()?,
                    0x14 => value.iter().map(|&b| char::from(b)).collect(),
                    // BMPString: UTF-16 big-endian.
                    0x1E => {
                        let units: Vec<u16> = value
                            .chunks(2)
                            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                            .collect();
                        String::from_utf16(&units).ok()?
                    }
                    _ => return None,
                });
            }
        }
    }
    None
}

/// One DER item: (tag, body, what follows). Definite lengths only (DER has no other).
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..count] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[count..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        let der = cert_with(&[
            (rcgen::DnType::OrganizationName, "Acme"),
            (rcgen::DnType::CommonName, "sensor-7"),
        ]);
        assert_eq!(common_name(&der).as_deref(), Some("sensor-7"));
        let der = cert_with(&[(rcgen::DnType::OrganizationName, "Acme")]);
        assert_eq!(common_name(&der), None, "no CN");
        assert_eq!(common_name(b"\x30\x03\x02\x01"), None, "truncated");
        assert_eq!(common_name(&[]), None);
    }

    #[test]
    fn tls_versions_are_spelt_as_mosquitto_spells_them() {
        assert_eq!(TlsVersion::parse("tlsv1.3"), Ok(TlsVersion::V1_3));
        assert_eq!(TlsVersion::parse("tlsv1.2"), Ok(TlsVersion::V1_2));
        assert!(TlsVersion::parse("tlsv1.1")
            .unwrap_err()
            .contains("1.2 and 1.3 only"));
        assert!(TlsVersion::parse("ssl3").is_err());
    }

    #[test]
    fn file_errors_name_the_setting_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = load_certs("certfile", &missing).unwrap_err().to_string();
        assert!(
            e.starts_with("certfile ") && e.contains("nope.pem") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = load_certs("cafile", &empty).unwrap_err().to_string();
        assert!(e.contains("holds no certificate"), "{e}");
        let e = load_key("keyfile", &empty).unwrap_err().to_string();
        assert!(e.contains("holds no private key"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), other.serialize_pem()).unwrap();
        let tls = ServerTls {
            certfile: dir.path().join("c.pem"),
            keyfile: dir.path().join("k.pem"),
            ..ServerTls::default()
        };
        let e = tls.config().unwrap_err().to_string();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        tls.config().unwrap();
    }
}
