//! portcullis: an authentication and authorization sidecar for HTTP APIs, built on pingora.
//!
//! A request flows one way through small stages (see `pipeline`), each a plain function
//! over plain inputs; configuration is parsed and validated once into an immutable
//! [`config::Snapshot`] that is published through `ArcSwap` and read once per request.
// No unsafe code but two audited FFI calls to glibc's allocator, which has no safe
// binding: `config::release_freed_memory` (malloc_trim) and
// `config::keep_freed_memory_returnable` (mallopt), allowed there alone.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod cli;
pub mod config;
pub mod last_used;
pub mod manage;
pub mod metrics;
pub mod otlp;
pub mod permission;
pub mod pipeline;
pub mod proxy;
pub mod rejection;
pub mod reload;
pub mod schema;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
