//! UTC timestamps as the sources write them, so that a shifted copy is written the same way:
//! RFC 3339 with `Z` and any number of fractional digits (`2026-11-20T02:04:02.118402000Z`,
//! `2026-11-20T02:05:48Z`), and Falco's time of day. Parsing and formatting are
//! [`tidemark_common::time`]'s; this module keeps track of how a timestamp was written.

pub use tidemark_common::time::{NANOS_PER_SEC, format_rfc3339};

/// A parsed RFC 3339 UTC timestamp: the instant, and how many fractional digits it was written
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Nanoseconds since the epoch.
    pub unix_nano: i64,
    /// Fractional digits of the original text (0 to 9).
    pub digits: usize,
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.f…]Z` with at most 9 fractional digits; anything else (other
/// offsets, other separators, surrounding text) is `None`, since it could not be written back
/// the same way.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let fraction = text.strip_suffix('Z')?.get(19..)?;
    let digits = match fraction.strip_prefix('.') {
        Some(digits) if (1..=9).contains(&digits.len()) => digits.len(),
        Some(_) => return None,
        None if fraction.is_empty() => 0,
        None => return None,
    };
    if text.as_bytes().get(10) != Some(&b'T') || text.trim() != text {
        return None;
    }
    let unix_nano = tidemark_common::time::parse_rfc3339(text)?;
    Some(Timestamp { unix_nano, digits })
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
