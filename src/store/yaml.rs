//! YAML scalars written so that the loader reads them back as the same strings.
use chrono::NaiveDate;

/// `s` as a YAML scalar: plain when that reads back as the same string, else double-quoted
/// (a JSON string is a valid YAML double-quoted scalar).
pub fn scalar(s: &str) -> String {
    let plain = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null"
        );
    if plain {
        s.to_string()
    } else {
        quoted(s)
    }
}

pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

pub fn flow_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| scalar(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// An `expires`/`until` value: a bare date plain (as the example files write it), else quoted.
pub fn date_scalar(s: &str) -> String {
    if s.len() == 10 && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
        s.to_string()
    } else {
        quoted(s)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::*;
    use crate::config;

    #[test]
    fn scalars_read_back_as_the_same_string() {
        for s in [
            "acme",
            "a.b-c_d",
            "true",
            "No",
            "null",
            "1234",
            "2027-01-01",
            "balances:read@vault/v-1",
            "x: y",
            "#x",
            "a \"q\"\nb",
            "::1",
        ] {
            let y = format!("k: {}\n", scalar(s));
            let v: Value = config::parse(Path::new("t"), &y).unwrap();
            assert_eq!(
                v["k"],
                Value::String(s.to_string()),
                "{s:?} written as {y:?}"
            );
        }
        assert_eq!(scalar("acme"), "acme");
        assert_eq!(scalar("true"), "\"true\"");
    }
}
