//! An Anthropic Messages answer turned into canonical [`Event`]s: the named SSE events
//! of a stream, each read by the `type` its data carries, and a whole `message`, which
//! is read as the same events folded with [`Completion::apply`].

use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::chat::{Completion, Event, EventStream, FinishReason, ToolCallDelta, Usage};
use crate::error::GatewayError;
use crate::framing::sse_data;

use super::super::upstream::UpstreamBody;
use super::super::ModelEntry;

/// One stream event's data, every kind's members optional.
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    message: Option<WireMessage>,
    index: Option<usize>,
    content_block: Option<WireBlock>,
    delta: Option<WireDelta>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Vec<WireBlock>,
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    thinking: Option<String>,
    signature: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    thinking: Option<String>,
    signature: Option<String>,
    partial_json: Option<String>,
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

/// The status an Anthropic error type stands for, for an error inside a stream.
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// Anthropic's `stop_reason` as the canonical finish reason.
fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn
        _ => FinishReason::Stop,
    }
}

/// The stop sequence an answer stopped on, when Anthropic says it stopped on one.
fn stop_sequence(reason: &str, sequence: Option<String>) -> Option<Event> {
    sequence
        .filter(|_| reason == "stop_sequence")
        .map(Event::StopSequence)
}

/// The most content blocks one answer may have; an index beyond is a broken upstream.
const MAX_BLOCKS: usize = 1024;

/// What the answer so far means, kept between events.
#[derive(Default)]
pub(super) struct Decoder {
    usage: Option<Usage>,
    /// `message_stop` came: the answer is whole.
    stopped: bool,
    /// Each block's canonical tool-call index, for the tool_use blocks.
    tool_of_block: Vec<Option<usize>>,
    tools: usize,
}

impl Decoder {
    fn protocol(backend: &str, detail: impl Into<String>) -> GatewayError {
        GatewayError::UpstreamProtocol {
            backend: backend.to_owned(),
            detail: detail.into(),
        }
    }

    fn usage(&mut self, usage: WireUsage) {
        let kept = self.usage.get_or_insert_with(Usage::default);
        if let Some(input) = usage.input_tokens {
            kept.prompt_tokens = input;
        }
        if let Some(output) = usage.output_tokens {
            kept.completion_tokens = output;
        }
    }

    /// A block that starts (with what a whole answer's block already holds).
    fn block(
        &mut self,
        backend: &str,
        index: usize,
        block: WireBlock,
        out: &mut Vec<Event>,
    ) -> Result<(), GatewayError> {
        if index >= MAX_BLOCKS {
            return Err(Self::protocol(
                backend,
                format!("more than {MAX_BLOCKS} content blocks"),
            ));
        }
        if self.tool_of_block.len() <= index {
            self.tool_of_block.resize(index + 1, None);
        }
        match block.kind.as_str() {
            "text" => {
                if let Some(text) = block.text.filter(|text| !text.is_empty()) {
                    out.push(Event::Text(text));
                }
            }
            "thinking" => {
                if let Some(text) = block.thinking.filter(|text| !text.is_empty()) {
                    out.push(Event::Thinking(text));
                }
                if let Some(signature) = block.signature.filter(|s| !s.is_empty()) {
                    out.push(Event::ThinkingSignature(signature));
                }
            }
            "tool_use" => {
                let call = self.tools;
                self.tools += 1;
                self.tool_of_block[index] = Some(call);
                // A stream starts the call with `{}` and sends its input as deltas; a
                // whole answer holds the input here.
                let arguments = match block.input {
                    Some(input) if input.get() != "{}" => input.get().to_owned(),
                    _ => String::new(),
                };
                out.push(Event::ToolCall(ToolCallDelta {
                    index: call,
                    id: block.id,
                    name: block.name,
                    arguments,
                }));
            }
            // redacted_thinking, server tools' blocks: nothing the canonical answer holds.
            _ => {}
        }
        Ok(())
    }

    /// Decodes one stream event's data into events.
    pub(super) fn event(
        &mut self,
        backend: &str,
        data: &[u8],
        out: &mut Vec<Event>,
    ) -> Result<(), GatewayError> {
        let event: WireEvent<'_> = crate::framing::from_json(data).map_err(|e| {
            Self::protocol(
                backend,
                format!("a stream event is not a Messages event: {e}"),
            )
        })?;
        match event.kind {
            "message_start" => {
                if let Some(usage) = event.message.and_then(|message| message.usage) {
                    self.usage(usage);
                }
            }
            "content_block_start" => {
                let (Some(index), Some(block)) = (event.index, event.content_block) else {
                    return Err(Self::protocol(
                        backend,
                        "content_block_start without its block",
                    ));
                };
                self.block(backend, index, block, out)?;
            }
            "content_block_delta" => {
                let (Some(index), Some(delta)) = (event.index, event.delta) else {
                    return Err(Self::protocol(
                        backend,
                        "content_block_delta without its delta",
                    ));
                };
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        out.extend(delta.text.filter(|t| !t.is_empty()).map(Event::Text));
                    }
                    Some("thinking_delta") => {
                        out.extend(
                            delta
                                .thinking
                                .filter(|t| !t.is_empty())
                                .map(Event::Thinking),
                        );
                    }
                    Some("input_json_delta") => {
                        let Some(call) = self.tool_of_block.get(index).copied().flatten() else {
                            return Err(Self::protocol(
                                backend,
                                format!("input_json_delta for block {index}, which is no tool_use"),
                            ));
                        };
                        if let Some(json) = delta.partial_json.filter(|j| !j.is_empty()) {
                            out.push(Event::ToolCall(ToolCallDelta {
                                index: call,
                                id: None,
                                name: None,
                                arguments: json,
                            }));
                        }
                    }
                    Some("signature_delta") => {
                        out.extend(
                            delta
                                .signature
                                .filter(|s| !s.is_empty())
                                .map(Event::ThinkingSignature),
                        );
                    }
                    // citations_delta and newer kinds: nothing the canonical answer holds.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(delta) = event.delta {
                    if let Some(reason) = delta.stop_reason {
                        out.extend(stop_sequence(&reason, delta.stop_sequence));
                        out.push(Event::Finish(finish_reason(&reason)));
                    }
                }
                if let Some(usage) = event.usage {
                    self.usage(usage);
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let error = event.error.unwrap_or(WireError {
                    kind: None,
                    message: None,
                });
                let kind = error.kind.unwrap_or_else(|| "api_error".to_owned());
                return Err(GatewayError::UpstreamStatus {
                    backend: backend.to_owned(),
                    status: status_of(&kind),
                    message: error.message.unwrap_or_else(|| "upstream error".to_owned()),
                    kind: Some(kind),
                    code: None,
                    retry_after: None,
                });
            }
            // ping, content_block_stop, and event types newer than this gateway.
            _ => {}
        }
        Ok(())
    }

    /// The usage gathered, once the answer is over.
    fn finish(self) -> Option<Event> {
        self.usage.map(Event::Usage)
    }
}

/// Decodes a whole `message` (`"stream": false`).
pub(super) fn whole(backend: &str, body: &[u8]) -> Result<Completion, GatewayError> {
    let message: WireMessage = crate::framing::from_json(body).map_err(|e| {
        Decoder::protocol(
            backend,
            format!("/messages did not answer with a message: {e}"),
        )
    })?;
    let mut decoder = Decoder::default();
    let mut events = Vec::new();
    for (index, block) in message.content.into_iter().enumerate() {
        decoder.block(backend, index, block, &mut events)?;
    }
    if let Some(reason) = message.stop_reason {
        events.extend(stop_sequence(&reason, message.stop_sequence));
        events.push(Event::Finish(finish_reason(&reason)));
    }
    if let Some(usage) = message.usage {
        decoder.usage(usage);
    }
    let mut completion = Completion::default();
    for event in events.into_iter().chain(decoder.finish()) {
        completion.apply(event);
    }
    Ok(completion)
}

/// Decodes an SSE answer as it arrives. It ends cleanly only after `message_stop`; a
/// stream cut off before it ends in an error.
pub(super) fn stream(backend: String, body: UpstreamBody) -> EventStream {
    Box::pin(async_stream::stream! {
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        let mut told_prompt = false;
        let data = sse_data(body);
        futures::pin_mut!(data);
        while let Some(item) = data.next().await {
            let data = match item {
                Ok(data) => data,
                Err(error) => {
                    yield Err(super::super::stream_error(&backend, error));
                    return;
                }
            };
            if let Err(e) = decoder.event(&backend, &data, &mut events) {
                yield Err(e);
                return;
            }
            // The prompt's tokens of `message_start` go out with the answer's first
            // event, not alone before it: until that event an upstream failure still
            // keeps its own status.
            if !told_prompt && !events.is_empty() {
                told_prompt = true;
                if let Some(tokens) = decoder.usage.map(|usage| usage.prompt_tokens).filter(|n| *n > 0) {
                    yield Ok(Event::PromptTokens(tokens));
                }
            }
            for event in events.drain(..) {
                yield Ok(event);
            }
            if decoder.stopped {
                break;
            }
        }
        if decoder.stopped {
            super::super::drain(data).await;
        } else {
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

/// The answer of `GET /models`.
#[derive(Deserialize)]
pub(super) struct WireModelList {
    #[serde(default)]
    data: Vec<WireModel>,
}

#[derive(Deserialize)]
struct WireModel {
    id: String,
    created_at: Option<String>,
}

impl WireModelList {
    /// The listed models.
    pub(super) fn into_entries(self) -> Vec<ModelEntry> {
        self.data
            .into_iter()
            .map(|model| ModelEntry {
                created: model
                    .created_at
                    .and_then(|at| humantime::parse_rfc3339_weak(&at).ok())
                    .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|since| since.as_secs()),
                id: model.id,
                owned_by: Some("anthropic".to_owned()),
                ..ModelEntry::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    fn sse(events: &[Value]) -> String {
        events
            .iter()
            .map(|data| {
                format!(
                    "event: {}\ndata: {data}\n\n",
                    data["type"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// Decodes `input` cut into network reads at `cuts`.
    fn decode(input: &[u8], cuts: &[usize]) -> Result<Completion, GatewayError> {
        let mut pieces = Vec::new();
        let mut last = 0;
        for &cut in cuts {
            pieces.push(Ok(Bytes::copy_from_slice(&input[last..cut])));
            last = cut;
        }
        pieces.push(Ok(Bytes::copy_from_slice(&input[last..])));
        let body: UpstreamBody = Box::pin(futures::stream::iter(pieces));
        // The decoder drains the body after its end with a timer: a runtime with time.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(Completion::collect(stream("claude".into(), body)))
    }

    /// A stream as Anthropic writes one: thinking, text, two tool calls.
    fn full_stream() -> Vec<Value> {
        vec![
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude", "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": " think."}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "héllo 🦀"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Tokyo\"}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}}),
            json!({"type": "content_block_stop", "index": 3}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
            json!({"type": "message_stop"}),
        ]
    }

    fn check_full(completion: &Completion) {
        assert_eq!(completion.thinking, "Let me think.");
        assert_eq!(completion.thinking_signature, "c2ln");
        assert_eq!(completion.text, "héllo 🦀");
        assert_eq!(completion.tool_calls.len(), 2);
        assert_eq!(completion.tool_calls[0].id.as_deref(), Some("toolu_a"));
        assert_eq!(completion.tool_calls[0].name, "get_weather");
        assert_eq!(completion.tool_calls[0].arguments, "{\"city\":\"Tokyo\"}");
        assert_eq!(completion.tool_calls[1].name, "get_time");
        assert_eq!(completion.tool_calls[1].arguments, "");
        assert_eq!(completion.finish_reason, Some(FinishReason::ToolCalls));
        let usage = completion.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (12, 30));
    }

    #[test]
    fn a_stream_decodes_at_every_single_cut() {
        let input = sse(&full_stream());
        let input = input.as_bytes();
        check_full(&decode(input, &[]).unwrap());
        for cut in 0..=input.len() {
            let completion = decode(input, &[cut]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            check_full(&completion);
        }
    }

    #[test]
    fn a_whole_message_decodes_to_the_same() {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "c2ln"},
                {"type": "text", "text": "héllo 🦀"},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Tokyo"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 12, "output_tokens": 30}});
        let completion = whole("claude", body.to_string().as_bytes()).unwrap();
        check_full(&completion);
        assert!(matches!(
            whole("claude", b"[]"),
            Err(GatewayError::UpstreamProtocol { .. })
        ));
    }

    #[test]
    fn errors_and_cut_off_streams_fail() {
        let mut events = full_stream();
        events.truncate(9);
        events.push(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
        match decode(sse(&events).as_bytes(), &[]) {
            Err(GatewayError::UpstreamStatus {
                status,
                message,
                kind,
                ..
            }) => {
                assert_eq!(
                    (status, message.as_str(), kind.as_deref()),
                    (529, "Overloaded", Some("overloaded_error"))
                );
            }
            other => panic!("{other:?}"),
        }
        let mut events = full_stream();
        events.pop();
        assert!(matches!(
            decode(sse(&events).as_bytes(), &[]),
            Err(GatewayError::UpstreamProtocol { .. })
        ));
        let stray = vec![
            json!({"type": "content_block_delta", "index": 4, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ];
        assert!(decode(sse(&stray).as_bytes(), &[]).is_err());
        for (reason, finish) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("refusal", FinishReason::ContentFilter),
        ] {
            assert_eq!(finish_reason(reason), finish);
        }
        assert_eq!(
            stop_sequence("stop_sequence", Some("END".into())),
            Some(Event::StopSequence("END".into()))
        );
        assert_eq!(stop_sequence("end_turn", Some("END".into())), None);
        assert_eq!(stop_sequence("stop_sequence", None), None);
    }

    #[test]
    fn listed_models() {
        let list: WireModelList = serde_json::from_value(json!({"data": [
            {"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"}],
            "has_more": false})).unwrap();
        let entries = list.into_entries();
        assert_eq!(entries[0].id, "claude-sonnet-4-5");
        assert_eq!(entries[0].created, Some(1_759_104_000));
    }

    proptest! {
        /// Whatever the texts and calls, and however the network cuts the stream, the
        /// decoded answer is what the events said.
        #[test]
        fn streams_decode_whatever_the_cuts(
            texts in proptest::collection::vec(crate::chat::strategies::text(), 0..4),
            thoughts in proptest::collection::vec(crate::chat::strategies::text(), 0..3),
            calls in proptest::collection::vec(("[a-zA-Z_]{1,8}", proptest::collection::vec("[a-z0-9\":{}, ]{1,6}", 0..3)), 0..3),
            seed_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut events = vec![json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}})];
            let mut index = 0;
            if !thoughts.is_empty() {
                events.push(json!({"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": ""}}));
                for thought in &thoughts {
                    events.push(json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": thought}}));
                }
                events.push(json!({"type": "content_block_stop", "index": index}));
                index += 1;
            }
            if !texts.is_empty() {
                events.push(json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}));
                for text in &texts {
                    events.push(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}));
                }
                events.push(json!({"type": "content_block_stop", "index": index}));
                index += 1;
            }
            for (number, (name, fragments)) in calls.iter().enumerate() {
                events.push(json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": format!("toolu_{number}"), "name": name, "input": {}}}));
                for fragment in fragments {
                    events.push(json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}}));
                }
                events.push(json!({"type": "content_block_stop", "index": index}));
                index += 1;
            }
            events.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}));
            events.push(json!({"type": "message_stop"}));
            let input = sse(&events);
            let input = input.as_bytes();
            let mut cuts: Vec<usize> = seed_cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            let completion = decode(input, &cuts).unwrap();
            prop_assert_eq!(completion.text, texts.concat());
            prop_assert_eq!(completion.thinking, thoughts.concat());
            let got: Vec<(String, String)> = completion.tool_calls.iter().map(|c| (c.name.to_string(), c.arguments.to_string())).collect();
            let want: Vec<(String, String)> = calls.iter().map(|(name, fragments)| (name.clone(), fragments.concat())).collect();
            prop_assert_eq!(got, want);
            let usage = completion.usage.unwrap();
            prop_assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 9));
        }
    }
}
