//! The catalog as clients see it: admins write products, anyone reads, searches and pages
//! them.

use crate::common::{assert_problem, shop::*, Backend, TestApp};
use reqwest::Method;
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
);

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

    // An If-Match that is no list of entity tags is refused, naming the header; an empty
    // list (the empty value) names no version, so nothing matches it.
    let conditional_patch = |tag: &'static str| {
        let (app, path, admin) = (&app, &path, &admin);
        async move {
            let request = app.request(Method::PATCH, path).bearer_auth(admin).header("If-Match", tag);
            request.json(&json!({"price_cents": 2})).send().await.unwrap()
        }
    };
    for malformed in ["1500", "\"1\" \"2\"", "w/\"2\"", "\"2"] {
        let refused = assert_problem(conditional_patch(malformed).await, 422).await;
        assert_eq!(refused["errors"][0]["field"], "If-Match", "{malformed}");
    }
    assert_problem(conditional_patch("").await, 412).await;
    assert_problem(conditional_patch(", W/\"2\"").await, 412).await;
    assert_eq!(json_of(app.get(&path).await).await["price_cents"], 1500, "none of those changed anything");

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

    // A minimum above the maximum is an empty range: every product is outside it. (No schema
    // can state a rule between two parameters, so the document's valid requests all succeed.)
    let inverted = list_products(&app, &[("min_price_cents", "2000"), ("max_price_cents", "1000")]).await;
    assert_eq!((inverted["total"].as_i64(), inverted["data"].as_array().map(Vec::len)), (Some(0), Some(0)));
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
    let negative = list_products_response(&app, &[("min_price_cents", "-1")]).await;
    assert_eq!(fields(&assert_problem(negative, 422).await), ["min_price_cents"]);
    // A query has no types: a value that is not a number is invalid, named like the others.
    let cheap = list_products_response(&app, &[("min_price_cents", "cheap")]).await;
    assert_eq!(fields(&assert_problem(cheap, 422).await), ["min_price_cents"]);
    let fraction = list_products_response(&app, &[("max_price_cents", "1.5")]).await;
    assert_eq!(fields(&assert_problem(fraction, 422).await), ["max_price_cents"]);
}
