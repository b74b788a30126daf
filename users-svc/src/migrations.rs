//! One-time data migrations, run in the background at start-up until the
//! store records them done.
//!
//! The one there is: [`PROFILE_BACKFILL`]. Accounts last written before
//! users-svc published `ProfileChanged` never announced their display
//! name, so the membership view (`munity_bus::membership`) could not find
//! them by name (discuss-svc's `@Display Name` mentions). The backfill
//! walks every account, a page at a time, stages a `ProfileChanged` for
//! each in the outbox (the relay publishes them like any other event), and
//! then records itself done in the store's `migrations` table.
//!
//! Restart-safe without a cursor: a crash part way (or a shutdown) leaves
//! it unrecorded, and the next start walks again from the first account.
//! `ProfileChanged` sets the name the view keeps, so the accounts announced
//! twice cost an event each and change nothing; for the same reason
//! several replicas on one keyspace may all run it at once.

use std::{sync::Arc, time::Duration};

use munity_platform::shutdown::ShutdownToken;
use uuid::Uuid;

use crate::{
    domain::{UserRecord, now_millis},
    events,
    store::{StoreResult, UsersRepository},
};

/// The profile backfill's name in the `migrations` table (a new version
/// of it would be a new name, run once more on every store).
pub const PROFILE_BACKFILL: &str = "profile_changed_backfill_v1";

/// Accounts read, and their events staged, at a time.
pub const PAGE: usize = 500;

/// How long a failed backfill waits before it goes on from where it was.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What a run of the backfill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backfill {
    /// The store records it done: nothing was read or staged.
    AlreadyDone,
    /// Every account's `ProfileChanged` was staged (this many by this
    /// call), and the backfill recorded done.
    Done { accounts: u64 },
}

/// The time the backfill's `ProfileChanged` for `user` says its name was
/// written: the account's creation, the one time of writing it records.
///
/// The view keeps the name with the latest `changed_at_ms` (an older one
/// is ignored, an equal one replaces it; 0 would read as the event's
/// own time, now). Every real `ProfileChanged` says the time of its
/// write: registration the creation, each later write a later time (by
/// users-svc's clocks). So the backfill's can only replace the
/// registration's, with the name as read since (the same or newer), and a
/// rename, made before the page was read or after, wins over it whichever
/// arrives first. Where the view has no name (the accounts this is for),
/// it is the name. At least 1: 0 or less would read as "now" and could
/// hide a newer rename.
pub fn backfill_changed_at(user: &UserRecord) -> i64 {
    user.created_at.max(1)
}

/// Runs the profile backfill on `repo` to its end, [`PAGE`] accounts at a
/// time, unless the store records it done. An error leaves it unrecorded
/// (the accounts staged so far stay staged).
pub async fn backfill_profiles(repo: &dyn UsersRepository) -> StoreResult<Backfill> {
    backfill_profiles_in_pages(repo, PAGE, &mut None).await
}

/// [`backfill_profiles`] with pages of `page` accounts, going on after
/// `after` (and keeping it up to date, so a retry after an error resumes
/// there).
#[doc(hidden)]
pub async fn backfill_profiles_in_pages(
    repo: &dyn UsersRepository,
    page: usize,
    after: &mut Option<Uuid>,
) -> StoreResult<Backfill> {
    if repo.migration_done(PROFILE_BACKFILL).await? {
        return Ok(Backfill::AlreadyDone);
    }
    let mut accounts = 0u64;
    loop {
        let users = repo.list_users(*after, page.max(1)).await?;
        let staged: Vec<_> = users
            .items
            .iter()
            .map(|user| events::profile_changed(user, backfill_changed_at(user)))
            .collect();
        if !staged.is_empty() {
            repo.stage_events(&staged).await?;
        }
        accounts += staged.len() as u64;
        match users.next_after {
            Some(next) => *after = Some(next),
            None => break,
        }
    }
    repo.record_migration(PROFILE_BACKFILL, now_millis())
        .await?;
    Ok(Backfill::Done { accounts })
}

/// Runs the backfill in the background until it is done or `shutdown`
/// fires: the service serves meanwhile. A failure (the store away) is
/// logged and retried from the page it stopped at.
pub fn spawn_profile_backfill(repo: Arc<dyn UsersRepository>, shutdown: ShutdownToken) {
    tokio::spawn(async move {
        let run = async {
            let mut after = None;
            loop {
                match backfill_profiles_in_pages(repo.as_ref(), PAGE, &mut after).await {
                    Ok(Backfill::AlreadyDone) => return,
                    Ok(Backfill::Done { accounts }) => {
                        tracing::info!(
                            accounts,
                            migration = PROFILE_BACKFILL,
                            "every account's ProfileChanged staged"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            migration = PROFILE_BACKFILL,
                            "profile backfill failed; retrying in {} s",
                            RETRY_AFTER.as_secs()
                        );
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
        };
        // Stopped part way, it is not recorded, and the next start redoes it.
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = run => {}
        }
    });
}
