//! The route table: each dialect mounted as its own scope, which carries the dialect so
//! that its key check, unknown routes, 413s and body errors answer in it, and the open
//! routes (`/`, `/health`, `/metrics`) beside them.

mod anthropic;
mod embeddings;
mod models;
mod responses;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{HttpServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse, Scope};

pub use models::ListingCache;

use crate::auth;
use crate::dialect::anthropic::Anthropic;
use crate::dialect::ollama::{Ollama, Shape};
use crate::dialect::openai::OpenAi;
use crate::dialect::Dialect;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::pipeline::chat_route;

/// The Ollama version reported to clients that gate features on it.
pub const OLLAMA_COMPAT_VERSION: &str = "0.13.0";

/// Registers every route: one line per dialect, then the open routes.
///
/// actix takes the first scope whose prefix matches a path and does not fall through to
/// the next, so a more specific prefix goes first: a dialect at `/v1/messages` is
/// mounted above the line for `/v1`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(mount::<Anthropic>("/v1/messages", anthropic))
        .service(mount::<OpenAi>("/v1", openai))
        .service(mount::<Ollama>("/api", ollama))
        // The admin console: its page and its JSON API, outside every dialect.
        .configure(crate::console::configure)
        // Open: probes and scrapers carry no key.
        .route("/health", web::get().to(models::health))
        .route("/metrics", web::get().to(metrics))
        .route("/", web::get().to(root))
        .route("/", web::head().to(root));
}

/// A dialect's scope: its routes, its key check and its 404, all answering in `D`.
fn mount<D: Dialect>(prefix: &str, routes: fn(Scope) -> Scope) -> impl HttpServiceFactory {
    routes(web::scope(prefix))
        .default_service(web::to(not_found::<D>))
        .wrap(from_fn(key_check::<D>))
}

/// Anthropic's routes, under `/v1/messages` (a query string, such as Claude Code's
/// `?beta=true`, is no part of the path).
fn anthropic(scope: Scope) -> Scope {
    scope
        .route("", chat_route(Anthropic))
        .route("/count_tokens", web::post().to(anthropic::count_tokens))
}

/// OpenAI's routes, under `/v1`.
fn openai(scope: Scope) -> Scope {
    scope
        .route("/chat/completions", chat_route(OpenAi))
        .route("/models", web::get().to(models::openai_models))
        .route("/models/{model:.+}", web::get().to(models::openai_model))
        .route("/embeddings", web::post().to(embeddings::openai_embeddings))
        .route("/responses", web::post().to(responses::create))
        .route("/responses/{id}", web::get().to(responses::retrieve))
        .route("/responses/{id}", web::delete().to(responses::delete))
}

/// Ollama's routes, under `/api`.
fn ollama(scope: Scope) -> Scope {
    scope
        .route("/chat", chat_route(Ollama(Shape::Chat)))
        .route("/generate", chat_route(Ollama(Shape::Generate)))
        .route("/embed", web::post().to(embeddings::ollama_embed))
        .route(
            "/embeddings",
            web::post().to(embeddings::ollama_embeddings_legacy),
        )
        .route("/show", web::post().to(models::ollama_show))
        .route("/ps", web::get().to(models::ollama_ps))
        .route("/tags", web::get().to(models::ollama_tags))
        .route("/tags", web::head().to(HttpResponse::Ok))
        .route("/version", web::get().to(version))
        .route("/version", web::head().to(HttpResponse::Ok))
}

/// The key check of a dialect's scope: a refusal is answered in the dialect and goes
/// no further.
async fn key_check<D: Dialect>(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let (admitted, budgets) = auth::admit(&request).await;
    let mut response = match admitted {
        Ok(()) => next.call(request).await?.map_into_left_body(),
        Err(refusal) => {
            // The model listings under /v1 answer an Anthropic client in its shape, their
            // refusals included.
            let answer = if models::anthropic_listing(request.request()) {
                crate::usage::refused_at_door(&request, Anthropic::NAME, &refusal);
                Anthropic::render_error(&refusal)
            } else {
                crate::usage::refused_at_door(&request, D::NAME, &refusal);
                D::render_error(&refusal)
            };
            request.into_response(answer).map_into_right_body()
        }
    };
    // The headers OpenAI's clients read, on every answer to a limited key.
    crate::limits::write_headers(response.headers_mut(), &budgets);
    Ok(response)
}

/// A path that is no route, answered in the dialect of the scope it fell in (Ollama's
/// outside every scope, as Ollama serves `/`).
pub async fn not_found<D: Dialect>(request: HttpRequest) -> HttpResponse {
    D::render_error(&GatewayError::RouteNotFound {
        method: request.method().to_string(),
        path: request.path().to_owned(),
    })
}

async fn root() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Ollama is running")
}

async fn metrics(request: HttpRequest, metrics: web::Data<Metrics>) -> HttpResponse {
    if let Err(refusal) = auth::may_see_operations(&request) {
        // The operational routes belong to no dialect; OpenAI's error shape is the one
        // scrapers and people most often read.
        return crate::dialect::openai::render_error(&refusal);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "version": OLLAMA_COMPAT_VERSION }))
}
