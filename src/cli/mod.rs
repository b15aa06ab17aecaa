//! Command-line subcommands other than `serve`.
pub mod check;
pub mod credentials;
pub mod explain;
pub mod store;
pub mod toolbox;
