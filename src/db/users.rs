//! Users, their accounts and failed-login records: one use case per operation.

use std::fmt;

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    result::{DatabaseErrorKind, Error as DieselError},
};
use uuid::Uuid;

use super::{
    outbox::{topic, NewEvent, Outbox},
    schema::*,
    DbConnection, UseCase,
};
use crate::{
    db::DbError,
    domain::redact,
    domain::refusal::{Missing, Refusal},
    domain::{
        clock,
        paging::{Page, PageRequest},
        user::{
            login_retry_after, login_window_start, retry_after, window_start, Role, User, ADMIN_RESET_LIMIT,
            CREDENTIAL_CHANGE_LIMIT, CREDENTIAL_CHANGE_WINDOW, LOGIN_FAILURE_LIMIT, LOGIN_FAILURE_LIMIT_PER_EMAIL,
        },
    },
};

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
struct UserRow {
    id: String,
    email: String,
    name: String,
    role: String,
    password_hash: String,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    deleted_at: Option<NaiveDateTime>,
    token_generation: i64,
}

impl UserRow {
    fn into_user(self) -> Result<User, DbError> {
        Ok(User {
            id: parse_id(&self.id)?,
            role: Role::parse(&self.role).ok_or_else(|| DbError::Internal(format!("unknown role {:?}", self.role)))?,
            email: self.email,
            name: self.name,
            created_at: clock::to_utc(self.created_at),
            updated_at: clock::to_utc(self.updated_at),
            token_generation: self.token_generation,
        })
    }
}

pub fn parse_id(raw: &str) -> Result<Uuid, DbError> {
    Uuid::parse_str(raw).map_err(|_| DbError::Internal(format!("malformed id {raw:?} in the database")))
}

fn email_taken(error: DieselError) -> DbError {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => DbError::Refused(Refusal::EmailTaken),
        other => other.into(),
    }
}

/// Tells other replicas to drop their cached copy; carries only the id.
fn user_event(id: Uuid, kind: &'static str) -> NewEvent {
    NewEvent::private(topic::USERS, kind, id, serde_json::json!({ "id": id }))
}

fn live_user(conn: &mut DbConnection, id: Uuid) -> Result<Option<UserRow>, DbError> {
    Ok(users::table
        .filter(users::id.eq(id.to_string()))
        .filter(users::deleted_at.is_null())
        .select(UserRow::as_select())
        .first(conn)
        .optional()?)
}

/// A new user with an account of balance 0, in one transaction. Its `users` event makes
/// the new user a change with an event id like any other, so a user list's
/// `Event-Position` holds for registrations too (and drops a negative cache entry).
pub struct CreateUser {
    pub email: String,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
}

impl UseCase for CreateUser {
    type Output = User;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<User, DbError> {
        let now = clock::now();
        let row = UserRow {
            id: Uuid::now_v7().to_string(),
            email: self.email,
            name: self.name,
            role: self.role.as_str().to_owned(),
            password_hash: self.password_hash,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            token_generation: 0,
        };
        conn.write_transaction(|conn| {
            diesel::insert_into(users::table).values(&row).execute(conn).map_err(email_taken)?;
            diesel::insert_into(accounts::table)
                .values((
                    accounts::user_id.eq(&row.id),
                    accounts::balance_cents.eq(0_i64),
                    accounts::updated_at.eq(now),
                ))
                .execute(conn)?;
            let id = parse_id(&row.id)?;
            outbox.append(conn, vec![user_event(id, "user.created")])
        })?;
        row.into_user()
    }
}

/// What a login needs to check a password.
pub struct Credentials {
    pub user_id: Uuid,
    pub role: Role,
    pub password_hash: String,
    pub token_generation: i64,
}

/// A sign-in attempt that passed the throttle: the credentials to check (if the email has
/// an account) and the failure row provisionally written for it.
pub struct LoginAttempt {
    pub credentials: Option<Credentials>,
    pub attempt_id: i64,
}

/// Refuses while the email is throttled for this client address (or for every address,
/// past the per-email ceiling); otherwise records the attempt as a failure until it is
/// proven otherwise, and finds the email's credentials. Counting and recording happen in
/// one transaction (serialised per email), so parallel guesses cannot slip past the limit.
pub struct BeginLogin {
    pub email: String,
    /// The client address the attempt came from (as the rate limiter sees it).
    pub client: String,
}

impl UseCase for BeginLogin {
    type Output = LoginAttempt;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<LoginAttempt, DbError> {
        let BeginLogin { email, client } = self;
        conn.write_transaction(|conn| {
            let attempt_id = record_login_attempt(conn, &email, &client)?;
            let found: Option<(String, String, String, i64)> = users::table
                .filter(users::email.eq(&email))
                .filter(users::deleted_at.is_null())
                .select((users::id, users::role, users::password_hash, users::token_generation))
                .first(conn)
                .optional()?;
            let credentials = found
                .map(|(id, role, password_hash, token_generation)| {
                    Ok::<_, DbError>(Credentials {
                        user_id: parse_id(&id)?,
                        role: Role::parse(&role).ok_or_else(|| DbError::Internal(format!("unknown role {role:?}")))?,
                        password_hash,
                        token_generation,
                    })
                })
                .transpose()?;
            Ok(LoginAttempt { credentials, attempt_id })
        })
    }
}

/// Inside a write transaction: refuses (`SignInsThrottled`) while `email` is throttled for `client` (or
/// for every address, past the per-email ceiling); otherwise records the attempt as a
/// failure until it is proven otherwise and returns its id. Attempts on one email are
/// serialised, so parallel guesses cannot slip past the limit.
fn record_login_attempt(conn: &mut DbConnection, email: &str, client: &str) -> Result<i64, DbError> {
    if matches!(conn, DbConnection::Postgres(_)) {
        // SQLite's BEGIN IMMEDIATE already serialises writers.
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind::<diesel::sql_types::Text, _>(email)
            .execute(conn)?;
    }
    let now = clock::now();
    let failures: Vec<(NaiveDateTime, String)> = login_failures::table
        .filter(login_failures::email.eq(email))
        .filter(login_failures::failed_at.gt(login_window_start(now)))
        .select((login_failures::failed_at, login_failures::client))
        .load(conn)?;
    let everywhere: Vec<NaiveDateTime> = failures.iter().map(|(at, _)| *at).collect();
    let from_here: Vec<NaiveDateTime> =
        failures.iter().filter(|(_, from)| *from == client).map(|(at, _)| *at).collect();
    let throttled = login_retry_after(&from_here, now, LOGIN_FAILURE_LIMIT)
        .into_iter()
        .chain(login_retry_after(&everywhere, now, LOGIN_FAILURE_LIMIT_PER_EMAIL))
        .max();
    if let Some(retry_after_secs) = throttled {
        return Err(Refusal::SignInsThrottled { retry_after_secs }.into());
    }
    diesel::delete(login_failures::table.filter(login_failures::email.eq(email)))
        .filter(login_failures::failed_at.le(login_window_start(now)))
        .execute(conn)?;
    Ok(diesel::insert_into(login_failures::table)
        .values((login_failures::email.eq(email), login_failures::failed_at.eq(now), login_failures::client.eq(client)))
        .returning(login_failures::id)
        .get_result(conn)?)
}

/// A password or email change that passed every check that costs no hash: the target's
/// email is free (409 otherwise), whoever pays for the change is within their limit (429
/// otherwise) and, when the current password must be checked, the sign-in throttle lets
/// the attempt through (429 otherwise). The change is counted from here on (`reservation`);
/// `AbandonCredentialChange` takes it back if it does not happen.
pub struct BeginCredentialChange {
    pub user_id: Uuid,
    pub new_email: Option<String>,
    /// The user changes their own credentials from this client address: the current
    /// password is checked as a sign-in for the user's email would be, and counts as one.
    pub reauthenticate_from: Option<String>,
    pub charged_to: Charge,
    /// Checked first (401 if the caller's token generation moved), so that a request whose
    /// token was voided while it was under way costs no hash and counts as no failed
    /// sign-in; `UpdateUser` decides again when it writes.
    pub authorized: Authorization,
}

/// Whose budget a credential change spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The user's own change: `CREDENTIAL_CHANGE_LIMIT` per account.
    Own,
    /// An admin's reset of another user: `ADMIN_RESET_LIMIT` per admin, and never the
    /// target's, so resets cannot lock a user out of changing their password, nor a user
    /// who spent their own budget block the admin who helps them.
    ResetBy(Uuid),
}

impl Charge {
    /// The account charged, the kind of row counted, and that kind's limit.
    fn budget(self, target: &str) -> (String, &'static str, usize) {
        match self {
            Self::Own => (target.to_owned(), "own", CREDENTIAL_CHANGE_LIMIT),
            Self::ResetBy(admin) => (admin.to_string(), "reset", ADMIN_RESET_LIMIT),
        }
    }
}

pub struct CredentialChange {
    pub reservation: i64,
    pub reauthentication: Option<Reauthentication>,
}

/// What checking the current password needs: the hash, and the sign-in attempt to settle.
pub struct Reauthentication {
    pub email: String,
    pub client: String,
    pub attempt_id: i64,
    pub password_hash: String,
}

/// Refuses (`EmailTaken`) an email another live user has, unless that user is `except`. A check
/// before hashing a password, so that a taken email costs no argon2 run; the unique index
/// still decides when two requests race for one email.
fn refuse_taken_email(conn: &mut DbConnection, email: &str, except: Option<&str>) -> Result<(), DbError> {
    let mut others = users::table.filter(users::email.eq(email)).filter(users::deleted_at.is_null()).into_boxed();
    if let Some(id) = except {
        others = others.filter(users::id.ne(id));
    }
    let taken: i64 = others.count().get_result(conn)?;
    if taken > 0 {
        return Err(DbError::Refused(Refusal::EmailTaken));
    }
    Ok(())
}

/// Refuses (`EmailTaken`) a registration whose email is taken, before its password is hashed.
pub struct EmailIsFree {
    pub email: String,
}

impl UseCase for EmailIsFree {
    type Output = ();
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<(), DbError> {
        refuse_taken_email(conn, &self.email, None)
    }
}

impl UseCase for BeginCredentialChange {
    type Output = CredentialChange;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<CredentialChange, DbError> {
        let BeginCredentialChange { user_id, new_email, reauthenticate_from, charged_to, authorized } = self;
        let id = user_id.to_string();
        let (account, kind, limit) = charged_to.budget(&id);
        conn.write_transaction(|conn| {
            let caller_generation: Option<i64> = users::table
                .filter(users::id.eq(authorized.user_id.to_string()))
                .filter(users::deleted_at.is_null())
                .select(users::token_generation)
                .first(conn)
                .optional()?;
            if caller_generation != Some(authorized.token_generation) {
                return Err(Refusal::AuthorizationVoided.into());
            }
            let user = live_user(conn, user_id)?.ok_or(Refusal::NotFound(Missing::User))?;
            if let Some(email) = &new_email {
                refuse_taken_email(conn, email, Some(&id))?;
            }
            if matches!(conn, DbConnection::Postgres(_)) {
                // Counting and reserving are serialised per account charged (SQLite: BEGIN
                // IMMEDIATE).
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('credential-change:' || $1))")
                    .bind::<diesel::sql_types::Text, _>(&account)
                    .execute(conn)?;
            }
            let now = clock::now();
            let start = window_start(now, CREDENTIAL_CHANGE_WINDOW);
            diesel::delete(credential_changes::table.filter(credential_changes::user_id.eq(&account)))
                .filter(credential_changes::changed_at.le(start))
                .execute(conn)?;
            let recent: Vec<NaiveDateTime> = credential_changes::table
                .filter(credential_changes::user_id.eq(&account))
                .filter(credential_changes::kind.eq(kind))
                .select(credential_changes::changed_at)
                .load(conn)?;
            if let Some(retry_after_secs) = retry_after(&recent, now, limit, CREDENTIAL_CHANGE_WINDOW) {
                let refusal = match charged_to {
                    Charge::Own => Refusal::CredentialChangesThrottled { retry_after_secs },
                    Charge::ResetBy(_) => Refusal::CredentialResetsThrottled { retry_after_secs },
                };
                return Err(refusal.into());
            }
            let reauthentication = match reauthenticate_from {
                Some(client) => Some(Reauthentication {
                    attempt_id: record_login_attempt(conn, &user.email, &client)?,
                    email: user.email,
                    client,
                    password_hash: user.password_hash,
                }),
                None => None,
            };
            let reservation = diesel::insert_into(credential_changes::table)
                .values((
                    credential_changes::user_id.eq(&account),
                    credential_changes::kind.eq(kind),
                    credential_changes::changed_at.eq(now),
                ))
                .returning(credential_changes::id)
                .get_result(conn)?;
            Ok(CredentialChange { reservation, reauthentication })
        })
    }
}

/// Takes back the count of a credential change that did not happen.
pub struct AbandonCredentialChange {
    pub reservation: i64,
}

impl UseCase for AbandonCredentialChange {
    type Output = ();
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<(), DbError> {
        diesel::delete(credential_changes::table.filter(credential_changes::id.eq(self.reservation))).execute(conn)?;
        Ok(())
    }
}

pub enum LoginOutcome {
    /// The password was right: the email's failures from this address are forgotten
    /// (others' stay: a success here must not reset a stranger's count elsewhere).
    Succeeded,
    /// The password could not be checked (the server was busy): the attempt does not count.
    Unchecked,
}

/// Settles an attempt begun by `BeginLogin`; a wrong password needs nothing, since the
/// attempt was recorded as a failure already.
pub struct FinishLogin {
    pub email: String,
    pub client: String,
    pub attempt_id: i64,
    pub outcome: LoginOutcome,
}

impl UseCase for FinishLogin {
    type Output = ();
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<(), DbError> {
        let by_email = login_failures::table.filter(login_failures::email.eq(&self.email));
        match self.outcome {
            LoginOutcome::Succeeded => {
                diesel::delete(by_email.filter(login_failures::client.eq(&self.client))).execute(conn)?
            }
            LoginOutcome::Unchecked => {
                diesel::delete(by_email.filter(login_failures::id.eq(self.attempt_id))).execute(conn)?
            }
        };
        Ok(())
    }
}

/// Refuses (`LastAdmin`) an operation that would take away the last live admin. Callers hold a
/// write transaction; on PostgreSQL an advisory lock serialises such operations, so two
/// admins demoting each other at once cannot both pass the count (SQLite's `BEGIN
/// IMMEDIATE` already serialises writers).
fn keep_an_admin(conn: &mut DbConnection) -> Result<(), DbError> {
    const ADMIN_SET_LOCK: i64 = 0x5354_4f52_4541_444d; // "STOREADM"
    if matches!(conn, DbConnection::Postgres(_)) {
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({ADMIN_SET_LOCK})")).execute(conn)?;
    }
    let admins: i64 = users::table
        .filter(users::role.eq(Role::Admin.as_str()))
        .filter(users::deleted_at.is_null())
        .count()
        .get_result(conn)?;
    if admins <= 1 {
        return Err(Refusal::LastAdmin.into());
    }
    Ok(())
}

pub struct FindActiveUser {
    pub id: Uuid,
}

impl UseCase for FindActiveUser {
    type Output = Option<User>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Option<User>, DbError> {
        live_user(conn, self.id)?.map(UserRow::into_user).transpose()
    }
}

pub struct ListUsers {
    pub page: PageRequest,
}

impl UseCase for ListUsers {
    type Output = Page<User>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Page<User>, DbError> {
        let live = || users::table.filter(users::deleted_at.is_null());
        let total: i64 = live().count().get_result(conn)?;
        let rows: Vec<UserRow> = live()
            .order((users::created_at.asc(), users::id.asc()))
            .limit(self.page.limit())
            .offset(self.page.offset())
            .select(UserRow::as_select())
            .load(conn)?;
        let users = rows.into_iter().map(UserRow::into_user).collect::<Result<_, _>>()?;
        Ok(Page::new(users, self.page, total))
    }
}

#[derive(Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: Option<String>,
    pub password_hash: Option<String>,
}

impl fmt::Debug for UserChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { email, name, role, password_hash } = self;
        f.debug_struct("UserChanges")
            .field("email", email)
            .field("name", name)
            .field("role", role)
            .field("password_hash", &redact::optional(password_hash))
            .finish()
    }
}

/// Who asked for a change, and the token generation their request was authorized in.
#[derive(Debug, Clone, Copy)]
pub struct Authorization {
    pub user_id: Uuid,
    pub token_generation: i64,
}

/// A change to a user, made only while the caller's token generation is still the one the
/// request was authorized in (401 otherwise, nothing changed). A request is authorized when
/// its headers arrive; its body, the current password's check and the new password's hash
/// take a while longer, and a password, email or role change elsewhere in between (another
/// device's, or an admin's reset) voids the token the request came with. Deciding that here,
/// in the write's own transaction, means the later write loses: a thief's held request
/// cannot take over an account that was reset meanwhile, nor be handed a fresh token.
pub struct UpdateUser {
    pub id: Uuid,
    pub changes: UserChanges,
    pub authorized: Authorization,
}

/// Inside a write transaction: refuses (401) unless `caller` is live and still in the token
/// generation the request was authorized in, and holds the rows of the caller and of
/// `target` until the transaction ends, so that no change to either generation can commit
/// in between (no-op updates take the row locks on PostgreSQL, in id order so that two
/// admins changing each other cannot deadlock; SQLite's `BEGIN IMMEDIATE` already
/// serialises writers).
fn hold_authorization(conn: &mut DbConnection, caller: Authorization, target: Uuid) -> Result<(), DbError> {
    let mut rows = vec![caller.user_id, target];
    rows.sort_unstable();
    rows.dedup();
    for id in rows {
        let row = users::table.filter(users::id.eq(id.to_string()));
        if id == caller.user_id {
            let held = diesel::update(
                row.filter(users::deleted_at.is_null()).filter(users::token_generation.eq(caller.token_generation)),
            )
            .set(users::token_generation.eq(caller.token_generation))
            .execute(conn)?;
            if held == 0 {
                return Err(Refusal::AuthorizationVoided.into());
            }
        } else {
            diesel::update(row).set(users::token_generation.eq(users::token_generation)).execute(conn)?;
        }
    }
    Ok(())
}

impl UseCase for UpdateUser {
    type Output = User;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<User, DbError> {
        conn.write_transaction(|conn| {
            hold_authorization(conn, self.authorized, self.id)?;
            let current = live_user(conn, self.id)?.ok_or(Refusal::NotFound(Missing::User))?;
            let role_changes = self.changes.role.as_ref().is_some_and(|role| *role != current.role);
            if role_changes && current.role == Role::Admin.as_str() {
                keep_an_admin(conn)?;
            }
            // A new password, email or role voids every token issued before it.
            let email_changes = self.changes.email.as_ref().is_some_and(|email| *email != current.email);
            let voids_tokens = role_changes || email_changes || self.changes.password_hash.is_some();
            let generation = current.token_generation + i64::from(voids_tokens);
            diesel::update(users::table.filter(users::id.eq(self.id.to_string())))
                .set((&self.changes, users::updated_at.eq(clock::now()), users::token_generation.eq(generation)))
                .execute(conn)
                .map_err(email_taken)?;
            outbox.append(conn, vec![user_event(self.id, "user.updated")])?;
            live_user(conn, self.id)?.ok_or(Refusal::NotFound(Missing::User))?.into_user()
        })
    }
}

/// Soft delete: the row stays for past orders; the email is free again, and every token
/// of the user stops working because lookups only see live users.
pub struct DeleteUser {
    pub id: Uuid,
}

impl UseCase for DeleteUser {
    type Output = ();
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<(), DbError> {
        conn.write_transaction(|conn| {
            if live_user(conn, self.id)?.is_some_and(|user| user.role == Role::Admin.as_str()) {
                keep_an_admin(conn)?;
            }
            let deleted = diesel::update(
                users::table.filter(users::id.eq(self.id.to_string())).filter(users::deleted_at.is_null()),
            )
            .set(users::deleted_at.eq(Some(clock::now())))
            .execute(conn)?;
            if deleted == 0 {
                return Err(DbError::Refused(Refusal::NotFound(Missing::User)));
            }
            outbox.append(conn, vec![user_event(self.id, "user.deleted")])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_print_no_password_hash() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g";
        let changes =
            UserChanges { name: Some("Ada".into()), password_hash: Some(hash.into()), ..UserChanges::default() };
        let printed = format!("{changes:?}");
        assert!(!printed.contains("argon2") && printed.contains("[redacted]") && printed.contains("Ada"), "{printed}");
    }

    fn database() -> DbConnection {
        let mut conn = DbConnection::Sqlite(diesel::SqliteConnection::establish(":memory:").unwrap());
        crate::db::migrations::run_pending(&mut conn).unwrap();
        conn
    }

    fn create(conn: &mut DbConnection, email: &str, role: Role) -> User {
        let user = CreateUser { email: email.into(), name: "Test".into(), role, password_hash: "h0".into() };
        user.run(conn, &mut Outbox::unattributed()).unwrap()
    }

    fn set_password(conn: &mut DbConnection, id: Uuid, hash: &str, by: &User) -> Result<User, DbError> {
        let changes = UserChanges { password_hash: Some(hash.into()), ..UserChanges::default() };
        let authorized = Authorization { user_id: by.id, token_generation: by.token_generation };
        UpdateUser { id, changes, authorized }.run(conn, &mut Outbox::unattributed())
    }

    fn stored_hash(conn: &mut DbConnection, id: Uuid) -> String {
        users::table.filter(users::id.eq(id.to_string())).select(users::password_hash).first(conn).unwrap()
    }

    /// The writes of requests that were authorized, verified and hashed while another change
    /// went in: each is checked against the generation it was authorized in, in its own
    /// transaction, whatever happened before it.
    #[test]
    fn a_write_authorized_in_a_generation_that_moved_changes_nothing() {
        let mut conn = database();
        let alice = create(&mut conn, "alice@example.com", Role::User);
        let root = create(&mut conn, "root@example.com", Role::Admin);

        // Two of Alice's own changes, both authorized in generation 0: the first to write wins.
        let first = set_password(&mut conn, alice.id, "h1", &alice).unwrap();
        assert_eq!(first.token_generation, 1);
        let second = set_password(&mut conn, alice.id, "h2", &alice);
        assert!(matches!(second, Err(DbError::Refused(Refusal::AuthorizationVoided))));
        assert_eq!(stored_hash(&mut conn, alice.id), "h1");

        // An admin's reset, then a change of Alice's verified against her old password before it.
        let reset = set_password(&mut conn, alice.id, "reset", &root).unwrap();
        assert_eq!(reset.token_generation, 2);
        let late = set_password(&mut conn, alice.id, "mine", &first);
        assert!(matches!(late, Err(DbError::Refused(Refusal::AuthorizationVoided))), "the reset stands");
        assert_eq!(stored_hash(&mut conn, alice.id), "reset");

        // An admin whose own token was voided meanwhile (here, by a password change) resets nobody.
        let root_now = set_password(&mut conn, root.id, "root's new", &root).unwrap();
        assert!(matches!(
            set_password(&mut conn, alice.id, "stale admin", &root),
            Err(DbError::Refused(Refusal::AuthorizationVoided))
        ));
        assert_eq!(stored_hash(&mut conn, alice.id), "reset");
        assert_eq!(set_password(&mut conn, alice.id, "by root", &root_now).unwrap().token_generation, 3);

        // The cheap checks refuse a voided authorization before anything is counted.
        let begin = BeginCredentialChange {
            user_id: alice.id,
            new_email: None,
            reauthenticate_from: Some("127.0.0.1".into()),
            charged_to: Charge::Own,
            authorized: Authorization { user_id: alice.id, token_generation: 1 },
        };
        assert!(matches!(
            begin.run(&mut conn, &mut Outbox::unattributed()),
            Err(DbError::Refused(Refusal::AuthorizationVoided))
        ));
        let counted: i64 = credential_changes::table.count().get_result(&mut conn).unwrap();
        let failures: i64 = login_failures::table.count().get_result(&mut conn).unwrap();
        assert_eq!((counted, failures), (0, 0));
    }
}
