//! `portcullis explain`: the decision the config would take for one request by one
//! credential, and why, step by step — the answer to "why is my integration getting 403?".
//!
//! The steps (request sanity, route, credential, allowlist, grants) are described with the
//! pipeline's own building blocks ([`sanity::check_target`], [`RouteTable::lookup`],
//! [`Credential::allows_ip`], [`Permission::check`]); the verdict is the real pipeline's:
//! the named credential is given a throwaway secret in a private copy of the loaded
//! snapshot, and the request is run through [`token::endpoint::token`] (for a client) and
//! [`pipeline::decide`], so the answer cannot drift from what the sidecar does.
//!
//! Exit status: 0 allowed, 1 denied (also when shadow mode would forward it anyway),
//! 2 bad input (unreadable or invalid config, unknown credential, bad method, address or time).
use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::DateTime;
use http::{HeaderMap, HeaderValue, Method};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::{self, Credential, CredentialKind, Environment, Mode, RouteMatch, RouteTable, Snapshot};
use crate::permission::{Mismatch, Permission, Requirement, Scope, TypeSel};
use crate::pipeline::{self, sanity, RequestView};
use crate::rejection::{Reason, Rejection};
use crate::token;

/// `portcullis explain`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The main config (portcullis.yaml).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The client id or API key name.
    #[arg(long)]
    pub credential: String,
    /// The request method, e.g. GET.
    pub method: String,
    /// The request target as the caller sends it (path, optional query), e.g. /v1/vaults/v-1/balances.
    pub path: String,
    /// The client address (after trusted proxies). Default: one the credential's allowlist permits.
    #[arg(long)]
    pub from: Option<String>,
    /// Judge at this time (RFC 3339, e.g. 2027-01-01T00:00:00Z) instead of now.
    #[arg(long)]
    pub at: Option<String>,
}

/// Runs `explain`, printing to stdout; returns the exit status.
pub fn run(args: &Args) -> i32 {
    let mut out = std::io::stdout();
    match explain(args, &mut out) {
        Ok(code) => code,
        Err(msg) => {
            let _ = out.flush();
            eprintln!("portcullis explain: {msg}");
            2
        }
    }
}

/// What the real pipeline decided.
enum Verdict {
    Allowed,
    /// Denied by policy, forwarded anyway (shadow mode).
    Shadow(Rejection),
    Denied(Rejection),
    /// The token endpoint refused the client: status, OAuth error code, description.
    TokenRefused(u16, String, String),
    /// No signing key: the client can never hold a token of this sidecar.
    NoTokens,
}

/// Writes the explanation to `out`; returns the exit status (0 allowed, 1 denied), or the
/// message for bad input (exit status 2).
pub fn explain(args: &Args, out: &mut dyn Write) -> Result<i32, String> {
    let now = match &args.at {
        None => config::unix_now(),
        Some(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.timestamp())
            .map_err(|_| {
                format!("--at {s:?} is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)")
            })?,
    };
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", args.method))?;
    let mut snap = config::load(&args.config, now)
        .map_err(|e| format!("the config is not valid, so nothing can be explained:\n{e}"))?;
    let cred = snap
        .credentials
        .all
        .iter()
        .find(|c| *c.id == *args.credential)
        .cloned()
        .ok_or_else(|| {
            format!(
                "no client or API key named {:?} in {}",
                args.credential,
                snap.files
                    .get(1)
                    .map_or("the credentials file".into(), |p| p.display().to_string())
            )
        })?;
    let (ip, ip_given) = match &args.from {
        Some(s) => (
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("--from {s:?} is not an IP address"))?,
            true,
        ),
        None => (
            cred.allowed_ips
                .as_ref()
                .and_then(|n| n.first())
                .map_or(IpAddr::from([127, 0, 0, 1]), |n| n.addr()),
            false,
        ),
    };

    let mut s = String::new();
    let kind = kind_label(cred.kind);
    let _ = writeln!(
        s,
        "{method} {} by {kind} {:?} from {ip} at {}",
        args.path,
        cred.id,
        rfc3339(now)
    );
    let _ = writeln!(
        s,
        "config: {} ({}, mode {})\n",
        args.config.display(),
        if snap.settings.environment == Environment::Production {
            "production"
        } else {
            "sandbox"
        },
        mode_label(snap.settings.mode)
    );

    // 1. Request sanity.
    let path = match sanity::check_target(args.path.as_bytes()) {
        Ok(p) => {
            let what = match &p {
                std::borrow::Cow::Borrowed(_) => format!("ok: the path {p} is well formed"),
                std::borrow::Cow::Owned(_) => {
                    format!("ok: the path is well formed; matched and forwarded as {p} (encoded letters decoded)")
                }
            };
            step(&mut s, 1, "request", what);
            Some(p.to_string())
        }
        Err(r) => {
            step(
                &mut s,
                1,
                "request",
                format!(
                    "REFUSED: {} (400 invalid_request, before anything else)",
                    r.description
                ),
            );
            None
        }
    };

    // 2. Route.
    let routes: &RouteTable = &snap.routes;
    let matched: Option<RouteMatch<'_>> = path.as_deref().and_then(|p| routes.lookup(&method, p));
    let mut need: Option<(Requirement, Option<String>, Option<String>)> = None;
    match (&path, &matched) {
        (None, _) => step(&mut s, 2, "route", "not looked up (the request is refused first)".into()),
        (Some(p), None) => step(
            &mut s,
            2,
            "route",
            format!("NONE: no route matches {method} {p}; anything not listed is denied (403 route_not_allowed, checked after the credential and the address)"),
        ),
        (Some(_), Some(m)) if m.route.public => step(
            &mut s,
            2,
            "route",
            format!("{:?} is public: forwarded without a credential", m.route.id),
        ),
        (Some(_), Some(m)) => {
            let req = m.route.require.clone();
            let mut t = format!("{:?} matches", m.route.id);
            if let Some(r) = &req {
                let _ = write!(t, "; it requires {r}");
            }
            let _ = write!(t, "; {}", target_text(m.vault.as_deref(), m.key.as_deref(), &m.route.vault_param, &m.route.key_param));
            if let Some(mode) = m.route.mode {
                let _ = write!(t, "; route mode {}", mode_label(mode));
            }
            step(&mut s, 2, "route", t);
            need = req.map(|r| (r, m.vault.as_deref().map(str::to_string), m.key.as_deref().map(str::to_string)));
        }
    }
    let public = matched.as_ref().is_some_and(|m| m.route.public);
    drop(matched);

    // 3. Credential.
    step(&mut s, 3, "credential", credential_text(&snap, &cred, now));

    // 4. Allowlist.
    let allow = match (&cred.allowed_ips, ip_given) {
        (None, _) => "ok: it may be used from any address".to_string(),
        (Some(_), false) => {
            format!("not checked: no --from given (assuming {ip}, which it allows)")
        }
        (Some(nets), true) => match nets.iter().find(|n| n.contains(&ip)) {
            Some(n) => format!("ok: {ip} is in {n}"),
            None => format!(
                "DENIED: {ip} is not in its allowed_ips [{}] (403 ip_not_allowed)",
                nets.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    step(&mut s, 4, "allowlist", allow);

    // 5. Grants.
    match &need {
        Some((req, vault, key)) => {
            let target = crate::permission::Target {
                vault: vault.as_deref(),
                key: key.as_deref(),
            };
            let on = match (vault, key) {
                (None, None) => "org-wide (the route names no vault or key)".to_string(),
                _ => target_text(vault.as_deref(), key.as_deref(), "vault_id", "key_id"),
            };
            let what = if cred.kind == CredentialKind::Client {
                " (a token with the client's full scope)"
            } else {
                ""
            };
            let ok = cred.grants.iter().any(|g| g.grants(req, &target));
            step(
                &mut s,
                5,
                "permission",
                format!(
                    "{}: needs {req}, {on}; {} grant(s){what}:",
                    if ok { "ok" } else { "DENIED" },
                    cred.grants.len()
                ),
            );
            if cred.grants.is_empty() {
                let _ = writeln!(s, "        (none: it has no roles, permissions or user)");
            }
            let width = cred
                .grants
                .iter()
                .map(|g| g.as_str().len())
                .max()
                .unwrap_or(0);
            for g in cred.grants.iter() {
                let why = match g.check(req, &target) {
                    Ok(()) => "match".to_string(),
                    Err(m) => format!(
                        "no: {}",
                        mismatch_text(g, m, req, vault.as_deref(), key.as_deref())
                    ),
                };
                let _ = writeln!(s, "        {:<width$}  {why}", g.as_str());
            }
        }
        None if public => step(&mut s, 5, "permission", "not needed (public route)".into()),
        None => step(&mut s, 5, "permission", "not checked (no route)".into()),
    }

    // The verdict of the real pipeline.
    let verdict = decide(&mut snap, &cred, &method, &args.path, ip, now);
    s.push('\n');
    let code = match &verdict {
        Verdict::Allowed => {
            let _ = writeln!(
                s,
                "decision: ALLOWED (forwarded upstream as {kind} {:?})",
                cred.id
            );
            0
        }
        Verdict::Shadow(r) => {
            let _ = writeln!(
                s,
                "decision: DENIED by the policy: {} {}: {}",
                r.reason.status(),
                r.reason.code(),
                r.description
            );
            let _ = writeln!(s, "          (shadow mode: the request is forwarded anyway; the denial is logged and counted)");
            1
        }
        Verdict::Denied(r) => {
            let _ = writeln!(
                s,
                "decision: DENIED: {} {}: {}",
                r.reason.status(),
                r.reason.code(),
                r.description
            );
            1
        }
        Verdict::TokenRefused(status, code, desc) => {
            let _ = writeln!(
                s,
                "decision: DENIED at the token endpoint: {status} {code}: {desc}"
            );
            let _ = writeln!(
                s,
                "          (the client gets no token, so it cannot make this request)"
            );
            1
        }
        Verdict::NoTokens => {
            let _ = writeln!(
                s,
                "decision: DENIED: this config issues no tokens (no tokens.signing_key), so a client cannot authenticate (401 missing_credential)"
            );
            1
        }
    };
    if let Some(h) = hint(
        &verdict,
        &cred,
        &args.config,
        &method,
        path.as_deref(),
        need.as_ref(),
        ip,
        now,
    ) {
        let _ = writeln!(s, "hint: {h}");
    }
    if let (Verdict::TokenRefused(..), true) = (&verdict, cred.disabled) {
        if let Some(t) = earlier_token(&snap, &cred, &method, &args.path, ip, now) {
            let _ = writeln!(s, "note: {t}");
        }
    }
    out.write_all(s.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("cannot write the output: {e}"))?;
    Ok(code)
}

fn step(s: &mut String, n: u8, what: &str, text: String) {
    let _ = writeln!(s, "{n}. {:<12}{text}", format!("{what}:"));
}

fn kind_label(k: CredentialKind) -> &'static str {
    match k {
        CredentialKind::Client => "client",
        CredentialKind::ApiKey => "api key",
        CredentialKind::External => "external",
    }
}

fn mode_label(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow",
    }
}

fn rfc3339(t: i64) -> String {
    DateTime::from_timestamp(t, 0).map_or_else(
        || t.to_string(),
        |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

fn target_text(
    vault: Option<&str>,
    key: Option<&str>,
    vault_param: &str,
    key_param: &str,
) -> String {
    match (vault, key) {
        (None, None) => "it names no vault or key".to_string(),
        (Some(v), None) => format!("vault {v:?} (from {{{vault_param}}})"),
        (None, Some(k)) => format!("key {k:?} (from {{{key_param}}})"),
        (Some(v), Some(k)) => {
            format!("vault {v:?} (from {{{vault_param}}}) and key {k:?} (from {{{key_param}}})")
        }
    }
}

fn credential_text(snap: &Snapshot, c: &Credential, now: i64) -> String {
    let mut problems = Vec::new();
    if c.disabled {
        problems.push("DISABLED".to_string());
    }
    if c.is_expired(now) {
        problems.push(format!("EXPIRED ({})", c.expires_text));
    }
    if c.user_missing {
        problems.push(format!(
            "linked to user {:?}, WHICH DOES NOT EXIST",
            c.user.as_deref().unwrap_or("")
        ));
    }
    let kind = kind_label(c.kind);
    let mut t = if problems.is_empty() {
        let left = c.expires_at - now;
        let left = if left >= 2 * 86_400 {
            format!("{} days", left / 86_400)
        } else {
            format!("{} hours", left / 3600)
        };
        format!(
            "ok: {kind} {:?}, enabled, expires {} (in {left})",
            c.id, c.expires_text
        )
    } else {
        format!("{kind} {:?}: {}", c.id, problems.join(", "))
    };
    if let (Some(u), false) = (&c.user, c.user_missing) {
        let _ = write!(
            t,
            "; acts as user {u:?} (with the user's current permissions)"
        );
    }
    if !c.roles.is_empty() {
        let _ = write!(t, "; roles {}", c.roles.join(", "));
    }
    if c.kind == CredentialKind::Client {
        match snap.tokens.as_ref().filter(|t| t.signer.is_some()) {
            None => t.push_str("; this config has no token endpoint (no tokens.signing_key)"),
            Some(ts) => {
                let _ = write!(
                    t,
                    "; gets tokens as client_id {:?} at {}",
                    format!("{}{}", ts.client_id_prefix, c.id),
                    ts.endpoint
                );
            }
        }
    }
    t
}

fn type_text(t: &TypeSel) -> &str {
    match t {
        TypeSel::Any => "*",
        TypeSel::Named(n) => n,
    }
}

/// Why grant `g` does not cover `req`, in words.
fn mismatch_text(
    g: &Permission,
    m: Mismatch,
    req: &Requirement,
    vault: Option<&str>,
    key: Option<&str>,
) -> String {
    let res = g.resource.as_deref().unwrap_or("");
    match m {
        Mismatch::Type => format!(
            "type {}, the route needs {}",
            type_text(&g.rtype),
            req.rtype
        ),
        Mismatch::Action => {
            let actions = g
                .as_str()
                .split('@')
                .next()
                .and_then(|h| h.split_once(':'))
                .map_or("", |(_, a)| a);
            format!("action {actions} does not include {}", req.action.as_str())
        }
        Mismatch::RouteNamesNoVault => "vault-scoped, and the route names no vault".to_string(),
        Mismatch::RouteNamesNoKey => "key-scoped, and the route names no key".to_string(),
        Mismatch::OtherVault => format!(
            "for vault {res:?}, the route names vault {:?}",
            vault.unwrap_or("")
        ),
        Mismatch::OtherKey => format!(
            "for key {res:?}, the route names key {:?}",
            key.unwrap_or("")
        ),
    }
}

fn probe_secret() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    format!("explain-probe-{}", hex::encode(b))
}

fn decide_with(
    snap: &Snapshot,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    ip: IpAddr,
    now: i64,
) -> Verdict {
    let view = RequestView {
        method,
        target: target.as_bytes(),
        headers,
        peer: ip,
        checked_path: None,
    };
    let d = pipeline::decide(snap, &view, now);
    match (d.result, d.shadow_denied) {
        (Ok(_), Some(r)) => Verdict::Shadow(r),
        (Ok(_), None) => Verdict::Allowed,
        (Err(r), _) => Verdict::Denied(r),
    }
}

/// Runs the request through the real token endpoint and pipeline, with a throwaway secret
/// given to the credential in this private snapshot.
fn decide(
    snap: &mut Snapshot,
    cred: &Arc<Credential>,
    method: &Method,
    target: &str,
    ip: IpAddr,
    now: i64,
) -> Verdict {
    let probe = probe_secret();
    let hash: [u8; 32] = Sha256::digest(probe.as_bytes()).into();
    let mut headers = HeaderMap::new();
    match cred.kind {
        CredentialKind::ApiKey => {
            snap.credentials.add_probe_secret(cred, hash);
            if let Ok(v) = HeaderValue::from_str(&probe) {
                headers.insert("x-api-key", v);
            }
            decide_with(snap, method, target, &headers, ip, now)
        }
        CredentialKind::Client | CredentialKind::External => {
            let Some(prefix) = snap
                .tokens
                .as_ref()
                .filter(|t| t.signer.is_some())
                .map(|t| t.client_id_prefix.clone())
            else {
                return Verdict::NoTokens;
            };
            snap.credentials.add_probe_secret(cred, hash);
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &format!("{prefix}{}", cred.id))
                .append_pair("client_secret", &probe)
                .finish();
            let mut th = HeaderMap::new();
            th.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            let reply = token::endpoint::token(snap, &th, body.as_bytes(), ip, now, "explain");
            let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            if reply.status != 200 {
                let field = |k: &str| json[k].as_str().unwrap_or("").to_string();
                return Verdict::TokenRefused(
                    reply.status,
                    field("error"),
                    field("error_description"),
                );
            }
            let Some(tok) = json["access_token"].as_str() else {
                return Verdict::TokenRefused(
                    reply.status,
                    "server_error".into(),
                    "no access_token in the reply".into(),
                );
            };
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {tok}")) {
                headers.insert(http::header::AUTHORIZATION, v);
            }
            decide_with(snap, method, target, &headers, ip, now)
        }
    }
}

/// For a disabled client: what a token issued before it was disabled would get now.
fn earlier_token(
    snap: &Snapshot,
    cred: &Credential,
    method: &Method,
    target: &str,
    ip: IpAddr,
    now: i64,
) -> Option<String> {
    let ts = snap.tokens.as_ref()?;
    let signer = ts.signer.as_ref()?;
    if cred.is_expired(now) {
        return None;
    }
    let scope: Vec<&str> = cred.grants.iter().map(|g| g.as_str()).collect();
    let client_id = format!("{}{}", ts.client_id_prefix, cred.id);
    let exp = (now + ts.lifetime as i64).min(cred.expires_at);
    let tok = token::endpoint::sign(ts, signer, &client_id, &scope.join(" "), now, exp).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {tok}")).ok()?,
    );
    let what = match decide_with(snap, method, target, &headers, ip, now) {
        Verdict::Allowed => "ALLOWED".to_string(),
        Verdict::Shadow(r) | Verdict::Denied(r) => {
            format!("denied ({} {})", r.reason.status(), r.reason.code())
        }
        _ => return None,
    };
    Some(if ts.revoke_on_disable {
        format!("tokens issued before it was disabled are rejected too (tokens.revoke_on_disable): {what}")
    } else {
        format!("a token issued before it was disabled keeps working until it expires (at most {}s): this request with it would be {what}", ts.lifetime)
    })
}

#[allow(clippy::too_many_arguments)]
fn hint(
    v: &Verdict,
    cred: &Credential,
    config: &std::path::Path,
    method: &Method,
    path: Option<&str>,
    need: Option<&(Requirement, Option<String>, Option<String>)>,
    ip: IpAddr,
    now: i64,
) -> Option<String> {
    let cfg = config.display();
    let name = &cred.id;
    let state = || {
        if cred.disabled {
            Some(format!(
                "enable it: portcullis credentials --config {cfg} enable {name}"
            ))
        } else if cred.is_expired(now) {
            Some(format!(
                "it expired ({}): set a later expires, or create a new credential",
                cred.expires_text
            ))
        } else if cred.user_missing {
            Some(format!(
                "add user {:?} to users:, or link the key to a user that exists",
                cred.user.as_deref().unwrap_or("")
            ))
        } else {
            None
        }
    };
    match v {
        Verdict::Allowed => None,
        Verdict::NoTokens => Some(format!("create a signing key (portcullis keygen --out keys/signing.pem) and set tokens.signing_key in {cfg}")),
        Verdict::TokenRefused(..) => state().or_else(|| {
            (!cred.allows_ip(ip)).then(|| format!("add {ip} (or its network) to the allowed_ips of {name}"))
        }),
        Verdict::Shadow(r) | Verdict::Denied(r) => match r.reason {
            Reason::InvalidApiKey | Reason::InvalidToken | Reason::MissingCredential => state(),
            Reason::IpNotAllowed => Some(format!("add {ip} (or its network) to the allowed_ips of {name}")),
            Reason::RouteNotAllowed => Some(format!(
                "add a route for \"{method} {}\" to routes: in {cfg}",
                path.unwrap_or("")
            )),
            Reason::InsufficientScope => need.map(|(req, vault, key)| {
                let scoped = match (vault, key) {
                    (Some(v), _) => format!("{req}@vault/{v}"),
                    (None, Some(k)) => format!("{req}@key/{k}"),
                    (None, None) => req.to_string(),
                };
                let scoped = Permission::parse(&scoped).map_or(req.to_string(), |p| {
                    if p.scope == Scope::Org { req.to_string() } else { scoped }
                });
                format!("grant {name} {req} (org-wide) or {scoped} (this target only), directly or through a role")
            }),
            Reason::InvalidRequest => Some("send the path exactly as the API expects it: no dot or empty segments, no encoded / or \\".into()),
            _ => None,
        },
    }
}
