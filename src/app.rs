//! Building and running the service from a `Config`: the binary and the tests start it
//! the same way.

use std::{io, net::TcpListener, sync::Arc, time::Duration};

use actix::{Addr, Supervisor};
use actix_cors::Cors;
use actix_web::{dev::ServerHandle, http::header, middleware::from_fn, web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::{
    actors::UseCase,
    actors::{
        cache::{Cache, CacheClient},
        db_executor::DbGatewaySettings,
        event_relay::EventRelay,
        health::{BeginShutdown, Health, WatchDatabase},
        janitor::{Janitor, Retention},
        rate_limiter::RateLimiter,
        supervision::RestartReporter,
        DbGateway,
    },
    auth::{password::Passwords, tokens::TokenKeys},
    config::Config,
    db::{self, events::LatestEventId, migrations, ConnectionManager},
    http::{
        self, extract,
        middleware::{
            drain::{close_connections_while_draining, Draining},
            head::answer_head_as_get,
            http_metrics::record_http_metrics,
            problem::render_problems,
            rate_limit::{limit_rate, FailOpenGate},
            request_id::assign_request_id,
            request_span::RequestSpan,
            security_headers::add_security_headers,
        },
    },
    metrics::Metrics,
};

/// What handlers share: immutable configuration and the addresses of the actors.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DbGateway,
    pub health: Addr<Health>,
    pub metrics: Arc<Metrics>,
    pub passwords: Passwords,
    pub tokens: Arc<TokenKeys>,
    pub cache: CacheClient,
    pub rate_limiter: Addr<RateLimiter>,
}

#[derive(Debug, derive_more::Display)]
pub enum StartupError {
    #[display("database: {_0}")]
    Database(String),
    #[display("{_0}")]
    Internal(String),
    #[display("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: io::Error },
}

impl std::error::Error for StartupError {}

pub struct Application {
    server: actix_web::dev::Server,
    port: u16,
    shutdown_drain: Duration,
    draining: Draining,
    health: Addr<Health>,
    /// Held so these live as long as the server.
    _janitor: Addr<Janitor>,
    _event_relay: Option<Addr<EventRelay>>,
}

impl Application {
    /// Connects, migrates, starts the actors and binds the listener. Must run inside an
    /// actix System; nothing is served until `run_until_stopped`.
    pub fn build(config: Config) -> Result<Self, StartupError> {
        let config = Arc::new(config);
        // Bind before anything starts: a taken port must fail with one line, before any
        // actor or thread exists that would be torn down half-started.
        let listener = TcpListener::bind(config.bind_addr)
            .map_err(|source| StartupError::Bind { addr: config.bind_addr, source })?;
        let port =
            listener.local_addr().map_err(|source| StartupError::Bind { addr: config.bind_addr, source })?.port();
        let newest_event = prepare_database(&config)?;

        let metrics = Arc::new(Metrics::new());
        // This replica, as named in the outbox events it writes.
        let origin = uuid::Uuid::now_v7();
        let health = {
            let metrics = Arc::clone(&metrics);
            let interval = config.health_probe_interval;
            Supervisor::start(move |_| Health::new(metrics, interval))
        };
        let reporter = RestartReporter::new(Arc::clone(&metrics), health.clone().recipient());
        let db = DbGateway::start(
            db::build_pool(&config.database),
            DbGatewaySettings {
                origin,
                workers: config.db_workers,
                queue_depth: config.db_queue_depth,
                timeout: config.db_timeout,
            },
            reporter.clone(),
            Arc::clone(&metrics),
        );
        health.do_send(WatchDatabase(db.clone()));
        let janitor = {
            let db = db.clone();
            let retention = Retention {
                idempotency_keys: config.idempotency_key_retention,
                events: config.event_retention,
                interval: config.janitor_interval,
            };
            let reporter = reporter.clone();
            Supervisor::start(move |_| Janitor::new(db, retention, reporter))
        };
        let cache = {
            let addr = config.cache_capacity.map(|capacity| {
                let (db, ttl, metrics, reporter) =
                    (db.clone(), config.cache_ttl, Arc::clone(&metrics), reporter.clone());
                Supervisor::start(move |_| Cache::new(db, capacity, ttl, metrics, reporter))
            });
            CacheClient::new(addr, db.clone(), Arc::clone(&metrics), config.db_timeout + Duration::from_millis(500))
        };
        let event_relay = config.cache_capacity.is_some().then(|| {
            let (db, cache, interval, reporter) =
                (db.clone(), cache.clone(), config.event_poll_interval, reporter.clone());
            Supervisor::start(move |_| EventRelay::new(origin, db, cache, interval, newest_event, reporter))
        });
        let rate_limiter = {
            let (quotas, max_keys) = (config.rate_limits, config.rate_limit_max_keys);
            let (metrics, reporter) = (Arc::clone(&metrics), reporter.clone());
            Supervisor::start(move |_| RateLimiter::new(quotas, max_keys, metrics, reporter))
        };
        let passwords = Passwords::start(config.password_hasher_threads, reporter)
            .map_err(|error| StartupError::Internal(error.to_string()))?;

        let state = AppState {
            config: Arc::clone(&config),
            db,
            health: health.clone(),
            metrics: Arc::clone(&metrics),
            passwords,
            tokens: Arc::new(TokenKeys::new(&config.jwt_secret, config.jwt_ttl)),
            cache,
            rate_limiter,
        };
        let draining = Draining::default();
        let fail_open = web::Data::new(FailOpenGate::default());
        let drain_flag = draining.clone();

        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .app_data(web::Data::new(Arc::clone(&state.metrics)))
                .app_data(web::Data::new(drain_flag.clone()))
                .app_data(fail_open.clone())
                .app_data(extract::json_config())
                .app_data(extract::payload_config())
                .app_data(extract::path_config())
                .app_data(extract::query_config())
                .configure(|cfg| http::routes(cfg, &state.config))
                .default_service(web::to(http::unknown_route))
                .wrap(from_fn(limit_rate))
                .wrap(cors(&state.config))
                .wrap(from_fn(render_problems))
                .wrap(from_fn(add_security_headers))
                .wrap(from_fn(record_http_metrics))
                .wrap(TracingLogger::<RequestSpan>::new())
                .wrap(from_fn(assign_request_id))
                .wrap(from_fn(close_connections_while_draining))
                .wrap(from_fn(answer_head_as_get))
        })
        .listen(listener)
        .map_err(|source| StartupError::Bind { addr: config.bind_addr, source })?
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs())
        .run();

        tracing::info!(
            address = %config.bind_addr, port, database = ?config.database.url, workers = config.db_workers,
            "storefront is listening"
        );
        Ok(Self {
            server,
            port,
            shutdown_drain: config.shutdown_drain,
            draining,
            health,
            _janitor: janitor,
            _event_relay: event_relay,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM or SIGINT, then shuts down in order: readiness fails at once,
    /// the listener stays open for SHUTDOWN_DRAIN_SECONDS (so load balancers notice), then
    /// closes while in-flight requests get up to SHUTDOWN_TIMEOUT_SECONDS to finish. A
    /// second signal skips whatever waiting is left.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let handle = self.server.handle();
        let (health, drain, draining) = (self.health.clone(), self.shutdown_drain, self.draining.clone());
        actix_rt::spawn(async move {
            wait_for_stop_signal().await;
            health.do_send(BeginShutdown);
            draining.begin();
            tracing::info!(drain_seconds = drain.as_secs(), "stop signal received; readiness fails, draining");
            let drained = first_of(actix_rt::time::sleep(drain), wait_for_stop_signal()).await;
            if drained && first_of(handle.stop(true), wait_for_stop_signal()).await {
                return;
            }
            tracing::warn!("second stop signal: stopping now");
            handle.stop(false).await;
        });
        self.server.await?;
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Waits for both futures' first; true when it was `first`.
async fn first_of(first: impl std::future::Future<Output = ()>, second: impl std::future::Future<Output = ()>) -> bool {
    matches!(
        futures_util::future::select(Box::pin(first), Box::pin(second)).await,
        futures_util::future::Either::Left(_)
    )
}

/// Connects once (so a bad URL or an unreachable server fails start-up with its real
/// cause), applies pending migrations, and returns the newest outbox event id: where this
/// replica starts tailing, before its cache can hold anything.
fn prepare_database(config: &Config) -> Result<i64, StartupError> {
    let mut conn =
        ConnectionManager::new(&config.database).establish().map_err(|error| StartupError::Database(error.message))?;
    let applied = migrations::run_pending(&mut conn)
        .map_err(|error| StartupError::Database(format!("migrations failed: {error}")))?;
    for version in applied {
        tracing::info!(%version, "migration applied");
    }
    LatestEventId.run(&mut conn).map_err(|error| StartupError::Database(error.to_string()))
}

fn cors(config: &Config) -> Cors {
    let cors = config.cors_allowed_origins.iter().fold(Cors::default(), |cors, origin| cors.allowed_origin(origin));
    cors.allowed_methods(["GET", "POST", "PATCH", "DELETE"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::IF_MATCH, header::IF_NONE_MATCH])
        .allowed_header("idempotency-key")
        .allowed_header("x-request-id")
        .expose_headers([header::ETAG, header::LOCATION, header::RETRY_AFTER])
        .expose_headers(["x-request-id", "ratelimit", "ratelimit-policy", "idempotent-replayed"])
        // A disallowed origin just gets no CORS headers (the browser then blocks it);
        // refusing the request outright would also break non-browser clients sending Origin.
        .block_on_origin_mismatch(false)
        .max_age(600)
}

async fn wait_for_stop_signal() {
    use actix_rt::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(error) = actix_rt::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    futures_util::future::select(Box::pin(terminate), Box::pin(interrupt)).await;
}
