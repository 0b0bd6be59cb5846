//! Users, authentication and RBAC, as clients and admins see them.

use crate::common::{assert_problem, Backend, TestApp, JWT_SECRET, PASSWORD};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

on_both_backends!(
    register_login_and_me,
    registration_rejects_invalid_input_and_changes_nothing,
    emails_are_unique_case_insensitively,
    wrong_password_and_unknown_email_look_the_same,
    protected_routes_require_a_valid_token,
    admins_list_users_in_pages,
    users_cannot_see_or_touch_each_other,
    role_escalation_is_refused_and_admins_grant_roles,
    users_update_their_own_profile,
    deleted_users_lose_access_at_once,
    forged_and_stale_tokens_are_rejected,
    repeated_failed_logins_are_throttled_per_email,
    parallel_guesses_cannot_slip_past_the_throttle,
);

async fn register_login_and_me(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": "  Alice@Example.COM ", "password": PASSWORD, "name": "  Alice "}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let user: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/v1/users/{}", user["id"].as_str().unwrap()));
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["name"], "Alice");
    assert_eq!(user["role"], "user");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    assert!(chrono::DateTime::parse_from_rfc3339(user["created_at"].as_str().unwrap()).is_ok());
    let mut keys: Vec<_> = user.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["created_at", "email", "id", "name", "role", "updated_at"]);

    let login = app.login("ALICE@example.com", PASSWORD).await;
    assert_eq!(login.status(), 200);
    let token: Value = login.json().await.unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 900);

    let me = app.get_as("/api/v1/users/me", token["access_token"].as_str().unwrap()).await;
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.unwrap(), user);
}

async fn registration_rejects_invalid_input_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let app = &app;
    let register = |body: Value| async move { app.post_json("/api/v1/auth/register", &body).await };

    let all_bad = register(json!({"email": "not-an-email", "password": "short", "name": "   "})).await;
    let body = assert_problem(all_bad, 422).await;
    let mut fields: Vec<_> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["email", "name", "password"]);

    let too_long =
        register(json!({"email": "a@example.com", "password": "x".repeat(129), "name": "n".repeat(101)})).await;
    assert_eq!(assert_problem(too_long, 422).await["errors"].as_array().unwrap().len(), 2);

    let mass_assignment =
        register(json!({"email": "a@example.com", "password": PASSWORD, "name": "A", "role": "admin"})).await;
    assert_eq!(assert_problem(mass_assignment, 422).await["errors"][0]["field"], "role");

    let missing = register(json!({"email": "a@example.com", "password": PASSWORD})).await;
    assert_eq!(assert_problem(missing, 422).await["errors"][0]["field"], "name");

    assert_problem(register(json!({"email": 42, "password": PASSWORD, "name": "A"})).await, 400).await;

    // None of those created anything: the email is still free and nobody can log in.
    assert_eq!(app.login("a@example.com", PASSWORD).await.status(), 401);
    assert_eq!(register(json!({"email": "a@example.com", "password": PASSWORD, "name": "A"})).await.status(), 201);
}

async fn emails_are_unique_case_insensitively(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("bob@example.com").await;
    let again = app
        .post_json("/api/v1/auth/register", &json!({"email": "BOB@Example.com", "password": PASSWORD, "name": "B"}))
        .await;
    assert_problem(again, 409).await;
}

async fn wrong_password_and_unknown_email_look_the_same(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("carol@example.com").await;
    let wrong_password = assert_problem(app.login("carol@example.com", "wrong password").await, 401).await;
    let unknown_email = assert_problem(app.login("nobody@example.com", PASSWORD).await, 401).await;
    assert_eq!(wrong_password["detail"], unknown_email["detail"]);
    assert_eq!(wrong_password["type"], unknown_email["type"]);
}

async fn protected_routes_require_a_valid_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let anonymous = app.get("/api/v1/users/me").await;
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_problem(anonymous, 401).await;

    let garbage = app.get_as("/api/v1/users/me", "not.a.token").await;
    assert_eq!(garbage.headers()["www-authenticate"], "Bearer");
    assert_problem(garbage, 401).await;

    let basic = app.request(Method::GET, "/api/v1/users/me").basic_auth("a", Some("b")).send().await.unwrap();
    assert_problem(basic, 401).await;
}

async fn admins_list_users_in_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (_, user) = app.user("u1@example.com").await;
    app.register("u2@example.com").await;
    app.register("u3@example.com").await;

    let first: Value = app.get_as("/api/v1/users?page=1&per_page=3", &admin).await.json().await.unwrap();
    assert_eq!((first["page"].as_i64(), first["per_page"].as_i64()), (Some(1), Some(3)));
    assert_eq!((first["total"].as_i64(), first["total_pages"].as_i64()), (Some(4), Some(2)));
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    assert_eq!(first["data"][0]["email"], "root@example.com");
    let second: Value = app.get_as("/api/v1/users?page=2&per_page=3", &admin).await.json().await.unwrap();
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["data"][0]["email"], "u3@example.com");

    let clamped: Value = app.get_as("/api/v1/users?per_page=1000", &admin).await.json().await.unwrap();
    assert_eq!(clamped["per_page"], 100);
    assert_problem(app.get_as("/api/v1/users?page=0", &admin).await, 422).await;
    let not_a_page = assert_problem(app.get_as("/api/v1/users?page=abc", &admin).await, 422).await;
    assert_eq!(not_a_page["errors"][0]["field"], "page");

    assert_problem(app.get_as("/api/v1/users", &user).await, 403).await;
}

async fn users_cannot_see_or_touch_each_other(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (admin_id, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let (_, bob) = app.user("bob@example.com").await;
    let alice_path = format!("/api/v1/users/{alice_id}");

    assert_eq!(app.get_as(&alice_path, &alice).await.status(), 200);
    assert_eq!(app.get_as(&alice_path, &admin).await.status(), 200);
    assert_problem(app.get_as(&alice_path, &bob).await, 404).await;
    assert_problem(app.get_as(&format!("/api/v1/users/{admin_id}"), &bob).await, 404).await;

    assert_problem(app.send_json(Method::PATCH, &alice_path, &bob, &json!({"name": "Pwned"})).await, 404).await;
    let delete = app.request(Method::DELETE, &alice_path).bearer_auth(&bob).send().await.unwrap();
    assert_problem(delete, 403).await;
    let alice_now: Value = app.get_as(&alice_path, &admin).await.json().await.unwrap();
    assert_eq!(alice_now["name"], "Test User", "B changed nothing");

    assert_problem(app.get_as(&format!("/api/v1/users/{}", uuid::Uuid::now_v7()), &admin).await, 404).await;
    assert_problem(app.get_as("/api/v1/users/not-a-uuid", &admin).await, 404).await;
}

async fn role_escalation_is_refused_and_admins_grant_roles(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let alice_path = format!("/api/v1/users/{alice_id}");

    let escalate = app.send_json(Method::PATCH, &alice_path, &alice, &json!({"role": "admin", "name": "Queen"})).await;
    assert_problem(escalate, 403).await;
    let me: Value = app.get_as("/api/v1/users/me", &alice).await.json().await.unwrap();
    assert_eq!((me["role"].as_str(), me["name"].as_str()), (Some("user"), Some("Test User")));

    let bad_role = app.send_json(Method::PATCH, &alice_path, &admin, &json!({"role": "superuser"})).await;
    assert_eq!(assert_problem(bad_role, 422).await["errors"][0]["field"], "role");
    let granted = app.send_json(Method::PATCH, &alice_path, &admin, &json!({"role": "admin"})).await;
    assert_eq!(granted.status(), 200);
    assert_eq!(granted.json::<Value>().await.unwrap()["role"], "admin");
    // A role change voids the tokens issued before it; after signing in again Alice lists users.
    assert_problem(app.get_as("/api/v1/users", &alice).await, 401).await;
    let alice = app.token_for("alice@example.com").await;
    assert_eq!(app.get_as("/api/v1/users", &alice).await.status(), 200);
}

async fn users_update_their_own_profile(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("taken@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let path = format!("/api/v1/users/{alice_id}");

    let invalid = app.send_json(Method::PATCH, &path, &alice, &json!({"name": "", "password": "short"})).await;
    assert_eq!(assert_problem(invalid, 422).await["errors"].as_array().unwrap().len(), 2);
    let taken = json!({"email": "TAKEN@example.com", "current_password": PASSWORD});
    assert_problem(app.send_json(Method::PATCH, &path, &alice, &taken).await, 409).await;
    assert_problem(app.send_json(Method::PATCH, &path, &alice, &json!({"nickname": "x"})).await, 422).await;

    let before: Value = app.get_as("/api/v1/users/me", &alice).await.json().await.unwrap();
    let updated = app
        .send_json(
            Method::PATCH,
            &path,
            &alice,
            &json!({
                "name": " Alice Liddell ", "email": "Alice.L@Example.com", "password": "a brand new secret",
                "current_password": PASSWORD,
            }),
        )
        .await;
    assert_eq!(updated.status(), 200);
    let after: Value = updated.json().await.unwrap();
    assert_eq!(after["name"], "Alice Liddell");
    assert_eq!(after["email"], "alice.l@example.com");
    assert_eq!(after["created_at"], before["created_at"]);
    assert_ne!(after["updated_at"], before["updated_at"]);

    assert_eq!(app.login("alice.l@example.com", PASSWORD).await.status(), 401);
    assert_eq!(app.login("alice.l@example.com", "a brand new secret").await.status(), 200);
}

async fn deleted_users_lose_access_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let path = format!("/api/v1/users/{alice_id}");
    assert_eq!(app.get_as("/api/v1/users/me", &alice).await.status(), 200);

    let deleted = app.request(Method::DELETE, &path).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_problem(app.get_as("/api/v1/users/me", &alice).await, 401).await;
    assert_problem(app.get_as(&path, &admin).await, 404).await;
    assert_problem(app.login("alice@example.com", PASSWORD).await, 401).await;
    let again = app.request(Method::DELETE, &path).bearer_auth(&admin).send().await.unwrap();
    assert_problem(again, 404).await;
    let listed: Value = app.get_as("/api/v1/users", &admin).await.json().await.unwrap();
    assert_eq!(listed["total"], 1);
    // The email is free again.
    app.register("alice@example.com").await;
}

fn token_with(claims: &Value, algorithm: Algorithm, secret: &str) -> String {
    encode(&Header::new(algorithm), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

async fn forged_and_stale_tokens_are_rejected(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, good) = app.user("alice@example.com").await;
    assert_eq!(app.get_as("/api/v1/users/me", &good).await.status(), 200);

    let now = chrono::Utc::now().timestamp();
    let claims = |changes: Value| {
        let mut base = json!({
            "iss": "storefront", "aud": "storefront-api", "sub": alice_id, "role": "admin",
            "iat": now, "nbf": now, "exp": now + 600,
        });
        for (key, value) in changes.as_object().unwrap() {
            base[key] = value.clone();
        }
        base
    };
    let header_none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    let attacks = [
        ("alg none", format!("{header_none}.{payload}.")),
        ("wrong key", token_with(&claims(json!({})), Algorithm::HS256, "another-secret-another-secret-0123456789")),
        (
            "expired",
            token_with(
                &claims(json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600})),
                Algorithm::HS256,
                JWT_SECRET,
            ),
        ),
        (
            "not yet valid",
            token_with(&claims(json!({"nbf": now + 3600, "exp": now + 7200})), Algorithm::HS256, JWT_SECRET),
        ),
        ("wrong audience", token_with(&claims(json!({"aud": "someone-else"})), Algorithm::HS256, JWT_SECRET)),
        ("wrong issuer", token_with(&claims(json!({"iss": "evil"})), Algorithm::HS256, JWT_SECRET)),
        ("other algorithm", token_with(&claims(json!({})), Algorithm::HS512, JWT_SECRET)),
        ("no expiry", {
            let mut c = claims(json!({}));
            c.as_object_mut().unwrap().remove("exp");
            token_with(&c, Algorithm::HS256, JWT_SECRET)
        }),
        (
            "unknown subject",
            token_with(&claims(json!({"sub": uuid::Uuid::now_v7().to_string()})), Algorithm::HS256, JWT_SECRET),
        ),
    ];
    for (attack, token) in attacks {
        let response = app.get_as("/api/v1/users/me", &token).await;
        assert_eq!(response.status(), 401, "{attack}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{attack}");
    }
    // A well-made token is accepted, and the role claim grants nothing the database does not.
    let forged_role = token_with(&claims(json!({})), Algorithm::HS256, JWT_SECRET);
    assert_problem(app.get_as("/api/v1/users", &forged_role).await, 403).await;
}

async fn repeated_failed_logins_are_throttled_per_email(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("alice@example.com").await;
    app.register("bob@example.com").await;

    for attempt in 1..=5 {
        assert_eq!(app.login("alice@example.com", "wrong password").await.status(), 401, "attempt {attempt}");
    }
    let throttled = app.login("alice@example.com", PASSWORD).await;
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((800..=900).contains(&retry_after), "retry after the 15 minute window: {retry_after}");
    let alice_problem = assert_problem(throttled, 429).await;

    assert_eq!(app.login("bob@example.com", PASSWORD).await.status(), 200, "other accounts are unaffected");

    // An email with no account is throttled the same way, so a 429 reveals nothing.
    for _ in 1..=5 {
        assert_eq!(app.login("ghost@example.com", "wrong password").await.status(), 401);
    }
    let ghost_problem = assert_problem(app.login("ghost@example.com", "wrong password").await, 429).await;
    assert_eq!(alice_problem["detail"], ghost_problem["detail"]);
}

async fn parallel_guesses_cannot_slip_past_the_throttle(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("alice@example.com").await;
    let app = &app;
    let guesses = futures_util::future::join_all(
        (0..12).map(|n| async move { app.login("alice@example.com", &format!("guess number {n}")).await }),
    )
    .await;
    let statuses: Vec<u16> = guesses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "exactly five guesses were checked: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
    assert_problem(app.login("alice@example.com", PASSWORD).await, 429).await;
}
