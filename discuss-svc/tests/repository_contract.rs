//! One contract, every backend: the embedded store, and the real CQL
//! server (`MUNITY_TEST_CQL`; required under CI=true).

use std::{collections::HashSet, sync::Arc};

use discuss_svc::{domain::limits, events, mentions};
use discuss_svc::{
    domain::{
        Applied, CommentRecord, PostChange, PostRecord, PostState, ReactionKind, ReactionTarget,
        SettingsRecord, now_millis,
    },
    store::{CommentOutcome, DiscussRepository, cql::CqlStore, embedded::EmbeddedStore},
};
use munity_bus::{
    membership::{CqlMemberships, EmbeddedMemberships, MemberRole, MembershipView},
    outbox::Outbox,
};
use munity_proto::discuss::v1 as pb;
use prost::Message;
use uuid::Uuid;

/// The repository, the membership view kept in the same store, and the
/// outbox its changes stage their events in.
#[derive(Clone)]
struct Backend {
    repo: Arc<dyn DiscussRepository>,
    members: Arc<dyn MembershipView>,
    outbox: Arc<dyn Outbox>,
}

async fn embedded() -> Option<(Backend, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let members = EmbeddedMemberships::open(store.db());
    Some((
        Backend {
            outbox: store.publishing().outbox,
            repo: Arc::new(store),
            members,
        },
        dir,
    ))
}

/// The CQL test server (`MUNITY_TEST_CQL`), one keyspace per test process.
async fn cql() -> Option<(Backend, ())> {
    let config = munity_testkit::cql_config("discuss_contract")?;
    let _schema = munity_testkit::schema_lock().await;
    let store = CqlStore::connect(&config)
        .await
        .expect("connect to the CQL test server");
    let members = CqlMemberships::prepare(store.cql()).await.unwrap();
    Some((
        Backend {
            outbox: store.outbox(),
            repo: Arc::new(store),
            members,
        },
        (),
    ))
}

fn post(community: Uuid, author: Uuid, state: PostState) -> PostRecord {
    PostRecord {
        id: Uuid::now_v7(),
        community_id: community,
        author_id: author,
        body: "Hello **all**".to_owned(),
        created_at: now_millis(),
        edited_at: None,
        state,
        pinned: false,
        shared_post_id: None,
        reviewed: false,
    }
}

fn comment(post: Uuid, parent: Option<Uuid>, author: Uuid) -> CommentRecord {
    CommentRecord {
        id: Uuid::now_v7(),
        post_id: post,
        parent_id: parent,
        author_id: author,
        body: "Agreed".to_owned(),
        created_at: now_millis(),
    }
}

async fn feed_ids(repo: &dyn DiscussRepository, community: Uuid, size: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut before = None;
    loop {
        let page = repo.list_feed(community, before, size).await.unwrap();
        ids.extend(page.items.iter().map(|p| p.id));
        match page.next_after {
            Some(next) => before = Some(next),
            None => return ids,
        }
    }
}

mod cases {
    use super::*;

    pub async fn posts_reach_the_feed_or_the_queue_by_their_state(b: Backend) {
        let repo = b.repo.as_ref();
        let (community, author, moderator) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let published: Vec<PostRecord> = (0..3)
            .map(|_| post(community, author, PostState::Published))
            .collect();
        for p in &published {
            repo.create_post(p, None).await.unwrap();
        }
        let pending = post(community, author, PostState::Pending);
        repo.create_post(&pending, None).await.unwrap();
        assert_eq!(repo.get_post(pending.id).await.unwrap().unwrap(), pending);
        assert!(repo.get_post(Uuid::now_v7()).await.unwrap().is_none());

        // Newest first; the pending post waits in the queue only.
        let newest_first: Vec<Uuid> = published.iter().rev().map(|p| p.id).collect();
        assert_eq!(feed_ids(repo, community, 2).await, newest_first);
        let queue = repo.list_queue(community, None, 10).await.unwrap();
        assert_eq!(
            queue.items.iter().map(|p| p.id).collect::<Vec<_>>(),
            [pending.id]
        );

        // Approved: into the feed, out of the queue; approving again is a no-op.
        let approve = PostChange::Approve { by: moderator };
        let (applied, approved) = repo
            .change_post(pending.id, &approve, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(applied, Applied::Changed);
        assert_eq!(approved.state, PostState::Published);
        let (applied, _) = repo
            .change_post(pending.id, &approve, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(applied, Applied::Unchanged);
        assert_eq!(feed_ids(repo, community, 10).await[0], pending.id);
        assert!(
            repo.list_queue(community, None, 10)
                .await
                .unwrap()
                .items
                .is_empty()
        );

        // Rejected: never in the feed, the reason kept.
        let second = post(community, author, PostState::Pending);
        repo.create_post(&second, None).await.unwrap();
        let reject = PostChange::Reject {
            by: moderator,
            at: now_millis(),
            reason: "off topic".to_owned(),
        };
        let (_, rejected) = repo
            .change_post(second.id, &reject, None)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(rejected.state, PostState::Rejected { ref reason, .. } if reason == "off topic")
        );
        assert!(
            repo.list_queue(community, None, 10)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(!feed_ids(repo, community, 10).await.contains(&second.id));
        assert!(
            repo.change_post(Uuid::now_v7(), &approve, None)
                .await
                .unwrap()
                .is_none()
        );
    }

    pub async fn edits_pins_and_removals_keep_the_indexes_right(b: Backend) {
        let repo = b.repo.as_ref();
        let (community, author, moderator) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let first = post(community, author, PostState::Published);
        let second = post(community, author, PostState::Published);
        repo.create_post(&first, None).await.unwrap();
        repo.create_post(&second, None).await.unwrap();

        let edit = PostChange::Edit {
            body: "Hello *everyone*".to_owned(),
            at: now_millis(),
        };
        let (_, edited) = repo
            .change_post(first.id, &edit, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(edited.body, "Hello *everyone*");
        assert!(edited.edited_at.is_some());
        assert_eq!(repo.get_post(first.id).await.unwrap().unwrap(), edited);

        let pin = PostChange::Pin {
            pinned: true,
            by: moderator,
        };
        repo.change_post(first.id, &pin, None)
            .await
            .unwrap()
            .unwrap();
        let pinned = repo.list_pinned(community, 10).await.unwrap();
        assert_eq!(pinned.iter().map(|p| p.id).collect::<Vec<_>>(), [first.id]);
        assert!(pinned[0].pinned);

        // Removed by a moderator: out of the feed and the pins, who and when kept.
        let remove = PostChange::Remove {
            by: moderator,
            at: 42,
        };
        let (_, removed) = repo
            .change_post(first.id, &remove, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            removed.state,
            PostState::Removed {
                by: moderator,
                at: 42
            }
        );
        assert!(repo.list_pinned(community, 10).await.unwrap().is_empty());
        assert_eq!(feed_ids(repo, community, 10).await, [second.id]);
        let (applied, _) = repo
            .change_post(first.id, &edit, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(applied, Applied::Refused);
    }

    pub async fn fifty_racing_likes_count_fifty_and_a_second_like_is_a_no_op(b: Backend) {
        let repo = b.repo.clone();
        let community = Uuid::now_v7();
        let p = post(community, Uuid::now_v7(), PostState::Published);
        repo.create_post(&p, None).await.unwrap();
        let target = ReactionTarget {
            post_id: p.id,
            comment_id: None,
            community_id: community,
        };
        let users: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
        let likes = users.iter().map(|&user| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.react(&target, ReactionKind::Like, user, true).await })
        });
        for like in futures::future::join_all(likes).await {
            assert!(like.unwrap().unwrap(), "each first like counts");
        }
        let summary = repo.reactions(p.id, users[0]).await.unwrap();
        assert_eq!(summary.count(ReactionKind::Like), 50);
        assert_eq!(summary.mine, [ReactionKind::Like]);

        // A second like by the same user, even racing, is a no-op.
        let again = (0..10).map(|_| {
            let (repo, user) = (repo.clone(), users[1]);
            tokio::spawn(async move { repo.react(&target, ReactionKind::Like, user, true).await })
        });
        for like in futures::future::join_all(again).await {
            assert!(!like.unwrap().unwrap());
        }
        repo.react(&target, ReactionKind::Love, users[1], true)
            .await
            .unwrap();
        let summary = repo.reactions(p.id, users[1]).await.unwrap();
        assert_eq!(
            summary.counts,
            [(ReactionKind::Like, 50), (ReactionKind::Love, 1)]
        );
        assert_eq!(summary.mine, [ReactionKind::Like, ReactionKind::Love]);

        // Taken back once; the caller's own reactions follow.
        assert!(
            repo.react(&target, ReactionKind::Like, users[1], false)
                .await
                .unwrap()
        );
        assert!(
            !repo
                .react(&target, ReactionKind::Like, users[1], false)
                .await
                .unwrap()
        );
        let summary = repo.reactions(p.id, users[1]).await.unwrap();
        assert_eq!(summary.count(ReactionKind::Like), 49);
        assert_eq!(summary.mine, [ReactionKind::Love]);
        let stranger = repo.reactions(p.id, Uuid::now_v7()).await.unwrap();
        assert!(stranger.mine.is_empty());

        // A page's views, read at once, are what each read alone gives
        // (a post nobody reacted to included).
        let quiet = post(community, Uuid::now_v7(), PostState::Published);
        repo.create_post(&quiet, None).await.unwrap();
        let views = repo.post_views(&[p.id, quiet.id], users[1]).await.unwrap();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].0, repo.reactions(p.id, users[1]).await.unwrap());
        assert_eq!(views[0].1, repo.comment_count(p.id).await.unwrap());
        assert!(views[1].0.counts.is_empty() && views[1].0.mine.is_empty());
        assert_eq!(views[1].1, 0);
    }

    pub async fn twenty_racing_comments_count_twenty_and_replies_name_their_parent(b: Backend) {
        let repo = b.repo.clone();
        let community = Uuid::now_v7();
        let p = post(community, Uuid::now_v7(), PostState::Published);
        repo.create_post(&p, None).await.unwrap();
        let racing = (0..20).map(|_| {
            let repo = repo.clone();
            let c = comment(p.id, None, Uuid::now_v7());
            tokio::spawn(async move { repo.create_comment(&c, None).await })
        });
        for created in futures::future::join_all(racing).await {
            assert_eq!(created.unwrap().unwrap(), CommentOutcome::Created);
        }
        assert_eq!(repo.comment_count(p.id).await.unwrap(), 20);

        let first = repo.list_comments(p.id, None, 5).await.unwrap();
        let parent = first.items[0].clone();
        let reply = comment(p.id, Some(parent.id), Uuid::now_v7());
        assert_eq!(
            repo.create_comment(&reply, None).await.unwrap(),
            CommentOutcome::Created
        );
        assert_eq!(
            repo.get_comment(p.id, reply.id).await.unwrap().unwrap(),
            reply
        );
        // A parent of another post, or none at all, is refused.
        let stray = comment(p.id, Some(Uuid::now_v7()), Uuid::now_v7());
        assert_eq!(
            repo.create_comment(&stray, None).await.unwrap(),
            CommentOutcome::NoParent
        );
        let nowhere = comment(Uuid::now_v7(), None, Uuid::now_v7());
        assert_eq!(
            repo.create_comment(&nowhere, None).await.unwrap(),
            CommentOutcome::NoPost
        );
        assert_eq!(repo.comment_count(p.id).await.unwrap(), 21);

        // Pages in creation order, each comment once.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = repo.list_comments(p.id, after, 6).await.unwrap();
            seen.extend(page.items.iter().map(|c| c.id));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 21);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*seen.last().unwrap(), reply.id);

        // Comments and reactions on them.
        let target = ReactionTarget {
            post_id: p.id,
            comment_id: Some(reply.id),
            community_id: community,
        };
        let user = Uuid::now_v7();
        assert!(
            repo.react(&target, ReactionKind::Wow, user, true)
                .await
                .unwrap()
        );
        assert_eq!(
            repo.reactions(reply.id, user)
                .await
                .unwrap()
                .count(ReactionKind::Wow),
            1
        );
        assert!(repo.reactions(p.id, user).await.unwrap().counts.is_empty());

        // A post no longer published takes no comments.
        let remove = PostChange::Remove {
            by: p.author_id,
            at: now_millis(),
        };
        repo.change_post(p.id, &remove, None).await.unwrap();
        let late = comment(p.id, None, Uuid::now_v7());
        assert_eq!(
            repo.create_comment(&late, None).await.unwrap(),
            CommentOutcome::NotPublished
        );
    }

    pub async fn a_feed_paged_while_200_posts_are_created_returns_each_post_once(b: Backend) {
        let repo = b.repo.clone();
        let (community, author) = (Uuid::now_v7(), Uuid::now_v7());
        let mut before_paging = HashSet::new();
        for _ in 0..30 {
            let p = post(community, author, PostState::Published);
            repo.create_post(&p, None).await.unwrap();
            before_paging.insert(p.id);
        }
        let writer = {
            let repo = repo.clone();
            tokio::spawn(async move {
                let mut created = Vec::new();
                for _ in 0..200 {
                    let p = post(community, author, PostState::Published);
                    repo.create_post(&p, None).await.unwrap();
                    created.push(p.id);
                    tokio::task::yield_now().await;
                }
                created
            })
        };
        // Paged while the writer runs: no post twice, none of the earlier
        // ones missed, newest first throughout.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = repo.list_feed(community, before, 7).await.unwrap();
            seen.extend(page.items.iter().map(|p| p.id));
            tokio::task::yield_now().await;
            match page.next_after {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        let unique: HashSet<Uuid> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "a post listed twice");
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
        assert!(before_paging.is_subset(&unique), "an earlier post skipped");

        let created = writer.await.unwrap();
        let all = feed_ids(repo.as_ref(), community, 9).await;
        assert_eq!(all.len(), 230);
        let all: HashSet<Uuid> = all.into_iter().collect();
        assert_eq!(all.len(), 230);
        assert!(created.iter().all(|id| all.contains(id)));
    }

    pub async fn reports_count_distinct_reporters_once(b: Backend) {
        let repo = b.repo.clone();
        let community = Uuid::now_v7();
        let p = post(community, Uuid::now_v7(), PostState::Published);
        repo.create_post(&p, None).await.unwrap();
        let reporters: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let first = repo.report(p.id, reporters[0], "spam").await.unwrap();
        assert_eq!((first.reports, first.new), (1, true));
        let again = repo.report(p.id, reporters[0], "spam!").await.unwrap();
        assert_eq!((again.reports, again.new), (1, false));
        let racing = reporters[1..].iter().map(|&reporter| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.report(p.id, reporter, "spam").await })
        });
        for reported in futures::future::join_all(racing).await {
            assert!(reported.unwrap().unwrap().new);
        }
        assert_eq!(
            repo.report(p.id, reporters[2], "x").await.unwrap().reports,
            3
        );
        // Hidden once, out of the feed and into the queue.
        let hide = PostChange::Hide { reports: 3 };
        let (applied, hidden) = repo.change_post(p.id, &hide, None).await.unwrap().unwrap();
        assert_eq!(
            (applied, hidden.state),
            (Applied::Changed, PostState::Hidden)
        );
        let (applied, _) = repo.change_post(p.id, &hide, None).await.unwrap().unwrap();
        assert_eq!(applied, Applied::Unchanged);
        assert!(feed_ids(repo.as_ref(), community, 10).await.is_empty());
        let queue = repo.list_queue(community, None, 10).await.unwrap();
        assert_eq!(queue.items.iter().map(|p| p.id).collect::<Vec<_>>(), [p.id]);
        // Approved after review: back in the feed, and reports no longer hide it.
        let approve = PostChange::Approve { by: Uuid::now_v7() };
        let (_, approved) = repo
            .change_post(p.id, &approve, None)
            .await
            .unwrap()
            .unwrap();
        assert!(approved.reviewed);
        let (applied, _) = repo
            .change_post(p.id, &PostChange::Hide { reports: 4 }, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(applied, Applied::Unchanged);
        assert_eq!(feed_ids(repo.as_ref(), community, 10).await, [p.id]);
    }

    pub async fn shares_keep_what_they_share(b: Backend) {
        let repo = b.repo.as_ref();
        let (source, target, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let original = post(source, user, PostState::Published);
        repo.create_post(&original, None).await.unwrap();
        let share = PostRecord {
            shared_post_id: Some(original.id),
            body: String::new(),
            ..post(target, user, PostState::Published)
        };
        repo.create_post(&share, None).await.unwrap();
        assert_eq!(repo.get_post(share.id).await.unwrap().unwrap(), share);
        assert_eq!(feed_ids(repo, target, 10).await, [share.id]);
        repo.share_with_user(&original, user, Uuid::now_v7(), "look")
            .await
            .unwrap();
    }

    pub async fn settings_default_to_open_and_are_kept(b: Backend) {
        let repo = b.repo.as_ref();
        let community = Uuid::now_v7();
        assert!(!repo.settings(community).await.unwrap().requires_approval);
        let held = SettingsRecord {
            requires_approval: true,
        };
        repo.set_settings(community, &held).await.unwrap();
        assert_eq!(repo.settings(community).await.unwrap(), held);
    }

    pub async fn the_membership_view_follows_what_it_is_told(b: Backend) {
        let members = b.members.as_ref();
        let (first, second, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(members.role(first, user).await.unwrap(), None);
        members
            .set_member(first, user, Some(MemberRole::Member))
            .await
            .unwrap();
        members
            .set_member(second, user, Some(MemberRole::Moderator))
            .await
            .unwrap();
        assert_eq!(
            members.role(second, user).await.unwrap(),
            Some(MemberRole::Moderator)
        );
        let mut of = members.communities_of(user).await.unwrap();
        of.sort_by_key(|(community, _)| *community);
        assert_eq!(
            of,
            [(first, MemberRole::Member), (second, MemberRole::Moderator)]
        );
        members.set_member(first, user, None).await.unwrap();
        assert_eq!(members.role(first, user).await.unwrap(), None);
        assert_eq!(members.communities_of(user).await.unwrap().len(), 1);
    }

    /// The mentions staged for `post` (post and comment ones), oldest first.
    async fn staged_mentions(outbox: &dyn Outbox, post: Uuid) -> Vec<pb::MembersMentioned> {
        outbox
            .oldest(100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, e)| {
                e.aggregate_id == post.to_string()
                    && e.r#type == "munity.discuss.v1.MembersMentioned"
            })
            .map(|(_, e)| pb::MembersMentioned::decode(e.payload.as_slice()).unwrap())
            .collect()
    }

    /// Whom a text names, by display name or id, on the membership view of
    /// this backend (the rule: `discuss_svc::mentions`).
    pub async fn mentions_name_members_by_display_name_or_id(b: Backend) {
        let view = b.members.as_ref();
        let community = Uuid::now_v7();
        let [author, ann, ann_lee, zed, kim, other_kim] = [(); 6].map(|_| Uuid::now_v7());
        for (user, name) in [
            (author, "Author"),
            (ann, "Ann"),
            (ann_lee, "Ann Lee"),
            (zed, "Zed"),
            (kim, "Kim"),
            (other_kim, "kim"),
        ] {
            view.set_display_name(user, name, 1).await.unwrap();
        }
        for user in [author, ann, ann_lee, kim, other_kim] {
            view.set_member(community, user, Some(MemberRole::Member))
                .await
                .unwrap();
        }
        // Zed belongs to another community only.
        view.set_member(Uuid::now_v7(), zed, Some(MemberRole::Member))
            .await
            .unwrap();
        let told = |text: String| async move {
            mentions::resolve(view, community, author, &text)
                .await
                .unwrap()
        };
        // A name that is a prefix of another: the longest that fits.
        assert_eq!(told("hi @Ann Lee!".into()).await, [ann_lee]);
        assert_eq!(told("@ann lee's and @ANN's".into()).await, [ann_lee, ann]);
        assert_eq!(
            told("@Ann and @Ann Lee and @Ann".into()).await,
            [ann, ann_lee]
        );
        // Nobody: a non-member, a longer word, an email address, the author.
        let nobody = "@Zed, @Annabel, ann@example.org, @Author";
        assert!(told(nobody.into()).await.is_empty());
        // Namesakes are all told.
        let mut kims = vec![kim, other_kim];
        kims.sort();
        assert_eq!(told("@KIM?".into()).await, kims);
        // Ids work as before, members only.
        assert_eq!(told(format!("@{zed} @{ann}")).await, [ann]);
        // At most MENTIONS_MAX members.
        let bees: Vec<Uuid> = (0..limits::MENTIONS_MAX + 2)
            .map(|_| Uuid::now_v7())
            .collect();
        for bee in &bees {
            view.set_display_name(*bee, "Bee", 1).await.unwrap();
            view.set_member(community, *bee, Some(MemberRole::Member))
                .await
                .unwrap();
        }
        assert_eq!(told("@ann @Bee".into()).await.len(), limits::MENTIONS_MAX);
    }

    /// A mention is staged in the same transaction or batch as the post or
    /// comment it is in (and not when that is refused); a held post's when
    /// it is approved, once.
    pub async fn mentions_are_staged_with_what_they_are_in_and_held_posts_once_approved(
        b: Backend,
    ) {
        let repo = b.repo.as_ref();
        let (community, author, named) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let told =
            |p: &PostRecord, comment: Option<Uuid>| events::mentioned(p, comment, author, &[named]);
        let published = post(community, author, PostState::Published);
        repo.create_post(&published, Some(&told(&published, None)))
            .await
            .unwrap();
        let said = comment(published.id, None, author);
        let outcome = repo
            .create_comment(&said, Some(&told(&published, Some(said.id))))
            .await
            .unwrap();
        assert_eq!(outcome, CommentOutcome::Created);
        let stray = comment(published.id, Some(Uuid::now_v7()), author);
        let outcome = repo
            .create_comment(&stray, Some(&told(&published, Some(stray.id))))
            .await
            .unwrap();
        assert_eq!(outcome, CommentOutcome::NoParent);
        let staged = staged_mentions(b.outbox.as_ref(), published.id).await;
        let comments: Vec<&str> = staged.iter().map(|m| m.comment_id.as_str()).collect();
        assert_eq!(comments, ["", said.id.to_string().as_str()]);
        assert!(staged.iter().all(|m| m.user_ids == [named.to_string()]));

        let held = post(community, author, PostState::Pending);
        repo.create_post(&held, None).await.unwrap();
        let mention = told(&held, None);
        let approve = PostChange::Approve { by: author };
        let edit = PostChange::Edit {
            body: "changed".into(),
            at: now_millis(),
        };
        // Changes that publish nothing stage no mention.
        repo.change_post(held.id, &edit, Some(&mention))
            .await
            .unwrap();
        assert!(staged_mentions(b.outbox.as_ref(), held.id).await.is_empty());
        let (applied, _) = repo
            .change_post(held.id, &approve, Some(&mention))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(applied, Applied::Changed);
        // Approved again, or hidden by reports and restored: not again.
        let (applied, _) = repo
            .change_post(held.id, &approve, Some(&mention))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(applied, Applied::Unchanged);
        repo.change_post(held.id, &PostChange::Hide { reports: 3 }, None)
            .await
            .unwrap();
        let (applied, _) = repo
            .change_post(held.id, &approve, Some(&mention))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(applied, Applied::Changed);
        let staged = staged_mentions(b.outbox.as_ref(), held.id).await;
        assert_eq!(staged.len(), 1);
        assert_eq!(staged[0].user_ids, [named.to_string()]);
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_store => embedded(), cql_store => cql() },
    tests: [
        posts_reach_the_feed_or_the_queue_by_their_state,
        edits_pins_and_removals_keep_the_indexes_right,
        fifty_racing_likes_count_fifty_and_a_second_like_is_a_no_op,
        twenty_racing_comments_count_twenty_and_replies_name_their_parent,
        a_feed_paged_while_200_posts_are_created_returns_each_post_once,
        reports_count_distinct_reporters_once,
        settings_default_to_open_and_are_kept,
        shares_keep_what_they_share,
        the_membership_view_follows_what_it_is_told,
        mentions_name_members_by_display_name_or_id,
        mentions_are_staged_with_what_they_are_in_and_held_posts_once_approved,
    ],
}
