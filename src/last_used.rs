//! "Last used": per credential, the time it last authenticated (SPEC §9, §10).
//!
//! The request path only touches memory: [`LastUsed::record`] moves a credential's time
//! forward when the one held is a minute old or more, so on the common path (a credential
//! that authenticated less than a minute ago) it is one shard read lock and one atomic
//! load, without allocating. A background service ([`LastUsed::service`]) writes the whole
//! table every minute, only when something changed, and once more at shutdown: the file is
//! written at most once a minute, never per request, and a time read from it is at most
//! a minute or two stale.
//!
//! For the file store the table lives beside the credentials file, in
//! `<credentials file name>.last-used.json`:
//!
//! ```json
//! {"version": 1, "last_used": {"reporting-service": "2025-06-01T12:34:00Z"}}
//! ```
//!
//! Names and times only: nothing in it is a secret or a hash, so it may be read by anyone
//! who may read the names. It is state, not config: the reloader does not watch it, and
//! a missing or damaged file only means "never used" for everyone (with one warning),
//! never a failure to start.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{parent_dir, raw::MainRaw, validate};
use crate::store::span::rfc3339;

/// A credential's time moves forward only once it is this old: the resolution of "last
/// used", and what keeps [`LastUsed::record`] a read on the common path.
pub const RESOLUTION_SECS: i64 = 60;

/// How often the service writes the table (when it changed).
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// The version of the state file's format.
const FORMAT_VERSION: u32 = 1;

/// Where the last-use times of the credentials file at `credentials_file` live: the same
/// directory, `<its file name>.last-used.json` (e.g. `credentials.yaml.last-used.json`).
pub fn state_path(credentials_file: &Path) -> PathBuf {
    let mut name = credentials_file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "credentials".into());
    name.push(".last-used.json");
    parent_dir(credentials_file).join(name)
}

/// The state file of the main config at `config`: beside the credentials file it names,
/// found as the loader finds it (`credentials_file`, relative to the main config). The
/// snapshot does not keep that path, so the main config is read again.
pub fn state_path_for_config(config: &Path) -> Result<PathBuf, String> {
    let text = fs::read_to_string(config)
        .map_err(|e| format!("{}: cannot read: {e}", config.display()))?;
    let raw: MainRaw = crate::config::parse(config, &text).map_err(|e| e.to_string())?;
    Ok(state_path(&validate::credentials_path(
        &raw,
        &parent_dir(config),
    )))
}

/// The state file as written (and read back).
#[derive(Deserialize)]
struct StateFile {
    version: u32,
    last_used: serde_json::Map<String, serde_json::Value>,
}

/// The last-use time of every credential that authenticated, kept in memory and written
/// to its state file by [`LastUsed::flush`].
#[derive(Debug)]
pub struct LastUsed {
    /// The state file; `None` keeps the times in memory only.
    path: Option<PathBuf>,
    /// Unix seconds, by credential name.
    times: DashMap<Arc<str>, AtomicI64, foldhash::fast::RandomState>,
    /// A time changed (or an entry went) since the last write.
    dirty: AtomicBool,
    /// One write at a time: the periodic flush and the one at shutdown share a temp file.
    writing: Mutex<()>,
    /// The last write failed (warned once; the next success says so).
    failing: AtomicBool,
}

impl LastUsed {
    /// The table in the state file at `path`. A missing file is an empty table; an
    /// unreadable or damaged one is an empty table too, with one warning (it is rewritten
    /// whole at the next flush): last-use times are never a reason not to serve.
    pub fn open(path: PathBuf) -> Arc<LastUsed> {
        let (table, problem) = LastUsed::load(path);
        if let Some(problem) = problem {
            tracing::warn!(problem = %problem, "last-use times start empty");
        }
        table
    }

    /// An empty table kept in memory only (nothing to read or write).
    pub fn open_none() -> Arc<LastUsed> {
        Arc::new(LastUsed::with_path(None))
    }

    /// As [`LastUsed::open`], but hands the problem back instead of logging it (the CLI
    /// prints it on stderr, where no log goes).
    pub fn load(path: PathBuf) -> (Arc<LastUsed>, Option<String>) {
        let (entries, problem) = match fs::read_to_string(&path) {
            Ok(text) => match parse(&text) {
                Ok((entries, 0)) => (entries, None),
                Ok((entries, skipped)) => (
                    entries,
                    Some(format!(
                        "{}: skipped {skipped} entry(ies) with a bad time",
                        path.display()
                    )),
                ),
                Err(e) => (
                    Vec::new(),
                    Some(format!("{}: not a last-use file: {e}", path.display())),
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), None),
            Err(e) => (
                Vec::new(),
                Some(format!("{}: cannot read: {e}", path.display())),
            ),
        };
        let table = LastUsed::with_path(Some(path));
        for (name, t) in entries {
            table.times.insert(Arc::from(name), AtomicI64::new(t));
        }
        (Arc::new(table), problem)
    }

    /// The table of the main config at `config` ([`state_path_for_config`]). If that
    /// config cannot be read again (it changed since it was loaded), the times are kept
    /// in memory only, with a warning, rather than written to a guessed place.
    pub fn for_config(config: &Path) -> Arc<LastUsed> {
        match state_path_for_config(config) {
            Ok(path) => LastUsed::open(path),
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the credentials file again; last-use times are kept in memory only");
                Arc::new(LastUsed::with_path(None))
            }
        }
    }

    fn with_path(path: Option<PathBuf>) -> LastUsed {
        LastUsed {
            path,
            times: DashMap::default(),
            dirty: AtomicBool::new(false),
            writing: Mutex::new(()),
            failing: AtomicBool::new(false),
        }
    }

    /// The state file, if the table has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Notes that `credential` authenticated at `now` (unix seconds). Called for every
    /// authenticated request: the time held moves only when it is [`RESOLUTION_SECS`]
    /// old or more, and only a credential's first use allocates (its name).
    pub fn record(&self, credential: &str, now: i64) {
        let changed = match self.times.get(credential) {
            Some(t) => advance(&t, now),
            // The shard's read lock is released before the write lock is taken.
            None => match self.times.entry(Arc::from(credential)) {
                Entry::Occupied(o) => advance(o.get(), now),
                Entry::Vacant(v) => {
                    v.insert(AtomicI64::new(now));
                    true
                }
            },
        };
        if changed {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// When `credential` last authenticated (unix seconds, to the minute), if ever.
    pub fn get(&self, credential: &str) -> Option<i64> {
        self.times
            .get(credential)
            .map(|t| t.load(Ordering::Relaxed))
    }

    /// Every entry (name, unix seconds), when something changed since the last call;
    /// the PostgreSQL store writes these in one batch.
    pub fn take_changed(&self) -> Option<Vec<(String, i64)>> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(self.times.iter().map(|e| (e.key().to_string(), e.value().load(Ordering::Relaxed))).collect())
    }

    /// Marks the table changed again (a write of [`LastUsed::take_changed`]'s times failed).
    pub fn record_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Takes a time another replica saw, when it is newer than ours (not a change of ours).
    pub fn merge(&self, credential: &str, t: i64) {
        match self.times.get(credential) {
            Some(cur) => {
                cur.fetch_max(t, Ordering::Relaxed);
            }
            None => {
                self.times.entry(Arc::from(credential)).or_insert_with(|| AtomicI64::new(t)).fetch_max(t, Ordering::Relaxed);
            }
        }
    }

    /// Drops the entries of credentials that `keep` does not name (deleted ones), so the
    /// table does not outlive them; the file follows at the next flush.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let before = self.times.len();
        self.times.retain(|name, _| keep(name));
        if self.times.len() != before {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Writes the whole table to the state file — a temp file in the same directory,
    /// fsynced, renamed over it — when something changed since the last write. Returns
    /// whether it wrote. A failed write leaves the table dirty, to be tried again.
    pub fn flush(&self) -> io::Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        // Cleared before the table is read: a use recorded while writing marks it again.
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        match crate::store::file::replace_file(path, &self.render()) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.dirty.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// The state file's text: names in order, times in RFC 3339 UTC, nothing else.
    fn render(&self) -> String {
        let mut entries: Vec<(Arc<str>, i64)> = self
            .times
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        entries.sort_unstable();
        let last_used: serde_json::Map<String, serde_json::Value> = entries
            .into_iter()
            .map(|(name, t)| (name.to_string(), rfc3339(t).into()))
            .collect();
        let doc = serde_json::json!({ "version": FORMAT_VERSION, "last_used": last_used });
        format!("{doc:#}\n")
    }

    /// [`LastUsed::flush`], with its failure logged: a warning the first time, then quiet
    /// until a write succeeds again (a read-only directory is not worth a line a minute).
    fn flush_logged(&self) {
        match self.flush() {
            Ok(wrote) => {
                if wrote && self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(file = ?self.path, "last-use times written again");
                }
            }
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(file = ?self.path, error = %e, "cannot write last-use times; kept in memory, retried every minute");
            }
            Err(e) => tracing::debug!(file = ?self.path, error = %e, "cannot write last-use times"),
        }
    }

    /// The pingora background service that writes the table every [`FLUSH_EVERY`] and
    /// once more at shutdown; add it with
    /// `server.add_service(background_service("last used", table.service()))`.
    pub fn service(self: &Arc<Self>) -> FlushService {
        FlushService {
            table: self.clone(),
        }
    }
}

/// Moves `t` forward to `now` if it is at least [`RESOLUTION_SECS`] older; whether it moved.
fn advance(t: &AtomicI64, now: i64) -> bool {
    now.saturating_sub(t.load(Ordering::Relaxed)) >= RESOLUTION_SECS
        && t.fetch_max(now, Ordering::Relaxed) < now
}

/// Reads a state file's text: the entries, and how many were skipped for a bad time.
fn parse(text: &str) -> Result<(Vec<(String, i64)>, usize), String> {
    let file: StateFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if file.version != FORMAT_VERSION {
        return Err(format!(
            "version {} (this build reads {FORMAT_VERSION})",
            file.version
        ));
    }
    let mut skipped = 0;
    let mut entries = Vec::with_capacity(file.last_used.len());
    for (name, value) in file.last_used {
        match value
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        {
            Some(t) => entries.push((name, t.timestamp())),
            None => skipped += 1,
        }
    }
    Ok((entries, skipped))
}

/// The background service of [`LastUsed::service`].
pub struct FlushService {
    table: Arc<LastUsed>,
}

#[async_trait]
impl BackgroundService for FlushService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval_at(Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The writes block on file I/O, which is fine here: the service has a runtime
        // (one thread) of its own.
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                _ = tick.tick() => self.table.flush_logged(),
            }
        }
        self.table.flush_logged();
        tracing::debug!("last-use service stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const T0: i64 = 1_750_000_000;

    fn table_in(dir: &tempfile::TempDir) -> (Arc<LastUsed>, PathBuf) {
        let path = state_path(&dir.path().join("credentials.yaml"));
        (LastUsed::open(path.clone()), path)
    }

    #[test]
    fn state_path_is_beside_the_credentials_file() {
        assert_eq!(
            state_path(Path::new("/etc/p/credentials.yaml")),
            Path::new("/etc/p/credentials.yaml.last-used.json")
        );
        assert_eq!(
            state_path(Path::new("creds.yml")),
            Path::new("./creds.yml.last-used.json")
        );
    }

    #[test]
    fn state_path_for_config_follows_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("portcullis.yaml");
        fs::write(&main, "listen: \"127.0.0.1:1\"\nupstream: \"127.0.0.1:2\"\ncredentials_file: sub/c.yaml\nroutes: []\n").unwrap();
        assert_eq!(
            state_path_for_config(&main).unwrap(),
            dir.path().join("sub").join("c.yaml.last-used.json")
        );
        fs::write(
            &main,
            "listen: \"127.0.0.1:1\"\nupstream: \"127.0.0.1:2\"\nroutes: []\n",
        )
        .unwrap();
        assert_eq!(
            state_path_for_config(&main).unwrap(),
            dir.path().join("credentials.yaml.last-used.json")
        );
        assert!(state_path_for_config(&dir.path().join("absent.yaml")).is_err());
    }

    #[test]
    fn allows_one_move_a_minute_per_credential() {
        let t = LastUsed::with_path(None);
        assert_eq!(t.get("k"), None);
        t.record("k", T0);
        assert_eq!(t.get("k"), Some(T0));
        t.record("k", T0 + 59);
        assert_eq!(t.get("k"), Some(T0), "within the minute: unchanged");
        t.record("k", T0 + 60);
        assert_eq!(t.get("k"), Some(T0 + 60));
        t.record("k", T0 + 10);
        assert_eq!(t.get("k"), Some(T0 + 60), "never backwards");
        t.record("other", T0 + 5);
        assert_eq!((t.get("k"), t.get("other")), (Some(T0 + 60), Some(T0 + 5)));
    }

    #[test]
    fn denies_a_write_when_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table_in(&dir);
        assert!(!t.flush().unwrap(), "empty and clean: nothing to write");
        assert!(!path.exists());
        t.record("k", T0);
        assert!(t.flush().unwrap());
        assert!(path.exists());
        assert!(!t.flush().unwrap(), "written already");
        t.record("k", T0 + 30);
        assert!(
            !t.flush().unwrap(),
            "a use within the minute changes nothing"
        );
        t.record("k", T0 + 60);
        assert!(t.flush().unwrap());
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![path.file_name().unwrap().to_os_string()]);
    }

    #[test]
    fn allows_a_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table_in(&dir);
        t.record("reporting-service", T0);
        t.record("k-1", T0 + 120);
        t.flush().unwrap();
        let again = LastUsed::open(path.clone());
        assert_eq!(again.get("reporting-service"), Some(T0));
        assert_eq!(again.get("k-1"), Some(T0 + 120));
        assert_eq!(again.get("k-2"), None);
        assert!(!again.flush().unwrap(), "a table just read is clean");
    }

    #[test]
    fn denies_a_damaged_file_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("credentials.yaml"));
        for bad in [
            "",
            "{",
            "[]",
            "{\"version\": 2, \"last_used\": {}}",
            "{\"last_used\": {\"k\": \"2025-01-01T00:00:00Z\"}}",
        ] {
            fs::write(&path, bad).unwrap();
            let (t, problem) = LastUsed::load(path.clone());
            assert!(problem.is_some(), "{bad:?}");
            assert_eq!(t.times.len(), 0, "{bad:?}");
        }
        // One bad time skips that entry, not the file.
        fs::write(&path, r#"{"version": 1, "last_used": {"a": "yesterday", "b": "2025-01-01T00:00:00Z", "c": 5}}"#).unwrap();
        let (t, problem) = LastUsed::load(path.clone());
        assert!(problem.unwrap().contains("skipped 2 entry"));
        assert_eq!(
            (t.get("a"), t.get("b"), t.get("c")),
            (None, Some(1_735_689_600), None)
        );
        // A damaged file is replaced whole at the next write.
        t.record("d", T0);
        assert!(t.flush().unwrap());
        assert!(LastUsed::load(path).1.is_none());
    }

    #[test]
    fn allows_a_missing_file_without_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (t, problem) = LastUsed::load(dir.path().join("nothing.last-used.json"));
        assert!(problem.is_none());
        assert_eq!(t.times.len(), 0);
    }

    #[test]
    fn denies_anything_but_names_and_times_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table_in(&dir);
        t.record("k-1", T0);
        t.record("client.a", T0 + 61);
        t.flush().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(top, ["version", "last_used"]);
        assert_eq!(v["version"], 1);
        assert_eq!(
            v["last_used"],
            serde_json::json!({"client.a": rfc3339(T0 + 61), "k-1": rfc3339(T0)})
        );
        assert_eq!(v["last_used"]["k-1"], "2025-06-15T15:06:40Z");
    }

    #[test]
    fn retain_drops_deleted_credentials_at_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table_in(&dir);
        t.record("kept", T0);
        t.record("gone", T0);
        t.flush().unwrap();
        t.retain(|n| n == "kept");
        assert_eq!(t.get("gone"), None);
        assert!(t.flush().unwrap(), "a removal is a change");
        let again = LastUsed::open(path);
        assert_eq!((again.get("kept"), again.get("gone")), (Some(T0), None));
        t.retain(|_| true);
        assert!(!t.flush().unwrap(), "nothing removed, nothing written");
    }

    #[test]
    fn keeps_the_mode_of_the_file_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table_in(&dir);
        t.record("k", T0);
        t.flush().unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        t.record("k", T0 + 60);
        t.flush().unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn denies_a_write_into_a_missing_directory_and_stays_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let t = LastUsed::open(dir.path().join("gone").join("c.yaml.last-used.json"));
        t.record("k", T0);
        assert!(t.flush().is_err());
        fs::create_dir(dir.path().join("gone")).unwrap();
        assert!(t.flush().unwrap(), "retried: the change was not lost");
    }

    #[test]
    fn in_memory_table_never_writes() {
        let t = LastUsed::with_path(None);
        t.record("k", T0);
        assert!(!t.flush().unwrap());
        assert_eq!(t.get("k"), Some(T0));
    }
}
