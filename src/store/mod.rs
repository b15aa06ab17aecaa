//! The credential store as a library: what the CLI (and, next, the management API) use
//! to change credentials. So far: the file backend (a versioned read; a locked, atomic,
//! validated write that refuses a stale version), the kinds of credential, new secrets and
//! their hashes, time spans, YAML scalars, and the format-preserving text editor of the
//! credentials file, and the typed [`Change`]s that every write goes through ([`Store`]).
pub mod change;
pub mod edit;
pub mod file;
pub mod kind;
pub mod postgres;
pub mod row;
pub mod secret;
pub mod span;
pub mod yaml;

pub use change::{Change, EntryEdit, NewEntry};
pub use file::{Applied, FileStore, Version};
pub use kind::Kind;

/// Why a write did not happen. In every case nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store changed since the version the write was based on (HTTP 409).
    #[error("{0}")]
    Stale(String),
    /// No credential of that name (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The loader would refuse the result (HTTP 422).
    #[error("the change was not written: the sidecar would refuse the resulting file:\n{0}")]
    Invalid(crate::config::ConfigErrors),
    /// Reading or writing failed.
    #[error("{0}")]
    Other(String),
}

impl From<String> for StoreError {
    fn from(s: String) -> Self {
        StoreError::Other(s)
    }
}

impl From<StoreError> for String {
    fn from(e: StoreError) -> Self {
        e.to_string()
    }
}

/// A credential store: the file today, PostgreSQL (SPEC §10) behind the same trait next.
/// Every writer (the CLI, the management API) changes credentials only through `apply`.
pub trait Store {
    /// A consistent view of every credential, with its version.
    fn load(&self) -> Result<(crate::config::raw::CredentialsRaw, Version), String>;
    /// Applies one change, validated as the loader would, if the store is still at
    /// `expected` (a stale version is refused; `None`: whatever is current).
    fn apply(&self, change: &Change, expected: Option<Version>, now: i64) -> Result<Applied, StoreError>;
}
