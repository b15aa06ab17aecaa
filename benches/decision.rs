//! Criterion benches for the decision path (run: `cargo bench --bench decision`).
//!
//! - `decide/api_key/{creds}x{routes}`: sanity + route match + key lookup + allowlist +
//!   permission for one request, with 10 / 1,000 / 100,000 credentials and 10 / 5,000 routes;
//! - `decide/bearer_cached/…`: the same with a Bearer token already verified once;
//! - `bearer_cold/{alg}` vs `crypto_only/{alg}`: full verification of a token (no cache)
//!   against the bare signature check of the crypto library (ring) on the same bytes;
//! - `snapshot_build/100000`: parse + validate a 100,000-credential file.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use sha2::{Digest, Sha256};

use portcullis::config::{self, Snapshot};
use portcullis::pipeline::{decide, RequestView};
use portcullis::token;

const NOW: i64 = 1_900_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    main: PathBuf,
}

fn write_fixture(creds: usize, routes: usize, key_pem: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut main = String::from(
        "listen: \"127.0.0.1:1\"\nupstream: \"127.0.0.1:2\"\nenvironment: production\ncredentials_file: credentials.yaml\n",
    );
    if let Some(pem) = key_pem {
        std::fs::write(dir.path().join("signing.pem"), pem).expect("write key");
        main.push_str("tokens:\n  issuer: \"https://bench\"\n  audience: \"api\"\n  signing_key: signing.pem\n");
    }
    main.push_str("routes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n");
    for i in 1..routes {
        main.push_str(&format!("  - match: \"POST /v1/r{i}/vaults/{{vault_id}}/items/{{key_id}}\"\n    require: \"key:create\"\n"));
    }
    let mut c = String::from("clients:\n  - id: bench-client\n    secret_hash: \"sha256:");
    c.push_str(&hex::encode(Sha256::digest(b"bench-secret")));
    c.push_str("\"\n    permissions: [\"balances:read@vault\"]\n    allowed_ips: [\"127.0.0.0/8\"]\n    expires: 2099-01-01\napi_keys:\n");
    for i in 0..creds {
        let h = hex::encode(Sha256::digest(format!("bench-key-{i}").as_bytes()));
        c.push_str(&format!(
            "  - name: key-{i}\n    key_hash: \"sha256:{h}\"\n    permissions: [\"balances:read@vault/v-{}\", \"transactions:read\"]\n    allowed_ips: [\"127.0.0.1\", \"10.0.0.0/8\"]\n    expires: 2099-01-01\n",
            i % 100
        ));
    }
    std::fs::write(dir.path().join("credentials.yaml"), c).expect("write creds");
    let main_path = dir.path().join("portcullis.yaml");
    std::fs::write(&main_path, main).expect("write main");
    Fixture { _dir: dir, main: main_path }
}

fn load(f: &Fixture) -> Snapshot {
    config::load(&f.main, NOW).unwrap_or_else(|e| panic!("fixture does not load: {e}"))
}

fn bench_api_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide/api_key");
    for (creds, routes) in [(10, 10), (1_000, 10), (100_000, 10), (10, 5_000), (100_000, 5_000)] {
        let f = write_fixture(creds, routes, None);
        let snap = load(&f);
        let key = format!("bench-key-{}", creds / 2);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_str(&key).expect("hv"));
        let target = format!("/v1/vaults/v-{}/balances", (creds / 2) % 100);
        let view = RequestView { method: &Method::GET, target: target.as_bytes(), headers: &headers, peer: "127.0.0.1".parse().expect("ip"), checked_path: None };
        assert!(decide(&snap, &view, NOW).result.is_ok());
        g.bench_function(BenchmarkId::from_parameter(format!("{creds}x{routes}")), |b| {
            b.iter(|| black_box(decide(black_box(&snap), black_box(&view), NOW)))
        });
    }
    g.finish();
}

fn rsa_pem() -> Option<String> {
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn token_for(snap: &Snapshot) -> String {
    let ts = snap.tokens.as_ref().expect("tokens");
    let signer = ts.signer.as_ref().expect("signer");
    token::endpoint::sign(ts, signer, "bench-client", "balances:read@vault", NOW, NOW + 3600).expect("sign")
}

fn bench_bearer(c: &mut Criterion) {
    let mut keys: Vec<(&str, String)> = vec![
        ("ed25519", token::keys::generate_pem("ed25519").expect("ed")),
        ("p256", token::keys::generate_pem("p256").expect("p256")),
    ];
    if let Some(rsa) = rsa_pem() {
        keys.push(("rsa2048", rsa));
    }
    let mut cached = c.benchmark_group("decide/bearer_cached");
    for creds in [10, 100_000] {
        let f = write_fixture(creds, 10, Some(&keys[0].1));
        let snap = load(&f);
        let tok = format!("Bearer {}", token_for(&snap));
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(&tok).expect("hv"));
        let view = RequestView { method: &Method::GET, target: b"/v1/vaults/v-7/balances", headers: &headers, peer: "127.0.0.1".parse().expect("ip"), checked_path: None };
        assert!(decide(&snap, &view, NOW).result.is_ok(), "{:?}", decide(&snap, &view, NOW).result);
        cached.bench_function(BenchmarkId::from_parameter(format!("{creds}x10")), |b| {
            b.iter(|| black_box(decide(black_box(&snap), black_box(&view), NOW)))
        });
    }
    cached.finish();

    let mut cold = c.benchmark_group("bearer_cold");
    for (name, pem) in &keys {
        let f = write_fixture(10, 10, Some(pem));
        let snap = load(&f);
        let tok = token_for(&snap);
        assert!(token::authenticate_bearer_uncached(&snap, &tok, NOW).is_ok());
        cold.bench_function(*name, |b| {
            b.iter(|| black_box(token::authenticate_bearer_uncached(black_box(&snap), black_box(&tok), NOW)))
        });
        // The crypto library alone: ring's verification of the same signature.
        let (msg, sig) = tok.rsplit_once('.').expect("jws");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("b64");
        let jwk = &snap.tokens.as_ref().expect("t").signer.as_ref().expect("s").jwk;
        let b = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().expect("jwk field")).expect("b64");
        let (alg, pk): (&'static dyn ring::signature::VerificationAlgorithm, Vec<u8>) = match *name {
            "ed25519" => (&ring::signature::ED25519, b("x")),
            "p256" => (&ring::signature::ECDSA_P256_SHA256_FIXED, [vec![4u8], b("x"), b("y")].concat()),
            _ => {
                let der = rsa_public_der(&b("n"), &b("e"));
                (&ring::signature::RSA_PKCS1_2048_8192_SHA256, der)
            }
        };
        let key = ring::signature::UnparsedPublicKey::new(alg, pk);
        assert!(key.verify(msg.as_bytes(), &sig).is_ok());
        cold.bench_function(format!("crypto_only_{name}"), |bch| {
            bch.iter(|| black_box(key.verify(black_box(msg.as_bytes()), black_box(&sig))))
        });
    }
    cold.finish();
}

/// DER RSAPublicKey { n, e } for ring.
fn rsa_public_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn int(v: &[u8]) -> Vec<u8> {
        let mut body = v.to_vec();
        if body.first().is_some_and(|b| b & 0x80 != 0) {
            body.insert(0, 0);
        }
        let mut out = vec![0x02];
        out.extend(len(body.len()));
        out.extend(body);
        out
    }
    fn len(n: usize) -> Vec<u8> {
        if n < 128 {
            vec![n as u8]
        } else if n < 256 {
            vec![0x81, n as u8]
        } else {
            vec![0x82, (n >> 8) as u8, n as u8]
        }
    }
    let body = [int(n), int(e)].concat();
    let mut out = vec![0x30];
    out.extend(len(body.len()));
    out.extend(body);
    out
}

fn bench_snapshot(c: &mut Criterion) {
    let f = write_fixture(100_000, 10, None);
    let mut g = c.benchmark_group("snapshot_build");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("100000", |b| b.iter(|| black_box(load(&f))));
    g.finish();
}


criterion_group!(benches, bench_api_key, bench_bearer, bench_snapshot);
criterion_main!(benches);
