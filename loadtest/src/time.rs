//! UTC timestamps as the sources write them: RFC 3339 with `Z` and any number of fractional
//! digits (`2026-11-20T02:04:02.118402000Z`, `2026-11-20T02:05:48Z`), and nanoseconds since the
//! epoch.

use tidemark_common::time::{civil_from_days, days_from_civil};

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A parsed RFC 3339 UTC timestamp: the instant, and how many fractional digits it was written
/// with, so that a shifted copy is written the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Nanoseconds since the epoch.
    pub unix_nano: i64,
    /// Fractional digits of the original text (0 to 9).
    pub digits: usize,
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.f…]Z`; anything else (other offsets included) is `None`.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[bytes.len() - 1] != b'Z' {
        return None;
    }
    let punctuation = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if punctuation.iter().any(|&(i, c)| bytes[i] != c) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &text[range];
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let rest = &text[19..text.len() - 1];
    let (nanos, digits) = if rest.is_empty() {
        (0, 0)
    } else {
        let fraction = rest.strip_prefix('.')?;
        if fraction.is_empty()
            || fraction.len() > 9
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let scale = 10_i64.pow(u32::try_from(9 - fraction.len()).ok()?);
        (fraction.parse::<i64>().ok()? * scale, fraction.len())
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(Timestamp {
        unix_nano: seconds * NANOS_PER_SEC + nanos,
        digits,
    })
}

/// Writes `unix_nano` as RFC 3339 UTC with `digits` fractional digits (truncated).
pub fn format_rfc3339(unix_nano: i64, digits: usize) -> String {
    let seconds = unix_nano.div_euclid(NANOS_PER_SEC);
    let nanos = unix_nano.rem_euclid(NANOS_PER_SEC);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    );
    let digits = digits.min(9);
    if digits > 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(&fraction[..digits]);
    }
    text.push('Z');
    text
}

/// Writes the time of day of `unix_nano` as Falco prints it in `output`: `HH:MM:SS.nnnnnnnnn`.
pub fn format_time_of_day(unix_nano: i64) -> String {
    let seconds = unix_nano.div_euclid(NANOS_PER_SEC).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:09}",
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
        unix_nano.rem_euclid(NANOS_PER_SEC)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn timestamps_round_trip_with_their_precision() {
        for text in [
            "2026-11-20T02:04:02.118402000Z",
            "2026-11-20T02:05:48Z",
            "2024-02-29T23:59:59.5Z",
            "1970-01-01T00:00:00Z",
            "2026-11-19T14:22:05.123456Z",
        ] {
            let parsed = parse_rfc3339(text).unwrap();
            assert_eq!(format_rfc3339(parsed.unix_nano, parsed.digits), text);
        }
    }

    #[test]
    fn known_instants_parse_to_their_epoch_values() {
        let parsed = parse_rfc3339("2026-11-20T02:05:48Z").unwrap();
        assert_eq!(parsed.unix_nano, 1_795_140_348 * NANOS_PER_SEC);
        assert_eq!(
            format_time_of_day(parsed.unix_nano + 5),
            "02:05:48.000000005"
        );
    }

    #[test]
    fn other_text_is_not_a_timestamp() {
        for text in [
            "",
            "2026-11-20",
            "2026-11-20T02:05:48+02:00",
            "2026-13-20T02:05:48Z",
            "2026-11-20T02:05:48.Z",
            "kswapd0 -o stratum+tcp://pool:3333 2026-11-20T02:05:48Z",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text}");
        }
    }
}
