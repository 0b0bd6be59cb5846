//! Benchmark comparison for `bench/run.sh`: one product read by id, two ways, same query
//! (`storefront::db::catalog::GetProduct`), same database, same pool size, one process.
//!
//! - `GET /block/{id}`: the idiomatic actix-web way, `web::block` + a diesel r2d2 pool
//!   checked out in the handler.
//! - `GET /actor/{id}`: the Storefront way, a message to the DbExecutor pool
//!   (`storefront::actors::DbGateway`), with its admission, breaker and timeout.
//!
//! No middleware, no cache, actix-web defaults. Usage:
//! `db_read DATABASE_URL [HOST:PORT] [DB_WORKERS]`, default `127.0.0.1:18091`, 4 workers
//! (the server's default DB_WORKERS; the pool has DB_WORKERS + 2 connections, as there).

use std::{sync::Arc, time::Duration};

use actix::{Actor, Context, Handler};
use actix_web::{http::header::ContentType, web, App, HttpResponse, HttpServer};
use storefront::{
    actors::{
        breaker::{BreakerChanged, BreakerSettings, DbBreaker},
        cache::CacheTiers,
        db_executor::DbGatewaySettings,
        restarts::RestartRegistry,
        supervision::{ActorRestarted, RestartReporter},
        DbGateway,
    },
    config::{DatabaseConfig, DatabaseUrl},
    db::{build_pool, catalog::GetProduct, outbox::Outbox, DbPool, UseCase},
    domain::{catalog::Product, restart_intensity::RestartIntensity},
    metrics::Metrics,
};
use uuid::Uuid;

const DEFAULT_ADDR: &str = "127.0.0.1:18091";

fn answer(product: Option<Product>) -> HttpResponse {
    match product {
        Some(product) => match serde_json::to_string(&product) {
            Ok(body) => HttpResponse::Ok().content_type(ContentType::json()).body(body),
            Err(_) => HttpResponse::InternalServerError().finish(),
        },
        None => HttpResponse::NotFound().finish(),
    }
}

async fn with_web_block(pool: web::Data<DbPool>, id: web::Path<Uuid>) -> HttpResponse {
    let id = id.into_inner();
    let read = web::block(move || {
        let mut conn = pool.get().map_err(|error| error.to_string())?;
        GetProduct { id }.run(&mut conn, &mut Outbox::unattributed()).map_err(|error| error.to_string())
    })
    .await;
    match read {
        Ok(Ok(product)) => answer(product),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

async fn with_db_executor(db: web::Data<DbGateway>, id: web::Path<Uuid>) -> HttpResponse {
    match db.run(GetProduct { id: id.into_inner() }).await {
        Ok(product) => answer(product),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// Nobody watches the breaker or keeps a restart ledger here.
struct Ignore;
impl Actor for Ignore {
    type Context = Context<Self>;
}
impl Handler<BreakerChanged> for Ignore {
    type Result = ();
    fn handle(&mut self, _msg: BreakerChanged, _ctx: &mut Context<Self>) {}
}
impl Handler<ActorRestarted> for Ignore {
    type Result = ();
    fn handle(&mut self, _msg: ActorRestarted, _ctx: &mut Context<Self>) {}
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let url = args.next().ok_or_else(|| invalid("usage: db_read DATABASE_URL [HOST:PORT] [DB_WORKERS]".into()))?;
    let addr = args.next().unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let workers: usize = args.next().map_or(Ok(4), |raw| raw.parse()).map_err(|_| invalid("DB_WORKERS".into()))?;
    let database = DatabaseConfig {
        url: DatabaseUrl::parse(&url).map_err(|error| invalid(error.to_string()))?,
        pool_size: u32::try_from(workers + 2).map_err(|_| invalid("DB_WORKERS".into()))?,
        connect_timeout: Duration::from_secs(5),
        startup_retry: Duration::ZERO,
    };

    let metrics = Arc::new(Metrics::new());
    let restarts = RestartRegistry::new(RestartIntensity::default());
    let reporter = RestartReporter::new(Arc::clone(&metrics), Ignore.start().recipient(), restarts);
    let breaker = DbBreaker::new(
        BreakerSettings { failure_threshold: 5, cooldown: Duration::from_secs(5) },
        Arc::clone(&metrics),
        Ignore.start().recipient(),
    );
    let gateway = DbGateway::start(
        build_pool(&database),
        DbGatewaySettings {
            origin: Uuid::now_v7(),
            workers,
            queue_depth: workers * 64,
            timeout: Duration::from_secs(5),
            outbox_appended: Default::default(),
            // No cache: reads only, and nothing to invalidate.
            stale_entries: Arc::new(
                CacheTiers::prepare(None, Duration::ZERO, 1, Arc::clone(&metrics), reporter.clone()).0,
            ),
            breaker,
            // No relay: nothing publishes a position, and these reads answer none.
            event_position: Default::default(),
        },
        reporter,
        metrics,
    );
    let pool = build_pool(&database);
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(pool.clone()))
            .app_data(web::Data::new(gateway.clone()))
            .route("/block/{id}", web::get().to(with_web_block))
            .route("/actor/{id}", web::get().to(with_db_executor))
    })
    .bind(addr.as_str())?
    .run()
    .await
}
