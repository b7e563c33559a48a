//! `POST /v1/embeddings`, `POST /api/embed` and the legacy `POST /api/embeddings`.

use std::time::Instant;

use actix_web::{web, HttpResponse};

use crate::backend::Backend;
use crate::dialect::ollama::embeddings as ollama;
use crate::dialect::openai::embeddings as openai;
use crate::dialect::Dialect;
use crate::embed::{EmbedRequest, Embeddings};
use crate::error::GatewayError;
use crate::router::Router;

use super::chat::{json_utf8, until_client_gone};
use super::{respond, Caller, RequestBody};

/// Routes and embeds, trying an alias's targets in turn; no inputs means the client
/// only wanted the model loaded, which needs no upstream call. The request is only
/// borrowed, so every target sees the same one, uncopied.
async fn embed(
    router: &Router,
    caller: &Caller,
    asked: &str,
    request: &EmbedRequest,
) -> Result<Embeddings, GatewayError> {
    let routes = router.resolve(asked)?;
    if request.inputs.is_empty() {
        return Ok(Embeddings::default());
    }
    for (attempt, route) in routes.iter().enumerate() {
        let last = attempt + 1 == routes.len();
        match embed_one(route.name, route.backend, caller, route.model, request).await {
            Err(error) if !last && error.worth_another_target() => {
                log::warn!(
                    "{asked}: target {}/{} failed ({error}); trying the next",
                    route.name,
                    route.model
                );
            }
            outcome => return outcome,
        }
    }
    Err(GatewayError::ModelNotFound(asked.to_owned()))
}

async fn embed_one(
    name: &str,
    backend: &Backend,
    caller: &Caller,
    model: &str,
    request: &EmbedRequest,
) -> Result<Embeddings, GatewayError> {
    let expected = request.inputs.len();
    if let Some(stopwatch) = &caller.stopwatch {
        stopwatch.upstream_called();
    }
    let embeddings = until_client_gone(caller, backend.embed(model, request)).await;
    if let Some(stopwatch) = &caller.stopwatch {
        stopwatch.upstream_answered();
    }
    let embeddings = embeddings?;
    caller
        .metrics
        .tokens(&caller.user, name, embeddings.prompt_tokens, 0);
    if embeddings.vectors.len() != expected {
        return Err(GatewayError::UpstreamProtocol {
            backend: name.to_owned(),
            detail: format!(
                "asked for {expected} vectors, got {}",
                embeddings.vectors.len()
            ),
        });
    }
    Ok(embeddings)
}

pub async fn openai_embeddings(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    let answer = async {
        let parsed = openai::parse(&body.bytes()?)?;
        let embeddings = embed(&router, &caller, &parsed.model, &parsed.request).await?;
        Ok(HttpResponse::Ok().json(openai::render(&parsed.model, &embeddings, parsed.base64)))
    };
    respond(Dialect::OpenAi, answer.await)
}

pub async fn ollama_embed(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    let started = Instant::now();
    let answer = async {
        let parsed = ollama::parse_embed(&body.bytes()?)?;
        let embeddings = embed(&router, &caller, &parsed.model, &parsed.request).await?;
        let total_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok(json_utf8(&ollama::render_embed(
            &parsed.model,
            &embeddings,
            total_ns,
        )))
    };
    respond(Dialect::Ollama, answer.await)
}

pub async fn ollama_embeddings_legacy(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    let answer = async {
        let parsed = ollama::parse_legacy(&body.bytes()?)?;
        let embeddings = embed(&router, &caller, &parsed.model, &parsed.request).await?;
        Ok(json_utf8(&ollama::render_legacy(&embeddings)))
    };
    respond(Dialect::Ollama, answer.await)
}
