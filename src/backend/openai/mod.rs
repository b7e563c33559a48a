//! Backend for any OpenAI-compatible server: OpenAI itself, llama.cpp's llama-server,
//! vLLM, and the like. Always asks for a stream with usage, so token counts, timeouts and
//! cancellation work the same for streaming and non-streaming clients.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::chat::{
    ChatRequest, Completion, Event, EventStream, FinishReason, Message, OutputFormat, Part, Role,
    Think, Tool, ToolCall, ToolCallDelta, Usage,
};
use crate::embed::{EmbedRequest, Embeddings};
use crate::error::GatewayError;
use crate::framing::{sse_data, FramingError};

use super::error_body::ErrorField;
use super::{ModelEntry, Upstream};

mod config;
pub use config::OpenAiConfig;

/// An OpenAI-compatible upstream.
pub struct OpenAiBackend {
    upstream: Upstream,
    /// OpenAI's own API rejects parameters it does not know, so llama-server's extra
    /// sampling knobs are only sent elsewhere.
    strict_parameters: bool,
}

impl OpenAiBackend {
    /// Wraps the upstream.
    pub fn new(upstream: Upstream) -> OpenAiBackend {
        let strict_parameters = upstream
            .first_url()
            .host()
            .is_some_and(|host| host.ends_with("api.openai.com"));
        OpenAiBackend {
            upstream,
            strict_parameters,
        }
    }

    /// Sends the chat upstream and decodes its SSE answer.
    pub async fn chat(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<EventStream, GatewayError> {
        let (path, body) = self.encode(model, request, true)?;
        let response = self.upstream.post_stream(path, body).await?;
        Ok(decode_stream(self.upstream.backend.clone(), response))
    }

    /// Asks for the whole answer at once, for clients that did not ask to stream: some
    /// servers (llama-cpp-python's) report usage only on whole answers.
    pub async fn complete(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<Completion, GatewayError> {
        let (path, body) = self.encode(model, request, false)?;
        let answer: WireCompletion = self.upstream.post_json(path, body).await?;
        answer.into_completion(&self.upstream.backend)
    }

    /// The upstream path and body. A raw or fill-in-the-middle completion goes to
    /// `/completions`, which takes the prompt untemplated.
    fn encode(
        &self,
        model: &str,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<(&'static str, Vec<u8>), GatewayError> {
        let plain = request
            .generation
            .as_ref()
            .is_some_and(|g| g.raw || g.suffix.is_some());
        let body = if plain {
            super::json_body(&self.completion_request(model, request, stream))?
        } else {
            let mut wire = self.wire_request(model, request);
            wire.stream = stream;
            if !stream {
                wire.stream_options = None;
            }
            super::json_body(&wire)?
        };
        Ok((
            if plain {
                "/completions"
            } else {
                "/chat/completions"
            },
            body,
        ))
    }

    /// Embeds through `/embeddings`, always as floats.
    pub async fn embed(
        &self,
        model: &str,
        request: &EmbedRequest,
    ) -> Result<Embeddings, GatewayError> {
        let mut body = json!({"model": model, "input": request.inputs, "encoding_format": "float"});
        if let Some(dimensions) = request.dimensions {
            body["dimensions"] = json!(dimensions);
        }
        let answer: WireEmbeddings = self
            .upstream
            .post_json("/embeddings", body.to_string().into_bytes())
            .await?;
        let mut data = answer.data;
        data.sort_by_key(|item| item.index);
        Ok(Embeddings {
            vectors: data.into_iter().map(|item| item.embedding).collect(),
            prompt_tokens: answer.usage.map_or(0, |u| u.prompt_tokens),
        })
    }

    /// A legacy `/completions` request: the prompt as written, with its suffix.
    fn completion_request(&self, model: &str, request: &ChatRequest, stream: bool) -> Value {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(Message::joined_text)
            .unwrap_or_default();
        let mut body = json!({
            "model": model,
            "prompt": prompt,
            "stream": stream,
        });
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let chat = serde_json::to_value(self.wire_request(model, request)).unwrap_or_default();
        for key in [
            "max_completion_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "frequency_penalty",
            "presence_penalty",
            "top_k",
            "min_p",
            "typical_p",
            "repeat_penalty",
            "repeat_last_n",
        ] {
            if let Some(value) = chat.get(key) {
                let key = if key == "max_completion_tokens" {
                    "max_tokens"
                } else {
                    key
                };
                body[key] = value.clone();
            }
        }
        if let Some(suffix) = request.generation.as_ref().and_then(|g| g.suffix.as_ref()) {
            body["suffix"] = json!(suffix);
        }
        body
    }

    /// Lists `GET /models`.
    pub async fn models(&self) -> Result<Vec<ModelEntry>, GatewayError> {
        let list: WireModelList = self.upstream.get_json("/models").await?;
        Ok(list
            .data
            .into_iter()
            .map(|model| ModelEntry {
                id: model.id,
                created: model.created,
                owned_by: model.owned_by,
                ..ModelEntry::default()
            })
            .collect())
    }

    fn wire_request<'a>(&self, model: &'a str, request: &'a ChatRequest) -> WireRequest<'a> {
        let sampling = &request.sampling;
        let mut extra = Map::new();
        if !self.strict_parameters {
            let knobs = [
                ("top_k", sampling.top_k.map(Value::from)),
                ("min_p", sampling.min_p.map(Value::from)),
                ("typical_p", sampling.typical_p.map(Value::from)),
                ("repeat_penalty", sampling.repeat_penalty.map(Value::from)),
                ("repeat_last_n", sampling.repeat_last_n.map(Value::from)),
            ];
            for (key, value) in knobs {
                if let Some(value) = value {
                    extra.insert(key.to_owned(), value);
                }
            }
            if request.think == Some(Think::Enabled(false)) {
                // llama-server's templates read this; the effort alone is not enough.
                extra.insert(
                    "chat_template_kwargs".to_owned(),
                    json!({"enable_thinking": false}),
                );
            }
        }
        if !sampling.ollama_runtime.is_empty() {
            log::debug!(
                "backend {}: dropping Ollama runtime options with no OpenAI counterpart: {:?}",
                self.upstream.backend,
                sampling.ollama_runtime.keys().collect::<Vec<_>>()
            );
        }
        if request.keep_alive.is_some() {
            log::debug!("backend {}: dropping keep_alive", self.upstream.backend);
        }
        for (key, value) in &request.passthrough {
            extra.entry(key.clone()).or_insert_with(|| value.clone());
        }
        WireRequest {
            model,
            messages: wire_messages(&request.messages, !self.strict_parameters),
            stream: true,
            stream_options: Some(json!({"include_usage": true})),
            max_completion_tokens: sampling.max_tokens,
            // Older OpenAI-compatible servers (and Ollama's /v1) read only the old name.
            max_tokens: sampling.max_tokens.filter(|_| !self.strict_parameters),
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            seed: sampling.seed,
            stop: (!sampling.stop.is_empty()).then_some(&sampling.stop),
            frequency_penalty: sampling.frequency_penalty,
            presence_penalty: sampling.presence_penalty,
            response_format: request.format.as_ref().map(|format| match format {
                OutputFormat::Json => json!({"type": "json_object"}),
                OutputFormat::Schema {
                    name,
                    schema,
                    strict,
                } => {
                    let mut spec = json!({
                        "name": name.as_deref().unwrap_or("response"),
                        "schema": schema,
                    });
                    if let Some(strict) = strict {
                        spec["strict"] = json!(strict);
                    }
                    json!({"type": "json_schema", "json_schema": spec})
                }
            }),
            tools: (!request.tools.is_empty()).then_some(&request.tools),
            tool_choice: request.tool_choice.as_ref(),
            parallel_tool_calls: request.parallel_tool_calls,
            reasoning_effort: match &request.think {
                None | Some(Think::Enabled(true)) => None,
                // OpenAI refuses reasoning_effort on models that do not reason.
                Some(Think::Enabled(false)) if self.strict_parameters => None,
                Some(Think::Enabled(false)) => Some("none"),
                Some(Think::Effort(level)) => Some(level.as_str()),
            },
            extra,
        }
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Vec<Tool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Value,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

/// Writes the messages in OpenAI's form, giving every tool call an id and every tool
/// result the id of the call it answers: OpenAI servers insist on both, Ollama clients
/// send neither. `local_dialect` is true for servers other than OpenAI's own
/// (llama-server, vLLM, Ollama's /v1), which read earlier reasoning back and may not
/// know the `developer` role.
fn wire_messages(messages: &[Message], local_dialect: bool) -> Vec<WireMessage<'_>> {
    let mut out = Vec::with_capacity(messages.len());
    // (id, name) of calls not yet answered by a tool message, oldest first.
    let mut unanswered: Vec<(String, String)> = Vec::new();
    for (message_index, message) in messages.iter().enumerate() {
        let mut tool_calls = Vec::with_capacity(message.tool_calls.len());
        for (call_index, call) in message.tool_calls.iter().enumerate() {
            let id = call
                .id
                .clone()
                .unwrap_or_else(|| format!("call_{message_index}_{call_index}"));
            unanswered.push((id.clone(), call.name.clone()));
            tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }));
        }
        let tool_call_id = if message.role == Role::Tool {
            let position = match &message.tool_call_id {
                Some(id) => unanswered.iter().position(|(call_id, _)| call_id == id),
                None => message
                    .tool_name
                    .as_ref()
                    .and_then(|name| unanswered.iter().position(|(_, n)| n == name))
                    .or(if unanswered.is_empty() { None } else { Some(0) }),
            };
            let answered = position.map(|at| unanswered.remove(at).0);
            message.tool_call_id.clone().or(answered)
        } else {
            None
        };
        let content = wire_content(message);
        out.push(WireMessage {
            // Only OpenAI's own API is sure to know `developer`; elsewhere it would be
            // dropped by the chat template, instructions and all.
            role: match message.role {
                Role::Developer if local_dialect => "system",
                role => role.as_str(),
            },
            content,
            tool_calls,
            tool_call_id,
            reasoning_content: message
                .thinking
                .as_deref()
                .filter(|_| local_dialect && message.role == Role::Assistant),
        });
    }
    out
}

fn wire_content(message: &Message) -> Value {
    let has_images = message.images().next().is_some();
    if !has_images {
        let text = message.joined_text();
        if text.is_empty() && !message.tool_calls.is_empty() {
            return Value::Null;
        }
        return Value::String(text);
    }
    Value::Array(
        message
            .parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => json!({"type": "text", "text": text}),
                Part::Image(image) => {
                    json!({"type": "image_url", "image_url": {"url": image.to_url()}})
                }
            })
            .collect(),
    )
}

/// A whole `chat.completion` (or legacy `text_completion`).
#[derive(Deserialize)]
struct WireCompletion {
    #[serde(default)]
    choices: Vec<WireWholeChoice>,
    usage: Option<WireUsage>,
    timings: Option<WireTimings>,
}

#[derive(Deserialize)]
struct WireWholeChoice {
    message: Option<WireWholeMessage>,
    /// What `/completions` answers instead of a message.
    text: Option<String>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireWholeMessage {
    content: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    #[serde(default, deserialize_with = "crate::dialect::null_as_default")]
    tool_calls: Vec<WireWholeToolCall>,
}

#[derive(Deserialize)]
struct WireWholeToolCall {
    id: Option<String>,
    function: WireFunctionDelta,
}

impl WireCompletion {
    fn into_completion(self, backend: &str) -> Result<Completion, GatewayError> {
        let Some(choice) = self.choices.into_iter().next() else {
            return Err(GatewayError::UpstreamProtocol {
                backend: backend.to_owned(),
                detail: "the answer has no choices".to_owned(),
            });
        };
        let mut completion = Completion {
            finish_reason: choice.finish_reason.as_deref().map(FinishReason::parse),
            ..Completion::default()
        };
        if let Some(text) = choice.text {
            completion.text = text;
        }
        if let Some(message) = choice.message {
            completion.text = message.content.unwrap_or_default();
            completion.thinking = message
                .reasoning_content
                .or(message.reasoning)
                .unwrap_or_default();
            completion.tool_calls = message
                .tool_calls
                .into_iter()
                .map(|call| ToolCall {
                    id: call.id,
                    name: call.function.name.unwrap_or_default(),
                    arguments: call.function.arguments.unwrap_or_default(),
                })
                .collect();
        }
        if self.usage.is_some() || self.timings.is_some() {
            let usage = self.usage.unwrap_or(WireUsage {
                prompt_tokens: 0,
                completion_tokens: 0,
            });
            completion.usage = Some(Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                prompt_eval_ns: self
                    .timings
                    .as_ref()
                    .and_then(|t| t.prompt_ms)
                    .map(|ms| (ms * 1e6) as u64),
                eval_ns: self
                    .timings
                    .as_ref()
                    .and_then(|t| t.predicted_ms)
                    .map(|ms| (ms * 1e6) as u64),
                load_ns: None,
            });
        }
        Ok(completion)
    }
}

#[derive(Deserialize)]
struct WireEmbeddings {
    data: Vec<WireEmbedding>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct WireModelList {
    #[serde(default)]
    data: Vec<WireModel>,
}

#[derive(Deserialize)]
struct WireModel {
    id: String,
    created: Option<u64>,
    owned_by: Option<String>,
}

#[derive(Deserialize)]
struct WireChunk<'a> {
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
    delta: Option<WireDelta>,
    /// What `/completions` streams instead of a delta.
    text: Option<String>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    tool_calls: Option<Vec<WireToolCallDelta>>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    index: Option<usize>,
    id: Option<String>,
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
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

/// What one upstream chunk means, kept between chunks.
#[derive(Default)]
struct DecodeState {
    usage: Option<Usage>,
    finished: bool,
    /// The upstream's tool-call indices in order of first sight: the position in this
    /// list is the index passed on, so calls are numbered 0, 1, 2 ... whatever the
    /// upstream sent (gaps, huge numbers, none at all).
    tool_indices: Vec<Option<usize>>,
}

impl DecodeState {
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
}

impl DecodeState {
    fn decode(
        &mut self,
        backend: &str,
        data: &[u8],
        out: &mut Vec<Event>,
    ) -> Result<(), GatewayError> {
        let chunk: WireChunk =
            serde_json::from_slice(data).map_err(|e| GatewayError::UpstreamProtocol {
                backend: backend.to_owned(),
                detail: format!("a stream event is not a chat completion chunk: {e}"),
            })?;
        if let Some(error) = chunk.error {
            return Err(error.into_error(backend));
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.text.filter(|t| !t.is_empty()) {
                out.push(Event::Text(text));
            }
            if let Some(delta) = choice.delta {
                if let Some(thinking) = delta.reasoning_content.or(delta.reasoning) {
                    if !thinking.is_empty() {
                        out.push(Event::Thinking(thinking));
                    }
                }
                if let Some(text) = delta.content {
                    if !text.is_empty() {
                        out.push(Event::Text(text));
                    }
                }
                for call in delta.tool_calls.into_iter().flatten() {
                    let index = self.tool_index(backend, call.index, call.id.is_some())?;
                    let function = call.function;
                    let (name, arguments) = match function {
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
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push(Event::Finish(FinishReason::parse(&reason)));
            }
        }
        if let Some(usage) = chunk.usage {
            let kept = self.usage.get_or_insert_with(Usage::default);
            kept.prompt_tokens = usage.prompt_tokens;
            kept.completion_tokens = usage.completion_tokens;
        }
        if let Some(timings) = chunk.timings {
            let kept = self.usage.get_or_insert_with(Usage::default);
            kept.prompt_eval_ns = timings.prompt_ms.map(|ms| (ms * 1e6) as u64);
            kept.eval_ns = timings.predicted_ms.map(|ms| (ms * 1e6) as u64);
        }
        Ok(())
    }
}

fn decode_stream(backend: String, body: super::upstream::UpstreamBody) -> EventStream {
    Box::pin(async_stream::stream! {
        let mut state = DecodeState::default();
        let mut events = Vec::new();
        let data = sse_data(body);
        futures::pin_mut!(data);
        let mut saw_done = false;
        while let Some(item) = data.next().await {
            let data = match item {
                Ok(data) => data,
                Err(FramingError::Transport(e)) => {
                    yield Err(e);
                    return;
                }
                Err(FramingError::Invalid(detail)) => {
                    yield Err(GatewayError::UpstreamProtocol { backend: backend.clone(), detail });
                    return;
                }
            };
            if data.trim_ascii() == b"[DONE]" {
                saw_done = true;
                break;
            }
            if let Err(e) = state.decode(&backend, &data, &mut events) {
                yield Err(e);
                return;
            }
            for event in events.drain(..) {
                yield Ok(event);
            }
        }
        if saw_done {
            super::drain(data).await;
        }
        if !saw_done && !state.finished {
            yield Err(GatewayError::UpstreamProtocol {
                backend: backend.clone(),
                detail: "the stream ended before the answer was complete".to_owned(),
            });
            return;
        }
        if let Some(usage) = state.usage {
            yield Ok(Event::Usage(usage));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&str]) -> Result<Vec<Event>, GatewayError> {
        let mut state = DecodeState::default();
        let mut out = Vec::new();
        for chunk in chunks {
            state.decode("b", chunk.as_bytes(), &mut out)?;
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
}
