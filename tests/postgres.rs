//! The PostgreSQL credential store (SPEC §10) against a real PostgreSQL server: a
//! throwaway cluster per test (tests/common/pg.rs), the real binary, real replicas.
mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::pg::Pg;
use common::*;
use serde_json::{json, Value};

const ROUTES: &str = "routes:
  - match: \"GET /v1/vaults/{vault_id}/balances\"
    require: \"balances:read\"
  - match: \"GET /v1/transactions\"
    require: \"transactions:read\"
";

/// A main config on `pg` (the URL from a file beside it, never in the config).
fn main_yaml(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr, mgmt: Option<SocketAddr>, poll: u64) -> String {
    main_yaml_with(listen, admin, upstream, mgmt, poll, false)
}

fn main_yaml_with(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr, mgmt: Option<SocketAddr>, poll: u64, approval: bool) -> String {
    let mut s = format!(
        "listen: \"{listen}\"\nupstream: \"{upstream}\"\nadmin_listen: \"{admin}\"\nenvironment: sandbox\n\
         store:\n  kind: postgres\n  url_file: database-url\n  poll: {poll}\n{ROUTES}"
    );
    if let Some(m) = mgmt {
        s.push_str(&format!("management:\n  listen: \"{m}\"\n  approval:\n    required: {approval}\n"));
    }
    s
}

struct Keys {
    admin: String,
    reader: String,
}

/// A second administrator (for approvals), same rights as admin-key.
const APPROVER: &str = "approver-key-for-the-postgres-tests-not-secret";

fn credentials_file(k: &Keys) -> String {
    format!(
        "roles:
  reporting: [\"transactions:read\", \"balances:read\"]
users:
  - name: alice
    roles: [wallets]
clients:
  - id: reporting
    secret_hash: \"{}\"
    roles: [reporting]
    expires: 2099-12-31
    description: \"Reporting service\"
api_keys:
  - name: admin-key
    key_hash: \"{}\"
    roles: [wallets, transactions]
    permissions: [\"api_access:*\"]
    expires: 2099-12-31
  - name: approver
    key_hash: \"{}\"
    roles: [wallets, transactions]
    permissions: [\"api_access:*\"]
    expires: 2099-12-31
  - name: reader
    key_hash: \"{}\"
    permissions: [\"balances:read@vault/v-1\"]
    allowed_ips: [\"127.0.0.0/8\"]
    expires: 2099-12-31
    notes: \"keep me\"
  - name: alice-key
    key_hash: \"{}\"
    user: alice
    expires: 2099-12-31
    disabled: true
",
        sha256_hash(&new_key()),
        sha256_hash(&k.admin),
        sha256_hash(APPROVER),
        sha256_hash(&k.reader),
        sha256_hash(&new_key()),
    )
}

/// A config directory on `pg`: `portcullis.yaml`, `database-url`, `credentials.yaml` (the
/// file to import).
struct Site {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    admin: SocketAddr,
    mgmt: SocketAddr,
}

fn site(pg: &Pg, upstream: SocketAddr, creds: &str, poll: u64) -> Site {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mgmt: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = write_config(&main_yaml(addr, admin, upstream, Some(mgmt), poll), creds);
    std::fs::write(dir.path().join("database-url"), pg.url()).unwrap();
    Site { dir, addr, admin, mgmt }
}

fn cli(site: &Site, args: &[&str]) -> Output {
    let config = site.dir.path().join("portcullis.yaml");
    let mut all = vec![args[0], "--config", config.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    run_bin(&all, site.dir.path(), Duration::from_secs(60)).expect("the CLI hung")
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn migrated(pg: &Pg, upstream: SocketAddr, keys: &Keys) -> Site {
    let s = site(pg, upstream, &credentials_file(keys), 5);
    ok(cli(&s, &["store", "migrate"]), "store migrate");
    ok(cli(&s, &["store", "import", s.dir.path().join("credentials.yaml").to_str().unwrap()]), "store import");
    s
}

/// Starts a sidecar on the site's config (a copy of the directory for a second replica).
fn replica(site: &Site, pg: &Pg, upstream: SocketAddr) -> (Proxy, SocketAddr) {
    replica_with(site, pg, upstream, false)
}

fn replica_with(site: &Site, pg: &Pg, upstream: SocketAddr, approval: bool) -> (Proxy, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mgmt: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = write_config(&main_yaml_with(addr, admin, upstream, Some(mgmt), 5, approval), "");
    std::fs::remove_file(dir.path().join("credentials.yaml")).unwrap();
    std::fs::write(dir.path().join("database-url"), pg.url()).unwrap();
    let _ = site;
    (Proxy::spawn(dir, addr, admin), mgmt)
}

fn status(proxy: &Proxy, key: &str, path: &str) -> u16 {
    proxy.send(&request("GET", path, &[("x-api-key", key)])).status
}

fn metric(proxy: &Proxy, name: &str) -> Option<f64> {
    let r = send_raw(proxy.admin_addr, &request("GET", "/metrics", &[]));
    r.body_text().lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn api(mgmt: SocketAddr, key: &str, method: &str, path: &str, body: Option<Value>) -> Response {
    send_json(mgmt, method, path, &[("x-api-key", key)], body.as_ref())
}

/// Waits up to `limit` for `f`; how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn migrates_from_two_processes_imports_and_round_trips_an_export() {
    let pg = Pg::start();
    let upstream = Upstream::start();
    let keys = Keys { admin: new_key(), reader: new_key() };
    let s = site(&pg, upstream.addr, &credentials_file(&keys), 5);
    // Two migrations at once: both succeed, the tables exist once.
    let config = s.dir.path().join("portcullis.yaml");
    let spawn = || Command::new(bin()).args(["store", "migrate", "--config"]).arg(&config).output().expect("migrate");
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(spawn);
        let b = sc.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (ok(a, "migrate A"), ok(b, "migrate B"));
    assert!(a.contains("applied: V1__credentials") ^ b.contains("applied: V1__credentials"), "exactly one applied it: {a:?} {b:?}");
    assert!(ok(cli(&s, &["store", "migrate"]), "migrate again").contains("up to date"));
    // An invalid file is refused whole; the database keeps what it had.
    let bad = s.dir.path().join("bad.yaml");
    std::fs::write(&bad, "api_keys:\n  - name: x\n    key_hash: nope\n    expires: 2099-01-01\n").unwrap();
    let out = cli(&s, &["store", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("key_hash"), "{out:?}");
    let file = s.dir.path().join("credentials.yaml");
    assert!(ok(cli(&s, &["store", "import", file.to_str().unwrap()]), "import").contains("imported 5"));
    // Export, import the export, export again: the same credentials, users and roles.
    let first = ok(cli(&s, &["store", "export"]), "export");
    let parse = |t: &str| portcullis::config::credentials_from_text(std::path::Path::new("x"), t, portcullis::config::Environment::Sandbox, 0).expect("valid");
    let (a, _) = parse(&first);
    let (orig, _) = parse(&std::fs::read_to_string(&file).unwrap());
    let names = |s: &portcullis::config::CredentialStore| s.all.iter().map(|c| (c.id.to_string(), c.grants.iter().map(|g| g.as_str().to_string()).collect::<Vec<_>>(), c.disabled, c.notes.clone())).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&orig));
    assert_eq!(a.users, orig.users);
    assert_eq!(a.custom_roles, orig.custom_roles);
    assert!(first.contains("keep me") && !first.contains(&keys.admin));
    let again = s.dir.path().join("again.yaml");
    std::fs::write(&again, &first).unwrap();
    ok(cli(&s, &["store", "import", again.to_str().unwrap()]), "import the export");
    assert_eq!(ok(cli(&s, &["store", "export"]), "export again"), first);
    // `check` reads the database too.
    let out = ok(cli(&s, &["check"]), "check");
    assert!(out.contains("clients: 1, api keys: 4, users: 1, custom roles: 1"), "{out}");
}

#[test]
fn a_change_through_one_replica_is_in_force_on_another_within_a_second() {
    let pg = Pg::start();
    let upstream = Upstream::start();
    let keys = Keys { admin: new_key(), reader: new_key() };
    let s = migrated(&pg, upstream.addr, &keys);
    let (a, a_mgmt) = replica(&s, &pg, upstream.addr);
    let (b, _) = replica(&s, &pg, upstream.addr);
    assert_eq!(status(&a, &keys.reader, "/v1/vaults/v-1/balances"), 200);
    assert_eq!(status(&b, &keys.reader, "/v1/vaults/v-1/balances"), 200);
    assert_eq!(status(&b, &keys.reader, "/v1/vaults/v-2/balances"), 403);
    // A new key through A's API: in force on B within a second.
    let r = api(a_mgmt, &keys.admin, "POST", "/api/v1/credentials", Some(json!({"kind": "api_key", "name": "new-key", "roles": ["wallets"]})));
    assert_eq!(r.status, 201, "{}", r.body_text());
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    let took = within(Duration::from_secs(1), || status(&b, &secret, "/v1/vaults/v-9/balances") == 200);
    assert!(took.is_some(), "B did not accept the new key within 1 s");
    // Disabled through A: rejected on B within a second.
    let r = api(a_mgmt, &keys.admin, "POST", "/api/v1/credentials/reader/disable", None);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(within(Duration::from_secs(1), || status(&b, &keys.reader, "/v1/vaults/v-1/balances") == 401).is_some());
    // A change made in the database by someone else (SQL), heard by both.
    let out = pg.psql("portcullis", "UPDATE portcullis_credentials SET permissions = '{transactions:read}' WHERE name = 'new-key'");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for p in [&a, &b] {
        assert!(within(Duration::from_secs(1), || status(p, &secret, "/v1/transactions") == 200).is_some());
    }
    assert_eq!(metric(&b, "portcullis_store_up"), Some(1.0));
    // The CLI works on the database too: list, then a disable heard by the replicas.
    let listed = ok(cli(&s, &["credentials", "list"]), "credentials list");
    assert!(listed.contains("new-key") && listed.contains("reader") && listed.contains("DISABLED"), "{listed}");
    ok(cli(&s, &["credentials", "disable", "new-key"]), "credentials disable");
    for p in [&a, &b] {
        assert!(within(Duration::from_secs(1), || status(p, &secret, "/v1/transactions") == 401).is_some(), "the CLI's disable reached a replica");
    }
    ok(cli(&s, &["credentials", "enable", "new-key"]), "credentials enable");
    assert!(within(Duration::from_secs(1), || status(&b, &secret, "/v1/transactions") == 200).is_some());
    let explained = ok(cli(&s, &["explain", "--credential", "new-key", "GET", "/v1/transactions"]), "explain");
    assert!(explained.to_lowercase().contains("allow"), "{explained}");
    // Two administrators edit the same credential at once with the same If-Match: one wins.
    let etag = api(a_mgmt, &keys.admin, "GET", "/api/v1/credentials/new-key", None).header("etag").unwrap().to_string();
    let edit = |note: &str| {
        let headers = [("x-api-key", keys.admin.as_str()), ("If-Match", etag.as_str())];
        send_json(a_mgmt, "PATCH", "/api/v1/credentials/new-key", &headers, Some(&json!({"notes": note}))).status
    };
    let (x, y) = std::thread::scope(|sc| {
        let x = sc.spawn(|| edit("first"));
        let y = sc.spawn(|| edit("second"));
        (x.join().unwrap(), y.join().unwrap())
    });
    let mut got = [x, y];
    got.sort();
    assert_eq!(got[0], 200, "{got:?}");
    assert!(got[1] == 409 || got[1] == 412, "the other edit lost: {got:?}");
    // Last-use times go to the database (batched; here at B's graceful stop).
    let mut b = b;
    let st = Command::new("kill").args(["-TERM", &b.pid().to_string()]).status().unwrap();
    assert!(st.success());
    assert!(b.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()), "B stops cleanly");
    let used = pg.psql("portcullis", "SELECT name FROM portcullis_last_used ORDER BY name");
    let used = String::from_utf8_lossy(&used.stdout);
    assert!(used.lines().any(|l| l == "new-key") && used.lines().any(|l| l == "reader"), "{used}");
}

#[test]
fn with_the_database_down_both_replicas_keep_deciding_and_catch_up_when_it_returns() {
    let pg = Pg::start();
    let upstream = Upstream::start();
    let keys = Keys { admin: new_key(), reader: new_key() };
    let s = migrated(&pg, upstream.addr, &keys);
    let (a, a_mgmt) = replica(&s, &pg, upstream.addr);
    let (b, _) = replica(&s, &pg, upstream.addr);
    let unknown = new_key();
    pg.down();
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(10) {
        for p in [&a, &b] {
            assert_eq!(status(p, &keys.reader, "/v1/vaults/v-1/balances"), 200, "allowed stays allowed");
            assert_eq!(status(p, &keys.reader, "/v1/vaults/v-2/balances"), 403, "denied stays denied");
            assert_eq!(status(p, &unknown, "/v1/vaults/v-1/balances"), 401);
            checks += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(checks > 20);
    for p in [&a, &b] {
        assert_eq!(metric(p, "portcullis_store_up"), Some(0.0), "store_up 0 while the database is down");
        assert_eq!(send_raw(p.admin_addr, &request("GET", "/readyz", &[])).status, 200, "still ready");
        let errors = p.stdout().lines().filter(|l| l.contains("the PostgreSQL store is unreachable")).count();
        assert_eq!(errors, 1, "logged once, not per attempt");
    }
    pg.up();
    // Changes flow again without a restart.
    for p in [&a, &b] {
        assert!(within(Duration::from_secs(8), || metric(p, "portcullis_store_up") == Some(1.0)).is_some(), "store_up back to 1");
    }
    let r = api(a_mgmt, &keys.admin, "POST", "/api/v1/credentials", Some(json!({"kind": "api_key", "name": "after-outage", "permissions": ["transactions:read"]})));
    assert_eq!(r.status, 201, "{}", r.body_text());
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    for p in [&a, &b] {
        assert!(within(Duration::from_secs(1), || status(p, &secret, "/v1/transactions") == 200).is_some(), "the new key reached both");
    }
}

#[test]
fn a_first_start_without_the_database_fails_clearly() {
    let pg = Pg::start();
    let upstream = Upstream::start();
    let s = site(&pg, upstream.addr, "", 5);
    std::fs::remove_file(s.dir.path().join("credentials.yaml")).unwrap();
    pg.down();
    let config = s.dir.path().join("portcullis.yaml");
    let out = run_bin(&["serve", "--config", config.to_str().unwrap()], s.dir.path(), Duration::from_secs(30)).expect("serve hung");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PostgreSQL store") && err.contains("connect"), "{err}");
    assert!(!err.contains("postgres://"), "the URL is not echoed: {err}");
    let _ = (s.addr, s.admin, s.mgmt);
}

#[test]
fn approval_requests_live_in_the_database_and_hold_no_secret() {
    let pg = Pg::start();
    let upstream = Upstream::start();
    let keys = Keys { admin: new_key(), reader: new_key() };
    let s = migrated(&pg, upstream.addr, &keys);
    let (a, a_mgmt) = replica_with(&s, &pg, upstream.addr, true);
    let (b, b_mgmt) = replica_with(&s, &pg, upstream.addr, true);
    let r = api(a_mgmt, &keys.admin, "POST", "/api/v1/credentials", Some(json!({"kind": "api_key", "name": "waits", "roles": ["transactions"]})));
    assert_eq!(r.status, 202, "{}", r.body_text());
    let id = r.json()["request"]["id"].as_str().unwrap().to_string();
    let rows = pg.psql("portcullis", "SELECT body::text FROM portcullis_requests");
    let rows = String::from_utf8_lossy(&rows.stdout).into_owned();
    assert!(rows.contains(&id) && rows.contains("waits") && !rows.contains("pcl_"), "{rows}");
    // The queue is the database's: B's console sees A's request.
    let seen = api(b_mgmt, APPROVER, "GET", "/api/v1/requests", None).json();
    assert!(seen["requests"].as_array().unwrap().iter().any(|r| r["id"] == id.as_str()), "{seen}");
    // Approved on A by another person; the requester picks the secret up once there.
    let r = api(a_mgmt, APPROVER, "POST", &format!("/api/v1/requests/{id}/approve"), None);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = api(a_mgmt, &keys.admin, "POST", &format!("/api/v1/requests/{id}/secret"), None);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    assert!(within(Duration::from_secs(1), || status(&b, &secret, "/v1/transactions") == 200).is_some(), "in force on B");
    let rows = String::from_utf8_lossy(&pg.psql("portcullis", "SELECT body::text FROM portcullis_requests").stdout).into_owned();
    assert!(rows.contains("approved") && !rows.contains(&secret), "{rows}");
    drop(a);
}
