//! Orders: placing and cancelling them. Placing debits the balance and takes the stock in
//! one transaction with conditional UPDATEs, touching the account and then products by id
//! (cancelling too), so concurrent orders cannot deadlock or drive anything negative.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamp},
};
use uuid::Uuid;

use super::{
    accounts::{account, account_event, credit, debit},
    catalog::{find_live, product_columns, product_event, ProductRow},
    idempotency::{run_once, IdempotencyKey, Outcome, Written},
    kept_prepared::KeepPrepared,
    outbox::{topic, NewEvent, Outbox},
    schema::{accounts, order_items, orders, products},
    users::parse_id,
    DbConnection, UseCase,
};
use crate::{
    db::DbError,
    domain::refusal::{Missing, Refusal},
    domain::{
        catalog::ProductStatus,
        clock,
        paging::{Page, PageRequest},
        shop::{
            price_order, Account, Order, OrderItem, OrderLine, OrderRefusal, OrderStatus, PricedOrder, ProductOnSale,
        },
    },
};

type OrderRow = (String, String, String, i64, NaiveDateTime, NaiveDateTime);
type ItemRow = (String, String, String, i64, i64);

/// Orders with their items, in the order given.
fn assemble_orders(conn: &mut DbConnection, rows: Vec<OrderRow>) -> Result<Vec<Order>, DbError> {
    let ids: Vec<&String> = rows.iter().map(|row| &row.0).collect();
    let items: Vec<ItemRow> = order_items::table
        .filter(order_items::order_id.eq_any(ids))
        .order((order_items::order_id.asc(), order_items::position.asc()))
        .select((
            order_items::order_id,
            order_items::product_id,
            order_items::name,
            order_items::unit_price_cents,
            order_items::quantity,
        ))
        .load(conn)?;
    let mut by_order: HashMap<String, Vec<OrderItem>> = HashMap::new();
    for (order_id, product_id, name, unit_price_cents, quantity) in items {
        by_order.entry(order_id).or_default().push(OrderItem {
            product_id: parse_id(&product_id)?,
            name,
            unit_price_cents,
            quantity,
        });
    }
    rows.into_iter()
        .map(|(id, user_id, status, total_cents, created_at, updated_at)| {
            Ok(Order {
                items: by_order.remove(&id).unwrap_or_default(),
                id: parse_id(&id)?,
                user_id: parse_id(&user_id)?,
                status: OrderStatus::parse(&status)
                    .ok_or_else(|| DbError::Internal(format!("unknown order status {status:?}")))?,
                total_cents,
                created_at: clock::to_utc(created_at),
                updated_at: clock::to_utc(updated_at),
            })
        })
        .collect()
}

fn order_columns(
) -> (orders::id, orders::user_id, orders::status, orders::total_cents, orders::created_at, orders::updated_at) {
    (orders::id, orders::user_id, orders::status, orders::total_cents, orders::created_at, orders::updated_at)
}

fn load_order(conn: &mut DbConnection, id: &str) -> Result<Option<Order>, DbError> {
    let row: Option<OrderRow> = orders::table.find(id).select(order_columns()).first(conn).optional()?;
    Ok(assemble_orders(conn, row.into_iter().collect())?.pop())
}

pub struct PlaceOrder {
    pub user_id: Uuid,
    pub lines: Vec<OrderLine>,
    pub idempotency: Option<IdempotencyKey>,
}

impl UseCase for PlaceOrder {
    type Output = Outcome<Order>;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Outcome<Order>, DbError> {
        let (user_id, lines) = (self.user_id, self.lines);
        run_once(conn, outbox, self.idempotency.as_ref(), |conn| place_order(conn, user_id, &lines))
    }
}

fn place_order(conn: &mut DbConnection, user_id: Uuid, lines: &[OrderLine]) -> Result<Written<Order>, DbError> {
    let now = clock::now();
    let id = Uuid::now_v7();
    let order_id = id.to_string();
    let (priced, mut account) = open_order(conn, user_id, &order_id, lines, now)?;
    let mut order = Order {
        id,
        user_id,
        status: OrderStatus::Paid,
        total_cents: priced.total_cents,
        items: priced.items,
        created_at: clock::to_utc(now),
        updated_at: clock::to_utc(now),
    };

    // Take the stock, in product id order (so concurrent orders cannot deadlock), reading
    // the name and price back under the row lock: they cannot change before COMMIT.
    let mut by_id: Vec<usize> = (0..lines.len()).collect();
    by_id.sort_by_key(|&index| lines[index].product_id);
    let mut taken: Vec<Option<ProductRow>> = lines.iter().map(|_| None).collect();
    for &index in &by_id {
        let line = &lines[index];
        taken[index] = diesel::update(products::table.filter(products::id.eq(line.product_id.to_string())))
            .filter(products::deleted_at.is_null())
            .filter(products::status.eq(ProductStatus::Active.as_str()))
            .filter(products::stock.ge(line.quantity))
            .set((
                products::stock.eq(products::stock - line.quantity),
                products::version.eq(products::version + 1),
                products::updated_at.eq(now),
            ))
            .returning(product_columns())
            .keep_prepared()
            .get_result(conn)
            .optional()?;
    }
    let unchanged = order.items.iter().zip(&taken).all(|(item, row)| {
        row.as_ref()
            .is_some_and(|row| (item.unit_price_cents, item.name.as_str()) == (row.price_cents, row.name.as_str()))
    });
    if !unchanged {
        // A product changed since it was read: the order is judged again on what the
        // stock takes found, and takes the names and prices that hold now.
        let balance_before = account.balance_cents.checked_add(order.total_cents);
        let found = products_as_taken(conn, lines, &taken)?;
        let repriced = price_order(lines, &found, balance_before).map_err(DbError::from)?;
        for (position, (item, now_item)) in (0_i32..).zip(order.items.iter_mut().zip(repriced.items)) {
            if *item != now_item {
                diesel::update(order_items::table.find((&order_id, position)))
                    .set((
                        order_items::name.eq(&now_item.name),
                        order_items::unit_price_cents.eq(now_item.unit_price_cents),
                    ))
                    .execute(conn)?;
                *item = now_item;
            }
        }
        let difference = repriced.total_cents - order.total_cents;
        if difference != 0 {
            // The account's row has been locked since the debit, so the balance judged
            // above is the one these change.
            account = if difference > 0 {
                debit(conn, user_id, difference, now)?.ok_or_else(|| DbError::from(OrderRefusal::InsufficientFunds))?
            } else {
                credit(conn, user_id, -difference, now)?
                    .ok_or_else(|| DbError::Internal("a price drop would overflow the balance".into()))?
            };
            diesel::update(orders::table.find(&order_id))
                .set(orders::total_cents.eq(repriced.total_cents))
                .execute(conn)?;
            order.total_cents = repriced.total_cents;
        }
    }

    // Events in the order of the lines, then the order and the balance.
    let mut events = Vec::with_capacity(lines.len() + 2);
    for row in taken.into_iter().flatten() {
        events.push(NewEvent::public(topic::PRODUCTS, "product.updated", &row.into_product()?));
    }
    events.push(NewEvent::private(topic::ORDERS, "order.created", user_id, &order));
    events.push(account_event(&account));
    Ok(Written { value: order, events })
}

/// The products as the stock takes found them: a taken one with the stock it had before,
/// one that could not be taken as it is now, except that its stock stays short of the
/// line (the take found it so, and the take is what counts).
fn products_as_taken(
    conn: &mut DbConnection,
    lines: &[OrderLine],
    taken: &[Option<ProductRow>],
) -> Result<Vec<Option<ProductOnSale>>, DbError> {
    lines
        .iter()
        .zip(taken)
        .map(|(line, row)| match row {
            Some(row) => Ok(Some(ProductOnSale {
                name: row.name.clone(),
                price_cents: row.price_cents,
                stock: row.stock.saturating_add(line.quantity),
                active: true,
            })),
            None => Ok(find_live(conn, &line.product_id.to_string())?
                .map(|row| ProductOnSale { stock: row.stock.min(line.quantity - 1), ..on_sale(row) })),
        })
        .collect()
}

fn on_sale(row: ProductRow) -> ProductOnSale {
    ProductOnSale {
        active: row.status == ProductStatus::Active.as_str(),
        name: row.name,
        price_cents: row.price_cents,
        stock: row.stock,
    }
}

/// Reads the products and the balance, lets `price_order` judge the order, debits the
/// account and writes the order with its items: everything but taking the stock, which
/// every order of a product contends for, so it stays locked only for the few statements
/// before COMMIT (taking it re-checks what was read). Gives the priced order and the
/// account afterwards.
fn open_order(
    conn: &mut DbConnection,
    user_id: Uuid,
    order_id: &str,
    lines: &[OrderLine],
    now: NaiveDateTime,
) -> Result<(PricedOrder, Account), DbError> {
    if let DbConnection::Postgres(conn) = conn {
        return open_order_on_postgres(conn, user_id, order_id, lines, now);
    }
    let ids: Vec<String> = lines.iter().map(|line| line.product_id.to_string()).collect();
    let mut found: HashMap<String, ProductRow> = products::table
        .filter(products::id.eq_any(&ids))
        .filter(products::deleted_at.is_null())
        .select(ProductRow::as_select())
        .load::<ProductRow>(conn)?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    let products: Vec<Option<ProductOnSale>> = ids.iter().map(|id| found.remove(id).map(on_sale)).collect();
    // `BEGIN IMMEDIATE` holds the database from here to COMMIT: the balance read is the
    // one the debit changes.
    let balance_cents: Option<i64> =
        accounts::table.find(user_id.to_string()).select(accounts::balance_cents).first(conn).optional()?;
    let priced = price_order(lines, &products, balance_cents).map_err(DbError::from)?;
    let account =
        debit(conn, user_id, priced.total_cents, now)?.ok_or_else(|| DbError::from(OrderRefusal::InsufficientFunds))?;
    diesel::insert_into(orders::table)
        .values((
            orders::id.eq(order_id),
            orders::user_id.eq(user_id.to_string()),
            orders::status.eq(OrderStatus::Paid.as_str()),
            orders::total_cents.eq(priced.total_cents),
            orders::created_at.eq(now),
            orders::updated_at.eq(now),
        ))
        .execute(conn)?;
    // One INSERT per item: the multi-backend connection has no multi-row INSERT, and on
    // SQLite a statement costs no round trip.
    for (position, item) in (0_i32..).zip(&priced.items) {
        diesel::insert_into(order_items::table)
            .values((
                order_items::order_id.eq(order_id),
                order_items::position.eq(position),
                order_items::product_id.eq(item.product_id.to_string()),
                order_items::name.eq(&item.name),
                order_items::unit_price_cents.eq(item.unit_price_cents),
                order_items::quantity.eq(item.quantity),
            ))
            .execute(conn)?;
    }
    Ok((priced, account))
}

/// `open_order` in one statement (one round trip instead of three plus one per line: on
/// PostgreSQL each statement costs a network round trip on both sides, and an order's
/// statements were most of both sides' CPU). The statement gives back what it read, and
/// `price_order` judges that; its write is guarded so that it happens only when the rule
/// would allow it, re-checking the balance as a concurrent payment left it.
fn open_order_on_postgres(
    conn: &mut PgConnection,
    user_id: Uuid,
    order_id: &str,
    lines: &[OrderLine],
    now: NaiveDateTime,
) -> Result<(PricedOrder, Account), DbError> {
    let rows: Vec<OpenedLine> = diesel::sql_query(OPEN_ORDER)
        .bind::<Array<Text>, _>(lines.iter().map(|line| line.product_id.to_string()).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(lines.iter().map(|line| line.quantity).collect::<Vec<_>>())
        .bind::<Text, _>(user_id.to_string())
        .bind::<Timestamp, _>(now)
        .bind::<Text, _>(order_id)
        .bind::<Text, _>(ProductStatus::Active.as_str())
        .bind::<Text, _>(OrderStatus::Paid.as_str())
        .keep_prepared()
        .load(conn)?;
    let mut products: Vec<Option<ProductOnSale>> = lines.iter().map(|_| None).collect();
    let (mut debited, mut balance_read) = (None, None);
    for row in rows {
        if let (Some(balance_cents), Some(updated_at), Some(total_cents)) =
            (row.balance_cents, row.balance_updated_at, row.debited_cents)
        {
            debited = Some((account(user_id, balance_cents, updated_at), total_cents));
        }
        balance_read = row.balance_read_cents;
        let slot = usize::try_from(row.position).ok().and_then(|position| products.get_mut(position));
        let slot = slot.ok_or_else(|| DbError::Internal(format!("order line {} out of range", row.position)))?;
        if let (Some(name), Some(price_cents), Some(stock), Some(status)) =
            (row.name, row.price_cents, row.stock, row.status)
        {
            *slot = Some(ProductOnSale { active: status == ProductStatus::Active.as_str(), name, price_cents, stock });
        }
    }
    // What the debit found decides the balance when it happened; else what was read.
    let balance_cents = match &debited {
        Some((account, total_cents)) => account.balance_cents.checked_add(*total_cents),
        None => balance_read,
    };
    match (price_order(lines, &products, balance_cents), debited) {
        (Ok(priced), Some((account, total_cents))) if priced.total_cents == total_cents => Ok((priced, account)),
        // The balance read covered the order, but a concurrent payment spent it before the
        // debit (which waits for it and re-checks).
        (Ok(_), None) => Err(DbError::from(OrderRefusal::InsufficientFunds)),
        (Err(refusal), None) => Err(refusal.into()),
        (verdict, _) => Err(DbError::Internal(format!("the order statement and price_order disagree: {verdict:?}"))),
    }
}

/// `open_order_on_postgres`'s statement: `$1`/`$2` the lines' product ids and quantities
/// (in the lines' order), `$3` the user, `$4` now, `$5` the new order's id, `$6` the active
/// product status, `$7` the paid order status. The products and the balance are read on
/// the statement's snapshot; the debit, like `accounts::debit`, waits for a concurrent
/// writer of the account and re-checks the balance as that writer left it. Its guard
/// (every line orderable, a total that fits a bigint, a balance that covers it) lets the
/// write happen only when `price_order` would allow it on what was read. One row per line
/// comes back, in the lines' order, with the product as read (NULLs when missing or
/// deleted), the balance as read (NULL without an account), and the balance after the
/// debit with the amount debited (NULLs when there was none).
const OPEN_ORDER: &str = "WITH line AS ( \
         SELECT product_id, quantity, (position - 1)::int AS position \
         FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS line (product_id, quantity, position) \
     ), priced AS MATERIALIZED ( \
         SELECT line.position, line.product_id, line.quantity, \
                product.name, product.price_cents, product.stock, product.status \
         FROM line LEFT JOIN products product ON product.id = line.product_id AND product.deleted_at IS NULL \
     ), held AS ( \
         SELECT balance_cents FROM accounts WHERE user_id = $3 \
     ), total AS ( \
         SELECT sum(price_cents::numeric * quantity) AS cents, \
                bool_and(coalesce(status = $6 AND stock >= quantity, false)) AS orderable \
         FROM priced \
     ), debited AS ( \
         UPDATE accounts SET balance_cents = balance_cents - total.cents::bigint, updated_at = $4 \
         FROM total \
         WHERE accounts.user_id = $3 AND total.orderable AND total.cents <= 9223372036854775807 \
           AND accounts.balance_cents >= total.cents \
         RETURNING accounts.balance_cents, accounts.updated_at, total.cents::bigint AS total_cents \
     ), placed AS ( \
         INSERT INTO orders (id, user_id, status, total_cents, created_at, updated_at) \
         SELECT $5, $3, $7, total_cents, $4, $4 FROM debited \
         RETURNING id \
     ), itemised AS ( \
         INSERT INTO order_items (order_id, position, product_id, name, unit_price_cents, quantity) \
         SELECT placed.id, priced.position, priced.product_id, priced.name, priced.price_cents, priced.quantity \
         FROM placed CROSS JOIN priced \
     ) \
     SELECT priced.position, priced.name, priced.price_cents, priced.stock, priced.status, \
            (SELECT balance_cents FROM held) AS balance_read_cents, \
            debited.balance_cents, debited.updated_at AS balance_updated_at, debited.total_cents AS debited_cents \
     FROM priced LEFT JOIN debited ON true ORDER BY priced.position";

#[derive(QueryableByName)]
struct OpenedLine {
    #[diesel(sql_type = Integer)]
    position: i32,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    price_cents: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    stock: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    status: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    balance_read_cents: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    balance_cents: Option<i64>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    balance_updated_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<BigInt>)]
    debited_cents: Option<i64>,
}

pub struct GetOrder {
    pub id: Uuid,
}

impl UseCase for GetOrder {
    type Output = Option<Order>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Option<Order>, DbError> {
        load_order(conn, &self.id.to_string())
    }
}

pub struct ListOrders {
    /// Only this user's orders; `None` lists everyone's (admins).
    pub user_id: Option<Uuid>,
    pub status: Option<OrderStatus>,
    pub page: PageRequest,
}

impl UseCase for ListOrders {
    type Output = Page<Order>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Page<Order>, DbError> {
        let query = || {
            let mut query = orders::table.into_boxed();
            if let Some(user_id) = self.user_id {
                query = query.filter(orders::user_id.eq(user_id.to_string()));
            }
            if let Some(status) = self.status {
                query = query.filter(orders::status.eq(status.as_str()));
            }
            query
        };
        let total: i64 = query().count().get_result(conn)?;
        let rows: Vec<OrderRow> = query()
            .order((orders::created_at.desc(), orders::id.desc()))
            .limit(self.page.limit())
            .offset(self.page.offset())
            .select(order_columns())
            .load(conn)?;
        Ok(Page::new(assemble_orders(conn, rows)?, self.page, total))
    }
}

pub struct CancelOrder {
    pub id: Uuid,
    pub requested_by: Uuid,
    /// Admins may cancel anyone's order; others only their own (else `NotFound`).
    pub may_cancel_any: bool,
}

impl UseCase for CancelOrder {
    type Output = Order;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Order, DbError> {
        let id = self.id.to_string();
        conn.write_transaction(|conn| {
            let order = load_order(conn, &id)?
                .filter(|order| self.may_cancel_any || order.user_id == self.requested_by)
                .ok_or(Refusal::NotFound(Missing::Order))?;
            let now = clock::now();
            let cancelled = diesel::update(orders::table.find(&id))
                .filter(orders::status.eq(OrderStatus::Paid.as_str()))
                .set((orders::status.eq(OrderStatus::Cancelled.as_str()), orders::updated_at.eq(now)))
                .execute(conn)?;
            if cancelled == 0 {
                return Err(Refusal::OrderAlreadyCancelled.into());
            }
            // The account first, then the products in id order, as placing an order does.
            let account = credit(conn, order.user_id, order.total_cents, now)?
                .ok_or_else(|| DbError::Internal("refund would overflow the balance".into()))?;
            let mut items: Vec<&OrderItem> = order.items.iter().collect();
            items.sort_by_key(|item| item.product_id.to_string());
            let mut events = Vec::with_capacity(items.len() + 2);
            for item in &items {
                let product_id = item.product_id.to_string();
                diesel::update(products::table.filter(products::id.eq(&product_id)))
                    .set((
                        products::stock.eq(products::stock + item.quantity),
                        products::version.eq(products::version + 1),
                        products::updated_at.eq(now),
                    ))
                    .execute(conn)?;
                if find_live(conn, &product_id)?.is_some() {
                    events.push(product_event(conn, &product_id, "product.updated")?.1);
                }
            }
            let order = Order { status: OrderStatus::Cancelled, updated_at: clock::to_utc(now), ..order };
            events.push(NewEvent::private(topic::ORDERS, "order.cancelled", order.user_id, &order));
            events.push(account_event(&account));
            outbox.append(conn, events)?;
            Ok(order)
        })
    }
}
