//! The shop as clients see it: the catalog, accounts and transfers, orders, idempotent
//! retries, money and stock invariants under real concurrency, and the transactional outbox.

use std::collections::BTreeSet;

use crate::common::{assert_problem, events::read_events, Backend, TestApp};
use futures_util::future::join_all;
use reqwest::{header::HeaderValue, Method, Response};
use serde_json::{json, Value};

on_both_backends!(
    admins_create_products_and_anyone_reads_them,
    catalog_writes_require_an_admin,
    invalid_products_are_rejected_with_every_bad_field_named,
    etags_make_product_reads_and_writes_conditional,
    unknown_and_malformed_product_ids_are_not_found,
    deleted_products_vanish_but_past_orders_keep_their_snapshots,
    product_search_matches_names_case_insensitively_and_literally,
    product_lists_filter_by_status_and_price_range,
    product_lists_sort_and_page,
    invalid_product_list_queries_are_rejected,
    accounts_start_empty_and_admins_deposit,
    transfers_move_money_and_both_parties_see_them,
    transfers_refuse_overdrafts_bad_amounts_and_unknown_recipients,
    orders_take_stock_and_debit_exactly_their_total,
    short_stock_is_refused_naming_the_products_and_nothing_changes,
    short_funds_are_refused_and_nothing_changes,
    invalid_orders_are_rejected_and_change_nothing,
    cancelling_restores_stock_and_refunds_exactly_once,
    orders_are_visible_only_to_their_owner_and_admins,
    an_order_retried_with_its_key_is_placed_once,
    deposits_and_transfers_retried_with_their_keys_apply_once,
    a_refused_request_retried_with_its_key_is_refused_the_same_way,
    forty_buyers_racing_for_ten_items_get_exactly_ten,
    concurrent_random_transfers_conserve_every_cent,
    one_key_sent_twenty_times_at_once_places_one_order,
    every_committed_change_appends_its_events_in_order,
);

const PRODUCTS: &str = "/api/v1/products";
const ORDERS: &str = "/api/v1/orders";
const TRANSFERS: &str = "/api/v1/transfers";
const ACCOUNT: &str = "/api/v1/account";
const INSUFFICIENT_STOCK: &str = "urn:storefront:problem:insufficient-stock";
const INSUFFICIENT_FUNDS: &str = "urn:storefront:problem:insufficient-funds";

// ---------------------------------------------------------------------------------------
// Helpers: each asserts the happy status it needs, so a scenario reads as its behaviour.
// ---------------------------------------------------------------------------------------

async fn json_of(response: Response) -> Value {
    response.json().await.expect("JSON body")
}

async fn status_and_body(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

fn header(response: &Response, name: &str) -> String {
    response.headers().get(name).unwrap_or_else(|| panic!("response lacks {name}")).to_str().unwrap().to_owned()
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().expect("a JSON object").keys().cloned().collect();
    keys.sort();
    keys
}

/// The distinct `errors[].field` names of a validation problem, sorted.
fn fields(problem: &Value) -> Vec<String> {
    let mut fields: Vec<String> = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("problem lacks errors: {problem}"))
        .iter()
        .map(|error| error["field"].as_str().expect("field name").to_owned())
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_owned()
}

fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().expect("page data").iter().map(id_of).collect()
}

fn names(page: &Value) -> Vec<String> {
    page["data"].as_array().expect("page data").iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect()
}

fn name_set(page: &Value) -> BTreeSet<String> {
    names(page).into_iter().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|&s| s.to_owned()).collect()
}

async fn create_product(app: &TestApp, admin: &str, body: Value) -> Value {
    let response = app.send_json(Method::POST, PRODUCTS, admin, &body).await;
    assert_eq!(response.status(), 201, "create product {body}");
    json_of(response).await
}

/// An active product; returns its id.
async fn product(app: &TestApp, admin: &str, name: &str, price_cents: i64, stock: i64) -> String {
    id_of(&create_product(app, admin, json!({"name": name, "price_cents": price_cents, "stock": stock})).await)
}

fn product_path(id: &str) -> String {
    format!("{PRODUCTS}/{id}")
}

async fn read_product(app: &TestApp, id: &str) -> Value {
    let response = app.get(&product_path(id)).await;
    assert_eq!(response.status(), 200, "read product {id}");
    json_of(response).await
}

async fn stock(app: &TestApp, id: &str) -> i64 {
    read_product(app, id).await["stock"].as_i64().expect("stock")
}

async fn delete(app: &TestApp, path: &str, token: &str) -> Response {
    app.request(Method::DELETE, path).bearer_auth(token).send().await.expect("request sent")
}

fn deposit_path(user_id: &str) -> String {
    format!("/api/v1/accounts/{user_id}/deposits")
}

async fn deposit(app: &TestApp, admin: &str, user_id: &str, amount_cents: i64) -> Value {
    let response =
        app.send_json(Method::POST, &deposit_path(user_id), admin, &json!({"amount_cents": amount_cents})).await;
    assert_eq!(response.status(), 201, "deposit {amount_cents} for {user_id}");
    json_of(response).await
}

async fn balance(app: &TestApp, token: &str) -> i64 {
    let response = app.get_as(ACCOUNT, token).await;
    assert_eq!(response.status(), 200, "read balance");
    json_of(response).await["balance_cents"].as_i64().expect("balance_cents")
}

fn transfer_body(to_user_id: &str, amount_cents: i64) -> Value {
    json!({"to_user_id": to_user_id, "amount_cents": amount_cents})
}

async fn transfer(app: &TestApp, token: &str, to_user_id: &str, amount_cents: i64) -> Response {
    app.send_json(Method::POST, TRANSFERS, token, &transfer_body(to_user_id, amount_cents)).await
}

fn order_body(lines: &[(&str, i64)]) -> Value {
    let items: Vec<Value> =
        lines.iter().map(|(id, quantity)| json!({"product_id": id, "quantity": quantity})).collect();
    json!({ "items": items })
}

async fn order(app: &TestApp, token: &str, lines: &[(&str, i64)]) -> Response {
    app.send_json(Method::POST, ORDERS, token, &order_body(lines)).await
}

async fn paid_order(app: &TestApp, token: &str, lines: &[(&str, i64)]) -> Value {
    let response = order(app, token, lines).await;
    assert_eq!(response.status(), 201, "order {lines:?}");
    json_of(response).await
}

fn order_path(id: &str) -> String {
    format!("{ORDERS}/{id}")
}

async fn cancel(app: &TestApp, token: &str, order_id: &str) -> Response {
    app.request(Method::POST, &format!("{ORDERS}/{order_id}/cancel")).bearer_auth(token).send().await.expect("sent")
}

/// A page read with a token; asserts 200.
async fn page(app: &TestApp, path: &str, token: &str) -> Value {
    let response = app.get_as(path, token).await;
    assert_eq!(response.status(), 200, "GET {path}");
    json_of(response).await
}

async fn total(app: &TestApp, path: &str, token: &str) -> i64 {
    page(app, path, token).await["total"].as_i64().expect("total")
}

/// A POST with an `Idempotency-Key`.
async fn keyed(app: &TestApp, path: &str, token: &str, key: &str, body: &Value) -> Response {
    keyed_raw(app, path, token, HeaderValue::from_str(key).expect("a sendable header value"), body).await
}

async fn keyed_raw(app: &TestApp, path: &str, token: &str, key: HeaderValue, body: &Value) -> Response {
    app.request(Method::POST, path)
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn list_products(app: &TestApp, query: &[(&str, &str)]) -> Value {
    let response = app.request(Method::GET, PRODUCTS).query(query).send().await.expect("request sent");
    assert_eq!(response.status(), 200, "list products {query:?}");
    json_of(response).await
}

async fn list_products_response(app: &TestApp, query: &[(&str, &str)]) -> Response {
    app.request(Method::GET, PRODUCTS).query(query).send().await.expect("request sent")
}

/// A tiny deterministic PRNG (xorshift64), so a failing random schedule can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(bound).unwrap()).unwrap()
    }
}

const PRODUCT_KEYS: [&str; 8] =
    ["created_at", "description", "id", "name", "price_cents", "status", "stock", "updated_at"];
const ORDER_KEYS: [&str; 7] = ["created_at", "id", "items", "status", "total_cents", "updated_at", "user_id"];
const ACCOUNT_KEYS: [&str; 3] = ["balance_cents", "updated_at", "user_id"];
const TRANSFER_KEYS: [&str; 5] = ["amount_cents", "created_at", "from_user_id", "id", "to_user_id"];

// ---------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------

async fn admins_create_products_and_anyone_reads_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;

    let response = app
        .send_json(
            Method::POST,
            PRODUCTS,
            &admin,
            &json!({"name": "  Desk Lamp ", "description": "Warm light", "price_cents": 2599, "stock": 7}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let location = header(&response, "location");
    let etag = header(&response, "etag");
    let created = json_of(response).await;
    let id = id_of(&created);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "ids are UUIDs: {id}");
    assert_eq!(location, product_path(&id));
    assert_eq!(keys(&created), PRODUCT_KEYS);
    assert_eq!(created["name"], "Desk Lamp", "the name is trimmed");
    assert_eq!(created["description"], "Warm light");
    assert_eq!(created["price_cents"], 2599);
    assert_eq!(created["stock"], 7);
    assert_eq!(created["status"], "active");
    for stamp in ["created_at", "updated_at"] {
        assert!(chrono::DateTime::parse_from_rfc3339(created[stamp].as_str().unwrap()).is_ok(), "{stamp} is RFC 3339");
    }
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'), "a strong, quoted ETag: {etag}");

    // Anyone reads it without a token and sees what the admin was shown.
    let read = app.get(&location).await;
    assert_eq!(read.status(), 200);
    assert_eq!(header(&read, "etag"), etag);
    assert_eq!(json_of(read).await, created);

    // Defaults, an archived product, and the largest values allowed.
    let minimal = create_product(&app, &admin, json!({"name": "Pencil", "price_cents": 0, "stock": 0})).await;
    assert_eq!((minimal["description"].as_str(), minimal["status"].as_str()), (Some(""), Some("active")));
    let archived =
        create_product(&app, &admin, json!({"name": "Quill", "price_cents": 5, "stock": 1, "status": "archived"}))
            .await;
    assert_eq!(archived["status"], "archived");
    let largest = create_product(
        &app,
        &admin,
        json!({"name": "n".repeat(200), "description": "d".repeat(2000), "price_cents": 100_000_000_000_i64,
               "stock": 1_000_000_000}),
    )
    .await;
    assert_eq!(
        (largest["price_cents"].as_i64(), largest["stock"].as_i64()),
        (Some(100_000_000_000), Some(1_000_000_000))
    );

    let listed = list_products(&app, &[]).await;
    assert_eq!(listed["total"], 4);
    assert!(ids(&listed).contains(&id));
}

async fn catalog_writes_require_an_admin(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (_, user) = app.user("shopper@example.com").await;
    let id = product(&app, &admin, "Kettle", 3000, 4).await;
    let path = product_path(&id);
    let body = json!({"name": "Free Kettle", "price_cents": 0, "stock": 4});

    let anonymous = app.post_json(PRODUCTS, &body).await;
    assert_eq!(header(&anonymous, "www-authenticate"), "Bearer");
    assert_problem(anonymous, 401).await;
    assert_problem(app.send_json(Method::POST, PRODUCTS, &user, &body).await, 403).await;

    let price_cut = json!({"price_cents": 0});
    assert_problem(app.send_json(Method::PATCH, &path, &user, &price_cut).await, 403).await;
    assert_problem(app.request(Method::PATCH, &path).json(&price_cut).send().await.unwrap(), 401).await;
    assert_problem(delete(&app, &path, &user).await, 403).await;
    assert_problem(app.request(Method::DELETE, &path).send().await.unwrap(), 401).await;

    let unchanged = read_product(&app, &id).await;
    assert_eq!((unchanged["name"].as_str(), unchanged["price_cents"].as_i64()), (Some("Kettle"), Some(3000)));
    assert_eq!(list_products(&app, &[]).await["total"], 1, "nothing was created");
}

async fn invalid_products_are_rejected_with_every_bad_field_named(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let post = |body: Value| {
        let (app, admin) = (&app, &admin);
        async move { app.send_json(Method::POST, PRODUCTS, admin, &body).await }
    };

    let all_bad = post(json!({"name": "   ", "description": "d".repeat(2001), "price_cents": -1,
                              "stock": 1_000_000_001, "status": "gone"}))
    .await;
    assert_eq!(fields(&assert_problem(all_bad, 422).await), ["description", "name", "price_cents", "status", "stock"]);
    let too_big = post(json!({"name": "n".repeat(201), "price_cents": 100_000_000_001_i64, "stock": -1})).await;
    assert_eq!(fields(&assert_problem(too_big, 422).await), ["name", "price_cents", "stock"]);
    let unknown_field = post(json!({"name": "Mug", "price_cents": 100, "stock": 1, "sku": "M-1"})).await;
    assert_eq!(fields(&assert_problem(unknown_field, 422).await), ["sku"]);
    let missing = post(json!({"name": "Mug", "stock": 1})).await;
    assert_eq!(fields(&assert_problem(missing, 422).await), ["price_cents"]);
    assert_problem(post(json!({"name": "Mug", "price_cents": "ten", "stock": 1})).await, 400).await;
    let malformed = app
        .request(Method::POST, PRODUCTS)
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400).await;
    assert_eq!(list_products(&app, &[]).await["total"], 0, "no refused request created anything");

    // PATCH validates the fields it is given, and a refused PATCH changes nothing.
    let id = product(&app, &admin, "Mug", 500, 3).await;
    let path = product_path(&id);
    let before = read_product(&app, &id).await;
    for (body, field) in [
        (json!({"price_cents": -5}), "price_cents"),
        (json!({"name": "  "}), "name"),
        (json!({"stock": -1}), "stock"),
        (json!({"status": "deleted"}), "status"),
        (json!({"description": "d".repeat(2001)}), "description"),
        (json!({"stock": 5, "colour": "red"}), "colour"),
    ] {
        let refused = app.send_json(Method::PATCH, &path, &admin, &body).await;
        assert_eq!(fields(&assert_problem(refused, 422).await), [field], "PATCH {body}");
    }
    assert_eq!(read_product(&app, &id).await, before);
}

async fn etags_make_product_reads_and_writes_conditional(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 10_000).await;
    let id = product(&app, &admin, "Teapot", 1200, 5).await;
    let path = product_path(&id);
    let conditional_get = |tag: String| {
        let (app, path) = (&app, &path);
        async move { app.request(Method::GET, path).header("If-None-Match", tag).send().await.unwrap() }
    };

    let first_tag = header(&app.get(&path).await, "etag");
    let not_modified = conditional_get(first_tag.clone()).await;
    assert_eq!(not_modified.status(), 304);
    assert_eq!(header(&not_modified, "etag"), first_tag);
    assert!(not_modified.bytes().await.unwrap().is_empty(), "a 304 has no body");
    assert_eq!(conditional_get("\"some-other-tag\"".into()).await.status(), 200);

    // A PATCH with the current tag goes through and yields a new tag.
    let patched = app
        .request(Method::PATCH, &path)
        .bearer_auth(&admin)
        .header("If-Match", &first_tag)
        .json(&json!({"price_cents": 1500}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let second_tag = header(&patched, "etag");
    assert_ne!(second_tag, first_tag);
    assert_eq!(json_of(patched).await["price_cents"], 1500);
    assert_eq!(header(&app.get(&path).await, "etag"), second_tag);

    // A PATCH with a stale tag is refused and changes nothing.
    let stale = app
        .request(Method::PATCH, &path)
        .bearer_auth(&admin)
        .header("If-Match", &first_tag)
        .json(&json!({"price_cents": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(stale, 412).await;
    let current = app.get(&path).await;
    assert_eq!(header(&current, "etag"), second_tag);
    assert_eq!(json_of(current).await["price_cents"], 1500);

    // The old tag no longer matches: the reader gets the new representation.
    let refreshed = conditional_get(first_tag.clone()).await;
    assert_eq!(refreshed.status(), 200);
    assert_eq!(header(&refreshed, "etag"), second_tag);

    // Stock taken by an order is a change of the product too.
    paid_order(&app, &buyer, &[(&id, 2)]).await;
    let after_order = conditional_get(second_tag.clone()).await;
    assert_eq!(after_order.status(), 200, "the tag changed with the stock");
    let third_tag = header(&after_order, "etag");
    assert!(third_tag != second_tag && third_tag != first_tag);
    assert_eq!(json_of(after_order).await["stock"], 3);
    assert_eq!(conditional_get(third_tag).await.status(), 304);
}

async fn unknown_and_malformed_product_ids_are_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let missing = product_path(&uuid::Uuid::now_v7().to_string());

    assert_problem(app.get(&missing).await, 404).await;
    assert_problem(app.get(&product_path("not-a-uuid")).await, 404).await;
    assert_problem(app.send_json(Method::PATCH, &missing, &admin, &json!({"stock": 1})).await, 404).await;
    assert_problem(delete(&app, &missing, &admin).await, 404).await;
}

async fn deleted_products_vanish_but_past_orders_keep_their_snapshots(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 10_000).await;
    let globe = product(&app, &admin, "Globe", 1000, 5).await;
    let atlas = product(&app, &admin, "Atlas", 300, 5).await;
    let placed = paid_order(&app, &buyer, &[(&globe, 2)]).await;
    let path = product_path(&globe);

    // Later changes and the deletion do not rewrite what was bought.
    let renamed = app.send_json(Method::PATCH, &path, &admin, &json!({"name": "Globe v2", "price_cents": 4000})).await;
    assert_eq!(renamed.status(), 200);
    let deleted = delete(&app, &path, &admin).await;
    assert_eq!(deleted.status(), 204);
    assert!(deleted.bytes().await.unwrap().is_empty());

    assert_problem(app.get(&path).await, 404).await;
    assert_problem(delete(&app, &path, &admin).await, 404).await;
    assert_problem(app.send_json(Method::PATCH, &path, &admin, &json!({"stock": 9})).await, 404).await;
    let listed = list_products(&app, &[]).await;
    assert_eq!((listed["total"].as_i64(), names(&listed)), (Some(1), vec!["Atlas".to_owned()]));
    assert_eq!(list_products(&app, &[("q", "globe")]).await["total"], 0);

    let read = page(&app, &order_path(&id_of(&placed)), &buyer).await;
    assert_eq!(read, placed, "the order reads as it was placed");
    assert_eq!(read["items"][0]["name"], "Globe");
    assert_eq!(read["items"][0]["unit_price_cents"], 1000);
    assert_eq!(read["items"][0]["quantity"], 2);
    assert_eq!(read["items"][0]["product_id"], globe.as_str());
    assert_eq!(read["total_cents"], 2000);

    // A deleted product cannot be ordered any more.
    let refused = order(&app, &buyer, &[(&globe, 1)]).await;
    assert_eq!(fields(&assert_problem(refused, 422).await), ["items[0].product_id"]);
    let refused = order(&app, &buyer, &[(&atlas, 1), (&globe, 1)]).await;
    assert_eq!(fields(&assert_problem(refused, 422).await), ["items[1].product_id"]);
    assert_eq!(balance(&app, &buyer).await, 8000);
    assert_eq!(stock(&app, &atlas).await, 5);
}

/// Names chosen so that a case-sensitive or wildcard-interpreting search would match more.
const CATALOG: [(&str, i64, &str); 7] = [
    ("Red Lamp", 1500, "active"),
    ("blue LAMP", 500, "active"),
    ("Lampshade", 2500, "archived"),
    ("Oak Chair", 3000, "active"),
    ("50% Mug", 100, "active"),
    ("500 Mugs", 200, "active"),
    ("Tea_Cup", 300, "active"),
];

async fn stock_the_catalog(app: &TestApp) {
    let (_, admin) = app.admin("root@example.com").await;
    for (name, price_cents, status) in CATALOG {
        create_product(app, &admin, json!({"name": name, "price_cents": price_cents, "stock": 10, "status": status}))
            .await;
    }
}

async fn product_search_matches_names_case_insensitively_and_literally(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    stock_the_catalog(&app).await;

    for q in ["lamp", "LAMP", "LaMp"] {
        let found = list_products(&app, &[("q", q)]).await;
        assert_eq!(name_set(&found), set(&["Red Lamp", "blue LAMP", "Lampshade"]), "q={q}");
        assert_eq!(found["total"], 3, "q={q}");
    }
    assert_eq!(names(&list_products(&app, &[("q", "lAmPsHaDe")]).await), ["Lampshade"]);
    assert_eq!(name_set(&list_products(&app, &[("q", "mug")]).await), set(&["50% Mug", "500 Mugs"]));
    // `%` and `_` are literal characters, not wildcards.
    assert_eq!(names(&list_products(&app, &[("q", "50%")]).await), ["50% Mug"]);
    assert_eq!(names(&list_products(&app, &[("q", "_")]).await), ["Tea_Cup"]);
    assert_eq!(names(&list_products(&app, &[("q", "a_c")]).await), ["Tea_Cup"]);
    let none = list_products(&app, &[("q", "sofa")]).await;
    assert_eq!((none["total"].as_i64(), none["data"].as_array().map(Vec::len)), (Some(0), Some(0)));

    // Beyond ASCII too, on SQLite as on PostgreSQL.
    let (_, admin) = app.admin("chef@example.com").await;
    create_product(&app, &admin, json!({"name": "ÉCLAIR AU CAFÉ", "price_cents": 350, "stock": 5})).await;
    for q in ["éclair", "ÉCLAIR", "Café"] {
        assert_eq!(names(&list_products(&app, &[("q", q)]).await), ["ÉCLAIR AU CAFÉ"], "q={q}");
    }
}

async fn product_lists_filter_by_status_and_price_range(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    stock_the_catalog(&app).await;

    assert_eq!(names(&list_products(&app, &[("status", "archived")]).await), ["Lampshade"]);
    let active = list_products(&app, &[("status", "active")]).await;
    assert_eq!(active["total"], 6);
    assert!(!names(&active).contains(&"Lampshade".to_owned()));

    // The bounds are inclusive.
    let mid = list_products(&app, &[("min_price_cents", "500"), ("max_price_cents", "1500")]).await;
    assert_eq!(name_set(&mid), set(&["Red Lamp", "blue LAMP"]));
    let dear = list_products(&app, &[("min_price_cents", "2500")]).await;
    assert_eq!(name_set(&dear), set(&["Lampshade", "Oak Chair"]));
    let cheap = list_products(&app, &[("max_price_cents", "200")]).await;
    assert_eq!(name_set(&cheap), set(&["50% Mug", "500 Mugs"]));
    assert_eq!(cheap["total"], 2);

    let combined = list_products(&app, &[("q", "lamp"), ("status", "active"), ("min_price_cents", "1000")]).await;
    assert_eq!((names(&combined), combined["total"].as_i64()), (vec!["Red Lamp".to_owned()], Some(1)));
}

async fn product_lists_sort_and_page(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    stock_the_catalog(&app).await;
    let created: Vec<String> = CATALOG.iter().map(|(name, _, _)| (*name).to_owned()).collect();
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let mut by_price: Vec<(i64, String)> =
        CATALOG.iter().map(|(name, price, _)| (*price, (*name).to_owned())).collect();
    by_price.sort();
    let cheapest_first: Vec<String> = by_price.into_iter().map(|(_, name)| name).collect();
    let dearest_first: Vec<String> = cheapest_first.iter().rev().cloned().collect();

    assert_eq!(names(&list_products(&app, &[]).await), newest_first, "default: created_at desc");
    assert_eq!(names(&list_products(&app, &[("order", "asc")]).await), created);
    assert_eq!(names(&list_products(&app, &[("sort", "created_at"), ("order", "desc")]).await), newest_first);
    assert_eq!(names(&list_products(&app, &[("sort", "price_cents"), ("order", "asc")]).await), cheapest_first);
    assert_eq!(names(&list_products(&app, &[("sort", "price_cents")]).await), dearest_first, "order defaults to desc");
    // Names that differ in their first (capital) letter, so collation cannot reorder them.
    let by_name = [("sort", "name"), ("min_price_cents", "1000")];
    let ascending = list_products(&app, &[by_name[0], by_name[1], ("order", "asc")]).await;
    assert_eq!(names(&ascending), ["Lampshade", "Oak Chair", "Red Lamp"]);
    let descending = list_products(&app, &[by_name[0], by_name[1], ("order", "desc")]).await;
    assert_eq!(names(&descending), ["Red Lamp", "Oak Chair", "Lampshade"]);

    // Pages of three, cheapest first.
    let paged = |number: &'static str| {
        let app = &app;
        async move {
            list_products(app, &[("sort", "price_cents"), ("order", "asc"), ("per_page", "3"), ("page", number)]).await
        }
    };
    let first = paged("1").await;
    assert_eq!(
        (first["page"].as_i64(), first["per_page"].as_i64(), first["total"].as_i64(), first["total_pages"].as_i64()),
        (Some(1), Some(3), Some(7), Some(3))
    );
    assert_eq!(names(&first), cheapest_first[..3]);
    assert_eq!(names(&paged("2").await), cheapest_first[3..6]);
    let last = paged("3").await;
    assert_eq!(names(&last), cheapest_first[6..]);
    let beyond = paged("4").await;
    assert_eq!((beyond["total"].as_i64(), beyond["data"].as_array().map(Vec::len)), (Some(7), Some(0)));

    let clamped = list_products(&app, &[("per_page", "1000")]).await;
    assert_eq!((clamped["per_page"].as_i64(), names(&clamped).len()), (Some(100), 7));
}

async fn invalid_product_list_queries_are_rejected(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (query, field) in [
        (vec![("sort", "stock")], "sort"),
        (vec![("order", "up")], "order"),
        (vec![("status", "gone")], "status"),
        (vec![("page", "0")], "page"),
    ] {
        let refused = list_products_response(&app, &query).await;
        assert_eq!(fields(&assert_problem(refused, 422).await), [field], "{query:?}");
    }
    let inverted = list_products_response(&app, &[("min_price_cents", "2000"), ("max_price_cents", "1000")]).await;
    let named = fields(&assert_problem(inverted, 422).await);
    assert!(
        !named.is_empty() && named.iter().all(|f| f == "min_price_cents" || f == "max_price_cents"),
        "min > max names the price bounds: {named:?}"
    );
    // A query has no types: a value that is not a number is invalid, named like the others.
    let cheap = list_products_response(&app, &[("min_price_cents", "cheap")]).await;
    assert_eq!(fields(&assert_problem(cheap, 422).await), ["min_price_cents"]);
    let fraction = list_products_response(&app, &[("max_price_cents", "1.5")]).await;
    assert_eq!(fields(&assert_problem(fraction, 422).await), ["max_price_cents"]);
}

// ---------------------------------------------------------------------------------------
// Accounts and transfers
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Orders
// ---------------------------------------------------------------------------------------

async fn orders_take_stock_and_debit_exactly_their_total(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 10_000).await;
    let notebook = product(&app, &admin, "Notebook", 350, 10).await;
    let pen = product(&app, &admin, "Pen", 120, 20).await;

    let response = order(&app, &buyer, &[(&notebook, 2), (&pen, 3)]).await;
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
    for (product_id, name, unit_price_cents, quantity) in [(&notebook, "Notebook", 350, 2), (&pen, "Pen", 120, 3)] {
        let item = items.iter().find(|item| item["product_id"] == product_id.as_str()).expect("an item per product");
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

// ---------------------------------------------------------------------------------------
// Idempotency-Key
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Concurrency: real parallel clients, assertions on outcomes only
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Outbox
// ---------------------------------------------------------------------------------------

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

/// PostgreSQL only: there, an admin's change can commit while an order is being placed.
mod postgres_repricing {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(storefront_postgres_tests), ignore = "PostgreSQL half: set TEST_DATABASE_URL to run it")]
    async fn an_order_placed_while_its_product_is_repriced_pays_the_price_that_holds_when_the_stock_is_taken() {
        if !crate::common::postgres_available() {
            return;
        }
        super::an_order_placed_while_its_product_is_repriced_pays_the_price_that_holds_when_the_stock_is_taken().await;
    }
}

async fn an_order_placed_while_its_product_is_repriced_pays_the_price_that_holds_when_the_stock_is_taken() {
    use diesel::{connection::SimpleConnection, Connection, PgConnection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let app = TestApp::spawn(Backend::Postgres).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    deposit(&app, &admin, &buyer_id, 10_000).await;
    let teapot = product(&app, &admin, "Teapot", 500, 5).await;

    // A price change that has not committed yet, holding the product's row.
    let mut admin_tx = PgConnection::establish(&app.database_url).unwrap();
    admin_tx
        .batch_execute(&format!(
            "BEGIN; UPDATE products SET price_cents = 700, name = 'Teapot (large)' WHERE id = '{teapot}'"
        ))
        .unwrap();
    let placing = {
        let (address, buyer, body) = (app.address.clone(), buyer.clone(), order_body(&[(&teapot, 2)]));
        tokio::spawn(async move {
            reqwest::Client::new().post(format!("{address}{ORDERS}")).bearer_auth(&buyer).json(&body).send().await
        })
    };
    // The order gets as far as the row (it may have priced the teapot at 500 by then).
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
            break;
        }
        assert!(!placing.is_finished(), "the order did not wait for the product's row");
        assert!(tokio::time::Instant::now() < deadline, "the order never reached the product's row");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
