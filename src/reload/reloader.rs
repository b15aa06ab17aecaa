//! The reloader: one reload at a time, the files in use, the fingerprint that gates
//! events and polls, and which directories and names to watch.
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::{Component, PathBuf};
use std::sync::{Mutex, MutexGuard};

use notify::event::{AccessKind, AccessMode};
use notify::EventKind;
use sha2::{Digest, Sha256};

use crate::config::{self, parent_dir, Shared};

use super::*;

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
    /// Told when a replaced snapshot has been freed (on a thread of its own): the reload
    /// service then trims the heap of its thread, where a reload builds its snapshot.
    freed: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct State {
    /// Fingerprint of the files as the last attempt found them; `None` before the first.
    fingerprint: Option<[u8; 32]>,
    /// The first check has compared the files with the snapshot the server started on.
    seeded: bool,
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
            freed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Notified each time a snapshot this reloader replaced has been freed by its release
    /// thread (not when a request outlived the wait and freed it: see
    /// [`release_when_unused`]).
    pub fn freed(&self) -> &tokio::sync::Notify {
        &self.freed
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
        if !std::mem::replace(&mut state.seeded, true) && state.fingerprint.is_none() && self.snapshot_is_on_disk() {
            // The first check after start, and the files hold what the running snapshot was
            // built from: nothing to load (a second full load of a large store at start
            // doubled the sidecar's memory for seconds). Read after the fingerprint, so a
            // write between the two makes this comparison fail and the files load.
            state.fingerprint = Some(fingerprint);
            let result = ReloadResult::Unchanged;
            (self.observer)(&result);
            return Some(result);
        }
        Some(self.attempt(&mut state, trigger, fingerprint))
    }

    /// Whether the files the running snapshot was read from still hold the bytes it was
    /// built from (the same hash over the same reads as the load's).
    fn snapshot_is_on_disk(&self) -> bool {
        let snap = self.shared.load();
        let mut files = config::gather::Gather::new();
        for f in &snap.files {
            let _ = files.read(f);
        }
        let files_hash = snap.content_hash.split(":pg:").next().unwrap_or("");
        files.finish().1 == files_hash
    }

    /// The fingerprint is taken *before* the load, so a write that lands during the
    /// load makes the next check differ and load again: a change is never skipped.
    fn attempt(&self, state: &mut State, trigger: Trigger, fingerprint: [u8; 32]) -> ReloadResult {
        let before = self.shared.load_full();
        let result = reload_now(&self.config_path, &self.shared, trigger, config::unix_now());
        if matches!(result, ReloadResult::Applied { .. }) {
            release_when_unused(before, RELEASE_WAIT, self.freed.clone());
        }
        // The load's freed heap back to the system.
        config::release_freed_memory();
        // A failure that is not the files' fault (DNS) is retried at the next poll even
        // though the bytes are the same; any other is reported once per content.
        let transient = matches!(&result, ReloadResult::Failed(e) if e.0.iter().any(|e| e.transient));
        state.fingerprint = if transient { None } else { Some(fingerprint) };
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
/// SHA-256 over each file's path and bytes (or the kind of error reading it), so that
/// a file appearing, vanishing or changing all change the fingerprint.
pub(super) fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        // Streamed through the hash: the 5-second poll of a 28 MB store must not hold a
        // copy of it (issue 15: resident memory).
        let mut content = Sha256::new();
        let read = std::fs::File::open(f).and_then(|mut file| std::io::copy(&mut file, &mut content));
        match read {
            Ok(len) => {
                h.update(b"ok");
                h.update(len.to_le_bytes());
                h.update(content.finalize());
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
pub(super) enum Relevance {
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

pub(super) fn relevance(event: &notify::Result<notify::Event>, watch: &WatchSet) -> Relevance {
    let Ok(ev) = event else {
        return Relevance::Config;
    };
    if let EventKind::Access(kind) = ev.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return Relevance::None;
        }
    }
    // The sidecar's own state beside the credentials file (last-use times, the approval
    // queue) and their temporary files: written by this process, never config.
    let state = |p: &PathBuf| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            (n.contains(".last-used.json") || n.contains(".requests.")) && (n.ends_with(".json") || n.ends_with(".tmp"))
        })
    };
    if !ev.paths.is_empty() && ev.paths.iter().all(state) {
        return Relevance::None;
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

/// How long the replaced snapshot's release waits for the requests still using it.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Frees `snap` once the requests that began with it are done and tells `freed`, on a
/// thread of its own so that the next reload never waits for them. The wait is bounded (a
/// WebSocket can hold a snapshot for hours); past it, or if no thread can start, whoever
/// holds the snapshot last frees it, and nobody is told.
///
/// Why a thread and a signal (issue 15, RSS after reloads of 100,000 credentials): freed
/// by the last request, after the reload's own trim, a snapshot stayed resident until the
/// next reload (122.8 MB; 84–89 MB once freed here and trimmed). And glibc trims the free
/// top of a thread's heap only on a thread using it: a snapshot a reload built sits in the
/// reload service's thread's heap, which that service trims when told (76 MB before, 52–64
/// MB with it).
pub(super) fn release_when_unused(
    snap: std::sync::Arc<config::Snapshot>,
    within: std::time::Duration,
    freed: Arc<tokio::sync::Notify>,
) {
    let _ = std::thread::Builder::new().name("snapshot-release".into()).spawn(move || {
        let deadline = std::time::Instant::now() + within;
        while std::sync::Arc::strong_count(&snap) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Freed here only if this is the last holder; else by whoever is, later.
        if let Some(last) = std::sync::Arc::into_inner(snap) {
            drop(last);
            freed.notify_one();
        }
    });
}

// ---------------------------------------------------------------------------------
// The background service.
