//! `POST /v1/chat/completions` and `POST /api/chat`: the same pipeline, two dialects.

use actix_web::{web, HttpResponse};

use std::pin::pin;

use futures::future::{select, Either};
use futures::StreamExt;

use crate::backend::Backend;
use crate::chat::{peek_first, ChatRequest, Completion, Event, EventStream};
use crate::dialect::ollama::{self, NdjsonRenderer, Shape, Timing};
use crate::dialect::openai::{self, SseRenderer};
use crate::dialect::{render_stream, Dialect};
use crate::error::GatewayError;
use crate::hangup::client_gone;
use crate::router::Router;

use super::{respond, Caller, RequestBody};

/// Routes the request and starts the backend's answer, holding the response until the
/// first event so that an early upstream failure keeps its real status. For an alias,
/// each target is tried in turn while the failure is one another server might not have.
/// The tokens the answer reports are counted for the caller as they pass.
async fn start_chat(
    router: &Router,
    caller: &Caller,
    request: ChatRequest,
) -> Result<EventStream, GatewayError> {
    let asked = request.model.clone();
    let routes = router.resolve(&asked)?;
    let mut request = Some(request);
    for (attempt, route) in routes.iter().enumerate() {
        let last = attempt + 1 == routes.len();
        // Only a request that may be retried elsewhere is copied.
        let mut this_try = match (last, request.as_ref()) {
            (false, Some(request)) => request.clone(),
            _ => match request.take() {
                Some(request) => request,
                None => break,
            },
        };
        this_try.model = route.model.to_owned();
        match start_one(route.name, route.backend, caller, this_try).await {
            Ok(events) => return Ok(events),
            Err(error) if !last && error.worth_another_target() => {
                log::warn!(
                    "{asked}: target {}/{} failed ({error}); trying the next",
                    route.name,
                    route.model
                );
            }
            Err(error) => return Err(error),
        }
    }
    Err(GatewayError::ModelNotFound(asked))
}

/// Runs `work` unless the client leaves first; then `work`, and the upstream request it
/// holds, is dropped.
async fn until_client_gone<T>(
    caller: &Caller,
    work: impl std::future::Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    match select(pin!(work), pin!(client_gone(caller.socket))).await {
        Either::Left((outcome, _)) => outcome,
        Either::Right(_) => {
            log::info!("client left before its answer was complete; upstream request cancelled");
            Err(GatewayError::ClientGone)
        }
    }
}

/// Starts one backend's answer, giving up when the client leaves first.
async fn start_one(
    name: &str,
    backend: &Backend,
    caller: &Caller,
    request: ChatRequest,
) -> Result<EventStream, GatewayError> {
    if let Some(stopwatch) = &caller.stopwatch {
        stopwatch.upstream_called();
    }
    let first = async {
        let events = backend.chat(request).await;
        if let Some(stopwatch) = &caller.stopwatch {
            stopwatch.upstream_answered();
        }
        peek_first(events?).await
    };
    let events = until_client_gone(caller, first).await?;
    let (metrics, user, name) = (caller.metrics.clone(), caller.user.clone(), name.to_owned());
    Ok(Box::pin(events.inspect(move |item| {
        if let Ok(Event::Usage(usage)) = item {
            metrics.tokens(&user, &name, usage.prompt_tokens, usage.completion_tokens);
        }
    })))
}

pub async fn openai_chat(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    let answer = async {
        let parsed = openai::parse_chat(&body.bytes()?)?;
        let events = start_chat(&router, &caller, parsed.request).await?;
        if parsed.stream {
            let renderer = SseRenderer::new(parsed.model, parsed.include_usage);
            Ok(HttpResponse::Ok()
                .content_type("text/event-stream")
                .insert_header(("cache-control", "no-cache"))
                .insert_header(("x-accel-buffering", "no"))
                .streaming(render_stream(events, renderer)))
        } else {
            let completion = until_client_gone(&caller, Completion::collect(events)).await?;
            Ok(HttpResponse::Ok().json(openai::render_completion(&parsed.model, &completion)))
        }
    };
    respond(Dialect::OpenAi, answer.await)
}

pub async fn ollama_chat(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    respond(
        Dialect::Ollama,
        ollama_answer(Shape::Chat, body, &router, &caller).await,
    )
}

pub async fn ollama_generate(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    respond(
        Dialect::Ollama,
        ollama_answer(Shape::Generate, body, &router, &caller).await,
    )
}

/// `/api/chat` and `/api/generate`: one pipeline, two answer shapes.
async fn ollama_answer(
    shape: Shape,
    body: RequestBody,
    router: &Router,
    caller: &Caller,
) -> Result<HttpResponse, GatewayError> {
    let mut timing = Timing::start();
    let body = body.bytes()?;
    let parsed = match shape {
        Shape::Chat => ollama::parse_chat(&body)?,
        Shape::Generate => ollama::parse_generate(&body)?,
    };
    if parsed.request.messages.is_empty() {
        // Ollama only loads the model; make sure the name routes, then say loaded.
        router.resolve(&parsed.model)?;
        let keep_alive = parsed.request.keep_alive.as_ref();
        return Ok(json_utf8(&ollama::load_response(
            shape,
            &parsed.model,
            keep_alive,
        )));
    }
    let mut events = start_chat(router, caller, parsed.request).await?;
    if parsed.stream {
        let renderer = NdjsonRenderer::new(shape, parsed.model, timing);
        return Ok(HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .streaming(render_stream(events, renderer)));
    }
    let collecting = async {
        let mut completion = Completion::default();
        while let Some(event) = events.next().await {
            let event = event?;
            if matches!(
                event,
                Event::Text(_) | Event::Thinking(_) | Event::ToolCall(_)
            ) {
                timing.saw_token();
            }
            completion.apply(event);
        }
        Ok(completion)
    };
    let completion = until_client_gone(caller, collecting).await?;
    let value = ollama::render_completion(shape, &parsed.model, &completion, &timing)?;
    Ok(json_utf8(&value))
}

/// One Ollama JSON answer, written with the line separators escaped like the streams.
pub fn json_utf8(value: &serde_json::Value) -> HttpResponse {
    let mut body = bytes::BytesMut::new();
    crate::framing::write_ollama_json(&mut body, value);
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .body(body.freeze())
}
