//! OAuth 2.0 access tokens: the token endpoint ([`endpoint`]), the published keys, and
//! Bearer verification ([`authenticate_bearer`]) for our own and external issuers.
pub mod cache;
pub mod claims;
pub mod endpoint;
pub mod guard;
pub mod keys;
pub mod remote;
pub mod secret;
pub mod verifier;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{CredentialKind, Snapshot, TokenSettings};
use crate::permission::Permission;
use crate::pipeline::Identity;
use crate::rejection::{Reason, Rejection};
use keys::VerifyKey;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An identity provider whose tokens we accept (`tokens.external_issuers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIssuer {
    pub issuer: String,
    pub audience: String,
    pub permissions_claim: String,
    /// Where this issuer's tokens may come from; `None` = any address.
    pub allowed_ips: Option<Arc<[ipnet::IpNet]>>,
    /// Keys from `jwks_file`, read at load.
    pub file_keys: Vec<VerifyKey>,
    /// `jwks_url`, checked (https, or a loopback host) but not fetched by validation.
    pub jwks_url: Option<String>,
    /// Its keys, fetched in the background; set by [`remote::attach`] once a load has
    /// succeeded in the server (`None` in `check` and `explain`).
    pub remote: Option<Arc<remote::RemoteJwks>>,
}

fn invalid(d: &str) -> Rejection {
    Rejection::new(Reason::InvalidToken, d)
}

/// Verifies a Bearer token and returns the identity it acts as. Verified tokens are cached
/// (per snapshot, never past `exp`), so the second use costs a hash and a map lookup.
pub fn authenticate_bearer(snap: &Snapshot, token: &str, now: i64) -> Result<Identity, Rejection> {
    let Some(ts) = &snap.tokens else {
        return Err(invalid("Bearer tokens are not accepted here"));
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid("the token is too large"));
    }
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if let Some(identity) = snap.token_cache.get(&key, now) {
        return Ok(identity);
    }
    let (identity, valid_from, valid_until) = verify_uncached(snap, ts, token, now)?;
    snap.token_cache.insert(
        key,
        cache::Entry { identity: identity.clone(), valid_from, valid_until },
        now,
    );
    Ok(identity)
}

/// Full verification without the cache (for benches and tests of the cold path).
pub fn authenticate_bearer_uncached(snap: &Snapshot, token: &str, now: i64) -> Result<Identity, Rejection> {
    let Some(ts) = &snap.tokens else {
        return Err(invalid("Bearer tokens are not accepted here"));
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid("the token is too large"));
    }
    verify_uncached(snap, ts, token, now).map(|(identity, _, _)| identity)
}

/// Splits a compact JWS and decodes its payload without trusting it (to pick the issuer).
fn peek_payload(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(p).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Full verification: header, key choice (by issuer and `kid`; the algorithm is the key's),
/// signature, claims, then the identity.
fn verify_uncached(
    snap: &Snapshot,
    ts: &TokenSettings,
    token: &str,
    now: i64,
) -> Result<(Identity, i64, i64), Rejection> {
    let header = keys::decode_header(token).ok_or_else(|| invalid("the token is malformed"))?;
    if header.names_own_key {
        return Err(invalid("the token names its own key, which is never trusted"));
    }
    // RFC 7515 §4.1.11: no extension is understood here, so a `crit` header is refused.
    if header.crit {
        return Err(invalid("the token has a crit header, which is not supported"));
    }
    let unverified = peek_payload(token).ok_or_else(|| invalid("the token is malformed"))?;
    let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
    let leeway = ts.leeway as i64;

    let own = ts.signer.is_some() && iss == ts.issuer;
    let external = if own { None } else { ts.external.iter().find(|e| e.issuer == iss) };
    if !own && external.is_none() {
        return Err(invalid("the token's issuer is not accepted"));
    }
    if own {
        let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
        if !matches!(typ.as_deref(), Some("at+jwt") | Some("application/at+jwt")) {
            return Err(invalid("the token is not an access token (typ at+jwt)"));
        }
    }
    let remote_keys = external.and_then(|e| e.remote.as_ref()).map(|r| r.keys());
    let candidates: Vec<&VerifyKey> = match (own, external) {
        (true, _) => ts.signer.iter().map(|s| &s.verify).collect(),
        (false, Some(e)) => e.file_keys.iter().chain(remote_keys.iter().flat_map(|k| k.iter())).collect(),
        _ => Vec::new(),
    };
    let chosen: Vec<&VerifyKey> = match &header.kid {
        Some(kid) => candidates.into_iter().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
        None => candidates.into_iter().filter(|k| Some(k.alg) == header.alg).collect(),
    };
    if chosen.is_empty() {
        if let Some(r) = external.and_then(|e| e.remote.as_ref()) {
            r.request_refresh();
        }
        return Err(invalid("the token's signing key is not known"));
    }
    // The payload was decoded once above; only the signature is left to check, with the
    // key's own algorithm (equal to the header's, or the key is skipped).
    let (message, signature) = token.rsplit_once('.').ok_or_else(|| invalid("the token is malformed"))?;
    let verified = chosen.iter().any(|k| {
        Some(k.alg) == header.alg && k.verify_b64(message.as_bytes(), signature)
    });
    let claims = verified.then_some(unverified);
    let claims = claims.ok_or_else(|| invalid("the token's signature is not valid"))?;
    let (want_iss, want_aud) = match external {
        Some(e) => (e.issuer.as_str(), e.audience.as_str()),
        None => (ts.issuer.as_str(), ts.audience.as_str()),
    };
    claims::validate(&claims, want_iss, want_aud, now, leeway).map_err(invalid)?;
    let exp = claims::exp(&claims).unwrap_or(now);
    let valid_from = claims::nbf(&claims).map_or(i64::MIN, |n| n.saturating_sub(leeway));
    let mut valid_until = exp.saturating_add(leeway);

    let identity = match external {
        Some(e) => {
            let grants: Vec<Permission> = claims::permission_strings(claims.get(&e.permissions_claim))
                .into_iter()
                .filter_map(|p| Permission::parse(p).ok())
                .collect();
            let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("external");
            // The subject is forwarded as x-auth-credential: it must be a valid header value.
            if sub.is_empty() || http::HeaderValue::from_str(sub).is_err() {
                return Err(invalid("the token's subject cannot be forwarded"));
            }
            Identity {
                credential: Arc::from(sub),
                kind: CredentialKind::External,
                user: None,
                grants: Arc::from(grants),
                allowed_ips: e.allowed_ips.clone(),
            }
        }
        None => {
            let presented = claims.get("client_id").and_then(Value::as_str).unwrap_or("");
            let id = presented.strip_prefix(ts.client_id_prefix.as_str()).unwrap_or("");
            let client = snap
                .credentials
                .clients
                .get(id)
                .ok_or_else(|| invalid("the token's client no longer exists"))?;
            if client.disabled && ts.revoke_on_disable {
                return Err(invalid("the token's client is disabled"));
            }
            if client.is_expired(now) {
                return Err(invalid("the token's client has expired"));
            }
            valid_until = valid_until.min(client.expires_at);
            let grants: Vec<Permission> = claims::permission_strings(claims.get("scope"))
                .into_iter()
                .filter_map(|p| Permission::parse(p).ok())
                .filter(|p| client.grants.iter().any(|g| p.is_within(g)))
                .collect();
            Identity {
                credential: client.id.clone(),
                kind: CredentialKind::Client,
                user: None,
                grants: Arc::from(grants),
                allowed_ips: client.allowed_ips.clone(),
            }
        }
    };
    Ok((identity, valid_from, valid_until))
}

#[cfg(test)]
mod tests;
