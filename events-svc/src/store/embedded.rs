//! The embedded backend: one redb file (`events.redb`). Every change is one
//! write transaction (redb serializes them), so votes, counts, capacity and
//! closing are exact, and the domain events are staged in the same
//! transaction.
//!
//! Keys: ids as raw UUID bytes; `pair_key(a, b)` for "b under a" (an
//! owner's events, a community's events, an event's participants, a user's
//! joined events, a community's members); votes as event ‖ option ‖ user.

use std::{ops::Bound, path::Path};

use munity_bus::{
    DomainEvent,
    outbox::{EmbeddedOutbox, Publishing},
};
use munity_store::{
    StoreError, StoreResult,
    embedded::{EmbeddedDb, decode, encode, pair_key, read_one},
    internal, page_from,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::{
    CloseOutcome, EventView, EventsRepository, JoinOutcome, Listing, Page, UpdateOutcome,
    VoteOutcome,
};
use crate::{
    domain::{
        AUDIENCE_MAX, Activity, EventRecord, EventUpdate, Millis, ParticipantRecord, ReminderJob,
        StartPage, StartPosition, StatsRecord, Status, add_counter, now_millis, reminders_for,
        top_events, winner,
    },
    events,
};

const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// pair_key(owner, event) → ().
const BY_OWNER: TableDefinition<&[u8], ()> = TableDefinition::new("events_by_owner");
/// pair_key(community, event) → ().
const BY_COMMUNITY: TableDefinition<&[u8], ()> = TableDefinition::new("events_by_community");
/// pair_key(user, event) → ().
const JOINED: TableDefinition<&[u8], ()> = TableDefinition::new("joined_by_user");
/// pair_key(event, user) → participant.
const PARTICIPANTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("participants");
/// event ‖ option ‖ user → ().
const VOTES: TableDefinition<&[u8], ()> = TableDefinition::new("votes");
/// event ‖ option → votes.
const VOTE_COUNTS: TableDefinition<&[u8], u32> = TableDefinition::new("vote_counts");
/// deadline ms (big-endian) ‖ event → (): events still voting, by deadline.
const DEADLINES: TableDefinition<&[u8], ()> = TableDefinition::new("voting_deadlines");
/// start ms ‖ event ‖ option (big-endian) → (): every proposed start.
const STARTS: TableDefinition<&[u8], ()> = TableDefinition::new("events_by_start");
/// due ms ‖ event ‖ seconds before (big-endian) → (): reminders to send.
const REMINDERS: TableDefinition<&[u8], ()> = TableDefinition::new("reminders_due");
/// hour ‖ counter name → n.
const COUNTERS: TableDefinition<&[u8], u64> = TableDefinition::new("stats_counters");
/// hour ‖ user → (): who was active in an hour.
const ACTIVE: TableDefinition<&[u8], ()> = TableDefinition::new("stats_active_users");
/// hour ‖ event → joins less leaves in that hour.
const EVENT_JOINS: TableDefinition<&[u8], i64> = TableDefinition::new("stats_event_joins");
/// hour ‖ domain event id → (): counted already (kept two days).
const COUNTED: TableDefinition<&[u8], ()> = TableDefinition::new("stats_counted");

pub struct EmbeddedStore {
    db: EmbeddedDb,
    /// Every change goes through it, staging its domain events.
    outbox: EmbeddedOutbox,
    /// Reminders scheduled when voting closes (seconds before the start).
    reminders_before: Vec<u32>,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/events.redb`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let db = EmbeddedDb::open(dir, "events", |txn| {
            txn.open_table(EVENTS)?;
            txn.open_table(BY_OWNER)?;
            txn.open_table(BY_COMMUNITY)?;
            txn.open_table(JOINED)?;
            txn.open_table(PARTICIPANTS)?;
            txn.open_table(VOTES)?;
            txn.open_table(VOTE_COUNTS)?;
            txn.open_table(DEADLINES)?;
            txn.open_table(REMINDERS)?;
            txn.open_table(STARTS)?;
            txn.open_table(COUNTERS)?;
            txn.open_table(ACTIVE)?;
            txn.open_table(EVENT_JOINS)?;
            txn.open_table(COUNTED)?;
            Ok(())
        })?;
        Ok(EmbeddedStore {
            outbox: EmbeddedOutbox::new(db.clone())?,
            db,
            reminders_before: Vec::new(),
        })
    }

    /// Closing voting schedules a reminder this long before the start,
    /// for each offset (seconds).
    pub fn remind_before(mut self, offsets_secs: &[u32]) -> Self {
        self.reminders_before = offsets_secs.to_vec();
        self
    }

    /// What the relay needs: the outbox and its cue.
    /// Its database, for the membership view kept in the same file.
    pub fn db(&self) -> EmbeddedDb {
        self.db.clone()
    }

    pub fn publishing(&self) -> Publishing {
        Publishing::embedded(&self.outbox)
    }

    /// One write transaction staging the change's events with it.
    async fn change<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> StoreResult<(T, Vec<DomainEvent>)> + Send + 'static,
    {
        self.outbox.write(operation).await
    }

    /// The first `limit` keys of a due index (keys start with the due time
    /// in ms, big-endian) due at or before `now`.
    async fn due_keys(
        &self,
        index: TableDefinition<'static, &'static [u8], ()>,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Vec<u8>>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(index).map_err(internal)?;
                // Nothing falls due before 1970: start at 0. Every key of a
                // due time sorts before its time followed by 0xff bytes.
                let mut end = [0xffu8; 64];
                end[..8].copy_from_slice(&now.max(0).to_be_bytes());
                let mut due = Vec::new();
                for entry in table
                    .range::<&[u8]>([0u8; 8].as_slice()..=end.as_slice())
                    .map_err(internal)?
                    .take(limit)
                {
                    due.push(entry.map_err(internal)?.0.value().to_vec());
                }
                Ok(due)
            })
            .await
    }

    /// Casts (`cast`) or takes back one vote, with its count, in one
    /// transaction: exact under any concurrency.
    async fn change_vote(
        &self,
        id: Uuid,
        option: u32,
        user: Uuid,
        cast: bool,
    ) -> StoreResult<VoteOutcome> {
        self.change(move |txn| {
            let Some(event) = load(txn, id)? else {
                return Ok((VoteOutcome::NoEvent, vec![]));
            };
            if let Some(refused) = VoteOutcome::refusal(&event, option) {
                return Ok((refused, vec![]));
            }
            let mut votes = txn.open_table(VOTES).map_err(internal)?;
            let key = vote_key(id, option, user);
            let had = if cast {
                votes
                    .insert(key.as_slice(), ())
                    .map_err(internal)?
                    .is_some()
            } else {
                votes.remove(key.as_slice()).map_err(internal)?.is_none()
            };
            if had {
                return Ok((VoteOutcome::Unchanged, vec![]));
            }
            let mut counts = txn.open_table(VOTE_COUNTS).map_err(internal)?;
            let key = count_key(id, option);
            let now = counts
                .get(key.as_slice())
                .map_err(internal)?
                .map_or(0, |v| v.value());
            let next = if cast { now + 1 } else { now.saturating_sub(1) };
            counts.insert(key.as_slice(), next).map_err(internal)?;
            let published = if cast {
                events::vote_cast(&event, option, user)
            } else {
                events::vote_withdrawn(&event, option, user)
            };
            Ok((VoteOutcome::Changed, vec![published]))
        })
        .await
    }
}

fn vote_key(event: Uuid, option: u32, user: Uuid) -> [u8; 36] {
    let mut key = [0u8; 36];
    key[..16].copy_from_slice(event.as_bytes());
    key[16..20].copy_from_slice(&option.to_be_bytes());
    key[20..].copy_from_slice(user.as_bytes());
    key
}

fn count_key(event: Uuid, option: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(event.as_bytes());
    key[16..].copy_from_slice(&option.to_be_bytes());
    key
}

fn deadline_key(event: &EventRecord) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&event.voting_deadline.to_be_bytes());
    key[8..].copy_from_slice(event.id.as_bytes());
    key
}

/// Voting is over for `event`: it leaves the deadline index.
fn unschedule(txn: &WriteTransaction, event: &EventRecord) -> StoreResult<()> {
    txn.open_table(DEADLINES)
        .map_err(internal)?
        .remove(deadline_key(event).as_slice())
        .map_err(internal)?;
    Ok(())
}

fn start_key((start, event, option): StartPosition) -> [u8; 28] {
    let mut key = [0u8; 28];
    key[..8].copy_from_slice(&start.to_be_bytes());
    key[8..24].copy_from_slice(event.as_bytes());
    key[24..].copy_from_slice(&option.to_be_bytes());
    key
}

fn reminder_key(job: &ReminderJob) -> [u8; 28] {
    let mut key = [0u8; 28];
    key[..8].copy_from_slice(&job.due.to_be_bytes());
    key[8..24].copy_from_slice(job.event_id.as_bytes());
    key[24..].copy_from_slice(&job.before_secs.to_be_bytes());
    key
}

/// hour ‖ 16 bytes (an id).
fn hour_key(hour: i64, id: Uuid) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&hour.to_be_bytes());
    key[8..].copy_from_slice(id.as_bytes());
    key
}

fn counter_key(hour: i64, name: &str) -> Vec<u8> {
    let mut key = hour.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Whom a close, a cancellation or a reminder of `event` is told to
/// personally: its owner, participants and voters, each once, at most
/// [`AUDIENCE_MAX`] (read in the change's own transaction, so exactly who
/// was in when it happened).
fn audience(txn: &WriteTransaction, event: &EventRecord) -> StoreResult<Vec<Uuid>> {
    let mut people = vec![event.owner_id];
    let mut seen: std::collections::HashSet<Uuid> = people.iter().copied().collect();
    let participants = txn.open_table(PARTICIPANTS).map_err(internal)?;
    let (start, end) = (
        pair_key(event.id, Uuid::nil()),
        pair_key(event.id, Uuid::max()),
    );
    for entry in participants
        .range::<&[u8]>(start.as_slice()..=end.as_slice())
        .map_err(internal)?
    {
        if people.len() >= AUDIENCE_MAX {
            return Ok(people);
        }
        let (key, _) = entry.map_err(internal)?;
        let user = Uuid::from_slice(&key.value()[16..]).map_err(internal)?;
        if seen.insert(user) {
            people.push(user);
        }
    }
    let votes = txn.open_table(VOTES).map_err(internal)?;
    let (start, end) = (
        vote_key(event.id, 0, Uuid::nil()),
        vote_key(event.id, u32::MAX, Uuid::max()),
    );
    for entry in votes
        .range::<&[u8]>(start.as_slice()..=end.as_slice())
        .map_err(internal)?
    {
        if people.len() >= AUDIENCE_MAX {
            break;
        }
        let (key, _) = entry.map_err(internal)?;
        let user = Uuid::from_slice(&key.value()[20..]).map_err(internal)?;
        if seen.insert(user) {
            people.push(user);
        }
    }
    Ok(people)
}

/// Counts `activity` in its hour's statistics, once per domain event.
fn count_activity(txn: &WriteTransaction, activity: &Activity) -> StoreResult<()> {
    let mut counted = txn.open_table(COUNTED).map_err(internal)?;
    let key = hour_key(activity.hour, activity.id);
    if counted
        .insert(key.as_slice(), ())
        .map_err(internal)?
        .is_some()
    {
        return Ok(());
    }
    // Redeliveries come within minutes; two days is plenty.
    let forget = hour_key(activity.hour - 48, Uuid::nil());
    counted
        .retain_in::<&[u8], _>(..forget.as_slice(), |_, _| false)
        .map_err(internal)?;
    if let Some(name) = activity.kind.counter() {
        let mut counters = txn.open_table(COUNTERS).map_err(internal)?;
        let key = counter_key(activity.hour, name);
        let n = counters
            .get(key.as_slice())
            .map_err(internal)?
            .map_or(0, |v| v.value());
        counters.insert(key.as_slice(), n + 1).map_err(internal)?;
    }
    if activity.kind.active() {
        txn.open_table(ACTIVE)
            .map_err(internal)?
            .insert(hour_key(activity.hour, activity.user_id).as_slice(), ())
            .map_err(internal)?;
    }
    let delta = activity.kind.joins();
    if delta != 0 {
        let mut joins = txn.open_table(EVENT_JOINS).map_err(internal)?;
        let key = hour_key(activity.hour, activity.event_id);
        let n = joins
            .get(key.as_slice())
            .map_err(internal)?
            .map_or(0, |v| v.value());
        joins.insert(key.as_slice(), n + delta).map_err(internal)?;
    }
    Ok(())
}

fn load(txn: &WriteTransaction, id: Uuid) -> StoreResult<Option<EventRecord>> {
    let table = txn.open_table(EVENTS).map_err(internal)?;
    let value = table.get(id.as_bytes().as_slice()).map_err(internal)?;
    value.map(|v| decode(v.value())).transpose()
}

fn save(txn: &WriteTransaction, event: &EventRecord) -> StoreResult<()> {
    txn.open_table(EVENTS)
        .map_err(internal)?
        .insert(event.id.as_bytes().as_slice(), encode(event)?.as_slice())
        .map_err(internal)?;
    Ok(())
}

fn counts(db: &redb::Database, id: Uuid, options: usize) -> StoreResult<Vec<u32>> {
    let txn = db.begin_read().map_err(internal)?;
    let table = txn.open_table(VOTE_COUNTS).map_err(internal)?;
    (0..options as u32)
        .map(|option| {
            Ok(table
                .get(count_key(id, option).as_slice())
                .map_err(internal)?
                .map_or(0, |v| v.value()))
        })
        .collect()
}

#[async_trait::async_trait]
impl EventsRepository for EmbeddedStore {
    async fn create_event_telling(&self, event: &EventRecord, members: &[Uuid]) -> StoreResult<()> {
        let event = event.clone();
        let members = members.to_vec();
        self.change(move |txn| {
            if load(txn, event.id)?.is_some() {
                return Err(StoreError::Conflict("event"));
            }
            save(txn, &event)?;
            txn.open_table(BY_OWNER)
                .map_err(internal)?
                .insert(pair_key(event.owner_id, event.id).as_slice(), ())
                .map_err(internal)?;
            txn.open_table(DEADLINES)
                .map_err(internal)?
                .insert(deadline_key(&event).as_slice(), ())
                .map_err(internal)?;
            let mut starts = txn.open_table(STARTS).map_err(internal)?;
            for (option, time) in event.options.iter().enumerate() {
                starts
                    .insert(
                        start_key((time.start, event.id, option as u32)).as_slice(),
                        (),
                    )
                    .map_err(internal)?;
            }
            if let Some(community) = event.community_id {
                txn.open_table(BY_COMMUNITY)
                    .map_err(internal)?
                    .insert(pair_key(community, event.id).as_slice(), ())
                    .map_err(internal)?;
            }
            Ok(((), vec![events::created(&event, &members)]))
        })
        .await
    }

    async fn get_event(&self, id: Uuid) -> StoreResult<Option<EventRecord>> {
        self.db
            .read_now(move |db| read_one(db, EVENTS, id.as_bytes().as_slice()))
            .await
    }

    async fn view(&self, id: Uuid, user: Uuid) -> StoreResult<Option<EventView>> {
        // One read transaction, on the calling thread: a handful of keys
        // (a trip to the blocking pool cost more than the reads).
        self.db
            .read_now(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let events = txn.open_table(EVENTS).map_err(internal)?;
                let Some(value) = events.get(id.as_bytes().as_slice()).map_err(internal)? else {
                    return Ok(None);
                };
                let event: EventRecord = decode(value.value())?;
                let counts_table = txn.open_table(VOTE_COUNTS).map_err(internal)?;
                let votes = txn.open_table(VOTES).map_err(internal)?;
                let mut counts = Vec::with_capacity(event.options.len());
                let mut mine = Vec::new();
                for option in 0..event.options.len() as u32 {
                    counts.push(
                        counts_table
                            .get(count_key(id, option).as_slice())
                            .map_err(internal)?
                            .map_or(0, |v| v.value()),
                    );
                    if votes
                        .get(vote_key(id, option, user).as_slice())
                        .map_err(internal)?
                        .is_some()
                    {
                        mine.push(option);
                    }
                }
                Ok(Some(EventView {
                    event,
                    counts,
                    mine,
                }))
            })
            .await
    }

    async fn vote_counts(&self, id: Uuid) -> StoreResult<Vec<u32>> {
        self.db
            .read_now(move |db| {
                let event: Option<EventRecord> = read_one(db, EVENTS, id.as_bytes().as_slice())?;
                counts(db, id, event.map_or(0, |e| e.options.len()))
            })
            .await
    }

    async fn votes_of(&self, id: Uuid, user: Uuid) -> StoreResult<Vec<u32>> {
        self.db
            .read_now(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let votes = txn.open_table(VOTES).map_err(internal)?;
                let mut mine = Vec::new();
                for option in 0..crate::domain::limits::OPTIONS_MAX as u32 {
                    if votes
                        .get(vote_key(id, option, user).as_slice())
                        .map_err(internal)?
                        .is_some()
                    {
                        mine.push(option);
                    }
                }
                Ok(mine)
            })
            .await
    }

    async fn cast_vote(&self, id: Uuid, option: u32, user: Uuid) -> StoreResult<VoteOutcome> {
        self.change_vote(id, option, user, true).await
    }

    async fn withdraw_vote(&self, id: Uuid, option: u32, user: Uuid) -> StoreResult<VoteOutcome> {
        self.change_vote(id, option, user, false).await
    }

    async fn close_voting(&self, id: Uuid) -> StoreResult<CloseOutcome> {
        let offsets = self.reminders_before.clone();
        self.change(move |txn| {
            let Some(mut event) = load(txn, id)? else {
                return Ok((CloseOutcome::NoEvent, vec![]));
            };
            if event.status != Status::Voting {
                return Ok((CloseOutcome::NotVoting, vec![]));
            }
            let counts = {
                let table = txn.open_table(VOTE_COUNTS).map_err(internal)?;
                (0..event.options.len() as u32)
                    .map(|o| {
                        Ok(table
                            .get(count_key(id, o).as_slice())
                            .map_err(internal)?
                            .map_or(0, |v| v.value()))
                    })
                    .collect::<StoreResult<Vec<u32>>>()?
            };
            let chosen = winner(&event.options, &counts).unwrap_or(0);
            event.status = Status::Scheduled { option: chosen };
            save(txn, &event)?;
            unschedule(txn, &event)?;
            let mut reminders = txn.open_table(REMINDERS).map_err(internal)?;
            for job in reminders_for(&event, &offsets, now_millis()) {
                reminders
                    .insert(reminder_key(&job).as_slice(), ())
                    .map_err(internal)?;
            }
            let audience = audience(txn, &event)?;
            Ok((
                CloseOutcome::Closed(chosen),
                vec![events::voting_closed(&event, chosen, &audience)],
            ))
        })
        .await
    }

    async fn update_event(
        &self,
        id: Uuid,
        update: &EventUpdate,
        by: Uuid,
    ) -> StoreResult<UpdateOutcome> {
        let update = update.clone();
        self.change(move |txn| {
            let Some(mut event) = load(txn, id)? else {
                return Ok((UpdateOutcome::NoEvent, vec![]));
            };
            if event.status == Status::Cancelled {
                return Ok((UpdateOutcome::Cancelled, vec![]));
            }
            if let Some(Some(capacity)) = update.capacity
                && capacity < event.participant_count
            {
                return Ok((
                    UpdateOutcome::BelowParticipants(event.participant_count),
                    vec![],
                ));
            }
            update.apply(&mut event);
            save(txn, &event)?;
            let published = events::updated(&event, by);
            Ok((UpdateOutcome::Updated(Box::new(event)), vec![published]))
        })
        .await
    }

    async fn cancel(&self, id: Uuid) -> StoreResult<bool> {
        self.change(move |txn| {
            let Some(mut event) = load(txn, id)? else {
                return Ok((false, vec![]));
            };
            if event.status == Status::Cancelled {
                return Ok((false, vec![]));
            }
            event.status = Status::Cancelled;
            save(txn, &event)?;
            unschedule(txn, &event)?;
            let owner = event.owner_id;
            let audience = audience(txn, &event)?;
            Ok((true, vec![events::cancelled(&event, owner, &audience)]))
        })
        .await
    }

    async fn join(&self, id: Uuid, user: Uuid, at: Millis) -> StoreResult<JoinOutcome> {
        self.change(move |txn| {
            let Some(mut event) = load(txn, id)? else {
                return Ok((JoinOutcome::NoEvent, vec![]));
            };
            if event.status == Status::Cancelled {
                return Ok((JoinOutcome::Cancelled, vec![]));
            }
            let mut participants = txn.open_table(PARTICIPANTS).map_err(internal)?;
            let key = pair_key(id, user);
            if participants
                .get(key.as_slice())
                .map_err(internal)?
                .is_some()
            {
                return Ok((JoinOutcome::AlreadyJoined, vec![]));
            }
            if let Some(capacity) = event.capacity
                && event.participant_count >= capacity
            {
                return Ok((JoinOutcome::Full(capacity), vec![]));
            }
            let participant = ParticipantRecord {
                event_id: id,
                user_id: user,
                joined_at: at,
            };
            participants
                .insert(key.as_slice(), encode(&participant)?.as_slice())
                .map_err(internal)?;
            txn.open_table(JOINED)
                .map_err(internal)?
                .insert(pair_key(user, id).as_slice(), ())
                .map_err(internal)?;
            event.participant_count += 1;
            save(txn, &event)?;
            Ok((JoinOutcome::Joined, vec![events::joined(&event, user)]))
        })
        .await
    }

    async fn leave(&self, id: Uuid, user: Uuid) -> StoreResult<bool> {
        self.change(move |txn| {
            let Some(mut event) = load(txn, id)? else {
                return Ok((false, vec![]));
            };
            let removed = txn
                .open_table(PARTICIPANTS)
                .map_err(internal)?
                .remove(pair_key(id, user).as_slice())
                .map_err(internal)?
                .is_some();
            if !removed {
                return Ok((false, vec![]));
            }
            txn.open_table(JOINED)
                .map_err(internal)?
                .remove(pair_key(user, id).as_slice())
                .map_err(internal)?;
            event.participant_count = event.participant_count.saturating_sub(1);
            save(txn, &event)?;
            Ok((true, vec![events::left(&event, user)]))
        })
        .await
    }

    async fn list_participants(
        &self,
        id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<ParticipantRecord>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(PARTICIPANTS).map_err(internal)?;
                let start = pair_key(id, after.unwrap_or(Uuid::nil()));
                let end = pair_key(id, Uuid::max());
                let lower = match after {
                    Some(_) => Bound::Excluded(start.as_slice()),
                    None => Bound::Included(start.as_slice()),
                };
                let mut items = Vec::new();
                for entry in table
                    .range::<&[u8]>((lower, Bound::Included(end.as_slice())))
                    .map_err(internal)?
                {
                    let (_, value) = entry.map_err(internal)?;
                    items.push(decode::<ParticipantRecord>(value.value())?);
                    if items.len() > limit {
                        break;
                    }
                }
                Ok(page_from(items, limit, |p| p.user_id))
            })
            .await
    }

    async fn list_events(
        &self,
        listing: &Listing,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<EventRecord>> {
        let (index, parent) = match *listing {
            Listing::Owner(owner) => (BY_OWNER, owner),
            Listing::Community(community) => (BY_COMMUNITY, community),
            Listing::Joined(user) => (JOINED, user),
        };
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(index).map_err(internal)?;
                let events = txn.open_table(EVENTS).map_err(internal)?;
                let start = pair_key(parent, after.unwrap_or(Uuid::nil()));
                let end = pair_key(parent, Uuid::max());
                let lower = match after {
                    Some(_) => Bound::Excluded(start.as_slice()),
                    None => Bound::Included(start.as_slice()),
                };
                let mut items = Vec::new();
                for entry in table
                    .range::<&[u8]>((lower, Bound::Included(end.as_slice())))
                    .map_err(internal)?
                {
                    let (key, _) = entry.map_err(internal)?;
                    let id = &key.value()[16..32];
                    if let Some(value) = events.get(id).map_err(internal)? {
                        items.push(decode::<EventRecord>(value.value())?);
                    }
                    if items.len() > limit {
                        break;
                    }
                }
                Ok(page_from(items, limit, |e| e.id))
            })
            .await
    }

    async fn list_by_start(
        &self,
        from: Millis,
        after: Option<StartPosition>,
        limit: usize,
    ) -> StoreResult<StartPage> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let starts = txn.open_table(STARTS).map_err(internal)?;
                let events = txn.open_table(EVENTS).map_err(internal)?;
                let first = start_key((from.max(0), Uuid::nil(), 0));
                let lower = after.map(start_key);
                let lower = match &lower {
                    Some(key) if key.as_slice() >= first.as_slice() => {
                        Bound::Excluded(key.as_slice())
                    }
                    _ => Bound::Included(first.as_slice()),
                };
                let mut page = StartPage {
                    items: Vec::new(),
                    next: None,
                };
                // A bounded stretch per call: other options' entries and
                // cancelled events are passed over, not counted.
                let mut budget = limit * 10 + 100;
                for entry in starts
                    .range::<&[u8]>((lower, Bound::Unbounded))
                    .map_err(internal)?
                {
                    let (key, _) = entry.map_err(internal)?;
                    let key = key.value();
                    let position = (
                        i64::from_be_bytes(key[..8].try_into().map_err(internal)?),
                        Uuid::from_slice(&key[8..24]).map_err(internal)?,
                        u32::from_be_bytes(key[24..].try_into().map_err(internal)?),
                    );
                    if let Some(value) = events
                        .get(position.1.as_bytes().as_slice())
                        .map_err(internal)?
                    {
                        let event: EventRecord = decode(value.value())?;
                        if event.start_option() == Some(position.2) {
                            page.items.push(event);
                        }
                    }
                    budget -= 1;
                    if page.items.len() >= limit || budget == 0 {
                        page.next = Some(position);
                        break;
                    }
                }
                Ok(page)
            })
            .await
    }

    async fn due_for_closing(&self, now: Millis, limit: usize) -> StoreResult<Vec<Uuid>> {
        let keys = self.due_keys(DEADLINES, now, limit).await?;
        keys.iter()
            .map(|key| Uuid::from_slice(&key[8..]).map_err(internal))
            .collect()
    }

    async fn due_reminders(&self, now: Millis, limit: usize) -> StoreResult<Vec<ReminderJob>> {
        let keys = self.due_keys(REMINDERS, now, limit).await?;
        keys.iter()
            .map(|key| {
                Ok(ReminderJob {
                    due: i64::from_be_bytes(key[..8].try_into().map_err(internal)?),
                    event_id: Uuid::from_slice(&key[8..24]).map_err(internal)?,
                    before_secs: u32::from_be_bytes(key[24..].try_into().map_err(internal)?),
                })
            })
            .collect()
    }

    async fn send_reminder(&self, job: &ReminderJob, now: Millis) -> StoreResult<bool> {
        let job = *job;
        self.change(move |txn| {
            // Taking the job off the index is the compare-and-set: once.
            let taken = txn
                .open_table(REMINDERS)
                .map_err(internal)?
                .remove(reminder_key(&job).as_slice())
                .map_err(internal)?
                .is_some();
            if !taken {
                return Ok((false, vec![]));
            }
            match load(txn, job.event_id)? {
                Some(event) if job.stands(&event, now) => {
                    let audience = audience(txn, &event)?;
                    Ok((true, vec![events::reminder_due(&event, &job, &audience)]))
                }
                _ => Ok((false, vec![])),
            }
        })
        .await
    }

    async fn record_activity(&self, activity: &Activity) -> StoreResult<()> {
        self.record_activities(std::slice::from_ref(activity)).await
    }

    /// In one write transaction: a read of the log costs one commit.
    async fn record_activities(&self, activities: &[Activity]) -> StoreResult<()> {
        let activities = activities.to_vec();
        self.db
            .write_shared(move |txn| {
                for activity in &activities {
                    count_activity(txn, activity)?;
                }
                Ok(())
            })
            .await
    }

    async fn stats(&self, from_hour: i64, to_hour: i64, top: usize) -> StoreResult<StatsRecord> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let (from, to) = (from_hour.to_be_bytes(), to_hour.to_be_bytes());
                let range = from.as_slice()..to.as_slice();
                let mut stats = StatsRecord::default();
                let counters = txn.open_table(COUNTERS).map_err(internal)?;
                for entry in counters.range::<&[u8]>(range.clone()).map_err(internal)? {
                    let (key, n) = entry.map_err(internal)?;
                    let name = std::str::from_utf8(&key.value()[8..]).unwrap_or("");
                    add_counter(&mut stats, name, n.value() as i64);
                }
                let active = txn.open_table(ACTIVE).map_err(internal)?;
                let mut users = std::collections::HashSet::new();
                for entry in active.range::<&[u8]>(range.clone()).map_err(internal)? {
                    let (key, _) = entry.map_err(internal)?;
                    users.insert(Uuid::from_slice(&key.value()[8..]).map_err(internal)?);
                }
                stats.active_users = users.len() as u64;
                let joins_table = txn.open_table(EVENT_JOINS).map_err(internal)?;
                let mut joins = std::collections::HashMap::new();
                for entry in joins_table.range::<&[u8]>(range).map_err(internal)? {
                    let (key, n) = entry.map_err(internal)?;
                    let event = Uuid::from_slice(&key.value()[8..]).map_err(internal)?;
                    *joins.entry(event).or_insert(0) += n.value();
                }
                stats.top_events = top_events(joins, top);
                Ok(stats)
            })
            .await
    }
}
