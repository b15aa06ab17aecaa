//! `portcullis credentials …` and `portcullis explain`, run as the real binary against
//! temporary files. Every refused change must print a clear error and leave the file byte
//! for byte as it was; every accepted one must keep the other entries and the comments.
//! The printed secrets are checked with the sidecar's own code (the key's hash lookup, the
//! client's secret verification and token endpoint), and one test creates, disables,
//! rotates and deletes a key while the sidecar runs.
//!
//! The end-to-end test measures a 1-second deadline, so it runs alone (`EXCLUSIVE`); the
//! other tests here share the lock.
mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use chrono::{Months, Utc};
use common::{free_port, main_head, request, run_bin, sha256_hash, try_send_raw, write_config, Proxy, Upstream};
use portcullis::config::{self, SecretHash, Snapshot};
use portcullis::token::endpoint::verify_secret;

static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------
// Fixture

const ROUTES: &str = "routes:
  - match: \"GET /v1/status\"
    public: true
  - match: \"GET /v1/vaults/{vault_id}/balances\"
    require: \"balances:read\"
  - match: \"GET /v1/transactions\"
    require: \"transactions:read\"
  - match: \"POST /v1/vaults/{vault_id}/keys\"
    require: \"key:create\"
";

/// Keys of the fixture, by name.
const ALICE_KEY: &str = "alice-key-for-the-cli-tests";
const READER_KEY: &str = "vault-reader-key-for-the-cli-tests";
const OLD_KEY: &str = "old-key-for-the-cli-tests";
const GHOST_KEY: &str = "ghost-key-for-the-cli-tests";
const REPORTING_SECRET: &str = "reporting-secret-for-the-cli-tests";

fn credentials_yaml() -> String {
    format!(
        "# Credentials for the CLI tests.
roles:
  reporting: [\"transactions:read\", \"balances:read\"]   # a custom role

users:
  - name: alice
    roles: [wallets]

clients:
  # The reporting service (keep this comment).
  - id: reporting
    secret_hash: \"{}\"
    roles: [reporting]
    expires: 2099-12-31
    description: \"Reporting service\"

api_keys:
  # Alice's key (keep this comment).
  - name: alice-key
    key_hash: \"{}\"
    user: alice
    expires: 2099-12-31

  - name: vault-reader   # trailing comment
    key_hash: \"{}\"
    permissions: [\"balances:read@vault/v-1\"]
    allowed_ips: [\"192.0.2.0/24\"]
    expires: 2099-12-31
    disabled: false  # flipped by the tests

  - name: old-key
    key_hash: \"{}\"
    permissions: [\"transactions:read\"]
    expires: 2020-01-01

  - name: ghost-key
    key_hash: \"{}\"
    user: nobody
    permissions: [\"transactions:read\"]
    expires: 2099-12-31
# End of file (keep this comment).
",
        sha256_hash(REPORTING_SECRET),
        sha256_hash(ALICE_KEY),
        sha256_hash(READER_KEY),
        sha256_hash(OLD_KEY),
        sha256_hash(GHOST_KEY),
    )
}

/// A sandbox config with `ROUTES` and the fixture's credentials in a temp dir.
struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        Fx::with("environment: sandbox\n", &credentials_yaml())
    }

    /// `env_line` replaces the environment line of the main config (and may add fields).
    fn with(env_line: &str, creds: &str) -> Fx {
        let head = main_head(addr(), addr(), addr()).replace("environment: sandbox\n", env_line);
        let dir = write_config(&format!("{head}{ROUTES}"), creds);
        Fx { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("portcullis.yaml")
    }

    fn creds_path(&self) -> PathBuf {
        self.dir.path().join("credentials.yaml")
    }

    fn creds(&self) -> String {
        fs::read_to_string(self.creds_path()).expect("read credentials.yaml")
    }

    /// `portcullis credentials --config <config> <args…>`
    fn cli(&self, args: &[&str]) -> Out {
        let config = self.config();
        let mut all = vec!["credentials", "--config", config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        run(&all, self.dir.path())
    }

    fn explain(&self, args: &[&str]) -> Out {
        let config = self.config();
        let mut all = vec!["explain", "--config", config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        run(&all, self.dir.path())
    }

    fn load(&self, now: i64) -> Snapshot {
        config::load(&self.config(), now).unwrap_or_else(|e| panic!("the config does not load:\n{e}\n{}", self.creds()))
    }

    /// Adds a signing key and a `tokens:` section to the main config.
    fn with_tokens(self, revoke_on_disable: bool) -> Fx {
        let key = self.dir.path().join("signing.pem");
        let out = run(&["keygen", "--out", key.to_str().expect("utf-8 path")], self.dir.path());
        assert_eq!(out.code, 0, "keygen: {}", out.stderr);
        let mut main = fs::read_to_string(self.config()).expect("read main");
        main.push_str(&format!(
            "tokens:\n  issuer: \"https://auth.test\"\n  audience: \"wallet-api\"\n  signing_key: signing.pem\n  revoke_on_disable: {revoke_on_disable}\n"
        ));
        fs::write(self.config(), main).expect("write main");
        self
    }
}

fn addr() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

/// A finished run: exit code, stdout, stderr.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
    fn ok(self, what: &str) -> Out {
        assert_eq!(self.code, 0, "{what} failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

fn run(args: &[&str], cwd: &Path) -> Out {
    let o: Output = run_bin(args, cwd, Duration::from_secs(60)).unwrap_or_else(|| panic!("portcullis {args:?} hung"));
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn now() -> i64 {
    config::unix_now()
}

/// Asserts that `new` is `old` with lines only inserted (none changed or removed) and
/// returns the inserted lines.
fn inserted(old: &str, new: &str) -> Vec<String> {
    let (o, n): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut i = 0;
    let mut added = Vec::new();
    for line in &n {
        if i < o.len() && o[i] == *line {
            i += 1;
        } else {
            added.push(line.to_string());
        }
    }
    assert_eq!(i, o.len(), "lines of the old file were changed or removed:\n--- old ---\n{old}\n--- new ---\n{new}");
    added
}

/// Asserts that `new` is `old` with lines only removed, and returns the removed lines.
fn removed(old: &str, new: &str) -> Vec<String> {
    inserted(new, old)
}

// ---------------------------------------------------------------------------------
// create

#[test]
fn create_api_key_prints_a_working_secret_and_stores_only_its_hash() {
    let _g = shared();
    let fx = Fx::new();
    let before = fx.creds();
    let out = fx
        .cli(&["create", "api-key", "--name", "acme-backend", "--preset", "wallets", "--allow-ip", "127.0.0.1", "--description", "Acme backend", "--output", "json"])
        .ok("create");
    let v = out.json();
    let secret = v["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("pcl_test_"), "sandbox keys are pcl_test_: {secret}");
    assert_eq!(secret.len(), "pcl_test_".len() + 43 + 6, "{secret}");
    assert!(portcullis::store::secret::checksum_ok(&secret), "checksum of {secret}");
    assert!(secret["pcl_test_".len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(v["curl"].as_str().unwrap_or("").contains(&format!("x-api-key: {secret}")), "{v}");
    assert!(v["curl"].as_str().unwrap_or("").contains("/v1/vaults/VAULT_ID/balances"), "{v}");

    let after = fx.creds();
    assert!(!after.contains(&secret), "the secret must never be written");
    assert!(after.contains(&sha256_hash(&secret)), "the key's sha256 hash is stored:\n{after}");
    // Appended to api_keys, before the closing comment; nothing else touched.
    let added = inserted(&before, &after);
    assert_eq!(
        added,
        [
            "",
            "  - name: acme-backend",
            &format!("    key_hash: \"{}\"", sha256_hash(&secret)),
            "    roles: [wallets]",
            "    allowed_ips: [\"127.0.0.1\"]",
            &format!("    expires: {}", year_from_today()),
            "    description: \"Acme backend\"",
        ],
        "{after}"
    );
    assert!(after.ends_with("# End of file (keep this comment).\n"));

    // The printed key authenticates with the sidecar's own lookup.
    let snap = fx.load(now());
    let id = portcullis::pipeline::authn::api_key(&snap, &secret, now()).expect("the new key authenticates");
    assert_eq!(&*id.credential, "acme-backend");
    assert!(portcullis::pipeline::authn::api_key(&snap, &format!("{secret}x"), now()).is_err());
    fx.cli(&["list"]).ok("list after create");
    let check = run(&["check", "--config", fx.config().to_str().expect("path")], fx.dir.path());
    assert_eq!(check.code, 0, "check: {}", check.stdout);
}

fn year_from_today() -> String {
    Utc::now().date_naive().checked_add_months(Months::new(12)).expect("date").format("%Y-%m-%d").to_string()
}

#[test]
fn create_client_stores_an_argon2_hash_that_verifies_the_printed_secret() {
    let _g = shared();
    let fx = Fx::with("environment: production\n", &credentials_yaml().replace(
        "    expires: 2099-12-31\n    description: \"Reporting service\"",
        "    allowed_ips: [\"10.0.0.0/8\"]\n    expires: 2099-12-31\n    description: \"Reporting service\"",
    ).replace("    user: alice\n    expires", "    user: alice\n    allowed_ips: [\"10.0.0.1\"]\n    expires")
    .replace("    permissions: [\"transactions:read\"]\n    expires", "    permissions: [\"transactions:read\"]\n    allowed_ips: [\"10.0.0.1\"]\n    expires"));
    let before = fx.creds();
    fx.load(now());
    let out = fx
        .cli(&["create", "client", "--name", "payments", "--role", "reporting", "--permission", "audit:read", "--allow-ip", "203.0.113.7,198.51.100.0/24", "--expires-in", "90d", "--notes", "owned by payments", "-o", "json"])
        .ok("create client");
    let v = out.json();
    let secret = v["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("pcs_live_"), "production client secrets are pcs_live_: {secret}");
    assert_eq!(v["client_id"], "payments");
    assert!(v["curl"].as_str().unwrap_or("").contains("grant_type=client_credentials"), "{v}");

    let after = fx.creds();
    assert!(!after.contains(&secret));
    let added = inserted(&before, &after);
    assert_eq!(added[0], "  - id: payments", "appended to clients, after the last client:\n{after}");
    assert!(added[1].starts_with("    secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$"), "argon2 defaults: {}", added[1]);
    assert!(added.contains(&"    allowed_ips: [\"203.0.113.7\", \"198.51.100.0/24\"]".to_string()), "{added:?}");
    let ninety = Utc::now().date_naive() + chrono::Days::new(90);
    assert!(added.contains(&format!("    expires: {}", ninety.format("%Y-%m-%d"))), "{added:?}");
    let clients_at = after.find("clients:").expect("clients");
    let keys_at = after.find("api_keys:").expect("api_keys");
    let new_at = after.find("- id: payments").expect("entry");
    assert!(clients_at < new_at && new_at < keys_at, "the client goes into clients:\n{after}");

    let snap = fx.load(now());
    let client = snap.credentials.clients.get("payments").expect("client loaded");
    let stored = client.secret.as_ref().expect("secret hash");
    assert!(matches!(**stored, SecretHash::Argon2(_)));
    assert!(verify_secret(stored, &secret), "the printed secret verifies");
    assert!(!verify_secret(stored, "pcs_live_wrong"));
    let grants: Vec<&str> = client.grants.iter().map(|g| g.as_str()).collect();
    assert_eq!(grants, ["transactions:read", "balances:read", "audit:read"]);
}

#[test]
fn create_sets_the_expiry_from_the_flags() {
    let _g = shared();
    let fx = Fx::new();
    let exp = |args: &[&str]| -> String {
        let name = format!("k{}", common::new_marker());
        let mut all = vec!["create", "api-key", "--name", &name, "--permission", "audit:read", "-o", "json"];
        all.extend_from_slice(args);
        fx.cli(&all).ok("create").json()["expires"].as_str().expect("expires").to_string()
    };
    assert_eq!(exp(&[]), year_from_today(), "default: a year from today");
    assert_eq!(exp(&["--expires", "2031-02-03"]), "2031-02-03");
    assert_eq!(exp(&["--expires", "2031-02-03T04:05:06Z"]), "2031-02-03T04:05:06Z");
    let in_36h = exp(&["--expires-in", "36h"]);
    let t = chrono::DateTime::parse_from_rfc3339(&in_36h).expect("an exact time").timestamp();
    assert!((t - (now() + 36 * 3600)).abs() < 120, "{in_36h}");
    let snap = fx.load(now());
    assert!(snap.credentials.all.len() >= 9);
}

/// Every refused `create` prints a clear error and leaves the file byte for byte unchanged.
#[test]
fn bad_input_is_refused_and_leaves_the_file_unchanged() {
    let _g = shared();
    let fx = Fx::new();
    let before = fs::read(fx.creds_path()).expect("read");
    let ips7: Vec<String> = (1..=7).map(|i| format!("192.0.2.{i}")).collect();
    let mut seven = vec!["create", "api-key", "--name", "seven", "--permission", "audit:read"];
    for ip in &ips7 {
        seven.extend_from_slice(&["--allow-ip", ip]);
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["create", "api-key", "--name", "alice-key", "--permission", "audit:read"], "already exists"),
        (vec!["create", "client", "--name", "alice-key", "--permission", "audit:read"], "already exists"),
        (vec!["create", "api-key", "--name", "reporting", "--permission", "audit:read"], "already exists"),
        (vec!["create", "api-key", "--name", "n1", "--permission", "audit:read", "--allow-ip", "10.0.0.1/8"], "host bits set"),
        (vec!["create", "api-key", "--name", "n2", "--permission", "audit:read", "--allow-ip", "10.0.0.300"], "not an IP address or CIDR"),
        (vec!["create", "api-key", "--name", "n3", "--permission", "audit:read", "--allow-ip", "not-an-ip"], "not an IP address or CIDR"),
        (seven, "at most 6"),
        (vec!["create", "api-key", "--name", "n4", "--role", "admins"], "--role \"admins\": unknown role"),
        (vec!["create", "api-key", "--name", "n5", "--permission", "balances:write"], "action must be"),
        (vec!["create", "api-key", "--name", "bad name", "--permission", "audit:read"], "--name \"bad name\": a name must match"),
        (vec!["create", "api-key", "--name", "n6", "--permission", "audit:read", "--description", "abc"], "5 to 50 characters"),
        (vec!["create", "api-key", "--name", "n7", "--user", "mallory"], "no such user"),
        (vec!["create", "client", "--name", "n8", "--user", "alice", "--permission", "audit:read"], "only an API key"),
        (vec!["create", "api-key", "--name", "n9"], "give it some access"),
        (vec!["create", "api-key", "--name", "n10", "--permission", "audit:read", "--expires", "2001-01-01"], "in the past"),
        (vec!["create", "api-key", "--name", "n11", "--permission", "audit:read", "--expires", "next week"], "neither a date"),
        (vec!["create", "api-key", "--name", "n12", "--permission", "audit:read", "--expires-in", "90x"], "unit"),
        (vec!["disable", "nobody"], "no client or API key named \"nobody\""),
        (vec!["rotate", "vault-reader", "--overlap", "90d"], "at most 30d"),
    ];
    let mut failures = Vec::new();
    for (args, want) in &cases {
        let out = fx.cli(args);
        let after = fs::read(fx.creds_path()).expect("read");
        if out.code != 1 || !out.stderr.contains(want) || !out.stderr.starts_with("portcullis credentials: ") || after != before {
            failures.push(format!(
                "{args:?}: exit {} (want 1), stderr {:?} (want {want:?}), file unchanged: {}",
                out.code,
                out.stderr,
                after == before
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn production_rules_apply_with_config() {
    let _g = shared();
    let creds = "api_keys:\n  - name: a\n    key_hash: \"".to_string()
        + &sha256_hash("a-key")
        + "\"\n    permissions: [\"audit:read\"]\n    allowed_ips: [\"10.0.0.1\"]\n    expires: 2099-01-01\n";
    let fx = Fx::with("environment: production\n", &creds);
    let before = fs::read(fx.creds_path()).expect("read");
    let out = fx.cli(&["create", "api-key", "--name", "b", "--permission", "audit:read"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--allow-ip is required"), "{}", out.stderr);
    let out = fx.cli(&["create", "api-key", "--name", "b", "--permission", "audit:read", "--allow-ip", "0.0.0.0/0"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("every address"), "{}", out.stderr);
    assert_eq!(fs::read(fx.creds_path()).expect("read"), before);
    let v = fx.cli(&["create", "api-key", "--name", "b", "--permission", "audit:read", "--allow-ip", "10.0.0.2", "-o", "json"]).ok("create").json();
    assert!(v["secret"].as_str().unwrap_or("").starts_with("pcl_live_"), "{v}");
    // --file alone knows no environment: sandbox rules and a test prefix.
    let file = fx.creds_path();
    let out = run(&["credentials", "--file", file.to_str().expect("path"), "create", "api-key", "--name", "c", "--permission", "audit:read", "-o", "json"], fx.dir.path()).ok("create --file");
    assert!(out.json()["secret"].as_str().unwrap_or("").starts_with("pcl_test_"));
}

/// The loader's own validation runs on the would-be file: a problem that only shows in
/// the whole file (here, the file is already broken) stops the write.
#[test]
fn a_write_never_leaves_a_file_the_sidecar_would_refuse() {
    let _g = shared();
    let broken = credentials_yaml().replace("roles: [reporting]", "roles: [reporting, nonexistent]");
    let fx = Fx::with("environment: sandbox\n", &broken);
    let before = fs::read(fx.creds_path()).expect("read");
    let out = fx.cli(&["create", "api-key", "--name", "fresh", "--permission", "audit:read"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("the sidecar would refuse"), "{}", out.stderr);
    assert!(out.stderr.contains("unknown role \"nonexistent\""), "{}", out.stderr);
    assert!(out.stderr.contains("credentials.yaml:"), "the error names the file and line: {}", out.stderr);
    assert!(out.stdout.is_empty(), "no secret is printed for a refused create: {}", out.stdout);
    assert_eq!(fs::read(fx.creds_path()).expect("read"), before);
}

/// Concurrent writers take turns (a lock on the directory): no change is lost.
#[test]
fn concurrent_creates_all_land() {
    let _g = shared();
    let fx = Fx::new();
    let names: Vec<String> = (0..4).map(|i| format!("parallel-{i}")).collect();
    std::thread::scope(|s| {
        for n in &names {
            let fx = &fx;
            s.spawn(move || fx.cli(&["create", "api-key", "--name", n, "--permission", "audit:read"]).ok("parallel create"));
        }
    });
    let snap = fx.load(now());
    for n in &names {
        assert!(snap.credentials.all.iter().any(|c| &*c.id == n), "{n} is missing:\n{}", fx.creds());
    }
    assert!(fx.creds().contains("# Alice's key (keep this comment)."));
}

/// The loader checks the rotation fields it accepts.
#[test]
fn bad_previous_hashes_are_config_errors() {
    let _g = shared();
    let creds = format!(
        "clients:\n  - id: c\n    secret_hash: \"{}\"\n    previous_secret_hashes:\n      - {{hash: \"md5:x\", until: \"2030-01-01\"}}\n    permissions: [\"audit:read\"]\n    expires: 2099-01-01\napi_keys:\n  - name: k\n    key_hash: \"{}\"\n    previous_key_hashes:\n      - {{hash: \"{}\", until: \"soon\"}}\n      - {{hash: \"{}\", until: \"2030-01-01\"}}\n      - {{hash: \"nope\", until: \"2030-01-01\", extra: 1}}\n    permissions: [\"audit:read\"]\n    expires: 2099-01-01\n",
        sha256_hash("c"),
        sha256_hash("k"),
        sha256_hash("k-old"),
        sha256_hash("k"),
    );
    let fx = Fx::with("environment: sandbox\n", &creds);
    let out = run(&["check", "--config", fx.config().to_str().expect("path")], fx.dir.path());
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("unknown field `extra`"), "{}", out.stdout);
    let fixed = creds.replace(", extra: 1", "");
    fs::write(fx.creds_path(), &fixed).expect("write");
    let out = run(&["check", "--config", fx.config().to_str().expect("path")], fx.dir.path());
    assert_eq!(out.code, 1, "{}", out.stdout);
    for want in [
        "client \"c\": previous_secret_hashes: hash must be $argon2id$… or sha256:<64 hex>",
        "api key \"k\": previous_key_hashes: until: expires \"soon\" is neither a date",
        "api key \"k\": previous_key_hashes: a hash is the same as another key's",
        "api key \"k\": previous_key_hashes: hash must be sha256:<64 hex>",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?} in:\n{}", out.stdout);
    }
}

// ---------------------------------------------------------------------------------
// Unwritable directory

/// Whether this process runs as root (for whom mode bits do not stop a write).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Undoes `chattr +i` (or the mode change) when dropped, so the temp dir can be removed.
struct Unlock(PathBuf, bool);

impl Drop for Unlock {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
    }
}

/// Makes `dir` refuse new files: mode 0500, or, for root (who ignores modes), the
/// immutable attribute (`chattr +i`, which stops root too). `None` if neither works here.
fn make_unwritable(dir: &Path) -> Option<Unlock> {
    use std::os::unix::fs::PermissionsExt;
    let probe = |d: &Path| fs::write(d.join(".probe"), b"x").is_err();
    if !is_root() {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o500)).ok()?;
        let u = Unlock(dir.to_path_buf(), false);
        return probe(dir).then_some(u);
    }
    let ok = std::process::Command::new("chattr").arg("+i").arg(dir).status().is_ok_and(|s| s.success());
    let u = Unlock(dir.to_path_buf(), ok);
    (ok && probe(dir)).then_some(u)
}

#[test]
fn unwritable_directory_is_a_clear_error_and_the_file_is_unchanged() {
    let _g = shared();
    let fx = Fx::new();
    // The credentials file in a directory of its own, which is then made unwritable.
    let sub = fx.dir.path().join("locked");
    fs::create_dir(&sub).expect("mkdir");
    fs::write(sub.join("credentials.yaml"), credentials_yaml()).expect("write");
    let main = fs::read_to_string(fx.config()).expect("main").replace("credentials_file: credentials.yaml", "credentials_file: locked/credentials.yaml");
    fs::write(fx.config(), main).expect("main");
    let before = fs::read(sub.join("credentials.yaml")).expect("read");
    let Some(_unlock) = make_unwritable(&sub) else {
        // Root without CAP_LINUX_IMMUTABLE (e.g. a default Docker container), or a
        // filesystem without the attribute: nothing here can stop root from writing.
        // `failing_to_create_the_temporary_file_leaves_the_file_unchanged` still covers
        // the failure path everywhere.
        eprintln!("SKIPPED: cannot make a directory unwritable here (not root: chmod 0500; root: chattr +i)");
        return;
    };
    for args in [
        vec!["create", "api-key", "--name", "blocked", "--permission", "audit:read"],
        vec!["disable", "alice-key"],
        vec!["delete", "alice-key", "--yes"],
        vec!["rotate", "alice-key"],
    ] {
        let out = fx.cli(&args);
        assert_eq!(out.code, 1, "{args:?} must fail: {}", out.stdout);
        assert!(out.stderr.contains("cannot write") && out.stderr.contains("the file is unchanged"), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("locked"), "the error names the directory: {}", out.stderr);
        assert!(!out.stdout.contains("pcl_"), "no secret is printed when nothing was written: {}", out.stdout);
        assert_eq!(fs::read(sub.join("credentials.yaml")).expect("read"), before, "{args:?} changed the file");
    }
    let leftovers: Vec<_> = fs::read_dir(&sub).expect("ls").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
}

/// A failure that stops root too, on any filesystem: the temporary file's name (the
/// file's name plus a prefix and suffix) is longer than NAME_MAX (255), so creating it
/// fails with ENAMETOOLONG while the file itself (250 characters) is fine.
#[test]
fn failing_to_create_the_temporary_file_leaves_the_file_unchanged() {
    let _g = shared();
    let fx = Fx::new();
    let name = format!("{}.yaml", "c".repeat(245));
    let path = fx.dir.path().join(&name);
    fs::write(&path, credentials_yaml()).expect("write");
    let before = fs::read(&path).expect("read");
    let out = run(
        &["credentials", "--file", path.to_str().expect("path"), "create", "api-key", "--name", "blocked", "--permission", "audit:read"],
        fx.dir.path(),
    );
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("cannot create a temporary file"), "{}", out.stderr);
    assert!(out.stderr.contains("the file is unchanged"), "{}", out.stderr);
    assert_eq!(fs::read(&path).expect("read"), before);
}

// ---------------------------------------------------------------------------------
// disable, enable, delete

#[test]
fn disable_and_enable_edit_one_line_and_keep_everything_else() {
    let _g = shared();
    let fx = Fx::new();
    let before = fx.creds();
    // No `disabled:` line yet: one line is added, at the end of the entry.
    fx.cli(&["disable", "alice-key"]).ok("disable");
    let after = fx.creds();
    assert_eq!(inserted(&before, &after), ["    disabled: true"]);
    assert!(after.contains("    expires: 2099-12-31\n    disabled: true\n\n  - name: vault-reader"), "{after}");
    let snap = fx.load(now());
    let e = portcullis::pipeline::authn::api_key(&snap, ALICE_KEY, now()).expect_err("a disabled key is rejected");
    assert!(e.description.contains("disabled"), "{e:?}");
    // Again: nothing to do, nothing written.
    let out = fx.cli(&["disable", "alice-key"]).ok("disable twice");
    assert!(out.stdout.contains("already disabled"));
    assert_eq!(fx.creds(), after);
    // Enable: the line is set to false.
    fx.cli(&["enable", "alice-key"]).ok("enable");
    let enabled = fx.creds();
    assert_eq!(enabled, before.replace("    user: alice\n    expires: 2099-12-31\n", "    user: alice\n    expires: 2099-12-31\n    disabled: false\n"));
    portcullis::pipeline::authn::api_key(&fx.load(now()), ALICE_KEY, now()).expect("enabled again");

    // An existing `disabled: false  # comment` is flipped in place, comment kept.
    let before = fx.creds();
    fx.cli(&["disable", "vault-reader"]).ok("disable vault-reader");
    assert_eq!(fx.creds(), before.replace("    disabled: false  # flipped by the tests", "    disabled: true # flipped by the tests"));
    // A client.
    let out = fx.cli(&["disable", "reporting"]).ok("disable client");
    assert!(out.stdout.contains("no new tokens"), "{}", out.stdout);
    assert!(fx.load(now()).credentials.clients["reporting"].disabled);
}

#[test]
fn edit_replaces_only_the_fields_given_and_keeps_name_expiry_and_comments() {
    let _g = shared();
    let fx = Fx::new();
    let before = fx.creds();
    fx.cli(&["edit", "vault-reader", "--permission", "balances:read@vault/v-2", "--role", "reporting", "--notes", "moved to v-2"])
        .ok("edit");
    let after = fx.creds();
    assert!(after.contains("  - name: vault-reader   # trailing comment\n"), "{after}");
    assert!(after.contains("    permissions: [\"balances:read@vault/v-2\"]\n"), "{after}");
    assert!(after.contains("    allowed_ips: [\"192.0.2.0/24\"]\n    expires: 2099-12-31\n"), "untouched fields stay: {after}");
    assert!(after.contains("# End of file (keep this comment).\n"));
    let snap = fx.load(now());
    let c = snap.credentials.all.iter().find(|c| &*c.id == "vault-reader").expect("still there");
    let grants: Vec<&str> = c.grants.iter().map(|g| g.as_str()).collect();
    assert!(grants.contains(&"balances:read@vault/v-2") && grants.contains(&"transactions:read"), "{grants:?}");
    assert!(!grants.contains(&"balances:read@vault/v-1"), "the old list is replaced: {grants:?}");
    assert_eq!(c.notes.as_deref(), Some("moved to v-2"));
    assert_eq!(&*c.expires_text, "2099-12-31");

    // Back to any address, roles cleared.
    fx.cli(&["edit", "vault-reader", "--all-ips", "--clear-roles"]).ok("edit again");
    let c = fx.load(now()).credentials.all.iter().find(|c| &*c.id == "vault-reader").cloned().expect("there");
    assert!(c.allowed_ips.is_none() && c.roles.is_empty());

    // Refused: nothing to change, an unknown role, an unknown name; the file is unchanged.
    let now_text = fx.creds();
    for (args, says) in [
        (vec!["edit", "vault-reader"], "nothing to change"),
        (vec!["edit", "vault-reader", "--role", "no-such-role"], "unknown role"),
        (vec!["edit", "nobody-here", "--notes", "x"], "no client or API key named"),
    ] {
        let out = fx.cli(&args);
        assert_eq!(out.code, 1, "{args:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert_eq!(fx.creds(), now_text);
    }
    assert_ne!(before, now_text);
}

#[test]
fn delete_asks_unless_yes_and_removes_the_entry_with_its_comment() {
    let _g = shared();
    let fx = Fx::new();
    let before = fx.creds();
    // No terminal (stdin is /dev/null) and no --yes: refused.
    let out = fx.cli(&["delete", "alice-key"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no terminal to confirm on") && out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(fx.creds(), before);

    fx.cli(&["delete", "alice-key", "--yes"]).ok("delete");
    let after = fx.creds();
    assert_eq!(
        removed(&before, &after),
        [
            "  # Alice's key (keep this comment).",
            "  - name: alice-key",
            &format!("    key_hash: \"{}\"", sha256_hash(ALICE_KEY)),
            "    user: alice",
            "    expires: 2099-12-31",
            "",
        ]
    );
    assert!(after.contains("api_keys:\n  - name: vault-reader   # trailing comment\n"), "{after}");
    assert!(portcullis::pipeline::authn::api_key(&fx.load(now()), ALICE_KEY, now()).is_err());

    // The last entry of the file, before its closing comment.
    fx.cli(&["delete", "ghost-key", "--yes"]).ok("delete last");
    let after2 = fx.creds();
    assert!(after2.ends_with("    expires: 2020-01-01\n# End of file (keep this comment).\n"), "{after2}");
    // The only client: the section is left as an empty list.
    fx.cli(&["delete", "reporting", "-y"]).ok("delete the only client");
    let after3 = fx.creds();
    assert!(after3.contains("clients: []\n"), "{after3}");
    assert!(!after3.contains("# The reporting service (keep this comment)."), "{after3}");
    assert!(after3.contains("  reporting: [\"transactions:read\", \"balances:read\"]   # a custom role"));
    fx.load(now());
    let out = fx.cli(&["delete", "reporting", "--yes"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no client or API key named \"reporting\""));
}

// ---------------------------------------------------------------------------------
// rotate

#[test]
fn rotate_without_overlap_stops_the_old_key_at_once() {
    let _g = shared();
    let fx = Fx::new();
    let before = fx.creds();
    let v = fx.cli(&["rotate", "vault-reader", "-o", "json"]).ok("rotate").json();
    let secret = v["secret"].as_str().expect("secret").to_string();
    assert!(v["previous_secret_until"].is_null());
    let after = fx.creds();
    assert_eq!(after, before.replace(&sha256_hash(READER_KEY), &sha256_hash(&secret)), "only the hash changed");
    let snap = fx.load(now());
    assert!(portcullis::pipeline::authn::api_key(&snap, READER_KEY, now()).is_err());
    assert_eq!(&*portcullis::pipeline::authn::api_key(&snap, &secret, now()).expect("new key").credential, "vault-reader");
}

#[test]
fn rotate_with_overlap_keeps_the_old_key_working_until_then() {
    let _g = shared();
    let fx = Fx::new();
    let t0 = now();
    let v = fx.cli(&["rotate", "alice-key", "--overlap", "1h", "-o", "json"]).ok("rotate").json();
    let first = v["secret"].as_str().expect("secret").to_string();
    let until = chrono::DateTime::parse_from_rfc3339(v["previous_secret_until"].as_str().expect("until")).expect("rfc3339").timestamp();
    assert!((until - (t0 + 3600)).abs() < 60);
    let text = fx.creds();
    assert!(text.contains(&format!("    previous_key_hashes:\n      - {{hash: \"{}\", until: ", sha256_hash(ALICE_KEY))), "{text}");
    let snap = fx.load(now());
    let key = |k: &str, at: i64| portcullis::pipeline::authn::api_key(&snap, k, at).map(|i| i.credential.to_string());
    assert_eq!(key(ALICE_KEY, now()).expect("old key during the overlap"), "alice-key");
    assert_eq!(key(&first, now()).expect("new key"), "alice-key");
    let e = key(ALICE_KEY, until).expect_err("old key after the overlap");
    assert!(e.description.contains("rotated"), "{e:?}");
    assert!(key(&first, until).is_ok());

    // A second rotation inside the overlap keeps both older keys until their ends.
    let second = fx.cli(&["rotate", "alice-key", "--overlap", "2h", "-o", "json"]).ok("rotate again").json()["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let snap = fx.load(now());
    for k in [ALICE_KEY, first.as_str(), second.as_str()] {
        assert!(portcullis::pipeline::authn::api_key(&snap, k, now()).is_ok(), "{k} works during the overlap");
    }
    // Then a rotation without overlap (after a leak): every older key stops.
    let third = fx.cli(&["rotate", "alice-key", "-o", "json"]).ok("rotate, no overlap").json()["secret"].as_str().expect("secret").to_string();
    let text = fx.creds();
    assert!(!text.contains("previous_key_hashes"), "{text}");
    let snap = fx.load(now());
    for k in [ALICE_KEY, first.as_str(), second.as_str()] {
        assert!(portcullis::pipeline::authn::api_key(&snap, k, now()).is_err(), "{k} stopped");
    }
    assert!(portcullis::pipeline::authn::api_key(&snap, &third, now()).is_ok());
    // Everything but alice-key's entry is as it was.
    assert!(text.contains("  # Alice's key (keep this comment).\n  - name: alice-key\n"));
    assert!(text.ends_with("# End of file (keep this comment).\n"));
}

/// A rotated client secret keeps working at the real token endpoint until the overlap ends.
#[test]
fn rotated_client_secret_works_at_the_token_endpoint_during_the_overlap() {
    let _g = shared();
    let fx = Fx::new().with_tokens(false);
    let v = fx.cli(&["rotate", "reporting", "--overlap", "30m", "-o", "json"]).ok("rotate client").json();
    let secret = v["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("pcs_test_"));
    let until = chrono::DateTime::parse_from_rfc3339(v["previous_secret_until"].as_str().expect("until")).expect("time").timestamp();
    let snap = fx.load(now());
    let token = |s: &str, at: i64| {
        let body = format!("grant_type=client_credentials&client_id=reporting&client_secret={s}");
        let mut h = http::HeaderMap::new();
        h.insert("content-type", http::HeaderValue::from_static("application/x-www-form-urlencoded"));
        portcullis::token::endpoint::token(&snap, &h, body.as_bytes(), "127.0.0.1".parse().expect("ip"), at, "test").status
    };
    assert_eq!(token(&secret, now()), 200, "the new secret");
    assert_eq!(token(REPORTING_SECRET, now()), 200, "the old secret during the overlap");
    assert_eq!(token(REPORTING_SECRET, until), 401, "the old secret after the overlap");
    assert_eq!(token(&secret, until), 200);
    assert_eq!(token("pcs_test_nope", now()), 401);
}

// ---------------------------------------------------------------------------------
// list and show

#[test]
fn list_flags_expired_disabled_and_expiring_credentials() {
    let _g = shared();
    let fx = Fx::new();
    fx.cli(&["disable", "vault-reader"]).ok("disable");
    fx.cli(&["create", "api-key", "--name", "soon", "--permission", "audit:read", "--expires-in", "10d"]).ok("create");
    let out = fx.cli(&["list"]).ok("list");
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", out.stdout))
            .to_string()
    };
    assert!(out.stdout.starts_with("NAME "), "{}", out.stdout);
    assert!(line("reporting").contains("client") && line("reporting").contains("role:reporting") && line("reporting").ends_with("active"));
    assert!(line("alice-key").contains("user:alice") && line("alice-key").contains("any"));
    assert!(line("vault-reader").contains("DISABLED") && line("vault-reader").contains("192.0.2.0/24"));
    assert!(line("vault-reader").contains("balances:read@vault/v-1"));
    assert!(line("old-key").contains("EXPIRED"), "{}", line("old-key"));
    assert!(line("ghost-key").contains("USER MISSING"));
    assert!(line("soon").contains("expires in 1"), "{}", line("soon"));
    assert!(out.stdout.contains("6 credential(s): 1 expired, 1 disabled, 1 expiring within 30 days"), "{}", out.stdout);

    let v = fx.cli(&["list", "--output", "json"]).ok("list json").json();
    let rows = v.as_array().expect("array");
    assert_eq!(rows.len(), 6);
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap_or_else(|| panic!("{n}"));
    assert_eq!(row("old-key")["expired"], true);
    assert_eq!(row("vault-reader")["disabled"], true);
    assert_eq!(row("reporting")["kind"], "client");
    assert_eq!(row("alice-key")["kind"], "api_key");
    assert_eq!(row("alice-key")["user"], "alice");
    assert!(row("alice-key")["allowed_ips"].is_null());
    assert_eq!(row("soon")["state"][0].as_str().map(|s| s.starts_with("expires in")), Some(true));
    // Listing never prints a hash, let alone a secret.
    assert!(!out.stdout.contains("sha256:") && !v.to_string().contains("sha256:"));
}

#[test]
fn show_prints_one_credential() {
    let _g = shared();
    let fx = Fx::new();
    let out = fx.cli(&["show", "alice-key"]).ok("show");
    let row = |k: &str, v: &str| format!("{:<24}{v}\n", format!("{k}:"));
    assert!(out.stdout.contains(&row("kind", "api key")), "{}", out.stdout);
    assert!(out.stdout.contains(&row("effective permissions", "vault:change, key:change, balances:read")), "{}", out.stdout);
    assert!(out.stdout.contains(&row("user", "alice")), "{}", out.stdout);
    let v = fx.cli(&["show", "reporting", "-o", "json"]).ok("show json").json();
    assert_eq!(v["effective_permissions"], serde_json::json!(["transactions:read", "balances:read"]));
    assert_eq!(v["description"], "Reporting service");
    let out = fx.cli(&["show", "nobody"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no client or API key named \"nobody\""));
}

// ---------------------------------------------------------------------------------
// Layouts

/// A layout the text editor does not handle (flow style) is rewritten from its parsed
/// content, with a note that the comments were lost; the result still loads.
#[test]
fn flow_style_files_are_rewritten_with_a_note() {
    let _g = shared();
    let creds = format!(
        "# a comment\napi_keys: [{{name: a, key_hash: \"{}\", permissions: [\"audit:read\"], expires: 2099-01-01}}]\n",
        sha256_hash("k-a")
    );
    let fx = Fx::with("environment: sandbox\n", &creds);
    let out = fx.cli(&["create", "api-key", "--name", "b", "--permission", "audit:read", "-o", "json"]).ok("create");
    assert!(out.stderr.contains("comments were lost"), "{}", out.stderr);
    let snap = fx.load(now());
    assert!(portcullis::pipeline::authn::api_key(&snap, "k-a", now()).is_ok());
    let secret = out.json()["secret"].as_str().expect("secret").to_string();
    assert!(portcullis::pipeline::authn::api_key(&snap, &secret, now()).is_ok());
}

/// A new file, a missing section, a section written as `[]`, and items at column 0.
#[test]
fn sections_are_created_where_they_belong() {
    let _g = shared();
    let fx = Fx::with("environment: sandbox\n", "");
    fs::remove_file(fx.creds_path()).expect("rm");
    fx.cli(&["create", "api-key", "--name", "k1", "--permission", "audit:read"]).ok("create in a new file");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(fx.creds_path()).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a new credentials file is private");
    }
    fx.cli(&["create", "client", "--name", "c1", "--permission", "audit:read"]).ok("create a client");
    let text = fx.creds();
    assert!(text.starts_with("clients:\n  - id: c1\n"), "clients goes before api_keys:\n{text}");
    assert!(text.contains("\napi_keys:\n  - name: k1\n"), "{text}");
    fx.load(now());

    let creds = format!(
        "users:\n- name: alice\n  roles: [wallets]\napi_keys: []   # none yet\nclients:\n- id: c\n  secret_hash: \"{}\"\n  permissions: [\"audit:read\"]\n  expires: 2099-01-01\n",
        sha256_hash("c-secret")
    );
    let fx = Fx::with("environment: sandbox\n", &creds);
    fx.cli(&["create", "api-key", "--name", "k", "--user", "alice"]).ok("create into []");
    fx.cli(&["create", "client", "--name", "d", "--permission", "audit:read"]).ok("create at column 0");
    let text = fx.creds();
    assert!(text.contains("api_keys: # none yet\n  - name: k\n"), "{text}");
    assert!(text.contains("- id: c\n  secret_hash:"), "{text}");
    assert!(text.contains("  expires: 2099-01-01\n- id: d\n  secret_hash: \"$argon2id$"), "{text}");
    assert!(!fx.cli(&["list"]).stderr.contains("comments were lost"));
    fx.load(now());
}

// ---------------------------------------------------------------------------------
// explain

fn explain_fx() -> Fx {
    Fx::new().with_tokens(false)
}

#[test]
fn explain_allows_and_shows_each_step() {
    let _g = shared();
    let fx = explain_fx();
    let out = fx.explain(&["--credential", "vault-reader", "GET", "/v1/vaults/v-1/balances", "--from", "192.0.2.44"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for want in [
        "1. request:",
        "\"GET /v1/vaults/{vault_id}/balances\" matches; it requires balances:read; vault \"v-1\"",
        "3. credential: ok: api key \"vault-reader\", enabled",
        "4. allowlist:  ok: 192.0.2.44 is in 192.0.2.0/24",
        "5. permission: ok: needs balances:read",
        "balances:read@vault/v-1  match",
        "decision: ALLOWED",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?} in:\n{}", out.stdout);
    }
    // A user-linked key, with the user's permissions.
    let out = fx.explain(&["--credential", "alice-key", "POST", "/v1/vaults/v-9/keys"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("acts as user \"alice\""), "{}", out.stdout);
    assert!(out.stdout.contains("key:change     match"), "{}", out.stdout);
    // A client: through the real token endpoint.
    let out = fx.explain(&["--credential", "reporting", "GET", "/v1/transactions"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("gets tokens as client_id \"reporting\""), "{}", out.stdout);
    // A public route needs no permission.
    let out = fx.explain(&["--credential", "old-key", "GET", "/v1/status"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("is public"));
}

#[test]
fn explain_names_each_denial() {
    let _g = shared();
    let fx = explain_fx();
    fx.cli(&["disable", "alice-key"]).ok("disable");
    fx.cli(&["create", "client", "--name", "off", "--permission", "transactions:read"]).ok("create client");
    fx.cli(&["disable", "off"]).ok("disable client");
    let cases: &[(&[&str], &str, &[&str])] = &[
        (
            &["--credential", "vault-reader", "GET", "/v1/vaults/v-2/balances", "--from", "192.0.2.1"],
            "403 insufficient_scope",
            &["balances:read@vault/v-1  no: for vault \"v-1\", the route names vault \"v-2\"", "hint: grant vault-reader balances:read"],
        ),
        (
            &["--credential", "vault-reader", "GET", "/v1/transactions", "--from", "192.0.2.1"],
            "403 insufficient_scope",
            &["no: type balances, the route needs transactions"],
        ),
        (
            &["--credential", "vault-reader", "GET", "/v1/vaults/v-1/balances", "--from", "203.0.113.9"],
            "403 ip_not_allowed",
            &["DENIED: 203.0.113.9 is not in its allowed_ips [192.0.2.0/24]"],
        ),
        (
            &["--credential", "vault-reader", "DELETE", "/v1/everything", "--from", "192.0.2.1"],
            "403 route_not_allowed",
            &["NONE: no route matches DELETE /v1/everything"],
        ),
        (
            &["--credential", "vault-reader", "GET", "/v1/vaults/%2e%2e/balances"],
            "400 invalid_request",
            &["REFUSED"],
        ),
        (&["--credential", "alice-key", "GET", "/v1/vaults/v-1/balances"], "401 invalid_api_key: the API key is disabled", &["DISABLED", "enable alice-key"]),
        (&["--credential", "old-key", "GET", "/v1/transactions"], "401 invalid_api_key: the API key has expired", &["EXPIRED (2020-01-01)"]),
        (&["--credential", "ghost-key", "GET", "/v1/transactions"], "401 invalid_api_key: the API key's user no longer exists", &["WHICH DOES NOT EXIST"]),
        (
            &["--credential", "vault-reader", "GET", "/v1/vaults/v-1/balances", "--from", "192.0.2.1", "--at", "2100-01-01T00:00:00Z"],
            "401 invalid_api_key: the API key has expired",
            &[],
        ),
        (
            &["--credential", "off", "GET", "/v1/transactions"],
            "DENIED at the token endpoint: 401 invalid_client: the client is disabled",
            &["a token issued before it was disabled keeps working until it expires", "would be ALLOWED"],
        ),
        (
            &["--credential", "reporting", "POST", "/v1/vaults/v-1/keys"],
            "403 insufficient_scope",
            &["a token with the client's full scope"],
        ),
    ];
    let mut failures = Vec::new();
    for (args, decision, more) in cases {
        let out = fx.explain(args);
        let ok = out.code == 1 && out.stdout.contains(decision) && more.iter().all(|m| out.stdout.contains(m));
        if !ok {
            failures.push(format!("{args:?}: exit {} (want 1), want {decision:?} and {more:?} in:\n{}{}", out.code, out.stdout, out.stderr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn explain_refuses_bad_input_with_status_2() {
    let _g = shared();
    let fx = explain_fx();
    for (args, want) in [
        (vec!["--credential", "nobody", "GET", "/v1/transactions"], "no client or API key named \"nobody\""),
        (vec!["--credential", "alice-key", "GET", "/v1/transactions", "--from", "nowhere"], "not an IP address"),
        (vec!["--credential", "alice-key", "GET", "/v1/transactions", "--at", "tomorrow"], "not an RFC 3339 time"),
        (vec!["--credential", "alice-key", "GE T", "/v1/transactions"], "not an HTTP method"),
    ] {
        let out = fx.explain(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    fs::write(fx.creds_path(), "api_keys: [").expect("break the file");
    let out = fx.explain(&["--credential", "alice-key", "GET", "/v1/transactions"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("the config is not valid"), "{}", out.stderr);
}

#[test]
fn explain_in_shadow_mode_reports_the_policy_decision() {
    let _g = shared();
    let fx = Fx::with("environment: sandbox\nmode: shadow\n", &credentials_yaml());
    let out = fx.explain(&["--credential", "vault-reader", "GET", "/v1/vaults/v-2/balances"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("DENIED by the policy: 403 insufficient_scope"), "{}", out.stdout);
    assert!(out.stdout.contains("shadow mode: the request is forwarded anyway"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------
// End to end: the CLI while the sidecar runs.

fn wait_log(p: &Proxy, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !p.stdout().contains(needle) {
        assert!(Instant::now() < deadline, "the log did not show {needle:?}\n{}", p.stdout());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status(p: &Proxy, key: &str) -> u16 {
    try_send_raw(None, p.addr, &request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", key)])).map_or(0, |r| r.status)
}

/// Polls until `key` gets `want`; asserts that happened within 1 second of `since`.
fn assert_within_a_second(p: &Proxy, key: &str, want: u16, since: Instant, what: &str) {
    loop {
        let got = status(p, key);
        if got == want {
            eprintln!("{what}: in force {:?} after the CLI exited", since.elapsed());
            return;
        }
        assert!(since.elapsed() <= Duration::from_secs(1), "{what}: still {got}, not {want}, 1s after the CLI exited\n{}", p.stdout());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_key_created_with_the_cli_works_on_the_running_sidecar_within_a_second() {
    let _g = exclusive();
    let upstream = Upstream::start();
    let p = Proxy::start(upstream.addr, ROUTES, &credentials_yaml());
    wait_log(&p, "watching the config for changes", Duration::from_secs(10));
    let cfg = p.config_path();
    let cfg = cfg.to_str().expect("path");
    let cli = |args: &[&str]| {
        let mut all = vec!["credentials", "--config", cfg];
        all.extend_from_slice(args);
        run(&all, p.dir.path())
    };

    let out = cli(&["create", "api-key", "--name", "live", "--permission", "balances:read@vault/v-1", "--allow-ip", "127.0.0.1", "-o", "json"]).ok("create");
    let created = Instant::now();
    let key = out.json()["secret"].as_str().expect("secret").to_string();
    assert_within_a_second(&p, &key, 200, created, "create");
    // The curl line printed by create is for this very sidecar.
    let curl = out.json()["curl"].as_str().expect("curl").to_string();
    assert!(curl.contains(&format!("http://{}/v1/vaults/v-1/balances", p.addr)), "{curl}");

    cli(&["disable", "live"]).ok("disable");
    assert_within_a_second(&p, &key, 401, Instant::now(), "disable");
    cli(&["enable", "live"]).ok("enable");
    assert_within_a_second(&p, &key, 200, Instant::now(), "enable");

    let new_key = cli(&["rotate", "live", "--overlap", "1h", "-o", "json"]).ok("rotate").json()["secret"].as_str().expect("secret").to_string();
    assert_within_a_second(&p, &new_key, 200, Instant::now(), "rotate");
    assert_eq!(status(&p, &key), 200, "the old key works during the overlap");

    cli(&["delete", "live", "--yes"]).ok("delete");
    let deleted = Instant::now();
    assert_within_a_second(&p, &new_key, 401, deleted, "delete (new key)");
    assert_eq!(status(&p, &key), 401, "the old key is gone with its entry");
    assert!(!p.stdout().contains(&key) && !p.stdout().contains(&new_key), "secrets never reach the log");
}

/// One YAML parser everywhere: a file the sidecar loads (`disabled: yes`, a YAML 1.1
/// boolean) is read the same way by `credentials`, which sees the key as disabled.
#[test]
fn the_cli_reads_a_file_as_the_loader_does() {
    let _g = shared();
    let fx = Fx::with("environment: sandbox\n", &credentials_yaml().replace("    disabled: false  # flipped by the tests", "    disabled: yes"));
    let snap = fx.load(now());
    let e = portcullis::pipeline::authn::api_key(&snap, READER_KEY, now()).expect_err("the loader reads yes as true");
    assert!(e.description.contains("disabled"), "{e:?}");
    let out = fx.cli(&["show", "vault-reader", "-o", "json"]).ok("show");
    assert_eq!(out.json()["disabled"], true, "{}", out.stdout);
    let out = fx.cli(&["disable", "vault-reader"]).ok("disable");
    assert!(out.stdout.contains("already disabled"), "{}", out.stdout);
    fx.cli(&["enable", "vault-reader"]).ok("enable");
    portcullis::pipeline::authn::api_key(&fx.load(now()), READER_KEY, now()).expect("enabled");
}
