//! The token endpoint (RFC 6749 §4.4 client credentials), the JWKS and the RFC 8414
//! metadata, answered by the sidecar itself. Pure functions: request parts in, [`Reply`] out.
use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::json;

use super::keys::SigningKey;
use crate::config::{Credential, SecretHash, Snapshot, TokenSettings};
use crate::permission::Permission;

/// Largest token request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// What the sidecar answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Token,
    Jwks,
    Metadata,
}

/// Whether `method` + `path` is one of the sidecar's own endpoints (only when a signing
/// key is configured). Non-POST requests to the token path are answered too (405).
pub fn which(snap: &Snapshot, method: &Method, path: &[u8]) -> Option<Which> {
    let ts = snap.tokens.as_ref().filter(|t| t.signer.is_some())?;
    let path = &path[..path.iter().position(|b| *b == b'?').unwrap_or(path.len())];
    if path == ts.endpoint.as_bytes() {
        Some(Which::Token)
    } else if method == Method::GET && path == JWKS_PATH.as_bytes() {
        Some(Which::Jwks)
    } else if method == Method::GET && path == METADATA_PATH.as_bytes() {
        Some(Which::Metadata)
    } else {
        None
    }
}

/// The OAuth 2.0 error codes (RFC 6749 §5.2), plus `server_error`, RFC 8628's `slow_down`
/// (throttled) and `temporarily_unavailable` (busy). Each has one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    ServerError,
    SlowDown,
    TemporarilyUnavailable,
}

impl OAuthCode {
    pub const ALL: [OAuthCode; 9] = [
        OAuthCode::InvalidRequest,
        OAuthCode::InvalidClient,
        OAuthCode::InvalidGrant,
        OAuthCode::UnauthorizedClient,
        OAuthCode::UnsupportedGrantType,
        OAuthCode::InvalidScope,
        OAuthCode::ServerError,
        OAuthCode::SlowDown,
        OAuthCode::TemporarilyUnavailable,
    ];

    /// The code as the error body and the metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidClient => "invalid_client",
            OAuthCode::InvalidGrant => "invalid_grant",
            OAuthCode::UnauthorizedClient => "unauthorized_client",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::InvalidScope => "invalid_scope",
            OAuthCode::ServerError => "server_error",
            OAuthCode::SlowDown => "slow_down",
            OAuthCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            OAuthCode::InvalidClient => 401,
            OAuthCode::SlowDown => 429,
            OAuthCode::ServerError => 500,
            OAuthCode::TemporarilyUnavailable => 503,
            OAuthCode::InvalidRequest
            | OAuthCode::InvalidGrant
            | OAuthCode::UnauthorizedClient
            | OAuthCode::UnsupportedGrantType
            | OAuthCode::InvalidScope => 400,
        }
    }
}

/// What one of the sidecar's own answers was, for the audit log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// The JWKS or the metadata.
    Served,
    /// A token, issued to this client.
    Issued(String),
    /// A token request, refused with this code.
    Refused(OAuthCode),
}

/// A complete answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub www_authenticate: Option<String>,
    /// `Cache-Control: no-store` (token responses and errors).
    pub no_store: bool,
    /// `Allow` header for 405.
    pub allow: Option<&'static str>,
    /// `Retry-After` seconds (429, 503).
    pub retry_after: Option<u64>,
    /// What the answer was (for logs and metrics).
    pub outcome: Answered,
}

fn json_reply(status: u16, v: serde_json::Value, no_store: bool, outcome: Answered) -> Reply {
    Reply {
        status,
        body: Bytes::from(v.to_string()),
        www_authenticate: None,
        no_store,
        allow: None,
        retry_after: None,
        outcome,
    }
}

/// An RFC 6749 §5.2 error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: OAuthCode,
    pub description: String,
    /// The client used HTTP Basic (then a 401 carries a Basic challenge).
    pub basic: bool,
    /// Seconds for `Retry-After` (429 `slow_down`, 503 `temporarily_unavailable`).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    fn new(code: OAuthCode, description: impl Into<String>) -> Self {
        OAuthError { code, description: description.into(), basic: false, retry_after: None }
    }

    /// Too many failed attempts for this client id or address (SPEC §6 abuse bounds).
    pub fn slow_down(wait: std::time::Duration) -> Self {
        OAuthError {
            retry_after: Some(wait.as_secs().max(1)),
            ..OAuthError::new(OAuthCode::SlowDown, "too many failed attempts; retry later")
        }
    }

    /// Every verification slot is busy.
    pub fn busy() -> Self {
        OAuthError {
            retry_after: Some(1),
            ..OAuthError::new(OAuthCode::TemporarilyUnavailable, "the token endpoint is busy; retry later")
        }
    }

    pub fn too_large() -> Self {
        OAuthError::new(OAuthCode::InvalidRequest, "the request body is too large")
    }

    pub fn unreadable() -> Self {
        OAuthError::new(OAuthCode::InvalidRequest, "the request body could not be read")
    }

    pub fn server_error() -> Self {
        OAuthError::new(OAuthCode::ServerError, "the token could not be issued")
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn reply(&self, request_id: &str) -> Reply {
        let mut r = json_reply(
            self.status(),
            json!({"error": self.code.as_str(), "error_description": self.description, "request_id": request_id}),
            true,
            Answered::Refused(self.code),
        );
        if self.code == OAuthCode::InvalidClient {
            // The token endpoint authenticates clients with Basic (or the body).
            r.www_authenticate = Some("Basic realm=\"portcullis\"".into());
        }
        r.retry_after = self.retry_after;
        r
    }
}

/// The published keys.
pub fn jwks(ts: &TokenSettings) -> Reply {
    let keys: Vec<_> = ts.signer.iter().map(|s| s.jwk.clone()).collect();
    json_reply(200, json!({ "keys": keys }), false, Answered::Served)
}

/// RFC 8414 authorization server metadata.
pub fn metadata(ts: &TokenSettings) -> Reply {
    let base = ts.issuer.trim_end_matches('/');
    json_reply(
        200,
        json!({
            "issuer": ts.issuer,
            "token_endpoint": format!("{base}{}", ts.endpoint),
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
        }),
        false,
        Answered::Served,
    )
}

/// A 405 for a non-POST request to the token endpoint.
pub fn method_not_allowed(request_id: &str) -> Reply {
    let mut r = OAuthError::new(OAuthCode::InvalidRequest, "the token endpoint accepts POST only").reply(request_id);
    r.status = 405;
    r.allow = Some("POST");
    r
}

/// Decodes an RFC 6749 §2.3.1 Basic credential: base64 of form-urlencoded id `:` secret.
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| -> Option<String> {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

pub use super::secret::verify_secret;
use super::secret::{dummy_hash, verify_argon2};

/// Handles `POST {endpoint}`: authenticates the client, checks its state, allowlist and
/// scope, and issues a token. CPU-heavy (argon2): run it off the async runtime.
pub fn token(
    snap: &Snapshot,
    headers: &HeaderMap,
    body: &[u8],
    client_ip: IpAddr,
    now: i64,
    request_id: &str,
) -> Reply {
    answer(parse_request(headers, body).and_then(|req| issue(snap, &req, client_ip, now)), request_id)
}

/// The reply for what [`issue`] returned.
pub fn answer(issued: Result<(String, String), OAuthError>, request_id: &str) -> Reply {
    match issued {
        Ok((client, body)) => Reply {
            status: 200,
            body: Bytes::from(body),
            www_authenticate: None,
            no_store: true,
            allow: None,
            retry_after: None,
            outcome: Answered::Issued(client),
        },
        Err(e) => e.reply(request_id),
    }
}

/// A token request, parsed (no secret checked yet).
pub struct TokenRequest {
    client_id: String,
    secret: String,
    scope: Option<String>,
    /// The client authenticated with HTTP Basic (a 401 then carries a Basic challenge).
    used_basic: bool,
}

impl TokenRequest {
    /// A request for `client_id` with `secret` (the console's sign-in with a client).
    pub fn new(client_id: &str, secret: &str) -> TokenRequest {
        TokenRequest { client_id: client_id.to_string(), secret: secret.to_string(), scope: None, used_basic: false }
    }
}

/// Parses a token request: the form, and client authentication by Basic or in the body.
/// Cheap: the proxy runs it before a verification slot is taken.
pub fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, OAuthError> {
    let ctype = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(OAuthError::new(OAuthCode::InvalidRequest, "the body must be application/x-www-form-urlencoded"));
    }
    let mut form: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if form.iter().any(|(seen, _)| *seen == k) {
            return Err(OAuthError::new(OAuthCode::InvalidRequest, format!("parameter {k} is repeated")));
        }
        form.push((k.into_owned(), v.into_owned()));
    }
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());

    // Client authentication: Basic or the body, never both (RFC 6749 §2.3).
    let mut auths = headers.get_all(http::header::AUTHORIZATION).iter();
    let (auth, extra) = (auths.next(), auths.next());
    if extra.is_some() {
        return Err(OAuthError::new(OAuthCode::InvalidRequest, "more than one Authorization header"));
    }
    let basic = match auth {
        None => None,
        Some(v) => match v.to_str().ok().and_then(parse_basic) {
            Some(pair) => Some(pair),
            None => {
                return Err(OAuthError {
                    basic: true,
                    ..OAuthError::new(OAuthCode::InvalidClient, "the Authorization header must be Basic client_id:client_secret")
                })
            }
        },
    };
    let used_basic = basic.is_some();
    let (client_id, secret) = match (basic, get("client_id"), get("client_secret")) {
        (Some(_), _, Some(_)) => {
            return Err(OAuthError::new(OAuthCode::InvalidRequest, "use one client authentication method, not both"))
        }
        (Some((id, s)), body_id, None) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::new(OAuthCode::InvalidRequest, "client_id in the body differs from the Basic one"));
            }
            (id, s)
        }
        (None, Some(id), Some(s)) => (id.to_string(), s.to_string()),
        (None, _, _) => {
            return Err(OAuthError::new(OAuthCode::InvalidClient, "client authentication is required"));
        }
    };
    match get("grant_type") {
        None => return Err(OAuthError::new(OAuthCode::InvalidRequest, "grant_type is required")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(OAuthCode::UnsupportedGrantType, "only client_credentials is supported"))
        }
    }
    Ok(TokenRequest { client_id, secret, scope: get("scope").map(str::to_string), used_basic })
}

/// How long the proxy holds a throttled token request before its 429: each connection of a
/// flood then gets two answers a second, not thousands.
pub const THROTTLED_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// 429 `slow_down` if this client id or address failed too often (SPEC §6): checked
/// before a verification slot is taken, so a throttled flood costs a map lookup.
pub fn throttled(snap: &Snapshot, req: &TokenRequest, client_ip: IpAddr) -> Option<OAuthError> {
    let limit = snap.tokens.as_ref()?.failure_limit;
    let wait = super::guard::guard().throttled(&req.client_id, client_ip, limit)?;
    Some(OAuthError { basic: req.used_basic, ..OAuthError::slow_down(wait) })
}

/// Checks the client (secret, state, allowlist) and the scope, and signs a token.
/// CPU-heavy (one argon2 verification): the proxy runs it on a verification thread.
pub fn issue(snap: &Snapshot, req: &TokenRequest, client_ip: IpAddr, now: i64) -> Result<(String, String), OAuthError> {
    let Some(ts) = snap.tokens.as_ref() else {
        return Err(OAuthError::new(OAuthCode::InvalidRequest, "tokens are not issued here"));
    };
    let Some(signer) = ts.signer.as_ref() else {
        return Err(OAuthError::new(OAuthCode::InvalidRequest, "tokens are not issued here"));
    };
    let TokenRequest { client_id, secret, scope, used_basic } = req;
    let (client_id, secret, used_basic) = (client_id.as_str(), secret.as_str(), *used_basic);
    let bad_client = |d: &str| OAuthError { basic: used_basic, ..OAuthError::new(OAuthCode::InvalidClient, d) };
    // Throttled before any verification: the same answer whether the client exists or not
    // (again here, for callers that did not check first, and for failures counted since).
    if let Some(e) = throttled(snap, req, client_ip) {
        return Err(e);
    }
    let guard = super::guard::guard();

    let client: Option<&Credential> = client_id
        .strip_prefix(ts.client_id_prefix.as_str())
        .and_then(|id| snap.credentials.clients.get(id))
        .map(|c| c.as_ref());
    // Every failure costs one argon2 verification, whatever the stored hash kind, so the
    // time of a refusal tells nothing about whether the client id exists.
    let secret_ok = match client.and_then(|c| c.secret.as_deref()) {
        Some(stored @ SecretHash::Argon2(_)) => verify_secret(stored, &secret),
        Some(stored @ SecretHash::Sha256(_)) => {
            let ok = verify_secret(stored, &secret);
            if !ok {
                let _ = verify_argon2(dummy_hash(), &secret);
            }
            ok
        }
        None => {
            let _ = verify_argon2(dummy_hash(), &secret);
            false
        }
    };
    // A secret replaced by `credentials rotate --overlap` works until its `until`.
    let secret_ok = secret_ok
        || client
            .and_then(|c| snap.credentials.previous_secrets.get(&c.id))
            .is_some_and(|prev| prev.iter().any(|(h, until)| now < *until && verify_secret(h, &secret)));
    let client = match client {
        Some(c) if secret_ok => c,
        _ => {
            guard.failed(&client_id, client_ip);
            return Err(bad_client("the client is unknown or the secret is wrong"));
        }
    };
    if client.disabled {
        return Err(bad_client("the client is disabled"));
    }
    if client.is_expired(now) {
        return Err(bad_client("the client has expired"));
    }
    if !client.allows_ip(client_ip) {
        // Same words as a wrong secret: a caller outside the allowlist learns nothing.
        tracing::info!(client = %client.id, client_ip = %client_ip, "token refused: address not in the client's allowlist");
        guard.failed(&client_id, client_ip);
        return Err(bad_client("the client is unknown or the secret is wrong"));
    }
    let scope: Vec<String> = match scope.as_deref() {
        None => client.grants.iter().map(|p| p.as_str().to_string()).collect(),
        Some(s) => {
            let mut out = Vec::new();
            for item in s.split(' ').filter(|x| !x.is_empty()) {
                let p = Permission::parse(item)
                    .map_err(|e| OAuthError::new(OAuthCode::InvalidScope, e.to_string()))?;
                if !client.grants.iter().any(|g| p.is_within(g)) {
                    return Err(OAuthError::new(OAuthCode::InvalidScope, format!("{item} is not granted to this client")));
                }
                out.push(item.to_string());
            }
            if out.is_empty() {
                return Err(OAuthError::new(OAuthCode::InvalidScope, "the scope is empty"));
            }
            out
        }
    };
    guard.succeeded(&client_id);
    let scope = scope.join(" ");
    let exp = (now + ts.lifetime as i64).min(client.expires_at);
    let token = sign(ts, signer, &client_id, &scope, now, exp)
        .map_err(|_| OAuthError::new(OAuthCode::ServerError, "the token could not be signed"))?;
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": exp - now,
        "scope": scope,
    });
    Ok((client.id.to_string(), body.to_string()))
}

/// Signs an RFC 9068 access token.
pub fn sign(
    ts: &TokenSettings,
    signer: &SigningKey,
    client_id: &str,
    scope: &str,
    now: i64,
    exp: i64,
) -> Result<String, super::keys::SignError> {
    let header = json!({"typ": "at+jwt", "alg": signer.alg.name(), "kid": signer.kid});
    let claims = json!({
        "iss": ts.issuer,
        "aud": ts.audience,
        "sub": client_id,
        "client_id": client_id,
        "iat": now,
        "exp": exp,
        "jti": format!("{:032x}", rand::random::<u128>()),
        "scope": scope,
    });
    signer.sign_jws(&header, &claims)
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_oauth_code_has_one_name_and_status() {
        let names: std::collections::HashSet<_> = OAuthCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), OAuthCode::ALL.len());
        for (code, status) in [
            (OAuthCode::InvalidRequest, 400),
            (OAuthCode::InvalidClient, 401),
            (OAuthCode::InvalidScope, 400),
            (OAuthCode::SlowDown, 429),
            (OAuthCode::ServerError, 500),
            (OAuthCode::TemporarilyUnavailable, 503),
        ] {
            assert_eq!(code.status(), status, "{}", code.as_str());
        }
        let r = OAuthError::new(OAuthCode::InvalidClient, "x").reply("rid");
        assert_eq!((r.status, r.outcome), (401, Answered::Refused(OAuthCode::InvalidClient)));
        assert!(r.www_authenticate.is_some());
    }

    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::Argon2;
    use sha2::{Digest, Sha256};

    #[test]
    fn basic_credentials_are_form_decoded() {
        let v = format!("Basic {}", STANDARD.encode("wallet%3Aacme:p%40ss+word"));
        assert_eq!(parse_basic(&v), Some(("wallet:acme".into(), "p@ss word".into())));
        assert_eq!(parse_basic("Bearer x"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }

    #[test]
    fn secrets_verify_in_both_formats() {
        let h: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(verify_secret(&SecretHash::Sha256(h), "s3cret"));
        assert!(!verify_secret(&SecretHash::Sha256(h), "s3cret!"));
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        let phc = Argon2::default().hash_password(b"s3cret", &salt).unwrap().to_string();
        assert!(verify_secret(&SecretHash::Argon2(phc.clone()), "s3cret"));
        assert!(!verify_secret(&SecretHash::Argon2(phc), "nope"));
        assert!(!dummy_hash().is_empty());
    }
}
