//! The users domain: records as stored, and the rules for valid input.
//!
//! Records are plain data shared by both storage backends; the gRPC layer
//! converts them to and from protobuf messages in `api.rs`.

use munity_platform::error::FieldViolations;
pub use munity_store::{Millis, now_millis};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Platform-wide roles. Stored as their names, so adding one needs no
/// migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: Uuid,
    /// Lower-cased; unique.
    pub email: String,
    pub display_name: String,
    /// A PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
    /// Sorted, without duplicates, always containing `Role::User`.
    pub roles: Vec<Role>,
    pub created_at: Millis,
}

impl UserRecord {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Grants or takes away `role`, keeping `roles` sorted and deduplicated.
    pub fn set_role(&mut self, role: Role, granted: bool) {
        self.roles.retain(|r| *r != role);
        if granted {
            self.roles.push(role);
        }
        self.roles.sort_by_key(|r| r.as_str());
    }
}

/// One refresh token. Only its SHA-256 is stored; the token itself exists
/// only in the client's hands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshTokenRecord {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// The login session (token family) the token belongs to.
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: Millis,
    /// Set when the token has been exchanged; a second exchange is reuse.
    pub used: bool,
}

/// A login session: the family of refresh tokens descending from one login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: Millis,
    pub revoked: bool,
}

/// An Ed25519 signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// The 32-byte Ed25519 seed.
    pub secret: Vec<u8>,
    pub created_at: Millis,
    /// When a newer key took over signing; the key still verifies tokens it
    /// signed until they expire.
    pub retired_at: Option<Millis>,
}

/// A community.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunityRecord {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub owner_id: Uuid,
    pub created_at: Millis,
}

/// A community-level role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Member,
    Moderator,
    Owner,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Member => "member",
            MemberRole::Moderator => "moderator",
            MemberRole::Owner => "owner",
        }
    }

    pub fn parse(name: &str) -> Option<MemberRole> {
        match name {
            "member" => Some(MemberRole::Member),
            "moderator" => Some(MemberRole::Moderator),
            "owner" => Some(MemberRole::Owner),
            _ => None,
        }
    }
}

/// One user's membership of one community.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub community_id: Uuid,
    pub user_id: Uuid,
    pub role: MemberRole,
    pub joined_at: Millis,
}

/// Limits on input, in characters (not bytes) where text is concerned.
pub mod limits {
    pub const EMAIL_MAX: usize = 254;
    pub const PASSWORD_MIN: usize = 8;
    pub const PASSWORD_MAX: usize = 128;
    pub const DISPLAY_NAME_MAX: usize = 64;
    pub const COMMUNITY_NAME_MAX: usize = 100;
    pub const COMMUNITY_DESCRIPTION_MAX: usize = 2000;
    pub const PAGE_SIZE_DEFAULT: u32 = 50;
    pub const PAGE_SIZE_MAX: u32 = 500;
}

/// Lower-cases and trims an email, or records why it is not one.
pub fn normalize_email(raw: &str, field: &str, violations: &mut FieldViolations) -> String {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        violations.add(field, "is required");
    } else if email.chars().count() > limits::EMAIL_MAX {
        violations.add(
            field,
            format!("must be at most {} characters", limits::EMAIL_MAX),
        );
    } else if !looks_like_email(&email) {
        violations.add(field, "must be a valid email address like name@example.com");
    }
    email
}

/// A deliberately small check: one `@`, a non-empty local part, a dotted
/// domain of sane characters, no spaces or control characters. Deliverability
/// is a question for a confirmation mail, not a regex.
fn looks_like_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let domain_ok = !domain.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@');
    local_ok && domain_ok
}

pub fn check_password(password: &str, field: &str, violations: &mut FieldViolations) {
    let length = password.chars().count();
    if length < limits::PASSWORD_MIN {
        violations.add(
            field,
            format!("must be at least {} characters", limits::PASSWORD_MIN),
        );
    } else if length > limits::PASSWORD_MAX {
        violations.add(
            field,
            format!("must be at most {} characters", limits::PASSWORD_MAX),
        );
    }
}

/// Trims `raw` and checks it is 1 to `max` characters with no control
/// characters.
pub fn required_text(
    raw: &str,
    max: usize,
    field: &str,
    violations: &mut FieldViolations,
) -> String {
    let text = raw.trim().to_owned();
    if text.is_empty() {
        violations.add(field, "is required");
    } else {
        check_text(&text, max, field, violations);
    }
    text
}

/// Checks optional text: at most `max` characters, no control characters but
/// newlines and tabs.
pub fn check_text(text: &str, max: usize, field: &str, violations: &mut FieldViolations) {
    if text.chars().count() > max {
        violations.add(field, format!("must be at most {max} characters"));
    } else if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        violations.add(field, "must not contain control characters");
    }
}

pub use munity_platform::wire::parse_id;

#[cfg(test)]
mod tests {
    use super::*;

    fn email_ok(raw: &str) -> bool {
        let mut v = FieldViolations::new();
        normalize_email(raw, "email", &mut v);
        v.is_empty()
    }

    #[test]
    fn emails() {
        assert!(email_ok("ada@example.com"));
        assert!(email_ok("  Ada.Lovelace+x@Example.CO.uk "));
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a da@example.com",
            "ada@exa mple.com",
            "ada@.example.com",
            "ada@example..com",
        ] {
            assert!(!email_ok(bad), "{bad:?} should be refused");
        }
        assert!(!email_ok(&format!("{}@example.com", "a".repeat(250))));
    }

    #[test]
    fn passwords_count_characters_not_bytes() {
        let mut v = FieldViolations::new();
        check_password("ééééééé", "password", &mut v); // 7 chars, 14 bytes
        assert!(!v.is_empty());
        let mut v = FieldViolations::new();
        check_password(&"é".repeat(128), "password", &mut v);
        assert!(v.is_empty());
        let mut v = FieldViolations::new();
        check_password(&"a".repeat(129), "password", &mut v);
        assert!(!v.is_empty());
    }

    #[test]
    fn roles_stay_sorted_and_unique() {
        let mut user = UserRecord {
            id: Uuid::now_v7(),
            email: "a@b.co".into(),
            display_name: "A".into(),
            password_hash: String::new(),
            roles: vec![Role::User],
            created_at: 0,
        };
        user.set_role(Role::Admin, true);
        user.set_role(Role::Admin, true);
        assert_eq!(user.roles, vec![Role::Admin, Role::User]);
        user.set_role(Role::Admin, false);
        assert_eq!(user.roles, vec![Role::User]);
    }
}
