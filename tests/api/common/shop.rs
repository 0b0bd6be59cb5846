//! Helpers for the shop scenarios (catalog, accounts, orders, idempotency, concurrency,
//! outbox): each asserts the happy status it needs, so a scenario reads as its behaviour.

use std::collections::BTreeSet;

use reqwest::{header::HeaderValue, Method, Response};
use serde_json::{json, Value};

use super::TestApp;

pub const PRODUCTS: &str = "/api/v1/products";
pub const ORDERS: &str = "/api/v1/orders";
pub const TRANSFERS: &str = "/api/v1/transfers";
pub const ACCOUNT: &str = "/api/v1/account";
pub const INSUFFICIENT_STOCK: &str = "urn:storefront:problem:insufficient-stock";
pub const INSUFFICIENT_FUNDS: &str = "urn:storefront:problem:insufficient-funds";

pub async fn json_of(response: Response) -> Value {
    response.json().await.expect("JSON body")
}

pub async fn status_and_body(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

pub fn header(response: &Response, name: &str) -> String {
    response.headers().get(name).unwrap_or_else(|| panic!("response lacks {name}")).to_str().unwrap().to_owned()
}

pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().expect("a JSON object").keys().cloned().collect();
    keys.sort();
    keys
}

/// The distinct `errors[].field` names of a validation problem, sorted.
pub fn fields(problem: &Value) -> Vec<String> {
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

pub fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_owned()
}

pub fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().expect("page data").iter().map(id_of).collect()
}

pub fn names(page: &Value) -> Vec<String> {
    page["data"].as_array().expect("page data").iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect()
}

pub fn name_set(page: &Value) -> BTreeSet<String> {
    names(page).into_iter().collect()
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|&s| s.to_owned()).collect()
}

pub async fn create_product(app: &TestApp, admin: &str, body: Value) -> Value {
    let response = app.send_json(Method::POST, PRODUCTS, admin, &body).await;
    assert_eq!(response.status(), 201, "create product {body}");
    json_of(response).await
}

/// An active product; returns its id.
pub async fn product(app: &TestApp, admin: &str, name: &str, price_cents: i64, stock: i64) -> String {
    id_of(&create_product(app, admin, json!({"name": name, "price_cents": price_cents, "stock": stock})).await)
}

pub fn product_path(id: &str) -> String {
    format!("{PRODUCTS}/{id}")
}

pub async fn read_product(app: &TestApp, id: &str) -> Value {
    let response = app.get(&product_path(id)).await;
    assert_eq!(response.status(), 200, "read product {id}");
    json_of(response).await
}

pub async fn stock(app: &TestApp, id: &str) -> i64 {
    read_product(app, id).await["stock"].as_i64().expect("stock")
}

pub async fn delete(app: &TestApp, path: &str, token: &str) -> Response {
    app.request(Method::DELETE, path).bearer_auth(token).send().await.expect("request sent")
}

pub fn deposit_path(user_id: &str) -> String {
    format!("/api/v1/accounts/{user_id}/deposits")
}

pub async fn deposit(app: &TestApp, admin: &str, user_id: &str, amount_cents: i64) -> Value {
    let response =
        app.send_json(Method::POST, &deposit_path(user_id), admin, &json!({"amount_cents": amount_cents})).await;
    assert_eq!(response.status(), 201, "deposit {amount_cents} for {user_id}");
    json_of(response).await
}

pub async fn balance(app: &TestApp, token: &str) -> i64 {
    let response = app.get_as(ACCOUNT, token).await;
    assert_eq!(response.status(), 200, "read balance");
    json_of(response).await["balance_cents"].as_i64().expect("balance_cents")
}

pub fn transfer_body(to_user_id: &str, amount_cents: i64) -> Value {
    json!({"to_user_id": to_user_id, "amount_cents": amount_cents})
}

pub async fn transfer(app: &TestApp, token: &str, to_user_id: &str, amount_cents: i64) -> Response {
    app.send_json(Method::POST, TRANSFERS, token, &transfer_body(to_user_id, amount_cents)).await
}

pub fn order_body(lines: &[(&str, i64)]) -> Value {
    let items: Vec<Value> =
        lines.iter().map(|(id, quantity)| json!({"product_id": id, "quantity": quantity})).collect();
    json!({ "items": items })
}

pub async fn order(app: &TestApp, token: &str, lines: &[(&str, i64)]) -> Response {
    app.send_json(Method::POST, ORDERS, token, &order_body(lines)).await
}

pub async fn paid_order(app: &TestApp, token: &str, lines: &[(&str, i64)]) -> Value {
    let response = order(app, token, lines).await;
    assert_eq!(response.status(), 201, "order {lines:?}");
    json_of(response).await
}

pub fn order_path(id: &str) -> String {
    format!("{ORDERS}/{id}")
}

pub async fn cancel(app: &TestApp, token: &str, order_id: &str) -> Response {
    app.request(Method::POST, &format!("{ORDERS}/{order_id}/cancel")).bearer_auth(token).send().await.expect("sent")
}

/// A page read with a token; asserts 200.
pub async fn page(app: &TestApp, path: &str, token: &str) -> Value {
    let response = app.get_as(path, token).await;
    assert_eq!(response.status(), 200, "GET {path}");
    json_of(response).await
}

pub async fn total(app: &TestApp, path: &str, token: &str) -> i64 {
    page(app, path, token).await["total"].as_i64().expect("total")
}

/// A POST with an `Idempotency-Key`.
pub async fn keyed(app: &TestApp, path: &str, token: &str, key: &str, body: &Value) -> Response {
    keyed_raw(app, path, token, HeaderValue::from_str(key).expect("a sendable header value"), body).await
}

pub async fn keyed_raw(app: &TestApp, path: &str, token: &str, key: HeaderValue, body: &Value) -> Response {
    app.request(Method::POST, path)
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

pub async fn list_products(app: &TestApp, query: &[(&str, &str)]) -> Value {
    let response = app.request(Method::GET, PRODUCTS).query(query).send().await.expect("request sent");
    assert_eq!(response.status(), 200, "list products {query:?}");
    json_of(response).await
}

pub async fn list_products_response(app: &TestApp, query: &[(&str, &str)]) -> Response {
    app.request(Method::GET, PRODUCTS).query(query).send().await.expect("request sent")
}

/// A tiny deterministic PRNG (xorshift64), so a failing random schedule can be replayed.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(bound).unwrap()).unwrap()
    }
}

pub const PRODUCT_KEYS: [&str; 8] =
    ["created_at", "description", "id", "name", "price_cents", "status", "stock", "updated_at"];
pub const ORDER_KEYS: [&str; 7] = ["created_at", "id", "items", "status", "total_cents", "updated_at", "user_id"];
pub const ACCOUNT_KEYS: [&str; 3] = ["balance_cents", "updated_at", "user_id"];
pub const TRANSFER_KEYS: [&str; 5] = ["amount_cents", "created_at", "from_user_id", "id", "to_user_id"];
