//! The command line: what an operator can type. Every flag also reads an environment
//! variable; values arrive as raw strings and are validated once by `config`.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "storefront", version, about = "Storefront shop backend", args_override_self = true)]
pub struct Cli {
    /// Without a subcommand, `storefront` serves (so `cargo run` starts the server).
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Box<ServeArgs>,
}

impl Cli {
    /// Parses the process arguments. Database flags are global (accepted before or after any
    /// subcommand); the other settings of `serve` given before another subcommand would be
    /// ignored, so they are refused.
    pub fn parse_args() -> Self {
        use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
        let mut command = Self::command();
        let matches = command.get_matches_mut();
        if let Some((subcommand, _)) = matches.subcommand() {
            let global = ["database_url", "db_pool_size", "db_startup_retry_seconds"];
            let is_flag = |id: &str| command.get_arguments().any(|arg| arg.get_id() == id);
            let misplaced = matches.ids().map(clap::Id::as_str).find(|id| {
                is_flag(id) && !global.contains(id) && matches.value_source(id) == Some(ValueSource::CommandLine)
            });
            if let Some(id) = misplaced {
                let flag = format!("--{}", id.replace('_', "-"));
                let message = if subcommand == "serve" {
                    format!("{flag} goes after `serve`: storefront serve {flag} …")
                } else {
                    format!("{flag} is a setting of `serve`; it cannot be used with `{subcommand}`")
                };
                command.error(clap::error::ErrorKind::ArgumentConflict, message).exit();
            }
        }
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (applies pending migrations first).
    Serve(Box<ServeArgs>),
    /// Apply, revert or list database migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Manage users from the command line (how the first admin is made).
    User {
        #[command(subcommand)]
        action: UserAction,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Run,
    /// Revert the most recent migration.
    Revert,
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user (or an admin) directly in the database. The password is prompted
    /// for (not echoed), or read from standard input with --password-stdin.
    Create {
        /// Email address of the new user.
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long, conflicts_with = "password")]
        password_stdin: bool,
        /// The password itself. Discouraged: it stays in shell history and shows in `ps`.
        #[arg(long)]
        password: Option<String>,
        /// Display name (defaults to the part of the email before the @).
        #[arg(long)]
        name: Option<String>,
        /// admin or user.
        #[arg(long, default_value = "user")]
        role: String,
    },
}

/// Global: accepted before or after the subcommand (`migrate status --database-url X`).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// sqlite://PATH or postgres://USER@HOST/DB; the scheme picks the backend. A missing
    /// database is created when the user may.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/storefront.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,
    /// Connections in the pool [default: DB_WORKERS + 2].
    #[arg(long, env = "DB_POOL_SIZE", global = true)]
    pub db_pool_size: Option<String>,
    /// How long to keep retrying, with backoff, while PostgreSQL is not up yet (0: try once).
    #[arg(long, env = "DB_STARTUP_RETRY_SECONDS", default_value = "10", global = true)]
    pub db_startup_retry_seconds: String,
}

/// Settings of `serve`. Everything is a string here so that validation can name the
/// setting in a single line instead of clap's multi-line usage error.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// development or production (production requires JWT_SECRET).
    #[arg(long, env = "APP_ENV", default_value = "development")]
    pub app_env: String,
    /// HS256 key for access tokens, at least 32 bytes [default: random per process].
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Access token lifetime in seconds.
    #[arg(long, env = "JWT_TTL_SECONDS", default_value = "900")]
    pub jwt_ttl_seconds: String,
    /// pretty or json (one JSON object per line).
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
    /// Comma-separated origins allowed to call from a browser.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "")]
    pub cors_allowed_origins: String,
    /// DbExecutor threads, each holding one connection [default: 4].
    #[arg(long, env = "DB_WORKERS")]
    pub db_workers: Option<String>,
    /// Database requests admitted at once; more are shed with 503 [default: 64 x DB_WORKERS].
    #[arg(long, env = "DB_QUEUE_DEPTH")]
    pub db_queue_depth: Option<String>,
    /// How long a request waits for the database before 503/504.
    #[arg(long, env = "DB_TIMEOUT_MS", default_value = "5000")]
    pub db_timeout_ms: String,
    /// How long to wait for a pooled connection (fail fast in an outage).
    #[arg(long, env = "DB_CONNECT_TIMEOUT_MS", default_value = "250")]
    pub db_connect_timeout_ms: String,
    /// How often the Health actor probes the database.
    #[arg(long, env = "HEALTH_PROBE_INTERVAL_MS", default_value = "1000")]
    pub health_probe_interval_ms: String,
    /// How long in-flight requests may take after SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30")]
    pub shutdown_timeout_seconds: String,
    /// How long /readyz fails before the listener closes on SIGTERM.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value = "0")]
    pub shutdown_drain_seconds: String,
    /// Comma-separated IPs/CIDRs whose X-Forwarded-For is believed.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// default rate-limit policy: requests per second per client.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value = "20")]
    pub rate_limit_rps: String,
    /// default rate-limit policy: requests allowed at once.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value = "40")]
    pub rate_limit_burst: String,
    /// auth policy (/api/v1/auth/*): requests per minute per address.
    #[arg(long, env = "AUTH_RATE_LIMIT_PER_MINUTE", default_value = "10")]
    pub auth_rate_limit_per_minute: String,
    /// Most rate-limit buckets tracked; the least recently used is evicted.
    #[arg(long, env = "RATE_LIMIT_MAX_KEYS", default_value = "100000")]
    pub rate_limit_max_keys: String,
    /// Share the default and auth limits with every replica through this Redis
    /// (redis://[user:password@]HOST[:PORT][/DB]); each replica limits on its own when unset.
    #[arg(long, env = "RATE_LIMIT_REDIS_URL", hide_env_values = true)]
    pub rate_limit_redis_url: Option<String>,
    /// The longest a request waits on Redis (1-100 ms); past it the replica falls back to
    /// its own limiter until Redis answers again.
    #[arg(long, env = "RATE_LIMIT_REDIS_TIMEOUT_MS", default_value = "50")]
    pub rate_limit_redis_timeout_ms: String,
    /// Entries in the product/user cache; 0 turns the cache off.
    #[arg(long, env = "CACHE_CAPACITY", default_value = "10000")]
    pub cache_capacity: String,
    /// How long a cached entry lives.
    #[arg(long, env = "CACHE_TTL_SECONDS", default_value = "60")]
    pub cache_ttl_seconds: String,
    /// How long a read waits for a cache actor to answer before it reads the database
    /// itself (the cache is never a single point of failure).
    #[arg(long, env = "CACHE_ASK_TIMEOUT_MS", default_value = "250")]
    pub cache_ask_timeout_ms: String,
    /// How often the outbox is tailed for other replicas' writes.
    #[arg(long, env = "EVENT_POLL_INTERVAL_MS", default_value = "250")]
    pub event_poll_interval_ms: String,
    /// Outbox events older than this are pruned.
    #[arg(long, env = "EVENT_RETENTION_HOURS", default_value = "24")]
    pub event_retention_hours: String,
    /// Idempotency keys are kept at least this long (minimum 24).
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION_HOURS", default_value = "24")]
    pub idempotency_key_retention_hours: String,
    /// How often expired keys, events and failed logins are pruned.
    #[arg(long, env = "JANITOR_INTERVAL_SECONDS", default_value = "300")]
    pub janitor_interval_seconds: String,
    /// Messages queued for one live-updates connection before it counts as a slow consumer.
    #[arg(long, env = "WS_MAX_PENDING", default_value = "256")]
    pub ws_max_pending: String,
    /// How often live-updates connections are pinged; two silent intervals close one.
    #[arg(long, env = "WS_PING_INTERVAL_SECONDS", default_value = "20")]
    pub ws_ping_interval_seconds: String,
    /// Live-updates connections this replica holds; more are refused with 503.
    #[arg(long, env = "WS_MAX_CONNECTIONS", default_value = "20000")]
    pub ws_max_connections: String,
    /// Live-updates connections one user may hold; more are refused with 429.
    #[arg(long, env = "WS_MAX_CONNECTIONS_PER_USER", default_value = "16")]
    pub ws_max_connections_per_user: String,
    /// Live-updates connections without a token from one client address (as the rate limiter
    /// sees it); more are refused with 429.
    #[arg(long, env = "WS_MAX_ANONYMOUS_PER_ADDRESS", default_value = "32")]
    pub ws_max_anonymous_per_address: String,
    /// When set, /metrics requires this bearer token.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// When set, enables POST /ops/chaos (fault injection) behind this bearer token.
    #[arg(long, env = "CHAOS_TOKEN", hide_env_values = true)]
    pub chaos_token: Option<String>,
    /// Consecutive database connection failures that open the circuit breaker.
    #[arg(long, env = "DB_BREAKER_FAILURES", default_value = "5")]
    pub db_breaker_failures: String,
    /// How long the open breaker refuses database work before one trial decides, in ms.
    #[arg(long, env = "DB_BREAKER_COOLDOWN_MS", default_value = "1000")]
    pub db_breaker_cooldown_ms: String,
    /// Restarts an actor may have within ACTOR_RESTART_WINDOW_SECONDS; past that it backs off
    /// (each restart waits, 1 s doubling to 30 s) until it runs a whole window without a panic.
    #[arg(long, env = "ACTOR_MAX_RESTARTS", default_value = "10")]
    pub actor_max_restarts: String,
    /// The window actor restarts are counted in, in seconds.
    #[arg(long, env = "ACTOR_RESTART_WINDOW_SECONDS", default_value = "60")]
    pub actor_restart_window_seconds: String,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// Publishing the outbox to NATS JetStream; off unless NATS_URL is set.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server(s) to publish outbox events to (JetStream); publishing is off when unset.
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// Events are published to <prefix>.<topic>.<kind>.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "storefront.events")]
    pub nats_subject_prefix: String,
    /// The JetStream stream, created or updated at start-up.
    #[arg(long, env = "NATS_STREAM", default_value = "STOREFRONT_EVENTS")]
    pub nats_stream: String,
    /// How long the stream keeps a message, in hours.
    #[arg(long, env = "NATS_STREAM_MAX_AGE_HOURS", default_value = "168")]
    pub nats_stream_max_age_hours: String,
    /// Copies the stream keeps in a NATS cluster (1 to 5).
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value = "1")]
    pub nats_stream_replicas: String,
    /// The publishing lease: the longest a standby waits to take over from a dead publisher.
    #[arg(long, env = "NATS_LEASE_SECONDS", default_value = "10")]
    pub nats_lease_seconds: String,
}
