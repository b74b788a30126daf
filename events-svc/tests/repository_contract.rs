//! One contract, every backend: the embedded store, and the real CQL
//! server (`MUNITY_TEST_CQL`; required under CI=true).

use std::{collections::HashSet, sync::Arc};

use events_svc::{
    domain::{
        Activity, ActivityKind, EventRecord, EventUpdate, ReminderJob, Status, TimeOption,
        now_millis,
    },
    store::{
        CloseOutcome, EventsRepository, JoinOutcome, Listing, UpdateOutcome, VoteOutcome,
        cql::CqlStore, embedded::EmbeddedStore,
    },
};
use uuid::Uuid;

type Repo = Arc<dyn EventsRepository>;

async fn embedded() -> Option<(Repo, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path())
        .unwrap()
        .remind_before(REMINDERS);
    Some((Arc::new(store), dir))
}

/// The CQL test server (`MUNITY_TEST_CQL`), one keyspace per test process.
async fn cql() -> Option<(Repo, ())> {
    let config = munity_testkit::cql_config("events_contract")?;
    let _schema = munity_testkit::schema_lock().await;
    let store = CqlStore::connect(&config)
        .await
        .expect("connect to the CQL test server")
        .remind_before(REMINDERS);
    Some((Arc::new(store), ()))
}

/// A day and an hour before the start.
const REMINDERS: &[u32] = &[86_400, 3_600];

const HOUR: i64 = 3_600_000;

fn meeting(owner: Uuid, community: Option<Uuid>, capacity: Option<u32>) -> EventRecord {
    let now = now_millis();
    EventRecord {
        id: Uuid::now_v7(),
        owner_id: owner,
        community_id: community,
        title: "Board games".to_owned(),
        description: String::new(),
        location: "Café".to_owned(),
        options: (1..=3)
            .map(|h| TimeOption {
                start: now + (10 * h) * HOUR,
                end: now + (10 * h + 2) * HOUR,
            })
            .collect(),
        voting_deadline: now + 5 * HOUR,
        capacity,
        status: Status::Voting,
        participant_count: 0,
        created_at: now,
    }
}

mod cases {
    use super::*;

    pub async fn events_are_stored_and_listed_in_a_stable_order(repo: Repo) {
        let (owner, community) = (Uuid::now_v7(), Uuid::now_v7());
        let mut created = Vec::new();
        for _ in 0..5 {
            let event = meeting(owner, Some(community), None);
            repo.create_event(&event).await.unwrap();
            created.push(event.id);
        }
        let first = repo.get_event(created[0]).await.unwrap().unwrap();
        assert_eq!(first.title, "Board games");
        assert!(repo.get_event(Uuid::now_v7()).await.unwrap().is_none());

        for listing in [Listing::Owner(owner), Listing::Community(community)] {
            let page = repo.list_events(&listing, None, 2).await.unwrap();
            let mut seen: Vec<Uuid> = page.items.iter().map(|e| e.id).collect();
            // One created between pages shows up at the end, never twice.
            let late = meeting(owner, Some(community), None);
            if listing == Listing::Owner(owner) {
                repo.create_event(&late).await.unwrap();
                created.push(late.id);
            }
            let mut after = page.next_after;
            while let Some(cursor) = after {
                let page = repo.list_events(&listing, Some(cursor), 2).await.unwrap();
                seen.extend(page.items.iter().map(|e| e.id));
                after = page.next_after;
            }
            assert_eq!(seen, created, "{listing:?}");
        }
    }

    pub async fn concurrent_votes_are_counted_exactly_once_per_user(repo: Repo) {
        let event = meeting(Uuid::now_v7(), None, None);
        repo.create_event(&event).await.unwrap();
        let voters: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
        let tasks: Vec<_> = voters
            .iter()
            .enumerate()
            .map(|(i, voter)| {
                let (repo, voter) = (repo.clone(), *voter);
                tokio::spawn(async move {
                    // Everyone votes for option 1 twice at once, then once
                    // more; odd ones for 2 too.
                    let (first, second) = tokio::join!(
                        repo.cast_vote(event.id, 1, voter),
                        repo.cast_vote(event.id, 1, voter)
                    );
                    first.unwrap();
                    second.unwrap();
                    assert_eq!(
                        repo.cast_vote(event.id, 1, voter).await.unwrap(),
                        VoteOutcome::Unchanged
                    );
                    if i % 2 == 1 {
                        repo.cast_vote(event.id, 2, voter).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(repo.vote_counts(event.id).await.unwrap(), vec![0, 50, 25]);
        assert_eq!(
            repo.votes_of(event.id, voters[1]).await.unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            repo.withdraw_vote(event.id, 2, voters[1]).await.unwrap(),
            VoteOutcome::Changed
        );
        assert_eq!(
            repo.withdraw_vote(event.id, 2, voters[1]).await.unwrap(),
            VoteOutcome::Unchanged
        );
        assert_eq!(
            repo.cast_vote(event.id, 7, voters[1]).await.unwrap(),
            VoteOutcome::NoOption
        );
        assert_eq!(repo.vote_counts(event.id).await.unwrap(), vec![0, 50, 24]);
        let view = repo.view(event.id, voters[3]).await.unwrap().unwrap();
        assert_eq!(
            (view.event.id, view.counts, view.mine),
            (event.id, vec![0, 50, 24], vec![1, 2]),
            "the event, its counts and one voter's votes at once"
        );
        assert!(
            repo.view(Uuid::now_v7(), voters[3])
                .await
                .unwrap()
                .is_none()
        );
    }

    /// What Vote answers: the outcome and the event as the voter then
    /// sees it, exact under racing voters (each answer counts at least
    /// its own vote; the last read counts them all).
    pub async fn a_vote_answers_with_the_view_it_leaves(repo: Repo) {
        let event = meeting(Uuid::now_v7(), None, None);
        repo.create_event(&event).await.unwrap();
        let voters: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
        let tasks: Vec<_> = voters
            .iter()
            .map(|voter| {
                let (repo, voter, event) = (repo.clone(), *voter, event.clone());
                tokio::spawn(async move {
                    let (outcome, view) = repo.vote_and_view(&event, 2, voter, true).await.unwrap();
                    let view = view.expect("a view with a cast vote");
                    assert_eq!(outcome, VoteOutcome::Changed);
                    assert_eq!(view.mine, vec![2]);
                    assert_eq!(view.event.id, event.id);
                    assert!((1..=50).contains(&view.counts[2]), "{:?}", view.counts);
                    let (again, view) = repo.vote_and_view(&event, 2, voter, true).await.unwrap();
                    assert_eq!(again, VoteOutcome::Unchanged);
                    assert_eq!(view.unwrap().mine, vec![2]);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let (outcome, view) = repo
            .vote_and_view(&event, 0, voters[0], true)
            .await
            .unwrap();
        let view = view.unwrap();
        assert_eq!(outcome, VoteOutcome::Changed);
        assert_eq!((view.counts, view.mine), (vec![1, 0, 50], vec![0, 2]));
        let (outcome, view) = repo
            .vote_and_view(&event, 2, voters[0], false)
            .await
            .unwrap();
        let view = view.unwrap();
        assert_eq!(outcome, VoteOutcome::Changed);
        assert_eq!((view.counts, view.mine), (vec![1, 0, 49], vec![0]));
        let (outcome, view) = repo
            .vote_and_view(&event, 2, voters[0], false)
            .await
            .unwrap();
        assert_eq!(
            (outcome, view.unwrap().counts),
            (VoteOutcome::Unchanged, vec![1, 0, 49])
        );
        let (outcome, view) = repo
            .vote_and_view(&event, 3, voters[0], true)
            .await
            .unwrap();
        assert_eq!((outcome, view.is_none()), (VoteOutcome::NoOption, true));
        assert_eq!(
            repo.view(event.id, voters[0])
                .await
                .unwrap()
                .unwrap()
                .counts,
            vec![1, 0, 49],
            "the answers agree with a fresh read"
        );
        repo.close_voting(event.id).await.unwrap();
        let closed = repo.get_event(event.id).await.unwrap().unwrap();
        let (outcome, view) = repo
            .vote_and_view(&closed, 1, voters[1], true)
            .await
            .unwrap();
        assert_eq!((outcome, view.is_none()), (VoteOutcome::NotVoting, true));
    }

    pub async fn voting_closes_once_with_the_most_voted_option(repo: Repo) {
        let event = meeting(Uuid::now_v7(), None, None);
        repo.create_event(&event).await.unwrap();
        for _ in 0..2 {
            repo.cast_vote(event.id, 2, Uuid::now_v7()).await.unwrap();
        }
        repo.cast_vote(event.id, 0, Uuid::now_v7()).await.unwrap();
        let closes: Vec<_> = (0..4)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move { repo.close_voting(event.id).await.unwrap() })
            })
            .collect();
        let mut outcomes = Vec::new();
        for close in closes {
            outcomes.push(close.await.unwrap());
        }
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == CloseOutcome::Closed(2))
                .count(),
            1,
            "{outcomes:?}"
        );
        assert_eq!(
            repo.get_event(event.id).await.unwrap().unwrap().status,
            Status::Scheduled { option: 2 }
        );
        assert_eq!(
            repo.cast_vote(event.id, 1, Uuid::now_v7()).await.unwrap(),
            VoteOutcome::NotVoting
        );
        assert_eq!(
            repo.close_voting(Uuid::now_v7()).await.unwrap(),
            CloseOutcome::NoEvent
        );
    }

    pub async fn joins_stop_at_capacity_even_when_racing(repo: Repo) {
        let event = meeting(Uuid::now_v7(), None, Some(5));
        repo.create_event(&event).await.unwrap();
        let joins: Vec<_> = (0..20)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move {
                    repo.join(event.id, Uuid::now_v7(), now_millis())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for join in joins {
            outcomes.push(join.await.unwrap());
        }
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == JoinOutcome::Joined)
                .count(),
            5
        );
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == JoinOutcome::Full(5))
                .count(),
            15
        );
        let stored = repo.get_event(event.id).await.unwrap().unwrap();
        assert_eq!(stored.participant_count, 5);

        let mut listed = HashSet::new();
        let mut after = None;
        loop {
            let page = repo.list_participants(event.id, after, 2).await.unwrap();
            listed.extend(page.items.iter().map(|p| p.user_id));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(listed.len(), 5);
        let someone = *listed.iter().next().unwrap();
        assert_eq!(
            repo.join(event.id, someone, now_millis()).await.unwrap(),
            JoinOutcome::AlreadyJoined
        );
        let joined = repo
            .list_events(&Listing::Joined(someone), None, 10)
            .await
            .unwrap();
        assert_eq!(joined.items.len(), 1);
        assert!(repo.leave(event.id, someone).await.unwrap());
        assert!(!repo.leave(event.id, someone).await.unwrap());
        assert_eq!(
            repo.join(event.id, Uuid::now_v7(), now_millis())
                .await
                .unwrap(),
            JoinOutcome::Joined,
            "a place freed is a place to take"
        );
        assert!(repo.cancel(event.id).await.unwrap());
        assert!(!repo.cancel(event.id).await.unwrap());
        assert_eq!(
            repo.join(event.id, Uuid::now_v7(), now_millis())
                .await
                .unwrap(),
            JoinOutcome::Cancelled
        );
    }

    pub async fn passed_deadlines_are_due_until_voting_closes(repo: Repo) {
        let now = now_millis();
        let mut past = meeting(Uuid::now_v7(), None, None);
        past.voting_deadline = now - 3 * 60_000;
        let mut later = meeting(Uuid::now_v7(), None, None);
        later.voting_deadline = now + HOUR;
        let mut cancelled = meeting(Uuid::now_v7(), None, None);
        cancelled.voting_deadline = now - 60_000;
        for event in [&past, &later, &cancelled] {
            repo.create_event(event).await.unwrap();
        }
        repo.cancel(cancelled.id).await.unwrap();
        let due = repo.due_for_closing(now, 100).await.unwrap();
        assert!(due.contains(&past.id), "{due:?}");
        assert!(
            !due.contains(&later.id) && !due.contains(&cancelled.id),
            "{due:?}"
        );
        assert!(matches!(
            repo.close_voting(past.id).await.unwrap(),
            CloseOutcome::Closed(_)
        ));
        let due = repo.due_for_closing(now, 100).await.unwrap();
        assert!(!due.contains(&past.id), "closed is no longer due");
        // Two hours on, the later one is due too.
        let due = repo.due_for_closing(now + 2 * HOUR, 100).await.unwrap();
        assert!(due.contains(&later.id), "{due:?}");
    }

    pub async fn reminders_are_sent_once_before_a_scheduled_event_starts(repo: Repo) {
        let now = now_millis();
        // Starts in 10 hours: too late for the day-before reminder.
        let event = meeting(Uuid::now_v7(), None, None);
        repo.create_event(&event).await.unwrap();
        repo.cast_vote(event.id, 0, Uuid::now_v7()).await.unwrap();
        assert_eq!(
            repo.close_voting(event.id).await.unwrap(),
            CloseOutcome::Closed(0)
        );
        let start = event.options[0].start;
        let job = ReminderJob {
            event_id: event.id,
            due: start - 3_600_000,
            before_secs: 3_600,
        };
        let mine = |jobs: Vec<ReminderJob>| -> Vec<ReminderJob> {
            jobs.into_iter()
                .filter(|j| j.event_id == event.id)
                .collect()
        };
        assert_eq!(mine(repo.due_reminders(now, 1000).await.unwrap()), vec![]);
        let at = job.due + 1_000;
        assert_eq!(
            mine(repo.due_reminders(at, 1000).await.unwrap()),
            vec![job],
            "only the hour-before reminder"
        );
        let sends: Vec<_> = (0..4)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move { repo.send_reminder(&job, at).await.unwrap() })
            })
            .collect();
        let mut sent = 0;
        for send in sends {
            sent += usize::from(send.await.unwrap());
        }
        assert_eq!(sent, 1, "sent once, whoever got there first");
        assert_eq!(mine(repo.due_reminders(at, 1000).await.unwrap()), vec![]);

        // A cancelled event's reminder does not go out.
        let cancelled = meeting(Uuid::now_v7(), None, None);
        repo.create_event(&cancelled).await.unwrap();
        repo.close_voting(cancelled.id).await.unwrap();
        repo.cancel(cancelled.id).await.unwrap();
        let job = ReminderJob {
            event_id: cancelled.id,
            due: cancelled.options[0].start - 3_600_000,
            before_secs: 3_600,
        };
        assert!(!repo.send_reminder(&job, job.due + 1).await.unwrap());
        let due = repo.due_reminders(job.due + 1, 1000).await.unwrap();
        assert!(!due.iter().any(|j| j.event_id == cancelled.id), "{due:?}");
    }

    pub async fn updates_never_leave_capacity_below_participants(repo: Repo) {
        let owner = Uuid::now_v7();
        let event = meeting(owner, None, Some(5));
        repo.create_event(&event).await.unwrap();
        for _ in 0..3 {
            repo.join(event.id, Uuid::now_v7(), now_millis())
                .await
                .unwrap();
        }
        let lower = EventUpdate {
            capacity: Some(Some(2)),
            ..EventUpdate::default()
        };
        assert_eq!(
            repo.update_event(event.id, &lower, owner).await.unwrap(),
            UpdateOutcome::BelowParticipants(3)
        );
        let update = EventUpdate {
            title: Some("Chess".to_owned()),
            capacity: Some(Some(3)),
            ..EventUpdate::default()
        };
        assert!(matches!(
            repo.update_event(event.id, &update, owner).await.unwrap(),
            UpdateOutcome::Updated(_)
        ));
        let stored = repo.get_event(event.id).await.unwrap().unwrap();
        assert_eq!(
            (
                stored.title.as_str(),
                stored.location.as_str(),
                stored.capacity
            ),
            ("Chess", "Café", Some(3)),
            "what was not set stays"
        );
        assert_eq!(
            repo.join(event.id, Uuid::now_v7(), now_millis())
                .await
                .unwrap(),
            JoinOutcome::Full(3)
        );

        // Joins racing an update to capacity 6: never past what applied.
        let racing = meeting(owner, None, None);
        repo.create_event(&racing).await.unwrap();
        let joins: Vec<_> = (0..12)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move {
                    repo.join(racing.id, Uuid::now_v7(), now_millis())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let six = EventUpdate {
            capacity: Some(Some(6)),
            ..EventUpdate::default()
        };
        let updated = repo.update_event(racing.id, &six, owner).await.unwrap();
        let mut joined = 0;
        for join in joins {
            joined += u32::from(join.await.unwrap() == JoinOutcome::Joined);
        }
        let stored = repo.get_event(racing.id).await.unwrap().unwrap();
        assert_eq!(stored.participant_count, joined);
        match updated {
            UpdateOutcome::Updated(_) => {
                assert_eq!(stored.capacity, Some(6));
                assert!(joined <= 6, "{joined} joined under capacity 6");
            }
            UpdateOutcome::BelowParticipants(n) => {
                assert!(n > 6);
                assert_eq!((stored.capacity, joined), (None, 12));
            }
            other => panic!("{other:?}"),
        }

        repo.cancel(event.id).await.unwrap();
        assert_eq!(
            repo.update_event(event.id, &update, owner).await.unwrap(),
            UpdateOutcome::Cancelled
        );
        assert_eq!(
            repo.update_event(Uuid::now_v7(), &update, owner)
                .await
                .unwrap(),
            UpdateOutcome::NoEvent
        );
    }

    /// An hour of its own from `base` up (tests share the store's
    /// buckets) and what three users did: in that hour two events made,
    /// three votes, four joins and a leave; 30 hours later (the next day)
    /// one more join.
    fn a_day_of_activity(base: i64) -> (i64, Uuid, Uuid, Vec<Activity>) {
        let hour = base + i64::from(Uuid::now_v7().as_fields().1 % 10_000) * 100;
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (e1, e2) = (Uuid::now_v7(), Uuid::now_v7());
        let happened = [
            (ActivityKind::Created, e1, a, hour),
            (ActivityKind::Created, e2, b, hour),
            (ActivityKind::Voted, e1, a, hour),
            (ActivityKind::Voted, e2, a, hour),
            (ActivityKind::Voted, e1, c, hour),
            (ActivityKind::Joined, e1, a, hour),
            (ActivityKind::Joined, e1, b, hour),
            (ActivityKind::Joined, e1, c, hour),
            (ActivityKind::Joined, e2, a, hour),
            (ActivityKind::Left, e1, c, hour),
            // The next day.
            (ActivityKind::Joined, e2, c, hour + 30),
        ]
        .into_iter()
        .map(|(kind, event_id, user_id, hour)| Activity {
            id: Uuid::now_v7(),
            kind,
            hour,
            event_id,
            user_id,
        })
        .collect();
        (hour, e1, e2, happened)
    }

    /// The statistics of [`a_day_of_activity`], each counted once, with
    /// `votes` votes in its hour.
    async fn assert_counted(repo: &Repo, hour: i64, e1: Uuid, e2: Uuid, votes: u64) {
        let stats = repo.stats(hour, hour + 1, 10).await.unwrap();
        assert_eq!(
            (
                stats.events_created,
                stats.votes_cast,
                stats.joins,
                stats.active_users
            ),
            (2, votes, 4, 3)
        );
        assert_eq!(stats.top_events, vec![(e1, 2), (e2, 1)]);
        let both_days = repo.stats(hour, hour + 31, 1).await.unwrap();
        assert_eq!(both_days.joins, 5);
        assert_eq!(both_days.top_events.len(), 1, "top 1");
        assert_eq!(
            repo.stats(hour + 1, hour + 30, 10).await.unwrap(),
            Default::default(),
            "nothing in between"
        );
    }

    pub async fn activity_is_counted_per_hour(repo: Repo) {
        let (hour, e1, e2, happened) = a_day_of_activity(400_000);
        for activity in &happened {
            repo.record_activity(activity).await.unwrap();
            // The log delivers at least once: a redelivery (after a crash,
            // or to another replica) counts nothing more.
            repo.record_activity(activity).await.unwrap();
        }
        assert_counted(&repo, hour, e1, e2, 3).await;
    }

    /// The consumer hands over a read of the log at once; reads may
    /// overlap after a redelivery, and still every activity counts once.
    pub async fn activity_read_in_batches_is_counted_once(repo: Repo) {
        let (hour, e1, e2, mut happened) = a_day_of_activity(1_400_000);
        // 250 more votes in the hour: more than one batch's worth.
        let voter = happened[0].user_id;
        happened.extend((0..250).map(|_| Activity {
            id: Uuid::now_v7(),
            kind: ActivityKind::Voted,
            hour,
            event_id: e2,
            user_id: voter,
        }));
        repo.record_activities(&happened[..4]).await.unwrap();
        repo.record_activities(&happened).await.unwrap();
        repo.record_activities(&happened[2..]).await.unwrap();
        assert_counted(&repo, hour, e1, e2, 253).await;
    }

    pub async fn upcoming_events_are_listed_by_start_stable_under_inserts(repo: Repo) {
        // A stretch of time of its own, far ahead (tests share the store).
        let from = now_millis() + 400 * 24 * HOUR + i64::from(Uuid::now_v7().as_fields().1) * 1000;
        let at = |hours: f64| from + (hours * HOUR as f64) as i64;
        let with_starts = |starts: &[f64]| {
            let mut event = meeting(Uuid::now_v7(), None, None);
            event.options = starts
                .iter()
                .map(|&h| TimeOption {
                    start: at(h),
                    end: at(h) + HOUR,
                })
                .collect();
            event
        };
        // Voting: counted at its earliest option.
        let voting = with_starts(&[5.0, 1.0]);
        // Closed: at the chosen one, not the earliest.
        let chosen_later = with_starts(&[3.0, 0.5]);
        let scheduled = with_starts(&[2.0]);
        let cancelled = with_starts(&[4.0]);
        let before = with_starts(&[-1.0]);
        for event in [&voting, &chosen_later, &scheduled, &cancelled, &before] {
            repo.create_event(event).await.unwrap();
        }
        repo.cast_vote(chosen_later.id, 0, Uuid::now_v7())
            .await
            .unwrap();
        repo.close_voting(chosen_later.id).await.unwrap();
        repo.close_voting(scheduled.id).await.unwrap();
        repo.cancel(cancelled.id).await.unwrap();

        let first = repo.list_by_start(from, None, 1).await.unwrap();
        let mut seen: Vec<Uuid> = first.items.iter().map(|e| e.id).collect();
        // Created while the listing is walked: one before the cursor (not
        // listed), one after it (listed once, in its place).
        repo.create_event(&with_starts(&[0.25])).await.unwrap();
        let late = with_starts(&[240.0]);
        repo.create_event(&late).await.unwrap();
        let mut after = first.next;
        let mut calls = 1;
        while let Some(cursor) = after {
            let page = repo.list_by_start(from, Some(cursor), 1).await.unwrap();
            assert!(page.items.len() <= 1);
            seen.extend(page.items.iter().map(|e| e.id));
            after = page.next;
            calls += 1;
            assert!(calls < 1000, "the listing ends");
        }
        assert_eq!(
            seen,
            [voting.id, scheduled.id, chosen_later.id, late.id],
            "soonest first, each once"
        );
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_store => embedded(), cql_store => cql() },
    tests: [
        events_are_stored_and_listed_in_a_stable_order,
        concurrent_votes_are_counted_exactly_once_per_user,
        a_vote_answers_with_the_view_it_leaves,
        voting_closes_once_with_the_most_voted_option,
        joins_stop_at_capacity_even_when_racing,
        passed_deadlines_are_due_until_voting_closes,
        reminders_are_sent_once_before_a_scheduled_event_starts,
        updates_never_leave_capacity_below_participants,
        activity_is_counted_per_hour,
        activity_read_in_batches_is_counted_once,
        upcoming_events_are_listed_by_start_stable_under_inserts,
    ],
}
