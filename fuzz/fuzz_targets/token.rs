//! Bearer tokens: `authenticate_bearer_uncached` against the fixture's snapshot (our own
//! Ed25519 issuer, one external P-256 issuer), and `parse_jwks`.
//!
//! Byte 0 picks the mode (mod 4):
//! 0: the rest is the token text, as presented.
//! 1: the rest is `header JSON` 0x00 `claims JSON` (any bytes), base64url'd and signed
//!    with our key (bit 7 of byte 0: with the external issuer's key).
//! 2: as 1, but each part, when it is a JSON object, is merged over a valid header and
//!    claims set (our own token; bit 7: the external issuer's), so claim checks run.
//! 3: the rest is a JWKS document for `parse_jwks`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::token::{authenticate_bearer_uncached, keys::parse_jwks};
use portcullis_fuzz::{fixture, sign_raw, AUDIENCE, IDP, ISSUER, NOW, PREFIX};
use serde_json::{json, Value};

fn merged(base: Value, over: &[u8]) -> Vec<u8> {
    let mut base = base;
    if let (Some(b), Ok(Value::Object(o))) = (base.as_object_mut(), serde_json::from_slice::<Value>(over)) {
        for (k, v) in o {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
    serde_json::to_vec(&base).unwrap_or_default()
}

fn check(token: &str) {
    let f = fixture();
    if let Ok(id) = authenticate_bearer_uncached(&f.snap, token, NOW) {
        // Whatever verifies was signed by one of the fixture's keys: in modes 1 and 2 only.
        assert!(!id.credential.is_empty());
    }
}

/// The harness can reach a success at all: the base tokens of mode 2 verify.
fn self_check() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let f = fixture();
        for (mode, who) in [(2u8, "own"), (0x82, "external")] {
            let key = if mode & 0x80 != 0 { &f.idp } else { &f.own };
            let (h, c) = bases(mode & 0x80 != 0);
            let t = sign_raw(&serde_json::to_vec(&h).unwrap_or_default(), &serde_json::to_vec(&c).unwrap_or_default(), key);
            if let Err(e) = authenticate_bearer_uncached(&f.snap, &t, NOW) {
                panic!("harness: the {who} base token does not verify: {e:?}");
            }
        }
    });
}

fn bases(idp: bool) -> (Value, Value) {
    let f = fixture();
    if idp {
        (
            json!({"alg": "ES256", "kid": f.idp.kid}),
            json!({"iss": IDP, "aud": AUDIENCE, "sub": "svc", "exp": NOW + 60, "iat": NOW,
                   "perms": ["balances:read", "key:update@vault/v-1"]}),
        )
    } else {
        let id = format!("{PREFIX}reporting");
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": f.own.kid}),
            json!({"iss": ISSUER, "aud": AUDIENCE, "sub": id, "client_id": id, "exp": NOW + 60,
                   "iat": NOW, "nbf": NOW, "jti": "j", "scope": "transactions:read balances:read@vault/v-1"}),
        )
    }
}

fuzz_target!(|data: &[u8]| {
    self_check();
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    let idp = mode & 0x80 != 0;
    let key = if idp { &f.idp } else { &f.own };
    match mode % 4 {
        0 => check(&String::from_utf8_lossy(rest)),
        1 | 2 => {
            let cut = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let (h, c) = (&rest[..cut], rest.get(cut + 1..).unwrap_or_default());
            let (h, c) = if mode % 4 == 1 {
                (h.to_vec(), c.to_vec())
            } else {
                let (hb, cb) = bases(idp);
                (merged(hb, h), merged(cb, c))
            };
            check(&sign_raw(&h, &c, key));
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok((keys, _skipped)) = parse_jwks(text) {
                    let _ = keys.len();
                }
            }
        }
    }
});
