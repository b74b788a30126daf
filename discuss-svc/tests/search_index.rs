//! The search index as a replica keeps it: discuss-svc's own events (built
//! by `discuss_svc::events`, as the repository stages them) on a real
//! embedded event log, followed by `search::follow`. What is published is
//! found, within the asked communities only; edits re-index, removals,
//! hiding and rejection take a post out, held posts are not indexed;
//! words are matched case and accents aside, all of them required (the
//! first eight); pages stop at the depth bound.

use std::{sync::Arc, time::Duration};

use discuss_svc::{
    domain::{PostChange, PostRecord, PostState},
    events,
    search::{self, DEPTH_MAX, PostIndex},
};
use munity_bus::{EmbeddedLog, EventLog};
use munity_platform::shutdown::ShutdownToken;
use uuid::Uuid;

fn post(community: Uuid, body: &str, state: PostState) -> PostRecord {
    PostRecord {
        id: Uuid::now_v7(),
        community_id: community,
        author_id: Uuid::now_v7(),
        body: body.to_owned(),
        created_at: 0,
        edited_at: None,
        state,
        pinned: false,
        shared_post_id: None,
        reviewed: false,
    }
}

async fn ids(index: &PostIndex, query: &str, communities: &[Uuid]) -> Vec<Uuid> {
    index.search(query, communities, 0, 50).await.unwrap().ids
}

/// Polls until `query` gives `expected` (the follower commits shortly
/// after it reads); at most 30 s, only to bound a failing run.
async fn until(index: &PostIndex, query: &str, communities: &[Uuid], expected: Vec<Uuid>) {
    let started = std::time::Instant::now();
    loop {
        let mut found = ids(index, query, communities).await;
        found.sort();
        let mut wanted = expected.clone();
        wanted.sort();
        if found == wanted {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{query:?}: {found:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_the_log_and_answers_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(dir.path(), 100_000).unwrap());
    let (c1, c2) = (Uuid::now_v7(), Uuid::now_v7());
    let apple = post(
        c1,
        "An **apple** a day, says the Café owner",
        PostState::Published,
    );
    let pear = post(c1, "Pears and apples", PostState::Published);
    let elsewhere = post(c2, "apple pie elsewhere", PostState::Published);
    let held = post(c1, "apple waiting for approval", PostState::Pending);
    // Events from other services are skipped.
    let foreign = munity_bus::event(
        "users-svc",
        "x",
        vec![],
        &munity_proto::users::v1::MemberLeft::default(),
    );
    log.append(&[
        events::created(&apple),
        events::created(&pear),
        events::created(&elsewhere),
        events::created(&held),
        foreign,
    ])
    .await
    .unwrap();

    // Built from the log that was there before the replica started.
    let (index, feed) = search::open().unwrap();
    let shutdown = ShutdownToken::new();
    tokio::spawn(search::follow(log.clone(), feed, shutdown.clone()));
    let started = std::time::Instant::now();
    while !index.is_caught_up() {
        assert!(started.elapsed() < Duration::from_secs(30), "not caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(index.documents(), 3, "the published posts");
    // "apple" is a word of its own: "apples" is another (no stemming).
    assert_eq!(ids(&index, "apple", &[c1]).await, vec![apple.id]);
    let mut both = ids(&index, "apple", &[c1, c2]).await;
    both.sort();
    assert_eq!(both, vec![apple.id, elsewhere.id]);
    assert_eq!(ids(&index, "APPLE cafe", &[c1]).await, vec![apple.id]);
    assert!(ids(&index, "apple pie", &[c1]).await.is_empty());
    assert!(ids(&index, "apple", &[]).await.is_empty());
    assert!(ids(&index, "?!", &[c1]).await.is_empty());
    // Only the first eight words count: the ninth (absent) does not.
    assert_eq!(
        ids(&index, "an apple a day says the cafe owner nowhere", &[c1]).await,
        vec![apple.id]
    );

    // Followed live: an edit re-indexes, removal, hiding and rejection
    // take posts out; approval puts the held post in.
    let mut edited = apple.clone();
    edited.body = "A quince a day".to_owned();
    let edit = PostChange::Edit {
        body: edited.body.clone(),
        at: 1,
    };
    let mut approved = held.clone();
    approved.state = PostState::Published;
    let remove = PostChange::Remove {
        by: pear.author_id,
        at: 1,
    };
    log.append(&[
        events::changed(&edit, &edited),
        events::changed(&remove, &pear),
        events::changed(&PostChange::Approve { by: c1 }, &approved),
        events::changed(&PostChange::Hide { reports: 3 }, &elsewhere),
    ])
    .await
    .unwrap();
    until(&index, "quince", &[c1], vec![apple.id]).await;
    until(&index, "apple", &[c1, c2], vec![held.id]).await;
    until(&index, "pears", &[c1], vec![]).await;

    // A post published twice in the log (a relay repeats what it could not
    // confirm before a crash), and the hidden post approved again: each is
    // found once.
    let twice = post(c1, "a durian twice", PostState::Published);
    let mut restored = elsewhere.clone();
    restored.state = PostState::Published;
    log.append(&[
        events::created(&twice),
        events::created(&twice),
        events::changed(&PostChange::Approve { by: c2 }, &restored),
    ])
    .await
    .unwrap();
    until(&index, "durian", &[c1], vec![twice.id]).await;
    until(&index, "pie", &[c2], vec![elsewhere.id]).await;

    // Pages of 50 go DEPTH_MAX deep, then stop.
    let many: Vec<PostRecord> = (0..DEPTH_MAX + 20)
        .map(|i| post(c2, &format!("common word {i}"), PostState::Published))
        .collect();
    let staged: Vec<_> = many.iter().map(events::created).collect();
    log.append(&staged).await.unwrap();
    let last = many.last().unwrap();
    until(&index, &format!("{}", DEPTH_MAX + 19), &[c2], vec![last.id]).await;
    let mut seen = Vec::new();
    let mut offset = Some(0);
    while let Some(at) = offset {
        let page = index.search("common", &[c2], at, 50).await.unwrap();
        assert!(page.ids.len() <= 50);
        seen.extend(page.ids);
        offset = page.next_offset;
    }
    assert_eq!(
        seen.len(),
        DEPTH_MAX,
        "{} results of {}",
        seen.len(),
        many.len()
    );
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no result twice");
    // Page tokens: round trip, and anything else refused.
    assert_eq!(
        search::decode_offset(&search::encode_offset(Some(50))).unwrap(),
        50
    );
    assert_eq!(search::decode_offset("").unwrap(), 0);
    assert!(search::decode_offset("garbage").is_err());
    assert!(search::decode_offset(&search::encode_offset(Some(DEPTH_MAX))).is_err());
    shutdown.cancel();
}
