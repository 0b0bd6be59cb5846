//! Settings, validated once at start-up. An invalid value becomes a `ConfigError` that
//! names the setting, so the operator sees one line telling what to fix.

use std::{fmt, net::SocketAddr, num::NonZeroUsize, path::PathBuf, sync::Arc, time::Duration};

use rand::Rng;

use crate::{
    cli::{DatabaseArgs, NatsArgs, ServeArgs},
    domain::{
        rate_limit::{Quota, Quotas},
        restart_intensity::RestartIntensity,
    },
};

/// Where the data lives; the backend is chosen by the URL scheme, never guessed.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite { path: PathBuf },
    Postgres { url: String },
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let invalid = |why: &str| ConfigError::new("DATABASE_URL", why);
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            let parsed = url::Url::parse(raw).map_err(|_| invalid("not a valid postgres:// URL"))?;
            if parsed.host_str().is_none_or(str::is_empty) && !raw.contains("host=") {
                return Err(invalid("a postgres:// URL needs a host"));
            }
            return Ok(Self::Postgres { url: raw.to_owned() });
        }
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() || path.starts_with(':') {
                return Err(invalid("sqlite URLs need a file path (in-memory databases cannot be pooled)"));
            }
            return Ok(Self::Sqlite { path: PathBuf::from(path) });
        }
        Err(invalid("must start with sqlite://, postgres:// or postgresql://"))
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
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    pub pool_size: u32,
    pub connect_timeout: Duration,
    /// How long start-up keeps retrying a PostgreSQL that is not up yet.
    pub startup_retry: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub database: DatabaseConfig,
    pub app_env: AppEnv,
    pub jwt_secret: Secret,
    /// True when no JWT_SECRET was given and one was generated for this process.
    pub jwt_secret_generated: bool,
    pub jwt_ttl: Duration,
    pub log_format: LogFormat,
    pub cors_allowed_origins: Vec<String>,
    pub db_workers: usize,
    /// How many database requests may wait or run at once before new ones are shed.
    pub db_queue_depth: usize,
    pub db_timeout: Duration,
    /// Threads that hash and verify passwords (argon2 is CPU- and memory-bound).
    pub password_hasher_threads: usize,
    pub health_probe_interval: Duration,
    pub shutdown_timeout: Duration,
    /// How long /readyz fails before the listener closes, so load balancers stop sending.
    pub shutdown_drain: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub rate_limits: Quotas,
    pub rate_limit_max_keys: NonZeroUsize,
    /// Rate limits shared by every replica through Redis; `None` (no RATE_LIMIT_REDIS_URL):
    /// each replica limits on its own.
    pub rate_limit_redis: Option<RateLimitRedis>,
    /// Entries the cache may hold; `None` (CACHE_CAPACITY=0) turns the cache off.
    pub cache_capacity: Option<NonZeroUsize>,
    pub cache_ttl: Duration,
    /// How long a read waits for a cache actor before it reads the database itself.
    pub cache_ask_timeout: Duration,
    /// How often the outbox is tailed for other replicas' writes.
    pub event_poll_interval: Duration,
    pub event_retention: Duration,
    pub idempotency_key_retention: Duration,
    pub janitor_interval: Duration,
    pub metrics_token: Option<Secret>,
    pub chaos_token: Option<Secret>,
    /// Consecutive connection failures that open the database circuit breaker.
    pub db_breaker_failures: u32,
    /// How long an open breaker refuses database work before one trial may pass.
    pub db_breaker_cooldown: Duration,
    /// ACTOR_MAX_RESTARTS within ACTOR_RESTART_WINDOW_SECONDS; past that, restarts back off.
    pub restart_intensity: RestartIntensity,
    /// Publishing the outbox to NATS JetStream; `None` (no NATS_URL) turns it off.
    pub nats: Option<NatsSettings>,
    pub live_updates: LiveUpdatesConfig,
}

/// Where the shared rate-limit ledgers live, and how long a request may wait on them.
#[derive(Debug, Clone)]
pub struct RateLimitRedis {
    /// `redis://[user:password@]HOST[:PORT][/DB]`; may carry credentials.
    pub url: Secret,
    /// The longest a request waits on Redis; past it the replica falls back to its own limiter.
    pub timeout: Duration,
}

impl RateLimitRedis {
    fn from_args(url: Option<&str>, timeout_ms: &str) -> Result<Option<Self>, ConfigError> {
        let timeout = Duration::from_millis(parse_number("RATE_LIMIT_REDIS_TIMEOUT_MS", timeout_ms, 1, 100)?);
        let Some(url) = url.map(str::trim).filter(|url| !url.is_empty()) else { return Ok(None) };
        let valid = url::Url::parse(url)
            .is_ok_and(|parsed| parsed.scheme() == "redis" && parsed.host_str().is_some_and(|host| !host.is_empty()));
        if !valid {
            return Err(ConfigError::new("RATE_LIMIT_REDIS_URL", "expected redis://[user:password@]HOST[:PORT][/DB]"));
        }
        Ok(Some(Self { url: Secret::new(url), timeout }))
    }
}

/// Limits of the WebSocket live updates.
#[derive(Debug, Clone, Copy)]
pub struct LiveUpdatesConfig {
    /// Messages queued for one connection before its subscriber counts as too slow.
    pub max_pending: usize,
    pub ping_interval: Duration,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_anonymous_per_address: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, derive_more::Display, derive_more::Error)]
#[display("invalid configuration: {setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self { setting, message: message.into() }
    }
}

const DEFAULT_DB_WORKERS: usize = 4;

fn parse_number<T: std::str::FromStr + PartialOrd + fmt::Display>(
    setting: &'static str,
    raw: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let value: T =
        raw.trim().parse().map_err(|_| ConfigError::new(setting, format!("expected a whole number, got {raw:?}")))?;
    if value < min || value > max {
        return Err(ConfigError::new(setting, format!("must be between {min} and {max}, got {value}")));
    }
    Ok(value)
}

fn non_empty_secret(setting: &'static str, raw: Option<&str>) -> Result<Option<Secret>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Ok(None),
        Some(value) if value.len() < 16 => Err(ConfigError::new(setting, "must be at least 16 characters")),
        Some(value) => Ok(Some(Secret::new(value))),
    }
}

impl DatabaseConfig {
    pub fn from_args(args: &DatabaseArgs, default_pool_size: u32) -> Result<Self, ConfigError> {
        let url = DatabaseUrl::parse(&args.database_url)?;
        let pool_size = match &args.db_pool_size {
            Some(raw) => parse_number("DB_POOL_SIZE", raw, 1, 512)?,
            None => default_pool_size,
        };
        let startup_retry =
            Duration::from_secs(parse_number("DB_STARTUP_RETRY_SECONDS", &args.db_startup_retry_seconds, 0, 3_600)?);
        Ok(Self { url, pool_size, connect_timeout: Duration::from_millis(250), startup_retry })
    }
}

impl Config {
    pub fn from_serve_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let bind_addr: SocketAddr = args.bind.trim().parse().map_err(|_| {
            ConfigError::new("BIND_ADDR", format!("expected HOST:PORT such as 127.0.0.1:8080, got {:?}", args.bind))
        })?;

        let db_workers = match &args.db_workers {
            Some(raw) => parse_number("DB_WORKERS", raw, 1, 256)?,
            None => DEFAULT_DB_WORKERS,
        };
        // Each worker holds one connection while it runs; the health probe needs none of its own.
        let default_pool = u32::try_from(db_workers).unwrap_or(u32::MAX).saturating_add(2);
        let mut database = DatabaseConfig::from_args(&args.database, default_pool)?;
        if (database.pool_size as usize) < db_workers {
            return Err(ConfigError::new(
                "DB_POOL_SIZE",
                format!("must be at least DB_WORKERS ({db_workers}), got {}", database.pool_size),
            ));
        }
        database.connect_timeout =
            Duration::from_millis(parse_number("DB_CONNECT_TIMEOUT_MS", &args.db_connect_timeout_ms, 10, 60_000)?);

        let db_queue_depth = match &args.db_queue_depth {
            Some(raw) => parse_number("DB_QUEUE_DEPTH", raw, 1, 1_000_000)?,
            None => db_workers * 64,
        };

        let app_env = match args.app_env.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" | "test" => AppEnv::Development,
            "production" | "prod" => AppEnv::Production,
            other => {
                return Err(ConfigError::new("APP_ENV", format!("expected development or production, got {other:?}")))
            }
        };

        let (jwt_secret, jwt_secret_generated) = match args.jwt_secret.as_deref().map(str::trim) {
            Some(secret) if !secret.is_empty() => {
                if secret.len() < 32 {
                    return Err(ConfigError::new("JWT_SECRET", "must be at least 32 bytes"));
                }
                (Secret::new(secret), false)
            }
            _ if app_env == AppEnv::Production => {
                return Err(ConfigError::new("JWT_SECRET", "is required when APP_ENV=production"));
            }
            _ => (generate_secret(), true),
        };

        let log_format = match args.log_format.trim().to_ascii_lowercase().as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => return Err(ConfigError::new("LOG_FORMAT", format!("expected pretty or json, got {other:?}"))),
        };

        let cors_allowed_origins = args
            .cors_allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|origin| !origin.is_empty())
            .map(|origin| validate_origin(origin).map(|()| origin.trim_end_matches('/').to_owned()))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Self {
            bind_addr,
            database,
            app_env,
            jwt_secret,
            jwt_secret_generated,
            jwt_ttl: Duration::from_secs(parse_number("JWT_TTL_SECONDS", &args.jwt_ttl_seconds, 30, 86_400 * 30)?),
            log_format,
            cors_allowed_origins,
            db_workers,
            db_queue_depth,
            db_timeout: Duration::from_millis(parse_number("DB_TIMEOUT_MS", &args.db_timeout_ms, 10, 600_000)?),
            password_hasher_threads: std::thread::available_parallelism().map_or(2, usize::from),
            health_probe_interval: Duration::from_millis(parse_number(
                "HEALTH_PROBE_INTERVAL_MS",
                &args.health_probe_interval_ms,
                50,
                600_000,
            )?),
            shutdown_timeout: Duration::from_secs(parse_number(
                "SHUTDOWN_TIMEOUT_SECONDS",
                &args.shutdown_timeout_seconds,
                0,
                3_600,
            )?),
            trusted_proxies: parse_trusted_proxies(&args.trusted_proxies)?,
            rate_limits: Quotas {
                default: Quota::per_second(
                    parse_number("RATE_LIMIT_RPS", &args.rate_limit_rps, 1, 1_000_000)?,
                    parse_number("RATE_LIMIT_BURST", &args.rate_limit_burst, 1, 1_000_000)?,
                ),
                auth: Quota::per_minute(parse_number(
                    "AUTH_RATE_LIMIT_PER_MINUTE",
                    &args.auth_rate_limit_per_minute,
                    1,
                    1_000_000,
                )?),
            },
            rate_limit_max_keys: NonZeroUsize::new(parse_number(
                "RATE_LIMIT_MAX_KEYS",
                &args.rate_limit_max_keys,
                1,
                100_000_000,
            )?)
            .unwrap_or(NonZeroUsize::MIN),
            rate_limit_redis: RateLimitRedis::from_args(
                args.rate_limit_redis_url.as_deref(),
                &args.rate_limit_redis_timeout_ms,
            )?,
            cache_capacity: NonZeroUsize::new(parse_number("CACHE_CAPACITY", &args.cache_capacity, 0, 100_000_000)?),
            cache_ttl: Duration::from_secs(parse_number("CACHE_TTL_SECONDS", &args.cache_ttl_seconds, 1, 86_400)?),
            cache_ask_timeout: Duration::from_millis(parse_number(
                "CACHE_ASK_TIMEOUT_MS",
                &args.cache_ask_timeout_ms,
                1,
                60_000,
            )?),
            event_poll_interval: Duration::from_millis(parse_number(
                "EVENT_POLL_INTERVAL_MS",
                &args.event_poll_interval_ms,
                10,
                60_000,
            )?),
            event_retention: hours(parse_number("EVENT_RETENTION_HOURS", &args.event_retention_hours, 1, 24 * 365)?),
            // api.md promises keys are kept at least 24 hours.
            idempotency_key_retention: hours(parse_number(
                "IDEMPOTENCY_KEY_RETENTION_HOURS",
                &args.idempotency_key_retention_hours,
                24,
                24 * 365,
            )?),
            janitor_interval: Duration::from_secs(parse_number(
                "JANITOR_INTERVAL_SECONDS",
                &args.janitor_interval_seconds,
                1,
                86_400,
            )?),
            shutdown_drain: Duration::from_secs(parse_number(
                "SHUTDOWN_DRAIN_SECONDS",
                &args.shutdown_drain_seconds,
                0,
                600,
            )?),
            metrics_token: non_empty_secret("METRICS_TOKEN", args.metrics_token.as_deref())?,
            chaos_token: non_empty_secret("CHAOS_TOKEN", args.chaos_token.as_deref())?,
            live_updates: LiveUpdatesConfig {
                max_pending: parse_number("WS_MAX_PENDING", &args.ws_max_pending, 1, 1_000_000)?,
                ping_interval: Duration::from_secs(parse_number(
                    "WS_PING_INTERVAL_SECONDS",
                    &args.ws_ping_interval_seconds,
                    1,
                    3_600,
                )?),
                max_connections: parse_number("WS_MAX_CONNECTIONS", &args.ws_max_connections, 0, 10_000_000)?,
                max_connections_per_user: parse_number(
                    "WS_MAX_CONNECTIONS_PER_USER",
                    &args.ws_max_connections_per_user,
                    1,
                    1_000_000,
                )?,
                max_anonymous_per_address: parse_number(
                    "WS_MAX_ANONYMOUS_PER_ADDRESS",
                    &args.ws_max_anonymous_per_address,
                    1,
                    10_000_000,
                )?,
            },
            db_breaker_failures: parse_number("DB_BREAKER_FAILURES", &args.db_breaker_failures, 1, 1_000_000)?,
            db_breaker_cooldown: Duration::from_millis(parse_number(
                "DB_BREAKER_COOLDOWN_MS",
                &args.db_breaker_cooldown_ms,
                10,
                600_000,
            )?),
            restart_intensity: RestartIntensity {
                max_restarts: parse_number("ACTOR_MAX_RESTARTS", &args.actor_max_restarts, 0, 1_000)?,
                window: Duration::from_secs(parse_number(
                    "ACTOR_RESTART_WINDOW_SECONDS",
                    &args.actor_restart_window_seconds,
                    1,
                    86_400,
                )?),
            },
            nats: NatsSettings::from_args(&args.nats)?,
        })
    }
}

/// Where and how the outbox is published to NATS JetStream.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// One or more comma-separated `nats://` or `tls://` URLs; may carry credentials.
    pub url: Secret,
    /// Events go to `<prefix>.<topic>.<kind>`.
    pub subject_prefix: String,
    pub stream: String,
    /// How long the stream keeps a message.
    pub stream_max_age: Duration,
    /// Copies of the stream a NATS cluster keeps (1 on a single server).
    pub stream_replicas: usize,
    /// How long the active publisher's lease lasts unrenewed: the longest another replica
    /// waits to take over from one that died.
    pub lease: Duration,
}

impl NatsSettings {
    pub fn from_args(args: &NatsArgs) -> Result<Option<Self>, ConfigError> {
        let Some(url) = args.nats_url.as_deref().map(str::trim).filter(|url| !url.is_empty()) else {
            return Ok(None);
        };
        for server in url.split(',').map(str::trim) {
            let valid = url::Url::parse(server)
                .is_ok_and(|parsed| matches!(parsed.scheme(), "nats" | "tls") && parsed.host_str().is_some());
            if !valid {
                return Err(ConfigError::new(
                    "NATS_URL",
                    "expected nats://HOST:PORT or tls://HOST:PORT (comma-separated for several servers)",
                ));
            }
        }
        let subject_prefix = args.nats_subject_prefix.trim();
        let is_token = |token: &str| {
            !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        };
        if !subject_prefix.split('.').all(is_token) {
            return Err(ConfigError::new(
                "NATS_SUBJECT_PREFIX",
                format!(
                    "expected dot-separated tokens of letters, digits, _ and - (no wildcards), got {subject_prefix:?}"
                ),
            ));
        }
        let stream = args.nats_stream.trim();
        if !is_token(stream) || stream.len() > 64 {
            return Err(ConfigError::new(
                "NATS_STREAM",
                format!("expected up to 64 letters, digits, _ and -, got {stream:?}"),
            ));
        }
        Ok(Some(Self {
            url: Secret::new(url),
            subject_prefix: subject_prefix.to_owned(),
            stream: stream.to_owned(),
            stream_max_age: hours(parse_number(
                "NATS_STREAM_MAX_AGE_HOURS",
                &args.nats_stream_max_age_hours,
                1,
                24 * 3650,
            )?),
            stream_replicas: parse_number("NATS_STREAM_REPLICAS", &args.nats_stream_replicas, 1, 5)?,
            lease: Duration::from_secs(parse_number("NATS_LEASE_SECONDS", &args.nats_lease_seconds, 1, 3_600)?),
        }))
    }
}

fn parse_trusted_proxies(raw: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::new("TRUSTED_PROXIES", format!("expected IP addresses or CIDR ranges, got {entry:?}"))
                })
        })
        .collect()
}

fn hours(count: u64) -> Duration {
    Duration::from_secs(count * 3600)
}

fn validate_origin(origin: &str) -> Result<(), ConfigError> {
    match url::Url::parse(origin) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(()),
        _ => Err(ConfigError::new(
            "CORS_ALLOWED_ORIGINS",
            format!("expected comma-separated origins such as https://shop.example, got {origin:?}"),
        )),
    }
}

fn generate_secret() -> Secret {
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let err = DatabaseUrl::parse(bad).unwrap_err();
            assert_eq!(err.setting, "DATABASE_URL", "{bad:?}");
        }
    }

    fn nats_args(url: Option<&str>) -> NatsArgs {
        NatsArgs {
            nats_url: url.map(str::to_owned),
            nats_subject_prefix: "storefront.events".into(),
            nats_stream: "STOREFRONT_EVENTS".into(),
            nats_stream_max_age_hours: "168".into(),
            nats_stream_replicas: "1".into(),
            nats_lease_seconds: "10".into(),
        }
    }

    #[test]
    fn nats_publishing_is_off_without_a_url_and_validated_with_one() {
        assert!(NatsSettings::from_args(&nats_args(None)).unwrap().is_none());
        assert!(NatsSettings::from_args(&nats_args(Some("  "))).unwrap().is_none());
        let settings = NatsSettings::from_args(&nats_args(Some("nats://a:4222,tls://b:4222"))).unwrap().unwrap();
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
            assert_eq!(NatsSettings::from_args(&nats_args(Some(bad))).unwrap_err().setting, "NATS_URL", "{bad:?}");
        }
        for bad in ["", "events.>", "events.*", "a..b", "with space", ".events"] {
            let args = NatsArgs { nats_subject_prefix: bad.into(), ..nats_args(Some("nats://a:4222")) };
            assert_eq!(NatsSettings::from_args(&args).unwrap_err().setting, "NATS_SUBJECT_PREFIX", "{bad:?}");
        }
        for bad in ["", "A.B", "a b", "A>", &"S".repeat(65)] {
            let args = NatsArgs { nats_stream: bad.into(), ..nats_args(Some("nats://a:4222")) };
            assert_eq!(NatsSettings::from_args(&args).unwrap_err().setting, "NATS_STREAM", "{bad:?}");
        }
        let args = NatsArgs { nats_lease_seconds: "0".into(), ..nats_args(Some("nats://a:4222")) };
        assert_eq!(NatsSettings::from_args(&args).unwrap_err().setting, "NATS_LEASE_SECONDS");
    }

    #[test]
    fn shared_rate_limits_need_a_redis_url_and_a_timeout_of_at_most_100_ms() {
        assert!(RateLimitRedis::from_args(None, "50").unwrap().is_none());
        assert!(RateLimitRedis::from_args(Some(" "), "50").unwrap().is_none());
        let redis = RateLimitRedis::from_args(Some("redis://:s3cret@cache:6380/2"), "80").unwrap().unwrap();
        assert_eq!(redis.timeout, Duration::from_millis(80));
        assert!(!format!("{redis:?}").contains("s3cret"), "the URL may hold a password and is never printed");
        for bad in ["cache:6379", "http://cache", "rediss://cache", "redis://", "redis:///0"] {
            let error = RateLimitRedis::from_args(Some(bad), "50").unwrap_err();
            assert_eq!(error.setting, "RATE_LIMIT_REDIS_URL", "{bad:?}");
        }
        for bad in ["0", "101", "fast"] {
            let error = RateLimitRedis::from_args(Some("redis://cache"), bad).unwrap_err();
            assert_eq!(error.setting, "RATE_LIMIT_REDIS_TIMEOUT_MS", "{bad:?}");
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
