//! Writing canonical answers as Anthropic Messages: one `message` body, the named SSE
//! events of a stream (`message_start`, a `content_block_start` / `_delta` / `_stop`
//! run per block, `message_delta`, `message_stop`, `ping` while the upstream is
//! silent), and the error object `{"type":"error","error":{"type","message"}}` in a
//! body or as the `error` event that ends a failed stream.

use std::time::Duration;

use actix_web::HttpResponse;
use bytes::BytesMut;
use serde::Serialize;
use serde_json::{json, Value};

use crate::chat::{random_id, Completion, Event, FinishReason, ToolCallDelta, Usage};
use crate::dialect::{error_response, StreamRenderer};
use crate::error::GatewayError;
use crate::framing::write_json;

/// How long a stream may stay silent before a `ping` goes out: clients and proxies
/// drop connections that carry nothing for long, and a local model loading its weights
/// or reading a long prompt can take minutes before its first token.
pub const PING_AFTER: Duration = Duration::from_secs(10);

/// Anthropic's `stop_reason`, from the canonical finish reason.
fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

#[derive(Serialize)]
struct WireUsage {
    input_tokens: u64,
    output_tokens: u64,
}

impl From<Usage> for WireUsage {
    fn from(usage: Usage) -> Self {
        WireUsage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        }
    }
}

/// A tool call's id as the client sees it: the upstream's, or a new `toolu_` one.
fn tool_id(id: Option<&str>) -> String {
    id.map_or_else(|| random_id("toolu_", 24), str::to_owned)
}

/// Renders a whole answer as one `message`: its thinking, text and tool calls as
/// content blocks in that order, each call's arguments parsed into its `input`.
pub fn render_completion(model: &str, completion: &Completion) -> Result<Value, GatewayError> {
    let finish = completion.effective_finish();
    // `stop_sequence` only where the upstream said which one; OpenAI-style and Ollama
    // servers stop on a sequence without saying so, which reads as `end_turn`.
    let stop_sequence = completion
        .stop_sequence
        .as_deref()
        .filter(|_| finish == FinishReason::Stop);
    let mut content = Vec::new();
    if !completion.thinking.is_empty() {
        content.push(json!({"type": "thinking", "thinking": completion.thinking,
                            "signature": completion.thinking_signature}));
    }
    if !completion.text.is_empty() || completion.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": completion.text}));
    }
    for call in &completion.tool_calls {
        let input = if call.arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str::<Value>(&call.arguments).map_err(|e| {
                GatewayError::UpstreamProtocol {
                    backend: model.to_owned(),
                    detail: format!(
                        "the arguments of the call to {} are not JSON ({e}): {}",
                        call.name, call.arguments
                    ),
                }
            })?
        };
        content.push(json!({
            "type": "tool_use",
            "id": tool_id(call.id.as_deref()),
            "name": call.name,
            "input": input,
        }));
    }
    Ok(json!({
        "id": random_id("msg_", 24),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_sequence.map_or(stop_reason(finish), |_| "stop_sequence"),
        "stop_sequence": stop_sequence,
        "usage": WireUsage::from(completion.usage.unwrap_or_default()),
    }))
}

/// Anthropic's error `type` for an error.
fn error_type(error: &GatewayError) -> &'static str {
    match error {
        GatewayError::BadRequest { .. } | GatewayError::ClientGone => "invalid_request_error",
        GatewayError::Unauthorized { .. } | GatewayError::KeyRefused { .. } => {
            "authentication_error"
        }
        GatewayError::Forbidden { .. } => "permission_error",
        GatewayError::RateLimited { .. } => "rate_limit_error",
        GatewayError::ModelNotFound(_) | GatewayError::RouteNotFound { .. } => "not_found_error",
        GatewayError::PayloadTooLarge { .. } => "request_too_large",
        GatewayError::UpstreamUnreachable { .. }
        | GatewayError::UpstreamTimeout { .. }
        | GatewayError::UpstreamProtocol { .. } => "api_error",
        GatewayError::UpstreamStatus { status, kind, .. } => match kind.as_deref() {
            // An Anthropic upstream's own type passes through.
            Some(
                kind @ ("invalid_request_error"
                | "authentication_error"
                | "billing_error"
                | "permission_error"
                | "not_found_error"
                | "request_too_large"
                | "rate_limit_error"
                | "api_error"
                | "overloaded_error"),
            ) => error_type_name(kind),
            _ => type_for_status(*status),
        },
    }
}

/// The static name of a known type (the match above proved it is one).
fn error_type_name(kind: &str) -> &'static str {
    [
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    ]
    .into_iter()
    .find(|known| *known == kind)
    .unwrap_or("api_error")
}

/// The type that goes with an upstream's status when it named none Anthropic knows.
fn type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The error object `{"type":"error","error":{"type","message"}}`.
fn error_body(error: &GatewayError) -> Value {
    json!({"type": "error", "error": {"type": error_type(error), "message": error.to_string()}})
}

/// The whole error answer, with the error's status.
pub fn render_error(error: &GatewayError) -> HttpResponse {
    error_response(error).body(error_body(error).to_string())
}

/// Appends one named SSE event, `event: NAME\ndata: JSON\n\n`.
fn write_event<T: Serialize>(out: &mut BytesMut, name: &str, value: &T) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    write_json(out, value);
    out.extend_from_slice(b"\n\n");
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    delta: Delta<'a>,
}

/// What a `content_block_delta` adds to its block.
#[derive(Serialize)]
#[serde(tag = "type")]
enum Delta<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
}

/// The content block open in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    /// A tool call, by its index in the canonical stream.
    Tool(usize),
}

/// Renders events as Anthropic's stream: `message_start` with the first event, then
/// one block per run of thinking, of text, or per tool call, each opened, filled with
/// deltas and closed in turn (Anthropic's blocks never interleave), then
/// `message_delta` with the stop reason and the token counts, and `message_stop`.
pub struct SseRenderer {
    id: String,
    model: String,
    started: bool,
    open: Option<Block>,
    /// The index the next block gets.
    next_index: usize,
    /// Canonical tool-call indices whose block was opened.
    tools: Vec<usize>,
    finish: Option<FinishReason>,
    /// The stop sequence the upstream stopped on, where it said which.
    stop_sequence: Option<String>,
    /// The prompt's tokens where the upstream said them before its answer.
    prompt_tokens: Option<u64>,
    usage: Option<Usage>,
    /// Nothing more is written: an error event ended the stream.
    ended: bool,
    failed: bool,
}

impl SseRenderer {
    /// A renderer naming the model as the client asked for it.
    pub fn new(model: String) -> SseRenderer {
        SseRenderer {
            id: random_id("msg_", 24),
            model,
            started: false,
            open: None,
            next_index: 0,
            tools: Vec::new(),
            finish: None,
            stop_sequence: None,
            prompt_tokens: None,
            usage: None,
            ended: false,
            failed: false,
        }
    }

    /// Writes `message_start` once, with the input tokens when they are already known.
    fn start(&mut self, out: &mut BytesMut) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let usage = WireUsage {
            input_tokens: self
                .usage
                .map(|usage| usage.prompt_tokens)
                .or(self.prompt_tokens)
                .unwrap_or(0),
            output_tokens: 0,
        };
        write_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage,
            }}),
        );
    }

    fn close(&mut self, out: &mut BytesMut) {
        if self.open.take().is_some() {
            write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next_index - 1}),
            );
        }
    }

    /// Opens `block` unless it is the one open, closing the one before.
    fn open(&mut self, block: Block, content_block: Value, out: &mut BytesMut) {
        if self.open == Some(block) {
            return;
        }
        self.close(out);
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next_index, "content_block": content_block}),
        );
        self.open = Some(block);
        self.next_index += 1;
    }

    /// A delta to the open block, written from borrows: one per token, the hot path.
    fn delta(&self, delta: Delta<'_>, out: &mut BytesMut) {
        write_event(
            out,
            "content_block_delta",
            &BlockDelta {
                kind: "content_block_delta",
                index: self.next_index - 1,
                delta,
            },
        );
    }

    fn tool_call(&mut self, call: ToolCallDelta, out: &mut BytesMut) {
        if self.open == Some(Block::Tool(call.index)) {
            if !call.arguments.is_empty() {
                self.delta(
                    Delta::InputJson {
                        partial_json: &call.arguments,
                    },
                    out,
                );
            }
            return;
        }
        if self.tools.contains(&call.index) {
            // More of a call whose block is closed: Anthropic's stream cannot reopen it.
            let error = GatewayError::UpstreamProtocol {
                backend: self.model.clone(),
                detail: "the upstream interleaved the arguments of several tool calls, which an Anthropic stream cannot carry; ask without streaming".to_owned(),
            };
            self.error(&error, out);
            self.failed = true;
            return;
        }
        self.tools.push(call.index);
        let block = json!({
            "type": "tool_use",
            "id": tool_id(call.id.as_deref()),
            "name": call.name.as_deref().unwrap_or(""),
            "input": {},
        });
        self.open(Block::Tool(call.index), block, out);
        if !call.arguments.is_empty() {
            self.delta(
                Delta::InputJson {
                    partial_json: &call.arguments,
                },
                out,
            );
        }
    }
}

impl StreamRenderer for SseRenderer {
    const IDLE_AFTER: Option<Duration> = Some(PING_AFTER);

    fn event(&mut self, event: Event, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        match event {
            Event::Usage(usage) => {
                self.usage = Some(usage);
                return;
            }
            // Known before the first token, shown in `message_start`.
            Event::PromptTokens(tokens) => {
                self.prompt_tokens = Some(tokens);
                return;
            }
            _ => {}
        }
        self.start(out);
        match event {
            Event::Text(text) if !text.is_empty() => {
                self.open(Block::Text, json!({"type": "text", "text": ""}), out);
                self.delta(Delta::Text { text: &text }, out);
            }
            Event::Thinking(text) if !text.is_empty() => {
                self.open(
                    Block::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
                self.delta(Delta::Thinking { thinking: &text }, out);
            }
            Event::ThinkingSignature(signature) => {
                // A signature belongs to the thinking block it ends.
                if self.open == Some(Block::Thinking) && !signature.is_empty() {
                    self.delta(
                        Delta::Signature {
                            signature: &signature,
                        },
                        out,
                    );
                }
            }
            Event::ToolCall(call) => self.tool_call(call, out),
            Event::Finish(reason) => self.finish = Some(reason),
            Event::StopSequence(sequence) => self.stop_sequence = Some(sequence),
            Event::Text(_) | Event::Thinking(_) | Event::Usage(_) | Event::PromptTokens(_) => {}
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.start(out);
        self.close(out);
        let reason = match self.finish.unwrap_or(FinishReason::Stop) {
            FinishReason::Stop if !self.tools.is_empty() => FinishReason::ToolCalls,
            reason => reason,
        };
        let usage = self.usage.unwrap_or_default();
        let stop_sequence = self
            .stop_sequence
            .as_deref()
            .filter(|_| reason == FinishReason::Stop);
        write_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_sequence.map_or(stop_reason(reason), |_| "stop_sequence"), "stop_sequence": stop_sequence},
                    "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}}),
        );
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.ended = true;
    }

    fn error(&mut self, error: &GatewayError, out: &mut BytesMut) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        write_event(out, "error", &error_body(error));
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn idle(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.start(out);
        write_event(out, "ping", &json!({"type": "ping"}));
    }
}

/// One model in Anthropic's listing shape.
pub fn model_object(id: &str, created: u64) -> Value {
    let created_at = std::time::UNIX_EPOCH + Duration::from_secs(created);
    json!({
        "type": "model",
        "id": id,
        "display_name": id,
        "created_at": humantime::format_rfc3339_seconds(created_at).to_string(),
    })
}

/// A listing: `data`, `has_more` (never: one page holds all), `first_id`, `last_id`.
pub fn model_list(models: Vec<Value>) -> Value {
    let first = models.first().map(|model| model["id"].clone());
    let last = models.last().map(|model| model["id"].clone());
    json!({"data": models, "has_more": false, "first_id": first, "last_id": last})
}

/// `{"input_tokens": N}`.
pub fn token_count(tokens: u64) -> Value {
    json!({ "input_tokens": tokens })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;

    use super::*;
    use crate::chat::samples::{tool_call as call, usage};
    use crate::chat::ToolCall;

    /// Each event of a stream: its name and its data.
    pub fn events(out: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let (name, data) = event.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], name.as_str(), "the data names its event");
                (name, data)
            })
            .collect()
    }

    fn stream(input: Vec<Event>) -> Vec<(String, Value)> {
        let mut renderer = SseRenderer::new("m".into());
        let mut out = BytesMut::new();
        for event in input {
            renderer.event(event, &mut out);
        }
        renderer.end(&mut out);
        events(&out)
    }

    #[test]
    fn whole_answer_blocks_in_order() {
        let completion = Completion {
            text: "Hello".into(),
            thinking: "hmm".into(),
            thinking_signature: "c2ln".into(),
            tool_calls: vec![ToolCall {
                id: Some("call_1".into()),
                name: "f".into(),
                arguments: Cow::Borrowed("{\"a\":1}"),
            }],
            finish_reason: Some(FinishReason::Stop),
            // Tool calls outrank a stop sequence as the reason given.
            stop_sequence: Some("END".into()),
            usage: Some(usage()),
        };
        let value = render_completion("m", &completion).unwrap();
        assert!(value["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(value["type"], "message");
        assert_eq!(value["role"], "assistant");
        assert_eq!(value["model"], "m");
        assert_eq!(
            value["content"],
            json!([
                {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}
            ])
        );
        assert_eq!(value["stop_reason"], "tool_use");
        assert_eq!(value["stop_sequence"], Value::Null);
        assert_eq!(
            value["usage"],
            json!({"input_tokens": 7, "output_tokens": 5})
        );
        let stopped = Completion {
            finish_reason: Some(FinishReason::Stop),
            stop_sequence: Some("END".into()),
            ..Completion::default()
        };
        let value = render_completion("m", &stopped).unwrap();
        assert_eq!(value["stop_reason"], "stop_sequence");
        assert_eq!(value["stop_sequence"], "END");
        for (reason, name) in [
            (FinishReason::Stop, "end_turn"),
            (FinishReason::Length, "max_tokens"),
            (FinishReason::ContentFilter, "refusal"),
        ] {
            let completion = Completion {
                finish_reason: Some(reason),
                ..Completion::default()
            };
            let value = render_completion("m", &completion).unwrap();
            assert_eq!(value["stop_reason"], name);
            // An empty answer still has its one (empty) text block.
            assert_eq!(value["content"], json!([{"type": "text", "text": ""}]));
        }
        let broken = Completion {
            tool_calls: vec![ToolCall {
                id: None,
                name: "f".into(),
                arguments: Cow::Borrowed("{not json"),
            }],
            ..Completion::default()
        };
        assert!(matches!(
            render_completion("m", &broken),
            Err(GatewayError::UpstreamProtocol { .. })
        ));
    }

    #[test]
    fn stream_blocks_open_fill_and_close_in_turn() {
        let events = stream(vec![
            Event::Thinking("hm".into()),
            Event::ThinkingSignature("c2ln".into()),
            Event::Text("Hel".into()),
            // A signature with no thinking block open has nowhere to go.
            Event::ThinkingSignature("stray".into()),
            Event::Text("lo".into()),
            call(0, Some("call_a"), Some("get_weather"), ""),
            call(0, None, None, "{\"city\":"),
            call(0, None, None, "\"Tokyo\"}"),
            call(1, None, Some("get_time"), "{}"),
            Event::Finish(FinishReason::Stop),
            Event::Usage(usage()),
        ]);
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let message = &events[0].1["message"];
        assert!(message["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(message["model"], "m");
        assert_eq!(message["content"], json!([]));
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "hm"})
        );
        assert_eq!(
            events[3].1["delta"],
            json!({"type": "signature_delta", "signature": "c2ln"})
        );
        assert_eq!(events[5].1["index"], 1);
        assert_eq!(
            events[7].1["delta"],
            json!({"type": "text_delta", "text": "lo"})
        );
        assert_eq!(
            events[9].1["content_block"],
            json!({"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}})
        );
        assert_eq!(
            events[11].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "\"Tokyo\"}"})
        );
        assert_eq!(events[13].1["index"], 3);
        assert!(events[13].1["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_"));
        assert_eq!(
            events[16].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"input_tokens": 7, "output_tokens": 5}})
        );
        // An empty stream is still a whole message.
        let names: Vec<String> = stream(vec![]).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
        let length = stream(vec![
            Event::Text("a".into()),
            Event::Finish(FinishReason::Length),
        ]);
        assert_eq!(length[4].1["delta"]["stop_reason"], "max_tokens");
    }

    #[test]
    fn errors_end_the_stream_and_pings_fill_silence() {
        let mut renderer = SseRenderer::new("m".into());
        let mut out = BytesMut::new();
        renderer.idle(&mut out);
        renderer.event(Event::Text("a".into()), &mut out);
        renderer.idle(&mut out);
        let error = GatewayError::UpstreamStatus {
            backend: "b".into(),
            status: 529,
            message: "busy".into(),
            kind: None,
            code: None,
            retry_after: None,
        };
        renderer.error(&error, &mut out);
        renderer.event(Event::Text("late".into()), &mut out);
        renderer.end(&mut out);
        renderer.idle(&mut out);
        let names: Vec<String> = events(&out).into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "ping",
                "error"
            ]
        );
        assert_eq!(
            events(&out)[5].1,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
        assert!(!renderer.failed());
        // A call continued after its block closed cannot be written: the stream fails.
        let mut renderer = SseRenderer::new("m".into());
        let mut out = BytesMut::new();
        renderer.event(call(0, Some("a"), Some("f"), "{"), &mut out);
        renderer.event(call(1, Some("b"), Some("g"), "{}"), &mut out);
        renderer.event(call(0, None, None, "}"), &mut out);
        renderer.end(&mut out);
        assert!(renderer.failed());
        let last = events(&out).pop().unwrap();
        assert_eq!(last.0, "error");
        assert_eq!(last.1["error"]["type"], "api_error");
    }

    #[test]
    fn error_types_and_statuses() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::bad_request("x"), 400, "invalid_request_error"),
            (
                GatewayError::Unauthorized { missing: true },
                401,
                "authentication_error",
            ),
            (
                GatewayError::Forbidden {
                    message: "no".into(),
                    code: "model_not_allowed",
                },
                403,
                "permission_error",
            ),
            (
                GatewayError::ModelNotFound("x".into()),
                404,
                "not_found_error",
            ),
            (
                GatewayError::PayloadTooLarge { limit: 1 },
                413,
                "request_too_large",
            ),
            (
                GatewayError::RateLimited {
                    message: "slow".into(),
                    retry_after_secs: 3,
                    tokens: false,
                },
                429,
                "rate_limit_error",
            ),
            (
                GatewayError::UpstreamUnreachable {
                    backend: "b".into(),
                    detail: "d".into(),
                },
                502,
                "api_error",
            ),
            (
                GatewayError::UpstreamTimeout {
                    backend: "b".into(),
                    detail: "d".into(),
                },
                504,
                "api_error",
            ),
        ];
        for (error, status, kind) in cases {
            let response = render_error(&error);
            assert_eq!(response.status().as_u16(), status, "{error}");
            assert_eq!(error_body(&error)["error"]["type"], kind, "{error}");
            assert_eq!(error_body(&error)["type"], "error");
        }
        let upstream = |status: u16, kind: Option<&str>| GatewayError::UpstreamStatus {
            backend: "b".into(),
            status,
            message: "m".into(),
            kind: kind.map(str::to_owned),
            code: None,
            retry_after: None,
        };
        assert_eq!(
            error_type(&upstream(500, Some("server_error"))),
            "api_error"
        );
        assert_eq!(error_type(&upstream(503, None)), "overloaded_error");
        assert_eq!(error_type(&upstream(422, None)), "invalid_request_error");
        assert_eq!(
            error_type(&upstream(529, Some("overloaded_error"))),
            "overloaded_error"
        );
        assert_eq!(
            error_type(&upstream(500, Some("billing_error"))),
            "billing_error"
        );
        let limited = GatewayError::RateLimited {
            message: "slow".into(),
            retry_after_secs: 3,
            tokens: true,
        };
        assert_eq!(
            render_error(&limited).headers().get("retry-after").unwrap(),
            "3"
        );
    }

    #[test]
    fn listings() {
        let list = model_list(vec![model_object("a/b", 0), model_object("echo", 86400)]);
        assert_eq!(
            list,
            json!({"data": [
                {"type": "model", "id": "a/b", "display_name": "a/b", "created_at": "1970-01-01T00:00:00Z"},
                {"type": "model", "id": "echo", "display_name": "echo", "created_at": "1970-01-02T00:00:00Z"}],
                "has_more": false, "first_id": "a/b", "last_id": "echo"})
        );
        assert_eq!(
            model_list(vec![]),
            json!({"data": [], "has_more": false, "first_id": null, "last_id": null})
        );
    }

    /// What a client reassembles from a stream: thinking, text, each tool call's
    /// `(id, name, input text)`, the stop reason, and the usage of `message_delta`.
    #[derive(Debug, Default, PartialEq)]
    pub struct Reassembled {
        pub thinking: String,
        pub text: String,
        pub calls: Vec<(String, String, String)>,
        pub stop_reason: Option<String>,
        pub usage: Option<(u64, u64)>,
        pub stopped: bool,
    }

    /// Reads a stream as a client does, event by event, after cutting it into network
    /// reads at `cuts`: the SSE decoder puts each event back together.
    fn reassemble(bytes: &[u8], cuts: &[usize]) -> Reassembled {
        let mut pieces = Vec::new();
        let mut last = 0;
        for &cut in cuts {
            pieces.push(Ok::<_, std::convert::Infallible>(
                bytes::Bytes::copy_from_slice(&bytes[last..cut]),
            ));
            last = cut;
        }
        pieces.push(Ok(bytes::Bytes::copy_from_slice(&bytes[last..])));
        let datas: Vec<Value> = futures::executor::block_on(futures::StreamExt::collect::<Vec<_>>(
            crate::framing::sse_data(futures::stream::iter(pieces)),
        ))
        .into_iter()
        .map(|data| serde_json::from_slice(&data.unwrap()).unwrap())
        .collect();
        let mut out = Reassembled::default();
        let mut kinds: Vec<String> = Vec::new();
        for data in datas {
            match data["type"].as_str().unwrap() {
                "content_block_start" => {
                    let block = &data["content_block"];
                    assert_eq!(data["index"], kinds.len());
                    kinds.push(block["type"].as_str().unwrap().to_owned());
                    if block["type"] == "tool_use" {
                        out.calls.push((
                            block["id"].as_str().unwrap().to_owned(),
                            block["name"].as_str().unwrap().to_owned(),
                            String::new(),
                        ));
                    }
                }
                "content_block_delta" => {
                    assert_eq!(
                        data["index"],
                        kinds.len() - 1,
                        "deltas go to the open block"
                    );
                    let delta = &data["delta"];
                    match delta["type"].as_str().unwrap() {
                        "text_delta" => out.text.push_str(delta["text"].as_str().unwrap()),
                        "thinking_delta" => {
                            out.thinking.push_str(delta["thinking"].as_str().unwrap())
                        }
                        "input_json_delta" => out
                            .calls
                            .last_mut()
                            .unwrap()
                            .2
                            .push_str(delta["partial_json"].as_str().unwrap()),
                        other => panic!("delta {other}"),
                    }
                }
                "message_delta" => {
                    out.stop_reason = Some(data["delta"]["stop_reason"].as_str().unwrap().into());
                    out.usage = Some((
                        data["usage"]["input_tokens"].as_u64().unwrap(),
                        data["usage"]["output_tokens"].as_u64().unwrap(),
                    ));
                }
                "message_stop" => out.stopped = true,
                _ => {}
            }
        }
        out
    }

    fn piece() -> impl Strategy<Value = Event> {
        prop_oneof![
            crate::chat::strategies::text().prop_map(Event::Text),
            crate::chat::strategies::text().prop_map(Event::Thinking),
        ]
    }

    proptest! {
        /// Whatever the events and however the network cuts the stream, a client puts
        /// back together what the events said.
        #[test]
        fn a_stream_cut_anywhere_reassembles_to_its_events(
            pieces in proptest::collection::vec(piece(), 0..6),
            calls in proptest::collection::vec(
                ("[a-z_]{1,8}", proptest::collection::vec("[a-z0-9\":{}, ]{0,6}", 0..3)),
                0..3,
            ),
            length in any::<bool>(),
            seed_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut input = pieces.clone();
            for (index, (name, fragments)) in calls.iter().enumerate() {
                input.push(call(index, Some(&format!("call_{index}")), Some(name), ""));
                for fragment in fragments {
                    input.push(call(index, None, None, fragment));
                }
            }
            input.push(Event::Finish(if length { FinishReason::Length } else { FinishReason::Stop }));
            input.push(Event::Usage(usage()));
            let mut renderer = SseRenderer::new("m".into());
            let mut out = BytesMut::new();
            for event in input.clone() {
                renderer.event(event, &mut out);
            }
            renderer.end(&mut out);
            let mut expected = Completion::default();
            for event in input {
                expected.apply(event);
            }
            let mut cuts: Vec<usize> = seed_cuts.iter().map(|i| i.index(out.len() + 1)).collect();
            cuts.sort_unstable();
            let got = reassemble(&out, &cuts);
            prop_assert_eq!(&got.text, &expected.text);
            prop_assert_eq!(&got.thinking, &expected.thinking);
            let calls: Vec<(String, String, String)> = expected
                .tool_calls
                .iter()
                .map(|c| (c.id.clone().unwrap_or_default().into_owned(), c.name.to_string(), c.arguments.to_string()))
                .collect();
            prop_assert_eq!(got.calls, calls);
            let reason = stop_reason(if length { FinishReason::Length } else { expected.effective_finish() });
            prop_assert_eq!(got.stop_reason.as_deref(), Some(reason));
            prop_assert_eq!(got.usage, Some((7, 5)));
            prop_assert!(got.stopped);
        }
    }

    /// Every single cut of one full stream reads back the same.
    #[test]
    fn every_single_cut_of_a_stream_reads_back() {
        let input = vec![
            Event::Thinking("héllo \"th\"\n".into()),
            Event::Text("wörld 🦀".into()),
            call(0, Some("call_a"), Some("f"), "{\"a\":"),
            call(0, None, None, "1}"),
            Event::Finish(FinishReason::Stop),
            Event::Usage(usage()),
        ];
        let mut renderer = SseRenderer::new("m".into());
        let mut out = BytesMut::new();
        for event in input {
            renderer.event(event, &mut out);
        }
        renderer.end(&mut out);
        let whole = reassemble(&out, &[]);
        for cut in 0..=out.len() {
            assert_eq!(&reassemble(&out, &[cut]), &whole, "cut at {}", cut);
        }
        assert_eq!(whole.text, "wörld 🦀");
        assert_eq!(
            whole.calls,
            vec![("call_a".into(), "f".into(), "{\"a\":1}".into())]
        );
    }
}
