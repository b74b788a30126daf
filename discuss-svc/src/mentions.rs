//! Mentions: which members a post's or comment's text names with `@`, and
//! so who is told (one `MembersMentioned`, staged with the post or comment
//! it is in).
//!
//! The rule, for each `@` of the text in order:
//!
//! - An `@` starts a mention only where no word runs through it: at the
//!   start of the text or after a character that is not a letter, digit or
//!   `_` (`ada@example.org` mentions nobody).
//! - `@` and a user id (hyphenated, not running on into more letters,
//!   digits or `-`) names that user.
//! - Otherwise `@` names the members of the post's community whose display
//!   name is the **longest** one the text after the `@` starts with,
//!   compared folded ([`munity_bus::membership::name_key`]: case, and any
//!   run of whitespace as one space), and that ends where a word ends (the
//!   end of the text, or a character that is not a letter, digit or `_`).
//!   With members Ann and Ann Lee, `@Ann Lee,` names Ann Lee and `@Ann is`
//!   names Ann; `@Annabel` names neither. Display names may hold spaces
//!   (users-svc takes 1 to 64 characters, trimmed), so a name is not "the
//!   word after the `@`".
//! - Members sharing that name are all told. A mention has to reach the
//!   person it was meant for: were namesakes told nothing, any member could
//!   silence mentions of another by taking the same name, and the author,
//!   who only sees names, would never know. Telling all costs a namesake a
//!   notification about a post they may read anyway, and the cap bounds it.
//!   An author who means one of them writes `@<user id>` (what a client's
//!   name completion can insert).
//! - The text a name matched starts nothing more: an `@` inside it is part
//!   of the name.
//! - Never the author, never anyone outside the community; at most
//!   [`limits::MENTIONS_MAX`] distinct members, in order of first mention
//!   (namesakes by user id); only the first [`limits::MENTION_SIGNS_MAX`]
//!   `@`s that could start a mention are looked up, so a text of `@`s costs
//!   a bounded number of reads.
//!
//! Who holds which name comes from the membership view
//! (`munity_bus::membership`), kept from users-svc's `ProfileChanged` and
//! member events in discuss-svc's own store: no call to users-svc.

use munity_bus::membership::{DISPLAY_NAME_MAX, MembershipView, name_key};
use munity_store::StoreResult;
use uuid::Uuid;

use crate::domain::limits;

/// How far after an `@` a name is looked for, in characters: a name of
/// [`DISPLAY_NAME_MAX`] written with extra whitespace still fits.
const NAME_WINDOW: usize = 2 * DISPLAY_NAME_MAX;

/// What one `@` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sign {
    /// `@` and a user id.
    Id(Uuid),
    /// The folded names the text after the `@` may be read as, longest
    /// first, each with the byte offset in the text where it ends.
    Names(Vec<(String, usize)>),
}

fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A user id right at the start of `rest`, and not the start of something
/// longer.
fn id_at(rest: &str) -> Option<Uuid> {
    const ID_LEN: usize = 36;
    let candidate = rest.get(..ID_LEN)?;
    let longer = rest[ID_LEN..]
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
    if longer || candidate.as_bytes()[8] != b'-' {
        return None;
    }
    Uuid::parse_str(candidate).ok()
}

/// What the `@` at byte `at` of `text` may name; `None` when it starts no
/// mention.
pub fn sign_at(text: &str, at: usize) -> Option<Sign> {
    if !text[at..].starts_with('@') || text[..at].chars().next_back().is_some_and(word_char) {
        return None;
    }
    let rest = &text[at + 1..];
    if let Some(id) = id_at(rest) {
        return Some(Sign::Id(id));
    }
    let window: Vec<(usize, char)> = rest.char_indices().take(NAME_WINDOW + 1).collect();
    if window.first().is_none_or(|(_, c)| c.is_whitespace()) {
        return None;
    }
    let mut names = Vec::new();
    // A name ends after character k - 1 where that is no whitespace (names
    // are trimmed) and a word ends.
    for k in 1..=window.len().min(NAME_WINDOW) {
        let (end, next) = match window.get(k) {
            Some(&(i, c)) => (i, Some(c)),
            None => (rest.len(), None),
        };
        if window[k - 1].1.is_whitespace() || next.is_some_and(word_char) {
            continue;
        }
        let key = name_key(&rest[..end]);
        if key.chars().count() > DISPLAY_NAME_MAX {
            break;
        }
        names.push((key, at + 1 + end));
    }
    names.reverse();
    (!names.is_empty()).then_some(Sign::Names(names))
}

/// The members of `community` that `text`, written by `author`, mentions
/// (see the module's rule), in order of first mention.
pub async fn resolve(
    members: &dyn MembershipView,
    community: Uuid,
    author: Uuid,
    text: &str,
) -> StoreResult<Vec<Uuid>> {
    let mut told = Vec::new();
    let mut signs = 0;
    // Where the last name matched ends: `@`s before it are inside it.
    let mut passed = 0;
    for (at, _) in text.match_indices('@') {
        if told.len() >= limits::MENTIONS_MAX || signs >= limits::MENTION_SIGNS_MAX {
            break;
        }
        if at < passed {
            continue;
        }
        let Some(sign) = sign_at(text, at) else {
            continue;
        };
        signs += 1;
        let named = match sign {
            Sign::Id(user) => match members.role(community, user).await? {
                Some(_) => vec![user],
                None => Vec::new(),
            },
            Sign::Names(names) => {
                let keys: Vec<String> = names.iter().map(|(key, _)| key.clone()).collect();
                // One more than the cap: the author may be among them.
                match members
                    .members_named(community, &keys, limits::MENTIONS_MAX + 1)
                    .await?
                {
                    Some((key, users)) => {
                        passed = names
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map_or(at, |(_, end)| *end);
                        users
                    }
                    None => Vec::new(),
                }
            }
        };
        for user in named {
            if user != author && !told.contains(&user) && told.len() < limits::MENTIONS_MAX {
                told.push(user);
            }
        }
    }
    Ok(told)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str, at: usize) -> Vec<String> {
        match sign_at(text, at) {
            Some(Sign::Names(names)) => names.into_iter().map(|(key, _)| key).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_after_an_at_sign_are_ids() {
        let a = Uuid::now_v7();
        assert_eq!(sign_at(&format!("@{a}, hi"), 0), Some(Sign::Id(a)));
        assert_eq!(sign_at(&format!("é @{a}"), 3), Some(Sign::Id(a)));
        // Running on into more: a name, not an id.
        assert!(matches!(
            sign_at(&format!("@{a}0"), 0),
            Some(Sign::Names(_))
        ));
        // An `@` inside a word (an email address) starts nothing.
        assert_eq!(sign_at(&format!("x@{a}"), 1), None);
        assert_eq!(sign_at("ada@example.org", 3), None);
        assert_eq!(sign_at("trailing @", 9), None);
        assert_eq!(sign_at("@ space", 0), None);
    }

    #[test]
    fn a_name_may_end_wherever_a_word_ends_longest_first() {
        assert_eq!(
            names("@Ann Lee, hi", 0),
            ["ann lee, hi", "ann lee,", "ann lee", "ann"]
        );
        // Whitespace runs fold to one space; a name never ends in one.
        assert_eq!(names("@Ann \t Lee", 0), ["ann lee", "ann"]);
        // `Annabel` holds no name `Ann`.
        assert_eq!(names("@Annabel!", 0), ["annabel!", "annabel"]);
        // Letters of other scripts are word characters too.
        assert_eq!(names("@Zoë’s", 0), ["zoë’s", "zoë"]);
        // No name is longer than users-svc allows.
        let long = format!("@{}", "a ".repeat(100));
        let found = names(&long, 0);
        assert!(found.iter().all(|k| k.chars().count() <= DISPLAY_NAME_MAX));
        assert_eq!(found.len(), DISPLAY_NAME_MAX / 2);
    }
}
