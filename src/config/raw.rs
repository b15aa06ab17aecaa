//! Serde mirrors of the YAML files: no logic, unknown fields are errors.
use serde::Deserialize;

/// `portcullis.yaml` (SPEC §3).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainRaw {
    pub listen: String,
    pub upstream: String,
    #[serde(default)]
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub credentials_file: Option<String>,
    #[serde(default)]
    pub shutdown_grace: Option<u64>,
    /// Seconds to wait for the upstream's response (default 30); 504 after.
    #[serde(default)]
    pub upstream_timeout: Option<f64>,
    /// Seconds to wait for a TCP connection to the upstream (default 5); 502 after.
    #[serde(default)]
    pub upstream_connect_timeout: Option<f64>,
    /// TLS on the proxy listener (edge gateway).
    #[serde(default)]
    pub tls: Option<TlsRaw>,
    /// TLS to the upstream.
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsRaw>,
    /// `enforce` (default) or `shadow`: log and count denials but forward.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub tokens: Option<TokensRaw>,
    #[serde(default)]
    pub routes: Vec<RouteRaw>,
}

/// `tls:` — certificate chain and private key (PEM), relative to the main config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRaw {
    pub cert: String,
    pub key: String,
}

/// `upstream_tls:` — TLS to the protected API.
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensRaw {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub lifetime: Option<u64>,
    #[serde(default)]
    pub signing_key: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub client_id_prefix: Option<String>,
    #[serde(default)]
    pub leeway: Option<u64>,
    #[serde(default)]
    pub revoke_on_disable: Option<bool>,
    /// Secret verifications (argon2) running at once; default 2 x CPU cores.
    #[serde(default)]
    pub max_concurrent_verifications: Option<usize>,
    /// Failed client authentications per client id and per address per minute; default 10.
    #[serde(default)]
    pub failure_limit: Option<u32>,
    #[serde(default)]
    pub external_issuers: Vec<ExternalIssuerRaw>,
}

/// One entry of `tokens.external_issuers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerRaw {
    pub issuer: String,
    pub audience: String,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub permissions_claim: Option<String>,
    /// Where this issuer's tokens may come from (at most 6); default any address.
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
}

/// One entry of `routes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRaw {
    #[serde(rename = "match")]
    pub match_: String,
    #[serde(default)]
    pub require: Option<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub vault_param: Option<String>,
    #[serde(default)]
    pub key_param: Option<String>,
    /// Overrides the global `mode` for this route.
    #[serde(default)]
    pub mode: Option<String>,
    /// The only kind of route an `Upgrade` (WebSocket) is forwarded on.
    #[serde(default)]
    pub websocket: bool,
}

/// The credentials file (SPEC §4).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsRaw {
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub users: Vec<UserRaw>,
    #[serde(default)]
    pub clients: Vec<ClientRaw>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyRaw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRaw {
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRaw {
    pub id: String,
    pub secret_hash: String,
    /// Secret hashes replaced by `credentials rotate --overlap`, each accepted until its `until`.
    #[serde(default)]
    pub previous_secret_hashes: Vec<PreviousHashRaw>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
    pub expires: String,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRaw {
    pub name: String,
    pub key_hash: String,
    /// Key hashes replaced by `credentials rotate --overlap`, each accepted until its `until`.
    #[serde(default)]
    pub previous_key_hashes: Vec<PreviousHashRaw>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
    pub expires: String,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

/// A replaced key or secret hash that keeps working until `until` (a date or an RFC 3339
/// timestamp, as `expires`), so that a rotation needs no outage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousHashRaw {
    pub hash: String,
    pub until: String,
}
