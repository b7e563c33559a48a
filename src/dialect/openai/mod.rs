//! The OpenAI Chat Completions dialect: `chat.completion` bodies and
//! `chat.completion.chunk` SSE streams, parsed into and rendered from the canonical model.

pub mod embeddings;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::chat::{
    random_id, ChatRequest, Completion, Event, FinishReason, Image, Message, OutputFormat, Part,
    Role, Sampling, Think, Tool, ToolCall, Usage, WireToolCall,
};
use crate::error::GatewayError;
use crate::framing::{write_json, write_sse, SSE_DONE};

use super::{unix_now, StreamRenderer};

/// A parsed `/v1/chat/completions` request: the canonical request plus what only the
/// client side needs.
#[derive(Debug)]
pub struct ParsedChat {
    /// The model as the client named it (with any backend prefix).
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub request: ChatRequest,
}

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    messages: Vec<WireMessage>,
    stream: Option<bool>,
    stream_options: Option<WireStreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    n: Option<u32>,
    response_format: Option<Value>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    reasoning_effort: Option<String>,
    reasoning: Option<WireReasoning>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    typical_p: Option<f64>,
    repeat_penalty: Option<f64>,
    repeat_last_n: Option<i64>,
    /// Everything else is carried to OpenAI-compatible backends as sent.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct WireReasoning {
    effort: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default, deserialize_with = "super::null_as_default")]
    tool_calls: Vec<WireToolCall>,
    tool_call_id: Option<String>,
    /// Some clients name the tool on its result message.
    name: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
}

/// Parses a request body, naming the field at fault when it is wrong.
pub fn parse_chat(body: &[u8]) -> Result<ParsedChat, GatewayError> {
    let wire: WireRequest = crate::dialect::parse_body(body)?;
    if wire.model.is_empty() {
        return Err(GatewayError::bad_field("model", "model must not be empty"));
    }
    if wire.messages.is_empty() {
        return Err(GatewayError::bad_field(
            "messages",
            "messages must hold at least one message",
        ));
    }
    if wire.n.is_some_and(|n| n != 1) {
        return Err(GatewayError::bad_field(
            "n",
            "n must be 1: the gateway returns one choice per request",
        ));
    }
    let mut messages = Vec::with_capacity(wire.messages.len());
    for (index, message) in wire.messages.into_iter().enumerate() {
        messages.push(parse_message(index, message)?);
    }
    let stop = match wire.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(stop)) => vec![stop],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(GatewayError::bad_field(
                    "stop",
                    "stop must be a string or an array of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(GatewayError::bad_field(
                "stop",
                "stop must be a string or an array of strings",
            ))
        }
    };
    let format = match wire.response_format {
        None | Some(Value::Null) => None,
        Some(format) => parse_response_format(&format)?,
    };
    let effort = wire
        .reasoning
        .and_then(|r| r.effort)
        .or(wire.reasoning_effort);
    let mut passthrough = wire.extra;
    passthrough.remove("stream_options");
    let request = ChatRequest {
        messages,
        sampling: Sampling {
            max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
            temperature: wire.temperature,
            top_p: wire.top_p,
            seed: wire.seed,
            stop,
            frequency_penalty: wire.frequency_penalty,
            presence_penalty: wire.presence_penalty,
            top_k: wire.top_k,
            min_p: wire.min_p,
            typical_p: wire.typical_p,
            repeat_penalty: wire.repeat_penalty,
            repeat_last_n: wire.repeat_last_n,
            ollama_runtime: Map::new(),
        },
        format,
        tools: wire.tools.unwrap_or_default(),
        tool_choice: wire.tool_choice,
        parallel_tool_calls: wire.parallel_tool_calls,
        think: effort.map(Think::Effort),
        keep_alive: None,
        passthrough,
        generation: None,
    };
    Ok(ParsedChat {
        model: wire.model,
        stream: wire.stream.unwrap_or(false),
        include_usage: wire
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        request,
    })
}

fn parse_response_format(format: &Value) -> Result<Option<OutputFormat>, GatewayError> {
    let bad = |message: &str| GatewayError::bad_field("response_format", message.to_owned());
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputFormat::Json)),
        Some("json_schema") => {
            // llama-server also accepts a bare `schema` beside `type`.
            let spec = format.get("json_schema");
            let schema = spec
                .and_then(|s| s.get("schema"))
                .or_else(|| format.get("schema"))
                .cloned()
                .ok_or_else(|| bad("response_format json_schema needs json_schema.schema"))?;
            Ok(Some(OutputFormat::Schema {
                name: spec
                    .and_then(|s| s.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                schema,
                strict: spec.and_then(|s| s.get("strict")).and_then(Value::as_bool),
            }))
        }
        _ => Err(bad(
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

fn parse_message(index: usize, wire: WireMessage) -> Result<Message, GatewayError> {
    let role = Role::parse(&wire.role).ok_or_else(|| {
        GatewayError::bad_field(
            "messages",
            format!(
                "messages[{index}].role \"{}\" is not system, developer, user, assistant or tool",
                wire.role
            ),
        )
    })?;
    let parts = parse_content(index, wire.content)?;
    let tool_calls = wire.tool_calls.into_iter().map(ToolCall::from).collect();
    Ok(Message {
        role,
        parts,
        thinking: wire.reasoning_content.or(wire.reasoning),
        tool_calls,
        tool_call_id: wire.tool_call_id,
        tool_name: if role == Role::Tool { wire.name } else { None },
    })
}

fn parse_content(index: usize, content: Value) -> Result<Vec<Part>, GatewayError> {
    let bad = |what: String| {
        GatewayError::bad_field("messages", format!("messages[{index}].content{what}"))
    };
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => Ok(vec![Part::Text(text)]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(
                |(at, item)| match item.get("type").and_then(Value::as_str) {
                    Some("text") => item
                        .get("text")
                        .and_then(Value::as_str)
                        .map(|text| Part::Text(text.to_owned()))
                        .ok_or_else(|| bad(format!("[{at}] is a text part without a text string"))),
                    Some("image_url") => {
                        let url = match item.get("image_url") {
                            Some(Value::String(url)) => Some(url.as_str()),
                            Some(object) => object.get("url").and_then(Value::as_str),
                            None => None,
                        }
                        .ok_or_else(|| {
                            bad(format!("[{at}] is an image_url part without image_url.url"))
                        })?;
                        parse_image_url(url).map(Part::Image).ok_or_else(|| {
                            bad(format!(
                                "[{at}].image_url.url must be an http(s) URL or a base64 data: URL"
                            ))
                        })
                    }
                    Some(other) => Err(bad(format!(
                        "[{at}] has type \"{other}\"; the gateway carries text and image_url parts"
                    ))),
                    None => Err(bad(format!("[{at}] has no type"))),
                },
            )
            .collect(),
        _ => Err(bad(
            " must be a string, an array of parts or null".to_owned()
        )),
    }
}

fn parse_image_url(url: &str) -> Option<Image> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        let mime = meta.strip_suffix(";base64")?;
        return Some(Image::Base64 {
            mime: (!mime.is_empty()).then(|| mime.to_owned()),
            data: data.to_owned(),
        });
    }
    (url.starts_with("http://") || url.starts_with("https://")).then(|| Image::Url(url.to_owned()))
}

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
                "id": call.id.clone().unwrap_or_else(|| random_id("call_", 24)),
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
        write_sse(out, &json!({ "error": error.openai_error() }));
    }
}

/// One `/v1/models` entry.
pub fn model_object(id: &str, created: u64, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}
