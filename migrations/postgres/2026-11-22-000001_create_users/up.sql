-- Users and their credit accounts. Ids are UUID strings so one schema serves both backends.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    deleted_at    TIMESTAMP
);
-- A deleted user's email may be registered again.
CREATE UNIQUE INDEX users_email_live ON users (email) WHERE deleted_at IS NULL;
CREATE INDEX users_created_at ON users (created_at, id);

CREATE TABLE accounts (
    user_id       TEXT PRIMARY KEY REFERENCES users (id),
    balance_cents BIGINT NOT NULL CHECK (balance_cents >= 0),
    updated_at    TIMESTAMP NOT NULL
);

-- Failed logins per (lower-cased) email, shared by every replica for throttling.
CREATE TABLE login_failures (
    id        BIGSERIAL PRIMARY KEY,
    email     TEXT NOT NULL,
    failed_at TIMESTAMP NOT NULL
);
CREATE INDEX login_failures_email ON login_failures (email, failed_at);
