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

use crate::{Delivery, DomainEvent, EventLog, GroupConsumer, metrics};

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
    /// foldhash, not the standard SipHash: every consumer looks up every
    /// event it reads, and SipHash was 2% of munity dev's CPU while posts
    /// were written; the ids are our own UUIDs, not an outsider's keys.
    ids: HashSet<u128, foldhash::fast::RandomState>,
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
        let mut member = Member::new(self);
        while let Some(deliveries) = member.next_batch(&shutdown).await {
            let mut done = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                let span = member.span(&delivery.event);
                let id = delivery.event.id.clone();
                match handle(delivery.event).instrument(span).await {
                    Ok(()) => done.push((delivery.id, id)),
                    Err(error) => member.failed(&id, &error),
                }
            }
            member.finish(done).await;
        }
    }

    /// Runs until `shutdown`, handing each read's new events to `handle`
    /// at once: for handlers that store a batch in one write instead of
    /// one write per event. When a batch fails, its events are handed
    /// over one at a time, so one bad event holds back only itself.
    pub async fn run_batches<H, F>(self, shutdown: ShutdownToken, mut handle: H)
    where
        H: FnMut(Vec<DomainEvent>) -> F + Send,
        F: Future<Output = anyhow::Result<()>> + Send,
    {
        let mut member = Member::new(self);
        while let Some(deliveries) = member.next_batch(&shutdown).await {
            if deliveries.is_empty() {
                member.finish(Vec::new()).await;
                continue;
            }
            // Each event's trace gets its consumer span, open while the
            // batch is handled (the work runs in the first one's).
            let spans: Vec<tracing::Span> = deliveries
                .iter()
                .map(|d| {
                    let span = member.span(&d.event);
                    span.record("events", deliveries.len());
                    span
                })
                .collect();
            let events: Vec<DomainEvent> = deliveries.iter().map(|d| d.event.clone()).collect();
            let handled = handle(events).instrument(spans[0].clone()).await;
            drop(spans);
            let done = match handled {
                Ok(()) => deliveries.into_iter().map(|d| (d.id, d.event.id)).collect(),
                Err(_) if deliveries.len() > 1 => {
                    let mut done = Vec::with_capacity(deliveries.len());
                    for delivery in deliveries {
                        let span = member.span(&delivery.event);
                        let id = delivery.event.id.clone();
                        match handle(vec![delivery.event]).instrument(span).await {
                            Ok(()) => done.push((delivery.id, id)),
                            Err(error) => member.failed(&id, &error),
                        }
                    }
                    done
                }
                Err(error) => {
                    member.failed(&deliveries[0].event.id, &error);
                    Vec::new()
                }
            };
            member.finish(done).await;
        }
    }
}

/// A [`ConsumerLoop`] at work: its membership (joined again after a
/// failed read), what it has handled recently, and when it last looked
/// for stale deliveries and reported its lag.
struct Member {
    config: ConsumerLoop,
    joined: Option<Box<dyn GroupConsumer>>,
    seen: Seen,
    failures: u32,
    /// Looking for stale deliveries and reporting the lag each cost the
    /// log a transaction (or a round trip): under load a consumer loops
    /// once per batch, so both are paced instead of done every time. A
    /// dead member's deliveries are still taken over within `retry_after`
    /// plus `claim_every`.
    claim_every: Duration,
    last_claim: Option<Instant>,
    last_lag: Option<Instant>,
}

impl Member {
    fn new(config: ConsumerLoop) -> Self {
        let claim_every = (config.retry_after / 4).clamp(CLAIM_EVERY_MIN, CLAIM_EVERY_MAX);
        Member {
            config,
            joined: None,
            seen: Seen {
                ids: HashSet::with_capacity_and_hasher(Seen::CAPACITY + 1, Default::default()),
                order: VecDeque::with_capacity(Seen::CAPACITY + 1),
                capacity: Seen::CAPACITY,
            },
            failures: 0,
            claim_every,
            last_claim: None,
            last_lag: None,
        }
    }

    /// The next deliveries to handle (stale ones first), joining the group
    /// first when needed; those handled before are acknowledged here and
    /// left out. `None` once `shutdown` is cancelled.
    async fn next_batch(&mut self, shutdown: &ShutdownToken) -> Option<Vec<Delivery>> {
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let Some(member) = self.joined.as_mut() else {
                let joined = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    joined = self.config.log.join(&self.config.group, &self.config.consumer) => joined,
                };
                match joined {
                    Ok(member) => {
                        self.joined = Some(member);
                        self.failures = 0;
                    }
                    Err(error) => {
                        if self.failures == 0 {
                            tracing::warn!(group = %self.config.group, %error, "cannot join the consumer group; retrying");
                        }
                        self.failures += 1;
                        tokio::select! {
                            () = shutdown.cancelled() => return None,
                            () = tokio::time::sleep(backoff(self.failures)) => {}
                        }
                    }
                }
                continue;
            };
            let (batch, retry_after, wait) =
                (self.config.batch, self.config.retry_after, self.config.wait);
            let claim = self
                .last_claim
                .is_none_or(|at| at.elapsed() >= self.claim_every);
            let read = async {
                if claim {
                    let stale = member.claim_stale(retry_after, batch).await?;
                    if !stale.is_empty() {
                        return Ok::<_, crate::BusError>((stale, true));
                    }
                }
                Ok((member.next(batch, wait).await?, false))
            };
            let read = tokio::select! {
                () = shutdown.cancelled() => return None,
                read = read => read,
            };
            let deliveries = match read {
                Ok((deliveries, claimed)) => {
                    if claim {
                        // A full batch of stale deliveries: more may
                        // wait, so look again at once.
                        let more = claimed && deliveries.len() >= batch;
                        self.last_claim = (!more).then(Instant::now);
                    }
                    deliveries
                }
                Err(error) => {
                    tracing::warn!(group = %self.config.group, %error, "cannot read the event log; retrying");
                    self.failures += 1;
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(backoff(self.failures)) => {}
                    }
                    // Rejoin: a Redis consumer's connection may be gone.
                    self.joined = None;
                    continue;
                }
            };
            self.failures = 0;
            let (fresh, again): (Vec<Delivery>, Vec<Delivery>) = deliveries
                .into_iter()
                .partition(|d| !self.seen.contains(&d.event.id));
            if !again.is_empty() {
                let ids: Vec<String> = again.into_iter().map(|d| d.id).collect();
                self.ack(&ids).await;
            }
            return Some(fresh);
        }
    }

    /// The span of handling `event`: it joins the trace the event carries
    /// (the relay's span, child of the change that made it).
    fn span(&self, event: &DomainEvent) -> tracing::Span {
        let span = tracing::info_span!(
            "bus.consume",
            otel.name = %format!("consume {} {}", self.config.group, event.r#type),
            otel.kind = "consumer",
            group = %self.config.group,
            event.id = %event.id,
            "event.type" = %event.r#type,
            events = tracing::field::Empty,
        );
        munity_platform::telemetry::set_parent_from_traceparent(&span, &event.traceparent);
        span
    }

    fn failed(&self, event: &str, error: &anyhow::Error) {
        tracing::warn!(group = %self.config.group, event, %error, "handling failed; the event will be retried");
    }

    /// Remembers and acknowledges what was handled (delivery id, event
    /// id), and reports the lag when it is time to.
    async fn finish(&mut self, done: Vec<(String, String)>) {
        let mut ids = Vec::with_capacity(done.len());
        for (delivery, event) in done {
            self.seen.insert(&event);
            ids.push(delivery);
        }
        if !ids.is_empty() {
            self.ack(&ids).await;
        }
        if self.last_lag.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
            metrics::report_lag(self.config.log.as_ref(), &self.config.group).await;
            self.last_lag = Some(Instant::now());
        }
    }

    async fn ack(&mut self, ids: &[String]) {
        if let Some(member) = self.joined.as_mut()
            && let Err(error) = member.ack(ids).await
        {
            tracing::warn!(group = %self.config.group, %error, "cannot acknowledge; the events will be redelivered");
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5))
}
