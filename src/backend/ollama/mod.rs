//! Backend for a native Ollama server (`/api/chat`, `/api/tags`). Always streams, so
//! that timeouts, cancellation and token counts behave alike for every client.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chat::{
    random_id, ChatRequest, Completion, Event, EventStream, FinishReason, Generation, Image,
    Message, OutputFormat, Role, Think, Tool, ToolCall, ToolCallDelta, Usage, WireToolCall,
};
use crate::embed::{EmbedRequest, Embeddings};
use crate::error::GatewayError;
use crate::framing::{ndjson_lines, FramingError};

use super::error_body::ErrorField;
use super::{ModelEntry, Upstream};

mod config;
pub use config::OllamaConfig;

/// A native Ollama upstream.
pub struct OllamaBackend {
    upstream: Upstream,
}

impl OllamaBackend {
    /// Wraps the upstream.
    pub fn new(upstream: Upstream) -> OllamaBackend {
        OllamaBackend { upstream }
    }

    /// Sends the chat to `/api/chat` (a plain completion to `/api/generate`) and decodes
    /// its NDJSON answer.
    pub async fn chat(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<EventStream, GatewayError> {
        let (path, body) = self.encode(model, request, true)?;
        let response = self.upstream.post_stream(path, body).await?;
        Ok(decode_stream(self.upstream.backend.clone(), response))
    }

    /// Asks for the whole answer at once (`"stream": false`), for clients that did not
    /// ask to stream: one object to read instead of a line per token.
    pub async fn complete(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<Completion, GatewayError> {
        let (path, body) = self.encode(model, request, false)?;
        // A whole answer has the shape of a stream's last line, with everything in it.
        let body = self.upstream.post_for_body(path, body).await?;
        let answer: WireLine<'_> = self.upstream.parse_json(path, &body)?;
        let mut events = Vec::new();
        line_events(&self.upstream.backend, answer, &mut 0, &mut events)?;
        let mut completion = Completion::default();
        for event in events {
            completion.apply(event);
        }
        Ok(completion)
    }

    fn encode(
        &self,
        model: &str,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<(&'static str, Vec<u8>), GatewayError> {
        let mut wire = wire_request(&self.upstream.backend, model, request)?;
        wire.stream = stream;
        Ok(match &request.generation {
            None => ("/api/chat", super::json_body(&wire)?),
            Some(generation) => (
                "/api/generate",
                super::json_body(&generate_request(wire, generation))?,
            ),
        })
    }

    /// Embeds through `/api/embed`.
    pub async fn embed(
        &self,
        model: &str,
        request: &EmbedRequest,
    ) -> Result<Embeddings, GatewayError> {
        let mut body = request.ollama_extras.clone();
        body.insert("model".to_owned(), Value::from(model));
        body.insert("input".to_owned(), Value::from(request.inputs.clone()));
        if let Some(dimensions) = request.dimensions {
            body.insert("dimensions".to_owned(), Value::from(dimensions));
        }
        let answer: WireEmbed = self
            .upstream
            .post_json("/api/embed", Value::Object(body).to_string().into_bytes())
            .await?;
        Ok(Embeddings {
            vectors: answer.embeddings,
            prompt_tokens: answer.prompt_eval_count,
        })
    }

    /// Asks `/api/show`; the answer is passed on as Ollama gave it.
    pub async fn show(&self, model: &str) -> Result<Value, GatewayError> {
        let body = serde_json::json!({ "model": model })
            .to_string()
            .into_bytes();
        let mut answer: Value = self.upstream.post_json("/api/show", body).await?;
        // ollama-python fails on an answer without model_info.
        if let Some(object) = answer.as_object_mut() {
            object
                .entry("model_info")
                .or_insert_with(|| Value::Object(Map::new()));
        }
        Ok(answer)
    }

    /// The loaded models from `/api/ps`.
    pub async fn running(&self) -> Result<Vec<Value>, GatewayError> {
        let answer: Value = self.upstream.get_json("/api/ps").await?;
        Ok(answer
            .get("models")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Lists `GET /api/tags`.
    pub async fn models(&self) -> Result<Vec<ModelEntry>, GatewayError> {
        let tags: WireTags = self.upstream.get_json("/api/tags").await?;
        Ok(tags
            .models
            .into_iter()
            .map(|model| ModelEntry {
                id: model.model.or(model.name).unwrap_or_default(),
                created: model.modified_at.as_deref().and_then(unix_seconds),
                modified_at: model.modified_at,
                owned_by: Some("library".to_owned()),
                size: model.size,
                details: model.details,
            })
            .filter(|model| !model.id.is_empty())
            .collect())
    }
}

/// Unix seconds of an RFC 3339 time with any offset (`Z`, `-07:00`): Ollama writes
/// `modified_at` in the server's local time.
fn unix_seconds(time: &str) -> Option<u64> {
    let local = humantime::parse_rfc3339_weak(time.get(..19)?).ok()?;
    let local = local.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    let zone = time
        .get(19..)?
        .trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone.as_bytes() {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let (hours, minutes) = zone.get(1..)?.split_once(':')?;
            let seconds = hours.parse::<i64>().ok()? * 3600 + minutes.parse::<i64>().ok()? * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    u64::try_from(local - offset).ok()
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Map::is_empty")]
    options: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Vec<Tool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    think: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

fn wire_request<'a>(
    backend: &str,
    model: &'a str,
    request: &'a ChatRequest,
) -> Result<WireRequest<'a>, GatewayError> {
    let sampling = &request.sampling;
    let mut options = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            options.insert(key.to_owned(), value);
        }
    };
    put("num_predict", sampling.max_tokens.map(Value::from));
    put("temperature", sampling.temperature.map(Value::from));
    put("top_p", sampling.top_p.map(Value::from));
    put("seed", sampling.seed.map(Value::from));
    put(
        "stop",
        (!sampling.stop.is_empty()).then(|| Value::from(sampling.stop.clone())),
    );
    put(
        "frequency_penalty",
        sampling.frequency_penalty.map(Value::from),
    );
    put(
        "presence_penalty",
        sampling.presence_penalty.map(Value::from),
    );
    put("top_k", sampling.top_k.map(Value::from));
    put("min_p", sampling.min_p.map(Value::from));
    put("typical_p", sampling.typical_p.map(Value::from));
    put("repeat_penalty", sampling.repeat_penalty.map(Value::from));
    put("repeat_last_n", sampling.repeat_last_n.map(Value::from));
    for (key, value) in &sampling.ollama_runtime {
        options.insert(key.clone(), value.clone());
    }
    if !request.passthrough.is_empty() || request.tool_choice.is_some() {
        log::debug!(
            "backend {backend}: dropping fields Ollama has no counterpart for: {:?}{}",
            request.passthrough.keys().collect::<Vec<_>>(),
            if request.tool_choice.is_some() {
                " tool_choice"
            } else {
                ""
            }
        );
    }
    let think = match &request.think {
        None => None,
        Some(Think::Enabled(on)) => Some(Value::Bool(*on)),
        Some(Think::Effort(level)) => Some(match level.as_str() {
            "none" => Value::Bool(false),
            "minimal" => Value::from("low"),
            "xhigh" | "ultra" => Value::from("max"),
            "low" | "medium" | "high" | "max" => Value::from(level.as_str()),
            other => {
                return Err(GatewayError::bad_field(
                    "reasoning_effort",
                    format!("reasoning_effort \"{other}\" is not one of none, minimal, low, medium, high, xhigh, max"),
                ))
            }
        }),
    };
    Ok(WireRequest {
        model,
        messages: wire_messages(&request.messages)?,
        stream: true,
        options,
        format: request.format.as_ref().map(|format| match format {
            OutputFormat::Json => Value::from("json"),
            OutputFormat::Schema { schema, .. } => schema.clone(),
        }),
        tools: (!request.tools.is_empty()).then_some(&request.tools),
        think,
        keep_alive: request.keep_alive.as_ref(),
    })
}

/// Turns a chat-shaped request back into `/api/generate`'s: the last user message is
/// the prompt, a system message the system text.
fn generate_request(wire: WireRequest<'_>, generation: &Generation) -> Value {
    let mut body = serde_json::json!({"model": wire.model, "stream": wire.stream});
    let prompt = wire.messages.iter().rev().find(|m| m.role == "user");
    body["prompt"] = Value::from(prompt.map_or("", |m| m.content.as_str()));
    if let Some(images) = prompt.map(|m| &m.images).filter(|i| !i.is_empty()) {
        body["images"] = Value::from(images.clone());
    }
    if let Some(system) = wire.messages.iter().find(|m| m.role == "system") {
        body["system"] = Value::from(system.content.as_str());
    }
    if !wire.options.is_empty() {
        body["options"] = Value::Object(wire.options);
    }
    let optional = [
        ("format", wire.format),
        ("think", wire.think),
        ("keep_alive", wire.keep_alive.cloned()),
        ("suffix", generation.suffix.clone().map(Value::from)),
        ("template", generation.template.clone().map(Value::from)),
        ("context", generation.context.clone()),
        ("raw", generation.raw.then_some(Value::Bool(true))),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    body
}

fn wire_messages(messages: &[Message]) -> Result<Vec<WireMessage<'_>>, GatewayError> {
    let mut out = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let mut images = Vec::new();
        for image in message.images() {
            match image {
                Image::Base64 { data, .. } => images.push(data.as_str()),
                Image::Url(url) => {
                    return Err(GatewayError::bad_field(
                        "messages",
                        format!(
                            "messages[{index}] refers to the image URL {url}; an Ollama backend cannot fetch it and the gateway fetches nothing for clients: send the image inline as a data: URL"
                        ),
                    ))
                }
            }
        }
        let mut tool_calls = Vec::with_capacity(message.tool_calls.len());
        for call in &message.tool_calls {
            let arguments: Value = if call.arguments.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                serde_json::from_str(&call.arguments).map_err(|e| {
                    GatewayError::bad_field(
                        "messages",
                        format!("messages[{index}] has a tool call to {} whose arguments are not JSON: {e}", call.name),
                    )
                })?
            };
            let mut wire =
                serde_json::json!({"function": {"name": call.name, "arguments": arguments}});
            if let Some(id) = &call.id {
                wire["id"] = Value::from(id.as_str());
            }
            tool_calls.push(wire);
        }
        // OpenAI clients answer a call by id only; Ollama wants the tool's name.
        let tool_name = match (&message.tool_name, &message.tool_call_id) {
            (Some(name), _) => Some(name.as_str()),
            (None, Some(id)) => messages[..index].iter().rev().find_map(|earlier| {
                earlier
                    .tool_calls
                    .iter()
                    .find(|call| call.id.as_deref() == Some(id))
                    .map(|call| call.name.as_str())
            }),
            (None, None) => None,
        };
        out.push(WireMessage {
            role: match message.role {
                Role::Developer => "system",
                role => role.as_str(),
            },
            content: message.joined_text(),
            images,
            thinking: message.thinking.as_deref(),
            tool_calls,
            tool_name: if message.role == Role::Tool {
                tool_name
            } else {
                None
            },
            tool_call_id: message.tool_call_id.as_deref(),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct WireEmbed {
    #[serde(default)]
    embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    prompt_eval_count: u64,
}

#[derive(Deserialize)]
struct WireTags {
    #[serde(default)]
    models: Vec<WireTag>,
}

#[derive(Deserialize)]
struct WireTag {
    name: Option<String>,
    model: Option<String>,
    modified_at: Option<String>,
    size: Option<u64>,
    details: Option<Value>,
}

#[derive(Deserialize)]
struct WireLine<'a> {
    message: Option<WireLineMessage>,
    /// `/api/generate` lines carry text here instead.
    response: Option<String>,
    thinking: Option<String>,
    #[serde(default)]
    done: bool,
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    eval_count: u64,
    prompt_eval_duration: Option<u64>,
    eval_duration: Option<u64>,
    load_duration: Option<u64>,
    #[serde(borrow)]
    error: Option<ErrorField<'a>>,
}

#[derive(Deserialize)]
struct WireLineMessage {
    content: Option<String>,
    thinking: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

/// Decodes one NDJSON line into events; returns whether it was the last.
fn decode_line(
    backend: &str,
    line: &[u8],
    calls_sent: &mut usize,
    out: &mut Vec<Event>,
) -> Result<bool, GatewayError> {
    let line: WireLine<'_> =
        serde_json::from_slice(line).map_err(|e| GatewayError::UpstreamProtocol {
            backend: backend.to_owned(),
            detail: format!("a stream line is not an Ollama chat response: {e}"),
        })?;
    line_events(backend, line, calls_sent, out)
}

/// What one parsed line (or a whole answer) means; returns whether it was the last.
fn line_events(
    backend: &str,
    line: WireLine<'_>,
    calls_sent: &mut usize,
    out: &mut Vec<Event>,
) -> Result<bool, GatewayError> {
    if let Some(error) = line.error {
        return Err(error.into_error(backend));
    }
    let (content, thinking, tool_calls) = match line.message {
        Some(message) => (message.content, message.thinking, message.tool_calls),
        None => (line.response, line.thinking, None),
    };
    if let Some(thinking) = thinking.filter(|t| !t.is_empty()) {
        out.push(Event::Thinking(thinking));
    }
    if let Some(content) = content.filter(|c| !c.is_empty()) {
        out.push(Event::Text(content));
    }
    for call in tool_calls.into_iter().flatten().map(ToolCall::from) {
        out.push(Event::ToolCall(ToolCallDelta {
            index: *calls_sent,
            id: Some(call.id.unwrap_or_else(|| random_id("call_", 8))),
            name: Some(call.name),
            arguments: call.arguments,
        }));
        *calls_sent += 1;
    }
    if !line.done {
        return Ok(false);
    }
    let reason = match line.done_reason.as_deref() {
        Some("length") => FinishReason::Length,
        _ if *calls_sent > 0 => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    };
    out.push(Event::Finish(reason));
    out.push(Event::Usage(Usage {
        prompt_tokens: line.prompt_eval_count,
        completion_tokens: line.eval_count,
        prompt_eval_ns: line.prompt_eval_duration,
        eval_ns: line.eval_duration,
        load_ns: line.load_duration,
    }));
    Ok(true)
}

fn decode_stream(backend: String, body: super::upstream::UpstreamBody) -> EventStream {
    Box::pin(async_stream::stream! {
        let lines = ndjson_lines(body);
        futures::pin_mut!(lines);
        let mut calls_sent = 0;
        let mut events = Vec::new();
        while let Some(line) = lines.next().await {
            let line = match line {
                Ok(line) => line,
                Err(FramingError::Transport(e)) => {
                    yield Err(e);
                    return;
                }
                Err(FramingError::Invalid(detail)) => {
                    yield Err(GatewayError::UpstreamProtocol { backend: backend.clone(), detail });
                    return;
                }
            };
            let last = decode_line(&backend, &line, &mut calls_sent, &mut events);
            match last {
                Err(e) => {
                    yield Err(e);
                    return;
                }
                Ok(last) => {
                    for event in events.drain(..) {
                        yield Ok(event);
                    }
                    if last {
                        super::drain(lines).await;
                        return;
                    }
                }
            }
        }
        yield Err(GatewayError::UpstreamProtocol {
            backend: backend.clone(),
            detail: "the stream ended without its done line".to_owned(),
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_at_offsets_are_honoured() {
        let utc = unix_seconds("2025-05-05T00:37:44Z").unwrap();
        assert_eq!(
            unix_seconds("2025-05-04T17:37:44.706015396-07:00"),
            Some(utc)
        );
        assert_eq!(unix_seconds("2025-05-05T02:37:44+02:00"), Some(utc));
        assert_eq!(unix_seconds("2025-05-05T00:37:44.2Z"), Some(utc));
        assert_eq!(unix_seconds("yesterday"), None);
    }
}
