//! The CQL backend (ScyllaDB; Cassandra in tests). Every query has its
//! table and partition:
//!
//! - `posts`: one row per post, the record as JSON and a `version` that
//!   every change bumps by a lightweight transaction (`IF version = ?`):
//!   a change applies to the post as it was read, whatever raced it.
//! - `feed`, `moderation_queue`, `pinned`: a community's posts by id
//!   (UUIDv7: creation order). Index entries a change adds are written
//!   before its LWT and those it drops after, so a crash in between leaves
//!   at most an extra entry, which listings pass over by the post's state.
//! - `comments ((post_id), id)`: a post's comments in creation order; the
//!   count is `COUNT(*)` of the partition (exact).
//! - `reactions ((target_id), kind, user_id)`: `IF NOT EXISTS` / `IF
//!   EXISTS`, counted per kind with `COUNT(*) ... GROUP BY kind` (exact:
//!   the rows are the reactions).
//! - `reports ((post_id), reporter)`: `IF NOT EXISTS`, counted the same way.
//! - `settings`: one row per community.
//!
//! Domain events: in the logged batch of a plain write (creating a post
//! or a comment, with its mentions), staged tentatively around a
//! lightweight transaction otherwise (a held post's mentions with its
//! approval), with [`Verify`] answering the relay about unconfirmed ones.

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
    internal,
};
use prost::Message;
use scylla::statement::{
    batch::{Batch, BatchType},
    prepared::PreparedStatement,
};
use uuid::Uuid;

use super::{CommentOutcome, DiscussRepository, Page, Reported};
use crate::{
    domain::{
        Applied, CommentRecord, PostChange, PostRecord, PostState, ReactionKind, ReactionSummary,
        ReactionTarget, SettingsRecord, first_published,
    },
    events,
};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS posts (id uuid PRIMARY KEY, record text, version int)",
    "CREATE TABLE IF NOT EXISTS feed (community_id uuid, id uuid, PRIMARY KEY ((community_id), id))
        WITH CLUSTERING ORDER BY (id DESC)",
    "CREATE TABLE IF NOT EXISTS pinned (community_id uuid, id uuid, PRIMARY KEY ((community_id), id))
        WITH CLUSTERING ORDER BY (id DESC)",
    "CREATE TABLE IF NOT EXISTS moderation_queue (
        community_id uuid, id uuid, PRIMARY KEY ((community_id), id))",
    "CREATE TABLE IF NOT EXISTS comments (post_id uuid, id uuid, record text, PRIMARY KEY ((post_id), id))",
    "CREATE TABLE IF NOT EXISTS reactions (
        target_id uuid, kind int, user_id uuid, PRIMARY KEY ((target_id), kind, user_id))",
    "CREATE TABLE IF NOT EXISTS reports (
        post_id uuid, reporter uuid, reason text, PRIMARY KEY ((post_id), reporter))",
    "CREATE TABLE IF NOT EXISTS settings (community_id uuid PRIMARY KEY, requires_approval boolean)",
];

/// The three post indexes, by what they hold.
#[derive(Debug, Clone, Copy)]
enum Index {
    Feed,
    Queue,
    Pinned,
}

impl Index {
    const ALL: [Index; 3] = [Index::Feed, Index::Queue, Index::Pinned];

    /// Whether `post` belongs in it.
    fn holds(self, post: &PostRecord) -> bool {
        match self {
            Index::Feed => post.state == PostState::Published,
            Index::Queue => post.state.queued(),
            Index::Pinned => post.pinned && post.state == PostState::Published,
        }
    }
}

struct IndexStatements {
    insert: PreparedStatement,
    delete: PreparedStatement,
    first: PreparedStatement,
    next: PreparedStatement,
}

struct Statements {
    insert_post: PreparedStatement,
    get_post: PreparedStatement,
    update_post: PreparedStatement,
    feed: IndexStatements,
    queue: IndexStatements,
    pinned: IndexStatements,
    insert_comment: PreparedStatement,
    get_comment: PreparedStatement,
    comments_first: PreparedStatement,
    comments_after: PreparedStatement,
    count_comments: PreparedStatement,
    add_reaction: PreparedStatement,
    remove_reaction: PreparedStatement,
    get_reaction: PreparedStatement,
    count_reactions: PreparedStatement,
    my_reactions: PreparedStatement,
    add_report: PreparedStatement,
    count_reports: PreparedStatement,
    get_settings: PreparedStatement,
    set_settings: PreparedStatement,
}

pub struct CqlStore {
    cql: Arc<Cql>,
    s: Statements,
    outbox: Arc<CqlOutbox>,
}

/// How often a change re-reads a post that changed under it.
const CAS_ATTEMPTS: usize = 50;

impl CqlStore {
    pub async fn connect(config: &CqlConfig) -> anyhow::Result<Self> {
        let schema: Vec<&str> = SCHEMA
            .iter()
            .chain(outbox::SCHEMA)
            .chain(munity_bus::membership::CQL_SCHEMA)
            .copied()
            .collect();
        let cql = Arc::new(Cql::connect(config, &schema).await?);
        let p = |statement: String| {
            let cql = cql.clone();
            async move { cql.prepare(statement).await }
        };
        let index = |table: &'static str, newest_first: bool| {
            let p = &p;
            async move {
                let op = if newest_first { "<" } else { ">" };
                anyhow::Ok(IndexStatements {
                    insert: p(format!(
                        "INSERT INTO {table} (community_id, id) VALUES (?, ?)"
                    ))
                    .await?,
                    delete: p(format!(
                        "DELETE FROM {table} WHERE community_id = ? AND id = ?"
                    ))
                    .await?,
                    first: p(format!(
                        "SELECT id FROM {table} WHERE community_id = ? LIMIT ?"
                    ))
                    .await?,
                    next: p(format!(
                        "SELECT id FROM {table} WHERE community_id = ? AND id {op} ? LIMIT ?"
                    ))
                    .await?,
                })
            }
        };
        let s = Statements {
            insert_post: p("INSERT INTO posts (id, record, version) VALUES (?, ?, 0)".into()).await?,
            get_post: p("SELECT record, version FROM posts WHERE id = ?".into()).await?,
            update_post: p("UPDATE posts SET record = ?, version = ? WHERE id = ? IF version = ?".into()).await?,
            feed: index("feed", true).await?,
            queue: index("moderation_queue", false).await?,
            pinned: index("pinned", true).await?,
            insert_comment: p("INSERT INTO comments (post_id, id, record) VALUES (?, ?, ?)".into()).await?,
            get_comment: p("SELECT record FROM comments WHERE post_id = ? AND id = ?".into()).await?,
            comments_first: p("SELECT record FROM comments WHERE post_id = ? LIMIT ?".into()).await?,
            comments_after: p("SELECT record FROM comments WHERE post_id = ? AND id > ? LIMIT ?".into()).await?,
            count_comments: p("SELECT COUNT(*) FROM comments WHERE post_id = ?".into()).await?,
            add_reaction: p("INSERT INTO reactions (target_id, kind, user_id) VALUES (?, ?, ?) IF NOT EXISTS".into()).await?,
            remove_reaction: p("DELETE FROM reactions WHERE target_id = ? AND kind = ? AND user_id = ? IF EXISTS".into()).await?,
            get_reaction: p("SELECT kind FROM reactions WHERE target_id = ? AND kind = ? AND user_id = ?".into()).await?,
            count_reactions: p("SELECT kind, COUNT(*) FROM reactions WHERE target_id = ? GROUP BY kind".into()).await?,
            my_reactions: p("SELECT kind FROM reactions WHERE target_id = ? AND kind IN (1, 2, 3, 4, 5) AND user_id = ?".into()).await?,
            add_report: p("INSERT INTO reports (post_id, reporter, reason) VALUES (?, ?, ?) IF NOT EXISTS".into()).await?,
            count_reports: p("SELECT COUNT(*) FROM reports WHERE post_id = ?".into()).await?,
            get_settings: p("SELECT requires_approval FROM settings WHERE community_id = ?".into()).await?,
            set_settings: p("INSERT INTO settings (community_id, requires_approval) VALUES (?, ?)".into()).await?,
        };
        let outbox = Arc::new(CqlOutbox::new(cql.clone()).await?);
        Ok(CqlStore { cql, s, outbox })
    }

    pub fn outbox(&self) -> Arc<CqlOutbox> {
        self.outbox.clone()
    }

    /// Its session, for the membership view kept in the same keyspace.
    pub fn cql(&self) -> Arc<Cql> {
        self.cql.clone()
    }

    fn index(&self, index: Index) -> &IndexStatements {
        match index {
            Index::Feed => &self.s.feed,
            Index::Queue => &self.s.queue,
            Index::Pinned => &self.s.pinned,
        }
    }

    /// The post and its version.
    async fn load(&self, id: Uuid) -> StoreResult<Option<(PostRecord, i32)>> {
        let row: Option<(String, Option<i32>)> =
            self.cql.maybe_row(&self.s.get_post, (id,)).await?;
        row.map(|(record, version)| {
            let post: PostRecord = serde_json::from_str(&record).map_err(internal)?;
            Ok((post, version.unwrap_or(0)))
        })
        .transpose()
    }

    /// Puts `post` into, or takes it out of, `index`.
    async fn set_indexed(&self, index: Index, post: &PostRecord, present: bool) -> StoreResult<()> {
        let statements = self.index(index);
        let statement = if present {
            &statements.insert
        } else {
            &statements.delete
        };
        self.cql
            .execute(statement, (post.community_id, post.id))
            .await
            .map(drop)
    }

    /// One page of an index, as posts it should hold (entries a crash left
    /// behind are passed over). The cursor follows the entries read, so a
    /// page passed over shortens a page without ending the listing.
    async fn index_page(
        &self,
        index: Index,
        community: Uuid,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<PostRecord>> {
        let statements = self.index(index);
        let ids: Vec<(Uuid,)> = match cursor {
            None => {
                self.cql
                    .rows(&statements.first, (community, limit_plus_one(limit)))
                    .await?
            }
            Some(at) => {
                self.cql
                    .rows(&statements.next, (community, at, limit_plus_one(limit)))
                    .await?
            }
        };
        let next_after = (ids.len() > limit).then(|| ids[limit - 1].0);
        let mut items = Vec::with_capacity(limit.min(ids.len()));
        for (id,) in ids.into_iter().take(limit) {
            if let Some((post, _)) = self.load(id).await?
                && post.community_id == community
                && index.holds(&post)
            {
                items.push(post);
            }
        }
        Ok(Page { items, next_after })
    }

    async fn count(&self, statement: &PreparedStatement, id: Uuid) -> StoreResult<u32> {
        let row: Option<(i64,)> = self.cql.maybe_row(statement, (id,)).await?;
        Ok(row.map_or(0, |(n,)| n.clamp(0, i64::from(u32::MAX)) as u32))
    }
}

#[async_trait::async_trait]
impl DiscussRepository for CqlStore {
    async fn create_post(
        &self,
        post: &PostRecord,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<()> {
        let record = serde_json::to_string(post).map_err(internal)?;
        let index = if post.state == PostState::Published {
            Index::Feed
        } else {
            Index::Queue
        };
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(self.s.insert_post.clone());
        batch.append_statement(self.index(index).insert.clone());
        batch.append_statement(self.outbox.insert_statement().clone());
        let rows = (
            (post.id, record),
            (post.community_id, post.id),
            CqlOutbox::row(&events::created(post)),
        );
        match mentions {
            None => self.cql.batch(&batch, rows).await?,
            Some(mentions) => {
                batch.append_statement(self.outbox.insert_statement().clone());
                let (post_row, index_row, event_row) = rows;
                let values = (post_row, index_row, event_row, CqlOutbox::row(mentions));
                self.cql.batch(&batch, values).await?
            }
        };
        self.outbox.notify_staged();
        Ok(())
    }

    async fn get_post(&self, id: Uuid) -> StoreResult<Option<PostRecord>> {
        Ok(self.load(id).await?.map(|(post, _)| post))
    }

    async fn change_post(
        &self,
        id: Uuid,
        change: &PostChange,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<Option<(Applied, PostRecord)>> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((before, version)) = self.load(id).await? else {
                return Ok(None);
            };
            let mut post = before.clone();
            let applied = change.apply(&mut post);
            if applied != Applied::Changed {
                return Ok(Some((applied, before)));
            }
            for index in Index::ALL {
                if index.holds(&post) && !index.holds(&before) {
                    self.set_indexed(index, &post, true).await?;
                }
            }
            let record = serde_json::to_string(&post).map_err(internal)?;
            let mut staged = vec![events::changed(change, &post)];
            if first_published(&before, &post) {
                staged.extend(mentions.cloned());
            }
            let applied = self
                .outbox
                .with_events(&staged, async {
                    let applied = self
                        .cql
                        .execute_lwt(
                            &self.s.update_post,
                            (record, version.wrapping_add(1), id, version),
                        )
                        .await?;
                    Ok((applied, applied))
                })
                .await?;
            if applied {
                for index in Index::ALL {
                    if index.holds(&before) && !index.holds(&post) {
                        self.set_indexed(index, &post, false).await?;
                    }
                }
                return Ok(Some((Applied::Changed, post)));
            }
        }
        Err(StoreError::Unavailable(
            "the post kept changing; try again".to_owned(),
        ))
    }

    async fn list_feed(
        &self,
        community: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<PostRecord>> {
        self.index_page(Index::Feed, community, before, limit).await
    }

    async fn list_pinned(&self, community: Uuid, limit: usize) -> StoreResult<Vec<PostRecord>> {
        Ok(self
            .index_page(Index::Pinned, community, None, limit)
            .await?
            .items)
    }

    async fn list_queue(
        &self,
        community: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<PostRecord>> {
        self.index_page(Index::Queue, community, after, limit).await
    }

    async fn create_comment(
        &self,
        comment: &CommentRecord,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<CommentOutcome> {
        let Some((post, _)) = self.load(comment.post_id).await? else {
            return Ok(CommentOutcome::NoPost);
        };
        if post.state != PostState::Published {
            return Ok(CommentOutcome::NotPublished);
        }
        if let Some(parent) = comment.parent_id
            && self.get_comment(post.id, parent).await?.is_none()
        {
            return Ok(CommentOutcome::NoParent);
        }
        let record = serde_json::to_string(comment).map_err(internal)?;
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(self.s.insert_comment.clone());
        batch.append_statement(self.outbox.insert_statement().clone());
        let comment_row = (post.id, comment.id, record);
        let event_row = CqlOutbox::row(&events::comment_created(comment, &post));
        match mentions {
            None => self.cql.batch(&batch, (comment_row, event_row)).await?,
            Some(mentions) => {
                batch.append_statement(self.outbox.insert_statement().clone());
                let values = (comment_row, event_row, CqlOutbox::row(mentions));
                self.cql.batch(&batch, values).await?
            }
        };
        self.outbox.notify_staged();
        Ok(CommentOutcome::Created)
    }

    async fn get_comment(&self, post: Uuid, id: Uuid) -> StoreResult<Option<CommentRecord>> {
        let row: Option<(String,)> = self.cql.maybe_row(&self.s.get_comment, (post, id)).await?;
        row.map(|(record,)| serde_json::from_str(&record).map_err(internal))
            .transpose()
    }

    async fn list_comments(
        &self,
        post: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<CommentRecord>> {
        let rows: Vec<(String,)> = match after {
            None => {
                self.cql
                    .rows(&self.s.comments_first, (post, limit_plus_one(limit)))
                    .await?
            }
            Some(after) => {
                self.cql
                    .rows(&self.s.comments_after, (post, after, limit_plus_one(limit)))
                    .await?
            }
        };
        let comments = rows
            .into_iter()
            .map(|(record,)| serde_json::from_str(&record).map_err(internal))
            .collect::<StoreResult<Vec<CommentRecord>>>()?;
        Ok(munity_store::page_from(comments, limit, |c| c.id))
    }

    async fn comment_count(&self, post: Uuid) -> StoreResult<u32> {
        self.count(&self.s.count_comments, post).await
    }

    async fn react(
        &self,
        target: &ReactionTarget,
        kind: ReactionKind,
        user: Uuid,
        add: bool,
    ) -> StoreResult<bool> {
        let statement = if add {
            &self.s.add_reaction
        } else {
            &self.s.remove_reaction
        };
        let event = events::reaction_changed(target, kind, user, add);
        self.outbox
            .with_events(&[event], async {
                let applied = self
                    .cql
                    .execute_lwt(statement, (target.key(), kind as i32, user))
                    .await?;
                Ok((applied, applied))
            })
            .await
    }

    async fn reactions(&self, target: Uuid, user: Uuid) -> StoreResult<ReactionSummary> {
        let counts: Vec<(i32, i64)> = self.cql.rows(&self.s.count_reactions, (target,)).await?;
        let mine: Vec<(i32,)> = self.cql.rows(&self.s.my_reactions, (target, user)).await?;
        let mut summary = ReactionSummary {
            counts: counts
                .into_iter()
                .filter_map(|(kind, n)| {
                    Some((
                        ReactionKind::from_number(kind)?,
                        n.clamp(0, i64::from(u32::MAX)) as u32,
                    ))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            mine: mine
                .into_iter()
                .filter_map(|(kind,)| ReactionKind::from_number(kind))
                .collect(),
        };
        summary.counts.sort();
        summary.mine.sort();
        Ok(summary)
    }

    async fn report(&self, post: Uuid, reporter: Uuid, reason: &str) -> StoreResult<Reported> {
        let new = self
            .cql
            .execute_lwt(&self.s.add_report, (post, reporter, reason))
            .await?;
        Ok(Reported {
            reports: self.count(&self.s.count_reports, post).await?,
            new,
        })
    }

    async fn share_with_user(
        &self,
        post: &PostRecord,
        by: Uuid,
        to: Uuid,
        body: &str,
    ) -> StoreResult<()> {
        let row = CqlOutbox::row(&events::shared_with(post, by, to, body));
        self.cql
            .execute(self.outbox.insert_statement(), row)
            .await?;
        self.outbox.notify_staged();
        Ok(())
    }

    async fn settings(&self, community: Uuid) -> StoreResult<SettingsRecord> {
        let row: Option<(Option<bool>,)> = self
            .cql
            .maybe_row(&self.s.get_settings, (community,))
            .await?;
        Ok(SettingsRecord {
            requires_approval: row.and_then(|(r,)| r).unwrap_or(false),
        })
    }

    async fn set_settings(&self, community: Uuid, settings: &SettingsRecord) -> StoreResult<()> {
        self.cql
            .execute(
                &self.s.set_settings,
                (community, settings.requires_approval),
            )
            .await
            .map(drop)
    }
}

/// Whether the change a tentative event describes happened: the post (or
/// reaction) is as the event says.
#[async_trait::async_trait]
impl Verify for CqlStore {
    async fn happened(&self, event: &DomainEvent) -> BusResult<bool> {
        use munity_proto::discuss::v1 as pb;
        let unavailable = |e: StoreError| munity_bus::BusError::Unavailable(e.to_string());
        let payload = event.payload.as_slice();
        if event.r#type == "munity.discuss.v1.ReactionChanged" {
            let Ok(e) = pb::ReactionChanged::decode(payload) else {
                return Ok(false);
            };
            let target = Uuid::parse_str(if e.comment_id.is_empty() {
                &e.post_id
            } else {
                &e.comment_id
            });
            let (Ok(target), Ok(user)) = (target, Uuid::parse_str(&e.user_id)) else {
                return Ok(false);
            };
            let row: Option<(i32,)> = self
                .cql
                .maybe_row(&self.s.get_reaction, (target, e.kind, user))
                .await
                .map_err(unavailable)?;
            return Ok(row.is_some() == e.added);
        }
        let Ok(id) = Uuid::parse_str(&event.aggregate_id) else {
            return Ok(false);
        };
        let Some((post, _)) = self.load(id).await.map_err(unavailable)? else {
            return Ok(false);
        };
        Ok(match event.r#type.as_str() {
            // A held post's mentions are staged with its approval.
            "munity.discuss.v1.PostPublished" | "munity.discuss.v1.MembersMentioned" => {
                post.state == PostState::Published
            }
            "munity.discuss.v1.PostEdited" => pb::PostEdited::decode(payload)
                .ok()
                .and_then(|e| e.post)
                .is_some_and(|p| p.body == post.body),
            "munity.discuss.v1.PostRemoved" => matches!(post.state, PostState::Removed { .. }),
            "munity.discuss.v1.PostHidden" => post.state == PostState::Hidden,
            "munity.discuss.v1.PostRejected" => matches!(post.state, PostState::Rejected { .. }),
            "munity.discuss.v1.PostPinned" => {
                pb::PostPinned::decode(payload).is_ok_and(|e| e.pinned == post.pinned)
            }
            // Written in the same logged batch as their change.
            _ => true,
        })
    }
}
