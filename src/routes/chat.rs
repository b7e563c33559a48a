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

/// Routes the model the client asked for and hands each target to `attempt`; for an
/// alias, each target in turn while the failure is one another server might not have.
/// The request is only borrowed, so every target sees the same one, uncopied.
async fn with_fallback<'r, T, F, Fut>(
    router: &'r Router,
    asked: &'r str,
    mut attempt: F,
) -> Result<T, GatewayError>
where
    F: FnMut(&'r str, &'r Backend, &'r str) -> Fut,
    Fut: std::future::Future<Output = Result<T, GatewayError>>,
{
    let routes = router.resolve(asked)?;
    for (number, route) in routes.iter().enumerate() {
        let last = number + 1 == routes.len();
        match attempt(route.name, route.backend, route.model).await {
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

/// Starts the answer as a stream, holding the response until the first event so that
/// an early upstream failure keeps its real status.
async fn start_chat(
    router: &Router,
    caller: &Caller,
    asked: &str,
    request: &ChatRequest,
) -> Result<EventStream, GatewayError> {
    with_fallback(router, asked, |name, backend, model| {
        start_one(name, backend, caller, model, request)
    })
    .await
}

/// The whole answer, for a client that did not ask to stream.
async fn complete(
    router: &Router,
    caller: &Caller,
    asked: &str,
    request: &ChatRequest,
) -> Result<Completion, GatewayError> {
    with_fallback(router, asked, |name, backend, model| async move {
        if let Some(stopwatch) = &caller.stopwatch {
            stopwatch.upstream_called();
        }
        let completion = until_client_gone(caller, backend.complete(model, request)).await;
        if let Some(stopwatch) = &caller.stopwatch {
            stopwatch.upstream_answered();
        }
        let completion = completion?;
        if let Some(usage) = completion.usage {
            caller.metrics.tokens(
                &caller.user,
                name,
                usage.prompt_tokens,
                usage.completion_tokens,
            );
        }
        Ok(completion)
    })
    .await
}

/// Runs `work` unless the client leaves first; then `work`, and the upstream request it
/// holds, is dropped.
///
/// `work` (a backend call, awc's future included) is kilobytes. It is boxed here, before
/// any async state is built, so that the handler frames above it stay small instead of
/// each carrying it and copying it as they are created.
pub(super) fn until_client_gone<'c, T>(
    caller: &'c Caller,
    work: impl std::future::Future<Output = Result<T, GatewayError>> + 'c,
) -> impl std::future::Future<Output = Result<T, GatewayError>> + 'c {
    let work = Box::pin(work);
    async move {
        match select(work, pin!(client_gone(caller.socket))).await {
            Either::Left((outcome, _)) => outcome,
            Either::Right(_) => {
                log::info!(
                    "client left before its answer was complete; upstream request cancelled"
                );
                Err(GatewayError::ClientGone)
            }
        }
    }
}

/// Starts one backend's answer, giving up when the client leaves first.
async fn start_one(
    name: &str,
    backend: &Backend,
    caller: &Caller,
    model: &str,
    request: &ChatRequest,
) -> Result<EventStream, GatewayError> {
    if let Some(stopwatch) = &caller.stopwatch {
        stopwatch.upstream_called();
    }
    let first = async {
        let events = backend.chat(model, request).await;
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
        let openai::ParsedChat {
            model,
            stream,
            include_usage,
            request,
        } = openai::parse_chat(&body.bytes()?)?;
        if stream {
            let events = start_chat(&router, &caller, &model, &request).await?;
            let renderer = SseRenderer::new(model, include_usage);
            Ok(HttpResponse::Ok()
                .content_type("text/event-stream")
                .insert_header(("cache-control", "no-cache"))
                .insert_header(("x-accel-buffering", "no"))
                .streaming(render_stream(events, renderer)))
        } else {
            let completion = complete(&router, &caller, &model, &request).await?;
            Ok(HttpResponse::Ok().json(openai::render_completion(&model, &completion)))
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
    let timing = Timing::start();
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
    let ollama::ParsedChat {
        model,
        stream,
        request,
    } = parsed;
    if stream {
        let events = start_chat(router, caller, &model, &request).await?;
        let renderer = NdjsonRenderer::new(shape, model, timing);
        return Ok(HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .streaming(render_stream(events, renderer)));
    }
    let completion = complete(router, caller, &model, &request).await?;
    let value = ollama::render_completion(shape, &model, &completion, &timing)?;
    Ok(json_utf8(&value))
}

/// One Ollama JSON answer, written with the line separators escaped like the streams.
pub fn json_utf8<T: serde::Serialize>(value: &T) -> HttpResponse {
    let mut body = bytes::BytesMut::new();
    crate::framing::write_ollama_json(&mut body, value);
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .body(body.freeze())
}
