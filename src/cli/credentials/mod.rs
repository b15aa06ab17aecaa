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
mod create;
mod lifecycle;
mod list;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Months;

use crate::config::raw::{strings, EntryRaw, MainRaw};
use crate::config::validate::{
    self, parse_expires, parse_net, valid_name, EXPIRY_WARNING_SECS, MAX_ALLOWED_IPS,
};
use crate::config::{self, CredentialStore, Environment, RouteTable};
use crate::permission::{builtin_role, Permission, Scope, Target, BUILTIN_ROLES};
use crate::config::parent_dir;
use crate::store::file::{Applied, FileStore, Version};
use crate::store::postgres::PgStore;
use crate::store::StoreError;
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
    /// Change a credential's roles, permissions, allowlist, description or notes (its name
    /// and expiry are fixed: create a new one instead). A list given replaces the old one.
    Edit(EditArgs),
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

/// `credentials edit`: each option given replaces that field; the others stay.
#[derive(clap::Args, Debug)]
pub struct EditArgs {
    pub name: String,
    /// The roles (repeat for more); replaces the current ones.
    #[arg(long = "role", conflicts_with = "clear_roles")]
    pub roles: Vec<String>,
    /// Remove every role.
    #[arg(long)]
    pub clear_roles: bool,
    /// The explicit permissions (repeat for more); replaces the current ones.
    #[arg(long = "permission", conflicts_with = "clear_permissions")]
    pub permissions: Vec<String>,
    /// Remove every explicit permission.
    #[arg(long)]
    pub clear_permissions: bool,
    /// The addresses or CIDRs it may be used from (at most 6; commas allowed); replaces
    /// the current allowlist.
    #[arg(long = "allow-ip", conflicts_with = "all_ips")]
    pub allow_ips: Vec<String>,
    /// Remove the allowlist: any address (sandbox only).
    #[arg(long)]
    pub all_ips: bool,
    #[arg(long, conflicts_with = "clear_description")]
    pub description: Option<String>,
    #[arg(long)]
    pub clear_description: bool,
    #[arg(long, conflicts_with = "clear_notes")]
    pub notes: Option<String>,
    #[arg(long)]
    pub clear_notes: bool,
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

use create::create;
use lifecycle::{delete, edit, rotate, set_disabled};
use list::{list, show};

fn run_to(args: &Args, out: &mut dyn Write) -> Res<()> {
    let loc = Location::resolve(args)?;
    let now = config::unix_now();
    match &args.command {
        Cmd::Create(c) => create(&loc, c, now, out),
        Cmd::List { output } => list(&loc, *output, now, out),
        Cmd::Show { name, output } => show(&loc, name, *output, now, out),
        Cmd::Edit(e) => edit(&loc, e, now, out),
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

/// The store to work on: the credentials file, or the PostgreSQL database (SPEC §10).
enum Backend {
    File(FileStore),
    Pg(PgStore),
}

/// One read of the store.
struct View {
    raw: crate::config::raw::CredentialsRaw,
    version: Version,
    /// The file's text (the file store).
    text: Option<String>,
}

impl Backend {
    fn read(&self, must_exist: bool) -> Res<View> {
        match self {
            Backend::File(f) => f.read(must_exist).map(|v| View { raw: v.raw, version: v.version, text: v.text }).map_err(Failure),
            Backend::Pg(p) => Store::load(p).map(|(raw, version)| View { raw, version, text: None }).map_err(Failure),
        }
    }

    fn apply(&self, change: &Change, expected: Option<Version>, now: i64) -> Result<Applied, StoreError> {
        match self {
            Backend::File(f) => f.apply(change, expected, now),
            Backend::Pg(p) => p.apply(change, expected, now),
        }
    }

    fn env(&self) -> Environment {
        match self {
            Backend::File(f) => f.env,
            Backend::Pg(p) => p.env,
        }
    }

    fn label(&self) -> String {
        match self {
            Backend::File(f) => f.label(),
            Backend::Pg(p) => p.label(),
        }
    }

    /// The credentials file (for the last-use times beside it).
    fn file(&self) -> Option<&Path> {
        match self {
            Backend::File(f) => Some(&f.shown),
            Backend::Pg(_) => None,
        }
    }

    /// The read validated as the loader would.
    fn validate(&self, cur: &View, now: i64) -> Result<CredentialStore, config::ConfigErrors> {
        match self {
            Backend::File(f) => config::credentials_from_text(&f.shown, cur.text.as_deref().unwrap_or(""), f.env, now).map(|(s, _)| s),
            Backend::Pg(p) => config::credentials_from_raw(Path::new("the PostgreSQL store"), &cur.raw, p.env, now).map(|(s, _)| s),
        }
    }
}

/// The store to work on, and what the main config says about it.
struct Location {
    store: Backend,
    main: Option<MainInfo>,
}

impl Location {
    fn resolve(args: &Args) -> Res<Location> {
        let (shown, env, main, database) = match (&args.config, &args.file) {
            (Some(c), _) => main_config(c)?,
            (None, Some(f)) => (f.clone(), Environment::Sandbox, None, None),
            (None, None) => {
                return Err(
                    "say which file: --config portcullis.yaml (or --file credentials.yaml)".into(),
                )
            }
        };
        let store = match database {
            Some(url) => Backend::Pg(PgStore::open(&url?, env)?),
            None => Backend::File(FileStore::resolve(shown, env)?),
        };
        Ok(Location { store, main })
    }

    fn label(&self) -> String {
        self.store.label()
    }
}

/// Reads the main config for the credentials path, environment, listener and routes.
/// And, for a PostgreSQL store, its database URL.
#[allow(clippy::type_complexity)]
fn main_config(path: &Path) -> Res<(PathBuf, Environment, Option<MainInfo>, Option<Result<String, String>>)> {
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
    let store = validate::store_settings(raw.store.as_ref(), raw.credentials_file.is_some(), &base, &mut sink)
        .ok_or_else(|| config::ConfigErrors(std::mem::take(&mut sink.errors)).to_string())?;
    let database = store.database_url();
    Ok((cred, env, Some(info), database))
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

fn no_such(loc: &Location, name: &str) -> Failure {
    Failure(format!(
        "no client or API key named {name:?} in {}",
        loc.label()
    ))
}
