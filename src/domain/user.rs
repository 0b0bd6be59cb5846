//! Users: roles, the permission table, and the rules for emails, names and passwords.

use std::{fmt, time::Duration};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::redact;
use super::FieldError;

/// A user as the API shows it: never a password or a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Tokens issued in an earlier generation (before a password or role change) are void.
    #[serde(skip)]
    pub token_generation: i64,
}

/// After this many failed logins for one email from one client address within the
/// window, that address is refused for the email; other addresses are not.
pub const LOGIN_FAILURE_LIMIT: usize = 5;
/// After this many failed logins for one email from all addresses together within the
/// window, every address is refused: a ceiling on guessing spread over many addresses.
pub const LOGIN_FAILURE_LIMIT_PER_EMAIL: usize = 100;
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Changes of their own password or email one user may start within the window: each
/// costs up to two argon2id runs. An admin's reset of the user is not counted here.
pub const CREDENTIAL_CHANGE_LIMIT: usize = 5;
/// Resets of other users' passwords or emails one admin may start within the window,
/// counted against the admin (each costs one argon2id run): enough for a support desk's
/// hour, few enough that a stolen admin token cannot keep the hasher busy.
pub const ADMIN_RESET_LIMIT: usize = 20;
pub const CREDENTIAL_CHANGE_WINDOW: Duration = Duration::from_secs(60 * 60);

/// Events before this instant no longer count in a sliding `window`.
pub fn window_start(now: NaiveDateTime, window: Duration) -> NaiveDateTime {
    now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX)
}

/// Failures before this instant no longer count against an email.
pub fn login_window_start(now: NaiveDateTime) -> NaiveDateTime {
    window_start(now, LOGIN_FAILURE_WINDOW)
}

/// Seconds until a login may be tried again, given the times of the recent failures that
/// count against it; `None` while fewer than `limit` fall inside the window.
pub fn login_retry_after(failures: &[NaiveDateTime], now: NaiveDateTime, limit: usize) -> Option<u64> {
    retry_after(failures, now, limit, LOGIN_FAILURE_WINDOW)
}

/// Seconds until one more event is allowed in a sliding `window` that admits `limit`,
/// given the times of the events so far; `None` while fewer than `limit` fall inside it.
pub fn retry_after(events: &[NaiveDateTime], now: NaiveDateTime, limit: usize, window: Duration) -> Option<u64> {
    let start = window_start(now, window);
    let mut recent: Vec<NaiveDateTime> = events.iter().copied().filter(|at| *at > start).collect();
    if recent.len() < limit.max(1) {
        return None;
    }
    // The window reopens when enough of the oldest events have aged out of it.
    recent.sort_unstable();
    let length = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let reopening = recent[recent.len() - limit.max(1)] + length;
    Some(u64::try_from((reopening - now).num_seconds()).unwrap_or(0).max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            _ => None,
        }
    }

    /// The RBAC table: what each role may do beyond acting on its own records.
    fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Self::Admin => &[
                ListUsers,
                ReadAnyUser,
                UpdateAnyUser,
                ChangeRoles,
                DeleteUsers,
                ManageCatalog,
                Deposit,
                SeeAllOrders,
                CancelAnyOrder,
                SeeOpsTopic,
            ],
            Self::User => &[],
        }
    }

    pub fn can(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

/// Everything a role can be allowed to do; handlers ask `Role::can`, never compare roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ListUsers,
    ReadAnyUser,
    UpdateAnyUser,
    ChangeRoles,
    DeleteUsers,
    ManageCatalog,
    Deposit,
    SeeAllOrders,
    CancelAnyOrder,
    SeeOpsTopic,
}

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;
pub const NAME_MAX_CHARS: usize = 100;
const EMAIL_MAX_CHARS: usize = 254;

/// Every email this pattern matches is valid (`normalize_email`), and nearly every valid one
/// matches: a local part of up to 64 characters, or of up to three dot-separated atoms of
/// up to 20, then two to five domain labels. For the OpenAPI document, with `maxLength`
/// 254; JSON Schema cannot bound the local part's length and its dots at once without
/// look-ahead, which generators of test data do not follow.
pub const EMAIL_PATTERN: &str = concat!(
    r"^(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}",
    r"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}){1,2})",
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){1,4}$",
);

/// The one form an email is stored, compared and throttled under: trimmed, ASCII letters
/// lower-cased, every other character left as it is. Registration and email changes keep
/// it (`normalize_email`) and sign-ins look it up, so a sign-in finds exactly the account a
/// registration would call the same email. Full Unicode lower-casing would not do: it turns
/// the Kelvin sign into `k`, so a sign-in would match an address registration refuses.
pub fn email_key(raw: &str) -> String {
    raw.trim().to_ascii_lowercase()
}

/// Trims an email, checks its syntax (one `@`, a local part of ASCII letters, digits and
/// `!#$%&'*+/=?^_`{|}~-` in dot-separated atoms, and a dotted domain of letters, digits and
/// hyphens) and lower-cases it. The syntax is checked before lower-casing, so a character
/// that merely lower-cases to ASCII (the Kelvin sign to `k`) is refused, not converted.
pub fn normalize_email(raw: &str) -> Result<String, FieldError> {
    let email = raw.trim();
    let invalid = || FieldError::new("email", "must be a valid email address");
    if email.is_empty() || email.chars().count() > EMAIL_MAX_CHARS {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if local_ok && domain_ok {
        Ok(email_key(email))
    } else {
        Err(invalid())
    }
}

pub fn validate_password(password: &str) -> Result<(), FieldError> {
    let chars = password.chars().count();
    if (PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars) {
        Ok(())
    } else {
        Err(FieldError::new("password", format!("must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters")))
    }
}

/// A user's name: trimmed, 1 to 100 characters, no control, format or other invisible characters.
pub fn normalize_name(raw: &str) -> Result<String, FieldError> {
    super::text::normalize_name("name", raw, NAME_MAX_CHARS)
}

/// The checked fields of a new account.
pub struct NewUser {
    pub email: String,
    pub name: String,
}

pub fn validate_new_user(email: &str, password: &str, name: &str) -> Result<NewUser, Vec<FieldError>> {
    let email = normalize_email(email);
    let name = normalize_name(name);
    let errors: Vec<_> = [email.as_ref().err(), validate_password(password).err().as_ref(), name.as_ref().err()]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    match (email, name) {
        (Ok(email), Ok(name)) if errors.is_empty() => Ok(NewUser { email, name }),
        _ => Err(errors),
    }
}

/// A change to a user as asked (each field optional), checked in one place.
#[derive(Clone, Default)]
pub struct UserPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    pub role: Option<String>,
}

/// A patch whose every field is valid: names trimmed, emails normalised, the role parsed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ValidPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    pub role: Option<Role>,
}

impl fmt::Debug for UserPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { name, email, password, role } = self;
        f.debug_struct("UserPatch")
            .field("name", name)
            .field("email", email)
            .field("password", &redact::optional(password))
            .field("role", role)
            .finish()
    }
}

impl fmt::Debug for ValidPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { name, email, password, role } = self;
        f.debug_struct("ValidPatch")
            .field("name", name)
            .field("email", email)
            .field("password", &redact::optional(password))
            .field("role", role)
            .finish()
    }
}

impl UserPatch {
    /// Every field error at once, so a client fixes them in one round.
    pub fn validate(self) -> Result<ValidPatch, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut valid = ValidPatch::default();
        if let Some(role) = self.role {
            match Role::parse(&role) {
                Some(role) => valid.role = Some(role),
                None => errors.push(FieldError::new("role", "must be admin or user")),
            }
        }
        if let Some(name) = self.name {
            normalize_name(&name).map(|name| valid.name = Some(name)).unwrap_or_else(|e| errors.push(e));
        }
        if let Some(email) = self.email {
            normalize_email(&email).map(|email| valid.email = Some(email)).unwrap_or_else(|e| errors.push(e));
        }
        if let Some(password) = self.password {
            match validate_password(&password) {
                Ok(()) => valid.password = Some(password),
                Err(error) => errors.push(error),
            }
        }
        if errors.is_empty() {
            Ok(valid)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn emails_are_trimmed_lower_cased_and_checked() {
        assert_eq!(normalize_email("  Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@exa mple.com",
            "a@@b.com",
            "a@-b.com",
            "\u{212A}@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sign_ins_fold_emails_as_registration_does() {
        for typed in ["alice@example.com", " ALICE@Example.COM", "aLiCe@EXAMPLE.com\t"] {
            assert_eq!(email_key(typed), normalize_email("Alice@Example.com").unwrap(), "{typed:?}");
        }
        // Registration refuses these; a sign-in must not find an account with them either.
        for lookalike in ["\u{212A}ate@example.com", "ALİCE@example.com", "\u{212B}@example.com"] {
            assert!(normalize_email(lookalike).is_err());
            assert!(!email_key(lookalike).is_ascii(), "{lookalike:?}");
        }
    }

    #[test]
    fn patches_print_no_password() {
        let patch =
            UserPatch { name: Some("Ada".into()), password: Some("hunter2-hunter2".into()), ..UserPatch::default() };
        let valid = patch.clone().validate().unwrap();
        for printed in [format!("{patch:?}"), format!("{valid:?}")] {
            assert!(
                !printed.contains("hunter2") && printed.contains("[redacted]") && printed.contains("Ada"),
                "{printed}"
            );
        }
    }

    #[test]
    fn only_admins_hold_permissions() {
        assert!(Role::Admin.can(Permission::DeleteUsers));
        assert!(!Role::User.can(Permission::DeleteUsers));
        assert!(!Role::User.can(Permission::ChangeRoles));
    }

    #[test]
    fn five_recent_failures_close_the_window_until_the_oldest_ages_out() {
        let now = chrono::Utc::now().naive_utc();
        let minutes_ago = |m: i64| now - chrono::Duration::minutes(m);
        assert_eq!(login_retry_after(&[minutes_ago(1); 4], now, 5), None);
        let failures = [minutes_ago(10), minutes_ago(5), minutes_ago(4), minutes_ago(3), minutes_ago(2)];
        assert_eq!(login_retry_after(&failures, now, 5), Some(5 * 60));
        let with_stale = [minutes_ago(20), minutes_ago(5), minutes_ago(4), minutes_ago(3), minutes_ago(2)];
        assert_eq!(login_retry_after(&with_stale, now, 5), None);
    }

    proptest! {
        #[test]
        fn password_length_rule_counts_characters(password in "\\PC{0,140}") {
            let chars = password.chars().count();
            prop_assert_eq!(validate_password(&password).is_ok(), (8..=128).contains(&chars));
        }

        #[test]
        fn names_are_trimmed_and_bounded(name in "[ a-zA-Zé]{0,120}") {
            match normalize_name(&name) {
                Ok(kept) => {
                    prop_assert_eq!(kept.as_str(), name.trim());
                    prop_assert!((1..=100).contains(&kept.chars().count()));
                }
                Err(_) => prop_assert!(name.trim().is_empty() || name.trim().chars().count() > 100),
            }
        }

        #[test]
        fn normalized_emails_are_stable(local in "[a-z0-9._%+-]{1,20}", domain in "[a-z0-9]{1,10}\\.[a-z]{2,5}") {
            let raw = format!("{local}@{domain}");
            if let Ok(email) = normalize_email(&raw.to_uppercase()) {
                prop_assert_eq!(normalize_email(&email), Ok(email.clone()));
                prop_assert_eq!(email, raw);
            }
        }
    }

    #[test]
    fn a_patch_is_checked_field_by_field_and_reports_every_error() {
        let valid = UserPatch { name: Some("  Ada ".into()), role: Some("admin".into()), ..UserPatch::default() };
        assert_eq!(
            valid.validate(),
            Ok(ValidPatch { name: Some("Ada".into()), role: Some(Role::Admin), ..ValidPatch::default() })
        );
        let invalid = UserPatch {
            name: Some(String::new()),
            email: Some("nope".into()),
            password: Some("short".into()),
            role: Some("root".into()),
        };
        let fields: Vec<String> = invalid.validate().unwrap_err().into_iter().map(|error| error.field).collect();
        assert_eq!(fields, ["role", "name", "email", "password"]);
    }
}
