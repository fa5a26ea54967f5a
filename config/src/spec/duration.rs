//! Durations as users write them: `250ms`, `1s`, `1m30s`, `1h`.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration read from YAML (`500ms`, `2s`, `1m30s`, `1h`; units `ns us ms s m h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

impl Duration {
    /// The std duration.
    pub fn get(self) -> StdDuration {
        self.0
    }

    /// Parses `1m30s`-style text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration; write e.g. `500ms`, `2s`, `1m`".into());
        }
        if text == "0" {
            return Ok(Self(StdDuration::ZERO));
        }
        let mut total = StdDuration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| {
                    format!("`{text}` has a number without a unit (ns, us, ms, s, m, h)")
                })?;
            if digits == 0 {
                return Err(format!(
                    "`{text}` is not a duration; write e.g. `500ms`, `2s`, `1m30s`"
                ));
            }
            let value: f64 = rest[..digits]
                .parse()
                .map_err(|_| format!("`{text}` has a malformed number"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let nanos_per_unit: f64 = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                other => {
                    return Err(format!(
                        "`{text}` has unknown unit `{other}`; use ns, us, ms, s, m or h"
                    ))
                }
            };
            rest = &rest[unit_len..];
            let nanos = value * nanos_per_unit;
            if !nanos.is_finite() || nanos > 1e18 {
                return Err(format!("`{text}` is too long a duration"));
            }
            total += StdDuration::from_nanos(nanos as u64);
        }
        Ok(Self(total))
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Self(d)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        let (value, unit) = if nanos == 0 {
            (0, "s")
        } else if nanos % 3_600_000_000_000 == 0 {
            (nanos / 3_600_000_000_000, "h")
        } else if nanos % 60_000_000_000 == 0 {
            (nanos / 60_000_000_000, "m")
        } else if nanos % 1_000_000_000 == 0 {
            (nanos / 1_000_000_000, "s")
        } else if nanos % 1_000_000 == 0 {
            (nanos / 1_000_000, "ms")
        } else if nanos % 1_000 == 0 {
            (nanos / 1_000, "us")
        } else {
            (nanos, "ns")
        };
        write!(f, "{value}{unit}")
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// In a schema a duration is a string such as `500ms` or `1m30s` (Gateway API's format is a
/// subset of it).
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Duration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(0|([0-9.]+(ns|us|µs|ms|s|m|h))+)$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        let ms = |n| StdDuration::from_millis(n);
        assert_eq!(Duration::parse("500ms").unwrap().0, ms(500));
        assert_eq!(Duration::parse("2s").unwrap().0, ms(2000));
        assert_eq!(Duration::parse("1m30s").unwrap().0, ms(90_000));
        assert_eq!(Duration::parse("1h").unwrap().0, ms(3_600_000));
        assert_eq!(Duration::parse("1.5s").unwrap().0, ms(1500));
        assert_eq!(Duration::parse("0").unwrap().0, StdDuration::ZERO);
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        assert!(Duration::parse("10")
            .unwrap_err()
            .contains("without a unit"));
        assert!(Duration::parse("5 parsecs").is_err());
        assert!(Duration::parse("ms").is_err());
        assert!(Duration::parse("3d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(Duration::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(Duration::parse("120s").unwrap().to_string(), "2m");
        assert_eq!(Duration::parse("250ms").unwrap().to_string(), "250ms");
    }
}
