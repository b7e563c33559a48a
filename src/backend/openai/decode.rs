//! An OpenAI-compatible server's answer turned into canonical [`Event`]s: one decoder
//! for a streamed `chat.completion.chunk` and a whole `chat.completion` (and the legacy
//! `text_completion` of both), since a whole answer is one chunk holding everything.
//! A whole answer is the same events folded with [`Completion::apply`].

use futures::StreamExt;
use serde::Deserialize;

use crate::chat::{Completion, Event, EventStream, FinishReason, ToolCallDelta, Usage};
use crate::embed::Embeddings;
use crate::error::GatewayError;
use crate::framing::sse_data;

use super::super::error_body::ErrorField;
use super::super::upstream::UpstreamBody;
use super::super::ModelEntry;

/// A streamed chunk or a whole answer: the same members, with `delta` in one and
/// `message` in the other.
#[derive(Deserialize)]
struct WireAnswer<'a> {
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
    timings: Option<WireTimings>,
    #[serde(borrow)]
    error: Option<ErrorField<'a>>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    /// What a stream sends: the next piece.
    delta: Option<WireMessage>,
    /// What a whole answer holds instead: all of it.
    message: Option<WireMessage>,
    /// What `/completions` sends instead of either.
    text: Option<String>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    index: Option<usize>,
    id: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// llama-server's timings, in milliseconds.
#[derive(Deserialize)]
struct WireTimings {
    prompt_ms: Option<f64>,
    predicted_ms: Option<f64>,
}

/// The most tool calls one answer may make; an index beyond is a broken upstream.
const MAX_TOOL_CALLS: usize = 128;

/// What the answer so far means, kept between chunks.
#[derive(Default)]
pub(super) struct Decoder {
    usage: Option<Usage>,
    finished: bool,
    /// The upstream's tool-call indices in order of first sight: the position in this
    /// list is the index passed on, so calls are numbered 0, 1, 2 ... whatever the
    /// upstream sent (gaps, huge numbers, none at all).
    tool_indices: Vec<Option<usize>>,
}

impl Decoder {
    /// Our index for an upstream tool-call fragment.
    fn tool_index(
        &mut self,
        backend: &str,
        index: Option<usize>,
        starts_call: bool,
    ) -> Result<usize, GatewayError> {
        let known = match index {
            Some(_) => self.tool_indices.iter().position(|&seen| seen == index),
            // Without an index, a fragment with an id starts a call; others continue
            // the latest one.
            None if starts_call => None,
            None => self.tool_indices.len().checked_sub(1),
        };
        if let Some(position) = known {
            return Ok(position);
        }
        if self.tool_indices.len() >= MAX_TOOL_CALLS {
            return Err(GatewayError::UpstreamProtocol {
                backend: backend.to_owned(),
                detail: format!("more than {MAX_TOOL_CALLS} tool calls in one answer"),
            });
        }
        self.tool_indices.push(index);
        Ok(self.tool_indices.len() - 1)
    }

    /// Decodes one streamed chunk's `data:` into events.
    pub(super) fn chunk(
        &mut self,
        backend: &str,
        data: &[u8],
        out: &mut Vec<Event>,
    ) -> Result<(), GatewayError> {
        let chunk: WireAnswer<'_> =
            crate::framing::from_json(data).map_err(|e| GatewayError::UpstreamProtocol {
                backend: backend.to_owned(),
                detail: format!("a stream event is not a chat completion chunk: {e}"),
            })?;
        self.answer(backend, chunk, out)
    }

    /// What one parsed chunk or whole answer means.
    fn answer(
        &mut self,
        backend: &str,
        answer: WireAnswer<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(), GatewayError> {
        if let Some(error) = answer.error {
            return Err(error.into_error(backend));
        }
        for choice in answer.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.text.filter(|t| !t.is_empty()) {
                out.push(Event::Text(text));
            }
            // A whole message's calls are each whole: without an index, every one of
            // them starts a call of its own.
            let whole = choice.message.is_some();
            if let Some(message) = choice.delta.or(choice.message) {
                self.message(backend, message, whole, out)?;
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push(Event::Finish(FinishReason::parse(&reason)));
            }
        }
        if let Some(usage) = answer.usage {
            let kept = self.usage.get_or_insert_with(Usage::default);
            kept.prompt_tokens = usage.prompt_tokens;
            kept.completion_tokens = usage.completion_tokens;
        }
        if let Some(timings) = answer.timings {
            let kept = self.usage.get_or_insert_with(Usage::default);
            kept.prompt_eval_ns = timings.prompt_ms.map(|ms| (ms * 1e6) as u64);
            kept.eval_ns = timings.predicted_ms.map(|ms| (ms * 1e6) as u64);
        }
        Ok(())
    }

    fn message(
        &mut self,
        backend: &str,
        message: WireMessage,
        whole: bool,
        out: &mut Vec<Event>,
    ) -> Result<(), GatewayError> {
        if let Some(thinking) = message.reasoning_content.or(message.reasoning) {
            if !thinking.is_empty() {
                out.push(Event::Thinking(thinking));
            }
        }
        if let Some(text) = message.content.filter(|t| !t.is_empty()) {
            out.push(Event::Text(text));
        }
        for call in message.tool_calls.into_iter().flatten() {
            let index = if whole {
                self.tool_index(backend, None, true)?
            } else {
                self.tool_index(backend, call.index, call.id.is_some())?
            };
            let (name, arguments) = match call.function {
                Some(f) => (f.name, f.arguments.unwrap_or_default()),
                None => (None, String::new()),
            };
            out.push(Event::ToolCall(ToolCallDelta {
                index,
                id: call.id,
                name,
                arguments,
            }));
        }
        Ok(())
    }

    /// The usage gathered, once the answer is over.
    fn finish(self) -> Option<Event> {
        self.usage.map(Event::Usage)
    }
}

/// Decodes a whole answer (`"stream": false`): the same events a stream would give,
/// folded into one.
pub(super) fn whole(backend: &str, body: &[u8], path: &str) -> Result<Completion, GatewayError> {
    let answer: WireAnswer<'_> =
        crate::framing::from_json(body).map_err(|e| GatewayError::UpstreamProtocol {
            backend: backend.to_owned(),
            detail: format!("{path} did not answer with the expected JSON: {e}"),
        })?;
    if answer.error.is_none() && answer.choices.is_empty() {
        return Err(GatewayError::UpstreamProtocol {
            backend: backend.to_owned(),
            detail: "the answer has no choices".to_owned(),
        });
    }
    let mut decoder = Decoder::default();
    let mut events = Vec::new();
    decoder.answer(backend, answer, &mut events)?;
    let mut completion = Completion::default();
    for event in events.into_iter().chain(decoder.finish()) {
        completion.apply(event);
    }
    Ok(completion)
}

/// The answer of `/embeddings`.
#[derive(Deserialize)]
pub(super) struct WireEmbeddings {
    data: Vec<WireEmbedding>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

impl WireEmbeddings {
    /// The vectors in input order, whatever order they came in.
    pub(super) fn into_embeddings(self) -> Embeddings {
        let mut data = self.data;
        data.sort_by_key(|item| item.index);
        Embeddings {
            vectors: data.into_iter().map(|item| item.embedding).collect(),
            prompt_tokens: self.usage.map_or(0, |u| u.prompt_tokens),
        }
    }
}

/// The answer of `GET /models`.
#[derive(Deserialize)]
pub(super) struct WireModelList {
    #[serde(default)]
    data: Vec<WireModel>,
}

#[derive(Deserialize)]
struct WireModel {
    id: String,
    created: Option<u64>,
    owned_by: Option<String>,
}

impl WireModelList {
    /// The listed models.
    pub(super) fn into_entries(self) -> Vec<ModelEntry> {
        self.data
            .into_iter()
            .map(|model| ModelEntry {
                id: model.id,
                created: model.created,
                owned_by: model.owned_by,
                ..ModelEntry::default()
            })
            .collect()
    }
}

/// Decodes an SSE answer as it arrives. It ends cleanly only after `[DONE]` or a
/// finish reason; a stream cut off before either ends in an error.
pub(super) fn stream(backend: String, body: UpstreamBody) -> EventStream {
    Box::pin(async_stream::stream! {
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        let data = sse_data(body);
        futures::pin_mut!(data);
        let mut saw_done = false;
        while let Some(item) = data.next().await {
            let data = match item {
                Ok(data) => data,
                Err(error) => {
                    yield Err(super::super::stream_error(&backend, error));
                    return;
                }
            };
            if data.trim_ascii() == b"[DONE]" {
                saw_done = true;
                break;
            }
            if let Err(e) = decoder.chunk(&backend, &data, &mut events) {
                yield Err(e);
                return;
            }
            for event in events.drain(..) {
                yield Ok(event);
            }
        }
        if saw_done {
            super::super::drain(data).await;
        }
        if !saw_done && !decoder.finished {
            yield Err(GatewayError::UpstreamProtocol {
                backend: backend.clone(),
                detail: "the stream ended before the answer was complete".to_owned(),
            });
            return;
        }
        if let Some(usage) = decoder.finish() {
            yield Ok(usage);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&str]) -> Result<Vec<Event>, GatewayError> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.chunk("b", chunk.as_bytes(), &mut out)?;
        }
        Ok(out)
    }

    fn indices(events: &[Event]) -> Vec<usize> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ToolCall(call) => Some(call.index),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tool_call_indices_are_renumbered_from_zero() {
        let events = decode(&[
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"id":"a","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":7,"id":"b","function":{"name":"g","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"function":{"arguments":"{}"}}]}}]}"#,
        ])
        .unwrap();
        assert_eq!(indices(&events), vec![0, 1, 0]);
    }

    #[test]
    fn calls_without_an_index_are_told_apart_by_their_id() {
        let events = decode(&[
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
        ])
        .unwrap();
        assert_eq!(indices(&events), vec![0, 0, 1]);
    }

    #[test]
    fn an_absurd_number_of_calls_is_an_upstream_error() {
        let chunks: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":{i},"id":"c{i}","function":{{"name":"f"}}}}]}}}}]}}"#))
            .collect();
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        assert!(matches!(
            decode(&refs),
            Err(GatewayError::UpstreamProtocol { .. })
        ));
        let huge = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":4000000000,"id":"x","function":{"name":"f"}}]}}]}"#;
        assert_eq!(
            indices(&decode(&[huge]).unwrap()),
            vec![0],
            "a huge index costs nothing"
        );
    }

    #[test]
    fn a_whole_answer_folds_the_same_events() {
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi","reasoning_content":"hmm","tool_calls":[{"function":{"name":"f","arguments":"{\"a\":1}"}},{"id":"c2","function":{"name":"g"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":4},"timings":{"prompt_ms":1.5,"predicted_ms":2}}"#;
        let completion = whole("b", body, "/chat/completions").unwrap();
        assert_eq!(completion.text, "hi");
        assert_eq!(completion.thinking, "hmm");
        assert_eq!(
            completion.tool_calls.len(),
            2,
            "calls without ids stay apart"
        );
        assert_eq!(completion.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(completion.tool_calls[1].id.as_deref(), Some("c2"));
        assert_eq!(completion.tool_calls[1].arguments, "");
        assert_eq!(completion.finish_reason, Some(FinishReason::ToolCalls));
        let usage = completion.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 4));
        assert_eq!(usage.prompt_eval_ns, Some(1_500_000));
        assert_eq!(usage.eval_ns, Some(2_000_000));
    }

    #[test]
    fn a_whole_legacy_completion_and_an_empty_one() {
        let completion = whole(
            "b",
            br#"{"choices":[{"text":"done","finish_reason":"length"}]}"#,
            "/completions",
        )
        .unwrap();
        assert_eq!(completion.text, "done");
        assert_eq!(completion.finish_reason, Some(FinishReason::Length));
        assert_eq!(completion.usage, None);
        assert!(matches!(
            whole("b", br#"{"choices":[]}"#, "/completions"),
            Err(GatewayError::UpstreamProtocol { .. })
        ));
    }

    #[test]
    fn an_error_in_a_stream_keeps_its_status() {
        let error = decode(&[r#"{"error":{"code":503,"message":"loading model"}}"#]).unwrap_err();
        assert!(
            matches!(error, GatewayError::UpstreamStatus { status: 503, ref message, .. } if message == "loading model"),
            "{error:?}"
        );
    }
}
