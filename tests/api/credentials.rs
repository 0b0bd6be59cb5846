//! Credentials a stolen token cannot take over: changing one's own password or email needs
//! the current password (checked like a sign-in, and throttled like one), an admin's reset
//! of another user needs none, changes per account are limited, nothing is hashed before
//! the cheap checks pass, and names refuse invisible and direction-changing characters.

use std::time::Duration;

use crate::common::{assert_problem, Backend, TestApp, PASSWORD};
use reqwest::{header, Method};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

on_both_backends!(
    changing_ones_own_password_needs_the_current_password,
    changing_ones_own_email_needs_the_current_password_and_voids_other_tokens,
    an_admin_resets_another_user_without_their_password,
    wrong_current_passwords_count_as_failed_sign_ins_and_are_throttled,
    credential_changes_per_account_are_limited,
    refusals_that_need_no_hash_compute_none,
    names_refuse_invisible_and_direction_changing_characters,
    a_request_whose_token_was_voided_while_it_was_under_way_changes_nothing,
    a_users_held_change_loses_to_an_admins_reset_made_meanwhile,
    admin_resets_spend_the_admins_budget_not_the_users,
    json_members_given_twice_are_refused,
    sign_ins_find_exactly_the_emails_registration_calls_the_same,
    names_refuse_default_ignorable_separating_and_private_use_characters,
);

const REAUTHENTICATE: &str = "urn:storefront:problem:reauthentication-required";

fn user_path(id: &str) -> String {
    format!("/api/v1/users/{id}")
}

async fn me(app: &TestApp, token: &str) -> u16 {
    app.get_as("/api/v1/users/me", token).await.status().as_u16()
}

/// argon2id runs completed so far: (hashes, verifications). Each is counted before its
/// caller is answered, so after a response nothing of that request is still to come.
async fn hasher_runs(app: &TestApp) -> (f64, f64) {
    (
        app.metric(r#"storefront_password_hasher_runs_total{operation="hash"}"#).await,
        app.metric(r#"storefront_password_hasher_runs_total{operation="verify"}"#).await,
    )
}

async fn changing_ones_own_password_needs_the_current_password(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, token) = app.user("alice@example.com").await;
    let path = user_path(&alice_id);
    let new_password = "a brand new secret";

    let missing = app.send_json(Method::PATCH, &path, &token, &json!({"password": new_password})).await;
    assert_eq!(assert_problem(missing, 403).await["type"], REAUTHENTICATE);
    let wrong = json!({"password": new_password, "current_password": "not my password"});
    let wrong = app.send_json(Method::PATCH, &path, &token, &wrong).await;
    let problem = assert_problem(wrong, 403).await;
    assert_eq!(problem["type"], REAUTHENTICATE);
    assert!(!problem["detail"].as_str().unwrap().contains(new_password));
    // Nothing changed: the old password and the old token still work.
    assert_eq!(me(&app, &token).await, 200);
    assert_eq!(app.login("alice@example.com", new_password).await.status(), 401);
    assert_eq!(app.login("alice@example.com", PASSWORD).await.status(), 200);

    let right = json!({"password": new_password, "current_password": PASSWORD});
    let changed = app.send_json(Method::PATCH, &path, &token, &right).await;
    assert_eq!(changed.status(), 200);
    assert_eq!(changed.headers()["cache-control"], "no-store");
    let body: Value = changed.json().await.unwrap();
    assert_eq!((body["id"].as_str(), body["email"].as_str()), (Some(alice_id.as_str()), Some("alice@example.com")));
    assert_eq!((body["token_type"].as_str(), body["expires_in"].as_u64()), (Some("Bearer"), Some(900)));
    assert!(body.get("password").is_none() && body.get("current_password").is_none());
    let fresh = body["access_token"].as_str().unwrap();
    assert_eq!(me(&app, &token).await, 401, "every earlier token is void");
    assert_eq!(me(&app, fresh).await, 200, "the client that made the change stays signed in");
    assert_eq!(app.login("alice@example.com", PASSWORD).await.status(), 401);
    assert_eq!(app.login("alice@example.com", new_password).await.status(), 200);

    // A change that touches no credential needs no password and rotates no token.
    let renamed = app.send_json(Method::PATCH, &path, fresh, &json!({"name": "Alice"})).await;
    assert_eq!(renamed.status(), 200);
    assert!(renamed.json::<Value>().await.unwrap().get("access_token").is_none());
    let unchanged_email = json!({"name": "Alice L.", "email": "ALICE@example.com"});
    assert_eq!(app.send_json(Method::PATCH, &path, fresh, &unchanged_email).await.status(), 200);
    assert_eq!(me(&app, fresh).await, 200);
}

async fn changing_ones_own_email_needs_the_current_password_and_voids_other_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, phone) = app.user("alice@example.com").await;
    let laptop = app.token_for("alice@example.com").await;
    let path = user_path(&alice_id);

    let missing = app.send_json(Method::PATCH, &path, &phone, &json!({"email": "thief@example.com"})).await;
    assert_eq!(assert_problem(missing, 403).await["type"], REAUTHENTICATE);
    let wrong = json!({"email": "thief@example.com", "current_password": "guess"});
    assert_eq!(
        assert_problem(app.send_json(Method::PATCH, &path, &phone, &wrong).await, 403).await["type"],
        REAUTHENTICATE
    );
    let unmoved: Value = app.get_as("/api/v1/users/me", &laptop).await.json().await.unwrap();
    assert_eq!(unmoved["email"], "alice@example.com");
    assert_eq!(app.login("thief@example.com", PASSWORD).await.status(), 401);

    let right = json!({"email": "Alice.New@Example.com", "current_password": PASSWORD});
    let moved = app.send_json(Method::PATCH, &path, &phone, &right).await;
    assert_eq!(moved.status(), 200);
    let body: Value = moved.json().await.unwrap();
    assert_eq!(body["email"], "alice.new@example.com");
    let fresh = body["access_token"].as_str().unwrap();
    assert_eq!(me(&app, &laptop).await, 401, "the other device is signed out");
    assert_eq!(me(&app, &phone).await, 401, "so is the token that asked");
    assert_eq!(me(&app, fresh).await, 200);
    assert_eq!(app.login("alice@example.com", PASSWORD).await.status(), 401);
    assert_eq!(app.login("alice.new@example.com", PASSWORD).await.status(), 200);
}

async fn an_admin_resets_another_user_without_their_password(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (root_id, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;

    let reset = json!({"password": "reset by the admin", "email": "alice@corp.example.com"});
    let done = app.send_json(Method::PATCH, &user_path(&alice_id), &admin, &reset).await;
    assert_eq!(done.status(), 200);
    let body: Value = done.json().await.unwrap();
    assert_eq!(body["email"], "alice@corp.example.com");
    assert!(body.get("access_token").is_none(), "the admin's own tokens were not touched");
    assert_eq!(me(&app, &alice).await, 401, "the target's tokens are void");
    assert_eq!(me(&app, &admin).await, 200);
    assert_eq!(app.login("alice@corp.example.com", "reset by the admin").await.status(), 200);

    // An admin's own password is their own: it needs theirs.
    let own = app.send_json(Method::PATCH, &user_path(&root_id), &admin, &json!({"password": "new root secret"})).await;
    assert_eq!(assert_problem(own, 403).await["type"], REAUTHENTICATE);
    assert_eq!(me(&app, &admin).await, 200);
}

async fn wrong_current_passwords_count_as_failed_sign_ins_and_are_throttled(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, token) = app.user("alice@example.com").await;
    let path = user_path(&alice_id);
    for guess in 1..=5 {
        let body = json!({"password": "taken over", "current_password": format!("guess {guess}")});
        let refused = app.send_json(Method::PATCH, &path, &token, &body).await;
        assert_eq!(assert_problem(refused, 403).await["type"], REAUTHENTICATE, "guess {guess}");
    }
    // The sixth try is throttled like a sixth failed sign-in, even with the right password.
    let right = json!({"password": "taken over", "current_password": PASSWORD});
    let throttled = app.send_json(Method::PATCH, &path, &token, &right).await;
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((800..=900).contains(&retry_after), "the sign-in window: {retry_after}");
    assert_problem(throttled, 429).await;
    // The guesses counted against sign-ins for the email, from this address.
    assert_problem(app.login("alice@example.com", PASSWORD).await, 429).await;
    assert_eq!(me(&app, &token).await, 200, "nothing changed");
}

async fn credential_changes_per_account_are_limited(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, mut token) = app.user("alice@example.com").await;
    let path = user_path(&alice_id);
    // A wrong password changes nothing, so it is not counted against the account's changes.
    let wrong = json!({"password": "never set", "current_password": "guess"});
    assert_problem(app.send_json(Method::PATCH, &path, &token, &wrong).await, 403).await;

    let mut current = PASSWORD.to_owned();
    for change in 1..=5 {
        let next = format!("password number {change}");
        let body = json!({"password": next, "current_password": current});
        let changed = app.send_json(Method::PATCH, &path, &token, &body).await;
        assert_eq!(changed.status(), 200, "change {change}");
        token = changed.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
        current = next;
    }
    let sixth = json!({"password": "one too many", "current_password": current});
    let refused = app.send_json(Method::PATCH, &path, &token, &sixth).await;
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry_after), "the hour's window: {retry_after}");
    assert_problem(refused, 429).await;
    let email = json!({"email": "elsewhere@example.com", "current_password": current});
    assert_problem(app.send_json(Method::PATCH, &path, &token, &email).await, 429).await;
    assert_eq!(app.login("alice@example.com", "one too many").await.status(), 401, "nothing changed");
    assert_eq!(me(&app, &token).await, 200);
    // The account is limited, not the caller's other changes.
    assert_eq!(app.send_json(Method::PATCH, &path, &token, &json!({"name": "Still Alice"})).await.status(), 200);
}

async fn refusals_that_need_no_hash_compute_none(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    app.register("taken@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let (bob_id, _) = app.user("bob@example.com").await;
    let (alice_path, bob_path) = (user_path(&alice_id), user_path(&bob_id));

    let before = hasher_runs(&app).await;
    let taken = json!({"email": "Taken@Example.com", "password": "a new secret", "current_password": PASSWORD});
    assert_problem(app.send_json(Method::PATCH, &alice_path, &alice, &taken).await, 409).await;
    let reset = json!({"email": "taken@example.com", "password": "a new secret"});
    assert_problem(app.send_json(Method::PATCH, &bob_path, &admin, &reset).await, 409).await;
    let invalid = json!({"email": "taken@example.com", "password": "short", "current_password": PASSWORD});
    assert_problem(app.send_json(Method::PATCH, &alice_path, &alice, &invalid).await, 422).await;
    assert_problem(app.send_json(Method::PATCH, &alice_path, &alice, &json!({"password": "a new secret"})).await, 403)
        .await;
    let escalate = json!({"role": "admin", "password": "a new secret", "current_password": PASSWORD});
    assert_problem(app.send_json(Method::PATCH, &alice_path, &alice, &escalate).await, 403).await;
    let not_hers = json!({"password": "a new secret", "current_password": PASSWORD});
    assert_problem(app.send_json(Method::PATCH, &bob_path, &alice, &not_hers).await, 404).await;
    assert_eq!(hasher_runs(&app).await, before, "no argon2id run for any of those refusals");

    let register = json!({"email": "TAKEN@example.com", "password": PASSWORD, "name": "Again"});
    assert_problem(app.post_json("/api/v1/auth/register", &register).await, 409).await;
    assert_eq!(hasher_runs(&app).await, before, "a registration with a taken email hashes nothing either");

    // The same request with a free email does hash: the counter would have shown it.
    let free = json!({"email": "alice2@example.com", "password": "a new secret", "current_password": PASSWORD});
    assert_eq!(app.send_json(Method::PATCH, &alice_path, &alice, &free).await.status(), 200);
    let after = hasher_runs(&app).await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (1.0, 1.0), "one check of the current password, one new hash");

    // A sign-in for an unknown email still costs a full verification (the dummy hash).
    assert_problem(app.login("nobody@example.com", PASSWORD).await, 401).await;
    assert_eq!(hasher_runs(&app).await.1, after.1 + 1.0);
}

async fn names_refuse_invisible_and_direction_changing_characters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let format_characters =
        ["evil\u{202E}gpj.exe", "Ali\u{200B}ce", "\u{2066}x\u{2069}", "a\u{2067}b\u{2068}c", "\u{FEFF}Bob"];
    let named =
        |problem: Value| problem["errors"].as_array().unwrap().iter().map(|e| e["field"].clone()).collect::<Vec<_>>();

    for name in format_characters {
        let register = json!({"email": "mallory@example.com", "password": PASSWORD, "name": name});
        let refused = assert_problem(app.post_json("/api/v1/auth/register", &register).await, 422).await;
        assert_eq!(named(refused), ["name"], "{name:?}");
        let patch = app.send_json(Method::PATCH, &user_path(&alice_id), &alice, &json!({"name": name})).await;
        assert_eq!(named(assert_problem(patch, 422).await), ["name"], "{name:?}");
        let product = json!({"name": name, "price_cents": 100, "stock": 1});
        let created = app.send_json(Method::POST, "/api/v1/products", &admin, &product).await;
        assert_eq!(named(assert_problem(created, 422).await), ["name"], "{name:?}");
    }
    // Nothing was stored.
    assert_eq!(app.login("mallory@example.com", PASSWORD).await.status(), 401);
    let me: Value = app.get_as("/api/v1/users/me", &alice).await.json().await.unwrap();
    assert_eq!(me["name"], "Test User");
    let products: Value = app.get("/api/v1/products").await.json().await.unwrap();
    assert_eq!(products["total"], 0);

    // A product renamed to one; a description (free prose) may hold a joiner.
    let made = json!({"name": "Laptop", "description": "for 👩\u{200D}💻", "price_cents": 100, "stock": 1});
    let created = app.send_json(Method::POST, "/api/v1/products", &admin, &made).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/products/{id}");
    let renamed = app.send_json(Method::PATCH, &path, &admin, &json!({"name": "Lap\u{202E}top"})).await;
    assert_eq!(named(assert_problem(renamed, 422).await), ["name"]);
    let product: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!((product["name"].as_str(), product["description"].as_str()), (Some("Laptop"), Some("for 👩\u{200D}💻")));
}

/// Every lookup of a user by the cache tiers so far (a request's token is checked by one).
async fn user_lookups(app: &TestApp) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with(r#"storefront_cache_requests_total{cache="users""#))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A PATCH whose headers, with their token, reach the server now, and whose body follows
/// only when `finish` is called: a client on a slow link, or a thief holding a request back.
struct HeldPatch {
    stream: TcpStream,
    body: Vec<u8>,
}

/// Sends the headers, and returns once the server looked the token's user up: the request
/// is authorized from then on, before anything the test does next.
async fn hold_patch(app: &TestApp, path: &str, token: &str, body: &Value) -> HeldPatch {
    let lookups = user_lookups(app).await;
    let body = serde_json::to_vec(body).unwrap();
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while user_lookups(app).await <= lookups {
        assert!(tokio::time::Instant::now() < deadline, "the held request's token was never checked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    HeldPatch { stream, body }
}

impl HeldPatch {
    /// Sends the body: the status and the problem (or user) answered.
    async fn finish(mut self) -> (u16, Value) {
        self.stream.write_all(&self.body).await.unwrap();
        let mut response = Vec::new();
        self.stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        let status = response.get(9..12).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{response}"));
        let json = match (response.find('{'), response.rfind('}')) {
            (Some(start), Some(end)) => serde_json::from_str(&response[start..=end]).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        (status, json)
    }
}

async fn access_token(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

async fn a_request_whose_token_was_voided_while_it_was_under_way_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, stolen) = app.user("alice@example.com").await;
    let laptop = app.token_for("alice@example.com").await;
    let path = user_path(&alice_id);

    // A request sent after the password changed is refused at the door (the token's
    // generation is gone), whatever its body.
    let sent_late = app.send_json(Method::PATCH, &path, &stolen, &json!({"name": "Mallory"})).await;
    assert_eq!(sent_late.status(), 200, "the token is good until the change");
    let held_rename = hold_patch(&app, &path, &stolen, &json!({"name": "Mallory again"})).await;
    let held_email =
        hold_patch(&app, &path, &stolen, &json!({"email": "thief@example.com", "current_password": PASSWORD})).await;

    let change = json!({"password": "the owner's new secret", "current_password": PASSWORD});
    let laptop = access_token(app.send_json(Method::PATCH, &path, &laptop, &change).await).await;
    assert_eq!(me(&app, &stolen).await, 401);
    let late = app.send_json(Method::PATCH, &path, &stolen, &json!({"name": "Mallory late"})).await;
    assert_problem(late, 401).await;

    // Requests authorized before the change, whose bodies arrive after it, are refused too:
    // no write, no fresh token.
    let (status, problem) = held_rename.finish().await;
    assert_eq!(status, 401, "{problem}");
    let (status, problem) = held_email.finish().await;
    assert_eq!(status, 401, "{problem}");
    assert!(problem.get("access_token").is_none());
    let alice: Value = app.get_as("/api/v1/users/me", &laptop).await.json().await.unwrap();
    assert_eq!((alice["name"].as_str(), alice["email"].as_str()), (Some("Mallory"), Some("alice@example.com")));
    assert_eq!(app.login("thief@example.com", PASSWORD).await.status(), 401);
    assert_eq!(app.login("alice@example.com", "the owner's new secret").await.status(), 200);
    // The refused request did not count as a failed sign-in either: five wrong guesses
    // from here are what it takes to be throttled, as ever.
    for guess in 1..=4 {
        assert_eq!(app.login("alice@example.com", &format!("guess {guess}")).await.status(), 401);
    }
    assert_eq!(app.login("alice@example.com", "the owner's new secret").await.status(), 200);
}

async fn a_users_held_change_loses_to_an_admins_reset_made_meanwhile(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let path = user_path(&alice_id);

    // Verified against the password as it was when the request was authorized; the reset
    // comes while its body is on the way.
    let held =
        hold_patch(&app, &path, &alice, &json!({"password": "set by the thief", "current_password": PASSWORD})).await;
    let reset = app.send_json(Method::PATCH, &path, &admin, &json!({"password": "reset by the admin"})).await;
    assert_eq!(reset.status(), 200);
    let (status, problem) = held.finish().await;
    assert_eq!(status, 401, "{problem}");

    assert_eq!(app.login("alice@example.com", "set by the thief").await.status(), 401);
    assert_eq!(app.login("alice@example.com", "reset by the admin").await.status(), 200, "the reset stands");
}

async fn reset_password(app: &TestApp, admin: &str, path: &str, number: u32) -> reqwest::Response {
    app.send_json(Method::PATCH, path, admin, &json!({"password": format!("reset number {number}")})).await
}

async fn admin_resets_spend_the_admins_budget_not_the_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (root_id, admin) = app.admin("root@example.com").await;
    let (alice_id, _) = app.user("alice@example.com").await;
    let path = user_path(&alice_id);
    // More resets than a user may make changes: none is charged to Alice.
    for number in 1..=6 {
        assert_eq!(reset_password(&app, &admin, &path, number).await.status(), 200);
    }
    let mut current = "reset number 6".to_owned();
    let mut token = access_token(app.login("alice@example.com", &current).await).await;
    for change in 1..=5 {
        let next = format!("alice's own number {change}");
        let body = json!({"password": next, "current_password": current});
        token = access_token(app.send_json(Method::PATCH, &path, &token, &body).await).await;
        current = next;
    }
    let sixth = json!({"password": "one too many", "current_password": current});
    assert_problem(app.send_json(Method::PATCH, &path, &token, &sixth).await, 429).await;

    // Alice's spent budget does not stand in the way of the admin helping her.
    assert_eq!(reset_password(&app, &admin, &path, 7).await.status(), 200);
    // The admin's resets are limited: twenty an hour, counted against the admin.
    for number in 8..=20 {
        assert_eq!(reset_password(&app, &admin, &path, number).await.status(), 200);
    }
    let refused = reset_password(&app, &admin, &path, 21).await;
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry_after), "the hour's window: {retry_after}");
    assert_problem(refused, 429).await;
    assert_eq!(app.login("alice@example.com", "reset number 20").await.status(), 200, "the 20th reset stands");
    // Nor is the admin's own password held up by their resets.
    let own = json!({"password": "root's own new secret", "current_password": PASSWORD});
    assert_eq!(app.send_json(Method::PATCH, &user_path(&root_id), &admin, &own).await.status(), 200);
}

async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &'static str,
) -> reqwest::Response {
    let mut request = app.request(method, path).header(header::CONTENT_TYPE, "application/json").body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn json_members_given_twice_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let path = user_path(&alice_id);
    let named =
        |problem: Value| problem["errors"].as_array().unwrap().iter().map(|e| e["field"].clone()).collect::<Vec<_>>();

    let register = r#"{"email":"bob@example.com","password":"correct horse battery","name":"Bob","password":"x"}"#;
    let refused = send_raw(&app, Method::POST, "/api/v1/auth/register", None, register).await;
    assert_eq!(named(assert_problem(refused, 422).await), ["password"]);
    assert_eq!(app.login("bob@example.com", PASSWORD).await.status(), 401, "not registered");

    let login = r#"{"email":"mallory@example.com","email":"alice@example.com","password":"correct horse battery"}"#;
    let refused = send_raw(&app, Method::POST, "/api/v1/auth/login", None, login).await;
    assert_eq!(named(assert_problem(refused, 422).await), ["email"]);

    // Which password would be checked, which set? Neither.
    let change =
        r#"{"password":"first new secret","current_password":"correct horse battery","password":"second new secret"}"#;
    let refused = send_raw(&app, Method::PATCH, &path, Some(&alice), change).await;
    assert_eq!(named(assert_problem(refused, 422).await), ["password"]);
    let guess =
        r#"{"password":"a new secret","current_password":"a guess","current_password":"correct horse battery"}"#;
    let refused = send_raw(&app, Method::PATCH, &path, Some(&alice), guess).await;
    assert_eq!(named(assert_problem(refused, 422).await), ["current_password"]);
    let reset = r#"{"email":"alice@example.com","email":"admin-owned@example.com"}"#;
    let refused = send_raw(&app, Method::PATCH, &path, Some(&admin), reset).await;
    assert_eq!(named(assert_problem(refused, 422).await), ["email"]);
    assert_eq!(me(&app, &alice).await, 200, "nothing changed");
    assert_eq!(app.login("alice@example.com", PASSWORD).await.status(), 200);

    // Every JSON body goes through the same parser.
    let product = r#"{"name":"Laptop","price_cents":100,"stock":1,"price_cents":1}"#;
    let refused = send_raw(&app, Method::POST, "/api/v1/products", Some(&admin), product).await;
    assert_eq!(named(assert_problem(refused, 422).await), ["price_cents"]);
}

async fn sign_ins_find_exactly_the_emails_registration_calls_the_same(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let register = json!({"email": "Kate.Smith@Example.COM", "password": PASSWORD, "name": "Kate"});
    assert_eq!(app.post_json("/api/v1/auth/register", &register).await.status(), 201);

    // Any case of its ASCII letters is the same email, to sign-in and registration alike.
    for typed in ["kate.smith@example.com", "KATE.SMITH@EXAMPLE.COM", " kAtE.sMiTh@example.Com "] {
        assert_eq!(app.login(typed, PASSWORD).await.status(), 200, "{typed:?}");
        let again = json!({"email": typed, "password": PASSWORD, "name": "Kate again"});
        assert_problem(app.post_json("/api/v1/auth/register", &again).await, 409).await;
    }
    // Characters that only Unicode's lower-casing turns into these letters (the Kelvin sign
    // K, a dotted capital I) make no email registration accepts, so no sign-in finds Kate.
    for lookalike in ["\u{212A}ate.smith@example.com", "\u{212A}ATE.SMITH@EXAMPLE.COM", "kate.sm\u{130}th@example.com"]
    {
        let again = json!({"email": lookalike, "password": PASSWORD, "name": "Kate again"});
        let refused = assert_problem(app.post_json("/api/v1/auth/register", &again).await, 422).await;
        assert_eq!(refused["errors"][0]["field"], "email");
        assert_problem(app.login(lookalike, PASSWORD).await, 401).await;
    }
    // Nor do failures under such a lookalike count against Kate's email: with the two
    // above, five in all, as many as would throttle hers.
    for _ in 1..=3 {
        assert_problem(app.login("\u{212A}ate.smith@example.com", "a guess").await, 401).await;
    }
    assert_eq!(app.login("KATE.smith@example.com", PASSWORD).await.status(), 200);
}

async fn names_refuse_default_ignorable_separating_and_private_use_characters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let named =
        |problem: Value| problem["errors"].as_array().unwrap().iter().map(|e| e["field"].clone()).collect::<Vec<_>>();
    let refused = [
        "Ali\u{FE0F}ce",  // variation selector 16
        "Ali\u{E0100}ce", // variation selector 17
        "\u{3164}",       // Hangul filler: looks blank, is a letter
        "Bo\u{115F}b",    // Hangul choseong filler
        "Bo\u{FFA0}b",    // halfwidth Hangul filler
        "a\u{034F}b",     // combining grapheme joiner
        "a\u{180B}b",     // Mongolian free variation selector
        "one\u{2028}two", // line separator
        "one\u{2029}two", // paragraph separator
        "logo \u{F8FF}",  // private use
        "x\u{F0000}",     // supplementary private use
        "x\u{FDD0}",      // noncharacter
        "x\u{E007F}",     // cancel tag
    ];
    for name in refused {
        let register = json!({"email": "mallory@example.com", "password": PASSWORD, "name": name});
        let problem = assert_problem(app.post_json("/api/v1/auth/register", &register).await, 422).await;
        assert_eq!(named(problem), ["name"], "{name:?}");
        let patch = app.send_json(Method::PATCH, &user_path(&alice_id), &alice, &json!({"name": name})).await;
        assert_eq!(named(assert_problem(patch, 422).await), ["name"], "{name:?}");
        let product = json!({"name": name, "price_cents": 100, "stock": 1});
        let created = app.send_json(Method::POST, "/api/v1/products", &admin, &product).await;
        assert_eq!(named(assert_problem(created, 422).await), ["name"], "{name:?}");
    }
    assert_eq!(app.login("mallory@example.com", PASSWORD).await.status(), 401);
    // Visible text around those borders is still a name.
    for fine in ["\u{1161}\u{1162}", "한국", "Zoë ❤", "\u{FFFD}"] {
        let patch = app.send_json(Method::PATCH, &user_path(&alice_id), &alice, &json!({"name": fine})).await;
        assert_eq!(patch.status(), 200, "{fine:?}");
    }
}
