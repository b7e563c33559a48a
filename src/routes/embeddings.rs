//! `POST /v1/embeddings`, `POST /api/embed` and the legacy `POST /api/embeddings`.
//! Each parses and renders in its dialect; routing, fallback, hang-up and timing are the
//! pipeline's (`pipeline::embed`).

use std::time::Instant;

use actix_web::{web, HttpResponse};

use crate::dialect::ollama::{self as ollama_dialect, embeddings as ollama, json_utf8, Ollama};
use crate::dialect::openai::{self as openai_dialect, embeddings as openai, OpenAi};
use crate::dialect::Dialect;
use crate::pipeline::{embed, Caller, RequestBody};
use crate::router::Router;

pub async fn openai_embeddings(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    caller.speaks(OpenAi::NAME);
    let answer = async {
        let parsed = openai::parse(&body.bytes()?)?;
        let embeddings = embed(&router, &caller, &parsed.model, parsed.request).await?;
        Ok(HttpResponse::Ok().json(openai::render(&parsed.model, &embeddings, parsed.base64)))
    };
    let answer = answer
        .await
        .unwrap_or_else(|error| openai_dialect::render_error(&error));
    caller.answered(answer.status());
    answer
}

pub async fn ollama_embed(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    caller.speaks(Ollama::NAME);
    let started = Instant::now();
    let answer = async {
        let parsed = ollama::parse_embed(&body.bytes()?)?;
        let embeddings = embed(&router, &caller, &parsed.model, parsed.request).await?;
        let total_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok(json_utf8(&ollama::render_embed(
            &parsed.model,
            &embeddings,
            total_ns,
        )))
    };
    let answer = answer
        .await
        .unwrap_or_else(|error| ollama_dialect::render_error(&error));
    caller.answered(answer.status());
    answer
}

pub async fn ollama_embeddings_legacy(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    caller.speaks(Ollama::NAME);
    let answer = async {
        let parsed = ollama::parse_legacy(&body.bytes()?)?;
        let embeddings = embed(&router, &caller, &parsed.model, parsed.request).await?;
        Ok(json_utf8(&ollama::render_legacy(&embeddings)))
    };
    let answer = answer
        .await
        .unwrap_or_else(|error| ollama_dialect::render_error(&error));
    caller.answered(answer.status());
    answer
}
