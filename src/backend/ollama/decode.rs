//! A native Ollama answer turned into canonical [`Event`]s: one decoder for a streamed
//! NDJSON line and a whole answer, since a whole answer has the shape of a stream's
//! last line with everything in it. A whole answer is the same events folded with
//! [`Completion::apply`].

use std::borrow::Cow;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use crate::chat::{
    random_id, Completion, Event, EventStream, FinishReason, ToolCall, ToolCallDelta, Usage,
    WireToolCall,
};
use crate::embed::Embeddings;
use crate::error::GatewayError;
use crate::framing::ndjson_lines;

use super::super::error_body::ErrorField;
use super::super::upstream::UpstreamBody;
use super::super::ModelEntry;

/// The answer of `/api/embed`.
#[derive(Deserialize)]
pub(super) struct WireEmbed {
    #[serde(default)]
    embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    prompt_eval_count: u64,
}

/// The answer of `GET /api/tags`.
#[derive(Deserialize)]
pub(super) struct WireTags {
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

/// One NDJSON line, or a whole answer.
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
        crate::framing::from_json(line).map_err(|e| GatewayError::UpstreamProtocol {
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
        // Ollama sends each call whole, often without an id; clients need one.
        out.push(Event::ToolCall(ToolCallDelta {
            index: *calls_sent,
            id: Some(
                call.id
                    .map_or_else(|| random_id("call_", 8), Cow::into_owned),
            ),
            name: Some(call.name.into_owned()),
            arguments: call.arguments.into_owned(),
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

/// Decodes an NDJSON answer as it arrives. It ends cleanly only after its done line; a
/// stream cut off before it ends in an error.
pub(super) fn stream(backend: String, body: UpstreamBody) -> EventStream {
    Box::pin(async_stream::stream! {
        let lines = ndjson_lines(body);
        futures::pin_mut!(lines);
        let mut calls_sent = 0;
        let mut events = Vec::new();
        while let Some(line) = lines.next().await {
            let line = match line {
                Ok(line) => line,
                Err(error) => {
                    yield Err(super::super::stream_error(&backend, error));
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
                        super::super::drain(lines).await;
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

impl WireEmbed {
    pub(super) fn into_embeddings(self) -> Embeddings {
        Embeddings {
            vectors: self.embeddings,
            prompt_tokens: self.prompt_eval_count,
        }
    }
}

impl WireTags {
    /// The listed models, by the name they are asked for.
    pub(super) fn into_entries(self) -> Vec<ModelEntry> {
        self.models
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
            .collect()
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

/// Decodes a whole answer (`"stream": false`): the same events a stream's lines would
/// give, folded into one.
pub(super) fn whole(backend: &str, body: &[u8], path: &str) -> Result<Completion, GatewayError> {
    let answer: WireLine<'_> =
        crate::framing::from_json(body).map_err(|e| GatewayError::UpstreamProtocol {
            backend: backend.to_owned(),
            detail: format!("{path} did not answer with the expected JSON: {e}"),
        })?;
    let mut events = Vec::new();
    line_events(backend, answer, &mut 0, &mut events)?;
    let mut completion = Completion::default();
    for event in events {
        completion.apply(event);
    }
    Ok(completion)
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

    fn lines(lines: &[&str]) -> Result<(Vec<Event>, bool), GatewayError> {
        let mut calls_sent = 0;
        let mut out = Vec::new();
        let mut last = false;
        for line in lines {
            last = decode_line("b", line.as_bytes(), &mut calls_sent, &mut out)?;
        }
        Ok((out, last))
    }

    #[test]
    fn lines_become_events_and_the_done_line_ends_them() {
        let (events, last) = lines(&[
            r#"{"message":{"role":"assistant","content":"","thinking":"hm"},"done":false}"#,
            r#"{"message":{"role":"assistant","content":"hi"},"done":false}"#,
            r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},"done":false}"#,
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":4,"eval_duration":5}"#,
        ])
        .unwrap();
        assert!(last);
        assert_eq!(events[0], Event::Thinking("hm".into()));
        assert_eq!(events[1], Event::Text("hi".into()));
        let Event::ToolCall(call) = &events[2] else {
            panic!("{:?}", events[2]);
        };
        assert_eq!((call.index, call.arguments.as_str()), (0, "{\"a\":1}"));
        assert!(call.id.as_deref().is_some_and(|id| id.starts_with("call_")));
        assert_eq!(events[3], Event::Finish(FinishReason::ToolCalls));
        let Event::Usage(usage) = events[4] else {
            panic!("{:?}", events[4]);
        };
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 4));
        assert_eq!(usage.eval_ns, Some(5));
    }

    #[test]
    fn a_whole_answer_is_its_last_line() {
        let completion = whole(
            "b",
            br#"{"response":"42","done":true,"done_reason":"length","eval_count":1}"#,
            "/api/generate",
        )
        .unwrap();
        assert_eq!(completion.text, "42");
        assert_eq!(completion.finish_reason, Some(FinishReason::Length));
        assert_eq!(completion.usage.map(|u| u.completion_tokens), Some(1));
    }

    #[test]
    fn an_error_line_is_an_upstream_error() {
        let error = lines(&[r#"{"error":"model 'x' not found"}"#]).unwrap_err();
        assert!(
            matches!(error, GatewayError::UpstreamStatus { status: 502, ref message, .. } if message == "model 'x' not found"),
            "{error:?}"
        );
    }
}
