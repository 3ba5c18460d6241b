//! Durations (`500ms`, `10s`, `2m`, `1h`) and rates (`100/s`, `30/m`) as scenario files write
//! them. A bare number is refused: a unit-less `10` is the commonest misreading of a timeout.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const DURATION_FORM: &str = "a duration like 500ms, 10s, 2m or 1h";
const RATE_FORM: &str = "a rate like 100/s, 30/m or 2/h";

/// A duration in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur {
    pub millis: u64,
}

impl Dur {
    pub const fn from_millis(millis: u64) -> Dur {
        Dur { millis }
    }

    pub const fn from_secs(secs: u64) -> Dur {
        Dur {
            millis: secs * 1000,
        }
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.millis)
    }

    /// Whole seconds, if the duration is a whole number of seconds.
    pub fn whole_secs(self) -> Option<u64> {
        (self.millis % 1000 == 0).then_some(self.millis / 1000)
    }

    /// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{text:?} has no unit; expected {DURATION_FORM}"))?;
        let (number, unit) = text.split_at(split);
        if let Some(fraction) = unit.strip_prefix('.') {
            return Err(fractional(text, number, fraction));
        }
        if number.is_empty() {
            return Err(format!("{text:?} is not {DURATION_FORM}"));
        }
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is too large; expected {DURATION_FORM}"))?;
        let scale = match unit.trim() {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit; expected {DURATION_FORM}"
                ))
            }
        };
        value
            .checked_mul(scale)
            .map(Dur::from_millis)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

/// The error for `1.5s`: durations are whole numbers of a unit, and here is the same time in
/// a smaller unit when there is one.
fn fractional(text: &str, whole: &str, rest: &str) -> String {
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (fraction, unit) = rest.split_at(digits);
    let scale: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    let exact = (|| {
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let denominator = 10u64.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        let fraction: u64 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().ok()?
        };
        let numerator = whole
            .checked_mul(denominator)?
            .checked_add(fraction)?
            .checked_mul(scale)?;
        (scale > 0 && numerator % denominator == 0)
            .then(|| Dur::from_millis(numerator / denominator))
    })();
    match exact {
        Some(dur) => {
            format!("{text:?} is a fraction; durations are whole numbers of a unit: write {dur}")
        }
        None => format!(
            "{text:?} is a fraction; durations are whole numbers of a unit (ms, s, m or h), \
             like 1500ms"
        ),
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis;
        if ms != 0 && ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Dur, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(DURATION_FORM)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Events per simulated second, kept as a count per period so `30/m` stays exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u64,
    pub per: Dur,
}

impl Rate {
    /// The gap between two events, in milliseconds (at least 1).
    pub fn interval_ms(self) -> u64 {
        (self.per.millis / self.count.max(1)).max(1)
    }

    pub fn parse(text: &str) -> Result<Rate, String> {
        let (count, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not {RATE_FORM}"))?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not {RATE_FORM}"))?;
        if count == 0 {
            return Err(format!("{text:?}: a rate must be above zero"));
        }
        let unit = unit.trim();
        let per = if unit.starts_with(|c: char| c.is_ascii_digit()) {
            Dur::parse(unit)?
        } else {
            Dur::parse(&format!("1{unit}")).map_err(|_| format!("{text:?} is not {RATE_FORM}"))?
        };
        if per.millis == 0 {
            return Err(format!("{text:?}: the period must be above zero"));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.millis {
            1000 => write!(f, "{}/s", self.count),
            60_000 => write!(f, "{}/m", self.count),
            3_600_000 => write!(f, "{}/h", self.count),
            _ => write!(f, "{}/{}", self.count, self.per),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(RATE_FORM)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                Rate::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(Dur::parse("500ms").unwrap().millis, 500);
        assert_eq!(Dur::parse("10s").unwrap().millis, 10_000);
        assert_eq!(Dur::parse("2m").unwrap().millis, 120_000);
        assert_eq!(Dur::parse("1h").unwrap().millis, 3_600_000);
        assert_eq!(Dur::parse("0s").unwrap().millis, 0);
        for bad in [
            "10",
            "s",
            "1.5s",
            "10 parsecs",
            "-1s",
            "99999999999999999999s",
        ] {
            let err = Dur::parse(bad).unwrap_err();
            assert!(
                err.contains(bad.trim()) || err.contains("large"),
                "{bad}: {err}"
            );
        }
        assert!(Dur::parse("10").unwrap_err().contains("500ms, 10s"));
        assert_eq!(
            Dur::parse("1.5s").unwrap_err(),
            "\"1.5s\" is a fraction; durations are whole numbers of a unit: write 1500ms"
        );
        assert!(Dur::parse("0.5m").unwrap_err().ends_with("write 30s"));
        assert!(Dur::parse("1.5ms").unwrap_err().ends_with("like 1500ms"));
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        for text in ["500ms", "10s", "2m", "1h", "1500ms", "0s"] {
            assert_eq!(Dur::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Dur::from_secs(5).whole_secs(), Some(5));
        assert_eq!(Dur::from_millis(1500).whole_secs(), None);
    }

    #[test]
    fn rates_parse() {
        let r = Rate::parse("100/s").unwrap();
        assert_eq!((r.count, r.per.millis, r.interval_ms()), (100, 1000, 10));
        assert_eq!(Rate::parse("30/m").unwrap().interval_ms(), 2000);
        assert_eq!(Rate::parse("5/10s").unwrap().interval_ms(), 2000);
        assert_eq!(Rate::parse("30/m").unwrap().to_string(), "30/m");
        assert!(Rate::parse("100").is_err());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("3/fortnight").is_err());
    }

    #[test]
    fn yaml_numbers_are_refused_with_the_expected_form() {
        let err = serde_yaml::from_str::<Dur>("10").unwrap_err().to_string();
        assert!(err.contains("500ms, 10s"), "{err}");
        let err = serde_yaml::from_str::<Rate>("10").unwrap_err().to_string();
        assert!(err.contains("100/s"), "{err}");
    }
}
