//! The event log's metrics, served with the service's own at `GET /metrics`
//! (registered in the platform's registry):
//!
//! - `munity_bus_outbox_backlog{service}`: events staged, not yet relayed;
//! - `munity_bus_relay_lag_seconds{service}`: age of the oldest of them;
//! - `munity_bus_relayed_total{service}`: events moved to the log;
//! - `munity_bus_relay_leading{service}`: 1 when this replica's relay holds
//!   the outbox's lease (the one that publishes), else 0;
//! - `munity_bus_consumer_lag{group}`: events a consumer group has not
//!   acknowledged (see [`report_lag`]);
//! - `munity_revocations{process}`: revocations a process keeps (sessions
//!   and subjects whose tokens it refuses).

use std::sync::LazyLock;

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use crate::EventLog;

fn registered<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    munity_platform::metrics::register(Box::new(collector.clone()));
    collector
}

pub static OUTBOX_BACKLOG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    registered(
        IntGaugeVec::new(
            Opts::new(
                "munity_bus_outbox_backlog",
                "Domain events staged in the service's outbox and not yet relayed to the event log.",
            ),
            &["service"],
        )
        .expect("valid metric"),
    )
});

pub static RELAY_LEADING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    registered(
        IntGaugeVec::new(
            Opts::new(
                "munity_bus_relay_leading",
                "1 when this replica's relay holds the outbox's lease and publishes its events, else 0.",
            ),
            &["service"],
        )
        .expect("valid metric"),
    )
});

pub static RELAY_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    registered(
        GaugeVec::new(
            Opts::new(
                "munity_bus_relay_lag_seconds",
                "Age of the oldest domain event waiting in the service's outbox (0 when none waits).",
            ),
            &["service"],
        )
        .expect("valid metric"),
    )
});

pub static RELAYED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    registered(
        IntCounterVec::new(
            Opts::new(
                "munity_bus_relayed_total",
                "Domain events moved from the service's outbox to the event log.",
            ),
            &["service"],
        )
        .expect("valid metric"),
    )
});

pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    registered(
        IntGaugeVec::new(
            Opts::new(
                "munity_bus_consumer_lag",
                "Domain events a consumer group has not acknowledged (delivered or not).",
            ),
            &["group"],
        )
        .expect("valid metric"),
    )
});

/// Updates `munity_bus_consumer_lag` for `group` (consumers call it now and
/// then, e.g. after each batch).
pub async fn report_lag(log: &dyn EventLog, group: &str) {
    if let Ok(lag) = log.lag(group).await {
        CONSUMER_LAG.with_label_values(&[group]).set(lag as i64);
    }
}

pub static REVOCATIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    registered(
        IntGaugeVec::new(
            Opts::new(
                "munity_revocations",
                "Revoked sessions and subjects the process refuses tokens of (each kept until its tokens expire).",
            ),
            &["process"],
        )
        .expect("valid metric"),
    )
});
