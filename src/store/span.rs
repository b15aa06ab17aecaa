//! Times as the CLI writes and reads them: RFC 3339, today's date, `90d`-style spans.
use chrono::{DateTime, NaiveDate, Utc};

pub fn rfc3339(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0).map_or_else(
        || t.to_string(),
        |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

pub fn today(now: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp(now, 0).map_or(NaiveDate::MIN, |d| d.date_naive())
}

/// Parses `30m`, `1h`, `2d`, `12w`, `1y` into (count, unit).
pub fn parse_span(s: &str, what: &str) -> Result<(u64, char), String> {
    let s = s.trim();
    let unit = s.chars().last().ok_or_else(|| format!("{what}: empty"))?;
    let n: u64 = s[..s.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| format!("{what} {s:?}: expected a number and a unit, e.g. 90d, 36h or 30m"))?;
    if n == 0 || !matches!(unit, 's' | 'm' | 'h' | 'd' | 'w' | 'y') {
        return Err(format!(
            "{what} {s:?}: expected a positive number and a unit (s, m, h, d, w, y)"
        ));
    }
    Ok((n, unit))
}

/// A duration of the management API and config (SPEC §9): `90s`, `30m`, `1h`, `7d`
/// (also `w` and `y`) or whole seconds; positive.
pub fn parse_duration(s: &str, what: &str) -> Result<i64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return match t.parse::<i64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{what} {t:?}: expected a positive number of seconds")),
        };
    }
    parse_span(t, what).map(|(n, unit)| span_secs(n, unit))
}

pub fn span_secs(n: u64, unit: char) -> i64 {
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => 365 * 86_400,
    };
    i64::try_from(n).unwrap_or(i64::MAX / 2).saturating_mul(per)
}

/// A duration as the CLI shows it: days, hours or minutes.
pub fn human_span(secs: i64) -> String {
    if secs >= 86_400 {
        format!("{}d", secs / 86_400)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}m", (secs / 60).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(parse_span("90d", "x").unwrap(), (90, 'd'));
        assert_eq!(span_secs(36, 'h'), 36 * 3600);
        for bad in ["", "d", "0d", "-1d", "90x", "1.5h"] {
            assert!(parse_span(bad, "x").is_err(), "{bad:?}");
        }
    }
}
