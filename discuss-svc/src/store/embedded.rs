//! The embedded backend: one redb file (`discuss.redb`). Every change is
//! one write transaction (redb serializes them), so reactions, counts,
//! reports and state changes are exact, and the domain events are staged
//! in the same transaction.
//!
//! Keys: ids as raw UUID bytes; `pair_key(a, b)` for "b under a" (a
//! community's feed, queue and pins; a post's comments and reports);
//! reactions as target ‖ kind ‖ user, their counts as target ‖ kind.

use std::ops::Bound;
use std::path::Path;

use munity_bus::{
    DomainEvent,
    outbox::{EmbeddedOutbox, Publishing},
};
use munity_store::{
    StoreResult,
    embedded::{EmbeddedDb, decode, encode, pair_key, read_one},
    internal, page_from,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::{CommentOutcome, DiscussRepository, Page, Reported};
use crate::{
    domain::{
        Applied, CommentRecord, PostChange, PostRecord, PostState, ReactionKind, ReactionSummary,
        ReactionTarget, SettingsRecord, first_published,
    },
    events,
};

/// id → post.
const POSTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("posts");
/// pair_key(community, post) → (): published posts.
const FEED: TableDefinition<&[u8], ()> = TableDefinition::new("feed");
/// pair_key(community, post) → (): pending and hidden posts.
const QUEUE: TableDefinition<&[u8], ()> = TableDefinition::new("moderation_queue");
/// pair_key(community, post) → (): pinned posts.
const PINNED: TableDefinition<&[u8], ()> = TableDefinition::new("pinned");
/// pair_key(post, comment) → comment.
const COMMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("comments");
/// post → comments.
const COMMENT_COUNTS: TableDefinition<&[u8], u32> = TableDefinition::new("comment_counts");
/// target ‖ kind ‖ user → ().
const REACTIONS: TableDefinition<&[u8], ()> = TableDefinition::new("reactions");
/// target ‖ kind → reactions.
const REACTION_COUNTS: TableDefinition<&[u8], u32> = TableDefinition::new("reaction_counts");
/// pair_key(post, reporter) → reason.
const REPORTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("reports");
/// community → settings.
const SETTINGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("settings");

pub struct EmbeddedStore {
    db: EmbeddedDb,
    /// Every change goes through it, staging its domain events.
    outbox: EmbeddedOutbox,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/discuss.redb`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let db = EmbeddedDb::open(dir, "discuss", |txn| {
            txn.open_table(POSTS)?;
            txn.open_table(FEED)?;
            txn.open_table(QUEUE)?;
            txn.open_table(PINNED)?;
            txn.open_table(COMMENTS)?;
            txn.open_table(COMMENT_COUNTS)?;
            txn.open_table(REACTIONS)?;
            txn.open_table(REACTION_COUNTS)?;
            txn.open_table(REPORTS)?;
            txn.open_table(SETTINGS)?;
            Ok(())
        })?;
        Ok(EmbeddedStore {
            outbox: EmbeddedOutbox::new(db.clone())?,
            db,
        })
    }

    /// What the relay needs: the outbox and its cue.
    pub fn publishing(&self) -> Publishing {
        Publishing::embedded(&self.outbox)
    }

    /// Its database, for the membership view kept in the same file.
    pub fn db(&self) -> EmbeddedDb {
        self.db.clone()
    }

    /// One page of a pair-keyed index of `community`, newest first before
    /// `before` (`newest_first`) or oldest first after it, as posts whose
    /// state `keep` accepts (an index is changed in the same transaction as
    /// the post, so this is a guard, not a repair).
    async fn index_page(
        &self,
        index: TableDefinition<'static, &'static [u8], ()>,
        community: Uuid,
        cursor: Option<Uuid>,
        newest_first: bool,
        limit: usize,
    ) -> StoreResult<Page<PostRecord>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(index).map_err(internal)?;
                let posts = txn.open_table(POSTS).map_err(internal)?;
                let first = pair_key(community, Uuid::nil());
                let last = pair_key(community, Uuid::max());
                let at = cursor.map(|id| pair_key(community, id));
                let (lower, upper) = match (&at, newest_first) {
                    (Some(at), true) => (
                        Bound::Included(first.as_slice()),
                        Bound::Excluded(at.as_slice()),
                    ),
                    (Some(at), false) => (
                        Bound::Excluded(at.as_slice()),
                        Bound::Included(last.as_slice()),
                    ),
                    (None, _) => (
                        Bound::Included(first.as_slice()),
                        Bound::Included(last.as_slice()),
                    ),
                };
                let range = table.range::<&[u8]>((lower, upper)).map_err(internal)?;
                let entries: Box<dyn Iterator<Item = _>> = if newest_first {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                let mut items = Vec::new();
                for entry in entries {
                    let (key, _) = entry.map_err(internal)?;
                    if let Some(value) = posts.get(&key.value()[16..32]).map_err(internal)? {
                        items.push(decode::<PostRecord>(value.value())?);
                    }
                    if items.len() > limit {
                        break;
                    }
                }
                Ok(page_from(items, limit, |p| p.id))
            })
            .await
    }
}

fn reaction_key(target: Uuid, kind: ReactionKind, user: Uuid) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[..16].copy_from_slice(target.as_bytes());
    key[16] = kind as u8;
    key[17..].copy_from_slice(user.as_bytes());
    key
}

fn count_key(target: Uuid, kind: ReactionKind) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..16].copy_from_slice(target.as_bytes());
    key[16] = kind as u8;
    key
}

fn load(txn: &WriteTransaction, id: Uuid) -> StoreResult<Option<PostRecord>> {
    let table = txn.open_table(POSTS).map_err(internal)?;
    let value = table.get(id.as_bytes().as_slice()).map_err(internal)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Stores `post` and puts it in exactly the indexes its state calls for
/// (`before`: the state it had, whose indexes it leaves).
fn save(txn: &WriteTransaction, post: &PostRecord, before: Option<&PostRecord>) -> StoreResult<()> {
    txn.open_table(POSTS)
        .map_err(internal)?
        .insert(post.id.as_bytes().as_slice(), encode(post)?.as_slice())
        .map_err(internal)?;
    let key = pair_key(post.community_id, post.id);
    let wants = |p: &PostRecord| {
        [
            (FEED, p.state == PostState::Published),
            (QUEUE, p.state.queued()),
            (PINNED, p.pinned && p.state == PostState::Published),
        ]
    };
    let had = before.map(wants);
    for (i, (index, want)) in wants(post).into_iter().enumerate() {
        let had = had.as_ref().is_some_and(|h| h[i].1);
        if want == had {
            continue;
        }
        let mut table = txn.open_table(index).map_err(internal)?;
        if want {
            table.insert(key.as_slice(), ()).map_err(internal)?;
        } else {
            table.remove(key.as_slice()).map_err(internal)?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl DiscussRepository for EmbeddedStore {
    async fn create_post(
        &self,
        post: &PostRecord,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<()> {
        let (post, mentions) = (post.clone(), mentions.cloned());
        self.outbox
            .write(move |txn| {
                if load(txn, post.id)?.is_some() {
                    return Err(munity_store::StoreError::Conflict("post"));
                }
                save(txn, &post, None)?;
                let staged = std::iter::once(events::created(&post)).chain(mentions.clone());
                Ok(((), staged.collect()))
            })
            .await
    }

    async fn get_post(&self, id: Uuid) -> StoreResult<Option<PostRecord>> {
        self.db
            .read_now(move |db| read_one(db, POSTS, id.as_bytes().as_slice()))
            .await
    }

    async fn change_post(
        &self,
        id: Uuid,
        change: &PostChange,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<Option<(Applied, PostRecord)>> {
        let (change, mentions) = (change.clone(), mentions.cloned());
        self.outbox
            .write(move |txn| {
                let Some(before) = load(txn, id)? else {
                    return Ok((None, vec![]));
                };
                let mut post = before.clone();
                let applied = change.apply(&mut post);
                if applied != Applied::Changed {
                    return Ok((Some((applied, before)), vec![]));
                }
                save(txn, &post, Some(&before))?;
                let mut staged = vec![events::changed(&change, &post)];
                if first_published(&before, &post) {
                    staged.extend(mentions.clone());
                }
                Ok((Some((applied, post)), staged))
            })
            .await
    }

    async fn list_feed(
        &self,
        community: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<PostRecord>> {
        self.index_page(FEED, community, before, true, limit).await
    }

    async fn list_pinned(&self, community: Uuid, limit: usize) -> StoreResult<Vec<PostRecord>> {
        Ok(self
            .index_page(PINNED, community, None, true, limit)
            .await?
            .items)
    }

    async fn list_queue(
        &self,
        community: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<PostRecord>> {
        self.index_page(QUEUE, community, after, false, limit).await
    }

    async fn create_comment(
        &self,
        comment: &CommentRecord,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<CommentOutcome> {
        let (comment, mentions) = (comment.clone(), mentions.cloned());
        self.outbox
            .write(move |txn| {
                let Some(post) = load(txn, comment.post_id)? else {
                    return Ok((CommentOutcome::NoPost, vec![]));
                };
                if post.state != PostState::Published {
                    return Ok((CommentOutcome::NotPublished, vec![]));
                }
                let mut comments = txn.open_table(COMMENTS).map_err(internal)?;
                if let Some(parent) = comment.parent_id
                    && comments
                        .get(pair_key(post.id, parent).as_slice())
                        .map_err(internal)?
                        .is_none()
                {
                    return Ok((CommentOutcome::NoParent, vec![]));
                }
                comments
                    .insert(
                        pair_key(post.id, comment.id).as_slice(),
                        encode(&comment)?.as_slice(),
                    )
                    .map_err(internal)?;
                let mut counts = txn.open_table(COMMENT_COUNTS).map_err(internal)?;
                let key = post.id.as_bytes().as_slice();
                let n = counts.get(key).map_err(internal)?.map_or(0, |v| v.value());
                counts.insert(key, n + 1).map_err(internal)?;
                let staged = std::iter::once(events::comment_created(&comment, &post));
                Ok((
                    CommentOutcome::Created,
                    staged.chain(mentions.clone()).collect(),
                ))
            })
            .await
    }

    async fn get_comment(&self, post: Uuid, id: Uuid) -> StoreResult<Option<CommentRecord>> {
        self.db
            .read_now(move |db| read_one(db, COMMENTS, pair_key(post, id).as_slice()))
            .await
    }

    async fn list_comments(
        &self,
        post: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<CommentRecord>> {
        self.db
            .blocking(move |db| {
                munity_store::embedded::read_children(
                    db,
                    COMMENTS,
                    post,
                    after,
                    limit,
                    |c: &CommentRecord| c.id,
                )
            })
            .await
    }

    async fn comment_count(&self, post: Uuid) -> StoreResult<u32> {
        self.db
            .read_now(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(COMMENT_COUNTS).map_err(internal)?;
                Ok(table
                    .get(post.as_bytes().as_slice())
                    .map_err(internal)?
                    .map_or(0, |v| v.value()))
            })
            .await
    }

    async fn react(
        &self,
        target: &ReactionTarget,
        kind: ReactionKind,
        user: Uuid,
        add: bool,
    ) -> StoreResult<bool> {
        let target = *target;
        self.outbox
            .write(move |txn| {
                let mut reactions = txn.open_table(REACTIONS).map_err(internal)?;
                let key = reaction_key(target.key(), kind, user);
                let changed = if add {
                    reactions
                        .insert(key.as_slice(), ())
                        .map_err(internal)?
                        .is_none()
                } else {
                    reactions
                        .remove(key.as_slice())
                        .map_err(internal)?
                        .is_some()
                };
                if !changed {
                    return Ok((false, vec![]));
                }
                let mut counts = txn.open_table(REACTION_COUNTS).map_err(internal)?;
                let key = count_key(target.key(), kind);
                let n = counts
                    .get(key.as_slice())
                    .map_err(internal)?
                    .map_or(0, |v| v.value());
                let n = if add { n + 1 } else { n.saturating_sub(1) };
                counts.insert(key.as_slice(), n).map_err(internal)?;
                let event = events::reaction_changed(&target, kind, user, add);
                Ok((true, vec![event]))
            })
            .await
    }

    async fn reactions(&self, target: Uuid, user: Uuid) -> StoreResult<ReactionSummary> {
        self.db
            .read_now(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                reaction_summary(&txn, target, user)
            })
            .await
    }

    /// A page's posts in one read transaction on one trip to the blocking
    /// pool (a trip per post cost more than the reads); one post's (a
    /// post just written, a GetPost) on the calling thread.
    async fn post_views(
        &self,
        posts: &[Uuid],
        user: Uuid,
    ) -> StoreResult<Vec<(ReactionSummary, u32)>> {
        if posts.len() <= 1 {
            return self.db.read_now(|db| views(db, posts, user)).await;
        }
        let posts = posts.to_vec();
        self.db.blocking(move |db| views(db, &posts, user)).await
    }

    async fn report(&self, post: Uuid, reporter: Uuid, reason: &str) -> StoreResult<Reported> {
        let reason = reason.to_owned();
        self.db
            .write(move |txn| {
                let mut reports = txn.open_table(REPORTS).map_err(internal)?;
                let new = reports
                    .get(pair_key(post, reporter).as_slice())
                    .map_err(internal)?
                    .is_none();
                if new {
                    reports
                        .insert(
                            pair_key(post, reporter).as_slice(),
                            encode(&reason)?.as_slice(),
                        )
                        .map_err(internal)?;
                }
                let (from, to) = (pair_key(post, Uuid::nil()), pair_key(post, Uuid::max()));
                let reports = reports
                    .range::<&[u8]>(from.as_slice()..=to.as_slice())
                    .map_err(internal)?
                    .count() as u32;
                Ok(Reported { reports, new })
            })
            .await
    }

    async fn share_with_user(
        &self,
        post: &PostRecord,
        by: Uuid,
        to: Uuid,
        body: &str,
    ) -> StoreResult<()> {
        let event = events::shared_with(post, by, to, body);
        self.outbox
            .write(move |_| Ok(((), vec![event.clone()])))
            .await
    }

    async fn settings(&self, community: Uuid) -> StoreResult<SettingsRecord> {
        self.db
            .read_now(move |db| {
                Ok(read_one(db, SETTINGS, community.as_bytes().as_slice())?.unwrap_or_default())
            })
            .await
    }

    async fn set_settings(&self, community: Uuid, settings: &SettingsRecord) -> StoreResult<()> {
        let settings = settings.clone();
        self.db
            .write(move |txn| {
                txn.open_table(SETTINGS)
                    .map_err(internal)?
                    .insert(
                        community.as_bytes().as_slice(),
                        encode(&settings)?.as_slice(),
                    )
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }
}

/// Each post's reactions (with `user`'s own) and comment count, in one
/// read transaction.
fn views(db: &Database, posts: &[Uuid], user: Uuid) -> StoreResult<Vec<(ReactionSummary, u32)>> {
    let txn = db.begin_read().map_err(internal)?;
    let comments = txn.open_table(COMMENT_COUNTS).map_err(internal)?;
    posts
        .iter()
        .map(|post| {
            let count = comments
                .get(post.as_bytes().as_slice())
                .map_err(internal)?
                .map_or(0, |v| v.value());
            Ok((reaction_summary(&txn, *post, user)?, count))
        })
        .collect()
}

/// Counts per kind on `target` and `user`'s own reactions.
fn reaction_summary(
    txn: &redb::ReadTransaction,
    target: Uuid,
    user: Uuid,
) -> StoreResult<ReactionSummary> {
    let counts = txn.open_table(REACTION_COUNTS).map_err(internal)?;
    let reactions = txn.open_table(REACTIONS).map_err(internal)?;
    let mut summary = ReactionSummary::default();
    for kind in ReactionKind::ALL {
        let n = counts
            .get(count_key(target, kind).as_slice())
            .map_err(internal)?
            .map_or(0, |v| v.value());
        if n > 0 {
            summary.counts.push((kind, n));
        }
        if reactions
            .get(reaction_key(target, kind, user).as_slice())
            .map_err(internal)?
            .is_some()
        {
            summary.mine.push(kind);
        }
    }
    Ok(summary)
}
