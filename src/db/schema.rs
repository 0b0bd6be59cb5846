//! Table definitions shared by both backends (see diesel.toml for why it is hand-written).

diesel::table! {
    users (id) {
        id -> Text,
        email -> Text,
        name -> Text,
        role -> Text,
        password_hash -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        deleted_at -> Nullable<Timestamp>,
        token_generation -> BigInt,
    }
}

diesel::table! {
    accounts (user_id) {
        user_id -> Text,
        balance_cents -> BigInt,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    login_failures (id) {
        id -> BigInt,
        email -> Text,
        failed_at -> Timestamp,
        client -> Text,
    }
}

diesel::table! {
    credential_changes (id) {
        id -> BigInt,
        user_id -> Text,
        changed_at -> Timestamp,
        kind -> Text,
    }
}

diesel::joinable!(accounts -> users (user_id));

diesel::table! {
    products (id) {
        id -> Text,
        name -> Text,
        name_folded -> Text,
        description -> Text,
        price_cents -> BigInt,
        stock -> BigInt,
        status -> Text,
        version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    orders (id) {
        id -> Text,
        user_id -> Text,
        status -> Text,
        total_cents -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    order_items (order_id, position) {
        order_id -> Text,
        position -> Integer,
        product_id -> Text,
        name -> Text,
        unit_price_cents -> BigInt,
        quantity -> BigInt,
    }
}

diesel::table! {
    transfers (id) {
        id -> Text,
        from_user_id -> Text,
        to_user_id -> Text,
        amount_cents -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    deposits (id) {
        id -> Text,
        user_id -> Text,
        amount_cents -> BigInt,
        deposited_by -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    idempotency_keys (user_id, scope, idempotency_key) {
        user_id -> Text,
        scope -> Text,
        idempotency_key -> Text,
        fingerprint -> Text,
        response_status -> Nullable<Integer>,
        response_body -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    events (id) {
        id -> BigInt,
        topic -> Text,
        kind -> Text,
        user_id -> Nullable<Text>,
        payload -> Text,
        origin -> Nullable<Text>,
        created_at -> Timestamp,
        request_id -> Nullable<Text>,
    }
}

diesel::table! {
    nats_publisher (name) {
        name -> Text,
        published_through -> BigInt,
        holder -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    outbox_watermark (id) {
        id -> Integer,
        pruned_through -> BigInt,
    }
}

diesel::joinable!(order_items -> orders (order_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    accounts,
    login_failures,
    credential_changes,
    products,
    orders,
    order_items,
    transfers,
    deposits,
    idempotency_keys,
    events,
    outbox_watermark,
    nats_publisher,
);
