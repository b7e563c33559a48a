//! The one path every generating request takes, whatever dialect it came in:
//! `serve_chat::<D>` reads the body, lets the dialect parse it, routes the model (an
//! alias's targets in turn while the failure is one another server might not have),
//! calls the backend, gives up when the client leaves, notes the `Server-Timing` marks
//! and the tokens spent, and lets the dialect render the answer or the error.
//! Embeddings take the same fallback, hang-up and timing. What each request cost and
//! how it ended is gathered on its [`Caller`] and recorded once, when it ends
//! (`crate::usage`).
//!
//! Dialects know nothing of backends and backends nothing of dialects; this module is
//! where the two meet, through the canonical types of `chat.rs` and `embed.rs`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse, Route};
use bytes::{Bytes, BytesMut};
use futures::future::{select, Either};
use futures::{FutureExt, Stream, StreamExt};

use crate::auth::{Key, User};
use crate::backend::Backend;
use crate::chat::{peek_first, ChatRequest, Completion, Event, EventStream};
use crate::dialect::{Dialect, ParsedChat, StreamRenderer};
use crate::embed::{EmbedRequest, Embeddings};
use crate::error::GatewayError;
use crate::hangup::{client_gone, ClientSocket};
use crate::keys::KeyPolicy;
use crate::metrics::{CountedAtEnd, Metrics};
use crate::queue::{Admission, KeyCap, Slot};
use crate::router::Router;
use crate::timing::{self, Stopwatch};
use crate::usage::{Draft, Finished, Recorder};

mod admission;
mod output_cap;
use admission::{queued_stream, slot, First, Waiting};

/// Largest accepted request body, per the configuration.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Who is asking, for counting what they spend.
pub struct Caller {
    pub user: Arc<str>,
    pub metrics: web::Data<Metrics>,
    /// The client's socket, to notice it hanging up before the answer starts.
    pub socket: Option<ClientSocket>,
    /// Where the upstream call's start and answer are noted for `Server-Timing`.
    pub stopwatch: Option<Stopwatch>,
    /// The request, for a stream to count and log itself when it ends.
    request: HttpRequest,
    /// The key it came with, for its token budgets and the ledger's key id.
    key: Option<Arc<KeyPolicy>>,
    /// Where the request's outcome goes when it ends.
    recorder: Option<web::Data<Recorder>>,
    arrived: Instant,
    /// What the request has gathered so far; recorded when the caller is dropped (a
    /// whole answer, an error, a client that left), unless a stream took it along.
    draft: RefCell<Draft>,
    /// The answer's status, once rendered.
    status: Cell<Option<StatusCode>>,
    /// A stream's ledger records the outcome instead.
    handed_off: Cell<bool>,
    /// Backends' slots, where a backend or this caller's key has `max_concurrent`.
    admission: Option<web::Data<Admission>>,
    /// The key's own `max_concurrent`.
    key_cap: Option<KeyCap>,
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
        let key = request
            .extensions()
            .get::<Key>()
            .map(|Key(policy)| policy.clone());
        let key_cap = key.as_ref().and_then(|policy| {
            Some(KeyCap {
                key_id: policy.key_id.clone(),
                max: policy.max_concurrent?,
            })
        });
        let admission = request
            .app_data::<web::Data<Admission>>()
            .filter(|admission| key_cap.is_some() || admission.limits_backends())
            .cloned();
        let arrived = stopwatch
            .as_ref()
            .map_or_else(Instant::now, Stopwatch::arrived);
        std::future::ready(Ok(Caller {
            user,
            metrics,
            socket,
            stopwatch,
            request: request.clone(),
            key,
            recorder: request.app_data::<web::Data<Recorder>>().cloned(),
            arrived,
            draft: RefCell::new(Draft::default()),
            status: Cell::new(None),
            handed_off: Cell::new(false),
            admission,
            key_cap,
        }))
    }
}

impl Caller {
    /// This caller, for a stream that waits for a slot after the handler has returned:
    /// what was gathered moves along, and this one records nothing.
    fn hand_over(&self) -> Caller {
        self.handed_off.set(true);
        Caller {
            user: self.user.clone(),
            metrics: self.metrics.clone(),
            socket: self.socket,
            stopwatch: self.stopwatch.clone(),
            request: self.request.clone(),
            key: self.key.clone(),
            recorder: self.recorder.clone(),
            arrived: self.arrived,
            draft: RefCell::new(std::mem::take(&mut *self.draft.borrow_mut())),
            status: Cell::new(None),
            handed_off: Cell::new(false),
            admission: self.admission.clone(),
            key_cap: self.key_cap.clone(),
        }
    }

    /// Names the dialect the request came in: from here on it is a request that is
    /// recorded when it ends.
    pub fn speaks(&self, dialect: &'static str) {
        self.draft.borrow_mut().dialect = dialect;
    }

    /// Notes the status the answer was rendered with.
    pub fn answered(&self, status: StatusCode) {
        self.status.set(Some(status));
    }

    /// Notes the model as the client named it.
    fn asked(&self, model: &str) {
        self.draft.borrow_mut().model = model.to_owned();
    }

    /// Notes the target about to be tried.
    fn trying(&self, name: &str, model: &str) {
        if let Some(recorder) = &self.recorder {
            self.draft
                .borrow_mut()
                .target(recorder.backend(name), model);
        }
    }

    /// Counts a failed upstream call.
    fn upstream_failed(&self, error: &GatewayError) {
        if let Some(recorder) = &self.recorder {
            recorder.upstream_failed(error);
        }
    }

    /// Whether this caller's key may use `model` (403 when not).
    pub fn may_use(&self, model: &str) -> Result<(), GatewayError> {
        crate::auth::may_use(&self.request, model)
    }

    fn upstream_called(&self) {
        if let Some(stopwatch) = &self.stopwatch {
            stopwatch.upstream_called();
        }
    }

    fn upstream_answered(&self) {
        if let Some(stopwatch) = &self.stopwatch {
            stopwatch.upstream_answered();
        }
    }

    /// Who asked and what was gathered, to record how it ended.
    fn finished(&self, draft: Draft, status: StatusCode) -> Finished {
        Finished {
            draft,
            user: self.user.clone(),
            key: self.key.clone(),
            client_left: status == GatewayError::ClientGone.status(),
            status,
            arrived: self.arrived,
        }
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        let draft = std::mem::take(self.draft.get_mut());
        if self.handed_off.get() || draft.dialect.is_empty() {
            return;
        }
        let Some(recorder) = &self.recorder else {
            return;
        };
        // Dropped unanswered: actix dropped the handler of a client that went away.
        let status = self
            .status
            .get()
            .unwrap_or_else(|| GatewayError::ClientGone.status());
        recorder.finish(self.finished(draft, status));
    }
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

/// The route that serves `dialect`'s chat requests: `POST` into [`serve_chat`].
pub fn chat_route<D: Dialect + Copy>(dialect: D) -> Route {
    web::post().to(
        move |body: RequestBody, router: web::Data<Router>, caller: Caller| {
            serve_chat(dialect, body, router, caller)
        },
    )
}

/// Serves one chat request of any dialect, from body to answer; failures are answered
/// in the dialect, with their real status.
pub async fn serve_chat<D: Dialect + Clone>(
    dialect: D,
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    caller.speaks(D::NAME);
    let answer = answer_chat(&dialect, body, &router, &caller)
        .await
        .unwrap_or_else(|error| D::render_error(&error));
    caller.answered(answer.status());
    answer
}

async fn answer_chat<D: Dialect + Clone>(
    dialect: &D,
    body: RequestBody,
    router: &web::Data<Router>,
    caller: &Caller,
) -> Result<HttpResponse, GatewayError> {
    // The request borrows its texts from the body's bytes, so they are held here, in
    // scope until the last backend attempt has encoded the request; the answer itself
    // (a stream or a completion) owns what it holds and needs neither.
    let body = body.bytes()?;
    let parsed = dialect.parse_chat(&body)?;
    caller.asked(&parsed.model);
    caller.may_use(&parsed.model)?;
    if let Some(answer) = dialect.answer_locally(&parsed) {
        // Only a name that routes may be "loaded".
        router.resolve(&parsed.model)?;
        return Ok(answer);
    }
    let ParsedChat {
        model,
        stream,
        request,
        reply,
    } = parsed;
    // Boxed once, then only borrowed: every async frame below holds a pointer, not
    // half a kilobyte of request.
    let request = Box::new(request);
    if stream {
        let reserved = match admission::first_slot::<D>(router, caller, &model).await? {
            First::Go(slot) => slot,
            First::Queued(ticket, place) => {
                let renderer = dialect.stream_renderer(model, reply);
                let waiting = Waiting {
                    dialect: dialect.clone(),
                    body: body.clone(),
                    router: router.clone(),
                    caller: caller.hand_over(),
                    ticket,
                };
                return Ok(stream_answer::<D>(queued_stream(waiting, place, renderer)));
            }
        };
        let started = start_stream(router, caller, &model, &request, reserved);
        let events = crate::backend::pieces::from_source(&body, started).await?;
        let renderer = dialect.stream_renderer(model, reply);
        let ledger = StreamLedger::new(caller);
        Ok(stream_answer::<D>(render_stream(events, renderer, ledger)))
    } else {
        let completion = complete(router, caller, &model, &request);
        let completion = crate::backend::pieces::from_source(&body, completion).await?;
        dialect.render_completion(&model, reply, &completion)
    }
}

/// A streamed answer's response: its dialect's headers, counted when it ends.
fn stream_answer<D: Dialect>(
    body: impl Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
) -> HttpResponse {
    let mut answer = HttpResponse::Ok();
    answer.content_type(D::STREAM_CONTENT_TYPE);
    for &header in D::STREAM_HEADERS {
        answer.insert_header(header);
    }
    let mut answer = answer.streaming(body);
    answer.extensions_mut().insert(CountedAtEnd);
    answer
}

/// One target of a routed model name.
pub struct Target<'r> {
    /// The backend's configured name, for metrics and logs.
    pub name: &'r str,
    pub backend: &'r Backend,
    /// The model as the upstream knows it.
    pub model: &'r str,
    /// The backend's `max_output_tokens` (see `output_cap`).
    pub max_output_tokens: Option<u64>,
    /// Whether no target follows this one.
    pub last: bool,
}

/// Routes `asked` and hands each target to `attempt` in turn: an alias's targets while
/// the failure is one another server might not have, a plain name's one target.
async fn with_fallback<'r, T, F, Fut>(
    router: &'r Router,
    caller: &Caller,
    asked: &'r str,
    mut attempt: F,
) -> Result<T, GatewayError>
where
    F: FnMut(Target<'r>) -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    let routes = router.resolve(asked)?;
    for (number, route) in routes.iter().enumerate() {
        let last = number + 1 == routes.len();
        let target = Target {
            name: route.name,
            backend: route.backend,
            model: route.model,
            max_output_tokens: route.max_output_tokens,
            last,
        };
        caller.trying(route.name, route.model);
        let outcome = attempt(target).await;
        if let Err(error) = &outcome {
            caller.upstream_failed(error);
        }
        match outcome {
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
/// an early upstream failure keeps its real status. Tokens are counted as the usage
/// event passes.
async fn start_stream(
    router: &Router,
    caller: &Caller,
    asked: &str,
    request: &ChatRequest<'_>,
    mut reserved: Option<Slot>,
) -> Result<EventStream, GatewayError> {
    with_fallback(router, caller, asked, |target| {
        // A slot already given for the first target's backend.
        let reserved = reserved.take();
        async move {
            let slot = match reserved {
                Some(slot) => Some(slot),
                None => slot(caller, target.name).await?,
            };
            caller.upstream_called();
            let first = async {
                // The one place a streamed chat meets a backend.
                let request = target.capped(request);
                let events = target.backend.chat(target.model, &request).await;
                caller.upstream_answered();
                let events = peek_first(events?).await;
                caller.draft.borrow_mut().first_event = Some(Instant::now());
                events
            };
            let events = until_client_gone(caller, first).await?;
            Ok(match slot {
                // The slot goes with the stream, given back when it ends or is dropped.
                Some(slot) => Box::pin(events.inspect(move |_| {
                    let _slot = &slot;
                })),
                None => events,
            })
        }
    })
    .await
}

/// The whole answer, for a client that did not ask to stream.
async fn complete(
    router: &Router,
    caller: &Caller,
    asked: &str,
    request: &ChatRequest<'_>,
) -> Result<Completion, GatewayError> {
    with_fallback(router, caller, asked, |target| {
        async move {
            let _slot = slot(caller, target.name).await?;
            caller.upstream_called();
            // The one place a whole chat answer is asked of a backend.
            let request = target.capped(request);
            let completion =
                until_client_gone(caller, target.backend.complete(target.model, &request)).await;
            caller.upstream_answered();
            let completion = completion?;
            if let Some(usage) = completion.usage {
                caller
                    .draft
                    .borrow_mut()
                    .usage(usage.prompt_tokens, usage.completion_tokens);
            }
            Ok(completion)
        }
    })
    .await
}

/// Routes and embeds, trying an alias's targets in turn; no inputs means the client
/// only wanted the model loaded, which needs no upstream call.
pub async fn embed(
    router: &Router,
    caller: &Caller,
    asked: &str,
    request: EmbedRequest,
) -> Result<Embeddings, GatewayError> {
    caller.asked(asked);
    caller.may_use(asked)?;
    if request.inputs.is_empty() {
        router.resolve(asked)?;
        return Ok(Embeddings::default());
    }
    let expected = request.inputs.len();
    let request = &request;
    with_fallback(router, caller, asked, |target| {
        async move {
            let _slot = slot(caller, target.name).await?;
            caller.upstream_called();
            // The one place an embedding request meets a backend.
            let embeddings =
                until_client_gone(caller, target.backend.embed(target.model, request)).await;
            caller.upstream_answered();
            let embeddings = embeddings?;
            caller.draft.borrow_mut().usage(embeddings.prompt_tokens, 0);
            if embeddings.vectors.len() != expected {
                return Err(GatewayError::UpstreamProtocol {
                    backend: target.name.to_owned(),
                    detail: format!(
                        "asked for {expected} vectors, got {}",
                        embeddings.vectors.len()
                    ),
                });
            }
            Ok(embeddings)
        }
    })
    .await
}

/// Runs `work` unless the client leaves first; then `work`, and the upstream request it
/// holds, is dropped.
///
/// `work` (a backend call, awc's future included) is kilobytes. It is boxed here, before
/// any async state is built, so that the handler frames above it stay small instead of
/// each carrying it and copying it as they are created.
fn until_client_gone<'c, T>(
    caller: &'c Caller,
    work: impl Future<Output = Result<T, GatewayError>> + 'c,
) -> impl Future<Output = Result<T, GatewayError>> + 'c {
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

/// Counts, logs and records a streamed answer when it ends, with the outcome it really
/// had: 200 for a clean end, the error's status for one that failed half way, 499 for a
/// client that left (the stream is dropped before its end), with the tokens used so far.
struct StreamLedger {
    metrics: web::Data<Metrics>,
    request: HttpRequest,
    stopwatch: Option<Stopwatch>,
    closed: bool,
    /// The request's draft, taken over from its caller, and who records it.
    draft: Draft,
    recorder: Option<(web::Data<Recorder>, Finished)>,
}

impl StreamLedger {
    fn new(caller: &Caller) -> StreamLedger {
        caller.handed_off.set(true);
        let draft = std::mem::take(&mut *caller.draft.borrow_mut());
        StreamLedger {
            metrics: caller.metrics.clone(),
            request: caller.request.clone(),
            stopwatch: caller.stopwatch.clone(),
            closed: false,
            draft,
            recorder: caller
                .recorder
                .clone()
                .map(|recorder| (recorder, caller.finished(Draft::default(), StatusCode::OK))),
        }
    }

    /// Notes what an event tells of the stream's usage.
    fn saw(&mut self, event: &Event) {
        self.draft.saw(event);
    }

    /// Counts the upstream failure that ended the stream.
    fn upstream_failed(&self, error: &GatewayError) {
        if let Some((recorder, _)) = &self.recorder {
            recorder.upstream_failed(error);
        }
    }

    /// Records the stream's outcome, once.
    fn close(&mut self, status: StatusCode) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        if let Some((recorder, mut finished)) = self.recorder.take() {
            finished.draft = std::mem::take(&mut self.draft);
            finished.client_left = status == GatewayError::ClientGone.status();
            finished.status = status;
            recorder.finish(finished);
        }
        let route = self.request.match_pattern();
        self.metrics
            .request(route.as_deref().unwrap_or("unmatched"), status);
        if let Some(stopwatch) = &self.stopwatch {
            timing::log_outcome(
                self.request.method(),
                self.request.path(),
                status,
                stopwatch,
            );
        }
    }
}

impl Drop for StreamLedger {
    fn drop(&mut self) {
        // Dropped before its end: actix drops the body of a client that went away.
        self.close(GatewayError::ClientGone.status());
    }
}

/// The most rendered bytes held back to join with events that are already there.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Relays events as rendered bytes as they arrive, events that arrived together in one
/// write, and has the ledger record how the stream ended. When the client goes away,
/// actix drops this stream and with it the upstream request.
fn render_stream<R>(
    events: EventStream,
    mut renderer: R,
    mut ledger: StreamLedger,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>>
where
    R: StreamRenderer + 'static,
{
    async_stream::stream! {
        let mut events = events;
        let mut out = BytesMut::with_capacity(512);
        let mut next = events.next().await;
        loop {
            match next {
                Some(Ok(event)) => {
                    ledger.saw(&event);
                    renderer.event(event, &mut out);
                }
                Some(Err(error)) => {
                    log::warn!("stream ended by an upstream error: {error}");
                    renderer.error(&error, &mut out);
                    ledger.upstream_failed(&error);
                    ledger.close(error.status());
                    yield Ok(out.split().freeze());
                    return;
                }
                None => {
                    renderer.end(&mut out);
                    ledger.close(if renderer.failed() {
                        StatusCode::BAD_GATEWAY
                    } else {
                        StatusCode::OK
                    });
                    yield Ok(out.split().freeze());
                    return;
                }
            }
            // Events that have already arrived (several often come in one read) go out
            // as one chunk, up to a bound: nothing waits, and the client gets fewer,
            // fuller chunks.
            let ready = if out.len() < COALESCE_LIMIT {
                events.next().now_or_never()
            } else {
                None
            };
            next = match ready {
                Some(ready) => ready,
                None => {
                    if !out.is_empty() {
                        yield Ok(out.split().freeze());
                    }
                    match R::IDLE_AFTER {
                        None => events.next().await,
                        // A dialect that keeps silent streams open is asked for its
                        // keep-alive each time the upstream has said nothing that long.
                        Some(after) => loop {
                            match tokio::time::timeout(after, events.next()).await {
                                Ok(next) => break next,
                                Err(_) => {
                                    renderer.idle(&mut out);
                                    yield Ok(out.split().freeze());
                                }
                            }
                        },
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Writes each event's text, and `.` when asked to fill silence.
    struct Dots;

    impl StreamRenderer for Dots {
        const IDLE_AFTER: Option<Duration> = Some(Duration::from_millis(40));
        fn event(&mut self, event: Event, out: &mut BytesMut) {
            if let Event::Text(text) = event {
                out.extend_from_slice(text.as_bytes());
            }
        }
        fn end(&mut self, out: &mut BytesMut) {
            out.extend_from_slice(b"|");
        }
        fn error(&mut self, _: &GatewayError, out: &mut BytesMut) {
            out.extend_from_slice(b"!");
        }
        fn idle(&mut self, out: &mut BytesMut) {
            out.extend_from_slice(b".");
        }
    }

    #[actix_web::test]
    async fn a_silent_upstream_gets_the_dialects_keep_alive_in_between() {
        let events: EventStream = Box::pin(async_stream::stream! {
            yield Ok(Event::Text("a".into()));
            tokio::time::sleep(Duration::from_millis(150)).await;
            yield Ok(Event::Text("b".into()));
        });
        let ledger = StreamLedger {
            metrics: web::Data::new(Metrics::new()),
            request: actix_web::test::TestRequest::default().to_http_request(),
            stopwatch: None,
            closed: false,
            draft: Draft::default(),
            recorder: None,
        };
        let chunks: Vec<Bytes> = render_stream(events, Dots, ledger)
            .map(|chunk| chunk.unwrap())
            .collect()
            .await;
        let written: Vec<u8> = chunks.concat();
        let text = String::from_utf8(written).unwrap();
        // 150 ms of silence holds three 40 ms waits: at least two dots, the text whole.
        assert!(text.starts_with("a.."), "{text}");
        assert!(text.ends_with("b|"), "{text}");
        assert_eq!(text.replace('.', ""), "ab|");
    }
}
