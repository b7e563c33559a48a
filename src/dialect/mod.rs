//! What the gateway speaks to clients: a file per API. A dialect parses its wire JSON
//! into the canonical request and renders canonical events back as its own stream
//! framing or one JSON body; it knows nothing of backends.

pub mod ollama;
pub mod openai;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt};

use crate::chat::{Event, EventStream};
use crate::error::GatewayError;

/// The API a client speaks, which decides how answers and errors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
}

impl Dialect {
    /// The dialect of a route: `/v1/...` is OpenAI's, everything else Ollama's.
    pub fn of_path(path: &str) -> Dialect {
        if path == "/v1" || path.starts_with("/v1/") {
            Dialect::OpenAi
        } else {
            Dialect::Ollama
        }
    }
}

/// Turns a stream of events into a dialect's stream framing.
pub trait StreamRenderer {
    /// Writes what one event becomes (possibly nothing yet).
    fn event(&mut self, event: Event, out: &mut BytesMut);
    /// Writes the stream's ending after the backend finished cleanly.
    fn end(&mut self, out: &mut BytesMut);
    /// Writes the one error event that ends a failed stream.
    fn error(&mut self, error: &GatewayError, out: &mut BytesMut);
}

/// The most rendered bytes held back to join with events that are already there.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Relays events as rendered bytes as they arrive, events that arrived together in one
/// write. When the client goes away, actix drops this stream and with it the upstream
/// request.
pub fn render_stream<R>(
    events: EventStream,
    mut renderer: R,
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
                Some(Ok(event)) => renderer.event(event, &mut out),
                Some(Err(error)) => {
                    log::warn!("stream ended by an upstream error: {error}");
                    renderer.error(&error, &mut out);
                    yield Ok(out.split().freeze());
                    return;
                }
                None => {
                    renderer.end(&mut out);
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
                    events.next().await
                }
            };
        }
    }
}

/// Parses a request body, answering a 400 that names the problem (serde's message
/// says which field and where).
pub fn parse_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request(format!("invalid request body: {e}")))
}

/// Reads `null` as the default value: clients send `"images": null` or
/// `"tool_calls": null` for "none", which Ollama's and OpenAI's servers accept.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
