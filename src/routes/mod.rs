//! The routes of both dialects: each handler reads the body, lets its dialect parse it,
//! routes the model, calls the backend and lets its dialect render the answer.

mod chat;
mod embeddings;
mod models;

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures::StreamExt;

pub use models::ListingCache;

use bytes::Bytes;

use crate::auth::User;
use crate::dialect::Dialect;
use crate::error::GatewayError;
use crate::hangup::ClientSocket;
use crate::metrics::Metrics;
use crate::server::BodyLimit;
use crate::timing::Stopwatch;

/// The Ollama version reported to clients that gate features on it.
pub const OLLAMA_COMPAT_VERSION: &str = "0.13.0";

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/completions", web::post().to(chat::openai_chat))
        .route("/v1/models", web::get().to(models::openai_models))
        .route("/v1/models/{model:.+}", web::get().to(models::openai_model))
        .route(
            "/v1/embeddings",
            web::post().to(embeddings::openai_embeddings),
        )
        .route("/api/chat", web::post().to(chat::ollama_chat))
        .route("/api/generate", web::post().to(chat::ollama_generate))
        .route("/api/embed", web::post().to(embeddings::ollama_embed))
        .route(
            "/api/embeddings",
            web::post().to(embeddings::ollama_embeddings_legacy),
        )
        .route("/api/show", web::post().to(models::ollama_show))
        .route("/api/ps", web::get().to(models::ollama_ps))
        .route("/api/tags", web::get().to(models::ollama_tags))
        .route("/api/tags", web::head().to(HttpResponse::Ok))
        .route("/api/version", web::get().to(version))
        .route("/api/version", web::head().to(HttpResponse::Ok))
        .route("/health", web::get().to(models::health))
        .route("/metrics", web::get().to(metrics))
        .route("/", web::get().to(root))
        .route("/", web::head().to(root));
}

async fn root() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Ollama is running")
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}

/// Who is asking, for counting what they spend.
pub struct Caller {
    pub user: Arc<str>,
    pub metrics: web::Data<Metrics>,
    /// The client's socket, to notice it hanging up before the answer starts.
    pub socket: Option<ClientSocket>,
    /// Where the upstream call's start and answer are noted for `Server-Timing`.
    pub stopwatch: Option<Stopwatch>,
}

/// The user name of requests served without keys, shared rather than allocated each time.
fn anonymous() -> Arc<str> {
    static ANONYMOUS: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from("anonymous"));
    ANONYMOUS.clone()
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Caller, actix_web::Error>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let user = request
            .extensions()
            .get::<User>()
            .map(|user| user.0.clone())
            .unwrap_or_else(anonymous);
        let metrics = request
            .app_data::<web::Data<Metrics>>()
            .cloned()
            .unwrap_or_else(|| web::Data::new(Metrics::new()));
        let socket = request.conn_data::<ClientSocket>().copied();
        let stopwatch = request.extensions().get::<Stopwatch>().cloned();
        std::future::ready(Ok(Caller {
            user,
            metrics,
            socket,
            stopwatch,
        }))
    }
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "version": OLLAMA_COMPAT_VERSION }))
}

/// A request's whole body, or why it could not be read (too large, cut off). Reading
/// never fails the extraction, so each handler answers the problem in its dialect.
pub struct RequestBody(Result<Bytes, GatewayError>);

impl RequestBody {
    /// The body's bytes, or the error to answer with.
    pub fn bytes(self) -> Result<Bytes, GatewayError> {
        self.0
    }
}

impl FromRequest for RequestBody {
    type Error = actix_web::Error;
    type Future = futures::future::LocalBoxFuture<'static, Result<RequestBody, actix_web::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let limit = request
            .app_data::<web::Data<BodyLimit>>()
            .map_or(BodyLimit(usize::MAX), |limit| *limit.get_ref());
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let payload = payload.take();
        Box::pin(async move { Ok(RequestBody(read_body(announced, payload, limit).await)) })
    }
}

/// Reads the whole request body, refusing one over the limit before reading it when
/// the client announced its length.
async fn read_body(
    announced: Option<usize>,
    mut payload: actix_web::dev::Payload,
    limit: BodyLimit,
) -> Result<Bytes, GatewayError> {
    let too_large = GatewayError::PayloadTooLarge { limit: limit.0 };
    if announced.is_some_and(|length| length > limit.0) {
        return Err(too_large);
    }
    let mut body = BytesMut::with_capacity(announced.unwrap_or(1024).min(limit.0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            GatewayError::bad_request(format!("reading the request body failed: {e}"))
        })?;
        if body.len() + chunk.len() > limit.0 {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The handler's outcome as an answer: errors in the route's dialect.
fn respond(dialect: Dialect, outcome: Result<HttpResponse, GatewayError>) -> HttpResponse {
    outcome.unwrap_or_else(|error| error.response(dialect))
}
