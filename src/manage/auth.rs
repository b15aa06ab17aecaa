//! Who a management request is from (SPEC §9 "Who"): a credential in the headers,
//! exactly as on the proxy (SPEC §5: an API key, this sidecar's token or an external
//! issuer's), or the console's session cookie made by signing in with one. The
//! credential's allowlist applies either way, and a session re-reads its credential
//! from the snapshot in force at every request, so a disabled, expired or deleted
//! credential signs its sessions out at once.
use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::policy::Actor;
use crate::config::{CredentialKind, Snapshot};
use crate::pipeline::authn::{self, Identity};
use crate::pipeline::sanity::{check_headers, Presented};
use crate::rejection::{Reason, Rejection};

/// The session cookie's name.
pub const COOKIE: &str = "portcullis_session";
/// The header a cookie-authenticated write must carry (the session's token).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after sign-in, whatever happens.
const SESSION_LIFETIME: i64 = 8 * 3600;
/// …and after this long without a request.
const SESSION_IDLE: i64 = 3600;
/// At most this many sessions live at once (the oldest are dropped first).
const MAX_SESSIONS: usize = 10_000;

/// One signed-in console.
#[derive(Debug, Clone)]
struct Session {
    /// The credential signed in with (a file credential, re-read at every request).
    credential: Arc<str>,
    /// An external issuer's identity is not in the file: kept as verified, until `until`.
    external: Option<Identity>,
    csrf: String,
    created: i64,
    seen: i64,
    until: i64,
}

/// How the request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Headers,
    /// The session cookie: writes need the CSRF header.
    Cookie,
}

/// The sessions of this process (a replica's own; SPEC §10's console runs in one
/// Deployment). Keyed by the SHA-256 of the cookie value: the value itself is kept nowhere.
#[derive(Default)]
pub struct Sessions {
    map: DashMap<[u8; 32], Session>,
}

fn token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Sessions {
    /// A new session for `id`; returns (cookie value, CSRF token).
    pub fn open(&self, id: &Identity, now: i64, until: Option<i64>) -> (String, String) {
        if self.map.len() >= MAX_SESSIONS {
            self.map.retain(|_, s| s.until > now && now - s.seen < SESSION_IDLE);
            if self.map.len() >= MAX_SESSIONS {
                if let Some(oldest) = self.map.iter().min_by_key(|e| e.created).map(|e| *e.key()) {
                    self.map.remove(&oldest);
                }
            }
        }
        let (value, csrf) = (token(), token());
        let external = (id.kind == CredentialKind::External).then(|| id.clone());
        let until = until.map_or(now + SESSION_LIFETIME, |u| u.min(now + SESSION_LIFETIME));
        self.map.insert(
            key(&value),
            Session { credential: id.credential.clone(), external, csrf: csrf.clone(), created: now, seen: now, until },
        );
        (value, csrf)
    }

    pub fn close(&self, cookie: &str) {
        self.map.remove(&key(cookie));
    }

    /// The session's credential name and CSRF token, when it is live at `now`.
    fn live(&self, cookie: &str, now: i64) -> Option<Session> {
        let k = key(cookie);
        let mut s = self.map.get_mut(&k)?;
        if now >= s.until || now - s.seen >= SESSION_IDLE {
            drop(s);
            self.map.remove(&k);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }

    /// The CSRF token of a live session.
    pub fn csrf(&self, cookie: &str, now: i64) -> Option<String> {
        self.live(cookie, now).map(|s| s.csrf)
    }
}

/// Authenticates a request at `now` from `client_ip`: headers first, else the cookie.
/// `Ok(None)`: nothing presented. Writes by cookie must pass [`csrf_ok`] too.
pub fn authenticate(
    snap: &Snapshot,
    sessions: &Sessions,
    headers: &HeaderMap,
    client_ip: IpAddr,
    now: i64,
) -> Result<Option<(Identity, Via)>, Rejection> {
    let presented = check_headers(headers)?;
    let (id, via) = match presented {
        Presented::None => match cookie(headers, COOKIE) {
            None => return Ok(None),
            Some(c) => {
                let s = sessions
                    .live(c, now)
                    .ok_or_else(|| Rejection::new(Reason::InvalidToken, "the session has ended: sign in again"))?;
                let id = match s.external {
                    Some(id) => id,
                    None => file_identity(snap, &s.credential, now)?,
                };
                (id, Via::Cookie)
            }
        },
        p => (authn::authenticate(snap, p, now)?, Via::Headers),
    };
    if !id.allows_ip(client_ip) {
        return Err(Rejection::new(Reason::IpNotAllowed, format!("{client_ip} is not in the credential's allowed_ips")));
    }
    Ok(Some((id, via)))
}

/// The identity of file credential `name` as the snapshot in force has it, refused when it
/// is gone, disabled or expired.
pub fn file_identity(snap: &Snapshot, name: &str, now: i64) -> Result<Identity, Rejection> {
    let gone = || Rejection::new(Reason::InvalidToken, "the credential of this session no longer works: sign in again");
    let c = snap.credentials.find(name).ok_or_else(gone)?;
    if c.disabled || c.user_missing || c.is_expired(now) {
        return Err(gone());
    }
    Ok(Identity {
        credential: c.id.clone(),
        kind: c.kind,
        user: c.user.clone(),
        grants: c.grants.clone(),
        allowed_ips: c.allowed_ips.clone(),
    })
}

/// Whether a cookie-authenticated write carries the session's CSRF token.
pub fn csrf_ok(sessions: &Sessions, headers: &HeaderMap, now: i64) -> bool {
    let Some(c) = cookie(headers, COOKIE) else {
        return false;
    };
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    sessions
        .csrf(c, now)
        .is_some_and(|t| !sent.is_empty() && subtle::ConstantTimeEq::ct_eq(t.as_bytes(), sent.as_bytes()).into())
}

impl From<&Identity> for Actor {
    fn from(id: &Identity) -> Actor {
        Actor { credential: id.credential.clone(), kind: id.kind, user: id.user.clone(), grants: id.grants.clone() }
    }
}

/// The `Set-Cookie` value for a session (`Secure` when the listener speaks TLS).
pub fn set_cookie(value: &str, tls: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_LIFETIME}{}",
        if tls { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(tls: bool) -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", if tls { "; Secure" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(kind: CredentialKind) -> Identity {
        Identity { credential: Arc::from("k"), kind, user: None, grants: Arc::from(vec![]), allowed_ips: None }
    }

    #[test]
    fn allows_a_live_session_and_its_csrf_token() {
        let s = Sessions::default();
        let (cookie_value, csrf) = s.open(&identity(CredentialKind::ApiKey), 100, None);
        assert_eq!(s.csrf(&cookie_value, 200).as_deref(), Some(csrf.as_str()));
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, format!("a=b; {COOKIE}={cookie_value}").parse().unwrap());
        h.insert(CSRF_HEADER, csrf.parse().unwrap());
        assert!(csrf_ok(&s, &h, 200));
        assert!(!s.map.iter().any(|e| hex::encode(e.key()) == cookie_value), "only a hash of the cookie is kept");
    }

    #[test]
    fn denies_a_wrong_csrf_token_an_idle_or_old_session_and_a_closed_one() {
        let s = Sessions::default();
        let (c, _) = s.open(&identity(CredentialKind::ApiKey), 100, None);
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, format!("{COOKIE}={c}").parse().unwrap());
        assert!(!csrf_ok(&s, &h, 101), "no header");
        h.insert(CSRF_HEADER, "forged".parse().unwrap());
        assert!(!csrf_ok(&s, &h, 101));
        assert!(s.csrf(&c, 100 + SESSION_IDLE + 1).is_none(), "idle");
        let (c2, _) = s.open(&identity(CredentialKind::ApiKey), 0, Some(50));
        assert!(s.csrf(&c2, 50).is_none(), "a token's expiry ends its session");
        let (c3, _) = s.open(&identity(CredentialKind::ApiKey), 0, None);
        s.close(&c3);
        assert!(s.csrf(&c3, 1).is_none());
    }

    #[test]
    fn cookies_are_http_only_and_same_site_strict() {
        let c = set_cookie("v", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie("v", false).contains("Secure"));
    }
}
