//! What the cache is keyed by: shared by the cache, which holds the entries, and the
//! outbox, which knows which committed event makes which entry stale; and `StaleEntries`,
//! through which whoever commits a change tells the cache, without depending on it.

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

/// Where a committed change reports the entries it made stale. The cache's tiers take
/// them; the DbExecutor, which commits, holds this rather than the cache itself (the
/// cache loads through the executors, so neither may own the other).
pub trait StaleEntries: Send + Sync {
    /// Drops `key` everywhere it is cached before any read asked after this call.
    fn forget(&self, key: CacheKey);
}
