//! `-D command identifier value`: MQTT 5.0 properties on the command line, spelled as
//! mosquitto_pub/sub/rr spell them (`-D publish user-property key value`,
//! `-D connect session-expiry-interval 60`, …), with mosquitto's error words for an unknown
//! command, an unknown property, or a property the command does not carry. Stricter than
//! mosquitto where it would silently do nothing or something else: values are checked
//! (a number out of range is an error, not 0) and `-D` needs `-V 5`.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use simqtt::codec::{ConnectProperties, MqttStr, PublishProperties, TopicName, WillProperties};

/// The properties of every `-D`, by the packet that carries them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CliProperties {
    pub connect: ConnectProperties,
    pub publish: PublishProperties,
    pub will: WillProperties,
}

impl CliProperties {
    pub fn is_empty(&self) -> bool {
        *self == CliProperties::default()
    }
}

/// The commands mosquitto's -D knows; the ones simqtt's client cannot send yet are refused
/// by name rather than ignored.
const COMMANDS: &[&str] = &[
    "connect",
    "publish",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "will",
    "auth",
];

/// Every property name mosquitto's -D accepts.
const PROPERTIES: &[&str] = &[
    "payload-format-indicator",
    "message-expiry-interval",
    "content-type",
    "response-topic",
    "correlation-data",
    "subscription-identifier",
    "session-expiry-interval",
    "assigned-client-identifier",
    "server-keep-alive",
    "authentication-method",
    "authentication-data",
    "request-problem-information",
    "will-delay-interval",
    "request-response-information",
    "response-information",
    "server-reference",
    "reason-string",
    "receive-maximum",
    "topic-alias-maximum",
    "topic-alias",
    "maximum-qos",
    "retain-available",
    "user-property",
    "maximum-packet-size",
    "wildcard-subscription-available",
    "subscription-identifier-available",
    "shared-subscription-available",
];

/// Splits the words of every `-D` (clap hands them over in one list) into occurrences:
/// command, identifier, then one value, or two for user-property.
pub fn occurrences(words: &[String]) -> Result<Vec<Vec<String>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < words.len() {
        let take = match words.get(at + 1).map(String::as_str) {
            Some("user-property") => 4,
            _ => 3,
        };
        let Some(occurrence) = words.get(at..at + take) else {
            return Err(format!(
                "Error: -D {} is incomplete: -D command identifier value.",
                words[at..].join(" ")
            ));
        };
        out.push(occurrence.to_vec());
        at += take;
    }
    Ok(out)
}

/// Parses the words of every `-D` (see `occurrences`).
pub fn parse_words(words: &[String]) -> Result<CliProperties, String> {
    parse(&occurrences(words)?)
}

/// Parses every `-D` occurrence (each 3 or 4 words: command, identifier, value or
/// name value).
pub fn parse(occurrences: &[Vec<String>]) -> Result<CliProperties, String> {
    let mut out = CliProperties::default();
    for words in occurrences {
        let (command, name) = (words[0].as_str(), words[1].as_str());
        if !COMMANDS.contains(&command) {
            return Err("Error: Invalid command given in -D argument.".into());
        }
        if !PROPERTIES.contains(&name) {
            return Err("Error: Invalid property name given in -D argument.".into());
        }
        let values = &words[2..];
        let user = name == "user-property";
        if user && values.len() != 2 {
            return Err(format!(
                "Error: -D {command} user-property takes a name and a value."
            ));
        }
        if !user && values.len() != 1 {
            return Err(format!("Error: -D {command} {name} takes one value."));
        }
        let value = values[0].as_str();
        set(&mut out, command, name, values)
            .map_err(|e| format!("Error: -D {command} {name} {value}: {e}."))?
            .ok_or_else(|| not_allowed(command, name))?;
    }
    Ok(out)
}

fn not_allowed(command: &str, name: &str) -> String {
    match command {
        "subscribe" | "unsubscribe" | "disconnect" | "auth" => format!(
            "Error: -D {command} properties are not supported by simqtt's client yet ({name})."
        ),
        _ => format!("Error: {name} property not allowed for {command} in -D argument."),
    }
}

/// Sets one property; `Ok(None)` when `command` does not carry `name`.
fn set(
    out: &mut CliProperties,
    command: &str,
    name: &str,
    values: &[String],
) -> Result<Option<()>, String> {
    let value = values[0].as_str();
    let done = Ok(Some(()));
    match (command, name) {
        ("connect", "session-expiry-interval") => {
            out.connect.session_expiry_interval_secs = Some(number(value)?)
        }
        ("connect", "receive-maximum") => {
            out.connect.receive_maximum =
                Some(NonZeroU16::new(number(value)?).ok_or("must be 1 to 65535")?)
        }
        ("connect", "maximum-packet-size") => {
            out.connect.maximum_packet_size =
                Some(NonZeroU32::new(number(value)?).ok_or("must be 1 to 4294967295")?)
        }
        ("connect", "topic-alias-maximum") => {
            out.connect.topic_alias_maximum = Some(number(value)?)
        }
        ("connect", "request-response-information") => {
            out.connect.request_response_information = Some(flag(value)?)
        }
        ("connect", "request-problem-information") => {
            out.connect.request_problem_information = Some(flag(value)?)
        }
        ("connect", "user-property") => out.connect.user_properties.push(pair(values)?),
        ("publish", "payload-format-indicator") => {
            out.publish.payload_format_utf8 = Some(flag(value)?)
        }
        ("publish", "message-expiry-interval") => {
            out.publish.message_expiry_interval_secs = Some(number(value)?)
        }
        ("publish", "content-type") => out.publish.content_type = Some(string(value)?),
        ("publish", "response-topic") => out.publish.response_topic = Some(topic(value)?),
        ("publish", "correlation-data") => {
            out.publish.correlation_data = Some(Bytes::from(value.to_string()))
        }
        ("publish", "topic-alias") => {
            out.publish.topic_alias =
                Some(NonZeroU16::new(number(value)?).ok_or("must be 1 to 65535")?)
        }
        ("publish", "user-property") => out.publish.user_properties.push(pair(values)?),
        ("will", "will-delay-interval") => out.will.will_delay_interval_secs = Some(number(value)?),
        ("will", "payload-format-indicator") => out.will.payload_format_utf8 = Some(flag(value)?),
        ("will", "message-expiry-interval") => {
            out.will.message_expiry_interval_secs = Some(number(value)?)
        }
        ("will", "content-type") => out.will.content_type = Some(string(value)?),
        ("will", "response-topic") => out.will.response_topic = Some(topic(value)?),
        ("will", "correlation-data") => {
            out.will.correlation_data = Some(Bytes::from(value.to_string()))
        }
        ("will", "user-property") => out.will.user_properties.push(pair(values)?),
        _ => return Ok(None),
    }
    done
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| "not a number in the property's range".to_string())
}

fn flag(value: &str) -> Result<bool, String> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err("must be 0 or 1".into()),
    }
}

fn string(value: &str) -> Result<MqttStr, String> {
    MqttStr::new(value).map_err(|e| e.to_string())
}

fn topic(value: &str) -> Result<TopicName, String> {
    TopicName::new(value)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "[MQTT-3.3.2-14] not a topic name (no wildcards, not empty)".to_string())
}

fn pair(values: &[String]) -> Result<(MqttStr, MqttStr), String> {
    Ok((string(&values[0])?, string(&values[1])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn properties_land_in_their_packets_in_order() {
        let parsed = parse(&[
            d(&["publish", "user-property", "k", "v"]),
            d(&["publish", "message-expiry-interval", "30"]),
            d(&["publish", "user-property", "k", "w"]),
            d(&["publish", "content-type", "text/plain"]),
            d(&["publish", "payload-format-indicator", "1"]),
            d(&["publish", "response-topic", "r/t"]),
            d(&["publish", "correlation-data", "abc"]),
            d(&["publish", "topic-alias", "2"]),
            d(&["connect", "session-expiry-interval", "60"]),
            d(&["connect", "topic-alias-maximum", "10"]),
            d(&["connect", "user-property", "who", "me"]),
            d(&["will", "will-delay-interval", "5"]),
        ])
        .unwrap();
        let p = &parsed.publish;
        let users: Vec<(&str, &str)> = p
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(users, vec![("k", "v"), ("k", "w")]);
        assert_eq!(p.message_expiry_interval_secs, Some(30));
        assert_eq!(p.content_type.as_ref().unwrap().as_str(), "text/plain");
        assert_eq!(p.payload_format_utf8, Some(true));
        assert_eq!(p.response_topic.as_ref().unwrap().as_str(), "r/t");
        assert_eq!(p.correlation_data.as_deref(), Some(&b"abc"[..]));
        assert_eq!(p.topic_alias, NonZeroU16::new(2));
        assert_eq!(parsed.connect.session_expiry_interval_secs, Some(60));
        assert_eq!(parsed.connect.topic_alias_maximum, Some(10));
        assert_eq!(parsed.connect.user_properties.len(), 1);
        assert_eq!(parsed.will.will_delay_interval_secs, Some(5));
    }

    #[test]
    fn words_split_into_occurrences_by_identifier() {
        let words = d(&[
            "publish",
            "user-property",
            "k",
            "v",
            "publish",
            "content-type",
            "t",
        ]);
        assert_eq!(
            occurrences(&words).unwrap(),
            vec![
                d(&["publish", "user-property", "k", "v"]),
                d(&["publish", "content-type", "t"])
            ]
        );
        // A fourth word after a one-value property is not silently dropped.
        let error = parse_words(&d(&["publish", "content-type", "a", "b"])).unwrap_err();
        assert!(error.contains("incomplete"), "{error}");
    }

    #[test]
    fn bad_d_arguments_are_refused_with_a_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["foo", "bar", "baz"], "Invalid command"),
            (&["publish", "foo", "1"], "Invalid property name"),
            (&["connect", "topic-alias", "3"], "not allowed for connect"),
            (&["publish", "message-expiry-interval", "x"], "range"),
            (&["publish", "message-expiry-interval", "-1"], "range"),
            (&["publish", "payload-format-indicator", "2"], "0 or 1"),
            (&["publish", "topic-alias", "0"], "1 to 65535"),
            (&["publish", "response-topic", "a/#"], "MQTT-3.3.2-14"),
            (&["publish", "user-property", "k"], "a name and a value"),
            (
                &["subscribe", "subscription-identifier", "1"],
                "not supported",
            ),
        ];
        for (words, expected) in cases {
            let error = parse(&[d(words)]).unwrap_err();
            assert!(error.contains(expected), "{words:?}: {error}");
            assert!(error.starts_with("Error: "), "{error}");
        }
    }
}
