//! New secrets (prefix, 256 random bits in base62, a checksum) and their stored hashes.
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::Kind;
use crate::config::Environment;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random base62 characters in a secret: 43·log2(62) ≈ 256.03 bits.
pub const SECRET_CHARS: usize = 43;

/// A new secret: prefix, 43 random base62 characters from the OS RNG, 6-character checksum.
pub fn new_secret(kind: Kind, env: Environment) -> String {
    let prefix = match (kind, env) {
        (Kind::ApiKey, Environment::Production) => "pcl_live_",
        (Kind::ApiKey, Environment::Sandbox) => "pcl_test_",
        (Kind::Client, Environment::Production) => "pcs_live_",
        (Kind::Client, Environment::Sandbox) => "pcs_test_",
    };
    let mut s = String::from(prefix);
    while s.len() < prefix.len() + SECRET_CHARS {
        let mut buf = [0u8; 64];
        OsRng.fill_bytes(&mut buf);
        // 248 = 4·62: rejecting the rest keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if s.len() < prefix.len() + SECRET_CHARS {
                s.push(BASE62[(*b % 62) as usize] as char);
            }
        }
    }
    let sum = checksum(&s);
    s.push_str(&sum);
    s
}

/// Whether `secret` looks like one of ours with an intact checksum.
pub fn checksum_ok(secret: &str) -> bool {
    secret.len() > 6 && secret.is_char_boundary(secret.len() - 6) && {
        let (body, sum) = secret.split_at(secret.len() - 6);
        checksum(body) == sum
    }
}

/// CRC-32 (IEEE) of `s`, as 6 base62 characters.
fn checksum(s: &str) -> String {
    let mut crc = 0xFFFF_FFFFu32;
    for b in s.bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut n = u64::from(!crc);
    let mut out = [b'0'; 6];
    for c in out.iter_mut().rev() {
        *c = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The stored form of a secret: `sha256:<hex>` for keys, an argon2id PHC string for clients.
pub fn hash_secret(kind: Kind, secret: &str) -> Result<String, String> {
    match kind {
        Kind::ApiKey => Ok(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(secret.as_bytes()))
        )),
        Kind::Client => {
            let mut salt = [0u8; 16];
            OsRng.fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).map_err(|e| format!("argon2 salt: {e}"))?;
            Argon2::default()
                .hash_password(secret.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| format!("argon2: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_a_prefix_256_bits_and_a_checksum() {
        let a = new_secret(Kind::ApiKey, Environment::Production);
        let b = new_secret(Kind::ApiKey, Environment::Production);
        assert_ne!(a, b);
        assert!(
            a.starts_with("pcl_live_") && a.len() == 9 + SECRET_CHARS + 6,
            "{a}"
        );
        assert!(a[9..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(new_secret(Kind::Client, Environment::Sandbox).starts_with("pcs_test_"));
        assert!(SECRET_CHARS as f64 * 62f64.log2() >= 256.0);
        assert!(checksum_ok(&a));
        // One character changed: the checksum catches it.
        let mut bad = a.clone().into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        assert!(!checksum_ok(&String::from_utf8(bad).unwrap()));
        assert!(!checksum_ok("pcl_live_short"));
    }
}
