//! Enhanced authentication (SCRAM-SHA-256) on the state machine: CONNECT, AUTH, CONNACK.

use super::tests::*;
use super::*;
use crate::broker::auth::{Authenticator, PasswordFile, PasswordHash};
use crate::scram::{ClientAwaitingFinal, ClientExchange, ScramCredential};

const USER: &str = "alice";
const PASSWORD: &[u8] = b"s3cret";

/// A broker whose password file gives alice a SCRAM credential and bob none.
fn scram_harness() -> Harness {
    let hash = PasswordHash::with_salt(PASSWORD, [1; 12], 10);
    let passwords =
        PasswordFile::from_entries([(USER.to_string(), hash.clone()), ("bob".to_string(), hash)])
            .with_scram(
                USER,
                ScramCredential::derive(PASSWORD, b"salt-of-alice", 64),
            );
    let mut config = config();
    config.authenticator = Authenticator::new(false, Some(passwords), None);
    Harness::new(config)
}

fn scram_connect(client_first: Vec<u8>) -> Connect {
    let mut connect = connect_packet("c", true, ProtocolVersion::V5);
    connect.properties.authentication_method = Some(MqttStr::from_static(scram::METHOD));
    connect.properties.authentication_data = Some(Bytes::from(client_first));
    connect
}

fn auth(reason_code: ReasonCode, method: &'static str, data: Vec<u8>) -> Packet {
    Packet::Auth(Auth {
        reason_code,
        properties: AuthProperties {
            authentication_method: Some(MqttStr::from_static(method)),
            authentication_data: Some(Bytes::from(data)),
            ..Default::default()
        }
        .into(),
    })
}

/// The AUTH sent to `conn` among `actions`: (reason, method, data).
fn auth_sent(actions: &[Action], conn: ConnId) -> Option<(ReasonCode, String, Vec<u8>)> {
    sent(actions, conn).into_iter().find_map(|p| match p {
        Packet::Auth(a) => Some((
            a.reason_code,
            a.properties.authentication_method.as_deref()?.to_string(),
            a.properties.authentication_data.as_deref()?.to_vec(),
        )),
        _ => None,
    })
}

fn disconnect_reason(actions: &[Action], conn: ConnId) -> Option<ReasonCode> {
    sent(actions, conn).into_iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

/// Runs CONNECT and the server-first round; returns the client's state and the client-final
/// it would send.
fn begin(
    h: &mut Harness,
    conn: ConnId,
    user: &str,
    password: &[u8],
) -> (ClientAwaitingFinal, Vec<u8>) {
    let (client, first) = ClientExchange::start(user, password, "client-nonce");
    let out = h.connect_with(conn, scram_connect(first));
    assert!(
        connack(&out, conn).is_none(),
        "no CONNACK before the exchange ends"
    );
    assert!(!closed(&out, conn));
    let (reason, method, server_first) = auth_sent(&out, conn).expect("AUTH server-first");
    // [MQTT-4.12.0-2] [MQTT-4.12.0-5]
    assert_eq!(reason, ReasonCode::ContinueAuthentication);
    assert_eq!(method, scram::METHOD);
    client.respond(&server_first).unwrap()
}

/// Connects alice with SCRAM.
fn connect_alice(h: &mut Harness, conn: ConnId) {
    let (awaiting, last) = begin(h, conn, USER, PASSWORD);
    let out = h.send(
        conn,
        auth(ReasonCode::ContinueAuthentication, scram::METHOD, last),
    );
    let ack = connack(&out, conn).expect("CONNACK");
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        ack.properties.authentication_method.as_deref(),
        Some(scram::METHOD)
    );
    awaiting
        .verify(ack.properties.authentication_data.as_deref().unwrap())
        .expect("the server proves it knows the password");
}

#[test]
fn scram_connect_succeeds_and_the_session_is_the_users() {
    let mut h = scram_harness();
    connect_alice(&mut h, 1);
    let clients = h.core.clients();
    assert_eq!(clients[0].username.as_deref(), Some(USER));
    // The connection works as any other.
    let out = h.send(1, Packet::PingReq);
    assert_eq!(sent(&out, 1), vec![Packet::PingResp]);
}

#[test]
fn a_wrong_password_or_a_user_without_a_credential_gets_0x86_and_the_close() {
    for (user, password) in [
        (USER, &b"wrong"[..]),
        ("bob", PASSWORD),
        ("nobody", PASSWORD),
    ] {
        let mut h = scram_harness();
        let (_, last) = begin(&mut h, 1, user, password);
        let out = h.send(
            1,
            auth(ReasonCode::ContinueAuthentication, scram::METHOD, last),
        );
        // [MQTT-4.12.0-4]
        let ack = connack(&out, 1).expect("CONNACK");
        assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword, "{user}");
        assert!(closed(&out, 1));
        assert!(h.core.clients().is_empty());
    }
}

#[test]
fn a_malformed_client_final_gets_0x87_and_the_close() {
    let mut h = scram_harness();
    begin(&mut h, 1, USER, PASSWORD);
    let out = h.send(
        1,
        auth(
            ReasonCode::ContinueAuthentication,
            scram::METHOD,
            b"c=biws,r=other,p=AAAA".to_vec(),
        ),
    );
    assert_eq!(
        connack(&out, 1).unwrap().reason_code,
        ReasonCode::NotAuthorized
    );
    assert!(closed(&out, 1));
}

#[test]
fn an_unknown_method_or_no_password_file_gets_0x8c() {
    let mut h = scram_harness();
    let mut connect = scram_connect(b"n,,n=alice,r=x".to_vec());
    connect.properties.authentication_method = Some(MqttStr::from_static("SCRAM-SHA-1"));
    let out = h.connect_with(1, connect);
    // [MQTT-4.12.0-1]
    assert_eq!(
        connack(&out, 1).unwrap().reason_code,
        ReasonCode::BadAuthenticationMethod
    );
    assert!(closed(&out, 1));
    let mut h = Harness::new(config());
    let out = h.connect_with(1, scram_connect(b"n,,n=alice,r=x".to_vec()));
    assert_eq!(
        connack(&out, 1).unwrap().reason_code,
        ReasonCode::BadAuthenticationMethod
    );
}

#[test]
fn only_auth_0x18_with_the_method_may_come_before_connack() {
    for packet in [
        Packet::PingReq,
        auth(ReasonCode::ReAuthenticate, scram::METHOD, vec![]),
        auth(ReasonCode::ContinueAuthentication, "PLAIN", vec![]),
    ] {
        let mut h = scram_harness();
        begin(&mut h, 1, USER, PASSWORD);
        let out = h.send(1, packet.clone());
        assert_eq!(
            connack(&out, 1).map(|a| a.reason_code),
            Some(ReasonCode::ProtocolError),
            "{packet:?}"
        );
        assert!(closed(&out, 1));
    }
}

#[test]
fn the_exchange_is_bounded_by_the_connect_timeout() {
    let mut h = scram_harness();
    begin(&mut h, 1, USER, PASSWORD);
    let out = h.advance(h.core.config.connect_timeout_secs as f64 + 1.0);
    assert!(closed(&out, 1));
}

#[test]
fn a_connect_user_name_other_than_scrams_is_refused() {
    let mut h = scram_harness();
    let (client, first) = ClientExchange::start(USER, PASSWORD, "n");
    let mut connect = scram_connect(first);
    connect.username = Some(MqttStr::from_static("bob"));
    let out = h.connect_with(1, connect);
    let (_, _, server_first) = auth_sent(&out, 1).unwrap();
    let (_, last) = client.respond(&server_first).unwrap();
    let out = h.send(
        1,
        auth(ReasonCode::ContinueAuthentication, scram::METHOD, last),
    );
    assert_eq!(
        connack(&out, 1).unwrap().reason_code,
        ReasonCode::NotAuthorized
    );
}

/// Re-authenticates conn 1 (alice) with `password`; the actions of the final round.
fn reauth(h: &mut Harness, user: &str, password: &[u8]) -> (Vec<Action>, ClientAwaitingFinal) {
    let (client, first) = ClientExchange::start(user, password, "again");
    let out = h.send(1, auth(ReasonCode::ReAuthenticate, scram::METHOD, first));
    let (reason, method, server_first) = auth_sent(&out, 1).expect("AUTH server-first");
    assert_eq!(
        (reason, method.as_str()),
        (ReasonCode::ContinueAuthentication, scram::METHOD)
    );
    let (awaiting, last) = client.respond(&server_first).unwrap();
    // Other packets flow during the exchange.
    assert_eq!(sent(&h.send(1, Packet::PingReq), 1), vec![Packet::PingResp]);
    (
        h.send(
            1,
            auth(ReasonCode::ContinueAuthentication, scram::METHOD, last),
        ),
        awaiting,
    )
}

#[test]
fn re_authentication_succeeds_with_auth_0x00() {
    let mut h = scram_harness();
    connect_alice(&mut h, 1);
    let (out, awaiting) = reauth(&mut h, USER, PASSWORD);
    let (reason, method, server_final) = auth_sent(&out, 1).expect("AUTH success");
    assert_eq!(
        (reason, method.as_str()),
        (ReasonCode::Success, scram::METHOD)
    );
    awaiting.verify(&server_final).unwrap();
    assert!(!closed(&out, 1));
    // And again.
    let (out, _) = reauth(&mut h, USER, PASSWORD);
    assert_eq!(auth_sent(&out, 1).unwrap().0, ReasonCode::Success);
}

#[test]
fn failed_re_authentication_disconnects_with_0x87() {
    let mut h = scram_harness();
    connect_alice(&mut h, 1);
    let (out, _) = reauth(&mut h, USER, b"wrong");
    // [MQTT-4.12.1-2]
    assert_eq!(disconnect_reason(&out, 1), Some(ReasonCode::NotAuthorized));
    assert!(closed(&out, 1));
    // Another user cannot take over the connection by re-authenticating.
    let mut h = scram_harness();
    connect_alice(&mut h, 1);
    let (_, first) = ClientExchange::start("bob", PASSWORD, "x");
    let out = h.send(1, auth(ReasonCode::ReAuthenticate, scram::METHOD, first));
    assert_eq!(disconnect_reason(&out, 1), Some(ReasonCode::NotAuthorized));
    assert!(closed(&out, 1));
}

#[test]
fn auth_without_enhanced_authentication_or_out_of_turn_is_a_protocol_error() {
    // [MQTT-4.12.0-7] a connection that did not use an authentication method.
    let mut h = scram_harness();
    let mut plain = connect_packet("p", true, ProtocolVersion::V5);
    plain.username = Some(MqttStr::from_static(USER));
    plain.password = Some(Bytes::from_static(PASSWORD));
    assert_eq!(
        connack(&h.connect_with(1, plain), 1).unwrap().reason_code,
        ReasonCode::Success
    );
    let (_, first) = ClientExchange::start(USER, PASSWORD, "x");
    let out = h.send(1, auth(ReasonCode::ReAuthenticate, scram::METHOD, first));
    assert_eq!(disconnect_reason(&out, 1), Some(ReasonCode::ProtocolError));
    assert!(closed(&out, 1));
    // 0x18 outside an exchange, another method, 0x00 from the client.
    for packet in [
        auth(ReasonCode::ContinueAuthentication, scram::METHOD, vec![]),
        auth(ReasonCode::ReAuthenticate, "PLAIN", vec![]),
        auth(ReasonCode::Success, scram::METHOD, vec![]),
    ] {
        let mut h = scram_harness();
        connect_alice(&mut h, 1);
        let out = h.send(1, packet.clone());
        assert_eq!(
            disconnect_reason(&out, 1),
            Some(ReasonCode::ProtocolError),
            "{packet:?}"
        );
    }
}
