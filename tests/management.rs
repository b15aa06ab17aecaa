//! The management API (SPEC §9) against the real binary: a real management listener, the
//! real credentials file, the proxy enforcing what the API wrote.
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ROUTES: &str = "routes:
  - match: \"GET /v1/vaults/{vault_id}/balances\"
    require: \"balances:read\"
  - match: \"GET /v1/transactions\"
    require: \"transactions:read\"
  - match: \"POST /v1/vaults/{vault_id}/keys\"
    require: \"key:create\"
";

/// Keys of the fixture: generated per run, only their hashes in the file.
struct Keys {
    admin: String,
    approver: String,
    reader: String,
    bob: String,
    plain: String,
}

fn credentials(k: &Keys) -> String {
    format!(
        "users:
  - name: bob
    roles: [transactions]
api_keys:
  - name: admin-key
    key_hash: \"{}\"
    roles: [wallets, transactions]
    permissions: [\"api_access:change\", \"api_access:read\"]
    expires: 2099-12-31
  - name: approver-key
    key_hash: \"{}\"
    roles: [wallets, transactions]
    permissions: [\"api_access:*\"]
    expires: 2099-12-31
  - name: reader-key
    key_hash: \"{}\"
    permissions: [\"api_access:read\"]
    expires: 2099-12-31
  - name: bob-key
    key_hash: \"{}\"
    user: bob
    expires: 2099-12-31
  - name: plain-key
    key_hash: \"{}\"
    permissions: [\"balances:read\"]
    expires: 2099-12-31
  - name: stale-key
    key_hash: \"{}\"
    permissions: [\"balances:read\"]
    expires: 2020-01-01
",
        sha256_hash(&k.admin),
        sha256_hash(&k.approver),
        sha256_hash(&k.reader),
        sha256_hash(&k.bob),
        sha256_hash(&k.plain),
        sha256_hash(&new_key()),
    )
}

struct Fx {
    proxy: Proxy,
    mgmt: SocketAddr,
    keys: Keys,
    _upstream: Upstream,
}

fn start(approval: bool) -> Fx {
    let upstream = Upstream::start();
    let keys = Keys { admin: new_key(), approver: new_key(), reader: new_key(), bob: new_key(), plain: new_key() };
    let mgmt: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let extra = format!(
        "{ROUTES}management:\n  listen: \"{mgmt}\"\n  default_expiry: 30d\n  approval:\n    required: {approval}\n    expires_after: 1h\n"
    );
    let proxy = Proxy::start(upstream.addr, &extra, &credentials(&keys));
    wait_listening(mgmt);
    Fx { proxy, mgmt, keys, _upstream: upstream }
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "the management listener did not come up on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One API call: `auth` is a header (name, value); `body` JSON.
fn call(addr: SocketAddr, method: &str, path: &str, auth: &[(&str, &str)], body: Option<Value>) -> Response {
    send_json(addr, method, path, auth, body.as_ref())
}

impl Fx {
    fn api(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> Response {
        call(self.mgmt, method, path, &[("x-api-key", key)], body)
    }

    fn names(&self, key: &str) -> Vec<String> {
        let r = self.api(key, "GET", "/api/v1/credentials", None);
        assert_eq!(r.status, 200, "{}", r.body_text());
        r.json()["credentials"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    }

    /// The proxy's status for a GET with an API key.
    fn proxy_status(&self, key: &str, path: &str) -> u16 {
        self.proxy.send(&request("GET", path, &[("x-api-key", key)])).status
    }

    fn audit(&self) -> Vec<Value> {
        self.proxy
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == "management")
            .collect()
    }
}

fn create_key(fx: &Fx, actor: &str, body: Value) -> Response {
    fx.api(actor, "POST", "/api/v1/credentials", Some(body))
}

#[test]
fn allows_read_change_and_own_keys_by_permission_and_denies_the_rest() {
    let fx = start(false);
    let k = &fx.keys;
    // Read: every credential, never a secret or a hash.
    let names = fx.names(&k.reader);
    assert_eq!(names.len(), 6, "{names:?}");
    let listed = fx.api(&k.reader, "GET", "/api/v1/credentials", None).body_text();
    assert!(!listed.contains("sha256:") && !listed.contains("key_hash"), "{listed}");
    let stale = fx.api(&k.reader, "GET", "/api/v1/credentials/stale-key", None);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.json()["credential"]["expired"], true);
    assert!(stale.header("etag").is_some(), "every credential answer carries an ETag");
    // Read is not change.
    let r = create_key(&fx, &k.reader, json!({"kind": "api_key", "name": "x1"}));
    assert_error(&r, 403, Some("forbidden"));
    // No api_access and no user: nothing.
    assert_error(&fx.api(&k.plain, "GET", "/api/v1/credentials", None), 403, Some("forbidden"));
    // No credential at all: 401.
    let r = call(fx.mgmt, "GET", "/api/v1/credentials", &[], None);
    assert_error(&r, 401, Some("missing_credential"));
    assert_error(&fx.api("not-a-key", "GET", "/api/v1/credentials", None), 401, Some("invalid_api_key"));

    // Own keys: bob sees only his, creates one for himself, not for others, not clients.
    assert_eq!(fx.names(&k.bob), ["bob-key"]);
    assert_error(&create_key(&fx, &k.bob, json!({"kind": "client", "name": "bob-client"})), 403, Some("forbidden"));
    assert_error(&create_key(&fx, &k.bob, json!({"kind": "api_key", "name": "for-alice", "user": "alice"})), 403, Some("forbidden"));
    let own = create_key(&fx, &k.bob, json!({"kind": "api_key", "name": "bob-second"}));
    assert_eq!(own.status, 201, "{}", own.body_text());
    let own = own.json();
    assert_eq!(own["credential"]["user"], "bob", "an own key's user is the actor's");
    let bob_secret = own["secret"].as_str().unwrap().to_string();
    // It acts with bob's permissions (transactions), on the proxy at once.
    assert_eq!(fx.proxy_status(&bob_secret, "/v1/transactions"), 200);
    assert_eq!(fx.proxy_status(&bob_secret, "/v1/vaults/v-1/balances"), 403);
    // Escalation refused: bob cannot give wallets.
    let r = create_key(&fx, &k.bob, json!({"kind": "api_key", "name": "bob-third", "roles": ["wallets"]}));
    assert_error(&r, 403, Some("forbidden"));
    // Not another's key.
    assert_error(&fx.api(&k.bob, "POST", "/api/v1/credentials/plain-key/disable", None), 403, Some("forbidden"));
    assert_error(&fx.api(&k.bob, "DELETE", "/api/v1/credentials/admin-key", None), 403, Some("forbidden"));
    let r = fx.api(&k.bob, "PATCH", "/api/v1/credentials/bob-second", Some(json!({"notes": "mine"})));
    assert_error(&r, 403, Some("forbidden"));
    let r = fx.api(&k.bob, "POST", "/api/v1/credentials/bob-second/disable", None);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(fx.proxy_status(&bob_secret, "/v1/transactions"), 401, "disabled at once");

    // Change: the admin gives what it holds, not more.
    let r = create_key(&fx, &k.admin, json!({"kind": "api_key", "name": "ops", "roles": ["controls"]}));
    assert_error(&r, 403, Some("forbidden"));
    assert!(r.body_text().contains("policies:change"), "names what is not held: {}", r.body_text());
    let r = create_key(&fx, &k.admin, json!({"kind": "api_key", "name": "ops", "roles": ["wallets"], "allowed_ips": ["127.0.0.1"], "notes": "n"}));
    assert_eq!(r.status, 201, "{}", r.body_text());
    let created = r.json();
    assert_eq!(created["credential"]["created_by"], "admin-key");
    let expires = created["credential"]["expires"].as_str().unwrap().to_string();
    assert_eq!(expires.len(), 10, "management.default_expiry (30d) as a date: {expires}");
    let etag = r.header("etag").unwrap().to_string();

    // Name and expiry are immutable; bad fields are named.
    let r = fx.api(&k.admin, "PATCH", "/api/v1/credentials/ops", Some(json!({"name": "ops2", "expires": "2030-01-01"})));
    let body = assert_error(&r, 422, Some("invalid_fields"));
    assert!(body["fields"]["name"].is_string() && body["fields"]["expires"].is_string(), "{body}");
    let r = create_key(&fx, &k.admin, json!({"kind": "api_key", "name": "-bad", "allowed_ips": ["10.0.0.1/8"], "description": "abc"}));
    let body = assert_error(&r, 422, Some("invalid_fields"));
    for f in ["name", "allowed_ips", "description"] {
        assert!(body["fields"][f].is_string(), "{f}: {body}");
    }
    // Edit with the current ETag; then the old one is stale (412).
    let r = call(fx.mgmt, "PATCH", "/api/v1/credentials/ops", &[("x-api-key", &k.admin), ("If-Match", &etag)], Some(json!({"notes": "edited", "roles": ["transactions"]})));
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["credential"]["notes"], "edited");
    let r = call(fx.mgmt, "PATCH", "/api/v1/credentials/ops", &[("x-api-key", &k.admin), ("If-Match", &etag)], Some(json!({"notes": "again"})));
    assert_error(&r, 412, Some("precondition_failed"));
    // Rotate shows a new secret once; delete removes it from the proxy.
    let r = fx.api(&k.admin, "POST", "/api/v1/credentials/ops/rotate", Some(json!({"overlap": "1h"})));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let rotated = r.json()["secret"].as_str().unwrap().to_string();
    assert_eq!(fx.proxy_status(&rotated, "/v1/transactions"), 200);
    assert_eq!(fx.api(&k.admin, "DELETE", "/api/v1/credentials/ops", None).status, 204);
    assert_eq!(fx.proxy_status(&rotated, "/v1/transactions"), 401);
    assert_error(&fx.api(&k.admin, "GET", "/api/v1/credentials/ops", None), 404, Some("not_found"));

    // Nothing secret at rest or in the audit log; every request is one line.
    let file = std::fs::read_to_string(fx.proxy.dir.path().join("credentials.yaml")).unwrap();
    let stdout = fx.proxy.stdout();
    for secret in [&bob_secret, &rotated] {
        assert!(!file.contains(secret.as_str()) && !stdout.contains(secret.as_str()), "a secret was written somewhere");
    }
    let audit = fx.audit();
    assert!(audit.iter().any(|l| l["action"] == "credentials.create" && l["result"] == "refused" && l["error"] == "forbidden" && l["actor"] == "bob"), "refusals are audited");
    let edit = audit.iter().find(|l| l["action"] == "credentials.edit" && l["result"] == "allowed").expect("the edit's line");
    assert_eq!(edit["changes"]["notes"], json!(["n", "edited"]), "{edit}");
    assert_eq!(edit["target"], "ops");
    assert!(!audit.iter().any(|l| l.to_string().contains("sha256:") || l.to_string().contains("$argon2")));
}

#[test]
fn a_new_client_is_in_force_on_the_proxy_at_once_and_its_secret_is_shown_once() {
    let fx = start(false);
    let before = Instant::now();
    let r = create_key(&fx, &fx.keys.admin, json!({"kind": "client", "name": "partner", "roles": ["wallets"], "expires_in": "7d"}));
    assert_eq!(r.status, 201, "{}", r.body_text());
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("pcs_test_"), "{secret}");
    // Shown once: no read shows it again.
    let shown = fx.api(&fx.keys.admin, "GET", "/api/v1/credentials/partner", None).body_text();
    assert!(!shown.contains(&secret) && !shown.contains("secret"), "{shown}");
    // The client is known to the proxy within a second of the write.
    let file = std::fs::read_to_string(fx.proxy.dir.path().join("credentials.yaml")).unwrap();
    assert!(file.contains("  - id: partner") && file.contains("$argon2id$"), "{file}");
    let snap_has = || {
        let list = fx.api(&fx.keys.admin, "GET", "/api/v1/credentials?kind=client", None).json();
        list["credentials"].as_array().unwrap().iter().any(|c| c["name"] == "partner")
    };
    assert!(snap_has());
    assert!(before.elapsed() < Duration::from_secs(5));
}

#[test]
fn approval_needs_a_second_person_and_the_secret_is_picked_up_once() {
    let fx = start(true);
    let k = &fx.keys;
    let r = create_key(&fx, &k.admin, json!({"kind": "api_key", "name": "needs-ok", "roles": ["transactions"], "justification": "reporting job"}));
    assert_eq!(r.status, 202, "{}", r.body_text());
    let req = r.json()["request"].clone();
    let id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["status"], "pending");
    assert!(!r.body_text().contains("pcl_"), "no secret waits in the queue");
    assert!(!fx.names(&k.reader).contains(&"needs-ok".to_string()), "not created yet");
    // The requester cannot approve (no approve permission here, and never one's own).
    assert_error(&fx.api(&k.admin, "POST", &format!("/api/v1/requests/{id}/approve"), None), 403, Some("forbidden"));
    // The approver's own request cannot be approved by itself either.
    let own = create_key(&fx, &k.approver, json!({"kind": "api_key", "name": "approver-own"})).json();
    let own_id = own["request"]["id"].as_str().unwrap().to_string();
    assert_error(&fx.api(&k.approver, "POST", &format!("/api/v1/requests/{own_id}/approve"), None), 403, Some("forbidden"));
    // Nothing to pick up before approval.
    assert_error(&fx.api(&k.admin, "POST", &format!("/api/v1/requests/{id}/secret"), None), 410, Some("gone"));
    // Another person approves: the credential exists, its secret waits for the requester.
    let r = fx.api(&k.approver, "POST", &format!("/api/v1/requests/{id}/approve"), None);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["request"]["decided_by"], "approver-key");
    let queue = fx.api(&k.admin, "GET", "/api/v1/requests", None).json();
    let mine = queue["requests"].as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).unwrap().clone();
    assert_eq!(mine["status"], "approved");
    assert_eq!(mine["secret_ready"], true);
    assert_error(&fx.api(&k.approver, "POST", &format!("/api/v1/requests/{id}/secret"), None), 403, Some("forbidden"));
    let r = fx.api(&k.admin, "POST", &format!("/api/v1/requests/{id}/secret"), None);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    assert_eq!(fx.proxy_status(&secret, "/v1/transactions"), 200);
    assert_error(&fx.api(&k.admin, "POST", &format!("/api/v1/requests/{id}/secret"), None), 410, Some("gone"));
    // The queue file holds no secret.
    let queue_file = std::fs::read_to_string(fx.proxy.dir.path().join("credentials.yaml.requests.json")).unwrap();
    assert!(!queue_file.contains(&secret) && queue_file.contains("needs-ok"));
    // Deny: nothing is created.
    let r = create_key(&fx, &k.admin, json!({"kind": "api_key", "name": "not-ok"})).json();
    let deny_id = r["request"]["id"].as_str().unwrap().to_string();
    let r = fx.api(&k.approver, "POST", &format!("/api/v1/requests/{deny_id}/deny"), None);
    assert_eq!(r.json()["request"]["status"], "denied");
    assert!(!fx.names(&k.reader).contains(&"not-ok".to_string()));
    // An edit that only narrows applies at once; one that widens waits.
    let r = fx.api(&k.admin, "PATCH", "/api/v1/credentials/needs-ok", Some(json!({"notes": "fine"})));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = fx.api(&k.admin, "PATCH", "/api/v1/credentials/needs-ok", Some(json!({"roles": ["transactions", "wallets"]})));
    assert_eq!(r.status, 202, "{}", r.body_text());
    let audit = fx.audit();
    let approve = audit.iter().find(|l| l["action"] == "requests.approve" && l["result"] == "allowed").expect("approval audited");
    assert_eq!(approve["actor"], "approver-key");
    assert_eq!(approve["changes"]["requested_by"][1], "admin-key", "requester and approver are both in the line");
}

#[test]
fn the_console_signs_in_with_an_http_only_cookie_and_refuses_writes_without_its_csrf_token() {
    let fx = start(false);
    // The page and its assets: no credential needed, CSP on every answer.
    let page = send_raw(fx.mgmt, &request("GET", "/", &[]));
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-security-policy").map(|c| c.starts_with("default-src 'self'")), Some(true));
    assert!(page.body_text().contains("/assets/console.js"));
    assert_eq!(send_raw(fx.mgmt, &request("GET", "/assets/console.js", &[])).status, 200);
    // A form post cannot sign in.
    let mut raw = request("POST", "/api/v1/session", &[("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", "10")]);
    raw.extend_from_slice(b"api_key=xx");
    assert_eq!(send_raw(fx.mgmt, &raw).status, 415);
    assert_error(&call(fx.mgmt, "POST", "/api/v1/session", &[], Some(json!({"api_key": "wrong"}))), 401, Some("invalid_api_key"));
    let r = call(fx.mgmt, "POST", "/api/v1/session", &[], Some(json!({"api_key": fx.keys.admin})));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let set_cookie = r.header("set-cookie").unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(&fx.keys.admin), "the cookie is not the key");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = r.json()["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(r.json()["can"]["change"], true);
    let with_cookie = [("Cookie", cookie.as_str())];
    assert_eq!(call(fx.mgmt, "GET", "/api/v1/credentials", &with_cookie, None).status, 200);
    // A write with the cookie alone is refused; with the session's token it passes.
    let body = json!({"kind": "api_key", "name": "from-console"});
    let r = call(fx.mgmt, "POST", "/api/v1/credentials", &with_cookie, Some(body.clone()));
    assert_error(&r, 403, Some("csrf_token_missing"));
    let r = call(fx.mgmt, "POST", "/api/v1/credentials", &[("Cookie", &cookie), ("X-CSRF-Token", "forged")], Some(body.clone()));
    assert_eq!(r.status, 403);
    let r = call(fx.mgmt, "POST", "/api/v1/credentials", &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], Some(body));
    assert_eq!(r.status, 201, "{}", r.body_text());
    // Signing out ends the session.
    assert_eq!(call(fx.mgmt, "DELETE", "/api/v1/session", &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], None).status, 204);
    assert_error(&call(fx.mgmt, "GET", "/api/v1/credentials", &with_cookie, None), 401, None);
    // The OpenAPI document, generated from the types.
    let doc = fx.api(&fx.keys.reader, "GET", "/api/v1/openapi.json", None).json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/api/v1/credentials/{name}"]["patch"].is_object());
}
