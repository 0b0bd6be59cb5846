-- Whose budget a row of credential_changes spends: `own` rows are a user's changes of their
-- own password or email (user_id is that user); `reset` rows are an admin's resets of other
-- users (user_id is the admin), limited apart and never charged to the user reset.
ALTER TABLE credential_changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'own';
