//! Money: balances, deposits and transfers. Every balance change is a conditional UPDATE
//! (`… WHERE balance >= amount`), atomic on both backends without row locks, and accounts
//! are always touched in user-id order so concurrent transactions cannot deadlock.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use uuid::Uuid;

use super::{
    idempotency::{run_once, IdempotencyKey, Outcome, Written},
    kept_prepared::KeepPrepared,
    outbox::{topic, NewEvent, Outbox},
    schema::{accounts, deposits, transfers, users},
    users::parse_id,
    DbConnection, UseCase,
};
use crate::{
    db::DbError,
    domain::refusal::{Missing, Refusal},
    domain::{
        clock,
        paging::{Page, PageRequest},
        shop::{Account, Transfer},
    },
};

fn user_is_live(conn: &mut DbConnection, id: Uuid) -> Result<bool, DbError> {
    let found: i64 = users::table
        .filter(users::id.eq(id.to_string()))
        .filter(users::deleted_at.is_null())
        .count()
        .get_result(conn)?;
    Ok(found > 0)
}

pub(super) fn load_account(conn: &mut DbConnection, user_id: Uuid) -> Result<Account, DbError> {
    let (balance_cents, updated_at): (i64, NaiveDateTime) = accounts::table
        .find(user_id.to_string())
        .select((accounts::balance_cents, accounts::updated_at))
        .first(conn)
        .optional()?
        .ok_or(Refusal::NotFound(Missing::Account))?;
    Ok(account(user_id, balance_cents, updated_at))
}

pub(super) fn account_event(account: &Account) -> NewEvent {
    NewEvent::private(topic::ACCOUNT, "account.updated", account.user_id, account)
}

/// Adds to a balance unless it would overflow: the account afterwards, `None` when it would.
pub(super) fn credit(
    conn: &mut DbConnection,
    user_id: Uuid,
    amount: i64,
    now: NaiveDateTime,
) -> Result<Option<Account>, DbError> {
    let credited = diesel::update(accounts::table.find(user_id.to_string()))
        .filter(accounts::balance_cents.le(i64::MAX - amount))
        .set((accounts::balance_cents.eq(accounts::balance_cents + amount), accounts::updated_at.eq(now)))
        .returning((accounts::balance_cents, accounts::updated_at))
        .keep_prepared()
        .get_result(conn)
        .optional()?;
    Ok(credited.map(|(balance_cents, updated_at)| account(user_id, balance_cents, updated_at)))
}

/// Takes from a balance only if it covers the amount: the account afterwards, `None` when
/// it does not. An order's debit on PostgreSQL is inside `orders::OPEN_ORDER`, with this guard.
pub(super) fn debit(
    conn: &mut DbConnection,
    user_id: Uuid,
    amount: i64,
    now: NaiveDateTime,
) -> Result<Option<Account>, DbError> {
    let debited = diesel::update(accounts::table.find(user_id.to_string()))
        .filter(accounts::balance_cents.ge(amount))
        .set((accounts::balance_cents.eq(accounts::balance_cents - amount), accounts::updated_at.eq(now)))
        .returning((accounts::balance_cents, accounts::updated_at))
        .keep_prepared()
        .get_result(conn)
        .optional()?;
    Ok(debited.map(|(balance_cents, updated_at)| account(user_id, balance_cents, updated_at)))
}

pub(super) fn account(user_id: Uuid, balance_cents: i64, updated_at: NaiveDateTime) -> Account {
    Account { user_id, balance_cents, updated_at: clock::to_utc(updated_at) }
}

pub struct GetAccount {
    pub user_id: Uuid,
}

impl UseCase for GetAccount {
    type Output = Account;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Account, DbError> {
        load_account(conn, self.user_id)
    }
}

pub struct Deposit {
    pub user_id: Uuid,
    pub amount_cents: i64,
    pub deposited_by: Uuid,
    pub idempotency: Option<IdempotencyKey>,
}

impl UseCase for Deposit {
    type Output = Outcome<Account>;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Outcome<Account>, DbError> {
        run_once(conn, outbox, self.idempotency.as_ref(), |conn| {
            if !user_is_live(conn, self.user_id)? {
                return Err(DbError::Refused(Refusal::NotFound(Missing::User)));
            }
            let now = clock::now();
            let account =
                credit(conn, self.user_id, self.amount_cents, now)?.ok_or(Refusal::DepositOverflowsBalance)?;
            diesel::insert_into(deposits::table)
                .values((
                    deposits::id.eq(Uuid::now_v7().to_string()),
                    deposits::user_id.eq(self.user_id.to_string()),
                    deposits::amount_cents.eq(self.amount_cents),
                    deposits::deposited_by.eq(self.deposited_by.to_string()),
                    deposits::created_at.eq(now),
                ))
                .execute(conn)?;
            Ok(Written { events: vec![account_event(&account)], value: account })
        })
    }
}

pub struct MakeTransfer {
    pub from_user_id: Uuid,
    pub to_user_id: Uuid,
    pub amount_cents: i64,
    pub idempotency: Option<IdempotencyKey>,
}

impl UseCase for MakeTransfer {
    type Output = Outcome<Transfer>;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Outcome<Transfer>, DbError> {
        let (from, to, amount) = (self.from_user_id, self.to_user_id, self.amount_cents);
        run_once(conn, outbox, self.idempotency.as_ref(), |conn| {
            if !user_is_live(conn, to)? {
                return Err(DbError::Refused(Refusal::NotFound(Missing::Recipient)));
            }
            let now = clock::now();
            // Lower user id first: two opposite transfers lock the same rows in the same order.
            let overflow = || DbError::Refused(Refusal::TransferOverflowsRecipient);
            let (sender, recipient) = if from.to_string() < to.to_string() {
                let sender = debit(conn, from, amount, now)?.ok_or(Refusal::InsufficientFunds)?;
                (sender, credit(conn, to, amount, now)?.ok_or_else(overflow)?)
            } else {
                let recipient = credit(conn, to, amount, now)?.ok_or_else(overflow)?;
                (debit(conn, from, amount, now)?.ok_or(Refusal::InsufficientFunds)?, recipient)
            };
            let transfer = Transfer {
                id: Uuid::now_v7(),
                from_user_id: from,
                to_user_id: to,
                amount_cents: amount,
                created_at: clock::to_utc(now),
            };
            diesel::insert_into(transfers::table)
                .values((
                    transfers::id.eq(transfer.id.to_string()),
                    transfers::from_user_id.eq(from.to_string()),
                    transfers::to_user_id.eq(to.to_string()),
                    transfers::amount_cents.eq(amount),
                    transfers::created_at.eq(now),
                ))
                .execute(conn)?;
            Ok(Written { value: transfer, events: vec![account_event(&sender), account_event(&recipient)] })
        })
    }
}

type TransferRow = (String, String, String, i64, NaiveDateTime);

fn into_transfer((id, from, to, amount_cents, created_at): TransferRow) -> Result<Transfer, DbError> {
    Ok(Transfer {
        id: parse_id(&id)?,
        from_user_id: parse_id(&from)?,
        to_user_id: parse_id(&to)?,
        amount_cents,
        created_at: clock::to_utc(created_at),
    })
}

/// Transfers the user sent or received, newest first.
pub struct ListTransfers {
    pub user_id: Uuid,
    pub page: PageRequest,
}

impl UseCase for ListTransfers {
    type Output = Page<Transfer>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Page<Transfer>, DbError> {
        let id = self.user_id.to_string();
        let mine =
            || transfers::table.filter(transfers::from_user_id.eq(id.clone()).or(transfers::to_user_id.eq(id.clone())));
        let total: i64 = mine().count().get_result(conn)?;
        let rows: Vec<TransferRow> = mine()
            .order((transfers::created_at.desc(), transfers::id.desc()))
            .limit(self.page.limit())
            .offset(self.page.offset())
            .select((
                transfers::id,
                transfers::from_user_id,
                transfers::to_user_id,
                transfers::amount_cents,
                transfers::created_at,
            ))
            .load(conn)?;
        let data = rows.into_iter().map(into_transfer).collect::<Result<_, _>>()?;
        Ok(Page::new(data, self.page, total))
    }
}
