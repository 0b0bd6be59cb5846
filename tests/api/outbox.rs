//! The transactional outbox: every committed change appends its events, in commit order.

use std::collections::BTreeSet;

use crate::common::{assert_problem, events::read_events, shop::*, Backend, TestApp};
use reqwest::Method;
use serde_json::json;

on_both_backends!(every_committed_change_appends_its_events_in_order,);

async fn every_committed_change_appends_its_events_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    let (friend_id, _) = app.user("friend@example.com").await;
    let baseline = read_events(&app.database_url).last().map_or(0, |event| event.id);

    let created = create_product(&app, &admin, json!({"name": "Widget", "price_cents": 250, "stock": 5})).await;
    let widget = id_of(&created);
    let credited = deposit(&app, &admin, &buyer_id, 1000).await;
    let placed = paid_order(&app, &buyer, &[(&widget, 2)]).await;
    assert_problem(order(&app, &buyer, &[(&widget, 10)]).await, 409).await;
    let response = cancel(&app, &buyer, &id_of(&placed)).await;
    assert_eq!(response.status(), 200);
    let cancelled = json_of(response).await;
    let repriced = app.send_json(Method::PATCH, &product_path(&widget), &admin, &json!({"price_cents": 300})).await;
    assert_eq!(repriced.status(), 200);
    assert_eq!(transfer(&app, &buyer, &friend_id, 100).await.status(), 201);
    assert_eq!(delete(&app, &product_path(&widget), &admin).await.status(), 204);

    let events: Vec<_> = read_events(&app.database_url).into_iter().filter(|event| event.id > baseline).collect();
    let kinds: Vec<(&str, &str)> = events.iter().map(|e| (e.topic.as_str(), e.kind.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("products", "product.created"),
            ("account", "account.updated"),  // deposit
            ("products", "product.updated"), // order: stock 5 -> 3
            ("orders", "order.created"),
            ("account", "account.updated"),
            ("products", "product.updated"), // cancel: stock 3 -> 5
            ("orders", "order.cancelled"),
            ("account", "account.updated"),
            ("products", "product.updated"), // price change
            ("account", "account.updated"),  // transfer: sender and recipient
            ("account", "account.updated"),
            ("products", "product.deleted"),
        ],
        "the refused order left no event"
    );
    assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id), "ids grow strictly");
    for event in &events {
        match event.topic.as_str() {
            "products" => assert_eq!(event.user_id, None, "products is public: {event:?}"),
            _ => assert!(event.user_id.is_some(), "{} is private: {event:?}", event.topic),
        }
    }
    let buyer_owned = Some(buyer_id.clone());

    assert_eq!(events[0].payload, created, "product.created carries the product");
    assert_eq!((events[1].user_id.as_ref(), &events[1].payload), (buyer_owned.as_ref(), &credited));
    assert_eq!(keys(&events[1].payload), ACCOUNT_KEYS);

    assert_eq!((id_of(&events[2].payload), events[2].payload["stock"].as_i64()), (widget.clone(), Some(3)));
    assert_eq!((events[3].user_id.as_ref(), &events[3].payload), (buyer_owned.as_ref(), &placed));
    assert_eq!(events[4].user_id, buyer_owned);
    assert_eq!(
        (events[4].payload["user_id"].as_str(), events[4].payload["balance_cents"].as_i64()),
        (Some(buyer_id.as_str()), Some(500))
    );

    assert_eq!((id_of(&events[5].payload), events[5].payload["stock"].as_i64()), (widget.clone(), Some(5)));
    assert_eq!((events[6].user_id.as_ref(), &events[6].payload), (buyer_owned.as_ref(), &cancelled));
    assert_eq!(events[6].payload["status"], "cancelled");
    assert_eq!(
        (events[7].user_id.as_ref(), events[7].payload["balance_cents"].as_i64()),
        (buyer_owned.as_ref(), Some(1000))
    );

    assert_eq!(events[8].payload["price_cents"], 300);
    let transfer_side: BTreeSet<(String, i64)> = events[9..11]
        .iter()
        .map(|e| {
            assert_eq!(e.user_id.as_deref(), e.payload["user_id"].as_str(), "the owner is the account's user");
            (e.user_id.clone().unwrap(), e.payload["balance_cents"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(transfer_side, BTreeSet::from([(buyer_id.clone(), 900), (friend_id.clone(), 100)]));
    assert_eq!(id_of(&events[11].payload), widget);
}

// PostgreSQL only: ids are drawn before commit, so the horizon must wait for every
// transaction that may hold one, including two that drew their ids with nothing ending in
// between (a snapshot would not list the second: it is at or above the snapshot's xmax).
on_postgres_only!(postgres_horizon: the_horizon_waits_for_every_open_appender_and_then_moves_past_both);

async fn the_horizon_waits_for_every_open_appender_and_then_moves_past_both() {
    use diesel::{connection::SimpleConnection, Connection, PgConnection, QueryableByName, RunQueryDsl};
    use storefront::db::{outbox_horizon::Horizon, DbConnection};
    #[derive(QueryableByName)]
    struct Number {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let app = TestApp::spawn(Backend::Postgres).await;
    let append = |conn: &mut PgConnection| {
        conn.batch_execute("BEGIN").unwrap();
        diesel::sql_query(
            "INSERT INTO events (topic, kind, payload, created_at) \
             VALUES ('products', 'product.updated', '{}', now()) RETURNING id AS n",
        )
        .get_result::<Number>(conn)
        .unwrap()
        .n
    };
    // Two writers append and stay open, the second after the first: nothing ends between.
    let (mut first, mut second) =
        (PgConnection::establish(&app.database_url).unwrap(), PgConnection::establish(&app.database_url).unwrap());
    let first_id = append(&mut first);
    let second_id = append(&mut second);
    assert!(second_id > first_id);

    let mut reader = DbConnection::establish(&app.database_url).unwrap();
    let mut horizon = Horizon::at(0);
    let open = horizon.advance(&mut reader).unwrap();
    assert!(open < first_id, "both are open: the horizon stays below {first_id}, not {open}");
    second.batch_execute("COMMIT").unwrap();
    let one_open = horizon.advance(&mut reader).unwrap();
    assert!(one_open < first_id, "the first is still open: {one_open} must stay below {first_id}");
    first.batch_execute("COMMIT").unwrap();
    let settled = horizon.advance(&mut reader).unwrap();
    assert!(settled >= second_id, "both committed: the horizon moves past {second_id}, not {settled}");
}
