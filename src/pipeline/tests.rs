//! `decide` in `allows_…`/`denies_…` pairs, on a snapshot loaded from real files.
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};
use sha2::{Digest, Sha256};

use super::*;
use crate::config;

const KEY: &str = "pipeline-test-key-0123456789";
const NEAR_KEY: &str = "pipeline-test-near-key-0123456789";

fn snapshot(mode: &str) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    let main = format!(
        "listen: \"127.0.0.1:18080\"\nupstream: \"127.0.0.1:13000\"\nadmin_listen: \"127.0.0.1:19901\"\n\
         environment: sandbox\nmode: {mode}\ncredentials_file: credentials.yaml\nroutes:\n\
         \x20 - match: \"GET /v1/vaults/{{vault_id}}/balances\"\n    require: \"balances:read\"\n\
         \x20 - match: \"GET /v1/status\"\n    public: true\n\
         \x20 - match: \"POST /v1/transfers\"\n    require: \"transactions:create\"\n"
    );
    let hash = |k: &str| format!("sha256:{}", hex::encode(Sha256::digest(k.as_bytes())));
    let creds = format!(
        "api_keys:\n  - name: reader\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    expires: 2099-01-01\n\
         \x20 - name: near\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    allowed_ips: [\"192.0.2.0/24\"]\n    expires: 2099-01-01\n",
        hash(KEY),
        hash(NEAR_KEY)
    );
    std::fs::write(dir.path().join("portcullis.yaml"), main).unwrap();
    std::fs::write(dir.path().join("credentials.yaml"), creds).unwrap();
    config::load(&dir.path().join("portcullis.yaml"), 0).unwrap()
}

fn run(snap: &Snapshot, method: Method, target: &str, key: Option<&str>, peer: &str) -> Decision {
    let mut headers = HeaderMap::new();
    if let Some(k) = key {
        headers.insert("x-api-key", HeaderValue::from_str(k).unwrap());
    }
    let peer: IpAddr = peer.parse().unwrap();
    decide(snap, &RequestView { method: &method, target: target.as_bytes(), headers: &headers, peer, checked_path: None }, 1_000)
}

fn reason(d: &Decision) -> Reason {
    d.result.as_ref().expect_err("denied").reason
}

#[test]
fn allows_a_public_route_without_a_credential() {
    let snap = snapshot("enforce");
    let d = run(&snap, Method::GET, "/v1/status", None, "203.0.113.9");
    let p = d.result.expect("a public route is forwarded");
    assert!(p.identity.is_none());
    assert_eq!(p.route.as_deref(), Some("GET /v1/status"));
}

#[test]
fn denies_a_protected_route_without_a_credential() {
    let snap = snapshot("enforce");
    let d = run(&snap, Method::GET, "/v1/vaults/v-1/balances", None, "203.0.113.9");
    assert_eq!(reason(&d), Reason::MissingCredential);
}

#[test]
fn allows_a_granted_route_and_denies_a_missing_one() {
    let snap = snapshot("enforce");
    let d = run(&snap, Method::GET, "/v1/vaults/v-1/balances", Some(KEY), "203.0.113.9");
    assert_eq!(d.result.expect("granted").identity.expect("identity").credential.as_ref(), "reader");
    // No route: default deny, after authentication (the identity is known for the log).
    let d = run(&snap, Method::GET, "/v1/unknown", Some(KEY), "203.0.113.9");
    assert_eq!(reason(&d), Reason::RouteNotAllowed);
    assert_eq!(d.identity.expect("identity").credential.as_ref(), "reader");
    // A route whose permission the key lacks.
    let d = run(&snap, Method::POST, "/v1/transfers", Some(KEY), "203.0.113.9");
    assert_eq!(reason(&d), Reason::InsufficientScope);
}

#[test]
fn allows_from_an_allowed_address_and_denies_elsewhere() {
    let snap = snapshot("enforce");
    let d = run(&snap, Method::GET, "/v1/vaults/v-1/balances", Some(NEAR_KEY), "192.0.2.7");
    assert!(d.result.is_ok());
    let d = run(&snap, Method::GET, "/v1/vaults/v-1/balances", Some(NEAR_KEY), "198.51.100.7");
    assert_eq!(reason(&d), Reason::IpNotAllowed);
    assert_eq!(d.client_ip, Some("198.51.100.7".parse().unwrap()));
}

#[test]
fn allows_in_shadow_mode_what_enforce_denies_and_reports_it() {
    let snap = snapshot("shadow");
    let d = run(&snap, Method::POST, "/v1/transfers", Some(KEY), "203.0.113.9");
    assert!(d.result.is_ok(), "shadow mode forwards");
    assert_eq!(d.shadow_denied.expect("the denial is reported").reason, Reason::InsufficientScope);
}

#[test]
fn denies_malformed_requests_and_connect_even_in_shadow_mode() {
    let snap = snapshot("shadow");
    let d = run(&snap, Method::GET, "/v1/../admin", Some(KEY), "203.0.113.9");
    assert_eq!(reason(&d), Reason::InvalidRequest);
    let d = run(&snap, Method::CONNECT, "api.example:443", None, "203.0.113.9");
    assert_eq!(reason(&d), Reason::MethodNotAllowed);
}

#[test]
fn allows_encoded_letters_as_the_decoded_path_and_forwards_that() {
    let snap = snapshot("enforce");
    let d = run(&snap, Method::GET, "/v1/%76aults/v-1/balances?x=%76", Some(KEY), "203.0.113.9");
    let p = d.result.expect("matched as /v1/vaults/…");
    assert_eq!(p.normalized_target.as_deref(), Some("/v1/vaults/v-1/balances?x=%76"));
    let d = run(&snap, Method::GET, "/v1/vaults/v-1/balances", Some(KEY), "203.0.113.9");
    assert_eq!(d.result.expect("plain").normalized_target, None, "nothing to rewrite");
}
