//! The Ollama dialect: `/api/chat` requests, NDJSON streams and single JSON answers,
//! parsed into and rendered from the canonical model.

use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chat::{
    ChatRequest, Completion, Event, FinishReason, Image, Message, OutputFormat, Part, Role,
    Sampling, Think, Tool, ToolCall, Usage,
};
use crate::error::GatewayError;
use crate::framing::write_ndjson;

use super::StreamRenderer;

/// A parsed `/api/chat` request.
#[derive(Debug)]
pub struct ParsedChat {
    /// The model as the client named it.
    pub model: String,
    pub stream: bool,
    pub request: ChatRequest,
}

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    #[serde(default)]
    messages: Vec<WireMessage>,
    stream: Option<bool>,
    format: Option<Value>,
    options: Option<Map<String, Value>>,
    tools: Option<Vec<Tool>>,
    think: Option<Value>,
    keep_alive: Option<Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    images: Vec<String>,
    thinking: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
    tool_name: Option<String>,
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// Parses an `/api/chat` body. An empty `messages` asks Ollama only to load the model;
/// the caller answers that without an upstream call.
pub fn parse_chat(body: &[u8]) -> Result<ParsedChat, GatewayError> {
    let wire: WireRequest = serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request(format!("invalid request body: {e}")))?;
    if wire.model.is_empty() {
        return Err(GatewayError::bad_field("model", "model is required"));
    }
    let messages = wire
        .messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| parse_message(index, message))
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = ChatRequest::new(wire.model.clone(), messages);
    request.sampling = parse_options(wire.options.unwrap_or_default())?;
    request.format = parse_format(wire.format)?;
    request.tools = wire.tools.unwrap_or_default();
    request.think = parse_think(wire.think)?;
    request.keep_alive = wire.keep_alive;
    Ok(ParsedChat {
        model: wire.model,
        stream: wire.stream.unwrap_or(true),
        request,
    })
}

fn parse_message(index: usize, wire: WireMessage) -> Result<Message, GatewayError> {
    let role = Role::parse(&wire.role).ok_or_else(|| {
        GatewayError::bad_field(
            "messages",
            format!(
                "messages[{index}].role \"{}\" is not system, user, assistant or tool",
                wire.role
            ),
        )
    })?;
    let mut parts = Vec::with_capacity(1 + wire.images.len());
    if let Some(content) = wire.content.filter(|c| !c.is_empty()) {
        parts.push(Part::Text(content));
    }
    for image in wire.images {
        // Clients sometimes send a data: URL where raw base64 belongs; take both.
        let data = match image.split_once(";base64,") {
            Some((prefix, data)) if prefix.starts_with("data:") => data.to_owned(),
            _ => image,
        };
        parts.push(Part::Image(Image::Base64 { mime: None, data }));
    }
    let tool_calls = wire
        .tool_calls
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: match call.function.arguments {
                Value::Null => "{}".to_owned(),
                Value::String(text) => text,
                other => other.to_string(),
            },
        })
        .collect();
    Ok(Message {
        role,
        parts,
        thinking: wire.thinking,
        tool_calls,
        tool_call_id: wire.tool_call_id,
        tool_name: wire.tool_name,
    })
}

/// Splits Ollama `options` into the shared sampling settings and Ollama-only runtime
/// options; a wrong type is a 400, as Ollama itself answers.
pub fn parse_options(options: Map<String, Value>) -> Result<Sampling, GatewayError> {
    let mut sampling = Sampling::default();
    let number = |key: &str, value: &Value| {
        value.as_f64().ok_or_else(|| {
            GatewayError::bad_field("options", format!("options.{key} must be a number"))
        })
    };
    let integer = |key: &str, value: &Value| {
        value
            .as_i64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.fract() == 0.0)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| {
                GatewayError::bad_field("options", format!("options.{key} must be an integer"))
            })
    };
    for (key, value) in options {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            // -1 (no limit) and -2 (fill the context) mean "no cap" to OpenAI servers.
            "num_predict" => sampling.max_tokens = u64::try_from(integer(&key, &value)?).ok(),
            "temperature" => sampling.temperature = Some(number(&key, &value)?),
            "top_p" => sampling.top_p = Some(number(&key, &value)?),
            "seed" => sampling.seed = Some(integer(&key, &value)?).filter(|&seed| seed >= 0),
            "frequency_penalty" => sampling.frequency_penalty = Some(number(&key, &value)?),
            "presence_penalty" => sampling.presence_penalty = Some(number(&key, &value)?),
            "top_k" => sampling.top_k = Some(integer(&key, &value)?),
            "min_p" => sampling.min_p = Some(number(&key, &value)?),
            "typical_p" => sampling.typical_p = Some(number(&key, &value)?),
            "repeat_penalty" => sampling.repeat_penalty = Some(number(&key, &value)?),
            "repeat_last_n" => sampling.repeat_last_n = Some(integer(&key, &value)?),
            "stop" => {
                sampling.stop = value
                    .as_array()
                    .and_then(|items| {
                        items
                            .iter()
                            .map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .ok_or_else(|| {
                        GatewayError::bad_field(
                            "options",
                            "options.stop must be an array of strings",
                        )
                    })?;
            }
            _ => {
                sampling.ollama_runtime.insert(key, value);
            }
        }
    }
    Ok(sampling)
}

/// Reads `format`: `"json"` or a JSON schema object.
pub fn parse_format(format: Option<Value>) -> Result<Option<OutputFormat>, GatewayError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(OutputFormat::Json)),
        Some(schema @ Value::Object(_)) => Ok(Some(OutputFormat::Schema {
            name: None,
            schema,
            strict: None,
        })),
        Some(_) => Err(GatewayError::bad_field(
            "format",
            "format must be \"json\" or a JSON schema object",
        )),
    }
}

/// Reads `think`: a bool or an effort level.
pub fn parse_think(think: Option<Value>) -> Result<Option<Think>, GatewayError> {
    match think {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(on)) => Ok(Some(Think::Enabled(on))),
        Some(Value::String(level)) if matches!(level.as_str(), "low" | "medium" | "high" | "max") => {
            Ok(Some(Think::Effort(level)))
        }
        Some(other) => Err(GatewayError::bad_field(
            "think",
            format!("invalid think value {other}: use true, false, \"low\", \"medium\", \"high\" or \"max\""),
        )),
    }
}

/// The current time as Ollama writes it (RFC 3339, UTC).
pub fn timestamp() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Serialize)]
struct Line<'a> {
    model: &'a str,
    created_at: String,
    message: LineMessage<'a>,
    done: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    stats: Option<Stats>,
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
            let arguments: Value = if call.arguments.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                serde_json::from_str(&call.arguments).map_err(|e| {
                    format!("the model called {} with arguments that are not JSON: {e}", call.name)
                })?
            };
            if !arguments.is_object() {
                return Err(format!("the model called {} with arguments that are not a JSON object", call.name));
            }
            let mut wire = serde_json::json!({"function": {"index": index, "name": call.name, "arguments": arguments}});
            if let Some(id) = &call.id {
                wire["id"] = Value::from(id.as_str());
            }
            Ok(wire)
        })
        .collect()
}

/// Renders a whole answer as one `/api/chat` object.
pub fn render_completion(
    model: &str,
    completion: &Completion,
    timing: &Timing,
) -> Result<Value, GatewayError> {
    let tool_calls = wire_tool_calls(&completion.tool_calls).map_err(|detail| {
        GatewayError::UpstreamProtocol {
            backend: model.to_owned(),
            detail,
        }
    })?;
    let line = Line {
        model,
        created_at: timestamp(),
        message: LineMessage {
            role: "assistant",
            content: &completion.text,
            thinking: (!completion.thinking.is_empty()).then_some(completion.thinking.as_str()),
            tool_calls,
        },
        done: true,
        stats: Some(timing.stats(completion.effective_finish(), completion.usage)),
    };
    Ok(serde_json::to_value(&line).unwrap_or(Value::Null))
}

/// The answer to a chat with no messages: Ollama only loads the model.
pub fn load_response(model: &str) -> Value {
    serde_json::json!({
        "model": model,
        "created_at": timestamp(),
        "message": {"role": "assistant", "content": ""},
        "done": true,
        "done_reason": "load",
    })
}

/// Renders events as NDJSON lines: text and thinking as they come, tool calls whole
/// (Ollama clients need complete argument objects), then the `done` line with counts.
pub struct NdjsonRenderer {
    model: String,
    timing: Timing,
    pending_calls: Completion,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    failed: bool,
}

impl NdjsonRenderer {
    /// A renderer naming the model as the client asked for it.
    pub fn new(model: String, timing: Timing) -> NdjsonRenderer {
        NdjsonRenderer {
            model,
            timing,
            pending_calls: Completion::default(),
            finish: None,
            usage: None,
            failed: false,
        }
    }

    fn line(&self, out: &mut BytesMut, message: LineMessage<'_>, stats: Option<Stats>) {
        let line = Line {
            model: &self.model,
            created_at: timestamp(),
            message,
            done: stats.is_some(),
            stats,
        };
        write_ndjson(out, &line);
    }

    fn flush_calls(&mut self, out: &mut BytesMut) {
        if self.pending_calls.tool_calls.is_empty() {
            return;
        }
        let calls = std::mem::take(&mut self.pending_calls.tool_calls);
        match wire_tool_calls(&calls) {
            Ok(tool_calls) => self.line(
                out,
                LineMessage {
                    role: "assistant",
                    content: "",
                    thinking: None,
                    tool_calls,
                },
                None,
            ),
            Err(message) => {
                self.failed = true;
                write_ndjson(out, &serde_json::json!({ "error": message }));
            }
        }
        // Remember that calls were made, for the finish reason.
        self.finish.get_or_insert(FinishReason::ToolCalls);
    }
}

impl StreamRenderer for NdjsonRenderer {
    fn event(&mut self, event: Event, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        match event {
            Event::Text(_) | Event::Thinking(_) | Event::ToolCall(_) => {
                self.timing.first_token.get_or_insert_with(Instant::now);
            }
            _ => {}
        }
        match event {
            Event::Text(text) => self.line(
                out,
                LineMessage {
                    role: "assistant",
                    content: &text,
                    thinking: None,
                    tool_calls: Vec::new(),
                },
                None,
            ),
            Event::Thinking(text) => self.line(
                out,
                LineMessage {
                    role: "assistant",
                    content: "",
                    thinking: Some(&text),
                    tool_calls: Vec::new(),
                },
                None,
            ),
            Event::ToolCall(delta) => self.pending_calls.apply(Event::ToolCall(delta)),
            Event::Finish(reason) => {
                self.flush_calls(out);
                self.finish = Some(reason);
            }
            Event::Usage(usage) => self.usage = Some(usage),
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
        self.line(
            out,
            LineMessage {
                role: "assistant",
                content: "",
                thinking: None,
                tool_calls: Vec::new(),
            },
            Some(stats),
        );
    }

    fn error(&mut self, error: &GatewayError, out: &mut BytesMut) {
        if !self.failed {
            write_ndjson(out, &serde_json::json!({ "error": error.to_string() }));
        }
    }
}
