-- Outbox ids without a commit-order lock (see src/db/outbox_horizon.rs). Writers no longer
-- commit one at a time: readers read no further than the horizon instead. The one rule the
-- horizon needs from writers is that a transaction has its transaction id before it draws
-- an event id; `pg_current_xact_id()` assigns it if the events are its first write.
CREATE OR REPLACE FUNCTION outbox_next_event_id() RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN nextval('events_id_seq');
END
$$;

-- A NOTIFY inside the writing transaction takes the cluster's notification lock at COMMIT
-- and holds it through the WAL flush, which serialises appending commits again. Replicas
-- now announce their commits after them, from their LISTEN connection
-- (src/db/outbox_listener.rs).
DROP TRIGGER events_notify ON events;
DROP FUNCTION outbox_notify();
