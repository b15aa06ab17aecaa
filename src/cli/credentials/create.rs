//! `credentials create`: a new client or API key, its secret printed once.
use std::fmt::Write as _;
use std::io::Write;

use serde_json::json;

use super::*;

pub(super) fn create(loc: &Location, c: &CreateArgs, now: i64, out: &mut dyn Write) -> Res<()> {
    let kind = c.kind;
    let cur = loc.store.read(false)?;

    // Checks that name the flag; the loader's validation of the whole file follows.
    let name = c.name.trim();
    if !valid_name(name) {
        return Err(format!(
            "--name {name:?}: a name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"
        )
        .into());
    }
    if let Some((k, _)) = change::locate(&cur.raw, name) {
        return Err(format!("a credential named {name:?} already exists (an {}); names are unique across clients and API keys", k.label()).into());
    }
    let mut roles: Vec<String> = Vec::new();
    for r in c
        .roles
        .iter()
        .map(|r| r.trim().to_string())
        .chain(c.preset.map(|p| p.role().to_string()))
    {
        if builtin_role(&r).is_none() && !cur.raw.roles.contains_key(&r) {
            let known: Vec<&str> = BUILTIN_ROLES
                .iter()
                .copied()
                .chain(cur.raw.roles.keys().map(String::as_str))
                .collect();
            return Err(format!("--role {r:?}: unknown role (known: {})", known.join(", ")).into());
        }
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    let mut permissions = Vec::new();
    for p in &c.permissions {
        Permission::parse(p.trim()).map_err(|e| format!("--permission: {e}"))?;
        permissions.push(p.trim().to_string());
    }
    let ips = allow_ips(&c.allow_ips, loc.store.env())?;
    if ips.is_empty() && loc.store.env() == Environment::Production {
        return Err("--allow-ip is required: in production every credential must list the addresses it may be used from".into());
    }
    if let Some(d) = &c.description {
        let n = d.chars().count();
        if !(5..=50).contains(&n) {
            return Err(format!("--description must be 5 to 50 characters, not {n}").into());
        }
    }
    if let Some(u) = &c.user {
        if kind == Kind::Client {
            return Err("--user: only an API key can be linked to a user".into());
        }
        if !cur.raw.users.iter().any(|x| x.name == u.as_str()) {
            return Err(format!("--user {u:?}: no such user in {}", loc.label()).into());
        }
    }
    if roles.is_empty() && permissions.is_empty() && c.user.is_none() {
        return Err(
            "give it some access: --role, --preset, --permission (or, for an API key, --user)"
                .into(),
        );
    }
    let expires = expiry_text(c, now)?;

    let secret = new_secret(kind, loc.store.env());
    let hash = hash_secret(kind, &secret)?;

    let entry = NewEntry {
        name: name.to_string(),
        hash,
        user: c.user.clone(),
        roles,
        permissions,
        allowed_ips: ips,
        expires: expires.clone(),
        description: c.description.clone(),
        notes: c.notes.clone(),
        ..Default::default()
    };
    // Any version: concurrent creates all land (the lock serializes them, and the loader's
    // validation under it refuses a name taken in between).
    let applied = loc.store.apply(&Change::Create { kind, entry }, None, now)?;
    let (store, kept) = (applied.store, applied.comments_kept);
    note_comments_lost(loc, kept);

    let grants = store.grants_of(name);
    let curl = curl_line(loc, kind, name, &secret, &grants);
    let client_id = match (&loc.main, kind) {
        (Some(m), Kind::Client) => format!("{}{name}", m.client_id_prefix),
        _ => name.to_string(),
    };
    if c.output == Output::Json {
        let v = json!({
            "kind": kind.json(), "name": name, "client_id": (kind == Kind::Client).then_some(&client_id),
            "secret": secret, "expires": expires, "file": loc.label(), "curl": curl,
        });
        return emit(out, &format!("{v:#}\n"));
    }
    let mut s = String::new();
    let what = match kind {
        Kind::Client => "client secret",
        Kind::ApiKey => "key",
    };
    let _ = writeln!(
        s,
        "Created {} {name:?} in {} (expires {expires}).",
        kind.label(),
        loc.label()
    );
    if kind == Kind::Client {
        let _ = writeln!(s, "Client id: {client_id}");
    }
    let _ = writeln!(s, "\n    {secret}\n");
    let _ = writeln!(
        s,
        "This is the only time the {what} is shown: store it now (e.g. in a secret manager)."
    );
    let _ = writeln!(
        s,
        "Only its hash is kept. A running sidecar accepts it within a second (hot reload)."
    );
    s.push_str(&try_it(kind, &curl));
    if kind == Kind::Client
        && loc
            .main
            .as_ref()
            .is_some_and(|m| m.token_endpoint.is_none())
    {
        let _ = writeln!(s, "\nNote: the config has no tokens.signing_key, so no token endpoint: create one with `portcullis keygen`.");
    }
    emit(out, &s)
}

/// A ready `curl` line: the token request for a client; for a key, a request to a route
/// its permissions allow (placeholders for ids it does not pin).
/// `--allow-ip` values (commas allowed), checked as the loader checks them.
pub(super) fn allow_ips(given: &[String], env: Environment) -> Res<Vec<String>> {
    let ips: Vec<String> = given
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ips.len() > MAX_ALLOWED_IPS {
        return Err(format!("--allow-ip: {} entries given, at most {MAX_ALLOWED_IPS} are allowed", ips.len()).into());
    }
    for ip in &ips {
        let net = parse_net(ip).map_err(|e| format!("--allow-ip: {e}"))?;
        if net.prefix_len() == 0 && env == Environment::Production {
            return Err(format!("--allow-ip {ip}: in production no entry may allow every address").into());
        }
    }
    Ok(ips)
}

/// The ready-to-run line after a new secret: how to get a token, or how to try the key.
pub(super) fn try_it(kind: Kind, curl: &str) -> String {
    format!("\n{}:\n  {curl}\n", if kind == Kind::Client { "Get a token" } else { "Try it" })
}

pub(super) fn curl_line(
    loc: &Location,
    kind: Kind,
    name: &str,
    secret: &str,
    grants: &[Permission],
) -> String {
    let base = loc
        .main
        .as_ref()
        .map_or("http://127.0.0.1:8080".to_string(), |m| m.base_url.clone());
    match kind {
        Kind::Client => {
            let (prefix, endpoint) = loc.main.as_ref().map_or(("", "/oauth/token"), |m| {
                (
                    m.client_id_prefix.as_str(),
                    m.token_endpoint.as_deref().unwrap_or("/oauth/token"),
                )
            });
            format!("curl -u '{prefix}{name}:{secret}' -d grant_type=client_credentials '{base}{endpoint}'")
        }
        Kind::ApiKey => {
            let (method, path) = loc
                .main
                .as_ref()
                .and_then(|m| sample_route(&m.routes, grants))
                .unwrap_or_else(|| ("GET".to_string(), "/".to_string()));
            let x = if method == "GET" {
                String::new()
            } else {
                format!("-X {method} ")
            };
            format!("curl {x}-H 'x-api-key: {secret}' '{base}{path}'")
        }
    }
}

/// The first route (GET ones first) that one of `grants` allows, with its path filled in.
fn sample_route(routes: &RouteTable, grants: &[Permission]) -> Option<(String, String)> {
    let mut candidates: Vec<_> = routes
        .routes
        .iter()
        .filter(|r| !r.public && r.require.is_some())
        .collect();
    candidates.sort_by_key(|r| r.method.as_ref() != Some(&http::Method::GET));
    for r in candidates {
        let need = r.require.as_ref()?;
        for g in grants {
            let pinned = |scope: Scope| g.resource.as_deref().filter(|_| g.scope == scope);
            let has = |p: &str| r.template.contains(&format!("{{{p}}}"));
            let vault =
                has(&r.vault_param).then(|| pinned(Scope::Vault).unwrap_or("VAULT_ID").to_string());
            let key = has(&r.key_param).then(|| pinned(Scope::Key).unwrap_or("KEY_ID").to_string());
            let target = Target {
                vault: vault.as_deref(),
                key: key.as_deref(),
            };
            if g.check(need, &target).is_ok() {
                let mut path = r.template.clone();
                if let Some(v) = &vault {
                    path = path.replace(&format!("{{{}}}", r.vault_param), v);
                }
                if let Some(k) = &key {
                    path = path.replace(&format!("{{{}}}", r.key_param), k);
                }
                // Any other parameter: its name in capitals.
                while let (Some(a), Some(b)) = (path.find('{'), path.find('}')) {
                    if b < a {
                        break;
                    }
                    let p = path[a + 1..b].trim_start_matches('*').to_ascii_uppercase();
                    path.replace_range(a..=b, &p);
                }
                let method = r.method.as_ref().map_or("GET", |m| m.as_str()).to_string();
                return Some((method, path));
            }
        }
    }
    None
}
