//! Passwords: argon2id with the OWASP parameters (m = 19456 KiB, t = 2, p = 1), stored as
//! PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). Pure functions;
//! `actors::password_hasher` runs them off the async threads.
//!
//! Each run needs 19 MiB of working memory. argon2's own `hash_password` allocates it afresh
//! every time and the allocator keeps what was freed, so a process that had signed a few
//! users in held hundreds of MB. A caller that hashes repeatedly keeps one `HashMemory` and
//! hands it to every run instead.

use argon2::{
    password_hash::{rand_core::OsRng, Output, PasswordHash, SaltString},
    Algorithm, Argon2, Block, Params, Version,
};

/// argon2 could not make a hash: a defect of ours (parameters, salt, output), never of the
/// password, so callers answer it as an internal failure.
#[derive(Debug, derive_more::Display)]
#[display("argon2 {step}: {cause}")]
pub struct HashError {
    step: &'static str,
    cause: String,
}

impl std::error::Error for HashError {}

impl HashError {
    fn at<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> Self {
        move |cause| Self { step, cause: cause.to_string() }
    }
}

/// The parameters of every new hash.
fn new_hash_params() -> Result<Params, HashError> {
    Params::new(19_456, 2, 1, None).map_err(HashError::at("params"))
}

/// The working memory of one argon2 run at a time, allocated at its first use and kept.
#[derive(Default)]
pub struct HashMemory {
    blocks: Vec<Block>,
}

impl HashMemory {
    /// The blocks a run with `params` needs. Only the parameters of new hashes size the kept
    /// memory: a stored hash made with more memory (none today) gets a block of its own for
    /// that run, so one odd hash cannot pin a bigger block for the thread's life.
    fn run<T>(&mut self, params: &Params, run: impl FnOnce(&mut [Block]) -> T) -> Result<T, HashError> {
        let needed = params.block_count();
        let kept = new_hash_params()?.block_count();
        if needed > kept {
            return Ok(run(&mut vec![Block::default(); needed]));
        }
        if self.blocks.len() < kept {
            self.blocks = vec![Block::default(); kept];
        }
        Ok(run(&mut self.blocks[..needed]))
    }
}

/// A new PHC string for `password`, with a fresh random salt.
pub fn hash_password_with(memory: &mut HashMemory, password: &str) -> Result<String, HashError> {
    let params = new_hash_params()?;
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0_u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(HashError::at("salt"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut output = [0_u8; Params::DEFAULT_OUTPUT_LEN];
    memory
        .run(&params, |blocks| {
            argon.hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut output, blocks)
        })?
        .map_err(HashError::at("hash"))?;
    let hash = Output::new(&output).map_err(HashError::at("output"))?;
    let params_string = (&params).try_into().map_err(HashError::at("params"))?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: params_string,
        salt: Some(salt.as_salt()),
        hash: Some(hash),
    }
    .to_string())
}

/// A new PHC string, for a one-off caller (`storefront user create`).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    hash_password_with(&mut HashMemory::default(), password)
}

/// Whether `password` is the one `hash` was made from, by the algorithm, version and
/// parameters the PHC string names (as argon2's own verifier does), compared in constant
/// time. A malformed hash verifies nothing.
pub fn verify_password_with(memory: &mut HashMemory, password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let Ok(version) = parsed.version.map_or(Ok(Version::default()), Version::try_from) else { return false };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let mut salt_bytes = [0_u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else { return false };
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut output = vec![0_u8; expected.len()];
    let computed = memory.run(&params, |blocks| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut output, blocks)
    });
    // `Output`'s equality is constant-time.
    matches!(computed, Ok(Ok(()))) && Output::new(&output).is_ok_and(|output| output == expected)
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    /// Made by this module before it kept its memory: argon2's own `hash_password`.
    const STORED_BEFORE: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$1yVixsqBY314sLwnt3lDAA$pBPHWoq48pmOWAbCw0R+brfBUSWJ5Kj5rhRTRoblyf8";

    #[test]
    fn hashes_verify_only_their_password() {
        let mut memory = HashMemory::default();
        let hash = hash_password_with(&mut memory, "correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password_with(&mut memory, "correct horse", &hash));
        assert!(!verify_password_with(&mut memory, "wrong horse", &hash));
        assert!(!verify_password_with(&mut memory, "correct horse", "not a hash"));
        assert_ne!(hash, hash_password_with(&mut memory, "correct horse").unwrap(), "every hash has its own salt");
    }

    #[test]
    fn hashes_stored_before_still_verify_and_new_ones_verify_elsewhere() {
        let mut memory = HashMemory::default();
        assert!(verify_password_with(&mut memory, "correct horse battery", STORED_BEFORE));
        assert!(!verify_password_with(&mut memory, "correct horse batterY", STORED_BEFORE));

        // argon2's own hasher and verifier agree with the kept-memory path both ways.
        let standard = Argon2::new(Algorithm::Argon2id, Version::V0x13, new_hash_params().unwrap());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = standard.hash_password(b"tr0ub4dor", &salt).unwrap().to_string();
        assert!(verify_password_with(&mut memory, "tr0ub4dor", &theirs));
        let ours = hash_password_with(&mut memory, "tr0ub4dor").unwrap();
        assert!(standard.verify_password(b"tr0ub4dor", &PasswordHash::new(&ours).unwrap()).is_ok());
    }

    #[test]
    fn hashes_with_other_parameters_verify_without_growing_the_kept_memory() {
        let mut memory = HashMemory::default();
        let bigger = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(32 * 1024, 1, 1, None).unwrap());
        let smaller = Argon2::new(Algorithm::Argon2i, Version::V0x10, Params::new(8 * 1024, 3, 1, None).unwrap());
        for argon in [bigger, smaller] {
            let hash = argon.hash_password(b"pw", &SaltString::generate(&mut OsRng)).unwrap().to_string();
            assert!(verify_password_with(&mut memory, "pw", &hash), "{hash}");
            assert!(!verify_password_with(&mut memory, "pW", &hash), "{hash}");
        }
        assert_eq!(memory.blocks.len(), new_hash_params().unwrap().block_count());
    }
}
