//! UTC timestamps: RFC 3339 parsing and formatting, and the calendar arithmetic under them (the
//! proleptic Gregorian date of a day count and back, Howard Hinnant's `days_from_civil` and
//! `civil_from_days`), with no time-zone database.

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Parses an RFC 3339 timestamp (`2023-05-25T13:44:05.478445995Z`,
/// `2016-03-09T14:44:26.402973972-08:00`) into nanoseconds since the Unix epoch.
#[inline]
pub fn parse_rfc3339(raw: &str) -> Option<i64> {
    let b = raw.trim().as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        let mut value = 0i64;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(d - b'0');
        }
        Some(value)
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let num_digits = i - start;
        if num_digits == 0 {
            return None;
        }
        for _ in num_digits..9 {
            nanos *= 10;
        }
    }
    let offset_seconds = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_seconds;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// The system clock, in nanoseconds since the Unix epoch (0 before the epoch, `i64::MAX` past
/// the year 2262).
pub fn now_unix_nano() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Writes `unix_nano` as RFC 3339 UTC with `digits` fractional digits (truncated, at most 9):
/// `2026-11-20T02:04:02.118Z` with 3.
pub fn format_rfc3339(unix_nano: i64, digits: usize) -> String {
    let seconds = unix_nano.div_euclid(NANOS_PER_SEC);
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
        let fraction = format!("{:09}", unix_nano.rem_euclid(NANOS_PER_SEC));
        text.push('.');
        text.push_str(&fraction[..digits]);
    }
    text.push('Z');
    text
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1 to 12, `day` 1 to 31).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_fractions_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-05-25T13:44:05.478445995Z"),
            Some(1_685_022_245_478_445_995)
        );
        assert_eq!(
            parse_rfc3339("2016-03-09T14:44:26.402973972-08:00"),
            parse_rfc3339("2016-03-09T22:44:26.402973972Z")
        );
        assert_eq!(
            parse_rfc3339("2025-03-04T06:22:18.8192Z"),
            Some(1_741_069_338_819_200_000)
        );
        assert_eq!(parse_rfc3339("2025-13-04T06:22:18Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2025-03-04T06:22:18"), None);
    }

    #[test]
    fn formatting_keeps_the_digits_asked_for() {
        let instant = 1_685_022_245_478_445_995;
        assert_eq!(format_rfc3339(instant, 0), "2023-05-25T13:44:05Z");
        assert_eq!(format_rfc3339(instant, 3), "2023-05-25T13:44:05.478Z");
        assert_eq!(format_rfc3339(instant, 9), "2023-05-25T13:44:05.478445995Z");
        assert_eq!(format_rfc3339(-1, 3), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn known_dates_convert_both_ways() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (19_782, (2024, 2, 29)),
            (20_777, (2026, 11, 20)),
            (-719_468, (0, 3, 1)),
        ] {
            assert_eq!(civil_from_days(days), date, "{days}");
            assert_eq!(days_from_civil(date.0, date.1, date.2), days, "{date:?}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        for days in -73_000..73_000 {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }
}
