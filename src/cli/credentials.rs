//! `portcullis credentials …`: create, list, show, disable, enable, delete and rotate the
//! clients and API keys of the credentials file (SPEC §1, §4, §8).
//!
//! **Secrets.** 43 characters drawn uniformly from base62 with the OS RNG (43·log2 62 ≈
//! 256.03 bits), after a prefix that secret scanners can match, and followed by a
//! 6-character base62 CRC-32 of prefix and random part, so that a scanner can tell a
//! real secret from a look-alike offline (as GitHub's tokens do):
//!
//! | what | prefix | stored as |
//! |---|---|---|
//! | API key, `environment: production` | `pcl_live_` | `key_hash: "sha256:<hex>"` |
//! | API key, sandbox (or `--file`) | `pcl_test_` | `key_hash: "sha256:<hex>"` |
//! | client secret, production | `pcs_live_` | `secret_hash: "$argon2id$…"` (argon2 defaults) |
//! | client secret, sandbox (or `--file`) | `pcs_test_` | `secret_hash: "$argon2id$…"` |
//!
//! A secret is printed once and never written anywhere.
//!
//! **Writes.** The file is edited as text, so that comments, blank lines, quoting and the
//! order of everything else are kept: the entry's block is located by its place in its
//! section (`clients:` / `api_keys:`) and only its lines are inserted, replaced or removed.
//! The edit is then checked against the same change made on the parsed document; if the
//! two differ (a layout this editor does not handle, e.g. flow style), the file is written
//! from the parsed document instead and a note says that its comments were lost. The new
//! text is validated by the loader's own credentials validation
//! ([`config::credentials_from_text`]) before anything is written; then it goes to a
//! temporary file in the same directory (same mode and owner), which is fsynced and
//! renamed over the file, and the directory is fsynced. Writers take an exclusive lock on
//! the directory, and a file changed by someone else since it was read is not overwritten.
//! Any failure leaves the file byte for byte as it was. A running sidecar picks the change
//! up by hot reload.
//!
//! **Rotation overlap.** `rotate --overlap 1h` keeps the old hash in
//! `previous_key_hashes` / `previous_secret_hashes` (`{hash, until}`), which the loader
//! accepts and the request path and the token endpoint honour until `until`.
use std::fmt::Write as _;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use chrono::Months;
use serde_json::json;

use crate::config::raw::{strings, EntryRaw, MainRaw};
use crate::config::validate::{
    self, parse_expires, parse_net, valid_name, EXPIRY_WARNING_SECS, MAX_ALLOWED_IPS,
};
use crate::config::{self, CredentialStore, Environment, RouteTable};
use crate::permission::{builtin_role, Permission, Scope, Target, BUILTIN_ROLES};
use crate::config::parent_dir;
use crate::store::file::{FileStore, View};
use crate::store::secret::{hash_secret, new_secret};
use crate::store::span::{human_span, parse_span, rfc3339, span_secs, today};
use crate::store::{change, Change, Kind, NewEntry, Store};

/// `portcullis credentials`: the file to work on, and what to do.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The main config (portcullis.yaml): its `credentials_file` is edited, under the
    /// rules of its `environment`.
    #[arg(long, short, global = true, conflicts_with = "file")]
    pub config: Option<PathBuf>,
    /// The credentials file itself (sandbox rules; use --config for production's).
    #[arg(long, global = true)]
    pub file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

/// The credential commands.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Create a client or an API key; its secret is printed once, only its hash is stored.
    ///
    /// The secret is 256 bits from the OS RNG in base62, after a prefix secret scanners can
    /// match (API keys pcl_live_ in production, pcl_test_ otherwise; client secrets
    /// pcs_live_ / pcs_test_) and before a 6-character CRC-32 checksum. An API key is
    /// stored as key_hash "sha256:<hex>", a client secret as an argon2id PHC string.
    Create(CreateArgs),
    /// List clients and API keys: access, allowlist, expiry and state.
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one credential.
    Show {
        name: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Disable a credential: an API key is rejected at once, a client gets no new tokens.
    Disable { name: String },
    /// Enable a disabled credential.
    Enable { name: String },
    /// Delete a credential (asks for confirmation unless --yes).
    Delete {
        name: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Replace a credential's secret; the new one is printed once.
    Rotate {
        name: String,
        /// Keep the old secret working this long too (e.g. 30m, 1h, 2d; at most 30d),
        /// so that a deployment can roll over without an outage. Default: it stops at once.
        #[arg(long)]
        overlap: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

/// `--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// A built-in role, by its use.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Preset {
    Wallets,
    Transactions,
    Controls,
    Monitoring,
}

impl Preset {
    fn role(self) -> &'static str {
        match self {
            Preset::Wallets => "wallets",
            Preset::Transactions => "transactions",
            Preset::Controls => "controls",
            Preset::Monitoring => "monitoring",
        }
    }
}

/// `credentials create`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[arg(value_enum)]
    pub kind: Kind,
    /// Unique name (client id): [A-Za-z0-9][A-Za-z0-9._-]{0,63}.
    #[arg(long)]
    pub name: String,
    /// A role (built in: wallets, transactions, controls, monitoring; or the file's own).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// A permission, type:action[@scope[/resource]] (e.g. balances:read@vault/v-123).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// An address or CIDR the credential may be used from (at most 6; commas allowed).
    #[arg(long = "allow-ip")]
    pub allow_ips: Vec<String>,
    /// Expiry: a date (valid through that day, UTC) or an RFC 3339 timestamp.
    #[arg(long, conflicts_with = "expires_in")]
    pub expires: Option<String>,
    /// Expiry from now: 90d, 12w, 1y (a date), or 36h, 30m (an exact time). Default: 1y.
    #[arg(long)]
    pub expires_in: Option<String>,
    /// 5 to 50 characters, e.g. "Production - Reporting".
    #[arg(long)]
    pub description: Option<String>,
    /// Free text.
    #[arg(long)]
    pub notes: Option<String>,
    /// Link an API key to a user: it acts with the user's current permissions.
    #[arg(long)]
    pub user: Option<String>,
    /// A built-in role by use (the same as --role).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// A failure, printed as `portcullis credentials: <message>`.
#[derive(Debug)]
pub struct Failure(pub String);

impl<T: Into<String>> From<T> for Failure {
    fn from(s: T) -> Self {
        Failure(s.into())
    }
}

type Res<T> = Result<T, Failure>;

/// Runs a `credentials` command; returns the exit status (0 = done, 1 = failed; the file is
/// then unchanged).
pub fn run(args: &Args) -> i32 {
    let mut out = std::io::stdout();
    match run_to(args, &mut out) {
        Ok(()) => 0,
        Err(Failure(msg)) => {
            let _ = out.flush();
            eprintln!("portcullis credentials: {msg}");
            1
        }
    }
}

fn run_to(args: &Args, out: &mut dyn Write) -> Res<()> {
    let loc = Location::resolve(args)?;
    let now = config::unix_now();
    match &args.command {
        Cmd::Create(c) => create(&loc, c, now, out),
        Cmd::List { output } => list(&loc, *output, now, out),
        Cmd::Show { name, output } => show(&loc, name, *output, now, out),
        Cmd::Disable { name } => set_disabled(&loc, name, true, now, out),
        Cmd::Enable { name } => set_disabled(&loc, name, false, now, out),
        Cmd::Delete { name, yes } => delete(&loc, name, *yes, now, out),
        Cmd::Rotate {
            name,
            overlap,
            output,
        } => rotate(&loc, name, overlap.as_deref(), *output, now, out),
    }
}

fn emit(out: &mut dyn Write, text: &str) -> Res<()> {
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Failure(format!("cannot write the output: {e}")))
}

// ---------------------------------------------------------------------------------
// Where the file is, and what the main config says about it.

/// What the main config says that matters here.
struct MainInfo {
    /// Where a client on this machine reaches the proxy, e.g. `http://127.0.0.1:8080`.
    base_url: String,
    /// The token endpoint path, when a signing key is configured.
    token_endpoint: Option<String>,
    client_id_prefix: String,
    revoke_on_disable: bool,
    routes: RouteTable,
}

/// The credentials file to work on, and what the main config says about it.
struct Location {
    store: FileStore,
    main: Option<MainInfo>,
}

impl Location {
    fn resolve(args: &Args) -> Res<Location> {
        let (shown, env, main) = match (&args.config, &args.file) {
            (Some(c), _) => main_config(c)?,
            (None, Some(f)) => (f.clone(), Environment::Sandbox, None),
            (None, None) => {
                return Err(
                    "say which file: --config portcullis.yaml (or --file credentials.yaml)".into(),
                )
            }
        };
        Ok(Location { store: FileStore::resolve(shown, env)?, main })
    }

    fn label(&self) -> String {
        self.store.label()
    }
}

/// Reads the main config for the credentials path, environment, listener and routes.
fn main_config(path: &Path) -> Res<(PathBuf, Environment, Option<MainInfo>)> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let raw: MainRaw = config::parse(path, &text).map_err(|e| e.to_string())?;
    let base = parent_dir(path);
    let cred = validate::credentials_path(&raw, &base);
    let env = match raw.environment.as_deref().map(String::as_str) {
        None | Some("sandbox") => Environment::Sandbox,
        Some("production") => Environment::Production,
        Some(other) => {
            return Err(format!(
                "{}: environment {other:?} must be sandbox or production",
                path.display()
            )
            .into())
        }
    };
    let mut sink = validate::Sink::new(path);
    let routes = validate::routes(&raw.routes, &mut sink);
    let host = match raw.listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() && a.is_ipv6() => format!("[::1]:{}", a.port()),
        Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Ok(a) => a.to_string(),
        Err(_) => raw.listen.clone(),
    };
    let scheme = if raw.tls.is_some() { "https" } else { "http" };
    let tokens = raw.tokens.as_ref();
    let info = MainInfo {
        base_url: format!("{scheme}://{host}"),
        token_endpoint: tokens
            .filter(|t| t.signing_key.is_some())
            .map(|t| t.endpoint.as_deref().cloned().unwrap_or_else(|| "/oauth/token".into())),
        client_id_prefix: tokens
            .and_then(|t| t.client_id_prefix.as_deref().cloned())
            .unwrap_or_default(),
        revoke_on_disable: tokens.and_then(|t| t.revoke_on_disable).unwrap_or(false),
        routes,
    };
    Ok((cred, env, Some(info)))
}

fn note_comments_lost(loc: &Location, kept: bool) {
    if !kept {
        eprintln!(
            "note: {} could not be edited in place (its layout is not block style), so it was \
             rewritten from its parsed content: its comments were lost",
            loc.label()
        );
    }
}

/// The `expires` text for `create`: as given, or from `--expires-in`, or a year from today.
fn expiry_text(c: &CreateArgs, now: i64) -> Res<String> {
    let text = match (&c.expires, &c.expires_in) {
        (Some(e), _) => e.trim().to_string(),
        (None, Some(span)) => {
            let (n, unit) = parse_span(span, "--expires-in")?;
            match unit {
                'd' | 'w' | 'y' => {
                    let date = match unit {
                        'y' => u32::try_from(n.saturating_mul(12))
                            .ok()
                            .and_then(|m| today(now).checked_add_months(Months::new(m))),
                        _ => today(now).checked_add_days(chrono::Days::new(
                            span_secs(n, unit) as u64 / 86_400,
                        )),
                    };
                    date.ok_or_else(|| format!("--expires-in {span:?} is out of range"))?
                        .format("%Y-%m-%d")
                        .to_string()
                }
                _ => rfc3339(now.saturating_add(span_secs(n, unit))),
            }
        }
        (None, None) => today(now)
            .checked_add_months(Months::new(12))
            .ok_or("cannot compute a year from today")?
            .format("%Y-%m-%d")
            .to_string(),
    };
    let at = parse_expires(&text).map_err(|e| format!("--expires: {e}"))?;
    if at <= now {
        return Err(format!("--expires {text}: that is in the past").into());
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------
// create

fn create(loc: &Location, c: &CreateArgs, now: i64, out: &mut dyn Write) -> Res<()> {
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
    let ips: Vec<String> = c
        .allow_ips
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ips.len() > MAX_ALLOWED_IPS {
        return Err(format!(
            "--allow-ip: {} entries given, at most {MAX_ALLOWED_IPS} are allowed",
            ips.len()
        )
        .into());
    }
    for ip in &ips {
        let net = parse_net(ip).map_err(|e| format!("--allow-ip: {e}"))?;
        if net.prefix_len() == 0 && loc.store.env == Environment::Production {
            return Err(
                format!("--allow-ip {ip}: in production no entry may allow every address").into(),
            );
        }
    }
    if ips.is_empty() && loc.store.env == Environment::Production {
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

    let secret = new_secret(kind, loc.store.env);
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
    };
    // Any version: concurrent creates all land (the lock serializes them, and the loader's
    // validation under it refuses a name taken in between).
    let applied = loc.store.apply(&Change::Create { kind, entry }, None, now)?;
    let (store, kept) = (applied.store, applied.comments_kept);
    note_comments_lost(loc, kept);

    let grants: Vec<Permission> = store
        .all
        .iter()
        .find(|x| &*x.id == name)
        .map(|x| x.grants.to_vec())
        .unwrap_or_default();
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
    let _ = writeln!(
        s,
        "\n{}:\n  {curl}",
        if kind == Kind::Client {
            "Get a token"
        } else {
            "Try it"
        }
    );
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
fn curl_line(
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

// ---------------------------------------------------------------------------------
// list and show

/// One credential as the file has it (the loader's own view of a client or key), with
/// its state at `now`.
type Entry<'a> = EntryRaw<'a>;

impl<'a> EntryRaw<'a> {
    fn expires_at(&self) -> Option<i64> {
        parse_expires(self.expires).ok()
    }

    /// Old secrets still accepted at `now`, with their `until`.
    fn overlapping(&self, now: i64) -> Vec<(i64, &'a str)> {
        self.previous
            .iter()
            .filter_map(|p| parse_expires(&p.until).ok().map(|t| (t, p.until.as_str())))
            .filter(|(t, _)| now < *t)
            .collect()
    }

    /// State flags, most serious first: `disabled`, `EXPIRED`, `USER MISSING`,
    /// `expires in Nd` (within 30 days), `rotating`; `active` when none.
    fn state(&self, now: i64, users: &[String]) -> Vec<String> {
        let mut s = Vec::new();
        if self.disabled {
            s.push("DISABLED".to_string());
        }
        match self.expires_at() {
            None => s.push("BAD EXPIRY".to_string()),
            Some(t) if now >= t => s.push("EXPIRED".to_string()),
            Some(t) if t - now <= EXPIRY_WARNING_SECS => {
                s.push(format!("expires in {}", human_span(t - now)))
            }
            Some(_) => {}
        }
        if let Some(u) = self.user {
            if !users.iter().any(|x| x == u) {
                s.push("USER MISSING".to_string());
            }
        }
        if let Some((t, _)) = self.overlapping(now).into_iter().max() {
            s.push(format!("rotating: old secret works until {}", rfc3339(t)));
        }
        if s.is_empty() {
            s.push("active".to_string());
        }
        s
    }

    fn access(&self) -> String {
        let mut parts: Vec<String> = self.roles.iter().map(|r| format!("role:{}", r.as_str())).collect();
        parts.extend(strings(self.permissions));
        if let Some(u) = self.user {
            parts.push(format!("user:{u}"));
        }
        if parts.is_empty() {
            "(none)".to_string()
        } else {
            parts.join(", ")
        }
    }

    fn ips(&self) -> String {
        match self.allowed_ips {
            None => "any".to_string(),
            Some(l) => strings(l).join(", "),
        }
    }

    fn json(
        &self,
        now: i64,
        users: &[String],
        effective: Option<Vec<String>>,
    ) -> serde_json::Value {
        let mut v = json!({
            "name": self.name.as_str(),
            "kind": self.kind.json(),
            "user": self.user,
            "roles": strings(self.roles),
            "permissions": strings(self.permissions),
            "allowed_ips": self.allowed_ips.as_ref().map(|l| strings(l)),
            "expires": self.expires.as_str(),
            "expires_at": self.expires_at().map(rfc3339),
            "disabled": self.disabled,
            "expired": self.expires_at().is_none_or(|t| now >= t),
            "state": self.state(now, users),
            "description": self.description.as_deref(),
            "notes": self.notes,
            "previous_secret_until": self.overlapping(now).into_iter().max().map(|(t, _)| rfc3339(t)),
        });
        if let Some(e) = effective {
            v["effective_permissions"] = json!(e);
        }
        v
    }
}


/// Validates the file as it is, for `list`/`show`: warnings on stderr, never fatal.
fn validated(loc: &Location, cur: &View, now: i64) -> Option<CredentialStore> {
    match config::credentials_from_text(&loc.store.shown, cur.text.as_deref().unwrap_or(""), loc.store.env, now)
    {
        Ok((store, _)) => Some(store),
        Err(errs) => {
            eprintln!(
                "warning: the sidecar would refuse {} as it is:\n{errs}",
                loc.label()
            );
            None
        }
    }
}

fn list(loc: &Location, output: Output, now: i64, out: &mut dyn Write) -> Res<()> {
    let cur = loc.store.read(true)?;
    let _ = validated(loc, &cur, now);
    let users: Vec<String> = cur.raw.users.iter().map(|u| u.name.to_string()).collect();
    let entries = cur.raw.entries().collect::<Vec<_>>();
    if output == Output::Json {
        let v: Vec<_> = entries.iter().map(|e| e.json(now, &users, None)).collect();
        return emit(out, &format!("{:#}\n", serde_json::Value::Array(v)));
    }
    let mut rows =
        vec![["NAME", "KIND", "ACCESS", "ALLOWED IPS", "EXPIRES", "STATE"].map(String::from)];
    for e in &entries {
        rows.push([
            e.name.to_string(),
            e.kind.label().to_string(),
            e.access(),
            e.ips(),
            e.expires.to_string(),
            e.state(now, &users).join(", "),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let count = |f: &dyn Fn(&Entry<'_>) -> bool| entries.iter().filter(|e| f(e)).count();
    let expired = count(&|e| e.expires_at().is_none_or(|t| now >= t));
    let disabled = count(&|e| e.disabled);
    let soon = count(&|e| {
        e.expires_at()
            .is_some_and(|t| now < t && t - now <= EXPIRY_WARNING_SECS)
    });
    let _ = writeln!(
        s,
        "\n{} credential(s): {expired} expired, {disabled} disabled, {soon} expiring within 30 days",
        entries.len()
    );
    emit(out, &s)
}

fn show(loc: &Location, name: &str, output: Output, now: i64, out: &mut dyn Write) -> Res<()> {
    let cur = loc.store.read(true)?;
    let store = validated(loc, &cur, now);
    let users: Vec<String> = cur.raw.users.iter().map(|u| u.name.to_string()).collect();
    let entries = cur.raw.entries().collect::<Vec<_>>();
    let e = entries
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| no_such(loc, name))?;
    let effective = store.as_ref().and_then(|s| {
        s.all.iter().find(|c| &*c.id == name).map(|c| {
            c.grants
                .iter()
                .map(|g| g.as_str().to_string())
                .collect::<Vec<_>>()
        })
    });
    if output == Output::Json {
        return emit(out, &format!("{:#}\n", e.json(now, &users, effective)));
    }
    let mut s = String::new();
    let mut row = |k: &str, v: &str| {
        let _ = writeln!(s, "{:<24}{v}", format!("{k}:"));
    };
    row("name", e.name);
    row("kind", e.kind.label());
    row("state", &e.state(now, &users).join(", "));
    let valid = e.expires_at().map_or("not a valid date".to_string(), |t| {
        format!("no longer valid from {}", rfc3339(t))
    });
    row("expires", &format!("{} ({valid})", e.expires));
    if let Some(u) = e.user {
        row("user", u);
    }
    row(
        "roles",
        &if e.roles.is_empty() {
            "(none)".to_string()
        } else {
            strings(e.roles).join(", ")
        },
    );
    row(
        "permissions",
        &if e.permissions.is_empty() {
            "(none)".to_string()
        } else {
            strings(e.permissions).join(", ")
        },
    );
    if let Some(eff) = &effective {
        row(
            "effective permissions",
            &if eff.is_empty() {
                "(none)".to_string()
            } else {
                eff.join(", ")
            },
        );
    }
    row("allowed ips", &e.ips());
    if let Some(d) = e.description {
        row("description", d);
    }
    if let Some(n) = e.notes {
        row("notes", n);
    }
    let shown_hash = if e.hash.starts_with("$argon2id$") {
        "argon2id".to_string()
    } else {
        format!("{}…", e.hash.chars().take(19).collect::<String>())
    };
    row(
        e.kind.hash_key(),
        &format!("{shown_hash} (only a hash of the secret is stored)"),
    );
    for (t, _) in e.overlapping(now) {
        row(
            "previous secret",
            &format!("still accepted until {}", rfc3339(t)),
        );
    }
    emit(out, &s)
}

fn no_such(loc: &Location, name: &str) -> Failure {
    Failure(format!(
        "no client or API key named {name:?} in {}",
        loc.label()
    ))
}

// ---------------------------------------------------------------------------------
// disable, enable, delete, rotate

/// Where `name` is: its kind and its index in its section.
fn locate(cur: &View, loc: &Location, name: &str) -> Res<(Kind, usize)> {
    change::locate(&cur.raw, name).ok_or_else(|| no_such(loc, name))
}

fn set_disabled(
    loc: &Location,
    name: &str,
    disabled: bool,
    now: i64,
    out: &mut dyn Write,
) -> Res<()> {
    let cur = loc.store.read(true)?;
    let (kind, idx) = locate(&cur, loc, name)?;
    let was = match kind {
        Kind::Client => cur.raw.clients[idx].disabled,
        Kind::ApiKey => cur.raw.api_keys[idx].disabled,
    };
    let verb = if disabled { "disabled" } else { "enabled" };
    if was == disabled {
        return emit(
            out,
            &format!(
                "{} {name:?} is already {verb}; nothing to do\n",
                kind.label()
            ),
        );
    }
    let change = Change::SetDisabled { name: name.to_string(), disabled };
    note_comments_lost(loc, loc.store.apply(&change, Some(cur.version), now)?.comments_kept);
    let effect = match (kind, disabled) {
        (Kind::ApiKey, true) => "the key is rejected at once".to_string(),
        (Kind::Client, true) => {
            let revoke = loc.main.as_ref().is_some_and(|m| m.revoke_on_disable);
            if revoke {
                "it gets no new tokens, and its tokens are rejected at once (tokens.revoke_on_disable)".to_string()
            } else {
                "it gets no new tokens; tokens already issued keep working until they expire"
                    .to_string()
            }
        }
        (_, false) => "it works again".to_string(),
    };
    emit(
        out,
        &format!(
            "{} {name:?} {verb} in {}: {effect} (a running sidecar applies it within a second)\n",
            kind.label(),
            loc.label()
        ),
    )
}

fn delete(loc: &Location, name: &str, yes: bool, now: i64, out: &mut dyn Write) -> Res<()> {
    let cur = loc.store.read(true)?;
    let (kind, _) = locate(&cur, loc, name)?;
    if !yes {
        confirm(&format!(
            "Delete {} {name:?} from {}? Requests using it are rejected at once{}. This cannot be undone. [y/N] ",
            kind.label(),
            loc.label(),
            if kind == Kind::Client { ", its tokens included" } else { "" }
        ))?;
    }
    let change = Change::Delete { name: name.to_string() };
    note_comments_lost(loc, loc.store.apply(&change, Some(cur.version), now)?.comments_kept);
    emit(
        out,
        &format!("deleted {} {name:?} from {}\n", kind.label(), loc.label()),
    )
}

/// Asks on the terminal; refuses when there is none.
fn confirm(question: &str) -> Res<()> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "not deleting: there is no terminal to confirm on; pass --yes to delete without asking"
                .into(),
        );
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err("not deleted".into())
    }
}

/// Longest `--overlap`: an old secret that lives on for longer is not rotated away.
const MAX_OVERLAP_SECS: i64 = 30 * 86_400;

fn rotate(
    loc: &Location,
    name: &str,
    overlap: Option<&str>,
    output: Output,
    now: i64,
    out: &mut dyn Write,
) -> Res<()> {
    let until = match overlap {
        None => None,
        Some(o) => {
            let (n, unit) = parse_span(o, "--overlap")?;
            let secs = span_secs(n, unit);
            if secs > MAX_OVERLAP_SECS {
                return Err(format!("--overlap {o}: at most 30d").into());
            }
            Some(now + secs)
        }
    };
    let cur = loc.store.read(true)?;
    let (kind, _) = locate(&cur, loc, name)?;
    let secret = new_secret(kind, loc.store.env);
    let hash = hash_secret(kind, &secret)?;
    let change = Change::Rotate { name: name.to_string(), hash, overlap_until: until };
    let applied = loc.store.apply(&change, Some(cur.version), now)?;
    note_comments_lost(loc, applied.comments_kept);
    let store = applied.store;

    let grants: Vec<Permission> = store
        .all
        .iter()
        .find(|x| &*x.id == name)
        .map(|x| x.grants.to_vec())
        .unwrap_or_default();
    let curl = curl_line(loc, kind, name, &secret, &grants);
    let old_until = until.map(rfc3339);
    if output == Output::Json {
        let v = json!({
            "kind": kind.json(), "name": name, "secret": secret, "previous_secret_until": old_until,
            "file": loc.label(), "curl": curl,
        });
        return emit(out, &format!("{v:#}\n"));
    }
    let mut s = String::new();
    let _ = writeln!(s, "Rotated {} {name:?} in {}.", kind.label(), loc.label());
    let _ = writeln!(s, "\n    {secret}\n");
    let _ = writeln!(
        s,
        "This is the only time the new secret is shown: store it now."
    );
    match &old_until {
        Some(t) => {
            let _ = writeln!(
                s,
                "The old secret keeps working until {t}; deploy the new one before then."
            );
        }
        None => {
            let _ = writeln!(s, "The old secret stops working as soon as a running sidecar reloads (within a second).");
        }
    }
    if kind == Kind::Client {
        let _ = writeln!(s, "Tokens already issued keep working until they expire.");
    }
    let _ = writeln!(
        s,
        "\n{}:\n  {curl}",
        if kind == Kind::Client {
            "Get a token"
        } else {
            "Try it"
        }
    );
    emit(out, &s)
}
