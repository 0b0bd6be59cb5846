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
    accounts::{account, account_event, credit, debit, insufficient_funds},
    catalog::{find_live, product_columns, product_event, ProductRow},
    idempotency::{run_once, IdempotencyKey, Outcome, Written},
    kept_prepared::KeepPrepared,
    outbox::{topic, NewEvent, Outbox},
    schema::{order_items, orders, products},
    users::parse_id,
    DbConnection, UseCase,
};
use crate::{
    domain::{
        catalog::ProductStatus,
        clock,
        money::order_total,
        paging::{Page, PageRequest},
        shop::{Account, Order, OrderItem, OrderLine, OrderStatus},
    },
    error::{AppError, FieldError},
};

type OrderRow = (String, String, String, i64, NaiveDateTime, NaiveDateTime);
type ItemRow = (String, String, String, i64, i64);

/// Orders with their items, in the order given.
fn assemble_orders(conn: &mut DbConnection, rows: Vec<OrderRow>) -> Result<Vec<Order>, AppError> {
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
                    .ok_or_else(|| AppError::Internal(format!("unknown order status {status:?}")))?,
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

fn load_order(conn: &mut DbConnection, id: &str) -> Result<Option<Order>, AppError> {
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
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Outcome<Order>, AppError> {
        let (user_id, lines) = (self.user_id, self.lines);
        run_once(conn, outbox, self.idempotency.as_ref(), 201, |conn| place_order(conn, user_id, &lines))
    }
}

fn orderable(row: &ProductRow) -> bool {
    row.deleted_at.is_none() && row.status == ProductStatus::Active.as_str()
}

fn place_order(conn: &mut DbConnection, user_id: Uuid, lines: &[OrderLine]) -> Result<Written<Order>, AppError> {
    let now = clock::now();
    let mut sorted: Vec<(usize, &OrderLine)> = lines.iter().enumerate().collect();
    sorted.sort_by_key(|(_, line)| line.product_id.to_string());
    let ids: Vec<String> = sorted.iter().map(|(_, line)| line.product_id.to_string()).collect();
    let id = Uuid::now_v7();
    let order_id = id.to_string();
    let (items, total_cents, mut account) = open_order(conn, user_id, &order_id, lines, &sorted, &ids, now)?;
    let mut order = Order {
        id,
        user_id,
        status: OrderStatus::Paid,
        total_cents,
        items,
        created_at: clock::to_utc(now),
        updated_at: clock::to_utc(now),
    };

    // Take the stock, in product id order (so concurrent orders cannot deadlock), reading
    // the name and price back under the row lock: they cannot change before COMMIT.
    let mut events = Vec::with_capacity(lines.len() + 2);
    let mut repriced = false;
    let (mut unavailable, mut short) = (Vec::new(), Vec::new());
    for ((index, line), id) in sorted.iter().zip(&ids) {
        let taken: Option<ProductRow> = diesel::update(products::table.filter(products::id.eq(id)))
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
        let Some(row) = taken else {
            // Changed since it was read: classify it as the read would have.
            match find_live(conn, id)? {
                Some(row) if orderable(&row) => short.push(id.clone()),
                _ => {
                    unavailable.push(FieldError::new(format!("items[{index}].product_id"), "is not an active product"))
                }
            }
            continue;
        };
        let item = &mut order.items[*index];
        if (item.unit_price_cents, item.name.as_str()) != (row.price_cents, row.name.as_str()) {
            // Renamed or repriced since it was read: the order takes what holds now.
            (item.unit_price_cents, item.name) = (row.price_cents, row.name.clone());
            diesel::update(order_items::table.find((&order_id, i32::try_from(*index).unwrap_or(i32::MAX))))
                .set((order_items::name.eq(&item.name), order_items::unit_price_cents.eq(item.unit_price_cents)))
                .execute(conn)?;
            repriced = true;
        }
        events.push((*index, NewEvent::public(topic::PRODUCTS, "product.updated", &row.into_product()?)));
    }
    refuse_unless_orderable(unavailable, short)?;
    if repriced {
        let total_cents = priced_total(&order.items)?;
        let difference = total_cents - order.total_cents;
        let settled = if difference >= 0 {
            debit(conn, user_id, difference, now)?.ok_or_else(insufficient_funds)?
        } else {
            credit(conn, user_id, -difference, now)?
                .ok_or_else(|| AppError::Internal("a price drop would overflow the balance".into()))?
        };
        diesel::update(orders::table.find(&order_id)).set(orders::total_cents.eq(total_cents)).execute(conn)?;
        (account, order.total_cents) = (settled, total_cents);
    }

    // Events in the order of the lines, then the order and the balance.
    events.sort_by_key(|(index, _)| *index);
    let mut events: Vec<NewEvent> = events.into_iter().map(|(_, event)| event).collect();
    events.push(NewEvent::private(topic::ORDERS, "order.created", user_id, &order));
    events.push(account_event(&account));
    Ok(Written { value: order, events })
}

/// What a plain read found for an order line; `None` for a missing or deleted product.
struct PricedProduct {
    name: String,
    price_cents: i64,
    stock: i64,
    status: String,
}

/// Prices the lines from a plain read, debits the account and writes the order with its
/// items: everything but taking the stock. Gives the items in the lines' order, the total
/// and the account afterwards; or the refusal, in the same precedence on both backends
/// (inactive products, then short stock, then an oversized total, then the balance).
/// The stock, the row every order of a product contends for, is taken after this, so it
/// stays locked only for the few statements before COMMIT; taking it re-checks what was read.
fn open_order(
    conn: &mut DbConnection,
    user_id: Uuid,
    order_id: &str,
    lines: &[OrderLine],
    sorted: &[(usize, &OrderLine)],
    sorted_ids: &[String],
    now: NaiveDateTime,
) -> Result<(Vec<OrderItem>, i64, Account), AppError> {
    if let DbConnection::Postgres(conn) = conn {
        // One round trip instead of three plus one per line: on PostgreSQL each statement
        // costs a network round trip on both sides, and an order's statements were most
        // of both sides' CPU.
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
        let mut priced: Vec<Option<PricedProduct>> = lines.iter().map(|_| None).collect();
        let mut debited = None;
        for row in rows {
            if let (Some(balance_cents), Some(updated_at)) = (row.balance_cents, row.balance_updated_at) {
                debited = Some(account(user_id, balance_cents, updated_at));
            }
            let slot = usize::try_from(row.position).ok().and_then(|position| priced.get_mut(position));
            let slot = slot.ok_or_else(|| AppError::Internal(format!("order line {} out of range", row.position)))?;
            *slot = match (row.name, row.price_cents, row.stock, row.status) {
                (Some(name), Some(price_cents), Some(stock), Some(status)) => {
                    Some(PricedProduct { name, price_cents, stock, status })
                }
                _ => None,
            };
        }
        let (items, total_cents) = priced_items(lines, sorted, priced)?;
        return Ok((items, total_cents, debited.ok_or_else(insufficient_funds)?));
    }

    let mut found: HashMap<String, ProductRow> = products::table
        .filter(products::id.eq_any(sorted_ids))
        .filter(products::deleted_at.is_null())
        .select(ProductRow::as_select())
        .load::<ProductRow>(conn)?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    let priced = lines
        .iter()
        .map(|line| {
            found.remove(&line.product_id.to_string()).map(|row| PricedProduct {
                name: row.name,
                price_cents: row.price_cents,
                stock: row.stock,
                status: row.status,
            })
        })
        .collect();
    let (items, total_cents) = priced_items(lines, sorted, priced)?;
    let account = debit(conn, user_id, total_cents, now)?.ok_or_else(insufficient_funds)?;
    diesel::insert_into(orders::table)
        .values((
            orders::id.eq(order_id),
            orders::user_id.eq(user_id.to_string()),
            orders::status.eq(OrderStatus::Paid.as_str()),
            orders::total_cents.eq(total_cents),
            orders::created_at.eq(now),
            orders::updated_at.eq(now),
        ))
        .execute(conn)?;
    // One INSERT per item: the multi-backend connection has no multi-row INSERT, and on
    // SQLite a statement costs no round trip.
    for (position, item) in (0_i32..).zip(&items) {
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
    Ok((items, total_cents, account))
}

/// The items at the prices read, in the lines' order, and their total; or why the order
/// is refused before anything is written.
fn priced_items(
    lines: &[OrderLine],
    sorted: &[(usize, &OrderLine)],
    priced: Vec<Option<PricedProduct>>,
) -> Result<(Vec<OrderItem>, i64), AppError> {
    let (mut unavailable, mut short) = (Vec::new(), Vec::new());
    for (index, line) in sorted {
        match &priced[*index] {
            Some(product) if product.status == ProductStatus::Active.as_str() => {
                if product.stock < line.quantity {
                    short.push(line.product_id.to_string());
                }
            }
            _ => unavailable.push(FieldError::new(format!("items[{index}].product_id"), "is not an active product")),
        }
    }
    refuse_unless_orderable(unavailable, short)?;
    let items = lines
        .iter()
        .zip(priced)
        .map(|(line, product)| {
            let product = product.ok_or_else(|| AppError::Internal("an orderable product went unread".into()))?;
            Ok(OrderItem {
                product_id: line.product_id,
                name: product.name,
                unit_price_cents: product.price_cents,
                quantity: line.quantity,
            })
        })
        .collect::<Result<Vec<_>, AppError>>()?;
    let total_cents = priced_total(&items)?;
    Ok((items, total_cents))
}

/// `open_order` on PostgreSQL, in one statement: `$1`/`$2` the lines' product ids and
/// quantities (in the lines' order), `$3` the user, `$4` now, `$5` the new order's id,
/// `$6` the active product status, `$7` the paid order status. The products are read on
/// the statement's snapshot, like the separate plain read was; the debit, like
/// `accounts::debit` (keep the two alike), waits for a concurrent writer of the account and
/// re-checks the balance as that writer left it. The debit and the writes happen only when
/// every line is orderable, the total fits a bigint and the balance covers it (the bigint
/// bound is a guard: a bigint balance cannot cover more, and the API's limits on prices,
/// quantities and lines keep totals far below it). One row per line comes back, in the lines' order, with the
/// product as read (NULLs when missing or deleted) and the balance after the debit (NULLs
/// when there was none), for `priced_items` to tell why.
const OPEN_ORDER: &str = "WITH line AS ( \
         SELECT product_id, quantity, (position - 1)::int AS position \
         FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS line (product_id, quantity, position) \
     ), priced AS MATERIALIZED ( \
         SELECT line.position, line.product_id, line.quantity, \
                product.name, product.price_cents, product.stock, product.status \
         FROM line LEFT JOIN products product ON product.id = line.product_id AND product.deleted_at IS NULL \
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
            debited.balance_cents, debited.updated_at AS balance_updated_at \
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
    balance_cents: Option<i64>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    balance_updated_at: Option<NaiveDateTime>,
}

/// Refuses an order naming products that are not active (422) or short of stock (409).
fn refuse_unless_orderable(mut unavailable: Vec<FieldError>, short: Vec<String>) -> Result<(), AppError> {
    if !unavailable.is_empty() {
        unavailable.sort_by(|a, b| a.field.cmp(&b.field));
        return Err(AppError::Validation(unavailable));
    }
    if !short.is_empty() {
        return Err(AppError::Conflict {
            kind: "insufficient-stock",
            detail: "Some products do not have enough stock.".into(),
            extensions: serde_json::Map::from_iter([("product_ids".to_owned(), serde_json::json!(short))]),
        });
    }
    Ok(())
}

fn priced_total(items: &[OrderItem]) -> Result<i64, AppError> {
    let priced: Vec<(i64, i64)> = items.iter().map(|item| (item.unit_price_cents, item.quantity)).collect();
    order_total(&priced).ok_or_else(|| AppError::invalid("items", "the order total is too large"))
}

pub struct GetOrder {
    pub id: Uuid,
}

impl UseCase for GetOrder {
    type Output = Option<Order>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Option<Order>, AppError> {
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
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Page<Order>, AppError> {
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
    /// Admins may cancel anyone's order; others only their own (else 404).
    pub may_cancel_any: bool,
}

impl UseCase for CancelOrder {
    type Output = Order;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Order, AppError> {
        let id = self.id.to_string();
        conn.write_transaction(|conn| {
            let order = load_order(conn, &id)?
                .filter(|order| self.may_cancel_any || order.user_id == self.requested_by)
                .ok_or_else(|| AppError::NotFound("No such order.".into()))?;
            let now = clock::now();
            let cancelled = diesel::update(orders::table.find(&id))
                .filter(orders::status.eq(OrderStatus::Paid.as_str()))
                .set((orders::status.eq(OrderStatus::Cancelled.as_str()), orders::updated_at.eq(now)))
                .execute(conn)?;
            if cancelled == 0 {
                return Err(AppError::conflict("The order is already cancelled."));
            }
            // The account first, then the products in id order, as placing an order does.
            let account = credit(conn, order.user_id, order.total_cents, now)?
                .ok_or_else(|| AppError::Internal("refund would overflow the balance".into()))?;
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
