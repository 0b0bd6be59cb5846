-- Outbox ids in commit order without holding a lock across the whole transaction: an id is
-- drawn only under the outbox's transaction-scoped advisory lock ("STOROUTB"), which is
-- then held until COMMIT. A writer that appends its events last holds it for that INSERT
-- and its COMMIT only, and every writer of this table gets the rule, whatever its SQL.
CREATE FUNCTION outbox_next_event_id() RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(6004511418128618562);
    RETURN nextval('events_id_seq');
END
$$;
ALTER TABLE events ALTER COLUMN id SET DEFAULT outbox_next_event_id();

-- "The outbox has new events", to every replica's relay, at COMMIT (once per transaction:
-- PostgreSQL folds identical notifications).
CREATE FUNCTION outbox_notify() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('storefront_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
