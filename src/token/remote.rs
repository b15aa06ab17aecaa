//! Keys of an external issuer fetched from its `jwks_url`: fetched in the background,
//! refreshed every [`REFRESH_INTERVAL`], refetched on an unknown `kid` at most once per
//! [`MIN_REFETCH`], and the last good set kept when a fetch fails.
//!
//! Validation never touches the network: a loaded config names its URLs, and only the
//! server starts fetchers for them ([`attach`]), after the load succeeded. A fetcher lives
//! as long as a snapshot holds it: the registry keeps only a weak reference (so a reload
//! that keeps an issuer reuses its fetcher and does not refetch), and when the last
//! snapshot naming the URL is dropped, the fetcher's thread stops.
use std::collections::HashMap;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::keys::{parse_jwks, VerifyKey};

pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long a start waits in all for the first fetch of its fetchers.
pub const FIRST_FETCH_WAIT: Duration = Duration::from_secs(2);
/// How long a reload waits in all for the first fetch of fetchers it adds.
pub const RELOAD_FETCH_WAIT: Duration = Duration::from_millis(300);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: u64 = 1024 * 1024;

pub struct RemoteJwks {
    pub url: String,
    keys: ArcSwap<Vec<VerifyKey>>,
    last_request: Mutex<Option<Instant>>,
    /// Dropped with this value, which ends the fetcher's thread.
    wake: SyncSender<()>,
    /// Set once the first fetch has finished (well or not).
    first_done: (Mutex<bool>, Condvar),
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks").field("url", &self.url).field("keys", &self.keys.load().len()).finish()
    }
}

/// Fetchers compare by URL (one per URL per process).
impl PartialEq for RemoteJwks {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}
impl Eq for RemoteJwks {}

impl RemoteJwks {
    /// The current key set (possibly empty before the first successful fetch).
    pub fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.load_full()
    }

    /// Asks the fetcher to refetch now, unless it was asked within [`MIN_REFETCH`].
    pub fn request_refresh(&self) {
        let Ok(mut last) = self.last_request.lock() else { return };
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.wake.try_send(());
    }
}

fn registry() -> &'static Mutex<HashMap<String, Weak<RemoteJwks>>> {
    static REG: OnceLock<Mutex<HashMap<String, Weak<RemoteJwks>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

/// The live fetcher for `url`, or a new one (started, not awaited). Entries whose fetcher
/// is gone are pruned here.
pub fn register(url: &str) -> Arc<RemoteJwks> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(r) = reg.get(url).and_then(Weak::upgrade) {
        return r;
    }
    let r = start(url);
    reg.insert(url.to_string(), Arc::downgrade(&r));
    r
}

/// How many fetchers are running (for tests and the log).
pub fn live_fetchers() -> usize {
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.values().filter(|w| w.strong_count() > 0).count()
}

/// Gives each external issuer of `snap` with a `jwks_url` its fetcher, and waits up to
/// `wait` in all for the first fetch of each, so the first tokens after a start or a
/// reload find their keys. Called by the server after a load succeeded, never by
/// validation, `check` or `explain`.
pub fn attach(snap: &mut crate::config::Snapshot, wait: Duration) {
    let Some(tokens) = snap.tokens.as_mut() else { return };
    let deadline = Instant::now() + wait;
    for ext in &mut tokens.external {
        if let Some(url) = &ext.jwks_url {
            ext.remote = Some(register(url));
        }
    }
    for r in tokens.external.iter().filter_map(|e| e.remote.as_ref()) {
        r.wait_first(deadline);
    }
}

impl RemoteJwks {
    fn wait_first(&self, deadline: Instant) {
        let (lock, cv) = &self.first_done;
        let mut done = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            done = cv.wait_timeout(done, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn mark_first_done(&self) {
        let (lock, cv) = &self.first_done;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

fn start(url: &str) -> Arc<RemoteJwks> {
    let (wake, woken) = mpsc::sync_channel(1);
    let r = Arc::new(RemoteJwks {
        url: url.to_string(),
        keys: ArcSwap::from_pointee(Vec::new()),
        last_request: Mutex::new(None),
        wake,
        first_done: (Mutex::new(false), Condvar::new()),
    });
    let weak = Arc::downgrade(&r);
    let url = url.to_string();
    let spawned = std::thread::Builder::new().name("jwks-fetch".into()).spawn(move || loop {
        // Only a weak reference between fetches: the snapshots own the fetcher.
        let Some(r) = weak.upgrade() else { break };
        match fetch(&url) {
            Ok(keys) => {
                tracing::info!(url = %url, keys = keys.len(), "fetched JWKS");
                r.keys.store(Arc::new(keys));
            }
            Err(e) => tracing::warn!(url = %url, error = %e, "JWKS fetch failed; keeping the last good keys"),
        }
        r.mark_first_done();
        drop(r);
        match woken.recv_timeout(REFRESH_INTERVAL) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                tracing::info!(url = %url, "JWKS fetcher stopped: no config names this URL any more");
                break;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the JWKS fetcher");
    }
    r
}

fn fetch(url: &str) -> Result<Vec<VerifyKey>, String> {
    let resp = ureq::get(url)
        .config()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .call()
        .map_err(|e| e.to_string())?;
    // A larger body is an error, not a truncated document.
    let body = resp
        .into_body()
        .with_config()
        .limit(MAX_JWKS_BYTES)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let (keys, skipped) = parse_jwks(&body)?;
    for s in skipped {
        tracing::warn!(url = %url, "JWKS: skipped {s}");
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback JWKS server (one Ed25519 key) counting the requests it answers.
    fn jwks_server() -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let body = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 2048];
                let _ = std::io::Read::read(&mut s, &mut buf);
                h.fetch_add(1, Ordering::SeqCst);
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        });
        (url, hits)
    }

    #[test]
    fn a_fetcher_lives_as_long_as_someone_holds_it() {
        let (url, hits) = jwks_server();
        let a = register(&url);
        a.wait_first(Instant::now() + Duration::from_secs(5));
        assert_eq!(a.keys().len(), 1);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // A second holder (a reload that keeps the issuer) shares it: no refetch.
        let b = register(&url);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Once nobody holds it, it is retired; the next registration starts afresh.
        // Gone once dropped (the fetcher's own thread may still be between its fetch and
        // letting go, so allow it a moment).
        let gone = |w: Weak<RemoteJwks>| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while w.strong_count() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            w.strong_count() == 0
        };
        let weak_a = Arc::downgrade(&a);
        drop((a, b));
        assert!(gone(weak_a), "the registry holds no strong reference");
        let c = register(&url);
        c.wait_first(Instant::now() + Duration::from_secs(5));
        assert_eq!(hits.load(Ordering::SeqCst), 2, "a retired fetcher is not reused");
        let weak = Arc::downgrade(&c);
        drop(c);
        assert!(gone(weak));
    }
}
