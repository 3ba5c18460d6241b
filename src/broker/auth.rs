//! Authentication (password file) and authorisation (ACL file), in mosquitto's file formats so
//! that files written for mosquitto work unchanged.
//!
//! Password file: one `user:$7$iterations$base64(salt)$base64(hash)` line per user, where hash
//! is PBKDF2-HMAC-SHA512 of the password over a 12-byte salt (64 bytes out) — the form
//! `mosquitto_passwd` writes (with 101 iterations; `simqtt passwd` writes 210,000 by default,
//! which mosquitto reads as well). The older `user:$6$base64(salt)$base64(hash)` form
//! (hash = SHA-512 of password then salt, mosquitto 1.6 and earlier) is accepted too. Lines
//! starting with `#` and blank lines are skipped.
//!
//! SCRAM-SHA-256 (MQTT 5.0 enhanced authentication, `crate::scram`) needs other material than
//! a PBKDF2-SHA512 hash: a salt, an iteration count, StoredKey and ServerKey, derived from the
//! password when it is set (`simqtt passwd --scram`). They follow the hash as a third
//! `:`-separated field, `user:$7$...:SCRAM-SHA-256$4096$SALT$STOREDKEY$SERVERKEY`; mosquitto
//! reads the hash up to that `:` and ignores the rest, so such a file still works with it. A
//! user without the field logs in with a password as before, and a SCRAM exchange for them
//! fails as for an unknown user.
//!
//! ACL file (mosquitto's `acl_file`):
//! ```text
//! # lines before any `user` apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! pattern write devices/%c/status      # every client, %c = client id, %u = user name
//! ```
//! `topic [read|write|readwrite|deny] FILTER`: without an access word the access is
//! readwrite, and a single word after `topic` is the filter (as in mosquitto). The filter is the
//! rest of the line and may contain spaces. `pattern` lines apply to every client.
//!
//! Matching follows mosquitto 2.0: a `deny` that matches refuses, before any grant is looked
//! at; the client's own entries (its `user` section, or the anonymous one) are checked before
//! the patterns; when a pattern list exists, a user name or client id containing `+` or `#` is
//! refused (it could otherwise widen a pattern); a pattern naming `%u` does not apply to
//! anonymous clients. Publishing (`can_publish`) and delivery (`can_read`) match the topic
//! against the ACL filter with `codec::matches`. Subscribing (`can_subscribe`) is allowed when
//! an ACL filter with read access covers the whole subscription filter, i.e. every topic the
//! subscription can match is readable (mosquitto's `mosquitto_sub_matches_acl`): `a/+` covers
//! `a/b` and `a/+`, not `a/#`; `a/#` covers `a` itself. mosquitto 2.0 accepts every
//! subscription and filters each message on delivery; we refuse a subscription that no read
//! entry covers with 0x80 (the issue asks for it), and the broker also calls `can_read` on
//! every delivery, because a `deny` entry inside a covered subscription (`topic read a/#` with
//! `topic deny a/secret`) can only be enforced per message.
//!
//! Without an ACL file everyone may do everything. Without a password file any user name is
//! accepted (as in mosquitto); `allow_anonymous` decides about clients without a user name.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};

use crate::codec::{self, TopicFilter};
use crate::scram::ScramCredential;

/// The result of checking a CONNECT's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Allowed,
    /// CONNACK 0x04 (3.1.1) / 0x86 (5.0).
    BadUserNameOrPassword,
    /// CONNACK 0x05 (3.1.1) / 0x87 (5.0): e.g. anonymous access is off.
    NotAuthorized,
}

/// Why a password or ACL file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// (`error` is not a `#[source]`: the message already says it, and a chain printer such
    /// as anyhow's `{:#}` would say it twice.)
    #[error("cannot read {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The iteration count `simqtt passwd` writes by default: OWASP's recommendation for
/// PBKDF2-HMAC-SHA512 (at least 210,000). mosquitto 2.x writes 101 (`PW_DEFAULT_ITERATIONS`)
/// but reads any count, so these files work with it too. Each CONNECT with a password costs
/// the broker one such derivation (see `docs/reliability.md`); `simqtt passwd -I` chooses
/// another count.
pub const PBKDF2_DEFAULT_ITERATIONS: u32 = 210_000;
/// mosquitto_passwd's count (mosquitto 2.0): what older files hold, still read.
pub const PBKDF2_MOSQUITTO_ITERATIONS: u32 = 101;
/// A larger count in a file is refused: verifying it would stall the broker on every CONNECT.
pub const PBKDF2_MAX_ITERATIONS: u32 = 10_000_000;
/// mosquitto only accepts 12-byte salts.
pub const SALT_BYTES: usize = 12;
const HASH_BYTES: usize = 64;

/// Base64 as mosquitto writes it (standard alphabet, padded), read with or without padding.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone, Copy, PartialEq, Eq)]
enum HashKind {
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 { iterations: u32 },
}

/// One salted password hash in mosquitto's text form.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    kind: HashKind,
    salt: [u8; SALT_BYTES],
    hash: [u8; HASH_BYTES],
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is a secret-derived value: keep it out of logs.
        f.write_str("PasswordHash(..)")
    }
}

fn digest(kind: HashKind, password: &[u8], salt: &[u8]) -> [u8; HASH_BYTES] {
    let mut out = [0u8; HASH_BYTES];
    match kind {
        HashKind::Sha512 => {
            let mut h = Sha512::new();
            h.update(password);
            h.update(salt);
            out.copy_from_slice(&h.finalize());
        }
        HashKind::Pbkdf2Sha512 { iterations } => {
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
        }
    }
    out
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes of
/// a guess were right.
fn constant_time_eq(a: &[u8; HASH_BYTES], b: &[u8; HASH_BYTES]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl PasswordHash {
    /// Hashes `password` with PBKDF2-SHA512 over `iterations` (`PBKDF2_DEFAULT_ITERATIONS`
    /// unless a test or a low-powered deployment says otherwise), with a salt drawn from
    /// `rng`: a seeded RNG in simulations, the OS only in the CLI.
    pub fn new<R: rand::RngCore + ?Sized>(
        password: &[u8],
        iterations: u32,
        rng: &mut R,
    ) -> PasswordHash {
        let mut salt = [0u8; SALT_BYTES];
        rng.fill_bytes(&mut salt);
        PasswordHash::with_salt(password, salt, iterations)
    }

    /// The PBKDF2 iteration count (`None` for a `$6$` SHA-512 hash).
    pub fn iterations(&self) -> Option<u32> {
        match self.kind {
            HashKind::Sha512 => None,
            HashKind::Pbkdf2Sha512 { iterations } => Some(iterations),
        }
    }

    /// Hashes with a given salt and iteration count (PBKDF2-SHA512).
    pub fn with_salt(password: &[u8], salt: [u8; SALT_BYTES], iterations: u32) -> PasswordHash {
        let kind = HashKind::Pbkdf2Sha512 { iterations };
        PasswordHash {
            kind,
            salt,
            hash: digest(kind, password, &salt),
        }
    }

    /// True when `password` hashes to this hash (compared in constant time).
    pub fn verify(&self, password: &[u8]) -> bool {
        constant_time_eq(&digest(self.kind, password, &self.salt), &self.hash)
    }

    /// Parses `$7$iterations$salt$hash` or `$6$salt$hash`; the error says what was expected.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let text = text.trim();
        let expected = "expected `$7$ITERATIONS$SALT$HASH` (as written by `simqtt passwd` or \
                        `mosquitto_passwd`; a plain-text password must be hashed first)";
        let Some(rest) = text.strip_prefix('$') else {
            return Err(expected.to_string());
        };
        let fields: Vec<&str> = rest.split('$').collect();
        let (kind, salt, hash) = match fields.as_slice() {
            ["7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .ok()
                    .filter(|n| (1..=PBKDF2_MAX_ITERATIONS).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "iteration count `{iterations}` is not a number from 1 to \
                             {PBKDF2_MAX_ITERATIONS}"
                        )
                    })?;
                (HashKind::Pbkdf2Sha512 { iterations }, *salt, *hash)
            }
            ["6", salt, hash] => (HashKind::Sha512, *salt, *hash),
            [kind, ..] if *kind != "6" && *kind != "7" => {
                return Err(format!(
                    "unknown hash type `${kind}$`, expected `$7$` (PBKDF2-SHA512) or `$6$` \
                     (SHA-512)"
                ))
            }
            _ => return Err(expected.to_string()),
        };
        let salt = BASE64_LENIENT
            .decode(salt)
            .ok()
            .and_then(|s| <[u8; SALT_BYTES]>::try_from(s).ok())
            .ok_or_else(|| format!("the salt is not {SALT_BYTES} bytes of base64"))?;
        let hash = BASE64_LENIENT
            .decode(hash)
            .ok()
            .and_then(|h| <[u8; HASH_BYTES]>::try_from(h).ok())
            .ok_or_else(|| format!("the hash is not {HASH_BYTES} bytes of base64"))?;
        Ok(PasswordHash { kind, salt, hash })
    }
}

impl fmt::Display for PasswordHash {
    /// mosquitto's text form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HashKind::Sha512 => write!(
                f,
                "$6${}${}",
                STANDARD.encode(self.salt),
                STANDARD.encode(self.hash)
            ),
            HashKind::Pbkdf2Sha512 { iterations } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(self.salt),
                STANDARD.encode(self.hash)
            ),
        }
    }
}

/// A password check done a slice at a time (`Authenticator::verifier`): PBKDF2 at a modern
/// work factor takes a few hundred milliseconds, which the broker must not spend in one go on
/// the task that serves every client. `step` runs at most a given number of iterations.
pub struct Verifier {
    work: Work,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Holds password-derived state: keep it out of logs.
        f.write_str("Verifier(..)")
    }
}

enum Work {
    Done(AuthOutcome),
    /// Boxed: a check in progress is rare, and its state is 600 bytes.
    Pbkdf2(Box<Pbkdf2Work>),
}

/// PBKDF2-HMAC-SHA512 with one 64-byte block: T = U1 ^ U2 ^ ... ^ Uc, U1 = HMAC(P, S || 1),
/// Ui = HMAC(P, Ui-1) (RFC 8018 5.2), the same as `pbkdf2::pbkdf2_hmac`.
struct Pbkdf2Work {
    prf: Hmac<Sha512>,
    u: [u8; HASH_BYTES],
    t: [u8; HASH_BYTES],
    left: u32,
    expected: [u8; HASH_BYTES],
    /// The outcome when the hash matches (a decoy never yields `Allowed`).
    on_match: AuthOutcome,
}

impl Verifier {
    fn done(outcome: AuthOutcome) -> Verifier {
        Verifier {
            work: Work::Done(outcome),
        }
    }

    /// The outcome, once known without more work.
    pub fn outcome(&self) -> Option<AuthOutcome> {
        match self.work {
            Work::Done(outcome) => Some(outcome),
            Work::Pbkdf2(_) => None,
        }
    }

    /// Runs at most `iterations` more iterations; the outcome once done.
    pub fn step(&mut self, iterations: u32) -> Option<AuthOutcome> {
        if let Work::Pbkdf2(w) = &mut self.work {
            for _ in 0..iterations.min(w.left) {
                let mut mac = w.prf.clone();
                mac.update(&w.u);
                w.u.copy_from_slice(&mac.finalize().into_bytes());
                for (t, u) in w.t.iter_mut().zip(w.u.iter()) {
                    *t ^= u;
                }
                w.left -= 1;
            }
            if w.left == 0 {
                let outcome = if constant_time_eq(&w.t, &w.expected) {
                    w.on_match
                } else {
                    AuthOutcome::BadUserNameOrPassword
                };
                self.work = Work::Done(outcome);
            }
        }
        self.outcome()
    }
}

impl PasswordHash {
    /// A `Verifier` of `password` against this hash, answering `on_match` when it matches.
    fn verifier(&self, password: &[u8], on_match: AuthOutcome) -> Verifier {
        match self.kind {
            HashKind::Sha512 => Verifier::done(if self.verify(password) {
                on_match
            } else {
                AuthOutcome::BadUserNameOrPassword
            }),
            HashKind::Pbkdf2Sha512 { iterations } => {
                // HMAC takes a key of any length.
                let Ok(prf) = Hmac::<Sha512>::new_from_slice(password) else {
                    return Verifier::done(AuthOutcome::BadUserNameOrPassword);
                };
                let mut first = prf.clone();
                first.update(&self.salt);
                first.update(&1u32.to_be_bytes());
                let mut u = [0u8; HASH_BYTES];
                u.copy_from_slice(&first.finalize().into_bytes());
                Verifier {
                    work: Work::Pbkdf2(Box::new(Pbkdf2Work {
                        prf,
                        u,
                        t: u,
                        left: iterations - 1,
                        expected: self.hash,
                        on_match,
                    })),
                }
            }
        }
    }
}

/// A loaded password file.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: BTreeMap<String, PasswordHash>,
    /// The users' SCRAM-SHA-256 credentials, for those that have one.
    scram: BTreeMap<String, ScramCredential>,
    /// Hashed when the user name is unknown, so that a miss costs as long as a wrong password
    /// and response times do not reveal which user names exist.
    decoy: Option<PasswordHash>,
}

/// Splits a password file line into user name and hash text, as mosquitto does (at the first
/// `:`, blanks trimmed); `None` for comments and blank lines.
pub fn split_password_line(line: &str) -> Option<(&str, &str)> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    match trimmed.split_once(':') {
        Some((user, hash)) => Some((user.trim(), hash.trim())),
        None => Some((trimmed, "")),
    }
}

impl PasswordFile {
    /// Parses the text of a password file; `path` names it in errors (`path:line: ...`).
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, AuthError> {
        let mut users = BTreeMap::new();
        let mut scram = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let error = |message: String| AuthError::Parse {
                path: path.to_path_buf(),
                line: index + 1,
                message,
            };
            let Some((user, hash)) = split_password_line(line) else {
                continue;
            };
            if user.is_empty() {
                return Err(error("expected `USER:HASH`, the user name is empty".into()));
            }
            if hash.is_empty() {
                return Err(error(format!(
                    "expected `{user}:HASH`, the line has no `:` and hash"
                )));
            }
            let (hash, scram_text) = match hash.split_once(':') {
                Some((hash, scram)) => (hash, Some(scram)),
                None => (hash, None),
            };
            let hash =
                PasswordHash::parse(hash).map_err(|e| error(format!("user `{user}`: {e}")))?;
            if users.insert(user.to_string(), hash).is_some() {
                return Err(error(format!("user `{user}` appears twice")));
            }
            if let Some(text) = scram_text {
                let credential = ScramCredential::parse(text)
                    .map_err(|e| error(format!("user `{user}`: {e}")))?;
                scram.insert(user.to_string(), credential);
            }
        }
        let mut file = PasswordFile::from_users(users);
        file.scram = scram;
        Ok(file)
    }

    fn from_users(users: BTreeMap<String, PasswordHash>) -> PasswordFile {
        let decoy = users.values().next().map(|h| PasswordHash {
            salt: [0x5a; SALT_BYTES],
            ..h.clone()
        });
        PasswordFile {
            users,
            scram: BTreeMap::new(),
            decoy,
        }
    }

    /// Adds `user`'s SCRAM-SHA-256 credential (simulations build files in memory).
    pub fn with_scram(mut self, user: &str, credential: ScramCredential) -> PasswordFile {
        self.scram.insert(user.to_string(), credential);
        self
    }

    /// `user`'s SCRAM-SHA-256 credential, if the file holds one.
    pub fn scram(&self, user: &str) -> Option<&ScramCredential> {
        self.scram.get(user)
    }

    /// Builds a file from `(user, hash)` pairs (a later pair for the same user wins).
    pub fn from_entries(entries: impl IntoIterator<Item = (String, PasswordHash)>) -> Self {
        PasswordFile::from_users(entries.into_iter().collect())
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// `verify` a slice at a time: `Allowed` when `user` is in the file and `password` is
    /// theirs, else `BadUserNameOrPassword` after as much work as a real check (a decoy hash
    /// stands in for an unknown user or a missing password).
    pub fn verifier(&self, user: &str, password: Option<&[u8]>) -> Verifier {
        match (self.users.get(user), password) {
            (Some(hash), Some(password)) => hash.verifier(password, AuthOutcome::Allowed),
            (hash, password) => match hash.or(self.decoy.as_ref()) {
                Some(decoy) => decoy.verifier(
                    password.unwrap_or_default(),
                    AuthOutcome::BadUserNameOrPassword,
                ),
                None => Verifier::done(AuthOutcome::BadUserNameOrPassword),
            },
        }
    }

    /// True when `user` is in the file and `password` is theirs.
    pub fn verify(&self, user: &str, password: Option<&[u8]>) -> bool {
        match (self.users.get(user), password) {
            (Some(hash), Some(password)) => hash.verify(password),
            (hash, password) => {
                if let Some(decoy) = hash.or(self.decoy.as_ref()) {
                    let _ = decoy.verify(password.unwrap_or_default());
                }
                false
            }
        }
    }
}

/// What an ACL entry allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAccess {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl AclAccess {
    fn allows(self, want: Want) -> bool {
        matches!(
            (self, want),
            (AclAccess::ReadWrite, _)
                | (AclAccess::Read, Want::Read)
                | (AclAccess::Write, Want::Write)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AclEntry {
    access: AclAccess,
    filter: String,
}

/// A loaded ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// `topic` lines before any `user` line: they apply to clients without a user name.
    anonymous: Vec<AclEntry>,
    users: BTreeMap<String, Vec<AclEntry>>,
    patterns: Vec<AclEntry>,
}

impl Acl {
    /// Parses the text of an ACL file; `path` names it in errors (`path:line: ...`).
    pub fn parse(text: &str, path: &Path) -> Result<Acl, AuthError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let error = |message: String| AuthError::Parse {
                path: path.to_path_buf(),
                line: index + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = match line.split_once(char::is_whitespace) {
                Some((keyword, rest)) => (keyword, rest.trim_start()),
                None => (line, ""),
            };
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("expected a user name after `user`".into()));
                    }
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    if rest.is_empty() {
                        return Err(error(format!(
                            "expected `{keyword} [read|write|readwrite|deny] FILTER`"
                        )));
                    }
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        // A single word is the filter, with read and write access (mosquitto).
                        None => (AclAccess::ReadWrite, rest),
                        Some((word, filter)) => {
                            let access = match word {
                                "read" => AclAccess::Read,
                                "write" => AclAccess::Write,
                                "readwrite" => AclAccess::ReadWrite,
                                "deny" => AclAccess::Deny,
                                other => {
                                    return Err(error(format!(
                                        "unknown access `{other}`, expected read, write, \
                                         readwrite or deny before the topic filter"
                                    )))
                                }
                            };
                            (access, filter.trim_start())
                        }
                    };
                    if let Err(e) = TopicFilter::new(filter) {
                        return Err(error(format!(
                            "`{filter}` is not a valid topic filter ({e})"
                        )));
                    }
                    let entry = AclEntry {
                        access,
                        filter: filter.to_string(),
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(entry),
                        (_, None) => acl.anonymous.push(entry),
                        (_, Some(user)) => acl.users.entry(user.clone()).or_default().push(entry),
                    }
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword `{other}`, expected `user`, `topic`, `pattern` or a \
                         `#` comment"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// The mosquitto check: the client's own entries, then the patterns; denies first in each.
    fn check(
        &self,
        username: Option<&str>,
        client_id: &str,
        want: Want,
        matches: impl Fn(&str) -> bool,
    ) -> bool {
        if let Some(allowed) = self.check_own(username, want, &matches) {
            return allowed;
        }
        self.check_patterns(username, client_id, want, matches)
    }

    /// The part of `check` that depends on the user name only: `Some` when the client's own
    /// entries decide, or when no pattern could (then the answer is no).
    fn check_own(
        &self,
        username: Option<&str>,
        want: Want,
        matches: impl Fn(&str) -> bool,
    ) -> Option<bool> {
        let own = match username {
            None => Some(&self.anonymous),
            Some(user) => self.users.get(user),
        };
        if let Some(entries) = own {
            if let Some(allowed) = decide(entries.iter(), want, |e| matches(&e.filter)) {
                return Some(allowed);
            }
        }
        if self.patterns.is_empty() {
            return Some(false);
        }
        None
    }

    /// The rest of `check`: the patterns, which may name the client id.
    fn check_patterns(
        &self,
        username: Option<&str>,
        client_id: &str,
        want: Want,
        matches: impl Fn(&str) -> bool,
    ) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let dangerous = |s: &str| s.contains(['+', '#']);
        if username.is_some_and(dangerous) || dangerous(client_id) {
            tracing::debug!(
                client_id,
                username,
                "ACL refuses a client whose user name or client id contains + or #"
            );
            return false;
        }
        let applicable = self
            .patterns
            .iter()
            .filter(|e| username.is_some() || !e.filter.contains("%u"));
        decide(applicable, want, |e| {
            matches(&substitute(&e.filter, username, client_id))
        })
        .unwrap_or(false)
    }
}

/// `Some(false)` when a matching entry denies, `Some(true)` when one grants `want`, `None` when
/// none decides.
fn decide<'a>(
    entries: impl Iterator<Item = &'a AclEntry> + Clone,
    want: Want,
    matches: impl Fn(&AclEntry) -> bool,
) -> Option<bool> {
    if entries
        .clone()
        .any(|e| e.access == AclAccess::Deny && matches(e))
    {
        return Some(false);
    }
    if entries
        .into_iter()
        .any(|e| e.access.allows(want) && matches(e))
    {
        return Some(true);
    }
    None
}

/// Replaces `%c` with the client id and `%u` with the user name in one left-to-right pass (so
/// a client id containing `%u` is not substituted again).
fn substitute(pattern: &str, username: Option<&str>, client_id: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match (chars.peek(), username) {
                (Some('c'), _) => {
                    chars.next();
                    out.push_str(client_id);
                    continue;
                }
                (Some('u'), Some(user)) => {
                    chars.next();
                    out.push_str(user);
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

/// True when ACL filter `acl` covers every topic that subscription filter `sub` can match
/// (mosquitto's `mosquitto_sub_matches_acl`). `$` topics are covered only by filters that start
/// with `$` too, and the other way round.
pub fn acl_covers_subscription(acl: &str, sub: &str) -> bool {
    if acl.starts_with('$') != sub.starts_with('$') {
        return false;
    }
    let mut a = acl.split('/');
    let mut s = sub.split('/');
    loop {
        match (a.next(), s.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            // `a/#` covers `a` itself: `#` matches the parent level too.
            (Some(rest), None) => return rest == "#",
            (None, Some(_)) => return false,
            (Some("+"), Some(level)) => {
                if level == "#" {
                    return false;
                }
            }
            (Some(acl_level), Some(sub_level)) => {
                if acl_level != sub_level {
                    return false;
                }
            }
        }
    }
}

/// Authentication and ACL checks. The default allows everyone everything.
#[derive(Debug, Clone)]
pub struct Authenticator {
    allow_anonymous: bool,
    passwords: Option<PasswordFile>,
    acl: Option<Acl>,
}

impl Default for Authenticator {
    fn default() -> Self {
        Authenticator::allow_all()
    }
}

fn read_file(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|error| AuthError::Io {
        path: path.to_path_buf(),
        error,
    })
}

impl Authenticator {
    /// Allows anonymous clients, no password file, no ACL.
    pub fn allow_all() -> Authenticator {
        Authenticator {
            allow_anonymous: true,
            passwords: None,
            acl: None,
        }
    }

    /// From already loaded parts (simulations build them in memory).
    pub fn new(
        allow_anonymous: bool,
        passwords: Option<PasswordFile>,
        acl: Option<Acl>,
    ) -> Authenticator {
        Authenticator {
            allow_anonymous,
            passwords,
            acl,
        }
    }

    /// Loads mosquitto-format password and ACL files.
    pub fn from_files(
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
        allow_anonymous: bool,
    ) -> Result<Authenticator, AuthError> {
        let passwords = match password_file {
            Some(path) => Some(PasswordFile::parse(&read_file(path)?, path)?),
            None => None,
        };
        let acl = match acl_file {
            Some(path) => Some(Acl::parse(&read_file(path)?, path)?),
            None => None,
        };
        Ok(Authenticator::new(allow_anonymous, passwords, acl))
    }

    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// An ACL is loaded (without one `can_read` is always true, so the broker's delivery path
    /// skips the per-delivery check).
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    /// Checks a CONNECT's user name and password. A password without a user name (5.0 allows
    /// it) is ignored: such a client is anonymous.
    pub fn authenticate(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthOutcome {
        let mut verifier = self.verifier(username, password);
        loop {
            if let Some(outcome) = verifier.step(u32::MAX) {
                return outcome;
            }
        }
    }

    /// `authenticate` a slice at a time (see `Verifier`): the broker's connections step it
    /// beside the core, so a slow hash holds up only the client being checked.
    pub fn verifier(&self, username: Option<&str>, password: Option<&[u8]>) -> Verifier {
        match (username, &self.passwords) {
            (None, _) if self.allow_anonymous => Verifier::done(AuthOutcome::Allowed),
            (None, _) => Verifier::done(AuthOutcome::NotAuthorized),
            (Some(_), None) => Verifier::done(AuthOutcome::Allowed),
            (Some(user), Some(passwords)) => passwords.verifier(user, password),
        }
    }

    /// SCRAM-SHA-256 enhanced authentication is offered: a password file is loaded (without
    /// one there is nothing to check an exchange against, and the method is refused).
    pub fn offers_scram(&self) -> bool {
        self.passwords.is_some()
    }

    /// `user`'s SCRAM-SHA-256 credential, if the password file holds one.
    pub fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
        self.passwords.as_ref()?.scram(user).cloned()
    }

    /// May this client publish to `topic`? (A refused PUBLISH is dropped.)
    pub fn can_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => acl.check(username, client_id, Want::Write, |filter| {
                codec::matches(filter, topic)
            }),
        }
    }

    /// May this client subscribe to `filter`? True when a read entry covers the whole filter
    /// and no deny entry covers it. For a 5.0 shared subscription `$share/GROUP/F`, `F` is
    /// checked. (A refused filter gets 0x80 in SUBACK.)
    pub fn can_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        let filter = filter
            .strip_prefix("$share/")
            .and_then(|rest| rest.split_once('/'))
            .map_or(filter, |(_, inner)| inner);
        match &self.acl {
            None => true,
            Some(acl) => acl.check(username, client_id, Want::Read, |acl_filter| {
                acl_covers_subscription(acl_filter, filter)
            }),
        }
    }

    /// May a message on `topic` be delivered to this client? mosquitto's read check; the
    /// broker calls it on every delivery (live, queued for an offline session, retained at
    /// SUBSCRIBE, wills, `$SYS`, and in-flight messages resent on reconnect) so that `deny`
    /// entries inside a wider subscription hold.
    pub fn can_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => acl.check(username, client_id, Want::Read, |filter| {
                codec::matches(filter, topic)
            }),
        }
    }

    /// `can_read` when the answer does not depend on the client id (the user's own entries
    /// decide, or no pattern exists); `None` when `can_read` must be asked with the client id.
    /// Lets the broker decide once per user for a message fanned out to many of its clients.
    pub fn can_read_as_user(&self, username: Option<&str>, topic: &str) -> Option<bool> {
        match &self.acl {
            None => Some(true),
            Some(acl) => {
                acl.check_own(username, Want::Read, |filter| codec::matches(filter, topic))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Written by `mosquitto_passwd -c -b pw alice s3cret` and `-b pw bob 'pa:ss word'`
    /// (mosquitto 2.0.11), and `-H sha512 -c -b pw carol hunter2`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$SiutNaW5WGdfHk0n$iUj8HOTCg1u5kFaIi4pDTVL5Kj7yxdGl8XyRRAVCW29bsD5VkIUl1z5rujD4ZEGrRUaTvGwIlD47m/vx4W5umQ==
bob:$7$101$PKrL1C9qNWmejyjG$FVldv626YYK0X946Q+hRW0pshVDvC2M7gkM+Z52UNqJl+oRAF/4iRkR3lsMgilkAiaTqukBzjm6aDfk8o4VLJw==
# a comment

carol:$6$VkV2EnRiQie4UKki$+zmuee6KwLDLuEi6ncn4JlJeaZy15HYVc++cc+xFz/+iS4/EgRGswmwAUbqCgeur3IHbQ8Hu3pMMPBJbFXT/vg==
";

    fn path() -> &'static Path {
        Path::new("test.conf")
    }

    #[test]
    fn mosquitto_passwd_files_verify() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, path()).unwrap();
        assert_eq!(file.len(), 3);
        assert!(file.verify("alice", Some(b"s3cret")));
        assert!(file.verify("bob", Some(b"pa:ss word")));
        assert!(file.verify("carol", Some(b"hunter2")));
        assert!(!file.verify("alice", Some(b"s3cret ")));
        assert!(!file.verify("alice", Some(b"")));
        assert!(!file.verify("alice", None));
        assert!(!file.verify("bob", Some(b"s3cret")));
        assert!(!file.verify("mallory", Some(b"s3cret")));
    }

    #[test]
    fn our_hashes_round_trip_and_are_deterministic_with_a_seeded_rng() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let hash = PasswordHash::new(b"pw", 1000, &mut rng);
        let text = hash.to_string();
        assert!(text.starts_with("$7$1000$"), "{text}");
        let fields: Vec<&str> = text.split('$').collect();
        assert_eq!(fields[3].len(), 16, "12-byte salt in base64");
        assert_eq!(fields[4].len(), 88, "64-byte hash in padded base64");
        let parsed = PasswordHash::parse(&text).unwrap();
        assert_eq!(parsed, hash);
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"pW"));
        let mut again = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        assert_eq!(PasswordHash::new(b"pw", 1000, &mut again).to_string(), text);
        let mut other = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        assert_ne!(PasswordHash::new(b"pw", 1000, &mut other).to_string(), text);
    }

    /// Issue 14, defect 9: the default work factor is OWASP's for PBKDF2-SHA512, not
    /// mosquitto's 101, and hashes with any count (old files included) verify.
    #[test]
    fn default_work_factor_is_modern_and_old_counts_still_verify() {
        const { assert!(PBKDF2_DEFAULT_ITERATIONS >= 210_000) };
        let salt = [3u8; SALT_BYTES];
        for iterations in [PBKDF2_MOSQUITTO_ITERATIONS, 2, 5000] {
            let text = PasswordHash::with_salt(b"pw", salt, iterations).to_string();
            assert!(text.starts_with(&format!("$7${iterations}$")), "{text}");
            let parsed = PasswordHash::parse(&text).unwrap();
            assert_eq!(parsed.iterations(), Some(iterations));
            assert!(parsed.verify(b"pw") && !parsed.verify(b"pW"));
        }
    }

    /// The sliced check agrees with the one-shot one (and so with mosquitto's hashes) for
    /// every slice size, right and wrong passwords, unknown users and the `$6$` form.
    #[test]
    fn a_sliced_verification_agrees_with_the_whole() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, path()).unwrap();
        let cases = [
            ("alice", Some(&b"s3cret"[..]), AuthOutcome::Allowed),
            (
                "alice",
                Some(b"s3cret "),
                AuthOutcome::BadUserNameOrPassword,
            ),
            ("alice", None, AuthOutcome::BadUserNameOrPassword),
            ("bob", Some(b"pa:ss word"), AuthOutcome::Allowed),
            ("carol", Some(b"hunter2"), AuthOutcome::Allowed),
            (
                "carol",
                Some(b"hunter3"),
                AuthOutcome::BadUserNameOrPassword,
            ),
            (
                "mallory",
                Some(b"s3cret"),
                AuthOutcome::BadUserNameOrPassword,
            ),
        ];
        for (user, password, want) in cases {
            assert_eq!(file.verify(user, password), want == AuthOutcome::Allowed);
            for slice in [1, 7, 100, 1000] {
                let mut verifier = file.verifier(user, password);
                let mut steps = 0;
                let got = loop {
                    steps += 1;
                    if let Some(outcome) = verifier.step(slice) {
                        break outcome;
                    }
                };
                assert_eq!(got, want, "{user} slice {slice}");
                if user != "carol" && slice == 7 {
                    assert!(
                        steps >= 100 / 7,
                        "{user}: the work was sliced ({steps} steps)"
                    );
                }
            }
        }
        let hash = PasswordHash::with_salt(b"pw", [9; SALT_BYTES], 5000);
        let mut verifier = hash.verifier(b"pw", AuthOutcome::Allowed);
        assert_eq!(
            verifier.step(4998),
            None,
            "5000 iterations: the first and 4998 more"
        );
        assert_eq!(verifier.step(1), Some(AuthOutcome::Allowed));
    }

    #[test]
    fn known_pbkdf2_vector() {
        // The salt and hash of alice's line above, recomputed by our code.
        let salt: [u8; 12] = BASE64_LENIENT
            .decode("SiutNaW5WGdfHk0n")
            .unwrap()
            .try_into()
            .unwrap();
        let ours = PasswordHash::with_salt(b"s3cret", salt, 101).to_string();
        assert_eq!(
            format!("alice:{ours}"),
            MOSQUITTO_FILE.lines().next().unwrap()
        );
    }

    #[test]
    fn password_file_errors_name_file_line_and_expectation() {
        let cases = [
            ("alice:plaintext\n", 1, "expected `$7$ITERATIONS$SALT$HASH`"),
            ("# c\nalice\n", 2, "has no `:`"),
            (":$7$101$x$y\n", 1, "user name is empty"),
            ("a:$5$abc$def\n", 1, "unknown hash type `$5$`"),
            ("a:$7$0$SiutNaW5WGdfHk0n$AAAA\n", 1, "iteration count `0`"),
            ("a:$7$101$AAAA$AAAA\n", 1, "salt is not 12 bytes"),
            (
                "a:$7$101$SiutNaW5WGdfHk0n$AAAA\n",
                1,
                "hash is not 64 bytes",
            ),
        ];
        for (text, line, expect) in cases {
            let error = PasswordFile::parse(text, path()).unwrap_err().to_string();
            assert!(error.starts_with(&format!("test.conf:{line}: ")), "{error}");
            assert!(error.contains(expect), "{text:?}: {error}");
        }
        let twice = format!(
            "{}\n{}",
            MOSQUITTO_FILE.lines().next().unwrap(),
            MOSQUITTO_FILE.lines().next().unwrap()
        );
        let error = PasswordFile::parse(&twice, path()).unwrap_err().to_string();
        assert!(
            error.contains("test.conf:2: user `alice` appears twice"),
            "{error}"
        );
    }

    #[test]
    fn a_scram_field_after_the_hash_gives_the_user_a_scram_credential() {
        let credential = ScramCredential::derive(b"s3cret", b"0123456789abcdef", 4096);
        let alice = MOSQUITTO_FILE.lines().next().unwrap();
        let text = format!(
            "{alice}:{credential}\n{}\n",
            MOSQUITTO_FILE.lines().nth(1).unwrap()
        );
        let file = PasswordFile::parse(&text, path()).unwrap();
        assert_eq!(file.scram("alice"), Some(&credential));
        assert_eq!(file.scram("bob"), None);
        // The mosquitto hash before it still checks plain passwords.
        assert!(file.verify("alice", Some(b"s3cret")));
        assert!(file.verify("bob", Some(b"pa:ss word")));
        let auth = Authenticator::new(false, Some(file), None);
        assert!(auth.offers_scram());
        assert_eq!(auth.scram_credential("alice"), Some(credential));
        assert!(!Authenticator::allow_all().offers_scram());
        let error = PasswordFile::parse(&format!("{alice}:SCRAM-SHA-256$4096$AA==\n"), path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("test.conf:1: user `alice`: expected `SCRAM-SHA-256$"),
            "{error}"
        );
    }

    #[test]
    fn mosquitto_passwd_binary_agrees_with_us() {
        let binary = Path::new("/usr/bin/mosquitto_passwd");
        if !binary.exists() {
            eprintln!("skipped: {} is not installed", binary.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let status = std::process::Command::new(binary)
            .args(["-c", "-b"])
            .arg(&file)
            .args(["dave", "correct horse"])
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = PasswordFile::parse(&text, &file).unwrap();
        assert!(parsed.verify("dave", Some(b"correct horse")));
        assert!(!parsed.verify("dave", Some(b"correct horse!")));
    }

    #[test]
    fn authenticate_outcomes() {
        let passwords = PasswordFile::parse(MOSQUITTO_FILE, path()).unwrap();
        let strict = Authenticator::new(false, Some(passwords.clone()), None);
        assert_eq!(strict.authenticate(None, None), AuthOutcome::NotAuthorized);
        assert_eq!(
            strict.authenticate(None, Some(b"s3cret")),
            AuthOutcome::NotAuthorized
        );
        assert_eq!(
            strict.authenticate(Some("alice"), Some(b"s3cret")),
            AuthOutcome::Allowed
        );
        assert_eq!(
            strict.authenticate(Some("alice"), Some(b"wrong")),
            AuthOutcome::BadUserNameOrPassword
        );
        assert_eq!(
            strict.authenticate(Some("alice"), None),
            AuthOutcome::BadUserNameOrPassword
        );
        assert_eq!(
            strict.authenticate(Some("nobody"), Some(b"s3cret")),
            AuthOutcome::BadUserNameOrPassword
        );
        let open = Authenticator::new(true, Some(passwords), None);
        assert_eq!(open.authenticate(None, None), AuthOutcome::Allowed);
        assert_eq!(
            open.authenticate(Some("alice"), Some(b"wrong")),
            AuthOutcome::BadUserNameOrPassword
        );
        // No password file: user names are not checked; anonymity is still governed.
        let no_file = Authenticator::new(false, None, None);
        assert_eq!(no_file.authenticate(Some("x"), None), AuthOutcome::Allowed);
        assert_eq!(no_file.authenticate(None, None), AuthOutcome::NotAuthorized);
        let all = Authenticator::allow_all();
        assert_eq!(all.authenticate(None, None), AuthOutcome::Allowed);
        assert!(all.can_publish(None, "c", "$SYS/x"));
        assert!(all.can_subscribe(None, "c", "#"));
    }

    #[test]
    fn from_files_loads_both_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        let acl = dir.path().join("acl");
        std::fs::write(&pw, MOSQUITTO_FILE).unwrap();
        std::fs::write(&acl, "user alice\ntopic a/#\n").unwrap();
        let auth = Authenticator::from_files(Some(&pw), Some(&acl), false).unwrap();
        assert_eq!(
            auth.authenticate(Some("alice"), Some(b"s3cret")),
            AuthOutcome::Allowed
        );
        assert!(auth.can_publish(Some("alice"), "c", "a/b"));
        assert!(!auth.can_publish(Some("bob"), "c", "a/b"));
        let missing = dir.path().join("nope");
        let error = Authenticator::from_files(Some(&missing), None, true).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot read {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        // Said once: the io error is part of the message, not also a source to chain.
        assert!(std::error::Error::source(&error).is_none());
    }

    const ACL: &str = "\
# anonymous clients
topic read public/#
topic write public/anon

user alice
topic readwrite alice/#
topic deny alice/secret
topic write shared/in
topic read $SYS/broker/#
topic readwrite with space/x

user bob
topic sensors/+/temp
topic read   spaced/lead

pattern write devices/%c/status
pattern read users/%u/#
pattern deny users/%u/locked
";

    fn acl_auth() -> Authenticator {
        Authenticator::new(true, None, Some(Acl::parse(ACL, path()).unwrap()))
    }

    #[test]
    fn acl_write_uses_topic_matching() {
        let auth = acl_auth();
        let alice = Some("alice");
        assert!(auth.can_publish(alice, "c1", "alice/x/y"));
        assert!(
            auth.can_publish(alice, "c1", "alice"),
            "# matches the parent"
        );
        assert!(!auth.can_publish(alice, "c1", "alice/secret"), "deny wins");
        assert!(auth.can_publish(alice, "c1", "alice/secret/deeper"));
        assert!(auth.can_publish(alice, "c1", "shared/in"));
        assert!(
            !auth.can_publish(alice, "c1", "public/anon"),
            "anonymous only"
        );
        assert!(auth.can_publish(alice, "c1", "with space/x"));
        assert!(!auth.can_publish(alice, "c1", "$SYS/broker/x"), "read only");
        // Bob: a single word is the filter with readwrite access.
        assert!(auth.can_publish(Some("bob"), "c2", "sensors/k/temp"));
        assert!(!auth.can_publish(Some("bob"), "c2", "sensors/k/hum"));
        assert!(!auth.can_publish(Some("bob"), "c2", "spaced/lead"));
        // Anonymous.
        assert!(auth.can_publish(None, "c3", "public/anon"));
        assert!(!auth.can_publish(None, "c3", "public/other"));
        // A user without a section still gets the patterns.
        assert!(!auth.can_publish(Some("carol"), "c4", "alice/x"));
        assert!(auth.can_publish(Some("carol"), "c4", "devices/c4/status"));
        assert!(!auth.can_publish(Some("carol"), "c4", "devices/c5/status"));
        assert!(
            auth.can_publish(None, "c3", "devices/c3/status"),
            "%c needs no user"
        );
    }

    #[test]
    fn acl_patterns_substitute_and_refuse_wildcard_identities() {
        let auth = acl_auth();
        assert!(auth.can_read(Some("carol"), "c", "users/carol/inbox"));
        assert!(!auth.can_read(Some("carol"), "c", "users/dave/inbox"));
        assert!(!auth.can_read(Some("carol"), "c", "users/carol/locked"));
        assert!(
            !auth.can_read(None, "c", "users//inbox"),
            "%u never applies anonymously"
        );
        // Wildcards in identities would widen the pattern: refused outright.
        assert!(!auth.can_publish(Some("carol"), "#", "devices/#/status"));
        assert!(!auth.can_read(Some("+"), "c", "users/+/inbox"));
        // Their own entries still apply before the pattern check.
        assert!(auth.can_publish(Some("alice"), "c+", "alice/x"));
        assert_eq!(
            substitute("a/%c/%u/%x/%", Some("u%c"), "id%u"),
            "a/id%u/u%c/%x/%"
        );
        assert_eq!(substitute("a/%u", None, "c"), "a/%u");
    }

    #[test]
    fn acl_subscribe_requires_a_covering_read_entry() {
        let auth = acl_auth();
        let alice = Some("alice");
        assert!(auth.can_subscribe(alice, "c", "alice/#"));
        assert!(auth.can_subscribe(alice, "c", "alice/+/x"));
        assert!(auth.can_subscribe(alice, "c", "alice"));
        assert!(!auth.can_subscribe(alice, "c", "#"), "wider than the ACL");
        assert!(
            !auth.can_subscribe(alice, "c", "alice/secret"),
            "deny covers it"
        );
        assert!(auth.can_subscribe(alice, "c", "$SYS/broker/load/#"));
        assert!(!auth.can_subscribe(alice, "c", "shared/in"), "write only");
        assert!(!auth.can_subscribe(alice, "c", "+/broker/#"), "$ needs $");
        // Shared subscriptions are checked on their inner filter.
        assert!(auth.can_subscribe(alice, "c", "$share/g/alice/x"));
        assert!(!auth.can_subscribe(alice, "c", "$share/g/other"));
        // Per-message read check inside a covered subscription.
        assert!(auth.can_read(alice, "c", "alice/public"));
        assert!(!auth.can_read(alice, "c", "alice/secret"));
        let bob = Some("bob");
        assert!(auth.can_subscribe(bob, "c", "sensors/+/temp"));
        assert!(auth.can_subscribe(bob, "c", "sensors/k/temp"));
        assert!(!auth.can_subscribe(bob, "c", "sensors/#"));
        assert!(auth.can_subscribe(bob, "c", "spaced/lead"));
        assert!(auth.can_subscribe(None, "c", "public/#"));
        assert!(auth.can_subscribe(None, "c", "public/anon/x"));
        assert!(!auth.can_subscribe(None, "c", "private/x"));
        assert!(auth.can_subscribe(Some("eve"), "c", "users/eve/+"));
        assert!(!auth.can_subscribe(Some("eve"), "c", "users/eve/locked"));
        assert!(!auth.can_subscribe(Some("eve"), "c", "users/+/x"));
    }

    #[test]
    fn the_user_part_of_a_read_check_agrees_with_the_whole() {
        let auth = acl_auth();
        let users = [None, Some("alice"), Some("bob"), Some("carol"), Some("+")];
        let topics = [
            "alice/x",
            "alice/secret",
            "public/a",
            "users/carol/inbox",
            "users/carol/locked",
            "devices/c/status",
            "$SYS/broker/load",
        ];
        for user in users {
            for topic in topics {
                let whole = auth.can_read(user, "c", topic);
                // `None`: the patterns decide, asked with the client id.
                if let Some(answer) = auth.can_read_as_user(user, topic) {
                    assert_eq!(answer, whole, "{user:?} {topic}");
                }
            }
        }
        assert_eq!(auth.can_read_as_user(Some("alice"), "alice/x"), Some(true));
        assert_eq!(auth.can_read_as_user(Some("carol"), "users/carol/x"), None);
        assert_eq!(
            Authenticator::allow_all().can_read_as_user(None, "x"),
            Some(true)
        );
    }

    #[test]
    fn coverage_matches_mosquittos_sub_matches_acl() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/+/c/#", true),
            ("#", "#", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+/#", "a", true),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a", false),
            ("a/b", "a/+", false),
            ("a/b", "a/#", false),
            ("+", "#", false),
            ("+/+", "+/+", true),
            ("a//b", "a/+/b", false),
            ("a/+/b", "a//b", true),
        ];
        for (acl, sub, expect) in cases {
            assert_eq!(acl_covers_subscription(acl, sub), expect, "{acl} vs {sub}");
        }
    }

    #[test]
    fn acl_parse_errors_name_file_line_and_expectation() {
        let cases = [
            (
                "topic\n",
                1,
                "expected `topic [read|write|readwrite|deny] FILTER`",
            ),
            ("# ok\n\ntopic writ a/b\n", 3, "unknown access `writ`"),
            ("user\n", 1, "expected a user name"),
            ("topic read a/#/b\n", 1, "not a valid topic filter"),
            ("pattern write a+\n", 1, "not a valid topic filter"),
            ("users alice\n", 1, "unknown keyword `users`"),
        ];
        for (text, line, expect) in cases {
            let error = Acl::parse(text, path()).unwrap_err().to_string();
            assert!(error.starts_with(&format!("test.conf:{line}: ")), "{error}");
            assert!(error.contains(expect), "{text:?}: {error}");
        }
    }

    #[test]
    fn acl_without_a_section_for_the_client_denies() {
        let acl = Acl::parse("user alice\ntopic a\n", path()).unwrap();
        let auth = Authenticator::new(true, None, Some(acl));
        assert!(!auth.can_publish(None, "c", "a"));
        assert!(!auth.can_publish(Some("bob"), "c", "a"));
        assert!(!auth.can_subscribe(Some("bob"), "c", "a"));
        assert!(auth.can_publish(Some("alice"), "c", "a"));
        let empty = Authenticator::new(true, None, Some(Acl::default()));
        assert!(!empty.can_publish(None, "c", "a"));
    }
}
