//! Voting closes by itself at the deadline: every replica sweeps the events
//! whose deadline has passed (`EventsRepository::due_for_closing`) and
//! closes each. Closing is a compare-and-set on the event's status, so
//! whichever replica gets there first closes it, once, and publishes
//! VotingClosed; the others find it closed. Deadlines that passed while
//! every replica was down are past due at start-up: the first sweep
//! closes them.

use std::{sync::Arc, time::Duration};

use munity_platform::shutdown::ShutdownToken;

use crate::{
    domain::now_millis,
    store::{CloseOutcome, EventsRepository},
};

/// Sweeps every `interval` until `shutdown`.
pub async fn close_due(
    repo: Arc<dyn EventsRepository>,
    interval: Duration,
    shutdown: ShutdownToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match repo.due_for_closing(now_millis(), 100).await {
            Ok(due) => {
                for id in due {
                    match repo.close_voting(id).await {
                        Ok(CloseOutcome::Closed(option)) => {
                            tracing::info!(event = %id, option, "voting closed at its deadline");
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(event = %id, %error, "cannot close voting; retrying")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot look for deadlines; retrying"),
        }
    }
}
