//! Whatever a client puts in `authorization`: the bearer parser and the
//! token verifier (header, algorithm, key id, signature, claims) must
//! refuse it cleanly, never panic, and never accept it (no key here signs).
#![no_main]

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use munity_platform::auth::{JwksSource, TokenVerifier, VerifierSettings, bearer_token};

/// One published Ed25519 key whose private half nobody has.
const JWKS: &str = r#"{"keys":[{"alg":"EdDSA","crv":"Ed25519","kid":"k1","kty":"OKP","use":"sig","x":"sYM_W1_YK76K-EzuitCdCcsyR4QRnIV02_dVftmb5d8"}]}"#;

struct FixedKeys;

#[async_trait::async_trait]
impl JwksSource for FixedKeys {
    async fn fetch_jwks(&self) -> anyhow::Result<jsonwebtoken::jwk::JwkSet> {
        Ok(serde_json::from_str(JWKS)?)
    }
}

fn verifier() -> &'static (tokio::runtime::Runtime, TokenVerifier) {
    static VERIFIER: OnceLock<(tokio::runtime::Runtime, TokenVerifier)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let verifier = TokenVerifier::new(
            Arc::new(FixedKeys),
            VerifierSettings {
                issuer: "munity".to_owned(),
                audience: "munity".to_owned(),
                leeway: Duration::from_secs(30),
                min_refetch_interval: Duration::ZERO,
                cache_capacity: 16,
            },
        );
        (runtime, verifier)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let token = match bearer_token(&headers) {
        Ok(token) => token.to_owned(),
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    };
    let (runtime, verifier) = verifier();
    let verified = runtime.block_on(verifier.verify(&token));
    assert!(verified.is_err(), "a token nobody signed was accepted");
});
