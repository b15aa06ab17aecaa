//! The validated, immutable model a request reads: built once per load, never mutated.
use std::collections::HashMap;

/// A map with foldhash (hashbrown's default hasher) instead of SipHash: the maps looked up
/// on every request and filled for every credential of a snapshot (issue 15). Their keys
/// come from the configuration; a request only looks up, so it cannot flood a table.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::permission::{Permission, Requirement, Target};

/// `environment:` of the main config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Sandbox,
    Production,
}

/// `enforce`: denials are answered. `shadow`: denials are logged and counted
/// (`outcome="shadow_denied"`) and the request is forwarded anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Shadow,
}

impl Mode {
    /// Parses `enforce` / `shadow`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "enforce" => Some(Mode::Enforce),
            "shadow" => Some(Mode::Shadow),
            _ => None,
        }
    }
}

/// Settings from the main config file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub admin_listen: String,
    /// The protected API: an address, or a name that [`crate::config::resolve`] turns
    /// into one after a load succeeded (never validation itself).
    pub upstream: UpstreamAddr,
    /// As written in config (`host:port`), for messages.
    pub upstream_text: String,
    pub environment: Environment,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_grace: u64,
    pub upstream_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub mode: Mode,
    /// TLS on the listener; the certificate is served from the current snapshot.
    pub tls: Option<crate::tls::ListenerTls>,
    pub upstream_tls: Option<crate::tls::UpstreamTls>,
    /// The credentials file (SPEC §4), as the main config names it.
    pub credentials_file: PathBuf,
    /// The management listener, when configured (SPEC §9).
    pub management: Option<ManagementSettings>,
    /// Where credentials live (SPEC §10).
    pub store: StoreSettings,
    /// The proxy's worker threads (default one per CPU core).
    pub threads: usize,
    /// Whether the worker threads steal work (default no).
    pub work_stealing: bool,
    /// `metrics.per_credential`; `None`: by the number of credentials.
    pub per_credential_metrics: Option<bool>,
}

/// `store:` validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreSettings {
    /// The credentials file (the default).
    #[default]
    File,
    /// PostgreSQL: the URL comes from an environment variable or a file, never the config.
    Postgres { url_env: Option<String>, url_file: Option<PathBuf>, poll: Duration },
}

impl StoreSettings {
    /// The database URL of a PostgreSQL store.
    pub fn database_url(&self) -> Option<Result<String, String>> {
        match self {
            StoreSettings::File => None,
            StoreSettings::Postgres { url_env, url_file, .. } => {
                Some(crate::store::postgres::database_url(url_env.as_deref(), url_file.as_deref()))
            }
        }
    }
}

/// `management:` validated.
#[derive(Debug, Clone)]
pub struct ManagementSettings {
    pub listen: String,
    /// The certificate and key files (PEM) when the listener speaks TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Seconds from now of a new credential's expiry when none is given.
    pub default_expiry: i64,
    pub approval_required: bool,
    /// Seconds an unanswered approval request waits before it is dropped.
    pub approval_expires_after: i64,
}

/// Where the protected API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Resolved(SocketAddr),
    /// A host name and port, not resolved yet.
    Name(String, u16),
}

impl UpstreamAddr {
    /// The address to connect to; a name not resolved yet has none.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            UpstreamAddr::Resolved(a) => Some(*a),
            UpstreamAddr::Name(..) => None,
        }
    }
}

impl Settings {
    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// Token issuing and validation settings (`tokens:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub lifetime: u64,
    pub signing_key: Option<PathBuf>,
    pub endpoint: String,
    pub client_id_prefix: String,
    pub leeway: u64,
    pub revoke_on_disable: bool,
    /// Secret verifications allowed at once (SPEC §6 abuse bounds).
    pub max_concurrent_verifications: usize,
    /// Failed client authentications per client id and per address per minute.
    pub failure_limit: u32,
    /// Our signing key, loaded at config load; `None` = no token endpoint.
    pub signer: Option<Arc<crate::token::keys::SigningKey>>,
    pub external: Vec<crate::token::ExternalIssuer>,
}

/// Which kind of credential authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    Client,
    ApiKey,
    External,
}

impl CredentialKind {
    /// The value of `x-auth-credential-type` and of the audit log's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Client => "client",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::External => "external",
        }
    }
}

/// How an OAuth client's secret is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretHash {
    /// A `$argon2id$` PHC string.
    Argon2(String),
    /// `sha256:<hex>`.
    Sha256([u8; 32]),
}

/// One client or API key, with its effective permissions computed at load.
///
/// Compact, because a store holds 100,000 of them in every pod: the lists that many
/// credentials share (role names, effective grants, allowlists, expiry texts, users)
/// are one allocation per distinct value for the whole snapshot ([`Interner`]), and a
/// request's [`Identity`](crate::pipeline::Identity) takes them by reference count.
#[derive(Debug, Clone)]
pub struct Credential {
    pub id: Arc<str>,
    pub kind: CredentialKind,
    /// The linked user, for API keys.
    pub user: Option<Arc<str>>,
    /// The linked user does not exist: the key is rejected (fail closed).
    pub user_missing: bool,
    pub disabled: bool,
    pub roles: Arc<[Arc<str>]>,
    /// Union of roles', own and (for user-linked keys) the user's permissions.
    pub grants: Arc<[Permission]>,
    /// `None` = any address.
    pub allowed_ips: Option<Arc<[IpNet]>>,
    /// Unix seconds; valid while `now < expires_at`.
    pub expires_at: i64,
    /// As written in config.
    pub expires_text: Arc<str>,
    pub description: Option<Box<str>>,
    pub notes: Option<Box<str>>,
    /// Clients only.
    pub secret: Option<Box<SecretHash>>,
}

/// One shared allocation per distinct value while a store is built (see [`Credential`]).
#[derive(Default)]
pub struct Interner {
    strs: FastMap<Box<str>, Arc<str>>,
    roles: FastMap<Vec<Arc<str>>, Arc<[Arc<str>]>>,
    grants: FastMap<Vec<Permission>, Arc<[Permission]>>,
    nets: FastMap<Vec<IpNet>, Arc<[IpNet]>>,
}

impl Interner {
    pub fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strs.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strs.insert(Box::from(s), a.clone());
        a
    }

    pub fn roles<'a>(&mut self, names: impl Iterator<Item = &'a str>) -> Arc<[Arc<str>]> {
        let list: Vec<Arc<str>> = names.map(|n| self.str(n)).collect();
        if let Some(a) = self.roles.get(&list) {
            return a.clone();
        }
        let a: Arc<[Arc<str>]> = Arc::from(list.as_slice());
        self.roles.insert(list, a.clone());
        a
    }

    pub fn grants(&mut self, list: Vec<Permission>) -> Arc<[Permission]> {
        if let Some(a) = self.grants.get(&list) {
            return a.clone();
        }
        let a: Arc<[Permission]> = Arc::from(list.as_slice());
        self.grants.insert(list, a.clone());
        a
    }

    pub fn nets(&mut self, list: Vec<IpNet>) -> Arc<[IpNet]> {
        if let Some(a) = self.nets.get(&list) {
            return a.clone();
        }
        let a: Arc<[IpNet]> = Arc::from(list.as_slice());
        self.nets.insert(list, a.clone());
        a
    }
}

impl Credential {
    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }

    /// Whether `ip` may use this credential.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        match &self.allowed_ips {
            None => true,
            Some(nets) => nets.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// All credentials, indexed for O(1) lookup.
#[derive(Debug, Default, Clone)]
pub struct CredentialStore {
    pub by_key_hash: FastMap<[u8; 32], Arc<Credential>>,
    /// Key hashes replaced by `credentials rotate --overlap`: the key they belong to, and
    /// the unix time from which they no longer work.
    pub previous_key_hashes: FastMap<[u8; 32], (Arc<Credential>, i64)>,
    /// Client secret hashes replaced by `credentials rotate --overlap`, by client id, each
    /// with the unix time from which it no longer works.
    pub previous_secrets: HashMap<Arc<str>, Vec<(SecretHash, i64)>>,
    pub clients: FastMap<Arc<str>, Arc<Credential>>,
    /// Every credential in file order (clients, then keys).
    pub all: Vec<Arc<Credential>>,
    pub users: Vec<String>,
    pub custom_roles: Vec<String>,
}

impl CredentialStore {
    /// The client or API key named `name` (a linear scan: for the CLI and the management
    /// API, not the request path).
    pub fn find(&self, name: &str) -> Option<&Arc<Credential>> {
        self.all.iter().find(|c| &*c.id == name)
    }

    /// The effective permissions of `name`; none when there is no such credential.
    pub fn grants_of(&self, name: &str) -> Vec<crate::permission::Permission> {
        self.find(name).map(|c| c.grants.to_vec()).unwrap_or_default()
    }

    /// Lets `cred` also authenticate with a secret whose SHA-256 is `probe` (an API key's
    /// key, a client's secret): for `explain`, which runs the real token endpoint and
    /// pipeline on its private copy of a snapshot with a throwaway secret.
    pub fn add_probe_secret(&mut self, cred: &Arc<Credential>, probe: [u8; 32]) {
        match cred.kind {
            CredentialKind::ApiKey => {
                self.by_key_hash.insert(probe, cred.clone());
            }
            CredentialKind::Client | CredentialKind::External => {
                let mut c = (**cred).clone();
                c.secret = Some(Box::new(SecretHash::Sha256(probe)));
                self.clients.insert(c.id.clone(), Arc::new(c));
            }
        }
    }
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The `match` text, e.g. `GET /v1/vaults/{vault_id}/balances`: the metric and audit label.
    pub id: Arc<str>,
    /// `None` = any method (`*`).
    pub method: Option<http::Method>,
    pub template: String,
    pub public: bool,
    pub require: Option<Requirement>,
    pub vault_param: String,
    pub key_param: String,
    /// `None` = the global mode.
    pub mode: Option<Mode>,
    /// An `Upgrade` is forwarded on this route (after every check).
    pub websocket: bool,
}

/// A matched route with its target ids, percent-decoded.
#[derive(Debug, Clone)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
    /// The target ids, percent-decoded; borrowed from the path when nothing was encoded.
    pub vault: Option<std::borrow::Cow<'a, str>>,
    pub key: Option<std::borrow::Cow<'a, str>>,
}

impl RouteMatch<'_> {
    pub fn target(&self) -> Target<'_> {
        Target {
            vault: self.vault.as_deref(),
            key: self.key.as_deref(),
        }
    }
}

/// Routes compiled into radix trees, one per method plus one for `*`.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    pub by_method: FastMap<http::Method, matchit::Router<usize>>,
    pub any_method: matchit::Router<usize>,
}

impl RouteTable {
    /// The route for `method` and `path` (no query), method-specific routes first.
    /// `None` when no route matches, or a target id does not decode to UTF-8.
    pub fn lookup<'a>(&'a self, method: &http::Method, path: &'a str) -> Option<RouteMatch<'a>> {
        let found = self
            .by_method
            .get(method)
            .and_then(|r| r.at(path).ok())
            .or_else(|| self.any_method.at(path).ok())?;
        let route = self.routes.get(*found.value)?;
        let params = found.params;
        let decode = |name: &str| -> Result<Option<std::borrow::Cow<'a, str>>, ()> {
            match params.get(name) {
                None => Ok(None),
                Some(raw) => percent_encoding::percent_decode_str(raw).decode_utf8().map(Some).map_err(|_| ()),
            }
        };
        let vault = decode(&route.vault_param).ok()?;
        let key = decode(&route.key_param).ok()?;
        Some(RouteMatch { route, vault, key })
    }
}

/// The whole validated configuration. Requests read one snapshot from start to end.
#[derive(Debug)]
pub struct Snapshot {
    pub settings: Settings,
    pub routes: RouteTable,
    pub credentials: CredentialStore,
    pub tokens: Option<TokenSettings>,
    /// Things `check` reports that do not stop the load.
    pub warnings: Vec<String>,
    /// The files this snapshot was read from (for the watcher).
    pub files: Vec<PathBuf>,
    /// SHA-256 (hex) over the bytes of every file read.
    pub content_hash: String,
    /// Verified Bearer tokens; new (empty) with every snapshot.
    pub token_cache: crate::token::cache::TokenCache,
    /// The metric label values this snapshot allows, built on first use
    /// ([`crate::metrics::Metrics::labels`]).
    pub metric_labels: std::sync::OnceLock<Arc<crate::metrics::Labels>>,
}
