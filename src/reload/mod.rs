//! Hot reload (SPEC §7): notice that a config file changed, read and validate every
//! file whole into a new [`Snapshot`], and swap it in with one `store` — or keep the
//! last good snapshot serving and say why.
//!
//! What starts a reload attempt ([`Trigger`]):
//! - **a filesystem event** in a directory that holds a file of the running config.
//!   The *directory* is watched, never the file: editors save by writing a temporary
//!   file and renaming it over the old one, and Kubernetes updates a ConfigMap or
//!   Secret by atomically renaming the `..data` symlink that the file symlinks point
//!   through. Both are events in the directory, while a watch on the old inode would
//!   see nothing. A burst of events is debounced ([`DEBOUNCE`], at most [`MAX_DELAY`]).
//! - **SIGHUP**: always re-reads.
//! - **a slow poll** ([`POLL_INTERVAL`]) for filesystems that drop events (NFS, some
//!   FUSE and overlay mounts) and for changes no watched directory sees (a symlinked
//!   directory higher up retargeted). The first poll runs when the service starts, so
//!   a change made while the server was starting is not missed.
//!
//! Events and polls are gated by a fingerprint of the bytes of the files in use: an
//! event for an unrelated file in the same directory costs a couple of small reads and
//! no reload, and a broken file is reported (and counted) once, not at every poll.
//!
//! Listen addresses (and `shutdown_grace`, which pingora reads once at start) cannot
//! change at runtime: a reload that changes them keeps their running values, applies
//! the rest, and logs a warning that they need a restart.
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, ConfigErrors, Settings, Shared};

mod diff;
pub mod postgres;
mod reloader;
mod service;

/// Serializes the writers of the snapshot in force: a reload of the files and the
/// PostgreSQL sync, so that neither replaces a newer snapshot with an older one.
pub(crate) static SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub use diff::{diff, ConfigDiff, CredentialChange};
pub use reloader::{Observer, Reloader, WatchSet};
pub use service::{reload_service, ReloadService};
// For the service and the tests.
use reloader::{relevance, Relevance};

/// Quiet time after the last filesystem event before the files are re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest a burst of events may postpone the re-read (a file rewritten without pause
/// is still re-read at least this often).
pub const MAX_DELAY: Duration = Duration::from_millis(500);
/// How often the files are checked even when no event arrived.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// What started a reload attempt; the `trigger` field of the reload log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A filesystem event in a watched directory.
    Watch,
    /// SIGHUP.
    Signal,
    /// The slow poll.
    Poll,
    /// A direct call (tests).
    Manual,
    /// A write through the credential store (the management API).
    Write,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "watch",
            Trigger::Signal => "signal",
            Trigger::Poll => "poll",
            Trigger::Manual => "manual",
            Trigger::Write => "write",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per reload, never on a request's path
pub enum ReloadResult {
    /// The files were valid and differed from the running config: the new snapshot is
    /// in force.
    Applied {
        /// What changed, by name.
        diff: ConfigDiff,
        /// Settings whose new value was ignored because it needs a restart (`listen`,
        /// `admin_listen`, `shutdown_grace`); the running value was kept.
        needs_restart: Vec<&'static str>,
    },
    /// The files were valid and the same bytes as the running config: nothing swapped.
    Unchanged,
    /// The files were not valid: every error, with file and line. The last good
    /// snapshot keeps serving.
    Failed(ConfigErrors),
}

impl ReloadResult {
    /// Whether the files on disk are a valid config now in force (`Applied` or `Unchanged`).
    pub fn is_success(&self) -> bool {
        !matches!(self, ReloadResult::Failed(_))
    }

    /// `"success"` or `"failure"`: the `result` label of `portcullis_config_reloads_total`.
    pub fn label(&self) -> &'static str {
        if self.is_success() {
            "success"
        } else {
            "failure"
        }
    }
}

/// Reads and validates every config file into a new snapshot and, if it is valid and
/// differs from the running one, swaps it into `shared` with one `store`. In-flight
/// requests keep the snapshot they loaded. `now` (unix seconds) judges expiry warnings.
///
/// A running listen address or `shutdown_grace` is never replaced: the new snapshot
/// keeps the running values and the result names them in `needs_restart`.
///
/// Logs the outcome: what changed by name (never a secret or a hash) on success, every
/// error with its file and line on failure. Callers must not run two at once on the
/// same `shared` (the later `store` would win); [`Reloader`] serializes its calls.
pub fn reload_now(config_path: &Path, shared: &Shared, trigger: Trigger, now: i64) -> ReloadResult {
    let failed = |errors: ConfigErrors| {
        tracing::error!(
            trigger = %trigger,
            errors = %errors,
            count = errors.0.len(),
            "config reload failed; the last good config keeps serving"
        );
        ReloadResult::Failed(errors)
    };
    let _serial = SWAP.lock().unwrap_or_else(|p| p.into_inner());
    let mut new = match config::load(config_path, now) {
        Ok(snap) => snap,
        Err(errors) => return failed(errors),
    };
    let old = shared.load_full();
    if new.content_hash == old.content_hash {
        // An operator who sent SIGHUP wants an answer; a poll or a neighbour's event does not.
        if matches!(trigger, Trigger::Signal | Trigger::Manual) {
            tracing::info!(trigger = %trigger, "config files unchanged; nothing to reload");
        } else {
            tracing::debug!(trigger = %trigger, "config files unchanged");
        }
        return ReloadResult::Unchanged;
    }
    // Side effects only for a load that will serve: the upstream's name resolved, and
    // fetchers for its `jwks_url`s (a kept issuer reuses its running fetcher; one that
    // left the config stops with the old snapshot). A short wait only: the reload's other
    // changes (a key disabled after a leak) must not wait long on a slow IdP; the fetcher
    // fills its keys in the background.
    if let Err(errors) = config::prepare_to_serve(&mut new, crate::token::remote::RELOAD_FETCH_WAIT) {
        return failed(errors);
    }
    let needs_restart = keep_startup_settings(&old.settings, &mut new.settings);
    let diff = diff(&old, &new);
    for w in &new.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    shared.store(Arc::new(new));
    tracing::info!(trigger = %trigger, changes = %diff, "config reloaded");
    if !needs_restart.is_empty() {
        tracing::warn!(
            settings = %needs_restart.join(", "),
            "config reloaded, but these settings only change at restart; their running values are kept"
        );
    }
    ReloadResult::Applied { diff, needs_restart }
}

/// Restores in `new` the settings that are bound when the server starts, and names
/// those whose value in `new` differed.
fn keep_startup_settings(running: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut kept = Vec::new();
    if new.listen != running.listen {
        new.listen.clone_from(&running.listen);
        kept.push("listen");
    }
    if new.admin_listen != running.admin_listen {
        new.admin_listen.clone_from(&running.admin_listen);
        kept.push("admin_listen");
    }
    if new.threads != running.threads {
        new.threads = running.threads;
        kept.push("threads");
    }
    if new.work_stealing != running.work_stealing {
        new.work_stealing = running.work_stealing;
        kept.push("work_stealing");
    }
    if new.shutdown_grace != running.shutdown_grace {
        new.shutdown_grace = running.shutdown_grace;
        kept.push("shutdown_grace");
    }
    // The listener is TLS or not from the start; a new certificate for a TLS listener
    // does apply (it is served from the snapshot).
    if new.tls.is_some() != running.tls.is_some() {
        new.tls.clone_from(&running.tls);
        kept.push("tls");
    }
    // The management listener starts with the server; its other settings apply at once.
    match (&running.management, &mut new.management) {
        (Some(r), Some(n)) => {
            if n.listen != r.listen || n.tls != r.tls {
                n.listen.clone_from(&r.listen);
                n.tls.clone_from(&r.tls);
                kept.push("management.listen");
            }
        }
        (None, None) => {}
        (r, n) => {
            n.clone_from(r);
            kept.push("management");
        }
    }
    kept
}

#[cfg(test)]
mod tests;
