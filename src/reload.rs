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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{self, ConfigErrors, Credential, CredentialStore, Route, Settings, Shared, Snapshot};

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
    /// A direct call (tests, a future admin endpoint).
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "watch",
            Trigger::Signal => "signal",
            Trigger::Poll => "poll",
            Trigger::Manual => "manual",
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
    let mut new = match config::load(config_path, now) {
        Ok(snap) => snap,
        Err(errors) => {
            tracing::error!(
                trigger = %trigger,
                errors = %errors,
                count = errors.0.len(),
                "config reload failed; the last good config keeps serving"
            );
            return ReloadResult::Failed(errors);
        }
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
    // Side effects only for a load that will serve: fetchers for its `jwks_url`s (a
    // kept issuer reuses its running fetcher; one that left the config stops with the
    // old snapshot).
    crate::token::remote::attach(&mut new, crate::token::remote::FIRST_FETCH_WAIT);
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
    kept
}

// ---------------------------------------------------------------------------------
// The diff: what changed, by name.

/// One credential whose entry changed, and which of its fields did (names only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChange {
    pub name: String,
    /// Field names, e.g. `permissions`, `expires`, `disabled`, `key_hash`, `secret_hash`.
    pub fields: Vec<&'static str>,
}

/// What a reload changed, by name only: never a secret, a hash or an address list.
/// Lists keep file order (the new file's for additions and changes, the old one's for
/// removals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Main-config settings that changed (e.g. `upstream`, `trusted_proxies`, `tokens`).
    pub settings: Vec<&'static str>,
    /// Routes by their `match` text.
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    /// Same `match`, different `require`, `public` or parameter names.
    pub routes_changed: Vec<String>,
    /// Clients and API keys by id/name.
    pub credentials_added: Vec<String>,
    pub credentials_removed: Vec<String>,
    pub credentials_changed: Vec<CredentialChange>,
    pub users_added: Vec<String>,
    pub users_removed: Vec<String>,
    /// Custom roles (defined in the credentials file) by name.
    pub roles_added: Vec<String>,
    pub roles_removed: Vec<String>,
}

impl ConfigDiff {
    /// Nothing that has a name changed (comments, formatting or order only).
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

impl fmt::Display for ConfigDiff {
    /// `credentials added: k2; credentials changed: k1 (permissions, expires); …`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no named change (comments, formatting or order only)");
        }
        let changed: Vec<String> = self
            .credentials_changed
            .iter()
            .map(|c| format!("{} ({})", c.name, c.fields.join(", ")))
            .collect();
        let settings: Vec<String> = self.settings.iter().map(|s| s.to_string()).collect();
        let parts: [(&str, &[String]); 11] = [
            ("settings changed", &settings),
            ("routes added", &self.routes_added),
            ("routes removed", &self.routes_removed),
            ("routes changed", &self.routes_changed),
            ("credentials added", &self.credentials_added),
            ("credentials removed", &self.credentials_removed),
            ("credentials changed", &changed),
            ("users added", &self.users_added),
            ("users removed", &self.users_removed),
            ("roles added", &self.roles_added),
            ("roles removed", &self.roles_removed),
        ];
        let mut first = true;
        for (label, names) in parts {
            if names.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{label}: {}", names.join(", "))?;
        }
        Ok(())
    }
}

/// What changed from `old` to `new`, by name. Pure: reads both snapshots, nothing else.
pub fn diff(old: &Snapshot, new: &Snapshot) -> ConfigDiff {
    let (credentials_added, credentials_removed, credentials_changed) =
        diff_credentials(&old.credentials, &new.credentials);
    let (routes_added, routes_removed, routes_changed) = diff_routes(&old.routes.routes, &new.routes.routes);
    let (users_added, users_removed) = added_removed(&old.credentials.users, &new.credentials.users);
    let (roles_added, roles_removed) =
        added_removed(&old.credentials.custom_roles, &new.credentials.custom_roles);
    let mut settings = diff_settings(&old.settings, &new.settings);
    if old.tokens != new.tokens {
        settings.push("tokens");
    }
    ConfigDiff {
        settings,
        routes_added,
        routes_removed,
        routes_changed,
        credentials_added,
        credentials_removed,
        credentials_changed,
        users_added,
        users_removed,
        roles_added,
        roles_removed,
    }
}

/// Names in `new` not in `old`, and in `old` not in `new`, each in its list's order.
fn added_removed(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let old_set: HashSet<&str> = old.iter().map(String::as_str).collect();
    let new_set: HashSet<&str> = new.iter().map(String::as_str).collect();
    (
        new.iter()
            .filter(|n| !old_set.contains(n.as_str()))
            .cloned()
            .collect(),
        old.iter()
            .filter(|n| !new_set.contains(n.as_str()))
            .cloned()
            .collect(),
    )
}

fn diff_settings(old: &Settings, new: &Settings) -> Vec<&'static str> {
    // Destructured whole, so that a new setting cannot be left out of the diff.
    let Settings {
        listen,
        admin_listen,
        upstream,
        upstream_text,
        environment,
        trusted_proxies,
        shutdown_grace,
        upstream_timeout,
        upstream_connect_timeout,
        mode,
        tls,
        upstream_tls,
    } = old;
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    check(*listen != new.listen, "listen");
    check(*admin_listen != new.admin_listen, "admin_listen");
    check(
        *upstream != new.upstream || *upstream_text != new.upstream_text,
        "upstream",
    );
    check(*environment != new.environment, "environment");
    check(*trusted_proxies != new.trusted_proxies, "trusted_proxies");
    check(*shutdown_grace != new.shutdown_grace, "shutdown_grace");
    check(*upstream_timeout != new.upstream_timeout, "upstream_timeout");
    check(
        *upstream_connect_timeout != new.upstream_connect_timeout,
        "upstream_connect_timeout",
    );
    check(*mode != new.mode, "mode");
    check(*tls != new.tls, "tls");
    check(*upstream_tls != new.upstream_tls, "upstream_tls");
    changed
}

type Lists<T> = (Vec<String>, Vec<String>, Vec<T>);

fn diff_routes(old: &[Route], new: &[Route]) -> Lists<String> {
    let old_by_id: HashMap<&str, &Route> = old.iter().map(|r| (r.id.as_ref(), r)).collect();
    let new_ids: HashSet<&str> = new.iter().map(|r| r.id.as_ref()).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for r in new {
        match old_by_id.get(r.id.as_ref()) {
            None => added.push(r.id.to_string()),
            Some(o) if route_differs(o, r) => changed.push(r.id.to_string()),
            Some(_) => {}
        }
    }
    let removed = old
        .iter()
        .filter(|r| !new_ids.contains(r.id.as_ref()))
        .map(|r| r.id.to_string())
        .collect();
    (added, removed, changed)
}

fn route_differs(old: &Route, new: &Route) -> bool {
    let Route {
        id: _,
        method,
        template,
        public,
        require,
        vault_param,
        key_param,
        mode,
        websocket,
    } = old;
    *method != new.method
        || *template != new.template
        || *public != new.public
        || *require != new.require
        || *vault_param != new.vault_param
        || *key_param != new.key_param
        || *mode != new.mode
        || *websocket != new.websocket
}

fn diff_credentials(old: &CredentialStore, new: &CredentialStore) -> Lists<CredentialChange> {
    let old_by_id: HashMap<&str, &Credential> = old.all.iter().map(|c| (c.id.as_ref(), c.as_ref())).collect();
    let new_ids: HashSet<&str> = new.all.iter().map(|c| c.id.as_ref()).collect();
    let old_keys = key_hash_by_name(old);
    let new_keys = key_hash_by_name(new);
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for c in &new.all {
        let id = c.id.as_ref();
        match old_by_id.get(id) {
            None => added.push(id.to_string()),
            Some(o) => {
                let mut fields = credential_fields_changed(o, c);
                if old_keys.get(id) != new_keys.get(id) {
                    fields.push("key_hash");
                }
                if !fields.is_empty() {
                    changed.push(CredentialChange {
                        name: id.to_string(),
                        fields,
                    });
                }
            }
        }
    }
    let removed = old
        .all
        .iter()
        .filter(|c| !new_ids.contains(c.id.as_ref()))
        .map(|c| c.id.to_string())
        .collect();
    (added, removed, changed)
}

/// An API key's hash lives in the lookup map, not in its `Credential`.
fn key_hash_by_name(store: &CredentialStore) -> HashMap<&str, &[u8; 32]> {
    store
        .by_key_hash
        .iter()
        .map(|(h, c)| (c.id.as_ref(), h))
        .collect()
}

/// Which fields of one credential differ, by name. Effective permissions are compared
/// as sets, so a reordering is not a change, while a role's new definition or a linked
/// user's new roles show as `permissions`.
fn credential_fields_changed(old: &Credential, new: &Credential) -> Vec<&'static str> {
    // Destructured whole, so that a new field cannot be left out of the diff.
    let Credential {
        id: _,
        kind,
        user,
        user_missing,
        roles,
        grants,
        allowed_ips,
        expires_at,
        expires_text,
        disabled,
        description,
        notes,
        secret,
    } = old;
    let mut fields = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            fields.push(name);
        }
    };
    check(*kind != new.kind, "kind");
    check(*user != new.user || *user_missing != new.user_missing, "user");
    check(*roles != new.roles, "roles");
    let old_grants: HashSet<_> = grants.iter().collect();
    let new_grants: HashSet<_> = new.grants.iter().collect();
    check(old_grants != new_grants, "permissions");
    check(*allowed_ips != new.allowed_ips, "allowed_ips");
    check(
        *expires_at != new.expires_at || *expires_text != new.expires_text,
        "expires",
    );
    check(*disabled != new.disabled, "disabled");
    check(*description != new.description, "description");
    check(*notes != new.notes, "notes");
    check(*secret != new.secret, "secret_hash");
    fields
}

// ---------------------------------------------------------------------------------
// The reloader: the fingerprint gate, the observer, and which directories to watch.

/// Called after every reload attempt with its result, from the reload task (keep it
/// quick, and do not call back into the [`Reloader`]: it holds its lock). The metrics module counts `portcullis_config_reloads_total{result=
/// result.label()}` and, when `result.is_success()`, sets the last-success time.
pub type Observer = Box<dyn Fn(&ReloadResult) + Send + Sync>;

/// Runs reload attempts for one config: serializes them, skips those whose files have
/// not changed since the last attempt, and tells the observer what happened.
pub struct Reloader {
    config_path: PathBuf,
    shared: Shared,
    observer: Observer,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Fingerprint of the files as the last attempt found them; `None` before the first.
    fingerprint: Option<[u8; 32]>,
    /// Files named by the last failed attempt's errors that the running snapshot does
    /// not use (a new credentials file that is missing or broken): watched too, so that
    /// fixing them is seen.
    also_watch: Vec<PathBuf>,
}

impl Reloader {
    /// A reloader for the config at `config_path` (as given to `load`) published
    /// through `shared`. `observer` is called after every attempt.
    pub fn new(
        config_path: PathBuf,
        shared: Shared,
        observer: impl Fn(&ReloadResult) + Send + Sync + 'static,
    ) -> Self {
        Reloader {
            config_path,
            shared,
            observer: Box::new(observer),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the config now, whether or not the files changed (SIGHUP, tests).
    pub fn reload(&self, trigger: Trigger) -> ReloadResult {
        let mut state = self.lock();
        let files = self.files(&state);
        let fingerprint = fingerprint(&files);
        self.attempt(&mut state, trigger, fingerprint)
    }

    /// Re-reads the config if the bytes of the files in use differ from what the last
    /// attempt read (or there was none); `None` when nothing changed.
    pub fn check(&self, trigger: Trigger) -> Option<ReloadResult> {
        let mut state = self.lock();
        let files = self.files(&state);
        let fingerprint = fingerprint(&files);
        if state.fingerprint == Some(fingerprint) {
            return None;
        }
        Some(self.attempt(&mut state, trigger, fingerprint))
    }

    /// The fingerprint is taken *before* the load, so a write that lands during the
    /// load makes the next check differ and load again: a change is never skipped.
    fn attempt(&self, state: &mut State, trigger: Trigger, fingerprint: [u8; 32]) -> ReloadResult {
        let result = reload_now(&self.config_path, &self.shared, trigger, config::unix_now());
        state.fingerprint = Some(fingerprint);
        state.also_watch = match &result {
            ReloadResult::Failed(errors) => errors.0.iter().map(|e| e.file.clone()).collect(),
            _ => Vec::new(),
        };
        (self.observer)(&result);
        result
    }

    /// Every file the config is read from: the running snapshot's, the config path,
    /// and those the last failure named.
    fn files(&self, state: &State) -> Vec<PathBuf> {
        let snap = self.shared.load();
        let mut files: Vec<PathBuf> = snap.files.clone();
        files.push(self.config_path.clone());
        files.extend(state.also_watch.iter().cloned());
        files.sort();
        files.dedup();
        files
    }

    /// What to watch for the files in use now: see [`WatchSet`].
    pub fn watch_set(&self) -> WatchSet {
        let files = {
            let state = self.lock();
            self.files(&state)
        };
        let mut set = WatchSet::default();
        for f in &files {
            set.dirs.push(parent_dir(f));
            set.names.extend(f.file_name().map(OsStr::to_os_string));
            if let Ok(link) = std::fs::read_link(f) {
                if let Some(Component::Normal(hop)) = link.components().next() {
                    set.names.insert(hop.to_os_string());
                }
            }
            if let Ok(target) = std::fs::canonicalize(f) {
                set.dirs.push(parent_dir(&target));
                set.names.extend(target.file_name().map(OsStr::to_os_string));
            }
        }
        set.dirs.sort();
        set.dirs.dedup();
        set
    }
}

/// What the service watches for the files in use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSet {
    /// The directory holding each file as named, and, when the file is a symlink, the
    /// one holding its final target.
    pub dirs: Vec<PathBuf>,
    /// The entry names in those directories that are the config's: each file's name,
    /// the first hop of its symlink (`..data` in a Kubernetes volume) and its final
    /// target's name.
    pub names: HashSet<OsString>,
}

/// The directory holding `file` (`.` for a bare file name).
fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// SHA-256 over each file's path and bytes (or the kind of error reading it), so that
/// a file appearing, vanishing or changing all change the fingerprint.
fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update(b"ok");
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(e) => {
                h.update(b"error");
                h.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    h.finalize().into()
}

/// How a filesystem event bears on the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relevance {
    /// A file was opened or read (our own reads included): nothing changed.
    None,
    /// Something else in a watched directory changed: check the files once, soon. It
    /// does not postpone a pending check, so a busy neighbour (a log file in the
    /// config directory) cannot delay a reload.
    Nearby,
    /// An entry of the config changed, a Kubernetes `..`-entry moved, a watched
    /// directory itself went, or the watcher lost events: check once the burst is quiet.
    Config,
}

fn relevance(event: &notify::Result<notify::Event>, watch: &WatchSet) -> Relevance {
    let Ok(ev) = event else {
        return Relevance::Config;
    };
    if let EventKind::Access(kind) = ev.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return Relevance::None;
        }
    }
    let ours = |p: &PathBuf| {
        watch.dirs.contains(p)
            || p.file_name()
                .is_some_and(|n| watch.names.contains(n) || n.as_encoded_bytes().starts_with(b".."))
    };
    if ev.paths.is_empty() || ev.need_rescan() || ev.paths.iter().any(ours) {
        Relevance::Config
    } else {
        Relevance::Nearby
    }
}

// ---------------------------------------------------------------------------------
// The background service.

/// The pingora background service that runs hot reload; add it with
/// `server.add_service(background_service("config reload", service))`.
pub struct ReloadService {
    reloader: Reloader,
}

/// The reload service for the config at `config_path` (as given to `config::load`),
/// publishing into `shared`. `observer` is called after every reload attempt,
/// including one when the service starts (the files are re-checked then, in case they
/// changed while the server was starting: normally `Unchanged`).
pub fn reload_service(
    config_path: PathBuf,
    shared: Shared,
    observer: impl Fn(&ReloadResult) + Send + Sync + 'static,
) -> ReloadService {
    ReloadService {
        reloader: Reloader::new(config_path, shared, observer),
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // First, so that SIGHUP stops meaning "terminate" as early as possible.
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP; config reloads on file changes only");
                None
            }
        };
        let (tx, mut events) = mpsc::unbounded_channel();
        // Kept so that `events` never reports closed, even with no watcher.
        let _tx = tx.clone();
        let mut watcher = DirWatcher::new(tx);
        let mut watch = self.reloader.watch_set();
        watcher.update(&watch.dirs);
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // (first event, last event) of the burst not yet acted on.
        let mut burst: Option<(Instant, Instant)> = None;
        tracing::info!(dirs = ?watcher.dirs(), "watching the config for changes");

        // Reloads run on this task: `load` does blocking file and name-resolution I/O,
        // which is fine here because the service has a runtime (one thread) of its own.
        loop {
            let due = burst.map(|(first, last)| (last + DEBOUNCE).min(first + MAX_DELAY));
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                Some(()) = next_signal(&mut hup) => {
                    burst = None;
                    self.reloader.reload(Trigger::Signal);
                    watch = self.reloader.watch_set();
                    watcher.update(&watch.dirs);
                }
                Some(event) = events.recv() => {
                    if let Err(e) = &event {
                        tracing::debug!(error = %e, "config watcher error");
                    }
                    let now = Instant::now();
                    match relevance(&event, &watch) {
                        Relevance::Config => burst = Some((burst.map_or(now, |(first, _)| first), now)),
                        Relevance::Nearby => burst = burst.or(Some((now, now))),
                        Relevance::None => {}
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    burst = None;
                    self.reloader.check(Trigger::Watch);
                    watch = self.reloader.watch_set();
                    watcher.update(&watch.dirs);
                }
                _ = poll.tick() => {
                    self.reloader.check(Trigger::Poll);
                    watch = self.reloader.watch_set();
                    watcher.update(&watch.dirs);
                }
            }
        }
        tracing::debug!("config reload service stopped");
    }
}

async fn next_signal(hup: &mut Option<Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Non-recursive watches on a set of directories, keyed by the directory's identity
/// (device, inode): a directory replaced under the same path (or a symlink to one
/// retargeted) is watched anew, and two paths to one directory share one watch.
struct DirWatcher {
    inner: Option<RecommendedWatcher>,
    watching: HashMap<(u64, u64), PathBuf>,
}

impl DirWatcher {
    fn new(tx: mpsc::UnboundedSender<notify::Result<notify::Event>>) -> Self {
        let inner = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        });
        let inner = match inner {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "cannot watch the config directories; changes are seen by the {}-second poll and SIGHUP only",
                    POLL_INTERVAL.as_secs()
                );
                None
            }
        };
        DirWatcher {
            inner,
            watching: HashMap::new(),
        }
    }

    fn dirs(&self) -> Vec<&Path> {
        self.watching.values().map(PathBuf::as_path).collect()
    }

    /// Watches exactly `dirs` (those that exist). A directory that cannot be watched
    /// now is tried again at the next update.
    fn update(&mut self, dirs: &[PathBuf]) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        let mut want: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
        for d in dirs {
            if let Ok(m) = std::fs::metadata(d) {
                want.entry((m.dev(), m.ino())).or_insert_with(|| d.clone());
            }
        }
        self.watching.retain(|id, path| {
            let keep = want.get(id) == Some(path);
            if !keep {
                // Fails harmlessly when the kernel already dropped a deleted directory's watch.
                let _ = inner.unwatch(path);
            }
            keep
        });
        for (id, path) in want {
            if self.watching.contains_key(&id) {
                continue;
            }
            match inner.watch(&path, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %path.display(), "watching config directory");
                    self.watching.insert(id, path);
                }
                Err(e) => tracing::warn!(dir = %path.display(), error = %e, "cannot watch config directory"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MAIN: &str = "listen: \"127.0.0.1:18080\"\nupstream: \"127.0.0.1:13000\"\nadmin_listen: \"127.0.0.1:19901\"\nenvironment: sandbox\ncredentials_file: credentials.yaml\nroutes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n";

    fn key_hash(key: &str) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }

    fn key_entry(name: &str, key: &str, perms: &str, expires: &str) -> String {
        format!(
            "  - name: {name}\n    key_hash: \"{}\"\n    permissions: [{perms}]\n    expires: {expires}\n",
            key_hash(key)
        )
    }

    struct Fixture {
        dir: tempfile::TempDir,
        shared: Shared,
    }

    impl Fixture {
        fn new(main: &str, creds: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("portcullis.yaml"), main).unwrap();
            std::fs::write(dir.path().join("credentials.yaml"), creds).unwrap();
            let snap = config::load(&dir.path().join("portcullis.yaml"), 0).unwrap();
            Fixture {
                shared: Arc::new(ArcSwap::from_pointee(snap)),
                dir,
            }
        }
        fn path(&self) -> PathBuf {
            self.dir.path().join("portcullis.yaml")
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.path().join(name), text).unwrap();
        }
        fn reload(&self) -> ReloadResult {
            reload_now(&self.path(), &self.shared, Trigger::Manual, 0)
        }
        fn load(&self) -> Snapshot {
            config::load(&self.path(), 0).unwrap()
        }
    }

    fn creds(entries: &[String]) -> String {
        format!("api_keys:\n{}", entries.concat())
    }

    #[test]
    fn diff_names_added_removed_and_changed_credentials() {
        let a = key_entry("a", "key-a", "\"balances:read\"", "2099-01-01");
        let b = key_entry("b", "key-b", "\"balances:read\"", "2099-01-01");
        let f = Fixture::new(MAIN, &creds(&[a.clone(), b]));
        let old = f.load();
        let a2 = key_entry("a", "key-a", "\"balances:read\", \"vault:read\"", "2098-01-01");
        let c = key_entry("c", "key-c", "\"balances:read\"", "2099-01-01");
        f.write("credentials.yaml", &creds(&[a2, c]));
        let d = diff(&old, &f.load());
        assert_eq!(d.credentials_added, vec!["c"]);
        assert_eq!(d.credentials_removed, vec!["b"]);
        assert_eq!(
            d.credentials_changed,
            vec![CredentialChange {
                name: "a".into(),
                fields: vec!["permissions", "expires"]
            }]
        );
        assert!(d.routes_added.is_empty() && d.routes_removed.is_empty() && d.settings.is_empty());
        assert_eq!(
            d.to_string(),
            "credentials added: c; credentials removed: b; credentials changed: a (permissions, expires)"
        );
    }

    #[test]
    fn diff_names_a_rotated_key_without_its_hash() {
        let f = Fixture::new(
            MAIN,
            &creds(&[key_entry("a", "old-key", "\"balances:read\"", "2099-01-01")]),
        );
        let old = f.load();
        f.write(
            "credentials.yaml",
            &creds(&[key_entry("a", "new-key", "\"balances:read\"", "2099-01-01")]),
        );
        let d = diff(&old, &f.load());
        assert_eq!(
            d.credentials_changed,
            vec![CredentialChange {
                name: "a".into(),
                fields: vec!["key_hash"]
            }]
        );
        let text = format!("{d} {d:?}");
        for secret in [
            "old-key",
            "new-key",
            &key_hash("old-key")[7..],
            &key_hash("new-key")[7..],
        ] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn diff_names_added_and_removed_routes_and_settings() {
        let c = creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]);
        let f = Fixture::new(MAIN, &c);
        let old = f.load();
        let main = MAIN.replace("13000", "13001").replace(
            "GET /v1/vaults/{vault_id}/balances",
            "GET /v1/vaults/{vault_id}/keys",
        ) + "  - match: \"GET /v1/status\"\n    public: true\n";
        f.write("portcullis.yaml", &main);
        let d = diff(&old, &f.load());
        assert_eq!(
            d.routes_added,
            vec!["GET /v1/vaults/{vault_id}/keys", "GET /v1/status"]
        );
        assert_eq!(d.routes_removed, vec!["GET /v1/vaults/{vault_id}/balances"]);
        assert_eq!(d.settings, vec!["upstream"]);
        assert!(d.credentials_added.is_empty() && d.credentials_changed.is_empty());
    }

    #[test]
    fn diff_is_empty_when_only_comments_and_order_change() {
        let a = key_entry("a", "key-a", "\"balances:read\", \"vault:read\"", "2099-01-01");
        let b = key_entry("b", "key-b", "\"balances:read\"", "2099-01-01");
        let f = Fixture::new(MAIN, &creds(&[a, b.clone()]));
        let old = f.load();
        let a = key_entry("a", "key-a", "\"vault:read\", \"balances:read\"", "2099-01-01");
        f.write("credentials.yaml", &format!("# a comment\n{}", creds(&[b, a])));
        let d = diff(&old, &f.load());
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            d.to_string(),
            "no named change (comments, formatting or order only)"
        );
    }

    #[test]
    fn applies_a_valid_change_with_one_store() {
        let f = Fixture::new(
            MAIN,
            &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
        );
        let before = f.shared.load_full();
        f.write(
            "credentials.yaml",
            &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]),
        );
        match f.reload() {
            ReloadResult::Applied { diff, needs_restart } => {
                assert_eq!(diff.credentials_added, vec!["b"]);
                assert_eq!(diff.credentials_removed, vec!["a"]);
                assert!(needs_restart.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let after = f.shared.load_full();
        assert_eq!(after.credentials.all[0].id.as_ref(), "b");
        // An in-flight request's snapshot is untouched.
        assert_eq!(before.credentials.all[0].id.as_ref(), "a");
    }

    #[test]
    fn reports_unchanged_files_without_a_store() {
        let f = Fixture::new(
            MAIN,
            &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
        );
        let before = f.shared.load_full();
        assert_eq!(f.reload(), ReloadResult::Unchanged);
        assert!(Arc::ptr_eq(&before, &f.shared.load_full()));
    }

    #[test]
    fn keeps_the_last_good_snapshot_when_a_file_is_bad() {
        let good = creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]);
        let f = Fixture::new(MAIN, &good);
        let before = f.shared.load_full();
        let cases = [
            ("syntax error", "api_keys:\n  - name: [oops\n".to_string()),
            (
                "unknown field",
                good.replace("    expires:", "    colour: red\n    expires:"),
            ),
            ("half written", good[..good.len() / 2].to_string()),
            ("empty", String::new()),
        ];
        for (what, text) in cases {
            f.write("credentials.yaml", &text);
            match f.reload() {
                ReloadResult::Failed(errors) => {
                    assert!(
                        errors.to_string().contains("credentials.yaml"),
                        "{what}: {errors}"
                    );
                }
                other => panic!("{what}: {other:?}"),
            }
            assert!(Arc::ptr_eq(&before, &f.shared.load_full()), "{what}");
        }
        std::fs::remove_file(f.dir.path().join("credentials.yaml")).unwrap();
        assert!(matches!(f.reload(), ReloadResult::Failed(_)));
        assert!(Arc::ptr_eq(&before, &f.shared.load_full()));
        // Fixing the file recovers.
        f.write(
            "credentials.yaml",
            &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]),
        );
        assert!(matches!(f.reload(), ReloadResult::Applied { .. }));
        assert_eq!(f.shared.load().credentials.all[0].id.as_ref(), "b");
    }

    #[test]
    fn keeps_listen_addresses_and_applies_the_rest() {
        let f = Fixture::new(
            MAIN,
            &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
        );
        let main = MAIN
            .replace("18080", "18081")
            .replace("19901", "19902")
            .replace("13000", "13001")
            + "shutdown_grace: 3\n";
        f.write("portcullis.yaml", &main);
        match f.reload() {
            ReloadResult::Applied { diff, needs_restart } => {
                assert_eq!(needs_restart, vec!["listen", "admin_listen", "shutdown_grace"]);
                assert_eq!(diff.settings, vec!["upstream"]);
            }
            other => panic!("{other:?}"),
        }
        let s = &f.shared.load().settings;
        assert_eq!(s.listen, "127.0.0.1:18080");
        assert_eq!(s.admin_listen, "127.0.0.1:19901");
        assert_eq!(s.upstream_text, "127.0.0.1:13001");
        // Reported once: the same files again are unchanged.
        assert_eq!(f.reload(), ReloadResult::Unchanged);
    }

    #[test]
    fn reloader_skips_unchanged_files_and_reports_a_bad_file_once() {
        let f = Fixture::new(
            MAIN,
            &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
        );
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let r = Reloader::new(f.path(), f.shared.clone(), move |_: &ReloadResult| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(
            r.check(Trigger::Poll),
            Some(ReloadResult::Unchanged),
            "the first check reads"
        );
        assert_eq!(r.check(Trigger::Poll), None);
        f.write("credentials.yaml", "api_keys: [");
        assert!(matches!(r.check(Trigger::Watch), Some(ReloadResult::Failed(_))));
        assert_eq!(r.check(Trigger::Poll), None, "a bad file is reported once");
        assert!(
            matches!(r.reload(Trigger::Signal), ReloadResult::Failed(_)),
            "SIGHUP always reads"
        );
        f.write(
            "credentials.yaml",
            &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]),
        );
        assert!(matches!(
            r.check(Trigger::Watch),
            Some(ReloadResult::Applied { .. })
        ));
        assert_eq!(seen.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn reloader_watches_a_new_credentials_file_named_by_a_failure() {
        let f = Fixture::new(
            MAIN,
            &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
        );
        let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
        f.write(
            "portcullis.yaml",
            &MAIN.replace("credentials.yaml", "other/creds.yaml"),
        );
        assert!(matches!(r.check(Trigger::Watch), Some(ReloadResult::Failed(_))));
        let dirs = r.watch_set().dirs;
        assert!(dirs.contains(&f.dir.path().join("other")), "{dirs:?}");
        // Creating the missing file changes the fingerprint.
        std::fs::create_dir(f.dir.path().join("other")).unwrap();
        f.write(
            "other/creds.yaml",
            &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]),
        );
        assert!(matches!(
            r.check(Trigger::Watch),
            Some(ReloadResult::Applied { .. })
        ));
    }

    #[test]
    fn watches_the_directory_of_a_symlink_target() {
        let f = Fixture::new(
            MAIN,
            &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
        );
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("real.yaml");
        std::fs::rename(f.dir.path().join("credentials.yaml"), &target).unwrap();
        std::os::unix::fs::symlink(&target, f.dir.path().join("credentials.yaml")).unwrap();
        let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
        let set = r.watch_set();
        assert!(set.dirs.contains(&f.dir.path().to_path_buf()), "{set:?}");
        assert!(
            set.dirs
                .contains(&std::fs::canonicalize(elsewhere.path()).unwrap()),
            "{set:?}"
        );
        for name in ["credentials.yaml", "portcullis.yaml", "real.yaml"] {
            assert!(set.names.contains(OsStr::new(name)), "{set:?}");
        }
    }

    #[test]
    fn classifies_events_by_kind_and_name() {
        use notify::event::{CreateKind, DataChange, Flag, ModifyKind, RemoveKind, RenameMode};
        let watch = WatchSet {
            dirs: vec![PathBuf::from("/etc/p")],
            names: ["portcullis.yaml", "credentials.yaml"]
                .into_iter()
                .map(OsString::from)
                .collect(),
        };
        let ev = |kind, path: &str| Ok(notify::Event::new(kind).add_path(PathBuf::from(path)));
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let rel = |e| relevance(&e, &watch);
        // Reads, ours included, are no change.
        assert_eq!(
            rel(ev(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/etc/p/credentials.yaml"
            )),
            Relevance::None
        );
        assert_eq!(
            rel(ev(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/etc/p/credentials.yaml"
            )),
            Relevance::None
        );
        // Writes, renames and removals of our names, and Kubernetes' `..` entries.
        assert_eq!(
            rel(ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/p/credentials.yaml"
            )),
            Relevance::Config
        );
        assert_eq!(rel(ev(data, "/etc/p/portcullis.yaml")), Relevance::Config);
        assert_eq!(
            rel(ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/p/credentials.yaml"
            )),
            Relevance::Config
        );
        assert_eq!(
            rel(ev(EventKind::Create(CreateKind::Other), "/etc/p/..data_tmp")),
            Relevance::Config
        );
        assert_eq!(
            rel(ev(EventKind::Remove(RemoveKind::Folder), "/etc/p")),
            Relevance::Config
        );
        // Anything else nearby.
        assert_eq!(rel(ev(data, "/etc/p/stdout.log")), Relevance::Nearby);
        assert_eq!(
            rel(ev(
                EventKind::Create(CreateKind::File),
                "/etc/p/.credentials.yaml.swp"
            )),
            Relevance::Nearby
        );
        // Lost events and watcher errors.
        assert_eq!(
            rel(Ok(notify::Event::new(EventKind::Other).set_flag(Flag::Rescan))),
            Relevance::Config
        );
        assert_eq!(
            rel(Err(notify::Error::generic("queue overflow"))),
            Relevance::Config
        );
    }

    #[test]
    fn names_the_first_hop_of_a_kubernetes_style_symlink() {
        let f = Fixture::new(
            MAIN,
            &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
        );
        let d = f.dir.path();
        std::fs::create_dir(d.join("..2026_01_01")).unwrap();
        std::fs::rename(
            d.join("credentials.yaml"),
            d.join("..2026_01_01/credentials.yaml"),
        )
        .unwrap();
        std::os::unix::fs::symlink("..2026_01_01", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/credentials.yaml", d.join("credentials.yaml")).unwrap();
        let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
        let set = r.watch_set();
        assert!(set.names.contains(OsStr::new("..data")), "{set:?}");
        assert!(
            set.dirs
                .contains(&std::fs::canonicalize(d.join("..2026_01_01")).unwrap()),
            "{set:?}"
        );
    }
}
