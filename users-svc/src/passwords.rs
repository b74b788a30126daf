//! Password hashing with Argon2id at OWASP's recommended parameters
//! (19 MiB of memory, 2 iterations, 1 lane). Hashing takes tens of
//! milliseconds of CPU by design, so it runs on the blocking pool.

use std::sync::OnceLock;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};

use crate::error::UsersError;

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A PHC string for `password`, with a fresh random salt.
pub async fn hash(password: String) -> Result<String, UsersError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| UsersError::Internal(format!("salt: {e}")))?;
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| UsersError::Internal(format!("hashing password: {e}")))
    })
    .await
    .map_err(|e| UsersError::Internal(format!("hashing task: {e}")))?
}

/// Whether `password` matches `stored`. With `stored = None` (no such
/// account) a dummy hash is checked instead, so that a login for an unknown
/// email takes as long as one with a wrong password and does not reveal which
/// emails have accounts.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, UsersError> {
    tokio::task::spawn_blocking(move || {
        let (stored, real) = match stored {
            Some(stored) => (stored, true),
            None => (dummy_hash().to_owned(), false),
        };
        let parsed = PasswordHash::new(&stored)
            .map_err(|e| UsersError::Internal(format!("stored password hash: {e}")))?;
        let matches = hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(real && matches)
    })
    .await
    .map_err(|e| UsersError::Internal(format!("verifying task: {e}")))?
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes encode");
        hasher()
            .hash_password(&rand::random::<[u8; 32]>(), &salt)
            .expect("hashing random bytes succeeds")
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let stored = hash("correct horse".to_owned()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            verify("correct horse".into(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong horse".into(), Some(stored)).await.unwrap());
        assert!(!verify("correct horse".into(), None).await.unwrap());
    }
}
