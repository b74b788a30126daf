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

/// A community-level role (shared with every service's membership view).
pub use munity_bus::membership::MemberRole;

/// One user's membership of one community.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub community_id: Uuid,
    pub user_id: Uuid,
    pub role: MemberRole,
    pub joined_at: Millis,
}

/// The role every service account's token carries, and no user's: a token
/// with it names a service account, not a person (`api/service_accounts.rs`).
/// The platform reads it to tell services' tokens from users'.
pub use munity_platform::auth::SERVICE_ROLE;

/// A service account: an identity for an internal caller (another service,
/// a bot), which exchanges its client id and secret for short-lived tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountRecord {
    /// The client id, and the `sub` of its tokens.
    pub id: Uuid,
    /// As given; unique ignoring ASCII case ([`ServiceAccountRecord::name_key`]).
    pub name: String,
    /// Sorted, without duplicates (as a CQL `set<text>` holds them, so both
    /// backends give the same record back).
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the client secret; the secret itself is shown once.
    pub secret_hash: String,
    pub disabled: bool,
    pub created_at: Millis,
    /// When the current secret was made.
    pub secret_rotated_at: Millis,
}

impl ServiceAccountRecord {
    /// What makes a name taken: `Bot` and `bot` would be told apart by
    /// nobody reading an audit log.
    pub fn name_key(&self) -> String {
        self.name.to_ascii_lowercase()
    }
}

/// Limits on input, in characters (not bytes) where text is concerned.
pub mod limits {
    pub const EMAIL_MAX: usize = 254;
    pub const PASSWORD_MIN: usize = 8;
    pub const PASSWORD_MAX: usize = 128;
    pub const DISPLAY_NAME_MAX: usize = 64;
    pub const COMMUNITY_NAME_MAX: usize = 100;
    pub const COMMUNITY_DESCRIPTION_MAX: usize = 2000;
    pub const SERVICE_ACCOUNT_NAME_MAX: usize = 64;
    pub const SCOPES_MAX: usize = 16;
    pub const SCOPE_MAX: usize = 64;
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

/// A service account's name: 1 to 64 ASCII letters, digits, `-`, `_`, `.`
/// (it ends up in logs and tools' arguments, so nothing to quote or to
/// confuse with another script's letters). Not trimmed: a name with spaces
/// is refused rather than quietly changed.
pub fn check_service_account_name(name: &str, field: &str, violations: &mut FieldViolations) {
    if name.is_empty() {
        violations.add(field, "is required");
    } else if name.len() > limits::SERVICE_ACCOUNT_NAME_MAX {
        violations.add(
            field,
            format!(
                "must be at most {} characters",
                limits::SERVICE_ACCOUNT_NAME_MAX
            ),
        );
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        violations.add(
            field,
            "may contain only ASCII letters, digits, '-', '_' and '.'",
        );
    }
}

/// A service account's scopes, checked, sorted and deduplicated: 1 to 16
/// distinct scopes, each 1 to 64 of lower-case ASCII letters, digits, `.`,
/// `_`, `-`, `:`. No space can be in one: a token carries them joined by
/// spaces (RFC 9068's `scope`).
pub fn normalize_scopes(
    raw: &[String],
    field: &str,
    violations: &mut FieldViolations,
) -> Vec<String> {
    for (i, scope) in raw.iter().enumerate() {
        if scope.is_empty() || scope.len() > limits::SCOPE_MAX {
            violations.add(
                format!("{field}[{i}]"),
                format!("must be 1 to {} characters", limits::SCOPE_MAX),
            );
        } else if !scope.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | ':')
        }) {
            violations.add(
                format!("{field}[{i}]"),
                "may contain only lower-case ASCII letters, digits, '.', '_', '-' and ':'",
            );
        }
    }
    let mut scopes = raw.to_vec();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        violations.add(field, "at least one scope is required");
    } else if scopes.len() > limits::SCOPES_MAX {
        violations.add(
            field,
            format!("at most {} distinct scopes", limits::SCOPES_MAX),
        );
    }
    scopes
}

pub use munity_platform::wire::parse_id;

/// A one-time code a signed-in user asks for to link a chat (the Telegram
/// bot): only its SHA-256 is stored, so a leaked database holds no working
/// code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCodeRecord {
    /// Hex SHA-256 of the normalized code.
    pub code_hash: String,
    pub user_id: Uuid,
    /// After this it is refused (and the stores forget it).
    pub expires_at: Millis,
}

/// A chat bound to an account: the bot acts for `user_id` in `chat_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLinkRecord {
    /// The Telegram chat id (never 0).
    pub chat_id: i64,
    pub user_id: Uuid,
    pub linked_at: Millis,
}

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
    fn service_account_names() {
        let ok = |name: &str| {
            let mut v = FieldViolations::new();
            check_service_account_name(name, "name", &mut v);
            v.is_empty()
        };
        assert!(ok("telegram-bot"));
        assert!(ok("Notify_Svc.v2"));
        assert!(ok(&"a".repeat(64)));
        for bad in ["", " bot", "bot ", "a b", "bot/1", "bøt", "bot\n"] {
            assert!(!ok(bad), "{bad:?} should be refused");
        }
        assert!(!ok(&"a".repeat(65)));
    }

    #[test]
    fn scopes_are_checked_sorted_and_deduplicated() {
        let scopes = |raw: &[&str]| {
            let mut v = FieldViolations::new();
            let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
            let scopes = normalize_scopes(&raw, "scopes", &mut v);
            let fields: Vec<String> = v.iter().map(|(f, _)| f.to_owned()).collect();
            (scopes, fields)
        };
        assert_eq!(
            scopes(&["notify.publish", "events:read", "notify.publish"]),
            (
                vec!["events:read".to_owned(), "notify.publish".to_owned()],
                vec![]
            )
        );
        assert_eq!(scopes(&[]).1, ["scopes"]);
        assert_eq!(
            scopes(&["ok", "Upper", "", "has space", &"a".repeat(65)]).1,
            ["scopes[1]", "scopes[2]", "scopes[3]", "scopes[4]"]
        );
        let seventeen: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
        let seventeen: Vec<&str> = seventeen.iter().map(String::as_str).collect();
        assert_eq!(scopes(&seventeen).1, ["scopes"]);
        // Sixteen distinct among seventeen given is fine.
        let mut sixteen = seventeen[..16].to_vec();
        sixteen.push("s0");
        assert!(scopes(&sixteen).1.is_empty());
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
