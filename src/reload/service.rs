//! The background service: filesystem events (debounced), SIGHUP and the slow poll.
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::Shared;

use super::*;

/// The pingora background service that runs hot reload; add it with
/// `server.add_service(background_service("config reload", service))`.
pub struct ReloadService {
    reloader: Reloader,
    nudge: Arc<Notify>,
}

impl ReloadService {
    /// Notified by a writer of the config (the management API) after a write: the files
    /// are checked at once rather than after the watcher's debounce.
    pub fn nudge(&self) -> Arc<Notify> {
        self.nudge.clone()
    }
}

/// The nice value of the thread that reloads (the proxy's workers run at 0).
const RELOAD_NICE: i32 = 10;

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
        nudge: Arc::new(Notify::new()),
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Reloads run on this service's own thread, at a lower priority than the proxy's
        // workers (Linux nice values are per thread): parsing a large store takes a core for
        // a second or two, and requests come first (issue 15: p99 during a reload). Refused
        // (a sandbox) only means normal priority.
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), RELOAD_NICE) {
            tracing::debug!(error = %e, "cannot lower the reload thread's priority");
        }
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
                _ = self.nudge.notified() => {
                    burst = None;
                    self.reloader.check(Trigger::Write);
                    watch = self.reloader.watch_set();
                    watcher.update(&watch.dirs);
                }
                // A replaced snapshot freed: a reload built it on this thread (the first
                // one, at start, on the main thread), and only this thread can trim the
                // free top of its heap (glibc); `malloc_trim` does the rest.
                _ = self.reloader.freed().notified() => config::release_freed_memory(),
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

pub(super) async fn next_signal(hup: &mut Option<Signal>) -> Option<()> {
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

