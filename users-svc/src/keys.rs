//! Signing keys: Ed25519, persisted in the repository, rotatable.
//!
//! The newest key that is not retired signs new access tokens. Every key that
//! is active, or was retired less than one access-token lifetime ago (plus
//! leeway), is published in the JWKS, so tokens signed before a rotation keep
//! verifying until they expire. Each replica reloads keys periodically, and
//! before serving the JWKS when its copy is more than a second old: a
//! verifier fetches the JWKS when a token names a key it has not seen, so the
//! answer must include keys another replica made a moment ago.
//!
//! Replicas starting together on an empty store must not each make a key of
//! their own (each would sign with its own and publish only its own until the
//! next reload): the first key has a fixed kid, inserted only if absent, so one
//! replica's insert wins and the others load the winner's key.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::JwkSet};
use munity_platform::auth::{Claims, JwksSource};
use uuid::Uuid;

use crate::{
    domain::{Millis, SigningKeyRecord, now_millis},
    error::UsersError,
    store::{StoreError, UsersRepository},
};

struct ActiveKey {
    kid: String,
    encoding: EncodingKey,
}

/// The kid of a store's first key (see the module comment).
pub const FIRST_KID: &str = "first";

/// How old the loaded keys may be when the JWKS is served.
const JWKS_FRESHNESS: Duration = Duration::from_secs(1);

struct KeyRing {
    active: ActiveKey,
    /// `(kid, raw public key)` of every published key.
    published: Vec<(String, [u8; 32])>,
}

/// Owns the signing keys of this replica.
pub struct KeyManager {
    repo: Arc<dyn UsersRepository>,
    /// How long a retired key stays published.
    publish_grace: Duration,
    ring: RwLock<Option<KeyRing>>,
    /// When the keys were last read from storage; held while reading so
    /// that concurrent JWKS requests share one read.
    loaded_at: tokio::sync::Mutex<Instant>,
}

impl KeyManager {
    /// Loads the keys, creating the first one on a fresh store.
    pub async fn load(
        repo: Arc<dyn UsersRepository>,
        publish_grace: Duration,
    ) -> Result<Arc<Self>, UsersError> {
        let manager = Arc::new(KeyManager {
            repo,
            publish_grace,
            ring: RwLock::new(None),
            loaded_at: tokio::sync::Mutex::new(Instant::now()),
        });
        manager.reload().await?;
        Ok(manager)
    }

    /// Re-reads keys from storage. Creates a key when none is active, which
    /// happens once on a fresh store: every replica starting then inserts
    /// [`FIRST_KID`] if absent and uses whichever insert won.
    pub async fn reload(&self) -> Result<(), UsersError> {
        let mut loaded_at = self.loaded_at.lock().await;
        self.reload_locked().await?;
        *loaded_at = Instant::now();
        Ok(())
    }

    async fn reload_locked(&self) -> Result<(), UsersError> {
        let mut records = self.repo.list_signing_keys().await?;
        if !records.iter().any(|k| k.retired_at.is_none()) {
            let mut record = new_key_record();
            if !records.iter().any(|k| k.kid == FIRST_KID) {
                record.kid = FIRST_KID.to_owned();
            }
            match self.repo.insert_signing_key(&record).await {
                Ok(()) => tracing::info!(kid = %record.kid, "created a signing key"),
                // Another replica's first key won: use it.
                Err(StoreError::Conflict(_)) => {}
                Err(error) => return Err(error.into()),
            }
            records = self.repo.list_signing_keys().await?;
        }
        let ring = build_ring(&records, now_millis(), self.publish_grace)?;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Some(ring);
        Ok(())
    }

    /// The JWKS to serve: the keys are read again first when the loaded
    /// ones are older than [`JWKS_FRESHNESS`] (a failed read serves the
    /// loaded ones). At most one read a second, however many ask.
    pub async fn current_jwks(&self) -> serde_json::Value {
        {
            let mut loaded_at = self.loaded_at.lock().await;
            if loaded_at.elapsed() >= JWKS_FRESHNESS {
                if let Err(error) = self.reload_locked().await {
                    tracing::warn!(%error, "reloading signing keys for the JWKS failed; serving the loaded ones");
                }
                // Also after a failure: a storage outage must not turn every
                // JWKS request into a read.
                *loaded_at = Instant::now();
            }
        }
        self.jwks_json()
    }

    /// Makes a fresh key the active one and retires the others.
    pub async fn rotate(&self) -> Result<String, UsersError> {
        let record = new_key_record();
        match self.repo.insert_signing_key(&record).await {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(error) => return Err(error.into()),
        }
        self.repo
            .retire_signing_keys_except(&record.kid, now_millis())
            .await?;
        self.reload().await?;
        Ok(record.kid)
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &Claims) -> Result<String, UsersError> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let ring = ring
            .as_ref()
            .ok_or_else(|| UsersError::Internal("signing keys not loaded".to_owned()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ring.active.kid.clone());
        jsonwebtoken::encode(&header, claims, &ring.active.encoding)
            .map_err(|e| UsersError::Internal(format!("signing token: {e}")))
    }

    /// The published keys as a JWKS document (RFC 7517, `OKP`/`Ed25519`).
    pub fn jwks_json(&self) -> serde_json::Value {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<serde_json::Value> = ring
            .as_ref()
            .map(|ring| {
                ring.published
                    .iter()
                    .map(|(kid, public)| {
                        serde_json::json!({
                            "kty": "OKP",
                            "crv": "Ed25519",
                            "x": URL_SAFE_NO_PAD.encode(public),
                            "kid": kid,
                            "alg": "EdDSA",
                            "use": "sig",
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({ "keys": keys })
    }

    /// Reloads keys every `interval` until `shutdown` fires.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: munity_platform::shutdown::ShutdownToken,
    ) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if let Err(error) = manager.reload().await {
                            tracing::warn!(%error, "reloading signing keys failed; keeping the old ones");
                        }
                    }
                    () = shutdown.cancelled() => break,
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl JwksSource for KeyManager {
    async fn fetch_jwks(&self) -> anyhow::Result<JwkSet> {
        self.reload().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(serde_json::from_value(self.jwks_json())?)
    }
}

fn new_key_record() -> SigningKeyRecord {
    SigningKeyRecord {
        kid: Uuid::now_v7().simple().to_string(),
        secret: rand::random::<[u8; 32]>().to_vec(),
        created_at: now_millis(),
        retired_at: None,
    }
}

fn signing_key(record: &SigningKeyRecord) -> Result<SigningKey, UsersError> {
    let seed: [u8; 32] =
        record.secret.as_slice().try_into().map_err(|_| {
            UsersError::Internal(format!("signing key {} is not 32 bytes", record.kid))
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn build_ring(
    records: &[SigningKeyRecord],
    now: Millis,
    publish_grace: Duration,
) -> Result<KeyRing, UsersError> {
    let active = records
        .iter()
        .filter(|k| k.retired_at.is_none())
        .max_by(|a, b| (a.created_at, &a.kid).cmp(&(b.created_at, &b.kid)))
        .ok_or_else(|| UsersError::Internal("no active signing key".to_owned()))?;
    let der = signing_key(active)?
        .to_pkcs8_der()
        .map_err(|e| UsersError::Internal(format!("encoding signing key: {e}")))?;
    let grace = publish_grace.as_millis() as i64;
    let mut published = Vec::new();
    for record in records {
        if record
            .retired_at
            .is_none_or(|retired| now - retired < grace)
        {
            published.push((
                record.kid.clone(),
                signing_key(record)?.verifying_key().to_bytes(),
            ));
        }
    }
    Ok(KeyRing {
        active: ActiveKey {
            kid: active.kid.clone(),
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
        },
        published,
    })
}
