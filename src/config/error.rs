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

    /// At a value's place in its file.
    pub fn at(file: &Path, at: super::raw::Place, message: impl Into<String>) -> Self {
        ConfigError { line: at.line, column: at.column, ..ConfigError::new(file, None, message) }
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
