//! Signing keys (PKCS#8 PEM: Ed25519, P-256, RSA), their public JWKs, and JWKS parsing.
//! The algorithm always comes from the key, never from a token.
use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::signature::KeyPair;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A key that verifies tokens, with the one algorithm it accepts.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

/// Our signing key: private half for the token endpoint, public half for verification
/// and the JWKS.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub verify: VerifyKey,
    /// The public JWK, as published at `/.well-known/jwks.json`.
    pub jwk: Value,
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
    let (alg, required, encoding) = if contains(&der, OID_ED25519) {
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(rejected)?;
        let x = b64(kp.public_key().as_ref());
        (Algorithm::EdDSA, json!({"crv": "Ed25519", "kty": "OKP", "x": x}), EncodingKey::from_ed_der(&der))
    } else if contains(&der, OID_EC_PUBLIC_KEY) {
        if !contains(&der, OID_P256) {
            return Err("only the P-256 curve is supported for EC keys".into());
        }
        let rng = ring::rand::SystemRandom::new();
        let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &rng,
        )
        .map_err(rejected)?;
        let pt = kp.public_key().as_ref();
        if pt.len() != 65 {
            return Err("unexpected P-256 public key encoding".into());
        }
        (
            Algorithm::ES256,
            json!({"crv": "P-256", "kty": "EC", "x": b64(&pt[1..33]), "y": b64(&pt[33..])}),
            EncodingKey::from_ec_der(&der),
        )
    } else if contains(&der, OID_RSA) {
        let kp = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(rejected)?;
        if kp.public().modulus_len() < 256 {
            return Err("RSA keys must have at least 2048 bits".into());
        }
        let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
        let enc = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| format!("the RSA key was rejected: {e}"))?;
        (Algorithm::RS256, json!({"e": b64(&c.e), "kty": "RSA", "n": b64(&c.n)}), enc)
    } else {
        return Err("unsupported key type: use Ed25519, P-256 or RSA".into());
    };
    let kid = thumbprint(&required);
    let mut jwk = required.clone();
    if let Some(o) = jwk.as_object_mut() {
        o.insert("kid".into(), json!(kid));
        o.insert("use".into(), json!("sig"));
        o.insert("alg".into(), json!(alg_name(alg)));
    }
    let key = decoding_from_jwk(&jwk)?.key;
    Ok(SigningKey {
        kid: kid.clone(),
        alg,
        encoding,
        verify: VerifyKey { kid: Some(kid), alg, key },
        jwk,
    })
}

/// Generates a new PKCS#8 PEM private key: `ed25519` (default) or `p256`.
pub fn generate_pem(alg: &str) -> Result<String, String> {
    let rng = ring::rand::SystemRandom::new();
    let der = match alg {
        "ed25519" | "EdDSA" => ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "key generation failed".to_string())?
            .as_ref()
            .to_vec(),
        "p256" | "P-256" | "ES256" => ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
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
    match alg {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "HS",
    }
}

fn decoding_from_jwk(v: &Value) -> Result<VerifyKey, String> {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(v.clone()).map_err(|e| format!("bad JWK: {e}"))?;
    verify_key_from_jwk(&jwk)
}

/// A verification key from one JWK. The algorithm follows from the key type (and the
/// JWK's `alg`, when it names one consistent with the type); symmetric keys are refused.
pub fn verify_key_from_jwk(jwk: &jsonwebtoken::jwk::Jwk) -> Result<VerifyKey, String> {
    let declared = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("unsupported EC curve".into()),
        },
        AlgorithmParameters::RSA(_) => match declared.as_deref() {
            None | Some("RS256") => Algorithm::RS256,
            Some("RS384") => Algorithm::RS384,
            Some("RS512") => Algorithm::RS512,
            Some("PS256") => Algorithm::PS256,
            Some("PS384") => Algorithm::PS384,
            Some("PS512") => Algorithm::PS512,
            Some(other) => return Err(format!("RSA key declares algorithm {other}")),
        },
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) keys are not accepted".into()),
        _ => return Err("unsupported key type".into()),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad JWK: {e}"))?;
    Ok(VerifyKey { kid: jwk.common.key_id.clone(), alg, key })
}

/// Parses a JWKS document; keys that cannot verify (wrong type, `use: enc`) are skipped
/// and reported. Errors only when the document itself is not a JWKS.
pub fn parse_jwks(text: &str) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
            skipped.push(format!("key {:?} is for encryption", jwk.common.key_id));
            continue;
        }
        match verify_key_from_jwk(jwk) {
            Ok(k) => keys.push(k),
            Err(e) => skipped.push(format!("key {:?}: {e}", jwk.common.key_id)),
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

    #[test]
    fn jwks_refuses_symmetric_keys() {
        let (keys, skipped) = parse_jwks(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#).unwrap();
        assert!(keys.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(parse_jwks("{}").is_err());
    }
}
