//! What the cache is keyed by: shared by the cache, which holds the entries, and the
//! outbox, which knows which committed event makes which entry stale.

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    Product(Uuid),
    User(Uuid),
}

impl CacheKey {
    /// The cache's name in metrics and reports.
    pub fn cache(&self) -> &'static str {
        match self {
            Self::Product(_) => "products",
            Self::User(_) => "users",
        }
    }
}
