//! Nothing invented: every delivery carries a message someone published (or a will someone
//! registered), on the topic it was published to, after it was published. An empty payload
//! carries no id, so it must match an empty publish (or empty will) on that topic.

use super::{spec_id, Outcome, ViolationBuilder};
use crate::codec::ProtocolVersion;
use crate::history::model::Model;

pub fn check(model: &Model, out: &mut Outcome) {
    for delivery in &model.deliveries {
        let version = delivery
            .connection
            .map(|c| model.connections[c].protocol)
            .unwrap_or(ProtocolVersion::V311);
        if delivery.empty {
            let published = model
                .messages
                .iter()
                .any(|m| m.empty && m.topic == delivery.topic && m.sent_ms <= delivery.at_ms)
                || model.connections.iter().any(|c| {
                    c.will
                        .as_ref()
                        .is_some_and(|w| w.id.is_empty() && w.topic == delivery.topic)
                });
            if !published {
                out.violation(
                    ViolationBuilder::new("MQTT-4.5.0-1")
                        .message_ref("?", &delivery.topic, "")
                        .client(&delivery.client)
                        .owed("only messages some client published")
                        .happened("an empty message nobody published on this topic")
                        .events([delivery.event]),
                );
            }
            continue;
        }
        if let Some(&m) = model.message_by_id.get(&delivery.id) {
            let message = &model.messages[m];
            if message.topic != delivery.topic {
                out.violation(
                    ViolationBuilder::new(spec_id(version, "MQTT-4.7.3-4", "MQTT-4.7.3-4"))
                        .message(message)
                        .client(&delivery.client)
                        .owed(format!(
                            "the topic it was published to: {:?}",
                            message.topic
                        ))
                        .happened(format!("delivered on {:?}", delivery.topic))
                        .events([message.event, delivery.event]),
                );
            } else if delivery.at_ms < message.sent_ms {
                out.violation(
                    ViolationBuilder::new("MQTT-4.5.0-1")
                        .message(message)
                        .client(&delivery.client)
                        .owed("delivery after the publish")
                        .happened("delivered before it was published")
                        .events([delivery.event, message.event]),
                );
            }
            continue;
        }
        if let Some(&c) = model.will_by_id.get(&delivery.id) {
            let conn = &model.connections[c];
            let will = conn.will.as_ref().expect("registered wills exist");
            if will.topic != delivery.topic {
                out.violation(
                    ViolationBuilder::new(spec_id(version, "MQTT-4.7.3-4", "MQTT-4.7.3-4"))
                        .message_ref(&conn.client, &will.topic, &will.id)
                        .client(&delivery.client)
                        .owed(format!("the will topic {:?}", will.topic))
                        .happened(format!("delivered on {:?}", delivery.topic))
                        .events([conn.event, delivery.event]),
                );
            }
            continue;
        }
        out.violation(
            ViolationBuilder::new("MQTT-4.5.0-1")
                .message_ref("?", &delivery.topic, &delivery.id)
                .client(&delivery.client)
                .owed("only messages some client published")
                .happened(format!("unknown payload id {:?}", delivery.id))
                .events([delivery.event]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckerName;
    use crate::history::model::build::TraceBuilder;

    fn base() -> TraceBuilder {
        let mut b = TraceBuilder::new();
        b.connect("s", true, false)
            .connect("p", true, false)
            .subscribe("s", "#", 1, 1);
        b
    }

    #[test]
    fn published_messages_pass() {
        let mut b = base();
        b.publish("p", "p-1", "a", 0)
            .deliver("s", "p-1", "a", 0)
            .publish_opts("p", "", "a", 0, true, 0)
            .deliver("s", "", "a", 0);
        assert!(CheckerName::Invented.run(&b.model()).passed());
    }

    #[test]
    fn unknown_ids_other_topics_and_time_travel_violate() {
        let mut b = base();
        b.deliver("s", "x-9", "a", 0);
        let out = CheckerName::Invented.run(&b.model());
        assert!(out.violations[0].happened.contains("x-9"));

        let mut b = base();
        b.publish("p", "p-1", "a", 0).deliver("s", "p-1", "b", 0);
        let out = CheckerName::Invented.run(&b.model());
        assert_eq!(out.violations[0].spec, "MQTT-4.7.3-4");

        let mut b = base();
        b.deliver("s", "", "a", 0);
        assert_eq!(CheckerName::Invented.run(&b.model()).violations.len(), 1);
    }
}
