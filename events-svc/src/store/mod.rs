//! The events repository: one trait, two backends (embedded redb, CQL),
//! one contract (`tests/repository_contract.rs`). Rules that must hold
//! across concurrent replicas (one vote per user per option, exact counts,
//! capacity, closing once) are compare-and-set operations here. Every
//! change stages its domain events with it (see `munity_bus::outbox`).

pub mod cql;
pub mod embedded;

pub use munity_store::{Page, StoreError, StoreResult};
use uuid::Uuid;

use crate::domain::{
    Activity, EventRecord, EventUpdate, Millis, ParticipantRecord, ReminderJob, StartPage,
    StartPosition, StatsRecord, Status,
};

/// Which events a listing walks, in a stable order (by id: creation order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// Created by this user.
    Owner(Uuid),
    /// Of this community.
    Community(Uuid),
    /// Joined by this user.
    Joined(Uuid),
}

/// What a vote (or taking it back) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteOutcome {
    /// Recorded (or removed).
    Changed,
    /// It was so already.
    Unchanged,
    /// Voting is over (or the event cancelled).
    NotVoting,
    /// No such option.
    NoOption,
    NoEvent,
}

impl VoteOutcome {
    /// Why `event` takes no vote for `option` now, if it does not: the one
    /// rule every backend checks before it touches a vote.
    pub fn refusal(event: &EventRecord, option: u32) -> Option<VoteOutcome> {
        if event.status != Status::Voting {
            Some(VoteOutcome::NotVoting)
        } else if option as usize >= event.options.len() {
            Some(VoteOutcome::NoOption)
        } else {
            None
        }
    }
}

/// What closing voting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// Closed now, with this option chosen.
    Closed(u32),
    NotVoting,
    NoEvent,
}

/// What joining did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    AlreadyJoined,
    /// At capacity (the capacity).
    Full(u32),
    Cancelled,
    NoEvent,
}

/// An event with its vote counts and one user's votes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    pub event: EventRecord,
    pub counts: Vec<u32>,
    pub mine: Vec<u32>,
}

/// What updating an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated(Box<EventRecord>),
    /// The capacity asked for is below the participants already in (them).
    BelowParticipants(u32),
    Cancelled,
    NoEvent,
}

#[async_trait::async_trait]
pub trait EventsRepository: Send + Sync + 'static {
    /// Stores a new event (status VOTING).
    async fn create_event(&self, event: &EventRecord) -> StoreResult<()> {
        self.create_event_telling(event, &[]).await
    }
    /// Stores a new event (status VOTING); its EventCreated names `members`
    /// (its community's, at most [`crate::domain::AUDIENCE_MAX`]) to be
    /// told personally.
    async fn create_event_telling(&self, event: &EventRecord, members: &[Uuid]) -> StoreResult<()>;
    async fn get_event(&self, id: Uuid) -> StoreResult<Option<EventRecord>>;
    /// Votes per option, exact, indexed by option id.
    async fn vote_counts(&self, id: Uuid) -> StoreResult<Vec<u32>>;
    /// The options `user` voted for.
    async fn votes_of(&self, id: Uuid, user: Uuid) -> StoreResult<Vec<u32>>;
    /// The event as `user` sees it: the record, votes per option, and the
    /// options `user` voted for (a backend may read them at once).
    async fn view(&self, id: Uuid, user: Uuid) -> StoreResult<Option<EventView>> {
        let Some(event) = self.get_event(id).await? else {
            return Ok(None);
        };
        Ok(Some(EventView {
            counts: self.vote_counts(id).await?,
            mine: self.votes_of(id, user).await?,
            event,
        }))
    }
    async fn cast_vote(&self, id: Uuid, option: u32, user: Uuid) -> StoreResult<VoteOutcome>;
    async fn withdraw_vote(&self, id: Uuid, option: u32, user: Uuid) -> StoreResult<VoteOutcome>;
    /// Casts (`cast`) or takes back `user`'s vote for `option` of `event`
    /// (as the caller read it just before), then the event as `user` sees
    /// it: what Vote and Unvote answer. The view is `None` unless the
    /// outcome is `Changed` or `Unchanged`. A backend may answer from fewer
    /// reads than a change and a fresh [`EventsRepository::view`] take.
    async fn vote_and_view(
        &self,
        event: &EventRecord,
        option: u32,
        user: Uuid,
        cast: bool,
    ) -> StoreResult<(VoteOutcome, Option<EventView>)> {
        let outcome = if cast {
            self.cast_vote(event.id, option, user).await?
        } else {
            self.withdraw_vote(event.id, option, user).await?
        };
        let view = match outcome {
            VoteOutcome::Changed | VoteOutcome::Unchanged => self.view(event.id, user).await?,
            _ => None,
        };
        Ok((outcome, view))
    }
    /// Ends voting once: the winner by [`crate::domain::winner`].
    async fn close_voting(&self, id: Uuid) -> StoreResult<CloseOutcome>;
    /// Changes the event's own fields; never a capacity below its
    /// participants, even with joins racing (`by`: who, for the event).
    async fn update_event(
        &self,
        id: Uuid,
        update: &EventUpdate,
        by: Uuid,
    ) -> StoreResult<UpdateOutcome>;
    /// False when it was cancelled already (or does not exist).
    async fn cancel(&self, id: Uuid) -> StoreResult<bool>;
    async fn join(&self, id: Uuid, user: Uuid, at: Millis) -> StoreResult<JoinOutcome>;
    /// False when the user had not joined.
    async fn leave(&self, id: Uuid, user: Uuid) -> StoreResult<bool>;
    async fn list_participants(
        &self,
        id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<ParticipantRecord>>;
    async fn list_events(
        &self,
        listing: &Listing,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<EventRecord>>;

    /// Events not cancelled that start at or after `from`, by (start, id):
    /// every option's start is indexed when the event is created, and an
    /// event counts at its `start_option` only, so closing moves it without
    /// touching the index. Continues after `after`; `limit` events at most.
    async fn list_by_start(
        &self,
        from: Millis,
        after: Option<StartPosition>,
        limit: usize,
    ) -> StoreResult<StartPage>;

    /// Events still voting whose deadline is at or before `now`, oldest
    /// deadline first (the scheduler closes them).
    async fn due_for_closing(&self, now: Millis, limit: usize) -> StoreResult<Vec<Uuid>>;

    /// Reminders due at or before `now`, oldest first. Closing voting
    /// schedules them (offsets given to the backend when opened).
    async fn due_reminders(&self, now: Millis, limit: usize) -> StoreResult<Vec<ReminderJob>>;
    /// Sends a due reminder once, whichever replica gets there first
    /// (publishing ReminderDue); false when it was sent already or no
    /// longer stands (cancelled, started, the time changed).
    async fn send_reminder(&self, job: &ReminderJob, now: Millis) -> StoreResult<bool>;

    /// Counts one domain event in its hour's statistics.
    async fn record_activity(&self, activity: &Activity) -> StoreResult<()>;
    /// Counts several (a read of the log); a backend that can do it in one
    /// write overrides this.
    async fn record_activities(&self, activities: &[Activity]) -> StoreResult<()> {
        for activity in activities {
            self.record_activity(activity).await?;
        }
        Ok(())
    }
    /// Statistics over whole hours `[from_hour, to_hour)`.
    async fn stats(&self, from_hour: i64, to_hour: i64, top: usize) -> StoreResult<StatsRecord>;
}

/// An open backend: the repository, and what its relay needs.
pub struct Opened {
    pub repo: std::sync::Arc<dyn EventsRepository>,
    pub publishing: munity_bus::outbox::Publishing,
    /// The membership view, in the same store.
    pub memberships: std::sync::Arc<dyn munity_bus::membership::MembershipView>,
}

/// Opens the configured backend; voting closed schedules a reminder
/// `reminders_before_secs` before the start, for each offset.
pub async fn open(
    storage: &munity_platform::config::StorageConfig,
    reminders_before_secs: &[u32],
) -> anyhow::Result<Opened> {
    use std::sync::Arc;
    Ok(match storage {
        munity_platform::config::StorageConfig::Embedded { path } => {
            let store = embedded::EmbeddedStore::open(path)?.remind_before(reminders_before_secs);
            Opened {
                publishing: store.publishing(),
                memberships: munity_bus::membership::EmbeddedMemberships::open(store.db()),
                repo: Arc::new(store),
            }
        }
        munity_platform::config::StorageConfig::Cql(config) => {
            let store = Arc::new(
                cql::CqlStore::connect(config)
                    .await?
                    .remind_before(reminders_before_secs),
            );
            Opened {
                publishing: munity_bus::outbox::Publishing::cql(store.outbox(), store.clone()),
                memberships: munity_bus::membership::CqlMemberships::prepare(store.cql()).await?,
                repo: store,
            }
        }
    })
}
