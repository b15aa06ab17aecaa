//! "Last used" (SPEC §9, §10) against the real binary: the sidecar keeps, per credential,
//! the time it last authenticated, writes it beside the credentials file (at the latest
//! when it stops), and `portcullis credentials list` / `show` read it.
//!
//! Run: cargo test --test last_used
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const ROUTES: &str = "routes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n  - match: \"GET /v1/transactions\"\n    require: \"transactions:read\"\n";

const STATE_FILE: &str = "credentials.yaml.last-used.json";

fn key_entry(name: &str, key: &str, perms: &str) -> String {
    format!(
        "  - name: {name}\n    key_hash: \"{}\"\n    permissions: [{perms}]\n    expires: 2099-01-01\n",
        sha256_hash(key)
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Stops the sidecar as an orchestrator does (SIGTERM) and waits for its exit 0.
fn stop(p: &mut Proxy) {
    let st = Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let st = p
        .wait_exit(Duration::from_secs(10))
        .expect("still running 10 s after SIGTERM");
    assert_eq!(st.code(), Some(0), "exit status; stdout:\n{}", p.stdout());
}

/// The state file beside the credentials file, parsed; its text too.
fn state(dir: &Path) -> (serde_json::Value, String) {
    let path: PathBuf = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
    (v, text)
}

/// The time the state file holds for `name`, in unix seconds.
fn time_of(v: &serde_json::Value, name: &str) -> Option<i64> {
    let s = v["last_used"]
        .get(name)?
        .as_str()
        .unwrap_or_else(|| panic!("{name}: not a string: {v}"));
    let t =
        chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{name}: {s:?}: {e}"));
    assert!(s.ends_with('Z'), "{name}: {s:?} is not UTC");
    Some(t.timestamp())
}

fn assert_recent(v: &serde_json::Value, name: &str, since: i64) {
    let t = time_of(v, name).unwrap_or_else(|| panic!("{name} is not in the state file: {v}"));
    // Kept to the minute: the time recorded is that of the request, not of the write.
    assert!(
        since - 1 <= t && t <= now() + 1,
        "{name}: {t} is not between {since} and now: {v}"
    );
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    let config = dir.join("portcullis.yaml");
    let mut all = vec![
        "credentials",
        "--config",
        config.to_str().expect("utf-8 path"),
    ];
    all.extend_from_slice(args);
    let out = run_bin(&all, dir, Duration::from_secs(20)).expect("the CLI did not finish");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn keeps_the_time_a_key_last_authenticated_and_lists_it() {
    let up = Upstream::start();
    let (used, idle) = (new_key(), new_key());
    let creds = format!(
        "api_keys:\n{}{}",
        key_entry("k-used", &used, "\"balances:read\""),
        key_entry("k-idle", &idle, "\"balances:read\"")
    );
    let mut p = Proxy::start(up.addr, ROUTES, &creds);
    let since = now();
    for _ in 0..3 {
        let r = p.send(&request(
            "GET",
            "/v1/vaults/v-1/balances",
            &[("x-api-key", &used)],
        ));
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    // A key that is not known authenticates nothing.
    let r = p.send(&request(
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", "not-a-key")],
    ));
    assert_eq!(r.status, 401);
    // Never per request: nothing is written while it runs (the first write is a minute in).
    assert!(
        !p.dir.path().join(STATE_FILE).exists(),
        "written on the request path"
    );
    stop(&mut p);

    let (v, text) = state(p.dir.path());
    assert_eq!(v["version"], 1, "{text}");
    let top: Vec<&String> = v.as_object().expect("an object").keys().collect();
    assert_eq!(top, ["version", "last_used"], "{text}");
    assert_recent(&v, "k-used", since);
    assert_eq!(time_of(&v, "k-idle"), None, "{text}");
    assert_eq!(
        v["last_used"].as_object().map(|m| m.len()),
        Some(1),
        "{text}"
    );
    // Names and times only: no key, no hash.
    for secret in [&used, &idle] {
        let hash = sha256_hash(secret);
        assert!(
            !text.contains(secret.as_str()) && !text.contains(&hash[7..]),
            "{text}"
        );
    }
    assert!(!text.contains("sha256"), "{text}");

    // The CLI shows it: a relative time for the key used, `never` for the other.
    let out = cli(p.dir.path(), &["list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout.lines().next().unwrap_or_default();
    assert!(
        header.contains("LAST USED") && header.ends_with("STATE"),
        "{stdout}"
    );
    let column = header.find("LAST USED").expect("column");
    let cell = |name: &str| {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        line[column..]
            .split("  ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(cell("k-used"), "1m ago", "{stdout}");
    assert_eq!(cell("k-idle"), "never", "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cli(p.dir.path(), &["list", "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list json");
    let row = |n: &str| {
        rows.as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == n))
            .cloned()
            .expect(n)
    };
    assert_eq!(row("k-used")["last_used"], v["last_used"]["k-used"]);
    assert!(row("k-idle")["last_used"].is_null(), "{rows}");
    assert!(row("k-idle")
        .as_object()
        .is_some_and(|o| o.contains_key("last_used")));

    let out = cli(p.dir.path(), &["show", "k-used"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown = v["last_used"]["k-used"].as_str().expect("time");
    assert!(
        stdout.contains(&format!("{:<24}{shown} (1m ago)\n", "last used:")),
        "{stdout}"
    );
    let out = cli(p.dir.path(), &["show", "k-idle", "-o", "json"]);
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show json");
    assert!(one["last_used"].is_null(), "{one}");

    // The next run starts from the file: a run in which nothing authenticates does not
    // write it, and one in which the other key does keeps the first key's time.
    let before = fs::read_to_string(p.dir.path().join(STATE_FILE)).expect("state");
    let mut again = restart(&up, &creds, &before);
    stop(&mut again);
    assert_eq!(
        fs::read_to_string(again.dir.path().join(STATE_FILE)).expect("state"),
        before
    );
    let mut third = restart(&up, &creds, &before);
    let r = third.send(&request(
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", &idle)],
    ));
    assert_eq!(r.status, 200, "{}", r.body_text());
    stop(&mut third);
    let (v2, _) = state(third.dir.path());
    assert_eq!(v2["last_used"]["k-used"], v["last_used"]["k-used"]);
    assert_recent(&v2, "k-idle", since);
}

/// A new sidecar on `creds` whose state file is `state` (as a restart finds it).
fn restart(up: &Upstream, creds: &str, state: &str) -> Proxy {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = write_config(
        &format!("{}{ROUTES}", main_head(addr, admin, up.addr)),
        creds,
    );
    fs::write(dir.path().join(STATE_FILE), state).expect("state");
    Proxy::spawn(dir, addr, admin)
}

#[test]
fn counts_an_authenticated_denial_and_a_token_issued_but_not_a_failed_login() {
    let up = Upstream::start();
    let (reader, secret) = (new_key(), new_key());
    let creds = format!(
        "clients:\n  - id: reporting\n    secret_hash: \"{}\"\n    permissions: [\"transactions:read\"]\n    expires: 2099-01-01\n\
         \x20 - id: other\n    secret_hash: \"{}\"\n    permissions: [\"transactions:read\"]\n    expires: 2099-01-01\n\
         api_keys:\n{}",
        sha256_hash(&secret),
        sha256_hash(&new_key()),
        key_entry("k-reader", &reader, "\"balances:read\"")
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = format!(
        "{}tokens:\n  issuer: \"https://portcullis.test\"\n  audience: \"wallet-api\"\n  signing_key: signing.pem\n{ROUTES}",
        main_head(addr, admin, up.addr)
    );
    let dir = write_config(&main, &creds);
    let kg = run_bin(
        &["keygen", "--out", "signing.pem"],
        dir.path(),
        Duration::from_secs(20),
    )
    .expect("keygen");
    assert!(
        kg.status.success(),
        "{}",
        String::from_utf8_lossy(&kg.stderr)
    );
    let mut p = Proxy::spawn(dir, addr, admin);
    let since = now();

    // Authenticated, then refused for want of a permission: still a use of the key.
    let r = p.send(&request(
        "GET",
        "/v1/transactions",
        &[("x-api-key", &reader)],
    ));
    assert_eq!(r.status, 403, "{}", r.body_text());
    // A token issued is the client authenticating; a wrong secret is not.
    let token = |id: &str, secret: &str| {
        let body = format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
        let len = body.len().to_string();
        let mut raw = request(
            "POST",
            "/oauth/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Content-Length", &len),
            ],
        );
        raw.extend_from_slice(body.as_bytes());
        p.send(&raw)
    };
    let r = token("reporting", &secret);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let access = r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    assert_eq!(token("other", "wrong-secret").status, 401);
    let r = p.send(&request(
        "GET",
        "/v1/transactions",
        &[("Authorization", &format!("Bearer {access}"))],
    ));
    assert_eq!(r.status, 200, "{}", r.body_text());
    stop(&mut p);

    let (v, text) = state(p.dir.path());
    assert_recent(&v, "k-reader", since);
    assert_recent(&v, "reporting", since);
    assert_eq!(time_of(&v, "other"), None, "{text}");
    assert!(
        !text.contains(&secret) && !text.contains(&reader) && !text.contains(&access),
        "{text}"
    );
}
