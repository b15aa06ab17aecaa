//! The management API's endpoints (SPEC §9's table). Each handler is a plain function of
//! the call, the actor and a read of the store; changes go through `crate::store`.
use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use utoipa::{OpenApi, ToSchema};

use super::approval::{self, Refusal, Request};
use super::auth::{self, Via};
use super::policy::{key_user, widens_ips, Actor, Can};
use super::{Answer, Call, Manager};
use crate::config::raw::{strings, EntryRaw};
use crate::config::validate::{parse_expires, parse_net, valid_name, EXPIRY_WARNING_SECS, MAX_ALLOWED_IPS};
use crate::config::{Environment, Snapshot};
use crate::permission::{builtin_role, Permission, BUILTIN_ROLES};
use crate::store::file::Version;
use crate::store::secret::{hash_secret, new_secret};
use crate::store::span::{parse_duration, rfc3339, today};
use crate::store::{change, Applied, Change, EntryEdit, Kind, NewEntry, Store, StoreError};

/// Longest rotation overlap, as on the CLI.
const MAX_OVERLAP_SECS: i64 = 30 * 86_400;

// ---------------------------------------------------------------------------------
// The JSON the API speaks (the OpenAPI document is generated from these types).

/// A client or API key as the API shows it: never a secret or a hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialOut {
    /// `client` or `api_key`.
    pub kind: String,
    /// The client id or key name (immutable).
    pub name: String,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    /// `null`: every address.
    pub allowed_ips: Option<Vec<String>>,
    /// A date (valid through that day, UTC) or an RFC 3339 time (immutable).
    pub expires: String,
    pub expired: bool,
    /// Expires within 30 days.
    pub expires_soon: bool,
    pub disabled: bool,
    pub user: Option<String>,
    pub description: Option<String>,
    pub notes: Option<String>,
    pub created_at: Option<String>,
    pub created_by: Option<String>,
    /// When it last authenticated (RFC 3339), as this sidecar saw it.
    pub last_used: Option<String>,
    /// The entity tag of this credential's entry, for `If-Match`.
    pub etag: String,
}

#[derive(Serialize, ToSchema)]
pub struct CredentialList {
    pub credentials: Vec<CredentialOut>,
}

#[derive(Serialize, ToSchema)]
pub struct CredentialAnswer {
    pub credential: CredentialOut,
}

/// A new or rotated credential with its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct WithSecret {
    pub credential: CredentialOut,
    pub secret: String,
}

/// `POST /api/v1/credentials`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// `client` or `api_key`.
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// `null` or absent: every address (sandbox only); at most 6 entries.
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
    /// A date or an RFC 3339 time; default `management.default_expiry` from now.
    #[serde(default)]
    pub expires: Option<String>,
    /// `90s`, `30m`, `1h`, `7d` or whole seconds from now.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// API keys only: act with this user's current permissions.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    /// Why, for the approver.
    #[serde(default)]
    pub justification: Option<String>,
}

/// `PATCH /api/v1/credentials/{name}`: each field given replaces that field
/// (`allowed_ips: null` = every address; `description`/`notes: null` removes them).
#[derive(Debug, Serialize, ToSchema)]
pub struct PatchBody {
    pub roles: Option<Vec<String>>,
    pub permissions: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub description: Option<String>,
    pub notes: Option<String>,
    pub disabled: Option<bool>,
    pub justification: Option<String>,
}

/// `POST …/rotate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Keep the old secret working this long too (at most 30d).
    #[serde(default)]
    pub overlap: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RequestAnswer {
    pub request: Request,
}

#[derive(Serialize, ToSchema)]
pub struct RequestList {
    pub requests: Vec<Request>,
}

#[derive(Serialize, ToSchema)]
pub struct Pickup {
    pub credential: String,
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct RoleOut {
    pub name: String,
    pub permissions: Vec<String>,
    pub builtin: bool,
}

/// One row of the console's permissions grid: Change and View of one resource.
#[derive(Serialize, ToSchema)]
pub struct GridRow {
    pub id: &'static str,
    pub label: &'static str,
    /// The built-in role Change stands for, when there is one.
    pub role: Option<&'static str>,
    pub change: Vec<&'static str>,
    pub view: Vec<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct Roles {
    pub roles: Vec<RoleOut>,
    pub grid: Vec<GridRow>,
}

/// `POST /api/v1/session`: one of an API key, a client id and secret, or an access token.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub api_key: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub token: Option<String>,
}

/// The signed-in actor, and what the console needs to draw itself.
#[derive(Serialize, ToSchema)]
pub struct SessionOut {
    pub actor: String,
    pub credential: String,
    pub user: Option<String>,
    pub permissions: Vec<String>,
    pub can: Can,
    /// Send it as `X-CSRF-Token` on every write made with the session cookie.
    pub csrf_token: Option<String>,
    pub environment: String,
    pub token_endpoint: Option<String>,
    pub client_id_prefix: String,
    pub default_expiry_days: i64,
    pub approval_required: bool,
    pub max_allowed_ips: usize,
}

/// An error, in SPEC §5's shape; `fields` on 422.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub error_description: String,
    pub request_id: String,
    pub fields: Option<std::collections::BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------------
// Dispatch.

/// Answers one API call; the actor is returned for the audit line.
pub fn handle(m: &Manager, call: &Call<'_>) -> (Answer, Option<Actor>) {
    let method = call.method.as_str();
    if call.segments == ["session"] && method == "POST" {
        return sign_in(m, call);
    }
    let (id, via) = match auth::authenticate(&call.snap, &m.sessions, call.headers, call.client_ip, call.now) {
        Ok(Some(found)) => found,
        Ok(None) => {
            let a = Answer::error(401, "missing_credential", "sign in, or send an API key in x-api-key or a token in Authorization: Bearer")
                .header(http::header::WWW_AUTHENTICATE, "Bearer realm=\"portcullis\"");
            return (a, None);
        }
        Err(r) => return (Answer::rejection(&r), None),
    };
    let actor = Actor::from(&id);
    if via == Via::Cookie && method != "GET" && method != "HEAD" && !auth::csrf_ok(&m.sessions, call.headers, call.now) {
        let a = Answer::error(403, "csrf_token_missing", "a write with the session cookie needs the session's X-CSRF-Token header");
        return (a, Some(actor));
    }
    let a = match (method, call.segments.as_slice()) {
        ("GET", ["session"]) => session_answer(m, call, &actor, via),
        ("DELETE", ["session"]) => sign_out(m, call),
        ("GET", ["openapi.json"]) => Answer::json(200, serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()),
        ("GET", ["roles"]) => roles(m, call),
        ("GET", ["credentials"]) => list(m, call, &actor),
        ("POST", ["credentials"]) => create(m, call, &actor),
        ("GET", ["credentials", name]) => show(m, call, &actor, name),
        ("PATCH", ["credentials", name]) => edit(m, call, &actor, name),
        ("DELETE", ["credentials", name]) => delete(m, call, &actor, name),
        ("POST", ["credentials", name, op @ ("disable" | "enable")]) => set_disabled(m, call, &actor, name, *op == "disable"),
        ("POST", ["credentials", name, "rotate"]) => rotate(m, call, &actor, name),
        ("GET", ["requests"]) => requests(m, call, &actor),
        ("POST", ["requests", id, op @ ("approve" | "deny")]) => decide(m, call, &actor, id, *op == "approve"),
        ("POST", ["requests", id, "secret"]) => pickup(m, call, &actor, id),
        (_, ["session"] | ["openapi.json"] | ["roles"] | ["credentials"] | ["credentials", _] | ["requests"])
        | (_, ["credentials", _, "disable" | "enable" | "rotate"])
        | (_, ["requests", _, "approve" | "deny" | "secret"]) => Answer::error(405, "method_not_allowed", format!("{method} is not allowed here")),
        _ => Answer::error(404, "not_found", "no such endpoint: see /api/v1/openapi.json"),
    };
    (a, Some(actor))
}

// ---------------------------------------------------------------------------------
// Session.

fn sign_in(m: &Manager, call: &Call<'_>) -> (Answer, Option<Actor>) {
    // Only JSON: a cross-site HTML form cannot send it without a CORS preflight.
    let json_body = call
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json_body {
        return (Answer::error(415, "invalid_request", "sign in with a JSON body (Content-Type: application/json)"), None);
    }
    let body: SignIn = match serde_json::from_slice(call.body) {
        Ok(b) => b,
        Err(e) => return (Answer::error(400, "invalid_request", format!("the body is not a sign-in: {e}")), None),
    };
    let snap = &call.snap;
    let found = match (&body.api_key, &body.client_id, &body.client_secret, &body.token) {
        (Some(k), None, None, None) => crate::pipeline::authn::api_key(snap, k.trim(), call.now).map(|id| (id, None)),
        (None, None, None, Some(t)) => crate::token::authenticate_bearer(snap, t.trim(), call.now).map(|id| (id, token_exp(t))),
        (None, Some(id), Some(secret), None) => client_sign_in(snap, id.trim(), secret, call),
        _ => return (Answer::error(400, "invalid_request", "send one of: api_key; client_id and client_secret; token"), None),
    };
    let (id, until) = match found {
        Ok(f) => f,
        Err(r) => return (Answer::rejection(&r), None),
    };
    if !id.allows_ip(call.client_ip) {
        let r = crate::rejection::Rejection::new(crate::rejection::Reason::IpNotAllowed, format!("{} is not in the credential's allowed_ips", call.client_ip));
        return (Answer::rejection(&r), None);
    }
    let actor = Actor::from(&id);
    let (cookie, csrf) = m.sessions.open(&id, call.now, until);
    let mut a = session_body(call, &actor, Some(csrf));
    a = a.header(http::header::SET_COOKIE, auth::set_cookie(&cookie, m.tls));
    (a, Some(actor))
}

/// A token's `exp`, unverified (it was verified just before): a session ends with it.
fn token_exp(token: &str) -> Option<i64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?.get("exp")?.as_i64()
}

/// Signs in with a client id and secret, through the token endpoint's own checks
/// (throttling, expiry, disabled, allowlist).
fn client_sign_in(
    snap: &Snapshot,
    client_id: &str,
    secret: &str,
    call: &Call<'_>,
) -> Result<(crate::pipeline::authn::Identity, Option<i64>), crate::rejection::Rejection> {
    use crate::rejection::{Reason, Rejection};
    let req = crate::token::endpoint::TokenRequest::new(client_id, secret);
    match crate::token::endpoint::issue(snap, &req, call.client_ip, call.now) {
        Ok((client, _)) => auth::file_identity(snap, &client, call.now).map(|id| (id, None)),
        Err(e) if e.status() == 429 || e.status() == 503 => {
            Err(Rejection::new(Reason::InvalidToken, "too many failed sign-ins from here or for this client: wait a minute"))
        }
        Err(_) => Err(Rejection::new(
            Reason::InvalidToken,
            "the client id or secret is not valid, or the client may not sign in (no token endpoint, expired or disabled)",
        )),
    }
}

fn session_body(call: &Call<'_>, actor: &Actor, csrf: Option<String>) -> Answer {
    let snap = &call.snap;
    let mgmt = snap.settings.management.as_ref();
    let out = SessionOut {
        actor: actor.name().to_string(),
        credential: actor.credential.to_string(),
        user: actor.user.as_deref().map(str::to_string),
        permissions: actor.grants.iter().map(|g| g.as_str().to_string()).collect(),
        can: actor.can(),
        csrf_token: csrf,
        environment: match snap.settings.environment {
            Environment::Sandbox => "sandbox".into(),
            Environment::Production => "production".into(),
        },
        token_endpoint: snap.tokens.as_ref().filter(|t| t.signer.is_some()).map(|t| t.endpoint.clone()),
        client_id_prefix: snap.tokens.as_ref().map(|t| t.client_id_prefix.clone()).unwrap_or_default(),
        default_expiry_days: mgmt.map_or(365, |m| m.default_expiry / 86_400),
        approval_required: mgmt.is_some_and(|m| m.approval_required),
        max_allowed_ips: MAX_ALLOWED_IPS,
    };
    Answer::json(200, serde_json::to_value(out).unwrap_or_default())
}

fn session_answer(m: &Manager, call: &Call<'_>, actor: &Actor, via: Via) -> Answer {
    let csrf = match via {
        Via::Cookie => auth::cookie(call.headers, auth::COOKIE).and_then(|c| m.sessions.csrf(c, call.now)),
        Via::Headers => None,
    };
    session_body(call, actor, csrf)
}

fn sign_out(m: &Manager, call: &Call<'_>) -> Answer {
    if let Some(c) = auth::cookie(call.headers, auth::COOKIE) {
        m.sessions.close(c);
    }
    Answer::empty(204).header(http::header::SET_COOKIE, auth::clear_cookie(m.tls))
}

// ---------------------------------------------------------------------------------
// Reading credentials.

/// A read of the store: every credential, and the version it was read at.
pub struct View {
    pub raw: crate::config::raw::CredentialsRaw,
    pub version: Version,
}

/// The store of the config in force: the file, or the PostgreSQL database (one
/// connection setup per process, kept by the manager).
fn store(m: &Manager, snap: &Snapshot) -> Result<Arc<dyn Store + Send + Sync>, Answer> {
    m.store_for(snap).map_err(|e| Answer::error(503, "store_unavailable", e))
}

fn read_view(store: &Arc<dyn Store + Send + Sync>) -> Result<View, Answer> {
    store.load().map(|(raw, version)| View { raw, version }).map_err(|e| Answer::error(503, "store_unavailable", e))
}

fn read(m: &Manager, snap: &Snapshot) -> Result<(Arc<dyn Store + Send + Sync>, View), Answer> {
    let s = store(m, snap)?;
    let v = read_view(&s)?;
    Ok((s, v))
}

/// The entity tag of one entry: a hash of its content as the file would hold it.
fn etag_of(e: &EntryRaw<'_>) -> String {
    let entry = crate::store::row::entry_value(&crate::store::row::entry_row(e));
    let h = Sha256::digest(serde_json::to_vec(&entry).unwrap_or_default());
    format!("\"{}\"", hex::encode(&h[..12]))
}

fn entry<'v>(view: &'v View, name: &str) -> Option<(EntryRaw<'v>, Kind, usize)> {
    let (kind, idx) = change::locate(&view.raw, name)?;
    let e = view.raw.entries().find(|e| e.kind == kind && *e.name == name)?;
    Some((e, kind, idx))
}

fn out(m: &Manager, e: &EntryRaw<'_>, now: i64) -> CredentialOut {
    let expires_at = parse_expires(e.expires).ok();
    CredentialOut {
        kind: e.kind.json().to_string(),
        name: e.name.to_string(),
        roles: strings(e.roles),
        permissions: strings(e.permissions),
        allowed_ips: e.allowed_ips.as_ref().map(|l| strings(l)),
        expires: e.expires.to_string(),
        expired: expires_at.is_none_or(|t| now >= t),
        expires_soon: expires_at.is_some_and(|t| now < t && t - now <= EXPIRY_WARNING_SECS),
        disabled: e.disabled,
        user: e.user.map(str::to_string),
        description: e.description.as_deref().cloned(),
        notes: e.notes.map(str::to_string),
        created_at: e.created_at.map(str::to_string),
        created_by: e.created_by.map(str::to_string),
        last_used: m.last_used.as_ref().and_then(|l| l.get(e.name)).map(rfc3339),
        etag: etag_of(e),
    }
}

fn query_param<'q>(q: Option<&'q str>, key: &str) -> Option<&'q str> {
    q?.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn list(m: &Manager, call: &Call<'_>, actor: &Actor) -> Answer {
    let can = actor.can();
    if !can.read && !can.change && !can.own_keys {
        return Answer::error(403, "forbidden", "listing credentials needs api_access:read (or a credential linked to a user, for its own keys)");
    }
    let (_, view) = match read(m, &call.snap) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let kind = query_param(call.query, "kind");
    let user = query_param(call.query, "user");
    let mut credentials = Vec::new();
    for e in view.raw.entries() {
        if !actor.may_see(e.kind, e.user) || kind.is_some_and(|k| k != e.kind.json()) || user.is_some_and(|u| Some(u) != e.user) {
            continue;
        }
        credentials.push(out(m, &e, call.now));
    }
    Answer::json(200, serde_json::to_value(CredentialList { credentials }).unwrap_or_default())
}

fn show(m: &Manager, call: &Call<'_>, actor: &Actor, name: &str) -> Answer {
    let (_, view) = match read(m, &call.snap) {
        Ok(v) => v,
        Err(a) => return a,
    };
    match entry(&view, name) {
        Some((e, _, _)) if actor.may_see(e.kind, e.user) => credential_answer(200, out(m, &e, call.now)),
        Some(_) => Answer::error(403, "forbidden", "seeing this credential needs api_access:read"),
        None => Answer::error(404, "not_found", format!("no client or API key named {name:?}")),
    }
    .with_target(name)
}

fn credential_answer(status: u16, c: CredentialOut) -> Answer {
    let etag = c.etag.clone();
    Answer::json(status, json!({ "credential": c })).header(http::header::ETAG, etag)
}

/// The credential as written, after a change: read back from the store.
fn answer_after(m: &Manager, store: &Arc<dyn Store + Send + Sync>, name: &str, status: u16, secret: Option<String>, now: i64) -> Answer {
    let view = match read_view(store) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let Some((e, _, _)) = entry(&view, name) else {
        return Answer::error(500, "server_error", "the credential was written but cannot be read back");
    };
    let c = out(m, &e, now);
    let etag = c.etag.clone();
    let body = match secret {
        Some(secret) => serde_json::to_value(WithSecret { credential: c, secret }).unwrap_or_default(),
        None => json!({ "credential": c }),
    };
    Answer { wrote: true, ..Answer::json(status, body) }.header(http::header::ETAG, etag).with_target(name)
}

fn store_error(e: StoreError) -> Answer {
    match e {
        StoreError::Stale(d) => Answer::error(409, "conflict", d),
        StoreError::NotFound(d) => Answer::error(404, "not_found", d),
        StoreError::Invalid(errs) => {
            let mut fields = Map::new();
            for e in &errs.0 {
                fields.insert(field_of(&e.message).to_string(), Value::String(e.message.clone()));
            }
            Answer::invalid(fields)
        }
        StoreError::Other(d) => Answer::error(500, "server_error", d),
    }
}

/// The field a loader message is about (for `422`'s `fields`).
fn field_of(message: &str) -> &'static str {
    for (needle, field) in [
        ("role", "roles"),
        ("allowed_ips", "allowed_ips"),
        ("permission", "permissions"),
        ("expire", "expires"),
        ("description", "description"),
        ("user", "user"),
        ("name", "name"),
    ] {
        if message.contains(needle) {
            return field;
        }
    }
    "credential"
}

// ---------------------------------------------------------------------------------
// Roles.

/// The grid's rows: one per resource of the built-in roles, and API Access.
pub fn grid() -> Vec<GridRow> {
    vec![
        GridRow { id: "wallets", label: "Wallets", role: Some("wallets"), change: vec!["vault:change", "key:change", "balances:read"], view: vec!["vault:read", "key:read", "balances:read"] },
        GridRow { id: "transactions", label: "Transactions", role: Some("transactions"), change: vec!["transactions:change"], view: vec!["transactions:read"] },
        GridRow { id: "controls", label: "Controls", role: Some("controls"), change: vec!["policies:change", "addresses:change"], view: vec!["policies:read", "addresses:read"] },
        GridRow { id: "monitoring", label: "Monitoring", role: Some("monitoring"), change: vec!["webhooks:change", "audit:read"], view: vec!["webhooks:read", "audit:read"] },
        GridRow { id: "api_access", label: "API Access", role: None, change: vec!["api_access:change", "api_access:read"], view: vec!["api_access:read"] },
    ]
}

fn roles(m: &Manager, call: &Call<'_>) -> Answer {
    let (_, view) = match read(m, &call.snap) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let mut roles: Vec<RoleOut> = BUILTIN_ROLES
        .iter()
        .map(|r| RoleOut { name: r.to_string(), permissions: builtin_role(r).unwrap_or(&[]).iter().map(|p| p.to_string()).collect(), builtin: true })
        .collect();
    for (name, perms) in &view.raw.roles {
        roles.push(RoleOut { name: name.clone(), permissions: strings(perms), builtin: false });
    }
    Answer::json(200, serde_json::to_value(Roles { roles, grid: grid() }).unwrap_or_default())
}

/// The permissions `roles`, `permissions` and a linked `user` give, as the file defines
/// them; names that do not resolve are reported in `fields`.
fn given(view: &View, roles: &[String], permissions: &[String], user: Option<&str>, fields: &mut Map<String, Value>) -> Vec<Permission> {
    let mut out = Vec::new();
    let mut add = |list: Vec<&str>, field: &str, fields: &mut Map<String, Value>| {
        for p in list {
            match Permission::parse(p) {
                Ok(p) => out.push(p),
                Err(e) => {
                    fields.insert(field.to_string(), Value::String(e.to_string()));
                }
            }
        }
    };
    for r in roles {
        if let Some(perms) = builtin_role(r) {
            add(perms.to_vec(), "roles", fields);
        } else if let Some(perms) = view.raw.roles.get(r) {
            add(perms.iter().map(|p| p.as_str()).collect(), "roles", fields);
        } else {
            fields.insert("roles".into(), Value::String(format!("unknown role {r:?}")));
        }
    }
    add(permissions.iter().map(String::as_str).collect(), "permissions", fields);
    if let Some(u) = user {
        match view.raw.users.iter().find(|x| *x.name == u) {
            Some(x) => {
                let mut ignore = Map::new();
                let r = strings(&x.roles);
                let p = strings(&x.permissions);
                out.extend(given(view, &r, &p, None, &mut ignore));
            }
            None => {
                fields.insert("user".into(), Value::String(format!("no user named {u:?}")));
            }
        }
    }
    out
}

/// Checks an allowlist as the loader will, with the environment's rules.
fn check_ips(ips: &Option<Vec<String>>, env: Environment, fields: &mut Map<String, Value>) {
    let mut bad = |why: String| {
        fields.insert("allowed_ips".into(), Value::String(why));
    };
    match ips {
        None if env == Environment::Production => bad("in production every credential must list its allowed_ips".into()),
        None => {}
        Some(l) if l.is_empty() => bad("list at least one address, or send null for every address".into()),
        Some(l) if l.len() > MAX_ALLOWED_IPS => bad(format!("{} entries, at most {MAX_ALLOWED_IPS}", l.len())),
        Some(l) => {
            for s in l {
                match parse_net(s) {
                    Err(e) => bad(e),
                    Ok(n) if n.prefix_len() == 0 && env == Environment::Production => bad(format!("{s}: in production no entry may allow every address")),
                    Ok(_) => {}
                }
            }
        }
    }
}

fn check_description(d: Option<&str>, fields: &mut Map<String, Value>) {
    if let Some(d) = d {
        let n = d.chars().count();
        if !(5..=50).contains(&n) {
            fields.insert("description".into(), Value::String(format!("must be 5 to 50 characters, not {n}")));
        }
    }
}

// ---------------------------------------------------------------------------------
// Create.

fn create(m: &Manager, call: &Call<'_>, actor: &Actor) -> Answer {
    let body: CreateBody = match serde_json::from_slice(call.body) {
        Ok(b) => b,
        Err(e) => {
            let mut f = Map::new();
            f.insert("body".into(), Value::String(e.to_string()));
            return Answer::invalid(f);
        }
    };
    let name = body.name.clone();
    match prepare_create(m, call, actor, body) {
        Err(a) => a,
        Ok((kind, entry, changes, justification)) => {
            let approval = call.snap.settings.management.as_ref().filter(|m| m.approval_required);
            if let Some(settings) = approval {
                let change = serde_json::to_value(entry_json(kind, &entry)).unwrap_or_default();
                return match m.queue.submit(
                    "create",
                    kind.json(),
                    &entry.name,
                    actor.name(),
                    &actor.credential,
                    justification,
                    change,
                    settings.approval_expires_after,
                    call.now,
                ) {
                    Ok(r) => Answer { changes, ..Answer::json(202, json!({ "request": r })) }.with_target(&name),
                    Err(e) => Answer::error(409, "conflict", e).with_target(&name),
                };
            }
            let mut a = apply_create(m, call, kind, entry);
            a.changes = changes;
            a.with_target(&name)
        }
    }
}

type Prepared = (Kind, NewEntry, Value, Option<String>);

/// Checks a create (rights, fields, no escalation) and builds the entry (no hash yet).
fn prepare_create(m: &Manager, call: &Call<'_>, actor: &Actor, b: CreateBody) -> Result<Prepared, Answer> {
    let snap = &call.snap;
    let env = snap.settings.environment;
    let kind = match b.kind.as_str() {
        "client" => Kind::Client,
        "api_key" => Kind::ApiKey,
        _ => {
            let mut f = Map::new();
            f.insert("kind".into(), Value::String("must be client or api_key".into()));
            return Err(Answer::invalid(f));
        }
    };
    let user = match kind {
        Kind::ApiKey => key_user(actor, b.user.as_deref()).map_err(|e| Answer::error(403, "forbidden", e))?,
        Kind::Client if !actor.can().change => return Err(Answer::error(403, "forbidden", "creating a client needs api_access:change")),
        Kind::Client => {
            if b.user.is_some() {
                let mut f = Map::new();
                f.insert("user".into(), Value::String("only an API key can be linked to a user".into()));
                return Err(Answer::invalid(f));
            }
            None
        }
    };
    let (_, view) = read(m, snap)?;
    let mut fields = Map::new();
    if !valid_name(&b.name) {
        fields.insert("name".into(), Value::String("must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}".into()));
    } else if change::locate(&view.raw, &b.name).is_some() {
        return Err(Answer::error(409, "conflict", format!("a credential named {:?} exists already", b.name)));
    }
    let default = snap.settings.management.as_ref().map_or(365 * 86_400, |m| m.default_expiry);
    let expires = match (&b.expires, &b.expires_in) {
        (Some(_), Some(_)) => {
            fields.insert("expires".into(), Value::String("give expires or expires_in, not both".into()));
            String::new()
        }
        (Some(e), None) => match parse_expires(e) {
            Ok(t) if t > call.now => e.trim().to_string(),
            Ok(_) => {
                fields.insert("expires".into(), Value::String("is in the past".into()));
                String::new()
            }
            Err(e) => {
                fields.insert("expires".into(), Value::String(e));
                String::new()
            }
        },
        (None, Some(span)) => match parse_duration(span, "expires_in") {
            Ok(secs) => expiry_text(call.now, secs),
            Err(e) => {
                fields.insert("expires_in".into(), Value::String(e));
                String::new()
            }
        },
        (None, None) => expiry_text(call.now, default),
    };
    check_ips(&b.allowed_ips, env, &mut fields);
    check_description(b.description.as_deref(), &mut fields);
    let given = given(&view, &b.roles, &b.permissions, user.as_deref(), &mut fields);
    if !fields.is_empty() {
        return Err(Answer::invalid(fields));
    }
    let not_held = actor.not_held(&given);
    if !not_held.is_empty() {
        return Err(Answer::error(403, "forbidden", format!("you cannot give permissions you do not hold: {}", not_held.join(", "))));
    }
    let entry = NewEntry {
        name: b.name.clone(),
        hash: String::new(),
        user,
        roles: b.roles.clone(),
        permissions: b.permissions.clone(),
        allowed_ips: b.allowed_ips.clone().unwrap_or_default(),
        expires,
        description: b.description.clone(),
        notes: b.notes.clone(),
        created_at: Some(rfc3339(call.now)),
        created_by: Some(actor.name().to_string()),
    };
    let changes = json!({
        "kind": [null, kind.json()], "roles": [null, entry.roles], "permissions": [null, entry.permissions],
        "allowed_ips": [null, b.allowed_ips], "expires": [null, entry.expires], "user": [null, entry.user],
        "description": [null, entry.description], "notes": [null, entry.notes],
    });
    Ok((kind, entry, changes, b.justification))
}

/// A date when the span is whole days (as the files write expiries), else an exact time.
fn expiry_text(now: i64, secs: i64) -> String {
    if secs % 86_400 == 0 {
        let days = u64::try_from(secs / 86_400).unwrap_or(0);
        today(now).checked_add_days(chrono::Days::new(days)).map_or_else(|| rfc3339(now + secs), |d| d.format("%Y-%m-%d").to_string())
    } else {
        rfc3339(now + secs)
    }
}

/// A create as a request's `change` (what the approver sees).
fn entry_json(kind: Kind, e: &NewEntry) -> Value {
    json!({
        "kind": kind.json(), "name": e.name, "roles": e.roles, "permissions": e.permissions,
        "allowed_ips": if e.allowed_ips.is_empty() { Value::Null } else { json!(e.allowed_ips) },
        "expires": e.expires, "user": e.user, "description": e.description, "notes": e.notes,
        "created_by": e.created_by,
    })
}

fn entry_from_json(v: &Value) -> Option<(Kind, NewEntry)> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let list = |k: &str| -> Vec<String> {
        v.get(k).and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let kind = match s("kind")?.as_str() {
        "client" => Kind::Client,
        _ => Kind::ApiKey,
    };
    Some((
        kind,
        NewEntry {
            name: s("name")?,
            hash: String::new(),
            user: s("user"),
            roles: list("roles"),
            permissions: list("permissions"),
            allowed_ips: list("allowed_ips"),
            expires: s("expires")?,
            description: s("description"),
            notes: s("notes"),
            created_at: None,
            created_by: s("created_by"),
        },
    ))
}

/// Makes the secret, stores its hash, answers `201` with the secret.
fn apply_create(m: &Manager, call: &Call<'_>, kind: Kind, mut entry: NewEntry) -> Answer {
    let store = match store(m, &call.snap) {
        Ok(s) => s,
        Err(a) => return a,
    };
    let secret = new_secret(kind, call.snap.settings.environment);
    entry.hash = match hash_secret(kind, &secret) {
        Ok(h) => h,
        Err(e) => return Answer::error(500, "server_error", e),
    };
    if entry.created_at.is_none() {
        entry.created_at = Some(rfc3339(call.now));
    }
    let name = entry.name.clone();
    match store.apply(&Change::Create { kind, entry }, None, call.now) {
        Ok(_) => answer_after(m, &store, &name, 201, Some(secret), call.now),
        Err(e) => store_error(e),
    }
}

// ---------------------------------------------------------------------------------
// Edit, disable/enable, delete, rotate.

/// Reads the store and checks that `actor` may change `name` and that `If-Match`, when
/// sent, names its current version.
fn for_change<'v>(call: &Call<'_>, actor: &Actor, view: &'v View, name: &str) -> Result<(EntryRaw<'v>, Kind, usize), Answer> {
    let Some((e, kind, idx)) = entry(view, name) else {
        return Err(Answer::error(404, "not_found", format!("no client or API key named {name:?}")));
    };
    if !actor.may_manage(kind, e.user) {
        return Err(Answer::error(403, "forbidden", "changing this credential needs api_access:change (or it must be an API key of your own user)"));
    }
    if let Some(m) = call.headers.get(http::header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        let current = etag_of(&e);
        if m.trim() != "*" && !m.split(',').any(|t| t.trim().trim_start_matches("W/") == current) {
            return Err(Answer::error(412, "precondition_failed", "the credential changed since you read it (If-Match): read it again"));
        }
    }
    Ok((e, kind, idx))
}

/// Applies `change` over the version read; when another write came in between, tries again
/// if this credential's entry is unchanged, else `409`.
fn apply_over(store: &Arc<dyn Store + Send + Sync>, view: &View, name: &str, change: &Change, now: i64) -> Result<Applied, Answer> {
    let tag = entry(view, name).map(|(e, _, _)| etag_of(&e));
    let mut version = view.version;
    for _ in 0..3 {
        match store.apply(change, Some(version), now) {
            Ok(a) => return Ok(a),
            Err(StoreError::Stale(d)) => {
                let fresh = read_view(store)?;
                if entry(&fresh, name).map(|(e, _, _)| etag_of(&e)) != tag {
                    return Err(Answer::error(409, "conflict", format!("{name:?} was changed by another write meanwhile: read it again ({d})")));
                }
                version = fresh.version;
            }
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(Answer::error(409, "conflict", "the store is busy with other writes: try again"))
}

fn edit(m: &Manager, call: &Call<'_>, actor: &Actor, name: &str) -> Answer {
    let body: Map<String, Value> = match serde_json::from_slice(call.body) {
        Ok(Value::Object(o)) => o,
        _ => {
            let mut f = Map::new();
            f.insert("body".into(), Value::String("must be a JSON object".into()));
            return Answer::invalid(f).with_target(name);
        }
    };
    let (store, view) = match read(m, &call.snap) {
        Ok(v) => v,
        Err(a) => return a.with_target(name),
    };
    let (e, kind, _) = match for_change(call, actor, &view, name) {
        Ok(x) => x,
        Err(a) => return a.with_target(name),
    };
    // Own keys may be listed, created, rotated, disabled, enabled and deleted, "and
    // nothing else" (SPEC §9): an edit needs api_access:change.
    if !actor.can().change {
        return Answer::error(403, "forbidden", "editing a credential needs api_access:change (your own keys can be rotated, disabled, enabled or deleted)").with_target(name);
    }
    let mut fields = Map::new();
    let mut ed = EntryEdit::default();
    let mut disabled = None;
    let mut justification = None;
    let str_list = |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(|x| x.as_str().map(str::to_string)).collect() };
    for (k, v) in &body {
        let bad = |fields: &mut Map<String, Value>, why: &str| {
            fields.insert(k.clone(), Value::String(why.to_string()));
        };
        match k.as_str() {
            "roles" => match str_list(v) {
                Some(l) => ed.roles = Some(l),
                None => bad(&mut fields, "must be a list of role names"),
            },
            "permissions" => match str_list(v) {
                Some(l) => ed.permissions = Some(l),
                None => bad(&mut fields, "must be a list of permissions"),
            },
            "allowed_ips" => match v {
                Value::Null => ed.allowed_ips = Some(None),
                v => match str_list(v) {
                    Some(l) => ed.allowed_ips = Some(Some(l)),
                    None => bad(&mut fields, "must be a list of addresses or CIDRs, or null"),
                },
            },
            "description" | "notes" => {
                let val = match v {
                    Value::Null => Some(None),
                    Value::String(s) if s.is_empty() => Some(None),
                    Value::String(s) => Some(Some(s.clone())),
                    _ => {
                        bad(&mut fields, "must be a string or null");
                        None
                    }
                };
                if k == "description" {
                    ed.description = val;
                } else {
                    ed.notes = val;
                }
            }
            "disabled" => match v.as_bool() {
                Some(b) => disabled = Some(b),
                None => bad(&mut fields, "must be true or false"),
            },
            "justification" => justification = v.as_str().map(str::to_string),
            "name" | "id" | "expires" | "expires_in" | "kind" => bad(&mut fields, "cannot be changed after creation"),
            "user" => bad(&mut fields, "cannot be changed: create a new key for another user"),
            _ => bad(&mut fields, "unknown field"),
        }
    }
    if let Some(Some(ips)) = &ed.allowed_ips {
        check_ips(&Some(ips.clone()), call.snap.settings.environment, &mut fields);
    } else if ed.allowed_ips == Some(None) {
        check_ips(&None, call.snap.settings.environment, &mut fields);
    }
    check_description(ed.description.clone().flatten().as_deref(), &mut fields);
    // No escalation: what the edit adds must be held by the actor.
    let old_roles: BTreeSet<String> = strings(e.roles).into_iter().collect();
    let old_perms: BTreeSet<String> = strings(e.permissions).into_iter().collect();
    let added_roles: Vec<String> = ed.roles.iter().flatten().filter(|r| !old_roles.contains(*r)).cloned().collect();
    let added_perms: Vec<String> = ed.permissions.iter().flatten().filter(|p| !old_perms.contains(*p)).cloned().collect();
    let added = given(&view, &added_roles, &added_perms, None, &mut fields);
    if !fields.is_empty() {
        return Answer::invalid(fields).with_target(name);
    }
    let not_held = actor.not_held(&added);
    if !not_held.is_empty() {
        return Answer::error(403, "forbidden", format!("you cannot give permissions you do not hold: {}", not_held.join(", "))).with_target(name);
    }
    let old_ips = e.allowed_ips.as_ref().map(|l| strings(l));
    let mut changes = Map::new();
    let mut note = |k: &str, old: Value, new: Value| {
        if old != new {
            changes.insert(k.to_string(), json!([old, new]));
        }
    };
    if let Some(r) = &ed.roles {
        note("roles", json!(old_roles), json!(r));
    }
    if let Some(p) = &ed.permissions {
        note("permissions", json!(old_perms), json!(p));
    }
    if let Some(ips) = &ed.allowed_ips {
        note("allowed_ips", json!(old_ips), json!(ips));
    }
    if let Some(d) = &ed.description {
        note("description", json!(e.description.as_deref()), json!(d));
    }
    if let Some(n) = &ed.notes {
        note("notes", json!(e.notes), json!(n));
    }
    if let Some(d) = disabled {
        note("disabled", json!(e.disabled), json!(d));
    }
    let changes = Value::Object(changes);
    // Maker-checker: an edit that widens access waits for approval.
    let widens = !added.is_empty() || ed.allowed_ips.as_ref().is_some_and(|n| widens_ips(old_ips.as_deref(), n.as_deref()));
    if let Some(settings) = call.snap.settings.management.as_ref().filter(|s| s.approval_required && widens) {
        let mut change = body.clone();
        change.remove("justification");
        return match m.queue.submit("edit", kind.json(), name, actor.name(), &actor.credential, justification, Value::Object(change), settings.approval_expires_after, call.now) {
            Ok(r) => Answer { changes, ..Answer::json(202, json!({ "request": r })) }.with_target(name),
            Err(e) => Answer::error(409, "conflict", e).with_target(name),
        };
    }
    let mut a = apply_edit(m, call, &store, &view, name, ed, disabled);
    a.changes = changes;
    a.with_target(name)
}

fn apply_edit(m: &Manager, call: &Call<'_>, store: &Arc<dyn Store + Send + Sync>, view: &View, name: &str, ed: EntryEdit, disabled: Option<bool>) -> Answer {
    if !ed.is_empty() {
        if let Err(a) = apply_over(store, view, name, &Change::Edit { name: name.to_string(), edit: ed }, call.now) {
            return a;
        }
    }
    if let Some(d) = disabled {
        let fresh = match read_view(store) {
            Ok(v) => v,
            Err(a) => return a,
        };
        if entry(&fresh, name).is_some_and(|(e, _, _)| e.disabled != d) {
            if let Err(a) = apply_over(store, &fresh, name, &Change::SetDisabled { name: name.to_string(), disabled: d }, call.now) {
                return a;
            }
        }
    }
    answer_after(m, store, name, 200, None, call.now)
}

fn set_disabled(m: &Manager, call: &Call<'_>, actor: &Actor, name: &str, disabled: bool) -> Answer {
    let (store, view) = match read(m, &call.snap) {
        Ok(v) => v,
        Err(a) => return a.with_target(name),
    };
    let was = match for_change(call, actor, &view, name) {
        Ok((e, _, _)) => e.disabled,
        Err(a) => return a.with_target(name),
    };
    let changes = json!({ "disabled": [was, disabled] });
    if was == disabled {
        return Answer { changes: Value::Null, ..answer_after(m, &store, name, 200, None, call.now) };
    }
    match apply_over(&store, &view, name, &Change::SetDisabled { name: name.to_string(), disabled }, call.now) {
        Ok(_) => Answer { changes, ..answer_after(m, &store, name, 200, None, call.now) },
        Err(a) => a.with_target(name),
    }
}

fn delete(m: &Manager, call: &Call<'_>, actor: &Actor, name: &str) -> Answer {
    let (store, view) = match read(m, &call.snap) {
        Ok(v) => v,
        Err(a) => return a.with_target(name),
    };
    if let Err(a) = for_change(call, actor, &view, name) {
        return a.with_target(name);
    }
    match apply_over(&store, &view, name, &Change::Delete { name: name.to_string() }, call.now) {
        Ok(_) => Answer { wrote: true, changes: json!({ "deleted": [false, true] }), ..Answer::empty(204) }.with_target(name),
        Err(a) => a.with_target(name),
    }
}

fn rotate(m: &Manager, call: &Call<'_>, actor: &Actor, name: &str) -> Answer {
    let body: RotateBody = if call.body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        match serde_json::from_slice(call.body) {
            Ok(b) => b,
            Err(e) => {
                let mut f = Map::new();
                f.insert("body".into(), Value::String(e.to_string()));
                return Answer::invalid(f).with_target(name);
            }
        }
    };
    let overlap_until = match &body.overlap {
        None => None,
        Some(o) => match parse_duration(o, "overlap") {
            Ok(s) if s <= MAX_OVERLAP_SECS => Some(call.now + s),
            Ok(_) => return Answer::invalid(one("overlap", "at most 30d")).with_target(name),
            Err(e) => return Answer::invalid(one("overlap", &e)).with_target(name),
        },
    };
    let (store, view) = match read(m, &call.snap) {
        Ok(v) => v,
        Err(a) => return a.with_target(name),
    };
    let kind = match for_change(call, actor, &view, name) {
        Ok((_, k, _)) => k,
        Err(a) => return a.with_target(name),
    };
    let secret = new_secret(kind, call.snap.settings.environment);
    let hash = match hash_secret(kind, &secret) {
        Ok(h) => h,
        Err(e) => return Answer::error(500, "server_error", e),
    };
    match apply_over(&store, &view, name, &Change::Rotate { name: name.to_string(), hash, overlap_until }, call.now) {
        Ok(_) => Answer {
            changes: json!({ "secret": [null, "rotated"], "previous_secret_until": [null, overlap_until.map(rfc3339)] }),
            ..answer_after(m, &store, name, 200, Some(secret), call.now)
        },
        Err(a) => a.with_target(name),
    }
}

fn one(field: &str, why: &str) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert(field.to_string(), Value::String(why.to_string()));
    f
}

// ---------------------------------------------------------------------------------
// Approval queue.

fn requests(m: &Manager, call: &Call<'_>, actor: &Actor) -> Answer {
    let can = actor.can();
    let all = m.queue.list(actor.name(), call.now);
    let visible: Vec<Request> = all.into_iter().filter(|r| can.read || can.approve || r.requested_by == actor.name()).collect();
    Answer::json(200, serde_json::to_value(RequestList { requests: visible }).unwrap_or_default())
}

fn refusal(r: Refusal) -> Answer {
    match r {
        Refusal::NotFound => Answer::error(404, "not_found", "no such request"),
        Refusal::NotPending(s) => Answer::error(409, "conflict", format!("the request is {} already", serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())),
        Refusal::NotYours => Answer::error(403, "forbidden", "only the requester can pick up the secret"),
        Refusal::Gone => Answer::error(410, "gone", "the secret was picked up already, or its hour has passed: rotate the credential for a new one"),
    }
}

fn decide(m: &Manager, call: &Call<'_>, actor: &Actor, id: &str, approve: bool) -> Answer {
    if !actor.can().approve {
        return Answer::error(403, "forbidden", "answering requests needs api_access:approve").with_target(id);
    }
    let r = match m.queue.pending(id, call.now) {
        Ok(r) => r,
        Err(e) => return refusal(e).with_target(id),
    };
    if r.requested_by == actor.name() {
        return Answer::error(403, "forbidden", "a request cannot be approved or denied by its requester").with_target(&r.target);
    }
    let changes = json!({ "status": ["pending", if approve { "approved" } else { "denied" }], "requested_by": [null, r.requested_by] });
    if !approve {
        return match m.queue.decide(id, false, actor.name(), None, call.now) {
            Ok(r) => Answer { changes, ..Answer::json(200, json!({ "request": r })) }.with_target(&r.target),
            Err(e) => Answer::error(500, "server_error", e),
        };
    }
    let (store, view) = match read(m, &call.snap) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let secret = match r.action.as_str() {
        "create" => {
            let Some((kind, mut entry)) = entry_from_json(&r.change) else {
                return Answer::error(500, "server_error", "the request's change cannot be read");
            };
            let secret = new_secret(kind, call.snap.settings.environment);
            entry.hash = match hash_secret(kind, &secret) {
                Ok(h) => h,
                Err(e) => return Answer::error(500, "server_error", e),
            };
            entry.created_at = Some(rfc3339(call.now));
            if let Err(e) = store.apply(&Change::Create { kind, entry }, None, call.now) {
                return store_error(e).with_target(&r.target);
            }
            Some(secret)
        }
        _ => {
            let ed = edit_from_json(&r.change);
            if let Err(a) = apply_over(&store, &view, &r.target, &Change::Edit { name: r.target.clone(), edit: ed }, call.now) {
                return a.with_target(&r.target);
            }
            None
        }
    };
    match m.queue.decide(id, true, actor.name(), secret, call.now) {
        Ok(r) => Answer { changes, wrote: true, ..Answer::json(200, json!({ "request": r })) }.with_target(&r.target),
        Err(e) => Answer::error(500, "server_error", e),
    }
}

fn edit_from_json(v: &Value) -> EntryEdit {
    let list = |k: &str| -> Option<Vec<String>> { v.get(k)?.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()) };
    let opt = |k: &str| -> Option<Option<String>> { v.get(k).map(|x| x.as_str().filter(|s| !s.is_empty()).map(str::to_string)) };
    EntryEdit {
        roles: list("roles"),
        permissions: list("permissions"),
        allowed_ips: v.get("allowed_ips").map(|x| if x.is_null() { None } else { list("allowed_ips") }),
        description: opt("description"),
        notes: opt("notes"),
    }
}

fn pickup(m: &Manager, call: &Call<'_>, actor: &Actor, id: &str) -> Answer {
    match m.queue.pickup(id, actor.name(), call.now) {
        Ok((credential, secret)) => {
            Answer { changes: json!({ "secret": [null, "picked up"] }), ..Answer::json(200, serde_json::to_value(Pickup { credential: credential.clone(), secret }).unwrap_or_default()) }
                .with_target(&credential)
        }
        Err(e) => refusal(e).with_target(id),
    }
}

// ---------------------------------------------------------------------------------
// OpenAPI 3.1, generated from the types and the paths below.

#[utoipa::path(get, path = "/api/v1/credentials", params(("kind" = Option<String>, Query, description = "client or api_key"), ("user" = Option<String>, Query)), responses((status = 200, body = CredentialList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub fn doc_list() {}
#[utoipa::path(post, path = "/api/v1/credentials", request_body = CreateBody, responses((status = 201, description = "created; the secret is shown this once", body = WithSecret), (status = 202, description = "waiting for approval", body = RequestAnswer), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub fn doc_create() {}
#[utoipa::path(get, path = "/api/v1/credentials/{name}", params(("name" = String, Path)), responses((status = 200, body = CredentialAnswer), (status = 404, body = ErrorBody)))]
pub fn doc_show() {}
#[utoipa::path(patch, path = "/api/v1/credentials/{name}", params(("name" = String, Path), ("If-Match" = Option<String>, Header)), request_body = PatchBody, responses((status = 200, body = CredentialAnswer), (status = 202, body = RequestAnswer), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub fn doc_edit() {}
#[utoipa::path(delete, path = "/api/v1/credentials/{name}", params(("name" = String, Path), ("If-Match" = Option<String>, Header)), responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub fn doc_delete() {}
#[utoipa::path(post, path = "/api/v1/credentials/{name}/disable", params(("name" = String, Path)), responses((status = 200, body = CredentialAnswer)))]
pub fn doc_disable() {}
#[utoipa::path(post, path = "/api/v1/credentials/{name}/enable", params(("name" = String, Path)), responses((status = 200, body = CredentialAnswer)))]
pub fn doc_enable() {}
#[utoipa::path(post, path = "/api/v1/credentials/{name}/rotate", params(("name" = String, Path)), request_body = RotateBody, responses((status = 200, description = "the new secret, shown this once", body = WithSecret)))]
pub fn doc_rotate() {}
#[utoipa::path(get, path = "/api/v1/requests", responses((status = 200, body = RequestList)))]
pub fn doc_requests() {}
#[utoipa::path(post, path = "/api/v1/requests/{id}/approve", params(("id" = String, Path)), responses((status = 200, body = RequestAnswer), (status = 403, description = "no api_access:approve, or one's own request", body = ErrorBody)))]
pub fn doc_approve() {}
#[utoipa::path(post, path = "/api/v1/requests/{id}/deny", params(("id" = String, Path)), responses((status = 200, body = RequestAnswer)))]
pub fn doc_deny() {}
#[utoipa::path(post, path = "/api/v1/requests/{id}/secret", params(("id" = String, Path)), responses((status = 200, description = "the secret, once", body = Pickup), (status = 410, description = "picked up already", body = ErrorBody)))]
pub fn doc_pickup() {}
#[utoipa::path(get, path = "/api/v1/roles", responses((status = 200, body = Roles)))]
pub fn doc_roles() {}
#[utoipa::path(post, path = "/api/v1/session", request_body = SignIn, responses((status = 200, description = "signed in; sets the HttpOnly, SameSite=Strict session cookie", body = SessionOut), (status = 401, body = ErrorBody)))]
pub fn doc_sign_in() {}
#[utoipa::path(get, path = "/api/v1/session", responses((status = 200, body = SessionOut), (status = 401, body = ErrorBody)))]
pub fn doc_session() {}
#[utoipa::path(delete, path = "/api/v1/session", responses((status = 204, description = "signed out")))]
pub fn doc_sign_out() {}
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "this document")))]
pub fn doc_openapi() {}

/// The API as OpenAPI 3.1.
#[derive(OpenApi)]
#[openapi(
    info(title = "portcullis management API", description = "The API Access screen's API (SPEC §9): clients, API keys, approvals and roles. Authenticate with x-api-key, Authorization: Bearer, or the console's session cookie (writes then need X-CSRF-Token)."),
    paths(doc_list, doc_create, doc_show, doc_edit, doc_delete, doc_disable, doc_enable, doc_rotate, doc_requests, doc_approve, doc_deny, doc_pickup, doc_roles, doc_sign_in, doc_session, doc_sign_out, doc_openapi),
    components(schemas(CredentialOut, CredentialList, CredentialAnswer, WithSecret, CreateBody, PatchBody, RotateBody, RequestAnswer, RequestList, Request, approval::Status, Pickup, RoleOut, GridRow, Roles, SignIn, SessionOut, Can, ErrorBody))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_3_1_and_names_every_endpoint() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
        let paths = doc["paths"].as_object().unwrap();
        for p in ["/api/v1/credentials", "/api/v1/credentials/{name}", "/api/v1/credentials/{name}/rotate", "/api/v1/requests/{id}/secret", "/api/v1/roles", "/api/v1/openapi.json", "/api/v1/session"] {
            assert!(paths.contains_key(p), "{p}");
        }
        assert!(doc["components"]["schemas"]["CredentialOut"]["properties"].get("secret").is_none(), "no secret in a credential");
    }

    #[test]
    fn expiry_is_a_date_for_whole_days_and_a_time_otherwise() {
        let now = 1_800_000_000; // 2027-01-15T08:00:00Z
        assert_eq!(expiry_text(now, 365 * 86_400), "2028-01-15");
        assert_eq!(expiry_text(now, 3600), "2027-01-15T09:00:00Z");
    }

    #[test]
    fn loader_messages_name_their_field() {
        assert_eq!(field_of("api key \"k\": unknown role \"x\""), "roles");
        assert_eq!(field_of("api key \"k\": allowed_ips: \"x\" is not an IP address or CIDR"), "allowed_ips");
        assert_eq!(field_of("something else"), "credential");
    }
}
