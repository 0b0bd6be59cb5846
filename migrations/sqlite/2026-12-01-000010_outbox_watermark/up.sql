-- How far the outbox has been pruned: the highest event id ever deleted by retention.
-- A subscriber resuming from an id below it may have missed events that no longer exist.
-- It is recorded, not inferred from missing ids, because PostgreSQL sequences leave
-- holes on rollback.
CREATE TABLE outbox_watermark (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through BIGINT NOT NULL
);
INSERT INTO outbox_watermark (id, pruned_through) VALUES (1, 0);
