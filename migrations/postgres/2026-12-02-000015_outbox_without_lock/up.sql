-- Outbox ids without a commit-order lock (see src/db/outbox_horizon.rs). Writers no longer
-- commit one at a time: readers read no further than the horizon instead. What the horizon
-- needs from writers is to be able to tell which transactions may still hold an event id
-- that is not visible yet: every appender holds a *shared* advisory lock (appenders never
-- wait for each other) from before it draws an id until it ends, and PostgreSQL releases a
-- transaction's locks only after its commit is visible.
CREATE OR REPLACE FUNCTION outbox_next_event_id() RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- 6000570781422210904 is 'SFOUTBOX' in ASCII: classid 1397116757, objid 1413631832.
    PERFORM pg_advisory_xact_lock_shared(6000570781422210904);
    RETURN nextval('events_id_seq');
END
$$;

-- The appenders running now, by virtual transaction id (unique while the server runs).
-- A prepared (two-phase) transaction is listed as 'prepared': preparing gives its locks a
-- new owner, so its earlier virtual id disappears while it may still commit. Transactions
-- that append nothing are never listed, so they never hold readers up. Every id must come
-- from the default above: an id given explicitly, or drawn by nextval() directly, is not
-- waited for (and the sequence must keep CACHE 1, so that last_value bounds what was drawn).
CREATE FUNCTION outbox_open_appenders() RETURNS TEXT[] LANGUAGE sql VOLATILE AS $$
    SELECT ARRAY(
        SELECT CASE WHEN pid IS NULL THEN 'prepared' ELSE virtualtransaction END FROM pg_locks
        WHERE locktype = 'advisory'
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND classid = 1397116757 AND objid = 1413631832 AND objsubid = 1)
$$;

-- A NOTIFY inside the writing transaction takes the cluster's notification lock at COMMIT
-- and holds it through the WAL flush, which serialises appending commits again. Replicas
-- now announce their commits after them, from their LISTEN connection
-- (src/db/outbox_listener.rs).
DROP TRIGGER events_notify ON events;
DROP FUNCTION outbox_notify();
