//! Authentication (SPEC §5 step 4): who is calling, or a 401.
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::sanity::Presented;
use crate::config::{CredentialKind, Snapshot};
use crate::permission::Permission;
use crate::rejection::{Reason, Rejection};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Credential id or name (or, for external tokens, the token's subject).
    pub credential: Arc<str>,
    pub kind: CredentialKind,
    pub user: Option<Arc<str>>,
    pub grants: Arc<[Permission]>,
    /// `None` = any address.
    pub allowed_ips: Option<Arc<[ipnet::IpNet]>>,
}

impl Identity {
    pub fn allows_ip(&self, ip: std::net::IpAddr) -> bool {
        self.allowed_ips
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
    }
}

/// Authenticates the presented credential against `snap` at `now` (unix seconds).
pub fn authenticate(snap: &Snapshot, presented: Presented<'_>, now: i64) -> Result<Identity, Rejection> {
    match presented {
        Presented::None => Err(Rejection::new(
            Reason::MissingCredential,
            "send an API key in x-api-key or a token in Authorization: Bearer",
        )),
        Presented::BadApiKey => Err(Rejection::new(Reason::InvalidApiKey, "the API key is not valid")),
        Presented::BadAuthorization => Err(Rejection::new(
            Reason::InvalidToken,
            "the Authorization header must be Bearer <token>",
        )),
        Presented::ApiKey(key) => api_key(snap, key, now),
        Presented::Bearer(token) => crate::token::authenticate_bearer(snap, token, now),
    }
}

/// Looks an API key up by the SHA-256 of the whole key string: O(1) in the number of keys.
pub fn api_key(snap: &Snapshot, key: &str, now: i64) -> Result<Identity, Rejection> {
    let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let cred = match snap.credentials.by_key_hash.get(&hash) {
        Some(cred) => cred,
        // A key replaced by `credentials rotate --overlap` works until its `until`.
        None => match snap.credentials.previous_key_hashes.get(&hash) {
            Some((cred, until)) if now < *until => cred,
            Some(_) => return Err(Rejection::new(Reason::InvalidApiKey, "the API key was rotated and no longer works")),
            None => return Err(Rejection::new(Reason::InvalidApiKey, "the API key is not known")),
        },
    };
    if cred.disabled {
        return Err(Rejection::new(Reason::InvalidApiKey, "the API key is disabled"));
    }
    if cred.is_expired(now) {
        return Err(Rejection::new(Reason::InvalidApiKey, "the API key has expired"));
    }
    if cred.user_missing {
        return Err(Rejection::new(
            Reason::InvalidApiKey,
            "the API key's user no longer exists",
        ));
    }
    Ok(Identity {
        credential: cred.id.clone(),
        kind: CredentialKind::ApiKey,
        user: cred.user.clone(),
        grants: cred.grants.clone(),
        allowed_ips: cred.allowed_ips.clone(),
    })
}
