DROP TABLE nats_publisher;
ALTER TABLE events DROP COLUMN request_id;
