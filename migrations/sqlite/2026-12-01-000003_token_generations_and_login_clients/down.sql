DROP INDEX login_failures_email_client;
ALTER TABLE login_failures DROP COLUMN client;
ALTER TABLE users DROP COLUMN token_generation;
