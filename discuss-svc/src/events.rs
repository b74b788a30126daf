//! The domain events discuss-svc publishes (`munity.discuss.v1`), built
//! from the records the repository writes; the aggregate is the post, the
//! subjects its community and the acting user (notify-svc turns them into
//! notifications on `community:<id>` and the post's author's `user:`).

use munity_bus::DomainEvent;
use munity_proto::discuss::v1 as pb;
use uuid::Uuid;

use crate::{
    convert::{comment_to_proto, kind_to_proto, post_to_proto},
    domain::{
        CommentRecord, PostChange, PostRecord, PostState, ReactionKind, ReactionSummary,
        ReactionTarget,
    },
};

const SOURCE: &str = "discuss-svc";

fn publish<M: prost::Name>(post: Uuid, community: Uuid, user: Uuid, payload: &M) -> DomainEvent {
    munity_bus::event(
        SOURCE,
        post.to_string(),
        vec![community.to_string(), user.to_string()],
        payload,
    )
}

fn post_message(post: &PostRecord) -> Option<pb::Post> {
    Some(post_to_proto(post, &ReactionSummary::default(), 0))
}

/// A new post: published, or submitted for approval.
pub fn created(post: &PostRecord) -> DomainEvent {
    match post.state {
        PostState::Pending => publish(
            post.id,
            post.community_id,
            post.author_id,
            &pb::PostSubmitted {
                post_id: post.id.to_string(),
                community_id: post.community_id.to_string(),
                author_id: post.author_id.to_string(),
            },
        ),
        _ => publish(
            post.id,
            post.community_id,
            post.author_id,
            &pb::PostPublished {
                post: post_message(post),
            },
        ),
    }
}

/// What `change` did to `post` (as it is after it).
pub fn changed(change: &PostChange, post: &PostRecord) -> DomainEvent {
    let (id, community, author) = (
        post.id.to_string(),
        post.community_id.to_string(),
        post.author_id.to_string(),
    );
    match change {
        PostChange::Edit { .. } => publish(
            post.id,
            post.community_id,
            post.author_id,
            &pb::PostEdited {
                post: post_message(post),
            },
        ),
        PostChange::Remove { by, .. } => publish(
            post.id,
            post.community_id,
            *by,
            &pb::PostRemoved {
                post_id: id,
                community_id: community,
                author_id: author,
                by: by.to_string(),
            },
        ),
        PostChange::Pin { pinned, by } => publish(
            post.id,
            post.community_id,
            *by,
            &pb::PostPinned {
                post_id: id,
                community_id: community,
                pinned: *pinned,
                by: by.to_string(),
            },
        ),
        PostChange::Approve { by } => publish(
            post.id,
            post.community_id,
            *by,
            &pb::PostPublished {
                post: post_message(post),
            },
        ),
        PostChange::Reject { by, reason, .. } => publish(
            post.id,
            post.community_id,
            *by,
            &pb::PostRejected {
                post_id: id,
                community_id: community,
                author_id: author,
                by: by.to_string(),
                reason: reason.clone(),
            },
        ),
        PostChange::Hide { reports } => publish(
            post.id,
            post.community_id,
            post.author_id,
            &pb::PostHidden {
                post_id: id,
                community_id: community,
                author_id: author,
                reports: *reports,
            },
        ),
    }
}

/// `post` shared with one user, `to`.
pub fn shared_with(post: &PostRecord, by: Uuid, to: Uuid, body: &str) -> DomainEvent {
    publish(
        post.id,
        post.community_id,
        by,
        &pb::PostShared {
            post_id: post.id.to_string(),
            community_id: post.community_id.to_string(),
            by: by.to_string(),
            to_user_id: to.to_string(),
            body: body.to_owned(),
        },
    )
}

pub fn comment_created(comment: &CommentRecord, post: &PostRecord) -> DomainEvent {
    publish(
        post.id,
        post.community_id,
        comment.author_id,
        &pb::CommentCreated {
            comment: Some(comment_to_proto(comment, &ReactionSummary::default())),
            community_id: post.community_id.to_string(),
            post_author_id: post.author_id.to_string(),
        },
    )
}

pub fn reaction_changed(
    target: &ReactionTarget,
    kind: ReactionKind,
    user: Uuid,
    added: bool,
) -> DomainEvent {
    publish(
        target.post_id,
        target.community_id,
        user,
        &pb::ReactionChanged {
            post_id: target.post_id.to_string(),
            comment_id: target.comment_id.map(|c| c.to_string()).unwrap_or_default(),
            community_id: target.community_id.to_string(),
            user_id: user.to_string(),
            kind: kind_to_proto(kind) as i32,
            added,
        },
    )
}

/// `by` mentioned `users` (members of the post's community, not `by`) in
/// `post` or in its comment `comment`.
pub fn mentioned(
    post: &PostRecord,
    comment: Option<Uuid>,
    by: Uuid,
    users: &[Uuid],
) -> DomainEvent {
    publish(
        post.id,
        post.community_id,
        by,
        &pb::MembersMentioned {
            post_id: post.id.to_string(),
            community_id: post.community_id.to_string(),
            comment_id: comment.map(|c| c.to_string()).unwrap_or_default(),
            by: by.to_string(),
            user_ids: users.iter().map(Uuid::to_string).collect(),
        },
    )
}
