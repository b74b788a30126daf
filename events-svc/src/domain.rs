//! The events domain: records as stored by both backends, and the rules
//! for valid input (each broken rule a field violation, all reported at
//! once).

use munity_platform::error::FieldViolations;
pub use munity_store::{Millis, now_millis};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Limits on input, in characters where text is concerned.
/// The most people one domain event names to be told personally
/// (`notify_user_ids`): notify-svc writes one notification and one inbox
/// entry per person, all in handling that one event, so a meeting with
/// thousands of voters or a community with thousands of members must not
/// make it unbounded. Past it, people hear the event on the meeting's or
/// the community's topic only (what everyone got before personal pushes).
pub const AUDIENCE_MAX: usize = 1000;

pub mod limits {
    pub const TITLE_MAX: usize = 200;
    pub const DESCRIPTION_MAX: usize = 4000;
    pub const LOCATION_MAX: usize = 500;
    pub const OPTIONS_MAX: usize = 10;
    /// An option may not last longer than this (a week).
    pub const OPTION_MAX_MS: i64 = 7 * 24 * 3600 * 1000;
}

/// One proposed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeOption {
    pub start: Millis,
    pub end: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Status {
    Voting,
    Scheduled { option: u32 },
    Cancelled,
}

/// A meeting, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub community_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub location: String,
    /// Indexed by option id.
    pub options: Vec<TimeOption>,
    pub voting_deadline: Millis,
    /// `None`: no limit.
    pub capacity: Option<u32>,
    pub status: Status,
    pub participant_count: u32,
    pub created_at: Millis,
}

impl EventRecord {
    /// When the meeting starts: the chosen option's start, or the earliest
    /// proposed one while voting.
    pub fn starts_at(&self) -> Millis {
        match self.status {
            Status::Scheduled { option } => self
                .options
                .get(option as usize)
                .map_or(Millis::MAX, |o| o.start),
            _ => self
                .options
                .iter()
                .map(|o| o.start)
                .min()
                .unwrap_or(Millis::MAX),
        }
    }
}

impl EventRecord {
    /// The option whose start is the event's start: the chosen one, or the
    /// earliest proposed while voting (ties: the lowest id); `None` once
    /// cancelled. Listings by start count an event at this option only.
    pub fn start_option(&self) -> Option<u32> {
        match self.status {
            Status::Scheduled { option } => Some(option),
            Status::Cancelled => None,
            Status::Voting => (0..self.options.len())
                .min_by_key(|&i| (self.options[i].start, i))
                .map(|i| i as u32),
        }
    }
}

/// A position in the listing of events by start: (start ms, event, option).
pub type StartPosition = (Millis, Uuid, u32);

/// One page of the listing by start. It may hold fewer events than asked
/// for (each call reads a bounded stretch); `next` is where to go on, `None`
/// at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPage {
    pub items: Vec<EventRecord>,
    pub next: Option<StartPosition>,
}

/// One participant of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub joined_at: Millis,
}

/// A change to an event's own fields (`None`: left as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventUpdate {
    pub title: Option<String>,
    pub description: Option<String>,
    pub location: Option<String>,
    /// `Some(None)`: no limit.
    pub capacity: Option<Option<u32>>,
}

impl EventUpdate {
    /// Applies the change to `event`.
    pub fn apply(&self, event: &mut EventRecord) {
        if let Some(title) = &self.title {
            event.title.clone_from(title);
        }
        if let Some(description) = &self.description {
            event.description.clone_from(description);
        }
        if let Some(location) = &self.location {
            event.location.clone_from(location);
        }
        if let Some(capacity) = self.capacity {
            event.capacity = capacity;
        }
    }
}

/// A reminder to send: `before_secs` before the scheduled event starts,
/// due at `due` (that start less the offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReminderJob {
    pub event_id: Uuid,
    pub due: Millis,
    pub before_secs: u32,
}

impl ReminderJob {
    /// Whether the job still stands for `event` at `now`: the event is
    /// scheduled to start when the job was made for, and has not started.
    pub fn stands(&self, event: &EventRecord, now: Millis) -> bool {
        match event.status {
            Status::Scheduled { option } => event.options.get(option as usize).is_some_and(|o| {
                o.start - i64::from(self.before_secs) * 1000 == self.due && o.start > now
            }),
            _ => false,
        }
    }
}

/// The reminders to schedule when `event` is scheduled: one per offset
/// whose time is still ahead at `now` (an event closed 10 hours before it
/// starts gets no 24-hour reminder).
pub fn reminders_for(event: &EventRecord, offsets_secs: &[u32], now: Millis) -> Vec<ReminderJob> {
    let start = event.starts_at();
    offsets_secs
        .iter()
        .map(|&before_secs| ReminderJob {
            event_id: event.id,
            due: start.saturating_sub(i64::from(before_secs) * 1000),
            before_secs,
        })
        .filter(|job| job.due > now && start != Millis::MAX)
        .collect()
}

/// What one domain event adds to the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    Created,
    Voted,
    Joined,
    Left,
}

impl ActivityKind {
    /// Its counter's name (`None`: it counts only in the events' joins).
    pub fn counter(self) -> Option<&'static str> {
        match self {
            ActivityKind::Created => Some("created"),
            ActivityKind::Voted => Some("votes"),
            ActivityKind::Joined => Some("joins"),
            ActivityKind::Left => None,
        }
    }

    /// Whether the acting user counts as active.
    pub fn active(self) -> bool {
        !matches!(self, ActivityKind::Left)
    }

    /// What it adds to the event's joins in the window.
    pub fn joins(self) -> i64 {
        match self {
            ActivityKind::Joined => 1,
            ActivityKind::Left => -1,
            _ => 0,
        }
    }
}

/// One domain event, as the statistics count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// The domain event's id (redeliveries are skipped by it where the
    /// backend can).
    pub id: Uuid,
    pub kind: ActivityKind,
    /// The hour it happened in (ms since the epoch / 3,600,000).
    pub hour: i64,
    pub event_id: Uuid,
    pub user_id: Uuid,
}

pub const HOUR_MS: Millis = 3_600_000;

/// Counts over whole hours `[from_hour, to_hour)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsRecord {
    pub events_created: u64,
    pub votes_cast: u64,
    pub joins: u64,
    pub active_users: u64,
    /// (event, joins in the window), most first, ties by id.
    pub top_events: Vec<(Uuid, i64)>,
}

/// Adds one counter row to `stats`.
pub fn add_counter(stats: &mut StatsRecord, name: &str, n: i64) {
    let n = n.max(0) as u64;
    match name {
        "created" => stats.events_created += n,
        "votes" => stats.votes_cast += n,
        "joins" => stats.joins += n,
        _ => {}
    }
}

/// The `top` events by joins (positive only), most first, ties by id.
pub fn top_events(joins: std::collections::HashMap<Uuid, i64>, top: usize) -> Vec<(Uuid, i64)> {
    let mut ranked: Vec<(Uuid, i64)> = joins.into_iter().filter(|&(_, n)| n > 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(top);
    ranked
}

/// A user's role in a community, as the membership view knows it.
pub use munity_bus::membership::MemberRole;

/// The most-voted option; ties go to the earliest start (then the lowest
/// id). `None` without options.
pub fn winner(options: &[TimeOption], votes: &[u32]) -> Option<u32> {
    (0..options.len())
        .max_by(|&a, &b| {
            let votes_of = |i: usize| votes.get(i).copied().unwrap_or(0);
            votes_of(a)
                .cmp(&votes_of(b))
                .then(options[b].start.cmp(&options[a].start))
                .then(b.cmp(&a))
        })
        .map(|i| i as u32)
}

/// Checks text against a length limit (trimmed; `required` refuses empty).
pub fn check_text(
    raw: &str,
    field: &str,
    max: usize,
    required: bool,
    violations: &mut FieldViolations,
) -> String {
    let text = raw.trim().to_owned();
    if required && text.is_empty() {
        violations.add(field, "is required");
    } else if text.chars().count() > max {
        violations.add(field, format!("must be at most {max} characters"));
    }
    text
}

/// Checks proposed options and the voting deadline against `now`.
pub fn check_schedule(
    options: &[TimeOption],
    voting_deadline: Millis,
    now: Millis,
    violations: &mut FieldViolations,
) {
    if options.is_empty() || options.len() > limits::OPTIONS_MAX {
        violations.add(
            "options",
            format!("must hold 1 to {} proposed times", limits::OPTIONS_MAX),
        );
    }
    for (i, option) in options.iter().enumerate() {
        let field = format!("options[{i}]");
        if option.end <= option.start {
            violations.add(format!("{field}.end"), "must be after start");
        } else if option.end - option.start > limits::OPTION_MAX_MS {
            violations.add(format!("{field}.end"), "must be at most 7 days after start");
        }
        if option.start <= now {
            violations.add(format!("{field}.start"), "must be in the future");
        }
    }
    if voting_deadline <= now {
        violations.add("voting_deadline", "must be in the future");
    } else if let Some(first) = options.iter().map(|o| o.start).min()
        && voting_deadline > first
    {
        violations.add(
            "voting_deadline",
            "must be before the first proposed time starts",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Millis = 3_600_000;

    fn option(start: Millis) -> TimeOption {
        TimeOption {
            start,
            end: start + HOUR,
        }
    }

    #[test]
    fn the_most_voted_option_wins_and_ties_go_to_the_earliest() {
        let options = [option(30 * HOUR), option(10 * HOUR), option(20 * HOUR)];
        assert_eq!(winner(&options, &[1, 5, 2]), Some(1));
        assert_eq!(winner(&options, &[3, 0, 3]), Some(2), "20 h is before 30 h");
        assert_eq!(winner(&options, &[0, 0, 0]), Some(1));
        assert_eq!(winner(&[], &[]), None);
    }

    #[test]
    fn schedules_are_checked_field_by_field() {
        let now = 100 * HOUR;
        let mut violations = FieldViolations::new();
        check_schedule(&[option(now + 2 * HOUR)], now + HOUR, now, &mut violations);
        assert!(violations.is_empty());

        let mut violations = FieldViolations::new();
        let backwards = TimeOption {
            start: now + 2 * HOUR,
            end: now + HOUR,
        };
        check_schedule(
            &[backwards, option(now - HOUR)],
            now + 3 * HOUR,
            now,
            &mut violations,
        );
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["options[0].end", "options[1].start", "voting_deadline"]
        );

        let mut violations = FieldViolations::new();
        check_schedule(&[], now - 1, now, &mut violations);
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["options", "voting_deadline"]);
    }
}
