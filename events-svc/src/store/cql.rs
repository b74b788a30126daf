//! The CQL backend (ScyllaDB; Cassandra in tests). Every query has its
//! table and bounded partitions:
//!
//! - `events`: one row per event; the fields that change under races
//!   (`status`, `chosen`, `participant_count`) are columns changed only by
//!   lightweight transactions; the rest is the record as JSON.
//! - `events_by_owner`, `events_by_community`, `joined_by_user`: listings
//!   clustered by event id (UUIDv7: creation order).
//! - `votes ((event_id), option, user_id)`: a vote is its row, so casting
//!   it twice is the same write and needs no lightweight transaction: the
//!   row is read, and written (with its domain event, in one logged batch)
//!   only when it changes. Counts are `COUNT(*)` of one option's rows in the
//!   event's partition (exact whatever the races).
//! - `participants ((event_id), user_id)`, `members ((community_id),
//!   user_id)`.
//! - The scheduler's due indexes, `voting_deadlines` and `reminders_due`,
//!   in minute partitions read from a cursor (`due_cursor`) that is never
//!   past a job still to run; `reminders_sent` is the reminders' CAS.
//! - Statistics per hour, in day partitions: `stats_counters` and
//!   `event_joins` (counters), `active_users` (a row per user and hour).
//!
//! Domain events: written in the logged batch of a plain write (creating an
//! event), staged tentatively around a lightweight transaction otherwise,
//! with [`Verify`] answering the relay about unconfirmed ones.

use std::sync::Arc;

use munity_bus::{
    BusResult, DomainEvent,
    outbox::{
        Verify,
        cql::{self as outbox, CqlOutbox},
    },
};
use munity_platform::config::CqlConfig;
use munity_store::{
    StoreError, StoreResult,
    cql::{CqlStore as Cql, limit_plus_one},
    internal, now_millis, page_from,
};
use prost::Message;
use scylla::statement::{
    batch::{Batch, BatchType},
    prepared::PreparedStatement,
};
use scylla::value::Counter;
use uuid::Uuid;

use super::{
    CloseOutcome, EventView, EventsRepository, JoinOutcome, Listing, Page, UpdateOutcome,
    VoteOutcome,
};
use crate::{
    domain::{
        AUDIENCE_MAX, Activity, EventRecord, EventUpdate, Millis, ParticipantRecord, ReminderJob,
        StartPage, StartPosition, StatsRecord, Status, add_counter, limits, reminders_for,
        top_events, winner,
    },
    events,
};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (
        id uuid PRIMARY KEY, record text, status text, chosen int, participant_count int,
        capacity int)",
    "CREATE TABLE IF NOT EXISTS events_by_owner (owner_id uuid, id uuid, PRIMARY KEY ((owner_id), id))",
    "CREATE TABLE IF NOT EXISTS events_by_community (
        community_id uuid, id uuid, PRIMARY KEY ((community_id), id))",
    "CREATE TABLE IF NOT EXISTS joined_by_user (user_id uuid, id uuid, PRIMARY KEY ((user_id), id))",
    "CREATE TABLE IF NOT EXISTS votes (
        event_id uuid, option int, user_id uuid, PRIMARY KEY ((event_id), option, user_id))",
    "CREATE TABLE IF NOT EXISTS participants (
        event_id uuid, user_id uuid, joined_at bigint, PRIMARY KEY ((event_id), user_id))",
    "CREATE TABLE IF NOT EXISTS voting_deadlines (
        minute bigint, deadline bigint, id uuid, PRIMARY KEY ((minute), deadline, id))",
    "CREATE TABLE IF NOT EXISTS events_by_start (
        week bigint, start bigint, id uuid, option int, PRIMARY KEY ((week), start, id, option))",
    "CREATE TABLE IF NOT EXISTS reminders_due (
        minute bigint, due bigint, id uuid, before_secs int,
        PRIMARY KEY ((minute), due, id, before_secs))",
    "CREATE TABLE IF NOT EXISTS reminders_sent (
        id uuid, before_secs int, PRIMARY KEY ((id), before_secs))",
    "CREATE TABLE IF NOT EXISTS due_cursor (name text PRIMARY KEY, minute bigint)",
    "CREATE TABLE IF NOT EXISTS stats_counters (
        day bigint, hour bigint, name text, n counter, PRIMARY KEY ((day), hour, name))",
    "CREATE TABLE IF NOT EXISTS event_joins (
        day bigint, hour bigint, id uuid, n counter, PRIMARY KEY ((day), hour, id))",
    // Domain events counted already, so a redelivery counts once (kept two
    // days, as redeliveries come within minutes).
    "CREATE TABLE IF NOT EXISTS stats_counted (
        day bigint, hour bigint, id uuid, PRIMARY KEY ((day, hour), id))",
    "CREATE TABLE IF NOT EXISTS active_users (
        day bigint, hour bigint, user_id uuid, PRIMARY KEY ((day), hour, user_id))",
];

struct Statements {
    insert_event: PreparedStatement,
    index_owner: PreparedStatement,
    index_community: PreparedStatement,
    get_event: PreparedStatement,
    insert_vote: PreparedStatement,
    delete_vote: PreparedStatement,
    counts_by_option: PreparedStatement,
    get_vote: PreparedStatement,
    options_of_voter: PreparedStatement,
    close: PreparedStatement,
    cancel: PreparedStatement,
    set_count: PreparedStatement,
    take_place: PreparedStatement,
    update: PreparedStatement,
    index_start: PreparedStatement,
    starts_from: PreparedStatement,
    starts_after: PreparedStatement,
    index_reminder: PreparedStatement,
    reminders_in: PreparedStatement,
    mark_sent: PreparedStatement,
    get_sent: PreparedStatement,
    mark_counted: PreparedStatement,
    bump_counter: PreparedStatement,
    add_to_counter: PreparedStatement,
    bump_joins: PreparedStatement,
    mark_active: PreparedStatement,
    counters_in: PreparedStatement,
    joins_in: PreparedStatement,
    active_in: PreparedStatement,
    insert_participant: PreparedStatement,
    delete_participant: PreparedStatement,
    get_participant: PreparedStatement,
    index_joined: PreparedStatement,
    unindex_joined: PreparedStatement,
    participants_first: PreparedStatement,
    participants_after: PreparedStatement,
    participant_ids: PreparedStatement,
    voter_ids: PreparedStatement,
    by_owner_first: PreparedStatement,
    by_owner_after: PreparedStatement,
    by_community_first: PreparedStatement,
    by_community_after: PreparedStatement,
    joined_first: PreparedStatement,
    joined_after: PreparedStatement,
    index_deadline: PreparedStatement,
    deadlines_in: PreparedStatement,
    init_cursor: PreparedStatement,
    get_cursor: PreparedStatement,
    set_cursor: PreparedStatement,
    lower_cursor: PreparedStatement,
}

pub struct CqlStore {
    cql: Arc<Cql>,
    s: Statements,
    outbox: Arc<CqlOutbox>,
    /// Reminders scheduled when voting closes (seconds before the start).
    reminders_before: Vec<u32>,
}

/// The scheduler's two due indexes.
#[derive(Debug, Clone, Copy)]
enum Sweep {
    Close,
    Remind,
}

impl Sweep {
    fn cursor(self) -> &'static str {
        match self {
            Sweep::Close => "close",
            Sweep::Remind => "remind",
        }
    }
}

const MINUTE_MS: i64 = 60_000;
/// `events_by_start` partitions: a week of starts each.
const WEEK_MS: i64 = 7 * 24 * 3_600_000;
/// How many weeks one listing call reads at most, and how far ahead the
/// listing by start reaches at all.
const WEEKS_PER_CALL: i64 = 8;
const WEEKS_AHEAD: i64 = 104;

/// An event row: the record's JSON and the columns races change.
type EventRow = (String, String, Option<i32>, i32, Option<i32>);

impl CqlStore {
    pub async fn connect(config: &CqlConfig) -> anyhow::Result<Self> {
        let schema: Vec<&str> = SCHEMA
            .iter()
            .chain(outbox::SCHEMA)
            .chain(munity_bus::membership::CQL_SCHEMA)
            .copied()
            .collect();
        let cql = Arc::new(Cql::connect(config, &schema).await?);
        let p = |statement: &'static str| cql.prepare(statement);
        let s = Statements {
            insert_event: p("INSERT INTO events (id, record, status, chosen, participant_count, capacity) VALUES (?, ?, 'voting', null, 0, ?)").await?,
            index_owner: p("INSERT INTO events_by_owner (owner_id, id) VALUES (?, ?)").await?,
            index_community: p("INSERT INTO events_by_community (community_id, id) VALUES (?, ?)").await?,
            get_event: p("SELECT record, status, chosen, participant_count, capacity FROM events WHERE id = ?").await?,
            insert_vote: p("INSERT INTO votes (event_id, option, user_id) VALUES (?, ?, ?)").await?,
            delete_vote: p("DELETE FROM votes WHERE event_id = ? AND option = ? AND user_id = ?").await?,
            // A view reads the counts of every option in one query and the
            // caller's votes in another (one query per option each before).
            counts_by_option: p("SELECT option, COUNT(*) FROM votes WHERE event_id = ? GROUP BY option").await?,
            get_vote: p("SELECT user_id FROM votes WHERE event_id = ? AND option = ? AND user_id = ?").await?,
            options_of_voter: p("SELECT option FROM votes WHERE event_id = ? AND option IN ? AND user_id = ?").await?,
            close: p("UPDATE events SET status = 'scheduled', chosen = ? WHERE id = ? IF status = 'voting'").await?,
            cancel: p("UPDATE events SET status = 'cancelled' WHERE id = ? IF status != 'cancelled'").await?,
            set_count: p("UPDATE events SET participant_count = ? WHERE id = ? IF participant_count = ? AND status != 'cancelled'").await?,
            // A join takes a place under the capacity it read: an update
            // lowering it meanwhile makes the join look again.
            take_place: p("UPDATE events SET participant_count = ? WHERE id = ? IF participant_count = ? AND capacity = ? AND status != 'cancelled'").await?,
            update: p("UPDATE events SET record = ?, capacity = ? WHERE id = ? IF status != 'cancelled' AND participant_count <= ?").await?,
            index_start: p("INSERT INTO events_by_start (week, start, id, option) VALUES (?, ?, ?, ?)").await?,
            starts_from: p("SELECT start, id, option FROM events_by_start WHERE week = ? AND start >= ? LIMIT ?").await?,
            starts_after: p("SELECT start, id, option FROM events_by_start WHERE week = ? AND (start, id, option) > (?, ?, ?) LIMIT ?").await?,
            index_reminder: p("INSERT INTO reminders_due (minute, due, id, before_secs) VALUES (?, ?, ?, ?)").await?,
            reminders_in: p("SELECT due, id, before_secs FROM reminders_due WHERE minute = ?").await?,
            mark_sent: p("INSERT INTO reminders_sent (id, before_secs) VALUES (?, ?) IF NOT EXISTS").await?,
            get_sent: p("SELECT before_secs FROM reminders_sent WHERE id = ? AND before_secs = ?").await?,
            mark_counted: p("INSERT INTO stats_counted (day, hour, id) VALUES (?, ?, ?) IF NOT EXISTS USING TTL 172800").await?,
            bump_counter: p("UPDATE stats_counters SET n = n + 1 WHERE day = ? AND hour = ? AND name = ?").await?,
            add_to_counter: p("UPDATE stats_counters SET n = n + ? WHERE day = ? AND hour = ? AND name = ?").await?,
            bump_joins: p("UPDATE event_joins SET n = n + ? WHERE day = ? AND hour = ? AND id = ?").await?,
            mark_active: p("INSERT INTO active_users (day, hour, user_id) VALUES (?, ?, ?)").await?,
            counters_in: p("SELECT name, n FROM stats_counters WHERE day = ? AND hour >= ? AND hour < ?").await?,
            joins_in: p("SELECT id, n FROM event_joins WHERE day = ? AND hour >= ? AND hour < ?").await?,
            active_in: p("SELECT user_id FROM active_users WHERE day = ? AND hour >= ? AND hour < ?").await?,
            insert_participant: p("INSERT INTO participants (event_id, user_id, joined_at) VALUES (?, ?, ?) IF NOT EXISTS").await?,
            delete_participant: p("DELETE FROM participants WHERE event_id = ? AND user_id = ? IF EXISTS").await?,
            get_participant: p("SELECT event_id, user_id, joined_at FROM participants WHERE event_id = ? AND user_id = ?").await?,
            index_joined: p("INSERT INTO joined_by_user (user_id, id) VALUES (?, ?)").await?,
            unindex_joined: p("DELETE FROM joined_by_user WHERE user_id = ? AND id = ?").await?,
            participants_first: p("SELECT event_id, user_id, joined_at FROM participants WHERE event_id = ? LIMIT ?").await?,
            participants_after: p("SELECT event_id, user_id, joined_at FROM participants WHERE event_id = ? AND user_id > ? LIMIT ?").await?,
            participant_ids: p("SELECT user_id FROM participants WHERE event_id = ? LIMIT ?").await?,
            voter_ids: p("SELECT user_id FROM votes WHERE event_id = ? LIMIT ?").await?,
            by_owner_first: p("SELECT id FROM events_by_owner WHERE owner_id = ? LIMIT ?").await?,
            by_owner_after: p("SELECT id FROM events_by_owner WHERE owner_id = ? AND id > ? LIMIT ?").await?,
            by_community_first: p("SELECT id FROM events_by_community WHERE community_id = ? LIMIT ?").await?,
            by_community_after: p("SELECT id FROM events_by_community WHERE community_id = ? AND id > ? LIMIT ?").await?,
            joined_first: p("SELECT id FROM joined_by_user WHERE user_id = ? LIMIT ?").await?,
            joined_after: p("SELECT id FROM joined_by_user WHERE user_id = ? AND id > ? LIMIT ?").await?,
            index_deadline: p("INSERT INTO voting_deadlines (minute, deadline, id) VALUES (?, ?, ?)").await?,
            deadlines_in: p("SELECT deadline, id FROM voting_deadlines WHERE minute = ?").await?,
            init_cursor: p("INSERT INTO due_cursor (name, minute) VALUES (?, ?) IF NOT EXISTS").await?,
            get_cursor: p("SELECT minute FROM due_cursor WHERE name = ?").await?,
            set_cursor: p("UPDATE due_cursor SET minute = ? WHERE name = ?").await?,
            lower_cursor: p("UPDATE due_cursor SET minute = ? WHERE name = ? IF minute > ?").await?,
        };
        let outbox = Arc::new(CqlOutbox::new(cql.clone()).await?);
        Ok(CqlStore {
            cql,
            s,
            outbox,
            reminders_before: Vec::new(),
        })
    }

    /// Closing voting schedules a reminder this long before the start,
    /// for each offset (seconds).
    pub fn remind_before(mut self, offsets_secs: &[u32]) -> Self {
        self.reminders_before = offsets_secs.to_vec();
        self
    }

    /// Its session, for the membership view kept in the same keyspace.
    pub fn cql(&self) -> Arc<Cql> {
        self.cql.clone()
    }

    pub fn outbox(&self) -> Arc<CqlOutbox> {
        self.outbox.clone()
    }

    /// Whom a close, a cancellation or a reminder of `event` is told to
    /// personally: its owner, participants and voters, each once, at most
    /// [`AUDIENCE_MAX`]. Read just before the change (CQL has no
    /// transaction to read it in): someone joining or voting in that
    /// instant may hear of it on the meeting's topic only.
    async fn audience(&self, event: &EventRecord) -> StoreResult<Vec<Uuid>> {
        let mut people = vec![event.owner_id];
        let mut seen: std::collections::HashSet<Uuid> = people.iter().copied().collect();
        let participants: Vec<(Uuid,)> = self
            .cql
            .rows(&self.s.participant_ids, (event.id, AUDIENCE_MAX as i32))
            .await?;
        // A voter has a row per option voted for.
        let voters: Vec<(Uuid,)> = self
            .cql
            .rows(
                &self.s.voter_ids,
                (event.id, (AUDIENCE_MAX * limits::OPTIONS_MAX) as i32),
            )
            .await?;
        for (user,) in participants.into_iter().chain(voters) {
            if people.len() >= AUDIENCE_MAX {
                break;
            }
            if seen.insert(user) {
                people.push(user);
            }
        }
        Ok(people)
    }

    async fn load(&self, id: Uuid) -> StoreResult<Option<EventRecord>> {
        let row: Option<EventRow> = self.cql.maybe_row(&self.s.get_event, (id,)).await?;
        row.map(|(record, status, chosen, count, capacity)| {
            let mut event: EventRecord = serde_json::from_str(&record).map_err(internal)?;
            event.status = match (status.as_str(), chosen) {
                ("scheduled", Some(option)) => Status::Scheduled {
                    option: option as u32,
                },
                ("cancelled", _) => Status::Cancelled,
                _ => Status::Voting,
            };
            event.participant_count = count.max(0) as u32;
            if let Some(capacity) = capacity {
                event.capacity = (capacity > 0).then_some(capacity as u32);
            }
            Ok(event)
        })
        .transpose()
    }

    /// Moves the participant count from `from` by `delta` (not below 0),
    /// retrying on contention; false if the event was cancelled meanwhile.
    async fn add_to_count(&self, id: Uuid, mut from: u32, delta: i64) -> StoreResult<bool> {
        for _ in 0..50 {
            let to = (i64::from(from) + delta).max(0) as i32;
            if self
                .cql
                .execute_lwt(&self.s.set_count, (to, id, from as i32))
                .await?
            {
                return Ok(true);
            }
            match self.load(id).await? {
                Some(event) if event.status != Status::Cancelled => from = event.participant_count,
                _ => return Ok(false),
            }
        }
        Err(StoreError::Unavailable(
            "participant count kept changing; try again".to_owned(),
        ))
    }

    /// Casts (`cast`) or takes back one vote. No lightweight transaction:
    /// the row is the vote, so racing writes of it agree, and the counts
    /// (`COUNT(*)`) stay exact. The row is read first so that a vote already
    /// cast (or not there) is `Unchanged` with no event; only a user racing
    /// themselves on one option can publish the same change twice (each
    /// event is then a separate one to its consumers).
    async fn change_vote(
        &self,
        id: Uuid,
        option: u32,
        user: Uuid,
        cast: bool,
    ) -> StoreResult<VoteOutcome> {
        let Some(event) = self.load(id).await? else {
            return Ok(VoteOutcome::NoEvent);
        };
        if let Some(refused) = VoteOutcome::refusal(&event, option) {
            return Ok(refused);
        }
        let existing: Vec<(Uuid,)> = self
            .cql
            .rows(&self.s.get_vote, (id, option as i32, user))
            .await?;
        if existing.is_empty() != cast {
            return Ok(VoteOutcome::Unchanged);
        }
        self.write_vote(&event, option, user, cast).await?;
        Ok(VoteOutcome::Changed)
    }

    /// The vote row written (or deleted) with its domain event, in one
    /// logged batch.
    async fn write_vote(
        &self,
        event: &EventRecord,
        option: u32,
        user: Uuid,
        cast: bool,
    ) -> StoreResult<()> {
        let id = event.id;
        let (statement, published) = if cast {
            (&self.s.insert_vote, events::vote_cast(event, option, user))
        } else {
            (
                &self.s.delete_vote,
                events::vote_withdrawn(event, option, user),
            )
        };
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(statement.clone());
        batch.append_statement(self.outbox.insert_statement().clone());
        self.cql
            .batch(
                &batch,
                ((id, option as i32, user), CqlOutbox::row(&published)),
            )
            .await?;
        self.outbox.notify_staged();
        Ok(())
    }

    /// Votes per option of `event`, indexed by option id: one query.
    async fn counts_of(&self, event: &EventRecord) -> StoreResult<Vec<u32>> {
        let mut counts = vec![0u32; event.options.len()];
        let rows: Vec<(i32, i64)> = self.cql.rows(&self.s.counts_by_option, (event.id,)).await?;
        for (option, n) in rows {
            if let Some(count) = usize::try_from(option).ok().and_then(|o| counts.get_mut(o)) {
                *count = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
            }
        }
        Ok(counts)
    }

    /// The options of `event` that `user` voted for, ascending: one query.
    async fn options_of(&self, event: &EventRecord, user: Uuid) -> StoreResult<Vec<u32>> {
        let options: Vec<i32> = (0..event.options.len() as i32).collect();
        let rows: Vec<(i32,)> = self
            .cql
            .rows(&self.s.options_of_voter, (event.id, options, user))
            .await?;
        let mut mine: Vec<u32> = rows
            .into_iter()
            .filter_map(|(o,)| u32::try_from(o).ok())
            .collect();
        mine.sort_unstable();
        Ok(mine)
    }

    async fn listing(
        &self,
        first: &PreparedStatement,
        next: &PreparedStatement,
        parent: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<EventRecord>> {
        let ids: Vec<(Uuid,)> = match after {
            None => {
                self.cql
                    .rows(first, (parent, limit_plus_one(limit)))
                    .await?
            }
            Some(after) => {
                self.cql
                    .rows(next, (parent, after, limit_plus_one(limit)))
                    .await?
            }
        };
        let mut events = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some(event) = self.load(id).await? {
                events.push(event);
            }
        }
        Ok(page_from(events, limit, |e| e.id))
    }
}

impl CqlStore {
    /// Keeps `sweep`'s cursor at or before the minute of `due` (or of now,
    /// if that is earlier): the cursor is never past a job still to run.
    async fn keep_cursor_before(&self, sweep: Sweep, due: Millis) -> StoreResult<()> {
        let first = due.min(now_millis()).div_euclid(MINUTE_MS);
        let name = sweep.cursor();
        if !self
            .cql
            .execute_lwt(&self.s.init_cursor, (name, first))
            .await?
        {
            self.cql
                .execute_lwt(&self.s.lower_cursor, (first, name, first))
                .await?;
        }
        Ok(())
    }

    /// One minute partition of a due index: (due, event, seconds before).
    async fn due_in(&self, sweep: Sweep, minute: i64) -> StoreResult<Vec<ReminderJob>> {
        Ok(match sweep {
            Sweep::Close => {
                let rows: Vec<(i64, Uuid)> = self.cql.rows(&self.s.deadlines_in, (minute,)).await?;
                rows.into_iter()
                    .map(|(due, event_id)| ReminderJob {
                        event_id,
                        due,
                        before_secs: 0,
                    })
                    .collect()
            }
            Sweep::Remind => {
                let rows: Vec<(i64, Uuid, i32)> =
                    self.cql.rows(&self.s.reminders_in, (minute,)).await?;
                rows.into_iter()
                    .map(|(due, event_id, before)| ReminderJob {
                        event_id,
                        due,
                        before_secs: before.max(0) as u32,
                    })
                    .collect()
            }
        })
    }

    /// Whether a job in a due index is still to run (at `now`).
    async fn pending(&self, sweep: Sweep, job: &ReminderJob, now: Millis) -> StoreResult<bool> {
        let Some(event) = self.load(job.event_id).await? else {
            return Ok(false);
        };
        Ok(match sweep {
            Sweep::Close => event.status == Status::Voting,
            Sweep::Remind => {
                job.stands(&event, now)
                    && self
                        .cql
                        .maybe_row::<(i32,)>(
                            &self.s.get_sent,
                            (job.event_id, job.before_secs as i32),
                        )
                        .await?
                        .is_none()
            }
        })
    }

    /// The jobs of a due index due at `now`, oldest minute first, walking
    /// minute partitions from the cursor; moves the cursor past minutes
    /// that are over and hold nothing still to run.
    async fn sweep(
        &self,
        sweep: Sweep,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<ReminderJob>> {
        let cursor: Option<(Option<i64>,)> = self
            .cql
            .maybe_row(&self.s.get_cursor, (sweep.cursor(),))
            .await?;
        let Some(from) = cursor.and_then(|(minute,)| minute) else {
            return Ok(Vec::new());
        };
        let now_minute = now.div_euclid(MINUTE_MS);
        let mut due = Vec::new();
        let mut settled_through = None;
        // At most a day of minutes per sweep; the next sweep goes on.
        for minute in from..=now_minute.min(from + 1440) {
            let mut open = false;
            for job in self.due_in(sweep, minute).await? {
                if self.pending(sweep, &job, now).await? {
                    open = true;
                    if job.due <= now && due.len() < limit {
                        due.push(job);
                    }
                }
            }
            // The cursor moves past a minute once it is over and holds no
            // job still to run; never past one that does.
            let contiguous = match settled_through {
                None => minute == from,
                Some(previous) => previous + 1 == minute,
            };
            // Only minutes well over: a replica whose clock runs behind
            // may still add a job due in the last one or two.
            if contiguous && !open && minute < now_minute - 2 {
                settled_through = Some(minute);
            }
            if due.len() >= limit {
                break;
            }
        }
        if let Some(minute) = settled_through {
            self.cql
                .execute(&self.s.set_cursor, (minute + 1, sweep.cursor()))
                .await?;
        }
        Ok(due)
    }
}

#[async_trait::async_trait]
impl EventsRepository for CqlStore {
    async fn create_event_telling(&self, event: &EventRecord, members: &[Uuid]) -> StoreResult<()> {
        // The listing by start first: an entry whose event was never
        // written is passed over.
        for (option, time) in event.options.iter().enumerate() {
            self.cql
                .execute(
                    &self.s.index_start,
                    (
                        time.start.div_euclid(WEEK_MS),
                        time.start,
                        event.id,
                        option as i32,
                    ),
                )
                .await?;
        }
        let record = serde_json::to_string(event).map_err(internal)?;
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(self.s.insert_event.clone());
        batch.append_statement(self.s.index_owner.clone());
        batch.append_statement(self.outbox.insert_statement().clone());
        let created = CqlOutbox::row(&events::created(event, members));
        let capacity = event.capacity.unwrap_or(0) as i32;
        match event.community_id {
            None => {
                self.cql
                    .batch(
                        &batch,
                        (
                            (event.id, record, capacity),
                            (event.owner_id, event.id),
                            created,
                        ),
                    )
                    .await?;
            }
            Some(community) => {
                batch.append_statement(self.s.index_community.clone());
                self.cql
                    .batch(
                        &batch,
                        (
                            (event.id, record, capacity),
                            (event.owner_id, event.id),
                            created,
                            (community, event.id),
                        ),
                    )
                    .await?;
            }
        }
        self.outbox.notify_staged();
        // The scheduler's index: minute partitions of deadlines.
        let minute = event.voting_deadline.div_euclid(MINUTE_MS);
        self.cql
            .execute(
                &self.s.index_deadline,
                (minute, event.voting_deadline, event.id),
            )
            .await?;
        self.keep_cursor_before(Sweep::Close, event.voting_deadline)
            .await
    }

    async fn get_event(&self, id: Uuid) -> StoreResult<Option<EventRecord>> {
        self.load(id).await
    }

    async fn vote_counts(&self, id: Uuid) -> StoreResult<Vec<u32>> {
        let Some(event) = self.load(id).await? else {
            return Ok(Vec::new());
        };
        self.counts_of(&event).await
    }

    async fn votes_of(&self, id: Uuid, user: Uuid) -> StoreResult<Vec<u32>> {
        let Some(event) = self.load(id).await? else {
            return Ok(Vec::new());
        };
        self.options_of(&event, user).await
    }

    async fn view(&self, id: Uuid, user: Uuid) -> StoreResult<Option<EventView>> {
        let Some(event) = self.load(id).await? else {
            return Ok(None);
        };
        let (counts, mine) =
            tokio::try_join!(self.counts_of(&event), self.options_of(&event, user))?;
        Ok(Some(EventView {
            event,
            counts,
            mine,
        }))
    }

    /// Three reads and the write: the caller's votes (which also say
    /// whether this one is new), the batch, then the counts. The event is
    /// the one the caller just read: a vote never changes it, and its
    /// status was checked as loosely before (CQL has no transaction across
    /// the load and the batch; closing reads the counts it closes with).
    async fn vote_and_view(
        &self,
        event: &EventRecord,
        option: u32,
        user: Uuid,
        cast: bool,
    ) -> StoreResult<(VoteOutcome, Option<EventView>)> {
        if let Some(refused) = VoteOutcome::refusal(event, option) {
            return Ok((refused, None));
        }
        let mut mine = self.options_of(event, user).await?;
        let outcome = if mine.contains(&option) == cast {
            VoteOutcome::Unchanged
        } else {
            self.write_vote(event, option, user, cast).await?;
            if cast {
                mine.push(option);
                mine.sort_unstable();
            } else {
                mine.retain(|&o| o != option);
            }
            VoteOutcome::Changed
        };
        let counts = self.counts_of(event).await?;
        Ok((
            outcome,
            Some(EventView {
                event: event.clone(),
                counts,
                mine,
            }),
        ))
    }

    async fn cast_vote(&self, id: Uuid, option: u32, user: Uuid) -> StoreResult<VoteOutcome> {
        self.change_vote(id, option, user, true).await
    }

    async fn withdraw_vote(&self, id: Uuid, option: u32, user: Uuid) -> StoreResult<VoteOutcome> {
        self.change_vote(id, option, user, false).await
    }

    async fn close_voting(&self, id: Uuid) -> StoreResult<CloseOutcome> {
        let Some(event) = self.load(id).await? else {
            return Ok(CloseOutcome::NoEvent);
        };
        if event.status != Status::Voting {
            return Ok(CloseOutcome::NotVoting);
        }
        let counts = self.vote_counts(id).await?;
        let chosen = winner(&event.options, &counts).unwrap_or(0);
        // The reminders go in before the close: if the close does not
        // apply, they do not stand (the sweep checks) and are passed over.
        let mut scheduled = event.clone();
        scheduled.status = Status::Scheduled { option: chosen };
        let reminders = reminders_for(&scheduled, &self.reminders_before, now_millis());
        for job in &reminders {
            self.cql
                .execute(
                    &self.s.index_reminder,
                    (
                        job.due.div_euclid(MINUTE_MS),
                        job.due,
                        id,
                        job.before_secs as i32,
                    ),
                )
                .await?;
        }
        if let Some(first) = reminders.iter().map(|job| job.due).min() {
            self.keep_cursor_before(Sweep::Remind, first).await?;
        }
        let audience = self.audience(&event).await?;
        self.outbox
            .with_events(&[events::voting_closed(&event, chosen, &audience)], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.s.close, (chosen as i32, id))
                    .await?;
                let outcome = if applied {
                    CloseOutcome::Closed(chosen)
                } else {
                    CloseOutcome::NotVoting
                };
                Ok((applied, outcome))
            })
            .await
    }

    async fn update_event(
        &self,
        id: Uuid,
        update: &EventUpdate,
        by: Uuid,
    ) -> StoreResult<UpdateOutcome> {
        for _ in 0..50 {
            let Some(mut event) = self.load(id).await? else {
                return Ok(UpdateOutcome::NoEvent);
            };
            if event.status == Status::Cancelled {
                return Ok(UpdateOutcome::Cancelled);
            }
            update.apply(&mut event);
            let limit = event.capacity.map_or(i32::MAX, |c| c as i32);
            if event.participant_count as i32 > limit {
                return Ok(UpdateOutcome::BelowParticipants(event.participant_count));
            }
            let record = serde_json::to_string(&event).map_err(internal)?;
            let capacity = event.capacity.unwrap_or(0) as i32;
            // Applies only with no more participants than the capacity,
            // and a join in flight checks the capacity it read: neither
            // gets past the other.
            let applied = self
                .outbox
                .with_events(&[events::updated(&event, by)], async {
                    let applied = self
                        .cql
                        .execute_lwt(&self.s.update, (record, capacity, id, limit))
                        .await?;
                    Ok((applied, applied))
                })
                .await?;
            if applied {
                return Ok(UpdateOutcome::Updated(Box::new(event)));
            }
        }
        Err(StoreError::Unavailable(
            "the event kept changing; try again".to_owned(),
        ))
    }

    async fn cancel(&self, id: Uuid) -> StoreResult<bool> {
        let Some(event) = self.load(id).await? else {
            return Ok(false);
        };
        if event.status == Status::Cancelled {
            return Ok(false);
        }
        let audience = self.audience(&event).await?;
        self.outbox
            .with_events(
                &[events::cancelled(&event, event.owner_id, &audience)],
                async {
                    let applied = self.cql.execute_lwt(&self.s.cancel, (id,)).await?;
                    Ok((applied, applied))
                },
            )
            .await
    }

    async fn join(&self, id: Uuid, user: Uuid, at: Millis) -> StoreResult<JoinOutcome> {
        let Some(mut event) = self.load(id).await? else {
            return Ok(JoinOutcome::NoEvent);
        };
        if event.status == Status::Cancelled {
            return Ok(JoinOutcome::Cancelled);
        }
        let existing: Option<(Uuid, Uuid, i64)> = self
            .cql
            .maybe_row(&self.s.get_participant, (id, user))
            .await?;
        if existing.is_some() {
            return Ok(JoinOutcome::AlreadyJoined);
        }
        // Take a place first (never past capacity), then the seat; give the
        // place back if someone else took this user's seat meanwhile.
        let mut count = event.participant_count;
        loop {
            if let Some(capacity) = event.capacity
                && count >= capacity
            {
                return Ok(JoinOutcome::Full(capacity));
            }
            let capacity = event.capacity.unwrap_or(0) as i32;
            if self
                .cql
                .execute_lwt(
                    &self.s.take_place,
                    (count as i32 + 1, id, count as i32, capacity),
                )
                .await?
            {
                break;
            }
            match self.load(id).await? {
                Some(now) if now.status != Status::Cancelled => {
                    count = now.participant_count;
                    event = now;
                }
                Some(_) => return Ok(JoinOutcome::Cancelled),
                None => return Ok(JoinOutcome::NoEvent),
            }
        }
        let seated = self
            .outbox
            .with_events(&[events::joined(&event, user)], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.s.insert_participant, (id, user, at))
                    .await?;
                Ok((applied, applied))
            })
            .await?;
        if !seated {
            self.add_to_count(id, count + 1, -1).await?;
            return Ok(JoinOutcome::AlreadyJoined);
        }
        self.cql.execute(&self.s.index_joined, (user, id)).await?;
        Ok(JoinOutcome::Joined)
    }

    async fn leave(&self, id: Uuid, user: Uuid) -> StoreResult<bool> {
        let Some(event) = self.load(id).await? else {
            return Ok(false);
        };
        let left = self
            .outbox
            .with_events(&[events::left(&event, user)], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.s.delete_participant, (id, user))
                    .await?;
                Ok((applied, applied))
            })
            .await?;
        if left {
            self.cql.execute(&self.s.unindex_joined, (user, id)).await?;
            let now = self.load(id).await?.map_or(0, |e| e.participant_count);
            self.add_to_count(id, now, -1).await?;
        }
        Ok(left)
    }

    async fn list_participants(
        &self,
        id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<ParticipantRecord>> {
        let rows: Vec<(Uuid, Uuid, i64)> = match after {
            None => {
                self.cql
                    .rows(&self.s.participants_first, (id, limit_plus_one(limit)))
                    .await?
            }
            Some(after) => {
                self.cql
                    .rows(
                        &self.s.participants_after,
                        (id, after, limit_plus_one(limit)),
                    )
                    .await?
            }
        };
        let items = rows
            .into_iter()
            .map(|(event_id, user_id, joined_at)| ParticipantRecord {
                event_id,
                user_id,
                joined_at,
            })
            .collect();
        Ok(page_from(items, limit, |p| p.user_id))
    }

    async fn list_events(
        &self,
        listing: &Listing,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<EventRecord>> {
        let s = &self.s;
        match *listing {
            Listing::Owner(owner) => {
                self.listing(&s.by_owner_first, &s.by_owner_after, owner, after, limit)
                    .await
            }
            Listing::Community(community) => {
                self.listing(
                    &s.by_community_first,
                    &s.by_community_after,
                    community,
                    after,
                    limit,
                )
                .await
            }
            Listing::Joined(user) => {
                self.listing(&s.joined_first, &s.joined_after, user, after, limit)
                    .await
            }
        }
    }

    async fn list_by_start(
        &self,
        from: Millis,
        after: Option<StartPosition>,
        limit: usize,
    ) -> StoreResult<StartPage> {
        let after = after.filter(|&(start, _, _)| start >= from);
        let first_week = after
            .map_or(from, |(start, _, _)| start)
            .div_euclid(WEEK_MS);
        let last_week = (first_week + WEEKS_PER_CALL).min(from.div_euclid(WEEK_MS) + WEEKS_AHEAD);
        let fetch = limit_plus_one(limit * 4 + 15);
        let mut page = StartPage {
            items: Vec::new(),
            next: None,
        };
        let mut position = after;
        for week in first_week..last_week {
            loop {
                let rows: Vec<(i64, Uuid, i32)> = match position {
                    Some((start, id, option)) if start.div_euclid(WEEK_MS) == week => {
                        self.cql
                            .rows(
                                &self.s.starts_after,
                                (week, start, id, option as i32, fetch),
                            )
                            .await?
                    }
                    _ => {
                        self.cql
                            .rows(&self.s.starts_from, (week, from, fetch))
                            .await?
                    }
                };
                let full = rows.len() >= fetch as usize;
                for (start, id, option) in rows {
                    let option = option.max(0) as u32;
                    position = Some((start, id, option));
                    if let Some(event) = self.load(id).await?
                        && event.start_option() == Some(option)
                    {
                        page.items.push(event);
                        if page.items.len() >= limit {
                            page.next = position;
                            return Ok(page);
                        }
                    }
                }
                if !full {
                    break;
                }
            }
        }
        // Go on after the weeks read, unless that is past the horizon.
        if last_week < from.div_euclid(WEEK_MS) + WEEKS_AHEAD {
            page.next = Some((last_week * WEEK_MS - 1, Uuid::max(), u32::MAX));
        }
        Ok(page)
    }

    async fn due_for_closing(&self, now: Millis, limit: usize) -> StoreResult<Vec<Uuid>> {
        let due = self.sweep(Sweep::Close, now, limit).await?;
        Ok(due.into_iter().map(|job| job.event_id).collect())
    }

    async fn due_reminders(&self, now: Millis, limit: usize) -> StoreResult<Vec<ReminderJob>> {
        self.sweep(Sweep::Remind, now, limit).await
    }

    async fn send_reminder(&self, job: &ReminderJob, now: Millis) -> StoreResult<bool> {
        let Some(event) = self.load(job.event_id).await? else {
            return Ok(false);
        };
        if !job.stands(&event, now) {
            return Ok(false);
        }
        let audience = self.audience(&event).await?;
        self.outbox
            .with_events(&[events::reminder_due(&event, job, &audience)], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.s.mark_sent, (job.event_id, job.before_secs as i32))
                    .await?;
                Ok((applied, applied))
            })
            .await
    }

    /// A read of the log in a few requests instead of three or four per
    /// activity: the marks of each hour's activities in one conditional
    /// batch (one Paxos round; when one of them was counted already, the
    /// batch applies nothing and that hour's activities go one by one, as
    /// [`EventsRepository::record_activity`] does), then the counters
    /// summed per key in one counter batch per table, and the active users
    /// in one batch. At most once, as one by one: a crash after the marks
    /// loses those counts, never counts twice.
    async fn record_activities(&self, activities: &[Activity]) -> StoreResult<()> {
        use std::collections::{BTreeMap, BTreeSet};
        /// Statements per batch: well under Cassandra's batch size warning.
        const BATCH_MAX: usize = 100;
        let mut by_hour: BTreeMap<i64, Vec<&Activity>> = BTreeMap::new();
        for activity in activities {
            by_hour.entry(activity.hour).or_default().push(activity);
        }
        let mut counters: BTreeMap<(i64, i64, &'static str), i64> = BTreeMap::new();
        let mut joins: BTreeMap<(i64, i64, Uuid), i64> = BTreeMap::new();
        let mut active: BTreeSet<(i64, i64, Uuid)> = BTreeSet::new();
        for (hour, hourly) in by_hour {
            let day = hour.div_euclid(24);
            for chunk in hourly.chunks(BATCH_MAX) {
                let mut marks = Batch::new(BatchType::Unlogged);
                for _ in chunk {
                    marks.append_statement(self.s.mark_counted.clone());
                }
                let values: Vec<(i64, i64, Uuid)> =
                    chunk.iter().map(|a| (day, hour, a.id)).collect();
                if !self.cql.batch_lwt(&marks, values).await? {
                    // Some were counted before (a redelivery): one by one.
                    for activity in chunk {
                        self.record_activity(activity).await?;
                    }
                    continue;
                }
                for activity in chunk {
                    if let Some(name) = activity.kind.counter() {
                        *counters.entry((day, hour, name)).or_default() += 1;
                    }
                    if activity.kind.active() {
                        active.insert((day, hour, activity.user_id));
                    }
                    let delta = activity.kind.joins();
                    if delta != 0 {
                        *joins.entry((day, hour, activity.event_id)).or_default() += delta;
                    }
                }
            }
        }
        let counters: Vec<_> = counters.into_iter().collect();
        for chunk in counters.chunks(BATCH_MAX) {
            let mut batch = Batch::new(BatchType::Counter);
            for _ in chunk {
                batch.append_statement(self.s.add_to_counter.clone());
            }
            let values: Vec<(Counter, i64, i64, &str)> = chunk
                .iter()
                .map(|&((day, hour, name), n)| (Counter(n), day, hour, name))
                .collect();
            self.cql.batch(&batch, values).await?;
        }
        let joins: Vec<_> = joins.into_iter().filter(|(_, n)| *n != 0).collect();
        for chunk in joins.chunks(BATCH_MAX) {
            let mut batch = Batch::new(BatchType::Counter);
            for _ in chunk {
                batch.append_statement(self.s.bump_joins.clone());
            }
            let values: Vec<(Counter, i64, i64, Uuid)> = chunk
                .iter()
                .map(|&((day, hour, id), n)| (Counter(n), day, hour, id))
                .collect();
            self.cql.batch(&batch, values).await?;
        }
        let active: Vec<_> = active.into_iter().collect();
        for chunk in active.chunks(BATCH_MAX) {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in chunk {
                batch.append_statement(self.s.mark_active.clone());
            }
            self.cql.batch(&batch, chunk.to_vec()).await?;
        }
        Ok(())
    }

    async fn record_activity(&self, activity: &Activity) -> StoreResult<()> {
        // Counters cannot be compare-and-set, so the event is marked counted
        // first (a lightweight transaction): a redelivery (after a crash, or
        // from another replica) finds the mark and counts nothing. A crash
        // between the mark and the counters loses that one event's count:
        // at most once, never twice.
        let (day, hour) = (activity.hour.div_euclid(24), activity.hour);
        if !self
            .cql
            .execute_lwt(&self.s.mark_counted, (day, hour, activity.id))
            .await?
        {
            return Ok(());
        }
        if let Some(name) = activity.kind.counter() {
            self.cql
                .execute(&self.s.bump_counter, (day, hour, name))
                .await?;
        }
        if activity.kind.active() {
            self.cql
                .execute(&self.s.mark_active, (day, hour, activity.user_id))
                .await?;
        }
        let delta = activity.kind.joins();
        if delta != 0 {
            self.cql
                .execute(
                    &self.s.bump_joins,
                    (Counter(delta), day, hour, activity.event_id),
                )
                .await?;
        }
        Ok(())
    }

    async fn stats(&self, from_hour: i64, to_hour: i64, top: usize) -> StoreResult<StatsRecord> {
        let mut stats = StatsRecord::default();
        let mut users = std::collections::HashSet::new();
        let mut joins = std::collections::HashMap::new();
        if to_hour <= from_hour {
            return Ok(stats);
        }
        // One partition per day of the window.
        for day in from_hour.div_euclid(24)..=(to_hour - 1).div_euclid(24) {
            let window = (day, from_hour, to_hour);
            let counters: Vec<(String, Counter)> =
                self.cql.rows(&self.s.counters_in, window).await?;
            for (name, Counter(n)) in counters {
                add_counter(&mut stats, &name, n);
            }
            let active: Vec<(Uuid,)> = self.cql.rows(&self.s.active_in, window).await?;
            users.extend(active.into_iter().map(|(user,)| user));
            let joined: Vec<(Uuid, Counter)> = self.cql.rows(&self.s.joins_in, window).await?;
            for (event, Counter(n)) in joined {
                *joins.entry(event).or_insert(0) += n;
            }
        }
        stats.active_users = users.len() as u64;
        stats.top_events = top_events(joins, top);
        Ok(stats)
    }
}

/// Whether the change an unconfirmed event describes happened.
#[async_trait::async_trait]
impl Verify for CqlStore {
    async fn happened(&self, event: &DomainEvent) -> BusResult<bool> {
        use munity_proto::events::v1 as pb;
        let unavailable = |e: StoreError| munity_bus::BusError::Unavailable(e.to_string());
        let id = |text: &str| Uuid::parse_str(text).ok();
        let payload = event.payload.as_slice();
        let Some(event_id) = id(&event.aggregate_id) else {
            return Ok(false);
        };
        let participant = |user: Uuid| async move {
            let row: Option<(Uuid, Uuid, i64)> = self
                .cql
                .maybe_row(&self.s.get_participant, (event_id, user))
                .await
                .map_err(unavailable)?;
            Ok::<bool, munity_bus::BusError>(row.is_some())
        };
        let vote = |option: u32, user: Uuid| async move {
            let row: Option<(Uuid,)> = self
                .cql
                .maybe_row(&self.s.get_vote, (event_id, option as i32, user))
                .await
                .map_err(unavailable)?;
            Ok::<bool, munity_bus::BusError>(row.is_some())
        };
        let status = || async {
            Ok::<Option<Status>, munity_bus::BusError>(
                self.load(event_id)
                    .await
                    .map_err(unavailable)?
                    .map(|e| e.status),
            )
        };
        Ok(match event.r#type.as_str() {
            "munity.events.v1.VoteCast" => match pb::VoteCast::decode(payload).ok() {
                Some(e) => match id(&e.user_id) {
                    Some(user) => vote(e.option_id, user).await?,
                    None => false,
                },
                None => false,
            },
            "munity.events.v1.VoteWithdrawn" => match pb::VoteWithdrawn::decode(payload).ok() {
                Some(e) => match id(&e.user_id) {
                    Some(user) => !vote(e.option_id, user).await?,
                    None => false,
                },
                None => false,
            },
            "munity.events.v1.VotingClosed" => match pb::VotingClosed::decode(payload).ok() {
                Some(e) => {
                    status().await?
                        == Some(Status::Scheduled {
                            option: e.chosen_option_id,
                        })
                }
                None => false,
            },
            "munity.events.v1.EventCancelled" => status().await? == Some(Status::Cancelled),
            "munity.events.v1.EventUpdated" => {
                match pb::EventUpdated::decode(payload).ok().and_then(|e| e.event) {
                    // Happened if the event reads as the update left it.
                    Some(e) => self
                        .load(event_id)
                        .await
                        .map_err(unavailable)?
                        .is_some_and(|now| {
                            now.title == e.title
                                && now.description == e.description
                                && now.location == e.location
                                && now.capacity.unwrap_or(0) == e.capacity
                        }),
                    None => false,
                }
            }
            "munity.events.v1.ReminderDue" => match pb::ReminderDue::decode(payload).ok() {
                Some(e) => self
                    .cql
                    .maybe_row::<(i32,)>(&self.s.get_sent, (event_id, e.seconds_before as i32))
                    .await
                    .map_err(unavailable)?
                    .is_some(),
                None => false,
            },
            "munity.events.v1.ParticipantJoined" => {
                match pb::ParticipantJoined::decode(payload)
                    .ok()
                    .and_then(|e| id(&e.user_id))
                {
                    Some(user) => participant(user).await?,
                    None => false,
                }
            }
            "munity.events.v1.ParticipantLeft" => {
                match pb::ParticipantLeft::decode(payload)
                    .ok()
                    .and_then(|e| id(&e.user_id))
                {
                    Some(user) => !participant(user).await?,
                    None => false,
                }
            }
            // Written in a logged batch, never tentative.
            _ => false,
        })
    }
}
