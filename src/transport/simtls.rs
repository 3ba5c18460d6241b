//! TLS inside the simulation, deterministic: the same scenario and seed make the same
//! handshake bytes, so replay stays byte-identical with `mqtts://` and `wss://` too.
//!
//! rustls draws randomness in three places, and each comes from the run's seed here:
//! - the provider's `SecureRandom` (client and server randoms, session ids, tickets): a
//!   ChaCha20 generator seeded from the run ([`seed_thread`]);
//! - the key exchange: ring's groups generate their ephemeral keys from the operating system,
//!   so the simulation offers one group of its own, X25519 (x25519-dalek) with its secret
//!   drawn from the same generator;
//! - signatures: the broker's certificate and its CA are Ed25519, whose signatures are
//!   deterministic (ECDSA and RSA-PSS would draw from the operating system).
//!
//! The certificates are made at run time from keys drawn from the seed (nothing private is
//! committed). Time comes from the simulated clock: a fixed epoch plus the simulation's
//! elapsed time ([`SimClock`]).
//!
//! The generator lives in a thread-local: a simulation runs on one thread (turmoil steps every
//! host there), and rustls wants its provider's parts as `'static`. [`seed_thread`] installs
//! it for one run and its guard removes it; TLS outside a seeded thread fails to draw rather
//! than fall back to another source.
//!
//! WebSocket: the upgrade's `Sec-WebSocket-Key` is drawn from the same generator
//! ([`websocket_key`]). tungstenite draws each frame's 4-byte masking key itself; a mask
//! changes the bytes on the simulated wire, never their number or timing, so nothing a run
//! observes depends on it.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::time_provider::TimeProvider;
use rustls::{NamedGroup, PeerMisbehaved, RootCertStore};

use super::tls::{server_name, TlsError};

/// The simulated wall clock at the start of every run: 2026-01-01T00:00:00Z.
const EPOCH_SECS: u64 = 1_767_225_600;
/// Mixed into the run's seed so the TLS generator is independent of the run's other draws.
const TLS_STREAM: u64 = 0x7d15_3a7e_11c0_ffee;
/// The key generator's own stream (certificates), apart from the handshakes'.
const KEY_STREAM: u64 = 0x6b65_7973_0000_0001;

thread_local! {
    static RNG: RefCell<Option<ChaCha20Rng>> = const { RefCell::new(None) };
}

/// Removes the thread's generator when the run ends.
#[must_use = "the generator is removed when the guard is dropped"]
pub struct SeedGuard(());

impl Drop for SeedGuard {
    fn drop(&mut self) {
        RNG.with(|r| *r.borrow_mut() = None);
    }
}

/// Seeds this thread's TLS generator for one simulated run.
pub fn seed_thread(seed: u64) -> SeedGuard {
    RNG.with(|r| *r.borrow_mut() = Some(ChaCha20Rng::seed_from_u64(seed ^ TLS_STREAM)));
    SeedGuard(())
}

fn fill(buf: &mut [u8]) -> Result<(), GetRandomFailed> {
    RNG.with(|r| match r.borrow_mut().as_mut() {
        Some(rng) => {
            rng.fill_bytes(buf);
            Ok(())
        }
        None => Err(GetRandomFailed),
    })
}

/// A `Sec-WebSocket-Key` (16 random bytes, base64) drawn from the run's generator, or `None`
/// outside a simulation (tungstenite then draws its own).
pub fn websocket_key() -> Option<String> {
    use base64::Engine;
    let mut key = [0u8; 16];
    fill(&mut key).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(key))
}

#[derive(Debug)]
struct SeededRandom;

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        fill(buf)
    }
}

/// X25519 with its secret drawn from the run's generator.
#[derive(Debug)]
struct SeededX25519;

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut secret = [0u8; 32];
        fill(&mut secret)?;
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Exchange {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| rustls::Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        // An all-zero result: the peer sent a low-order point (RFC 7748 section 6.1).
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

static SEEDED_RANDOM: SeededRandom = SeededRandom;
static SEEDED_X25519: SeededX25519 = SeededX25519;

/// ring's cipher suites, signature checks and key loading, with the seeded generator and key
/// exchange.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.secure_random = &SEEDED_RANDOM;
    provider.kx_groups = vec![&SEEDED_X25519];
    Arc::new(provider)
}

/// The simulated wall clock: [`EPOCH_SECS`] plus the simulation's elapsed time.
#[derive(Debug)]
pub struct SimClock;

impl TimeProvider for SimClock {
    fn current_time(&self) -> Option<UnixTime> {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        Some(UnixTime::since_unix_epoch(
            Duration::from_secs(EPOCH_SECS) + elapsed,
        ))
    }
}

/// An Ed25519 key pair from 32 seed bytes (PKCS#8 v1, RFC 8410).
fn ed25519_pkcs8(seed: [u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    der
}

/// The simulated broker's certificate chain and key, and the CA its clients trust: made at
/// run time from the seed, for the broker's host name.
#[derive(Debug, Clone)]
pub struct SimTls {
    host: String,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    /// The broker's key, PKCS#8.
    key: Vec<u8>,
}

impl SimTls {
    /// A CA and a server certificate for `host`, their keys drawn from `seed`.
    pub fn new(host: &str, seed: u64) -> Result<SimTls, TlsError> {
        let invalid = |what: &str, e: rcgen::Error| TlsError::Invalid(format!("{what}: {e}"));
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ KEY_STREAM);
        let mut key = |what: &str| {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let der = ed25519_pkcs8(seed);
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(der.clone()),
                &rcgen::PKCS_ED25519,
            )
            .map(|pair| (pair, der))
            .map_err(|e| invalid(what, e))
        };
        let (ca_key, _) = key("simulated CA key")?;
        let (server_key, server_der) = key("simulated broker key")?;

        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| invalid("simulated CA", e))?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "simqtt simulation CA");
        let ca = ca_params
            .self_signed(&ca_key)
            .map_err(|e| invalid("simulated CA", e))?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
            .map_err(|e| invalid("simulated broker certificate", e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        let cert = params
            .signed_by(&server_key, &issuer)
            .map_err(|e| invalid("simulated broker certificate", e))?;
        Ok(SimTls {
            host: host.to_string(),
            ca: ca.der().clone(),
            chain: vec![cert.der().clone()],
            key: server_der,
        })
    }

    /// The broker's side: its certificate, no client certificate asked for.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let config = rustls::ServerConfig::builder_with_details(provider(), Arc::new(SimClock))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .map_err(|e| TlsError::Invalid(format!("simulated broker certificate: {e}")))?;
        Ok(Arc::new(config))
    }

    /// A client's side: trusts the simulation's CA and checks the broker's host name.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| TlsError::Invalid(format!("simulated CA: {e}")))?;
        server_name(&self.host)?;
        let config = rustls::ClientConfig::builder_with_details(provider(), Arc::new(SimClock))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Runs one handshake over an in-memory pipe and returns every byte the client wrote.
    async fn handshake_bytes(seed: u64) -> Vec<u8> {
        let _guard = seed_thread(seed);
        let tls = SimTls::new("broker", seed).unwrap();
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config().unwrap());
        let connector = tokio_rustls::TlsConnector::from(tls.client_config().unwrap());
        let recorder = Recorder {
            inner: client_io,
            written: Vec::new(),
        };
        let server = async {
            let mut s = acceptor.accept(server_io).await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"world").await.unwrap();
            s.flush().await.unwrap();
            s
        };
        let client = async {
            let mut c = connector
                .connect(server_name("broker").unwrap(), recorder)
                .await
                .unwrap();
            c.write_all(b"hello").await.unwrap();
            c.flush().await.unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"world");
            c
        };
        let (_s, c) = tokio::join!(server, client);
        c.into_inner().0.written
    }

    struct Recorder {
        inner: tokio::io::DuplexStream,
        written: Vec<u8>,
    }

    impl tokio::io::AsyncRead for Recorder {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let this = &mut *self;
            let result = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
            if let std::task::Poll::Ready(Ok(n)) = &result {
                this.written.extend_from_slice(&buf[..*n]);
            }
            result
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn one_seed_makes_the_same_handshake_bytes_and_another_seed_others() {
        let a = handshake_bytes(7).await;
        let b = handshake_bytes(7).await;
        let c = handshake_bytes(8).await;
        assert!(a.len() > 200, "a handshake and a record: {} bytes", a.len());
        assert_eq!(a, b, "the same seed must give the same bytes");
        assert_ne!(a, c, "another seed must give other randoms and keys");
    }

    #[test]
    fn without_a_seeded_thread_nothing_is_drawn() {
        let mut buf = [0u8; 4];
        assert!(fill(&mut buf).is_err());
        assert!(websocket_key().is_none());
    }
}
