//! Operations: graceful shutdown on SIGTERM, and shadow mode.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn key_creds(name: &str, key: &str, perms: &str) -> String {
    format!(
        "api_keys:\n  - name: {name}\n    key_hash: \"{}\"\n    permissions: [{perms}]\n    expires: 2099-01-01\n",
        sha256_hash(key)
    )
}

const ROUTES: &str = "routes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n  - match: \"GET /v1/transactions\"\n    require: \"transactions:read\"\n";

fn term(pid: u32) {
    let st = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(st.success());
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let up = Upstream::start();
    let key = new_key();
    let mut p = Proxy::start(up.addr, &format!("shutdown_grace: 10\n{ROUTES}"), &key_creds("k", &key, "\"balances:read\""));
    let addr = p.addr;
    let slow_key = key.clone();
    let slow = std::thread::spawn(move || {
        send_raw(addr, &request("GET", "/v1/vaults/v-1/balances?slow_ms=1500", &[("x-api-key", &slow_key)]))
    });
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    term(p.pid());
    // New connections are refused once the listener has stopped.
    std::thread::sleep(Duration::from_millis(300));
    let refused = try_send_raw(None, addr, &request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &key)]));
    assert!(refused.is_err(), "a new request was accepted during the drain: {:?}", refused.map(|r| r.status));
    let resp = slow.join().expect("slow request thread");
    assert_eq!(resp.status, 200, "the in-flight request did not finish: {}", resp.body_text());
    let st = p.wait_exit(Duration::from_secs(5)).expect("still running after the request finished");
    assert_eq!(st.code(), Some(0));
    // It left as soon as the request was done, not at the end of the 10 s grace.
    assert!(t0.elapsed() < Duration::from_secs(4), "took {:?}", t0.elapsed());
}

#[test]
fn sigterm_when_idle_exits_at_once() {
    let up = Upstream::start();
    let mut p = Proxy::start(up.addr, &format!("shutdown_grace: 10\n{ROUTES}"), &key_creds("k", &new_key(), "\"balances:read\""));
    let t0 = Instant::now();
    term(p.pid());
    let st = p.wait_exit(Duration::from_secs(5)).expect("did not exit");
    assert_eq!(st.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
}

#[test]
fn sigterm_gives_up_after_the_grace_period() {
    let up = Upstream::start();
    let key = new_key();
    let mut p = Proxy::start(up.addr, &format!("shutdown_grace: 1\n{ROUTES}"), &key_creds("k", &key, "\"balances:read\""));
    let addr = p.addr;
    let k2 = key.clone();
    let slow = std::thread::spawn(move || {
        try_send_raw(None, addr, &request("GET", "/v1/vaults/v-1/balances?slow_ms=8000", &[("x-api-key", &k2)]))
    });
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    term(p.pid());
    let st = p.wait_exit(Duration::from_secs(6)).expect("did not exit after the grace period");
    assert_eq!(st.code(), Some(0));
    assert!(t0.elapsed() >= Duration::from_millis(900), "left before the grace period: {:?}", t0.elapsed());
    let r = slow.join().expect("thread");
    assert!(r.is_err() || r.as_ref().is_ok_and(|r| r.status != 200), "an 8 s request cannot have finished");
}

#[test]
fn shadow_mode_forwards_what_it_would_deny_and_says_so() {
    let up = Upstream::start();
    let key = new_key();
    let p = Proxy::start(up.addr, &format!("mode: shadow\n{ROUTES}"), &key_creds("reader", &key, "\"balances:read@vault/v-1\""));
    // Allowed as usual.
    let ok = p.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &key)]));
    assert_eq!(ok.status, 200);
    // Would be 403 insufficient_scope: forwarded, with the identity.
    let marker = new_marker();
    let r = p.send(&request("GET", "/v1/vaults/v-2/balances", &[("x-api-key", &key), ("x-test-marker", &marker)]));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let echo = Echo::from(&r);
    assert_eq!(echo.one("x-auth-credential"), "reader");
    assert!(!echo.has("x-api-key"));
    // Would be 401: forwarded without identity headers.
    let r = p.send(&request("GET", "/v1/transactions", &[]));
    assert_eq!(r.status, 200);
    assert!(!Echo::from(&r).has("x-auth-credential"));
    // A malformed request is refused in every mode.
    let r = p.send(b"GET /v1/../admin HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_error(&r, 400, Some("invalid_request"));
    // The audit log names what would have happened.
    std::thread::sleep(Duration::from_millis(200));
    let log = p.stdout();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "audit")
        .collect();
    assert!(lines.iter().any(|v| v["outcome"] == "shadow_denied" && v["reason"] == "insufficient_scope" && v["status"] == 200));
    assert!(lines.iter().any(|v| v["outcome"] == "shadow_denied" && v["reason"] == "missing_credential"));
    // And the metrics count it.
    let m = send_raw(p.admin_addr, &request("GET", "/metrics", &[]));
    let text = m.body_text();
    assert!(
        text.lines().any(|l| l.starts_with("portcullis_shadow_denials_total") && l.contains("insufficient_scope") && !l.ends_with(" 0")),
        "{text}"
    );
    assert!(up.with_marker(&marker).len() == 1);
}

#[test]
fn shadow_mode_per_route_leaves_other_routes_enforced() {
    let up = Upstream::start();
    let key = new_key();
    let routes = "routes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n    mode: shadow\n  - match: \"GET /v1/transactions\"\n    require: \"transactions:read\"\n";
    let p = Proxy::start(up.addr, routes, &key_creds("reader", &key, "\"audit:read\""));
    let r = p.send(&request("GET", "/v1/vaults/v-2/balances", &[("x-api-key", &key)]));
    assert_eq!(r.status, 200);
    let r = p.send(&request("GET", "/v1/transactions", &[("x-api-key", &key)]));
    assert_error(&r, 403, Some("insufficient_scope"));
}

#[test]
fn the_response_carries_the_request_id_the_upstream_saw() {
    let up = Upstream::start();
    let key = new_key();
    let p = Proxy::start(up.addr, ROUTES, &key_creds("k", &key, "\"balances:read\""));
    let r = p.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &key)]));
    assert_eq!(r.status, 200);
    let rid = r.header("x-request-id").expect("x-request-id on the response").to_string();
    assert_eq!(rid.len(), 32);
    assert_eq!(Echo::from(&r).one("x-auth-request-id"), rid);
    let denied = p.send(&request("GET", "/v1/vaults/v-1/balances", &[]));
    let body = assert_error(&denied, 401, Some("missing_credential"));
    assert_eq!(denied.header("x-request-id"), body["request_id"].as_str());
}

#[test]
fn a_forwarded_for_value_that_is_not_text_never_lets_the_caller_pick_its_address() {
    let up = Upstream::start();
    let (spoofed, real) = (new_key(), new_key());
    let creds = format!(
        "api_keys:\n  - name: spoofed\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    allowed_ips: [\"203.0.113.9\"]\n    expires: 2099-01-01\n  - name: real\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    allowed_ips: [\"198.51.100.66\"]\n    expires: 2099-01-01\n",
        sha256_hash(&spoofed),
        sha256_hash(&real)
    );
    let p = Proxy::start(up.addr, &format!("trusted_proxies: [\"127.0.0.1/32\"]\n{ROUTES}"), &creds);
    // The caller wrote the first line and the garbled start of the second; the trusted
    // proxy (the peer, 127.0.0.1) appended the real client to the second.
    let raw = |key: &str| {
        let mut r = format!("GET /v1/vaults/v-1/balances HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nX-Forwarded-For: 203.0.113.9\r\n").into_bytes();
        r.extend_from_slice(b"X-Forwarded-For: \xff, 198.51.100.66\r\n\r\n");
        r
    };
    let r = p.send(&raw(&spoofed));
    assert_error(&r, 403, Some("ip_not_allowed"));
    let r = p.send(&raw(&real));
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(Echo::from(&r).one("x-auth-client-ip"), "198.51.100.66");
}

#[test]
fn method_override_headers_in_any_spelling_are_refused() {
    let up = Upstream::start();
    let key = new_key();
    let p = Proxy::start(up.addr, ROUTES, &key_creds("k", &key, "\"balances:read\""));
    for h in ["X_HTTP_Method_Override", "x.http.method", "X-Method-Override"] {
        let marker = new_marker();
        let r = p.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &key), (h, "DELETE"), ("x-test-marker", &marker)]));
        assert_error(&r, 400, Some("invalid_request"));
        assert!(up.with_marker(&marker).is_empty(), "{h} was forwarded");
    }
}
