//! Config errors that name the file, and the line and column where known.
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    /// Not the files' fault (a DNS look-up failed): worth retrying with the same bytes.
    pub transient: bool,
}

impl ConfigError {
    pub fn new(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line,
            column: None,
            message: message.into(),
            transient: false,
        }
    }

    /// From a serde-saphyr error, keeping its line and column.
    pub fn from_saphyr(file: &Path, e: &serde_saphyr::Error) -> Self {
        let mut msg = e.without_snippet().to_string();
        if let Some(i) = msg.rfind(" at line ") {
            msg.truncate(i);
        }
        let loc = e.location().filter(|l| l.line() > 0);
        ConfigError {
            file: file.to_path_buf(),
            line: loc.map(|l| l.line() as usize),
            column: loc.map(|l| l.column() as usize),
            message: msg,
            transient: false,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load; a load either succeeds whole or reports all of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Finds the line of a YAML `key: value` pair in a file's text, so that validation errors
/// (which serde cannot place) still name a line. Best effort: `None` when not found.
/// Built in one pass over the text, so a lookup costs O(1) even for huge files.
pub struct Locator<'a> {
    text: &'a str,
    pairs: std::collections::HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut pairs: std::collections::HashMap<(&str, &str), Vec<usize>> = Default::default();
        for (i, l) in text.lines().enumerate() {
            // Only the keys that name entries are indexed: a 100,000-credential file
            // then costs one pass and ~100,000 entries, not one per line.
            if let Some((k, v)) = line_pair(l).filter(|(k, _)| INDEXED_KEYS.contains(k)) {
                pairs.entry((k, v)).or_default().push(i + 1);
            }
        }
        Locator { text, pairs }
    }

    /// 1-based line of the `nth` (0-based) line that reads `key: value`
    /// (optionally after `- `, value optionally quoted).
    pub fn pair(&self, key: &str, value: &str, nth: usize) -> Option<usize> {
        if INDEXED_KEYS.contains(&key) {
            return self.pairs.get(&(key, value)).and_then(|v| v.get(nth)).copied();
        }
        self.text
            .lines()
            .enumerate()
            .filter(|(_, l)| line_pair(l) == Some((key, value)))
            .nth(nth)
            .map(|(i, _)| i + 1)
    }

    /// 1-based line of the first line at or after `from` (1-based) containing `needle`;
    /// `from` itself when there is none. Linear: for error paths only.
    pub fn contains_after(&self, from: Option<usize>, needle: &str) -> Option<usize> {
        let start = from.unwrap_or(1).saturating_sub(1);
        self.text
            .lines()
            .enumerate()
            .skip(start)
            .find(|(_, l)| l.contains(needle))
            .map(|(i, _)| i + 1)
            .or(from)
    }

    /// 1-based line of the top-level `key:`.
    pub fn top_key(&self, key: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))
            .map(|i| i + 1)
    }
}

/// Keys whose `key: value` lines are indexed up front (they name list entries).
const INDEXED_KEYS: [&str; 4] = ["name", "id", "match", "issuer"];

/// A line read as `key: value` (optionally after `- `; value unquoted, comment dropped).
fn line_pair(line: &str) -> Option<(&str, &str)> {
    let t = line.trim_start();
    let t = t.strip_prefix("- ").map(str::trim_start).unwrap_or(t);
    let (k, rest) = t.split_once(':')?;
    Some((k.trim_end(), unquote(strip_comment(rest).trim())))
}

fn strip_comment(s: &str) -> &str {
    match s.find(" #") {
        Some(i) => &s[..i],
        None => s,
    }
}

fn unquote(v: &str) -> &str {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_pairs() {
        let text = "api_keys:\n  - name: a\n    key_hash: x\n  - name: \"b\" # c\n  - name: a\n";
        let loc = Locator::new(text);
        assert_eq!(loc.pair("name", "a", 0), Some(2));
        assert_eq!(loc.pair("name", "a", 1), Some(5));
        assert_eq!(loc.pair("name", "b", 0), Some(4));
        assert_eq!(loc.pair("name", "zz", 0), None);
        assert_eq!(loc.contains_after(Some(2), "key_hash"), Some(3));
        assert_eq!(loc.top_key("api_keys"), Some(1));
    }
}
