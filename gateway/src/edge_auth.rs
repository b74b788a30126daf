//! Token checks at the edge: the platform's [`TokenVerifier`] against
//! users-svc's JWKS, behind a bounded cache of verified tokens so the
//! Ed25519 signature check is paid once per token, not once per call.

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use munity_platform::auth::{AuthError, Claims, TokenVerifier};

/// A verified token's claims, remembered until the token expires.
pub struct EdgeAuth {
    verifier: Arc<TokenVerifier>,
    cache: DashMap<String, Arc<Claims>>,
    capacity: usize,
}

impl EdgeAuth {
    pub fn new(verifier: Arc<TokenVerifier>, capacity: usize) -> Self {
        EdgeAuth {
            verifier,
            cache: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let now = unix_now();
        if let Some(claims) = self.cache.get(token) {
            if claims.exp > now {
                return Ok(claims.clone());
            }
            drop(claims);
            self.cache.remove(token);
            return Err(AuthError::Expired);
        }
        let claims = Arc::new(self.verifier.verify(token).await?);
        if self.cache.len() >= self.capacity {
            // Expired entries go first; if the cache is still full (a flood
            // of distinct valid tokens), start over rather than grow.
            self.cache.retain(|_, c| c.exp > now);
            if self.cache.len() >= self.capacity {
                self.cache.clear();
            }
        }
        self.cache.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}
