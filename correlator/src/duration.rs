//! Durations as operators write them: `24h`, `15m`, `90s`, `1h30m`, `2d`.

use std::time::Duration;

/// Parses a duration made of `<number><unit>` parts, units `d`, `h`, `m`, `s`, `ms`.
///
/// # Errors
///
/// Returns a reason when the text is empty, has a part without a unit or number, or overflows.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write it like `24h`, `15m` or `1h30m`".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration; write it like `24h`, `15m` or `1h30m`"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => return Err(format!("`{text}` lacks a unit (d, h, m, s or ms)")),
            other => {
                return Err(format!(
                    "`{other}` in `{text}` is not a unit (d, h, m, s or ms)"
                ));
            }
        };
        rest = &rest[unit_len..];
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| format!("`{text}` is too large"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| format!("`{text}` is too large"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_combine() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 15m "), Ok(Duration::from_secs(900)));
    }

    #[test]
    fn malformed_durations_are_refused() {
        for text in [
            "",
            "h",
            "15",
            "15 minutes",
            "1.5h",
            "99999999999999999999d",
            "-5m",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
