//! Keys of an external issuer fetched from its `jwks_url`: fetched in the background,
//! refreshed every [`REFRESH_INTERVAL`], refetched on an unknown `kid` at most once per
//! [`MIN_REFETCH`], and the last good set kept when a fetch fails. One fetcher per URL
//! for the whole process, so a config reload does not refetch.
use std::collections::HashMap;
use std::io::Read;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::keys::{parse_jwks, VerifyKey};

pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: u64 = 1024 * 1024;

pub struct RemoteJwks {
    pub url: String,
    keys: ArcSwap<Vec<VerifyKey>>,
    last_request: Mutex<Option<Instant>>,
    wake: SyncSender<()>,
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

fn registry() -> &'static Mutex<HashMap<String, Arc<RemoteJwks>>> {
    static REG: OnceLock<Mutex<HashMap<String, Arc<RemoteJwks>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

/// The fetcher for `url`, started (with a first fetch awaited up to 2 s) on first use.
pub fn register(url: &str) -> Arc<RemoteJwks> {
    let Ok(mut reg) = registry().lock() else {
        // A poisoned registry only means another thread panicked mid-insert; start afresh.
        return start(url).0;
    };
    if let Some(r) = reg.get(url) {
        return r.clone();
    }
    let (r, first) = start(url);
    reg.insert(url.to_string(), r.clone());
    drop(reg);
    let _ = first.recv_timeout(Duration::from_secs(2));
    r
}

fn start(url: &str) -> (Arc<RemoteJwks>, Receiver<()>) {
    let (wake, woken) = mpsc::sync_channel(1);
    let (first_tx, first_rx) = mpsc::sync_channel(1);
    let r = Arc::new(RemoteJwks {
        url: url.to_string(),
        keys: ArcSwap::from_pointee(Vec::new()),
        last_request: Mutex::new(None),
        wake,
    });
    let weak = Arc::downgrade(&r);
    let url = url.to_string();
    let spawned = std::thread::Builder::new().name("jwks-fetch".into()).spawn(move || {
        let mut first = Some(first_tx);
        loop {
            let Some(r) = weak.upgrade() else { return };
            match fetch(&url) {
                Ok(keys) => {
                    tracing::info!(url = %url, keys = keys.len(), "fetched JWKS");
                    r.keys.store(Arc::new(keys));
                }
                Err(e) => tracing::warn!(url = %url, error = %e, "JWKS fetch failed; keeping the last good keys"),
            }
            drop(r);
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            match woken.recv_timeout(REFRESH_INTERVAL) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the JWKS fetcher");
    }
    (r, first_rx)
}

fn fetch(url: &str) -> Result<Vec<VerifyKey>, String> {
    let resp = ureq::get(url)
        .timeout(Duration::from_secs(5))
        .call()
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    resp.into_reader()
        .take(MAX_JWKS_BYTES)
        .read_to_string(&mut body)
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
