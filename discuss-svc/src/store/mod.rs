//! The discuss repository: one trait, two backends (embedded redb, CQL),
//! one contract (`tests/repository_contract.rs`). What must hold across
//! concurrent replicas (one reaction of a kind per user, exact counts, one
//! report per reporter, a post's state changing from what was read) is
//! compare-and-set here; what a change does to a post is decided once, in
//! [`crate::domain::PostChange::apply`]. Every change stages its domain
//! events with it (see `munity_bus::outbox`).
//!
//! Listings are by UUIDv7 id, so by creation time, and continue strictly
//! after (or before) the last id handed out: posts and comments created
//! meanwhile never shift a page.

pub mod cql;
pub mod embedded;

use std::sync::Arc;

use munity_bus::DomainEvent;
pub use munity_store::{Page, StoreError, StoreResult};
use uuid::Uuid;

use crate::domain::{
    Applied, CommentRecord, PostChange, PostRecord, ReactionKind, ReactionSummary, ReactionTarget,
    SettingsRecord,
};
use munity_bus::membership::{CqlMemberships, EmbeddedMemberships, MembershipView};

/// What creating a comment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentOutcome {
    Created,
    /// The post is not published (pending, hidden, rejected, removed).
    NotPublished,
    /// The parent is not a comment of this post.
    NoParent,
    NoPost,
}

/// A report taken: distinct reporters of the post so far, and whether this
/// reporter's was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub reports: u32,
    pub new: bool,
}

#[async_trait::async_trait]
pub trait DiscussRepository: Send + Sync + 'static {
    /// Stores a new post (PUBLISHED into the feed, or PENDING into the
    /// moderation queue), with its event and `mentions` (its
    /// `MembersMentioned`, if it names anyone) staged in the same
    /// transaction or logged batch: a crash cannot keep one and lose the
    /// other.
    async fn create_post(
        &self,
        post: &PostRecord,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<()>;
    async fn get_post(&self, id: Uuid) -> StoreResult<Option<PostRecord>>;
    /// Applies `change` to the post as it is now (compare-and-set), with
    /// its domain event when it changed anything; `None`: no such post.
    /// `mentions` is staged with them only when the change is the one that
    /// first publishes a held post ([`crate::domain::first_published`], as
    /// decided inside the compare-and-set, so it is told once).
    async fn change_post(
        &self,
        id: Uuid,
        change: &PostChange,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<Option<(Applied, PostRecord)>>;

    /// A community's published posts, newest first, strictly before
    /// `before` (a post id); `limit` at most.
    async fn list_feed(
        &self,
        community: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<PostRecord>>;
    /// A community's pinned posts (published), newest first, `limit` at most.
    async fn list_pinned(&self, community: Uuid, limit: usize) -> StoreResult<Vec<PostRecord>>;
    /// Pending and hidden posts, oldest first, after `after`.
    async fn list_queue(
        &self,
        community: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<PostRecord>>;

    /// Stores a comment on a published post (a reply's parent must be a
    /// comment of the same post), its event and `mentions` staged with it
    /// as [`DiscussRepository::create_post`] does.
    async fn create_comment(
        &self,
        comment: &CommentRecord,
        mentions: Option<&DomainEvent>,
    ) -> StoreResult<CommentOutcome>;
    async fn get_comment(&self, post: Uuid, id: Uuid) -> StoreResult<Option<CommentRecord>>;
    /// A post's comments, oldest first, after `after`.
    async fn list_comments(
        &self,
        post: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<CommentRecord>>;
    /// Exact.
    async fn comment_count(&self, post: Uuid) -> StoreResult<u32>;

    /// Adds (`add`) or takes back `user`'s reaction of `kind`: false when
    /// it was so already.
    async fn react(
        &self,
        target: &ReactionTarget,
        kind: ReactionKind,
        user: Uuid,
        add: bool,
    ) -> StoreResult<bool>;
    /// Counts per kind (exact) on a post or comment id, and `user`'s own.
    async fn reactions(&self, target: Uuid, user: Uuid) -> StoreResult<ReactionSummary>;
    /// [`Self::reactions`] and [`Self::comment_count`] of each post of a
    /// page, in order; a backend that can read them at once overrides it.
    async fn post_views(
        &self,
        posts: &[Uuid],
        user: Uuid,
    ) -> StoreResult<Vec<(ReactionSummary, u32)>> {
        let mut views = Vec::with_capacity(posts.len());
        for post in posts {
            views.push((
                self.reactions(*post, user).await?,
                self.comment_count(*post).await?,
            ));
        }
        Ok(views)
    }

    /// Records `reporter`'s report once.
    async fn report(&self, post: Uuid, reporter: Uuid, reason: &str) -> StoreResult<Reported>;

    /// Tells `to` that `by` shared `post` with them (a domain event only).
    async fn share_with_user(
        &self,
        post: &PostRecord,
        by: Uuid,
        to: Uuid,
        body: &str,
    ) -> StoreResult<()>;

    async fn settings(&self, community: Uuid) -> StoreResult<SettingsRecord>;
    async fn set_settings(&self, community: Uuid, settings: &SettingsRecord) -> StoreResult<()>;
}

/// An open backend: the repository, the membership view in the same
/// store, and what its relay needs.
pub struct Opened {
    pub repo: Arc<dyn DiscussRepository>,
    pub members: Arc<dyn MembershipView>,
    pub publishing: munity_bus::outbox::Publishing,
}

/// Opens the configured backend.
pub async fn open(storage: &munity_platform::config::StorageConfig) -> anyhow::Result<Opened> {
    use munity_platform::config::StorageConfig;
    Ok(match storage {
        StorageConfig::Embedded { path } => {
            let store = embedded::EmbeddedStore::open(path)?;
            Opened {
                publishing: store.publishing(),
                members: EmbeddedMemberships::open(store.db()),
                repo: Arc::new(store),
            }
        }
        StorageConfig::Cql(config) => {
            let store = Arc::new(cql::CqlStore::connect(config).await?);
            Opened {
                publishing: munity_bus::outbox::Publishing::cql(store.outbox(), store.clone()),
                members: CqlMemberships::prepare(store.cql()).await?,
                repo: store,
            }
        }
    })
}
