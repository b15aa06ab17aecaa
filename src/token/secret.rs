//! Client secrets checked against their stored hash, in constant time, with bounded memory.
//!
//! argon2 takes `m_cost` KiB per verification by design (19 MiB with the defaults). Left to
//! the allocator, a flood of verifications left that memory resident long after: glibc keeps
//! each freed 19 MiB block in an arena rather than handing it back (measured: 1.2 GB held
//! after a 20 s flood with 4 verification slots). So the blocks come from a small pool of
//! buffers instead, one per verification running at once: memory is at most
//! `max_concurrent_verifications` × `m_cost`, allocated once and reused.
use std::sync::{Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::SecretHash;

/// Largest `m_cost` (KiB) a stored hash may ask for: 256 MiB (the defaults use 19 MiB).
pub const MAX_M_COST_KIB: u32 = 256 * 1024;
/// Largest `t_cost` a stored hash may ask for.
pub const MAX_T_COST: u32 = 16;

/// Buffers of argon2 blocks, each handed to one verification at a time.
fn pool() -> &'static Mutex<Vec<Vec<Block>>> {
    static POOL: OnceLock<Mutex<Vec<Vec<Block>>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// Whether a stored argon2 hash's cost is within the bounds above (checked at load, so a
/// hash in the file cannot make one verification take gigabytes).
pub fn argon2_cost_ok(h: &PasswordHash<'_>) -> Result<(), String> {
    let p = Params::try_from(h).map_err(|e| e.to_string())?;
    if p.m_cost() > MAX_M_COST_KIB {
        return Err(format!("asks for {} KiB of memory; at most {MAX_M_COST_KIB} KiB", p.m_cost()));
    }
    if p.t_cost() > MAX_T_COST {
        return Err(format!("asks for {} passes; at most {MAX_T_COST}", p.t_cost()));
    }
    Ok(())
}

/// Verifies `secret` against an argon2id PHC string, with blocks from the pool.
pub fn verify_argon2(phc: &str, secret: &str) -> bool {
    let Ok(h) = PasswordHash::new(phc) else { return false };
    let (Ok(params), Ok(alg)) = (Params::try_from(&h), Algorithm::try_from(h.algorithm)) else { return false };
    let version = h.version.map_or(Ok(Version::V0x13), Version::try_from);
    let (Ok(version), Some(salt), Some(expected)) = (version, h.salt, h.hash) else { return false };
    if params.m_cost() > MAX_M_COST_KIB || params.t_cost() > MAX_T_COST {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let mut out = vec![0u8; expected.len()];
    let need = params.block_count();
    let mut blocks = pool().lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
    if blocks.len() < need {
        blocks.resize(need, Block::default());
    }
    let ok = Argon2::new(alg, version, params)
        .hash_password_into_with_memory(secret.as_bytes(), salt, &mut out, &mut blocks[..need])
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()));
    pool().lock().unwrap_or_else(|p| p.into_inner()).push(blocks);
    ok
}

/// An argon2id hash (default cost) that verifies nothing, so that an unknown client id
/// costs the same time as a wrong secret.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .ok()
            .and_then(|salt| {
                Argon2::default()
                    .hash_password(&rand::random::<[u8; 32]>(), &salt)
                    .map(|h| h.to_string())
                    .ok()
            })
            .unwrap_or_default()
    })
}

/// Checks a secret against its stored hash in constant time.
pub fn verify_secret(stored: &SecretHash, secret: &str) -> bool {
    match stored {
        SecretHash::Argon2(phc) => verify_argon2(phc, secret),
        SecretHash::Sha256(h) => {
            let got: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            got.ct_eq(h).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phc(secret: &str, params: Params) -> String {
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(secret.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn verifies_the_secret_and_refuses_others_reusing_one_buffer() {
        let h = phc("right", Params::new(1024, 2, 1, None).unwrap());
        assert!(verify_argon2(&h, "right"));
        assert!(!verify_argon2(&h, "wrong"));
        assert!(!verify_argon2(&h, "right "));
        // The same as argon2's own verifier says.
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(argon2::PasswordVerifier::verify_password(&Argon2::default(), b"right", &parsed).is_ok());
        // Sequential verifications share one buffer: the pool does not grow.
        assert!(pool().lock().unwrap().len() <= 2, "one buffer per concurrent verification");
    }

    #[test]
    fn refuses_hashes_that_ask_for_too_much() {
        let big = phc("x", Params::new(1024, MAX_T_COST + 1, 1, None).unwrap());
        assert!(!verify_argon2(&big, "x"));
        let parsed = PasswordHash::new(&big).unwrap();
        assert!(argon2_cost_ok(&parsed).unwrap_err().contains("passes"));
        let fine = phc("x", Params::new(1024, 2, 1, None).unwrap());
        assert!(argon2_cost_ok(&PasswordHash::new(&fine).unwrap()).is_ok());
    }

    #[test]
    fn the_dummy_hash_verifies_nothing() {
        assert!(dummy_hash().starts_with("$argon2id$"));
        assert!(!verify_argon2(dummy_hash(), ""));
    }
}
