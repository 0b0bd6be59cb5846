//! Building and running the service from a `Config`: the binary and the tests start it
//! the same way.

use std::{cell::OnceCell, io, net::TcpListener, rc::Rc, sync::Arc, time::Duration};

use actix::{Addr, Supervisor};
use actix_cors::Cors;
use actix_http::HttpService;
use actix_service::{map_config, ServiceFactoryExt};
use actix_web::{
    dev::{AppConfig, ServerHandle},
    http::header,
    middleware::from_fn,
    web, App,
};
use tokio::sync::watch;

use crate::state::AppState;

use crate::{
    actors::password_hasher::Passwords,
    actors::{
        breaker::{BreakerSettings, DbBreaker},
        db_probe::{DbProbe, ProbeThread},
        directory::ActorDirectory,
        report::ActorReport,
    },
    actors::{
        cache::{CacheClient, CacheTiers, CacheTimeouts},
        db_executor::DbGatewaySettings,
        event_hub::{self, EventHub, HubLimits, ShutDown},
        event_position::EventPosition,
        event_relay::{self, EventRelay, RelaySettings},
        health::{self, BeginShutdown, DedicatedProbe, Health, Watched},
        janitor::{self, Janitor, Retention},
        names,
        nats_publisher::{NatsPublisher, OutboxFeed, Retire},
        rate_limiter::{RateLimiterClient, RedisTarget},
        restarts::RestartRegistry,
        supervision::{RestartReporter, Unstarted},
        DbGateway,
    },
    auth::tokens::TokenKeys,
    config::{Config, DatabaseUrl},
    db::{self, events::StartingPoint, migrations, outbox::OutboxSignals, outbox_horizon::Horizon},
    descriptors::{self, DescriptorBudget},
    http::{
        self, extract,
        middleware::{
            drain::{Draining, OpenConnections},
            envelope::envelope,
            http_metrics::RequestMetrics,
            rate_limit::{limit_rate, FailOpenGate, PolicyFields},
            request_id::RequestIds,
        },
        ws::upgrade::{LiveUpgrade, SharedApp},
    },
    metrics::Metrics,
};

/// The rate limiter's per-shard counts, summed on the actors page.
const RATE_LIMITER_SUMMED: &[&str] = &["keys_tracked", "leases_held", "max_keys", "requests_waiting"];

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
    hub: Addr<EventHub>,
    metrics: Arc<Metrics>,
    /// Held so these live as long as the server.
    _janitor: Addr<Janitor>,
    nats_publisher: Option<Addr<NatsPublisher>>,
}

impl Application {
    /// Connects, migrates, starts the actors and binds the listener. Must run inside an
    /// actix System; nothing is served until `run_until_stopped`.
    pub fn build(config: Config) -> Result<Self, StartupError> {
        let config = Arc::new(config);
        // Bind before anything starts: a taken port must fail with one line, before any
        // actor or thread exists that would be torn down half-started.
        let listener = TcpListener::bind(config.server.bind_addr)
            .map_err(|source| StartupError::Bind { addr: config.server.bind_addr, source })?;
        let (newest_event, horizon) = prepare_database(&config)?;
        let descriptors = plan_descriptors(&config);

        let (ground, health) = Ground::lay(&config);
        let storage = Storage::start(&config, &ground);
        let live = LiveUpdates::start(&config, &ground, &storage, &descriptors, newest_event, horizon);
        let guards = Guards::start(&config, &ground);
        let ops = Ops::start(&config, &ground, health, &storage, &live, &guards);
        serve(config, listener, &ground, &descriptors, storage, live, guards, ops)
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
        let (hub, metrics) = (self.hub.clone(), Arc::clone(&self.metrics));
        actix_rt::spawn(async move {
            wait_for_stop_signal().await;
            health.do_send(BeginShutdown);
            draining.begin();
            tracing::info!(drain_seconds = drain.as_secs(), "stop signal received; readiness fails, draining");
            let drained = first_of(actix_rt::time::sleep(drain), wait_for_stop_signal()).await;
            // Live-updates sessions say goodbye (1001) and end, so the graceful stop that
            // follows is not held up by connections that never finish on their own.
            hub.do_send(ShutDown);
            // Live-updates connections are tasks of their own, not the server's: wait for
            // their goodbyes (each takes at most a couple of seconds) before it stops.
            first_of(all_closed(metrics), wait_for_stop_signal()).await;
            if drained && first_of(handle.stop(true), wait_for_stop_signal()).await {
                return;
            }
            tracing::warn!("second stop signal: stopping now");
            handle.stop(false).await;
        });
        self.server.await?;
        tracing::info!("server stopped");
        if let Some(publisher) = &self.nats_publisher {
            // Hand the publishing lease back so another replica takes over at once.
            let _ = publisher.send(Retire).timeout(Duration::from_secs(2)).await;
        }
        Ok(())
    }
}

/// What every part is built with: the metrics registry, this replica's name, and the
/// restart reporter, which feeds the restart ledger of a Health actor that is addressable
/// now and runs once what it watches exists (`Ops::start`).
struct Ground {
    metrics: Arc<Metrics>,
    /// The cache's near shards and the rate limiter run one per HTTP worker (actix's
    /// default count, set explicitly so the shard registry knows it).
    http_workers: usize,
    /// This replica, as named in the outbox events it writes.
    origin: uuid::Uuid,
    restarts: RestartRegistry,
    /// Health's address, for what reports to it; it runs once `Ops::start` gives it what
    /// it watches.
    health: Addr<Health>,
    reporter: RestartReporter,
}

impl Ground {
    fn lay(config: &Config) -> (Self, Unstarted<Health>) {
        let metrics = Arc::new(Metrics::new());
        let restarts = RestartRegistry::new(config.supervision.restart_intensity());
        let health = Unstarted::new();
        let reporter = RestartReporter::new(Arc::clone(&metrics), health.address().recipient(), restarts.clone());
        let ground = Self {
            metrics,
            http_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            origin: uuid::Uuid::now_v7(),
            restarts,
            health: health.address(),
            reporter,
        };
        (ground, health)
    }
}

/// The database side: the DbExecutor pool behind its gateway and breaker, the probe's own
/// thread, the cache in front of it, and the janitor that prunes it.
struct Storage {
    db: DbGateway,
    breaker: Arc<DbBreaker>,
    probe: ProbeThread,
    probe_timeout: Duration,
    cache: CacheClient,
    janitor: Addr<Janitor>,
    /// Set off by each use case that appended outbox events (read by the relay).
    outbox_appended: OutboxSignals,
    /// The outbox position reads answer (published by the relay).
    event_position: EventPosition,
}

impl Storage {
    fn start(config: &Config, ground: &Ground) -> Self {
        let Ground { metrics, reporter, .. } = ground;
        let outbox_appended = OutboxSignals::default();
        let event_position = EventPosition::default();
        let breaker = DbBreaker::new(
            BreakerSettings { failure_threshold: config.db.breaker_failures, cooldown: config.db.breaker_cooldown },
            Arc::clone(metrics),
            ground.health.clone().recipient(),
        );
        let probe = DbProbe::start(&config.database, reporter.clone());
        // A refused connection fails at once; the timeout only bounds a database that hangs.
        let probe_timeout = config.db.health_probe_interval.max(config.database.connect_timeout * 2);
        let (cache_tiers, unstarted_cache) = CacheTiers::prepare(
            config.cache.capacity,
            config.cache.ttl,
            ground.http_workers,
            Arc::clone(metrics),
            reporter.clone(),
        );
        let db = DbGateway::start(
            db::build_pool(&config.database),
            DbGatewaySettings {
                origin: ground.origin,
                workers: config.db.workers,
                queue_depth: config.db.queue_depth(),
                timeout: config.db.timeout,
                outbox_appended: outbox_appended.clone(),
                stale_entries: Arc::new(cache_tiers.clone()),
                breaker: Arc::clone(&breaker),
                event_position: event_position.clone(),
            },
            reporter.clone(),
            Arc::clone(metrics),
        );
        unstarted_cache.start(db.clone());
        let janitor = {
            let db = db.clone();
            let retention = Retention {
                idempotency_keys: config.events.idempotency_key_retention,
                events: config.events.retention,
                interval: config.events.janitor_interval,
                keep_unpublished_events: config.nats.is_some(),
            };
            let (supervision, metrics) = (reporter.supervision(janitor::ACTOR), Arc::clone(metrics));
            Supervisor::start(move |_| Janitor::new(db, retention, supervision, metrics))
        };
        let timeouts =
            CacheTimeouts { ask: config.cache.ask_timeout, load: config.db.timeout + Duration::from_millis(500) };
        let cache = CacheClient::new(cache_tiers, db.clone(), Arc::clone(metrics), timeouts);
        Self { db, breaker, probe, probe_timeout, cache, janitor, outbox_appended, event_position }
    }
}

/// The live-updates side: the EventRelay reads the outbox and feeds the cache and the
/// EventHub (and, with NATS_URL, the NATS publisher publishes it).
struct LiveUpdates {
    hub: Addr<EventHub>,
    event_relay: Addr<EventRelay>,
    /// `None` unless NATS_URL is set.
    nats_publisher: Option<Addr<NatsPublisher>>,
}

impl LiveUpdates {
    fn start(
        config: &Config,
        ground: &Ground,
        storage: &Storage,
        descriptors: &DescriptorBudget,
        newest_event: i64,
        horizon: Horizon,
    ) -> Self {
        let Ground { metrics, reporter, origin, .. } = ground;
        let (horizon_watch, horizon_feed) = watch::channel(horizon.settled_through());
        let hub = {
            let limits = HubLimits {
                max_connections: descriptors.live_connections,
                limited_by_descriptors: descriptors.lowers(config.live_updates.max_connections),
                max_connections_per_user: config.live_updates.max_connections_per_user,
                max_anonymous_per_address: config.live_updates.max_anonymous_per_address,
                max_pending: config.live_updates.max_pending,
            };
            let (db, supervision) = (storage.db.clone(), reporter.supervision(event_hub::ACTOR));
            Supervisor::start(move |_| EventHub::new(limits, newest_event, db, supervision))
        };
        let event_relay = {
            let settings = RelaySettings {
                interval: config.events.poll_interval,
                start_after: newest_event,
                horizon,
                signals: storage.outbox_appended.clone(),
                horizon_watch,
                event_position: storage.event_position.clone(),
                origin: *origin,
                listen_url: match &config.database.url {
                    DatabaseUrl::Postgres { url } => Some(url.clone()),
                    DatabaseUrl::Sqlite { .. } => None,
                },
            };
            let (db, cache, hub) = (storage.db.clone(), storage.cache.clone(), hub.clone());
            let (supervision, metrics) = (reporter.supervision(event_relay::ACTOR), Arc::clone(metrics));
            Supervisor::start(move |_| EventRelay::new(settings, db, cache, hub, supervision).watched_by(metrics))
        };
        let nats_publisher = config.nats.clone().map(|settings| {
            NatsPublisher::start(
                settings,
                *origin,
                storage.db.clone(),
                Arc::clone(metrics),
                ground.health.clone().recipient(),
                reporter.clone(),
                OutboxFeed { interval: config.events.poll_interval, horizon: horizon_feed },
            )
        });
        Self { hub, event_relay, nats_publisher }
    }
}

/// What requests pass through besides storage: the rate limiter and the password hasher.
struct Guards {
    rate_limiter: RateLimiterClient,
    passwords: Passwords,
}

impl Guards {
    fn start(config: &Config, ground: &Ground) -> Self {
        let Ground { metrics, reporter, origin, http_workers, .. } = ground;
        let rate_limiter = {
            let (quotas, max_keys) = (config.rate_limits.quotas(), config.rate_limits.max_keys);
            let redis = config.rate_limit_redis.as_ref().map(|redis| RedisTarget {
                url: redis.url.expose().to_owned(),
                timeout: redis.timeout,
                replica: origin.simple().to_string(),
            });
            RateLimiterClient::new(*http_workers, quotas, max_keys, redis, Arc::clone(metrics), reporter.clone())
        };
        // Argon2 is CPU- and memory-bound: one hashing thread per core.
        let password_hasher_threads = std::thread::available_parallelism().map_or(2, usize::from);
        let passwords = Passwords::start(password_hasher_threads, reporter.clone(), Arc::clone(metrics));
        Self { rate_limiter, passwords }
    }
}

/// What operators see: the Health actor (readiness, the restart ledger, the `ops` topic),
/// started last because it watches the rest, and every actor's row for the actors API.
struct Ops {
    health: Addr<Health>,
    actors: ActorDirectory,
}

impl Ops {
    fn start(
        config: &Config,
        ground: &Ground,
        health: Unstarted<Health>,
        storage: &Storage,
        live: &LiveUpdates,
        guards: &Guards,
    ) -> Self {
        let watched = Watched {
            database: storage.db.clone(),
            probe_thread: DedicatedProbe { probe: storage.probe.addr.clone(), timeout: storage.probe_timeout },
            ops: live.hub.clone().recipient(),
        };
        let supervision = ground.reporter.supervision(health::ACTOR);
        let interval = config.db.health_probe_interval;
        let health = health.start(Health::new(Arc::clone(&ground.metrics), interval, supervision, watched));

        use crate::actors::report::ActorKind;
        let mut actors = ActorDirectory::new(ground.restarts.clone());
        let (gateway, breaker, probe) = (storage.db.clone(), Arc::clone(&storage.breaker), storage.probe.clone());
        let passwords = guards.passwords.clone();
        actors
            .describe(move || gateway.report())
            .describe(move || breaker.report())
            .describe(move || probe.report())
            .describe(move || passwords.report())
            .ask(names::HEALTH, health.clone().recipient())
            .ask_shards(names::RATE_LIMITER, None, ground.http_workers, RATE_LIMITER_SUMMED, {
                let shards = guards.rate_limiter.shards().clone();
                move || shards.each().map(|shard| shard.clone().recipient()).collect()
            })
            .ask(names::JANITOR, storage.janitor.clone().recipient());
        let cache = &storage.cache;
        match cache.addr() {
            Some(addr) => actors.ask_shards(
                names::CACHE,
                Some(addr.clone().recipient()),
                ground.http_workers,
                &["entries", "loads_in_flight"],
                {
                    let shards = cache.shards().clone();
                    move || shards.each().map(|shard| shard.clone().recipient()).collect()
                },
            ),
            None => actors.describe(|| ActorReport::disabled(names::CACHE, ActorKind::Async, "CACHE_CAPACITY=0")),
        };
        actors
            .ask(names::EVENT_RELAY, live.event_relay.clone().recipient())
            .ask(names::EVENT_HUB, live.hub.clone().recipient());
        if let Some(publisher) = &live.nats_publisher {
            actors.ask(names::NATS_PUBLISHER, publisher.clone().recipient());
        }
        Self { health, actors }
    }
}

/// Binds the HTTP workers to the listener and starts serving, each worker with its own
/// cache and rate-limiter shards.
#[allow(clippy::too_many_arguments)]
fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    ground: &Ground,
    descriptors: &DescriptorBudget,
    storage: Storage,
    live: LiveUpdates,
    guards: Guards,
    ops: Ops,
) -> Result<Application, StartupError> {
    let (metrics, http_workers) = (&ground.metrics, ground.http_workers);
    let shard_reporter = ground.reporter.clone();
    let port =
        listener.local_addr().map_err(|source| StartupError::Bind { addr: config.server.bind_addr, source })?.port();
    let state = AppState {
        config: Arc::clone(&config),
        db: storage.db,
        health: ops.health.clone(),
        metrics: Arc::clone(metrics),
        passwords: guards.passwords,
        tokens: Arc::new(TokenKeys::new(&config.auth.jwt_secret.key, config.auth.jwt_ttl)),
        cache: storage.cache,
        rate_limiter: guards.rate_limiter,
        hub: live.hub.clone(),
        event_relay: live.event_relay,
        actors: ops.actors,
        janitor: storage.janitor.clone(),
        nats_publisher: live.nats_publisher.clone(),
    };
    let draining = Draining::default();
    let fail_open = web::Data::new(FailOpenGate::default());
    let drain_flag = draining.clone();

    let local_addr =
        listener.local_addr().map_err(|source| StartupError::Bind { addr: config.server.bind_addr, source })?;
    let buffered = state.metrics.ws_buffered_bytes.clone();
    let open_connections = OpenConnections::new(descriptors.http_connections, state.metrics.http_connections.clone());
    let connections_data = web::Data::new(open_connections.clone());
    // actix-web's HttpServer, spelled out so that live-updates connections can leave
    // the HTTP/1 dispatcher after their handshake (see http/ws/upgrade.rs).
    let server = actix_server::Server::build()
        .workers(http_workers)
        // HTTP connections beyond this wait in the listen backlog instead of failing on
        // the open-file limit (live-updates ones leave this count after their handshake
        // and are capped by the hub).
        .max_concurrent_connections(descriptors.http_connections.div_ceil(http_workers))
        .disable_signals()
        .shutdown_timeout(config.server.shutdown_timeout.as_secs())
        .listen("storefront", listener, move || {
            // This factory runs on each worker's own thread: its shards start on that
            // worker's arbiter, so the hot path's sends stay on the thread.
            let worker_state = AppState {
                cache: state.cache.on_this_worker(shard_reporter.clone()),
                rate_limiter: state.rate_limiter.on_this_worker(),
                ..state.clone()
            };
            let app = App::new()
                .app_data(web::Data::new(worker_state))
                .app_data(web::Data::new(RequestMetrics::new(Arc::clone(&state.metrics))))
                .app_data(RequestIds::default())
                .app_data(web::Data::new(drain_flag.clone()))
                .app_data(connections_data.clone())
                .app_data(fail_open.clone())
                .app_data(web::Data::new(PolicyFields::new(&state.config.rate_limits.quotas())))
                .app_data(extract::json_config())
                .app_data(extract::payload_config())
                .app_data(extract::path_config())
                .app_data(extract::query_config())
                .configure(|cfg| http::routes(cfg, &state.config))
                .default_service(web::to(http::unknown_route))
                .wrap(from_fn(limit_rate))
                .wrap(cors(&state.config))
                .wrap(from_fn(envelope));
            let app = map_config(app, |_| AppConfig::default())
                .map(|response| response.map_into_boxed_body())
                .map_err(|error: actix_web::Error| error.as_response_error().error_response());
            let slot = Rc::new(OnceCell::new());
            let open_connections = open_connections.clone();
            HttpService::build()
                .on_connect_ext(move |_: &actix_rt::net::TcpStream, data| {
                    data.insert(open_connections.opened());
                })
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .h1_allow_half_closed(true)
                .local_addr(local_addr)
                .upgrade(LiveUpgrade::new(Rc::clone(&slot), buffered.clone()))
                .finish(SharedApp::new(app, slot))
                .tcp()
        })
        .map_err(|source| StartupError::Bind { addr: config.server.bind_addr, source })?
        .run();

    tracing::info!(
        address = %config.server.bind_addr, port, database = ?config.database.url,
        http_workers, db_executors = config.db.workers,
        "storefront is listening"
    );
    Ok(Application {
        server,
        port,
        shutdown_drain: config.server.shutdown_drain,
        draining,
        health: ops.health,
        hub: live.hub,
        metrics: Arc::clone(metrics),
        _janitor: storage.janitor,
        nats_publisher: live.nats_publisher,
    })
}

/// Resolves once no live-updates connection is open, or after the longest goodbye.
async fn all_closed(metrics: Arc<Metrics>) {
    let deadline = actix_rt::time::Instant::now() + Duration::from_secs(5);
    while metrics.ws_connections.get() > 0 && actix_rt::time::Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for both futures' first; true when it was `first`.
async fn first_of(first: impl std::future::Future<Output = ()>, second: impl std::future::Future<Output = ()>) -> bool {
    matches!(
        futures_util::future::select(Box::pin(first), Box::pin(second)).await,
        futures_util::future::Either::Left(_)
    )
}

/// Connects once, waiting for a PostgreSQL that is still starting and creating a missing
/// database (so a bad URL or an unreachable server fails start-up with its real cause),
/// applies pending migrations, and returns where this replica starts tailing the outbox
/// (before its cache can hold anything) and the outbox horizon there.
fn prepare_database(config: &Config) -> Result<(i64, Horizon), StartupError> {
    let mut conn = db::bootstrap::open(&config.database, db::bootstrap::IfMissing::Create)
        .map_err(|error| StartupError::Database(error.message))?
        .ok_or_else(|| StartupError::Database("the database could not be created".into()))?;
    let applied = migrations::run_pending(&mut conn)
        .map_err(|error| StartupError::Database(format!("migrations failed: {error}")))?;
    for version in applied {
        tracing::info!(%version, "migration applied");
    }
    StartingPoint::find(&mut conn).map_err(|error| StartupError::Database(error.to_string()))
}

/// Raises the open-file limit as far as allowed and splits it: live-updates connections get
/// what is left after the database, the listener and a headroom for plain HTTP.
fn plan_descriptors(config: &Config) -> DescriptorBudget {
    let limit = descriptors::raise_open_file_limit();
    let configured = config.live_updates.max_connections;
    let budget = DescriptorBudget::plan(limit, config.database.pool_size as usize, configured);
    if budget.lowers(configured) {
        tracing::warn!(
            ws_max_connections = configured,
            open_file_limit = limit,
            live_connections = budget.live_connections,
            "WS_MAX_CONNECTIONS is more than the open-file limit leaves room for: live-updates connections are \
             capped at {} (raise the open-file limit, e.g. LimitNOFILE or ulimit -n, to allow more)",
            budget.live_connections
        );
    }
    budget
}

fn cors(config: &Config) -> Cors {
    let cors =
        config.server.cors_allowed_origins.iter().fold(Cors::default(), |cors, origin| cors.allowed_origin(origin));
    cors.allowed_methods(["GET", "POST", "PATCH", "DELETE"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::IF_MATCH, header::IF_NONE_MATCH])
        .allowed_header("idempotency-key")
        .allowed_header("x-request-id")
        .expose_headers([header::ETAG, header::LOCATION, header::RETRY_AFTER])
        .expose_headers(["x-request-id", "ratelimit", "ratelimit-policy", "idempotent-replayed", "event-position"])
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
