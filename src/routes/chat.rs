//! `POST /v1/chat/completions` and `POST /api/chat`: the same pipeline, two dialects.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::chat::{peek_first, ChatRequest, Completion, EventStream};
use crate::dialect::ollama::{self, NdjsonRenderer, Timing};
use crate::dialect::openai::{self, SseRenderer};
use crate::dialect::{render_stream, Dialect};
use crate::error::GatewayError;
use crate::router::Router;
use crate::server::BodyLimit;

use super::read_body;

/// Routes the request and starts the backend's answer, holding the response until the
/// first event so that an early upstream failure keeps its real status.
async fn start_chat(
    router: &Router,
    mut request: ChatRequest,
) -> Result<EventStream, GatewayError> {
    let (backend, upstream_model) = router.route(&request.model)?;
    request.model = upstream_model.to_owned();
    peek_first(backend.chat(request).await?).await
}

pub async fn openai_chat(
    http: HttpRequest,
    payload: web::Payload,
    router: web::Data<Router>,
    limit: web::Data<BodyLimit>,
) -> HttpResponse {
    let answer = async {
        let body = read_body(&http, payload, **limit).await?;
        let parsed = openai::parse_chat(&body)?;
        let events = start_chat(&router, parsed.request).await?;
        if parsed.stream {
            let renderer = SseRenderer::new(parsed.model, parsed.include_usage);
            Ok(HttpResponse::Ok()
                .content_type("text/event-stream")
                .insert_header(("cache-control", "no-cache"))
                .insert_header(("x-accel-buffering", "no"))
                .streaming(render_stream(events, renderer)))
        } else {
            let completion = Completion::collect(events).await?;
            Ok(HttpResponse::Ok().json(openai::render_completion(&parsed.model, &completion)))
        }
    };
    answer
        .await
        .unwrap_or_else(|error: GatewayError| error.response(Dialect::OpenAi))
}

pub async fn ollama_chat(
    http: HttpRequest,
    payload: web::Payload,
    router: web::Data<Router>,
    limit: web::Data<BodyLimit>,
) -> HttpResponse {
    let timing = Timing::start();
    let answer = async {
        let body = read_body(&http, payload, **limit).await?;
        let parsed = ollama::parse_chat(&body)?;
        if parsed.request.messages.is_empty() {
            // Ollama only loads the model; make sure the name routes, then say loaded.
            router.route(&parsed.model)?;
            return Ok(json_utf8(&ollama::load_response(&parsed.model)));
        }
        let events = start_chat(&router, parsed.request).await?;
        if parsed.stream {
            let renderer = NdjsonRenderer::new(parsed.model, timing);
            Ok(HttpResponse::Ok()
                .content_type("application/x-ndjson")
                .streaming(render_stream(events, renderer)))
        } else {
            let completion = Completion::collect(events).await?;
            let mut timing = timing;
            timing.first_token = None;
            Ok(json_utf8(&ollama::render_completion(
                &parsed.model,
                &completion,
                &timing,
            )?))
        }
    };
    answer
        .await
        .unwrap_or_else(|error: GatewayError| error.response(Dialect::Ollama))
}

/// One Ollama JSON answer, written with the line separators escaped like the streams.
fn json_utf8(value: &serde_json::Value) -> HttpResponse {
    let mut body = bytes::BytesMut::new();
    crate::framing::write_ollama_json(&mut body, value);
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .body(body.freeze())
}
