DROP TABLE events;
DROP TABLE idempotency_keys;
DROP TABLE deposits;
DROP TABLE transfers;
DROP TABLE order_items;
DROP TABLE orders;
DROP TABLE products;
