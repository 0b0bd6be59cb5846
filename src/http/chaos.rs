//! `POST /ops/chaos`: inject a fault into an actor on purpose. The route exists only when
//! CHAOS_TOKEN is set and requires that token as a bearer token.

use std::time::Duration;

use actix::{dev::ToEnvelope, Actor, Addr, Handler};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::{
    actors::{
        chaos::{PanicWorker, StallWorker},
        names, Crash,
    },
    http::error::AppError,
    http::{auth_header::bearer_token, extract::Json},
    state::AppState,
};

/// How long a fault waits for its actor. actix skips a message whose sender gave up, so a
/// fault asked for is a fault delivered only if the ask outlasts the actor's busiest moment:
/// generous, since only an operator (or a test) waits on it.
const ACTOR_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_STALL: Duration = Duration::from_secs(60);
/// A crash loop without `millis` lasts this long (and no longer with it), unless cleared.
const MAX_CRASH_LOOP: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChaosActor {
    DbExecutor,
    Health,
    Cache,
    RateLimiter,
    EventHub,
    Janitor,
    EventRelay,
    NatsPublisher,
}

impl ChaosActor {
    /// The actor's name in logs, metrics and the actors API.
    fn name(&self) -> &'static str {
        match self {
            Self::DbExecutor => names::DB_EXECUTOR,
            Self::Health => names::HEALTH,
            Self::Cache => names::CACHE,
            Self::RateLimiter => names::RATE_LIMITER,
            Self::EventHub => names::EVENT_HUB,
            Self::Janitor => names::JANITOR,
            Self::EventRelay => names::EVENT_RELAY,
            Self::NatsPublisher => names::NATS_PUBLISHER,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChaosFault {
    /// The actor panics inside its handler; the caller gets a 500 problem.
    Panic,
    /// A DbExecutor thread stays busy for `millis`, as under a slow query; the rate
    /// limiter decides nothing for `millis`, as when it is down.
    Stall,
    /// Every message the actor (each of its instances) handles panics, for `millis` (at
    /// most, and without it, 10 minutes) or until `clear`: it restarts past its restart
    /// intensity and backs off.
    CrashLoop,
    /// Ends a crash loop injected into the actor at once.
    Clear,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosRequest {
    pub actor: ChaosActor,
    pub fault: ChaosFault,
    #[serde(default)]
    pub millis: u64,
}

#[utoipa::path(post, path = "/ops/chaos", tag = "operations", request_body = ChaosRequest, responses(
    (status = 204, description = "The fault ran and the actor survived it (stall), or a crash loop was armed or cleared"),
    (status = 500, description = "The actor panicked, as asked; a fresh one replaces it"),
    (status = 401, description = "The bearer token is not the chaos token", content_type = "application/problem+json"),
    (status = 404, description = "Fault injection is disabled (no CHAOS_TOKEN)", content_type = "application/problem+json"),
    (status = 422, description = "Unknown actor or fault, or a fault the actor does not take", content_type = "application/problem+json"),
), security(("chaos_token" = [])))]
pub async fn inject_fault(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<ChaosRequest>,
) -> Result<HttpResponse, AppError> {
    let given = bearer_token(&request).unwrap_or_default();
    let expected = state.config.ops.chaos_token.as_ref().filter(|token| !token.expose().is_empty());
    if !expected.is_some_and(|token| token.matches(given)) {
        return Err(AppError::Unauthorized("A valid chaos token is required.".into()));
    }
    let ChaosRequest { actor, fault, millis } = body.into_inner();
    tracing::warn!(?actor, ?fault, millis, "fault injected by an operator");
    let stall = Duration::from_millis(millis).min(MAX_STALL);
    match (actor, fault) {
        (actor, fault @ (ChaosFault::CrashLoop | ChaosFault::Clear)) => crash_loop(&state, &actor, &fault, millis)?,
        (ChaosActor::DbExecutor, ChaosFault::Panic) => state.db.run(PanicWorker).await?,
        (ChaosActor::DbExecutor, ChaosFault::Stall) => state.db.run(StallWorker { duration: stall }).await?,
        (ChaosActor::Health, ChaosFault::Panic) => crash(&state.health, "health actor").await?,
        (ChaosActor::Cache, ChaosFault::Panic) => {
            let cache = state.cache.addr().ok_or_else(|| AppError::invalid("actor", "the cache is disabled"))?;
            crash(cache, "cache").await?
        }
        (ChaosActor::RateLimiter, ChaosFault::Panic) => {
            // Crashes the shard of the worker serving this request; the others keep serving.
            state
                .rate_limiter
                .crash(ACTOR_TIMEOUT)
                .await
                .map_err(|error| AppError::internal("rate limiter", &error))??
        }
        (ChaosActor::EventHub, ChaosFault::Panic) => crash(&state.hub, "event hub").await?,
        (ChaosActor::Janitor, ChaosFault::Panic) => crash(&state.janitor, "janitor").await?,
        (ChaosActor::EventRelay, ChaosFault::Panic) => crash(&state.event_relay, "event relay").await?,
        (ChaosActor::NatsPublisher, ChaosFault::Panic) => {
            let publisher = state
                .nats_publisher
                .as_ref()
                .ok_or_else(|| AppError::invalid("actor", "NATS publishing is disabled (no NATS_URL)"))?;
            crash(publisher, "nats publisher").await?
        }
        (ChaosActor::RateLimiter, ChaosFault::Stall) => {
            // Every shard goes down, so every request meets the fail-open path.
            state
                .rate_limiter
                .go_down(stall, ACTOR_TIMEOUT)
                .await
                .map_err(|error| AppError::internal("rate limiter", &error))?
        }
        (_, ChaosFault::Stall) => {
            return Err(AppError::invalid("fault", "stall applies to db_executor and rate_limiter only"))
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Arms (`crash_loop`) or ends (`clear`) a crash loop: the actor's supervision makes every
/// message it handles panic meanwhile.
fn crash_loop(state: &AppState, actor: &ChaosActor, fault: &ChaosFault, millis: u64) -> Result<(), AppError> {
    let disabled = match actor {
        ChaosActor::Cache => state.cache.addr().is_none().then_some("the cache is disabled"),
        ChaosActor::NatsPublisher => {
            state.nats_publisher.is_none().then_some("NATS publishing is disabled (no NATS_URL)")
        }
        _ => None,
    };
    if let Some(why) = disabled {
        return Err(AppError::invalid("actor", why));
    }
    let restarts = state
        .actors
        .restarts()
        .find(actor.name())
        .ok_or_else(|| AppError::Internal(format!("no restart history for {}", actor.name())))?;
    match fault {
        ChaosFault::CrashLoop if millis > 0 => {
            restarts.crash_loop_for(Duration::from_millis(millis).min(MAX_CRASH_LOOP))
        }
        ChaosFault::CrashLoop => restarts.crash_loop_for(MAX_CRASH_LOOP),
        _ => restarts.end_crash_loop(),
    }
    Ok(())
}

/// Makes an async actor panic in its handler; its answer is the 500 the caller gets.
async fn crash<A>(actor: &Addr<A>, name: &str) -> Result<(), AppError>
where
    A: Actor + Handler<Crash>,
    A::Context: ToEnvelope<A, Crash>,
{
    Ok(actor.send(Crash).timeout(ACTOR_TIMEOUT).await.map_err(|error| AppError::internal(name, &error))??)
}
