//! File descriptors: how many the process may hold, and how they are shared between what
//! must keep working (database connections, the listener, plain HTTP) and live-updates
//! connections, which are held open for long and so are the ones an attacker would pile up.

/// Descriptors the process needs besides connections: standard streams, each runtime's
/// epoll and wakers, log and migration files, NATS and Redis clients, the listener.
const BASE_RESERVE: u64 = 64;
/// A SQLite connection holds the database, its WAL and its shared-memory file.
const DESCRIPTORS_PER_DB_CONNECTION: u64 = 3;
/// The least kept for plain HTTP connections (probes, sign-in, the API) when live-updates
/// connections are at their cap; more on larger limits (a sixteenth of the limit).
const MIN_HTTP_HEADROOM: u64 = 64;

/// How this process spends its descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The open-file limit in force.
    pub limit: u64,
    /// Plain HTTP connections the server accepts at once (a live-updates connection counts
    /// here only until its handshake is done).
    pub http_connections: usize,
    /// Live-updates connections: `WS_MAX_CONNECTIONS`, or fewer when the limit is too small.
    pub live_connections: usize,
}

impl DescriptorBudget {
    /// Splits `limit` given the database connections (the pool and the probe) and the
    /// configured live-updates cap.
    pub fn plan(limit: u64, db_connections: usize, configured_live: usize) -> Self {
        let reserve = BASE_RESERVE + (db_connections as u64 + 2) * DESCRIPTORS_PER_DB_CONNECTION;
        let connections = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
        let headroom = usize::try_from(MIN_HTTP_HEADROOM.max(limit / 16)).unwrap_or(usize::MAX);
        let live_connections = configured_live.min(connections.saturating_sub(headroom));
        Self { limit, http_connections: (connections - live_connections).max(1), live_connections }
    }

    /// Whether the limit, not the setting, decides the live-updates cap.
    pub fn lowers(&self, configured_live: usize) -> bool {
        self.live_connections < configured_live
    }
}

/// Raises the soft open-file limit to the hard one (as far as this process may) and
/// answers the limit then in force.
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
            tracing::warn!(%error, soft, "cannot raise the open-file limit");
            soft
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_limit_keeps_the_setting_and_gives_http_the_rest() {
        let budget = DescriptorBudget::plan(1_048_576, 10, 20_000);
        assert_eq!(budget.live_connections, 20_000);
        assert!(!budget.lowers(20_000));
        assert_eq!(budget.http_connections, 1_048_576 - 100 - 20_000);

        let here = DescriptorBudget::plan(20_000, 10, 20_000);
        assert!(here.lowers(20_000));
        assert_eq!(here.live_connections, 20_000 - 100 - 1_250);
        assert!(here.live_connections >= 18_000);
        assert_eq!(here.http_connections, 1_250, "HTTP keeps a sixteenth when live updates are full");
    }

    #[test]
    fn a_tiny_limit_still_leaves_http_its_headroom() {
        let budget = DescriptorBudget::plan(256, 10, 20_000);
        assert_eq!(budget.live_connections, 256 - 100 - 64);
        assert_eq!(budget.http_connections, 64);
        let starved = DescriptorBudget::plan(100, 10, 20_000);
        assert_eq!((starved.live_connections, starved.http_connections), (0, 1));
    }
}
