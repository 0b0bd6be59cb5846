-- Tokens carry the generation they were issued in; a password or role change bumps it,
-- which invalidates every token issued before.
ALTER TABLE users ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;

-- Failed logins are counted per (email, client address) and per email, so a stranger's
-- guesses from elsewhere cannot lock the owner out.
ALTER TABLE login_failures ADD COLUMN client TEXT NOT NULL DEFAULT '';
CREATE INDEX login_failures_email_client ON login_failures (email, client, failed_at);
