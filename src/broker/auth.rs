//! Authentication (password file) and authorisation (ACL file).
//!
//! Contract for the broker; the file formats and `simqtt passwd` land with the store/auth work:
//! - password file: one `user:$7$iterations$salt_b64$hash_b64` line per user (mosquitto's
//!   PBKDF2-SHA512 format, so files written by `mosquitto_passwd` work too);
//! - ACL file: mosquitto's format (`user NAME`, `topic [read|write|readwrite] FILTER`,
//!   `pattern [read|write|readwrite] FILTER` with `%u` and `%c`).

/// The result of checking a CONNECT's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Allowed,
    /// CONNACK 0x04 (3.1.1) / 0x86 (5.0).
    BadUserNameOrPassword,
    /// CONNACK 0x05 (3.1.1) / 0x87 (5.0): e.g. anonymous access is off.
    NotAuthorized,
}

/// Authentication and ACL checks. The default allows everyone everything.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    _private: (),
}

impl Authenticator {
    /// Allows anonymous clients, no password file, no ACL.
    pub fn allow_all() -> Authenticator {
        Authenticator::default()
    }

    pub fn authenticate(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthOutcome {
        let _ = (username, password);
        AuthOutcome::Allowed
    }

    pub fn can_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        let _ = (username, client_id, topic);
        true
    }

    pub fn can_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        let _ = (username, client_id, filter);
        true
    }
}
