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
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Months, NaiveDate, Utc};
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::json;
use serde_json::Value;

type Mapping = serde_json::Map<String, Value>;
use sha2::{Digest, Sha256};

use crate::config::raw::{ApiKeyRaw, ClientRaw, CredentialsRaw, MainRaw, PreviousHashRaw};
use crate::config::validate::{
    self, parse_expires, parse_net, valid_name, EXPIRY_WARNING_SECS, MAX_ALLOWED_IPS,
};
use crate::config::{self, CredentialStore, Environment, RouteTable};
use crate::permission::{builtin_role, Permission, Scope, Target, BUILTIN_ROLES};

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

/// What `create` makes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An OAuth client (client credentials grant).
    Client,
    /// An API key (x-api-key).
    ApiKey,
}

impl Kind {
    fn section(self) -> &'static str {
        match self {
            Kind::Client => "clients",
            Kind::ApiKey => "api_keys",
        }
    }
    fn name_key(self) -> &'static str {
        match self {
            Kind::Client => "id",
            Kind::ApiKey => "name",
        }
    }
    fn hash_key(self) -> &'static str {
        match self {
            Kind::Client => "secret_hash",
            Kind::ApiKey => "key_hash",
        }
    }
    fn previous_key(self) -> &'static str {
        match self {
            Kind::Client => "previous_secret_hashes",
            Kind::ApiKey => "previous_key_hashes",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::ApiKey => "api key",
        }
    }
    fn json(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::ApiKey => "api_key",
        }
    }
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

/// The credentials file to work on.
struct Location {
    /// As the user named it (for messages).
    shown: PathBuf,
    /// The real file (symlinks resolved, so that a link is written through, not replaced).
    real: PathBuf,
    env: Environment,
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
        let real = match fs::canonicalize(&shown) {
            Ok(p) => p,
            Err(_) => {
                // Not there yet (create makes it): resolve the directory instead.
                let dir = parent_dir(&shown);
                let dir = fs::canonicalize(&dir).map_err(|e| {
                    format!(
                        "{}: cannot use the directory {}: {e}",
                        shown.display(),
                        dir.display()
                    )
                })?;
                dir.join(
                    shown
                        .file_name()
                        .ok_or_else(|| format!("{} is not a file name", shown.display()))?,
                )
            }
        };
        Ok(Location {
            shown,
            real,
            env,
            main,
        })
    }

    fn label(&self) -> String {
        self.shown.display().to_string()
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads the main config for the credentials path, environment, listener and routes.
fn main_config(path: &Path) -> Res<(PathBuf, Environment, Option<MainInfo>)> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let raw: MainRaw = config::parse(path, &text).map_err(|e| e.to_string())?;
    let base = parent_dir(path);
    let cred = validate::credentials_path(&raw, &base);
    let env = match raw.environment.as_deref() {
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
    let mut sink = validate::Sink::new(path, &text);
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
            .map(|t| t.endpoint.clone().unwrap_or_else(|| "/oauth/token".into())),
        client_id_prefix: tokens
            .and_then(|t| t.client_id_prefix.clone())
            .unwrap_or_default(),
        revoke_on_disable: tokens.and_then(|t| t.revoke_on_disable).unwrap_or(false),
        routes,
    };
    Ok((cred, env, Some(info)))
}

// ---------------------------------------------------------------------------------
// Reading and writing.

/// The file as read, parsed both ways.
struct Current {
    /// `None` when the file does not exist yet.
    text: Option<String>,
    raw: CredentialsRaw,
    value: Value,
}

fn read_current(loc: &Location, must_exist: bool) -> Res<Current> {
    let text = match fs::read_to_string(&loc.real) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => None,
        Err(e) => return Err(format!("{}: cannot read: {e}", loc.label()).into()),
    };
    let body = text.as_deref().unwrap_or("");
    // The loader's own parser, so the CLI reads a file exactly as the sidecar does.
    let value: Value = if body.trim().is_empty() {
        Value::Null
    } else {
        config::parse(&loc.shown, body).map_err(|e| e.to_string())?
    };
    if value.is_null() {
        // Empty, or comments only: a file to add to.
        return Ok(Current {
            text,
            raw: CredentialsRaw::default(),
            value: Value::Object(Mapping::new()),
        });
    }
    let raw: CredentialsRaw = config::parse(&loc.shown, body).map_err(|e| e.to_string())?;
    Ok(Current { text, raw, value })
}

/// An exclusive lock on the file's directory, held for one read-modify-write.
struct DirLock {
    dir: File,
    path: PathBuf,
}

fn lock_dir(loc: &Location) -> Res<DirLock> {
    let path = parent_dir(&loc.real);
    let dir = File::open(&path)
        .map_err(|e| format!("cannot open the directory {}: {e}", path.display()))?;
    dir.lock()
        .map_err(|e| format!("cannot lock the directory {}: {e}", path.display()))?;
    Ok(DirLock { dir, path })
}

/// Validates `new_text` as the sidecar would, then writes it atomically in place of the
/// file read as `old`. Returns the validated store and the load's warnings.
fn commit(
    loc: &Location,
    lock: &DirLock,
    old: &Current,
    new_text: &str,
    now: i64,
) -> Res<(CredentialStore, Vec<String>)> {
    let validated =
        config::credentials_from_text(&loc.shown, new_text, loc.env, now).map_err(|errs| {
            format!(
                "the change was not written: the sidecar would refuse the resulting file:\n{errs}"
            )
        })?;
    write_atomic(loc, lock, old.text.as_deref(), new_text)
        .map_err(|e| format!("cannot write {}: {e}; the file is unchanged", loc.label()))?;
    Ok(validated)
}

fn write_atomic(
    loc: &Location,
    lock: &DirLock,
    old: Option<&str>,
    text: &str,
) -> Result<(), String> {
    let path = &loc.real;
    let meta = fs::metadata(path).ok();
    let mode = meta
        .as_ref()
        .map_or(0o600, |m| m.permissions().mode() & 0o7777);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = lock
        .path
        .join(format!(".{name}.{:08x}.tmp", OsRng.next_u32()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| {
            format!(
                "cannot create a temporary file in {}: {e}",
                lock.path.display()
            )
        })?;
    let result = (|| {
        f.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        if let Some(m) = &meta {
            // Keep the owner, so a sidecar running as another user can still read it.
            // Only root may give a file away; for anyone else this is already the owner.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.sync_all()
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        // Someone (an editor, a deploy) changed the file since it was read: do not
        // overwrite their change.
        let now_text = fs::read_to_string(path).ok();
        if now_text.as_deref() != old {
            return Err(
                "it was changed by someone else while this command ran; run the command again"
                    .to_string(),
            );
        }
        fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} over it: {e}", tmp.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    lock.dir
        .sync_all()
        .map_err(|e| format!("written, but the directory could not be synced: {e}"))
}

/// Applies one change: `value` is the parsed document after the change, `text` the edited
/// text (`None` when the text could not be edited in place). Returns the text to write and
/// whether the comments were kept.
fn settle(value: &Value, text: Option<String>) -> Res<(String, bool)> {
    if let Some(t) = text {
        if config::parse::<Value>(Path::new(""), &t).ok().as_ref() == Some(value) {
            return Ok((t, true));
        }
    }
    let t = serde_saphyr::to_string(value).map_err(|e| format!("cannot render the file: {e}"))?;
    Ok((t, false))
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

// ---------------------------------------------------------------------------------
// Secrets.

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random base62 characters in a secret: 43·log2(62) ≈ 256.03 bits.
const SECRET_CHARS: usize = 43;

/// A new secret: prefix, 43 random base62 characters from the OS RNG, 6-character checksum.
pub fn new_secret(kind: Kind, env: Environment) -> String {
    let prefix = match (kind, env) {
        (Kind::ApiKey, Environment::Production) => "pcl_live_",
        (Kind::ApiKey, Environment::Sandbox) => "pcl_test_",
        (Kind::Client, Environment::Production) => "pcs_live_",
        (Kind::Client, Environment::Sandbox) => "pcs_test_",
    };
    let mut s = String::from(prefix);
    while s.len() < prefix.len() + SECRET_CHARS {
        let mut buf = [0u8; 64];
        OsRng.fill_bytes(&mut buf);
        // 248 = 4·62: rejecting the rest keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if s.len() < prefix.len() + SECRET_CHARS {
                s.push(BASE62[(*b % 62) as usize] as char);
            }
        }
    }
    let sum = checksum(&s);
    s.push_str(&sum);
    s
}

/// Whether `secret` looks like one of ours with an intact checksum.
pub fn checksum_ok(secret: &str) -> bool {
    secret.len() > 6 && secret.is_char_boundary(secret.len() - 6) && {
        let (body, sum) = secret.split_at(secret.len() - 6);
        checksum(body) == sum
    }
}

/// CRC-32 (IEEE) of `s`, as 6 base62 characters.
fn checksum(s: &str) -> String {
    let mut crc = 0xFFFF_FFFFu32;
    for b in s.bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut n = u64::from(!crc);
    let mut out = [b'0'; 6];
    for c in out.iter_mut().rev() {
        *c = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The stored form of a secret: `sha256:<hex>` for keys, an argon2id PHC string for clients.
pub fn hash_secret(kind: Kind, secret: &str) -> Res<String> {
    match kind {
        Kind::ApiKey => Ok(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(secret.as_bytes()))
        )),
        Kind::Client => {
            let mut salt = [0u8; 16];
            OsRng.fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).map_err(|e| format!("argon2 salt: {e}"))?;
            Argon2::default()
                .hash_password(secret.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| format!("argon2: {e}").into())
        }
    }
}

// ---------------------------------------------------------------------------------
// Times.

fn rfc3339(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0).map_or_else(
        || t.to_string(),
        |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

fn today(now: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp(now, 0).map_or(NaiveDate::MIN, |d| d.date_naive())
}

/// Parses `30m`, `1h`, `2d`, `12w`, `1y` into (count, unit).
fn parse_span(s: &str, what: &str) -> Res<(u64, char)> {
    let s = s.trim();
    let unit = s.chars().last().ok_or_else(|| format!("{what}: empty"))?;
    let n: u64 = s[..s.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| format!("{what} {s:?}: expected a number and a unit, e.g. 90d, 36h or 30m"))?;
    if n == 0 || !matches!(unit, 's' | 'm' | 'h' | 'd' | 'w' | 'y') {
        return Err(format!(
            "{what} {s:?}: expected a positive number and a unit (s, m, h, d, w, y)"
        )
        .into());
    }
    Ok((n, unit))
}

fn span_secs(n: u64, unit: char) -> i64 {
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => 365 * 86_400,
    };
    i64::try_from(n).unwrap_or(i64::MAX / 2).saturating_mul(per)
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
// YAML scalars, written as the loader reads them back.

/// `s` as a YAML scalar: plain when that reads back as the same string, else double-quoted
/// (a JSON string is a valid YAML double-quoted scalar).
fn scalar(s: &str) -> String {
    let plain = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null"
        );
    if plain {
        s.to_string()
    } else {
        quoted(s)
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

fn flow_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| scalar(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// An `expires`/`until` value: a bare date plain (as the example files write it), else quoted.
fn date_scalar(s: &str) -> String {
    if s.len() == 10 && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
        s.to_string()
    } else {
        quoted(s)
    }
}

fn vstr(s: &str) -> Value {
    Value::String(s.to_string())
}

fn vlist(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| vstr(s)).collect())
}

// ---------------------------------------------------------------------------------
// create

fn create(loc: &Location, c: &CreateArgs, now: i64, out: &mut dyn Write) -> Res<()> {
    let kind = c.kind;
    let lock = lock_dir(loc)?;
    let cur = read_current(loc, false)?;

    // Checks that name the flag; the loader's validation of the whole file follows.
    let name = c.name.trim();
    if !valid_name(name) {
        return Err(format!(
            "--name {name:?}: a name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"
        )
        .into());
    }
    if let Some(k) = find_kind(&cur.raw, name) {
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
        if net.prefix_len() == 0 && loc.env == Environment::Production {
            return Err(
                format!("--allow-ip {ip}: in production no entry may allow every address").into(),
            );
        }
    }
    if ips.is_empty() && loc.env == Environment::Production {
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
        if !cur.raw.users.iter().any(|x| x.name == *u) {
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

    let secret = new_secret(kind, loc.env);
    let hash = hash_secret(kind, &secret)?;

    // The entry, as text lines (key, value) and as the parsed value the loader will see.
    let mut fields: Vec<(&str, String, Value)> = vec![
        (kind.name_key(), scalar(name), vstr(name)),
        (kind.hash_key(), quoted(&hash), vstr(&hash)),
    ];
    if let Some(u) = &c.user {
        fields.push(("user", scalar(u), vstr(u)));
    }
    if !roles.is_empty() {
        fields.push(("roles", flow_list(&roles), vlist(&roles)));
    }
    if !permissions.is_empty() {
        fields.push(("permissions", flow_list(&permissions), vlist(&permissions)));
    }
    if !ips.is_empty() {
        fields.push(("allowed_ips", flow_list(&ips), vlist(&ips)));
    }
    fields.push(("expires", date_scalar(&expires), vstr(&expires)));
    if let Some(d) = &c.description {
        fields.push(("description", quoted(d), vstr(d)));
    }
    if let Some(n) = &c.notes {
        fields.push(("notes", quoted(n), vstr(n)));
    }

    let mut value = cur.value.clone();
    let entry: Mapping = fields
        .iter()
        .map(|(k, _, v)| (k.to_string(), v.clone()))
        .collect();
    section_seq(&mut value, kind.section())?.push(Value::Object(entry));
    let pairs: Vec<(String, String)> = fields
        .iter()
        .map(|(k, t, _)| (k.to_string(), t.clone()))
        .collect();
    let text = edit::append_item(cur.text.as_deref().unwrap_or(""), kind.section(), &pairs);
    let (new_text, kept) = settle(&value, text)?;
    let (store, _) = commit(loc, &lock, &cur, &new_text, now)?;
    drop(lock);
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

/// The credential kind of `name`, if it exists.
fn find_kind(raw: &CredentialsRaw, name: &str) -> Option<Kind> {
    if raw.clients.iter().any(|c| c.id == name) {
        Some(Kind::Client)
    } else if raw.api_keys.iter().any(|k| k.name == name) {
        Some(Kind::ApiKey)
    } else {
        None
    }
}

/// The top-level sequence `key` of the document, made if absent (or null).
fn section_seq<'v>(doc: &'v mut Value, key: &str) -> Res<&'v mut Vec<Value>> {
    if doc.is_null() {
        *doc = Value::Object(Mapping::new());
    }
    let map = doc
        .as_object_mut()
        .ok_or("the credentials file is not a YAML mapping")?;
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
        .ok_or_else(|| format!("{key} is not a list").into())
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

/// One credential as the file has it, with its state at `now`.
struct Entry<'a> {
    kind: Kind,
    name: &'a str,
    hash: &'a str,
    previous: &'a [PreviousHashRaw],
    user: Option<&'a str>,
    roles: &'a [String],
    permissions: &'a [String],
    allowed_ips: Option<&'a [String]>,
    expires: &'a str,
    disabled: bool,
    description: Option<&'a str>,
    notes: Option<&'a str>,
}

impl<'a> Entry<'a> {
    fn all(raw: &'a CredentialsRaw) -> Vec<Entry<'a>> {
        let clients = raw.clients.iter().map(|c| {
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
            Entry {
                kind: Kind::Client,
                name: id,
                hash: secret_hash,
                previous: previous_secret_hashes,
                user: None,
                roles,
                permissions,
                allowed_ips: allowed_ips.as_deref(),
                expires,
                disabled: *disabled,
                description: description.as_deref(),
                notes: notes.as_deref(),
            }
        });
        let keys = raw.api_keys.iter().map(|k| {
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
            Entry {
                kind: Kind::ApiKey,
                name,
                hash: key_hash,
                previous: previous_key_hashes,
                user: user.as_deref(),
                roles,
                permissions,
                allowed_ips: allowed_ips.as_deref(),
                expires,
                disabled: *disabled,
                description: description.as_deref(),
                notes: notes.as_deref(),
            }
        });
        clients.chain(keys).collect()
    }

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
        let mut parts: Vec<String> = self.roles.iter().map(|r| format!("role:{r}")).collect();
        parts.extend(self.permissions.iter().cloned());
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
            Some(l) => l.join(", "),
        }
    }

    fn json(
        &self,
        now: i64,
        users: &[String],
        effective: Option<Vec<String>>,
    ) -> serde_json::Value {
        let mut v = json!({
            "name": self.name,
            "kind": self.kind.json(),
            "user": self.user,
            "roles": self.roles,
            "permissions": self.permissions,
            "allowed_ips": self.allowed_ips,
            "expires": self.expires,
            "expires_at": self.expires_at().map(rfc3339),
            "disabled": self.disabled,
            "expired": self.expires_at().is_none_or(|t| now >= t),
            "state": self.state(now, users),
            "description": self.description,
            "notes": self.notes,
            "previous_secret_until": self.overlapping(now).into_iter().max().map(|(t, _)| rfc3339(t)),
        });
        if let Some(e) = effective {
            v["effective_permissions"] = json!(e);
        }
        v
    }
}

fn human_span(secs: i64) -> String {
    if secs >= 86_400 {
        format!("{}d", secs / 86_400)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}m", (secs / 60).max(1))
    }
}

/// Validates the file as it is, for `list`/`show`: warnings on stderr, never fatal.
fn validated(loc: &Location, cur: &Current, now: i64) -> Option<CredentialStore> {
    match config::credentials_from_text(&loc.shown, cur.text.as_deref().unwrap_or(""), loc.env, now)
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
    let cur = read_current(loc, true)?;
    let _ = validated(loc, &cur, now);
    let users: Vec<String> = cur.raw.users.iter().map(|u| u.name.clone()).collect();
    let entries = Entry::all(&cur.raw);
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
    let cur = read_current(loc, true)?;
    let store = validated(loc, &cur, now);
    let users: Vec<String> = cur.raw.users.iter().map(|u| u.name.clone()).collect();
    let entries = Entry::all(&cur.raw);
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
            e.roles.join(", ")
        },
    );
    row(
        "permissions",
        &if e.permissions.is_empty() {
            "(none)".to_string()
        } else {
            e.permissions.join(", ")
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
fn locate(cur: &Current, loc: &Location, name: &str) -> Res<(Kind, usize)> {
    if let Some(i) = cur.raw.clients.iter().position(|c| c.id == name) {
        return Ok((Kind::Client, i));
    }
    if let Some(i) = cur.raw.api_keys.iter().position(|k| k.name == name) {
        return Ok((Kind::ApiKey, i));
    }
    Err(no_such(loc, name))
}

/// The parsed entry at `idx` of `kind`'s section.
fn entry_value(doc: &mut Value, kind: Kind, idx: usize) -> Res<&mut Mapping> {
    section_seq(doc, kind.section())?
        .get_mut(idx)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{}: entry {idx} is not a mapping", kind.section()).into())
}

fn set_disabled(
    loc: &Location,
    name: &str,
    disabled: bool,
    now: i64,
    out: &mut dyn Write,
) -> Res<()> {
    let lock = lock_dir(loc)?;
    let cur = read_current(loc, true)?;
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
    let mut value = cur.value.clone();
    entry_value(&mut value, kind, idx)?.insert("disabled".into(), Value::Bool(disabled));
    let text = cur.text.as_deref().unwrap_or("");
    let text = edit::set_key(
        text,
        kind.section(),
        idx,
        "disabled",
        &[disabled.to_string()],
    );
    let (new_text, kept) = settle(&value, text)?;
    commit(loc, &lock, &cur, &new_text, now)?;
    drop(lock);
    note_comments_lost(loc, kept);
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
    let cur = read_current(loc, true)?;
    let (kind, _) = locate(&cur, loc, name)?;
    if !yes {
        confirm(&format!(
            "Delete {} {name:?} from {}? Requests using it are rejected at once{}. This cannot be undone. [y/N] ",
            kind.label(),
            loc.label(),
            if kind == Kind::Client { ", its tokens included" } else { "" }
        ))?;
    }
    let lock = lock_dir(loc)?;
    let cur = read_current(loc, true)?;
    let (kind, idx) = locate(&cur, loc, name)?;
    let mut value = cur.value.clone();
    section_seq(&mut value, kind.section())?.remove(idx);
    let text = edit::remove_item(cur.text.as_deref().unwrap_or(""), kind.section(), idx);
    let (new_text, kept) = settle(&value, text)?;
    commit(loc, &lock, &cur, &new_text, now)?;
    drop(lock);
    note_comments_lost(loc, kept);
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
    let lock = lock_dir(loc)?;
    let cur = read_current(loc, true)?;
    let (kind, idx) = locate(&cur, loc, name)?;
    let (old_hash, previous) = match kind {
        Kind::Client => (
            &cur.raw.clients[idx].secret_hash,
            &cur.raw.clients[idx].previous_secret_hashes,
        ),
        Kind::ApiKey => (
            &cur.raw.api_keys[idx].key_hash,
            &cur.raw.api_keys[idx].previous_key_hashes,
        ),
    };
    // With an overlap, older secrets still inside their own overlap stay; without one,
    // every old secret stops now (a rotation after a leak).
    let mut keep: Vec<(String, String)> = Vec::new();
    if let Some(until) = until {
        for p in previous {
            if parse_expires(&p.until).is_ok_and(|t| now < t) {
                keep.push((p.hash.clone(), p.until.clone()));
            }
        }
        keep.push((old_hash.clone(), rfc3339(until)));
    }
    let secret = new_secret(kind, loc.env);
    let hash = hash_secret(kind, &secret)?;

    let mut value = cur.value.clone();
    let entry = entry_value(&mut value, kind, idx)?;
    entry.insert(kind.hash_key().into(), vstr(&hash));
    let prev_key = kind.previous_key().to_string();
    if keep.is_empty() {
        entry.remove(&prev_key);
    } else {
        let list = keep
            .iter()
            .map(|(h, u)| {
                Value::Object(
                    [("hash".to_string(), vstr(h)), ("until".to_string(), vstr(u))]
                        .into_iter()
                        .collect(),
                )
            })
            .collect();
        entry.insert(prev_key, Value::Array(list));
    }
    let text = cur.text.as_deref().unwrap_or("");
    let text = edit::set_key(text, kind.section(), idx, kind.hash_key(), &[quoted(&hash)])
        .and_then(|t| {
            if keep.is_empty() {
                edit::remove_key(&t, kind.section(), idx, kind.previous_key())
            } else {
                let lines: Vec<String> = keep
                    .iter()
                    .map(|(h, u)| format!("  - {{hash: {}, until: {}}}", quoted(h), date_scalar(u)))
                    .collect();
                edit::set_key(
                    &t,
                    kind.section(),
                    idx,
                    kind.previous_key(),
                    &[String::new()],
                )
                .and_then(|t| edit::set_block(&t, kind.section(), idx, kind.previous_key(), &lines))
            }
        });
    let (new_text, kept) = settle(&value, text)?;
    let (store, _) = commit(loc, &lock, &cur, &new_text, now)?;
    drop(lock);
    note_comments_lost(loc, kept);

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

// ---------------------------------------------------------------------------------
// Text edits of a block-style YAML document.

/// Edits of the credentials file as text, so that everything not edited stays byte for
/// byte. Each function returns `None` when the layout is not one it understands (the
/// caller then falls back to rewriting the parsed document).
///
/// The model: a top-level section (`api_keys:` at column 0) holds a block sequence; an
/// item starts at a `-` line at the sequence's indent and runs to its last non-blank,
/// non-comment line before the next item. Comment lines directly above an item (no blank
/// line between) belong to it.
pub mod edit {
    fn indent(l: &str) -> usize {
        l.len() - l.trim_start_matches(' ').len()
    }
    fn body(l: &str) -> &str {
        l.trim_end_matches('\r')
    }
    fn blank(l: &str) -> bool {
        body(l).trim().is_empty()
    }
    fn comment(l: &str) -> bool {
        l.trim_start().starts_with('#')
    }
    fn content(l: &str) -> bool {
        !blank(l) && !comment(l)
    }
    fn dash(l: &str) -> bool {
        let t = body(l).trim_start_matches(' ');
        t == "-" || t.starts_with("- ")
    }

    /// The file as lines (without `\n`), and how lines end.
    struct Doc {
        lines: Vec<String>,
        crlf: bool,
    }

    impl Doc {
        fn new(text: &str) -> Doc {
            let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
            if text.ends_with('\n') || text.is_empty() {
                lines.pop();
            }
            Doc {
                lines,
                crlf: text.contains("\r\n"),
            }
        }
        fn line(&self, s: String) -> String {
            if self.crlf {
                s + "\r"
            } else {
                s
            }
        }
        fn render(&self) -> String {
            let mut s = self.lines.join("\n");
            s.push('\n');
            s
        }
    }

    /// A top-level key's extent.
    struct Section {
        key_line: usize,
        /// The value after `key:` on its line, comment removed (empty for a block).
        inline: String,
        /// One past the section's last content line.
        content_end: usize,
    }

    fn split_comment(s: &str) -> (&str, &str) {
        let (mut single, mut double, mut prev_space) = (false, false, true);
        for (i, c) in s.char_indices() {
            match c {
                '\'' if !double => single = !single,
                '"' if !single => double = !double,
                '#' if !single && !double && prev_space => return (s[..i].trim_end(), &s[i..]),
                _ => {}
            }
            prev_space = c == ' ' || c == '\t';
        }
        (s.trim_end(), "")
    }

    fn section(doc: &Doc, key: &str) -> Option<Section> {
        let lines = &doc.lines;
        let key_line = lines.iter().position(|l| {
            l.strip_prefix(key).is_some_and(|r| {
                r.starts_with(':') && (r.len() == 1 || r[1..].starts_with([' ', '\r']))
            })
        })?;
        let rest = body(&lines[key_line])[key.len() + 1..].trim();
        let inline = split_comment(rest).0.to_string();
        let mut end = lines.len();
        for (j, l) in lines.iter().enumerate().skip(key_line + 1) {
            if content(l) && indent(l) == 0 && !dash(l) {
                end = j;
                break;
            }
        }
        let content_end = (key_line + 1..end)
            .rev()
            .find(|j| content(&lines[*j]))
            .map_or(key_line + 1, |j| j + 1);
        Some(Section {
            key_line,
            inline,
            content_end,
        })
    }

    struct Item {
        /// First comment line directly above the dash line (or the dash line).
        lead: usize,
        start: usize,
        /// One past the last content line.
        end: usize,
        seq_indent: usize,
        key_indent: usize,
    }

    fn items(doc: &Doc, sec: &Section) -> Option<Vec<Item>> {
        let lines = &doc.lines;
        if !sec.inline.is_empty() {
            return None;
        }
        let first = (sec.key_line + 1..sec.content_end).find(|j| content(&lines[*j]));
        let Some(first) = first else {
            return Some(Vec::new());
        };
        if !dash(&lines[first]) {
            return None;
        }
        let seq = indent(&lines[first]);
        let starts: Vec<usize> = (first..sec.content_end)
            .filter(|j| dash(&lines[*j]) && indent(&lines[*j]) == seq)
            .collect();
        // Every content line is an item start or deeper than the sequence.
        if (first..sec.content_end)
            .any(|j| content(&lines[j]) && indent(&lines[j]) <= seq && !starts.contains(&j))
        {
            return None;
        }
        let mut out = Vec::new();
        for (n, &start) in starts.iter().enumerate() {
            let next = starts.get(n + 1).copied().unwrap_or(sec.content_end);
            let end = (start..next)
                .rev()
                .find(|j| content(&lines[*j]))
                .map_or(start + 1, |j| j + 1);
            let prev_end = out.last().map_or(sec.key_line + 1, |i: &Item| i.end);
            let mut lead = start;
            while lead > prev_end && comment(&lines[lead - 1]) {
                lead -= 1;
            }
            let after = &body(&lines[start])[seq + 1..];
            let key_indent = if after.trim().is_empty() {
                (start + 1..end)
                    .find(|j| content(&lines[*j]))
                    .map(|j| indent(&lines[j]))?
            } else {
                seq + 1 + indent(after)
            };
            out.push(Item {
                lead,
                start,
                end,
                seq_indent: seq,
                key_indent,
            });
        }
        Some(out)
    }

    /// The line of `key:` in `item`, and one past its value's last content line.
    fn find_key(doc: &Doc, item: &Item, key: &str) -> Option<(usize, usize)> {
        let lines = &doc.lines;
        let at = (item.start..item.end).find(|j| {
            let l = body(&lines[*j]);
            let starts_ok = *j == item.start || (indent(l) == item.key_indent);
            starts_ok
                && l.len() > item.key_indent
                && l.is_char_boundary(item.key_indent)
                && l[item.key_indent..].strip_prefix(key).is_some_and(|r| {
                    r.starts_with(':') && (r.len() == 1 || r[1..].starts_with(' '))
                })
        })?;
        let mut end = at + 1;
        for (j, l) in lines.iter().enumerate().take(item.end).skip(at + 1) {
            if !content(l) {
                continue;
            }
            if indent(l) > item.key_indent || (indent(l) == item.key_indent && dash(l)) {
                end = j + 1;
            } else {
                break;
            }
        }
        Some((at, end))
    }

    /// For tests: a flow-style section is not edited in place.
    #[cfg(test)]
    pub fn item_count_is_none_for_flow(text: &str) -> bool {
        let doc = Doc::new(text);
        section(&doc, "api_keys").is_some_and(|s| items(&doc, &s).is_none())
    }

    fn item_of(doc: &Doc, section_key: &str, idx: usize) -> Option<Item> {
        let sec = section(doc, section_key)?;
        items(doc, &sec)?.into_iter().nth(idx)
    }

    /// Sets `key` of item `idx` in `section_key` to `value` (one line), keeping a comment
    /// at the end of the old line; adds the key at the item's end if absent.
    pub fn set_key(
        text: &str,
        section_key: &str,
        idx: usize,
        key: &str,
        value: &[String],
    ) -> Option<String> {
        let mut doc = Doc::new(text);
        let item = item_of(&doc, section_key, idx)?;
        let v = value.first()?;
        let sep = if v.is_empty() { ":" } else { ": " };
        match find_key(&doc, &item, key) {
            Some((at, end)) => {
                let old = body(&doc.lines[at]).to_string();
                let after = &old[item.key_indent + key.len() + 1..];
                let (_, cmt) = split_comment(after);
                let cmt = if end == at + 1 && !cmt.is_empty() {
                    format!(" {cmt}")
                } else {
                    String::new()
                };
                let new = format!("{}{key}{sep}{v}{cmt}", &old[..item.key_indent]);
                doc.lines.splice(at..end, [doc.line(new)]);
            }
            None => {
                let new = doc.line(format!("{}{key}{sep}{v}", " ".repeat(item.key_indent)));
                doc.lines.insert(item.end, new);
            }
        }
        Some(doc.render())
    }

    /// Puts `lines` (indented relative to the key) under `key:` of item `idx`, replacing
    /// what was there. The key must exist.
    pub fn set_block(
        text: &str,
        section_key: &str,
        idx: usize,
        key: &str,
        lines: &[String],
    ) -> Option<String> {
        let mut doc = Doc::new(text);
        let item = item_of(&doc, section_key, idx)?;
        let (at, end) = find_key(&doc, &item, key)?;
        let pad = " ".repeat(item.key_indent);
        let new: Vec<String> = lines
            .iter()
            .map(|l| doc.line(format!("{pad}{l}")))
            .collect();
        doc.lines.splice(at + 1..end, new);
        Some(doc.render())
    }

    /// Removes `key` (and its value) from item `idx`; unchanged if absent. `None` when the
    /// key is on the item's `-` line.
    pub fn remove_key(text: &str, section_key: &str, idx: usize, key: &str) -> Option<String> {
        let mut doc = Doc::new(text);
        let item = item_of(&doc, section_key, idx)?;
        match find_key(&doc, &item, key) {
            None => Some(text.to_string()),
            Some((at, _)) if at == item.start => None,
            Some((at, end)) => {
                doc.lines.drain(at..end);
                Some(doc.render())
            }
        }
    }

    /// Removes item `idx` with the comments directly above it; an emptied section becomes `[]`.
    pub fn remove_item(text: &str, section_key: &str, idx: usize) -> Option<String> {
        let mut doc = Doc::new(text);
        let sec = section(&doc, section_key)?;
        let all = items(&doc, &sec)?;
        let item = all.get(idx)?;
        let (lead, end) = (item.lead, item.end);
        let last = idx + 1 == all.len();
        doc.lines.drain(lead..end);
        // A blank line between items goes with the item after it: do not leave two blank
        // lines, nor one right under the section's key or before what followed the section.
        let prev_blank = lead > 0 && blank(&doc.lines[lead - 1]);
        let next_blank = lead < doc.lines.len() && blank(&doc.lines[lead]);
        if prev_blank && (next_blank || last) {
            doc.lines.remove(lead - 1);
        } else if next_blank && !last && lead - 1 == sec.key_line {
            doc.lines.remove(lead);
        }
        if all.len() == 1 {
            let l = body(&doc.lines[sec.key_line]).to_string();
            let (_, cmt) = split_comment(&l[section_key.len() + 1..]);
            let cmt = if cmt.is_empty() {
                String::new()
            } else {
                format!(" {cmt}")
            };
            doc.lines[sec.key_line] = doc.line(format!("{section_key}: []{cmt}"));
        }
        Some(doc.render())
    }

    /// The order of the sections in a credentials file (SPEC §4).
    const ORDER: [&str; 4] = ["roles", "users", "clients", "api_keys"];

    /// Appends an item with these `(key, value)` lines to `section_key`, in the style of
    /// the items already there; makes the section if absent.
    pub fn append_item(
        text: &str,
        section_key: &str,
        pairs: &[(String, String)],
    ) -> Option<String> {
        let mut doc = Doc::new(text);
        let render = |doc: &Doc, seq: usize, key_indent: usize| -> Vec<String> {
            pairs
                .iter()
                .enumerate()
                .map(|(i, (k, v))| {
                    let lead = if i == 0 {
                        format!(
                            "{}- {}",
                            " ".repeat(seq),
                            " ".repeat(key_indent.saturating_sub(seq + 2))
                        )
                    } else {
                        " ".repeat(key_indent)
                    };
                    doc.line(format!("{lead}{k}: {v}"))
                })
                .collect()
        };
        match section(&doc, section_key) {
            Some(sec) if matches!(sec.inline.as_str(), "" | "[]" | "~" | "null") => {
                let all = if sec.inline.is_empty() {
                    items(&doc, &sec)?
                } else {
                    Vec::new()
                };
                match all.last() {
                    Some(last) => {
                        // A blank line between items, if the file has them.
                        let spaced =
                            all.len() >= 2 && blank(&doc.lines[all[all.len() - 1].lead - 1]);
                        let mut new = render(&doc, last.seq_indent, last.key_indent);
                        if spaced {
                            new.insert(0, doc.line(String::new()));
                        }
                        doc.lines.splice(last.end..last.end, new);
                    }
                    None => {
                        let l = body(&doc.lines[sec.key_line]).to_string();
                        let (_, cmt) = split_comment(&l[section_key.len() + 1..]);
                        let cmt = if cmt.is_empty() {
                            String::new()
                        } else {
                            format!(" {cmt}")
                        };
                        doc.lines[sec.key_line] = doc.line(format!("{section_key}:{cmt}"));
                        let new = render(&doc, 2, 4);
                        doc.lines.splice(sec.key_line + 1..sec.key_line + 1, new);
                    }
                }
            }
            Some(_) => return None,
            None => {
                let mut block = vec![doc.line(format!("{section_key}:"))];
                block.extend(render(&doc, 2, 4));
                // Before the first section that comes after it in SPEC order (and the
                // comments directly above that section), else at the end.
                let later = ORDER
                    .iter()
                    .skip_while(|k| **k != section_key)
                    .skip(1)
                    .filter_map(|k| section(&doc, k))
                    .map(|s| s.key_line)
                    .min();
                match later {
                    Some(mut at) => {
                        while at > 0 && comment(&doc.lines[at - 1]) {
                            at -= 1;
                        }
                        block.push(doc.line(String::new()));
                        doc.lines.splice(at..at, block);
                    }
                    None => {
                        if doc.lines.last().is_some_and(|l| !blank(l)) {
                            doc.lines.push(doc.line(String::new()));
                        }
                        doc.lines.extend(block);
                    }
                }
            }
        }
        Some(doc.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_a_prefix_256_bits_and_a_checksum() {
        let a = new_secret(Kind::ApiKey, Environment::Production);
        let b = new_secret(Kind::ApiKey, Environment::Production);
        assert_ne!(a, b);
        assert!(
            a.starts_with("pcl_live_") && a.len() == 9 + SECRET_CHARS + 6,
            "{a}"
        );
        assert!(a[9..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(new_secret(Kind::Client, Environment::Sandbox).starts_with("pcs_test_"));
        assert!(SECRET_CHARS as f64 * 62f64.log2() >= 256.0);
        assert!(checksum_ok(&a));
        // One character changed: the checksum catches it.
        let mut bad = a.clone().into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        assert!(!checksum_ok(&String::from_utf8(bad).unwrap()));
        assert!(!checksum_ok("pcl_live_short"));
    }

    #[test]
    fn scalars_read_back_as_the_same_string() {
        for s in [
            "acme",
            "a.b-c_d",
            "true",
            "No",
            "null",
            "1234",
            "2027-01-01",
            "balances:read@vault/v-1",
            "x: y",
            "#x",
            "a \"q\"\nb",
            "::1",
        ] {
            let y = format!("k: {}\n", scalar(s));
            let v: Value = config::parse(Path::new("t"), &y).unwrap();
            assert_eq!(
                v["k"],
                Value::String(s.to_string()),
                "{s:?} written as {y:?}"
            );
        }
        assert_eq!(scalar("acme"), "acme");
        assert_eq!(scalar("true"), "\"true\"");
    }

    #[test]
    fn spans() {
        assert_eq!(parse_span("90d", "x").unwrap(), (90, 'd'));
        assert_eq!(span_secs(36, 'h'), 36 * 3600);
        for bad in ["", "d", "0d", "-1d", "90x", "1.5h"] {
            assert!(parse_span(bad, "x").is_err(), "{bad:?}");
        }
    }

    const DOC: &str = "# head\napi_keys:\n  # about a\n  - name: a   # a's line\n    key_hash: \"h\"\n    allowed_ips:\n      - \"10.0.0.1\"\n    expires: 2099-01-01\n\n  - name: b\n    key_hash: \"h2\"\n    expires: 2099-01-01\n# tail\n";

    #[test]
    fn edits_touch_only_their_lines() {
        let t = edit::set_key(DOC, "api_keys", 0, "disabled", &["true".into()]).unwrap();
        assert_eq!(
            t,
            DOC.replace(
                "    expires: 2099-01-01\n\n",
                "    expires: 2099-01-01\n    disabled: true\n\n"
            )
        );
        let t = edit::set_key(
            DOC,
            "api_keys",
            0,
            "allowed_ips",
            &["[\"10.0.0.2\"]".into()],
        )
        .unwrap();
        assert_eq!(
            t,
            DOC.replace(
                "    allowed_ips:\n      - \"10.0.0.1\"\n",
                "    allowed_ips: [\"10.0.0.2\"]\n"
            )
        );
        let t = edit::set_key(DOC, "api_keys", 0, "name", &["z".into()]).unwrap();
        assert!(t.contains("  - name: z # a's line\n"), "{t}");
        let t = edit::remove_key(DOC, "api_keys", 0, "allowed_ips").unwrap();
        assert_eq!(
            t,
            DOC.replace("    allowed_ips:\n      - \"10.0.0.1\"\n", "")
        );
        assert!(
            edit::remove_key(DOC, "api_keys", 0, "name").is_none(),
            "a key on the - line cannot be removed alone"
        );
        let t = edit::remove_item(DOC, "api_keys", 0).unwrap();
        assert_eq!(t, "# head\napi_keys:\n  - name: b\n    key_hash: \"h2\"\n    expires: 2099-01-01\n# tail\n");
        let t = edit::remove_item(DOC, "api_keys", 1).unwrap();
        assert_eq!(t, "# head\napi_keys:\n  # about a\n  - name: a   # a's line\n    key_hash: \"h\"\n    allowed_ips:\n      - \"10.0.0.1\"\n    expires: 2099-01-01\n# tail\n");
        let t = edit::append_item(
            DOC,
            "api_keys",
            &[("name".into(), "c".into()), ("expires".into(), "x".into())],
        )
        .unwrap();
        assert!(
            t.ends_with("    expires: 2099-01-01\n\n  - name: c\n    expires: x\n# tail\n"),
            "{t}"
        );
        let t = edit::append_item(DOC, "clients", &[("id".into(), "c".into())]).unwrap();
        assert!(
            t.starts_with("clients:\n  - id: c\n\n# head\napi_keys:\n"),
            "{t}"
        );
        assert!(edit::item_count_is_none_for_flow("api_keys: [{name: a}]\n"));
    }
}
