//! Signing keys (PKCS#8 PEM: Ed25519, P-256, RSA), their public JWKs, JWKS parsing, and
//! JWS signatures, all with `ring` directly. The algorithm always comes from the key, never
//! from a token.
//!
//! Why no JWT crate: portcullis signs one kind of token and checks signatures itself
//! (`super::verify_uncached` checks the claims with `super::claims`); `jsonwebtoken`'s
//! `decode`/`Validation` were never called. jsonwebtoken 9.3 is flagged for
//! GHSA-h395-gr6q-cpjc (claim type confusion in `Validation`, fixed in 10.3), and 10.x
//! offers only aws-lc-rs or RustCrypto (whose `rsa` crate carries RUSTSEC-2023-0071) as
//! backends: either is a second crypto stack beside the `ring` that rustls and pingora
//! already use. What the crate did here — parse a JOSE header and a JWK, sign and verify
//! one signature — is a page of code over `ring`, so it is done here.
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{self as sig, KeyPair};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// A JWS signature algorithm (RFC 7518 §3) that a key of ours or an issuer's can use.
/// HMAC (`HS*`) and `none` are never accepted, so they are not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    EdDSA,
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
}

impl Algorithm {
    /// The JOSE name (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
        }
    }

    /// The algorithm named `name`, exactly as JOSE spells it; `None` for any other.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "EdDSA" => Algorithm::EdDSA,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            _ => return None,
        })
    }

    /// ring's verification for the non-RSA algorithms (RSA keys are components, not bytes).
    fn ring_unparsed(self) -> Option<&'static dyn sig::VerificationAlgorithm> {
        match self {
            Algorithm::EdDSA => Some(&sig::ED25519),
            Algorithm::ES256 => Some(&sig::ECDSA_P256_SHA256_FIXED),
            Algorithm::ES384 => Some(&sig::ECDSA_P384_SHA384_FIXED),
            _ => None,
        }
    }

    /// ring's RSA parameters (at least 2048-bit moduli), for the RSA algorithms.
    fn ring_rsa(self) -> Option<&'static sig::RsaParameters> {
        match self {
            Algorithm::RS256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => Some(&sig::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => Some(&sig::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => Some(&sig::RSA_PSS_2048_8192_SHA512),
            _ => None,
        }
    }
}

/// The public half of a verification key, as ring takes it.
#[derive(Clone)]
enum PublicKey {
    /// Ed25519: the 32-byte key; EC: the uncompressed point `04 || x || y`.
    Bytes(Vec<u8>),
    /// RSA: modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// A key that verifies tokens, with the one algorithm it accepts.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: PublicKey,
}

impl VerifyKey {
    /// Whether `signature` (raw bytes, as the JWS carries them base64url-decoded) is this
    /// key's signature of `message` under its own algorithm.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match (&self.key, self.alg.ring_unparsed(), self.alg.ring_rsa()) {
            (PublicKey::Bytes(b), Some(alg), _) => sig::UnparsedPublicKey::new(alg, b).verify(message, signature).is_ok(),
            (PublicKey::Rsa { n, e }, _, Some(params)) => {
                sig::RsaPublicKeyComponents { n, e }.verify(params, message, signature).is_ok()
            }
            _ => false,
        }
    }

    /// Verifies a compact JWS's `signature` part (base64url text) over `message`
    /// (`header.payload`); false when it is not base64url.
    pub fn verify_b64(&self, message: &[u8], signature: &str) -> bool {
        URL_SAFE_NO_PAD.decode(signature).is_ok_and(|s| self.verify(message, &s))
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

/// The private half of our signing key.
enum KeyPairKind {
    Ed25519(sig::Ed25519KeyPair),
    Ecdsa(sig::EcdsaKeyPair),
    Rsa(sig::RsaKeyPair),
}

/// Our signing key: private half for the token endpoint, public half for verification
/// and the JWKS.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pair: Arc<KeyPairKind>,
    pub verify: VerifyKey,
    /// The public JWK, as published at `/.well-known/jwks.json`.
    pub jwk: Value,
}

/// A signature could not be made (ring's `Unspecified`: the system RNG failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signature could not be made")]
pub struct SignError;

impl SigningKey {
    /// Signs `message` with this key's algorithm: raw signature bytes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let rng = ring::rand::SystemRandom::new();
        match &*self.pair {
            KeyPairKind::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            KeyPairKind::Ecdsa(kp) => kp.sign(&rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| SignError),
            KeyPairKind::Rsa(kp) => {
                let mut out = vec![0u8; kp.public().modulus_len()];
                kp.sign(&sig::RSA_PKCS1_SHA256, &rng, message, &mut out).map_err(|_| SignError)?;
                Ok(out)
            }
        }
    }

    /// A compact JWS: `header` and `payload` (JSON) base64url-encoded, then signed.
    pub fn sign_jws(&self, header: &Value, payload: &Value) -> Result<String, SignError> {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload.to_string()));
        let signature = self.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// Keys compare by `kid` and algorithm (the `kid` is a thumbprint of the public key).
impl PartialEq for VerifyKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.alg == other.alg
    }
}
impl Eq for VerifyKey {}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.alg == other.alg
    }
}
impl Eq for SigningKey {}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

/// A JWS protected header, as far as verification reads it. `alg` is `None` when it names
/// an algorithm no key here has (`HS256`, …): such a token matches no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Option<Algorithm>,
    pub typ: Option<String>,
    pub kid: Option<String>,
    /// The header names a key or certificate of its own (`jwk`, `jku`, `x5u`, `x5c`).
    pub names_own_key: bool,
    /// The header has a `crit` member (whatever its value).
    pub crit: bool,
}

/// JOSE `alg` values that are registered but that no key here verifies.
const FOREIGN_ALGS: [&str; 3] = ["HS256", "HS384", "HS512"];

/// Decodes the protected header of a compact JWS (three `.`-separated parts). Fails on a
/// token that is not three parts, a header that is not base64url JSON, a missing or
/// unknown `alg` (`none` included), or a `typ`/`kid` that is not a string: `None` then.
pub fn decode_header(token: &str) -> Option<Header> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(h).ok()?;
    let m: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    let alg = match m.get("alg").and_then(Value::as_str) {
        Some(a) if FOREIGN_ALGS.contains(&a) => None,
        Some(a) => Some(Algorithm::from_name(a)?),
        None => return None,
    };
    let text = |name: &str| -> Option<Option<String>> {
        match m.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        }
    };
    let present = |name: &str| m.get(name).is_some_and(|v| !v.is_null());
    Some(Header {
        alg,
        typ: text("typ")?,
        kid: text("kid")?,
        names_own_key: ["jwk", "jku", "x5u", "x5c"].iter().any(|n| present(n)),
        crit: m.contains_key("crit"),
    })
}

/// Decodes the first PEM block labelled `PRIVATE KEY` (PKCS#8).
fn pem_pkcs8(text: &str) -> Result<Vec<u8>, String> {
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let start = text.find(begin).ok_or_else(|| {
        if text.contains("BEGIN RSA PRIVATE KEY") || text.contains("BEGIN EC PRIVATE KEY") {
            "the key is not PKCS#8: convert it with `openssl pkcs8 -topk8 -nocrypt`".to_string()
        } else if text.contains("ENCRYPTED PRIVATE KEY") {
            "the key is encrypted: portcullis needs an unencrypted PKCS#8 key".to_string()
        } else {
            "no -----BEGIN PRIVATE KEY----- block (PKCS#8 PEM) found".to_string()
        }
    })? + begin.len();
    let stop = text[start..].find(end).ok_or("the PEM block has no END line")? + start;
    let b64: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).map_err(|e| format!("the PEM block is not valid base64: {e}"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_RSA: &[u8] = &[0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];

/// RFC 7638 JWK thumbprint, base64url: the `kid`.
fn thumbprint(required: &Value) -> String {
    // serde_json's Map is ordered by key, which is the canonical order RFC 7638 asks for.
    let canon = serde_json::to_string(required).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(Sha256::digest(canon.as_bytes()))
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Loads a PKCS#8 PEM private key (Ed25519 → EdDSA, P-256 → ES256, RSA → RS256).
pub fn load_signing_key(pem: &str) -> Result<SigningKey, String> {
    let der = pem_pkcs8(pem)?;
    let rejected = |e: ring::error::KeyRejected| format!("the key was rejected: {e}");
    let (alg, required, pair) = if contains(&der, OID_ED25519) {
        let kp = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(rejected)?;
        let x = b64(kp.public_key().as_ref());
        (Algorithm::EdDSA, json!({"crv": "Ed25519", "kty": "OKP", "x": x}), KeyPairKind::Ed25519(kp))
    } else if contains(&der, OID_EC_PUBLIC_KEY) {
        if !contains(&der, OID_P256) {
            return Err("only the P-256 curve is supported for EC keys".into());
        }
        let rng = ring::rand::SystemRandom::new();
        let kp = sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).map_err(rejected)?;
        let pt = kp.public_key().as_ref();
        if pt.len() != 65 {
            return Err("unexpected P-256 public key encoding".into());
        }
        let required = json!({"crv": "P-256", "kty": "EC", "x": b64(&pt[1..33]), "y": b64(&pt[33..])});
        (Algorithm::ES256, required, KeyPairKind::Ecdsa(kp))
    } else if contains(&der, OID_RSA) {
        let kp = sig::RsaKeyPair::from_pkcs8(&der).map_err(rejected)?;
        if kp.public().modulus_len() < 256 {
            return Err("RSA keys must have at least 2048 bits".into());
        }
        let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
        (Algorithm::RS256, json!({"e": b64(&c.e), "kty": "RSA", "n": b64(&c.n)}), KeyPairKind::Rsa(kp))
    } else {
        return Err("unsupported key type: use Ed25519, P-256 or RSA".into());
    };
    let kid = thumbprint(&required);
    let mut jwk = required.clone();
    if let Some(o) = jwk.as_object_mut() {
        o.insert("kid".into(), json!(kid));
        o.insert("use".into(), json!("sig"));
        o.insert("alg".into(), json!(alg.name()));
    }
    let verify = verify_key_from_jwk(&jwk)?;
    Ok(SigningKey { kid, alg, pair: Arc::new(pair), verify, jwk })
}

/// Generates a new PKCS#8 PEM private key: `ed25519` (default) or `p256`.
pub fn generate_pem(alg: &str) -> Result<String, String> {
    let rng = ring::rand::SystemRandom::new();
    let der = match alg {
        "ed25519" | "EdDSA" => sig::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "key generation failed".to_string())?
            .as_ref()
            .to_vec(),
        "p256" | "P-256" | "ES256" => sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "key generation failed".to_string())?
            .as_ref()
            .to_vec(),
        other => {
            return Err(format!(
                "cannot generate {other:?} keys: use ed25519 or p256 (for RSA: openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048)"
            ))
        }
    };
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    alg.name()
}

/// A base64url member of a JWK, decoded.
fn member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk.get(name).and_then(Value::as_str).ok_or_else(|| format!("bad JWK: no {name:?}"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("bad JWK: {name:?} is not base64url"))
}

/// A verification key from one JWK (a JSON object). The algorithm follows from the key
/// type and curve (for RSA, from the JWK's `alg` when it names an RSA algorithm; RS256 when
/// absent); symmetric (`oct`) and unknown key types are refused, and so is a point that is
/// not on its curve or a modulus under 2048 bits (when the key is used).
pub fn verify_key_from_jwk(jwk: &Value) -> Result<VerifyKey, String> {
    let m = jwk.as_object().ok_or("bad JWK: not a JSON object")?;
    let text = |name: &str| m.get(name).and_then(Value::as_str);
    let kid = match m.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("bad JWK: kid is not a string".into()),
    };
    let declared = text("alg");
    let (alg, key) = match (text("kty"), text("crv")) {
        (Some("OKP"), Some("Ed25519")) => {
            let x = member(m, "x")?;
            if x.len() != 32 {
                return Err("bad JWK: an Ed25519 key is 32 bytes".into());
            }
            (Algorithm::EdDSA, PublicKey::Bytes(x))
        }
        (Some("OKP"), _) => return Err("unsupported OKP curve".into()),
        (Some("EC"), crv) => {
            let (alg, len) = match crv {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                _ => return Err("unsupported EC curve".into()),
            };
            let (x, y) = (member(m, "x")?, member(m, "y")?);
            if x.len() != len || y.len() != len {
                return Err("bad JWK: the EC coordinates do not fit the curve".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (alg, PublicKey::Bytes(point))
        }
        (Some("RSA"), _) => {
            let alg = match declared {
                None => Algorithm::RS256,
                Some(a) => match Algorithm::from_name(a).filter(|a| a.ring_rsa().is_some()) {
                    Some(alg) => alg,
                    None => return Err(format!("RSA key declares algorithm {a}")),
                },
            };
            (alg, PublicKey::Rsa { n: member(m, "n")?, e: member(m, "e")? })
        }
        (Some("oct"), _) => return Err("symmetric (oct) keys are not accepted".into()),
        _ => return Err("unsupported key type".into()),
    };
    Ok(VerifyKey { kid, alg, key })
}

/// Parses a JWKS document; keys that cannot verify (wrong type, `use: enc`, malformed) are
/// skipped and reported. Errors only when the document itself is not a JWKS (a JSON object
/// with a `keys` array).
pub fn parse_jwks(text: &str) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let set = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWKS document: no \"keys\" array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for jwk in set {
        let kid = jwk.get("kid").and_then(Value::as_str);
        if jwk.get("use").and_then(Value::as_str) == Some("enc") {
            skipped.push(format!("key {kid:?} is for encryption"));
            continue;
        }
        match verify_key_from_jwk(jwk) {
            Ok(k) => keys.push(k),
            Err(e) => skipped.push(format!("key {kid:?}: {e}")),
        }
    }
    Ok((keys, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(der: &[u8]) -> String {
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der))
    }

    #[test]
    fn loads_ed25519_and_p256() {
        let rng = ring::rand::SystemRandom::new();
        let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let k = load_signing_key(&pem(ed.as_ref())).unwrap();
        assert_eq!(k.alg, Algorithm::EdDSA);
        assert_eq!(k.jwk["kty"], "OKP");
        assert_eq!(k.kid.len(), 43);
        let ec = ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let k = load_signing_key(&pem(ec.as_ref())).unwrap();
        assert_eq!(k.alg, Algorithm::ES256);
        assert_eq!(k.jwk["crv"], "P-256");
    }

    #[test]
    fn generated_keys_load() {
        assert_eq!(load_signing_key(&generate_pem("ed25519").unwrap()).unwrap().alg, Algorithm::EdDSA);
        assert_eq!(load_signing_key(&generate_pem("p256").unwrap()).unwrap().alg, Algorithm::ES256);
        assert!(generate_pem("rsa").is_err());
    }

    #[test]
    fn refuses_non_pkcs8() {
        assert!(load_signing_key("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----").unwrap_err().contains("PKCS#8"));
        assert!(load_signing_key("nothing").is_err());
        assert!(load_signing_key(&pem(b"garbage")).is_err());
    }

    fn header(v: serde_json::Value) -> Option<Header> {
        decode_header(&format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(v.to_string())))
    }

    #[test]
    fn allows_a_well_formed_header() {
        let h = header(json!({"alg": "ES256", "typ": "at+jwt", "kid": "k"})).unwrap();
        assert_eq!((h.alg, h.typ.as_deref(), h.kid.as_deref()), (Some(Algorithm::ES256), Some("at+jwt"), Some("k")));
        assert!(!h.names_own_key && !h.crit);
        // HMAC is read (so it can be refused by key choice), never matched to a key.
        assert_eq!(header(json!({"alg": "HS256"})).unwrap().alg, None);
    }

    #[test]
    fn denies_a_malformed_header() {
        for bad in [json!({"alg": "none"}), json!({}), json!({"alg": "es256"}), json!({"alg": "EdDSA", "kid": 7}), json!(["alg"])] {
            assert_eq!(header(bad.clone()), None, "{bad}");
        }
        assert_eq!(decode_header("e30.e30"), None);
        assert_eq!(decode_header("a.b.c.d"), None);
        let h = header(json!({"alg": "EdDSA", "jku": "https://evil", "crit": null})).unwrap();
        assert!(h.names_own_key && h.crit);
    }

    #[test]
    fn allows_its_own_signature_with_each_key_type() {
        let rsa = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let mut pems = vec![generate_pem("ed25519").unwrap(), generate_pem("p256").unwrap()];
        pems.extend(rsa);
        assert!(pems.len() == 3, "openssl is needed to make an RSA test key");
        for pem in pems {
            let k = load_signing_key(&pem).unwrap();
            let token = k.sign_jws(&json!({"alg": k.alg.name(), "kid": k.kid}), &json!({"sub": "s"})).unwrap();
            let (message, signature) = token.rsplit_once('.').unwrap();
            assert!(k.verify.verify_b64(message.as_bytes(), signature), "{:?}", k.alg);
            // The published JWK verifies it too.
            let published = verify_key_from_jwk(&k.jwk).unwrap();
            assert!(published.verify_b64(message.as_bytes(), signature), "{:?}", k.alg);
        }
    }

    #[test]
    fn denies_a_changed_message_or_another_key() {
        let a = load_signing_key(&generate_pem("ed25519").unwrap()).unwrap();
        let b = load_signing_key(&generate_pem("ed25519").unwrap()).unwrap();
        let token = a.sign_jws(&json!({"alg": "EdDSA"}), &json!({"sub": "s"})).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        assert!(!a.verify.verify_b64(format!("{message}x").as_bytes(), signature));
        assert!(!b.verify.verify_b64(message.as_bytes(), signature));
        assert!(!a.verify.verify_b64(message.as_bytes(), "not base64!"));
        // An ES256 signature is never checked as EdDSA: the key's algorithm decides.
        let p = load_signing_key(&generate_pem("p256").unwrap()).unwrap();
        let es = p.sign(message.as_bytes()).unwrap();
        assert!(!a.verify.verify(message.as_bytes(), &es));
    }

    #[test]
    fn denies_jwks_keys_that_do_not_fit_their_type() {
        let (keys, skipped) = parse_jwks(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"},{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"},
                {"kty":"EC","crv":"P-521","x":"AA","y":"AA"},{"kty":"RSA","alg":"HS256","n":"AQAB","e":"AQAB"},
                {"kty":"OKP","crv":"Ed25519","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
                {"kty":"OKP","crv":"Ed25519","kid":"ok","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), vec![Some("ok")]);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
    }

    #[test]
    fn jwks_refuses_symmetric_keys() {
        let (keys, skipped) = parse_jwks(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#).unwrap();
        assert!(keys.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(parse_jwks("{}").is_err());
    }
}
