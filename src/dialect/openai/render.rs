//! Writing canonical answers as OpenAI Chat Completions: one `chat.completion` body,
//! `chat.completion.chunk` SSE events, and the error object
//! `{"error":{"message","type","param","code"}}` in a body or as the event that ends a
//! failed stream.

use actix_web::HttpResponse;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::{json, Value};

use crate::chat::{random_id, Completion, Event, FinishReason, ToolCall, Usage};
use crate::dialect::{error_response, unix_now, StreamRenderer};
use crate::error::GatewayError;
use crate::framing::{write_json, write_sse, SSE_DONE};

#[derive(Serialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for WireUsage {
    fn from(usage: Usage) -> Self {
        WireUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
        }
    }
}

fn wire_tool_calls(calls: &[ToolCall]) -> Vec<Value> {
    calls
        .iter()
        .map(|call| {
            json!({
                "id": call.id.as_deref().map_or_else(|| random_id("call_", 24), str::to_owned),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })
        })
        .collect()
}

/// Renders a whole answer as one `chat.completion`.
pub fn render_completion<'a>(model: &'a str, completion: &'a Completion) -> impl Serialize + 'a {
    let message = WholeMessage {
        role: "assistant",
        // OpenAI sends null content beside tool calls.
        content: (!completion.text.is_empty() || completion.tool_calls.is_empty())
            .then_some(completion.text.as_str()),
        reasoning_content: (!completion.thinking.is_empty())
            .then_some(completion.thinking.as_str()),
        tool_calls: wire_tool_calls(&completion.tool_calls),
    };
    WholeAnswer {
        id: random_id("chatcmpl-", 24),
        object: "chat.completion",
        created: unix_now(),
        model,
        choices: [WholeChoice {
            index: 0,
            message,
            logprobs: None,
            finish_reason: completion.effective_finish().as_openai(),
        }],
        usage: WireUsage::from(completion.usage.unwrap_or_default()),
    }
}

#[derive(Serialize)]
struct WholeAnswer<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [WholeChoice<'a>; 1],
    usage: WireUsage,
}

#[derive(Serialize)]
struct WholeChoice<'a> {
    index: u32,
    message: WholeMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct WholeMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Value>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ChunkToolCall<'a>; 1]>,
}

#[derive(Serialize)]
struct ChunkToolCall<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: ChunkFunction<'a>,
}

#[derive(Serialize)]
struct ChunkFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// Renders events as `chat.completion.chunk` SSE events, the way OpenAI's own stream
/// reads: `role` once, each tool call's `id`, `type` and `name` once, contiguous indices,
/// `finish_reason` in its own chunk, usage only when asked for, then `[DONE]`.
pub struct SseRenderer {
    /// `{"id":…,"object":…,"created":…,"model":…,"choices":[`: the same in every chunk
    /// of the stream, so written once rather than escaped again for each token.
    head: Bytes,
    include_usage: bool,
    role_sent: bool,
    finish_sent: bool,
    /// Upstream tool-call index to our contiguous index, in order of first sight.
    tool_indices: Vec<usize>,
    usage: Option<Usage>,
}

impl SseRenderer {
    /// A renderer naming the model as the client asked for it.
    pub fn new(model: String, include_usage: bool) -> SseRenderer {
        let mut head = BytesMut::new();
        write_json(
            &mut head,
            &Chunk {
                id: &random_id("chatcmpl-", 24),
                object: "chat.completion.chunk",
                created: unix_now(),
                model: &model,
                choices: &[],
                usage: None,
            },
        );
        // `…,"choices":[]}` becomes `…,"choices":[`, for each chunk's choice to follow.
        head.truncate(head.len() - b"]}".len());
        SseRenderer {
            head: head.freeze(),
            include_usage,
            role_sent: false,
            finish_sent: false,
            tool_indices: Vec::new(),
            usage: None,
        }
    }

    fn write(&mut self, out: &mut BytesMut, mut delta: Delta<'_>, finish: Option<&'static str>) {
        if !self.role_sent {
            delta.role = Some("assistant");
            self.role_sent = true;
        }
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.head);
        write_json(out, &choice);
        out.extend_from_slice(b"]}\n\n");
    }

    fn finish(&mut self, reason: FinishReason, out: &mut BytesMut) {
        if self.finish_sent {
            return;
        }
        if !self.role_sent {
            self.write(
                out,
                Delta {
                    content: Some(""),
                    ..Delta::default()
                },
                None,
            );
        }
        let reason = match reason {
            FinishReason::Stop if !self.tool_indices.is_empty() => FinishReason::ToolCalls,
            reason => reason,
        };
        self.finish_sent = true;
        self.write(out, Delta::default(), Some(reason.as_openai()));
    }
}

impl StreamRenderer for SseRenderer {
    fn event(&mut self, event: Event, out: &mut BytesMut) {
        match event {
            Event::Text(text) => self.write(
                out,
                Delta {
                    content: Some(&text),
                    ..Delta::default()
                },
                None,
            ),
            Event::Thinking(text) => self.write(
                out,
                Delta {
                    reasoning_content: Some(&text),
                    ..Delta::default()
                },
                None,
            ),
            Event::ToolCall(call) => {
                let (index, first) = match self.tool_indices.iter().position(|&i| i == call.index) {
                    Some(index) => (index, false),
                    None => {
                        self.tool_indices.push(call.index);
                        (self.tool_indices.len() - 1, true)
                    }
                };
                let generated;
                let id = if first {
                    generated = call.id.clone().unwrap_or_else(|| random_id("call_", 24));
                    Some(generated.as_str())
                } else {
                    None
                };
                let tool_call = ChunkToolCall {
                    index,
                    id,
                    kind: first.then_some("function"),
                    function: ChunkFunction {
                        name: if first {
                            Some(call.name.as_deref().unwrap_or(""))
                        } else {
                            None
                        },
                        arguments: &call.arguments,
                    },
                };
                self.write(
                    out,
                    Delta {
                        tool_calls: Some([tool_call]),
                        ..Delta::default()
                    },
                    None,
                );
            }
            Event::Finish(reason) => self.finish(reason, out),
            Event::Usage(usage) => self.usage = Some(usage),
            // Only the server that made it reads a signature back; OpenAI has no field,
            // nor one for which stop sequence ended the answer.
            Event::ThinkingSignature(_) | Event::StopSequence(_) | Event::PromptTokens(_) => {}
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        self.finish(FinishReason::Stop, out);
        if self.include_usage {
            // The head with no choices, then the usage: `…,"choices":[],"usage":{…}}`.
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&self.head);
            out.extend_from_slice(b"],\"usage\":");
            write_json(out, &WireUsage::from(self.usage.unwrap_or_default()));
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(SSE_DONE);
    }

    fn error(&mut self, error: &GatewayError, out: &mut BytesMut) {
        write_sse(out, &json!({ "error": error_object(error) }));
    }
}

/// One `/v1/models` entry.
pub fn model_object(id: &str, created: u64, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

/// The OpenAI error object: `{"message","type","param","code"}`.
pub fn error_object(error: &GatewayError) -> Value {
    let (kind, code): (&str, Option<&str>) = match error {
        GatewayError::BadRequest { .. }
        | GatewayError::RouteNotFound { .. }
        | GatewayError::PayloadTooLarge { .. }
        | GatewayError::ClientGone => ("invalid_request_error", None),
        GatewayError::Unauthorized { .. } | GatewayError::KeyRefused { .. } => {
            ("invalid_request_error", Some("invalid_api_key"))
        }
        GatewayError::Forbidden { code, .. } => ("permission_error", Some(*code)),
        GatewayError::RateLimited { .. } => ("rate_limit_error", Some("rate_limit_exceeded")),
        GatewayError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
        GatewayError::UpstreamTimeout { .. } => ("server_error", Some("timeout")),
        GatewayError::UpstreamUnreachable { .. } | GatewayError::UpstreamProtocol { .. } => {
            ("server_error", None)
        }
        GatewayError::UpstreamStatus {
            status, kind, code, ..
        } => (
            kind.as_deref().unwrap_or_else(|| type_for_status(*status)),
            code.as_deref(),
        ),
    };
    let param = match error {
        GatewayError::BadRequest { param, .. } => param.as_deref(),
        _ => None,
    };
    json!({"message": error.to_string(), "type": kind, "param": param, "code": code})
}

/// The OpenAI `type` that goes with a status when the upstream named none.
fn type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// The whole error answer: `{"error": {...}}` with the error's status.
pub fn render_error(error: &GatewayError) -> HttpResponse {
    error_response(error).body(json!({ "error": error_object(error) }).to_string())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::chat::samples::{tool_call as delta, usage};

    /// The JSON of each SSE event, `[DONE]` as a string.
    fn events(out: &[u8]) -> Vec<Value> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let data = event.strip_prefix("data: ").unwrap();
                serde_json::from_str(data).unwrap_or_else(|_| Value::from(data))
            })
            .collect()
    }

    fn stream(include_usage: bool, input: Vec<Event>) -> Vec<Value> {
        let mut renderer = SseRenderer::new("oa/m".into(), include_usage);
        let mut out = BytesMut::new();
        for event in input {
            renderer.event(event, &mut out);
        }
        renderer.end(&mut out);
        events(&out)
    }

    #[test]
    fn whole_answer() {
        let completion = Completion {
            text: "Hello".into(),
            thinking: "hmm".into(),
            finish_reason: Some(FinishReason::Length),
            usage: Some(usage()),
            ..Completion::default()
        };
        let value = serde_json::to_value(render_completion("oa/m", &completion)).unwrap();
        assert!(value["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(value["object"], "chat.completion");
        assert_eq!(value["model"], "oa/m");
        assert!(value["created"].as_u64().unwrap() > 0);
        assert_eq!(
            value["choices"],
            json!([{"index": 0, "logprobs": null, "finish_reason": "length",
                    "message": {"role": "assistant", "content": "Hello", "reasoning_content": "hmm"}}])
        );
        assert_eq!(
            value["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})
        );
    }

    #[test]
    fn whole_answer_with_tool_calls() {
        let completion = Completion {
            tool_calls: vec![ToolCall {
                id: Some("call_1".into()),
                name: "f".into(),
                arguments: "{\"a\":1}".into(),
            }],
            ..Completion::default()
        };
        let value = serde_json::to_value(render_completion("m", &completion)).unwrap();
        let choice = &value["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(
            choice["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]})
        );
        assert_eq!(value["usage"]["total_tokens"], 0);
    }

    #[test]
    fn stream_chunk_sequence() {
        let chunks = stream(
            false,
            vec![
                Event::Thinking("hm".into()),
                Event::Text("Hel".into()),
                Event::Text("lo".into()),
                Event::Usage(usage()),
                Event::Finish(FinishReason::Stop),
            ],
        );
        assert_eq!(chunks.len(), 5, "{chunks:?}");
        let deltas: Vec<&Value> = chunks[..4]
            .iter()
            .map(|c| &c["choices"][0]["delta"])
            .collect();
        // `role` once, in the first chunk only.
        assert_eq!(
            *deltas[0],
            json!({"role": "assistant", "reasoning_content": "hm"})
        );
        assert_eq!(*deltas[1], json!({"content": "Hel"}));
        assert_eq!(*deltas[2], json!({"content": "lo"}));
        // The finish in its own chunk, with an empty delta.
        assert_eq!(*deltas[3], json!({}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert!(chunks[..3]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));
        // One id and one `created` for the whole stream; no usage unless asked for.
        for chunk in &chunks[..4] {
            assert_eq!(chunk["id"], chunks[0]["id"]);
            assert_eq!(chunk["created"], chunks[0]["created"]);
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "oa/m");
            assert!(chunk.get("usage").is_none());
        }
        assert_eq!(chunks[4], "[DONE]");
    }

    #[test]
    fn usage_chunk_when_asked_for() {
        let chunks = stream(true, vec![Event::Text("a".into()), Event::Usage(usage())]);
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        // A stream that ended without a finish reason says `stop`.
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[2]["choices"], json!([]));
        assert_eq!(
            chunks[2]["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})
        );
        assert_eq!(chunks[2]["id"], chunks[0]["id"]);
        assert_eq!(chunks[3], "[DONE]");
        // An empty stream still opens with the role and finishes.
        let empty = stream(false, Vec::new());
        assert_eq!(
            empty[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(empty[1]["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn stream_tool_calls() {
        let chunks = stream(
            false,
            vec![
                delta(0, Some("call_a"), Some("get_weather"), ""),
                delta(0, None, None, "{\"city\":"),
                delta(5, None, Some("get_time"), "{}"),
                delta(0, None, None, "\"Tokyo\"}"),
                Event::Finish(FinishReason::Stop),
            ],
        );
        let calls: Vec<&Value> = chunks[..4]
            .iter()
            .map(|c| &c["choices"][0]["delta"]["tool_calls"][0])
            .collect();
        assert_eq!(
            *calls[0],
            json!({"index": 0, "id": "call_a", "type": "function",
                   "function": {"name": "get_weather", "arguments": ""}})
        );
        assert_eq!(
            *calls[1],
            json!({"index": 0, "function": {"arguments": "{\"city\":"}})
        );
        // Upstream index 5 is this stream's second call; a call without an id gets one.
        assert_eq!(calls[2]["index"], 1);
        assert!(calls[2]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(calls[2]["function"]["name"], "get_time");
        assert_eq!(
            *calls[3],
            json!({"index": 0, "function": {"arguments": "\"Tokyo\"}"}})
        );
        // A `stop` after tool calls is reported as `tool_calls`.
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn error_event_and_body() {
        let mut renderer = SseRenderer::new("m".into(), true);
        let mut out = BytesMut::new();
        renderer.event(Event::Text("a".into()), &mut out);
        let error = GatewayError::UpstreamStatus {
            backend: "oa".into(),
            status: 429,
            message: "slow down".into(),
            kind: None,
            code: None,
            retry_after: Some("7".into()),
        };
        renderer.error(&error, &mut out);
        let chunks = events(&out);
        assert_eq!(chunks.len(), 2);
        // The error ends the stream: no finish, no usage, no `[DONE]`.
        assert_eq!(
            chunks[1],
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": null}})
        );
        let response = render_error(&error);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers().get("retry-after").unwrap(), "7");
        let bad = GatewayError::bad_field("n", "n must be 1");
        assert_eq!(
            error_object(&bad),
            json!({"message": "n must be 1", "type": "invalid_request_error", "param": "n", "code": null})
        );
        assert_eq!(
            error_object(&GatewayError::Unauthorized { missing: false })["code"],
            "invalid_api_key"
        );
        assert_eq!(
            error_object(&GatewayError::ModelNotFound("x".into()))["code"],
            "model_not_found"
        );
        let timeout = GatewayError::UpstreamTimeout {
            backend: "b".into(),
            detail: "slow".into(),
        };
        assert_eq!(
            (
                error_object(&timeout)["type"].clone(),
                error_object(&timeout)["code"].clone()
            ),
            (json!("server_error"), json!("timeout"))
        );
    }
}
