//! Serde mirrors of the YAML files: no logic, unknown fields are errors. The values that
//! validation can refuse are [`At`]: they carry the line and column they were read from,
//! so an error names its place exactly (comments and look-alike lines cannot mislead it).
use std::cell::Cell;
use std::fmt;
use std::ops::Deref;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A value and where in its file it was read (the line and column of serde-saphyr's
/// [`Spanned`], kept as two numbers: a 100,000-credential file holds a million of these);
/// reads as the value itself. One built in code ([`At::new`]) has no place.
pub struct At<T> {
    value: T,
    /// 1-based; 0 where unknown.
    line: u32,
    column: u32,
}

/// A 1-based line and column; `None` where unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Place {
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl<T> At<T> {
    /// A value with no place in a file.
    pub fn new(value: T) -> Self {
        At { value, line: 0, column: 0 }
    }

    /// Where the value was read.
    pub fn place(&self) -> Place {
        let known = self.line > 0;
        Place {
            line: known.then_some(self.line as usize),
            column: known.then_some(self.column as usize),
        }
    }

    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for At<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for At<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: fmt::Display> fmt::Display for At<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl PartialEq<str> for At<String> {
    fn eq(&self, other: &str) -> bool {
        self.value == other
    }
}

impl PartialEq<&str> for At<String> {
    fn eq(&self, other: &&str) -> bool {
        self.value == *other
    }
}

thread_local! {
    /// Whether [`At`] values read on this thread skip their place (an [`Unplaced`] lives).
    static UNPLACED: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, every [`At`] deserialized on this thread is read as its bare value,
/// with no place ([`At::new`]): serde-saphyr's span tracking is skipped, which reads a
/// large file faster. For a parse whose errors are never shown: a first try that is
/// redone placed whenever anything in it is wrong.
pub struct Unplaced {
    was: bool,
}

impl Unplaced {
    pub fn enter() -> Self {
        Unplaced { was: UNPLACED.replace(true) }
    }
}

impl Drop for Unplaced {
    fn drop(&mut self) {
        UNPLACED.set(self.was);
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if UNPLACED.get() {
            return T::deserialize(d).map(At::new);
        }
        // serde-saphyr counts lines and columns in u32s.
        let s = Spanned::<T>::deserialize(d)?;
        Ok(At { value: s.value, line: s.referenced.line() as u32, column: s.referenced.column() as u32 })
    }
}

/// In the JSON Schema (`portcullis schema`) a placed value is its value: the place is the
/// parser's, not the file's.
impl<T: JsonSchema> JsonSchema for At<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// The names a few string fields take, for the JSON Schema only (validation reads the
/// strings and says what is wrong with them, with their place).
pub mod names {
    use schemars::JsonSchema;

    /// `sandbox` (default) or `production`: every credential must then list `allowed_ips`,
    /// none that allows every address.
    #[derive(JsonSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Environment {
        Sandbox,
        Production,
    }

    /// `enforce` (default) or `shadow`: would-be denials are logged and counted but forwarded.
    #[derive(JsonSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Mode {
        Enforce,
        Shadow,
    }

    /// `file` (default) or `postgres`.
    #[derive(JsonSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum StoreKind {
        File,
        Postgres,
    }
}

/// A list of placed strings, as plain strings.
pub fn strings(list: &[At<String>]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `portcullis.yaml` (SPEC §3).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MainRaw {
    /// The proxy listener, `addr:port`.
    pub listen: At<String>,
    /// The protected API, `host:port` (HTTP/1.1).
    pub upstream: At<String>,
    /// `/metrics`, `/healthz` and `/readyz`, `addr:port` (default `127.0.0.1:9901`).
    #[serde(default)]
    pub admin_listen: Option<At<String>>,
    #[serde(default)]
    #[schemars(with = "Option<names::Environment>")]
    pub environment: Option<At<String>>,
    /// Peers (addresses or CIDRs) whose `X-Forwarded-For` is believed; default none.
    #[serde(default)]
    pub trusted_proxies: Vec<At<String>>,
    /// The credentials file, relative to this file (default `credentials.yaml`).
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Seconds SIGTERM waits for in-flight requests (default 10).
    #[serde(default)]
    pub shutdown_grace: Option<u64>,
    /// Worker threads of the proxy (pingora's `threads`; default one per CPU core).
    /// Fixed at start: a change needs a restart.
    #[serde(default)]
    pub threads: Option<At<usize>>,
    /// Whether the worker threads take over each other's waiting work (pingora's
    /// `work_stealing`, tokio's multi-threaded scheduler). Default off: each thread runs
    /// its own single-threaded scheduler and keeps the connections it accepted, as Envoy's
    /// and nginx's workers do (BENCHMARKS.md: ~10% less CPU a request with one thread, ~40%
    /// with two on two busy cores). Fixed at start: a change needs a restart.
    #[serde(default)]
    pub work_stealing: Option<bool>,
    /// Seconds to wait for the upstream's response (default 30); 504 after.
    #[serde(default)]
    pub upstream_timeout: Option<At<f64>>,
    /// Seconds to wait for a TCP connection to the upstream (default 5); 502 after.
    #[serde(default)]
    pub upstream_connect_timeout: Option<At<f64>>,
    /// TLS on the proxy listener (edge gateway).
    #[serde(default)]
    pub tls: Option<TlsRaw>,
    /// TLS to the upstream.
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsRaw>,
    /// `enforce` (default) or `shadow`: log and count denials but forward.
    #[serde(default)]
    #[schemars(with = "Option<names::Mode>")]
    pub mode: Option<At<String>>,
    /// The token endpoint and Bearer validation.
    #[serde(default)]
    pub tokens: Option<TokensRaw>,
    /// The management API and console (SPEC §9).
    #[serde(default)]
    pub management: Option<ManagementRaw>,
    /// Where credentials live (SPEC §10): the file (default) or PostgreSQL.
    #[serde(default)]
    pub store: Option<StoreRaw>,
    /// What `/metrics` exports.
    #[serde(default)]
    pub metrics: Option<MetricsRaw>,
    /// The routes a credential can reach; anything else is denied.
    #[serde(default)]
    pub routes: Vec<RouteRaw>,
}

/// `metrics:` — what `/metrics` exports.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsRaw {
    /// Series per credential (expiry, last use, and the credential/client labels of the
    /// request and token counters). Default: on up to 1,000 credentials, off above (the
    /// counts by state and expiry keep alerting working without them).
    #[serde(default)]
    pub per_credential: Option<bool>,
}

/// `store:` — the credential store (SPEC §10).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreRaw {
    /// `file` (default) or `postgres`.
    #[schemars(with = "names::StoreKind")]
    pub kind: At<String>,
    /// postgres: the environment variable holding the database URL.
    #[serde(default)]
    pub url_env: Option<At<String>>,
    /// postgres: a file holding the database URL (relative to the main config).
    #[serde(default)]
    pub url_file: Option<At<String>>,
    /// postgres: seconds between full re-reads, a safety net under LISTEN/NOTIFY (default 5).
    #[serde(default)]
    pub poll: Option<At<u64>>,
}

/// `management:` — the management API and the console (SPEC §9).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagementRaw {
    /// The management listener, `addr:port`.
    pub listen: At<String>,
    /// Required unless `listen` is a loopback address.
    #[serde(default)]
    pub tls: Option<TlsRaw>,
    /// A new credential's expiry when none is given (default `365d`).
    #[serde(default)]
    pub default_expiry: Option<At<String>>,
    #[serde(default)]
    pub approval: Option<ApprovalRaw>,
}

/// `management.approval:` — maker-checker for new credentials.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRaw {
    /// A new credential, or an edit that widens access, waits for a second person.
    #[serde(default)]
    pub required: bool,
    /// An unanswered request is dropped after this long (default `7d`).
    #[serde(default)]
    pub expires_after: Option<At<String>>,
}

/// `tls:` — certificate chain and private key (PEM), relative to the main config.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsRaw {
    /// The certificate chain (PEM).
    pub cert: String,
    /// The private key (PEM).
    pub key: String,
}

/// `upstream_tls:` — TLS to the protected API.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsRaw {
    /// Server name to send and verify (default: the upstream's host).
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM file of CA certificates to trust instead of the system's.
    #[serde(default)]
    pub ca: Option<String>,
    /// Verify the upstream's certificate (default true).
    #[serde(default)]
    pub verify: Option<bool>,
}

/// The `tokens` section.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokensRaw {
    /// `iss` of the tokens issued here.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `aud` of the tokens issued here.
    #[serde(default)]
    pub audience: Option<String>,
    /// Seconds a token lasts (default 3600), never past its client's `expires`.
    #[serde(default)]
    pub lifetime: Option<At<u64>>,
    /// PKCS#8 PEM private key (Ed25519, P-256 or RSA), relative to this file; no key, no token endpoint.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// The token endpoint's path (default `/oauth/token`).
    #[serde(default)]
    pub endpoint: Option<At<String>>,
    /// Prepended to client ids at the token endpoint (`wallet-acme-` + `reporting`).
    #[serde(default)]
    pub client_id_prefix: Option<At<String>>,
    /// Seconds of clock skew accepted on `exp`, `nbf` and `iat` (default 30).
    #[serde(default)]
    pub leeway: Option<At<u64>>,
    /// Reject a disabled client's tokens at once, not when they expire.
    #[serde(default)]
    pub revoke_on_disable: Option<bool>,
    /// Secret verifications (argon2) running at once; default 2 x CPU cores.
    #[serde(default)]
    pub max_concurrent_verifications: Option<At<usize>>,
    /// Failed client authentications per client id and per address per minute; default 10.
    #[serde(default)]
    pub failure_limit: Option<At<u32>>,
    /// Tokens minted by other identity providers.
    #[serde(default)]
    pub external_issuers: Vec<ExternalIssuerRaw>,
}

/// One entry of `tokens.external_issuers`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerRaw {
    /// The `iss` its tokens carry, exactly.
    pub issuer: At<String>,
    /// The `aud` its tokens must carry.
    pub audience: String,
    /// A JWKS file of its public keys, relative to this file.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Its JWKS URL (`https://`; `http://` only to a loopback host), refreshed by the server.
    #[serde(default)]
    pub jwks_url: Option<At<String>>,
    /// The claim holding the permissions (space-separated or a JSON array; default `scope`).
    #[serde(default)]
    pub permissions_claim: Option<String>,
    /// Where this issuer's tokens may come from (at most 6); default any address.
    #[serde(default)]
    pub allowed_ips: Option<At<Vec<At<String>>>>,
}

/// One entry of `routes`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRaw {
    /// `METHOD /path/{param}`.
    #[serde(rename = "match")]
    pub match_: At<String>,
    /// The permission the route needs, `type:action`.
    #[serde(default)]
    pub require: Option<String>,
    /// Forwarded without a credential.
    #[serde(default)]
    pub public: bool,
    /// The path parameter that names a vault (default `vault_id`).
    #[serde(default)]
    pub vault_param: Option<String>,
    /// The path parameter that names a key (default `key_id`).
    #[serde(default)]
    pub key_param: Option<String>,
    /// Overrides the global `mode` for this route.
    #[serde(default)]
    #[schemars(with = "Option<names::Mode>")]
    pub mode: Option<String>,
    /// The only kind of route an `Upgrade` (WebSocket) is forwarded on.
    #[serde(default)]
    pub websocket: bool,
}

/// The credentials file (SPEC §4).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsRaw {
    /// Custom roles: a name and its permissions (`type:action[@scope[/resource]]`).
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, At<Vec<At<String>>>>,
    /// Users: API keys linked to one act with the user's current roles and permissions.
    #[serde(default)]
    pub users: Vec<UserRaw>,
    /// OAuth clients (client credentials grant).
    #[serde(default)]
    pub clients: Vec<ClientRaw>,
    /// API keys, sent in `x-api-key`.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyRaw>,
}

/// One entry of `users`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRaw {
    pub name: At<String>,
    #[serde(default)]
    pub roles: Vec<At<String>>,
    #[serde(default)]
    pub permissions: Vec<At<String>>,
}

/// One entry of `clients`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientRaw {
    /// The client id (immutable), `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"))]
    pub id: At<String>,
    /// `$argon2id$…` PHC string, or `sha256:<64 hex>` of the secret.
    pub secret_hash: At<String>,
    /// Secret hashes replaced by `credentials rotate --overlap`, each accepted until its `until`.
    #[serde(default)]
    pub previous_secret_hashes: Vec<PreviousHashRaw>,
    /// Roles (built in: `wallets`, `transactions`, `controls`, `monitoring`, or the file's own).
    #[serde(default)]
    pub roles: Vec<At<String>>,
    /// Permissions beyond its roles', `type:action[@scope[/resource]]`.
    #[serde(default)]
    pub permissions: Vec<At<String>>,
    /// Addresses or CIDRs it may be used from (at most 6); absent: any (sandbox only).
    #[serde(default)]
    #[schemars(length(max = 6))]
    pub allowed_ips: Option<At<Vec<At<String>>>>,
    /// A date (valid through that day UTC) or an RFC 3339 timestamp (exact).
    pub expires: At<String>,
    /// It can no longer authenticate.
    #[serde(default)]
    pub disabled: bool,
    /// 5 to 50 characters.
    #[serde(default)]
    #[schemars(length(min = 5, max = 50))]
    pub description: Option<At<String>>,
    /// Free text.
    #[serde(default)]
    pub notes: Option<String>,
    /// When and by whom the management API created it (RFC 3339; an actor's name).
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
}

/// One entry of `api_keys`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRaw {
    /// The key's name (immutable), `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"))]
    pub name: At<String>,
    /// `sha256:<64 lowercase hex>` of the whole key string.
    pub key_hash: At<String>,
    /// Key hashes replaced by `credentials rotate --overlap`, each accepted until its `until`.
    #[serde(default)]
    pub previous_key_hashes: Vec<PreviousHashRaw>,
    #[serde(default)]
    pub user: Option<String>,
    /// Roles (built in: `wallets`, `transactions`, `controls`, `monitoring`, or the file's own).
    #[serde(default)]
    pub roles: Vec<At<String>>,
    /// Permissions beyond its roles', `type:action[@scope[/resource]]`.
    #[serde(default)]
    pub permissions: Vec<At<String>>,
    /// Addresses or CIDRs it may be used from (at most 6); absent: any (sandbox only).
    #[serde(default)]
    #[schemars(length(max = 6))]
    pub allowed_ips: Option<At<Vec<At<String>>>>,
    /// A date (valid through that day UTC) or an RFC 3339 timestamp (exact).
    pub expires: At<String>,
    /// It can no longer authenticate.
    #[serde(default)]
    pub disabled: bool,
    /// 5 to 50 characters.
    #[serde(default)]
    #[schemars(length(min = 5, max = 50))]
    pub description: Option<At<String>>,
    /// Free text.
    #[serde(default)]
    pub notes: Option<String>,
    /// When and by whom the management API created it (RFC 3339; an actor's name).
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
}

/// A replaced key or secret hash that keeps working until `until` (a date or an RFC 3339
/// timestamp, as `expires`), so that a rotation needs no outage.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviousHashRaw {
    pub hash: At<String>,
    pub until: At<String>,
}

/// One credential of the file, client or API key, as the fields both kinds share: the
/// one view over the two sections that validation, `credentials list` and the store read.
pub struct EntryRaw<'a> {
    pub kind: crate::store::Kind,
    /// A client's id, a key's name.
    pub name: &'a At<String>,
    /// `secret_hash` or `key_hash`.
    pub hash: &'a At<String>,
    pub previous: &'a [PreviousHashRaw],
    pub user: Option<&'a str>,
    pub roles: &'a [At<String>],
    pub permissions: &'a [At<String>],
    pub allowed_ips: &'a Option<At<Vec<At<String>>>>,
    pub expires: &'a At<String>,
    pub disabled: bool,
    pub description: &'a Option<At<String>>,
    pub notes: Option<&'a str>,
    pub created_at: Option<&'a str>,
    pub created_by: Option<&'a str>,
}

impl CredentialsRaw {
    /// Every credential, clients first, each section in file order.
    pub fn entries(&self) -> impl Iterator<Item = EntryRaw<'_>> {
        let clients = self.clients.iter().map(|c| EntryRaw {
            kind: crate::store::Kind::Client,
            name: &c.id,
            hash: &c.secret_hash,
            previous: &c.previous_secret_hashes,
            user: None,
            roles: &c.roles,
            permissions: &c.permissions,
            allowed_ips: &c.allowed_ips,
            expires: &c.expires,
            disabled: c.disabled,
            description: &c.description,
            notes: c.notes.as_deref(),
            created_at: c.created_at.as_deref(),
            created_by: c.created_by.as_deref(),
        });
        let keys = self.api_keys.iter().map(|k| EntryRaw {
            kind: crate::store::Kind::ApiKey,
            name: &k.name,
            hash: &k.key_hash,
            previous: &k.previous_key_hashes,
            user: k.user.as_deref(),
            roles: &k.roles,
            permissions: &k.permissions,
            allowed_ips: &k.allowed_ips,
            expires: &k.expires,
            disabled: k.disabled,
            description: &k.description,
            notes: k.notes.as_deref(),
            created_at: k.created_at.as_deref(),
            created_by: k.created_by.as_deref(),
        });
        clients.chain(keys)
    }
}
