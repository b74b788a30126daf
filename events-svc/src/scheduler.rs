//! The scheduler: voting closes by itself at the deadline, and reminders go
//! out before a scheduled event starts. Every replica sweeps the due
//! indexes (`EventsRepository::due_for_closing`, `due_reminders`) and runs
//! each job. Each job's effect is one compare-and-set (the event's status
//! for a close; taking the reminder off its index, or `IF NOT EXISTS` on
//! `reminders_sent`, for a reminder), so whichever replica gets there
//! first does it, once, and publishes its domain event; the others find it
//! done. No leases: a replica killed mid-sweep leaves nothing half-done,
//! and jobs that fell due while every replica was down are past due at
//! start-up, so the first sweep runs them.

use std::{sync::Arc, time::Duration};

use munity_platform::shutdown::ShutdownToken;

use crate::{
    domain::now_millis,
    store::{CloseOutcome, EventsRepository},
};

/// Jobs run per sweep and per kind; the next sweep goes on.
const BATCH: usize = 100;

/// Sweeps every `interval` until `shutdown`.
pub async fn run(repo: Arc<dyn EventsRepository>, interval: Duration, shutdown: ShutdownToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        close_due(repo.as_ref()).await;
        remind_due(repo.as_ref()).await;
    }
}

async fn close_due(repo: &dyn EventsRepository) {
    let due = match repo.due_for_closing(now_millis(), BATCH).await {
        Ok(due) => due,
        Err(error) => return tracing::warn!(%error, "cannot look for deadlines; retrying"),
    };
    for id in due {
        match repo.close_voting(id).await {
            Ok(CloseOutcome::Closed(option)) => {
                tracing::info!(event = %id, option, "voting closed at its deadline");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(event = %id, %error, "cannot close voting; retrying"),
        }
    }
}

async fn remind_due(repo: &dyn EventsRepository) {
    let now = now_millis();
    let due = match repo.due_reminders(now, BATCH).await {
        Ok(due) => due,
        Err(error) => return tracing::warn!(%error, "cannot look for reminders; retrying"),
    };
    for job in due {
        match repo.send_reminder(&job, now).await {
            Ok(true) => tracing::info!(
                event = %job.event_id,
                seconds_before = job.before_secs,
                "reminder sent"
            ),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(event = %job.event_id, %error, "cannot send a reminder; retrying")
            }
        }
    }
}
