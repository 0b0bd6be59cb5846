-- The request that caused each outbox event, when a request did (NULL for the CLI).
ALTER TABLE events ADD COLUMN request_id TEXT;

-- The NATS publisher's progress and lease. One row: the last event id JetStream
-- acknowledged (publishing resumes after it), and the replica that publishes, which
-- holds the lease until lease_expires_at unless it renews it.
CREATE TABLE nats_publisher (
    name              TEXT PRIMARY KEY,
    published_through BIGINT NOT NULL,
    holder            TEXT,
    lease_expires_at  TIMESTAMP
);
INSERT INTO nats_publisher (name, published_through) VALUES ('nats', 0);
