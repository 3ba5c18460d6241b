//! Topic filter matching (MQTT 4.7).

/// True when `topic` (a topic name) matches `filter` (a valid topic filter).
/// A filter starting with `+` or `#` does not match a topic starting with `$` [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;
    use crate::codec::{TopicFilter, TopicName};

    /// (filter, topic, matches?) — the examples of 4.7.1 and 4.7.2 in both specs, and the
    /// corner cases around empty levels, `$` topics and trailing separators.
    const CASES: &[(&str, &str, bool)] = &[
        // Exact.
        ("a", "a", true),
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("a/b", "a", false),
        ("a", "a/b", false),
        ("A", "a", false),
        ("a ", "a", false),
        // '#': the parent level and every descendant.
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/#", "sport", true),
        ("sport/#", "sport/", true),
        ("sport/#", "sports", false),
        ("#", "sport", true),
        ("#", "sport/tennis", true),
        ("#", "/", true),
        ("#", "", true),
        // '+': exactly one level, possibly empty.
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+", "sport", true),
        ("+", "", true),
        ("+", "/finance", false),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+/tennis/#", "sport/tennis/player1", true),
        ("+/tennis/#", "sport/tennis", true),
        ("+/tennis/#", "sport/golf", false),
        ("+/+/+", "a/b/c", true),
        ("+/+/+", "a/b", false),
        ("a/+/c", "a//c", true),
        ("a/+/+/#", "a/b/c", true),
        ("a/+/+/#", "a/b", false),
        // Empty levels are levels.
        ("a//b", "a//b", true),
        ("a//b", "a/b", false),
        ("/", "/", true),
        ("/#", "/", true),
        ("/#", "/a/b", true),
        ("/#", "a", false),
        // '$' topics: not matched by a filter that starts with a wildcard [MQTT-4.7.2-1].
        ("#", "$SYS/broker/clients", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("+", "$SYS", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$share/#", "$share/x", true),
        ("a/#", "a/$b", true),
        ("a/+", "a/$b", true),
        // Verbatim comparison, no normalisation [MQTT-4.7.3-4].
        ("caf\u{e9}", "cafe\u{301}", false),
        ("\u{FEFF}a", "a", false),
    ];

    #[test]
    fn filter_matching_cases() {
        for &(filter, topic, expected) in CASES {
            // Every case uses a valid filter and topic name.
            TopicFilter::new(filter).unwrap_or_else(|e| panic!("{filter:?}: {e}"));
            TopicName::new(topic).unwrap_or_else(|e| panic!("{topic:?}: {e}"));
            assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
        }
    }

    /// Every filter over a small alphabet against every topic over it, checked against a
    /// reference written from the definition (level by level, recursively).
    #[test]
    fn exhaustive_against_a_reference_matcher() {
        fn reference(filter: &[&str], topic: &[&str]) -> bool {
            match (filter.first(), topic.first()) {
                (Some(&"#"), _) => true,
                (Some(&"+"), Some(_)) => reference(&filter[1..], &topic[1..]),
                (Some(f), Some(t)) => f == t && reference(&filter[1..], &topic[1..]),
                (None, None) => true,
                _ => false,
            }
        }
        let topic_levels = ["a", "b", "", "$x"];
        let filter_levels = ["a", "b", "", "$x", "+", "#"];
        let mut topics = vec![String::new()];
        let mut filters = vec![String::new()];
        let mut all_topics = Vec::new();
        let mut all_filters = Vec::new();
        for _depth in 0..3 {
            topics = topics
                .iter()
                .flat_map(|t| {
                    topic_levels.iter().map(move |l| {
                        if t.is_empty() && !l.is_empty() {
                            (*l).to_owned()
                        } else {
                            format!("{t}/{l}")
                        }
                    })
                })
                .collect();
            filters = filters
                .iter()
                .flat_map(|f| {
                    filter_levels.iter().map(move |l| {
                        if f.is_empty() && !l.is_empty() {
                            (*l).to_owned()
                        } else {
                            format!("{f}/{l}")
                        }
                    })
                })
                .collect();
            all_topics.extend(topics.iter().cloned());
            all_filters.extend(filters.iter().cloned());
        }
        let mut checked = 0;
        for filter in all_filters.iter().filter(|f| TopicFilter::new(f).is_ok()) {
            for topic in all_topics.iter().filter(|t| TopicName::new(t).is_ok()) {
                let levels_f: Vec<&str> = filter.split('/').collect();
                let levels_t: Vec<&str> = topic.split('/').collect();
                let wildcard_first = filter.starts_with('+') || filter.starts_with('#');
                let expected =
                    !(topic.starts_with('$') && wildcard_first) && reference(&levels_f, &levels_t);
                assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
                checked += 1;
            }
        }
        assert!(checked > 10_000, "only {checked} pairs");
    }
}
