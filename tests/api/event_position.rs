//! Reads carry their position, black-box: every `GET` of an outbox-backed resource answers
//! `Event-Position`, and a client that reads, subscribes with `"since"` set to it and
//! applies what it receives ends at the current state — while others write, and on
//! PostgreSQL while an appending transaction stays open across the read.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::{Method, Response};
use serde_json::{json, Value};
use tokio::{sync::watch, task::JoinHandle};

use crate::common::{
    events::read_events,
    shop::{header, id_of, order_path, paid_order, product, product_path, XorShift, ACCOUNT, ORDERS, PRODUCTS},
    ws::WsClient,
    Backend, TestApp,
};

on_both_backends!(
    every_read_of_an_outbox_backed_resource_says_where_the_event_stream_stands,
    a_cached_answer_carries_the_position_it_was_loaded_at,
    the_position_survives_a_relay_restart_and_moves_on,
    reading_then_subscribing_from_the_position_misses_no_change_while_others_write,
);

// PostgreSQL only: there ids are drawn before commit, so an event may commit after higher
// ids did; a read while it is open must answer a position below it.
on_postgres_only!(
    postgres_open_appender:
        a_read_while_an_appending_transaction_is_open_answers_a_position_below_it_and_misses_nothing,
        a_replica_that_starts_while_an_appender_is_open_answers_positions_below_it
);

const EVENT_POSITION: &str = "event-position";
const ORIGIN: &str = "https://shop.example";
const WAIT: Duration = Duration::from_secs(30);

fn position_of(response: &Response) -> i64 {
    let value =
        response.headers().get(EVENT_POSITION).unwrap_or_else(|| panic!("{} lacks Event-Position", response.url()));
    value.to_str().unwrap().parse().unwrap_or_else(|_| panic!("Event-Position {value:?} is not an event id"))
}

async fn send(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> Response {
    let request = app.request(method, path);
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.expect("request sent")
}

/// The newest event id in the outbox (0 when it is empty).
fn newest_event(app: &TestApp) -> i64 {
    read_events(&app.database_url).last().map_or(0, |event| event.id)
}

/// Waits until reads answer `position`: this replica has read the outbox that far.
async fn wait_until_reads_reach(app: &TestApp, position: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answered = position_of(&send(app, Method::GET, PRODUCTS, None).await);
        assert!(answered <= position, "a read answered {answered}, beyond the newest event {position}");
        if answered == position {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "reads stayed at {answered}, short of {position}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn every_read_of_an_outbox_backed_resource_says_where_the_event_stream_stands(backend: Backend) {
    let app = TestApp::builder(backend).setting("cors-allowed-origins", ORIGIN).spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    app.deposit(&admin, &alice_id, 1000).await;
    let kettle = product(&app, &admin, "Kettle", 300, 5).await;
    let order = paid_order(&app, &alice, &[(&kettle, 1)]).await;
    // Last, so Alice's cached record (what /users/me answers) is loaded after the wait below.
    let renamed =
        app.send_json(Method::PATCH, &format!("/api/v1/users/{alice_id}"), &alice, &json!({"name": "Al"})).await;
    assert_eq!(renamed.status(), 200);
    let newest = newest_event(&app);
    wait_until_reads_reach(&app, newest).await;

    let reads = [
        (PRODUCTS.to_owned(), None),
        (product_path(&kettle), None),
        (ORDERS.to_owned(), Some(&alice)),
        (format!("{ORDERS}?user_id={alice_id}"), Some(&admin)),
        (order_path(&id_of(&order)), Some(&alice)),
        (format!("/api/v1/users/{alice_id}/orders"), Some(&alice)),
        (ACCOUNT.to_owned(), Some(&alice)),
        ("/api/v1/users/me".to_owned(), Some(&alice)),
        (format!("/api/v1/users/{alice_id}"), Some(&admin)),
        ("/api/v1/users".to_owned(), Some(&admin)),
    ];
    for (path, token) in &reads {
        for method in [Method::GET, Method::HEAD] {
            let response = send(&app, method.clone(), path, token.map(String::as_str)).await;
            assert_eq!(response.status(), 200, "{method} {path}");
            // Nothing committed after the newest event, and everything up to it is reflected.
            assert_eq!(position_of(&response), newest, "{method} {path}");
        }
    }

    // A 304 says where the stream stands too: the client's copy is current as of there.
    let etag = header(&send(&app, Method::GET, &product_path(&kettle), None).await, "etag");
    let not_modified =
        app.request(Method::GET, &product_path(&kettle)).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(position_of(&not_modified), newest);

    // A nothing-to-see answer carries no position: it reflects no resource.
    let missing = send(&app, Method::GET, &product_path(&uuid::Uuid::now_v7().to_string()), None).await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().get(EVENT_POSITION).is_none());

    // Browser scripts may read it.
    let cross_origin = app.request(Method::GET, PRODUCTS).header("origin", ORIGIN).send().await.unwrap();
    let exposed = header(&cross_origin, "access-control-expose-headers").to_ascii_lowercase();
    assert!(exposed.split(',').any(|name| name.trim() == EVENT_POSITION), "exposed: {exposed}");

    // And the API document says so.
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    let documented = [
        ("/api/v1/products", "200"),
        ("/api/v1/products/{id}", "200"),
        ("/api/v1/products/{id}", "304"),
        ("/api/v1/orders", "200"),
        ("/api/v1/orders/{id}", "200"),
        ("/api/v1/users/{id}/orders", "200"),
        ("/api/v1/account", "200"),
        ("/api/v1/users/me", "200"),
        ("/api/v1/users", "200"),
        ("/api/v1/users/{id}", "200"),
    ];
    for (path, status) in documented {
        let header = &document["paths"][path]["get"]["responses"][status]["headers"]["Event-Position"];
        assert_eq!(header["schema"]["type"], "integer", "GET {path} {status} documents Event-Position: {header}");
    }
}

const CACHE_HITS: &str = r#"storefront_cache_requests_total{cache="products",result="hit"}"#;

async fn a_cached_answer_carries_the_position_it_was_loaded_at(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let kettle = product(&app, &admin, "Kettle", 300, 5).await;
    let lamp = product(&app, &admin, "Lamp", 900, 2).await;
    let loaded_at = newest_event(&app);
    wait_until_reads_reach(&app, loaded_at).await;
    let first = send(&app, Method::GET, &product_path(&kettle), None).await;
    assert_eq!(position_of(&first), loaded_at);
    let body: Value = first.json().await.unwrap();

    // Another product changes: the stream moves on, the kettle's cache entry stays.
    let patched = app.send_json(Method::PATCH, &product_path(&lamp), &admin, &json!({"stock": 9})).await;
    assert_eq!(patched.status(), 200);
    let moved_on = newest_event(&app);
    assert!(moved_on > loaded_at);
    wait_until_reads_reach(&app, moved_on).await;

    let hits = app.metric(CACHE_HITS).await;
    let again = send(&app, Method::GET, &product_path(&kettle), None).await;
    assert_eq!(app.metric(CACHE_HITS).await, hits + 1.0, "the kettle came from the cache");
    // Were the entry stale, a change it missed would have an id above where it was loaded,
    // not above where the stream stands now.
    assert_eq!(position_of(&again), loaded_at);
    assert_eq!(again.json::<Value>().await.unwrap(), body);
    let head = send(&app, Method::HEAD, &product_path(&kettle), None).await;
    assert_eq!(position_of(&head), loaded_at);

    // The kettle changes: its entry goes, and the next read is loaded and positioned afresh.
    let patched = app.send_json(Method::PATCH, &product_path(&kettle), &admin, &json!({"stock": 4})).await;
    assert_eq!(patched.status(), 200);
    let changed = newest_event(&app);
    wait_until_reads_reach(&app, changed).await;
    let fresh = send(&app, Method::GET, &product_path(&kettle), None).await;
    assert_eq!(position_of(&fresh), changed);
    assert_eq!(fresh.json::<Value>().await.unwrap()["stock"], 4);
}

async fn the_position_survives_a_relay_restart_and_moves_on(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let kettle = product(&app, &admin, "Kettle", 300, 5).await;
    let before = newest_event(&app);
    wait_until_reads_reach(&app, before).await;

    assert_eq!(app.chaos(json!({"actor": "event_relay", "fault": "panic"})).await.status(), 500);
    // Neither back (a client would be replayed what it read) nor ahead of what was read.
    assert_eq!(position_of(&send(&app, Method::GET, PRODUCTS, None).await), before);
    let patched = app.send_json(Method::PATCH, &product_path(&kettle), &admin, &json!({"stock": 4})).await;
    assert_eq!(patched.status(), 200);
    let after = newest_event(&app);
    assert!(after > before);
    wait_until_reads_reach(&app, after).await;
}

/// What a client reads and then follows live.
#[derive(Debug, Clone)]
enum Resource {
    /// The whole product list (one page holds it).
    Catalog,
    Product(String),
    /// The client's own balance.
    Account,
    /// The client's own orders (one page holds them).
    Orders,
}

/// A client's copy of a resource, to which it applies events.
#[derive(Debug, Clone, PartialEq)]
enum View {
    Catalog(BTreeMap<String, Value>),
    /// `None`: deleted.
    Product(Option<Value>),
    Account(Value),
    Orders(BTreeMap<String, Value>),
}

fn by_id(page: &Value) -> BTreeMap<String, Value> {
    let items = page["data"].as_array().expect("page data");
    // Not `total`: on PostgreSQL a list counts in a statement of its own, which may see a
    // row more or less than the page does while others write.
    assert!(items.len() < 100, "one page of 100 holds the whole list");
    items.iter().map(|item| (id_of(item), item.clone())).collect()
}

impl Resource {
    fn topic(&self) -> &'static str {
        match self {
            Self::Catalog | Self::Product(_) => "products",
            Self::Account => "account",
            Self::Orders => "orders",
        }
    }

    /// Reads it over HTTP: the position answered, and the copy.
    async fn read(&self, app: &TestApp, token: &str) -> (i64, View) {
        let (path, token) = match self {
            Self::Catalog => (format!("{PRODUCTS}?per_page=100"), None),
            Self::Product(id) => (product_path(id), None),
            Self::Account => (ACCOUNT.to_owned(), Some(token)),
            Self::Orders => (format!("{ORDERS}?per_page=100"), Some(token)),
        };
        let response = send(app, Method::GET, &path, token).await;
        assert_eq!(response.status(), 200, "GET {path}");
        let position = position_of(&response);
        let body: Value = response.json().await.unwrap();
        let view = match self {
            Self::Catalog => View::Catalog(by_id(&body)),
            Self::Product(_) => View::Product(Some(body)),
            Self::Account => View::Account(body),
            Self::Orders => View::Orders(by_id(&body)),
        };
        (position, view)
    }
}

impl View {
    /// Applies one event: it carries the full new state of what changed.
    fn apply(&mut self, event: &Value) {
        let (kind, data) = (event["kind"].as_str().unwrap(), &event["data"]);
        match self {
            Self::Catalog(products) if kind == "product.deleted" => {
                products.remove(&id_of(data));
            }
            Self::Catalog(items) | Self::Orders(items) => {
                items.insert(id_of(data), data.clone());
            }
            Self::Product(product) => {
                let ours = product.as_ref().map(id_of);
                if ours.is_some_and(|ours| ours == id_of(data)) {
                    *product = (kind != "product.deleted").then(|| data.clone());
                }
            }
            Self::Account(account) => *account = data.clone(),
        }
    }
}

/// A client that read a resource and subscribed from the position the read answered; its
/// events are read in the background (so its queue never backs up) until `last` is set
/// and reached.
struct Follower {
    resource: Resource,
    position: i64,
    view: View,
    last: watch::Sender<Option<i64>>,
    events: JoinHandle<Vec<Value>>,
}

/// How long a follower may hear nothing: only while a transaction is held open (the relay
/// waits for it), or between the writers' end and the test naming the last event.
const FOLLOWER_PATIENCE: Duration = Duration::from_secs(120);

async fn follow(app: &TestApp, resource: Resource, token: &str) -> Follower {
    let (position, view) = resource.read(app, token).await;
    let private = matches!(resource, Resource::Account | Resource::Orders);
    let mut live = WsClient::connect(app, private.then_some(token)).await;
    live.subscribe(&[resource.topic()], Some(position)).await;
    let (last, mut wanted) = watch::channel(None::<i64>);
    let events = tokio::spawn(async move {
        let (mut events, mut newest) = (Vec::new(), position);
        loop {
            if wanted.borrow_and_update().is_some_and(|last| newest >= last) {
                return events;
            }
            tokio::select! {
                event = live.next_json_within(FOLLOWER_PATIENCE) => {
                    assert_eq!(event["type"], "event", "{event}");
                    let id = event["id"].as_i64().unwrap();
                    assert!(id > newest, "event {id} after {newest}: in id order, each once, none at or below since");
                    newest = id;
                    events.push(event);
                }
                changed = wanted.changed() => {
                    if changed.is_err() {
                        // The test ended (it failed elsewhere): nobody waits for these.
                        return events;
                    }
                }
            }
        }
    });
    Follower { resource, position, view, last, events }
}

struct Shop {
    admin: String,
    alice_id: String,
    alice: String,
    bob_id: String,
    bob: String,
    /// Products no background writer touches: [0] for a PostgreSQL transaction to hold
    /// open, [1] for a marked change.
    untouched: [String; 2],
    /// Products the background shoppers order (their stock changes).
    ordered: Vec<String>,
    /// Products the background admin edits. Not the ordered ones: on PostgreSQL a `PATCH`
    /// racing an order on the same product can answer 412 even without `If-Match`.
    edited: Vec<String>,
}

async fn open_shop(backend: Backend) -> (Arc<TestApp>, Arc<Shop>) {
    let app = TestApp::builder(backend)
        // Every round's clients stay connected until the end; their queues take whatever
        // burst a held-open transaction releases.
        .setting("ws-max-connections-per-user", "100")
        .setting("ws-max-pending", "100000")
        .spawn()
        .await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let (bob_id, bob) = app.user("bob@example.com").await;
    app.deposit(&admin, &alice_id, 1_000_000).await;
    app.deposit(&admin, &bob_id, 1_000_000).await;
    let untouched =
        [product(&app, &admin, "Held", 100, 10_000).await, product(&app, &admin, "Marked", 100, 10_000).await];
    let (mut ordered, mut edited) = (Vec::new(), Vec::new());
    for name in ["Kettle", "Lamp"] {
        ordered.push(product(&app, &admin, name, 100, 10_000).await);
    }
    for name in ["Mug", "Vase"] {
        edited.push(product(&app, &admin, name, 100, 10_000).await);
    }
    (Arc::new(app), Arc::new(Shop { admin, alice_id, alice, bob_id, bob, untouched, ordered, edited }))
}

/// Writers that change the catalog, orders, balances and transfers until `stop` (each
/// within bounds that keep every list on one page).
fn start_writers(app: &Arc<TestApp>, shop: &Arc<Shop>, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
    let catalog = {
        let (app, shop, stop) = (Arc::clone(app), Arc::clone(shop), Arc::clone(stop));
        tokio::spawn(async move {
            let mut random = XorShift(0x5eed_0001);
            let mut extras: Vec<String> = Vec::new();
            for round in 0..150 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                if round % 5 == 0 {
                    extras.push(product(&app, &shop.admin, &format!("Extra {round}"), 50, 10).await);
                } else if round % 5 == 2 && extras.len() > 1 {
                    let gone = extras.remove(0);
                    let response =
                        app.request(Method::DELETE, &product_path(&gone)).bearer_auth(&shop.admin).send().await;
                    assert_eq!(response.unwrap().status(), 204);
                } else {
                    let id = &shop.edited[random.below(shop.edited.len())];
                    let body = json!({"name": format!("Item {round}"), "price_cents": 100 + round});
                    let response = app.send_json(Method::PATCH, &product_path(id), &shop.admin, &body).await;
                    assert_eq!(response.status(), 200);
                }
            }
        })
    };
    let shopper = |token: String, other: String, seed: u64| {
        let (app, shop, stop) = (Arc::clone(app), Arc::clone(shop), Arc::clone(stop));
        tokio::spawn(async move {
            let mut random = XorShift(seed);
            let mut paid: Vec<String> = Vec::new();
            for round in 0..60 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let id = &shop.ordered[random.below(shop.ordered.len())];
                paid.push(id_of(&paid_order(&app, &token, &[(id, 1)]).await));
                if round % 3 == 2 {
                    let response = crate::common::shop::cancel(&app, &token, &paid.remove(0)).await;
                    assert_eq!(response.status(), 200);
                }
                if round % 4 == 3 {
                    assert_eq!(crate::common::shop::transfer(&app, &token, &other, 1).await.status(), 201);
                }
            }
        })
    };
    vec![
        catalog,
        shopper(shop.alice.clone(), shop.bob_id.clone(), 0x5eed_0002),
        shopper(shop.bob.clone(), shop.alice_id.clone(), 0x5eed_0003),
    ]
}

/// One round: Alice reads each kind of resource and follows it from its position.
async fn join_round(app: &TestApp, shop: &Shop, round: usize) -> Vec<Follower> {
    let products: Vec<&String> = shop.untouched.iter().chain(&shop.ordered).chain(&shop.edited).collect();
    let mut followers = Vec::new();
    for resource in [
        Resource::Catalog,
        Resource::Product(products[round % products.len()].clone()),
        Resource::Account,
        Resource::Orders,
    ] {
        followers.push(follow(app, resource, &shop.alice).await);
    }
    followers
}

/// Stops the writers, then checks every follower: what it read, with every event it
/// received through the last one it may see applied, is what a read answers now.
async fn all_caught_up(
    app: &TestApp,
    shop: &Shop,
    stop: &AtomicBool,
    writers: Vec<JoinHandle<()>>,
    followers: Vec<Follower>,
) {
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.expect("a writer failed");
    }
    let outbox = read_events(&app.database_url);
    for follower in &followers {
        let topic = follower.resource.topic();
        let last = outbox
            .iter()
            .filter(|event| event.topic == topic)
            .filter(|event| topic == "products" || event.user_id.as_deref() == Some(shop.alice_id.as_str()))
            .map(|event| event.id)
            .max()
            .unwrap_or(0);
        follower.last.send_replace(Some(last));
    }
    let mut changed = 0;
    for Follower { resource, position, view: read, events, .. } in followers {
        let events = tokio::time::timeout(WAIT, events).await.expect("events through the last one").unwrap();
        let mut view = read.clone();
        for event in &events {
            view.apply(event);
        }
        let (_, now) = resource.read(app, &shop.alice).await;
        assert_eq!(view, now, "{resource:?} read at {position}, with every later event applied, is current");
        changed += usize::from(view != read);
    }
    assert!(changed > 0, "writers changed something after some read");
}

async fn reading_then_subscribing_from_the_position_misses_no_change_while_others_write(backend: Backend) {
    let (app, shop) = open_shop(backend).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&app, &shop, &stop);
    let mut followers = Vec::new();
    for round in 0..8 {
        followers.extend(join_round(&app, &shop, round).await);
    }
    all_caught_up(&app, &shop, &stop, writers, followers).await;
}

async fn a_read_while_an_appending_transaction_is_open_answers_a_position_below_it_and_misses_nothing() {
    use diesel::{connection::SimpleConnection, Connection, PgConnection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Number {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let (app, shop) = open_shop(Backend::Postgres).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&app, &shop, &stop);
    let mut followers = Vec::new();
    for round in 0..2 {
        followers.extend(join_round(&app, &shop, round).await);
    }

    // Another writer (an operator, another service) changes a product, appends its event
    // and stays open.
    let [held, marked] = &shop.untouched;
    let held_product: Value = send(&app, Method::GET, &product_path(held), None).await.json().await.unwrap();
    let mut appender = PgConnection::establish(&app.database_url).unwrap();
    appender.batch_execute("BEGIN").unwrap();
    diesel::sql_query("UPDATE products SET stock = 77, version = version + 1 WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(held)
        .execute(&mut appender)
        .unwrap();
    let mut changed = held_product.clone();
    changed["stock"] = json!(77);
    let held_id = diesel::sql_query(
        "INSERT INTO events (topic, kind, payload, created_at) \
         VALUES ('products', 'product.updated', $1, now()) RETURNING id AS n",
    )
    .bind::<diesel::sql_types::Text, _>(changed.to_string())
    .get_result::<Number>(&mut appender)
    .unwrap()
    .n;

    // A later change commits meanwhile, with a higher id.
    let response =
        app.send_json(Method::PATCH, &product_path(marked), &shop.admin, &json!({"name": "Marked after"})).await;
    assert_eq!(response.status(), 200);
    let marked_id = read_events(&app.database_url)
        .into_iter()
        .filter(|event| event.payload["name"] == "Marked after")
        .map(|event| event.id)
        .max()
        .expect("the marked change's event");
    assert!(marked_id > held_id);

    // Reads now reflect the later change but not the open one: their position stays below
    // the open one's id, or a client subscribing from it would never get that event.
    for round in 2..4 {
        let joined = join_round(&app, &shop, round).await;
        for follower in &joined {
            assert!(
                follower.position < held_id,
                "{:?} read at {}, not below {held_id}",
                follower.resource,
                follower.position
            );
            if let View::Catalog(products) = &follower.view {
                assert_eq!(products[marked]["name"], "Marked after", "the read reflects event {marked_id}");
                assert_eq!(products[held]["stock"], held_product["stock"], "and not event {held_id}");
            }
        }
        followers.extend(joined);
    }
    appender.batch_execute("COMMIT").unwrap();
    for round in 4..6 {
        followers.extend(join_round(&app, &shop, round).await);
    }
    all_caught_up(&app, &shop, &stop, writers, followers).await;
    let (_, now) = Resource::Product(held.clone()).read(&app, &shop.alice).await;
    assert_eq!(now, View::Product(Some(changed)), "the held change is read once committed");
}

/// A replica starting while another writer's transaction holds an event id open gives up
/// waiting for it (`StartingPoint`), and starts its tail past it; the position its reads
/// answer must still stay below that id until it commits.
async fn a_replica_that_starts_while_an_appender_is_open_answers_positions_below_it() {
    use diesel::{connection::SimpleConnection, Connection, PgConnection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Number {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let first = TestApp::spawn(Backend::Postgres).await;
    let (_, admin) = first.admin("root@example.com").await;
    let kettle = product(&first, &admin, "Kettle", 300, 5).await;
    let before: Value = send(&first, Method::GET, &product_path(&kettle), None).await.json().await.unwrap();

    let mut appender = PgConnection::establish(&first.database_url).unwrap();
    appender.batch_execute("BEGIN").unwrap();
    diesel::sql_query("UPDATE products SET stock = 77, version = version + 1 WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(&kettle)
        .execute(&mut appender)
        .unwrap();
    let mut changed = before.clone();
    changed["stock"] = json!(77);
    let held_id = diesel::sql_query(
        "INSERT INTO events (topic, kind, payload, created_at) \
         VALUES ('products', 'product.updated', $1, now()) RETURNING id AS n",
    )
    .bind::<diesel::sql_types::Text, _>(changed.to_string())
    .get_result::<Number>(&mut appender)
    .unwrap()
    .n;

    let second = TestApp::builder(Backend::Postgres).database_url(&first.database_url).spawn().await;
    let (read_at, read) = Resource::Catalog.read(&second, &admin).await;
    assert!(read_at < held_id, "read at {read_at}, not below the open event {held_id}");
    let View::Catalog(products) = &read else { unreachable!("a catalog read") };
    assert_eq!(products[&kettle], before);

    appender.batch_execute("COMMIT").unwrap();
    let mut live = WsClient::connect(&second, None).await;
    live.subscribe(&["products"], Some(read_at)).await;
    let mut view = read.clone();
    for event in live.events_through(held_id).await {
        view.apply(&event);
    }
    let View::Catalog(products) = &view else { unreachable!("a catalog view") };
    assert_eq!(products[&kettle], changed, "the held change reaches a client that joined from the position");
}
