//! TLS on the listener (edge gateway) and to the upstream, with real certificates made by
//! the openssl CLI and a real client (curl), including a certificate renewed by hot reload.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A self-signed certificate for localhost / 127.0.0.1 (cert.pem, key.pem in `dir`).
fn make_cert(dir: &Path, cn: &str) {
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}"), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl must be installed");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
}

/// A CA (ca.pem) and a leaf for localhost signed by it (cert.pem, key.pem) in `dir`:
/// webpki refuses a self-signed CA certificate presented as a server's own.
fn make_ca_and_leaf(dir: &Path) {
    let sh = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=test-ca -keyout ca-key.pem -out ca.pem 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout key.pem -out leaf.csr 2>/dev/null; \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; \
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem 2>/dev/null",
        d = dir.display()
    );
    let st = Command::new("sh").arg("-c").arg(sh).status().expect("sh");
    assert!(st.success(), "could not make a CA and a leaf with openssl");
}

/// curl over TLS trusting `ca`; returns (status, body).
fn curl(args: &[&str], ca: &Path, url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn subject_cn(ca: &Path, addr: std::net::SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | openssl s_client -connect {addr} -servername localhost -CAfile {} 2>/dev/null | openssl x509 -noout -subject",
            ca.display()
        ))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const ROUTES: &str = "routes:\n  - match: \"GET /v1/status\"\n    public: true\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n";

#[test]
fn tls_listener_serves_https_and_renews_its_certificate_on_reload() {
    let up = Upstream::start();
    let key = new_key();
    let creds = format!(
        "api_keys:\n  - name: k\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    expires: 2099-01-01\n",
        sha256_hash(&key)
    );
    let listen: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = format!("{}tls:\n  cert: tls/cert.pem\n  key: tls/key.pem\n{ROUTES}", main_head(listen, admin, up.addr));
    let dir = write_config(&main, &creds);
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    make_cert(&dir.path().join("tls"), "first");
    // Keep a copy of the first certificate as the trust anchor, then start.
    let ca1 = dir.path().join("ca1.pem");
    std::fs::copy(dir.path().join("tls/cert.pem"), &ca1).unwrap();
    let p = Proxy::spawn(dir, listen, admin);
    let url = format!("https://localhost:{}/v1/vaults/v-1/balances", listen.port());
    let resolve = format!("localhost:{}:127.0.0.1", listen.port());

    let (code, body) = curl(&["--resolve", &resolve, "-H", &format!("x-api-key: {key}")], &ca1, &url);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-auth-credential"), "{body}");
    let (code, body) = curl(&["--resolve", &resolve], &ca1, &url);
    assert_eq!(code, 401, "{body}");
    // HTTP/2 is offered on the TLS listener.
    let (code, _) = curl(&["--http2", "--resolve", &resolve, "-H", &format!("x-api-key: {key}")], &ca1, &url);
    assert_eq!(code, 200);
    // Plain HTTP to a TLS listener gets no answer.
    assert!(try_send_raw(None, listen, &request("GET", "/v1/status", &[])).map_or(true, |r| r.status != 200));

    // Renew: write a new certificate; the next handshake presents it, no restart.
    assert!(subject_cn(&ca1, listen).contains("first"));
    let tls_dir = p.dir.path().join("tls");
    let staging = p.dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    make_cert(&staging, "second");
    std::fs::rename(staging.join("key.pem"), tls_dir.join("key.pem")).unwrap();
    std::fs::rename(staging.join("cert.pem"), tls_dir.join("cert.pem")).unwrap();
    let ca2 = tls_dir.join("cert.pem");
    let t = Instant::now();
    loop {
        if subject_cn(&ca2, listen).contains("second") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the renewed certificate was not served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _) = curl(&["--resolve", &resolve, "-H", &format!("x-api-key: {key}")], &ca2, &url);
    assert_eq!(code, 200);
}

#[test]
fn bad_tls_files_stop_the_start_with_the_file_named() {
    let up = Upstream::start();
    let listen: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = format!("{}tls:\n  cert: cert.pem\n  key: key.pem\n{ROUTES}", main_head(listen, admin, up.addr));
    let dir = write_config(&main, "api_keys: []\n");
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(dir.path().join("portcullis.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cert.pem") && text.contains("no CERTIFICATE"), "{text}");
}

#[test]
fn upstream_over_tls_verified_against_a_ca() {
    // The TLS upstream is a second portcullis with a TLS listener and a public route,
    // in front of the mock wallet: a real TLS server that echoes what it received.
    let up = Upstream::start();
    let inner_listen: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let inner_admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let inner_main = format!(
        "{}tls:\n  cert: cert.pem\n  key: key.pem\nroutes:\n  - match: \"* /{{*rest}}\"\n    public: true\n",
        main_head(inner_listen, inner_admin, up.addr)
    );
    let inner_dir = write_config(&inner_main, "api_keys: []\n");
    make_ca_and_leaf(inner_dir.path());
    let ca_pem = std::fs::read_to_string(inner_dir.path().join("ca.pem")).unwrap();
    let _inner = Proxy::spawn(inner_dir, inner_listen, inner_admin);

    let key = new_key();
    let creds = format!(
        "api_keys:\n  - name: k\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    expires: 2099-01-01\n",
        sha256_hash(&key)
    );
    for (tls, expect) in [
        ("upstream_tls:\n  sni: localhost\n  ca: upstream-ca.pem\n", 200),
        // No CA given: the system roots do not know the self-signed upstream.
        ("upstream_tls:\n  sni: localhost\n", 502),
        // Wrong name.
        ("upstream_tls:\n  sni: wrong.example\n  ca: upstream-ca.pem\n", 502),
    ] {
        let listen: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let main = format!("{}{tls}{ROUTES}", main_head(listen, admin, inner_listen));
        let dir = write_config(&main, &creds);
        std::fs::write(dir.path().join("upstream-ca.pem"), &ca_pem).unwrap();
        let p = Proxy::spawn(dir, listen, admin);
        let r = p.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &key)]));
        assert_eq!(r.status, expect, "{tls}: {}", r.body_text());
        if expect == 200 {
            // Two hops: the outer sidecar, then the TLS one (which, like any portcullis,
            // strips the identity headers a caller — here the outer sidecar — sent it).
            let echo = Echo::from(&r);
            assert_eq!(echo.one("x-forwarded-for"), "127.0.0.1, 127.0.0.1");
        }
    }
}
