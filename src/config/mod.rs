//! Config: files → raw structs (serde) → validation → one immutable [`Snapshot`],
//! published through [`Shared`] (an `ArcSwap`) and swapped whole on reload.
pub mod error;
pub mod gather;
pub mod raw;
pub mod snapshot;
mod split;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use gather::Gather;

pub use error::{ConfigError, ConfigErrors};
pub use snapshot::*;

/// The running config: one pointer, swapped atomically.
pub type Shared = Arc<ArcSwap<Snapshot>>;

/// The directory a file is in (`.` for a bare name): where a config's relative paths,
/// the lock of a credentials write and the watch of a reload are anchored.
pub fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Parses one config file's text with the one YAML parser every reader uses (the loader,
/// the CLI), so a file means the same to `serve`, `check` and `credentials`.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::new(path, None, "file is empty"));
    }
    // serde-saphyr streams: no event list of the whole document in memory (a
    // 100,000-credential file peaks at ~120 MB instead of ~390 MB with serde_yaml). The
    // files are the operator's own, so its anti-DoS budget is off.
    let mut options = serde_saphyr::Options::default();
    options.budget = None;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| ConfigError::from_saphyr(path, &e))
}

/// Reads, parses and validates the main config at `path` and every file it names.
/// `now` (unix seconds) judges expiry warnings. Returns every error found, or the snapshot.
pub fn load(path: &Path, now: i64) -> Result<Snapshot, ConfigErrors> {
    // Every file is read once, through `files`: what is parsed is what is hashed.
    let mut files = Gather::new();
    let main_text = files.read(path).map_err(|e| ConfigErrors(vec![ConfigError::new(path, None, e)]))?;
    let raw: raw::MainRaw = parse(path, &main_text).map_err(|e| ConfigErrors(vec![e]))?;
    let base = parent_dir(path);

    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut sink = validate::Sink::new(path);
    let settings = validate::settings(&raw, &base, &mut sink, &mut files);
    let routes = validate::routes(&raw.routes, &mut sink);
    let tokens = raw.tokens.as_ref().map(|t| validate::tokens(t, &base, &mut sink, &mut files));
    if routes.routes.is_empty() && raw.routes.is_empty() {
        warnings.push("no routes are configured: every request is denied".to_string());
    }
    errors.append(&mut sink.errors);

    let cred_path = validate::credentials_path(&raw, &base);
    let env = settings.as_ref().map_or(Environment::Sandbox, |s| s.environment);
    let database = settings.as_ref().and_then(|s| s.store.database_url());
    let mut generation = None;
    let credentials = if let Some(url) = database {
        // SPEC §10: the credentials live in PostgreSQL.
        match crate::store::postgres::credentials_for_load(url, env, now) {
            Ok((store, mut w, g)) => {
                warnings.append(&mut w);
                generation = Some(g);
                store
            }
            Err(mut e) => {
                errors.append(&mut e.0);
                CredentialStore::default()
            }
        }
    } else { match files.read(&cred_path) {
        Ok(text) => {
            match credentials_from_text(&cred_path, &text, env, now) {
                Ok((store, mut w)) => {
                    warnings.append(&mut w);
                    store
                }
                Err(mut e) => {
                    errors.append(&mut e.0);
                    CredentialStore::default()
                }
            }
        }
        Err(e) => {
            errors.push(ConfigError::new(&cred_path, None, e));
            CredentialStore::default()
        }
    } };
    let (files, mut content_hash) = files.finish();
    if let Some(g) = generation {
        // A change in the database is a change of config, as a changed file is.
        content_hash.push_str(&format!(":pg:{g}"));
    }
    match settings {
        Some(settings) if errors.is_empty() => Ok(Snapshot {
            settings,
            routes,
            credentials,
            tokens,
            warnings,
            files,
            content_hash,
            token_cache: Default::default(),
            metric_labels: Default::default(),
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Resolves the upstream's host name (the one side effect of a load that the proxy needs
/// before it serves: validation itself does no I/O). An error names the main config.
pub fn resolve(snap: &mut Snapshot) -> Result<(), ConfigErrors> {
    use std::net::ToSocketAddrs;
    if let UpstreamAddr::Name(host, port) = &snap.settings.upstream {
        let found = (host.as_str(), *port).to_socket_addrs().ok().and_then(|mut a| a.next());
        match found {
            Some(a) => snap.settings.upstream = UpstreamAddr::Resolved(a),
            None => {
                let file = snap.files.first().cloned().unwrap_or_default();
                let msg = format!("upstream {:?} does not resolve", snap.settings.upstream_text);
                return Err(ConfigErrors(vec![ConfigError { transient: true, ..ConfigError::new(&file, None, msg) }]));
            }
        }
    }
    Ok(())
}

/// The side effects a loaded snapshot needs before a server serves it, in order: the
/// upstream's name resolved, and the fetchers of the external issuers' `jwks_url`s
/// attached (their first fetch awaited up to `fetch_wait` in all).
pub fn prepare_to_serve(snap: &mut Snapshot, fetch_wait: std::time::Duration) -> Result<(), ConfigErrors> {
    resolve(snap)?;
    crate::token::remote::attach(snap, fetch_wait);
    Ok(())
}

/// Loads the config at `path` for serving at start: [`load`], then [`prepare_to_serve`].
pub fn load_for_serving(path: &Path, now: i64) -> Result<Snapshot, ConfigErrors> {
    let mut snap = load(path, now)?;
    prepare_to_serve(&mut snap, crate::token::remote::FIRST_FETCH_WAIT)?;
    Ok(snap)
}

/// Parses and validates the text of a credentials file exactly as [`load`] does, for
/// environment `env` at `now` (unix seconds); `path` names the file in errors. Returns the
/// store and its warnings, or every error found. `credentials` commands validate a file
/// with this before they write it, so a write never leaves a file the sidecar would refuse.
pub fn credentials_from_text(
    path: &Path,
    text: &str,
    env: Environment,
    now: i64,
) -> Result<(CredentialStore, Vec<String>), ConfigErrors> {
    // First the fast read: no places, a large file's long lists read on every core at once.
    // Only a valid file keeps its result; anything else is read again the placed way, whole
    // and in order, so every error is the one, and at the line and column, it always was.
    if let Some(Ok(valid)) = split::credentials_unplaced(text, |raw| credentials_from_raw(path, &raw, env, now)) {
        return Ok(valid);
    }
    credentials_placed(path, text, env, now)
}

/// [`credentials_from_text`] the placed way only: one parse of the whole text, each value
/// with its place, then validation.
fn credentials_placed(
    path: &Path,
    text: &str,
    env: Environment,
    now: i64,
) -> Result<(CredentialStore, Vec<String>), ConfigErrors> {
    let cred_raw = parse::<raw::CredentialsRaw>(path, text).map_err(|e| ConfigErrors(vec![e]))?;
    credentials_from_raw(path, &cred_raw, env, now)
}

/// Validates parsed credentials (from a database) exactly as [`credentials_from_text`]
/// does a file's.
pub fn credentials_from_raw(
    path: &Path,
    raw: &raw::CredentialsRaw,
    env: Environment,
    now: i64,
) -> Result<(CredentialStore, Vec<String>), ConfigErrors> {
    let mut warnings = Vec::new();
    let mut sink = validate::Sink::new(path);
    let store = validate::credentials(raw, env, now, &mut sink, &mut warnings);
    if sink.errors.is_empty() {
        Ok((store, warnings))
    } else {
        Err(ConfigErrors(sink.errors))
    }
}

/// Hands the heap's free pages back to the system (glibc's `malloc_trim`): call after a
/// load, on the thread that loaded. Parsing a large credentials file allocates and frees
/// hundreds of MB in small pieces between the long-lived snapshot's; glibc keeps those
/// pages resident, so a 100,000-credential sidecar would otherwise hold ~300 MB for a
/// ~40 MB snapshot.
///
/// `malloc_trim` hands back free pages inside each arena but not the free top of a
/// thread's arena, which only a thread using that arena can trim
/// ([`return_this_threads_heap`]): the threads that read a large file's pieces do so
/// before they end (`split`), and this does it for the calling thread's.
pub fn release_freed_memory() {
    return_this_threads_heap();
    trim();
}

/// Makes glibc trim the free top of the calling thread's arena: frees a block there below
/// the mmap threshold (so from the arena) and above glibc's 64 KiB consolidation threshold
/// (so that its free consolidates the arena and trims it, with
/// [`keep_freed_memory_returnable`]'s fixed threshold). Only a thread attached to an arena
/// can do this, and `malloc_trim` does not.
pub(crate) fn return_this_threads_heap() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(100 << 10)));
}

#[allow(unsafe_code)]
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it walks and trims glibc's own free lists,
    // under each arena's lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes glibc's trim and mmap thresholds at their defaults (128 KiB) instead of letting
/// them grow: call once, at start, before the first load. glibc raises both after a large
/// block is freed (up to 32 and 64 MiB), after which the freed heap of a thread (the
/// credentials parse runs on one thread per core) stays resident, ~30 MiB a thread, where
/// [`release_freed_memory`] cannot reach it. Large buffers then come from mmap and go back
/// when freed.
#[allow(unsafe_code)]
pub fn keep_freed_memory_returnable() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes glibc's tuning only.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Now, as unix seconds.
pub fn unix_now() -> i64 {
    unix_seconds(std::time::SystemTime::now())
}

/// `at` as unix seconds (0 before 1970).
pub fn unix_seconds(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with_upstream(upstream: &str) -> Result<Snapshot, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let main = format!(
            "listen: \"127.0.0.1:18080\"\nupstream: \"{upstream}\"\nadmin_listen: \"127.0.0.1:19901\"\n\
             environment: sandbox\ncredentials_file: credentials.yaml\nroutes: []\n"
        );
        std::fs::write(dir.path().join("portcullis.yaml"), main).unwrap();
        std::fs::write(dir.path().join("credentials.yaml"), "api_keys: []\n").unwrap();
        load(&dir.path().join("portcullis.yaml"), 0)
    }

    /// Validation does no DNS: a name is checked for form and resolved only by `resolve`.
    #[test]
    fn allows_an_upstream_name_unresolved_and_resolves_it_after() {
        let mut snap = load_with_upstream("no-such-host.invalid:8080").expect("no look-up in validation");
        assert_eq!(snap.settings.upstream, UpstreamAddr::Name("no-such-host.invalid".into(), 8080));
        let e = resolve(&mut snap).unwrap_err();
        assert!(e.to_string().contains("does not resolve"), "{e}");
        assert!(e.0[0].transient, "a failed look-up is retried at the next poll");
        let mut snap = load_with_upstream("localhost:8080").unwrap();
        resolve(&mut snap).expect("localhost resolves");
        assert_eq!(snap.settings.upstream.addr().map(|a| a.port()), Some(8080));
        let snap = load_with_upstream("127.0.0.1:9").unwrap();
        assert_eq!(snap.settings.upstream, UpstreamAddr::Resolved("127.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn denies_an_upstream_that_is_not_a_host_and_port() {
        for bad in ["no port", "host:", "host:0", "host:99999", "-bad-.example:80", "a b:80", "http://x:80"] {
            let e = load_with_upstream(bad).unwrap_err();
            assert!(e.to_string().contains("is not an ip:port or a host:port"), "{bad}: {e}");
        }
    }
}
