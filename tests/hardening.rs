//! Hardening (issue: bounded token endpoint, no raw tunnels, strict JWS): each case with
//! its positive pair, against the real binary and a real upstream on loopback.
mod common;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};

const ISSUER: &str = "https://auth.test.example";
const AUDIENCE: &str = "wallet-api";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A sidecar with a signing key made by `portcullis keygen`, one client `svc` whose
/// secret is `secret`, and `extra_tokens` appended under `tokens:`.
fn token_proxy(up: SocketAddr, secret: &str, extra_tokens: &str, routes: &str) -> Proxy {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = format!(
        "{}tokens:\n  issuer: \"{ISSUER}\"\n  audience: \"{AUDIENCE}\"\n  signing_key: signing.pem\n{extra_tokens}routes:\n{routes}",
        main_head(addr, admin, up)
    );
    let creds = format!(
        "clients:\n  - id: svc\n    secret_hash: \"{}\"\n    permissions: [\"transactions:read\"]\n    expires: 2099-01-01\n",
        sha256_hash(secret)
    );
    let dir = write_config(&main, &creds);
    let out = run_bin(&["keygen", "--out", "signing.pem"], dir.path(), Duration::from_secs(30)).expect("keygen runs");
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    Proxy::spawn(dir, addr, admin)
}

const ROUTES: &str = "  - match: \"GET /v1/tx\"\n    require: \"transactions:read\"\n  - match: \"GET /public/{*rest}\"\n    public: true\n";

fn token_raw(id: &str, secret: &str) -> Vec<u8> {
    let body = format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
    let len = body.len().to_string();
    let mut raw = request(
        "POST",
        "/oauth/token",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", &len)],
    );
    raw.extend_from_slice(body.as_bytes());
    raw
}

fn token_request(p: &Proxy, from: IpAddr, id: &str, secret: &str) -> Response {
    p.send_from(from, &token_raw(id, secret))
}

#[test]
fn token_failures_are_throttled_per_address_and_per_client() {
    let up = Upstream::start();
    let secret = new_key();
    let p = token_proxy(up.addr, &secret, "  failure_limit: 3\n", ROUTES);
    // The limit's worth of wrong secrets is answered 401 …
    for _ in 0..3 {
        let r = token_request(&p, ip(2), "svc", "wrong");
        assert_eq!(r.status, 401, "{}", r.body_text());
        assert_eq!(r.json()["error"], "invalid_client");
    }
    // … then 429 slow_down with Retry-After, even with the right secret …
    let r = token_request(&p, ip(2), "svc", &secret);
    assert_eq!(r.status, 429, "{}", r.body_text());
    assert_eq!(r.json()["error"], "slow_down");
    let wait: u64 = r.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    // … and the same answer for a client id that does not exist (nothing is disclosed).
    let r = token_request(&p, ip(2), "no-such-client", "x");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "slow_down");
    // The client id is throttled from any address; another client from another address is not.
    let r = token_request(&p, ip(3), "svc", &secret);
    assert_eq!(r.status, 429, "{}", r.body_text());
    let r = token_request(&p, ip(4), "other", "x");
    assert_eq!(r.status, 401, "{}", r.body_text());
}

#[test]
fn allows_tokens_below_the_failure_limit() {
    let up = Upstream::start();
    let secret = new_key();
    let p = token_proxy(up.addr, &secret, "  failure_limit: 3\n", ROUTES);
    for _ in 0..2 {
        assert_eq!(token_request(&p, ip(5), "svc", "wrong").status, 401);
    }
    let r = token_request(&p, ip(5), "svc", &secret);
    assert_eq!(r.status, 200, "{}", r.body_text());
    // A success forgets the client id's failures.
    for _ in 0..2 {
        assert_eq!(token_request(&p, ip(6), "svc", "wrong").status, 401);
    }
    assert_eq!(token_request(&p, ip(7), "svc", &secret).status, 200);
}

#[test]
fn busy_verification_slots_answer_503() {
    let up = Upstream::start();
    let secret = new_key();
    let p = token_proxy(up.addr, &secret, "  max_concurrent_verifications: 1\n  failure_limit: 1000\n", ROUTES);
    let addr = p.addr;
    // Unknown client ids, each from its own address: every one costs an argon2 verification.
    let handles: Vec<_> = (0..24u8)
        .map(|n| {
            std::thread::spawn(move || send_raw_from(ip(20 + n), addr, &token_raw(&format!("ghost{n}"), "x")))
        })
        .collect();
    let answers: Vec<Response> = handles.into_iter().map(|h| h.join().expect("client thread")).collect();
    let busy: Vec<&Response> = answers.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty(), "statuses: {:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    for r in &busy {
        assert_eq!(r.json()["error"], "temporarily_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert!(answers.iter().all(|r| r.status == 503 || r.status == 401));
    // Once the flood is over, the endpoint answers again.
    assert_eq!(token_request(&p, ip(9), "svc", &secret).status, 200);
}

fn sign(p: &Proxy, header: &Value, claims: &Value) -> String {
    let pem = std::fs::read(p.dir.path().join("signing.pem")).expect("signing key");
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).expect("ed25519 key");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::EdDSA).expect("sign");
    format!("{input}.{sig}")
}

#[test]
fn denies_a_token_with_crit_and_allows_it_without() {
    let up = Upstream::start();
    let p = token_proxy(up.addr, &new_key(), "", ROUTES);
    let t = now();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "client_id": "svc",
        "iat": t, "exp": t + 300, "jti": new_marker(), "scope": "transactions:read"});
    let plain = sign(&p, &json!({"alg": "EdDSA", "typ": "at+jwt"}), &claims);
    let crit = sign(&p, &json!({"alg": "EdDSA", "typ": "at+jwt", "crit": ["x-unk"], "x-unk": 1}), &claims);
    let auth = format!("Bearer {plain}");
    let r = p.send(&request("GET", "/v1/tx", &[("Authorization", &auth)]));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let auth = format!("Bearer {crit}");
    let r = p.send(&request("GET", "/v1/tx", &[("Authorization", &auth)]));
    assert_error(&r, 401, Some("invalid_token"));
}

#[test]
fn upgrade_is_removed_on_a_route_without_websocket() {
    let up = Upstream::start();
    let p = token_proxy(up.addr, &new_key(), "", ROUTES);
    let r = p.send(&request("GET", "/public/x", &[("Upgrade", "websocket"), ("Connection", "Upgrade")]));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let echo = Echo::from(&r);
    assert!(!echo.has("upgrade"), "Upgrade reached the upstream");
    assert!(echo.values("connection").iter().all(|v| !v.to_ascii_lowercase().contains("upgrade")));
}

/// An upstream that answers every request with 101 and then records what follows.
fn switching_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
                let mut after = Vec::new();
                let _ = s.read_to_end(&mut after);
                let mut all = buf[..n].to_vec();
                all.extend_from_slice(b"\n--after--\n");
                all.extend_from_slice(&after);
                let _ = tx.send(all);
            });
        }
    });
    (addr, rx)
}

#[test]
fn a_101_on_a_route_without_websocket_is_answered_502() {
    let (up, seen) = switching_upstream();
    let p = token_proxy(up, &new_key(), "", ROUTES);
    let marker = new_marker();
    let mut raw = request("GET", "/public/x", &[("Upgrade", "websocket"), ("Connection", "Upgrade")]);
    // A smuggled request that must never reach the upstream.
    raw.extend_from_slice(format!("GET /v1/tx HTTP/1.1\r\nHost: x\r\nX-Auth-Credential: {marker}\r\n\r\n").as_bytes());
    let r = p.send(&raw);
    assert_error(&r, 502, Some("upstream_unavailable"));
    if let Ok(bytes) = seen.recv_timeout(Duration::from_secs(5)) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&marker), "smuggled bytes reached the upstream: {text}");
        assert!(!text.to_ascii_lowercase().contains("upgrade: websocket"), "{text}");
    }
}

#[test]
fn jwks_url_over_plain_http_is_refused_except_loopback() {
    let dir = write_config(
        &format!(
            "{}tokens:\n  external_issuers:\n    - issuer: \"https://idp.example/\"\n      audience: \"a\"\n      jwks_url: \"http://idp.example/jwks.json\"\nroutes: []\n",
            main_head("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), "127.0.0.1:3".parse().unwrap())
        ),
        "",
    );
    let out = run_bin(&["check", "--config", "portcullis.yaml"], dir.path(), Duration::from_secs(20)).expect("check runs");
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("must be https://"), "{text}");
    assert!(text.contains("portcullis.yaml:"), "the error names the file and line: {text}");
}

#[test]
fn host_must_be_one_well_formed_value() {
    let up = Upstream::start();
    let p = token_proxy(up.addr, &new_key(), "", ROUTES);
    let r = p.send(b"GET /public/x HTTP/1.1\r\nHost: evil.example/v1/x\r\n\r\n");
    assert_error(&r, 400, Some("invalid_request"));
    let r = p.send(b"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_error(&r, 400, Some("invalid_request"));
    let r = p.send(b"GET /public/x HTTP/1.1\r\nHost: api.example:8080\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body_text());
    // HTTP/1.0 without Host is forwarded with the upstream's host:port.
    let r = p.send(b"GET /public/x HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(Echo::from(&r).one("host"), up.addr.to_string());
}
