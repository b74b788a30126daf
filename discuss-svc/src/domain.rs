//! The discussion domain: records as both backends store them, the one
//! table of what each change does to a post (`PostChange::apply`, shared
//! by both backends so they cannot disagree), and the rules for valid
//! input, including the markdown subset.

use munity_platform::error::FieldViolations;
pub use munity_store::{Millis, now_millis};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Limits on input, in characters where text is concerned (the protos'
/// field rules say the same; these also bound what the handlers build).
pub mod limits {
    pub const POST_MAX: usize = 10_000;
    pub const COMMENT_MAX: usize = 4_000;
    pub const REASON_MAX: usize = 500;
    /// Pinned posts shown above a feed.
    pub const PINNED_MAX: usize = 20;
    /// Communities "my feed" merges (those beyond it, by community id, are
    /// left out rather than making every page unbounded work).
    pub const FEED_COMMUNITIES_MAX: usize = 200;
    /// The longest link target the renderer looks for.
    pub const URL_MAX: usize = 2_000;
    /// The longest link text the renderer looks for.
    pub const LINK_TEXT_MAX: usize = 300;
    /// Distinct members one post or comment notifies by mentioning them
    /// (those past it are not told: a post must not become a mass mailer).
    pub const MENTIONS_MAX: usize = 10;
    /// `@`s of one text that are looked up (each costs the membership view
    /// a read; those past it name nobody).
    pub const MENTION_SIGNS_MAX: usize = 30;
}

/// Where a post stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PostState {
    /// In the community's feed.
    Published,
    /// Waiting for a moderator's approval.
    Pending,
    /// Hidden by reports until a moderator reviews it.
    Hidden,
    Rejected {
        by: Uuid,
        at: Millis,
        reason: String,
    },
    Removed {
        by: Uuid,
        at: Millis,
    },
}

impl PostState {
    /// Waiting for a moderator (in the moderation queue).
    pub fn queued(&self) -> bool {
        matches!(self, PostState::Pending | PostState::Hidden)
    }
}

/// A post, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostRecord {
    /// UUIDv7: creation order, which feeds are listed by.
    pub id: Uuid,
    pub community_id: Uuid,
    pub author_id: Uuid,
    /// The markdown source as written (kept after removal, never shown).
    pub body: String,
    pub created_at: Millis,
    pub edited_at: Option<Millis>,
    pub state: PostState,
    pub pinned: bool,
    /// A share: the post it shows (never itself a share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_post_id: Option<Uuid>,
    /// A moderator approved it after reports hid it: reports no longer
    /// hide it (they were reviewed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reviewed: bool,
}

/// A comment, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentRecord {
    /// UUIDv7: comments are listed in creation order.
    pub id: Uuid,
    pub post_id: Uuid,
    /// A reply: the comment it answers (of the same post).
    pub parent_id: Option<Uuid>,
    pub author_id: Uuid,
    pub body: String,
    pub created_at: Millis,
}

/// The fixed set of reactions (numbers as in the proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReactionKind {
    Like = 1,
    Love = 2,
    Laugh = 3,
    Wow = 4,
    Sad = 5,
}

impl ReactionKind {
    pub const ALL: [ReactionKind; 5] = [
        ReactionKind::Like,
        ReactionKind::Love,
        ReactionKind::Laugh,
        ReactionKind::Wow,
        ReactionKind::Sad,
    ];

    pub fn from_number(n: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as i32 == n)
    }
}

/// What a post or comment holds in reactions, as one caller sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReactionSummary {
    /// Kinds with at least one reaction, in kind order; exact.
    pub counts: Vec<(ReactionKind, u32)>,
    /// The caller's own.
    pub mine: Vec<ReactionKind>,
}

impl ReactionSummary {
    pub fn count(&self, kind: ReactionKind) -> u32 {
        self.counts
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// What a reaction is on: a post, or one of its comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactionTarget {
    pub post_id: Uuid,
    pub comment_id: Option<Uuid>,
    pub community_id: Uuid,
}

impl ReactionTarget {
    /// The id reactions are kept under (post and comment ids never clash).
    pub fn key(&self) -> Uuid {
        self.comment_id.unwrap_or(self.post_id)
    }
}

/// A community's discussion settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRecord {
    pub requires_approval: bool,
}

/// A change to a post. Both backends apply it with [`PostChange::apply`]
/// inside their compare-and-set, so the rules live here once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostChange {
    Edit {
        body: String,
        at: Millis,
    },
    Remove {
        by: Uuid,
        at: Millis,
    },
    Pin {
        pinned: bool,
        by: Uuid,
    },
    Approve {
        by: Uuid,
    },
    Reject {
        by: Uuid,
        at: Millis,
        reason: String,
    },
    /// Reports reached the threshold (`reports` of them).
    Hide {
        reports: u32,
    },
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// It was so already (idempotent calls).
    Unchanged,
    /// The post's state does not allow it.
    Refused,
}

/// Whether a change took the post from held to published: a held post's
/// mentions are told then, with it (not when a post hidden by reports is
/// restored: they were told when it was first published).
pub fn first_published(before: &PostRecord, after: &PostRecord) -> bool {
    before.state == PostState::Pending && after.state == PostState::Published
}

impl PostChange {
    /// Changes `post` as this change does, or says why not.
    pub fn apply(&self, post: &mut PostRecord) -> Applied {
        use PostState::*;
        match self {
            PostChange::Edit { body, at } => match post.state {
                Rejected { .. } | Removed { .. } => Applied::Refused,
                _ if post.body == *body => Applied::Unchanged,
                _ => {
                    post.body = body.clone();
                    post.edited_at = Some(*at);
                    Applied::Changed
                }
            },
            PostChange::Remove { by, at } => match post.state {
                Removed { .. } => Applied::Unchanged,
                _ => {
                    post.state = Removed { by: *by, at: *at };
                    post.pinned = false;
                    Applied::Changed
                }
            },
            PostChange::Pin { pinned, .. } => {
                if post.pinned == *pinned {
                    Applied::Unchanged
                } else if *pinned && post.state != Published {
                    Applied::Refused
                } else {
                    post.pinned = *pinned;
                    Applied::Changed
                }
            }
            PostChange::Approve { .. } => match post.state {
                Pending | Hidden => {
                    post.reviewed |= post.state == Hidden;
                    post.state = Published;
                    Applied::Changed
                }
                Published => Applied::Unchanged,
                _ => Applied::Refused,
            },
            PostChange::Reject { by, at, reason } => match post.state {
                Pending | Hidden => {
                    post.state = Rejected {
                        by: *by,
                        at: *at,
                        reason: reason.clone(),
                    };
                    post.pinned = false;
                    Applied::Changed
                }
                Rejected { .. } => Applied::Unchanged,
                _ => Applied::Refused,
            },
            PostChange::Hide { .. } => match post.state {
                Published if !post.reviewed => {
                    post.state = Hidden;
                    post.pinned = false;
                    Applied::Changed
                }
                _ => Applied::Unchanged,
            },
        }
    }
}

/// Text as stored: trimmed; a violation on `field` when empty, longer than
/// `max` characters, or holding control characters other than newlines and
/// tabs.
pub fn check_text(raw: &str, field: &str, max: usize, violations: &mut FieldViolations) -> String {
    let text = raw.trim().to_owned();
    if text.is_empty() {
        violations.add(field, "is required");
    } else if text.chars().count() > max {
        violations.add(field, format!("must be at most {max} characters"));
    } else if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        violations.add(field, "must not hold control characters");
    }
    text
}

/// A post's or comment's markdown: [`check_text`], and every link
/// (`[text](target)`) must point at an http or https URL.
pub fn check_markdown(
    raw: &str,
    field: &str,
    max: usize,
    violations: &mut FieldViolations,
) -> String {
    let text = check_text(raw, field, max, violations);
    let mut rest = text.as_str();
    while let Some(start) = rest.find("](") {
        let target = &rest[start + 2..];
        let end = target.find(')').unwrap_or(target.len());
        if !is_web_url(&target[..end]) {
            violations.add(field, "links must be http:// or https:// URLs");
            break;
        }
        rest = &target[end..];
    }
    text
}

fn is_web_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && url.len() > "http://".len()
        && url.len() <= limits::URL_MAX
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Renders the markdown subset as HTML that is safe to insert into a
/// page: every character of the source is escaped, and only these become
/// tags: `**bold**`, `*italics*`, `` `code` `` (nothing inside is
/// formatted), `[text](http(s)://...)` (rel="nofollow ugc noopener") and
/// line breaks. Anything else, raw HTML included, shows as the text it is.
pub fn render_html(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len() + source.len() / 8);
    Renderer::default().inline(&chars, true, &mut out);
    out
}

/// Remembers which closers no longer occur, so unmatched openers cost one
/// scan in all rather than one each (the input is up to 10,000 characters).
#[derive(Default)]
struct Renderer {
    no_code: bool,
    no_strong: bool,
    no_em: bool,
}

fn find(chars: &[char], from: usize, pattern: &[char]) -> Option<usize> {
    if pattern.len() > chars.len() {
        return None;
    }
    (from..=chars.len() - pattern.len()).find(|&i| chars[i..].starts_with(pattern))
}

fn escape(c: char, out: &mut String) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        '\n' => out.push_str("<br>"),
        '\r' => {}
        c => out.push(c),
    }
}

impl Renderer {
    fn inline(&mut self, chars: &[char], links: bool, out: &mut String) {
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '`' && !self.no_code {
                match find(chars, i + 1, &['`']) {
                    Some(end) if end > i + 1 => {
                        out.push_str("<code>");
                        chars[i + 1..end].iter().for_each(|&c| escape(c, out));
                        out.push_str("</code>");
                        i = end + 1;
                        continue;
                    }
                    Some(_) => {}
                    None => self.no_code = true,
                }
            } else if c == '*' && chars.get(i + 1) == Some(&'*') && !self.no_strong {
                // As in markdown, `**` opens before text and closes after it
                // (`2 ** 3` is no bold).
                match find(chars, i + 2, &['*', '*']) {
                    Some(end) if end > i + 2 && flanked(chars, i + 2, end) => {
                        out.push_str("<strong>");
                        // Bold holds no bold, so this nests once at most.
                        let mut inner = Renderer {
                            no_strong: true,
                            ..Renderer::default()
                        };
                        inner.inline(&chars[i + 2..end], links, out);
                        out.push_str("</strong>");
                        i = end + 2;
                        continue;
                    }
                    Some(_) => {}
                    None => self.no_strong = true,
                }
            } else if c == '*' && !self.no_em {
                match find(chars, i + 1, &['*']) {
                    Some(end) if end > i + 1 && flanked(chars, i + 1, end) => {
                        out.push_str("<em>");
                        let mut inner = Renderer {
                            no_strong: true,
                            no_em: true,
                            ..Renderer::default()
                        };
                        inner.inline(&chars[i + 1..end], links, out);
                        out.push_str("</em>");
                        i = end + 1;
                        continue;
                    }
                    Some(_) => {}
                    None => self.no_em = true,
                }
            } else if c == '['
                && links
                && let Some((text, url, next)) = link_at(chars, i)
            {
                out.push_str("<a href=\"");
                url.chars().for_each(|c| escape(c, out));
                out.push_str("\" rel=\"nofollow ugc noopener\">");
                Renderer::default().inline(text, false, out);
                out.push_str("</a>");
                i = next;
                continue;
            }
            escape(c, out);
            i += 1;
        }
    }
}

/// Whether `chars[start..end]` neither starts nor ends with whitespace.
fn flanked(chars: &[char], start: usize, end: usize) -> bool {
    !chars[start].is_whitespace() && !chars[end - 1].is_whitespace()
}

/// `[text](url)` starting at `start`, within bounded windows: the text,
/// the URL (http or https only) and where the link ends.
fn link_at(chars: &[char], start: usize) -> Option<(&[char], String, usize)> {
    let window = (start + 1 + limits::LINK_TEXT_MAX).min(chars.len());
    let close = (start + 1..window).find(|&i| chars[i] == ']')?;
    if close == start + 1 || chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let window = (close + 2 + limits::URL_MAX).min(chars.len());
    let end = (close + 2..window).find(|&i| chars[i] == ')')?;
    let url: String = chars[close + 2..end].iter().collect();
    is_web_url(&url).then(|| (&chars[start + 1..close], url, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_subset_renders_and_everything_else_is_escaped() {
        assert_eq!(
            render_html("**bold** and *it* and `a<b>` [x](https://e.org/?a=1&b=2)"),
            "<strong>bold</strong> and <em>it</em> and <code>a&lt;b&gt;</code> \
             <a href=\"https://e.org/?a=1&amp;b=2\" rel=\"nofollow ugc noopener\">x</a>"
        );
        assert_eq!(
            render_html("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            render_html("[x](javascript:alert(1))"),
            "[x](javascript:alert(1))"
        );
        assert_eq!(
            render_html("[x](https://a.b\" onmouseover=\"y)"),
            "[x](https://a.b&quot; onmouseover=&quot;y)"
        );
        assert_eq!(render_html("5 * 3 ** 2\nnext"), "5 * 3 ** 2<br>next");
        assert_eq!(
            render_html("**a *b* [l](http://c.d)**"),
            "<strong>a <em>b</em> <a href=\"http://c.d\" rel=\"nofollow ugc noopener\">l</a></strong>"
        );
        // Links hold no links; unmatched openers cost one scan.
        let many = "[".repeat(10_000);
        assert_eq!(render_html(&many), many);
        let stars = "*".repeat(9_999);
        assert_eq!(render_html(&stars), stars);
    }

    #[test]
    fn links_must_be_web_urls_and_control_characters_are_refused() {
        let mut violations = FieldViolations::new();
        check_markdown("see [it](https://x.org) ok", "body", 100, &mut violations);
        assert!(violations.is_empty());
        check_markdown("[it](javascript:void(0))", "body", 100, &mut violations);
        assert!(!violations.is_empty());
        let mut violations = FieldViolations::new();
        check_text("a\u{0}b", "body", 100, &mut violations);
        assert!(!violations.is_empty());
    }

    #[test]
    fn changes_follow_the_state_table() {
        let user = Uuid::now_v7();
        let mut post = PostRecord {
            id: Uuid::now_v7(),
            community_id: Uuid::now_v7(),
            author_id: user,
            body: "hi".into(),
            created_at: 1,
            edited_at: None,
            state: PostState::Pending,
            pinned: false,
            shared_post_id: None,
            reviewed: false,
        };
        let pin = PostChange::Pin {
            pinned: true,
            by: user,
        };
        assert_eq!(pin.apply(&mut post), Applied::Refused);
        assert_eq!(
            PostChange::Approve { by: user }.apply(&mut post),
            Applied::Changed
        );
        assert_eq!(pin.apply(&mut post), Applied::Changed);
        assert_eq!(pin.apply(&mut post), Applied::Unchanged);
        assert_eq!(
            PostChange::Hide { reports: 3 }.apply(&mut post),
            Applied::Changed
        );
        assert!(!post.pinned && post.state.queued());
        // Approved after review: reports no longer hide it.
        let approve = PostChange::Approve { by: user };
        assert_eq!(approve.apply(&mut post), Applied::Changed);
        assert_eq!(
            PostChange::Hide { reports: 4 }.apply(&mut post),
            Applied::Unchanged
        );
        assert_eq!(post.state, PostState::Published);
        let remove = PostChange::Remove { by: user, at: 5 };
        assert_eq!(remove.apply(&mut post), Applied::Changed);
        assert_eq!(remove.apply(&mut post), Applied::Unchanged);
        let edit = PostChange::Edit {
            body: "x".into(),
            at: 6,
        };
        assert_eq!(edit.apply(&mut post), Applied::Refused);
    }
}
