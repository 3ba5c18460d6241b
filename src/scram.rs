//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), the MQTT 5.0 enhanced authentication method
//! `SCRAM-SHA-256` that EMQX offers: both ends of the exchange, as pure state machines (no I/O,
//! randomness handed in), so the broker's core and the client's state machine drive them.
//!
//! The exchange in MQTT 5.0 packets (§4.12):
//! ```text
//! CONNECT  Authentication Method "SCRAM-SHA-256", Data client-first  "n,,n=USER,r=CNONCE"
//! AUTH 0x18 (server)  Data server-first  "r=CNONCE+SNONCE,s=SALT,i=ITERATIONS"
//! AUTH 0x18 (client)  Data client-final  "c=biws,r=CNONCE+SNONCE,p=PROOF"
//! CONNACK 0x00        Data server-final  "v=SERVER-SIGNATURE"
//! ```
//! Re-authentication is the same with AUTH 0x19 carrying client-first and AUTH 0x00 the
//! server-final.
//!
//! What the server keeps per user is a [`ScramCredential`]: salt, iteration count, StoredKey
//! and ServerKey (RFC 5802 §3), derived from the password once, when it is set. Checking a
//! proof then costs a handful of HMACs and no PBKDF2 at all: the key stretching is the
//! client's work. User names and passwords are used as their UTF-8 bytes (no SASLprep
//! normalisation); channel binding is not offered (`n` or `y` GS2 headers only), nor an
//! authorisation identity (`a=`).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The MQTT Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-256";
/// The iteration count of new credentials: RFC 7677 §4's minimum (4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// The largest count a client accepts from a server (and a credential may hold): one
/// derivation is the client's to pay, and a hostile server must not make it pay forever.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Salt length of new credentials.
pub const SALT_BYTES: usize = 16;
/// Random bytes in a nonce (base64-encoded on the wire).
pub const NONCE_BYTES: usize = 18;
/// The credential's prefix in a password file (`user:$7$...:SCRAM-SHA-256$...`).
const CREDENTIAL_PREFIX: &str = "SCRAM-SHA-256$";

const KEY_BYTES: usize = 32;
type Key = [u8; KEY_BYTES];

fn hmac(key: &[u8], message: &[u8]) -> Key {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_BYTES];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b.iter())) {
        *o = x ^ y;
    }
    out
}

/// Compares without an early exit (the time taken tells nothing about a guess).
fn constant_time_eq(a: &Key, b: &Key) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// SaltedPassword = Hi(password, salt, i), PBKDF2-HMAC-SHA-256 with one block.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let mut out = [0u8; KEY_BYTES];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow RFC 5802's grammar (or uses what we do not offer).
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client-final's nonce is not the one of this exchange.
    #[error("the nonce does not match this exchange")]
    NonceMismatch,
    /// The client's proof is wrong: wrong password, or a user without SCRAM credentials.
    #[error("the client's proof is wrong (bad user name or password)")]
    BadProof,
    /// The server's signature is wrong: the server does not know the password.
    #[error("the server's signature is wrong: it does not know the password")]
    BadServerSignature,
    /// The server asked for more iterations than `MAX_ITERATIONS`.
    #[error("the server asks for {0} iterations, more than {MAX_ITERATIONS}")]
    TooManyIterations(u32),
    /// The server-final is an error (`e=...`).
    #[error("the server refused: {0}")]
    ServerError(String),
}

/// What the server keeps per user (RFC 5802 §3): never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub iterations: u32,
    pub salt: Vec<u8>,
    stored_key: Key,
    server_key: Key,
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // StoredKey admits an offline guess at the password: keep it out of logs.
        f.write_str("ScramCredential(..)")
    }
}

impl ScramCredential {
    /// Derives the credential of `password` (one PBKDF2-SHA-256 of `iterations`).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramCredential {
        let salted = salted_password(password, salt, iterations);
        ScramCredential {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&hmac(&salted, b"Client Key")),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Parses `SCRAM-SHA-256$ITERATIONS$SALT$STOREDKEY$SERVERKEY` (base64 fields).
    pub fn parse(text: &str) -> Result<ScramCredential, String> {
        let expected = "expected `SCRAM-SHA-256$ITERATIONS$SALT$STOREDKEY$SERVERKEY` (as written \
                        by `simqtt passwd --scram`)";
        let rest = text
            .trim()
            .strip_prefix(CREDENTIAL_PREFIX)
            .ok_or_else(|| expected.to_string())?;
        let [iterations, salt, stored, server] = rest.split('$').collect::<Vec<_>>()[..] else {
            return Err(expected.to_string());
        };
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|n| (1..=MAX_ITERATIONS).contains(n))
            .ok_or_else(|| {
                format!("SCRAM iteration count `{iterations}` is not a number from 1 to {MAX_ITERATIONS}")
            })?;
        let salt = STANDARD
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or("the SCRAM salt is not base64")?;
        let key = |field: &str, what: &str| {
            STANDARD
                .decode(field)
                .ok()
                .and_then(|k| Key::try_from(k).ok())
                .ok_or_else(|| format!("the SCRAM {what} is not {KEY_BYTES} bytes of base64"))
        };
        Ok(ScramCredential {
            iterations,
            salt,
            stored_key: key(stored, "StoredKey")?,
            server_key: key(server, "ServerKey")?,
        })
    }
}

impl fmt::Display for ScramCredential {
    /// The password file's form (see `parse`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{CREDENTIAL_PREFIX}{}${}${}${}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

/// A nonce from `random` bytes: printable, without `,` (RFC 5802's `printable`).
pub fn nonce(random: &[u8; NONCE_BYTES]) -> String {
    STANDARD.encode(random)
}

/// `saslname`: `,` and `=` escaped.
fn encode_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn decode_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => {
                return Err(ScramError::Malformed(
                    "`=` in a user name not as =2C or =3D",
                ))
            }
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of attribute `name` at the start of `part` (`r=...` → `...`).
fn attribute(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(ScramError::Malformed(
            "a required attribute is missing or out of order",
        ))
}

fn text(data: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))
}

// ----- client -----

/// The client's side, after it sent client-first.
#[derive(Clone)]
pub struct ClientExchange {
    client_first_bare: String,
    nonce: String,
    password: Vec<u8>,
}

impl fmt::Debug for ClientExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientExchange(..)")
    }
}

/// The client's side, after it sent client-final: what the server must sign.
#[derive(Clone)]
pub struct ClientAwaitingFinal {
    server_signature: Key,
}

impl fmt::Debug for ClientAwaitingFinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAwaitingFinal(..)")
    }
}

impl ClientExchange {
    /// Starts an exchange for `username`/`password` with the client nonce `nonce`; the
    /// client-first message goes in CONNECT's (or AUTH 0x19's) Authentication Data.
    pub fn start(username: &str, password: &[u8], nonce: &str) -> (ClientExchange, Vec<u8>) {
        let client_first_bare = format!("n={},r={nonce}", encode_name(username));
        let message = format!("n,,{client_first_bare}").into_bytes();
        (
            ClientExchange {
                client_first_bare,
                nonce: nonce.to_string(),
                password: password.to_vec(),
            },
            message,
        )
    }

    /// Answers server-first with client-final (one PBKDF2 of the server's iteration count).
    pub fn respond(
        &self,
        server_first: &[u8],
    ) -> Result<(ClientAwaitingFinal, Vec<u8>), ScramError> {
        let server_first = text(server_first)?;
        let mut parts = server_first.split(',');
        let nonce = attribute(parts.next(), 'r')?;
        let salt = attribute(parts.next(), 's')?;
        let iterations = attribute(parts.next(), 'i')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| ScramError::Malformed("the salt is not base64"))?;
        let iterations: u32 =
            iterations
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or(ScramError::Malformed(
                    "the iteration count is not a positive number",
                ))?;
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::TooManyIterations(iterations));
        }
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        // c=biws: base64("n,,"), the GS2 header of client-first.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let proof = xor(&client_key, &hmac(&stored_key, auth_message.as_bytes()));
        let server_signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
        let message = format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes();
        Ok((ClientAwaitingFinal { server_signature }, message))
    }
}

impl ClientAwaitingFinal {
    /// Checks server-final: the server proved it knows the password.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let server_final = text(server_final)?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let v = attribute(server_final.split(',').next(), 'v')?;
        let signature = STANDARD
            .decode(v)
            .ok()
            .and_then(|s| Key::try_from(s).ok())
            .ok_or(ScramError::Malformed(
                "the server signature is not 32 bytes of base64",
            ))?;
        if constant_time_eq(&signature, &self.server_signature) {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

// ----- server -----

/// The server's side, after it sent server-first.
#[derive(Clone)]
pub struct ServerExchange {
    username: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// `None`: the user has no credential; the exchange runs on a decoy and fails at the end,
    /// so a client cannot tell unknown users from wrong passwords.
    credential: Option<ScramCredential>,
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Salt and iteration count the server shows for a user without a credential: stable per
/// user name (a second try shows the same), drawn from `secret` so they cannot be told from a
/// real user's.
pub fn decoy(secret: &[u8], username: &str) -> (Vec<u8>, u32) {
    let salt = hmac(secret, username.as_bytes())[..SALT_BYTES].to_vec();
    (salt, DEFAULT_ITERATIONS)
}

impl ServerExchange {
    /// Reads client-first and answers with server-first. `lookup` gives the user's
    /// credential; `decoy_secret` keys the salt shown for a user without one;
    /// `server_nonce` is this exchange's own nonce part.
    pub fn start(
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        decoy_secret: &[u8],
        server_nonce: &str,
    ) -> Result<(ServerExchange, Vec<u8>), ScramError> {
        let client_first = text(client_first)?;
        // gs2-header: ("n" | "y" | "p=...") "," [ "a=" authzid ] ","
        let (cbind, rest) = client_first
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            _ if cbind.starts_with("p=") => {
                return Err(ScramError::Malformed("channel binding is not offered"))
            }
            _ => return Err(ScramError::Malformed("the GS2 header is not n, y or p=")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "an authorisation identity is not offered",
            ));
        }
        let mut parts = bare.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(ScramError::Malformed(
                "mandatory extensions are not offered",
            ));
        }
        let username = decode_name(attribute(first, 'n')?)?;
        let client_nonce = attribute(parts.next(), 'r')?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ScramError::Malformed(
                "the client nonce is empty or not printable",
            ));
        }
        if username.is_empty() {
            return Err(ScramError::Malformed("the user name is empty"));
        }
        let credential = lookup(&username);
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => decoy(decoy_secret, &username),
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt));
        let message = server_first.clone().into_bytes();
        Ok((
            ServerExchange {
                username,
                gs2_header: format!("{cbind},{authzid},"),
                client_first_bare: bare.to_string(),
                server_first,
                nonce,
                credential,
            },
            message,
        ))
    }

    /// The user name client-first named.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Reads client-final; the server-final to send when the proof is right.
    pub fn finish(&self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let client_final = text(client_final)?;
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final has no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = attribute(parts.next(), 'c')?;
        let nonce = attribute(parts.next(), 'r')?;
        if STANDARD.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed(
                "the channel binding is not client-first's GS2 header",
            ));
        }
        if nonce != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| Key::try_from(p).ok())
            .ok_or(ScramError::Malformed("the proof is not 32 bytes of base64"))?;
        let Some(credential) = &self.credential else {
            return Err(ScramError::BadProof);
        };
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac(&credential.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !constant_time_eq(&sha256(&client_key), &credential.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 §3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> ScramCredential {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramCredential::derive(b"pencil", &salt, 4096)
    }

    #[test]
    fn rfc7677_client_side() {
        let (client, first) = ClientExchange::start("user", b"pencil", CLIENT_NONCE);
        assert_eq!(first, CLIENT_FIRST.as_bytes());
        let (awaiting, last) = client.respond(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), CLIENT_FINAL);
        awaiting.verify(SERVER_FINAL.as_bytes()).unwrap();
        assert_eq!(
            awaiting.verify(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn rfc7677_server_side() {
        let credential = rfc_credential();
        let (server, first) = ServerExchange::start(
            CLIENT_FIRST.as_bytes(),
            |user| (user == "user").then(|| credential.clone()),
            b"secret",
            SERVER_NONCE,
        )
        .unwrap();
        assert_eq!(String::from_utf8(first).unwrap(), SERVER_FIRST);
        assert_eq!(server.username(), "user");
        let last = server.finish(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), SERVER_FINAL);
    }

    #[test]
    fn wrong_password_unknown_user_and_replays_fail() {
        let credential = rfc_credential();
        let lookup = |user: &str| (user == "user").then(|| credential.clone());
        // Wrong password: the proof is wrong.
        let (client, first) = ClientExchange::start("user", b"pencil!", CLIENT_NONCE);
        let (server, server_first) =
            ServerExchange::start(&first, lookup, b"secret", SERVER_NONCE).unwrap();
        let (_, last) = client.respond(&server_first).unwrap();
        assert_eq!(server.finish(&last), Err(ScramError::BadProof));
        // Unknown user: a decoy salt, stable per name, and a failed proof.
        let (client, first) = ClientExchange::start("mallory", b"pencil", CLIENT_NONCE);
        let (server, server_first) =
            ServerExchange::start(&first, lookup, b"secret", SERVER_NONCE).unwrap();
        let (_, again) = ServerExchange::start(&first, lookup, b"secret", SERVER_NONCE).unwrap();
        assert_eq!(server_first, again);
        let (_, last) = client.respond(&server_first).unwrap();
        assert_eq!(server.finish(&last), Err(ScramError::BadProof));
        // A right proof for another exchange's nonce.
        let (server, _) =
            ServerExchange::start(CLIENT_FIRST.as_bytes(), lookup, b"secret", "other").unwrap();
        assert_eq!(
            server.finish(CLIENT_FINAL.as_bytes()),
            Err(ScramError::NonceMismatch)
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let none = |_: &str| None;
        for bad in [
            "",
            "n=user,r=abc",
            "p=tls-unique,,n=user,r=abc",
            "n,a=admin,n=user,r=abc",
            "n,,m=ext,n=user,r=abc",
            "n,,n=us=er,r=abc",
            "n,,n=user",
            "n,,n=,r=abc",
        ] {
            assert!(
                matches!(
                    ServerExchange::start(bad.as_bytes(), none, b"s", "x"),
                    Err(ScramError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        let (server, _) = ServerExchange::start(b"n,,n=a=2Cb=3Dc,r=abc", none, b"s", "x").unwrap();
        assert_eq!(server.username(), "a,b=c");
        assert!(matches!(
            server.finish(b"c=biws,r=abcx"),
            Err(ScramError::Malformed(_))
        ));
        assert!(matches!(
            server.finish(b"c=eSws,r=abcx,p=AAAA"),
            Err(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn credential_text_round_trips() {
        let credential = rfc_credential();
        let text = credential.to_string();
        assert!(
            text.starts_with("SCRAM-SHA-256$4096$W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{text}"
        );
        assert_eq!(ScramCredential::parse(&text).unwrap(), credential);
        assert!(ScramCredential::parse("SCRAM-SHA-256$0$AA==$AA==$AA==").is_err());
        assert!(ScramCredential::parse("$7$101$x$y").is_err());
    }

    #[test]
    fn a_client_refuses_a_server_that_asks_too_much() {
        let (client, _) = ClientExchange::start("user", b"pencil", "abc");
        assert_eq!(
            client.respond(b"r=abcdef,s=AAAA,i=4000000000").unwrap_err(),
            ScramError::TooManyIterations(4_000_000_000)
        );
        assert_eq!(
            client.respond(b"r=xyz,s=AAAA,i=4096").unwrap_err(),
            ScramError::NonceMismatch
        );
    }
}
