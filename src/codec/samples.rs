//! Canonical packets: one full instance of every packet type per protocol version, with every
//! field the version can carry set. Used by the snapshot and round-trip tests, the fuzz seed
//! corpus and the benchmark; other layers' tests may use them as ready-made valid packets.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;

use super::packet::*;

fn s(text: &'static str) -> MqttStr {
    MqttStr::from_static(text)
}

fn pid(id: u16) -> PacketId {
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
}

fn user() -> Vec<UserProperty> {
    vec![(s("region"), s("eu")), (s("region"), s("us"))]
}

/// One named instance of every packet type valid in `version` (AUTH only in 5.0). In 3.1.1
/// the 5.0-only content is left at its defaults.
pub fn canonical(version: ProtocolVersion) -> Vec<(&'static str, Packet)> {
    let v5 = version == ProtocolVersion::V5;
    let ack = |id: u16, reason: ReasonCode| {
        if v5 {
            Ack {
                packet_id: pid(id),
                reason_code: reason,
                properties: AckProperties {
                    reason_string: Some(s("why")),
                    user_properties: user(),
                }
                .into(),
            }
        } else {
            Ack::new(pid(id))
        }
    };
    let mut packets = vec![
        ("connect", Packet::Connect(Box::new(connect(version)))),
        (
            "connack",
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::Success,
                properties: if v5 {
                    ConnAckProperties {
                        session_expiry_interval_secs: Some(3600),
                        receive_maximum: NonZeroU16::new(100),
                        maximum_qos: Some(QoS::AtLeastOnce),
                        retain_available: Some(true),
                        maximum_packet_size: NonZeroU32::new(1 << 20),
                        assigned_client_identifier: Some(s("auto-1")),
                        topic_alias_maximum: Some(10),
                        reason_string: Some(s("welcome")),
                        user_properties: user(),
                        wildcard_subscription_available: Some(true),
                        subscription_identifiers_available: Some(true),
                        shared_subscription_available: Some(false),
                        server_keep_alive_secs: Some(30),
                        response_information: Some(s("resp/")),
                        server_reference: Some(s("other:1883")),
                        authentication_method: Some(s("SCRAM-SHA-256")),
                        authentication_data: Some(Bytes::from_static(b"srv")),
                    }
                    .into()
                } else {
                    ConnAckProperties::default().into()
                },
            }),
        ),
        ("publish", Packet::Publish(publish(version))),
        (
            "puback",
            Packet::PubAck(ack(2, ReasonCode::NoMatchingSubscribers)),
        ),
        ("pubrec", Packet::PubRec(ack(3, ReasonCode::Success))),
        (
            "pubrel",
            Packet::PubRel(ack(4, ReasonCode::PacketIdentifierNotFound)),
        ),
        ("pubcomp", Packet::PubComp(ack(5, ReasonCode::Success))),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: pid(6),
                properties: if v5 {
                    SubscribeProperties {
                        subscription_identifier: NonZeroU32::new(268_435_455),
                        user_properties: user(),
                    }
                } else {
                    SubscribeProperties::default()
                },
                filters: vec![
                    (
                        TopicFilter::from_static("sport/+/score"),
                        if v5 {
                            SubscriptionOptions {
                                qos: QoS::ExactlyOnce,
                                no_local: true,
                                retain_as_published: true,
                                retain_handling: RetainHandling::DoNotSend,
                            }
                        } else {
                            SubscriptionOptions::qos(QoS::ExactlyOnce)
                        },
                    ),
                    (
                        TopicFilter::from_static("sport/#"),
                        SubscriptionOptions::qos(QoS::AtMostOnce),
                    ),
                ],
            }),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: pid(6),
                properties: if v5 {
                    AckProperties {
                        reason_string: Some(s("partly")),
                        user_properties: user(),
                    }
                    .into()
                } else {
                    AckProperties::default().into()
                },
                reason_codes: if v5 {
                    vec![ReasonCode::GrantedQoS2, ReasonCode::NotAuthorized]
                } else {
                    vec![ReasonCode::GrantedQoS2, ReasonCode::UnspecifiedError]
                },
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(7),
                user_properties: if v5 { user() } else { Vec::new() },
                filters: vec![
                    TopicFilter::from_static("sport/+/score"),
                    TopicFilter::from_static("sport/#"),
                ],
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(7),
                properties: if v5 {
                    AckProperties {
                        reason_string: Some(s("done")),
                        user_properties: user(),
                    }
                    .into()
                } else {
                    AckProperties::default().into()
                },
                reason_codes: if v5 {
                    vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
                } else {
                    Vec::new()
                },
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        (
            "disconnect",
            Packet::Disconnect(if v5 {
                Disconnect {
                    reason_code: ReasonCode::DisconnectWithWillMessage,
                    properties: DisconnectProperties {
                        session_expiry_interval_secs: Some(0),
                        reason_string: Some(s("bye")),
                        user_properties: user(),
                        server_reference: Some(s("other:1883")),
                    }
                    .into(),
                }
            } else {
                Disconnect::default()
            }),
        ),
    ];
    if v5 {
        packets.push((
            "auth",
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some(s("SCRAM-SHA-256")),
                    authentication_data: Some(Bytes::from_static(b"client-first")),
                    reason_string: Some(s("step 2")),
                    user_properties: user(),
                }
                .into(),
            }),
        ));
    }
    packets
}

fn connect(version: ProtocolVersion) -> Connect {
    let v5 = version == ProtocolVersion::V5;
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive_secs: 60,
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval_secs: Some(3600),
                receive_maximum: NonZeroU16::new(20),
                maximum_packet_size: NonZeroU32::new(65_536),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: user(),
                authentication_method: Some(s("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"client-first")),
            }
        } else {
            ConnectProperties::default()
        },
        client_id: s("client-1"),
        will: Some(Will {
            topic: TopicName::from_static("clients/client-1/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval_secs: Some(5),
                    payload_format_utf8: Some(true),
                    message_expiry_interval_secs: Some(600),
                    content_type: Some(s("text/plain")),
                    response_topic: Some(TopicName::from_static("clients/client-1/reply")),
                    correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                    user_properties: user(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some(s("alice")),
        password: Some(Bytes::from_static(b"secret")),
    }
}

fn publish(version: ProtocolVersion) -> Publish {
    let v5 = version == ProtocolVersion::V5;
    Publish {
        dup: true,
        qos_pid: QosPid::AtLeastOnce(pid(1)),
        retain: true,
        topic: TopicName::from_static("sport/tennis/player1"),
        properties: if v5 {
            PublishProperties {
                payload_format_utf8: Some(true),
                message_expiry_interval_secs: Some(60),
                topic_alias: NonZeroU16::new(3),
                response_topic: Some(TopicName::from_static("sport/tennis/reply")),
                correlation_data: Some(Bytes::from_static(b"req-42")),
                user_properties: user(),
                subscription_identifiers: vec![
                    NonZeroU32::MIN,
                    NonZeroU32::new(268_435_455).unwrap_or(NonZeroU32::MIN),
                ],
                content_type: Some(s("text/plain")),
            }
            .into()
        } else {
            PublishProperties::default().into()
        },
        payload: Bytes::from_static(b"15-30"),
    }
}

/// A QoS 1 PUBLISH with a 31-byte topic and no properties (the benchmark's packet).
pub fn bench_publish(payload_len: usize) -> Publish {
    Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(pid(10)),
        retain: false,
        topic: TopicName::from_static("sensors/building-7/floor-3/temp"),
        properties: PublishProperties::default().into(),
        payload: Bytes::from(vec![0xA5; payload_len]),
    }
}
