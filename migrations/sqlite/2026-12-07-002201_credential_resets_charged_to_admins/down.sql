ALTER TABLE credential_changes DROP COLUMN kind;
