//! Ollama answers: NDJSON lines as events arrive, or one JSON object, in the shape of
//! `/api/chat` (`message`) or `/api/generate` (`response`); errors as `{"error":"..."}`,
//! in a body or as the line that ends a failed stream.

use std::time::{Duration, Instant, SystemTime};

use actix_web::HttpResponse;
use bytes::BytesMut;
use serde::Serialize;
use serde_json::Value;

use crate::chat::{Completion, Event, FinishReason, ToolCall, Usage};
use crate::dialect::{error_response, StreamRenderer};
use crate::error::GatewayError;
use crate::framing::write_ndjson;

/// One Ollama JSON answer, written with the line separators escaped like the streams.
pub fn json_utf8<T: Serialize>(value: &T) -> HttpResponse {
    let mut body = BytesMut::new();
    crate::framing::write_ollama_json(&mut body, value);
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .body(body.freeze())
}

/// The whole error answer: `{"error": "..."}` with the error's status.
pub fn render_error(error: &GatewayError) -> HttpResponse {
    error_response(error).body(serde_json::json!({ "error": error.to_string() }).to_string())
}

/// Which route's answer shape to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `/api/chat`: text under `message`.
    Chat,
    /// `/api/generate`: text under `response`, a `context` on the last line.
    Generate,
}

/// The current time as Ollama writes it (RFC 3339, UTC).
pub fn timestamp() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Writes a time as Ollama does, straight into the output (no string in between).
fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_nanos(*time))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Serialize)]
struct Line<'a> {
    model: &'a str,
    #[serde(serialize_with = "rfc3339")]
    created_at: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<LineMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Value>,
    done: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    stats: Option<Stats>,
    /// `/api/generate`'s last line carries a (deprecated) context; some clients require
    /// the array, so it is sent empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<[u32; 0]>,
}

#[derive(Serialize)]
struct LineMessage<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Value>,
}

/// What one line says, before it takes its route's shape.
#[derive(Default)]
struct Piece<'a> {
    content: &'a str,
    thinking: Option<&'a str>,
    tool_calls: Vec<Value>,
}

fn line<'a>(shape: Shape, model: &'a str, piece: Piece<'a>, stats: Option<Stats>) -> Line<'a> {
    let done = stats.is_some();
    let (message, response, thinking, tool_calls) = match shape {
        Shape::Chat => (
            Some(LineMessage {
                role: "assistant",
                content: piece.content,
                thinking: piece.thinking,
                tool_calls: piece.tool_calls,
            }),
            None,
            None,
            Vec::new(),
        ),
        Shape::Generate => (None, Some(piece.content), piece.thinking, piece.tool_calls),
    };
    Line {
        model,
        created_at: SystemTime::now(),
        message,
        response,
        thinking,
        tool_calls,
        done,
        stats,
        context: (done && shape == Shape::Generate).then_some([]),
    }
}

/// What the `done: true` line carries.
#[derive(Serialize)]
pub struct Stats {
    done_reason: &'static str,
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: u64,
    prompt_eval_duration: u64,
    eval_count: u64,
    eval_duration: u64,
}

/// Measures the request, so durations can be reported when the upstream gave none.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub started: Instant,
    pub first_token: Option<Instant>,
}

impl Timing {
    /// Starts measuring now.
    pub fn start() -> Timing {
        Timing {
            started: Instant::now(),
            first_token: None,
        }
    }

    /// Notes the first generated piece (the end of prompt evaluation, as seen from here).
    pub fn saw_token(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    /// The final line's numbers: the upstream's where it had them, ours otherwise.
    pub fn stats(&self, reason: FinishReason, usage: Option<Usage>) -> Stats {
        let now = Instant::now();
        let usage = usage.unwrap_or_default();
        let first = self.first_token.unwrap_or(now);
        Stats {
            done_reason: reason.as_ollama(),
            total_duration: nanos(now - self.started),
            load_duration: usage.load_ns.unwrap_or(0),
            prompt_eval_count: usage.prompt_tokens,
            prompt_eval_duration: usage
                .prompt_eval_ns
                .unwrap_or_else(|| nanos(first - self.started)),
            eval_count: usage.completion_tokens,
            eval_duration: usage.eval_ns.unwrap_or_else(|| nanos(now - first)),
        }
    }
}

/// Converts calls to Ollama's form, whose `arguments` is an object. Arguments that are
/// not a JSON object cannot be given to an Ollama client, so they are an error.
fn wire_tool_calls(calls: &[ToolCall]) -> Result<Vec<Value>, String> {
    calls
        .iter()
        .enumerate()
        .map(|(index, call)| {
            let arguments = call.arguments_value().map_err(|e| {
                format!(
                    "the model called {} with arguments that are not JSON: {e}",
                    call.name
                )
            })?;
            if !arguments.is_object() {
                return Err(format!(
                    "the model called {} with arguments that are not a JSON object",
                    call.name
                ));
            }
            let mut wire = serde_json::json!({"function": {"index": index, "name": call.name, "arguments": arguments}});
            if let Some(id) = &call.id {
                wire["id"] = Value::from(id.as_ref());
            }
            Ok(wire)
        })
        .collect()
}

/// Renders a whole answer as one object of the route's shape.
pub fn render_completion<'a>(
    shape: Shape,
    model: &'a str,
    completion: &'a Completion,
    timing: &Timing,
) -> Result<impl Serialize + 'a, GatewayError> {
    let tool_calls = wire_tool_calls(&completion.tool_calls).map_err(|detail| {
        GatewayError::UpstreamProtocol {
            backend: model.to_owned(),
            detail,
        }
    })?;
    let piece = Piece {
        content: &completion.text,
        thinking: (!completion.thinking.is_empty()).then_some(completion.thinking.as_str()),
        tool_calls,
    };
    let stats = timing.stats(completion.effective_finish(), completion.usage);
    Ok(line(shape, model, piece, Some(stats)))
}

/// The answer to a request with nothing to generate: Ollama only loads the model, or
/// unloads it when `keep_alive` is zero.
pub fn load_response(shape: Shape, model: &str, keep_alive: Option<&Value>) -> Value {
    let mut value =
        serde_json::to_value(line(shape, model, Piece::default(), None)).unwrap_or(Value::Null);
    let unload = match keep_alive {
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        // "0", "0s", "0m": a zero with any unit.
        Some(Value::String(s)) => s.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0",
        _ => false,
    };
    value["done"] = Value::Bool(true);
    value["done_reason"] = Value::from(if unload { "unload" } else { "load" });
    if shape == Shape::Generate {
        value["context"] = Value::Array(Vec::new());
    }
    value
}

/// Renders events as NDJSON lines: text and thinking as they come, tool calls whole
/// (Ollama clients need complete argument objects, all calls of a turn in one line),
/// then the `done` line with counts.
pub struct NdjsonRenderer {
    shape: Shape,
    model: String,
    timing: Timing,
    pending_calls: Completion,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    failed: bool,
}

impl NdjsonRenderer {
    /// A renderer naming the model as the client asked for it.
    pub fn new(shape: Shape, model: String, timing: Timing) -> NdjsonRenderer {
        NdjsonRenderer {
            shape,
            model,
            timing,
            pending_calls: Completion::default(),
            finish: None,
            usage: None,
            failed: false,
        }
    }

    fn write(&self, out: &mut BytesMut, piece: Piece<'_>, stats: Option<Stats>) {
        write_ndjson(out, &line(self.shape, &self.model, piece, stats));
    }

    fn flush_calls(&mut self, out: &mut BytesMut) {
        if self.pending_calls.tool_calls.is_empty() {
            return;
        }
        let calls = std::mem::take(&mut self.pending_calls.tool_calls);
        match wire_tool_calls(&calls) {
            Ok(tool_calls) => self.write(
                out,
                Piece {
                    tool_calls,
                    ..Piece::default()
                },
                None,
            ),
            Err(message) => {
                self.failed = true;
                write_ndjson(out, &serde_json::json!({ "error": message }));
            }
        }
        self.finish.get_or_insert(FinishReason::ToolCalls);
    }
}

impl StreamRenderer for NdjsonRenderer {
    fn event(&mut self, event: Event, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        match event {
            Event::Text(text) => {
                self.timing.saw_token();
                self.write(
                    out,
                    Piece {
                        content: &text,
                        ..Piece::default()
                    },
                    None,
                );
            }
            Event::Thinking(text) => {
                self.timing.saw_token();
                self.write(
                    out,
                    Piece {
                        thinking: Some(&text),
                        ..Piece::default()
                    },
                    None,
                );
            }
            Event::ToolCall(delta) => {
                self.timing.saw_token();
                self.pending_calls.apply(Event::ToolCall(delta));
            }
            Event::Finish(reason) => {
                self.flush_calls(out);
                self.finish = Some(reason);
            }
            Event::Usage(usage) => self.usage = Some(usage),
            // Only the server that made it reads a signature back; Ollama has no field,
            // nor one for which stop sequence ended the answer.
            Event::ThinkingSignature(_) | Event::StopSequence(_) | Event::PromptTokens(_) => {}
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        self.flush_calls(out);
        if self.failed {
            return;
        }
        let stats = self
            .timing
            .stats(self.finish.unwrap_or(FinishReason::Stop), self.usage);
        self.write(out, Piece::default(), Some(stats));
    }

    fn error(&mut self, error: &GatewayError, out: &mut BytesMut) {
        if !self.failed {
            write_ndjson(out, &serde_json::json!({ "error": error.to_string() }));
        }
    }

    fn failed(&self) -> bool {
        self.failed
    }
}
