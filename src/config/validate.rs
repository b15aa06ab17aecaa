//! Raw structs → [`Snapshot`], reporting every error with its file and line.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate};
use ipnet::IpNet;

use super::error::{ConfigError, Locator};
use super::gather::Gather;
use super::raw::{ApiKeyRaw, ClientRaw, CredentialsRaw, ExternalIssuerRaw, MainRaw, RouteRaw, TokensRaw, UserRaw};
use super::snapshot::*;
use crate::permission::{builtin_role, Permission, Requirement};

/// Most entries an `allowed_ips` list may hold.
pub const MAX_ALLOWED_IPS: usize = 6;
/// Seconds before expiry at which `check` warns.
pub const EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

/// Collects errors for one file.
pub struct Sink<'a> {
    pub file: &'a Path,
    pub loc: Locator<'a>,
    pub errors: Vec<ConfigError>,
}

impl<'a> Sink<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Sink {
            file,
            loc: Locator::new(text),
            errors: Vec::new(),
        }
    }
    fn err(&mut self, line: Option<usize>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(self.file, line, msg));
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

fn parse_secs(v: Option<f64>, default: f64, what: &str, sink: &mut Sink<'_>) -> Duration {
    let v = v.unwrap_or(default);
    if !(v > 0.0 && v <= 3600.0) {
        let line = sink.loc.top_key(what);
        sink.err(line, format!("{what} must be between 0 and 3600 seconds"));
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
    } = raw;
    let mut ok = true;
    if listen.parse::<SocketAddr>().is_err() {
        let line = sink.loc.top_key("listen");
        sink.err(line, format!("listen {listen:?} is not an address:port"));
        ok = false;
    }
    let admin_listen = admin_listen.clone().unwrap_or_else(|| "127.0.0.1:9901".into());
    if admin_listen.parse::<SocketAddr>().is_err() {
        let line = sink.loc.top_key("admin_listen");
        sink.err(line, format!("admin_listen {admin_listen:?} is not an address:port"));
        ok = false;
    }
    // No DNS here (validation does no I/O): an address is taken as it is, a name is
    // checked for form and resolved after the load succeeded (`config::resolve`).
    let upstream_addr = match upstream_target(upstream) {
        Some(a) => Some(a),
        None => {
            let line = sink.loc.top_key("upstream");
            sink.err(line, format!("upstream {upstream:?} is not an ip:port or a host:port"));
            None
        }
    };
    let environment = match environment.as_deref() {
        None | Some("sandbox") => Environment::Sandbox,
        Some("production") => Environment::Production,
        Some(other) => {
            let line = sink.loc.top_key("environment");
            sink.err(
                line,
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
                let line = sink.loc.contains_after(sink.loc.top_key("trusted_proxies"), p);
                sink.err(line, format!("trusted_proxies: {e}"));
            }
        }
    }
    let mode = match mode.as_deref() {
        None => Mode::Enforce,
        Some(m) => Mode::parse(m).unwrap_or_else(|| {
            let line = sink.loc.top_key("mode");
            sink.err(line, format!("mode {m:?} must be enforce or shadow"));
            Mode::Enforce
        }),
    };
    let upstream_timeout = parse_secs(*upstream_timeout, 30.0, "upstream_timeout", sink);
    let upstream_connect_timeout =
        parse_secs(*upstream_connect_timeout, 5.0, "upstream_connect_timeout", sink);
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
    if !ok {
        return None;
    }
    Some(Settings {
        listen: listen.clone(),
        admin_listen,
        upstream: upstream_addr?,
        upstream_text: upstream.clone(),
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
    let max_concurrent_verifications = max_concurrent_verifications.unwrap_or(2 * cores);
    if max_concurrent_verifications == 0 || max_concurrent_verifications > 1024 {
        let line = sink.loc.contains_after(None, "max_concurrent_verifications:");
        sink.err(line, "tokens.max_concurrent_verifications must be between 1 and 1024");
    }
    let failure_limit = failure_limit.unwrap_or(10);
    if failure_limit == 0 {
        let line = sink.loc.contains_after(None, "failure_limit:");
        sink.err(line, "tokens.failure_limit must be at least 1");
    }
    let endpoint = endpoint.clone().unwrap_or_else(|| "/oauth/token".into());
    if !endpoint.starts_with('/') || endpoint.contains('?') || endpoint.starts_with("/.well-known/") {
        let line = sink.loc.pair("endpoint", &endpoint, 0);
        sink.err(line, format!("tokens.endpoint {endpoint:?} must be a path starting with / (not under /.well-known/)"));
    }
    let lifetime = lifetime.unwrap_or(3600);
    if lifetime == 0 || lifetime > 86_400 {
        let line = sink.loc.contains_after(None, "lifetime:");
        sink.err(line, "tokens.lifetime must be between 1 and 86400 seconds");
    }
    let leeway = leeway.unwrap_or(30);
    if leeway > 300 {
        let line = sink.loc.contains_after(None, "leeway:");
        sink.err(line, "tokens.leeway must be at most 300 seconds");
    }
    let prefix = client_id_prefix.clone().unwrap_or_default();
    if !prefix.is_empty() && !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        let line = sink.loc.contains_after(None, "client_id_prefix:");
        sink.err(line, "tokens.client_id_prefix may hold only letters, digits, '.', '_' and '-'");
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
        let line = sink.loc.pair("issuer", ext_iss, 0);
        if *ext_iss == issuer {
            sink.err(line, format!("external issuer {ext_iss:?} is the same as tokens.issuer"));
            continue;
        }
        if external.iter().any(|e: &crate::token::ExternalIssuer| e.issuer == *ext_iss) {
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
        let ext_ips = allowed_ips.as_ref().map(|list| Arc::from(allowed_ip_list(list, &who, line, sink)));
        // Checked only: fetchers start in the server after the whole load succeeded.
        let jwks_url = match jwks_url {
            Some(u) => match check_jwks_url(u) {
                Ok(()) => Some(u.clone()),
                Err(e) => {
                    let l = sink.loc.contains_after(line, "jwks_url").or(line);
                    sink.err(l, e);
                    None
                }
            },
            None => None,
        };
        external.push(crate::token::ExternalIssuer {
            issuer: ext_iss.clone(),
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
    let mut seen = HashMap::new();
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
        let n = *seen.entry(match_.clone()).and_modify(|c| *c += 1).or_insert(0usize);
        let line = sink.loc.pair("match", match_, n);
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

/// Parses a permission list, reporting bad entries near `line`.
fn permissions(list: &[String], line: Option<usize>, who: &str, sink: &mut Sink<'_>) -> Vec<Permission> {
    let mut out = Vec::new();
    for s in list {
        match Permission::parse(s) {
            Ok(p) => out.push(p),
            Err(e) => {
                let l = sink.loc.contains_after(line, s);
                sink.err(l, format!("{who}: {e}"));
            }
        }
    }
    out
}

/// Resolves role names to permissions.
fn role_grants(
    roles: &[String],
    custom: &HashMap<String, Vec<Permission>>,
    line: Option<usize>,
    who: &str,
    sink: &mut Sink<'_>,
) -> Vec<Permission> {
    let mut out = Vec::new();
    for r in roles {
        if let Some(perms) = custom.get(r) {
            out.extend(perms.iter().cloned());
        } else if let Some(perms) = builtin_role(r) {
            out.extend(perms.iter().filter_map(|p| Permission::parse(p).ok()));
        } else {
            let l = sink.loc.contains_after(line, r);
            sink.err(l, format!("{who}: unknown role {r:?}"));
        }
    }
    out
}

fn dedup(mut v: Vec<Permission>) -> Arc<[Permission]> {
    let mut seen = HashSet::new();
    v.retain(|p| seen.insert(p.as_str().to_string()));
    Arc::from(v)
}

/// Parses an `allowed_ips` list (a credential's or an external issuer's): at most
/// [`MAX_ALLOWED_IPS`] entries, each an address or a CIDR, and not empty once parsed.
fn allowed_ip_list(list: &[String], who: &str, line: Option<usize>, sink: &mut Sink<'_>) -> Vec<IpNet> {
    if list.len() > MAX_ALLOWED_IPS {
        let l = sink.loc.contains_after(line, "allowed_ips");
        sink.err(l, format!("{who}: allowed_ips holds {} entries, at most {MAX_ALLOWED_IPS}", list.len()));
    }
    let mut nets = Vec::new();
    for s in list {
        match parse_net(s) {
            Ok(n) => nets.push(n),
            Err(e) => {
                let l = sink.loc.contains_after(line, s);
                sink.err(l, format!("{who}: allowed_ips: {e}"));
            }
        }
    }
    if nets.is_empty() {
        let l = sink.loc.contains_after(line, "allowed_ips");
        sink.err(l, format!("{who}: allowed_ips is empty; omit it to allow any address, or list some"));
    }
    nets
}

/// Fields common to clients and API keys.
struct Common<'r> {
    name: &'r str,
    roles: &'r [String],
    permissions: &'r [String],
    allowed_ips: &'r Option<Vec<String>>,
    expires: &'r str,
    description: &'r Option<String>,
}

struct CommonOut {
    grants: Vec<Permission>,
    allowed_ips: Option<Vec<IpNet>>,
    expires_at: i64,
}

#[allow(clippy::too_many_arguments)]
fn common(
    c: &Common<'_>,
    kind: &str,
    line: Option<usize>,
    env: Environment,
    custom: &HashMap<String, Vec<Permission>>,
    now: i64,
    sink: &mut Sink<'_>,
    warnings: &mut Vec<String>,
) -> CommonOut {
    let who = format!("{kind} {:?}", c.name);
    if !valid_name(c.name) {
        sink.err(line, format!("{who}: name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"));
    }
    let mut grants = role_grants(c.roles, custom, line, &who, sink);
    grants.extend(permissions(c.permissions, line, &who, sink));
    let allowed_ips = c.allowed_ips.as_ref().map(|list| allowed_ip_list(list, &who, line, sink));
    let allow_all = match &allowed_ips {
        None => true,
        Some(n) => n.iter().any(|n| n.prefix_len() == 0),
    };
    if allow_all {
        if env == Environment::Production {
            let l = sink.loc.contains_after(line, "allowed_ips").filter(|_| allowed_ips.is_some()).or(line);
            sink.err(l, format!("{who}: in production every credential must list its allowed_ips, none allowing every address"));
        } else {
            warnings.push(format!("{who} allows every IP address"));
        }
    }
    let expires_at = match parse_expires(c.expires) {
        Ok(t) => {
            if now >= t {
                warnings.push(format!("{who} expired ({})", c.expires));
            } else if t - now <= EXPIRY_WARNING_SECS {
                warnings.push(format!("{who} expires within 30 days ({})", c.expires));
            }
            t
        }
        Err(e) => {
            let l = sink.loc.contains_after(line, "expires");
            sink.err(l, format!("{who}: {e}"));
            i64::MIN
        }
    };
    if let Some(d) = c.description {
        let n = d.chars().count();
        if !(5..=50).contains(&n) {
            let l = sink.loc.contains_after(line, "description");
            sink.err(l, format!("{who}: description must be 5 to 50 characters, not {n}"));
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
    let CredentialsRaw {
        roles,
        users,
        clients,
        api_keys,
    } = raw;
    let custom = custom_roles(roles, sink);
    let mut users_map: HashMap<&str, Vec<Permission>> = HashMap::new();
    for u in users {
        let UserRaw {
            name,
            roles,
            permissions: perms,
        } = u;
        let line = sink.loc.pair("name", name, users_map.contains_key(name.as_str()) as usize);
        let who = format!("user {name:?}");
        if !valid_name(name) {
            sink.err(line, format!("{who}: name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"));
        }
        let mut g = role_grants(roles, &custom, line, &who, sink);
        g.extend(permissions(perms, line, &who, sink));
        if users_map.insert(name, g).is_some() {
            sink.err(line, format!("{who} is defined twice"));
        }
    }

    let mut store = CredentialStore {
        users: users.iter().map(|u| u.name.clone()).collect(),
        custom_roles: roles.keys().cloned().collect(),
        ..Default::default()
    };
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut line_of = |sink: &mut Sink<'_>, key: &str, name: &str| {
        let n = names.entry(name.to_string()).or_insert(0);
        let line = sink.loc.pair(key, name, 0);
        *n += 1;
        (line, *n > 1)
    };

    for c in clients {
        let ClientRaw {
            id,
            secret_hash,
            previous_secret_hashes,
            roles,
            permissions,
            allowed_ips,
            expires,
            disabled,
            description,
            notes,
        } = c;
        let (line, dup) = line_of(sink, "id", id);
        if dup {
            let l = sink.loc.pair("id", id, 1).or(line);
            sink.err(l, format!("name {id:?} is used by more than one credential"));
        }
        let out = common(
            &Common { name: id, roles, permissions, allowed_ips, expires, description },
            "client", line, env, &custom, now, sink, warnings,
        );
        let secret = match parse_secret_hash(secret_hash) {
            Ok(h) => Some(h),
            Err(e) => {
                let l = sink.loc.contains_after(line, "secret_hash");
                sink.err(l, format!("client {id:?}: secret_hash {e}"));
                None
            }
        };
        let mut previous = Vec::new();
        for p in previous_secret_hashes {
            let l = sink.loc.contains_after(line, "previous_secret_hashes");
            let hash = parse_secret_hash(&p.hash)
                .map_err(|e| sink.err(l, format!("client {id:?}: previous_secret_hashes: hash {e}")));
            let until = parse_expires(&p.until)
                .map_err(|e| sink.err(l, format!("client {id:?}: previous_secret_hashes: until: {e}")));
            if let (Ok(h), Ok(u)) = (hash, until) {
                previous.push((h, u));
            }
        }
        if !previous.is_empty() {
            store.previous_secrets.insert(Arc::from(id.as_str()), previous);
        }
        let cred = Arc::new(Credential {
            id: Arc::from(id.as_str()),
            kind: CredentialKind::Client,
            user: None,
            user_missing: false,
            roles: roles.clone(),
            grants: dedup(out.grants),
            allowed_ips: out.allowed_ips,
            expires_at: out.expires_at,
            expires_text: expires.clone(),
            disabled: *disabled,
            description: description.clone(),
            notes: notes.clone(),
            secret,
        });
        store.clients.insert(cred.id.clone(), cred.clone());
        store.all.push(cred);
    }

    for k in api_keys {
        let ApiKeyRaw {
            name,
            key_hash,
            previous_key_hashes,
            user,
            roles,
            permissions,
            allowed_ips,
            expires,
            disabled,
            description,
            notes,
        } = k;
        let (line, dup) = line_of(sink, "name", name);
        if dup {
            let l = sink.loc.pair("name", name, 1).or(line);
            sink.err(l, format!("name {name:?} is used by more than one credential"));
        }
        let out = common(
            &Common { name, roles, permissions, allowed_ips, expires, description },
            "api key", line, env, &custom, now, sink, warnings,
        );
        let mut grants = out.grants;
        let mut user_missing = false;
        if let Some(u) = user {
            match users_map.get(u.as_str()) {
                Some(g) => grants.extend(g.iter().cloned()),
                None => {
                    user_missing = true;
                    warnings.push(format!("api key {name:?} is linked to user {u:?}, which does not exist: the key is rejected"));
                }
            }
        }
        let hash = parse_sha256(key_hash);
        let Some(hash) = hash else {
            let l = sink.loc.contains_after(line, "key_hash");
            sink.err(l, format!("api key {name:?}: key_hash must be sha256:<64 hex>"));
            continue;
        };
        let cred = Arc::new(Credential {
            id: Arc::from(name.as_str()),
            kind: CredentialKind::ApiKey,
            user: user.as_deref().map(Arc::from),
            user_missing,
            roles: roles.clone(),
            grants: dedup(grants),
            allowed_ips: out.allowed_ips,
            expires_at: out.expires_at,
            expires_text: expires.clone(),
            disabled: *disabled,
            description: description.clone(),
            notes: notes.clone(),
            secret: None,
        });
        if store.by_key_hash.insert(hash, cred.clone()).is_some() || store.previous_key_hashes.contains_key(&hash) {
            let l = sink.loc.contains_after(line, "key_hash");
            sink.err(l, format!("api key {name:?}: key_hash is the same as another key's"));
        }
        for p in previous_key_hashes {
            let l = sink.loc.contains_after(line, "previous_key_hashes");
            let Some(h) = parse_sha256(&p.hash) else {
                sink.err(l, format!("api key {name:?}: previous_key_hashes: hash must be sha256:<64 hex>"));
                continue;
            };
            match parse_expires(&p.until) {
                Err(e) => sink.err(l, format!("api key {name:?}: previous_key_hashes: until: {e}")),
                Ok(until) => {
                    if store.by_key_hash.contains_key(&h)
                        || store.previous_key_hashes.insert(h, (cred.clone(), until)).is_some()
                    {
                        sink.err(l, format!("api key {name:?}: previous_key_hashes: a hash is the same as another key's"));
                    }
                }
            }
        }
        store.all.push(cred);
    }
    store
}

fn custom_roles(
    roles: &BTreeMap<String, Vec<String>>,
    sink: &mut Sink<'_>,
) -> HashMap<String, Vec<Permission>> {
    let mut out = HashMap::new();
    let roles_line = sink.loc.top_key("roles");
    for (name, perms) in roles {
        let line = sink.loc.contains_after(roles_line, &format!("{name}:"));
        if builtin_role(name).is_some() {
            sink.err(line, format!("role {name:?} is built in and cannot be redefined"));
            continue;
        }
        if !valid_name(name) {
            sink.err(line, format!("role {name:?}: name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"));
        }
        let p = permissions(perms, line, &format!("role {name:?}"), sink);
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
