//! Orders: stock and money move exactly by the order's total, refusals change nothing,
//! cancels refund once, owners see only their own.

use std::collections::BTreeSet;

use crate::common::{assert_problem, events::read_events, shop::*, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

on_both_backends!(
    orders_take_stock_and_debit_exactly_their_total,
    short_stock_is_refused_naming_the_products_and_nothing_changes,
    short_funds_are_refused_and_nothing_changes,
    invalid_orders_are_rejected_and_change_nothing,
    cancelling_restores_stock_and_refunds_exactly_once,
    orders_are_visible_only_to_their_owner_and_admins,
);

async fn orders_take_stock_and_debit_exactly_their_total(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 10_000).await;
    let notebook = product(&app, &admin, "Notebook", 350, 10).await;
    let pen = product(&app, &admin, "Pen", 120, 20).await;

    // The lines out of id order (ids are UUID v7, so the pen's sorts after the notebook's):
    // stock is taken in id order, items come back in the order given.
    let response = order(&app, &buyer, &[(&pen, 3), (&notebook, 2)]).await;
    assert_eq!(response.status(), 201);
    let location = header(&response, "location");
    let placed = json_of(response).await;
    let id = id_of(&placed);
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(location, order_path(&id));
    assert_eq!(keys(&placed), ORDER_KEYS);
    assert_eq!(placed["user_id"], buyer_id.as_str());
    assert_eq!(placed["status"], "paid");
    assert_eq!(placed["total_cents"], 2 * 350 + 3 * 120);
    let items = placed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for (item, (product_id, name, unit_price_cents, quantity)) in
        items.iter().zip([(&pen, "Pen", 120, 3), (&notebook, "Notebook", 350, 2)])
    {
        assert_eq!(item["product_id"], product_id.as_str());
        assert_eq!(keys(item), ["name", "product_id", "quantity", "unit_price_cents"]);
        assert_eq!(
            (item["name"].as_str(), item["unit_price_cents"].as_i64(), item["quantity"].as_i64()),
            (Some(name), Some(unit_price_cents), Some(quantity))
        );
    }

    assert_eq!(balance(&app, &buyer).await, 10_000 - 1060, "debited exactly the total");
    assert_eq!((stock(&app, &notebook).await, stock(&app, &pen).await), (8, 17));
    assert_eq!(page(&app, &location, &buyer).await, placed);
    let listed = page(&app, ORDERS, &buyer).await;
    assert_eq!((listed["total"].as_i64(), &listed["data"][0]), (Some(1), &placed));
    assert_eq!(total(&app, &format!("/api/v1/users/{buyer_id}/orders"), &buyer).await, 1);
}

async fn short_stock_is_refused_naming_the_products_and_nothing_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 100_000).await;
    let bowl = product(&app, &admin, "Bowl", 100, 5).await;
    let plate = product(&app, &admin, "Plate", 100, 1).await;
    let cup = product(&app, &admin, "Cup", 100, 0).await;
    let events_before = read_events(&app.database_url).len();

    let one_short = assert_problem(order(&app, &buyer, &[(&bowl, 2), (&plate, 3)]).await, 409).await;
    assert_eq!(one_short["type"], INSUFFICIENT_STOCK);
    assert_eq!(one_short["product_ids"], json!([plate]));

    let all_short = assert_problem(order(&app, &buyer, &[(&bowl, 6), (&plate, 2), (&cup, 1)]).await, 409).await;
    assert_eq!(all_short["type"], INSUFFICIENT_STOCK);
    let short: BTreeSet<String> =
        all_short["product_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect();
    assert_eq!(short, set(&[bowl.as_str(), plate.as_str(), cup.as_str()]));

    assert_eq!((stock(&app, &bowl).await, stock(&app, &plate).await, stock(&app, &cup).await), (5, 1, 0));
    assert_eq!(balance(&app, &buyer).await, 100_000);
    assert_eq!(total(&app, ORDERS, &buyer).await, 0);
    assert_eq!(read_events(&app.database_url).len(), events_before, "a refused order leaves no event");

    // Exactly the stock there is can be bought.
    paid_order(&app, &buyer, &[(&bowl, 5), (&plate, 1)]).await;
    assert_eq!((stock(&app, &bowl).await, stock(&app, &plate).await), (0, 0));
    assert_eq!(balance(&app, &buyer).await, 100_000 - 600);
}

async fn short_funds_are_refused_and_nothing_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 999).await;
    let vase = product(&app, &admin, "Vase", 500, 10).await;

    let refused = assert_problem(order(&app, &buyer, &[(&vase, 2)]).await, 409).await;
    assert_eq!(refused["type"], INSUFFICIENT_FUNDS);
    // What is wrong with the products is told before what the balance lacks.
    let mug = product(&app, &admin, "Mug", 500, 1).await;
    let short = assert_problem(order(&app, &buyer, &[(&vase, 2), (&mug, 2)]).await, 409).await;
    assert_eq!((&short["type"], &short["product_ids"]), (&json!(INSUFFICIENT_STOCK), &json!([mug])));
    let archived = app.send_json(Method::PATCH, &product_path(&mug), &admin, &json!({"status": "archived"})).await;
    assert_eq!(archived.status(), 200);
    let unavailable = assert_problem(order(&app, &buyer, &[(&vase, 2), (&mug, 1)]).await, 422).await;
    assert_eq!(fields(&unavailable), ["items[1].product_id"]);
    assert_eq!(stock(&app, &mug).await, 1);
    assert_eq!(stock(&app, &vase).await, 10, "no stock was taken");
    assert_eq!(balance(&app, &buyer).await, 999);
    assert_eq!(total(&app, ORDERS, &buyer).await, 0);

    // One more cent, and the whole balance buys it.
    deposit(&app, &admin, &buyer_id, 1).await;
    paid_order(&app, &buyer, &[(&vase, 2)]).await;
    assert_eq!((balance(&app, &buyer).await, stock(&app, &vase).await), (0, 8));
}

async fn invalid_orders_are_rejected_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 10_000).await;
    let lamp = product(&app, &admin, "Lamp", 100, 50).await;
    let archived = id_of(
        &create_product(
            &app,
            &admin,
            json!({"name": "Old Lamp", "price_cents": 100, "stock": 5, "status": "archived"}),
        )
        .await,
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    let post = |body: Value| {
        let (app, buyer) = (&app, &buyer);
        async move { app.send_json(Method::POST, ORDERS, buyer, &body).await }
    };

    for (lines, field) in [
        (vec![(unknown.as_str(), 1)], "items[0].product_id"),
        (vec![(lamp.as_str(), 1), (archived.as_str(), 1)], "items[1].product_id"),
        (vec![(lamp.as_str(), 0)], "items[0].quantity"),
        (vec![(lamp.as_str(), 1001)], "items[0].quantity"),
        (vec![(lamp.as_str(), -1)], "items[0].quantity"),
        (vec![(lamp.as_str(), 1), ("not-a-uuid", 1)], "items[1].product_id"),
        (vec![], "items"),
    ] {
        let refused = assert_problem(post(order_body(&lines)).await, 422).await;
        assert_eq!(fields(&refused), [field], "{lines:?}");
    }
    let duplicated = assert_problem(post(order_body(&[(&lamp, 1), (&lamp, 2)])).await, 422).await;
    assert!(fields(&duplicated).iter().all(|f| f.starts_with("items")), "{duplicated}");
    let many: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let lines: Vec<(&str, i64)> = many.iter().map(|id| (id.as_str(), 1)).collect();
    let too_many = assert_problem(post(order_body(&lines)).await, 422).await;
    assert!(fields(&too_many).contains(&"items".to_owned()), "{too_many}");
    let unknown_field = post(json!({"items": [{"product_id": lamp, "quantity": 1, "coupon": "FREE"}]})).await;
    assert_problem(unknown_field, 422).await;
    assert_problem(post(json!({})).await, 422).await;
    assert_problem(post(json!({"items": "everything"})).await, 400).await;
    assert_problem(app.post_json(ORDERS, &order_body(&[(&lamp, 1)])).await, 401).await;

    // Archiving takes a product off sale; reactivating puts it back.
    let path = product_path(&lamp);
    assert_eq!(app.send_json(Method::PATCH, &path, &admin, &json!({"status": "archived"})).await.status(), 200);
    let refused = assert_problem(post(order_body(&[(&lamp, 1)])).await, 422).await;
    assert_eq!(fields(&refused), ["items[0].product_id"]);

    assert_eq!(stock(&app, &lamp).await, 50);
    assert_eq!(stock(&app, &archived).await, 5);
    assert_eq!(balance(&app, &buyer).await, 10_000);
    assert_eq!(total(&app, ORDERS, &buyer).await, 0);

    assert_eq!(app.send_json(Method::PATCH, &path, &admin, &json!({"status": "active"})).await.status(), 200);
    paid_order(&app, &buyer, &[(&lamp, 1)]).await;
    assert_eq!((stock(&app, &lamp).await, balance(&app, &buyer).await), (49, 9_900));
}

async fn cancelling_restores_stock_and_refunds_exactly_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 5000).await;
    let drum = product(&app, &admin, "Drum", 1200, 4).await;
    let sticks = product(&app, &admin, "Sticks", 150, 10).await;

    let placed = paid_order(&app, &buyer, &[(&drum, 1), (&sticks, 4)]).await;
    let id = id_of(&placed);
    assert_eq!(placed["total_cents"], 1800);
    assert_eq!(balance(&app, &buyer).await, 3200);
    assert_eq!((stock(&app, &drum).await, stock(&app, &sticks).await), (3, 6));

    // A price change after the purchase does not change the refund.
    let repriced = app.send_json(Method::PATCH, &product_path(&drum), &admin, &json!({"price_cents": 9999})).await;
    assert_eq!(repriced.status(), 200);

    let response = cancel(&app, &buyer, &id).await;
    assert_eq!(response.status(), 200);
    let cancelled = json_of(response).await;
    assert_eq!((cancelled["id"].as_str(), cancelled["status"].as_str()), (Some(id.as_str()), Some("cancelled")));
    assert_eq!((&cancelled["total_cents"], &cancelled["items"]), (&placed["total_cents"], &placed["items"]));
    assert_eq!(balance(&app, &buyer).await, 5000, "refunded exactly the total paid");
    assert_eq!((stock(&app, &drum).await, stock(&app, &sticks).await), (4, 10), "stock restored");
    assert_eq!(page(&app, &order_path(&id), &buyer).await["status"], "cancelled");

    assert_problem(cancel(&app, &buyer, &id).await, 409).await;
    assert_eq!(balance(&app, &buyer).await, 5000, "no second refund");
    assert_eq!((stock(&app, &drum).await, stock(&app, &sticks).await), (4, 10));

    // Lists filter by status.
    let second = id_of(&paid_order(&app, &buyer, &[(&sticks, 2)]).await);
    assert_eq!(ids(&page(&app, &format!("{ORDERS}?status=cancelled"), &buyer).await), [id.as_str()]);
    assert_eq!(ids(&page(&app, &format!("{ORDERS}?status=paid"), &buyer).await), [second.as_str()]);
    assert_eq!(ids(&page(&app, ORDERS, &buyer).await), [second.clone(), id.clone()], "newest first");
    let bad_status = assert_problem(app.get_as(&format!("{ORDERS}?status=refunded"), &buyer).await, 422).await;
    assert_eq!(fields(&bad_status), ["status"]);

    // An admin may cancel anyone's order; the refund goes to the order's owner.
    let by_admin = cancel(&app, &admin, &second).await;
    assert_eq!(by_admin.status(), 200);
    assert_eq!(json_of(by_admin).await["status"], "cancelled");
    assert_eq!(balance(&app, &buyer).await, 5000);
    assert_eq!(balance(&app, &admin).await, 0);
    assert_eq!(stock(&app, &sticks).await, 10);
}

async fn orders_are_visible_only_to_their_owner_and_admins(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let (bob_id, bob) = app.user("bob@example.com").await;
    deposit(&app, &admin, &alice_id, 1000).await;
    deposit(&app, &admin, &bob_id, 1000).await;
    let socks = product(&app, &admin, "Socks", 100, 100).await;
    let first = id_of(&paid_order(&app, &alice, &[(&socks, 1)]).await);
    let second = id_of(&paid_order(&app, &alice, &[(&socks, 2)]).await);
    let bobs = id_of(&paid_order(&app, &bob, &[(&socks, 3)]).await);
    let alice_orders = format!("/api/v1/users/{alice_id}/orders");

    // Another user learns nothing and can change nothing.
    assert_problem(app.get_as(&order_path(&first), &bob).await, 404).await;
    assert_problem(cancel(&app, &bob, &first).await, 404).await;
    assert_problem(app.get_as(&alice_orders, &bob).await, 404).await;
    assert_eq!(page(&app, &order_path(&first), &alice).await["status"], "paid");
    assert_eq!(balance(&app, &alice).await, 700);
    assert_eq!(ids(&page(&app, ORDERS, &bob).await), [bobs.as_str()]);
    let sneaky = app.get_as(&format!("{ORDERS}?user_id={alice_id}"), &bob).await;
    if sneaky.status() == 200 {
        let listed = json_of(sneaky).await;
        assert!(listed["data"].as_array().unwrap().iter().all(|o| o["user_id"] == bob_id.as_str()), "{listed}");
    } else {
        assert!(sneaky.status().is_client_error());
    }

    // The owner sees their own, newest first.
    assert_eq!(ids(&page(&app, ORDERS, &alice).await), [second.clone(), first.clone()]);
    assert_eq!(ids(&page(&app, &alice_orders, &alice).await), [second.clone(), first.clone()]);
    let paged = page(&app, &format!("{ORDERS}?per_page=1&page=2"), &alice).await;
    assert_eq!(
        (ids(&paged), paged["total"].as_i64(), paged["total_pages"].as_i64()),
        (vec![first.clone()], Some(2), Some(2))
    );
    assert_eq!(page(&app, &format!("{ORDERS}?per_page=1000"), &alice).await["per_page"], 100);

    // Admins see everyone's, or one user's.
    assert_eq!(page(&app, &order_path(&first), &admin).await["user_id"], alice_id.as_str());
    assert_eq!(ids(&page(&app, ORDERS, &admin).await), [bobs.clone(), second.clone(), first.clone()]);
    assert_eq!(ids(&page(&app, &format!("{ORDERS}?user_id={alice_id}"), &admin).await), [second, first.clone()]);
    assert_eq!(ids(&page(&app, &format!("/api/v1/users/{bob_id}/orders"), &admin).await), [bobs]);
    assert_problem(app.get_as(&order_path(&uuid::Uuid::now_v7().to_string()), &admin).await, 404).await;

    let anonymous = app.get(ORDERS).await;
    assert_eq!(header(&anonymous, "www-authenticate"), "Bearer");
    assert_problem(anonymous, 401).await;
    assert_problem(app.get(&order_path(&first)).await, 401).await;
    assert_problem(app.get(&alice_orders).await, 401).await;
}

/// A PostgreSQL shop: a buyer with 10,000 cents and a teapot (500 cents, 5 in stock).
struct Shop {
    app: TestApp,
    buyer_id: String,
    buyer: String,
    teapot: String,
}

impl Shop {
    async fn on_postgres() -> Self {
        let app = TestApp::spawn(Backend::Postgres).await;
        let (_, admin) = app.admin("root@example.com").await;
        let (buyer_id, buyer) = app.user("buyer@example.com").await;
        deposit(&app, &admin, &buyer_id, 10_000).await;
        let teapot = product(&app, &admin, "Teapot", 500, 5).await;
        Self { app, buyer_id, buyer, teapot }
    }
}

/// Places the order in the background, as the buyer.
fn place_in_background(
    app: &TestApp,
    buyer: &str,
    body: Value,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let (address, buyer) = (app.address.clone(), buyer.to_owned());
    tokio::spawn(async move {
        reqwest::Client::new().post(format!("{address}{ORDERS}")).bearer_auth(&buyer).json(&body).send().await
    })
}

/// Returns once a statement of the app's database waits for a row lock, failing if the
/// order in `placing` finished first (it did not wait) or nothing waits within 30 s.
async fn until_it_waits_for_a_row<T>(app: &TestApp, placing: &tokio::task::JoinHandle<T>) {
    use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut watcher = PgConnection::establish(&app.database_url).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result::<Count>(&mut watcher)
        .unwrap()
        .n;
        if waiting > 0 {
            return;
        }
        assert!(!placing.is_finished(), "the order did not wait for the row");
        assert!(tokio::time::Instant::now() < deadline, "the order never reached the row");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

// PostgreSQL only: there, an admin's change can commit while an order is being placed.
on_postgres_only!(postgres_repricing: an_order_placed_while_its_product_is_repriced_pays_the_price_that_holds_when_the_stock_is_taken);

async fn an_order_placed_while_its_product_is_repriced_pays_the_price_that_holds_when_the_stock_is_taken() {
    use diesel::{connection::SimpleConnection, Connection, PgConnection};
    let Shop { app, buyer, teapot, .. } = Shop::on_postgres().await;

    // A price change that has not committed yet, holding the product's row.
    let mut admin_tx = PgConnection::establish(&app.database_url).unwrap();
    admin_tx
        .batch_execute(&format!(
            "BEGIN; UPDATE products SET price_cents = 700, name = 'Teapot (large)' WHERE id = '{teapot}'"
        ))
        .unwrap();
    let placing = place_in_background(&app, &buyer, order_body(&[(&teapot, 2)]));
    // The order gets as far as the row (it may have priced the teapot at 500 by then).
    until_it_waits_for_a_row(&app, &placing).await;
    admin_tx.batch_execute("COMMIT").unwrap();

    let placed = json_of(placing.await.unwrap().unwrap()).await;
    assert_eq!(placed["total_cents"], 1400, "{placed}");
    assert_eq!(
        (placed["items"][0]["name"].as_str(), placed["items"][0]["unit_price_cents"].as_i64()),
        (Some("Teapot (large)"), Some(700))
    );
    assert_eq!(balance(&app, &buyer).await, 10_000 - 1400);
    let stored = json_of(app.get_as(&format!("{ORDERS}/{}", id_of(&placed)), &buyer).await).await;
    assert_eq!(stored, placed, "the stored order is the one answered");
    assert_eq!(stock(&app, &teapot).await, 3);
}

// PostgreSQL only: there, a debit can commit while an order is being placed.
on_postgres_only!(postgres_drained_balance: an_order_placed_while_the_balance_is_drained_is_refused_and_changes_nothing);

/// The order's debit waits for the account's row and then re-checks the balance as it
/// is after the other debit, not as the order first read it.
async fn an_order_placed_while_the_balance_is_drained_is_refused_and_changes_nothing() {
    use diesel::{connection::SimpleConnection, Connection, PgConnection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Left {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        balance_cents: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        orders: i64,
    }
    let Shop { app, buyer_id, buyer, teapot } = Shop::on_postgres().await;

    // A debit that has not committed yet, holding the account's row: it leaves 100 cents.
    let mut other_tx = PgConnection::establish(&app.database_url).unwrap();
    other_tx
        .batch_execute(&format!("BEGIN; UPDATE accounts SET balance_cents = 100 WHERE user_id = '{buyer_id}'"))
        .unwrap();
    let placing = place_in_background(&app, &buyer, order_body(&[(&teapot, 2)]));
    until_it_waits_for_a_row(&app, &placing).await;
    other_tx.batch_execute("COMMIT").unwrap();

    let refused = assert_problem(placing.await.unwrap().unwrap(), 409).await;
    assert_eq!(refused["type"], INSUFFICIENT_FUNDS);
    let left = diesel::sql_query(format!(
        "SELECT balance_cents, (SELECT count(*) FROM orders) AS orders FROM accounts WHERE user_id = '{buyer_id}'"
    ))
    .get_result::<Left>(&mut other_tx)
    .unwrap();
    assert_eq!((left.balance_cents, left.orders), (100, 0), "nothing was debited and no order was written");
    assert_eq!(stock(&app, &teapot).await, 5);
}

// PostgreSQL only: `pg_prepared_statements` shows what a connection keeps prepared.
on_postgres_only!(postgres_prepared: the_statements_of_an_order_stay_prepared_on_their_connection);

/// Each order's statements (the claim, the one that prices, debits and writes the order,
/// the stock UPDATE, the stored answer, the event INSERT) are parsed and planned once per
/// connection, not once per order (diesel alone would prepare them anew every time).
async fn the_statements_of_an_order_stay_prepared_on_their_connection() {
    use diesel::{QueryableByName, RunQueryDsl};
    use storefront::db::{idempotency::IdempotencyKey, orders::PlaceOrder, outbox::Outbox, DbConnection, UseCase};
    use storefront::domain::shop::OrderLine;
    #[derive(QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
    }
    let Shop { app, buyer_id, teapot, .. } = Shop::on_postgres().await;

    let mut conn: DbConnection = diesel::Connection::establish(&app.database_url).unwrap();
    // Two orders with an Idempotency-Key, two without.
    for key in [Some("first"), Some("second"), None, None] {
        let order = PlaceOrder {
            user_id: buyer_id.parse().unwrap(),
            lines: vec![OrderLine { product_id: teapot.parse().unwrap(), quantity: 1 }],
            idempotency: key.map(|key| IdempotencyKey {
                user_id: buyer_id.parse().unwrap(),
                scope: "POST /api/v1/orders".into(),
                key: key.into(),
                fingerprint: "the same order".into(),
                answers: storefront::http::idempotency::first_response("/api/v1/orders", key),
            }),
        };
        order.run(&mut conn, &mut Outbox::unattributed()).unwrap();
    }
    assert_eq!(stock(&app, &teapot).await, 1, "all four orders were placed");
    let prepared = |conn: &mut DbConnection| -> Vec<String> {
        diesel::sql_query("SELECT statement FROM pg_prepared_statements")
            .load::<Prepared>(conn)
            .unwrap()
            .into_iter()
            .map(|row| row.statement)
            .collect()
    };
    let kept = |prepared: &[String], start: &str| prepared.iter().filter(|s| s.starts_with(start)).count();
    let after_orders = prepared(&mut conn);
    for start in
        ["UPDATE \"products\"", "WITH line AS", "WITH lock AS", "UPDATE \"idempotency_keys\"", "INSERT INTO events"]
    {
        assert_eq!(kept(&after_orders, start), 1, "{start}… is kept prepared once, for every order: {after_orders:#?}");
    }
    // A write that appends one event, not an order's three, on the same connection.
    let deposit = storefront::db::accounts::Deposit {
        user_id: buyer_id.parse().unwrap(),
        amount_cents: 100,
        deposited_by: buyer_id.parse().unwrap(),
        idempotency: None,
    };
    deposit.run(&mut conn, &mut Outbox::unattributed()).unwrap();
    let after_deposit = prepared(&mut conn);
    assert_eq!(kept(&after_deposit, "INSERT INTO events"), 1, "one shape for any number of events: {after_deposit:#?}");
}
