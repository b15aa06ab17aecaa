//! Integration tests of SPEC §5 (request handling) with API keys: the real
//! `portcullis` binary on an ephemeral port in front of the mock wallet upstream,
//! driven by a raw HTTP/1.1 client.
//!
//! Run: cargo test --test proxy_api_keys
//!
//! Each test starts its own sidecar (a fraction of a second), so tests are
//! independent and a crash in one cannot blame another. Keys are generated per
//! run; only their hashes are written into the temp config.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;

const ROUTES: &str = r#"routes:
  - match: "GET /v1/status"
    public: true
  - match: "GET /v1/vaults/{vault_id}/balances"
    require: "balances:read"
  - match: "GET /v1/transactions"
    require: "transactions:read"
  - match: "GET /v1/slow"
    require: "balances:read"
  - match: "GET /v1/vaults/{vault_id}/keys/{key_id}"
    require: "key:read"
  - match: "GET /v2/wallets/{wallet}/balances"
    require: "balances:read"
    vault_param: wallet
"#;

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// The API keys of the standard fixture (plain keys; the config holds hashes).
struct Keys {
    /// `k-basic`: `balances:read@vault/v-1`.
    basic: String,
    /// `k-alice`: linked to user alice (role `wallets`).
    alice: String,
    /// `k-wallets`: built-in role `wallets`.
    wallets: String,
    /// `k-reporting`: custom role `reporting` = `transactions:read`.
    reporting: String,
    /// `k-expired`: expired 2020-01-01.
    expired: String,
    /// `k-disabled`: `disabled: true`.
    disabled: String,
    /// `k-ip5`: allowed only from 127.0.0.5.
    ip5: String,
    /// `k-xff`: allowed only from 203.0.113.9.
    xff: String,
    /// `k-cidr`: allowed only from 127.0.0.4/30.
    cidr: String,
    /// `k-keyscope`: `key:read@key/k-7`.
    keyscope: String,
    /// `k-vaultkeys`: `key:read@vault/v-1`.
    vaultkeys: String,
    /// `k-keychange`: `key:change@key` (every key, nothing org-level).
    keychange: String,
    /// `k-star`: `*:view@vault/v-3`.
    star: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            basic: new_key(),
            alice: new_key(),
            wallets: new_key(),
            reporting: new_key(),
            expired: new_key(),
            disabled: new_key(),
            ip5: new_key(),
            xff: new_key(),
            cidr: new_key(),
            keyscope: new_key(),
            vaultkeys: new_key(),
            keychange: new_key(),
            star: new_key(),
        }
    }

    fn credentials_yaml(&self) -> String {
        format!(
            r#"roles:
  reporting: ["transactions:read"]
users:
  - name: alice
    roles: [wallets]
api_keys:
  - name: k-basic
    key_hash: "{basic}"
    permissions: ["balances:read@vault/v-1"]
    expires: 2099-01-01
  - name: k-alice
    key_hash: "{alice}"
    user: alice
    expires: 2099-01-01
  - name: k-wallets
    key_hash: "{wallets}"
    roles: [wallets]
    expires: 2099-01-01
  - name: k-reporting
    key_hash: "{reporting}"
    roles: [reporting]
    expires: 2099-01-01
  - name: k-expired
    key_hash: "{expired}"
    permissions: ["balances:read"]
    expires: 2020-01-01
  - name: k-disabled
    key_hash: "{disabled}"
    permissions: ["balances:read"]
    expires: 2099-01-01
    disabled: true
  - name: k-ip5
    key_hash: "{ip5}"
    permissions: ["balances:read"]
    allowed_ips: ["127.0.0.5"]
    expires: 2099-01-01
  - name: k-xff
    key_hash: "{xff}"
    permissions: ["balances:read"]
    allowed_ips: ["203.0.113.9"]
    expires: 2099-01-01
  - name: k-cidr
    key_hash: "{cidr}"
    permissions: ["balances:read"]
    allowed_ips: ["127.0.0.4/30"]
    expires: 2099-01-01
  - name: k-keyscope
    key_hash: "{keyscope}"
    permissions: ["key:read@key/k-7"]
    expires: 2099-01-01
  - name: k-vaultkeys
    key_hash: "{vaultkeys}"
    permissions: ["key:read@vault/v-1"]
    expires: 2099-01-01
  - name: k-keychange
    key_hash: "{keychange}"
    permissions: ["key:change@key"]
    expires: 2099-01-01
  - name: k-star
    key_hash: "{star}"
    permissions: ["*:view@vault/v-3"]
    expires: 2099-01-01
"#,
            basic = sha256_hash(&self.basic),
            alice = sha256_hash(&self.alice),
            wallets = sha256_hash(&self.wallets),
            reporting = sha256_hash(&self.reporting),
            expired = sha256_hash(&self.expired),
            disabled = sha256_hash(&self.disabled),
            ip5 = sha256_hash(&self.ip5),
            xff = sha256_hash(&self.xff),
            cidr = sha256_hash(&self.cidr),
            keyscope = sha256_hash(&self.keyscope),
            vaultkeys = sha256_hash(&self.vaultkeys),
            keychange = sha256_hash(&self.keychange),
            star = sha256_hash(&self.star),
        )
    }
}

/// One sidecar with the standard routes and keys, its upstream, and the keys.
struct Fx {
    up: Upstream,
    px: Proxy,
    k: Keys,
}

impl Fx {
    /// The standard fixture: 127.0.0.1 is a trusted proxy, upstream timeout 10 s.
    fn start() -> Fx {
        Fx::start_with(None, "upstream_timeout: 10\n")
    }

    /// `upstream` overrides the mock's address (e.g. a port nothing listens on);
    /// `settings` are extra main-config lines (before `trusted_proxies`/`routes`).
    fn start_with(upstream: Option<SocketAddr>, settings: &str) -> Fx {
        let up = Upstream::start();
        let k = Keys::new();
        let main = format!("{settings}trusted_proxies: [\"127.0.0.1/32\"]\n{ROUTES}");
        let px = Proxy::start(upstream.unwrap_or(up.addr), &main, &k.credentials_yaml());
        Fx { up, px, k }
    }

    /// Sends `method target` with `headers` (plus a fresh `x-test-marker`) from
    /// `from` (127.0.0.1 if `None`); returns the response and how many requests
    /// carrying the marker reached the upstream.
    fn call_from(&self, from: Option<IpAddr>, method: &str, target: &str, headers: &[(&str, &str)]) -> (Response, usize) {
        let marker = new_marker();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("x-test-marker", &marker));
        let raw = request(method, target, &all);
        let resp = match from {
            Some(from) => self.px.send_from(from, &raw),
            None => self.px.send(&raw),
        };
        (resp, self.up.with_marker(&marker).len())
    }

    fn call(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> (Response, usize) {
        self.call_from(None, method, target, headers)
    }

    /// `GET target` with `x-api-key: key`, expected to be forwarded; the echo.
    fn get_ok(&self, target: &str, key: &str) -> Echo {
        let (resp, n) = self.call("GET", target, &[("x-api-key", key)]);
        assert_eq!(resp.status, 200, "GET {target}: expected 200, body {}", resp.body_text());
        assert_eq!(n, 1, "GET {target}: upstream should have seen it once");
        Echo::from(&resp)
    }

    /// Sends and asserts a denial: status, code, JSON body, and nothing forwarded.
    fn denied(&self, method: &str, target: &str, headers: &[(&str, &str)], status: u16, code: &str) -> Response {
        let (resp, n) = self.call(method, target, headers);
        assert_error(&resp, status, Some(code));
        assert_eq!(n, 0, "{method} {target} was denied with {status} but reached the upstream");
        resp
    }
}

/// The `X-Forwarded-For` the upstream saw, all values joined, entries trimmed.
fn xff_entries(echo: &Echo) -> Vec<String> {
    echo.values("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn www_authenticate(resp: &Response) -> String {
    resp.header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate on {}: {:?}", resp.status, resp.headers))
        .to_string()
}

fn assert_bearer_challenge(resp: &Response) -> String {
    let challenge = www_authenticate(resp);
    assert!(
        challenge.starts_with(r#"Bearer realm="portcullis""#),
        "WWW-Authenticate should start with Bearer realm=\"portcullis\": {challenge:?}"
    );
    challenge
}

// ---------------------------------------------------------------------------
// Forwarding

#[test]
fn forwards_allowed_request_with_identity_headers_and_strips_the_rest() {
    let fx = Fx::start();
    let (resp, n) = fx.call(
        "GET",
        "/v1/vaults/v-1/balances?currency=BTC&page=2",
        &[
            ("x-api-key", &fx.k.basic),
            ("X-Auth-Credential", "forged-admin"),
            ("X-Auth-Credential-Type", "client"),
            ("X-Auth-User", "mallory"),
            ("X-Auth-Client-Ip", "10.9.9.9"),
            ("X-Auth-Request-Id", "forged-id"),
            ("X-Auth-Foo", "1"),
            ("x_auth_foo", "2"),
            ("x.auth.foo", "3"),
            ("X_AUTH_BAR", "4"),
            // Naming our own identity headers in Connection must not make them vanish.
            ("Connection", "x-custom-hop, X-Auth-Credential, x-auth-request-id"),
            ("X-Custom-Hop", "hop-secret"),
            ("X-Keep-Me", "kept"),
        ],
    );
    assert_eq!(n, 1, "the allowed request should reach the upstream once");
    let echo = Echo::from(&resp);
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.target, "/v1/vaults/v-1/balances?currency=BTC&page=2", "target must be forwarded unchanged");

    assert_eq!(echo.one("x-auth-credential"), "k-basic");
    assert_eq!(echo.one("x-auth-credential-type"), "api_key");
    assert!(!echo.has("x-auth-user"), "a key with no user must not carry x-auth-user: {:?}", echo.headers);
    assert_eq!(echo.one("x-auth-client-ip"), "127.0.0.1");
    let rid = echo.one("x-auth-request-id").to_string();
    assert!(!rid.is_empty() && rid != "forged-id", "request id {rid:?}");
    assert_eq!(xff_entries(&echo), vec!["127.0.0.1"], "X-Forwarded-For gets the peer appended");

    // Credentials and caller-sent x-auth-* (in any spelling) are gone; only ours remain.
    assert!(!echo.has("x-api-key"), "x-api-key forwarded: {:?}", echo.headers);
    assert!(!echo.has("authorization"), "authorization forwarded: {:?}", echo.headers);
    let mut names: Vec<String> = echo.x_auth_names().iter().map(|n| n.to_ascii_lowercase()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["x-auth-client-ip", "x-auth-credential", "x-auth-credential-type", "x-auth-request-id"],
        "upstream x-auth-* headers (each once, none from the caller); all: {:?}",
        echo.headers
    );
    for (n, v) in &echo.headers {
        assert!(!v.contains(fx.k.basic.as_str()), "the key leaked upstream in {n}");
        assert!(!["mallory", "forged-admin", "10.9.9.9"].contains(&v.as_str()), "forged value forwarded in {n}: {v}");
    }
    // Hop-by-hop: a header named in Connection is not forwarded; others are.
    assert!(!echo.has("x-custom-hop"), "header named in Connection forwarded: {:?}", echo.headers);
    assert_eq!(echo.one("x-keep-me"), "kept", "ordinary headers must be forwarded");

    // Every request gets its own id.
    let echo2 = fx.get_ok("/v1/vaults/v-1/balances", &fx.k.basic);
    assert_ne!(echo2.one("x-auth-request-id"), rid, "request ids must differ per request");
}

#[test]
fn forwards_user_linked_key_with_the_users_roles() {
    // With pingora's work stealing on (the multi-threaded scheduler; off by default).
    let fx = Fx::start_with(None, "upstream_timeout: 10\nwork_stealing: true\n");
    // alice has role wallets: balances:read org-wide.
    let echo = fx.get_ok("/v1/vaults/v-9/balances", &fx.k.alice);
    assert_eq!(echo.one("x-auth-credential"), "k-alice");
    assert_eq!(echo.one("x-auth-credential-type"), "api_key");
    assert_eq!(echo.one("x-auth-user"), "alice");
    // ... and nothing the role does not give.
    let resp = fx.denied("GET", "/v1/transactions", &[("x-api-key", &fx.k.alice)], 403, "insufficient_scope");
    assert!(www_authenticate(&resp).contains(r#"error="insufficient_scope""#));
}

#[test]
fn public_route_is_forwarded_without_credential_and_without_caller_identity() {
    let fx = Fx::start();
    let (resp, n) = fx.call(
        "GET",
        "/v1/status",
        &[("X-Auth-User", "mallory"), ("x_auth_credential", "forged"), ("X-Auth-Credential-Type", "client")],
    );
    assert_eq!(n, 1);
    let echo = Echo::from(&resp);
    assert_eq!(echo.target, "/v1/status");
    let mut names: Vec<String> = echo.x_auth_names().iter().map(|n| n.to_ascii_lowercase()).collect();
    names.sort();
    assert_eq!(names, vec!["x-auth-client-ip", "x-auth-request-id"], "all headers: {:?}", echo.headers);
    assert_eq!(echo.one("x-auth-client-ip"), "127.0.0.1");
    assert!(!echo.one("x-auth-request-id").is_empty());
    assert_eq!(xff_entries(&echo), vec!["127.0.0.1"]);

    // A credential on a public route is not checked, but never forwarded either.
    let bogus = new_key();
    let (resp, n) = fx.call("GET", "/v1/status", &[("x-api-key", &bogus)]);
    assert_eq!(n, 1, "public route with an unknown key should still be forwarded: {}", resp.body_text());
    let echo = Echo::from(&resp);
    assert!(!echo.has("x-api-key"), "x-api-key forwarded on a public route: {:?}", echo.headers);
    assert!(!echo.has("x-auth-credential"));

    let (resp, n) = fx.call("GET", "/v1/status", &[("x-api-key", &fx.k.basic)]);
    assert_eq!(n, 1);
    let echo = Echo::from(&resp);
    assert!(!echo.has("x-api-key"), "x-api-key forwarded on a public route: {:?}", echo.headers);

    // Public means that method and path only.
    let resp = fx.denied("POST", "/v1/status", &[], 401, "missing_credential");
    assert_bearer_challenge(&resp);
}

// ---------------------------------------------------------------------------
// 401

#[test]
fn no_credential_is_401_missing_credential_with_challenge() {
    let fx = Fx::start();
    let resp = fx.denied("GET", "/v1/vaults/v-1/balances", &[], 401, "missing_credential");
    let challenge = assert_bearer_challenge(&resp);
    // RFC 6750 §3.1: no error code when the request carried no credential.
    assert!(!challenge.contains("error="), "missing credential challenge has an error code: {challenge:?}");
    // Authentication comes before routing: unknown paths do not reveal themselves.
    fx.denied("GET", "/v1/admin/secrets", &[], 401, "missing_credential");
}

#[test]
fn unknown_api_key_is_401_invalid_api_key() {
    let fx = Fx::start();
    let bogus = new_key();
    let resp = fx.denied("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &bogus)], 401, "invalid_api_key");
    assert_bearer_challenge(&resp);
    assert!(!resp.body_text().contains(&bogus), "the presented key is echoed in the error body");
    // An empty key is no key we know either.
    let (resp, n) = fx.call("GET", "/v1/vaults/v-1/balances", &[("x-api-key", "")]);
    assert_eq!(n, 0);
    assert_eq!(resp.status, 401, "empty x-api-key: {}", resp.body_text());
}

#[test]
fn expired_key_is_401_saying_expired() {
    let fx = Fx::start();
    let resp = fx.denied("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.expired)], 401, "invalid_api_key");
    assert_bearer_challenge(&resp);
    let desc = resp.json()["error_description"].as_str().unwrap_or_default().to_ascii_lowercase();
    assert!(desc.contains("expired"), "description should say expired: {desc:?}");
}

#[test]
fn disabled_key_is_401_saying_disabled() {
    let fx = Fx::start();
    let resp = fx.denied("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.disabled)], 401, "invalid_api_key");
    assert_bearer_challenge(&resp);
    let desc = resp.json()["error_description"].as_str().unwrap_or_default().to_ascii_lowercase();
    assert!(desc.contains("disabled"), "description should say disabled: {desc:?}");
}

#[test]
fn garbage_bearer_token_is_401_invalid_token() {
    let fx = Fx::start();
    let resp = fx.denied("GET", "/v1/vaults/v-1/balances", &[("Authorization", "Bearer garbage")], 401, "invalid_token");
    let challenge = assert_bearer_challenge(&resp);
    assert!(challenge.contains(r#"error="invalid_token""#), "challenge {challenge:?}");
}

#[test]
fn key_linked_to_a_missing_user_is_rejected_and_the_rest_still_serves() {
    let up = Upstream::start();
    let (ghost, good) = (new_key(), new_key());
    let creds = format!(
        r#"users:
  - name: alice
    roles: [wallets]
api_keys:
  - name: k-ghost
    key_hash: "{}"
    user: nobody
    expires: 2099-01-01
  - name: k-good
    key_hash: "{}"
    user: alice
    expires: 2099-01-01
"#,
        sha256_hash(&ghost),
        sha256_hash(&good)
    );
    // SPEC §1: such a key is rejected (fail closed) and `check` reports it; the
    // sidecar itself still starts.
    let px = Proxy::start(up.addr, ROUTES, &creds);
    let resp = px.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &ghost)]));
    assert_error(&resp, 401, None);
    assert_bearer_challenge(&resp);
    let resp = px.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &good)]));
    assert_eq!(Echo::from(&resp).one("x-auth-user"), "alice");
    assert_eq!(up.count(), 1, "only the good key's request may reach the upstream");

    let out = run_bin(&["check", "--config", px.config_path().to_str().expect("utf-8 path")], px.dir.path(), Duration::from_secs(30))
        .expect("check did not finish");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("k-ghost") && text.contains("nobody"), "check should report k-ghost's missing user: {text}");
}

// ---------------------------------------------------------------------------
// 403 ip_not_allowed, trusted proxies

#[test]
fn ip_allowlist_is_enforced_on_the_peer_address() {
    let fx = Fx::start();
    fx.denied("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.ip5)], 403, "ip_not_allowed");
    // The allowlist is checked before the route: the wrong address learns nothing.
    fx.denied("GET", "/v1/nowhere", &[("x-api-key", &fx.k.ip5)], 403, "ip_not_allowed");

    let (resp, n) = fx.call_from(Some(ip(127, 0, 0, 5)), "GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.ip5)]);
    assert_eq!(n, 1, "from 127.0.0.5 the key is allowed: {}", resp.body_text());
    let echo = Echo::from(&resp);
    assert_eq!(echo.one("x-auth-client-ip"), "127.0.0.5");
    assert_eq!(xff_entries(&echo), vec!["127.0.0.5"]);
    assert_eq!(echo.one("x-auth-credential"), "k-ip5");

    // CIDR entries: 127.0.0.4/30 holds .4 to .7.
    let (resp, n) = fx.call_from(Some(ip(127, 0, 0, 5)), "GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.cidr)]);
    assert_eq!(n, 1, "127.0.0.5 is inside 127.0.0.4/30: {}", resp.body_text());
    let (resp, n) = fx.call_from(Some(ip(127, 0, 0, 9)), "GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.cidr)]);
    assert_error(&resp, 403, Some("ip_not_allowed"));
    assert_eq!(n, 0);
    fx.denied("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.cidr)], 403, "ip_not_allowed");
}

#[test]
fn trusted_proxy_forwarded_for_uses_the_rightmost_untrusted_entry() {
    let fx = Fx::start();
    let key = fx.k.xff.as_str();

    // Peer 127.0.0.1 is trusted; the rightmost untrusted entry is 203.0.113.9.
    let (resp, n) = fx.call(
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", key), ("X-Forwarded-For", "203.0.113.9, 127.0.0.1")],
    );
    assert_eq!(n, 1, "client 203.0.113.9 should be allowed: {}", resp.body_text());
    let echo = Echo::from(&resp);
    assert_eq!(echo.one("x-auth-client-ip"), "203.0.113.9");
    let xff = xff_entries(&echo);
    assert_eq!(xff.first().map(String::as_str), Some("203.0.113.9"), "XFF upstream {xff:?}");
    assert_eq!(xff.last().map(String::as_str), Some("127.0.0.1"), "XFF upstream {xff:?}");
    assert_eq!(xff.len(), 3, "the peer is appended to the caller's list: {xff:?}");

    let echo = fx.get_ok_with_xff(key, "203.0.113.9");
    assert_eq!(echo.one("x-auth-client-ip"), "203.0.113.9");

    // Leftmost spoof: the rightmost untrusted entry is 198.51.100.1, not allowed.
    fx.denied(
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", key), ("X-Forwarded-For", "203.0.113.9, 198.51.100.1")],
        403,
        "ip_not_allowed",
    );
    // Same list split over two header lines.
    fx.denied(
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", key), ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "198.51.100.1")],
        403,
        "ip_not_allowed",
    );

    // From an untrusted peer (127.0.0.2) X-Forwarded-For is ignored.
    let (resp, n) = fx.call_from(
        Some(ip(127, 0, 0, 2)),
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", key), ("X-Forwarded-For", "203.0.113.9")],
    );
    assert_error(&resp, 403, Some("ip_not_allowed"));
    assert_eq!(n, 0);
    let (resp, _) = fx.call_from(
        Some(ip(127, 0, 0, 2)),
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", &fx.k.basic), ("X-Forwarded-For", "203.0.113.9")],
    );
    let echo = Echo::from(&resp);
    assert_eq!(echo.one("x-auth-client-ip"), "127.0.0.2", "untrusted peer's XFF must not set the client address");
    assert_eq!(xff_entries(&echo), vec!["203.0.113.9", "127.0.0.2"]);
}

impl Fx {
    fn get_ok_with_xff(&self, key: &str, xff: &str) -> Echo {
        let (resp, n) = self.call("GET", "/v1/vaults/v-1/balances", &[("x-api-key", key), ("X-Forwarded-For", xff)]);
        assert_eq!(n, 1, "XFF {xff:?}: {}", resp.body_text());
        Echo::from(&resp)
    }
}

// ---------------------------------------------------------------------------
// 403 route_not_allowed, insufficient_scope

#[test]
fn unmatched_path_or_method_is_403_route_not_allowed() {
    let fx = Fx::start();
    let key = [("x-api-key", fx.k.wallets.as_str())];
    fx.denied("GET", "/v1/admin", &key, 403, "route_not_allowed");
    fx.denied("GET", "/v1/vaults/v-1/balances/extra", &key, 403, "route_not_allowed");
    fx.denied("GET", "/v1/vaults/v-1", &key, 403, "route_not_allowed");
    fx.denied("DELETE", "/v1/vaults/v-1/balances", &key, 403, "route_not_allowed");
    fx.denied("POST", "/v1/vaults/v-1/balances", &key, 403, "route_not_allowed");
    fx.denied("POST", "/v1/status", &key, 403, "route_not_allowed");
    // Sanity: the same key on the route itself is allowed.
    fx.get_ok("/v1/vaults/v-1/balances", &fx.k.wallets);
}

#[test]
fn permissions_decide_scope_roles_and_vaults() {
    let fx = Fx::start();
    // Custom role from the credentials file: reporting = transactions:read.
    let echo = fx.get_ok("/v1/transactions", &fx.k.reporting);
    assert_eq!(echo.one("x-auth-credential"), "k-reporting");
    let resp = fx.denied("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.reporting)], 403, "insufficient_scope");
    let challenge = www_authenticate(&resp);
    assert!(challenge.contains(r#"error="insufficient_scope""#), "challenge {challenge:?}");

    // Built-in role wallets grants balances:read in every vault, not transactions.
    fx.get_ok("/v1/vaults/v-7/balances", &fx.k.wallets);
    fx.denied("GET", "/v1/transactions", &[("x-api-key", &fx.k.wallets)], 403, "insufficient_scope");

    // Vault-scoped grant balances:read@vault/v-1.
    fx.get_ok("/v1/vaults/v-1/balances", &fx.k.basic);
    fx.denied("GET", "/v1/vaults/v-2/balances", &[("x-api-key", &fx.k.basic)], 403, "insufficient_scope");
    fx.denied("GET", "/v1/vaults/v-10/balances", &[("x-api-key", &fx.k.basic)], 403, "insufficient_scope");
    // A vault grant does not reach org-level routes.
    fx.denied("GET", "/v1/transactions", &[("x-api-key", &fx.k.basic)], 403, "insufficient_scope");
    // Path parameters are compared after percent-decoding; encoded unreserved characters
    // are decoded before matching and forwarded decoded, so the upstream serves what matched.
    let echo = fx.get_ok("/v1/vaults/v%2D1/balances", &fx.k.basic);
    assert_eq!(echo.target, "/v1/vaults/v-1/balances", "the path must be forwarded exactly as matched");
    fx.get_ok("/v1/vaults/%76-1/balances", &fx.k.basic);
    fx.denied("GET", "/v1/vaults/v%2d2/balances", &[("x-api-key", &fx.k.basic)], 403, "insufficient_scope");
    // A renamed vault parameter (`vault_param: wallet`) names the vault too.
    fx.get_ok("/v2/wallets/v-1/balances", &fx.k.basic);
    fx.denied("GET", "/v2/wallets/v-2/balances", &[("x-api-key", &fx.k.basic)], 403, "insufficient_scope");
    // Header names are case-insensitive.
    let (resp, n) = fx.call("GET", "/v1/vaults/v-1/balances", &[("X-API-KEY", &fx.k.basic)]);
    assert_eq!((resp.status, n), (200, 1), "X-API-KEY spelling: {}", resp.body_text());
}

#[test]
fn key_and_vault_scopes_and_action_aliases() {
    let fx = Fx::start();
    let deny = |target: &str, key: &str| {
        fx.denied("GET", target, &[("x-api-key", key)], 403, "insufficient_scope");
    };
    // key:read@key/k-7: that key, in any vault; no other key; nothing else.
    fx.get_ok("/v1/vaults/v-1/keys/k-7", &fx.k.keyscope);
    fx.get_ok("/v1/vaults/v-2/keys/k-7", &fx.k.keyscope);
    deny("/v1/vaults/v-1/keys/k-8", &fx.k.keyscope);
    deny("/v1/vaults/v-1/keys/k-77", &fx.k.keyscope);
    deny("/v1/vaults/v-1/balances", &fx.k.keyscope);
    // key:read@vault/v-1: every key inside vault v-1, none elsewhere.
    fx.get_ok("/v1/vaults/v-1/keys/k-1", &fx.k.vaultkeys);
    deny("/v1/vaults/v-2/keys/k-1", &fx.k.vaultkeys);
    deny("/v1/vaults/v-1/balances", &fx.k.vaultkeys);
    // key:change@key: change covers read; key scope without resource = every key.
    fx.get_ok("/v1/vaults/v-5/keys/k-5", &fx.k.keychange);
    deny("/v1/vaults/v-5/balances", &fx.k.keychange);
    // *:view@vault/v-3: any type, view = read, vault v-3 only, nothing org-level.
    fx.get_ok("/v1/vaults/v-3/balances", &fx.k.star);
    fx.get_ok("/v1/vaults/v-3/keys/k-1", &fx.k.star);
    deny("/v1/vaults/v-1/balances", &fx.k.star);
    deny("/v1/transactions", &fx.k.star);
}

// ---------------------------------------------------------------------------
// 400 invalid_request

#[test]
fn malformed_targets_are_400_and_never_forwarded() {
    let fx = Fx::start();
    // k-wallets may read balances of any vault, so each of these would be forwarded
    // if the sanity check let it through to route matching.
    let key = fx.k.wallets.as_str();
    let targets = [
        "/v1/./x",
        "/v1/../x",
        "/v1/%2e%2e/x",
        "/v1/%2E/x",
        "//v1/x",
        "/v1//x",
        "/v1/a%2fb",
        "/v1/a%5cb",
        "/v1/a%00b",
        "/v1/a%zzb",
        "/v1/a%4",
        "/v1/vaults/./balances",
        "/v1/vaults/../balances",
        "/v1/vaults/v-1/../v-2/balances",
        "/v1/vaults/%2e/balances",
        "/v1/vaults/%2E%2e/balances",
        "/v1/vaults/.%2e/balances",
        "/v1/vaults/v-1/./balances",
        "/v1/vaults/v-1/balances/.",
        "/v1/vaults/v-1/balances/..",
        "//v1/vaults/v-1/balances",
        "/v1//vaults/v-1/balances",
        "/v1/vaults//balances",
        "/v1/vaults/v-1%2fbalances",
        "/v1/vaults/v-1%2Fx/balances",
        "/v1/vaults/v-1%5Cx/balances",
        "/v1/vaults/v-1%00/balances",
        "/v1/vaults/v%zz1/balances",
        "/v1/vaults/v%4/balances",
        "/v1/vaults/v-1/balances%",
        "*",
    ];
    // (method, target, Host): non-origin forms. The absolute-form ones carry a
    // Host that agrees with their authority, so they reach the sidecar's own
    // check (pingora itself answers a bare 400 when the two disagree, see below).
    let mut cases: Vec<(&str, &str, &str)> = targets.iter().map(|t| ("GET", *t, "localhost")).collect();
    cases.extend([
        ("GET", "http://evil.example/v1/vaults/v-1/balances", "evil.example"),
        ("GET", "http://evil.example/v1/status", "evil.example"),
        ("GET", "http://localhost/v1/vaults/v-1/balances", "localhost"),
        ("OPTIONS", "*", "localhost"),
    ]);
    let mut failures = Vec::new();
    for (method, target, host) in cases {
        {
            let marker = new_marker();
            let raw = request(method, target, &[("Host", host), ("x-api-key", key), ("x-test-marker", &marker)]);
            match fx.px.try_send(&raw) {
                Ok(resp) => {
                    if let Err(e) = check_error(&resp, 400, "invalid_request") {
                        failures.push(format!("{method} {target}: {e}"));
                    }
                }
                Err(e) => failures.push(format!("{method} {target}: no response: {e}")),
            }
            let n = fx.up.with_marker(&marker).len();
            if n != 0 {
                failures.push(format!("{method} {target}: reached the upstream {n} time(s)"));
            }
        }
    }
    assert!(failures.is_empty(), "{} malformed target case(s) failed:\n{}", failures.len(), failures.join("\n"));

    // Absolute-form whose authority disagrees with Host: pingora's HTTP/1 parser
    // rejects it (RFC 9112 §3.2.2) with its own empty 400 before any ProxyHttp
    // phase runs, so the sidecar cannot shape that body. What must hold is that
    // it is refused and never forwarded.
    let marker = new_marker();
    let raw = request(
        "GET",
        "http://evil.example/v1/vaults/v-1/balances",
        &[("x-api-key", key), ("x-test-marker", &marker)],
    );
    let resp = fx.px.send(&raw);
    assert_eq!(resp.status, 400, "absolute-form with a conflicting Host: {}", resp.body_text());
    assert!(fx.up.with_marker(&marker).is_empty(), "absolute-form with a conflicting Host was forwarded");
    // The sidecar is still serving.
    fx.get_ok("/v1/vaults/v-1/balances", key);
}

#[test]
fn target_with_a_fragment_is_400_not_rewritten() {
    // RFC 9112 §3.2.1: origin-form is absolute-path ["?" query]; a request-target
    // has no fragment. Dropping it silently would forward a path other than the
    // one received (SPEC §5 step 2: never rewritten, non-origin-form rejected).
    let fx = Fx::start();
    let key = fx.k.wallets.as_str();
    for target in ["/v1/vaults/v-1/balances#frag", "/v1/vaults/v-1/balances?a=1#frag", "/v1/status#"] {
        let (resp, n) = fx.call("GET", target, &[("x-api-key", key)]);
        let got = if n == 1 { format!(" (forwarded as {:?})", Echo::from(&resp).target) } else { String::new() };
        if let Err(e) = check_error(&resp, 400, "invalid_request") {
            panic!("GET {target}: {e}{got}");
        }
        assert_eq!(n, 0, "GET {target} reached the upstream");
    }
}

#[test]
fn ambiguous_credentials_and_method_overrides_are_400() {
    let fx = Fx::start();
    let key = fx.k.wallets.as_str();
    let other = fx.k.basic.as_str();
    let target = "/v1/vaults/v-1/balances";
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("two x-api-key, same value", vec![("x-api-key", key), ("x-api-key", key)]),
        ("two x-api-key, different case", vec![("x-api-key", key), ("X-API-Key", other)]),
        ("two Authorization", vec![("Authorization", "Bearer a.b.c"), ("Authorization", "Bearer d.e.f")]),
        ("x-api-key and Authorization", vec![("x-api-key", key), ("Authorization", "Bearer a.b.c")]),
        ("Authorization and x-api-key", vec![("Authorization", "Bearer a.b.c"), ("x-api-key", key)]),
        ("X-HTTP-Method-Override", vec![("x-api-key", key), ("X-HTTP-Method-Override", "DELETE")]),
        ("X-HTTP-Method", vec![("x-api-key", key), ("X-HTTP-Method", "DELETE")]),
        ("X-Method-Override", vec![("x-api-key", key), ("X-Method-Override", "DELETE")]),
        ("x-http-method-override lower-case", vec![("x-api-key", key), ("x-http-method-override", "GET")]),
    ];
    let mut failures = Vec::new();
    for (name, headers) in &cases {
        let (resp, n) = fx.call("GET", target, headers);
        if let Err(e) = check_error(&resp, 400, "invalid_request") {
            failures.push(format!("{name}: {e}"));
        }
        if n != 0 {
            failures.push(format!("{name}: reached the upstream"));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    // The same request with one key and no override is fine.
    fx.get_ok(target, key);
}

// ---------------------------------------------------------------------------
// 502, 504

#[test]
fn unreachable_upstream_is_502() {
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let fx = Fx::start_with(Some(dead), "upstream_timeout: 10\n");
    let (resp, _) = fx.call("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &fx.k.basic)]);
    assert_error(&resp, 502, None);
    // Public routes go the same way.
    let (resp, _) = fx.call("GET", "/v1/status", &[]);
    assert_error(&resp, 502, None);
}

#[test]
fn slow_upstream_is_504_after_upstream_timeout() {
    let fx = Fx::start_with(None, "upstream_timeout: 0.5\n");
    let started = Instant::now();
    let (resp, n) = fx.call("GET", "/v1/slow?slow_ms=3000", &[("x-api-key", &fx.k.wallets)]);
    let took = started.elapsed();
    assert_error(&resp, 504, None);
    assert_eq!(n, 1, "the request did reach the (slow) upstream");
    assert!(took < Duration::from_millis(2500), "504 came after {took:?}, not after the 0.5 s timeout");
    // A fast request on the same sidecar is fine.
    fx.get_ok("/v1/slow?slow_ms=10", &fx.k.wallets);
}

// ---------------------------------------------------------------------------
// Audit log

#[test]
fn audit_log_records_decisions_and_never_the_key() {
    let fx = Fx::start();
    let echo = fx.get_ok("/v1/vaults/v-1/balances", &fx.k.basic);
    let allowed_id = echo.one("x-auth-request-id").to_string();
    let bogus = new_key();
    let (resp, _) = fx.call("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &bogus)]);
    let denied_id = assert_error(&resp, 401, Some("invalid_api_key"))["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let deadline = Instant::now() + Duration::from_secs(3);
    let audit = loop {
        let out = fx.px.stdout();
        if (out.contains(&allowed_id) && out.contains(&denied_id)) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let line_of = |id: &str| -> serde_json::Value {
        let line = audit
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no audit line with request id {id}; stdout:\n{audit}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"))
    };
    let allowed = line_of(&allowed_id).to_string();
    assert!(allowed.contains("k-basic"), "audit line should name the credential: {allowed}");
    let denied = line_of(&denied_id).to_string();
    assert!(denied.contains("invalid_api_key"), "audit line should carry the reason code: {denied}");

    let logs = format!("{audit}{}", fx.px.stderr());
    for secret in [&fx.k.basic, &bogus] {
        assert!(!logs.contains(secret.as_str()), "an API key appears in the logs");
    }
}

// ---------------------------------------------------------------------------
// Config errors and `check`

fn good_main(upstream: SocketAddr) -> String {
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    format!("{}{ROUTES}", main_head(listen, admin, upstream))
}

fn one_key_creds(extra: &str) -> String {
    format!(
        "api_keys:\n  - name: k-one\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    expires: 2099-01-01\n{extra}",
        sha256_hash(&new_key())
    )
}

/// Runs `serve` on a bad config and expects it to exit non-zero quickly; returns
/// stdout+stderr.
fn serve_must_fail(main: &str, creds: &str) -> String {
    let dir = write_config(main, creds);
    let cfg = dir.path().join("portcullis.yaml");
    let out = run_bin(&["serve", "--config", cfg.to_str().expect("utf-8 path")], dir.path(), Duration::from_secs(15))
        .unwrap_or_else(|| panic!("serve kept running on a bad config:\n{main}\n---\n{creds}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "serve exited 0 on a bad config; output:\n{text}");
    text
}

fn check(main: &str, creds: &str) -> (bool, String) {
    let dir = write_config(main, creds);
    let cfg = dir.path().join("portcullis.yaml");
    let out = run_bin(&["check", "--config", cfg.to_str().expect("utf-8 path")], dir.path(), Duration::from_secs(30))
        .expect("check did not finish");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn refuses_to_start_on_unknown_fields() {
    let up: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let text = serve_must_fail(&format!("{}listne_typo: true\n", good_main(up)), &one_key_creds(""));
    assert!(text.contains("portcullis.yaml"), "error should name the main file: {text}");
    assert!(text.contains("listne_typo"), "error should name the unknown field: {text}");

    let text = serve_must_fail(&good_main(up), &one_key_creds("    permisions: [\"x:read\"]\n"));
    assert!(text.contains("credentials.yaml"), "error should name the credentials file: {text}");
    assert!(text.contains("permisions"), "error should name the unknown field: {text}");
}

#[test]
fn refuses_to_start_on_duplicate_key_name_or_hash() {
    let up: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dup_name = format!(
        "api_keys:\n  - name: k-twice\n    key_hash: \"{}\"\n    expires: 2099-01-01\n  - name: k-twice\n    key_hash: \"{}\"\n    expires: 2099-01-01\n",
        sha256_hash(&new_key()),
        sha256_hash(&new_key())
    );
    let text = serve_must_fail(&good_main(up), &dup_name);
    assert!(text.contains("credentials.yaml"), "error should name the credentials file: {text}");
    assert!(text.contains("k-twice"), "error should name the duplicate: {text}");

    let hash = sha256_hash(&new_key());
    let dup_hash = format!(
        "api_keys:\n  - name: k-a\n    key_hash: \"{hash}\"\n    expires: 2099-01-01\n  - name: k-b\n    key_hash: \"{hash}\"\n    expires: 2099-01-01\n"
    );
    let text = serve_must_fail(&good_main(up), &dup_hash);
    assert!(text.contains("credentials.yaml"), "error should name the credentials file: {text}");
}

#[test]
fn check_accepts_good_config_rejects_bad_and_warns_about_allow_all() {
    let up: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (ok, text) = check(&good_main(up), &one_key_creds(""));
    assert!(ok, "check failed on a good config:\n{text}");

    let (ok, text) = check(&format!("{}bogus_field: 1\n", good_main(up)), &one_key_creds(""));
    assert!(!ok, "check passed a config with an unknown field:\n{text}");
    assert!(text.contains("portcullis.yaml"), "check error should name the file: {text}");

    let (ok, text) = check(&good_main(up), "api_keys:\n  - name: k-nohash\n    expires: 2099-01-01\n");
    assert!(!ok, "check passed a key without key_hash:\n{text}");

    // Allow-all in sandbox: valid, but warned about, naming the credential.
    let creds = format!(
        "api_keys:\n  - name: k-open\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    allowed_ips: [\"0.0.0.0/0\"]\n    expires: 2099-01-01\n  - name: k-closed\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    allowed_ips: [\"127.0.0.1\"]\n    expires: 2099-01-01\n",
        sha256_hash(&new_key()),
        sha256_hash(&new_key())
    );
    let (ok, text) = check(&good_main(up), &creds);
    assert!(ok, "allow-all is a warning in sandbox, not an error:\n{text}");
    let warning_lines: Vec<&str> = text.lines().filter(|l| l.to_ascii_lowercase().contains("warn") || l.contains("0.0.0.0/0")).collect();
    assert!(
        warning_lines.iter().any(|l| l.contains("k-open")) || (text.to_ascii_lowercase().contains("warn") && text.contains("k-open") && text.contains("0.0.0.0/0")),
        "check should warn that k-open allows every address:\n{text}"
    );
    assert!(
        !warning_lines.iter().any(|l| l.contains("k-closed")),
        "check warned about k-closed, which does not allow every address:\n{text}"
    );
}

// ---------------------------------------------------------------------------
// Expiry boundaries (SPEC §1)

#[test]
fn bare_date_is_valid_through_that_day_and_timestamps_are_exact() {
    let now = chrono::Utc::now();
    let today = now.date_naive();
    let yesterday = today.pred_opt().expect("a day before today");
    let ts_past = (now - chrono::Duration::seconds(120)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ts_future = (now + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let keys: Vec<(&str, String, String)> = vec![
        ("k-today", today.to_string(), new_key()),
        ("k-yesterday", yesterday.to_string(), new_key()),
        ("k-ts-past", format!("\"{ts_past}\""), new_key()),
        ("k-ts-future", format!("\"{ts_future}\""), new_key()),
    ];
    let mut creds = String::from("api_keys:\n");
    for (name, expires, key) in &keys {
        creds.push_str(&format!(
            "  - name: {name}\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    expires: {expires}\n",
            sha256_hash(key)
        ));
    }
    let up = Upstream::start();
    let px = Proxy::start(up.addr, ROUTES, &creds);
    let get = |key: &str| px.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", key)]));

    // Skip the (1 in 17280) run that straddles midnight UTC: "today" would be stale.
    let still_today = chrono::Utc::now().date_naive() == today;
    if still_today {
        let resp = get(&keys[0].2);
        assert_eq!(resp.status, 200, "a key expiring today ({today}) is valid until the end of the day: {}", resp.body_text());
    }
    for i in [1, 2] {
        let resp = get(&keys[i].2);
        let body = assert_error(&resp, 401, Some("invalid_api_key"));
        let desc = body["error_description"].as_str().unwrap_or_default().to_ascii_lowercase();
        assert!(desc.contains("expired"), "{}: description should say expired: {desc:?}", keys[i].0);
    }
    let resp = get(&keys[3].2);
    assert_eq!(resp.status, 200, "a key expiring in an hour is valid: {}", resp.body_text());
    assert_eq!(up.count(), if still_today { 2 } else { 1 });
}
