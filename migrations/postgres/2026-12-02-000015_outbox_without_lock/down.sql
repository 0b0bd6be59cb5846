DROP FUNCTION outbox_open_appenders();

CREATE FUNCTION outbox_notify() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('storefront_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE OR REPLACE FUNCTION outbox_next_event_id() RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(6004511418128618562);
    RETURN nextval('events_id_seq');
END
$$;
