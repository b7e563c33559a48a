//! What the gateway speaks to clients: a folder per API behind one trait, [`Dialect`].
//! A dialect parses its wire JSON into the canonical request and renders canonical
//! events, whole answers and errors back in its own framing; it knows nothing of
//! backends, and the pipeline that joins the two (`crate::pipeline`) knows nothing of
//! wire formats.

pub mod anthropic;
pub mod ollama;
pub mod openai;
pub mod responses;

use actix_web::{HttpResponse, HttpResponseBuilder};
use bytes::BytesMut;

use std::marker::PhantomData;

use crate::chat::{ChatRequest, Completion, Event, Message};
use crate::error::GatewayError;

/// A parsed chat request: the canonical request plus what only the client side needs.
#[derive(Debug)]
pub struct ParsedChat<'a, R> {
    /// The model as the client named it (with any backend prefix or alias): what is
    /// routed, and what the answer names.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Borrows from the request body, which must outlive it.
    pub request: ChatRequest<'a>,
    /// What rendering the answer needs beyond the events (options, a clock).
    pub reply: R,
}

/// One API the gateway speaks to clients. The pipeline (`serve_chat`) does the rest
/// (routing, fallback, hang-up, timing, metrics), the same for every dialect; a dialect
/// only reads its wire format and writes it back.
/// The headers of every SSE stream: proxies in front (nginx) would otherwise hold
/// tokens back to fill their buffers.
pub const SSE_STREAM_HEADERS: &[(&str, &str)] =
    &[("cache-control", "no-cache"), ("x-accel-buffering", "no")];

pub trait Dialect: Sized + 'static {
    /// What a parsed request keeps for rendering its answer.
    type Reply;
    /// Writes a stream of events in this dialect's framing.
    type Renderer: StreamRenderer + 'static;

    /// The dialect's name in metrics and the usage ledger (`openai`, `ollama`,
    /// `anthropic`, `responses`).
    const NAME: &'static str;
    /// The `Content-Type` of a streamed answer.
    const STREAM_CONTENT_TYPE: &'static str;
    /// Further headers of a streamed answer (SSE wants proxies not to buffer it).
    const STREAM_HEADERS: &'static [(&'static str, &'static str)] = &[];

    /// Parses a chat request body; a 400 names the field at fault.
    fn parse_chat<'a>(&self, body: &'a [u8]) -> Result<ParsedChat<'a, Self::Reply>, GatewayError>;

    /// An answer that needs no upstream call, given once the model is known to route:
    /// Ollama's empty request, which only loads the model. `None` for a real request.
    fn answer_locally(&self, parsed: &ParsedChat<'_, Self::Reply>) -> Option<HttpResponse> {
        let _ = parsed;
        None
    }

    /// The renderer of a streamed answer naming `model` as the client asked for it.
    fn stream_renderer(&self, model: String, reply: Self::Reply) -> Self::Renderer;

    /// A whole answer as one response.
    fn render_completion(
        &self,
        model: &str,
        reply: Self::Reply,
        completion: &Completion,
    ) -> Result<HttpResponse, GatewayError>;

    /// Writes a waiting stream's place in line (1 is next) as something its clients'
    /// parsers skip, and says whether it could. A dialect without comments (NDJSON)
    /// writes nothing: its streams start only with the answer.
    fn queue_comment(position: usize, out: &mut BytesMut) -> bool {
        let _ = (position, out);
        false
    }

    /// An error answer, with its status: how this dialect's clients read failures. It
    /// takes no `self`, so a scope's key check and unknown routes can answer with it.
    fn render_error(error: &GatewayError) -> HttpResponse;
}

/// A waiting stream's place in line as an SSE comment line, which every SSE parser skips
/// (OpenAI's and Anthropic's SDKs both drop lines that start with `:`): the
/// `queue_comment` of each SSE dialect.
pub fn sse_queue_comment(position: usize, out: &mut BytesMut) -> bool {
    out.extend_from_slice(b": queue position ");
    out.extend_from_slice(itoa::Buffer::new().format(position).as_bytes());
    out.extend_from_slice(b"\n\n");
    true
}

/// Starts an error answer with the error's status and the headers it carries (an
/// upstream's `Retry-After`), for each dialect to add its body.
pub fn error_response(error: &GatewayError) -> HttpResponseBuilder {
    let mut response = HttpResponse::build(error.status());
    response.content_type("application/json");
    match error {
        GatewayError::UpstreamStatus {
            retry_after: Some(retry_after),
            ..
        } => {
            response.insert_header(("retry-after", retry_after.as_str()));
        }
        GatewayError::RateLimited {
            retry_after_secs, ..
        } => {
            response.insert_header(("retry-after", retry_after_secs.to_string()));
        }
        _ => {}
    }
    response
}

/// Turns a stream of events into a dialect's stream framing.
pub trait StreamRenderer {
    /// How long the stream may stay silent before [`StreamRenderer::idle`] is asked
    /// for something to send (`None`: the dialect sends nothing while waiting).
    const IDLE_AFTER: Option<std::time::Duration> = None;

    /// Writes what one event becomes (possibly nothing yet).
    fn event(&mut self, event: Event, out: &mut BytesMut);
    /// Writes the stream's ending after the backend finished cleanly.
    fn end(&mut self, out: &mut BytesMut);
    /// Writes the one error event that ends a failed stream.
    fn error(&mut self, error: &GatewayError, out: &mut BytesMut);
    /// Whether the renderer itself ended the stream with an error event (an answer it
    /// could not write in its dialect), so the stream counts as failed.
    fn failed(&self) -> bool {
        false
    }
    /// Writes what keeps a silent stream open (Anthropic's `ping`), each time it has
    /// been silent for [`StreamRenderer::IDLE_AFTER`].
    fn idle(&mut self, out: &mut BytesMut) {
        let _ = out;
    }
}

/// Parses a request body, answering a 400 that names the problem (serde's message
/// says which field and where).
pub fn parse_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, GatewayError> {
    crate::framing::from_json(body)
        .map_err(|e| GatewayError::bad_request(format!("invalid request body: {e}")))
}

/// A dialect's wire message, which becomes a canonical one as it is read.
pub trait IntoCanonical<'a> {
    /// The canonical message, or the 400 that names `messages[index]` and what is wrong.
    fn into_canonical(self, index: usize) -> Result<Message<'a>, GatewayError>;
}

/// A `messages` array whose wire messages (`W`) are turned into canonical ones as soon
/// as each is read: a long history is not held a second time, as a vector of wire
/// messages (with room for the next power of two of them), beside the messages made
/// from it. The canonical vector grows by doubling: serde gives no count ahead.
pub struct TurnedMessages<'a, W> {
    messages: Vec<Message<'a>>,
    /// How many the array held, the ones after a failure included.
    count: usize,
    /// The first message that could not be turned, answered only once the whole body
    /// has parsed and its other fields been checked, as when the array was read first
    /// and its messages turned after.
    error: Option<GatewayError>,
    wire: PhantomData<W>,
}

impl<W> Default for TurnedMessages<'_, W> {
    fn default() -> Self {
        TurnedMessages {
            messages: Vec::new(),
            count: 0,
            error: None,
            wire: PhantomData,
        }
    }
}

impl<'a, W> TurnedMessages<'a, W> {
    /// Whether the array held no message at all.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The canonical messages, or the first one's error.
    pub fn into_messages(self) -> Result<Vec<Message<'a>>, GatewayError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.messages),
        }
    }
}

impl<'de: 'a, 'a, W> serde::Deserialize<'de> for TurnedMessages<'a, W>
where
    W: serde::Deserialize<'de> + IntoCanonical<'a>,
{
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Each<'a, W>(PhantomData<(&'a (), W)>);
        impl<'de: 'a, 'a, W> serde::de::Visitor<'de> for Each<'a, W>
        where
            W: serde::Deserialize<'de> + IntoCanonical<'a>,
        {
            type Value = TurnedMessages<'a, W>;

            // What serde says of a `Vec`, so a body's type errors read as they did.
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a sequence")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TurnedMessages<'a, W>, A::Error> {
                let mut turned = TurnedMessages::default();
                while let Some(wire) = seq.next_element::<W>()? {
                    if turned.error.is_none() {
                        match wire.into_canonical(turned.count) {
                            Ok(message) => turned.messages.push(message),
                            Err(error) => turned.error = Some(error),
                        }
                    }
                    turned.count += 1;
                }
                Ok(turned)
            }
        }
        deserializer.deserialize_seq(Each(PhantomData))
    }
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
