//! Who is calling: password hashing, access tokens, and the extractor that turns a bearer
//! token into an authenticated user.

pub mod extractor;
pub mod password;
pub mod tokens;

pub use extractor::AuthUser;
