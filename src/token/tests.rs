//! Bearer verification in `allows_…`/`denies_…` pairs: key choice by `kid` and the key's
//! own algorithm, `typ`, `crit`, and a cached token never outliving its `exp`.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::*;
use crate::config;

const ISS: &str = "https://auth.unit.example";
const AUD: &str = "wallet-api";
const T: i64 = 1_900_000_000;

fn snapshot() -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("signing.pem"), keys::generate_pem("ed25519").unwrap()).unwrap();
    let main = format!(
        "listen: \"127.0.0.1:18080\"\nupstream: \"127.0.0.1:13000\"\nadmin_listen: \"127.0.0.1:19901\"\n\
         environment: sandbox\ncredentials_file: credentials.yaml\n\
         tokens:\n  issuer: \"{ISS}\"\n  audience: \"{AUD}\"\n  signing_key: signing.pem\n  leeway: 30\nroutes: []\n"
    );
    let hash = format!("sha256:{}", hex::encode(Sha256::digest(b"unit-secret")));
    let creds = format!(
        "clients:\n  - id: svc\n    secret_hash: \"{hash}\"\n    permissions: [\"transactions:read\"]\n    expires: 2099-01-01\n"
    );
    std::fs::write(dir.path().join("portcullis.yaml"), main).unwrap();
    std::fs::write(dir.path().join("credentials.yaml"), creds).unwrap();
    config::load(&dir.path().join("portcullis.yaml"), 0).unwrap()
}

fn claims(client: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": client, "client_id": client, "iat": T, "exp": T + 300,
           "jti": "j-1", "scope": "transactions:read"})
}

fn sign(snap: &Snapshot, header: &Value, claims: &Value) -> String {
    let signer = snap.tokens.as_ref().and_then(|t| t.signer.as_ref()).unwrap();
    signer.sign_jws(header, claims).unwrap()
}

fn kid(snap: &Snapshot) -> String {
    snap.tokens.as_ref().and_then(|t| t.signer.as_ref()).unwrap().kid.clone()
}

fn denied(snap: &Snapshot, token: &str, now: i64) -> String {
    let e = authenticate_bearer_uncached(snap, token, now).expect_err("denied");
    assert_eq!(e.reason, Reason::InvalidToken);
    e.description
}

#[test]
fn allows_our_key_by_kid_and_denies_an_unknown_kid() {
    let snap = snapshot();
    let good = sign(&snap, &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid(&snap)}), &claims("svc"));
    let id = authenticate_bearer_uncached(&snap, &good, T).expect("our own token");
    assert_eq!(id.credential.as_ref(), "svc");
    assert_eq!(id.kind, CredentialKind::Client);
    let other = sign(&snap, &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "not-ours"}), &claims("svc"));
    assert!(denied(&snap, &other, T).contains("signing key is not known"));
}

#[test]
fn denies_an_algorithm_other_than_the_keys() {
    let snap = snapshot();
    // Signed with the Ed25519 key but labelled HS256/ES256: the key's algorithm rules.
    for alg in ["HS256", "ES256", "RS256"] {
        let mut t = sign(&snap, &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid(&snap)}), &claims("svc"));
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "at+jwt", "kid": kid(&snap)}).to_string());
        let dot = t.find('.').unwrap();
        t.replace_range(..dot, &header);
        denied(&snap, &t, T);
    }
    let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#), URL_SAFE_NO_PAD.encode(claims("svc").to_string()));
    denied(&snap, &none, T);
}

#[test]
fn allows_typ_at_jwt_and_denies_other_types() {
    let snap = snapshot();
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        let t = sign(&snap, &json!({"alg": "EdDSA", "typ": typ}), &claims("svc"));
        authenticate_bearer_uncached(&snap, &t, T).unwrap_or_else(|e| panic!("typ {typ}: {e:?}"));
    }
    for header in [json!({"alg": "EdDSA", "typ": "JWT"}), json!({"alg": "EdDSA"})] {
        let t = sign(&snap, &header, &claims("svc"));
        assert!(denied(&snap, &t, T).contains("typ at+jwt"), "{header}");
    }
}

#[test]
fn denies_a_crit_header_and_allows_the_same_token_without() {
    let snap = snapshot();
    let with = sign(&snap, &json!({"alg": "EdDSA", "typ": "at+jwt", "crit": ["exp"]}), &claims("svc"));
    assert!(denied(&snap, &with, T).contains("crit"));
    let without = sign(&snap, &json!({"alg": "EdDSA", "typ": "at+jwt"}), &claims("svc"));
    assert!(authenticate_bearer_uncached(&snap, &without, T).is_ok());
}

#[test]
fn a_cached_token_is_allowed_until_exp_and_denied_after() {
    let snap = snapshot();
    let t = sign(&snap, &json!({"alg": "EdDSA", "typ": "at+jwt"}), &claims("svc"));
    assert!(authenticate_bearer(&snap, &t, T).is_ok(), "first use verifies and caches");
    assert!(authenticate_bearer(&snap, &t, T + 300 + 29).is_ok(), "within exp + leeway");
    let e = authenticate_bearer(&snap, &t, T + 300 + 30).expect_err("the cache never outlives exp");
    assert_eq!(e.reason, Reason::InvalidToken);
}

#[test]
fn denies_a_token_of_an_unknown_client() {
    let snap = snapshot();
    let t = sign(&snap, &json!({"alg": "EdDSA", "typ": "at+jwt"}), &claims("gone"));
    assert!(denied(&snap, &t, T).contains("no longer exists"));
}
