//! What an attacker or a careless client throws at the boundary, and how the service
//! answers: control characters, malformed fields, media types, HEAD, the last admin,
//! tokens after a password change, other people's failed logins, and faults that strike
//! mid-request (a database outage, a rate-limiter panic).

use std::time::{Duration, Instant};

use crate::common::{
    assert_problem,
    one_connection::{Answer, OneConnection},
    postgres_server::PostgresServer,
    Backend, TestApp, PASSWORD,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    control_characters_are_refused_naming_the_field_and_change_nothing,
    errors_name_the_field_in_the_clients_terms,
    head_answers_every_get_route_like_get_without_a_body,
    only_plain_application_json_bodies_are_accepted,
    metric_families_exist_at_zero_from_the_start,
    the_last_admin_can_neither_demote_nor_delete_itself,
    a_password_or_role_change_voids_earlier_tokens,
    a_strangers_failed_logins_do_not_lock_the_owner_out,
    the_document_lists_what_the_service_answers,
);

async fn product(app: &TestApp, admin: &str, body: Value) -> reqwest::Response {
    app.send_json(Method::POST, "/api/v1/products", admin, &body).await
}

fn fields(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| (e["field"].as_str().unwrap().to_owned(), e["message"].as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn field_names(problem: &Value) -> Vec<String> {
    fields(problem).into_iter().map(|(field, _)| field).collect()
}

async fn product_total(app: &TestApp) -> i64 {
    app.get("/api/v1/products").await.json::<Value>().await.unwrap()["total"].as_i64().unwrap()
}

async fn control_characters_are_refused_naming_the_field_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    assert_eq!(product(&app, &admin, json!({"name": "Kettle", "price_cents": 100, "stock": 1})).await.status(), 201);

    // Without a token: a search with NUL (a 500 on PostgreSQL, "matches everything" on SQLite).
    for query in ["q=%00", "q=ket%00tle", "q=%07", "status=active%00", "sort=name%0A"] {
        let problem = assert_problem(app.get(&format!("/api/v1/products?{query}")).await, 422).await;
        let expected = query.split('=').next().unwrap();
        assert_eq!(field_names(&problem), [expected], "{query}: {problem}");
    }
    let login = app.login("root@example.com\u{0}", PASSWORD).await;
    assert_eq!(field_names(&assert_problem(login, 422).await), ["email"]);
    let register = app
        .post_json("/api/v1/auth/register", &json!({"email": "x@example.com", "password": PASSWORD, "name": "a\u{1}b"}))
        .await;
    assert_eq!(field_names(&assert_problem(register, 422).await), ["name"]);

    // As admin, through name and description.
    for body in [
        json!({"name": "Ket\u{0}tle", "price_cents": 100, "stock": 1}),
        json!({"name": "Kettle", "description": "hot\u{0}", "price_cents": 100, "stock": 1}),
        json!({"name": "Kettle", "description": "bell \u{7}", "price_cents": 100, "stock": 1}),
        json!({"name": "Kettle\nTwo", "price_cents": 100, "stock": 1}),
    ] {
        let problem = assert_problem(product(&app, &admin, body.clone()).await, 422).await;
        assert!(fields(&problem).iter().all(|(_, message)| message.contains("control characters")), "{problem}");
        assert_eq!(fields(&problem).len(), 1, "{body}");
    }
    assert_eq!(product_total(&app).await, 1, "nothing was stored");
    assert_eq!(app.get("/api/v1/products?q=zzz").await.json::<Value>().await.unwrap()["total"], 0);

    // A description is prose: line breaks and tabs are kept.
    let prose = product(
        &app,
        &admin,
        json!({"name": "Pot", "description": "line one\n\tline two\r\n", "price_cents": 1, "stock": 1}),
    )
    .await;
    assert_eq!(prose.status(), 201);
    assert_eq!(prose.json::<Value>().await.unwrap()["description"], "line one\n\tline two\r\n");
}

async fn errors_name_the_field_in_the_clients_terms(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;

    let wrong_type = product(&app, &admin, json!({"name": "Mug", "price_cents": "ten", "stock": 1})).await;
    let problem = assert_problem(wrong_type, 400).await;
    assert_eq!(fields(&problem), [("price_cents".to_owned(), "must be an integer".to_owned())]);
    assert!(!problem.to_string().contains("invalid type"), "no parser internals: {problem}");

    // JSON has one number type: 100.0 is the integer 100.
    let integral = product(&app, &admin, json!({"name": "Mug", "price_cents": 100.0, "stock": 2.0})).await;
    assert_eq!(integral.status(), 201);
    assert_eq!(integral.json::<Value>().await.unwrap()["price_cents"], 100);
    let fractional = product(&app, &admin, json!({"name": "Mug", "price_cents": 100.5, "stock": 2})).await;
    assert_eq!(field_names(&assert_problem(fractional, 400).await), ["price_cents"]);

    let nested = app
        .send_json(Method::POST, "/api/v1/orders", &admin, &json!({"items": [{"product_id": "x", "quantity": []}]}))
        .await;
    assert_eq!(fields(&assert_problem(nested, 400).await), [("items[0].quantity".into(), "must be an integer".into())]);
    let missing = app.send_json(Method::POST, "/api/v1/orders", &admin, &json!({"items": [{"quantity": 1}]})).await;
    assert_eq!(fields(&assert_problem(missing, 422).await), [("items[0].product_id".into(), "is required".into())]);

    let duplicate = assert_problem(app.get("/api/v1/products?sort=name&sort=price_cents").await, 422).await;
    assert_eq!(fields(&duplicate), [("sort".into(), "is given more than once".into())]);
    let not_a_number = assert_problem(app.get("/api/v1/products?page=two").await, 422).await;
    assert_eq!(fields(&not_a_number), [("page".into(), "must be an integer".into())]);
    let bad_id_in_query = assert_problem(app.get_as("/api/v1/orders?user_id=nobody", &admin).await, 422).await;
    assert_eq!(fields(&bad_id_in_query), [("user_id".into(), "must be a UUID".into())]);

    let bad_id_in_path = assert_problem(app.get("/api/v1/products/not-a-uuid").await, 404).await;
    let detail = bad_id_in_path["detail"].as_str().unwrap();
    assert!(detail.contains("`id` must be a UUID"), "{detail}");
    assert!(!detail.contains("parsing failed") && !detail.contains("found '"), "{detail}");
}

async fn head_answers_every_get_route_like_get_without_a_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let created: Value =
        product(&app, &admin, json!({"name": "Lamp", "price_cents": 100, "stock": 1})).await.json().await.unwrap();
    let path = format!("/api/v1/products/{}", created["id"].as_str().unwrap());

    let get = app.get(&path).await;
    let head = app.request(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.status(), 200);
    for name in ["etag", "content-type", "content-length"] {
        assert_eq!(head.headers().get(name), get.headers().get(name), "{name}");
    }
    assert!(head.bytes().await.unwrap().is_empty());

    for (path, token, status) in [
        ("/livez", None, 200),
        ("/readyz", None, 200),
        ("/metrics", None, 200),
        ("/openapi.json", None, 200),
        ("/api/v1/products", None, 200),
        ("/api/v1/users/me", Some(admin.as_str()), 200),
        ("/api/v1/users/me", None, 401),
        ("/api/v1/users", Some(admin.as_str()), 200),
        ("/api/v1/orders", Some(admin.as_str()), 200),
    ] {
        let mut request = app.request(Method::HEAD, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "HEAD {path}");
        assert!(response.bytes().await.unwrap().is_empty(), "HEAD {path} has no body");
    }
    let post_only = app.request(Method::HEAD, "/api/v1/auth/login").send().await.unwrap();
    assert_eq!(post_only.status(), 405, "HEAD is for GET routes only");
}

async fn only_plain_application_json_bodies_are_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({"email": "alice@example.com", "password": PASSWORD, "name": "Alice"}).to_string();
    let register = |content_type: Option<&'static str>| {
        let mut request = app.request(Method::POST, "/api/v1/auth/register").body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    for refused in [
        None,
        Some("text/json"),
        Some("application/problem+json"),
        Some("application/json; charset=latin1"),
        Some("application/json; boundary=x"),
        Some("text/plain"),
    ] {
        let problem = assert_problem(register(refused).await.unwrap(), 415).await;
        assert_eq!(problem["type"], "urn:storefront:problem:unsupported-media-type", "{refused:?}");
    }
    let users = app.send_json(Method::GET, "/api/v1/products", "", &json!({})).await;
    assert_eq!(users.status(), 200, "nothing was registered by the refused requests");
    assert_eq!(register(Some("Application/JSON; Charset=\"UTF-8\"")).await.unwrap().status(), 201);
}

async fn metric_families_exist_at_zero_from_the_start(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for sample in [
        r#"storefront_actor_restarts_total{actor="db_executor"} 0"#,
        r#"storefront_actor_restarts_total{actor="rate_limiter"} 0"#,
        r#"storefront_actor_restarts_total{actor="cache"} 0"#,
        r#"storefront_actor_restarts_total{actor="health"} 0"#,
        r#"storefront_rate_limited_total{policy="default"} 0"#,
        r#"storefront_rate_limited_total{policy="auth"} 0"#,
        r#"storefront_cache_requests_total{cache="products",result="hit"} 0"#,
        r#"storefront_cache_requests_total{cache="users",result="coalesced"} 0"#,
        r#"storefront_cache_loads_total{cache="users"} 0"#,
        r#"storefront_db_shed_total{reason="saturated"} 0"#,
        "storefront_rate_limiter_fail_open_total 0",
        r#"storefront_password_hasher_runs_total{operation="hash"} 0"#,
    ] {
        assert!(text.lines().any(|line| line == sample), "missing {sample}");
    }
    assert!(text.contains(r#"storefront_readiness_check{check="database"}"#));
}

async fn the_last_admin_can_neither_demote_nor_delete_itself(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (root_id, root) = app.admin("root@example.com").await;
    let me = format!("/api/v1/users/{root_id}");
    let problem = assert_problem(app.send_json(Method::PATCH, &me, &root, &json!({"role": "user"})).await, 409).await;
    assert_eq!(problem["type"], "urn:storefront:problem:last-admin");
    assert_problem(app.request(Method::DELETE, &me).bearer_auth(&root).send().await.unwrap(), 409).await;
    assert_eq!(app.get_as("/api/v1/users/me", &root).await.json::<Value>().await.unwrap()["role"], "admin");

    // With a second admin either may step down, but not both.
    let (deputy_id, deputy) = app.admin("deputy@example.com").await;
    let renamed = app.send_json(Method::PATCH, &me, &root, &json!({"role": "admin", "name": "Root"})).await;
    assert_eq!(renamed.status(), 200, "keeping the role is no change");
    assert_eq!(app.send_json(Method::PATCH, &me, &root, &json!({"role": "user"})).await.status(), 200);
    let deputy_path = format!("/api/v1/users/{deputy_id}");
    assert_problem(app.request(Method::DELETE, &deputy_path).bearer_auth(&deputy).send().await.unwrap(), 409).await;
    let demoted = app.send_json(Method::PATCH, &deputy_path, &deputy, &json!({"role": "user"})).await;
    assert_problem(demoted, 409).await;
    let deleted = app.request(Method::DELETE, &me).bearer_auth(&deputy).send().await.unwrap();
    assert_eq!(deleted.status(), 204, "deleting a former admin is fine");
}

async fn a_password_or_role_change_voids_earlier_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, before) = app.user("alice@example.com").await;
    let alice = format!("/api/v1/users/{alice_id}");

    let renamed = app.send_json(Method::PATCH, &alice, &before, &json!({"name": "Alice"})).await;
    assert_eq!(renamed.status(), 200);
    assert_eq!(app.get_as("/api/v1/users/me", &before).await.status(), 200, "a new name leaves tokens alone");

    let new_password = "a brand new secret";
    let change = json!({"password": new_password, "current_password": PASSWORD});
    let changed = app.send_json(Method::PATCH, &alice, &before, &change).await;
    assert_eq!(changed.status(), 200);
    let fresh = changed.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    assert_problem(app.get_as("/api/v1/users/me", &before).await, 401).await;
    assert_eq!(app.get_as("/api/v1/users/me", &fresh).await.status(), 200, "the changing client stays signed in");
    let login = app.login("alice@example.com", new_password).await;
    let after = login.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.get_as("/api/v1/users/me", &after).await.status(), 200);

    let promoted = app.send_json(Method::PATCH, &alice, &admin, &json!({"role": "admin"})).await;
    assert_eq!(promoted.status(), 200);
    assert_problem(app.get_as("/api/v1/users/me", &after).await, 401).await;
    assert_eq!(app.get_as("/api/v1/users/me", &admin).await.status(), 200, "only the changed user's tokens");
}

async fn a_strangers_failed_logins_do_not_lock_the_owner_out(backend: Backend) {
    let app = TestApp::builder(backend).setting("trusted-proxies", "127.0.0.1").spawn().await;
    app.register("owner@example.com").await;
    let login_from = |address: &'static str, password: &'static str| {
        app.request(Method::POST, "/api/v1/auth/login")
            .header("x-forwarded-for", address)
            .json(&json!({"email": "owner@example.com", "password": password}))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(login_from("203.0.113.66", "wrong password").await.unwrap().status(), 401);
    }
    let locked = login_from("203.0.113.66", PASSWORD).await.unwrap();
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS, "the guessing address is locked out");
    assert!(locked.headers().contains_key("retry-after"));
    assert_eq!(login_from("198.51.100.7", PASSWORD).await.unwrap().status(), 200, "the owner elsewhere is not");
}

/// A keyed request that failed before its effect, because the database went away under
/// it, must not keep its key claimed: the retry after recovery runs and succeeds.
#[cfg_attr(not(storefront_postgres_tests), ignore = "needs PostgreSQL: set TEST_DATABASE_URL to run it")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_whose_request_died_in_an_outage_is_free_once_the_database_is_back() {
    if !PostgresServer::available() {
        return;
    }
    let server = tokio::task::spawn_blocking(PostgresServer::start).await.unwrap();
    let app = TestApp::builder(Backend::Postgres).database_url(&server.url()).spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let deposit = |key: &'static str| {
        app.request(Method::POST, &format!("/api/v1/accounts/{alice_id}/deposits"))
            .bearer_auth(&admin)
            .header("idempotency-key", key)
            .json(&json!({"amount_cents": 500}))
            .send()
    };

    // Hold Alice's account row from outside, so the deposit blocks inside its effect.
    let url = server.url();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let account_id = alice_id.clone();
    let holder = std::thread::spawn(move || {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        let mut conn = PgConnection::establish(&url).unwrap();
        diesel::sql_query("BEGIN").execute(&mut conn).unwrap();
        diesel::sql_query(format!("SELECT 1 FROM accounts WHERE user_id = '{account_id}' FOR UPDATE"))
            .execute(&mut conn)
            .unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    locked_rx.recv().unwrap();
    let first = tokio::spawn(deposit("outage-1"));
    let waiting = || async {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let url = server.url();
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            diesel::sql_query("SELECT count(*) AS n FROM pg_locks WHERE NOT granted")
                .get_result::<Count>(&mut conn)
                .unwrap()
                .n
        })
        .await
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while waiting().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the deposit never reached the locked row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The database goes away while the deposit is inside its effect. A fast stop would
    // roll the lock holder back first, and the deposit could take the row and commit
    // before its own backend is told to go (CI saw a 201 here).
    server.crash();
    let failed = first.await.unwrap().unwrap();
    assert!(failed.status().is_server_error(), "the deposit failed: {}", failed.status());
    let _ = release_tx.send(());
    holder.join().ok();

    server.start_again();
    app.wait_for_readiness(200, Duration::from_secs(20)).await;
    let retry = deposit("outage-1").await.unwrap();
    assert_eq!(retry.status(), 201, "the key was released with the failed request");
    assert_eq!(app.get_as("/api/v1/account", &alice).await.json::<Value>().await.unwrap()["balance_cents"], 500);
    let replay = deposit("outage-1").await.unwrap();
    assert_eq!((replay.status().as_u16(), replay.headers().contains_key("idempotent-replayed")), (201, true));
    assert_eq!(app.get_as("/api/v1/account", &alice).await.json::<Value>().await.unwrap()["balance_cents"], 500);
}

/// While the limiter gives no decisions, requests pass only within the fail-open budget
/// (a burst of 20, then 10 a second, for all clients together); the rest get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_rate_limiter_is_down_fail_open_admissions_stay_within_the_budget() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let down = app.chaos(json!({"actor": "rate_limiter", "fault": "stall", "millis": 30_000})).await;
    assert_eq!(down.status(), 204);
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..120 {
        statuses.push(app.get("/api/v1/products").await.status().as_u16());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|status| **status == 200).count();
    let refused = statuses.iter().filter(|status| **status == 503).count();
    assert_eq!(admitted + refused, statuses.len(), "{statuses:?}");
    // The bound is the budget's: 20 at once plus 10 for every second the flood took.
    let bound = 20.0 + 10.0 * elapsed.ceil();
    assert!(admitted >= 20 && admitted as f64 <= bound, "admitted {admitted} in {elapsed:.1} s");
    assert_eq!(app.metric("storefront_rate_limiter_fail_open_total").await, admitted as f64);
    assert!(app.get("/livez").await.status() == 200, "probes are not limited at all");
}

/// A panic in the limiter must not hand every client a fresh burst. Everything goes over
/// one connection, so to one HTTP worker and its limiter shard: the one the chaos request
/// crashes, and the one that holds this client's bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limiter_panic_keeps_the_buckets() {
    // One request a second and a burst of 50: a fresh bucket would admit 50 at once, a spent
    // one one for each second the test takes, however slowly it runs.
    let app = TestApp::builder(Backend::Sqlite)
        .setting("rate-limit-rps", "1")
        .setting("rate-limit-burst", "50")
        .spawn()
        .await;
    let mut connection = OneConnection::open(&app).await;
    let products = "/api/v1/products";
    // Spend the bucket until the limiter itself refuses (a request let through unasked,
    // failing open on a busy machine, carries no RateLimit header and spends nothing).
    let mut sent = 0;
    let spent_at = loop {
        let sent_at = Instant::now();
        let answer = connection.get(products, &[]).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            break sent_at;
        }
        assert!(undecided_or_admitted(&answer), "{}", answer.status);
        sent += 1;
        assert!(sent < 500, "the limit never applied");
    };
    assert_eq!(connection.chaos(&json!({"actor": "rate_limiter", "fault": "panic"})).await.status, 500);
    assert_eq!(app.metric_reaching(r#"storefront_actor_restarts_total{actor="rate_limiter"}"#, 1.0).await, 1.0);

    // After the panic: what the limiter admits until it refuses again is no more than the
    // refills since the bucket was spent (one a second, and the one under way).
    let (mut admitted, mut sent) = (0, 0);
    loop {
        let answer = connection.get(products, &[]).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert!(undecided_or_admitted(&answer), "{}", answer.status);
        if answer.status == StatusCode::OK && answer.remaining().is_some() {
            admitted += 1;
        }
        sent += 1;
        assert!(sent < 500, "the limiter never refused again after the panic");
    }
    let refills = spent_at.elapsed().as_secs() + 1;
    assert!(admitted <= refills, "{admitted} admitted after the panic; {refills} refilled since the bucket was spent");
}

/// A 200 the limiter decided (it carries RateLimit headers), or one of the answers it gives
/// when the limiter did not answer in time: let through unasked (a 200 without them), or,
/// once that budget is spent, 503.
fn undecided_or_admitted(answer: &Answer) -> bool {
    answer.status == StatusCode::OK
        || (answer.status == StatusCode::SERVICE_UNAVAILABLE && answer.remaining().is_none())
}

async fn the_document_lists_what_the_service_answers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(document["paths"]["/ops/chaos"]["post"].is_object(), "mounted here (the tests set CHAOS_TOKEN)");
    assert!(document["components"]["schemas"]["Problem"].is_object());
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            if path.starts_with("/api/v1/") {
                assert!(responses.contains_key("429"), "{method} {path} lists 429");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(status), "{method} {path} lists {status}");
                }
            }
            for (status, response) in responses {
                if status.starts_with('4') {
                    assert!(response["content"]["application/problem+json"].is_object(), "{method} {path} {status}");
                }
            }
        }
    }
    let for_user = &document["paths"]["/api/v1/users/{id}/orders"]["get"]["parameters"];
    let names: Vec<&str> = for_user.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"user_id"), "the ignored user_id is not listed: {names:?}");

    // Operation ids are unique, and every link leads to one of them.
    let operations: Vec<&Value> =
        document["paths"].as_object().unwrap().values().flat_map(|item| item.as_object().unwrap().values()).collect();
    let ids: Vec<&str> = operations.iter().map(|operation| operation["operationId"].as_str().unwrap()).collect();
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    let links: Vec<&Value> = operations
        .iter()
        .flat_map(|operation| operation["responses"].as_object().unwrap().values())
        .filter_map(|response| response["links"].as_object())
        .flat_map(|links| links.values())
        .collect();
    assert!(links.len() >= 10, "created resources link to what uses them");
    for link in links {
        assert!(unique.contains(link["operationId"].as_str().unwrap()), "{link}");
    }
    // Text rules are stated: every string a client types has a pattern; headers their syntax.
    let register = &document["components"]["schemas"]["RegisterRequest"]["properties"];
    for field in ["email", "password", "name"] {
        assert!(register[field]["pattern"].is_string(), "RegisterRequest.{field}");
    }
    let patch = &document["paths"]["/api/v1/products/{id}"]["patch"]["parameters"];
    let if_match = patch.as_array().unwrap().iter().find(|p| p["name"] == "If-Match").unwrap();
    assert!(if_match["schema"]["pattern"].is_string());
}
