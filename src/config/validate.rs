//! Raw structs → [`Snapshot`], reporting every error with its file and line.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate};
use ipnet::IpNet;

use super::error::ConfigError;
use super::gather::Gather;
use super::raw::{At, CredentialsRaw, EntryRaw, ExternalIssuerRaw, MainRaw, ManagementRaw, Place, RouteRaw, StoreRaw, TokensRaw, UserRaw};
use crate::store::Kind;
use super::snapshot::*;
use crate::permission::{builtin_role, Permission, Requirement};

/// Most entries an `allowed_ips` list may hold.
pub const MAX_ALLOWED_IPS: usize = 6;
/// Seconds before expiry at which `check` warns.
pub const EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

/// Collects errors for one file, each placed where its value was read; and remembers
/// what it parsed (a permission string, an expiry) so that the 100,000th credential
/// naming `balances:read@vault/v-7` or `2099-01-01` costs a look-up, not a parse.
pub struct Sink<'a> {
    pub file: &'a Path,
    pub errors: Vec<ConfigError>,
    parsed_permissions: HashMap<String, Permission>,
    parsed_expiries: HashMap<String, Result<i64, String>>,
}

impl<'a> Sink<'a> {
    pub fn new(file: &'a Path) -> Self {
        Sink { file, errors: Vec::new(), parsed_permissions: HashMap::new(), parsed_expiries: HashMap::new() }
    }

    fn permission(&mut self, s: &str) -> Result<Permission, crate::permission::PermissionError> {
        if let Some(p) = self.parsed_permissions.get(s) {
            return Ok(p.clone());
        }
        let p = Permission::parse(s)?;
        self.parsed_permissions.insert(s.to_string(), p.clone());
        Ok(p)
    }

    fn expiry(&mut self, s: &str) -> Result<i64, String> {
        if let Some(e) = self.parsed_expiries.get(s) {
            return e.clone();
        }
        let e = parse_expires(s);
        self.parsed_expiries.insert(s.to_string(), e.clone());
        e
    }
    fn err(&mut self, at: Place, msg: impl Into<String>) {
        self.errors.push(ConfigError::at(self.file, at, msg));
    }
}

/// Whether `name` is a valid credential or user name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Parses `expires`: a bare date is valid through the end of that day UTC; an RFC 3339
/// timestamp is exact. Returns the first instant (unix seconds) at which it is expired.
pub fn parse_expires(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if s.len() == 10 {
            let next = d
                .succ_opt()
                .and_then(|n| n.and_hms_opt(0, 0, 0))
                .ok_or_else(|| format!("expires {s:?} is out of range"))?;
            return Ok(next.and_utc().timestamp());
        }
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|_| format!("expires {s:?} is neither a date (2027-11-22) nor an RFC 3339 timestamp"))
}

/// Parses one `allowed_ips` / `trusted_proxies` entry: an address or a CIDR.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        if n.network() != n.addr() {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                n.trunc()
            ));
        }
        return Ok(n);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// `upstream` as an address, or as a name and port still to be resolved.
fn upstream_target(text: &str) -> Option<UpstreamAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(UpstreamAddr::Resolved(a));
    }
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (host.len() <= 253 && host.split('.').all(label_ok)).then(|| UpstreamAddr::Name(host.to_string(), port))
}

/// Parses a client's `secret_hash`: a `$argon2id$` PHC string or `sha256:<64 hex>`.
/// The error completes a sentence that starts with the field's name.
pub fn parse_secret_hash(s: &str) -> Result<SecretHash, String> {
    if s.starts_with("$argon2id$") {
        let h = argon2::PasswordHash::new(s).map_err(|e| format!("is not a valid argon2id PHC string: {e}"))?;
        crate::token::secret::argon2_cost_ok(&h)?;
        Ok(SecretHash::Argon2(s.to_string()))
    } else {
        parse_sha256(s)
            .map(SecretHash::Sha256)
            .ok_or_else(|| "must be $argon2id$… or sha256:<64 hex>".to_string())
    }
}

/// Parses `sha256:<64 hex>`.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let hexpart = s.strip_prefix("sha256:")?;
    if hexpart.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).ok()?;
    Some(out)
}

fn parse_secs(v: &Option<At<f64>>, default: f64, what: &str, sink: &mut Sink<'_>) -> Duration {
    let at = v.as_ref().map(At::place).unwrap_or_default();
    let v = v.as_deref().copied().unwrap_or(default);
    if !(v > 0.0 && v <= 3600.0) {
        sink.err(at, format!("{what} must be between 0 and 3600 seconds"));
        return Duration::from_secs_f64(default);
    }
    Duration::from_secs_f64(v)
}

/// Validates the main config (everything but the credentials file).
pub fn settings(raw: &MainRaw, base: &Path, sink: &mut Sink<'_>, files: &mut Gather) -> Option<Settings> {
    let MainRaw {
        listen,
        upstream,
        admin_listen,
        environment,
        trusted_proxies,
        credentials_file: _,
        shutdown_grace,
        upstream_timeout,
        upstream_connect_timeout,
        mode,
        tls,
        upstream_tls,
        tokens: _,
        routes: _,
        management,
        store,
        threads,
        work_stealing,
        metrics,
    } = raw;
    let mut ok = true;
    if listen.parse::<SocketAddr>().is_err() {
        sink.err(listen.place(), format!("listen {listen:?} is not an address:port"));
        ok = false;
    }
    let admin_at = admin_listen.as_ref().map(At::place).unwrap_or_default();
    let admin_listen = admin_listen.as_deref().cloned().unwrap_or_else(|| "127.0.0.1:9901".into());
    if admin_listen.parse::<SocketAddr>().is_err() {
        sink.err(admin_at, format!("admin_listen {admin_listen:?} is not an address:port"));
        ok = false;
    }
    // No DNS here (validation does no I/O): an address is taken as it is, a name is
    // checked for form and resolved after the load succeeded (`config::resolve`).
    let upstream_addr = match upstream_target(upstream) {
        Some(a) => Some(a),
        None => {
            sink.err(upstream.place(), format!("upstream {upstream:?} is not an ip:port or a host:port"));
            None
        }
    };
    let environment = match environment.as_ref().map(|e| (e.as_str(), e.place())) {
        None | Some(("sandbox", _)) => Environment::Sandbox,
        Some(("production", _)) => Environment::Production,
        Some((other, at)) => {
            sink.err(
                at,
                format!("environment {other:?} must be sandbox or production"),
            );
            Environment::Sandbox
        }
    };
    let mut proxies = Vec::new();
    for p in trusted_proxies {
        match parse_net(p) {
            Ok(n) => proxies.push(n),
            Err(e) => {
                sink.err(p.place(), format!("trusted_proxies: {e}"));
            }
        }
    }
    let mode = match mode {
        None => Mode::Enforce,
        Some(m) => Mode::parse(m).unwrap_or_else(|| {
            sink.err(m.place(), format!("mode {:?} must be enforce or shadow", m.as_str()));
            Mode::Enforce
        }),
    };
    let upstream_timeout = parse_secs(upstream_timeout, 30.0, "upstream_timeout", sink);
    let upstream_connect_timeout = parse_secs(upstream_connect_timeout, 5.0, "upstream_connect_timeout", sink);
    let tls = tls.as_ref().and_then(|t| {
        let (cert, key) = (base.join(&t.cert), base.join(&t.key));
        let cert_pem = files.read(&cert).map_err(|e| (cert.clone(), e));
        let key_pem = files.read(&key).map_err(|e| (key.clone(), e));
        match cert_pem.and_then(|c| key_pem.and_then(|k| crate::tls::load_listener(&cert, &c, &key, &k))) {
            Ok(l) => Some(l),
            Err((file, e)) => {
                sink.errors.push(ConfigError::new(&file, None, format!("tls: {e}")));
                None
            }
        }
    });
    let upstream_tls = upstream_tls.as_ref().and_then(|u| {
        let sni = u.sni.clone().unwrap_or_else(|| {
            upstream.rsplit_once(':').map_or(upstream.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_string()
        });
        let ca_path = u.ca.as_ref().map(|c| base.join(c));
        let ca = match &ca_path {
            None => None,
            Some(p) => {
                match files.read(p).and_then(|pem| crate::tls::load_ca(&pem)) {
                    Ok(ca) => Some(ca),
                    Err(e) => {
                        sink.errors.push(ConfigError::new(p, None, format!("upstream_tls.ca: {e}")));
                        return None;
                    }
                }
            }
        };
        Some(crate::tls::UpstreamTls { sni, verify: u.verify.unwrap_or(true), ca, ca_path })
    });
    let management = management.as_ref().and_then(|m| management_settings(m, base, sink));
    let store = store_settings(store.as_ref(), raw.credentials_file.is_some(), base, sink);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match threads {
        None => cores,
        Some(t) if (1..=1024).contains(&**t) => **t,
        Some(t) => {
            sink.err(t.place(), "threads must be between 1 and 1024");
            ok = false;
            cores
        }
    };
    if !ok {
        return None;
    }
    Some(Settings {
        credentials_file: credentials_path(raw, base),
        management,
        store: store?,
        threads,
        work_stealing: work_stealing.unwrap_or(false),
        per_credential_metrics: metrics.as_ref().and_then(|m| m.per_credential),
        listen: listen.to_string(),
        admin_listen,
        upstream: upstream_addr?,
        upstream_text: upstream.to_string(),
        environment,
        trusted_proxies: proxies,
        shutdown_grace: shutdown_grace.unwrap_or(10),
        upstream_timeout,
        upstream_connect_timeout,
        mode,
        tls,
        upstream_tls,
    })
}

/// Validates `store:` (SPEC §10): `file`, or `postgres` with the URL from `url_env` or
/// `url_file` (never in the config) and no `credentials_file`.
pub fn store_settings(s: Option<&StoreRaw>, has_credentials_file: bool, base: &Path, sink: &mut Sink<'_>) -> Option<StoreSettings> {
    let Some(s) = s else { return Some(StoreSettings::File) };
    let StoreRaw { kind, url_env, url_file, poll } = s;
    match kind.as_str() {
        "file" => {
            for (what, v) in [("url_env", url_env.as_ref().map(At::place)), ("url_file", url_file.as_ref().map(At::place))] {
                if let Some(at) = v {
                    sink.err(at, format!("store.{what} is for kind: postgres"));
                }
            }
            Some(StoreSettings::File)
        }
        "postgres" => {
            let mut ok = true;
            if url_env.is_some() == url_file.is_some() {
                sink.err(kind.place(), "store: kind postgres needs exactly one of url_env and url_file (the URL itself never goes in the config)");
                ok = false;
            }
            if has_credentials_file {
                sink.err(kind.place(), "store: with kind postgres, credentials_file must be absent (the credentials live in the database)");
                ok = false;
            }
            let poll_secs = poll.as_ref().map_or(5, |p| **p);
            if !(1..=3600).contains(&poll_secs) {
                sink.err(poll.as_ref().map(At::place).unwrap_or_default(), "store.poll must be between 1 and 3600 seconds");
                ok = false;
            }
            ok.then(|| StoreSettings::Postgres {
                url_env: url_env.as_ref().map(|v| v.to_string()),
                url_file: url_file.as_ref().map(|f| base.join(f.as_str())),
                poll: Duration::from_secs(poll_secs),
            })
        }
        other => {
            sink.err(kind.place(), format!("store.kind {other:?} must be file or postgres"));
            None
        }
    }
}

/// Validates `management:`: its listener (TLS unless on loopback) and durations.
fn management_settings(m: &ManagementRaw, base: &Path, sink: &mut Sink<'_>) -> Option<ManagementSettings> {
    let ManagementRaw { listen, tls, default_expiry, approval } = m;
    let mut ok = true;
    match listen.parse::<SocketAddr>() {
        Err(_) => {
            sink.err(listen.place(), format!("management.listen {listen:?} is not an address:port"));
            ok = false;
        }
        Ok(a) if tls.is_none() && !a.ip().is_loopback() => {
            sink.err(
                listen.place(),
                format!("management.listen {listen:?} is not a loopback address, so management.tls is required (credentials and session cookies would cross the network in the clear)"),
            );
            ok = false;
        }
        Ok(_) => {}
    }
    let mut duration = |v: Option<&At<String>>, what: &str, default: i64| match v {
        None => default,
        Some(v) => crate::store::span::parse_duration(v, what).unwrap_or_else(|e| {
            sink.err(v.place(), e);
            ok = false;
            default
        }),
    };
    let default_expiry = duration(default_expiry.as_ref(), "management.default_expiry", 365 * 86_400);
    let expires_after = duration(
        approval.as_ref().and_then(|a| a.expires_after.as_ref()),
        "management.approval.expires_after",
        7 * 86_400,
    );
    let tls = tls.as_ref().map(|t| (base.join(&t.cert), base.join(&t.key)));
    if let Some((cert, key)) = &tls {
        for f in [cert, key] {
            if !f.is_file() {
                sink.err(listen.place(), format!("management.tls: {} is not a readable file", f.display()));
                ok = false;
            }
        }
    }
    ok.then(|| ManagementSettings {
        listen: listen.to_string(),
        tls,
        default_expiry,
        approval_required: approval.as_ref().is_some_and(|a| a.required),
        approval_expires_after: expires_after,
    })
}

/// Validates `tokens:`, loading the signing key and external issuers' key files.
/// Every file read is pushed onto `files` (for the watcher and the content hash).
pub fn tokens(raw: &TokensRaw, base: &Path, sink: &mut Sink<'_>, files: &mut Gather) -> TokenSettings {
    let TokensRaw {
        issuer,
        audience,
        lifetime,
        signing_key,
        endpoint,
        client_id_prefix,
        leeway,
        revoke_on_disable,
        max_concurrent_verifications,
        failure_limit,
        external_issuers,
    } = raw;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A field's value and place, or its default and no place.
    fn or<T: Copy>(v: &Option<At<T>>, default: T) -> (T, Place) {
        v.as_ref().map_or((default, Place::default()), |a| (**a, a.place()))
    }
    let (max_concurrent_verifications, at) = or(max_concurrent_verifications, 2 * cores);
    if max_concurrent_verifications == 0 || max_concurrent_verifications > 1024 {
        sink.err(at, "tokens.max_concurrent_verifications must be between 1 and 1024");
    }
    let (failure_limit, at) = or(failure_limit, 10);
    if failure_limit == 0 {
        sink.err(at, "tokens.failure_limit must be at least 1");
    }
    let endpoint_at = endpoint.as_ref().map(At::place).unwrap_or_default();
    let endpoint = endpoint.as_deref().cloned().unwrap_or_else(|| "/oauth/token".into());
    if !endpoint.starts_with('/') || endpoint.contains('?') || endpoint.starts_with("/.well-known/") {
        sink.err(endpoint_at, format!("tokens.endpoint {endpoint:?} must be a path starting with / (not under /.well-known/)"));
    }
    let (lifetime, at) = or(lifetime, 3600);
    if lifetime == 0 || lifetime > 86_400 {
        sink.err(at, "tokens.lifetime must be between 1 and 86400 seconds");
    }
    let (leeway, at) = or(leeway, 30);
    if leeway > 300 {
        sink.err(at, "tokens.leeway must be at most 300 seconds");
    }
    let prefix = client_id_prefix.as_deref().cloned().unwrap_or_default();
    if !prefix.is_empty() && !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        let at = client_id_prefix.as_ref().map(At::place).unwrap_or_default();
        sink.err(at, "tokens.client_id_prefix may hold only letters, digits, '.', '_' and '-'");
    }
    let issuer = issuer.clone().unwrap_or_else(|| "portcullis".into());
    let signer = signing_key.as_ref().and_then(|k| {
        let path = base.join(k);
        match files.read(&path) {
            Err(e) => {
                sink.errors.push(ConfigError::new(&path, None, format!("signing key: {e} (create one with `portcullis keygen --out {}`)", path.display())));
                None
            }
            Ok(pem) => match crate::token::keys::load_signing_key(&pem) {
                Ok(key) => Some(Arc::new(key)),
                Err(e) => {
                    sink.errors.push(ConfigError::new(&path, None, format!("signing key: {e}")));
                    None
                }
            },
        }
    });
    let mut external = Vec::new();
    for ext in external_issuers {
        let ExternalIssuerRaw { issuer: ext_iss, audience: ext_aud, jwks_file, jwks_url, permissions_claim, allowed_ips } =
            ext;
        let line = ext_iss.place();
        if **ext_iss == issuer {
            sink.err(line, format!("external issuer {ext_iss:?} is the same as tokens.issuer"));
            continue;
        }
        if external.iter().any(|e: &crate::token::ExternalIssuer| e.issuer == **ext_iss) {
            sink.err(line, format!("external issuer {ext_iss:?} is listed twice"));
            continue;
        }
        if jwks_file.is_none() && jwks_url.is_none() {
            sink.err(line, format!("external issuer {ext_iss:?} needs jwks_file and/or jwks_url"));
            continue;
        }
        let mut file_keys = Vec::new();
        if let Some(f) = jwks_file {
            let path = base.join(f);
            match files.read(&path).and_then(|t| crate::token::keys::parse_jwks(&t)) {
                Ok((keys, skipped)) => {
                    for s in skipped {
                        sink.errors.push(ConfigError::new(&path, None, format!("JWKS: {s}")));
                    }
                    if keys.is_empty() {
                        sink.errors.push(ConfigError::new(&path, None, "JWKS holds no usable key"));
                    }
                    file_keys = keys;
                }
                Err(e) => sink.errors.push(ConfigError::new(&path, None, format!("JWKS: {e}"))),
            }
        }
        let who = format!("external issuer {ext_iss:?}");
        let ext_ips = allowed_ips.as_ref().map(|list| Arc::from(allowed_ip_list(list, &who, sink)));
        // Checked only: fetchers start in the server after the whole load succeeded.
        let jwks_url = match jwks_url {
            Some(u) => match check_jwks_url(u) {
                Ok(()) => Some(u.to_string()),
                Err(e) => {
                    sink.err(u.place(), e);
                    None
                }
            },
            None => None,
        };
        external.push(crate::token::ExternalIssuer {
            issuer: ext_iss.to_string(),
            audience: ext_aud.clone(),
            permissions_claim: permissions_claim.clone().unwrap_or_else(|| "scope".into()),
            allowed_ips: ext_ips,
            file_keys,
            jwks_url,
            remote: None,
        });
    }
    TokenSettings {
        issuer,
        audience: audience.clone().unwrap_or_else(|| "portcullis".into()),
        lifetime,
        signing_key: signing_key.as_ref().map(|k| base.join(k)),
        endpoint,
        client_id_prefix: prefix,
        leeway,
        revoke_on_disable: revoke_on_disable.unwrap_or(false),
        max_concurrent_verifications: max_concurrent_verifications.max(1),
        failure_limit: failure_limit.max(1),
        signer,
        external,
    }
}

/// A `jwks_url` must be `https://`; plain `http://` only to a loopback host (SPEC §6):
/// anyone on the path of a plain fetch could swap in signing keys.
pub fn check_jwks_url(u: &str) -> Result<(), String> {
    if u.starts_with("https://") && u.len() > "https://".len() {
        return Ok(());
    }
    let Some(rest) = u.strip_prefix("http://") else {
        return Err(format!("jwks_url {u:?} must be an https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(h) = host.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!("jwks_url {u:?} must be https:// (plain http:// is accepted only to a loopback host)"))
    }
}

/// Validates a path template: origin-form, no dot or empty segments, `{param}` syntax.
fn check_template(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with /"));
    }
    if path.contains('?') || path.contains('#') || path.contains('%') {
        return Err(format!("path {path:?} must not contain ?, # or %"));
    }
    for seg in path[1..].split('/') {
        if seg == "." || seg == ".." {
            return Err(format!("path {path:?} has a dot segment"));
        }
    }
    if path.contains("//") {
        return Err(format!("path {path:?} has an empty segment"));
    }
    Ok(())
}

/// Compiles `routes:` into a [`RouteTable`].
pub fn routes(raw: &[RouteRaw], sink: &mut Sink<'_>) -> RouteTable {
    let mut table = RouteTable::default();
    for r in raw {
        let RouteRaw {
            match_,
            require,
            public,
            vault_param,
            key_param,
            mode,
            websocket,
        } = r;
        let line = match_.place();
        let Some((method, path)) = match_.trim().split_once(' ') else {
            sink.err(line, format!("route {match_:?} must be \"METHOD /path\""));
            continue;
        };
        let path = path.trim();
        let method = if method == "*" {
            None
        } else {
            match http::Method::from_bytes(method.as_bytes()) {
                Ok(m) if method.bytes().all(|b| b.is_ascii_uppercase()) => Some(m),
                _ => {
                    sink.err(line, format!("route {match_:?}: bad method {method:?}"));
                    continue;
                }
            }
        };
        if let Err(e) = check_template(path) {
            sink.err(line, format!("route {match_:?}: {e}"));
            continue;
        }
        let require = match (public, require) {
            (true, Some(_)) => {
                sink.err(line, format!("route {match_:?}: a public route takes no require"));
                continue;
            }
            (true, None) => None,
            (false, None) => {
                sink.err(line, format!("route {match_:?}: needs require (or public: true)"));
                continue;
            }
            (false, Some(req)) => match Requirement::parse(req) {
                Ok(r) => Some(r),
                Err(e) => {
                    sink.err(line, format!("route {match_:?}: {e}"));
                    continue;
                }
            },
        };
        let mode = match mode.as_deref() {
            None => None,
            Some(m) => match Mode::parse(m) {
                Some(m) => Some(m),
                None => {
                    sink.err(line, format!("route {match_:?}: mode {m:?} must be enforce or shadow"));
                    continue;
                }
            },
        };
        let vault_param = vault_param.clone().unwrap_or_else(|| "vault_id".into());
        let key_param = key_param.clone().unwrap_or_else(|| "key_id".into());
        for (what, p, explicit) in [
            ("vault_param", &vault_param, r.vault_param.is_some()),
            ("key_param", &key_param, r.key_param.is_some()),
        ] {
            if explicit && !path.contains(&format!("{{{p}}}")) {
                sink.err(line, format!("route {match_:?}: {what} {p:?} is not a parameter of the path"));
            }
        }
        let idx = table.routes.len();
        let router = match &method {
            Some(m) => table.by_method.entry(m.clone()).or_default(),
            None => &mut table.any_method,
        };
        if let Err(e) = router.insert(path, idx) {
            sink.err(line, format!("route {match_:?}: {e}"));
            continue;
        }
        table.routes.push(Route {
            id: Arc::from(format!("{} {path}", method.as_ref().map_or("*", |m| m.as_str()))),
            method,
            template: path.to_string(),
            public: *public,
            require,
            vault_param,
            key_param,
            mode,
            websocket: *websocket,
        });
    }
    table
}

/// Parses a permission list, reporting each bad entry at its place.
fn permissions(list: &[At<String>], who: &str, sink: &mut Sink<'_>) -> Vec<Permission> {
    let mut out = Vec::new();
    for s in list {
        match sink.permission(s) {
            Ok(p) => out.push(p),
            Err(e) => {
                sink.err(s.place(), format!("{who}: {e}"));
            }
        }
    }
    out
}

/// Resolves role names to permissions.
fn role_grants(
    roles: &[At<String>],
    custom: &HashMap<String, Vec<Permission>>,
    who: &str,
    sink: &mut Sink<'_>,
) -> Vec<Permission> {
    let mut out = Vec::new();
    for r in roles {
        if let Some(perms) = custom.get(r.as_str()) {
            out.extend(perms.iter().cloned());
        } else if let Some(perms) = builtin_role(r) {
            for p in perms.iter() {
                if let Ok(p) = sink.permission(p) {
                    out.push(p);
                }
            }
        } else {
            sink.err(r.place(), format!("{who}: unknown role {:?}", r.as_str()));
        }
    }
    out
}

/// The grants without repeats, first one kept. A credential holds a handful: a scan
/// beats a hash set that allocates a string per permission.
fn dedup(v: Vec<Permission>) -> Vec<Permission> {
    let mut out: Vec<Permission> = Vec::with_capacity(v.len());
    for p in v {
        if !out.iter().any(|q| q.as_str() == p.as_str()) {
            out.push(p);
        }
    }
    out
}

/// Parses an `allowed_ips` list (a credential's or an external issuer's): at most
/// [`MAX_ALLOWED_IPS`] entries, each an address or a CIDR, and not empty once parsed.
fn allowed_ip_list(list: &At<Vec<At<String>>>, who: &str, sink: &mut Sink<'_>) -> Vec<IpNet> {
    if list.len() > MAX_ALLOWED_IPS {
        sink.err(list.place(), format!("{who}: allowed_ips holds {} entries, at most {MAX_ALLOWED_IPS}", list.len()));
    }
    let mut nets = Vec::new();
    for s in list.iter() {
        match parse_net(s) {
            Ok(n) => nets.push(n),
            Err(e) => {
                sink.err(s.place(), format!("{who}: allowed_ips: {e}"));
            }
        }
    }
    if nets.is_empty() {
        sink.err(list.place(), format!("{who}: allowed_ips is empty; omit it to allow any address, or list some"));
    }
    nets
}

struct CommonOut {
    grants: Vec<Permission>,
    allowed_ips: Option<Vec<IpNet>>,
    expires_at: i64,
}

/// What clients and API keys share: name, roles and permissions, allowlist, expiry and
/// description.
fn common(
    c: &EntryRaw<'_>,
    who: &str,
    env: Environment,
    custom: &HashMap<String, Vec<Permission>>,
    now: i64,
    sink: &mut Sink<'_>,
    warnings: &mut Vec<String>,
) -> CommonOut {
    let line = c.name.place();
    if !valid_name(c.name) {
        sink.err(line, format!("{who}: name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"));
    }
    let mut grants = role_grants(c.roles, custom, who, sink);
    grants.extend(permissions(c.permissions, who, sink));
    let allowed_ips = c.allowed_ips.as_ref().map(|list| allowed_ip_list(list, who, sink));
    let allow_all = match &allowed_ips {
        None => true,
        Some(n) => n.iter().any(|n| n.prefix_len() == 0),
    };
    if allow_all {
        if env == Environment::Production {
            let l = c.allowed_ips.as_ref().map_or(line, At::place);
            sink.err(l, format!("{who}: in production every credential must list its allowed_ips, none allowing every address"));
        } else {
            warnings.push(format!("{who} allows every IP address"));
        }
    }
    let expires_at = match sink.expiry(c.expires) {
        Ok(t) => {
            if now >= t {
                warnings.push(format!("{who} expired ({})", c.expires.as_str()));
            } else if t - now <= EXPIRY_WARNING_SECS {
                warnings.push(format!("{who} expires within 30 days ({})", c.expires.as_str()));
            }
            t
        }
        Err(e) => {
            sink.err(c.expires.place(), format!("{who}: {e}"));
            i64::MIN
        }
    };
    if let Some(d) = c.description {
        let n = d.chars().count();
        if !(5..=50).contains(&n) {
            sink.err(d.place(), format!("{who}: description must be 5 to 50 characters, not {n}"));
        }
    }
    CommonOut {
        grants,
        allowed_ips,
        expires_at,
    }
}

/// Validates the credentials file.
pub fn credentials(
    raw: &CredentialsRaw,
    env: Environment,
    now: i64,
    sink: &mut Sink<'_>,
    warnings: &mut Vec<String>,
) -> CredentialStore {
    let CredentialsRaw { roles, users, clients: _, api_keys: _ } = raw;
    let custom = custom_roles(roles, sink);
    let mut users_map: HashMap<&str, Vec<Permission>> = HashMap::new();
    for u in users {
        let UserRaw {
            name,
            roles,
            permissions: perms,
        } = u;
        let line = name.place();
        let who = format!("user {:?}", name.as_str());
        if !valid_name(name) {
            sink.err(line, format!("{who}: name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"));
        }
        let mut g = role_grants(roles, &custom, &who, sink);
        g.extend(permissions(perms, &who, sink));
        if users_map.insert(name.as_str(), g).is_some() {
            sink.err(line, format!("{who} is defined twice"));
        }
    }

    let mut store = CredentialStore {
        users: users.iter().map(|u| u.name.to_string()).collect(),
        custom_roles: roles.keys().cloned().collect(),
        ..Default::default()
    };
    // A second credential of a name is refused where it stands.
    let mut names: HashSet<&str> = HashSet::with_capacity(raw.clients.len() + raw.api_keys.len());
    store.by_key_hash.reserve(raw.api_keys.len());
    store.all.reserve(raw.clients.len() + raw.api_keys.len());
    let mut shared = crate::config::Interner::default();
    for e in raw.entries() {
        let name = e.name.as_str();
        if !names.insert(name) {
            sink.err(e.name.place(), format!("name {name:?} is used by more than one credential"));
        }
        let who = format!("{} {name:?}", e.kind.label());
        let out = common(&e, &who, env, &custom, now, sink, warnings);
        let mut grants = out.grants;
        let mut user_missing = false;
        if let Some(u) = e.user {
            match users_map.get(u) {
                Some(g) => grants.extend(g.iter().cloned()),
                None => {
                    user_missing = true;
                    warnings.push(format!("{who} is linked to user {u:?}, which does not exist: the key is rejected"));
                }
            }
        }
        let (kind, secret, key_hash) = match e.kind {
            Kind::Client => {
                let secret = parse_secret_hash(e.hash)
                    .map_err(|err| sink.err(e.hash.place(), format!("{who}: secret_hash {err}")))
                    .ok();
                (CredentialKind::Client, secret, None)
            }
            Kind::ApiKey => match parse_sha256(e.hash) {
                Some(h) => (CredentialKind::ApiKey, None, Some(h)),
                None => {
                    sink.err(e.hash.place(), format!("{who}: key_hash must be sha256:<64 hex>"));
                    continue;
                }
            },
        };
        let cred = Arc::new(Credential {
            id: Arc::from(name),
            kind,
            user: e.user.map(|u| shared.str(u)),
            user_missing,
            disabled: e.disabled,
            roles: shared.roles(e.roles.iter().map(|r| r.as_str())),
            grants: shared.grants(dedup(grants)),
            allowed_ips: out.allowed_ips.map(|n| shared.nets(n)),
            expires_at: out.expires_at,
            expires_text: shared.str(e.expires),
            description: e.description.as_ref().map(|d| Box::from(d.as_str())),
            notes: e.notes.map(Box::from),
            secret: secret.map(Box::new),
        });
        let prev = e.kind.previous_key();
        match key_hash {
            None => {
                let mut previous = Vec::new();
                for p in e.previous {
                    let hash = parse_secret_hash(&p.hash)
                        .map_err(|err| sink.err(p.hash.place(), format!("{who}: {prev}: hash {err}")));
                    let until = parse_expires(&p.until)
                        .map_err(|err| sink.err(p.until.place(), format!("{who}: {prev}: until: {err}")));
                    if let (Ok(h), Ok(u)) = (hash, until) {
                        previous.push((h, u));
                    }
                }
                if !previous.is_empty() {
                    store.previous_secrets.insert(cred.id.clone(), previous);
                }
                store.clients.insert(cred.id.clone(), cred.clone());
            }
            Some(hash) => {
                if store.by_key_hash.insert(hash, cred.clone()).is_some() || store.previous_key_hashes.contains_key(&hash) {
                    sink.err(e.hash.place(), format!("{who}: key_hash is the same as another key's"));
                }
                for p in e.previous {
                    let Some(h) = parse_sha256(&p.hash) else {
                        sink.err(p.hash.place(), format!("{who}: {prev}: hash must be sha256:<64 hex>"));
                        continue;
                    };
                    match parse_expires(&p.until) {
                        Err(err) => sink.err(p.until.place(), format!("{who}: {prev}: until: {err}")),
                        Ok(until) => {
                            if store.by_key_hash.contains_key(&h)
                                || store.previous_key_hashes.insert(h, (cred.clone(), until)).is_some()
                            {
                                sink.err(p.hash.place(), format!("{who}: {prev}: a hash is the same as another key's"));
                            }
                        }
                    }
                }
            }
        }
        store.all.push(cred);
    }
    store
}

fn custom_roles(
    roles: &BTreeMap<String, At<Vec<At<String>>>>,
    sink: &mut Sink<'_>,
) -> HashMap<String, Vec<Permission>> {
    let mut out = HashMap::new();
    for (name, perms) in roles {
        let line = perms.place();
        if builtin_role(name).is_some() {
            sink.err(line, format!("role {name:?} is built in and cannot be redefined"));
            continue;
        }
        if !valid_name(name) {
            sink.err(line, format!("role {name:?}: name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"));
        }
        let p = permissions(perms, &format!("role {name:?}"), sink);
        out.insert(name.clone(), p);
    }
    out
}

/// The credentials file path, relative to the main config's directory.
pub fn credentials_path(raw: &MainRaw, base: &Path) -> PathBuf {
    base.join(raw.credentials_file.as_deref().unwrap_or("credentials.yaml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_end_of_day_utc() {
        let t = parse_expires("2027-11-22").unwrap();
        assert_eq!(t, parse_expires("2027-11-23T00:00:00Z").unwrap());
        assert_eq!(parse_expires("2027-11-22T10:00:00+02:00").unwrap(), parse_expires("2027-11-22T08:00:00Z").unwrap());
        assert!(parse_expires("2027-13-01").is_err());
        assert!(parse_expires("tomorrow").is_err());
        assert!(parse_expires("2027-1-2").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("acme-backend"));
        assert!(valid_name("a.b_c-1"));
        assert!(!valid_name("-a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_name(&"a".repeat(64)));
    }

    #[test]
    fn nets() {
        assert_eq!(parse_net("192.0.2.10").unwrap().prefix_len(), 32);
        assert_eq!(parse_net("2001:db8::/32").unwrap().prefix_len(), 32);
        assert!(parse_net("10.0.0.1/8").is_err());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("host").is_err());
    }

    #[test]
    fn sha256_hashes() {
        assert!(parse_sha256(&format!("sha256:{}", "ab".repeat(32))).is_some());
        assert!(parse_sha256(&format!("sha256:{}", "ab".repeat(31))).is_none());
        assert!(parse_sha256(&format!("sha1:{}", "ab".repeat(32))).is_none());
        assert!(parse_sha256(&format!("sha256:{}", "zz".repeat(32))).is_none());
    }
}

#[cfg(test)]
mod management_tests {
    use super::*;
    use crate::config::raw::MainRaw;

    fn settings_of(extra: &str) -> (Option<Settings>, Vec<ConfigError>) {
        let text = format!("listen: \"127.0.0.1:1\"\nupstream: \"127.0.0.1:2\"\n{extra}");
        let raw: MainRaw = crate::config::parse(Path::new("portcullis.yaml"), &text).unwrap();
        let mut sink = Sink::new(Path::new("portcullis.yaml"));
        let s = settings(&raw, Path::new("."), &mut sink, &mut Gather::new());
        (s, sink.errors)
    }

    #[test]
    fn allows_a_loopback_management_listener_without_tls_and_reads_its_durations() {
        let (s, errs) = settings_of("management:\n  listen: \"127.0.0.1:9443\"\n  default_expiry: 90d\n  approval:\n    required: true\n    expires_after: 3600\n");
        assert!(errs.is_empty(), "{errs:?}");
        let m = s.unwrap().management.unwrap();
        assert_eq!((m.default_expiry, m.approval_required, m.approval_expires_after), (90 * 86_400, true, 3600));
        let (s, _) = settings_of("");
        assert!(s.unwrap().management.is_none());
    }

    #[test]
    fn allows_a_thread_count_and_defaults_to_one_per_core_and_denies_zero() {
        let (s, errs) = settings_of("threads: 3\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(s.unwrap().threads, 3);
        let (s, _) = settings_of("");
        assert_eq!(s.unwrap().threads, std::thread::available_parallelism().map_or(1, |n| n.get()));
        let (_, errs) = settings_of("threads: 0\n");
        assert!(errs.iter().any(|e| e.message.contains("threads must be") && e.line == Some(3)), "{errs:?}");
    }

    #[test]
    fn steals_work_only_when_told() {
        for (yaml, steals) in [
            ("", false),
            ("threads: 1\n", false),
            ("threads: 2\n", false),
            ("threads: 1\nwork_stealing: true\n", true),
            ("threads: 4\nwork_stealing: true\n", true),
            ("threads: 4\nwork_stealing: false\n", false),
        ] {
            let (s, errs) = settings_of(yaml);
            assert!(errs.is_empty(), "{errs:?}");
            assert_eq!(s.unwrap().work_stealing, steals, "{yaml}");
        }
        let text = "listen: \"127.0.0.1:1\"\nupstream: \"127.0.0.1:2\"\nwork_stealing: sometimes\n";
        let refused = crate::config::parse::<MainRaw>(Path::new("portcullis.yaml"), text).expect_err("a non-boolean is refused");
        assert_eq!(refused.line, Some(3), "{refused:?}");
    }

    #[test]
    fn denies_a_management_listener_off_loopback_without_tls_and_a_bad_duration() {
        let (_, errs) = settings_of("management:\n  listen: \"0.0.0.0:9443\"\n  default_expiry: soon\n");
        assert!(errs.iter().any(|e| e.message.contains("management.tls is required") && e.line == Some(4)), "{errs:?}");
        assert!(errs.iter().any(|e| e.message.contains("management.default_expiry") && e.line == Some(5)), "{errs:?}");
    }
}

#[cfg(test)]
mod place_tests {
    use crate::config::{credentials_from_text, ConfigError, Environment};
    use std::path::Path;

    fn errors(text: &str) -> Vec<ConfigError> {
        credentials_from_text(Path::new("credentials.yaml"), text, Environment::Sandbox, 0).unwrap_err().0
    }

    fn place(errs: &[ConfigError], needle: &str) -> (Option<usize>, Option<usize>) {
        let e = errs.iter().find(|e| e.message.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in {errs:?}"));
        (e.line, e.column)
    }

    /// Each error stands at the value it is about, even where a comment or an earlier
    /// entry holds the same words (a text search took the first such line).
    #[test]
    fn places_each_error_at_its_value() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            "# expires: soon, roles: nobody, allowed_ips: 10.0.0.1/8\n\
             api_keys:\n\
             \x20 - name: good\n\
             \x20   key_hash: \"{hash}\"\n\
             \x20   expires: 2030-01-01\n\
             \x20 - name: bad\n\
             \x20   key_hash: \"sha256:{}\"\n\
             \x20   roles: [wallets, nobody]\n\
             \x20   allowed_ips: [192.0.2.1, 10.0.0.1/8]\n\
             \x20   expires: someday\n\
             \x20 - name: good\n\
             \x20   key_hash: \"sha256:{}\"\n\
             \x20   expires: 2030-01-01\n",
            "cd".repeat(32),
            "ef".repeat(32),
        );
        let errs = errors(&text);
        assert_eq!(place(&errs, "unknown role \"nobody\""), (Some(8), Some(22)), "{errs:?}");
        assert_eq!(place(&errs, "has host bits set"), (Some(9), Some(30)));
        assert_eq!(place(&errs, "neither a date"), (Some(10), Some(14)));
        assert_eq!(place(&errs, "more than one credential"), (Some(11), Some(11)), "the second one");
    }

    #[test]
    fn places_a_bad_hash_and_a_custom_role() {
        let text = "roles:\n  reader: [balances:read, nope]\napi_keys:\n  - name: k\n    key_hash: md5:x\n    expires: 2030-01-01\n";
        let errs = errors(text);
        assert_eq!(place(&errs, "key_hash must be"), (Some(5), Some(15)), "{errs:?}");
        assert_eq!(place(&errs, "role \"reader\""), (Some(2), Some(27)));
    }
}

#[cfg(test)]
mod jwks_url_tests {
    use super::check_jwks_url;

    #[test]
    fn allows_https_and_loopback_http() {
        for u in ["https://idp.example/jwks.json", "http://127.0.0.1:8080/jwks", "http://[::1]/k", "http://localhost/k"] {
            assert!(check_jwks_url(u).is_ok(), "{u}");
        }
    }

    #[test]
    fn denies_plain_http_elsewhere() {
        for u in ["http://idp.example/jwks.json", "http://127.0.0.1.evil.example/k", "http://localhost@evil.example/", "ftp://x/", "https://"] {
            assert!(check_jwks_url(u).is_err(), "{u}");
        }
    }
}
