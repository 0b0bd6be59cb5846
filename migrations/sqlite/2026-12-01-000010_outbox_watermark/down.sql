DROP TABLE outbox_watermark;
