//! Between stored records and protobuf messages.

use munity_proto::discuss::v1 as pb;

use crate::domain::{
    CommentRecord, PostRecord, PostState, ReactionKind, ReactionSummary, render_html,
};

pub use munity_platform::wire::timestamp;

pub fn kind_to_proto(kind: ReactionKind) -> pb::ReactionKind {
    match kind {
        ReactionKind::Like => pb::ReactionKind::Like,
        ReactionKind::Love => pb::ReactionKind::Love,
        ReactionKind::Laugh => pb::ReactionKind::Laugh,
        ReactionKind::Wow => pb::ReactionKind::Wow,
        ReactionKind::Sad => pb::ReactionKind::Sad,
    }
}

pub fn reactions_to_proto(summary: &ReactionSummary) -> pb::Reactions {
    pb::Reactions {
        counts: summary
            .counts
            .iter()
            .map(|(kind, count)| pb::ReactionCount {
                kind: kind_to_proto(*kind) as i32,
                count: *count,
            })
            .collect(),
        mine: summary
            .mine
            .iter()
            .map(|kind| kind_to_proto(*kind) as i32)
            .collect(),
    }
}

/// The post as clients see it; a removed post's text is not shown.
pub fn post_to_proto(
    post: &PostRecord,
    reactions: &ReactionSummary,
    comment_count: u32,
) -> pb::Post {
    let mut out = pb::Post {
        id: post.id.to_string(),
        community_id: post.community_id.to_string(),
        author_id: post.author_id.to_string(),
        body: post.body.clone(),
        body_html: render_html(&post.body),
        created_at: Some(timestamp(post.created_at)),
        edited_at: post.edited_at.map(timestamp),
        status: pb::PostStatus::Published as i32,
        pinned: post.pinned,
        reactions: Some(reactions_to_proto(reactions)),
        comment_count,
        shared_post_id: post
            .shared_post_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        ..Default::default()
    };
    out.status = match &post.state {
        PostState::Published => pb::PostStatus::Published,
        PostState::Pending => pb::PostStatus::Pending,
        PostState::Hidden => pb::PostStatus::Hidden,
        PostState::Rejected { reason, .. } => {
            out.reason = reason.clone();
            pb::PostStatus::Rejected
        }
        PostState::Removed { by, at } => {
            out.removed_by = by.to_string();
            out.removed_at = Some(timestamp(*at));
            out.body.clear();
            out.body_html.clear();
            pb::PostStatus::Removed
        }
    } as i32;
    out
}

pub fn comment_to_proto(comment: &CommentRecord, reactions: &ReactionSummary) -> pb::Comment {
    pb::Comment {
        id: comment.id.to_string(),
        post_id: comment.post_id.to_string(),
        parent_id: comment.parent_id.map(|p| p.to_string()).unwrap_or_default(),
        author_id: comment.author_id.to_string(),
        body: comment.body.clone(),
        body_html: render_html(&comment.body),
        created_at: Some(timestamp(comment.created_at)),
        reactions: Some(reactions_to_proto(reactions)),
    }
}
