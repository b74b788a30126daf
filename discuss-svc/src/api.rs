//! The `munity.discuss.v1.Discuss` gRPC service.
//!
//! Visibility: a community's posts, comments, reactions and settings only
//! to its members (the membership view). Anyone else gets NOT_FOUND, on
//! reads and writes alike, so ids cannot be probed. A post that is not
//! published (pending, hidden, rejected) is seen only by its author and
//! the community's moderators. Moderating (pins, the queue, approval,
//! settings) is for the community's moderators and owner.

use std::sync::Arc;

use munity_bus::{
    DomainEvent,
    membership::{MemberRole, MembershipView},
};
use munity_platform::{
    auth::Claims,
    authed,
    error::FieldViolations,
    wire::{one_id, parse_id},
};
use munity_proto::discuss::v1::{self as pb, discuss_server::Discuss};
use munity_store::page_token;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::{comment_to_proto, post_to_proto, reactions_to_proto},
    domain::{
        self, Applied, CommentRecord, PostChange, PostRecord, PostState, ReactionKind,
        ReactionSummary, ReactionTarget, SettingsRecord, limits, now_millis,
    },
    error::DiscussError,
    events, mentions,
    search::{self, PostIndex},
    store::{CommentOutcome, DiscussRepository},
};

type Result<T> = std::result::Result<T, DiscussError>;

pub struct DiscussApi {
    repo: Arc<dyn DiscussRepository>,
    members: Arc<dyn MembershipView>,
    /// Distinct reporters that hide a post (at least 1).
    reports_to_hide: u32,
    /// This replica's full-text index of published posts.
    index: PostIndex,
}

/// A required id field.
fn id_field(raw: &str, field: &str) -> Result<Uuid> {
    Ok(one_id(raw, field)?)
}

fn kind_field(raw: i32) -> Result<ReactionKind> {
    ReactionKind::from_number(raw)
        .ok_or_else(|| DiscussError::invalid("kind", "must be LIKE, LOVE, LAUGH, WOW or SAD"))
}

fn cursor(token: &str) -> Result<Option<Uuid>> {
    Ok(page_token::decode(token)?)
}

impl DiscussApi {
    pub fn new(
        repo: Arc<dyn DiscussRepository>,
        members: Arc<dyn MembershipView>,
        reports_to_hide: u32,
        index: PostIndex,
    ) -> Self {
        DiscussApi {
            repo,
            members,
            reports_to_hide: reports_to_hide.max(1),
            index,
        }
    }

    /// The caller's role in `community`; NOT_FOUND for non-members.
    async fn member(&self, community: Uuid, user: Uuid) -> Result<MemberRole> {
        self.members
            .role(community, user)
            .await?
            .ok_or(DiscussError::NotFound("community"))
    }

    /// A moderator (or the owner) of `community`; NOT_FOUND for non-members.
    async fn moderator(&self, community: Uuid, user: Uuid, what: &str) -> Result<MemberRole> {
        let role = self.member(community, user).await?;
        if !role.moderates() {
            return Err(DiscussError::PermissionDenied(format!(
                "only the community's moderators {what}"
            )));
        }
        Ok(role)
    }

    /// The post, if the caller may see it, with their role in its
    /// community; NOT_FOUND otherwise.
    async fn visible(&self, user: Uuid, raw_id: &str) -> Result<(PostRecord, MemberRole)> {
        let id = id_field(raw_id, "post_id")?;
        let post = self
            .repo
            .get_post(id)
            .await?
            .ok_or(DiscussError::NotFound("post"))?;
        let Some(role) = self.members.role(post.community_id, user).await? else {
            return Err(DiscussError::NotFound("post"));
        };
        let shown = match post.state {
            PostState::Published | PostState::Removed { .. } => true,
            _ => post.author_id == user || role.moderates(),
        };
        if !shown {
            return Err(DiscussError::NotFound("post"));
        }
        Ok((post, role))
    }

    /// The post, if the caller may see it and moderates its community:
    /// NOT_FOUND for those who may not see it, PERMISSION_DENIED for
    /// members who do not moderate (`what` they may not do).
    async fn moderated(&self, user: Uuid, raw_id: &str, what: &str) -> Result<PostRecord> {
        let (post, role) = self.visible(user, raw_id).await?;
        if !role.moderates() {
            return Err(DiscussError::PermissionDenied(format!(
                "only the community's moderators {what}"
            )));
        }
        Ok(post)
    }

    /// The `MembersMentioned` of `text` (by `author`, in `post` or in its
    /// comment `comment`), if it names any member (the rule:
    /// [`mentions`]); the caller stages it with the post or comment, so it
    /// is told exactly when that is stored. A membership view that cannot
    /// be read fails the call before anything is stored (the client's
    /// retry posts once).
    async fn mentions(
        &self,
        post: &PostRecord,
        comment: Option<Uuid>,
        author: Uuid,
        text: &str,
    ) -> Result<Option<DomainEvent>> {
        let told =
            mentions::resolve(self.members.as_ref(), post.community_id, author, text).await?;
        Ok((!told.is_empty()).then(|| events::mentioned(post, comment, author, &told)))
    }

    /// The post as `user` sees it: reactions (theirs too) and comments;
    /// a share with the post it shares (whose text shows while it is
    /// published).
    async fn view(&self, post: &PostRecord, user: Uuid) -> Result<pb::Post> {
        let mut out = self.view_one(post, user).await?;
        self.add_original(&mut out, post, user).await?;
        Ok(out)
    }

    /// A share shows its original post (its text only while published).
    async fn add_original(&self, out: &mut pb::Post, post: &PostRecord, user: Uuid) -> Result<()> {
        if let Some(original) = post.shared_post_id
            && let Some(original) = self.repo.get_post(original).await?
        {
            let mut shown = self.view_one(&original, user).await?;
            if original.state != PostState::Published {
                shown.body.clear();
                shown.body_html.clear();
            }
            out.shared = Some(Box::new(shown));
        }
        Ok(())
    }

    async fn view_one(&self, post: &PostRecord, user: Uuid) -> Result<pb::Post> {
        let reactions = self.repo.reactions(post.id, user).await?;
        let comments = self.repo.comment_count(post.id).await?;
        Ok(post_to_proto(post, &reactions, comments))
    }

    /// A page of posts: their reactions and comment counts read at once,
    /// then each shared post's original (few pages have any).
    async fn views(&self, posts: &[PostRecord], user: Uuid) -> Result<Vec<pb::Post>> {
        let ids: Vec<Uuid> = posts.iter().map(|p| p.id).collect();
        let counts = self.repo.post_views(&ids, user).await?;
        let mut out = Vec::with_capacity(posts.len());
        for (post, (reactions, comments)) in posts.iter().zip(counts) {
            let mut view = post_to_proto(post, &reactions, comments);
            self.add_original(&mut view, post, user).await?;
            out.push(view);
        }
        Ok(out)
    }

    /// Applies `change`, answering the post as it is after it; `mentions`
    /// are told if it is the change that first publishes the post.
    async fn change(
        &self,
        post: &PostRecord,
        change: PostChange,
        user: Uuid,
        refused: &str,
        mentions: Option<&DomainEvent>,
    ) -> Result<pb::Post> {
        match self.repo.change_post(post.id, &change, mentions).await? {
            None => Err(DiscussError::NotFound("post")),
            Some((Applied::Refused, _)) => {
                Err(DiscussError::FailedPrecondition(refused.to_owned()))
            }
            Some((_, post)) => self.view(&post, user).await,
        }
    }

    async fn create_post(
        &self,
        claims: Claims,
        request: pb::CreatePostRequest,
    ) -> Result<pb::Post> {
        let mut violations = FieldViolations::new();
        let community = parse_id(&request.community_id, "community_id", &mut violations);
        let body = domain::check_markdown(&request.body, "body", limits::POST_MAX, &mut violations);
        violations.into_result()?;
        let role = self.member(community, claims.sub).await?;
        let held = self.repo.settings(community).await?.requires_approval && !role.moderates();
        let post = PostRecord {
            id: Uuid::now_v7(),
            community_id: community,
            author_id: claims.sub,
            body,
            created_at: now_millis(),
            edited_at: None,
            state: if held {
                PostState::Pending
            } else {
                PostState::Published
            },
            pinned: false,
            shared_post_id: None,
            reviewed: false,
        };
        // A held post's mentions are told once it is approved.
        let mentions = match post.state {
            PostState::Published => {
                self.mentions(&post, None, post.author_id, &post.body)
                    .await?
            }
            _ => None,
        };
        self.repo.create_post(&post, mentions.as_ref()).await?;
        // Nobody can have reacted to or commented on a post this new, and
        // it shares nothing: its view needs no reads.
        Ok(post_to_proto(&post, &ReactionSummary::default(), 0))
    }

    async fn share(
        &self,
        claims: Claims,
        request: pb::SharePostRequest,
    ) -> Result<pb::SharePostResponse> {
        let (post, _) = self.visible(claims.sub, &request.post_id).await?;
        let mut violations = FieldViolations::new();
        let body = if request.body.trim().is_empty() {
            String::new()
        } else {
            domain::check_markdown(&request.body, "body", limits::COMMENT_MAX, &mut violations)
        };
        let (to_community, to_user) = (
            !request.community_id.trim().is_empty(),
            !request.user_id.trim().is_empty(),
        );
        if to_community == to_user {
            violations.add("community_id", "set community_id or user_id (one of them)");
        }
        let target = if to_community {
            parse_id(&request.community_id, "community_id", &mut violations)
        } else {
            parse_id(&request.user_id, "user_id", &mut violations)
        };
        violations.into_result()?;
        if post.state != PostState::Published {
            return Err(DiscussError::FailedPrecondition(
                "only published posts are shared".to_owned(),
            ));
        }
        // A share of a share shares what it shows.
        let original = match post.shared_post_id {
            Some(id) => self
                .repo
                .get_post(id)
                .await?
                .ok_or(DiscussError::NotFound("post"))?,
            None => post,
        };
        if to_user {
            if self
                .members
                .role(original.community_id, target)
                .await?
                .is_none()
            {
                return Err(DiscussError::FailedPrecondition(
                    "a post is shared with members of its community only".to_owned(),
                ));
            }
            self.repo
                .share_with_user(&original, claims.sub, target, &body)
                .await?;
            return Ok(pb::SharePostResponse { post: None });
        }
        let role = self.member(target, claims.sub).await?;
        let held = self.repo.settings(target).await?.requires_approval && !role.moderates();
        let share = PostRecord {
            id: Uuid::now_v7(),
            community_id: target,
            author_id: claims.sub,
            body,
            created_at: now_millis(),
            edited_at: None,
            state: if held {
                PostState::Pending
            } else {
                PostState::Published
            },
            pinned: false,
            shared_post_id: Some(original.id),
            reviewed: false,
        };
        let mentions = match share.state {
            PostState::Published => {
                self.mentions(&share, None, share.author_id, &share.body)
                    .await?
            }
            _ => None,
        };
        self.repo.create_post(&share, mentions.as_ref()).await?;
        Ok(pb::SharePostResponse {
            post: Some(self.view(&share, claims.sub).await?),
        })
    }

    async fn edit_post(&self, claims: Claims, request: pb::EditPostRequest) -> Result<pb::Post> {
        let (post, _) = self.visible(claims.sub, &request.post_id).await?;
        let mut violations = FieldViolations::new();
        let body = domain::check_markdown(&request.body, "body", limits::POST_MAX, &mut violations);
        violations.into_result()?;
        if post.author_id != claims.sub {
            return Err(DiscussError::PermissionDenied(
                "only the author edits a post".to_owned(),
            ));
        }
        let change = PostChange::Edit {
            body,
            at: now_millis(),
        };
        self.change(
            &post,
            change,
            claims.sub,
            "a removed or rejected post cannot be edited",
            None,
        )
        .await
    }

    async fn delete_post(
        &self,
        claims: Claims,
        request: pb::DeletePostRequest,
    ) -> Result<pb::Post> {
        let (post, role) = self.visible(claims.sub, &request.post_id).await?;
        if post.author_id != claims.sub && !role.moderates() {
            return Err(DiscussError::PermissionDenied(
                "only the author or a moderator removes a post".to_owned(),
            ));
        }
        let change = PostChange::Remove {
            by: claims.sub,
            at: now_millis(),
        };
        self.change(&post, change, claims.sub, "", None).await
    }

    async fn pin(&self, claims: Claims, raw_id: &str, pinned: bool) -> Result<pb::Post> {
        let post = self.moderated(claims.sub, raw_id, "pin posts").await?;
        let change = PostChange::Pin {
            pinned,
            by: claims.sub,
        };
        self.change(
            &post,
            change,
            claims.sub,
            "only published posts are pinned",
            None,
        )
        .await
    }

    async fn list_posts(
        &self,
        claims: Claims,
        request: pb::ListPostsRequest,
    ) -> Result<pb::ListPostsResponse> {
        let community = id_field(&request.community_id, "community_id")?;
        let before = cursor(&request.page_token)?;
        self.member(community, claims.sub).await?;
        let size = munity_store::page_size(request.page_size, 20, 100);
        let pinned = match before {
            None => self.repo.list_pinned(community, limits::PINNED_MAX).await?,
            Some(_) => Vec::new(),
        };
        let page = self.repo.list_feed(community, before, size).await?;
        // Pinned posts show above the feed, not in it.
        let posts: Vec<PostRecord> = page.items.into_iter().filter(|p| !p.pinned).collect();
        Ok(pb::ListPostsResponse {
            pinned: self.views(&pinned, claims.sub).await?,
            posts: self.views(&posts, claims.sub).await?,
            next_page_token: page_token::encode(page.next_after),
        })
    }

    /// Every community's feed of the caller's, merged newest first: each
    /// page reads at most `size` posts of each community before the cursor
    /// (a post id, so posts created meanwhile never shift a page).
    async fn my_feed(
        &self,
        claims: Claims,
        request: pb::MyFeedRequest,
    ) -> Result<pb::ListPostsResponse> {
        let before = cursor(&request.page_token)?;
        let size = munity_store::page_size(request.page_size, 20, 100);
        let mut communities = self.members.communities_of(claims.sub).await?;
        communities.truncate(limits::FEED_COMMUNITIES_MAX);
        let mut candidates = Vec::new();
        let mut more = false;
        for (community, _) in communities {
            let page = self.repo.list_feed(community, before, size).await?;
            more |= page.next_after.is_some();
            candidates.extend(page.items);
        }
        candidates.sort_by_key(|p| std::cmp::Reverse(p.id));
        more |= candidates.len() > size;
        candidates.truncate(size);
        let next = if more {
            candidates.last().map(|p| p.id)
        } else {
            None
        };
        Ok(pb::ListPostsResponse {
            pinned: Vec::new(),
            posts: self.views(&candidates, claims.sub).await?,
            next_page_token: page_token::encode(next),
        })
    }

    async fn create_comment(
        &self,
        claims: Claims,
        request: pb::CreateCommentRequest,
    ) -> Result<pb::Comment> {
        let (post, _) = self.visible(claims.sub, &request.post_id).await?;
        let mut violations = FieldViolations::new();
        let body =
            domain::check_markdown(&request.body, "body", limits::COMMENT_MAX, &mut violations);
        let parent = (!request.parent_id.trim().is_empty())
            .then(|| parse_id(&request.parent_id, "parent_id", &mut violations));
        violations.into_result()?;
        let comment = CommentRecord {
            id: Uuid::now_v7(),
            post_id: post.id,
            parent_id: parent,
            author_id: claims.sub,
            body,
            created_at: now_millis(),
        };
        let mentions = self
            .mentions(&post, Some(comment.id), comment.author_id, &comment.body)
            .await?;
        match self
            .repo
            .create_comment(&comment, mentions.as_ref())
            .await?
        {
            CommentOutcome::Created => Ok(comment_to_proto(&comment, &Default::default())),
            CommentOutcome::NotPublished => Err(DiscussError::FailedPrecondition(
                "only published posts take comments".to_owned(),
            )),
            CommentOutcome::NoParent => Err(DiscussError::invalid(
                "parent_id",
                "must be a comment of this post",
            )),
            CommentOutcome::NoPost => Err(DiscussError::NotFound("post")),
        }
    }

    async fn list_comments(
        &self,
        claims: Claims,
        request: pb::ListCommentsRequest,
    ) -> Result<pb::ListCommentsResponse> {
        let (post, _) = self.visible(claims.sub, &request.post_id).await?;
        let after = cursor(&request.page_token)?;
        let size = munity_store::page_size(request.page_size, 50, 200);
        let page = self.repo.list_comments(post.id, after, size).await?;
        let mut comments = Vec::with_capacity(page.items.len());
        for comment in &page.items {
            let reactions = self.repo.reactions(comment.id, claims.sub).await?;
            comments.push(comment_to_proto(comment, &reactions));
        }
        Ok(pb::ListCommentsResponse {
            comments,
            next_page_token: page_token::encode(page.next_after),
        })
    }

    async fn react(
        &self,
        claims: Claims,
        request: pb::ReactRequest,
        add: bool,
    ) -> Result<pb::Reactions> {
        let (post, _) = self.visible(claims.sub, &request.post_id).await?;
        let kind = kind_field(request.kind)?;
        let comment = if request.comment_id.trim().is_empty() {
            None
        } else {
            let id = id_field(&request.comment_id, "comment_id")?;
            self.repo
                .get_comment(post.id, id)
                .await?
                .ok_or(DiscussError::NotFound("comment"))?;
            Some(id)
        };
        if post.state != PostState::Published {
            return Err(DiscussError::FailedPrecondition(
                "only published posts take reactions".to_owned(),
            ));
        }
        let target = ReactionTarget {
            post_id: post.id,
            comment_id: comment,
            community_id: post.community_id,
        };
        self.repo.react(&target, kind, claims.sub, add).await?;
        let summary = self.repo.reactions(target.key(), claims.sub).await?;
        Ok(reactions_to_proto(&summary))
    }

    async fn report(
        &self,
        claims: Claims,
        request: pb::ReportPostRequest,
    ) -> Result<pb::ReportPostResponse> {
        let (post, _) = self.visible(claims.sub, &request.post_id).await?;
        let mut violations = FieldViolations::new();
        let reason = domain::check_text(
            &request.reason,
            "reason",
            limits::REASON_MAX,
            &mut violations,
        );
        violations.into_result()?;
        if post.state != PostState::Published {
            return Err(DiscussError::FailedPrecondition(
                "only published posts are reported".to_owned(),
            ));
        }
        let reported = self.repo.report(post.id, claims.sub, &reason).await?;
        let mut hidden = false;
        if reported.reports >= self.reports_to_hide {
            let change = PostChange::Hide {
                reports: reported.reports,
            };
            if let Some((_, post)) = self.repo.change_post(post.id, &change, None).await? {
                hidden = post.state == PostState::Hidden;
            }
        }
        Ok(pb::ReportPostResponse {
            reports: reported.reports,
            hidden,
        })
    }

    async fn queue(
        &self,
        claims: Claims,
        request: pb::ListModerationQueueRequest,
    ) -> Result<pb::ListModerationQueueResponse> {
        let community = id_field(&request.community_id, "community_id")?;
        let after = cursor(&request.page_token)?;
        self.moderator(community, claims.sub, "see the moderation queue")
            .await?;
        let size = munity_store::page_size(request.page_size, 20, 100);
        let page = self.repo.list_queue(community, after, size).await?;
        Ok(pb::ListModerationQueueResponse {
            posts: self.views(&page.items, claims.sub).await?,
            next_page_token: page_token::encode(page.next_after),
        })
    }

    async fn moderate(
        &self,
        claims: Claims,
        raw_id: &str,
        reason: Option<&str>,
    ) -> Result<pb::Post> {
        let post = self
            .moderated(claims.sub, raw_id, "approve or reject posts")
            .await?;
        let change = match reason {
            None => PostChange::Approve { by: claims.sub },
            Some(raw) => {
                let mut violations = FieldViolations::new();
                let reason = domain::check_text(raw, "reason", limits::REASON_MAX, &mut violations);
                violations.into_result()?;
                PostChange::Reject {
                    by: claims.sub,
                    at: now_millis(),
                    reason,
                }
            }
        };
        // A held post's mentions (of the text the moderator approves) are
        // told when it first reaches the feed: staged with the approval,
        // which the repository decides (not again when a post hidden by
        // reports is restored, nor by a second approval that raced it).
        let mentions = match (&change, &post.state) {
            (PostChange::Approve { .. }, PostState::Pending) => {
                self.mentions(&post, None, post.author_id, &post.body)
                    .await?
            }
            _ => None,
        };
        self.change(
            &post,
            change,
            claims.sub,
            "only pending or hidden posts are moderated",
            mentions.as_ref(),
        )
        .await
    }

    /// Published posts of the caller's communities matching every word of
    /// the query, best first, from this replica's index; each hit is read
    /// back from the store, so a post removed since it was indexed is left
    /// out.
    async fn search(
        &self,
        claims: Claims,
        request: pb::SearchPostsRequest,
    ) -> Result<pb::SearchPostsResponse> {
        let mut violations = FieldViolations::new();
        let query = domain::check_text(&request.query, "query", search::QUERY_MAX, &mut violations);
        violations.into_result()?;
        let offset = search::decode_offset(&request.page_token)?;
        let size = munity_store::page_size(request.page_size, 20, search::PAGE_MAX as u32);
        let mut communities = self.members.communities_of(claims.sub).await?;
        communities.truncate(limits::FEED_COMMUNITIES_MAX);
        let communities: Vec<Uuid> = communities.into_iter().map(|(c, _)| c).collect();
        let hits = self
            .index
            .search(&query, &communities, offset, size)
            .await?;
        let mut posts = Vec::with_capacity(hits.ids.len());
        for id in &hits.ids {
            if let Some(post) = self.repo.get_post(*id).await?
                && post.state == PostState::Published
                && communities.contains(&post.community_id)
            {
                posts.push(post);
            }
        }
        Ok(pb::SearchPostsResponse {
            posts: self.views(&posts, claims.sub).await?,
            next_page_token: search::encode_offset(hits.next_offset),
        })
    }

    async fn set_settings(
        &self,
        claims: Claims,
        request: pb::SetCommunitySettingsRequest,
    ) -> Result<pb::CommunitySettings> {
        let community = id_field(&request.community_id, "community_id")?;
        self.moderator(community, claims.sub, "change its settings")
            .await?;
        let settings = SettingsRecord {
            requires_approval: request.requires_approval,
        };
        self.repo.set_settings(community, &settings).await?;
        Ok(pb::CommunitySettings {
            community_id: community.to_string(),
            requires_approval: settings.requires_approval,
        })
    }

    async fn get_settings(
        &self,
        claims: Claims,
        request: pb::GetCommunitySettingsRequest,
    ) -> Result<pb::CommunitySettings> {
        let community = id_field(&request.community_id, "community_id")?;
        self.member(community, claims.sub).await?;
        let settings = self.repo.settings(community).await?;
        Ok(pb::CommunitySettings {
            community_id: community.to_string(),
            requires_approval: settings.requires_approval,
        })
    }
}

type Answer<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Discuss for DiscussApi {
    async fn create_post(&self, request: Request<pb::CreatePostRequest>) -> Answer<pb::Post> {
        authed!(request, DiscussError, |c, m| self.create_post(c, m))
    }

    async fn get_post(&self, request: Request<pb::GetPostRequest>) -> Answer<pb::Post> {
        authed!(request, DiscussError, |c, m| async move {
            let (post, _) = self.visible(c.sub, &m.post_id).await?;
            self.view(&post, c.sub).await
        })
    }

    async fn edit_post(&self, request: Request<pb::EditPostRequest>) -> Answer<pb::Post> {
        authed!(request, DiscussError, |c, m| self.edit_post(c, m))
    }

    async fn delete_post(&self, request: Request<pb::DeletePostRequest>) -> Answer<pb::Post> {
        authed!(request, DiscussError, |c, m| self.delete_post(c, m))
    }

    async fn pin_post(&self, request: Request<pb::PinPostRequest>) -> Answer<pb::Post> {
        authed!(request, DiscussError, |c, m| async move {
            self.pin(c, &m.post_id, true).await
        })
    }

    async fn unpin_post(&self, request: Request<pb::PinPostRequest>) -> Answer<pb::Post> {
        authed!(request, DiscussError, |c, m| async move {
            self.pin(c, &m.post_id, false).await
        })
    }

    async fn list_posts(
        &self,
        request: Request<pb::ListPostsRequest>,
    ) -> Answer<pb::ListPostsResponse> {
        authed!(request, DiscussError, |c, m| self.list_posts(c, m))
    }

    async fn my_feed(&self, request: Request<pb::MyFeedRequest>) -> Answer<pb::ListPostsResponse> {
        authed!(request, DiscussError, |c, m| self.my_feed(c, m))
    }

    async fn create_comment(
        &self,
        request: Request<pb::CreateCommentRequest>,
    ) -> Answer<pb::Comment> {
        authed!(request, DiscussError, |c, m| self.create_comment(c, m))
    }

    async fn list_comments(
        &self,
        request: Request<pb::ListCommentsRequest>,
    ) -> Answer<pb::ListCommentsResponse> {
        authed!(request, DiscussError, |c, m| self.list_comments(c, m))
    }

    async fn react(&self, request: Request<pb::ReactRequest>) -> Answer<pb::Reactions> {
        authed!(request, DiscussError, |c, m| self.react(c, m, true))
    }

    async fn unreact(&self, request: Request<pb::ReactRequest>) -> Answer<pb::Reactions> {
        authed!(request, DiscussError, |c, m| self.react(c, m, false))
    }

    async fn report_post(
        &self,
        request: Request<pb::ReportPostRequest>,
    ) -> Answer<pb::ReportPostResponse> {
        authed!(request, DiscussError, |c, m| self.report(c, m))
    }

    async fn list_moderation_queue(
        &self,
        request: Request<pb::ListModerationQueueRequest>,
    ) -> Answer<pb::ListModerationQueueResponse> {
        authed!(request, DiscussError, |c, m| self.queue(c, m))
    }

    async fn approve_post(&self, request: Request<pb::ApprovePostRequest>) -> Answer<pb::Post> {
        authed!(request, DiscussError, |c, m| async move {
            self.moderate(c, &m.post_id, None).await
        })
    }

    async fn reject_post(&self, request: Request<pb::RejectPostRequest>) -> Answer<pb::Post> {
        authed!(request, DiscussError, |c, m| async move {
            self.moderate(c, &m.post_id, Some(&m.reason)).await
        })
    }

    async fn share_post(
        &self,
        request: Request<pb::SharePostRequest>,
    ) -> Answer<pb::SharePostResponse> {
        authed!(request, DiscussError, |c, m| self.share(c, m))
    }

    async fn set_community_settings(
        &self,
        request: Request<pb::SetCommunitySettingsRequest>,
    ) -> Answer<pb::CommunitySettings> {
        authed!(request, DiscussError, |c, m| self.set_settings(c, m))
    }

    async fn search_posts(
        &self,
        request: Request<pb::SearchPostsRequest>,
    ) -> Answer<pb::SearchPostsResponse> {
        authed!(request, DiscussError, |c, m| self.search(c, m))
    }

    async fn get_community_settings(
        &self,
        request: Request<pb::GetCommunitySettingsRequest>,
    ) -> Answer<pb::CommunitySettings> {
        authed!(request, DiscussError, |c, m| self.get_settings(c, m))
    }
}
