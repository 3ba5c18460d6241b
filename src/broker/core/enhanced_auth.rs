//! MQTT 5.0 enhanced authentication (§4.12) with SCRAM-SHA-256 (`crate::scram`), the method
//! EMQX offers, against the password file's SCRAM credentials (`broker::auth`).
//!
//! - **At CONNECT.** A CONNECT with an Authentication Method other than `SCRAM-SHA-256`, or
//!   any method when no password file is loaded, gets CONNACK 0x8C Bad authentication method
//!   and the close [MQTT-4.12.0-1]. Otherwise its Authentication Data is client-first; the
//!   broker answers AUTH 0x18 with server-first [MQTT-4.12.0-2] and the method
//!   [MQTT-4.12.0-5], and the CONNECT waits (the connect timeout runs again) for the client's
//!   AUTH 0x18 with client-final [MQTT-4.12.0-3]. A right proof: CONNACK 0x00 carrying the
//!   method and server-final, and the connection goes on as any other, its user the one
//!   client-first named (a CONNECT User Name, if any, must be that one: else 0x87). A wrong
//!   proof, a user without a credential or an unknown user (the exchange runs on a decoy salt,
//!   so the two cannot be told apart): CONNACK 0x86 Bad user name or password; a malformed
//!   SCRAM message or one of another exchange (nonce): CONNACK 0x87 Not authorized; then the
//!   close [MQTT-4.12.0-4]. Anything but AUTH 0x18 with the method, or DISCONNECT, before
//!   CONNACK is a Protocol Error [MQTT-3.1.2-30]: CONNACK 0x82 and the close.
//! - **Re-authentication** (§4.12.1). A connection that authenticated this way may send AUTH
//!   0x19 with a new client-first (same method [MQTT-4.12.1-1], same user) at any time; the
//!   broker answers AUTH 0x18 server-first, the client AUTH 0x18 client-final, and the broker
//!   AUTH 0x00 Success with server-final. Other packets flow meanwhile. A failed
//!   re-authentication ends with DISCONNECT 0x87 Not authorized and the close
//!   [MQTT-4.12.1-2] (the will is published: the client did not disconnect).
//! - **Protocol errors.** AUTH on a connection that did not use enhanced authentication
//!   [MQTT-4.12.0-7], another method, AUTH 0x18 outside an exchange, 0x19 inside one, or 0x00
//!   from the client: DISCONNECT 0x82 Protocol Error and the close.
//!
//! Cost: a check is a few HMAC-SHA-256s (the key stretching is the client's), so it runs on the
//! core; nothing here waits.

use super::*;

/// The packet asks for SCRAM-SHA-256 (exactly the registered name).
fn scram_method(method: Option<&MqttStr>) -> bool {
    method.is_some_and(|m| m.as_str() == scram::METHOD)
}

/// AUTH with the method and `data`.
fn auth_packet(reason_code: ReasonCode, data: Vec<u8>) -> Packet {
    Packet::Auth(Auth {
        reason_code,
        properties: AuthProperties {
            authentication_method: Some(MqttStr::from_static(scram::METHOD)),
            authentication_data: Some(Bytes::from(data)),
            ..Default::default()
        }
        .into(),
    })
}

impl Core {
    /// A fresh server nonce from the seeded RNG.
    fn scram_nonce(&mut self) -> String {
        let mut random = [0u8; scram::NONCE_BYTES];
        self.rng.fill_bytes(&mut random);
        scram::nonce(&random)
    }

    /// Reads client-first (from CONNECT or AUTH 0x19): server-first, or why not.
    fn scram_start(
        &mut self,
        client_first: Option<&Bytes>,
    ) -> Result<(ServerExchange, Vec<u8>), ScramError> {
        let nonce = self.scram_nonce();
        let auth = &self.config.authenticator;
        ServerExchange::start(
            client_first.map_or(&[][..], |d| &d[..]),
            |user| auth.scram_credential(user),
            &self.scram_decoy_secret,
            &nonce,
        )
    }

    /// A CONNECT with an Authentication Method (5.0): the exchange starts, or the CONNECT is
    /// refused.
    pub(super) fn start_exchange(
        &mut self,
        conn: ConnId,
        connect: Connect,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let protocol = connect.protocol;
        let properties = &connect.properties;
        if !scram_method(properties.authentication_method.as_ref())
            || !self.config.authenticator.offers_scram()
        {
            tracing::info!(
                conn,
                method = properties.authentication_method.as_deref(),
                "[MQTT-4.12.0-1] authentication method not offered"
            );
            return self.refuse(
                conn,
                protocol,
                ReasonCode::BadAuthenticationMethod,
                now,
                out,
            );
        }
        let started = self.scram_start(properties.authentication_data.as_ref());
        let (scram, server_first) = match started {
            Ok(started) => started,
            Err(error) => {
                tracing::info!(conn, %error, "SCRAM client-first refused");
                return self.refuse(conn, protocol, ReasonCode::NotAuthorized, now, out);
            }
        };
        out.push(Action::SetProtocol {
            conn,
            version: protocol,
        });
        out.push(Action::Send {
            conn,
            packet: auth_packet(ReasonCode::ContinueAuthentication, server_first),
        });
        // The exchange is bounded like the CONNECT itself: the client's answer must come
        // within the connect timeout (the timer is dropped again when a packet arrives).
        let at = now + Duration::from_secs(self.config.connect_timeout_secs);
        self.timers.insert((at, Timer::ConnectTimeout(conn)));
        self.exchanges.insert(
            conn,
            Box::new(Exchange {
                scram,
                connect: Some(Box::new(connect)),
            }),
        );
    }

    /// A packet on a connection whose CONNECT waits for its exchange to end.
    pub(super) fn on_auth_before_connack(
        &mut self,
        conn: ConnId,
        packet: Packet,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(exchange) = self.exchanges.remove(&conn) else {
            return;
        };
        let protocol = ProtocolVersion::V5;
        let auth = match packet {
            Packet::Auth(auth)
                if auth.reason_code == ReasonCode::ContinueAuthentication
                    && scram_method(auth.properties.authentication_method.as_ref()) =>
            {
                auth
            }
            Packet::Disconnect(_) => {
                tracing::debug!(conn, "DISCONNECT during the authentication exchange");
                return self.end_connection(conn, false, now, out);
            }
            other => {
                self.stats.protocol_errors += 1;
                tracing::info!(
                    conn,
                    packet = ?other.packet_type(),
                    "[MQTT-3.1.2-30] only AUTH 0x18 with the CONNECT's method or DISCONNECT \
                     may come before CONNACK in an authentication exchange"
                );
                return self.refuse(conn, protocol, ReasonCode::ProtocolError, now, out);
            }
        };
        let data = auth
            .properties
            .authentication_data
            .as_deref()
            .unwrap_or_default();
        match exchange.scram.finish(data) {
            Ok(server_final) => {
                let Some(connect) = exchange.connect else {
                    return;
                };
                self.authenticated = Some(Authenticated {
                    conn,
                    username: exchange.scram.username().to_string(),
                    server_final: Bytes::from(server_final),
                });
                self.on_connect(conn, *connect, now, out);
                self.authenticated = None;
            }
            Err(error) => {
                tracing::info!(conn, %error, "[MQTT-4.12.0-4] SCRAM authentication failed");
                let reason = match error {
                    ScramError::BadProof => ReasonCode::BadUserNameOrPassword,
                    _ => ReasonCode::NotAuthorized,
                };
                self.refuse(conn, protocol, reason, now, out);
            }
        }
    }

    /// AUTH on an online 5.0 connection: re-authentication (§4.12.1).
    pub(super) fn on_reauth(
        &mut self,
        conn: ConnId,
        auth: Auth,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(online) = self.online(conn) else {
            return;
        };
        if !online.enhanced_auth {
            return self.violation(
                conn,
                ReasonCode::ProtocolError,
                "[MQTT-4.12.0-7] AUTH on a connection without an authentication method in CONNECT",
                now,
                out,
            );
        }
        let username = online.username.clone();
        if !scram_method(auth.properties.authentication_method.as_ref()) {
            return self.violation(
                conn,
                ReasonCode::ProtocolError,
                "[MQTT-4.12.1-1] re-authentication with another method than CONNECT's",
                now,
                out,
            );
        }
        let data = auth.properties.authentication_data.as_ref();
        let in_exchange = self.exchanges.contains_key(&conn);
        match (auth.reason_code, in_exchange) {
            (ReasonCode::ReAuthenticate, false) => match self.scram_start(data) {
                Ok((scram, _)) if username.as_deref() != Some(scram.username()) => {
                    self.fail_reauth(conn, "re-authentication names another user", now, out)
                }
                Ok((scram, server_first)) => {
                    out.push(Action::Send {
                        conn,
                        packet: auth_packet(ReasonCode::ContinueAuthentication, server_first),
                    });
                    self.exchanges.insert(
                        conn,
                        Box::new(Exchange {
                            scram,
                            connect: None,
                        }),
                    );
                }
                Err(error) => self.fail_reauth(conn, &error.to_string(), now, out),
            },
            (ReasonCode::ContinueAuthentication, true) => {
                let Some(exchange) = self.exchanges.remove(&conn) else {
                    return;
                };
                match exchange.scram.finish(data.map_or(&[][..], |d| &d[..])) {
                    Ok(server_final) => {
                        tracing::debug!(conn, "re-authenticated");
                        out.push(Action::Send {
                            conn,
                            packet: auth_packet(ReasonCode::Success, server_final),
                        });
                    }
                    Err(error) => self.fail_reauth(conn, &error.to_string(), now, out),
                }
            }
            (reason, _) => {
                let why = if in_exchange {
                    "AUTH other than 0x18 during a re-authentication exchange"
                } else {
                    "AUTH other than 0x19 outside an authentication exchange"
                };
                tracing::info!(conn, ?reason, why);
                self.violation(conn, ReasonCode::ProtocolError, why, now, out)
            }
        }
    }

    /// [MQTT-4.12.1-2] a failed re-authentication: DISCONNECT 0x87 and the close.
    fn fail_reauth(&mut self, conn: ConnId, why: &str, now: Instant, out: &mut Vec<Action>) {
        tracing::info!(
            conn,
            why,
            "[MQTT-4.12.1-2] re-authentication failed; closing"
        );
        self.send_disconnect_v5(conn, ReasonCode::NotAuthorized, out);
        self.end_connection(conn, true, now, out);
    }
}
