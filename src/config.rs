//! Settings, each declared once: a typed clap argument carrying its flag, environment
//! variable, default, parser and help, in one struct per subsystem. `Config` is what clap
//! parses plus what no single setting decides (defaults derived from other settings,
//! APP_ENV=production needing JWT_SECRET, DB_POOL_SIZE ≥ DB_WORKERS). A value its parser
//! refuses stops start-up with one line naming the variable (see `cli`).
//!
//! Numbers, names, URLs and lists are trimmed, so a stray newline from an env file or a
//! mounted secret is harmless. A setting whose empty value means "unset" (compose files
//! write `METRICS_TOKEN: ${METRICS_TOKEN:-}`) defaults to "", hidden from the help: tokens
//! and lists parse it to `None` or empty, the NATS and Redis URLs to an empty secret that
//! `Config` turns into `None`. Field types spelled `std::option::Option`/`std::vec::Vec`
//! make clap's derive take them as one value, not an optional or repeated flag.

use std::{fmt, net::SocketAddr, num::NonZeroUsize, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use clap::{builder::TypedValueParser, Args, ValueEnum};
use rand::Rng;

use crate::domain::rate_limit::{Quota, Quotas};

/// Everything `serve` reads, as clap parses it.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub db: DbSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub rate_limits: RateLimitSettings,
    #[command(flatten)]
    pub rate_limit_redis: RateLimitRedis,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub live_updates: LiveUpdatesSettings,
    #[command(flatten)]
    pub events: EventSettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub ops: OpsSettings,
    #[command(flatten)]
    pub supervision: SupervisionSettings,
}

/// The settings of a running server: what clap parsed, with the pool sized and the optional
/// integrations resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseConfig,
    pub db: DbSettings,
    pub auth: AuthSettings,
    pub rate_limits: RateLimitSettings,
    /// Rate limits shared by every replica through Redis; `None` (no RATE_LIMIT_REDIS_URL):
    /// each replica limits on its own.
    pub rate_limit_redis: Option<RateLimitRedis>,
    pub cache: CacheSettings,
    pub live_updates: LiveUpdatesSettings,
    pub events: EventSettings,
    /// Publishing the outbox to NATS JetStream; `None` (no NATS_URL) turns it off.
    pub nats: Option<NatsSettings>,
    pub ops: OpsSettings,
    pub supervision: SupervisionSettings,
}

impl Config {
    /// Adds the checks that span settings to what clap validated one setting at a time.
    pub fn from_serve_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let ServeArgs {
            server,
            database,
            db,
            auth,
            rate_limits,
            rate_limit_redis,
            cache,
            live_updates,
            events,
            nats,
            ops,
            supervision,
        } = args;
        if auth.app_env == AppEnv::Production && auth.jwt_secret.generated {
            return Err(ConfigError::new("JWT_SECRET", "is required when APP_ENV=production"));
        }
        // Each worker holds one connection while it runs; the health probe needs none of its own.
        let default_pool_size = u32::try_from(db.workers).unwrap_or(u32::MAX).saturating_add(2);
        let database = database.resolve(default_pool_size, db.connect_timeout);
        if (database.pool_size as usize) < db.workers {
            return Err(ConfigError::new(
                "DB_POOL_SIZE",
                format!("must be at least DB_WORKERS ({}), got {}", db.workers, database.pool_size),
            ));
        }
        Ok(Self {
            server,
            database,
            db,
            auth,
            rate_limits,
            rate_limit_redis: (!rate_limit_redis.url.expose().is_empty()).then_some(rate_limit_redis),
            cache,
            live_updates,
            events,
            nats: (!nats.url.expose().is_empty()).then_some(nats),
            ops,
            supervision,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, derive_more::Display, derive_more::Error)]
#[display("invalid configuration: {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self { setting: setting.into(), message: message.into() }
    }
}

/// The listener, what stands in front of it, and stopping.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerSettings {
    /// Address to listen on, HOST:PORT.
    #[arg(long = "bind", env = "BIND_ADDR", default_value = "127.0.0.1:8080", value_parser = socket_address)]
    pub bind_addr: SocketAddr,
    /// Comma-separated origins allowed to call from a browser.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "", hide_default_value = true, value_parser = origins)]
    pub cors_allowed_origins: std::vec::Vec<String>,
    /// Comma-separated IPs/CIDRs whose X-Forwarded-For is believed.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", hide_default_value = true, value_parser = ip_ranges)]
    pub trusted_proxies: std::vec::Vec<ipnet::IpNet>,
    /// How long in-flight requests may take after SIGTERM.
    #[arg(long = "shutdown-timeout-seconds", env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30", value_parser = seconds(0, 3_600))]
    pub shutdown_timeout: Duration,
    /// How long /readyz fails before the listener closes on SIGTERM, so load balancers stop sending.
    #[arg(long = "shutdown-drain-seconds", env = "SHUTDOWN_DRAIN_SECONDS", default_value = "0", value_parser = seconds(0, 600))]
    pub shutdown_drain: Duration,
}

/// Where the data lives. Global: accepted before or after any subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// sqlite://PATH or postgres://USER@HOST/DB; the scheme picks the backend. A missing
    /// database is created when the user may.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/storefront.db",
        hide_env_values = true,
        global = true,
        value_parser = DatabaseUrl::parse
    )]
    pub database_url: DatabaseUrl,
    /// Connections in the pool [default: DB_WORKERS + 2; 1 for migrate and user].
    #[arg(long, env = "DB_POOL_SIZE", global = true, value_parser = between(1_u32, 512))]
    pub db_pool_size: Option<u32>,
    /// How long to keep retrying, with backoff, while PostgreSQL is not up yet (0: try once).
    #[arg(
        long = "db-startup-retry-seconds",
        env = "DB_STARTUP_RETRY_SECONDS",
        default_value = "10",
        global = true,
        value_parser = seconds(0, 3_600)
    )]
    pub db_startup_retry: Duration,
}

impl DatabaseArgs {
    /// For `migrate` and `user create`: one connection, waited for as long as `serve` waits
    /// by default.
    pub fn for_cli(self) -> DatabaseConfig {
        self.resolve(1, Duration::from_millis(250))
    }

    fn resolve(self, default_pool_size: u32, connect_timeout: Duration) -> DatabaseConfig {
        DatabaseConfig {
            url: self.database_url,
            pool_size: self.db_pool_size.unwrap_or(default_pool_size),
            connect_timeout,
            startup_retry: self.db_startup_retry,
        }
    }
}

/// How the server connects, for the pool, the probe and start-up.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    pub pool_size: u32,
    pub connect_timeout: Duration,
    /// How long start-up keeps retrying a PostgreSQL that is not up yet.
    pub startup_retry: Duration,
}

/// The DbExecutor pool in front of the database, and how its health is judged.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DbSettings {
    /// DbExecutor threads, each holding one connection.
    #[arg(long = "db-workers", env = "DB_WORKERS", default_value = "4", value_parser = between(1_usize, 256))]
    pub workers: usize,
    /// Database requests admitted at once; more are shed with 503 [default: 64 × DB_WORKERS].
    #[arg(long = "db-queue-depth", env = "DB_QUEUE_DEPTH", value_parser = between(1_usize, 1_000_000))]
    queue_depth: Option<usize>,
    /// How long a request waits for the database before 503/504.
    #[arg(long = "db-timeout-ms", env = "DB_TIMEOUT_MS", default_value = "5000", value_parser = millis(10, 600_000))]
    pub timeout: Duration,
    /// How long to wait for a pooled connection (fail fast in an outage).
    #[arg(
        long = "db-connect-timeout-ms",
        env = "DB_CONNECT_TIMEOUT_MS",
        default_value = "250",
        value_parser = millis(10, 60_000)
    )]
    connect_timeout: Duration,
    /// How often the Health actor probes the database.
    #[arg(
        long = "health-probe-interval-ms",
        env = "HEALTH_PROBE_INTERVAL_MS",
        default_value = "1000",
        value_parser = millis(50, 600_000)
    )]
    pub health_probe_interval: Duration,
    /// Consecutive database connection failures that open the circuit breaker.
    #[arg(
        long = "db-breaker-failures",
        env = "DB_BREAKER_FAILURES",
        default_value = "5",
        value_parser = between(1_u32, 1_000_000)
    )]
    pub breaker_failures: u32,
    /// How long the open breaker refuses database work before one trial decides, in ms.
    #[arg(
        long = "db-breaker-cooldown-ms",
        env = "DB_BREAKER_COOLDOWN_MS",
        default_value = "1000",
        value_parser = millis(10, 600_000)
    )]
    pub breaker_cooldown: Duration,
}

impl DbSettings {
    /// How many database requests may wait or run at once before new ones are shed.
    pub fn queue_depth(&self) -> usize {
        self.queue_depth.unwrap_or(64 * self.workers)
    }
}

/// Who may call: the environment and the access tokens.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Auth")]
pub struct AuthSettings {
    /// development or production (production requires JWT_SECRET).
    #[arg(long = "app-env", env = "APP_ENV", default_value = "development", value_parser = one_of::<AppEnv>)]
    pub app_env: AppEnv,
    /// HS256 key for access tokens, at least 32 bytes [default: random per process].
    #[arg(
        long = "jwt-secret",
        env = "JWT_SECRET",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = jwt_secret
    )]
    pub jwt_secret: JwtSecret,
    /// Access token lifetime in seconds.
    #[arg(
        long = "jwt-ttl-seconds",
        env = "JWT_TTL_SECONDS",
        default_value = "900",
        value_parser = seconds(30, 86_400 * 30)
    )]
    pub jwt_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    #[value(alias = "dev", alias = "test")]
    Development,
    #[value(alias = "prod")]
    Production,
}

/// The HS256 key of access tokens: JWT_SECRET, or one generated for this process.
#[derive(Debug, Clone)]
pub struct JwtSecret {
    pub key: Secret,
    /// No JWT_SECRET was given: tokens will not survive a restart.
    pub generated: bool,
}

/// The default and auth rate-limit policies.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Rate limits")]
pub struct RateLimitSettings {
    /// default rate-limit policy: requests per second per client.
    #[arg(long = "rate-limit-rps", env = "RATE_LIMIT_RPS", default_value = "20", value_parser = between(1_u32, 1_000_000))]
    rps: u32,
    /// default rate-limit policy: requests allowed at once.
    #[arg(
        long = "rate-limit-burst",
        env = "RATE_LIMIT_BURST",
        default_value = "40",
        value_parser = between(1_u32, 1_000_000)
    )]
    burst: u32,
    /// auth policy (/api/v1/auth/*): requests per minute per address.
    #[arg(
        long = "auth-rate-limit-per-minute",
        env = "AUTH_RATE_LIMIT_PER_MINUTE",
        default_value = "10",
        value_parser = between(1_u32, 1_000_000)
    )]
    auth_per_minute: u32,
    /// Most rate-limit buckets tracked; the least recently used is evicted.
    #[arg(
        long = "rate-limit-max-keys",
        env = "RATE_LIMIT_MAX_KEYS",
        default_value = "100000",
        value_parser = between(1_usize, 100_000_000).try_map(NonZeroUsize::try_from)
    )]
    pub max_keys: NonZeroUsize,
}

impl RateLimitSettings {
    pub fn quotas(&self) -> Quotas {
        Quotas { default: Quota::per_second(self.rps, self.burst), auth: Quota::per_minute(self.auth_per_minute) }
    }
}

/// Where the shared rate-limit ledgers live, and how long a request may wait on them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Rate limits")]
pub struct RateLimitRedis {
    /// Share the default and auth limits with every replica through this Redis
    /// (redis://[user:password@]HOST[:PORT][/DB]); each replica limits on its own when unset.
    #[arg(
        id = "rate_limit_redis_url",
        value_name = "RATE_LIMIT_REDIS_URL",
        long = "rate-limit-redis-url",
        env = "RATE_LIMIT_REDIS_URL",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = redis_url
    )]
    pub url: Secret,
    /// The longest a request waits on Redis (1-100 ms); past it the replica falls back to
    /// its own limiter until Redis answers again.
    #[arg(
        id = "rate_limit_redis_timeout",
        value_name = "RATE_LIMIT_REDIS_TIMEOUT",
        long = "rate-limit-redis-timeout-ms",
        env = "RATE_LIMIT_REDIS_TIMEOUT_MS",
        default_value = "50",
        value_parser = millis(1, 100)
    )]
    pub timeout: Duration,
}

/// The product/user cache.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cache")]
pub struct CacheSettings {
    /// Entries in the product/user cache; 0 turns the cache off.
    #[arg(
        long = "cache-capacity",
        env = "CACHE_CAPACITY",
        default_value = "10000",
        value_parser = between(0_usize, 100_000_000).map(NonZeroUsize::new)
    )]
    pub capacity: std::option::Option<NonZeroUsize>,
    /// How long a cached entry lives, in seconds.
    #[arg(long = "cache-ttl-seconds", env = "CACHE_TTL_SECONDS", default_value = "60", value_parser = seconds(1, 86_400))]
    pub ttl: Duration,
    /// How long a read waits for a cache actor to answer before it reads the database
    /// itself (the cache is never a single point of failure).
    #[arg(
        long = "cache-ask-timeout-ms",
        env = "CACHE_ASK_TIMEOUT_MS",
        default_value = "250",
        value_parser = millis(1, 60_000)
    )]
    pub ask_timeout: Duration,
}

/// How supervised actors restart after a panic (OTP-style restart intensity).
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = "Supervision")]
pub struct SupervisionSettings {
    /// Restarts an actor may have within ACTOR_RESTART_WINDOW_SECONDS; past that it backs off
    /// (each restart waits, 1 s doubling to 30 s) until it runs a whole window without a panic.
    #[arg(long = "actor-max-restarts", env = "ACTOR_MAX_RESTARTS", default_value = "10", value_parser = between(0_u32, 1_000))]
    pub max_restarts: u32,
    /// The window actor restarts are counted in, in seconds.
    #[arg(
        long = "actor-restart-window-seconds",
        env = "ACTOR_RESTART_WINDOW_SECONDS",
        default_value = "60",
        value_parser = seconds(1, 86_400)
    )]
    pub window: Duration,
}

impl SupervisionSettings {
    pub fn restart_intensity(&self) -> crate::domain::restart_intensity::RestartIntensity {
        crate::domain::restart_intensity::RestartIntensity { max_restarts: self.max_restarts, window: self.window }
    }
}

/// Limits of the WebSocket live updates.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = "Live updates")]
pub struct LiveUpdatesSettings {
    /// Messages queued for one live-updates connection before it counts as a slow consumer.
    #[arg(long = "ws-max-pending", env = "WS_MAX_PENDING", default_value = "256", value_parser = between(1_usize, 1_000_000))]
    pub max_pending: usize,
    /// How often live-updates connections are pinged; two silent intervals close one.
    #[arg(
        long = "ws-ping-interval-seconds",
        env = "WS_PING_INTERVAL_SECONDS",
        default_value = "20",
        value_parser = seconds(1, 3_600)
    )]
    pub ping_interval: Duration,
    /// Live-updates connections this replica holds; more are refused with 503.
    #[arg(
        long = "ws-max-connections",
        env = "WS_MAX_CONNECTIONS",
        default_value = "20000",
        value_parser = between(0_usize, 10_000_000)
    )]
    pub max_connections: usize,
    /// Live-updates connections one user may hold; more are refused with 429.
    #[arg(
        long = "ws-max-connections-per-user",
        env = "WS_MAX_CONNECTIONS_PER_USER",
        default_value = "16",
        value_parser = between(1_usize, 1_000_000)
    )]
    pub max_connections_per_user: usize,
    /// Live-updates connections without a token from one client address (as the rate limiter
    /// sees it); more are refused with 429.
    #[arg(
        long = "ws-max-anonymous-per-address",
        env = "WS_MAX_ANONYMOUS_PER_ADDRESS",
        default_value = "32",
        value_parser = between(1_usize, 10_000_000)
    )]
    pub max_anonymous_per_address: usize,
}

/// The outbox tail and what the janitor prunes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Events and housekeeping")]
pub struct EventSettings {
    /// How often the outbox is tailed for other replicas' writes.
    #[arg(
        long = "event-poll-interval-ms",
        env = "EVENT_POLL_INTERVAL_MS",
        default_value = "250",
        value_parser = millis(10, 60_000)
    )]
    pub poll_interval: Duration,
    /// Outbox events older than this are pruned.
    #[arg(
        long = "event-retention-hours",
        env = "EVENT_RETENTION_HOURS",
        default_value = "24",
        value_parser = hours(1, 24 * 365)
    )]
    pub retention: Duration,
    /// Idempotency keys are kept at least this long (minimum 24, as api.md promises).
    #[arg(
        long = "idempotency-key-retention-hours",
        env = "IDEMPOTENCY_KEY_RETENTION_HOURS",
        default_value = "24",
        value_parser = hours(24, 24 * 365)
    )]
    pub idempotency_key_retention: Duration,
    /// How often expired keys, events and failed logins are pruned.
    #[arg(
        long = "janitor-interval-seconds",
        env = "JANITOR_INTERVAL_SECONDS",
        default_value = "300",
        value_parser = seconds(1, 86_400)
    )]
    pub janitor_interval: Duration,
}

/// Where and how the outbox is published to NATS JetStream.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsSettings {
    /// NATS server(s) to publish outbox events to (JetStream), comma-separated; publishing
    /// is off when unset.
    #[arg(
        id = "nats_url",
        value_name = "NATS_URL",
        long = "nats-url",
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = nats_url
    )]
    pub url: Secret,
    /// Events are published to <prefix>.<topic>.<kind>; the stream takes <prefix>.>.
    #[arg(
        long = "nats-subject-prefix",
        env = "NATS_SUBJECT_PREFIX",
        default_value = "storefront.events",
        value_parser = subject_prefix
    )]
    pub subject_prefix: String,
    /// The JetStream stream, created or updated at start-up.
    #[arg(long = "nats-stream", env = "NATS_STREAM", default_value = "STOREFRONT_EVENTS", value_parser = stream_name)]
    pub stream: String,
    /// How long the stream keeps a message, in hours.
    #[arg(
        long = "nats-stream-max-age-hours",
        env = "NATS_STREAM_MAX_AGE_HOURS",
        default_value = "168",
        value_parser = hours(1, 24 * 3650)
    )]
    pub stream_max_age: Duration,
    /// Copies the stream keeps in a NATS cluster (1 to 5).
    #[arg(
        long = "nats-stream-replicas",
        env = "NATS_STREAM_REPLICAS",
        default_value = "1",
        value_parser = between(1_usize, 5)
    )]
    pub stream_replicas: usize,
    /// The publishing lease: the longest a standby waits to take over from a dead publisher.
    #[arg(long = "nats-lease-seconds", env = "NATS_LEASE_SECONDS", default_value = "10", value_parser = seconds(1, 3_600))]
    pub lease: Duration,
}

/// Logs, metrics and fault injection.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Operations")]
pub struct OpsSettings {
    /// pretty or json (one JSON object per line).
    #[arg(long = "log-format", env = "LOG_FORMAT", default_value = "pretty", value_parser = one_of::<LogFormat>)]
    pub log_format: LogFormat,
    /// When set, /metrics requires this bearer token (at least 16 characters).
    #[arg(
        long = "metrics-token",
        env = "METRICS_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = token
    )]
    pub metrics_token: std::option::Option<Secret>,
    /// When set, enables POST /ops/chaos (fault injection) behind this bearer token (at least
    /// 16 characters).
    #[arg(
        long = "chaos-token",
        env = "CHAOS_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = token
    )]
    pub chaos_token: std::option::Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where the data lives; the backend is chosen by the URL scheme, never guessed.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite { path: PathBuf },
    Postgres { url: String },
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            let parsed = url::Url::parse(raw).map_err(|_| "not a valid postgres:// URL")?;
            if parsed.host_str().is_none_or(str::is_empty) && !raw.contains("host=") {
                return Err("a postgres:// URL needs a host".into());
            }
            return Ok(Self::Postgres { url: raw.to_owned() });
        }
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() || path.starts_with(':') {
                return Err("sqlite URLs need a file path (in-memory databases cannot be pooled)".into());
            }
            return Ok(Self::Sqlite { path: PathBuf::from(path) });
        }
        Err("must start with sqlite://, postgres:// or postgresql://".into())
    }
}

/// Passwords may sit inside the URL; Debug shows the backend and never the credentials.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            Self::Postgres { url } => match url::Url::parse(url) {
                Ok(u) => {
                    write!(f, "postgres://{}:{}{}", u.host_str().unwrap_or("?"), u.port().unwrap_or(5432), u.path())
                }
                Err(_) => f.write_str("postgres://(redacted)"),
            },
        }
    }
}

/// A secret string: compared and used, never printed.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this secret, in time that tells nothing about how much of it
    /// matched (only whether the lengths differ).
    pub fn matches(&self, given: &str) -> bool {
        let (expected, given) = (self.0.as_bytes(), given.as_bytes());
        expected.len() == given.len() && expected.iter().zip(given).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// The parsers. Their messages go after "invalid configuration: <VARIABLE>: "; those of
// secrets never repeat the value.

/// A whole number within bounds.
fn between<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + fmt::Display + Copy + Send + Sync + 'static,
{
    move |raw| {
        let value: T = raw.trim().parse().map_err(|_| format!("expected a whole number, got {raw:?}"))?;
        if value < min || value > max {
            return Err(format!("must be between {min} and {max}, got {value}"));
        }
        Ok(value)
    }
}

fn millis(min: u64, max: u64) -> impl TypedValueParser<Value = Duration> {
    between(min, max).map(Duration::from_millis)
}

fn seconds(min: u64, max: u64) -> impl TypedValueParser<Value = Duration> {
    between(min, max).map(Duration::from_secs)
}

fn hours(min: u64, max: u64) -> impl TypedValueParser<Value = Duration> {
    between(min, max).map(|hours| Duration::from_secs(hours * 3600))
}

/// One of an enum's names or aliases, in any case.
fn one_of<T: ValueEnum>(raw: &str) -> Result<T, String> {
    let raw = raw.trim();
    T::from_str(raw, true).map_err(|_| {
        let names: Vec<String> =
            T::value_variants().iter().filter_map(T::to_possible_value).map(|v| v.get_name().to_owned()).collect();
        format!("expected {}, got {:?}", names.join(" or "), raw.to_ascii_lowercase())
    })
}

fn socket_address(raw: &str) -> Result<SocketAddr, String> {
    raw.trim().parse().map_err(|_| format!("expected HOST:PORT such as 127.0.0.1:8080, got {raw:?}"))
}

/// The non-blank entries of a comma-separated list.
fn entries(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|entry| !entry.is_empty())
}

fn origins(raw: &str) -> Result<Vec<String>, String> {
    entries(raw)
        .map(|origin| match url::Url::parse(origin) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                Ok(origin.trim_end_matches('/').to_owned())
            }
            _ => Err(format!("expected comma-separated origins such as https://shop.example, got {origin:?}")),
        })
        .collect()
}

fn ip_ranges(raw: &str) -> Result<Vec<ipnet::IpNet>, String> {
    entries(raw)
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("expected IP addresses or CIDR ranges, got {entry:?}"))
        })
        .collect()
}

fn jwt_secret(raw: &str) -> Result<JwtSecret, String> {
    match raw.trim() {
        "" => {
            let mut bytes = [0u8; 48];
            rand::rng().fill_bytes(&mut bytes);
            let key = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
            Ok(JwtSecret { key: Secret::new(key), generated: true })
        }
        secret if secret.len() < 32 => Err("must be at least 32 bytes".into()),
        secret => Ok(JwtSecret { key: Secret::new(secret), generated: false }),
    }
}

/// A bearer token; blank leaves its endpoint as it is without one.
fn token(raw: &str) -> Result<Option<Secret>, String> {
    match raw {
        blank if blank.trim().is_empty() => Ok(None),
        short if short.len() < 16 => Err("must be at least 16 characters".into()),
        token => Ok(Some(Secret::new(token))),
    }
}

/// Blank (unset) yields an empty secret, which `Config` reads as "not shared".
fn redis_url(raw: &str) -> Result<Secret, String> {
    let url = raw.trim();
    let valid = url.is_empty()
        || url::Url::parse(url)
            .is_ok_and(|parsed| parsed.scheme() == "redis" && parsed.host_str().is_some_and(|host| !host.is_empty()));
    if !valid {
        return Err("expected redis://[user:password@]HOST[:PORT][/DB]".into());
    }
    Ok(Secret::new(url))
}

/// Blank (unset) yields an empty secret, which `Config` reads as "not publishing".
fn nats_url(raw: &str) -> Result<Secret, String> {
    let url = raw.trim();
    let valid_server = |server: &str| {
        url::Url::parse(server.trim())
            .is_ok_and(|parsed| matches!(parsed.scheme(), "nats" | "tls") && parsed.host_str().is_some())
    };
    if !url.is_empty() && !url.split(',').all(valid_server) {
        return Err("expected nats://HOST:PORT or tls://HOST:PORT (comma-separated for several servers)".into());
    }
    Ok(Secret::new(url))
}

/// A NATS subject token: letters, digits, `_` and `-` (no wildcards, no dots).
fn is_subject_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

fn subject_prefix(raw: &str) -> Result<String, String> {
    let prefix = raw.trim();
    if !prefix.split('.').all(is_subject_token) {
        return Err(format!(
            "expected dot-separated tokens of letters, digits, _ and - (no wildcards), got {prefix:?}"
        ));
    }
    Ok(prefix.to_owned())
}

fn stream_name(raw: &str) -> Result<String, String> {
    let stream = raw.trim();
    if !is_subject_token(stream) || stream.len() > 64 {
        return Err(format!("expected up to 64 letters, digits, _ and -, got {stream:?}"));
    }
    Ok(stream.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};

    /// `storefront serve <flags>` as the binary reads it (flags win over the environment).
    fn serve(flags: &[&str]) -> Result<Config, ConfigError> {
        match Cli::parse_command(["storefront", "serve"].iter().chain(flags))? {
            Command::Serve(args) => Config::from_serve_args(*args),
            other => panic!("not serve: {other:?}"),
        }
    }

    /// The setting a refusal names, and its message.
    fn refused(flags: &[&str]) -> (String, String) {
        let error = serve(flags).unwrap_err();
        (error.setting, error.message)
    }

    #[test]
    fn database_urls_pick_the_backend_by_scheme() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/storefront.db").unwrap(),
            DatabaseUrl::Sqlite { path: PathBuf::from("data/storefront.db") }
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap(),
            DatabaseUrl::Sqlite { path: PathBuf::from("/tmp/x.db") }
        );
        assert!(matches!(DatabaseUrl::parse("postgres://u@localhost/db").unwrap(), DatabaseUrl::Postgres { .. }));
        for bad in ["", "host=localhost dbname=x", "mysql://x", "sqlite::memory:", "postgres://"] {
            assert_eq!(refused(&["--database-url", bad]).0, "DATABASE_URL", "{bad:?}");
        }
    }

    #[test]
    fn defaults_follow_the_settings_they_derive_from() {
        let config = serve(&["--db-workers", "6"]).unwrap();
        assert_eq!((config.database.pool_size, config.db.queue_depth()), (8, 6 * 64));
        let config = serve(&["--db-workers", "6", "--db-pool-size", "6", "--db-queue-depth", "10"]).unwrap();
        assert_eq!((config.database.pool_size, config.db.queue_depth()), (6, 10));
        let (setting, message) = refused(&["--db-workers", "6", "--db-pool-size", "5"]);
        assert_eq!((setting.as_str(), message.as_str()), ("DB_POOL_SIZE", "must be at least DB_WORKERS (6), got 5"));
    }

    #[test]
    fn production_needs_a_jwt_secret_and_development_generates_one() {
        assert_eq!(refused(&["--app-env", "production", "--jwt-secret", ""]).0, "JWT_SECRET");
        let secret = "s".repeat(32);
        let config = serve(&["--app-env", " PROD ", "--jwt-secret", &secret]).unwrap();
        assert_eq!((config.auth.app_env, config.auth.jwt_secret.generated), (AppEnv::Production, false));
        let config = serve(&["--app-env", "dev", "--jwt-secret", " "]).unwrap();
        assert!(config.auth.jwt_secret.generated && config.auth.jwt_secret.key.expose().len() >= 32);
        let (setting, message) = refused(&["--jwt-secret", "too-short-to-sign"]);
        assert_eq!(setting, "JWT_SECRET");
        assert!(!message.contains("too-short"), "a secret is never repeated: {message}");
    }

    #[test]
    fn numbers_are_trimmed_and_held_to_their_bounds() {
        let config =
            serve(&["--ws-max-pending", " 5\n", "--cache-capacity", "0", "--janitor-interval-seconds", "2"]).unwrap();
        assert_eq!(config.live_updates.max_pending, 5);
        assert_eq!((config.cache.capacity, config.events.janitor_interval), (None, Duration::from_secs(2)));
        assert_eq!(
            refused(&["--ws-max-pending", "0"]),
            ("WS_MAX_PENDING".into(), "must be between 1 and 1000000, got 0".into())
        );
        assert_eq!(
            refused(&["--db-workers", "many"]),
            ("DB_WORKERS".into(), "expected a whole number, got \"many\"".into())
        );
        assert_eq!(refused(&["--shutdown-timeout-seconds=-1"]).0, "SHUTDOWN_TIMEOUT_SECONDS");
        assert_eq!(refused(&["--idempotency-key-retention-hours", "23"]).0, "IDEMPOTENCY_KEY_RETENTION_HOURS");
    }

    #[test]
    fn lists_and_tokens_treat_blank_as_unset() {
        let config =
            serve(&["--cors-allowed-origins", " https://a.example/ , ,http://b:8080", "--metrics-token", " "]).unwrap();
        assert_eq!(config.server.cors_allowed_origins, ["https://a.example", "http://b:8080"]);
        assert!(config.server.trusted_proxies.is_empty() && config.ops.metrics_token.is_none());
        let config =
            serve(&["--trusted-proxies", "10.0.0.0/8, 127.0.0.1", "--chaos-token", "0123456789abcdef"]).unwrap();
        assert_eq!(config.server.trusted_proxies.len(), 2);
        assert_eq!(config.ops.chaos_token.map(|token| token.expose().to_owned()).as_deref(), Some("0123456789abcdef"));
        assert_eq!(refused(&["--cors-allowed-origins", "not an origin"]).0, "CORS_ALLOWED_ORIGINS");
        assert_eq!(refused(&["--trusted-proxies", "10.0.0.0/33"]).0, "TRUSTED_PROXIES");
        assert_eq!(refused(&["--metrics-token", "short"]).0, "METRICS_TOKEN");
        assert_eq!(
            refused(&["--log-format", "xml"]),
            ("LOG_FORMAT".into(), "expected pretty or json, got \"xml\"".into())
        );
    }

    #[test]
    fn nats_publishing_is_off_without_a_url_and_validated_with_one() {
        assert!(serve(&["--nats-url", ""]).unwrap().nats.is_none());
        assert!(serve(&["--nats-url", "  "]).unwrap().nats.is_none());
        let settings = serve(&["--nats-url", "nats://a:4222,tls://b:4222"]).unwrap().nats.unwrap();
        assert_eq!(
            (settings.subject_prefix.as_str(), settings.stream.as_str()),
            ("storefront.events", "STOREFRONT_EVENTS")
        );
        assert_eq!(
            (settings.lease, settings.stream_max_age),
            (Duration::from_secs(10), Duration::from_secs(168 * 3600))
        );
        assert!(!format!("{settings:?}").contains("a:4222"), "the URL may hold credentials and is never printed");

        for bad in ["localhost:4222", "http://a:4222", "nats://", "nats://a:4222,"] {
            assert_eq!(refused(&["--nats-url", bad]).0, "NATS_URL", "{bad:?}");
        }
        for bad in ["", "events.>", "events.*", "a..b", "with space", ".events"] {
            assert_eq!(refused(&["--nats-subject-prefix", bad]).0, "NATS_SUBJECT_PREFIX", "{bad:?}");
        }
        for bad in ["", "A.B", "a b", "A>", &"S".repeat(65)] {
            assert_eq!(refused(&["--nats-stream", bad]).0, "NATS_STREAM", "{bad:?}");
        }
        assert_eq!(refused(&["--nats-url", "nats://a:4222", "--nats-lease-seconds", "0"]).0, "NATS_LEASE_SECONDS");
    }

    #[test]
    fn shared_rate_limits_need_a_redis_url_and_a_timeout_of_at_most_100_ms() {
        assert!(serve(&["--rate-limit-redis-url", " "]).unwrap().rate_limit_redis.is_none());
        let config =
            serve(&["--rate-limit-redis-url", "redis://:s3cret@cache:6380/2", "--rate-limit-redis-timeout-ms", "80"]);
        let redis = config.unwrap().rate_limit_redis.unwrap();
        assert_eq!(redis.timeout, Duration::from_millis(80));
        assert!(!format!("{redis:?}").contains("s3cret"), "the URL may hold a password and is never printed");
        for bad in ["cache:6379", "http://cache", "rediss://cache", "redis://", "redis:///0"] {
            assert_eq!(refused(&["--rate-limit-redis-url", bad]).0, "RATE_LIMIT_REDIS_URL", "{bad:?}");
        }
        for bad in ["0", "101", "fast"] {
            assert_eq!(refused(&["--rate-limit-redis-timeout-ms", bad]).0, "RATE_LIMIT_REDIS_TIMEOUT_MS", "{bad:?}");
        }
    }

    #[test]
    fn without_a_subcommand_the_flags_are_those_of_serve() {
        let Command::Serve(args) =
            Cli::parse_command(["storefront", "--bind", "127.0.0.1:9", "--db-workers", "2"]).unwrap()
        else {
            panic!("serves")
        };
        let config = Config::from_serve_args(*args).unwrap();
        assert_eq!((config.server.bind_addr.port(), config.db.workers), (9, 2));
        let url = "sqlite:///tmp/elsewhere.db";
        for argv in [
            ["storefront", "--database-url", url, "migrate", "status"],
            ["storefront", "migrate", "status", "--database-url", url],
        ] {
            let Command::Migrate { database, .. } = Cli::parse_command(argv).unwrap() else { panic!("migrates") };
            assert_eq!(database.for_cli().url, DatabaseUrl::Sqlite { path: PathBuf::from("/tmp/elsewhere.db") });
        }
    }

    #[test]
    fn postgres_url_debug_hides_the_password() {
        let url = DatabaseUrl::parse("postgres://admin:hunter2@db.internal:5433/shop").unwrap();
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.internal:5433/shop"), "{shown}");
    }
}
