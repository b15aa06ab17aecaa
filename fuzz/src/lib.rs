//! Shared fixture for the fuzz targets: one small config (tokens with our own Ed25519
//! key, one external issuer with a P-256 key from a JWKS file, trusted proxies, a client),
//! written to a fresh temp dir, loaded once with `portcullis::config::load`, then removed.
use std::path::PathBuf;
use std::sync::OnceLock;

use portcullis::config::Snapshot;
use portcullis::token::keys::{load_signing_key, SigningKey};

/// The fixed "now" of every target (2027-01-15); the fixture's client expires in 2099.
pub const NOW: i64 = 1_800_000_000;
pub const ISSUER: &str = "https://auth.fuzz.example";
pub const AUDIENCE: &str = "fuzz-api";
pub const IDP: &str = "https://idp.fuzz.example/";
pub const PREFIX: &str = "fz-";

pub const MAIN_YAML: &str = r#"listen: "127.0.0.1:18080"
upstream: "127.0.0.1:13000"
admin_listen: "127.0.0.1:19901"
environment: sandbox
trusted_proxies: ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32", "::1/128"]
credentials_file: credentials.yaml
tokens:
  issuer: "https://auth.fuzz.example"
  audience: "fuzz-api"
  lifetime: 600
  signing_key: signing.pem
  endpoint: /oauth/token
  client_id_prefix: "fz-"
  leeway: 30
  revoke_on_disable: true
  external_issuers:
    - issuer: "https://idp.fuzz.example/"
      audience: "fuzz-api"
      jwks_file: idp-jwks.json
      permissions_claim: perms
      allowed_ips: ["10.0.0.0/8"]
routes:
  - match: "GET /v1/status"
    public: true
  - match: "GET /v1/vaults/{vault_id}/balances"
    require: "balances:read"
  - match: "POST /v1/vaults/{vault_id}/keys/{key_id}"
    require: "key:update"
"#;

pub const CREDENTIALS_YAML: &str = r#"roles:
  reporting: ["transactions:read", "balances:read@vault/v-1"]
users:
  - name: alice
    roles: [wallets]
clients:
  - id: reporting
    secret_hash: "sha256:4aadbc308887154645e34bd95281d7ae2a7ddadedeb1db2af239426639727073"
    roles: [reporting]
    expires: 2099-12-31
  - id: off
    secret_hash: "sha256:4aadbc308887154645e34bd95281d7ae2a7ddadedeb1db2af239426639727073"
    permissions: ["vault:read"]
    disabled: true
    expires: 2099-12-31
api_keys:
  - name: wallets
    key_hash: "sha256:8aeb7d29bb5708227f5c24632142f1261514649d7d733c4c6d72b07a9176cb5c"
    user: alice
    allowed_ips: ["127.0.0.1", "::1"]
    expires: 2099-12-31
"#;

// Fixed keys, so that a reproducer (and a seed holding a whole signed token) means the same
// thing in every run. FUZZING ONLY: these private keys are public, in the repository.
pub const OWN_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIKWy/ih6j35KSZX2DiMJrrHi1+K44IejsiWZTx88w/WY
-----END PRIVATE KEY-----
";
pub const IDP_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWZIzsS+zk5bQUFwF
mMW89qZnmCCYLYmACn8AUrJyvruhRANCAARjtOo2D8SYmoc1KJvPFqdX108MpeWx
owqAi7km+pJCf4bhBLszSI7ecBl2qBj0F8XGBzhJWeJbSzQrljVDgiLb
-----END PRIVATE KEY-----
";

pub struct Fixture {
    pub snap: Snapshot,
    /// Our signing key (the config's `signing.pem`).
    pub own: SigningKey,
    /// The external issuer's key (its public JWK is in `idp-jwks.json`).
    pub idp: SigningKey,
    /// `{"keys":[idp jwk]}`.
    pub idp_jwks: String,
    pub own_pem: String,
}

/// A fresh directory under the system temp dir, unique to this process.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes the fixture's files (main config, credentials, keys) into `dir`.
pub fn write_fixture_files(dir: &std::path::Path, own_pem: &str, idp_jwks: &str) {
    std::fs::write(dir.join("portcullis.yaml"), MAIN_YAML).expect("write main");
    std::fs::write(dir.join("credentials.yaml"), CREDENTIALS_YAML).expect("write credentials");
    std::fs::write(dir.join("signing.pem"), own_pem).expect("write key");
    std::fs::write(dir.join("idp-jwks.json"), idp_jwks).expect("write jwks");
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let own_pem = OWN_PEM.to_string();
        let own = load_signing_key(&own_pem).expect("load ed25519");
        let idp = load_signing_key(IDP_PEM).expect("load p256");
        let idp_jwks = serde_json::json!({ "keys": [idp.jwk.clone()] }).to_string();
        let dir = scratch_dir("fixture");
        write_fixture_files(&dir, &own_pem, &idp_jwks);
        let snap = portcullis::config::load(&dir.join("portcullis.yaml"), NOW)
            .unwrap_or_else(|e| panic!("fixture config does not load: {e:?}"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(snap.tokens.as_ref().is_some_and(|t| t.signer.is_some() && t.external.len() == 1));
        Fixture { snap, own, idp, idp_jwks, own_pem }
    })
}

/// Signs `header.payload` (each base64url of the given bytes) with `key`'s algorithm.
pub fn sign_raw(header: &[u8], payload: &[u8], key: &SigningKey) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).expect("sign"));
    format!("{input}.{sig}")
}
