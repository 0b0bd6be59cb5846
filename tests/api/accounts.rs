//! Accounts and transfers: deposits by admins, transfers between users, refusals that
//! change nothing.

use crate::common::{assert_problem, shop::*, Backend, TestApp};
use reqwest::Method;
use serde_json::json;

on_both_backends!(
    accounts_start_empty_and_admins_deposit,
    transfers_move_money_and_both_parties_see_them,
    transfers_refuse_overdrafts_bad_amounts_and_unknown_recipients,
);

async fn accounts_start_empty_and_admins_deposit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;

    let account = page(&app, ACCOUNT, &alice).await;
    assert_eq!(keys(&account), ACCOUNT_KEYS);
    assert_eq!((account["user_id"].as_str(), account["balance_cents"].as_i64()), (Some(alice_id.as_str()), Some(0)));
    assert!(chrono::DateTime::parse_from_rfc3339(account["updated_at"].as_str().unwrap()).is_ok());
    let anonymous = app.get(ACCOUNT).await;
    assert_eq!(header(&anonymous, "www-authenticate"), "Bearer");
    assert_problem(anonymous, 401).await;

    let credited = deposit(&app, &admin, &alice_id, 2500).await;
    assert_eq!(keys(&credited), ACCOUNT_KEYS);
    assert_eq!(
        (credited["user_id"].as_str(), credited["balance_cents"].as_i64()),
        (Some(alice_id.as_str()), Some(2500))
    );
    assert_eq!(deposit(&app, &admin, &alice_id, 500).await["balance_cents"], 3000);
    assert_eq!(page(&app, ACCOUNT, &alice).await["balance_cents"], 3000);
    let largest = deposit(&app, &admin, &alice_id, 1_000_000_000_000).await;
    assert_eq!(largest["balance_cents"], 1_000_000_003_000_i64);

    // Refusals change nothing.
    let path = deposit_path(&alice_id);
    for amount in [0_i64, -100, 1_000_000_000_001] {
        let refused = app.send_json(Method::POST, &path, &admin, &json!({"amount_cents": amount})).await;
        let problem = assert_problem(refused, 422).await;
        assert_eq!(problem["errors"][0]["field"], "amount_cents", "amount {amount}");
    }
    assert_problem(app.send_json(Method::POST, &path, &admin, &json!({"amount_cents": "lots"})).await, 400).await;
    assert_problem(app.send_json(Method::POST, &path, &alice, &json!({"amount_cents": 100})).await, 403).await;
    assert_problem(app.post_json(&path, &json!({"amount_cents": 100})).await, 401).await;
    let stranger = deposit_path(&uuid::Uuid::now_v7().to_string());
    assert_problem(app.send_json(Method::POST, &stranger, &admin, &json!({"amount_cents": 100})).await, 404).await;
    assert_eq!(balance(&app, &alice).await, 1_000_000_003_000);
}

async fn transfers_move_money_and_both_parties_see_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let (bob_id, bob) = app.user("bob@example.com").await;
    let (carol_id, carol) = app.user("carol@example.com").await;
    deposit(&app, &admin, &alice_id, 1000).await;

    let response = transfer(&app, &alice, &bob_id, 300).await;
    assert_eq!(response.status(), 201);
    let first = json_of(response).await;
    assert_eq!(keys(&first), TRANSFER_KEYS);
    assert!(uuid::Uuid::parse_str(&id_of(&first)).is_ok());
    assert_eq!(
        (first["from_user_id"].as_str(), first["to_user_id"].as_str(), first["amount_cents"].as_i64()),
        (Some(alice_id.as_str()), Some(bob_id.as_str()), Some(300))
    );
    assert!(chrono::DateTime::parse_from_rfc3339(first["created_at"].as_str().unwrap()).is_ok());
    assert_eq!((balance(&app, &alice).await, balance(&app, &bob).await), (700, 300));

    let response = transfer(&app, &bob, &alice_id, 100).await;
    assert_eq!(response.status(), 201);
    let second = json_of(response).await;
    assert_eq!((balance(&app, &alice).await, balance(&app, &bob).await), (800, 200));

    // Both parties see both transfers, newest first; a bystander sees none.
    for token in [&alice, &bob] {
        let listed = page(&app, TRANSFERS, token).await;
        assert_eq!(listed["total"], 2);
        assert_eq!(ids(&listed), [id_of(&second), id_of(&first)]);
        assert_eq!(listed["data"][1], first);
    }
    assert_eq!(total(&app, TRANSFERS, &carol).await, 0);
    assert_problem(app.get(TRANSFERS).await, 401).await;

    // A whole balance may be sent.
    assert_eq!(transfer(&app, &bob, &carol_id, 200).await.status(), 201);
    assert_eq!((balance(&app, &bob).await, balance(&app, &carol).await), (0, 200));
    assert_eq!(total(&app, TRANSFERS, &carol).await, 1);
}

async fn transfers_refuse_overdrafts_bad_amounts_and_unknown_recipients(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let (bob_id, bob) = app.user("bob@example.com").await;
    let (dave_id, _) = app.user("dave@example.com").await;
    deposit(&app, &admin, &alice_id, 500).await;

    assert_problem(transfer(&app, &alice, &bob_id, 501).await, 409).await;
    for amount in [0, -1, 1_000_000_000_001] {
        let refused = assert_problem(transfer(&app, &alice, &bob_id, amount).await, 422).await;
        assert_eq!(fields(&refused), ["amount_cents"], "amount {amount}");
    }
    let to_self = assert_problem(transfer(&app, &alice, &alice_id, 100).await, 422).await;
    assert_eq!(fields(&to_self), ["to_user_id"]);
    assert_problem(transfer(&app, &alice, &uuid::Uuid::now_v7().to_string(), 100).await, 404).await;
    assert_eq!(delete(&app, &format!("/api/v1/users/{dave_id}"), &admin).await.status(), 204);
    assert_problem(transfer(&app, &alice, &dave_id, 100).await, 404).await;
    assert_problem(app.post_json(TRANSFERS, &transfer_body(&bob_id, 100)).await, 401).await;
    let unknown_field = app
        .send_json(Method::POST, TRANSFERS, &alice, &json!({"to_user_id": bob_id, "amount_cents": 1, "memo": "hi"}))
        .await;
    assert_problem(unknown_field, 422).await;

    assert_eq!((balance(&app, &alice).await, balance(&app, &bob).await), (500, 0), "nothing moved");
    assert_eq!(total(&app, TRANSFERS, &alice).await, 0);
    assert_eq!(transfer(&app, &alice, &bob_id, 500).await.status(), 201, "exactly the balance is fine");
    assert_eq!((balance(&app, &alice).await, balance(&app, &bob).await), (0, 500));
}
