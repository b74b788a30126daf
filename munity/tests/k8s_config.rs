//! The configuration Kubernetes gives the binaries (k8s/): every
//! `munity.toml` a ConfigMap is generated from loads with each binary's own
//! loader (unknown keys refused, as at start-up), with the `MUNITY_*`
//! variables the manifests set on top; and it says what a cluster needs
//! (ScyllaDB, the Redis event log, JSON logs, the services' DNS names).

use std::path::{Path, PathBuf};

use munity_platform::{
    auth::AuthConfig,
    config::{BusBackend, BusConfig, ConfigSource, StorageConfig},
    service::{Service, ServiceConfig, load_config},
    telemetry::{LogFormat, TelemetryConfig},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every ConfigMap TOML: the base's and each overlay's replacement.
fn config_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("k8s/base/config/munity.toml")];
    for overlay in std::fs::read_dir(repo().join("k8s/overlays")).unwrap() {
        let toml = overlay.unwrap().path().join("munity.toml");
        if toml.exists() {
            files.push(toml);
        }
    }
    files
}

/// Every `MUNITY_*` variable the manifests (base and components) set.
fn manifest_variables() -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text.match_indices("MUNITY_") {
                    let name: String = text[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                        .collect();
                    if !found.contains(&name) {
                        found.push(name);
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo().join("k8s"), &mut found);
    found
}

/// The file, then each manifest variable as `MUNITY_*` would set it (a
/// placeholder value: the Secret's are not in the repository).
fn source(file: &Path) -> ConfigSource {
    let text = std::fs::read_to_string(file).unwrap();
    let mut source = ConfigSource::from_toml_str(&text);
    for variable in manifest_variables() {
        let key = variable
            .trim_start_matches("MUNITY_")
            .to_lowercase()
            .replace("__", ".");
        let value = if key.ends_with("url") || key.ends_with("endpoint") {
            "redis://:secret@redis:6379"
        } else {
            "secret"
        };
        source = source.with_override(&key, value);
    }
    source
}

fn service<S: Service>(file: &Path, source: &ConfigSource) -> ServiceConfig<S::Config> {
    let config = load_config::<S>(source)
        .unwrap_or_else(|e| panic!("{}: {} section: {e:#}", file.display(), S::SECTION));
    assert_eq!(
        config.listen.ip().to_string(),
        "0.0.0.0",
        "{}: {} must listen on every interface in a pod",
        file.display(),
        S::SECTION
    );
    match &config.storage {
        StorageConfig::Cql(cql) => {
            assert_eq!(
                cql.nodes,
                ["munity-scylla-client:9042"],
                "{}",
                file.display()
            );
            assert_eq!(cql.keyspace, format!("munity_{}", S::SECTION));
            assert_eq!(cql.password.as_deref(), Some("secret"), "from the Secret");
        }
        other => panic!("{}: {} storage is {other:?}", file.display(), S::SECTION),
    }
    assert_eq!(config.bus.backend, BusBackend::Redis, "{}", file.display());
    config
}

#[test]
fn every_configmap_toml_loads_with_each_binarys_loader() {
    let files = config_files();
    assert!(files.len() >= 2, "base and dev: {files:?}");
    assert!(
        manifest_variables().contains(&"MUNITY_BUS__REDIS_URL".to_owned()),
        "{:?}",
        manifest_variables()
    );
    for file in &files {
        let source = source(file);
        let users = service::<users_svc::UsersService>(file, &source);
        assert_eq!(users.listen.port(), 50051);
        service::<events_svc::EventsService>(file, &source);
        let notify = service::<notify_svc::NotifyService>(file, &source);
        // The headless Service: every replica, balanced by the caller.
        assert_eq!(notify.own.events_url, "http://events-headless:50052");
        assert_eq!(notify.own.discuss_url, "http://discuss-headless:50055");
        assert_eq!(notify.own.redis_url, "redis://:secret@redis:6379");
        service::<warehouse_svc::WarehouseService>(file, &source);
        let discuss = service::<discuss_svc::DiscussService>(file, &source);
        assert_eq!(discuss.listen.port(), 50055);
        let bot = service::<bot_svc::BotService>(file, &source);
        assert_eq!(bot.listen.port(), 50056);
        assert_eq!(bot.own.users_url, "http://users:50051");
        assert_eq!(
            (
                bot.own.telegram_token.as_str(),
                bot.own.client_secret.as_str()
            ),
            ("secret", "secret"),
            "from the Secret"
        );

        let bus = BusConfig::load(&source).unwrap();
        assert_eq!(bus.redis_url, "redis://:secret@redis:6379");
        let auth: AuthConfig = source
            .section("auth")
            .unwrap_or_else(|e| panic!("{}: [auth]: {e}", file.display()));
        assert_eq!(auth.jwks_url, "http://users:50051");
        let telemetry: TelemetryConfig = source
            .section("telemetry")
            .unwrap_or_else(|e| panic!("{}: [telemetry]: {e}", file.display()));
        assert_eq!(telemetry.log_format, LogFormat::Json);
        assert!(telemetry.log_trace_ids);

        let gateway = munity_gateway::GatewayConfig::load(&source)
            .unwrap_or_else(|e| panic!("{}: [gateway]: {e}", file.display()));
        assert_eq!(gateway.listen, "0.0.0.0:8080");
        assert_eq!(gateway.admin_listen, "0.0.0.0:9090");
        // The headless Services, which the gateway resolves to every pod.
        for (route, port) in [
            ("users", 50051),
            ("events", 50052),
            ("notify", 50053),
            ("warehouse", 50054),
            ("discuss", 50055),
            ("bot", 50056),
        ] {
            assert_eq!(
                gateway.routes[route].upstreams,
                [format!("{route}-headless:{port}")],
                "{}",
                file.display()
            );
        }
        assert_eq!(
            gateway.rate_limits.redis_url, "redis://:secret@redis:6379",
            "from the Secret"
        );

        // No section the binaries do not read (a misspelt one would be
        // silently ignored).
        let text = std::fs::read_to_string(file).unwrap();
        let sections = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix('['))
            .map(|rest| {
                rest.trim_start_matches('[')
                    .split(['.', ']'])
                    .next()
                    .unwrap()
            });
        for section in sections {
            assert!(
                [
                    "users",
                    "events",
                    "notify",
                    "warehouse",
                    "discuss",
                    "bot",
                    "bus",
                    "auth",
                    "telemetry",
                    "gateway"
                ]
                .contains(&section),
                "{}: section [{section}] is read by no binary",
                file.display()
            );
        }
    }
}

/// The check above fails on a key no loader knows, naming it.
#[test]
fn a_misspelt_key_is_refused() {
    let text = std::fs::read_to_string(repo().join("k8s/base/config/munity.toml")).unwrap();
    let broken = text.replace("shutdown_grace_secs = 20", "shutdown_grace_sec = 20");
    let source = ConfigSource::from_toml_str(&broken);
    let error = load_config::<users_svc::UsersService>(&source)
        .unwrap_err()
        .to_string();
    assert!(error.contains("users.shutdown_grace_sec"), "{error}");
}
