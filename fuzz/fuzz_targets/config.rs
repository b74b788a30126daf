//! Configuration as an operator (or a broken deploy script) writes it: any
//! TOML text, read as every section the platform knows. Loading must return
//! the value or an error naming the key, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use munity_platform::{
    auth::AuthConfig, config::ConfigSource, service::ServiceConfig, telemetry::TelemetryConfig,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = ConfigSource::from_toml_str(text);
    let _ = munity_gateway::GatewayConfig::load(&source);
    let _ = ServiceConfig::<users_svc::UsersConfig>::load(&source, "users", 50051);
    let _ = source.section::<AuthConfig>("auth");
    let _ = source.section::<TelemetryConfig>("telemetry");
});
