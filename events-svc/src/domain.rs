//! The events domain: records as stored by both backends, and the rules
//! for valid input (each broken rule a field violation, all reported at
//! once).

use munity_platform::error::FieldViolations;
pub use munity_store::{Millis, now_millis};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Limits on input, in characters where text is concerned.
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

/// One participant of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub joined_at: Millis,
}

/// A user's role in a community, as the membership view knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Member,
    Moderator,
    Owner,
}

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
