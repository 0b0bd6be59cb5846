//! The command line: what an operator can type. Every flag also reads an environment
//! variable; values arrive as raw strings and are validated once by `config`.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "storefront",
    version,
    about = "Storefront shop backend",
    args_override_self = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Without a subcommand, `storefront` serves (so `cargo run` starts the server).
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Box<ServeArgs>,
}

impl Cli {
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
    /// Create a user (or an admin) directly in the database.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "user")]
        role: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/storefront.db", hide_env_values = true)]
    pub database_url: String,
    #[arg(long, env = "DB_POOL_SIZE")]
    pub db_pool_size: Option<String>,
}

/// Settings of `serve`. Everything is a string here so that validation can name the
/// setting in a single line instead of clap's multi-line usage error.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(long, env = "APP_ENV", default_value = "development")]
    pub app_env: String,
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "JWT_TTL_SECONDS", default_value = "900")]
    pub jwt_ttl_seconds: String,
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "")]
    pub cors_allowed_origins: String,
    #[arg(long, env = "DB_WORKERS")]
    pub db_workers: Option<String>,
    #[arg(long, env = "DB_QUEUE_DEPTH")]
    pub db_queue_depth: Option<String>,
    #[arg(long, env = "DB_TIMEOUT_MS", default_value = "5000")]
    pub db_timeout_ms: String,
    #[arg(long, env = "DB_CONNECT_TIMEOUT_MS", default_value = "250")]
    pub db_connect_timeout_ms: String,
    #[arg(long, env = "HEALTH_PROBE_INTERVAL_MS", default_value = "1000")]
    pub health_probe_interval_ms: String,
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30")]
    pub shutdown_timeout_seconds: String,
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value = "0")]
    pub shutdown_drain_seconds: String,
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    #[arg(long, env = "RATE_LIMIT_RPS", default_value = "20")]
    pub rate_limit_rps: String,
    #[arg(long, env = "RATE_LIMIT_BURST", default_value = "40")]
    pub rate_limit_burst: String,
    #[arg(long, env = "AUTH_RATE_LIMIT_PER_MINUTE", default_value = "10")]
    pub auth_rate_limit_per_minute: String,
    #[arg(long, env = "RATE_LIMIT_MAX_KEYS", default_value = "100000")]
    pub rate_limit_max_keys: String,
    #[arg(long, env = "CACHE_CAPACITY", default_value = "10000")]
    pub cache_capacity: String,
    #[arg(long, env = "CACHE_TTL_SECONDS", default_value = "60")]
    pub cache_ttl_seconds: String,
    #[arg(long, env = "EVENT_POLL_INTERVAL_MS", default_value = "250")]
    pub event_poll_interval_ms: String,
    #[arg(long, env = "EVENT_RETENTION_HOURS", default_value = "24")]
    pub event_retention_hours: String,
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION_HOURS", default_value = "24")]
    pub idempotency_key_retention_hours: String,
    #[arg(long, env = "JANITOR_INTERVAL_SECONDS", default_value = "300")]
    pub janitor_interval_seconds: String,
    #[arg(long, env = "WS_MAX_PENDING", default_value = "256")]
    pub ws_max_pending: String,
    #[arg(long, env = "WS_PING_INTERVAL_SECONDS", default_value = "20")]
    pub ws_ping_interval_seconds: String,
    #[arg(long, env = "WS_MAX_CONNECTIONS", default_value = "20000")]
    pub ws_max_connections: String,
    #[arg(long, env = "WS_MAX_CONNECTIONS_PER_USER", default_value = "16")]
    pub ws_max_connections_per_user: String,
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    #[arg(long, env = "CHAOS_TOKEN", hide_env_values = true)]
    pub chaos_token: Option<String>,
    #[arg(long, env = "DB_BREAKER_FAILURES", default_value = "5")]
    pub db_breaker_failures: String,
    #[arg(long, env = "DB_BREAKER_COOLDOWN_MS", default_value = "1000")]
    pub db_breaker_cooldown_ms: String,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// Publishing the outbox to NATS JetStream; off unless NATS_URL is set.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "storefront.events")]
    pub nats_subject_prefix: String,
    #[arg(long, env = "NATS_STREAM", default_value = "STOREFRONT_EVENTS")]
    pub nats_stream: String,
    #[arg(long, env = "NATS_STREAM_MAX_AGE_HOURS", default_value = "168")]
    pub nats_stream_max_age_hours: String,
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value = "1")]
    pub nats_stream_replicas: String,
    #[arg(long, env = "NATS_LEASE_SECONDS", default_value = "10")]
    pub nats_lease_seconds: String,
}
