//! Durations in config carry their unit: `"500ms"`, `"10s"`, `"30m"`, `"24h"`, `"7d"`.
//! One parser serves every config field and rule file.

use std::time::Duration;

/// Parses a duration such as `30m` or `1h30m`; a bare number is rejected so units are never guessed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".to_string());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number, e.g. 30m"));
        }
        let n: u128 = rest[..digits].parse().map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "" => return Err(format!("invalid duration {text:?}: missing unit (ms, s, m, h, d, w)")),
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
        };
        total = total
            .checked_add(n.checked_mul(ms).ok_or_else(|| format!("invalid duration {text:?}: too large"))?)
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    let ms = u64::try_from(total).map_err(|_| format!("invalid duration {text:?}: too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Formats a duration in the largest exact unit, the inverse of [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Serde helpers so config structs can hold `Duration` fields written as `"30m"`.
pub mod serde_duration {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Deserializes a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// Serializes a duration as a string with its unit.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("3y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn format_round_trips() {
        for s in ["30m", "2h", "5m", "10s", "1500ms", "7d"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
