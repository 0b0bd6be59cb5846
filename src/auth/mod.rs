//! Who is calling: password hashing and access tokens. The extractor that turns a bearer
//! token into an authenticated user is HTTP's: `http::auth_user`.

pub mod password;
pub mod tokens;
