//! The credential store as a library: what the CLI (and, next, the management API) use
//! to change credentials. So far: the file backend (a versioned read; a locked, atomic,
//! validated write that refuses a stale version), the kinds of credential, new secrets and
//! their hashes, time spans, YAML scalars, and the format-preserving text editor of the
//! credentials file. The CLI (`cli::credentials`) builds each change from these; typed
//! changes behind a backend trait (for SPEC §10's PostgreSQL store) are the next step.
pub mod edit;
pub mod file;
pub mod kind;
pub mod secret;
pub mod span;
pub mod yaml;

pub use kind::Kind;
