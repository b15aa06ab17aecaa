//! A bounded cache of verified tokens, keyed by a hash of the token. It lives in the
//! snapshot, so a reload drops it; an entry is never used past the token's `exp`.
use dashmap::DashMap;

use crate::pipeline::Identity;

/// Most tokens held at once.
pub const CAPACITY: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Entry {
    pub identity: Identity,
    /// Valid while `now < valid_until` (token `exp` + leeway, capped by the credential's expiry).
    pub valid_until: i64,
    /// Not before this (token `nbf` − leeway).
    pub valid_from: i64,
}

#[derive(Debug, Default)]
pub struct TokenCache {
    map: DashMap<[u8; 32], Entry>,
}

impl TokenCache {
    /// The cached identity for this token hash, if present and valid at `now`.
    pub fn get(&self, key: &[u8; 32], now: i64) -> Option<Identity> {
        let e = self.map.get(key)?;
        if now >= e.valid_from && now < e.valid_until {
            Some(e.identity.clone())
        } else {
            None
        }
    }

    /// Stores a verified token; when full, drops expired entries, then everything.
    pub fn insert(&self, key: [u8; 32], entry: Entry, now: i64) {
        if self.map.len() >= CAPACITY {
            self.map.retain(|_, e| now < e.valid_until);
            if self.map.len() >= CAPACITY {
                self.map.clear();
            }
        }
        self.map.insert(key, entry);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
