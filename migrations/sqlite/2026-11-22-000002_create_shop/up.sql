-- The catalog, orders, money movements, idempotency keys and the transactional outbox.
CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- The name lower-cased by the service (full Unicode), for search and sorting: SQLite's
    -- lower() folds ASCII only, so neither backend's lower() is used.
    name_folded TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock       BIGINT NOT NULL CHECK (stock >= 0),
    status      TEXT NOT NULL CHECK (status IN ('active', 'archived')),
    -- Bumped by every change (stock included); the ETag is derived from it.
    version     BIGINT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL,
    deleted_at  TIMESTAMP
);
CREATE INDEX products_created_at ON products (created_at, id);

CREATE TABLE orders (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    status      TEXT NOT NULL CHECK (status IN ('paid', 'cancelled')),
    total_cents BIGINT NOT NULL CHECK (total_cents >= 0),
    created_at  TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);
CREATE INDEX orders_user_created ON orders (user_id, created_at);
CREATE INDEX orders_created ON orders (created_at, id);

-- Snapshots of what was bought: later price or name changes do not rewrite history.
CREATE TABLE order_items (
    order_id         TEXT NOT NULL REFERENCES orders (id),
    position         INTEGER NOT NULL,
    product_id       TEXT NOT NULL REFERENCES products (id),
    name             TEXT NOT NULL,
    unit_price_cents BIGINT NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, position)
);

CREATE TABLE transfers (
    id           TEXT PRIMARY KEY,
    from_user_id TEXT NOT NULL REFERENCES users (id),
    to_user_id   TEXT NOT NULL REFERENCES users (id),
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    created_at   TIMESTAMP NOT NULL
);
CREATE INDEX transfers_from ON transfers (from_user_id, created_at);
CREATE INDEX transfers_to ON transfers (to_user_id, created_at);

CREATE TABLE deposits (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    deposited_by TEXT NOT NULL REFERENCES users (id),
    created_at   TIMESTAMP NOT NULL
);

-- One row per (user, route, key). response_status is NULL while the first request runs.
CREATE TABLE idempotency_keys (
    user_id         TEXT NOT NULL,
    scope           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    response_status INTEGER,
    response_body   TEXT,
    created_at      TIMESTAMP NOT NULL,
    PRIMARY KEY (user_id, scope, idempotency_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The transactional outbox: written in the same transaction as the change it describes.
-- Ids follow commit order (writers serialise on an advisory lock while appending), so
-- any number of replicas can tail it with "id > last seen".
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    user_id    TEXT,
    payload    TEXT NOT NULL,
    -- The replica that wrote it, so a replica's relay can skip what it already knows.
    origin     TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX events_created ON events (created_at);
