//! The consumer loop every service runs the same way: take over what a
//! dead member left pending, read new events, hand each to the handler
//! once (de-duplicated by event id), acknowledge what it handled, report
//! the group's lag.
//!
//! A handler that fails leaves its event pending: it is retried after
//! `retry_after`, by this consumer or another member of the group. So a
//! handler must be idempotent for the same event (the de-duplication here
//! covers redeliveries within one process only).

use std::{
    collections::VecDeque,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::Instrument;

use std::collections::HashSet;

use munity_platform::shutdown::ShutdownToken;

use crate::{DomainEvent, EventLog, metrics};

/// Bounds of how often a consumer looks for stale deliveries (a quarter of
/// its `retry_after` within them).
const CLAIM_EVERY_MIN: Duration = Duration::from_millis(10);
const CLAIM_EVERY_MAX: Duration = Duration::from_secs(1);

/// How often a consumer reports its group's lag at most (an idle consumer's
/// reads wait `wait`, so its last report is at most that much older).
const LAG_EVERY: Duration = Duration::from_secs(1);

/// How a group member reads the log.
#[derive(Clone)]
pub struct ConsumerLoop {
    pub log: Arc<dyn EventLog>,
    pub group: String,
    /// Unique within the group (e.g. the service name and a process id).
    pub consumer: String,
    /// Events per read.
    pub batch: usize,
    /// How long a read waits for new events.
    pub wait: Duration,
    /// Deliveries pending this long (a dead member's, or failed handlings)
    /// are taken over and retried.
    pub retry_after: Duration,
}

/// Event ids handled recently, to skip redeliveries (bounded). Ids are
/// kept as 128-bit UUIDs (every event id is one), not strings: a set of
/// strings cost about 150 bytes an id, and a soak showed consumers'
/// memory growing with it until the bound.
struct Seen {
    ids: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl Seen {
    /// Enough to cover redeliveries within `retry_after` at thousands of
    /// events a second; handlers are idempotent beyond it.
    const CAPACITY: usize = 32_768;

    fn key(id: &str) -> Option<u128> {
        uuid::Uuid::try_parse(id).ok().map(|id| id.as_u128())
    }

    fn contains(&self, id: &str) -> bool {
        Self::key(id).is_some_and(|key| self.ids.contains(&key))
    }

    fn insert(&mut self, id: &str) {
        let Some(key) = Self::key(id) else {
            return;
        };
        if self.ids.insert(key) {
            self.order.push_back(key);
            if self.order.len() > self.capacity
                && let Some(oldest) = self.order.pop_front()
            {
                self.ids.remove(&oldest);
            }
        }
    }
}

impl ConsumerLoop {
    /// A service's member of `group`, as services run them: a consumer name
    /// of its own (`<service>-<unique>`), 100 events a read, reads waiting
    /// up to 1 s, deliveries pending 30 s taken over.
    pub fn member(log: Arc<dyn EventLog>, group: impl Into<String>, service: &str) -> Self {
        ConsumerLoop {
            log,
            group: group.into(),
            consumer: format!("{service}-{}", uuid::Uuid::now_v7().simple()),
            batch: 100,
            wait: Duration::from_secs(1),
            retry_after: Duration::from_secs(30),
        }
    }

    /// Runs until `shutdown`, handing each event to `handle`.
    pub async fn run<H, F>(self, shutdown: ShutdownToken, mut handle: H)
    where
        H: FnMut(DomainEvent) -> F + Send,
        F: Future<Output = anyhow::Result<()>> + Send,
    {
        let mut seen = Seen {
            ids: HashSet::with_capacity(Seen::CAPACITY + 1),
            order: VecDeque::with_capacity(Seen::CAPACITY + 1),
            capacity: Seen::CAPACITY,
        };
        let mut failures = 0u32;
        // Looking for stale deliveries and reporting the lag each cost the
        // log a transaction (or a round trip): under load a consumer loops
        // once per batch, so both are paced instead of done every time. A
        // dead member's deliveries are still taken over within
        // `retry_after` plus `claim_every`.
        let claim_every = (self.retry_after / 4).clamp(CLAIM_EVERY_MIN, CLAIM_EVERY_MAX);
        let mut last_claim: Option<Instant> = None;
        let mut last_lag: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let joined = tokio::select! {
                () = shutdown.cancelled() => return,
                joined = self.log.join(&self.group, &self.consumer) => joined,
            };
            let mut member = match joined {
                Ok(member) => member,
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(group = %self.group, %error, "cannot join the consumer group; retrying");
                    }
                    failures += 1;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff(failures)) => continue,
                    }
                }
            };
            failures = 0;
            loop {
                let claim = last_claim.is_none_or(|at| at.elapsed() >= claim_every);
                let read = async {
                    if claim {
                        let stale = member.claim_stale(self.retry_after, self.batch).await?;
                        if !stale.is_empty() {
                            return Ok::<_, crate::BusError>((stale, true));
                        }
                    }
                    Ok((member.next(self.batch, self.wait).await?, false))
                };
                let deliveries = tokio::select! {
                    () = shutdown.cancelled() => return,
                    read = read => read,
                };
                let deliveries = match deliveries {
                    Ok((deliveries, claimed)) => {
                        if claim {
                            // A full batch of stale deliveries: more may
                            // wait, so look again at once.
                            let more = claimed && deliveries.len() >= self.batch;
                            last_claim = (!more).then(Instant::now);
                        }
                        deliveries
                    }
                    Err(error) => {
                        tracing::warn!(group = %self.group, %error, "cannot read the event log; retrying");
                        failures += 1;
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff(failures)) => {}
                        }
                        // Rejoin: a Redis consumer's connection may be gone.
                        break;
                    }
                };
                failures = 0;
                let mut done = Vec::new();
                for delivery in deliveries {
                    if seen.contains(&delivery.event.id) {
                        done.push(delivery.id);
                        continue;
                    }
                    let id = delivery.event.id.clone();
                    // The handling joins the trace the event carries (the
                    // relay's span, child of the change that made it).
                    let span = tracing::info_span!(
                        "bus.consume",
                        otel.name = %format!("consume {} {}", self.group, delivery.event.r#type),
                        otel.kind = "consumer",
                        group = %self.group,
                        event.id = %id,
                        "event.type" = %delivery.event.r#type,
                    );
                    munity_platform::telemetry::set_parent_from_traceparent(
                        &span,
                        &delivery.event.traceparent,
                    );
                    match handle(delivery.event).instrument(span).await {
                        Ok(()) => {
                            seen.insert(&id);
                            done.push(delivery.id);
                        }
                        Err(error) => {
                            tracing::warn!(group = %self.group, event = %id, %error, "handling failed; the event will be retried");
                        }
                    }
                }
                if !done.is_empty()
                    && let Err(error) = member.ack(&done).await
                {
                    tracing::warn!(group = %self.group, %error, "cannot acknowledge; the events will be redelivered");
                }
                if last_lag.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
                    metrics::report_lag(self.log.as_ref(), &self.group).await;
                    last_lag = Some(Instant::now());
                }
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5))
}
