DROP TRIGGER events_notify ON events;
DROP FUNCTION outbox_notify();
ALTER TABLE events ALTER COLUMN id SET DEFAULT nextval('events_id_seq');
DROP FUNCTION outbox_next_event_id();
