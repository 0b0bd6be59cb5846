-- Password and email changes per user, counted for their rate limit by every replica. A row
-- is written before the current password is checked and the new one hashed, and deleted
-- again when the change does not happen.
CREATE TABLE credential_changes (
    id         BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    changed_at TIMESTAMP NOT NULL
);
CREATE INDEX credential_changes_user ON credential_changes (user_id, changed_at);
