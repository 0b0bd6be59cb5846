//! Idempotent retries: a request sent again with its `Idempotency-Key` applies once and
//! answers the same.

use crate::common::{assert_problem, shop::*, Backend, TestApp};
use reqwest::header::HeaderValue;
use serde_json::json;

on_both_backends!(
    an_order_retried_with_its_key_is_placed_once,
    deposits_and_transfers_retried_with_their_keys_apply_once,
    a_refused_request_retried_with_its_key_is_refused_the_same_way,
);

async fn an_order_retried_with_its_key_is_placed_once(backend: Backend) {
    const KEY: &str = "order-2026-0001";
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    let (other_id, other) = app.user("other@example.com").await;
    deposit(&app, &admin, &buyer_id, 10_000).await;
    deposit(&app, &admin, &other_id, 10_000).await;
    let print = product(&app, &admin, "Print", 700, 10).await;
    let body = order_body(&[(&print, 2)]);

    let first_response = keyed(&app, ORDERS, &buyer, KEY, &body).await;
    let first_location = header(&first_response, "location");
    let first = status_and_body(first_response).await;
    assert_eq!(first.0, 201);
    assert_eq!(first_location, format!("{ORDERS}/{}", id_of(&first.1)));
    let retried_response = keyed(&app, ORDERS, &buyer, KEY, &body).await;
    assert_eq!(header(&retried_response, "location"), first_location, "a replay points at the same order");
    assert_eq!(header(&retried_response, "idempotent-replayed"), "true");
    let retried = status_and_body(retried_response).await;
    assert_eq!(retried, first, "the retry answers exactly as the first request did");
    assert_eq!((stock(&app, &print).await, balance(&app, &buyer).await), (8, 8600), "one effect");
    assert_eq!(total(&app, ORDERS, &buyer).await, 1);

    // The same key with another body is refused and has no effect.
    let reused = keyed(&app, ORDERS, &buyer, KEY, &order_body(&[(&print, 3)])).await;
    assert_problem(reused, 422).await;
    assert_eq!((stock(&app, &print).await, balance(&app, &buyer).await), (8, 8600));
    assert_eq!(total(&app, ORDERS, &buyer).await, 1);

    // Keys are per user: another user's identical key and body is a new order.
    let theirs = status_and_body(keyed(&app, ORDERS, &other, KEY, &body).await).await;
    assert_eq!(theirs.0, 201);
    assert_ne!(id_of(&theirs.1), id_of(&first.1));
    assert_eq!(theirs.1["user_id"], other_id.as_str());
    assert_eq!((stock(&app, &print).await, balance(&app, &other).await), (6, 8600));
    assert_eq!(balance(&app, &buyer).await, 8600);

    // Keys must be 1 to 255 visible ASCII characters.
    let one = order_body(&[(&print, 1)]);
    let long = "k".repeat(256);
    for key in [
        HeaderValue::from_static(""),
        HeaderValue::from_static("two words"),
        HeaderValue::from_str(&long).unwrap(),
        HeaderValue::from_bytes("café".as_bytes()).unwrap(),
    ] {
        let refused = keyed_raw(&app, ORDERS, &buyer, key, &one).await;
        assert_problem(refused, 422).await;
    }
    assert_eq!((stock(&app, &print).await, balance(&app, &buyer).await), (6, 8600));
    let longest = keyed(&app, ORDERS, &buyer, &"k".repeat(255), &one).await;
    assert_eq!(longest.status(), 201);
    assert_eq!((stock(&app, &print).await, balance(&app, &buyer).await), (5, 7900));
}

async fn deposits_and_transfers_retried_with_their_keys_apply_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let (bob_id, bob) = app.user("bob@example.com").await;

    let credit = json!({"amount_cents": 5000});
    let path = deposit_path(&alice_id);
    let first = status_and_body(keyed(&app, &path, &admin, "deposit-001", &credit).await).await;
    assert_eq!((first.0, first.1["balance_cents"].as_i64()), (201, Some(5000)));
    let retried = status_and_body(keyed(&app, &path, &admin, "deposit-001", &credit).await).await;
    assert_eq!(retried, first);
    assert_eq!(balance(&app, &alice).await, 5000, "credited once");
    assert_problem(keyed(&app, &path, &admin, "deposit-001", &json!({"amount_cents": 6000})).await, 422).await;
    assert_eq!(balance(&app, &alice).await, 5000);

    let send = transfer_body(&bob_id, 1200);
    let first = status_and_body(keyed(&app, TRANSFERS, &alice, "transfer-001", &send).await).await;
    assert_eq!(first.0, 201);
    let retried = status_and_body(keyed(&app, TRANSFERS, &alice, "transfer-001", &send).await).await;
    assert_eq!(retried, first);
    assert_eq!((balance(&app, &alice).await, balance(&app, &bob).await), (3800, 1200), "moved once");
    assert_eq!(total(&app, TRANSFERS, &alice).await, 1);
    let reused = keyed(&app, TRANSFERS, &alice, "transfer-001", &transfer_body(&bob_id, 1300)).await;
    assert_problem(reused, 422).await;
    assert_eq!((balance(&app, &alice).await, balance(&app, &bob).await), (3800, 1200));

    // Bob's "transfer-001" is his own key.
    let bobs =
        status_and_body(keyed(&app, TRANSFERS, &bob, "transfer-001", &transfer_body(&alice_id, 200)).await).await;
    assert_eq!(bobs.0, 201);
    assert_ne!(id_of(&bobs.1), id_of(&first.1));
    assert_eq!((balance(&app, &alice).await, balance(&app, &bob).await), (4000, 1000));
    assert_eq!(total(&app, TRANSFERS, &alice).await, 2);
}

async fn a_refused_request_retried_with_its_key_is_refused_the_same_way(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 100).await;
    let rug = product(&app, &admin, "Rug", 500, 3).await;
    let body = order_body(&[(&rug, 1)]);

    let first = status_and_body(keyed(&app, ORDERS, &buyer, "rug-1", &body).await).await;
    assert_eq!((first.0, first.1["type"].as_str()), (409, Some(INSUFFICIENT_FUNDS)));
    // Even once it could succeed, the key stands for its first answer.
    deposit(&app, &admin, &buyer_id, 1000).await;
    let retried = status_and_body(keyed(&app, ORDERS, &buyer, "rug-1", &body).await).await;
    assert_eq!(retried, first);
    assert_eq!((stock(&app, &rug).await, balance(&app, &buyer).await), (3, 1100));
    assert_eq!(total(&app, ORDERS, &buyer).await, 0);

    assert_eq!(keyed(&app, ORDERS, &buyer, "rug-2", &body).await.status(), 201);
    assert_eq!((stock(&app, &rug).await, balance(&app, &buyer).await), (2, 600));
}
