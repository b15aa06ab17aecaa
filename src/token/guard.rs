//! Abuse bounds of the token endpoint (SPEC §6): secret verification (argon2, ~19 MiB and
//! tens of milliseconds each by design) runs at most `max_concurrent_verifications` at
//! once, and repeated failures are throttled per client id and per source address.
//!
//! Both bounds are process-wide: a reload that changes the limits takes effect for the
//! next request, and a reload does not forgive an attacker's failures.
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Semaphore;

/// How long a request waits for a verification slot before it gets 503.
pub const SLOT_WAIT: Duration = Duration::from_millis(250);
/// The throttling window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most throttle entries kept; past this, expired entries are dropped, and if none has
/// expired the table is cleared (an attacker with this many identities learns nothing,
/// and the memory stays bounded).
const MAX_ENTRIES: usize = 100_000;

/// What a key (client id or address) has failed within its window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Throttle keys: client ids are kept as given (bounded in size by the body limit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(Box<str>),
    Addr(IpAddr),
}

/// The process-wide guard.
pub struct Guard {
    slots: Arc<Semaphore>,
    /// Permits currently configured (the semaphore grows or shrinks to match).
    configured: AtomicUsize,
    failures: DashMap<Key, Window>,
}

/// A held verification slot; dropping it frees the slot.
pub struct Slot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Guard {
    fn new() -> Self {
        Guard { slots: Arc::new(Semaphore::new(0)), configured: AtomicUsize::new(0), failures: DashMap::new() }
    }

    /// Brings the number of slots to `n` (from the current snapshot's settings).
    fn configure(&self, n: usize) {
        let n = n.max(1);
        let cur = self.configured.load(Ordering::Acquire);
        if cur == n {
            return;
        }
        if self.configured.compare_exchange(cur, n, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return; // another request is resizing
        }
        if n > cur {
            self.slots.add_permits(n - cur);
        } else {
            self.slots.forget_permits(cur - n);
        }
    }

    /// Waits up to [`SLOT_WAIT`] for a verification slot; `None` = answer 503.
    pub async fn slot(&self, max_concurrent: usize) -> Option<Slot> {
        self.configure(max_concurrent);
        match tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Some(Slot(p)),
            _ => None,
        }
    }

    fn over(&self, key: &Key, limit: u32, now: Instant) -> Option<Duration> {
        let w = self.failures.get(key)?;
        let age = now.saturating_duration_since(w.start);
        if age >= WINDOW || w.failures < limit {
            return None;
        }
        Some(WINDOW - age)
    }

    /// `Some(retry_after)` when the client id or the address has used up its failures for
    /// this window: answer 429 without verifying anything.
    pub fn throttled(&self, client_id: &str, addr: IpAddr, limit: u32) -> Option<Duration> {
        let now = Instant::now();
        let a = self.over(&Key::Client(client_id.into()), limit, now);
        let b = self.over(&Key::Addr(addr), limit, now);
        match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        }
    }

    /// Records one failed client authentication for the id and the address.
    pub fn failed(&self, client_id: &str, addr: IpAddr) {
        let now = Instant::now();
        if self.failures.len() >= MAX_ENTRIES {
            self.failures.retain(|_, w| now.saturating_duration_since(w.start) < WINDOW);
            if self.failures.len() >= MAX_ENTRIES {
                self.failures.clear();
            }
        }
        for key in [Key::Client(client_id.into()), Key::Addr(addr)] {
            let mut e = self.failures.entry(key).or_insert(Window { start: now, failures: 0 });
            if now.saturating_duration_since(e.start) >= WINDOW {
                *e = Window { start: now, failures: 0 };
            }
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// Forgets the failures of a client id after a success (the address keeps its count:
    /// one good secret must not launder an address's guesses at other clients).
    pub fn succeeded(&self, client_id: &str) {
        self.failures.remove(&Key::Client(client_id.into()));
    }
}

/// The guard of this process.
pub fn guard() -> &'static Guard {
    static G: OnceLock<Guard> = OnceLock::new();
    G.get_or_init(Guard::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_failures_up_to_the_limit_then_throttles() {
        let g = Guard::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(g.throttled("c", ip, 3).is_none());
            g.failed("c", ip);
        }
        let wait = g.throttled("c", ip, 3).expect("throttled after 3 failures");
        assert!(wait <= WINDOW && wait > Duration::from_secs(50));
    }

    #[test]
    fn denies_by_address_whatever_the_client_id() {
        let g = Guard::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for n in 0..3 {
            g.failed(&format!("guess-{n}"), ip);
        }
        assert!(g.throttled("never-seen", ip, 3).is_some());
        assert!(g.throttled("never-seen", "192.0.2.2".parse().unwrap(), 3).is_none());
    }

    #[test]
    fn denies_by_client_id_from_any_address() {
        let g = Guard::new();
        for n in 0..3u8 {
            g.failed("victim", IpAddr::from([192, 0, 2, n]));
        }
        assert!(g.throttled("victim", "198.51.100.9".parse().unwrap(), 3).is_some());
        g.succeeded("victim");
        assert!(g.throttled("victim", "198.51.100.9".parse().unwrap(), 3).is_none());
    }

    #[tokio::test]
    async fn slots_are_bounded_and_resizable() {
        let g = Guard::new();
        let a = g.slot(1).await.expect("first slot");
        assert!(g.slot(1).await.is_none(), "second waits then gives up");
        drop(a);
        let _a = g.slot(2).await.expect("slot after release");
        let _b = g.slot(2).await.expect("grown to two");
        assert!(g.slot(2).await.is_none());
    }
}
