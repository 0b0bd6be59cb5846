DROP TABLE login_failures;
DROP TABLE accounts;
DROP TABLE users;
