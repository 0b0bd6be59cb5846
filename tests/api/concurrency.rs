//! Money and stock invariants under real parallel clients; assertions on outcomes only.

use std::collections::BTreeSet;

use crate::common::{assert_problem, shop::*, Backend, TestApp};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

on_both_backends!(
    spawn_for_load,
    forty_buyers_racing_for_ten_items_get_exactly_ten,
    concurrent_random_transfers_conserve_every_cent,
    one_key_sent_twenty_times_at_once_places_one_order,
);

/// A server for the load scenarios: these test correctness under contention, not load
/// shedding, so the database admission queue is made deep enough for every client at once.
async fn spawn_for_load(backend: Backend) -> TestApp {
    TestApp::builder(backend).setting("db-queue-depth", "1000").spawn().await
}

/// `count` users registered and logged in: (id, token) each. Sign-ups go eight at a time,
/// as the password hasher sheds bigger bursts (503) by design, and they are not under test.
async fn many_users(app: &TestApp, prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut users = Vec::with_capacity(count);
    let numbers: Vec<usize> = (0..count).collect();
    for batch in numbers.chunks(8) {
        let signed_up =
            join_all(batch.iter().map(|i| async move { app.user(&format!("{prefix}{i}@example.com")).await })).await;
        users.extend(signed_up);
    }
    users
}

async fn forty_buyers_racing_for_ten_items_get_exactly_ten(backend: Backend) {
    let app = spawn_for_load(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let print = product(&app, &admin, "Limited Print", 700, 10).await;
    let buyers = many_users(&app, "buyer", 40).await;
    join_all(buyers.iter().map(|(id, _)| deposit(&app, &admin, id, 1000))).await;

    let body = order_body(&[(&print, 1)]);
    let responses = join_all(buyers.iter().map(|(_, token)| app.send_json(Method::POST, ORDERS, token, &body))).await;

    let (mut winners, mut losers, mut order_ids) = (Vec::new(), Vec::new(), BTreeSet::new());
    for ((buyer_id, token), response) in buyers.iter().zip(responses) {
        match response.status().as_u16() {
            201 => {
                let placed = json_of(response).await;
                assert_eq!(
                    (placed["user_id"].as_str(), placed["total_cents"].as_i64()),
                    (Some(buyer_id.as_str()), Some(700))
                );
                order_ids.insert(id_of(&placed));
                winners.push(token);
            }
            409 => {
                let problem = assert_problem(response, 409).await;
                assert_eq!(problem["type"], INSUFFICIENT_STOCK);
                assert_eq!(problem["product_ids"], json!([print]));
                losers.push(token);
            }
            other => panic!("a racing buyer got {other}"),
        }
    }
    assert_eq!((winners.len(), losers.len()), (10, 30));
    assert_eq!(order_ids.len(), 10, "ten distinct orders");
    assert_eq!(stock(&app, &print).await, 0);
    assert_eq!(total(&app, ORDERS, &admin).await, 10);
    for token in winners {
        assert_eq!(balance(&app, token).await, 300, "each winner paid exactly once");
    }
    for token in losers {
        assert_eq!(balance(&app, token).await, 1000, "losers were not charged");
    }
}

async fn concurrent_random_transfers_conserve_every_cent(backend: Backend) {
    const USERS: usize = 8;
    const START: i64 = 10_000;
    let app = spawn_for_load(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let users = many_users(&app, "trader", USERS).await;
    join_all(users.iter().map(|(id, _)| deposit(&app, &admin, id, START))).await;

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let plan: Vec<(usize, usize, i64)> = (0..160)
        .map(|_| {
            let from = rng.below(USERS);
            let to = (from + 1 + rng.below(USERS - 1)) % USERS;
            let amount = 1 + i64::try_from(rng.below(4000)).unwrap();
            (from, to, amount)
        })
        .collect();
    let responses = join_all(plan.iter().map(|&(from, to, amount)| {
        let (app, users) = (&app, &users);
        async move { status_and_body(transfer(app, &users[from].1, &users[to].0, amount).await).await }
    }))
    .await;

    // Every answer is a success or a refusal, and the balances are exactly the starting
    // ones plus what the successful transfers moved.
    let mut expected = vec![START; USERS];
    let mut succeeded = 0;
    for (&(from, to, amount), (status, body)) in plan.iter().zip(&responses) {
        match status {
            201 => {
                assert_eq!(
                    (body["from_user_id"].as_str(), body["to_user_id"].as_str(), body["amount_cents"].as_i64()),
                    (Some(users[from].0.as_str()), Some(users[to].0.as_str()), Some(amount))
                );
                expected[from] -= amount;
                expected[to] += amount;
                succeeded += 1;
            }
            409 => assert_eq!(body["status"], 409),
            other => panic!("a transfer got {other}: {body}"),
        }
    }
    let balances = join_all(users.iter().map(|(_, token)| balance(&app, token))).await;
    assert_eq!(balances.iter().sum::<i64>(), START * i64::try_from(USERS).unwrap(), "no cent created or lost");
    assert!(balances.iter().all(|&b| b >= 0), "no balance negative: {balances:?}");
    assert_eq!(balances, expected, "balances reconcile with the successful transfers");
    let listed = join_all(users.iter().map(|(_, token)| total(&app, TRANSFERS, token))).await;
    assert_eq!(listed.iter().sum::<i64>(), 2 * succeeded, "each transfer is listed for its sender and recipient");
}

async fn one_key_sent_twenty_times_at_once_places_one_order(backend: Backend) {
    const KEY: &str = "poster-exactly-once";
    let app = spawn_for_load(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 10_000).await;
    let poster = product(&app, &admin, "Poster", 900, 50).await;
    let body = order_body(&[(&poster, 3)]);

    let responses = join_all((0..20).map(|_| keyed(&app, ORDERS, &buyer, KEY, &body))).await;
    let (mut created, mut in_progress) = (Vec::new(), 0);
    for response in responses {
        match response.status().as_u16() {
            201 => created.push(json_of(response).await),
            409 => {
                assert_problem(response, 409).await;
                in_progress += 1;
            }
            other => panic!("a duplicate got {other}"),
        }
    }
    assert!(!created.is_empty(), "at least one request placed the order");
    assert!(created.iter().all(|placed| *placed == created[0]), "every 201 carries the same order");
    assert_eq!(created.len() + in_progress, 20);

    let listed = page(&app, ORDERS, &buyer).await;
    assert_eq!((listed["total"].as_i64(), ids(&listed)), (Some(1), vec![id_of(&created[0])]), "exactly one order");
    assert_eq!(balance(&app, &buyer).await, 10_000 - 2700, "debited once");
    assert_eq!(stock(&app, &poster).await, 47);

    // Once the first has finished, a retry gets its answer.
    let later = status_and_body(keyed(&app, ORDERS, &buyer, KEY, &body).await).await;
    assert_eq!(later, (201, created[0].clone()));
}
