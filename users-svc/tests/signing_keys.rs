//! Signing keys across replicas, on every backend: replicas starting
//! together on an empty store sign with one key, and a key made by one
//! replica is in every replica's JWKS a second later (a verifier fetches the
//! JWKS when a token names a key it does not know).

use std::{sync::Arc, time::Duration};

use munity_platform::auth::{Claims, JwksSource, TokenVerifier, VerifierSettings};
use users_svc::{
    keys::KeyManager,
    store::{UsersRepository, cql::CqlStore, embedded::EmbeddedStore},
};

type Repo = Arc<dyn UsersRepository>;

const REPLICAS: usize = 4;

/// `REPLICAS` handles on one fresh embedded store (one file: they share it).
fn embedded() -> (Vec<Repo>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Repo = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    (vec![store; REPLICAS], dir)
}

/// `REPLICAS` sessions on one fresh CQL keyspace, as separate replicas have.
async fn cql(case: &str) -> Option<Vec<Repo>> {
    let mut config = munity_testkit::cql_config("users_keys")?;
    config.keyspace = format!("{}_{case}", config.keyspace);
    let mut repos: Vec<Repo> = Vec::new();
    for _ in 0..REPLICAS {
        let _schema = munity_testkit::schema_lock().await;
        repos.push(Arc::new(
            CqlStore::connect(&config)
                .await
                .expect("connect to the CQL test server"),
        ));
    }
    Some(repos)
}

async fn load_together(repos: Vec<Repo>) -> Vec<Arc<KeyManager>> {
    // Spawned all before any is awaited: they run at once.
    let loads: Vec<_> = repos
        .into_iter()
        .map(|repo| tokio::spawn(KeyManager::load(repo, Duration::from_secs(3600))))
        .collect();
    let mut managers = Vec::new();
    for load in loads {
        managers.push(load.await.unwrap().expect("keys load"));
    }
    managers
}

fn claims() -> Claims {
    Claims {
        sub: uuid::Uuid::now_v7(),
        iss: "munity".to_owned(),
        aud: "munity".to_owned(),
        exp: 4_000_000_000,
        iat: 0,
        jti: String::new(),
        sid: String::new(),
        roles: Vec::new(),
        scope: String::new(),
        act: None,
    }
}

fn signing_kid(manager: &KeyManager) -> String {
    let token = manager.sign(&claims()).unwrap();
    jsonwebtoken::decode_header(&token).unwrap().kid.unwrap()
}

fn published(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn replicas_starting_together_sign_with_one_key(repos: Vec<Repo>) {
    let managers = load_together(repos).await;
    let kids: Vec<String> = managers.iter().map(|m| signing_kid(m)).collect();
    assert!(
        kids.iter().all(|kid| *kid == kids[0]),
        "every replica signs with the same key: {kids:?}"
    );
    for manager in &managers {
        assert_eq!(published(&manager.jwks_json()), vec![kids[0].clone()]);
    }
}

async fn a_rotation_reaches_every_jwks_within_a_second(repos: Vec<Repo>) {
    let managers = load_together(repos).await;
    let rotated = managers[0].rotate().await.unwrap();
    assert_eq!(signing_kid(&managers[0]), rotated);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for manager in &managers[1..] {
        let kids = published(&manager.current_jwks().await);
        assert!(kids.contains(&rotated), "{rotated} missing from {kids:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_replicas_starting_together_sign_with_one_key() {
    let (repos, _dir) = embedded();
    replicas_starting_together_sign_with_one_key(repos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_replicas_starting_together_sign_with_one_key() {
    if let Some(repos) = cql("together").await {
        replicas_starting_together_sign_with_one_key(repos).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_rotation_reaches_every_jwks_within_a_second() {
    let (repos, _dir) = embedded();
    a_rotation_reaches_every_jwks_within_a_second(repos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_rotation_reaches_every_jwks_within_a_second() {
    if let Some(repos) = cql("rotation").await {
        a_rotation_reaches_every_jwks_within_a_second(repos).await;
    }
}

/// The JWKS of whichever store is current: a users-svc whose store is made
/// anew while verifiers keep running.
struct Swappable(std::sync::Mutex<Arc<KeyManager>>);

#[async_trait::async_trait]
impl JwksSource for Swappable {
    async fn fetch_jwks(&self) -> anyhow::Result<jsonwebtoken::jwk::JwkSet> {
        let current = self.0.lock().unwrap().clone();
        current.fetch_jwks().await
    }
}

#[tokio::test]
async fn a_verifier_follows_a_new_store_whose_first_key_has_the_same_kid() {
    let (old_repos, _old) = embedded();
    let (new_repos, _new) = embedded();
    let old = KeyManager::load(old_repos[0].clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let new = KeyManager::load(new_repos[0].clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        signing_kid(&old),
        signing_kid(&new),
        "both are the first key"
    );

    let source = Arc::new(Swappable(std::sync::Mutex::new(old.clone())));
    let verifier = TokenVerifier::new(
        source.clone(),
        VerifierSettings {
            issuer: "munity".to_owned(),
            audience: "munity".to_owned(),
            leeway: Duration::from_secs(5),
            min_refetch_interval: Duration::ZERO,
            cache_capacity: 100,
        },
    );
    verifier
        .verify(&old.sign(&claims()).unwrap())
        .await
        .unwrap();
    *source.0.lock().unwrap() = new.clone();
    verifier
        .verify(&new.sign(&claims()).unwrap())
        .await
        .expect("the new key under the cached kid is fetched, not refused");
}
