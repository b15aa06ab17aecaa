//! The credential store as a library: what the CLI (and, next, the management API) use
//! to change credentials. So far its pure parts: the kinds of credential, new secrets
//! and their hashes, time spans, YAML scalars, and the format-preserving text editor of
//! the credentials file. The CLI (`cli::credentials`) is the one writer today.
pub mod edit;
pub mod kind;
pub mod secret;
pub mod span;
pub mod yaml;

pub use kind::Kind;
